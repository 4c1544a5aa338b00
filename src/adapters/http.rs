//! The half of every vendor call that is not the vendor's: the shared client with its timeouts,
//! reading an answer off the wire, and the waits vendors ask for.

use std::time::Duration;

use super::outcome::Call;

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take, from connecting until the answer's body is read: a vendor
/// that stalls (no answer, or a body trickled) is given up on and the call retried.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The HTTP client every adapter shares: rustls, bounded connect and total times.
pub fn http_client() -> reqwest::Client {
    let (connect, total) = match test_timeout() {
        Some(total) => (CONNECT_TIMEOUT.min(total), total),
        None => (CONNECT_TIMEOUT, TOTAL_TIMEOUT),
    };
    // No fallback to a default client: it would have no timeouts at all, and one stalled
    // vendor would hold a worker for good.
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .user_agent(concat!("imgsyncd/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client (rustls, no system configuration) builds")
}

/// The test hook `IMGSYNCD_TEST_HTTP_TIMEOUT=3s`: the total timeout of every vendor call (and the
/// connect timeout, if shorter), so the end-to-end tests can meet a stalled vendor without
/// waiting two minutes. Read only by debug builds (the tests'); a release build ignores it and
/// keeps [`TOTAL_TIMEOUT`].
fn test_timeout() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var("IMGSYNCD_TEST_HTTP_TIMEOUT").ok()?;
    let timeout = humantime::parse_duration(value.trim()).ok()?;
    tracing::warn!(
        "test hook IMGSYNCD_TEST_HTTP_TIMEOUT: vendor calls time out after {}",
        humantime::format_duration(timeout)
    );
    Some(timeout)
}

/// An answer as it came off the wire, before a vendor reads it.
#[derive(Debug)]
pub struct Received {
    pub status: u16,
    /// How long the vendor asked us to wait (`Retry-After`, `x-ogw-ratelimit-reset`).
    pub wait: Option<Duration>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Reads a whole answer; a request that got none (connect, timeout, reset) is a transient failure.
pub async fn receive<T>(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Received, Call<T>> {
    let response = response.map_err(|e| Call::network(&e))?;
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| Call::network(&e))?;
    Ok(Received {
        status,
        wait,
        headers,
        body: body.to_vec(),
    })
}

/// `Retry-After` (seconds) or Feishu's `x-ogw-ratelimit-reset`.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    ["retry-after", "x-ogw-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(Duration::from_secs)
}
