//! From parsed arguments to a command's options, built once: each subcommand's flags, the
//! settings, and the machine (cores, this executable) make one [`Request`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Command, KeyAction, ScratchArgs, TargetArgs, progress, restore_command};
use crate::commands::backup::BackupOptions;
use crate::commands::check::{CheckOptions, CheckThresholds};
use crate::commands::drill::DrillOptions;
use crate::commands::expire::ExpireOptions;
use crate::commands::history::HistoryOptions;
use crate::commands::init::{ClusterSource, InitOptions};
use crate::commands::list::ListOptions;
use crate::commands::metrics::MetricsOptions;
use crate::commands::pin::PinOptions;
use crate::commands::prefetch::PrefetchOptions;
use crate::commands::restore::RestoreOptions;
use crate::commands::restore::server::ServerRequest;
use crate::commands::restore_table::{RestoreTableOptions, Selection};
use crate::commands::run::{KeyRequest, Request, RestoreRun};
use crate::commands::verify::VerifyOptions;
use crate::config::{RepoConfig, Settings};
use crate::error::{Error, Result};
use crate::ownership::Owner;
use crate::recovery::plan::PlanRequest;
use crate::spool::GetSpool;

/// What every command's options may draw on beside its own flags.
pub struct Context<'a> {
    /// The settings of the repository the command works on.
    pub settings: &'a Settings,
    /// Every repository's, which restore_command carries on.
    pub all_settings: &'a Settings,
    /// The repository's number: the unnumbered retention flags (--keep-last …) are
    /// repository 1's, as the unnumbered settings are.
    pub number: u8,
    pub repo: &'a RepoConfig,
    /// `--config`, which restore_command repeats.
    pub config_file: Option<&'a Path>,
    pub threads: usize,
    /// `-q`: only errors, no progress either.
    pub quiet: bool,
}

impl Context<'_> {
    /// The retention flags that apply to this repository: the unnumbered ones to the first
    /// (repository N has `--repoN-keep-last` …, global flags).
    fn retention_flags(&self, flags: &crate::config::RetentionArgs) -> Settings {
        if self.number == 1 {
            flags.settings()
        } else {
            Settings::default()
        }
    }

    fn restore_command(&self) -> String {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "pitr".into());
        restore_command::restore_command(&exe, self.all_settings, self.config_file)
    }

    /// The restore a drill or restore-table runs in its scratch directory (which decides the
    /// directory, the archive mode, the port and the target action itself).
    fn scratch_restore(
        &self,
        target: &TargetArgs,
        backup: Option<String>,
        scratch: &ScratchArgs,
    ) -> RestoreOptions {
        RestoreOptions {
            pgdata: PathBuf::new(),
            request: PlanRequest {
                recovery: target.recovery(None),
                backup,
            },
            jobs: scratch.jobs.unwrap_or(self.threads),
            force: false,
            dry_run: false,
            tablespace_map: HashMap::new(),
            restore_command: self.restore_command(),
            sync: false,
            server: ServerRequest::default(),
            progress: progress::terminal(self.quiet),
            owner: None,
            db_include: Vec::new(),
            tablespace_root: None,
            // The scratch directory names its own claim.
            claim: None,
            command: "drill",
            // A drill stops its scratch server and removes the directory at a signal itself.
            interrupt: std::sync::Arc::new(crate::interrupt::Interrupt::never()),
            config: Default::default(),
        }
    }
}

fn scratch_parent(scratch: &ScratchArgs) -> PathBuf {
    scratch
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

impl Command {
    /// Whether the command prints JSON instead of text.
    pub fn json(&self) -> bool {
        match self {
            Command::Key {
                action: KeyAction::List { json },
            }
            | Command::Drill { json, .. }
            | Command::RestoreTable { json, .. }
            | Command::List { json }
            | Command::Verify { json, .. }
            | Command::Check { json, .. }
            | Command::History { json, .. }
            | Command::Expire { json, .. } => *json,
            _ => false,
        }
    }

    /// The options of a command that works on an opened repository. Demo, archive-push and
    /// archive-get run before one is opened (see `run`).
    pub fn request(self, context: &Context) -> Result<Request> {
        let settings = context.settings;
        let threads = context.threads;
        Ok(match self {
            Command::Init {
                pgdata,
                dbname,
                encrypt,
            } => Request::Init(InitOptions {
                cluster: match (pgdata, dbname) {
                    (Some(pgdata), _) => ClusterSource::DataDirectory(pgdata),
                    (None, Some(dbname)) => ClusterSource::Server {
                        dbname: Some(dbname),
                    },
                    (None, None) => {
                        return Err(Error::Config(
                            "init needs the cluster: --pgdata DIR (or PGDATA) on its host, or \
                             --dbname CONNINFO to ask its server"
                                .into(),
                        ));
                    }
                },
                compression: settings
                    .compression()?
                    .for_new_repository()
                    .map_err(Error::Config)?,
                encrypt,
            }),
            Command::Key { action } => Request::Key(match action {
                KeyAction::List { .. } => KeyRequest::List,
                KeyAction::Add {
                    new_passphrase_file,
                    new_key_file,
                    new_kms_key_id,
                } => KeyRequest::Add(
                    crate::config::KeySources {
                        passphrase_file: new_passphrase_file,
                        passphrase_env: crate::config::NEW_PASSPHRASE_ENV,
                        key_file: new_key_file,
                        kms_key_id: new_kms_key_id,
                    }
                    .materials(settings)?,
                ),
                KeyAction::Remove { fingerprint } => KeyRequest::Remove { fingerprint },
            }),
            Command::ArchiveGetPrefetch { spool, after } => {
                let spool_config = settings.spool()?;
                Request::Prefetch(PrefetchOptions {
                    after,
                    spool: GetSpool::new(spool),
                    parallel: spool_config.get_prefetch,
                    queue_max: spool_config.get_queue_max,
                    pgdata: std::env::current_dir()
                        .map_err(|e| Error::local_io("the working directory", e))?,
                    fallbacks: Vec::new(),
                })
            }
            Command::Backup {
                pgdata,
                dbname,
                fast: _,
                spread,
                jobs,
                wal_timeout,
                backup_type,
                pin,
                annotate,
                method,
                max_rate,
                wal_method,
                network_compression,
                retention,
            } => Request::Backup {
                // Checked before the backup, applied after it.
                policy: context
                    .retention_flags(&retention)
                    .over(settings.clone())
                    .retention_policy()?,
                options: BackupOptions {
                    pgdata,
                    dbname,
                    fast: !spread,
                    jobs: jobs.unwrap_or(threads),
                    wal_timeout: Duration::from_secs(wal_timeout),
                    progress: progress::terminal(context.quiet),
                    backup_type,
                    pin,
                    annotations: annotate.into_iter().collect(),
                    method,
                    max_rate_kb: max_rate,
                    wal_method,
                    network_compression,
                },
            },
            Command::Restore {
                pgdata,
                target,
                target_action,
                db_include,
                backup,
                jobs,
                force,
                no_sync,
                dry_run,
                tablespace_map,
                owner,
                archive_mode,
                port,
                restore_config,
                config_dir,
            } => {
                let pgdata = pgdata.unwrap_or_default();
                Request::Restore(RestoreRun {
                    options: RestoreOptions {
                        pgdata: std::path::absolute(&pgdata).unwrap_or(pgdata),
                        request: PlanRequest {
                            recovery: target.recovery(target_action),
                            backup,
                        },
                        jobs: jobs.unwrap_or(threads),
                        force,
                        dry_run,
                        tablespace_map: tablespace_map.into_iter().collect(),
                        restore_command: context.restore_command(),
                        sync: !no_sync,
                        server: ServerRequest { archive_mode, port },
                        progress: progress::terminal(context.quiet),
                        owner: owner.map(|name| owner_named(&name)).transpose()?,
                        db_include,
                        tablespace_root: None,
                        claim: (!dry_run).then(crate::catalog::replay::new_claim_id),
                        command: "restore",
                        interrupt: std::sync::Arc::new(if dry_run {
                            crate::interrupt::Interrupt::never()
                        } else {
                            crate::interrupt::Interrupt::listen()
                        }),
                        config: crate::commands::restore::config::ConfigRequest {
                            restore_config,
                            config_dir: config_dir
                                .map(|dir| std::path::absolute(&dir).unwrap_or(dir)),
                        },
                    },
                    spool_path: settings.spool_path.clone(),
                    spool_key: context.repo.spool_key(),
                })
            }
            Command::Drill {
                target,
                backup,
                checks,
                no_amcheck,
                scratch,
                json: _,
            } => Request::Drill(DrillOptions {
                restore: context.scratch_restore(&target, backup, &scratch),
                scratch_parent: scratch_parent(&scratch),
                keep: scratch.keep,
                pg_bin: scratch.pg_bin,
                amcheck: !no_amcheck,
                checks: match &checks {
                    Some(path) => user_checks(path)?,
                    None => Vec::new(),
                },
            }),
            Command::RestoreTable {
                table,
                schema,
                target,
                backup,
                into,
                database,
                rename,
                replace,
                scratch,
                json: _,
            } => Request::RestoreTable(RestoreTableOptions {
                restore: context.scratch_restore(&target, backup, &scratch),
                selection: match schema {
                    Some(schema) => Selection::Schema(schema),
                    None => Selection::Tables(table),
                },
                into,
                database,
                rename,
                replace,
                scratch_parent: scratch_parent(&scratch),
                keep: scratch.keep,
                pg_bin: scratch.pg_bin,
            }),
            Command::List { .. } => Request::List(ListOptions { jobs: 2 * threads }),
            Command::Verify {
                backup,
                jobs,
                no_key,
                json: _,
            } => Request::Verify(VerifyOptions {
                jobs: jobs.unwrap_or(2 * threads),
                backup,
                without_key: no_key,
            }),
            Command::Check {
                dbname, switch_wal, ..
            } => Request::Check(CheckOptions {
                thresholds: CheckThresholds::from_settings(settings)?,
                connect: dbname.is_some(),
                dbname,
                switch_wal,
                jobs: 2 * threads,
                repository: 1,
                peers: Vec::new(),
            }),
            Command::Metrics { listen, dbname } => Request::Metrics {
                options: MetricsOptions {
                    jobs: 2 * threads,
                    dbname,
                    repository: 1,
                    peers: Vec::new(),
                },
                listen,
            },
            Command::History { limit, .. } => Request::History(HistoryOptions { limit }),
            Command::Expire {
                retention, dry_run, ..
            } => Request::Expire(ExpireOptions {
                policy: context
                    .retention_flags(&retention)
                    .over(settings.clone())
                    .retention_policy()?,
                dry_run,
                now: chrono::Utc::now(),
            }),
            Command::Pin { id, annotate } => Request::Pin(PinOptions {
                id,
                pinned: Some(true),
                annotations: annotate.into_iter().collect(),
            }),
            Command::Unpin { id } => Request::Pin(PinOptions {
                id,
                pinned: Some(false),
                annotations: Default::default(),
            }),
            Command::Demo { .. }
            | Command::ArchivePush { .. }
            | Command::Copy { .. }
            | Command::ReceiveWal { .. }
            | Command::ArchiveGet { .. } => {
                return Err(Error::Config(format!(
                    "{} does not run on an opened repository",
                    self.name()
                )));
            }
        })
    }
}

fn owner_named(name: &str) -> Result<Owner> {
    Owner::user(name)
        .ok_or_else(|| Error::Config(format!("--owner {name}: no such user on this system")))
}

/// The user checks of `drill --checks FILE`.
fn user_checks(path: &Path) -> Result<Vec<crate::commands::scratch::checks::UserCheck>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--checks {}: {e}", path.display())))?;
    crate::commands::scratch::checks::parse(&text, &path.display().to_string())
        .map_err(Error::Config)
}
