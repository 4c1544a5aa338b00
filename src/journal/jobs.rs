//! The job rows every other part of the journal queues and drops.

use super::sql::CachedSql;
use rusqlite::{Connection, params};

use super::{Result, now_ms};

pub(super) fn queue(
    tx: &Connection,
    file_id: i64,
    op: &str,
    vendor: &str,
    sha256: Option<&str>,
    copy_id: Option<i64>,
) -> Result<()> {
    let now = now_ms();
    tx.cached_execute(
        "INSERT INTO jobs (file_id, op, vendor, sha256, copy_id, state, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
        params![file_id, op, vendor, sha256, copy_id, now],
    )?;
    Ok(())
}

/// Drops the queued (not running) jobs of `ops` for a file.
pub(super) fn drop_queued(tx: &Connection, file_id: i64, ops: &[&str]) -> Result<()> {
    for op in ops {
        tx.cached_execute(
            "DELETE FROM jobs WHERE file_id = ?1 AND op = ?2 AND state = 'queued'",
            params![file_id, op],
        )?;
    }
    Ok(())
}

pub(super) fn has_job(tx: &Connection, file_id: i64, op: &str) -> Result<bool> {
    Ok(tx.cached_query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE file_id = ?1 AND op = ?2)",
        params![file_id, op],
        |r| r.get(0),
    )?)
}

pub(super) fn remove(tx: &Connection, job_id: i64) -> Result<()> {
    tx.cached_execute("DELETE FROM jobs WHERE id = ?1", [job_id])?;
    Ok(())
}
