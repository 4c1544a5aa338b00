//! The command line as a newcomer meets it: `run --dev`, the `sandbox` verb, help and errors.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Running, image, png, start};
use imgsyncd::adapters::kingdee;

#[test]
fn run_dev_needs_no_config_and_syncs_a_drop() {
    let cwd = tempfile::tempdir().unwrap();
    let (_daemon, banner) = start(&["run", "--dev"], cwd.path(), 3);
    assert!(banner[0].starts_with("imgsyncd dev mode"), "{banner:?}");
    let drop = cwd.path().join("imgsyncd-dev/drop/kingdee");
    let config = cwd.path().join("imgsyncd-dev/daemon.yaml");
    assert!(drop.is_dir() && config.is_file());
    std::fs::write(drop.join("first.png"), png(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(BIN)
            .args(["-c", config.to_str().unwrap(), "files", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if rows[0]["state"] == "synced" {
                assert!(
                    rows[0]["url"]
                        .as_str()
                        .unwrap()
                        .starts_with("http://127.0.0.1:")
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run --dev did not sync the drop\n{}",
            std::fs::read_to_string(cwd.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_dev_feeds_a_feishu_drop_too() {
    let cwd = tempfile::tempdir().unwrap();
    let (_daemon, banner) = start(&["run", "--dev"], cwd.path(), 4);
    assert!(
        banner
            .iter()
            .any(|l| l.contains("drop/feishu") && l.contains("(feishu)")),
        "{banner:?}"
    );
    let drop = cwd.path().join("imgsyncd-dev/drop/feishu");
    let config = cwd.path().join("imgsyncd-dev/daemon.yaml");
    std::fs::write(
        drop.join("lingo.png"),
        image(::image::ImageFormat::Png, 1, 400, 400),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(BIN)
            .args([
                "-c",
                config.to_str().unwrap(),
                "files",
                "--json",
                "--vendor",
                "wiki",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if rows[0]["state"] == "synced" {
                assert_eq!(rows[0]["kind"], "feishu");
                assert!(rows[0]["file_token"].as_str().unwrap().starts_with("boxbc"));
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run --dev did not sync the feishu drop\n{}",
            std::fs::read_to_string(cwd.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_sandbox_verb_serves_the_vendor_api_on_loopback() {
    let cwd = tempfile::tempdir().unwrap();
    let (_sandbox, printed) = start(&["sandbox", "--listen", "127.0.0.1:0"], cwd.path(), 3);
    let addr = printed[0]
        .strip_prefix("sandbox on http://")
        .expect("the address is printed");
    assert!(
        printed[1].starts_with("kingdee: client_id 205022"),
        "{printed:?}"
    );
    assert!(
        printed[2].starts_with("feishu: app_id cli_") && printed[2].contains("app_secret "),
        "{printed:?}"
    );
    // An unsigned call is refused the way the gateway refuses it.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /jdyconnector/app_management/kingdee_auth_token HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 519"), "{answer}");
    assert!(answer.contains("\"errcode\":4001"), "{answer}");
}

#[test]
fn help_lists_every_verb_of_the_contract() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for verb in [
        "run", "scan", "status", "files", "history", "retry", "check", "sandbox",
    ] {
        assert!(help.contains(verb), "{verb} missing from\n{help}");
    }
}

#[test]
fn a_missing_config_is_named() {
    let out = Command::new(BIN)
        .args(["-c", "/nonexistent/daemon.yaml", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read config /nonexistent/daemon.yaml"),
        "{stderr}"
    );
}

/// `check` on a config that loads but would not do what its author meant: a watch on a file,
/// a vendor no watch uses. It warns, and still exits 0: the config is valid.
#[test]
fn check_warns_of_a_watch_on_a_file_and_a_vendor_no_watch_uses() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("drop");
    std::fs::write(&not_a_folder, "").unwrap();
    let config = dir.path().join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "journal: {}/journal.sqlite3
vendors:
  erp:
    kind: kingdee
    client_id: \"1\"
    client_secret: a
    app_key: b
    app_secret: c
    domain: https://tf.jdy.com
  spare:
    kind: feishu
    app_id: cli_x
    app_secret: d
    per_minute: 2000
watches:
  - path: {}
    vendor: erp
    poll: 10ms
",
            dir.path().display(),
            not_a_folder.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "warning: watch {} is not a folder",
            not_a_folder.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: vendor spare is used by no watch"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: vendors.spare.per_minute: 2000 is above the 1000"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "warning: watch {}: poll 10ms is raised to 100ms",
            not_a_folder.display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_bad_state_filter_is_refused_with_the_choices() {
    let out = Command::new(BIN)
        .args(["files", "--state", "done"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pending, synced, rejected, failed, removed"),
        "{stderr}"
    );
}

/// `files --vendor` with a name no vendor has (a typo) is an error naming the vendors there are:
/// an empty list would tell a script "nothing failed". A vendor with no files lists nothing.
#[test]
fn files_of_a_vendor_that_does_not_exist_is_refused_with_the_names() {
    let mut h = common::Harness::new();
    h.start();
    h.stop();
    let out = h.cli(&["files", "--vendor", "epr", "--state", "failed", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no vendor named \"epr\"") && stderr.contains("(its vendors: erp)"),
        "{stderr}"
    );
    let out = h.cli(&["files", "--vendor", "erp", "--state", "failed", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// `history` of a file refused before any attempt (not an image) says what it is now and why,
/// rather than only "no attempts yet", which reads as a file still waiting its turn.
#[test]
fn history_of_a_file_refused_before_sending_says_why() {
    let mut h = common::Harness::new();
    h.start();
    h.drop_file("notes.png", b"these are not the pixels you are looking for");
    h.wait_state("notes.png", "rejected");
    let out = h.cli(&["history", h.path("notes.png").to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines().skip(1);
    let now = lines.next().unwrap_or_default();
    assert!(now.starts_with("  now rejected: "), "{stdout}");
    assert!(now.contains("not an image"), "{stdout}");
    assert_eq!(lines.next(), Some("  no attempts yet"), "{stdout}");
}

/// `retry` tells whoever holds the journal with SIGUSR1, and a timer's `scan` holds it while it
/// uploads: the poke must not end the scan (SIGUSR1's default action), cutting its uploads short
/// and failing its unit. The scan finishes its pass and exits as it would have.
#[test]
fn a_scan_busy_uploading_survives_a_retry() {
    let h = common::Harness::new();
    h.drop_file("busy.png", &png(71));
    h.sandbox.hold(kingdee::UPLOAD_PATH, Duration::from_secs(4));
    let log = h.dir.path().join("scan.log");
    let scan = h
        .cli_command()
        .arg("scan")
        .env("IMGSYNCD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut scan = Running(scan);
    h.wait_for("the scan's upload to be held", |h| {
        h.sandbox.holding(kingdee::UPLOAD_PATH) == 1
    });
    let out = h.cli(&["retry", "--failed"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.sandbox.release(kingdee::UPLOAD_PATH);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = scan.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the scan did not end\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), None, "the scan was killed\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        said.contains(&format!(
            "told the running `imgsyncd scan` (pid {})",
            scan.0.id()
        )),
        "{said}"
    );
    assert!(log.contains("looking at the queue again"), "{log}");
    let mut report = String::new();
    use std::io::Read;
    scan.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(report.contains("synced 1"), "{report}\n{log}");
    assert_eq!(h.state("busy.png").as_deref(), Some("synced"));
}

/// Under systemd a config's ids may come from an `EnvironmentFile=` only root reads. The
/// daemon has the variable; an operator's `status` does not, and needs only the journal.
#[test]
fn status_needs_no_variable_of_the_daemons_environment() {
    const VAR: &str = "IMGSYNCD_CLI_TEST_STATUS_CLIENT_ID";
    let mut h = common::Harness::new();
    let client_id = h.sandbox.options().kingdee.client_id;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let written = format!("client_id: \"{client_id}\"");
    assert!(text.contains(&written), "{text}");
    std::fs::write(
        &h.config_path,
        text.replace(&written, &format!("client_id: \"${{{VAR}}}\"")),
    )
    .unwrap();
    h.drop_file("by-env.png", &png(91));
    h.start_with("text", &[(VAR, client_id.as_str())]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = h
            .cli_command()
            .args(["status", "--json"])
            .env_remove(VAR)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let files = status["files"].as_object().expect("`files` is an object");
        // The daemon uploaded with the id it read from its environment.
        if files.get("synced").and_then(|n| n.as_u64()) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drop was not synced: {status}\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
