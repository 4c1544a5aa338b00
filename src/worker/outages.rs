//! The circuit breaker's memory: consecutive failed calls per vendor, and when each vendor was
//! last paused, so a job claimed before its vendor's pause is put back rather than sent.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;

/// After this many calls in a row fail for want of an answer (network, timeout, 5xx), the vendor
/// is taken as down: its jobs wait behind one probe instead of each being tried in turn.
pub(super) const OUTAGE_AFTER: u32 = 5;

/// Consecutive failed calls per vendor: the circuit breaker's memory; and when each vendor was
/// last paused, so a job claimed before its vendor's pause is put back rather than sent.
#[derive(Debug, Default)]
pub struct Outages {
    failures: Mutex<HashMap<String, u32>>,
    /// Pauses made so far, and the count when each vendor was last paused.
    pauses: Mutex<(u64, HashMap<String, u64>)>,
}

impl Outages {
    /// Counts a call's outcome; returns how many calls in a row have now failed.
    pub(super) fn record(&self, vendor: &str, failed: bool) -> u32 {
        let mut counts = lock(&self.failures);
        if failed {
            let count = counts.entry(vendor.to_string()).or_default();
            *count += 1;
            *count
        } else {
            counts.remove(vendor);
            0
        }
    }

    /// Pauses made so far: taken before a claim, to ask [`Outages::paused_since`] before its job
    /// runs.
    pub(super) fn pauses(&self) -> u64 {
        lock(&self.pauses).0
    }

    /// Counts a pause of `vendor`, once it is recorded in the journal: a claim asked for after
    /// this sees the pause in the journal; one asked for before it is caught by `paused_since`.
    pub(super) fn paused(&self, vendor: &str) {
        let mut pauses = lock(&self.pauses);
        pauses.0 += 1;
        let count = pauses.0;
        pauses.1.insert(vendor.to_string(), count);
    }

    /// Whether `vendor` was paused after the count was `pauses`.
    pub(super) fn paused_since(&self, vendor: &str, pauses: u64) -> bool {
        lock(&self.pauses)
            .1
            .get(vendor)
            .is_some_and(|at| *at > pauses)
    }
}
