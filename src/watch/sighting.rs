//! How long a file may take to be seen where it went. A watch that polls sees a file only at a
//! later poll, and a poll of a big tree takes as long as a walk of it. A file moved from one
//! watch to another of the same vendor keeps its remote copy only if the new place records it
//! before the old place decides its removal: so every watch of a vendor waits for the slowest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Each running watch's delay in seeing a file arrive, shared by the daemon's watches.
#[derive(Debug, Clone, Default)]
pub struct SightingDelays(Arc<Mutex<HashMap<PathBuf, (String, Duration)>>>);

impl SightingDelays {
    /// `root`, a watch of `vendor`, sees a file that arrives at most `delay` late.
    pub fn set(&self, root: &Path, vendor: &str, delay: Duration) {
        let mut delays = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match delay.is_zero() {
            true => delays.remove(root),
            false => delays.insert(root.to_path_buf(), (vendor.to_string(), delay)),
        };
    }

    /// The watch at `root` stopped.
    pub fn forget(&self, root: &Path) {
        self.set(root, "", Duration::ZERO);
    }

    /// The longest delay of any watch of `vendor`.
    pub fn longest(&self, vendor: &str) -> Duration {
        let delays = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        delays
            .values()
            .filter(|(v, _)| v == vendor)
            .map(|(_, delay)| *delay)
            .max()
            .unwrap_or_default()
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
        let delays = SightingDelays::default();
        delays.set(Path::new("/a"), "erp", Duration::from_secs(4));
        delays.set(Path::new("/b"), "erp", Duration::from_secs(9));
        delays.set(Path::new("/c"), "wiki", Duration::from_secs(60));
        assert_eq!(delays.longest("erp"), Duration::from_secs(9));
        delays.forget(Path::new("/b"));
        assert_eq!(delays.longest("erp"), Duration::from_secs(4));
        delays.set(Path::new("/a"), "erp", Duration::ZERO);
        assert_eq!(delays.longest("erp"), Duration::ZERO);
        assert_eq!(delays.longest("wiki"), Duration::from_secs(60));
        assert_eq!(
            poll_delay(Duration::from_secs(2), Duration::from_millis(500)),
            Duration::from_secs(5)
        );
    }
}
