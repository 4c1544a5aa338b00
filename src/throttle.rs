//! Keeps a storm of identical log lines (a vendor outage retried by thousands of queued jobs) from
//! flooding journald: a few lines per key and window, then one line saying how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Window {
    started: Instant,
    emitted: u32,
    suppressed: u64,
}

#[derive(Debug)]
pub struct LogThrottle {
    window: Duration,
    burst: u32,
    keys: Mutex<HashMap<String, Window>>,
    first_held: tokio::sync::Notify,
}

/// Whether to write a line, and how many like it were held back since the last one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Log { held_back: u64 },
    Suppress,
}

impl LogThrottle {
    pub fn new(window: Duration, burst: u32) -> LogThrottle {
        LogThrottle {
            window,
            burst,
            keys: Mutex::new(HashMap::new()),
            first_held: tokio::sync::Notify::new(),
        }
    }

    pub fn check(&self, key: &str, now: Instant) -> Verdict {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() > 10_000 {
            keys.retain(|_, w| now.duration_since(w.started) < self.window);
        }
        let window = keys.entry(key.to_string()).or_insert(Window {
            started: now,
            emitted: 0,
            suppressed: 0,
        });
        let mut held_back = 0;
        if now.duration_since(window.started) >= self.window {
            held_back = window.suppressed;
            *window = Window {
                started: now,
                emitted: 0,
                suppressed: 0,
            };
        }
        if window.emitted < self.burst {
            window.emitted += 1;
            Verdict::Log { held_back }
        } else {
            window.suppressed += 1;
            if window.suppressed == 1 {
                self.first_held.notify_one();
            }
            Verdict::Suppress
        }
    }

    /// The lines held back in windows that have ended, per key; each is counted once (the next
    /// line written for the key no longer reports them).
    pub fn flush(&self, now: Instant) -> Vec<(String, u64)> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = keys
            .iter_mut()
            .filter(|(_, w)| w.suppressed > 0 && now.duration_since(w.started) >= self.window)
            .map(|(key, w)| (key.clone(), std::mem::take(&mut w.suppressed)))
            .collect();
        out.sort();
        out
    }

    /// When the earliest window holding back lines ends.
    pub fn next_flush(&self) -> Option<Instant> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.started + self.window)
            .min()
    }

    /// Resolves when a key starts holding lines back (its first suppressed line in a window).
    pub async fn held_back(&self) {
        self.first_held.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_cut_to_a_burst_and_the_rest_counted() {
        let throttle = LogThrottle::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..10).map(|_| throttle.check("erp: 503", t0)).collect();
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Log { .. }))
                .count(),
            3
        );
        assert_eq!(
            throttle.check("other key", t0),
            Verdict::Log { held_back: 0 }
        );
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            throttle.check("erp: 503", later),
            Verdict::Log { held_back: 7 }
        );
    }

    #[test]
    fn a_storm_that_ends_is_summarised_once() {
        let throttle = LogThrottle::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        for _ in 0..5 {
            throttle.check("erp: rejected", t0);
        }
        assert_eq!(throttle.next_flush(), Some(t0 + Duration::from_secs(60)));
        assert!(throttle.flush(t0 + Duration::from_secs(30)).is_empty());
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            throttle.flush(later),
            vec![("erp: rejected".to_string(), 3)]
        );
        assert!(throttle.flush(later).is_empty(), "counted once");
        assert_eq!(throttle.next_flush(), None);
        assert_eq!(
            throttle.check("erp: rejected", later),
            Verdict::Log { held_back: 0 },
            "what the summary reported is not reported again"
        );
    }
}
