//! Journal state transitions, on a real SQLite file.

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    journal: Journal,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite3");
    let journal = Journal::open(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        journal,
    }
}

fn stamp(size: u64) -> FileStamp {
    super::fixtures::stamp(size, 7)
}

fn obs<'a>(path: &'a str, sha: &'a str) -> Observation<'a> {
    super::fixtures::observation(path, "erp", sha, stamp(100))
}

fn rejected<'a>(path: &'a str, reason: &'a str) -> RejectedFile<'a> {
    RejectedFile {
        path,
        watch_root: "/w",
        vendor: "erp",
        kind: "kingdee",
        stamp: Some(stamp(5)),
        reason,
        delete_unused: true,
    }
}

/// The next job the workers would get, past whatever the journal settles by itself, as it is
/// sent: a delete asks the journal first ([`Journal::begin_delete`]).
fn claim(j: &mut Journal) -> Option<Job> {
    loop {
        let mut job = claim_unsent(j)?;
        if job.op == JobOp::Upload || j.begin_delete(&mut job).unwrap().is_none() {
            return Some(job);
        }
    }
}

/// The next job the workers would get, claimed and waiting in its slot's line, not sent yet.
fn claim_unsent(j: &mut Journal) -> Option<Job> {
    loop {
        match j.claim(&vendors(), 60_000).unwrap()? {
            Claimed::Job(job) => return Some(job),
            _ => continue,
        }
    }
}

fn removals<'a>(
    paths: &'a [String],
    max_deletes: usize,
    hold: Option<&'a str>,
) -> RemovalBatch<'a> {
    RemovalBatch {
        watch_root: "/w",
        paths,
        policy: RemovalPolicy::Delete,
        max_deletes,
        window_ms: 3_600_000,
        hold,
    }
}

/// `path` is gone from disk, under a watch that deletes removed files' copies.
fn missing(j: &mut Journal, path: &str) -> MissingOutcome {
    let paths = [path.to_string()];
    j.mark_missing(&removals(&paths, 100, None))
        .unwrap()
        .pop()
        .unwrap()
        .1
}

/// The references of the copies the journal has deleted, or is deleting.
fn deleted_refs(j: &Journal) -> Vec<String> {
    let mut stmt = j
        .conn
        .prepare("SELECT remote_ref FROM remote_copies WHERE state != 'live' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

const ABSENT: &dyn Fn(&str) -> bool = &|_| false;
const PRESENT: &dyn Fn(&str) -> bool = &|_| true;
/// `retry --held`'s looks: every held file gone, every root accepted as it is.
const GONE: &FileLooks<'static> = &|_, held| vec![Presence::Gone; held.len()];
const ACCEPTED: &RootLook<'static> = &|_, _| Ok(Some((1, 1)));

fn vendors() -> Vec<String> {
    vec!["erp".to_string()]
}

fn uploaded(url: &str) -> JobResult {
    JobResult::Uploaded(Remote {
        reference: url.into(),
        ..Remote::default()
    })
}

/// What a worker records for a call the vendor carried out whose answer was lost: a retry.
fn answer_lost() -> JobResult {
    JobResult::Retry {
        not_before: 0,
        reason: "HTTP 502".into(),
        give_up_after_ms: 3_600_000,
    }
}

/// A new file taken through upload to `synced` with `url`.
fn synced(j: &mut Journal, path: &str, sha: &str, url: &str) {
    j.observe(&obs(path, sha), PRESENT).unwrap();
    // The same bytes as a synced file settle at the claim, with that file's copy.
    if let Some(job) = claim(j) {
        assert_eq!(job.path, path);
        j.finish(&job, &uploaded(url), None).unwrap();
    }
    assert_eq!(state_of(j, path).url.as_deref(), Some(url));
}

fn state_of(j: &Journal, path: &str) -> FileRow {
    j.files(&FileFilter {
        path: Some(path.into()),
        ..FileFilter::default()
    })
    .unwrap()
    .pop()
    .unwrap()
}

#[test]
fn a_new_file_is_queued_claimed_and_synced_with_its_url() {
    let mut f = fixture();
    let j = &mut f.journal;
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap(),
        Observed::Queued
    );
    assert_eq!(state_of(j, "/w/a.png").state, "pending");
    let job = claim(j).unwrap();
    assert_eq!(job.op, JobOp::Upload);
    assert!(claim(j).is_none(), "a claimed job is leased");
    j.finish(&job, &uploaded("https://img/1.png"), None)
        .unwrap();
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.state, "synced");
    assert_eq!(row.url.as_deref(), Some("https://img/1.png"));
    assert_eq!(row.remote_deleted, None);
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::Unchanged
    );
    assert!(claim(j).is_none());
}

#[test]
fn a_crashed_daemons_running_jobs_go_back_to_the_queue() {
    let mut f = fixture();
    f.journal.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    claim(&mut f.journal).unwrap();
    drop(f.journal);
    let mut reopened = Journal::open(&f.path).unwrap();
    assert!(claim(&mut reopened).is_none());
    assert_eq!(reopened.requeue_running().unwrap(), 1);
    assert!(claim(&mut reopened).is_some());
}

/// Claims read the running jobs for a lease that ran out only once one may have: the claims in
/// between skip that read, and the first claim after the earliest lease still finds it.
#[test]
fn a_lease_that_runs_out_between_claims_is_found_by_the_first_claim_after_it() {
    let mut f = fixture();
    let j = &mut f.journal;
    for (path, sha) in [("/w/a.png", "aa"), ("/w/b.png", "bb"), ("/w/c.png", "cc")] {
        j.observe(&obs(path, sha), ABSENT).unwrap();
    }
    let short = match j.claim(&vendors(), 150).unwrap() {
        Some(Claimed::Job(job)) => job,
        other => panic!("a job is due: {other:?}"),
    };
    // Long leases claimed after a short one do not put off reading for the short one.
    let long = claim(j).unwrap();
    assert_ne!(long.id, short.id);
    std::thread::sleep(Duration::from_millis(200));
    let again = claim(j).unwrap();
    assert_eq!(
        again.id, short.id,
        "the job whose lease ran out comes first"
    );
    let last = claim(j).unwrap();
    assert_ne!(last.id, long.id);
    assert!(claim(j).is_none(), "every job is leased");
}

#[test]
fn a_rename_moves_the_record_and_queues_nothing() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    let moved = j
        .observe(&obs("/w/b.png", "aa"), &|p| p != "/w/a.png")
        .unwrap();
    assert_eq!(
        moved,
        Observed::Moved {
            from: "/w/a.png".into()
        }
    );
    assert_eq!(
        state_of(j, "/w/b.png").url.as_deref(),
        Some("https://img/1.png")
    );
    assert!(claim(j).is_none());
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::NotTracked);
}

#[test]
fn removal_deletes_the_copy_and_records_it() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::DeleteQueued);
    let delete = claim(j).unwrap();
    assert_eq!(delete.op, JobOp::Delete);
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/1.png"));
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.state, "removed");
    assert_eq!(row.remote_deleted, Some(true));
    assert_eq!(deleted_refs(j), vec!["https://img/1.png".to_string()]);
}

#[test]
fn a_queued_file_removed_is_dropped_from_the_queue() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::Removed);
    assert!(claim(j).is_none());
    assert_eq!(state_of(j, "/w/a.png").remote_deleted, Some(false));
}

#[test]
fn a_changed_file_keeps_its_old_copy_until_the_new_content_is_synced() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(
        j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap(),
        Observed::Changed
    );
    let upload = claim(j).unwrap();
    assert_eq!(upload.op, JobOp::Upload);
    assert!(claim(j).is_none(), "no delete before the new copy exists");
    j.finish(&upload, &uploaded("https://img/2.png"), None)
        .unwrap();
    let delete = claim(j).unwrap();
    assert_eq!(
        (delete.op, delete.remote_ref.as_deref()),
        (JobOp::DeleteOld, Some("https://img/1.png"))
    );
    assert_eq!(
        state_of(j, "/w/a.png").url.as_deref(),
        Some("https://img/2.png")
    );
}

#[test]
fn a_file_that_turns_bad_keeps_its_last_good_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert!(
        j.reject(&rejected("/w/a.png", "truncated"), PRESENT)
            .unwrap()
    );
    assert!(claim(j).is_none(), "nothing is deleted");
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.state, "rejected");
    assert_eq!(row.url.as_deref(), Some("https://img/1.png"));
    let problem = &j.status().unwrap().problems[0];
    assert_eq!(problem.last_good_copy.as_deref(), Some("https://img/1.png"));
}

/// A file that turned bad (or could not be read: a folder shut, an I/O error), fixed with its
/// old bytes, is synced to the copy that holds them at once: nothing queued, so nothing sent
/// again even where copies are not shared (Jiandaoyun with `create_record`: a second record).
#[test]
fn a_file_fixed_with_its_old_bytes_is_synced_to_its_live_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    j.reject(
        &rejected("/w/a.png", "cannot stat: Permission denied"),
        PRESENT,
    )
    .unwrap();
    let unshared = Observation {
        reuse_copies: false,
        ..obs("/w/a.png", "aa")
    };
    assert_eq!(j.observe(&unshared, PRESENT).unwrap(), Observed::Restored);
    assert!(claim_unsent(j).is_none(), "nothing to send");
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.url.as_deref()),
        ("synced", Some("https://img/1.png"))
    );
    assert!(deleted_refs(j).is_empty());
}

/// Changed, changed back before the new bytes were sent, changed again: the record synced back
/// to its copy takes the bytes on disk, so the last change is sent (before, it kept the other
/// bytes' hash and took the last change for no change: never sent, `synced` to the old image).
#[test]
fn a_file_changed_back_and_changed_again_sends_its_last_change() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    let at = |sha, size| super::fixtures::observation("/w/a.png", "erp", sha, stamp(size));
    assert_eq!(
        j.observe(&at("bb", 101), PRESENT).unwrap(),
        Observed::Changed
    );
    assert_eq!(
        j.observe(&at("aa", 102), PRESENT).unwrap(),
        Observed::Restored
    );
    assert_eq!(state_of(j, "/w/a.png").sha256.as_deref(), Some("aa"));
    assert_eq!(
        j.observe(&at("bb", 103), PRESENT).unwrap(),
        Observed::Changed
    );
    let upload = claim_unsent(j).expect("the last change is sent");
    assert_eq!(upload.sha256.as_deref(), Some("bb"));
}

/// A file whose watch now feeds another vendor is never synced to the old vendor's copy, even
/// with the bytes it holds (here after a rejection under the new vendor, which forgot its hash),
/// nor keeps it as its copy.
#[test]
fn a_file_is_never_synced_to_another_vendors_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    let under_wiki = RejectedFile {
        vendor: "wiki",
        kind: "feishu",
        ..rejected("/w/a.png", "cannot stat: Permission denied")
    };
    j.reject(&under_wiki, PRESENT).unwrap();
    let back = Observation {
        vendor: "wiki",
        kind: "feishu",
        ..obs("/w/a.png", "aa")
    };
    assert_ne!(j.observe(&back, PRESENT).unwrap(), Observed::Restored);
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.vendor.as_str()),
        ("pending", "wiki")
    );
    // Nor kept as its last good copy: its deletes would go through the other vendor.
    assert_eq!(
        (row.url.as_deref(), row.file_token.as_deref()),
        (None, None)
    );
}

#[test]
fn the_same_bytes_reuse_a_live_copy_and_a_shared_copy_is_kept() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(
        j.observe(&obs("/w/copy.png", "aa"), PRESENT).unwrap(),
        Observed::Queued
    );
    assert!(matches!(
        j.claim(&vendors(), 60_000).unwrap(),
        Some(Claimed::Reused { .. })
    ));
    assert_eq!(
        state_of(j, "/w/copy.png").url.as_deref(),
        Some("https://img/1.png")
    );
    assert_eq!(
        missing(j, "/w/copy.png"),
        MissingOutcome::Shared {
            with: "/w/a.png".into()
        }
    );
    assert!(claim(j).is_none());
}

/// A file whose copy is kept when it goes (Jiandaoyun's keys) and that comes back is synced to
/// that copy again only while the copy has not expired: a key past its hour is dead.
#[test]
fn a_file_put_back_after_its_copy_expired_is_sent_again() {
    for (expires_in, restored) in [(3_600_000, true), (1_000, false)] {
        let mut f = fixture();
        let j = &mut f.journal;
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
        let upload = claim(j).unwrap();
        let key = JobResult::Uploaded(Remote {
            reference: "key-1".into(),
            expires_at: Some(now_ms() + expires_in),
            ..Remote::default()
        });
        j.finish(&upload, &key, None).unwrap();
        let gone = ["/w/a.png".to_string()];
        let kept = RemovalBatch {
            policy: RemovalPolicy::Keep,
            ..removals(&gone, 100, None)
        };
        j.mark_missing(&kept).unwrap();
        let back = j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
        match restored {
            true => {
                assert_eq!(back, Observed::Restored);
                assert!(claim(j).is_none(), "nothing to send");
                assert_eq!(state_of(j, "/w/a.png").state, "synced");
            }
            false => {
                assert_eq!(back, Observed::RestoredAfterDelete);
                let again = claim(j).expect("the bytes go again, not synced to a dead key");
                assert_eq!(again.op, JobOp::Upload);
                assert_eq!(state_of(j, "/w/a.png").state, "pending");
            }
        }
    }
}

#[test]
fn a_copy_deleted_is_never_restored_nor_reused() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    synced(j, "/w/b.png", "aa", "https://img/1.png");
    assert!(matches!(
        missing(j, "/w/a.png"),
        MissingOutcome::Shared { .. }
    ));
    assert_eq!(missing(j, "/w/b.png"), MissingOutcome::DeleteQueued);
    let delete = claim(j).unwrap();
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    // a is put back: its copy is gone, so it is uploaded again, not "synced" to a dead URL.
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::RestoredAfterDelete
    );
    let upload = claim(j).expect("a fresh upload, not a reuse of the dead copy");
    assert_eq!(upload.op, JobOp::Upload);
    j.finish(&upload, &uploaded("https://img/2.png"), None)
        .unwrap();
    assert_eq!(
        state_of(j, "/w/a.png").url.as_deref(),
        Some("https://img/2.png")
    );
}

#[test]
fn a_held_file_is_a_user_of_its_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    synced(j, "/w/b.png", "aa", "https://img/1.png");
    let a = ["/w/a.png".to_string()];
    let held = j.mark_missing(&removals(&a, 100, Some("test"))).unwrap();
    assert!(matches!(held[0].1, MissingOutcome::Held(_)));
    assert!(matches!(
        missing(j, "/w/b.png"),
        MissingOutcome::Shared { .. }
    ));
    assert!(claim(j).is_none(), "the held file still uses the copy");
    assert_eq!(j.release_held(GONE, ACCEPTED).unwrap().deletes_queued, 1);
    assert_eq!(claim(j).unwrap().op, JobOp::Delete);
}

#[test]
fn a_held_file_found_renamed_out_of_the_watchs_names_keeps_its_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/a.png");
    synced(j, "/w/b.png", "bb", "https://img/b.png");
    let gone = ["/w/a.png".to_string(), "/w/b.png".to_string()];
    j.mark_missing(&removals(&gone, 100, Some("test"))).unwrap();
    let renamed_a: &FileLooks<'_> = &|_, held| {
        held.iter()
            .map(|(path, _)| match path.as_str() {
                "/w/a.png" => Presence::Untaken("/w/.trash/a.png".to_string()),
                _ => Presence::Gone,
            })
            .collect()
    };
    let released = j.release_held(renamed_a, ACCEPTED).unwrap();
    assert_eq!(released.deletes_queued, 1);
    assert_eq!(
        released.untaken,
        vec![UntakenHeld {
            path: "/w/a.png".to_string(),
            now_at: "/w/.trash/a.png".to_string(),
            copy_kept: true,
        }]
    );
    let delete = claim(j).unwrap();
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/b.png"));
    assert!(claim(j).is_none());
    let a = state_of(j, "/w/a.png");
    assert_eq!(a.state, "synced");
    assert_eq!(a.url.as_deref(), Some("https://img/a.png"));
    assert!(
        a.error
            .as_deref()
            .is_some_and(|e| e.contains("/w/.trash/a.png")),
        "{:?}",
        a.error
    );
    assert_eq!(j.status().unwrap().held_deletes, 0);
}

#[test]
fn a_held_record_written_while_retry_held_looks_is_not_acted_on() {
    let mut f = fixture();
    synced(&mut f.journal, "/w/a.png", "aa", "https://img/a.png");
    synced(&mut f.journal, "/w/b.png", "bb", "https://img/b.png");
    synced(&mut f.journal, "/w/c.png", "cc", "https://img/c.png");
    let gone = ["/w/a.png", "/w/b.png", "/w/c.png"].map(String::from);
    f.journal
        .mark_missing(&removals(&gone, 100, Some("test")))
        .unwrap();
    let path = f.path.clone();
    // While the operator's command looks at the disk, the daemon sees a.png back and writes
    // b.png's record again; both looks say gone.
    let daemon_writes: &FileLooks<'_> = &|_, held| {
        let mut daemon = Journal::open(&path).unwrap();
        daemon.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
        daemon
            .conn
            .execute(
                "UPDATE files SET updated_at = updated_at + 1 WHERE path = '/w/b.png'",
                [],
            )
            .unwrap();
        vec![Presence::Gone; held.len()]
    };
    let released = f.journal.release_held(daemon_writes, ACCEPTED).unwrap();
    assert_eq!(released.deletes_queued, 1);
    assert_eq!(released.changed, 1);
    let j = &mut f.journal;
    let delete = claim(j).unwrap();
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/c.png"));
    assert!(claim(j).is_none(), "a.png is back, b.png's look was stale");
    assert_eq!(state_of(j, "/w/a.png").state, "synced");
    assert_eq!(j.status().unwrap().held_deletes, 1, "b.png stays held");
}

#[test]
fn a_held_rejected_file_found_renamed_out_keeps_its_last_good_copy_with_a_note() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/a.png");
    j.reject(&rejected("/w/a.png", "truncated"), PRESENT)
        .unwrap();
    let gone = ["/w/a.png".to_string()];
    j.mark_missing(&removals(&gone, 100, Some("test"))).unwrap();
    assert_eq!(j.status().unwrap().held_deletes, 1);
    let renamed: &FileLooks<'_> =
        &|_, held| vec![Presence::Untaken("/w/a.png.bak".to_string()); held.len()];
    let released = j.release_held(renamed, ACCEPTED).unwrap();
    assert_eq!(released.deletes_queued, 0);
    assert!(released.untaken[0].copy_kept);
    assert!(claim(j).is_none());
    let a = state_of(j, "/w/a.png");
    assert_eq!(a.state, "rejected");
    assert!(
        a.error
            .as_deref()
            .is_some_and(|e| e.contains("/w/a.png.bak")),
        "{:?}",
        a.error
    );
    assert_eq!(j.status().unwrap().held_deletes, 0);
}

#[test]
fn releasing_held_deletes_keeps_a_copy_a_live_file_uses() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/x.png", "xx", "https://img/x.png");
    synced(j, "/w/y.png", "yy", "https://img/y.png");
    synced(j, "/w/z.png", "yy", "https://img/y.png");
    let gone = ["/w/x.png".to_string(), "/w/y.png".to_string()];
    j.mark_missing(&removals(&gone, 1, None)).unwrap();
    assert_eq!(j.status().unwrap().held_deletes, 2);
    assert_eq!(j.release_held(GONE, ACCEPTED).unwrap().deletes_queued, 1);
    let delete = claim(j).unwrap();
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/x.png"));
    assert!(claim(j).is_none());
    assert_eq!(state_of(j, "/w/z.png").state, "synced");
}

#[test]
fn removals_are_counted_over_a_window_however_slowly_they_come() {
    let mut f = fixture();
    let j = &mut f.journal;
    for i in 0..6 {
        synced(
            j,
            &format!("/w/{i}.png"),
            &format!("s{i}"),
            &format!("https://img/{i}.png"),
        );
    }
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let path = [format!("/w/{i}.png")];
        outcomes.extend(j.mark_missing(&removals(&path, 3, None)).unwrap());
    }
    let queued = outcomes
        .iter()
        .filter(|(_, o)| *o == MissingOutcome::DeleteQueued)
        .count();
    let held = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, MissingOutcome::Held(_)))
        .count();
    assert_eq!((queued, held), (3, 3));
}

#[test]
fn a_delete_whose_copy_is_already_gone_ends_the_removal() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let delete = claim(j).unwrap();
    // The answer was lost: retried.
    j.finish(&delete, &answer_lost(), None).unwrap();
    // Meanwhile the file is put back: the copy may be gone, so it is uploaded afresh.
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::RestoredAfterDelete
    );
    let mut ops = Vec::new();
    while let Some(job) = claim(j) {
        ops.push(job.op);
        let result = match job.op {
            JobOp::Upload => uploaded("https://img/2.png"),
            _ => JobResult::Deleted,
        };
        j.finish(&job, &result, None).unwrap();
    }
    ops.sort_by_key(|op| op.as_str());
    assert_eq!(ops, vec![JobOp::Delete, JobOp::Upload]);
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.url.as_deref()),
        ("synced", Some("https://img/2.png"))
    );
}

#[test]
fn a_delete_put_back_unsent_leaves_its_copy_live_for_the_file_put_back() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let delete = claim_unsent(j).unwrap();
    assert!(!delete.marked_copy, "nothing is marked before it is sent");
    // Claimed ahead of others, then its vendor paused (or the daemon stopping): put back with
    // nothing sent, the copy is what it was.
    j.put_back_unsent(&delete).unwrap();
    assert!(deleted_refs(j).is_empty(), "{:?}", deleted_refs(j));
    // The file comes back: synced to the copy it had (the URL the ERP points at), nothing sent,
    // and its delete withdrawn (before, re-uploaded under a new URL and the old one deleted).
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::Restored
    );
    assert!(claim(j).is_none());
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.url.as_deref()),
        ("synced", Some("https://img/1.png"))
    );
    assert!(deleted_refs(j).is_empty());
}

#[test]
fn a_delete_put_back_unsent_after_an_attempt_whose_answer_was_lost_keeps_its_copy_deleting() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let first = claim(j).unwrap();
    // Carried out at the vendor, its answer lost: retried.
    j.finish(&first, &answer_lost(), None).unwrap();
    let again = claim_unsent(j).unwrap();
    assert!(!again.marked_copy);
    j.put_back_unsent(&again).unwrap();
    assert_eq!(deleted_refs(j), ["https://img/1.png"], "may be gone");
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::RestoredAfterDelete
    );
}

/// A delete claimed ahead waits in its slot's line; the file comes back meanwhile. Nothing was
/// sent, so the file is synced to the copy it had (the URL the ERP uses), nothing is uploaded,
/// and the delete, about to be sent, is withdrawn. Before, the claim had marked the copy
/// `deleting`: the file was uploaded again and the URL the ERP used was deleted.
#[test]
fn a_delete_claimed_ahead_is_withdrawn_when_its_file_comes_back_before_it_is_sent() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::DeleteQueued);
    let mut delete = claim_unsent(j).unwrap();
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::Restored
    );
    assert!(claim_unsent(j).is_none(), "nothing to upload");
    assert!(matches!(
        j.begin_delete(&mut delete).unwrap(),
        Some(Claimed::Kept { .. })
    ));
    j.finish(&delete, &JobResult::Release, None).unwrap();
    assert!(claim_unsent(j).is_none(), "the delete is gone");
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.url.as_deref()),
        ("synced", Some("https://img/1.png"))
    );
    assert!(deleted_refs(j).is_empty());
}

fn refused(outcome: &str) -> Attempt {
    Attempt {
        outcome: outcome.into(),
        http_status: Some(429),
        refused: true,
        ..Attempt::default()
    }
}

/// A delete the vendor refused (rate limited, our credentials refused, rejected) carried out
/// nothing: its copy is live again, so the file put back is synced to it. Before, it stayed
/// `deleting`: the file was uploaded again and the delete, sent later, removed the URL the ERP
/// used.
#[test]
fn a_delete_the_vendor_refused_gives_its_copy_back() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let delete = claim(j).unwrap();
    assert!(delete.marked_copy);
    assert_eq!(deleted_refs(j), ["https://img/1.png"], "being deleted");
    let rate_limited = JobResult::Defer {
        not_before: now_ms() + 60_000,
        reason: "kingdee delete: rate limited (HTTP 429)".into(),
    };
    j.finish(&delete, &rate_limited, Some(&refused("throttled")))
        .unwrap();
    assert!(deleted_refs(j).is_empty(), "{:?}", deleted_refs(j));
    assert_eq!(
        j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap(),
        Observed::Restored
    );
    assert!(
        claim_unsent(j).is_none(),
        "nothing to upload, no delete left"
    );

    // Rejected: the file fails with the vendor's reason, and its copy stays its last good one.
    synced(j, "/w/b.png", "bb", "https://img/2.png");
    missing(j, "/w/b.png");
    let delete = claim(j).unwrap();
    let rejected = JobResult::Rejected("kingdee delete: 账套不存在 (errcode 2000002001)".into());
    j.finish(&delete, &rejected, Some(&refused("rejected")))
        .unwrap();
    assert!(deleted_refs(j).is_empty(), "{:?}", deleted_refs(j));
    assert_eq!(state_of(j, "/w/b.png").state, "failed");
}

/// A delete tried again with a fresh token (its first try refused, carrying nothing out) asks the
/// journal again as it goes out. The file put back while the second try waited for its turn found
/// the copy marked by the first and was queued to upload again; asked again, the journal gives the
/// first mark back, withdraws the delete, and the upload settles to the copy it had.
#[test]
fn a_delete_asked_again_after_a_refused_try_keeps_the_copy_of_a_file_put_back() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let mut delete = claim(j).unwrap();
    assert!(delete.marked_copy);
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    assert!(j.begin_delete(&mut delete).unwrap().is_some(), "withdrawn");
    assert!(!delete.marked_copy);
    j.finish(&delete, &JobResult::Release, None).unwrap();
    assert!(deleted_refs(j).is_empty(), "{:?}", deleted_refs(j));
    assert!(claim(j).is_none(), "nothing to upload, no delete left");
    let row = state_of(j, "/w/a.png");
    assert_eq!(
        (row.state.as_str(), row.url.as_deref()),
        ("synced", Some("https://img/1.png"))
    );

    // Asked again with nothing changed, it goes out, its copy marked by this try.
    synced(j, "/w/b.png", "bb", "https://img/2.png");
    missing(j, "/w/b.png");
    let mut delete = claim(j).unwrap();
    assert!(j.begin_delete(&mut delete).unwrap().is_none());
    assert!(delete.marked_copy);
    assert_eq!(deleted_refs(j), ["https://img/2.png"]);
}

/// An unanswered delete (a timeout, a 502) may have been carried out: its copy stays `deleting`.
#[test]
fn a_delete_unanswered_keeps_its_copy_deleting() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    missing(j, "/w/a.png");
    let delete = claim(j).unwrap();
    let timed_out = Attempt {
        outcome: "retry".into(),
        ..Attempt::default()
    };
    j.finish(&delete, &answer_lost(), Some(&timed_out)).unwrap();
    assert_eq!(deleted_refs(j), ["https://img/1.png"]);
}

#[test]
fn transient_failures_retry_until_give_up_then_fail_and_retry_puts_them_back() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = claim(j).unwrap();
    let retry = |give_up_after_ms| JobResult::Retry {
        not_before: now_ms() - 1,
        reason: "kingdee upload: HTTP 503".into(),
        give_up_after_ms,
    };
    assert_eq!(
        j.finish(&job, &retry(3_600_000), None).unwrap(),
        Finished::Retrying
    );
    let row = state_of(j, "/w/a.png");
    assert_eq!((row.state.as_str(), row.attempts), ("pending", 1));
    assert_eq!(row.error.as_deref(), Some("kingdee upload: HTTP 503"));
    let again = claim(j).unwrap();
    assert_eq!(again.attempts, 1);
    assert!(again.first_failure_at.is_some());
    assert_eq!(j.finish(&again, &retry(0), None).unwrap(), Finished::GaveUp);
    assert_eq!(state_of(j, "/w/a.png").state, "failed");
    assert_eq!(j.retry_failed().unwrap(), 1);
    assert_eq!(state_of(j, "/w/a.png").state, "pending");
    assert!(claim(j).is_some());
}

#[test]
fn an_outcome_for_old_content_does_not_touch_the_new() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let first = claim(j).unwrap();
    j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap();
    assert_eq!(
        j.finish(&first, &JobResult::Rejected("invalid".into()), None)
            .unwrap(),
        Finished::Stale
    );
    assert_eq!(state_of(j, "/w/a.png").state, "pending");
    let second = claim(j).unwrap();
    assert_eq!(second.sha256.as_deref(), Some("bb"));
}

#[test]
fn a_rejected_file_is_not_retried_and_its_reason_is_kept() {
    let mut f = fixture();
    let j = &mut f.journal;
    let file = rejected("/w/notes.jpg", "not an image");
    assert!(j.reject(&file, PRESENT).unwrap());
    assert!(
        !j.reject(&file, PRESENT).unwrap(),
        "the same verdict is not recorded twice"
    );
    let row = state_of(j, "/w/notes.jpg");
    assert_eq!(
        (row.state.as_str(), row.error.as_deref()),
        ("rejected", Some("not an image"))
    );
    assert!(claim(j).is_none());
}

#[test]
fn a_paused_vendor_is_recorded_and_resumed() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.pause_vendor("erp", "bad signature", 30_000).unwrap();
    let pauses = j.pauses().unwrap();
    assert_eq!(pauses[0].reason, "bad signature");
    assert_eq!(j.status().unwrap().paused_vendors[0].vendor, "erp");
    assert!(j.resume_vendor("erp").unwrap());
    assert!(j.pauses().unwrap().is_empty());
}

#[test]
fn a_newer_schema_is_refused() {
    let f = fixture();
    f.journal
        .conn
        .pragma_update(None, "user_version", 99)
        .unwrap();
    drop(f.journal);
    let err = Journal::open(&f.path).unwrap_err().to_string();
    let expected = format!(
        "schema version 99, newer than this imgsyncd knows ({})",
        MIGRATIONS.len()
    );
    assert!(err.contains(&expected), "{err}");
    let err = Journal::open_read_only(&f.path).unwrap_err().to_string();
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn history_keeps_every_attempt() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = claim(j).unwrap();
    let attempt = Attempt {
        outcome: "retry".into(),
        http_status: Some(519),
        vendor_code: Some("5007".into()),
        message: Some("overload".into()),
        duration_ms: 12,
        refused: false,
    };
    j.finish(
        &job,
        &JobResult::Retry {
            not_before: 0,
            reason: "overload".into(),
            give_up_after_ms: 3_600_000,
        },
        Some(&attempt),
    )
    .unwrap();
    let history = j.history("/w/a.png").unwrap().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].http_status, Some(519));
    assert_eq!(history[0].vendor_code.as_deref(), Some("5007"));
    assert!(j.history("/w/none.png").unwrap().is_none());
}

#[test]
fn a_file_removed_during_its_upload_has_the_new_copy_deleted_when_the_upload_ends() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let upload = claim(j).unwrap();
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::Removed);
    assert_eq!(
        j.finish(&upload, &uploaded("https://img/1.png"), None)
            .unwrap(),
        Finished::Stale
    );
    let delete = claim(j).unwrap();
    assert_eq!(
        (delete.op, delete.remote_ref.as_deref()),
        (JobOp::DeleteOld, Some("https://img/1.png"))
    );
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    assert_eq!(state_of(j, "/w/a.png").state, "removed");
}

#[test]
fn a_job_left_by_a_crash_for_a_file_since_removed_is_dropped() {
    let mut f = fixture();
    j_crash_then_remove(&mut f);
    let j = &mut f.journal;
    assert!(matches!(
        j.claim(&vendors(), 60_000).unwrap(),
        Some(Claimed::Dropped { .. })
    ));
    assert!(claim(j).is_none());
    assert_eq!(state_of(j, "/w/a.png").state, "removed");
}

fn j_crash_then_remove(f: &mut Fixture) {
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    claim(j).unwrap();
    missing(j, "/w/a.png");
    j.requeue_running().unwrap();
}

#[test]
fn an_upload_of_content_that_changed_meanwhile_is_deleted_as_stale() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let first = claim(j).unwrap();
    assert_eq!(
        j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap(),
        Observed::Changed
    );
    assert_eq!(
        j.finish(&first, &uploaded("https://img/old.png"), None)
            .unwrap(),
        Finished::Stale
    );
    let mut ops = Vec::new();
    while let Some(job) = claim(j) {
        ops.push((job.op, job.sha256.clone(), job.remote_ref.clone()));
    }
    ops.sort_by_key(|(op, _, _)| op.as_str());
    assert_eq!(
        ops,
        vec![
            (
                JobOp::DeleteOld,
                None,
                Some("https://img/old.png".to_string())
            ),
            (JobOp::Upload, Some("bb".to_string()), None),
        ]
    );
    assert_eq!(
        state_of(j, "/w/a.png").url,
        None,
        "the stale URL is not recorded"
    );
}

#[test]
fn retry_of_a_rejected_path_keeps_its_history() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.reject(
        &rejected("/w/x.jpg", "cannot read: permission denied"),
        PRESENT,
    )
    .unwrap();
    let outcome = j.retry_paths(&["/w/x.jpg".to_string()]).unwrap();
    assert_eq!(outcome[0].1, RetryOutcome::Reexamined);
    let known = j.known_under("/w").unwrap();
    assert_eq!(known[0].stamp, None, "the next scan sees it as changed");
    // A file the vendor refused goes straight back to the queue.
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = claim(j).unwrap();
    j.finish(&job, &JobResult::Rejected("invalid".into()), None)
        .unwrap();
    let outcome = j.retry_paths(&["/w/a.png".to_string()]).unwrap();
    assert_eq!(outcome[0].1, RetryOutcome::Queued);
    assert!(claim(j).is_some());
}

#[test]
fn migrations_are_applied_in_order_and_recorded() {
    let f = fixture();
    assert_eq!(f.journal.schema_version().unwrap(), MIGRATIONS.len() as i64);
    drop(f.journal);
    let reopened = Journal::open(&f.path).unwrap();
    assert_eq!(reopened.schema_version().unwrap(), MIGRATIONS.len() as i64);
}

/// A journal as an older daemon left it: the first `version` migrations applied, and the
/// connection to put rows in before `Journal::open` migrates the rest.
fn journal_at_schema(version: usize) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite3");
    let conn = Connection::open(&path).unwrap();
    for sql in &MIGRATIONS[..version] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", version as i64)
        .unwrap();
    (dir, path, conn)
}

#[test]
fn a_schema_2_journal_is_migrated_with_its_copies() {
    let (_dir, path, conn) = journal_at_schema(2);
    conn.execute_batch(
        "INSERT INTO files (path, watch_root, vendor, kind, state, size, mtime_ns, sha256,
           url, remote_deleted, created_at, updated_at)
         VALUES ('/w/a.png', '/w', 'erp', 'kingdee', 'synced', 1, 1, 'aa',
                 'https://img/1.png', 0, 1, 1),
                ('/w/b.png', '/w', 'erp', 'kingdee', 'removed', 1, 1, 'bb',
                 'https://img/2.png', 1, 1, 1);",
    )
    .unwrap();
    drop(conn);
    let mut j = Journal::open(&path).unwrap();
    let a = state_of(&j, "/w/a.png");
    assert_eq!(
        (a.state.as_str(), a.url.as_deref()),
        ("synced", Some("https://img/1.png"))
    );
    assert_eq!(state_of(&j, "/w/b.png").remote_deleted, Some(true));
    assert_eq!(missing(&mut j, "/w/a.png"), MissingOutcome::DeleteQueued);
}

#[test]
fn a_schema_4_path_holding_an_escape_character_is_rewritten_to_read_back_as_itself() {
    let odd = "/w/\u{10FFB2}.png";
    let (_dir, path, conn) = journal_at_schema(4);
    conn.execute(
        "INSERT INTO files (path, watch_root, vendor, kind, state, size, mtime_ns, sha256,
           created_at, updated_at)
         VALUES (?1, '/w', 'erp', 'kingdee', 'synced', 1, 1, 'aa', 1, 1),
                ('/w/plain.png', '/w', 'erp', 'kingdee', 'synced', 1, 1, 'bb', 1, 1)",
        [odd],
    )
    .unwrap();
    drop(conn);
    let j = Journal::open(&path).unwrap();
    let text = path_text::to_text(std::path::Path::new(odd)).into_owned();
    assert_ne!(text, odd);
    assert_eq!(state_of(&j, &text).state, "synced");
    assert_eq!(path_text::to_path(&text), std::path::Path::new(odd));
    assert_eq!(state_of(&j, "/w/plain.png").state, "synced");
}

/// The table definitions as the journal holds them.
fn table_sql(j: &Journal, table: &str) -> String {
    j.conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn no_check_lists_more_than_two_values_and_each_still_refuses_what_it_refused() {
    let mut f = fixture();
    for (table, listed, compared) in super::VALUE_CHECK_REWRITES {
        let sql = table_sql(&f.journal, table);
        assert!(
            !sql.contains(listed) && sql.contains(compared),
            "{table}: {sql}"
        );
    }
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let refused = |sql: &str| {
        let e = j.conn.execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("CHECK constraint failed"), "{sql}: {e}");
    };
    refused("UPDATE files SET state = 'lost'");
    refused("UPDATE files SET removal = 'maybe'");
    refused("UPDATE jobs SET op = 'copy'");
    refused(
        "INSERT INTO remote_copies (vendor, kind, remote_ref, state, created_at)
         VALUES ('erp', 'kingdee', 'https://img/9.png', 'gone', 1)",
    );
    // What the checks allow, NULL among it, is still allowed.
    j.conn
        .execute_batch(
            "UPDATE files SET state = 'removed', removal = 'held';
             UPDATE files SET removal = NULL; UPDATE jobs SET op = 'delete_old';
             INSERT INTO remote_copies (vendor, kind, remote_ref, state, created_at)
             VALUES ('erp', 'kingdee', 'https://img/9.png', 'deleting', 1);",
        )
        .unwrap();
}

#[test]
fn recording_a_file_builds_no_temporary_btree() {
    let f = fixture();
    // What an IN list of more than two values compiles to, once per row checked.
    for insert in [
        "INSERT INTO files (path, watch_root, vendor, kind, state, created_at, updated_at)
         VALUES ('/w/a.png', '/w', 'erp', 'kingdee', 'pending', 1, 1)",
        "INSERT INTO jobs (file_id, op, vendor, state, not_before, created_at)
         VALUES (1, 'upload', 'erp', 'queued', 1, 1)",
        "INSERT INTO remote_copies (vendor, kind, remote_ref, state, created_at)
         VALUES ('erp', 'kingdee', 'https://img/1.png', 'live', 1)",
    ] {
        let mut stmt = f
            .journal
            .conn
            .prepare(&format!("EXPLAIN {insert}"))
            .unwrap();
        let ops: Vec<String> = stmt
            .query_map([], |r| r.get(1))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !ops.iter().any(|op| op == "OpenEphemeral"),
            "{insert}: {ops:?}"
        );
    }
}

#[test]
fn a_schema_5_journal_keeps_its_rows_and_gets_the_new_checks() {
    let (_dir, path, conn) = journal_at_schema(5);
    conn.execute_batch(
        "INSERT INTO files (path, watch_root, vendor, kind, state, size, mtime_ns, sha256,
           format, created_at, updated_at)
         VALUES ('/w/a.png', '/w', 'erp', 'kingdee', 'pending', 1, 1, 'aa', 'png', 1, 1);
         INSERT INTO jobs (file_id, op, vendor, sha256, state, not_before, created_at)
         VALUES (1, 'upload', 'erp', 'aa', 'queued', 0, 1);",
    )
    .unwrap();
    drop(conn);
    let mut j = Journal::open(&path).unwrap();
    assert_eq!(j.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(table_sql(&j, "files").contains("state = 'pending' OR state = 'synced'"));
    let quick: String = j
        .conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(quick, "ok");
    let job = claim(&mut j).expect("the queued upload is still there");
    j.finish(&job, &uploaded("https://img/1.png"), None)
        .unwrap();
    assert_eq!(state_of(&j, "/w/a.png").state, "synced");
    drop(j);
    // A reader opened afterwards sees the same schema.
    let reader = Journal::open_read_only(&path).unwrap();
    assert_eq!(state_of(&reader, "/w/a.png").state, "synced");
}

/// A file renamed to a name the watch does not take keeps its record synced, so the copy it
/// shares with a twin survives the twin's removal; a file never sent has nothing to keep.
#[test]
fn a_file_renamed_out_of_the_watchs_names_keeps_the_copy_it_shares() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    synced(j, "/w/twin.png", "aa", "https://img/1.png");
    j.observe(&obs("/w/new.png", "bb"), PRESENT).unwrap();
    let moved = [
        ("/w/a.png".to_string(), "/w/.a.png".to_string()),
        ("/w/new.png".to_string(), "/w/new.png.tmp".to_string()),
    ];
    let outcomes = j.mark_untaken(&moved).unwrap();
    assert_eq!(outcomes[0].1, MissingOutcome::Untaken);
    assert_eq!(outcomes[1].1, MissingOutcome::Removed);
    let a = state_of(j, "/w/a.png");
    assert_eq!(a.state, "synced");
    assert!(
        a.error
            .unwrap()
            .contains("/w/.a.png, which the watch does not take")
    );
    assert_eq!(state_of(j, "/w/new.png").state, "removed");
    assert!(claim(j).is_none(), "the upload of new.png is withdrawn");
    // Said once: the next look finds the note there.
    assert_eq!(
        j.mark_untaken(&moved[..1]).unwrap()[0].1,
        MissingOutcome::Unchanged
    );
    assert_eq!(
        missing(j, "/w/twin.png"),
        MissingOutcome::Shared {
            with: "/w/a.png".to_string()
        }
    );
    assert!(deleted_refs(j).is_empty());
    // Found again under a name the watch takes, it moves there and the note goes.
    j.observe(&obs("/w/b.png", "aa"), ABSENT).unwrap();
    let b = state_of(j, "/w/b.png");
    assert_eq!((b.state.as_str(), b.error), ("synced", None));
}

#[test]
fn a_file_renamed_out_of_the_watchs_names_is_counted_where_it_is_now() {
    let mut f = fixture();
    let j = &mut f.journal;
    for (path, sha) in [("/w/a.png", "aa"), ("/w/b.png", "bb"), ("/w/c.png", "cc")] {
        synced(j, path, sha, &format!("https://img/{sha}.png"));
    }
    assert_eq!(j.count_present_under("/w").unwrap(), 3);
    let moved = [
        ("/w/a.png".to_string(), "/w/.trash/a.png".to_string()),
        ("/w/b.png".to_string(), "/w/b.png.bak".to_string()),
    ];
    j.mark_untaken(&moved).unwrap();
    // A walk finds only c.png: the two renamed out are neither present nor vanished.
    assert_eq!(j.count_present_under("/w").unwrap(), 1);
    let places = |j: &Journal| -> Vec<(String, String)> {
        let untaken = j.untaken_under("/w").unwrap();
        untaken.into_iter().map(|u| (u.path, u.place)).collect()
    };
    assert_eq!(places(j), moved.to_vec());
    assert!(j.known_file("/w/a.png").unwrap().unwrap().untaken);
    assert!(!j.known_file("/w/c.png").unwrap().unwrap().untaken);
    // Renamed again: the journal keeps the new place.
    let again = [("/w/b.png".to_string(), "/w/.b.png".to_string())];
    assert_eq!(
        j.mark_untaken(&again).unwrap()[0].1,
        MissingOutcome::Untaken
    );
    assert_eq!(places(j)[1].1, "/w/.b.png");
    // Back at its path as it was (a rescan's look), or seen there again (an event): ordinary.
    j.untaken_back(&["/w/a.png".to_string()]).unwrap();
    assert_eq!(state_of(j, "/w/a.png").error, None);
    j.observe(&obs("/w/b.png", "bb"), PRESENT).unwrap();
    assert!(j.untaken_under("/w").unwrap().is_empty());
    assert_eq!(j.count_present_under("/w").unwrap(), 3);
    // Really gone from its place: its copy deleted as any file's, and no longer counted apart.
    j.mark_untaken(&moved[..1]).unwrap();
    assert_eq!(missing(j, "/w/a.png"), MissingOutcome::DeleteQueued);
    assert!(j.known_file("/w/a.png").unwrap().unwrap().removal_pending);
    assert!(j.untaken_under("/w").unwrap().is_empty());
    assert_eq!(j.count_present_under("/w").unwrap(), 2);
}

#[test]
fn a_rejected_file_renamed_out_is_counted_where_it_is_now_and_keeps_its_reason() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/a.png");
    j.reject(&rejected("/w/a.png", "truncated"), PRESENT)
        .unwrap();
    let moved = [("/w/a.png".to_string(), "/w/.trash/a.png".to_string())];
    assert_eq!(
        j.mark_untaken(&moved).unwrap()[0].1,
        MissingOutcome::Unchanged
    );
    assert_eq!(j.count_present_under("/w").unwrap(), 0);
    assert_eq!(j.untaken_under("/w").unwrap()[0].place, "/w/.trash/a.png");
    let a = state_of(j, "/w/a.png");
    assert_eq!(a.state, "rejected");
    assert!(a.error.unwrap().contains("truncated"));
    // Not at its path: nothing to retry, failed or rejected.
    assert_eq!(
        j.retry_paths(&["/w/a.png".to_string()]).unwrap()[0].1,
        RetryOutcome::RenamedOut("/w/.trash/a.png".to_string())
    );
    j.conn
        .execute(
            "UPDATE files SET state = 'failed' WHERE path = '/w/a.png'",
            [],
        )
        .unwrap();
    assert_eq!(j.retry_failed().unwrap(), 0);
    assert!(claim(j).is_none());
    j.conn
        .execute(
            "UPDATE files SET state = 'rejected' WHERE path = '/w/a.png'",
            [],
        )
        .unwrap();
    // Back at its path as it was: counted again, its reason kept.
    j.untaken_back(&["/w/a.png".to_string()]).unwrap();
    assert_eq!(j.count_present_under("/w").unwrap(), 1);
    assert!(state_of(j, "/w/a.png").error.unwrap().contains("truncated"));
}

/// The binary upgraded while the daemon still runs the old one: the journal is at schema 8 as
/// that daemon left it, and `status`, `files` and `history` from the new binary read it. A
/// journal older than the reads understand is still refused, with what to do.
#[test]
fn a_journal_the_daemon_has_not_migrated_yet_can_be_read_when_only_its_indexes_differ() {
    let mut f = fixture();
    synced(&mut f.journal, "/w/a.png", "aa", "https://img/1.png");
    f.journal
        .conn
        .execute_batch(
            "DROP INDEX jobs_running_uploads;
             DROP INDEX files_by_copy; CREATE INDEX files_by_copy ON files (copy_id);
             DROP INDEX jobs_by_copy; CREATE INDEX jobs_by_copy ON jobs (copy_id);
             DROP INDEX files_by_state; CREATE INDEX files_by_state ON files (state);
             DROP INDEX copies_expiring; DROP INDEX attempts_errors;
             PRAGMA user_version = 8;",
        )
        .unwrap();
    let reader = Journal::open_read_only(&f.path).unwrap();
    assert_eq!(state_of(&reader, "/w/a.png").state, "synced");
    assert_eq!(reader.status().unwrap().files["synced"], 1);
    assert_eq!(reader.files(&FileFilter::default()).unwrap().len(), 1);
    assert!(reader.oldest_pending().unwrap().is_none());
    f.journal
        .conn
        .pragma_update(None, "user_version", READS_FROM - 1)
        .unwrap();
    let err = Journal::open_read_only(&f.path).unwrap_err().to_string();
    assert!(err.contains("start the daemon"), "{err}");
}

#[test]
fn the_read_only_journal_reads_and_refuses_to_write() {
    let mut f = fixture();
    synced(&mut f.journal, "/w/a.png", "aa", "https://img/1.png");
    let reader = Journal::open_read_only(&f.path).unwrap();
    assert_eq!(state_of(&reader, "/w/a.png").state, "synced");
    assert!(reader.status().is_ok());
    assert!(reader.conn.execute("DELETE FROM files", []).is_err());
}

#[test]
fn a_paused_watch_shows_in_status() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.pause_watch("/w", "No such file or directory").unwrap();
    let status = j.status().unwrap();
    assert_eq!(status.paused_watches[0].path, "/w");
    j.resume_watch("/w").unwrap();
    assert!(j.status().unwrap().paused_watches.is_empty());
}

#[test]
fn the_same_bytes_are_not_sent_twice_at_once() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    j.observe(&obs("/w/b.png", "aa"), PRESENT).unwrap();
    let first = claim(j).unwrap();
    assert!(claim(j).is_none(), "the twin waits");
    j.finish(&first, &uploaded("https://img/1.png"), None)
        .unwrap();
    assert!(
        matches!(
            j.claim(&vendors(), 60_000).unwrap(),
            Some(Claimed::Reused { .. })
        ),
        "and reuses the first's copy"
    );
    assert_eq!(
        state_of(j, "/w/b.png").url.as_deref(),
        Some("https://img/1.png")
    );
}

#[test]
fn release_held_keeps_the_deletes_and_the_identity_of_a_missing_root() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    synced(j, "/w/b.png", "bb", "https://img/2.png");
    j.set_root_identity("/w", 5, 9).unwrap();
    let both = ["/w/a.png".to_string(), "/w/b.png".to_string()];
    j.mark_missing(&removals(&both, 100, Some("test"))).unwrap();
    let missing: &RootLook<'_> = &|_, known| {
        assert_eq!(known, Some((5, 9)), "told what the journal knows");
        Err("is missing".to_string())
    };
    let released = j.release_held(GONE, missing).unwrap();
    assert_eq!(released.deletes_queued, 0);
    let kept = KeptHeld {
        what: "/w".to_string(),
        is_root: true,
        why: "is missing".to_string(),
        files: 2,
    };
    assert_eq!(released.kept, vec![kept]);
    assert!(claim(j).is_none(), "nothing deleted");
    assert_eq!(j.status().unwrap().held_deletes, 2);
    assert_eq!(
        j.root_identity("/w").unwrap(),
        Some((5, 9)),
        "judged when back"
    );
    // Back: a file that cannot be looked at keeps its delete held; the root is accepted as it is.
    let unreadable_a: &FileLooks<'_> = &|_, held| {
        held.iter()
            .map(|(path, _)| match path.as_str() {
                "/w/a.png" => Presence::Unknown("cannot be looked at".to_string()),
                _ => Presence::Gone,
            })
            .collect()
    };
    let released = j
        .release_held(unreadable_a, &|_, _| Ok(Some((5, 10))))
        .unwrap();
    assert_eq!(released.deletes_queued, 1);
    assert_eq!(released.kept.len(), 1);
    assert_eq!(released.kept[0].what, "/w/a.png");
    let delete = claim(j).unwrap();
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/2.png"));
    assert_eq!(j.status().unwrap().held_deletes, 1);
    assert_eq!(
        j.root_identity("/w").unwrap(),
        Some((5, 9)),
        "not taken as it is while a file in it cannot be vouched for"
    );
    assert_eq!(
        j.release_held(GONE, &|_, _| Ok(Some((5, 10))))
            .unwrap()
            .deletes_queued,
        1
    );
    assert_eq!(j.root_identity("/w").unwrap(), Some((5, 10)));
}

#[test]
fn a_delete_queued_before_the_watch_changed_to_keep_is_withdrawn() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    j.mark_missing(&removals(&["/w/a.png".to_string()], 100, None))
        .unwrap();
    assert_eq!(j.apply_remove_policy("/w", "erp", false).unwrap(), 1);
    let withdrawn = j.claim(&vendors(), 60_000).unwrap();
    assert!(
        matches!(&withdrawn, Some(Claimed::Withheld { path }) if path == "/w/a.png"),
        "{withdrawn:?}"
    );
    assert!(claim(j).is_none(), "nothing left to send");
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.state, "removed");
    assert_eq!(
        j.apply_remove_policy("/w", "erp", false).unwrap(),
        0,
        "the files are read only when the policy changed"
    );
    assert_eq!(j.apply_remove_policy("/w", "other", true).unwrap(), 0);
}

/// A watch moved into a subfolder of its old path and given another vendor, with `keep`: the
/// records the old config's watch made under the new path keep their copies too, and a delete
/// the old watch queued is withdrawn. Nothing outside the path changes, and `delete` applied
/// later covers only what the new watch recorded.
#[test]
fn keep_covers_the_records_an_earlier_watch_made_under_the_path() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/drop/a.png", "aa", "https://img/1.png");
    synced(j, "/w/dropped/c.png", "cc", "https://img/3.png");
    assert_eq!(j.apply_remove_policy("/w", "erp", true).unwrap(), 0);
    j.mark_missing(&removals(
        &["/w/drop/a.png".to_string(), "/w/dropped/c.png".to_string()],
        100,
        None,
    ))
    .unwrap();
    assert_eq!(j.apply_remove_policy("/w/drop", "erp2", false).unwrap(), 1);
    let mut withheld = Vec::new();
    while let Some(claimed) = j.claim(&vendors(), 60_000).unwrap() {
        match claimed {
            Claimed::Withheld { path } => withheld.push(path),
            Claimed::Job(job) => {
                assert_eq!(job.path, "/w/dropped/c.png", "outside the new watch");
                j.finish(&job, &JobResult::Deleted, None).unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(withheld, ["/w/drop/a.png"]);
    assert_eq!(
        j.apply_remove_policy("/w/drop", "erp2", false).unwrap(),
        0,
        "the old watch's policy is forgotten: a start reads nothing"
    );
    assert_eq!(j.apply_remove_policy("/w/drop", "erp2", true).unwrap(), 0);
}

#[test]
fn a_rejected_file_renamed_keeps_its_last_good_copy() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/2024/a.png", "aa", "https://img/1.png");
    let bad = |path| RejectedFile {
        path,
        watch_root: "/w",
        vendor: "erp",
        kind: "kingdee",
        stamp: Some(super::fixtures::stamp(50, 42)),
        reason: "truncated png",
        delete_unused: true,
    };
    j.reject(&bad("/w/2024/a.png"), PRESENT).unwrap();
    // `mv 2024 2024-archive`: the same file (device and inode) at a new path, the old one gone.
    assert!(j.reject(&bad("/w/2024-archive/a.png"), ABSENT).unwrap());
    let moved = state_of(j, "/w/2024-archive/a.png");
    assert_eq!(moved.state, "rejected");
    assert_eq!(moved.url.as_deref(), Some("https://img/1.png"));
    let gone = ["/w/2024/a.png".to_string()];
    j.mark_missing(&removals(&gone, 100, None)).unwrap();
    assert!(claim(j).is_none(), "no delete for the path it left");
    // Another file with that inode number while the old path is still there is not it.
    j.reject(&bad("/w/other.png"), PRESENT).unwrap();
    assert_eq!(state_of(j, "/w/other.png").url, None);
}

#[test]
fn a_root_identity_is_kept_and_release_held_accepts_the_root_as_it_is() {
    let mut f = fixture();
    let j = &mut f.journal;
    assert_eq!(j.root_identity("/w").unwrap(), None);
    j.set_root_identity("/w", 5, 9).unwrap();
    assert_eq!(j.root_identity("/w").unwrap(), Some((5, 9)));
    j.release_held(GONE, ACCEPTED).unwrap();
    assert_eq!(j.root_identity("/w").unwrap(), Some((1, 1)), "as it now is");
}

#[test]
fn a_foreign_or_damaged_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("photos.sqlite3");
    {
        let conn = Connection::open(&foreign).unwrap();
        conn.execute_batch("CREATE TABLE photos (x)").unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let err = Journal::open(&foreign).unwrap_err().to_string();
    assert!(err.contains("is not an imgsyncd journal"), "{err}");
    assert!(
        std::fs::read(&foreign).unwrap() == before,
        "the file was changed"
    );

    let damaged = dir.path().join("damaged.sqlite3");
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&damaged, &garbage).unwrap();
    let err = Journal::open(&damaged).unwrap_err().to_string();
    assert!(err.contains("not a database, or is damaged"), "{err}");
    assert!(
        std::fs::read(&damaged).unwrap() == garbage,
        "the file was changed"
    );
}

#[test]
fn an_expired_key_is_counted_never_reused_and_retry_sends_the_file_anew() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    let job = claim(j).unwrap();
    j.finish(
        &job,
        &JobResult::Uploaded(Remote {
            reference: "key-1".into(),
            transaction_id: Some("tx-1".into()),
            expires_at: Some(now_ms() - 1),
            record_id: None,
        }),
        None,
    )
    .unwrap();
    assert_eq!(j.status().unwrap().expired_keys, 1);
    // The same bytes elsewhere are uploaded, not handed the dead key.
    j.observe(&obs("/w/b.png", "aa"), PRESENT).unwrap();
    assert_eq!(claim(j).unwrap().path, "/w/b.png");
    let outcome = j.retry_paths(&["/w/a.png".to_string()]).unwrap();
    assert_eq!(outcome[0].1, RetryOutcome::Queued);
}

#[test]
fn a_watch_is_read_a_page_at_a_time_and_only_its_own_paths() {
    let mut f = fixture();
    let j = &mut f.journal;
    // "/w2" and "/w.old" sort around "/w/…" but are other folders.
    for (i, path) in [
        "/w/a.png",
        "/w/b/c.png",
        "/w/d.png",
        "/w2/x.png",
        "/w.old/y.png",
    ]
    .iter()
    .enumerate()
    {
        j.observe(&obs(path, &format!("sha{i}")), ABSENT).unwrap();
    }
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let page = j.known_under_page("/w", &after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = last.path.clone();
        pages.push(page.into_iter().map(|k| k.path).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        [vec!["/w/a.png", "/w/b/c.png"], vec!["/w/d.png"]],
        "in path order, two at a time, nothing of /w2 or /w.old"
    );
    assert_eq!(j.count_present_under("/w").unwrap(), 3);
    assert_eq!(j.count_present_under("/w/").unwrap(), 3);
    assert_eq!(j.known_under("/w").unwrap().len(), 3);
    let found = j.known_files(&["/w/d.png", "/w/none.png"]).unwrap();
    assert_eq!(found[0].as_ref().map(|k| k.path.as_str()), Some("/w/d.png"));
    assert!(found[1].is_none());
}

#[test]
fn a_watch_counts_as_present_only_its_files_neither_removed_nor_on_their_way_out() {
    let mut f = fixture();
    let j = &mut f.journal;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let path = format!("/w/{name}.png");
        synced(j, &path, &format!("s{i}"), &format!("https://v/{name}"));
    }
    j.observe(&obs("/w/new.png", "n"), ABSENT).unwrap();
    j.observe(&obs("/w2/x.png", "x"), ABSENT).unwrap();
    j.observe(&obs("/w.old/y.png", "y"), ABSENT).unwrap();
    assert_eq!(j.count_present_under("/w").unwrap(), 5);
    assert!(matches!(missing(j, "/w/new.png"), MissingOutcome::Removed));
    assert!(matches!(
        missing(j, "/w/a.png"),
        MissingOutcome::DeleteQueued
    ));
    let held = ["/w/b.png".to_string()];
    let outcome = j.mark_missing(&removals(&held, 100, Some("test"))).unwrap();
    assert!(matches!(outcome[0].1, MissingOutcome::Held(_)));
    assert_eq!(
        j.count_present_under("/w").unwrap(),
        2,
        "removed, deleting and held are not present; /w2 and /w.old are other folders"
    );
    assert_eq!(j.glance().unwrap().held_deletes, 1);
    assert_eq!(j.count_present_under("/w2").unwrap(), 1);
}

/// A reconcile skips looking up a file whose path and stamp are among the journal's known stamps:
/// they must be exactly the files a lookup finds unchanged and counts present.
#[test]
fn known_stamps_are_exactly_the_files_a_lookup_finds_unchanged_and_present() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/synced.png", "s1", "https://v/1");
    synced(j, "/w/sub/gone.png", "s2", "https://v/2");
    synced(j, "/w/held.png", "s3", "https://v/3");
    synced(j, "/w/renamed.png", "s4", "https://v/4");
    for (path, sha) in [
        ("/w/sub/queued.png", "q"),
        ("/w/dropped.png", "d"),
        ("/w/removed.png", "r"),
        ("/w2/other.png", "o"),
        ("/w.old/other.png", "p"),
    ] {
        j.observe(&obs(path, sha), ABSENT).unwrap();
    }
    // Pending with its job dropped: it must be examined again.
    j.conn
        .execute(
            "DELETE FROM jobs WHERE file_id = (SELECT id FROM files WHERE path = '/w/dropped.png')",
            [],
        )
        .unwrap();
    assert!(matches!(
        missing(j, "/w/sub/gone.png"),
        MissingOutcome::DeleteQueued
    ));
    assert!(matches!(
        missing(j, "/w/removed.png"),
        MissingOutcome::Removed
    ));
    let held = ["/w/held.png".to_string()];
    j.mark_missing(&removals(&held, 100, Some("test"))).unwrap();
    let moved = [("/w/renamed.png".to_string(), "/w/.renamed.png".to_string())];
    j.mark_untaken(&moved).unwrap();

    let known = j.known_stamps("/w", 100).unwrap().unwrap();
    assert_eq!(known.len(), 2, "the synced file and the queued one");
    for path in [
        "/w/synced.png",
        "/w/sub/queued.png",
        "/w/sub/gone.png",
        "/w/held.png",
        "/w/renamed.png",
        "/w/dropped.png",
        "/w/removed.png",
        "/w/none.png",
        "/w2/other.png",
        "/w.old/other.png",
    ] {
        for on_disk in [stamp(100), stamp(101), fixtures::stamp(100, 8)] {
            let looked_up = j.known_files(&[path]).unwrap().pop().unwrap();
            let settled = path.starts_with("/w/")
                && looked_up.is_some_and(|k| k.unchanged(&on_disk) && !k.untaken);
            assert_eq!(
                known.contains(path, &on_disk),
                settled,
                "{path} with {on_disk:?}"
            );
        }
    }
    assert!(
        j.known_stamps("/w", 2).unwrap().is_none(),
        "more files present than the limit (the dropped one too): none kept"
    );
    assert!(j.known_stamps("/w", 3).unwrap().is_some());
}

#[test]
fn a_walks_batch_is_looked_up_by_range_or_path_by_path_when_the_range_is_crowded() {
    let mut f = fixture();
    let j = &mut f.journal;
    for i in 0..40 {
        j.observe(&obs(&format!("/w/m/{i:02}.png"), &format!("m{i}")), ABSENT)
            .unwrap();
    }
    j.observe(&obs("/w/a.png", "a"), ABSENT).unwrap();
    j.observe(&obs("/w/z.png", "z"), ABSENT).unwrap();
    j.observe(&obs("/w/q/gone.png", "g"), ABSENT).unwrap();
    missing(j, "/w/q/gone.png");
    let paths = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let found_paths = |found: Vec<Option<KnownFile>>| {
        found
            .into_iter()
            .map(|k| k.map(|k| k.path))
            .collect::<Vec<_>>()
    };
    // A narrow batch, out of path order, with a path the journal does not hold.
    let narrow = j
        .known_files(&paths(&["/w/m/07.png", "/w/m/03.png", "/w/m/new.png"]))
        .unwrap();
    assert_eq!(
        found_paths(narrow),
        [Some("/w/m/07.png".into()), Some("/w/m/03.png".into()), None]
    );
    // Forty rows lie between these two: more than the range read takes, so path by path.
    let crowded = j
        .known_files(&paths(&["/w/z.png", "/w/a.png", "/w/q/gone.png"]))
        .unwrap();
    assert_eq!(
        found_paths(crowded),
        [Some("/w/z.png".into()), Some("/w/a.png".into()), None],
        "a removed file is not known"
    );
    assert!(j.known_files::<&str>(&[]).unwrap().is_empty());
}

/// A job whose lease ran out is due again, but not before its paused vendor's probe: the pool
/// would wake for it and find nothing it may claim.
#[test]
fn a_paused_vendors_lapsed_lease_is_due_with_its_probe() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    // Claimed with a lease already over.
    let Some(Claimed::Job(_)) = j.claim(&vendors(), -1).unwrap() else {
        panic!("a job is due");
    };
    let now = now_ms();
    assert!(
        j.next_due(&vendors()).unwrap().unwrap() <= now,
        "its lease ran out"
    );
    j.pause_vendor("erp", "down", 600_000).unwrap();
    let due = j.next_due(&vendors()).unwrap().unwrap();
    assert!(
        due >= now + 600_000,
        "due with the probe, in ten minutes: {due}"
    );
}

/// A failed probe waits behind the vendor's next probe; a reload probes at once, that job too.
#[test]
fn a_reload_probes_at_once_a_vendor_whose_probe_waits_behind_the_next() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    let probe = claim(j).unwrap();
    j.pause_vendor("erp", "down", 1_800_000).unwrap();
    let behind_the_next = JobResult::Defer {
        not_before: now_ms() + 1_800_001,
        reason: "down".into(),
    };
    j.finish(&probe, &behind_the_next, None).unwrap();
    assert!(claim(j).is_none(), "not before the next probe");
    j.probe_paused_now().unwrap();
    assert!(j.pauses().unwrap()[0].next_probe_at <= now_ms());
    assert_eq!(claim(j).map(|job| job.id), Some(probe.id));
}

#[test]
fn a_changed_file_moved_after_its_removal_was_decided_sends_its_new_bytes() {
    for hold in [None, Some("too many at once")] {
        let mut f = fixture();
        let j = &mut f.journal;
        synced(j, "/w/a.png", "aa", "https://img/1.png");
        // Overwritten with new bytes, whose upload waits in the queue.
        assert_eq!(
            j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap(),
            Observed::Changed
        );
        // Then moved away; the watch decides the removal before it sees the new name.
        let gone = ["/w/a.png".to_string()];
        j.mark_missing(&removals(&gone, 100, hold)).unwrap();
        assert_eq!(
            j.observe(&obs("/w/b.png", "bb"), ABSENT).unwrap(),
            Observed::Moved {
                from: "/w/a.png".into()
            }
        );
        let moved = state_of(j, "/w/b.png");
        assert_eq!(
            moved.state, "pending",
            "{hold:?}: its copy holds the old bytes"
        );
        let job = claim(j).unwrap();
        assert_eq!(
            (job.op, job.path.as_str(), job.sha256.as_deref()),
            (JobOp::Upload, "/w/b.png", Some("bb")),
            "{hold:?}"
        );
        j.finish(&job, &uploaded("https://img/2.png"), None)
            .unwrap();
        assert_eq!(
            state_of(j, "/w/b.png").url.as_deref(),
            Some("https://img/2.png")
        );
        // The old bytes' copy, used by nothing now, goes.
        let old = claim(j).unwrap();
        assert_eq!(
            (old.op, old.remote_ref.as_deref()),
            (JobOp::DeleteOld, Some("https://img/1.png"))
        );
    }
}

/// A changed file gone while its new bytes were in flight, its removal held: the copy the upload
/// made is its copy. The old code left that copy to nobody: `retry --held` deleted only the copy
/// of the old bytes, and the new one stayed at the vendor for good.
#[test]
fn a_copy_made_while_its_files_removal_is_held_is_deleted_with_it() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap();
    let upload = claim(j).unwrap();
    let gone = ["/w/a.png".to_string()];
    j.mark_missing(&removals(&gone, 100, Some("folder found empty")))
        .unwrap();
    j.finish(&upload, &uploaded("https://img/2.png"), None)
        .unwrap();
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.url.as_deref(), Some("https://img/2.png"));
    let old = claim(j).expect("the old bytes' copy is superseded");
    assert_eq!(
        (old.op, old.remote_ref.as_deref()),
        (JobOp::DeleteOld, Some("https://img/1.png"))
    );
    j.finish(&old, &JobResult::Deleted, None).unwrap();
    assert!(
        claim(j).is_none(),
        "the new copy waits with the held removal"
    );
    j.release_held(GONE, ACCEPTED).unwrap();
    let delete = claim(j).expect("the removal goes ahead");
    assert_eq!(
        (delete.op, delete.remote_ref.as_deref()),
        (JobOp::Delete, Some("https://img/2.png"))
    );
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    assert_eq!(state_of(j, "/w/a.png").state, "removed");
    assert_eq!(deleted_refs(j), ["https://img/1.png", "https://img/2.png"]);
}

/// A file of the vendor `wiki` on the watch "/w": the vendor a later config leaves out.
fn wiki<'a>(path: &'a str, sha: &'a str) -> Observation<'a> {
    super::fixtures::observation(path, "wiki", sha, stamp(100))
}

/// A vendor paused, then taken out of the config: the start or reload after that drops its pause
/// (nothing claims its jobs, so no probe could ever end it), in the same write as the probe at
/// once of the vendors still configured; its jobs stay queued, due, and run when it is back.
#[test]
fn a_start_or_reload_drops_the_pause_of_a_vendor_no_longer_configured() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    j.observe(&wiki("/w/b.png", "bb"), PRESENT).unwrap();
    j.pause_vendor("erp", "bad signature", 1_800_000).unwrap();
    j.pause_vendor("wiki", "app secret invalid", 1_800_000)
        .unwrap();
    // Their jobs wait behind the next probe, half an hour away.
    j.conn
        .execute("UPDATE jobs SET not_before = ?1", [now_ms() + 1_800_000])
        .unwrap();

    let erp = vendors();
    assert_eq!(j.reset_vendor_pauses(&erp).unwrap(), ["wiki"]);
    let pauses = j.pauses().unwrap();
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0].vendor, "erp");
    assert!(pauses[0].next_probe_at <= now_ms(), "erp is probed at once");
    let status = j.status().unwrap();
    let paused: Vec<&str> = status
        .paused_vendors
        .iter()
        .map(|p| p.vendor.as_str())
        .collect();
    assert_eq!(paused, ["erp"], "no report says wiki is paused");
    assert_eq!(
        j.glance().unwrap().paused_vendors,
        [("erp".to_string(), "bad signature".to_string())]
    );
    // wiki's file is still what it was: pending, its job queued (and due).
    assert_eq!(state_of(j, "/w/b.png").state, "pending");
    assert_eq!(status.by_vendor["wiki"]["pending"], 1);
    let wiki_due: i64 = j
        .conn
        .query_row(
            "SELECT not_before FROM jobs WHERE vendor = 'wiki'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        wiki_due <= now_ms(),
        "due as soon as wiki is configured again"
    );
    assert!(
        j.reset_vendor_pauses(&erp).unwrap().is_empty(),
        "nothing more to drop"
    );

    // Configured again: its job is claimed at once, and its first refusal pauses it anew.
    let both = ["erp".to_string(), "wiki".to_string()];
    assert!(j.reset_vendor_pauses(&both).unwrap().is_empty());
    let claimed: Vec<String> = std::iter::from_fn(|| match j.claim(&both, 60_000).unwrap()? {
        Claimed::Job(job) => Some(job.vendor),
        _ => None,
    })
    .collect();
    assert!(claimed.contains(&"wiki".to_string()), "{claimed:?}");
}

/// The queue's age and size, the oldest file and the pauses, as `status`, the metrics and the
/// CLI read them under the config: a vendor taken out of it does not age the queue, whose jobs
/// nothing sends; its files are still counted as what they are.
#[test]
fn the_queue_and_pauses_reported_are_those_of_the_configured_vendors() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&wiki("/w/old.png", "aa"), PRESENT).unwrap();
    j.observe(&obs("/w/new.png", "bb"), PRESENT).unwrap();
    j.pause_vendor("wiki", "app secret invalid", 60_000)
        .unwrap();
    let now = now_ms();
    // wiki's job has waited two days, erp's a minute.
    j.conn
        .execute(
            "UPDATE jobs SET created_at = ?1 - 172800000 WHERE vendor = 'wiki'",
            [now],
        )
        .unwrap();
    j.conn
        .execute(
            "UPDATE jobs SET created_at = ?1 - 60000 WHERE vendor = 'erp'",
            [now],
        )
        .unwrap();

    let everyone = j.status().unwrap();
    assert_eq!(everyone.queued_jobs, 2);
    assert!(everyone.oldest_pending_s.unwrap() >= 172_800);
    assert_eq!(j.oldest_pending().unwrap().unwrap().vendor, "wiki");

    let erp = vendors();
    let status = j.status_of(&erp).unwrap();
    assert!(
        status.paused_vendors.is_empty(),
        "{:?}",
        status.paused_vendors
    );
    assert_eq!(status.queued_jobs, 1);
    let age = status.oldest_pending_s.unwrap();
    assert!((60..120).contains(&age), "erp's job alone: {age}");
    let oldest = j.oldest_pending_of(&erp).unwrap().unwrap();
    assert_eq!(
        (oldest.path.as_str(), oldest.vendor.as_str()),
        ("/w/new.png", "erp")
    );
    // Its files are still there for what they are.
    assert_eq!(status.files["pending"], 2);
    assert_eq!(status.by_vendor["wiki"]["pending"], 1);
    assert_eq!(status.by_vendor["erp"]["pending"], 1);

    // erp's file synced: the queue of the configured vendors is empty.
    let job = claim(j).unwrap();
    j.finish(&job, &uploaded("https://img/1.png"), None)
        .unwrap();
    let status = j.status_of(&erp).unwrap();
    assert_eq!((status.queued_jobs, status.oldest_pending_s), (0, None));
    assert!(j.oldest_pending_of(&erp).unwrap().is_none());
    assert!(j.oldest_pending_of(&[]).unwrap().is_none());

    // The oldest of several configured vendors is the oldest of them all.
    let both = ["erp".to_string(), "wiki".to_string()];
    let status = j.status_of(&both).unwrap();
    assert_eq!(status.queued_jobs, 1);
    assert!(status.oldest_pending_s.unwrap() >= 172_800);
    assert_eq!(status.paused_vendors[0].vendor, "wiki");
    assert_eq!(
        j.oldest_pending_of(&both).unwrap().unwrap().path,
        "/w/old.png"
    );
}

/// A call that must not be made twice, noted as it goes out and never answered (the daemon
/// stopped), is not made again: the job claimed again settles the file as waiting for a person,
/// naming what to look for. An answer, even one that carried nothing out, clears the note; a job
/// no longer running takes none.
#[test]
fn a_call_in_doubt_is_not_made_again_and_an_answer_clears_it() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    let job = claim(j).unwrap();
    assert_eq!(job.in_doubt, None);
    // Answered: a retry (a 503), then a deferral (the vendor paused) carried nothing out.
    assert!(
        j.note_in_doubt(job.id, "creating the record of key k1")
            .unwrap()
    );
    j.finish(&job, &answer_lost(), None).unwrap();
    let job = claim(j).unwrap();
    assert_eq!(job.in_doubt, None, "an answer clears the note");
    assert!(
        j.note_in_doubt(job.id, "creating the record of key k2")
            .unwrap()
    );
    let defer = JobResult::Defer {
        not_before: 0,
        reason: "paused".into(),
    };
    j.finish(&job, &defer, Some(&Attempt::default())).unwrap();
    let job = claim(j).unwrap();
    assert_eq!(job.in_doubt, None, "an answer clears the note");

    // Never answered: the daemon stops, and the next start puts the job back.
    assert!(
        j.note_in_doubt(job.id, "creating the record of key k3")
            .unwrap()
    );
    j.release(&[job.id]).unwrap();
    let settled = j.claim(&vendors(), 60_000).unwrap();
    assert!(
        matches!(&settled, Some(Claimed::InDoubt { path, why })
            if path == "/w/a.png" && why.contains("creating the record of key k3 was begun")),
        "{settled:?}"
    );
    let file = state_of(j, "/w/a.png");
    assert_eq!(file.state, "failed");
    let error = file.error.unwrap_or_default();
    assert!(
        error.contains("key k3") && error.contains("imgsyncd retry /w/a.png"),
        "{error}"
    );
    assert!(claim(j).is_none(), "nothing sent again");
    assert!(
        !j.note_in_doubt(job.id, "anything").unwrap(),
        "a settled job takes no note"
    );
}

/// A call in doubt whose file goes, or changes, before the job is claimed again: the job is
/// dropped with the file's old work, and the file's history keeps that the vendor may hold what
/// the call made, with what to look for.
#[test]
fn a_call_in_doubt_dropped_with_its_file_stays_in_the_history() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/gone.png", "aa"), PRESENT).unwrap();
    j.observe(&obs("/w/changed.png", "cc"), PRESENT).unwrap();
    let jobs = [claim(j).unwrap(), claim(j).unwrap()];
    for job in &jobs {
        let key = if job.path == "/w/gone.png" {
            "k1"
        } else {
            "k2"
        };
        assert!(
            j.note_in_doubt(job.id, &format!("creating the record of key {key}"))
                .unwrap()
        );
    }
    // The daemon is killed; its next start puts the jobs back in the queue.
    j.release(&[jobs[0].id, jobs[1].id]).unwrap();
    missing(j, "/w/gone.png");
    j.observe(&obs("/w/changed.png", "bb"), PRESENT).unwrap();
    for (path, key) in [("/w/gone.png", "k1"), ("/w/changed.png", "k2")] {
        let history = j.history(path).unwrap().unwrap();
        let last = history.last().unwrap();
        assert_eq!(last.outcome, "unconfirmed", "{history:?}");
        let message = last.message.as_deref().unwrap_or_default();
        assert!(
            message.contains(&format!("creating the record of key {key} was begun"))
                && message.contains("the file changed or went before the daemon could settle it"),
            "{message}"
        );
    }
    // The changed file's new bytes go as any new content does; nothing is in doubt about them.
    let job = claim(j).unwrap();
    assert_eq!(job.path, "/w/changed.png");
    assert_eq!(job.in_doubt, None);
    assert!(claim(j).is_none());
}

/// A call in doubt whose file changed while the call was out (its job running, so not dropped):
/// claimed again after the restart, it is dropped with a warning that names what to look for,
/// and the new bytes go.
#[test]
fn a_call_in_doubt_whose_file_changed_meanwhile_is_dropped_with_its_reason() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    let job = claim(j).unwrap();
    assert!(
        j.note_in_doubt(job.id, "creating the record of key k1")
            .unwrap()
    );
    j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap();
    j.release(&[job.id]).unwrap();
    let mut settled = None;
    let mut sent = Vec::new();
    while let Some(claimed) = j.claim(&vendors(), 60_000).unwrap() {
        match claimed {
            Claimed::Job(job) => sent.push(job.sha256.clone().unwrap_or_default()),
            other => settled = Some(other),
        }
    }
    assert!(
        matches!(&settled, Some(Claimed::DroppedInDoubt { path, why })
            if path == "/w/a.png"
                && why.contains("creating the record of key k1 was begun")
                && why.contains("the file changed or went")),
        "{settled:?}"
    );
    assert_eq!(sent, ["bb"], "the new bytes go, the old are not sent again");
    let history = j.history("/w/a.png").unwrap().unwrap();
    assert_eq!(
        history.last().unwrap().outcome,
        "unconfirmed",
        "{history:?}"
    );
}

/// The same bytes put back at the path of a file whose record was in doubt when it was removed:
/// still in doubt, they wait for a person rather than making a second record. Other bytes go.
#[test]
fn bytes_put_back_after_a_call_in_doubt_wait_for_a_person() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    j.observe(&obs("/w/b.png", "bb"), PRESENT).unwrap();
    let jobs = [claim(j).unwrap(), claim(j).unwrap()];
    for job in &jobs {
        let what = format!("creating the record of {}", job.path);
        assert!(j.note_in_doubt(job.id, &what).unwrap());
    }
    j.release(&[jobs[0].id, jobs[1].id]).unwrap();
    missing(j, "/w/a.png");
    missing(j, "/w/b.png");
    j.observe(&obs("/w/a.png", "aa"), PRESENT).unwrap();
    j.observe(&obs("/w/b.png", "cc"), PRESENT).unwrap();
    let mut sent = Vec::new();
    let mut held = Vec::new();
    while let Some(claimed) = j.claim(&vendors(), 60_000).unwrap() {
        match claimed {
            Claimed::Job(job) => sent.push(job.path.clone()),
            Claimed::InDoubt { path, why } => held.push((path, why)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, ["/w/b.png"], "new bytes go");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, "/w/a.png");
    assert!(
        held[0]
            .1
            .contains("creating the record of /w/a.png was begun"),
        "{held:?}"
    );
    assert_eq!(state_of(j, "/w/a.png").state, "failed");
}
