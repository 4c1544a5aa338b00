//! The mount table, watched. A filesystem unmounted under a watch takes its inotify watches with
//! it without a word (the kernel's IN_UNMOUNT and IN_IGNORED, which notify drops), and one
//! mounted there again has none: nothing dropped into a remounted share was seen until the next
//! rescan, an hour later by default. The kernel says when the mount table changes (POLLPRI on
//! `/proc/self/mountinfo`), so each watch looks then at the mounts on its own path, and watches
//! its folder anew when they changed. Nothing runs while the table stays as it is.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::warn;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Counts the changes of the mount table; `None` where the table cannot be watched (no `/proc`),
/// and watches then find a remount at their next rescan, as before.
pub fn watch_table() -> Option<watch::Receiver<u64>> {
    let table = std::fs::File::open(MOUNTINFO).and_then(|file| {
        // SAFETY: the AsyncFd owns the File, whose descriptor stays open and the same until
        // both are dropped together.
        unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }
            .map_err(std::io::Error::from)
    });
    let table = match table {
        Ok(table) => table,
        Err(e) => {
            warn!(
                "cannot watch the mount table ({MOUNTINFO}: {e}); a share remounted under a \
                 watch is noticed at its next rescan"
            );
            return None;
        }
    };
    let (changes, receiver) = watch::channel(0);
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = table.ready(Interest::PRIORITY).await else {
                return;
            };
            // The kernel marks the table read as soon as it is polled: nothing to read here.
            ready.clear_ready();
            changes.send_modify(|n| *n += 1);
            if changes.is_closed() {
                return;
            }
        }
    });
    Some(receiver)
}

/// Waits for the next change of the table; false when none can come any more.
pub async fn next_change(changes: &mut Option<watch::Receiver<u64>>) -> bool {
    match changes {
        Some(changes) => changes.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The mounts a watch's files depend on: the one its root is on and those above it, and those
/// inside it. A mount elsewhere (a container started, a USB stick) is none of its business.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountsOnPath(Vec<Mount>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Mount {
    /// The kernel's id of this mount, and the device it shows: a filesystem mounted again at the
    /// same place mostly has a new id or device (the kernel hands out the lowest free of each, so
    /// an unmount and a mount told together may show neither changed).
    id: u64,
    device: String,
    at: PathBuf,
}

impl MountsOnPath {
    /// Reads the mounts on `root`'s path now (following links in it, as the kernel's table names
    /// the real places).
    pub fn read(root: &Path) -> std::io::Result<MountsOnPath> {
        let table = std::fs::read(MOUNTINFO)?;
        let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Self::parse(&table, &real))
    }

    /// Whether any mount was read: none before the root was first seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn parse(table: &[u8], root: &Path) -> MountsOnPath {
        let mut mounts: Vec<Mount> = table
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": the id
                // first, where it is mounted fifth.
                let mut fields = line.split(|&b| b == b' ');
                let id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
                let device = String::from_utf8_lossy(fields.nth(1)?).into_owned();
                let at = unescape(fields.nth(1)?);
                (root.starts_with(&at) || at.starts_with(root)).then_some(Mount { id, device, at })
            })
            .collect();
        mounts.sort();
        MountsOnPath(mounts)
    }

    /// What changed from `before` to this, for the log: the places unmounted, then those mounted.
    pub fn changes_from(&self, before: &MountsOnPath) -> String {
        let places = |of: &MountsOnPath, not_in: &MountsOnPath| -> Vec<String> {
            of.0.iter()
                .filter(|m| !not_in.0.contains(m))
                .map(|m| m.at.display().to_string())
                .collect()
        };
        let (unmounted, mounted) = (places(before, self), places(self, before));
        let said = |what: &str, at: Vec<String>| match at.is_empty() {
            true => None,
            false => Some(format!("{what} {}", at.join(", "))),
        };
        [said("unmounted at", unmounted), said("mounted at", mounted)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The kernel writes a space, a tab, a line break and a backslash in a path as `\ooo`.
fn unescape(field: &[u8]) -> PathBuf {
    let mut bytes = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&b, tail)) = rest.split_first() {
        let octal = tail
            .get(..3)
            .filter(|d| b == b'\\' && d.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(d) => {
                bytes.push(d.iter().fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')));
                rest = &tail[3..];
            }
            None => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /srv rw shared:5 - tmpfs tmpfs rw
41 30 0:40 / /srv/share rw shared:9 - nfs4 host:/export rw
42 41 0:41 / /srv/share/photos\\040old rw - tmpfs tmpfs rw
43 22 0:42 / /srv/shared rw - tmpfs tmpfs rw
50 22 0:50 / /var/lib/docker/overlay rw - overlay overlay rw
";

    fn at(mounts: &MountsOnPath) -> Vec<&str> {
        mounts.0.iter().map(|m| m.at.to_str().unwrap()).collect()
    }

    #[test]
    fn the_mounts_on_a_path_are_those_above_it_and_inside_it() {
        let mounts = MountsOnPath::parse(TABLE, Path::new("/srv/share"));
        assert_eq!(
            at(&mounts),
            ["/", "/srv", "/srv/share", "/srv/share/photos old"]
        );
        // A sibling whose name starts the same is not on the path.
        let inside = MountsOnPath::parse(TABLE, Path::new("/srv/share/photos old/2026"));
        assert_eq!(
            at(&inside),
            ["/", "/srv", "/srv/share", "/srv/share/photos old"]
        );
        let elsewhere = MountsOnPath::parse(TABLE, Path::new("/home/ops/drop"));
        assert_eq!(at(&elsewhere), ["/"]);
    }

    #[test]
    fn a_share_mounted_again_at_its_place_is_a_change() {
        let before = MountsOnPath::parse(TABLE, Path::new("/srv/share"));
        let remounted = String::from_utf8(TABLE.to_vec())
            .unwrap()
            .replace("41 30 0:40 / /srv/share", "57 30 0:40 / /srv/share");
        let after = MountsOnPath::parse(remounted.as_bytes(), Path::new("/srv/share"));
        assert_ne!(before, after);
        assert_eq!(
            after.changes_from(&before),
            "unmounted at /srv/share; mounted at /srv/share"
        );
        let gone = String::from_utf8(TABLE.to_vec()).unwrap().replace(
            "42 41 0:41 / /srv/share/photos\\040old rw - tmpfs tmpfs rw\n",
            "",
        );
        let after = MountsOnPath::parse(gone.as_bytes(), Path::new("/srv/share"));
        assert_eq!(
            after.changes_from(&before),
            "unmounted at /srv/share/photos old"
        );
        // A mount elsewhere changes nothing on the path.
        let elsewhere = [TABLE, b"60 22 0:60 / /media/usb rw - vfat /dev/sdb1 rw\n"].concat();
        assert_eq!(
            MountsOnPath::parse(&elsewhere, Path::new("/srv/share")),
            before
        );
    }

    #[test]
    fn escaped_characters_in_mount_points_are_read_back() {
        assert_eq!(unescape(b"/a\\040b\\011c\\134d"), Path::new("/a b\tc\\d"));
        // Not an escape: kept as it is.
        assert_eq!(unescape(b"/a\\9x\\"), Path::new("/a\\9x\\"));
    }

    #[tokio::test]
    async fn a_mount_is_told_to_the_watches() {
        let Some(mut changes) = watch_table() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(dir.path())
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let limit = std::time::Duration::from_secs(10);
        let told = tokio::time::timeout(limit, changes.changed()).await;
        assert!(told.is_ok_and(|r| r.is_ok()), "the mount not told");
        // Told again for the next change, once the first was taken in.
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        let told = tokio::time::timeout(limit, changes.changed()).await;
        assert!(told.is_ok_and(|r| r.is_ok()), "the unmount not told");
    }
}
