//! A look at the disk that may never answer: a `stat` of a folder on a hard-mounted share whose
//! server is gone blocks until the server is back. Made on a runtime thread, it stopped that
//! thread (one of two on a small machine) and every task queued behind it. It runs on a thread
//! of its own instead (not the runtime's blocking pool, which the journal and file reads share:
//! several watches on one hung share would fill it) and is waited for a while; at most one is
//! outstanding, so a hung share ties up one thread a watch however often the watch looks.

use std::time::Duration;

use tokio::sync::oneshot;

pub(super) struct BoundedLook<T> {
    pending: Option<oneshot::Receiver<T>>,
    limit: Duration,
}

impl<T: Send + 'static> BoundedLook<T> {
    pub(super) fn new(limit: Duration) -> Self {
        BoundedLook {
            pending: None,
            limit,
        }
    }

    /// Runs `look`, or waits again for the one still outstanding (whose answer, when it comes,
    /// is returned in its place: it says the disk answers again, and the next look is fresh).
    /// `None` when no answer came within the limit.
    pub(super) async fn run(&mut self, look: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let mut pending = match self.pending.take() {
            Some(pending) => pending,
            None => {
                let (answer, pending) = oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name("imgsyncd-look".into())
                    .spawn(move || {
                        let _ = answer.send(look());
                    });
                if spawned.is_err() {
                    return None;
                }
                pending
            }
        };
        match tokio::time::timeout(self.limit, &mut pending).await {
            Ok(Ok(answer)) => Some(answer),
            // The look's thread could not be made, or it panicked (it does not): no answer.
            Ok(Err(_)) => None,
            Err(_) => {
                self.pending = Some(pending);
                None
            }
        }
    }

    pub(super) fn limit(&self) -> Duration {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_that_hangs_is_not_started_again_and_its_late_answer_counts() {
        let mut look = BoundedLook::new(Duration::from_millis(50));
        let started = Arc::new(AtomicUsize::new(0));
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let hung = Arc::new(std::sync::Mutex::new(hung));
        let hanging = |n: u32| {
            let (started, hung) = (Arc::clone(&started), Arc::clone(&hung));
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                hung.lock().unwrap().recv().unwrap();
                n
            }
        };
        assert_eq!(look.run(hanging(1)).await, None);
        assert_eq!(look.run(hanging(2)).await, None);
        assert_eq!(started.load(Ordering::SeqCst), 1, "one look outstanding");
        release.send(()).unwrap();
        assert_eq!(look.run(hanging(3)).await, Some(1), "the late answer");
        assert_eq!(look.run(|| 4).await, Some(4), "a fresh look");
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
