//! A cached access token with at most one refresh in flight: concurrent workers that find it stale
//! wait for the one refresh instead of each asking the vendor (Kingdee allows ~2 token calls a
//! minute). A failed fetch is remembered for a cool-down, so a backlog does not hammer the token
//! endpoint with one request per job.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::Secret;

use super::outcome::{Call, Outcome};

use super::epoch_ms;

#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    /// When to fetch a new one: before the vendor's expiry, with a margin.
    pub refresh_at_ms: i64,
    /// When the vendor stops taking it.
    pub expires_at_ms: i64,
}

impl Token {
    fn usable(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

#[derive(Debug)]
enum Slot<E> {
    Empty,
    Valid(Token),
    /// The last fetch failed; callers get the same answer until `until_ms`, or the token that
    /// fetch was to replace while it has not expired: a refresh that fails early (the token
    /// endpoint down for a minute) costs no upload.
    CoolingDown {
        until_ms: i64,
        failure: E,
        previous: Option<Token>,
    },
}

impl<E> Slot<E> {
    /// The token held, refresh due or not, while the vendor still takes it.
    fn usable(&self, now_ms: i64) -> Option<&Token> {
        match self {
            Slot::Valid(token)
            | Slot::CoolingDown {
                previous: Some(token),
                ..
            } => Some(token).filter(|t| t.usable(now_ms)),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct TokenCache<E> {
    slot: Mutex<Slot<E>>,
}

impl<E> Default for TokenCache<E> {
    fn default() -> Self {
        TokenCache {
            slot: Mutex::new(Slot::Empty),
        }
    }
}

/// A token failure the cache remembers and hands out again, without a call, while it does.
pub trait Remembered: Clone {
    /// The failure as handed out with `left` still to wait before the vendor is asked again.
    fn with_wait_left(&self, left: Duration) -> Self;
}

impl Remembered for Call<()> {
    /// A job told to come back later comes back when the vendor will be asked again, not when
    /// the failure first said: one told at the end of a 30 s cool-down would wait 30 s more.
    fn with_wait_left(&self, left: Duration) -> Self {
        let mut call = self.clone();
        if let Outcome::Retry { after, .. } | Outcome::Throttled { after, .. } = &mut call.outcome {
            *after = Some(left);
        }
        call
    }
}

impl<E: Remembered> TokenCache<E> {
    /// The cached token, or a new one from `fetch` (run by one caller at a time). On failure `fetch`
    /// also says how long to wait before asking again.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Token, (E, Duration)>>,
    {
        let mut slot = self.slot.lock().await;
        let now = epoch_ms();
        match &*slot {
            Slot::Valid(token) if token.refresh_at_ms > now => return Ok(token.value.clone()),
            Slot::CoolingDown {
                until_ms, failure, ..
            } if *until_ms > now => {
                let left = Duration::from_millis((*until_ms - now) as u64);
                return match slot.usable(now) {
                    Some(token) => Ok(token.value.clone()),
                    None => Err(failure.with_wait_left(left)),
                };
            }
            _ => {}
        }
        let previous = slot.usable(now).cloned();
        let fetched = fetch().await;
        crate::metrics::token_refresh(fetched.is_ok());
        match fetched {
            Ok(token) => {
                let value = token.value.clone();
                *slot = Slot::Valid(token);
                Ok(value)
            }
            Err((failure, cool_down)) => {
                let answer = match &previous {
                    Some(token) => Ok(token.value.clone()),
                    None => Err(failure.clone()),
                };
                *slot = Slot::CoolingDown {
                    until_ms: epoch_ms() + cool_down.as_millis() as i64,
                    failure,
                    previous,
                };
                answer
            }
        }
    }

    /// Drops `stale` if it is still the cached token (a newer one fetched meanwhile stays): the
    /// vendor refused it, so it is not kept for use after a failed refresh either.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut slot = self.slot.lock().await;
        match &mut *slot {
            Slot::Valid(t) if &t.value == stale => *slot = Slot::Empty,
            Slot::CoolingDown { previous, .. }
                if previous.as_ref().is_some_and(|t| &t.value == stale) =>
            {
                *previous = None;
            }
            _ => {}
        }
    }

    /// Forgets a remembered failure (after a reload, the operator may have fixed it).
    /// A token still usable is kept, to serve until a refresh succeeds.
    pub async fn clear_failure(&self) {
        // A fetch in flight holds the slot (up to the client's timeout) and leaves its own
        // answer there, no failure of before: a reload does not wait for it. Others hold it only
        // for a moment.
        let Ok(mut slot) = tokio::time::timeout(Duration::from_millis(200), self.slot.lock()).await
        else {
            return;
        };
        if let Slot::CoolingDown { previous, .. } = &mut *slot {
            *slot = match previous.take().filter(|t| t.usable(epoch_ms())) {
                Some(token) => Slot::Valid(token),
                None => Slot::Empty,
            };
        }
    }
}

/// How long a failed token fetch is remembered before the endpoint is asked again, when the
/// vendor named no wait of its own.
pub const TOKEN_COOL_DOWN: Duration = Duration::from_secs(30);

/// A token fetch answered with `outcome`, as the cache takes it: the token, or the failure and how
/// long to remember it (the wait the vendor asked for, else `cool_down`). A refused token request
/// is never cured by asking again: the credentials are wrong, so the vendor is down for us.
pub fn fetched<T>(
    outcome: Outcome<T>,
    cool_down: Duration,
    call: impl FnOnce(Outcome<()>) -> Call<()>,
) -> Result<T, (Call<()>, Duration)> {
    let waited = match &outcome {
        Outcome::Retry {
            after: Some(after), ..
        }
        | Outcome::Throttled {
            after: Some(after), ..
        } => *after,
        _ => cool_down,
    };
    // Every job asking meanwhile gets this failure from the cache, without a call: each must wait
    // as long as the cache keeps it, not come back every second to be told the same.
    let after = Some(waited);
    let failure = match outcome {
        Outcome::Done(value) => return Ok(value),
        Outcome::Reauth { reason } | Outcome::Rejected { reason } => Outcome::VendorDown { reason },
        Outcome::Retry { reason, .. } => Outcome::Retry { after, reason },
        Outcome::Throttled { reason, .. } => Outcome::Throttled { after, reason },
        Outcome::VendorDown { reason } | Outcome::Unconfirmed { reason } => {
            Outcome::VendorDown { reason }
        }
    };
    Err((call(failure), waited))
}

/// When to refresh a token that expires at `expires_ms`: ten minutes early, or a fifth of a short
/// lifetime early.
pub fn refresh_point(now_ms: i64, expires_ms: i64) -> i64 {
    let lifetime = (expires_ms - now_ms).max(0);
    expires_ms - (lifetime / 5).min(10 * 60 * 1000)
}

/// An expiry as vendors send it, to epoch milliseconds: epoch ms, epoch seconds, or seconds
/// remaining (told apart by magnitude).
pub fn expiry_ms(now_ms: i64, value: i64) -> i64 {
    match value {
        v if v > 100_000_000_000 => v,
        v if v > 1_000_000_000 => v * 1000,
        v => now_ms + v.max(0) * 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    impl Remembered for String {
        fn with_wait_left(&self, _: Duration) -> Self {
            self.clone()
        }
    }

    #[test]
    fn expiries_in_any_unit_become_epoch_ms() {
        let now = 1_700_000_000_000;
        assert_eq!(expiry_ms(now, now + 5), now + 5);
        assert_eq!(expiry_ms(now, 1_700_086_400), 1_700_086_400_000);
        assert_eq!(expiry_ms(now, 7200), now + 7_200_000);
    }

    #[test]
    fn a_remembered_failure_asks_every_job_to_wait_as_long_as_it_is_remembered() {
        let cool_down = Duration::from_secs(30);
        let throttled = Outcome::<()>::Throttled {
            after: None,
            reason: "token: rate limited".into(),
        };
        let Err((call, remembered)) =
            fetched(throttled, cool_down, |o| Call::new(o, Some(429), None))
        else {
            panic!("a refusal is no token");
        };
        assert_eq!(remembered, cool_down);
        assert!(
            matches!(call.outcome, Outcome::Throttled { after: Some(d), .. } if d == cool_down),
            "{call:?}"
        );
        let named = Outcome::<()>::Retry {
            after: Some(Duration::from_secs(5)),
            reason: "token: busy".into(),
        };
        let Err((call, remembered)) = fetched(named, cool_down, |o| Call::new(o, Some(503), None))
        else {
            panic!("a refusal is no token");
        };
        assert_eq!(remembered, Duration::from_secs(5), "the vendor's own wait");
        assert!(matches!(call.outcome, Outcome::Retry { after: Some(d), .. } if d == remembered));
    }

    #[test]
    fn a_token_is_refreshed_early() {
        let now = 0;
        assert_eq!(
            refresh_point(now, 24 * 3600 * 1000),
            24 * 3600 * 1000 - 600_000
        );
        assert_eq!(refresh_point(now, 10_000), 8_000);
    }

    #[tokio::test]
    async fn one_fetch_serves_every_caller_and_a_failure_cools_down() {
        let cache: TokenCache<String> = TokenCache::default();
        let fetches = AtomicUsize::new(0);
        let ok = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok(Token {
                value: Secret::new("t1"),
                refresh_at_ms: epoch_ms() + 60_000,
                expires_at_ms: epoch_ms() + 120_000,
            })
        };
        for _ in 0..3 {
            assert_eq!(cache.get(ok).await.unwrap().expose(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        cache.invalidate(&Secret::new("t1")).await;
        let failing = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err(("HTTP 429".to_string(), Duration::from_secs(60)))
        };
        assert!(cache.get(failing).await.is_err());
        assert_eq!(cache.get(failing).await.unwrap_err(), "HTTP 429");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "the cool-down spared the endpoint"
        );
        cache.clear_failure().await;
        assert_eq!(cache.get(ok).await.unwrap().expose(), "t1");
    }

    #[tokio::test]
    async fn a_remembered_failure_asks_to_wait_only_what_is_left_of_it() {
        let cache: TokenCache<Call<()>> = TokenCache::default();
        let cool_down = Duration::from_secs(30);
        let failing = || async move {
            let throttled = Outcome::<Token>::Throttled {
                after: None,
                reason: "token: rate limited".into(),
            };
            fetched(throttled, cool_down, |o| Call::new(o, Some(429), None))
        };
        let wait = |call: Call<()>| match call.outcome {
            Outcome::Throttled {
                after: Some(after), ..
            } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(cache.get(failing).await.unwrap_err()), cool_down);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let left = wait(cache.get(failing).await.unwrap_err());
        assert!(
            left < cool_down && left > cool_down - Duration::from_secs(1),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_early_refresh_keeps_the_token_until_it_expires() {
        let cache: TokenCache<String> = TokenCache::default();
        let fetches = AtomicUsize::new(0);
        let expires_in = |ms: i64| {
            let fetches = &fetches;
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(Token {
                    value: Secret::new("old"),
                    refresh_at_ms: epoch_ms() - 1,
                    expires_at_ms: epoch_ms() + ms,
                })
            }
        };
        let failing = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err(("HTTP 503".to_string(), Duration::from_secs(60)))
        };
        // Due for refresh at once, good for a minute more.
        cache.get(expires_in(60_000)).await.unwrap();
        assert_eq!(cache.get(failing).await.unwrap().expose(), "old");
        assert_eq!(cache.get(failing).await.unwrap().expose(), "old");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "the failure cools down while the old token serves"
        );
        // A reload forgets the failure, not the token.
        cache.clear_failure().await;
        assert_eq!(cache.get(failing).await.unwrap().expose(), "old");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            3,
            "asked again after the reload"
        );
        // The vendor refuses it: the failure is all that is left.
        cache.invalidate(&Secret::new("old")).await;
        assert_eq!(cache.get(failing).await.unwrap_err(), "HTTP 503");

        // A token that has expired is never served.
        let cache: TokenCache<String> = TokenCache::default();
        cache.get(expires_in(-1)).await.unwrap();
        assert_eq!(cache.get(failing).await.unwrap_err(), "HTTP 503");
    }
}
