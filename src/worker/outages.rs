//! The circuit breaker's memory: consecutive failed calls per vendor, and when each vendor was
//! last paused, so a job claimed before its vendor's pause is put back rather than sent.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;

/// After this many calls in a row fail for want of an answer (network, timeout, 5xx), the vendor
/// is taken as down: its jobs wait behind one probe instead of each being tried in turn. A job
/// failing again right after itself counts once: one file the vendor chokes on (a 500 for that
/// image, a big file on a slow link) is that file's trouble, retried with its own backoff, and
/// pauses nobody.
pub(super) const OUTAGE_AFTER: u32 = 5;

/// Consecutive failed calls per vendor: the circuit breaker's memory; and when each vendor was
/// last paused, so a job claimed before its vendor's pause is put back rather than sent.
#[derive(Debug, Default)]
pub struct Outages {
    /// Per vendor: failed calls in a row, and the job of the last.
    failures: Mutex<HashMap<String, (u32, i64)>>,
    /// Pauses made so far, and the count when each vendor was last paused.
    pauses: Mutex<(u64, HashMap<String, u64>)>,
}

impl Outages {
    /// Counts the outcome of a call for `job`; returns how many calls in a row have now failed,
    /// a job's failures right after its own counting once.
    pub(super) fn record(&self, vendor: &str, job: i64, failed: bool) -> u32 {
        let mut counts = lock(&self.failures);
        if !failed {
            counts.remove(vendor);
            return 0;
        }
        let (count, last) = counts.entry(vendor.to_string()).or_insert((0, job));
        if *count == 0 || *last != job {
            *count += 1;
        }
        *last = job;
        *count
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_failing_again_and_again_counts_once() {
        let outages = Outages::default();
        let runs: Vec<u32> = (0..6).map(|_| outages.record("v", 7, true)).collect();
        assert_eq!(runs, [1, 1, 1, 1, 1, 1]);
        let runs: Vec<u32> = [8, 9, 9, 7, 8]
            .map(|job| outages.record("v", job, true))
            .into();
        assert_eq!(runs, [2, 3, 3, 4, 5], "other jobs' failures add up");
        assert_eq!(outages.record("w", 1, true), 1, "per vendor");
        assert_eq!(outages.record("v", 8, false), 0);
        assert_eq!(outages.record("v", 8, true), 1, "a success ends the run");
    }
}
