//! Files gone from disk: deleting their remote copies is the last resort, so every removal passes
//! the guards here — a copy still used by another file is kept, and removals past `max_deletes`
//! within a sliding window (or past half a watch's files) are held for an operator.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::sql::CachedSql;
use rusqlite::{Connection, OptionalExtension, params};

use super::observe::{Existing, FileStamp, existing, stamp_from};
use super::{Journal, Result, copies, jobs, now_ms};

/// What the watch does with the remote copy of a file that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalPolicy {
    Delete,
    Keep,
}

/// Files a watch found gone, decided together so the guards see them all.
#[derive(Debug, Clone)]
pub struct RemovalBatch<'a> {
    pub watch_root: &'a str,
    pub paths: &'a [String],
    pub policy: RemovalPolicy,
    pub max_deletes: usize,
    /// The sliding window over which deletes are counted against `max_deletes`.
    pub window_ms: i64,
    /// Hold every delete, with this reason (the root was replaced, or found empty).
    pub hold: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingOutcome {
    NotTracked,
    Unchanged,
    /// Marked removed; nothing at the vendor to touch (never uploaded, kept, or already gone).
    Removed,
    /// Marked removed, remote copy kept because another file still uses it.
    Shared {
        with: String,
    },
    DeleteQueued,
    /// Held for an operator, with the reason.
    Held(String),
    /// Still in the watch under a name it does not take: the record and its copy are kept.
    Untaken,
}

/// Below this many deletes in the window, the share-of-the-watch guard does not apply: removing
/// three of a folder's five files is ordinary.
const SHARE_GUARD_FLOOR: usize = 10;

impl Journal {
    /// Records that the files at `batch.paths` are gone from disk, and what that means for their
    /// remote copies.
    pub fn mark_missing(
        &mut self,
        batch: &RemovalBatch<'_>,
    ) -> Result<Vec<(String, MissingOutcome)>> {
        let tx = self.write()?;
        let mut rows = Vec::new();
        let mut outcomes = Vec::new();
        // A path given twice is one file: the guards count it once, and it is removed once.
        let mut seen = std::collections::HashSet::new();
        for path in batch.paths.iter().filter(|p| seen.insert(p.as_str())) {
            match still_there(&tx, path)? {
                Ok(row) => rows.push((path.clone(), row)),
                Err(outcome) => outcomes.push((path.clone(), outcome)),
            }
        }
        let hold = match batch.policy {
            RemovalPolicy::Keep => None,
            RemovalPolicy::Delete => hold_reason(&tx, batch, &rows)?,
        };
        for (path, row) in rows {
            jobs::drop_queued(&tx, row.id, &["upload"])?;
            let outcome = match (&hold, batch.policy) {
                (_, RemovalPolicy::Keep) => removed(&tx, row.id)?,
                (Some(reason), RemovalPolicy::Delete) if copies::is_live(&tx, row.copy_id)? => {
                    tx.cached_execute(
                        "UPDATE files SET removal = 'held', error = ?2, updated_at = ?3,
                           untaken_at = NULL
                         WHERE id = ?1",
                        params![row.id, reason, now_ms()],
                    )?;
                    MissingOutcome::Held(reason.clone())
                }
                _ => {
                    let outcome = remove_and_delete(&tx, &row)?;
                    if outcome == MissingOutcome::DeleteQueued {
                        tx.cached_execute(
                            "INSERT INTO removal_log (watch_root, at) VALUES (?1, ?2)",
                            params![batch.watch_root, now_ms()],
                        )?;
                    }
                    outcome
                }
            };
            outcomes.push((path, outcome));
        }
        tx.cached_execute(
            "DELETE FROM removal_log WHERE at < ?1",
            [now_ms() - batch.window_ms],
        )?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// Records files still in their watch under a name or in a folder it does not take (`moved`:
    /// each file's recorded path, and its path now). Such a file is excluded, not gone.
    ///
    /// A record whose copy is live keeps its state and copy, so the copy still counts as used
    /// (a twin's removal cannot delete it); a synced one gains a note saying where the file is
    /// (a rejected or failed one keeps its reason). Its removal is decided again at every look
    /// that finds its path empty: once the file is gone from its new place too (a trash
    /// emptied), the copy goes the way of any removal. A record with no live copy, or one whose
    /// new content was not sent yet, has nothing to keep: it ends `removed`. Unchanged: the note
    /// was already there.
    pub fn mark_untaken(
        &mut self,
        moved: &[(String, String)],
    ) -> Result<Vec<(String, MissingOutcome)>> {
        let tx = self.write()?;
        let mut outcomes = Vec::new();
        for (path, now_at) in moved {
            let outcome = match still_there(&tx, path)? {
                Ok(row) => untaken(&tx, &row, now_at)?,
                Err(outcome) => outcome,
            };
            outcomes.push((path.clone(), outcome));
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// Confirms the deletes held for an operator: a file that is back is kept, one still gone has
    /// its copy deleted unless another file still uses it. Also accepts every watch root as it is
    /// now (a root that was replaced or remounted), recording the identity `root` gives it.
    ///
    /// Only what the operator's look at the disk can vouch for is released: a root `root` cannot
    /// vouch for (missing, unreadable, an empty mount point) proves nothing of its files, so their
    /// deletes stay held and what the journal knows of the root is kept; so does the delete of a
    /// file `file` cannot tell about (unreadable, or its folder on another filesystem than it was
    /// recorded on), and its root is not taken as it now is either.
    pub fn release_held(
        &mut self,
        files: &FileLooks<'_>,
        root: &RootLook<'_>,
    ) -> Result<HeldReleased> {
        // The looks at the disk, which may read big folders for files renamed out of the watch's
        // names, are made before the write lock is taken: the daemon's writes wait meanwhile.
        let held = self.in_one_read(|| held_files(&self.conn))?;
        let mut looks = look_at_held(&held, files);
        let tx = self.write()?;
        let mut roots = RootLooks::new(&tx, root);
        let mut released = HeldReleased::default();
        let mut kept_by_root: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut unvouched = BTreeSet::new();
        for held in held {
            let (path, watch_root) = (held.path, held.watch_root);
            if let Err(why) = roots.look(&watch_root)? {
                kept_by_root.entry(watch_root).or_insert((0, why)).0 += 1;
                continue;
            }
            let Some(row) = existing(&tx, &path)? else {
                continue;
            };
            if row.removal.as_deref() != Some("held") {
                continue;
            }
            // Written meanwhile (seen back, gone again, its content changed): the look is stale,
            // and the delete stays held for the next run.
            let unchanged = row.stamp == held.stamp && updated_at(&tx, row.id)? == held.updated_at;
            let look = match unchanged {
                true => looks.remove(&path),
                false => None,
            };
            let Some(look) = look else {
                released.changed += 1;
                continue;
            };
            match look {
                Presence::Present => {
                    tx.cached_execute(
                        "UPDATE files SET removal = NULL, error = NULL, updated_at = ?2,
                           untaken_at = NULL
                         WHERE id = ?1",
                        params![row.id, now_ms()],
                    )?;
                }
                Presence::Untaken(now_at) => {
                    tx.cached_execute("UPDATE files SET removal = NULL WHERE id = ?1", [row.id])?;
                    // Its error is the hold's reason: each outcome below replaces it.
                    let row = Existing {
                        removal: None,
                        error: None,
                        ..row
                    };
                    let outcome = untaken(&tx, &row, &now_at)?;
                    if outcome == MissingOutcome::Unchanged {
                        let note = format!(
                            "the file is now {}, which the watch does not take; its last good \
                             copy is kept",
                            super::path_text::shown(&now_at)
                        );
                        tx.cached_execute(
                            "UPDATE files SET error = ?2, updated_at = ?3 WHERE id = ?1",
                            params![row.id, note, now_ms()],
                        )?;
                    }
                    released.untaken.push(UntakenHeld {
                        path,
                        now_at,
                        copy_kept: outcome != MissingOutcome::Removed,
                    });
                }
                Presence::Unknown(why) => {
                    // Nor is its root taken as it now is: what it is now cannot be vouched for.
                    unvouched.insert(watch_root);
                    released.kept.push(KeptHeld {
                        what: path,
                        is_root: false,
                        why,
                        files: 1,
                    });
                }
                Presence::Unwatched => {
                    set_removed(&tx, row.id, None)?;
                    released.unwatched += 1;
                }
                Presence::Gone => {
                    // Decided one at a time: the file released before this one no longer uses
                    // the copy.
                    tx.cached_execute("UPDATE files SET removal = NULL WHERE id = ?1", [row.id])?;
                    if remove_and_delete(&tx, &row)? == MissingOutcome::DeleteQueued {
                        released.deletes_queued += 1;
                    }
                }
            }
        }
        let known: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT root FROM watch_roots UNION SELECT root FROM watch_pauses",
            )?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for watch_root in known {
            let _ = roots.look(&watch_root)?;
        }
        for (watch_root, accepted) in roots.looked {
            let Ok(identity) = accepted else {
                continue;
            };
            if unvouched.contains(&watch_root) {
                continue;
            }
            if let Some((dev, inode)) = identity {
                set_root_identity_in(&tx, &watch_root, dev, inode)?;
            }
            tx.cached_execute("DELETE FROM watch_pauses WHERE root = ?1", [&watch_root])?;
        }
        released.kept.splice(
            0..0,
            kept_by_root
                .into_iter()
                .map(|(what, (files, why))| KeptHeld {
                    what,
                    is_root: true,
                    why,
                    files,
                }),
        );
        tx.commit()?;
        Ok(released)
    }

    /// Brings the files of `watch_root` and `vendor` under their watch's `on_remove` as
    /// configured now: a watch changed to `keep` deletes nothing more, however its files were
    /// recorded (a delete already queued is withdrawn when it is claimed). The policy last applied
    /// is remembered, so the files are only read when it changed (a start must not read every
    /// file). Returns how many files changed.
    ///
    /// `keep` covers every record under the watch's path, whatever watch or vendor recorded it:
    /// a watch moved to a subfolder, or given another vendor, keeps the copies its files had
    /// under the old config too. `delete` covers only what this watch and vendor recorded:
    /// deleting is the last resort, and a copy at a vendor the watch no longer names is not
    /// deleted because of it.
    pub fn apply_remove_policy(
        &mut self,
        watch_root: &str,
        vendor: &str,
        delete_unused: bool,
    ) -> Result<usize> {
        // Read before any write transaction: at a start the policy is almost always the same.
        let applied: Option<bool> = self
            .conn
            .cached_query_row(
                "SELECT delete_unused FROM watch_policies WHERE root = ?1 AND vendor = ?2",
                params![watch_root, vendor],
                |r| r.get(0),
            )
            .optional()?;
        let root = watch_root.trim_end_matches('/');
        if applied == Some(delete_unused) && (delete_unused || !self.deletes_overlap(root)?) {
            return Ok(0);
        }
        let tx = self.write()?;
        let changed = match delete_unused {
            true => tx.cached_execute(
                "UPDATE files SET delete_unused = 1
                 WHERE watch_root = ?1 AND +vendor = ?2 AND delete_unused = 0",
                params![watch_root, vendor],
            )?,
            false => {
                let (from, to) = super::observe::path_range(root);
                let changed = tx.cached_execute(
                    "UPDATE files SET delete_unused = 0
                     WHERE path >= ?1 AND path < ?2 AND delete_unused = 1",
                    params![from, to],
                )?;
                // The policies that put those records under `delete` are of watches no longer
                // configured (watches do not overlap): forgotten, so the next start's look finds
                // nothing to do.
                tx.cached_execute(
                    &format!("DELETE FROM watch_policies WHERE delete_unused = 1 AND {OVERLAPS}"),
                    params![root],
                )?;
                changed
            }
        };
        tx.cached_execute(
            "INSERT INTO watch_policies (root, vendor, delete_unused) VALUES (?1, ?2, ?3)
             ON CONFLICT (root, vendor) DO UPDATE SET delete_unused = ?3",
            params![watch_root, vendor, delete_unused],
        )?;
        tx.commit()?;
        Ok(changed)
    }

    /// Whether a `delete` policy was applied to a root that is `root`, holds it or lies in it
    /// (an earlier config's watch, or the same folder under another vendor): records under
    /// `root` may then still have their copies deleted.
    fn deletes_overlap(&self, root: &str) -> Result<bool> {
        Ok(self.conn.cached_query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM watch_policies WHERE delete_unused = 1 AND {OVERLAPS})"
            ),
            params![root],
            |r| r.get(0),
        )?)
    }

    /// The identity (device, inode) a watch root had when last known good.
    pub fn root_identity(&self, root: &str) -> Result<Option<(u64, u64)>> {
        root_identity_in(&self.conn, root)
    }

    /// The watch root the journal knows was deleted: no folder has inode 0, so whatever folder
    /// is at its path from now on is taken for another one (its removals held) until an operator
    /// accepts it (`retry --held`), even one the filesystem gave the freed inode number again.
    /// `dev` is the device it was on, for a root the journal holds no identity of yet.
    pub fn forget_root_inode(&mut self, root: &str, dev: u64) -> Result<()> {
        self.conn.cached_execute(
            "INSERT INTO watch_roots (root, dev, inode, updated_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (root) DO UPDATE SET inode = 0, updated_at = ?3",
            params![root, dev as i64, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_root_identity(&mut self, root: &str, dev: u64, inode: u64) -> Result<()> {
        set_root_identity_in(&self.conn, root, dev, inode)
    }
}

/// A policy's root (`root`, as applied) that is `?1`, holds it or lies in it: compared as text,
/// since a folder's text is a prefix of its files' texts (`path_text`).
const OVERLAPS: &str = "(rtrim(root, '/') = ?1
      OR substr(?1, 1, length(rtrim(root, '/')) + 1) = rtrim(root, '/') || '/'
      OR substr(rtrim(root, '/'), 1, length(?1) + 1) = ?1 || '/')";

/// What a look at a path the journal knows says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    Gone,
    /// Neither: unreadable, or its folder is on another filesystem than when it was recorded.
    Unknown(String),
    /// Gone from its path but still in the watch, at this path, under a name or in a folder the
    /// watch does not take: excluded, not gone.
    Untaken(String),
    /// Gone, and no watch in the config covers its path any more (its watch was removed): its
    /// record is closed and its copy kept, whatever the old watch's `on_remove` said. A folder
    /// the daemon no longer watches deletes nothing.
    Unwatched,
}

/// An operator's look at the held files of one watch root (`retry --held`): given the root and
/// each file's path and stamp as recorded (the device it was on, and what finds it under another
/// name), what is there, in the same order.
pub type FileLooks<'a> = dyn Fn(&str, &[(String, Option<FileStamp>)]) -> Vec<Presence> + 'a;

/// A file whose delete is held for an operator.
struct HeldFile {
    path: String,
    watch_root: String,
    stamp: Option<FileStamp>,
    /// When its record was last written: a record written since it was looked at is not acted on.
    updated_at: i64,
}

fn held_files(conn: &Connection) -> Result<Vec<HeldFile>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, watch_root, updated_at, size, mtime_ns, ctime_ns, inode, dev
         FROM files WHERE removal = 'held' ORDER BY id",
    )?;
    let held = stmt.query_map([], |r| {
        Ok(HeldFile {
            path: r.get(0)?,
            watch_root: r.get(1)?,
            updated_at: r.get(2)?,
            stamp: stamp_from(r, 3)?,
        })
    })?;
    Ok(held.collect::<rusqlite::Result<_>>()?)
}

fn untaken_at(tx: &Connection, id: i64) -> Result<Option<String>> {
    Ok(
        tx.query_row_and_then("SELECT untaken_at FROM files WHERE id = ?1", [id], |r| {
            r.get(0)
        })?,
    )
}

fn updated_at(tx: &Connection, id: i64) -> Result<i64> {
    Ok(
        tx.query_row_and_then("SELECT updated_at FROM files WHERE id = ?1", [id], |r| {
            r.get(0)
        })?,
    )
}

/// `looks`' answer for each held file, by path: one call for each watch root's files.
fn look_at_held(held: &[HeldFile], looks: &FileLooks<'_>) -> HashMap<String, Presence> {
    let mut by_root: BTreeMap<&str, Vec<(String, Option<FileStamp>)>> = BTreeMap::new();
    for file in held {
        by_root
            .entry(&file.watch_root)
            .or_default()
            .push((file.path.clone(), file.stamp));
    }
    let mut answers = HashMap::with_capacity(held.len());
    for (root, files) in by_root {
        let presences = looks(root, &files);
        answers.extend(files.into_iter().map(|(path, _)| path).zip(presences));
    }
    answers
}

/// An operator's look at a watch root (`retry --held`), told what the journal knows of it: the
/// identity to accept it with (none: accepted with nothing recorded, a root no longer a watch),
/// or why its files' absence proves nothing.
pub type RootLook<'a> =
    dyn Fn(&str, Option<(u64, u64)>) -> std::result::Result<Option<(u64, u64)>, String> + 'a;

/// What `retry --held` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeldReleased {
    /// Deletes queued for files still gone.
    pub deletes_queued: usize,
    /// Files found renamed out of the watch's names: their deletes are withdrawn.
    pub untaken: Vec<UntakenHeld>,
    /// Held deletes whose records the daemon wrote while they were looked at: still held, for
    /// the next run.
    pub changed: usize,
    /// Held files gone that no watch covers now: their records closed, their copies kept.
    pub unwatched: usize,
    /// Held deletes kept: by the watch root that could not vouch for its files, first; then
    /// each file that could not be looked at.
    pub kept: Vec<KeptHeld>,
}

/// A held file found renamed out of its watch's names by `retry --held`.
#[derive(Debug, PartialEq, Eq)]
pub struct UntakenHeld {
    /// The path it was recorded at.
    pub path: String,
    /// Where it is now.
    pub now_at: String,
    /// Whether its record keeps its copy (synced, or a problem with a last good copy); if not,
    /// it had no live copy of its content and its record ended `removed`.
    pub copy_kept: bool,
}

/// Held deletes kept, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct KeptHeld {
    /// The watch root, or the file.
    pub what: String,
    pub is_root: bool,
    pub why: String,
    pub files: usize,
}

fn root_identity_in(conn: &Connection, root: &str) -> Result<Option<(u64, u64)>> {
    Ok(conn
        .cached_query_row(
            "SELECT dev, inode FROM watch_roots WHERE root = ?1",
            [root],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?)
}

fn set_root_identity_in(conn: &Connection, root: &str, dev: u64, inode: u64) -> Result<()> {
    conn.cached_execute(
        "INSERT INTO watch_roots (root, dev, inode, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (root) DO UPDATE SET dev = ?2, inode = ?3, updated_at = ?4",
        params![root, dev as i64, inode as i64, now_ms()],
    )?;
    Ok(())
}

/// Each watch root looked at once: the identity to accept it with, or why it cannot be.
struct RootLooks<'a> {
    tx: &'a Connection,
    look: &'a RootLook<'a>,
    looked: BTreeMap<String, std::result::Result<Option<(u64, u64)>, String>>,
}

impl<'a> RootLooks<'a> {
    fn new(tx: &'a Connection, look: &'a RootLook<'a>) -> Self {
        RootLooks {
            tx,
            look,
            looked: BTreeMap::new(),
        }
    }

    fn look(&mut self, root: &str) -> Result<std::result::Result<Option<(u64, u64)>, String>> {
        if let Some(looked) = self.looked.get(root) {
            return Ok(looked.clone());
        }
        let known = root_identity_in(self.tx, root)?;
        let looked = (self.look)(root, known);
        self.looked.insert(root.to_string(), looked.clone());
        Ok(looked)
    }
}

/// Why this batch's deletes must wait for an operator, if they must.
fn hold_reason(
    tx: &Connection,
    batch: &RemovalBatch<'_>,
    rows: &[(String, Existing)],
) -> Result<Option<String>> {
    if let Some(reason) = batch.hold {
        return Ok(Some(format!(
            "removal held: {reason}; run `imgsyncd retry --held` once the folder is as it should be"
        )));
    }
    let mut deletes = 0;
    for (_, row) in rows {
        if copies::is_live(tx, row.copy_id)? {
            deletes += 1;
        }
    }
    if deletes == 0 {
        return Ok(None);
    }
    let since = now_ms() - batch.window_ms;
    let recent: i64 = tx.cached_query_row(
        "SELECT COUNT(*) FROM removal_log WHERE watch_root = ?1 AND at >= ?2",
        params![batch.watch_root, since],
        |r| r.get(0),
    )?;
    let in_window = recent as usize + deletes;
    let window = humantime::format_duration(std::time::Duration::from_secs(
        (batch.window_ms / 1000).max(0) as u64,
    ));
    if in_window > batch.max_deletes {
        return Ok(Some(format!(
            "removal held: {in_window} files vanished within {window} (more than max_deletes = {}); \
             run `imgsyncd retry --held` to delete them at the vendor",
            batch.max_deletes
        )));
    }
    let watched = super::observe::present_under(tx, batch.watch_root)?;
    let before = watched + recent as usize;
    if in_window > SHARE_GUARD_FLOOR && in_window * 2 > before {
        return Ok(Some(format!(
            "removal held: {in_window} of the watch's {before} files vanished within {window} \
             (more than half); run `imgsyncd retry --held` to delete them at the vendor"
        )));
    }
    Ok(None)
}

/// The file's removal is finished; `note` says why its copy was kept, if it was.
pub(super) fn set_removed(tx: &Connection, file_id: i64, note: Option<&str>) -> Result<()> {
    tx.cached_execute(
        "UPDATE files SET state = 'removed', removal = NULL, error = ?2, updated_at = ?3,
           untaken_at = NULL
         WHERE id = ?1",
        params![file_id, note, now_ms()],
    )?;
    Ok(())
}

/// The record of a path seen gone, when the journal still holds the file as there; else what
/// that means: not tracked, or already removed (or its removal under way).
fn still_there(
    tx: &Connection,
    path: &str,
) -> Result<std::result::Result<Existing, MissingOutcome>> {
    Ok(match existing(tx, path)? {
        None => Err(MissingOutcome::NotTracked),
        Some(row) if row.state == "removed" || row.removal.is_some() => {
            Err(MissingOutcome::Unchanged)
        }
        Some(row) => Ok(row),
    })
}

/// [`Journal::mark_untaken`] for one record.
fn untaken(tx: &Connection, row: &Existing, place: &str) -> Result<MissingOutcome> {
    let now_at = super::path_text::shown(place);
    let live = copies::is_live(tx, row.copy_id)?;
    match row.state.as_str() {
        "synced" if live => {
            let note = format!(
                "remote copy kept: the file is now {now_at}, which the watch does not take"
            );
            let noted = row.error.as_deref() == Some(note.as_str());
            if noted && untaken_at(tx, row.id)?.as_deref() == Some(place) {
                return Ok(MissingOutcome::Unchanged);
            }
            tx.cached_execute(
                "UPDATE files SET error = ?2, untaken_at = ?3, updated_at = ?4 WHERE id = ?1",
                params![row.id, note, place, now_ms()],
            )?;
            Ok(match noted {
                // Noted before the journal kept its place (schema 10): nothing new to say.
                true => MissingOutcome::Unchanged,
                false => MissingOutcome::Untaken,
            })
        }
        // A problem whose last good copy is live stays as it is, with its reason: only where
        // it is now is kept, and nothing is said again at each look.
        "rejected" | "failed" if live => {
            if untaken_at(tx, row.id)?.as_deref() != Some(place) {
                tx.cached_execute(
                    "UPDATE files SET untaken_at = ?2 WHERE id = ?1",
                    params![row.id, place],
                )?;
            }
            Ok(MissingOutcome::Unchanged)
        }
        _ => {
            jobs::drop_queued(tx, row.id, &["upload"])?;
            let note = format!("the file is now {now_at}, which the watch does not take");
            set_removed(tx, row.id, Some(&note))?;
            Ok(MissingOutcome::Removed)
        }
    }
}

/// Marked removed, nothing at the vendor to touch.
fn removed(tx: &Connection, file_id: i64) -> Result<MissingOutcome> {
    set_removed(tx, file_id, None)?;
    Ok(MissingOutcome::Removed)
}

/// The file is gone for good: its copy is deleted at the vendor unless something still uses it.
fn remove_and_delete(tx: &Connection, row: &Existing) -> Result<MissingOutcome> {
    let copy_id = match row.copy_id {
        Some(id) if copies::is_live(tx, Some(id))? => id,
        _ => return removed(tx, row.id),
    };
    let delete_unused: bool = tx.cached_query_row(
        "SELECT delete_unused FROM files WHERE id = ?1",
        [row.id],
        |r| r.get(0),
    )?;
    if !delete_unused {
        return removed(tx, row.id);
    }
    if let Some(other) = copies::user(tx, copy_id, Some(row.id))? {
        set_removed(
            tx,
            row.id,
            Some(&format!(
                "remote copy kept: {} still uses it",
                super::path_text::shown(&other)
            )),
        )?;
        return Ok(MissingOutcome::Shared { with: other });
    }
    if copies::delete_pending(tx, copy_id)? {
        // Another file's removal already queued it.
        return removed(tx, row.id);
    }
    tx.cached_execute(
        "UPDATE files SET state = 'pending', removal = 'delete', error = NULL, updated_at = ?2,
           untaken_at = NULL
         WHERE id = ?1",
        params![row.id, now_ms()],
    )?;
    jobs::queue(tx, row.id, "delete", &row.vendor, None, Some(copy_id))?;
    Ok(MissingOutcome::DeleteQueued)
}
