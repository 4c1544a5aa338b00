//! A cached access token with at most one refresh in flight: concurrent workers that find it stale
//! wait for the one refresh instead of each asking the vendor (Kingdee allows ~2 token calls a minute).

use tokio::sync::Mutex;

use crate::config::Secret;

use super::epoch_ms;

#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    /// When to fetch a new one: before the vendor's expiry, with a margin.
    pub refresh_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct TokenCache {
    slot: Mutex<Option<Token>>,
}

impl TokenCache {
    /// The cached token, or a new one from `fetch` (run by one caller at a time).
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Token, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| t.refresh_at_ms > epoch_ms()) {
            return Ok(token.value.clone());
        }
        let token = fetch().await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// Drops `stale` if it is still the cached token (a newer one fetched meanwhile stays).
    pub async fn invalidate(&self, stale: &Secret) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|t| &t.value == stale) {
            *slot = None;
        }
    }
}

/// When to refresh a token that expires at `expires_ms`: ten minutes early, or a fifth of a short
/// lifetime early.
pub fn refresh_point(now_ms: i64, expires_ms: i64) -> i64 {
    let lifetime = (expires_ms - now_ms).max(0);
    expires_ms - (lifetime / 5).min(10 * 60 * 1000)
}
