//! The sandbox: a strict local emulator of the vendor APIs, for `run --dev`, the `sandbox` verb and
//! the tests. It refuses what the real vendor refuses, with the same status and body, or tests
//! against it would prove nothing.

mod feishu;
mod jiandaoyun;
mod kingdee;
mod multipart;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

pub use feishu::{FeishuAccount, FeishuFile};
pub use jiandaoyun::{
    JdyEndpoint, JdyRecord, JdyRefusal, JdyStats, JdyTransaction, JdyUpload, JiandaoyunAccount,
    QINIU_FILE_PATH, QINIU_UPLOAD_PATH,
};
pub use kingdee::KingdeeAccount;

/// How the sandbox behaves; the defaults are the vendors' documented limits.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub kingdee: KingdeeAccount,
    /// How long an issued Kingdee app-token lives (the real one: 24 h).
    pub kingdee_token_ttl: Duration,
    /// Kingdee business calls a minute per account set (community figure: 500).
    pub kingdee_per_minute: usize,
    /// Token calls a minute (community figure: about 2).
    pub kingdee_token_per_minute: usize,
    pub feishu: FeishuAccount,
    /// How long an issued tenant_access_token lives (the real one: 2 h).
    pub feishu_token_ttl: Duration,
    /// Lingo uploads allowed in any second and in any minute (documented: 50 and 1000).
    pub feishu_per_second: usize,
    pub feishu_per_minute: usize,
    pub jiandaoyun: JiandaoyunAccount,
    /// How long Jiandaoyun's upload tokens and their transaction live (the real ones: 1 h).
    pub jiandaoyun_token_ttl: Duration,
    /// The `fsizeLimit` of the issued upload tokens, in bytes (Jiandaoyun's sample: 200 MB).
    pub jiandaoyun_fsize_limit: u64,
    /// Calls a second to each interface (get_upload_token, the upload, data/create; documented: 20)
    /// and to all of them together (the company's 50).
    pub jiandaoyun_per_second: usize,
    pub jiandaoyun_company_per_second: usize,
    /// The share of business calls (uploads, deletes, data/create; not token calls) answered with a fault drawn from
    /// `failure_mix`, when no fault was queued for them: 0 (the default) for none, 0.3 for 30 %.
    pub failure_rate: f64,
    /// The seed of those draws, so a run can be replayed (which call gets which fault still
    /// depends on the order the calls arrive in).
    pub failure_seed: u64,
    /// The faults drawn from; [`Fault::transient_mix`] by default.
    pub failure_mix: Vec<Fault>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            kingdee: KingdeeAccount::default(),
            kingdee_token_ttl: Duration::from_secs(24 * 3600),
            kingdee_per_minute: 500,
            kingdee_token_per_minute: 2,
            feishu: FeishuAccount::default(),
            feishu_token_ttl: Duration::from_secs(7200),
            feishu_per_second: 50,
            feishu_per_minute: 1000,
            jiandaoyun: JiandaoyunAccount::default(),
            jiandaoyun_token_ttl: Duration::from_secs(3600),
            jiandaoyun_fsize_limit: 200 * 1024 * 1024,
            jiandaoyun_per_second: 20,
            jiandaoyun_company_per_second: 50,
            failure_rate: 0.0,
            failure_seed: 0,
            failure_mix: Fault::transient_mix(),
        }
    }
}

/// A failure the next business call (of any vendor) answers with, for exercising the daemon's
/// error handling. Each vendor answers it the way that vendor answers that kind of trouble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kingdee: HTTP 519 with this gateway errcode. Feishu: this code with the HTTP status the
    /// API documents for it (2250002: 500, 99991400: 429, others 400).
    Gateway(i64),
    /// HTTP 200 with this business errcode (Feishu: `code`).
    Business(i64),
    /// A bare HTTP status (502, 503, …).
    Http(u16),
    /// Hold the answer back this long.
    Delay(Duration),
    /// Carry the call out, then answer this bare status instead (the answer was lost).
    LoseAnswer(u16),
    /// Store an upload, then answer a success without its URL.
    NoUrl,
    /// Wait this long, then answer with the other fault (a slow refusal).
    Later(Duration, Box<Fault>),
    /// Take the request in, do nothing, and drop the connection without an answer (a TCP reset).
    Reset,
    /// Carry the call out, then hold the answer this long: past the client's timeout, it never
    /// learns what was done.
    SlowAnswer(Duration),
    /// Carry the call out, send the status and headers at once, then the body one byte every
    /// this long (and anything more on that connection as slowly).
    SlowBody(Duration),
    /// The vendor's own rate-limit answer (Kingdee: 429; Feishu: 429 with 99991400; Jiandaoyun:
    /// 429 with 8303, Qiniu: 573), asking to wait this long (`Retry-After`; Feishu:
    /// `x-ogw-ratelimit-reset`), in whole seconds.
    Throttled(Duration),
    /// Carry the call out, then answer a success whose JSON is not the documented shape: the
    /// fields the client reads are missing or named otherwise (Kingdee and Feishu: no `errcode` /
    /// `code`, the result under other names; Qiniu: no `key`; data/create: no `data._id`;
    /// get_upload_token: no `token_and_url_list`).
    WrongShape,
}

impl Fault {
    /// Transient trouble a client must ride out without losing or failing a file: 5xx, a
    /// dropped connection, a rate-limit burst.
    pub fn transient_mix() -> Vec<Fault> {
        vec![
            Fault::Http(503),
            Fault::Http(502),
            Fault::Reset,
            Fault::Throttled(Duration::from_secs(1)),
        ]
    }
}

/// Random faults: a share of calls, drawn with a seeded generator.
#[derive(Debug)]
struct Chaos {
    rate: f64,
    mix: Vec<Fault>,
    rng: fastrand::Rng,
    /// Every fault drawn, in order.
    drawn: Vec<Fault>,
}

impl Chaos {
    fn draw(&mut self) -> Option<Fault> {
        if self.mix.is_empty() || self.rng.f64() >= self.rate {
            return None;
        }
        let fault = self.mix[self.rng.usize(..self.mix.len())].clone();
        self.drawn.push(fault.clone());
        Some(fault)
    }
}

/// An image the sandbox holds, as the vendor would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub url: String,
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub temporary: bool,
}

/// One request as the sandbox answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// 0: nothing was answered (the connection was dropped).
    pub status: u16,
    /// Kingdee's `errcode`, Feishu's `code`.
    pub errcode: Option<i64>,
    /// When it was taken in, its body read (epoch ms): the moment the rate windows count.
    pub at_ms: i64,
}

#[derive(Debug)]
struct State {
    options: SandboxOptions,
    base_url: String,
    kingdee: kingdee::KingdeeState,
    feishu: feishu::FeishuState,
    jiandaoyun: jiandaoyun::JiandaoyunState,
    images: BTreeMap<String, StoredImage>,
    next_image: u64,
    faults: VecDeque<Fault>,
    chaos: Chaos,
    holds: wire::Holds,
    /// URLs deleted, in order, each once: what a delete really removed.
    deleted: Vec<String>,
    /// Every access token handed out, so tests can prove none reached a log.
    issued: Vec<String>,
    log: Vec<Logged>,
    /// How far the vendors' clock runs ahead of this host's (negative: behind), in ms.
    clock_offset_ms: i64,
}

/// A running sandbox; clones share it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
}

impl Sandbox {
    /// Binds `addr` (port 0 for any) and returns the sandbox and the future that serves it.
    pub async fn bind(
        addr: &str,
        options: SandboxOptions,
    ) -> std::io::Result<(
        Sandbox,
        impl std::future::Future<Output = std::io::Result<()>>,
    )> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let chaos = Chaos {
            rate: options.failure_rate,
            mix: options.failure_mix.clone(),
            rng: fastrand::Rng::with_seed(options.failure_seed),
            drawn: Vec::new(),
        };
        let state = State {
            options,
            base_url: format!("http://{addr}"),
            kingdee: kingdee::KingdeeState::default(),
            feishu: feishu::FeishuState::default(),
            jiandaoyun: jiandaoyun::JiandaoyunState::default(),
            images: BTreeMap::new(),
            next_image: 1,
            faults: VecDeque::new(),
            chaos,
            holds: wire::Holds::default(),
            deleted: Vec::new(),
            issued: Vec::new(),
            log: Vec::new(),
            clock_offset_ms: 0,
        };
        let sandbox = Sandbox {
            state: Arc::new(Mutex::new(state)),
            addr,
        };
        let router = Router::new()
            .merge(kingdee::routes())
            .merge(feishu::routes())
            .merge(jiandaoyun::routes())
            .layer(axum::middleware::from_fn_with_state(
                sandbox.clone(),
                wire::layer,
            ))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .layer(axum::middleware::map_response_with_state(
                sandbox.clone(),
                vendor_date,
            ))
            .with_state(sandbox.clone());
        let serve = async move {
            axum::serve(
                wire::Listener(listener),
                router.into_make_service_with_connect_info::<wire::Conn>(),
            )
            .await
        };
        Ok((sandbox, serve))
    }

    /// Starts a sandbox on 127.0.0.1 on its own thread and runtime (for tests and benchmarks).
    pub fn start(options: SandboxOptions) -> Sandbox {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sandbox")
                .enable_all()
                .build()
                .expect("a tokio runtime for the sandbox");
            runtime.block_on(async move {
                let (sandbox, serve) = Sandbox::bind("127.0.0.1:0", options)
                    .await
                    .expect("bind the sandbox on loopback");
                tx.send(sandbox).expect("hand the sandbox over");
                let _ = serve.await;
            });
        });
        rx.recv().expect("the sandbox thread started")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> SandboxOptions {
        self.lock().options.clone()
    }

    /// The images currently held, by URL.
    pub fn images(&self) -> BTreeMap<String, StoredImage> {
        self.lock().images.clone()
    }

    /// Every request answered so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// How many requests for `path` the sandbox has answered, whatever it said.
    pub fn requests_to(&self, path: &str) -> usize {
        self.lock().log.iter().filter(|l| l.path == path).count()
    }

    /// How many successful Kingdee uploads the sandbox has answered.
    pub fn uploads(&self) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|l| l.path.ends_with("image_upload") && l.errcode == Some(0))
            .count()
    }

    /// Every secret the daemon may hold for this sandbox: the accounts' secrets and each access
    /// token issued. None of them may ever appear in a log line or an error.
    pub fn secrets(&self) -> Vec<String> {
        let state = self.lock();
        let mut secrets = vec![
            state.options.kingdee.client_secret.clone(),
            state.options.kingdee.app_secret.clone(),
            state.options.feishu.app_secret.clone(),
        ];
        secrets.extend(state.issued.iter().cloned());
        secrets
    }

    /// The images deleted so far, by URL, in order: each appears once, when it was really removed.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// Queues failures for the next business calls, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// From now on, this share of business calls is answered with a fault drawn from the
    /// options' `failure_mix` (0 stops it).
    pub fn set_failure_rate(&self, rate: f64) {
        self.lock().chaos.rate = rate;
    }

    /// The faults drawn at random so far, in order.
    pub fn faults_drawn(&self) -> Vec<Fault> {
        self.lock().chaos.drawn.clone()
    }

    /// Answers to requests for `path` (e.g. `/jdy/v2/bd/material_picture`) are held `hold` after
    /// the call was carried out, until [`Sandbox::release`]: a test can act while one is in flight.
    pub fn hold(&self, path: &str, hold: Duration) {
        self.lock().holds.held.insert(path.to_string(), hold);
    }

    /// Answers for `path` go out at once again (those already held keep their wait).
    pub fn release(&self, path: &str) {
        self.lock().holds.held.remove(path);
    }

    /// Requests for `path` whose answer is being held now (by [`Sandbox::hold`] or a fault).
    pub fn holding(&self, path: &str) -> usize {
        self.lock().holds.holding.get(path).copied().unwrap_or(0)
    }

    /// Requests for `path` being served now: arrived, not yet answered nor held.
    pub fn serving(&self, path: &str) -> usize {
        self.lock().holds.serving.get(path).copied().unwrap_or(0)
    }

    /// Injected failures not yet taken by a call (0: every one has met its request).
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Invalidates every issued token of every vendor (as a vendor-side rotation would).
    pub fn revoke_tokens(&self) {
        self.lock().kingdee.tokens.clear();
        self.revoke_feishu_tokens();
    }

    /// Invalidates every issued Feishu tenant_access_token.
    pub fn revoke_feishu_tokens(&self) {
        let mut state = self.lock();
        state.feishu.tokens.clear();
        state.feishu.latest = None;
    }

    /// The images lingo holds, by file_token.
    pub fn feishu_files(&self) -> BTreeMap<String, FeishuFile> {
        self.lock().feishu.files.clone()
    }

    /// Lingo upload requests answered so far, accepted or not.
    pub fn feishu_upload_requests(&self) -> usize {
        self.lock().feishu.upload_requests
    }

    /// Lingo upload requests refused (any reason: token, rate, parameters, injected faults).
    pub fn feishu_refused(&self) -> usize {
        self.lock().feishu.refused
    }

    /// Changes the app credentials the sandbox accepts (to simulate a rotated secret).
    pub fn set_feishu_account(&self, account: FeishuAccount) {
        self.lock().options.feishu = account;
    }

    /// Changes the credentials the sandbox accepts (to simulate a rotated secret).
    pub fn set_kingdee_account(&self, account: KingdeeAccount) {
        self.lock().options.kingdee = account;
    }

    /// Sets the vendors' clock `ms` ahead of this host's (negative: behind), as a host whose
    /// clock drifted would see them: Kingdee's timestamp window, Jiandaoyun's token deadlines
    /// and every answer's `Date` header follow it. 0 puts it right again.
    pub fn set_clock_offset_ms(&self, ms: i64) {
        self.lock().clock_offset_ms = ms;
    }

    /// The vendors' clock, epoch ms.
    fn clock_ms(&self) -> i64 {
        crate::journal::now_ms() + self.lock().clock_offset_ms
    }
}

/// The `Date` header by the vendors' clock, when it is set off this host's (otherwise the
/// server's own, which agrees).
async fn vendor_date(
    axum::extract::State(sandbox): axum::extract::State<Sandbox>,
    mut response: Response,
) -> Response {
    let offset = sandbox.lock().clock_offset_ms;
    if offset != 0 {
        let at = std::time::SystemTime::now()
            .checked_add(Duration::from_millis(offset.max(0) as u64))
            .and_then(|t| t.checked_sub(Duration::from_millis((-offset).max(0) as u64)));
        if let Some(value) = at
            .map(httpdate::fmt_http_date)
            .and_then(|d| axum::http::HeaderValue::from_str(&d).ok())
        {
            response
                .headers_mut()
                .insert(axum::http::header::DATE, value);
        }
    }
    response
}

impl State {
    /// The fault the next business call answers with: the next one queued, or one drawn.
    fn next_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front().or_else(|| self.chaos.draw())
    }
}

/// A JSON answer with a status.
fn json_reply(status: u16, body: serde_json::Value) -> Response {
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// Requests a minute, over a sliding window.
#[derive(Debug, Default)]
struct Window(VecDeque<i64>);

impl Window {
    /// Counts a request at `now_ms`; false when the limit is already reached.
    fn admit(&mut self, now_ms: i64, per_minute: usize) -> bool {
        if !self.has_room(now_ms, 60_000, per_minute) {
            return false;
        }
        self.push(now_ms);
        true
    }

    /// Whether the last `span_ms` hold fewer than `limit` requests.
    fn has_room(&mut self, now_ms: i64, span_ms: i64, limit: usize) -> bool {
        while self.0.front().is_some_and(|t| now_ms - t >= span_ms) {
            self.0.pop_front();
        }
        self.0.len() < limit
    }

    fn push(&mut self, now_ms: i64) {
        self.0.push_back(now_ms);
    }

    /// Milliseconds until the oldest request counted leaves the window.
    fn reopens_in(&self, now_ms: i64, span_ms: i64) -> i64 {
        self.0.front().map_or(0, |t| (t + span_ms - now_ms).max(0))
    }
}

type Nonces = HashMap<String, i64>;
