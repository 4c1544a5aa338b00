//! The journal rendered for people: the text forms of `status`, `files` and `history`.

use std::fmt::Write;

use serde::Serialize;

use crate::config::Config;
use crate::journal::path_text::shown;
use crate::journal::{
    FileRow, HistoryRow, Journal, JournalError, OldestPending, Status, UnconfiguredVendor,
};

/// Whether a daemon holds the journal (`status --json`'s `daemon`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DaemonState {
    pub running: bool,
    /// The pid in the journal's lock file while a daemon (or `scan`) holds it.
    pub pid: Option<u32>,
}

/// `status --json`: the journal's [`Status`] with what only the CLI can add.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub status: Status,
    /// The file whose job has waited longest (null when the queue is empty).
    pub oldest_pending: Option<OldestPending>,
    pub daemon: DaemonState,
    /// Set while the disk holding the journal is full: what that means and what to do (files
    /// dropped meanwhile are not in the counts until there is room to record them).
    pub journal_disk_full: Option<String>,
    /// Vendors no longer in the config whose jobs still wait: nothing sends them (their files
    /// stay pending) until the vendor is configured again under that name.
    pub unconfigured_vendors: Vec<UnconfiguredVendor>,
}

impl StatusReport {
    /// `status` read from `journal` under `config` as it is now: the paused vendors, the queue
    /// and its oldest file are those of the vendors the config names (a vendor taken out of it
    /// keeps its files in the counts, and its jobs, which nothing sends until it is back).
    pub fn read(journal: &Journal, config: &Config) -> Result<StatusReport, JournalError> {
        let vendors: Vec<String> = config.vendors.keys().cloned().collect();
        let pid = crate::daemon::journal_holder(&config.journal);
        Ok(StatusReport {
            status: journal.status_of(&vendors)?,
            oldest_pending: journal.oldest_pending_of(&vendors)?,
            daemon: DaemonState {
                running: pid.is_some(),
                pid,
            },
            journal_disk_full: crate::diagnose::journal_disk(&config.journal),
            unconfigured_vendors: journal.unconfigured_vendors(&vendors)?,
        })
    }
}

/// `status`: whether the daemon runs, then the journal's overview.
pub fn status_report(report: &StatusReport) -> String {
    let mut out = match report.daemon.pid {
        Some(pid) => format!("daemon: running (pid {pid})\n"),
        None => "daemon: not running (no process holds the journal)\n".to_string(),
    };
    if let Some(full) = &report.journal_disk_full {
        out.push_str(&format!("JOURNAL DISK FULL: {full}\n"));
    }
    out.push_str(&status(&report.status));
    for waiting in &report.unconfigured_vendors {
        out.push_str(&format!(
            "NOT CONFIGURED: {} jobs wait for vendor {}, which is not in the config: nothing \
             sends them until it is configured again under that name\n",
            waiting.jobs, waiting.vendor
        ));
    }
    if let Some(oldest) = &report.oldest_pending {
        let retried = match oldest.attempts {
            0 => String::new(),
            n => format!(", {n} attempts so far"),
        };
        let line = format!(
            "oldest pending: {} ({} to {}, queued {}{retried})",
            shown(&oldest.path),
            oldest.op,
            oldest.vendor,
            oldest.since
        );
        // Right after the queue line.
        match out
            .find("\nqueue:")
            .and_then(|at| out[at + 1..].find('\n').map(|e| at + 1 + e + 1))
        {
            Some(end) => out.insert_str(end, &format!("  {line}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

pub fn status(status: &Status) -> String {
    let mut out = String::new();
    let counts: Vec<String> = status
        .files
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(out, "files: {}", counts.join(", "));
    for (vendor, states) in &status.by_vendor {
        let counts: Vec<String> = states
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(out, "  {vendor}: {}", counts.join(", "));
    }
    match status.oldest_pending_s {
        Some(age) => {
            let _ = writeln!(
                out,
                "queue: {} jobs, oldest waiting {age}s",
                status.queued_jobs
            );
        }
        None => {
            let _ = writeln!(out, "queue: empty");
        }
    }
    if status.expired_keys > 0 {
        let _ = writeln!(
            out,
            "{} synced files hold keys that have expired (past their transaction's hour, no record \
             holds them): the vendor no longer honours them; `imgsyncd retry PATH` uploads one anew",
            status.expired_keys
        );
    }
    if status.held_deletes > 0 {
        let _ = writeln!(
            out,
            "held deletes: {} (check the folders, then `imgsyncd retry --held` to carry them out)",
            status.held_deletes
        );
    }
    if status.paused_vendors.is_empty() {
        let _ = writeln!(out, "paused vendors: none");
    }
    for paused in &status.paused_vendors {
        let _ = writeln!(
            out,
            "PAUSED {} since {}: {} (next try {})",
            paused.vendor, paused.since, paused.reason, paused.next_probe_at
        );
    }
    for paused in &status.paused_watches {
        let _ = writeln!(
            out,
            "PAUSED watch {} since {}: {} (no remote copy is deleted until it is sorted out)",
            paused.path, paused.since, paused.reason
        );
    }
    for degraded in &status.degraded_watches {
        let _ = writeln!(
            out,
            "WATCH {} since {}: {}",
            degraded.path, degraded.since, degraded.reason
        );
    }
    if !status.problems.is_empty() {
        let _ = writeln!(
            out,
            "needs attention (`imgsyncd files --state failed` and `--state rejected` list all):"
        );
        for p in &status.problems {
            let kept = p
                .last_good_copy
                .as_deref()
                .map(|copy| format!(" (its last good copy {copy} is kept at the vendor)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {}: {}{kept}",
                p.state,
                shown(&p.path),
                p.error.as_deref().unwrap_or("")
            );
        }
    }
    if !status.recent_errors.is_empty() {
        let _ = writeln!(out, "recent errors:");
        for e in &status.recent_errors {
            let _ = writeln!(
                out,
                "  {} {} {} {}: {}",
                e.at,
                e.vendor,
                e.op,
                shown(&e.path),
                e.message.as_deref().unwrap_or(&e.outcome)
            );
        }
    }
    out
}

pub fn files(rows: &[FileRow]) -> String {
    let mut out = String::new();
    for row in rows {
        let result = row
            .url
            .as_deref()
            .or(row.file_token.as_deref())
            .or(row.key.as_deref())
            .unwrap_or("-");
        let _ = write!(
            out,
            "{:<8} {:<10} {} {}",
            row.state,
            row.vendor,
            shown(&row.path),
            result
        );
        if row.remote_deleted == Some(true) {
            out.push_str(" (deleted at vendor)");
        }
        if let Some(error) = &row.error {
            let _ = write!(out, " — {error}");
        }
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("no files\n");
    }
    out
}

pub fn history(path: &str, file: Option<&FileRow>, rows: &[HistoryRow]) -> String {
    let mut out = format!("{}\n", shown(path));
    if let Some(file) = file {
        let _ = write!(out, "  now {}", file.state);
        if let Some(error) = &file.error {
            let _ = write!(out, ": {error}");
        }
        out.push('\n');
    }
    for row in rows {
        let _ = write!(out, "  {} {:<10} {:<13}", row.at, row.op, row.outcome);
        if let Some(status) = row.http_status {
            let _ = write!(out, " HTTP {status}");
        }
        if let Some(code) = &row.vendor_code {
            let _ = write!(out, " code {code}");
        }
        if let Some(message) = &row.message {
            let _ = write!(out, " {message}");
        }
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("  no attempts yet\n");
    }
    out
}
