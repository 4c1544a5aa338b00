//! Which slot holds which job, so that no claim gives out a job a slot still holds.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::journal::Job;

use super::lock;

/// Which slot holds which job: claimed, in transfer, or with its outcome not yet committed. No
/// claim gives out a job held here, even one whose lease ran out (a journal unwritable for that
/// long), so it is never sent by two slots. A slot's jobs leave with it however it ends, a panic
/// too: a job held by a slot that is gone would never be given out again.
#[derive(Debug, Default)]
pub(super) struct Holdings(Mutex<HashMap<i64, (u64, String)>>);

impl Holdings {
    pub(super) fn hold(&self, slot: u64, job: &Job) {
        lock(&self.0).insert(job.id, (slot, job.vendor.clone()));
    }

    /// Lets go of job `id`, if `slot` is the one holding it.
    pub(super) fn let_go(&self, slot: u64, id: i64) {
        let mut held = lock(&self.0);
        if held.get(&id).is_some_and(|(holder, _)| *holder == slot) {
            held.remove(&id);
        }
    }

    pub(super) fn let_go_all(&self, slot: u64) {
        lock(&self.0).retain(|_, (holder, _)| *holder != slot);
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// What is held now, for a claim.
    pub(super) fn held(&self) -> Held {
        let mut held = Held::default();
        for (id, (_, vendor)) in lock(&self.0).iter() {
            *held.in_flight.entry(vendor.clone()).or_default() += 1;
            held.jobs.insert(*id);
        }
        held
    }
}

/// What this daemon's slots hold when a claim is asked for.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Per vendor: a claim takes the least busy vendor first.
    pub(super) in_flight: HashMap<String, usize>,
    /// Never given out again, even with their lease run out: a slot still holds each.
    pub(super) jobs: HashSet<i64>,
}
