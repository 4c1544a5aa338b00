//! Throughput to an unlimited vendor: N small images dropped at once into a watched folder.
//!
//! Baseline: a minimal client writes the same N files, then reads each back and uploads it through
//! the Kingdee adapter (signing, token, one HTTP request), four in flight. Measured: the `imgsyncd`
//! binary, already running and idle on an empty watch, while the same N files are written into it
//! (events, settle, reading and hashing, journal, four workers). Both clocks start at the first
//! write and stop when the sandbox holds all N; both talk to a sandbox on 127.0.0.1 with its rate
//! limits off. Only the ratios mean anything. Run: `cargo bench --bench drain` (N = 2 000 and
//! 10 000; `IMGSYNCD_BENCH_N=…` picks others). The images are 48 pixels square, some 380 bytes:
//! the cost of each file's handling, not of its bytes; `IMGSYNCD_BENCH_SIDE=256` makes them 256
//! pixels square with some noise, some 69 KB, as a product photo's thumbnail.
//!
//! The last column is a ceiling: the best ratio a daemon could reach whose only work beyond the
//! client's were the journal's floor (the same N files recorded, claimed and finished through
//! `Journal`, in the largest groups) and the intake's (notify's thread reporting the N files
//! written, and each file hashed once), both measured in the same run, with both cores kept busy
//! all the time.

use std::io::Cursor;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgsyncd::adapters::kingdee::Kingdee;
use imgsyncd::adapters::{Outcome, UploadRequest, http_client};
use imgsyncd::config::{KingdeeConfig, Secret};
use imgsyncd::image::ImageFormat;
use imgsyncd::sandbox::{Sandbox, SandboxOptions};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_imgsyncd");

fn png(seed: u32, side: u32) -> Vec<u8> {
    // Some noise, as a photo has, keeps a larger image from compressing to nothing; the default
    // 48 pixels keep the bytes every earlier round measured.
    let noise = |x: u32, y: u32| match side {
        ..=48 => 0,
        _ => (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed) % 7,
    };
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            (x * 5 + seed + noise(x, y)) as u8,
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

/// Where both write the files: a tmpfs when there is one, so neither clock measures how slowly
/// ext4 finds free inodes after earlier runs deleted thousands (which varied 5× between runs).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

fn write_all(dir: &Path, files: &[Vec<u8>]) -> Vec<std::path::PathBuf> {
    files
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.join(format!("f{i:05}.png"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

/// The minimal client: writes the files, then reads and uploads each, four in flight. Returns its
/// time and the CPU its run cost (client, writer and sandbox, all in this process).
fn baseline(files: &[Vec<u8>]) -> (Duration, f64) {
    let sandbox = sandbox();
    let account = sandbox.options().kingdee;
    let dir = scratch();
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
        let cpu0 = common::cpu_seconds("self");
        let started = Instant::now();
        let paths = write_all(dir.path(), files);
        let queue = Arc::new(std::sync::Mutex::new(paths));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (kingdee, queue) = (Arc::clone(&kingdee), Arc::clone(&queue));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(path) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let bytes = tokio::fs::read(&path).await.unwrap();
                    let request = UploadRequest {
                        path: &path,
                        bytes: &bytes,
                        format: ImageFormat::Png,
                        no_return: None,
                    };
                    let call = kingdee.upload(&request).await;
                    assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(sandbox.uploads(), files.len());
        let elapsed = started.elapsed();
        let cpu = common::cpu_seconds("self") - cpu0;
        eprintln!("client, writer and sandbox CPU: {cpu:.2} s");
        (elapsed, cpu)
    })
}

/// The daemon, idle on an empty watch, while `files` are written into it: time from the first
/// write to all uploaded, and its peak RSS in KiB.
fn daemon(files: &[Vec<u8>]) -> (Duration, u64) {
    let sandbox = sandbox();
    let account = sandbox.options().kingdee;
    // The journal on the disk, as in production; only the drop folder on the scratch tmpfs.
    let dir = tempfile::tempdir().unwrap();
    let drops = scratch();
    let drop = drops.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
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
    let log = dir.path().join("daemon.log");
    // IMGSYNCD_BENCH_WRAP="strace -f -c -o /tmp/s.txt" (or perf record …) runs the daemon under a
    // profiler; the CPU and RSS printed are then the wrapper's.
    let wrap = std::env::var("IMGSYNCD_BENCH_WRAP").unwrap_or_default();
    let mut command: Vec<&str> = wrap.split_whitespace().collect();
    command.push(BIN);
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .args(["-c", config.to_str().unwrap(), "run"])
        .process_group(0)
        .env("IMGSYNCD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Ready once its watch has reconciled the (empty) folder.
    let waiting = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reconciled with the journal")
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu0 = common::cpu_seconds("self");
    let started = Instant::now();
    let mut timeline = std::env::var("IMGSYNCD_BENCH_TRACE")
        .is_ok()
        .then(|| Timeline::new(child.id()));
    write_all(&drop, files);
    while sandbox.uploads() < files.len() {
        if let Some(timeline) = timeline.as_mut() {
            timeline.tick(started, sandbox.uploads());
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the drain stalled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    // Beside the daemon's: what the client's run spent on writing and serving is spent here too.
    let bench_cpu = common::cpu_seconds("self") - cpu0;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "daemon CPU: {:.2} s for {} files; writer and sandbox CPU: {bench_cpu:.2} s",
        common::cpu_seconds(&child.id().to_string()),
        files.len()
    );
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    // IMGSYNCD_BENCH_LOG=FILE keeps the daemon's log, to see when each file was taken and sent.
    if let Ok(keep) = std::env::var("IMGSYNCD_BENCH_LOG") {
        let _ = std::fs::copy(&log, keep);
    }
    (elapsed, peak_kib)
}

/// `IMGSYNCD_BENCH_TRACE=1`: every 200 ms of the daemon's drain, the uploads a second and the
/// cores the daemon and the bench (the writer and the sandbox) kept busy. A drain that leaves
/// cores idle waits on something (a checkpoint's fsync was one); one that keeps both busy costs
/// too much CPU.
struct Timeline {
    pid: String,
    at: Instant,
    daemon_cpu: f64,
    bench_cpu: f64,
    uploads: usize,
}

impl Timeline {
    fn new(pid: u32) -> Timeline {
        let pid = pid.to_string();
        Timeline {
            daemon_cpu: common::cpu_seconds(&pid),
            bench_cpu: common::cpu_seconds("self"),
            pid,
            at: Instant::now(),
            uploads: 0,
        }
    }

    fn tick(&mut self, started: Instant, uploads: usize) {
        let seconds = self.at.elapsed().as_secs_f64();
        if seconds < 0.2 {
            return;
        }
        let (daemon_cpu, bench_cpu) = (common::cpu_seconds(&self.pid), common::cpu_seconds("self"));
        eprintln!(
            "t={:.2}s uploads/s={:.0} daemon cores={:.2} bench cores={:.2}",
            started.elapsed().as_secs_f64(),
            (uploads - self.uploads) as f64 / seconds,
            (daemon_cpu - self.daemon_cpu) / seconds,
            (bench_cpu - self.bench_cpu) / seconds,
        );
        *self = Timeline {
            pid: std::mem::take(&mut self.pid),
            at: Instant::now(),
            daemon_cpu,
            bench_cpu,
            uploads,
        };
    }
}

/// Prints a floor's CPU for `n` files, in all and a file at a time, and its parts a file at a time.
fn report_floor(what: &str, n: u32, parts: [(&str, f64); 2]) {
    let total: f64 = parts.iter().map(|(_, seconds)| seconds).sum();
    let per_file = |seconds: f64| seconds * 1e6 / f64::from(n);
    let [(a, a_s), (b, b_s)] = parts;
    eprintln!(
        "{what} floor for {n} files: {total:.2} s of CPU ({:.0} µs a file: {a} {:.0}, {b} {:.0})",
        per_file(total),
        per_file(a_s),
        per_file(b_s),
    );
}

fn main() {
    let sizes: Vec<u32> = std::env::var("IMGSYNCD_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2_000, 10_000]);
    let side: u32 = std::env::var("IMGSYNCD_BENCH_SIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    println!(
        "files  baseline(client)  daemon(drop folder)  daemon files/s / baseline files/s  daemon peak RSS  ceiling"
    );
    for n in sizes {
        let files: Vec<Vec<u8>> = (0..n).map(|seed| png(seed, side)).collect();
        let (base, base_cpu) = baseline(&files);
        let (run, rss) = daemon(&files);
        let floor = common::lifecycle::lifecycle(n as usize);
        let intake = common::intake::intake_floor(&scratch(), &files);
        report_floor(
            "journal",
            n,
            [
                ("recorded", floor.recorded),
                ("claimed and finished", floor.claimed_and_finished),
            ],
        );
        report_floor(
            "intake",
            n,
            [
                ("notify's events", intake.events),
                ("hashing", intake.hashing),
            ],
        );
        // The client's run plus both floors, spread over two cores kept fully busy.
        let best = (base_cpu + floor.total() + intake.total()) / 2.0;
        println!(
            "{n:>5}  {:>15.2}s  {:>17.2}s  {:>14.2}x  {rss:>6} KiB  {:>6.2}x",
            base.as_secs_f64(),
            run.as_secs_f64(),
            base.as_secs_f64() / run.as_secs_f64(),
            base.as_secs_f64() / best.max(base.as_secs_f64()),
        );
    }
}
