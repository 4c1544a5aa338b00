//! Kingdee JDY (精斗云): upload an image as a data URL, get a URL; delete by URL.
//! The only place that knows Kingdee's wire format on the client side.

pub mod sign;

mod config;

pub use config::KingdeeConfig;

use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::http::{self, Received};
use super::kind::{DEFAULT_INCLUDE, KindSpec};
use super::outcome::{Call, Outcome};
use super::ratelimit::Pacer;
use super::token::{self, TOKEN_COOL_DOWN, Token, TokenCache, expiry_ms, refresh_point};
use super::{Limits, UploadRequest, epoch_ms};
use crate::config::Secret;
use crate::image::ImageFormat;
use crate::journal::Remote;

pub const TOKEN_PATH: &str = "/jdyconnector/app_management/kingdee_auth_token";
pub const UPLOAD_PATH: &str = "/jdy/v2/basedata/image_upload";
pub const DELETE_PATH: &str = "/jdy/v2/bd/material_picture";

/// Business error: system error, worth a retry.
pub const ERR_SYSTEM: i64 = 2_000_002_000;
/// Business error: the app key / app secret check failed.
pub const ERR_APP_AUTH: i64 = 1_030_002_006;

/// What Kingdee takes. It documents no size limit; 10 MB keeps the base64 JSON body (~13.4 MB)
/// well inside what gateways accept.
/// What Kingdee is, for the rest of the daemon.
pub const SPEC: KindSpec = KindSpec {
    name: "kingdee",
    default_base_url: "https://api.kingdee.com",
    no_delete: None,
    reference_field: "url",
    default_include: DEFAULT_INCLUDE,
    limits: LIMITS,
    // Kingdee documents none: its window is shared with the account set's other apps.
    documented_rate: None,
    config_keys: &[
        "client_id",
        "client_secret",
        "client_secret_file",
        "app_key",
        "app_secret",
        "app_secret_file",
        "domain",
        "save_temp",
    ],
};

pub const LIMITS: Limits = Limits {
    vendor: "Kingdee",
    formats: &[
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Webp,
    ],
    min_bytes: 1,
    max_bytes: 10 * 1024 * 1024,
    min_px: None,
    max_px: None,
};

/// What a 4006 (timestamp refused) says when the vendor's clock is not known.
const CLOCK_HINT: &str = "; this host's clock is off by more than 5 minutes: fix NTP";

/// Conservative defaults under the community figure of 500 requests a minute per account set.
pub const DEFAULT_PER_SECOND: u32 = 5;
pub const DEFAULT_PER_MINUTE: u32 = 300;

#[derive(Debug)]
pub struct Kingdee {
    base_url: String,
    config: KingdeeConfig,
    http: reqwest::Client,
    token: TokenCache<Call<()>>,
    pacer: Pacer,
    nonces: sign::Nonces,
    /// Rate-limit answers in a row that named no wait (each waits twice as long as the one
    /// before), and when the last wait ends: the answers to calls sent together are one.
    unhinted_throttles: std::sync::Mutex<(u32, Option<std::time::Instant>)>,
}

#[derive(Deserialize)]
struct Reply {
    errcode: Option<i64>,
    description: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

impl Kingdee {
    pub fn new(
        base_url: &str,
        config: KingdeeConfig,
        http: reqwest::Client,
        per_second: Option<u32>,
        per_minute: Option<u32>,
    ) -> Kingdee {
        Kingdee {
            base_url: base_url.trim_end_matches('/').to_string(),
            config,
            http,
            token: TokenCache::default(),
            pacer: Pacer::new(
                per_second.unwrap_or(DEFAULT_PER_SECOND),
                per_minute.unwrap_or(DEFAULT_PER_MINUTE),
            ),
            nonces: sign::Nonces::default(),
            unhinted_throttles: std::sync::Mutex::new((0, None)),
        }
    }

    fn signed_headers(&self, method: &str, path: &str, params: &[(&str, &str)]) -> HeaderMap {
        let nonce = self.nonces.next().to_string();
        let timestamp = epoch_ms().to_string();
        let signature = sign::signature(
            self.config.client_secret.expose(),
            method,
            path,
            params,
            &nonce,
            &timestamp,
        );
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        put("content-type", "application/json");
        put("x-api-clientid", &self.config.client_id);
        put("x-api-auth-version", "2.0");
        put("x-api-timestamp", &timestamp);
        put("x-api-nonce", &nonce);
        put("x-api-signheaders", "X-Api-TimeStamp,X-Api-Nonce");
        put("x-api-signature", &signature);
        headers
    }

    fn business_headers(&self, method: &str, path: &str, token: &Secret) -> HeaderMap {
        let mut headers = self.signed_headers(method, path, &[]);
        if let Ok(value) = HeaderValue::from_str(token.expose()) {
            headers.insert(HeaderName::from_static("app-token"), value);
        }
        if let Ok(value) = HeaderValue::from_str(&self.config.domain) {
            headers.insert(HeaderName::from_static("x-gw-router-addr"), value);
        }
        headers
    }

    /// Asks the gateway for a new app-token; a failure comes with how long to wait before asking again.
    async fn fetch_token(&self) -> Result<Token, (Call<()>, Duration)> {
        let app_signature =
            sign::app_signature(&self.config.app_key, self.config.app_secret.expose());
        let params = [
            ("app_key", self.config.app_key.as_str()),
            ("app_signature", app_signature.as_str()),
        ];
        let started = std::time::Instant::now();
        let response = self
            .http
            .get(format!("{}{TOKEN_PATH}", self.base_url))
            .query(&params)
            .headers(self.signed_headers("GET", TOKEN_PATH, &params))
            .send()
            .await;
        let call = answer(response, "fetch the app-token", false, token_of).await;
        crate::metrics::request("token", started);
        let (status, code) = (call.http_status, call.vendor_code.clone());
        token::fetched(call.outcome, TOKEN_COOL_DOWN, |outcome| {
            Call::new(outcome, status, code)
        })
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
        let data_url = format!(
            "data:image/{};base64,{}",
            request.format.mime_subtype(),
            base64::engine::general_purpose::STANDARD.encode(request.bytes)
        );
        let body = json!({
            "base_string": data_url,
            "filename": request.file_name_with_suffix(),
            "save_temp": if self.config.save_temp { "true" } else { "false" },
        });
        let body = body.to_string();
        self.pacer.ready().await;
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{UPLOAD_PATH}", self.base_url))
            .headers(self.business_headers("POST", UPLOAD_PATH, &token))
            .timeout(http::upload_time(body.len()))
            .body(body)
            .send()
            .await;
        let call = answer(response, "upload", true, url_of).await;
        crate::metrics::request("upload", started);
        self.after_call(call, &token).await
    }

    pub async fn delete(&self, url: &str, go_ahead: &dyn super::GoAhead) -> Call<()> {
        let token = match self.token().await {
            Ok(token) => token,
            // Nothing was asked of the image: its copy is where it was.
            Err(call) => return call.unsent(),
        };
        self.pacer.ready().await;
        if !go_ahead.may_send().await {
            return super::withheld();
        }
        let started = std::time::Instant::now();
        let response = self
            .http
            .delete(format!("{}{DELETE_PATH}", self.base_url))
            .headers(self.business_headers("DELETE", DELETE_PATH, &token))
            .body(json!({ "url": url }).to_string())
            .send()
            .await;
        // A delete may be sent again: an image already gone counts as deleted.
        let call = answer(response, "delete", false, |_| Ok(())).await;
        crate::metrics::request("delete", started);
        already_gone_is_done(self.after_call(call, &token).await)
    }

    /// After a call: drop a refused token; after a 429, hold every call until the window reopens.
    /// Kingdee's 429 names no wait (its window is a minute, shared with the account set's other
    /// apps), so one without a `Retry-After` waits 1 s, then twice as long each time in a row, up
    /// to the minute: sending again every second would be refused for the rest of the window.
    async fn after_call<T>(&self, mut call: Call<T>, token: &Secret) -> Call<T> {
        match &mut call.outcome {
            Outcome::Reauth { .. } => {
                self.reset_unhinted_throttles();
                self.token.invalidate(token).await;
            }
            Outcome::Throttled { after, .. } => {
                let wait = *after.get_or_insert_with(|| self.unhinted_throttle());
                self.pacer.hold(wait);
            }
            _ => self.reset_unhinted_throttles(),
        }
        call
    }

    /// How long a 429 with no wait of its own waits: the rest of the current wait for a call
    /// sent with the one that began it, else twice as long as the last one.
    fn unhinted_throttle(&self) -> Duration {
        let now = std::time::Instant::now();
        let mut state = self
            .unhinted_throttles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (in_a_row, until) = &mut *state;
        if let Some(until) = until.filter(|until| *until > now) {
            return until - now;
        }
        let wait = unhinted_throttle_wait(*in_a_row);
        *in_a_row += 1;
        *until = Some(now + wait);
        wait
    }

    fn reset_unhinted_throttles(&self) {
        *self
            .unhinted_throttles
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (0, None);
    }
}

/// How long the `n`th rate-limit answer in a row with no `Retry-After` (from 0) waits.
fn unhinted_throttle_wait(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

/// A delete the vendor refuses because the image does not exist has nothing left to do: an
/// earlier attempt deleted it and its answer was lost, or someone else did. Only Kingdee's own
/// answer (HTTP 200 with its error code) says so: a proxy's 413 page is no word on the image.
/// The answer must say that the *image* is missing: "账套不存在" (no such account set) or "商品不存在"
/// (no such product) also say "does not exist", and taking one of those for a deleted image would
/// forget a copy that is still there.
pub(crate) fn already_gone_is_done(call: Call<()>) -> Call<()> {
    match &call.outcome {
        Outcome::Rejected { reason }
            if call.http_status == Some(200)
                && call.vendor_code.is_some()
                && says_the_image_is_missing(reason) =>
        {
            Call::new(Outcome::Done(()), call.http_status, call.vendor_code)
        }
        _ => call,
    }
}

fn says_the_image_is_missing(reason: &str) -> bool {
    let reason = reason.to_lowercase();
    let missing = ["不存在", "not exist", "not found", "no such"];
    let image = ["图片", "图像", "url", "image", "picture"];
    missing.iter().any(|m| reason.contains(m)) && image.iter().any(|i| reason.contains(i))
}

/// The app-token in a successful token answer's `data`, refreshed early.
pub(crate) fn token_of(data: &serde_json::Value) -> Result<Token, &'static str> {
    let token = data
        .get("app-token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the answer has no data.app-token")?;
    let now = epoch_ms();
    let expires = data
        .get("expires")
        .and_then(|e| e.as_i64())
        .map_or(now + 24 * 3600 * 1000, |e| expiry_ms(now, e));
    Ok(Token {
        value: Secret::new(token),
        refresh_at_ms: refresh_point(now, expires),
        expires_at_ms: expires,
    })
}

/// The URL in a successful upload answer's `data`.
pub(crate) fn url_of(data: &serde_json::Value) -> Result<Remote, &'static str> {
    let url = data
        .pointer("/rows/0/url")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
        .ok_or("the answer has no data.rows[0].url")?;
    // The vendor's own example answers `"url": "false"`: not a copy anyone can find again.
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err("the answer's data.rows[0].url is not a web address");
    }
    Ok(Remote {
        reference: url.to_string(),
        ..Remote::default()
    })
}

/// Reads an answer and classifies it; `on_success` extracts the result from `data`. `stores`: the
/// call stores something, so a success that cannot be read must not be sent again.
async fn answer<T>(
    response: Result<reqwest::Response, reqwest::Error>,
    what: &str,
    stores: bool,
    on_success: impl FnOnce(&serde_json::Value) -> Result<T, &'static str>,
) -> Call<T> {
    match http::receive(response).await {
        Ok(received) => read(received, what, stores, on_success),
        Err(call) => call,
    }
}

/// An answer as it came off the wire, classified; `on_success` extracts the result from `data`.
/// `stores`: the call stores something, so a success that cannot be read must not be sent again.
pub(crate) fn read<T>(
    received: Received,
    what: &str,
    stores: bool,
    on_success: impl FnOnce(&serde_json::Value) -> Result<T, &'static str>,
) -> Call<T> {
    let Received {
        status,
        wait,
        headers,
        body,
    } = received;
    let skew = crate::diagnose::clock_skew_ms(&headers, epoch_ms());
    let reply: Option<Reply> = serde_json::from_slice(&body).ok();
    let code = reply.as_ref().and_then(|r| r.errcode);
    let description = reply
        .as_ref()
        .and_then(|r| r.description.as_deref())
        .map(crate::adapters::http::vendor_text)
        .unwrap_or_else(|| snippet(&body));
    // HTTP 200 with JSON that has no errcode is no answer Kingdee documents: whether the call was
    // carried out cannot be read (a call that stores nothing is simply retried).
    if stores && status == 200 && code.is_none() && reply.is_some() {
        let reason = format!(
            "kingdee {what}: HTTP 200 with an answer that has no errcode: {}",
            snippet(&body)
        );
        return Call::new(Outcome::Unconfirmed { reason }, Some(status), None);
    }
    let outcome = classify(status, code, &description, what, wait).map(|outcome| match outcome {
        // 4006: the timestamp we signed is off; the answer's Date header says by how much.
        Outcome::VendorDown { reason } if code == Some(4006) => Outcome::VendorDown {
            reason: reason.replace(CLOCK_HINT, &crate::diagnose::clock_advice("Kingdee", skew)),
        },
        other => other,
    });
    let outcome = outcome.unwrap_or_else(|| {
        match reply.as_ref().map(|r| on_success(&r.data)) {
            Some(Ok(value)) => Outcome::Done(value),
            // The vendor said yes: what it stored cannot be named, and sending again would store
            // another. Pause, so a person sees it, rather than retry.
            Some(Err(missing)) => Outcome::Unconfirmed {
                reason: format!(
                    "kingdee {what}: the answer was a success but could not be read ({missing})"
                ),
            },
            None => Outcome::Retry {
                after: None,
                reason: format!("kingdee {what}: unreadable answer: {}", snippet(&body)),
            },
        }
    });
    Call::new(outcome, Some(status), code.map(|c| c.to_string()))
}

/// Every failure Kingdee answers, in the taxonomy; `None` for a success.
fn classify<T>(
    status: u16,
    code: Option<i64>,
    description: &str,
    what: &str,
    wait: Option<Duration>,
) -> Option<Outcome<T>> {
    let said = |code: Option<i64>| match code {
        Some(code) => format!("kingdee {what}: {description} (errcode {code})"),
        None => format!("kingdee {what}: HTTP {status}: {description}"),
    };
    let retry = |reason| Outcome::Retry {
        after: wait,
        reason,
    };
    Some(match (status, code) {
        (200, Some(0)) => return None,
        (429, _) => Outcome::Throttled {
            after: wait,
            reason: format!("kingdee {what}: rate limited (HTTP 429)"),
        },
        // A nonce seen before inside the gateway's window: the next call signs a fresh one.
        (519, Some(4007)) => retry(format!("{}; sent again with a fresh nonce", said(code))),
        (519, Some(c @ 4001..=4008)) => {
            let hint = if c == 4006 {
                CLOCK_HINT
            } else {
                "; check client_id and client_secret"
            };
            Outcome::VendorDown {
                reason: format!("{}{hint}", said(code)),
            }
        }
        (519, Some(4009..=4011)) => Outcome::Reauth { reason: said(code) },
        (519, Some(4012)) => Outcome::VendorDown {
            reason: format!(
                "{}; the app has no permission for this API in the account set it named: check \
                 domain (the account set's address) and that the app is authorised for it",
                said(code)
            ),
        },
        (519, _) => retry(said(code)),
        (200, Some(ERR_SYSTEM)) => retry(said(code)),
        (200, Some(ERR_APP_AUTH)) => Outcome::VendorDown {
            reason: format!("{}; check app_key and app_secret", said(code)),
        },
        (200, Some(_)) => Outcome::Rejected { reason: said(code) },
        (401 | 403 | 404, _) => Outcome::VendorDown {
            reason: format!("{}; check base_url and credentials", said(None)),
        },
        (413, _) => Outcome::Rejected { reason: said(None) },
        _ => retry(said(code)),
    })
}

fn snippet(body: &[u8]) -> String {
    super::http::snippet(body, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16, code: Option<i64>) -> Outcome<()> {
        classify(status, code, "x", "upload", None).unwrap_or(Outcome::Done(()))
    }

    proptest::proptest! {
        #[test]
        fn no_answer_makes_the_classifier_panic(
            status in 0u16..1000,
            code in proptest::option::of(proptest::prelude::any::<i64>()),
            description in "\\PC{0,64}",
        ) {
            let _ = classify::<()>(status, code, &description, "upload", None);
            let _ = already_gone_is_done(Call::new(
                Outcome::Rejected { reason: description },
                Some(status),
                None,
            ));
        }
    }

    #[test]
    fn a_delete_of_an_image_already_gone_is_done() {
        let refused = |reason: &str| {
            already_gone_is_done(Call::new(
                Outcome::Rejected {
                    reason: reason.into(),
                },
                Some(200),
                Some("2000002001".into()),
            ))
            .outcome
        };
        assert_eq!(
            refused("kingdee delete: 图片不存在 (errcode 2000002001)"),
            Outcome::Done(())
        );
        assert!(matches!(
            refused("kingdee delete: url不能为空 (errcode 2000002001)"),
            Outcome::Rejected { .. }
        ));
        // Something else missing: the image may well still be there.
        for other in ["账套不存在", "商品不存在", "app not found"] {
            assert!(
                matches!(
                    refused(&format!("kingdee delete: {other} (errcode 2000002001)")),
                    Outcome::Rejected { .. }
                ),
                "{other}"
            );
        }
        // Not Kingdee's answer: a proxy's page that happens to say "not found".
        let proxy = Call::new(
            Outcome::Rejected {
                reason: "kingdee delete: HTTP 413: 图片不存在".into(),
            },
            Some(413),
            None,
        );
        assert!(matches!(
            already_gone_is_done(proxy).outcome,
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn only_a_web_address_is_taken_for_the_uploaded_image() {
        let answer = |url: &str| serde_json::json!({ "rows": [{ "url": url }] });
        assert_eq!(
            url_of(&answer("https://img.jdy.com/a.png"))
                .unwrap()
                .reference,
            "https://img.jdy.com/a.png"
        );
        // The vendor's own example answer.
        assert!(url_of(&answer("false")).is_err());
        assert!(url_of(&answer("")).is_err());
    }

    #[test]
    fn rate_limits_answered_to_calls_sent_together_wait_once() {
        let adapter = Kingdee::new(
            "http://127.0.0.1:1",
            KingdeeConfig {
                client_id: "1".into(),
                client_secret: Secret::new("s"),
                app_key: "k".into(),
                app_secret: Secret::new("s"),
                domain: "d".into(),
                save_temp: false,
            },
            reqwest::Client::new(),
            None,
            None,
        );
        let first = adapter.unhinted_throttle();
        let together = adapter.unhinted_throttle();
        assert_eq!(first, Duration::from_secs(1));
        assert!(together <= first && together > Duration::from_millis(900));
        // The wait is over: the next refusal is the second in a row.
        adapter.unhinted_throttles.lock().unwrap().1 = Some(std::time::Instant::now());
        assert_eq!(adapter.unhinted_throttle(), Duration::from_secs(2));
        adapter.reset_unhinted_throttles();
        assert_eq!(adapter.unhinted_throttle(), Duration::from_secs(1));
    }

    #[test]
    fn rate_limits_without_a_wait_wait_twice_as_long_each_time_up_to_a_minute() {
        let waits: Vec<u64> = (0..9)
            .map(|n| unhinted_throttle_wait(n).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn gateway_codes_map_to_the_taxonomy() {
        assert!(matches!(class(519, Some(4002)), Outcome::VendorDown { .. }));
        assert!(
            matches!(class(519, Some(4006)), Outcome::VendorDown { reason } if reason.contains("clock"))
        );
        assert!(
            matches!(class(519, Some(4007)), Outcome::Retry { reason, .. } if reason.contains("fresh nonce"))
        );
        assert!(matches!(class(519, Some(4011)), Outcome::Reauth { .. }));
        assert!(matches!(class(519, Some(4012)), Outcome::VendorDown { .. }));
        assert!(matches!(class(519, Some(5007)), Outcome::Retry { .. }));
        assert!(matches!(class(429, None), Outcome::Throttled { .. }));
        assert!(matches!(class(503, None), Outcome::Retry { .. }));
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let config = KingdeeConfig {
            client_id: "205022".into(),
            client_secret: Secret::new("client-secret-value"),
            app_key: "key".into(),
            app_secret: Secret::new("app-secret-value"),
            domain: "https://tf.jdy.com".into(),
            save_temp: false,
        };
        let adapter = Kingdee::new(
            "http://127.0.0.1:1",
            config,
            reqwest::Client::new(),
            None,
            None,
        );
        let debug = format!("{adapter:?}");
        assert!(debug.contains("205022"));
        assert!(!debug.contains("secret-value"), "{debug}");
    }

    #[test]
    fn business_codes_map_to_the_taxonomy() {
        assert_eq!(class(200, Some(0)), Outcome::Done(()));
        assert!(matches!(
            class(200, Some(ERR_SYSTEM)),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            class(200, Some(ERR_APP_AUTH)),
            Outcome::VendorDown { .. }
        ));
        assert!(matches!(
            class(200, Some(1_000_000_001)),
            Outcome::Rejected { .. }
        ));
    }
}
