//! A property test of the journal model: random sequences of what the disk, the workers and the
//! vendor do — files appearing, changing, vanishing and coming back, held deletes released, jobs
//! claimed and answered out of order, answers lost, crashes — checked after every step against
//! a model of what the vendor really holds.
//!
//! After each step: no copy a file still uses is deleted or being deleted, no synced file points
//! at a copy that is not live, every copy the journal calls live is held by the vendor, and a
//! delete is never sent for a copy a file still uses. A claimed job waits in its slot's line
//! until it is sent (a delete asks the journal then, `begin_delete`), and may be put back
//! before.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rusqlite::{OptionalExtension, params};

use super::*;

const PATHS: [&str; 3] = ["/w/a.png", "/w/b.png", "/w/c.png"];
const CONTENTS: [&str; 2] = ["aa", "bb"];

#[derive(Debug, Clone)]
enum Step {
    /// A file is written (or rewritten) with some content.
    Observe { path: usize, content: usize },
    /// A file turns bad (truncated, unreadable).
    Reject { path: usize },
    /// A file vanishes; with `hold`, its delete is held (a burst, an unmounted share). A file
    /// renamed out of the watch's names vanishes from where it went (a trash emptied).
    Remove { path: usize, hold: bool },
    /// A file is renamed to a name the watch does not take (`.a.png`): excluded, not gone.
    RenameOut { path: usize },
    /// The operator confirms held deletes; each held file gone whose bit is set in `renamed` is
    /// found renamed out of the watch's names meanwhile.
    ReleaseHeld { renamed: u8 },
    /// A worker claims the next job and keeps it in its line, unsent.
    Claim,
    /// A worker sends a job of its line.
    Send { which: usize },
    /// The vendor answers a job (sent now if it was not yet).
    Answer { which: usize, answer: Answer },
    /// A worker puts a job of its line back unsent (its vendor paused, the daemon stopping).
    PutBack { which: usize },
    /// The daemon dies: claimed jobs are abandoned (the vendor may have done those sent) and go
    /// back to the queue at the restart.
    Crash { done_at_vendor: bool },
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Success,
    /// The vendor did it, but the answer was lost (502): the job is retried.
    Lost,
    Transient,
    Refused,
    /// Refused for a rate limit: nothing done, tried again later.
    RateLimited,
}

fn step() -> impl Strategy<Value = Step> {
    let answer = prop_oneof![
        4 => Just(Answer::Success),
        1 => Just(Answer::Lost),
        1 => Just(Answer::Transient),
        1 => Just(Answer::Refused),
        1 => Just(Answer::RateLimited),
    ];
    prop_oneof![
        4 => (0..PATHS.len(), 0..CONTENTS.len())
            .prop_map(|(path, content)| Step::Observe { path, content }),
        1 => (0..PATHS.len()).prop_map(|path| Step::Reject { path }),
        3 => (0..PATHS.len(), any::<bool>()).prop_map(|(path, hold)| Step::Remove { path, hold }),
        2 => (0..PATHS.len()).prop_map(|path| Step::RenameOut { path }),
        1 => any::<u8>().prop_map(|renamed| Step::ReleaseHeld { renamed }),
        5 => Just(Step::Claim),
        3 => (0..4usize).prop_map(|which| Step::Send { which }),
        5 => (0..4usize, answer).prop_map(|(which, answer)| Step::Answer { which, answer }),
        1 => (0..4usize).prop_map(|which| Step::PutBack { which }),
        1 => any::<bool>().prop_map(|done_at_vendor| Step::Crash { done_at_vendor }),
    ]
}

/// What the vendor really holds.
#[derive(Default)]
struct Vendor {
    held: BTreeSet<String>,
    next: u32,
}

impl Vendor {
    fn store(&mut self) -> String {
        self.next += 1;
        let reference = format!("https://img/{}.png", self.next);
        self.held.insert(reference.clone());
        reference
    }
}

struct World {
    _dir: tempfile::TempDir,
    journal: Journal,
    vendor: Vendor,
    on_disk: [Option<usize>; 3],
    /// Files renamed out of the watch's names, by the path they left, with the live copy their
    /// record had then: it must stay live while the record stays at that path with it.
    renamed_out: [bool; 3],
    kept_for: [Option<i64>; 3],
    /// Claimed jobs, and whether each was sent.
    in_flight: Vec<(Job, bool)>,
    /// Per copy, the deletes sent for it that the vendor may have carried out: all but those
    /// it answered with a refusal.
    maybe_deleted: BTreeMap<i64, u32>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.sqlite3")).unwrap();
        World {
            _dir: dir,
            journal,
            vendor: Vendor::default(),
            on_disk: [None; 3],
            renamed_out: [false; 3],
            kept_for: [None; 3],
            in_flight: Vec::new(),
            maybe_deleted: BTreeMap::new(),
        }
    }

    fn observation(&self, path: usize, content: usize) -> Observation<'static> {
        let stamp = super::fixtures::stamp(100 + content as u64, path as u64);
        super::fixtures::observation(PATHS[path], "erp", CONTENTS[content], stamp)
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Observe { path, content } => {
                self.on_disk[path] = Some(content);
                self.renamed_out[path] = false;
                let on_disk = self.on_disk;
                let present = move |p: &str| {
                    PATHS
                        .iter()
                        .position(|known| *known == p)
                        .is_some_and(|i| on_disk[i].is_some())
                };
                let obs = self.observation(path, content);
                let before = self.record(PATHS[path]);
                self.journal.observe(&obs, &present).unwrap();
                self.check_copy_kept(path, content, before);
            }
            Step::Reject { path } => {
                if self.on_disk[path].is_none() {
                    return;
                }
                self.journal
                    .reject(
                        &RejectedFile {
                            path: PATHS[path],
                            watch_root: "/w",
                            vendor: "erp",
                            kind: "kingdee",
                            stamp: None,
                            reason: "truncated",
                            delete_unused: true,
                        },
                        &|_| true,
                    )
                    .unwrap();
            }
            Step::Remove { path, hold } => {
                let renamed_out = std::mem::take(&mut self.renamed_out[path]);
                if self.on_disk[path].take().is_none() && !renamed_out {
                    return;
                }
                let paths = [PATHS[path].to_string()];
                self.journal
                    .mark_missing(&RemovalBatch {
                        watch_root: "/w",
                        paths: &paths,
                        policy: RemovalPolicy::Delete,
                        max_deletes: 100,
                        window_ms: 3_600_000,
                        hold: hold.then_some("test"),
                    })
                    .unwrap();
            }
            Step::RenameOut { path } => {
                if self.on_disk[path].take().is_none() {
                    return;
                }
                self.renamed_out[path] = true;
                self.kept_for[path] = self.live_copy_of(PATHS[path]);
                let moved = [(PATHS[path].to_string(), format!("/w/.{path}.png"))];
                self.journal.mark_untaken(&moved).unwrap();
            }
            Step::ReleaseHeld { renamed } => {
                let on_disk = self.on_disk;
                let found_renamed = std::cell::RefCell::new(Vec::new());
                let look = |_: &str, held: &[(String, Option<FileStamp>)]| {
                    held.iter()
                        .map(|(p, _)| {
                            let i = PATHS.iter().position(|known| known == p).unwrap();
                            match (on_disk[i].is_some(), renamed & (1 << i) != 0) {
                                (true, _) => Presence::Present,
                                (false, true) => {
                                    found_renamed.borrow_mut().push(i);
                                    Presence::Untaken(format!("/w/.{i}.png"))
                                }
                                (false, false) => Presence::Gone,
                            }
                        })
                        .collect()
                };
                self.journal
                    .release_held(&look, &|_, _| Ok(Some((1, 1))))
                    .unwrap();
                for i in found_renamed.into_inner() {
                    self.renamed_out[i] = true;
                    self.kept_for[i] = self.live_copy_of(PATHS[i]);
                }
            }
            Step::Claim => {
                let names = vec!["erp".to_string()];
                if let Some(Claimed::Job(job)) = self.journal.claim(&names, 3_600_000).unwrap() {
                    self.in_flight.push((job, false));
                }
            }
            Step::Send { which } => {
                if !self.in_flight.is_empty() {
                    self.send(which % self.in_flight.len());
                }
            }
            Step::Answer { which, answer } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let which = which % self.in_flight.len();
                if !self.send(which) {
                    return;
                }
                let (job, _) = self.in_flight.remove(which);
                let result = self.vendor_answers(&job, answer);
                let refused = matches!(answer, Answer::Refused | Answer::RateLimited);
                if let (true, Some(copy), true) = (job.op != JobOp::Upload, job.copy_id, refused) {
                    *self.maybe_deleted.entry(copy).or_default() -= 1;
                }
                let attempt = Attempt {
                    refused,
                    ..Attempt::default()
                };
                self.journal.finish(&job, &result, Some(&attempt)).unwrap();
            }
            Step::PutBack { which } => {
                let unsent: Vec<usize> = (0..self.in_flight.len())
                    .filter(|i| !self.in_flight[*i].1)
                    .collect();
                if unsent.is_empty() {
                    return;
                }
                let (job, _) = self.in_flight.remove(unsent[which % unsent.len()]);
                self.journal.put_back_unsent(&job).unwrap();
            }
            Step::Crash { done_at_vendor } => {
                for (job, sent) in std::mem::take(&mut self.in_flight) {
                    if done_at_vendor && sent {
                        self.vendor_answers(&job, Answer::Lost);
                    }
                }
                self.journal.requeue_running().unwrap();
            }
        }
    }

    /// Sends the claimed job `which`, as a slot does when its turn comes: a delete asks the
    /// journal first, and may be settled instead (then recorded as the worker records it, and
    /// gone from the line). Returns whether it is (or already was) sent.
    fn send(&mut self, which: usize) -> bool {
        let (job, sent) = &mut self.in_flight[which];
        if *sent {
            return true;
        }
        if job.op != JobOp::Upload {
            if let Some(_settled) = self.journal.begin_delete(job).unwrap() {
                let (job, _) = self.in_flight.remove(which);
                self.journal
                    .finish(&job, &JobResult::Release, None)
                    .unwrap();
                return false;
            }
            let job = job.clone();
            self.check_delete_is_wanted(&job);
            if let Some(copy) = job.copy_id {
                *self.maybe_deleted.entry(copy).or_default() += 1;
            }
        }
        self.in_flight[which].1 = true;
        true
    }

    /// What the vendor does with the job, and what the worker records.
    fn vendor_answers(&mut self, job: &Job, answer: Answer) -> JobResult {
        let retry = JobResult::Retry {
            not_before: 0,
            reason: "HTTP 502".into(),
            give_up_after_ms: 3_600_000,
        };
        match (job.op, answer) {
            (_, Answer::Transient) => retry,
            (_, Answer::RateLimited) => JobResult::Defer {
                not_before: 0,
                reason: "rate limited".into(),
            },
            (JobOp::Upload, Answer::Refused) => JobResult::Rejected("invalid".into()),
            (JobOp::Upload, Answer::Success) => JobResult::Uploaded(Remote {
                reference: self.vendor.store(),
                ..Remote::default()
            }),
            (JobOp::Upload, Answer::Lost) => {
                self.vendor.store();
                retry
            }
            (_, Answer::Refused) => JobResult::Rejected("refused".into()),
            (_, Answer::Success) => {
                // An image already gone is answered "does not exist": done all the same.
                self.vendor.held.remove(job.remote_ref.as_deref().unwrap());
                JobResult::Deleted
            }
            (_, Answer::Lost) => {
                self.vendor.held.remove(job.remote_ref.as_deref().unwrap());
                retry
            }
        }
    }

    /// The live copy the file at `path` is synced to, if any.
    fn live_copy_of(&self, path: &str) -> Option<i64> {
        self.journal
            .conn
            .query_row(
                "SELECT f.copy_id FROM files f JOIN remote_copies c ON c.id = f.copy_id
                 WHERE f.path = ?1 AND f.state = 'synced' AND c.state = 'live'",
                [path],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
    }

    /// A file renamed out of the watch's names still uses the copy its record had: while the
    /// record stays at the path with that copy, the copy is live.
    fn check_renamed_out_keep_their_copies(&self) {
        for (i, path) in PATHS.iter().enumerate() {
            let Some(copy) = self.kept_for[i].filter(|_| self.renamed_out[i]) else {
                continue;
            };
            // Whether the copy is live, while the record at the path still points at it.
            let live: Option<bool> = self
                .journal
                .conn
                .query_row(
                    "SELECT c.state = 'live' FROM files f JOIN remote_copies c ON c.id = f.copy_id
                     WHERE f.path = ?1 AND f.copy_id = ?2",
                    params![path, copy],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            assert_ne!(
                live,
                Some(false),
                "the copy of {path}, renamed out of the watch's names, was deleted"
            );
        }
    }

    /// The content and copy of the record at `path`, if any.
    fn record(&self, path: &str) -> Option<(Option<String>, Option<i64>)> {
        self.journal
            .conn
            .query_row(
                "SELECT sha256, copy_id FROM files WHERE path = ?1",
                [path],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .unwrap()
    }

    /// A file written back with the bytes its record's copy holds, no delete of that copy sent
    /// but refused ones, is synced to that copy again: the address the user's ERP has keeps working, and the
    /// bytes are not sent again.
    fn check_copy_kept(
        &self,
        path: usize,
        content: usize,
        before: Option<(Option<String>, Option<i64>)>,
    ) {
        let Some((Some(sha), Some(copy))) = before else {
            return;
        };
        if sha != CONTENTS[content] || self.maybe_deleted.get(&copy).is_some_and(|n| *n > 0) {
            return;
        }
        assert_eq!(
            self.record(PATHS[path]).and_then(|(_, copy)| copy),
            Some(copy),
            "{} came back with its bytes, no delete of its copy was carried out, and its copy changed",
            PATHS[path]
        );
    }

    /// A delete about to be sent is for a copy no file on disk (or held) uses.
    fn check_delete_is_wanted(&self, job: &Job) {
        let users: i64 = self
            .journal
            .conn
            .query_row(
                "SELECT COUNT(*) FROM files WHERE copy_id = ?1
                   AND (removal IS NULL OR removal = 'held') AND state != 'removed'",
                [job.copy_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(users, 0, "a delete is sent for a copy a file uses: {job:?}");
    }

    fn check(&self) {
        let conn = &self.journal.conn;
        let in_use_not_live: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM files f JOIN remote_copies c ON c.id = f.copy_id
                 WHERE (f.removal IS NULL OR f.removal = 'held') AND f.state != 'removed'
                   AND c.state != 'live'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(in_use_not_live, 0, "a file still uses a deleted copy");
        let synced_without_copy: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM files f LEFT JOIN remote_copies c ON c.id = f.copy_id
                 WHERE f.state = 'synced' AND (c.id IS NULL OR c.state != 'live')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(synced_without_copy, 0, "a synced file without a live copy");
        let mut stmt = conn
            .prepare("SELECT remote_ref FROM remote_copies WHERE state = 'live'")
            .unwrap();
        let live: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for reference in live {
            assert!(
                self.vendor.held.contains(&reference),
                "the journal calls {reference} live, the vendor does not hold it"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_copy_in_use_is_deleted_and_no_record_lies(steps in prop::collection::vec(step(), 1..60)) {
        let mut world = World::new();
        for step in &steps {
            world.apply(step);
            world.check();
            world.check_renamed_out_keep_their_copies();
        }
    }
}
