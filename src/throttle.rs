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
            Verdict::Suppress
        }
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
}
