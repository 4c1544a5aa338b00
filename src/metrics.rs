//! Prometheus metrics, served at `/metrics` when the config sets `metrics:` (off by default).
//!
//! Counters (uploads, deletes, token refreshes, rate-limit waits, files examined) and the request
//! latency histogram are counted as things happen, by one-line calls from the worker, the watches
//! and the adapters. What the journal knows (files by state, queue depth, oldest pending job,
//! paused vendors) is read from it at scrape time, so it is never out of date and costs nothing
//! between scrapes. The process's metrics are one global set: one daemon per process.
//!
//! Names follow Prometheus conventions: `imgsyncd_` prefix, base units, `_total` on counters.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::{error, info};

use crate::journal::{FileState, JobOp, JournalHandle};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorLabels {
    vendor: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    vendor: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    vendor: String,
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    vendor: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    path: String,
    vendor: String,
    mode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// How a watch learns about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchMode {
    Inotify,
    Poll,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Inotify => "inotify",
            WatchMode::Poll => "poll",
        }
    }
}

fn request_histogram() -> Histogram {
    // 10 ms to about 2 min: a token fetch on loopback to a 10 MB upload on a slow line.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

struct Metrics {
    registry: Registry,
    uploads: Family<OutcomeLabels, Counter>,
    deletes: Family<OutcomeLabels, Counter>,
    examined: Family<OutcomeLabels, Counter>,
    requests: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    token_refreshes: Family<OutcomeLabels, Counter>,
    rate_limit_waits: Family<VendorLabels, Counter>,
    rate_limit_wait_seconds: Family<VendorLabels, Counter<f64>>,
    files: Family<StateLabels, Gauge>,
    queued_jobs: Gauge,
    oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    paused: Family<VendorLabels, Gauge>,
    held_deletes: Gauge,
    watches: Family<ModeLabels, Gauge>,
    watch_info: Family<WatchLabels, Gauge>,
    /// The running watches and how each is watched, for `watches` and the STATUS= line.
    watch_modes: Mutex<BTreeMap<PathBuf, (String, WatchMode)>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imgsyncd");
        let m = Metrics {
            uploads: Family::default(),
            deletes: Family::default(),
            examined: Family::default(),
            requests: Family::new_with_constructor(request_histogram),
            token_refreshes: Family::default(),
            rate_limit_waits: Family::default(),
            rate_limit_wait_seconds: Family::default(),
            files: Family::default(),
            queued_jobs: Gauge::default(),
            oldest_pending: Gauge::default(),
            paused: Family::default(),
            held_deletes: Gauge::default(),
            watches: Family::default(),
            watch_info: Family::default(),
            watch_modes: Mutex::default(),
            registry: Registry::default(),
        };
        let build: Family<VersionLabels, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "The running imgsyncd's version", build);
        registry.register(
            "uploads",
            "Upload calls by vendor and outcome (uploaded, retry, throttled, rejected, vendor_paused, unconfirmed)",
            m.uploads.clone(),
        );
        registry.register(
            "deletes",
            "Delete calls by vendor and outcome (deleted, retry, throttled, rejected, vendor_paused)",
            m.deletes.clone(),
        );
        registry.register(
            "files_examined",
            "Settled files examined by a watch: taken (queued for upload) or rejected before sending",
            m.examined.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Vendor API requests, from sending to the whole answer read, by vendor and endpoint",
            Unit::Seconds,
            m.requests.clone(),
        );
        registry.register(
            "token_refreshes",
            "Access tokens fetched from a vendor, by outcome (ok, failed)",
            m.token_refreshes.clone(),
        );
        registry.register(
            "rate_limit_waits",
            "Calls held back to keep to a vendor's rate limit",
            m.rate_limit_waits.clone(),
        );
        registry.register_with_unit(
            "rate_limit_wait",
            "Time calls spent held back to keep to a vendor's rate limit",
            Unit::Seconds,
            m.rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "files",
            "Files in the journal by vendor and state (read from the journal at scrape time)",
            m.files.clone(),
        );
        registry.register(
            "queued_jobs",
            "Jobs waiting or running (uploads and deletes)",
            m.queued_jobs.clone(),
        );
        registry.register_with_unit(
            "oldest_pending_job_age",
            "Age of the oldest queued job (0 when the queue is empty)",
            Unit::Seconds,
            m.oldest_pending.clone(),
        );
        registry.register(
            "vendor_paused",
            "1 while the vendor refuses us (credentials, clock, permission) and its jobs wait, else 0",
            m.paused.clone(),
        );
        registry.register(
            "held_deletes",
            "Deletes held for an operator (`imgsyncd retry --held`)",
            m.held_deletes.clone(),
        );
        registry.register(
            "watches",
            "Watched folders by how they are watched (inotify, poll)",
            m.watches.clone(),
        );
        registry.register(
            "watch_info",
            "One series per watched folder, with its vendor and how it is watched",
            m.watch_info.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

tokio::task_local! {
    /// The vendor whose job the current task carries out: the adapters' metrics are labelled
    /// with it without every adapter knowing its configured name.
    static VENDOR: String;
}

/// Runs `work` (one job) with its calls counted for `vendor`.
pub async fn scoped<F: Future>(vendor: String, work: F) -> F::Output {
    VENDOR.scope(vendor, work).await
}

fn current_vendor() -> Option<String> {
    VENDOR.try_with(Clone::clone).ok()
}

/// A job's call came to `outcome` (the attempt's outcome, as `history` shows it).
pub fn job_done(vendor: &str, op: JobOp, outcome: &str) {
    let labels = OutcomeLabels {
        vendor: vendor.to_string(),
        outcome: outcome.to_string(),
    };
    let family = match op {
        JobOp::Upload => &global().uploads,
        JobOp::Delete | JobOp::DeleteOld => &global().deletes,
    };
    family.get_or_create(&labels).inc();
    crate::service::changed();
}

/// A watch examined a settled file: `taken` (queued) or `rejected` before anything was sent.
pub fn file_examined(vendor: &str, outcome: &str) {
    global()
        .examined
        .get_or_create(&OutcomeLabels {
            vendor: vendor.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
    crate::service::changed();
}

/// An adapter's request to `endpoint` (token, upload, delete) took since `started`.
pub fn request(endpoint: &str, started: Instant) {
    if let Some(vendor) = current_vendor() {
        global()
            .requests
            .get_or_create(&EndpointLabels {
                vendor,
                endpoint: endpoint.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// An adapter fetched a token (`ok`) or failed to.
pub fn token_refresh(ok: bool) {
    if let Some(vendor) = current_vendor() {
        global()
            .token_refreshes
            .get_or_create(&OutcomeLabels {
                vendor,
                outcome: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }
}

/// A call waited `waited` for the vendor's rate limit.
pub fn rate_limit_wait(waited: Duration) {
    if let Some(vendor) = current_vendor() {
        let labels = VendorLabels { vendor };
        let m = global();
        m.rate_limit_waits.get_or_create(&labels).inc();
        m.rate_limit_wait_seconds
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }
}

/// A watch started (or changed how it watches): `mode` is what it now uses.
pub fn watch_mode(root: &Path, vendor: &str, mode: WatchMode) {
    {
        let mut modes = global()
            .watch_modes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        modes.insert(root.to_path_buf(), (vendor.to_string(), mode));
    }
    publish_watches();
}

/// A watch fell back to polling (inotify could not cover it).
pub fn watch_polled(root: &Path) {
    let changed = {
        let mut modes = global()
            .watch_modes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match modes.get_mut(root) {
            Some((_, mode)) if *mode != WatchMode::Poll => {
                *mode = WatchMode::Poll;
                true
            }
            _ => false,
        }
    };
    if changed {
        publish_watches();
    }
}

/// A watch stopped (removed by a reload, or the daemon stops).
pub fn watch_stopped(root: &Path) {
    {
        let mut modes = global()
            .watch_modes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        modes.remove(root);
    }
    publish_watches();
}

/// The running watches and how each is watched.
pub fn watches() -> Vec<(PathBuf, String, WatchMode)> {
    let modes = global()
        .watch_modes
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    modes
        .iter()
        .map(|(path, (vendor, mode))| (path.clone(), vendor.clone(), *mode))
        .collect()
}

fn publish_watches() {
    let m = global();
    let watches = watches();
    m.watch_info.clear();
    let mut counts: BTreeMap<WatchMode, i64> = [(WatchMode::Inotify, 0), (WatchMode::Poll, 0)]
        .into_iter()
        .collect();
    for (path, vendor, mode) in &watches {
        *counts.entry(*mode).or_default() += 1;
        m.watch_info
            .get_or_create(&WatchLabels {
                path: path.display().to_string(),
                vendor: vendor.clone(),
                mode: mode.as_str().to_string(),
            })
            .set(1);
    }
    for (mode, count) in counts {
        m.watches
            .get_or_create(&ModeLabels {
                mode: mode.as_str().to_string(),
            })
            .set(count);
    }
    crate::service::changed();
}

/// The metrics in the OpenMetrics text format (what Prometheus scrapes), with what the journal
/// knows read now. A journal that does not answer in time leaves its gauges out rather than
/// serving stale numbers.
pub async fn render(journal: &JournalHandle, vendors: &VendorNames) -> String {
    let m = global();
    let names = vendors();
    // The queue's age and the pauses are those of the configured vendors: one taken out of the
    // config keeps its files (counted below) and its jobs, which nothing sends until it is back.
    let configured = names.clone();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        journal.call(move |j| j.status_of(&configured)),
    )
    .await;
    m.files.clear();
    m.paused.clear();
    match read {
        Ok(Ok(status)) => {
            let mut all: Vec<&String> = status.by_vendor.keys().collect();
            all.extend(names.iter().filter(|n| !status.by_vendor.contains_key(*n)));
            for vendor in all {
                for state in FileState::ALL {
                    let count = status
                        .by_vendor
                        .get(vendor)
                        .and_then(|s| s.get(state.as_str()))
                        .copied()
                        .unwrap_or(0);
                    m.files
                        .get_or_create(&StateLabels {
                            vendor: vendor.clone(),
                            state: state.as_str().to_string(),
                        })
                        .set(count as i64);
                }
            }
            for vendor in &names {
                let paused = status.paused_vendors.iter().any(|p| &p.vendor == vendor);
                m.paused
                    .get_or_create(&VendorLabels {
                        vendor: vendor.clone(),
                    })
                    .set(i64::from(paused));
            }
            m.queued_jobs.set(status.queued_jobs as i64);
            m.oldest_pending
                .set(status.oldest_pending_s.unwrap_or(0) as f64);
            m.held_deletes.set(status.held_deletes as i64);
        }
        Ok(Err(e)) => error!("metrics: cannot read the journal: {e}"),
        Err(_) => error!("metrics: the journal did not answer within 10s"),
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// The configured vendors' names, as they are now (a reload changes them).
pub type VendorNames = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics endpoint; the server runs until the returned task is aborted.
pub async fn serve(
    address: SocketAddr,
    journal: JournalHandle,
    vendors: VendorNames,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (journal, vendors) = (journal.clone(), Arc::clone(&vendors));
            async move {
                let body = render(&journal, &vendors).await;
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    info!("metrics served at http://{bound}/metrics");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok((bound, task))
}
