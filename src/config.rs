//! Configuration: one set of names, read from a TOML file, then `PITR_…` environment
//! variables, then flags, each overriding the one before.
//!
//! The flag and environment layers are merged by clap (see `cli.rs`); this module reads the
//! file and resolves the result.

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

/// Settings as one source gives them; `None` where it is silent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub repo: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_path_style: Option<bool>,
    /// Seconds one repository request may take before it counts as failed and is retried.
    pub storage_timeout: Option<u64>,
    /// Seconds a failing repository request is retried for, in all.
    pub storage_retry_time: Option<u64>,
    /// Seconds after which an S3 lock object's heartbeat is stale and the lock taken over.
    pub lock_stale_after: Option<u64>,
    /// Seconds after which a replay claim's heartbeat is stale and expire ignores the claim.
    pub replay_claim_stale_after: Option<u64>,
    /// Webhook (Slack, Discord, Mattermost) told when a command fails.
    pub notify_url: Option<String>,
    /// Tell the webhook about successes too.
    pub notify_on_success: Option<bool>,
    /// `pitr check` thresholds: "WARNING,CRITICAL", "CRITICAL" or "off" (see commands::check).
    pub check_backup_age: Option<String>,
    pub check_archive_lag: Option<String>,
    pub check_min_backups: Option<String>,
    pub check_verify_age: Option<String>,
    /// Seconds `pitr check --switch-wal` waits for the switched segment.
    pub check_switch_wal_timeout: Option<u64>,
    /// Retention (`pitr expire`, and after each `pitr backup` when any is set).
    pub keep_last: Option<u32>,
    pub keep_within: Option<String>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// IANA time zone of the GFS calendar periods (default UTC).
    pub retention_timezone: Option<String>,
    /// Local directory for archive-push's look-ahead marks and archive-get's prefetched
    /// segments (default: `.pitr-spool` in the WAL file's directory, i.e. pg_wal).
    pub spool_path: Option<std::path::PathBuf>,
    /// WAL files one archive-push stores at once: the one PostgreSQL asked for and those
    /// marked ready after it (default 4; 1 turns the look-ahead off).
    pub archive_push_parallel: Option<usize>,
    /// Segments archive-get's background prefetcher fetches at once (default 2; 0 turns
    /// prefetching off).
    pub archive_get_prefetch: Option<usize>,
    /// Bytes of prefetched segments the spool may hold: a number with an optional unit,
    /// "256MiB", "1GiB" (default 256MiB).
    pub archive_get_queue_max: Option<String>,
    /// Compression of a new repository, chosen by `pitr init`: "lz4" (default) or "zstd"
    /// ("zst" too). Later commands may only repeat the repository's.
    pub compression: Option<String>,
    /// Compression level (zstd 1-22, default 3; lz4 has none). Given to a later command, the
    /// level of the objects it writes.
    pub compression_level: Option<i32>,
    /// File whose content (without a final newline) is the passphrase of an encrypted
    /// repository. The passphrase itself may come from `PITR_PASSPHRASE` only, never a flag
    /// or this file's settings, so that it shows in no process list or config dump.
    pub passphrase_file: Option<std::path::PathBuf>,
    /// File of 32 or more random bytes that opens an encrypted repository.
    pub key_file: Option<std::path::PathBuf>,
    /// AWS KMS key (id, ARN or alias) that wraps an encrypted repository's data key.
    pub kms_key_id: Option<String>,
}

impl Settings {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, Error> {
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

    /// `self` wins where it has a value.
    pub fn over(self, lower: Settings) -> Settings {
        Settings {
            repo: self.repo.or(lower.repo),
            s3_endpoint: self.s3_endpoint.or(lower.s3_endpoint),
            s3_path_style: self.s3_path_style.or(lower.s3_path_style),
            storage_timeout: self.storage_timeout.or(lower.storage_timeout),
            storage_retry_time: self.storage_retry_time.or(lower.storage_retry_time),
            lock_stale_after: self.lock_stale_after.or(lower.lock_stale_after),
            replay_claim_stale_after: self
                .replay_claim_stale_after
                .or(lower.replay_claim_stale_after),
            notify_url: self.notify_url.or(lower.notify_url),
            notify_on_success: self.notify_on_success.or(lower.notify_on_success),
            check_backup_age: self.check_backup_age.or(lower.check_backup_age),
            check_archive_lag: self.check_archive_lag.or(lower.check_archive_lag),
            check_min_backups: self.check_min_backups.or(lower.check_min_backups),
            check_verify_age: self.check_verify_age.or(lower.check_verify_age),
            check_switch_wal_timeout: self
                .check_switch_wal_timeout
                .or(lower.check_switch_wal_timeout),
            keep_last: self.keep_last.or(lower.keep_last),
            keep_within: self.keep_within.or(lower.keep_within),
            keep_daily: self.keep_daily.or(lower.keep_daily),
            keep_weekly: self.keep_weekly.or(lower.keep_weekly),
            keep_monthly: self.keep_monthly.or(lower.keep_monthly),
            keep_yearly: self.keep_yearly.or(lower.keep_yearly),
            retention_timezone: self.retention_timezone.or(lower.retention_timezone),
            spool_path: self.spool_path.or(lower.spool_path),
            archive_push_parallel: self.archive_push_parallel.or(lower.archive_push_parallel),
            archive_get_prefetch: self.archive_get_prefetch.or(lower.archive_get_prefetch),
            archive_get_queue_max: self.archive_get_queue_max.or(lower.archive_get_queue_max),
            compression: self.compression.or(lower.compression),
            compression_level: self.compression_level.or(lower.compression_level),
            passphrase_file: self.passphrase_file.or(lower.passphrase_file),
            key_file: self.key_file.or(lower.key_file),
            kms_key_id: self.kms_key_id.or(lower.kms_key_id),
        }
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
}

pub const DEFAULT_ARCHIVE_PUSH_PARALLEL: usize = 4;
pub const DEFAULT_ARCHIVE_GET_PREFETCH: usize = 2;
pub const DEFAULT_ARCHIVE_GET_QUEUE_MAX: u64 = 256 << 20;

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
        let get_queue_max = match self.archive_get_queue_max.as_deref() {
            None => DEFAULT_ARCHIVE_GET_QUEUE_MAX,
            Some(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|_| {
                    Error::Config(format!(
                        "archive_get_queue_max '{text}' is not a size: give bytes or a number \
                         with a unit, such as 256MiB or 1GiB"
                    ))
                })?
                .as_u64(),
        };
        Ok(SpoolConfig {
            spool_path: self.spool_path.clone(),
            push_parallel,
            get_prefetch: self
                .archive_get_prefetch
                .unwrap_or(DEFAULT_ARCHIVE_GET_PREFETCH),
            get_queue_max,
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

impl Settings {
    /// The repository's key settings.
    pub fn key_sources(&self) -> KeySources {
        KeySources {
            passphrase_file: self.passphrase_file.clone(),
            passphrase_env: PASSPHRASE_ENV,
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
