//! Claiming due jobs from the journal: for free slots, the least busy vendor first; for a slot's
//! own line, its vendor's next jobs, unless a vendor no slot serves cuts in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::journal::{Claimed, Job, VendorPause, now_ms, path_text};

use super::WorkerContext;
use super::holdings::Held;

/// A claimed job stays ours this long. It may wait behind its slot's transfers before its own runs
/// (up to nine: eight claimed ahead and the one running), and each is bounded by a few request
/// timeouts (two minutes each), so this is well past both. The lease only gives back jobs this
/// daemon lost track of (a slot that panicked); a start requeues a crashed daemon's at once. A job
/// a slot holds is never given out again by a claim, lease or not
/// ([`Holdings`](super::holdings::Holdings)), so it is not sent twice; but while one is held past
/// its lease, every claim of its vendor reads the running jobs again. A claim answered only after
/// half the lease is not taken up.
pub(super) const LEASE_MS: i64 = 60 * 60 * 1000;

/// Up to `want` due jobs, in one journal write, each of the least busy vendor that has one due and
/// is not paused (or whose probe is due). A job of a paused vendor is its probe: the next probe is
/// pushed back so only one goes at a time. Jobs the journal settles by itself (the same bytes
/// already uploaded, a file that moved on) are logged and skipped.
pub(super) async fn claim(ctx: &WorkerContext, held: Held, want: usize) -> Vec<Claim> {
    let names = ctx.vendors.names();
    let (pauses, asked_at) = (ctx.outages.pauses(), Instant::now());
    let result = ctx
        .journal
        .write(move |j| claim_due(j, &names, &held, want, &ClaimFor::Slots))
        .await;
    match result {
        Ok(claims) => claimed(claims, pauses, asked_at),
        Err(e) => {
            // A journal that cannot be written (disk full) is asked again in a second, not in a
            // loop, and said so a few times a minute.
            crate::diagnose::journal_write_failed("claim a job", "", &e);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}

/// Claimed jobs (with their probe intervals), and the jobs the journal settled by itself.
pub(super) type Claims = (Vec<(Job, Option<Duration>)>, Vec<Claimed>);

/// Whom claimed jobs are for.
#[derive(Debug, Clone)]
pub(super) enum ClaimFor {
    /// Free slots, one job each.
    Slots,
    /// One slot, to run one after another behind a transfer of vendor `behind` (if any). A job
    /// waits only behind its own vendor's transfers: a slow vendor never holds up another's files.
    Queue { behind: Option<String> },
}

/// Up to `want` due jobs of `names`, none of those `held`. For free slots, each is of the least
/// busy vendor that has one; a slot's queue takes the least busy vendor's job first and then
/// only jobs of the vendor it waits behind, unless a vendor no slot serves has one due: that job
/// cuts in, first in the slot's line, and ends the claim.
pub(super) fn claim_due(
    j: &mut crate::journal::Journal,
    names: &[String],
    held: &Held,
    want: usize,
    claim_for: &ClaimFor,
) -> crate::journal::Result<Claims> {
    let (mut jobs, mut settled) = (Vec::new(), Vec::new());
    let mut in_flight = held.in_flight.clone();
    let held = &held.jobs;
    let mut pauses = None;
    let (queue, mut behind) = match claim_for {
        ClaimFor::Slots => (false, None),
        ClaimFor::Queue { behind } => (true, behind.clone()),
    };
    while jobs.len() < want {
        let names = match &behind {
            // A vendor no slot serves (none of its jobs held) comes first: else a backlog that
            // keeps every slot busy would hold up its files until that backlog ended. Then the
            // vendor waited behind, while it is still configured (a reload may have removed it).
            Some(vendor) => names
                .iter()
                .filter(|n| *n != vendor && in_flight.get(*n).is_none_or(|count| *count == 0))
                .chain(names.iter().filter(|n| *n == vendor))
                .cloned()
                .collect(),
            None => {
                let mut names = names.to_vec();
                names.sort_by_key(|v| in_flight.get(v).copied().unwrap_or(0));
                names
            }
        };
        let step = match claim_one(j, names, held, &in_flight, &mut pauses) {
            Ok(step) => step,
            Err(e) if jobs.is_empty() && settled.is_empty() => return Err(e),
            // What was claimed is committed with the group: it goes to its slot, or nobody would
            // know it is claimed until its lease ran out.
            Err(e) => {
                error!("cannot claim more jobs: {e}");
                break;
            }
        };
        match step {
            None => break,
            Some((Claimed::Job(job), probe)) => {
                *in_flight.entry(job.vendor.clone()).or_default() += 1;
                if queue && behind.as_ref().is_some_and(|vendor| *vendor != job.vendor) {
                    // It cuts in ([`queue_up`] puts it first in line): the last claimed for this
                    // slot now.
                    jobs.push((job, probe));
                    break;
                }
                if queue {
                    behind = Some(job.vendor.clone());
                }
                jobs.push((job, probe));
            }
            Some((other, _)) => settled.push(other),
        }
    }
    Ok((jobs, settled))
}

/// A claimed job, waiting for its slot.
pub(super) struct Claim {
    pub(super) job: Job,
    /// The probe interval, when the job is a paused vendor's probe.
    pub(super) probe: Option<Duration>,
    /// [`Outages::pauses`](super::Outages::pauses) when the claim was asked for: a pause since
    /// then puts the job back.
    pub(super) pauses: u64,
    /// When the claim was asked for, so before its lease began.
    pub(super) asked_at: Instant,
}

impl Claim {
    /// Whether the lease may be running out: a claim whose answer is read this late (its slot
    /// stuck on an earlier outcome while the journal stayed unwritable) was not held meanwhile,
    /// and the queue may have given its job out again, so it is not taken up.
    pub(super) fn lease_running_out(&self) -> bool {
        self.asked_at.elapsed() > Duration::from_millis(LEASE_MS as u64 / 2)
    }
}

/// Puts a slot's newly claimed jobs in line. A job of another vendor than the one the claim was
/// made `behind` was claimed because no slot served that vendor ([`claim_due`]): it runs first,
/// so it waits for no other vendor's transfers. The rest join the back, in order.
pub(super) fn queue_up(ahead: &mut VecDeque<Claim>, next: Vec<Claim>, behind: Option<&str>) {
    let (cut_in, rest): (Vec<Claim>, Vec<Claim>) = next
        .into_iter()
        .partition(|claim| behind.is_some_and(|vendor| claim.job.vendor != vendor));
    for claim in cut_in.into_iter().rev() {
        ahead.push_front(claim);
    }
    ahead.extend(rest);
}

/// The next due job of `names` (tried in order: the least busy vendor first, so one vendor's
/// backlog never starves another), with the probe interval when it is a paused vendor's probe.
///
/// `pauses` keeps the vendors' pauses between the claims of one `claim_due`, read again only
/// after a probe moved its vendor's next probe. A paused vendor of which a slot holds a job (its
/// probe still in flight: a call may outlast the probe interval) gets no probe: one at a time.
fn claim_one(
    j: &mut crate::journal::Journal,
    names: Vec<String>,
    held: &HashSet<i64>,
    in_flight: &HashMap<String, usize>,
    pauses: &mut Option<Vec<VendorPause>>,
) -> crate::journal::Result<Option<(Claimed, Option<Duration>)>> {
    let now = now_ms();
    let known = match pauses {
        Some(known) => known,
        None => pauses.insert(j.pauses()?),
    };
    let probe_free = |v: &String| in_flight.get(v).is_none_or(|count| *count == 0);
    let claimable: Vec<String> = names
        .into_iter()
        .filter(|v| {
            known
                .iter()
                .all(|p| &p.vendor != v || (p.next_probe_at <= now && probe_free(v)))
        })
        .collect();
    // A probe and the push of its vendor's next probe stand or fall together: a probe claimed
    // whose push failed would go to no slot, `running` until its lease ran out.
    let (claimed, probe) = j.as_one_write(|j| {
        let Some(claimed) = j.claim_except(&claimable, LEASE_MS, held)? else {
            return Ok((None, None));
        };
        let Claimed::Job(job) = &claimed else {
            return Ok((Some(claimed), None));
        };
        let Some(pause) = known.iter().find(|p| p.vendor == job.vendor) else {
            return Ok((Some(claimed), None));
        };
        j.pause_vendor(&job.vendor, &pause.reason, pause.probe_interval_ms)?;
        let probe = Duration::from_millis(pause.probe_interval_ms.max(0) as u64);
        Ok((Some(claimed), Some(probe)))
    })?;
    if probe.is_some() {
        *pauses = None;
    }
    Ok(claimed.map(|claimed| (claimed, probe)))
}

pub(super) fn log_settled(settled: &Claimed) {
    match settled {
        Claimed::Reused { path, reference } => info!(
            path = %path_text::shown(path), remote = %reference,
            "same bytes already at the vendor: synced to that copy, nothing sent"
        ),
        Claimed::Dropped { path, op } => info!(
            path = %path_text::shown(path), op = op.as_str(),
            "the file moved on since this job was queued: dropped"
        ),
        Claimed::Kept { path, user } => info!(
            path = %path_text::shown(path),
            "delete withdrawn: {} uses the remote copy again", path_text::shown(user)
        ),
        Claimed::Withheld { path } => info!(
            path = %path_text::shown(path),
            "delete withdrawn: the watch keeps remote copies now (on_remove: keep)"
        ),
        Claimed::InDoubt { path, why } => warn!(
            path = %path_text::shown(path), outcome = "unconfirmed",
            "{why}: not sent again; check at the vendor, then `imgsyncd retry {}` to send it",
            path_text::for_shell(path)
        ),
        Claimed::DroppedInDoubt { path, why } => warn!(
            path = %path_text::shown(path), outcome = "unconfirmed", "{why}"
        ),
        Claimed::Job(_) => {}
    }
}

/// The jobs a claim found, claimed when the pause count was `pauses`; what the journal settled by
/// itself is logged.
pub(super) fn claimed((jobs, settled): Claims, pauses: u64, asked_at: Instant) -> Vec<Claim> {
    settled.iter().for_each(log_settled);
    jobs.into_iter()
        .map(|(job, probe)| Claim {
            job,
            probe,
            pauses,
            asked_at,
        })
        .collect()
}
