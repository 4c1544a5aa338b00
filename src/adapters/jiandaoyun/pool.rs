//! The pool of upload tokens. One `get_upload_token` call yields up to 100 single-use tokens bound
//! to one transaction; the pool hands out each exactly once, asks for the next batch only when it
//! has run dry (one call in flight however many workers wait), and never hands out a token near
//! the end of its life. A failed fetch is remembered for a cool-down so a backlog does not hammer
//! the endpoint. Tokens live in memory only: after a restart a new batch is fetched.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::Secret;

use super::super::epoch_ms;

/// A transaction: the keys uploaded with its tokens can be used in records until `deadline_ms`.
#[derive(Debug, PartialEq, Eq)]
pub struct Transaction {
    pub id: String,
    pub deadline_ms: i64,
}

/// One single-use upload token and where to send the file with it.
#[derive(Debug, Clone)]
pub struct UploadToken {
    pub url: String,
    pub token: Secret,
    pub transaction: Arc<Transaction>,
    /// The largest file the token takes (its put-policy's `fsizeLimit`), if it says.
    pub fsize_limit: Option<u64>,
    /// When the token dies.
    pub deadline_ms: i64,
    /// After this it is not handed out: its deadline less a margin that scales with its lifetime.
    pub usable_until_ms: i64,
}

/// A fetched batch: at least one token, each usable when it arrived.
#[derive(Debug)]
pub struct Batch {
    pub first: UploadToken,
    pub rest: Vec<UploadToken>,
}

impl Batch {
    /// The batch of `tokens`, or `None` when there are none.
    pub fn of(tokens: Vec<UploadToken>) -> Option<Batch> {
        let mut tokens = tokens.into_iter();
        let first = tokens.next()?;
        Some(Batch {
            first,
            rest: tokens.collect(),
        })
    }
}

#[derive(Debug)]
struct State<E> {
    /// Tokens not yet handed out, oldest batch first.
    tokens: VecDeque<UploadToken>,
    /// The last fetch failed; takers get the same answer until `.0`.
    cooling: Option<(i64, E)>,
}

#[derive(Debug)]
pub struct TokenPool<E> {
    state: Mutex<State<E>>,
}

impl<E> Default for TokenPool<E> {
    fn default() -> Self {
        TokenPool {
            state: Mutex::new(State {
                tokens: VecDeque::new(),
                cooling: None,
            }),
        }
    }
}

impl<E: Clone> TokenPool<E> {
    /// [`TokenPool::take_lasting`] for a file sent in no time.
    #[cfg(test)]
    pub async fn take<F, Fut>(&self, fetch: F) -> Result<UploadToken, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Batch, (E, Duration)>>,
    {
        self.take_lasting(0, fetch).await
    }

    /// A token no one else gets that lives `lasting_ms` more at least (a big file on a slow line
    /// takes minutes to send, and a token that dies on the way wastes them). When none is left
    /// that is not too near its end, `fetch` is run (by one taker at a time: the others wait for
    /// its batch) and its first token handed out; the tokens too short-lived for this file stay
    /// for smaller ones. On failure `fetch` also says how long to wait before asking again.
    pub async fn take_lasting<F, Fut>(&self, lasting_ms: i64, fetch: F) -> Result<UploadToken, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Batch, (E, Duration)>>,
    {
        let mut state = self.state.lock().await;
        let now = epoch_ms();
        state.tokens.retain(|t| t.usable_until_ms > now);
        let lasts = |t: &UploadToken| t.usable_until_ms - now >= lasting_ms;
        if let Some(token) = state
            .tokens
            .iter()
            .position(lasts)
            .and_then(|at| state.tokens.remove(at))
        {
            return Ok(token);
        }
        if let Some((until, failure)) = &state.cooling
            && *until > now
        {
            return Err(failure.clone());
        }
        match fetch().await {
            Ok(Batch { first, rest }) => {
                state.cooling = None;
                state.tokens.extend(rest);
                Ok(first)
            }
            Err((failure, cool_down)) => {
                state.cooling = Some((epoch_ms() + cool_down.as_millis() as i64, failure.clone()));
                Err(failure)
            }
        }
    }

    /// Puts back a token that was taken but not sent (the file was refused before any request).
    pub async fn give_back(&self, token: UploadToken) {
        self.state.lock().await.tokens.push_front(token);
    }

    /// Drops every token of the transaction `id` (it died early: the vendor said so).
    pub async fn discard_transaction(&self, id: &str) -> usize {
        let mut state = self.state.lock().await;
        let before = state.tokens.len();
        state.tokens.retain(|t| t.transaction.id != id);
        before - state.tokens.len()
    }

    /// Forgets a remembered failure (after a reload, the operator may have fixed it). A fetch in
    /// flight holds the pool for as long as its call takes (two minutes when the vendor stalls):
    /// a reload does not wait for it, and that fetch's own outcome stands.
    pub async fn clear_failure(&self) {
        if let Ok(mut state) =
            tokio::time::timeout(Duration::from_millis(200), self.state.lock()).await
        {
            state.cooling = None;
        }
    }

    /// Tokens waiting to be handed out (whatever their age).
    pub async fn waiting(&self) -> usize {
        self.state.lock().await.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn batch(id: &str, n: usize, life_ms: i64, margin_ms: i64) -> Vec<UploadToken> {
        let now = epoch_ms();
        let transaction = Arc::new(Transaction {
            id: id.into(),
            deadline_ms: now + life_ms,
        });
        (0..n)
            .map(|i| UploadToken {
                url: "http://upload.example".into(),
                token: Secret::new(format!("{id}-{i}")),
                transaction: Arc::clone(&transaction),
                fsize_limit: None,
                deadline_ms: now + life_ms,
                usable_until_ms: now + life_ms - margin_ms,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_big_file_gets_a_token_that_lives_long_enough_to_send_it() {
        let pool: TokenPool<String> = TokenPool::default();
        // A batch with ten minutes left.
        let old = || async { Ok(Batch::of(batch("old", 3, 900_000, 300_000)).unwrap()) };
        let first = pool.take(old).await.unwrap();
        assert_eq!(first.transaction.id, "old");
        let fresh = || async { Ok(Batch::of(batch("fresh", 3, 3_600_000, 300_000)).unwrap()) };
        // Twenty minutes to send: a fresh batch, the old tokens kept.
        let big = pool.take_lasting(1_200_000, fresh).await.unwrap();
        assert_eq!(big.transaction.id, "fresh");
        assert_eq!(pool.waiting().await, 4);
        // A small file takes an old one first.
        let small = pool.take(fresh).await.unwrap();
        assert_eq!(small.transaction.id, "old");
    }

    #[tokio::test]
    async fn a_reload_does_not_wait_for_a_fetch_that_stalls() {
        let pool: Arc<TokenPool<String>> = Arc::default();
        let stalled = Arc::clone(&pool);
        let fetch = tokio::spawn(async move {
            stalled
                .take(std::future::pending::<Result<Batch, (String, Duration)>>)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        pool.clear_failure().await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            started.elapsed()
        );
        fetch.abort();
    }

    #[tokio::test]
    async fn each_token_is_handed_out_once_and_a_dry_pool_refills() {
        let pool: TokenPool<String> = TokenPool::default();
        let fetches = AtomicUsize::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Ok(Batch::of(batch(&format!("t{n}"), 100, 3_600_000, 300_000)).unwrap())
        };
        let mut seen = HashSet::new();
        for _ in 0..130 {
            let token = pool.take(fetch).await.unwrap();
            assert!(
                seen.insert(token.token.expose().to_string()),
                "handed out twice"
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "130 tokens: two batches");
        assert_eq!(pool.waiting().await, 70);
        assert!(seen.contains("t0-99") && seen.contains("t1-29"));
    }

    #[tokio::test]
    async fn concurrent_takers_share_one_fetch() {
        let pool: Arc<TokenPool<String>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (pool, fetches) = (Arc::clone(&pool), Arc::clone(&fetches));
            tasks.push(tokio::spawn(async move {
                pool.take(|| async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // A slow vendor: every taker arrives while the fetch is in flight.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Batch::of(batch("t", 100, 3_600_000, 300_000)).unwrap())
                })
                .await
                .unwrap()
                .token
                .expose()
                .to_string()
            }));
        }
        let mut seen = HashSet::new();
        for task in tasks {
            assert!(seen.insert(task.await.unwrap()));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch in flight");
        assert_eq!(pool.waiting().await, 60);
    }

    #[tokio::test]
    async fn a_token_near_its_end_is_never_handed_out() {
        let pool: TokenPool<String> = TokenPool::default();
        // Lives 400 ms, not handed out in its last 100 ms.
        let short = || async { Ok(Batch::of(batch("short", 3, 400, 100)).unwrap()) };
        let first = pool.take(short).await.unwrap();
        assert_eq!(first.transaction.id, "short");
        tokio::time::sleep(Duration::from_millis(320)).await;
        let fresh = pool
            .take(|| async { Ok(Batch::of(batch("fresh", 3, 3_600_000, 300_000)).unwrap()) })
            .await
            .unwrap();
        assert_eq!(
            fresh.transaction.id, "fresh",
            "the two tokens left of `short` were within their margin: dropped, a new batch fetched"
        );
        assert_eq!(pool.waiting().await, 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_cools_down_and_a_reload_forgets_it() {
        let pool: TokenPool<String> = TokenPool::default();
        let fetches = AtomicUsize::new(0);
        let failing = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err(("bad key".to_string(), Duration::from_secs(60)))
        };
        assert_eq!(pool.take(failing).await.unwrap_err(), "bad key");
        assert_eq!(pool.take(failing).await.unwrap_err(), "bad key");
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "the endpoint was spared");
        pool.clear_failure().await;
        let ok = || async { Ok(Batch::of(batch("t", 2, 3_600_000, 300_000)).unwrap()) };
        assert!(pool.take(ok).await.is_ok());
    }

    #[tokio::test]
    async fn an_unsent_token_goes_back_and_a_dead_transaction_goes_whole() {
        let pool: TokenPool<String> = TokenPool::default();
        let ok = || async { Ok(Batch::of(batch("t", 5, 3_600_000, 300_000)).unwrap()) };
        let token = pool.take(ok).await.unwrap();
        let name = token.token.expose().to_string();
        pool.give_back(token).await;
        assert_eq!(pool.take(ok).await.unwrap().token.expose(), name);
        assert_eq!(pool.discard_transaction("t").await, 4);
        assert_eq!(pool.discard_transaction("t").await, 0);
        assert_eq!(pool.waiting().await, 0);
        assert!(Batch::of(Vec::new()).is_none());
    }
}
