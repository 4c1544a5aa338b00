//! The stamps of a watch's settled files in one read, so a reconcile of an unchanged tree does not
//! look each file's record up: a restart's walk of 100 000 files spent most of its time there.

use std::hash::BuildHasher;

use super::observe::{path_range, present_under, stamp_from};
use super::{FileStamp, Journal, Result};

/// The files the journal holds as present and settled under a root, each as a keyed 64-bit hash
/// of its path and stamp, sorted. A file found on disk whose path and stamp are among them is
/// what the journal holds with nothing left to do ([`KnownFile::unchanged`](super::KnownFile),
/// and counted present), known without reading its record. A file not among them is looked up as
/// before. The key is drawn afresh for each set, so no file name can be made to collide on
/// purpose; by chance, a file is taken for unchanged once in 2^64 / n (n files in the set).
#[derive(Debug)]
pub struct KnownStamps {
    key: std::hash::RandomState,
    hashes: Vec<u64>,
}

impl KnownStamps {
    /// Whether the journal holds `path` with `stamp`, present, with nothing left to do.
    pub fn contains(&self, path: &str, stamp: &FileStamp) -> bool {
        self.hashes
            .binary_search(&self.key.hash_one((path, stamp)))
            .is_ok()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The records [`KnownStamps`] holds: present (not removed, no removal pending, not renamed out of
/// the watch's names) and settled (not a pending file whose job was dropped), with a whole stamp.
/// Every other record found on disk is looked up, as each was before.
const SETTLED_UNDER: &str = "SELECT path, size, mtime_ns, ctime_ns, inode, dev FROM files
     WHERE path >= ?1 AND path < ?2
       AND state != 'removed' AND removal IS NULL AND untaken_at IS NULL
       AND NOT (state = 'pending' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = files.id))";

impl Journal {
    /// The settled files under `root` as [`KnownStamps`]; none when more than `limit` files are
    /// present there: a huge watch is looked up a batch at a time instead, so neither its set
    /// (8 bytes a file) nor one long read that holds up the journal's writes.
    pub fn known_stamps(&self, root: &str, limit: usize) -> Result<Option<KnownStamps>> {
        let (from, to) = path_range(root);
        self.in_one_read(|| {
            // Every settled file is counted present, so this many at most.
            let present = present_under(&self.conn, root)?;
            if present > limit {
                return Ok(None);
            }
            let key = std::hash::RandomState::new();
            let mut hashes = Vec::with_capacity(present);
            let mut stmt = self.conn.prepare_cached(SETTLED_UNDER)?;
            let mut rows = stmt.query([from, to])?;
            while let Some(row) = rows.next()? {
                let Some(stamp) = stamp_from(row, 1)? else {
                    continue;
                };
                let path = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
                hashes.push(key.hash_one((path, &stamp)));
            }
            hashes.sort_unstable();
            Ok(Some(KnownStamps { key, hashes }))
        })
    }
}
