//! Walks a watch (or a folder inside it) for the files its filters accept, without following
//! symlinks and without descending into excluded folders.

use std::path::{Path, PathBuf};

use tracing::warn;
use walkdir::WalkDir;

use super::events::Watching;
use super::examine::stamp;
use super::settle::Stamp;
use crate::config::WatchConfig;

/// Every accepted non-directory entry under `dir` (inside the watch at `root`), with its stamp.
/// Each folder entered is first covered by `watching`, when there is a watcher.
pub fn files(
    root: &Path,
    dir: &Path,
    watch: &WatchConfig,
    watching: Option<&Watching>,
) -> Vec<(PathBuf, Stamp)> {
    let mut out = Vec::new();
    in_batches(root, dir, watch, watching, usize::MAX, |batch| {
        out.extend(batch);
        true
    });
    out
}

/// The same, handed to `take` a batch of at most `size` at a time, so a big tree is never held in
/// memory whole; stops early when `take` returns false.
pub fn in_batches(
    root: &Path,
    dir: &Path,
    watch: &WatchConfig,
    watching: Option<&Watching>,
    size: usize,
    mut take: impl FnMut(Vec<(PathBuf, Stamp)>) -> bool,
) {
    let depth_left = if watch.recursive {
        usize::MAX
    } else {
        // A non-recursive watch sees only the root's own entries.
        if dir != root {
            return;
        }
        1
    };
    let walker = WalkDir::new(dir)
        .follow_links(false)
        .max_depth(depth_left)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !(e.file_type().is_dir() && watch.filter.excludes_dir(e.file_name()))
        });
    let mut batch = Vec::new();
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
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        if !super::utf8_or_warn(entry.path()) {
            continue;
        }
        if !watch.filter.accepts(relative) {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            batch.push((entry.path().to_path_buf(), stamp(&meta)));
        }
        if batch.len() >= size && !take(std::mem::take(&mut batch)) {
            return;
        }
    }
    if !batch.is_empty() {
        take(batch);
    }
}
