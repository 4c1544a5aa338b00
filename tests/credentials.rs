//! The bad-credentials matrix, per vendor, with the real binary: every way a vendor can refuse *us*
//! (a wrong secret, a signature that fails, a clock off, a wrong app or form, a quota used up)
//! pauses that vendor with a reason that says what to check, in the log and in `status --json`;
//! no file is burned (none `failed` or `rejected`, even past `give_up_after`; none sent); the other
//! vendors keep syncing; and once the cause is fixed, a SIGHUP sends every file, once.
//!
//! The cases are a table. Each case is a vendor of its own in one daemon (one watch each), so the
//! whole table runs in one start; the vendors' clock and the attachment quota belong to the whole
//! sandbox, so they get a daemon (and a sandbox) each, running in parallel.

mod common;
#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;
#[path = "common/service_manager.rs"]
mod service_manager;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use metrics_endpoint::{samples, scrape};
use service_manager::Manager;

use common::{Harness, Options, image};
use imgsyncd::sandbox::{FeishuAccount, JiandaoyunAccount, KingdeeAccount, SandboxOptions};
use serde_json::Value;

/// Paused time must not count towards giving up: a file queued behind a paused vendor for longer
/// than this is still `pending`.
const GIVE_UP_AFTER: &str = "3s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kingdee,
    Feishu,
    Jiandaoyun,
}

/// The credentials a vendor is configured with.
#[derive(Debug, Clone)]
struct Creds {
    kingdee: KingdeeAccount,
    feishu: FeishuAccount,
    jiandaoyun: JiandaoyunAccount,
}

impl Creds {
    fn of(h: &Harness) -> Creds {
        let options = h.sandbox.options();
        Creds {
            kingdee: options.kingdee,
            feishu: options.feishu,
            jiandaoyun: options.jiandaoyun,
        }
    }
}

/// One row of the matrix: a vendor configured wrong in one way, and what its pause must say.
struct Case {
    vendor: &'static str,
    kind: Kind,
    /// Makes the good credentials wrong (`None`: the vendor is configured right; a control, or a
    /// case whose cause lies with the vendor).
    wrong: Option<fn(&mut Creds)>,
    /// Every one of these is in the pause's reason (in `status --json` and in the log).
    reason: &'static [&'static str],
}

/// Secrets the wrong configs carry: none may reach a log line or `status`.
const WRONG_SECRETS: &[&str] = &[
    "wrong-kingdee-client-secret-1f2e",
    "wrong-kingdee-app-secret-3d4c",
    "wrong-feishu-app-secret-5b6a",
    "wrong-jiandaoyun-api-key-7988",
];

const MATRIX: &[Case] = &[
    // Kingdee signs every call with client_secret: a wrong one fails the signature (4002).
    Case {
        vendor: "k_client_secret",
        kind: Kind::Kingdee,
        wrong: Some(|c| c.kingdee.client_secret = WRONG_SECRETS[0].into()),
        reason: &["errcode 4002", "check client_id and client_secret"],
    },
    Case {
        vendor: "k_client_id",
        kind: Kind::Kingdee,
        wrong: Some(|c| c.kingdee.client_id = "999999".into()),
        reason: &["errcode 4001", "check client_id and client_secret"],
    },
    // app_signature is an HMAC of app_key with app_secret: either wrong fails it (1030002006).
    Case {
        vendor: "k_app_secret",
        kind: Kind::Kingdee,
        wrong: Some(|c| c.kingdee.app_secret = WRONG_SECRETS[1].into()),
        reason: &["errcode 1030002006", "check app_key and app_secret"],
    },
    Case {
        vendor: "k_app_key",
        kind: Kind::Kingdee,
        wrong: Some(|c| c.kingdee.app_key = "wrongAppKey9".into()),
        reason: &["errcode 1030002006", "check app_key and app_secret"],
    },
    // The account set (the app's "entry") named by domain: the token is fine, the upload is not.
    Case {
        vendor: "k_domain",
        kind: Kind::Kingdee,
        wrong: Some(|c| c.kingdee.domain = "https://other.jdy.com".into()),
        reason: &["errcode 4012", "check domain"],
    },
    Case {
        vendor: "f_app_secret",
        kind: Kind::Feishu,
        wrong: Some(|c| c.feishu.app_secret = WRONG_SECRETS[2].into()),
        reason: &["code 10014", "check app_id and app_secret"],
    },
    Case {
        vendor: "f_app_id",
        kind: Kind::Feishu,
        wrong: Some(|c| c.feishu.app_id = "cli_not_this_app00".into()),
        reason: &["code 10003", "check app_id and app_secret"],
    },
    Case {
        vendor: "j_api_key",
        kind: Kind::Jiandaoyun,
        wrong: Some(|c| c.jiandaoyun.api_key = WRONG_SECRETS[3].into()),
        reason: &["code 8301", "check api_key"],
    },
    Case {
        vendor: "j_app_id",
        kind: Kind::Jiandaoyun,
        wrong: Some(|c| c.jiandaoyun.app_id = "000000000000000000000000".into()),
        reason: &["code 17018", "check app_id and entry_id"],
    },
    Case {
        vendor: "j_entry_id",
        kind: Kind::Jiandaoyun,
        wrong: Some(|c| c.jiandaoyun.entry_id = "111111111111111111111111".into()),
        reason: &["code 3000", "check app_id and entry_id"],
    },
    // Controls: configured right, they sync while the others are paused.
    Case {
        vendor: "ok_kingdee",
        kind: Kind::Kingdee,
        wrong: None,
        reason: &[],
    },
    Case {
        vendor: "ok_feishu",
        kind: Kind::Feishu,
        wrong: None,
        reason: &[],
    },
    Case {
        vendor: "ok_forms",
        kind: Kind::Jiandaoyun,
        wrong: None,
        reason: &[],
    },
];

/// A picture every vendor takes (lingo wants 320 px a side and 3 KB).
fn picture(seed: u32) -> Vec<u8> {
    image(image::ImageFormat::Png, seed, 330, 330)
}

const FILES_PER_VENDOR: usize = 2;

/// A daemon feeding one drop folder per case, each to a vendor of its own.
struct Matrix<'a> {
    h: Harness,
    cases: &'a [Case],
    /// The files dropped, per vendor: path and bytes.
    dropped: BTreeMap<&'static str, Vec<(PathBuf, Vec<u8>)>>,
}

impl<'a> Matrix<'a> {
    fn new(cases: &'a [Case], sandbox: SandboxOptions) -> Matrix<'a> {
        let h = Harness::with(Options {
            sandbox: SandboxOptions {
                // Every Kingdee vendor fetches its own app-token, and paused ones probe again.
                kingdee_token_per_minute: 1000,
                ..sandbox
            },
            ..Options::default()
        });
        let matrix = Matrix {
            h,
            cases,
            dropped: BTreeMap::new(),
        };
        matrix.write_config(true);
        matrix
    }

    fn drop_dir(&self, vendor: &str) -> PathBuf {
        self.h.dir.path().join("drops").join(vendor)
    }

    /// The config: each case's vendor with its wrong credentials (`broken`) or the right ones.
    fn write_config(&self, broken: bool) {
        let base = self.h.sandbox.base_url();
        let mut vendors = String::new();
        let mut watches = String::new();
        for case in self.cases {
            let mut creds = Creds::of(&self.h);
            if let (true, Some(wrong)) = (broken, case.wrong) {
                wrong(&mut creds);
            }
            let name = case.vendor;
            vendors += &match case.kind {
                Kind::Kingdee => format!(
                    "  {name}:\n    kind: kingdee\n    base_url: {base}\n    client_id: \"{}\"\n    \
                     client_secret: {}\n    app_key: {}\n    app_secret: {}\n    domain: {}\n",
                    creds.kingdee.client_id,
                    creds.kingdee.client_secret,
                    creds.kingdee.app_key,
                    creds.kingdee.app_secret,
                    creds.kingdee.domain
                ),
                Kind::Feishu => format!(
                    "  {name}:\n    kind: feishu\n    base_url: {base}\n    app_id: {}\n    app_secret: {}\n",
                    creds.feishu.app_id, creds.feishu.app_secret
                ),
                Kind::Jiandaoyun => format!(
                    "  {name}:\n    kind: jiandaoyun\n    base_url: {base}\n    api_key: {}\n    \
                     app_id: {}\n    entry_id: {}\n    create_record:\n      image_widget: {}\n",
                    creds.jiandaoyun.api_key,
                    creds.jiandaoyun.app_id,
                    creds.jiandaoyun.entry_id,
                    common::IMAGE_WIDGET
                ),
            };
            let dir = self.drop_dir(name);
            std::fs::create_dir_all(&dir).unwrap();
            watches += &format!("  - path: {}\n    vendor: {name}\n", dir.display());
        }
        let text = format!(
            "journal: {}\nworkers: 4\nsettle: 300ms\nrescan: 1h\ngive_up_after: {GIVE_UP_AFTER}\n\
             vendors:\n{vendors}watches:\n{watches}",
            self.h.dir.path().join("journal.sqlite3").display()
        );
        std::fs::write(&self.h.config_path, text).unwrap();
    }

    fn drop_files(&mut self) {
        let staging = self.h.dir.path().join("staging-matrix");
        std::fs::create_dir_all(&staging).unwrap();
        for (n, case) in self.cases.iter().enumerate() {
            for i in 0..FILES_PER_VENDOR {
                let bytes = picture(5000 + (n * FILES_PER_VENDOR + i) as u32);
                let name = format!("{}-{i}.png", case.vendor);
                std::fs::write(staging.join(&name), &bytes).unwrap();
                let path = self.drop_dir(case.vendor).join(&name);
                std::fs::rename(staging.join(&name), &path).unwrap();
                self.dropped
                    .entry(case.vendor)
                    .or_default()
                    .push((path, bytes));
            }
        }
    }

    fn paused(&self) -> BTreeMap<String, String> {
        self.h.status()["paused_vendors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["vendor"].as_str().unwrap_or("").to_string(),
                    p["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn rows_of(&self, vendor: &str) -> Vec<Value> {
        self.h
            .files()
            .into_iter()
            .filter(|f| f["vendor"] == vendor)
            .collect()
    }

    /// The cases expected to pause: the rows with a reason.
    fn refused(&self) -> impl Iterator<Item = &Case> {
        self.cases.iter().filter(|c| !c.reason.is_empty())
    }

    /// Waits until every refused vendor is paused and every control's files are synced, then
    /// checks what the pause says and that no file was burned or sent.
    fn expect_paused(&self) {
        let refused: Vec<&str> = self.refused().map(|c| c.vendor).collect();
        self.h.wait_for("every refused vendor to be paused", |_| {
            let paused = self.paused();
            refused.iter().all(|v| paused.contains_key(*v))
        });
        for case in self.cases.iter().filter(|c| c.reason.is_empty()) {
            self.h
                .wait_for(&format!("{}'s files to be synced", case.vendor), |_| {
                    let rows = self.rows_of(case.vendor);
                    rows.len() == FILES_PER_VENDOR && rows.iter().all(|f| f["state"] == "synced")
                });
        }
        // Longer than give_up_after: a paused vendor's files are not given up on.
        std::thread::sleep(Duration::from_secs(4));
        let paused = self.paused();
        let log = self.h.log();
        for case in self.refused() {
            let reason = &paused[case.vendor];
            for part in case.reason {
                assert!(
                    reason.contains(part),
                    "{}: the pause says {part:?}: {reason}",
                    case.vendor
                );
            }
            let logged = log.lines().any(|l| {
                l.contains(&format!("vendor {} paused: ", case.vendor))
                    && case.reason.iter().all(|part| l.contains(part))
            });
            assert!(logged, "{}: one log line says why\n{log}", case.vendor);
            let rows = self.rows_of(case.vendor);
            assert_eq!(rows.len(), FILES_PER_VENDOR, "{}: {rows:#?}", case.vendor);
            for row in rows {
                assert_eq!(
                    row["state"], "pending",
                    "{}: no file burned: {row}",
                    case.vendor
                );
            }
        }
        assert_eq!(
            paused.len(),
            refused.len(),
            "only the refused vendors are paused: {paused:#?}"
        );
        self.expect_nothing_sent_for_paused();
        let status = serde_json::to_string(&self.h.status()).unwrap();
        for secret in WRONG_SECRETS {
            assert!(!log.contains(secret), "a wrong secret reached the log");
            assert!(!status.contains(secret), "a wrong secret reached status");
        }
    }

    /// What the vendors hold: only the controls' files (each once).
    fn expect_nothing_sent_for_paused(&self) {
        let controls: Vec<&Case> = self.cases.iter().filter(|c| c.reason.is_empty()).collect();
        let count =
            |kind: Kind| controls.iter().filter(|c| c.kind == kind).count() * FILES_PER_VENDOR;
        assert_eq!(
            self.h.sandbox.uploads(),
            count(Kind::Kingdee),
            "kingdee uploads"
        );
        assert_eq!(
            self.h.sandbox.feishu_files().len(),
            count(Kind::Feishu),
            "lingo files"
        );
        assert_eq!(
            self.h.sandbox.jiandaoyun_uploads().len(),
            count(Kind::Jiandaoyun),
            "jiandaoyun keys"
        );
    }

    /// After the fix and a SIGHUP: every file synced once, with its exact bytes at its vendor.
    fn expect_all_synced(&self) {
        let total: usize = self.dropped.values().map(Vec::len).sum();
        self.h.wait_for("every file to be synced", |h| {
            let files = h.files();
            files.len() == total && files.iter().all(|f| f["state"] == "synced")
        });
        let files = self.h.files();
        let images = self.h.sandbox.images();
        let lingo = self.h.sandbox.feishu_files();
        let forms = self.h.sandbox.jiandaoyun_uploads();
        for (vendor, dropped) in &self.dropped {
            for (path, bytes) in dropped {
                let row = files
                    .iter()
                    .find(|f| f["path"] == path.display().to_string().as_str())
                    .unwrap_or_else(|| panic!("{vendor}: {} in the journal", path.display()));
                assert_eq!(row["vendor"], *vendor);
                let held = match (
                    row["url"].as_str(),
                    row["file_token"].as_str(),
                    row["key"].as_str(),
                ) {
                    (Some(url), _, _) => images.get(url).map(|i| i.bytes.clone()),
                    (_, Some(token), _) => lingo.get(token).map(|f| f.bytes.clone()),
                    (_, _, Some(key)) => {
                        assert!(row["record_id"].is_string(), "{row}");
                        forms.get(key).map(|u| u.bytes.clone())
                    }
                    _ => None,
                };
                assert_eq!(held.as_ref(), Some(bytes), "{row}");
            }
        }
        let count =
            |kind: Kind| self.cases.iter().filter(|c| c.kind == kind).count() * FILES_PER_VENDOR;
        assert_eq!(self.h.sandbox.uploads(), count(Kind::Kingdee), "each once");
        assert_eq!(lingo.len(), count(Kind::Feishu), "each once");
        assert_eq!(forms.len(), count(Kind::Jiandaoyun), "each once");
        let status = self.h.status();
        assert!(self.paused().is_empty(), "{status}");
        assert_eq!(status["files"]["failed"], 0, "{status}");
        assert_eq!(status["files"]["rejected"], 0, "{status}");
        for case in self.refused() {
            let resumed = format!("vendor {} answers again: resumed", case.vendor);
            assert!(
                self.h.log().contains(&resumed),
                "{resumed}\n{}",
                self.h.log()
            );
        }
    }
}

#[test]
fn every_refused_credential_pauses_its_vendor_until_a_reload_with_the_right_one() {
    let mut m = Matrix::new(MATRIX, SandboxOptions::default());
    m.h.start();
    m.drop_files();
    m.expect_paused();
    m.write_config(false);
    m.h.reload();
    m.expect_all_synced();
}

/// A host clock two hours ahead of the vendors': Kingdee refuses every signed timestamp (4006)
/// and the pause measures the skew from its `Date` header; Jiandaoyun's upload tokens are dead on
/// arrival by this host's clock; lingo, which checks no time, keeps syncing. Put right (and a
/// SIGHUP), both resume.
#[test]
fn a_clock_off_pauses_the_vendors_that_check_time_and_says_the_clock_is_off() {
    const CASES: &[Case] = &[
        Case {
            vendor: "erp",
            kind: Kind::Kingdee,
            wrong: None,
            reason: &[
                "errcode 4006",
                "this host's clock is",
                "ahead of Kingdee's",
                "fix NTP",
            ],
        },
        Case {
            vendor: "forms",
            kind: Kind::Jiandaoyun,
            wrong: None,
            reason: &["died", "the clock is off: fix NTP"],
        },
        Case {
            vendor: "ok_feishu",
            kind: Kind::Feishu,
            wrong: None,
            reason: &[],
        },
    ];
    let mut m = Matrix::new(CASES, SandboxOptions::default());
    m.h.sandbox.set_clock_offset_ms(-2 * 3600 * 1000);
    m.h.start();
    m.drop_files();
    m.expect_paused();
    let erp = &m.paused()["erp"];
    assert!(
        erp.contains("1h 59m") || erp.contains("2h"),
        "the skew is measured: {erp}"
    );
    m.h.sandbox.set_clock_offset_ms(0);
    m.h.reload();
    m.expect_all_synced();
}

/// Jiandaoyun's attachment quota used up (7216): the vendor is paused with the quota named and
/// its files wait; raised (and a SIGHUP), they are all sent.
#[test]
fn an_exhausted_quota_pauses_the_vendor_until_it_is_raised() {
    const CASES: &[Case] = &[
        Case {
            vendor: "forms",
            kind: Kind::Jiandaoyun,
            wrong: None,
            reason: &["code 7216", "attachment quota is used up"],
        },
        Case {
            vendor: "ok_kingdee",
            kind: Kind::Kingdee,
            wrong: None,
            reason: &[],
        },
    ];
    let mut m = Matrix::new(CASES, SandboxOptions::default());
    m.h.sandbox.exhaust_jiandaoyun_quota(Some(7216));
    m.h.start();
    m.drop_files();
    m.expect_paused();
    m.h.sandbox.exhaust_jiandaoyun_quota(None);
    m.h.reload();
    m.expect_all_synced();
}

/// A Feishu vendor refused for a wrong app secret, and a Kingdee one that syncs.
const REMOVED: &[Case] = &[
    Case {
        vendor: "f_app_secret",
        kind: Kind::Feishu,
        wrong: Some(|c| c.feishu.app_secret = WRONG_SECRETS[2].into()),
        reason: &["code 10014", "check app_id and app_secret"],
    },
    Case {
        vendor: "ok_kingdee",
        kind: Kind::Kingdee,
        wrong: None,
        reason: &[],
    },
];

/// Serves the metrics on a port of the system's choosing (the log says which).
fn with_metrics(h: &Harness) {
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, format!("metrics: 127.0.0.1:0\n{config}")).unwrap();
}

/// The running daemon's metrics, each sample line as `name{labels}` → value.
fn metrics(h: &Harness) -> BTreeMap<String, f64> {
    let log = h.log();
    let address = log
        .rsplit("metrics served at http://")
        .next()
        .and_then(|rest| rest.split("/metrics").next())
        .expect(&log)
        .to_string();
    let (_, _, body) = scrape(&address);
    samples(&body)
}

/// What every report says of a vendor taken out of the config (with its watch) while paused:
/// not paused (`status --json`, STATUS=, the metrics); its files still counted, pending; and its
/// jobs, which nothing sends, not ageing the queue (`imgsyncd_oldest_pending_job_age_seconds`, the
/// README's alert).
fn expect_gone_but_counted(m: &Matrix, manager: &Manager) {
    m.h.wait_for("the pause of the vendor taken out to be dropped", |_| {
        m.paused().is_empty()
    });
    let status = m.h.status();
    assert_eq!(
        status["by_vendor"]["f_app_secret"]["pending"], 2,
        "{status}"
    );
    assert_eq!(status["files"]["pending"], 2, "{status}");
    assert_eq!(status["files"]["synced"], 2, "{status}");
    // Its jobs wait for it to come back: they age no queue the operator is alerted on, and
    // `status` and the log say what waits for it.
    assert_eq!(
        status["unconfigured_vendors"],
        serde_json::json!([{"vendor": "f_app_secret", "jobs": 2}]),
        "{status}"
    );
    assert!(
        m.h.log()
            .contains("2 jobs wait for vendor f_app_secret, which is not in the config"),
        "{}",
        m.h.log()
    );
    assert!(status["oldest_pending_s"].is_null(), "{status}");
    assert_eq!(status["queued_jobs"], 0, "{status}");
    assert!(status["oldest_pending"].is_null(), "{status}");
    m.h.wait_for("STATUS= to say no vendor is paused", |_| {
        let line = manager.last_status();
        !line.is_empty() && !line.contains("paused")
    });
    let samples = metrics(&m.h);
    let get = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
    };
    assert_eq!(get("imgsyncd_oldest_pending_job_age_seconds"), 0.0);
    assert_eq!(get("imgsyncd_queued_jobs"), 0.0);
    assert_eq!(
        get(r#"imgsyncd_files{vendor="f_app_secret",state="pending"}"#),
        2.0
    );
    assert!(
        !samples.contains_key(r#"imgsyncd_vendor_paused{vendor="f_app_secret"}"#),
        "{samples:#?}"
    );
    assert!(
        m.h.log()
            .contains("vendor f_app_secret is no longer in the config: no longer paused"),
        "{}",
        m.h.log()
    );
}

/// The review's case: a paused vendor taken out of the config with its watch stayed paused for
/// ever in every report, and its jobs aged the queue without end (the alert fired for ever).
/// After the reload it is paused no more, and its jobs do not count; after a restart neither.
#[test]
fn a_paused_vendor_taken_out_of_the_config_is_paused_no_more_and_ages_no_queue() {
    let mut m = Matrix::new(REMOVED, SandboxOptions::default());
    with_metrics(&m.h);
    let manager = Manager::listen(m.h.dir.path());
    let socket = manager.socket().to_string();
    m.h.start_with("text", &[("NOTIFY_SOCKET", &socket)]);
    m.drop_files();
    m.expect_paused();
    let before = metrics(&m.h);
    assert!(
        before["imgsyncd_oldest_pending_job_age_seconds"] >= 4.0,
        "its files have waited: {before:#?}"
    );
    assert!(manager.last_status().contains("f_app_secret paused: "));

    m.cases = &REMOVED[1..];
    m.write_config(true);
    with_metrics(&m.h);
    m.h.reload();
    expect_gone_but_counted(&m, &manager);

    m.h.stop();
    m.h.start_with("text", &[("NOTIFY_SOCKET", &socket)]);
    expect_gone_but_counted(&m, &manager);
}

/// Taken out of the config while the daemon was stopped, the vendor is not paused from the
/// start. Put back, its files are sent again: still refused, it is paused again; put right (and
/// a SIGHUP), every file is synced, once.
#[test]
fn a_vendor_taken_out_while_stopped_is_not_paused_and_put_back_runs_again() {
    let mut m = Matrix::new(REMOVED, SandboxOptions::default());
    with_metrics(&m.h);
    m.h.start();
    m.drop_files();
    m.expect_paused();
    m.h.stop();

    m.cases = &REMOVED[1..];
    m.write_config(true);
    with_metrics(&m.h);
    let manager = Manager::listen(m.h.dir.path());
    let socket = manager.socket().to_string();
    m.h.start_with("text", &[("NOTIFY_SOCKET", &socket)]);
    assert!(m.paused().is_empty(), "{}", m.h.status());
    expect_gone_but_counted(&m, &manager);

    // Back, still with the wrong secret: its first call pauses it again, and nothing is sent.
    m.cases = REMOVED;
    m.write_config(true);
    m.h.reload();
    m.h.wait_for("the vendor put back to be paused again", |_| {
        m.paused()
            .get("f_app_secret")
            .is_some_and(|reason| reason.contains("code 10014"))
    });
    m.expect_nothing_sent_for_paused();

    m.write_config(false);
    m.h.reload();
    m.expect_all_synced();
}
