//! End to end: vendors that misbehave below the HTTP answer — connections dropped, answers and
//! bodies slower than the client's timeout, rate-limit bursts, successes in an unexpected shape,
//! a share of all calls failing at random, a vendor down for a while — against the real binary,
//! for each vendor the fault applies to. The daemon's vendor calls time out after
//! `IMGSYNCD_TEST_HTTP_TIMEOUT` (a debug-build hook) so a stall costs seconds, not minutes.

mod common;
#[path = "common/three.rs"]
mod three;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Harness, Options};
use imgsyncd::adapters::{feishu, jiandaoyun, kingdee};
use imgsyncd::sandbox::{Fault, JdyEndpoint, QINIU_UPLOAD_PATH, SandboxOptions};
use three::{ALL, Three, Vendor, picture};

/// The daemon's total timeout for a vendor call in these tests.
const TIMEOUT: &str = "3s";
/// Longer than [`TIMEOUT`]: an answer held this long is never heard.
const PAST_TIMEOUT: Duration = Duration::from_secs(5);

fn seed() -> u64 {
    std::env::var("IMGSYNCD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261127)
}

/// The paths of the vendor's business calls, as the sandbox logs them.
fn business_paths(vendor: Vendor) -> &'static [&'static str] {
    match vendor {
        Vendor::Kingdee => &[kingdee::UPLOAD_PATH, kingdee::DELETE_PATH],
        Vendor::Feishu => &[feishu::UPLOAD_PATH],
        Vendor::Jiandaoyun => &[
            jiandaoyun::TOKEN_PATH,
            QINIU_UPLOAD_PATH,
            jiandaoyun::CREATE_PATH,
        ],
    }
}

/// Requests to the vendor's business calls the sandbox answered (or dropped) so far.
fn business_requests(h: &Harness, vendor: Vendor) -> usize {
    let paths = business_paths(vendor);
    h.sandbox
        .log()
        .iter()
        .filter(|l| paths.contains(&l.path.as_str()))
        .count()
}

/// The sandbox's own faults do what they say, seen from a plain client: a reset is a transport
/// error and nothing is carried out, a slow body sends its head and then stalls, a burst says how
/// long to wait, a held answer can be seen in flight.
#[test]
fn the_sandbox_faults_are_what_they_say() {
    let sandbox = imgsyncd::sandbox::Sandbox::start(SandboxOptions::default());
    let url = format!("{}{QINIU_UPLOAD_PATH}", sandbox.base_url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let post = || client.post(&url).body("not a form").send();
    runtime.block_on(async {
        sandbox.inject_jiandaoyun(JdyEndpoint::Upload, [Fault::Reset]);
        let error = post()
            .await
            .expect_err("a dropped connection answers nothing");
        assert!(!error.is_timeout(), "{error:?}");
        let last = sandbox.log().last().cloned().unwrap();
        assert_eq!((last.path.as_str(), last.status), (QINIU_UPLOAD_PATH, 0));

        sandbox.inject_jiandaoyun(
            JdyEndpoint::Upload,
            [Fault::SlowBody(Duration::from_millis(300))],
        );
        let started = Instant::now();
        let response = post().await.expect("the head comes at once");
        assert_eq!(response.status().as_u16(), 400, "Qiniu refuses the form");
        let error = response.bytes().await.expect_err("the body stalls");
        assert!(error.is_timeout(), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(3));

        sandbox.inject_jiandaoyun(
            JdyEndpoint::Upload,
            [Fault::Throttled(Duration::from_secs(7))],
        );
        let response = post().await.unwrap();
        assert_eq!(response.status().as_u16(), 573);
        assert_eq!(response.headers()["retry-after"], "7");

        sandbox.hold(QINIU_UPLOAD_PATH, Duration::from_secs(3));
        let held = post();
        let watch = async {
            let deadline = Instant::now() + Duration::from_secs(1);
            while sandbox.holding(QINIU_UPLOAD_PATH) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sandbox.holding(QINIU_UPLOAD_PATH)
        };
        let (answer, seen) = tokio::join!(held, watch);
        assert_eq!(seen, 1, "the held request is seen in flight");
        assert!(answer.expect_err("held past the timeout").is_timeout());
        sandbox.release(QINIU_UPLOAD_PATH);
        let response = post().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "answered at once again");
    });
    assert_eq!(sandbox.jiandaoyun_uploads().len(), 0);
}

/// 30 % of every vendor's calls fail (5xx, dropped connections, 429 bursts, answers and bodies
/// slower than the timeout), drawn with a seed: every file still ends synced, once, with its
/// exact bytes and (Jiandaoyun) its record. The one exception is a Jiandaoyun record whose answer
/// was held past the timeout: the record may stand, so that file waits for a person, saying so,
/// rather than making a second one. Either way the form holds one record a file.
#[test]
fn with_thirty_percent_of_calls_failing_every_file_syncs() {
    let mut t = Three::new(Options {
        sandbox: SandboxOptions {
            failure_rate: 0.3,
            failure_seed: seed(),
            failure_mix: vec![
                Fault::Http(503),
                Fault::Http(502),
                Fault::Reset,
                Fault::Throttled(Duration::from_secs(1)),
                Fault::SlowAnswer(PAST_TIMEOUT),
                Fault::SlowBody(Duration::from_millis(500)),
            ],
            ..SandboxOptions::default()
        },
        ..Options::default()
    });
    let mut expected = Vec::new();
    for i in 0..24u32 {
        let vendor = ALL[i as usize % 3];
        let bytes = picture(1000 + i);
        let path = t.drop(vendor, &format!("chaos-{i:02}.png"), &bytes);
        expected.push((vendor, path, bytes));
    }
    t.start(Some(TIMEOUT));
    const LOST_RECORD: &str =
        "the form may hold the record already, and creating it again could make two";
    t.h.wait_for("every file to be synced", |h| {
        let files = h.files();
        for file in files.iter().filter(|f| f["state"] == "failed") {
            assert!(
                file["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(LOST_RECORD)),
                "no file is marked failed but for a record's lost answer: {files:#?}"
            );
        }
        files.len() == expected.len() && files.iter().all(|f| f["state"] != "pending")
    });
    let failed: Vec<String> =
        t.h.files()
            .into_iter()
            .filter(|f| f["state"] == "failed")
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
    let synced: Vec<(PathBuf, Vec<u8>)> = expected
        .iter()
        .filter(|(_, path, _)| !failed.contains(&path.display().to_string()))
        .map(|(_, path, bytes)| (path.clone(), bytes.clone()))
        .collect();
    t.assert_all_synced(&synced);
    let forms = expected
        .iter()
        .filter(|(v, ..)| *v == Vendor::Jiandaoyun)
        .count();
    assert_eq!(
        t.h.sandbox.jiandaoyun_records().len(),
        forms,
        "one record a file, none made twice"
    );
    let drawn = t.h.sandbox.faults_drawn();
    eprintln!(
        "seed {}: {} faults drawn: {drawn:?}; waiting for a person: {failed:?}",
        seed(),
        drawn.len()
    );
    assert!(drawn.len() >= 6, "the test really met faults: {drawn:?}");
    let status = t.h.status();
    assert_eq!(status["files"]["failed"], failed.len(), "{status}");
    if failed.is_empty() {
        assert!(
            status["paused_vendors"].as_array().unwrap().is_empty(),
            "{status}"
        );
    }
}

/// A connection dropped during an upload, without an answer: the upload is retried and the file
/// synced once. (The sandbox drops it before carrying the call out: one copy at the vendor.)
#[test]
fn a_connection_reset_mid_upload_is_retried() {
    let mut t = Three::new(Options::default());
    t.start(Some(TIMEOUT));
    let mut expected = Vec::new();
    // Kingdee and Feishu draw from one queue of faults: one at a time.
    for (i, vendor) in ALL.into_iter().enumerate() {
        match vendor {
            Vendor::Jiandaoyun => {
                t.h.sandbox
                    .inject_jiandaoyun(JdyEndpoint::Upload, [Fault::Reset])
            }
            _ => t.h.sandbox.inject([Fault::Reset]),
        }
        let bytes = picture(2000 + i as u32);
        let path = t.drop(vendor, &format!("reset-{i}.png"), &bytes);
        let row = t.wait_state(&path, "synced");
        assert_eq!(row["attempts"], 2, "{row}");
        let history = t.history(&path);
        assert_eq!(history[0]["outcome"], "retry", "{history:?}");
        assert_eq!(history[0]["http_status"], serde_json::Value::Null);
        assert!(
            history[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("transport error")),
            "{history:?}"
        );
        assert_eq!(
            t.copies(vendor),
            1,
            "{vendor:?}: the dropped call stored nothing"
        );
        expected.push((path, bytes));
    }
    t.assert_all_synced(&expected);
    let dropped = t.h.sandbox.log().iter().filter(|l| l.status == 0).count();
    assert_eq!(dropped, 3, "one connection dropped per vendor");
}

/// A burst of rate-limit answers, each asking to wait (`Retry-After`; Feishu's
/// `x-ogw-ratelimit-reset`; Qiniu's 573 for a Jiandaoyun upload): the daemon waits as long as it
/// was asked before calling again, counts none of them as a failed attempt, and syncs the file.
#[test]
fn a_burst_of_429s_with_retry_after_is_waited_out() {
    const BURST: usize = 2;
    let wait = Duration::from_secs(2);
    let mut t = Three::new(Options::default());
    t.start(Some(TIMEOUT));
    let phases: [&[Vendor]; 2] = [&[Vendor::Kingdee, Vendor::Jiandaoyun], &[Vendor::Feishu]];
    let mut expected = Vec::new();
    for (phase, vendors) in phases.into_iter().enumerate() {
        let mut paths = Vec::new();
        for vendor in vendors {
            let burst = vec![Fault::Throttled(wait); BURST];
            match vendor {
                Vendor::Jiandaoyun => t.h.sandbox.inject_jiandaoyun(JdyEndpoint::Upload, burst),
                _ => t.h.sandbox.inject(burst),
            }
            let bytes = picture(6000 + phase as u32 * 10 + paths.len() as u32);
            let path = t.drop(*vendor, &format!("burst-{vendor:?}.png"), &bytes);
            paths.push((*vendor, path.clone()));
            expected.push((path, bytes));
        }
        for (vendor, path) in paths {
            let row = t.wait_state(&path, "synced");
            assert_eq!(row["attempts"], 1, "a 429 is not a failed attempt: {row}");
            let upload = match vendor {
                Vendor::Kingdee => kingdee::UPLOAD_PATH,
                Vendor::Feishu => feishu::UPLOAD_PATH,
                Vendor::Jiandaoyun => QINIU_UPLOAD_PATH,
            };
            let calls: Vec<i64> =
                t.h.sandbox
                    .log()
                    .iter()
                    .filter(|l| l.path == upload)
                    .map(|l| l.at_ms)
                    .collect();
            assert_eq!(calls.len(), BURST + 1, "{vendor:?}: {calls:?}");
            for pair in calls.windows(2) {
                assert!(
                    pair[1] - pair[0] >= wait.as_millis() as i64 - 100,
                    "{vendor:?} called again {} ms after being asked to wait {wait:?}",
                    pair[1] - pair[0]
                );
            }
        }
    }
    t.assert_all_synced(&expected);
    assert_eq!(t.h.status()["files"]["failed"], 0);
}

/// A call the vendor carries out but answers only after the client's timeout (`hold`), or whose
/// body never arrives (`trickle`): the daemon abandons it, retries, and records the copy it was
/// told of; the copy the vendor stored meanwhile is the one duplicate that call may leave. A
/// Kingdee delete treated so ends `removed` with the image deleted once.
fn stalled(fault: Fault, what: &str) {
    let mut t = Three::new(Options::default());
    t.start(Some(TIMEOUT));
    let mut expected = Vec::new();
    let phases: [&[Vendor]; 2] = [
        // Kingdee draws from the shared queue, Jiandaoyun from its own: together.
        &[Vendor::Kingdee, Vendor::Jiandaoyun],
        &[Vendor::Feishu],
    ];
    for (phase, vendors) in phases.into_iter().enumerate() {
        let mut paths = Vec::new();
        for vendor in vendors {
            match vendor {
                Vendor::Jiandaoyun => {
                    t.h.sandbox
                        .inject_jiandaoyun(JdyEndpoint::Upload, [fault.clone()])
                }
                _ => t.h.sandbox.inject([fault.clone()]),
            }
            let bytes = picture(3000 + phase as u32 * 10 + paths.len() as u32);
            let path = t.drop(*vendor, &format!("{what}-{vendor:?}.png"), &bytes);
            paths.push((*vendor, path.clone()));
            expected.push((path, bytes));
        }
        for (vendor, path) in paths {
            let row = t.wait_state(&path, "synced");
            assert_eq!(row["attempts"], 2, "{row}");
            let history = t.history(&path);
            assert_eq!(history[0]["outcome"], "retry", "{history:?}");
            assert!(
                history[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("timed out")),
                "the first call was abandoned: {history:?}"
            );
            assert_eq!(
                t.copies(vendor),
                2,
                "{vendor:?}: the abandoned call's copy and the retry's, no more"
            );
        }
    }
    t.assert_all_synced(&expected);

    // A Kingdee delete whose answer stalls: done at the vendor, retried, counted as done.
    let (path, _) = expected.remove(0);
    let url = t.row(&path).unwrap()["url"].as_str().unwrap().to_string();
    t.h.sandbox.inject([fault]);
    std::fs::remove_file(&path).unwrap();
    let row = t.wait_state(&path, "removed");
    assert_eq!(row["remote_deleted"], true, "{row}");
    assert_eq!(t.h.sandbox.deleted(), [url], "deleted once");
    let deletes = t.h.sandbox.requests_to(kingdee::DELETE_PATH);
    assert_eq!(deletes, 2, "the stalled delete and its retry");
    t.assert_all_synced(&expected);
}

#[test]
fn an_answer_slower_than_the_timeout_is_abandoned_and_retried() {
    stalled(Fault::SlowAnswer(PAST_TIMEOUT), "slow-answer");
}

#[test]
fn a_body_trickled_slower_than_the_timeout_is_abandoned_and_retried() {
    stalled(Fault::SlowBody(Duration::from_millis(400)), "slow-body");
}

/// A success in a shape the adapter does not know (valid JSON, the wrong fields): what the vendor
/// stored cannot be named, so the file waits for a person (`failed`, saying so), the vendor is
/// paused, and nothing is sent again — for each vendor's upload and Jiandaoyun's record.
#[test]
fn a_success_of_unexpected_shape_waits_for_a_person_and_sends_nothing_twice() {
    let mut t = Three::new(Options::default());
    t.start(Some(TIMEOUT));
    let unconfirmed = |path: &PathBuf| {
        let row = t.wait_state(path, "failed");
        let error = row["error"].as_str().unwrap_or("");
        assert!(
            error.contains("imgsyncd retry"),
            "the reason says what to do: {row}"
        );
    };
    // Kingdee's and Jiandaoyun's uploads together; then Feishu's (it shares Kingdee's queue).
    t.h.sandbox.inject([Fault::WrongShape]);
    t.h.sandbox
        .inject_jiandaoyun(JdyEndpoint::Upload, [Fault::WrongShape]);
    let k = t.drop(Vendor::Kingdee, "shape-k.png", &picture(4001));
    let j = t.drop(Vendor::Jiandaoyun, "shape-j.png", &picture(4002));
    unconfirmed(&k);
    unconfirmed(&j);
    t.h.sandbox.inject([Fault::WrongShape]);
    let f = t.drop(Vendor::Feishu, "shape-f.png", &picture(4003));
    unconfirmed(&f);
    // Jiandaoyun's record: the vendor is paused since the upload above, so the next file is
    // its probe; a reload sends it at once.
    t.h.sandbox
        .inject_jiandaoyun(JdyEndpoint::Create, [Fault::WrongShape]);
    let r = t.drop(Vendor::Jiandaoyun, "shape-r.png", &picture(4004));
    t.h.wait_for("the record's file to be queued", |_| {
        t.state(&r).as_deref() == Some("pending")
    });
    t.h.reload();
    unconfirmed(&r);

    let paused: Vec<String> = t.h.status()["paused_vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["vendor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paused, ["erp", "forms", "wiki"], "each vendor paused");
    let sent = || {
        (
            t.copies(Vendor::Kingdee),
            t.copies(Vendor::Feishu),
            t.copies(Vendor::Jiandaoyun),
            t.h.sandbox.jiandaoyun_records().len(),
        )
    };
    assert_eq!(sent(), (1, 1, 2, 1), "each file sent once, one record made");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sent(), (1, 1, 2, 1), "nothing sent again");
    for path in [&k, &j, &f, &r] {
        assert_eq!(t.state(path).as_deref(), Some("failed"));
    }
    let log = t.h.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("failed: ")).collect();
    assert_eq!(failed.len(), 4, "one line per file: {failed:#?}");
    for line in failed {
        assert!(
            line.contains("the vendor may hold it") && !line.contains("transient errors"),
            "the log says why, not a give-up it was not: {line}"
        );
    }
}

/// A vendor that drops every connection for a while: after a few calls it is taken as down and
/// its backlog waits behind one probe — no calls at all meanwhile, however many files wait — and
/// when it answers again the probe finds out by itself (no reload) and every file syncs.
#[test]
fn a_vendor_down_for_a_while_is_held_behind_one_probe_then_drained() {
    let mut t = Three::new(Options {
        sandbox: SandboxOptions {
            failure_mix: vec![Fault::Reset],
            ..SandboxOptions::default()
        },
        ..Options::default()
    });
    t.h.sandbox.set_failure_rate(1.0);
    let mut expected = Vec::new();
    for i in 0..18u32 {
        let vendor = ALL[i as usize % 3];
        let bytes = picture(5000 + i);
        let path = t.drop(vendor, &format!("down-{i:02}.png"), &bytes);
        expected.push((path, bytes));
    }
    t.start(Some(TIMEOUT));
    t.h.wait_for("every vendor to be paused as down", |h| {
        let status = h.status();
        let paused = status["paused_vendors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        paused.len() == 3
            && paused.iter().all(|p| {
                p["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("does not answer")
            })
    });
    // Calls already in flight (or waiting on a pacer) when the last vendor was held end first:
    // the counts are taken once they have not moved for 1.5 s.
    let counts =
        |h: &Harness| -> Vec<usize> { ALL.iter().map(|v| business_requests(h, *v)).collect() };
    let mut before = counts(&t.h);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = counts(&t.h);
        if now == before {
            break;
        }
        before = now;
    }
    for (vendor, tried) in ALL.iter().zip(&before) {
        // Five failures make an outage; the workers' calls already in flight may add one each.
        assert!(
            *tried <= 5 + 4,
            "{vendor:?}: {tried} calls before it was held"
        );
    }
    // The outage: no call at all while the probe is not due.
    std::thread::sleep(Duration::from_secs(5));
    let during: Vec<usize> = ALL.iter().map(|v| business_requests(&t.h, *v)).collect();
    assert_eq!(during, before, "no calls to a vendor that is down");
    assert_eq!(t.h.status()["files"]["failed"], 0);

    // Back up: the next probe (30 s after the pause) finds it, and the backlog drains.
    t.h.sandbox.set_failure_rate(0.0);
    t.h.wait_for("every file to be synced", |h| {
        let files = h.files();
        files.len() == expected.len() && files.iter().all(|f| f["state"] == "synced")
    });
    t.assert_all_synced(&expected);
    let status = t.h.status();
    assert_eq!(status["files"]["failed"], 0, "{status}");
    assert!(status["paused_vendors"].as_array().unwrap().is_empty());
    assert!(t.h.log().contains("answers again: resumed"));
}
