//! The watcher's side of the journal: what was seen on disk, and what it means for the record.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{FileState, Journal, Result, now_ms};

/// A complete, classified image seen at `path`.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub path: &'a str,
    pub watch_root: &'a str,
    pub vendor: &'a str,
    pub kind: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: &'a str,
    pub format: &'a str,
    pub width: u32,
    pub height: u32,
    /// Whether the remote copy of content this file replaces is deleted at the vendor.
    pub delete_replaced: bool,
}

/// A file the daemon will not send, and why.
#[derive(Debug, Clone)]
pub struct RejectedFile<'a> {
    pub path: &'a str,
    pub watch_root: &'a str,
    pub vendor: &'a str,
    pub kind: &'a str,
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub reason: &'a str,
    pub delete_replaced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The record already says this.
    Unchanged,
    /// A new file, queued for upload.
    Queued,
    /// New content at a known path: queued for upload, the old remote copy queued for deletion.
    Changed,
    /// The same bytes were recorded at a path that is gone: the record moved, nothing is sent.
    Moved { from: String },
    /// The file came back before its removal was carried out.
    Restored,
}

/// What to do about a file that is gone from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Delete,
    Keep,
    /// Hold the delete for an operator, with the reason shown in `status` and `files`.
    Hold(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingOutcome {
    NotTracked,
    Unchanged,
    /// Marked removed; nothing at the vendor to touch (never uploaded, or kept).
    Removed,
    /// Marked removed, remote copy kept because another file still uses the same URL.
    Shared {
        with: String,
    },
    DeleteQueued,
    Held,
    /// An upload is in flight; the removal is carried out when it ends.
    Deferred,
}

/// A file the journal knows under a watch root, for reconciling against the disk.
#[derive(Debug, Clone)]
pub struct KnownFile {
    pub path: String,
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub state: FileState,
    pub removal_pending: bool,
}

struct Existing {
    id: i64,
    state: String,
    sha256: Option<String>,
    url: Option<String>,
    removal: Option<String>,
    remote_deleted: bool,
    vendor: String,
    size: Option<i64>,
    mtime_ns: Option<i64>,
    error: Option<String>,
}

fn existing(tx: &Transaction<'_>, path: &str) -> Result<Option<Existing>> {
    Ok(tx
        .query_row(
            "SELECT id, state, sha256, url, removal, remote_deleted, vendor, size, mtime_ns, error
             FROM files WHERE path = ?1",
            [path],
            |r| {
                Ok(Existing {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    sha256: r.get(2)?,
                    url: r.get(3)?,
                    removal: r.get(4)?,
                    remote_deleted: r.get(5)?,
                    vendor: r.get(6)?,
                    size: r.get(7)?,
                    mtime_ns: r.get(8)?,
                    error: r.get(9)?,
                })
            },
        )
        .optional()?)
}

pub(super) fn queue_job(
    tx: &Transaction<'_>,
    file_id: i64,
    op: &str,
    vendor: &str,
    sha256: Option<&str>,
    remote_ref: Option<&str>,
) -> Result<()> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO jobs (file_id, op, vendor, sha256, remote_ref, state, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
        params![file_id, op, vendor, sha256, remote_ref, now],
    )?;
    Ok(())
}

/// Drops the queued (not running) jobs of `ops` for a file.
fn drop_queued(tx: &Transaction<'_>, file_id: i64, ops: &[&str]) -> Result<()> {
    for op in ops {
        tx.execute(
            "DELETE FROM jobs WHERE file_id = ?1 AND op = ?2 AND state = 'queued'",
            params![file_id, op],
        )?;
    }
    Ok(())
}

fn has_running(tx: &Transaction<'_>, file_id: i64, op: &str) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE file_id = ?1 AND op = ?2 AND state = 'running')",
        params![file_id, op],
        |r| r.get(0),
    )?)
}

fn has_job(tx: &Transaction<'_>, file_id: i64, op: &str) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE file_id = ?1 AND op = ?2)",
        params![file_id, op],
        |r| r.get(0),
    )?)
}

/// Another live file of the vendor that holds the same remote URL.
pub(super) fn url_shared_with(
    tx: &Transaction<'_>,
    file_id: i64,
    vendor: &str,
    url: &str,
) -> Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT path FROM files WHERE vendor = ?1 AND url = ?2 AND id != ?3
               AND state != 'removed' AND removal IS NULL LIMIT 1",
            params![vendor, url, file_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Queues the deletion of a superseded remote copy unless another file still uses it.
fn delete_superseded(tx: &Transaction<'_>, row: &Existing, wanted: bool) -> Result<()> {
    let Some(url) = row.url.as_deref() else {
        return Ok(());
    };
    if !wanted || row.remote_deleted || url_shared_with(tx, row.id, &row.vendor, url)?.is_some() {
        return Ok(());
    }
    queue_job(tx, row.id, "delete_old", &row.vendor, None, Some(url))
}

impl Journal {
    /// Records a complete image seen on disk and queues whatever it calls for.
    ///
    /// `is_present` answers whether a recorded path still exists on disk: a record whose file is gone
    /// and whose bytes match is a rename, and moves instead of uploading again.
    pub fn observe(
        &mut self,
        obs: &Observation<'_>,
        is_present: &dyn Fn(&str) -> bool,
    ) -> Result<Observed> {
        let tx = self.write()?;
        let outcome = match existing(&tx, obs.path)? {
            Some(row) => observe_known(&tx, obs, row)?,
            None => match moved_twin(&tx, obs, is_present)? {
                Some((id, from)) => {
                    move_record(&tx, id, obs)?;
                    Observed::Moved { from }
                }
                None => {
                    insert_pending(&tx, obs)?;
                    Observed::Queued
                }
            },
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Records a file the daemon will not send. Returns false when the record already said so.
    pub fn reject(&mut self, file: &RejectedFile<'_>) -> Result<bool> {
        let tx = self.write()?;
        let now = now_ms();
        let size = file.size.map(|s| s as i64);
        let changed = match existing(&tx, file.path)? {
            Some(row)
                if row.state == "rejected"
                    && row.error.as_deref() == Some(file.reason)
                    && row.size == size
                    && row.mtime_ns == file.mtime_ns =>
            {
                false
            }
            Some(row) => {
                delete_superseded(&tx, &row, file.delete_replaced)?;
                drop_queued(&tx, row.id, &["upload", "delete"])?;
                tx.execute(
                    "UPDATE files SET state = 'rejected', error = ?2, size = ?3, mtime_ns = ?4,
                       sha256 = NULL, format = NULL, width = NULL, height = NULL, url = NULL,
                       file_token = NULL, remote_key = NULL, transaction_id = NULL,
                       expires_at = NULL, remote_deleted = 0, removal = NULL, vendor = ?5,
                       kind = ?6, watch_root = ?7, updated_at = ?8
                     WHERE id = ?1",
                    params![
                        row.id,
                        file.reason,
                        size,
                        file.mtime_ns,
                        file.vendor,
                        file.kind,
                        file.watch_root,
                        now
                    ],
                )?;
                true
            }
            None => {
                tx.execute(
                    "INSERT INTO files (path, watch_root, vendor, kind, state, size, mtime_ns,
                       error, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'rejected', ?5, ?6, ?7, ?8, ?8)",
                    params![
                        file.path,
                        file.watch_root,
                        file.vendor,
                        file.kind,
                        size,
                        file.mtime_ns,
                        file.reason,
                        now
                    ],
                )?;
                true
            }
        };
        tx.commit()?;
        Ok(changed)
    }

    /// Records that the file at `path` is gone from disk.
    pub fn mark_missing(&mut self, path: &str, removal: &Removal) -> Result<MissingOutcome> {
        let tx = self.write()?;
        let outcome = match existing(&tx, path)? {
            None => MissingOutcome::NotTracked,
            Some(row) if row.state == "removed" => MissingOutcome::Unchanged,
            Some(row) => missing_known(&tx, row, removal)?,
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// The files the journal holds under `root` that it does not consider removed.
    pub fn known_under(&self, root: &str) -> Result<Vec<KnownFile>> {
        let prefix = format!("{}/", root.trim_end_matches('/'));
        let mut stmt = self.conn.prepare(
            "SELECT path, size, mtime_ns, state, removal IS NOT NULL FROM files
             WHERE substr(path, 1, length(?1)) = ?1 AND state != 'removed'",
        )?;
        let rows = stmt.query_map([&prefix], |r| {
            let state: String = r.get(3)?;
            Ok(KnownFile {
                path: r.get(0)?,
                size: r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
                mtime_ns: r.get(2)?,
                state: FileState::parse(&state).unwrap_or(FileState::Pending),
                removal_pending: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Confirms the deletes held for an operator: a file that is back is kept, one still gone
    /// has its delete queued. Returns how many deletes were queued.
    pub fn release_held(&mut self, is_present: &dyn Fn(&str) -> bool) -> Result<usize> {
        let tx = self.write()?;
        let held: Vec<(i64, String, String, Option<String>)> = {
            let mut stmt =
                tx.prepare("SELECT id, path, vendor, url FROM files WHERE removal = 'held'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut queued = 0;
        let now = now_ms();
        for (id, path, vendor, url) in held {
            if is_present(&path) {
                tx.execute(
                    "UPDATE files SET removal = NULL, error = NULL, updated_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                continue;
            }
            tx.execute(
                "UPDATE files SET removal = 'delete', state = 'pending', error = NULL,
                   updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            queue_job(&tx, id, "delete", &vendor, None, url.as_deref())?;
            queued += 1;
        }
        tx.commit()?;
        Ok(queued)
    }
}

fn observe_known(tx: &Transaction<'_>, obs: &Observation<'_>, row: Existing) -> Result<Observed> {
    let now = now_ms();
    let same_content = row.sha256.as_deref() == Some(obs.sha256) && row.vendor == obs.vendor;
    if same_content && row.state != "removed" {
        if row.removal.is_none() {
            tx.execute(
                "UPDATE files SET size = ?2, mtime_ns = ?3 WHERE id = ?1
                   AND (size IS NOT ?2 OR mtime_ns IS NOT ?3)",
                params![row.id, obs.size as i64, obs.mtime_ns],
            )?;
            return Ok(Observed::Unchanged);
        }
        // Back before its removal was carried out: cancel the removal.
        drop_queued(tx, row.id, &["delete"])?;
        let state = if row.url.is_some() && !has_running(tx, row.id, "delete")? {
            "synced"
        } else {
            "pending"
        };
        if state == "pending" && !has_job(tx, row.id, "upload")? && row.url.is_none() {
            queue_job(tx, row.id, "upload", obs.vendor, Some(obs.sha256), None)?;
        }
        tx.execute(
            "UPDATE files SET removal = NULL, error = NULL, state = ?2, size = ?3, mtime_ns = ?4,
               updated_at = ?5 WHERE id = ?1",
            params![row.id, state, obs.size as i64, obs.mtime_ns, now],
        )?;
        return Ok(Observed::Restored);
    }
    if same_content && row.url.is_some() && !row.remote_deleted {
        // Removed with `keep`, and now back: the remote copy is still there.
        tx.execute(
            "UPDATE files SET state = 'synced', removal = NULL, error = NULL, size = ?2,
               mtime_ns = ?3, watch_root = ?4, updated_at = ?5 WHERE id = ?1",
            params![row.id, obs.size as i64, obs.mtime_ns, obs.watch_root, now],
        )?;
        return Ok(Observed::Restored);
    }
    if row.state != "removed" {
        delete_superseded(tx, &row, obs.delete_replaced)?;
    }
    drop_queued(tx, row.id, &["upload", "delete"])?;
    set_new_content(tx, row.id, obs)?;
    queue_job(tx, row.id, "upload", obs.vendor, Some(obs.sha256), None)?;
    Ok(if row.state == "removed" {
        Observed::Queued
    } else {
        Observed::Changed
    })
}

/// A live record of the same bytes for the same vendor whose file is gone: the file was renamed.
fn moved_twin(
    tx: &Transaction<'_>,
    obs: &Observation<'_>,
    is_present: &dyn Fn(&str) -> bool,
) -> Result<Option<(i64, String)>> {
    let mut stmt = tx.prepare(
        "SELECT f.id, f.path FROM files f
         WHERE f.vendor = ?1 AND f.sha256 = ?2 AND f.state IN ('pending', 'synced', 'failed')
           AND (f.removal IS NULL OR f.removal IN ('held', 'delete'))
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.op = 'delete'
                             AND j.state = 'running')",
    )?;
    let twins = stmt
        .query_map(params![obs.vendor, obs.sha256], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(twins.into_iter().find(|(_, path)| !is_present(path)))
}

fn move_record(tx: &Transaction<'_>, id: i64, obs: &Observation<'_>) -> Result<()> {
    drop_queued(tx, id, &["delete"])?;
    let has_url: bool = tx.query_row(
        "SELECT url IS NOT NULL FROM files WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    // A record whose delete was queued went back to `pending`; with its URL it is synced again.
    tx.execute(
        "UPDATE files SET path = ?2, watch_root = ?3, size = ?4, mtime_ns = ?5, removal = NULL,
           error = CASE WHEN removal IS NULL THEN error ELSE NULL END,
           state = CASE WHEN removal IS NOT NULL AND ?6 THEN 'synced' ELSE state END,
           updated_at = ?7
         WHERE id = ?1",
        params![
            id,
            obs.path,
            obs.watch_root,
            obs.size as i64,
            obs.mtime_ns,
            has_url,
            now_ms()
        ],
    )?;
    Ok(())
}

fn insert_pending(tx: &Transaction<'_>, obs: &Observation<'_>) -> Result<()> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO files (path, watch_root, vendor, kind, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
        params![obs.path, obs.watch_root, obs.vendor, obs.kind, now],
    )?;
    let id = tx.last_insert_rowid();
    set_new_content(tx, id, obs)?;
    queue_job(tx, id, "upload", obs.vendor, Some(obs.sha256), None)
}

/// Records `obs` as the file's content, waiting to be sent: whatever the vendor returned for
/// earlier content is forgotten.
fn set_new_content(tx: &Transaction<'_>, id: i64, obs: &Observation<'_>) -> Result<()> {
    tx.execute(
        "UPDATE files SET state = 'pending', watch_root = ?2, vendor = ?3, kind = ?4, size = ?5,
           mtime_ns = ?6, sha256 = ?7, format = ?8, width = ?9, height = ?10, url = NULL,
           file_token = NULL, remote_key = NULL, transaction_id = NULL, expires_at = NULL,
           remote_deleted = 0, removal = NULL, attempts = 0, error = NULL, updated_at = ?11
         WHERE id = ?1",
        params![
            id,
            obs.watch_root,
            obs.vendor,
            obs.kind,
            obs.size as i64,
            obs.mtime_ns,
            obs.sha256,
            obs.format,
            obs.width,
            obs.height,
            now_ms()
        ],
    )?;
    Ok(())
}

fn missing_known(tx: &Transaction<'_>, row: Existing, removal: &Removal) -> Result<MissingOutcome> {
    let now = now_ms();
    let wanted = match removal {
        Removal::Delete => "delete",
        Removal::Keep => "keep",
        Removal::Hold(_) => "held",
    };
    if row.removal.as_deref() == Some(wanted) || row.removal.as_deref() == Some("delete") {
        return Ok(MissingOutcome::Unchanged);
    }
    drop_queued(tx, row.id, &["upload"])?;
    if has_running(tx, row.id, "upload")? {
        let deferred = if matches!(removal, Removal::Keep) {
            "keep"
        } else {
            "delete"
        };
        tx.execute(
            "UPDATE files SET removal = ?2, updated_at = ?3 WHERE id = ?1",
            params![row.id, deferred, now],
        )?;
        return Ok(MissingOutcome::Deferred);
    }
    let set_removed = |error: Option<&str>| -> Result<()> {
        tx.execute(
            "UPDATE files SET state = 'removed', removal = NULL, error = ?2, updated_at = ?3
             WHERE id = ?1",
            params![row.id, error, now],
        )?;
        Ok(())
    };
    let url = match row.url.as_deref() {
        Some(url) if !row.remote_deleted => url,
        _ => {
            set_removed(None)?;
            return Ok(MissingOutcome::Removed);
        }
    };
    match removal {
        Removal::Keep => {
            set_removed(None)?;
            Ok(MissingOutcome::Removed)
        }
        Removal::Hold(reason) => {
            tx.execute(
                "UPDATE files SET removal = 'held', error = ?2, updated_at = ?3 WHERE id = ?1",
                params![row.id, reason, now],
            )?;
            Ok(MissingOutcome::Held)
        }
        Removal::Delete => {
            if let Some(other) = url_shared_with(tx, row.id, &row.vendor, url)? {
                set_removed(Some(&format!("remote copy kept: {other} still uses it")))?;
                return Ok(MissingOutcome::Shared { with: other });
            }
            tx.execute(
                "UPDATE files SET state = 'pending', removal = 'delete', error = NULL,
                   updated_at = ?2 WHERE id = ?1",
                params![row.id, now],
            )?;
            queue_job(tx, row.id, "delete", &row.vendor, None, Some(url))?;
            Ok(MissingOutcome::DeleteQueued)
        }
    }
}
