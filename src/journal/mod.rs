//! The journal: the only code that speaks SQL. It is the record of every file, the queue of work
//! and the history of every attempt; the watcher's events are only hints that it reconciles against.
//!
//! One writer (the daemon holds one connection behind a mutex); CLI readers open their own.

mod handle;
mod observe;
mod queue;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

pub use handle::JournalHandle;
pub use observe::KnownFile;
pub use observe::{MissingOutcome, Observation, Observed, RejectedFile, Removal};
pub use queue::{Attempt, Finished, Job, JobOp, JobResult, Remote, RetryOutcome, VendorPause};
pub use report::{
    FileFilter, FileRow, HistoryRow, PausedVendor, PausedWatch, Problem, RecentError, Status,
};

/// Schema migrations, applied in order; the database records how many it has seen in `user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_watch_pauses.sql"),
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
    #[error("journal query failed: {0}")]
    Sql(#[from] rusqlite::Error),
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
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.conn.path())
            .finish()
    }
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
        let mut journal = Journal { conn };
        journal.configure(path)?;
        journal.migrate(path)?;
        Ok(journal)
    }

    /// Opens an existing journal for the CLI's readers; a missing file is an error, not a new journal.
    pub fn open_existing(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_path_buf()));
        }
        Journal::open(path)
    }

    fn configure(&self, path: &Path) -> Result<()> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
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

    fn write(&mut self) -> Result<rusqlite::Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    fn file_id(&self, path: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT id FROM files WHERE path = ?1", [path], |r| r.get(0))
            .optional()?)
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
mod tests;
