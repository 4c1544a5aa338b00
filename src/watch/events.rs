//! notify's events turned into the three things a watch cares about. Everything else is noise.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::settle::Sighting;
use crate::config::WatchConfig;

#[derive(Debug)]
pub enum WatchEvent {
    /// Something was written, moved in or changed.
    Seen { path: PathBuf, sighting: Sighting },
    /// Removed or moved away.
    Gone { path: PathBuf },
    /// Events were lost (queue overflow, watch error): only a full reconcile is safe.
    Rescan { why: String },
    /// inotify can no longer cover the folder (out of watches): it must be polled instead.
    Failed { why: String },
}

/// How often a watch whose inotify setup failed is polled instead.
pub const FALLBACK_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// A running watcher. inotify watches folder by folder: for a recursive watch, each folder is
/// added by the walk that enters it, before the walk reads it, so a file created meanwhile is
/// either listed or reported. notify's own recursive set-up would walk the tree a second time
/// and stat every file in it, which doubled the cost of a start.
pub struct Watching {
    watcher: Mutex<Box<dyn Watcher + Send + Sync>>,
    /// Whether each folder must be added (inotify on a recursive watch); a poller, or a watch of
    /// the root's own entries, covers what it should by itself.
    per_folder: bool,
    /// Set once inotify ran out of watches: the watch is told once, and stops adding folders.
    exhausted: AtomicBool,
    root: PathBuf,
    tx: UnboundedSender<WatchEvent>,
}

impl Watching {
    /// Whether folders are added one by one (inotify), so running out of watches leaves some
    /// uncovered.
    pub fn per_folder(&self) -> bool {
        self.per_folder
    }

    /// Makes sure the folder `dir` is watched. Out of inotify watches, the watch is told (once)
    /// so it can fall back to polling.
    pub fn cover(&self, dir: &Path) {
        if !self.per_folder || self.exhausted.load(Ordering::Relaxed) {
            return;
        }
        let added = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch(dir, RecursiveMode::NonRecursive);
        match added {
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                if !self.exhausted.swap(true, Ordering::Relaxed) {
                    let why = explain(&e, &self.root);
                    let _ = self.tx.send(WatchEvent::Failed { why });
                }
            }
            // A folder gone since it was listed needs no watch; one that cannot be read is
            // reported by the walk.
            Err(_) | Ok(()) => {}
        }
    }
}

/// Starts inotify (or a polling watcher when `poll` is given) feeding `tx`. With inotify on a
/// recursive watch only the root is watched at first: the walk that follows covers the rest.
pub fn start(
    watch: &WatchConfig,
    poll: Option<std::time::Duration>,
    tx: UnboundedSender<WatchEvent>,
) -> notify::Result<Watching> {
    let polling = poll.is_some();
    let root = watch.path.clone();
    let events = tx.clone();
    let handler = move |result: notify::Result<Event>| {
        for event in translate(result, polling, &root) {
            let _ = events.send(event);
        }
    };
    let per_folder = watch.recursive && !polling;
    let mode = if watch.recursive && polling {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    let base = notify::Config::default().with_follow_symlinks(false);
    let mut watcher: Box<dyn Watcher + Send + Sync> = match poll {
        Some(interval) => Box::new(notify::PollWatcher::new(
            handler,
            base.with_poll_interval(interval),
        )?),
        None => Box::new(notify::RecommendedWatcher::new(handler, base)?),
    };
    watcher.watch(&watch.path, mode)?;
    Ok(Watching {
        watcher: Mutex::new(watcher),
        per_folder,
        exhausted: AtomicBool::new(false),
        root: watch.path.clone(),
        tx,
    })
}

/// A user-facing explanation of a watch error on the watch of `root`, with the fix where there
/// is one (out of inotify watches: the limit, its use and what to set it to).
pub fn explain(error: &notify::Error, root: &Path) -> String {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => crate::diagnose::out_of_inotify_watches(root),
        _ => error.to_string(),
    }
}

fn translate(result: notify::Result<Event>, polling: bool, root: &Path) -> Vec<WatchEvent> {
    let event = match result {
        Ok(event) => event,
        // Running out of inotify watches is not among these: notify adds no watch of its own
        // (folders are watched one by one), so `Watching::cover` is where it shows.
        Err(e) => {
            return vec![WatchEvent::Rescan {
                why: format!("watch error: {}", explain(&e, root)),
            }];
        }
    };
    if event.need_rescan() {
        return vec![WatchEvent::Rescan {
            why: "the kernel's event queue overflowed".to_string(),
        }];
    }
    // A poller sees no opens and closes: what it reports is taken as finished.
    let seen = |path: &PathBuf, sighting: Sighting| WatchEvent::Seen {
        path: path.clone(),
        sighting: if polling { Sighting::Closed } else { sighting },
    };
    let gone = |path: &PathBuf| WatchEvent::Gone { path: path.clone() };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => event
            .paths
            .iter()
            .map(|p| seen(p, Sighting::Closed))
            .collect(),
        // A folder's own "moved" (inotify's MOVE_SELF: no rename cookie) says again what its
        // parent's "moved from" said, under whatever path notify last knew it by; only the root
        // has no parent to say it.
        EventKind::Modify(ModifyKind::Name(RenameMode::From))
            if event.tracker().is_none() && !polling =>
        {
            event
                .paths
                .iter()
                .filter(|p| p.as_path() == root)
                .map(gone)
                .collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            event.paths.iter().map(gone).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event
            .paths
            .iter()
            .map(|p| seen(p, Sighting::Closed))
            .collect(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut out = Vec::new();
            if let Some(from) = event.paths.first() {
                out.push(gone(from));
            }
            if let Some(to) = event.paths.get(1) {
                out.push(seen(to, Sighting::Closed));
            }
            out
        }
        EventKind::Modify(ModifyKind::Name(_)) => event
            .paths
            .iter()
            .map(|p| {
                if std::fs::symlink_metadata(p).is_ok() {
                    seen(p, Sighting::Closed)
                } else {
                    gone(p)
                }
            })
            .collect(),
        EventKind::Modify(ModifyKind::Metadata(_)) => event
            .paths
            .iter()
            .map(|p| seen(p, Sighting::Metadata))
            .collect(),
        EventKind::Create(_) | EventKind::Modify(_) => event
            .paths
            .iter()
            .map(|p| seen(p, Sighting::Open))
            .collect(),
        EventKind::Remove(_) => event.paths.iter().map(gone).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved_from(path: &str, cookie: Option<usize>) -> Event {
        let event = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::From)))
            .add_path(PathBuf::from(path));
        match cookie {
            Some(cookie) => event.set_tracker(cookie),
            None => event,
        }
    }

    fn gone_paths(events: Vec<WatchEvent>) -> Vec<PathBuf> {
        events
            .into_iter()
            .map(|e| match e {
                WatchEvent::Gone { path } => path,
                other => panic!("not a removal: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_folders_own_move_is_left_to_its_parents_event_but_the_roots_is_not() {
        let root = Path::new("/w");
        let parents = translate(Ok(moved_from("/w/a", Some(7))), false, root);
        assert_eq!(gone_paths(parents), [PathBuf::from("/w/a")]);
        let own = translate(Ok(moved_from("/w/a", None)), false, root);
        assert!(gone_paths(own).is_empty(), "said already by the parent");
        let roots = translate(Ok(moved_from("/w", None)), false, root);
        assert_eq!(gone_paths(roots), [PathBuf::from("/w")]);
    }
}
