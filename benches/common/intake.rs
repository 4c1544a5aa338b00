//! The intake's floor: what any daemon that learns of files from `notify` and knows them by their
//! SHA-256 must spend per file, with nothing else done: no stat, no settle, no image check, no
//! second read, no journal, no log line, no hand-off to another thread.

use std::sync::mpsc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::thread_cpu_seconds;

/// What `files` cost the intake, in CPU seconds.
pub struct IntakeFloor {
    /// notify's thread, from its first event to the last file's close: reading the inotify queue
    /// and turning it into events, handed to a handler that only counts closed writes.
    pub events: f64,
    /// Hashing each file's bytes, already in memory.
    pub hashing: f64,
}

impl IntakeFloor {
    pub fn total(&self) -> f64 {
        self.events + self.hashing
    }
}

/// Writes `files` into `dir`, which a `notify` watcher with the daemon's settings watches, and
/// measures what its thread spent until the last file was closed; then hashes the bytes.
pub fn intake_floor(dir: &tempfile::TempDir, files: &[Vec<u8>]) -> IntakeFloor {
    let total = files.len();
    let (done, finished) = mpsc::channel();
    let mut closed = 0;
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind == EventKind::Access(AccessKind::Close(AccessMode::Write)) {
            closed += 1;
            if closed == total {
                let _ = done.send(thread_cpu_seconds());
            }
        }
    };
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config).unwrap();
    watcher.watch(dir.path(), RecursiveMode::Recursive).unwrap();
    for (i, bytes) in files.iter().enumerate() {
        std::fs::write(dir.path().join(format!("f{i:05}.png")), bytes).unwrap();
    }
    let events = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("notify reported every file closed");
    drop(watcher);

    let cpu = thread_cpu_seconds();
    let digests: usize = files
        .iter()
        .map(|bytes| Sha256::digest(bytes)[0] as usize)
        .sum();
    let hashing = thread_cpu_seconds() - cpu;
    std::hint::black_box(digests);
    IntakeFloor { events, hashing }
}
