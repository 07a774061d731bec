//! The application layer: how one command runs, from its options to its outcome, with what
//! is composed around it (expire after a backup, the drill's verdict, the run history, whose
//! user a root backup becomes). `cli` parses arguments into a [`Request`], calls [`run`],
//! prints the [`Outcome`] and exits with its verdict; everything it decides lives here, where
//! it is tested in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::catalog::keys::KeyMaterial;
use crate::commands::backup::{BackupOptions, BackupReport, backup};
use crate::commands::check::{CheckOptions, CheckReport, check};
use crate::commands::drill::{DrillOptions, DrillReport, drill};
use crate::commands::expire::{ExpireOptions, ExpireReport, expire};
use crate::commands::history::{HistoryOptions, HistoryReport, RECORDED_COMMANDS, RunFacts};
use crate::commands::init::{InitOptions, InitReport, init};
use crate::commands::key::{KeyReport, key_add, key_list, key_remove};
use crate::commands::list::{ListOptions, ListReport, list};
use crate::commands::metrics::{MetricsOptions, metrics};
use crate::commands::pin::{PinOptions, PinReport, pin};
use crate::commands::prefetch::{PrefetchOptions, PrefetchReport, prefetch};
use crate::commands::restore::{RestoreOptions, RestoreReport, restore};
use crate::commands::restore_table::{RestoreTableOptions, RestoreTableReport, restore_table};
use crate::commands::verify::{VerifyOptions, VerifyReport, verify};
use crate::config::{RepoConfig, Settings};
use crate::error::{EXIT_OK, Error, Result};
use crate::ownership::{Owner, become_owner, running_as_root};
use crate::recovery::retention::Policy;
use crate::spool::{GetSpool, SpoolKind, spool_dir};

/// A command that works on an opened repository, with its options built.
pub enum Request {
    Init(InitOptions),
    Key(KeyRequest),
    Prefetch(PrefetchOptions),
    /// A backup, then expire when a retention policy is set.
    Backup {
        options: BackupOptions,
        policy: Policy,
    },
    Restore(RestoreRun),
    Drill(DrillOptions),
    RestoreTable(RestoreTableOptions),
    List(ListOptions),
    Verify(VerifyOptions),
    Check(CheckOptions),
    Metrics {
        options: MetricsOptions,
        /// Serve `/metrics` here instead of printing them once.
        listen: Option<SocketAddr>,
    },
    History(HistoryOptions),
    Expire(ExpireOptions),
    Pin(PinOptions),
}

#[derive(Debug)]
pub enum KeyRequest {
    List,
    Add(Vec<KeyMaterial>),
    Remove { fingerprint: String },
}

/// A restore, and the spool a recovery from the same repository may have left behind.
pub struct RestoreRun {
    pub options: RestoreOptions,
    /// The configured `spool_path`, if any (the default spool is inside the new data
    /// directory, so nothing is left there).
    pub spool_path: Option<PathBuf>,
    /// [`RepoConfig::spool_key`] of the repository.
    pub spool_key: String,
}

/// What a command produced, for `cli` to print.
#[derive(Debug)]
pub enum Outcome {
    Init(InitReport),
    Key(KeyReport),
    Prefetch(PrefetchReport),
    Backup {
        report: Box<BackupReport>,
        /// Expire's outcome when a retention policy is set: its failure leaves the backup a
        /// success (docs/operations.md, "Retention").
        expired: Option<Result<ExpireReport>>,
    },
    Restore {
        report: Box<RestoreReport>,
        recovery: crate::pg::recovery_target::RecoveryRequest,
    },
    Drill(DrillReport),
    RestoreTable(RestoreTableReport),
    List(ListReport),
    Verify {
        report: VerifyReport,
        backup: Option<String>,
    },
    Check(CheckReport),
    /// The metrics, printed once (a served endpoint returns nothing until it fails).
    Metrics(String),
    History(HistoryReport),
    Expire(ExpireReport),
    Pin(PinReport),
}

/// A command that ran: what to print, and the exit code or error to end with.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub verdict: Result<u8>,
}

impl Request {
    /// The subcommand's name, as the run history records it.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Init(_) => "init",
            Request::Key(_) => "key",
            Request::Prefetch(_) => "archive-get-prefetch",
            Request::Backup { .. } => "backup",
            Request::Restore(_) => "restore",
            Request::Drill(_) => "drill",
            Request::RestoreTable(_) => "restore-table",
            Request::List(_) => "list",
            Request::Verify(_) => "verify",
            Request::Check(_) => "check",
            Request::Metrics { .. } => "metrics",
            Request::History(_) => "history",
            Request::Expire(_) => "expire",
            Request::Pin(options) if options.pinned == Some(false) => "unpin",
            Request::Pin(_) => "pin",
        }
    }

    /// Whether the run history records this run: a dry run changes nothing, so it is no run
    /// of its command.
    fn recorded(&self) -> bool {
        RECORDED_COMMANDS.contains(&self.name())
            && !matches!(self, Request::Expire(options) if options.dry_run)
    }

    /// Whom the command becomes before it opens the repository. `pitr backup` run as root
    /// becomes the data directory's owner, who can read every file of the cluster and whose
    /// objects PostgreSQL's user can read back (a backup run as root would write objects only
    /// root can read). None when not root, or for other commands.
    pub fn run_as(&self) -> Result<Option<Owner>> {
        let Request::Backup { options, .. } = self else {
            return Ok(None);
        };
        if !running_as_root() {
            return Ok(None);
        }
        let Some(pgdata) = &options.pgdata else {
            return Err(Error::Config(
                "run as root, backup needs --pgdata (or PGDATA) to know whose cluster it is: \
                 give it, or run as the data directory's owner (e.g. sudo -u postgres pitr \
                 backup …)"
                    .into(),
            ));
        };
        let owner = Owner::of(pgdata).map_err(|e| Error::local_io(pgdata.display(), e))?;
        Ok((!owner.is_root()).then_some(owner))
    }
}

/// Exit code for `error` from the named command: the table's, but Nagios reads anything that
/// kept `check` from running as UNKNOWN, and PostgreSQL reads archive-get's own mapping.
pub fn exit_code(command: &str, error: &Error) -> u8 {
    match command {
        "archive-get" => crate::error::archive_get_exit_code(error.exit_code()),
        "check" => crate::error::EXIT_CHECK_UNKNOWN,
        _ => error.exit_code(),
    }
}

/// Every configured repository (1 to 4), and the one `--repo-index` points a command at.
#[derive(Clone, Debug)]
pub struct Repositories {
    /// The settings as given, every repository's: what restore_command carries on.
    pub settings: Settings,
    /// In order of their numbers.
    pub all: Vec<Access>,
    /// `repo_index`, checked to be one of `all`.
    pub chosen: Option<u8>,
}

impl Repositories {
    pub fn resolve(settings: Settings) -> Result<Self> {
        let all = settings
            .repositories()?
            .into_iter()
            .map(|(number, own)| Access::of(number, own))
            .collect::<Result<Vec<_>>>()?;
        let repositories = Repositories {
            chosen: settings.repo_index,
            settings,
            all,
        };
        if let Some(n) = repositories.chosen {
            repositories
                .numbered(n)
                .map_err(|e| Error::Config(format!("repo_index {n}: {e}")))?;
        }
        Ok(repositories)
    }

    /// The repository a command that works on one uses: the chosen one, else the first.
    pub fn primary(&self) -> &Access {
        self.chosen
            .and_then(|n| self.all.iter().find(|access| access.number == n))
            .unwrap_or(&self.all[0])
    }

    /// The repositories a command that works on each uses: the chosen one, else all.
    pub fn selected(&self) -> Vec<&Access> {
        match self.chosen {
            Some(_) => vec![self.primary()],
            None => self.all.iter().collect(),
        }
    }

    /// Repository `n`, which must be configured.
    pub fn numbered(&self, n: u8) -> Result<&Access> {
        self.all
            .iter()
            .find(|access| access.number == n)
            .ok_or_else(|| {
                let numbers: Vec<String> = self.all.iter().map(|a| a.number.to_string()).collect();
                Error::Config(format!(
                    "repository {n} is not configured (configured: {}); repository N is set by \
                 repoN, --repoN or PITR_REPON",
                    numbers.join(", ")
                ))
            })
    }

    /// Whether more than one repository is configured.
    pub fn several(&self) -> bool {
        self.all.len() > 1
    }
}

/// How to open one repository.
#[derive(Clone, Debug)]
pub struct Access {
    /// Its number, 1 to 4.
    pub number: u8,
    /// Its own settings (see [`Settings::repository`]).
    pub settings: Settings,
    pub config: RepoConfig,
}

impl Access {
    /// The first repository the settings name.
    pub fn resolve(settings: Settings) -> Result<Self> {
        let repositories = Repositories::resolve(settings)?;
        Ok(repositories.primary().clone())
    }

    fn of(number: u8, settings: Settings) -> Result<Self> {
        let config = RepoConfig::resolve(&settings)?;
        Ok(Access {
            number,
            settings,
            config,
        })
    }

    /// The same repository, tried once per request and for a few seconds at most: for one
    /// known to be unreachable, which must not hold each archive-push for the retry time.
    pub fn probing(&self) -> Access {
        let mut probing = self.clone();
        let retry = &mut probing.config.retry;
        retry.attempt_timeout = retry
            .attempt_timeout
            .min(std::time::Duration::from_secs(10));
        retry.total = retry.total.min(std::time::Duration::from_secs(10));
        probing
    }

    /// How the log names it: "repository 2 (s3://bucket/prefix)".
    pub fn describe(&self) -> String {
        format!("repository {} ({})", self.number, self.config.spool_key())
    }

    /// The repository, opened (see [`Catalog::open`]), for every command that reads or
    /// writes it.
    pub async fn open(&self) -> Result<Catalog> {
        Ok(self.connect_as(None).await?.open().await?)
    }

    /// The same, keeping the data key a passphrase opens in `key_cache` (a spool file), so
    /// that the next archive-push or archive-get call skips the key derivation.
    pub async fn open_with_key_cache(&self, key_cache: PathBuf) -> Result<Catalog> {
        let catalog = self.connect_as(None).await?.with_key_cache(key_cache);
        Ok(catalog.open().await?)
    }

    /// The repository's store with the settings' keys and compression, not opened yet (init
    /// records the identity that opening reads), becoming `run_as` once the keys are read
    /// (they may be root's files) and before the store is opened.
    async fn connect_as(&self, run_as: Option<&Owner>) -> Result<Catalog> {
        let settings = &self.settings;
        let key_materials = settings.key_sources(self.number).materials(settings)?;
        if let Some(owner) = run_as {
            become_owner(owner).map_err(|e| {
                Error::Config(format!(
                    "cannot become {}, the data directory's owner: {e}",
                    owner.name()
                ))
            })?;
            tracing::info!("running as {}, the data directory's owner", owner.name());
        }
        Ok(Catalog::new(self.config.open().await?)
            .with_lock_stale_after(self.config.lock_stale_after)
            .with_replay_claim_stale_after(self.config.replay_claim_stale_after)
            .with_compression_request(settings.compression()?)
            .with_key_materials(key_materials))
    }

    /// The repository `request` works on, as the user it runs as, with what the command
    /// needs before (a local repository's directory for init) and after (the prefetcher's
    /// key cache); opened, but for init, which records the identity, and for check and
    /// metrics, which report a repository they cannot read as a state (UNKNOWN, or per
    /// scrape for a long-running exporter) rather than fail.
    pub async fn open_for(&self, request: &Request) -> Result<Catalog> {
        if let (Request::Init(options), Some(root)) = (request, self.config.local_root())
            && let Some(pgdata) = options.cluster.data_directory()
        {
            crate::commands::init::prepare_local_repository(root, pgdata)?;
        }
        let catalog = self.connect_as(request.run_as()?.as_ref()).await?;
        Ok(match request {
            Request::Init(_) | Request::Check(_) | Request::Metrics { .. } => catalog,
            Request::Prefetch(options) => {
                catalog
                    .with_key_cache(
                        options
                            .spool
                            .dir
                            .join(crate::catalog::keys::key_cache_file(self.number)),
                    )
                    .open()
                    .await?
            }
            _ => catalog.open().await?,
        })
    }
}

/// A run of the named command refused before it started (its options are wrong: a bad
/// threshold, policy or checks file): recorded in the history as failed when the command is
/// one it keeps, so that monitoring sees it. Best effort: the error is what the user sees.
pub async fn record_refused(access: &Access, command: &'static str, error: &Error) {
    if !RECORDED_COMMANDS.contains(&command) {
        return;
    }
    let Ok(catalog) = access.open().await else {
        return;
    };
    let now = chrono::Utc::now();
    let record = crate::commands::history::run_record(
        command,
        now,
        now,
        exit_code(command, error),
        Some(error.to_string()),
        RunFacts::default(),
    );
    crate::commands::history::record(&catalog, &record).await;
}

/// Runs `request` on `catalog` and records the run in the history when its command is one
/// the history keeps. `Err` when the command failed before it had anything to report.
pub async fn run(catalog: &Catalog, request: Request) -> Result<Finished> {
    let name = request.name();
    let recorded = request.recorded();
    let started = chrono::Utc::now();
    let result = execute(catalog, request).await.map(|outcome| Finished {
        verdict: outcome.verdict(),
        outcome,
    });
    if recorded {
        let (code, error, facts) = match &result {
            Ok(Finished { outcome, verdict }) => match verdict {
                Ok(code) => (*code, None, outcome.facts()),
                Err(e) => (exit_code(name, e), Some(e.to_string()), outcome.facts()),
            },
            Err(e) => (exit_code(name, e), Some(e.to_string()), RunFacts::default()),
        };
        let record = crate::commands::history::run_record(
            name,
            started,
            chrono::Utc::now(),
            code,
            error,
            facts,
        );
        crate::commands::history::record(catalog, &record).await;
    }
    result
}

async fn execute(catalog: &Catalog, request: Request) -> Result<Outcome> {
    Ok(match request {
        Request::Init(options) => Outcome::Init(init(catalog, &options).await?),
        Request::Key(KeyRequest::List) => Outcome::Key(key_list(catalog).await?),
        Request::Key(KeyRequest::Add(new)) => Outcome::Key(key_add(catalog, &new).await?),
        Request::Key(KeyRequest::Remove { fingerprint }) => {
            Outcome::Key(key_remove(catalog, &fingerprint).await?)
        }
        Request::Prefetch(options) => Outcome::Prefetch(prefetch(catalog, &options).await?),
        Request::Backup { options, policy } => {
            // A policy is checked before the backup (when the options were built), applied
            // after it.
            let report = backup(catalog, &options).await?;
            let expired = if policy.is_empty() {
                None
            } else {
                let options = ExpireOptions {
                    policy,
                    dry_run: false,
                    now: chrono::Utc::now(),
                };
                Some(expire(catalog, &options).await)
            };
            Outcome::Backup {
                report: Box::new(report),
                expired,
            }
        }
        Request::Restore(run) => {
            if !run.options.dry_run {
                remove_stale_spool(run.spool_path.as_deref(), &run.spool_key);
            }
            Outcome::Restore {
                report: Box::new(restore(catalog, &run.options).await?),
                recovery: run.options.request.recovery.clone(),
            }
        }
        Request::Drill(options) => Outcome::Drill(drill(catalog, &options).await?),
        Request::RestoreTable(options) => {
            Outcome::RestoreTable(restore_table(catalog, &options).await?)
        }
        Request::List(options) => Outcome::List(list(catalog, &options).await?),
        Request::Verify(options) => Outcome::Verify {
            report: verify(catalog, &options).await?,
            backup: options.backup,
        },
        Request::Check(options) => Outcome::Check(check(catalog, &options).await?),
        Request::Metrics {
            options,
            listen: None,
        } => Outcome::Metrics(metrics(catalog, &options).await?),
        Request::Metrics {
            options,
            listen: Some(addr),
        } => {
            crate::commands::metrics::serve_at(catalog, addr, &options).await?;
            Outcome::Metrics(String::new())
        }
        Request::History(options) => {
            Outcome::History(crate::commands::history::history(catalog, &options).await?)
        }
        Request::Expire(options) => Outcome::Expire(expire(catalog, &options).await?),
        Request::Pin(options) => Outcome::Pin(pin(catalog, &options).await?),
    })
}

/// Segments a recovery from this repository left in a configured spool are not a new
/// restore's.
fn remove_stale_spool(spool_path: Option<&Path>, spool_key: &str) {
    if let Some(path) = spool_path {
        GetSpool::new(spool_dir(
            Some(path),
            Path::new("."),
            SpoolKind::Get,
            spool_key,
        ))
        .remove();
    }
}

impl Outcome {
    /// The exit code the command ends with: verify's and check's come from their reports; a
    /// drill whose restore worked but whose checks failed is an error.
    pub fn verdict(&self) -> Result<u8> {
        match self {
            Outcome::Verify { report, .. } => Ok(report.exit_code()),
            Outcome::Check(report) => Ok(report.exit_code),
            Outcome::Drill(report) if !report.passed => Err(Error::DrillFailed(format!(
                "the restore of backup {} worked, but {}",
                report.backup,
                crate::commands::drill::failures(report)
            ))),
            _ => Ok(EXIT_OK),
        }
    }

    /// What the run history records beside the exit code.
    pub fn facts(&self) -> RunFacts {
        let mut facts = RunFacts::default();
        match self {
            Outcome::Backup { report, .. } => {
                facts.bytes = Some(report.manifest.stored_bytes);
                facts.backup_id = Some(report.manifest.id.clone());
            }
            Outcome::Drill(report) => {
                facts.bytes = Some(report.bytes_restored);
                facts.backup_id = Some(report.backup.clone());
            }
            Outcome::RestoreTable(report) => {
                facts.bytes = Some(report.bytes_read);
                facts.backup_id = Some(report.backup.clone());
            }
            Outcome::Verify { report, backup } => {
                facts.bytes = Some(report.bytes);
                facts.backup_id = backup.clone();
                if !report.ok {
                    facts.detail = Some(format!("{} problem(s)", report.problems.len()));
                }
            }
            Outcome::Check(report) => {
                facts.status = Some(report.state.run_status());
                facts.detail = report.problems();
            }
            _ => {}
        }
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_of(pgdata: Option<&str>) -> Request {
        Request::Backup {
            options: BackupOptions {
                pgdata: pgdata.map(PathBuf::from),
                dbname: None,
                fast: true,
                jobs: 1,
                wal_timeout: std::time::Duration::from_secs(1),
                progress: std::sync::Arc::new(crate::progress::Silent),
                backup_type: Default::default(),
                pin: false,
                annotations: Default::default(),
                method: Default::default(),
                max_rate_kb: None,
                wal_method: Default::default(),
                network_compression: Default::default(),
            },
            policy: Policy::default(),
        }
    }

    #[test]
    fn a_root_backup_without_a_data_directory_is_refused() {
        if !running_as_root() {
            return; // only root changes user
        }
        let err = backup_of(None).run_as().unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("sudo -u postgres"), "{err}");
        // A data directory root owns: nobody to become.
        assert_eq!(backup_of(Some("/")).run_as().unwrap(), None);
        let list = Request::List(ListOptions { jobs: 1 });
        assert!(list.run_as().unwrap().is_none());
    }

    #[test]
    fn dry_runs_and_unrecorded_commands_stay_out_of_the_history() {
        let expire = |dry_run| {
            Request::Expire(ExpireOptions {
                policy: Policy::default(),
                dry_run,
                now: chrono::Utc::now(),
            })
        };
        assert!(expire(false).recorded());
        assert!(!expire(true).recorded());
        assert!(backup_of(None).recorded());
        assert!(!Request::List(ListOptions { jobs: 1 }).recorded());
        let unpin = Request::Pin(PinOptions {
            id: "x".into(),
            pinned: Some(false),
            annotations: Default::default(),
        });
        assert_eq!(unpin.name(), "unpin");
    }
}
