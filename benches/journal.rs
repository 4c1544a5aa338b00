//! The journal and the hash, each beside its floor measured in the same run.
//!
//! - `enqueue`: 100 000 files recorded as the watch records them (`Journal::observe`, 256 to a
//!   journal write through `JournalHandle::write`). Floor: the same number of bare rows inserted
//!   into a table of the same shape in one transaction. Target: ≤ 2 s.
//!   Beside it, `status` over those files, against a bare count of them.
//! - `hashing`: a 1 GB file read and hashed as the daemon does (`read_regular`, `sha256_hex`).
//!   Baseline: `sha256sum` on the same file, page cache warm. Target: ≥ 0.9× its throughput.
//!
//! Run: `cargo bench --bench journal` (or `-- enqueue`, `-- hashing`).

use std::path::Path;
use std::time::{Duration, Instant};

use imgsyncd::journal::{Journal, JournalHandle};
use imgsyncd::watch::examine::{read_regular, sha256_hex};

mod common;

const FILES: usize = 100_000;

fn enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let journal = JournalHandle::new(Journal::open(&dir.path().join("journal.sqlite3")).unwrap());
    let started = Instant::now();
    runtime.block_on(common::lifecycle::record(&journal, FILES));
    let daemon = started.elapsed();
    let (status, count) = runtime.block_on(status_beside_a_count(
        &journal,
        &dir.path().join("journal.sqlite3"),
    ));
    println!(
        "status: `imgsyncd status` over the {FILES} files in {:.1} ms; floor, one COUNT(*) of \
         the files: {:.1} ms = {:.1}×",
        ms(status),
        ms(count),
        status.as_secs_f64() / count.as_secs_f64()
    );
    let floor = bare_inserts(&dir.path().join("bare.sqlite3"));
    println!(
        "enqueue: {FILES} files recorded and queued in {:.2} s ({:.0}/s; target ≤ 2 s); \
         floor, bare rows in one transaction: {:.2} s = {:.1}×",
        daemon.as_secs_f64(),
        FILES as f64 / daemon.as_secs_f64(),
        floor.as_secs_f64(),
        daemon.as_secs_f64() / floor.as_secs_f64()
    );
}

/// What `imgsyncd status` (and each scrape of the metrics) reads, and a bare count of the files
/// on a connection of its own, each the best of five.
async fn status_beside_a_count(journal: &JournalHandle, path: &Path) -> (Duration, Duration) {
    let status = journal
        .call(|j| {
            best_of_five(&mut || {
                j.status().unwrap();
            })
        })
        .await;
    let conn = rusqlite::Connection::open(path).unwrap();
    let count = best_of_five(&mut || {
        conn.query_row("SELECT COUNT(*) FROM files", [], |r| r.get::<_, i64>(0))
            .unwrap();
    });
    (status, count)
}

fn best_of_five(run: &mut dyn FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The floor: a file row and a job row per file, no lookups, one transaction.
fn bare_inserts(path: &std::path::Path) -> Duration {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT UNIQUE, sha256 TEXT, size INTEGER);
         CREATE TABLE jobs (id INTEGER PRIMARY KEY, file_id INTEGER, state TEXT);",
    )
    .unwrap();
    let started = Instant::now();
    let tx = conn.transaction().unwrap();
    for i in 0..FILES {
        tx.prepare_cached("INSERT INTO files (path, sha256, size) VALUES (?1, ?2, 1000)")
            .unwrap()
            .execute((format!("/drop/d{}/p{i}.png", i / 1000), format!("{i:064x}")))
            .unwrap();
        tx.prepare_cached("INSERT INTO jobs (file_id, state) VALUES (?1, 'queued')")
            .unwrap()
            .execute([tx.last_insert_rowid()])
            .unwrap();
    }
    tx.commit().unwrap();
    started.elapsed()
}

fn hashing() {
    const SIZE: usize = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..(SIZE >> 20) {
            block
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i ^ j) as u8);
            file.write_all(&block).unwrap();
        }
    }
    let sha256sum = || {
        let started = Instant::now();
        let out = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        (
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout)[..64].to_string(),
        )
    };
    let ours = || {
        let started = Instant::now();
        let (bytes, _) = read_regular(&path, 2 * SIZE as u64).unwrap();
        let hex = sha256_hex(&bytes);
        (started.elapsed(), hex)
    };
    // Warm the page cache, then take the better of two runs of each.
    let _ = sha256sum();
    let (base, base_hex) = [sha256sum(), sha256sum()].into_iter().min().unwrap();
    let (run, run_hex) = [ours(), ours()].into_iter().min().unwrap();
    assert_eq!(base_hex, run_hex, "the same digest");
    let mb = SIZE as f64 / 1e6;
    println!(
        "hashing 1 GB: imgsyncd {:.0} MB/s, sha256sum {:.0} MB/s = {:.2}× (target ≥ 0.9×)",
        mb / run.as_secs_f64(),
        mb / base.as_secs_f64(),
        base.as_secs_f64() / run.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if wanted("enqueue") {
        enqueue();
    }
    if wanted("hashing") {
        hashing();
    }
}
