//! End to end: drop folders mirrored to the Kingdee sandbox by the real binary.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Harness, Options, image, jpeg, png};
use image::ImageFormat;
use imgsyncd::adapters::kingdee;

#[test]
fn a_batch_of_images_is_synced_with_the_exact_bytes() {
    let mut h = Harness::new();
    h.start();
    let batch: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "photo.jpg",
            image(ImageFormat::Jpeg, 1, 80, 60),
            "image/jpeg",
        ),
        (
            "diagram.png",
            image(ImageFormat::Png, 2, 80, 60),
            "image/png",
        ),
        ("anim.gif", image(ImageFormat::Gif, 3, 40, 30), "image/gif"),
        ("scan.bmp", image(ImageFormat::Bmp, 4, 40, 30), "image/bmp"),
        (
            "web.webp",
            image(ImageFormat::WebP, 5, 40, 30),
            "image/webp",
        ),
        (
            "产品 图片 #1 (final).JPG",
            image(ImageFormat::Jpeg, 6, 50, 50),
            "image/jpeg",
        ),
        (
            "sub/dir/deep.png",
            image(ImageFormat::Png, 7, 30, 30),
            "image/png",
        ),
        // Content decides the type, not the name.
        (
            "really-a-png.jpg",
            image(ImageFormat::Png, 8, 30, 30),
            "image/png",
        ),
    ];
    for (name, bytes, _) in &batch {
        h.drop_file(name, bytes);
    }
    for (name, bytes, content_type) in &batch {
        let row = h.wait_state(name, "synced");
        let url = row["url"].as_str().expect("a URL is recorded");
        let held = h
            .sandbox
            .images()
            .get(url)
            .cloned()
            .expect("the sandbox holds the URL");
        assert_eq!(
            &held.bytes, bytes,
            "{name}: the vendor holds the exact bytes"
        );
        assert_eq!(held.content_type, *content_type, "{name}");
        assert_eq!(
            held.filename,
            name.rsplit('/').next().unwrap(),
            "{name}: the file name is sent"
        );
        assert!(!held.temporary, "save_temp defaults to permanent storage");
        assert_eq!(row["vendor"], "erp");
        assert_eq!(row["kind"], "kingdee");
        assert_eq!(row["size"], bytes.len());
        assert_eq!(row["error"], serde_json::Value::Null);
        assert_eq!(row["file_token"], serde_json::Value::Null);
        assert_eq!(row["remote_deleted"], serde_json::Value::Null);
        assert!(row["updated_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(h.sandbox.uploads(), batch.len(), "each file uploaded once");
    let status = h.status();
    assert_eq!(status["files"]["synced"], batch.len());
    assert_eq!(status["oldest_pending_s"], serde_json::Value::Null);
    assert!(h.stop().success(), "SIGTERM exits 0");
}

#[test]
fn a_slowly_written_file_is_uploaded_once_and_whole() {
    let mut h = Harness::new();
    h.start();
    let bytes = image(ImageFormat::Png, 11, 400, 300);
    let mut file = std::fs::File::create(h.path("slow.png")).unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len() / 5 + 1).collect();
    for chunk in chunks {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        // Longer than the settle period, with the file still open.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(
            h.sandbox.uploads(),
            0,
            "nothing is sent while the file is open"
        );
    }
    drop(file);
    h.wait_state("slow.png", "synced");
    assert_eq!(h.remote_bytes("slow.png").unwrap(), bytes);
    assert_eq!(h.sandbox.uploads(), 1);
}

/// A no-clobber move: a staged file (written earlier, in a folder the watch does not take) is
/// linked in, then its staged name removed. The only event is the create, looked at once the
/// link count is one again; no close ever comes. It is taken as complete, its content unwritten
/// for long (before, it waited for a close for good, through reloads and rescans).
#[test]
fn a_file_linked_in_and_unlinked_from_its_staging_name_is_taken() {
    let mut h = Harness::new();
    h.start();
    let staged = h.path(".stage/a.png");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    let bytes = png(23);
    std::fs::write(&staged, &bytes).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    // Stopped, the daemon hears of the link only once both are done.
    h.signal("-STOP");
    std::fs::hard_link(&staged, h.path("a.png")).unwrap();
    std::fs::remove_file(&staged).unwrap();
    h.signal("-CONT");
    h.wait_state("a.png", "synced");
    assert_eq!(h.remote_bytes("a.png").unwrap(), bytes);
}

#[test]
fn a_part_file_renamed_into_place_is_uploaded_under_its_final_name() {
    let mut h = Harness::new();
    h.start();
    let bytes = jpeg(21);
    std::fs::write(h.path("upload.jpg.part"), &bytes).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(h.files().is_empty(), "a temporary name is ignored");
    std::fs::rename(h.path("upload.jpg.part"), h.path("upload.jpg")).unwrap();
    h.wait_state("upload.jpg", "synced");
    assert_eq!(h.remote_bytes("upload.jpg").unwrap(), bytes);
    let images = h.sandbox.images();
    assert_eq!(images.values().next().unwrap().filename, "upload.jpg");
    assert_eq!(h.sandbox.uploads(), 1);
}

#[test]
fn a_rename_moves_the_record_and_uploads_nothing() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("before.png", &png(31));
    let before = h.wait_state("before.png", "synced");
    std::fs::create_dir_all(h.path("renamed")).unwrap();
    std::fs::rename(h.path("before.png"), h.path("renamed/after.png")).unwrap();
    let after = h.wait_state("renamed/after.png", "synced");
    assert_eq!(after["url"], before["url"], "the record moved with its URL");
    assert!(
        h.file("before.png").is_none(),
        "the old path is gone from the journal"
    );
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(h.sandbox.uploads(), 1, "nothing was uploaded again");
    assert_eq!(h.deletes_at_sandbox(), 0, "nothing was deleted");
    assert!(h.log().contains("renamed: record moved, nothing sent"));
}

#[test]
fn removal_deletes_at_the_vendor_by_url() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("gone.jpg", &jpeg(41));
    let row = h.wait_state("gone.jpg", "synced");
    let url = row["url"].as_str().unwrap().to_string();
    assert!(h.sandbox.images().contains_key(&url));
    std::fs::remove_file(h.path("gone.jpg")).unwrap();
    let removed = h.wait_state("gone.jpg", "removed");
    assert_eq!(removed["remote_deleted"], true);
    assert!(
        !h.sandbox.images().contains_key(&url),
        "deleted at the vendor"
    );
    assert_eq!(h.deletes_at_sandbox(), 1);
    let history = h.cli(&["history", h.path("gone.jpg").to_str().unwrap(), "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["uploaded", "deleted"]);
}

#[test]
fn the_same_bytes_twice_are_uploaded_once() {
    let mut h = Harness::new();
    h.start();
    let bytes = png(51);
    h.drop_file("one.png", &bytes);
    let one = h.wait_state("one.png", "synced");
    h.drop_file("copy/two.png", &bytes);
    let two = h.wait_state("copy/two.png", "synced");
    assert_eq!(one["url"], two["url"]);
    assert_eq!(h.sandbox.uploads(), 1);
    // Removing one copy keeps the remote image the other still uses.
    std::fs::remove_file(h.path("copy/two.png")).unwrap();
    h.wait_state("copy/two.png", "removed");
    assert_eq!(h.deletes_at_sandbox(), 0);
    assert_eq!(h.remote_bytes("one.png").unwrap(), bytes);
}

/// A file rewritten while its upload waits is sent as it is on disk when its turn comes, not as it
/// was when it was taken: its first bytes never reach the vendor.
#[test]
fn a_file_rewritten_while_its_upload_waits_is_never_sent_with_its_old_bytes() {
    let mut h = Harness::with(Options {
        workers: 1,
        settle: "3s",
        ..Options::default()
    });
    h.start();
    // The one slot's first upload is answered 4.5 s after it was carried out: later.png, taken
    // 3 s after it was dropped, waits behind it, rewritten, until before its rewrite settles.
    h.sandbox
        .hold(kingdee::UPLOAD_PATH, Duration::from_millis(4_500));
    h.drop_file("first.png", &png(61));
    h.wait_for("the first upload to be held", |h| {
        h.sandbox.holding(kingdee::UPLOAD_PATH) == 1
    });
    let (old, new) = (png(62), png(63));
    h.drop_file("later.png", &old);
    h.wait_state("later.png", "pending");
    std::fs::write(h.path("later.png"), &new).unwrap();
    h.wait_for("later.png synced with its new bytes", |h| {
        h.remote_bytes("later.png").as_deref() == Some(&new[..])
    });
    let stored: Vec<Vec<u8>> = h.sandbox.images().into_values().map(|i| i.bytes).collect();
    assert!(!stored.contains(&old), "later.png's first bytes were sent");
    // An upload of the old bytes would have been replaced since, and its copy deleted.
    assert_eq!(h.sandbox.uploads(), 2, "first.png, and later.png once");
    assert_eq!(h.deletes_at_sandbox(), 0);
}

#[test]
fn a_folder_moved_in_brings_its_whole_content() {
    let mut h = Harness::new();
    h.start();
    let outside = h.dir.path().join("outside/batch");
    std::fs::create_dir_all(outside.join("nested")).unwrap();
    std::fs::write(outside.join("a.jpg"), jpeg(61)).unwrap();
    std::fs::write(outside.join("b.png"), png(62)).unwrap();
    std::fs::write(outside.join("nested/c.png"), png(63)).unwrap();
    std::fs::rename(&outside, h.path("batch")).unwrap();
    for name in ["batch/a.jpg", "batch/b.png", "batch/nested/c.png"] {
        h.wait_state(name, "synced");
    }
    assert_eq!(h.sandbox.uploads(), 3);
}

/// Each folder is watched on its own: one made and filled at once, one renamed inside the watch
/// and one made inside that are all covered, so what is written into them later is seen by its
/// events (the rescan is an hour away, and the second look at a new folder long past).
#[test]
fn folders_made_renamed_and_nested_are_watched_all_the_way_down() {
    let mut h = Harness::new();
    h.start();
    std::fs::create_dir_all(h.path("a/b/c")).unwrap();
    std::fs::write(h.path("a/b/c/deep.png"), png(81)).unwrap();
    std::fs::write(h.path("a/top.png"), png(82)).unwrap();
    h.wait_state("a/b/c/deep.png", "synced");
    h.wait_state("a/top.png", "synced");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(h.path("a/b/c/second.png"), png(83)).unwrap();
    h.wait_state("a/b/c/second.png", "synced");

    std::fs::rename(h.path("a"), h.path("z")).unwrap();
    h.wait_state("z/b/c/deep.png", "synced");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(h.path("z/b/c/later.png"), png(84)).unwrap();
    h.wait_state("z/b/c/later.png", "synced");
    std::fs::create_dir(h.path("z/b/c/d")).unwrap();
    std::fs::write(h.path("z/b/c/d/last.png"), png(85)).unwrap();
    h.wait_state("z/b/c/d/last.png", "synced");
    std::fs::remove_file(h.path("z/b/c/later.png")).unwrap();
    h.wait_state("z/b/c/later.png", "removed");
    assert_eq!(
        h.sandbox.uploads(),
        5,
        "each file once; the rename sent nothing"
    );
    assert!(h.file("a/b/c/deep.png").is_none(), "the old paths are gone");
}

#[test]
fn changes_made_while_stopped_are_reconciled_at_start() {
    let mut h = Harness::new();
    h.start();
    h.drop_file("keep.png", &png(71));
    h.drop_file("delete-me.png", &png(72));
    h.drop_file("rename-me.png", &png(73));
    h.drop_file("change-me.png", &png(74));
    for name in [
        "keep.png",
        "delete-me.png",
        "rename-me.png",
        "change-me.png",
    ] {
        h.wait_state(name, "synced");
    }
    let deleted_url = h.file("delete-me.png").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let renamed_url = h.file("rename-me.png").unwrap()["url"].clone();
    let changed_url = h.file("change-me.png").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(h.stop().success());

    std::fs::remove_file(h.path("delete-me.png")).unwrap();
    std::fs::rename(h.path("rename-me.png"), h.path("renamed.png")).unwrap();
    std::fs::write(h.path("change-me.png"), png(75)).unwrap();
    std::fs::write(h.path("new.png"), png(76)).unwrap();

    h.start();
    h.wait_state("new.png", "synced");
    let renamed = h.wait_state("renamed.png", "synced");
    assert_eq!(
        renamed["url"], renamed_url,
        "the rename was recognised by content"
    );
    let removed = h.wait_state("delete-me.png", "removed");
    assert_eq!(removed["remote_deleted"], true);
    h.wait_for("the changed file to be uploaded anew", |h| {
        h.file("change-me.png")
            .is_some_and(|f| f["state"] == "synced" && f["url"] != changed_url.as_str())
    });
    assert_eq!(h.remote_bytes("change-me.png").unwrap(), png(75));
    h.wait_for("the superseded and removed copies to be deleted", |h| {
        let images = h.sandbox.images();
        !images.contains_key(&deleted_url) && !images.contains_key(&changed_url)
    });
    assert_eq!(
        h.sandbox.uploads(),
        4 + 2,
        "only the new and the changed file were sent"
    );
    assert_eq!(h.state("keep.png").as_deref(), Some("synced"));
}

#[test]
fn kill_9_in_the_middle_of_a_batch_loses_nothing() {
    let mut h = Harness::new();
    // Hold the first uploads at the vendor so the kill lands while they are in flight.
    h.sandbox
        .inject((0..4).map(|_| imgsyncd::sandbox::Fault::Delay(Duration::from_secs(3))));
    h.start();
    let names: Vec<String> = (0..12).map(|i| format!("batch-{i:02}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(100 + i as u32));
    }
    h.wait_for("uploads to be in flight", |h| {
        h.log().matches("taken: queued for upload").count() >= 4
    });
    std::thread::sleep(Duration::from_millis(1500));
    h.kill9();
    h.start();
    for (i, name) in names.iter().enumerate() {
        h.wait_state(name, "synced");
        assert_eq!(h.remote_bytes(name).unwrap(), png(100 + i as u32), "{name}");
    }
    let uploads = h.sandbox.uploads();
    assert!(
        (12..=12 + 4).contains(&uploads),
        "at most the in-flight uploads are repeated: {uploads}"
    );
    assert!(
        h.log()
            .contains("jobs left running by a previous run went back to the queue")
    );
}

#[test]
fn scan_makes_one_pass_and_reports_with_its_exit_code() {
    let h = Harness::new();
    std::fs::write(h.path("good.png"), png(81)).unwrap();
    std::fs::write(h.path("bad.jpg"), b"not an image").unwrap();
    let out = h.cli(&["scan"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rejected file makes the scan exit 1"
    );
    assert_eq!(h.state("good.png").as_deref(), Some("synced"));
    assert_eq!(h.state("bad.jpg").as_deref(), Some("rejected"));
    std::fs::remove_file(h.path("bad.jpg")).unwrap();
    scan_succeeds(&h);
    assert_eq!(h.sandbox.uploads(), 1);
}

fn scan_succeeds(h: &Harness) {
    let out = h.cli(&["scan"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files in a burst: more than the settle tracker follows at once (1 024).
const BURST: usize = 1_500;

/// A burst of files as an unzip makes it, written within the harness's 2 s settle of what comes
/// next: eight contents over and over, so the tests measure intake, not Kingdee's upload pacing.
/// Returns the contents (file `{prefix}{i:04}.png` holds `contents[i % 8]`).
fn burst(h: &Harness, prefix: &str, seed: u32) -> Vec<Vec<u8>> {
    let contents: Vec<Vec<u8>> = (0..8).map(|i| png(seed + i)).collect();
    for i in 0..BURST {
        std::fs::write(h.path(&format!("{prefix}{i:04}.png")), &contents[i % 8]).unwrap();
    }
    contents
}

/// Waits until every file of a `burst` is synced, then checks each content was sent once and
/// each file's record points at a copy of its own bytes.
fn every_file_of_the_burst_synced(h: &Harness, contents: &[Vec<u8>]) {
    h.wait_for("every file synced", |h| {
        h.status()["files"]["synced"].as_u64() == Some(BURST as u64)
    });
    assert_eq!(h.sandbox.uploads(), 8, "each content sent once");
    let images = h.sandbox.images();
    for row in h.files() {
        let name = row["path"].as_str().unwrap().rsplit('/').next().unwrap();
        let i: usize = name[1..5].parse().unwrap();
        let url = row["url"].as_str().unwrap();
        assert_eq!(images[url].bytes, contents[i % 8], "{name}");
    }
}

fn settling_for_2s() -> Harness {
    Harness::with(common::Options {
        settle: "2s",
        ..common::Options::default()
    })
}

/// Files meant to be still settling when a look finds them: a settle long enough for a loaded
/// test machine to write the burst (and start the daemon) within it.
const BURST_SETTLE: Duration = Duration::from_secs(6);

fn settling_for_a_burst() -> Harness {
    Harness::with(common::Options {
        settle: "6s",
        ..common::Options::default()
    })
}

/// `imgsyncd scan` right after an unzip: more files still settling than one look tracks, and
/// the one pass still takes every one of them.
#[test]
fn scan_right_after_a_burst_takes_every_file() {
    let h = settling_for_2s();
    burst(&h, "s", 91_000);
    scan_succeeds(&h);
    assert_eq!(
        h.status()["files"]["synced"].as_u64(),
        Some(BURST as u64),
        "every file of the burst synced by the one pass"
    );
    assert_eq!(h.sandbox.uploads(), 8);
}

/// `imgsyncd scan` while a file is still being copied in: the pass waits for it to be quiet for
/// the settle period, as the daemon would, and sends it whole. The old pass read it at once:
/// half a PNG, `rejected` as truncated, and the scan failed.
#[test]
fn scan_waits_for_a_file_still_being_written() {
    let h = settling_for_2s();
    let bytes = png(93);
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    let mut writer = std::fs::File::create(h.path("copying.png")).unwrap();
    writer.write_all(head).unwrap();
    let scan = {
        let mut command = h.cli_command();
        std::thread::spawn(move || command.arg("scan").output().unwrap())
    };
    std::thread::sleep(Duration::from_millis(1500));
    writer.write_all(tail).unwrap();
    drop(writer);
    let out = scan.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.state("copying.png").as_deref(), Some("synced"));
    assert_eq!(h.remote_bytes("copying.png"), Some(bytes));
}

#[test]
fn sighup_reloads_new_watches_without_dropping_jobs() {
    let mut h = Harness::new();
    h.start();
    let second = h.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("other.png"), png(91)).unwrap();
    let text = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("  - path: {}\n    vendor: erp\n", second.display());
    std::fs::write(&h.config_path, text).unwrap();
    h.reload();
    let path = second.join("other.png").display().to_string();
    h.wait_for("the new watch's file to sync", |h| {
        h.files()
            .iter()
            .any(|f| f["path"] == path.as_str() && f["state"] == "synced")
    });
    // A broken config is refused and the running one kept.
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, "workers: [\n").unwrap();
    h.reload();
    h.wait_for("the refusal to be logged", |h| {
        h.log().contains("reload refused")
    });
    // The CLI reads the journal's path from the config: give it back the good one.
    std::fs::write(&h.config_path, good).unwrap();
    h.drop_file("after.png", &png(92));
    h.wait_state("after.png", "synced");
}

#[test]
fn a_polled_watch_syncs_and_removes_like_inotify() {
    let mut h = Harness::with(common::Options {
        watch_extra: "    poll: 300ms\n",
        ..common::Options::default()
    });
    h.start();
    assert!(h.log().contains("mode=\"poll\""), "{}", h.log());
    h.drop_file("polled.png", &png(201));
    h.wait_state("polled.png", "synced");
    std::fs::remove_file(h.path("polled.png")).unwrap();
    let row = h.wait_state("polled.png", "removed");
    assert_eq!(row["remote_deleted"], true);
    assert_eq!(h.sandbox.uploads(), 1);
}

/// A folder the daemon may not enter, inside a polled watch: the poller cannot read it at any
/// poll. That is said once, and the rest of the folder is served as usual; the old code took
/// each poll's error for lost events and read the whole tree again at every poll.
#[test]
fn a_polled_watch_says_once_what_it_cannot_read_and_reads_the_rest() {
    if !common::running_as_root() {
        eprintln!("skipped: running the daemon as another user needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::with(common::Options {
        watch_extra: "    poll: 300ms\n",
        as_nobody: true,
        ..common::Options::default()
    });
    let private = h.path("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(private.join("hidden.png"), png(203)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    h.start();
    h.drop_file("open.png", &png(204));
    h.wait_state("open.png", "synced");
    // Some ten polls.
    std::thread::sleep(Duration::from_secs(3));
    let log = h.log();
    let said = log
        .lines()
        .filter(|l| l.contains("cannot read part of the folder"))
        .count();
    assert!(
        (1..=2).contains(&said),
        "once by the poller, maybe once by the first walk\n{log}"
    );
    assert!(!log.contains("reconciling the whole folder"), "{log}");
    assert_eq!(h.sandbox.uploads(), 1);
}

/// A file replaced over a share by deleting it and copying the new version in, which arrives
/// some seconds later: a poll sees the file gone, and only a later poll sees it back. Its remote
/// copy stays (the old code decided the removal a settle period and a second after the first
/// poll, the file still away, and deleted it).
#[test]
fn a_file_a_poll_saw_briefly_gone_keeps_its_remote_copy() {
    let mut h = Harness::with(common::Options {
        watch_extra: "    poll: 2s\n",
        ..common::Options::default()
    });
    h.start();
    h.drop_file("saved.png", &png(202));
    let url = h.wait_state("saved.png", "synced")["url"].clone();
    std::fs::remove_file(h.path("saved.png")).unwrap();
    // Away longer than a poll interval and the settle period and a second after it.
    std::thread::sleep(Duration::from_millis(3800));
    h.drop_file("saved.png", &png(202));
    std::thread::sleep(Duration::from_secs(6));
    assert!(h.sandbox.deleted().is_empty(), "{}", h.log());
    let row = h.wait_state("saved.png", "synced");
    assert_eq!(row["url"], url, "the copy the ERP points at");
    assert_eq!(h.sandbox.uploads(), 1);
}

#[test]
fn the_same_bytes_dropped_at_once_are_uploaded_once() {
    let mut h = Harness::new();
    h.start();
    let bytes = png(301);
    for name in ["twin-a.png", "twin-b.png", "twin-c.png"] {
        h.drop_file(name, &bytes);
    }
    let urls: Vec<_> = ["twin-a.png", "twin-b.png", "twin-c.png"]
        .iter()
        .map(|name| h.wait_state(name, "synced")["url"].clone())
        .collect();
    assert!(urls.iter().all(|u| u == &urls[0]), "{urls:?}");
    assert_eq!(h.sandbox.uploads(), 1);
}

#[test]
fn sigterm_waits_for_transfers_then_releases_them_to_the_queue() {
    let mut h = Harness::new();
    // The vendor holds the answer far longer than the 10 s a stop allows.
    h.sandbox
        .inject([imgsyncd::sandbox::Fault::Delay(Duration::from_secs(60))]);
    h.start();
    h.drop_file("in-flight.png", &png(401));
    h.wait_for("the upload to be in flight", |h| {
        h.log().contains("taken: queued for upload")
    });
    std::thread::sleep(Duration::from_millis(1000));
    // `stop` gives up after 30 s, well before the vendor's 60 s answer: the stop did not wait for it.
    assert!(h.stop().success(), "a stop exits 0");
    assert!(h.log().contains("released to the queue"), "{}", h.log());
    assert_eq!(h.state("in-flight.png").as_deref(), Some("pending"));
    h.start();
    h.wait_state("in-flight.png", "synced");
    assert_eq!(h.remote_bytes("in-flight.png").unwrap(), png(401));
}

#[test]
fn a_hard_link_into_the_folder_is_taken_without_a_write() {
    let mut h = Harness::new();
    h.start();
    let outside = h.dir.path().join("original.png");
    std::fs::write(&outside, png(501)).unwrap();
    std::fs::hard_link(&outside, h.path("linked.png")).unwrap();
    h.wait_state("linked.png", "synced");
    assert_eq!(h.remote_bytes("linked.png").unwrap(), png(501));
}

/// A zip made on a Chinese Windows desktop unpacks to GBK names, which are not UTF-8: such a file
/// is synced like any other, its record found again after a restart (so its copy is never taken
/// for gone), renamed and removed like any other, and shown with `\xNN` for each odd byte.
#[test]
fn a_name_that_is_not_utf8_is_synced_renamed_and_removed_like_any_other() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let mut h = Harness::new();
    h.start();
    // 产品-图.jpg and 新/样.png in GBK.
    let photo = h
        .drop
        .join(OsStr::from_bytes(b"\xb2\xfa\xc6\xb7-\xcd\xbc.jpg"));
    let folder = h.drop.join(OsStr::from_bytes(b"\xd0\xc2"));
    let nested = folder.join(OsStr::from_bytes(b"\xd1\xf9.png"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(&photo, jpeg(81)).unwrap();
    std::fs::write(&nested, png(82)).unwrap();
    // The journal's text: each byte that is not UTF-8 as U+10FF00 + the byte.
    // (C6 B7 and CD BC happen to be valid UTF-8: Ʒ and ͼ, as `ls` shows them too.)
    let drop = h.drop.display().to_string();
    let text = |s: &str| format!("{drop}/{s}");
    let photo_text = text("\u{10FFB2}\u{10FFFA}Ʒ-ͼ.jpg");
    let nested_text = text("\u{10FFD0}\u{10FFC2}/\u{10FFD1}\u{10FFF9}.png");
    let row = |h: &Harness, path: &str| h.files().into_iter().find(|f| f["path"] == path);
    h.wait_for("both files to be synced", |h| {
        [&photo_text, &nested_text]
            .iter()
            .all(|p| row(h, p).is_some_and(|r| r["state"] == "synced"))
    });
    let url = |h: &Harness, p: &str| row(h, p).unwrap()["url"].as_str().unwrap().to_string();
    let images = h.sandbox.images();
    assert_eq!(images[&url(&h, &photo_text)].bytes, jpeg(81));
    assert_eq!(images[&url(&h, &nested_text)].bytes, png(82));
    // The vendor is given the names the GBK bytes spell.
    assert_eq!(images[&url(&h, &photo_text)].filename, "产品-图.jpg");
    assert_eq!(images[&url(&h, &nested_text)].filename, "样.png");

    // People read the odd bytes as `ls -b` shows them: in the log, `files` and `history`.
    let shown = format!("{drop}/\\xB2\\xFAƷ-ͼ.jpg");
    assert!(h.log().contains(&shown), "{}", h.log());
    let files = h.cli(&["files"]);
    assert!(String::from_utf8_lossy(&files.stdout).contains(&shown));
    let history = h.cli_command().arg("history").arg(&photo).output().unwrap();
    assert!(history.status.success(), "{history:?}");
    assert!(String::from_utf8_lossy(&history.stdout).starts_with(&shown));

    // A restart finds both records again: nothing sent again, nothing taken for gone.
    assert!(h.stop().success());
    h.start();
    h.wait_for("the restart's reconcile", |h| {
        h.log().matches("reconciled with the journal").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(h.sandbox.uploads(), 2, "nothing was uploaded again");
    assert_eq!(h.deletes_at_sandbox(), 0, "nothing was deleted");
    assert_eq!(row(&h, &photo_text).unwrap()["state"], "synced");

    // Renamed to another GBK name (产品2.jpg): the record moves with its URL.
    let before = url(&h, &photo_text);
    let renamed = h.drop.join(OsStr::from_bytes(b"\xb2\xfa\xc6\xb72.jpg"));
    std::fs::rename(&photo, &renamed).unwrap();
    let renamed_text = text("\u{10FFB2}\u{10FFFA}Ʒ2.jpg");
    h.wait_for("the record to move", |h| {
        row(h, &renamed_text).is_some_and(|r| r["state"] == "synced")
    });
    assert_eq!(url(&h, &renamed_text), before);
    assert_eq!(h.sandbox.uploads(), 2, "a rename sends nothing");

    // Removed: its copy is deleted at the vendor, as for any name.
    std::fs::remove_file(&nested).unwrap();
    let nested_url = url(&h, &nested_text);
    h.wait_for("the removal", |h| {
        row(h, &nested_text).is_some_and(|r| r["state"] == "removed")
    });
    assert!(!h.sandbox.images().contains_key(&nested_url));
    assert_eq!(h.deletes_at_sandbox(), 1);
}

/// More files settling at once than the tracker follows: the ones left out are found when their
/// folder is read again, and every file is synced with its own bytes, each content sent once.
/// The periodic rescan (1 h here) is not what takes them.
#[test]
fn a_burst_written_into_a_running_watch_is_all_synced() {
    let mut h = settling_for_a_burst();
    h.start();
    let started = std::time::Instant::now();
    let contents = burst(&h, "r", 92_000);
    assert!(
        started.elapsed() < BURST_SETTLE,
        "the files were meant to be settling together"
    );
    every_file_of_the_burst_synced(&h, &contents);
}

/// More files than the settle tracker follows (1 024), written just before the start, so none
/// is quiet yet when the start's walk finds them: the walk tracks the first ones and reads the
/// folder again once the rest are quiet. Every file is synced with its bytes; the periodic rescan (1 h here)
/// is not what takes the rest.
#[test]
fn a_burst_written_just_before_the_start_is_all_synced() {
    let mut h = settling_for_a_burst();
    let started = std::time::Instant::now();
    let contents = burst(&h, "b", 90_000);
    h.start();
    assert!(
        started.elapsed() < BURST_SETTLE,
        "the files were meant to be found before they were quiet"
    );
    every_file_of_the_burst_synced(&h, &contents);
}
