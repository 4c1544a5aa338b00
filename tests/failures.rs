//! End to end: bad files, a refusing vendor, transient trouble and vanishing folders. Each gets a
//! precise log line and a journal state, and the daemon keeps serving every other file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

use common::{Harness, Options, jpeg, png};
use imgsyncd::sandbox::{Fault, KingdeeAccount, SandboxOptions};

fn error_of(h: &Harness, name: &str) -> String {
    h.file(name).unwrap()["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn bad_inputs_are_rejected_with_a_reason_while_the_rest_sync() {
    let mut h = Harness::new();
    h.start();
    let outside = h.dir.path().join("secret.jpg");
    std::fs::write(&outside, jpeg(1)).unwrap();
    std::fs::write(
        h.path("notes.jpg"),
        b"these are meeting notes, not a photo\n",
    )
    .unwrap();
    std::fs::write(h.path("empty.png"), b"").unwrap();
    let whole = jpeg(2);
    std::fs::write(h.path("cut.jpg"), &whole[..whole.len() / 2]).unwrap();
    symlink(&outside, h.path("link.jpg")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(h.path("pipe.jpg"))
        .status()
        .unwrap();
    assert!(fifo.success());
    h.drop_file("good.png", &png(3));

    h.wait_state("good.png", "synced");
    let expected = [
        ("notes.jpg", "not an image"),
        ("empty.png", "the file is empty"),
        ("cut.jpg", "truncated jpeg"),
        ("link.jpg", "symlink leads outside the watch"),
        ("pipe.jpg", "FIFO"),
    ];
    for (name, reason) in expected {
        h.wait_state(name, "rejected");
        let error = error_of(&h, name);
        assert!(error.contains(reason), "{name}: {error}");
        let logged = h
            .log()
            .lines()
            .any(|l| l.contains("rejected") && l.contains(name) && l.contains(reason));
        assert!(logged, "{name}: one log line says why\n{}", h.log());
    }
    assert_eq!(
        h.sandbox.uploads(),
        1,
        "only the good file reached the vendor"
    );
    // A rejected file that is fixed in place is taken.
    std::fs::write(h.path("notes.jpg"), jpeg(4)).unwrap();
    h.wait_state("notes.jpg", "synced");
}

#[test]
fn a_file_too_large_for_the_vendor_is_rejected_before_sending() {
    let mut h = Harness::new();
    h.start();
    let mut big = jpeg(5);
    big.resize(11 * 1024 * 1024, 0);
    std::fs::write(h.path("huge.jpg"), &big).unwrap();
    h.wait_state("huge.jpg", "rejected");
    assert!(error_of(&h, "huge.jpg").contains("too large for erp"));
    assert_eq!(h.sandbox.uploads(), 0);
}

#[test]
fn transient_vendor_errors_are_retried_until_synced() {
    let mut h = Harness::new();
    h.sandbox.inject([
        Fault::Gateway(5007),
        Fault::Http(503),
        Fault::Business(2_000_002_000),
    ]);
    h.start();
    h.drop_file("flaky.png", &png(11));
    let row = h.wait_state("flaky.png", "synced");
    assert_eq!(row["attempts"], 4);
    let out = h.cli(&["history", h.path("flaky.png").to_str().unwrap(), "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(String, Option<u64>)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_string(),
                a["http_status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("retry".to_string(), Some(519)),
            ("retry".to_string(), Some(503)),
            ("retry".to_string(), Some(200)),
            ("uploaded".to_string(), Some(200)),
        ]
    );
    assert!(h.log().contains("retrying in"));
}

#[test]
fn a_refused_token_is_fetched_anew_and_the_upload_retried() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("first.png", &png(21));
    h.wait_state("first.png", "synced");
    h.sandbox.revoke_tokens();
    h.drop_file("second.png", &png(22));
    h.wait_state("second.png", "synced");
    let log = h.sandbox.log();
    let token_calls = log
        .iter()
        .filter(|l| l.path.ends_with("kingdee_auth_token"))
        .count();
    assert_eq!(token_calls, 2, "one fetch at start, one after the refusal");
    assert!(
        log.iter()
            .any(|l| l.status == 519 && l.errcode == Some(4010))
    );
}

#[test]
fn bad_credentials_pause_the_vendor_keep_the_jobs_and_a_reload_resumes() {
    let good = KingdeeAccount::default();
    let wrong = KingdeeAccount {
        client_secret: "definitely-wrong-client-secret".into(),
        ..good.clone()
    };
    let mut h = Harness::with(Options {
        account: Some(wrong),
        ..Options::default()
    });
    h.start();
    h.drop_file("waiting.png", &png(31));
    h.wait_for("the vendor to be paused", |h| {
        h.status()["paused_vendors"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    let status = h.status();
    let paused = &status["paused_vendors"][0];
    assert_eq!(paused["vendor"], "erp");
    assert!(
        paused["reason"].as_str().unwrap().contains("errcode 4002"),
        "{paused}"
    );
    assert_eq!(
        h.state("waiting.png").as_deref(),
        Some("pending"),
        "the job is kept"
    );
    assert!(h.log().contains("vendor erp paused"));
    assert!(
        !h.log().contains("definitely-wrong-client-secret"),
        "no secret in the log"
    );
    assert_eq!(h.sandbox.uploads(), 0);

    h.write_config(&good);
    h.reload();
    h.wait_state("waiting.png", "synced");
    assert!(h.status()["paused_vendors"].as_array().unwrap().is_empty());
    assert!(h.log().contains("answers again: resumed"));
}

#[test]
fn a_wrong_app_secret_is_reported_by_check_online() {
    let h = Harness::with(Options {
        account: Some(KingdeeAccount {
            app_secret: "not-the-app-secret".into(),
            ..KingdeeAccount::default()
        }),
        ..Options::default()
    });
    let out = h.cli(&["check", "--online"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("erp: FAILED"), "{stdout}");
    assert!(stdout.contains("check app_key and app_secret"), "{stdout}");
    assert!(!stdout.contains("not-the-app-secret"));

    let good = Harness::new();
    let out = good.cli(&["check", "--online"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// systemd's `LoadCredential=`: the secret is read from `${CREDENTIALS_DIRECTORY}/…`, which
/// systemd sets for the daemon alone. (A test of its own process: setting a variable inside a
/// multi-threaded test binary is not safe.)
#[test]
fn a_secret_file_under_credentials_directory_is_read_when_systemd_sets_it() {
    let h = Harness::new();
    let credentials = h.dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let secret = KingdeeAccount::default().app_secret;
    std::fs::write(
        credentials.join("kingdee_app_secret"),
        format!("{secret}\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        &format!("    app_secret: {secret}\n"),
        "    app_secret_file: ${CREDENTIALS_DIRECTORY}/kingdee_app_secret\n",
    );
    assert!(text.contains("app_secret_file"), "{text}");
    std::fs::write(&h.config_path, text).unwrap();

    // The imgsyncd CLI with `args`, in a shell with or without CREDENTIALS_DIRECTORY.
    let cli = |with_credentials: bool, args: &[&str]| {
        let mut command = h.cli_command();
        match with_credentials {
            true => command.env("CREDENTIALS_DIRECTORY", &credentials),
            false => command.env_remove("CREDENTIALS_DIRECTORY"),
        };
        command.args(args).output().unwrap()
    };
    let succeeded = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    succeeded(&cli(true, &["check", "--online"]));

    let out = cli(false, &["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("vendors.erp.app_secret_file: environment variable CREDENTIALS_DIRECTORY is not set (systemd sets it"),
        "{stderr}"
    );

    // An operator's shell has no CREDENTIALS_DIRECTORY: `retry` needs only the journal.
    succeeded(&cli(true, &["scan"]));
    succeeded(&cli(false, &["retry", "--failed"]));
}

#[test]
fn a_config_error_names_file_line_and_key() {
    let h = Harness::new();
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("    domain:", "    domian: typo\n    domain:");
    std::fs::write(&h.config_path, text).unwrap();
    let out = h.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let expected = format!(
        "{}:14: vendors.erp: unknown field `domian`",
        h.config_path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

/// A running daemon with `max_deletes: 2` whose four files `{prefix}1.png` … `{prefix}4.png`
/// (images `seed` on) were synced and then removed, so their deletes are held. Also the files'
/// names and the URLs they were synced to.
fn four_deletes_held(prefix: &str, seed: u32) -> (Harness, Vec<String>, Vec<String>) {
    let mut h = Harness::with(Options {
        max_deletes: 2,
        ..Options::default()
    });
    h.start();
    let names: Vec<String> = (1..=4).map(|i| format!("{prefix}{i}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(seed + i as u32));
    }
    let urls = names
        .iter()
        .map(|name| {
            h.wait_state(name, "synced")["url"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for name in &names {
        std::fs::remove_file(h.path(name)).unwrap();
    }
    h.wait_for("the deletes to be held", |h| {
        h.status()["held_deletes"] == 4
    });
    (h, names, urls)
}

#[test]
fn a_mass_removal_is_held_until_an_operator_confirms() {
    let (h, names, _) = four_deletes_held("m", 40);
    assert!(error_of(&h, "m1.png").contains("imgsyncd retry --held"));
    assert_eq!(h.deletes_at_sandbox(), 0);
    assert!(h.log().contains("their deletes are held"));
    let out = h.cli(&["retry", "--held"]);
    assert!(out.status.success());
    for name in &names {
        let row = h.wait_state(name, "removed");
        assert_eq!(row["remote_deleted"], true);
    }
    assert_eq!(h.deletes_at_sandbox(), 4);
}

#[test]
fn held_deletes_are_kept_once_the_watch_is_changed_to_keep() {
    let (h, names, urls) = four_deletes_held("k", 80);
    // The operator decides these copies stay, and says so in the config first.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let keep = text.replacen(
        "    vendor: erp\n",
        "    vendor: erp\n    on_remove: keep\n",
        1,
    );
    assert_ne!(keep, text);
    std::fs::write(&h.config_path, keep).unwrap();
    h.reload();
    h.wait_for("the new policy to be applied", |h| {
        h.log()
            .contains("on_remove changed: 4 files' remote copies are kept")
    });
    let out = h.cli(&["retry", "--held"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in &names {
        h.wait_state(name, "removed");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.deletes_at_sandbox(), 0);
    for url in urls {
        assert!(
            h.sandbox.images().contains_key(&url),
            "{url} kept at the vendor"
        );
    }
}

/// Deletes held, then the watch taken out of the config (the operator retires the folder):
/// `retry --held` closes those records and keeps their copies, since a folder no longer watched
/// deletes nothing, and `status` counts none held. (Before, they stayed held for good, and
/// `retry --held` said to bring the watch root back, which was never missing.)
#[test]
fn held_deletes_of_a_watch_taken_out_of_the_config_are_withdrawn() {
    let (h, names, urls) = four_deletes_held("r", 120);
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let retired = format!("  - path: {}\n    vendor: erp\n", h.drop.display());
    assert!(text.contains(&retired), "{text}");
    let other = h.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let kept = format!("  - path: {}\n    vendor: erp\n", other.display());
    std::fs::write(&h.config_path, text.replace(&retired, &kept)).unwrap();
    h.reload();
    h.wait_for("the retired watch to stop", |h| {
        h.log().contains("watch removed or changed: stopping it")
    });
    let out = h.cli(&["retry", "--held"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("4 held deletes withdrawn: no watch in the config covers those files"),
        "{stdout}"
    );
    assert!(!stdout.contains("bring it back"), "{stdout}");
    for name in &names {
        h.wait_state(name, "removed");
    }
    assert_eq!(h.status()["held_deletes"], 0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.deletes_at_sandbox(), 0);
    for url in urls {
        assert!(h.sandbox.images().contains_key(&url), "{url} kept");
    }
}

#[test]
fn held_deletes_of_a_missing_root_stay_held_until_it_is_back() {
    let (h, names, _) = four_deletes_held("h", 60);
    // The share drops before the operator looks: its files' absence proves nothing now.
    let away = h.dir.path().join("unmounted");
    std::fs::rename(&h.drop, &away).unwrap();
    h.wait_for("the watch to pause", |h| {
        h.log().contains("watch root unavailable")
    });
    let out = h.cli(&["retry", "--held"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some deletes were not confirmed: {stdout}"
    );
    assert!(
        stdout.contains("0 held deletes queued") && stdout.contains("4 held deletes kept"),
        "{stdout}"
    );
    assert!(stdout.contains("is missing"), "{stdout}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.deletes_at_sandbox(), 0);
    assert_eq!(h.status()["held_deletes"], 4);
    // Back, still without the four files: the operator's confirmation now deletes them.
    std::fs::rename(&away, &h.drop).unwrap();
    h.wait_for("the watch to resume", |h| {
        h.status()["paused_watches"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    let out = h.cli(&["retry", "--held"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 held deletes queued"));
    for name in &names {
        let row = h.wait_state(name, "removed");
        assert_eq!(row["remote_deleted"], true);
    }
    assert_eq!(h.deletes_at_sandbox(), 4);
}

#[test]
fn a_vanished_watch_root_pauses_the_watch_and_deletes_nothing() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("a.png", &png(51));
    h.drop_file("b.png", &png(52));
    h.wait_state("a.png", "synced");
    h.wait_state("b.png", "synced");
    let away = h.dir.path().join("unmounted");
    std::fs::rename(&h.drop, &away).unwrap();
    h.wait_for("the watch to pause", |h| {
        h.log().contains("watch root unavailable")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(h.state("a.png").as_deref(), Some("synced"));
    assert_eq!(h.deletes_at_sandbox(), 0);
    std::fs::rename(&away, &h.drop).unwrap();
    h.wait_for("the watch to resume", |h| {
        h.log().contains("watch root is back")
    });
    h.drop_file("c.png", &png(53));
    h.wait_state("c.png", "synced");
    assert_eq!(h.state("a.png").as_deref(), Some("synced"));
    assert_eq!(h.deletes_at_sandbox(), 0);
}

#[test]
fn a_rate_limited_vendor_is_waited_for() {
    let mut h = Harness::with(Options {
        sandbox: SandboxOptions {
            kingdee_per_minute: 3,
            ..SandboxOptions::default()
        },
        ..Options::default()
    });
    h.start();
    for i in 0..8 {
        h.drop_file(&format!("r{i}.png"), &png(60 + i));
    }
    h.wait_for("three uploads and the rest waiting on a 429", |h| {
        h.sandbox.uploads() == 3
            && h.files().iter().any(|f| {
                f["state"] == "pending"
                    && f["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("rate limited"))
            })
    });
    let pending: Vec<_> = h
        .files()
        .into_iter()
        .filter(|f| f["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 5, "the rest wait in the queue");
    assert!(pending.iter().any(|f| {
        f["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limited"))
    }));
    // Kingdee's 429 names no wait: the daemon waits 1 s, 2 s, 4 s… for all its jobs together,
    // rather than sending each waiting file again every second for the rest of the minute.
    std::thread::sleep(Duration::from_secs(6));
    // The workers waiting when a wait ends all go at once: a burst is one moment.
    let mut bursts: Vec<i64> = Vec::new();
    for at in h
        .sandbox
        .log()
        .iter()
        .filter(|l| l.status == 429)
        .map(|l| l.at_ms)
    {
        if bursts.last().is_none_or(|last| at - last > 100) {
            bursts.push(at);
        }
    }
    assert!(
        (2..=4).contains(&bursts.len()),
        "at 0, 1, 3 (and 7) s: {bursts:?}\n{}",
        h.log()
    );
    for pair in bursts.windows(2) {
        assert!(pair[1] - pair[0] >= 900, "{bursts:?}");
    }
    assert!(h.log().contains("waiting 2s"), "{}", h.log());
}

/// A harness whose daemon and CLI run as `nobody`, to whom a file or folder can be shut (root
/// reads anything); `None`, said on stderr, where the tests do not run as root.
fn as_nobody(options: Options) -> Option<Harness> {
    if !common::running_as_root() {
        eprintln!("skipped: running the daemon as another user needs root");
        return None;
    }
    Some(Harness::with(Options {
        as_nobody: true,
        ..options
    }))
}

#[test]
fn an_unreadable_file_is_rejected_and_taken_after_a_fix_and_retry() {
    let Some(mut h) = as_nobody(Options::default()) else {
        return;
    };
    h.start();
    let locked = h.path("locked.png");
    std::fs::write(&locked, png(71)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    h.drop_file("open.png", &png(72));
    h.wait_state("open.png", "synced");
    h.wait_state("locked.png", "rejected");
    let error = error_of(&h, "locked.png");
    assert!(error.contains("permission denied"), "{error}");
    assert!(
        error.contains("imgsyncd retry"),
        "the reason says how to recover: {error}"
    );

    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h.cli(&["retry", locked.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("examined afresh"));
    h.reload();
    h.wait_state("locked.png", "synced");
    assert_eq!(h.remote_bytes("locked.png").unwrap(), png(71));
}

/// A folder the daemon may list but not enter (`chmod -R 644`, the classic slip): its files
/// cannot even be stat'ed. Each is `rejected` saying so, in the journal and in the log, whether
/// found by the walk at the start or by an event; before, they were dropped without a word, and
/// `status` knew nothing of them. Fixed, they are taken.
#[test]
fn files_in_a_folder_that_cannot_be_entered_are_rejected_saying_why() {
    let Some(mut h) = as_nobody(Options::default()) else {
        return;
    };
    let shut = h.path("shut");
    std::fs::create_dir_all(&shut).unwrap();
    std::fs::write(shut.join("before.png"), png(73)).unwrap();
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.start();
    h.drop_file("open.png", &png(74));
    h.wait_state("open.png", "synced");
    h.wait_state("shut/before.png", "rejected");
    // One seen by its event: the folder opened for the write, and shut again at once.
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(shut.join("after.png"), png(75)).unwrap();
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.wait_state("shut/after.png", "rejected");
    for name in ["shut/before.png", "shut/after.png"] {
        let error = error_of(&h, name).to_lowercase();
        assert!(error.contains("permission denied"), "{name}: {error}");
    }
    assert!(
        h.log().contains("shut/before.png"),
        "a log line names the file: {}",
        h.log()
    );

    // Opened again: the folder's change of mode may bring the daemon to look at it by itself;
    // `retry` does, if it has not yet.
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = h.cli(&["retry", shut.join("before.png").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    h.reload();
    h.wait_state("shut/before.png", "synced");
    assert_eq!(h.remote_bytes("shut/before.png").unwrap(), png(73));
}

/// A folder of synced files shut (`chmod 644`), then opened again, where copies are not shared
/// (Jiandaoyun with a record per file): each file, `rejected` while it could not be read, is
/// synced to the copy and record it had, nothing sent again (before, its hash was forgotten with
/// the rejection: it was uploaded again and the form got a second record).
#[test]
fn files_of_a_folder_shut_and_opened_again_are_not_sent_twice() {
    let Some(mut h) = as_nobody(Options {
        jiandaoyun: Some(common::JiandaoyunVendor {
            create_record: true,
            ..Default::default()
        }),
        ..Options::default()
    }) else {
        return;
    };
    h.start();
    h.drop_file("shut/a.png", &png(76));
    let key = h.wait_state("shut/a.png", "synced")["key"].clone();
    let shut = h.path("shut");
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.reload();
    h.wait_state("shut/a.png", "rejected");
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.reload();
    let row = h.wait_state("shut/a.png", "synced");
    assert_eq!(row["key"], key, "{row}");
    assert_eq!(h.sandbox.jiandaoyun_records().len(), 1, "one record");
    assert_eq!(h.sandbox.jiandaoyun_uploads().len(), 1, "one upload");
}

/// A vendor that stops answering is taken as down after a few calls: its backlog waits behind one
/// probe instead of each file being tried in turn, and all of it syncs once the vendor is back,
/// nothing marked failed.
#[test]
fn a_vendor_that_stops_answering_is_held_behind_one_probe() {
    let mut h = Harness::new();
    h.sandbox.inject((0..5).map(|_| Fault::Http(503)));
    let names: Vec<String> = (0..20).map(|i| format!("down-{i:02}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(700 + i as u32));
    }
    h.start();
    h.wait_for("the vendor to be paused as down", |h| {
        h.status()["paused_vendors"].as_array().is_some_and(|p| {
            p.iter().any(|v| {
                v["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("does not answer")
            })
        })
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let tried = h
        .sandbox
        .log()
        .iter()
        .filter(|l| l.path.ends_with("image_upload"))
        .count();
    // The five failures, and at most one more call per worker already in flight.
    assert!(
        tried <= 5 + 4,
        "{tried} uploads tried against a vendor that was down"
    );
    let pending = h.status()["files"]["pending"].as_u64().unwrap();
    assert!(pending >= names.len() as u64 - 4, "{pending} pending");
    // Back up; a reload probes at once instead of waiting for the next probe.
    h.reload();
    for name in &names {
        h.wait_state(name, "synced");
    }
    let status = h.status();
    assert_eq!(status["files"]["failed"], 0, "{status}");
    assert!(status["paused_vendors"].as_array().unwrap().is_empty());
    assert!(h.log().contains("answers again: resumed"));
}
