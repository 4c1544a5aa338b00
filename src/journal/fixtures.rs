//! What the journal's and the worker's tests record: a file of the watch on "/w", seen as a
//! 10×10 PNG of a Kingdee vendor whose copies are deleted when unused and reused for the same bytes.

use super::{FileStamp, Observation};

/// A stamp of `size` bytes for inode `inode` (the times and the device the same for every file).
pub(crate) fn stamp(size: u64, inode: u64) -> FileStamp {
    FileStamp {
        size,
        mtime_ns: 1,
        ctime_ns: 1,
        inode,
        dev: 1,
    }
}

pub(crate) fn observation<'a>(
    path: &'a str,
    vendor: &'a str,
    sha256: &'a str,
    stamp: FileStamp,
) -> Observation<'a> {
    Observation {
        path,
        watch_root: "/w",
        vendor,
        kind: "kingdee",
        stamp,
        sha256,
        format: "png",
        width: 10,
        height: 10,
        delete_unused: true,
        reuse_copies: true,
    }
}
