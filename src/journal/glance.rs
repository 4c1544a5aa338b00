//! Small reads for the daemon's own reports: the STATUS= line systemd shows and the oldest
//! pending file `status` names. Each is a few indexed counts, cheap enough to run at every change.

use super::sql::CachedSql;
use rusqlite::OptionalExtension;
use serde::Serialize;

use super::{Journal, Result, rfc3339};

/// What the STATUS= line says about the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Glance {
    /// Files waiting to be uploaded.
    pub pending: u64,
    /// Deletes waiting to be sent (a file removed, a superseded copy).
    pub deletes_queued: u64,
    pub failed: u64,
    pub rejected: u64,
    /// (vendor, why)
    pub paused_vendors: Vec<(String, String)>,
    /// (watch root, why)
    pub paused_watches: Vec<(String, String)>,
    pub held_deletes: u64,
}

/// The file that has waited longest for its job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OldestPending {
    pub path: String,
    pub vendor: String,
    /// upload, delete or delete_old
    pub op: String,
    /// When its job was queued (RFC 3339).
    pub since: String,
    pub attempts: u32,
}

impl Journal {
    pub fn glance(&self) -> Result<Glance> {
        let count = |sql: &str| -> Result<u64> {
            Ok(self
                .conn
                .cached_query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        let pairs = |sql: &str| -> Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        self.in_one_read(|| {
            Ok(Glance {
                pending: count("SELECT COUNT(*) FROM files WHERE state = 'pending'")?,
                deletes_queued: count("SELECT COUNT(*) FROM jobs WHERE op != 'upload'")?,
                failed: count("SELECT COUNT(*) FROM files WHERE state = 'failed'")?,
                rejected: count("SELECT COUNT(*) FROM files WHERE state = 'rejected'")?,
                paused_vendors: pairs("SELECT vendor, reason FROM vendor_pauses ORDER BY vendor")?,
                paused_watches: pairs("SELECT root, reason FROM watch_pauses ORDER BY root")?,
                held_deletes: count("SELECT COUNT(*) FROM files WHERE removal = 'held'")?,
            })
        })
    }

    /// The job that has waited longest, of any vendor the journal knows.
    pub fn oldest_pending(&self) -> Result<Option<OldestPending>> {
        Ok(self
            .conn
            .cached_query_row(
                "SELECT f.path, j.vendor, j.op, j.created_at, j.attempts, j.id
                 FROM (SELECT id, file_id, vendor, op, created_at, attempts FROM jobs
                       ORDER BY created_at, id LIMIT 1) j
                 JOIN files f ON f.id = j.file_id",
                [],
                oldest_row,
            )
            .optional()?
            .map(|(oldest, _)| oldest))
    }

    /// The job that has waited longest of those of `vendors` (the configured ones): a vendor
    /// taken out of the config keeps its jobs, but nothing sends them, so they are no queue to be
    /// late on.
    pub fn oldest_pending_of(&self, vendors: &[String]) -> Result<Option<OldestPending>> {
        self.in_one_read(|| {
            let mut oldest: Option<(OldestPending, (i64, i64))> = None;
            for vendor in vendors {
                let first = self
                    .conn
                    .cached_query_row(
                        "SELECT f.path, j.vendor, j.op, j.created_at, j.attempts, j.id
                         FROM (SELECT id, file_id, vendor, op, created_at, attempts FROM jobs
                               WHERE vendor = ?1 ORDER BY created_at, id LIMIT 1) j
                         JOIN files f ON f.id = j.file_id",
                        [vendor],
                        oldest_row,
                    )
                    .optional()?;
                if let Some(first) = first
                    && oldest.as_ref().is_none_or(|(_, at)| first.1 < *at)
                {
                    oldest = Some(first);
                }
            }
            Ok(oldest.map(|(oldest, _)| oldest))
        })
    }
}

/// An [`OldestPending`] from its row (path, vendor, op, created_at, attempts, the job's id), with
/// the order jobs are queued in: when, then id.
fn oldest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(OldestPending, (i64, i64))> {
    let created_at: i64 = r.get(3)?;
    let id: i64 = r.get(5)?;
    Ok((
        OldestPending {
            path: r.get(0)?,
            vendor: r.get(1)?,
            op: r.get(2)?,
            since: rfc3339(created_at),
            attempts: r.get(4)?,
        },
        (created_at, id),
    ))
}
