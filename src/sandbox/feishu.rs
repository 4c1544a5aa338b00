//! Feishu lingo, emulated: tenant_access_token issue and expiry, the gateway's token checks and
//! rate windows (HTTP 429, code 99991400, `x-ogw-ratelimit-*` headers), and the upload's own rules
//! (multipart `name` before `file`, name length, format, size and pixel limits: code 2250001).

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::multipart::{self, FormPart};
use super::wire::{self, Wire};
use super::{Fault, Logged, Sandbox, Window};
use crate::adapters::feishu::{
    DOWNLOAD_PATH, ERR_INVALID_PARAM, ERR_NETWORK, ERR_RATE_LIMITED, TOKEN_PATH, UPLOAD_PATH,
};
use crate::journal::now_ms;

const MIN_BYTES: usize = 3 * 1024;
const MAX_BYTES: usize = 10 * 1024 * 1024;
const MIN_PX: usize = 320;
const MAX_PX: usize = 4096;
const MAX_NAME_CHARS: usize = 100;
/// A token asked for again while more than this part of its life remains is handed out again
/// (Feishu: with more than 30 minutes of 2 hours left).
const REISSUE_DIVISOR: i64 = 4;

/// The self-built app the emulated tenant has installed.
#[derive(Clone, PartialEq, Eq)]
pub struct FeishuAccount {
    pub app_id: String,
    pub app_secret: String,
}

impl std::fmt::Debug for FeishuAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeishuAccount")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Default for FeishuAccount {
    fn default() -> Self {
        FeishuAccount {
            app_id: "cli_sandbox0a1b2c3d4".into(),
            app_secret: "sandbox-feishu-app-secret".into(),
        }
    }
}

/// An image lingo holds, as it was uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeishuFile {
    pub file_token: String,
    /// The `name` field.
    pub name: String,
    /// The `file` part's filename parameter.
    pub filename: String,
    /// The `file` part's Content-Type, if it had one.
    pub content_type: Option<String>,
    /// The request's Content-Length header (`None`: sent chunked).
    pub content_length: Option<u64>,
    /// The form's field names in the order they came.
    pub fields: Vec<String>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub(super) struct FeishuState {
    /// Issued tenant_access_tokens and when they expire (epoch ms).
    pub tokens: HashMap<String, i64>,
    /// The newest token, handed out again while most of its life remains.
    pub latest: Option<String>,
    second: Window,
    minute: Window,
    pub files: BTreeMap<String, FeishuFile>,
    /// Upload requests answered, and how many of them were refused.
    pub upload_requests: usize,
    pub refused: usize,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route(UPLOAD_PATH, post(upload))
        .route(DOWNLOAD_PATH, get(download))
}

/// A refusal: the status, body and headers the real API answers with.
struct Refusal {
    status: u16,
    code: i64,
    msg: String,
    violation: Option<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
}

fn refusal(status: u16, code: i64, msg: &str) -> Refusal {
    Refusal {
        status,
        code,
        msg: msg.to_string(),
        violation: None,
        headers: Vec::new(),
    }
}

/// Lingo's "invalid param", with the field and why (as Feishu's `error.field_violations`).
fn invalid(field: &'static str, why: impl Into<String>) -> Refusal {
    Refusal {
        violation: Some((field, why.into())),
        ..refusal(400, ERR_INVALID_PARAM, "invalid param")
    }
}

/// The HTTP status the real API answers a code with.
fn status_of(code: i64) -> u16 {
    match code {
        ERR_NETWORK => 500,
        ERR_RATE_LIMITED => 429,
        _ => 400,
    }
}

fn random_text(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

fn log_id() -> String {
    format!("2024{}", random_text(28).to_ascii_uppercase())
}

impl Sandbox {
    fn feishu_answer(
        &self,
        path: &str,
        arrived_ms: i64,
        result: Result<Value, Refusal>,
    ) -> Response {
        let (status, code, body, headers) = match result {
            Ok(body) => (200, 0, body, Vec::new()),
            Err(r) => {
                let mut error = json!({
                    "log_id": log_id(),
                    "troubleshooter": format!(
                        "排查建议查看(Troubleshooting suggestions): https://open.feishu.cn/search?q={}",
                        r.code
                    ),
                });
                if let Some((field, description)) = &r.violation {
                    error["field_violations"] =
                        json!([{"field": field, "description": description}]);
                }
                // The auth endpoint answers with `code` and `msg` only.
                let body = if path == TOKEN_PATH {
                    json!({"code": r.code, "msg": r.msg})
                } else {
                    json!({"code": r.code, "msg": r.msg, "error": error})
                };
                (r.status, r.code, body, r.headers)
            }
        };
        {
            let mut state = self.lock();
            state.log.push(Logged {
                method: "POST".into(),
                path: path.to_string(),
                status,
                errcode: (status != 0).then_some(code),
                at_ms: arrived_ms,
            });
            if path == UPLOAD_PATH {
                state.feishu.upload_requests += 1;
                if code != 0 {
                    state.feishu.refused += 1;
                }
            }
        }
        let mut response = super::json_reply(status, body);
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        response
    }

    /// The gateway's check of `Authorization: Bearer <tenant_access_token>`.
    fn feishu_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let missing = || {
            refusal(
                400,
                99_991_661,
                "Missing access token for authorization. Please make a request with token attached.",
            )
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(missing)?;
        if token.starts_with("a-") {
            return Err(refusal(
                400,
                99_991_664,
                "Invalid app access token for authorization. Please make a request with token attached.",
            ));
        }
        if !(token.starts_with("t-") || token.starts_with("u-")) {
            return Err(refusal(
                400,
                99_991_671,
                "Invalid token format: the token must start with \"t-\" or \"u-\".",
            ));
        }
        match self.lock().feishu.tokens.get(token) {
            Some(expires) if *expires > now_ms() => Ok(()),
            _ => Err(refusal(
                400,
                99_991_663,
                "Invalid access token for authorization. Please make a request with token attached.",
            )),
        }
    }

    /// Both rate windows, counted per app; a refused request does not count.
    fn feishu_admit(&self) -> Result<(), Refusal> {
        let mut state = self.lock();
        let now = now_ms();
        let limits = [
            (1_000, state.options.feishu_per_second),
            (60_000, state.options.feishu_per_minute),
        ];
        let feishu = &mut state.feishu;
        for (window, (span, limit)) in [&mut feishu.second, &mut feishu.minute]
            .into_iter()
            .zip(limits)
        {
            if !window.has_room(now, span, limit) {
                let reset_s = (window.reopens_in(now, span) + 999) / 1000;
                return Err(Refusal {
                    headers: vec![
                        ("x-ogw-ratelimit-limit", limit.to_string()),
                        ("x-ogw-ratelimit-reset", reset_s.max(1).to_string()),
                    ],
                    ..refusal(429, ERR_RATE_LIMITED, "request trigger frequency limit")
                });
            }
        }
        feishu.second.push(now);
        feishu.minute.push(now);
        Ok(())
    }

    /// An injected fault, answered the way Feishu answers that kind of trouble; `Ok(true)`: carry
    /// the call out, but answer its success in the wrong shape.
    async fn feishu_fault(&self) -> Result<bool, Refusal> {
        let fault = self.lock().next_fault();
        match fault {
            None => Ok(false),
            Some(Fault::Gateway(code)) => Err(refusal(
                status_of(code),
                code,
                "network anomaly, please try again (injected)",
            )),
            Some(Fault::Business(code)) => Err(refusal(200, code, "injected business error")),
            Some(Fault::Http(status)) => Err(refusal(
                status,
                i64::from(status),
                "upstream unavailable (injected)",
            )),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
            Some(Fault::Reset) => {
                wire::mark(Wire::Cut);
                Err(refusal(0, 0, "connection dropped (injected)"))
            }
            Some(Fault::SlowAnswer(d)) => {
                wire::mark(Wire::Hold(d));
                Ok(false)
            }
            Some(Fault::SlowBody(d)) => {
                wire::mark(Wire::Trickle(d));
                Ok(false)
            }
            Some(Fault::Throttled(d)) => Err(Refusal {
                headers: vec![
                    ("x-ogw-ratelimit-limit", "50".into()),
                    ("x-ogw-ratelimit-reset", d.as_secs().max(1).to_string()),
                ],
                ..refusal(429, ERR_RATE_LIMITED, "request trigger frequency limit")
            }),
            Some(Fault::WrongShape) => Ok(true),
            // Lost answers are emulated for Kingdee's gateway only; here they fail loudly.
            Some(Fault::LoseAnswer(status)) => Err(refusal(
                status,
                i64::from(status),
                "lost answer (injected; not carried out by the lingo emulator)",
            )),
            Some(Fault::NoUrl) => Err(refusal(502, 502, "NoUrl is a Kingdee fault (injected)")),
            Some(Fault::Later(wait, _)) => {
                tokio::time::sleep(wait).await;
                Err(refusal(502, 502, "a slow fault (injected)"))
            }
        }
    }

    fn feishu_store(&self, file: FeishuFile) -> String {
        let mut state = self.lock();
        let token = loop {
            let token = format!("boxbc{}", random_text(22));
            if !state.feishu.files.contains_key(&token) {
                break token;
            }
        };
        state.feishu.files.insert(
            token.clone(),
            FeishuFile {
                file_token: token.clone(),
                ..file
            },
        );
        token
    }
}

async fn token(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let arrived = now_ms();
    let result = (|| {
        let request: Value =
            serde_json::from_slice(&body).map_err(|_| refusal(400, 10_003, "invalid param"))?;
        let field = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("");
        let mut state = sandbox.lock();
        let account = state.options.feishu.clone();
        if field("app_id").is_empty() || field("app_id") != account.app_id {
            return Err(refusal(200, 10_003, "invalid param"));
        }
        if field("app_secret") != account.app_secret {
            return Err(refusal(200, 10_014, "app secret invalid"));
        }
        let now = now_ms();
        let ttl = state.options.feishu_token_ttl.as_millis() as i64;
        let reusable = state.feishu.latest.as_ref().and_then(|t| {
            let expires = *state.feishu.tokens.get(t)?;
            (expires - now > ttl / REISSUE_DIVISOR).then(|| (t.clone(), expires))
        });
        let (token, expires) = reusable.unwrap_or_else(|| {
            let token = format!("t-g{}", random_text(40));
            state.feishu.tokens.insert(token.clone(), now + ttl);
            state.issued.push(token.clone());
            state.feishu.latest = Some(token.clone());
            (token, now + ttl)
        });
        Ok(json!({
            "code": 0,
            "msg": "ok",
            "tenant_access_token": token,
            "expire": (expires - now) / 1000,
        }))
    })();
    sandbox.feishu_answer(TOKEN_PATH, arrived, result)
}

async fn upload(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    let result = async {
        if method != Method::POST {
            return Err(refusal(405, 405, "method not allowed"));
        }
        sandbox.feishu_bearer(&headers)?;
        sandbox.feishu_admit()?;
        let wrong_shape = sandbox.feishu_fault().await?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multipart::boundary(content_type).ok_or_else(|| {
            invalid(
                "body",
                format!(
                    "Content-Type must be multipart/form-data with a boundary, not {content_type:?}"
                ),
            )
        })?;
        let parts = multipart::parse(&body, &boundary).map_err(|e| invalid("body", e))?;
        let position = |field: &str| parts.iter().position(|p| p.name == field);
        let (name_at, file_at) = match (position("name"), position("file")) {
            (None, _) => return Err(invalid("name", "name is required")),
            (_, None) => return Err(invalid("file", "file is required")),
            (Some(n), Some(f)) => (n, f),
        };
        if name_at > file_at {
            return Err(invalid("name", "the name field must come before the file"));
        }
        let name = check_name(&parts[name_at])?;
        let file = &parts[file_at];
        let filename = file
            .filename
            .clone()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("file", "file must be a file part with a filename"))?;
        check_image(&file.data)?;
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let file_token = sandbox.feishu_store(FeishuFile {
            file_token: String::new(),
            name,
            filename,
            content_type: file.content_type.clone(),
            content_length,
            fields: parts.iter().map(|p| p.name.clone()).collect(),
            bytes: file.data.clone(),
        });
        if wrong_shape {
            // Stored, but answered in another API's shape: no `code`, no `data.file_token`.
            return Ok(json!({
                "StatusCode": 0,
                "StatusMessage": "success",
                "data": {"fileToken": file_token}
            }));
        }
        Ok(json!({"code": 0, "msg": "success", "data": {"file_token": file_token}}))
    }
    .await;
    sandbox.feishu_answer(UPLOAD_PATH, arrived, result)
}

/// `name`: a plain field, 1–100 characters, naming one of the six image types.
fn check_name(part: &FormPart) -> Result<String, Refusal> {
    if part.filename.is_some() {
        return Err(invalid("name", "name must be a text field, not a file"));
    }
    let name =
        String::from_utf8(part.data.clone()).map_err(|_| invalid("name", "name is not UTF-8"))?;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!(
                "the length of name must be between 1 and {MAX_NAME_CHARS} characters, got {chars}"
            ),
        ));
    }
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if !["ico", "icon", "bmp", "gif", "png", "jpeg", "jpg", "webp"].contains(&extension.as_str()) {
        return Err(invalid(
            "name",
            "only images can be uploaded: icon, bmp, gif, png, jpeg or webp",
        ));
    }
    Ok(name)
}

/// The file: 3 KB–10 MB, one of the six types by its magic, each side 320–4096 px.
fn check_image(bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.len() < MIN_BYTES || bytes.len() > MAX_BYTES {
        return Err(invalid(
            "file",
            format!("the image must be 3KB-10MB, got {} bytes", bytes.len()),
        ));
    }
    let (width, height) = dimensions(bytes).ok_or_else(|| {
        invalid(
            "file",
            "the file is not an icon, bmp, gif, png, jpeg or webp image",
        )
    })?;
    let fits = |side: usize| (MIN_PX..=MAX_PX).contains(&side);
    if !fits(width) || !fits(height) {
        return Err(invalid(
            "file",
            format!("width and height must be 320-4096 pixels, got {width}x{height}"),
        ));
    }
    Ok(())
}

/// Width and height of an image of an accepted type, from its header.
fn dimensions(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.starts_with(&[0, 0, 1, 0]) {
        // ICO: the first directory entry (0 means 256), or the PNG it holds.
        let entry = bytes.get(6..22)?;
        let offset = u32::from_le_bytes(entry[12..16].try_into().ok()?) as usize;
        let data = bytes.get(offset..)?;
        if data.starts_with(b"\x89PNG\r\n\x1a\n") {
            let ihdr = data.get(16..24)?;
            let side = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            return Some((side(&ihdr[..4]), side(&ihdr[4..])));
        }
        let side = |b: u8| if b == 0 { 256 } else { usize::from(b) };
        return Some((side(entry[0]), side(entry[1])));
    }
    let accepted = matches!(
        imagesize::image_type(bytes).ok()?,
        imagesize::ImageType::Jpeg
            | imagesize::ImageType::Png
            | imagesize::ImageType::Gif
            | imagesize::ImageType::Bmp
            | imagesize::ImageType::Webp
    );
    let size = imagesize::blob_size(bytes).ok().filter(|_| accepted)?;
    Some((size.width, size.height))
}

async fn download(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Path(file_token): Path<String>,
) -> Response {
    if let Err(r) = sandbox.feishu_bearer(&headers) {
        return super::json_reply(r.status, json!({"code": r.code, "msg": r.msg}));
    }
    match sandbox.lock().feishu.files.get(&file_token) {
        Some(file) => (
            [(
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    file.filename.replace('"', "_")
                ),
            )],
            file.bytes.clone(),
        )
            .into_response(),
        None => super::json_reply(
            404,
            json!({"code": ERR_INVALID_PARAM, "msg": "file not found"}),
        ),
    }
}
