//! The sandbox: a strict local emulator of the vendor APIs, for `run --dev`, the `sandbox` verb and
//! the tests. It refuses what the real vendor refuses, with the same status and body, or tests
//! against it would prove nothing.

mod kingdee;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

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
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            kingdee: KingdeeAccount::default(),
            kingdee_token_ttl: Duration::from_secs(24 * 3600),
            kingdee_per_minute: 500,
            kingdee_token_per_minute: 2,
        }
    }
}

/// A failure the next business call answers with, for exercising the daemon's error handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 519 with this gateway errcode.
    Gateway(i64),
    /// HTTP 200 with this business errcode.
    Business(i64),
    /// A bare HTTP status (502, 503, …).
    Http(u16),
    /// Hold the answer back this long.
    Delay(Duration),
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
    pub status: u16,
    pub errcode: Option<i64>,
}

#[derive(Debug)]
struct State {
    options: SandboxOptions,
    base_url: String,
    kingdee: kingdee::KingdeeState,
    images: BTreeMap<String, StoredImage>,
    next_image: u64,
    faults: VecDeque<Fault>,
    log: Vec<Logged>,
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
        let state = State {
            options,
            base_url: format!("http://{addr}"),
            kingdee: kingdee::KingdeeState::default(),
            images: BTreeMap::new(),
            next_image: 1,
            faults: VecDeque::new(),
            log: Vec::new(),
        };
        let sandbox = Sandbox {
            state: Arc::new(Mutex::new(state)),
            addr,
        };
        let router = Router::new()
            .merge(kingdee::routes())
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(sandbox.clone());
        let serve = async move { axum::serve(listener, router).await };
        Ok((sandbox, serve))
    }

    /// Starts a sandbox on 127.0.0.1 on its own thread and runtime (for tests and benchmarks).
    pub fn start(options: SandboxOptions) -> Sandbox {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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

    /// How many successful uploads the sandbox has answered.
    pub fn uploads(&self) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|l| l.path.ends_with("image_upload") && l.errcode == Some(0))
            .count()
    }

    /// Queues failures for the next business calls, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Invalidates every issued token (as a vendor-side rotation would).
    pub fn revoke_tokens(&self) {
        self.lock().kingdee.tokens.clear();
    }

    /// Changes the credentials the sandbox accepts (to simulate a rotated secret).
    pub fn set_kingdee_account(&self, account: KingdeeAccount) {
        self.lock().options.kingdee = account;
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
        while self.0.front().is_some_and(|t| now_ms - t >= 60_000) {
            self.0.pop_front();
        }
        if self.0.len() >= per_minute {
            return false;
        }
        self.0.push_back(now_ms);
        true
    }
}

type Nonces = HashMap<String, i64>;
