//! What a settled file turned out to be, recorded in the journal, and the line that says so.

use std::path::{Path, PathBuf};

use tracing::info;

use crate::image::ImageInfo;
use crate::journal::{Journal, Observation, Observed, RejectedFile, Result, path_text};

use super::settle::Stamp;

/// A settled file, examined.
#[derive(Debug)]
pub(super) enum Found {
    /// Not something the vendor takes, and why.
    Refused {
        path: PathBuf,
        reason: String,
        stamp: Option<Stamp>,
    },
    Image {
        path: PathBuf,
        stamp: Stamp,
        sha256: String,
        info: ImageInfo,
    },
}

impl Found {
    pub(super) fn path(&self) -> &Path {
        match self {
            Found::Refused { path, .. } | Found::Image { path, .. } => path,
        }
    }
}

/// What the journal made of a file.
#[derive(Debug)]
pub(super) enum Recorded {
    /// Recorded as rejected; `changed` is false when the record already said so.
    Refused {
        changed: bool,
    },
    Image(Observed),
}

/// What a watch records its files with.
#[derive(Debug, Clone)]
pub(super) struct Intake {
    pub watch_root: String,
    pub vendor: String,
    pub kind: &'static str,
    pub delete_unused: bool,
    pub reuse_copies: bool,
}

impl Intake {
    pub(super) fn record(&self, journal: &mut Journal, found: &Found) -> Result<Recorded> {
        let path = path_text::to_text(found.path()).into_owned();
        let is_present = |p: &str| std::fs::symlink_metadata(path_text::to_path(p)).is_ok();
        match found {
            Found::Refused { reason, stamp, .. } => journal
                .reject(
                    &RejectedFile {
                        path: &path,
                        watch_root: &self.watch_root,
                        vendor: &self.vendor,
                        kind: self.kind,
                        stamp: *stamp,
                        reason,
                        delete_unused: self.delete_unused,
                    },
                    &is_present,
                )
                .map(|changed| Recorded::Refused { changed }),
            Found::Image {
                stamp,
                sha256,
                info,
                ..
            } => {
                let observation = Observation {
                    path: &path,
                    watch_root: &self.watch_root,
                    vendor: &self.vendor,
                    kind: self.kind,
                    stamp: *stamp,
                    sha256,
                    format: info.format.mime_subtype(),
                    width: info.width,
                    height: info.height,
                    delete_unused: self.delete_unused,
                    reuse_copies: self.reuse_copies,
                };
                journal
                    .observe(&observation, &is_present)
                    .map(Recorded::Image)
            }
        }
    }
}

/// The line that says what became of an image the journal recorded.
pub(super) fn log_observed(found: &Found, vendor: &str, observed: Observed) {
    let Found::Image {
        path, stamp, info, ..
    } = found
    else {
        return;
    };
    let shown = path_text::shown_path(path);
    if matches!(
        observed,
        Observed::Queued | Observed::Changed | Observed::RestoredAfterDelete
    ) {
        crate::metrics::file_examined(vendor, "taken");
    }
    match observed {
        Observed::Unchanged => {}
        Observed::Queued => info!(
            path = %shown, vendor = %vendor, size = stamp.size, format = %info.format, outcome = "taken",
            "taken: queued for upload"
        ),
        Observed::Changed => info!(
            path = %shown, vendor = %vendor, size = stamp.size,
            "content changed: queued for upload; the old remote copy is replaced once it is synced"
        ),
        Observed::Moved { from } => info!(
            path = %shown, vendor = %vendor, from = %path_text::shown(&from),
            "renamed: record moved, nothing sent"
        ),
        Observed::Restored => info!(
            path = %shown, vendor = %vendor,
            "back on disk with its remote copy still there: synced again, nothing sent"
        ),
        Observed::RestoredAfterDelete => info!(
            path = %shown, vendor = %vendor,
            "back on disk but its remote copy is deleted, being deleted or expired: queued for upload"
        ),
    }
}
