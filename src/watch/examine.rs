//! Looks at one path under a watch and says what it is: an image to send (with its hash), a file to
//! refuse (and why), or nothing to do. Never opens anything but a regular file.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::adapters::Limits;
use crate::image::{self, ImageInfo};
use crate::journal::FileStamp as Stamp;
use crate::journal::path_text;

use super::settle::Look;

#[derive(Debug)]
pub enum Examined {
    /// Not ours: a directory, or gone between event and look.
    Skip,
    Gone,
    /// Its size or mtime changed while it was read: look again after it settles.
    Changing,
    /// It could not be read for a reason that may pass (an I/O error on a share, no file
    /// descriptor left): looked at again a few times before it is refused.
    Unreadable {
        reason: String,
        stamp: Option<Stamp>,
    },
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
    Stamp {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        dev: meta.dev(),
    }
}

/// Why a path could not be read as a regular file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it is gone")]
    Gone,
    #[error("not a regular file any more ({0})")]
    NotRegular(&'static str),
    #[error("a folder on its path is now a symlink (or the file is); not followed")]
    ThroughSymlink,
    #[error("{size} bytes, more than the {limit} bytes allowed")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads a regular file whole, and its stamp as of the read. It is opened without following a
/// symlink and without blocking (a FIFO put in its place must not hang the reader), checked to be
/// a regular file within `max_bytes`, then read.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<(Vec<u8>, Stamp), ReadError> {
    read_opened(open_nofollow(path)?, max_bytes)
}

/// [`read_regular`] of a file below `root`, with no symlink followed anywhere between the two. A
/// folder on the way swapped for a symlink (to `/etc`, say) after the watch last looked, which
/// on a polled share is seconds, must not lead the read out of the watch.
pub fn read_regular_beneath(
    root: &Path,
    path: &Path,
    max_bytes: u64,
) -> Result<(Vec<u8>, Stamp), ReadError> {
    read_opened(open_beneath(root, path)?, max_bytes)
}

fn open_nofollow(path: &Path) -> Result<std::fs::File, ReadError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => ReadError::Gone,
            // O_NOFOLLOW on a symlink answers ELOOP.
            _ if e.raw_os_error() == Some(libc::ELOOP) => ReadError::NotRegular("a symlink"),
            _ => ReadError::Io(e),
        })
}

/// Opens `path` as [`open_nofollow`] does, resolving it from `root` with `openat2`'s
/// `RESOLVE_NO_SYMLINKS`: the kernel refuses a symlink at any step. A kernel without `openat2`
/// (before 5.6, or a sandbox that forbids it) opens as `open_nofollow` does.
fn open_beneath(root: &Path, path: &Path) -> Result<std::fs::File, ReadError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    let Ok(below) = path.strip_prefix(root) else {
        return open_nofollow(path);
    };
    let gone_or = |e: Errno| match e {
        Errno::NOENT | Errno::NOTDIR => ReadError::Gone,
        e => ReadError::Io(e.into()),
    };
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(gone_or)?;
    match rustix::fs::openat2(
        &dir,
        below,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
    ) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(Errno::NOSYS | Errno::PERM) => {
            said_no_openat2();
            open_nofollow(path)
        }
        Err(Errno::LOOP) => Err(ReadError::ThroughSymlink),
        // Any other (EXDEV: a `..` out of the root; EAGAIN: a rename raced the lookup) is a
        // failure to read, looked at again a few times before the file is refused.
        Err(e) => Err(gone_or(e)),
    }
}

/// Says once that this kernel (or its sandbox) refuses `openat2`, so that files are read
/// following any folder symlinked in after the watch last looked.
fn said_no_openat2() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            "this kernel refuses openat2 (Linux 5.6 or later, and a seccomp policy that allows \
             it): a folder in a watch swapped for a symlink between two looks can be read \
             through; the symlink check is made on the file only"
        );
    });
}

fn read_opened(file: std::fs::File, max_bytes: u64) -> Result<(Vec<u8>, Stamp), ReadError> {
    let meta = file.metadata()?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(ReadError::NotRegular(describe(&file_type)));
    }
    if meta.len() > max_bytes {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew since the check.
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok((bytes, stamp(&meta)))
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_dir() {
        "a folder"
    } else if file_type.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// The stamp of a regular file at `path` (not following symlinks).
pub fn stat(path: &Path) -> Option<Stamp> {
    std::fs::symlink_metadata(path).ok().map(|m| stamp(&m))
}

/// [`stat`] for the settle tracker, which must tell a path gone from one it cannot look at.
pub fn look(path: &Path) -> Look {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Look::Stamp(stamp(&meta)),
        Err(e) if is_gone(&e) => Look::Gone,
        Err(_) => Look::Unreadable,
    }
}

/// Whether a failed look at a path says that nothing is there: no such file, or a file where
/// one of its folders was. Any other error (no permission, an I/O error) says nothing of it.
pub fn is_gone(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

pub fn examine(root: &Path, path: &Path, vendor: &str, limits: &Limits) -> Examined {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Examined::Gone,
        Err(e) => {
            return Examined::Unreadable {
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
        let what = describe(&file_type);
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
    let (bytes, read_stamp) = match read_regular_beneath(root, path, limits.max_bytes) {
        Ok(read) => read,
        Err(ReadError::Gone) => return Examined::Gone,
        Err(ReadError::Io(e)) if e.kind() == ErrorKind::PermissionDenied => {
            return Examined::Reject {
                reason: format!(
                    "cannot read: permission denied; fix its permissions, then run `imgsyncd retry {}`",
                    path_text::for_shell(&path_text::to_text(path))
                ),
                stamp: Some(stamp_now),
            };
        }
        Err(ReadError::TooLarge { .. }) => return Examined::Changing,
        Err(e @ (ReadError::NotRegular(_) | ReadError::ThroughSymlink)) => {
            return Examined::Reject {
                reason: format!("cannot read: {e}"),
                stamp: Some(stamp_now),
            };
        }
        Err(e) => {
            return Examined::Unreadable {
                reason: format!("cannot read: {e}"),
                stamp: Some(stamp_now),
            };
        }
    };
    if read_stamp != stamp_now
        || stat(path) != Some(stamp_now)
        || bytes.len() as u64 != stamp_now.size
    {
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
    if let Some(reason) = limits.refusal(vendor, stamp_now.size, &info) {
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
    format!("{:x}", Sha256::digest(bytes))
}

/// How long following a symlink may take before its reason is given without where it leads: one
/// into a hard-mounted share whose server is gone never comes back, and would hold up the whole
/// batch of files being examined with it.
const FOLLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

fn symlink_reason(root: &Path, path: &Path) -> String {
    let target = std::fs::read_link(path).unwrap_or_default();
    let (answer, resolved) = std::sync::mpsc::channel();
    let followed = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("imgsyncd-link".into())
        .spawn(move || {
            let _ = answer.send(std::fs::canonicalize(followed));
        });
    let resolved = match spawned
        .ok()
        .and_then(|_| resolved.recv_timeout(FOLLOW_LIMIT).ok())
    {
        Some(resolved) => resolved,
        None => {
            return format!(
                "symlink (to {}) that could not be followed in {}s; not followed",
                target.display(),
                FOLLOW_LIMIT.as_secs()
            );
        }
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match resolved {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => format!(
            "symlink loop (to {}): it never reaches a file; not followed",
            target.display()
        ),
        Err(_) => format!("dangling symlink (to {}); not followed", target.display()),
        Ok(real) if real.starts_with(&root) => format!(
            "symlink to {} inside the watch; not followed (the target is synced itself)",
            real.display()
        ),
        Ok(real) => format!(
            "symlink leads outside the watch (to {}); not followed",
            real.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_file_below_the_root_is_read_beneath_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/b/x.png"), b"bytes").unwrap();
        let (bytes, stamp) =
            read_regular_beneath(root.path(), &root.path().join("a/b/x.png"), 100).unwrap();
        assert_eq!(bytes, b"bytes");
        assert_eq!(stamp.size, 5);
        assert!(matches!(
            read_regular_beneath(root.path(), &root.path().join("a/nothing.png"), 100),
            Err(ReadError::Gone)
        ));
    }

    #[test]
    fn a_folder_on_the_way_that_is_a_symlink_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.png"), b"secret").unwrap();
        symlink(outside.path(), root.path().join("sub")).unwrap();
        let through = root.path().join("sub/x.png");
        assert!(matches!(
            read_regular_beneath(root.path(), &through, 100),
            Err(ReadError::ThroughSymlink)
        ));
        // A symlink inside the watch is not followed either: the watch never walks through one.
        std::fs::create_dir_all(root.path().join("real")).unwrap();
        std::fs::write(root.path().join("real/y.png"), b"inside").unwrap();
        symlink("real", root.path().join("alias")).unwrap();
        assert!(matches!(
            read_regular_beneath(root.path(), &root.path().join("alias/y.png"), 100),
            Err(ReadError::ThroughSymlink)
        ));
    }

    #[test]
    fn a_root_that_is_itself_a_symlink_is_followed() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        std::fs::write(real.path().join("x.png"), b"bytes").unwrap();
        let root = links.path().join("drop");
        symlink(real.path(), &root).unwrap();
        let (bytes, _) = read_regular_beneath(&root, &root.join("x.png"), 100).unwrap();
        assert_eq!(bytes, b"bytes");
    }
}
