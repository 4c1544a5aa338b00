//! How soon each watch records a file that arrives. A watch that polls sees a file only at a
//! later poll, and a poll of a big tree takes as long as a walk of it; a watch taking in a
//! thousand copied files records the last of them only once it has examined the rest. A file
//! moved from one watch to another of the same vendor keeps its remote copy only if the new
//! place records it before the old place decides its removal: so every watch of a vendor waits
//! for the slowest, and for those still taking files in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What each running watch tells the others about how soon it records a file, shared by the
/// daemon's watches.
#[derive(Debug, Clone, Default)]
pub struct Sightings(Arc<Mutex<Watches>>);

#[derive(Debug, Default)]
struct Watches {
    /// Each watch's vendor, and how late it sees a file arrive (pollers only).
    delays: HashMap<PathBuf, (String, Duration, Owner)>,
    /// The watches with files seen and not yet recorded, and their vendors.
    taking_in: HashMap<PathBuf, (String, Owner)>,
}

/// Which watch task set an entry. A task cut short at a reload may end only after its
/// replacement on the same root has set its own: its end must not take those away.
pub type Owner = u64;

/// A new watch task's [`Owner`].
pub fn new_owner() -> Owner {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Sightings {
    fn lock(&self) -> MutexGuard<'_, Watches> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `root`, a watch of `vendor` run by `owner`, sees a file that arrives at most `delay` late.
    pub fn set_delay(&self, root: &Path, owner: Owner, vendor: &str, delay: Duration) {
        let mut watches = self.lock();
        match delay.is_zero() {
            true => watches.delays.remove(root),
            false => watches
                .delays
                .insert(root.to_path_buf(), (vendor.to_string(), delay, owner)),
        };
    }

    /// Whether `root`, a watch of `vendor` run by `owner`, has files it saw and has not
    /// recorded yet.
    pub fn set_taking_in(&self, root: &Path, owner: Owner, vendor: &str, taking_in: bool) {
        let mut watches = self.lock();
        match taking_in {
            true => watches
                .taking_in
                .insert(root.to_path_buf(), (vendor.to_string(), owner)),
            false => watches.taking_in.remove(root),
        };
    }

    /// The watch task `owner` at `root` ended: what it set goes, not what a task that took its
    /// place set since.
    pub fn forget(&self, root: &Path, owner: Owner) {
        let mut watches = self.lock();
        if watches
            .delays
            .get(root)
            .is_some_and(|(_, _, o)| *o == owner)
        {
            watches.delays.remove(root);
        }
        if watches
            .taking_in
            .get(root)
            .is_some_and(|(_, o)| *o == owner)
        {
            watches.taking_in.remove(root);
        }
    }

    /// The longest delay of any watch of `vendor`.
    pub fn longest(&self, vendor: &str) -> Duration {
        self.lock()
            .delays
            .values()
            .filter(|(v, _, _)| v == vendor)
            .map(|(_, delay, _)| *delay)
            .max()
            .unwrap_or_default()
    }

    /// Whether a watch of `vendor` other than `root` has files it saw and has not recorded yet:
    /// one of them may be a file that left `root`.
    pub fn taking_in_elsewhere(&self, vendor: &str, root: &Path) -> bool {
        self.lock()
            .taking_in
            .iter()
            .any(|(other, (v, _))| v == vendor && other != root)
    }
}

/// A poller's delay: a file that arrives just after a poll began is seen by the next, which
/// starts a poll interval after this one ended and takes as long to walk the tree. Two of those,
/// as a file's first poll may find it still being written.
pub fn poll_delay(interval: Duration, walk: Duration) -> Duration {
    (interval + walk) * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_watch_of_the_vendor_sets_the_wait() {
        let sightings = Sightings::default();
        sightings.set_delay(Path::new("/a"), 1, "erp", Duration::from_secs(4));
        sightings.set_delay(Path::new("/b"), 2, "erp", Duration::from_secs(9));
        sightings.set_delay(Path::new("/c"), 3, "wiki", Duration::from_secs(60));
        assert_eq!(sightings.longest("erp"), Duration::from_secs(9));
        sightings.forget(Path::new("/b"), 2);
        assert_eq!(sightings.longest("erp"), Duration::from_secs(4));
        sightings.set_delay(Path::new("/a"), 1, "erp", Duration::ZERO);
        assert_eq!(sightings.longest("erp"), Duration::ZERO);
        assert_eq!(sightings.longest("wiki"), Duration::from_secs(60));
        assert_eq!(
            poll_delay(Duration::from_secs(2), Duration::from_millis(500)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn only_another_watch_of_the_vendor_taking_files_in_is_waited_for() {
        let sightings = Sightings::default();
        let (a, b, c) = (Path::new("/a"), Path::new("/b"), Path::new("/c"));
        sightings.set_taking_in(a, 1, "erp", true);
        sightings.set_taking_in(c, 3, "wiki", true);
        assert!(!sightings.taking_in_elsewhere("erp", a), "itself");
        assert!(sightings.taking_in_elsewhere("erp", b));
        assert!(!sightings.taking_in_elsewhere("other", b));
        sightings.set_taking_in(a, 1, "erp", false);
        assert!(!sightings.taking_in_elsewhere("erp", b));
        sightings.set_taking_in(a, 1, "erp", true);
        sightings.forget(a, 1);
        assert!(!sightings.taking_in_elsewhere("erp", b));
    }

    /// A watch cut short at a reload whose task ends only after its replacement started (it was
    /// stuck in a call to the filesystem) leaves the replacement's word standing.
    #[test]
    fn a_task_that_ends_late_forgets_only_what_it_set() {
        let sightings = Sightings::default();
        let a = Path::new("/a");
        let (old, new) = (new_owner(), new_owner());
        sightings.set_delay(a, old, "erp", Duration::from_secs(4));
        sightings.set_delay(a, new, "erp", Duration::from_secs(6));
        sightings.set_taking_in(a, new, "erp", true);
        sightings.forget(a, old);
        assert_eq!(sightings.longest("erp"), Duration::from_secs(6));
        assert!(sightings.taking_in_elsewhere("erp", Path::new("/b")));
        sightings.forget(a, new);
        assert_eq!(sightings.longest("erp"), Duration::ZERO);
    }
}
