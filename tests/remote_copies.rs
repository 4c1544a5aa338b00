//! Remote copies are what the user's ERP points at: each case here once deleted a good copy or left
//! a record pointing at a dead one. Each is tried as a user would, with the real binary against the
//! sandbox, and judged by what the sandbox holds and deleted and what `files`/`status` say.

mod common;
#[path = "common/mounts.rs"]
mod mounts;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Harness, Options, exists, png, running_as_root};
use imgsyncd::sandbox::Fault;
use mounts::{Mount, tmpfs_or_skip};
use serde_json::Value;

fn url_of(h: &Harness, name: &str) -> String {
    h.file(name).unwrap()["url"].as_str().unwrap().to_string()
}

fn held_by_vendor(h: &Harness, url: &str) -> bool {
    h.sandbox.images().contains_key(url)
}

fn sync_all(h: &Harness, names: &[String], seed: u32) -> Vec<String> {
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(seed + i as u32));
    }
    wait_synced(h, names)
}

/// Like `sync_all`, written in place: a rename cannot cross into a mounted folder.
fn sync_all_in_place(h: &Harness, names: &[String], seed: u32) -> Vec<String> {
    for (i, name) in names.iter().enumerate() {
        std::fs::write(h.path(name), png(seed + i as u32)).unwrap();
    }
    wait_synced(h, names)
}

fn wait_synced(h: &Harness, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            h.wait_state(name, "synced");
            url_of(h, name)
        })
        .collect()
}

/// Waits until the record of `name` carries a note (where a rename the watch does not take put
/// the file).
fn wait_noted(h: &Harness, name: &str) {
    h.wait_for("the rename to be noted", |h| {
        h.file(name).is_some_and(|row| row["error"].is_string())
    });
}

/// A harness whose drop folder and a second folder (returned) are both watches of `erp`, the
/// second with the lines `extra` under it.
fn with_archive(extra: &str) -> (tempfile::TempDir, Harness) {
    let archive = tempfile::tempdir().unwrap();
    let watch = format!(
        "  - path: {}\n    vendor: erp\n{extra}",
        archive.path().display()
    );
    let h = Harness::with(Options {
        watch_extra: Box::leak(watch.into_boxed_str()),
        ..Options::default()
    });
    (archive, h)
}

/// The record of the file at `path`, anywhere (`Harness::file` looks in the drop folder).
fn row_at(h: &Harness, path: &Path) -> Option<Value> {
    let path = path.display().to_string();
    h.files().into_iter().find(|f| f["path"] == path.as_str())
}

/// Waits until the file at `path` (anywhere) is synced; its record.
fn wait_synced_at(h: &Harness, path: &Path) -> Value {
    h.wait_for("the moved file to be synced where it went", |h| {
        row_at(h, path).is_some_and(|row| row["state"] == "synced")
    });
    row_at(h, path).unwrap()
}

/// How many delete jobs the journal holds in `state`.
fn deletes_in(h: &Harness, state: &str) -> i64 {
    let conn = rusqlite::Connection::open(h.dir.path().join("journal.sqlite3")).unwrap();
    conn.query_row(
        "SELECT count(*) FROM jobs WHERE op = 'delete' AND state = ?1",
        [state],
        |r| r.get(0),
    )
    .unwrap()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}.png")).collect()
}

fn settle_time() {
    // Past the settle period and the removal grace of the harness's daemon (500 ms + 1 s).
    std::thread::sleep(Duration::from_millis(2500));
}

/// Case 1: Files truncated in place become `rejected`, and every last good copy stays at the vendor.
#[test]
fn files_turned_bad_keep_their_last_good_copy() {
    let mut h = Harness::with(Options {
        max_deletes: 5,
        ..Options::default()
    });
    h.start();
    let names = names("cut", 30);
    let urls = sync_all(&h, &names, 100);
    for (i, name) in names.iter().enumerate() {
        let bytes = png(100 + i as u32);
        std::fs::write(h.path(name), &bytes[..bytes.len() / 2]).unwrap();
    }
    for (name, url) in names.iter().zip(&urls) {
        let row = h.wait_state(name, "rejected");
        assert_eq!(row["url"].as_str(), Some(url.as_str()), "{row}");
        assert!(held_by_vendor(&h, url));
    }
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{:?}", h.sandbox.deleted());
    let problems = h.status()["problems"].as_array().unwrap().clone();
    assert!(problems.iter().all(|p| p["last_good_copy"].is_string()));
}

/// Case 1, renamed: files truncated, then their folder renamed while they are bad. Each record
/// moves to the new path with its last good copy; nothing is deleted for the paths they left.
#[test]
fn bad_files_whose_folder_is_renamed_keep_their_last_good_copy() {
    let mut h = Harness::new();
    h.start();
    std::fs::create_dir_all(h.path("2024")).unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("2024/cut-{i}.png")).collect();
    let urls = sync_all(&h, &names, 150);
    for (i, name) in names.iter().enumerate() {
        let bytes = png(150 + i as u32);
        std::fs::write(h.path(name), &bytes[..bytes.len() / 2]).unwrap();
    }
    for name in &names {
        h.wait_state(name, "rejected");
    }
    std::fs::rename(h.path("2024"), h.path("2024-archive")).unwrap();
    for (name, url) in names.iter().zip(&urls) {
        let moved = name.replace("2024/", "2024-archive/");
        let row = h.wait_state(&moved, "rejected");
        assert_eq!(row["url"].as_str(), Some(url.as_str()), "{row}");
    }
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    for url in &urls {
        assert!(held_by_vendor(&h, url));
    }
    for name in &names {
        assert!(h.file(name).is_none(), "{name} moved with its file");
    }
}

/// Case 1b: A synced file that became unreadable is rejected; its copy is kept.
#[test]
fn an_unreadable_file_keeps_its_copy() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::with(Options {
        as_nobody: true,
        ..Options::default()
    });
    h.start();
    h.drop_file("locked.png", &png(1));
    h.wait_state("locked.png", "synced");
    let url = url_of(&h, "locked.png");
    std::fs::set_permissions(h.path("locked.png"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // chmod alone changes only the ctime: a rescan sees the new stamp and reads the file afresh.
    h.reload();
    let row = h.wait_state("locked.png", "rejected");
    assert!(row["error"].as_str().unwrap().contains("permission denied"));
    assert_eq!(row["url"].as_str(), Some(url.as_str()));
    settle_time();
    assert!(held_by_vendor(&h, &url));
    assert!(h.sandbox.deleted().is_empty());
}

/// Case 2: Removals trickling in are counted over a window, however slowly they come.
#[test]
fn a_trickle_of_removals_is_held_past_max_deletes() {
    let mut h = Harness::with(Options {
        max_deletes: 20,
        ..Options::default()
    });
    h.start();
    let names = names("trickle", 40);
    let urls = sync_all(&h, &names, 200);
    for name in &names {
        std::fs::remove_file(h.path(name)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    h.wait_for("the removals to be decided", |h| {
        h.files()
            .iter()
            .all(|f| f["state"] == "removed" || !f["error"].is_null())
    });
    settle_time();
    let deleted = h.sandbox.deleted().len();
    assert!(deleted <= 20, "{deleted} deleted with max_deletes 20");
    assert!(h.status()["held_deletes"].as_u64().unwrap() >= 20);
    assert!(h.cli(&["retry", "--held"]).status.success());
    h.wait_for("every held delete to be carried out", |h| {
        h.sandbox.deleted().len() == 40
    });
    for url in urls {
        assert!(!held_by_vendor(&h, &url));
    }
}

/// Case 3: Started while the share behind the watch root is unmounted: nothing is deleted, and the
/// watch says why; mounted again, everything is as it was.
#[test]
fn a_root_found_unmounted_at_start_deletes_nothing() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::new();
    let store = h.dir.path().join("share");
    std::fs::create_dir_all(&store).unwrap();
    let Some(_share) = tmpfs_or_skip(&store) else {
        return;
    };
    let root = Mount::bind(&store, &h.drop).unwrap();
    h.start();
    let names = names("share", 5);
    let urls = sync_all_in_place(&h, &names, 300);
    h.stop();
    drop(root);
    h.start();
    h.wait_for("the watch to say its root changed", |h| {
        !h.status()["paused_watches"].as_array().unwrap().is_empty()
    });
    settle_time();
    assert!(h.sandbox.deleted().is_empty());
    for name in &names {
        assert_eq!(h.state(name).as_deref(), Some("synced"));
    }
    let _root = Mount::bind(&store, &h.drop).unwrap();
    h.reload();
    h.wait_for("the watch to be itself again", |h| {
        h.status()["paused_watches"].as_array().unwrap().is_empty()
    });
    for (name, url) in names.iter().zip(&urls) {
        assert_eq!(&url_of(&h, name), url);
    }
    assert_eq!(h.sandbox.uploads(), names.len(), "nothing sent again");
    h.stop();
}

/// Case 3, confirmed while unmounted: deletes held, then the share behind the watch root unmounted
/// before the operator runs `retry --held`, and a file dropped into the bare mount point. The
/// mount point proves nothing of the share's files, so the deletes stay held, and the command
/// says why; with the share back, they are carried out.
#[test]
fn held_deletes_confirmed_while_the_share_is_unmounted_stay_held() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::with(Options {
        max_deletes: 2,
        ..Options::default()
    });
    let store = h.dir.path().join("share");
    std::fs::create_dir_all(&store).unwrap();
    let Some(_share) = tmpfs_or_skip(&store) else {
        return;
    };
    let root = Mount::bind(&store, &h.drop).unwrap();
    h.start();
    let names = names("gone", 4);
    let urls = sync_all_in_place(&h, &names, 320);
    for name in &names {
        std::fs::remove_file(h.path(name)).unwrap();
    }
    h.wait_for("the deletes to be held", |h| {
        h.status()["held_deletes"] == 4
    });
    drop(root);
    // Somebody drops a file into the bare mount point meanwhile, so it is not even empty.
    std::fs::write(h.path("meanwhile.png"), png(330)).unwrap();
    let out = h.cli(&["retry", "--held"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("0 held deletes queued"), "{stdout}");
    assert_eq!(stdout.matches("1 held delete kept").count(), 4, "{stdout}");
    assert!(
        stdout.contains("is on another filesystem than when the file was recorded"),
        "{stdout}"
    );
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    assert_eq!(h.status()["held_deletes"], 4);
    let _root = Mount::bind(&store, &h.drop).unwrap();
    h.reload();
    let out = h.cli(&["retry", "--held"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("4 held deletes queued"), "{stdout}");
    h.wait_for("the four deletes", |h| h.sandbox.deleted().len() == 4);
    for url in urls {
        assert!(!held_by_vendor(&h, &url));
    }
    h.stop();
}

/// Case 4: A subfolder that is a mount of its own, unmounted: its files are not gone.
#[test]
fn an_unmounted_subfolder_deletes_nothing() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::new();
    let sub = h.drop.join("mounted");
    std::fs::create_dir_all(&sub).unwrap();
    let Some(share) = tmpfs_or_skip(&sub) else {
        return;
    };
    h.start();
    let names: Vec<String> = (0..3).map(|i| format!("mounted/m{i}.png")).collect();
    sync_all_in_place(&h, &names, 400);
    drop(share);
    h.reload();
    settle_time();
    assert!(h.sandbox.deleted().is_empty());
    for name in &names {
        assert_eq!(h.state(name).as_deref(), Some("synced"));
    }
    // One line for the three, not one each (a share holds thousands).
    let log = h.log();
    assert!(
        log.contains("cannot tell whether 3 files are gone"),
        "{log}"
    );
    assert!(
        !log.contains("cannot tell whether the file is gone"),
        "{log}"
    );
}

/// Case 5: A subfolder the daemon cannot read: its files are unknown, not removed.
#[test]
fn an_unreadable_subfolder_deletes_nothing() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::with(Options {
        as_nobody: true,
        ..Options::default()
    });
    let sub = h.drop.join("private");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    h.start();
    let names: Vec<String> = (0..3).map(|i| format!("private/p{i}.png")).collect();
    sync_all(&h, &names, 500);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
    h.reload();
    settle_time();
    assert!(h.sandbox.deleted().is_empty());
    for name in &names {
        assert_eq!(h.state(name).as_deref(), Some("synced"));
    }
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Case 6a: A file whose removal is held still uses its copy: its twin's removal keeps it.
#[test]
fn a_held_file_keeps_its_twins_copy() {
    let mut h = Harness::with(Options {
        max_deletes: 2,
        ..Options::default()
    });
    // b.png lives in a second watch of the same vendor, whose removals are counted apart.
    let other_watch = h.dir.path().join("other-watch");
    std::fs::create_dir_all(&other_watch).unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("  - path: {}\n    vendor: erp\n", other_watch.display());
    std::fs::write(&h.config_path, config).unwrap();
    h.start();
    h.drop_file("a.png", &png(600));
    h.wait_state("a.png", "synced");
    let shared = url_of(&h, "a.png");
    let b = other_watch.join("b.png");
    std::fs::write(&b, png(600)).unwrap();
    let b_text = b.display().to_string();
    let b_state = |h: &Harness| {
        h.files()
            .into_iter()
            .find(|f| f["path"] == b_text.as_str())
            .and_then(|f| f["state"].as_str().map(String::from))
    };
    h.wait_for("b.png synced", |h| b_state(h).as_deref() == Some("synced"));
    let others = names("other", 2);
    sync_all(&h, &others, 610);
    // Two removals fill the window of max_deletes = 2; a.png's is then held.
    for name in &others {
        std::fs::remove_file(h.path(name)).unwrap();
    }
    h.wait_for("the two deletes", |h| h.sandbox.deleted().len() == 2);
    std::fs::remove_file(h.path("a.png")).unwrap();
    h.wait_for("a.png's removal to be held", |h| {
        h.status()["held_deletes"] == 1
    });
    std::fs::remove_file(&b).unwrap();
    h.wait_for("b.png removed", |h| {
        b_state(h).as_deref() == Some("removed")
    });
    settle_time();
    assert!(held_by_vendor(&h, &shared), "the held a.png still uses it");
    assert_eq!(h.sandbox.deleted().len(), 2, "only the two others");
}

/// Case 6b: Releasing held deletes never deletes a copy a live file uses.
#[test]
fn releasing_held_deletes_keeps_a_live_files_copy() {
    let mut h = Harness::with(Options {
        max_deletes: 1,
        ..Options::default()
    });
    h.start();
    h.drop_file("x.png", &png(620));
    h.drop_file("y.png", &png(621));
    h.wait_state("x.png", "synced");
    h.wait_state("y.png", "synced");
    h.drop_file("z.png", &png(621));
    h.wait_state("z.png", "synced");
    let (x, y) = (url_of(&h, "x.png"), url_of(&h, "y.png"));
    assert_eq!(url_of(&h, "z.png"), y);
    std::fs::remove_file(h.path("x.png")).unwrap();
    std::fs::remove_file(h.path("y.png")).unwrap();
    h.wait_for("both to be held", |h| h.status()["held_deletes"] == 2);
    assert!(h.cli(&["retry", "--held"]).status.success());
    h.wait_for("x's copy to be deleted", |h| {
        h.sandbox.deleted() == [x.clone()]
    });
    h.wait_state("y.png", "removed");
    settle_time();
    assert!(held_by_vendor(&h, &y));
    assert_eq!(h.state("z.png").as_deref(), Some("synced"));
    assert_eq!(h.sandbox.deleted(), [x]);
}

/// Case 7: A file put back after its shared copy was deleted is uploaded again, and the same bytes
/// dropped anew get a copy the vendor holds.
#[test]
fn a_file_put_back_after_its_copy_was_deleted_is_uploaded_again() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("a.png", &png(700));
    h.wait_state("a.png", "synced");
    h.drop_file("b.png", &png(700));
    h.wait_state("b.png", "synced");
    let shared = url_of(&h, "a.png");
    std::fs::remove_file(h.path("a.png")).unwrap();
    h.wait_state("a.png", "removed");
    std::fs::remove_file(h.path("b.png")).unwrap();
    h.wait_for("the shared copy to be deleted", |h| {
        h.sandbox.deleted() == [shared.clone()]
    });
    h.drop_file("a.png", &png(700));
    h.wait_for("a.png to be synced to a live copy", |h| {
        h.state("a.png").as_deref() == Some("synced") && held_by_vendor(h, &url_of(h, "a.png"))
    });
    h.drop_file("c.png", &png(700));
    h.wait_state("c.png", "synced");
    assert!(held_by_vendor(&h, &url_of(&h, "c.png")));
}

/// Case 8: A delete whose answer was lost: the retry finds the image gone, and that is a success.
#[test]
fn a_delete_whose_answer_was_lost_ends_removed() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("gone.png", &png(800));
    h.wait_state("gone.png", "synced");
    let url = url_of(&h, "gone.png");
    h.sandbox.inject([Fault::LoseAnswer(502)]);
    std::fs::remove_file(h.path("gone.png")).unwrap();
    let row = h.wait_state("gone.png", "removed");
    assert_eq!(row["remote_deleted"], true);
    assert!(row["error"].is_null(), "{row}");
    assert_eq!(h.sandbox.deleted(), [url]);
    assert!(h.status()["problems"].as_array().unwrap().is_empty());
}

/// Case 9: A file put back while its delete is running ends synced to a copy the vendor holds.
#[test]
fn a_file_put_back_during_its_delete_is_synced_again() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("back.png", &png(900));
    h.wait_state("back.png", "synced");
    let old = url_of(&h, "back.png");
    h.sandbox.inject([Fault::Delay(Duration::from_secs(4))]);
    std::fs::remove_file(h.path("back.png")).unwrap();
    h.wait_for("the delete to reach the vendor", |h| {
        h.sandbox.pending_faults() == 0
    });
    h.drop_file("back.png", &png(900));
    h.wait_for("back.png synced to a live copy", |h| {
        h.state("back.png").as_deref() == Some("synced")
            && h.sandbox.deleted().contains(&old)
            && held_by_vendor(h, &url_of(h, "back.png"))
    });
}

/// A file put back while its delete waits for its turn in the vendor's pace (a rate limit's
/// wait) keeps its copy: the delete is withdrawn, not sent once its turn comes.
#[test]
fn a_file_put_back_while_its_delete_waits_out_a_rate_limit_keeps_its_copy() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("keep.png", &png(950));
    h.wait_state("keep.png", "synced");
    let url = url_of(&h, "keep.png");
    // A 429 asking for 8 s holds every Kingdee call behind it, the delete's too.
    h.sandbox.inject([Fault::Throttled(Duration::from_secs(8))]);
    h.drop_file("filler.png", &png(951));
    h.wait_for("the vendor's rate-limit answer", |h| {
        h.sandbox.pending_faults() == 0
    });
    std::fs::remove_file(h.path("keep.png")).unwrap();
    h.wait_for("the delete to be claimed", |h| {
        deletes_in(h, "running") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    h.drop_file("keep.png", &png(950));
    h.wait_state("filler.png", "synced");
    h.wait_for("the delete to be settled", |h| {
        h.state("keep.png").as_deref() == Some("synced")
            && deletes_in(h, "running") == 0
            && deletes_in(h, "queued") == 0
    });
    assert_eq!(url_of(&h, "keep.png"), url, "{:?}", h.file("keep.png"));
    assert!(held_by_vendor(&h, &url));
    assert!(h.sandbox.deleted().is_empty(), "{:?}", h.sandbox.deleted());
    assert_eq!(h.sandbox.uploads(), 2, "nothing sent twice");
}

/// Case 10: A refusal of old content arriving after the file changed does not touch the new content.
#[test]
fn a_late_refusal_of_old_content_leaves_the_new_content_alone() {
    let mut h = Harness::new();
    h.sandbox.inject([Fault::Later(
        Duration::from_secs(3),
        Box::new(Fault::Business(1_000_000_001)),
    )]);
    h.start();
    h.drop_file("v.png", &png(1000));
    h.wait_for("the upload to reach the vendor", |h| {
        h.sandbox.pending_faults() == 0
    });
    h.drop_file("v.png", &png(1001));
    h.wait_for("v.png synced with its new content", |h| {
        h.state("v.png").as_deref() == Some("synced") && h.remote_bytes("v.png") == Some(png(1001))
    });
}

/// Case 11: A file removed during its upload, then kill -9: after the restart it is removed, not
/// retried for a day.
#[test]
fn a_file_removed_during_its_upload_and_a_crash_ends_removed() {
    let mut h = Harness::new();
    h.sandbox.inject([Fault::Delay(Duration::from_secs(5))]);
    h.start();
    h.drop_file("brief.png", &png(1100));
    h.wait_for("the upload to reach the vendor", |h| {
        h.sandbox.pending_faults() == 0
    });
    std::fs::remove_file(h.path("brief.png")).unwrap();
    settle_time();
    h.kill9();
    h.start();
    h.wait_state("brief.png", "removed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(h.state("brief.png").as_deref(), Some("removed"));
    assert!(!h.log().contains("cannot read the file"), "{}", h.log());
}

/// Case 12: A success without the URL is not sent again and again: the vendor is paused and the file
/// waits for a person.
#[test]
fn a_success_without_its_url_is_never_sent_again() {
    let mut h = Harness::new();
    h.sandbox.inject([Fault::NoUrl]);
    h.start();
    h.drop_file("mute.png", &png(1200));
    let row = h.wait_state("mute.png", "failed");
    assert!(
        row["error"].as_str().unwrap().contains("could not be read"),
        "{row}"
    );
    let paused = h.status()["paused_vendors"].as_array().unwrap().clone();
    assert!(!paused.is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let sent = h
        .sandbox
        .log()
        .iter()
        .filter(|l| l.path.ends_with("image_upload"))
        .count();
    assert_eq!(sent, 1);
}

/// Case 13: Content rewritten while the daemon was down, size and mtime preserved (`cp -p`): seen.
#[test]
fn content_rewritten_with_size_and_mtime_kept_is_sent() {
    let mut h = Harness::new();
    h.start();
    let v1 = common::image(image::ImageFormat::Bmp, 1, 40, 30);
    let v2 = common::image(image::ImageFormat::Bmp, 2, 40, 30);
    assert_eq!(v1.len(), v2.len());
    h.drop_file("same.bmp", &v1);
    h.wait_state("same.bmp", "synced");
    h.stop();
    let path = h.path("same.bmp");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, &v2).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    h.start();
    h.wait_for("the new content at the vendor", |h| {
        h.state("same.bmp").as_deref() == Some("synced")
            && h.remote_bytes("same.bmp") == Some(v2.clone())
    });
}

/// Case 14: A file a downloader still has open is never taken by a rescan.
#[test]
fn a_file_still_open_for_writing_is_not_taken_by_a_rescan() {
    use std::io::Write;
    let mut h = Harness::new();
    h.start();
    let bytes = png(1400);
    let mut file = std::fs::File::create(h.path("download.png")).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    h.reload();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(h.sandbox.uploads(), 0);
    assert_eq!(h.state("download.png"), None);
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    h.wait_state("download.png", "synced");
    assert_eq!(h.remote_bytes("download.png").unwrap(), bytes);
}

/// Case 15: Files in excluded folders are never taken, however they arrive.
#[test]
fn files_in_excluded_folders_are_never_taken() {
    let mut h = Harness::with(Options {
        watch_extra: "    exclude: [\".*\", \"*.tmp\", \"*.part\", \"*~\", \"@eaDir\"]\n",
        ..Options::default()
    });
    h.start();
    for dir in [".thumbnails", "@eaDir"] {
        std::fs::create_dir_all(h.path(dir)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(h.path(".thumbnails/x.png"), png(1500)).unwrap();
    std::fs::write(h.path("@eaDir/y.png"), png(1501)).unwrap();
    h.drop_file("real.png", &png(1502));
    h.wait_state("real.png", "synced");
    settle_time();
    assert_eq!(h.files().len(), 1, "{:#?}", h.files());
    assert_eq!(h.sandbox.uploads(), 1);
}

/// Case 15b: Files renamed to names the watch does not take (hidden, temporary, not an image) or
/// moved into an excluded folder are still there: their copies stay at the vendor, whether the
/// daemon saw the rename or found it at a start, and even when a twin sharing the copy is
/// deleted. Only a file really deleted loses its copy: one deleted outright, and one whose
/// excluded new place is emptied.
#[test]
fn files_renamed_out_of_the_watchs_names_keep_their_copies() {
    let mut h = Harness::new();
    h.start();
    std::fs::create_dir_all(h.path(".trash")).unwrap();
    std::fs::create_dir_all(h.path("sub")).unwrap();
    let names: Vec<String> = [
        "a.png",
        "b.png",
        "c.png",
        "d.png",
        "sub/e.png",
        "f.png",
        "g.png",
    ]
    .map(String::from)
    .to_vec();
    let mut urls = sync_all(&h, &names, 1550);
    // Two files with the same bytes share one copy.
    h.drop_file("h.png", &png(1560));
    h.drop_file("h-twin.png", &png(1560));
    let h_url = wait_synced(&h, &["h.png".to_string(), "h-twin.png".to_string()])[0].clone();
    let renames = [
        ("a.png", ".a.png"),
        ("b.png", "b.png.tmp"),
        ("c.png", "c.png.bak"),
        ("d.png", ".trash/d.png"),
        ("sub/e.png", ".trash/e.png"),
        ("h.png", ".h.png"),
    ];
    for (from, to) in renames {
        std::fs::rename(h.path(from), h.path(to)).unwrap();
    }
    std::fs::remove_file(h.path("f.png")).unwrap();
    h.wait_for("the real removal to be carried out", |h| {
        !h.sandbox.deleted().is_empty()
    });
    // The twin goes: the renamed file still uses the copy.
    std::fs::remove_file(h.path("h-twin.png")).unwrap();
    h.wait_state("h-twin.png", "removed");
    h.stop();
    std::fs::rename(h.path("g.png"), h.path("g.png~")).unwrap();
    h.start();
    wait_noted(&h, "g.png");
    settle_time();
    assert_eq!(h.sandbox.deleted(), vec![urls[5].clone()], "{}", h.log());
    let mut names = names;
    names.push("h.png".to_string());
    urls.push(h_url);
    for (name, url) in names.iter().zip(&urls).filter(|(n, _)| *n != "f.png") {
        assert!(held_by_vendor(&h, url), "{name}'s copy was deleted");
        let row = h.file(name).unwrap();
        assert_eq!(row["state"], "synced", "{row}");
        assert_eq!(row["url"].as_str(), Some(url.as_str()), "{row}");
        let note = row["error"].as_str().unwrap_or_default();
        assert!(note.contains("which the watch does not take"), "{row}");
    }
    assert!(
        h.log()
            .contains("which the watch does not take: its remote copy is kept"),
        "{}",
        h.log()
    );
    // Named back, it is synced to the copy it kept, with nothing sent again.
    let uploads = h.sandbox.uploads();
    std::fs::rename(h.path(".a.png"), h.path("a.png")).unwrap();
    h.wait_for("a.png to be taken back", |h| {
        h.file("a.png").is_some_and(|row| row["error"].is_null())
    });
    assert_eq!(h.state("a.png").as_deref(), Some("synced"));
    assert_eq!(url_of(&h, "a.png"), urls[0]);
    assert_eq!(h.sandbox.uploads(), uploads);
    // The trash emptied: the next look at the folder deletes d.png's copy, as any removal.
    std::fs::remove_file(h.path(".trash/d.png")).unwrap();
    h.stop();
    h.start();
    h.wait_for("the emptied trash's file to lose its copy", |h| {
        h.sandbox.deleted().contains(&urls[3])
    });
    assert_eq!(h.sandbox.deleted().len(), 2, "{}", h.log());
    // The journal keeps where each is: a start no longer counts them as vanished (nor reads
    // the whole watch's records again to find them), and deletes nothing.
    h.stop();
    let before = h.log().len();
    h.start();
    h.wait_for("the start's reconcile", |h| {
        h.log()[before..].contains("reconciled with the journal")
    });
    let log = h.log()[before..].to_string();
    let reconciled = log
        .lines()
        .find(|l| l.contains("reconciled with the journal"))
        .unwrap();
    assert!(reconciled.contains("vanished=0"), "{reconciled}");
    settle_time();
    assert_eq!(h.sandbox.deleted().len(), 2, "{}", h.log());
    assert_eq!(h.state("b.png").as_deref(), Some("synced"));
}

/// Case 15c: A synced file moved to another watch of the same vendor, one that polls, keeps its
/// copy: the watch it left waits for the poller to see it arrive (the old code decided the
/// removal a settle period and a second after the move, before the poller's next look, and
/// deleted the copy the moved file then uploaded again).
#[test]
fn a_file_moved_to_a_polled_watch_of_the_same_vendor_keeps_its_copy() {
    let (archive, mut h) = with_archive("    poll: 4s\n");
    h.start();
    let names = names("moved", 3);
    let urls = sync_all(&h, &names, 1580);
    for name in &names {
        std::fs::rename(h.path(name), archive.path().join(name)).unwrap();
    }
    for (name, url) in names.iter().zip(&urls) {
        let row = wait_synced_at(&h, &archive.path().join(name));
        assert_eq!(row["url"].as_str(), Some(url.as_str()), "{row}");
        assert!(held_by_vendor(&h, url));
    }
    // Past the moment the watch they left decides their removals (two of the poller's polls
    // after the move, and the settle period and a second): the old code decided them before the
    // poller's first look, so the records had not moved yet, and deleted the copies.
    std::thread::sleep(Duration::from_secs(7));
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    assert_eq!(h.sandbox.uploads(), 3);
}

/// Case 15e: A synced file moved to another watch of the same vendor that takes a while to
/// record it (still settling there: a sync tool setting its times, or an import of thousands of
/// files ahead of it) keeps its copy: the watch it left waits while any watch of the vendor has
/// files seen and not yet recorded (the old code decided the removal a settle period and a
/// second after the move, deleted the copy, and the moved file was uploaded again).
#[test]
fn a_file_moved_to_a_watch_still_taking_it_in_keeps_its_copy() {
    let (archive, mut h) = with_archive("");
    h.start();
    let names = names("slow", 1);
    let url = sync_all(&h, &names, 1610).remove(0);
    let moved = archive.path().join(&names[0]);
    std::fs::rename(h.path(&names[0]), &moved).unwrap();
    // Its times changed again and again for four seconds: the archive takes it in only after.
    let file = std::fs::File::options().write(true).open(&moved).unwrap();
    let start = std::time::SystemTime::now();
    for i in 1..=20 {
        std::thread::sleep(Duration::from_millis(200));
        file.set_modified(start + Duration::from_secs(i)).unwrap();
    }
    drop(file);
    wait_synced_at(&h, &moved);
    settle_time();
    let row = row_at(&h, &moved).unwrap();
    assert_eq!(row["url"].as_str(), Some(url.as_str()), "{row}");
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    assert!(held_by_vendor(&h, &url));
    assert_eq!(h.sandbox.uploads(), 1);
}

/// Case 15f: A watch folder found emptied at a start (a share not mounted, a mistaken wipe) holds
/// the deletes of the files renamed out of its names as well as the others': none is deleted
/// until an operator says so.
#[test]
fn an_emptied_root_holds_the_deletes_of_files_renamed_out_too() {
    let mut h = Harness::new();
    h.start();
    std::fs::create_dir_all(h.path(".trash")).unwrap();
    let names = names("wiped", 3);
    sync_all(&h, &names, 1620);
    std::fs::rename(h.path(&names[0]), h.path(&format!(".trash/{}", names[0]))).unwrap();
    wait_noted(&h, &names[0]);
    h.stop();
    for entry in std::fs::read_dir(&h.drop).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(path).unwrap(),
            false => std::fs::remove_file(path).unwrap(),
        }
    }
    h.start();
    h.wait_for("all three to be held", |h| h.status()["held_deletes"] == 3);
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
}

/// Case 15h: Files filed away where the first look for a gone file does not reach: into a folder
/// excluded by a path pattern (`archive/**`), under a name a sibling folder does not take, and
/// with their folder into the trash, four folders deep. They are still in the watch, found by a
/// look through all of it: their copies stay (before, each was counted as gone and its copy
/// deleted). Only the file really deleted loses its copy.
#[test]
fn files_filed_away_anywhere_in_the_watch_keep_their_copies() {
    let mut h = Harness::with(Options {
        watch_extra: "    exclude: [\".*\", \"*~\", \"archive/**\"]\n",
        ..Options::default()
    });
    h.start();
    for folder in ["archive", "sub2", ".trash"] {
        std::fs::create_dir_all(h.path(folder)).unwrap();
    }
    let names: Vec<String> = ["a.png", "sub1/b.png", "2024/11/28/c.png", "d.png"]
        .map(String::from)
        .to_vec();
    let urls = sync_all(&h, &names, 1600);
    std::fs::rename(h.path("a.png"), h.path("archive/a.png")).unwrap();
    std::fs::rename(h.path("sub1/b.png"), h.path("sub2/b.png~")).unwrap();
    std::fs::rename(h.path("2024"), h.path(".trash/2024")).unwrap();
    std::fs::remove_file(h.path("d.png")).unwrap();
    h.wait_for("the real removal to be carried out", |h| {
        !h.sandbox.deleted().is_empty()
    });
    settle_time();
    assert_eq!(h.sandbox.deleted(), vec![urls[3].clone()], "{}", h.log());
    for (name, url) in names.iter().zip(&urls).take(3) {
        assert!(held_by_vendor(&h, url), "{name}'s copy was deleted");
        let row = h.file(name).unwrap();
        assert_eq!(row["state"], "synced", "{row}");
        let note = row["error"].as_str().unwrap_or_default();
        assert!(note.contains("which the watch does not take"), "{row}");
    }
}

/// Case 15g: A file renamed out into a trash whose name another file then takes (`mv y/a.png
/// .trash/`, overwriting x's) is gone: the next look finds another file at its place and deletes
/// its copy, and keeps the other's.
#[test]
fn a_file_renamed_out_whose_place_another_file_takes_is_gone() {
    let mut h = Harness::new();
    h.start();
    for folder in [".trash", "x", "y"] {
        std::fs::create_dir_all(h.path(folder)).unwrap();
    }
    // A file stays where the watch takes it: a folder found empty holds every delete.
    let names = ["x/a.png", "y/a.png", "kept.png"].map(String::from);
    let urls = sync_all(&h, &names, 1630);
    for name in &names[..2] {
        std::fs::rename(h.path(name), h.path(".trash/a.png")).unwrap();
        wait_noted(&h, name);
    }
    h.stop();
    h.start();
    h.wait_for("x's copy to be deleted", |h| {
        h.sandbox.deleted() == [urls[0].clone()]
    });
    settle_time();
    assert_eq!(h.sandbox.deleted(), [urls[0].clone()], "{}", h.log());
    assert!(held_by_vendor(&h, &urls[1]));
    assert_eq!(h.state("y/a.png").as_deref(), Some("synced"));
}

/// Case 15d: In a watch that is not recursive, a synced file moved into a subfolder (which such a
/// watch does not take) keeps its copy, as one moved into an excluded folder does (the old code
/// deleted it).
#[test]
fn a_file_moved_into_a_subfolder_of_a_watch_that_is_not_recursive_keeps_its_copy() {
    let mut h = Harness::with(Options {
        watch_extra: "    recursive: false\n",
        ..Options::default()
    });
    h.start();
    std::fs::create_dir_all(h.path("done/2024")).unwrap();
    let names = names("flat", 2);
    let urls = sync_all(&h, &names, 1590);
    let filed = format!("done/2024/{}", names[0]);
    std::fs::rename(h.path(&names[0]), h.path(&filed)).unwrap();
    std::fs::remove_file(h.path(&names[1])).unwrap();
    h.wait_for("the real removal to be carried out", |h| {
        !h.sandbox.deleted().is_empty()
    });
    wait_noted(&h, &names[0]);
    settle_time();
    assert_eq!(h.sandbox.deleted(), vec![urls[1].clone()], "{}", h.log());
    assert!(held_by_vendor(&h, &urls[0]));
    let row = h.file(&names[0]).unwrap();
    assert_eq!(row["state"], "synced", "{row}");
    assert_eq!(row["url"].as_str(), Some(urls[0].as_str()), "{row}");
    assert!(
        row["error"].as_str().unwrap().contains(filed.as_str()),
        "{row}"
    );
    assert!(h.file(&filed).is_none(), "the subfolder was taken");
}

/// Case 2c: A held delete whose file has since come back into the watch under a name it does not
/// take keeps its copy when the operator confirms the held deletes (`retry --held` looked only
/// at the old path, and deleted it).
#[test]
fn confirming_held_deletes_keeps_a_file_back_under_a_name_the_watch_does_not_take() {
    let mut h = Harness::with(Options {
        max_deletes: 1,
        ..Options::default()
    });
    h.start();
    let names = names("held", 2);
    let urls = sync_all(&h, &names, 1600);
    let outside = h.drop.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for name in &names {
        std::fs::rename(h.path(name), outside.join(name)).unwrap();
    }
    h.wait_for("both to be held", |h| h.status()["held_deletes"] == 2);
    let hidden = format!(".{}", names[0]);
    std::fs::rename(outside.join(&names[0]), h.path(&hidden)).unwrap();
    let retried = h.cli(&["retry", "--held"]);
    let said = String::from_utf8_lossy(&retried.stdout).into_owned();
    assert!(retried.status.success(), "{said}");
    assert!(
        said.contains("its remote copy is kept") && said.contains(hidden.as_str()),
        "{said}"
    );
    h.wait_for("the other copy to be deleted", |h| {
        h.sandbox.deleted() == [urls[1].clone()]
    });
    settle_time();
    assert_eq!(h.sandbox.deleted(), [urls[1].clone()], "{}", h.log());
    assert!(held_by_vendor(&h, &urls[0]));
    let row = h.file(&names[0]).unwrap();
    assert_eq!(row["state"], "synced", "{row}");
    assert_eq!(row["url"].as_str(), Some(urls[0].as_str()), "{row}");
    assert_eq!(h.status()["held_deletes"], 0);
}

/// Case 16: A journal locked longer than the busy timeout: no outcome is dropped, nothing sent twice,
/// and a file dropped meanwhile is not forgotten.
#[test]
fn a_journal_locked_for_a_while_loses_nothing() {
    let mut h = Harness::new();
    h.sandbox.inject([Fault::Delay(Duration::from_secs(2))]);
    h.start();
    h.drop_file("first.png", &png(1600));
    std::thread::sleep(Duration::from_millis(1200));
    let journal = h.dir.path().join("journal.sqlite3");
    let locker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(journal).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        std::thread::sleep(Duration::from_secs(14));
        conn.execute_batch("COMMIT").unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    h.drop_file("second.png", &png(1601));
    locker.join().unwrap();
    h.wait_state("first.png", "synced");
    h.wait_state("second.png", "synced");
    assert_eq!(h.sandbox.uploads(), 2, "each file sent once");
    assert!(h.log().contains("will try again") || h.log().contains("trying again"));
}

/// Case 17: A watch root removed and recreated is watched again at once; the old files' copies stay.
#[test]
fn a_recreated_root_is_watched_again() {
    let mut h = Harness::new();
    h.start();
    let urls = sync_all(&h, &names("old", 3), 1700);
    std::fs::remove_dir_all(&h.drop).unwrap();
    std::fs::create_dir_all(&h.drop).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    h.drop_file("new.png", &png(1710));
    h.wait_state("new.png", "synced");
    settle_time();
    assert!(h.sandbox.deleted().is_empty());
    for url in urls {
        assert!(held_by_vendor(&h, &url));
    }
}

/// Case 17, heard late: the daemon learns of the removal only once a new folder stands at the
/// root's path, which ext4 and tmpfs give the inode number just freed. It is another folder all
/// the same: the new one is watched, and nothing is deleted for the files that went with the old.
#[test]
fn a_root_recreated_before_the_daemon_hears_of_it_is_watched_again_and_deletes_nothing() {
    let mut h = Harness::new();
    h.start();
    let urls = sync_all(&h, &names("old", 3), 1720);
    h.signal("-STOP");
    std::fs::remove_dir_all(&h.drop).unwrap();
    std::fs::create_dir_all(&h.drop).unwrap();
    h.signal("-CONT");
    h.drop_file("new.png", &png(1730));
    h.wait_state("new.png", "synced");
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    for url in urls {
        assert!(held_by_vendor(&h, &url));
    }
    let log = h.log();
    assert!(
        log.contains("watch root changed: the folder was replaced by another one"),
        "{log}"
    );
    for name in names("old", 3) {
        let row = h.file(&name).unwrap();
        assert!(
            row["error"]
                .as_str()
                .unwrap_or_default()
                .contains("removal held"),
            "its removal waits for an operator: {row}"
        );
    }
}

/// Case 17, unrecorded: the root's deletion is heard while another process holds the journal past
/// its busy timeout, so the journal still knows the old folder's identity, which the new folder
/// may carry. The watch keeps the deletion in mind and records it once it can: nothing is deleted.
#[test]
fn a_root_deletion_the_journal_could_not_record_still_deletes_nothing() {
    let mut h = Harness::new();
    h.start();
    let urls = sync_all(&h, &names("old", 3), 1740);
    let locker = rusqlite::Connection::open(h.dir.path().join("journal.sqlite3")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    h.signal("-STOP");
    let inode =
        |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    let old_inode = inode(&h.drop);
    std::fs::remove_dir_all(&h.drop).unwrap();
    std::fs::create_dir_all(&h.drop).unwrap();
    if inode(&h.drop) != old_inode {
        eprintln!("the new folder has another inode number here: only the guards are shown");
    }
    // Not empty, so only the root's identity tells the new folder from the old.
    std::fs::write(h.path("new.png"), png(1750)).unwrap();
    h.signal("-CONT");
    h.wait_for("the deletion to go unrecorded", |h| {
        h.log()
            .contains("cannot record that the watch folder was deleted")
    });
    locker.execute_batch("COMMIT").unwrap();
    h.wait_state("new.png", "synced");
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    for url in urls {
        assert!(held_by_vendor(&h, &url));
    }
    for name in names("old", 3) {
        let row = h.file(&name).unwrap();
        let error = row["error"].as_str().unwrap_or_default();
        assert!(error.contains("removal held"), "{row}");
    }
}

/// Case 18: A queued file replaced by a FIFO never hangs a worker or the shutdown.
#[test]
fn a_queued_file_replaced_by_a_fifo_hangs_nothing() {
    let mut h = Harness::with(Options {
        workers: 1,
        ..Options::default()
    });
    h.sandbox.inject([Fault::Delay(Duration::from_secs(3))]);
    h.start();
    h.drop_file("slow.png", &png(1800));
    std::thread::sleep(Duration::from_millis(200));
    h.drop_file("pipe.png", &png(1801));
    h.wait_state("pipe.png", "pending");
    std::fs::remove_file(h.path("pipe.png")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(h.path("pipe.png"))
            .status()
            .unwrap()
            .success()
    );
    h.wait_state("slow.png", "synced");
    let row = h.wait_state("pipe.png", "rejected");
    assert!(row["error"].as_str().unwrap().contains("FIFO"), "{row}");
    assert!(h.stop().success());
    assert!(exists(&h.path("pipe.png")));
}

/// Case 19: An operator who may only read the journal can read `status` and `files`.
#[test]
fn status_and_files_work_for_a_read_only_operator() {
    if !running_as_root() {
        return;
    }
    let mut h = Harness::new();
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    h.start();
    h.drop_file("ro.png", &png(1900));
    h.wait_state("ro.png", "synced");
    std::fs::set_permissions(&h.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    for verb in ["status", "files"] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "-c",
            ])
            .arg(&h.config_path)
            .args([verb, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _: Value = serde_json::from_slice(&out.stdout).unwrap();
    }
    h.stop();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "-c",
        ])
        .arg(&h.config_path)
        .args(["files", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["state"], "synced");
}

/// `rm -rf sub` reports every file and then the folder: each file was counted twice by the
/// guards on how much may be deleted at once, so removing 12 of 26 files was held as "24
/// vanished, more than max_deletes = 20" (and as more than half the watch).
#[test]
fn a_subfolder_removed_whole_counts_each_file_once() {
    let mut h = Harness::with(Options {
        max_deletes: 20,
        ..Options::default()
    });
    h.start();
    let mut all = names("top", 14);
    let sub: Vec<String> = names("f", 12).iter().map(|n| format!("sub/{n}")).collect();
    all.extend(sub.iter().cloned());
    let urls = sync_all(&h, &all, 1900);
    std::fs::remove_dir_all(h.path("sub")).unwrap();
    h.wait_for(
        "the subfolder's copies deleted, or their deletes held",
        |h| h.sandbox.deleted().len() == 12 || h.log().contains("removal held"),
    );
    assert!(!h.log().contains("removal held"), "{}", h.log());
    let deleted = h.sandbox.deleted();
    assert!(
        urls[14..].iter().all(|u| deleted.contains(u)),
        "{deleted:?}"
    );
    for name in &sub {
        assert_eq!(h.state(name).as_deref(), Some("removed"), "{name}");
    }
    settle_time();
    assert_eq!(h.sandbox.deleted().len(), 12, "each copy deleted once");
}

/// Two synced files swap names in one step (`mv --exchange`, renameat2's RENAME_EXCHANGE): each
/// name now holds the other's bytes, and each record follows its bytes' copy. The old code
/// dropped the second name from its look (its "moved away" came after its "moved in"), left its
/// record on the other file's copy, and deleted the first file's copy, still in use.
#[test]
fn two_files_that_swap_names_keep_both_copies() {
    let mut h = Harness::new();
    h.start();
    let names = names("swap", 2);
    let urls = sync_all(&h, &names, 1950);
    let (a, b) = (h.path(&names[0]), h.path(&names[1]));
    let text = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (a_text, b_text) = (text(&a), text(&b));
    // SAFETY: two NUL-terminated paths, absolute, so the directory descriptors are unused.
    let swapped = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a_text.as_ptr(),
            libc::AT_FDCWD,
            b_text.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if swapped != 0 {
        eprintln!(
            "skipped: this filesystem cannot swap names ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    h.wait_for("each name synced to the other's copy", |h| {
        h.file(&names[0])
            .is_some_and(|f| f["state"] == "synced" && f["url"] == urls[1].as_str())
            && h.file(&names[1])
                .is_some_and(|f| f["state"] == "synced" && f["url"] == urls[0].as_str())
    });
    settle_time();
    settle_time();
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    assert_eq!(h.sandbox.uploads(), 2, "nothing sent again");
    for (name, url) in names.iter().zip(urls.iter().rev()) {
        assert_eq!(
            h.sandbox.images()[url].bytes,
            std::fs::read(h.path(name)).unwrap(),
            "{name}"
        );
    }
}

/// A file removed and a folder made at its path (`rm a.png; mkdir a.png`): the file is gone, and
/// its copy with it; what the folder holds is taken as any new folder's files. The old code took
/// the folder's event for the file back: the record stayed synced to its copy for good.
#[test]
fn a_folder_made_at_a_removed_files_path_does_not_bring_the_file_back() {
    let mut h = Harness::new();
    h.start();
    let url = sync_all(&h, &names("was", 1), 1980).remove(0);
    let path = h.path("was-00.png");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    h.drop_file("was-00.png/inside.png", &png(1981));
    h.wait_state("was-00.png/inside.png", "synced");
    h.wait_for("the file's copy deleted", |h| {
        h.sandbox.deleted().contains(&url)
    });
    assert_eq!(h.state("was-00.png").as_deref(), Some("removed"));
}
