//! One job through its vendor's adapter, and what its outcome means: done, retry with backoff,
//! refresh the token, reject the file, or pause the vendor (the circuit breaker) with its jobs kept.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::adapters::{Adapter, Call, Outcome, UploadRequest};
use crate::image::ImageFormat;
use crate::journal::{Attempt, Job, JobOp, JobResult, Remote, now_ms, path_text, reference_field};
use crate::throttle::Verdict;
use crate::watch::examine::{ReadError, read_regular, sha256_hex};

use super::WorkerContext;
use super::outages::OUTAGE_AFTER;

const FIRST_PROBE: Duration = Duration::from_secs(30);

const MAX_PROBE: Duration = Duration::from_secs(30 * 60);

pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// What came of a job, to be recorded.
pub(super) struct Decided {
    pub(super) job: Job,
    pub(super) result: JobResult,
    pub(super) attempt: Option<Attempt>,
}

/// Carries out one job and decides what came of it.
pub(super) async fn process(ctx: &WorkerContext, mut job: Job, probe: Option<Duration>) -> Decided {
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
            let gate = DeleteGate::new(ctx, job.clone());
            let call = with_reauth(job.op, || adapter.delete(&target, &gate)).await;
            let (asked, answer) = gate.into_parts();
            job = asked;
            if answer == Some(false) {
                return Decided {
                    job,
                    result: JobResult::Release,
                    attempt: None,
                };
            }
            call.map(|()| None)
        }
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    let mut attempt = Attempt {
        outcome: String::new(),
        http_status: call.http_status,
        vendor_code: call.vendor_code.clone(),
        message: None,
        duration_ms,
        refused: refused(&call),
    };
    let shown = path_text::shown(&job.path);
    let vendor = job.vendor.as_str();
    let op = job.op.as_str();
    let (id, attempt_no) = (job.id, job.attempts + 1);
    let (outcome, failures) = circuit_breaker(ctx, vendor, id, probe, &call);
    // The vendor is back: the outage does not count towards this job's give_up_after either,
    // as it does not for the jobs that waited behind it (restart_outage_clock).
    let outage_over = answers_again(probe, &call, &outcome);
    if outage_over {
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
        // with_reauth turns a fresh token refused too into VendorDown; a Reauth here would be
        // the same refusal of us.
        Outcome::VendorDown { reason } | Outcome::Reauth { reason } => {
            attempt.outcome = "vendor_paused".into();
            attempt.message = Some(reason.clone());
            let next_probe = pause(ctx, &adapter, vendor, &shown, probe, &reason).await;
            match probe {
                // A probe that failed waits behind the next one, so each probe tries another
                // job: a file the vendor chokes on alone cannot keep its vendor paused.
                Some(_) => JobResult::Defer {
                    not_before: now_ms() + next_probe.as_millis() as i64 + 1,
                    reason: format!("{reason}; this file waits behind the vendor's next probe"),
                },
                None => JobResult::Release,
            }
        }
        Outcome::Unconfirmed { reason } => {
            // The file may be stored at the vendor under a name we cannot know: it waits for a
            // person rather than being sent again. An answer that cannot be read (or our own
            // failure) pauses the vendor so the next file does not go the same way; an answer
            // lost on the way counts towards the circuit breaker as any call unanswered.
            attempt.outcome = "unconfirmed".into();
            attempt.message = Some(reason.clone());
            // A probe unanswered leaves its vendor paused, its next probe later; so do several
            // calls in a row unanswered (every record timing out), as for any other call.
            if !unanswered(&call) || probe.is_some() || failures >= OUTAGE_AFTER {
                pause(ctx, &adapter, vendor, &shown, probe, &reason).await;
            }
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
    let mut job = job;
    if outage_over {
        job.first_failure_at = None;
    }
    Decided {
        job,
        result,
        attempt: Some(attempt),
    }
}

/// Whether a probe's call says its paused vendor takes our calls again: answered by anything but
/// a refusal of us. One that failed inside imgsyncd's own code says nothing about the vendor: the
/// pause stays, its next probe already set.
pub(super) fn answers_again<T>(
    probe: Option<Duration>,
    call: &Call<T>,
    outcome: &Outcome<T>,
) -> bool {
    probe.is_some()
        && !call.is_internal()
        && !unanswered(call)
        && !matches!(outcome, Outcome::VendorDown { .. })
}

/// Pauses the vendor: its jobs stay queued behind one probe, tried at growing intervals.
/// Returns how long until the next probe.
async fn pause(
    ctx: &WorkerContext,
    adapter: &Arc<Adapter>,
    vendor: &str,
    path: &str,
    probe: Option<Duration>,
    reason: &str,
) -> Duration {
    let interval = probe.map_or(FIRST_PROBE, |d| (d * 2).min(MAX_PROBE));
    match ctx.vendors.get(vendor) {
        // A call in flight across a reload that took its vendor out: no probe would ever end
        // its pause, which would be shown for good.
        None => return interval,
        // A call made with the config a reload replaced (another base_url, new credentials):
        // what it met says nothing of the vendor as now configured, whose probe the reload made
        // due at once. Pausing it again, a fixed vendor would wait out a doubled interval.
        Some(now) if !Arc::ptr_eq(&now, adapter) => return Duration::ZERO,
        Some(_) => {}
    }
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
    interval
}

/// A vendor that has not answered several calls in a row (or whose probe went unanswered) is
/// down: the call's retry becomes a pause, so the backlog waits behind one probe with growing
/// intervals instead of being tried job by job. Also says how many calls in a row went
/// unanswered.
fn circuit_breaker<T>(
    ctx: &WorkerContext,
    vendor: &str,
    job: i64,
    probe: Option<Duration>,
    call: &Call<T>,
) -> (Outcome<T>, u32)
where
    T: Clone,
{
    if call.is_internal() {
        // Our own bug, not the vendor's state: the run of failures neither grows nor ends.
        return (call.outcome.clone(), 0);
    }
    let unanswered_retry = match &call.outcome {
        Outcome::Retry { reason, .. } if call.is_outage() => Some(reason.clone()),
        _ => None,
    };
    let failures = ctx
        .outages
        .record(vendor, job, unanswered_retry.is_some() || unanswered(call));
    let unanswered = unanswered_retry;
    let outcome = match unanswered {
        Some(reason) if probe.is_some() || failures >= OUTAGE_AFTER => Outcome::VendorDown {
            reason: format!(
                "{vendor} does not answer ({failures} calls in a row failed; the last: {reason})"
            ),
        },
        _ => call.outcome.clone(),
    };
    (outcome, failures)
}

/// Whether the call carried out nothing: its request never went out (no token could be had for
/// it), or the vendor answered it with a refusal: rate limited, our credentials or permissions
/// refused, the request rejected. (Retries are not: a gateway's error may come after the work
/// was done.)
fn refused<T>(call: &Call<T>) -> bool {
    call.was_unsent()
        || !call.is_internal()
            && matches!(
                call.outcome,
                Outcome::Throttled { .. }
                    | Outcome::Rejected { .. }
                    | Outcome::Reauth { .. }
                    | Outcome::VendorDown { .. }
            )
}

/// A delete's go-ahead: [`begin_delete`], asked each time the adapter's request is ready to go
/// (a second time only after a first try refused for a stale token, which carried nothing out).
/// It holds the job as the journal last left it, and the last answer given.
struct DeleteGate<'a> {
    ctx: &'a WorkerContext,
    asked: std::sync::Mutex<(Job, Option<bool>)>,
}

impl<'a> DeleteGate<'a> {
    fn new(ctx: &'a WorkerContext, job: Job) -> Self {
        DeleteGate {
            ctx,
            asked: std::sync::Mutex::new((job, None)),
        }
    }

    /// The job as the journal left it (its copy marked, or not), and the last answer given, if
    /// asked.
    fn into_parts(self) -> (Job, Option<bool>) {
        self.asked.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn asked(&self) -> std::sync::MutexGuard<'_, (Job, Option<bool>)> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl crate::adapters::GoAhead for DeleteGate<'_> {
    fn may_send(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async {
            let mut job = self.asked().0.clone();
            let go = begin_delete(self.ctx, &mut job).await;
            *self.asked() = (job, Some(go));
            go
        })
    }
}

/// Asks the journal, as a delete is about to go out, whether it still should
/// ([`crate::journal::Journal::begin_delete`]): claimed ahead, it may have waited in its slot's
/// line, and then for its turn in the vendor's pace, while its file came back. False: it is not
/// sent (settled, and said so; or the journal could not be written, and the job goes back to the
/// queue unsent).
async fn begin_delete(ctx: &WorkerContext, job: &mut Job) -> bool {
    let claimed = job.clone();
    let begun = ctx
        .journal
        .write(move |j| {
            let mut job = claimed.clone();
            j.begin_delete(&mut job).map(|settled| (job, settled))
        })
        .await;
    match begun {
        Ok((marked, None)) => {
            *job = marked;
            true
        }
        Ok((asked, Some(settled))) => {
            // Settled, any mark an earlier try of it made given back with it.
            *job = asked;
            super::claim::log_settled(&settled);
            false
        }
        Err(e) => {
            crate::diagnose::journal_write_failed("send a delete", &job.path, &e);
            false
        }
    }
}

/// A call the vendor may have carried out whose answer never came (nothing heard, or a gateway's
/// 5xx): the file waits for a person, but the vendor is not paused for it alone.
fn unanswered<T>(call: &Call<T>) -> bool {
    !call.is_internal()
        && call.http_status.is_none_or(|status| status >= 500)
        && matches!(call.outcome, Outcome::Unconfirmed { .. })
}

/// An upload that ended before the vendor was called.
struct Early {
    pub(super) result: JobResult,
    pub(super) attempt: Attempt,
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
    let no_return = NoteInDoubt {
        ctx,
        job_id: job.id,
        path: &job.path,
    };
    let request = UploadRequest {
        path: &path,
        bytes: &bytes,
        format,
        no_return: Some(&no_return),
    };
    Ok(with_reauth(JobOp::Upload, || adapter.upload(&request))
        .await
        .map(Some))
}

/// Notes a call that must not be made twice in the journal as it is about to go out: claimed
/// again before its answer is recorded, the job is settled as in doubt
/// ([`crate::journal::Claimed::InDoubt`]) rather than sent.
struct NoteInDoubt<'a> {
    ctx: &'a WorkerContext,
    job_id: i64,
    path: &'a str,
}

impl std::fmt::Debug for NoteInDoubt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteInDoubt")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl crate::adapters::PointOfNoReturn for NoteInDoubt<'_> {
    fn refused(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let job_id = self.job_id;
        Box::pin(async move {
            // Failing, the note stays: the file waits for a person, which loses nothing.
            if let Err(e) = self.ctx.journal.write(move |j| j.answered(job_id)).await {
                crate::diagnose::journal_write_failed("take back a note", self.path, &e);
            }
        })
    }

    fn passing(&self, what: String) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        let job_id = self.job_id;
        Box::pin(async move {
            let noted = self
                .ctx
                .journal
                .write(move |j| j.note_in_doubt(job_id, &what))
                .await;
            match noted {
                // Synced: a note lost with the power would let the call be made again.
                Ok(true) => self.ctx.journal.sync_log().await,
                Ok(false) => false,
                Err(e) => {
                    crate::diagnose::journal_write_failed(
                        "note a record about to be created",
                        self.path,
                        &e,
                    );
                    false
                }
            }
        })
    }
}

/// A refused token is dropped by the adapter; the call is then made once more with a fresh one.
pub(super) async fn with_reauth<T, F, Fut>(op: JobOp, mut call: F) -> Call<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Call<T>>,
{
    let first = guarded(op, call()).await;
    if !matches!(first.outcome, Outcome::Reauth { .. }) {
        return first;
    }
    let again = guarded(op, call()).await;
    match again.outcome {
        // A fresh token refused too: the vendor refuses us (a revoked permission, an app
        // disabled), which no retry of each job cures: paused, its jobs kept, until a probe or
        // a reload finds it taking our calls again.
        Outcome::Reauth { reason } => Call::new(
            Outcome::VendorDown {
                reason: format!("{reason} (a fresh token was refused too)"),
            },
            again.http_status,
            again.vendor_code,
        ),
        _ => again,
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
    Call::internal(outcome)
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
        // One transaction: a resume whose clock restart failed would leave the jobs behind it
        // with their outage's first failure, to be failed by their next transient error.
        .call(move |j| -> crate::journal::Result<bool> {
            j.as_one_write(|j| {
                let was_paused = j.resume_vendor(&v)?;
                if was_paused {
                    j.restart_outage_clock(&v)?;
                }
                Ok(was_paused)
            })
        })
        .await;
    if let Ok(true) = resumed {
        info!(vendor, "vendor {vendor} answers again: resumed");
        ctx.wake.notify_one();
    }
}

/// Exponential backoff with jitter from 2 s to 15 min; never sooner than the vendor asked.
pub(super) fn backoff(attempts: u32, hint: Option<Duration>) -> Duration {
    let exponential = Duration::from_secs(2)
        .saturating_mul(1u32 << attempts.min(10))
        .min(MAX_BACKOFF);
    let jittered = exponential.mul_f64(0.5 + fastrand::f64() * 0.5);
    hint.map_or(jittered, |h| h.max(jittered))
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}
