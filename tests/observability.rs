//! What an operator reads: JSON log lines with their fields, text logs without escape codes in
//! a pipe, journald's native fields (when the test may build a mount namespace), and the
//! metrics endpoint's counters against what the sandbox received.

mod common;
#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Harness, png};
use metrics_endpoint::{samples, scrape};
use serde_json::Value;

#[test]
fn json_log_lines_parse_and_carry_the_fields() {
    let mut h = Harness::new();
    h.start_with("json", &[]);
    h.drop_file("good.png", &png(801));
    std::fs::write(h.path("bad.jpg"), b"no image here").unwrap();
    h.wait_state("good.png", "synced");
    h.wait_state("bad.jpg", "rejected");
    assert!(h.stop().success());
    let lines: Vec<Value> = h
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()
            && l["level"].is_string()
            && l["message"].is_string()),
        "{lines:#?}"
    );
    let good = h.path("good.png").display().to_string();
    let uploaded = lines
        .iter()
        .find(|l| l["outcome"] == "uploaded")
        .expect("an upload line");
    assert_eq!(uploaded["level"], "INFO");
    assert_eq!(uploaded["vendor"], "erp");
    assert_eq!(uploaded["path"], good.as_str());
    assert!(uploaded["job"].as_i64().is_some(), "{uploaded}");
    assert_eq!(uploaded["attempt"], 1);
    let taken = lines
        .iter()
        .find(|l| l["outcome"] == "taken")
        .expect("a taken line");
    assert_eq!(taken["path"], good.as_str());
    let rejected = lines
        .iter()
        .find(|l| l["outcome"] == "rejected")
        .expect("a rejection line");
    assert_eq!(rejected["level"], "ERROR", "a rejection is an error");
    assert_eq!(rejected["vendor"], "erp");
    assert_eq!(rejected["path"], h.path("bad.jpg").display().to_string());
}

/// Runs the daemon with stderr on a pipe until it has synced a file; returns what it wrote.
fn logs_through_a_pipe(format: &str, env: &[(&str, &str)]) -> String {
    let h = Harness::new();
    let mut child = Command::new(BIN)
        .args([
            "-c",
            h.config_path.to_str().unwrap(),
            "run",
            "--log-format",
            format,
        ])
        .env("IMGSYNCD_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text.lock().unwrap().contains("imgsyncd running") {
        assert!(Instant::now() < deadline, "{}", text.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    h.drop_file("piped.png", &png(811));
    h.wait_state("piped.png", "synced");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    reader.join().unwrap();
    let text = text.lock().unwrap().clone();
    assert!(text.contains("uploaded: url "), "{text}");
    text
}

#[test]
fn text_logs_to_a_pipe_carry_no_escape_codes() {
    for format in ["auto", "text"] {
        let text = logs_through_a_pipe(format, &[]);
        assert!(
            !text.contains('\u{1b}'),
            "{format}: escape codes in a pipe:\n{text:?}"
        );
        assert!(text.contains(" INFO "), "{text}");
    }
}

/// One journald entry's fields.
type Entry = BTreeMap<String, String>;

/// One datagram of journald's native protocol, as fields.
fn journal_fields(datagram: &[u8]) -> Entry {
    let mut fields = BTreeMap::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &rest[..newline];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into(),
                String::from_utf8_lossy(&line[eq + 1..]).into(),
            );
            rest = &rest[newline + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let after = &rest[newline + 1..];
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            fields.insert(
                name,
                String::from_utf8_lossy(&after[8..8 + len]).into_owned(),
            );
            rest = &after[8 + len + 1..];
        }
    }
    fields
}

/// Under systemd (JOURNAL_STREAM names stderr), `auto` speaks journald's native protocol with
/// fields an operator filters on. journald's socket is at a fixed path, so the daemon runs in a
/// mount namespace where the test's own socket sits there; without the rights for that (not
/// root) the test has nothing to check and says so.
#[test]
fn auto_under_systemd_writes_native_journald_fields() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .status();
    if !probe.is_ok_and(|s| s.success()) || !std::path::Path::new("/run/systemd").is_dir() {
        eprintln!("skipped: cannot build a mount namespace with /run/systemd here");
        return;
    }
    let h = Harness::new();
    let journal_dir = h.dir.path().join("journald");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let socket = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // `imgsyncd run` as systemd starts it: its stderr the journal's stream (JOURNAL_STREAM
    // names the file's device and inode), journald's socket the one this test listens on.
    let under_journald = |stderr_path: &std::path::Path| {
        let stderr = std::fs::File::create(stderr_path).unwrap();
        let meta = stderr.metadata().unwrap();
        let mut command = Command::new("unshare");
        command
            .args([
                "-m",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal \
                 && mount --bind \"$1\" /run/systemd/journal && exec \"$2\" -c \"$3\" run",
                "sh",
                journal_dir.to_str().unwrap(),
                BIN,
                h.config_path.to_str().unwrap(),
            ])
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env("IMGSYNCD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        command
    };
    let stderr_path = h.dir.path().join("stderr");
    let mut child = under_journald(&stderr_path).spawn().unwrap();
    let mut heard: Vec<Entry> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut listen_until = |heard: &mut Vec<Entry>, done: &dyn Fn(&[Entry]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(heard) {
            assert!(Instant::now() < deadline, "{heard:#?}");
            if let Ok(n) = socket.recv(&mut buf)
                && n > 0
            {
                heard.push(journal_fields(&buf[..n]));
            }
        }
    };
    listen_until(&mut heard, &|heard| {
        heard
            .iter()
            .any(|f| f.get("MESSAGE").is_some_and(|m| m == "imgsyncd running"))
    });
    h.drop_file("native.png", &png(821));
    std::fs::write(h.path("native-bad.jpg"), b"nope").unwrap();
    listen_until(&mut heard, &|heard| {
        heard
            .iter()
            .any(|f| f.get("IMGSYNCD_OUTCOME").is_some_and(|o| o == "uploaded"))
            && heard
                .iter()
                .any(|f| f.get("IMGSYNCD_OUTCOME").is_some_and(|o| o == "rejected"))
    });
    // A second daemon on the same journal cannot start: the reason reaches journald as an
    // error, not stderr (which journald files as info).
    let second_stderr = h.dir.path().join("second-stderr");
    let second = under_journald(&second_stderr).status().unwrap();
    assert_eq!(second.code(), Some(2));
    listen_until(&mut heard, &|heard| {
        heard.iter().any(|f| {
            f.get("MESSAGE")
                .is_some_and(|m| m.contains("another imgsyncd is already running"))
        })
    });
    let refused = heard
        .iter()
        .find(|f| {
            f.get("MESSAGE")
                .is_some_and(|m| m.contains("another imgsyncd is already running"))
        })
        .unwrap();
    assert_eq!(refused["PRIORITY"], "3", "a failed start is an error");
    assert_eq!(std::fs::read_to_string(&second_stderr).unwrap(), "");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let uploaded = heard
        .iter()
        .find(|f| f.get("IMGSYNCD_OUTCOME").is_some_and(|o| o == "uploaded"))
        .unwrap();
    assert_eq!(uploaded["IMGSYNCD_VENDOR"], "erp");
    assert_eq!(
        uploaded["IMGSYNCD_PATH"],
        h.path("native.png").display().to_string()
    );
    assert_eq!(uploaded["IMGSYNCD_ATTEMPT"], "1");
    assert!(uploaded["IMGSYNCD_JOB"].parse::<i64>().is_ok());
    assert_eq!(uploaded["PRIORITY"], "6", "info is journald's 6");
    assert_eq!(uploaded["SYSLOG_IDENTIFIER"], "imgsyncd");
    assert!(uploaded["MESSAGE"].starts_with("uploaded: url "));
    let rejected = heard
        .iter()
        .find(|f| f.get("IMGSYNCD_OUTCOME").is_some_and(|o| o == "rejected"))
        .unwrap();
    assert_eq!(rejected["PRIORITY"], "3", "a rejection is an error");
    assert_eq!(
        std::fs::read_to_string(&stderr_path).unwrap(),
        "",
        "nothing is written twice"
    );
}

#[test]
fn metrics_after_a_sync_match_what_the_vendor_received() {
    let mut h = Harness::new();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, format!("metrics: 127.0.0.1:0\n{config}")).unwrap();
    h.start();
    let log = h.log();
    let address = log
        .split("metrics served at http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .expect(&log)
        .to_string();
    for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        h.drop_file(name, &png(900 + i as u32));
    }
    std::fs::write(h.path("bad.jpg"), b"not an image").unwrap();
    for name in ["a.png", "b.png", "c.png"] {
        h.wait_state(name, "synced");
    }
    h.wait_state("bad.jpg", "rejected");
    std::fs::remove_file(h.path("c.png")).unwrap();
    h.wait_state("c.png", "removed");

    let (status, content_type, body) = scrape(&address);
    assert!(status.contains("200"), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let m = samples(&body);
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    let uploads = h.sandbox.uploads() as f64;
    assert_eq!(uploads, 3.0);
    assert_eq!(
        get(r#"imgsyncd_uploads_total{vendor="erp",outcome="uploaded"}"#),
        uploads
    );
    assert_eq!(
        get(r#"imgsyncd_deletes_total{vendor="erp",outcome="deleted"}"#),
        h.deletes_at_sandbox() as f64
    );
    assert_eq!(
        get(r#"imgsyncd_request_duration_seconds_count{vendor="erp",endpoint="upload"}"#),
        uploads
    );
    let token_calls = h
        .sandbox
        .log()
        .iter()
        .filter(|l| l.path.contains("auth_token"))
        .count() as f64;
    assert_eq!(
        get(r#"imgsyncd_request_duration_seconds_count{vendor="erp",endpoint="token"}"#),
        token_calls
    );
    assert_eq!(
        get(r#"imgsyncd_token_refreshes_total{vendor="erp",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        get(r#"imgsyncd_files_examined_total{vendor="erp",outcome="taken"}"#),
        3.0
    );
    assert_eq!(
        get(r#"imgsyncd_files_examined_total{vendor="erp",outcome="rejected"}"#),
        1.0
    );
    assert_eq!(get(r#"imgsyncd_files{vendor="erp",state="synced"}"#), 2.0);
    assert_eq!(get(r#"imgsyncd_files{vendor="erp",state="removed"}"#), 1.0);
    assert_eq!(get(r#"imgsyncd_files{vendor="erp",state="rejected"}"#), 1.0);
    assert_eq!(get(r#"imgsyncd_files{vendor="erp",state="pending"}"#), 0.0);
    assert_eq!(get("imgsyncd_queued_jobs"), 0.0);
    assert_eq!(get("imgsyncd_oldest_pending_job_age_seconds"), 0.0);
    assert_eq!(get(r#"imgsyncd_vendor_paused{vendor="erp"}"#), 0.0);
    assert_eq!(get(r#"imgsyncd_watches{mode="inotify"}"#), 1.0);
    assert_eq!(get(r#"imgsyncd_watches{mode="poll"}"#), 0.0);
    let drop = h.drop.display().to_string();
    assert_eq!(
        get(&format!(
            r#"imgsyncd_watch_info{{path="{drop}",vendor="erp",mode="inotify"}}"#
        )),
        1.0
    );
    assert!(body.contains("# TYPE imgsyncd_request_duration_seconds histogram"));
}

#[test]
fn a_refused_timestamp_compares_the_clock_with_kingdees() {
    let mut h = Harness::new();
    h.sandbox.inject([imgsyncd::sandbox::Fault::Gateway(4006)]);
    h.start();
    h.drop_file("late.png", &png(831));
    h.wait_for("the vendor to be paused", |h| {
        h.status()["paused_vendors"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    let reason = h.status()["paused_vendors"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    // The sandbox runs on this host's clock: its Date header agrees to the second.
    assert!(reason.contains("(errcode 4006)"), "{reason}");
    assert!(
        reason.contains("this host's clock agrees with Kingdee's Date header"),
        "{reason}"
    );
}

#[test]
fn a_read_only_journal_is_one_clear_message() {
    if !common::running_as_root() {
        eprintln!("skipped: needs root to run the daemon as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::with(common::Options {
        as_nobody: true,
        ..common::Options::default()
    });
    // The journal exists (made by root) but its folder and file are not the daemon's to write.
    let out = Command::new(BIN)
        .args(["-c", h.config_path.to_str().unwrap(), "scan"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        h.dir.path().join("journal.sqlite3.lock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "-c",
        ])
        .arg(&h.config_path)
        .args(["run", "--log-format", "text"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("imgsyncd: "))
        .collect();
    assert_eq!(message.len(), 1, "{stderr}");
    let message = message[0];
    assert!(
        message.starts_with(&format!(
            "imgsyncd: journal {}: attempt to write a readonly database: the journal is read-only",
            h.dir.path().join("journal.sqlite3").display()
        )),
        "{message}"
    );
    assert!(!message.contains("Error code"), "said once: {message}");
    // Nothing was harmed: the journal still reads.
    assert_eq!(h.status()["files"]["synced"], 0);
}

/// Out of inotify watches: the log says how many are allowed and in use, how many the folder
/// needs and what to set, and the watch is polled instead. The limit is lowered for the daemon
/// alone, in a user namespace of its own (Linux 5.11+); where that cannot be made, there is
/// nothing to check.
#[test]
fn out_of_inotify_watches_says_what_to_set_and_polls() {
    let probe = Command::new("unshare")
        .args([
            "-U",
            "-r",
            "sh",
            "-c",
            "echo 20 > /proc/sys/user/max_inotify_watches",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot lower the inotify limit in a user namespace here");
        return;
    }
    let h = Harness::new();
    for i in 0..30 {
        std::fs::create_dir_all(h.path(&format!("folder-{i:02}"))).unwrap();
    }
    h.drop_file("folder-07/early.png", &png(841));
    let log_path = h.dir.path().join("inotify.log");
    let mut child = Command::new("unshare")
        .args([
            "-U",
            "-r",
            "sh",
            "-c",
            "echo 20 > /proc/sys/user/max_inotify_watches && exec \"$1\" -c \"$2\" run --log-format text",
            "sh",
            BIN,
            h.config_path.to_str().unwrap(),
        ])
        .env("IMGSYNCD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("imgsyncd running") {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    h.wait_state("folder-07/early.png", "synced");
    // `status` says it too, while it lasts: an operator need not have read the log.
    let status = h.status();
    let degraded = status["degraded_watches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(degraded.len(), 1, "{status}");
    assert_eq!(degraded[0]["path"], h.drop.to_str().unwrap());
    assert!(
        degraded[0]["reason"].as_str().is_some_and(|r| {
            r.starts_with(
                "polled every 30s: cannot watch the folder with inotify: out of inotify watches",
            )
        }),
        "{status}"
    );
    let text = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("WATCH {} since ", h.drop.display())),
        "{text}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let log = log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot watch the folder with inotify"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(
            "out of inotify watches: this user namespace's user.max_inotify_watches is 20, \
             this user's processes hold"
        ),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "and {} has 31 folders to watch: set user.max_inotify_watches=524288",
            h.drop.display()
        )),
        "{line}"
    );
    assert!(line.contains("polling it every 30s instead"), "{line}");
    assert!(line.contains(" ERROR "), "{line}");
}

/// A full disk under the journal: the daemon says so a few times with what to do, loses nothing,
/// and carries on once there is room. The journal sits on a small tmpfs in a mount namespace of
/// the daemon's own, filled and emptied from inside it (nsenter); where that cannot be made,
/// there is nothing to check.
#[test]
fn a_full_disk_under_the_journal_is_said_once_and_loses_nothing() {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .status();
    let nsenter = Command::new("nsenter").arg("--version").output();
    if !probe.is_ok_and(|s| s.success()) || !nsenter.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot build a mount namespace (or no nsenter) here");
        return;
    }
    let h = Harness::new();
    let state = h.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let journal = h.dir.path().join("journal.sqlite3").display().to_string();
    let moved = state.join("journal.sqlite3").display().to_string();
    std::fs::write(&h.config_path, config.replace(&journal, &moved)).unwrap();
    let log_path = h.dir.path().join("full.log");
    let child = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=2m tmpfs \"$1\" && exec \"$2\" -c \"$3\" run --log-format text",
            "sh",
            state.to_str().unwrap(),
            BIN,
            h.config_path.to_str().unwrap(),
        ])
        .env("IMGSYNCD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut daemon = common::Running(child);
    let inside = |script: &str| {
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "sh", "-c", script, "sh"])
            .arg(&state)
            .arg(BIN)
            .arg(&h.config_path)
            .output()
            .unwrap()
    };
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&log()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the start", &|l| l.contains("imgsyncd running"));
    h.drop_file("before.png", &png(851));
    wait("the first upload", &|l| {
        l.matches("uploaded: url").count() == 1
    });

    inside("cat /dev/zero > \"$1/filler\" 2>/dev/null; true");
    // The WAL's slack (room it already holds, written again from its start once checkpointed)
    // may record and send a few files before a write needs room the disk has not, so files go
    // on being dropped until one cannot be recorded.
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("the disk holding the journal is full") {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the full disk to be reported after {dropped} files\n{}",
            log()
        );
        h.drop_file(&format!("during-{dropped}.png"), &png(860 + dropped));
        dropped += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    // Once a write has failed, nothing more is taken, and a slot sends nothing more once its
    // outcome is refused: at most each of the four slots' transfer under way and the one it began
    // before the refusal came back.
    let sent_when_reported = h.sandbox.uploads();
    std::thread::sleep(Duration::from_secs(4));
    let reports = log()
        .matches("the disk holding the journal is full")
        .count();
    assert_eq!(
        reports,
        1,
        "said once, not once per file and retry:\n{}",
        log()
    );
    assert!(
        h.sandbox.uploads() <= sent_when_reported + 8,
        "nothing taken once the journal could not record: {} sent when the full disk was \
         reported, {} four seconds later\n{}",
        sent_when_reported,
        h.sandbox.uploads(),
        log()
    );

    inside("rm \"$1/filler\"");
    // An outcome the full journal refused is tried again with growing waits (up to 30 s), so
    // every file is recorded synced a little after there is room again.
    let expected = 1 + dropped as usize;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let files = inside("\"$2\" -c \"$3\" files --json");
        assert!(
            files.status.success(),
            "{}",
            String::from_utf8_lossy(&files.stderr)
        );
        let files: Vec<Value> = serde_json::from_slice(&files.stdout).unwrap();
        let synced = files.iter().filter(|f| f["state"] == "synced").count();
        if files.len() == expected && synced == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every file synced once there is room: {files:#?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        log().matches("uploaded: url").count(),
        expected,
        "{}",
        log()
    );
    assert_eq!(h.sandbox.uploads(), expected, "each file sent once");
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    daemon.0.wait().unwrap();
}

/// A writer that hangs with a file open: the file is not in the journal yet, so one log line is
/// all that says where it is. It is never sent half, and is taken once closed.
#[test]
fn a_file_a_writer_keeps_open_is_reported_once_and_taken_at_its_close() {
    let mut h = Harness::with(common::Options {
        settle: "50ms",
        ..common::Options::default()
    });
    h.start();
    let bytes = png(7);
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    let mut writer = std::fs::File::create(h.path("slow.png")).unwrap();
    writer.write_all(head).unwrap();
    // 60 settle periods of 50 ms.
    h.wait_for("the open file to be reported", |h| {
        h.log().contains("still open for writing after 3s")
    });
    assert!(h.file("slow.png").is_none(), "not taken while open");
    assert!(h.sandbox.images().is_empty(), "nothing sent half");
    let line = h
        .log()
        .lines()
        .filter(|l| l.contains("still open for writing"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(line.contains("slow.png"), "{line}");
    assert!(line.contains("until its writer closes it"), "{line}");
    std::thread::sleep(Duration::from_secs(4));
    writer.write_all(tail).unwrap();
    drop(writer);
    h.wait_state("slow.png", "synced");
    assert_eq!(h.remote_bytes("slow.png"), Some(bytes));
    let told = h.log().matches("still open for writing").count();
    assert_eq!(told, 1, "reported once\n{}", h.log());
}

/// The harness's config with its journal moved to `journal`.
fn with_journal_at(h: &Harness, journal: &std::path::Path) {
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let text: Vec<String> = config
        .lines()
        .map(|l| match l.starts_with("journal: ") {
            true => format!("journal: {}", journal.display()),
            false => l.to_string(),
        })
        .collect();
    std::fs::write(&h.config_path, text.join("\n") + "\n").unwrap();
}

/// A journal in a folder on a read-only filesystem (what the unit's ProtectSystem=strict makes of
/// every folder but /var/lib/imgsyncd): `check`, the unit's ExecStartPre=, fails naming the folder
/// and the drop-in that fixes it, instead of passing and letting `run` fail and restart forever.
/// The folder is a read-only tmpfs in a mount namespace of `check`'s own; where that cannot be
/// made, there is nothing to check.
#[test]
fn check_fails_for_a_journal_folder_on_a_read_only_filesystem() {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o ro none /mnt"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a read-only tmpfs in a mount namespace here");
        return;
    }
    let h = Harness::new();
    let read_only = h.dir.path().join("srv");
    std::fs::create_dir_all(&read_only).unwrap();
    // `check` on `journal`, with `read_only` mounted read-only for it alone.
    let check = |journal: &std::path::Path| {
        with_journal_at(&h, journal);
        Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                "mount -t tmpfs -o ro none \"$1\" && exec \"$2\" -c \"$3\" check",
                "sh",
                read_only.to_str().unwrap(),
                BIN,
                h.config_path.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };

    // The folder exists, read-only.
    let out = check(&read_only.join("journal.sqlite3"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(": ok"));
    let folder = read_only.display().to_string();
    assert!(
        stderr.contains(&format!(
            "the journal's folder {folder} is not writable by this process"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(stderr.contains("ProtectSystem=strict"), "{stderr}");
    assert!(
        stderr.contains(&format!("`ReadWritePaths={folder}`")),
        "{stderr}"
    );
    assert!(stderr.contains("systemctl edit imgsyncd"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("imgsyncd: "))
            .count(),
        1,
        "one message: {stderr}"
    );

    // The folder does not exist and cannot be made there: make it, then ReadWritePaths=.
    let missing = read_only.join("imgsyncd");
    let out = check(&missing.join("journal.sqlite3"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let shown = missing.display().to_string();
    assert!(
        stderr.contains(&format!(
            "the journal's folder {shown} does not exist, and {folder} cannot be written"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "install -d -o imgsyncd -g imgsyncd -m 0750 {shown}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("`ReadWritePaths={shown}`")),
        "{stderr}"
    );

    // Writable, the same config passes, and `check` made nothing there.
    with_journal_at(&h, &missing.join("journal.sqlite3"));
    let out = h.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "the journal's folder {shown} does not exist yet: `run` creates it"
        )),
        "{stdout}"
    );
    assert!(!missing.exists(), "check creates nothing");
}

/// A journal folder (or journal file) the daemon's user may not write: `check` fails naming it
/// and says to give it to that user. Run as `nobody`, since root may write anything.
#[test]
fn check_fails_for_a_journal_the_daemons_user_may_not_write() {
    if !common::running_as_root() {
        eprintln!("skipped: needs root to run the CLI as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::with(common::Options {
        as_nobody: true,
        ..common::Options::default()
    });
    let theirs = h.dir.path().join("root-only");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    with_journal_at(&h, &theirs.join("journal.sqlite3"));
    let out = h.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let folder = theirs.display().to_string();
    assert!(
        stderr.contains(&format!(
            "the journal's folder {folder} is not writable by this process: Permission denied"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chown imgsyncd:imgsyncd {folder}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ReadWritePaths"),
        "not a read-only mount: {stderr}"
    );

    // The folder is writable but a journal file left by root is not.
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let journal = theirs.join("journal.sqlite3");
    std::fs::write(&journal, b"").unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the journal's file {} is not writable by this process",
            journal.display()
        )),
        "{stderr}"
    );

    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = h.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped unit checks the config before it sends SIGHUP, so `systemctl reload` fails on a
/// bad config (systemd stops at the first ExecReload= that fails), with the same binary and config
/// as the start.
#[test]
fn the_unit_checks_the_config_before_a_reload() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/imgsyncd.service"
    ))
    .unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let start = values("ExecStart");
    assert_eq!(start.len(), 1, "{start:?}");
    let binary_and_config = start[0]
        .strip_suffix(" run")
        .expect("ExecStart= runs `run`");
    assert_eq!(
        values("ExecStartPre"),
        vec![format!("{binary_and_config} check")]
    );
    assert_eq!(
        values("ExecReload"),
        vec![
            format!("{binary_and_config} check"),
            "/bin/kill -HUP $MAINPID".to_string()
        ]
    );
    // Exit 2 is every error, passing ones too: they must still restart.
    assert_eq!(values("Restart"), vec!["on-failure".to_string()]);
    assert!(values("RestartPreventExitStatus").is_empty());
}
