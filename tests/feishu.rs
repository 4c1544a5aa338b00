//! End to end: a drop folder mirrored to the Feishu lingo sandbox by the real binary. What comes
//! back is a file_token; lingo has no delete; its limits are met before anything is sent.

mod common;

use std::time::Duration;

use common::{FeishuVendor, Harness, Options, densest, image};
use image::ImageFormat;
use imgsyncd::sandbox::{Fault, FeishuAccount, Logged, SandboxOptions};
use serde_json::Value;

const UPLOAD: &str = "/open-apis/lingo/v1/files/upload";
const TOKEN: &str = "/open-apis/auth/v3/tenant_access_token/internal";

fn feishu(extra: &'static str) -> Options {
    Options {
        feishu: Some(FeishuVendor {
            extra,
            ..FeishuVendor::default()
        }),
        ..Options::default()
    }
}

fn harness() -> Harness {
    Harness::with(feishu(""))
}

/// A PNG lingo takes: `w`×`h` noisy pixels, well over 3 KB.
fn png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    image(ImageFormat::Png, seed, w, h)
}

/// An icon whose one directory entry holds `png` (the directory says 0, as for ≥256 px).
fn ico_holding(png: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 32, 0];
    out.extend_from_slice(&(png.len() as u32).to_le_bytes());
    out.extend_from_slice(&22u32.to_le_bytes());
    out.extend_from_slice(png);
    out
}

fn uploads(h: &Harness) -> Vec<Logged> {
    h.sandbox
        .log()
        .into_iter()
        .filter(|l| l.path == UPLOAD)
        .collect()
}

fn error_of(h: &Harness, name: &str) -> String {
    h.file(name).unwrap()["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn history(h: &Harness, name: &str) -> Vec<Value> {
    let out = h.cli(&["history", h.path(name).to_str().unwrap(), "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_batch_is_synced_with_file_tokens_and_the_exact_bytes() {
    let mut h = harness();
    h.start();
    let batch: Vec<(&str, Vec<u8>)> = vec![
        ("diagram.png", png(1, 400, 320)),
        ("photo.jpg", image(ImageFormat::Jpeg, 2, 640, 480)),
        ("anim.gif", image(ImageFormat::Gif, 3, 330, 330)),
        ("scan.bmp", image(ImageFormat::Bmp, 4, 330, 330)),
        ("web.webp", image(ImageFormat::WebP, 5, 330, 330)),
        ("favicon.ico", ico_holding(&png(6, 400, 400))),
        (
            "产品 图片 #1 (final).JPG",
            image(ImageFormat::Jpeg, 7, 500, 500),
        ),
        ("sub/dir/deep.png", png(8, 330, 330)),
    ];
    for (name, bytes) in &batch {
        h.drop_file(name, bytes);
    }
    let mut tokens = Vec::new();
    for (name, bytes) in &batch {
        let row = h.wait_state(name, "synced");
        let token = row["file_token"]
            .as_str()
            .expect("a file_token is recorded");
        let held = h
            .sandbox
            .feishu_files()
            .get(token)
            .cloned()
            .expect("lingo holds the file_token");
        assert_eq!(&held.bytes, bytes, "{name}: lingo holds the exact bytes");
        assert_eq!(
            held.name,
            name.rsplit('/').next().unwrap(),
            "{name}: its name is sent"
        );
        assert_eq!(held.fields, ["name", "file"]);
        assert_eq!(row["vendor"], "wiki");
        assert_eq!(row["kind"], "feishu");
        assert_eq!(row["url"], Value::Null);
        assert_eq!(row["error"], Value::Null);
        assert_eq!(row["attempts"], 1);
        tokens.push(token.to_string());
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), batch.len(), "one file_token per file");
    assert_eq!(uploads(&h).len(), batch.len(), "each file sent once");
    assert_eq!(h.sandbox.feishu_refused(), 0);
    assert!(h.stop().success());
}

#[test]
fn a_token_revoked_mid_batch_fails_no_file() {
    let mut h = harness();
    h.start();
    let first: Vec<String> = (0..4).map(|i| format!("before-{i}.png")).collect();
    for (i, name) in first.iter().enumerate() {
        h.drop_file(name, &png(100 + i as u32, 330, 330));
    }
    for name in &first {
        h.wait_state(name, "synced");
    }
    // Feishu invalidates the token the daemon holds; the rest of the batch arrives.
    h.sandbox.revoke_tokens();
    let second: Vec<String> = (0..8).map(|i| format!("after-{i}.png")).collect();
    for (i, name) in second.iter().enumerate() {
        h.drop_file(name, &png(200 + i as u32, 330, 330));
    }
    for (i, name) in second.iter().enumerate() {
        let row = h.wait_state(name, "synced");
        assert_eq!(
            row["attempts"], 1,
            "{name}: the refresh was no failed attempt"
        );
        assert_eq!(h.feishu_bytes(name).unwrap(), png(200 + i as u32, 330, 330));
        let outcomes: Vec<String> = history(&h, name)
            .iter()
            .map(|a| a["outcome"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(outcomes, ["uploaded"], "{name}");
    }
    let log = h.sandbox.log();
    assert!(
        log.iter()
            .any(|l| l.path == UPLOAD && l.errcode == Some(99_991_663)),
        "the stale token was refused"
    );
    let token_calls = log.iter().filter(|l| l.path == TOKEN).count();
    assert_eq!(
        token_calls, 2,
        "one fetch at start, one refresh shared by every worker"
    );
    assert_eq!(h.status()["files"]["synced"], 12);
}

#[test]
fn images_outside_lingos_limits_are_rejected_locally_and_never_sent() {
    let mut h = harness();
    h.start();
    // A flat grey 400×400 PNG compresses to far under 3 KB.
    let light = {
        let img = ::image::GrayImage::from_pixel(400, 400, ::image::Luma([200]));
        let mut out = std::io::Cursor::new(Vec::new());
        ::image::DynamicImage::ImageLuma8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    assert!(light.len() < 3 * 1024, "{}", light.len());
    let huge = image(ImageFormat::Bmp, 11, 1900, 1900);
    assert!(huge.len() > 10 * 1024 * 1024);
    h.drop_file("small.png", &png(12, 100, 100));
    h.drop_file("wide.png", &png(13, 5000, 400));
    h.drop_file("light.png", &light);
    h.drop_file("huge.bmp", &huge);
    h.drop_file("good.png", &png(14, 320, 320));
    h.wait_state("good.png", "synced");
    let expected = [
        (
            "small.png",
            "too small for wiki: 100×100 px: width 100 and height 100 are below Feishu's 320 px"
                .to_string(),
        ),
        (
            "wide.png",
            "too large for wiki: 5000×400 px: width 5000 is above Feishu's 4096 px".to_string(),
        ),
        (
            "light.png",
            format!(
                "too small for wiki: {}: below Feishu's 3 KB minimum",
                imgsyncd::adapters::human_size(light.len() as u64)
            ),
        ),
        (
            "huge.bmp",
            format!(
                "too large for wiki: {}: above Feishu's 10 MB maximum",
                imgsyncd::adapters::human_size(huge.len() as u64)
            ),
        ),
    ];
    for (name, reason) in &expected {
        h.wait_state(name, "rejected");
        assert_eq!(&error_of(&h, name), reason, "{name}");
        assert!(
            h.log()
                .lines()
                .any(|l| l.contains("rejected") && l.contains(name) && l.contains(reason.as_str())),
            "{name}: one log line says why\n{}",
            h.log()
        );
    }
    assert_eq!(
        uploads(&h).len(),
        1,
        "the sandbox saw only the good file: no request for a file outside the limits"
    );
    assert_eq!(h.sandbox.feishu_refused(), 0);
}

#[test]
fn a_long_name_is_shortened_to_100_characters_keeping_its_extension() {
    let mut h = harness();
    h.start();
    let ascii = format!("{}.png", "a".repeat(116));
    let unicode = format!("{}.png", "é".repeat(110));
    assert_eq!((ascii.chars().count(), unicode.chars().count()), (120, 114));
    h.drop_file(&ascii, &png(21, 330, 330));
    h.drop_file(&unicode, &png(22, 330, 330));
    for (name, sent) in [
        (&ascii, format!("{}.png", "a".repeat(96))),
        (&unicode, format!("{}.png", "é".repeat(96))),
    ] {
        let row = h.wait_state(name, "synced");
        let held = &h.sandbox.feishu_files()[row["file_token"].as_str().unwrap()];
        assert_eq!(held.name, sent);
        assert_eq!(held.name.chars().count(), 100);
        assert_eq!(
            row["path"],
            h.path(name).display().to_string(),
            "the journal keeps the whole name"
        );
    }
}

#[test]
fn a_backlog_drains_at_the_configured_rate_with_no_429() {
    let mut h = Harness::with(Options {
        workers: 8,
        ..feishu("    per_second: 10\n")
    });
    let names: Vec<String> = (0..30).map(|i| format!("backlog-{i:02}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(300 + i as u32, 330, 330));
    }
    h.start();
    for name in &names {
        h.wait_state(name, "synced");
    }
    let sent = uploads(&h);
    assert_eq!(sent.len(), names.len(), "each file sent once");
    assert!(sent.iter().all(|l| l.status == 200), "no 429");
    // The pacer counts when it lets a call go, the sandbox when the body has arrived; a loaded
    // test machine puts a few hundred ms between the two, so a second is judged as 750 ms here
    // (unpaced, the 30 would arrive within a few hundred ms).
    assert!(
        densest(&sent, 750) <= 10,
        "never more than 10 in a second: {}",
        densest(&sent, 750)
    );
    let times = sent.iter().map(|l| l.at_ms);
    let span = times.clone().max().unwrap() - times.min().unwrap();
    assert!(span >= 1700, "30 files at 10 a second take 2 s: {span} ms");
}

#[test]
fn a_vendor_stricter_than_the_config_is_met_with_429s_absorbed() {
    let mut h = Harness::with(Options {
        sandbox: SandboxOptions {
            feishu_per_second: 4,
            ..SandboxOptions::default()
        },
        workers: 6,
        ..feishu("    per_second: 20\n")
    });
    let names: Vec<String> = (0..24).map(|i| format!("strict-{i:02}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        h.drop_file(name, &png(400 + i as u32, 330, 330));
    }
    h.start();
    for (i, name) in names.iter().enumerate() {
        let row = h.wait_state(name, "synced");
        assert_eq!(h.feishu_bytes(name).unwrap(), png(400 + i as u32, 330, 330));
        assert_eq!(
            row["attempts"], 1,
            "a 429 is not counted as a failed attempt: {row}"
        );
    }
    let sent = uploads(&h);
    let limited = sent.iter().filter(|l| l.status == 429).count();
    assert!(limited > 0, "the sandbox's window was hit");
    assert!(
        sent.iter()
            .filter(|l| l.status == 429)
            .all(|l| l.errcode == Some(99_991_400))
    );
    assert_eq!(sent.len() - limited, names.len(), "each file stored once");
    let status = h.status();
    assert_eq!(status["files"]["synced"], names.len());
    assert!(
        status["files"]["failed"].is_null() || status["files"]["failed"] == 0,
        "{status}"
    );
    assert!(status["paused_vendors"].as_array().unwrap().is_empty());
}

#[test]
fn transient_lingo_errors_are_retried_and_a_bad_file_rejected() {
    let mut h = harness();
    h.sandbox.inject([
        Fault::Gateway(2_250_002),
        Fault::Http(502),
        Fault::Business(1_234_567),
    ]);
    h.start();
    h.drop_file("flaky.png", &png(31, 330, 330));
    let row = h.wait_state("flaky.png", "synced");
    assert_eq!(row["attempts"], 4);
    let seen: Vec<(String, Option<u64>, Option<String>)> = history(&h, "flaky.png")
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_string(),
                a["http_status"].as_u64(),
                a["vendor_code"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("retry".into(), Some(500), Some("2250002".into())),
            ("retry".into(), Some(502), Some("502".into())),
            ("retry".into(), Some(200), Some("1234567".into())),
            ("uploaded".into(), Some(200), Some("0".into())),
        ]
    );
    // A file lingo itself calls invalid is rejected with its reason, never retried.
    h.sandbox.inject([Fault::Gateway(2_250_001)]);
    h.drop_file("refused.png", &png(32, 330, 330));
    h.wait_state("refused.png", "rejected");
    let error = error_of(&h, "refused.png");
    assert!(
        error.starts_with("feishu upload: ") && error.contains("(code 2250001, HTTP 400)"),
        "{error}"
    );
}

#[test]
fn refused_credentials_pause_the_vendor_and_a_reload_resumes() {
    let wrong = FeishuAccount {
        app_secret: "definitely-wrong-feishu-secret".into(),
        ..FeishuAccount::default()
    };
    let mut h = Harness::with(Options {
        feishu: Some(FeishuVendor {
            account: Some(wrong),
            extra: "",
        }),
        ..Options::default()
    });
    let out = h.cli(&["check", "--online"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "wiki: FAILED: feishu refused app_id/app_secret: app secret invalid (code 10014)"
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("definitely-wrong"),
        "no secret in the output"
    );

    h.start();
    h.drop_file("waiting.png", &png(41, 330, 330));
    h.wait_for("the vendor to be paused", |h| {
        h.status()["paused_vendors"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    let status = h.status();
    let paused = &status["paused_vendors"][0];
    assert_eq!(paused["vendor"], "wiki");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("feishu refused app_id/app_secret"),
        "{paused}"
    );
    assert_eq!(h.state("waiting.png").as_deref(), Some("pending"));
    assert!(
        !h.log().contains("definitely-wrong"),
        "no secret in the log"
    );
    assert_eq!(uploads(&h).len(), 0);

    h.write_feishu_config(&h.sandbox.options().feishu);
    let out = h.cli(&["check", "--online"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wiki: token fetched, credentials work"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    h.reload();
    h.wait_state("waiting.png", "synced");
    assert!(h.status()["paused_vendors"].as_array().unwrap().is_empty());
}

#[test]
fn a_removed_file_keeps_its_remote_copy_and_twins_share_a_token() {
    let mut h = harness();
    h.start();
    let bytes = png(51, 330, 330);
    h.drop_file("one.png", &bytes);
    let one = h.wait_state("one.png", "synced");
    h.drop_file("copy/two.png", &bytes);
    let two = h.wait_state("copy/two.png", "synced");
    assert_eq!(
        one["file_token"], two["file_token"],
        "the same bytes are sent once"
    );
    assert_eq!(uploads(&h).len(), 1);

    std::fs::remove_file(h.path("one.png")).unwrap();
    std::fs::remove_file(h.path("copy/two.png")).unwrap();
    let removed = h.wait_state("one.png", "removed");
    assert_ne!(removed["remote_deleted"], true);
    h.wait_state("copy/two.png", "removed");
    std::thread::sleep(Duration::from_millis(1000));
    let token = one["file_token"].as_str().unwrap();
    assert_eq!(
        h.sandbox.feishu_files()[token].bytes,
        bytes,
        "lingo has no delete: the copy stays"
    );
}

/// With a Kingdee backlog paced at 2 a second, a Feishu file dropped meanwhile is not queued
/// behind it: the free slots go to the vendor with the fewest transfers in flight.
#[test]
fn a_slow_vendors_backlog_never_holds_up_another_vendors_files() {
    let mut h = harness();
    let kingdee_drop = h.dir.path().join("kingdee");
    std::fs::create_dir_all(&kingdee_drop).unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap().replacen(
        "    domain:",
        "    per_second: 2\n    domain:",
        1,
    ) + &format!("  - path: {}\n    vendor: erp\n", kingdee_drop.display());
    std::fs::write(&h.config_path, config).unwrap();
    let backlog = 60;
    for i in 0..backlog {
        std::fs::write(
            kingdee_drop.join(format!("k{i:02}.png")),
            common::png(900 + i),
        )
        .unwrap();
    }
    h.start();
    // Well under way: every slot is on the Kingdee backlog, with jobs claimed ahead.
    h.wait_for("the Kingdee backlog to be under way", |h| {
        h.sandbox.uploads() >= 10
    });
    h.drop_file("urgent.png", &png(77, 330, 330));
    h.wait_state("urgent.png", "synced");
    // Counted at the sandbox when the Feishu upload arrived, not when this test saw it synced.
    let log = h.sandbox.log();
    let urgent_at = log.iter().find(|l| l.path == UPLOAD).unwrap().at_ms;
    let kingdee_done = log
        .iter()
        .filter(|l| l.path.ends_with("image_upload") && l.errcode == Some(0) && l.at_ms < urgent_at)
        .count();
    assert!(
        kingdee_done < backlog as usize / 2,
        "the Feishu file waited behind the Kingdee backlog ({kingdee_done} of {backlog} sent first)"
    );
    assert_eq!(h.feishu_bytes("urgent.png").unwrap(), png(77, 330, 330));
}
