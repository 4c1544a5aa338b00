//! The half of every vendor call that is not the vendor's: the shared client with its timeouts,
//! reading an answer off the wire, and the waits vendors ask for.

use std::time::Duration;

use super::outcome::Call;

/// The HTTP client every adapter shares: rustls, bounded connect and total times.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("imgsyncd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
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
