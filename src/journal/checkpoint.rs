//! Copies the WAL back into the journal's file on a thread and connection of its own.
//!
//! Left to itself, SQLite checkpoints on the committing connection once the WAL holds
//! `wal_autocheckpoint` pages: the daemon's one writer then spent 100 ms and more (an fsync of
//! 32 MiB of WAL, the copy, an fsync of the file) with every worker and the watch waiting on it,
//! some five times in a 10 000-file drain, a quarter of its time (BENCHMARKS.md, twenty-second
//! round). Here, after each commit, a second connection copies what was committed while the
//! writer goes on: a PASSIVE checkpoint never blocks it. Such a checkpoint cannot start the WAL
//! over while commits keep coming, so once the WAL is long a RESTART follows, which holds the
//! writer only while it copies the few frames committed since and syncs them, and waits at most
//! [`RESTART_WAIT`] for its turn. While the WAL is more than half way to that, checkpoints follow
//! each other without the spacing, so a writer outrunning them still meets a restart well before
//! its backstop. The writer's own checkpoint stays as the backstop, should this thread fall
//! behind or fail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tracing::{debug, warn};

/// The least time between two checkpoints while commits keep coming: each copies every page once
/// however often it was rewritten since the last, and ends in two fsyncs.
const SPACING: Duration = Duration::from_millis(100);

/// The WAL's length, in pages, past which a checkpoint also starts it over: 16 MiB, half what
/// the writer's own backstop lets it grow to.
const RESTART_AT: i64 = 4_000;

/// The most pages a PASSIVE checkpoint may leave uncopied for a RESTART to follow it. A reader
/// (`imgsyncd status` or `files` from the command line) holding an old snapshot keeps a PASSIVE
/// checkpoint from copying past it; a RESTART would then copy all that with the writer held,
/// which is the stall this thread is here to spare it.
const RESTART_BACKLOG: i64 = 1_000;

/// How long a RESTART waits for the writer's transaction under way (or a reader's) to end before
/// it gives up until the next commit: it holds new writes back while it waits.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// The thread that checkpoints the journal; stopped (and waited for) when dropped.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Something was committed since the last checkpoint began.
    committed: bool,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Checkpointer {
    /// Starts checkpointing the journal at `path`. `None`, with the reason logged, when its
    /// connection or thread cannot be had: the writer's own checkpoints then do the work, as
    /// they always could.
    pub(crate) fn start(path: &Path) -> Option<Checkpointer> {
        let conn = match open(path) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(journal = %path.display(), "checkpoints stay with the writer: cannot open the journal a second time: {e}");
                return None;
            }
        };
        let shared = Arc::new(Shared::default());
        let on_thread = Arc::clone(&shared);
        // Synced before a RESTART, which would otherwise sync the pages PASSIVE checkpoints
        // copied while it holds the writer.
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) => {
                warn!(journal = %path.display(), "checkpoints stay with the writer: cannot open the journal: {e}");
                return None;
            }
        };
        let thread = std::thread::Builder::new()
            .name("imgsyncd-checkpoint".into())
            .spawn(move || run(&conn, &file, &on_thread));
        match thread {
            Ok(thread) => Some(Checkpointer {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                warn!(journal = %path.display(), "checkpoints stay with the writer: cannot start a thread: {e}");
                None
            }
        }
    }

    /// Says that a transaction was committed: a checkpoint follows, no sooner than [`SPACING`]
    /// after the last began.
    pub(crate) fn committed(&self) {
        let mut state = self.shared.state();
        if !state.committed {
            state.committed = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    super::wait_for_locks(&mut conn, RESTART_WAIT)?;
    Ok(conn)
}

/// Checkpoints after each commit it is told of, spaced, until stopped.
fn run(conn: &Connection, file: &std::fs::File, shared: &Shared) {
    loop {
        {
            let state = shared.state();
            let mut state = shared
                .wake
                .wait_while(state, |s| !s.committed && !s.stop)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.stop {
                return;
            }
            state.committed = false;
        }
        // A WAL half way to a restart is growing faster than spaced checkpoints keep up with:
        // the next follows the next commit, so the restart comes before the writer's backstop.
        if checkpoint(conn, file) {
            continue;
        }
        let state = shared.state();
        let (state, _) = shared
            .wake
            .wait_timeout_while(state, SPACING, |s| !s.stop)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.stop {
            return;
        }
    }
}

/// One PASSIVE checkpoint, and a RESTART after it when the WAL has grown long. Returns whether
/// the next should follow at once: the WAL is past half its restart length and no reader held
/// the copy far back, so commits are outgrowing the spacing. A reader that holds it back
/// (`imgsyncd status` on an old snapshot) is waited out at the spacing, since each RESTART
/// holds the writer while it waits. Failures are left to the next commit's checkpoint and to
/// the writer, whose own commits report a failing disk.
fn checkpoint(conn: &Connection, file: &std::fs::File) -> bool {
    let hurry = |pass: WalCheckpoint| {
        !pass.busy && pass.pages >= RESTART_AT / 2 && pass.pages - pass.copied <= RESTART_BACKLOG
    };
    match wal_checkpoint(conn, "PASSIVE") {
        Ok(pass) if pass.pages >= RESTART_AT && pass.pages - pass.copied <= RESTART_BACKLOG => {
            // What the PASSIVE checkpoints copied is synced now, while the writer goes on: the
            // RESTART's own sync then has only its few frames' pages left.
            let _ = file.sync_data();
            // Started over, the writer's next commit writes the WAL from its start; held back
            // by a reader, the next try waits the spacing: no hurry either way.
            if let Err(e) = wal_checkpoint(conn, "RESTART") {
                debug!("the WAL was not started over: {e}");
            }
            false
        }
        Ok(pass) => hurry(pass),
        Err(e) => {
            debug!("checkpoint failed: {e}");
            false
        }
    }
}

/// What `PRAGMA wal_checkpoint` answered.
#[derive(Debug, Clone, Copy)]
struct WalCheckpoint {
    /// It could not finish: a reader (or, for a RESTART, the writer) held it back.
    busy: bool,
    /// The WAL's length in pages.
    pages: i64,
    /// How many of them are copied into the journal's file.
    copied: i64,
}

/// Runs a checkpoint in `mode`.
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<WalCheckpoint> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok(WalCheckpoint {
            busy: row.get::<_, i64>(0)? != 0,
            pages: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

/// The WAL of the journal at `path`.
pub(crate) fn wal_of(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// The file a journal's connection has open, if it is on a file.
pub(crate) fn file_of(conn: &Connection) -> Option<PathBuf> {
    conn.path()
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, JournalHandle};
    use std::time::Instant;

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// What the writer commits reaches the journal's own file without the writer checkpointing:
    /// far fewer pages than its backstop, and no connection closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_are_copied_into_the_journal_file_by_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let handle = JournalHandle::new(Journal::open(&path).unwrap());
        let before = file_len(&path);
        for round in 0..20 {
            let writes: Vec<_> = (0..50)
                .map(|i| {
                    handle.submit(move |j| j.pause_vendor(&format!("r{round}v{i}"), "down", 1))
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
        }
        let wal = wal_of(&path);
        assert!(file_len(&wal) > 0, "the writes went to the WAL");
        let waiting = Instant::now();
        while file_len(&path) <= before {
            assert!(
                waiting.elapsed() < Duration::from_secs(20),
                "nothing was checkpointed into {}: still {} bytes",
                path.display(),
                file_len(&path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And what was copied is what was committed: the file read as it stands, without the WAL.
        let copied = || -> i64 {
            let conn = Connection::open_with_flags(
                format!("file:{}?immutable=1", path.display()),
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            conn.query_row("SELECT COUNT(*) FROM vendor_pauses", [], |r| r.get(0))
                .unwrap_or(0)
        };
        let waiting = Instant::now();
        while copied() != 1_000 {
            assert!(
                waiting.elapsed() < Duration::from_secs(20),
                "the journal's file holds {} of the 1 000 pauses",
                copied()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The WAL file's length, and how many times it was started over (the checkpoint sequence
    /// number in its header).
    fn wal_state(wal: &Path) -> (u64, u32) {
        use std::io::Read;
        let mut header = Vec::with_capacity(16);
        if let Ok(file) = std::fs::File::open(wal) {
            let _ = file.take(16).read_to_end(&mut header);
        }
        let seq = header
            .get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
        (file_len(wal), seq)
    }

    /// A long WAL is started over while the writer goes on: it does not grow to the writer's
    /// backstop (8 000 pages) under a steady stream of commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_started_over_while_commits_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let handle = JournalHandle::new(Journal::open(&path).unwrap());
        let wal = wal_of(&path);
        let reason = "r".repeat(3_000);
        let (mut longest, mut restarts) = (0, 0);
        let mut last_seq = None;
        // Each round rewrites 50 pauses of some 3 KB each: 50 pages and more a round.
        for round in 0..400 {
            let writes: Vec<_> = (0..50)
                .map(|i| {
                    let reason = format!("{reason}{round}");
                    handle.submit(move |j| j.pause_vendor(&format!("vendor {i:02}"), &reason, 1))
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
            let (len, seq) = wal_state(&wal);
            longest = longest.max(len);
            restarts += u32::from(last_seq.is_some_and(|last| last != seq));
            last_seq = Some(seq);
        }
        assert!(restarts >= 2, "the WAL was started over {restarts} times");
        assert!(
            longest < 6_000 * (4_096 + 24),
            "the WAL grew towards the writer's backstop of 8 000 pages: {longest} bytes"
        );
    }
}
