//! The daemon as an operator sees it, measured from outside the process: what it costs idle, what
//! a dead vendor costs, how memory follows the backlog, and how soon a dropped file reaches the
//! vendor. Each figure is printed beside a baseline measured in the same run.
//!
//! Run: `cargo bench --bench service` (all scenarios), or name some:
//! `cargo bench --bench service -- idle down memory latency startup`. Sizes default to what runs in a few
//! minutes on 2 cores; `IMGSYNCD_BENCH_FULL=1` uses the sizes (100 000 files).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgsyncd::sandbox::{Sandbox, SandboxOptions};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_imgsyncd");

fn full() -> bool {
    std::env::var("IMGSYNCD_BENCH_FULL").is_ok_and(|v| v == "1")
}

/// A small, valid PNG whose bytes differ per seed (a text chunk carries the seed).
fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 31 + seed) as u8, (y * 17) as u8, (seed >> 8) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    // Another seed, another IDAT-independent tail: the same pixels differ in a text chunk.
    common::with_text(&out.into_inner(), &format!("seed\0{seed}"))
}

fn write_files(dir: &Path, n: u32, first_seed: u32) {
    for i in 0..n {
        let sub = dir.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("p{i}.png")), png(first_seed + i)).unwrap();
    }
}

fn unlimited_sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        kingdee_per_minute: 10_000_000,
        kingdee_token_per_minute: 1_000,
        ..SandboxOptions::default()
    })
}

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// A config for a Kingdee vendor at `base_url` (a dead port for "vendor down"), watching
    /// `watches` folders under the temp dir.
    fn new(base_url: &str, watches: usize, settle: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let account = SandboxOptions::default().kingdee;
        let mut text = format!(
            "journal: {}\nsettle: {settle}\nworkers: 4\nvendors:\n  erp:\n    kind: kingdee\n    \
             base_url: {base_url}\n    client_id: \"{}\"\n    client_secret: {}\n    app_key: {}\n    \
             app_secret: {}\n    domain: {}\n    per_second: 100000\n    per_minute: 10000000\nwatches:\n",
            dir.path().join("journal.sqlite3").display(),
            account.client_id,
            account.client_secret,
            account.app_key,
            account.app_secret,
            account.domain
        );
        for w in 0..watches {
            let drop = dir.path().join(format!("drop{w}"));
            std::fs::create_dir_all(&drop).unwrap();
            text.push_str(&format!("  - path: {}\n    vendor: erp\n", drop.display()));
        }
        std::fs::write(dir.path().join("daemon.yaml"), text).unwrap();
        Daemon { dir, child: None }
    }

    fn drop_dir(&self, w: usize) -> PathBuf {
        self.dir.path().join(format!("drop{w}"))
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    fn start_with(&mut self, env: &[(&str, &Path)]) {
        let child = Command::new(BIN)
            .arg("-c")
            .arg(self.dir.path().join("daemon.yaml"))
            .args(["run", "--log-format", "text"])
            .env("IMGSYNCD_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// User + system CPU seconds so far.
    fn cpu_s(&self) -> f64 {
        common::cpu_seconds(&self.pid().to_string())
    }

    /// Context switches per thread: how often each woke.
    fn wakeups(&self) -> std::collections::HashMap<String, u64> {
        let mut per_thread = std::collections::HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap() {
            let task = task.unwrap();
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let switches: u64 = status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt") || l.starts_with("nonvoluntary_ctxt"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            per_thread.insert(task.file_name().to_string_lossy().into_owned(), switches);
        }
        per_thread
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Files per state, through the CLI.
    fn count(&self, state: &str) -> u64 {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(self.dir.path().join("daemon.yaml"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["files"][state].as_u64())
            .unwrap_or(0)
    }

    fn wait_count(&self, state: &str, n: u64, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.count(state) < n && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU and wake-ups of a daemon with every file synced, over a quiet period. Baseline: the same
/// daemon's first minute at work, to show the ratio of idle to busy.
fn idle() {
    let files: u32 = if full() { 100_000 } else { 20_000 };
    let quiet = Duration::from_secs(if full() { 60 } else { 30 });
    let sandbox = unlimited_sandbox();
    let mut daemon = Daemon::new(&sandbox.base_url(), 3, "1s");
    for w in 0..3 {
        write_files(&daemon.drop_dir(w), files / 3, w as u32 * 1_000_000);
    }
    let expected = u64::from(files / 3 * 3);
    daemon.start();
    let took = daemon.wait_count("synced", expected, Duration::from_secs(1800));
    let busy_cpu = daemon.cpu_s();
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, wake0) = (daemon.cpu_s(), daemon.wakeups());
    std::thread::sleep(quiet);
    let (cpu1, wake1) = (daemon.cpu_s(), daemon.wakeups());
    // Threads that ended meanwhile (idle blocking threads retire) count from their last sample.
    let woke: u64 = wake1
        .iter()
        .map(|(tid, n)| n - wake0.get(tid).copied().unwrap_or(0).min(*n))
        .sum();
    println!(
        "idle: {expected} synced files in 3 watches (synced in {:.1} s, {busy_cpu:.2} s CPU); \
         over {} s idle: {:.3} s CPU, {} wake-ups ({:.2}/s) — target ≤ 0.05 s per 60 s",
        took.as_secs_f64(),
        quiet.as_secs(),
        cpu1 - cpu0,
        woke,
        woke as f64 / quiet.as_secs_f64()
    );
}

/// Taking new files with the vendor up, then with it down (connection refused), and the CPU the
/// daemon spends while it is down.
fn down() {
    let files: u32 = if full() { 20_000 } else { 5_000 };
    let sandbox = unlimited_sandbox();
    let mut up = Daemon::new(&sandbox.base_url(), 1, "500ms");
    up.start();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    write_files(&up.drop_dir(0), files, 0);
    up.wait_count("synced", u64::from(files), Duration::from_secs(900));
    let up_rate = f64::from(files) / started.elapsed().as_secs_f64();
    up.stop();

    let mut dead = Daemon::new("http://127.0.0.1:9", 1, "500ms");
    dead.start();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let cpu0 = dead.cpu_s();
    write_files(&dead.drop_dir(0), files, 0);
    dead.wait_count("pending", u64::from(files), Duration::from_secs(900));
    let down_rate = f64::from(files) / started.elapsed().as_secs_f64();
    let intake_cpu = dead.cpu_s() - cpu0;
    let cpu1 = dead.cpu_s();
    std::thread::sleep(Duration::from_secs(30));
    let held_cpu = dead.cpu_s() - cpu1;
    println!(
        "down: taking {files} files: {up_rate:.0}/s with the vendor up (uploading too), \
         {down_rate:.0}/s with it down = {:.2}× (target ≥ 0.8×; {intake_cpu:.2} s CPU); then 30 s \
         with {files} queued and the vendor down: {:.1} % of a core (target ≤ 2 %)",
        down_rate / up_rate,
        held_cpu / 30.0 * 100.0
    );
}

/// Peak RSS with a small and a large backlog queued for a vendor that is down, the backlog found
/// at start-up (written before the daemon starts) and copied into a running watch.
fn memory() {
    let large: u32 = if full() { 100_000 } else { 20_000 };
    for copied_in in [false, true] {
        let mut peaks = Vec::new();
        for n in [1_000, large] {
            let mut daemon = Daemon::new("http://127.0.0.1:9", 1, "500ms");
            if copied_in {
                daemon.start();
                std::thread::sleep(Duration::from_secs(1));
                write_files(&daemon.drop_dir(0), n, 0);
            } else {
                write_files(&daemon.drop_dir(0), n, 0);
                daemon.start();
            }
            daemon.wait_count("pending", u64::from(n), Duration::from_secs(1800));
            std::thread::sleep(Duration::from_secs(2));
            peaks.push((n, daemon.peak_rss_kib()));
        }
        println!(
            "memory ({}): peak RSS {} KiB with {} pending, {} KiB with {} pending = {:.2}× (target ≤ 1.25×, ≤ 48 MB)",
            if copied_in {
                "copied into a running watch"
            } else {
                "found at start-up"
            },
            peaks[0].1,
            peaks[0].0,
            peaks[1].1,
            peaks[1].0,
            peaks[1].1 as f64 / peaks[0].1 as f64
        );
    }
}

/// A file closed in an idle daemon → the sandbox receives its upload, minus the settle period.
/// Baseline: the settle period itself (the wait the daemon is asked to make).
fn latency() {
    let n = 200;
    let settle = Duration::from_millis(500);
    let sandbox = unlimited_sandbox();
    let mut daemon = Daemon::new(&sandbox.base_url(), 1, "500ms");
    daemon.start();
    std::thread::sleep(Duration::from_secs(1));
    let staging = daemon.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut beyond = Vec::new();
    for i in 0..n {
        let name = format!("l{i}.png");
        std::fs::write(staging.join(&name), png(50_000 + i)).unwrap();
        let before = sandbox.log().len();
        let moved = imgsyncd::journal::now_ms();
        std::fs::rename(staging.join(&name), daemon.drop_dir(0).join(&name)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let arrived = loop {
            let log = sandbox.log();
            if let Some(upload) = log[before..]
                .iter()
                .find(|l| l.path.ends_with("image_upload"))
            {
                break upload.at_ms;
            }
            assert!(Instant::now() < deadline, "no upload for {name}");
            std::thread::sleep(Duration::from_millis(2));
        };
        beyond.push((arrived - moved - settle.as_millis() as i64).max(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    beyond.sort_unstable();
    let pct = |p: f64| beyond[((beyond.len() as f64 - 1.0) * p) as usize];
    println!(
        "latency: {n} files one at a time, moved in → upload received, beyond the {} ms settle: \
         p50 {} ms, p90 {} ms, p99 {} ms (target p99 ≤ 20 ms)",
        settle.as_millis(),
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
}

/// Already-synced files, the daemon restarted: the time to READY=1 (read off its notify socket, as
/// systemd does). Baseline: `find DROPS -type f -printf '%s %T@\n'` on the same warm tree, the
/// least any start-up that looks at every file can do. `IMGSYNCD_BENCH_RENAMED=N` renames N files
/// of each watch to names the watch does not take (`.p0.png`) before the restart, as a tree that
/// has lived a while holds some: their copies are kept, and a start must not read every record
/// again to find them.
fn startup() {
    let files: u32 = if full() { 100_000 } else { 20_000 };
    let renamed: u32 = std::env::var("IMGSYNCD_BENCH_RENAMED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let sandbox = unlimited_sandbox();
    let mut daemon = Daemon::new(&sandbox.base_url(), 3, "500ms");
    for w in 0..3 {
        write_files(&daemon.drop_dir(w), files / 3, w as u32 * 1_000_000);
    }
    let expected = u64::from(files / 3 * 3);
    daemon.start();
    daemon.wait_count("synced", expected, Duration::from_secs(1800));
    if renamed > 0 {
        for w in 0..3 {
            let sub = daemon.drop_dir(w).join("d0000");
            for i in 0..renamed {
                std::fs::rename(
                    sub.join(format!("p{i}.png")),
                    sub.join(format!(".p{i}.png")),
                )
                .unwrap();
            }
        }
        // Past the settle period and the removal's wait: the renames are recorded.
        std::thread::sleep(Duration::from_secs(5));
        println!("startup: renamed {renamed} files of each watch out of its names");
    }
    daemon.stop();
    let drops: Vec<PathBuf> = (0..3).map(|w| daemon.drop_dir(w)).collect();
    let find = || {
        let started = Instant::now();
        Command::new("find")
            .args(&drops)
            .args(["-type", "f", "-printf", "%s %T@\n"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        started.elapsed()
    };
    let _ = find();
    let base = [find(), find(), find()].into_iter().min().unwrap();
    let socket_path = daemon.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let started = Instant::now();
    daemon.start_with(&[("NOTIFY_SOCKET", &socket_path)]);
    let mut message = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut message)
            .expect("READY=1 within 10 minutes");
        if String::from_utf8_lossy(&message[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "startup: {expected} synced files in 3 watches: READY=1 after {:.2} s; find over the same \
         warm tree {:.2} s = {:.2}× (target ≤ 2×); uploads since the restart: {}",
        ready.as_secs_f64(),
        base.as_secs_f64(),
        ready.as_secs_f64() / base.as_secs_f64(),
        (sandbox.uploads() as u64).saturating_sub(expected)
    );
    if std::env::var_os("IMGSYNCD_BENCH_KEEP").is_some() {
        daemon.stop();
        let kept = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap()).keep();
        println!("kept the tree and journal in {}", kept.display());
    }
}

fn main() {
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = ["idle", "down", "memory", "latency", "startup"];
    for name in all {
        if chosen.is_empty() || chosen.iter().any(|c| c == name) {
            match name {
                "idle" => idle(),
                "down" => down(),
                "memory" => memory(),
                "startup" => startup(),
                _ => latency(),
            }
        }
    }
}
