//! How fast a backlog drains, and whether memory grows with it.
//!
//! Baseline: the same number of signed uploads made straight through the Kingdee adapter, four at a
//! time, against the same sandbox. Measured: the `imgsyncd` binary finding the files in a drop
//! folder and draining them (settle, hashing, journal, workers). Both in this run, on this machine;
//! only the ratios mean anything. Run: `cargo bench --bench drain`.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgsyncd::adapters::kingdee::Kingdee;
use imgsyncd::adapters::{Outcome, UploadRequest, http_client};
use imgsyncd::config::{KingdeeConfig, Secret};
use imgsyncd::image::ImageFormat;
use imgsyncd::sandbox::{Sandbox, SandboxOptions};

const BIN: &str = env!("CARGO_BIN_EXE_imgsyncd");

fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([
            (x * 5 + seed) as u8,
            (y * 3 + seed / 7) as u8,
            (seed % 251) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        kingdee_per_minute: 1_000_000,
        kingdee_token_per_minute: 1_000,
        ..SandboxOptions::default()
    })
}

/// N uploads through the adapter alone, four in flight.
fn baseline(files: &[Vec<u8>]) -> Duration {
    let sandbox = sandbox();
    let account = sandbox.options().kingdee;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kingdee = Arc::new(Kingdee::new(
            &sandbox.base_url(),
            KingdeeConfig {
                client_id: account.client_id,
                client_secret: Secret::new(account.client_secret),
                app_key: account.app_key,
                app_secret: Secret::new(account.app_secret),
                domain: account.domain,
                save_temp: false,
            },
            http_client(),
            Some(100_000),
            Some(1_000_000),
        ));
        let started = Instant::now();
        let queue = Arc::new(std::sync::Mutex::new(files.to_vec()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (kingdee, queue) = (Arc::clone(&kingdee), Arc::clone(&queue));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(bytes) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let request = UploadRequest {
                        path: Path::new("/bench/x.png"),
                        bytes: &bytes,
                        format: ImageFormat::Png,
                    };
                    let call = kingdee.upload(&request).await;
                    assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    })
}

/// The daemon on a drop folder holding `files`: time to all synced, and its peak RSS in KiB.
fn daemon(files: &[Vec<u8>]) -> (Duration, u64) {
    let sandbox = sandbox();
    let account = sandbox.options().kingdee;
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    for (i, bytes) in files.iter().enumerate() {
        std::fs::write(drop.join(format!("f{i:05}.png")), bytes).unwrap();
    }
    let config = dir.path().join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "journal: {}/journal.sqlite3\nworkers: 4\nsettle: 100ms\nvendors:\n  erp:\n    kind: kingdee\n    \
             base_url: {}\n    client_id: \"{}\"\n    client_secret: {}\n    app_key: {}\n    app_secret: {}\n    \
             domain: {}\n    per_second: 100000\n    per_minute: 1000000\nwatches:\n  - path: {}\n    vendor: erp\n",
            dir.path().display(),
            sandbox.base_url(),
            account.client_id,
            account.client_secret,
            account.app_key,
            account.app_secret,
            account.domain,
            drop.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "run"])
        .env("IMGSYNCD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while sandbox.uploads() < files.len() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the drain stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (elapsed, peak_kib)
}

fn main() {
    let small: Vec<Vec<u8>> = (0..200).map(png).collect();
    let large: Vec<Vec<u8>> = (0..2000).map(png).collect();
    let base_small = baseline(&small);
    let base_large = baseline(&large);
    let (daemon_small, rss_small) = daemon(&small);
    let (daemon_large, rss_large) = daemon(&large);
    println!("files  baseline(adapter)  daemon(drop folder)  daemon/baseline  peak RSS");
    for (n, base, run, rss) in [
        (200, base_small, daemon_small, rss_small),
        (2000, base_large, daemon_large, rss_large),
    ] {
        println!(
            "{n:>5}  {:>15.2}s  {:>17.2}s  {:>14.2}x  {rss:>6} KiB",
            base.as_secs_f64(),
            run.as_secs_f64(),
            run.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!(
        "peak RSS, 2000-file backlog / 200-file backlog: {:.2}x",
        rss_large as f64 / rss_small.max(1) as f64
    );
}
