//! The journal's disk fills up while the daemon runs and files keep coming (the journal, and only
//! the journal, on a small tmpfs; the drop folder on the normal disk): the daemon stops taking
//! work, says so in one clear line, loses no file, sends none twice and leaves the journal whole;
//! when space returns it carries on and every file syncs once. And one journal, one daemon: a
//! second daemon on the same journal refuses to start and says why.

mod common;
#[path = "common/mounts.rs"]
mod mounts;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Harness, png};
use imgsyncd::sandbox::Fault;
use mounts::Mount;

/// Writes `path` until the filesystem has no room left; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    let mut size = chunk.len();
    // Down to single bytes, so not even a page is left.
    while size > 0 {
        match file.write(&chunk[..size]) {
            Ok(0) => size /= 2,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => size /= 2,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.flush();
    written
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split(' ').nth(2).is_none_or(|state| state != "Z"))
}

#[test]
fn a_full_journal_disk_stops_the_work_loses_nothing_and_resumes_when_space_returns() {
    if !common::running_as_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    // Declared first, dropped last: the daemon is gone before the tmpfs is unmounted.
    let mount_dir = tempfile::tempdir().unwrap();
    let journal_dir = mount_dir.path().join("journal");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let _tmpfs = match Mount::tmpfs_of("8m", &journal_dir) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here: {why}");
            return;
        }
    };
    let mut h = Harness::new();
    let journal = journal_dir.join("journal.sqlite3");
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let config = config.replacen(
        &format!(
            "journal: {}",
            h.dir.path().join("journal.sqlite3").display()
        ),
        &format!("journal: {}", journal.display()),
        1,
    );
    assert!(config.contains(&journal.display().to_string()));
    std::fs::write(&h.config_path, config).unwrap();

    h.start();
    let pid = h.pid().unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..4 {
        let name = format!("before-{i}.png");
        let bytes = png(100 + i);
        h.drop_file(&name, &bytes);
        expected.push((name, bytes));
    }
    for (name, _) in &expected {
        h.wait_state(name, "synced");
    }

    // Four uploads are in flight (the vendor holds each answer 2 s) when the disk fills up: their
    // outcomes cannot be recorded. Files keep coming.
    h.sandbox
        .inject((0..4).map(|_| Fault::Delay(Duration::from_secs(2))));
    for i in 0..4 {
        let name = format!("inflight-{i}.png");
        let bytes = png(150 + i);
        h.drop_file(&name, &bytes);
        expected.push((name, bytes));
    }
    h.wait_for("four uploads in flight", |h| {
        h.sandbox.pending_faults() == 0
    });
    // A WAL checkpointed to its end is written again from its start, into space it already
    // has: on a disk that fills up, the daemon goes on until that slack is used (and says so
    // then). Taken away, as right after a start, the next write needs new space.
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the WAL was truncated");
    drop(conn);
    let filler = journal_dir.join("filler");
    let log_before = h.log().len();
    let took = fill(&filler);
    eprintln!("filled the journal's tmpfs with {took} bytes");
    for i in 0..8 {
        let name = format!("during-{i}.png");
        let bytes = png(200 + i);
        h.drop_file(&name, &bytes);
        expected.push((name, bytes));
    }
    const FULL: &str = "the disk holding the journal is full";
    h.wait_for("the daemon to say the journal's disk is full", |h| {
        h.log().contains(FULL)
    });
    // Long enough for every dropped file to settle and be tried, and for the daemon to have
    // said it more than once had it no limit.
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(pid), "the daemon keeps running\n{}", h.log());
    let log = h.log();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(FULL)).collect();
    assert!(
        !said.is_empty() && said.len() <= 2,
        "said once (a minute), not per file or retry: {said:#?}"
    );
    assert!(
        said[0].contains("free some space") && said[0].contains("nothing is lost"),
        "it says what to do: {}",
        said[0]
    );
    // Nothing taken while the journal cannot record it: nothing sent that it could forget.
    assert_eq!(
        h.sandbox.uploads(),
        8,
        "the four in flight answered; no work taken while the disk is full"
    );
    for i in 0..4 {
        let name = format!("inflight-{i}.png");
        assert_ne!(
            h.state(&name).as_deref(),
            Some("synced"),
            "{name}: not recorded yet"
        );
    }
    eprintln!("the line: {}", said[0]);
    let loud: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(
        loud.len() <= 2,
        "the trouble is said once, nothing else shouts: {loud:#?}"
    );
    // `status` says so too (the daemon cannot write it into a full journal: status measures it).
    let status = h.status();
    let full = status["journal_disk_full"].as_str().unwrap_or("");
    assert!(
        full.contains("the disk holding the journal") && full.contains("is full"),
        "{status}"
    );
    let text = h.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("JOURNAL DISK FULL: "), "{text}");

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    for (name, _) in &expected {
        h.wait_state(name, "synced");
    }
    eprintln!(
        "every file synced {:.1}s after the space came back",
        freed.elapsed().as_secs_f64()
    );
    assert_eq!(
        h.sandbox.uploads(),
        expected.len(),
        "each file uploaded once"
    );
    for (name, bytes) in &expected {
        assert_eq!(h.remote_bytes(name).as_ref(), Some(bytes), "{name}");
    }
    let status = h.status();
    assert!(status["journal_disk_full"].is_null(), "{status}");
    assert_eq!(status["files"]["synced"], expected.len() as u64, "{status}");
    for state in ["pending", "failed", "rejected"] {
        assert_eq!(status["files"][state], 0, "{state}: {status}");
    }
    let ok = h.stop();
    assert!(ok.success(), "a clean stop after the trouble: {ok:?}");

    // No half-written state: SQLite finds the journal whole, and it opens as a journal again.
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let dangling: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0, "no row points at a row that is not there");
    drop(conn);
    let files = h.files();
    assert_eq!(files.len(), expected.len(), "{files:#?}");
}

#[test]
fn a_second_daemon_on_the_same_journal_refuses_to_start() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("one.png", &png(301));
    h.wait_state("one.png", "synced");

    for verb in [&["run"][..], &["scan"][..]] {
        let mut second = Command::new(BIN)
            .arg("-c")
            .arg(&h.config_path)
            .args(verb)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while second.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = second.kill();
                panic!("a second `{}` kept running on a held journal", verb[0]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = second.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", verb[0]);
        let expected = format!(
            "another imgsyncd is already running on the journal {}",
            h.dir.path().join("journal.sqlite3").display()
        );
        assert!(stderr.contains(&expected), "{}: {stderr}", verb[0]);
        assert!(stderr.contains("stop it first"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    }
    // The first daemon was not disturbed, and still serves.
    h.drop_file("two.png", &png(302));
    h.wait_state("two.png", "synced");
    assert_eq!(h.sandbox.uploads(), 2);
    assert!(!h.log().contains("another imgsyncd"));
}
