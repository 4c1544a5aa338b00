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

fn obs<'a>(path: &'a str, sha: &'a str) -> Observation<'a> {
    Observation {
        path,
        watch_root: "/w",
        vendor: "erp",
        kind: "kingdee",
        size: 100,
        mtime_ns: 1,
        sha256: sha,
        format: "png",
        width: 10,
        height: 10,
        delete_replaced: true,
    }
}

const ABSENT: &dyn Fn(&str) -> bool = &|_| false;
const PRESENT: &dyn Fn(&str) -> bool = &|_| true;

fn vendors() -> Vec<String> {
    vec!["erp".to_string()]
}

fn uploaded(url: &str) -> JobResult {
    JobResult::Uploaded {
        remote: Remote {
            url: Some(url.into()),
            ..Remote::default()
        },
        can_delete: true,
    }
}

/// A new file taken through upload to `synced` with `url`.
fn synced(j: &mut Journal, path: &str, sha: &str, url: &str) {
    j.observe(&obs(path, sha), ABSENT).unwrap();
    let job = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(job.path, path);
    j.finish(&job, &uploaded(url), None).unwrap();
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
    let job = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(job.op, JobOp::Upload);
    assert!(
        j.claim(&vendors(), 60_000).unwrap().is_none(),
        "a claimed job is leased"
    );
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
    assert!(j.claim(&vendors(), 60_000).unwrap().is_none());
}

#[test]
fn a_crashed_daemons_running_jobs_go_back_to_the_queue() {
    let mut f = fixture();
    f.journal.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    f.journal.claim(&vendors(), 60_000).unwrap().unwrap();
    drop(f.journal);
    let mut reopened = Journal::open(&f.path).unwrap();
    assert!(reopened.claim(&vendors(), 60_000).unwrap().is_none());
    assert_eq!(reopened.requeue_running().unwrap(), 1);
    assert!(reopened.claim(&vendors(), 60_000).unwrap().is_some());
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
    assert!(j.claim(&vendors(), 60_000).unwrap().is_none());
    assert_eq!(
        j.mark_missing("/w/a.png", &Removal::Delete).unwrap(),
        MissingOutcome::NotTracked
    );
}

#[test]
fn removal_deletes_by_url_and_records_it() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(
        j.mark_missing("/w/a.png", &Removal::Delete).unwrap(),
        MissingOutcome::DeleteQueued
    );
    let delete = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(delete.op, JobOp::Delete);
    assert_eq!(delete.remote_ref.as_deref(), Some("https://img/1.png"));
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    let row = state_of(j, "/w/a.png");
    assert_eq!(row.state, "removed");
    assert_eq!(row.remote_deleted, Some(true));
}

#[test]
fn a_queued_file_removed_is_dropped_from_the_queue() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    assert_eq!(
        j.mark_missing("/w/a.png", &Removal::Delete).unwrap(),
        MissingOutcome::Removed
    );
    assert!(j.claim(&vendors(), 60_000).unwrap().is_none());
    assert_eq!(state_of(j, "/w/a.png").remote_deleted, Some(false));
}

#[test]
fn a_changed_file_is_uploaded_again_and_the_old_copy_deleted() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(
        j.observe(&obs("/w/a.png", "bb"), PRESENT).unwrap(),
        Observed::Changed
    );
    let mut ops = Vec::new();
    while let Some(job) = j.claim(&vendors(), 60_000).unwrap() {
        ops.push((job.op, job.remote_ref.clone()));
    }
    ops.sort_by_key(|(op, _)| op.as_str());
    assert_eq!(
        ops,
        vec![
            (JobOp::DeleteOld, Some("https://img/1.png".to_string())),
            (JobOp::Upload, None)
        ]
    );
}

#[test]
fn the_same_bytes_twice_are_found_as_a_synced_twin() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    assert_eq!(
        j.observe(&obs("/w/copy.png", "aa"), PRESENT).unwrap(),
        Observed::Queued
    );
    let (twin, remote) = j.synced_twin("erp", "aa").unwrap().unwrap();
    assert_eq!(twin, "/w/a.png");
    assert_eq!(remote.url.as_deref(), Some("https://img/1.png"));
    // Removing one of two files that share a URL keeps the remote copy.
    let copy = j.claim(&vendors(), 60_000).unwrap().unwrap();
    j.finish(&copy, &uploaded("https://img/1.png"), None)
        .unwrap();
    assert_eq!(
        j.mark_missing("/w/copy.png", &Removal::Delete).unwrap(),
        MissingOutcome::Shared {
            with: "/w/a.png".into()
        }
    );
}

#[test]
fn transient_failures_retry_until_give_up_then_fail_and_retry_puts_them_back() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = j.claim(&vendors(), 60_000).unwrap().unwrap();
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
    let again = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(again.attempts, 1);
    assert!(again.first_failure_at.is_some());
    assert_eq!(j.finish(&again, &retry(0), None).unwrap(), Finished::GaveUp);
    assert_eq!(state_of(j, "/w/a.png").state, "failed");
    assert_eq!(j.retry_failed().unwrap(), 1);
    assert_eq!(state_of(j, "/w/a.png").state, "pending");
    assert!(j.claim(&vendors(), 60_000).unwrap().is_some());
}

#[test]
fn a_rejected_file_is_not_retried_and_its_reason_is_kept() {
    let mut f = fixture();
    let j = &mut f.journal;
    let rejected = RejectedFile {
        path: "/w/notes.jpg",
        watch_root: "/w",
        vendor: "erp",
        kind: "kingdee",
        size: Some(5),
        mtime_ns: Some(1),
        reason: "not an image",
        delete_replaced: true,
    };
    assert!(j.reject(&rejected).unwrap());
    assert!(
        !j.reject(&rejected).unwrap(),
        "the same verdict is not recorded twice"
    );
    let row = state_of(j, "/w/notes.jpg");
    assert_eq!(
        (row.state.as_str(), row.error.as_deref()),
        ("rejected", Some("not an image"))
    );
    assert!(j.claim(&vendors(), 60_000).unwrap().is_none());
}

#[test]
fn held_deletes_wait_for_the_operator() {
    let mut f = fixture();
    let j = &mut f.journal;
    synced(j, "/w/a.png", "aa", "https://img/1.png");
    let hold = Removal::Hold("too many".into());
    assert_eq!(
        j.mark_missing("/w/a.png", &hold).unwrap(),
        MissingOutcome::Held
    );
    assert!(j.claim(&vendors(), 60_000).unwrap().is_none());
    assert_eq!(j.status().unwrap().held_deletes, 1);
    assert_eq!(j.release_held(ABSENT).unwrap(), 1);
    assert_eq!(
        j.claim(&vendors(), 60_000).unwrap().unwrap().op,
        JobOp::Delete
    );
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
    assert!(
        err.contains("schema version 99, newer than this imgsyncd knows (2)"),
        "{err}"
    );
}

#[test]
fn history_keeps_every_attempt() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = j.claim(&vendors(), 60_000).unwrap().unwrap();
    let attempt = Attempt {
        outcome: "retry".into(),
        http_status: Some(519),
        vendor_code: Some("5007".into()),
        message: Some("overload".into()),
        duration_ms: 12,
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
fn a_file_removed_during_its_upload_is_deleted_when_the_upload_ends() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let upload = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(
        j.mark_missing("/w/a.png", &Removal::Delete).unwrap(),
        MissingOutcome::Deferred
    );
    j.finish(&upload, &uploaded("https://img/1.png"), None)
        .unwrap();
    let delete = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(
        (delete.op, delete.remote_ref.as_deref()),
        (JobOp::Delete, Some("https://img/1.png"))
    );
    j.finish(&delete, &JobResult::Deleted, None).unwrap();
    assert_eq!(state_of(j, "/w/a.png").remote_deleted, Some(true));
}

#[test]
fn an_upload_of_content_that_changed_meanwhile_is_deleted_as_stale() {
    let mut f = fixture();
    let j = &mut f.journal;
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let first = j.claim(&vendors(), 60_000).unwrap().unwrap();
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
    while let Some(job) = j.claim(&vendors(), 60_000).unwrap() {
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
    j.reject(&RejectedFile {
        path: "/w/x.jpg",
        watch_root: "/w",
        vendor: "erp",
        kind: "kingdee",
        size: Some(5),
        mtime_ns: Some(1),
        reason: "cannot read: permission denied",
        delete_replaced: true,
    })
    .unwrap();
    let outcome = j.retry_paths(&["/w/x.jpg".to_string()]).unwrap();
    assert_eq!(outcome[0].1, RetryOutcome::Reexamined);
    let known = j.known_under("/w").unwrap();
    assert_eq!(known[0].size, None, "the next scan sees it as changed");
    // A file the vendor refused goes straight back to the queue.
    j.observe(&obs("/w/a.png", "aa"), ABSENT).unwrap();
    let job = j.claim(&vendors(), 60_000).unwrap().unwrap();
    j.finish(&job, &JobResult::Rejected("invalid".into()), None)
        .unwrap();
    let outcome = j.retry_paths(&["/w/a.png".to_string()]).unwrap();
    assert_eq!(outcome[0].1, RetryOutcome::Queued);
    assert!(j.claim(&vendors(), 60_000).unwrap().is_some());
}

#[test]
fn migrations_are_applied_in_order_and_recorded() {
    let f = fixture();
    assert_eq!(f.journal.schema_version().unwrap(), MIGRATIONS.len() as i64);
    drop(f.journal);
    let reopened = Journal::open(&f.path).unwrap();
    assert_eq!(reopened.schema_version().unwrap(), MIGRATIONS.len() as i64);
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
    let first = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert!(
        j.claim(&vendors(), 60_000).unwrap().is_none(),
        "the twin waits"
    );
    j.finish(&first, &uploaded("https://img/1.png"), None)
        .unwrap();
    let second = j.claim(&vendors(), 60_000).unwrap().unwrap();
    assert_eq!(second.path, "/w/b.png");
    assert!(
        j.synced_twin("erp", "aa").unwrap().is_some(),
        "and reuses the first's URL"
    );
}
