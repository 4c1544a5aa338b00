//! Errors an operator can act on: what went wrong, measured where it can be, and what to do.
//!
//! - out of inotify watches: how many the limit allows, how many this user's processes hold (from
//!   `/proc/*/fdinfo`), how many folders the watch has, and what to set the limit to;
//! - a journal that cannot be written: read-only, disk full, locked, damaged — one sentence each;
//! - a journal folder `check` finds this process may not write: whom to give it to, and on a
//!   read-only filesystem the unit's `ReadWritePaths=` drop-in;
//! - a vendor that refuses our timestamp: how far this host's clock is from the vendor's, read from
//!   the answer's `Date` header.

use std::path::Path;

use tracing::error;

use crate::journal::JournalError;

// ---- inotify ------------------------------------------------------------------------------------

const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";
/// The same limit for this user namespace (a container's): both apply, the lower one first.
const USERNS_MAX_WATCHES: &str = "/proc/sys/user/max_inotify_watches";

/// The inotify watch limits in force: the system's and this user namespace's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchLimits {
    pub system: Option<u64>,
    pub namespace: Option<u64>,
}

impl WatchLimits {
    fn read() -> WatchLimits {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        WatchLimits {
            system: read(MAX_USER_WATCHES),
            namespace: read(USERNS_MAX_WATCHES),
        }
    }

    /// The user namespace's limit when it is the one that binds.
    fn namespace_binds(&self) -> Option<u64> {
        match (self.system, self.namespace) {
            (Some(system), Some(ns)) if ns < system => Some(ns),
            (None, Some(ns)) => Some(ns),
            _ => None,
        }
    }
}

/// The inotify watches held by the process whose `/proc` folder is `proc_pid`: the `inotify wd:`
/// lines of the fdinfo of each of its inotify descriptors.
pub fn inotify_watches_of(proc_pid: &Path) -> Option<u64> {
    let fds = std::fs::read_dir(proc_pid.join("fd")).ok()?;
    let mut watches = 0;
    for fd in fds.flatten() {
        let is_inotify = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
        if !is_inotify {
            continue;
        }
        if let Ok(info) = std::fs::read_to_string(proc_pid.join("fdinfo").join(fd.file_name())) {
            watches += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count() as u64;
        }
    }
    Some(watches)
}

/// The inotify watches held by every process of this user that we may look into (the limit is
/// per user).
fn inotify_watches_of_user() -> u64 {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .filter_map(|e| inotify_watches_of(&e.path()))
        .sum()
}

/// Folders under `root` (itself included), each of which a recursive inotify watch needs a watch
/// for. Counting stops at a million.
fn folders_under(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .take(1_000_000)
        .count() as u64
}

/// What to set `fs.inotify.max_user_watches` to: room for twice what is needed now, a power of
/// two, never below the common 524288.
pub fn suggested_max_watches(in_use: u64, folders: u64) -> u64 {
    ((in_use + folders) * 2).next_power_of_two().max(524_288)
}

/// The inotify limit and its use, measured, with what to set.
pub fn inotify_advice(
    limits: WatchLimits,
    by_user: u64,
    by_us: Option<u64>,
    root: &Path,
    folders: u64,
) -> String {
    let ours = by_us.map_or_else(String::new, |n| format!(" ({n} by imgsyncd)"));
    let suggest = suggested_max_watches(by_user, folders);
    let (limit_text, fix) = match limits.namespace_binds() {
        Some(ns) => (
            format!("this user namespace's user.max_inotify_watches is {ns}"),
            format!(
                "set user.max_inotify_watches={suggest} where the namespace (the container) is \
                 made, and fs.inotify.max_user_watches at least as high on the host"
            ),
        ),
        None => (
            limits.system.map_or_else(
                || "fs.inotify.max_user_watches (unreadable here)".to_string(),
                |l| format!("fs.inotify.max_user_watches is {l}"),
            ),
            format!(
                "set fs.inotify.max_user_watches={suggest} \
                 (`sysctl -w fs.inotify.max_user_watches={suggest}`, and the line \
                 `fs.inotify.max_user_watches={suggest}` in /etc/sysctl.d/90-imgsyncd.conf to keep it)"
            ),
        ),
    };
    format!(
        "out of inotify watches: {limit_text}, this user's processes hold {by_user}{ours}, and {} \
         has {folders} folders to watch: {fix}, or give this watch `poll:`",
        root.display()
    )
}

/// [`inotify_advice`] measured now for the watch on `root`.
pub fn out_of_inotify_watches(root: &Path) -> String {
    inotify_advice(
        WatchLimits::read(),
        inotify_watches_of_user(),
        inotify_watches_of(Path::new("/proc/self")),
        root,
        folders_under(root),
    )
}

// ---- the journal --------------------------------------------------------------------------------

/// What a journal error means for the operator, in one sentence, when it is one they can fix.
pub fn journal_advice(error: &JournalError) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    let sqlite = match error {
        JournalError::Open { source, .. } | JournalError::Sql(source) => source,
        _ => return None,
    };
    let rusqlite::Error::SqliteFailure(failure, _) = sqlite else {
        return None;
    };
    Some(match failure.code {
        ErrorCode::ReadOnly => {
            "the journal is read-only to the daemon (its file or folder is not writable by the \
             daemon's user, or the filesystem is mounted read-only): the unit's \
             StateDirectory=imgsyncd gives it /var/lib/imgsyncd; check ownership and mount"
        }
        ErrorCode::DiskFull => {
            "the disk holding the journal is full: free some space; nothing is lost, every \
             outcome and file waits and is recorded once there is room"
        }
        ErrorCode::CannotOpen => {
            "the journal file cannot be opened: check that its folder exists and the daemon's \
             user may write it"
        }
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            "the journal is held by another process for longer than 10s (an `imgsyncd retry`, a \
             backup tool holding a lock?)"
        }
        ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
            "the journal file is damaged or not a journal: stop the daemon and restore it from a \
             backup (or move it aside to start afresh, which uploads every file again)"
        }
        ErrorCode::PermissionDenied => {
            "the daemon may not access the journal: check the ownership of the file and its folder"
        }
        _ => return None,
    })
}

/// The error with its advice.
pub fn journal(error: &JournalError) -> String {
    let text = match error {
        // "journal query failed: …" says nothing the advice does not say better.
        JournalError::Sql(e) if journal_advice(error).is_some() => e.to_string(),
        _ => error.to_string(),
    };
    match journal_advice(error) {
        Some(advice) => format!("{text}: {advice}"),
        None => text,
    }
}

/// Logs a journal write that failed and will be tried again: once a minute for each kind of
/// trouble (a full disk would otherwise log once per file and retry); the rest are counted and
/// summarised ([`crate::logging::journal_trouble`]).
pub fn journal_write_failed(doing: &str, path: &str, error: &JournalError) {
    let kind = journal_advice(error)
        .and_then(|advice| advice.split(':').next())
        .unwrap_or("other errors");
    let verdict = crate::logging::journal_trouble().check(kind, std::time::Instant::now());
    if verdict != crate::throttle::Verdict::Suppress {
        error!(path = %crate::journal::path_text::shown(path), "cannot {doing} (will try again): {}", journal(error));
    }
}

/// Below this much free space on the journal's filesystem, `status` says the journal cannot take
/// more: SQLite needs a few pages for each write, its WAL grows in pages too.
pub const JOURNAL_DISK_LOW: u64 = 1024 * 1024;

/// What `status` says about the disk holding `journal` when it is (nearly) full, or `None` while it
/// has room (or its space cannot be read). The daemon cannot record that in the journal itself, so
/// `status` measures it.
pub fn journal_disk(journal: &Path) -> Option<String> {
    let folder = journal_folder(journal);
    let free = free_bytes(folder)?;
    (free < JOURNAL_DISK_LOW).then(|| {
        format!(
            "the disk holding the journal ({}) is full: {} free: free some space; nothing is lost, \
             files dropped meanwhile are taken once there is room",
            folder.display(),
            crate::adapters::human_size(free)
        )
    })
}

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

// ---- the journal's folder -----------------------------------------------------------------------

/// The unit's StateDirectory=: the one folder its ProtectSystem=strict leaves writable.
const STATE_DIRECTORY: &str = "/var/lib/imgsyncd";

/// The folder holding `journal` (`.` for a bare file name).
pub fn journal_folder(journal: &Path) -> &Path {
    journal
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// May this process write `path` (and, for a folder, create files in it)? Asks the kernel
/// (`access(2)`): nothing is created or changed. A read-only filesystem answers EROFS even to
/// root.
fn may_write(path: &Path, folder: bool) -> std::io::Result<()> {
    use rustix::fs::Access;
    let mode = match folder {
        true => Access::WRITE_OK | Access::EXEC_OK,
        false => Access::WRITE_OK,
    };
    rustix::fs::access(path, mode).map_err(std::io::Error::from)
}

/// What stands in the way of the daemon writing the journal `journal`, as `check` says it, or
/// `None` when this process may: its folder (or, while that does not exist yet, the folder `run`
/// would create it in) and the files the daemon keeps there (the journal, its `-wal` and `-shm`,
/// its `.lock`) as far as they exist. Creates and changes nothing.
pub fn journal_unwritable(journal: &Path) -> Option<String> {
    let folder = journal_folder(journal);
    match may_write(folder, true) {
        Ok(()) => {}
        // `run` creates a missing folder: it needs the nearest one that exists to be writable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let existing = folder
                .ancestors()
                .skip(1)
                .map(|a| match a.as_os_str().is_empty() {
                    true => Path::new("."),
                    false => a,
                })
                .find(|a| std::fs::symlink_metadata(a).is_ok())?;
            let error = may_write(existing, true).err()?;
            return Some(format!(
                "the journal's folder {} does not exist, and {} cannot be written to create it: \
                 {error}: {}",
                folder.display(),
                existing.display(),
                journal_folder_advice(folder, &error, true)
            ));
        }
        Err(error) => {
            return Some(format!(
                "the journal's folder {} is not writable by this process: {error}: {}",
                folder.display(),
                journal_folder_advice(folder, &error, false)
            ));
        }
    }
    let beside = |suffix: &str| {
        let mut name = journal.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    for file in [
        journal.to_path_buf(),
        beside("-wal"),
        beside("-shm"),
        beside(".lock"),
    ] {
        if std::fs::symlink_metadata(&file).is_err() {
            continue;
        }
        if let Err(error) = may_write(&file, false) {
            let advice = match error.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "give it to the daemon's user (`chown imgsyncd:imgsyncd {}`; the unit runs \
                     as User=imgsyncd)",
                    file.display()
                ),
                _ => journal_folder_advice(folder, &error, false),
            };
            return Some(format!(
                "the journal's file {} is not writable by this process: {error}: {advice}",
                file.display()
            ));
        }
    }
    None
}

/// What to do when the journal's folder `folder` (`missing`: which does not exist yet) cannot be
/// written for `error`. A read-only filesystem is most often systemd's ProtectSystem=strict,
/// which leaves only the unit's StateDirectory= writable.
pub fn journal_folder_advice(folder: &Path, error: &std::io::Error, missing: bool) -> String {
    let shown = folder.display();
    let create = format!("install -d -o imgsyncd -g imgsyncd -m 0750 {shown}");
    match error.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => format!(
            "under systemd, the unit's ProtectSystem=strict makes every folder read-only but \
             {STATE_DIRECTORY} (StateDirectory=): for a journal elsewhere, {}add \
             `ReadWritePaths={shown}` in a drop-in (`systemctl edit imgsyncd`, under [Service]), \
             or move the journal into {STATE_DIRECTORY}; outside systemd, mount the filesystem \
             read-write",
            match missing {
                true => format!("create the folder (`{create}`), then "),
                false => String::new(),
            }
        ),
        std::io::ErrorKind::PermissionDenied if missing => {
            format!("create it for the daemon's user (`{create}`)")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "give it to the daemon's user (`chown imgsyncd:imgsyncd {shown}`; the unit runs as \
             User=imgsyncd), or move the journal into {STATE_DIRECTORY}"
        ),
        std::io::ErrorKind::StorageFull => "the disk holding the journal is full".to_string(),
        _ if missing => format!("create it for the daemon's user (`{create}`)"),
        _ => format!(
            "check that {shown} is a folder the daemon's user may write (`{create}` makes one)"
        ),
    }
}

/// The advice for the daemon's lock file `lock` (beside the journal) that could not be made or
/// opened for `error`, starting with ": ". [`journal_folder_advice`] for the lock's folder.
pub fn journal_lock_advice(lock: &Path, error: &std::io::Error) -> String {
    let folder = journal_folder(lock);
    let missing = std::fs::symlink_metadata(folder).is_err();
    format!(": {}", journal_folder_advice(folder, error, missing))
}

// ---- clocks -------------------------------------------------------------------------------------

/// How far this host's clock (`now_ms`) is ahead of the vendor's (its answer's `Date` header),
/// in milliseconds; `None` without a readable header.
pub fn clock_skew_ms(headers: &reqwest::header::HeaderMap, now_ms: i64) -> Option<i64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    let theirs_ms = theirs
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as i64;
    Some(now_ms - theirs_ms)
}

/// The hint for a refused timestamp: by how much and which way the clock is off, when known.
pub fn clock_advice(vendor: &str, skew_ms: Option<i64>) -> String {
    match skew_ms {
        // The Date header has whole seconds.
        Some(skew) if skew.abs() >= 2_000 => {
            let by = humantime::format_duration(std::time::Duration::from_secs(
                (skew.unsigned_abs() / 1000).max(1),
            ));
            let way = if skew > 0 { "ahead of" } else { "behind" };
            format!(
                "; this host's clock is {by} {way} {vendor}'s (from its Date header): fix NTP \
                 (`timedatectl set-ntp true`, chrony)"
            )
        }
        Some(_) => format!(
            "; this host's clock agrees with {vendor}'s Date header to the second, so the \
             timestamp was refused for another reason (a proxy delaying requests?)"
        ),
        None => format!(
            "; this host's clock is off by more than 5 minutes from {vendor}'s: fix NTP \
             (`timedatectl set-ntp true`, chrony)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_measures_and_says_what_to_set() {
        let system = WatchLimits {
            system: Some(8192),
            namespace: Some(8192),
        };
        let text = inotify_advice(system, 8190, Some(8000), Path::new("/srv/drop"), 12_000);
        assert_eq!(
            text,
            "out of inotify watches: fs.inotify.max_user_watches is 8192, this user's processes \
             hold 8190 (8000 by imgsyncd), and /srv/drop has 12000 folders to watch: set \
             fs.inotify.max_user_watches=524288 (`sysctl -w fs.inotify.max_user_watches=524288`, \
             and the line `fs.inotify.max_user_watches=524288` in /etc/sysctl.d/90-imgsyncd.conf \
             to keep it), or give this watch `poll:`"
        );
        assert_eq!(suggested_max_watches(500_000, 300_000), 2_097_152);
        let container = WatchLimits {
            system: Some(524_288),
            namespace: Some(20),
        };
        let text = inotify_advice(container, 20, Some(20), Path::new("/srv/drop"), 31);
        assert!(
            text.starts_with(
                "out of inotify watches: this user namespace's user.max_inotify_watches is 20, \
                 this user's processes hold 20 (20 by imgsyncd), and /srv/drop has 31 folders \
                 to watch: set user.max_inotify_watches=524288 where the namespace"
            ),
            "{text}"
        );
    }

    #[test]
    fn our_own_inotify_watches_are_counted() {
        use notify::Watcher;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let before = inotify_watches_of(Path::new("/proc/self")).unwrap();
        let mut watcher =
            notify::RecommendedWatcher::new(|_| {}, notify::Config::default()).unwrap();
        watcher
            .watch(dir.path(), notify::RecursiveMode::Recursive)
            .unwrap();
        let during = inotify_watches_of(Path::new("/proc/self")).unwrap();
        // Tests run at once may hold watches of their own: at least our three folders more.
        assert!(during >= before + 3, "{before} then {during}");
        assert_eq!(folders_under(dir.path()), 3);
        drop(watcher);
    }

    #[test]
    fn journal_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        drop(crate::journal::Journal::open(&path).unwrap());
        // Read-only: a connection that may not write.
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let e = JournalError::Sql(conn.execute("DELETE FROM files", []).unwrap_err());
        assert!(
            journal(&e).contains("read-only to the daemon"),
            "{}",
            journal(&e)
        );
        // Full: a database that may not grow.
        let conn = rusqlite::Connection::open(dir.path().join("full.sqlite3")).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB); PRAGMA max_page_count = 2;")
            .unwrap();
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap_err();
        let e = JournalError::Sql(full);
        assert!(
            journal(&e).contains("disk holding the journal is full"),
            "{}",
            journal(&e)
        );
        assert!(journal(&e).contains("nothing is lost"));
    }

    #[test]
    fn a_journal_folder_is_probed_without_being_touched() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(journal_unwritable(&dir.path().join("j.sqlite3")), None);
        // Missing, in a folder this process may write: `run` makes it.
        let missing = dir.path().join("a/b");
        assert_eq!(journal_unwritable(&missing.join("j.sqlite3")), None);
        assert!(!dir.path().join("a").exists(), "nothing created");
        assert_eq!(journal_folder(Path::new("j.sqlite3")), Path::new("."));

        let erofs = std::io::Error::from_raw_os_error(libc::EROFS);
        let advice = journal_folder_advice(Path::new("/srv/imgsyncd"), &erofs, false);
        assert!(advice.contains("ProtectSystem=strict"), "{advice}");
        assert!(
            advice
                .contains("`ReadWritePaths=/srv/imgsyncd` in a drop-in (`systemctl edit imgsyncd`"),
            "{advice}"
        );
        let advice = journal_folder_advice(Path::new("/srv/imgsyncd"), &erofs, true);
        assert!(
            advice.contains("create the folder (`install -d -o imgsyncd -g imgsyncd -m 0750 /srv/imgsyncd`), then add `ReadWritePaths=/srv/imgsyncd`"),
            "{advice}"
        );
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        let advice = journal_lock_advice(Path::new("/srv/imgsyncd/j.sqlite3.lock"), &eacces);
        assert!(
            advice.starts_with(": create it for the daemon's user (`install -d"),
            "{advice}"
        );
    }

    #[test]
    fn a_refused_timestamp_says_how_far_off_the_clock_is() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::DATE,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        let theirs = 784_111_777_000;
        let ahead = clock_skew_ms(&headers, theirs + 7 * 60_000 + 12_000);
        assert_eq!(ahead, Some(432_000));
        assert_eq!(
            clock_advice("Kingdee", ahead),
            "; this host's clock is 7m 12s ahead of Kingdee's (from its Date header): fix NTP \
             (`timedatectl set-ntp true`, chrony)"
        );
        let behind = clock_skew_ms(&headers, theirs - 3_600_000);
        assert!(clock_advice("Kingdee", behind).contains("1h behind Kingdee's"));
        assert!(clock_advice("Kingdee", Some(400)).contains("agrees with Kingdee's"));
        assert!(clock_advice("Kingdee", None).contains("more than 5 minutes"));
    }
}
