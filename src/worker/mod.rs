//! Workers: claim a job, carry it out through the vendor's adapter, record the outcome. The outcome's
//! class alone decides what happens next: done, retry with backoff, refresh the token, reject the
//! file, or pause the vendor with its jobs kept.

mod claim;
mod holdings;
mod outages;
mod process;
mod slot;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::adapters::VendorSet;
use crate::journal::{JournalHandle, now_ms};
use crate::throttle::LogThrottle;

use self::claim::claim;
use self::holdings::Holdings;
use self::slot::Slot;

pub use outages::Outages;

/// In-flight transfers get this long to finish at shutdown before they are released to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        let jobs = ctx
            .heartbeat
            .answering(claim(&ctx, running.held(), slots.len()))
            .await;
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
            let due = ctx.heartbeat.answering(next_due(&ctx)).await.map(|due| {
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
