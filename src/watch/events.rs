//! notify's events turned into the three things a watch cares about. Everything else is noise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::settle::Sighting;
use crate::config::WatchConfig;

#[derive(Debug)]
pub enum WatchEvent {
    /// Something was written, moved in or changed.
    Seen { path: PathBuf, sighting: Sighting },
    /// Removed or moved away.
    Gone { path: PathBuf },
    /// The watch root itself was deleted (not moved): a folder at its path from now on is another
    /// one, even with the same inode number, which the filesystem may hand out again at once.
    RootDeleted,
    /// Events were lost (queue overflow, watch error): only a full reconcile is safe.
    Rescan { why: String },
    /// A poller could not read something inside the folder (a folder it may not enter, a file
    /// gone between listing and look): no event was lost, and its next poll tries again.
    Unreadable { why: String },
    /// inotify can no longer cover the folder (out of watches): it must be polled instead.
    Failed { why: String },
}

/// How many events a watch queues before it stops queuing them and rescans instead: a burst the
/// watch takes in more slowly than it comes (a catalogue import while the journal's disk is slow)
/// then costs about 6 MB (some 100 bytes an event with a path of 60), not an entry in memory for
/// every event of it. A file written makes three events, and the watch takes them in more slowly than
/// a copy makes them: at 8 192, dropping 10 000 files at once overflowed the queue every time,
/// and the rescan that follows made the drain 10 % slower. 65 536 holds such a drop whole.
const QUEUED_EVENTS: usize = 65_536;

/// A watch's events, queued by the watcher's thread and the walk, taken by the watch.
pub fn channel() -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::channel(QUEUED_EVENTS);
    let lost = Arc::new(Lost::default());
    let watcher = Arc::new(AtomicU64::new(0));
    (
        EventSender {
            tx,
            lost: Arc::clone(&lost),
            watcher: 0,
            current: Arc::clone(&watcher),
        },
        EventReceiver {
            rx,
            lost,
            taken_since_loss: 0,
            current: watcher,
        },
    )
}

/// What could not be queued because the queue was full.
#[derive(Debug, Default)]
struct Lost {
    /// Some event was dropped (a lost `Failed` too, so the receiver checks one flag per event):
    /// the watch must rescan.
    events: AtomicBool,
    /// inotify ran out of watches: the watch must poll. Kept apart, as a rescan would not do.
    failed: Mutex<Option<String>>,
    /// Wakes a receiver that found the queue empty just before the loss was noted.
    noted: tokio::sync::Notify,
}

#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<(u64, WatchEvent)>,
    lost: Arc<Lost>,
    /// The watcher whose events these are (see [`EventSender::for_new_watcher`]).
    watcher: u64,
    /// The watcher whose events the watch takes: the latest.
    current: Arc<AtomicU64>,
}

impl EventSender {
    /// A sender for a watcher that replaces the one before (the folder watched anew, a poller
    /// in place of inotify). What the old one queued and the watch has not taken yet is dropped:
    /// the watch reconciles the folder as it starts the new one, and a create or write queued
    /// before that, taken after it, would leave a file waiting for good for a close the old
    /// watcher never read.
    pub fn for_new_watcher(&self) -> EventSender {
        let watcher = self.current.fetch_add(1, Ordering::AcqRel) + 1;
        EventSender {
            tx: self.tx.clone(),
            lost: Arc::clone(&self.lost),
            watcher,
            current: Arc::clone(&self.current),
        }
    }

    /// Queues `event` without waiting: the watcher's thread must keep draining the kernel's queue.
    pub fn send(&self, event: WatchEvent) {
        match self.tx.try_send((self.watcher, event)) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full((_, event))) => {
                if let WatchEvent::Failed { why } = event {
                    *self.lost.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                }
                self.lost.events.store(true, Ordering::Release);
                self.lost.noted.notify_one();
            }
        }
    }
}

#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<(u64, WatchEvent)>,
    lost: Arc<Lost>,
    /// Events taken since a loss was seen: once the queue's worth is taken, every event queued
    /// before the loss has been.
    taken_since_loss: usize,
    /// The watcher whose events are taken; a replaced one's are dropped.
    current: Arc<AtomicU64>,
}

impl EventReceiver {
    /// The next event. What was lost comes after every event queued before it: a rescan counts
    /// what it finds as closed, and an open event older than the rescan, taken after it, would
    /// leave a file waiting for a close that was dropped. Something is lost only while the queue
    /// is full, so that is once the queue runs empty or a queue's worth has been taken since,
    /// whichever comes first (a flood may never let it run empty). Cancel-safe.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        loop {
            if self.lost.events.load(Ordering::Acquire) {
                if self.taken_since_loss < QUEUED_EVENTS {
                    match self.rx.try_recv() {
                        Ok(event) => {
                            self.taken_since_loss += 1;
                            match self.current_watchers(event) {
                                Some(event) => return Some(event),
                                None => continue,
                            }
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => return None,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                    }
                }
                if let Some(what) = self.what_was_lost() {
                    self.taken_since_loss = 0;
                    return Some(what);
                }
            }
            tokio::select! {
                event = self.rx.recv() => match event.map(|event| self.current_watchers(event)) {
                    Some(Some(event)) => return Some(event),
                    Some(None) => {}
                    None => return None,
                },
                () = self.lost.noted.notified() => {}
            }
        }
    }

    /// The event, unless a watcher since replaced queued it. The root's deletion is taken from
    /// any watcher: it says what became of the path (a folder there now is another one, even
    /// with the old inode number), which no reconcile can tell.
    fn current_watchers(&self, (watcher, event): (u64, WatchEvent)) -> Option<WatchEvent> {
        let current = watcher == self.current.load(Ordering::Acquire);
        (current || matches!(event, WatchEvent::RootDeleted)).then_some(event)
    }

    /// A lost `Failed` (the watch then reconciles everything, so a lost rescan goes with it), or
    /// a rescan for lost events. The flag is cleared before `failed` is read: a `Failed` noted in
    /// between sets the flag again, so it is never left behind.
    fn what_was_lost(&self) -> Option<WatchEvent> {
        if !self.lost.events.swap(false, Ordering::AcqRel) {
            return None;
        }
        let failed = self
            .lost
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Some(match failed {
            Some(why) => WatchEvent::Failed { why },
            None => WatchEvent::Rescan {
                why: format!(
                    "more than {QUEUED_EVENTS} events came faster than the watch took them in"
                ),
            },
        })
    }
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
    /// How often a poller looks, when it is one.
    poll: Option<std::time::Duration>,
    /// Set once inotify ran out of watches: the watch is told once, and stops adding folders.
    exhausted: AtomicBool,
    root: PathBuf,
    tx: EventSender,
}

impl Watching {
    /// Whether folders are added one by one (inotify), so running out of watches leaves some
    /// uncovered.
    pub fn per_folder(&self) -> bool {
        self.per_folder
    }

    /// How often the folder is polled, when it is: a file briefly absent (a save that deletes
    /// and then renames over a share) is only seen back a poll later.
    pub fn poll_interval(&self) -> Option<std::time::Duration> {
        self.poll
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
                    self.tx.send(WatchEvent::Failed { why });
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
    tx: EventSender,
) -> notify::Result<Watching> {
    let polling = poll.is_some();
    let root = watch.path.clone();
    let events = tx.clone();
    let handler = move |result: notify::Result<Event>| {
        for event in translate(result, polling, &root) {
            events.send(event);
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
        poll,
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
        // A poller reports what it could not read at each poll: a rescan for each would read
        // the whole tree again at every poll. Only the root's error may have hidden changes.
        Err(e) if polling && !e.paths.is_empty() && e.paths.iter().all(|p| p != root) => {
            return vec![WatchEvent::Unreadable {
                why: explain(&e, root),
            }];
        }
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
        EventKind::Remove(_) => event
            .paths
            .iter()
            // Only inotify's DELETE_SELF says the root itself was deleted: a poller reports a
            // root moved away, or one it could not read for a moment, the same way.
            .map(|p| match p.as_path() == root && !polling {
                true => WatchEvent::RootDeleted,
                false => gone(p),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(n: usize) -> WatchEvent {
        WatchEvent::Seen {
            path: PathBuf::from(format!("/w/{n}.png")),
            sighting: Sighting::Closed,
        }
    }

    /// A folder watched anew (a mount changed on its path) is reconciled as the new watcher
    /// starts: the write the old watcher queued but the watch had not taken, whose close the old
    /// watcher never read, must not come after that and leave the file waiting for a close.
    #[tokio::test]
    async fn a_replaced_watchers_queued_events_are_dropped() {
        let (tx, mut rx) = channel();
        let old = tx.for_new_watcher();
        old.send(WatchEvent::Seen {
            path: PathBuf::from("/w/after.png"),
            sighting: Sighting::Open,
        });
        let new = tx.for_new_watcher();
        old.send(seen(1));
        old.send(WatchEvent::RootDeleted);
        new.send(seen(2));
        // The root's deletion is about the path, whichever watcher heard of it.
        assert!(matches!(rx.recv().await, Some(WatchEvent::RootDeleted)));
        match rx.recv().await {
            Some(WatchEvent::Seen { path, .. }) => assert_eq!(path, PathBuf::from("/w/2.png")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_for_one_rescan_after_what_was_queued() {
        let (tx, mut rx) = channel();
        for n in 0..QUEUED_EVENTS + 100 {
            tx.send(seen(n));
        }
        tx.send(WatchEvent::Failed {
            why: "out of watches".into(),
        });
        // What was queued before the queue filled comes first, in order, then what was lost.
        for n in 0..QUEUED_EVENTS {
            match rx.recv().await {
                Some(WatchEvent::Seen { path, .. }) => {
                    assert_eq!(path, PathBuf::from(format!("/w/{n}.png")))
                }
                other => panic!("event {n}: {other:?}"),
            }
        }
        // The lost Failed makes the watch reconcile everything: no rescan besides.
        assert!(
            matches!(rx.recv().await, Some(WatchEvent::Failed { why }) if why == "out of watches")
        );
        tx.send(seen(0));
        assert!(matches!(rx.recv().await, Some(WatchEvent::Seen { .. })));
    }

    #[tokio::test]
    async fn a_flood_that_never_lets_the_queue_run_empty_still_gets_its_rescan() {
        let (tx, mut rx) = channel();
        for n in 0..=QUEUED_EVENTS {
            tx.send(seen(n));
        }
        // Every event queued before the loss is taken, while new ones keep coming.
        for n in 0..QUEUED_EVENTS {
            assert!(
                matches!(rx.recv().await, Some(WatchEvent::Seen { path, .. }) if path == Path::new(&format!("/w/{n}.png")))
            );
            tx.send(seen(QUEUED_EVENTS + 1 + n));
        }
        assert!(matches!(rx.recv().await, Some(WatchEvent::Rescan { .. })));
        assert!(matches!(rx.recv().await, Some(WatchEvent::Seen { .. })));
    }

    #[tokio::test]
    async fn a_loss_noted_after_the_queue_ran_empty_wakes_the_receiver() {
        let (tx, mut rx) = channel();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        // As if the queue had been full when this was tried, and drained since.
        tx.lost.events.store(true, Ordering::Release);
        tx.lost.noted.notify_one();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the receiver was woken")
            .unwrap();
        assert!(matches!(got, Some(WatchEvent::Rescan { .. })));
    }

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

    #[test]
    fn a_pollers_error_inside_the_folder_is_no_lost_event_but_one_at_its_root_is() {
        let root = Path::new("/w");
        let denied = |path: &str| {
            Err(
                notify::Error::io(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
                    .add_path(path.into()),
            )
        };
        let inside = translate(denied("/w/private"), true, root);
        assert!(
            matches!(&inside[..], [WatchEvent::Unreadable { why }] if why.contains("ermission denied")),
            "{inside:?}"
        );
        let at_root = translate(denied("/w"), true, root);
        assert!(
            matches!(at_root[..], [WatchEvent::Rescan { .. }]),
            "{at_root:?}"
        );
        // inotify's errors are about the watch itself: events may have been lost.
        let inotify = translate(denied("/w/private"), false, root);
        assert!(
            matches!(inotify[..], [WatchEvent::Rescan { .. }]),
            "{inotify:?}"
        );
    }

    /// The root's own deletion says more than a removal: the folder at its path is another one
    /// from now on. A folder inside it, deleted, is a removal like a file.
    #[test]
    fn the_roots_deletion_is_told_apart_from_a_removal_inside_it() {
        let root = Path::new("/w");
        let deleted = |path: &str| {
            Event::new(EventKind::Remove(notify::event::RemoveKind::Folder)).add_path(path.into())
        };
        let events = translate(Ok(deleted("/w")), false, root);
        assert!(
            matches!(events[..], [WatchEvent::RootDeleted]),
            "{events:?}"
        );
        let inside = translate(Ok(deleted("/w/sub")), false, root);
        assert_eq!(gone_paths(inside), [PathBuf::from("/w/sub")]);
        // Moved away, the root may come back as itself: that is for its inode to say.
        let moved = translate(Ok(moved_from("/w", None)), false, root);
        assert_eq!(gone_paths(moved), [PathBuf::from("/w")]);
        // A poller cannot tell deleted from moved away or unreadable for a moment.
        let polled = translate(Ok(deleted("/w")), true, root);
        assert_eq!(gone_paths(polled), [PathBuf::from("/w")]);
    }
}
