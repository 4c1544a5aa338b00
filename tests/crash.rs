//! kill -9 at random moments (seeded, so a failure can be replayed) while files are dropped into
//! watches of all three vendors, restarted each time: every file ends synced, once in the journal, with
//! its exact bytes at the vendor, and no upload is repeated beyond the jobs in flight at a kill.

mod common;
#[path = "common/three.rs"]
mod three;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Options;
use three::{Three, Vendor, picture};

const KILLS: usize = 10;
const WORKERS: usize = 4;

fn seed() -> u64 {
    std::env::var("IMGSYNCD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123)
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let mut rng = fastrand::Rng::with_seed(seed());
    // Jiandaoyun with a record per file, Kingdee and lingo on folders of their own; Kingdee
    // hands out tokens freely, or ten restarts would test patience rather than crashes.
    let mut three = Three::new(Options {
        workers: WORKERS,
        ..Options::default()
    });

    let mut expected = Vec::new();
    let mut next = 0u32;
    three.start(None);
    for kill in 0..KILLS {
        for _ in 0..15 {
            let bytes = picture(10_000 + next);
            let (vendor, name) = match next % 3 {
                0 => (Vendor::Feishu, format!("f{next:03}.png")),
                1 => (Vendor::Kingdee, format!("k{next:03}.png")),
                _ => (Vendor::Jiandaoyun, format!("j{next:03}.png")),
            };
            expected.push((three.drop(vendor, &name, &bytes), bytes));
            next += 1;
            std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..1500)));
        three.h.kill9();
        eprintln!("kill {} after {next} files", kill + 1);
        three.start(None);
    }
    let h = &three.h;
    h.wait_for("every file to be synced", |h| {
        let files = h.files();
        files.len() == expected.len() && files.iter().all(|f| f["state"] == "synced")
    });

    let files = h.files();
    let paths: BTreeSet<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), expected.len(), "each path once in the journal");
    for (path, bytes) in &expected {
        let row = files
            .iter()
            .find(|f| f["path"] == path.display().to_string().as_str())
            .unwrap();
        // Jiandaoyun: only if the record the journal names exists and holds that key.
        assert_eq!(three.held(row).as_ref(), Some(bytes), "{row}");
    }
    let uploads =
        h.sandbox.uploads() + h.sandbox.feishu_files().len() + h.sandbox.jiandaoyun_uploads().len();
    // A kill repeats the uploads in flight and those answered but not yet committed: a worker
    // has at most three between them, one transfer and two outcomes or three outcomes (their
    // commits take milliseconds, so most kills repeat far fewer).
    let allowed = expected.len() + KILLS * WORKERS * 3;
    assert!(
        uploads <= allowed,
        "{uploads} uploads for {} files and {KILLS} kills of {WORKERS} workers",
        expected.len()
    );
}
