//! The journal's floor: what recording every step of a file's life costs when nothing else runs
//! and the writes come in the largest groups the daemon could ever make.

use super::own_cpu_seconds;
use imgsyncd::journal::{
    self, Attempt, Claimed, FileStamp, JobResult, Journal, JournalHandle, Observation, Remote,
};

/// Writes per group, as the watch records files.
const GROUP: usize = 256;

/// What `n` files cost the journal, in CPU seconds.
pub struct Floor {
    /// Recording each file and queueing its upload (`Journal::observe`), commits included.
    pub recorded: f64,
    /// Claiming each upload and recording its outcome (`Journal::claim`, `Journal::finish`),
    /// one job running at a time (the cheapest claim), commits included.
    pub claimed_and_finished: f64,
}

impl Floor {
    pub fn total(&self) -> f64 {
        self.recorded + self.claimed_and_finished
    }
}

/// Takes `n` files through the journal: recorded `GROUP` to a write, then claimed and finished as
/// uploaded, `GROUP` to a write. Asserts that all are synced at the end.
pub fn lifecycle(n: usize) -> Floor {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalHandle::new(Journal::open(&dir.path().join("journal.sqlite3")).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cpu = own_cpu_seconds();
        record(&journal, n).await;
        let recorded = own_cpu_seconds() - cpu;
        let cpu = own_cpu_seconds();
        loop {
            let done = journal
                .write(|j| {
                    let mut done = 0;
                    while done < GROUP {
                        let Some(claimed) = j.claim(&["erp".to_string()], 60_000)? else {
                            break;
                        };
                        let Claimed::Job(job) = claimed else {
                            panic!("every file has bytes of its own: {claimed:?}")
                        };
                        j.finish(&job, &uploaded(job.id), Some(&attempt()))?;
                        done += 1;
                    }
                    Ok(done)
                })
                .await
                .unwrap();
            if done == 0 {
                break;
            }
        }
        let claimed_and_finished = own_cpu_seconds() - cpu;
        let left = journal.call(|j| j.glance()).await.unwrap();
        assert_eq!(left.pending, 0, "every file is synced");
        Floor {
            recorded,
            claimed_and_finished,
        }
    })
}

/// Records files `0..n` as the watch does, `GROUP` to a journal write.
pub async fn record(journal: &JournalHandle, n: usize) {
    for first in (0..n).step_by(GROUP) {
        journal
            .write(move |j| (first..(first + GROUP).min(n)).try_for_each(|i| observe(j, i)))
            .await
            .unwrap();
    }
}

/// Records file `i` (`/drop/d…/p{i}.png`, bytes of its own) as the watch does.
fn observe(j: &mut Journal, i: usize) -> journal::Result<()> {
    let (path, sha256) = (format!("/drop/d{}/p{i}.png", i / 1000), format!("{i:064x}"));
    j.observe(
        &Observation {
            path: &path,
            watch_root: "/drop",
            vendor: "erp",
            kind: "kingdee",
            stamp: FileStamp {
                size: 1000,
                mtime_ns: i as i64,
                ctime_ns: i as i64,
                inode: i as u64,
                dev: 1,
            },
            sha256: &sha256,
            format: "png",
            width: 8,
            height: 8,
            delete_unused: true,
            reuse_copies: true,
        },
        &|_| false,
    )?;
    Ok(())
}

fn uploaded(job_id: i64) -> JobResult {
    JobResult::Uploaded(Remote {
        reference: format!("https://img.example/{job_id}.png"),
        transaction_id: None,
        expires_at: None,
        record_id: None,
    })
}

fn attempt() -> Attempt {
    Attempt {
        outcome: "uploaded".into(),
        http_status: Some(200),
        ..Attempt::default()
    }
}
