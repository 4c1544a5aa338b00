//! The journal read back for people and scripts: `status`, `files` and `history`.

use super::sql::CachedSql;
use std::collections::BTreeMap;

use rusqlite::params;
use serde::Serialize;

use super::{FileState, Journal, Result, now_ms, rfc3339};

/// The contract's field for a remote copy's reference, by vendor kind: Kingdee answers a URL,
/// Feishu a file_token, Jiandaoyun a key.
pub fn reference_field(kind: &str) -> &'static str {
    crate::adapters::VendorKind::parse(kind).map_or("url", |k| k.spec().reference_field)
}

/// One row of `files --json`; the contract's field names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileRow {
    pub path: String,
    pub vendor: String,
    pub kind: String,
    pub state: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub url: Option<String>,
    pub file_token: Option<String>,
    pub key: Option<String>,
    pub transaction_id: Option<String>,
    pub expires_at: Option<String>,
    pub record_id: Option<String>,
    pub remote_deleted: Option<bool>,
    pub attempts: u32,
    pub error: Option<String>,
    pub updated_at: String,
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    pub vendor: Option<String>,
    pub state: Option<FileState>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub at: String,
    pub op: String,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub message: Option<String>,
    pub duration_ms: Option<i64>,
}

/// A vendor no longer in the config whose jobs still wait (`status --json`'s
/// `unconfigured_vendors`): nothing sends them until it is configured again.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnconfiguredVendor {
    pub vendor: String,
    pub jobs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PausedVendor {
    pub vendor: String,
    pub reason: String,
    pub since: String,
    pub next_probe_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PausedWatch {
    pub path: String,
    pub reason: String,
    pub since: String,
}

/// A watch that hears of its files less well than it should: polled, or only rescanned.
#[derive(Debug, Clone, Serialize)]
pub struct DegradedWatch {
    pub path: String,
    pub reason: String,
    pub since: String,
}

/// A file that needs a person: rejected or failed, with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: String,
    pub vendor: String,
    pub state: String,
    pub error: Option<String>,
    /// The copy the vendor still holds for the file's last good content (kept on purpose).
    pub last_good_copy: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at: String,
    pub path: String,
    pub vendor: String,
    pub op: String,
    pub outcome: String,
    pub message: Option<String>,
}

/// `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub files: BTreeMap<String, u64>,
    pub by_vendor: BTreeMap<String, BTreeMap<String, u64>>,
    pub oldest_pending_s: Option<i64>,
    pub paused_vendors: Vec<PausedVendor>,
    pub paused_watches: Vec<PausedWatch>,
    /// Watches polled instead of watched by inotify, or found only by the periodic rescan.
    pub degraded_watches: Vec<DegradedWatch>,
    pub queued_jobs: u64,
    pub held_deletes: u64,
    /// Synced files whose remote copy has expired (a Jiandaoyun key past its transaction's hour,
    /// with no record holding it): the vendor no longer honours it.
    pub expired_keys: u64,
    pub recent_errors: Vec<RecentError>,
    /// The most recent rejected or failed files (at most 10), with why.
    pub problems: Vec<Problem>,
}

fn empty_counts() -> BTreeMap<String, u64> {
    FileState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect()
}

impl Journal {
    pub fn files(&self, filter: &FileFilter) -> Result<Vec<FileRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path, f.vendor, f.kind, f.state, f.size, f.sha256, c.remote_ref,
               c.transaction_id, c.expires_at, c.state, f.attempts, f.error, f.updated_at,
               f.format, f.width, f.height, c.record_id
             FROM files f LEFT JOIN remote_copies c ON c.id = f.copy_id
             WHERE (?1 IS NULL OR f.vendor = ?1) AND (?2 IS NULL OR f.state = ?2)
               AND (?3 IS NULL OR f.path = ?3)
             ORDER BY f.path",
        )?;
        let rows = stmt.query_map(
            params![
                filter.vendor,
                filter.state.map(FileState::as_str),
                filter.path
            ],
            |r| {
                let kind: String = r.get(2)?;
                let state: String = r.get(3)?;
                let reference: Option<String> = r.get(6)?;
                let copy_state: Option<String> = r.get(9)?;
                let field =
                    |name: &str| reference.clone().filter(|_| reference_field(&kind) == name);
                Ok(FileRow {
                    path: r.get(0)?,
                    vendor: r.get(1)?,
                    url: field("url"),
                    file_token: field("file_token"),
                    key: field("key"),
                    kind,
                    remote_deleted: (state == "removed")
                        .then(|| copy_state.as_deref() == Some("deleted")),
                    state,
                    size: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
                    sha256: r.get(5)?,
                    transaction_id: r.get(7)?,
                    expires_at: r.get::<_, Option<i64>>(8)?.map(rfc3339),
                    attempts: r.get(10)?,
                    error: r.get(11)?,
                    updated_at: rfc3339(r.get(12)?),
                    format: r.get(13)?,
                    width: r.get(14)?,
                    height: r.get(15)?,
                    record_id: r.get(16)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every attempt for the file at `path`, oldest first; `None` when the journal has no such file.
    pub fn history(&self, path: &str) -> Result<Option<Vec<HistoryRow>>> {
        let Some(file_id) = self.file_id(path)? else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, op, outcome, http_status, vendor_code, message, duration_ms
             FROM attempts WHERE file_id = ?1 ORDER BY at, id",
        )?;
        let rows = stmt.query_map([file_id], |r| {
            Ok(HistoryRow {
                at: rfc3339(r.get(0)?),
                op: r.get(1)?,
                outcome: r.get(2)?,
                http_status: r.get(3)?,
                vendor_code: r.get(4)?,
                message: r.get(5)?,
                duration_ms: r.get(6)?,
            })
        })?;
        Ok(Some(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// `status` of every vendor the journal knows, paused or with jobs queued.
    pub fn status(&self) -> Result<Status> {
        self.in_one_read(|| self.status_in(None))
    }

    /// `status` under the config as it is now: the paused vendors and the queue (`queued_jobs`,
    /// `oldest_pending_s`) are those of `vendors`, the configured ones. A vendor taken out of the
    /// config keeps its files, counted in `files` and `by_vendor`, and its jobs; but nothing
    /// sends them until it is put back, so they are no queue to be late on, and it is paused no
    /// more.
    pub fn status_of(&self, vendors: &[String]) -> Result<Status> {
        self.in_one_read(|| self.status_in(Some(vendors)))
    }

    /// The vendors with jobs waiting that are not among `vendors`, the configured ones (one
    /// taken out of the config, or renamed): what waits for them, which nothing sends.
    pub fn unconfigured_vendors(&self, vendors: &[String]) -> Result<Vec<UnconfiguredVendor>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT vendor, COUNT(*) FROM jobs GROUP BY vendor ORDER BY vendor")?;
        let waiting = stmt.query_map([], |r| {
            Ok(UnconfiguredVendor {
                vendor: r.get(0)?,
                jobs: r.get::<_, i64>(1)? as u64,
            })
        })?;
        let mut unconfigured = Vec::new();
        for vendor in waiting {
            let vendor = vendor?;
            if !vendors.contains(&vendor.vendor) {
                unconfigured.push(vendor);
            }
        }
        Ok(unconfigured)
    }

    fn status_in(&self, vendors: Option<&[String]>) -> Result<Status> {
        let mut files = empty_counts();
        let mut by_vendor: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT vendor, state, COUNT(*) FROM files GROUP BY state, vendor",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (vendor, state, count) = row?;
                *files.entry(state.clone()).or_default() += count as u64;
                *by_vendor
                    .entry(vendor)
                    .or_insert_with(empty_counts)
                    .entry(state)
                    .or_default() += count as u64;
            }
        }
        let now = now_ms();
        let (queued_jobs, oldest) = match vendors {
            None => (
                self.conn
                    .cached_query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0))?,
                self.conn
                    .cached_query_row("SELECT MIN(created_at) FROM jobs", [], |r| {
                        r.get::<_, Option<i64>>(0)
                    })?,
            ),
            Some(vendors) => {
                let (mut queued, mut oldest) = (0, None::<i64>);
                for vendor in vendors {
                    let (count, first): (i64, Option<i64>) = self.conn.cached_query_row(
                        "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE vendor = ?1",
                        [vendor],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    queued += count;
                    oldest = match (oldest, first) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                (queued, oldest)
            }
        };
        let held_deletes: i64 = self.conn.cached_query_row(
            "SELECT COUNT(*) FROM files WHERE removal = 'held'",
            [],
            |r| r.get(0),
        )?;
        let expired_keys: i64 = self.conn.cached_query_row(
            "SELECT COUNT(*) FROM files f JOIN remote_copies c ON c.id = f.copy_id
             WHERE +f.state = 'synced' AND c.expires_at IS NOT NULL AND c.expires_at <= ?1",
            [now],
            |r| r.get(0),
        )?;
        let paused_vendors = self
            .pauses()?
            .into_iter()
            .filter(|p| vendors.is_none_or(|vendors| vendors.contains(&p.vendor)))
            .map(|p| PausedVendor {
                vendor: p.vendor,
                reason: p.reason,
                since: rfc3339(p.since),
                next_probe_at: rfc3339(p.next_probe_at),
            })
            .collect();
        let paused_watches = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT root, reason, since FROM watch_pauses ORDER BY root")?;
            stmt.query_map([], |r| {
                Ok(PausedWatch {
                    path: r.get(0)?,
                    reason: r.get(1)?,
                    since: rfc3339(r.get(2)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let degraded_watches = self.degraded_watches()?;
        Ok(Status {
            files,
            paused_watches,
            degraded_watches,
            by_vendor,
            oldest_pending_s: oldest.map(|t| ((now - t) / 1000).max(0)),
            paused_vendors,
            queued_jobs: queued_jobs as u64,
            held_deletes: held_deletes as u64,
            expired_keys: expired_keys as u64,
            recent_errors: self.recent_errors(10)?,
            problems: self.problems(10)?,
        })
    }

    /// The watches that hear of their files less well than they should; none from a journal the
    /// running daemon has not migrated to schema 11 yet.
    fn degraded_watches(&self) -> Result<Vec<DegradedWatch>> {
        let exists: bool = self.conn.cached_query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'degraded_watches')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT root, reason, since FROM degraded_watches ORDER BY root")?;
        let rows = stmt.query_map([], |r| {
            Ok(DegradedWatch {
                path: r.get(0)?,
                reason: r.get(1)?,
                since: rfc3339(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn problems(&self, limit: i64) -> Result<Vec<Problem>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path, f.vendor, f.state, f.error, f.updated_at, c.remote_ref
             FROM files f LEFT JOIN remote_copies c ON c.id = f.copy_id AND c.state = 'live'
             WHERE f.state IN ('rejected', 'failed')
             ORDER BY f.updated_at DESC, f.id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(Problem {
                path: r.get(0)?,
                vendor: r.get(1)?,
                state: r.get(2)?,
                error: r.get(3)?,
                updated_at: rfc3339(r.get(4)?),
                last_good_copy: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn recent_errors(&self, limit: i64) -> Result<Vec<RecentError>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.at, f.path, f.vendor, a.op, a.outcome, a.message
             FROM attempts a JOIN files f ON f.id = a.file_id
             WHERE a.outcome != 'uploaded' AND a.outcome != 'deleted'
               AND a.outcome != 'deduplicated'
             ORDER BY a.at DESC, a.id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(RecentError {
                at: rfc3339(r.get(0)?),
                path: r.get(1)?,
                vendor: r.get(2)?,
                op: r.get(3)?,
                outcome: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
