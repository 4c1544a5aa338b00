//! Walks a watch (or a folder inside it) for the files its filters accept, without following
//! symlinks and without descending into excluded folders.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use tracing::warn;
use walkdir::WalkDir;

use super::events::Watching;
use super::settle::{Look, Stamp};
use crate::config::WatchConfig;

/// Every accepted non-directory entry under `dir` (inside the watch at `root`), with its stamp.
/// Each folder entered is first covered by `watching`, when there is a watcher. (The daemon reads
/// folders only [`in_batches`]; this whole list is for tests.)
#[cfg(test)]
pub fn files(
    root: &Path,
    dir: &Path,
    watch: &WatchConfig,
    watching: Option<&Watching>,
) -> Vec<(PathBuf, Stamp)> {
    let mut out = Vec::new();
    in_batches(
        root,
        dir,
        watch,
        watching,
        Reach::Tree,
        usize::MAX,
        |batch| {
            out.extend(batch);
            true
        },
    );
    out
}

/// How much of a folder a walk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The folder and every folder inside it the watch covers.
    Tree,
    /// Only the folder's own entries: a second look for files a full settle tracker left out,
    /// which must not read a whole tree below them every settle period.
    OwnEntries,
}

/// Every accepted non-directory entry under `dir` (inside the watch at `root`) with its stamp,
/// each folder first covered by `watching` when there is a watcher, handed to `take` a batch of
/// at most `size` at a time, so a big tree is never held in memory whole; stops early when `take`
/// returns false (but still covers every folder, so a reconcile cut short by the journal leaves
/// no folder unwatched).
pub fn in_batches(
    root: &Path,
    dir: &Path,
    watch: &WatchConfig,
    watching: Option<&Watching>,
    reach: Reach,
    size: usize,
    mut take: impl FnMut(Vec<(PathBuf, Stamp)>) -> bool,
) {
    // A non-recursive watch sees only the root's own entries.
    if !watch.recursive && dir != root {
        return;
    }
    let depth_left = match reach {
        Reach::Tree if watch.recursive => usize::MAX,
        Reach::Tree | Reach::OwnEntries => 1,
    };
    if dir != root && inside_excluded(root, dir, watch) {
        return;
    }
    // No sorting: a sorted walk reads a folder whole when it opens it, before `cover` below.
    let walker = WalkDir::new(dir)
        .follow_links(false)
        .max_depth(depth_left)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !(e.file_type().is_dir() && watch.filter.excludes_dir(e.file_name()))
        });
    let mut batch = Vec::new();
    let mut folder = None;
    // Once `take` wants no more, the walk goes on only to cover the folders still unwatched.
    let mut collecting = true;
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warn!(watch = %root.display(), "cannot read part of the folder: {e}");
                continue;
            }
        };
        if entry.file_type().is_dir() {
            // The walk has opened the folder but reads it only after this: watched first, a
            // file created in it meanwhile is listed, reported, or both.
            if let Some(watching) = watching {
                watching.cover(entry.path());
            }
            continue;
        }
        if !collecting {
            if watching.is_none() {
                return;
            }
            continue;
        }
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        if !watch.filter.accepts_in_folder(relative) {
            continue;
        }
        match stamp_in_folder(&mut folder, entry.path()) {
            Look::Stamp(stamp) => batch.push((entry.into_path(), stamp)),
            // Listed but not to be looked at (a folder the daemon may list but not enter): handed
            // on with a stamp no file has, so its examination says why.
            Look::Unreadable => batch.push((entry.into_path(), NO_STAMP)),
            Look::Gone => {}
        }
        if batch.len() >= size {
            collecting = take(std::mem::take(&mut batch));
            // `take` may wait: a folder renamed meanwhile is opened again by its path, so no
            // file is stamped under a path it no longer has.
            folder = None;
        }
    }
    if collecting && !batch.is_empty() {
        take(batch);
    }
}

/// A folder held open while its files are stamped.
struct OpenFolder {
    path: PathBuf,
    fd: OwnedFd,
}

/// The stamp of `path`, a symlink's own, looked up by its name in its folder (opened once for
/// the folder's run of entries), as `find` does. walkdir stats each entry by its whole path, and
/// the kernel's walk of that path from `/` was a tenth of what a restart cost.
fn stamp_in_folder(folder: &mut Option<OpenFolder>, path: &Path) -> Look {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Look::Gone;
    };
    if folder.as_ref().is_none_or(|f| f.path != parent) {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::open(parent, flags, Mode::empty()) {
            Ok(fd) => {
                *folder = Some(OpenFolder {
                    path: parent.to_path_buf(),
                    fd,
                })
            }
            Err(e) => return looked(e),
        }
    }
    let Some(open) = folder.as_ref() else {
        return Look::Gone;
    };
    stamp_at(&open.fd, name).map_or_else(looked, Look::Stamp)
}

/// The stamp of a file whose stat failed: it never equals a recorded one, and says the file has
/// been quiet for long, so it is examined at once.
const NO_STAMP: Stamp = Stamp {
    size: 0,
    mtime_ns: 0,
    ctime_ns: 0,
    inode: 0,
    dev: 0,
};

/// What a failed look at an entry says: gone, or there but not to be looked at.
fn looked(error: rustix::io::Errno) -> Look {
    match super::examine::is_gone(&error.into()) {
        true => Look::Gone,
        false => Look::Unreadable,
    }
}

/// The stamp `examine::stamp` makes of `std::fs::Metadata`, from `fstatat`, which every kernel
/// and seccomp filter allows (std itself falls back to it where `statx` is refused). The kernel's
/// `st_dev` is the `makedev` std computes from `statx`: a major number has twelve bits.
fn stamp_at(folder: &OwnedFd, name: &OsStr) -> rustix::io::Result<Stamp> {
    let st = rustix::fs::statat(folder, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(Stamp {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        inode: st.st_ino as u64,
        dev: st.st_dev as u64,
    })
}

/// Whether `dir` lies in (or is) a folder the watch excludes.
fn inside_excluded(root: &Path, dir: &Path, watch: &WatchConfig) -> bool {
    dir.strip_prefix(root).is_ok_and(|relative| {
        relative
            .components()
            .any(|c| watch.filter.excludes_dir(c.as_os_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> WatchConfig {
        let yaml = format!(
            "vendors:\n  v:\n    kind: kingdee\n    client_id: c\n    client_secret: s\n    \
             app_key: k\n    app_secret: a\n    domain: d\nwatches:\n  - path: {}\n    vendor: v\n",
            root.display()
        );
        crate::config::Config::parse(&yaml, Path::new("daemon.yaml"))
            .unwrap()
            .watches
            .remove(0)
    }

    #[test]
    fn a_walk_stamps_each_file_as_examine_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for name in ["x.png", "a/y.png", "a/b/z.png", "a/w.png"] {
            std::fs::write(root.join(name), name.as_bytes()).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", root.join("a/link.png")).unwrap();
        let found = files(root, root, &config(root), None);
        assert_eq!(found.len(), 5);
        for (path, stamp) in found {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                stamp,
                super::super::examine::stamp(&meta),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn a_walk_cut_short_stops_taking_and_nothing_under_an_excluded_folder_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["a", "b", ".hidden/c"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            for i in 0..3 {
                std::fs::write(root.join(sub).join(format!("{i}.png")), b"x").unwrap();
            }
        }
        let watch = config(root);
        let mut batches = 0;
        in_batches(root, root, &watch, None, Reach::Tree, 2, |_| {
            batches += 1;
            false
        });
        assert_eq!(batches, 1, "nothing is handed over once take said stop");
        assert_eq!(files(root, root, &watch, None).len(), 6, "not the excluded");
        assert!(files(root, &root.join(".hidden/c"), &watch, None).is_empty());
    }
}
