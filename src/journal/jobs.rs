//! The job rows every other part of the journal queues and drops.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use super::sql::CachedSql;
use rusqlite::{Connection, OptionalExtension, params};

use super::{JobOp, Result, now_ms};

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

/// Drops the queued (not running) jobs of `ops` for a file. A job whose call was begun and never
/// answered (its note in doubt: a Jiandaoyun record being created when the daemon was killed)
/// leaves that in the file's history as an unconfirmed attempt, with what to look for at the
/// vendor, and one warning: the file changed or went before the job could be settled, and the
/// vendor may hold what the call made.
pub(super) fn drop_queued(tx: &Connection, file_id: i64, ops: &[&str]) -> Result<()> {
    for op in ops {
        let notes = tx
            .prepare_cached(
                "SELECT jobs.id, jobs.in_doubt, files.path
                 FROM jobs JOIN files ON files.id = jobs.file_id
                 WHERE jobs.file_id = ?1 AND jobs.op = ?2 AND jobs.state = 'queued'
                   AND jobs.in_doubt IS NOT NULL",
            )?
            .query_map(params![file_id, op], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (job_id, begun, path) in notes {
            let message = super::queue::unanswered_and_moved_on(&begun);
            // Said here, where it is found: nothing else reports a job dropped with its file.
            if first_time_said(job_id) {
                tracing::warn!(path = %super::path_text::shown(&path), outcome = "unconfirmed", "{message}");
            }
            super::queue::record_unconfirmed(tx, file_id, JobOp::parse(op), &message)?;
        }
        tx.cached_execute(
            "DELETE FROM jobs WHERE file_id = ?1 AND op = ?2 AND state = 'queued'",
            params![file_id, op],
        )?;
    }
    Ok(())
}

/// Whether the drop of job `job_id` in doubt is said for the first time. A write may run again
/// (a group spoiled by another's failure, a full disk tried again), and its line is said once.
fn first_time_said(job_id: i64) -> bool {
    static SAID: OnceLock<Mutex<HashSet<i64>>> = OnceLock::new();
    SAID.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(job_id)
}

/// What was begun, when the file's last upload attempt (a delete of an older copy may follow it;
/// the last made, whatever the clock said) is a call whose answer never came back (an
/// `unconfirmed` attempt of [`super::queue::unanswered`]).
pub(super) fn last_unconfirmed(tx: &Connection, file_id: i64) -> Result<Option<String>> {
    let last: Option<(String, Option<String>)> = tx
        .prepare_cached(
            "SELECT outcome, message FROM attempts WHERE file_id = ?1 AND op = 'upload'
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([file_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match last {
        Some((outcome, Some(message))) if outcome == "unconfirmed" => {
            super::queue::begun_of(&message).map(str::to_string)
        }
        _ => None,
    })
}

/// Notes `begun` on the file's queued upload: claimed, it waits for a person rather than going.
pub(super) fn keep_in_doubt(tx: &Connection, file_id: i64, begun: &str) -> Result<()> {
    tx.cached_execute(
        "UPDATE jobs SET in_doubt = ?2
         WHERE file_id = ?1 AND op = 'upload' AND state = 'queued'",
        params![file_id, begun],
    )?;
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
