//! The daemon as systemd sees it: the notify protocol heard on a datagram socket of the test's
//! own (READY, STATUS, RELOADING with MONOTONIC_USEC, STOPPING, WATCHDOG), the watchdog going
//! quiet when a loop is wedged, reloads that add and remove watches, and `status` telling
//! whether the daemon runs.

mod common;
#[path = "common/service_manager.rs"]
mod service_manager;

use std::time::{Duration, Instant};

use common::{Harness, png};
use service_manager::Manager;

fn monotonic_usec() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000 + ts.tv_nsec as i128 / 1000
}

#[test]
fn systemd_hears_ready_status_reload_stopping_and_watchdog_pings() {
    let mut h = Harness::new();
    let manager = Manager::listen(h.dir.path());
    h.start_with(
        "text",
        &[
            ("NOTIFY_SOCKET", manager.socket()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    manager.wait_for("READY=1", |m| !m.with("READY").is_empty());
    let log = h.log();
    let reconciled = log.find("reconciled with the journal").expect(&log);
    let running = log.find("imgsyncd running").unwrap();
    assert!(
        reconciled < running,
        "READY comes once the watch is set up:\n{log}"
    );
    let (ready_at, _, ready) = manager.with("READY")[0].clone();
    assert!(
        ready.contains("STATUS=idle, nothing pending; watching 1 folder"),
        "{ready}"
    );
    assert!(
        manager
            .with("STATUS")
            .iter()
            .any(|(at, v, _)| *at <= ready_at && v.starts_with("starting")),
        "a status while starting: {:#?}",
        manager.messages()
    );

    // The watchdog: pinged every half of WATCHDOG_USEC while the loops answer.
    std::thread::sleep(Duration::from_millis(2200));
    let pings = manager.pings_between(ready_at, Instant::now());
    assert!(
        (2..=8).contains(&pings),
        "about one ping each 0.5 s: {pings}"
    );

    // STATUS changes with what the daemon does, and only then.
    std::fs::write(h.path("notes.jpg"), b"not an image at all").unwrap();
    h.wait_state("notes.jpg", "rejected");
    manager.wait_for("a status that counts the rejection", |m| {
        m.with("STATUS")
            .iter()
            .any(|(_, v, _)| v.contains("1 rejected"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    // A loaded test machine may keep a loop from answering one watchdog check in time: that
    // note, and the status that clears it, are changes too.
    let statuses = manager.with("STATUS");
    assert!(
        statuses.iter().enumerate().all(|(i, (at, v, _))| {
            let noted = |v: &str| v.starts_with("NOT RESPONDING");
            *at < quiet_from || noted(v) || (i > 0 && noted(&statuses[i - 1].1))
        }),
        "no status refresh while nothing changes: {statuses:#?}"
    );
    let statuses: Vec<String> = manager
        .with("STATUS")
        .into_iter()
        .filter(|(_, _, m)| !m.contains("READY=1"))
        .map(|(_, v, _)| v)
        .collect();
    assert!(
        statuses.windows(2).all(|w| w[0] != w[1]),
        "a status is sent only when it reads differently: {statuses:#?}"
    );

    // A reload: RELOADING=1 with the monotonic clock, then READY=1 with the new watch set up.
    let second = h.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let good = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("  - path: {}\n    vendor: erp\n", second.display());
    std::fs::write(&h.config_path, &good).unwrap();
    let before = monotonic_usec();
    let reload_from = Instant::now();
    h.reload();
    manager.wait_for("READY=1 after the reload", |m| {
        m.with("READY").iter().any(|(at, _, _)| *at > reload_from)
    });
    let (reloading_at, _, reloading) = manager
        .with("RELOADING")
        .into_iter()
        .find(|(at, _, _)| *at >= reload_from)
        .expect("RELOADING=1");
    let usec: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect(&reloading)
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "MONOTONIC_USEC is CLOCK_MONOTONIC at the reload: {usec} vs {before}"
    );
    let (ready_again, _, _) = manager
        .with("READY")
        .into_iter()
        .find(|(at, _, _)| *at > reload_from)
        .unwrap();
    assert!(ready_again >= reloading_at);
    manager.wait_for("a status with both watches", |m| {
        m.with("STATUS")
            .iter()
            .any(|(at, v, _)| *at > reload_from && v.contains("watching 2 folders"))
    });

    // A bad config is refused, and STATUS says so.
    std::fs::write(&h.config_path, "workers: 0\n").unwrap();
    let refused_from = Instant::now();
    h.reload();
    manager.wait_for("a status saying the reload was refused", |m| {
        m.with("STATUS").iter().any(|(at, v, _)| {
            *at > refused_from
                && v.starts_with("reload refused, running the previous config: ")
                && v.contains("workers: must be between 1 and 64")
        })
    });
    assert!(
        manager
            .with("READY")
            .iter()
            .any(|(at, _, _)| *at > refused_from),
        "READY=1 follows a refused reload too"
    );
    std::fs::write(&h.config_path, &good).unwrap();

    // Stopping.
    let stop_from = Instant::now();
    assert!(h.stop().success());
    let stopping = manager.with("STOPPING");
    assert!(
        stopping
            .iter()
            .any(|(at, v, _)| *at > stop_from && v == "1"),
        "{:#?}",
        manager.messages()
    );
}

#[test]
fn no_watchdog_pings_unless_the_manager_asks_this_process() {
    let mut h = Harness::new();
    let manager = Manager::listen(h.dir.path());
    // Not asked at all.
    h.start_with("text", &[("NOTIFY_SOCKET", manager.socket())]);
    manager.wait_for("READY=1", |m| !m.with("READY").is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.stop().success());
    // Asked, but for another process (WATCHDOG_PID is not ours).
    h.start_with(
        "text",
        &[
            ("NOTIFY_SOCKET", manager.socket()),
            ("WATCHDOG_USEC", "400000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.stop().success());
    assert!(
        manager.with("WATCHDOG").is_empty(),
        "{:#?}",
        manager.messages()
    );
    assert_eq!(manager.with("READY").len(), 2);
}

/// Runs the daemon with the test hook wedging `what` a second after READY, until `watched` after
/// READY; returns the time of READY.
fn wedged(what: &str, watched: Duration) -> (Harness, Manager, Instant) {
    let mut h = Harness::new();
    let manager = Manager::listen(h.dir.path());
    h.start_with(
        "text",
        &[
            ("NOTIFY_SOCKET", manager.socket()),
            ("WATCHDOG_USEC", "600000"),
            ("IMGSYNCD_TEST_WEDGE", what),
        ],
    );
    manager.wait_for("READY=1", |m| !m.with("READY").is_empty());
    let ready_at = manager.with("READY")[0].0;
    std::thread::sleep((ready_at + watched).saturating_duration_since(Instant::now()));
    (h, manager, ready_at)
}

/// The writer wedged inside a call holds the journal past what another process's lock could
/// make it wait (the busy timeout, 10 s, and 2 s more): the pings stop then.
#[test]
fn a_wedged_journal_writer_stops_the_watchdog_pings() {
    let (h, manager, ready) = wedged("journal", Duration::from_millis(16_500));
    assert!(
        manager.pings_between(ready, ready + Duration::from_millis(900)) >= 1,
        "pings while the journal answers: {:#?}",
        manager.messages()
    );
    assert_eq!(
        manager.pings_between(ready + Duration::from_millis(14_000), Instant::now()),
        0,
        "no pings once the journal writer is wedged: {:#?}\n{}",
        manager.messages(),
        h.log()
    );
    let log = h.log();
    assert!(log.contains("test hook IMGSYNCD_TEST_WEDGE"), "{log}");
    assert!(
        log.contains("watchdog: the journal writer has not answered for"),
        "{log}"
    );
}

/// Another process holds the journal's write lock (a backup, `sqlite3` left open on it) for far
/// longer than the watchdog's deadline: each write waits out its busy timeout and fails, and the
/// writer goes on with the next. That is not a wedged writer: the pings go on (systemd would have
/// killed the daemon, with the outcomes its slots hold), and once the lock is let go the file
/// dropped meanwhile is synced.
#[test]
fn a_journal_locked_by_another_process_does_not_stop_the_watchdog_pings() {
    let mut h = Harness::new();
    let manager = Manager::listen(h.dir.path());
    // Pinged every 2 s, each loop given 1 s to answer.
    h.start_with(
        "text",
        &[
            ("NOTIFY_SOCKET", manager.socket()),
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    manager.wait_for("READY=1", |m| !m.with("READY").is_empty());
    let other = rusqlite::Connection::open(h.dir.path().join("journal.sqlite3")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked = Instant::now();
    h.drop_file("meanwhile.png", &png(90));
    std::thread::sleep(Duration::from_secs(24));
    for window in 0..6 {
        let from = locked + Duration::from_secs(4 * window);
        assert!(
            manager.pings_between(from, from + Duration::from_secs(4)) >= 1,
            "no ping {}-{} s into the lock: {:#?}\n{}",
            4 * window,
            4 * window + 4,
            manager.messages(),
            h.log()
        );
    }
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    h.wait_state("meanwhile.png", "synced");
    let log = h.log();
    assert!(!log.contains("has not answered"), "{log}");
    assert!(log.contains("held by another"), "the lock is said: {log}");
}

#[test]
fn a_wedged_worker_pool_stops_the_watchdog_pings() {
    let (h, manager, ready) = wedged("pool", Duration::from_millis(4500));
    assert!(
        manager.pings_between(ready, ready + Duration::from_millis(900)) >= 1,
        "pings while the pool answers: {:#?}",
        manager.messages()
    );
    assert_eq!(
        manager.pings_between(ready + Duration::from_millis(2000), Instant::now()),
        0,
        "no pings once the pool is wedged: {:#?}\n{}",
        manager.messages(),
        h.log()
    );
    let log = h.log();
    assert!(
        log.contains("watchdog: the worker pool has not answered for"),
        "{log}"
    );
    assert!(
        !log.contains("the journal writer has not answered"),
        "only the pool is blamed: {log}"
    );
    assert!(
        manager
            .with("STATUS")
            .iter()
            .any(|(_, v, _)| v.starts_with("NOT RESPONDING: the worker pool")),
        "{:#?}",
        manager.messages()
    );
}

#[test]
fn a_reload_adds_and_removes_watches_and_keeps_jobs() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("first.png", &png(601));
    h.wait_state("first.png", "synced");
    let second = h.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("there.png"), png(602)).unwrap();
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let first_watch = format!("  - path: {}\n    vendor: erp\n", h.drop.display());
    let second_watch = format!("  - path: {}\n    vendor: erp\n", second.display());
    std::fs::write(&h.config_path, original.clone() + &second_watch).unwrap();
    h.reload();
    let there = second.join("there.png").display().to_string();
    h.wait_for("the added watch's file to sync", |h| {
        h.files()
            .iter()
            .any(|f| f["path"] == there.as_str() && f["state"] == "synced")
    });

    // Remove the first watch: its folder is no longer looked at, its files keep their records.
    assert!(original.contains(&first_watch), "{original}");
    std::fs::write(
        &h.config_path,
        original.replace(&first_watch, "") + &second_watch,
    )
    .unwrap();
    h.reload();
    h.wait_for("the removed watch to stop", |h| {
        h.log().contains("watch removed or changed: stopping it")
    });
    h.wait_for("the reload to finish", |h| {
        h.log().matches("config reloaded from").count() >= 2
    });
    h.drop_file("unwatched.png", &png(603));
    std::fs::write(second.join("still.png"), png(604)).unwrap();
    let still = second.join("still.png").display().to_string();
    h.wait_for("the remaining watch to take a new file", |h| {
        h.files()
            .iter()
            .any(|f| f["path"] == still.as_str() && f["state"] == "synced")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h.file("unwatched.png"),
        None,
        "the removed watch takes nothing"
    );
    assert_eq!(
        h.state("first.png").as_deref(),
        Some("synced"),
        "removing a watch deletes nothing"
    );
    assert_eq!(h.deletes_at_sandbox(), 0);
    assert_eq!(h.sandbox.uploads(), 3);
}

/// A vendor renamed in the config (same account, a new name), its watch with it: the files
/// already synced stay synced to their copies, none is sent again under the new name.
#[test]
fn a_vendor_renamed_in_the_config_sends_nothing_again() {
    let mut h = Harness::new();
    h.start();
    for i in 0..2 {
        h.drop_file(&format!("named-{i}.png"), &png(620 + i));
    }
    for i in 0..2 {
        h.wait_state(&format!("named-{i}.png"), "synced");
    }
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let renamed = text
        .replace("  erp:\n", "  erp-main:\n")
        .replace("    vendor: erp\n", "    vendor: erp-main\n");
    assert_ne!(renamed, text);
    std::fs::write(&h.config_path, renamed).unwrap();
    h.reload();
    h.wait_for("the watch to start again and reconcile", |h| {
        h.log().matches("reconciled with the journal").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(h.sandbox.uploads(), 2, "nothing sent again");
    for i in 0..2 {
        assert_eq!(
            h.state(&format!("named-{i}.png")).as_deref(),
            Some("synced")
        );
    }
}

/// Sixteen watches of 4 000 files each (more than the two batches a walk hands over before its
/// watch takes one), reconciled at once at the start: each walk runs on a thread of its own, so
/// none holds a thread a journal call waits for. (On the runtime's blocking pool, eight walks
/// waiting for their watches held all its threads while each watch waited for a journal call:
/// the old code hung here, never started.)
#[test]
fn sixteen_big_watches_reconciled_at_once_all_start() {
    let mut h = Harness::new();
    let mut config = std::fs::read_to_string(&h.config_path).unwrap();
    let mut folders = vec![h.drop.clone()];
    for w in 1..16 {
        let folder = h.dir.path().join(format!("watch{w}"));
        std::fs::create_dir_all(&folder).unwrap();
        config += &format!("  - path: {}\n    vendor: erp\n", folder.display());
        folders.push(folder);
    }
    std::fs::write(&h.config_path, config).unwrap();
    for folder in &folders {
        for i in 0..4_000 {
            std::fs::write(folder.join(format!("n{i:04}.png")), b"not a png").unwrap();
        }
    }
    h.start();
    assert_eq!(
        h.log().matches("reconciled with the journal").count(),
        folders.len()
    );
}

/// A reload that lowers `max_deletes` applies it to the watch already running (it starts again
/// with the new settings): the deletes past it are held.
#[test]
fn a_reload_applies_a_new_max_deletes_to_a_running_watch() {
    let mut h = Harness::new();
    h.start();
    let names: Vec<String> = (0..3).map(|i| format!("m{i}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(610 + i as u32));
    }
    for name in &names {
        h.wait_state(name, "synced");
    }
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    assert!(original.contains("max_deletes: 100\n"), "{original}");
    std::fs::write(
        &h.config_path,
        original.replace("max_deletes: 100\n", "max_deletes: 1\n"),
    )
    .unwrap();
    h.reload();
    h.wait_for("the watch to start again with the new settings", |h| {
        h.log().contains("watch removed or changed: stopping it")
    });
    h.wait_for("the reload to finish", |h| {
        h.log().contains("config reloaded from")
    });
    for name in &names {
        std::fs::remove_file(h.path(name)).unwrap();
    }
    h.wait_for("the deletes past max_deletes: 1 to be held", |h| {
        h.status()["held_deletes"].as_u64() >= Some(2)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.deletes_at_sandbox() <= 1, "{}", h.deletes_at_sandbox());
}

#[test]
fn status_says_whether_the_daemon_runs_and_names_the_oldest_pending_file() {
    let mut h = Harness::new();
    // The vendor holds its answers, so files stay pending while we look.
    h.sandbox
        .inject((0..2).map(|_| imgsyncd::sandbox::Fault::Delay(Duration::from_secs(6))));
    h.start();
    let pid = h.pid().unwrap();
    h.drop_file("slow.png", &png(701));
    h.wait_for("the file to be queued", |h| {
        h.log().contains("taken: queued for upload")
    });
    let status = h.status();
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(status["daemon"]["pid"], pid);
    assert_eq!(
        status["oldest_pending"]["path"],
        h.path("slow.png").display().to_string()
    );
    assert_eq!(status["oldest_pending"]["vendor"], "erp");
    assert_eq!(status["oldest_pending"]["op"], "upload");
    let text = h.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!("daemon: running (pid {pid})\n")),
        "{text}"
    );
    assert!(text.contains("  oldest pending: "), "{text}");
    h.wait_state("slow.png", "synced");
    assert!(h.stop().success());
    let status = h.status();
    assert_eq!(status["daemon"]["running"], false);
    assert_eq!(status["daemon"]["pid"], serde_json::Value::Null);
    assert_eq!(status["oldest_pending"], serde_json::Value::Null);
    let text = h.cli(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("daemon: not running"));
}

/// A watch whose task panics (a bug) is said in the log and started again: the files of its
/// folder are taken, those dropped since too. Before, the watch was gone without a word, and no
/// file dropped there was ever taken until a restart.
#[test]
fn a_watch_that_fails_is_said_and_started_again() {
    let mut h = Harness::new();
    h.start_with("text", &[("IMGSYNCD_TEST_PANIC_ON", "boom.png")]);
    h.drop_file("boom.png", &png(7100));
    h.wait_for("the failure said", |h| {
        h.log().contains("the watch stopped on an internal error")
    });
    let log = h.log();
    assert!(
        log.contains("internal error: panicked at") && log.contains("IMGSYNCD_TEST_PANIC_ON"),
        "{log}"
    );
    h.drop_file("after.png", &png(7101));
    h.wait_state("boom.png", "synced");
    h.wait_state("after.png", "synced");
    assert_eq!(h.remote_bytes("after.png"), Some(png(7101)));
}
