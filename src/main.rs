//! The `imgsyncd` binary: parse the command line, set up logging, call the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use imgsyncd::adapters::{Adapter, Outcome, http_client};
use imgsyncd::config::{Config, DEFAULT_CONFIG_PATH, OnRemove};
use imgsyncd::journal::{
    FileFilter, FileStamp, FileState, Journal, Presence, RetryOutcome, path_text,
};
use imgsyncd::logging::{self, LogFormat};
use imgsyncd::sandbox::{Sandbox, SandboxOptions};
use imgsyncd::watch::presence;
use imgsyncd::{daemon, dev, report};

#[derive(Parser)]
#[command(
    name = "imgsyncd",
    version,
    about = "Keeps drop folders mirrored to vendor image stores"
)]
struct Cli {
    /// The config file.
    #[arg(short, long, global = true, env = "IMGSYNCD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (as systemd runs it).
    Run {
        /// Run against the built-in sandbox with no config and no credentials, in ./imgsyncd-dev/.
        #[arg(long)]
        dev: bool,
        /// auto: journald's native fields under systemd, else text; text: no colour off a terminal
        /// or with NO_COLOR; json: one object a line.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
    },
    /// One pass: reconcile every watch, drain the queue, exit (0 all synced, 1 some not).
    Scan,
    /// Counts per state and vendor, oldest pending age, paused vendors, recent errors.
    Status {
        /// Print one JSON object (files, by_vendor, oldest_pending_s, paused_vendors, …).
        #[arg(long)]
        json: bool,
    },
    /// One row per file with what the vendor returned.
    Files {
        /// Print a JSON array, one object a file.
        #[arg(long)]
        json: bool,
        /// Only the files of this vendor (its name in the config).
        #[arg(long)]
        vendor: Option<String>,
        /// Only the files in this state: pending, synced, rejected, failed or removed.
        #[arg(long, value_parser = parse_state)]
        state: Option<FileState>,
    },
    /// Every attempt for one file.
    History {
        path: PathBuf,
        /// Print a JSON array, one object an attempt.
        #[arg(long)]
        json: bool,
    },
    /// Put failed files back in the queue (or confirm held deletes with --held).
    Retry {
        /// Every failed file.
        #[arg(long, conflicts_with_all = ["held", "paths"])]
        failed: bool,
        /// Carry out the deletes held because too many files vanished at once.
        #[arg(long, conflicts_with = "paths")]
        held: bool,
        /// The files to put back (their paths as `files` shows them).
        #[arg(required_unless_present_any = ["failed", "held"])]
        paths: Vec<PathBuf>,
    },
    /// Validate the config; --online also fetches a token from each vendor.
    Check {
        /// Also fetch a token from each vendor, to test its credentials.
        #[arg(long)]
        online: bool,
    },
    /// The vendor emulator on its own.
    Sandbox {
        /// The address to serve on (loopback unless you mean otherwise).
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
    },
}

fn parse_state(text: &str) -> Result<FileState, String> {
    FileState::parse(text)
        .ok_or_else(|| format!("`{text}` is not one of pending, synced, rejected, failed, removed"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Run { log_format, .. } => *log_format,
        _ => LogFormat::Auto,
    };
    let to_journald = logging::init(log_format);
    match execute(cli) {
        Ok(code) => code,
        // Under systemd the error goes where the log goes, as an error (`journalctl -p err`).
        Err(e) if to_journald => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("imgsyncd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is the journal (one writer) and reading files: a few threads keep up,
        // and each thread more would cost memory, not speed.
        .max_blocking_threads(8)
        .build()
        .context("cannot start the async runtime")
}

/// glibc gives every thread that allocates an arena of its own, which keeps memory that a
/// backlog once needed. One is enough for a daemon whose work is I/O: with two, each kept the
/// fragments of its own peak, and 100 000 files copied in peaked at 1.15-1.23x the memory of
/// 1 000 against 1.12-1.19x with one (four runs each, `cargo bench --bench service -- memory`).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn execute(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { dev: true, .. } => runtime()?.block_on(run_dev()),
        Command::Run { dev: false, .. } => {
            let config = load(&cli.config)?;
            let runtime = runtime()?;
            let ran = runtime.block_on(daemon::run(config));
            // A watch cut short at the stop may leave a file being hashed on the blocking pool:
            // dropping the runtime would wait for it, past systemd's stop timeout.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan => {
            let config = load(&cli.config)?;
            let report = runtime()?.block_on(daemon::scan(config))?;
            let counts: Vec<String> = report
                .counts
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            emit(&counts.join(", "));
            Ok(if report.all_synced() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { json } => {
            let config = Config::load_without_secrets(&cli.config)?;
            let journal = Journal::open_read_only(&config.journal)?;
            let status = report::StatusReport::read(&journal, &config)?;
            if json {
                emit(&serde_json::to_string_pretty(&status)?);
            } else {
                emit(&report::status_report(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Files {
            json,
            vendor,
            state,
        } => {
            let config = Config::load_without_secrets(&cli.config)?;
            let journal = Journal::open_read_only(&config.journal)?;
            let rows = journal.files(&FileFilter {
                vendor: vendor.clone(),
                state,
                path: None,
            })?;
            // A name mistyped would list nothing, and a script would read "no failures".
            let unknown = |v: &String| {
                rows.is_empty()
                    && !config.vendors.contains_key(v)
                    && journal
                        .files(&FileFilter {
                            vendor: Some(v.clone()),
                            state: None,
                            path: None,
                        })
                        .is_ok_and(|all| all.is_empty())
            };
            if let Some(vendor) = vendor.filter(unknown) {
                let names: Vec<&str> = config.vendors.keys().map(String::as_str).collect();
                bail!(
                    "no vendor named {vendor:?} in {} (its vendors: {}), and the journal has no file \
                     of one",
                    cli.config.display(),
                    names.join(", ")
                );
            }
            if json {
                emit(&serde_json::to_string_pretty(&rows)?);
            } else {
                emit(&report::files(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History { path, json } => {
            let journal = read_journal(&cli.config)?;
            let path = journal_path(&path);
            let Some(rows) = journal.history(&path)? else {
                bail!("the journal has no file {}", path_text::shown(&path));
            };
            if json {
                emit(&serde_json::to_string_pretty(&rows)?);
            } else {
                // A file refused before any attempt has no history: its state says why.
                let file = journal
                    .files(&FileFilter {
                        path: Some(path.clone()),
                        ..FileFilter::default()
                    })?
                    .into_iter()
                    .next();
                emit(&report::history(&path, file.as_ref(), &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            failed,
            held,
            paths,
        } => retry(&cli.config, failed, held, &paths),
        Command::Check { online } => check(&cli.config, online),
        Command::Sandbox { listen } => runtime()?.block_on(sandbox(&listen)),
    }
}

/// The journal for `status`, `files` and `history`: read only, so an operator who may only read
/// it can use them, and they never change it. The config's secrets are not needed for that, and
/// may be the daemon's alone (`${CREDENTIALS_DIRECTORY}`), so they are not read.
fn read_journal(config_path: &Path) -> Result<Journal> {
    let config = Config::load_without_secrets(config_path)?;
    Ok(Journal::open_read_only(&config.journal)?)
}

/// The absolute path the journal records for a path given on the command line.
fn journal_path(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    path_text::to_text(&absolute).into_owned()
}

fn retry(config_path: &Path, failed: bool, held: bool, paths: &[PathBuf]) -> Result<ExitCode> {
    // Only the journal and the watches: an operator's shell has no ${CREDENTIALS_DIRECTORY}.
    let config = Config::load_without_secrets(config_path)?;
    let mut journal = Journal::open_existing(&config.journal)?;
    let code = if failed {
        let n = journal.retry_failed()?;
        emit(&format!("{n} failed files queued again"));
        ExitCode::SUCCESS
    } else if held {
        // Decided under the config as it is now: a watch changed to `keep` deletes nothing.
        let watched: Vec<String> = config
            .watches
            .iter()
            .map(|w| path_text::to_text(&w.path).into_owned())
            .collect();
        for (watch, root) in config.watches.iter().zip(&watched) {
            journal.apply_remove_policy(
                root,
                &watch.vendor,
                watch.on_remove == OnRemove::Delete,
            )?;
        }
        let released = journal.release_held(
            &|root, held| match config
                .watches
                .iter()
                .zip(&watched)
                .find(|(_, w)| *w == root)
            {
                Some((watch, _)) => presence::look_at_held(watch, held),
                None => look_at_held_elsewhere(&config, &watched, held),
            },
            // A root no longer a watch vouches for nothing and is not taken as it is now: what
            // the journal knows of it stays, for the day it is a watch again. Its files are
            // judged by the watch that covers them now, or by none.
            &|root, known| match watched.iter().any(|w| w == root) {
                true => presence::root_as_it_is(&path_text::to_path(root), known).map(Some),
                false => Ok(None),
            },
        )?;
        emit(&format!(
            "{} queued; every watch root present is accepted as it now is",
            held_deletes(released.deletes_queued)
        ));
        if released.unwatched > 0 {
            emit(&format!(
                "{} withdrawn: no watch in the config covers those files any more; their \
                 records are closed, their remote copies kept",
                held_deletes(released.unwatched)
            ));
        }
        for untaken in &released.untaken {
            let record = match untaken.copy_kept {
                true => "its remote copy is kept",
                false => "its record is closed, with no copy of its content to keep",
            };
            emit(&format!(
                "{} is now {}, which its watch does not take: {record}",
                path_text::shown(&untaken.path),
                path_text::shown(&untaken.now_at)
            ));
        }
        for kept in &released.kept {
            let (what, advice) = match kept.is_root {
                true => ("watch root", "bring it back (mount it)"),
                false => ("file", "fix its access"),
            };
            emit(&format!(
                "{} kept: {what} {} {}; {advice}, then run `imgsyncd retry --held` again",
                held_deletes(kept.files),
                path_text::shown(&kept.what),
                kept.why
            ));
        }
        if released.changed > 0 {
            emit(&format!(
                "{} kept: the daemon wrote their records while they were looked at; run \
                 `imgsyncd retry --held` again",
                held_deletes(released.changed)
            ));
        }
        match released.kept.is_empty() && released.changed == 0 {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        }
    } else {
        retry_paths(&mut journal, paths)?
    };
    drop(journal);
    match daemon::poke(&config.journal) {
        Some((pid, daemon::Holder::Daemon)) => {
            emit(&format!("told the running daemon (pid {pid})"))
        }
        Some((pid, daemon::Holder::Scan)) => emit(&format!(
            "told the running `imgsyncd scan` (pid {pid}): what was queued again is sent by \
             it if it is still uploading, else by the next scan or the daemon"
        )),
        None if daemon::journal_holder(&config.journal).is_some() => emit(
            "could not signal the running daemon: `systemctl reload imgsyncd` makes it act now",
        ),
        None => {}
    }
    Ok(code)
}

/// Held files of a root that is no longer a watch (removed, or moved to a parent or a
/// subfolder): each looked at by the watch whose path holds it now, one look a watch; one that
/// no watch holds and is gone is [`Presence::Unwatched`].
fn look_at_held_elsewhere(
    config: &Config,
    watched: &[String],
    held: &[(String, Option<FileStamp>)],
) -> Vec<Presence> {
    let covering = |path: &str| {
        (0..watched.len())
            .filter(|&w| {
                path.strip_prefix(watched[w].trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|&w| watched[w].len())
    };
    let mut looks: Vec<Option<Presence>> = vec![None; held.len()];
    let mut by_watch: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (path, _)) in held.iter().enumerate() {
        match covering(path) {
            Some(w) => by_watch.entry(w).or_default().push(i),
            None => {
                looks[i] = Some(match std::fs::symlink_metadata(path_text::to_path(path)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Presence::Unwatched,
                    Err(e) => Presence::Unknown(format!("cannot look at it: {e}")),
                    Ok(_) => Presence::Present,
                })
            }
        }
    }
    for (w, files) in by_watch {
        let theirs: Vec<_> = files.iter().map(|&i| held[i].clone()).collect();
        let found = presence::look_at_held(&config.watches[w], &theirs);
        for (i, look) in files.into_iter().zip(found) {
            looks[i] = Some(look);
        }
    }
    looks
        .into_iter()
        .map(|look| look.unwrap_or_else(|| Presence::Unknown("not looked at".to_string())))
        .collect()
}

fn held_deletes(n: usize) -> String {
    match n {
        1 => "1 held delete".to_string(),
        n => format!("{n} held deletes"),
    }
}

fn retry_paths(journal: &mut Journal, paths: &[PathBuf]) -> Result<ExitCode> {
    let paths: Vec<String> = paths.iter().map(|p| journal_path(p)).collect();
    let mut code = ExitCode::SUCCESS;
    for (path, outcome) in journal.retry_paths(&paths)? {
        let path = path_text::shown(&path);
        match outcome {
            RetryOutcome::Queued => emit(&format!("{path}: queued again")),
            RetryOutcome::Reexamined => emit(&format!(
                "{path}: will be examined afresh by the daemon's next scan"
            )),
            RetryOutcome::NotFailed(state) => {
                emit(&format!("{path}: is {state}, nothing to retry"))
            }
            RetryOutcome::Unknown => {
                emit(&format!("{path}: not in the journal"));
                code = ExitCode::from(1);
            }
            RetryOutcome::RenamedOut(place) => {
                emit(&format!(
                    "{path}: is now {}, which its watch does not take; name it back to retry it",
                    path_text::shown(&place)
                ));
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

fn check(config_path: &Path, online: bool) -> Result<ExitCode> {
    let config = load(config_path)?;
    // The config may be fine and the journal still out of reach (a folder the unit's
    // ProtectSystem=strict leaves read-only): `run` would fail, and systemd restart it forever.
    if let Some(problem) = imgsyncd::diagnose::journal_unwritable(&config.journal) {
        bail!("{}: journal: {problem}", config_path.display());
    }
    emit(&format!(
        "{}: ok ({} vendors, {} watches, journal {})",
        config_path.display(),
        config.vendors.len(),
        config.watches.len(),
        config.journal.display()
    ));
    let journal_folder = imgsyncd::diagnose::journal_folder(&config.journal);
    if !journal_folder.is_dir() {
        emit(&format!(
            "note: the journal's folder {} does not exist yet: `run` creates it",
            journal_folder.display()
        ));
    }
    for warning in check_warnings(&config) {
        emit(&format!("warning: {warning}"));
    }
    if !online {
        return Ok(ExitCode::SUCCESS);
    }
    let http = http_client();
    let mut code = ExitCode::SUCCESS;
    runtime()?.block_on(async {
        for (name, vendor) in &config.vendors {
            let adapter = Adapter::new(vendor, http.clone());
            match adapter.check_online().await.outcome {
                Outcome::Done(()) => emit(&format!("{name}: token fetched, credentials work")),
                Outcome::Retry { reason, .. }
                | Outcome::Throttled { reason, .. }
                | Outcome::Unconfirmed { reason }
                | Outcome::Reauth { reason }
                | Outcome::Rejected { reason }
                | Outcome::VendorDown { reason } => {
                    emit(&format!(
                        "{name}: FAILED: {reason} (at {})",
                        vendor.base_url
                    ));
                    code = ExitCode::from(1);
                }
            }
        }
    });
    Ok(code)
}

/// What `check` warns of: a config that loads, but would not do what its author meant.
fn check_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.watches.is_empty() {
        warnings.push("no watches: the daemon would watch nothing".to_string());
    }
    for watch in &config.watches {
        let path = watch.path.display();
        match std::fs::metadata(&watch.path) {
            Ok(meta) if !meta.is_dir() => warnings.push(format!(
                "watch {path} is not a folder: the daemon waits for a folder there"
            )),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!("watch {path} does not exist (yet)"))
            }
            Err(e) => warnings.push(format!("watch {path} cannot be looked at: {e}")),
        }
        if let Some(written) = watch.poll_raised_from {
            warnings.push(format!(
                "watch {path}: poll {} is raised to {} (polled more often, the folder would be \
                 listed without pause)",
                humantime::format_duration(written),
                humantime::format_duration(imgsyncd::config::MIN_POLL)
            ));
        }
    }
    for (name, vendor) in &config.vendors {
        if !config.watches.iter().any(|w| &w.vendor == name) {
            warnings.push(format!("vendor {name} is used by no watch"));
        }
        let Some((second, minute)) = vendor.settings.kind().spec().documented_rate else {
            continue;
        };
        for (key, set, documented) in [
            ("per_second", vendor.per_second, second),
            ("per_minute", vendor.per_minute, minute),
        ] {
            if let Some(set) = set.filter(|set| *set > documented) {
                warnings.push(format!(
                    "vendors.{name}.{key}: {set} is above the {documented} the vendor documents"
                ));
            }
        }
    }
    warnings
}

async fn run_dev() -> Result<ExitCode> {
    let setup = dev::prepare(Path::new("imgsyncd-dev")).await?;
    let drops: Vec<String> = setup
        .config
        .watches
        .iter()
        .map(|w| {
            let kind = setup
                .config
                .vendors
                .get(&w.vendor)
                .map_or("?", |v| v.settings.kind().as_str());
            format!("  drop images into   {}   ({kind})", w.path.display())
        })
        .collect();
    let config = setup.config_path.display();
    emit(&format!(
        "imgsyncd dev mode: the vendor sandbox (Kingdee, Feishu lingo, Jiandaoyun) listens on {}\n\
         \n{}\n  \
         see what happened  cargo run --release -- -c {config} files\n  \
         overall state      cargo run --release -- -c {config} status\n\
         \nThe sandbox keeps uploads in memory; open a recorded Kingdee URL to see the image \
         (Feishu files: GET /open-apis/lingo/v1/files/<file_token>/download with a token; \
         Jiandaoyun keys: GET /qiniu-sandbox/files/<key>, and each gets a form record). \
         Ctrl-C stops.\n",
        setup.sandbox.base_url(),
        drops.join("\n")
    ));
    daemon::run(setup.config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout, ending with a newline. A reader that went away (`| head`) must not take the
/// daemon down, nor turn a listing into a panic, so write errors are ignored.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

async fn sandbox(listen: &str) -> Result<ExitCode> {
    let options = SandboxOptions::default();
    let (sandbox, serve): (Sandbox, _) = Sandbox::bind(listen, options.clone())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let account = &options.kingdee;
    let feishu = &options.feishu;
    let jiandaoyun = &options.jiandaoyun;
    emit(&format!(
        "sandbox on {}\nkingdee: client_id {} client_secret {} app_key {} app_secret {} domain {}\n\
         feishu: app_id {} app_secret {} (lingo: {} uploads a second, {} a minute)\n\
         jiandaoyun: api_key {} app_id {} entry_id {} (upload tokens live {}; {} calls a second \
         per interface, {} in all)",
        sandbox.base_url(),
        account.client_id,
        account.client_secret,
        account.app_key,
        account.app_secret,
        account.domain,
        feishu.app_id,
        feishu.app_secret,
        options.feishu_per_second,
        options.feishu_per_minute,
        jiandaoyun.api_key,
        jiandaoyun.app_id,
        jiandaoyun.entry_id,
        humantime::format_duration(options.jiandaoyun_token_ttl),
        options.jiandaoyun_per_second,
        options.jiandaoyun_company_per_second,
    ));
    tokio::select! {
        served = serve => served.context("the sandbox stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
