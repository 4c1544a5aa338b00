//! A worker's slot: runs one transfer at a time, records each outcome as soon as it is known and
//! claims its next jobs in the same commit, and waits for a commit only when it has nothing claimed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::journal::{Attempt, Finished, Job, JobResult, JournalHandle, path_text};

use super::WorkerContext;
use super::claim::{Claim, ClaimFor, Claims, claim_due, claimed, queue_up};
use super::holdings::Holdings;
use super::process::{Decided, process};

/// How many claimed jobs a slot keeps waiting behind the one it runs. A slot's outcomes are
/// written as soon as they are known and it does not wait for their commits, so up to `AHEAD + 1`
/// of them may be on their way at once: the journal's groups grow with the load. Eight, so a slot
/// has work for the 2 ms its claim may wait for the next commit (the journal spaces its commits)
/// and the one after: with two or four, slots ran dry waiting for it. More cost more than they
/// save while a claim passes over every upload in flight, one by one.
const AHEAD: usize = 8;

/// With one vendor configured, no job can cut in, so a slot claims only once its line is down to
/// this many jobs (ahead, or on their way), and then tops it up: a claim for four or five jobs
/// instead of one at each outcome. Each claim reads the uploads in flight, the pauses and the
/// leases whatever it takes, so fewer claims cost the journal less. Five still covers the wait
/// for the claim's commit.
const REFILL_AT: usize = 5;

/// A slot's outcome, submitted to the journal, with the claim submitted right behind it.
pub(super) struct Recording {
    pub(super) job: Job,
    pub(super) result: JobResult,
    pub(super) attempt: Option<Attempt>,
    pub(super) written: Answer<crate::journal::Result<Finished>>,
    pub(super) claim: Option<Answer<crate::journal::Result<Claims>>>,
    /// How many jobs the claim asked for.
    pub(super) want: usize,
    /// The vendor the claim was made behind: a job of another vendor cut in.
    pub(super) behind: Option<String>,
    /// [`Outages::pauses`](super::Outages::pauses) when the claim was asked for.
    pub(super) pauses: u64,
    pub(super) asked_at: Instant,
}

impl Recording {
    /// Whether the outcome is committed and its claim brought a job that cut in (of another
    /// vendor than the one it was made behind); the answers are taken in if they have come,
    /// without waiting.
    fn brought_cut_in(&mut self) -> bool {
        let (Some(behind), Some(claim)) = (self.behind.as_deref(), self.claim.as_mut()) else {
            return false;
        };
        if !(claim.arrived() && self.written.arrived()) {
            return false;
        }
        matches!(claim, Answer::In(Ok((jobs, _))) if jobs.iter().any(|(job, _)| job.vendor != behind))
    }

    /// Whether the journal has answered that it could not record the outcome (full, locked);
    /// the answer is taken in if it has come, without waiting.
    fn refused(&mut self) -> bool {
        self.written.arrived() && matches!(self.written, Answer::In(Err(_)))
    }
}

/// A journal write's answer: still on its way, or already in.
pub(super) enum Answer<T> {
    Coming(Pin<Box<dyn Future<Output = T> + Send>>),
    In(T),
}

impl<T> Answer<T> {
    fn coming(future: impl Future<Output = T> + Send + 'static) -> Answer<T> {
        Answer::Coming(Box::pin(future))
    }

    /// Takes the answer in if it has come, without waiting for it.
    fn arrived(&mut self) -> bool {
        let Answer::Coming(future) = self else {
            return true;
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(answer) => {
                *self = Answer::In(answer);
                true
            }
            std::task::Poll::Pending => false,
        }
    }

    pub(super) async fn get(self) -> T {
        match self {
            Answer::Coming(future) => future.await,
            Answer::In(answer) => answer,
        }
    }
}

/// A worker's slot: runs one transfer at a time and claims its next jobs itself.
pub(super) struct Slot {
    /// Which slot this is, in [`Holdings`].
    pub(super) id: u64,
    pub(super) ctx: WorkerContext,
    pub(super) running: Arc<Holdings>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Ended, panicked or aborted: what it held can be given out again (by its lease, or the
        // requeue of a stop).
        self.running.let_go_all(self.id);
    }
}

impl Slot {
    /// Runs `first`, then the jobs claimed along with each outcome, until none comes.
    ///
    /// A slot keeps up to [`AHEAD`] claimed jobs waiting: each outcome is recorded (and the next
    /// jobs claimed, in the same commit) while the jobs ahead run, so a transfer waits for a commit
    /// only when the slot has nothing claimed. A job waits only behind a transfer of its own
    /// vendor, so a slow vendor holds up none of another's: a vendor no slot serves cuts in at
    /// the next outcome any slot records, and waits at most for the transfer under way.
    pub(super) async fn run(&self, first: Claim) {
        let mut ahead = VecDeque::from([first]);
        let mut recordings: VecDeque<Recording> = VecDeque::new();
        loop {
            // An outcome committed with a claim that brought a job of a vendor no slot serves is
            // settled before the next transfer, with every outcome recorded before it (committed
            // in the same group or an earlier one), so that job runs next ([`queue_up`]). Others
            // are settled when the line runs dry: settling each as soon as it was in cost the
            // 10 000-file drain 20 % more CPU and time (measured; the cause not pinned down).
            while recordings.iter_mut().any(Recording::brought_cut_in) {
                let recording = recordings.pop_front().expect("looked at just now");
                self.settle_into(recording, &mut ahead, &mut recordings)
                    .await;
            }
            // An outcome the journal could not record is settled before anything more is sent:
            // that waits until the journal takes it, so while it cannot (a full disk), no slot
            // sends more than the transfer it had under way, which a kill would send again.
            if recordings.iter_mut().any(Recording::refused) {
                while let Some(recording) = recordings.pop_front() {
                    self.settle_into(recording, &mut ahead, &mut recordings)
                        .await;
                }
            }
            let Some(claim) = ahead.pop_front() else {
                let Some(recording) = recordings.pop_front() else {
                    return;
                };
                self.settle_into(recording, &mut ahead, &mut recordings)
                    .await;
                continue;
            };
            let vendor = claim.job.vendor.clone();
            if *self.stop.borrow() || self.ctx.outages.paused_since(&vendor, claim.pauses) {
                // Stopping, or its vendor was paused since this job was claimed: it goes back
                // unsent, to wait behind the vendor's probe.
                self.put_back(&claim).await;
                continue;
            }
            let decided =
                crate::metrics::scoped(vendor, process(&self.ctx, claim.job, claim.probe)).await;
            let asked: usize = recordings.iter().map(|r| r.want).sum();
            let lined_up = ahead.len() + asked;
            let want = match lined_up > REFILL_AT && self.ctx.vendors.len() == 1 {
                true => 0,
                false => (AHEAD + 1).saturating_sub(lined_up),
            };
            // What is claimed now runs after the jobs ahead and those still being claimed, so
            // only their vendor's jobs.
            let behind = match (ahead.back(), asked) {
                (Some(last), _) => Some(last.job.vendor.clone()),
                (None, 0) => None,
                (None, _) => Some(decided.job.vendor.clone()),
            };
            recordings.push_back(self.record(decided, want, behind));
        }
    }

    /// Settles `recording`: the jobs claimed with it join `ahead`. If its outcome could not be
    /// written at the first try, the jobs claimed behind it (in `recordings`) are not run while
    /// it was unrecorded, and go back to the queue.
    async fn settle_into(
        &self,
        recording: Recording,
        ahead: &mut VecDeque<Claim>,
        recordings: &mut VecDeque<Recording>,
    ) {
        let behind = recording.behind.clone();
        match self.settle(recording, true).await {
            Settled::Recorded(next) => queue_up(ahead, next, behind.as_deref()),
            Settled::Retried => {
                for later in std::mem::take(recordings) {
                    self.settle(later, false).await;
                }
            }
        }
    }

    /// Releases a claimed job this slot will not run. A journal that cannot take it (locked,
    /// full) is asked again with growing waits, as for an outcome, so the job does not sit
    /// `running` for the rest of its one-hour lease once the journal is back; unless the daemon
    /// is stopping (its next start requeues the job). The job is held until then, so no claim
    /// gives it out meanwhile.
    pub(super) async fn put_back(&self, claim: &Claim) {
        let (id, job) = (claim.job.id, claim.job.clone());
        let mut backoff = JournalBackoff::default();
        while let Err(e) = self
            .ctx
            .journal
            .write({
                let job = job.clone();
                move |j| j.put_back_unsent(&job)
            })
            .await
        {
            if *self.stop.borrow() {
                error!(
                    path = %path_text::shown(&claim.job.path), job = id,
                    "cannot put a claimed job back in the queue: {e}; the next start does"
                );
                break;
            }
            crate::diagnose::journal_write_failed(
                "put a claimed job back in the queue",
                &claim.job.path,
                &e,
            );
            backoff.wait().await;
        }
        self.running.let_go(self.id, id);
    }

    /// Submits the outcome to the journal, and a claim of up to `want` next jobs right behind it
    /// so both go in one commit; behind a job of vendor `behind`, only that vendor's
    /// ([`ClaimFor::Queue`]). [`Slot::settle`] waits for them.
    ///
    /// The job stays in `running` until its outcome is committed ([`Slot::settle`]): until then
    /// no claim gives it out again, even one that finds its lease run out.
    pub(super) fn record(
        &self,
        decided: Decided,
        want: usize,
        behind: Option<String>,
    ) -> Recording {
        let Decided {
            job,
            result,
            attempt,
        } = decided;
        let ctx = &self.ctx;
        let written = Answer::coming(finish(&ctx.journal, &job, &result, &attempt));
        let (pauses, asked_at) = (ctx.outages.pauses(), Instant::now());
        let claim = (want > 0 && !*self.stop.borrow()).then(|| {
            let mut held = self.running.held();
            // This slot's transfer is over: it is no longer busy with the vendor.
            if let Some(count) = held.in_flight.get_mut(&job.vendor) {
                *count = count.saturating_sub(1);
            }
            let names = ctx.vendors.names();
            let claim_for = ClaimFor::Queue {
                behind: behind.clone(),
            };
            Answer::coming(
                ctx.journal
                    .submit(move |journal| claim_due(journal, &names, &held, want, &claim_for)),
            )
        });
        Recording {
            job,
            result,
            attempt,
            written,
            claim,
            want,
            behind,
            pauses,
            asked_at,
        }
    }

    /// Waits for an outcome's commit and the jobs claimed with it, which are kept when
    /// `keep_claims`. A journal that cannot take the outcome (locked, full) is asked again with
    /// growing waits: an outcome is never dropped, or the job would sit `running` until its lease
    /// ran out and be sent again. Meanwhile this slot takes no more work, so a journal that stays
    /// unwritable stops the daemon from taking more. The jobs claimed go back to the queue
    /// instead when the outcome could not be recorded at the first try or the daemon is stopping.
    pub(super) async fn settle(&self, recording: Recording, keep_claims: bool) -> Settled {
        let Recording {
            job,
            result,
            attempt,
            written,
            claim,
            pauses,
            asked_at,
            ..
        } = recording;
        let ctx = &self.ctx;
        let mut written = written.get().await;
        let mut next = match claim {
            Some(claim) => claim
                .get()
                .await
                .map(|c| claimed(c, pauses, asked_at))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // A claim answered only after half its lease (this slot was waiting on an earlier
        // outcome all that while) is left alone: neither held nor released, since the queue may
        // have given it out again by now; its lease brings it back otherwise.
        next.retain(|claim| {
            let fresh = !claim.lease_running_out();
            if !fresh {
                warn!(
                    path = %path_text::shown(&claim.job.path), job = claim.job.id,
                    "a job claimed behind a stuck outcome waited past half its lease: left to the queue"
                );
            }
            fresh
        });
        // The claim passed over this slot's own job, held until its outcome is committed below.
        for claim in &next {
            self.running.hold(self.id, &claim.job);
        }
        let first_try = written.is_ok();
        if !first_try || !keep_claims || *self.stop.borrow() {
            for claim in std::mem::take(&mut next) {
                self.put_back(&claim).await;
            }
        }
        let mut backoff = JournalBackoff::default();
        let outcome = loop {
            match written {
                Ok(outcome) => break outcome,
                Err(e) => {
                    crate::diagnose::journal_write_failed("record the outcome", &job.path, &e);
                    backoff.wait().await;
                    written = finish(&ctx.journal, &job, &result, &attempt).await;
                }
            }
        };
        self.running.let_go(self.id, job.id);
        match (outcome, &result) {
            // An unconfirmed upload fails at once, for its own reason (what to check, what to run).
            (Finished::GaveUp, JobResult::Fail(reason)) => error!(
                path = %path_text::shown(&job.path), vendor = %job.vendor, outcome = "failed", job = job.id,
                "failed: {reason}"
            ),
            (Finished::GaveUp, _) => error!(
                path = %path_text::shown(&job.path), vendor = %job.vendor, outcome = "failed", job = job.id,
                "failed: transient errors for longer than give_up_after; `imgsyncd retry --failed` queues it again"
            ),
            (Finished::Stale, _) => info!(
                path = %path_text::shown(&job.path),
                "the file moved on while this job ran: its result is recorded for the remote copy only"
            ),
            _ => {}
        }
        ctx.wake.notify_one();
        match first_try {
            true => Settled::Recorded(next),
            false => Settled::Retried,
        }
    }
}

/// The waits between tries of a write the journal refused (locked by another process, disk
/// full): 250 ms, doubling up to 30 s, so a journal back soon is used soon and one that stays
/// unwritable is not hammered.
struct JournalBackoff(Duration);

impl Default for JournalBackoff {
    fn default() -> Self {
        JournalBackoff(Duration::from_millis(250))
    }
}

impl JournalBackoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
    }
}

/// How a slot's outcome was settled.
pub(super) enum Settled {
    /// Recorded at the first try, with the jobs claimed along with it.
    Recorded(Vec<Claim>),
    /// Recorded only after the journal failed; nothing claimed is kept.
    Retried,
}

/// Submits a job's outcome to the journal.
pub(super) fn finish(
    journal: &JournalHandle,
    job: &Job,
    result: &JobResult,
    attempt: &Option<Attempt>,
) -> impl Future<Output = crate::journal::Result<Finished>> + Send + use<> {
    let (j, r, a) = (job.clone(), result.clone(), attempt.clone());
    journal.submit(move |journal| journal.finish(&j, &r, a.as_ref()))
}
