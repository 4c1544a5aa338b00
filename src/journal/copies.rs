//! Remote copies: one row per copy a vendor holds. Whether a copy may be deleted, whether a file
//! may be synced to it and whether the same bytes can reuse it are all answered here, from the
//! table, never from a file's own columns.

use super::sql::CachedSql;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, now_ms};

/// Dedupe never hands out a copy that expires sooner than this.
const REUSE_MARGIN_MS: i64 = 60_000;

/// What a vendor returned for one upload, in the journal's vendor-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCopy<'a> {
    pub vendor: &'a str,
    pub kind: &'a str,
    pub remote_ref: &'a str,
    pub sha256: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub expires_at: Option<i64>,
    pub record_id: Option<&'a str>,
}

/// Records a copy the vendor now holds and returns its id. A reference the vendor hands out again
/// is live again, whatever the journal thought of it.
pub(super) fn record(tx: &Connection, copy: &NewCopy<'_>) -> Result<i64> {
    let now = now_ms();
    // No RETURNING: SQLite gathers its rows in a temporary table it opens and closes each time,
    // which cost more than finding the row again by its unique key.
    tx.cached_execute(
        "INSERT INTO remote_copies (vendor, kind, remote_ref, sha256, transaction_id, expires_at,
           record_id, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, 'live', ?7)
         ON CONFLICT (vendor, remote_ref) DO UPDATE SET state = 'live', deleted_at = NULL,
           sha256 = excluded.sha256, transaction_id = excluded.transaction_id,
           expires_at = excluded.expires_at, record_id = excluded.record_id",
        params![
            copy.vendor,
            copy.kind,
            copy.remote_ref,
            copy.sha256,
            copy.transaction_id,
            copy.expires_at,
            now,
            copy.record_id
        ],
    )?;
    let id = tx.cached_query_row(
        "SELECT id FROM remote_copies WHERE vendor = ?1 AND remote_ref = ?2",
        params![copy.vendor, copy.remote_ref],
        |r| r.get(0),
    )?;
    // A delete queued for it before it came back would destroy what was just returned.
    tx.cached_execute(
        "DELETE FROM jobs WHERE copy_id = ?1 AND state = 'queued'",
        [id],
    )?;
    Ok(id)
}

/// The state of a copy: live, deleting or deleted.
pub(super) fn state(tx: &Connection, copy_id: i64) -> Result<String> {
    Ok(tx.cached_query_row(
        "SELECT state FROM remote_copies WHERE id = ?1",
        [copy_id],
        |r| r.get(0),
    )?)
}

/// Whether the copy is live and held by `vendor`.
pub(super) fn is_live_at(tx: &Connection, copy_id: i64, vendor: &str) -> Result<bool> {
    Ok(tx.cached_query_row(
        "SELECT state = 'live' AND vendor = ?2 FROM remote_copies WHERE id = ?1",
        params![copy_id, vendor],
        |r| r.get(0),
    )?)
}

pub(super) fn is_live(tx: &Connection, copy_id: Option<i64>) -> Result<bool> {
    match copy_id {
        None => Ok(false),
        Some(id) => Ok(state(tx, id)? == "live"),
    }
}

/// Whether a file may be synced to the copy now: live, and not expiring soon (a Jiandaoyun key
/// unused for its hour is dead, though never deleted).
pub(super) fn is_usable(tx: &Connection, copy_id: i64) -> Result<bool> {
    Ok(tx.cached_query_row(
        "SELECT state = 'live' AND (expires_at IS NULL OR expires_at > ?2)
         FROM remote_copies WHERE id = ?1",
        params![copy_id, now_ms() + REUSE_MARGIN_MS],
        |r| r.get(0),
    )?)
}

/// A file other than `except` that still needs the copy: one that points at it and is on disk or
/// whose removal is held, or one waiting to upload the same bytes (it would reuse the copy).
///
/// The `+` keeps SQLite off the index by state for the pending files: without statistics it
/// took that index and read every pending file (3.7 ms a call with 20 000 queued, for each
/// removal and each delete decided during a backlog) instead of the few with these bytes.
pub(super) fn user(tx: &Connection, copy_id: i64, except: Option<i64>) -> Result<Option<String>> {
    Ok(tx
        .cached_query_row(
            "SELECT f.path FROM files f, remote_copies c
             WHERE c.id = ?1 AND f.id IS NOT ?2
               AND (f.removal IS NULL OR f.removal = 'held') AND f.state != 'removed'
               AND (f.copy_id = c.id
                    OR (+f.state = 'pending' AND f.vendor = c.vendor AND f.sha256 = c.sha256))
             ORDER BY f.id LIMIT 1",
            params![copy_id, except],
            |r| r.get(0),
        )
        .optional()?)
}

/// A live copy of these bytes at this vendor that will not expire soon.
pub(super) fn reusable(tx: &Connection, vendor: &str, sha256: &str) -> Result<Option<i64>> {
    Ok(tx
        .cached_query_row(
            "SELECT id FROM remote_copies
             WHERE vendor = ?1 AND sha256 = ?2 AND state = 'live'
               AND (expires_at IS NULL OR expires_at > ?3)
             ORDER BY id DESC LIMIT 1",
            params![vendor, sha256, now_ms() + REUSE_MARGIN_MS],
            |r| r.get(0),
        )
        .optional()?)
}

/// A delete is about to be sent: from now on the copy's fate is unknown until the vendor
/// answers, so no file may be synced to it.
pub(super) fn mark_deleting(tx: &Connection, copy_id: i64) -> Result<()> {
    tx.cached_execute(
        "UPDATE remote_copies SET state = 'deleting' WHERE id = ?1 AND state = 'live'",
        [copy_id],
    )?;
    Ok(())
}

/// Takes back [`mark_deleting`] for a delete that was never sent.
pub(super) fn unmark_deleting(tx: &Connection, copy_id: i64) -> Result<()> {
    tx.cached_execute(
        "UPDATE remote_copies SET state = 'live' WHERE id = ?1 AND state = 'deleting'",
        [copy_id],
    )?;
    Ok(())
}

pub(super) fn mark_deleted(tx: &Connection, copy_id: i64) -> Result<()> {
    tx.cached_execute(
        "UPDATE remote_copies SET state = 'deleted', deleted_at = ?2 WHERE id = ?1",
        params![copy_id, now_ms()],
    )?;
    Ok(())
}

/// Whether a delete of the copy is queued or running.
pub(super) fn delete_pending(tx: &Connection, copy_id: i64) -> Result<bool> {
    Ok(tx.cached_query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE copy_id = ?1)",
        [copy_id],
        |r| r.get(0),
    )?)
}

/// Withdraws the deletes of a copy none of which was sent: the copy is certainly still there.
/// Returns false when one may have been (the copy is `deleting`, or gone). A live copy was never
/// sent a delete ([`super::Journal::begin_delete`] marks it first): one claimed and waiting in a
/// slot's line finds the copy used again when it is about to be sent, and is withdrawn then.
pub(super) fn withdraw_delete(tx: &Connection, copy_id: i64) -> Result<bool> {
    if state(tx, copy_id)? != "live" {
        return Ok(false);
    }
    tx.cached_execute(
        "DELETE FROM jobs WHERE copy_id = ?1 AND state = 'queued'",
        [copy_id],
    )?;
    Ok(true)
}
