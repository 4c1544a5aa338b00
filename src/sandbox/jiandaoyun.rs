//! Jiandaoyun, emulated: `get_upload_token` (Bearer API key, app and form, transaction_id format;
//! 100 Qiniu tokens with a real put-policy), the Qiniu form upload the tokens point at (single-use
//! tokens: 614 when sent again, 401 `expired token` after the deadline, 413 above `fsizeLimit`;
//! `token` before `file`, `file` last with a filename), and `data/create` (keys only from uploads of
//! the record's own transaction, within its hour). Rate limits answer 8303 (an interface's 20/s)
//! and 8304 (the company's 50/s) as HTTP 400 `{code, msg}`, Qiniu 573.
//!
//! Which of 8303/8304 is the interface and which the company limit, and the codes for a key not
//! bound to the transaction (17025 here), are inferred, not documented.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::multipart;
use super::wire::{self, Wire};
use super::{Fault, Logged, Sandbox, Window};
use crate::adapters::jiandaoyun::policy::{encode, uuid_v4};
use crate::adapters::jiandaoyun::{
    CREATE_PATH, ERR_COMPANY_RATE_LIMITED, ERR_RATE_LIMITED, ERR_TRANSACTION, TOKEN_PATH,
    TOKENS_PER_CALL,
};
use crate::journal::now_ms;

/// Where the issued tokens send files: the sandbox's own Qiniu-style form upload.
pub const QINIU_UPLOAD_PATH: &str = "/qiniu-sandbox/upload";
/// `GET` with a key in place of `{key}`: the bytes stored under it.
pub const QINIU_FILE_PATH: &str = "/qiniu-sandbox/files/{key}";

/// The company account the sandbox emulates: an API key, and the one app and form it may use.
#[derive(Clone, PartialEq, Eq)]
pub struct JiandaoyunAccount {
    pub api_key: String,
    pub app_id: String,
    pub entry_id: String,
}

impl std::fmt::Debug for JiandaoyunAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiandaoyunAccount")
            .field("app_id", &self.app_id)
            .field("entry_id", &self.entry_id)
            .finish_non_exhaustive()
    }
}

impl Default for JiandaoyunAccount {
    fn default() -> Self {
        JiandaoyunAccount {
            api_key: "sandbox-jiandaoyun-api-key-5f1e2d3c".into(),
            app_id: "5f1e2d3c4b5a69788796a5b4".into(),
            entry_id: "5f1e2d3c4b5a69788796a5b5".into(),
        }
    }
}

/// The three calls, for faults and refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JdyEndpoint {
    /// `POST /api/v5/app/entry/file/get_upload_token`
    Token,
    /// The Qiniu form upload.
    Upload,
    /// `POST /api/v5/app/entry/data/create`
    Create,
}

/// A file stored by the Qiniu upload, as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JdyUpload {
    pub key: String,
    /// The transaction of the token it was sent with: only that transaction's records may use it.
    pub transaction_id: String,
    /// The `file` part's filename parameter.
    pub filename: String,
    pub content_type: Option<String>,
    /// The request's Content-Length (`None`: sent chunked).
    pub content_length: Option<u64>,
    /// The form's field names in the order they came.
    pub fields: Vec<String>,
    pub bytes: Vec<u8>,
    pub at_ms: i64,
}

/// A form record `data/create` made.
#[derive(Debug, Clone, PartialEq)]
pub struct JdyRecord {
    pub id: String,
    pub transaction_id: Option<String>,
    /// The `data` sent.
    pub data: Value,
    /// The keys it holds (every string in a list value).
    pub keys: Vec<String>,
    pub at_ms: i64,
}

/// A transaction, as its first `get_upload_token` call opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JdyTransaction {
    pub id: String,
    pub created_ms: i64,
    /// Its keys can be used in records until then (its tokens die then too).
    pub deadline_ms: i64,
    pub tokens_issued: usize,
    /// The keys uploaded with its tokens.
    pub keys: Vec<String>,
}

/// Counts for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JdyStats {
    /// `get_upload_token` calls answered with tokens.
    pub token_calls: usize,
    pub tokens_issued: usize,
    /// Tokens a file was stored with.
    pub tokens_used: usize,
    /// Tokens sent again after they were used (answered 614).
    pub tokens_reused: usize,
    /// Tokens sent after their deadline (answered 401 `expired token`).
    pub tokens_expired: usize,
    /// Qiniu upload requests, stored or not.
    pub upload_requests: usize,
    /// `data/create` requests, and the records made.
    pub create_requests: usize,
    pub records: usize,
}

/// A request the sandbox refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JdyRefusal {
    pub endpoint: JdyEndpoint,
    pub status: u16,
    /// Jiandaoyun's `code` (`None` for Qiniu's `{error}`).
    pub code: Option<i64>,
    pub message: String,
    pub at_ms: i64,
}

/// A token the sandbox issued.
#[derive(Debug)]
struct Issued {
    transaction_id: String,
    /// When Qiniu takes it no more: its policy's deadline, unless a test expired it early.
    expires_ms: i64,
    fsize_limit: u64,
    save_key: String,
    used: bool,
    order: u64,
}

#[derive(Debug, Default)]
pub(super) struct JiandaoyunState {
    transactions: HashMap<String, JdyTransaction>,
    tokens: HashMap<String, Issued>,
    next_order: u64,
    uploads: BTreeMap<String, JdyUpload>,
    records: Vec<JdyRecord>,
    stats: JdyStats,
    refusals: Vec<JdyRefusal>,
    windows: HashMap<JdyEndpoint, Window>,
    company: Window,
    faults: VecDeque<(JdyEndpoint, Fault)>,
    /// While set, `get_upload_token` answers this attachment-quota code (7216–7219).
    quota_exhausted: Option<i64>,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(TOKEN_PATH, post(get_upload_token))
        .route(CREATE_PATH, post(create))
        .route(QINIU_UPLOAD_PATH, post(upload))
        .route(QINIU_FILE_PATH, get(download))
}

/// A refusal as the real service answers it.
struct Refusal {
    status: u16,
    code: Option<i64>,
    message: String,
}

/// Jiandaoyun's: HTTP 400 (or another status) with `{code, msg}`.
fn jdy(status: u16, code: i64, msg: &str) -> Refusal {
    Refusal {
        status,
        code: Some(code),
        message: msg.to_string(),
    }
}

/// Qiniu's: a status with `{error}`.
fn qiniu(status: u16, error: &str) -> Refusal {
    Refusal {
        status,
        code: None,
        message: error.to_string(),
    }
}

fn invalid_request() -> Refusal {
    jdy(400, 1, "The request is invalid.")
}

/// Qiniu's words for a status.
fn qiniu_error(status: u16) -> &'static str {
    match status {
        401 => "bad token",
        403 => "forbidden",
        406 => "crc32 not match",
        413 => "request entity too large",
        573 => "too many requests",
        579 => "callback failed",
        599 => "service unavailable",
        614 => "file exists",
        631 => "no such bucket",
        _ => "upstream unavailable",
    }
}

fn random_hex(len: usize) -> String {
    std::iter::repeat_with(|| char::from_digit(fastrand::u32(..16), 16).expect("a hex digit"))
        .take(len)
        .collect()
}

/// `${var}`, `$(var)`, `$(var}` and `${var)` are refused in a transaction_id.
fn has_variable(text: &str) -> bool {
    text.match_indices('$').any(|(at, _)| {
        let rest = &text[at + 1..];
        (rest.starts_with('{') || rest.starts_with('(')) && rest[1..].contains(['}', ')'])
    })
}

fn valid_transaction_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= 64 && !has_variable(id)
}

fn to_ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Sandbox {
    /// Logs the request, counts a refusal, and answers.
    fn jdy_answer(
        &self,
        endpoint: JdyEndpoint,
        path: &str,
        arrived_ms: i64,
        result: Result<Value, Refusal>,
    ) -> Response {
        let mut state = self.lock();
        let (status, errcode, body) = match result {
            Ok(body) => (200, (endpoint != JdyEndpoint::Upload).then_some(0), body),
            Err(r) if r.status == 0 => {
                state.jiandaoyun.refusals.push(JdyRefusal {
                    endpoint,
                    status: 0,
                    code: None,
                    message: r.message.clone(),
                    at_ms: arrived_ms,
                });
                (0, None, Value::Null)
            }
            Err(r) => {
                state.jiandaoyun.refusals.push(JdyRefusal {
                    endpoint,
                    status: r.status,
                    code: r.code,
                    message: r.message.clone(),
                    at_ms: arrived_ms,
                });
                let body = match r.code {
                    Some(code) => json!({"code": code, "msg": r.message}),
                    None if endpoint == JdyEndpoint::Upload => json!({"error": r.message}),
                    None => json!({"msg": r.message}),
                };
                (r.status, r.code, body)
            }
        };
        state.log.push(Logged {
            method: "POST".into(),
            path: path.to_string(),
            status,
            errcode,
            at_ms: arrived_ms,
        });
        drop(state);
        super::json_reply(status, body)
    }

    /// `Authorization: Bearer <api key>`.
    fn jdy_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match key {
            Some(key) if key == self.lock().options.jiandaoyun.api_key => Ok(()),
            _ => Err(jdy(400, 8301, "The API key is invalid.")),
        }
    }

    /// The interface's window and the company's; a refused request does not count.
    fn jdy_admit(&self, endpoint: JdyEndpoint) -> Result<(), Refusal> {
        let mut state = self.lock();
        let now = now_ms();
        let (per_second, company) = (
            state.options.jiandaoyun_per_second,
            state.options.jiandaoyun_company_per_second,
        );
        let jdy_state = &mut state.jiandaoyun;
        let window = jdy_state.windows.entry(endpoint).or_default();
        let limited = if !window.has_room(now, 1_000, per_second) {
            Some((ERR_RATE_LIMITED, "超出请求频率限制"))
        } else if !jdy_state.company.has_room(now, 1_000, company) {
            Some((ERR_COMPANY_RATE_LIMITED, "超出企业请求频率限制"))
        } else {
            None
        };
        match limited {
            None => {
                jdy_state.windows.entry(endpoint).or_default().push(now);
                jdy_state.company.push(now);
                Ok(())
            }
            Some(_) if endpoint == JdyEndpoint::Upload => Err(qiniu(573, qiniu_error(573))),
            Some((code, msg)) => Err(jdy(400, code, msg)),
        }
    }

    /// An injected fault for `endpoint`, answered the way that service answers that trouble;
    /// `Ok(true)`: carry the call out, but answer its success in the wrong shape.
    async fn jdy_fault(&self, endpoint: JdyEndpoint) -> Result<bool, Refusal> {
        let fault = {
            let mut state = self.lock();
            let faults = &mut state.jiandaoyun.faults;
            faults
                .iter()
                .position(|(e, _)| *e == endpoint)
                .and_then(|at| faults.remove(at))
                .map(|(_, f)| f)
                // Drawn faults are for business calls: get_upload_token is a token call.
                .or_else(|| {
                    (endpoint != JdyEndpoint::Token)
                        .then(|| state.chaos.draw())
                        .flatten()
                })
        };
        match fault {
            None => Ok(false),
            Some(Fault::Gateway(code)) | Some(Fault::Business(code)) => {
                let status = if code == 429 { 429 } else { 400 };
                Err(jdy(status, code, "injected error"))
            }
            Some(Fault::Http(status)) if endpoint == JdyEndpoint::Upload => {
                Err(qiniu(status, qiniu_error(status)))
            }
            Some(Fault::Http(status)) => Err(Refusal {
                status,
                code: None,
                message: "upstream unavailable (injected)".into(),
            }),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
            Some(Fault::Reset) => {
                wire::mark(Wire::Cut);
                Err(Refusal {
                    status: 0,
                    code: None,
                    message: "connection dropped (injected)".into(),
                })
            }
            Some(Fault::SlowAnswer(d)) => {
                wire::mark(Wire::Hold(d));
                Ok(false)
            }
            Some(Fault::SlowBody(d)) => {
                wire::mark(Wire::Trickle(d));
                Ok(false)
            }
            Some(Fault::Throttled(d)) => {
                wire::mark(Wire::Header("retry-after", d.as_secs().max(1).to_string()));
                Err(if endpoint == JdyEndpoint::Upload {
                    qiniu(573, qiniu_error(573))
                } else {
                    jdy(429, ERR_RATE_LIMITED, "超出请求频率限制")
                })
            }
            Some(Fault::WrongShape) => Ok(true),
            // Lost answers and missing URLs are emulated for Kingdee's gateway only.
            Some(Fault::LoseAnswer(status)) => Err(Refusal {
                status,
                code: None,
                message: "lost answer (injected; not carried out by this emulator)".into(),
            }),
            Some(Fault::NoUrl) => Err(Refusal {
                status: 502,
                code: None,
                message: "NoUrl is a Kingdee fault (injected)".into(),
            }),
            Some(Fault::Later(wait, _)) => {
                tokio::time::sleep(wait).await;
                Err(Refusal {
                    status: 502,
                    code: None,
                    message: "a slow fault (injected)".into(),
                })
            }
        }
    }

    /// The app and form of a request body.
    fn jdy_app_and_form(&self, request: &Value) -> Result<(), Refusal> {
        let account = self.lock().options.jiandaoyun.clone();
        let field = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("");
        if field("app_id") != account.app_id {
            return Err(jdy(400, 17_018, "The app does not exist."));
        }
        if field("entry_id") != account.entry_id {
            return Err(jdy(400, 3000, "The form does not exist."));
        }
        Ok(())
    }

    /// 100 tokens for the transaction, each with its own key, the TTL and the size limit.
    fn jdy_issue(&self, transaction_id: &str) -> Value {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = now_ms() + state.clock_offset_ms;
        let options = &state.options;
        let ttl = to_ms(options.jiandaoyun_token_ttl);
        let fsize_limit = options.jiandaoyun_fsize_limit;
        let base = state.base_url.clone();
        let account = options.jiandaoyun.clone();
        let jdy_state = &mut state.jiandaoyun;
        let transaction = jdy_state
            .transactions
            .entry(transaction_id.to_string())
            .or_insert_with(|| JdyTransaction {
                id: transaction_id.to_string(),
                created_ms: now,
                // Qiniu deadlines are whole seconds: round up, so a token lives at least the TTL.
                deadline_ms: (now + ttl + 999) / 1000 * 1000,
                tokens_issued: 0,
                keys: Vec::new(),
            });
        let deadline_s = transaction.deadline_ms / 1000;
        transaction.tokens_issued += TOKENS_PER_CALL;
        let mut list = Vec::with_capacity(TOKENS_PER_CALL);
        for _ in 0..TOKENS_PER_CALL {
            let save_key = uuid_v4();
            let callback_body = json!({
                "appId": account.app_id, "entryId": account.entry_id, "key": "$(key)",
                "hash": "$(etag)", "name": "$(fname)", "size": "$(fsize)",
                "mime": "$(mimeType)", "bucket": "jdy-sandbox-file",
                "transactionId": transaction_id,
            });
            let policy = json!({
                "fsizeMin": 1,
                "fsizeLimit": fsize_limit,
                "callbackBodyType": "application/json",
                "callbackBody": callback_body.to_string(),
                "callbackUrl": format!("{base}/qiniu-sandbox/callback"),
                "forceSaveKey": true,
                "saveKey": save_key,
                "scope": "jdy-sandbox-upload",
                "deadline": deadline_s,
            });
            let encoded = encode(&policy);
            let sign = base64::engine::general_purpose::URL_SAFE
                .encode(&Sha256::digest(format!("sandbox-qiniu-secret:{encoded}"))[..20]);
            let token = format!("SandboxQiniuAccessKey0jdy:{sign}:{encoded}");
            jdy_state.next_order += 1;
            jdy_state.tokens.insert(
                token.clone(),
                Issued {
                    transaction_id: transaction_id.to_string(),
                    expires_ms: deadline_s * 1000,
                    fsize_limit,
                    save_key,
                    used: false,
                    order: jdy_state.next_order,
                },
            );
            list.push(json!({"url": format!("{base}{QINIU_UPLOAD_PATH}"), "token": token}));
        }
        jdy_state.stats.token_calls += 1;
        jdy_state.stats.tokens_issued += TOKENS_PER_CALL;
        json!({ "token_and_url_list": list })
    }

    // ---- what tests look at ---------------------------------------------------------------

    /// The files the Qiniu upload stored, by key.
    pub fn jiandaoyun_uploads(&self) -> BTreeMap<String, JdyUpload> {
        self.lock().jiandaoyun.uploads.clone()
    }

    /// The records `data/create` made, in order.
    pub fn jiandaoyun_records(&self) -> Vec<JdyRecord> {
        self.lock().jiandaoyun.records.clone()
    }

    /// Every transaction opened, by id.
    pub fn jiandaoyun_transactions(&self) -> BTreeMap<String, JdyTransaction> {
        self.lock()
            .jiandaoyun
            .transactions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn jiandaoyun_stats(&self) -> JdyStats {
        self.lock().jiandaoyun.stats.clone()
    }

    /// Every request refused, in order.
    pub fn jiandaoyun_refusals(&self) -> Vec<JdyRefusal> {
        self.lock().jiandaoyun.refusals.clone()
    }

    /// Changes the account the sandbox accepts (a rotated key, another app or form).
    pub fn set_jiandaoyun_account(&self, account: JiandaoyunAccount) {
        self.lock().options.jiandaoyun = account;
    }

    /// Until called again with `None`, `get_upload_token` answers HTTP 400 with this code of the
    /// attachment quota (7216–7219), as Jiandaoyun does once a company's attachments fill its plan.
    pub fn exhaust_jiandaoyun_quota(&self, code: Option<i64>) {
        self.lock().jiandaoyun.quota_exhausted = code;
    }

    /// Queues failures for the next calls to `endpoint`, in order.
    pub fn inject_jiandaoyun(
        &self,
        endpoint: JdyEndpoint,
        faults: impl IntoIterator<Item = Fault>,
    ) {
        let mut state = self.lock();
        state
            .jiandaoyun
            .faults
            .extend(faults.into_iter().map(|f| (endpoint, f)));
    }

    /// Marks the next `n` unused tokens (in the order they were issued) as used, as if another
    /// client had sent files with them: the daemon's next tries are answered 614. Returns how many.
    pub fn spend_jiandaoyun_tokens(&self, n: usize) -> usize {
        let mut state = self.lock();
        let tokens = &mut state.jiandaoyun.tokens;
        let mut unused: Vec<(u64, String)> = tokens
            .iter()
            .filter(|(_, t)| !t.used)
            .map(|(k, t)| (t.order, k.clone()))
            .collect();
        unused.sort();
        unused.truncate(n);
        for (_, key) in &unused {
            if let Some(token) = tokens.get_mut(key) {
                token.used = true;
            }
        }
        unused.len()
    }

    /// Every issued token dies now, whatever its policy says (as if this host's clock were behind
    /// Qiniu's): the next upload with one is answered 401 `expired token`.
    pub fn expire_jiandaoyun_tokens(&self) {
        let now = self.clock_ms();
        for token in self.lock().jiandaoyun.tokens.values_mut() {
            token.expires_ms = token.expires_ms.min(now);
        }
    }
}

async fn get_upload_token(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    let result = async {
        if method != Method::POST {
            return Err(jdy(405, 1, "The request is invalid."));
        }
        sandbox.jdy_bearer(&headers)?;
        sandbox.jdy_admit(JdyEndpoint::Token)?;
        let wrong_shape = sandbox.jdy_fault(JdyEndpoint::Token).await?;
        let request: Value = serde_json::from_slice(&body).map_err(|_| invalid_request())?;
        if !request.is_object() {
            return Err(invalid_request());
        }
        sandbox.jdy_app_and_form(&request)?;
        if let Some(code) = sandbox.lock().jiandaoyun.quota_exhausted {
            return Err(jdy(
                400,
                code,
                "附件容量已超出上限 (attachment quota exhausted)",
            ));
        }
        let transaction_id = request
            .get("transaction_id")
            .and_then(Value::as_str)
            .filter(|t| valid_transaction_id(t))
            .ok_or_else(|| jdy(400, ERR_TRANSACTION, "The transaction_id is invalid."))?;
        let issued = sandbox.jdy_issue(transaction_id);
        if wrong_shape {
            return Ok(json!({ "tokens": issued["token_and_url_list"] }));
        }
        Ok(issued)
    }
    .await;
    sandbox.jdy_answer(JdyEndpoint::Token, TOKEN_PATH, arrived, result)
}

async fn upload(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    sandbox.lock().jiandaoyun.stats.upload_requests += 1;
    let result = async {
        if method != Method::POST {
            return Err(qiniu(405, "method not allowed"));
        }
        sandbox.jdy_admit(JdyEndpoint::Upload)?;
        let wrong_shape = sandbox.jdy_fault(JdyEndpoint::Upload).await?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multipart::boundary(content_type).ok_or_else(|| {
            qiniu(
                400,
                &format!(
                    "Content-Type must be multipart/form-data with a boundary, not {content_type:?}"
                ),
            )
        })?;
        let parts = multipart::parse(&body, &boundary).map_err(|e| qiniu(400, &e))?;
        let position = |field: &str| parts.iter().position(|p| p.name == field);
        let token_at = position("token").ok_or_else(|| qiniu(401, "token not specified"))?;
        let file_at = position("file").ok_or_else(|| qiniu(400, "file not specified"))?;
        if token_at > file_at {
            return Err(qiniu(400, "the token field must come before the file"));
        }
        if file_at + 1 != parts.len() {
            return Err(qiniu(400, "the file must be the last field of the form"));
        }
        let file = &parts[file_at];
        let filename = file
            .filename
            .clone()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| qiniu(400, "file must be a file part with a filename"))?;
        let token =
            String::from_utf8(parts[token_at].data.clone()).map_err(|_| qiniu(401, "bad token"))?;
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut guard = sandbox.lock();
        let now = now_ms() + guard.clock_offset_ms;
        let state = &mut guard.jiandaoyun;
        let issued = state
            .tokens
            .get_mut(token.trim())
            .ok_or_else(|| qiniu(401, "bad token"))?;
        if issued.expires_ms <= now {
            state.stats.tokens_expired += 1;
            return Err(qiniu(401, "expired token"));
        }
        if issued.used {
            state.stats.tokens_reused += 1;
            return Err(qiniu(614, "file exists"));
        }
        let size = file.data.len() as u64;
        if size > issued.fsize_limit {
            return Err(qiniu(
                413,
                &format!(
                    "file size {size} exceeds the fsizeLimit of {} bytes",
                    issued.fsize_limit
                ),
            ));
        }
        if size == 0 {
            return Err(qiniu(403, "file size is below the fsizeMin of 1 byte"));
        }
        issued.used = true;
        let key = issued.save_key.clone();
        let transaction_id = issued.transaction_id.clone();
        state.stats.tokens_used += 1;
        if let Some(transaction) = state.transactions.get_mut(&transaction_id) {
            transaction.keys.push(key.clone());
        }
        state.uploads.insert(
            key.clone(),
            JdyUpload {
                key: key.clone(),
                transaction_id,
                filename: filename.clone(),
                content_type: file.content_type.clone(),
                content_length,
                fields: parts.iter().map(|p| p.name.clone()).collect(),
                bytes: file.data.clone(),
                at_ms: arrived,
            },
        );
        let hash = format!(
            "Fs{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&Sha256::digest(&file.data)[..20])
        );
        if wrong_shape {
            // Stored, but the answer names it otherwise: no `key`.
            return Ok(json!({"fkey": key, "hash": hash, "fname": filename, "fsize": size}));
        }
        Ok(json!({"key": key, "hash": hash, "name": filename, "size": size}))
    }
    .await;
    sandbox.jdy_answer(JdyEndpoint::Upload, QINIU_UPLOAD_PATH, arrived, result)
}

async fn create(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    sandbox.lock().jiandaoyun.stats.create_requests += 1;
    let result = async {
        if method != Method::POST {
            return Err(jdy(405, 1, "The request is invalid."));
        }
        sandbox.jdy_bearer(&headers)?;
        sandbox.jdy_admit(JdyEndpoint::Create)?;
        let wrong_shape = sandbox.jdy_fault(JdyEndpoint::Create).await?;
        let request: Value = serde_json::from_slice(&body).map_err(|_| invalid_request())?;
        sandbox.jdy_app_and_form(&request)?;
        let transaction_id = match request.get("transaction_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if valid_transaction_id(t) => Some(t.clone()),
            Some(_) => return Err(jdy(400, ERR_TRANSACTION, "The transaction_id is invalid.")),
        };
        let data = request
            .get("data")
            .and_then(Value::as_object)
            .ok_or_else(invalid_request)?;
        // Every widget is `{value: …}`; a list of strings is files, by key.
        let mut keys = Vec::new();
        for value in data.values() {
            let value = value.get("value").ok_or_else(invalid_request)?;
            if let Value::Array(items) = value {
                for item in items {
                    keys.push(item.as_str().ok_or_else(invalid_request)?.to_string());
                }
            }
        }
        let mut guard = sandbox.lock();
        let base = guard.base_url.clone();
        let now = now_ms() + guard.clock_offset_ms;
        let state = &mut guard.jiandaoyun;
        if !keys.is_empty() {
            let transaction = transaction_id
                .as_ref()
                .and_then(|t| state.transactions.get(t))
                .ok_or_else(|| {
                    jdy(
                        400,
                        ERR_TRANSACTION,
                        "The files were not uploaded in this transaction.",
                    )
                })?;
            if transaction.deadline_ms <= now {
                return Err(jdy(400, ERR_TRANSACTION, "The transaction has expired."));
            }
            if let Some(stranger) = keys.iter().find(|k| !transaction.keys.contains(k)) {
                return Err(jdy(
                    400,
                    ERR_TRANSACTION,
                    &format!("The file {stranger} was not uploaded in this transaction."),
                ));
            }
        }
        let id = random_hex(24);
        let mut answer = Map::new();
        answer.insert("_id".into(), json!(id));
        answer.insert("appId".into(), request["app_id"].clone());
        answer.insert("entryId".into(), request["entry_id"].clone());
        answer.insert(
            "createTime".into(),
            json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
        );
        for (widget, value) in data {
            let value = &value["value"];
            let shown = match value {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|key| {
                            let upload = state.uploads.get(key);
                            json!({
                                "name": upload.map(|u| u.filename.clone()),
                                "size": upload.map(|u| u.bytes.len()),
                                "mime": upload.and_then(|u| u.content_type.clone()),
                                "url": format!("{base}/qiniu-sandbox/files/{key}"),
                            })
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            answer.insert(widget.clone(), shown);
        }
        state.records.push(JdyRecord {
            id,
            transaction_id,
            data: Value::Object(data.clone()),
            keys,
            at_ms: arrived,
        });
        state.stats.records += 1;
        if wrong_shape {
            // Made, but answered without `data._id`.
            let id = answer.remove("_id").unwrap_or_default();
            answer.insert("id".into(), id);
            return Ok(json!({ "record": answer }));
        }
        Ok(json!({ "data": answer }))
    }
    .await;
    sandbox.jdy_answer(JdyEndpoint::Create, CREATE_PATH, arrived, result)
}

async fn download(State(sandbox): State<Sandbox>, Path(key): Path<String>) -> Response {
    match sandbox.lock().jiandaoyun.uploads.get(&key) {
        Some(upload) => (
            [(
                header::CONTENT_TYPE,
                upload
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )],
            upload.bytes.clone(),
        )
            .into_response(),
        None => super::json_reply(404, json!({"error": "no such file or directory"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_in_a_transaction_id_are_refused() {
        for bad in [
            "${var}",
            "a$(b)c",
            "$(x}",
            "${x)",
            "",
            "   ",
            &"x".repeat(65),
        ] {
            assert!(!valid_transaction_id(bad), "{bad}");
        }
        for good in [
            "87cd7d71-c6df-4281-9927-469094395677",
            "$x",
            "a{b}",
            "${unclosed",
        ] {
            assert!(valid_transaction_id(good), "{good}");
        }
    }
}
