use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;
use std::path::PathBuf;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;
use crate::config::{Secret, Template};
use crate::sandbox::{Fault, JdyEndpoint, JiandaoyunAccount, Sandbox, SandboxOptions};

// ---- classification ---------------------------------------------------------------------------

fn class(endpoint: Endpoint, status: u16, code: Option<i64>) -> Verdict {
    classify(endpoint, status, code, false, "x", None)
}

fn qiniu(status: u16, error: &str) -> Verdict {
    classify(Endpoint::Upload, status, None, true, error, None)
}

fn is_retry(v: &Verdict) -> bool {
    matches!(v, Verdict::Fail(Outcome::Retry { .. }))
}

fn is_down(v: &Verdict) -> bool {
    matches!(v, Verdict::Fail(Outcome::VendorDown { .. }))
}

#[test]
fn jiandaoyun_codes_map_to_the_taxonomy() {
    use Endpoint::*;
    assert_eq!(class(Token, 200, None), Verdict::Ok);
    assert_eq!(class(Create, 200, Some(0)), Verdict::Ok);
    for endpoint in [Token, Upload, Create] {
        for code in [
            8301, 8302, 17_018, 7216, 7217, 7218, 7219, 3000, 2004, 17_052,
        ] {
            assert!(
                is_down(&class(endpoint, 400, Some(code))),
                "{endpoint:?} {code}"
            );
        }
        for code in [ERR_UPLOAD_FAILED, ERR_TRANSACTION, 4000] {
            assert!(is_retry(&class(endpoint, 400, Some(code))), "{code}");
        }
        for status in [500, 502, 503, 599] {
            assert!(is_retry(&class(endpoint, status, None)), "{status}");
        }
    }
    let Verdict::Fail(Outcome::VendorDown { reason }) = class(Token, 400, Some(8301)) else {
        unreachable!()
    };
    assert!(
        reason.starts_with("jiandaoyun get_upload_token: x (code 8301, HTTP 400); jiandaoyun refused the API key: check api_key"),
        "{reason}"
    );
    let Verdict::Fail(Outcome::VendorDown { reason }) = class(Create, 400, Some(3000)) else {
        unreachable!()
    };
    assert!(reason.contains("check app_id and entry_id"), "{reason}");
    let Verdict::Fail(Outcome::VendorDown { reason }) = class(Upload, 400, Some(7216)) else {
        unreachable!()
    };
    assert!(reason.contains("attachment quota is used up"), "{reason}");
    assert!(
        is_retry(&class(Token, 579, None)),
        "Jiandaoyun's 579: upload failed"
    );
    assert!(is_retry(&class(Create, 579, None)));
    assert!(is_down(&class(Token, 404, None)), "a wrong base_url");
    assert!(is_down(&class(Create, 401, None)));
}

#[test]
fn rate_limits_wait_at_least_a_second() {
    for (endpoint, status, code, wait, expected) in [
        (Endpoint::Token, 400, Some(ERR_RATE_LIMITED), None, 1),
        (
            Endpoint::Create,
            400,
            Some(ERR_COMPANY_RATE_LIMITED),
            None,
            1,
        ),
        (Endpoint::Create, 400, Some(ERR_RATE_LIMITED), Some(0), 1),
        (Endpoint::Token, 429, None, Some(3), 3),
        (Endpoint::Upload, 573, None, None, 1),
        (Endpoint::Upload, 429, None, None, 1),
    ] {
        let verdict = classify(
            endpoint,
            status,
            code,
            code.is_none(),
            "slow down",
            wait.map(Duration::from_secs),
        );
        match verdict {
            Verdict::Fail(Outcome::Throttled {
                after: Some(after),
                reason,
            }) => {
                assert_eq!(after, Duration::from_secs(expected), "{status} {code:?}");
                assert!(reason.contains("rate limited"), "{reason}");
            }
            other => panic!("{status} {code:?}: {other:?}"),
        }
    }
}

#[test]
fn qiniu_answers_spend_tokens_or_reject_files() {
    assert_eq!(
        qiniu(614, "file exists"),
        Verdict::NextToken {
            reason: "jiandaoyun upload: HTTP 614: file exists".into(),
            whole_transaction: false
        }
    );
    assert!(matches!(
        qiniu(579, "callback failed"),
        Verdict::NextToken {
            whole_transaction: false,
            ..
        }
    ));
    assert!(matches!(
        qiniu(401, "bad token"),
        Verdict::NextToken {
            whole_transaction: false,
            ..
        }
    ));
    assert!(
        matches!(
            qiniu(401, "expired token"),
            Verdict::NextToken {
                whole_transaction: true,
                ..
            }
        ),
        "an expired token: its whole transaction expired"
    );
    for status in [403, 413] {
        assert!(matches!(
            qiniu(status, "too big"),
            Verdict::Fail(Outcome::Rejected { .. })
        ));
    }
    assert!(is_retry(&qiniu(599, "service unavailable")));
    assert!(is_retry(&qiniu(406, "crc32 not match")));
    assert!(is_down(&qiniu(631, "no such bucket")));
    assert!(
        is_retry(&qiniu(200, "odd")),
        "a 200 with an error is no success"
    );
    // Outside the upload, Qiniu's statuses mean nothing special.
    assert!(is_retry(&class(Endpoint::Create, 614, None)));
}

// ---- templates --------------------------------------------------------------------------------

fn request<'a>(path: &'a str, bytes: &'a [u8]) -> UploadRequest<'a> {
    UploadRequest {
        path: Path::new(path),
        bytes,
        format: ImageFormat::Png,
        no_return: None,
    }
}

#[test]
fn relpath_is_taken_from_the_watch_root_that_holds_the_file() {
    let roots = [PathBuf::from("/srv/drop"), PathBuf::from("/srv/drop2")];
    assert_eq!(
        relpath(Path::new("/srv/drop/shoes/red.png"), &roots),
        "shoes/red.png"
    );
    assert_eq!(relpath(Path::new("/srv/drop2/a.png"), &roots), "a.png");
    assert_eq!(
        relpath(Path::new("/elsewhere/b.png"), &roots),
        "b.png",
        "no root: the file name"
    );
}

#[test]
fn the_record_holds_the_key_and_the_filled_in_fields() {
    let bytes = png(1, 40, 30);
    let mut fields = BTreeMap::new();
    for (widget, text) in [
        ("_widget_2", "{filename} in {relpath}"),
        ("_widget_3", "{width}×{height}, {size} bytes"),
        ("_widget_4", "{sha256}"),
        ("_widget_5", "{path}"),
    ] {
        fields.insert(widget.to_string(), Template::parse(text).unwrap());
    }
    let record = CreateRecord {
        image_widget: "_widget_1".into(),
        fields,
    };
    let data = record_data(
        &record,
        "k-1",
        &request("/srv/drop/shoes/产品.png", &bytes),
        &[PathBuf::from("/srv/drop")],
    );
    assert_eq!(
        data,
        json!({
            "_widget_1": {"value": ["k-1"]},
            "_widget_2": {"value": "产品.png in shoes/产品.png"},
            "_widget_3": {"value": format!("40×30, {} bytes", bytes.len())},
            "_widget_4": {"value": format!("{:x}", Sha256::digest(&bytes))},
            "_widget_5": {"value": "/srv/drop/shoes/产品.png"},
        })
    );
}

#[test]
fn a_gbk_name_fills_the_fields_with_the_characters_it_spells() {
    use std::os::unix::ffi::OsStrExt;
    let bytes = png(2, 40, 30);
    let mut fields = BTreeMap::new();
    fields.insert(
        "_widget_2".to_string(),
        Template::parse("{filename} | {relpath} | {path}").unwrap(),
    );
    let record = CreateRecord {
        image_widget: "_widget_1".into(),
        fields,
    };
    // 新/产品.png in GBK, as a zip made on a Chinese Windows desktop unpacks it.
    let path = Path::new(std::ffi::OsStr::from_bytes(
        b"/srv/drop/\xd0\xc2/\xb2\xfa\xc6\xb7.png",
    ));
    let request = UploadRequest {
        path,
        bytes: &bytes,
        format: ImageFormat::Png,
        no_return: None,
    };
    let data = record_data(&record, "k-1", &request, &[PathBuf::from("/srv/drop")]);
    assert_eq!(
        data["_widget_2"]["value"],
        "产品.png | 新/产品.png | /srv/drop/新/产品.png"
    );
}

// ---- against the sandbox ----------------------------------------------------------------------

/// A real PNG of `w`×`h` noisy pixels.
fn png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = ::image::RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed.wrapping_mul(101));
        ::image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    ::image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ::image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A sandbox with an API key of its own (vendors sharing a key share the company's pacer).
fn sandbox(options: SandboxOptions) -> Sandbox {
    Sandbox::start(SandboxOptions {
        jiandaoyun: JiandaoyunAccount {
            api_key: format!("key-{}", policy::uuid_v4()),
            ..JiandaoyunAccount::default()
        },
        ..options
    })
}

fn record_config() -> CreateRecord {
    let mut fields = BTreeMap::new();
    fields.insert(
        "_widget_2".to_string(),
        Template::parse("{filename}").unwrap(),
    );
    CreateRecord {
        image_widget: "_widget_1".into(),
        fields,
    }
}

fn adapter_with(
    sandbox: &Sandbox,
    api_key: &str,
    create_record: Option<CreateRecord>,
    per_second: Option<u32>,
) -> Jiandaoyun {
    let account = sandbox.options().jiandaoyun;
    Jiandaoyun::new(
        "forms",
        &sandbox.base_url(),
        JiandaoyunConfig {
            api_key: Secret::new(api_key),
            app_id: account.app_id,
            entry_id: account.entry_id,
            create_record,
            watch_roots: vec![PathBuf::from("/drop")],
        },
        reqwest::Client::new(),
        per_second,
        None,
    )
}

fn adapter(sandbox: &Sandbox, create_record: Option<CreateRecord>) -> Jiandaoyun {
    adapter_with(
        sandbox,
        &sandbox.options().jiandaoyun.api_key,
        create_record,
        None,
    )
}

async fn upload_ok(jdy: &Jiandaoyun, path: &str, bytes: &[u8]) -> Remote {
    let call = jdy.upload(&request(path, bytes)).await;
    match call.outcome {
        Outcome::Done(remote) => remote,
        other => panic!("{path}: {other:?}"),
    }
}

#[tokio::test]
async fn an_upload_sends_token_then_file_to_the_tokens_url() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter(&sandbox, None);
    let bytes = png(1, 64, 48);
    let started = epoch_ms();
    let remote = upload_ok(&jdy, "/drop/产品 \"1\".png", &bytes).await;
    let took = epoch_ms() - started;
    let held = &sandbox.jiandaoyun_uploads()[&remote.reference];
    assert_eq!(held.fields, ["token", "file"], "file last");
    assert_eq!(
        held.filename, "产品 _1_.png",
        "the real name, needing no escape"
    );
    assert_eq!(held.content_type.as_deref(), Some("image/png"));
    assert!(held.content_length.is_some(), "a known length, not chunked");
    assert_eq!(held.bytes, bytes);
    assert_eq!(
        remote.transaction_id.as_deref(),
        Some(held.transaction_id.as_str())
    );
    let transaction = &sandbox.jiandaoyun_transactions()[&held.transaction_id];
    let expires = remote.expires_at.unwrap();
    assert!(
        expires <= transaction.deadline_ms && expires > transaction.deadline_ms - 1_000 - took,
        "the transaction's end, never later than the vendor's: {expires} vs {}",
        transaction.deadline_ms
    );
    assert!(
        expires >= started + 3_599_000 - took && expires <= started + 3_601_000 + took,
        "an hour: {}",
        expires - started
    );
    assert_eq!(remote.record_id, None);
    assert!(jdy.reuses_copies(), "without records, twins share a key");
    assert_eq!(
        jdy.pooled_tokens().await,
        99,
        "the other 99 wait in the pool"
    );
}

#[tokio::test]
async fn a_hundred_and_thirty_uploads_take_two_token_calls() {
    // Both of the vendor's windows are opened wide: this test counts token calls, and at the real
    // company limit the first burst's new connections can reach the vendor later than the
    // requests paced a second after them (a 573 the daemon would wait out, but this test does not).
    let sandbox = sandbox(SandboxOptions {
        jiandaoyun_per_second: 1000,
        jiandaoyun_company_per_second: 1000,
        ..SandboxOptions::default()
    });
    let jdy = Arc::new(adapter_with(
        &sandbox,
        &sandbox.options().jiandaoyun.api_key,
        None,
        Some(1000),
    ));
    let bytes = Arc::new(png(2, 8, 8));
    let mut tasks = Vec::new();
    for i in 0..130 {
        let (jdy, bytes) = (Arc::clone(&jdy), Arc::clone(&bytes));
        tasks.push(tokio::spawn(async move {
            upload_ok(&jdy, &format!("/drop/{i}.png"), &bytes)
                .await
                .reference
        }));
    }
    let mut keys = HashSet::new();
    for task in tasks {
        assert!(keys.insert(task.await.unwrap()), "a key twice");
    }
    let stats = sandbox.jiandaoyun_stats();
    assert_eq!(stats.token_calls, 2, "{stats:?}");
    assert_eq!(
        (stats.tokens_used, stats.tokens_reused, stats.tokens_expired),
        (130, 0, 0)
    );
    assert!(sandbox.jiandaoyun_refusals().is_empty());
}

#[tokio::test]
async fn a_file_above_the_tokens_fsize_limit_is_rejected_unsent() {
    let sandbox = sandbox(SandboxOptions {
        jiandaoyun_fsize_limit: 2000,
        ..SandboxOptions::default()
    });
    let jdy = adapter(&sandbox, None);
    let big = png(3, 64, 64);
    assert!(big.len() > 2000);
    let call = jdy.upload(&request("/drop/big.png", &big)).await;
    match call.outcome {
        Outcome::Rejected { reason } => assert_eq!(
            reason,
            format!(
                "too large for forms: {}: above the {} its Jiandaoyun upload tokens take \
                 (fsizeLimit)",
                human_size(big.len() as u64),
                human_size(2000)
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sandbox.jiandaoyun_stats().upload_requests,
        0,
        "nothing sent"
    );
    assert_eq!(jdy.pooled_tokens().await, 100, "the token went back");
    upload_ok(&jdy, "/drop/small.png", &png(4, 4, 4)).await;
    assert_eq!(sandbox.jiandaoyun_stats().token_calls, 1);
}

#[tokio::test]
async fn spent_and_expired_tokens_are_replaced_within_the_call() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter(&sandbox, None);
    upload_ok(&jdy, "/drop/a.png", &png(5, 8, 8)).await;
    // Someone else used the next two tokens: Qiniu answers 614 twice, the third one stores.
    assert_eq!(sandbox.spend_jiandaoyun_tokens(2), 2);
    let call = jdy.upload(&request("/drop/b.png", &png(6, 8, 8))).await;
    assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
    let stats = sandbox.jiandaoyun_stats();
    assert_eq!((stats.tokens_reused, stats.token_calls), (2, 1));
    // Qiniu's clock says the batch is dead: 401 expired token, the rest of the batch is dropped
    // with it, and a fresh batch serves the file.
    sandbox.expire_jiandaoyun_tokens();
    let remote = upload_ok(&jdy, "/drop/c.png", &png(7, 8, 8)).await;
    let stats = sandbox.jiandaoyun_stats();
    assert_eq!(
        (stats.tokens_expired, stats.token_calls),
        (1, 2),
        "{stats:?}"
    );
    let uploads = sandbox.jiandaoyun_uploads();
    let first_transaction = &uploads
        .values()
        .find(|u| u.filename == "a.png")
        .unwrap()
        .transaction_id;
    assert_ne!(remote.transaction_id.as_ref(), Some(first_transaction));
    // Every token refused: the job is retried later, not failed.
    sandbox.spend_jiandaoyun_tokens(1000);
    let call = jdy.upload(&request("/drop/d.png", &png(8, 8, 8))).await;
    match call.outcome {
        Outcome::Retry { reason, .. } => assert!(
            reason.starts_with("5 upload tokens in a row were refused (the last: jiandaoyun upload: HTTP 614: file exists)"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_short_lived_batch_is_not_used_near_its_end() {
    let sandbox = sandbox(SandboxOptions {
        jiandaoyun_token_ttl: Duration::from_secs(2),
        ..SandboxOptions::default()
    });
    let jdy = adapter(&sandbox, None);
    upload_ok(&jdy, "/drop/a.png", &png(9, 8, 8)).await;
    // Past the batch's deadline (2 s, rounded up to Qiniu's whole seconds).
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    upload_ok(&jdy, "/drop/b.png", &png(10, 8, 8)).await;
    let stats = sandbox.jiandaoyun_stats();
    assert_eq!(stats.tokens_expired, 0, "no dead token was sent");
    assert_eq!(stats.token_calls, 2);
}

#[tokio::test]
async fn each_file_gets_a_record_holding_its_key_in_its_transaction() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter(&sandbox, Some(record_config()));
    assert!(!jdy.reuses_copies(), "each file needs its own record");
    let bytes = png(11, 8, 8);
    let one = upload_ok(&jdy, "/drop/sub/one.png", &bytes).await;
    let two = upload_ok(&jdy, "/drop/two.png", &bytes).await;
    assert_ne!(one.reference, two.reference);
    let records = sandbox.jiandaoyun_records();
    assert_eq!(records.len(), 2);
    for (remote, record, name) in [
        (&one, &records[0], "one.png"),
        (&two, &records[1], "two.png"),
    ] {
        assert_eq!(remote.record_id.as_deref(), Some(record.id.as_str()));
        assert_eq!(record.keys, std::slice::from_ref(&remote.reference));
        assert_eq!(record.transaction_id, remote.transaction_id);
        assert_eq!(record.data["_widget_2"]["value"], name);
        assert_eq!(remote.expires_at, None, "the record keeps the key");
    }
}

#[tokio::test]
async fn a_failed_record_is_a_retry_and_a_dead_transaction_a_fresh_start() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter(&sandbox, Some(record_config()));
    sandbox.inject_jiandaoyun(JdyEndpoint::Create, [Fault::Http(502)]);
    let call = jdy.upload(&request("/drop/a.png", &png(12, 8, 8))).await;
    match &call.outcome {
        Outcome::Retry { reason, .. } => assert!(
            reason.starts_with("uploaded as key ")
                && reason.contains(
                    "but its record could not be created: jiandaoyun data/create: HTTP 502"
                )
                && reason.ends_with("the file is sent again with a fresh token"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(call.http_status, Some(502));
    // The vendor says the transaction is dead: its tokens are dropped, the next try fetches anew.
    sandbox.inject_jiandaoyun(JdyEndpoint::Create, [Fault::Business(ERR_TRANSACTION)]);
    let call = jdy.upload(&request("/drop/a.png", &png(12, 8, 8))).await;
    assert!(matches!(call.outcome, Outcome::Retry { .. }), "{call:?}");
    assert_eq!(call.vendor_code.as_deref(), Some("17025"));
    assert_eq!(jdy.pooled_tokens().await, 0);
    let remote = upload_ok(&jdy, "/drop/a.png", &png(12, 8, 8)).await;
    assert_eq!(sandbox.jiandaoyun_stats().token_calls, 2);
    let record = &sandbox.jiandaoyun_records()[0];
    assert_eq!(record.keys, [remote.reference]);
    assert_eq!(sandbox.jiandaoyun_records().len(), 1);
}

#[tokio::test]
async fn a_refused_key_pauses_the_vendor_and_burns_nothing() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter_with(&sandbox, "not-the-key", None, None);
    let call = jdy.upload(&request("/drop/a.png", &png(13, 8, 8))).await;
    match &call.outcome {
        Outcome::VendorDown { reason } => {
            assert!(
                reason.starts_with("jiandaoyun get_upload_token: The API key is invalid. (code 8301, HTTP 400); jiandaoyun refused the API key"),
                "{reason}"
            );
            assert!(!reason.contains("not-the-key"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call.vendor_code.as_deref(), Some("8301"));
    let again = jdy.upload(&request("/drop/a.png", &png(13, 8, 8))).await;
    assert!(matches!(again.outcome, Outcome::VendorDown { .. }));
    let refused = sandbox.jiandaoyun_refusals();
    assert_eq!(refused.len(), 1, "the refusal is remembered: {refused:?}");
    assert!(matches!(
        jdy.check_online().await.outcome,
        Outcome::VendorDown { .. }
    ));
    let stats = sandbox.jiandaoyun_stats();
    assert_eq!((stats.upload_requests, stats.tokens_issued), (0, 0));
    let account = JiandaoyunAccount {
        api_key: "not-the-key".into(),
        ..sandbox.options().jiandaoyun
    };
    sandbox.set_jiandaoyun_account(account);
    jdy.forget_failures().await;
    upload_ok(&jdy, "/drop/a.png", &png(13, 8, 8)).await;
}

#[tokio::test]
async fn a_wrong_form_pauses_the_vendor() {
    let sandbox = sandbox(SandboxOptions::default());
    let account = sandbox.options().jiandaoyun;
    let jdy = Jiandaoyun::new(
        "forms",
        &sandbox.base_url(),
        JiandaoyunConfig {
            api_key: Secret::new(account.api_key),
            app_id: account.app_id,
            entry_id: "000000000000000000000000".into(),
            create_record: None,
            watch_roots: Vec::new(),
        },
        reqwest::Client::new(),
        None,
        None,
    );
    let call = jdy.check_online().await;
    match call.outcome {
        Outcome::VendorDown { reason } => {
            assert!(
                reason.contains("The form does not exist. (code 3000"),
                "{reason}"
            );
            assert!(reason.contains("check app_id and entry_id"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

// ---- canned answers ---------------------------------------------------------------------------

/// A stand-in Jiandaoyun whose token endpoint hands out `tokens` pointing at its own upload,
/// which answers `status`, `headers`, `body`.
async fn canned(
    tokens: usize,
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Value,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, v.parse().unwrap());
    }
    let status = StatusCode::from_u16(status).unwrap();
    let deadline = epoch_ms() / 1000 + 3600;
    let list: Vec<Value> = (0..tokens)
        .map(|i| {
            let policy = policy::encode(&json!({"deadline": deadline, "saveKey": format!("k{i}")}));
            json!({"url": format!("{base}/up"), "token": format!("ak:sig:{policy}")})
        })
        .collect();
    let app = Router::new()
        .route(
            TOKEN_PATH,
            post(move || async move { axum::Json(json!({ "token_and_url_list": list })) }),
        )
        .route(
            "/up",
            post(move || async move { (status, map, axum::Json(body)) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn adapter_at(base: &str) -> Jiandaoyun {
    Jiandaoyun::new(
        "forms",
        base,
        JiandaoyunConfig {
            api_key: Secret::new(format!("jdy-secret-value-{}", policy::uuid_v4())),
            app_id: "app".into(),
            entry_id: "entry".into(),
            create_record: None,
            watch_roots: Vec::new(),
        },
        reqwest::Client::new(),
        None,
        None,
    )
}

#[tokio::test]
async fn a_success_without_a_key_is_never_sent_again() {
    let base = canned(100, 200, &[], json!({"hash": "Fh8x"})).await;
    let call = adapter_at(&base)
        .upload(&request("/d/a.png", &png(14, 8, 8)))
        .await;
    match call.outcome {
        Outcome::Unconfirmed { reason } => assert!(
            reason.starts_with("jiandaoyun accepted the upload but its answer has no key: {"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_token_endpoint_without_tokens_is_retried_later() {
    let base = canned(0, 200, &[], json!({})).await;
    let call = adapter_at(&base)
        .upload(&request("/d/a.png", &png(15, 8, 8)))
        .await;
    match call.outcome {
        Outcome::Retry { reason, .. } => {
            assert!(reason.contains("no usable token_and_url_list"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_qiniu_rate_limit_holds_the_next_upload() {
    let base = canned(
        100,
        573,
        &[("retry-after", "2")],
        json!({"error": "too many requests"}),
    )
    .await;
    let jdy = adapter_at(&base);
    // Taken before the first call: the hold counts from its answer, whenever that came.
    let started = std::time::Instant::now();
    let call = jdy.upload(&request("/d/a.png", &png(16, 8, 8))).await;
    assert!(
        matches!(call.outcome, Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(2)),
        "{call:?}"
    );
    assert_eq!(call.http_status, Some(573));
    let _ = jdy.upload(&request("/d/a.png", &png(16, 8, 8))).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the pacer held the next upload until the window reopened"
    );
}

#[test]
fn debug_output_shows_no_secret() {
    let adapter = adapter_at("http://127.0.0.1:1");
    let debug = format!("{adapter:?}");
    assert!(debug.contains("entry"));
    assert!(!debug.contains("secret-value"), "{debug}");
}

/// Two vendors (two forms) with one API key share its documented 20 calls a second to each
/// interface, and its company-wide 50: together they never send more in any second. Each paced
/// its interfaces alone before, 40 a second together, and Jiandaoyun answered 8303.
#[tokio::test(start_paused = true)]
async fn vendors_sharing_an_api_key_share_each_interfaces_limit() {
    let key = format!("jdy-shared-key-{}", policy::uuid_v4());
    let vendor = |name: &str| {
        Arc::new(Jiandaoyun::new(
            name,
            "http://127.0.0.1:9",
            JiandaoyunConfig {
                api_key: Secret::new(key.clone()),
                app_id: "app".into(),
                entry_id: format!("entry-{name}"),
                create_record: None,
                watch_roots: Vec::new(),
            },
            reqwest::Client::new(),
            None,
            None,
        ))
    };
    let (a, b) = (vendor("forms"), vendor("claims"));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for adapter in [a, b] {
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..40 {
                adapter.pace(Endpoint::Upload).await;
                times.push(tokio::time::Instant::now() - started);
            }
            times
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    times.sort();
    let densest = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(densest <= 20, "{densest} uploads in one second");
    // Both got their turns: 80 calls at 20 a second take about four seconds, not two.
    assert!(times[79] >= Duration::from_secs(3), "{:?}", times[79]);
}

/// What the adapter told the worker's gate, in order.
#[derive(Debug, Default)]
struct Gate {
    told: std::sync::Mutex<Vec<String>>,
}

impl PointOfNoReturn for Gate {
    fn passing(&self, what: String) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        self.told.lock().unwrap().push(what);
        Box::pin(async { true })
    }

    fn refused(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.told.lock().unwrap().push("refused".into());
        Box::pin(async {})
    }
}

/// The record's data/create is noted before each time it goes out, naming the key and
/// transaction to look for; a rate limit's refusal takes the note back for the wait; the Qiniu
/// upload before it is never noted.
#[tokio::test]
async fn each_record_call_is_noted_before_it_goes_and_a_refusal_takes_it_back() {
    let sandbox = sandbox(SandboxOptions::default());
    let jdy = adapter(&sandbox, Some(record_config()));
    sandbox.inject_jiandaoyun(
        JdyEndpoint::Create,
        [Fault::Throttled(Duration::from_secs(1))],
    );
    let gate = Gate::default();
    let bytes = png(13, 8, 8);
    let call = jdy
        .upload(&UploadRequest {
            no_return: Some(&gate),
            ..request("/drop/a.png", &bytes)
        })
        .await;
    let Outcome::Done(remote) = &call.outcome else {
        panic!("{call:?}");
    };
    let transaction = remote.transaction_id.as_deref().unwrap();
    let what = format!(
        "creating the form record of key {} (transaction {transaction})",
        remote.reference
    );
    assert_eq!(
        *gate.told.lock().unwrap(),
        [what.clone(), "refused".into(), what]
    );
    assert_eq!(sandbox.jiandaoyun_records().len(), 1);
}
