//! Whether a file the journal knows is really gone, and whether a watch root is the folder it
//! should be: the looks at the disk a remote copy's delete waits for, the watch's and
//! `imgsyncd retry --held`'s alike. The watch also asks where a gone file went: renamed to a
//! name it does not take, the file is excluded, not gone.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::WatchConfig;
use crate::journal::{FileStamp, KnownFile, Presence, path_text};

use super::untaken::{Search, UntakenFiles};

/// `imgsyncd retry --held`'s look at the held files of `watch`, each with its path and its stamp
/// as recorded: there, gone, unreadable, or renamed out of what the watch takes, which keeps its
/// copy. A look cut short by a folder too big to read through, or unreadable, says gone: the
/// operator asked for the delete.
pub fn look_at_held(watch: &WatchConfig, held: &[(String, Option<FileStamp>)]) -> Vec<Presence> {
    let root = watch.path.as_path();
    let stamps = held.iter().filter_map(|(_, stamp)| *stamp);
    let mut untaken = UntakenFiles::new(root, &watch.filter, watch.recursive, stamps);
    held.iter()
        .map(
            |(path, stamp)| match whereabouts(root, path, *stamp, &mut untaken) {
                Whereabouts::Present => Presence::Present,
                Whereabouts::Gone | Whereabouts::Unsure(_) => Presence::Gone,
                Whereabouts::Untaken(now_at) => Presence::Untaken(now_at),
                Whereabouts::Unknown(why) => Presence::Unknown(why),
            },
        )
        .collect()
}

/// Only "no such file", in a folder on the filesystem the file was recorded on, means gone.
pub fn presence(root: &Path, path: &Path, recorded_dev: Option<u64>) -> Presence {
    match std::fs::symlink_metadata(path) {
        // A folder took the name (`rm a.jpg; mkdir a.jpg`): the file that had it is gone.
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Presence::Present,
        Err(e) if absent(&e) => {}
        Err(e) => return Presence::Unknown(format!("cannot look at it: {e}")),
    }
    let mut folder = path.parent();
    while let Some(dir) = folder {
        // The root may be a link to the folder watched, on the filesystem the file was on.
        let meta = match dir == root {
            true => std::fs::metadata(dir),
            false => std::fs::symlink_metadata(dir),
        };
        match meta {
            Ok(meta) if meta.is_dir() => {
                return match recorded_dev {
                    Some(dev) if meta.dev() != dev => Presence::Unknown(format!(
                        "{} is on another filesystem than when the file was recorded \
                         (device {} instead of {dev}): unmounted?",
                        dir.display(),
                        meta.dev()
                    )),
                    _ => Presence::Gone,
                };
            }
            // A file where its folder was: the folder is gone, and the file with it.
            Ok(_) if dir != root => folder = dir.parent(),
            Err(e) if absent(&e) && dir != root => folder = dir.parent(),
            Ok(_) => return Presence::Unknown(format!("{} is not a folder", dir.display())),
            Err(e) => return Presence::Unknown(format!("cannot look into {}: {e}", dir.display())),
        }
    }
    Presence::Gone
}

/// "No such file", or a file standing where a folder on the way was.
fn absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Where a file the journal knows under a path seen gone is now.
pub(super) enum Whereabouts {
    Present,
    Gone,
    /// Still in the watch at this path, under a name or in a folder it does not take.
    Untaken(String),
    /// Unreadable, or its folder on another filesystem: why.
    Unknown(String),
    /// Gone from where the watch looked, but maybe in a folder too big to look through, or
    /// unreadable: its delete waits for an operator, with why.
    Unsure(String),
}

/// Looks at each known file not already on its way out: there, gone, or renamed out of what the
/// watch takes.
pub(super) fn look_at_known(
    watch: &WatchConfig,
    known: Vec<KnownFile>,
) -> Vec<(String, Whereabouts)> {
    let known: Vec<KnownFile> = known.into_iter().filter(|k| !k.removal_pending).collect();
    let root = watch.path.as_path();
    let stamps = known.iter().filter_map(|k| k.stamp);
    let mut untaken = UntakenFiles::new(root, &watch.filter, watch.recursive, stamps);
    known
        .into_iter()
        .map(|k| {
            let whereabouts = whereabouts(root, &k.path, k.stamp, &mut untaken);
            (k.path, whereabouts)
        })
        .collect()
}

/// Where the file recorded at `path` with `stamp` is: there, gone, or found under a name the
/// watch does not take.
fn whereabouts(
    root: &Path,
    path: &str,
    stamp: Option<FileStamp>,
    untaken: &mut UntakenFiles,
) -> Whereabouts {
    let path = path_text::to_path(path);
    match presence(root, &path, stamp.map(|s| s.dev)) {
        Presence::Present => Whereabouts::Present,
        Presence::Unknown(why) => Whereabouts::Unknown(why),
        Presence::Untaken(now_at) => Whereabouts::Untaken(now_at),
        // Not a verdict `presence` gives: it looks inside a watch.
        Presence::Unwatched => Whereabouts::Unknown("not in a watch".to_string()),
        Presence::Gone => {
            let Some(stamp) = stamp else {
                return Whereabouts::Gone;
            };
            match untaken.find(&path, &stamp) {
                Search::Found(now_at) => {
                    Whereabouts::Untaken(path_text::to_text(&now_at).into_owned())
                }
                Search::NotFound => Whereabouts::Gone,
                Search::CutShort(folder) => Whereabouts::Unsure(format!(
                    "the file may have been moved into {}, which is too big to look through \
                     or cannot be read",
                    folder.display()
                )),
            }
        }
    }
}

/// The identity (device, inode) to accept a watch root with as it now is, or why its files'
/// absence proves nothing: it is missing, unreadable or not a folder, or it is empty and not the
/// folder `known` says (the mount point of a share not mounted, on another device; a bind mount
/// gone, on the same device). A root the journal knows was deleted (inode 0) may be made again
/// empty: that folder is accepted.
pub fn root_as_it_is(root: &Path, known: Option<(u64, u64)>) -> Result<(u64, u64), String> {
    let meta = match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Err("is not a folder".to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err("is missing (unmounted, or deleted and not yet back)".to_string());
        }
        Err(e) => return Err(format!("cannot be looked at ({e})")),
    };
    let empty = std::fs::read_dir(root)
        .map_err(|e| format!("cannot be read ({e})"))?
        .next()
        .is_none();
    let current = (meta.dev(), meta.ino());
    match known {
        Some((dev, _)) if empty && dev != current.0 => Err(format!(
            "is an empty folder on another filesystem than before (device {} instead of {dev}): \
             a share not mounted?",
            current.0
        )),
        Some((_, inode)) if empty && inode != 0 && inode != current.1 => Err(format!(
            "is an empty folder, not the one the journal knows (inode {} instead of {inode}): a \
             mount not there? A folder deleted on purpose and made again is accepted once it \
             holds a file",
            current.1
        )),
        _ => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_gone_only_when_its_folder_is_on_the_filesystem_it_was_recorded_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dev = std::fs::metadata(root).unwrap().dev();
        std::fs::write(root.join("here.png"), b"x").unwrap();
        assert_eq!(
            presence(root, &root.join("here.png"), Some(dev)),
            Presence::Present
        );
        assert_eq!(
            presence(root, &root.join("sub/gone.png"), Some(dev)),
            Presence::Gone
        );
        let elsewhere = presence(root, &root.join("gone.png"), Some(dev + 1));
        assert!(
            matches!(&elsewhere, Presence::Unknown(why) if why.contains("another filesystem")),
            "{elsewhere:?}"
        );
        // Its folder replaced by a file: gone with the folder.
        std::fs::write(root.join("was_a_folder"), b"x").unwrap();
        assert_eq!(
            presence(root, &root.join("was_a_folder/a.png"), Some(dev)),
            Presence::Gone
        );
        // A folder at its path: the file is gone, the folder took its name.
        std::fs::create_dir(root.join("now_a_folder.png")).unwrap();
        assert_eq!(
            presence(root, &root.join("now_a_folder.png"), Some(dev)),
            Presence::Gone
        );
    }

    #[test]
    fn an_empty_root_that_is_not_the_known_folder_is_not_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("drop");
        assert!(
            root_as_it_is(&root, None)
                .unwrap_err()
                .contains("is missing")
        );
        std::fs::create_dir(&root).unwrap();
        let meta = std::fs::metadata(&root).unwrap();
        let (dev, inode) = (meta.dev(), meta.ino());
        assert_eq!(root_as_it_is(&root, Some((dev, inode))), Ok((dev, inode)));
        assert_eq!(root_as_it_is(&root, Some((dev, 0))), Ok((dev, inode)));
        let other_device = root_as_it_is(&root, Some((dev + 1, inode))).unwrap_err();
        assert!(
            other_device.contains("another filesystem"),
            "{other_device}"
        );
        let other_folder = root_as_it_is(&root, Some((dev, inode + 1))).unwrap_err();
        assert!(
            other_folder.contains("not the one the journal knows"),
            "{other_folder}"
        );
        std::fs::write(root.join("new.png"), b"x").unwrap();
        assert_eq!(
            root_as_it_is(&root, Some((dev + 1, inode + 1))),
            Ok((dev, inode))
        );
    }
}
