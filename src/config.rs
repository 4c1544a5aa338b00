//! The daemon's configuration: the YAML schema of the contract, `${VAR}` and `<secret>_file` resolution,
//! and validation whose every error names the file, the line and the key.

mod locate;
mod secret;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

pub use secret::Secret;
pub use template::{Placeholder, Template};

/// Where the daemon looks when neither `-c` nor `IMGSYNCD_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/imgsyncd/daemon.yaml";
pub use crate::adapters::VendorKind;
pub use crate::adapters::feishu::FeishuConfig;
pub use crate::adapters::jiandaoyun::{CreateRecord, JiandaoyunConfig};
pub use crate::adapters::kind::DEFAULT_INCLUDE;
pub use crate::adapters::kingdee::KingdeeConfig;
pub const DEFAULT_EXCLUDE: &[&str] = &[".*", "*.tmp", "*.part", "*~"];

/// The shortest `poll` period: a watch polled with none looks at its folder without pause.
pub const MIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message, not chained as a source: anyhow's `{:#}` would print it twice.
    #[error("cannot read config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub journal: PathBuf,
    pub workers: usize,
    pub settle: Duration,
    pub rescan: Duration,
    pub give_up_after: Duration,
    pub max_deletes: usize,
    /// Where `/metrics` is served (Prometheus text format); `None`: not served.
    pub metrics: Option<std::net::SocketAddr>,
    pub vendors: BTreeMap<String, VendorConfig>,
    pub watches: Vec<WatchConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VendorConfig {
    pub name: String,
    pub base_url: String,
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub settings: VendorSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VendorSettings {
    Kingdee(KingdeeConfig),
    Feishu(FeishuConfig),
    Jiandaoyun(JiandaoyunConfig),
}

impl VendorSettings {
    pub fn kind(&self) -> VendorKind {
        match self {
            VendorSettings::Kingdee(_) => VendorKind::Kingdee,
            VendorSettings::Feishu(_) => VendorKind::Feishu,
            VendorSettings::Jiandaoyun(_) => VendorKind::Jiandaoyun,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRemove {
    Delete,
    Keep,
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub path: PathBuf,
    pub vendor: String,
    pub recursive: bool,
    pub on_remove: OnRemove,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub poll: Option<Duration>,
    /// The `poll` written, when it was below [`MIN_POLL`] and raised to it: `check` says so.
    pub poll_raised_from: Option<Duration>,
    pub filter: NameFilter,
}

impl PartialEq for WatchConfig {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.vendor == other.vendor
            && self.recursive == other.recursive
            && self.on_remove == other.on_remove
            && self.include == other.include
            && self.exclude == other.exclude
            && self.poll == other.poll
    }
}

/// Include/exclude globs matched against a file's name (and, for patterns with a `/`, its path
/// relative to the watch root).
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: Globs,
    exclude: Globs,
}

impl NameFilter {
    /// The filter of these patterns; a pattern that is no glob is an error of its list, named
    /// `include` or `exclude`.
    pub fn new(
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, (&'static str, globset::Error)> {
        Ok(NameFilter {
            include: Globs::new(include).map_err(|e| ("include", e))?,
            exclude: Globs::new(exclude).map_err(|e| ("exclude", e))?,
        })
    }

    /// Whether a file at `relative` (to the watch root) is one the watch should take. A file in
    /// an excluded folder (`.thumbnails/`, `@eaDir/`) is excluded however it was seen.
    pub fn accepts(&self, relative: &Path) -> bool {
        let in_excluded_folder = relative
            .parent()
            .into_iter()
            .flat_map(Path::components)
            .any(|folder| self.excludes_dir(folder.as_os_str()));
        !in_excluded_folder && self.accepts_in_folder(relative)
    }

    /// [`NameFilter::accepts`] for a file whose folders are known to be taken: a walk never
    /// enters an excluded one, and matching each file's folders again was a twentieth of what a
    /// restart cost.
    pub fn accepts_in_folder(&self, relative: &Path) -> bool {
        let Some(name) = relative.file_name() else {
            return false;
        };
        self.include.hit(name, relative) && !self.exclude.hit(name, relative)
    }

    /// Whether a folder is skipped whole (an excluded name such as `.cache`).
    pub fn excludes_dir(&self, name: &std::ffi::OsStr) -> bool {
        self.exclude.set.is_match(name)
    }
}

/// Globs matched case-insensitively, where `*` and `?` stop at a `/`.
#[derive(Debug, Clone)]
struct Globs {
    set: GlobSet,
    /// Whether a pattern may match a path with folders in it (it has a `/`, a `**`, or a class
    /// such as `[!x]` that might take a `/`); without one, a file's name is all that can match.
    on_paths: bool,
}

impl Globs {
    fn new(patterns: &[String]) -> Result<Globs, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .case_insensitive(true)
                .literal_separator(true)
                .build()?;
            builder.add(glob);
        }
        Ok(Globs {
            set: builder.build()?,
            on_paths: patterns
                .iter()
                .any(|p| p.contains('/') || p.contains("**") || p.contains('[')),
        })
    }

    /// Whether a pattern matches the file's `name` or, for a pattern that can, its `relative` path.
    fn hit(&self, name: &std::ffi::OsStr, relative: &Path) -> bool {
        self.set.is_match(name) || (self.on_paths && self.set.is_match(relative))
    }
}

// ---- the raw YAML shape ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of settings (journal, workers, settle, vendors, watches, …)"
)]
struct RawConfig {
    journal: Option<PathBuf>,
    workers: Option<usize>,
    settle: Option<String>,
    rescan: Option<String>,
    give_up_after: Option<String>,
    max_deletes: Option<usize>,
    metrics: Option<String>,
    /// In the order written, a name given twice kept twice: serde_yaml's map would keep the
    /// last silently, and a vendor's first definition would vanish without a word.
    #[serde(default, deserialize_with = "entries_in_order")]
    vendors: Vec<(String, RawVendor)>,
    #[serde(default)]
    watches: Vec<RawWatch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVendor {
    kind: String,
    base_url: Option<String>,
    per_second: Option<u32>,
    per_minute: Option<u32>,
    // kingdee
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    app_key: Option<String>,
    app_secret: Option<String>,
    app_secret_file: Option<PathBuf>,
    domain: Option<String>,
    save_temp: Option<bool>,
    // feishu / jiandaoyun
    app_id: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    entry_id: Option<String>,
    create_record: Option<RawCreateRecord>,
}

impl RawVendor {
    /// The vendor-specific keys this vendor's YAML gives, for checking against its kind's.
    fn given_keys(&self) -> Vec<&'static str> {
        [
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("app_key", self.app_key.is_some()),
            ("app_secret", self.app_secret.is_some()),
            ("app_secret_file", self.app_secret_file.is_some()),
            ("domain", self.domain.is_some()),
            ("save_temp", self.save_temp.is_some()),
            ("app_id", self.app_id.is_some()),
            ("api_key", self.api_key.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
            ("entry_id", self.entry_id.is_some()),
            ("create_record", self.create_record.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreateRecord {
    image_widget: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    path: PathBuf,
    vendor: String,
    recursive: Option<bool>,
    on_remove: Option<String>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    poll: Option<String>,
}

/// A vendor's own keys, handed to the adapter that knows what they mean; read with the config's
/// rules (`${VAR}`, `<key>_file` secrets, errors that name the file, the line and the key).
pub struct VendorKeys<'a> {
    ctx: &'a Ctx<'a>,
    prefix: String,
    raw: &'a mut RawVendor,
}

impl VendorKeys<'_> {
    /// A text value that must be given and not be empty.
    pub fn required(&mut self, key: &str) -> Result<String, ConfigError> {
        let value = match key {
            "client_id" => self.raw.client_id.take(),
            "app_key" => self.raw.app_key.take(),
            "domain" => self.raw.domain.take(),
            "app_id" => self.raw.app_id.take(),
            "entry_id" => self.raw.entry_id.take(),
            _ => None,
        };
        self.ctx.required(&format!("{}.{key}", self.prefix), value)
    }

    /// A secret given inline (`key`) or as a file (`key_file`).
    pub fn secret(&mut self, key: &str) -> Result<Secret, ConfigError> {
        let (inline, file) = match key {
            "client_secret" => (
                self.raw.client_secret.take(),
                self.raw.client_secret_file.take(),
            ),
            "app_secret" => (self.raw.app_secret.take(), self.raw.app_secret_file.take()),
            "api_key" => (self.raw.api_key.take(), self.raw.api_key_file.take()),
            _ => (None, None),
        };
        self.ctx.secret(&self.prefix, key, inline, file)
    }

    /// A yes/no value; `None` when not given.
    pub fn flag(&mut self, key: &str) -> Option<bool> {
        match key {
            "save_temp" => self.raw.save_temp.take(),
            _ => None,
        }
    }

    /// `create_record`: the image widget and the templated fields of a record per file.
    pub fn create_record(&mut self) -> Result<Option<CreateRecord>, ConfigError> {
        self.raw
            .create_record
            .take()
            .map(|raw| self.ctx.create_record(&self.prefix, raw))
            .transpose()
    }
}

// ---- loading -----------------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read_text(path)?, path)
    }

    /// Reads the config at `path` for the journal's readers (`status`, `files`, `history`,
    /// `retry`), which an operator who may only read the journal runs: the daemon's credentials
    /// and its environment (`EnvironmentFile=`, `${CREDENTIALS_DIRECTORY}`) may be root's alone.
    /// Secrets are not read (the ones it holds are empty), and only what the readers need must
    /// resolve: the journal's path and the watches' paths. Any other key whose `${VAR}` is unset
    /// here is left unresolved (see [`Resolve::JournalReaders`]); every key is still checked
    /// otherwise.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(&read_text(path)?, path, Resolve::JournalReaders)
    }

    /// Parses `text` as if it were read from `path` (which names errors and anchors relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, Resolve::Everything)
    }

    fn parse_with(text: &str, path: &Path, resolve: Resolve) -> Result<Config, ConfigError> {
        let ctx = Ctx {
            file: path.display().to_string(),
            text,
            // Absolute, so a relative `-c` still records absolute paths (the journal's paths are
            // how `history PATH` and a restart from another folder find a file).
            base_dir: std::path::absolute(path)
                .ok()
                .and_then(|path| path.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/")),
            resolve,
        };
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ctx.syntax(&e))?;
        ctx.build(raw, path)
    }
}

/// The config file's text.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// How much of the config a load resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// Every key and every secret, each `${VAR}` set: the daemon, `scan` and `check`.
    Everything,
    /// What the journal's readers need. Secrets are neither expanded nor read. A `${VAR}` unset
    /// (or empty) in any key but the journal's and the watches' paths leaves that key
    /// unresolved: a text is kept as written, an optional value is taken as not given, and
    /// neither is checked further. Nothing unresolved is used by the readers.
    JournalReaders,
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
    base_dir: PathBuf,
    resolve: Resolve,
}

impl Ctx<'_> {
    fn syntax(&self, e: &serde_yaml::Error) -> ConfigError {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        // The quoted value first: one holding " at line " would leave its start behind.
        let mut message = without_quoted_value(&e.to_string());
        if let Some(at) = message.find(" at line ") {
            message.truncate(at);
        }
        ConfigError::Syntax {
            file: self.file.clone(),
            line,
            message,
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: locate::line_of(self.text, key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn build(&self, raw: RawConfig, source: &Path) -> Result<Config, ConfigError> {
        let journal = match raw.journal {
            Some(p) => self.expand_path("journal", &p)?,
            None => PathBuf::from("/var/lib/imgsyncd/journal.sqlite3"),
        };
        let workers = raw.workers.unwrap_or(4);
        if workers == 0 || workers > 64 {
            return Err(self.invalid("workers", "must be between 1 and 64"));
        }
        let settle = self.duration("settle", raw.settle.as_deref(), Duration::from_secs(2))?;
        let rescan = self.duration("rescan", raw.rescan.as_deref(), Duration::from_secs(3600))?;
        let give_up_after = self.duration(
            "give_up_after",
            raw.give_up_after.as_deref(),
            Duration::from_secs(24 * 3600),
        )?;
        if rescan < Duration::from_secs(1) {
            return Err(self.invalid("rescan", "must be at least 1s"));
        }
        let metrics = self
            .optional("metrics", raw.metrics.as_deref())?
            .map(|text| self.metrics_address(&text))
            .transpose()?;
        let mut vendors = BTreeMap::new();
        for (name, raw_vendor) in raw.vendors {
            // The journal's readers load what the daemon ran on before this was refused (the
            // last definition kept), so `status` still works while the config is fixed.
            if vendors.contains_key(&name) && self.resolve == Resolve::Everything {
                let key = format!("vendors.{name}");
                return Err(ConfigError::Invalid {
                    file: self.file.clone(),
                    line: locate::line_of_second(self.text, &key),
                    key,
                    message: "is defined twice; give each vendor a name of its own".into(),
                });
            }
            let vendor = self.vendor(&name, raw_vendor)?;
            vendors.insert(name, vendor);
        }
        let mut watches: Vec<WatchConfig> = Vec::new();
        for (index, raw_watch) in raw.watches.into_iter().enumerate() {
            let watch = self.watch(index, raw_watch, &vendors)?;
            // Through `..` only for the daemon and `check`: the journal's readers load a config
            // the daemon ran on before this was refused.
            let folder = |path: &Path| match self.resolve {
                Resolve::Everything => without_dot_dot(path),
                Resolve::JournalReaders => path.to_path_buf(),
            };
            let this = folder(&watch.path);
            if let Some(other) = watches.iter().find(|w| {
                let that = folder(&w.path);
                this.starts_with(&that) || that.starts_with(&this)
            }) {
                return Err(self.invalid(
                    &format!("watches[{index}].path"),
                    format!(
                        "{} overlaps the watch on {}; one folder can feed only one watch",
                        watch.path.display(),
                        other.path.display()
                    ),
                ));
            }
            if let Some(VendorConfig {
                settings: VendorSettings::Jiandaoyun(j),
                ..
            }) = vendors.get_mut(&watch.vendor)
            {
                j.watch_roots.push(watch.path.clone());
            }
            watches.push(watch);
        }
        Ok(Config {
            source: source.to_path_buf(),
            journal,
            workers,
            settle,
            rescan,
            give_up_after,
            max_deletes: raw.max_deletes.unwrap_or(100),
            metrics,
            vendors,
            watches,
        })
    }

    /// `metrics:`: `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`, or a port alone (on loopback).
    /// Port 0 takes a free port (the log says which).
    fn metrics_address(&self, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
        use std::net::{Ipv4Addr, SocketAddr};
        let text = text.trim();
        let parsed = if let Ok(port) = text.parse::<u16>() {
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        } else if let Some(port) = text.strip_prefix("localhost:") {
            port.parse::<u16>()
                .ok()
                .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        } else {
            text.parse::<SocketAddr>().ok()
        };
        parsed.ok_or_else(|| {
            self.invalid(
                "metrics",
                format!(
                    "`{text}` is not an address to listen on like 127.0.0.1:9464 \
                     (or a port alone, which listens on 127.0.0.1)"
                ),
            )
        })
    }

    /// A path of the config, its `${VAR}`s expanded (YAML text is UTF-8, so nothing is lost) and
    /// anchored at the config's folder.
    fn expand_path(&self, key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
        let expanded = self.expand(key, &p.to_string_lossy())?;
        Ok(self.resolve_path(Path::new(&expanded)))
    }

    fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A duration; `default` when not given (or left unresolved).
    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        Ok(self.optional_duration(key, value)?.unwrap_or(default))
    }

    /// A duration that may be absent (`poll`): `None` when not given (or left unresolved).
    fn optional_duration(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Option<Duration>, ConfigError> {
        self.optional(key, value)?
            .map(|text| parse_duration(&text).map_err(|message| self.invalid(key, message)))
            .transpose()
    }

    /// The value of an optional key, expanded: `None` when not given or left unresolved (the
    /// journal's readers, [`Resolve::JournalReaders`]), either way taken as not given.
    fn optional(&self, key: &str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
        Ok(match value {
            None => None,
            Some(text) => self.expand_unneeded(key, text)?,
        })
    }

    /// Expands `${VAR}` references; an unset or empty variable is an error naming it, whoever
    /// loads the config. For the keys the journal's readers need too (the journal's path, a
    /// watch's path) and a secret's file (read only by a load that reads secrets).
    fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        substitute(value).map_err(|why| self.invalid(key, why.to_string()))
    }

    /// Expands `${VAR}` references in a key the journal's readers do not need. `None`: a
    /// variable is unset or empty and this is their load, which leaves the key unresolved
    /// ([`Resolve::JournalReaders`]); any other load fails as [`Ctx::expand`] does.
    fn expand_unneeded(&self, key: &str, value: &str) -> Result<Option<String>, ConfigError> {
        match substitute(value) {
            Ok(expanded) => Ok(Some(expanded)),
            Err(Unexpanded::Unset { .. }) if self.resolve == Resolve::JournalReaders => Ok(None),
            Err(why) => Err(self.invalid(key, why.to_string())),
        }
    }

    /// A text value that must be given and not be empty, expanded.
    fn required(&self, key: &str, value: Option<String>) -> Result<String, ConfigError> {
        self.required_checked(key, value, Ok)
    }

    /// [`Ctx::required`] whose expanded value `check` vets. Left unresolved (the journal's
    /// readers, which never use it), the value is kept as written and not checked.
    fn required_checked(
        &self,
        key: &str,
        value: Option<String>,
        check: impl FnOnce(String) -> Result<String, ConfigError>,
    ) -> Result<String, ConfigError> {
        match value {
            Some(written) if !written.trim().is_empty() => {
                match self.expand_unneeded(key, &written)? {
                    Some(value) => check(value),
                    None => Ok(written),
                }
            }
            Some(_) => Err(self.invalid(key, "must not be empty")),
            None => Err(self.invalid(key, "is required")),
        }
    }

    /// A secret's `${…}` that cannot be expanded, said without the text inside it unless the
    /// whole value is one `${NAME}`: else that text may be part of the secret itself (a secret
    /// holding `${`), and the error goes to the log and to systemd's status line.
    fn secret_references(&self, full: &str, key: &str, written: &str) -> Result<(), ConfigError> {
        let one_reference = written
            .trim()
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'))
            .is_some_and(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if one_reference {
            return Ok(());
        }
        match substitute(written) {
            Err(Unexpanded::Unset { .. }) => Err(self.invalid(
                full,
                format!(
                    "a `${{…}}` in it names an environment variable that is not set or is empty \
                     (its name is not shown: it may be part of the secret); write the whole \
                     value as `${{NAME}}`, or give a secret that holds `${{` as {key}_file"
                ),
            )),
            Err(Unexpanded::Unterminated) => Err(self.invalid(
                full,
                format!(
                    "an unterminated `${{` reference (missing `}}`); give a secret that holds \
                     `${{` as {key}_file"
                ),
            )),
            Ok(_) => Ok(()),
        }
    }

    /// A secret given either inline (`key`) or as a file (`key_file`), never both.
    fn secret(
        &self,
        prefix: &str,
        key: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Secret, ConfigError> {
        let full = format!("{prefix}.{key}");
        match (inline, file) {
            (Some(_), Some(_)) => Err(self.invalid(
                &format!("{prefix}.{key}_file"),
                format!("give either {key} or {key}_file, not both"),
            )),
            (Some(_), None) | (None, Some(_)) if self.resolve == Resolve::JournalReaders => {
                Ok(Secret::new(String::new()))
            }
            (Some(v), None) => {
                self.secret_references(&full, key, &v)?;
                let value = self.required(&full, Some(v))?;
                self.one_line(&full, "it", &value)?;
                Ok(Secret::new(value))
            }
            (None, Some(path)) if path.as_os_str().is_empty() => Err(self.invalid(
                &format!("{prefix}.{key}_file"),
                "must not be empty: the path of a file holding the secret",
            )),
            (None, Some(path)) => {
                let file_key = format!("{prefix}.{key}_file");
                // `${VAR}` works in the path too: `${CREDENTIALS_DIRECTORY}/kingdee_app_secret`.
                let expanded = self.expand(&file_key, &path.to_string_lossy())?;
                let path = self.resolve_path(Path::new(&expanded));
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.invalid(&file_key, format!("cannot read {}: {e}", path.display()))
                })?;
                let value = text.trim_end_matches(['\n', '\r']).to_string();
                if value.is_empty() {
                    return Err(self.invalid(&file_key, format!("{} is empty", path.display())));
                }
                self.one_line(&file_key, &path.display().to_string(), &value)?;
                Ok(Secret::new(value))
            }
            (None, None) => Err(self.invalid(
                &full,
                format!("is required (or {key}_file with the path of a file holding it)"),
            )),
        }
    }

    /// A secret goes into a header or a signature: a line break or another control character
    /// in it (a file of two lines) would only show as a vendor's refusal or "failed to parse
    /// header value", naming neither the file nor the key. The value itself is never shown.
    fn one_line(&self, key: &str, holder: &str, value: &str) -> Result<(), ConfigError> {
        if value.chars().any(char::is_control) {
            return Err(self.invalid(
                key,
                format!(
                    "{holder} holds a line break or another control character; a secret is one \
                     line of text"
                ),
            ));
        }
        Ok(())
    }

    fn vendor(&self, name: &str, mut raw: RawVendor) -> Result<VendorConfig, ConfigError> {
        let prefix = format!("vendors.{name}");
        let Some(kind) = VendorKind::parse(&raw.kind) else {
            let known: Vec<&str> = VendorKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(self.invalid(
                &format!("{prefix}.kind"),
                format!("unknown kind `{}`; expected {}", raw.kind, known.join(", ")),
            ));
        };
        // Each kind names the keys it takes (its adapter's SPEC); any other is a mistake.
        if let Some(key) = raw
            .given_keys()
            .into_iter()
            .find(|key| !kind.spec().config_keys.contains(key))
        {
            return Err(self.invalid(
                &format!("{prefix}.{key}"),
                format!("is not a key of a {} vendor", kind.as_str()),
            ));
        }
        let base_url_key = format!("{prefix}.base_url");
        let base_url = match raw.base_url.take() {
            Some(url) => self.required_checked(&base_url_key, Some(url), |url| {
                if url.starts_with("https://") || url.starts_with("http://") {
                    Ok(url)
                } else {
                    Err(self.invalid(&base_url_key, format!("`{url}` is not an http(s) URL")))
                }
            })?,
            None => kind.default_base_url().to_string(),
        };
        for (key, value) in [
            ("per_second", raw.per_second),
            ("per_minute", raw.per_minute),
        ] {
            if value == Some(0) {
                return Err(self.invalid(&format!("{prefix}.{key}"), "must be at least 1"));
            }
        }
        let mut keys = VendorKeys {
            ctx: self,
            prefix: prefix.clone(),
            raw: &mut raw,
        };
        let settings = kind.read_settings(&mut keys)?;
        Ok(VendorConfig {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            per_second: raw.per_second,
            per_minute: raw.per_minute,
            settings,
        })
    }

    /// `create_record`: an image widget and templated fields, each a widget name.
    fn create_record(
        &self,
        prefix: &str,
        raw: RawCreateRecord,
    ) -> Result<CreateRecord, ConfigError> {
        let prefix = format!("{prefix}.create_record");
        let image_key = format!("{prefix}.image_widget");
        let image_widget = self.required_checked(&image_key, raw.image_widget, |name| {
            self.widget_name(&image_key, &name).map(|()| name)
        })?;
        let mut fields = BTreeMap::new();
        for (widget, text) in raw.fields {
            let key = format!("{prefix}.fields.{widget}");
            self.widget_name(&key, &widget)?;
            if widget == image_widget {
                return Err(self.invalid(
                    &key,
                    "is the image_widget; the image widget holds the file's key",
                ));
            }
            // Left unresolved (the journal's readers, which create no record): left out.
            let Some(text) = self.expand_unneeded(&key, &text)? else {
                continue;
            };
            let template = Template::parse(&text).map_err(|message| self.invalid(&key, message))?;
            fields.insert(widget, template);
        }
        Ok(CreateRecord {
            image_widget,
            fields,
        })
    }

    /// A widget's name as Jiandaoyun gives it (`_widget_1432728651402`, or an alias).
    fn widget_name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        let fine = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if fine {
            Ok(())
        } else {
            Err(self.invalid(
                key,
                format!("`{name}` is not a widget name like _widget_1432728651402"),
            ))
        }
    }

    fn watch(
        &self,
        index: usize,
        raw: RawWatch,
        vendors: &BTreeMap<String, VendorConfig>,
    ) -> Result<WatchConfig, ConfigError> {
        let prefix = format!("watches[{index}]");
        let vendor = vendors.get(&raw.vendor).ok_or_else(|| {
            let known: Vec<&str> = vendors.keys().map(String::as_str).collect();
            self.invalid(
                &format!("{prefix}.vendor"),
                format!(
                    "no vendor named `{}` (configured: {})",
                    raw.vendor,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?;
        let kind = vendor.settings.kind();
        let on_remove = match raw.on_remove.as_deref() {
            None if kind.can_delete() => OnRemove::Delete,
            None | Some("keep") => OnRemove::Keep,
            Some("delete") if kind.can_delete() => OnRemove::Delete,
            Some("delete") => {
                return Err(self.invalid(
                    &format!("{prefix}.on_remove"),
                    format!(
                        "{}; use `keep` (the default for a {} vendor)",
                        kind.spec()
                            .no_delete
                            .unwrap_or("this vendor has no delete API"),
                        kind.as_str()
                    ),
                ));
            }
            Some(other) => {
                return Err(self.invalid(
                    &format!("{prefix}.on_remove"),
                    format!("`{other}` is not one of delete, keep"),
                ));
            }
        };
        let path = self.expand_path(&format!("{prefix}.path"), &raw.path)?;
        let include = raw.include.unwrap_or_else(|| {
            kind.default_include()
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        let exclude = raw
            .exclude
            .unwrap_or_else(|| DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect());
        let filter = NameFilter::new(&include, &exclude)
            .map_err(|(list, e)| self.invalid(&format!("{prefix}.{list}"), e.to_string()))?;
        let poll = self.optional_duration(&format!("{prefix}.poll"), raw.poll.as_deref())?;
        // Shorter, a polled watch would list its folder without pause. Raised, not refused: a
        // config that ran before must not stop the daemon at its next start.
        let poll_raised_from = poll.filter(|poll| *poll < MIN_POLL);
        let poll = poll.map(|poll| poll.max(MIN_POLL));
        Ok(WatchConfig {
            path: normalize(&path),
            vendor: raw.vendor,
            recursive: raw.recursive.unwrap_or(true),
            on_remove,
            include,
            exclude,
            poll,
            poll_raised_from,
            filter,
        })
    }
}

/// Parses `2s`, `500ms`, `1h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 2s, 30m or 1h ({e})"))
}

/// Why a value's `${VAR}` references could not be expanded.
#[derive(Debug)]
enum Unexpanded {
    /// `${` with no `}`: a mistake in the config, whoever reads it.
    Unterminated,
    /// A variable unset (or set to nothing) in this process's environment.
    Unset { var: String, empty: bool },
}

impl std::fmt::Display for Unexpanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unexpanded::Unterminated => f.write_str("unterminated ${…} reference (missing `}`)"),
            Unexpanded::Unset { var, empty } => {
                let how = if *empty { "empty" } else { "not set" };
                write!(f, "environment variable {var} is {how}")?;
                // systemd sets CREDENTIALS_DIRECTORY for a unit with `LoadCredential=`; by hand
                // it is unset, which deserves more than "not set".
                if var == "CREDENTIALS_DIRECTORY" {
                    f.write_str(
                        " (systemd sets it for a unit with LoadCredential=; outside systemd, set \
                         it to the folder holding the secrets)",
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// serde's "invalid type: string \"…\", expected …" without the text it quotes: a value in the
/// wrong place may be a secret (a secret's file given as the config, a secret where a map goes),
/// and the message goes to the log and to systemd's status line. Its kind is kept.
fn without_quoted_value(message: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        let Some(start) = message.find(lead).map(|at| at + lead.len()) else {
            continue;
        };
        let Some(end) = message.rfind(", expected").filter(|end| *end >= start) else {
            continue;
        };
        let unexpected = &message[start..end];
        let Some(quote) = unexpected.find(['"', '`', '\'']) else {
            continue;
        };
        return format!(
            "{}{} (not shown){}",
            &message[..start],
            unexpected[..quote].trim_end(),
            &message[end..]
        );
    }
    message.to_string()
}

/// `value` with each `${VAR}` replaced by the variable's value in the environment.
fn substitute(value: &str) -> Result<String, Unexpanded> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(Unexpanded::Unterminated)?;
        let var = &after[..end];
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            found => {
                return Err(Unexpanded::Unset {
                    var: var.to_string(),
                    empty: found.is_ok(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Removes `.` components and trailing slashes without touching the filesystem. (`..` is kept:
/// the journal records a watch's files under its path as written, and a journal of a watch on
/// `/etc/imgsyncd/../drop` holds its files under that text.)
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// `path` with each `..` taken with the component before it, without touching the filesystem:
/// `/srv/drop/y/../z` is the folder `/srv/drop/z`, for telling watches that overlap.
fn without_dot_dot(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            // `..` at the root is the root; at the start of a relative path it is kept.
            Component::ParentDir if out.has_root() => {}
            other => out.push(other),
        }
    }
    out
}

/// A map's entries in the order written, a key given twice kept twice.
fn entries_in_order<'de, D, V>(deserializer: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = Vec<(String, V)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of vendors by name")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

#[cfg(test)]
mod tests;
