//! Pauses: vendors that refuse us, and watches whose folder cannot be trusted, as `status` shows them.

use super::sql::CachedSql;
use rusqlite::params;

use super::{Journal, Result, now_ms};

#[derive(Debug, Clone)]
pub struct VendorPause {
    pub vendor: String,
    pub reason: String,
    pub since: i64,
    pub next_probe_at: i64,
    pub probe_interval_ms: i64,
}

impl Journal {
    pub fn pause_vendor(&mut self, vendor: &str, reason: &str, probe_in_ms: i64) -> Result<()> {
        let now = now_ms();
        self.conn.cached_execute(
            "INSERT INTO vendor_pauses (vendor, reason, since, next_probe_at, probe_interval_ms)
             VALUES (?1, ?2, ?3, ?3 + ?4, ?4)
             ON CONFLICT (vendor) DO UPDATE SET reason = ?2, next_probe_at = ?3 + ?4,
               probe_interval_ms = ?4",
            params![vendor, reason, now, probe_in_ms],
        )?;
        Ok(())
    }

    /// Ends a vendor's pause; returns whether it was paused.
    pub fn resume_vendor(&mut self, vendor: &str) -> Result<bool> {
        Ok(self
            .conn
            .cached_execute("DELETE FROM vendor_pauses WHERE vendor = ?1", [vendor])?
            > 0)
    }

    pub fn pauses(&self) -> Result<Vec<VendorPause>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT vendor, reason, since, next_probe_at, probe_interval_ms FROM vendor_pauses
             ORDER BY vendor",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VendorPause {
                vendor: r.get(0)?,
                reason: r.get(1)?,
                since: r.get(2)?,
                next_probe_at: r.get(3)?,
                probe_interval_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that the watch on `root` is paused, and why (its folder vanished or was unmounted).
    pub fn pause_watch(&mut self, root: &str, reason: &str) -> Result<()> {
        self.conn.cached_execute(
            "INSERT INTO watch_pauses (root, reason, since) VALUES (?1, ?2, ?3)
             ON CONFLICT (root) DO UPDATE SET reason = ?2",
            params![root, reason, now_ms()],
        )?;
        Ok(())
    }

    pub fn resume_watch(&mut self, root: &str) -> Result<()> {
        self.conn
            .cached_execute("DELETE FROM watch_pauses WHERE root = ?1", [root])?;
        Ok(())
    }

    /// At a start every watch checks its folder afresh, and sets up its watcher afresh.
    pub fn clear_watch_pauses(&mut self) -> Result<()> {
        self.conn.cached_execute("DELETE FROM watch_pauses", [])?;
        self.conn
            .cached_execute("DELETE FROM degraded_watches", [])?;
        Ok(())
    }

    /// Records how the watch on `root` hears of its files when it is less than it should
    /// (`Some(reason)`: polled instead of inotify, or only rescanned), or that it is well again.
    pub fn note_watch_degraded(&mut self, root: &str, reason: Option<&str>) -> Result<()> {
        match reason {
            Some(reason) => self.conn.cached_execute(
                "INSERT INTO degraded_watches (root, reason, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (root) DO UPDATE SET reason = ?2",
                params![root, reason, now_ms()],
            )?,
            None => self
                .conn
                .cached_execute("DELETE FROM degraded_watches WHERE root = ?1", [root])?,
        };
        Ok(())
    }

    /// Makes every paused vendor due for a probe now (after a reload), with its jobs: a failed
    /// probe waits behind the next one, which must not hold up this one.
    pub fn probe_paused_now(&mut self) -> Result<()> {
        let tx = self.write()?;
        probe_all_now(&tx, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// What a start and each reload do to the pauses, under the vendors the config names now
    /// (`configured`), in one write: every paused vendor is due for a probe at once, with its
    /// jobs, and a vendor the config no longer names is paused no more. Nothing claims such a
    /// vendor's jobs, so no probe could ever end its pause: kept, it would be reported paused for
    /// ever. Its jobs stay queued as they are (and due); named again, it is sent to at once, and
    /// paused again by its first call if it still refuses us. Returns the vendors whose pause
    /// was dropped.
    pub fn reset_vendor_pauses(&mut self, configured: &[String]) -> Result<Vec<String>> {
        let tx = self.write()?;
        probe_all_now(&tx, now_ms())?;
        let paused: Vec<String> = {
            let mut stmt = tx.prepare_cached("SELECT vendor FROM vendor_pauses ORDER BY vendor")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let dropped: Vec<String> = paused
            .into_iter()
            .filter(|vendor| !configured.contains(vendor))
            .collect();
        for vendor in &dropped {
            tx.cached_execute("DELETE FROM vendor_pauses WHERE vendor = ?1", [vendor])?;
        }
        tx.commit()?;
        Ok(dropped)
    }
}

/// Every paused vendor, and its queued jobs, due now.
fn probe_all_now(conn: &rusqlite::Connection, now: i64) -> Result<()> {
    conn.cached_execute("UPDATE vendor_pauses SET next_probe_at = ?1", [now])?;
    conn.cached_execute(
        "UPDATE jobs SET not_before = ?1
         WHERE state = 'queued' AND not_before > ?1
           AND vendor IN (SELECT vendor FROM vendor_pauses)",
        [now],
    )?;
    Ok(())
}
