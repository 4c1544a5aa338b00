//! Files the watch no longer takes but that are still there: `a.png` renamed `.a.png`, `a.png.tmp`
//! or `a.png.bak`, or moved into an excluded folder such as `.trash/`. The watch sees only the old
//! path go, yet such a file is excluded, not gone, and its remote copy must stay.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use crate::config::NameFilter;
use crate::journal::FileStamp;

/// How deep a look goes into an excluded folder met on the way up (`.trash/2024/a.png`).
const EXCLUDED_DEPTH: usize = 8;

/// At most this many entries are read inside one excluded folder: a thumbnail cache may hold
/// more than the watch itself. Only entries with an inode looked for are kept, so this bounds
/// the time a look takes, not its memory.
const EXCLUDED_ENTRIES: usize = 200_000;

/// Finds where gone files went among the names the watch does not take. Each folder is read once
/// however many gone files look into it.
pub struct UntakenFiles<'a> {
    root: &'a Path,
    filter: &'a NameFilter,
    /// The inodes of the files looked for: only entries with one of them are kept.
    wanted: HashSet<u64>,
    /// Per folder read: the files in it (or in the excluded folders inside it) the watch does not
    /// take and that have a wanted inode.
    folders: HashMap<PathBuf, Vec<(u64, PathBuf)>>,
}

impl<'a> UntakenFiles<'a> {
    /// Ready to look for the files recorded with `stamps`.
    pub fn new(
        root: &'a Path,
        filter: &'a NameFilter,
        stamps: impl IntoIterator<Item = FileStamp>,
    ) -> Self {
        UntakenFiles {
            root,
            filter,
            wanted: stamps.into_iter().map(|s| s.inode).collect(),
            folders: HashMap::new(),
        }
    }

    /// The path the file recorded with `stamp` at `gone` now has, if it is still in the watch
    /// under a name or in a folder the watch does not take: looked for in its former folder and
    /// each one above it up to the root, and in the excluded folders inside those. The same
    /// device, inode, size and modification time make it the same file.
    pub fn find(&mut self, gone: &Path, stamp: &FileStamp) -> Option<PathBuf> {
        let mut folder = gone.parent();
        while let Some(dir) = folder.filter(|d| d.starts_with(self.root)) {
            let found = self
                .untaken_in(dir)
                .iter()
                .filter(|(inode, _)| *inode == stamp.inode)
                .find(|(_, path)| same_file(path, stamp))
                .map(|(_, path)| path.clone());
            if found.is_some() {
                return found;
            }
            folder = dir.parent();
        }
        None
    }

    fn untaken_in(&mut self, dir: &Path) -> &[(u64, PathBuf)] {
        if !self.folders.contains_key(dir) {
            let listed = self.list(dir);
            self.folders.insert(dir.to_path_buf(), listed);
        }
        &self.folders[dir]
    }

    /// The files directly in `dir` the watch does not take, and those inside its excluded folders.
    fn list(&self, dir: &Path) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut untaken = Vec::new();
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            match is_dir {
                true if self.filter.excludes_dir(&entry.file_name()) => {
                    untaken.extend(self.inside_excluded(&entry.path()));
                }
                true => {}
                false if self.wanted.contains(&entry.ino()) => {
                    let path = entry.path();
                    let taken = path
                        .strip_prefix(self.root)
                        .is_ok_and(|relative| self.filter.accepts(relative));
                    if !taken {
                        untaken.push((entry.ino(), path));
                    }
                }
                false => {}
            }
        }
        untaken
    }

    /// The wanted files in an excluded folder, to a depth and a count of entries.
    fn inside_excluded(&self, dir: &Path) -> Vec<(u64, PathBuf)> {
        use walkdir::DirEntryExt as _;
        walkdir::WalkDir::new(dir)
            .min_depth(1)
            .max_depth(EXCLUDED_DEPTH)
            .into_iter()
            .flatten()
            .take(EXCLUDED_ENTRIES)
            .filter(|e| !e.file_type().is_dir() && self.wanted.contains(&e.ino()))
            .map(|e| (e.ino(), e.into_path()))
            .collect()
    }
}

fn same_file(path: &Path, recorded: &FileStamp) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| {
        let now = super::examine::stamp(&meta);
        meta.is_file()
            && (now.dev, now.inode, now.size, now.mtime_ns)
                == (
                    recorded.dev,
                    recorded.inode,
                    recorded.size,
                    recorded.mtime_ns,
                )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(path: &Path) -> FileStamp {
        super::super::examine::stamp(&std::fs::symlink_metadata(path).unwrap())
    }

    fn default_filter() -> NameFilter {
        let exclude: Vec<String> = crate::config::DEFAULT_EXCLUDE
            .iter()
            .map(|p| p.to_string())
            .collect();
        NameFilter::new(&["*.png".to_string()], &exclude).unwrap()
    }

    #[test]
    fn a_file_renamed_to_a_name_or_into_a_folder_the_watch_does_not_take_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".trash/2024")).unwrap();
        let filter = default_filter();
        let moves = [
            ("a.png", ".a.png"),
            ("b.png", "b.png.bak"),
            ("sub/c.png", "sub/c.png~"),
            ("sub/deeper/d.png", ".trash/2024/d.png"),
        ];
        let mut stamps = Vec::new();
        for (i, (from, _)) in moves.iter().enumerate() {
            std::fs::write(root.join(from), vec![i as u8; 10 + i]).unwrap();
            stamps.push(stamp_of(&root.join(from)));
        }
        for (from, to) in moves {
            std::fs::rename(root.join(from), root.join(to)).unwrap();
        }
        let mut untaken = UntakenFiles::new(root, &filter, stamps.iter().copied());
        for ((from, to), stamp) in moves.iter().zip(&stamps) {
            assert_eq!(
                untaken.find(&root.join(from), stamp),
                Some(root.join(to)),
                "{from}"
            );
        }
    }

    #[test]
    fn a_file_deleted_or_renamed_to_a_name_the_watch_takes_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let filter = default_filter();
        std::fs::write(root.join("gone.png"), b"bytes").unwrap();
        std::fs::write(root.join("moved.png"), b"other bytes").unwrap();
        let (gone, moved) = (
            stamp_of(&root.join("gone.png")),
            stamp_of(&root.join("moved.png")),
        );
        std::fs::remove_file(root.join("gone.png")).unwrap();
        std::fs::rename(root.join("moved.png"), root.join("taken.png")).unwrap();
        // Another file under an excluded name, which is not the one that went.
        std::fs::write(root.join(".other.png"), b"bytes").unwrap();
        let mut untaken = UntakenFiles::new(root, &filter, [gone, moved]);
        assert_eq!(untaken.find(&root.join("gone.png"), &gone), None);
        assert_eq!(untaken.find(&root.join("moved.png"), &moved), None);
    }
}
