//! The settle tracker: a file is taken only when its write was closed (or it was moved in or found
//! by a scan) *and* its size and mtime stayed the same for the settle period.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::journal::FileStamp as Stamp;

/// Paths the tracker follows at most (each costs a few hundred bytes). Past this many, the watch
/// leaves a file out and reads its folder again a settle period later, taking what is quiet by
/// then without tracking it. Without it, the tracker held every file written but not yet taken: a scan right
/// after a burst (the daemon started just after 20 000 files were written) found most of them
/// not quiet yet, and a copy into a running watch that comes faster than files are examined and
/// recorded (100 000 while the journal's disk is busy) kept up to 12 800 waiting. Peak memory
/// then varied with timing, up to 1.54x (20 000 found at the start) and 1.40x (100 000 copied
/// in) the figure at 1 000.
const CAPACITY: usize = 1024;

/// How many settle periods a file may stay open or keep changing before the operator is told it
/// is waiting: long enough for a slow copy of a large photo, short enough that a writer that
/// hangs with the file open is noticed the same hour (2 minutes with the default 2 s).
const STALLED_AFTER_PERIODS: u32 = 60;

/// A file that has waited [`STALLED_AFTER_PERIODS`] settle periods and is still not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub path: PathBuf,
    /// Still open for writing, as inotify last said; otherwise it keeps changing.
    pub open: bool,
    pub waited: Duration,
}

/// How a path came to the tracker's attention.
/// What a look at a tracked path found when it fell due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Stamp(Stamp),
    /// Nothing there (or its folder gone): no longer tracked.
    Gone,
    /// Something there that cannot be looked at (a folder the daemon may list but not enter,
    /// an I/O error on a share): handed on at once, so the examination says why, and the file
    /// is looked at again or rejected rather than dropped without a word.
    Unreadable,
}

impl From<Option<Stamp>> for Look {
    fn from(stamp: Option<Stamp>) -> Look {
        stamp.map_or(Look::Gone, Look::Stamp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// The write is known to be finished: close-write, moved in, or a hard link.
    Closed,
    /// It was written to and may still be open.
    Open,
    /// Only its metadata changed (chmod, touch), which says nothing about an open write.
    Metadata,
    /// Found by a scan: finished, unless an event already said it is open.
    Scanned,
}

#[derive(Debug)]
struct Pending {
    /// When the tracker first heard of it: how long it has waited to be complete.
    since: Instant,
    /// Whether the operator was told it is taking long.
    told_stalled: bool,
    stamp: Option<Stamp>,
    stable_since: Instant,
    last_event: Instant,
    closed: bool,
    /// When it next needs a look; `None` while it waits for an event (still open).
    due: Option<Instant>,
    /// When its one entry in the queue falls; `None` when it has none.
    queued: Option<Instant>,
}

impl Pending {
    /// Not looked at yet: at once. Closed: at the end of its quiet period. Open: at its next event,
    /// or when it has waited long enough to be reported, whichever comes first.
    fn next_due(&self, period: Duration) -> Option<Instant> {
        let settled = match (self.stamp, self.closed) {
            (None, _) => Some(self.last_event),
            (Some(_), true) => Some(self.stable_since.max(self.last_event) + period),
            (Some(_), false) => None,
        };
        let report = (!self.told_stalled).then(|| self.since + stalled_after(period));
        [settled, report].into_iter().flatten().min()
    }

    /// Whether it has waited long enough to be reported, and was not yet: marks it reported.
    fn report_stalled(&mut self, now: Instant, period: Duration) -> Option<Duration> {
        let waited = now.duration_since(self.since);
        (!self.told_stalled && waited >= stalled_after(period)).then(|| {
            self.told_stalled = true;
            waited
        })
    }

    /// Whether its queue entry must come sooner than it does: each event of a write moves the
    /// deadline later, and a later deadline is found when the earlier entry falls due.
    fn needs_queueing(&self) -> bool {
        match (self.due, self.queued) {
            (Some(due), Some(queued)) => due < queued,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

fn stalled_after(period: Duration) -> Duration {
    (period * STALLED_AFTER_PERIODS).max(Duration::from_secs(1))
}

/// Paths waiting to be complete, and when each needs a look. The deadlines live in a queue, so a
/// look costs in proportion to the paths that are due, not to all that are waiting: a drop of
/// tens of thousands of files is taken at a steady rate. A path is held once, shared by the map
/// and the queue, and has one entry in the queue however many events it had: the tracker holds
/// the files of a whole burst, so each one's size is what a burst costs in memory.
#[derive(Debug)]
pub struct Settle {
    period: Duration,
    pending: HashMap<Arc<Path>, Pending>,
    /// (when, path); an entry whose path is gone or queued at another time is stale and skipped.
    queue: BinaryHeap<Reverse<(Instant, Arc<Path>)>>,
    /// Paths an event said are open for writing while the tracker was full, so not tracked: a
    /// second look must not take one as complete because it looks quiet. As many as are being
    /// written at once, not the backlog.
    open_untracked: HashSet<PathBuf>,
    /// Files found waiting too long by `take_ready`, for the watch to report.
    stalled: Vec<Stalled>,
}

impl Settle {
    pub fn new(period: Duration) -> Settle {
        Settle {
            period,
            pending: HashMap::new(),
            queue: BinaryHeap::new(),
            open_untracked: HashSet::new(),
            stalled: Vec::new(),
        }
    }

    /// Something happened to `path`.
    pub fn touch(&mut self, path: &Path, sighting: Sighting, now: Instant) {
        // Seen open while the tracker was full: a metadata event or a scan cannot say it closed.
        let seen_open = self.open_untracked.remove(path);
        // The map's own copy of the path, when it has one, is what the queue shares.
        let key = match self.pending.get_key_value(path) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(path),
        };
        let entry = self.pending.entry(Arc::clone(&key)).or_insert(Pending {
            since: now,
            told_stalled: false,
            stamp: None,
            stable_since: now,
            last_event: now,
            // A close or an open says so below; a metadata event or a scan says nothing.
            closed: !seen_open,
            due: None,
            queued: None,
        });
        entry.last_event = now;
        match sighting {
            Sighting::Closed => entry.closed = true,
            Sighting::Open => entry.closed = false,
            // A scan cannot see an open file descriptor: what inotify said stands.
            Sighting::Metadata | Sighting::Scanned => {}
        }
        entry.due = entry.next_due(self.period);
        Self::queue_entry(&mut self.queue, key, entry);
    }

    /// Puts `entry` in the queue at its deadline, unless an entry of it already falls sooner.
    fn queue_entry(
        queue: &mut BinaryHeap<Reverse<(Instant, Arc<Path>)>>,
        key: Arc<Path>,
        entry: &mut Pending,
    ) {
        if entry.needs_queueing()
            && let Some(due) = entry.due
        {
            entry.queued = Some(due);
            queue.push(Reverse((due, key)));
        }
    }

    /// Something happened to `path` while the tracker was full: only whether it is open is kept.
    pub fn untracked(&mut self, path: &Path, sighting: Sighting) {
        match sighting {
            Sighting::Open => {
                self.open_untracked.insert(path.to_path_buf());
            }
            Sighting::Closed => {
                self.open_untracked.remove(path);
            }
            Sighting::Metadata | Sighting::Scanned => {}
        }
    }

    /// Whether an event said `path` is open for writing while it was left untracked.
    pub fn seen_open(&self, path: &Path) -> bool {
        self.open_untracked.contains(path)
    }

    /// Events were lost, closes among them: what a scan finds counts as closed.
    pub fn forget_open(&mut self) {
        self.open_untracked.clear();
    }

    pub fn forget(&mut self, path: &Path) {
        self.pending.remove(path);
        self.open_untracked.remove(path);
    }

    /// Forgets every path under `dir` (it was removed or moved away).
    pub fn forget_under(&mut self, dir: &Path) {
        self.pending.retain(|p, _| !p.starts_with(dir));
        self.open_untracked.retain(|p| !p.starts_with(dir));
    }

    /// Every tracked path at once, for a one-shot scan (which re-checks stability as it reads).
    pub fn drain(&mut self) -> Vec<PathBuf> {
        self.queue.clear();
        self.open_untracked.clear();
        let mut paths: Vec<PathBuf> = self.pending.drain().map(|(p, _)| p.to_path_buf()).collect();
        paths.sort();
        paths
    }

    /// The files `take_ready` found still incomplete after [`STALLED_AFTER_PERIODS`] settle
    /// periods, each once.
    pub fn take_stalled(&mut self) -> Vec<Stalled> {
        std::mem::take(&mut self.stalled)
    }

    /// Whether another path may be tracked: see [`CAPACITY`].
    pub fn has_room(&self) -> bool {
        self.pending.len() < CAPACITY
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.pending.contains_key(path)
    }

    /// When `take_ready` next has something to do: at once for a path not looked at yet, at the
    /// end of its quiet period for a closed one. A file still open waits for its next event, and
    /// a changing one is looked at again a period after the change was seen. (It may be sooner:
    /// the queue entry of a path whose deadline moved later since.)
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, path))) = self.queue.peek() {
            if self.is_current(path, *at) {
                return Some(*at);
            }
            self.queue.pop();
        }
        None
    }

    /// Whether `at` is when `path`'s one queue entry falls (not an entry left stale by a sooner
    /// one, or by the path being forgotten).
    fn is_current(&self, path: &Path, at: Instant) -> bool {
        self.pending.get(path).is_some_and(|e| e.queued == Some(at))
    }

    /// The paths that have settled, removed from the tracker. `stat` reads a path's current stamp
    /// (`None`: gone, and so dropped). Only paths that are due are looked at.
    pub fn take_ready<L: Into<Look>>(
        &mut self,
        now: Instant,
        stat: impl Fn(&Path) -> L,
    ) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, path))) = self.queue.pop() else {
                break;
            };
            if !self.is_current(&path, at) {
                continue;
            }
            let period = self.period;
            let Some(entry) = self.pending.get_mut(&path) else {
                continue;
            };
            entry.queued = None;
            if entry.due.is_some_and(|due| due <= now) {
                let stamp = match stat(&path).into() {
                    Look::Stamp(stamp) => stamp,
                    Look::Gone => {
                        self.pending.remove(&path);
                        continue;
                    }
                    Look::Unreadable => {
                        self.pending.remove(&path);
                        ready.push(path.to_path_buf());
                        continue;
                    }
                };
                if entry.stamp != Some(stamp) {
                    entry.stamp = Some(stamp);
                    entry.stable_since = now;
                } else if entry.closed
                    && now.duration_since(entry.stable_since) >= period
                    && now.duration_since(entry.last_event) >= period
                {
                    self.pending.remove(&path);
                    ready.push(path.to_path_buf());
                    continue;
                }
                if let Some(waited) = entry.report_stalled(now, period) {
                    self.stalled.push(Stalled {
                        path: path.to_path_buf(),
                        open: !entry.closed,
                        waited,
                    });
                }
                entry.due = entry.next_due(period);
            }
            Self::queue_entry(&mut self.queue, path, entry);
        }
        ready.sort();
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const PERIOD: Duration = Duration::from_secs(2);

    fn st(size: u64, mtime_ns: i64) -> Option<Stamp> {
        Some(Stamp {
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
            inode: 1,
            dev: 1,
        })
    }

    #[test]
    fn a_closed_file_is_taken_after_a_quiet_period() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Sighting::Closed, t0);
        let stat = |_: &Path| st(10, 1);
        assert!(
            settle.take_ready(t0, stat).is_empty(),
            "first sight only records the stamp"
        );
        assert!(
            settle
                .take_ready(t0 + Duration::from_secs(1), stat)
                .is_empty()
        );
        assert_eq!(
            settle.take_ready(t0 + PERIOD, stat),
            vec![path.to_path_buf()]
        );
        assert!(settle.is_empty());
    }

    #[test]
    fn a_growing_file_is_never_taken() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Sighting::Closed, t0);
        let size = Cell::new(0u64);
        for second in 0..10 {
            size.set(size.get() + 100);
            let now = t0 + Duration::from_secs(second * 3);
            assert!(settle.take_ready(now, |_| st(size.get(), 1)).is_empty());
        }
    }

    #[test]
    fn an_open_file_waits_for_its_close_even_when_quiet() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Sighting::Open, t0);
        let stat = |_: &Path| st(10, 1);
        settle.take_ready(t0, stat);
        assert!(
            settle
                .take_ready(t0 + Duration::from_secs(60), stat)
                .is_empty()
        );
        let closed_at = t0 + Duration::from_secs(61);
        settle.touch(path, Sighting::Closed, closed_at);
        assert!(
            settle
                .take_ready(closed_at + Duration::from_secs(1), stat)
                .is_empty()
        );
        assert_eq!(settle.take_ready(closed_at + PERIOD, stat).len(), 1);
    }

    #[test]
    fn a_metadata_change_keeps_the_write_state() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let stat = |_: &Path| st(10, 1);
        let closed = Path::new("/w/closed.jpg");
        settle.touch(closed, Sighting::Closed, t0);
        settle.touch(closed, Sighting::Metadata, t0);
        let open = Path::new("/w/open.jpg");
        settle.touch(open, Sighting::Open, t0);
        settle.touch(open, Sighting::Metadata, t0);
        settle.take_ready(t0, stat);
        assert_eq!(
            settle.take_ready(t0 + PERIOD, stat),
            vec![closed.to_path_buf()]
        );
    }

    /// Seen open while the tracker was full, then a chmod once there is room: still open.
    #[test]
    fn a_file_seen_open_while_untracked_stays_open_through_a_metadata_event() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let stat = |_: &Path| st(10, 1);
        let path = Path::new("/w/downloading.jpg");
        settle.untracked(path, Sighting::Open);
        settle.touch(path, Sighting::Metadata, t0);
        settle.take_ready(t0, stat);
        assert!(settle.take_ready(t0 + PERIOD * 3, stat).is_empty());
        settle.touch(path, Sighting::Closed, t0 + PERIOD * 3);
        settle.take_ready(t0 + PERIOD * 3, stat);
        assert_eq!(
            settle.take_ready(t0 + PERIOD * 4, stat),
            vec![path.to_path_buf()]
        );
    }

    #[test]
    fn a_scan_does_not_close_a_file_inotify_saw_open() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let stat = |_: &Path| st(10, 1);
        let path = Path::new("/w/download.jpg");
        settle.touch(path, Sighting::Open, t0);
        settle.touch(path, Sighting::Scanned, t0);
        settle.take_ready(t0, stat);
        assert!(
            settle
                .take_ready(t0 + Duration::from_secs(60), stat)
                .is_empty(),
            "a file still open for writing is never taken"
        );
        let found = Path::new("/w/found.jpg");
        settle.touch(found, Sighting::Scanned, t0);
        settle.take_ready(t0, stat);
        assert_eq!(
            settle.take_ready(t0 + PERIOD, stat),
            vec![found.to_path_buf()]
        );
    }

    #[test]
    fn the_next_deadline_is_the_end_of_the_quiet_period() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        assert_eq!(settle.next_deadline(), None);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Sighting::Closed, t0);
        assert_eq!(
            settle.next_deadline(),
            Some(t0),
            "a new path is looked at at once"
        );
        settle.take_ready(t0, |_| st(10, 1));
        assert_eq!(settle.next_deadline(), Some(t0 + PERIOD));
        let open = Path::new("/w/open.jpg");
        settle.touch(open, Sighting::Open, t0);
        settle.take_ready(t0, |_| st(10, 1));
        assert_eq!(
            settle.next_deadline(),
            Some(t0 + PERIOD),
            "an open file sets no deadline"
        );
    }

    #[test]
    fn a_path_is_queued_once_however_many_events_it_has() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/big.tif");
        let stat = |_: &Path| st(10, 1);
        for ms in 0..1000 {
            settle.touch(path, Sighting::Open, t0 + Duration::from_millis(ms));
        }
        assert_eq!(settle.queue.len(), 1, "a write of a thousand events");
        let closed_at = t0 + Duration::from_secs(1);
        settle.touch(path, Sighting::Closed, closed_at);
        assert_eq!(settle.queue.len(), 1);
        assert!(settle.take_ready(closed_at, stat).is_empty());
        assert_eq!(settle.next_deadline(), Some(closed_at + PERIOD));
        assert!(
            settle
                .take_ready(closed_at + PERIOD - Duration::from_millis(1), stat)
                .is_empty()
        );
        assert_eq!(settle.take_ready(closed_at + PERIOD, stat).len(), 1);
        assert!(settle.is_empty());
        assert_eq!(settle.next_deadline(), None);
    }

    #[test]
    fn an_event_after_the_first_look_moves_the_deadline_on() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        let stat = |_: &Path| st(10, 1);
        settle.touch(path, Sighting::Closed, t0);
        settle.take_ready(t0, stat);
        let again = t0 + Duration::from_secs(1);
        settle.touch(path, Sighting::Closed, again);
        assert!(
            settle.take_ready(t0 + PERIOD, stat).is_empty(),
            "quiet only a period after the last event"
        );
        assert_eq!(settle.next_deadline(), Some(again + PERIOD));
        assert_eq!(settle.take_ready(again + PERIOD, stat).len(), 1);
    }

    #[test]
    fn a_file_left_untracked_while_open_is_known_open_until_closed_or_tracked() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/copying.jpg");
        settle.untracked(path, Sighting::Open);
        settle.untracked(path, Sighting::Metadata);
        assert!(settle.seen_open(path));
        settle.untracked(path, Sighting::Closed);
        assert!(!settle.seen_open(path));
        settle.untracked(path, Sighting::Open);
        settle.touch(path, Sighting::Open, t0);
        assert!(
            !settle.seen_open(path),
            "tracked, it is the tracker's to follow"
        );
        settle.take_ready(t0, |_| st(10, 1));
        assert!(
            settle
                .take_ready(t0 + PERIOD * 10, |_| st(10, 1))
                .is_empty(),
            "still open"
        );
        let other = Path::new("/w/sub/other.jpg");
        settle.untracked(other, Sighting::Open);
        settle.forget_under(Path::new("/w/sub"));
        assert!(!settle.seen_open(other));
    }

    #[test]
    fn a_file_held_open_is_reported_once_when_it_has_waited_long_and_taken_at_its_close() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Sighting::Open, t0);
        let stat = |_: &Path| st(10, 1);
        settle.take_ready(t0, stat);
        let long = PERIOD * STALLED_AFTER_PERIODS;
        assert_eq!(
            settle.next_deadline(),
            Some(t0 + long),
            "an open file wakes the watch only to be reported"
        );
        assert!(settle.take_ready(t0 + long / 2, stat).is_empty());
        assert!(settle.take_stalled().is_empty(), "not long enough yet");
        assert!(settle.take_ready(t0 + long, stat).is_empty());
        assert_eq!(
            settle.take_stalled(),
            vec![Stalled {
                path: path.to_path_buf(),
                open: true,
                waited: long
            }]
        );
        assert_eq!(settle.next_deadline(), None, "reported once, then it waits");
        assert!(settle.take_ready(t0 + long * 3, stat).is_empty());
        assert!(settle.take_stalled().is_empty(), "reported once");
        let closed_at = t0 + long * 3;
        settle.touch(path, Sighting::Closed, closed_at);
        assert_eq!(
            settle.take_ready(closed_at + PERIOD, stat),
            vec![path.to_path_buf()]
        );
    }

    #[test]
    fn a_file_that_keeps_changing_is_reported_as_changing_and_a_quick_one_not_at_all() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let (busy, quick) = (Path::new("/w/busy.jpg"), Path::new("/w/quick.jpg"));
        settle.touch(busy, Sighting::Closed, t0);
        settle.touch(quick, Sighting::Closed, t0);
        let size = Cell::new(0u64);
        let stat = |p: &Path| match p == busy {
            true => st(size.get(), 1),
            false => st(5, 1),
        };
        let mut now = t0;
        let mut reported = Vec::new();
        while now <= t0 + PERIOD * (STALLED_AFTER_PERIODS * 2) {
            size.set(size.get() + 1);
            let ready = settle.take_ready(now, stat);
            assert!(!ready.contains(&busy.to_path_buf()), "never taken half");
            reported.extend(settle.take_stalled());
            now += PERIOD;
        }
        assert!(!settle.contains(quick), "the quick one was taken");
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].path, busy);
        assert!(!reported[0].open);
        assert!(reported[0].waited >= PERIOD * STALLED_AFTER_PERIODS);
    }

    #[test]
    fn a_vanished_file_is_dropped() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        settle.touch(Path::new("/w/a.jpg"), Sighting::Closed, t0);
        assert!(settle.take_ready(t0 + PERIOD, |_| None).is_empty());
        assert!(settle.is_empty());
    }
}
