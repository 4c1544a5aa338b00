//! The journal: the only code that speaks SQL. It is the record of every file, the queue of work
//! and the history of every attempt; the watcher's events are only hints that it reconciles against.
//!
//! One writer (the daemon holds one connection behind a mutex); CLI readers open their own.

mod checkpoint;
mod copies;
mod glance;
mod handle;
mod jobs;
mod known_stamps;
mod observe;
pub mod path_text;
mod pauses;
mod queue;
mod removal;
mod report;
mod sql;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sql::CachedSql;

pub use glance::{Glance, OldestPending};
pub use handle::JournalHandle;
pub use known_stamps::KnownStamps;
pub use observe::{FileStamp, KnownFile, Observation, Observed, RejectedFile, UntakenFile};
pub use pauses::VendorPause;
pub use queue::{Attempt, Claimed, Finished, Job, JobOp, JobResult, Remote, RetryOutcome};
pub use removal::{
    FileLooks, HeldReleased, KeptHeld, MissingOutcome, Presence, RemovalBatch, RemovalPolicy,
    RootLook, UntakenHeld,
};
pub use report::{
    DegradedWatch, FileFilter, FileRow, HistoryRow, PausedVendor, PausedWatch, Problem,
    RecentError, Status, UnconfiguredVendor, reference_field,
};

/// How long a statement waits for another process's lock on the journal (a backup, `sqlite3` left
/// open on it) before it fails as busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations, applied in order; the database records how many it has seen in `user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_watch_pauses.sql"),
    include_str!("../../migrations/0003_remote_copies.sql"),
    include_str!("../../migrations/0004_drop_jobs_ready.sql"),
    include_str!("../../migrations/0005_path_text.sql"),
    include_str!("../../migrations/0006_value_checks.sql"),
    include_str!("../../migrations/0007_absent_files.sql"),
    include_str!("../../migrations/0008_renames_and_policies.sql"),
    include_str!("../../migrations/0009_running_uploads.sql"),
    include_str!("../../migrations/0010_untaken_at.sql"),
    include_str!("../../migrations/0011_degraded_watches.sql"),
    include_str!("../../migrations/0012_jobs_in_doubt.sql"),
];

/// The oldest schema this imgsyncd's reads (`status`, `files`, `history`) understand as they
/// are. Schema 9 only added and changed indexes, and schema 10 a column only the daemon reads, so
/// a journal the running daemon has not yet migrated (the binary upgraded, the service not yet
/// restarted) can still be read by the new CLI. A migration that changes what those reads need
/// must raise this to itself.
const READS_FROM: i64 = 8;

/// The schema from which paths are written by [`path_text`]; migrating to it rewrites the paths
/// stored before.
const PATHS_AS_TEXT: usize = 5;

/// The schema from which no CHECK constraint lists more than two values; migrating to it rewrites
/// the table definitions.
const VALUE_CHECKS: usize = 6;

/// Each CHECK of more than two values as schema 1 wrote it, and as comparisons that allow the same
/// values (NULL too: both forms are NULL for it, which a CHECK lets through).
const VALUE_CHECK_REWRITES: [(&str, &str, &str); 4] = [
    (
        "files",
        "state IN ('pending', 'synced', 'rejected', 'failed', 'removed')",
        "state = 'pending' OR state = 'synced' OR state = 'rejected' OR state = 'failed' \
         OR state = 'removed'",
    ),
    (
        "files",
        "removal IN ('delete', 'keep', 'held')",
        "removal = 'delete' OR removal = 'keep' OR removal = 'held'",
    ),
    (
        "jobs",
        "op IN ('upload', 'delete', 'delete_old')",
        "op = 'upload' OR op = 'delete' OR op = 'delete_old'",
    ),
    (
        "remote_copies",
        "state IN ('live', 'deleting', 'deleted')",
        "state = 'live' OR state = 'deleting' OR state = 'deleted'",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the journal's folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal {path} has schema version {found}, newer than this imgsyncd knows ({known}); \
         run the newer imgsyncd or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("no journal at {0}: the daemon has not run with this config yet")]
    Missing(PathBuf),
    #[error(
        "journal {path} has schema version {found}, older than this imgsyncd ({known}); \
         start the daemon (or run `imgsyncd scan`) once to upgrade it"
    )]
    TooOld {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "{path} is not an imgsyncd journal (it holds other tables and no journal schema); \
         it was left untouched: point `journal:` at another file"
    )]
    Foreign { path: PathBuf },
    #[error(
        "{path} is not an imgsyncd journal ({reason}); it was left untouched: move it aside \
         (a new journal is created) or restore a backup"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("journal query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "a journal write was cut short by a bug in imgsyncd (its panic is in the log above); \
         its whole group was taken back"
    )]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, JournalError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Pending,
    Synced,
    Rejected,
    Failed,
    Removed,
}

impl FileState {
    pub const ALL: [FileState; 5] = [
        FileState::Pending,
        FileState::Synced,
        FileState::Rejected,
        FileState::Failed,
        FileState::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Synced => "synced",
            FileState::Rejected => "rejected",
            FileState::Failed => "failed",
            FileState::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<FileState> {
        FileState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

pub struct Journal {
    conn: Connection,
    lease_checks: queue::LeaseChecks,
    /// Set while a group's writes run without savepoints.
    unguarded: sql::Unguarded,
}

/// Has `conn` wait out another connection's lock for up to `timeout`, trying again every
/// millisecond for the first 50 ms and every 10 ms after. SQLite's own wait backs off (1, 2, 5,
/// 10 ms…): the writer, held some 10 ms by the checkpointer's RESTART, waited 18 ms each time, a
/// dozen times in a 10 000-file drain.
pub(super) fn wait_for_locks(conn: &mut Connection, timeout: Duration) -> rusqlite::Result<()> {
    let mut since = std::time::Instant::now();
    conn.busy_handler(Some(move |attempt: i32| {
        if attempt == 0 {
            since = std::time::Instant::now();
        }
        let waited = since.elapsed();
        if waited >= timeout {
            return false;
        }
        let step = match waited < Duration::from_millis(50) {
            true => Duration::from_millis(1),
            false => Duration::from_millis(10),
        };
        std::thread::sleep(step.min(timeout - waited));
        true
    }))
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.conn.path())
            .finish()
    }
}

/// Every path and watch root stored before schema 5, written as [`path_text`] writes it. They
/// were all valid UTF-8 and most read back as themselves; one holding a character that
/// `path_text` now reads as a raw byte would otherwise stand for another name, and its file
/// would be taken for gone.
fn rewrite_paths_as_text(tx: &Connection) -> Result<()> {
    const COLUMNS: [(&str, &str); 5] = [
        ("files", "path"),
        ("files", "watch_root"),
        ("watch_roots", "root"),
        ("watch_pauses", "root"),
        ("removal_log", "watch_root"),
    ];
    for (table, column) in COLUMNS {
        let stored: Vec<(i64, String)> = tx
            .prepare(&format!("SELECT rowid, {column} FROM {table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (rowid, text) in stored {
            let rewritten = path_text::to_text(Path::new(&text));
            if rewritten != text {
                tx.execute(
                    &format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2"),
                    rusqlite::params![rewritten, rowid],
                )?;
            }
        }
    }
    Ok(())
}

/// Schema 6: every CHECK in [`VALUE_CHECK_REWRITES`] edited in place in the table definitions
/// (SQLite compiles an IN list of more than two values into a temporary b-tree built for each row
/// checked). The schema's version is raised so that every connection reads the definitions again.
/// A definition that does not hold the text (edited by hand) keeps its IN list: slower, not wrong,
/// so the migration goes on.
fn rewrite_value_checks(tx: &Connection) -> Result<()> {
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch("PRAGMA writable_schema = ON")?;
    for (table, listed, compared) in VALUE_CHECK_REWRITES {
        tx.execute(
            "UPDATE sqlite_schema SET sql = replace(sql, ?2, ?3)
             WHERE type = 'table' AND name = ?1",
            rusqlite::params![table, listed, compared],
        )?;
    }
    tx.pragma_update(None, "schema_version", version + 1)?;
    // RESET: no more writing, and this connection reads the definitions again too.
    tx.execute_batch("PRAGMA writable_schema = RESET")?;
    Ok(())
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut journal = Journal::on(conn);
        journal
            .refuse_foreign(path)
            .and_then(|()| journal.configure(path))
            .and_then(|()| journal.migrate(path))
            .map_err(|e| not_a_database(path, e))?;
        Ok(journal)
    }

    /// Opens an existing journal for the CLI's writers (`retry`); a missing file is an error, not a
    /// new journal.
    pub fn open_existing(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_path_buf()));
        }
        Journal::open(path)
    }

    /// Opens an existing journal for reading only (`status`, `files`, `history`): it never writes,
    /// never migrates, and works for an operator who may only read the journal's files.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_path_buf()));
        }
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Reading a WAL journal needs its shared-memory file; when that cannot be created (no
        // write access to the folder, no daemon running) the file is read as it stands. Any other
        // trouble (a busy journal) is an error, never a stale read.
        let conn = match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => conn,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly
                ) =>
            {
                let escaped = path
                    .display()
                    .to_string()
                    .replace('%', "%25")
                    .replace('?', "%3f")
                    .replace('#', "%23");
                let uri = format!("file:{escaped}?immutable=1");
                Connection::open_with_flags(&uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(open_err)?
            }
            Err(source) => return Err(open_err(source)),
        };
        let journal = Journal::on(conn);
        let found = journal.schema_version()?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(JournalError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        if found < READS_FROM {
            return Err(JournalError::TooOld {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        Ok(journal)
    }

    /// A database with tables but no journal schema belongs to someone else: it is left as it is
    /// (not even switched to WAL).
    fn refuse_foreign(&self, path: &Path) -> Result<()> {
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
        if found == 0 && tables > 0 {
            return Err(JournalError::Foreign {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn configure(&mut self, path: &Path) -> Result<()> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        wait_for_locks(&mut self.conn, BUSY_TIMEOUT).map_err(open_err)?;
        self.conn
            .set_prepared_statement_cache_capacity(sql::STATEMENT_CACHE);
        // One plan per statement, whatever values are bound: without this SQLite recompiles a
        // cached statement whenever a bound value might change its plan, which was most of them.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )
            .map_err(open_err)?;
        // temp_store: a savepoint (each write of a group) keeps the pages it changes in a
        // sub-journal, which would otherwise be a temporary file written page by page.
        // cache_size: the page cache fills up to its size once the journal outgrows it, so it is
        // most of what a big backlog adds to the daemon's memory; 1 MiB instead of SQLite's 2 MiB
        // cost nothing measurable at start-up or in the drain (the OS caches the file anyway).
        // wal_autocheckpoint: a checkpoint every 8 000 pages (32 MiB of WAL) instead of 1 000. The
        // pages a drain rewrites most (the queue's, the newest files') are copied back once per
        // checkpoint however often they were rewritten, and each checkpoint ends in an fsync
        // (BENCHMARKS.md, fourth round). journal_size_limit cuts the WAL file back to that size
        // once it starts over.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
                 PRAGMA temp_store = MEMORY; PRAGMA cache_size = -1024;
                 PRAGMA wal_autocheckpoint = 8000; PRAGMA journal_size_limit = 33554432;",
            )
            .map_err(open_err)
    }

    fn migrate(&mut self, path: &Path) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > known {
            return Err(JournalError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            if index + 1 == PATHS_AS_TEXT {
                rewrite_paths_as_text(&tx)?;
            }
            if index + 1 == VALUE_CHECKS {
                rewrite_value_checks(&tx)?;
            }
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Runs `read` in one read transaction, unless one is open already: its reads see one state
    /// of the journal, and take the WAL's read locks once, not once a statement.
    pub(super) fn in_one_read<T>(&self, read: impl FnOnce() -> Result<T>) -> Result<T> {
        let reading = match self.conn.is_autocommit() {
            true => Some(self.conn.unchecked_transaction()?),
            false => None,
        };
        let value = read()?;
        if let Some(reading) = reading {
            reading.finish()?;
        }
        Ok(value)
    }

    /// Runs `f`, several of the journal's writes, as one: if it fails, none of them stands (a
    /// claim and the probe it pushes back). Inside a group, only its own writes are taken back.
    pub fn as_one_write<T>(&mut self, f: impl FnOnce(&mut Journal) -> Result<T>) -> Result<T> {
        let together = sql::Together::begin(&self.conn, &self.unguarded)?;
        let result = f(self);
        together.end(&self.conn, &self.unguarded, result.is_ok())?;
        result
    }

    /// A write transaction of its own, or, inside a group of writes committed together (see
    /// [`JournalHandle::write`]), a savepoint: a write that fails takes back only its own changes.
    fn write(&mut self) -> Result<sql::Write<'_>> {
        Ok(if self.conn.is_autocommit() {
            sql::Write::Own(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?,
            )
        } else {
            sql::Write::Nested(sql::Nested::begin(&self.conn, &self.unguarded)?)
        })
    }

    /// The journal on an open connection, remembering nothing yet of its own writes.
    fn on(conn: Connection) -> Journal {
        Journal {
            conn,
            lease_checks: queue::LeaseChecks::default(),
            unguarded: sql::Unguarded::default(),
        }
    }

    /// A transaction was taken back: what this connection remembers of its own writes (when the
    /// leases it handed out may run out) may no longer hold, and is forgotten.
    fn taken_back(&mut self) {
        self.lease_checks = queue::LeaseChecks::default();
    }

    /// How long a write waits for another connection's lock (tests: to see a locked journal
    /// refuse a write without waiting the daemon's ten seconds).
    #[cfg(test)]
    pub(crate) fn set_busy_timeout(&mut self, wait: Duration) {
        wait_for_locks(&mut self.conn, wait).unwrap();
    }

    fn file_id(&self, path: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .cached_query_row("SELECT id FROM files WHERE path = ?1", [path], |r| r.get(0))
            .optional()?)
    }
}

/// SQLite's "file is not a database" said as what it means to the operator.
fn not_a_database(path: &Path, error: JournalError) -> JournalError {
    let code = match &error {
        JournalError::Open {
            source: rusqlite::Error::SqliteFailure(e, _),
            ..
        }
        | JournalError::Sql(rusqlite::Error::SqliteFailure(e, _)) => Some(e.code),
        _ => None,
    };
    match code {
        Some(rusqlite::ErrorCode::NotADatabase) => JournalError::Unreadable {
            path: path.to_path_buf(),
            reason: "the file is not a database, or is damaged".into(),
        },
        _ => error,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) for a journal timestamp.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;
