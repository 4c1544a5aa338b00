//! kill -9 at random moments (seeded, so a failure can be replayed) while files are dropped into
//! watches of all three vendors, restarted each time: every file ends synced, once in the journal, with
//! its exact bytes at the vendor, and no upload is repeated beyond the jobs in flight at a kill.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{FeishuVendor, Harness, JiandaoyunVendor, Options, image};
use imgsyncd::sandbox::SandboxOptions;

const KILLS: usize = 10;
const WORKERS: usize = 4;

fn seed() -> u64 {
    std::env::var("IMGSYNCD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123)
}

/// A picture lingo takes (320 px and more a side, over 3 KB) or Kingdee takes.
fn picture(seed: u32) -> Vec<u8> {
    image(image::ImageFormat::Png, seed, 330, 330)
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let mut h = Harness::with(Options {
        workers: WORKERS,
        feishu: Some(FeishuVendor::default()),
        jiandaoyun: Some(JiandaoyunVendor {
            create_record: true,
            ..JiandaoyunVendor::default()
        }),
        // Every restart fetches a new app-token; Kingdee's ~2 a minute would make ten restarts
        // a test of patience rather than of crashes.
        sandbox: SandboxOptions {
            kingdee_token_per_minute: 100,
            ..SandboxOptions::default()
        },
        ..Options::default()
    });
    // The drop folder feeds Jiandaoyun (`forms`, a record per file); two more feed Kingdee
    // (`erp`) and Feishu (`wiki`).
    let kingdee_drop = h.dir.path().join("kingdee");
    let feishu_drop = h.dir.path().join("feishu");
    std::fs::create_dir_all(&kingdee_drop).unwrap();
    std::fs::create_dir_all(&feishu_drop).unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("  - path: {}\n    vendor: erp\n", kingdee_drop.display())
        + &format!("  - path: {}\n    vendor: wiki\n", feishu_drop.display());
    std::fs::write(&h.config_path, config).unwrap();
    let staging = h.dir.path().join("staging-crash");
    std::fs::create_dir_all(&staging).unwrap();

    let mut expected = Vec::new();
    let mut next = 0u32;
    h.start();
    for kill in 0..KILLS {
        for _ in 0..15 {
            let bytes = picture(10_000 + next);
            let (dir, name) = match next % 3 {
                0 => (feishu_drop.clone(), format!("f{next:03}.png")),
                1 => (kingdee_drop.clone(), format!("k{next:03}.png")),
                _ => (h.drop.clone(), format!("j{next:03}.png")),
            };
            std::fs::write(staging.join(&name), &bytes).unwrap();
            std::fs::rename(staging.join(&name), dir.join(&name)).unwrap();
            expected.push((dir.join(&name), bytes));
            next += 1;
            std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..1500)));
        h.kill9();
        eprintln!("kill {} after {next} files", kill + 1);
        h.start();
    }
    h.wait_for("every file to be synced", |h| {
        let files = h.files();
        files.len() == expected.len() && files.iter().all(|f| f["state"] == "synced")
    });

    let files = h.files();
    let paths: BTreeSet<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), expected.len(), "each path once in the journal");
    let images = h.sandbox.images();
    let lingo = h.sandbox.feishu_files();
    let forms = h.sandbox.jiandaoyun_uploads();
    for (path, bytes) in &expected {
        let row = files
            .iter()
            .find(|f| f["path"] == path.display().to_string().as_str())
            .unwrap();
        let held = match (
            row["url"].as_str(),
            row["file_token"].as_str(),
            row["key"].as_str(),
        ) {
            (Some(url), _, _) => images.get(url).map(|i| i.bytes.clone()),
            (_, Some(token), _) => lingo.get(token).map(|f| f.bytes.clone()),
            (_, _, Some(key)) => {
                assert!(
                    row["record_id"].is_string(),
                    "a record holds the key: {row}"
                );
                forms.get(key).map(|u| u.bytes.clone())
            }
            _ => None,
        };
        assert_eq!(held.as_ref(), Some(bytes), "{row}");
    }
    let uploads = h.sandbox.uploads() + lingo.len() + forms.len();
    let allowed = expected.len() + KILLS * WORKERS;
    assert!(
        uploads <= allowed,
        "{uploads} uploads for {} files and {KILLS} kills of {WORKERS} workers",
        expected.len()
    );
}
