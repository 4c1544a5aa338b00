//! The sandbox is a strict vendor: what the Kingdee gateway refuses, it refuses, with the gateway's
//! status and body. Requests here are built by hand, not by the adapter, so a mistake in one is not
//! mirrored in the other.

use base64::Engine;
use imgsyncd::adapters::kingdee::{DELETE_PATH, TOKEN_PATH, UPLOAD_PATH, sign};
use imgsyncd::journal::now_ms;
use imgsyncd::sandbox::{KingdeeAccount, Sandbox, SandboxOptions};
use serde_json::{Value, json};

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

struct Client {
    sandbox: Sandbox,
    account: KingdeeAccount,
    http: reqwest::Client,
}

/// What a request is built from; each test spoils one part.
struct Call {
    method: reqwest::Method,
    path: &'static str,
    query: Vec<(String, String)>,
    timestamp: i64,
    nonce: String,
    secret: String,
    token: Option<String>,
    router: String,
    body: Option<Value>,
}

impl Client {
    fn new() -> Client {
        let sandbox = Sandbox::start(SandboxOptions {
            kingdee_token_per_minute: 100,
            ..SandboxOptions::default()
        });
        Client {
            account: sandbox.options().kingdee,
            sandbox,
            http: reqwest::Client::new(),
        }
    }

    fn call(&self, method: reqwest::Method, path: &'static str) -> Call {
        Call {
            method,
            path,
            query: Vec::new(),
            timestamp: now_ms(),
            nonce: fastrand::u64(1_000_000_000..9_999_999_999).to_string(),
            secret: self.account.client_secret.clone(),
            token: None,
            router: self.account.domain.clone(),
            body: None,
        }
    }

    async fn send(&self, call: Call) -> (u16, Value) {
        let params: Vec<(&str, &str)> = call
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let timestamp = call.timestamp.to_string();
        let signature = sign::signature(
            &call.secret,
            call.method.as_str(),
            call.path,
            &params,
            &call.nonce,
            &timestamp,
        );
        let mut request = self
            .http
            .request(
                call.method,
                format!("{}{}", self.sandbox.base_url(), call.path),
            )
            .query(&call.query)
            .header("Content-Type", "application/json")
            .header("X-Api-ClientID", &self.account.client_id)
            .header("X-Api-Auth-Version", "2.0")
            .header("X-Api-TimeStamp", &timestamp)
            .header("X-Api-Nonce", &call.nonce)
            .header("X-Api-SignHeaders", "X-Api-TimeStamp,X-Api-Nonce")
            .header("X-Api-Signature", signature)
            .header("X-GW-Router-Addr", &call.router);
        if let Some(token) = &call.token {
            request = request.header("app-token", token);
        }
        if let Some(body) = &call.body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn token_call(&self, app_secret: &str) -> Call {
        let mut call = self.call(reqwest::Method::GET, TOKEN_PATH);
        call.query = vec![
            ("app_key".into(), self.account.app_key.clone()),
            (
                "app_signature".into(),
                sign::app_signature(&self.account.app_key, app_secret),
            ),
        ];
        call
    }

    async fn token(&self) -> String {
        let (status, body) = self
            .send(self.token_call(&self.account.app_secret.clone()))
            .await;
        assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
        body["data"]["app-token"].as_str().unwrap().to_string()
    }

    async fn upload_call(&self, base_string: String, filename: &str) -> Call {
        let mut call = self.call(reqwest::Method::POST, UPLOAD_PATH);
        call.token = Some(self.token().await);
        call.body =
            Some(json!({"base_string": base_string, "filename": filename, "save_temp": "false"}));
        call
    }
}

fn data_url(subtype: &str, bytes: &[u8]) -> String {
    format!(
        "data:image/{subtype};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn gateway_code(reply: &(u16, Value)) -> (u16, i64) {
    (reply.0, reply.1["errcode"].as_i64().unwrap())
}

#[tokio::test]
async fn a_correct_upload_and_delete_round_trip() {
    let c = Client::new();
    let call = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    let (status, body) = c.send(call).await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
    let url = body["data"]["rows"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(c.sandbox.images()[&url].bytes, PNG_1X1);
    let fetched = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(&fetched[..], PNG_1X1, "the URL serves the image");

    let mut delete = c.call(reqwest::Method::DELETE, DELETE_PATH);
    delete.token = Some(c.token().await);
    delete.body = Some(json!({ "url": url }));
    let (status, body) = c.send(delete).await;
    assert_eq!(
        (status, body["data"]["result"].as_str()),
        (200, Some("图片删除成功"))
    );
    assert!(c.sandbox.images().is_empty());
}

#[tokio::test]
async fn a_wrong_signature_is_refused_by_the_gateway() {
    let c = Client::new();
    let mut call = c.token_call(&c.account.app_secret.clone());
    call.secret = "not-the-secret".into();
    let reply = c.send(call).await;
    assert_eq!(gateway_code(&reply), (519, 4002));
    assert!(reply.1["description"].as_str().unwrap().ends_with("[GW]"));
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_as_clock_skew() {
    let c = Client::new();
    let mut call = c.token_call(&c.account.app_secret.clone());
    call.timestamp -= 6 * 60 * 1000;
    assert_eq!(gateway_code(&c.send(call).await), (519, 4006));
}

#[tokio::test]
async fn a_reused_nonce_is_refused() {
    let c = Client::new();
    let first = c.token_call(&c.account.app_secret.clone());
    let nonce = first.nonce.clone();
    assert_eq!(c.send(first).await.0, 200);
    let mut again = c.token_call(&c.account.app_secret.clone());
    again.nonce = nonce;
    assert_eq!(gateway_code(&c.send(again).await), (519, 4007));
}

#[tokio::test]
async fn a_wrong_app_secret_gets_the_app_auth_errcode() {
    let c = Client::new();
    let reply = c.send(c.token_call("wrong")).await;
    assert_eq!(gateway_code(&reply), (200, 1_030_002_006));
}

#[tokio::test]
async fn business_calls_need_a_live_token_and_the_right_router() {
    let c = Client::new();
    let mut call = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    call.token = None;
    assert_eq!(gateway_code(&c.send(call).await), (519, 4009));
    let mut call = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    call.token = Some("made-up".into());
    assert_eq!(gateway_code(&c.send(call).await), (519, 4010));
    let mut call = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    call.router = "https://other.jdy.com".into();
    assert_eq!(gateway_code(&c.send(call).await), (519, 4012));
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    let sandbox = Sandbox::start(SandboxOptions {
        kingdee_token_ttl: std::time::Duration::from_millis(200),
        ..SandboxOptions::default()
    });
    let c = Client {
        account: sandbox.options().kingdee,
        sandbox,
        http: reqwest::Client::new(),
    };
    let call = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gateway_code(&c.send(call).await), (519, 4011));
}

#[tokio::test]
async fn the_data_url_must_match_the_content_and_the_fields_their_types() {
    let c = Client::new();
    let refused = |reply: (u16, Value)| {
        assert_eq!(reply.0, 200);
        assert_ne!(reply.1["errcode"].as_i64(), Some(0), "{}", reply.1);
        reply.1["description"].as_str().unwrap().to_string()
    };
    let mismatch = c.upload_call(data_url("jpeg", PNG_1X1), "p.jpg").await;
    assert!(refused(c.send(mismatch).await).contains("不符"));
    let not_image = c.upload_call(data_url("png", b"hello"), "p.png").await;
    assert!(refused(c.send(not_image).await).contains("不是图片"));
    let no_suffix = c.upload_call(data_url("png", PNG_1X1), "noext").await;
    assert!(refused(c.send(no_suffix).await).contains("后缀"));
    let mut boolean = c.upload_call(data_url("png", PNG_1X1), "p.png").await;
    boolean.body.as_mut().unwrap()["save_temp"] = json!(false);
    assert!(refused(c.send(boolean).await).contains("save_temp"));
    let bare = c.upload_call("iVBORw0KGgo=".into(), "p.png").await;
    assert!(refused(c.send(bare).await).contains("data:image/"));
    assert!(c.sandbox.images().is_empty());
}

#[tokio::test]
async fn deleting_an_unknown_url_is_refused() {
    let c = Client::new();
    let mut delete = c.call(reqwest::Method::DELETE, DELETE_PATH);
    delete.token = Some(c.token().await);
    delete.body = Some(json!({"url": "http://127.0.0.1/none.png"}));
    let (status, body) = c.send(delete).await;
    assert_eq!(status, 200);
    assert_eq!(body["description"], "图片不存在");
}

#[tokio::test]
async fn the_token_endpoint_is_rate_limited() {
    let sandbox = Sandbox::start(SandboxOptions::default());
    let c = Client {
        account: sandbox.options().kingdee,
        sandbox,
        http: reqwest::Client::new(),
    };
    let secret = c.account.app_secret.clone();
    assert_eq!(c.send(c.token_call(&secret)).await.0, 200);
    assert_eq!(c.send(c.token_call(&secret)).await.0, 200);
    assert_eq!(
        c.send(c.token_call(&secret)).await.0,
        429,
        "about 2 a minute"
    );
}
