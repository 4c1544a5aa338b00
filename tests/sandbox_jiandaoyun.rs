//! The sandbox is a strict Jiandaoyun: what get_upload_token, the Qiniu form upload and data/create
//! refuse, it refuses, with their status and body. Requests here are built by hand (JSON bodies,
//! raw multipart), so a mistake in the adapter is not mirrored here; requests shaped as Jiandaoyun's
//! documentation and Qiniu's form API show them are accepted.

use std::io::Cursor;
use std::time::Duration;

use base64::Engine;
use imgsyncd::sandbox::{Fault, JdyEndpoint, QINIU_UPLOAD_PATH, Sandbox, SandboxOptions};
use serde_json::{Value, json};

const TOKEN: &str = "/api/v5/app/entry/file/get_upload_token";
const CREATE: &str = "/api/v5/app/entry/data/create";

fn png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed.wrapping_mul(101));
        image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// One part of a hand-built multipart body.
struct Part<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    data: &'a [u8],
}

fn field<'a>(name: &'a str, value: &'a str) -> Part<'a> {
    Part {
        name,
        filename: None,
        data: value.as_bytes(),
    }
}

fn file<'a>(filename: Option<&'a str>, data: &'a [u8]) -> Part<'a> {
    Part {
        name: "file",
        filename,
        data,
    }
}

/// The body and its Content-Type, parts in the order given.
fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(filename) = part.filename {
            disposition.push_str(&format!(
                "; filename=\"{filename}\"\r\nContent-Type: image/png"
            ));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(part.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    /// Jiandaoyun's refusal: the status and `code`, after checking `msg` says something.
    fn refused(&self) -> (u16, i64) {
        assert!(
            self.body["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        (self.status, self.body["code"].as_i64().expect("a code"))
    }

    /// Qiniu's refusal: the status and `error`.
    fn qiniu(&self) -> (u16, String) {
        (
            self.status,
            self.body["error"].as_str().expect("an error").to_string(),
        )
    }
}

struct Client {
    sandbox: Sandbox,
    http: reqwest::Client,
}

impl Client {
    fn new() -> Client {
        Client::with(SandboxOptions::default())
    }

    fn with(options: SandboxOptions) -> Client {
        Client {
            sandbox: Sandbox::start(options),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.sandbox.options().jiandaoyun.api_key)
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON answer");
        Reply { status, body }
    }

    /// POSTs `body` as JSON to `path` with `authorization` (none when `None`).
    async fn json(&self, path: &str, authorization: Option<&str>, body: &str) -> Reply {
        let mut request = self
            .http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        Client::reply(request.send().await.unwrap()).await
    }

    /// The documented request: this account's app and form, a transaction id.
    fn token_request(&self, transaction_id: &str) -> String {
        let account = self.sandbox.options().jiandaoyun;
        json!({
            "app_id": account.app_id,
            "entry_id": account.entry_id,
            "transaction_id": transaction_id,
        })
        .to_string()
    }

    /// The `{url, token}` pairs of a fresh batch for `transaction_id`.
    async fn tokens(&self, transaction_id: &str) -> Vec<(String, String)> {
        let reply = self
            .json(
                TOKEN,
                Some(&self.bearer()),
                &self.token_request(transaction_id),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["token_and_url_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["url"].as_str().unwrap().to_string(),
                    p["token"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn post_form(&self, url: &str, parts: &[Part<'_>]) -> Reply {
        let (content_type, body) = multipart(parts);
        let response = self
            .http
            .post(url)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        Client::reply(response).await
    }

    /// Uploads `bytes` with the token `(url, token)` as Qiniu's form API shows it.
    async fn upload(&self, (url, token): &(String, String), bytes: &[u8]) -> Reply {
        self.post_form(url, &[field("token", token), file(Some("a.png"), bytes)])
            .await
    }

    async fn create(&self, transaction_id: &str, keys: &[&str]) -> Reply {
        let account = self.sandbox.options().jiandaoyun;
        let body = json!({
            "app_id": account.app_id,
            "entry_id": account.entry_id,
            "transaction_id": transaction_id,
            "data": {
                "_widget_1432728651402": {"value": keys},
                "_widget_1432728651403": {"value": "a text field"},
            },
        });
        self.json(CREATE, Some(&self.bearer()), &body.to_string())
            .await
    }
}

/// The put-policy of a token, decoded by hand.
fn policy(token: &str) -> Value {
    let encoded = token.rsplit(':').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .expect("URL-safe Base64");
    serde_json::from_slice(&json).expect("a JSON policy")
}

const TID: &str = "87cd7d71-c6df-4281-9927-469094395677";

#[tokio::test]
async fn a_token_call_issues_a_hundred_single_use_tokens_with_real_policies() {
    let c = Client::new();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let pairs = c.tokens(TID).await;
    assert_eq!(pairs.len(), 100);
    let mut keys = std::collections::HashSet::new();
    for (url, token) in &pairs {
        assert_eq!(url, &c.url(QINIU_UPLOAD_PATH), "the sandbox's own upload");
        assert_eq!(token.split(':').count(), 3, "AK:sign:policy");
        let policy = policy(token);
        let deadline = policy["deadline"].as_i64().unwrap();
        assert!(
            (before + 3599..=before + 3602).contains(&deadline),
            "an hour: {deadline} - {before}"
        );
        assert_eq!(policy["fsizeLimit"], 200 * 1024 * 1024);
        assert_eq!(policy["forceSaveKey"], true);
        assert!(keys.insert(policy["saveKey"].as_str().unwrap().to_string()));
    }
    let stats = c.sandbox.jiandaoyun_stats();
    assert_eq!((stats.token_calls, stats.tokens_issued), (1, 100));
    let transaction = &c.sandbox.jiandaoyun_transactions()[TID];
    assert_eq!(transaction.tokens_issued, 100);
}

#[tokio::test]
async fn the_token_call_refuses_a_wrong_key_app_form_or_transaction() {
    let c = Client::new();
    let good = c.token_request(TID);
    let no_key = c.json(TOKEN, None, &good).await;
    assert_eq!(no_key.refused(), (400, 8301));
    assert_eq!(
        no_key.body,
        json!({"code": 8301, "msg": "The API key is invalid."})
    );
    let wrong_key = c.json(TOKEN, Some("Bearer not-the-key"), &good).await;
    assert_eq!(wrong_key.refused(), (400, 8301));
    let basic = format!("Basic {}", c.sandbox.options().jiandaoyun.api_key);
    assert_eq!(
        c.json(TOKEN, Some(&basic), &good).await.refused(),
        (400, 8301)
    );

    let account = c.sandbox.options().jiandaoyun;
    let with = |app: &str, entry: &str, tid: Value| {
        json!({"app_id": app, "entry_id": entry, "transaction_id": tid}).to_string()
    };
    let bearer = c.bearer();
    let wrong_app = c
        .json(
            TOKEN,
            Some(&bearer),
            &with("nope", &account.entry_id, json!(TID)),
        )
        .await;
    assert_eq!(wrong_app.refused(), (400, 17_018));
    let wrong_form = c
        .json(
            TOKEN,
            Some(&bearer),
            &with(&account.app_id, "nope", json!(TID)),
        )
        .await;
    assert_eq!(wrong_form.refused(), (400, 3000));
    for tid in [
        json!(null),
        json!(""),
        json!(42),
        json!("tx-${HOME}"),
        json!("$(id)"),
    ] {
        let reply = c
            .json(
                TOKEN,
                Some(&bearer),
                &with(&account.app_id, &account.entry_id, tid.clone()),
            )
            .await;
        assert_eq!(reply.refused(), (400, 17_025), "{tid}");
    }
    let not_json = c.json(TOKEN, Some(&bearer), "app_id=x").await;
    assert_eq!(not_json.refused(), (400, 1));
    assert_eq!(c.sandbox.jiandaoyun_stats().tokens_issued, 0);
    assert_eq!(c.sandbox.jiandaoyun_refusals().len(), 11);
}

#[tokio::test]
async fn an_upload_shaped_like_qinius_form_api_is_stored_under_the_tokens_key() {
    let c = Client::new();
    let pairs = c.tokens(TID).await;
    let bytes = png(1, 40, 30);
    let reply = c.upload(&pairs[0], &bytes).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = reply.body["key"].as_str().unwrap();
    assert_eq!(key, policy(&pairs[0].1)["saveKey"], "forceSaveKey");
    assert!(reply.body["hash"].is_string());
    let held = &c.sandbox.jiandaoyun_uploads()[key];
    assert_eq!(held.bytes, bytes);
    assert_eq!(held.transaction_id, TID);
    assert_eq!(held.fields, ["token", "file"]);
    assert_eq!(held.filename, "a.png");
    assert_eq!(c.sandbox.jiandaoyun_transactions()[TID].keys, [key]);
    // The stored file is served back.
    let fetched = c
        .http
        .get(c.url(&format!("/qiniu-sandbox/files/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn a_token_is_single_use_and_its_form_strict() {
    let c = Client::with(SandboxOptions {
        jiandaoyun_fsize_limit: 1000,
        ..SandboxOptions::default()
    });
    let pairs = c.tokens(TID).await;
    let small = png(2, 4, 4);
    let big = png(3, 64, 64);
    assert!(small.len() < 1000 && big.len() > 1000);
    let url = &pairs[0].0;
    assert_eq!(c.upload(&pairs[0], &small).await.status, 200);
    assert_eq!(
        c.upload(&pairs[0], &small).await.qiniu(),
        (614, "file exists".into()),
        "a token is spent once used"
    );
    let token = pairs[1].1.as_str();
    let cases: Vec<(Vec<Part>, (u16, &str))> = vec![
        (
            vec![file(Some("a.png"), &small)],
            (401, "token not specified"),
        ),
        (vec![field("token", token)], (400, "file not specified")),
        (
            vec![file(Some("a.png"), &small), field("token", token)],
            (400, "the token field must come before the file"),
        ),
        (
            vec![
                field("token", token),
                file(Some("a.png"), &small),
                field("x:note", "late"),
            ],
            (400, "the file must be the last field of the form"),
        ),
        (
            vec![field("token", token), file(None, &small)],
            (400, "file must be a file part with a filename"),
        ),
        (
            vec![field("token", token), file(Some(""), &small)],
            (400, "file must be a file part with a filename"),
        ),
        (
            vec![
                field("token", "ak:sign:bm9wZQ"),
                file(Some("a.png"), &small),
            ],
            (401, "bad token"),
        ),
        (
            vec![field("token", token), file(Some("big.png"), &big)],
            (413, "file size"),
        ),
    ];
    for (parts, (status, error)) in cases {
        let (got_status, got_error) = c.post_form(url, &parts).await.qiniu();
        assert_eq!(got_status, status, "{got_error}");
        assert!(got_error.starts_with(error), "{got_error} vs {error}");
    }
    // None of those spent the token.
    assert_eq!(c.upload(&pairs[1], &small).await.status, 200);
    let not_multipart = c
        .http
        .post(url)
        .header("Content-Type", "application/octet-stream")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(not_multipart.status(), 400);
    let stats = c.sandbox.jiandaoyun_stats();
    assert_eq!((stats.tokens_used, stats.tokens_reused), (2, 1));
}

#[tokio::test]
async fn a_token_past_its_deadline_is_refused_as_expired() {
    let c = Client::with(SandboxOptions {
        jiandaoyun_token_ttl: Duration::from_secs(1),
        ..SandboxOptions::default()
    });
    let pairs = c.tokens(TID).await;
    let deadline = policy(&pairs[0].1)["deadline"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let wait = Duration::from_secs(deadline as u64).saturating_sub(now);
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    assert_eq!(
        c.upload(&pairs[0], &png(4, 4, 4)).await.qiniu(),
        (401, "expired token".into())
    );
    assert_eq!(c.sandbox.jiandaoyun_stats().tokens_expired, 1);
}

#[tokio::test]
async fn a_record_takes_only_keys_of_its_own_live_transaction() {
    let c = Client::new();
    let mine = c.tokens(TID).await;
    let other_tid = "0f8a3c7e-1d2b-4c5d-8e9f-a0b1c2d3e4f5";
    let theirs = c.tokens(other_tid).await;
    let key = |reply: Reply| reply.body["key"].as_str().unwrap().to_string();
    let k1 = key(c.upload(&mine[0], &png(5, 4, 4)).await);
    let k2 = key(c.upload(&theirs[0], &png(6, 4, 4)).await);

    let created = c.create(TID, &[&k1]).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.body["data"]["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert_eq!(
        created.body["data"]["_widget_1432728651402"][0]["url"],
        c.url(&format!("/qiniu-sandbox/files/{k1}"))
    );
    let records = c.sandbox.jiandaoyun_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, id);
    assert_eq!(records[0].keys, std::slice::from_ref(&k1));
    assert_eq!(records[0].transaction_id.as_deref(), Some(TID));

    assert_eq!(
        c.create(TID, &[&k2]).await.refused(),
        (400, 17_025),
        "another transaction's key"
    );
    assert_eq!(c.create(other_tid, &[&k1]).await.refused(), (400, 17_025));
    assert_eq!(
        c.create("11111111-2222-4333-8444-555555555555", &[&k1])
            .await
            .refused(),
        (400, 17_025),
        "a transaction that was never opened"
    );
    assert_eq!(
        c.create(TID, &["made-up-key"]).await.refused(),
        (400, 17_025)
    );
    assert_eq!(c.create("${tid}", &[&k1]).await.refused(), (400, 17_025));

    let account = c.sandbox.options().jiandaoyun;
    let bad_data = json!({"app_id": account.app_id, "entry_id": account.entry_id,
        "transaction_id": TID, "data": {"_widget_1": "bare, not {value: …}"}});
    assert_eq!(
        c.json(CREATE, Some(&c.bearer()), &bad_data.to_string())
            .await
            .refused(),
        (400, 1)
    );
    let wrong_form = json!({"app_id": account.app_id, "entry_id": "x",
        "transaction_id": TID, "data": {}});
    assert_eq!(
        c.json(CREATE, Some(&c.bearer()), &wrong_form.to_string())
            .await
            .refused(),
        (400, 3000)
    );
    let good = json!({"app_id": account.app_id, "entry_id": account.entry_id,
        "transaction_id": TID, "data": {"_widget_1": {"value": [k1]}}});
    assert_eq!(
        c.json(CREATE, Some("Bearer wrong"), &good.to_string())
            .await
            .refused(),
        (400, 8301)
    );
    assert_eq!(c.sandbox.jiandaoyun_records().len(), 1);
}

#[tokio::test]
async fn a_record_after_its_transaction_ended_is_refused() {
    let c = Client::with(SandboxOptions {
        jiandaoyun_token_ttl: Duration::from_secs(1),
        ..SandboxOptions::default()
    });
    let pairs = c.tokens(TID).await;
    let reply = c.upload(&pairs[0], &png(7, 4, 4)).await;
    let key = reply.body["key"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let late = c.create(TID, &[&key]).await;
    assert_eq!(late.refused(), (400, 17_025));
    assert_eq!(late.body["msg"], "The transaction has expired.");
    assert!(c.sandbox.jiandaoyun_records().is_empty());
}

#[tokio::test]
async fn rate_limits_are_answered_with_jiandaoyuns_codes() {
    let c = Client::with(SandboxOptions {
        jiandaoyun_per_second: 2,
        jiandaoyun_company_per_second: 3,
        ..SandboxOptions::default()
    });
    let bearer = c.bearer();
    let request = c.token_request(TID);
    for _ in 0..2 {
        assert_eq!(c.json(TOKEN, Some(&bearer), &request).await.status, 200);
    }
    let limited = c.json(TOKEN, Some(&bearer), &request).await;
    assert_eq!(
        limited.body,
        json!({"code": 8303, "msg": "超出请求频率限制"}),
        "the interface's 2 a second"
    );
    assert_eq!(limited.status, 400);
    let pairs = c.sandbox.jiandaoyun_transactions()[TID].tokens_issued;
    assert_eq!(pairs, 200);
    // A refused call does not count: data/create has room, and so has the company (3 a second
    // over all calls) for one more.
    assert_eq!(c.create(TID, &[]).await.status, 200);
    let company = c.create(TID, &[]).await;
    assert_eq!(company.refused(), (400, 8304), "the company's 3 a second");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let batch = c.tokens("22222222-3333-4444-8555-666666666666").await;
    let bytes = png(8, 4, 4);
    assert_eq!(c.upload(&batch[0], &bytes).await.status, 200);
    assert_eq!(c.upload(&batch[1], &bytes).await.status, 200);
    assert_eq!(
        c.upload(&batch[2], &bytes).await.qiniu(),
        (573, "too many requests".into())
    );
}

#[tokio::test]
async fn injected_faults_answer_per_endpoint() {
    let c = Client::new();
    c.sandbox
        .inject_jiandaoyun(JdyEndpoint::Create, [Fault::Http(502)]);
    c.sandbox
        .inject_jiandaoyun(JdyEndpoint::Upload, [Fault::Http(579)]);
    c.sandbox
        .inject_jiandaoyun(JdyEndpoint::Token, [Fault::Business(17_027)]);
    let failed = c
        .json(TOKEN, Some(&c.bearer()), &c.token_request(TID))
        .await;
    assert_eq!(failed.refused(), (400, 17_027));
    let pairs = c.tokens(TID).await;
    assert_eq!(
        c.upload(&pairs[0], &png(9, 4, 4)).await.qiniu(),
        (579, "callback failed".into())
    );
    let reply = c.upload(&pairs[0], &png(9, 4, 4)).await;
    assert_eq!(reply.status, 200, "an injected failure spends no token");
    let key = reply.body["key"].as_str().unwrap().to_string();
    assert_eq!(c.create(TID, &[&key]).await.status, 502);
    assert_eq!(c.create(TID, &[&key]).await.status, 200);
}
