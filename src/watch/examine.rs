//! Looks at one path under a watch and says what it is: an image to send (with its hash), a file to
//! refuse (and why), or nothing to do. Never opens anything but a regular file.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::settle::Stamp;
use crate::image::{self, ImageInfo};
use crate::vendor::Limits;

#[derive(Debug)]
pub enum Examined {
    /// Not ours: a directory, or gone between event and look.
    Skip,
    Gone,
    /// Its size or mtime changed while it was read: look again after it settles.
    Changing,
    Reject {
        reason: String,
        stamp: Option<Stamp>,
    },
    Image {
        stamp: Stamp,
        sha256: String,
        info: ImageInfo,
    },
}

pub fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec())
}

/// The stamp of a regular file at `path` (not following symlinks), for the settle tracker.
pub fn stat(path: &Path) -> Option<Stamp> {
    std::fs::symlink_metadata(path).ok().map(|m| stamp(&m))
}

pub fn examine(root: &Path, path: &Path, vendor: &str, limits: &Limits) -> Examined {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Examined::Gone,
        Err(e) => {
            return Examined::Reject {
                reason: format!("cannot stat: {e}"),
                stamp: None,
            };
        }
    };
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return Examined::Skip;
    }
    let stamp_now = stamp(&meta);
    if file_type.is_symlink() {
        return Examined::Reject {
            reason: symlink_reason(root, path),
            stamp: Some(stamp_now),
        };
    }
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_char_device() {
            "a character device"
        } else {
            "not a regular file"
        };
        return Examined::Reject {
            reason: format!("not a regular file ({what}); skipped"),
            stamp: Some(stamp_now),
        };
    }
    if let Some(reason) = limits.size_refusal(vendor, meta.len()) {
        return Examined::Reject {
            reason,
            stamp: Some(stamp_now),
        };
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Examined::Gone,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Examined::Reject {
                reason: format!(
                    "cannot read: permission denied; fix its permissions, then run `imgsyncd retry {}`",
                    path.display()
                ),
                stamp: Some(stamp_now),
            };
        }
        Err(e) => {
            return Examined::Reject {
                reason: format!("cannot read: {e}"),
                stamp: Some(stamp_now),
            };
        }
    };
    if stat(path) != Some(stamp_now) || bytes.len() as u64 != stamp_now.0 {
        return Examined::Changing;
    }
    let info = match image::inspect(&bytes) {
        Ok(info) => info,
        Err(e) => {
            return Examined::Reject {
                reason: e.to_string(),
                stamp: Some(stamp_now),
            };
        }
    };
    if let Some(reason) = limits.refusal(vendor, stamp_now.0, &info) {
        return Examined::Reject {
            reason,
            stamp: Some(stamp_now),
        };
    }
    Examined::Image {
        stamp: stamp_now,
        sha256: sha256_hex(&bytes),
        info,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn symlink_reason(root: &Path, path: &Path) -> String {
    let target = std::fs::read_link(path).unwrap_or_default();
    let resolved: Option<PathBuf> = std::fs::canonicalize(path).ok();
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match resolved {
        None => format!("dangling symlink (to {}); not followed", target.display()),
        Some(real) if real.starts_with(&root) => format!(
            "symlink to {} inside the watch; not followed (the target is synced itself)",
            real.display()
        ),
        Some(real) => format!(
            "symlink leads outside the watch (to {}); not followed",
            real.display()
        ),
    }
}
