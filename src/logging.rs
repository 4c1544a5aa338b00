//! Where the log goes and what it looks like: journald's native protocol when systemd started us
//! (fields an operator can filter on: `journalctl -u imgsyncd IMGSYNCD_VENDOR=erp`), plain text
//! (colour only on a terminal, and never with `NO_COLOR`), or one JSON object a line.
//!
//! The fields a decision carries are the same in every format: `vendor`, `path`, `outcome`, `job`
//! and `attempt` (in journald: `IMGSYNCD_VENDOR`, `IMGSYNCD_PATH`, …). Levels mean something:
//! info for each file taken and synced, warn for each retry, error for each rejection, failure
//! and paused vendor. A storm of identical lines is cut to a few and summarised ([`storms`]).

use std::io::IsTerminal;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tracing::{error, warn};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::throttle::LogThrottle;

/// `run --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald's native protocol when systemd connected stderr to the journal, text otherwise.
    Auto,
    Text,
    Json,
}

/// The prefix of our fields in journald: `vendor` is `IMGSYNCD_VENDOR`.
pub const JOURNALD_FIELD_PREFIX: &str = "IMGSYNCD";

/// Where the log goes, as decided from the format asked for and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Text { ansi: bool, time: bool },
    Json,
}

/// Decides the sink. `under_journald`: systemd connected stderr to the journal; `terminal`:
/// stderr is one; `no_color`: the value of `NO_COLOR`.
pub fn choose(
    format: LogFormat,
    under_journald: bool,
    terminal: bool,
    no_color: Option<&str>,
) -> Sink {
    // https://no-color.org: present and not empty disables colour.
    let ansi = terminal && no_color.is_none_or(str::is_empty);
    match format {
        LogFormat::Json => Sink::Json,
        LogFormat::Auto if under_journald => Sink::Journald,
        LogFormat::Auto | LogFormat::Text => Sink::Text { ansi, time: true },
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds its
/// `device:inode`, and a child that inherited the variable but not the stream must not believe it.
pub fn stderr_is_journal_stream() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value
        .to_str()
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a zeroed stat buffer we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut stat) } != 0 {
        return false;
    }
    stat.st_dev as u64 == dev && stat.st_ino as u64 == ino
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Sets up the process's log. `IMGSYNCD_LOG` filters (`info` by default, `debug` for more).
/// Returns whether it goes to journald's native protocol (where a fatal error must go too, at
/// its priority, rather than to stderr, which journald files as info).
pub fn init(format: LogFormat) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGSYNCD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var("NO_COLOR").ok();
    let sink = choose(
        format,
        stderr_is_journal_stream(),
        std::io::stderr().is_terminal(),
        no_color.as_deref(),
    );
    let mut native = false;
    let (layer, fallback) = match sink {
        Sink::Journald => match journald() {
            Ok(layer) => {
                native = true;
                (layer, None)
            }
            // The stream is the journal's, so the text still reaches it, only without fields;
            // journald stamps each line, so no time of our own.
            Err(e) => (text(false, false), Some(e)),
        },
        Sink::Text { ansi, time } => (text(ansi, time), None),
        Sink::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false)
                .with_writer(std::io::stderr);
            (Box::new(layer) as BoxedLayer, None)
        }
    };
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init();
    if let Some(e) = fallback {
        warn!("cannot write to journald natively ({e}); logging plain text to it instead");
    }
    native
}

fn text(ansi: bool, time: bool) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(OneLine { ansi })
        .with_target(false)
        .with_ansi(ansi);
    if time {
        Box::new(layer)
    } else {
        Box::new(layer.without_time())
    }
}

/// Stderr for the text log, one event a line. The formatter hands each event over whole, in one
/// write; a line break or another control character inside it (a file name may hold one) is
/// written as its escape, so it can neither split the line nor forge another. The colours' own
/// escape sequences are kept on a terminal.
struct OneLine {
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OneLine {
    type Writer = OneLine;

    fn make_writer(&'a self) -> OneLine {
        OneLine { ansi: self.ansi }
    }
}

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut line = escape_controls(body, self.ansi).into_owned();
        if body.len() < text.len() {
            line.push('\n');
        }
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `text` with every control character written as its escape (`\n`, `\u{1b}`), but for ESC
/// when `keep_esc` (the colours of a terminal).
pub fn escape_controls(text: &str, keep_esc: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(keep_esc && c == '\u{1b}');
    if !text.chars().any(escaped) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if escaped(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn journald() -> std::io::Result<BoxedLayer> {
    use tracing_journald::{Priority, PriorityMappings};
    let layer = tracing_journald::layer()?
        .with_field_prefix(Some(JOURNALD_FIELD_PREFIX.into()))
        .with_syslog_identifier("imgsyncd".into())
        // journald's own meaning of the levels: info is 6, not "notice".
        .with_priority_mappings(PriorityMappings {
            info: Priority::Informational,
            debug: Priority::Debug,
            ..PriorityMappings::new()
        });
    Ok(Box::new(layer))
}

/// Throttles the lines a storm repeats (thousands of files rejected, every queued job of a
/// vendor that refuses us): a few a minute per key, the rest counted and summarised by
/// [`summarise`]. Keys read as the subject of "N more … were not logged".
pub fn storms() -> &'static Arc<LogThrottle> {
    static STORMS: LazyLock<Arc<LogThrottle>> =
        LazyLock::new(|| Arc::new(LogThrottle::new(Duration::from_secs(60), 10)));
    &STORMS
}

/// Throttles failed journal writes: one line a minute per kind of trouble (keys: the advice's
/// first clause, "the disk holding the journal is full"), the rest summarised.
pub fn journal_trouble() -> &'static Arc<LogThrottle> {
    static TROUBLE: LazyLock<Arc<LogThrottle>> =
        LazyLock::new(|| Arc::new(LogThrottle::new(Duration::from_secs(60), 1)));
    &TROUBLE
}

/// The key for a vendor's rejections in [`storms`].
pub fn rejections_of(vendor: &str) -> String {
    format!("rejections for {vendor}")
}

/// The key for a vendor's pause reports in [`storms`].
pub fn pauses_of(vendor: &str) -> String {
    format!("pause reports for {vendor}")
}

/// What a throttle's keys are, for its summary lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// [`storms`]: rejections and pauses, summarised as errors.
    Storms,
    /// The worker's retry lines (keys `vendor: reason`), summarised as warnings.
    Retries,
    /// [`journal_trouble`]: failed journal writes, summarised as errors.
    JournalTrouble,
}

/// Writes one line per key that held lines back, once its window has ended. Idle, it waits for
/// the first line held back: no timer runs while nothing is suppressed.
pub async fn summarise(throttle: Arc<LogThrottle>, kind: Summary) {
    loop {
        match throttle.next_flush() {
            None => throttle.held_back().await,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                tokio::time::sleep(wait).await;
                for (key, count) in throttle.flush(Instant::now()) {
                    match kind {
                        Summary::Storms => error!(
                            "{count} more {key} were not logged in the last minute; \
                             `imgsyncd status` and `imgsyncd files --state rejected` list them"
                        ),
                        Summary::Retries => {
                            warn!("{count} more retries were not logged in the last minute: {key}")
                        }
                        Summary::JournalTrouble => error!(
                            "{count} more journal writes failed in the last minute ({key}); \
                             each is tried again until it succeeds"
                        ),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_journald_only_on_the_journals_stream() {
        assert_eq!(choose(LogFormat::Auto, true, false, None), Sink::Journald);
        assert_eq!(
            choose(LogFormat::Auto, false, false, None),
            Sink::Text {
                ansi: false,
                time: true
            }
        );
        assert_eq!(choose(LogFormat::Json, true, true, None), Sink::Json);
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        let ansi = |terminal, no_color| match choose(LogFormat::Text, false, terminal, no_color) {
            Sink::Text { ansi, .. } => ansi,
            other => panic!("{other:?}"),
        };
        assert!(ansi(true, None));
        assert!(!ansi(false, None), "a pipe or a file gets no escape codes");
        assert!(!ansi(true, Some("1")));
        assert!(ansi(true, Some("")), "an empty NO_COLOR does not count");
    }

    #[test]
    fn control_characters_are_escaped_so_a_line_stays_one_line() {
        assert_eq!(
            escape_controls("plain ü 商品.png", false),
            "plain ü 商品.png"
        );
        assert_eq!(
            escape_controls("a\nb\r\t\u{1b}[31m", false),
            "a\\nb\\r\\t\\u{1b}[31m"
        );
        assert_eq!(escape_controls("\u{1b}[31mred\n", true), "\u{1b}[31mred\\n");
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_not_believed() {
        // The tests' stderr is not the journal: whatever JOURNAL_STREAM says, a made-up value
        // cannot match it.
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!stderr_is_journal_stream());
        }
    }
}
