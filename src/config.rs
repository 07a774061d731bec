//! Configuration: one set of names, read from a TOML file, then `PITR_…` environment
//! variables, then flags, each overriding the one before.
//!
//! Each setting is declared once, in the `settings!` table below; the flag and environment
//! layers are merged by clap (the table's argument structs, flattened into `cli`); this module
//! reads the file and resolves the result.

use std::path::Path;

use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::CompressionRequest;
use crate::catalog::keys::{KEY_FILE_MIN_LEN, KeyMaterial};
use crate::codec::{Compression, CompressionType};
use crate::error::Error;
use crate::storage::retry::{RetryPolicy, RetryingStorage};
use crate::storage::{RepoLocation, S3Options, Storage};
use zeroize::Zeroizing;

/// Declares every setting once. Its name is the TOML key and, with `-` for `_`, the flag; its
/// `PITR_…` variable is given in `#[arg]` (a test holds it to the name); its doc comment is
/// the flag's help. `#[restore_command]` marks the settings that the restore_command a
/// restore writes, and archive-get's prefetcher, run with. From the table follow
/// [`Settings`] and its merge, one clap argument struct per group (flattened into the CLI)
/// with its conversion, and [`Settings::DECLARED`].
macro_rules! settings {
    ($(
        $(#[$group_meta:meta])*
        $group:ident {$(
            $(#[doc = $doc:literal])*
            #[arg($($arg:tt)*)]
            $(#[$carried:ident])?
            $name:ident: $ty:ty,
        )*}
    )*) => {
        /// Settings as one source gives them; `None` where it is silent.
        #[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $($( $(#[doc = $doc])* pub $name: Option<$ty>, )*)*
            /// Repositories 2 to 4: their [`REPO_SCOPED`] settings, by number, under the
            /// unnumbered names (`repo2_s3_endpoint` is `numbered[2].s3_endpoint`).
            #[serde(skip)]
            pub numbered: std::collections::BTreeMap<u8, Settings>,
        }

        impl Settings {
            /// Every setting, in declaration order.
            pub const DECLARED: &[DeclaredSetting] = &[$($(DeclaredSetting {
                name: stringify!($name),
                kind: stringify!($ty),
                restore_command: restore_command!($($carried)?),
                repo: 1,
            },)*)*];

            /// `self` wins where it has a value, repository by repository.
            pub fn over(self, lower: Settings) -> Settings {
                let mut numbered = lower.numbered;
                for (n, upper) in self.numbered {
                    let merged = upper.over(numbered.remove(&n).unwrap_or_default());
                    numbered.insert(n, merged);
                }
                Settings { $($( $name: self.$name.or(lower.$name), )*)* numbered }
            }

            /// The settings restore_command and the prefetcher run with, those set: every
            /// repository's, since archive-get reads from each in turn.
            pub fn carried(&self) -> Vec<(DeclaredSetting, SettingValue)> {
                let mut carried = Vec::new();
                for (repo, settings) in
                    std::iter::once((1, self)).chain(self.numbered.iter().map(|(n, s)| (*n, s)))
                {
                    $($(
                        if let (true, Some(value)) =
                            (restore_command!($($carried)?), &settings.$name)
                        {
                            let declared = DeclaredSetting {
                                name: stringify!($name),
                                kind: stringify!($ty),
                                restore_command: true,
                                repo,
                            };
                            carried.push((declared, value.carried()));
                        }
                    )*)*
                }
                carried
            }

            /// Sets the setting called `name` to `from`'s value of it; false when no setting
            /// has that name.
            fn take_setting(&mut self, from: &Settings, name: &str) -> bool {
                match name {
                    $($( stringify!($name) => self.$name = from.$name.clone(), )*)*
                    _ => return false,
                }
                true
            }
        }

        $(
            #[derive(Clone, Debug, Default, clap::Args)]
            $(#[$group_meta])*
            pub struct $group {
                $( $(#[doc = $doc])* #[arg(long, $($arg)*)] pub $name: Option<$ty>, )*
            }

            impl $group {
                /// Flags and environment, as clap merged them.
                pub fn settings(&self) -> Settings {
                    Settings { $( $name: self.$name.clone(), )* ..Settings::default() }
                }
            }
        )*
    };
}

macro_rules! restore_command {
    () => {
        false
    };
    (restore_command) => {
        true
    };
}

/// A setting as [`Settings::DECLARED`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredSetting {
    /// The TOML key; the flag is `--` and this with `-` for `_`, the variable `PITR_` and
    /// this in capitals.
    pub name: &'static str,
    /// Its Rust type, as written in the table.
    pub kind: &'static str,
    /// Whether restore_command and the prefetcher carry it.
    pub restore_command: bool,
    /// The repository it is given for: 1 unnumbered, 2 to 4 as `repoN_…` ([`REPO_SCOPED`]).
    pub repo: u8,
}

impl DeclaredSetting {
    /// Its name in the configuration file: `repo2_s3_endpoint`, `repo2` for `repo`.
    pub fn key(&self) -> String {
        numbered_key(self.repo, self.name)
    }

    pub fn flag(&self) -> String {
        format!("--{}", self.key().replace('_', "-"))
    }

    pub fn env(&self) -> String {
        format!("PITR_{}", self.key().to_ascii_uppercase())
    }
}

/// The key of setting `name` for repository `repo` (1: the unnumbered name).
fn numbered_key(repo: u8, name: &str) -> String {
    match (repo, name) {
        (1, _) => name.to_owned(),
        (n, "repo") => format!("repo{n}"),
        (n, _) => format!("repo{n}_{name}"),
    }
}

/// A carried setting's value: a boolean is a bare flag (or `--flag=false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingValue {
    Bool(bool),
    Text(String),
}

impl SettingValue {
    /// As a `PITR_…` variable's value.
    pub fn env_value(&self) -> String {
        match self {
            SettingValue::Bool(b) => b.to_string(),
            SettingValue::Text(text) => text.clone(),
        }
    }
}

/// How a setting's type is carried to a process pitr starts.
trait Carried {
    fn carried(&self) -> SettingValue;
}

impl Carried for bool {
    fn carried(&self) -> SettingValue {
        SettingValue::Bool(*self)
    }
}

impl Carried for String {
    fn carried(&self) -> SettingValue {
        SettingValue::Text(self.clone())
    }
}

impl Carried for std::path::PathBuf {
    /// Absolute: restore_command runs in the data directory.
    fn carried(&self) -> SettingValue {
        let path = std::path::absolute(self).unwrap_or_else(|_| self.clone());
        SettingValue::Text(path.display().to_string())
    }
}

macro_rules! carried_as_text {
    ($($ty:ty),*) => {$(
        impl Carried for $ty {
            fn carried(&self) -> SettingValue {
                SettingValue::Text(self.to_string())
            }
        }
    )*};
}
carried_as_text!(u64, u32, usize, i32, u8);

settings! {
    /// Settings every command takes (flattened into the CLI's global options).
    GlobalSettingArgs {
        /// Repository: /abs/path, file:///abs/path, or s3://bucket/prefix (more: --repo2 …
        /// --repo4, each with its own --repoN-s3-endpoint, keys, compression and retention).
        #[arg(global = true, env = "PITR_REPO", value_name = "URL")]
        #[restore_command]
        repo: String,

        /// The repository a command works on, by number: 1 is --repo, 2 to 4 are --repo2 …
        /// --repo4, each with its own repoN_… settings (default: backup uses the first,
        /// archive-push stores in all, archive-get and restore take the first that serves,
        /// list, verify, expire, drill and check report each).
        #[arg(global = true, env = "PITR_REPO_INDEX", value_name = "N")]
        repo_index: u8,

        /// S3 endpoint for S3-compatible servers (default: AWS_ENDPOINT_URL, else AWS).
        #[arg(global = true, env = "PITR_S3_ENDPOINT", value_name = "URL")]
        #[restore_command]
        s3_endpoint: String,

        /// Address buckets by path (http://host/bucket), as MinIO and most S3-compatible servers
        /// need (default false: virtual-hosted, http://bucket.host). A bare flag means true; give
        /// a value only as --s3-path-style=false.
        #[arg(
            global = true,
            env = "PITR_S3_PATH_STYLE",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::BoolishValueParser::new()
        )]
        #[restore_command]
        s3_path_style: bool,

        /// Seconds one repository request may take before it is retried (default 60).
        #[arg(global = true, env = "PITR_STORAGE_TIMEOUT", value_name = "SECONDS")]
        #[restore_command]
        storage_timeout: u64,

        /// Seconds a failing repository request is retried for, in all (default 120).
        #[arg(global = true, env = "PITR_STORAGE_RETRY_TIME", value_name = "SECONDS")]
        #[restore_command]
        storage_retry_time: u64,

        /// Seconds after which an S3 repository lock whose heartbeat stopped is taken over
        /// (default 300).
        #[arg(global = true, env = "PITR_LOCK_STALE_AFTER", value_name = "SECONDS")]
        lock_stale_after: u64,

        /// Seconds after which a restore's replay claim whose heartbeat stopped is ignored (and
        /// removed) by expire (default 3600).
        #[arg(global = true, env = "PITR_REPLAY_CLAIM_STALE_AFTER", value_name = "SECONDS")]
        replay_claim_stale_after: u64,

        /// Webhook URL (Slack, Discord, Mattermost) to POST to when backup, verify, expire, check or drill fails
        /// (default: none, no notification).
        #[arg(
            global = true,
            env = "PITR_NOTIFY_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        notify_url: String,

        /// Notify on success too (default false: failures only). A bare flag means true; give a
        /// value only as --notify-on-success=false.
        #[arg(
            global = true,
            env = "PITR_NOTIFY_ON_SUCCESS",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::BoolishValueParser::new()
        )]
        notify_on_success: bool,

        /// pitr check: age of the newest complete backup, "WARNING,CRITICAL" or "CRITICAL"
        /// (90s, 15m, 2h, 8d, 1w) or "off" (default 8d,15d).
        #[arg(
            global = true,
            env = "PITR_CHECK_BACKUP_AGE",
            help_heading = "Check thresholds",
            value_name = "LIMITS"
        )]
        check_backup_age: String,

        /// pitr check: age of the newest archived commit; with --dbname only when the repository
        /// is behind the server (default 15m,1h).
        #[arg(
            global = true,
            env = "PITR_CHECK_ARCHIVE_LAG",
            help_heading = "Check thresholds",
            value_name = "LIMITS"
        )]
        check_archive_lag: String,

        /// pitr check: fewest complete backups, "WARNING,CRITICAL" (warn below the first) or
        /// "CRITICAL" (default 1).
        #[arg(
            global = true,
            env = "PITR_CHECK_MIN_BACKUPS",
            help_heading = "Check thresholds",
            value_name = "LIMITS"
        )]
        check_min_backups: String,

        /// pitr check: age of the last successful verify (default 8d,15d; "off" to skip).
        #[arg(
            global = true,
            env = "PITR_CHECK_VERIFY_AGE",
            help_heading = "Check thresholds",
            value_name = "LIMITS"
        )]
        check_verify_age: String,

        /// pitr check --switch-wal: seconds to wait for the segment (default 60).
        #[arg(
            global = true,
            env = "PITR_CHECK_SWITCH_WAL_TIMEOUT",
            help_heading = "Check thresholds",
            value_name = "SECONDS"
        )]
        check_switch_wal_timeout: u64,

        /// Local directory for archive-push's look-ahead marks and archive-get's prefetched
        /// segments (default: .pitr-spool in pg_wal).
        #[arg(
            global = true,
            env = "PITR_SPOOL_PATH",
            help_heading = "WAL archiving",
            value_name = "DIR"
        )]
        #[restore_command]
        spool_path: std::path::PathBuf,

        /// archive-push: WAL files stored at once, the one asked for and those ready after it
        /// (default 4; 1 turns the look-ahead off).
        #[arg(
            global = true,
            env = "PITR_ARCHIVE_PUSH_PARALLEL",
            help_heading = "WAL archiving",
            value_name = "N"
        )]
        archive_push_parallel: usize,

        /// archive-push with several repositories: most bytes of WAL kept in a local queue
        /// for one that cannot be reached, while the others store it (default 1GiB; 0: no
        /// queue, archive-push fails until every repository stores the file).
        #[arg(
            global = true,
            env = "PITR_ARCHIVE_PUSH_QUEUE_MAX",
            help_heading = "WAL archiving",
            value_name = "SIZE"
        )]
        archive_push_queue_max: String,

        /// archive-get: segments the background prefetcher fetches at once (default 2; 0 turns
        /// prefetching off).
        #[arg(
            global = true,
            env = "PITR_ARCHIVE_GET_PREFETCH",
            help_heading = "WAL archiving",
            value_name = "N"
        )]
        #[restore_command]
        archive_get_prefetch: usize,

        /// archive-get: most bytes of prefetched segments kept in the spool (default 256MiB).
        #[arg(
            global = true,
            env = "PITR_ARCHIVE_GET_QUEUE_MAX",
            help_heading = "WAL archiving",
            value_name = "SIZE"
        )]
        #[restore_command]
        archive_get_queue_max: String,

        /// Compression of a new repository (pitr init): lz4 (default) or zstd; fixed for good,
        /// later commands may only repeat it.
        #[arg(
            global = true,
            env = "PITR_COMPRESSION",
            help_heading = "Compression",
            value_name = "TYPE"
        )]
        compression: String,

        /// Compression level: zstd 1-22 (default 3), at init and for the objects a later command
        /// writes.
        #[arg(
            global = true,
            env = "PITR_COMPRESSION_LEVEL",
            help_heading = "Compression",
            value_name = "N",
            allow_negative_numbers = true
        )]
        compression_level: i32,

        // The passphrase itself is no setting: PITR_PASSPHRASE only (PASSPHRASE_ENV), never
        // a flag, the file or restore_command, so that it shows in no process list or dump.
        /// Encrypted repository: file holding the passphrase (the passphrase itself may also
        /// come from PITR_PASSPHRASE; never give it on the command line).
        #[arg(global = true, env = "PITR_PASSPHRASE_FILE", value_name = "FILE")]
        #[restore_command]
        passphrase_file: std::path::PathBuf,

        /// Encrypted repository: file of 32 or more random bytes that opens it.
        #[arg(global = true, env = "PITR_KEY_FILE", value_name = "FILE")]
        #[restore_command]
        key_file: std::path::PathBuf,

        /// Encrypted repository: AWS KMS key (id, ARN or alias) that wraps its data key.
        #[arg(global = true, env = "PITR_KMS_KEY_ID", value_name = "KEY")]
        #[restore_command]
        kms_key_id: String,
    }

    /// The retention policy: flags of `expire` (and of `backup`, which expires after itself
    /// when a rule is set), `PITR_…` variables, or the same names in the config file.
    #[command(
        next_help_heading = "Retention (the union of the rules, none by default: all is kept; pinned backups and the newest always stay)"
    )]
    RetentionArgs {
        /// Keep the N newest full backups, and the incremental and differential backups that
        /// build on them.
        #[arg(env = "PITR_KEEP_LAST", value_name = "N")]
        keep_last: u32,
        /// Keep every point of this last stretch restorable: 30d, 12h, 2w, 90m.
        #[arg(env = "PITR_KEEP_WITHIN", value_name = "DURATION")]
        keep_within: String,
        /// Keep the newest backup of each of the last N days that have one.
        #[arg(env = "PITR_KEEP_DAILY", value_name = "N")]
        keep_daily: u32,
        /// Keep the newest backup of each of the last N ISO weeks that have one.
        #[arg(env = "PITR_KEEP_WEEKLY", value_name = "N")]
        keep_weekly: u32,
        /// Keep the newest backup of each of the last N months that have one.
        #[arg(env = "PITR_KEEP_MONTHLY", value_name = "N")]
        keep_monthly: u32,
        /// Keep the newest backup of each of the last N years that have one.
        #[arg(env = "PITR_KEEP_YEARLY", value_name = "N")]
        keep_yearly: u32,
        /// IANA time zone the days, weeks, months and years are counted in (default UTC).
        #[arg(env = "PITR_RETENTION_TIMEZONE", value_name = "ZONE")]
        retention_timezone: String,
    }
}

/// The flags and variables of repositories 2 to 4: each [`REPO_SCOPED`] setting's, renamed
/// (`--repo2-s3-endpoint`, `PITR_REPO2_S3_ENDPOINT`) and hidden from the help, which names
/// them once. Read back through the unnumbered settings' own parsers.
#[derive(Clone, Debug, Default)]
pub struct NumberedRepoArgs {
    pub numbered: std::collections::BTreeMap<u8, Settings>,
}

impl NumberedRepoArgs {
    /// The unnumbered arguments of the scoped settings, as their groups declare them.
    fn scoped_args() -> Vec<clap::Arg> {
        use clap::Args;
        let groups = RetentionArgs::augment_args(GlobalSettingArgs::augment_args(
            clap::Command::new("scoped"),
        ));
        groups
            .get_arguments()
            .filter(|arg| REPO_SCOPED.contains(&arg.get_id().as_str()))
            .cloned()
            .collect()
    }

    fn numbered_id(n: u8, arg: &clap::Arg) -> String {
        numbered_key(n, arg.get_id().as_str())
    }
}

impl clap::Args for NumberedRepoArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for n in REPO_NUMBERS.skip(1) {
            for arg in Self::scoped_args() {
                let id: &'static str = Box::leak(Self::numbered_id(n, &arg).into_boxed_str());
                // clap keeps names for the life of the program; these are made once.
                let long: &'static str = Box::leak(id.replace('_', "-").into_boxed_str());
                let env: &'static str =
                    Box::leak(format!("PITR_{}", id.to_ascii_uppercase()).into_boxed_str());
                cmd = cmd.arg(arg.id(id).long(long).env(env).global(true).hide(true));
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for NumberedRepoArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use clap::Args;
        let mut numbered = std::collections::BTreeMap::new();
        for n in REPO_NUMBERS.skip(1) {
            // The values given, as `--name=value` words for the unnumbered parsers.
            let mut words = vec![std::ffi::OsString::from("scoped")];
            for arg in Self::scoped_args() {
                let id = Self::numbered_id(n, &arg);
                let given = matches!(
                    matches.value_source(&id),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                );
                let Some(values) = matches.get_raw(&id).filter(|_| given) else {
                    continue;
                };
                for value in values {
                    let mut word = std::ffi::OsString::from(format!(
                        "--{}=",
                        arg.get_id().as_str().replace('_', "-")
                    ));
                    word.push(value);
                    words.push(word);
                }
            }
            if words.len() == 1 {
                continue;
            }
            let parser = RetentionArgs::augment_args(GlobalSettingArgs::augment_args(
                clap::Command::new("scoped").no_binary_name(false),
            ))
            .mut_args(|arg| arg.env(None::<&str>).global(false));
            let parsed = parser.try_get_matches_from(words)?;
            let settings = RetentionArgs::from_arg_matches(&parsed)?
                .settings()
                .over(GlobalSettingArgs::from_arg_matches(&parsed)?.settings());
            numbered.insert(n, settings);
        }
        Ok(NumberedRepoArgs { numbered })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Settings {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, Error> {
        let table: toml::Table = Self::parse_toml(text, origin)?;
        if !table.keys().any(|key| split_numbered(key).is_some()) {
            return Self::parse_toml(text, origin);
        }
        // Repositories 2 to 4: their keys apart, each group read as settings of its own.
        let in_file = |e: toml::de::Error, key: &str| {
            Error::Config(format!(
                "config file {}, {key}: {}",
                origin.display(),
                without_quoted_strings(e.message().trim_end())
            ))
        };
        let (mut base, mut groups) = (toml::Table::new(), std::collections::BTreeMap::new());
        for (key, value) in table {
            match split_numbered(&key) {
                None => {
                    base.insert(key, value);
                }
                Some((n, name)) => {
                    if !REPO_SCOPED.contains(&name) {
                        return Err(Error::Config(format!(
                            "config file {}: {key} is no per-repository setting: give {name}                              once, for all repositories (per repository: {})",
                            origin.display(),
                            REPO_SCOPED.join(", ")
                        )));
                    }
                    let group: &mut toml::Table = groups.entry(n).or_default();
                    group.insert(name.to_owned(), value);
                }
            }
        }
        let mut settings = Self::from_table(base, &|e, key| in_file(e, key))?;
        for (n, group) in groups {
            let group = Self::from_table(group, &|e, key| in_file(e, &numbered_key(n, key)))?;
            settings.numbered.insert(n, group);
        }
        Ok(settings)
    }

    /// The settings of one table; an error names the key whose value is wrong.
    fn from_table(
        table: toml::Table,
        in_file: &dyn Fn(toml::de::Error, &str) -> Error,
    ) -> Result<Self, Error> {
        for (key, value) in &table {
            let mut alone = toml::Table::new();
            alone.insert(key.clone(), value.clone());
            if let Err(e) = toml::Value::Table(alone).try_into::<Settings>() {
                return Err(in_file(e, key));
            }
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| in_file(e, "settings"))
    }

    fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T, Error> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| format!(", line {}", text[..span.start].matches('\n').count() + 1))
                .unwrap_or_default();
            Error::Config(format!(
                "config file {}{line}: {}",
                origin.display(),
                without_quoted_strings(e.message().trim_end())
            ))
        })
    }

    pub fn read_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read config file {}: {e} (given by --config or PITR_CONFIG)",
                path.display()
            ))
        })?;
        Self::from_toml(&text, path)
    }

    /// The retention policy these settings give (empty when no rule is set).
    pub fn retention_policy(&self) -> Result<crate::recovery::retention::Policy, Error> {
        let count = |name: &str, value: Option<u32>| match value {
            Some(0) => Err(Error::Config(format!(
                "{name} must be at least 1 (leave it unset to not use that rule)"
            ))),
            other => Ok(other),
        };
        let keep_within = self
            .keep_within
            .as_deref()
            .map(crate::recovery::retention::parse_window)
            .transpose()
            .map_err(|e| Error::Config(format!("keep_within: {e}")))?;
        let timezone = match self.retention_timezone.as_deref() {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                Error::Config(format!(
                    "retention_timezone '{name}' is not an IANA time zone name such as UTC or \
                     Europe/Berlin"
                ))
            })?,
        };
        Ok(crate::recovery::retention::Policy {
            keep_last: count("keep_last", self.keep_last)?,
            keep_within,
            keep_daily: count("keep_daily", self.keep_daily)?,
            keep_weekly: count("keep_weekly", self.keep_weekly)?,
            keep_monthly: count("keep_monthly", self.keep_monthly)?,
            keep_yearly: count("keep_yearly", self.keep_yearly)?,
            timezone,
        })
    }
}

impl Settings {
    /// `compression` and `compression_level`, checked; the repository completes them (see
    /// [`CompressionRequest`]).
    pub fn compression(&self) -> Result<CompressionRequest, Error> {
        let kind = match self.compression.as_deref().map(str::trim) {
            None => None,
            Some(name) => Some(match name.to_ascii_lowercase().as_str() {
                "lz4" => CompressionType::Lz4,
                "zstd" | "zst" => CompressionType::Zstd,
                _ => {
                    return Err(Error::Config(format!(
                        "compression '{name}' is not lz4 or zstd"
                    )));
                }
            }),
        };
        if let Some(level) = self.compression_level {
            if kind == Some(CompressionType::Lz4) {
                return Err(Error::Config(
                    "compression_level applies to zstd only: lz4 has no levels; drop the level, \
                     or use compression zstd"
                        .into(),
                ));
            }
            if !Compression::ZSTD_LEVELS.contains(&level) {
                return Err(Error::Config(format!(
                    "compression_level {level} is not a zstd level: give 1 (fastest) to 22 \
                     (smallest); 3 is the default"
                )));
            }
        }
        Ok(CompressionRequest {
            kind,
            level: self.compression_level,
        })
    }
}

/// The settings each repository has its own of: repository 1's unnumbered, repositories 2
/// to 4's as `repoN_<name>` (`repoN` for `repo`) in the file, `--repoN-…` flags and
/// `PITR_REPON_…` variables. A numbered repository inherits none of them from the first.
pub const REPO_SCOPED: &[&str] = &[
    "repo",
    "s3_endpoint",
    "s3_path_style",
    "passphrase_file",
    "key_file",
    "kms_key_id",
    "compression",
    "compression_level",
    "keep_last",
    "keep_within",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "retention_timezone",
];

impl DeclaredSetting {
    /// The settings of repositories 2 to 4: each [`REPO_SCOPED`] one, numbered.
    pub fn numbered() -> Vec<DeclaredSetting> {
        REPO_NUMBERS
            .skip(1)
            .flat_map(|repo| {
                Settings::DECLARED
                    .iter()
                    .filter(|s| REPO_SCOPED.contains(&s.name))
                    .map(move |s| DeclaredSetting { repo, ..*s })
            })
            .collect()
    }
}

/// The numbers a repository may have.
pub const REPO_NUMBERS: std::ops::RangeInclusive<u8> = 1..=4;

/// `repo2_s3_endpoint` as (2, "s3_endpoint"), `repo3` as (3, "repo"); None for the
/// unnumbered names.
fn split_numbered(key: &str) -> Option<(u8, &str)> {
    let rest = key.strip_prefix("repo")?;
    let digit = rest.chars().next()?.to_digit(10)? as u8;
    if !(2..=*REPO_NUMBERS.end()).contains(&digit) {
        return None;
    }
    match &rest[1..] {
        "" => Some((digit, "repo")),
        name => Some((digit, name.strip_prefix('_')?)),
    }
}

impl Settings {
    /// The settings repository `n` runs with: these, with its own [`REPO_SCOPED`] ones in
    /// place of the first's. None when it has no `repo`.
    pub fn repository(&self, n: u8) -> Option<Settings> {
        let mut settings = Settings {
            numbered: Default::default(),
            ..self.clone()
        };
        if n != 1 {
            let own = self.numbered.get(&n)?;
            for name in REPO_SCOPED {
                settings.take_setting(own, name);
            }
        }
        settings.repo.is_some().then_some(settings)
    }

    /// Every configured repository, by number, in order. A numbered one with settings but
    /// no `repoN` is an error (a typo would otherwise drop a repository).
    pub fn repositories(&self) -> Result<Vec<(u8, Settings)>, Error> {
        let mut all = Vec::new();
        for n in REPO_NUMBERS {
            match self.repository(n) {
                Some(settings) => all.push((n, settings)),
                None if n != 1
                    && self
                        .numbered
                        .get(&n)
                        .is_some_and(|s| *s != Settings::default()) =>
                {
                    return Err(Error::Config(format!(
                        "repository {n} has settings but no location: give repo{n} (--repo{n} \
                         URL, PITR_REPO{n})"
                    )));
                }
                None => {}
            }
        }
        if all.is_empty() {
            return Err(Error::Config(
                "no repository given: pass --repo URL, set PITR_REPO, or put repo = \"…\" in \
                 the config file"
                    .into(),
            ));
        }
        Ok(all)
    }
}

/// How archive-push and archive-get use the local spool, resolved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    pub spool_path: Option<std::path::PathBuf>,
    /// WAL files one archive-push stores at once (1: no look-ahead).
    pub push_parallel: usize,
    /// Segments the prefetcher fetches at once (0: no prefetching).
    pub get_prefetch: usize,
    /// Most bytes of prefetched segments in the spool.
    pub get_queue_max: u64,
    /// Most bytes archive-push queues for one repository it cannot reach (0: none).
    pub push_queue_max: u64,
}

pub const DEFAULT_ARCHIVE_PUSH_PARALLEL: usize = 4;
pub const DEFAULT_ARCHIVE_GET_PREFETCH: usize = 2;
pub const DEFAULT_ARCHIVE_GET_QUEUE_MAX: u64 = 256 << 20;
pub const DEFAULT_ARCHIVE_PUSH_QUEUE_MAX: u64 = 1 << 30;

/// A size setting: bytes, or a number with a unit.
fn size_setting(name: &str, value: Option<&str>, default: u64) -> Result<u64, Error> {
    match value {
        None => Ok(default),
        Some(text) => Ok(text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|_| {
                Error::Config(format!(
                    "{name} '{text}' is not a size: give bytes or a number with a unit, such \
                     as 256MiB or 1GiB"
                ))
            })?
            .as_u64()),
    }
}

impl Settings {
    pub fn spool(&self) -> Result<SpoolConfig, Error> {
        let push_parallel = match self.archive_push_parallel {
            Some(0) => {
                return Err(Error::Config(
                    "archive_push_parallel must be at least 1 (1 turns the look-ahead off)".into(),
                ));
            }
            Some(n) => n,
            None => DEFAULT_ARCHIVE_PUSH_PARALLEL,
        };
        let get_queue_max = size_setting(
            "archive_get_queue_max",
            self.archive_get_queue_max.as_deref(),
            DEFAULT_ARCHIVE_GET_QUEUE_MAX,
        )?;
        let push_queue_max = size_setting(
            "archive_push_queue_max",
            self.archive_push_queue_max.as_deref(),
            DEFAULT_ARCHIVE_PUSH_QUEUE_MAX,
        )?;
        Ok(SpoolConfig {
            spool_path: self.spool_path.clone(),
            push_parallel,
            get_prefetch: self
                .archive_get_prefetch
                .unwrap_or(DEFAULT_ARCHIVE_GET_PREFETCH),
            get_queue_max,
            push_queue_max,
        })
    }
}

/// Resolved configuration for commands that use a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    pub location: RepoLocation,
    pub s3: S3Options,
    pub retry: RetryPolicy,
    /// See [`crate::catalog::Catalog::with_lock_stale_after`].
    pub lock_stale_after: Duration,
    /// See [`crate::catalog::Catalog::with_replay_claim_stale_after`].
    pub replay_claim_stale_after: Duration,
}

impl RepoConfig {
    pub fn resolve(settings: &Settings) -> Result<Self, Error> {
        let url = settings.repo.as_deref().ok_or_else(|| {
            Error::Config(
                "no repository given: pass --repo URL, set PITR_REPO, or put repo = \"…\" in \
                 the config file"
                    .into(),
            )
        })?;
        let mut retry = RetryPolicy::default();
        if let Some(seconds) = settings.storage_timeout {
            if seconds == 0 {
                return Err(Error::Config(
                    "storage_timeout must be at least 1 second".into(),
                ));
            }
            retry.attempt_timeout = Duration::from_secs(seconds);
        }
        if let Some(seconds) = settings.storage_retry_time {
            retry.total = Duration::from_secs(seconds);
        }
        let lock_stale_after = match settings.lock_stale_after {
            Some(0) => {
                return Err(Error::Config(
                    "lock_stale_after must be at least 1 second".into(),
                ));
            }
            Some(seconds) => Duration::from_secs(seconds),
            None => crate::catalog::lock::DEFAULT_LOCK_STALE_AFTER,
        };
        let replay_claim_stale_after = match settings.replay_claim_stale_after {
            Some(0) => {
                return Err(Error::Config(
                    "replay_claim_stale_after must be at least 1 second".into(),
                ));
            }
            Some(seconds) => Duration::from_secs(seconds),
            None => crate::catalog::replay::DEFAULT_REPLAY_CLAIM_STALE_AFTER,
        };
        Ok(RepoConfig {
            lock_stale_after,
            replay_claim_stale_after,
            location: RepoLocation::parse(url).map_err(Error::Config)?,
            s3: S3Options {
                endpoint: settings.s3_endpoint.clone(),
                path_style: settings.s3_path_style.unwrap_or(false),
            },
            retry,
        })
    }

    /// The repository as the local spool names it (its directory, its marks): the same
    /// whichever way the URL was spelt, and per S3 endpoint, since two endpoints may serve
    /// buckets of the same name.
    /// The directory of a local repository; None for S3.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.location {
            RepoLocation::Fs(root) => Some(root),
            RepoLocation::S3 { .. } => None,
        }
    }

    /// The repository as archive-push's queue for it is named: its location alone, so that
    /// WAL queued while an endpoint was unreachable still reaches the same bucket when the
    /// endpoint setting changes.
    pub fn queue_key(&self) -> String {
        match &self.location {
            RepoLocation::Fs(path) => format!("file://{}", path.display()),
            RepoLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }

    pub fn spool_key(&self) -> String {
        match &self.location {
            RepoLocation::Fs(path) => format!("file://{}", path.display()),
            RepoLocation::S3 { bucket, prefix } => {
                let endpoint = self
                    .s3
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                match endpoint {
                    Some(endpoint) => format!("s3://{bucket}/{prefix} at {endpoint}"),
                    None => format!("s3://{bucket}/{prefix}"),
                }
            }
        }
    }

    /// The repository's store, with retries and timeouts around every request.
    pub async fn open(&self) -> Result<Arc<dyn Storage>, Error> {
        let store = self.location.open(&self.s3).await?;
        Ok(Arc::new(RetryingStorage::new(store, self.retry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_then_env_then_file() {
        let file = Settings::from_toml(
            "repo = \"/from/file\"\ns3_endpoint = \"http://file\"\ns3_path_style = true\n\
             storage_timeout = 7\nstorage_retry_time = 30\nlock_stale_after = 90\n\
             notify_url = \"https://hooks.example/x\"\nnotify_on_success = true\n",
            Path::new("pitr.toml"),
        )
        .unwrap();
        let cli = Settings {
            repo: Some("s3://bucket/cli".into()),
            ..Settings::default()
        };
        let merged = cli.over(file);
        assert_eq!(merged.repo.as_deref(), Some("s3://bucket/cli"));
        assert_eq!(merged.s3_endpoint.as_deref(), Some("http://file"));
        assert_eq!(merged.s3_path_style, Some(true));
        assert_eq!(
            merged.notify_url.as_deref(),
            Some("https://hooks.example/x")
        );
        assert_eq!(merged.notify_on_success, Some(true));
        let resolved = RepoConfig::resolve(&merged).unwrap();
        assert_eq!(resolved.lock_stale_after, Duration::from_secs(90));
        let retry = resolved.retry;
        assert_eq!(retry.attempt_timeout, Duration::from_secs(7));
        assert_eq!(retry.total, Duration::from_secs(30));
    }

    #[test]
    fn retention_settings_are_checked_once() {
        let file = Settings::from_toml(
            "keep_last = 3\nkeep_within = \"30d\"\nkeep_daily = 7\n\
             retention_timezone = \"Europe/Berlin\"\n",
            Path::new("pitr.toml"),
        )
        .unwrap();
        let cli = Settings {
            keep_last: Some(5),
            ..Settings::default()
        };
        let policy = cli.over(file).retention_policy().unwrap();
        assert_eq!(policy.keep_last, Some(5));
        assert_eq!(policy.keep_within, Some(chrono::Duration::days(30)));
        assert_eq!(policy.keep_daily, Some(7));
        assert_eq!(policy.timezone, chrono_tz::Europe::Berlin);
        assert!(Settings::default().retention_policy().unwrap().is_empty());
        for (bad, says) in [
            ("keep_daily = 0", "keep_daily must be at least 1"),
            (
                "keep_within = \"soon\"",
                "keep_within: 'soon' is not a duration",
            ),
            (
                "retention_timezone = \"Mars/Olympus\"",
                "not an IANA time zone",
            ),
        ] {
            let settings = Settings::from_toml(bad, Path::new("pitr.toml")).unwrap();
            let err = settings.retention_policy().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn spool_settings_are_checked() {
        let defaults = Settings::default().spool().unwrap();
        assert_eq!(defaults.push_parallel, DEFAULT_ARCHIVE_PUSH_PARALLEL);
        assert_eq!(defaults.get_queue_max, DEFAULT_ARCHIVE_GET_QUEUE_MAX);
        let settings = Settings::from_toml(
            "archive_get_queue_max = \"64MiB\"\narchive_push_parallel = 8\n\
             archive_get_prefetch = 0\nspool_path = \"/var/spool/pitr\"\n",
            Path::new("pitr.toml"),
        )
        .unwrap();
        let spool = settings.spool().unwrap();
        assert_eq!(spool.get_queue_max, 64 << 20);
        assert_eq!(spool.push_parallel, 8);
        assert_eq!(spool.get_prefetch, 0);
        for (bad, says) in [
            ("archive_push_parallel = 0", "at least 1"),
            ("archive_get_queue_max = \"lots\"", "is not a size"),
        ] {
            let settings = Settings::from_toml(bad, Path::new("pitr.toml")).unwrap();
            let err = settings.spool().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn compression_settings_are_checked() {
        let request = |toml: &str| {
            Settings::from_toml(toml, Path::new("pitr.toml"))
                .unwrap()
                .compression()
        };
        assert_eq!(request("").unwrap(), CompressionRequest::default());
        for (toml, kind, level) in [
            ("compression = \"lz4\"", Some(CompressionType::Lz4), None),
            ("compression = \"ZSTD\"", Some(CompressionType::Zstd), None),
            (
                "compression = \"zst\"\ncompression_level = 19",
                Some(CompressionType::Zstd),
                Some(19),
            ),
            // The repository's type may be zstd: known only once its identity is read.
            ("compression_level = 1", None, Some(1)),
        ] {
            assert_eq!(
                request(toml).unwrap(),
                CompressionRequest { kind, level },
                "{toml}"
            );
        }
        for (bad, says) in [
            (
                "compression = \"gzip\"",
                "compression 'gzip' is not lz4 or zstd",
            ),
            (
                "compression = \"lz4\"\ncompression_level = 3",
                "compression_level applies to zstd only",
            ),
            (
                "compression_level = 0",
                "compression_level 0 is not a zstd level",
            ),
            ("compression_level = 23", "give 1 (fastest) to 22"),
        ] {
            let err = request(bad).unwrap_err().to_string();
            assert!(err.contains(says) && !err.contains('\n'), "{err}");
        }
        // Flags and environment over the file, as for every setting.
        let cli = Settings {
            compression_level: Some(9),
            ..Settings::default()
        };
        let file = Settings::from_toml("compression = \"zstd\"", Path::new("pitr.toml")).unwrap();
        assert_eq!(
            cli.over(file).compression().unwrap(),
            CompressionRequest {
                kind: Some(CompressionType::Zstd),
                level: Some(9)
            }
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_repeated() {
        let err = Settings::from_toml(
            "repo = \"/x\"\nstorage_timeout = \"s3cr\\\"et\"",
            Path::new("pitr.toml"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "config file pitr.toml, line 2: invalid type: string, expected u64"
        );
    }

    /// The README's configuration table lists exactly the declared settings, each with its
    /// flag and variable.
    #[test]
    fn the_readme_lists_exactly_the_declared_settings() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a Configuration section");
        let mut listed = Vec::new();
        for row in section.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = row
                .split(" | ")
                .map(|c| c.trim_matches('|').trim())
                .collect();
            let Some(name) = cells[2].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                continue; // not a setting: --config, PITR_PASSPHRASE, -v
            };
            let setting = Settings::DECLARED
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("README lists {name}, which is not declared"));
            let flag = cells[0].trim_matches('`');
            assert!(
                flag == setting.flag()
                    || flag.starts_with(&format!("{} ", setting.flag()))
                    || flag.starts_with(&format!("{}[", setting.flag())),
                "README gives {name} the flag {flag}"
            );
            assert_eq!(cells[1], format!("`{}`", setting.env()), "{name}");
            listed.push(name);
        }
        let declared: Vec<&str> = Settings::DECLARED.iter().map(|s| s.name).collect();
        listed.sort_unstable();
        let mut sorted = declared.clone();
        sorted.sort_unstable();
        assert_eq!(
            listed, sorted,
            "README's table against the declared settings"
        );
    }

    /// Every declared setting is a flag, with its variable and a help text, and no other
    /// flag reads a `PITR_…` variable but --config.
    #[test]
    fn each_setting_is_one_flag_with_its_variable() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let args: Vec<&clap::Arg> = cli
            .get_arguments()
            .chain(cli.get_subcommands().flat_map(|sub| sub.get_arguments()))
            .collect();
        let numbered = DeclaredSetting::numbered();
        assert_eq!(
            numbered.len(),
            3 * REPO_SCOPED.len(),
            "every scoped name is declared"
        );
        for setting in Settings::DECLARED.iter().chain(&numbered) {
            let long = &setting.flag()[2..];
            let arg = args
                .iter()
                .find(|arg| arg.get_long() == Some(long))
                .unwrap_or_else(|| panic!("no flag for {}", setting.name));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(setting.env().as_str()),
                "{}",
                setting.name
            );
            assert!(arg.get_help().is_some(), "{} has no help", setting.name);
        }
        for arg in args {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            if env.starts_with("PITR_") && env != "PITR_CONFIG" {
                assert!(
                    Settings::DECLARED
                        .iter()
                        .chain(&numbered)
                        .any(|s| s.env() == env),
                    "{env} is no declared setting"
                );
            }
            assert_ne!(env, PASSPHRASE_ENV, "the passphrase is never a flag");
        }
    }

    /// A value of each setting's type, for source `layer` (0 file, 1 environment, 2 flag):
    /// as TOML, and as the text of a flag or variable.
    fn sample(kind: &str, layer: usize) -> (String, String) {
        let text = ["file", "env", "flag"][layer];
        match kind {
            "String" => (format!("\"{text}\""), text.to_owned()),
            "std::path::PathBuf" => (format!("\"/{text}\""), format!("/{text}")),
            // Each layer differs from the one below it.
            "bool" => {
                let value = layer == 1;
                (value.to_string(), value.to_string())
            }
            "u64" | "u32" | "usize" | "i32" | "u8" => {
                ((layer + 1).to_string(), (layer + 1).to_string())
            }
            other => panic!("no sample of type {other}: add one"),
        }
    }

    const CHILD_ARGS: &str = "SETTINGS_TEST_CHILD_ARGS";

    /// Settings as `pitr ARGS… expire` resolves them with `env` as its only `PITR_…`
    /// variables: parsed in a child process, since clap reads this process's environment.
    fn resolved_in_child(args: &[String], env: &[(String, String)]) -> String {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "config::tests::resolve_as_a_child",
                "--exact",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_ARGS, args.join("\u{1f}"));
        for setting in Settings::DECLARED {
            child.env_remove(setting.env());
        }
        child.env_remove("PITR_CONFIG").envs(env.iter().cloned());
        let out = child.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout
            .lines()
            .find_map(|line| line.split_once("resolved: ").map(|(_, settings)| settings))
            .unwrap_or_else(|| panic!("no settings from the child: {stdout}"))
            .to_owned()
    }

    /// Run by `resolved_in_child` only: flags and environment over the config file, the
    /// retention flags of `expire` over those.
    #[test]
    fn resolve_as_a_child() {
        use clap::Parser;
        let Ok(args) = std::env::var(CHILD_ARGS) else {
            return;
        };
        let mut argv = vec!["pitr".to_owned()];
        argv.extend(
            args.split('\u{1f}')
                .filter(|a| !a.is_empty())
                .map(String::from),
        );
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Expire { retention, .. } = &cli.command else {
            panic!("expire expected");
        };
        let mut settings = retention.settings().over(cli.global.settings());
        if let Some(config) = &cli.global.config {
            settings = settings.over(Settings::read_file(config).unwrap());
        }
        println!("resolved: {settings:?}");
    }

    /// TOML, `PITR_…` variable and flag give each setting the same value; a flag wins over
    /// the variable, which wins over the file.
    #[test]
    fn each_setting_reads_alike_from_file_environment_and_flag_in_that_order() {
        // Which layers give setting `i`: the file all, the environment two thirds, flags one.
        let layers = |i: usize| i % 3;
        // Repositories 2 to 4's settings too, under their numbered names.
        let all: Vec<DeclaredSetting> = Settings::DECLARED
            .iter()
            .copied()
            .chain(DeclaredSetting::numbered())
            .collect();
        let toml_of = |pick: &dyn Fn(usize) -> usize| {
            all.iter()
                .enumerate()
                .map(|(i, s)| format!("{} = {}\n", s.key(), sample(s.kind, pick(i)).0))
                .collect::<String>()
        };
        let expect = |pick: &dyn Fn(usize) -> usize| {
            format!(
                "{:?}",
                Settings::from_toml(&toml_of(pick), Path::new("t")).unwrap()
            )
        };
        let flag = |s: &DeclaredSetting, layer: usize| -> Vec<String> {
            let value = sample(s.kind, layer).1;
            if s.kind == "bool" {
                vec![format!("{}={value}", s.flag())]
            } else {
                vec![s.flag(), value]
            }
        };
        let env = |s: &DeclaredSetting, layer: usize| (s.env(), sample(s.kind, layer).1);
        let expire = vec!["expire".to_owned()];

        // Each source alone gives what the TOML gives.
        let all_flags: Vec<String> = expire
            .iter()
            .cloned()
            .chain(all.iter().flat_map(|s| flag(s, 2)))
            .collect();
        assert_eq!(resolved_in_child(&all_flags, &[]), expect(&|_| 2));
        let all_env: Vec<_> = all.iter().map(|s| env(s, 1)).collect();
        assert_eq!(resolved_in_child(&expire, &all_env), expect(&|_| 1));

        // All three at once.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pitr.toml");
        std::fs::write(&file, toml_of(&|_| 0)).unwrap();
        let mut args = vec!["--config".to_owned(), file.display().to_string()];
        args.extend(expire);
        let mut some_env = Vec::new();
        for (i, setting) in all.iter().enumerate() {
            if layers(i) >= 1 {
                some_env.push(env(setting, 1));
            }
            if layers(i) == 2 {
                args.extend(flag(setting, 2));
            }
        }
        assert_eq!(resolved_in_child(&args, &some_env), expect(&layers));
    }

    /// Each repository has its own location, keys, compression and retention, inheriting
    /// none of them from the first; the other settings are shared.
    #[test]
    fn numbered_repositories_have_their_own_settings() {
        let settings = Settings::from_toml(
            "repo = \"/var/lib/pitr\"\nkeep_last = 5\nstorage_timeout = 7\n\
             passphrase_file = \"/etc/pitr/local\"\n\
             repo2 = \"s3://b/p\"\nrepo2_s3_endpoint = \"http://s3\"\nrepo2_keep_last = 1\n\
             repo2_compression = \"zstd\"\n",
            Path::new("pitr.toml"),
        )
        .unwrap();
        let all = settings.repositories().unwrap();
        let numbers: Vec<u8> = all.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2]);
        let (first, second) = (&all[0].1, &all[1].1);
        assert_eq!(first.repo.as_deref(), Some("/var/lib/pitr"));
        assert_eq!(first.s3_endpoint, None);
        assert_eq!(first.retention_policy().unwrap().keep_last, Some(5));
        assert_eq!(second.repo.as_deref(), Some("s3://b/p"));
        assert_eq!(second.s3_endpoint.as_deref(), Some("http://s3"));
        assert_eq!(second.retention_policy().unwrap().keep_last, Some(1));
        assert_eq!(
            second.compression().unwrap().kind,
            Some(CompressionType::Zstd)
        );
        assert_eq!(second.passphrase_file, None, "keys are never inherited");
        assert_eq!(second.storage_timeout, Some(7), "shared settings are");
        assert_eq!(
            second.key_sources(2).passphrase_env,
            "PITR_REPO2_PASSPHRASE"
        );
        // restore_command carries both.
        let carried: Vec<String> = settings.carried().iter().map(|(s, _)| s.flag()).collect();
        for flag in [
            "--repo",
            "--repo2",
            "--repo2-s3-endpoint",
            "--passphrase-file",
        ] {
            assert!(carried.iter().any(|c| c == flag), "{flag} in {carried:?}");
        }

        for (bad, says) in [
            (
                "repo = \"/a\"\nrepo3_keep_last = 2\n",
                "repository 3 has settings but no location",
            ),
            (
                "repo = \"/a\"\nrepo2_storage_timeout = 2\n",
                "repo2_storage_timeout is no per-repository setting",
            ),
            (
                "repo = \"/a\"\nrepo2 = \"/b\"\nrepo2_keep_last = \"x\"\n",
                "repo2_keep_last",
            ),
        ] {
            let err = Settings::from_toml(bad, Path::new("pitr.toml"))
                .and_then(|s| s.repositories().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says) && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_repo_are_explained() {
        let err = Settings::from_toml("repository = \"/x\"", Path::new("pitr.toml")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `repository`"),
            "{err}"
        );
        let err = RepoConfig::resolve(&Settings::default()).unwrap_err();
        assert!(err.to_string().contains("--repo"), "{err}");
    }
}

/// `message` without the strings serde quotes in it (`invalid type: string "…"`): a value
/// in the wrong place of a config file may be a secret; the message gives its line instead.
fn without_quoted_strings(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::new();
    let mut rest = message;
    while let Some(start) = rest.find(QUOTED) {
        out.push_str(&rest[..start + QUOTED.len() - 2]);
        // serde writes the value as Rust's Debug does: a quote inside is escaped.
        let value = &rest[start + QUOTED.len()..];
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i + 1)
        });
        rest = &value[end.unwrap_or(value.len())..];
    }
    out.push_str(rest);
    out
}

/// The passphrase variable: the one secret pitr reads from the environment.
pub const PASSPHRASE_ENV: &str = "PITR_PASSPHRASE";
/// The new passphrase of `pitr key add`.
pub const NEW_PASSPHRASE_ENV: &str = "PITR_NEW_PASSPHRASE";

/// Where a key-encryption key comes from: the repository's key settings, or `pitr key add`'s
/// new key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySources {
    pub passphrase_file: Option<std::path::PathBuf>,
    /// The environment variable that may hold a passphrase.
    pub passphrase_env: &'static str,
    pub key_file: Option<std::path::PathBuf>,
    pub kms_key_id: Option<String>,
}

/// The passphrase variable of each repository, by number less one.
pub const PASSPHRASE_ENVS: [&str; 4] = [
    PASSPHRASE_ENV,
    "PITR_REPO2_PASSPHRASE",
    "PITR_REPO3_PASSPHRASE",
    "PITR_REPO4_PASSPHRASE",
];

impl Settings {
    /// The key settings of repository `repo` (these settings being its own, see
    /// [`Settings::repository`]).
    pub fn key_sources(&self, repo: u8) -> KeySources {
        KeySources {
            passphrase_file: self.passphrase_file.clone(),
            passphrase_env: PASSPHRASE_ENVS[usize::from(repo.clamp(1, 4)) - 1],
            key_file: self.key_file.clone(),
            kms_key_id: self.kms_key_id.clone(),
        }
    }
}

impl KeySources {
    /// The keys these sources give, read and checked (secrets are read here, never logged).
    pub fn materials(&self, settings: &Settings) -> Result<Vec<KeyMaterial>, Error> {
        let mut materials = Vec::new();
        if let Some(path) = &self.passphrase_file {
            let mut secret = Zeroizing::new(std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read passphrase_file {}: {e}",
                    path.display()
                ))
            })?);
            // A file written by `echo` ends in a newline that is no part of the passphrase.
            for end in [b'\n', b'\r'] {
                if secret.last() == Some(&end) {
                    secret.pop();
                }
            }
            if secret.is_empty() {
                return Err(Error::Config(format!(
                    "passphrase_file {} is empty: write the passphrase into it",
                    path.display()
                )));
            }
            materials.push(KeyMaterial::Passphrase {
                secret: Arc::new(secret),
                origin: format!("passphrase_file {}", path.display()),
            });
        }
        if let Some(secret) = std::env::var_os(self.passphrase_env).filter(|v| !v.is_empty()) {
            use std::os::unix::ffi::OsStringExt;
            materials.push(KeyMaterial::Passphrase {
                secret: Arc::new(Zeroizing::new(secret.into_vec())),
                origin: self.passphrase_env.to_owned(),
            });
        }
        if let Some(path) = &self.key_file {
            let content = Zeroizing::new(std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read key_file {}: {e}", path.display()))
            })?);
            if content.len() < KEY_FILE_MIN_LEN {
                return Err(Error::Config(format!(
                    "key_file {} has {} bytes: a key file needs {KEY_FILE_MIN_LEN} or more random \
                     bytes (head -c 32 /dev/urandom > FILE)",
                    path.display(),
                    content.len()
                )));
            }
            materials.push(KeyMaterial::KeyFile {
                content: Arc::new(content),
                path: path.clone(),
            });
        }
        if let Some(key_id) = &self.kms_key_id {
            materials.push(KeyMaterial::Kms {
                key_id: key_id.clone(),
                service: crate::kms::key_service(settings)?,
            });
        }
        Ok(materials)
    }
}
