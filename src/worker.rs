//! Workers: claim a job, carry it out through the vendor's adapter, record the outcome. The outcome's
//! class alone decides what happens next: done, retry with backoff, refresh the token, reject the
//! file, or pause the vendor with its jobs kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::adapters::{Adapter, Call, Outcome, UploadRequest, VendorSet};
use crate::image::ImageFormat;
use crate::journal::{
    Attempt, Claimed, Finished, Job, JobOp, JobResult, JournalHandle, Remote, now_ms, path_text,
    reference_field,
};
use crate::throttle::{LogThrottle, Verdict};
use crate::watch::examine::{ReadError, read_regular, sha256_hex};

/// A claimed job stays ours this long. It may wait behind its slot's transfers before its own runs,
/// and each is bounded by a few request timeouts (two minutes each), so this is well past both:
/// a job taken again while a slot still holds it would be sent twice. The lease only gives back
/// jobs this daemon lost track of; a start requeues a crashed daemon's at once. A job a slot
/// holds is never given out again by a claim, lease or not ([`Holdings`]); a claim answered only
/// after half the lease is not taken up.
const LEASE_MS: i64 = 30 * 60 * 1000;
/// In-flight transfers get this long to finish at shutdown before they are released to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const FIRST_PROBE: Duration = Duration::from_secs(30);
const MAX_PROBE: Duration = Duration::from_secs(30 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// A throttle for retry lines: ten a minute for each vendor and error.
pub fn retry_log_throttle() -> Arc<LogThrottle> {
    Arc::new(LogThrottle::new(Duration::from_secs(60), 10))
}

#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub journal: JournalHandle,
    pub vendors: Arc<VendorSet>,
    pub wake: Arc<Notify>,
    pub give_up_after: Duration,
    /// Retry lines per vendor and error, so an outage with a large backlog cannot flood the log.
    pub retry_log: Arc<LogThrottle>,
    pub outages: Arc<Outages>,
    /// Answered from every wait of the pool's loop, so the systemd watchdog knows it turns.
    pub heartbeat: Arc<crate::service::Heartbeat>,
}

/// After this many calls in a row fail for want of an answer (network, timeout, 5xx), the vendor
/// is taken as down: its jobs wait behind one probe instead of each being tried in turn.
const OUTAGE_AFTER: u32 = 5;

/// Consecutive failed calls per vendor: the circuit breaker's memory; and when each vendor was
/// last paused, so a job claimed before its vendor's pause is put back rather than sent.
#[derive(Debug, Default)]
pub struct Outages {
    failures: Mutex<HashMap<String, u32>>,
    /// Pauses made so far, and the count when each vendor was last paused.
    pauses: Mutex<(u64, HashMap<String, u64>)>,
}

impl Outages {
    /// Counts a call's outcome; returns how many calls in a row have now failed.
    fn record(&self, vendor: &str, failed: bool) -> u32 {
        let mut counts = lock(&self.failures);
        if failed {
            let count = counts.entry(vendor.to_string()).or_default();
            *count += 1;
            *count
        } else {
            counts.remove(vendor);
            0
        }
    }

    /// Pauses made so far: taken before a claim, to ask [`Outages::paused_since`] before its job runs.
    fn pauses(&self) -> u64 {
        lock(&self.pauses).0
    }

    /// Counts a pause of `vendor`, once it is recorded in the journal: a claim asked for after
    /// this sees the pause in the journal; one asked for before it is caught by `paused_since`.
    fn paused(&self, vendor: &str) {
        let mut pauses = lock(&self.pauses);
        pauses.0 += 1;
        let count = pauses.0;
        pauses.1.insert(vendor.to_string(), count);
    }

    /// Whether `vendor` was paused after the count was `pauses`.
    fn paused_since(&self, vendor: &str, pauses: u64) -> bool {
        lock(&self.pauses)
            .1
            .get(vendor)
            .is_some_and(|at| *at > pauses)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Run until stopped, waiting for work.
    Daemon,
    /// Stop when no job is due (the `scan` verb).
    Drain,
}

/// Runs `workers` concurrent transfers until `stop` turns true (or, draining, the queue is empty).
///
/// A slot that ends a job claims its next one itself, along with recording the outcome; the pool
/// claims for slots that found nothing. Between jobs the pool sleeps until the next job falls due
/// or it is woken (a file queued, a transfer ended): an idle daemon does not poll the journal.
/// Each claim takes the vendor with the fewest transfers in flight that has a job due, so a slow
/// or rate-limited vendor's backlog never holds up another vendor's files.
pub async fn run_pool(
    ctx: WorkerContext,
    workers: usize,
    mode: PoolMode,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(workers.max(1)));
    let running: Arc<Holdings> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut slots_started: u64 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        if ctx.heartbeat.is_wedged() {
            std::future::pending::<()>().await; // the test hook's wedge (service::test_wedge)
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = ctx.heartbeat.pinged() => { ctx.heartbeat.answer(); continue }
            _ = stop.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        // Every free slot is filled by one claim: one journal write for the lot.
        let mut slots = vec![permit];
        while let Ok(more) = Arc::clone(&permits).try_acquire_owned() {
            slots.push(more);
        }
        let jobs = claim(&ctx, running.held(), slots.len()).await;
        let claimed_any = !jobs.is_empty();
        for (claim, permit) in jobs.into_iter().zip(slots.drain(..)) {
            slots_started += 1;
            running.hold(slots_started, &claim.job);
            let slot = Slot {
                id: slots_started,
                ctx: ctx.clone(),
                running: Arc::clone(&running),
                stop: stop.clone(),
            };
            tasks.spawn(async move {
                slot.run(claim).await;
                drop(permit);
            });
        }
        drop(slots);
        if !claimed_any {
            if mode == PoolMode::Drain && tasks.is_empty() {
                break;
            }
            // A job already due that no claim took is held by a slot (its lease ran out while its
            // outcome waited for the journal): looked at again in a moment, not in a loop.
            let due = next_due(&ctx).await.map(|due| {
                let now = now_ms();
                if due <= now {
                    now + HELD_RECHECK_MS
                } else {
                    due
                }
            });
            tokio::select! {
                _ = ctx.wake.notified() => {}
                _ = sleep_until_epoch_ms(due.unwrap_or(i64::MAX)), if due.is_some() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = ctx.heartbeat.pinged() => ctx.heartbeat.answer(),
                _ = stop.changed() => break,
            }
        }
    }
    finish_in_flight(&ctx, tasks, running).await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How soon an idle pool looks at the queue again when a job is due but held by a slot.
const HELD_RECHECK_MS: i64 = 250;

/// Which slot holds which job: claimed, in transfer, or with its outcome not yet committed. No
/// claim gives out a job held here, even one whose lease ran out (a journal unwritable for that
/// long), so it is never sent by two slots. A slot's jobs leave with it however it ends, a panic
/// too: a job held by a slot that is gone would never be given out again.
#[derive(Debug, Default)]
struct Holdings(Mutex<HashMap<i64, (u64, String)>>);

impl Holdings {
    fn hold(&self, slot: u64, job: &Job) {
        lock(&self.0).insert(job.id, (slot, job.vendor.clone()));
    }

    /// Lets go of job `id`, if `slot` is the one holding it.
    fn let_go(&self, slot: u64, id: i64) {
        let mut held = lock(&self.0);
        if held.get(&id).is_some_and(|(holder, _)| *holder == slot) {
            held.remove(&id);
        }
    }

    fn let_go_all(&self, slot: u64) {
        lock(&self.0).retain(|_, (holder, _)| *holder != slot);
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// What is held now, for a claim.
    fn held(&self) -> Held {
        let mut held = Held::default();
        for (id, (_, vendor)) in lock(&self.0).iter() {
            *held.in_flight.entry(vendor.clone()).or_default() += 1;
            held.jobs.insert(*id);
        }
        held
    }
}

/// What this daemon's slots hold when a claim is asked for.
#[derive(Debug, Default)]
struct Held {
    /// Per vendor: a claim takes the least busy vendor first.
    in_flight: HashMap<String, usize>,
    /// Never given out again, even with their lease run out: a slot still holds each.
    jobs: HashSet<i64>,
}

async fn next_due(ctx: &WorkerContext) -> Option<i64> {
    let names = ctx.vendors.names();
    match ctx.journal.call(move |j| j.next_due(&names)).await {
        Ok(due) => due,
        Err(e) => {
            error!("cannot read the queue: {e}; looking again in 5s");
            Some(now_ms() + 5_000)
        }
    }
}

async fn sleep_until_epoch_ms(at: i64) {
    let wait = (at - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

async fn finish_in_flight(ctx: &WorkerContext, mut tasks: JoinSet<()>, running: Arc<Holdings>) {
    if !tasks.is_empty() {
        info!(
            in_flight = tasks.len(),
            "waiting up to 10s for in-flight transfers"
        );
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            warn!(
                held = running.len(),
                "transfers still running after 10s: released to the queue"
            );
        }
    }
    // No slot is left: every job still `running` goes back, so `status` after a stop shows none.
    // Those are the transfers aborted above, the jobs slots had claimed ahead, and any whose
    // put-back failed while stopping (the journal's lock makes them all ours). Queued behind the
    // outcomes already submitted, so a job whose outcome is on its way is not put back; one whose
    // outcome could not be written is, and is sent again, as after a crash.
    if let Err(e) = ctx.journal.write(|j| j.requeue_running()).await {
        error!("cannot put the jobs still running back in the queue: {e}; the next start does");
    }
}

/// Up to `want` due jobs, in one journal write, each of the least busy vendor that has one due and
/// is not paused (or whose probe is due). A job of a paused vendor is its probe: the next probe is
/// pushed back so only one goes at a time. Jobs the journal settles by itself (the same bytes
/// already uploaded, a file that moved on) are logged and skipped.
async fn claim(ctx: &WorkerContext, held: Held, want: usize) -> Vec<Claim> {
    let names = ctx.vendors.names();
    let (pauses, asked_at) = (ctx.outages.pauses(), Instant::now());
    let result = ctx
        .journal
        .write(move |j| claim_due(j, names, held, want, ClaimFor::Slots))
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
type Claims = (Vec<(Job, Option<Duration>)>, Vec<Claimed>);

/// Whom claimed jobs are for.
#[derive(Debug, Clone)]
enum ClaimFor {
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
fn claim_due(
    j: &mut crate::journal::Journal,
    names: Vec<String>,
    held: Held,
    want: usize,
    claim_for: ClaimFor,
) -> crate::journal::Result<Claims> {
    let (mut jobs, mut settled) = (Vec::new(), Vec::new());
    let Held {
        mut in_flight,
        jobs: held,
    } = held;
    let (queue, mut behind) = match claim_for {
        ClaimFor::Slots => (false, None),
        ClaimFor::Queue { behind } => (true, behind),
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
                let mut names = names.clone();
                names.sort_by_key(|v| in_flight.get(v).copied().unwrap_or(0));
                names
            }
        };
        let step = match claim_one(j, names, &held) {
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
                    // It cuts in: first in line, and the last claimed for this slot now.
                    jobs.insert(0, (job, probe));
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
struct Claim {
    job: Job,
    /// The probe interval, when the job is a paused vendor's probe.
    probe: Option<Duration>,
    /// [`Outages::pauses`] when the claim was asked for: a pause since then puts the job back.
    pauses: u64,
    /// When the claim was asked for, so before its lease began.
    asked_at: Instant,
}

impl Claim {
    /// Whether the lease may be running out: a claim whose answer is read this late (its slot
    /// stuck on an earlier outcome while the journal stayed unwritable) was not held meanwhile,
    /// and the queue may have given its job out again, so it is not taken up.
    fn lease_running_out(&self) -> bool {
        self.asked_at.elapsed() > Duration::from_millis(LEASE_MS as u64 / 2)
    }
}

/// How many claimed jobs a slot keeps waiting behind the one it runs. A slot's outcomes are
/// written as soon as they are known and it does not wait for their commits, so up to `AHEAD + 1`
/// of them may be on their way at once: the journal's groups grow with the load.
const AHEAD: usize = 2;

/// A slot's outcome, submitted to the journal, with the claim submitted right behind it.
struct Recording {
    job: Job,
    result: JobResult,
    attempt: Option<Attempt>,
    written: Answer<crate::journal::Result<Finished>>,
    claim: Option<Answer<crate::journal::Result<Claims>>>,
    /// How many jobs the claim asked for.
    want: usize,
    /// The vendor the claim was made behind: a job of another vendor cut in.
    behind: Option<String>,
    /// [`Outages::pauses`] when the claim was asked for.
    pauses: u64,
    asked_at: Instant,
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
}

/// A journal write's answer: still on its way, or already in.
enum Answer<T> {
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

    async fn get(self) -> T {
        match self {
            Answer::Coming(future) => future.await,
            Answer::In(answer) => answer,
        }
    }
}

/// A worker's slot: runs one transfer at a time and claims its next jobs itself.
struct Slot {
    /// Which slot this is, in [`Holdings`].
    id: u64,
    ctx: WorkerContext,
    running: Arc<Holdings>,
    stop: watch::Receiver<bool>,
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
    async fn run(&self, first: Claim) {
        let mut ahead = VecDeque::from([first]);
        let mut recordings: VecDeque<Recording> = VecDeque::new();
        loop {
            // An outcome committed with a claim that brought a job of a vendor no slot serves is
            // settled before the next transfer, so that job runs next ([`queue_up`]). Others are
            // settled when the line runs dry: settling each as soon as it was in cost the
            // 10 000-file drain 20 % more CPU and time (measured; the cause not pinned down).
            while recordings
                .front_mut()
                .is_some_and(Recording::brought_cut_in)
            {
                let recording = recordings.pop_front().expect("looked at just now");
                self.settle_into(recording, &mut ahead, &mut recordings)
                    .await;
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
            let want = (AHEAD + 1).saturating_sub(ahead.len() + asked);
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
    /// `running` for the rest of its 30-minute lease once the journal is back; unless the daemon
    /// is stopping (its next start requeues the job). The job is held until then, so no claim
    /// gives it out meanwhile.
    async fn put_back(&self, claim: &Claim) {
        let id = claim.job.id;
        let mut backoff = JournalBackoff::default();
        while let Err(e) = self.ctx.journal.write(move |j| j.release(&[id])).await {
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

/// Puts a slot's newly claimed jobs in line. A job of another vendor than the one the claim was
/// made `behind` was claimed because no slot served that vendor ([`claim_due`]): it runs first,
/// so it waits for no other vendor's transfers. The rest join the back, in order.
fn queue_up(ahead: &mut VecDeque<Claim>, next: Vec<Claim>, behind: Option<&str>) {
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
fn claim_one(
    j: &mut crate::journal::Journal,
    names: Vec<String>,
    held: &HashSet<i64>,
) -> crate::journal::Result<Option<(Claimed, Option<Duration>)>> {
    let now = now_ms();
    let pauses = j.pauses()?;
    let claimable: Vec<String> = names
        .into_iter()
        .filter(|v| {
            pauses
                .iter()
                .all(|p| &p.vendor != v || p.next_probe_at <= now)
        })
        .collect();
    let Some(claimed) = j.claim_except(&claimable, LEASE_MS, held)? else {
        return Ok(None);
    };
    let Claimed::Job(job) = &claimed else {
        return Ok(Some((claimed, None)));
    };
    let pause = pauses.iter().find(|p| p.vendor == job.vendor);
    if let Some(pause) = pause {
        j.pause_vendor(&job.vendor, &pause.reason, pause.probe_interval_ms)?;
    }
    let probe = pause.map(|p| Duration::from_millis(p.probe_interval_ms.max(0) as u64));
    Ok(Some((claimed, probe)))
}

fn log_settled(settled: &Claimed) {
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
        Claimed::Job(_) => {}
    }
}

/// What came of a job, to be recorded.
struct Decided {
    job: Job,
    result: JobResult,
    attempt: Option<Attempt>,
}

/// Carries out one job and decides what came of it.
async fn process(ctx: &WorkerContext, job: Job, probe: Option<Duration>) -> Decided {
    let Some(adapter) = ctx.vendors.get(&job.vendor) else {
        return Decided {
            job,
            result: JobResult::Release,
            attempt: None,
        };
    };
    let started = Instant::now();
    let call = match job.op {
        JobOp::Upload => match upload(ctx, &adapter, &job).await {
            Ok(call) => call,
            Err(early) => {
                return Decided {
                    job,
                    result: early.result,
                    attempt: Some(early.attempt),
                };
            }
        },
        JobOp::Delete | JobOp::DeleteOld => {
            let target = job.remote_ref.clone().unwrap_or_default();
            with_reauth(job.op, || adapter.delete(&target))
                .await
                .map(|()| None)
        }
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    let mut attempt = Attempt {
        outcome: String::new(),
        http_status: call.http_status,
        vendor_code: call.vendor_code.clone(),
        message: None,
        duration_ms,
    };
    let shown = path_text::shown(&job.path);
    let vendor = job.vendor.as_str();
    let op = job.op.as_str();
    let (id, attempt_no) = (job.id, job.attempts + 1);
    let outcome = circuit_breaker(ctx, vendor, probe, &call);
    // A probe answered by anything but a refusal of us means the vendor takes our calls again.
    if probe.is_some() && !matches!(outcome, Outcome::VendorDown { .. }) {
        resume(ctx, vendor).await;
    }
    let result = match outcome {
        Outcome::Done(remote) => {
            match (&remote, job.op) {
                (Some(remote), _) => {
                    attempt.outcome = "uploaded".into();
                    attempt.message = Some(remote.reference.clone());
                    info!(
                        path = %shown,
                        vendor = %vendor,
                        outcome = "uploaded", job = id, attempt = attempt_no,
                        remote = %remote.reference,
                        "uploaded: {} {}",
                        reference_field(adapter.kind().as_str()),
                        remote.reference
                    );
                }
                (None, op) => {
                    attempt.outcome = "deleted".into();
                    let what = if op == JobOp::DeleteOld {
                        "deleted the superseded remote copy"
                    } else {
                        "deleted at the vendor"
                    };
                    info!(
                        path = %shown,
                        vendor = %vendor,
                        outcome = "deleted", job = id, attempt = attempt_no,
                        remote = job.remote_ref.as_deref().unwrap_or(""),
                        "{what}"
                    );
                }
            }
            match remote {
                Some(remote) => JobResult::Uploaded(remote),
                None => JobResult::Deleted,
            }
        }
        Outcome::Retry { after, reason } => {
            let wait = backoff(job.attempts, after);
            attempt.outcome = "retry".into();
            attempt.message = Some(reason.clone());
            if let Verdict::Log { held_back } = ctx
                .retry_log
                .check(&format!("{vendor}: {reason}"), Instant::now())
            {
                let more = if held_back > 0 {
                    format!(" ({held_back} more retries with this error were not logged)")
                } else {
                    String::new()
                };
                warn!(
                    path = %shown,
                    vendor = %vendor,
                    op = %op,
                    outcome = "retry", job = id, attempt = attempt_no,
                    "{reason}; retrying in {}{more}",
                    humantime::format_duration(round(wait))
                );
            }
            JobResult::Retry {
                not_before: now_ms() + wait.as_millis() as i64,
                reason,
                give_up_after_ms: ctx.give_up_after.as_millis() as i64,
            }
        }
        Outcome::Reauth { reason } => {
            attempt.outcome = "retry".into();
            attempt.message = Some(format!("{reason} (a fresh token was refused too)"));
            warn!(
                path = %shown, vendor = %vendor, op = %op,
                outcome = "retry", job = id, attempt = attempt_no,
                "{reason}: a fresh token was refused too; retrying later"
            );
            JobResult::Retry {
                not_before: now_ms() + backoff(job.attempts, None).as_millis() as i64,
                reason,
                give_up_after_ms: ctx.give_up_after.as_millis() as i64,
            }
        }
        Outcome::Rejected { reason } => {
            attempt.outcome = "rejected".into();
            attempt.message = Some(reason.clone());
            if let Verdict::Log { .. } = crate::logging::storms()
                .check(&crate::logging::rejections_of(vendor), Instant::now())
            {
                error!(
                    path = %shown, vendor = %vendor, op = %op,
                    outcome = "rejected", job = id, attempt = attempt_no,
                    "rejected by the vendor: {reason}"
                );
            }
            JobResult::Rejected(reason)
        }
        Outcome::VendorDown { reason } => {
            attempt.outcome = "vendor_paused".into();
            attempt.message = Some(reason.clone());
            pause(ctx, vendor, &shown, probe, &reason).await;
            JobResult::Release
        }
        Outcome::Unconfirmed { reason } => {
            // The file may be stored at the vendor under a name we cannot know: it waits for a
            // person rather than being sent again, and the vendor is paused so the next file
            // does not go the same way.
            attempt.outcome = "unconfirmed".into();
            attempt.message = Some(reason.clone());
            pause(ctx, vendor, &shown, probe, &reason).await;
            JobResult::Fail(format!(
                "{reason}; the vendor may hold it: check there, then `imgsyncd retry {}` to send it again",
                path_text::for_shell(&job.path)
            ))
        }
        Outcome::Throttled { after, reason } => {
            let wait = after.unwrap_or(Duration::from_secs(1));
            attempt.outcome = "throttled".into();
            attempt.message = Some(reason.clone());
            if let Verdict::Log { .. } = ctx
                .retry_log
                .check(&format!("{vendor}: throttled"), Instant::now())
            {
                warn!(
                    vendor = %vendor,
                    outcome = "throttled", job = id,
                    "{reason}; waiting {} (not counted as a failure)",
                    humantime::format_duration(round(wait))
                );
            }
            JobResult::Defer {
                not_before: now_ms() + wait.as_millis() as i64,
                reason: format!("{reason}; waiting, not counted as a failure"),
            }
        }
    };
    crate::metrics::job_done(vendor, job.op, &attempt.outcome);
    Decided {
        job,
        result,
        attempt: Some(attempt),
    }
}

/// Pauses the vendor: its jobs stay queued behind one probe, tried at growing intervals.
async fn pause(
    ctx: &WorkerContext,
    vendor: &str,
    path: &str,
    probe: Option<Duration>,
    reason: &str,
) {
    let interval = probe.map_or(FIRST_PROBE, |d| (d * 2).min(MAX_PROBE));
    if let Verdict::Log { .. } =
        crate::logging::storms().check(&crate::logging::pauses_of(vendor), Instant::now())
    {
        error!(
            vendor = %vendor,
            path = %path,
            outcome = "vendor_paused",
            "vendor {vendor} paused: {reason}; its jobs stay queued behind one probe, the next in {} (or at once after a reload)",
            humantime::format_duration(interval)
        );
    }
    let (v, r) = (vendor.to_string(), reason.to_string());
    if let Err(e) = ctx
        .journal
        .call(move |j| j.pause_vendor(&v, &r, interval.as_millis() as i64))
        .await
    {
        error!("cannot record the pause: {e}");
    }
    ctx.outages.paused(vendor);
}

/// A vendor that has not answered several calls in a row (or whose probe went unanswered) is
/// down: the call's retry becomes a pause, so the backlog waits behind one probe with growing
/// intervals instead of being tried job by job.
fn circuit_breaker<T>(
    ctx: &WorkerContext,
    vendor: &str,
    probe: Option<Duration>,
    call: &Call<T>,
) -> Outcome<T>
where
    T: Clone,
{
    let unanswered = match &call.outcome {
        Outcome::Retry { reason, .. } if call.is_outage() => Some(reason.clone()),
        _ => None,
    };
    let failures = ctx.outages.record(vendor, unanswered.is_some());
    match unanswered {
        Some(reason) if probe.is_some() || failures >= OUTAGE_AFTER => Outcome::VendorDown {
            reason: format!(
                "{vendor} does not answer ({failures} calls in a row failed; the last: {reason})"
            ),
        },
        _ => call.outcome.clone(),
    }
}

/// An upload that ended before the vendor was called.
struct Early {
    result: JobResult,
    attempt: Attempt,
}

/// Reads the file, checks it is still the content that was queued, and sends it.
async fn upload(
    ctx: &WorkerContext,
    adapter: &Adapter,
    job: &Job,
) -> Result<Call<Option<Remote>>, Early> {
    let sha256 = job.sha256.clone().unwrap_or_default();
    // The watcher settles whatever happened to the file; the journal drops this job when it has.
    let wait_for_watcher = |reason: String| Early {
        result: JobResult::Retry {
            not_before: now_ms() + 5_000,
            reason: reason.clone(),
            give_up_after_ms: ctx.give_up_after.as_millis() as i64,
        },
        attempt: Attempt {
            outcome: "deferred".into(),
            message: Some(reason),
            ..Attempt::default()
        },
    };
    let path = path_text::to_path(&job.path).into_owned();
    let max_bytes = adapter.limits().max_bytes;
    let file = path.clone();
    let read = tokio::task::spawn_blocking(move || read_regular(&file, max_bytes))
        .await
        .unwrap_or_else(|e| Err(ReadError::Io(std::io::Error::other(e.to_string()))));
    let bytes = match read {
        Ok((bytes, _)) => bytes,
        Err(e) => return Err(wait_for_watcher(format!("cannot read the file: {e}"))),
    };
    if sha256_hex(&bytes) != sha256 {
        return Err(wait_for_watcher(
            "the file changed since it was queued; waiting for it to settle".into(),
        ));
    }
    let format = job
        .format
        .as_deref()
        .and_then(ImageFormat::from_mime_subtype)
        .ok_or_else(|| wait_for_watcher("the journal has no format for this file".into()))?;
    let request = UploadRequest {
        path: &path,
        bytes: &bytes,
        format,
    };
    Ok(with_reauth(JobOp::Upload, || adapter.upload(&request))
        .await
        .map(Some))
}

/// A refused token is dropped by the adapter; the call is then made once more with a fresh one.
async fn with_reauth<T, F, Fut>(op: JobOp, mut call: F) -> Call<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Call<T>>,
{
    let first = guarded(op, call()).await;
    match first.outcome {
        Outcome::Reauth { .. } => guarded(op, call()).await,
        _ => first,
    }
}

/// Runs one adapter call. A panic inside it (a bug meeting an answer nobody foresaw) ends that
/// call, not the slot with every job it holds: it is answered like an answer that cannot be
/// read. For an upload that means the vendor may hold the file, so it is not sent again by
/// itself (the file fails with that advice, the vendor waits behind a probe); a delete is retried.
async fn guarded<T>(op: JobOp, call: impl Future<Output = Call<T>>) -> Call<T> {
    let panic = match CatchUnwind(Box::pin(call)).await {
        Ok(call) => return call,
        Err(panic) => panic,
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    let reason = format!(
        "imgsyncd failed inside its own code during this call (a bug: please report this line): {}",
        message.chars().take(300).collect::<String>()
    );
    let outcome = match op {
        JobOp::Upload => Outcome::Unconfirmed {
            reason: format!("{reason}; whether the vendor stored the file is not known"),
        },
        JobOp::Delete | JobOp::DeleteOld => Outcome::Retry {
            after: None,
            reason,
        },
    };
    Call::new(outcome, None, None)
}

/// A future whose panic is caught and returned, as `std::panic::catch_unwind` does for a call.
struct CatchUnwind<F: Future>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

async fn resume(ctx: &WorkerContext, vendor: &str) {
    let v = vendor.to_string();
    let resumed = ctx
        .journal
        .call(move |j| -> crate::journal::Result<bool> {
            let was_paused = j.resume_vendor(&v)?;
            if was_paused {
                j.restart_outage_clock(&v)?;
            }
            Ok(was_paused)
        })
        .await;
    if let Ok(true) = resumed {
        info!(vendor, "vendor {vendor} answers again: resumed");
        ctx.wake.notify_one();
    }
}

impl Slot {
    /// Submits the outcome to the journal, and a claim of up to `want` next jobs right behind it
    /// so both go in one commit; behind a job of vendor `behind`, only that vendor's
    /// ([`ClaimFor::Queue`]). [`Slot::settle`] waits for them.
    ///
    /// The job stays in `running` until its outcome is committed ([`Slot::settle`]): until then
    /// no claim gives it out again, even one that finds its lease run out.
    fn record(&self, decided: Decided, want: usize, behind: Option<String>) -> Recording {
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
            let behind = behind.clone();
            Answer::coming(ctx.journal.submit(move |journal| {
                claim_due(journal, names, held, want, ClaimFor::Queue { behind })
            }))
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
    async fn settle(&self, recording: Recording, keep_claims: bool) -> Settled {
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

/// How a slot's outcome was settled.
enum Settled {
    /// Recorded at the first try, with the jobs claimed along with it.
    Recorded(Vec<Claim>),
    /// Recorded only after the journal failed; nothing claimed is kept.
    Retried,
}

/// Submits a job's outcome to the journal.
fn finish(
    journal: &JournalHandle,
    job: &Job,
    result: &JobResult,
    attempt: &Option<Attempt>,
) -> impl Future<Output = crate::journal::Result<Finished>> + Send + use<> {
    let (j, r, a) = (job.clone(), result.clone(), attempt.clone());
    journal.submit(move |journal| journal.finish(&j, &r, a.as_ref()))
}

/// The jobs a claim found, claimed when the pause count was `pauses`; what the journal settled by
/// itself is logged.
fn claimed((jobs, settled): Claims, pauses: u64, asked_at: Instant) -> Vec<Claim> {
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

/// Exponential backoff with jitter from 2 s to 15 min; never sooner than the vendor asked.
pub fn backoff(attempts: u32, hint: Option<Duration>) -> Duration {
    let exponential = Duration::from_secs(2)
        .saturating_mul(1u32 << attempts.min(10))
        .min(MAX_BACKOFF);
    let jittered = exponential.mul_f64(0.5 + fastrand::f64() * 0.5);
    hint.map_or(jittered, |h| h.max(jittered))
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempts in 0..20 {
            let d = backoff(attempts, None);
            assert!(d <= MAX_BACKOFF);
            assert!(d >= Duration::from_secs(1));
        }
        assert!(backoff(5, None) >= Duration::from_secs(32));
    }

    /// A journal with `n` files queued for each of vendors "a" and "b", each file its own bytes.
    fn queued(n: usize) -> (tempfile::TempDir, crate::journal::Journal) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = crate::journal::Journal::open(&dir.path().join("j.sqlite3")).unwrap();
        for vendor in ["a", "b"] {
            for i in 0..n {
                observe(&mut journal, vendor, i, &format!("{vendor}{i:063}"));
            }
        }
        (dir, journal)
    }

    /// File `i` of `vendor`'s watch, with the bytes whose hash is `sha`: queued for upload.
    fn observe(journal: &mut crate::journal::Journal, vendor: &str, i: usize, sha: &str) {
        let path = format!("/w/{vendor}{i}.png");
        let obs = crate::journal::Observation {
            path: &path,
            watch_root: "/w",
            vendor,
            kind: "kingdee",
            stamp: crate::journal::FileStamp {
                size: 100,
                mtime_ns: 1,
                ctime_ns: 1,
                inode: i as u64,
                dev: 1,
            },
            sha256: sha,
            format: "png",
            width: 10,
            height: 10,
            delete_unused: true,
            reuse_copies: true,
        };
        journal.observe(&obs, &|_| true).unwrap();
    }

    fn vendors_of(claims: &Claims) -> Vec<String> {
        claims.0.iter().map(|(job, _)| job.vendor.clone()).collect()
    }

    fn busy(counts: &[(&str, usize)]) -> Held {
        Held {
            in_flight: counts.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            ..Held::default()
        }
    }

    fn behind(vendor: &str) -> ClaimFor {
        ClaimFor::Queue {
            behind: Some(vendor.into()),
        }
    }

    #[test]
    fn a_slots_queue_holds_only_jobs_of_the_vendor_it_waits_behind() {
        let (_dir, mut j) = queued(3);
        let names = vec!["a".to_string(), "b".to_string()];
        // Behind a transfer of "b": only "b" ("a" is served by another slot).
        let a_served = busy(&[("a", 1), ("b", 1)]);
        let claims = claim_due(&mut j, names.clone(), a_served, 2, behind("b")).unwrap();
        assert_eq!(vendors_of(&claims), ["b", "b"]);
        // Behind nothing: the least busy vendor first, then that vendor's jobs only.
        let busy_a = busy(&[("a", 3)]);
        let fresh = ClaimFor::Queue { behind: None };
        let claims = claim_due(&mut j, names.clone(), busy_a, 2, fresh).unwrap();
        assert_eq!(vendors_of(&claims), ["b"], "b has one job left");
        // Free slots each run their own job: the least busy vendor each time.
        let claims = claim_due(&mut j, names, Held::default(), 2, ClaimFor::Slots).unwrap();
        assert_eq!(vendors_of(&claims), ["a", "a"]);
    }

    /// Every slot on "a"'s backlog: a job of "b", which no slot serves, is not left waiting for
    /// that backlog to end. It cuts in, first in line, alone.
    #[test]
    fn a_vendor_no_slot_serves_cuts_in_at_the_next_claim_behind_another() {
        let (_dir, mut j) = queued(3);
        let names = vec!["a".to_string(), "b".to_string()];
        let every_slot_on_a = busy(&[("a", 4)]);
        let claims = claim_due(&mut j, names.clone(), every_slot_on_a, 3, behind("a")).unwrap();
        assert_eq!(vendors_of(&claims), ["b"]);

        // In the slot's line it goes before the jobs of "a" already waiting there.
        let claim = |job: Job| Claim {
            job,
            probe: None,
            pauses: 0,
            asked_at: Instant::now(),
        };
        let a_jobs = claim_due(&mut j, names, busy(&[("b", 1)]), 2, behind("a")).unwrap();
        assert_eq!(vendors_of(&a_jobs), ["a", "a"]);
        let mut ahead: VecDeque<Claim> = a_jobs.0.into_iter().map(|(job, _)| claim(job)).collect();
        let cut_in = claims.0.into_iter().map(|(job, _)| claim(job)).collect();
        queue_up(&mut ahead, cut_in, Some("a"));
        let line: Vec<&str> = ahead.iter().map(|c| c.job.vendor.as_str()).collect();
        assert_eq!(line, ["b", "a", "a"]);
        // What a claim made behind "a" brings of "a" joins the back, whatever is ahead.
        let mut ahead: VecDeque<Claim> = ahead.into_iter().take(1).collect();
        let last_a = claim_due(&mut j, vec!["a".into()], busy(&[("b", 1)]), 1, behind("a"));
        let last_a = last_a
            .unwrap()
            .0
            .into_iter()
            .map(|(job, _)| claim(job))
            .collect();
        queue_up(&mut ahead, last_a, Some("a"));
        let line: Vec<&str> = ahead.iter().map(|c| c.job.vendor.as_str()).collect();
        assert_eq!(line, ["b", "a"]);
    }

    /// A bug that panics inside an adapter call ends that call, not the slot: the upload is
    /// answered as unconfirmed (the vendor may hold the file: not sent again by itself), the
    /// delete as a retry, each with the panic's message.
    #[test]
    fn a_panic_inside_an_adapter_call_is_an_outcome_not_a_lost_slot() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let call = || async {
            // Once pending first, as a real call waiting on the network is.
            tokio::task::yield_now().await;
            let answer: &[u8] = b"{\"url\": \"http://x\"}";
            let end = answer.len() + 3;
            // A slice past the end: an answer nobody foresaw.
            let _ = answer[..end].len();
            Call::new(Outcome::Done(()), Some(200), None)
        };
        let upload = runtime.block_on(with_reauth(JobOp::Upload, call));
        match &upload.outcome {
            Outcome::Unconfirmed { reason } => {
                assert!(reason.contains("a bug: please report"), "{reason}");
                assert!(reason.contains("out of range"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let delete = runtime.block_on(with_reauth(JobOp::Delete, call));
        assert!(
            matches!(&delete.outcome, Outcome::Retry { reason, .. } if reason.contains("out of range")),
            "{:?}",
            delete.outcome
        );
    }

    /// A reload removed the vendor a slot's queue waits behind: its jobs are not claimed any
    /// more (they wait, queued, for the vendor to come back), so the slot runs dry and ends.
    #[test]
    fn a_queue_behind_a_vendor_no_longer_configured_claims_none_of_its_jobs() {
        let (_dir, mut j) = queued(2);
        let only_b = vec!["b".to_string()];
        let claims = claim_due(&mut j, only_b, busy(&[("b", 1)]), 2, behind("a")).unwrap();
        assert!(claims.0.is_empty(), "{:?}", vendors_of(&claims));
    }

    #[test]
    fn a_claim_held_past_half_its_lease_counts_as_running_out() {
        let (_dir, mut j) = queued(1);
        let job = first_job(&mut j);
        let claim = |held: Duration| Claim {
            job: job.clone(),
            probe: None,
            pauses: 0,
            asked_at: Instant::now()
                .checked_sub(held)
                .unwrap_or_else(Instant::now),
        };
        assert!(!claim(Duration::ZERO).lease_running_out());
        assert!(!claim(Duration::from_secs(14 * 60)).lease_running_out());
        if Instant::now()
            .checked_sub(Duration::from_secs(16 * 60))
            .is_some()
        {
            assert!(claim(Duration::from_secs(16 * 60)).lease_running_out());
        }
    }

    /// Claims vendor "a"'s first due job, as the pool does for a free slot.
    fn first_job(j: &mut crate::journal::Journal) -> Job {
        let names = vec!["a".to_string()];
        let (jobs, _) = claim_due(j, names, Held::default(), 1, ClaimFor::Slots).unwrap();
        jobs.into_iter().next().expect("a job is due").0
    }

    /// Vendors "a" and "b", configured (Kingdee adapters these tests never call).
    fn vendors_a_and_b() -> Arc<VendorSet> {
        let kingdee = || {
            let config = crate::adapters::kingdee::KingdeeConfig {
                client_id: "1".into(),
                client_secret: crate::config::Secret::new("s"),
                app_key: "k".into(),
                app_secret: crate::config::Secret::new("s"),
                domain: "d".into(),
                save_temp: false,
            };
            let adapter = crate::adapters::kingdee::Kingdee::new(
                "http://127.0.0.1:1",
                config,
                reqwest::Client::new(),
                None,
                None,
            );
            Arc::new(Adapter::Kingdee(adapter))
        };
        let vendors = Arc::new(VendorSet::default());
        vendors.replace([("a".into(), kingdee()), ("b".into(), kingdee())].into());
        vendors
    }

    /// A slot on `journal`, with vendors "a" and "b"; and the sender of its stop flag.
    fn slot_on(journal: crate::journal::Journal) -> (Slot, JournalHandle, watch::Sender<bool>) {
        let journal = JournalHandle::new(journal);
        let (stopping, stop) = watch::channel(false);
        let slot = Slot {
            id: 1,
            ctx: WorkerContext {
                journal: journal.clone(),
                vendors: vendors_a_and_b(),
                wake: Arc::default(),
                give_up_after: Duration::from_secs(3600),
                retry_log: retry_log_throttle(),
                outages: Arc::default(),
                heartbeat: Arc::default(),
            },
            running: Arc::default(),
            stop,
        };
        (slot, journal, stopping)
    }

    #[test]
    fn a_slots_job_is_held_until_its_outcome_is_committed() {
        let (_dir, mut j) = queued(2);
        let job = first_job(&mut j);
        let b_names = vec!["b".to_string()];
        let (b_jobs, _) = claim_due(&mut j, b_names, Held::default(), 1, ClaimFor::Slots).unwrap();
        let (slot, _journal, _stopping) = slot_on(j);
        slot.running.hold(slot.id, &job);
        // Another slot serves "b", so this one's claim is for "a" alone.
        slot.running.hold(slot.id + 1, &b_jobs[0].0);
        // Its vendor paused: the outcome puts the job back in the queue, due at once. The claim
        // submitted behind that outcome passes over it all the same: the slot still held it.
        let decided = Decided {
            job: job.clone(),
            result: JobResult::Release,
            attempt: None,
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _inside = runtime.enter();
        let recording = slot.record(decided, 2, Some("a".into()));
        assert!(
            slot.running.held().jobs.contains(&job.id),
            "held until settled"
        );
        let Settled::Recorded(next) = runtime.block_on(slot.settle(recording, true)) else {
            panic!("the outcome was recorded");
        };
        let ids: Vec<i64> = next.iter().map(|c| c.job.id).collect();
        assert_eq!(ids.len(), 1, "only the other job: {ids:?}");
        assert_ne!(ids[0], job.id);
        assert_eq!(next[0].job.vendor, "a");
        let held = slot.running.held().jobs;
        assert!(
            !held.contains(&job.id) && held.contains(&ids[0]),
            "{held:?}"
        );
        // A slot that ends, however it ends, lets go of what it held (and only that).
        let running = Arc::clone(&slot.running);
        drop(slot);
        assert_eq!(
            running.held().jobs,
            HashSet::from([b_jobs[0].0.id]),
            "the other slot's job stays held"
        );
    }

    #[test]
    fn a_job_whose_outcome_waits_for_a_locked_journal_stays_held_until_it_is_written() {
        let (dir, mut j) = queued(2);
        let job = first_job(&mut j);
        j.set_busy_timeout(Duration::from_millis(50));
        let (slot, _journal, _stopping) = slot_on(j);
        slot.running.hold(slot.id, &job);
        // Another process holds the journal for longer than a write waits for it.
        let other = rusqlite::Connection::open(dir.path().join("j.sqlite3")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let running = Arc::clone(&slot.running);
        let (id, unlock) = (
            job.id,
            std::thread::spawn(move || {
                // Long enough for a loaded machine to reach the first write meanwhile.
                std::thread::sleep(Duration::from_millis(1000));
                let meanwhile = running.held().jobs;
                std::thread::sleep(Duration::from_millis(1000));
                other.execute_batch("COMMIT").unwrap();
                meanwhile
            }),
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _inside = runtime.enter();
        let decided = Decided {
            job,
            result: JobResult::Release,
            attempt: None,
        };
        let recording = slot.record(decided, 1, Some("a".into()));
        let settled = runtime.block_on(slot.settle(recording, true));
        assert!(
            matches!(settled, Settled::Retried),
            "the first write failed"
        );
        let meanwhile = unlock.join().unwrap();
        // Held while its outcome was being retried, so no claim could give it out again.
        assert!(meanwhile.contains(&id), "{meanwhile:?}");
        assert!(slot.running.held().jobs.is_empty(), "let go once written");
    }

    #[test]
    fn a_job_put_back_while_the_journal_is_locked_is_queued_once_the_lock_is_gone() {
        let (dir, mut j) = queued(1);
        let names = vec!["a".to_string()];
        let claim = Claim {
            job: first_job(&mut j),
            probe: None,
            pauses: 0,
            asked_at: Instant::now(),
        };
        j.set_busy_timeout(Duration::from_millis(50));
        let (slot, journal, _stopping) = slot_on(j);
        slot.running.hold(slot.id, &claim.job);
        // Another process holds the journal for longer than a write waits for it.
        let other = rusqlite::Connection::open(dir.path().join("j.sqlite3")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let unlock = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            other.execute_batch("COMMIT").unwrap();
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let running = Arc::clone(&slot.running);
        let watcher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            running.held().jobs
        });
        runtime.block_on(slot.put_back(&claim));
        unlock.join().unwrap();
        let meanwhile = watcher.join().unwrap();
        assert!(
            meanwhile.contains(&claim.job.id),
            "held while not yet put back"
        );
        assert!(slot.running.held().jobs.is_empty(), "let go once put back");
        // Back in the queue, not left `running` until its lease ran out: given out again at once.
        let again = runtime.block_on(
            journal.write(move |j| claim_due(j, names, Held::default(), 1, ClaimFor::Slots)),
        );
        let (jobs, _) = again.unwrap();
        assert_eq!(jobs.len(), 1, "the job put back is due again");
        assert_eq!(jobs[0].0.id, claim.job.id);
    }

    #[test]
    fn a_job_a_slot_still_holds_is_not_given_out_again_when_its_lease_ran_out() {
        let (_dir, mut j) = queued(2);
        let names = vec!["a".to_string()];
        // A slot's job whose lease ran out while its outcome could not be written.
        let Some(Claimed::Job(stuck)) = j.claim(&names, 1).unwrap() else {
            panic!("a job is due");
        };
        std::thread::sleep(Duration::from_millis(5));
        let held = Held {
            jobs: HashSet::from([stuck.id]),
            ..Held::default()
        };
        let (jobs, _) = claim_due(&mut j, names.clone(), held, 2, ClaimFor::Slots).unwrap();
        let ids: Vec<i64> = jobs.iter().map(|(job, _)| job.id).collect();
        assert_eq!(ids.len(), 1, "the other job only: {ids:?}");
        assert_ne!(ids[0], stuck.id);
        // Held by nobody, a job whose lease ran out is given out again (a slot that panicked).
        let (_dir, mut j) = queued(1);
        let Some(Claimed::Job(lost)) = j.claim(&names, 1).unwrap() else {
            panic!("a job is due");
        };
        std::thread::sleep(Duration::from_millis(5));
        let (jobs, _) = claim_due(&mut j, names, Held::default(), 1, ClaimFor::Slots).unwrap();
        assert_eq!(jobs[0].0.id, lost.id);
    }

    /// Twins (the same bytes) wait for the upload of the first, to reuse its copy: also while
    /// that upload's lease has run out but its slot still holds it (its outcome waiting for a
    /// journal unwritable that long), or the bytes would be sent twice.
    #[test]
    fn a_twin_waits_for_a_held_upload_of_its_bytes_even_past_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = crate::journal::Journal::open(&dir.path().join("j.sqlite3")).unwrap();
        let sha = "f".repeat(64);
        observe(&mut j, "a", 0, &sha);
        observe(&mut j, "a", 1, &sha);
        let names = vec!["a".to_string()];
        let Some(Claimed::Job(first)) = j.claim(&names, 1).unwrap() else {
            panic!("a job is due");
        };
        std::thread::sleep(Duration::from_millis(5));
        let held = Held {
            jobs: HashSet::from([first.id]),
            ..Held::default()
        };
        let (jobs, _) = claim_due(&mut j, names, held, 1, ClaimFor::Slots).unwrap();
        assert!(jobs.is_empty(), "the twin was given out: {:?}", jobs[0].0);
    }

    #[test]
    fn free_slots_share_the_vendors_out() {
        let (_dir, mut j) = queued(3);
        let names = vec!["a".to_string(), "b".to_string()];
        let claims = claim_due(&mut j, names, Held::default(), 4, ClaimFor::Slots).unwrap();
        let mut vendors = vendors_of(&claims);
        vendors.sort();
        assert_eq!(vendors, ["a", "a", "b", "b"]);
    }

    #[test]
    fn backoff_honours_the_vendors_hint() {
        assert!(backoff(0, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
    }
}
