//! Feishu / Lark lingo (飞书词典): upload an image as multipart `name` + `file` with a
//! tenant_access_token, get a `file_token`. Lingo has no API to delete a file, so nothing is deleted.
//! The only place that knows Feishu's wire format on the client side.

mod config;

pub use config::FeishuConfig;

use std::path::Path;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, Received};
use super::kind::KindSpec;
use super::outcome::{Call, Outcome};
use super::ratelimit::Pacer;
use super::token::{self, TOKEN_COOL_DOWN, Token, TokenCache};
use super::{Limits, UploadRequest, epoch_ms};
use crate::config::Secret;
use crate::image::ImageFormat;
use crate::journal::Remote;

pub const TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";
pub const UPLOAD_PATH: &str = "/open-apis/lingo/v1/files/upload";
/// `GET` with the file_token in place of `{file_token}`: the uploaded bytes.
pub const DOWNLOAD_PATH: &str = "/open-apis/lingo/v1/files/{file_token}/download";

/// Lingo: the parameters (the file, its name) are not acceptable.
pub const ERR_INVALID_PARAM: i64 = 2_250_001;
/// Lingo: "network anomaly, please try again" (a timeout inside Feishu).
pub const ERR_NETWORK: i64 = 2_250_002;
/// The gateway's rate limit ("request trigger frequency limit").
pub const ERR_RATE_LIMITED: i64 = 99_991_400;
/// The token was refused (invalid, expired, wrong kind, missing, malformed): fetch a new one.
pub const TOKEN_INVALID: &[i64] = &[99_991_663, 99_991_664, 99_991_671, 99_991_661, 99_991_668];
/// The token endpoint refused app_id / app_secret (10003 invalid param: an unknown app_id;
/// 10014 app secret invalid; 99991543 app_id or app_secret incorrect; …).
pub const CREDENTIALS_REFUSED: &[i64] = &[10_003, 10_012, 10_013, 10_014, 10_015, 99_991_543];
/// The app is disabled, or not installed in the tenant.
pub const APP_UNAVAILABLE: &[i64] = &[99_991_662, 99_991_673];
/// The app has not been granted the API's scope.
pub const NO_PERMISSION: &[i64] = &[99_991_672, 99_991_676];

/// The `name` field: 1–100 characters.
pub const MAX_NAME_CHARS: usize = 100;

/// What lingo takes: six formats, each side 320–4096 px, 3 KB–10 MB.
/// What Feishu lingo is, for the rest of the daemon. Lingo also takes icons.
pub const SPEC: KindSpec = KindSpec {
    name: "feishu",
    default_base_url: "https://open.feishu.cn",
    no_delete: Some("feishu lingo has no file delete API"),
    reference_field: "file_token",
    default_include: &[
        "*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.webp", "*.ico",
    ],
    limits: LIMITS,
    documented_rate: Some((DEFAULT_PER_SECOND, DEFAULT_PER_MINUTE)),
    config_keys: &["app_id", "app_secret", "app_secret_file"],
};

pub const LIMITS: Limits = Limits {
    vendor: "Feishu",
    formats: &[
        ImageFormat::Ico,
        ImageFormat::Bmp,
        ImageFormat::Gif,
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Webp,
    ],
    min_bytes: 3 * 1024,
    max_bytes: 10 * 1024 * 1024,
    min_px: Some(320),
    max_px: Some(4096),
};

/// The documented limits of the upload API: 50 calls a second and 1000 a minute.
pub const DEFAULT_PER_SECOND: u32 = 50;
pub const DEFAULT_PER_MINUTE: u32 = 1000;

/// A token is refreshed a tenth of its lifetime early, but never more than this early.
const MAX_REFRESH_MARGIN_MS: i64 = 10 * 60 * 1000;
/// When a 429 comes without `x-ogw-ratelimit-reset`.
const DEFAULT_RATE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Feishu {
    base_url: String,
    config: FeishuConfig,
    http: reqwest::Client,
    token: TokenCache<Call<()>>,
    pacer: Pacer,
}

/// Every answer Feishu gives has `code` and `msg`; the rest depends on the call.
#[derive(Deserialize)]
struct Reply {
    code: Option<i64>,
    msg: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    error: Value,
    tenant_access_token: Option<String>,
    expire: Option<i64>,
}

/// An answer as read off the wire.
pub(crate) struct Answer {
    status: u16,
    wait: Option<Duration>,
    reply: Option<Reply>,
    body: Vec<u8>,
}

impl Feishu {
    pub fn new(
        base_url: &str,
        config: FeishuConfig,
        http: reqwest::Client,
        per_second: Option<u32>,
        per_minute: Option<u32>,
    ) -> Feishu {
        Feishu {
            base_url: base_url.trim_end_matches('/').to_string(),
            config,
            http,
            token: TokenCache::default(),
            pacer: Pacer::new(
                per_second.unwrap_or(DEFAULT_PER_SECOND),
                per_minute.unwrap_or(DEFAULT_PER_MINUTE),
            ),
        }
    }

    /// Asks for a new tenant_access_token; a failure comes with how long to wait before asking again.
    async fn fetch_token(&self) -> Result<Token, (Call<()>, Duration)> {
        let body = json!({
            "app_id": self.config.app_id,
            "app_secret": self.config.app_secret.expose(),
        });
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{TOKEN_PATH}", self.base_url))
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await;
        let answer = Answer::receive(response).await;
        crate::metrics::request("token", started);
        let answer = match answer {
            Ok(answer) => answer,
            Err(call) => return Err((call, TOKEN_COOL_DOWN)),
        };
        let outcome = answer.token();
        token::fetched(outcome, TOKEN_COOL_DOWN, |outcome| answer.call(outcome))
    }

    async fn token(&self) -> Result<Secret, Call<()>> {
        self.token.get(|| self.fetch_token()).await
    }

    /// After a reload: a remembered token failure may have been fixed.
    pub async fn forget_failures(&self) {
        self.token.clear_failure().await;
    }

    /// `check --online`: fetch a token.
    pub async fn check_online(&self) -> Call<()> {
        match self.fetch_token().await {
            Ok(_) => Call::new(Outcome::Done(()), Some(200), None),
            Err((call, _)) => call,
        }
    }

    pub async fn upload(&self, request: &UploadRequest<'_>) -> Call<Remote> {
        let token = match self.token().await {
            Ok(token) => token,
            Err(call) => return call.cast(),
        };
        let form = upload_form(&lingo_name(request), request.bytes);
        self.pacer.ready().await;
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{UPLOAD_PATH}", self.base_url))
            .bearer_auth(token.expose())
            .timeout(http::upload_time(request.bytes.len()))
            .multipart(form)
            .send()
            .await;
        let answer = Answer::receive(response).await;
        crate::metrics::request("upload", started);
        let answer = match answer {
            Ok(answer) => answer,
            Err(call) => return call,
        };
        let outcome = answer.uploaded();
        match &outcome {
            Outcome::Reauth { .. } => self.token.invalidate(&token).await,
            Outcome::Throttled {
                after: Some(after), ..
            } => self.pacer.hold(*after),
            _ => {}
        }
        answer.call(outcome)
    }
}

impl Answer {
    async fn receive<T>(
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Answer, Call<T>> {
        Ok(Answer::of(http::receive(response).await?))
    }

    /// An answer as it came off the wire, its JSON read when it is JSON.
    pub(crate) fn of(received: Received) -> Answer {
        let Received {
            status, wait, body, ..
        } = received;
        Answer {
            status,
            wait,
            reply: serde_json::from_slice(&body).ok(),
            body,
        }
    }

    /// A token answer: the tenant_access_token and when to refresh it, or the failure.
    pub(crate) fn token(&self) -> Outcome<Token> {
        self.failure("token").unwrap_or_else(|| {
            let reply = self.reply.as_ref();
            match reply.and_then(|r| r.tenant_access_token.as_deref()) {
                Some(token) if !token.is_empty() => {
                    let now = epoch_ms();
                    // `expire` is the seconds the token has left; without one, assume the usual 2 h.
                    let expire = reply.and_then(|r| r.expire).unwrap_or(7200);
                    Outcome::Done(Token {
                        value: Secret::new(token),
                        refresh_at_ms: refresh_at(now, expire),
                        expires_at_ms: now.saturating_add(expire.max(0).saturating_mul(1000)),
                    })
                }
                _ => Outcome::Retry {
                    after: None,
                    reason: format!(
                        "feishu token: the answer has no tenant_access_token: {}",
                        self.snippet()
                    ),
                },
            }
        })
    }

    /// An upload answer: the file_token, or the failure.
    pub(crate) fn uploaded(&self) -> Outcome<Remote> {
        let outcome = self
            .unread_success("upload")
            .or_else(|| self.failure("upload"));
        outcome.unwrap_or_else(|| {
            let file_token = self
                .reply
                .as_ref()
                .and_then(|r| r.data.get("file_token"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            match file_token {
                Some(file_token) => Outcome::Done(Remote {
                    reference: file_token.to_string(),
                    ..Remote::default()
                }),
                // The file may well be stored: sending it again could store it twice. Stop and
                // let a person look.
                None => Outcome::Unconfirmed {
                    reason: format!(
                        "feishu accepted the upload but its answer has no data.file_token: {}",
                        self.snippet()
                    ),
                },
            }
        })
    }

    fn code(&self) -> Option<i64> {
        self.reply.as_ref().and_then(|r| r.code)
    }

    /// A 2xx that is not JSON of the documented shape, or whose JSON has no `code`, is no answer
    /// Feishu documents: whether the call was carried out cannot be read. For a call that stores
    /// something, sending it again could store it twice, so it is unconfirmed rather than retried.
    fn unread_success<T>(&self, what: &str) -> Option<Outcome<T>> {
        ((200..300).contains(&self.status) && self.code().is_none()).then(|| Outcome::Unconfirmed {
            reason: format!(
                "feishu {what}: HTTP {} with an answer that has no code: {}",
                self.status,
                self.snippet()
            ),
        })
    }

    pub(crate) fn call<T>(&self, outcome: Outcome<T>) -> Call<T> {
        Call::new(
            outcome,
            Some(self.status),
            self.code().map(|c| c.to_string()),
        )
    }

    fn snippet(&self) -> String {
        super::http::snippet(&self.body, 300)
    }

    /// What Feishu said: `msg` and the fields it objected to.
    fn message(&self) -> String {
        let Some(reply) = &self.reply else {
            return self.snippet();
        };
        let text = reply.msg.clone().unwrap_or_default();
        let violations: Vec<String> = reply
            .error
            .get("field_violations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| {
                let field = v.get("field").and_then(Value::as_str).unwrap_or("?");
                let why = v.get("description").and_then(Value::as_str).unwrap_or("");
                format!("{field}: {why}")
            })
            .collect();
        // Redacted whole: a violation of a field named like a secret may quote its value, and
        // the value ends at the `;` or `)` after it.
        let said = match violations.is_empty() {
            true => text,
            false => format!("{text} ({})", violations.join("; ")),
        };
        super::http::vendor_text(&said)
    }

    /// The failure this answer is, if it is one, with the log_id Feishu's support asks for.
    fn failure<T>(&self, what: &str) -> Option<Outcome<T>> {
        let outcome = classify(self.status, self.code(), &self.message(), what, self.wait)?;
        let log_id = self
            .reply
            .as_ref()
            .and_then(|r| r.error.get("log_id"))
            .and_then(Value::as_str);
        let Some(log_id) = log_id else {
            return Some(outcome);
        };
        let tag = |reason: String| format!("{reason} [log_id {log_id}]");
        Some(match outcome {
            Outcome::Retry { after, reason } => Outcome::Retry {
                after,
                reason: tag(reason),
            },
            Outcome::Reauth { reason } => Outcome::Reauth {
                reason: tag(reason),
            },
            Outcome::Rejected { reason } => Outcome::Rejected {
                reason: tag(reason),
            },
            Outcome::VendorDown { reason } => Outcome::VendorDown {
                reason: tag(reason),
            },
            Outcome::Throttled { after, reason } => Outcome::Throttled {
                after,
                reason: tag(reason),
            },
            Outcome::Unconfirmed { reason } => Outcome::Unconfirmed {
                reason: tag(reason),
            },
            done @ Outcome::Done(_) => done,
        })
    }
}

/// Every failure Feishu answers, in the taxonomy; `None` for a success. `what` names the call.
pub fn classify<T>(
    status: u16,
    code: Option<i64>,
    message: &str,
    what: &str,
    wait: Option<Duration>,
) -> Option<Outcome<T>> {
    let said = match code {
        Some(code) => format!("feishu {what}: {message} (code {code}, HTTP {status})"),
        None => format!("feishu {what}: HTTP {status}: {message}"),
    };
    let retry = |reason| Outcome::Retry {
        after: wait,
        reason,
    };
    let in_set = |set: &[i64]| code.is_some_and(|c| set.contains(&c));
    Some(match (status, code) {
        (200..=299, Some(0)) => return None,
        _ if in_set(TOKEN_INVALID) => Outcome::Reauth { reason: said },
        (429, _) | (_, Some(ERR_RATE_LIMITED)) => {
            // A reset of 0 (the window reopening as it answered) would send the next call at
            // once, into the same closed window.
            let after = wait.map_or(DEFAULT_RATE_WAIT, |w| w.max(DEFAULT_RATE_WAIT));
            Outcome::Throttled {
                after: Some(after),
                reason: format!(
                    "feishu {what}: rate limited (HTTP {status}{}); the window reopens in {}s",
                    code.map(|c| format!(", code {c}")).unwrap_or_default(),
                    after.as_secs().max(1)
                ),
            }
        }
        (_, Some(ERR_INVALID_PARAM)) => Outcome::Rejected { reason: said },
        (_, Some(ERR_NETWORK)) => retry(said),
        _ if in_set(CREDENTIALS_REFUSED) => Outcome::VendorDown {
            reason: format!(
                "feishu refused app_id/app_secret: {message} (code {}); check app_id and app_secret, \
                 and that base_url is the platform the app belongs to \
                 (https://open.feishu.cn for Feishu, https://open.larksuite.com for Lark)",
                code.unwrap_or_default()
            ),
        },
        _ if in_set(APP_UNAVAILABLE) => Outcome::VendorDown {
            reason: format!(
                "{said}; the app is disabled or not installed in the tenant: enable it in the \
                 developer console"
            ),
        },
        _ if in_set(NO_PERMISSION) => Outcome::VendorDown {
            reason: format!(
                "{said}; the app lacks the permission baike:entity (or baike:entity:exempt_review): \
                 grant it in the developer console and publish a new version"
            ),
        },
        (500.., _) => retry(said),
        (401 | 403 | 404, None) => Outcome::VendorDown {
            reason: format!("{said}; check base_url"),
        },
        (413, None) => Outcome::Rejected { reason: said },
        _ => retry(said),
    })
}

/// When to refresh a token that has `expire` seconds left at `now_ms`: a tenth of its lifetime
/// early, at most ten minutes early (a 2 h token: at 1 h 50 min; a 60 s one: at 54 s).
pub fn refresh_at(now_ms: i64, expire: i64) -> i64 {
    // `expire` is the vendor's number: however large, it must not wrap into the past.
    let lifetime = expire.max(0).saturating_mul(1000);
    now_ms.saturating_add(lifetime) - (lifetime / 10).min(MAX_REFRESH_MARGIN_MS)
}

/// The extensions lingo takes in a `name`: its doc's six (icon, bmp, gif, png, jpeg, webp) and
/// their usual short forms. Not `jpe`, which the daemon itself takes for a JPEG.
const LINGO_EXTENSIONS: [&str; 8] = ["ico", "icon", "bmp", "gif", "png", "jpeg", "jpg", "webp"];

/// The `name` lingo gets: the file's name, with an extension lingo takes (the content's, when the
/// name has none of those), at most 100 characters.
pub fn lingo_name(request: &UploadRequest<'_>) -> String {
    let name = request.file_name_with_suffix();
    let has_image_extension = Path::new(&name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| LINGO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    let name = if has_image_extension {
        name
    } else {
        format!("{name}.{}", request.format.extension())
    };
    shorten(&name, MAX_NAME_CHARS)
}

/// `name` cut to `max` characters (not bytes, so the result is valid UTF-8) with its extension kept.
pub fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    let room = max.saturating_sub(extension.chars().count());
    if room == 0 {
        return name.chars().take(max).collect();
    }
    stem.chars().take(room).chain(extension.chars()).collect()
}

/// The multipart body: `name` first, then `file` with a filename. Both parts are in memory, so
/// the length is known and the request carries a Content-Length (no chunked upload).
pub fn upload_form(name: &str, bytes: &[u8]) -> Form {
    // The filename parameter is a quoted string in a header: keep it to characters that need no escape.
    let filename: String = name
        .chars()
        .map(|c| {
            if c.is_control() || c == '"' || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let file = Part::bytes(bytes.to_vec())
        .file_name(filename)
        .mime_str("application/octet-stream")
        .expect("a constant MIME type parses");
    Form::new()
        .percent_encode_noop()
        .text("name", name.to_string())
        .part("file", file)
}

#[cfg(test)]
mod tests;
