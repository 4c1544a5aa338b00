//! The workers' side of the journal: claiming jobs with a lease and recording what came of them,
//! the vendor's result and the state change in one transaction. Every result is applied only to
//! the state it was decided for: when the file has moved on (new content, removed), the result
//! is recorded for the copy it produced and nothing else.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::copies::{self, NewCopy};
use super::removal::set_removed;
use super::sql::CachedSql;
use super::{Journal, Result, jobs, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOp {
    Upload,
    /// The file was removed: delete its remote copy.
    Delete,
    /// The file's content changed (or an upload outlived its content): delete a copy no file uses.
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

    pub(super) fn parse(text: &str) -> JobOp {
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
    /// The copy a delete removes, and the reference the vendor knows it by.
    pub copy_id: Option<i64>,
    pub remote_ref: Option<String>,
    pub attempts: u32,
    pub first_failure_at: Option<i64>,
    /// A delete that marked its copy `deleting` as it was sent ([`Journal::begin_delete`]): no
    /// delete of that copy was sent before it, so if the vendor refused it, the copy is live
    /// again (and a file put back can be synced to it).
    pub marked_copy: bool,
    /// A call of this job that must not be made twice was on its way when the daemon last
    /// stopped ([`Journal::note_in_doubt`]): what it was, and what to look for at the vendor.
    pub in_doubt: Option<String>,
}

/// What a claim came to.
#[derive(Debug, Clone)]
pub enum Claimed {
    Job(Job),
    /// Settled without calling the vendor: the same bytes already have a live copy.
    Reused {
        path: String,
        reference: String,
    },
    /// Dropped: the file moved on (changed, removed) since the job was queued.
    Dropped {
        path: String,
        op: JobOp,
    },
    /// A delete withdrawn because a file uses the copy again.
    Kept {
        path: String,
        user: String,
    },
    /// A delete withdrawn because the file's watch keeps remote copies now (`on_remove: keep`).
    Withheld {
        path: String,
    },
    /// Not sent again: a call of it that must not be made twice was begun and its answer never
    /// recorded ([`Journal::note_in_doubt`]). The file waits for a person, `why` saying what to
    /// look for.
    InDoubt {
        path: String,
        why: String,
    },
    /// Dropped: a call of it that must not be made twice was begun and never answered, and the
    /// file has changed or gone since. `why` says what to look for at the vendor.
    DroppedInDoubt {
        path: String,
        why: String,
    },
}

/// What a vendor returned for an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// What the vendor knows the copy by: Kingdee's URL, Feishu's file_token, Jiandaoyun's key.
    pub reference: String,
    pub transaction_id: Option<String>,
    pub expires_at: Option<i64>,
    /// The record created with it (a Jiandaoyun form record's `_id`).
    pub record_id: Option<String>,
}

/// One try at a job, as `history` shows it.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    pub outcome: String,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub message: Option<String>,
    pub duration_ms: i64,
    /// Nothing was carried out: the vendor answered and refused the call (rate limited, our
    /// credentials refused, the request rejected), or its request never went out. Not kept in
    /// the journal: a delete refused so gives its copy back as live.
    pub refused: bool,
}

#[derive(Debug, Clone)]
pub enum JobResult {
    Uploaded(Remote),
    /// The copy is gone at the vendor (deleted now, or found already gone).
    Deleted,
    /// Transient trouble: try again at `not_before`, unless the job has failed for `give_up_after_ms`.
    Retry {
        not_before: i64,
        reason: String,
        give_up_after_ms: i64,
    },
    /// The vendor will never accept this file (or this delete).
    Rejected(String),
    /// The file needs a person (the vendor's answer to an upload could not be read): `failed`,
    /// never sent again on its own.
    Fail(String),
    /// Rate limited: back to the queue until `not_before`, counted neither as an attempt nor
    /// towards `give_up_after`.
    Defer {
        not_before: i64,
        reason: String,
    },
    /// Back to the queue untouched (vendor paused, daemon stopping).
    Release,
}

/// What `finish` did with the job, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Done,
    /// The file moved on while the job ran: the result was recorded for the copy only.
    Stale,
    Retrying,
    GaveUp,
    Rejected,
    Released,
}

/// The file as a job sees it.
struct FileNow {
    sha256: Option<String>,
    vendor: String,
    kind: String,
    state: String,
    removal: Option<String>,
    copy_id: Option<i64>,
    delete_unused: bool,
    reuse_copies: bool,
}

/// A file as [`FileNow`] reads it (its first eight columns), then what a claimed job carries of
/// it. One statement serves both reads, so the two cannot drift apart.
const FILE_NOW: &str = "SELECT sha256, vendor, kind, state, removal, copy_id, delete_unused,
       reuse_copies, path, size, format
     FROM files WHERE id = ?1";

fn file_now(tx: &Connection, file_id: i64) -> Result<FileNow> {
    Ok(tx.cached_query_row(FILE_NOW, [file_id], |r| FileNow::from_row(r, 0))?)
}

/// The file a claimed job is for: what the job carries of it (path, size, format) and what the
/// claim decides by, in one read.
fn file_for_claim(tx: &Connection, job: &mut Job) -> Result<FileNow> {
    let (path, size, format, file) = tx.cached_query_row(FILE_NOW, [job.file_id], |r| {
        let file = FileNow::from_row(r, 0)?;
        let (path, size, format): (String, Option<i64>, Option<String>) =
            (r.get(8)?, r.get(9)?, r.get(10)?);
        Ok((path, size, format, file))
    })?;
    job.path = path;
    job.size = size.map(|s| s as u64);
    job.format = format;
    Ok(file)
}

impl FileNow {
    /// From the row's columns `from` on: sha256, vendor, kind, state, removal, copy_id,
    /// delete_unused, reuse_copies.
    fn from_row(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<FileNow> {
        Ok(FileNow {
            sha256: r.get(from)?,
            vendor: r.get(from + 1)?,
            kind: r.get(from + 2)?,
            state: r.get(from + 3)?,
            removal: r.get(from + 4)?,
            copy_id: r.get(from + 5)?,
            delete_unused: r.get(from + 6)?,
            reuse_copies: r.get(from + 7)?,
        })
    }

    /// Whether an upload of `job` still serves the file: the same content, on disk, pending.
    fn wants_upload(&self, job: &Job) -> bool {
        self.state == "pending"
            && self.removal.is_none()
            && self.vendor == job.vendor
            && self.sha256 == job.sha256
    }

    /// Whether `job` uploads the file's bytes and the file's removal is held: gone from disk,
    /// maybe only for now.
    fn held_with(&self, job: &Job) -> bool {
        job.op == JobOp::Upload
            && self.state == "pending"
            && self.removal.as_deref() == Some("held")
            && self.vendor == job.vendor
            && self.sha256 == job.sha256
    }

    /// Whether the file is waiting for this delete (its removal queued it).
    fn awaits_delete(&self, job: &Job) -> bool {
        job.op == JobOp::Delete
            && self.removal.as_deref() == Some("delete")
            && self.copy_id == job.copy_id
    }
}

impl Journal {
    /// After a start: the daemon that held `running` jobs is gone, so they go back to the queue now
    /// rather than when their lease runs out.
    pub fn requeue_running(&mut self) -> Result<usize> {
        Ok(self.conn.cached_execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE state = 'running'",
            [],
        )?)
    }

    /// Claims the next due job of one of `vendors` (tried in the order given), leased for
    /// `lease_ms`. A job that no longer serves its file, or that a live copy of the same bytes
    /// settles, is dealt with here in the same transaction and reported instead; call again for
    /// the next.
    pub fn claim(&mut self, vendors: &[String], lease_ms: i64) -> Result<Option<Claimed>> {
        self.claim_except(vendors, lease_ms, &HashSet::new())
    }

    /// [`Journal::claim`], passing over the jobs in `held`: those the caller still holds (running,
    /// or with an outcome not yet committed), which must not be given out again even when their
    /// lease ran out (a journal unwritable for longer than the lease).
    pub fn claim_except(
        &mut self,
        vendors: &[String],
        lease_ms: i64,
        held: &HashSet<i64>,
    ) -> Result<Option<Claimed>> {
        for vendor in vendors {
            if let Some(claimed) = self.claim_of(vendor, lease_ms, held)? {
                return Ok(Some(claimed));
            }
        }
        Ok(None)
    }

    fn claim_of(
        &mut self,
        vendor: &str,
        lease_ms: i64,
        held: &HashSet<i64>,
    ) -> Result<Option<Claimed>> {
        let now = now_ms();
        let read_leases = self.lease_checks.due(vendor, now);
        let (claimed, next_check) = self.claim_of_at(vendor, now, lease_ms, held, read_leases)?;
        if let Some(at) = next_check {
            self.lease_checks.set(vendor, at);
        }
        if claimed.is_some() {
            self.lease_checks.leased(vendor, now + lease_ms);
        }
        Ok(claimed)
    }

    /// Claims the next job of `vendor` at `now`; with `read_leases`, a job whose lease ran out
    /// first, and then also says when its leases need reading again.
    fn claim_of_at(
        &mut self,
        vendor: &str,
        now: i64,
        lease_ms: i64,
        held: &HashSet<i64>,
        read_leases: bool,
    ) -> Result<(Option<Claimed>, Option<i64>)> {
        let tx = self.write()?;
        // Enough rows that one is not held, if any is.
        let enough = held.len() as i64 + 1;
        let first_free = |sql: &str| -> Result<(Option<i64>, bool)> {
            let mut stmt = tx.prepare_cached(sql)?;
            let ids = stmt.query_map(params![vendor, now, enough], |r| r.get::<_, i64>(0))?;
            let mut any = false;
            for id in ids {
                let id = id?;
                any = true;
                if !held.contains(&id) {
                    return Ok((Some(id), true));
                }
            }
            Ok((None, any))
        };
        // A lease run out (a job its slot let go of without an outcome) first, then the job due
        // longest ago. An upload of bytes already in flight waits, to reuse what that upload
        // returns: whatever its lease says, since a slot may still hold it past its lease (its
        // outcome waiting for an unwritable journal), and one no slot holds is taken by the first
        // query.
        let (expired, next_check) = match read_leases {
            false => (None, None),
            true => {
                let (expired, any) = first_free(
                    "SELECT id FROM jobs WHERE vendor = ?1 AND state = 'running' AND lease_until < ?2
                     ORDER BY id LIMIT ?3",
                )?;
                // Run out but held, or more of them: read again at the next claim.
                let next = match any {
                    true => now,
                    false => tx
                        .cached_query_row(
                            "SELECT MIN(lease_until) FROM jobs WHERE vendor = ?1 AND state = 'running'",
                            [vendor],
                            |r| r.get::<_, Option<i64>>(0),
                        )?
                        .unwrap_or(i64::MAX),
                };
                (expired, Some(next))
            }
        };
        let id = match expired {
            Some(id) => Some(id),
            None => {
                first_free(
                    "SELECT j.id FROM jobs j
                     WHERE j.vendor = ?1 AND j.state = 'queued' AND j.not_before <= ?2
                       AND NOT (j.op = 'upload' AND EXISTS (
                           SELECT 1 FROM jobs r INDEXED BY jobs_running_uploads
                           WHERE r.vendor = ?1 AND r.sha256 = j.sha256
                             AND r.state = 'running' AND r.op = 'upload'))
                     ORDER BY j.not_before, j.id LIMIT ?3",
                )?
                .0
            }
        };
        let Some(id) = id else {
            return Ok((None, next_check));
        };
        // Not RETURNING: see `copies::record`.
        tx.cached_execute(
            "UPDATE jobs SET state = 'running', lease_until = ?2 + ?3 WHERE id = ?1",
            params![id, now, lease_ms],
        )?;
        let mut job = tx.cached_query_row(
            "SELECT id, file_id, op, vendor, sha256, copy_id, attempts, first_failure_at, in_doubt
             FROM jobs WHERE id = ?1",
            [id],
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
                    copy_id: r.get(5)?,
                    remote_ref: None,
                    attempts: r.get(6)?,
                    first_failure_at: r.get(7)?,
                    marked_copy: false,
                    in_doubt: r.get(8)?,
                })
            },
        )?;
        let file = file_for_claim(&tx, &mut job)?;
        let claimed = match job.op {
            JobOp::Upload => claim_upload(&tx, job, &file)?,
            JobOp::Delete | JobOp::DeleteOld => claim_delete(&tx, job, &file)?,
        };
        tx.commit()?;
        Ok((Some(claimed), next_check))
    }

    /// When the next job of `vendors` falls due (epoch ms): a queued job's `not_before`, a paused
    /// vendor's next probe, a lease running out. `None`: nothing will be due until something is
    /// queued. Jobs waiting for the same bytes in flight are left out: the upload ending wakes them.
    pub fn next_due(&self, vendors: &[String]) -> Result<Option<i64>> {
        let mut next: Option<i64> = None;
        for vendor in vendors {
            let queued: Option<i64> = self
                .conn
                .cached_query_row(
                    "SELECT j.not_before FROM jobs j
                     WHERE j.vendor = ?1 AND j.state = 'queued'
                       AND NOT (j.op = 'upload' AND EXISTS (
                           SELECT 1 FROM jobs r INDEXED BY jobs_running_uploads
                           WHERE r.vendor = ?1 AND r.sha256 = j.sha256
                             AND r.state = 'running' AND r.op = 'upload'))
                     ORDER BY j.not_before LIMIT 1",
                    [vendor],
                    |r| r.get(0),
                )
                .optional()?;
            let probe: Option<i64> = self
                .conn
                .cached_query_row(
                    "SELECT next_probe_at FROM vendor_pauses WHERE vendor = ?1",
                    [vendor],
                    |r| r.get(0),
                )
                .optional()?;
            let lease: Option<i64> = self.conn.cached_query_row(
                "SELECT MIN(lease_until) FROM jobs WHERE vendor = ?1 AND state = 'running'",
                [vendor],
                |r| r.get(0),
            )?;
            // Nothing of a paused vendor is claimed before its probe is due: neither a queued job
            // nor one whose lease ran out (a pool woken for it would find nothing to claim, and
            // look again every 250 ms until the probe).
            let after_probe = |due: i64| probe.map_or(due, |probe| due.max(probe));
            let (queued, lease) = (queued.map(after_probe), lease.map(after_probe));
            for due in [queued, lease].into_iter().flatten() {
                next = Some(next.map_or(due, |n: i64| n.min(due)));
            }
        }
        Ok(next)
    }

    /// A vendor that answers again after an outage: its jobs start afresh, so the time it was
    /// down does not count towards `give_up_after`.
    pub fn restart_outage_clock(&mut self, vendor: &str) -> Result<()> {
        self.conn.cached_execute(
            "UPDATE jobs SET first_failure_at = NULL, not_before = MIN(not_before, ?2)
             WHERE vendor = ?1 AND state = 'queued'",
            params![vendor, now_ms()],
        )?;
        Ok(())
    }

    /// Records the attempt and what it means for the job, the copy and the file, in one transaction.
    pub fn finish(
        &mut self,
        job: &Job,
        result: &JobResult,
        attempt: Option<&Attempt>,
    ) -> Result<Finished> {
        let tx = self.write()?;
        if let Some(attempt) = attempt {
            record_attempt(&tx, job.file_id, job.op, attempt)?;
        }
        let file = file_now(&tx, job.file_id)?;
        let finished = match result {
            JobResult::Uploaded(remote) => finish_upload(&tx, job, &file, remote)?,
            JobResult::Deleted => finish_delete(&tx, job, &file)?,
            JobResult::Retry {
                not_before,
                reason,
                give_up_after_ms,
            } => finish_retry(&tx, job, &file, *not_before, reason, *give_up_after_ms)?,
            JobResult::Rejected(reason) => {
                jobs::remove(&tx, job.id)?;
                if file.wants_upload(job) && job.op == JobOp::Upload {
                    // The last good copy, if any, stays the file's copy.
                    set_file_outcome(&tx, job.file_id, "rejected", reason)?;
                    Finished::Rejected
                } else if file.awaits_delete(job) {
                    let why = format!("the vendor refused to delete the remote copy: {reason}");
                    set_file_outcome(&tx, job.file_id, "failed", &why)?;
                    Finished::Rejected
                } else {
                    Finished::Stale
                }
            }
            JobResult::Fail(reason) => {
                jobs::remove(&tx, job.id)?;
                if file.wants_upload(job) || file.awaits_delete(job) {
                    set_file_outcome(&tx, job.file_id, "failed", reason)?;
                    Finished::GaveUp
                } else {
                    Finished::Stale
                }
            }
            JobResult::Defer { not_before, reason } => {
                // Deferred after the vendor answered (paused, refused us): nothing in doubt.
                tx.cached_execute(
                    "UPDATE jobs SET state = 'queued', lease_until = NULL, not_before = ?2,
                       in_doubt = NULL
                     WHERE id = ?1",
                    params![job.id, not_before],
                )?;
                if file.wants_upload(job) || file.awaits_delete(job) {
                    tx.cached_execute(
                        "UPDATE files SET error = ?2 WHERE id = ?1",
                        params![job.file_id, reason],
                    )?;
                }
                Finished::Released
            }
            JobResult::Release => {
                // Released with an attempt, the vendor answered: nothing is in doubt. Without one
                // it was not called (no adapter for it any more), and a note stays.
                tx.cached_execute(
                    "UPDATE jobs SET state = 'queued', lease_until = NULL,
                       in_doubt = CASE WHEN ?2 THEN NULL ELSE in_doubt END
                     WHERE id = ?1",
                    params![job.id, attempt.is_some()],
                )?;
                // No attempt: the vendor was not called (no adapter for it any more).
                if attempt.is_none() {
                    give_back_unsent_mark(&tx, job)?;
                }
                Finished::Released
            }
        };
        if attempt.is_some_and(|a| a.refused) && job.op != JobOp::Upload {
            // Refused: the copy is where it was. (A `Deleted` is never refused.)
            give_back_unsent_mark(&tx, job)?;
        }
        tx.commit()?;
        Ok(finished)
    }

    /// Notes, just before a call of a running job that must not be made twice (Jiandaoyun's
    /// data/create) goes out, what the call is and what to look for at the vendor: should the
    /// daemon stop before its answer, the job, claimed again, waits for a person instead of
    /// making it again. False: the job is no longer running (settled meanwhile), and the call is
    /// not made. An outcome clears the note with the job.
    pub fn note_in_doubt(&mut self, job_id: i64, what: &str) -> Result<bool> {
        self.set_in_doubt(job_id, Some(what))
    }

    /// Takes the note back: the call was answered, with a refusal that carried nothing out (a
    /// rate limit), and the job waits before making it again.
    pub fn answered(&mut self, job_id: i64) -> Result<()> {
        self.set_in_doubt(job_id, None).map(drop)
    }

    fn set_in_doubt(&mut self, job_id: i64, what: Option<&str>) -> Result<bool> {
        let tx = self.write()?;
        let noted = tx.cached_execute(
            "UPDATE jobs SET in_doubt = ?2 WHERE id = ?1 AND state = 'running'",
            params![job_id, what],
        )?;
        tx.commit()?;
        Ok(noted == 1)
    }

    /// Puts running jobs back in the queue (a stop that could not wait for them).
    pub fn release(&mut self, job_ids: &[i64]) -> Result<()> {
        let tx = self.write()?;
        for id in job_ids {
            tx.cached_execute(
                "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?1 AND state = 'running'",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Puts a claimed job back that was never sent (claimed ahead, then its vendor paused or the
    /// daemon stopping): queued again as it was, its copy live again if its claim marked it.
    pub fn put_back_unsent(&mut self, job: &Job) -> Result<()> {
        let tx = self.write()?;
        let queued = tx.cached_execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?1 AND state = 'running'",
            [job.id],
        )?;
        if queued == 1 {
            give_back_unsent_mark(&tx, job)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Called just before a claimed delete is sent: settles it as its claim would have, now (a
    /// file put back since its claim uses the copy again: withdrawn); else marks its copy
    /// `deleting`, since from now on the vendor may carry it out, and says so in
    /// `job.marked_copy` when the copy was live. `None`: send it.
    ///
    /// Asked again for the same delete (its first try refused for a stale token, so carrying
    /// nothing out, and tried again once a fresh one is in hand and its turn has come), it asks
    /// as it did the first time: the copy that try marked is live again first, so a file back
    /// meanwhile withdraws the delete here too.
    pub fn begin_delete(&mut self, job: &mut Job) -> Result<Option<Claimed>> {
        let tx = self.write()?;
        let still_claimed = tx
            .cached_query_row(
                "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'running'",
                [job.id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        // No other claim can own a mark on a copy this job's earlier try marked: the copy was
        // then `deleting`, and a claim marks only a live one.
        give_back_unsent_mark(&tx, job)?;
        job.marked_copy = false;
        if !still_claimed {
            tx.commit()?;
            return Ok(Some(Claimed::Dropped {
                path: job.path.clone(),
                op: job.op,
            }));
        }
        let file = file_now(&tx, job.file_id)?;
        if let Some(settled) = settle_delete(&tx, job, &file)? {
            tx.commit()?;
            return Ok(Some(settled));
        }
        if let Some(copy_id) = job.copy_id {
            job.marked_copy = copies::state(&tx, copy_id)? == "live";
            copies::mark_deleting(&tx, copy_id)?;
        }
        tx.commit()?;
        Ok(None)
    }

    /// Puts every failed file back in the queue; returns how many.
    pub fn retry_failed(&mut self) -> Result<usize> {
        let tx = self.write()?;
        let ids: Vec<i64> = {
            // A file renamed out of the watch's names is not there to send: it stays as it is.
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM files WHERE state = 'failed' AND untaken_at IS NULL",
            )?;
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
            let row: Option<(i64, String, bool, Option<String>)> = tx
                .cached_query_row(
                    "SELECT id, state, sha256 IS NOT NULL,
                       CASE WHEN removal IS NULL AND state != 'removed' THEN untaken_at END
                     FROM files WHERE path = ?1",
                    [path],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let outcome = match row {
                None => RetryOutcome::Unknown,
                // Not at its path: nothing there to send or examine.
                Some((.., Some(place))) => RetryOutcome::RenamedOut(place),
                Some((id, state, refused_by_vendor, None)) => {
                    retry_one(&tx, id, state, refused_by_vendor)?
                }
            };
            out.push((path.clone(), outcome));
        }
        tx.commit()?;
        Ok(out)
    }
}

/// [`Journal::retry_paths`] for a file at its path.
fn retry_one(
    tx: &Connection,
    id: i64,
    state: String,
    refused_by_vendor: bool,
) -> Result<RetryOutcome> {
    Ok(match (state.as_str(), refused_by_vendor) {
        ("failed", _) | ("rejected", true) => {
            requeue_file(tx, id)?;
            RetryOutcome::Queued
        }
        ("rejected", false) => {
            // Forget the stamp: the next scan sees the file as changed and classifies it
            // afresh; the record and its history stay.
            tx.cached_execute(
                "UPDATE files SET size = NULL, mtime_ns = NULL WHERE id = ?1",
                [id],
            )?;
            RetryOutcome::Reexamined
        }
        ("synced", _) if copy_expired(tx, id)? => {
            // A key past its hour: the vendor no longer honours it; send the file anew.
            requeue_file(tx, id)?;
            RetryOutcome::Queued
        }
        _ => RetryOutcome::NotFailed(state),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    Queued,
    Reexamined,
    NotFailed(String),
    Unknown,
    /// Renamed out of the watch's names, to this path: not there to retry.
    RenamedOut(String),
}

fn claim_upload(tx: &Connection, mut job: Job, file: &FileNow) -> Result<Claimed> {
    if let Some(begun) = job.in_doubt.take() {
        return settle_in_doubt(tx, job, file, &begun);
    }
    if !file.wants_upload(&job) {
        jobs::remove(tx, job.id)?;
        return Ok(Claimed::Dropped {
            path: job.path,
            op: job.op,
        });
    }
    let sha256 = job.sha256.as_deref().unwrap_or_default();
    let reusable = match file.reuse_copies {
        true => copies::reusable(tx, &job.vendor, sha256)?,
        false => None,
    };
    let Some(copy_id) = reusable else {
        return Ok(Claimed::Job(job));
    };
    let reference: String = tx.cached_query_row(
        "SELECT remote_ref FROM remote_copies WHERE id = ?1",
        [copy_id],
        |r| r.get(0),
    )?;
    record_attempt(
        tx,
        job.file_id,
        job.op,
        &Attempt {
            outcome: "deduplicated".into(),
            message: Some(format!("same bytes as the live copy {reference}")),
            ..Attempt::default()
        },
    )?;
    jobs::remove(tx, job.id)?;
    sync_to(tx, job.file_id, file, copy_id)?;
    Ok(Claimed::Reused {
        path: job.path,
        reference,
    })
}

/// Settles an upload whose call that must not be made twice (`begun`) was begun and never
/// answered: made again, the vendor could hold it twice (Jiandaoyun: two form records of one
/// file). The file, if it still wants this upload, waits for a person; its history says what to
/// look for either way.
fn settle_in_doubt(tx: &Connection, job: Job, file: &FileNow, begun: &str) -> Result<Claimed> {
    let moved_on = !file.wants_upload(&job);
    let why = match moved_on {
        true => unanswered_and_moved_on(begun),
        false => unanswered(begun),
    };
    record_unconfirmed(tx, job.file_id, job.op, &why)?;
    jobs::remove(tx, job.id)?;
    if moved_on {
        return Ok(Claimed::DroppedInDoubt {
            path: job.path,
            why,
        });
    }
    let error = format!(
        "{why}; check there, then `imgsyncd retry {}` to send it again",
        super::path_text::for_shell(&job.path)
    );
    set_file_outcome(tx, job.file_id, "failed", &error)?;
    Ok(Claimed::InDoubt {
        path: job.path,
        why,
    })
}

/// Puts in the file's history that a call of `op` was begun and never answered (`why`).
pub(super) fn record_unconfirmed(
    tx: &Connection,
    file_id: i64,
    op: JobOp,
    why: &str,
) -> Result<()> {
    let attempt = Attempt {
        outcome: "unconfirmed".into(),
        message: Some(why.to_string()),
        ..Attempt::default()
    };
    record_attempt(tx, file_id, op, &attempt)
}

/// How [`unanswered`] goes on after what was begun.
const UNANSWERED: &str = " was begun, and its answer never came back";

/// Why a call begun (`begun`) and never answered is not made again.
pub(super) fn unanswered(begun: &str) -> String {
    format!(
        "{begun}{UNANSWERED} (the daemon stopped, or the call outlived its lease): the vendor may \
         hold it already, and making it again could make two"
    )
}

/// What was begun, read back from a reason [`unanswered`] gave.
pub(super) fn begun_of(reason: &str) -> Option<&str> {
    reason.split_once(UNANSWERED).map(|(begun, _)| begun)
}

/// Why a call begun (`begun`) and never answered is not made again, for a file that changed or
/// went since: its new bytes (if any) go as new content, and only a person can find what the
/// call made.
pub(super) fn unanswered_and_moved_on(begun: &str) -> String {
    format!(
        "{}; the file changed or went before the daemon could settle it, so check the vendor by \
         hand",
        unanswered(begun)
    )
}

/// Why a delete queued under `on_remove: delete` was not sent after the watch changed to `keep`.
const KEPT_BY_POLICY: &str =
    "remote copy kept: the watch keeps remote copies now (on_remove: keep)";

fn claim_delete(tx: &Connection, mut job: Job, file: &FileNow) -> Result<Claimed> {
    if let Some(settled) = settle_delete(tx, &job, file)? {
        return Ok(settled);
    }
    // Not marked `deleting` yet: claimed ahead, it may wait in its slot's line for minutes, and
    // a file put back meanwhile is synced to the copy again ([`Journal::begin_delete`]).
    job.remote_ref = Some(tx.cached_query_row(
        "SELECT remote_ref FROM remote_copies WHERE id = ?1",
        [job.copy_id],
        |r| r.get(0),
    )?);
    Ok(Claimed::Job(job))
}

/// Settles a delete that must not be sent, as it stands now: its copy gone already, kept by the
/// watch's policy, or used again (a file put back, the same bytes dropped): the job is removed and
/// the reason returned. `None`: the delete is to be sent.
fn settle_delete(tx: &Connection, job: &Job, file: &FileNow) -> Result<Option<Claimed>> {
    let (path, op) = (job.path.clone(), job.op);
    let Some(copy_id) = job.copy_id else {
        jobs::remove(tx, job.id)?;
        return Ok(Some(Claimed::Dropped { path, op }));
    };
    match copies::state(tx, copy_id)?.as_str() {
        "deleted" => {
            jobs::remove(tx, job.id)?;
            if file.awaits_delete(job) {
                set_removed(tx, job.file_id, None)?;
            }
            Ok(Some(Claimed::Dropped { path, op }))
        }
        "live" if !file.delete_unused => {
            jobs::remove(tx, job.id)?;
            if file.awaits_delete(job) {
                set_removed(tx, job.file_id, Some(KEPT_BY_POLICY))?;
            }
            Ok(Some(Claimed::Withheld { path }))
        }
        "live" => match copies::user(tx, copy_id, None)? {
            // Used again since the delete was queued: withdrawn before anything was sent.
            Some(user) => {
                jobs::remove(tx, job.id)?;
                if file.awaits_delete(job) {
                    let note = format!(
                        "remote copy kept: {} uses it",
                        super::path_text::shown(&user)
                    );
                    set_removed(tx, job.file_id, Some(&note))?;
                }
                Ok(Some(Claimed::Kept { path, user }))
            }
            None => Ok(None),
        },
        // `deleting`: an earlier attempt was sent, its fate unknown; it is sent again.
        _ => Ok(None),
    }
}

/// A delete that marked its copy `deleting` as it was sent ([`Journal::begin_delete`]), and that
/// was not carried out (never sent after all, or refused by the vendor): the copy is as it was,
/// live. (One already `deleting` before stays so: an earlier attempt may have been carried out
/// with its answer lost.)
fn give_back_unsent_mark(tx: &Connection, job: &Job) -> Result<()> {
    if let (true, Some(copy_id)) = (job.marked_copy, job.copy_id) {
        copies::unmark_deleting(tx, copy_id)?;
    }
    Ok(())
}

fn record_attempt(tx: &Connection, file_id: i64, op: JobOp, attempt: &Attempt) -> Result<()> {
    tx.cached_execute(
        "INSERT INTO attempts (file_id, op, at, outcome, http_status, vendor_code, message,
           duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            file_id,
            op.as_str(),
            now_ms(),
            attempt.outcome,
            attempt.http_status,
            attempt.vendor_code,
            attempt.message,
            attempt.duration_ms
        ],
    )?;
    Ok(())
}

/// The file is synced to `copy_id`; the copy it pointed at before is deleted if nothing uses it
/// and the file's watch deletes what it no longer needs.
fn sync_to(tx: &Connection, file_id: i64, file: &FileNow, copy_id: i64) -> Result<()> {
    tx.cached_execute(
        "UPDATE files SET state = 'synced', copy_id = ?2, error = NULL, attempts = attempts + 1,
           updated_at = ?3 WHERE id = ?1",
        params![file_id, copy_id, now_ms()],
    )?;
    let_go_of_old_copy(tx, file_id, file, copy_id)
}

/// The file now points at `copy_id`: the copy it pointed at before goes, unless used.
fn let_go_of_old_copy(tx: &Connection, file_id: i64, file: &FileNow, copy_id: i64) -> Result<()> {
    if let Some(old) = file.copy_id.filter(|old| *old != copy_id) {
        delete_if_unused(tx, file_id, &file.vendor, old, file.delete_unused)?;
    }
    Ok(())
}

/// Queues the delete of a copy no file uses, when the file's watch deletes what it leaves behind.
fn delete_if_unused(
    tx: &Connection,
    file_id: i64,
    vendor: &str,
    copy_id: i64,
    delete_unused: bool,
) -> Result<()> {
    if delete_unused
        && copies::is_live(tx, Some(copy_id))?
        && copies::user(tx, copy_id, None)?.is_none()
        && !copies::delete_pending(tx, copy_id)?
    {
        jobs::queue(tx, file_id, "delete_old", vendor, None, Some(copy_id))?;
    }
    Ok(())
}

fn finish_upload(tx: &Connection, job: &Job, file: &FileNow, remote: &Remote) -> Result<Finished> {
    jobs::remove(tx, job.id)?;
    let copy_id = copies::record(
        tx,
        &NewCopy {
            vendor: &job.vendor,
            kind: &file.kind,
            remote_ref: &remote.reference,
            sha256: job.sha256.as_deref(),
            transaction_id: remote.transaction_id.as_deref(),
            expires_at: remote.expires_at,
            record_id: remote.record_id.as_deref(),
        },
    )?;
    if file.wants_upload(job) {
        sync_to(tx, job.file_id, file, copy_id)?;
        return Ok(Finished::Done);
    }
    if file.held_with(job) {
        // Gone while its bytes were in flight, its removal held for an operator: the new copy
        // is its copy, for `retry --held` to delete or for the file, put back, to be synced to.
        // Left to nobody, it would stay at the vendor for good once the removal went ahead.
        // Its error says why the removal is held, and stays.
        tx.cached_execute(
            "UPDATE files SET state = 'synced', copy_id = ?2, updated_at = ?3 WHERE id = ?1",
            params![job.file_id, copy_id, now_ms()],
        )?;
        let_go_of_old_copy(tx, job.file_id, file, copy_id)?;
        return Ok(Finished::Done);
    }
    // The file changed or went while its content was in flight: that copy serves nobody, unless
    // the same bytes are waiting elsewhere.
    delete_if_unused(tx, job.file_id, &job.vendor, copy_id, file.delete_unused)?;
    Ok(Finished::Stale)
}

fn finish_delete(tx: &Connection, job: &Job, file: &FileNow) -> Result<Finished> {
    jobs::remove(tx, job.id)?;
    if let Some(copy_id) = job.copy_id {
        copies::mark_deleted(tx, copy_id)?;
    }
    if file.awaits_delete(job) {
        tx.cached_execute(
            "UPDATE files SET state = 'removed', removal = NULL, error = NULL,
               attempts = attempts + 1, updated_at = ?2, untaken_at = NULL WHERE id = ?1",
            params![job.file_id, now_ms()],
        )?;
    }
    Ok(Finished::Done)
}

fn finish_retry(
    tx: &Connection,
    job: &Job,
    file: &FileNow,
    not_before: i64,
    reason: &str,
    give_up_after_ms: i64,
) -> Result<Finished> {
    let now = now_ms();
    let serves_file = match job.op {
        JobOp::Upload => file.wants_upload(job),
        JobOp::Delete => file.awaits_delete(job),
        JobOp::DeleteOld => false,
    };
    if job.op == JobOp::Upload && !serves_file {
        jobs::remove(tx, job.id)?;
        return Ok(Finished::Stale);
    }
    let first = job.first_failure_at.unwrap_or(now);
    if now - first >= give_up_after_ms {
        jobs::remove(tx, job.id)?;
        if serves_file {
            set_file_outcome(tx, job.file_id, "failed", reason)?;
        }
        return Ok(Finished::GaveUp);
    }
    tx.cached_execute(
        "UPDATE jobs SET state = 'queued', lease_until = NULL, not_before = ?2,
           attempts = attempts + 1, first_failure_at = ?3, in_doubt = NULL WHERE id = ?1",
        params![job.id, not_before, first],
    )?;
    if serves_file {
        tx.cached_execute(
            "UPDATE files SET error = ?2, attempts = attempts + 1, updated_at = ?3 WHERE id = ?1",
            params![job.file_id, reason, now],
        )?;
    }
    Ok(Finished::Retrying)
}

fn set_file_outcome(tx: &Connection, file_id: i64, state: &str, reason: &str) -> Result<()> {
    tx.cached_execute(
        "UPDATE files SET state = ?2, error = ?3, attempts = attempts + 1, updated_at = ?4
         WHERE id = ?1",
        params![file_id, state, reason, now_ms()],
    )?;
    Ok(())
}

/// Whether the file's remote copy has expired (a Jiandaoyun key past its transaction's hour).
fn copy_expired(tx: &Connection, file_id: i64) -> Result<bool> {
    Ok(tx.cached_query_row(
        "SELECT EXISTS (SELECT 1 FROM files f JOIN remote_copies c ON c.id = f.copy_id
           WHERE f.id = ?1 AND c.expires_at IS NOT NULL AND c.expires_at <= ?2)",
        params![file_id, now_ms()],
        |r| r.get(0),
    )?)
}

fn requeue_file(tx: &Connection, file_id: i64) -> Result<()> {
    let file = file_now(tx, file_id)?;
    if file.removal.as_deref() == Some("delete") {
        jobs::queue(tx, file_id, "delete", &file.vendor, None, file.copy_id)?;
    } else {
        jobs::queue(
            tx,
            file_id,
            "upload",
            &file.vendor,
            file.sha256.as_deref(),
            None,
        )?;
    }
    tx.cached_execute(
        "UPDATE files SET state = 'pending', error = NULL, updated_at = ?2 WHERE id = ?1",
        params![file_id, now_ms()],
    )?;
    Ok(())
}

/// When each vendor's running jobs must next be read for a lease that ran out. A lease runs out
/// only for a job its slot let go of without an outcome (a panic) or holds past it (an
/// unwritable journal), an hour after its claim; reading for one goes through every running
/// job of the vendor, so a claim reads only once a lease may have run out, not every time. What
/// it expects is forgotten when a transaction is taken back ([`Journal::taken_back`]): a claim
/// may have seen jobs stop running that are running again.
#[derive(Debug, Default)]
pub(super) struct LeaseChecks {
    /// Epoch ms from which the vendor's leases are read again; a vendor not here is read at once.
    next: HashMap<String, i64>,
}

impl LeaseChecks {
    fn due(&self, vendor: &str, now: i64) -> bool {
        self.next.get(vendor).is_none_or(|&at| now >= at)
    }

    fn set(&mut self, vendor: &str, at: i64) {
        self.next.insert(vendor.to_string(), at);
    }

    /// A job of `vendor` was leased until `until`.
    fn leased(&mut self, vendor: &str, until: i64) {
        if let Some(at) = self.next.get_mut(vendor) {
            *at = (*at).min(until);
        }
    }
}
