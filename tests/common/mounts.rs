//! Mounts made by the tests that take a share away from under a watch (a tmpfs standing for the
//! share, a bind mount standing for the watch root on it), each undone when dropped so a failed
//! test leaves no mount behind. Mounting needs root: CI runs as root, and a test skips itself
//! (saying why on stderr) where it may not mount. Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount made for a test; unmounted when dropped, lazily: a daemon still holding a file open on
/// it, or a mount inside it, does not keep it mounted.
#[derive(Debug)]
pub struct Mount {
    at: PathBuf,
}

impl Mount {
    /// A fresh, empty tmpfs at `at`.
    pub fn tmpfs(at: &Path) -> Result<Mount, String> {
        mount(["-t", "tmpfs", "none"].map(String::from), at)
    }

    /// A fresh tmpfs at `at` that holds at most `size` (`mount`'s notation: `8m`).
    pub fn tmpfs_of(size: &str, at: &Path) -> Result<Mount, String> {
        let args = ["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"].map(String::from);
        mount(args, at)
    }

    /// The folder `from` mounted again at `at`.
    pub fn bind(from: &Path, at: &Path) -> Result<Mount, String> {
        mount(["--bind".to_string(), from.display().to_string()], at)
    }

    /// Where it is mounted.
    pub fn at(&self) -> &Path {
        &self.at
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn mount<const N: usize>(args: [String; N], at: &Path) -> Result<Mount, String> {
    let out = Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(Mount {
        at: at.to_path_buf(),
    })
}

/// `Mount::tmpfs(at)`, or `None` after saying on stderr why the test is skipped.
pub fn tmpfs_or_skip(at: &Path) -> Option<Mount> {
    Mount::tmpfs(at)
        .map_err(|why| eprintln!("skipped: cannot mount a tmpfs: {why}"))
        .ok()
}
