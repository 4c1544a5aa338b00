//! Per-vendor request pacing, so that a backlog drains at the documented rate instead of
//! discovering it through 429s.
//!
//! Vendors count requests in sliding windows ("50 a second and 1000 a minute": never more than that
//! many in any second or minute). A token bucket does not keep to that: a full bucket's burst plus
//! what refills during the window is up to twice the limit. So the pacer remembers when it let each
//! recent request go and lets one more go only when the window behind it holds fewer than the
//! limit, with a small margin for requests that reach the vendor later than others.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The part of a window added as a margin for the time a request takes to reach the vendor (a
/// fortieth: 25 ms a second, 1.5 s a minute): what keeps the vendor from ever answering 429, at
/// 2.5 % of its ceiling.
const MARGIN_DIVISOR: u32 = 40;

#[derive(Debug)]
struct Window {
    span: Duration,
    limit: usize,
    /// When the latest requests (at most `limit`) were let go, oldest first.
    sent: VecDeque<Instant>,
}

impl Window {
    fn new(span: Duration, limit: u32) -> Window {
        Window {
            span: span + span / MARGIN_DIVISOR,
            limit: limit.max(1) as usize,
            sent: VecDeque::new(),
        }
    }

    /// When this window lets the next request go.
    fn next_free(&mut self, now: Instant) -> Instant {
        while self.sent.len() > self.limit
            || self.sent.front().is_some_and(|t| now >= *t + self.span)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit {
            now
        } else {
            self.sent[0] + self.span
        }
    }
}

#[derive(Debug)]
struct State {
    windows: [Window; 2],
    /// Nothing goes before this (the vendor asked us to wait, e.g. after a 429).
    hold_until: Option<Instant>,
}

impl State {
    /// When the next request may go.
    fn free_at(&mut self, now: Instant) -> Instant {
        let mut free_at = self.hold_until.filter(|h| *h > now).unwrap_or(now);
        for window in &mut self.windows {
            free_at = free_at.max(window.next_free(now));
        }
        free_at
    }

    fn count(&mut self, now: Instant) {
        for window in &mut self.windows {
            window.sent.push_back(now);
        }
    }
}

/// Waits until every one of `pacers` lets one more request go, then counts it in each, at once:
/// a request that keeps to several limits (its vendor's, its API key's, its company's) is
/// counted in none until all of them allow it, so it is counted when it really goes. The pacers
/// are distinct (one lock each).
pub async fn ready_all<const N: usize>(mut pacers: [&Pacer; N]) {
    // Locked in one order (by address), so two requests through the same pacers never wait on
    // each other's locks.
    pacers.sort_by_key(|p| std::ptr::from_ref(*p) as usize);
    // The same pacer twice would wait on its own lock for good.
    assert!(pacers.windows(2).all(|w| !std::ptr::eq(w[0], w[1])));
    let asked = Instant::now();
    let mut waited = false;
    loop {
        let now = Instant::now();
        let free_at = {
            let mut states = pacers.map(|p| p.state.lock().unwrap_or_else(|e| e.into_inner()));
            let free_at = states
                .iter_mut()
                .map(|state| state.free_at(now))
                .max()
                .unwrap_or(now);
            if free_at <= now {
                states.iter_mut().for_each(|state| state.count(now));
                if waited {
                    crate::metrics::rate_limit_wait(now - asked);
                }
                return;
            }
            free_at
        };
        waited = true;
        tokio::time::sleep_until(free_at).await;
    }
}

/// A per-second and a per-minute budget; a request waits until both allow it.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(per_second: u32, per_minute: u32) -> Pacer {
        Pacer {
            state: Mutex::new(State {
                windows: [
                    Window::new(Duration::from_secs(1), per_second),
                    Window::new(Duration::from_secs(60), per_minute),
                ],
                hold_until: None,
            }),
        }
    }

    /// Waits until one more request may go, and counts it.
    pub async fn ready(&self) {
        ready_all([self]).await;
    }

    /// Lets nothing go for `wait` (the vendor said when its window reopens).
    pub fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.hold_until = Some(state.hold_until.map_or(until, |h| h.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most requests let go in any window of `span` among `times`.
    fn densest(times: &[Instant], span: Duration) -> usize {
        times
            .iter()
            .map(|t| {
                times
                    .iter()
                    .filter(|u| **u >= *t && **u < *t + span)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_its_limit() {
        let pacer = Pacer::new(5, 12);
        let mut times = Vec::new();
        for _ in 0..30 {
            pacer.ready().await;
            times.push(Instant::now());
        }
        assert!(densest(&times, Duration::from_secs(1)) <= 5);
        assert!(densest(&times, Duration::from_secs(60)) <= 12);
        // The first five go at once: a small batch is not spread out for nothing.
        assert_eq!(times[4], times[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_delays_everything_behind_it() {
        let pacer = Pacer::new(100, 1000);
        let start = Instant::now();
        pacer.hold(Duration::from_secs(3));
        pacer.ready().await;
        assert!(Instant::now() >= start + Duration::from_secs(3));
    }
}
