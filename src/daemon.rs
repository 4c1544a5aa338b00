//! Wiring: the journal lock, vendors, one task per watch, the worker pool, signals (SIGTERM/SIGINT
//! stop, SIGHUP reloads) and systemd readiness.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::adapters::{Adapter, Limits, VendorSet, http_client};
use crate::config::{Config, ConfigError, OnRemove, VendorConfig, VendorKind, WatchConfig};
use crate::journal::{
    FileFilter, FileState, Journal, JournalError, JournalHandle, UnconfiguredVendor, path_text,
};
use crate::service::{Heartbeat, Notes};
use crate::throttle::LogThrottle;
use crate::watch::{Sightings, WatchCommand, WatchContext, WatchTask};
use crate::worker::{Outages, PoolMode, WorkerContext, retry_log_throttle, run_pool};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The journal's error with what to do about it, as one message (no chain of causes
    /// repeating it).
    #[error("{0}")]
    Journal(String),
    #[error(
        "another imgsyncd is already running on the journal {0} (stop it first; `status` and `files` work alongside it)"
    )]
    Locked(PathBuf),
    #[error("cannot lock {}: {error}{}", path.display(), crate::diagnose::journal_lock_advice(path, error))]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },
    // The causes are in the messages, so they are not chained (the CLI would print them twice).
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot serve metrics on {address} (the config's `metrics`): {error}")]
    Metrics {
        address: std::net::SocketAddr,
        error: std::io::Error,
    },
}

impl From<JournalError> for DaemonError {
    fn from(error: JournalError) -> Self {
        DaemonError::Journal(crate::diagnose::journal(&error))
    }
}

/// Holds the journal's lock file: one daemon (or `scan`) per journal.
#[derive(Debug)]
pub struct JournalLock(#[allow(dead_code)] File);

/// Which verb holds the journal's lock: the lock file holds its pid, and a second line `scan`
/// for a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Daemon,
    Scan,
}

pub fn lock_journal(journal: &Path, holder: Holder) -> Result<JournalLock, DaemonError> {
    let path = PathBuf::from(format!("{}.lock", journal.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| DaemonError::Lock {
            path: path.clone(),
            error,
        })?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| DaemonError::Lock {
            path: path.clone(),
            error,
        })?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, so the CLI can tell the daemon that the journal changed.
            use std::io::Write;
            let _ = file.set_len(0);
            let _ = match holder {
                Holder::Daemon => writeln!(&file, "{}", std::process::id()),
                Holder::Scan => writeln!(&file, "{}\nscan", std::process::id()),
            };
            Ok(JournalLock(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked(journal.to_path_buf())),
        Err(std::fs::TryLockError::Error(error)) => Err(DaemonError::Lock { path, error }),
    }
}

/// The pid of the daemon (or `scan`) holding the journal's lock, if one does.
pub fn journal_holder(journal: &Path) -> Option<u32> {
    holder(journal).map(|(pid, _)| pid)
}

fn holder(journal: &Path) -> Option<(u32, Holder)> {
    let path = PathBuf::from(format!("{}.lock", journal.display()));
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let text = std::fs::read_to_string(&path).ok()?;
            let mut lines = text.lines().map(str::trim);
            let pid = lines.next()?.parse().ok()?;
            let holder = match lines.next() {
                Some("scan") => Holder::Scan,
                _ => Holder::Daemon,
            };
            Some((pid, holder))
        }
    }
}

/// Tells the process holding the journal that the journal changed under it (`retry`): the daemon
/// looks at its queue and rescans its watches now; a `scan` looks at its queue again while it
/// drains it. Returns its pid, and which verb it is, when it was told.
pub fn poke(journal: &Path) -> Option<(u32, Holder)> {
    let (pid, holder) = holder(journal)?;
    // SAFETY: kill(2) with a pid read from the lock file and a signal number; no memory involved.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } == 0;
    sent.then_some((pid, holder))
}

struct RunningWatch {
    config: WatchConfig,
    /// What the watch took from its vendor's adapter when it started.
    vendor_traits: VendorTraits,
    commands: mpsc::UnboundedSender<WatchCommand>,
    task: JoinHandle<()>,
}

/// What a watch takes from its vendor's adapter when it starts: a reload that changes any of it
/// starts the watch again.
type VendorTraits = (VendorKind, Limits, bool);

fn vendor_traits(adapter: &Adapter) -> VendorTraits {
    (adapter.kind(), adapter.limits(), adapter.reuses_copies())
}

/// The running daemon's mutable wiring, changed by reloads.
struct Daemon {
    config: Config,
    journal: JournalHandle,
    vendors: Arc<VendorSet>,
    http: reqwest::Client,
    wake: Arc<Notify>,
    retry_log: Arc<LogThrottle>,
    outages: Arc<Outages>,
    watches: Vec<RunningWatch>,
    /// How late each watch sees a file arrive, for the removals of the others.
    sightings: Sightings,
    heartbeat: Arc<Heartbeat>,
    notes: Arc<Notes>,
    /// The metrics endpoint: the configured address and its server.
    metrics: Option<(std::net::SocketAddr, JoinHandle<()>)>,
    /// Where watches whose task panicked are told of, and, a while later, started again.
    watch_trouble: WatchTrouble,
    /// The mount table's changes, for each watch to look at the mounts on its path; none for a
    /// one-shot scan.
    mount_changes: Option<watch::Receiver<u64>>,
    /// Turns true when a stop is asked for (SIGTERM, SIGINT), even while the loop that reads the
    /// signals waits for watches to set up: at the start, or in a reload.
    stop_asked: watch::Receiver<bool>,
}

/// The roots of watches whose task ended in a panic, and of those whose wait after it is over.
#[derive(Debug, Clone)]
struct WatchTrouble {
    failed: mpsc::UnboundedSender<PathBuf>,
    restart: mpsc::UnboundedSender<PathBuf>,
}

/// How long a watch whose task failed waits before it starts again: a failure that comes back at
/// once (a bug meeting a file still there) costs a walk of its folder this often, not a loop.
const WATCH_RESTART_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Daemon {
    fn new(config: Config, journal: JournalHandle, watch_trouble: WatchTrouble) -> Daemon {
        Daemon {
            config,
            journal,
            vendors: Arc::new(VendorSet::default()),
            http: http_client(),
            wake: Arc::new(Notify::new()),
            retry_log: retry_log_throttle(),
            outages: Arc::default(),
            watches: Vec::new(),
            sightings: Sightings::default(),
            heartbeat: Arc::default(),
            notes: Arc::default(),
            metrics: None,
            watch_trouble,
            mount_changes: None,
            stop_asked: watch::channel(false).1,
        }
    }

    /// Serves `/metrics` where the config says (nothing when it says nothing).
    async fn serve_metrics(&mut self) -> Result<(), DaemonError> {
        let wanted = self.config.metrics;
        if self.metrics.as_ref().map(|(a, _)| *a) == wanted {
            return Ok(());
        }
        let Some(address) = wanted else {
            if let Some((_, server)) = self.metrics.take() {
                server.abort();
                info!("metrics no longer served");
            }
            return Ok(());
        };
        let vendors = Arc::clone(&self.vendors);
        let names: crate::metrics::VendorNames = Arc::new(move || vendors.names());
        let (_, server) = crate::metrics::serve(address, self.journal.clone(), names)
            .await
            .map_err(|error| DaemonError::Metrics { address, error })?;
        if let Some((_, old)) = self.metrics.replace((address, server)) {
            old.abort();
        }
        Ok(())
    }

    /// Waits until each of `watches` is set up (watcher started, first reconcile done). A long
    /// first reconcile (a big tree) asks systemd for more start-up time as it goes. False: a stop
    /// was asked for meanwhile, which must not wait for them (systemd kills what outlasts its
    /// stop timeout, with the transfers in flight).
    async fn wait_for_watches(&self, watches: &[usize]) -> bool {
        let mut waiting = Vec::new();
        for &index in watches {
            let (answer, ready) = tokio::sync::oneshot::channel();
            if self.watches[index]
                .commands
                .send(WatchCommand::Ready(answer))
                .is_ok()
            {
                waiting.push((self.watches[index].config.path.clone(), ready));
            }
        }
        let total = waiting.len();
        for (done, (path, ready)) in waiting.into_iter().enumerate() {
            tokio::pin!(ready);
            loop {
                tokio::select! {
                    _ = &mut ready => break,
                    _ = stop_asked(self.stop_asked.clone()) => return false,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
                        crate::service::extend_start(std::time::Duration::from_secs(30));
                        crate::service::status(&format!(
                            "setting up watches: {done} of {total} ready; reconciling {} with the journal",
                            path.display()
                        ));
                    }
                }
            }
        }
        true
    }

    /// Builds adapters for `configs`, keeping the ones (and their cached tokens) whose config is the same.
    fn set_vendors(
        &self,
        old: &BTreeMap<String, VendorConfig>,
        configs: &BTreeMap<String, VendorConfig>,
    ) {
        let adapters = configs
            .iter()
            .map(|(name, config)| {
                let adapter = match (old.get(name), self.vendors.get(name)) {
                    (Some(previous), Some(adapter)) if previous == config => adapter,
                    _ => Arc::new(Adapter::new(config, self.http.clone())),
                };
                (name.clone(), adapter)
            })
            .collect();
        self.vendors.replace(adapters);
    }

    fn watch_context(&self) -> WatchContext {
        WatchContext {
            journal: self.journal.clone(),
            wake_workers: Arc::clone(&self.wake),
            settle: self.config.settle,
            rescan: self.config.rescan,
            max_deletes: self.config.max_deletes,
            sightings: self.sightings.clone(),
            failed: Some(self.watch_trouble.failed.clone()),
            mount_changes: self.mount_changes.clone(),
        }
    }

    fn worker_context(&self) -> WorkerContext {
        WorkerContext {
            journal: self.journal.clone(),
            vendors: Arc::clone(&self.vendors),
            wake: Arc::clone(&self.wake),
            give_up_after: self.config.give_up_after,
            retry_log: Arc::clone(&self.retry_log),
            outages: Arc::clone(&self.outages),
            heartbeat: Arc::clone(&self.heartbeat),
        }
    }

    fn start_watch(&self, config: WatchConfig) -> Option<RunningWatch> {
        let adapter = self.vendors.get(&config.vendor)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = WatchTask::new(config.clone(), self.watch_context(), &adapter);
        let mode = match config.poll {
            Some(_) => crate::metrics::WatchMode::Poll,
            None => crate::metrics::WatchMode::Inotify,
        };
        crate::metrics::watch_mode(&config.path, &config.vendor, mode);
        info!(
            watch = %config.path.display(), vendor = %config.vendor,
            mode = if config.poll.is_some() { "poll" } else { "inotify" },
            "watching"
        );
        Some(RunningWatch {
            config,
            vendor_traits: vendor_traits(&adapter),
            commands,
            task: tokio::spawn(task.run(receiver)),
        })
    }

    async fn stop_watches(&mut self) {
        stop_watches(std::mem::take(&mut self.watches)).await;
    }

    /// A watch's task ended in a panic: said, and started again after a wait.
    fn watch_failed(&self, root: PathBuf) {
        error!(
            watch = %root.display(),
            "the watch stopped on an internal error (the line before says where); it starts \
             again in {}s and reads its folder afresh",
            WATCH_RESTART_AFTER.as_secs()
        );
        let restart = self.watch_trouble.restart.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WATCH_RESTART_AFTER).await;
            let _ = restart.send(root);
        });
    }

    /// The wait after a watch failed is over: it starts again, unless a reload removed it or
    /// started it already.
    fn restart_watch(&mut self, root: PathBuf) {
        // The failed task is over by now (it said so while it unwound); a reload may have
        // started the watch again meanwhile.
        self.watches.retain(|w| {
            let failed = w.config.path == root && w.task.is_finished();
            if failed {
                crate::metrics::watch_stopped(&root);
            }
            !failed
        });
        let running = self.watches.iter().any(|w| w.config.path == root);
        let configured = self.config.watches.iter().find(|w| w.path == root).cloned();
        if let (false, Some(config)) = (running, configured)
            && let Some(watch) = self.start_watch(config)
        {
            self.watches.push(watch);
        }
    }

    /// The CLI changed the journal: the workers look at the queue, the watches rescan (a file put
    /// up for a fresh look, a watch root accepted as it now is).
    fn poked(&self) {
        info!("the journal was changed by `imgsyncd retry`: looking at the queue and rescanning");
        self.wake.notify_one();
        for watch in &self.watches {
            let _ = watch.commands.send(WatchCommand::Rescan);
        }
    }

    /// Puts the new config's `keep` watches' records under `keep` before the old watches stop
    /// (each may take seconds) and the new ones start: meanwhile the workers go on claiming, and
    /// a delete claimed under the old policy would be sent. Each new watch applies its policies
    /// again as it starts.
    async fn keep_copies_now(&self, new: &Config) {
        let keeping: Vec<(String, String)> = new
            .watches
            .iter()
            // A vendor with no delete API has no other `on_remove` (the config refuses one).
            .filter(|w| w.on_remove == OnRemove::Keep)
            .map(|w| (path_text::to_text(&w.path).into_owned(), w.vendor.clone()))
            .collect();
        let applied = self
            .journal
            .call(move |j| {
                keeping
                    .into_iter()
                    .map(|(root, vendor)| Ok((j.apply_remove_policy(&root, &vendor, false)?, root)))
                    .collect::<crate::journal::Result<Vec<_>>>()
            })
            .await;
        match applied {
            Ok(applied) => {
                for (n, root) in applied.into_iter().filter(|(n, _)| *n > 0) {
                    info!(
                        watch = %path_text::shown(&root), files = n,
                        "on_remove changed: {n} files' remote copies are kept from now on"
                    );
                }
            }
            Err(e) => error!(
                "cannot put the files of the watches that keep their copies under `keep` before \
                 the reload's watches start (each tries again as it starts): {}",
                crate::diagnose::journal(&e)
            ),
        }
    }

    /// SIGHUP: a new config takes effect without dropping jobs; a bad one is logged, shown in
    /// STATUS= and ignored.
    async fn reload(&mut self) {
        crate::service::reloading();
        match Config::load(&self.config.source) {
            Err(e) => {
                error!("reload refused, keeping the running config: {e}");
                self.notes.reload(Some(e.to_string()));
            }
            Ok(mut new) => {
                if new.journal != self.config.journal {
                    warn!(
                        "a new journal path ({}) takes effect at the next restart",
                        new.journal.display()
                    );
                    new.journal = self.config.journal.clone();
                }
                for (key, changed) in [
                    ("workers", new.workers != self.config.workers),
                    (
                        "give_up_after",
                        new.give_up_after != self.config.give_up_after,
                    ),
                ] {
                    if changed {
                        warn!("a new `{key}` takes effect at the next restart");
                    }
                }
                self.set_vendors(&self.config.vendors, &new.vendors);
                for name in self.vendors.names() {
                    if let Some(adapter) = self.vendors.get(&name) {
                        adapter.forget_failures().await;
                    }
                }
                let (kept, stopped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.watches)
                    .into_iter()
                    .partition(|w| {
                        // Each watch keeps the settings it started with: a watch whose settings
                        // changed starts again with the new ones.
                        // So does one whose vendor changed what it took from it when it
                        // started (its kind, limits, whether copies are shared); new
                        // credentials or pacing alone leave it be.
                        new.watches.contains(&w.config)
                            && self
                                .vendors
                                .get(&w.config.vendor)
                                .map(|a| vendor_traits(&a))
                                == Some(w.vendor_traits)
                            && new.settle == self.config.settle
                            && new.rescan == self.config.rescan
                            && new.max_deletes == self.config.max_deletes
                    });
                for watch in &stopped {
                    info!(watch = %watch.config.path.display(), "watch removed or changed: stopping it");
                }
                self.keep_copies_now(&new).await;
                stop_watches(stopped).await;
                self.config = new;
                for watch in &kept {
                    let _ = watch.commands.send(WatchCommand::Rescan);
                }
                self.watches = kept;
                let fresh: Vec<WatchConfig> = self
                    .config
                    .watches
                    .iter()
                    .filter(|w| !self.watches.iter().any(|r| &r.config == *w))
                    .cloned()
                    .collect();
                let first_fresh = self.watches.len();
                for config in fresh {
                    if let Some(running) = self.start_watch(config) {
                        self.watches.push(running);
                    }
                }
                let started: Vec<usize> = (first_fresh..self.watches.len()).collect();
                // Signals wait meanwhile, but a stop: a watch whose first look at its folder takes
                // long (a big tree, a share that does not answer) finishes it on its own.
                match tokio::time::timeout(RELOAD_WATCH_WAIT, self.wait_for_watches(&started)).await
                {
                    Ok(true) => {}
                    // The stop is next in the signals' queue.
                    Ok(false) => return,
                    Err(_) => warn!(
                        "the reload's new watches are still reading their folders after {}s; \
                         going on meanwhile",
                        RELOAD_WATCH_WAIT.as_secs()
                    ),
                }
                if let Err(e) = self.serve_metrics().await {
                    error!("{e}; the metrics endpoint stays as it was");
                    self.config.metrics = self.metrics.as_ref().map(|(a, _)| *a);
                }
                let configured: Vec<String> = self.config.vendors.keys().cloned().collect();
                match self
                    .journal
                    .call(move |j| {
                        let dropped = j.reset_vendor_pauses(&configured)?;
                        Ok::<_, JournalError>((dropped, j.unconfigured_vendors(&configured)?))
                    })
                    .await
                {
                    Ok((dropped, waiting)) => said_unconfigured(&dropped, &waiting),
                    Err(e) => error!("cannot reset vendor pauses: {e}"),
                }
                self.wake.notify_one();
                self.notes.reload(None);
                info!(
                    watches = self.watches.len(),
                    vendors = self.config.vendors.len(),
                    "config reloaded from {}",
                    self.config.source.display()
                );
            }
        }
        crate::service::ready(None);
        crate::service::changed();
    }
}

/// How long a reload waits for the watches it starts to have read their folders, before it
/// answers signals again.
const RELOAD_WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long watches told to stop may take to end what they are doing (reading a folder, hashing
/// a drop) before they are cut short: within systemd's `TimeoutStopSec` (20 s) beside the
/// workers' grace. A watch cut short loses nothing: its folder is read again at the next start.
const WATCH_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells every watch of `watches` to stop at once, and waits for them together, up to
/// [`WATCH_STOP_LIMIT`].
async fn stop_watches(watches: Vec<RunningWatch>) {
    for watch in &watches {
        let _ = watch.commands.send(WatchCommand::Stop);
    }
    let deadline = tokio::time::Instant::now() + WATCH_STOP_LIMIT;
    for mut watch in watches {
        if tokio::time::timeout_at(deadline, &mut watch.task)
            .await
            .is_err()
        {
            warn!(
                watch = %watch.config.path.display(),
                "the watch did not stop within {}s: cut short (its folder is read again at the next start)",
                WATCH_STOP_LIMIT.as_secs()
            );
            watch.task.abort();
        }
        crate::metrics::watch_stopped(&watch.config.path);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
    /// SIGUSR1 from the CLI: the journal changed (`retry`).
    Poke,
}

/// Forwards SIGTERM/SIGINT/SIGHUP from signal-hook's thread to the async side.
/// The signals, in order; and whether a stop was asked for, which the daemon's waits look at
/// while the signals' queue waits for them.
fn signals() -> Result<(mpsc::UnboundedReceiver<Signal>, watch::Receiver<bool>), DaemonError> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(DaemonError::Signals)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let message = match signal {
                    SIGHUP => Signal::Reload,
                    SIGUSR1 => Signal::Poke,
                    _ => {
                        stop_tx.send_replace(true);
                        Signal::Stop
                    }
                };
                if tx.send(message).is_err() {
                    break;
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok((rx, stop_rx))
}

/// Resolves once a stop is asked for (never, when nothing can ask for one).
async fn stop_asked(mut asked: watch::Receiver<bool>) {
    if asked.wait_for(|asked| *asked).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn open_journal(
    config: &Config,
    holder: Holder,
) -> Result<(JournalLock, JournalHandle), DaemonError> {
    let lock = lock_journal(&config.journal, holder)?;
    // Every failure names the journal, once, with what to do.
    let named = |e: JournalError| match e {
        JournalError::Sql(_) => DaemonError::Journal(format!(
            "journal {}: {}",
            config.journal.display(),
            crate::diagnose::journal(&e)
        )),
        other => other.into(),
    };
    let mut journal = Journal::open(&config.journal).map_err(named)?;
    let requeued = journal.requeue_running().map_err(named)?;
    if requeued > 0 {
        warn!(
            requeued,
            "jobs left running by a previous run went back to the queue"
        );
    }
    // A start is like a reload: paused vendors are tried again at once (those no longer
    // configured are paused no more), watches check their folders.
    let configured: Vec<String> = config.vendors.keys().cloned().collect();
    let dropped = journal.reset_vendor_pauses(&configured).map_err(named)?;
    said_unconfigured(
        &dropped,
        &journal.unconfigured_vendors(&configured).map_err(named)?,
    );
    journal.clear_watch_pauses().map_err(named)?;
    Ok((lock, JournalHandle::new(journal)))
}

/// Says which paused vendors a start or a reload found taken out of the config, and so paused no
/// more; and which vendors not in the config have jobs waiting, which nothing sends.
fn said_unconfigured(dropped: &[String], waiting: &[UnconfiguredVendor]) {
    for vendor in dropped {
        info!(
            vendor = %vendor,
            "vendor {vendor} is no longer in the config: no longer paused"
        );
    }
    for waiting in waiting {
        warn!(
            vendor = %waiting.vendor,
            "{} jobs wait for vendor {}, which is not in the config: nothing sends them (their \
             files stay pending) until it is configured again under that name",
            waiting.jobs,
            waiting.vendor
        );
    }
}

/// The daemon, in the foreground, until SIGTERM or SIGINT. systemd hears READY=1 only once the
/// journal is open, the metrics endpoint bound and every watch set up.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // A panic is a bug: said through the log, with the level an operator filters errors by (the
    // default hook wrote it to stderr, which journald files as info).
    std::panic::set_hook(Box::new(|info| error!("internal error: {info}")));
    let (mut signals, stop_requested) = signals()?;
    crate::service::status("starting: opening the journal");
    let (_lock, journal) = open_journal(&config, Holder::Daemon)?;
    let (failed, mut failed_watches) = mpsc::unbounded_channel();
    let (restart, mut restarts) = mpsc::unbounded_channel();
    let mut daemon = Daemon::new(config, journal, WatchTrouble { failed, restart });
    daemon.mount_changes = crate::watch::mounts::watch_table();
    daemon.stop_asked = stop_requested;
    daemon.set_vendors(&BTreeMap::new(), &daemon.config.vendors.clone());
    daemon.serve_metrics().await?;
    for watch in daemon.config.watches.clone() {
        if let Some(running) = daemon.start_watch(watch) {
            daemon.watches.push(running);
        }
    }
    let all: Vec<usize> = (0..daemon.watches.len()).collect();
    if !daemon.wait_for_watches(&all).await {
        info!("stopping before the start was complete: nothing was sent");
        crate::service::stopping();
        daemon.stop_watches().await;
        if let Some((_, server)) = daemon.metrics.take() {
            server.abort();
        }
        info!("stopped");
        return Ok(());
    }
    let (stop, stopped) = watch::channel(false);
    let pool = tokio::spawn(run_pool(
        daemon.worker_context(),
        daemon.config.workers,
        PoolMode::Daemon,
        stopped,
    ));
    let mut background = vec![
        tokio::spawn(crate::logging::summarise(
            Arc::clone(crate::logging::storms()),
            crate::logging::Summary::Storms,
        )),
        tokio::spawn(crate::logging::summarise(
            Arc::clone(&daemon.retry_log),
            crate::logging::Summary::Retries,
        )),
        tokio::spawn(crate::logging::summarise(
            Arc::clone(crate::logging::journal_trouble()),
            crate::logging::Summary::JournalTrouble,
        )),
    ];
    let glance = daemon
        .journal
        .call(|j| j.glance())
        .await
        .unwrap_or_default();
    let first_status = crate::service::compose(&glance, &crate::metrics::watches(), &daemon.notes);
    crate::service::ready(Some(&first_status));
    background.push(tokio::spawn(crate::service::keep_status(
        daemon.journal.clone(),
        Arc::clone(&daemon.notes),
        first_status,
    )));
    if let Some(interval) = crate::service::watchdog_interval() {
        background.push(tokio::spawn(crate::service::watchdog(
            interval,
            daemon.journal.clone(),
            Arc::clone(&daemon.heartbeat),
            Arc::clone(&daemon.notes),
        )));
    }
    if let Some(what) = crate::service::test_wedge() {
        background.push(tokio::spawn(crate::service::wedge(
            what,
            std::time::Duration::from_secs(1),
            daemon.journal.clone(),
            Arc::clone(&daemon.heartbeat),
        )));
    }
    info!(
        watches = daemon.watches.len(),
        vendors = daemon.config.vendors.len(),
        workers = daemon.config.workers,
        journal = %daemon.config.journal.display(),
        "imgsyncd running"
    );
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(Signal::Reload) => daemon.reload().await,
                Some(Signal::Poke) => daemon.poked(),
                Some(Signal::Stop) | None => break,
            },
            Some(root) = failed_watches.recv() => daemon.watch_failed(root),
            Some(root) = restarts.recv() => daemon.restart_watch(root),
        }
    }
    info!("stopping: no new jobs are taken");
    crate::service::stopping();
    for task in background {
        task.abort();
    }
    // The pool first, so no upload starts after the line above; its grace for the transfers in
    // flight runs while the watches stop.
    let _ = stop.send(true);
    let (_, _) = tokio::join!(daemon.stop_watches(), pool);
    if let Some((_, server)) = daemon.metrics.take() {
        server.abort();
    }
    info!("stopped");
    Ok(())
}

/// Ends a signal-forwarding thread when dropped.
struct ClosesOnDrop(signal_hook::iterator::Handle);

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What one `scan` pass left behind, per state, for the files under the configured watches.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub counts: BTreeMap<&'static str, usize>,
}

impl ScanReport {
    /// Everything under the watches is synced or removed.
    pub fn all_synced(&self) -> bool {
        ["pending", "failed", "rejected"]
            .iter()
            .all(|s| self.counts.get(s).copied().unwrap_or(0) == 0)
    }
}

/// One pass: reconcile every watch, drain the queue of due jobs, report.
pub async fn scan(config: Config) -> Result<ScanReport, DaemonError> {
    // `retry` pokes whoever holds the journal with SIGUSR1, whose default action would end the
    // scan mid-upload: caught before the lock is taken, a poke only wakes the pool, so files put
    // back while it drains are sent by this pass (once it is done, they wait for the next one).
    // Dropped last, after the lock: SIGUSR1 is ignored from then on (signal-hook keeps its handler).
    let mut pokes = signal_hook::iterator::Signals::new([SIGUSR1]).map_err(DaemonError::Signals)?;
    let _pokes = ClosesOnDrop(pokes.handle());
    let (_lock, journal) = open_journal(&config, Holder::Scan)?;
    // A scan's watches run once, in this task: nothing to start again.
    let (failed, _) = mpsc::unbounded_channel();
    let (restart, _) = mpsc::unbounded_channel();
    let daemon = Daemon::new(config, journal, WatchTrouble { failed, restart });
    let wake = Arc::clone(&daemon.wake);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in pokes.forever() {
                info!("the journal was changed by `imgsyncd retry`: looking at the queue again");
                wake.notify_one();
            }
        })
        .map_err(DaemonError::Signals)?;
    daemon.set_vendors(&BTreeMap::new(), &daemon.config.vendors.clone());
    for watch in &daemon.config.watches {
        let Some(adapter) = daemon.vendors.get(&watch.vendor) else {
            continue;
        };
        let mut task = WatchTask::new(watch.clone(), daemon.watch_context(), &adapter);
        task.scan_once().await;
    }
    let (_stop, stopped) = watch::channel(false);
    run_pool(
        daemon.worker_context(),
        daemon.config.workers,
        PoolMode::Drain,
        stopped,
    )
    .await;
    let roots: Vec<PathBuf> = daemon
        .config
        .watches
        .iter()
        .map(|w| w.path.clone())
        .collect();
    let files = daemon
        .journal
        .call(|j| j.files(&FileFilter::default()))
        .await?;
    let mut report = ScanReport::default();
    for state in FileState::ALL {
        report.counts.insert(state.as_str(), 0);
    }
    for file in files.iter().filter(|f| {
        let path = path_text::to_path(&f.path);
        roots.iter().any(|r| path.starts_with(r))
    }) {
        if let Some(state) = FileState::parse(&file.state) {
            *report.counts.entry(state.as_str()).or_default() += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop asked for while the daemon waits for a watch to set up (a first look at a big tree,
    /// at the start or in a reload) ends the wait at once: it was only heard once the wait was
    /// over, so systemd killed a daemon still busy with it, transfers in flight.
    #[tokio::test]
    async fn a_stop_asked_for_ends_the_wait_for_watches_setting_up() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "journal: {dir}/journal.sqlite3\nvendors:\n  erp:\n    kind: kingdee\n    \
             client_id: c\n    client_secret: s\n    app_key: k\n    app_secret: a\n    \
             domain: d\nwatches:\n  - path: {dir}\n    vendor: erp\n",
            dir = dir.path().display()
        );
        let config = Config::parse(&yaml, &dir.path().join("daemon.yaml")).unwrap();
        let journal = JournalHandle::new(Journal::open(&config.journal).unwrap());
        let (failed, _) = mpsc::unbounded_channel();
        let (restart, _) = mpsc::unbounded_channel();
        let mut daemon = Daemon::new(config.clone(), journal, WatchTrouble { failed, restart });
        let (ask, asked) = watch::channel(false);
        daemon.stop_asked = asked;
        // A watch still reading its folder: it never says it is ready.
        let (commands, _still_reading) = mpsc::unbounded_channel();
        daemon.watches.push(RunningWatch {
            config: config.watches[0].clone(),
            vendor_traits: (VendorKind::Kingdee, crate::adapters::kingdee::LIMITS, true),
            commands,
            task: tokio::spawn(async {}),
        });
        let waiting = tokio::spawn(async move { daemon.wait_for_watches(&[0]).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits for the watch");
        ask.send_replace(true);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(
            matches!(ended, Ok(Ok(false))),
            "the wait ends, saying a stop was asked: {ended:?}"
        );
    }
}
