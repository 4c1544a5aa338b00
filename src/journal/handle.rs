//! The daemon's one writer: a connection behind a mutex, called from async code on the blocking pool
//! so SQLite never stalls the executor's threads.

use std::sync::{Arc, Mutex};

use super::Journal;

#[derive(Debug, Clone)]
pub struct JournalHandle(Arc<Mutex<Journal>>);

impl JournalHandle {
    pub fn new(journal: Journal) -> JournalHandle {
        JournalHandle(Arc::new(Mutex::new(journal)))
    }

    /// Runs `f` with the journal on a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(&mut Journal) -> R + Send + 'static,
    {
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut journal = inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut journal)
        })
        .await
        .expect("a journal call panicked")
    }
}
