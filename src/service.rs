//! The daemon as systemd sees it (`Type=notify`): READY=1 once the journal is open and every
//! watch is set up; a STATUS= line that says what it is doing, sent when that changes; RELOADING=1
//! (with MONOTONIC_USEC) then READY=1 around a reload; STOPPING=1; and WATCHDOG=1 while its loops
//! are alive.
//!
//! The watchdog pings only when the manager asks for them (`WATCHDOG_USEC`, for this pid), at
//! half the interval, and only when both loops that matter answered within a quarter of it: the
//! journal writer (a trivial call through the [`JournalHandle`]) and the worker pool (its
//! [`Heartbeat`], answered from every wait of its loop). A wedged writer or pool stops the pings,
//! and systemd restarts the service.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every message is a no-op.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::journal::{Glance, JournalHandle};
use crate::metrics::WatchMode;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("cannot notify systemd: {e}");
    }
}

/// READY=1, with the status line that goes with it at start-up (after a reload the status
/// keeper says what changed, if anything did).
pub fn ready(status: Option<&str>) {
    match status {
        Some(line) => send(&[NotifyState::Ready, NotifyState::Status(line)]),
        None => send(&[NotifyState::Ready]),
    }
}

/// RELOADING=1 with MONOTONIC_USEC, as `Type=notify-reload` and newer managers expect.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A STATUS= line of its own (during start-up, before the status keeper runs).
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Start-up is taking long (a big tree to reconcile): ask for more time than TimeoutStartSec.
pub fn extend_start(by: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(
        by.as_micros().min(u32::MAX as u128) as u32,
    )]);
}

static CHANGED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Something the STATUS= line shows may have changed (a file taken or synced, a vendor paused,
/// a watch started or stopped): the status keeper looks again.
pub fn changed() {
    CHANGED.notify_one();
}

/// What the daemon itself has to say in its STATUS= line, besides what the journal knows.
#[derive(Debug, Default)]
pub struct Notes {
    inner: Mutex<NoteState>,
}

#[derive(Debug, Default)]
struct NoteState {
    reload_refused: Option<String>,
    unresponsive: Option<String>,
}

impl Notes {
    fn with<R>(&self, f: impl FnOnce(&mut NoteState) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A reload was refused (`Some(why)`) or the last one worked (`None`).
    pub fn reload(&self, refused: Option<String>) {
        self.with(|n| n.reload_refused = refused);
        changed();
    }

    /// Which loops do not answer (`None`: all do). Only a change is worth a new status.
    fn unresponsive(&self, what: Option<String>) {
        let changed_now = self.with(|n| {
            let changed_now = n.unresponsive != what;
            n.unresponsive = what;
            changed_now
        });
        if changed_now {
            changed();
        }
    }

    /// What the notes say, as the leading parts of the status line.
    fn parts(&self) -> Vec<String> {
        self.with(|n| {
            let mut parts = Vec::new();
            if let Some(what) = &n.unresponsive {
                parts.push(format!("NOT RESPONDING: {what}"));
            }
            if let Some(why) = &n.reload_refused {
                parts.push(format!(
                    "reload refused, running the previous config: {}",
                    clip(why, 160)
                ));
            }
            parts
        })
    }
}

/// Shortens a reason for the one-line STATUS=.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

/// The STATUS= line: what is pending, what is paused and why, what is watched.
pub fn compose(glance: &Glance, watches: &[(PathBuf, String, WatchMode)], notes: &Notes) -> String {
    let mut parts = notes.parts();
    let mut counts = Vec::new();
    if glance.pending > 0 {
        counts.push(format!("{} pending", glance.pending));
    }
    if glance.deletes_queued > 0 {
        counts.push(format!("{} deletes queued", glance.deletes_queued));
    }
    if glance.failed > 0 {
        counts.push(format!("{} failed", glance.failed));
    }
    if glance.rejected > 0 {
        counts.push(format!("{} rejected", glance.rejected));
    }
    if counts.is_empty() {
        counts.push("idle, nothing pending".to_string());
    }
    parts.push(counts.join(", "));
    for (vendor, reason) in &glance.paused_vendors {
        parts.push(format!("{vendor} paused: {}", clip(reason, 100)));
    }
    for (root, reason) in &glance.paused_watches {
        parts.push(format!("watch {root} paused: {}", clip(reason, 80)));
    }
    if glance.held_deletes > 0 {
        parts.push(format!(
            "{} deletes held (imgsyncd retry --held)",
            glance.held_deletes
        ));
    }
    let polled = watches
        .iter()
        .filter(|(_, _, mode)| *mode == WatchMode::Poll)
        .count();
    let folders = match watches.len() {
        1 => "1 folder".to_string(),
        n => format!("{n} folders"),
    };
    parts.push(if polled > 0 {
        format!("watching {folders} ({polled} polled)")
    } else {
        format!("watching {folders}")
    });
    parts.join("; ")
}

/// The status line when the journal cannot be read: the notes, then why.
fn without_journal(notes: &Notes, why: String) -> String {
    let mut parts = notes.parts();
    parts.push(why);
    parts.join("; ")
}

/// Keeps STATUS= up to date: it is recomputed when something [`changed`] (a burst is taken in
/// together), and sent only when it reads differently. No timer runs while nothing happens.
pub async fn keep_status(journal: JournalHandle, notes: Arc<Notes>, mut last: String) {
    loop {
        CHANGED.notified().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let line = match tokio::time::timeout(Duration::from_secs(5), journal.call(|j| j.glance()))
            .await
        {
            Ok(Ok(glance)) => compose(&glance, &crate::metrics::watches(), &notes),
            Ok(Err(e)) => without_journal(&notes, format!("cannot read the journal: {e}")),
            Err(_) => without_journal(&notes, "the journal does not answer".to_string()),
        };
        if line != last {
            status(&line);
            last = line;
        }
    }
}

/// The worker pool's pulse: the watchdog pings, the pool answers from whichever wait its loop is
/// in. A pool that stops turning stops answering.
#[derive(Debug)]
pub struct Heartbeat {
    ping: Notify,
    pongs: watch::Sender<u64>,
    wedged: std::sync::atomic::AtomicBool,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            ping: Notify::new(),
            pongs: watch::Sender::new(0),
            wedged: Default::default(),
        }
    }
}

impl Heartbeat {
    /// Resolves when the watchdog asks whether the pool is alive; the pool then calls [`answer`].
    ///
    /// [`answer`]: Heartbeat::answer
    pub async fn pinged(&self) {
        self.ping.notified().await
    }

    pub fn answer(&self) {
        self.pongs.send_modify(|n| *n += 1);
    }

    /// Awaits `wait` (the pool's claim, or its look for the next job due: journal calls), answering
    /// the watchdog meanwhile: a pool waiting for the journal turns as the journal does, which the
    /// watchdog looks at on its own.
    pub async fn answering<T>(&self, wait: impl Future<Output = T>) -> T {
        let mut wait = std::pin::pin!(wait);
        loop {
            tokio::select! {
                answer = &mut wait => return answer,
                _ = self.pinged() => self.answer(),
            }
        }
    }

    /// Whether the pool answers within `deadline`.
    pub async fn check(&self, deadline: Duration) -> bool {
        let mut pongs = self.pongs.subscribe();
        pongs.borrow_and_update();
        self.ping.notify_one();
        matches!(
            tokio::time::timeout(deadline, pongs.changed()).await,
            Ok(Ok(()))
        )
    }

    /// The test hook's wedge: the pool's loop stops turning at its next turn.
    pub fn is_wedged(&self) -> bool {
        self.wedged.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Which loop the test hook wedges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wedge {
    Journal,
    Pool,
}

/// The test hook `IMGSYNCD_TEST_WEDGE=journal|pool`: a second after READY, the journal writer
/// (or the worker pool) stops answering for good, as a deadlock would leave it, so a test can see
/// the watchdog pings stop. Read only by debug builds (the tests'); a release build ignores it.
pub fn test_wedge() -> Option<Wedge> {
    if !cfg!(debug_assertions) {
        return None;
    }
    match std::env::var("IMGSYNCD_TEST_WEDGE").ok()?.as_str() {
        "journal" => Some(Wedge::Journal),
        "pool" => Some(Wedge::Pool),
        _ => None,
    }
}

/// Carries out the test hook's wedge after `delay`.
pub async fn wedge(what: Wedge, delay: Duration, journal: JournalHandle, pool: Arc<Heartbeat>) {
    tokio::time::sleep(delay).await;
    warn!("test hook IMGSYNCD_TEST_WEDGE: wedging the {what:?} loop for good");
    match what {
        Wedge::Journal => {
            journal
                .call(|_| {
                    loop {
                        std::thread::park();
                    }
                })
                .await
        }
        Wedge::Pool => {
            pool.wedged
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // Its next turn (this ping) is its last.
            pool.ping.notify_one();
        }
    }
}

/// The interval the manager asks for (`WATCHDOG_USEC`, for this pid), if it asks.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// A probe of the journal writer still waiting for its answer: when it was sent, and the call.
type Probe = (Instant, JoinHandle<()>);

/// How long a group or call may hold the journal before the watchdog takes the writer as wedged:
/// a statement waiting out another process's lock (a backup, `sqlite3` left open on the journal)
/// fails after the busy timeout, and the writer goes on with the next. Killing a writer that
/// waits would lose the outcomes its slots hold in memory.
const HELD_AT_MOST: Duration = Duration::from_secs(crate::journal::BUSY_TIMEOUT.as_secs() + 2);

/// Whether the journal writer answers a trivial write within `deadline`, or else is busy with a
/// group or call for less than [`HELD_AT_MOST`]. A probe not answered is waited for rather than
/// joined by more: a wedged writer costs one blocked thread.
async fn journal_answers(
    journal: &JournalHandle,
    pending: &mut Option<Probe>,
    deadline: Duration,
) -> Result<(), Duration> {
    let (since, mut call) = match pending.take() {
        Some(probe) if !probe.1.is_finished() => probe,
        _ => {
            let journal = journal.clone();
            // Through the write queue: a writer that stopped draining it is as wedged as a
            // held lock.
            let call = tokio::spawn(async move {
                let _ = journal.write(|_| Ok(())).await;
            });
            (Instant::now(), call)
        }
    };
    if tokio::time::timeout(deadline, &mut call).await.is_ok() {
        return Ok(());
    }
    *pending = Some((since, call));
    match journal.at_work_for() {
        Some(busy) if busy < HELD_AT_MOST => Ok(()),
        _ => Err(since.elapsed()),
    }
}

/// Sends WATCHDOG=1 every half `interval` while the journal writer and the worker pool answer.
pub async fn watchdog(
    interval: Duration,
    journal: JournalHandle,
    pool: Arc<Heartbeat>,
    notes: Arc<Notes>,
) {
    let period = interval / 2;
    let deadline = interval / 4;
    info!(
        "systemd watchdog: {} (pinging every {})",
        humantime::format_duration(interval),
        humantime::format_duration(period)
    );
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = None;
    let mut pool_silent_since: Option<Instant> = None;
    let mut failing = false;
    loop {
        ticks.tick().await;
        let (journal_ok, pool_ok) = tokio::join!(
            journal_answers(&journal, &mut pending, deadline),
            pool.check(deadline)
        );
        let pool_silent = if pool_ok {
            pool_silent_since = None;
            None
        } else {
            Some(pool_silent_since.get_or_insert_with(Instant::now).elapsed() + deadline)
        };
        let seconds = |d: Duration| {
            humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
        };
        // (for the log, with how long; for STATUS=, which stays the same while it lasts)
        let mut trouble: Vec<(String, &str)> = Vec::new();
        if let Err(for_how_long) = journal_ok {
            trouble.push((
                format!(
                    "the journal writer has not answered for {}",
                    seconds(for_how_long)
                ),
                "the journal writer does not answer",
            ));
        }
        if let Some(for_how_long) = pool_silent {
            trouble.push((
                format!(
                    "the worker pool has not answered for {}",
                    seconds(for_how_long)
                ),
                "the worker pool does not answer",
            ));
        }
        if trouble.is_empty() {
            send(&[NotifyState::Watchdog]);
            if failing {
                info!("watchdog: every loop answers again; pinging systemd again");
                notes.unresponsive(None);
                failing = false;
            }
        } else {
            let logged: Vec<&str> = trouble.iter().map(|(l, _)| l.as_str()).collect();
            let shown: Vec<&str> = trouble.iter().map(|(_, s)| *s).collect();
            if !failing {
                error!(
                    "watchdog: {}: not telling systemd we are alive, so it restarts the \
                     service when WatchdogSec= runs out",
                    logged.join(" and ")
                );
            }
            notes.unresponsive(Some(shown.join(" and ")));
            failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glance() -> Glance {
        Glance::default()
    }

    #[test]
    fn an_idle_daemon_says_so() {
        let watches = vec![(
            PathBuf::from("/srv/drop"),
            "erp".to_string(),
            WatchMode::Inotify,
        )];
        assert_eq!(
            compose(&glance(), &watches, &Notes::default()),
            "idle, nothing pending; watching 1 folder"
        );
    }

    #[test]
    fn the_line_says_what_is_pending_and_what_is_paused_and_why() {
        let glance = Glance {
            pending: 42,
            failed: 1,
            paused_vendors: vec![("erp".into(), "bad signature".into())],
            held_deletes: 3,
            ..Glance::default()
        };
        let watches = vec![
            (PathBuf::from("/a"), "erp".to_string(), WatchMode::Inotify),
            (PathBuf::from("/b"), "erp".to_string(), WatchMode::Poll),
        ];
        let notes = Notes::default();
        notes.reload(Some(
            "/etc/imgsyncd/daemon.yaml:3: workers: must be between 1 and 64".into(),
        ));
        assert_eq!(
            compose(&glance, &watches, &notes),
            "reload refused, running the previous config: /etc/imgsyncd/daemon.yaml:3: workers: \
             must be between 1 and 64; 42 pending, 1 failed; erp paused: bad signature; \
             3 deletes held (imgsyncd retry --held); watching 2 folders (1 polled)"
        );
    }

    #[test]
    fn long_reasons_are_clipped() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[tokio::test]
    async fn a_pool_that_answers_is_alive_and_one_that_does_not_is_not() {
        let heartbeat = Arc::new(Heartbeat::default());
        let pool = Arc::clone(&heartbeat);
        let answering = tokio::spawn(async move {
            loop {
                pool.pinged().await;
                pool.answer();
            }
        });
        assert!(heartbeat.check(Duration::from_secs(5)).await);
        answering.abort();
        let _ = answering.await;
        assert!(!heartbeat.check(Duration::from_millis(50)).await);
    }
}
