//! Per-vendor request pacing, so that a backlog drains at the documented rate instead of
//! discovering it through 429s.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A per-second and a per-minute budget; a request waits until both allow it.
#[derive(Debug)]
pub struct Pacer {
    per_second: DefaultDirectRateLimiter,
    per_minute: DefaultDirectRateLimiter,
}

impl Pacer {
    pub fn new(per_second: u32, per_minute: u32) -> Pacer {
        let nz = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Pacer {
            per_second: RateLimiter::direct(Quota::per_second(nz(per_second))),
            per_minute: RateLimiter::direct(Quota::per_minute(nz(per_minute))),
        }
    }

    pub async fn ready(&self) {
        self.per_minute.until_ready().await;
        self.per_second.until_ready().await;
    }
}
