//! The watcher's side of the journal: what was seen on disk, and what it means for the record.

use super::sql::CachedSql;
use rusqlite::{Connection, OptionalExtension, params};

use super::{FileState, Journal, Result, copies, jobs, now_ms};

/// What identifies a file's content on disk without reading it: any change of these means the
/// bytes may have changed (`cp -p` keeps size and mtime, but not ctime or inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    /// The filesystem it lives on: a file missing from a folder on another device was unmounted,
    /// not removed.
    pub dev: u64,
}

/// A complete, classified image seen at `path`.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub path: &'a str,
    pub watch_root: &'a str,
    pub vendor: &'a str,
    pub kind: &'a str,
    pub stamp: FileStamp,
    pub sha256: &'a str,
    pub format: &'a str,
    pub width: u32,
    pub height: u32,
    /// Whether copies this file no longer needs are deleted at the vendor.
    pub delete_unused: bool,
    /// Whether a live copy of the same bytes may serve this file instead of an upload of its own.
    pub reuse_copies: bool,
}

/// A file the daemon will not send, and why.
#[derive(Debug, Clone)]
pub struct RejectedFile<'a> {
    pub path: &'a str,
    pub watch_root: &'a str,
    pub vendor: &'a str,
    pub kind: &'a str,
    pub stamp: Option<FileStamp>,
    pub reason: &'a str,
    pub delete_unused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The record already says this.
    Unchanged,
    /// A new file (or one back after its removal, whose copy is gone), queued for upload.
    Queued,
    /// New content at a known path: queued for upload; the old copy is kept until it is synced.
    Changed,
    /// The same bytes were recorded at a path that is gone: the record moved, nothing is sent.
    Moved { from: String },
    /// The file came back before its removal was carried out, or after it with its copy still
    /// live: synced again, nothing sent.
    Restored,
    /// The file came back while its copy was being deleted, or after it expired: uploaded afresh.
    RestoredAfterDelete,
}

/// A file the journal knows under a watch root, for reconciling against the disk.
#[derive(Debug, Clone)]
pub struct KnownFile {
    pub path: String,
    pub stamp: Option<FileStamp>,
    pub state: FileState,
    /// Gone from disk, its removal not finished (held, or its copy being deleted).
    pub removal_pending: bool,
    /// Pending with no job: something dropped its work; it must be examined again.
    pub needs_work: bool,
    /// Renamed out of the watch's names, its copy kept: not where a walk finds it.
    pub untaken: bool,
}

impl KnownFile {
    /// Whether the file on disk with `stamp` is what the journal holds, with nothing left to do.
    pub fn unchanged(&self, stamp: &FileStamp) -> bool {
        !self.removal_pending && !self.needs_work && self.stamp.as_ref() == Some(stamp)
    }
}

/// A file renamed out of the watch's names whose record keeps its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntakenFile {
    /// The path it is recorded at.
    pub path: String,
    /// Where it was last found.
    pub place: String,
    /// Its stamp as recorded, which the file at `place` must still have.
    pub stamp: Option<FileStamp>,
}

pub(super) struct Existing {
    pub id: i64,
    pub state: String,
    pub sha256: Option<String>,
    pub removal: Option<String>,
    pub vendor: String,
    pub copy_id: Option<i64>,
    pub stamp: Option<FileStamp>,
    pub error: Option<String>,
}

const EXISTING: &str = "SELECT id, state, sha256, removal, vendor, copy_id, size, mtime_ns,
      ctime_ns, inode, dev, error FROM files";

fn read_existing(r: &rusqlite::Row<'_>) -> rusqlite::Result<Existing> {
    Ok(Existing {
        id: r.get(0)?,
        state: r.get(1)?,
        sha256: r.get(2)?,
        removal: r.get(3)?,
        vendor: r.get(4)?,
        copy_id: r.get(5)?,
        stamp: stamp_from(r, 6)?,
        error: r.get(11)?,
    })
}

/// A stamp stored from column `first` on (size, mtime, ctime, inode, dev); `None` when incomplete.
pub(super) fn stamp_from(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Option<FileStamp>> {
    let size: Option<i64> = r.get(first)?;
    let mtime_ns: Option<i64> = r.get(first + 1)?;
    let ctime_ns: Option<i64> = r.get(first + 2)?;
    let inode: Option<i64> = r.get(first + 3)?;
    let dev: Option<i64> = r.get(first + 4)?;
    Ok(match (size, mtime_ns, ctime_ns, inode, dev) {
        (Some(size), Some(mtime_ns), Some(ctime_ns), Some(inode), Some(dev)) => Some(FileStamp {
            size: size as u64,
            mtime_ns,
            ctime_ns,
            inode: inode as u64,
            dev: dev as u64,
        }),
        _ => None,
    })
}

pub(super) fn existing(tx: &Connection, path: &str) -> Result<Option<Existing>> {
    Ok(tx
        .cached_query_row(
            &format!("{EXISTING} WHERE path = ?1"),
            [path],
            read_existing,
        )
        .optional()?)
}

fn set_stamp(tx: &Connection, id: i64, stamp: Option<&FileStamp>) -> Result<()> {
    tx.cached_execute(
        "UPDATE files SET size = ?2, mtime_ns = ?3, ctime_ns = ?4, inode = ?5, dev = ?6
         WHERE id = ?1",
        params![
            id,
            stamp.map(|s| s.size as i64),
            stamp.map(|s| s.mtime_ns),
            stamp.map(|s| s.ctime_ns),
            stamp.map(|s| s.inode as i64),
            stamp.map(|s| s.dev as i64),
        ],
    )?;
    Ok(())
}

impl Journal {
    /// Puts the files of the watch at `watch_root` still to be sent (pending, or failed or
    /// rejected, for a retry) under the vendor's copy sharing as configured now: a reload that
    /// turned Jiandaoyun's `create_record` on must not have a file queued before it synced to a
    /// key no record holds, which dies within the hour. Returns how many changed.
    pub fn apply_reuse_policy(
        &mut self,
        watch_root: &str,
        vendor: &str,
        reuse_copies: bool,
    ) -> Result<usize> {
        const UNSENT: &str = "watch_root = ?1 AND state IN ('pending', 'failed', 'rejected')
             AND vendor = ?2 AND reuse_copies != ?3";
        // Read before any write transaction: at a start the policy is almost always the same.
        let stale: bool = self.conn.cached_query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM files WHERE {UNSENT})"),
            params![watch_root, vendor, reuse_copies],
            |r| r.get(0),
        )?;
        if !stale {
            return Ok(0);
        }
        let tx = self.write()?;
        let changed = tx.cached_execute(
            &format!("UPDATE files SET reuse_copies = ?3 WHERE {UNSENT}"),
            params![watch_root, vendor, reuse_copies],
        )?;
        tx.commit()?;
        Ok(changed)
    }

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
                Some(twin) => {
                    move_record(&tx, &twin, obs)?;
                    Observed::Moved { from: twin.path }
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

    /// Records a file the daemon will not send. Its last good copy, if any, stays its copy: a file
    /// that is now damaged or unreadable is no reason to delete what the vendor holds. Returns
    /// false when the record already said so.
    /// `is_present` says whether a path is on disk: a rejected record of the same file (device
    /// and inode) whose path is gone was renamed, and moves here with its last good copy.
    pub fn reject(
        &mut self,
        file: &RejectedFile<'_>,
        is_present: &dyn Fn(&str) -> bool,
    ) -> Result<bool> {
        let tx = self.write()?;
        let now = now_ms();
        let changed = match existing(&tx, file.path)? {
            Some(row)
                if row.state == "rejected"
                    && row.removal.is_none()
                    && row.error.as_deref() == Some(file.reason)
                    && row.stamp == file.stamp =>
            {
                false
            }
            Some(row) => {
                let copy_id = back_on_disk(&tx, &row, file.vendor)?;
                jobs::drop_queued(&tx, row.id, &["upload"])?;
                tx.cached_execute(
                    "UPDATE files SET state = 'rejected', error = ?2, sha256 = NULL, format = NULL,
                       width = NULL, height = NULL, removal = NULL, copy_id = ?3, vendor = ?4,
                       kind = ?5, watch_root = ?6, delete_unused = ?7, updated_at = ?8,
                       untaken_at = NULL
                     WHERE id = ?1",
                    params![
                        row.id,
                        file.reason,
                        copy_id,
                        file.vendor,
                        file.kind,
                        file.watch_root,
                        file.delete_unused,
                        now
                    ],
                )?;
                set_stamp(&tx, row.id, file.stamp.as_ref())?;
                true
            }
            None if let Some(moved) = moved_rejected(&tx, file, is_present)? => {
                tx.cached_execute(
                    "UPDATE files SET path = ?2, watch_root = ?3, state = 'rejected', error = ?4,
                       removal = NULL, delete_unused = ?5, updated_at = ?6, untaken_at = NULL
                     WHERE id = ?1",
                    params![
                        moved,
                        file.path,
                        file.watch_root,
                        file.reason,
                        file.delete_unused,
                        now
                    ],
                )?;
                set_stamp(&tx, moved, file.stamp.as_ref())?;
                true
            }
            None => {
                tx.cached_execute(
                    "INSERT INTO files (path, watch_root, vendor, kind, state, error,
                       delete_unused, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'rejected', ?5, ?6, ?7, ?7)",
                    params![
                        file.path,
                        file.watch_root,
                        file.vendor,
                        file.kind,
                        file.reason,
                        file.delete_unused,
                        now
                    ],
                )?;
                set_stamp(&tx, tx.last_insert_rowid(), file.stamp.as_ref())?;
                true
            }
        };
        tx.commit()?;
        Ok(changed)
    }

    /// The file the journal holds at `path`, unless it considers it removed.
    pub fn known_file(&self, path: &str) -> Result<Option<KnownFile>> {
        Ok(self.known_where("path = ?1", [path])?.into_iter().next())
    }

    /// What the journal holds at each of `paths` (a batch of a walk), in the same order.
    ///
    /// All in one read transaction: a lookup on its own takes and drops the WAL's read locks,
    /// which cost more than the lookup.
    pub fn known_files<P: AsRef<str>>(&self, paths: &[P]) -> Result<Vec<Option<KnownFile>>> {
        self.in_one_read(|| {
            let mut known = Vec::with_capacity(paths.len());
            // A walk hands over a folder's files together: each folder's run is one range read.
            for folder in paths.chunk_by(|a, b| parent(a.as_ref()) == parent(b.as_ref())) {
                known.extend(self.known_in_folder(folder)?);
            }
            Ok(known)
        })
    }

    /// [`Journal::known_files`] for paths in one folder: their rows lie in a narrow path range,
    /// read in one pass of the path index. A range crowded with other rows (subfolders sorted
    /// between the paths) is looked up path by path instead.
    fn known_in_folder<P: AsRef<str>>(&self, paths: &[P]) -> Result<Vec<Option<KnownFile>>> {
        let path = |i: usize| paths[i].as_ref();
        let mut order: Vec<usize> = (0..paths.len()).collect();
        // Stable, so a path given twice gets its row the first time, as a lookup each would.
        order.sort_by(|&a, &b| path(a).cmp(path(b)));
        let (Some(&first), Some(&last)) = (order.first(), order.last()) else {
            return Ok(Vec::new());
        };
        let limit = paths.len() * 2 + 16;
        let in_range = self.known_where(
            "path >= ?1 AND path <= ?2 ORDER BY path LIMIT ?3",
            params![path(first), path(last), limit as i64],
        )?;
        if in_range.len() >= limit {
            return paths.iter().map(|p| self.known_file(p.as_ref())).collect();
        }
        // One merge of the two sorted lists (SQLite's BINARY collation orders text as `str`
        // does, byte by byte): a map from path to row cost a copy and two hashes of every path.
        let mut known: Vec<Option<KnownFile>> =
            std::iter::repeat_with(|| None).take(paths.len()).collect();
        let mut rows = in_range.into_iter().peekable();
        for i in order {
            while rows.next_if(|row| row.path.as_str() < path(i)).is_some() {}
            known[i] = rows.next_if(|row| row.path == path(i));
        }
        Ok(known)
    }

    /// The files the journal holds under `root` that it does not consider removed.
    pub fn known_under(&self, root: &str) -> Result<Vec<KnownFile>> {
        let (from, to) = path_range(root);
        self.known_where("path >= ?1 AND path < ?2", [from, to])
    }

    /// At most `limit` of [`Journal::known_under`], in path order, after the path `after`: the
    /// journal's side of a big watch, a page at a time.
    pub fn known_under_page(
        &self,
        root: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<KnownFile>> {
        let (from, to) = path_range(root);
        self.known_where(
            "path >= ?1 AND path < ?2 AND path > ?3 ORDER BY path LIMIT ?4",
            params![from, to, after, limit as i64],
        )
    }

    /// How many files under `root` the journal holds as present (not removed, no removal pending).
    ///
    /// Counted as all the rows there less the absent ones (removed, or a removal pending): each
    /// count reads an index only (the path index; `files_absent`, which holds just those rows),
    /// where counting the present rows read every row's state from the table.
    pub fn count_present_under(&self, root: &str) -> Result<usize> {
        self.in_one_read(|| present_under(&self.conn, root))
    }

    /// The records under `root` renamed out of the watch's names, their copies kept: each path
    /// recorded, and where the file was last found.
    pub fn untaken_under(&self, root: &str) -> Result<Vec<UntakenFile>> {
        let (from, to) = path_range(root);
        let mut stmt = self.conn.prepare_cached(UNTAKEN_PLACES)?;
        let rows = stmt.query_map([from, to], |r| {
            Ok(UntakenFile {
                path: r.get(0)?,
                place: r.get(1)?,
                stamp: stamp_from(r, 2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Files renamed out of the watch's names found back at their paths as they were (nothing
    /// to examine): their records are ordinary again.
    pub fn untaken_back(&mut self, paths: &[String]) -> Result<()> {
        let tx = self.write()?;
        for path in paths {
            tx.cached_execute(
                "UPDATE files SET untaken_at = NULL,
                   error = CASE WHEN state = 'synced' THEN NULL ELSE error END
                 WHERE path = ?1 AND untaken_at IS NOT NULL",
                [path],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn known_where(
        &self,
        condition: &str,
        values: impl rusqlite::Params,
    ) -> Result<Vec<KnownFile>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT path, size, mtime_ns, ctime_ns, inode, dev, state, removal IS NOT NULL,
               state = 'pending' AND removal IS NULL
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = files.id),
               untaken_at IS NOT NULL AND removal IS NULL
             FROM files
             WHERE state != 'removed' AND {condition}"
        ))?;
        let rows = stmt.query_map(values, |r| {
            let state = FileState::parse(r.get_ref(6)?.as_str()?);
            Ok(KnownFile {
                path: r.get(0)?,
                stamp: stamp_from(r, 1)?,
                state: state.unwrap_or(FileState::Pending),
                removal_pending: r.get(7)?,
                needs_work: r.get(8)?,
                untaken: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The records under a root renamed out of the watch's names, their copies kept (neither
/// removed nor on their way out): through the small index of those that have a place.
macro_rules! untaken_under {
    () => {
        "FROM files INDEXED BY files_untaken
         WHERE untaken_at IS NOT NULL AND state != 'removed' AND removal IS NULL
           AND path >= ?1 AND path < ?2"
    };
}
const UNTAKEN_COUNT: &str = concat!("SELECT COUNT(*) ", untaken_under!());
const UNTAKEN_PLACES: &str = concat!(
    "SELECT path, untaken_at, size, mtime_ns, ctime_ns, inode, dev ",
    untaken_under!(),
    " ORDER BY path"
);

/// [`Journal::count_present_under`], on any connection (a write's too).
pub(super) fn present_under(conn: &Connection, root: &str) -> Result<usize> {
    let (from, to) = path_range(root);
    let count =
        |sql: &str| -> Result<i64> { Ok(conn.cached_query_row(sql, [&from, &to], |r| r.get(0))?) };
    let all = count("SELECT COUNT(*) FROM files WHERE path >= ?1 AND path < ?2")?;
    let absent = count(
        "SELECT COUNT(*) FROM files
         WHERE (state = 'removed' OR removal IS NOT NULL) AND path >= ?1 AND path < ?2",
    )?;
    let untaken = count(UNTAKEN_COUNT)?;
    Ok((all - absent - untaken).max(0) as usize)
}

/// The paths under `root` as a range of text, so the path index finds them: from `root/` up to
/// `root0` ('0' is the character after '/').
pub(super) fn path_range(root: &str) -> (String, String) {
    let root = root.trim_end_matches('/');
    (format!("{root}/"), format!("{root}0"))
}

/// A file seen on disk again after it was gone: its removal is withdrawn. Returns the copy the
/// file may still point at, going to `vendor`: its own if that is live, at `vendor`, and no
/// delete of it was sent, else none.
fn back_on_disk(tx: &Connection, row: &Existing, vendor: &str) -> Result<Option<i64>> {
    let Some(copy_id) = row.copy_id else {
        return Ok(None);
    };
    if row.removal.as_deref() == Some("delete") && !copies::withdraw_delete(tx, copy_id)? {
        return Ok(None);
    }
    // Only a copy at the vendor the file goes to now is its copy: a record kept pointing at
    // another vendor's would have that copy's deletes sent through the wrong vendor.
    Ok(copies::is_live_at(tx, copy_id, vendor)?.then_some(copy_id))
}

fn observe_known(tx: &Connection, obs: &Observation<'_>, row: Existing) -> Result<Observed> {
    let now = now_ms();
    let same_content = row.sha256.as_deref() == Some(obs.sha256) && row.vendor == obs.vendor;
    let was_gone = row.removal.is_some() || row.state == "removed";
    let copy_id = if row.vendor == obs.vendor {
        back_on_disk(tx, &row, obs.vendor)?
    } else {
        None
    };
    if same_content && !was_gone {
        set_stamp(tx, row.id, Some(&obs.stamp))?;
        if row.state == "synced" && row.error.is_some() {
            // Back at its path after a rename the watch does not take: the note is done with.
            tx.cached_execute(
                "UPDATE files SET error = NULL, untaken_at = NULL WHERE id = ?1",
                [row.id],
            )?;
        }
        if row.state == "pending" && !jobs::has_job(tx, row.id, "upload")? {
            // Its work was dropped (a read that failed, a crash): queue it again.
            jobs::queue(tx, row.id, "upload", obs.vendor, Some(obs.sha256), None)?;
        }
        return Ok(Observed::Unchanged);
    }
    // Back with the bytes of its copy: synced to it again, unless it has expired meanwhile (a
    // Jiandaoyun key put back after its hour), when the bytes go again as for a deleted copy.
    // The copy's own hash says so, not the record's: a file rejected because it could not be
    // read (a folder shut, an I/O error) has no hash recorded, and one changed and changed back
    // has the other bytes' hash, yet its copy holds these very bytes.
    let synced_to_own_copy = match copy_id {
        Some(id) => holds_usable(tx, id, obs)?,
        None => false,
    };
    if synced_to_own_copy {
        jobs::drop_queued(tx, row.id, &["upload"])?;
        // The record takes what is on disk: its hash may have been another's (changed, then
        // changed back) or forgotten (rejected).
        tx.cached_execute(
            "UPDATE files SET state = 'synced', removal = NULL, error = NULL, copy_id = ?2,
               watch_root = ?3, delete_unused = ?4, updated_at = ?5, untaken_at = NULL,
               kind = ?6, sha256 = ?7, format = ?8, width = ?9, height = ?10, reuse_copies = ?11
             WHERE id = ?1",
            params![
                row.id,
                copy_id,
                obs.watch_root,
                obs.delete_unused,
                now,
                obs.kind,
                obs.sha256,
                obs.format,
                obs.width,
                obs.height,
                obs.reuse_copies
            ],
        )?;
        set_stamp(tx, row.id, Some(&obs.stamp))?;
        return Ok(Observed::Restored);
    }
    jobs::drop_queued(tx, row.id, &["upload"])?;
    set_new_content(tx, row.id, obs, copy_id)?;
    jobs::queue(tx, row.id, "upload", obs.vendor, Some(obs.sha256), None)?;
    if was_gone && same_content {
        // Its bytes were last sent by a call whose answer never came (a record being created at
        // a kill, then the file removed): back, they wait for a person as they would have.
        if let Some(begun) = jobs::last_unconfirmed(tx, row.id)? {
            jobs::keep_in_doubt(tx, row.id, &begun)?;
        }
    }
    Ok(match (was_gone, same_content) {
        (true, true) => Observed::RestoredAfterDelete,
        (true, false) => Observed::Queued,
        (false, _) => Observed::Changed,
    })
}

/// Whether the copy holds the observed bytes, at the observed file's vendor, and a file may be
/// synced to it now.
fn holds_usable(tx: &Connection, copy_id: i64, obs: &Observation<'_>) -> Result<bool> {
    let (held, vendor): (Option<String>, String) = tx.cached_query_row(
        "SELECT sha256, vendor FROM remote_copies WHERE id = ?1",
        [copy_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(held.as_deref() == Some(obs.sha256)
        && vendor == obs.vendor
        && copies::is_usable(tx, copy_id)?)
}

struct Twin {
    id: i64,
    path: String,
    removal: Option<String>,
    copy_id: Option<i64>,
    state: String,
}

impl Twin {
    /// From a row of `id, path, removal, copy_id, state`.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Twin> {
        Ok(Twin {
            id: r.get(0)?,
            path: r.get(1)?,
            removal: r.get(2)?,
            copy_id: r.get(3)?,
            state: r.get(4)?,
        })
    }
}

/// A record of the same bytes for the same vendor whose file is gone: the file was renamed.
/// A record whose copy is being deleted is no twin: the rename is uploaded afresh.
fn moved_twin(
    tx: &Connection,
    obs: &Observation<'_>,
    is_present: &dyn Fn(&str) -> bool,
) -> Result<Option<Twin>> {
    let mut stmt = tx.prepare_cached(
        "SELECT f.id, f.path, f.removal, f.copy_id, f.state FROM files f
         LEFT JOIN remote_copies c ON c.id = f.copy_id
         WHERE f.vendor = ?1 AND f.sha256 = ?2 AND f.state IN ('pending', 'synced', 'failed')
           AND (f.removal IS NULL OR f.removal IN ('held', 'delete'))
           AND (f.copy_id IS NULL OR c.state = 'live')",
    )?;
    let twins = stmt
        .query_map(params![obs.vendor, obs.sha256], Twin::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    first_gone(tx, twins, is_present)
}

/// The record of a file rejected at a path now gone, with the same device, inode, size and
/// modification time as `file` (a rename keeps them all; a new file given a freed inode number
/// seldom has the other two): the file was renamed (or its folder was) while it was bad. Its
/// removal, if one was decided, is taken back; one whose delete was already sent is no twin.
fn moved_rejected(
    tx: &Connection,
    file: &RejectedFile<'_>,
    is_present: &dyn Fn(&str) -> bool,
) -> Result<Option<i64>> {
    let Some(stamp) = file.stamp else {
        return Ok(None);
    };
    let mut stmt = tx.prepare_cached(
        "SELECT f.id, f.path, f.removal, f.copy_id, f.state FROM files f
         LEFT JOIN remote_copies c ON c.id = f.copy_id
         WHERE f.sha256 IS NULL AND f.dev = ?1 AND f.inode = ?2 AND f.vendor = ?3
           AND f.size = ?4 AND f.mtime_ns = ?5 AND f.state IN ('rejected', 'pending')
           AND (f.removal IS NULL OR f.removal IN ('held', 'delete'))
           AND (f.copy_id IS NULL OR c.state = 'live')",
    )?;
    let twins = stmt
        .query_map(
            params![
                stamp.dev as i64,
                stamp.inode as i64,
                file.vendor,
                stamp.size as i64,
                stamp.mtime_ns
            ],
            Twin::from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(first_gone(tx, twins, is_present)?.map(|twin| twin.id))
}

/// The first of `twins` whose path is gone from disk and whose copy's delete, if one was queued,
/// could still be withdrawn (it is, here).
fn first_gone(
    tx: &Connection,
    twins: Vec<Twin>,
    is_present: &dyn Fn(&str) -> bool,
) -> Result<Option<Twin>> {
    for twin in twins {
        if is_present(&twin.path) {
            continue;
        }
        if twin.removal.as_deref() == Some("delete")
            && let Some(copy_id) = twin.copy_id
            && !copies::withdraw_delete(tx, copy_id)?
        {
            continue;
        }
        return Ok(Some(twin));
    }
    Ok(None)
}

fn move_record(tx: &Connection, twin: &Twin, obs: &Observation<'_>) -> Result<()> {
    // A record whose removal was decided lost its queued upload. With a copy of these very bytes
    // it is synced again; one changed since its copy was made (the copy holds the old bytes) is
    // pending, and its upload is queued again. A failed one stays failed, for `retry`.
    let decided = twin.removal.is_some();
    let own_copy = match twin.copy_id {
        Some(id) if decided => holds_usable(tx, id, obs)?,
        _ => false,
    };
    let state = match (decided, own_copy, twin.state.as_str()) {
        (false, _, state) | (true, false, state @ "failed") => state,
        (true, true, _) => "synced",
        (true, false, _) => "pending",
    };
    // A synced record's only note is where a rename the watch does not take had put it.
    tx.cached_execute(
        "UPDATE files SET path = ?2, watch_root = ?3, removal = NULL, delete_unused = ?4,
           error = CASE WHEN (removal IS NULL AND state != 'synced') OR ?6 = 'failed' THEN error
                        ELSE NULL END,
           untaken_at = NULL, state = ?6, updated_at = ?5
         WHERE id = ?1",
        params![
            twin.id,
            obs.path,
            obs.watch_root,
            obs.delete_unused,
            now_ms(),
            state
        ],
    )?;
    if state == "pending" && !jobs::has_job(tx, twin.id, "upload")? {
        jobs::queue(tx, twin.id, "upload", obs.vendor, Some(obs.sha256), None)?;
    }
    set_stamp(tx, twin.id, Some(&obs.stamp))
}

fn insert_pending(tx: &Connection, obs: &Observation<'_>) -> Result<()> {
    let now = now_ms();
    // One statement for the whole row: a new file is the common case of every drop.
    tx.cached_execute(
        "INSERT INTO files (path, watch_root, vendor, kind, state, sha256, format, width, height,
           attempts, delete_unused, reuse_copies, size, mtime_ns, ctime_ns, inode, dev,
           created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
           ?16, ?16)",
        params![
            obs.path,
            obs.watch_root,
            obs.vendor,
            obs.kind,
            obs.sha256,
            obs.format,
            obs.width,
            obs.height,
            obs.delete_unused,
            obs.reuse_copies,
            obs.stamp.size as i64,
            obs.stamp.mtime_ns,
            obs.stamp.ctime_ns,
            obs.stamp.inode as i64,
            obs.stamp.dev as i64,
            now
        ],
    )?;
    let id = tx.last_insert_rowid();
    jobs::queue(tx, id, "upload", obs.vendor, Some(obs.sha256), None)
}

/// Records `obs` as the file's content, waiting to be sent. `copy_id` is the last good copy,
/// kept until the new content is synced.
fn set_new_content(
    tx: &Connection,
    id: i64,
    obs: &Observation<'_>,
    copy_id: Option<i64>,
) -> Result<()> {
    tx.cached_execute(
        "UPDATE files SET state = 'pending', watch_root = ?2, vendor = ?3, kind = ?4,
           sha256 = ?5, format = ?6, width = ?7, height = ?8, copy_id = ?9, removal = NULL,
           attempts = 0, error = NULL, delete_unused = ?10, updated_at = ?11, reuse_copies = ?12,
           untaken_at = NULL
         WHERE id = ?1",
        params![
            id,
            obs.watch_root,
            obs.vendor,
            obs.kind,
            obs.sha256,
            obs.format,
            obs.width,
            obs.height,
            copy_id,
            obs.delete_unused,
            now_ms(),
            obs.reuse_copies
        ],
    )?;
    set_stamp(tx, id, Some(&obs.stamp))
}

/// The folder part of a journal path (everything before its last '/').
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(folder, _)| folder)
}
