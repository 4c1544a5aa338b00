//! The Kingdee JDY gateway, emulated: signature, timestamp window, nonce, app-token and router
//! checks answered with HTTP 519 bodies, business errors as HTTP 200 with `errcode`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::wire::{self, Wire};
use super::{Fault, Logged, Nonces, Sandbox, StoredImage, Window, json_reply};
use crate::adapters::kingdee::{DELETE_PATH, ERR_APP_AUTH, TOKEN_PATH, UPLOAD_PATH, sign};
use crate::journal::now_ms;

/// The sandbox's own code for a refused parameter (the real API answers such with a non-zero
/// business errcode and a description).
const ERR_PARAM: i64 = 2_000_002_001;
const MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;
const CLOCK_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The credentials the emulated account set accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct KingdeeAccount {
    pub client_id: String,
    pub client_secret: String,
    pub app_key: String,
    pub app_secret: String,
    pub domain: String,
}

impl std::fmt::Debug for KingdeeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KingdeeAccount")
            .field("client_id", &self.client_id)
            .field("app_key", &self.app_key)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Default for KingdeeAccount {
    fn default() -> Self {
        KingdeeAccount {
            client_id: "205022".into(),
            client_secret: "sandbox-client-secret".into(),
            app_key: "sandbox-app-key".into(),
            app_secret: "sandbox-app-secret".into(),
            domain: "https://tf.jdy.com".into(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct KingdeeState {
    /// Issued app-tokens and when they expire (epoch ms).
    pub tokens: HashMap<String, i64>,
    nonces: Nonces,
    calls: Window,
    token_calls: Window,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(TOKEN_PATH, get(token))
        .route(UPLOAD_PATH, post(upload))
        .route(DELETE_PATH, delete(remove))
        .route("/kingdee/images/{name}", get(serve_image))
        .route("/kingdee/temp/{name}", get(serve_image))
}

/// What an injected fault does once the call itself was carried out.
#[derive(Debug, Default, Clone, Copy)]
struct Aftermath {
    /// The answer is replaced by this bare status: done, but the caller never hears of it.
    lose_answer: Option<u16>,
    /// An upload answered as a success without its URL.
    no_url: bool,
    /// A success answered in a shape that is not Kingdee's (no `errcode`, the result under
    /// other names).
    wrong_shape: bool,
}

/// A refusal: the status and body the gateway answers with.
struct Refusal {
    status: u16,
    errcode: i64,
    description: String,
}

fn gateway(errcode: i64, description: &str) -> Refusal {
    Refusal {
        status: 519,
        errcode,
        description: format!("{description}[GW]"),
    }
}

fn business(errcode: i64, description: impl Into<String>) -> Refusal {
    Refusal {
        status: 200,
        errcode,
        description: description.into(),
    }
}

impl Sandbox {
    fn answer(
        &self,
        method: &Method,
        path: &str,
        arrived_ms: i64,
        result: Result<Value, Refusal>,
    ) -> Response {
        let (status, errcode, body) = match result {
            Ok(data) => (
                200,
                0,
                json!({"data": data, "description": "success", "errcode": 0}),
            ),
            Err(r) => (
                r.status,
                r.errcode,
                json!({"errcode": r.errcode, "description": r.description}),
            ),
        };
        self.lock().log.push(Logged {
            method: method.to_string(),
            path: path.to_string(),
            status,
            errcode: (status != 0).then_some(errcode),
            at_ms: arrived_ms,
        });
        json_reply(status, body)
    }

    /// Like [`Sandbox::answer`], but an injected lost answer replaces what was done with a bare
    /// status.
    fn answer_after(
        &self,
        method: &Method,
        path: &str,
        arrived_ms: i64,
        result: Result<Value, Refusal>,
        aftermath: Aftermath,
    ) -> Response {
        if let (true, Ok(data)) = (aftermath.wrong_shape, &result) {
            self.lock().log.push(Logged {
                method: method.to_string(),
                path: path.to_string(),
                status: 200,
                errcode: None,
                at_ms: arrived_ms,
            });
            return json_reply(200, json!({"code": 0, "msg": "success", "result": data}));
        }
        let Some(status) = aftermath.lose_answer else {
            return self.answer(method, path, arrived_ms, result);
        };
        self.lock().log.push(Logged {
            method: method.to_string(),
            path: path.to_string(),
            status,
            errcode: None,
            at_ms: arrived_ms,
        });
        json_reply(
            status,
            json!({"message": "bad gateway (injected after the call was done)"}),
        )
    }

    /// The gateway's checks every call passes: client id, auth version, sign headers, timestamp
    /// window, nonce, signature.
    fn verify_signature(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<(), Refusal> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let mut state = self.lock();
        let account = state.options.kingdee.clone();
        if header("X-Api-ClientID") != account.client_id {
            return Err(gateway(4001, "X-Api-ClientID不存在或无效"));
        }
        if header("X-Api-Auth-Version") != "2.0" {
            return Err(gateway(4003, "X-Api-Auth-Version必须为2.0"));
        }
        if header("X-Api-SignHeaders") != "X-Api-TimeStamp,X-Api-Nonce" {
            return Err(gateway(
                4004,
                "X-Api-SignHeaders必须为X-Api-TimeStamp,X-Api-Nonce",
            ));
        }
        let timestamp = header("X-Api-TimeStamp");
        let now = now_ms() + state.clock_offset_ms;
        match timestamp.parse::<i64>() {
            Ok(ts) if (now - ts).abs() <= CLOCK_WINDOW_MS => {}
            _ => {
                return Err(gateway(
                    4006,
                    "X-Api-TimeStamp已过期或无效，请校准服务器时间",
                ));
            }
        }
        let nonce = header("X-Api-Nonce");
        if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_digit()) || nonce.starts_with('0')
        {
            return Err(gateway(4005, "X-Api-Nonce必须为正整数"));
        }
        let expected = sign::signature(
            &account.client_secret,
            method.as_str(),
            path,
            params,
            nonce,
            timestamp,
        );
        if !sign::same(header("X-Api-Signature"), &expected) {
            return Err(gateway(4002, "签名验证失败"));
        }
        state
            .kingdee
            .nonces
            .retain(|_, t| now - *t <= 2 * CLOCK_WINDOW_MS);
        if state
            .kingdee
            .nonces
            .insert(nonce.to_string(), now)
            .is_some()
        {
            return Err(gateway(4007, "X-Api-Nonce重复使用"));
        }
        Ok(())
    }

    /// What business calls pass besides the signature: content type, app-token, router address,
    /// the rate limit, and any injected fault.
    async fn verify_business(&self, headers: &HeaderMap) -> Result<Aftermath, Refusal> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let fault = {
            let mut state = self.lock();
            let token = header("app-token");
            if token.is_empty() {
                return Err(gateway(4009, "app-token为空"));
            }
            match state.kingdee.tokens.get(token) {
                None => return Err(gateway(4010, "app-token无效")),
                Some(expires) if *expires <= now_ms() => {
                    return Err(gateway(4011, "app-token已过期"));
                }
                Some(_) => {}
            }
            if header("X-GW-Router-Addr") != state.options.kingdee.domain {
                return Err(gateway(4012, "X-GW-Router-Addr与账套不匹配，无权访问"));
            }
            if !header("Content-Type").starts_with("application/json") {
                return Err(business(ERR_PARAM, "Content-Type必须为application/json"));
            }
            let per_minute = state.options.kingdee_per_minute;
            if !state.kingdee.calls.admit(now_ms(), per_minute) {
                return Err(Refusal {
                    status: 429,
                    errcode: 429,
                    description: "请求过于频繁，请稍后再试".into(),
                });
            }
            state.next_fault()
        };
        let fault = match fault {
            Some(Fault::Later(wait, then)) => {
                tokio::time::sleep(wait).await;
                Some(*then)
            }
            other => other,
        };
        match fault {
            None => Ok(Aftermath::default()),
            Some(Fault::LoseAnswer(status)) => Ok(Aftermath {
                lose_answer: Some(status),
                ..Aftermath::default()
            }),
            Some(Fault::NoUrl) => Ok(Aftermath {
                no_url: true,
                ..Aftermath::default()
            }),
            Some(Fault::Gateway(code)) => Err(gateway(code, "网关异常(注入)")),
            Some(Fault::Business(code)) => {
                Err(business(code, "系统错误,请到开发者社区提单反馈(注入)"))
            }
            Some(Fault::Http(status)) => Err(Refusal {
                status,
                errcode: status as i64,
                description: "upstream unavailable (injected)".into(),
            }),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(Aftermath::default())
            }
            Some(Fault::Later(..)) => Ok(Aftermath::default()),
            Some(Fault::Reset) => {
                wire::mark(Wire::Cut);
                Err(Refusal {
                    status: 0,
                    errcode: 0,
                    description: "connection dropped (injected)".into(),
                })
            }
            Some(Fault::SlowAnswer(d)) => {
                wire::mark(Wire::Hold(d));
                Ok(Aftermath::default())
            }
            Some(Fault::SlowBody(d)) => {
                wire::mark(Wire::Trickle(d));
                Ok(Aftermath::default())
            }
            Some(Fault::Throttled(d)) => {
                wire::mark(Wire::Header("retry-after", d.as_secs().max(1).to_string()));
                Err(Refusal {
                    status: 429,
                    errcode: 429,
                    description: "请求过于频繁，请稍后再试".into(),
                })
            }
            Some(Fault::WrongShape) => Ok(Aftermath {
                wrong_shape: true,
                ..Aftermath::default()
            }),
        }
    }

    /// The checks every business call passes, then its JSON body.
    async fn business_body(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<(Value, Aftermath), Refusal> {
        self.verify_signature(headers, method, path, &[])?;
        let aftermath = self.verify_business(headers).await?;
        let body = serde_json::from_slice(body)
            .map_err(|_| business(ERR_PARAM, "请求体不是合法的JSON"))?;
        Ok((body, aftermath))
    }

    fn store(&self, filename: &str, subtype: &str, bytes: Vec<u8>, temporary: bool) -> String {
        let mut state = self.lock();
        let id = state.next_image;
        state.next_image += 1;
        let ext = filename
            .rsplit('.')
            .next()
            .unwrap_or("img")
            .to_ascii_lowercase();
        let folder = if temporary { "temp" } else { "images" };
        let url = format!("{}/kingdee/{folder}/{id:08}.{ext}", state.base_url);
        state.images.insert(
            url.clone(),
            StoredImage {
                url: url.clone(),
                filename: filename.to_string(),
                content_type: format!("image/{subtype}"),
                bytes,
                temporary,
            },
        );
        url
    }
}

async fn token(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let arrived = now_ms();
    let params: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let result = (|| {
        sandbox.verify_signature(&headers, &method, TOKEN_PATH, &params)?;
        let mut state = sandbox.lock();
        let limit = state.options.kingdee_token_per_minute;
        if !state.kingdee.token_calls.admit(now_ms(), limit) {
            return Err(Refusal {
                status: 429,
                errcode: 429,
                description: "获取app-token过于频繁，请缓存token".into(),
            });
        }
        let get = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let account = state.options.kingdee.clone();
        let expected = sign::app_signature(&account.app_key, &account.app_secret);
        if get("app_key") != Some(account.app_key.as_str())
            || !sign::same(get("app_signature").unwrap_or(""), &expected)
        {
            return Err(business(ERR_APP_AUTH, "app_key或app_secret校验失败"));
        }
        let token = format!("sbx-{:032x}", fastrand::u128(..));
        let expires = now_ms() + state.options.kingdee_token_ttl.as_millis() as i64;
        state.kingdee.tokens.insert(token.clone(), expires);
        state.issued.push(token.clone());
        Ok(json!({"app-token": token, "expires": expires, "domain": account.domain}))
    })();
    sandbox.answer(&method, TOKEN_PATH, arrived, result)
}

/// `data:image/<subtype>;base64,<payload>` split and decoded.
fn parse_data_url(text: &str) -> Result<(&str, Vec<u8>), String> {
    let rest = text
        .strip_prefix("data:image/")
        .ok_or("base_string必须以data:image/开头")?;
    let (subtype, payload) = rest
        .split_once(";base64,")
        .ok_or("base_string缺少;base64,")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| "base_string不是合法的base64".to_string())?;
    Ok((subtype, bytes))
}

/// The format the bytes are, judged only by their magic numbers.
fn magic(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.starts_with(b"BM") {
        Some("bmp")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

async fn upload(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    let mut aftermath = Aftermath::default();
    let result = async {
        let (body, after) = sandbox
            .business_body(&headers, &method, UPLOAD_PATH, &body)
            .await?;
        aftermath = after;
        let base_string = body
            .get("base_string")
            .and_then(Value::as_str)
            .ok_or_else(|| business(ERR_PARAM, "base_string不能为空"))?;
        let filename = body
            .get("filename")
            .and_then(Value::as_str)
            .filter(|f| !f.trim().is_empty())
            .ok_or_else(|| business(ERR_PARAM, "filename不能为空"))?;
        match filename.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {}
            _ => return Err(business(ERR_PARAM, "filename必须带文件后缀")),
        }
        let temporary = match body.get("save_temp") {
            None => true,
            Some(Value::String(s)) if s == "true" => true,
            Some(Value::String(s)) if s == "false" => false,
            Some(_) => {
                return Err(business(
                    ERR_PARAM,
                    "save_temp必须为字符串\"true\"或\"false\"",
                ));
            }
        };
        let (subtype, bytes) = parse_data_url(base_string).map_err(|e| business(ERR_PARAM, e))?;
        let actual =
            magic(&bytes).ok_or_else(|| business(ERR_PARAM, "base_string的内容不是图片"))?;
        if subtype != actual {
            return Err(business(
                ERR_PARAM,
                format!("base_string的类型image/{subtype}与内容({actual})不符"),
            ));
        }
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(business(ERR_PARAM, "图片大小超过10M限制"));
        }
        let url = sandbox.store(filename, actual, bytes, temporary);
        if aftermath.no_url {
            return Ok(json!({"rows": [{"name": filename}]}));
        }
        Ok(json!({"rows": [{"url": url}]}))
    }
    .await;
    sandbox.answer_after(&method, UPLOAD_PATH, arrived, result, aftermath)
}

async fn remove(
    State(sandbox): State<Sandbox>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_ms();
    let mut aftermath = Aftermath::default();
    let result = async {
        let (body, after) = sandbox
            .business_body(&headers, &method, DELETE_PATH, &body)
            .await?;
        aftermath = after;
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| business(ERR_PARAM, "url不能为空"))?;
        let mut state = sandbox.lock();
        match state.images.remove(url) {
            Some(_) => {
                state.deleted.push(url.to_string());
                Ok(json!({"result": "图片删除成功"}))
            }
            None => Err(business(ERR_PARAM, "图片不存在")),
        }
    }
    .await;
    sandbox.answer_after(&method, DELETE_PATH, arrived, result, aftermath)
}

async fn serve_image(State(sandbox): State<Sandbox>, Path(name): Path<String>) -> Response {
    let state = sandbox.lock();
    match state
        .images
        .values()
        .find(|i| i.url.ends_with(&format!("/{name}")))
    {
        Some(image) => (
            [(header::CONTENT_TYPE, image.content_type.clone())],
            image.bytes.clone(),
        )
            .into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "no such image").into_response(),
    }
}
