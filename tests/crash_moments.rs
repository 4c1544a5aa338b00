//! kill -9 at named moments, each reached for certain: the sandbox holds the answer to the call
//! in question (after carrying it out), the test polls the sandbox until that call is held, then
//! kills the daemon and restarts it. Afterwards every file is synced once, each path is once in
//! the journal, the vendor holds the exact bytes, uploads are repeated at most once per job that
//! was in flight, and no copy a file uses is deleted.

mod common;
#[path = "common/three.rs"]
mod three;

use std::time::Duration;

use common::Options;
use imgsyncd::adapters::{feishu, jiandaoyun, kingdee};
use three::{Three, Vendor, picture};

/// Longer than any of these tests: a held answer is never sent to the daemon that asked.
const HOLD: Duration = Duration::from_secs(120);

/// Waits until the sandbox holds `n` answers for `path`, kills the daemon, lets answers for
/// `path` go out at once again, and restarts it.
fn kill_while_held(t: &mut Three, paths: &[(&str, usize)]) {
    t.h.wait_for("the call to be held at the vendor", |h| {
        paths.iter().all(|(p, n)| h.sandbox.holding(p) >= *n)
    });
    t.h.kill9();
    for (path, _) in paths {
        t.h.sandbox.release(path);
    }
    t.start(None);
}

/// (a) During a delete at the vendor: the image is deleted, its answer never arrives. After the
/// restart the delete is sent again, finds the image gone, and counts it done: the removal is
/// finished exactly once, and the other file's copy is untouched.
#[test]
fn kill_9_during_a_delete_at_the_vendor() {
    let mut t = Three::new(Options::default());
    t.start(None);
    let gone_bytes = picture(101);
    let kept_bytes = picture(102);
    let gone = t.drop(Vendor::Kingdee, "gone.png", &gone_bytes);
    let kept = t.drop(Vendor::Kingdee, "kept.png", &kept_bytes);
    let url = t.wait_state(&gone, "synced")["url"]
        .as_str()
        .unwrap()
        .to_string();
    t.wait_state(&kept, "synced");

    t.h.sandbox.hold(kingdee::DELETE_PATH, HOLD);
    std::fs::remove_file(&gone).unwrap();
    kill_while_held(&mut t, &[(kingdee::DELETE_PATH, 1)]);
    let row = t.wait_state(&gone, "removed");
    assert_eq!(row["remote_deleted"], true, "{row}");
    assert_eq!(
        t.h.sandbox.deleted(),
        [url],
        "the image deleted exactly once"
    );
    let deletes = t.h.sandbox.requests_to(kingdee::DELETE_PATH);
    assert_eq!(
        deletes, 2,
        "the held delete, and once more after the restart"
    );
    t.assert_all_synced(&[(kept, kept_bytes)]);
    assert_eq!(t.copies(Vendor::Kingdee), 2, "nothing uploaded again");
    assert_eq!(t.h.files().len(), 2, "each path once in the journal");
}

/// (b) During a token refresh (Kingdee and Feishu at once): the vendors revoked their tokens, the
/// next uploads were refused, and the new tokens' answers are held. After the restart new tokens
/// are fetched and each file is uploaded once: nothing was uploaded while the token was held.
#[test]
fn kill_9_during_a_token_refresh() {
    let mut t = Three::new(Options::default());
    t.start(None);
    let mut expected = Vec::new();
    for (i, vendor) in [Vendor::Kingdee, Vendor::Feishu].into_iter().enumerate() {
        let bytes = picture(200 + i as u32);
        let path = t.drop(vendor, &format!("before-{i}.png"), &bytes);
        t.wait_state(&path, "synced");
        expected.push((path, bytes));
    }
    t.h.sandbox.revoke_tokens();
    t.h.sandbox.hold(kingdee::TOKEN_PATH, HOLD);
    t.h.sandbox.hold(feishu::TOKEN_PATH, HOLD);
    for (i, vendor) in [Vendor::Kingdee, Vendor::Feishu].into_iter().enumerate() {
        let bytes = picture(210 + i as u32);
        expected.push((t.drop(vendor, &format!("after-{i}.png"), &bytes), bytes));
    }
    kill_while_held(&mut t, &[(kingdee::TOKEN_PATH, 1), (feishu::TOKEN_PATH, 1)]);
    for (path, _) in &expected {
        t.wait_state(path, "synced");
    }
    t.assert_all_synced(&expected);
    assert_eq!(t.h.files().len(), expected.len(), "each path once");
    assert_eq!(
        t.copies(Vendor::Kingdee),
        2,
        "each Kingdee file uploaded once"
    );
    assert_eq!(
        t.copies(Vendor::Feishu),
        2,
        "each Feishu file uploaded once"
    );
}

/// (c) During Jiandaoyun's upload-token batch fetch, with three files waiting on it: one fetch
/// in flight however many wait, and after the restart a fresh batch serves all three, each
/// uploaded once with its record.
#[test]
fn kill_9_during_a_jiandaoyun_token_batch_fetch() {
    let mut t = Three::new(Options::default());
    t.h.sandbox.hold(jiandaoyun::TOKEN_PATH, HOLD);
    t.start(None);
    let expected: Vec<_> = (0..3u32)
        .map(|i| {
            let bytes = picture(300 + i);
            (
                t.drop(Vendor::Jiandaoyun, &format!("batch-{i}.png"), &bytes),
                bytes,
            )
        })
        .collect();
    t.h.wait_for("the batch fetch to be held", |h| {
        h.sandbox.holding(jiandaoyun::TOKEN_PATH) == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.h.sandbox.holding(jiandaoyun::TOKEN_PATH) + t.h.sandbox.serving(jiandaoyun::TOKEN_PATH),
        1,
        "one fetch at a time"
    );
    kill_while_held(&mut t, &[(jiandaoyun::TOKEN_PATH, 1)]);
    for (path, _) in &expected {
        t.wait_state(path, "synced");
    }
    t.assert_all_synced(&expected);
    assert_eq!(t.copies(Vendor::Jiandaoyun), 3, "each file uploaded once");
    assert_eq!(t.h.sandbox.jiandaoyun_records().len(), 3, "a record each");
    assert_eq!(t.h.sandbox.jiandaoyun_stats().token_calls, 2);
}

/// (d) Between a Jiandaoyun upload and its record: the keys are stored and the records made, but
/// the answers to data/create are held. After the restart no record is made again: the form
/// would show each file twice. Each file waits for a person, its error naming the key and
/// transaction to look for and the command that sends it again; nothing is uploaded again.
/// `imgsyncd retry` then sends one again, as an operator who found no record would.
#[test]
fn kill_9_between_a_jiandaoyun_upload_and_its_record() {
    let mut t = Three::new(Options::default());
    t.h.sandbox.hold(jiandaoyun::CREATE_PATH, HOLD);
    t.start(None);
    let expected: Vec<_> = (0..2u32)
        .map(|i| {
            let bytes = picture(400 + i);
            (
                t.drop(Vendor::Jiandaoyun, &format!("record-{i}.png"), &bytes),
                bytes,
            )
        })
        .collect();
    kill_while_held(&mut t, &[(jiandaoyun::CREATE_PATH, 2)]);
    let records = t.h.sandbox.jiandaoyun_records();
    assert_eq!(records.len(), 2, "the held calls made their records");
    for (path, _) in &expected {
        let row = t.wait_state(path, "failed");
        let error = row["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("creating the form record of key")
                && error.contains("was begun, and its answer never came back")
                && records.iter().any(|r| r
                    .keys
                    .iter()
                    .any(|k| error.contains(&format!("key {k} ")))
                    && error.contains(r.transaction_id.as_deref().unwrap()))
                && error.contains("imgsyncd retry"),
            "{row}"
        );
    }
    assert_eq!(
        t.h.sandbox.jiandaoyun_records().len(),
        2,
        "no record made again"
    );
    let creates = t.h.sandbox.requests_to(jiandaoyun::CREATE_PATH);
    assert_eq!(
        creates, 2,
        "data/create is not sent again after the restart"
    );
    assert_eq!(t.copies(Vendor::Jiandaoyun), 2, "nothing uploaded again");
    assert_eq!(t.h.files().len(), 2, "each path once");

    // An operator who finds no record sends it again.
    let (path, bytes) = &expected[0];
    let retried = t.h.cli(&["retry", path.to_str().unwrap()]);
    assert!(retried.status.success(), "{retried:?}");
    t.wait_state(path, "synced");
    t.assert_all_synced(&[(path.clone(), bytes.clone())]);
    assert_eq!(t.h.sandbox.jiandaoyun_records().len(), 3);
}

/// (d, continued) The file of a record in doubt is removed while the daemon is down: one line (and
/// the file's history) says the form may hold its record, with the key to look for, and the file
/// ends removed. Nothing is created again, not even when the same bytes are put back.
#[test]
fn kill_9_during_a_jiandaoyun_record_then_its_file_removed() {
    let mut t = Three::new(Options::default());
    t.h.sandbox.hold(jiandaoyun::CREATE_PATH, HOLD);
    t.start(None);
    let path = t.drop(Vendor::Jiandaoyun, "record.png", &picture(410));
    t.h.wait_for("the call to be held at the vendor", |h| {
        h.sandbox.holding(jiandaoyun::CREATE_PATH) >= 1
    });
    t.h.kill9();
    std::fs::remove_file(&path).unwrap();
    t.h.sandbox.release(jiandaoyun::CREATE_PATH);
    t.start(None);
    t.wait_state(&path, "removed");
    let records = t.h.sandbox.jiandaoyun_records();
    assert_eq!(records.len(), 1, "the held call made its record");
    let key = &records[0].keys[0];
    // Claimed at the start before the removal is decided, or dropped with the file after: either
    // way one warning names the key to look for.
    t.h.wait_for("the job in doubt to be reported", |h| {
        h.log().lines().any(|l| {
            l.contains(" WARN ")
                && l.contains("its answer never came back")
                && l.contains(&format!("key {key} "))
        })
    });
    let said = t.h.log();
    assert_eq!(
        said.matches("its answer never came back").count(),
        1,
        "said once\n{said}"
    );
    let history = t.h.cli(&["history", "--json", path.to_str().unwrap()]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes.last(), Some(&"unconfirmed"), "{history:#}");
    assert_eq!(
        t.h.sandbox.requests_to(jiandaoyun::CREATE_PATH),
        1,
        "data/create is not sent again"
    );
    // The same bytes put back: still in doubt, they wait for a person; no second record.
    std::fs::write(&path, picture(410)).unwrap();
    let row = t.wait_state(&path, "failed");
    let error = row["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("key {key} ")) && error.contains("imgsyncd retry"),
        "{row}"
    );
    assert_eq!(
        t.h.sandbox.jiandaoyun_records().len(),
        1,
        "no second record"
    );
    assert_eq!(t.h.sandbox.requests_to(jiandaoyun::CREATE_PATH), 1);
}
