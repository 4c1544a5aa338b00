//! Files the watch no longer takes but that are still there: `a.png` renamed `.a.png`, `a.png.tmp`
//! or `a.png.bak`, or moved into an excluded folder such as `.trash/` or `archive/` (excluded by
//! `archive/**`). The watch sees only the old path go, yet such a file is excluded, not gone, and
//! its remote copy must stay. A watch that is not recursive takes nothing in its subfolders: to
//! it, each is an excluded folder.
//!
//! A gone file is looked for first where files usually go (its folder and those above it, and
//! the excluded folders in them); when it is not there, through the whole watch, once for all
//! the files of a batch, so a file filed away deeper (`done/2024/11/28/a.png`) or under a name a
//! sibling folder does not take (`sub2/a.png~`) keeps its copy too.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::config::NameFilter;
use crate::journal::FileStamp;

/// How deep a look goes into an excluded folder met on the way up (`.trash/2024/a.png`).
const EXCLUDED_DEPTH: usize = 3;

/// At most this many entries are read inside excluded folders for one batch of removals, and as
/// many in a flat watch's other subfolders: a thumbnail cache or an archive may hold more than
/// the watch itself, and the watch handles no event while it looks. Only entries with an inode
/// looked for are kept, so this bounds the time, not memory.
const EXCLUDED_ENTRIES: usize = 200_000;

/// What a look for a gone file among the names the watch does not take found.
#[derive(Debug, PartialEq, Eq)]
pub enum Search {
    /// It is there, at this path.
    Found(PathBuf),
    NotFound,
    /// This folder was too big to look through, or could not be read: the file may be in it.
    CutShort(PathBuf),
}

/// What one folder holds of the files looked for.
struct Listing {
    /// The files in it (or in the excluded folders inside it) the watch does not take and that
    /// have a wanted inode.
    untaken: Vec<(u64, PathBuf)>,
    /// An excluded folder in it that was not read to its end.
    cut_short: Option<PathBuf>,
}

/// What the whole watch holds of the files looked for.
struct WholeWatch {
    /// The files in it the watch does not take and that have a wanted inode.
    untaken: Vec<(u64, PathBuf)>,
    /// Where the look stopped, when the watch was too big to look through to its end.
    stopped_in: Option<PathBuf>,
}

/// Finds where gone files went among the names the watch does not take. Each folder is read once
/// however many gone files look into it.
pub struct UntakenFiles<'a> {
    root: &'a Path,
    filter: &'a NameFilter,
    /// Whether the watch takes files in subfolders; if not, every subfolder is excluded.
    recursive: bool,
    /// The inodes of the files looked for: only entries with one of them are kept.
    wanted: HashSet<u64>,
    folders: HashMap<PathBuf, Listing>,
    /// How many more entries of excluded folders may be read.
    entries_left: usize,
    /// How many more entries of a flat watch's other subfolders may be read.
    subfolder_entries_left: usize,
    /// The whole watch, once looked through.
    whole: Option<WholeWatch>,
    /// How many entries the look through the whole watch may read.
    whole_entries: usize,
    /// Whether a file was said counted as gone for want of a whole look.
    told_unread: bool,
}

impl<'a> UntakenFiles<'a> {
    /// Ready to look for the files recorded with `stamps` in the watch of `root`.
    pub fn new(
        root: &'a Path,
        filter: &'a NameFilter,
        recursive: bool,
        stamps: impl IntoIterator<Item = FileStamp>,
    ) -> Self {
        UntakenFiles {
            root,
            filter,
            recursive,
            wanted: stamps.into_iter().map(|s| s.inode).collect(),
            folders: HashMap::new(),
            entries_left: EXCLUDED_ENTRIES,
            subfolder_entries_left: EXCLUDED_ENTRIES,
            whole: None,
            whole_entries: EXCLUDED_ENTRIES,
            told_unread: false,
        }
    }

    /// Where the file recorded with `stamp` at `gone` is now, if it is still in the watch under a
    /// name or in a folder the watch does not take: looked for in its former folder and each one
    /// above it up to the root, and in the excluded folders inside those; then through the whole
    /// watch. The same device, inode, size and modification time make it the same file.
    pub fn find(&mut self, gone: &Path, stamp: &FileStamp) -> Search {
        let mut cut_short = None;
        let mut folder = gone.parent();
        while let Some(dir) = folder.filter(|d| d.starts_with(self.root)) {
            let listing = self.listing(dir);
            if let Some(path) = found_in(&listing.untaken, stamp) {
                return Search::Found(path);
            }
            cut_short = cut_short.or_else(|| listing.cut_short.clone());
            folder = dir.parent();
        }
        if let Some(folder) = cut_short {
            return Search::CutShort(folder);
        }
        let whole = self.whole_watch();
        if let Some(path) = found_in(&whole.untaken, stamp) {
            return Search::Found(path);
        }
        let stopped_in = whole.stopped_in.clone();
        if let (Some(folder), false) = (stopped_in, self.told_unread) {
            // Once a batch: every file of it not found is in the same case.
            self.told_unread = true;
            warn!(
                path = %gone.display(),
                "counted as gone, with every other file of this batch not found: not found in \
                 the watch, though it was too big to look through to its end (stopped in {}); \
                 if a file was moved further on, its remote copy is deleted",
                folder.display()
            );
        }
        Search::NotFound
    }

    /// The untaken files of the whole watch with a wanted inode, on the watch's filesystem, as
    /// far as [`EXCLUDED_ENTRIES`] entries go.
    fn whole_watch(&mut self) -> &WholeWatch {
        if self.whole.is_none() {
            let mut whole = WholeWatch {
                untaken: Vec::new(),
                stopped_in: None,
            };
            let walk = walkdir::WalkDir::new(self.root)
                .min_depth(1)
                .same_file_system(true);
            for entry in walk.into_iter().flatten() {
                if self.whole_entries == 0 {
                    whole.stopped_in = entry.path().parent().map(Path::to_path_buf);
                    break;
                }
                self.whole_entries -= 1;
                use walkdir::DirEntryExt as _;
                if !entry.file_type().is_dir()
                    && self.wanted.contains(&entry.ino())
                    && !self.takes(entry.path())
                {
                    whole.untaken.push((entry.ino(), entry.into_path()));
                }
            }
            self.whole = Some(whole);
        }
        self.whole.as_ref().expect("just looked through")
    }

    /// Whether the watch takes a file at `path`, under its root.
    fn takes(&self, path: &Path) -> bool {
        path.strip_prefix(self.root).is_ok_and(|relative| {
            (self.recursive || relative.components().count() == 1) && self.filter.accepts(relative)
        })
    }

    /// The same, with `entries` as what excluded folders, and the whole watch, may hold before a
    /// look is cut short.
    #[cfg(test)]
    fn reading_at_most(mut self, entries: usize) -> Self {
        self.entries_left = entries;
        self.subfolder_entries_left = entries;
        self.whole_entries = entries;
        self
    }

    fn listing(&mut self, dir: &Path) -> &Listing {
        if !self.folders.contains_key(dir) {
            let listing = self.list(dir);
            self.folders.insert(dir.to_path_buf(), listing);
        }
        &self.folders[dir]
    }

    /// The wanted files directly in `dir` the watch does not take, and those inside its excluded
    /// folders.
    fn list(&mut self, dir: &Path) -> Listing {
        let mut listing = Listing {
            untaken: Vec::new(),
            cut_short: None,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // Its folder gone with it, or a file in the folder's place: nothing there.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return listing;
            }
            // Unreadable: the file may be in it, the answer stays open.
            Err(_) => {
                listing.cut_short = Some(dir.to_path_buf());
                return listing;
            }
        };
        let mut subfolders = Vec::new();
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            match is_dir {
                true if self.filter.excludes_dir(&entry.file_name()) => {
                    let path = entry.path();
                    let budget = &mut self.entries_left;
                    if !inside_folder(&path, &self.wanted, budget, &mut listing.untaken) {
                        listing.cut_short.get_or_insert(path);
                    }
                }
                true if !self.recursive => subfolders.push((last_change(&entry), entry.path())),
                true => {}
                false if self.wanted.contains(&entry.ino()) => {
                    let path = entry.path();
                    if !self.takes(&path) {
                        listing.untaken.push((entry.ino(), path));
                    }
                }
                false => {}
            }
        }
        // Where a flat watch's user files things away (`done/2024/`), often an archive far
        // bigger than the watch: looked through as far as its own budget goes, the folders
        // changed last (where a file was just moved) first. Beyond that, the look through the
        // whole watch goes on, or a file counts as gone: else no removal in such a watch could
        // ever be decided.
        subfolders.sort_by_key(|(changed, _)| std::cmp::Reverse(*changed));
        for (_, path) in subfolders {
            let budget = &mut self.subfolder_entries_left;
            inside_folder(&path, &self.wanted, budget, &mut listing.untaken);
        }
        listing
    }
}

/// The file recorded with `stamp` among `untaken` files.
fn found_in(untaken: &[(u64, PathBuf)], stamp: &FileStamp) -> Option<PathBuf> {
    untaken
        .iter()
        .filter(|(inode, _)| *inode == stamp.inode)
        .find(|(_, path)| same_file(path, stamp))
        .map(|(_, path)| path.clone())
}

/// When a folder's entries last changed: a file moved into it changes it.
fn last_change(entry: &std::fs::DirEntry) -> Option<std::time::SystemTime> {
    entry.metadata().and_then(|m| m.modified()).ok()
}

/// Adds the `wanted` files in a folder the watch does not take (on the same filesystem, a few
/// levels deep) to `found`, reading at most `budget` entries; false when it ran out before the
/// folder's end.
fn inside_folder(
    dir: &Path,
    wanted: &HashSet<u64>,
    budget: &mut usize,
    found: &mut Vec<(u64, PathBuf)>,
) -> bool {
    use walkdir::DirEntryExt as _;
    let walk = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(EXCLUDED_DEPTH)
        .same_file_system(true);
    // A folder inside that cannot be read is passed over: one that never can (another user's
    // trash) would otherwise hold every removal of the watch.
    for entry in walk.into_iter().flatten() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if !entry.file_type().is_dir() && wanted.contains(&entry.ino()) {
            found.push((entry.ino(), entry.into_path()));
        }
    }
    true
}

/// Whether the file at `path` is the one recorded with `recorded`: the same device, inode, size
/// and modification time.
pub(super) fn same_file(path: &Path, recorded: &FileStamp) -> bool {
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
        let mut untaken = UntakenFiles::new(root, &filter, true, stamps.iter().copied());
        for ((from, to), stamp) in moves.iter().zip(&stamps) {
            assert_eq!(
                untaken.find(&root.join(from), stamp),
                Search::Found(root.join(to)),
                "{from}"
            );
        }
    }

    /// Filed away deeper than the first look goes, into a folder excluded by a path pattern, or
    /// under a name a sibling folder does not take: found by the look through the whole watch
    /// (before, each counted as gone and its copy was deleted).
    #[test]
    fn a_file_moved_anywhere_else_in_the_watch_under_a_name_it_does_not_take_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut exclude: Vec<String> = crate::config::DEFAULT_EXCLUDE
            .iter()
            .map(|p| p.to_string())
            .collect();
        exclude.push("archive/**".into());
        let filter = NameFilter::new(&["*.png".to_string()], &exclude).unwrap();
        for folder in ["archive", "sub1", "sub2", "2024/11/28", ".trash"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        let files = ["a.png", "sub1/b.png", "2024/11/28/c.png"];
        let mut stamps = Vec::new();
        for (i, file) in files.iter().enumerate() {
            std::fs::write(root.join(file), vec![i as u8; 20 + i]).unwrap();
            stamps.push(stamp_of(&root.join(file)));
        }
        std::fs::rename(root.join("a.png"), root.join("archive/a.png")).unwrap();
        std::fs::rename(root.join("sub1/b.png"), root.join("sub2/b.png~")).unwrap();
        std::fs::rename(root.join("2024"), root.join(".trash/2024")).unwrap();
        let now_at = ["archive/a.png", "sub2/b.png~", ".trash/2024/11/28/c.png"];
        let mut untaken = UntakenFiles::new(root, &filter, true, stamps.iter().copied());
        for ((from, to), stamp) in files.iter().zip(now_at).zip(&stamps) {
            assert_eq!(
                untaken.find(&root.join(from), stamp),
                Search::Found(root.join(to)),
                "{from}"
            );
        }
        // A flat watch's file filed away four folders deep.
        std::fs::create_dir_all(root.join("done/2024/11/28")).unwrap();
        std::fs::write(root.join("d.png"), b"filed away").unwrap();
        let stamp = stamp_of(&root.join("d.png"));
        std::fs::rename(root.join("d.png"), root.join("done/2024/11/28/d.png")).unwrap();
        let mut flat = UntakenFiles::new(root, &filter, false, [stamp]);
        assert_eq!(
            flat.find(&root.join("d.png"), &stamp),
            Search::Found(root.join("done/2024/11/28/d.png"))
        );
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
        let mut untaken = UntakenFiles::new(root, &filter, true, [gone, moved]);
        assert_eq!(
            untaken.find(&root.join("gone.png"), &gone),
            Search::NotFound
        );
        assert_eq!(
            untaken.find(&root.join("moved.png"), &moved),
            Search::NotFound
        );
    }

    #[test]
    fn an_excluded_folder_too_big_to_read_through_leaves_the_answer_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let filter = default_filter();
        std::fs::create_dir_all(root.join(".cache")).unwrap();
        std::fs::write(root.join(".cache/thumb.png"), b"thumb").unwrap();
        std::fs::write(root.join("gone.png"), b"bytes").unwrap();
        let gone = stamp_of(&root.join("gone.png"));
        std::fs::remove_file(root.join("gone.png")).unwrap();
        let mut untaken = UntakenFiles::new(root, &filter, true, [gone]).reading_at_most(0);
        assert_eq!(
            untaken.find(&root.join("gone.png"), &gone),
            Search::CutShort(root.join(".cache"))
        );
    }

    #[test]
    fn a_watch_that_is_not_recursive_takes_its_subfolders_as_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let filter = default_filter();
        std::fs::create_dir_all(root.join("done/2024")).unwrap();
        std::fs::write(root.join("a.png"), b"bytes").unwrap();
        let stamp = stamp_of(&root.join("a.png"));
        std::fs::rename(root.join("a.png"), root.join("done/2024/a.png")).unwrap();
        let mut flat = UntakenFiles::new(root, &filter, false, [stamp]);
        assert_eq!(
            flat.find(&root.join("a.png"), &stamp),
            Search::Found(root.join("done/2024/a.png"))
        );
        // A recursive watch takes it there: it is not an untaken file but a move.
        let mut tree = UntakenFiles::new(root, &filter, true, [stamp]);
        assert_eq!(tree.find(&root.join("a.png"), &stamp), Search::NotFound);
        // An archive too big to read through (here, not at all) leaves the file gone, not the
        // removal undecided: or no removal in the watch could ever be decided.
        let mut flat = UntakenFiles::new(root, &filter, false, [stamp]).reading_at_most(0);
        assert_eq!(flat.find(&root.join("a.png"), &stamp), Search::NotFound);
    }

    #[test]
    fn a_flat_watchs_subfolder_changed_last_is_looked_through_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let filter = default_filter();
        std::fs::create_dir_all(root.join("done")).unwrap();
        // Sixteen older archives, so that `done` comes first by chance in one listing of 17.
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for a in 0..16 {
            let archive = root.join(format!("archive-{a}"));
            std::fs::create_dir_all(&archive).unwrap();
            for i in 0..6 {
                std::fs::write(archive.join(format!("old-{i}.png")), b"old").unwrap();
            }
            std::fs::File::open(&archive)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        std::fs::write(root.join("a.png"), b"bytes").unwrap();
        let stamp = stamp_of(&root.join("a.png"));
        std::fs::rename(root.join("a.png"), root.join("done/a.png")).unwrap();
        // Room for less than one archive: enough only if `done` is read first.
        let mut flat = UntakenFiles::new(root, &filter, false, [stamp]).reading_at_most(5);
        assert_eq!(
            flat.find(&root.join("a.png"), &stamp),
            Search::Found(root.join("done/a.png"))
        );
    }

    #[test]
    fn a_file_whose_folder_was_replaced_by_a_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let filter = default_filter();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/c.png"), b"bytes").unwrap();
        let stamp = stamp_of(&root.join("a/b/c.png"));
        std::fs::remove_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a"), b"a file where the folder was").unwrap();
        let mut untaken = UntakenFiles::new(root, &filter, true, [stamp]);
        assert_eq!(
            untaken.find(&root.join("a/b/c.png"), &stamp),
            Search::NotFound
        );
    }
}
