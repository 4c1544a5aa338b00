//! The end-to-end harness: a sandbox on 127.0.0.1, a temporary drop folder and config, the real
//! `imgsyncd` binary, and the contract's CLI and JSON to see what it did.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use imgsyncd::sandbox::{
    FeishuAccount, JiandaoyunAccount, KingdeeAccount, Logged, Sandbox, SandboxOptions,
};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_imgsyncd");
/// How long a test waits for the daemon before it fails (a deadline against hangs, not a speed test).
const PATIENCE: Duration = Duration::from_secs(90);

pub struct Options {
    pub settle: &'static str,
    pub max_deletes: usize,
    pub workers: usize,
    pub sandbox: SandboxOptions,
    /// The credentials the daemon is configured with (the sandbox's by default).
    pub account: Option<KingdeeAccount>,
    pub watch_extra: &'static str,
    /// Run the daemon and the CLI as `nobody` (the tests run as root, who can read anything).
    pub as_nobody: bool,
    /// Feed the drop folder to a Feishu lingo vendor named `wiki` instead of Kingdee's `erp`
    /// (which stays configured, with no watch).
    pub feishu: Option<FeishuVendor>,
    /// Feed the drop folder to a Jiandaoyun vendor named `forms` instead (Kingdee's `erp` stays
    /// configured, with no watch).
    pub jiandaoyun: Option<JiandaoyunVendor>,
}

/// The image widget and the text widget of the record `forms` creates with `create_record`.
pub const IMAGE_WIDGET: &str = "_widget_1432728651402";
pub const NAME_WIDGET: &str = "_widget_1432728651403";

/// How the Jiandaoyun vendor `forms` is configured.
#[derive(Debug, Clone, Default)]
pub struct JiandaoyunVendor {
    /// The API key, app and form the daemon is configured with (the sandbox's by default).
    pub account: Option<JiandaoyunAccount>,
    /// One record per file: the key in [`IMAGE_WIDGET`], `{relpath}` in [`NAME_WIDGET`].
    pub create_record: bool,
    /// More lines under the vendor, e.g. `"    per_second: 10\n"`.
    pub extra: &'static str,
}

/// How the Feishu vendor `wiki` is configured.
#[derive(Debug, Clone, Default)]
pub struct FeishuVendor {
    /// The app credentials the daemon is configured with (the sandbox's by default).
    pub account: Option<FeishuAccount>,
    /// More lines under the vendor, e.g. `"    per_second: 10\n"`.
    pub extra: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settle: "500ms",
            max_deletes: 100,
            workers: 4,
            sandbox: SandboxOptions::default(),
            account: None,
            watch_extra: "",
            as_nobody: false,
            feishu: None,
            jiandaoyun: None,
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub drop: PathBuf,
    pub config_path: PathBuf,
    pub sandbox: Sandbox,
    options: Options,
    daemon: Option<Child>,
    log_path: PathBuf,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(Options::default())
    }

    pub fn with(options: Options) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let drop = dir.path().join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        if options.as_nobody {
            use std::os::unix::fs::PermissionsExt;
            for folder in [dir.path(), drop.as_path()] {
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
        }
        let sandbox = Sandbox::start(options.sandbox.clone());
        let harness = Harness {
            config_path: dir.path().join("daemon.yaml"),
            log_path: dir.path().join("daemon.log"),
            drop,
            sandbox,
            options,
            daemon: None,
            dir,
        };
        let account = harness
            .options
            .account
            .clone()
            .unwrap_or_else(|| harness.sandbox.options().kingdee);
        harness.write_config(&account);
        harness
    }

    /// Changes the options and writes the config they make (for a reload to read).
    pub fn reconfigure(&mut self, change: impl FnOnce(&mut Options)) {
        change(&mut self.options);
        let account = self
            .options
            .account
            .clone()
            .unwrap_or_else(|| self.sandbox.options().kingdee);
        self.write_config(&account);
    }

    /// Writes the config the daemon reads, with the given Kingdee credentials (and the Feishu
    /// ones the options name).
    pub fn write_config(&self, account: &KingdeeAccount) {
        let feishu = self.options.feishu.as_ref().map(|f| {
            f.account
                .clone()
                .unwrap_or_else(|| self.sandbox.options().feishu)
        });
        self.write_config_with(account, feishu.as_ref());
    }

    /// Writes the config with the given Feishu app credentials (the drop folder feeds `wiki`).
    pub fn write_feishu_config(&self, feishu: &FeishuAccount) {
        let account = self
            .options
            .account
            .clone()
            .unwrap_or_else(|| self.sandbox.options().kingdee);
        self.write_config_with(&account, Some(feishu));
    }

    /// Writes the config with the given Jiandaoyun account (the drop folder feeds `forms`).
    pub fn write_jiandaoyun_config(&self, jiandaoyun: &JiandaoyunAccount) {
        let account = self
            .options
            .account
            .clone()
            .unwrap_or_else(|| self.sandbox.options().kingdee);
        self.write_config_full(&account, None, Some(jiandaoyun));
    }

    fn write_config_with(&self, account: &KingdeeAccount, feishu: Option<&FeishuAccount>) {
        let jiandaoyun = self.options.jiandaoyun.as_ref().map(|j| {
            j.account
                .clone()
                .unwrap_or_else(|| self.sandbox.options().jiandaoyun)
        });
        self.write_config_full(account, feishu, jiandaoyun.as_ref());
    }

    fn write_config_full(
        &self,
        account: &KingdeeAccount,
        feishu: Option<&FeishuAccount>,
        jiandaoyun: Option<&JiandaoyunAccount>,
    ) {
        let (feishu_vendor, watched) = match feishu {
            Some(app) => (
                format!(
                    "  wiki:\n    kind: feishu\n    base_url: {base}\n    app_id: {id}\n    \
                     app_secret: {secret}\n{extra}",
                    base = self.sandbox.base_url(),
                    id = app.app_id,
                    secret = app.app_secret,
                    extra = self.options.feishu.as_ref().map_or("", |f| f.extra),
                ),
                "wiki",
            ),
            None => (String::new(), "erp"),
        };
        let (jiandaoyun_vendor, watched) = match (jiandaoyun, &self.options.jiandaoyun) {
            (Some(jdy), Some(vendor)) => {
                let record = if vendor.create_record {
                    format!(
                        "    create_record:\n      image_widget: {IMAGE_WIDGET}\n      fields:\n        \
                         {NAME_WIDGET}: \"{{relpath}}\"\n"
                    )
                } else {
                    String::new()
                };
                (
                    format!(
                        "  forms:\n    kind: jiandaoyun\n    base_url: {base}\n    api_key: {key}\n    \
                         app_id: {app}\n    entry_id: {entry}\n{record}{extra}",
                        base = self.sandbox.base_url(),
                        key = jdy.api_key,
                        app = jdy.app_id,
                        entry = jdy.entry_id,
                        extra = vendor.extra,
                    ),
                    "forms",
                )
            }
            _ => (String::new(), watched),
        };
        let text = format!(
            "journal: {journal}\nworkers: {workers}\nsettle: {settle}\nrescan: 1h\nmax_deletes: {max}\n\
             vendors:\n  erp:\n    kind: kingdee\n    base_url: {base}\n    client_id: \"{id}\"\n    \
             client_secret: {secret}\n    app_key: {key}\n    app_secret: {app_secret}\n    domain: {domain}\n\
             {feishu_vendor}{jiandaoyun_vendor}watches:\n  - path: {drop}\n    vendor: {watched}\n{extra}",
            journal = self.dir.path().join("journal.sqlite3").display(),
            workers = self.options.workers,
            settle = self.options.settle,
            max = self.options.max_deletes,
            base = self.sandbox.base_url(),
            id = account.client_id,
            secret = account.client_secret,
            key = account.app_key,
            app_secret = account.app_secret,
            domain = account.domain,
            drop = self.drop.display(),
            extra = self.options.watch_extra,
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn start(&mut self) {
        self.start_with("text", &[]);
    }

    /// Starts the daemon with `--log-format log_format` and more environment variables, and
    /// waits until it says it runs.
    pub fn start_with(&mut self, log_format: &str, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        // The log is appended across restarts: wait for this start's line, not an earlier one's.
        let started_before = self.log().matches("imgsyncd running").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = self
            .command()
            .args([
                "-c",
                self.config_path.to_str().unwrap(),
                "run",
                "--log-format",
                log_format,
            ])
            .env("IMGSYNCD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start imgsyncd");
        self.daemon = Some(child);
        self.wait_for("the daemon to start", |h| {
            h.log().matches("imgsyncd running").count() > started_before
        });
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.daemon.as_ref().expect("a running daemon").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let mut child = self.daemon.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.daemon.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn reload(&self) {
        self.signal("-HUP");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `imgsyncd`, as `nobody` when the options say so.
    pub fn command(&self) -> Command {
        if self.options.as_nobody {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            command
        } else {
            Command::new(BIN)
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command()
            .args(args)
            .output()
            .expect("run imgsyncd")
    }

    /// `imgsyncd -c <config>`, for arguments or an environment [`Harness::cli`] does not take.
    pub fn cli_command(&self) -> Command {
        let mut command = self.command();
        command.arg("-c").arg(&self.config_path);
        command
    }

    /// `files --json`, or nothing before the journal exists.
    pub fn files(&self) -> Vec<Value> {
        let out = self.cli(&["files", "--json"]);
        if !out.status.success() {
            eprintln!(
                "files --json failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).expect("files --json is JSON")
    }

    pub fn file(&self, name: &str) -> Option<Value> {
        let path = self.drop.join(name).display().to_string();
        self.files()
            .into_iter()
            .find(|f| f["path"] == path.as_str())
    }

    pub fn state(&self, name: &str) -> Option<String> {
        self.file(name)
            .and_then(|f| f["state"].as_str().map(String::from))
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn wait_for(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nfiles: {:#?}\nlog:\n{}",
                self.files(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_for(&format!("{name} to be {state}"), |h| {
            h.state(name).as_deref() == Some(state)
        });
        self.file(name).unwrap()
    }

    /// The bytes Feishu lingo holds under the file_token the journal recorded for `name`.
    pub fn feishu_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let token = self.file(name)?["file_token"].as_str()?.to_string();
        self.sandbox
            .feishu_files()
            .get(&token)
            .map(|f| f.bytes.clone())
    }

    /// The bytes Jiandaoyun holds under the key the journal recorded for `name`.
    pub fn jiandaoyun_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let key = self.file(name)?["key"].as_str()?.to_string();
        self.sandbox
            .jiandaoyun_uploads()
            .get(&key)
            .map(|u| u.bytes.clone())
    }

    /// The bytes the sandbox holds at the URL the journal recorded for `name`.
    pub fn remote_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let url = self.file(name)?["url"].as_str()?.to_string();
        self.sandbox.images().get(&url).map(|i| i.bytes.clone())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.drop.join(name)
    }

    /// Writes a file outside the watch and moves it in, as a careful producer would.
    pub fn drop_file(&self, name: &str, bytes: &[u8]) {
        let staging = self.dir.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let temp = staging.join(name.replace('/', "_"));
        std::fs::write(&temp, bytes).unwrap();
        let target = self.path(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::rename(&temp, target).unwrap();
    }

    pub fn deletes_at_sandbox(&self) -> usize {
        self.sandbox
            .log()
            .iter()
            .filter(|l| l.method == "DELETE" && l.errcode == Some(0))
            .count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Every test's daemon log is checked: no configured secret and no token the sandbox
        // issued may appear in it.
        if !std::thread::panicking() {
            let log = self.log();
            for secret in self.sandbox.secrets() {
                assert!(
                    !log.contains(&secret),
                    "a secret reached the daemon's log: …{}…",
                    &secret[..secret.len().min(4)]
                );
            }
        }
    }
}

/// A real image of `format`, `w`×`h`, whose pixels depend on `seed` (so bytes differ per seed).
pub fn image(format: image::ImageFormat, seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed.wrapping_mul(101));
        image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode the test image");
    out.into_inner()
}

pub fn png(seed: u32) -> Vec<u8> {
    image(image::ImageFormat::Png, seed, 64, 48)
}

pub fn jpeg(seed: u32) -> Vec<u8> {
    image(image::ImageFormat::Jpeg, seed, 64, 48)
}

/// The most requests of `log` the sandbox took in within any `span_ms` window.
pub fn densest(log: &[Logged], span_ms: i64) -> usize {
    log.iter()
        .map(|a| {
            log.iter()
                .filter(|b| b.at_ms >= a.at_ms && b.at_ms < a.at_ms + span_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Kills the child when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `imgsyncd ARGS` in `cwd` and returns it with the first `lines` lines it printed.
pub fn start(args: &[&str], cwd: &std::path::Path, lines: usize) -> (Running, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("IMGSYNCD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cwd.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let printed = BufReader::new(stdout)
        .lines()
        .take(lines)
        .map(|l| l.unwrap())
        .collect();
    (running, printed)
}
