//! Watching one drop folder: filesystem events (inotify, or polling for network shares) are hints;
//! every start, overflow, failed watch and periodic rescan reconciles the folder against the journal.

mod bounded_look;
mod events;
pub mod examine;
mod intake;
pub mod mounts;
pub mod presence;
pub mod settle;
mod sighting;
mod untaken;
mod walk;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::{error, info, warn};

use crate::adapters::{Adapter, Limits};
use crate::config::{OnRemove, VendorKind, WatchConfig};
use crate::journal::{
    JournalHandle, KnownFile, KnownStamps, MissingOutcome, RemovalBatch, RemovalPolicy,
    UntakenFile, path_text,
};
use crate::throttle::{LogThrottle, Verdict};
use examine::Examined;
use intake::{Found, Intake, Recorded, log_observed};
use presence::{Whereabouts, look_at_known};
use settle::{Settle, Sighting, Stamp};
pub use sighting::Sightings;

/// What a watch task shares with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct WatchContext {
    pub journal: JournalHandle,
    /// Woken when work is queued.
    pub wake_workers: Arc<Notify>,
    pub settle: Duration,
    pub rescan: Duration,
    pub max_deletes: usize,
    /// How late each watch sees a file arrive, and which are taking files in: a removal waits
    /// for the slowest of its vendor's, and for those.
    pub sightings: Sightings,
    /// Told the root of a watch whose task ended in a panic, so the daemon can start it again:
    /// a watch that is gone takes no file and says nothing. None for a one-shot scan.
    pub failed: Option<mpsc::UnboundedSender<PathBuf>>,
    /// Bumped at each change of the mount table (see [`mounts`]); none for a one-shot scan.
    pub mount_changes: Option<tokio::sync::watch::Receiver<u64>>,
}

#[derive(Debug)]
pub enum WatchCommand {
    Rescan,
    Stop,
    /// Answered once the watch is set up (its watcher started and its first reconcile done).
    Ready(tokio::sync::oneshot::Sender<()>),
}

/// How many settle periods a one-shot scan waits for the files it found still being written.
const SCAN_SETTLE_PERIODS: u32 = 10;

/// The test hook `IMGSYNCD_TEST_PANIC_ON=NAME`: the watch's task panics when an event names a
/// file called NAME, as a bug would make it, so a test can see the daemon notice and start the
/// watch again. Read only by debug builds (the tests'); a release build has no such hook.
fn test_panic_on(path: &Path) {
    if cfg!(debug_assertions)
        && let Some(name) = std::env::var_os("IMGSYNCD_TEST_PANIC_ON")
        && path.file_name() == Some(name.as_os_str())
    {
        panic!(
            "test hook IMGSYNCD_TEST_PANIC_ON: an event for {}",
            path.display()
        );
    }
}

/// A removal is acted on this long after the settle period, so a rename's new name is seen first.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);
/// Removals wait for pending new files (which may be their new names) at most this long.
const REMOVAL_MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a removal waiting for another watch's intake looks whether it is done.
const INTAKE_LOOK: Duration = Duration::from_millis(250);
const ROOT_CHECK: Duration = Duration::from_secs(2);
/// How long a look at the root may take before the folder counts as unavailable (a share whose
/// server does not answer): long enough for a slow share, short enough that the watch says so.
const ROOT_ANSWER: Duration = Duration::from_secs(15);
/// A folder created or moved in is walked again this long after it was first seen.
const REWALK_AFTER: Duration = Duration::from_millis(500);
/// Deletes are counted against `max_deletes` over this window, however slowly files vanish.
const REMOVAL_WINDOW: Duration = Duration::from_secs(3600);
/// A journal write that failed is tried again after this long.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);
/// Settled files examined and recorded together: one journal write for the lot.
const TAKE_BATCH: usize = 256;
/// A reconcile reads the folder, and the journal's side of it, this many files at a time.
const RECONCILE_BATCH: usize = 1024;
/// A reconcile keeps the stamps of at most this many known files in memory (8 bytes each), read
/// at once (a quarter of a second holding up the journal's writes); a bigger watch's files are
/// looked up a batch at a time.
const KNOWN_STAMPS_LIMIT: usize = 250_000;

/// What a reconcile's pass over the disk found.
#[derive(Debug, Default)]
struct DiskPass {
    on_disk: usize,
    /// Of those, new or changed.
    fresh: usize,
    /// Of those, files the journal holds as present (not removed, no removal pending).
    known_present: usize,
    /// How long reading the disk took, without waiting for what was found to be taken.
    walk_time: Duration,
}

/// How long a file's content must have gone unwritten for an event that does not say its write
/// was closed (a create) to take it as complete all the same. `ln staged/a.png a.png && rm
/// staged/a.png`, a no-clobber move, makes only a create, of a file whose link count is one
/// again by the time it is looked at: no close ever comes, and it waited for one for good. A
/// file being written has its modification time moved by each write.
const UNWRITTEN_FOR: Duration = Duration::from_secs(60);

fn unwritten_for_long(meta: &std::fs::Metadata) -> bool {
    meta.len() > 0
        && meta
            .modified()
            .ok()
            .and_then(|written| written.elapsed().ok())
            .is_some_and(|since| since >= UNWRITTEN_FOR)
}

/// Whether a file found by a scan has been still for `period` already: neither its content nor
/// its metadata changed since (its mtime and ctime are that old).
fn quiet_for(stamp: &Stamp, period: Duration) -> bool {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    now_ns - stamp.mtime_ns.max(stamp.ctime_ns) >= period.as_nanos() as i64
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// A path seen gone, waiting for its removal to be decided.
#[derive(Debug, Clone)]
struct PendingRemoval {
    since: Instant,
    /// Why its delete must be held whatever the guards say (found by a scan of an empty root).
    hold: Option<String>,
}

impl PendingRemoval {
    fn new(since: Instant) -> Self {
        PendingRemoval { since, hold: None }
    }
}

/// How many times a file that could not be read is looked at before it is refused: an I/O error
/// on a share, no file descriptor left, a stale NFS handle may pass within a few settle periods.
/// Refused at once, the file stayed refused until something touched it.
const READ_TRIES: u32 = 5;

/// The files whose last look could not read them, with how many looks failed in a row. Bounded by
/// the settle tracker's own bound: only files it looks at come in, and each leaves at its next
/// other outcome or when it is refused.
#[derive(Debug, Default)]
struct ReadRetries(HashMap<PathBuf, u32>);

#[derive(Debug, PartialEq, Eq)]
enum ReadRetry {
    Again,
    /// Refused now, after this many tries.
    GiveUp(u32),
}

impl ReadRetries {
    fn failed(&mut self, path: &Path) -> ReadRetry {
        let tries = self.0.entry(path.to_path_buf()).or_default();
        *tries += 1;
        match *tries >= READ_TRIES {
            false => ReadRetry::Again,
            true => {
                let tries = *tries;
                self.0.remove(path);
                ReadRetry::GiveUp(tries)
            }
        }
    }

    fn cleared(&mut self, path: &Path) {
        if !self.0.is_empty() {
            self.0.remove(path);
        }
    }
}

/// What a look at the watch root found.
enum RootState {
    /// Not there (or not a folder): the watch is paused.
    Missing,
    /// There; `fresh` when it is a folder the running watcher does not cover (replaced, back).
    Usable { fresh: bool },
}

/// A folder to read again, and when.
#[derive(Debug)]
struct Rewalk {
    dir: PathBuf,
    at: Instant,
    reach: walk::Reach,
}

pub struct WatchTask {
    config: WatchConfig,
    ctx: WatchContext,
    kind: VendorKind,
    limits: Limits,
    /// Whether the same bytes may reuse another file's live copy (not when each file needs a
    /// record of its own).
    reuse_copies: bool,
    settle: Settle,
    removals: HashMap<PathBuf, PendingRemoval>,
    /// The root's (device, inode) when last known good, as the journal keeps it across restarts.
    root_id: Option<(u64, u64)>,
    /// The (device, inode) the running watcher was set up on.
    watching_id: Option<(u64, u64)>,
    /// The root was deleted and the journal could not be told: told again at the next look at
    /// the root, and until it is, the journal's identity of the root is not taken back.
    deletion_unrecorded: bool,
    /// Why the root cannot be trusted for removals (replaced, remounted), while it is so.
    replaced: Option<String>,
    paused: Option<String>,
    watcher: Option<Arc<events::Watching>>,
    event_tx: Option<events::EventSender>,
    /// How long the last walk of the whole tree took: a poll of it takes as long.
    walk_time: Duration,
    /// Folders read again at a moment: one created or moved in, a moment later (events about a
    /// folder that race with its first walk, its watch re-added while notify still removes the
    /// one of the path it was moved from, may leave it briefly unwatched); one a scan found more
    /// settling files in than it tracks, once they are quiet.
    rewalks: Vec<Rewalk>,
    /// Whether the other watches were last told this one has files seen and not yet recorded.
    taking_in: bool,
    /// A poller's errors about a part of the folder it cannot read come at every poll: said once
    /// an hour each.
    unreadable_log: LogThrottle,
    /// This task, in what it tells the other watches.
    owner: sighting::Owner,
    /// The mounts on the root's path when its watcher was set up.
    mounts: mounts::MountsOnPath,
    /// Looks at the root, and at the mounts on its path, off the runtime's threads.
    root_look: bounded_look::BoundedLook<std::io::Result<std::fs::Metadata>>,
    mounts_look: bounded_look::BoundedLook<std::io::Result<mounts::MountsOnPath>>,
    /// Why the watch hears of its files less well than it should, as last told the journal, and
    /// whether it was told at all.
    degraded: Option<String>,
    degraded_told: bool,
    /// Files that could not be read for a reason that may pass, and how many times.
    read_retries: ReadRetries,
}

impl Drop for WatchTask {
    /// A task that ends, however it ends (a panic too), no longer holds up the removals of the
    /// vendor's other watches.
    fn drop(&mut self) {
        self.ctx.sightings.forget(&self.config.path, self.owner);
        if std::thread::panicking()
            && let Some(failed) = &self.ctx.failed
        {
            let _ = failed.send(self.config.path.clone());
        }
    }
}

impl WatchTask {
    /// A watch feeding `adapter`'s vendor.
    pub fn new(config: WatchConfig, ctx: WatchContext, adapter: &Adapter) -> Self {
        let settle = Settle::new(ctx.settle);
        WatchTask {
            config,
            ctx,
            kind: adapter.kind(),
            limits: adapter.limits(),
            reuse_copies: adapter.reuses_copies(),
            settle,
            removals: HashMap::new(),
            root_id: None,
            watching_id: None,
            deletion_unrecorded: false,
            replaced: None,
            paused: None,
            watcher: None,
            event_tx: None,
            walk_time: Duration::ZERO,
            rewalks: Vec::new(),
            taking_in: false,
            unreadable_log: LogThrottle::new(Duration::from_secs(3600), 1),
            owner: sighting::new_owner(),
            mounts: mounts::MountsOnPath::default(),
            root_look: bounded_look::BoundedLook::new(ROOT_ANSWER),
            mounts_look: bounded_look::BoundedLook::new(ROOT_ANSWER),
            degraded: None,
            degraded_told: false,
            read_retries: ReadRetries::default(),
        }
    }

    fn root(&self) -> &Path {
        &self.config.path
    }

    /// The root as the journal records it (its watch_root, pauses and identity).
    fn root_text(&self) -> String {
        path_text::to_text(self.root()).into_owned()
    }

    /// Runs until told to stop. Between events it sleeps until the next thing falls due (a file's
    /// quiet period ending, a removal's grace, the periodic rescan): an idle watch costs nothing.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WatchCommand>) {
        let (event_tx, mut events) = events::channel();
        self.event_tx = Some(event_tx);
        self.apply_policies().await;
        self.verify_root().await;
        let mut rescan = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ctx.rescan,
            self.ctx.rescan,
        );
        // Only a root in trouble (missing, or not the folder the journal knows) is looked at on
        // a timer; otherwise events about the root and every reconcile look at it.
        let mut root_check = tokio::time::interval(ROOT_CHECK);
        let mut mount_changes = self.ctx.mount_changes.clone();
        loop {
            self.publish_taking_in();
            let deadline = self.next_deadline();
            let root_in_trouble = self.paused.is_some() || self.replaced.is_some();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(WatchCommand::Rescan) => self.reconcile(Sighting::Scanned).await,
                    Some(WatchCommand::Ready(answer)) => { let _ = answer.send(()); }
                    Some(WatchCommand::Stop) | None => break,
                },
                Some(event) = events.recv() => match event {
                    // Failures queued by a watcher already replaced by a poller are only rescans.
                    events::WatchEvent::Failed { why } if self.watcher.as_ref().is_some_and(|w| w.per_folder()) => {
                        error!(
                            watch = %self.root().display(),
                            "cannot watch the folder with inotify: {why}; polling it every {} instead",
                            humantime::format_duration(events::FALLBACK_POLL)
                        );
                        if let Some(tx) = self.event_tx.as_ref().map(events::EventSender::for_new_watcher) {
                            self.watcher = events::start(&self.config, Some(events::FALLBACK_POLL), tx).ok().map(Arc::new);
                            crate::metrics::watch_polled(self.root());
                            self.publish_sighting_delay();
                            self.record_degraded(Some(format!(
                                "polled every {}: cannot watch the folder with inotify: {why}",
                                humantime::format_duration(events::FALLBACK_POLL)
                            )));
                        }
                        self.reconcile_after_lost_events().await;
                    }
                    event => self.on_event(event).await,
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.on_tick().await,
                _ = rescan.tick() => self.reconcile(Sighting::Scanned).await,
                _ = root_check.tick(), if root_in_trouble => self.verify_root().await,
                told = mounts::next_change(&mut mount_changes) => match told {
                    true => self.mounts_changed().await,
                    false => mount_changes = None,
                },
            }
        }
        self.watcher = None;
        self.ctx.sightings.forget(self.root(), self.owner);
        if self.deletion_unrecorded && !self.record_root_deleted().await {
            error!(
                watch = %self.root().display(),
                "stopping with the watch folder's deletion unrecorded: at the next start, a new \
                 folder at its path may pass for the old one; check it before starting again"
            );
        }
        if self.paused.is_some() || self.replaced.is_some() {
            let root = self.root_text();
            let _ = self.ctx.journal.call(move |j| j.resume_watch(&root)).await;
        }
        if self.degraded.is_some() {
            let root = self.root_text();
            let _ = self
                .ctx
                .journal
                .call(move |j| j.note_watch_degraded(&root, None))
                .await;
        }
    }

    /// Looks at the root and acts on it: a missing root stops the watcher, a root the running
    /// watcher does not cover (new, replaced, back) gets a new one and a reconcile.
    async fn verify_root(&mut self) {
        match self.check_root().await {
            RootState::Missing => {
                self.watcher = None;
                self.publish_sighting_delay();
            }
            RootState::Usable { fresh: true } => {
                self.watcher = None;
                self.mounts = self.read_mounts().await;
                self.watcher = self.start_watcher();
                // Before the first walk, which a removal elsewhere may otherwise not wait for.
                self.publish_sighting_delay();
                // The old watcher's events are lost (a file written in a subfolder while the
                // mounts changed).
                self.reconcile_after_lost_events().await;
            }
            RootState::Usable { fresh: false } => {}
        }
    }

    /// The mounts on the root's path now; as last read when the table cannot be read, or the
    /// root's links not followed in time (a hung share: its look at the root pauses the watch).
    async fn read_mounts(&mut self) -> mounts::MountsOnPath {
        let root = self.config.path.clone();
        match self
            .mounts_look
            .run(move || mounts::MountsOnPath::read(&root))
            .await
        {
            Some(Ok(now)) => now,
            _ => self.mounts.clone(),
        }
    }

    /// The mount table changed: when a mount on the root's path came or went, the watcher set up
    /// before may watch nothing any more (its filesystem unmounted) or miss a new one, so the
    /// folder is watched anew and reconciled.
    async fn mounts_changed(&mut self) {
        let now = self.read_mounts().await;
        if now == self.mounts {
            return;
        }
        if self.mounts.is_empty() {
            // Never watched (its root missing since the start): nothing was lost; the root may
            // be back.
            self.mounts = now;
            self.verify_root().await;
            return;
        }
        warn!(
            watch = %self.root().display(),
            "the mounts on the watch folder's path changed ({}); watching the folder anew and \
             reconciling it",
            now.changes_from(&self.mounts)
        );
        self.mounts = now;
        self.watcher = None;
        self.watching_id = None;
        self.verify_root().await;
    }

    /// When the tracker or the removals next need a look.
    fn next_deadline(&mut self) -> Option<Instant> {
        let settle = self.settle.next_deadline();
        let removals = self
            .removals
            .values()
            .map(|r| r.since)
            .min()
            .map(|earliest| {
                let (due, latest) = (earliest + self.removal_wait(), earliest + REMOVAL_MAX_WAIT);
                match (self.settle.is_empty(), self.intake_pending()) {
                    (_, false) => due,
                    // The tracker's own deadlines wake this watch meanwhile.
                    (false, true) => due.max(latest),
                    // Nothing wakes this watch when another one is done: it looks again.
                    (true, true) => due.max((Instant::now() + INTAKE_LOOK).min(latest)),
                }
            });
        let rewalk = self.rewalks.iter().map(|r| r.at).min();
        [settle, removals, rewalk].into_iter().flatten().min()
    }

    /// Looks at the root: whether it is there, and whether it is the folder the journal knows
    /// (same device and inode). Pauses the watch while it is missing; holds its removals while it
    /// is another folder than the one known (replaced, or an empty mount point).
    async fn check_root(&mut self) -> RootState {
        let root = self.config.path.clone();
        let looked = self.root_look.run(move || std::fs::metadata(root)).await;
        let looked = looked.unwrap_or_else(|| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "it did not answer within {}: a network share whose server does not answer?",
                    humantime::format_duration(self.root_look.limit())
                ),
            ))
        });
        let meta = match looked {
            Ok(meta) if meta.is_dir() => meta,
            Ok(_) => {
                self.pause("it is not a folder".to_string());
                return RootState::Missing;
            }
            Err(e) => {
                self.pause(e.to_string());
                return RootState::Missing;
            }
        };
        let current = (meta.dev(), meta.ino());
        let was_paused = self.paused.take().is_some();
        if was_paused {
            info!(watch = %self.root().display(), "watch root is back; resuming and rescanning");
        }
        if self.deletion_unrecorded {
            self.deletion_unrecorded = !self.record_root_deleted().await;
        }
        let (mut unknown, mut record_changed) = (None, false);
        if self.root_id != Some(current) && !self.deletion_unrecorded {
            // The journal is the authority: at a start, and after `retry --held` accepted a
            // replaced root, it holds what this root should be.
            let root = self.root_text();
            let known = self.ctx.journal.call(move |j| j.root_identity(&root)).await;
            match known {
                // What the root should be cannot be told: the folder is not trusted meanwhile
                // (its identity stays unknown, so its removals are held) and is looked at again.
                Err(e) => {
                    if self.replaced.is_none() {
                        error!(
                            watch = %self.root().display(),
                            "cannot read what the journal knows of the watch folder ({}); no \
                             remote copy is deleted for files missing from it until it can",
                            crate::diagnose::journal(&e)
                        );
                    }
                    unknown = Some("what the journal knows of the folder cannot be read");
                }
                Ok(None) => {
                    let root = self.root_text();
                    let recorded = self
                        .ctx
                        .journal
                        .call(move |j| j.set_root_identity(&root, current.0, current.1))
                        .await;
                    if let Err(e) = recorded {
                        error!(watch = %self.root().display(), "cannot record the watch root: {e}");
                    }
                    self.root_id = Some(current);
                }
                Ok(Some(known)) => {
                    // Another process (`retry --held`) may have changed it: a problem found
                    // against the new record is said again, even if the old one was known.
                    record_changed = self.root_id.is_some_and(|was| was != known);
                    self.root_id = Some(known);
                }
            }
        }
        let problem = match self.root_id {
            _ if unknown.is_some() => unknown.map(str::to_string),
            Some((dev, _)) if dev != current.0 => Some(format!(
                "the folder is on another filesystem than before (device {} instead of {dev}): \
                 an unmounted share?",
                current.0
            )),
            Some((_, inode)) if inode != current.1 => Some(
                "the folder was replaced by another one (removed and recreated, or moved aside)"
                    .to_string(),
            ),
            _ => None,
        };
        match (&problem, self.replaced.is_some()) {
            (Some(problem), known) => {
                if !known && unknown.is_none() {
                    error!(
                        watch = %self.root().display(),
                        "watch root changed: {problem}; new files are still taken, but no remote \
                         copy is deleted for files missing from it: run `imgsyncd retry --held` \
                         once the folder is as it should be"
                    );
                }
                if !known || was_paused || record_changed {
                    self.record_pause(Some(format!("{problem}; removals held")));
                }
            }
            (None, true) => {
                info!(watch = %self.root().display(), "watch root is the known folder again");
                self.record_pause(None);
            }
            (None, false) if was_paused => self.record_pause(None),
            (None, false) => {}
        }
        self.replaced = problem;
        RootState::Usable {
            fresh: self.watching_id != Some(current),
        }
    }

    fn pause(&mut self, problem: String) {
        if self.paused.is_none() {
            error!(
                watch = %self.root().display(),
                "watch root unavailable ({problem}); watch paused, no removals are trusted until it is back"
            );
            self.record_pause(Some(problem.clone()));
        }
        self.forget_the_folder();
        self.paused = Some(problem);
    }

    /// Forgets what was seen in the folder and how it was watched: the reconcile when the root is
    /// back (or a new folder stands at its path) reads everything again, and a rewalk due
    /// meanwhile would only wake the paused watch over and over. (While paused no event or tick
    /// adds to them, so doing this again at each look at a missing root changes nothing.)
    fn forget_the_folder(&mut self) {
        self.settle = Settle::new(self.ctx.settle);
        self.removals.clear();
        self.rewalks.clear();
        self.watching_id = None;
    }

    /// Tells the journal (and so `status`) that the watch paused (`Some(reason)`) or resumed.
    fn record_pause(&self, reason: Option<String>) {
        let journal = self.ctx.journal.clone();
        let root = self.root_text();
        tokio::spawn(async move {
            let result = journal
                .call(move |j| match reason {
                    Some(reason) => j.pause_watch(&root, &reason),
                    None => j.resume_watch(&root),
                })
                .await;
            if let Err(e) = result {
                error!("cannot record the watch's pause: {e}");
            }
            crate::service::changed();
        });
    }

    /// Starts the watch's event source; when inotify cannot be set up, polling takes its place.
    fn start_watcher(&mut self) -> Option<Arc<events::Watching>> {
        let tx = self.event_tx.as_ref()?.for_new_watcher();
        self.watching_id = std::fs::metadata(self.root())
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        let error = match events::start(&self.config, self.config.poll, tx.clone()) {
            Ok(watcher) => {
                let mode = match self.config.poll {
                    Some(_) => crate::metrics::WatchMode::Poll,
                    None => crate::metrics::WatchMode::Inotify,
                };
                crate::metrics::watch_mode(self.root(), &self.config.vendor, mode);
                self.record_degraded(None);
                return Some(Arc::new(watcher));
            }
            Err(e) => e,
        };
        let rescans = humantime::format_duration(self.ctx.rescan);
        if self.config.poll.is_some() {
            let why = format!(
                "cannot poll the folder: {}",
                events::explain(&error, self.root())
            );
            error!(watch = %self.root().display(), "{why}; relying on rescans");
            self.record_degraded(Some(format!(
                "{why}; only the rescan every {rescans} finds files"
            )));
            return None;
        }
        match events::start(&self.config, Some(events::FALLBACK_POLL), tx.clone()) {
            Ok(watcher) => {
                crate::metrics::watch_polled(self.root());
                let why = format!(
                    "cannot watch the folder with inotify: {}",
                    events::explain(&error, self.root())
                );
                let polled = humantime::format_duration(events::FALLBACK_POLL);
                error!(watch = %self.root().display(), "{why}; polling it every {polled} instead");
                self.record_degraded(Some(format!("polled every {polled}: {why}")));
                Some(Arc::new(watcher))
            }
            Err(poll_error) => {
                let why = format!(
                    "cannot watch the folder: {}; nor poll it: {}",
                    events::explain(&error, self.root()),
                    events::explain(&poll_error, self.root()),
                );
                error!(watch = %self.root().display(), "{why}; relying on rescans every {rescans}");
                self.record_degraded(Some(format!(
                    "{why}; only the rescan every {rescans} finds files"
                )));
                None
            }
        }
    }

    /// Tells the journal (and so `status`) how the watch hears of its files when that is less
    /// than it should be (`Some(reason)`), or that it is well.
    fn record_degraded(&mut self, reason: Option<String>) {
        // The first word is always said: a watch before it (cut short at a stop or a reload) may
        // have left its reason in the journal.
        if self.degraded_told && self.degraded == reason {
            return;
        }
        self.degraded_told = true;
        self.degraded.clone_from(&reason);
        let root = self.root_text();
        // Queued now, so a later note cannot overtake it.
        let noted = self
            .ctx
            .journal
            .submit(move |j| j.note_watch_degraded(&root, reason.as_deref()));
        tokio::spawn(async move {
            if let Err(e) = noted.await {
                error!("cannot record how the watch hears of its files: {e}");
            }
        });
    }

    async fn on_event(&mut self, event: events::WatchEvent) {
        if let events::WatchEvent::RootDeleted = event {
            // Even while paused (a look at the root found it missing before this event came,
            // behind a backlog of its files' removals): the folder that comes back is another.
            self.root_deleted().await;
            self.verify_root().await;
            return;
        }
        if self.paused.is_some() {
            return;
        }
        if let events::WatchEvent::Seen { path, .. } | events::WatchEvent::Gone { path } = &event
            && path == self.root()
        {
            // The root itself was moved away or back, or replaced.
            self.verify_root().await;
            return;
        }
        match event {
            events::WatchEvent::Seen { path, sighting } => self.seen(&path, sighting).await,
            events::WatchEvent::Gone { path } => self.gone(&path).await,
            // Taken before the pause check, above.
            events::WatchEvent::RootDeleted => {}
            events::WatchEvent::Unreadable { why } => {
                if let Verdict::Log { .. } = self.unreadable_log.check(&why, Instant::now()) {
                    warn!(
                        watch = %self.root().display(),
                        "cannot read part of the folder: {why}; its files there are not seen \
                         until it can be read (said once an hour)"
                    );
                }
            }
            events::WatchEvent::Rescan { why } | events::WatchEvent::Failed { why } => {
                warn!(watch = %self.root().display(), "{why}; reconciling the whole folder");
                self.reconcile_after_lost_events().await;
            }
        }
    }

    /// The folder watched was deleted. Its files went with it, and a folder made at its path
    /// since may carry the same inode number, so pass for the root the journal knows: the
    /// journal forgets the root's inode, and whatever folder is at the path is watched afresh as a
    /// replaced root, whose missing files keep their remote copies until an operator says so.
    async fn root_deleted(&mut self) {
        self.deletion_unrecorded = !self.record_root_deleted().await;
        self.root_id = self.root_id.map(|(dev, _)| (dev, 0));
        self.watcher = None;
        self.forget_the_folder();
    }

    /// Tells the journal the root was deleted; whether it could be told.
    async fn record_root_deleted(&self) -> bool {
        let root = self.root_text();
        let dev = self.root_id.map_or(0, |(dev, _)| dev);
        let recorded = self
            .ctx
            .journal
            .call(move |j| j.forget_root_inode(&root, dev))
            .await;
        if let Err(e) = &recorded {
            error!(
                watch = %self.root().display(),
                "cannot record that the watch folder was deleted ({}); its removals stay held \
                 and it is recorded at the next look at the folder",
                crate::diagnose::journal(e)
            );
        }
        recorded.is_ok()
    }

    fn relative<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        path.strip_prefix(self.root())
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    async fn seen(&mut self, path: &Path, sighting: Sighting) {
        let Some(relative) = self.relative(path) else {
            return;
        };
        test_panic_on(path);
        if self.settle.contains(path) {
            self.removals.remove(path);
            // A file already followed (its second and third events of a write: modified,
            // closed): what it is was looked at with its first event, and the tracker stats it
            // again when it falls due. Not stat'ing it for each event saved two `statx` a file.
            self.settle.touch(path, sighting, Instant::now());
            return;
        }
        let meta = std::fs::symlink_metadata(path);
        // A folder at the path of a file seen gone does not bring the file back: its removal
        // stands.
        if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
            self.removals.remove(path);
        }
        match meta {
            Ok(meta) if meta.is_dir() && self.config.recursive => {
                // A folder created or moved in: the walk watches it (and every folder inside)
                // from now on, and takes what it already holds, which produced no events.
                let _ = self
                    .compare_folder(path, Sighting::Scanned, walk::Reach::Tree)
                    .await;
                self.look_again(path, Instant::now() + REWALK_AFTER, walk::Reach::Tree);
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if self.config.filter.accepts(relative) => {
                // Only regular files are written and closed; anything else is complete as it is.
                // So is a hard link to an existing file: linking it in writes nothing; and a
                // file whose content went unwritten for long, whatever the event.
                let complete = !meta.is_file() || meta.nlink() > 1 || unwritten_for_long(&meta);
                let sighting = if complete { Sighting::Closed } else { sighting };
                self.track(path, sighting);
            }
            // There, but not to be looked at (a folder the daemon may list but not enter, an
            // I/O error): tracked as complete, so its examination says why when it falls due.
            Err(e) if !examine::is_gone(&e) && self.config.filter.accepts(relative) => {
                self.track(path, Sighting::Closed);
            }
            _ => {}
        }
    }

    /// Follows a file seen, until it is quiet for the settle period.
    fn track(&mut self, path: &Path, sighting: Sighting) {
        let now = Instant::now();
        if self.settle.has_room() {
            self.settle.touch(path, sighting, now);
        } else {
            // Its folder is read again once it is closed, and it is taken when quiet.
            self.settle.untracked(path, sighting);
            if sighting != Sighting::Open
                && let Some(dir) = path.parent()
            {
                self.look_again(dir, now + self.ctx.settle, walk::Reach::OwnEntries);
            }
        }
    }

    /// `dir` is read again at `at`, once however many times this is asked. A look at the whole
    /// tree (a new folder; files a scan found still settling) waits for the latest `at` asked,
    /// when they are all quiet. A look at its own entries (files left out of a full tracker) keeps
    /// the soonest: they come on through a whole import, and postponing the look for each would
    /// leave the first of them waiting until the import ended.
    fn look_again(&mut self, dir: &Path, at: Instant, reach: walk::Reach) {
        match self.rewalks.iter_mut().find(|r| r.dir == dir) {
            Some(rewalk) if reach == walk::Reach::Tree => {
                rewalk.at = rewalk.at.max(at);
                rewalk.reach = walk::Reach::Tree;
            }
            Some(_) => {}
            None => self.rewalks.push(Rewalk {
                dir: dir.to_path_buf(),
                at,
                reach,
            }),
        }
    }

    /// The second look at a folder: only what neither the tracker nor the journal has yet. One
    /// the journal could not answer is tried again: what it was to find may be known nowhere else.
    async fn rewalk_folder(&mut self, rewalk: Rewalk) {
        let looked = self
            .compare_folder(&rewalk.dir, Sighting::Scanned, rewalk.reach)
            .await;
        if looked.is_none() {
            self.look_again(&rewalk.dir, Instant::now() + JOURNAL_RETRY, rewalk.reach);
        }
    }

    async fn gone(&mut self, path: &Path) {
        if self.relative(path).is_none() {
            return;
        }
        self.settle.forget_under(path);
        self.rewalks.retain(|r| !r.dir.starts_with(path));
        if std::fs::symlink_metadata(path).is_ok() {
            // Something took the name in the same step (`mv --exchange`: each name's file
            // leaves it and the other's comes in, and no event says the name was written to; or
            // a folder made where a file was): it is looked at as found there.
            self.seen(path, Sighting::Scanned).await;
        }
        // What the journal had at the path or under it is decided as for any removal: a file
        // that stands there now is found present, one that went elsewhere is found there.
        self.removals
            .insert(path.to_path_buf(), PendingRemoval::new(Instant::now()));
    }

    async fn on_tick(&mut self) {
        if self.paused.is_some() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rewalks)
            .into_iter()
            .partition(|r| r.at <= now);
        self.rewalks = later;
        for rewalk in due {
            self.rewalk_folder(rewalk).await;
        }
        let ready = self.settle.take_ready(Instant::now(), examine::look);
        self.report_stalled();
        self.take_all(ready).await;
        let (now, wait) = (Instant::now(), self.removal_wait());
        let waited_enough = |r: &PendingRemoval| now.duration_since(r.since) >= wait;
        let overdue = self
            .removals
            .values()
            .any(|r| now.duration_since(r.since) >= REMOVAL_MAX_WAIT);
        let any_due = self.removals.values().any(waited_enough);
        let intake_pending = self.intake_pending();
        if any_due && (!intake_pending || overdue) {
            // A burst (`rm -rf`, a sync tool) is decided together, so the guards see all of it:
            // everything that vanished up to a grace period after the first one that is due.
            // While new files are still being taken in (maybe the ones that left), only those
            // that waited their longest are.
            let ready_after = match intake_pending {
                true => wait.max(REMOVAL_MAX_WAIT),
                false => wait,
            };
            let slack = now + REMOVAL_GRACE;
            let due: Vec<PathBuf> = self
                .removals
                .iter()
                .filter(|(_, r)| slack.duration_since(r.since) >= ready_after)
                .map(|(p, _)| p.clone())
                .collect();
            if !due.is_empty() {
                let due = due
                    .into_iter()
                    .filter_map(|p| self.removals.remove_entry(&p))
                    .collect();
                self.process_removals(due).await;
            }
        }
    }

    /// Tells the operator, once a file, which files have waited long to be complete: nothing else
    /// would show a file that a hung writer keeps open, as it is not in the journal yet.
    fn report_stalled(&mut self) {
        for stalled in self.settle.take_stalled() {
            // Whole seconds: the wait is a multiple of the settle period, not of nanoseconds.
            let waited = humantime::format_duration(Duration::from_secs(stalled.waited.as_secs()));
            let path = path_text::shown_path(&stalled.path);
            match stalled.open {
                true => warn!(
                    path = %path, vendor = %self.config.vendor,
                    "still open for writing after {waited}: not taken until its writer closes it"
                ),
                false => warn!(
                    path = %path, vendor = %self.config.vendor,
                    "still changing after {waited}: not taken until it stays the same for the settle period"
                ),
            }
        }
    }

    /// How long a path seen gone waits before its removal is decided: a file saved by deleting
    /// and renaming, or moved to another watch, is seen again meanwhile. A poller sees a file
    /// back only at a later poll, so the wait is longer by the slowest sighting of any watch of
    /// the vendor, this one's included.
    fn removal_wait(&self) -> Duration {
        let slowest = self
            .ctx
            .sightings
            .longest(&self.config.vendor)
            .max(self.sighting_delay());
        self.ctx.settle + REMOVAL_GRACE + slowest
    }

    /// How late this watch may see a file arrive: nothing for inotify, a poller's polls and walks.
    fn sighting_delay(&self) -> Duration {
        self.watcher
            .as_ref()
            .and_then(|w| w.poll_interval())
            .map_or(Duration::ZERO, |interval| {
                sighting::poll_delay(interval, self.walk_time)
            })
    }

    /// Tells the other watches how late this one sees a file arrive.
    fn publish_sighting_delay(&self) {
        self.ctx.sightings.set_delay(
            self.root(),
            self.owner,
            &self.config.vendor,
            self.sighting_delay(),
        );
    }

    /// Tells the other watches of the vendor whether this one has files it saw and has not
    /// recorded yet (settling, or a folder to read again): their removals wait for those. A
    /// batch taken from the tracker is examined and recorded before this is asked again.
    fn publish_taking_in(&mut self) {
        self.tell_taking_in(!self.settle.is_empty() || !self.rewalks.is_empty());
    }

    fn tell_taking_in(&mut self, taking_in: bool) {
        if taking_in != self.taking_in {
            self.taking_in = taking_in;
            self.ctx.sightings.set_taking_in(
                self.root(),
                self.owner,
                &self.config.vendor,
                taking_in,
            );
        }
    }

    /// Whether a removal here must wait for new files: this watch's own, which may be its new
    /// name, or another watch's of the vendor, which may be where it went.
    fn intake_pending(&self) -> bool {
        !self.settle.is_empty()
            || self
                .ctx
                .sightings
                .taking_in_elsewhere(&self.config.vendor, self.root())
    }

    /// Examines settled files and records what each is, a batch at a time: the examining off the
    /// executor's threads, the recording in one journal write for the batch.
    async fn take_all(&mut self, paths: Vec<PathBuf>) {
        let mut paths = paths.into_iter().peekable();
        while paths.peek().is_some() {
            let batch: Vec<PathBuf> = paths.by_ref().take(TAKE_BATCH).collect();
            self.take_batch(batch).await;
        }
    }

    async fn take_batch(&mut self, paths: Vec<PathBuf>) {
        let (root, vendor, limits) = (
            self.root().to_path_buf(),
            self.config.vendor.clone(),
            self.limits,
        );
        let examined = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|path| {
                    let examined = examine::examine(&root, &path, &vendor, &limits);
                    (path, examined)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut found = Vec::new();
        for (path, examined) in examined {
            if !matches!(examined, Examined::Unreadable { .. } | Examined::Changing) {
                self.read_retries.cleared(&path);
            }
            match examined {
                Examined::Skip => {}
                Examined::Gone => {
                    self.removals
                        .insert(path, PendingRemoval::new(Instant::now()));
                }
                Examined::Changing => self.settle.touch(&path, Sighting::Closed, Instant::now()),
                Examined::Unreadable { reason, stamp } => match self.read_retries.failed(&path) {
                    // Looked at again once it has been quiet for a settle period.
                    ReadRetry::Again => self.settle.touch(&path, Sighting::Closed, Instant::now()),
                    ReadRetry::GiveUp(tries) => found.push(Found::Refused {
                        reason: format!(
                            "{reason} ({tries} tries, a settle period apart); once it can be read, \
                             run `imgsyncd retry {}`",
                            path_text::for_shell(&path_text::to_text(&path))
                        ),
                        path,
                        stamp,
                    }),
                },
                Examined::Reject { reason, stamp } => found.push(Found::Refused {
                    path,
                    reason,
                    stamp,
                }),
                Examined::Image {
                    stamp,
                    sha256,
                    info,
                } => found.push(Found::Image {
                    path,
                    stamp,
                    sha256,
                    info,
                }),
            }
        }
        if found.is_empty() {
            return;
        }
        let intake = Intake {
            watch_root: self.root_text(),
            vendor: self.config.vendor.clone(),
            kind: self.kind.as_str(),
            delete_unused: self.delete_unused(),
            reuse_copies: self.reuse_copies,
        };
        // Shared with the write, which may run twice (`JournalHandle::write`), for the log lines.
        let found = Arc::new(found);
        let to_record = Arc::clone(&found);
        let recorded = self
            .ctx
            .journal
            .write(move |j| {
                Ok(to_record
                    .iter()
                    .map(|f| intake.record(j, f))
                    .collect::<Vec<_>>())
            })
            .await;
        self.ctx.wake_workers.notify_one();
        let unrecorded: Vec<PathBuf> = match recorded {
            Ok(outcomes) => found
                .iter()
                .zip(outcomes)
                .filter_map(|(found, outcome)| {
                    let recorded = self.log_recorded(found, outcome);
                    (!recorded).then(|| found.path().to_path_buf())
                })
                .collect(),
            Err(e) => {
                crate::diagnose::journal_write_failed("record the files", "", &e);
                found.iter().map(|f| f.path().to_path_buf()).collect()
            }
        };
        if !unrecorded.is_empty() {
            // The journal could not take them (locked, full): they are looked at again later,
            // never forgotten.
            tokio::time::sleep(JOURNAL_RETRY).await;
            for path in unrecorded {
                self.settle.touch(&path, Sighting::Closed, Instant::now());
            }
        }
    }

    /// Puts the files the journal holds for this watch under its `on_remove` and its vendor's
    /// copy sharing as configured now (a watch started, or restarted by a reload that changed
    /// either), in one call to the journal.
    async fn apply_policies(&self) {
        let (root, vendor) = (self.root_text(), self.config.vendor.clone());
        let (delete_unused, reuse) = (self.delete_unused(), self.reuse_copies);
        let applied = self
            .ctx
            .journal
            .call(move |j| {
                let removal = j.apply_remove_policy(&root, &vendor, delete_unused)?;
                Ok::<_, crate::journal::JournalError>((
                    removal,
                    j.apply_reuse_policy(&root, &vendor, reuse)?,
                ))
            })
            .await;
        let watch = self.root().display();
        match applied {
            Ok((removal, sharing)) => {
                if removal > 0 {
                    info!(
                        watch = %watch, files = removal,
                        "on_remove changed: {removal} files' remote copies are {} from now on",
                        if delete_unused { "deleted when unused" } else { "kept" }
                    );
                }
                if sharing > 0 {
                    info!(
                        watch = %watch, files = sharing,
                        "{sharing} files not yet sent {} from now on",
                        if reuse { "may share a remote copy of the same bytes" } else { "are each sent on their own" }
                    );
                }
            }
            Err(e) => error!(
                watch = %watch,
                "cannot apply on_remove and the vendor's copy sharing to the files already \
                 recorded: {}",
                crate::diagnose::journal(&e)
            ),
        }
    }

    /// Whether copies the watch's files leave behind are deleted at the vendor.
    fn delete_unused(&self) -> bool {
        self.kind.can_delete() && self.config.on_remove == OnRemove::Delete
    }

    /// Logs what the journal made of a file; false when it could not record it.
    fn log_recorded(&self, found: &Found, outcome: crate::journal::Result<Recorded>) -> bool {
        let shown = path_text::shown_path(found.path());
        let vendor = &self.config.vendor;
        match outcome {
            Ok(Recorded::Refused { changed }) => {
                if changed {
                    crate::metrics::file_examined(vendor, "rejected");
                    let key = crate::logging::rejections_of(vendor);
                    if crate::logging::storms().check(&key, Instant::now())
                        != crate::throttle::Verdict::Suppress
                        && let Found::Refused { reason, .. } = found
                    {
                        error!(path = %shown, vendor = %vendor, outcome = "rejected", "rejected: {reason}");
                    }
                }
            }
            Ok(Recorded::Image(observed)) => log_observed(found, vendor, observed),
            Err(e) => {
                crate::diagnose::journal_write_failed("record the file", &shown.to_string(), &e);
                return false;
            }
        }
        true
    }

    /// Acts on files gone from disk. Only a file that is really gone (not unreadable, not on an
    /// unmounted filesystem) loses its remote copy, and the journal's guards may still hold it.
    async fn process_removals(&mut self, due: Vec<(PathBuf, PendingRemoval)>) {
        match self.check_root().await {
            RootState::Missing => return,
            RootState::Usable { .. } => {}
        }
        let candidates: Vec<(PathBuf, Option<String>)> = due
            .iter()
            .map(|(p, r)| (p.clone(), r.hold.clone()))
            .collect();
        let lookup: Vec<String> = candidates
            .iter()
            .map(|(p, _)| path_text::to_text(p).into_owned())
            .collect();
        let known = match self
            .ctx
            .journal
            .call(move |j| -> crate::journal::Result<Vec<KnownFile>> {
                let mut known = Vec::new();
                for path in &lookup {
                    known.extend(j.known_under(path)?);
                    known.extend(j.known_file(path)?);
                }
                // `rm -rf sub` reports each file and then `sub`: every file is found twice (more
                // when nested), and counted twice by the guards on how much may go at once.
                known.sort_unstable_by(|a, b| a.path.cmp(&b.path));
                known.dedup_by(|a, b| a.path == b.path);
                Ok(known)
            })
            .await
        {
            Ok(known) => known,
            Err(e) => {
                error!(watch = %self.root().display(), "cannot read the journal (will try again): {e}");
                // Decided again a wait later, not at once: the journal may stay unreadable a while.
                let now = Instant::now();
                self.removals
                    .extend(due.into_iter().map(|(path, mut removal)| {
                        removal.since = now;
                        (path, removal)
                    }));
                return;
            }
        };
        let watch = self.config.clone();
        let looked = tokio::task::spawn_blocking(move || look_at_known(&watch, known))
            .await
            .unwrap_or_default();
        // The hold a removal came with (a folder found empty), which a retry keeps; the root's
        // trouble and a search cut short are looked at again by then.
        let came_with = |path: &str| {
            let path = path_text::to_path(path);
            candidates
                .iter()
                .filter(|(c, _)| path.starts_with(c))
                .find_map(|(_, hold)| hold.clone())
        };
        let hold_of = |path: &str| came_with(path).or_else(|| self.replaced.clone());
        let mut gone: HashMap<Option<String>, Vec<String>> = HashMap::new();
        let mut untaken = Vec::new();
        let mut unknown: HashMap<String, Vec<String>> = HashMap::new();
        for (path, whereabouts) in looked {
            match whereabouts {
                Whereabouts::Gone => gone.entry(hold_of(&path)).or_default().push(path),
                Whereabouts::Unsure(why) => gone.entry(Some(why)).or_default().push(path),
                Whereabouts::Untaken(now_at) => untaken.push((path, now_at)),
                Whereabouts::Present => {}
                Whereabouts::Unknown(why) => unknown.entry(why).or_default().push(path),
            }
        }
        self.say_unknown(unknown);
        let with_holds = |paths: Vec<String>| -> Vec<(String, Option<String>)> {
            paths
                .into_iter()
                .map(|p| {
                    let hold = came_with(&p);
                    (p, hold)
                })
                .collect()
        };
        let mut again = Vec::new();
        if !untaken.is_empty() {
            let paths: Vec<String> = untaken.iter().map(|(path, _)| path.clone()).collect();
            if !self.record_untaken(untaken).await {
                again.extend(with_holds(paths));
            }
        }
        for (hold, paths) in gone {
            if !self.record_removals(paths.clone(), hold).await {
                again.extend(with_holds(paths));
            }
        }
        self.removals_again(again);
        self.ctx.wake_workers.notify_one();
    }

    /// Paths whose removal the journal could not record: decided again later, each still held
    /// for the hold it came with (a folder found empty is not looked at again by then).
    /// One line a reason for the files whose absence proves nothing (a share unmounted under the
    /// watch takes thousands at once): how many, and the first.
    fn say_unknown(&self, unknown: HashMap<String, Vec<String>>) {
        for (why, paths) in unknown {
            match paths.as_slice() {
                [path] => warn!(
                    path = %path_text::shown(path), vendor = %self.config.vendor,
                    "cannot tell whether the file is gone ({why}); its remote copy is kept"
                ),
                [first, ..] => warn!(
                    path = %path_text::shown(first), vendor = %self.config.vendor,
                    "cannot tell whether {} files are gone ({why}; the first: {}); their remote \
                     copies are kept",
                    paths.len(),
                    path_text::shown(first)
                ),
                [] => {}
            }
        }
    }

    fn removals_again(&mut self, paths: Vec<(String, Option<String>)>) {
        let now = Instant::now();
        self.removals.extend(paths.into_iter().map(|(p, hold)| {
            let mut removal = PendingRemoval::new(now);
            removal.hold = hold;
            (path_text::to_path(&p).into_owned(), removal)
        }));
    }

    /// Records files renamed to names (or moved into folders) the watch does not take: their
    /// copies are kept. False when the journal could not record them.
    async fn record_untaken(&self, untaken: Vec<(String, String)>) -> bool {
        let result = self
            .ctx
            .journal
            .call(move |j| {
                j.mark_untaken(&untaken)
                    .map(|outcomes| outcomes.into_iter().zip(untaken).collect::<Vec<_>>())
            })
            .await;
        let Some(outcomes) = self.removals_recorded(result) else {
            return false;
        };
        for ((path, outcome), (_, now_at)) in outcomes {
            let (path, now_at) = (path_text::shown(&path), path_text::shown(&now_at));
            let vendor = &self.config.vendor;
            match outcome {
                MissingOutcome::Untaken => info!(
                    path = %path, vendor = %vendor,
                    "renamed to {now_at}, which the watch does not take: its remote copy is kept"
                ),
                MissingOutcome::Removed => info!(
                    path = %path, vendor = %vendor,
                    "renamed to {now_at}, which the watch does not take: removed, no copy to keep"
                ),
                _ => {}
            }
        }
        true
    }

    /// What the journal said of removals recorded, or none (said in the log) when it could not
    /// record them: they are decided again later.
    fn removals_recorded<T>(&self, result: crate::journal::Result<T>) -> Option<T> {
        result
            .inspect_err(|e| {
                error!(watch = %self.root().display(), "cannot record removals (will try again): {e}")
            })
            .ok()
    }

    /// Records removals in the journal, which decides each one; false when it could not.
    async fn record_removals(&self, paths: Vec<String>, hold: Option<String>) -> bool {
        let watch_root = self.root_text();
        let policy = match self.config.on_remove {
            OnRemove::Delete if self.kind.can_delete() => RemovalPolicy::Delete,
            _ => RemovalPolicy::Keep,
        };
        let max_deletes = self.ctx.max_deletes;
        let result = self
            .ctx
            .journal
            .call(move |j| {
                j.mark_missing(&RemovalBatch {
                    watch_root: &watch_root,
                    paths: &paths,
                    policy,
                    max_deletes,
                    window_ms: REMOVAL_WINDOW.as_millis() as i64,
                    hold: hold.as_deref(),
                })
            })
            .await;
        let Some(outcomes) = self.removals_recorded(result) else {
            return false;
        };
        let held: Vec<&String> = outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                MissingOutcome::Held(reason) => Some(reason),
                _ => None,
            })
            .collect();
        if let Some(reason) = held.first() {
            warn!(
                watch = %self.root().display(), held = held.len(),
                "{} files vanished and their deletes are held: {reason}", held.len()
            );
        }
        for (path, outcome) in outcomes {
            let vendor = &self.config.vendor;
            let path = path_text::shown(&path);
            match outcome {
                MissingOutcome::DeleteQueued => {
                    info!(path = %path, vendor = %vendor, "removed from disk: delete queued")
                }
                MissingOutcome::Removed => info!(path = %path, vendor = %vendor, "removed"),
                MissingOutcome::Shared { with } => info!(
                    path = %path, vendor = %vendor,
                    "removed; remote copy kept because {} still uses it", path_text::shown(&with)
                ),
                MissingOutcome::NotTracked
                | MissingOutcome::Unchanged
                | MissingOutcome::Held(_)
                | MissingOutcome::Untaken => {}
            }
        }
        true
    }

    /// [`WatchTask::reconcile`] after events were lost (a watcher replaced, whose queue is
    /// dropped; an overflow; a watch error), closes among them: what the walk finds counts as
    /// closed, or a file tracked open would wait for a close for good.
    async fn reconcile_after_lost_events(&mut self) {
        self.settle.forget_open();
        self.reconcile(Sighting::Closed).await;
    }

    /// Compares the folder with the journal: new and changed files are taken (at once when they
    /// are already quiet, else through the settle tracker), vanished ones go to the removals.
    /// `sighting` is how the files found count for the tracker. Both sides are read a batch at a
    /// time, so a big watch is never held in memory whole.
    pub async fn reconcile(&mut self, sighting: Sighting) {
        if let RootState::Missing = self.check_root().await {
            return;
        }
        // What the walk finds is neither settling nor recorded yet until it is taken.
        self.tell_taking_in(true);
        let root = self.root().to_path_buf();
        let Some(disk) = self
            .compare_folder(&root, sighting, walk::Reach::Tree)
            .await
        else {
            return;
        };
        self.walk_time = disk.walk_time;
        self.publish_sighting_delay();
        let (on_disk, fresh) = (disk.on_disk, disk.fresh);
        let vanished = self.reconcile_journal(disk).await;
        info!(
            watch = %self.root().display(),
            on_disk, new_or_changed = fresh, vanished,
            "reconciled with the journal"
        );
    }

    /// What is on disk under `dir`, a batch at a time, against what the journal holds at those
    /// paths: new and changed files are taken at once when already quiet, else tracked as
    /// `sighting`. A file the tracker already follows is left to it, unless events were lost
    /// (`Closed`: what the scan finds counts as closed).
    async fn compare_folder(
        &mut self,
        dir: &Path,
        sighting: Sighting,
        reach: walk::Reach,
    ) -> Option<DiskPass> {
        // What the walk finds is read, hashed and recorded before the watch's loop comes round
        // again: a folder of large photos moved here from another watch of the vendor takes
        // seconds, and that watch must not decide their removal meanwhile.
        self.tell_taking_in(true);
        let (found, mut batches) = mpsc::channel(2);
        let (root, walked, config) = (
            self.root().to_path_buf(),
            dir.to_path_buf(),
            self.config.clone(),
        );
        let watching = self.watcher.clone();
        // The walk's own time, without its waits for the batches to be taken: a poll of the tree
        // takes as long (what the watch does with each batch is no part of it). On a thread of its
        // own, not the runtime's blocking pool: a walk waits for its batches to be taken, which
        // takes the journal, which runs on that pool; eight watches walking at once held all
        // eight of its threads, and every journal call waited for good.
        let (timed, walk_time) = tokio::sync::oneshot::channel();
        let walk = move || {
            let watching = watching.as_deref();
            let (began, mut handing_over) = (Instant::now(), Duration::ZERO);
            walk::in_batches(
                &root,
                &walked,
                &config,
                watching,
                reach,
                RECONCILE_BATCH,
                |batch| {
                    let handed = Instant::now();
                    let taken = found.blocking_send(batch).is_ok();
                    handing_over += handed.elapsed();
                    taken
                },
            );
            let _ = timed.send(began.elapsed().saturating_sub(handing_over));
        };
        if let Err(e) = std::thread::Builder::new()
            .name("imgsyncd-walk".into())
            .spawn(walk)
        {
            // Nothing was walked: not an empty folder.
            error!(watch = %self.root().display(), "cannot start a thread to read the folder: {e}");
            return None;
        }
        // A walk of the whole tree knows most files unchanged from one read of the journal, made
        // while the walk begins: only the others are looked up one by one. A record another watch
        // takes over meanwhile (a file moved there) still counts present here, as one looked up
        // just before the move did: a file gone while the daemon was down may then wait for the
        // next rescan to be found gone.
        let settled = match dir == self.root() && reach == walk::Reach::Tree {
            true => self.known_stamps().await,
            false => None,
        };
        let mut pass = DiskPass::default();
        let mut failed = false;
        while let Some(mut batch) = batches.recv().await {
            pass.on_disk += batch.len();
            if let Some(settled) = &settled {
                let found = batch.len();
                batch.retain(|(path, stamp)| !settled.contains(&path_text::to_text(path), stamp));
                pass.known_present += found - batch.len();
                if batch.is_empty() {
                    continue;
                }
            }
            // The batch goes to the journal's thread and back, so no path is copied to be looked up.
            let looked_up = self.ctx.journal.call(move |j| {
                let paths: Vec<_> = batch.iter().map(|(p, _)| path_text::to_text(p)).collect();
                let known = j.known_files(&paths);
                drop(paths);
                known.map(|known| (batch, known))
            });
            let (batch, known) = match looked_up.await {
                Ok(looked_up) => looked_up,
                Err(e) => {
                    error!(watch = %self.root().display(), "cannot read the journal: {e}");
                    failed = true;
                    break;
                }
            };
            let now = Instant::now();
            let mut quiet = Vec::new();
            let mut look_again = false;
            for ((path, stamp), known) in batch.into_iter().zip(known) {
                // A record renamed out of the watch's names is left out of the count on both
                // sides, even when found back at its path: `look_at_untaken` looks at those.
                if known
                    .as_ref()
                    .is_some_and(|k| !k.removal_pending && !k.untaken)
                {
                    pass.known_present += 1;
                }
                if known.is_some_and(|k| k.unchanged(&stamp)) {
                    continue;
                }
                pass.fresh += 1;
                self.removals.remove(&path);
                if self.settle.contains(&path) {
                    if sighting == Sighting::Closed {
                        self.settle.touch(&path, sighting, now);
                    }
                } else if self.settle.seen_open(&path) {
                    // Still being written, however quiet it looks: taken only after its close,
                    // whose event asks for another look if there is no room to track it now.
                    if self.settle.has_room() {
                        self.settle.touch(&path, Sighting::Open, now);
                    }
                } else if quiet_for(&stamp, self.ctx.settle) {
                    // No event said it is open, and it has been untouched for the settle period
                    // already: the tracker would only wait to see what its stamp already says.
                    quiet.push(path);
                } else if self.settle.has_room() {
                    self.settle.touch(&path, sighting, now);
                } else {
                    look_again = true;
                }
            }
            if look_again {
                self.look_again(dir, now + self.ctx.settle, reach);
            }
            self.take_all(quiet).await;
        }
        drop(batches);
        pass.walk_time = walk_time.await.unwrap_or_default();
        (!failed).then_some(pass)
    }

    /// The journal's settled files under the root, for a walk of the whole tree. None when the
    /// journal holds too many to keep in memory or cannot be read: each file is then looked up,
    /// and those lookups say what is wrong.
    async fn known_stamps(&self) -> Option<KnownStamps> {
        let root = self.root_text();
        self.ctx
            .journal
            .call(move |j| j.known_stamps(&root, KNOWN_STAMPS_LIMIT))
            .await
            .ok()
            .flatten()
    }

    /// Looks at the files renamed out of the watch's names, which a walk does not see: one back
    /// at its path as it was is an ordinary record again; one no longer where it was last found
    /// (a trash emptied, renamed again) goes to the removals, which look for it again before
    /// anything is deleted. Returns how many went.
    async fn look_at_untaken(&mut self, root: &str, hold: Option<String>) -> usize {
        let r = root.to_string();
        let untaken = match self.ctx.journal.call(move |j| j.untaken_under(&r)).await {
            Ok(untaken) if !untaken.is_empty() => untaken,
            Ok(_) => return 0,
            Err(e) => {
                error!(watch = %root, "cannot read the journal: {e}");
                return 0;
            }
        };
        fn exists(path: &str) -> bool {
            std::fs::symlink_metadata(path_text::to_path(path)).is_ok()
        }
        // Still where it was found: the same file (another may have taken its name since).
        fn still_there(file: &UntakenFile) -> bool {
            match &file.stamp {
                Some(stamp) => untaken::same_file(&path_text::to_path(&file.place), stamp),
                None => exists(&file.place),
            }
        }
        let looked = tokio::task::spawn_blocking(move || {
            let (mut back, mut moved_on) = (Vec::new(), Vec::new());
            for file in untaken {
                match exists(&file.path) {
                    true => back.push(file.path),
                    false if !still_there(&file) => moved_on.push(file.path),
                    false => {}
                }
            }
            (back, moved_on)
        });
        let (back, moved_on) = looked.await.unwrap_or_default();
        if !back.is_empty()
            && let Err(e) = self.ctx.journal.call(move |j| j.untaken_back(&back)).await
        {
            crate::diagnose::journal_write_failed("note files back at their paths", root, &e);
        }
        let now = Instant::now();
        let went = moved_on.len();
        for path in moved_on {
            self.vanished(path_text::to_path(&path).into_owned(), now, &hold);
        }
        went
    }

    /// The files the journal holds under the root that are gone from disk, a page at a time:
    /// each becomes a pending removal, decided later with its guards. Returns how many vanished.
    async fn reconcile_journal(&mut self, disk: DiskPass) -> usize {
        let root = self.root_text();
        let r = root.clone();
        let present = match self
            .ctx
            .journal
            .call(move |j| j.count_present_under(&r))
            .await
        {
            Ok(present) => present,
            Err(e) => {
                error!(watch = %root, "cannot read the journal: {e}");
                return 0;
            }
        };
        // A known root found empty is an unmounted share or a mistake far more often than a
        // folder emptied on purpose: its removals wait for an operator.
        // With only files renamed out of its names known, the folder must hold nothing at all:
        // a flat watch whose files were all filed into `done/` finds none it takes every time.
        let bare = || std::fs::read_dir(self.root()).is_ok_and(|mut e| e.next().is_none());
        let empty = disk.on_disk == 0 && (present > 0 || bare());
        let hold = empty.then(|| match present {
            0 => "the watch folder is empty, but the journal knows files renamed out of its names \
                  in it (an unmounted share?)"
                .to_string(),
            n => format!(
                "the watch folder is empty, but the journal knows {n} files in it (an unmounted share?)"
            ),
        });
        // Counted as the walk saw them, before any is found back.
        let mut vanished = self.look_at_untaken(&root, hold.clone()).await;
        if disk.known_present >= present {
            // Every file the journal holds here was found on disk: nothing vanished, and the
            // journal's side needs no reading.
            return vanished;
        }
        let now = Instant::now();
        let mut after = String::new();
        loop {
            let (r, a) = (root.clone(), after.clone());
            let page = match self
                .ctx
                .journal
                .call(move |j| j.known_under_page(&r, &a, RECONCILE_BATCH))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    error!(watch = %root, "cannot read the journal: {e}");
                    break;
                }
            };
            let Some(last) = page.last() else {
                break;
            };
            after = last.path.clone();
            // Anything but "it is there" is for the removal to decide (gone, unreadable, unmounted).
            // Files renamed out of the watch's names were looked at where they are now.
            let missing = tokio::task::spawn_blocking(move || {
                page.into_iter()
                    .map(|k| {
                        let skip = k.removal_pending || k.untaken;
                        (skip, path_text::to_path(&k.path).into_owned())
                    })
                    .filter(|(skip, path)| !skip && std::fs::symlink_metadata(path).is_err())
                    .map(|(_, path)| path)
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            vanished += missing.len();
            for path in missing {
                self.vanished(path, now, &hold);
            }
        }
        vanished
    }

    /// A path a reconcile found gone: a pending removal since `now`, unless one is pending
    /// already, held for `hold` if there is one.
    fn vanished(&mut self, path: PathBuf, now: Instant, hold: &Option<String>) {
        let removal = self
            .removals
            .entry(path)
            .or_insert(PendingRemoval::new(now));
        if hold.is_some() {
            removal.hold = hold.clone();
        }
    }

    /// A one-shot scan's files still settling: each taken once quiet for the settle period, as
    /// the daemon would (taken at once, one still being copied was read half). Those still
    /// changing after [`SCAN_SETTLE_PERIODS`] settle periods are taken as they are: the bytes
    /// read are checked whole, and a file that changed while read is left for the next pass.
    async fn take_settling(&mut self) {
        let limit = Instant::now() + self.ctx.settle * SCAN_SETTLE_PERIODS;
        while let Some(due) = self.settle.next_deadline() {
            if due > limit {
                break;
            }
            sleep_until(Some(due)).await;
            let ready = self.settle.take_ready(Instant::now(), examine::look);
            self.take_all(ready).await;
        }
        let unsettled = self.settle.drain();
        if !unsettled.is_empty() {
            warn!(
                watch = %self.root().display(), files = unsettled.len(),
                "{} files were still changing after {} settle periods: taken as they are",
                unsettled.len(), SCAN_SETTLE_PERIODS
            );
        }
        self.take_all(unsettled).await;
    }

    /// One pass for `imgsyncd scan`: reconcile, then take every file once settled, and every
    /// removal at once.
    pub async fn scan_once(&mut self) {
        self.reconcile(Sighting::Scanned).await;
        self.take_settling().await;
        // A scan tracks a bounded number of files still settling and leaves the rest for a
        // second look (settle::CAPACITY); a one-shot scan takes those now, a tracker's worth
        // at a time, until a look finds nothing more.
        while !self.rewalks.is_empty() {
            for rewalk in std::mem::take(&mut self.rewalks) {
                self.rewalk_folder(rewalk).await;
                self.take_settling().await;
            }
        }
        let removals: Vec<(PathBuf, PendingRemoval)> = self.removals.drain().collect();
        if !removals.is_empty() {
            self.process_removals(removals).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_read_is_looked_at_again_before_it_is_refused() {
        let mut retries = ReadRetries::default();
        let (a, b) = (Path::new("/w/a.png"), Path::new("/w/b.png"));
        for _ in 1..READ_TRIES {
            assert_eq!(retries.failed(a), ReadRetry::Again);
        }
        assert_eq!(retries.failed(b), ReadRetry::Again);
        assert_eq!(retries.failed(a), ReadRetry::GiveUp(READ_TRIES));
        assert!(!retries.0.contains_key(a), "refused, it is forgotten");
        // Read once, the count starts again.
        retries.cleared(b);
        for _ in 1..READ_TRIES {
            assert_eq!(retries.failed(b), ReadRetry::Again);
        }
    }
}
