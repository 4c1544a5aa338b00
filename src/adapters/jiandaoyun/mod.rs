//! Jiandaoyun (简道云): a file goes up with a single-use upload token from a batch of 100 that one
//! `get_upload_token` call (with a fresh `transaction_id`) hands out, as a multipart form to the
//! token's own `url` (Qiniu's form upload); the answer's `key` is what the journal keeps. Keys die
//! with their transaction after an hour unless a form record holds them, so with `create_record`
//! each file also gets a record (`data/create`, same transaction) before it counts as synced.
//! Jiandaoyun has no delete API. The only place that knows Jiandaoyun's wire format on the client side.

pub mod policy;
pub mod pool;

mod config;

pub use config::{CreateRecord, JiandaoyunConfig};

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use self::pool::{Batch, TokenPool, Transaction, UploadToken};
use super::http::{self, Received};
use super::kind::{DEFAULT_INCLUDE, KindSpec};
use super::name::for_vendor;
use super::outcome::{Call, Outcome};
use super::ratelimit::{self, Pacer};
use super::token::{self, TOKEN_COOL_DOWN};
use super::{Limits, PointOfNoReturn, UploadRequest, epoch_ms, human_size};
use crate::config::Placeholder;
use crate::image::ImageFormat;
use crate::journal::Remote;

pub const TOKEN_PATH: &str = "/api/v5/app/entry/file/get_upload_token";
pub const CREATE_PATH: &str = "/api/v5/app/entry/data/create";
/// Tokens one `get_upload_token` call hands out.
pub const TOKENS_PER_CALL: usize = 100;

/// Rate limited. Jiandaoyun answers HTTP 400 with one of these; which of the two is the
/// per-interface and which the company-wide limit is not documented, so both are met the same
/// way: wait at least a second, and hold every call that could be counted.
pub const ERR_RATE_LIMITED: i64 = 8303;
pub const ERR_COMPANY_RATE_LIMITED: i64 = 8304;
/// The API key is refused: invalid (8301), disabled or without permission (8302, 17052–17054).
pub const KEY_REFUSED: &[i64] = &[8301, 8302, 17_052, 17_053, 17_054];
/// The app or the form does not exist, or the key may not use it.
pub const APP_OR_FORM_REFUSED: &[i64] = &[17_018, 3000, 2004];
/// The company's attachment quota is used up.
pub const QUOTA_EXHAUSTED: RangeInclusive<i64> = 7216..=7219;
/// The `transaction_id` is refused: malformed, expired, or not the one the file was uploaded with.
pub const ERR_TRANSACTION: i64 = 17_025;
/// "Upload failed": worth another try.
pub const ERR_UPLOAD_FAILED: i64 = 17_027;

/// What Jiandaoyun's image widget takes. It documents no size limit; its tokens carry one
/// (`fsizeLimit`, 200 MB in its sample), checked per file before sending. 50 MB bounds what a
/// worker holds in memory.
/// What Jiandaoyun is, for the rest of the daemon.
pub const SPEC: KindSpec = KindSpec {
    name: "jiandaoyun",
    default_base_url: "https://api.jiandaoyun.com",
    no_delete: Some(
        "jiandaoyun has no file delete API (a key lives as long as the record that holds it)",
    ),
    reference_field: "key",
    default_include: DEFAULT_INCLUDE,
    limits: LIMITS,
    documented_rate: Some((DEFAULT_PER_SECOND, DEFAULT_PER_SECOND * 60)),
    config_keys: &[
        "api_key",
        "api_key_file",
        "app_id",
        "entry_id",
        "create_record",
    ],
};

pub const LIMITS: Limits = Limits {
    vendor: "Jiandaoyun",
    formats: &[
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Webp,
    ],
    min_bytes: 1,
    max_bytes: 50 * 1024 * 1024,
    min_px: None,
    max_px: None,
};

/// How many times a record refused for a rate limit is asked for again, each once the window
/// reopens, before its file waits and is sent again.
const RECORD_WAITS: usize = 3;

/// Each interface (get_upload_token, the upload, data/create): 20 calls a second.
pub const DEFAULT_PER_SECOND: u32 = 20;
/// All calls of one company (one API key) together: 50 a second.
pub const COMPANY_PER_SECOND: u32 = 50;

/// A rate limit is waited out for at least this long (Jiandaoyun: "wait ≥ 1 s").
const MIN_RATE_WAIT: Duration = Duration::from_secs(1);
/// Tokens one file may go through (each refused as spent or expired) before the job is retried later.
const MAX_TOKENS_PER_FILE: usize = 5;

/// The calls the adapter makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Upload,
    Create,
}

impl Endpoint {
    fn what(self) -> &'static str {
        match self {
            Endpoint::Token => "get_upload_token",
            Endpoint::Upload => "upload",
            Endpoint::Create => "data/create",
        }
    }
}

/// What an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The token is spent or refused: take another one at once (`whole_transaction`: every token
    /// of its transaction is dead too).
    NextToken {
        reason: String,
        whole_transaction: bool,
    },
    Fail(Outcome<()>),
}

/// An interface's pace as this vendor sets it (`per_second`, `per_minute`: at most the documented
/// limit), and as the API key's: vendors (forms) sharing a key share the documented limit.
#[derive(Debug)]
struct InterfacePacers {
    vendor: Pacer,
    key: Arc<Pacer>,
}

#[derive(Debug)]
struct Pacers {
    token: InterfacePacers,
    upload: InterfacePacers,
    create: InterfacePacers,
    /// Shared by every vendor with the same API key (the company's limit).
    company: Arc<Pacer>,
}

impl Pacers {
    fn of(&self, endpoint: Endpoint) -> &InterfacePacers {
        match endpoint {
            Endpoint::Token => &self.token,
            Endpoint::Upload => &self.upload,
            Endpoint::Create => &self.create,
        }
    }
}

#[derive(Debug)]
pub struct Jiandaoyun {
    /// The configured vendor's name, for reasons ("too large for forms").
    name: String,
    base_url: String,
    config: JiandaoyunConfig,
    http: reqwest::Client,
    pool: TokenPool<Call<()>>,
    /// Boxed: three pacers' windows would make every `Adapter` this large.
    pacers: Box<Pacers>,
}

/// An answer as read off the wire: Jiandaoyun's `{code, msg}`, Qiniu's `{error}`, or a success.
pub(crate) struct Answer {
    status: u16,
    wait: Option<Duration>,
    json: Value,
    body: Vec<u8>,
}

/// What became of one try with one token.
pub(crate) enum Sent {
    Stored(String),
    Spent {
        reason: String,
        whole_transaction: bool,
        status: u16,
    },
    Failed(Call<Remote>),
}

impl Jiandaoyun {
    pub fn new(
        name: &str,
        base_url: &str,
        config: JiandaoyunConfig,
        http: reqwest::Client,
        per_second: Option<u32>,
        per_minute: Option<u32>,
    ) -> Jiandaoyun {
        let per_second = per_second.unwrap_or(DEFAULT_PER_SECOND);
        let per_minute = per_minute.unwrap_or(per_second.saturating_mul(60));
        let key = config.api_key.expose();
        let interface = |name: &str| InterfacePacers {
            vendor: Pacer::new(per_second, per_minute),
            key: key_pacer(key, name, DEFAULT_PER_SECOND),
        };
        let pacers = Box::new(Pacers {
            token: interface("get_upload_token"),
            upload: interface("upload"),
            create: interface("data/create"),
            company: key_pacer(key, "company", COMPANY_PER_SECOND),
        });
        Jiandaoyun {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            config,
            http,
            pool: TokenPool::default(),
            pacers,
        }
    }

    /// Whether a live key of the same bytes may serve another file: not when each file needs a
    /// record of its own.
    pub fn reuses_copies(&self) -> bool {
        self.config.create_record.is_none()
    }

    /// After a reload: a remembered token failure may have been fixed.
    pub async fn forget_failures(&self) {
        self.pool.clear_failure().await;
    }

    /// `check --online`: fetch one batch of upload tokens (not kept).
    pub async fn check_online(&self) -> Call<()> {
        match self.fetch_tokens().await {
            Ok(_) => Call::new(Outcome::Done(()), Some(200), None),
            Err((call, _)) => call,
        }
    }

    /// Upload tokens waiting in the pool.
    pub async fn pooled_tokens(&self) -> usize {
        self.pool.waiting().await
    }

    async fn pace(&self, endpoint: Endpoint) {
        let interface = self.pacers.of(endpoint);
        ratelimit::ready_all([&interface.vendor, &*interface.key, &*self.pacers.company]).await;
    }

    /// After a rate-limited answer, nothing more goes to that interface (or, for a company-wide
    /// limit, to Jiandaoyun) until the window reopens.
    fn hold_after<T>(&self, endpoint: Endpoint, answer: &Answer, outcome: &Outcome<T>) {
        let Outcome::Throttled {
            after: Some(after), ..
        } = outcome
        else {
            return;
        };
        let code = answer.code();
        let company = code == Some(ERR_COMPANY_RATE_LIMITED) || answer.status == 429;
        let interface = company
            || code == Some(ERR_RATE_LIMITED)
            || (endpoint == Endpoint::Upload && answer.status == 573);
        if interface {
            // The key's interface: the limit the answer speaks of is the key's, whichever of its
            // vendors hit it.
            self.pacers.of(endpoint).key.hold(*after);
        }
        if company {
            self.pacers.company.hold(*after);
        }
    }

    /// One `get_upload_token` call with a fresh transaction; a failure comes with how long to
    /// wait before asking again.
    async fn fetch_tokens(&self) -> Result<Batch, (Call<()>, Duration)> {
        let transaction_id = policy::uuid_v4();
        let body = json!({
            "app_id": self.config.app_id,
            "entry_id": self.config.entry_id,
            "transaction_id": transaction_id,
        });
        self.pace(Endpoint::Token).await;
        let sent_at = epoch_ms();
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{TOKEN_PATH}", self.base_url))
            .bearer_auth(self.config.api_key.expose())
            .json(&body)
            .send()
            .await;
        let answer = Answer::receive(response).await;
        crate::metrics::request("get_upload_token", started);
        let answer = match answer {
            Ok(answer) => answer,
            Err(call) => return Err((call, TOKEN_COOL_DOWN)),
        };
        let outcome = match answer.verdict(Endpoint::Token) {
            Verdict::Ok => match self.read_batch(&answer, &transaction_id, sent_at) {
                Ok(batch) => return Ok(batch),
                Err(outcome) => outcome,
            },
            Verdict::NextToken { reason, .. } => Outcome::Retry {
                after: None,
                reason,
            },
            Verdict::Fail(outcome) => outcome,
        };
        self.hold_after(Endpoint::Token, &answer, &outcome);
        match token::fetched(outcome, TOKEN_COOL_DOWN, |outcome| answer.call(outcome)) {
            Err(failure) => Err(failure),
            // Only a batch read off the answer is a success.
            Ok(()) => Err((
                answer.call(Outcome::Retry {
                    after: None,
                    reason: "jiandaoyun get_upload_token: a success without a batch".into(),
                }),
                TOKEN_COOL_DOWN,
            )),
        }
    }

    /// The tokens of a successful `get_upload_token` answer, each with its deadline (from its
    /// put-policy, within the transaction's hour) and the margin that keeps it from being handed
    /// out near its end.
    pub(crate) fn read_batch(
        &self,
        answer: &Answer,
        transaction_id: &str,
        sent_at: i64,
    ) -> Result<Batch, Outcome<()>> {
        let pairs: Vec<(String, String)> = answer
            .json
            .get("token_and_url_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let url = pair.get("url")?.as_str()?.trim();
                let token = pair.get("token")?.as_str()?.trim();
                let web = url.starts_with("https://") || url.starts_with("http://");
                (web && !token.is_empty()).then(|| (url.to_string(), token.to_string()))
            })
            .collect();
        if pairs.is_empty() {
            return Err(Outcome::Retry {
                after: None,
                reason: format!(
                    "jiandaoyun get_upload_token: the answer has no usable token_and_url_list: {}",
                    answer.snippet()
                ),
            });
        }
        let terms: Vec<(String, String, i64, Option<u64>)> = pairs
            .into_iter()
            .map(|(url, token)| {
                let (deadline, fsize_limit) = policy::terms(&token, sent_at);
                (url, token, deadline, fsize_limit)
            })
            .collect();
        let earliest = terms.iter().map(|t| t.2).min().unwrap_or(sent_at);
        let transaction = Arc::new(Transaction {
            id: transaction_id.to_string(),
            deadline_ms: earliest.min(sent_at.saturating_add(policy::DOCUMENTED_LIFETIME_MS)),
        });
        let now = epoch_ms();
        if transaction.deadline_ms <= now {
            return Err(Outcome::VendorDown {
                reason: format!(
                    "jiandaoyun get_upload_token: the tokens it issued died {} ago by this host's \
                     clock; the clock is off: fix NTP",
                    humantime::format_duration(Duration::from_secs(
                        (now.saturating_sub(transaction.deadline_ms) / 1000).max(1) as u64
                    ))
                ),
            });
        }
        let tokens: Vec<UploadToken> = terms
            .into_iter()
            .map(|(url, token, deadline, fsize_limit)| {
                let deadline_ms = deadline.min(transaction.deadline_ms);
                UploadToken {
                    url,
                    token: crate::config::Secret::new(token),
                    transaction: Arc::clone(&transaction),
                    fsize_limit,
                    deadline_ms,
                    usable_until_ms: deadline_ms - policy::margin_ms(deadline_ms - sent_at),
                }
            })
            .filter(|t| t.usable_until_ms > now)
            .collect();
        let count = tokens.len();
        let batch = Batch::of(tokens).ok_or_else(|| Outcome::Retry {
            after: None,
            reason: "jiandaoyun get_upload_token: every token it issued was too near its deadline \
                     to be used"
                .to_string(),
        })?;
        info!(
            vendor = %self.name,
            transaction_id = %transaction.id,
            tokens = count,
            "fetched upload tokens; their transaction ends in {}",
            humantime::format_duration(Duration::from_secs(
                ((transaction.deadline_ms - now) / 1000).max(0) as u64
            ))
        );
        Ok(batch)
    }

    /// Uploads the file (and, with `create_record`, creates its record). A token Qiniu refuses as
    /// spent or expired is dropped and the next one taken at once, without failing the job.
    pub async fn upload(&self, request: &UploadRequest<'_>) -> Call<Remote> {
        let size = request.bytes.len() as u64;
        let mut last = None;
        for _ in 0..MAX_TOKENS_PER_FILE {
            // A token whose margin before its death also covers the time the file's body takes
            // on a slow line (nothing more for a small file).
            let lasting = http::body_time(request.bytes.len()).as_millis() as i64;
            let fetch = || self.fetch_tokens();
            let token = match self.pool.take_lasting(lasting, fetch).await {
                Ok(token) => token,
                Err(call) => return call.cast(),
            };
            if let Some(limit) = token.fsize_limit.filter(|limit| size > *limit) {
                self.pool.give_back(token).await;
                return Call::new(
                    Outcome::Rejected {
                        reason: self.too_large(size, limit),
                    },
                    None,
                    None,
                );
            }
            match self.send(&token, request).await {
                Sent::Stored(key) => return self.finish(&token, key, request).await,
                Sent::Failed(call) => return call,
                Sent::Spent {
                    reason,
                    whole_transaction,
                    status,
                } => {
                    let dropped = if whole_transaction {
                        self.pool.discard_transaction(&token.transaction.id).await
                    } else {
                        0
                    };
                    warn!(
                        vendor = %self.name,
                        path = %crate::journal::path_text::shown_path(request.path),
                        "{reason}: that upload token is spent{}; taking another",
                        if whole_transaction {
                            format!(", and with it the {dropped} left of its transaction")
                        } else {
                            String::new()
                        }
                    );
                    last = Some((reason, status));
                }
            }
        }
        let (reason, status) = last.unwrap_or_default();
        Call::new(
            Outcome::Retry {
                after: None,
                reason: format!(
                    "{MAX_TOKENS_PER_FILE} upload tokens in a row were refused (the last: {reason})"
                ),
            },
            Some(status),
            None,
        )
    }

    fn too_large(&self, size: u64, limit: u64) -> String {
        let (shown, bound) = (human_size(size), human_size(limit));
        let (shown, bound) = if shown == bound {
            (format!("{size} bytes"), format!("{bound} ({limit} bytes)"))
        } else {
            (shown, bound)
        };
        format!(
            "too large for {}: {shown}: above the {bound} its Jiandaoyun upload tokens take (fsizeLimit)",
            self.name
        )
    }

    /// One try: the file, as multipart `token` then `file`, to the token's own `url`.
    async fn send(&self, token: &UploadToken, request: &UploadRequest<'_>) -> Sent {
        let form = upload_form(
            token.token.expose(),
            &request.file_name_with_suffix(),
            request.format,
            request.bytes,
        );
        self.pace(Endpoint::Upload).await;
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(&token.url)
            .timeout(http::upload_time(request.bytes.len()))
            .multipart(form)
            .send()
            .await;
        let answer = Answer::receive(response).await;
        crate::metrics::request("upload", started);
        let answer = match answer {
            Ok(answer) => answer,
            Err(call) => return Sent::Failed(call),
        };
        let sent = sent(&answer);
        if let Sent::Failed(call) = &sent {
            self.hold_after(Endpoint::Upload, &answer, &call.outcome);
        }
        sent
    }

    /// The key is stored: without `create_record` that is the result (usable until the
    /// transaction ends); with it, the record that keeps the key is created first.
    async fn finish(
        &self,
        token: &UploadToken,
        key: String,
        request: &UploadRequest<'_>,
    ) -> Call<Remote> {
        let transaction = &token.transaction;
        let remote = Remote {
            reference: key,
            transaction_id: Some(transaction.id.clone()),
            expires_at: Some(transaction.deadline_ms),
            record_id: None,
        };
        let Some(record) = &self.config.create_record else {
            return Call::new(Outcome::Done(remote), Some(200), None);
        };
        let key = remote.reference.clone();
        let again = "; the file is sent again with a fresh token";
        if epoch_ms() >= transaction.deadline_ms {
            return Call::new(
                Outcome::Retry {
                    after: None,
                    reason: format!(
                        "uploaded as key {key}, but its transaction ended before the record could \
                         be created{again}"
                    ),
                },
                Some(200),
                None,
            );
        }
        let data = record_data(record, &key, request, &self.config.watch_roots);
        let record = Record {
            transaction,
            data,
            key: &key,
            no_return: request.no_return,
        };
        let mut call = self.create(&record).await;
        // A rate limit says nothing against the key, which stays good until its transaction
        // ends: the record is asked for again once the window reopens (the pacer waits for it),
        // rather than the file being uploaded again with a new token.
        for _ in 0..RECORD_WAITS {
            let Outcome::Throttled { after, .. } = &call.outcome else {
                break;
            };
            if let Some(no_return) = request.no_return {
                no_return.refused().await;
            }
            let wait = after.unwrap_or(MIN_RATE_WAIT);
            let time_left = transaction.deadline_ms - epoch_ms();
            if time_left < (wait + http::TOTAL_TIMEOUT).as_millis() as i64 {
                break;
            }
            call = self.create(&record).await;
        }
        match call.outcome {
            Outcome::Done(record_id) => Call::new(
                Outcome::Done(Remote {
                    record_id: Some(record_id),
                    // The record holds the key: it does not die with the transaction.
                    expires_at: None,
                    ..remote
                }),
                call.http_status,
                call.vendor_code,
            ),
            Outcome::Retry { after, reason } => Call::new(
                Outcome::Retry {
                    after,
                    reason: format!(
                        "uploaded as key {key}, but its record could not be created: {reason}{again}"
                    ),
                },
                call.http_status,
                call.vendor_code,
            ),
            // What to look for in the form: the key and its transaction.
            Outcome::Unconfirmed { reason } => Call::new(
                Outcome::Unconfirmed {
                    reason: format!(
                        "uploaded as key {key} (transaction {}), but {reason}",
                        transaction.id
                    ),
                },
                call.http_status,
                call.vendor_code,
            ),
            other => Call::new(other, call.http_status, call.vendor_code).cast(),
        }
    }

    /// `data/create` in the transaction the key was uploaded with; the new record's `_id`. Once
    /// its turn in the pace has come, the call is noted as about to go out (`no_return`), so a
    /// daemon stopped before its answer does not make it again.
    async fn create(&self, record: &Record<'_>) -> Call<String> {
        let transaction = record.transaction;
        let body = json!({
            "app_id": self.config.app_id,
            "entry_id": self.config.entry_id,
            "transaction_id": transaction.id,
            "data": record.data,
        });
        self.pace(Endpoint::Create).await;
        if let Some(no_return) = record.no_return {
            let what = format!(
                "creating the form record of key {} (transaction {})",
                record.key, transaction.id
            );
            if !no_return.passing(what).await {
                return Call::new(
                    Outcome::Retry {
                        after: None,
                        reason: format!(
                            "uploaded as key {}, but the record about to be created could not be \
                             noted in the journal first; the file is sent again with a fresh token",
                            record.key
                        ),
                    },
                    Some(200),
                    None,
                );
            }
        }
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{CREATE_PATH}", self.base_url))
            .bearer_auth(self.config.api_key.expose())
            .json(&body)
            .send()
            .await;
        // Jiandaoyun took the request and said nothing in time, or began a success whose body
        // was lost: the record may stand. A connection dropped with no answer at all is sent
        // again, as every other call is (a proxy's reset, most often before the vendor acted).
        let may_be_carried_out = match &response {
            Ok(answer) => answer.status().is_success(),
            Err(e) => e.is_timeout() && !e.is_connect(),
        };
        let answer = Answer::receive(response).await;
        crate::metrics::request("data_create", started);
        let answer = match answer {
            Ok(answer) => answer,
            Err(call) if may_be_carried_out => return answer_lost(call),
            Err(call) => return call,
        };
        if answer.status == 504 {
            // A gateway that gave up waiting for Jiandaoyun: as a timeout of our own.
            return answer.call(record_maybe_made(&format!(
                "HTTP 504: {}",
                answer.snippet()
            )));
        }
        let outcome = match created(&answer) {
            Ok(id) => return answer.call(Outcome::Done(id)),
            Err(failure) => failure,
        };
        if answer.code() == Some(ERR_TRANSACTION) {
            // The transaction is dead (or was never the key's): none of its tokens is any use.
            self.pool.discard_transaction(&transaction.id).await;
        }
        self.hold_after(Endpoint::Create, &answer, &outcome);
        answer.call(outcome).cast()
    }
}

/// A record to create: its data, the transaction and key it holds, and what to ask before it
/// goes out.
struct Record<'a> {
    transaction: &'a Transaction,
    data: Value,
    key: &'a str,
    no_return: Option<&'a dyn PointOfNoReturn>,
}

/// A `data/create` whose answer was lost on the way (a timeout, a success cut short) may have
/// made the record: made again, the form would hold the file twice. The file waits for a person
/// instead, as one whose answer cannot be read does. (An upload to Qiniu whose answer is lost is
/// sent again: a key no record uses is nothing anyone sees.)
fn answer_lost<T>(call: Call<T>) -> Call<T> {
    match &call.outcome {
        Outcome::Retry { reason, .. } => Call::new(
            record_maybe_made(reason),
            call.http_status,
            call.vendor_code,
        ),
        _ => call,
    }
}

/// What a `data/create` whose answer was lost (`reason`) comes to: a person looks first.
fn record_maybe_made<T>(reason: &str) -> Outcome<T> {
    Outcome::Unconfirmed {
        reason: format!(
            "jiandaoyun data/create: {reason}; the answer was lost, so the form may hold the \
             record already, and creating it again could make two"
        ),
    }
}

/// The pacer of one of the API key `key`'s limits (`scope`: an interface, or the company's):
/// every vendor with that key shares it, `per_second` calls a second.
fn key_pacer(key: &str, scope: &str, per_second: u32) -> Arc<Pacer> {
    static PACERS: OnceLock<Mutex<HashMap<String, Weak<Pacer>>>> = OnceLock::new();
    let id = format!("{:x} {scope}", Sha256::digest(key.as_bytes()));
    let mut pacers = PACERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pacers.retain(|_, pacer| pacer.strong_count() > 0);
    if let Some(pacer) = pacers.get(&id).and_then(Weak::upgrade) {
        return pacer;
    }
    let pacer = Arc::new(Pacer::new(per_second, per_second.saturating_mul(60)));
    pacers.insert(id, Arc::downgrade(&pacer));
    pacer
}

/// What an upload answer says: the key the file is stored under, a spent token, or the failure.
pub(crate) fn sent(answer: &Answer) -> Sent {
    match answer.verdict(Endpoint::Upload) {
        Verdict::Ok => match answer.json.get("key").and_then(Value::as_str) {
            Some(key) if !key.is_empty() => Sent::Stored(key.to_string()),
            // The file may well be stored: sending it again could store it twice. Stop and
            // let a person look.
            _ => Sent::Failed(answer.call(Outcome::Unconfirmed {
                reason: format!(
                    "jiandaoyun accepted the upload but its answer has no key: {}",
                    answer.snippet()
                ),
            })),
        },
        Verdict::NextToken {
            reason,
            whole_transaction,
        } => Sent::Spent {
            reason,
            whole_transaction,
            status: answer.status,
        },
        Verdict::Fail(outcome) => Sent::Failed(answer.call(outcome).cast()),
    }
}

/// What a `data/create` answer says: the new record's `_id`, or the failure.
pub(crate) fn created(answer: &Answer) -> Result<String, Outcome<()>> {
    Err(match answer.verdict(Endpoint::Create) {
        Verdict::Ok => match answer.json.pointer("/data/_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => return Ok(id.to_string()),
            // The record may exist: creating it again could make two. The file waits for a
            // person (and the vendor is paused), as an upload whose key cannot be read does.
            _ => Outcome::Unconfirmed {
                reason: format!(
                    "jiandaoyun created a record but its answer has no data._id: {}",
                    answer.snippet()
                ),
            },
        },
        Verdict::NextToken { reason, .. } => Outcome::Retry {
            after: None,
            reason,
        },
        Verdict::Fail(outcome) => outcome,
    })
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
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body,
        }
    }

    /// Jiandaoyun's `code` (a number, or a number in a string).
    fn code(&self) -> Option<i64> {
        match self.json.get("code")? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Qiniu's `error`.
    fn error(&self) -> Option<&str> {
        self.json.get("error").and_then(Value::as_str)
    }

    /// What the vendor said: `msg`, `error`, or the start of the body.
    fn message(&self) -> String {
        self.json
            .get("msg")
            .and_then(Value::as_str)
            .or(self.error())
            .map(super::http::vendor_text)
            .unwrap_or_else(|| self.snippet())
    }

    fn snippet(&self) -> String {
        super::http::snippet(&self.body, 300)
    }

    fn verdict(&self, endpoint: Endpoint) -> Verdict {
        classify(
            endpoint,
            self.status,
            self.code(),
            self.error().is_some(),
            &self.message(),
            self.wait,
        )
    }

    fn call<T>(&self, outcome: Outcome<T>) -> Call<T> {
        Call::new(
            outcome,
            Some(self.status),
            self.code().filter(|c| *c != 0).map(|c| c.to_string()),
        )
    }
}

/// Every answer Jiandaoyun (`{code, msg}`) and Qiniu (`{error}`) give, in the taxonomy.
/// `qiniu_error`: the body had an `error` field.
pub fn classify(
    endpoint: Endpoint,
    status: u16,
    code: Option<i64>,
    qiniu_error: bool,
    message: &str,
    wait: Option<Duration>,
) -> Verdict {
    let what = endpoint.what();
    let said = match code {
        Some(code) => format!("jiandaoyun {what}: {message} (code {code}, HTTP {status})"),
        None => format!("jiandaoyun {what}: HTTP {status}: {message}"),
    };
    let fail = |outcome| Verdict::Fail(outcome);
    let retry = |reason: String| {
        fail(Outcome::Retry {
            after: wait,
            reason,
        })
    };
    let rate_limited = || {
        let after = wait.unwrap_or(MIN_RATE_WAIT).max(MIN_RATE_WAIT);
        fail(Outcome::Throttled {
            after: Some(after),
            reason: format!(
                "{said}: rate limited; the window reopens in {}s",
                after.as_secs()
            ),
        })
    };
    let vendor_down = |hint: &str| {
        fail(Outcome::VendorDown {
            reason: format!("{said}; {hint}"),
        })
    };
    if let Some(code) = code.filter(|c| *c != 0) {
        return match code {
            ERR_RATE_LIMITED | ERR_COMPANY_RATE_LIMITED => rate_limited(),
            c if KEY_REFUSED.contains(&c) => vendor_down(
                "jiandaoyun refused the API key: check api_key (Open Platform » API keys, \
                 开放平台 » 密钥管理): it must exist, be enabled and be allowed to use the app",
            ),
            c if APP_OR_FORM_REFUSED.contains(&c) => vendor_down(
                "check app_id and entry_id (the form's address holds both) and that the API key \
                 may use that app",
            ),
            c if QUOTA_EXHAUSTED.contains(&c) => vendor_down(
                "the company's attachment quota is used up: files stay queued until it is raised",
            ),
            ERR_TRANSACTION => fail(Outcome::Retry {
                after: None,
                reason: format!("{said}; its transaction is refused (expired or not the key's)"),
            }),
            _ => retry(said),
        };
    }
    if (200..300).contains(&status) && !qiniu_error {
        return Verdict::Ok;
    }
    match (endpoint, status) {
        (_, 429) => rate_limited(),
        (Endpoint::Upload, 401) => Verdict::NextToken {
            whole_transaction: message.to_ascii_lowercase().contains("expired"),
            reason: said,
        },
        (Endpoint::Upload, 579 | 614) => Verdict::NextToken {
            reason: said,
            whole_transaction: false,
        },
        (Endpoint::Upload, 403 | 413) => fail(Outcome::Rejected { reason: said }),
        (Endpoint::Upload, 573) => rate_limited(),
        (Endpoint::Upload, 631) => vendor_down(
            "the storage bucket behind Jiandaoyun's uploads does not exist: files stay queued",
        ),
        (_, 500..) => retry(said),
        (Endpoint::Token | Endpoint::Create, 401 | 403 | 404) => vendor_down("check base_url"),
        _ => retry(said),
    }
}

/// The multipart body: `token`, then `file` last with the file's name and image type. Both parts
/// are in memory, so the length is known and the request carries a Content-Length.
pub fn upload_form(token: &str, name: &str, format: ImageFormat, bytes: &[u8]) -> Form {
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
        .mime_str(&format!("image/{}", format.mime_subtype()))
        .expect("an image MIME type parses");
    Form::new()
        .percent_encode_noop()
        .text("token", token.to_string())
        .part("file", file)
}

/// The record's `data`: the image widget holds the key, each field its template filled in for
/// this file.
pub fn record_data(
    record: &CreateRecord,
    key: &str,
    request: &UploadRequest<'_>,
    watch_roots: &[std::path::PathBuf],
) -> Value {
    let facts = Facts::new(request, watch_roots);
    let mut data = Map::new();
    data.insert(record.image_widget.clone(), json!({ "value": [key] }));
    for (widget, template) in &record.fields {
        let value = template.render(|p| facts.get(p));
        data.insert(widget.clone(), json!({ "value": value }));
    }
    Value::Object(data)
}

/// What the templates may say about a file, worked out when first asked for.
struct Facts<'a> {
    request: &'a UploadRequest<'a>,
    watch_roots: &'a [std::path::PathBuf],
    sha256: OnceCell<String>,
    size: OnceCell<(String, String)>,
}

impl<'a> Facts<'a> {
    fn new(request: &'a UploadRequest<'a>, watch_roots: &'a [std::path::PathBuf]) -> Self {
        Facts {
            request,
            watch_roots,
            sha256: OnceCell::new(),
            size: OnceCell::new(),
        }
    }

    fn get(&self, placeholder: Placeholder) -> String {
        let path = self.request.path;
        match placeholder {
            Placeholder::Filename => path
                .file_name()
                .map(|n| for_vendor(n).into_owned())
                .unwrap_or_default(),
            Placeholder::Path => path
                .iter()
                .map(|part| for_vendor(part).into_owned())
                .collect::<std::path::PathBuf>()
                .display()
                .to_string(),
            Placeholder::Relpath => relpath(path, self.watch_roots),
            Placeholder::Sha256 => self
                .sha256
                .get_or_init(|| format!("{:x}", Sha256::digest(self.request.bytes)))
                .clone(),
            Placeholder::Size => self.request.bytes.len().to_string(),
            Placeholder::Width => self.dimensions().0.clone(),
            Placeholder::Height => self.dimensions().1.clone(),
        }
    }

    fn dimensions(&self) -> &(String, String) {
        self.size.get_or_init(|| {
            crate::image::inspect(self.request.bytes)
                .map(|info| (info.width.to_string(), info.height.to_string()))
                .unwrap_or_default()
        })
    }
}

/// `path` relative to the root of the watch it is under (`/` between folders), or its file name
/// when no configured root holds it.
pub fn relpath(path: &Path, watch_roots: &[std::path::PathBuf]) -> String {
    watch_roots
        .iter()
        .filter_map(|root| path.strip_prefix(root).ok())
        .min_by_key(|rest| rest.components().count())
        .filter(|rest| rest.components().next().is_some())
        .map(|rest| {
            rest.components()
                .map(|c| for_vendor(c.as_os_str()).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|| {
            path.file_name()
                .map(|n| for_vendor(n).into_owned())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests;
