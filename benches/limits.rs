//! Rate-limited drain: a backlog of 2 500 files dropped at once into the folder of a vendor whose
//! sandbox enforces its real, documented limits, with the daemon at its DEFAULT pacing (no
//! `per_second` / `per_minute` in its config: what users get).
//!
//! - Feishu lingo (50 uploads a second, 1 000 a minute): the uploads the sandbox accepted in the
//!   first 120 s after the first one, against the ceiling 1 000/min × 2 min = 2 000.
//! - Jiandaoyun (20 calls a second to each interface, 50 to all together): the Qiniu uploads it
//!   accepted per second over the 60 s after the first one, against the ceiling 20/s.
//!
//! Both also count every rate-limit answer the sandbox gave over the whole run (Feishu: HTTP 429 /
//! code 99991400; Jiandaoyun: 429, 8303, 8304; Qiniu: 573); the target is none. The baseline is
//! the vendor's own ceiling (the most its sandbox lets through in the window), so a ratio of 1.00×
//! means the daemon used all of it. The daemon is the release binary, idle on an empty watch
//! before the files are written; the counts and times come from the sandbox's request log (when
//! each request was taken in), which is sampled once a second to follow the drain.
//!
//! Run: `cargo bench --bench limits` (both), or `cargo bench --bench limits -- feishu` /
//! `-- jiandaoyun`. `IMGSYNCD_BENCH_LIMITS_SECS=30` measures a shorter window (the ceiling follows
//! it) and stops at its end instead of draining the whole backlog; `IMGSYNCD_BENCH_N` changes the
//! backlog (default 2 500).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgsyncd::adapters::{feishu, jiandaoyun};
use imgsyncd::sandbox::{Logged, QINIU_UPLOAD_PATH, Sandbox, SandboxOptions};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_imgsyncd");

/// The window shortened by `IMGSYNCD_BENCH_LIMITS_SECS`, if it is set.
fn window_override() -> Option<u64> {
    std::env::var("IMGSYNCD_BENCH_LIMITS_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s| *s > 0)
}

fn backlog() -> u32 {
    std::env::var("IMGSYNCD_BENCH_N")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2_500)
}

/// The pixels every file shares: 320×320, Feishu's smallest allowed side.
fn base_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 320, |x, y| {
        image::Rgb([(x ^ y) as u8, (x * 3) as u8, (y * 5) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A valid PNG for both vendors, distinct per seed and at least 4 KiB (Feishu's minimum is 3 KB):
/// the shared pixels, with a text chunk after IHDR that carries the seed and pads the file.
fn png(base: &[u8], seed: u32) -> Vec<u8> {
    let head = format!("seed\0{seed} ");
    let pad = 4096usize.saturating_sub(base.len() + 12 + head.len());
    common::with_text(base, &format!("{head}{}", ".".repeat(pad)))
}

/// The backlog, checked against both vendors' limits (as the daemon checks them before sending).
fn files(n: u32) -> Vec<Vec<u8>> {
    let base = base_png();
    let files: Vec<Vec<u8>> = (0..n).map(|seed| png(&base, seed)).collect();
    for limits in [feishu::LIMITS, jiandaoyun::LIMITS] {
        for bytes in [&files[0], &files[files.len() - 1]] {
            let info = imgsyncd::image::inspect(bytes).expect("a valid PNG");
            let size = bytes.len() as u64;
            assert!(
                (limits.min_bytes..=limits.max_bytes).contains(&size),
                "{size} bytes is outside {}'s limits",
                limits.vendor
            );
            for side in [info.width, info.height] {
                assert!(
                    limits.min_px.is_none_or(|m| side >= m)
                        && limits.max_px.is_none_or(|m| side <= m),
                    "{side} px is outside {}'s limits",
                    limits.vendor
                );
            }
        }
    }
    files
}

/// The release binary, on a config holding one vendor block and one watch that feeds it.
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts the daemon idle on an empty drop folder and waits until its watch has reconciled.
    fn start(vendor: &str, vendor_block: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        // Everything else at its default too (workers 4, settle 2 s, …), but no periodic rescan
        // during the run.
        let config = format!(
            "journal: {}\nrescan: 1h\nvendors:\n{vendor_block}watches:\n  - path: {}\n    vendor: {vendor}\n",
            dir.path().join("journal.sqlite3").display(),
            drop.display()
        );
        std::fs::write(dir.path().join("daemon.yaml"), config).unwrap();
        let log = dir.path().join("daemon.log");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(dir.path().join("daemon.yaml"))
            .args(["run", "--log-format", "text"])
            .env("IMGSYNCD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            dir,
            child: Some(child),
        };
        let waiting = Instant::now();
        while !daemon.log().contains("reconciled with the journal") {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "the daemon did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn drop_dir(&self) -> PathBuf {
        self.dir.path().join("drop")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The last lines of its log, for a failure message.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_all(dir: &Path, files: &[Vec<u8>]) {
    for (i, bytes) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i:05}.png")), bytes).unwrap();
    }
}

/// What one vendor's drain looked like from the sandbox.
struct Run {
    /// When each accepted upload was taken in (epoch ms), in order.
    accepted_ms: Vec<i64>,
    /// Rate-limit answers over the whole run, as "status/code" → count.
    throttled: Vec<(String, usize)>,
    /// Other refusals (not rate limits), as "path status/code" → count.
    refused: Vec<(String, usize)>,
    /// Every request the sandbox answered, by path.
    requests: Vec<(String, usize)>,
}

impl Run {
    fn throttled_total(&self) -> usize {
        self.throttled.iter().map(|(_, n)| n).sum()
    }

    /// Uploads accepted in `[first, first + window)`.
    fn within(&self, window: Duration) -> usize {
        let Some(first) = self.accepted_ms.first() else {
            return 0;
        };
        let end = first + window.as_millis() as i64;
        self.accepted_ms.iter().filter(|t| **t < end).count()
    }

    /// Seconds after the first upload that the `k`-th (1-based) was accepted.
    fn at(&self, k: usize) -> Option<f64> {
        let first = *self.accepted_ms.first()?;
        self.accepted_ms
            .get(k - 1)
            .map(|t| (t - first) as f64 / 1000.0)
    }
}

fn tally(keys: impl Iterator<Item = String>) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

fn describe(l: &Logged) -> String {
    match l.errcode {
        Some(code) => format!("{} {}/{code}", l.path, l.status),
        None => format!("{} {}", l.path, l.status),
    }
}

/// Writes `files` into the idle daemon's watch and follows the sandbox until every file is
/// accepted (or, with the window shortened, until the window after the first upload is over).
fn drain(
    label: &str,
    sandbox: &Sandbox,
    mut daemon: Daemon,
    files: &[Vec<u8>],
    window: Duration,
    accepted: fn(&Logged) -> bool,
    throttled: fn(&Logged) -> bool,
) -> Run {
    let started = Instant::now();
    write_all(&daemon.drop_dir(), files);
    eprintln!(
        "{label}: {} files written in {:.2} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    let shortened = window_override().is_some();
    let mut first: Option<Instant> = None;
    let mut last_report = 0;
    let mut previous = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let log = sandbox.log();
        let done = log.iter().filter(|l| accepted(l)).count();
        let limited = log.iter().filter(|l| throttled(l)).count();
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
            eprintln!(
                "{label}: first upload accepted {:.1} s after the first write",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(first) = first {
            let secs = first.elapsed().as_secs();
            if secs / 10 > last_report || done >= files.len() {
                last_report = secs / 10;
                eprintln!(
                    "{label}: +{secs:>3} s  accepted {done:>5} (+{:>4})  rate-limit answers {limited}",
                    done - previous
                );
                previous = done;
            }
            if done >= files.len()
                || (shortened && first.elapsed() >= window + Duration::from_secs(1))
            {
                break;
            }
        } else {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{label}: no upload accepted within 120 s\n{}",
                daemon.log_tail()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{label}: the drain stalled at {done} of {}\n{}",
            files.len(),
            daemon.log_tail()
        );
    }
    daemon.stop();
    // After the daemon stopped: every request it made is in the log.
    let log = sandbox.log();
    Run {
        accepted_ms: log
            .iter()
            .filter(|l| accepted(l))
            .map(|l| l.at_ms)
            .collect(),
        throttled: tally(log.iter().filter(|l| throttled(l)).map(describe)),
        refused: tally(
            log.iter()
                .filter(|l| !throttled(l) && !(200..300).contains(&l.status))
                .map(describe),
        ),
        requests: tally(log.iter().map(|l| l.path.clone())),
    }
}

fn feishu_scenario(files: &[Vec<u8>]) {
    let window = Duration::from_secs(window_override().unwrap_or(120));
    let options = SandboxOptions::default();
    let (per_second, per_minute) = (options.feishu_per_second, options.feishu_per_minute);
    let sandbox = Sandbox::start(options);
    let app = sandbox.options().feishu;
    let block = format!(
        "  wiki:\n    kind: feishu\n    base_url: {}\n    app_id: {}\n    app_secret: {}\n",
        sandbox.base_url(),
        app.app_id,
        app.app_secret
    );
    let daemon = Daemon::start("wiki", &block);
    let run = drain(
        "feishu",
        &sandbox,
        daemon,
        files,
        window,
        |l| l.path == feishu::UPLOAD_PATH && l.status == 200 && l.errcode == Some(0),
        |l| l.status == 429 || l.errcode == Some(feishu::ERR_RATE_LIMITED),
    );
    // The most a vendor counting 50 in any second and 1 000 in any minute lets through.
    let secs = window.as_secs_f64();
    let ceiling = (per_second as f64 * secs).min(per_minute as f64 * (secs / 60.0).ceil());
    let got = run.within(window);
    println!(
        "feishu: {} files, default pacing ({}/s, {}/min): {got} uploads accepted in the first {} s \
         after the first one; baseline (the vendor's ceiling, {per_minute}/min × {:.0} min) {ceiling:.0} \
         = {:.3}× (target ≥ 0.97×); rate-limit answers (429 / 99991400) over the whole run: {} \
         (target 0)",
        files.len(),
        feishu::DEFAULT_PER_SECOND,
        feishu::DEFAULT_PER_MINUTE,
        window.as_secs(),
        (secs / 60.0).ceil(),
        got as f64 / ceiling,
        run.throttled_total()
    );
    let minute = per_minute;
    let marks: Vec<String> = (1..=3)
        .filter_map(|m| {
            run.at(m * minute + 1)
                .map(|t| format!("upload #{} at +{t:.1} s", m * minute + 1))
        })
        .collect();
    let first_minute = match run.at(minute) {
        Some(t) => format!("the first {minute} took {t:.1} s"),
        None => format!("fewer than {minute} in all"),
    };
    println!(
        "feishu: detail: {} accepted in all (last at +{:.1} s); each minute's window reopens \
         (vendor: +60 s, +120 s …): {}; {first_minute}; rate-limit answers {:?}; other refusals \
         {:?}; requests {:?}",
        run.accepted_ms.len(),
        run.at(run.accepted_ms.len().max(1)).unwrap_or(0.0),
        if marks.is_empty() {
            "-".to_string()
        } else {
            marks.join(", ")
        },
        run.throttled,
        run.refused,
        run.requests
    );
}

fn jiandaoyun_scenario(files: &[Vec<u8>]) {
    let window = Duration::from_secs(window_override().unwrap_or(60));
    let options = SandboxOptions::default();
    let per_second = options.jiandaoyun_per_second;
    let sandbox = Sandbox::start(options);
    let account = sandbox.options().jiandaoyun;
    let block = format!(
        "  forms:\n    kind: jiandaoyun\n    base_url: {}\n    api_key: {}\n    app_id: {}\n    \
         entry_id: {}\n",
        sandbox.base_url(),
        account.api_key,
        account.app_id,
        account.entry_id
    );
    let daemon = Daemon::start("forms", &block);
    let run = drain(
        "jiandaoyun",
        &sandbox,
        daemon,
        files,
        window,
        |l| l.path == QINIU_UPLOAD_PATH && l.status == 200,
        |l| {
            matches!(l.status, 429 | 573)
                || matches!(
                    l.errcode,
                    Some(jiandaoyun::ERR_RATE_LIMITED | jiandaoyun::ERR_COMPANY_RATE_LIMITED)
                )
        },
    );
    let secs = window.as_secs_f64();
    let got = run.within(window);
    let rate = got as f64 / secs;
    println!(
        "jiandaoyun: {} files, default pacing ({}/s per interface): {got} uploads accepted in the \
         {} s after the first one = {rate:.2}/s; baseline (the vendor's ceiling) {per_second}/s = \
         {:.3}× (target ≥ 0.97×); rate-limit answers (429 / 8303 / 8304 / Qiniu 573) over the whole \
         run: {} (target 0)",
        files.len(),
        jiandaoyun::DEFAULT_PER_SECOND,
        window.as_secs(),
        rate / per_second as f64,
        run.throttled_total()
    );
    let total = run.accepted_ms.len();
    let last = run.at(total.max(1)).unwrap_or(0.0);
    println!(
        "jiandaoyun: detail: {total} accepted in all (last at +{last:.1} s: {:.2}/s over the whole \
         drain); rate-limit answers {:?}; other refusals {:?}; requests {:?}",
        if last > 0.0 {
            (total - 1) as f64 / last
        } else {
            0.0
        },
        run.throttled,
        run.refused,
        run.requests
    );
}

fn main() {
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let files = files(backlog());
    for name in ["feishu", "jiandaoyun"] {
        if chosen.is_empty() || chosen.iter().any(|c| c == name) {
            match name {
                "feishu" => feishu_scenario(&files),
                _ => jiandaoyun_scenario(&files),
            }
        }
    }
}
