//! The worker's unit tests: claims, a slot's line, its holdings and its outcomes against a real
//! journal.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::adapters::{Adapter, Call, Outcome, VendorSet};
use crate::journal::{Claimed, Job, JobOp, JobResult, JournalHandle};

use super::claim::*;
use super::holdings::*;
use super::process::*;
use super::slot::*;
use super::*;

#[test]
fn backoff_grows_and_is_capped() {
    for attempts in 0..20 {
        let d = backoff(attempts, None);
        assert!(d <= MAX_BACKOFF);
        assert!(d >= Duration::from_secs(1));
    }
    assert!(backoff(5, None) >= Duration::from_secs(32));
}

/// A journal with `n` files queued for each of vendors "a" and "b", each file its own bytes.
fn queued(n: usize) -> (tempfile::TempDir, crate::journal::Journal) {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = crate::journal::Journal::open(&dir.path().join("j.sqlite3")).unwrap();
    for vendor in ["a", "b"] {
        for i in 0..n {
            observe(&mut journal, vendor, i, &format!("{vendor}{i:063}"));
        }
    }
    (dir, journal)
}

/// File `i` of `vendor`'s watch, with the bytes whose hash is `sha`: queued for upload.
fn observe(journal: &mut crate::journal::Journal, vendor: &str, i: usize, sha: &str) {
    let path = format!("/w/{vendor}{i}.png");
    let stamp = crate::journal::fixtures::stamp(100, i as u64);
    let obs = crate::journal::fixtures::observation(&path, vendor, sha, stamp);
    journal.observe(&obs, &|_| true).unwrap();
}

fn vendors_of(claims: &Claims) -> Vec<String> {
    claims.0.iter().map(|(job, _)| job.vendor.clone()).collect()
}

fn busy(counts: &[(&str, usize)]) -> Held {
    Held {
        in_flight: counts.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
        ..Held::default()
    }
}

fn behind(vendor: &str) -> ClaimFor {
    ClaimFor::Queue {
        behind: Some(vendor.into()),
    }
}

#[test]
fn a_slots_queue_holds_only_jobs_of_the_vendor_it_waits_behind() {
    let (_dir, mut j) = queued(3);
    let names = vec!["a".to_string(), "b".to_string()];
    // Behind a transfer of "b": only "b" ("a" is served by another slot).
    let a_served = busy(&[("a", 1), ("b", 1)]);
    let claims = claim_due(&mut j, &names, &a_served, 2, &behind("b")).unwrap();
    assert_eq!(vendors_of(&claims), ["b", "b"]);
    // Behind nothing: the least busy vendor first, then that vendor's jobs only.
    let busy_a = busy(&[("a", 3)]);
    let fresh = ClaimFor::Queue { behind: None };
    let claims = claim_due(&mut j, &names, &busy_a, 2, &fresh).unwrap();
    assert_eq!(vendors_of(&claims), ["b"], "b has one job left");
    // Free slots each run their own job: the least busy vendor each time.
    let claims = claim_due(&mut j, &names, &Held::default(), 2, &ClaimFor::Slots).unwrap();
    assert_eq!(vendors_of(&claims), ["a", "a"]);
}

/// Every slot on "a"'s backlog: a job of "b", which no slot serves, is not left waiting for
/// that backlog to end. It cuts in, first in line, alone.
#[test]
fn a_vendor_no_slot_serves_cuts_in_at_the_next_claim_behind_another() {
    let (_dir, mut j) = queued(3);
    let names = vec!["a".to_string(), "b".to_string()];
    let every_slot_on_a = busy(&[("a", 4)]);
    let claims = claim_due(&mut j, &names, &every_slot_on_a, 3, &behind("a")).unwrap();
    assert_eq!(vendors_of(&claims), ["b"]);

    // In the slot's line it goes before the jobs of "a" already waiting there.
    let claim = |job: Job| Claim {
        job,
        probe: None,
        pauses: 0,
        asked_at: Instant::now(),
    };
    let a_jobs = claim_due(&mut j, &names, &busy(&[("b", 1)]), 2, &behind("a")).unwrap();
    assert_eq!(vendors_of(&a_jobs), ["a", "a"]);
    let mut ahead: VecDeque<Claim> = a_jobs.0.into_iter().map(|(job, _)| claim(job)).collect();
    let cut_in = claims.0.into_iter().map(|(job, _)| claim(job)).collect();
    queue_up(&mut ahead, cut_in, Some("a"));
    let line: Vec<&str> = ahead.iter().map(|c| c.job.vendor.as_str()).collect();
    assert_eq!(line, ["b", "a", "a"]);
    // What a claim made behind "a" brings of "a" joins the back, whatever is ahead.
    let mut ahead: VecDeque<Claim> = ahead.into_iter().take(1).collect();
    let last_a = claim_due(
        &mut j,
        &["a".to_string()],
        &busy(&[("b", 1)]),
        1,
        &behind("a"),
    );
    let last_a = last_a
        .unwrap()
        .0
        .into_iter()
        .map(|(job, _)| claim(job))
        .collect();
    queue_up(&mut ahead, last_a, Some("a"));
    let line: Vec<&str> = ahead.iter().map(|c| c.job.vendor.as_str()).collect();
    assert_eq!(line, ["b", "a"]);
}

/// A bug that panics inside an adapter call ends that call, not the slot: the upload is
/// answered as unconfirmed (the vendor may hold the file: not sent again by itself), the
/// delete as a retry, each with the panic's message. Neither counts towards an outage, nor ends
/// one: a bug says nothing about the vendor.
#[test]
fn a_panic_inside_an_adapter_call_is_an_outcome_not_a_lost_slot() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let call = || async {
        // Once pending first, as a real call waiting on the network is.
        tokio::task::yield_now().await;
        let answer: &[u8] = b"{\"url\": \"http://x\"}";
        let end = answer.len() + 3;
        // A slice past the end: an answer nobody foresaw.
        let _ = answer[..end].len();
        Call::new(Outcome::Done(()), Some(200), None)
    };
    let upload = runtime.block_on(with_reauth(JobOp::Upload, call));
    match &upload.outcome {
        Outcome::Unconfirmed { reason } => {
            assert!(reason.contains("a bug: please report"), "{reason}");
            assert!(reason.contains("out of range"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let delete = runtime.block_on(with_reauth(JobOp::Delete, call));
    assert!(
        matches!(&delete.outcome, Outcome::Retry { reason, .. } if reason.contains("out of range")),
        "{:?}",
        delete.outcome
    );
    assert!(!upload.is_outage() && !delete.is_outage());
    // A paused vendor's probe that failed so leaves the vendor paused; one the vendor answered,
    // even refusing the file, resumes it.
    let probe = Some(Duration::from_secs(30));
    assert!(!answers_again(probe, &delete, &delete.outcome));
    assert!(!answers_again(probe, &upload, &upload.outcome));
    let answered: Call<()> = Call::new(
        Outcome::Rejected {
            reason: "not an image the vendor takes".into(),
        },
        Some(400),
        None,
    );
    assert!(answers_again(probe, &answered, &answered.outcome));
    assert!(!answers_again(None, &answered, &answered.outcome));
}

/// A reload removed the vendor a slot's queue waits behind: its jobs are not claimed any
/// more (they wait, queued, for the vendor to come back), so the slot runs dry and ends.
#[test]
fn a_queue_behind_a_vendor_no_longer_configured_claims_none_of_its_jobs() {
    let (_dir, mut j) = queued(2);
    let only_b = vec!["b".to_string()];
    let claims = claim_due(&mut j, &only_b, &busy(&[("b", 1)]), 2, &behind("a")).unwrap();
    assert!(claims.0.is_empty(), "{:?}", vendors_of(&claims));
}

#[test]
fn a_claim_held_past_half_its_lease_counts_as_running_out() {
    let (_dir, mut j) = queued(1);
    let job = first_job(&mut j);
    let claim = |held: Duration| Claim {
        job: job.clone(),
        probe: None,
        pauses: 0,
        asked_at: Instant::now()
            .checked_sub(held)
            .unwrap_or_else(Instant::now),
    };
    let half = Duration::from_millis(super::claim::LEASE_MS as u64 / 2);
    let minute = Duration::from_secs(60);
    assert!(!claim(Duration::ZERO).lease_running_out());
    assert!(!claim(half - minute).lease_running_out());
    if Instant::now().checked_sub(half + minute).is_some() {
        assert!(claim(half + minute).lease_running_out());
    }
}

/// Claims vendor "a"'s first due job, as the pool does for a free slot.
fn first_job(j: &mut crate::journal::Journal) -> Job {
    let names = vec!["a".to_string()];
    let (jobs, _) = claim_due(j, &names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    jobs.into_iter().next().expect("a job is due").0
}

/// A Kingdee adapter at `base_url`.
fn kingdee_at(base_url: &str) -> Arc<Adapter> {
    let config = crate::adapters::kingdee::KingdeeConfig {
        client_id: "1".into(),
        client_secret: crate::config::Secret::new("s"),
        app_key: "k".into(),
        app_secret: crate::config::Secret::new("s"),
        domain: "d".into(),
        save_temp: false,
    };
    let adapter = crate::adapters::kingdee::Kingdee::new(
        base_url,
        config,
        reqwest::Client::new(),
        None,
        None,
    );
    Arc::new(Adapter::Kingdee(adapter))
}

/// Vendors "a" and "b", configured (Kingdee adapters at a closed port).
fn vendors_a_and_b() -> Arc<VendorSet> {
    let kingdee = || kingdee_at("http://127.0.0.1:1");
    let vendors = Arc::new(VendorSet::default());
    vendors.replace([("a".into(), kingdee()), ("b".into(), kingdee())].into());
    vendors
}

/// A slot on `journal`, with vendors "a" and "b"; and the sender of its stop flag.
fn slot_on(journal: crate::journal::Journal) -> (Slot, JournalHandle, watch::Sender<bool>) {
    let journal = JournalHandle::new(journal);
    let (stopping, stop) = watch::channel(false);
    let slot = Slot {
        id: 1,
        ctx: WorkerContext {
            journal: journal.clone(),
            vendors: vendors_a_and_b(),
            wake: Arc::default(),
            give_up_after: Duration::from_secs(3600),
            retry_log: retry_log_throttle(),
            outages: Arc::default(),
            heartbeat: Arc::default(),
        },
        running: Arc::default(),
        stop,
    };
    (slot, journal, stopping)
}

#[test]
fn a_slots_job_is_held_until_its_outcome_is_committed() {
    let (_dir, mut j) = queued(2);
    let job = first_job(&mut j);
    let b_names = vec!["b".to_string()];
    let (b_jobs, _) = claim_due(&mut j, &b_names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    let (slot, _journal, _stopping) = slot_on(j);
    slot.running.hold(slot.id, &job);
    // Another slot serves "b", so this one's claim is for "a" alone.
    slot.running.hold(slot.id + 1, &b_jobs[0].0);
    // Its vendor paused: the outcome puts the job back in the queue, due at once. The claim
    // submitted behind that outcome passes over it all the same: the slot still held it.
    let decided = Decided {
        job: job.clone(),
        result: JobResult::Release,
        attempt: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    let recording = slot.record(decided, 2, Some("a".into()));
    assert!(
        slot.running.held().jobs.contains(&job.id),
        "held until settled"
    );
    let Settled::Recorded(next) = runtime.block_on(slot.settle(recording, true)) else {
        panic!("the outcome was recorded");
    };
    let ids: Vec<i64> = next.iter().map(|c| c.job.id).collect();
    assert_eq!(ids.len(), 1, "only the other job: {ids:?}");
    assert_ne!(ids[0], job.id);
    assert_eq!(next[0].job.vendor, "a");
    let held = slot.running.held().jobs;
    assert!(
        !held.contains(&job.id) && held.contains(&ids[0]),
        "{held:?}"
    );
    // A slot that ends, however it ends, lets go of what it held (and only that).
    let running = Arc::clone(&slot.running);
    drop(slot);
    assert_eq!(
        running.held().jobs,
        HashSet::from([b_jobs[0].0.id]),
        "the other slot's job stays held"
    );
}

#[test]
fn a_job_whose_outcome_waits_for_a_locked_journal_stays_held_until_it_is_written() {
    let (dir, mut j) = queued(2);
    let job = first_job(&mut j);
    j.set_busy_timeout(Duration::from_millis(50));
    let (slot, _journal, _stopping) = slot_on(j);
    slot.running.hold(slot.id, &job);
    // Another process holds the journal for longer than a write waits for it.
    let other = rusqlite::Connection::open(dir.path().join("j.sqlite3")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let running = Arc::clone(&slot.running);
    let (id, unlock) = (
        job.id,
        std::thread::spawn(move || {
            // Long enough for a loaded machine to reach the first write meanwhile.
            std::thread::sleep(Duration::from_millis(1000));
            let meanwhile = running.held().jobs;
            std::thread::sleep(Duration::from_millis(1000));
            other.execute_batch("COMMIT").unwrap();
            meanwhile
        }),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    let decided = Decided {
        job,
        result: JobResult::Release,
        attempt: None,
    };
    let recording = slot.record(decided, 1, Some("a".into()));
    let settled = runtime.block_on(slot.settle(recording, true));
    assert!(
        matches!(settled, Settled::Retried),
        "the first write failed"
    );
    let meanwhile = unlock.join().unwrap();
    // Held while its outcome was being retried, so no claim could give it out again.
    assert!(meanwhile.contains(&id), "{meanwhile:?}");
    assert!(slot.running.held().jobs.is_empty(), "let go once written");
}

#[test]
fn a_job_put_back_while_the_journal_is_locked_is_queued_once_the_lock_is_gone() {
    let (dir, mut j) = queued(1);
    let names = vec!["a".to_string()];
    let claim = Claim {
        job: first_job(&mut j),
        probe: None,
        pauses: 0,
        asked_at: Instant::now(),
    };
    j.set_busy_timeout(Duration::from_millis(50));
    let (slot, journal, _stopping) = slot_on(j);
    slot.running.hold(slot.id, &claim.job);
    // Another process holds the journal for longer than a write waits for it.
    let other = rusqlite::Connection::open(dir.path().join("j.sqlite3")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        other.execute_batch("COMMIT").unwrap();
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let running = Arc::clone(&slot.running);
    let watcher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        running.held().jobs
    });
    runtime.block_on(slot.put_back(&claim));
    unlock.join().unwrap();
    let meanwhile = watcher.join().unwrap();
    assert!(
        meanwhile.contains(&claim.job.id),
        "held while not yet put back"
    );
    assert!(slot.running.held().jobs.is_empty(), "let go once put back");
    // Back in the queue, not left `running` until its lease ran out: given out again at once.
    let again = runtime.block_on(
        journal.write(move |j| claim_due(j, &names, &Held::default(), 1, &ClaimFor::Slots)),
    );
    let (jobs, _) = again.unwrap();
    assert_eq!(jobs.len(), 1, "the job put back is due again");
    assert_eq!(jobs[0].0.id, claim.job.id);
}

/// The first due job of `names`, claimed with a lease that has run out since.
fn claimed_past_its_lease(j: &mut crate::journal::Journal, names: &[String]) -> Job {
    let Some(Claimed::Job(job)) = j.claim(names, 1).unwrap() else {
        panic!("a job is due");
    };
    std::thread::sleep(Duration::from_millis(5));
    job
}

/// A slot holding job `id`.
fn holding(id: i64) -> Held {
    Held {
        jobs: HashSet::from([id]),
        ..Held::default()
    }
}

#[test]
fn a_job_a_slot_still_holds_is_not_given_out_again_when_its_lease_ran_out() {
    let (_dir, mut j) = queued(2);
    let names = vec!["a".to_string()];
    // A slot's job whose lease ran out while its outcome could not be written.
    let stuck = claimed_past_its_lease(&mut j, &names);
    let held = holding(stuck.id);
    let (jobs, _) = claim_due(&mut j, &names, &held, 2, &ClaimFor::Slots).unwrap();
    let ids: Vec<i64> = jobs.iter().map(|(job, _)| job.id).collect();
    assert_eq!(ids.len(), 1, "the other job only: {ids:?}");
    assert_ne!(ids[0], stuck.id);
    // Held by nobody, a job whose lease ran out is given out again (a slot that panicked).
    let (_dir, mut j) = queued(1);
    let lost = claimed_past_its_lease(&mut j, &names);
    let (jobs, _) = claim_due(&mut j, &names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    assert_eq!(jobs[0].0.id, lost.id);
}

/// Twins (the same bytes) wait for the upload of the first, to reuse its copy: also while
/// that upload's lease has run out but its slot still holds it (its outcome waiting for a
/// journal unwritable that long), or the bytes would be sent twice.
#[test]
fn a_twin_waits_for_a_held_upload_of_its_bytes_even_past_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = crate::journal::Journal::open(&dir.path().join("j.sqlite3")).unwrap();
    let sha = "f".repeat(64);
    observe(&mut j, "a", 0, &sha);
    observe(&mut j, "a", 1, &sha);
    let names = vec!["a".to_string()];
    let first = claimed_past_its_lease(&mut j, &names);
    let (jobs, _) = claim_due(&mut j, &names, &holding(first.id), 1, &ClaimFor::Slots).unwrap();
    assert!(jobs.is_empty(), "the twin was given out: {:?}", jobs[0].0);
}

#[test]
fn free_slots_share_the_vendors_out() {
    let (_dir, mut j) = queued(3);
    let names = vec!["a".to_string(), "b".to_string()];
    let claims = claim_due(&mut j, &names, &Held::default(), 4, &ClaimFor::Slots).unwrap();
    let mut vendors = vendors_of(&claims);
    vendors.sort();
    assert_eq!(vendors, ["a", "a", "b", "b"]);
}

#[test]
fn backoff_honours_the_vendors_hint() {
    assert!(backoff(0, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
}

#[test]
fn a_probe_whose_next_probe_cannot_be_pushed_back_stays_queued() {
    let (dir, mut j) = queued(1);
    let names = vec!["a".to_string()];
    j.pause_vendor("a", "down", 0).unwrap();
    // The push of the next probe fails after the probe's claim was written.
    let other = rusqlite::Connection::open(dir.path().join("j.sqlite3")).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER refuse_pause BEFORE UPDATE ON vendor_pauses
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
    // A write of its own, then inside a group run without savepoints.
    assert!(claim_due(&mut j, &names, &Held::default(), 1, &ClaimFor::Slots).is_err());
    let journal = JournalHandle::new(j);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let claim = || {
        let names = names.clone();
        runtime.block_on(
            journal.write(move |j| claim_due(j, &names, &Held::default(), 1, &ClaimFor::Slots)),
        )
    };
    assert!(claim().is_err());
    other.execute_batch("DROP TRIGGER refuse_pause").unwrap();
    // Not left `running`, to no slot, until its lease ran out: the probe is due at once.
    let (jobs, _) = claim().unwrap();
    assert_eq!(jobs.len(), 1, "the job is still queued");
    assert!(jobs[0].1.is_some(), "claimed as the vendor's probe");
}

/// A probe whose call outlasts the probe interval: no second probe goes while a slot holds a job
/// of the paused vendor.
#[test]
fn no_second_probe_goes_while_one_is_in_flight() {
    let (_dir, mut j) = queued(3);
    let names = vec!["a".to_string()];
    j.pause_vendor("a", "down", 0).unwrap();
    let (probe, _) = claim_due(&mut j, &names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    assert_eq!(probe.len(), 1);
    assert!(probe[0].1.is_some(), "claimed as the vendor's probe");
    // The next probe falls due while the first is still in flight.
    j.pause_vendor("a", "down", 0).unwrap();
    let probing = Held {
        in_flight: [("a".to_string(), 1)].into(),
        jobs: [probe[0].0.id].into(),
    };
    let (more, _) = claim_due(&mut j, &names, &probing, 1, &ClaimFor::Slots).unwrap();
    assert!(more.is_empty(), "one probe at a time: {more:?}");
    // Once it is over, the next probe goes.
    let (next, _) = claim_due(&mut j, &names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].1.is_some());
}

/// The synced file of vendor "a" removed: its delete claimed (the vendor at a closed port).
fn a_delete_claimed() -> (tempfile::TempDir, crate::journal::Journal, Job) {
    let (dir, mut j) = queued(1);
    let upload = first_job(&mut j);
    let copy = crate::journal::Remote {
        reference: "http://127.0.0.1:1/x.png".into(),
        ..Default::default()
    };
    j.finish(&upload, &JobResult::Uploaded(copy), None).unwrap();
    let gone = [upload.path.clone()];
    j.mark_missing(&crate::journal::RemovalBatch {
        watch_root: "/w",
        paths: &gone,
        policy: crate::journal::RemovalPolicy::Delete,
        max_deletes: 10,
        window_ms: 3_600_000,
        hold: None,
    })
    .unwrap();
    let job = first_job(&mut j);
    assert_eq!(job.op, JobOp::Delete);
    (dir, j, job)
}

/// A delete whose token cannot be had never leaves: the attempt says nothing was carried out, so
/// its copy is given back as live (before, it stayed `deleting` through the backoff, and a file
/// put back meanwhile was uploaded again under a new URL, the one the ERP used deleted later).
#[test]
fn a_delete_whose_token_cannot_be_had_carried_out_nothing() {
    let (_dir, j, job) = a_delete_claimed();
    let (slot, journal, _stop) = slot_on(j);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let decided = runtime.block_on(process(&slot.ctx, job, None));
    assert!(matches!(decided.result, JobResult::Retry { .. }));
    let attempt = decided.attempt.clone().unwrap();
    assert!(attempt.refused, "{attempt:?}");
    // The file put back: synced to the copy it had, which is live.
    let back = runtime.block_on(journal.call(move |j| {
        j.finish(&decided.job, &decided.result, decided.attempt.as_ref())
            .unwrap();
        let stamp = crate::journal::fixtures::stamp(100, 0);
        let obs = crate::journal::fixtures::observation("/w/a0.png", "a", A0, stamp);
        j.observe(&obs, &|_| true).unwrap()
    }));
    assert_eq!(back, crate::journal::Observed::Restored);
}

/// The bytes of vendor "a"'s first file in [`queued`].
const A0: &str = "a000000000000000000000000000000000000000000000000000000000000000";

/// A probe the vendor does not answer waits behind the vendor's next probe (so that probe tries
/// another job: one file the vendor chokes on cannot keep it paused); a job that merely trips the
/// breaker keeps its place.
#[test]
fn a_failed_probe_waits_behind_the_next_probe() {
    // A delete, so the call goes to the vendor (at a closed port) without reading a file.
    let (_dir, j, job) = a_delete_claimed();
    let (slot, _journal, _stop) = slot_on(j);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let before = crate::journal::now_ms();
    let probe = Some(Duration::from_secs(30));
    let decided = runtime.block_on(process(&slot.ctx, job.clone(), probe));
    match decided.result {
        // The next probe in twice the last interval.
        JobResult::Defer { not_before, .. } => assert!(not_before > before + 60_000),
        other => panic!("{other:?}"),
    }
    // Past the breaker's five in a row, the same job alone trips nothing.
    for _ in 0..6 {
        let decided = runtime.block_on(process(&slot.ctx, job.clone(), None));
        assert!(
            matches!(decided.result, JobResult::Retry { .. }),
            "one job's failures trip no breaker: {:?}",
            decided.result
        );
    }
}

/// A probe in flight across a reload that gave its vendor a new config (another base_url, new
/// credentials): what the old config's call met does not pause the vendor as now configured
/// (the reload made its probe due at once), and the job waits out no doubled interval.
#[test]
fn a_probe_made_with_a_config_a_reload_replaced_pauses_nothing() {
    let (_dir, j, job) = a_delete_claimed();
    let (slot, journal, _stop) = slot_on(j);
    let old = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let old_url = format!("http://{}", old.local_addr().unwrap());
    slot.ctx
        .vendors
        .replace([("a".into(), kingdee_at(&old_url))].into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let before = crate::journal::now_ms();
    let ctx = slot.ctx.clone();
    let probe =
        runtime.spawn(async move { process(&ctx, job, Some(Duration::from_secs(30))).await });
    // The old config's request is in flight; the reload replaces the vendor; then it fails.
    let (request, _) = old.accept().unwrap();
    slot.ctx
        .vendors
        .replace([("a".into(), kingdee_at("http://127.0.0.1:1"))].into());
    drop(request);
    let decided = runtime.block_on(probe).unwrap();
    match decided.result {
        JobResult::Defer { not_before, .. } => assert!(
            not_before < before + 30_000,
            "waits {} ms",
            not_before - before
        ),
        other => panic!("{other:?}"),
    }
    let pauses = runtime.block_on(journal.call(|j| j.pauses())).unwrap();
    assert!(pauses.is_empty(), "{pauses:?}");
}

/// A token refused, then a fresh one refused too: the vendor refuses us, and is paused rather
/// than each job retried until it fails; one refused once and then taken is simply done.
#[test]
fn a_fresh_token_refused_too_pauses_the_vendor() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let answers = |first_refused: usize| {
        let calls = std::cell::Cell::new(0);
        runtime.block_on(with_reauth(JobOp::Upload, || {
            calls.set(calls.get() + 1);
            let refused = calls.get() <= first_refused;
            async move {
                match refused {
                    true => Call::new(
                        Outcome::Reauth {
                            reason: "token invalid".into(),
                        },
                        Some(400),
                        Some("99991663".into()),
                    ),
                    false => Call::new(Outcome::Done(()), Some(200), None),
                }
            }
        }))
    };
    let refused_twice = answers(2);
    match &refused_twice.outcome {
        Outcome::VendorDown { reason } => assert!(reason.contains("refused too"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused_twice.vendor_code.as_deref(), Some("99991663"));
    assert_eq!(answers(1).outcome, Outcome::Done(()));
}

/// A reload that turns copy sharing off (Jiandaoyun's `create_record` on) applies to the files
/// already queued: a twin queued before it is sent on its own, not synced to a key no record
/// holds, which dies within the hour.
#[test]
fn copy_sharing_turned_off_applies_to_files_already_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = crate::journal::Journal::open(&dir.path().join("j.sqlite3")).unwrap();
    let same = "f".repeat(64);
    observe(&mut j, "a", 0, &same);
    observe(&mut j, "a", 1, &same);
    let upload = first_job(&mut j);
    let key = crate::journal::Remote {
        reference: "key-1".into(),
        expires_at: Some(crate::journal::now_ms() + 3_600_000),
        ..Default::default()
    };
    j.finish(&upload, &JobResult::Uploaded(key), None).unwrap();
    assert_eq!(j.apply_reuse_policy("/w", "a", false).unwrap(), 1);
    assert_eq!(j.apply_reuse_policy("/w", "a", false).unwrap(), 0, "once");
    let names = vec!["a".to_string()];
    let (jobs, settled) = claim_due(&mut j, &names, &Held::default(), 1, &ClaimFor::Slots).unwrap();
    assert!(settled.is_empty(), "not synced to the key: {settled:?}");
    assert_eq!(jobs.len(), 1, "sent on its own");
}
