//! The sandbox is a strict Feishu: what the lingo upload API and its gateway refuse, it refuses, with
//! their status, code and body. Requests here are built by hand (raw multipart bodies, no adapter
//! code), so a mistake in the adapter is not mirrored here; requests shaped as the official SDKs
//! send them are accepted.

use std::io::Cursor;
use std::time::Duration;

use imgsyncd::sandbox::{Fault, Sandbox, SandboxOptions};
use serde_json::{Value, json};

const TOKEN: &str = "/open-apis/auth/v3/tenant_access_token/internal";
const UPLOAD: &str = "/open-apis/lingo/v1/files/upload";

/// A real image, `w`×`h` noisy pixels (so well over 3 KB).
fn image(format: image::ImageFormat, seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed.wrapping_mul(101));
        image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    image(image::ImageFormat::Png, 1, w, h)
}

/// An icon whose one entry is `data` (a PNG, or a BMP with `side` in the directory).
fn ico(side: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 1, 0, 1, 0, side, side, 0, 0, 1, 0, 32, 0];
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&22u32.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// One part of a hand-built multipart body.
struct Part<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    content_type: Option<&'a str>,
    data: &'a [u8],
}

fn field<'a>(name: &'a str, value: &'a str) -> Part<'a> {
    Part {
        name,
        filename: None,
        content_type: None,
        data: value.as_bytes(),
    }
}

fn file<'a>(filename: Option<&'a str>, data: &'a [u8]) -> Part<'a> {
    Part {
        name: "file",
        filename,
        content_type: Some("application/octet-stream"),
        data,
    }
}

/// The body and its Content-Type, parts in the order given.
fn multipart(boundary: &str, parts: &[Part]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(filename) = part.filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        if let Some(content_type) = part.content_type {
            body.extend_from_slice(format!("\r\nContent-Type: {content_type}").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(part.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> i64 {
        self.body["code"].as_i64().expect("a code")
    }

    /// The status and code of a refusal, after checking it says which field and why.
    fn refused(&self) -> (u16, i64) {
        assert_ne!(self.code(), 0, "{}", self.body);
        assert!(self.body["msg"].is_string(), "{}", self.body);
        (self.status, self.code())
    }

    fn violation(&self) -> String {
        let v = &self.body["error"]["field_violations"][0];
        format!(
            "{}: {}",
            v["field"].as_str().unwrap_or(""),
            v["description"].as_str().unwrap_or("")
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

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.expect("a JSON answer");
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn token_with(&self, app_id: &str, app_secret: &str) -> Reply {
        let response = self
            .http
            .post(self.url(TOKEN))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(json!({"app_id": app_id, "app_secret": app_secret}).to_string())
            .send()
            .await
            .unwrap();
        Client::reply(response).await
    }

    async fn token(&self) -> String {
        let account = self.sandbox.options().feishu;
        let reply = self.token_with(&account.app_id, &account.app_secret).await;
        assert_eq!((reply.status, reply.code()), (200, 0), "{}", reply.body);
        reply.body["tenant_access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// POSTs a raw body to the upload API with `authorization` (none when `None`).
    async fn post(&self, authorization: Option<&str>, content_type: &str, body: Vec<u8>) -> Reply {
        let mut request = self
            .http
            .post(self.url(UPLOAD))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        Client::reply(request.send().await.unwrap()).await
    }

    async fn upload(&self, parts: &[Part<'_>]) -> Reply {
        let bearer = format!("Bearer {}", self.token().await);
        let (content_type, body) = multipart("---7MA4YWxkTrZu0gW", parts);
        self.post(Some(&bearer), &content_type, body).await
    }
}

#[tokio::test]
async fn the_token_endpoint_issues_refuses_and_reissues() {
    let c = Client::new();
    let account = c.sandbox.options().feishu;
    let first = c.token_with(&account.app_id, &account.app_secret).await;
    assert_eq!((first.status, first.code()), (200, 0));
    assert_eq!(first.body["msg"], "ok");
    let token = first.body["tenant_access_token"].as_str().unwrap();
    assert!(token.starts_with("t-"), "{token}");
    assert!((7190..=7200).contains(&first.body["expire"].as_i64().unwrap()));
    // Asked again with most of its life left, Feishu hands out the same token.
    let again = c.token_with(&account.app_id, &account.app_secret).await;
    assert_eq!(again.body["tenant_access_token"], token);

    let wrong_secret = c.token_with(&account.app_id, "not-the-secret").await;
    assert_eq!(wrong_secret.status, 200);
    assert_eq!(
        wrong_secret.body,
        json!({"code": 10014, "msg": "app secret invalid"})
    );
    let wrong_app = c.token_with("cli_nobody", &account.app_secret).await;
    assert_eq!((wrong_app.status, wrong_app.code()), (200, 10003));
    assert_eq!(wrong_app.body["msg"], "invalid param");
}

#[tokio::test]
async fn an_upload_shaped_like_the_go_sdk_is_accepted() {
    // oapi-sdk-go: a mime/multipart writer (60-hex boundary), the file part named
    // "unknown-file" with application/octet-stream, a User-Agent of its own.
    let c = Client::new();
    let bytes = png(400, 320);
    let boundary = "9f2d0c7e1b3a4d5c6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3";
    let (content_type, body) = multipart(
        boundary,
        &[
            field("name", "示例图片.png"),
            file(Some("unknown-file"), &bytes),
        ],
    );
    let response = c
        .http
        .post(c.url(UPLOAD))
        .header("Authorization", format!("Bearer {}", c.token().await))
        .header("Content-Type", content_type)
        .header("User-Agent", "oapi-sdk-go/v3.4.0")
        .body(body)
        .send()
        .await
        .unwrap();
    let reply = Client::reply(response).await;
    assert_eq!((reply.status, reply.code()), (200, 0), "{}", reply.body);
    assert_eq!(reply.body["msg"], "success");
    let file_token = reply.body["data"]["file_token"].as_str().unwrap();
    assert!(file_token.starts_with("boxbc"), "{file_token}");
    let held = &c.sandbox.feishu_files()[file_token];
    assert_eq!(held.name, "示例图片.png");
    assert_eq!(held.filename, "unknown-file");
    assert_eq!(held.bytes, bytes);
    assert_eq!(held.fields, ["name", "file"]);

    // The download API serves it back with the same token.
    let fetched = c
        .http
        .get(c.url(&format!("/open-apis/lingo/v1/files/{file_token}/download")))
        .header("Authorization", format!("Bearer {}", c.token().await))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn an_upload_shaped_like_the_python_sdk_is_accepted() {
    // lark-oapi (httpx): data fields first, then files; the filename is the file's base name and
    // its type is guessed from it. reqwest's own form builder sends the same shape.
    let c = Client::new();
    let bytes = image(image::ImageFormat::Jpeg, 2, 640, 480);
    let form = reqwest::multipart::Form::new()
        .text("name", "photo.jpg")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name("photo.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    let response = c
        .http
        .post(c.url(UPLOAD))
        .bearer_auth(c.token().await)
        .header("User-Agent", "oapi-sdk-python/v1.4.0")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let reply = Client::reply(response).await;
    assert_eq!((reply.status, reply.code()), (200, 0), "{}", reply.body);
    let held = &c.sandbox.feishu_files()[reply.body["data"]["file_token"].as_str().unwrap()];
    assert_eq!(held.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(held.bytes, bytes);
}

#[tokio::test]
async fn every_accepted_format_goes_and_an_icon_holding_a_png_counts_its_pixels() {
    let c = Client::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a.png", png(320, 320)),
        ("b.jpeg", image(image::ImageFormat::Jpeg, 3, 4096, 320)),
        ("c.gif", image(image::ImageFormat::Gif, 4, 330, 330)),
        ("d.bmp", image(image::ImageFormat::Bmp, 5, 330, 330)),
        ("e.webp", image(image::ImageFormat::WebP, 6, 330, 330)),
        ("f.ico", ico(0, &png(512, 512))),
    ];
    for (name, bytes) in &cases {
        let reply = c
            .upload(&[field("name", name), file(Some(name), bytes)])
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (200, 0),
            "{name}: {}",
            reply.body
        );
    }
    assert_eq!(c.sandbox.feishu_files().len(), cases.len());
    assert_eq!(c.sandbox.feishu_refused(), 0);
}

#[tokio::test]
async fn the_gateway_checks_the_bearer_token() {
    let c = Client::new();
    let (content_type, body) = multipart(
        "b0undary",
        &[field("name", "a.png"), file(Some("a.png"), &png(330, 330))],
    );
    let mut codes = Vec::new();
    for authorization in [
        None,
        Some("Bearer "),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer not-a-token"),
        Some("Bearer a-app-access-token"),
        Some("Bearer t-made-up"),
    ] {
        let reply = c.post(authorization, &content_type, body.clone()).await;
        codes.push(reply.refused());
    }
    assert_eq!(
        codes,
        [
            (400, 99_991_661),
            (400, 99_991_661),
            (400, 99_991_661),
            (400, 99_991_671),
            (400, 99_991_664),
            (400, 99_991_663),
        ]
    );
    let token = c.token().await;
    c.sandbox.revoke_tokens();
    let reply = c
        .post(Some(&format!("Bearer {token}")), &content_type, body)
        .await;
    assert_eq!(reply.refused(), (400, 99_991_663), "a revoked token");
    assert!(
        reply.body["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid access token for authorization")
    );
    assert!(c.sandbox.feishu_files().is_empty());
    assert_eq!(c.sandbox.feishu_refused(), 7);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let c = Client::with(SandboxOptions {
        feishu_token_ttl: Duration::from_millis(1500),
        ..SandboxOptions::default()
    });
    let token = c.token().await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (content_type, body) = multipart(
        "b",
        &[field("name", "a.png"), file(Some("a.png"), &png(330, 330))],
    );
    let reply = c
        .post(Some(&format!("Bearer {token}")), &content_type, body)
        .await;
    assert_eq!(reply.refused(), (400, 99_991_663));
    let fresh = c.token().await;
    assert_ne!(fresh, token, "an expired token is never handed out again");
}

#[tokio::test]
async fn the_form_must_send_name_first_and_file_as_a_file() {
    let c = Client::new();
    let bytes = png(330, 330);
    let checks: Vec<(Vec<Part>, &str)> = vec![
        (
            vec![file(Some("a.png"), &bytes), field("name", "a.png")],
            "name: the name field must come before the file",
        ),
        (
            vec![field("name", "a.png"), file(None, &bytes)],
            "file: file must be a file part with a filename",
        ),
        (vec![file(Some("a.png"), &bytes)], "name: name is required"),
        (vec![field("name", "a.png")], "file: file is required"),
        (
            vec![
                Part {
                    name: "name",
                    filename: Some("a.png"),
                    content_type: None,
                    data: b"a.png",
                },
                file(Some("a.png"), &bytes),
            ],
            "name: name must be a text field, not a file",
        ),
    ];
    for (parts, expected) in checks {
        let reply = c.upload(&parts).await;
        assert_eq!(
            reply.refused(),
            (400, 2_250_001),
            "{expected}: {}",
            reply.body
        );
        assert_eq!(reply.body["msg"], "invalid param");
        assert_eq!(reply.violation(), expected);
        assert!(reply.body["error"]["log_id"].is_string());
    }
    // JSON instead of a form.
    let reply = c
        .post(
            Some(&format!("Bearer {}", c.token().await)),
            "application/json",
            br#"{"name":"a.png"}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.refused(), (400, 2_250_001));
    assert!(c.sandbox.feishu_files().is_empty());
}

#[tokio::test]
async fn the_name_is_one_to_a_hundred_characters_naming_an_image() {
    let c = Client::new();
    let bytes = png(330, 330);
    let hundred = format!("{}.png", "名".repeat(96));
    let reply = c
        .upload(&[field("name", &hundred), file(Some("x.png"), &bytes)])
        .await;
    assert_eq!(
        reply.code(),
        0,
        "100 characters (288 bytes) is fine: {}",
        reply.body
    );
    let too_long = format!("{}.png", "名".repeat(97));
    for (name, why) in [
        (
            too_long.as_str(),
            "name: the length of name must be between 1 and 100 characters, got 101",
        ),
        (
            "",
            "name: the length of name must be between 1 and 100 characters, got 0",
        ),
        (
            "notes.txt",
            "name: only images can be uploaded: icon, bmp, gif, png, jpeg or webp",
        ),
        (
            "no-extension",
            "name: only images can be uploaded: icon, bmp, gif, png, jpeg or webp",
        ),
    ] {
        let reply = c
            .upload(&[field("name", name), file(Some("x.png"), &bytes)])
            .await;
        assert_eq!(reply.refused(), (400, 2_250_001), "{name:?}");
        assert_eq!(reply.violation(), why);
    }
}

#[tokio::test]
async fn the_image_must_meet_the_format_size_and_pixel_limits() {
    let c = Client::new();
    let mut text = b"not an image at all ".repeat(300);
    text.truncate(4000);
    let huge = image(image::ImageFormat::Bmp, 8, 1900, 1900);
    assert!(huge.len() > 10 * 1024 * 1024, "{}", huge.len());
    let tiny = image(image::ImageFormat::Png, 9, 8, 8);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tiny.png", tiny, "file: the image must be 3KB-10MB, got"),
        ("huge.bmp", huge, "file: the image must be 3KB-10MB, got"),
        (
            "text.png",
            text,
            "file: the file is not an icon, bmp, gif, png, jpeg or webp image",
        ),
        (
            "narrow.png",
            png(319, 400),
            "file: width and height must be 320-4096 pixels, got 319x400",
        ),
        (
            "wide.png",
            png(4097, 330),
            "file: width and height must be 320-4096 pixels, got 4097x330",
        ),
        (
            "icon.ico",
            ico(0, &[0x28; 4000]),
            "file: width and height must be 320-4096 pixels, got 256x256",
        ),
    ];
    for (name, bytes, why) in &cases {
        let reply = c
            .upload(&[field("name", name), file(Some(name), bytes)])
            .await;
        assert_eq!(reply.refused(), (400, 2_250_001), "{name}");
        assert!(
            reply.violation().starts_with(why),
            "{name}: {}",
            reply.violation()
        );
    }
    assert!(c.sandbox.feishu_files().is_empty());
    assert_eq!(c.sandbox.feishu_refused(), cases.len());
    assert_eq!(c.sandbox.feishu_upload_requests(), cases.len());
}

#[tokio::test]
async fn both_rate_windows_answer_429_with_the_gateway_headers() {
    let c = Client::with(SandboxOptions {
        feishu_per_second: 3,
        ..SandboxOptions::default()
    });
    let bytes = png(330, 330);
    let parts = [field("name", "a.png"), file(Some("a.png"), &bytes)];
    for _ in 0..3 {
        assert_eq!(c.upload(&parts).await.code(), 0);
    }
    let limited = c.upload(&parts).await;
    assert_eq!(limited.refused(), (429, 99_991_400));
    assert_eq!(limited.body["msg"], "request trigger frequency limit");
    assert_eq!(limited.headers["x-ogw-ratelimit-limit"], "3");
    assert_eq!(limited.headers["x-ogw-ratelimit-reset"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.upload(&parts).await.code(),
        0,
        "the second window reopened"
    );

    let c = Client::with(SandboxOptions {
        feishu_per_minute: 2,
        ..SandboxOptions::default()
    });
    for _ in 0..2 {
        assert_eq!(c.upload(&parts).await.code(), 0);
    }
    let limited = c.upload(&parts).await;
    assert_eq!(limited.refused(), (429, 99_991_400));
    assert_eq!(limited.headers["x-ogw-ratelimit-limit"], "2");
    let reset: u64 = limited.headers["x-ogw-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((58..=60).contains(&reset), "{reset}");
    assert_eq!(c.sandbox.feishu_files().len(), 2);
}

#[tokio::test]
async fn injected_faults_answer_as_feishu_would() {
    let c = Client::new();
    c.sandbox.inject([
        Fault::Gateway(2_250_002),
        Fault::Business(1_234_567),
        Fault::Http(503),
    ]);
    let bytes = png(330, 330);
    let parts = [field("name", "a.png"), file(Some("a.png"), &bytes)];
    assert_eq!(c.upload(&parts).await.refused(), (500, 2_250_002));
    assert_eq!(c.upload(&parts).await.refused(), (200, 1_234_567));
    assert_eq!(c.upload(&parts).await.status, 503);
    assert_eq!(c.upload(&parts).await.code(), 0);
}
