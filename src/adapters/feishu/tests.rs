use std::io::Cursor;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;
use crate::sandbox::{Sandbox, SandboxOptions};

fn class(status: u16, code: Option<i64>) -> Outcome<()> {
    classify(status, code, "x", "upload", None).unwrap_or(Outcome::Done(()))
}

#[test]
fn a_rate_limit_is_waited_out_for_a_second_at_least() {
    for (reset, waited) in [(None, 1), (Some(0), 1), (Some(3), 3)] {
        let said = classify::<()>(
            429,
            Some(ERR_RATE_LIMITED),
            "x",
            "upload",
            reset.map(Duration::from_secs),
        );
        let Some(Outcome::Throttled { after, .. }) = said else {
            panic!("reset {reset:?}: {said:?}");
        };
        assert_eq!(after, Some(Duration::from_secs(waited)), "reset {reset:?}");
    }
}

#[test]
fn codes_map_to_the_taxonomy() {
    assert_eq!(class(200, Some(0)), Outcome::Done(()));
    for code in TOKEN_INVALID {
        assert!(
            matches!(class(400, Some(*code)), Outcome::Reauth { .. }),
            "{code}"
        );
        assert!(
            matches!(class(200, Some(*code)), Outcome::Reauth { .. }),
            "{code}"
        );
    }
    assert!(matches!(
        class(400, Some(ERR_INVALID_PARAM)),
        Outcome::Rejected { .. }
    ));
    assert!(matches!(
        class(200, Some(ERR_INVALID_PARAM)),
        Outcome::Rejected { .. }
    ));
    assert!(matches!(
        class(500, Some(ERR_NETWORK)),
        Outcome::Retry { .. }
    ));
    for code in CREDENTIALS_REFUSED {
        assert!(
            matches!(class(200, Some(*code)), Outcome::VendorDown { reason } if reason.starts_with("feishu refused app_id/app_secret: x (code")),
            "{code}"
        );
    }
    assert!(matches!(
        class(400, Some(99_991_672)),
        Outcome::VendorDown { reason } if reason.contains("baike:entity")
    ));
    assert!(matches!(
        class(400, Some(99_991_662)),
        Outcome::VendorDown { .. }
    ));
    assert!(matches!(class(502, None), Outcome::Retry { .. }));
    assert!(matches!(class(503, Some(503)), Outcome::Retry { .. }));
    assert!(
        matches!(class(404, None), Outcome::VendorDown { reason } if reason.contains("base_url"))
    );
    // HTTP 200 with a code is an error; an unknown one is retried with the code and msg said.
    assert!(matches!(
        class(200, Some(1_234_567)),
        Outcome::Retry { reason, .. } if reason.contains("x (code 1234567, HTTP 200)")
    ));
}

#[test]
fn a_rate_limit_waits_as_long_as_the_gateway_says() {
    let wait = Some(Duration::from_secs(7));
    for (status, code) in [
        (429, Some(ERR_RATE_LIMITED)),
        (429, None),
        (400, Some(ERR_RATE_LIMITED)),
    ] {
        match classify::<()>(
            status,
            code,
            "request trigger frequency limit",
            "upload",
            wait,
        ) {
            Some(Outcome::Throttled { after, reason }) => {
                assert_eq!(after, wait, "{status} {code:?}");
                assert!(reason.contains("rate limited"), "{reason}");
            }
            other => panic!("{status} {code:?}: {other:?}"),
        }
    }
    assert!(matches!(
        classify::<()>(429, None, "", "upload", None),
        Some(Outcome::Throttled { after: Some(d), .. }) if d == Duration::from_secs(1)
    ));
}

#[test]
fn a_token_is_refreshed_a_tenth_of_its_life_early_at_most_ten_minutes() {
    let now = 1_700_000_000_000;
    assert_eq!(
        refresh_at(now, 7200),
        now + 7_200_000 - 600_000,
        "2 h: 10 min early"
    );
    assert_eq!(
        refresh_at(now, 3000),
        now + 3_000_000 - 300_000,
        "50 min: 5 min early"
    );
    assert_eq!(refresh_at(now, 60), now + 54_000);
    assert_eq!(refresh_at(now, 1), now + 900, "a short expire still works");
    assert_eq!(
        refresh_at(now, 0),
        now,
        "an expired one is fetched again at once"
    );
    assert_eq!(refresh_at(now, -5), now);
}

fn request<'a>(path: &'a str, bytes: &'a [u8], format: ImageFormat) -> UploadRequest<'a> {
    UploadRequest {
        path: Path::new(path),
        bytes,
        format,
        no_return: None,
    }
}

#[test]
fn names_are_shortened_to_100_characters_keeping_the_extension() {
    let long = format!("{}.png", "a".repeat(116));
    let short = shorten(&long, MAX_NAME_CHARS);
    assert_eq!(short.chars().count(), 100);
    assert_eq!(short, format!("{}.png", "a".repeat(96)));
    assert_eq!(shorten("photo.jpeg", 100), "photo.jpeg");

    // Characters, not bytes: 110 two-byte letters are 110 characters and stay valid UTF-8.
    let unicode = format!("{}.webp", "é".repeat(110));
    let short = shorten(&unicode, MAX_NAME_CHARS);
    assert_eq!(short.chars().count(), 100);
    assert!(short.ends_with("é.webp"));
    let cjk = format!("产品图片{}.JPG", "长".repeat(120));
    let short = shorten(&cjk, MAX_NAME_CHARS);
    assert_eq!(short.chars().count(), 100);
    assert!(short.starts_with("产品图片") && short.ends_with(".JPG"));

    assert_eq!(
        shorten(&"x".repeat(150), 100),
        "x".repeat(100),
        "no extension"
    );
}

#[test]
fn the_name_always_carries_an_image_extension() {
    let bytes = [0u8; 4];
    assert_eq!(
        lingo_name(&request("/d/scan", &bytes, ImageFormat::Png)),
        "scan.png"
    );
    assert_eq!(
        lingo_name(&request("/d/photo.backup", &bytes, ImageFormat::Jpeg)),
        "photo.backup.jpg"
    );
    assert_eq!(
        lingo_name(&request("/d/icon.ICO", &bytes, ImageFormat::Ico)),
        "icon.ICO"
    );
    assert_eq!(
        lingo_name(&request("/d/photo.jpe", &bytes, ImageFormat::Jpeg)),
        "photo.jpe.jpg",
        "a JPEG extension lingo does not take"
    );
    let long = format!("/d/{}.png", "n".repeat(120));
    let name = lingo_name(&request(&long, &bytes, ImageFormat::Png));
    assert_eq!((name.chars().count(), name.ends_with(".png")), (100, true));
}

/// A real PNG of `w`×`h` noisy pixels (well over 3 KB).
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

fn adapter_for(sandbox: &Sandbox, app_secret: &str) -> Feishu {
    Feishu::new(
        &sandbox.base_url(),
        FeishuConfig {
            app_id: sandbox.options().feishu.app_id,
            app_secret: Secret::new(app_secret),
        },
        reqwest::Client::new(),
        None,
        None,
    )
}

fn token_calls(sandbox: &Sandbox) -> usize {
    sandbox.requests_to(TOKEN_PATH)
}

#[tokio::test]
async fn an_upload_sends_name_then_file_with_a_known_length() {
    let sandbox = Sandbox::start(SandboxOptions::default());
    let feishu = adapter_for(&sandbox, &sandbox.options().feishu.app_secret);
    let bytes = png(1, 320, 320);
    let call = feishu
        .upload(&request("/drop/产品 \"1\".png", &bytes, ImageFormat::Png))
        .await;
    let Outcome::Done(remote) = call.outcome else {
        panic!("{call:?}")
    };
    assert_eq!(
        (call.http_status, call.vendor_code.as_deref()),
        (Some(200), Some("0"))
    );
    let token = remote.reference;
    let held = &sandbox.feishu_files()[&token];
    assert_eq!(held.fields, ["name", "file"], "name goes first");
    assert_eq!(held.name, "产品 \"1\".png");
    assert_eq!(
        held.filename, "产品 _1_.png",
        "the filename needs no escaping"
    );
    assert_eq!(
        held.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert!(held.content_length.is_some(), "not chunked");
    assert_eq!(held.bytes, bytes);
}

#[tokio::test]
async fn one_token_serves_many_uploads_and_a_revoked_one_is_replaced() {
    let sandbox = Sandbox::start(SandboxOptions::default());
    let feishu = adapter_for(&sandbox, &sandbox.options().feishu.app_secret);
    let bytes = png(2, 400, 330);
    for _ in 0..3 {
        let call = feishu
            .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
            .await;
        assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
    }
    assert_eq!(token_calls(&sandbox), 1);
    sandbox.revoke_tokens();
    let call = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(matches!(call.outcome, Outcome::Reauth { .. }), "{call:?}");
    assert_eq!(call.vendor_code.as_deref(), Some("99991663"));
    let call = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
    assert_eq!(token_calls(&sandbox), 2, "the refused token was dropped");
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires() {
    let sandbox = Sandbox::start(SandboxOptions {
        feishu_token_ttl: Duration::from_secs(2),
        ..SandboxOptions::default()
    });
    let feishu = adapter_for(&sandbox, &sandbox.options().feishu.app_secret);
    let bytes = png(3, 330, 330);
    for _ in 0..4 {
        let call = feishu
            .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
            .await;
        assert!(matches!(call.outcome, Outcome::Done(_)), "{call:?}");
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert!(token_calls(&sandbox) >= 2, "refreshed at least once");
    assert_eq!(sandbox.feishu_refused(), 0, "never sent an expired token");
}

#[tokio::test]
async fn refused_credentials_pause_the_vendor_until_fixed() {
    let sandbox = Sandbox::start(SandboxOptions::default());
    let feishu = adapter_for(&sandbox, "not-the-secret");
    let bytes = png(4, 330, 330);
    let call = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    match &call.outcome {
        Outcome::VendorDown { reason } => {
            assert!(
                reason.starts_with("feishu refused app_id/app_secret: app secret invalid (code 10014); check app_id and app_secret"),
                "{reason}"
            );
            assert!(!reason.contains("not-the-secret"), "no secret in reasons");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call.vendor_code.as_deref(), Some("10014"));
    // The refusal is remembered: a backlog does not hammer the token endpoint.
    let again = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(matches!(again.outcome, Outcome::VendorDown { .. }));
    assert_eq!(token_calls(&sandbox), 1);
    assert_eq!(sandbox.feishu_upload_requests(), 0, "nothing was uploaded");
    assert!(matches!(
        feishu.check_online().await.outcome,
        Outcome::VendorDown { .. }
    ));
    let mut account = sandbox.options().feishu;
    account.app_secret = "not-the-secret".into();
    sandbox.set_feishu_account(account);
    feishu.forget_failures().await;
    let fixed = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(matches!(fixed.outcome, Outcome::Done(_)), "{fixed:?}");
}

/// A stand-in for Feishu answering uploads with `status`, `headers` and `body`.
async fn canned(status: u16, headers: &[(&'static str, &'static str)], body: Value) -> String {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, v.parse().unwrap());
    }
    let status = StatusCode::from_u16(status).unwrap();
    let app = Router::new()
        .route(
            TOKEN_PATH,
            post(|| async {
                axum::Json(json!({"code": 0, "msg": "ok", "tenant_access_token": "t-canned", "expire": 7200}))
            }),
        )
        .route(
            UPLOAD_PATH,
            post(move || async move { (status, map, axum::Json(body)) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn adapter_at(base: &str) -> Feishu {
    Feishu::new(
        base,
        FeishuConfig {
            app_id: "cli_x".into(),
            app_secret: Secret::new("feishu-secret-value"),
        },
        reqwest::Client::new(),
        None,
        None,
    )
}

/// An upload of a small PNG to a lingo that answers `status` and `body`.
async fn upload_answered(status: u16, body: Value) -> Call<Remote> {
    let base = canned(status, &[], body).await;
    let bytes = png(5, 330, 330);
    adapter_at(&base)
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await
}

#[tokio::test]
async fn a_success_without_a_file_token_is_never_sent_again() {
    let call = upload_answered(200, json!({"code": 0, "msg": "success", "data": {}})).await;
    match call.outcome {
        Outcome::Unconfirmed { reason } => assert!(
            reason
                .starts_with("feishu accepted the upload but its answer has no data.file_token: {"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_success_of_another_shape_is_never_sent_again() {
    // `code` a string: not the documented answer, so nothing of it can be read.
    let call = upload_answered(200, json!({"code": "0", "data": {"file_token": "boxcnX"}})).await;
    match call.outcome {
        Outcome::Unconfirmed { reason } => assert!(
            reason.starts_with("feishu upload: HTTP 200 with an answer that has no code: {"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_429_carries_the_reset_and_holds_the_next_upload() {
    let base = canned(
        429,
        &[
            ("x-ogw-ratelimit-limit", "50"),
            ("x-ogw-ratelimit-reset", "2"),
        ],
        json!({"code": ERR_RATE_LIMITED, "msg": "request trigger frequency limit"}),
    )
    .await;
    let feishu = adapter_at(&base);
    let bytes = png(6, 330, 330);
    // Taken before the first call: the hold counts from its answer, whenever that came.
    let started = std::time::Instant::now();
    let call = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(
        matches!(call.outcome, Outcome::Throttled { after: Some(d), .. } if d == Duration::from_secs(2)),
        "{call:?}"
    );
    assert_eq!(call.vendor_code.as_deref(), Some("99991400"));
    let _ = feishu
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the pacer held the next call until the window reopened"
    );
}

#[tokio::test]
async fn an_invalid_param_answer_is_a_rejection_with_feishus_reasons() {
    let base = canned(
        400,
        &[],
        json!({"code": ERR_INVALID_PARAM, "msg": "invalid param", "error": {
            "log_id": "20240101ABC",
            "field_violations": [{"field": "file", "description": "image too small"}]
        }}),
    )
    .await;
    let bytes = png(7, 330, 330);
    let call = adapter_at(&base)
        .upload(&request("/d/a.png", &bytes, ImageFormat::Png))
        .await;
    match call.outcome {
        Outcome::Rejected { reason } => assert_eq!(
            reason,
            "feishu upload: invalid param (file: image too small) (code 2250001, HTTP 400) \
             [log_id 20240101ABC]"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn debug_output_shows_no_secret() {
    let adapter = adapter_at("http://127.0.0.1:1");
    let debug = format!("{adapter:?}");
    assert!(debug.contains("cli_x"));
    assert!(!debug.contains("secret-value"), "{debug}");
}
