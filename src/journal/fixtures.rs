//! What the journal's and the worker's tests record: a file of the watch on "/w", seen as a
//! 10×10 PNG of a Kingdee vendor whose copies are deleted when unused and reused for the same bytes.

use super::{FileStamp, Observation};

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
