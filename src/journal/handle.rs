//! The daemon's one writer: a connection behind a mutex, called from async code on the blocking pool
//! so SQLite never stalls the executor's threads.
//!
//! Writes that arrive together are committed together (group commit): every commit costs locks and
//! a write of each changed page to the WAL, which cost more than the statements themselves when the
//! watch, the pool and four workers each record one file at a time. A caller is answered only once
//! the group's transaction is committed, so nothing acts on a write that could still be undone.
//!
//! A group runs first without savepoints, which copy every page a write changes; only when a
//! write would have taken its changes back is the group taken back and run again with them
//! ([`super::sql::Unguarded`]). So a write may run twice before its group commits, and must
//! change nothing but the journal: it is `FnMut`.
//!
//! Commits are spaced: a group that follows a group of several writes begins no sooner than
//! [`COMMIT_SPACING`] after that one began, and what comes meanwhile joins it. A lone write is
//! committed at once, and so is the one after it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::checkpoint::{self, Checkpointer};
use super::{Journal, JournalError, Result};

/// The least time between two commits while writes keep coming. Four workers draining a backlog
/// each record an outcome and claim a job every few hundred microseconds: committed as they came,
/// groups held about three files, and the commits (a WAL frame per changed page, and waking each
/// writer's caller) cost as much as the statements. Spaced by 2 ms, groups grow with the load;
/// the 10 000-file drain took a sixth less CPU (BENCHMARKS.md, ninth round). A file settled in an
/// idle daemon is not held: its record is a lone write.
const COMMIT_SPACING: Duration = Duration::from_millis(2);

/// A write waiting for the next group.
type Queued = Box<dyn Waiting>;

#[derive(Clone)]
pub struct JournalHandle {
    journal: Arc<Mutex<Journal>>,
    queued: Arc<Mutex<Vec<Queued>>>,
    /// Whether a writer is at work on the queue.
    draining: Arc<AtomicBool>,
    /// When the last group began, if it was of several writes (`None` after a lone write); only
    /// the writer at work reads or sets it.
    busy_group_began: Arc<Mutex<Option<Instant>>>,
    /// Since when the group or call under way has held the journal (`None`: none is).
    at_work_since: Arc<Mutex<Option<Instant>>>,
    /// Copies what is committed into the journal's file, so the writer does not (`None` for a
    /// journal in memory, or when it could not start).
    checkpointer: Option<Arc<Checkpointer>>,
    /// The journal's file, for [`JournalHandle::sync_log`] (`None`: a journal in memory).
    file: Option<Arc<std::path::PathBuf>>,
}

impl std::fmt::Debug for JournalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalHandle").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl JournalHandle {
    pub fn new(journal: Journal) -> JournalHandle {
        let file = checkpoint::file_of(&journal.conn);
        let checkpointer = file.as_deref().and_then(Checkpointer::start).map(Arc::new);
        JournalHandle {
            checkpointer,
            file: file.map(Arc::new),
            journal: Arc::new(Mutex::new(journal)),
            queued: Arc::default(),
            draining: Arc::default(),
            busy_group_began: Arc::default(),
            at_work_since: Arc::default(),
        }
    }

    /// How long the group or call under way has held the journal, if one does: the watchdog
    /// tells a writer waiting out another process's lock (at most [`super::BUSY_TIMEOUT`] a
    /// statement) from one that is wedged.
    pub fn at_work_for(&self) -> Option<Duration> {
        lock(&self.at_work_since).map(|since| since.elapsed())
    }

    /// Runs `f` with the journal on a blocking thread (reads, and writes that must stand alone).
    pub async fn call<R, F>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(&mut Journal) -> R + Send + 'static,
    {
        let (inner, at_work) = (Arc::clone(&self.journal), Arc::clone(&self.at_work_since));
        let checkpointer = self.checkpointer.clone();
        tokio::task::spawn_blocking(move || {
            let mut journal = lock(&inner);
            let _at_work = AtWork::begin(&at_work);
            let changes = journal.conn.total_changes();
            let result = f(&mut journal);
            if let Some(checkpointer) =
                checkpointer.filter(|_| journal.conn.total_changes() != changes)
            {
                checkpointer.committed();
            }
            result
        })
        .await
        .expect("a journal call panicked")
    }

    /// Syncs what was committed to the disk: the journal keeps commits in the OS's cache
    /// (`synchronous = NORMAL`), where a power cut loses the last of them. For a write that must
    /// outlive one: the note made before a call that must not be made twice. False, with the
    /// cause logged, when the sync failed.
    pub async fn sync_log(&self) -> bool {
        let Some(file) = self.file.clone() else {
            return true;
        };
        let journal = Arc::clone(&file);
        let synced = tokio::task::spawn_blocking(move || {
            match std::fs::File::open(checkpoint::wal_of(&file)) {
                Ok(wal) => wal.sync_data(),
                // No WAL: the filesystem refused WAL mode, and commits went to the file itself.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::File::open(file.as_path())?.sync_data()
                }
                Err(e) => Err(e),
            }
        })
        .await;
        match synced {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(journal = %journal.display(), "cannot sync the journal to disk: {e}");
                false
            }
            Err(_) => false,
        }
    }

    /// Runs the write `f` in one transaction with whatever other writes are waiting: a write that
    /// fails takes back only its own changes. Its result is returned once the group is committed;
    /// if the commit fails, every write of the group fails with that error. `f` may run twice (see
    /// the module's comment), so it changes nothing outside the journal.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Journal) -> Result<T> + Send + 'static,
    {
        self.submit(f).await
    }

    /// [`JournalHandle::write`], queued at once rather than when first awaited: writes submitted
    /// one after the other, before any is awaited, go in the same group.
    pub fn submit<T, F>(&self, f: F) -> impl Future<Output = Result<T>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnMut(&mut Journal) -> Result<T> + Send + 'static,
    {
        let (to, answer) = oneshot::channel();
        lock(&self.queued).push(Box::new(QueuedWrite {
            f,
            to,
            result: None,
        }));
        // One writer at a time drains the queue; a write that finds one at work only waits.
        // Waking a blocking thread for every write, to find its write already taken, cost more
        // switching between threads than the writes themselves.
        if !self.draining.swap(true, Ordering::AcqRel) {
            let handle = self.clone();
            tokio::task::spawn_blocking(move || handle.drain());
        }
        async move { answer.await.unwrap_or(Err(JournalError::Interrupted)) }
    }

    /// Commits the queued writes a group at a time until none is left.
    fn drain(&self) {
        loop {
            self.wait_for_spacing();
            let group = std::mem::take(&mut *lock(&self.queued));
            if !group.is_empty() {
                // Only a group of several writes says they keep coming: after a lone one (a file
                // settled in an idle daemon), the next write, its claim, is not held.
                *lock(&self.busy_group_began) = (group.len() > 1).then(Instant::now);
                let mut journal = lock(&self.journal);
                let _at_work = AtWork::begin(&self.at_work_since);
                let written =
                    std::panic::catch_unwind(AssertUnwindSafe(|| journal.write_group(group)));
                if written.is_err() {
                    // A bug in one write (its panic is in the log): the group is taken back and
                    // its callers told, so the journal and the writes after it go on, with their
                    // savepoints.
                    journal.unguarded.end();
                    if !journal.conn.is_autocommit() {
                        let _ = journal.conn.execute_batch("ROLLBACK");
                        journal.taken_back();
                    }
                }
                drop(journal);
                if let Some(checkpointer) = &self.checkpointer {
                    checkpointer.committed();
                }
                continue;
            }
            self.draining.store(false, Ordering::Release);
            // A write queued after the take saw this writer at work and started none: go on
            // with it, unless a new writer already has.
            if lock(&self.queued).is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Sleeps until [`COMMIT_SPACING`] after the last busy group began, so writes queued
    /// meanwhile go in one group. On the writer's own (blocking) thread: callers only wait for
    /// their answer.
    fn wait_for_spacing(&self) {
        let began = *lock(&self.busy_group_began);
        if let Some(wait) =
            began.and_then(|at| (at + COMMIT_SPACING).checked_duration_since(Instant::now()))
        {
            std::thread::sleep(wait);
        }
    }
}

/// Marks the journal held by a group or call, from its beginning to its end (however it ends).
struct AtWork<'a>(&'a Mutex<Option<Instant>>);

impl<'a> AtWork<'a> {
    fn begin(since: &'a Mutex<Option<Instant>>) -> AtWork<'a> {
        *lock(since) = Some(Instant::now());
        AtWork(since)
    }
}

impl Drop for AtWork<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

impl Journal {
    /// Commits `group`: run first without savepoints, and again with them if a write would have
    /// taken changes back.
    fn write_group(&mut self, mut group: Vec<Queued>) {
        let mut savepoints = Savepoints::Skipped;
        // At most twice: a run with savepoints is never spoiled.
        let failed = loop {
            match self.run_group(&mut group, savepoints) {
                Run::Spoiled => savepoints = Savepoints::Taken,
                Run::Ended(failed) => break failed,
            }
        };
        group
            .into_iter()
            .for_each(|write| write.answer(failed.as_ref()));
    }

    /// Runs every write of `group` in one transaction and commits it. Ends with the error every
    /// write is answered with, if any: the journal too busy to begin, the transaction taken back
    /// by SQLite (disk full) or a failed commit.
    fn run_group(&mut self, group: &mut [Queued], savepoints: Savepoints) -> Run {
        if let Err(cause) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            // The journal is busy past its timeout, or failing: every write is answered so, and
            // its caller tries again as it would after any failed write.
            return Run::Ended(Some(cause));
        }
        if savepoints == Savepoints::Skipped {
            self.unguarded.begin();
        }
        let run = self.run_writes(group);
        self.unguarded.end();
        if let Some(run) = run {
            return run;
        }
        let commit = self.conn.execute_batch("COMMIT");
        if commit.is_err() {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.taken_back();
        }
        Run::Ended(commit.err())
    }

    /// Runs the writes inside the group's transaction; `None` when it is left to commit.
    fn run_writes(&mut self, group: &mut [Queued]) -> Option<Run> {
        for (i, write) in group.iter_mut().enumerate() {
            write.run(self);
            if self.conn.is_autocommit() {
                // SQLite took the whole transaction back (disk full, I/O error): every write of
                // the group is undone, or not run, and says so with the cause.
                self.taken_back();
                let cause = write
                    .failure()
                    .unwrap_or_else(|| rolled_back("an earlier write failed"));
                group[i + 1..].iter_mut().for_each(|w| w.forget());
                return Some(Run::Ended(Some(cause)));
            }
            if self.unguarded.spoiled() {
                // A write failed with changes made and no savepoint to take them back: the
                // group starts over, each write in its savepoints.
                let _ = self.conn.execute_batch("ROLLBACK");
                self.taken_back();
                group.iter_mut().for_each(|w| w.forget());
                return Some(Run::Spoiled);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoints {
    Skipped,
    Taken,
}

/// How a run of a group ended.
enum Run {
    /// A write would have taken its changes back: the group was taken back, to run with savepoints.
    Spoiled,
    /// Committed (`None`), or not, with the error every write is answered with.
    Ended(Option<rusqlite::Error>),
}

/// A write waiting for its group.
trait Waiting: Send {
    /// Carries the write out inside the group's transaction, keeping its result for the answer.
    /// Run again, it forgets the result of the run before.
    fn run(&mut self, journal: &mut Journal);
    /// Forgets a result kept: the write was undone, and is answered as not run.
    fn forget(&mut self);
    /// The SQLite error the write failed with, if it did.
    fn failure(&self) -> Option<rusqlite::Error>;
    /// Answers the caller: its own result, or `undone`'s error if the group was not committed.
    fn answer(self: Box<Self>, undone: Option<&rusqlite::Error>);
}

struct QueuedWrite<T, F> {
    f: F,
    to: oneshot::Sender<Result<T>>,
    result: Option<Result<T>>,
}

impl<T, F> Waiting for QueuedWrite<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Journal) -> Result<T> + Send,
{
    fn run(&mut self, journal: &mut Journal) {
        self.result = Some((self.f)(journal));
    }

    fn forget(&mut self) {
        self.result = None;
    }

    fn failure(&self) -> Option<rusqlite::Error> {
        match &self.result {
            Some(Err(JournalError::Sql(error))) => Some(copy(error)),
            _ => None,
        }
    }

    fn answer(self: Box<Self>, undone: Option<&rusqlite::Error>) {
        let result = match (self.result, undone) {
            // Its own failure says more than the group's.
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(error)) => Err(JournalError::Sql(copy(error))),
            (None, None) => Err(JournalError::Interrupted),
        };
        let _ = self.to.send(result);
    }
}

/// The same error for another caller: SQLite's code (what the diagnosis reads) and its message.
fn copy(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rolled_back(&other.to_string()),
    }
}

fn rolled_back(why: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some(format!("the write was undone with its group: {why}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sql::CachedSql;
    use std::sync::atomic::AtomicUsize;

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.sqlite3")).unwrap();
        (dir, journal)
    }

    /// A write for a group, and the receiver of its answer.
    fn queued<T, F>(f: F) -> (Queued, oneshot::Receiver<Result<T>>)
    where
        T: Send + 'static,
        F: FnMut(&mut Journal) -> Result<T> + Send + 'static,
    {
        let (to, answer) = oneshot::channel();
        let write = QueuedWrite {
            f,
            to,
            result: None,
        };
        (Box::new(write), answer)
    }

    fn paused(journal: &Journal) -> Vec<String> {
        journal
            .pauses()
            .unwrap()
            .into_iter()
            .map(|p| p.vendor)
            .collect()
    }

    /// A write that logs `root` in the removal log (a row each time it is committed, so a write
    /// committed twice would show), counting its runs.
    fn logged(
        root: &'static str,
        runs: &Arc<AtomicUsize>,
    ) -> (Queued, oneshot::Receiver<Result<()>>) {
        let runs = Arc::clone(runs);
        queued(move |j| {
            runs.fetch_add(1, Ordering::SeqCst);
            let tx = j.write()?;
            tx.cached_execute(
                "INSERT INTO removal_log (watch_root, at) VALUES (?1, 0)",
                [root],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn removal_log(journal: &Journal) -> Vec<String> {
        let mut stmt = journal
            .conn
            .prepare("SELECT watch_root FROM removal_log ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Writes that all succeed run once, without savepoints: a claim that finds nothing takes
    /// nothing back. A write that fails having changed rows has its group taken back and run
    /// again, each write in its savepoints: what commits is each other write's changes, once.
    #[test]
    fn a_group_runs_again_with_savepoints_only_when_a_write_fails_having_changed_rows() {
        let (_dir, mut journal) = journal();
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, a_answer) = logged("/a", &runs);
        let (nothing, nothing_answer) = queued(|j| j.claim(&["erp".to_string()], 60_000));
        let (b, b_answer) = logged("/b", &runs);
        journal.write_group(vec![a, nothing, b]);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(matches!(nothing_answer.blocking_recv().unwrap(), Ok(None)));
        assert!(b_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "each write ran once");

        runs.store(0, Ordering::SeqCst);
        let (c, c_answer) = logged("/c", &runs);
        let (failing, failing_answer) = queued(|j| -> Result<()> {
            let tx = j.write()?;
            tx.cached_execute(
                "INSERT INTO removal_log (watch_root, at) VALUES ('/failed', 0)",
                [],
            )?;
            Err(JournalError::Sql(rusqlite::Error::QueryReturnedNoRows))
        });
        let (d, d_answer) = logged("/d", &runs);
        journal.write_group(vec![c, failing, d]);
        assert!(c_answer.blocking_recv().unwrap().is_ok());
        assert!(failing_answer.blocking_recv().unwrap().is_err());
        assert!(d_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "the write before the failure ran again; the one after, only with savepoints"
        );
        assert_eq!(removal_log(&journal), ["/a", "/b", "/c", "/d"]);
        assert!(journal.conn.is_autocommit());
    }

    #[test]
    fn a_failed_write_takes_back_only_its_own_changes() {
        let (_dir, mut journal) = journal();
        let (a, a_answer) = queued(|j| j.pause_vendor("a", "down", 1000));
        let (b, b_answer) = queued(|j| -> Result<()> {
            let tx = j.write()?;
            tx.cached_execute(
                "INSERT INTO vendor_pauses (vendor, reason, since, next_probe_at, probe_interval_ms)
                 VALUES ('b', 'x', 0, 0, 0)",
                [],
            )?;
            // Fails after its change, without committing it.
            Err(JournalError::Sql(rusqlite::Error::QueryReturnedNoRows))
        });
        let (c, c_answer) = queued(|j| j.pause_vendor("c", "down", 1000));
        journal.write_group(vec![a, b, c]);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(b_answer.blocking_recv().unwrap().is_err());
        assert!(c_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(paused(&journal), ["a", "c"]);
        assert!(
            journal.conn.is_autocommit(),
            "the group's transaction ended"
        );
    }

    #[test]
    fn a_journal_too_busy_to_begin_refuses_the_group_without_running_it() {
        let (dir, mut journal) = journal();
        let other = rusqlite::Connection::open(dir.path().join("journal.sqlite3")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        journal
            .conn
            .busy_timeout(std::time::Duration::ZERO)
            .unwrap();
        let (a, a_answer) = queued(|j| j.pause_vendor("a", "down", 1000));
        journal.write_group(vec![a]);
        let error = a_answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            crate::diagnose::journal_advice(&error).is_some_and(|a| a.contains("held by another")),
            "{error}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        assert!(paused(&journal).is_empty());
    }

    /// A claim in a group that is then taken back saw the journal as it would have been: a job
    /// put back that is in fact still running, past its lease. The journal forgets when it
    /// expected the next lease to run out, so the next claim still finds that job.
    #[test]
    fn a_group_taken_back_leaves_no_run_out_lease_unfound() {
        use crate::journal::Claimed;
        use crate::journal::fixtures::{observation, stamp};
        let (_dir, mut journal) = journal();
        for (inode, (path, sha)) in [("/w/a.png", "aa"), ("/w/b.png", "bb")]
            .into_iter()
            .enumerate()
        {
            journal
                .observe(
                    &observation(path, "a", sha, stamp(1, inode as u64)),
                    &|_| true,
                )
                .unwrap();
        }
        let vendors = vec!["a".to_string()];
        let claim = |j: &mut Journal, lease_ms: i64| match j.claim(&vendors, lease_ms).unwrap() {
            Some(Claimed::Job(job)) => job.id,
            other => panic!("a job is due: {other:?}"),
        };
        let lost = claim(&mut journal, 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        // In one group: the job put back, claimed again for a minute, and the group undone.
        let (put_back, _) = queued(move |j| j.release(&[lost]));
        let names = vendors.clone();
        let (again, _) = queued(move |j| j.claim(&names, 60_000));
        let (undone, _) = queued(|j| -> Result<()> {
            j.conn.execute_batch("ROLLBACK")?;
            Err(JournalError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )))
        });
        journal.write_group(vec![put_back, again, undone]);
        assert_eq!(
            claim(&mut journal, 60_000),
            lost,
            "the job whose lease ran out comes first"
        );
    }

    #[test]
    fn a_group_sqlite_took_back_answers_every_write_in_it_as_failed() {
        let (_dir, mut journal) = journal();
        let (a, a_answer) = queued(|j| j.pause_vendor("a", "down", 1000));
        // As SQLite does on a full disk: the whole transaction is rolled back under the group.
        let (b, b_answer) = queued(|j| -> Result<()> {
            j.conn.execute_batch("ROLLBACK")?;
            Err(JournalError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )))
        });
        let (c, c_answer) = queued(|j| j.pause_vendor("c", "down", 1000));
        journal.write_group(vec![a, b, c]);
        let a_error = a_answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            crate::diagnose::journal_advice(&a_error).is_some_and(|a| a.contains("disk")),
            "the undone write reports the cause: {a_error}"
        );
        assert!(b_answer.blocking_recv().unwrap().is_err());
        let c_error = c_answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            crate::diagnose::journal_advice(&c_error).is_some_and(|a| a.contains("disk")),
            "the rest are refused with the cause, to be tried again: {c_error}"
        );
        assert!(paused(&journal).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_each_answered_once_committed() {
        let (_dir, journal) = journal();
        let handle = JournalHandle::new(journal);
        let writes = (0..50).map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .write(move |j| j.pause_vendor(&format!("v{i}"), "down", 1000))
                    .await
            })
        });
        for write in writes.collect::<Vec<_>>() {
            write.await.unwrap().unwrap();
        }
        let count = handle.call(|j| j.pauses().unwrap().len()).await;
        assert_eq!(count, 50);
    }

    /// A write that follows a group of several within the spacing waits for it, and what comes
    /// meanwhile joins it; one that follows a lone write is not held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_after_a_busy_group_are_spaced_but_a_lone_write_is_not_held() {
        let (_dir, journal) = journal();
        let handle = JournalHandle::new(journal);
        let ran_at = |h: &JournalHandle| h.submit(|_| Ok(Instant::now()));
        // Both queued before any writer starts, as a writer at work would find them.
        handle.draining.store(true, Ordering::Release);
        let (first, second) = (ran_at(&handle), ran_at(&handle));
        let writer = handle.clone();
        tokio::task::spawn_blocking(move || writer.drain());
        let busy = second.await.unwrap().max(first.await.unwrap());
        // Nothing is queued, so no group began since.
        let began = lock(&handle.busy_group_began).expect("a group of two is busy");
        assert!(began <= busy);
        let next = ran_at(&handle).await.unwrap();
        assert!(
            next.duration_since(began) >= COMMIT_SPACING,
            "the write after a group of two ran {:?} after that group began",
            next.duration_since(began)
        );
        // `next` was alone in its group: nothing is held behind it.
        assert_eq!(*lock(&handle.busy_group_began), None);
        let lone = ran_at(&handle).await.unwrap();
        assert!(lone >= next);
        assert_eq!(*lock(&handle.busy_group_began), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_fails_its_caller_and_the_writes_after_it_still_commit() {
        let (_dir, journal) = journal();
        let handle = JournalHandle::new(journal);
        let h = handle.clone();
        let panicked = tokio::spawn(async move {
            h.write(|_| -> Result<()> { panic!("a bug in a write") })
                .await
        })
        .await;
        assert!(
            matches!(panicked, Ok(Err(JournalError::Interrupted))),
            "its caller is told, not answered as if it had committed: {panicked:?}"
        );
        for round in 0..3 {
            let writes: Vec<_> = (0..20)
                .map(|i| {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        handle
                            .write(move |j| j.pause_vendor(&format!("r{round}v{i}"), "down", 1))
                            .await
                    })
                })
                .collect();
            for write in writes {
                write.await.unwrap().unwrap();
            }
        }
        assert_eq!(handle.call(|j| j.pauses().unwrap().len()).await, 60);
    }
}
