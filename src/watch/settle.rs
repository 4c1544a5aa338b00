//! The settle tracker: a file is taken only when its write was closed (or it was moved in or found
//! by a scan) *and* its size and mtime stayed the same for the settle period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size and mtime (ns) as last seen.
pub type Stamp = (u64, i64);

#[derive(Debug)]
struct Pending {
    stamp: Option<Stamp>,
    stable_since: Instant,
    last_event: Instant,
    closed: bool,
}

#[derive(Debug)]
pub struct Settle {
    period: Duration,
    pending: HashMap<PathBuf, Pending>,
}

impl Settle {
    pub fn new(period: Duration) -> Settle {
        Settle {
            period,
            pending: HashMap::new(),
        }
    }

    /// Something happened to `path`. `Some(true)`: the write is known to be finished (close-write,
    /// moved in, seen by a scan); `Some(false)`: it was written to and may still be open; `None`:
    /// only its metadata changed (chmod, touch), which says nothing about an open write.
    pub fn touch(&mut self, path: &Path, closed: Option<bool>, now: Instant) {
        let entry = self.pending.entry(path.to_path_buf()).or_insert(Pending {
            stamp: None,
            stable_since: now,
            last_event: now,
            closed: closed.unwrap_or(true),
        });
        entry.last_event = now;
        if let Some(closed) = closed {
            entry.closed = closed;
        }
    }

    pub fn forget(&mut self, path: &Path) {
        self.pending.remove(path);
    }

    /// Forgets every path under `dir` (it was removed or moved away).
    pub fn forget_under(&mut self, dir: &Path) {
        self.pending.retain(|p, _| !p.starts_with(dir));
    }

    /// Every tracked path at once, for a one-shot scan (which re-checks stability as it reads).
    pub fn drain(&mut self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.pending.drain().map(|(p, _)| p).collect();
        paths.sort();
        paths
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The paths that have settled, removed from the tracker. `stat` reads a path's current stamp
    /// (`None`: gone, and so dropped).
    pub fn take_ready(
        &mut self,
        now: Instant,
        stat: impl Fn(&Path) -> Option<Stamp>,
    ) -> Vec<PathBuf> {
        let period = self.period;
        let mut ready = Vec::new();
        self.pending.retain(|path, entry| {
            let Some(stamp) = stat(path) else {
                return false;
            };
            if entry.stamp != Some(stamp) {
                entry.stamp = Some(stamp);
                entry.stable_since = now;
                return true;
            }
            let quiet = now.duration_since(entry.stable_since) >= period
                && now.duration_since(entry.last_event) >= period;
            if entry.closed && quiet {
                ready.push(path.clone());
                return false;
            }
            true
        });
        ready.sort();
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const PERIOD: Duration = Duration::from_secs(2);

    #[test]
    fn a_closed_file_is_taken_after_a_quiet_period() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Some(true), t0);
        let stat = |_: &Path| Some((10, 1));
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
        settle.touch(path, Some(true), t0);
        let size = Cell::new(0u64);
        for second in 0..10 {
            size.set(size.get() + 100);
            let now = t0 + Duration::from_secs(second * 3);
            assert!(settle.take_ready(now, |_| Some((size.get(), 1))).is_empty());
        }
    }

    #[test]
    fn an_open_file_waits_for_its_close_even_when_quiet() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        let path = Path::new("/w/a.jpg");
        settle.touch(path, Some(false), t0);
        let stat = |_: &Path| Some((10, 1));
        settle.take_ready(t0, stat);
        assert!(
            settle
                .take_ready(t0 + Duration::from_secs(60), stat)
                .is_empty()
        );
        let closed_at = t0 + Duration::from_secs(61);
        settle.touch(path, Some(true), closed_at);
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
        let stat = |_: &Path| Some((10, 1));
        let closed = Path::new("/w/closed.jpg");
        settle.touch(closed, Some(true), t0);
        settle.touch(closed, None, t0);
        let open = Path::new("/w/open.jpg");
        settle.touch(open, Some(false), t0);
        settle.touch(open, None, t0);
        settle.take_ready(t0, stat);
        assert_eq!(
            settle.take_ready(t0 + PERIOD, stat),
            vec![closed.to_path_buf()]
        );
    }

    #[test]
    fn a_vanished_file_is_dropped() {
        let t0 = Instant::now();
        let mut settle = Settle::new(PERIOD);
        settle.touch(Path::new("/w/a.jpg"), Some(true), t0);
        assert!(settle.take_ready(t0 + PERIOD, |_| None).is_empty());
        assert!(settle.is_empty());
    }
}
