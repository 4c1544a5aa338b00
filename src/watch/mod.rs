//! Watching one drop folder: filesystem events (inotify, or polling for network shares) are hints;
//! every start, overflow, failed watch and periodic rescan reconciles the folder against the journal.

mod events;
pub mod examine;
pub mod settle;
mod walk;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::{error, info, warn};

use crate::config::{OnRemove, VendorKind, WatchConfig};
use crate::journal::{JournalHandle, MissingOutcome, Observation, Observed, RejectedFile, Removal};
use crate::vendor::Limits;
use examine::Examined;
use settle::Settle;

/// The journal records paths as text: a name that is not UTF-8 could not be found again, so it is
/// skipped, with a line that says how to make it acceptable.
fn utf8_or_warn(path: &Path) -> bool {
    if path.to_str().is_some() {
        return true;
    }
    warn!(
        path = %path.display(),
        "skipped: the name is not valid UTF-8; rename the file to sync it"
    );
    false
}

/// What a watch task shares with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct WatchContext {
    pub journal: JournalHandle,
    /// Woken when work is queued.
    pub wake_workers: Arc<Notify>,
    pub settle: Duration,
    pub rescan: Duration,
    pub max_deletes: usize,
}

#[derive(Debug)]
pub enum WatchCommand {
    Rescan,
    Stop,
}

/// A removal is acted on this long after the settle period, so a rename's new name is seen first.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);
/// Removals wait for pending new files (which may be their new names) at most this long.
const REMOVAL_MAX_WAIT: Duration = Duration::from_secs(60);
const ROOT_CHECK: Duration = Duration::from_secs(2);

pub struct WatchTask {
    config: WatchConfig,
    ctx: WatchContext,
    kind: VendorKind,
    limits: Limits,
    settle: Settle,
    removals: HashMap<PathBuf, Instant>,
    /// The root's device when the watch started: a different one means it was unmounted.
    root_dev: Option<u64>,
    paused: Option<String>,
}

impl WatchTask {
    pub fn new(config: WatchConfig, ctx: WatchContext, kind: VendorKind, limits: Limits) -> Self {
        let settle = Settle::new(ctx.settle);
        WatchTask {
            config,
            ctx,
            kind,
            limits,
            settle,
            removals: HashMap::new(),
            root_dev: None,
            paused: None,
        }
    }

    fn root(&self) -> &Path {
        &self.config.path
    }

    /// Runs until told to stop: events, settle ticks, periodic rescans, root checks.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WatchCommand>) {
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = None;
        if self.check_root() {
            watcher = self.start_watcher(&event_tx);
            self.reconcile().await;
        }
        let tick_period =
            (self.ctx.settle / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut tick = tokio::time::interval(tick_period);
        let mut rescan = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ctx.rescan,
            self.ctx.rescan,
        );
        let mut root_check = tokio::time::interval(ROOT_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set once inotify ran out of watches and polling took over; later failures queued by the
        // old watcher are only rescans.
        let mut polling_fallback = false;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(WatchCommand::Rescan) => self.reconcile().await,
                    Some(WatchCommand::Stop) | None => break,
                },
                Some(event) = events.recv() => match event {
                    events::WatchEvent::Failed { why } if !polling_fallback => {
                        polling_fallback = true;
                        error!(
                            watch = %self.root().display(),
                            "inotify cannot cover the folder any more: {why}; polling it every {} instead",
                            humantime::format_duration(events::FALLBACK_POLL)
                        );
                        watcher = events::start(&self.config, Some(events::FALLBACK_POLL), event_tx.clone()).ok();
                        self.reconcile().await;
                    }
                    event => self.on_event(event).await,
                },
                _ = tick.tick() => self.on_tick().await,
                _ = rescan.tick() => self.reconcile().await,
                _ = root_check.tick() => {
                    let was_paused = self.paused.is_some();
                    let ok = self.check_root();
                    if !ok {
                        watcher = None;
                    } else if was_paused {
                        watcher = self.start_watcher(&event_tx);
                        self.reconcile().await;
                    }
                }
            }
        }
        drop(watcher);
        if self.paused.is_some() {
            let root = self.root().display().to_string();
            let _ = self.ctx.journal.call(move |j| j.resume_watch(&root)).await;
        }
    }

    /// Whether the root is there and is the filesystem the watch started on; pauses or resumes.
    fn check_root(&mut self) -> bool {
        let problem = match std::fs::metadata(self.root()) {
            Ok(meta) if meta.is_dir() => match self.root_dev {
                Some(dev) if dev != meta.dev() => Some(format!(
                    "it is now on another filesystem (device {} instead of {dev}): unmounted? \
                     Reload (SIGHUP) to accept the new filesystem",
                    meta.dev()
                )),
                _ => {
                    self.root_dev = Some(meta.dev());
                    None
                }
            },
            Ok(_) => Some("it is not a folder".to_string()),
            Err(e) => Some(e.to_string()),
        };
        match (problem, self.paused.take()) {
            (None, Some(_)) => {
                info!(watch = %self.root().display(), "watch root is back; resuming and rescanning");
                self.record_pause(None);
                true
            }
            (None, None) => true,
            (Some(problem), None) => {
                error!(
                    watch = %self.root().display(),
                    "watch root unavailable ({problem}); watch paused, no removals are trusted until it is back"
                );
                self.settle = Settle::new(self.ctx.settle);
                self.removals.clear();
                self.record_pause(Some(problem.clone()));
                self.paused = Some(problem);
                false
            }
            (Some(problem), Some(_)) => {
                self.paused = Some(problem);
                false
            }
        }
    }

    /// Tells the journal (and so `status`) that the watch paused (`Some(reason)`) or resumed.
    fn record_pause(&self, reason: Option<String>) {
        let journal = self.ctx.journal.clone();
        let root = self.root().display().to_string();
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
        });
    }

    /// Starts the watch's event source; when inotify cannot be set up, polling takes its place.
    fn start_watcher(
        &self,
        tx: &mpsc::UnboundedSender<events::WatchEvent>,
    ) -> Option<Box<dyn notify::Watcher + Send>> {
        let error = match events::start(&self.config, self.config.poll, tx.clone()) {
            Ok(watcher) => return Some(watcher),
            Err(e) => e,
        };
        if self.config.poll.is_some() {
            error!(watch = %self.root().display(), "cannot poll the folder: {}; relying on rescans", events::explain(&error));
            return None;
        }
        match events::start(&self.config, Some(events::FALLBACK_POLL), tx.clone()) {
            Ok(watcher) => {
                error!(
                    watch = %self.root().display(),
                    "cannot watch the folder with inotify: {}; polling it every {} instead",
                    events::explain(&error),
                    humantime::format_duration(events::FALLBACK_POLL)
                );
                Some(watcher)
            }
            Err(poll_error) => {
                error!(
                    watch = %self.root().display(),
                    "cannot watch the folder: {}; nor poll it: {}; relying on rescans every {}",
                    events::explain(&error),
                    events::explain(&poll_error),
                    humantime::format_duration(self.ctx.rescan)
                );
                None
            }
        }
    }

    async fn on_event(&mut self, event: events::WatchEvent) {
        if self.paused.is_some() {
            return;
        }
        match event {
            events::WatchEvent::Seen { path, closed } => self.seen(&path, closed).await,
            events::WatchEvent::Gone { path } => self.gone(&path),
            events::WatchEvent::Rescan { why } | events::WatchEvent::Failed { why } => {
                warn!(watch = %self.root().display(), "{why}; reconciling the whole folder");
                self.reconcile().await;
            }
        }
    }

    fn relative<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        path.strip_prefix(self.root())
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    async fn seen(&mut self, path: &Path, closed: Option<bool>) {
        let Some(relative) = self.relative(path) else {
            return;
        };
        if !utf8_or_warn(path) {
            return;
        }
        self.removals.remove(path);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && self.config.recursive => {
                // A folder created or moved in: notify watches it from now on, but what it already
                // holds produced no events. A big tree is walked off the executor's threads.
                let (root, dir, config) = (
                    self.root().to_path_buf(),
                    path.to_path_buf(),
                    self.config.clone(),
                );
                let files = tokio::task::spawn_blocking(move || walk::files(&root, &dir, &config))
                    .await
                    .unwrap_or_default();
                for (file, _) in files {
                    self.removals.remove(&file);
                    self.settle.touch(&file, Some(true), Instant::now());
                }
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if self.config.filter.accepts(relative) => {
                // Only regular files are written and closed; anything else is complete as it is.
                // So is a hard link to an existing file: linking it in writes nothing.
                let complete = !meta.is_file() || meta.nlink() > 1;
                let closed = if complete { Some(true) } else { closed };
                self.settle.touch(path, closed, Instant::now());
            }
            _ => {}
        }
    }

    fn gone(&mut self, path: &Path) {
        if self.relative(path).is_none() {
            return;
        }
        self.settle.forget_under(path);
        self.removals.insert(path.to_path_buf(), Instant::now());
    }

    async fn on_tick(&mut self) {
        if self.paused.is_some() {
            return;
        }
        let ready = self.settle.take_ready(Instant::now(), examine::stat);
        for path in ready {
            self.take(path).await;
        }
        let now = Instant::now();
        let waited_enough = |t: &Instant| now.duration_since(*t) >= self.ctx.settle + REMOVAL_GRACE;
        let overdue = self
            .removals
            .values()
            .any(|t| now.duration_since(*t) >= REMOVAL_MAX_WAIT);
        if self.settle.is_empty() || overdue {
            let due: Vec<PathBuf> = self
                .removals
                .iter()
                .filter(|(_, t)| waited_enough(t))
                .map(|(p, _)| p.clone())
                .collect();
            if !due.is_empty() {
                for path in &due {
                    self.removals.remove(path);
                }
                self.process_removals(due).await;
            }
        }
    }

    /// Examines a settled file and records what it is.
    async fn take(&mut self, path: PathBuf) {
        let root = self.root().to_path_buf();
        let vendor = self.config.vendor.clone();
        let limits = self.limits;
        let examined = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || examine::examine(&root, &path, &vendor, &limits))
                .await
                .unwrap_or(Examined::Skip)
        };
        match examined {
            Examined::Skip => {}
            Examined::Gone => {
                self.removals.insert(path, Instant::now());
            }
            Examined::Changing => self.settle.touch(&path, Some(true), Instant::now()),
            Examined::Reject { reason, stamp } => self.record_rejection(path, reason, stamp).await,
            Examined::Image {
                stamp,
                sha256,
                info,
            } => self.record_image(path, stamp, sha256, info).await,
        }
    }

    async fn record_rejection(&self, path: PathBuf, reason: String, stamp: Option<settle::Stamp>) {
        let watch_root = self.root().display().to_string();
        let vendor = self.config.vendor.clone();
        let kind = self.kind.as_str();
        let delete_replaced = self.delete_replaced();
        let path_text = path.display().to_string();
        let log_reason = reason.clone();
        let result = self
            .ctx
            .journal
            .call(move |j| {
                j.reject(&RejectedFile {
                    path: &path_text,
                    watch_root: &watch_root,
                    vendor: &vendor,
                    kind,
                    size: stamp.map(|s| s.0),
                    mtime_ns: stamp.map(|s| s.1),
                    reason: &reason,
                    delete_replaced,
                })
            })
            .await;
        match result {
            Ok(true) => {
                warn!(path = %path.display(), vendor = %self.config.vendor, "rejected: {log_reason}")
            }
            Ok(false) => {}
            Err(e) => error!(path = %path.display(), "cannot record the rejection: {e}"),
        }
        self.ctx.wake_workers.notify_one();
    }

    fn delete_replaced(&self) -> bool {
        self.kind.can_delete() && self.config.on_remove == OnRemove::Delete
    }

    async fn record_image(
        &self,
        path: PathBuf,
        stamp: settle::Stamp,
        sha256: String,
        info: crate::image::ImageInfo,
    ) {
        let watch_root = self.root().display().to_string();
        let vendor = self.config.vendor.clone();
        let kind = self.kind.as_str();
        let delete_replaced = self.delete_replaced();
        let path_text = path.display().to_string();
        let result = self
            .ctx
            .journal
            .call(move |j| {
                let observation = Observation {
                    path: &path_text,
                    watch_root: &watch_root,
                    vendor: &vendor,
                    kind,
                    size: stamp.0,
                    mtime_ns: stamp.1,
                    sha256: &sha256,
                    format: info.format.mime_subtype(),
                    width: info.width,
                    height: info.height,
                    delete_replaced,
                };
                j.observe(&observation, &|p| std::fs::symlink_metadata(p).is_ok())
            })
            .await;
        let shown = path.display();
        let vendor = &self.config.vendor;
        match result {
            Ok(Observed::Unchanged) => {}
            Ok(Observed::Queued) => info!(
                path = %shown, vendor = %vendor, size = stamp.0, format = %info.format,
                "taken: queued for upload"
            ),
            Ok(Observed::Changed) => info!(
                path = %shown, vendor = %vendor, size = stamp.0,
                "content changed: queued for upload, the old remote copy is replaced"
            ),
            Ok(Observed::Moved { from }) => info!(
                path = %shown, vendor = %vendor, from = %from,
                "renamed: record moved, nothing sent"
            ),
            Ok(Observed::Restored) => info!(
                path = %shown, vendor = %vendor,
                "back before its removal was carried out: removal cancelled"
            ),
            Err(e) => error!(path = %shown, "cannot record the file: {e}"),
        }
        self.ctx.wake_workers.notify_one();
    }

    /// Acts on files gone from disk; more than `max_deletes` at once are held for an operator.
    async fn process_removals(&mut self, paths: Vec<PathBuf>) {
        if !self.check_root() {
            return;
        }
        let gone: Vec<String> = paths
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .map(|p| p.display().to_string())
            .collect();
        if gone.is_empty() {
            return;
        }
        let on_remove = self.config.on_remove;
        let max_deletes = self.ctx.max_deletes;
        let result = self
            .ctx
            .journal
            .call(move |j| -> crate::journal::Result<Vec<(String, MissingOutcome)>> {
                let mut targets = Vec::new();
                for path in &gone {
                    for known in j.known_under(path)? {
                        if !known.removal_pending {
                            targets.push(known.path);
                        }
                    }
                    targets.push(path.clone());
                }
                targets.sort();
                targets.dedup();
                let hold = on_remove == OnRemove::Delete && targets.len() > max_deletes;
                let removal = match (on_remove, hold) {
                    (OnRemove::Keep, _) => Removal::Keep,
                    (OnRemove::Delete, false) => Removal::Delete,
                    (OnRemove::Delete, true) => Removal::Hold(format!(
                        "removal held: {} files vanished at once (more than max_deletes = {max_deletes}); \
                         run `imgsyncd retry --held` to delete them at the vendor",
                        targets.len()
                    )),
                };
                targets
                    .into_iter()
                    .map(|path| j.mark_missing(&path, &removal).map(|o| (path, o)))
                    .collect()
            })
            .await;
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                error!(watch = %self.root().display(), "cannot record removals: {e}");
                return;
            }
        };
        let held = outcomes
            .iter()
            .filter(|(_, o)| *o == MissingOutcome::Held)
            .count();
        if held > 0 {
            warn!(
                watch = %self.root().display(), held,
                "{held} files vanished at once (more than max_deletes = {}); their deletes are held: \
                 check the folder, then run `imgsyncd retry --held` to delete them at the vendor",
                self.ctx.max_deletes
            );
        }
        for (path, outcome) in outcomes {
            match outcome {
                MissingOutcome::DeleteQueued => {
                    info!(path = %path, vendor = %self.config.vendor, "removed from disk: delete queued")
                }
                MissingOutcome::Removed => {
                    info!(path = %path, vendor = %self.config.vendor, "removed")
                }
                MissingOutcome::Shared { with } => info!(
                    path = %path, vendor = %self.config.vendor,
                    "removed; remote copy kept because {with} still uses it"
                ),
                MissingOutcome::Deferred => info!(
                    path = %path, vendor = %self.config.vendor,
                    "removed while uploading: handled when the upload ends"
                ),
                MissingOutcome::NotTracked | MissingOutcome::Unchanged | MissingOutcome::Held => {}
            }
        }
        self.ctx.wake_workers.notify_one();
    }

    /// Compares the folder with the journal: new and changed files go to the settle tracker,
    /// vanished ones to the removals.
    pub async fn reconcile(&mut self) {
        if !self.check_root() {
            return;
        }
        let root = self.root().to_path_buf();
        let config = self.config.clone();
        let on_disk = tokio::task::spawn_blocking(move || walk::files(&root, &root, &config))
            .await
            .unwrap_or_default();
        let root_text = self.root().display().to_string();
        let known = match self
            .ctx
            .journal
            .call(move |j| j.known_under(&root_text))
            .await
        {
            Ok(known) => known,
            Err(e) => {
                error!(watch = %self.root().display(), "cannot read the journal: {e}");
                return;
            }
        };
        let known: HashMap<PathBuf, _> = known
            .into_iter()
            .map(|k| (PathBuf::from(&k.path), k))
            .collect();
        let now = Instant::now();
        let mut fresh = 0;
        for (path, stamp) in &on_disk {
            let unchanged = known.get(path).is_some_and(|k| {
                !k.removal_pending && k.size == Some(stamp.0) && k.mtime_ns == Some(stamp.1)
            });
            if !unchanged {
                fresh += 1;
                self.removals.remove(path);
                self.settle.touch(path, Some(true), now);
            }
        }
        let on_disk: HashMap<&PathBuf, ()> = on_disk.iter().map(|(p, _)| (p, ())).collect();
        let mut vanished = 0;
        for (path, k) in &known {
            if !on_disk.contains_key(path) && !k.removal_pending {
                vanished += 1;
                self.removals.entry(path.clone()).or_insert(now);
            }
        }
        info!(
            watch = %self.root().display(),
            on_disk = on_disk.len(), new_or_changed = fresh, vanished,
            "reconciled with the journal"
        );
    }

    /// One pass for `imgsyncd scan`: reconcile, then take every file and removal at once.
    pub async fn scan_once(&mut self) {
        self.reconcile().await;
        for path in self.settle.drain() {
            self.take(path).await;
        }
        let removals: Vec<PathBuf> = self.removals.drain().map(|(p, _)| p).collect();
        if !removals.is_empty() {
            self.process_removals(removals).await;
        }
    }
}
