//! The workers' side of the journal: claiming jobs with a lease and recording what came of them,
//! the vendor's result and the state change in one transaction.

use rusqlite::{OptionalExtension, Transaction, params};

use super::observe::{queue_job, url_shared_with};
use super::{Journal, Result, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOp {
    Upload,
    /// The file was removed: delete its remote copy.
    Delete,
    /// The file's content changed: delete the superseded remote copy.
    DeleteOld,
}

impl JobOp {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOp::Upload => "upload",
            JobOp::Delete => "delete",
            JobOp::DeleteOld => "delete_old",
        }
    }

    fn parse(text: &str) -> JobOp {
        match text {
            "delete" => JobOp::Delete,
            "delete_old" => JobOp::DeleteOld,
            _ => JobOp::Upload,
        }
    }
}

/// A claimed job with what the worker needs to carry it out.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub file_id: i64,
    pub op: JobOp,
    pub vendor: String,
    pub path: String,
    /// The content the upload was queued for.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub format: Option<String>,
    /// What a delete removes (the URL for Kingdee).
    pub remote_ref: Option<String>,
    pub attempts: u32,
    pub first_failure_at: Option<i64>,
}

/// What a vendor returned for an upload. Fields that do not apply to the vendor are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    pub url: Option<String>,
    pub file_token: Option<String>,
    pub key: Option<String>,
    pub transaction_id: Option<String>,
    pub expires_at: Option<i64>,
}

/// One try at a job, as `history` shows it.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    pub outcome: String,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub message: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone)]
pub enum JobResult {
    Uploaded {
        remote: Remote,
        /// Whether a copy uploaded for content that has since changed is deleted again.
        can_delete: bool,
    },
    Deleted,
    /// Transient trouble: try again at `not_before`, unless the job has failed for `give_up_after_ms`.
    Retry {
        not_before: i64,
        reason: String,
        give_up_after_ms: i64,
    },
    /// The vendor will never accept this file (or this delete).
    Rejected(String),
    /// Back to the queue untouched (vendor paused, daemon stopping).
    Release,
}

/// What `finish` did with the job, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Done,
    Stale,
    Retrying,
    GaveUp,
    Rejected,
    Released,
}

#[derive(Debug, Clone)]
pub struct VendorPause {
    pub vendor: String,
    pub reason: String,
    pub since: i64,
    pub next_probe_at: i64,
    pub probe_interval_ms: i64,
}

impl Journal {
    /// After a start: the daemon that held `running` jobs is gone, so they go back to the queue now
    /// rather than when their lease runs out.
    pub fn requeue_running(&mut self) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE state = 'running'",
            [],
        )?)
    }

    /// Claims the next due job of one of `vendors`, leased for `lease_ms`.
    pub fn claim(&mut self, vendors: &[String], lease_ms: i64) -> Result<Option<Job>> {
        if vendors.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let names = serde_json::to_string(vendors).unwrap_or_else(|_| "[]".into());
        let tx = self.write()?;
        let claimed: Option<Job> = tx
            .query_row(
                "UPDATE jobs SET state = 'running', lease_until = ?1 + ?2
                 WHERE id = (SELECT j.id FROM jobs j
                             WHERE j.vendor IN (SELECT value FROM json_each(?3))
                               AND ((j.state = 'queued' AND j.not_before <= ?1)
                                    OR (j.state = 'running' AND j.lease_until < ?1))
                               -- the same bytes in flight: wait, then reuse what they return
                               AND NOT (j.op = 'upload' AND EXISTS (
                                   SELECT 1 FROM jobs r
                                   WHERE r.id != j.id AND r.op = 'upload' AND r.state = 'running'
                                     AND r.lease_until >= ?1 AND r.vendor = j.vendor
                                     AND r.sha256 = j.sha256))
                             ORDER BY j.not_before, j.id LIMIT 1)
                 RETURNING id, file_id, op, vendor, sha256, remote_ref, attempts, first_failure_at",
                params![now, lease_ms, names],
                |r| {
                    Ok(Job {
                        id: r.get(0)?,
                        file_id: r.get(1)?,
                        op: JobOp::parse(&r.get::<_, String>(2)?),
                        vendor: r.get(3)?,
                        path: String::new(),
                        sha256: r.get(4)?,
                        size: None,
                        format: None,
                        remote_ref: r.get(5)?,
                        attempts: r.get(6)?,
                        first_failure_at: r.get(7)?,
                    })
                },
            )
            .optional()?;
        let Some(mut job) = claimed else {
            return Ok(None);
        };
        let (path, size, format): (String, Option<i64>, Option<String>) = tx.query_row(
            "SELECT path, size, format FROM files WHERE id = ?1",
            [job.file_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        tx.commit()?;
        job.path = path;
        job.size = size.map(|s| s as u64);
        job.format = format;
        Ok(Some(job))
    }

    /// What the vendor already returned for the same bytes, if any file of it is synced.
    pub fn synced_twin(&self, vendor: &str, sha256: &str) -> Result<Option<(String, Remote)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT path, url, file_token, remote_key, transaction_id, expires_at FROM files
                 WHERE vendor = ?1 AND sha256 = ?2 AND state = 'synced' AND removal IS NULL
                   AND (expires_at IS NULL OR expires_at > ?3)
                 LIMIT 1",
                params![vendor, sha256, now_ms() + 60_000],
                |r| {
                    Ok((
                        r.get(0)?,
                        Remote {
                            url: r.get(1)?,
                            file_token: r.get(2)?,
                            key: r.get(3)?,
                            transaction_id: r.get(4)?,
                            expires_at: r.get(5)?,
                        },
                    ))
                },
            )
            .optional()?)
    }

    /// Records the attempt and what it means for the job and the file, in one transaction.
    pub fn finish(
        &mut self,
        job: &Job,
        result: &JobResult,
        attempt: Option<&Attempt>,
    ) -> Result<Finished> {
        let tx = self.write()?;
        let now = now_ms();
        if let Some(attempt) = attempt {
            tx.execute(
                "INSERT INTO attempts (file_id, op, at, outcome, http_status, vendor_code, message,
                   duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    job.file_id,
                    job.op.as_str(),
                    now,
                    attempt.outcome,
                    attempt.http_status,
                    attempt.vendor_code,
                    attempt.message,
                    attempt.duration_ms
                ],
            )?;
        }
        let finished = match result {
            JobResult::Uploaded { remote, can_delete } => {
                finish_upload(&tx, job, remote, *can_delete, now)?
            }
            JobResult::Deleted => {
                tx.execute("DELETE FROM jobs WHERE id = ?1", [job.id])?;
                if job.op == JobOp::Delete {
                    tx.execute(
                        "UPDATE files SET state = 'removed', remote_deleted = 1, removal = NULL,
                           error = NULL, attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                        params![job.file_id, now],
                    )?;
                }
                Finished::Done
            }
            JobResult::Retry {
                not_before,
                reason,
                give_up_after_ms,
            } => {
                let first = job.first_failure_at.unwrap_or(now);
                if now - first >= *give_up_after_ms {
                    tx.execute("DELETE FROM jobs WHERE id = ?1", [job.id])?;
                    if job.op != JobOp::DeleteOld {
                        set_file_outcome(&tx, job.file_id, "failed", reason, now)?;
                    }
                    Finished::GaveUp
                } else {
                    tx.execute(
                        "UPDATE jobs SET state = 'queued', lease_until = NULL, not_before = ?2,
                           attempts = attempts + 1, first_failure_at = ?3 WHERE id = ?1",
                        params![job.id, not_before, first],
                    )?;
                    if job.op != JobOp::DeleteOld {
                        tx.execute(
                            "UPDATE files SET error = ?2, attempts = attempts + 1, updated_at = ?3
                             WHERE id = ?1",
                            params![job.file_id, reason, now],
                        )?;
                    }
                    Finished::Retrying
                }
            }
            JobResult::Rejected(reason) => {
                tx.execute("DELETE FROM jobs WHERE id = ?1", [job.id])?;
                if job.op != JobOp::DeleteOld {
                    set_file_outcome(&tx, job.file_id, "rejected", reason, now)?;
                }
                Finished::Rejected
            }
            JobResult::Release => {
                tx.execute(
                    "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?1",
                    [job.id],
                )?;
                Finished::Released
            }
        };
        tx.commit()?;
        Ok(finished)
    }

    /// Puts running jobs back in the queue (a stop that could not wait for them).
    pub fn release(&mut self, job_ids: &[i64]) -> Result<()> {
        let tx = self.write()?;
        for id in job_ids {
            tx.execute(
                "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?1 AND state = 'running'",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn pause_vendor(&mut self, vendor: &str, reason: &str, probe_in_ms: i64) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO vendor_pauses (vendor, reason, since, next_probe_at, probe_interval_ms)
             VALUES (?1, ?2, ?3, ?3 + ?4, ?4)
             ON CONFLICT (vendor) DO UPDATE SET reason = ?2, next_probe_at = ?3 + ?4,
               probe_interval_ms = ?4",
            params![vendor, reason, now, probe_in_ms],
        )?;
        Ok(())
    }

    /// Ends a vendor's pause; returns whether it was paused.
    pub fn resume_vendor(&mut self, vendor: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM vendor_pauses WHERE vendor = ?1", [vendor])?
            > 0)
    }

    pub fn pauses(&self) -> Result<Vec<VendorPause>> {
        let mut stmt = self.conn.prepare(
            "SELECT vendor, reason, since, next_probe_at, probe_interval_ms FROM vendor_pauses
             ORDER BY vendor",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VendorPause {
                vendor: r.get(0)?,
                reason: r.get(1)?,
                since: r.get(2)?,
                next_probe_at: r.get(3)?,
                probe_interval_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that the watch on `root` is paused, and why (its folder vanished or was unmounted).
    pub fn pause_watch(&mut self, root: &str, reason: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO watch_pauses (root, reason, since) VALUES (?1, ?2, ?3)
             ON CONFLICT (root) DO UPDATE SET reason = ?2",
            params![root, reason, now_ms()],
        )?;
        Ok(())
    }

    pub fn resume_watch(&mut self, root: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM watch_pauses WHERE root = ?1", [root])?;
        Ok(())
    }

    /// At a start every watch checks its folder afresh.
    pub fn clear_watch_pauses(&mut self) -> Result<()> {
        self.conn.execute("DELETE FROM watch_pauses", [])?;
        Ok(())
    }

    /// Makes every paused vendor due for a probe now (after a reload).
    pub fn probe_paused_now(&mut self) -> Result<()> {
        self.conn
            .execute("UPDATE vendor_pauses SET next_probe_at = ?1", [now_ms()])?;
        Ok(())
    }

    /// Puts every failed file back in the queue; returns how many.
    pub fn retry_failed(&mut self) -> Result<usize> {
        let tx = self.write()?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT id FROM files WHERE state = 'failed'")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            requeue_file(&tx, *id)?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// Puts the named files back: a failed one in the queue, a rejected one up for a fresh look at the
    /// next scan. Returns, for each path, what was done.
    pub fn retry_paths(&mut self, paths: &[String]) -> Result<Vec<(String, RetryOutcome)>> {
        let tx = self.write()?;
        let mut out = Vec::new();
        for path in paths {
            let row: Option<(i64, String)> = tx
                .query_row("SELECT id, state FROM files WHERE path = ?1", [path], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let outcome = match row {
                None => RetryOutcome::Unknown,
                Some((id, state)) if state == "failed" => {
                    requeue_file(&tx, id)?;
                    RetryOutcome::Queued
                }
                Some((id, state)) if state == "rejected" => {
                    let refused_by_vendor: bool = tx.query_row(
                        "SELECT sha256 IS NOT NULL FROM files WHERE id = ?1",
                        [id],
                        |r| r.get(0),
                    )?;
                    if refused_by_vendor {
                        requeue_file(&tx, id)?;
                        RetryOutcome::Queued
                    } else {
                        // Forget the stamp: the next scan sees the file as changed and classifies
                        // it afresh; the record and its history stay.
                        tx.execute(
                            "UPDATE files SET size = NULL, mtime_ns = NULL WHERE id = ?1",
                            [id],
                        )?;
                        RetryOutcome::Reexamined
                    }
                }
                Some((_, state)) => RetryOutcome::NotFailed(state),
            };
            out.push((path.clone(), outcome));
        }
        tx.commit()?;
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    Queued,
    Reexamined,
    NotFailed(String),
    Unknown,
}

fn set_file_outcome(
    tx: &Transaction<'_>,
    file_id: i64,
    state: &str,
    reason: &str,
    now: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE files SET state = ?2, error = ?3, attempts = attempts + 1, updated_at = ?4
         WHERE id = ?1",
        params![file_id, state, reason, now],
    )?;
    Ok(())
}

fn requeue_file(tx: &Transaction<'_>, file_id: i64) -> Result<()> {
    let (vendor, sha256, url, removal): (String, Option<String>, Option<String>, Option<String>) =
        tx.query_row(
            "SELECT vendor, sha256, url, removal FROM files WHERE id = ?1",
            [file_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let (op, remote_ref) = if removal.as_deref() == Some("delete") {
        ("delete", url)
    } else {
        ("upload", None)
    };
    queue_job(
        tx,
        file_id,
        op,
        &vendor,
        sha256.as_deref(),
        remote_ref.as_deref(),
    )?;
    tx.execute(
        "UPDATE files SET state = 'pending', error = NULL, updated_at = ?2 WHERE id = ?1",
        params![file_id, now_ms()],
    )?;
    Ok(())
}

fn finish_upload(
    tx: &Transaction<'_>,
    job: &Job,
    remote: &Remote,
    can_delete: bool,
    now: i64,
) -> Result<Finished> {
    tx.execute("DELETE FROM jobs WHERE id = ?1", [job.id])?;
    let (sha256, removal): (Option<String>, Option<String>) = tx.query_row(
        "SELECT sha256, removal FROM files WHERE id = ?1",
        [job.file_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if sha256 != job.sha256 {
        // The file changed while its old content was in flight: that copy is already stale.
        if can_delete
            && let Some(url) = remote.url.as_deref()
            && url_shared_with(tx, job.file_id, &job.vendor, url)?.is_none()
        {
            queue_job(tx, job.file_id, "delete_old", &job.vendor, None, Some(url))?;
        }
        return Ok(Finished::Stale);
    }
    let state = match removal.as_deref() {
        None | Some("held") => "synced",
        Some("keep") => "removed",
        Some(_) => "pending",
    };
    tx.execute(
        "UPDATE files SET state = ?2, url = ?3, file_token = ?4, remote_key = ?5,
           transaction_id = ?6, expires_at = ?7, remote_deleted = 0, error = NULL,
           removal = CASE WHEN removal = 'keep' THEN NULL ELSE removal END,
           attempts = attempts + 1, updated_at = ?8
         WHERE id = ?1",
        params![
            job.file_id,
            state,
            remote.url,
            remote.file_token,
            remote.key,
            remote.transaction_id,
            remote.expires_at,
            now
        ],
    )?;
    if removal.as_deref() == Some("delete") {
        // Removed while it was being uploaded: now delete what was just sent.
        queue_job(
            tx,
            job.file_id,
            "delete",
            &job.vendor,
            None,
            remote.url.as_deref(),
        )?;
    }
    Ok(Finished::Done)
}
