//! From parsed arguments to a command's options, the command, and its printed report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cli, Command, KeyAction, notify, progress, render, restore_command};
use crate::catalog::Catalog;
use crate::catalog::keys::KEY_CACHE_FILE;
use crate::commands::archive_get::{
    ArchiveGetOptions, ClaimStep, archive_get, claim_step, missing_from_plan, serve_from_spool,
    take_claim_step,
};
use crate::commands::archive_push::{ArchivePushOptions, archive_push, archived_ahead};
use crate::commands::backup::{BackupOptions, backup};
use crate::commands::check::{CheckOptions, CheckThresholds, check};
use crate::commands::demo::{DemoOptions, demo};
use crate::commands::drill::{DrillOptions, drill};
use crate::commands::expire::{ExpireOptions, expire};
use crate::commands::history::{HistoryOptions, RECORDED_COMMANDS, RunFacts, history};
use crate::commands::init::{InitOptions, init};
use crate::commands::list::{ListOptions, list};
use crate::commands::metrics::{MetricsOptions, metrics, serve};
use crate::commands::pin::{PinOptions, pin};
use crate::commands::prefetch::{PrefetchOptions, prefetch};
use crate::commands::restore::server::ServerRequest;
use crate::commands::restore::{RestoreOptions, restore};
use crate::commands::restore_table::{RestoreTableOptions, Selection, restore_table};
use crate::commands::verify::{VerifyOptions, verify};
use crate::config::{RepoConfig, Settings};
use crate::error::{EXIT_OK, Error, Result};
use crate::ownership::{Owner, become_owner, running_as_root};
use crate::pg::WalFileName;
use crate::recovery::plan::PlanRequest;
use crate::spool::{GetSpool, PushSpool, SpoolKind, spool_dir, wal_dir_of};

/// Runs the command the arguments name; the exit code when it ran to completion. Then tells
/// the `notify_url` webhook how it went, for the commands that notify (see `notify`).
pub async fn run(cli: Cli) -> Result<u8> {
    let (started, clock) = (chrono::Utc::now(), std::time::Instant::now());
    let command = cli.command.name();
    // Read once, for the command and the hook.
    let settings = resolved_settings(&cli.global);
    let for_hook = settings.as_ref().ok().cloned();
    let outcome = run_command(cli, settings).await;
    notify::after_command(
        for_hook.as_ref(),
        command,
        started,
        clock.elapsed(),
        &outcome,
    )
    .await;
    outcome
}

/// Flags and environment over the config file.
fn resolved_settings(global: &super::GlobalArgs) -> Result<Settings> {
    let settings = global.settings();
    match &global.config {
        Some(path) => Ok(settings.over(Settings::read_file(path)?)),
        None => Ok(settings),
    }
}

async fn run_command(cli: Cli, settings: Result<Settings>) -> Result<u8> {
    if let Command::Demo { dir } = cli.command {
        // The demo sets up its own repository.
        let options = DemoOptions { dir };
        crate::run_blocking(move || demo(&options)).await?;
        return Ok(EXIT_OK);
    }
    let settings = settings?;
    let config = RepoConfig::resolve(&settings)?;
    if let Command::ArchiveGet { name, dest } = &cli.command {
        return run_archive_get(name, dest, &settings, &config).await;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Command::ArchivePush { path } = cli.command {
        return run_archive_push(path, &settings, &config, threads).await;
    }
    if let (Command::Init { pgdata, .. }, crate::storage::RepoLocation::Fs(root)) =
        (&cli.command, &config.location)
    {
        crate::commands::init::prepare_local_repository(root, pgdata)?;
    }
    let run_as = backup_user(&cli.command)?;
    let catalog = open_catalog_as(&settings, &config, run_as.as_ref()).await?;

    // The run history: one place, so that any command can be recorded.
    let name = cli.command.name();
    let started = chrono::Utc::now();
    let mut facts = RunFacts::default();
    let command = cli.command.clone();
    // A dry run changes nothing, so it is no run of its command.
    let recorded = RECORDED_COMMANDS.contains(&name)
        && !matches!(command, Command::Expire { dry_run: true, .. });
    let result = execute(cli, &settings, &config, &catalog, threads, &mut facts).await;
    if recorded {
        let (code, error) = match &result {
            Ok(code) => (*code, None),
            Err(e) => (command.exit_code(e), Some(e.to_string())),
        };
        let record = crate::commands::history::run_record(
            name,
            started,
            chrono::Utc::now(),
            code,
            error,
            facts,
        );
        crate::commands::history::record(&catalog, &record).await;
    }
    result
}

/// The repository, for every command that reads or writes it.
async fn open_catalog(settings: &Settings, config: &RepoConfig) -> Result<Catalog> {
    open_catalog_as(settings, config, None).await
}

/// The same, becoming `run_as` once the keys are read (they may be root's files) and before
/// the repository is opened.
async fn open_catalog_as(
    settings: &Settings,
    config: &RepoConfig,
    run_as: Option<&Owner>,
) -> Result<Catalog> {
    let key_materials = settings.key_sources().materials(settings)?;
    if let Some(owner) = run_as {
        become_owner(owner).map_err(|e| {
            Error::Config(format!(
                "cannot become {}, the data directory's owner: {e}",
                owner.name()
            ))
        })?;
        tracing::info!("running as {}, the data directory's owner", owner.name());
    }
    Ok(Catalog::new(config.open().await?)
        .with_lock_stale_after(config.lock_stale_after)
        .with_replay_claim_stale_after(config.replay_claim_stale_after)
        .with_compression_request(settings.compression()?)
        .with_key_materials(key_materials))
}

/// Whom `pitr backup` run as root becomes: the data directory's owner, who can read every
/// file of the cluster and whose objects PostgreSQL's user can read back (a backup run as
/// root would write objects only root can read). None when not root, or for other commands.
fn backup_user(command: &Command) -> Result<Option<Owner>> {
    let Command::Backup { pgdata, .. } = command else {
        return Ok(None);
    };
    if !running_as_root() {
        return Ok(None);
    }
    let Some(pgdata) = pgdata else {
        return Err(Error::Config(
            "run as root, backup needs --pgdata (or PGDATA) to know whose cluster it is: give \
             it, or run as the data directory's owner (e.g. sudo -u postgres pitr backup …)"
                .into(),
        ));
    };
    let owner = Owner::of(pgdata).map_err(|e| Error::local_io(pgdata.display(), e))?;
    Ok((!owner.is_root()).then_some(owner))
}

/// archive-get, which no history records: a segment the prefetcher spooled is served before
/// the repository (or its S3 client) is opened. A restore's replay plan decides whether "not
/// found" may stand, and archive-get keeps the restore's replay claim alive meanwhile.
async fn run_archive_get(
    name: &str,
    dest: &Path,
    settings: &Settings,
    config: &RepoConfig,
) -> Result<u8> {
    let options = archive_get_options(settings, config, name, dest)?;
    // restore_command runs in the data directory; the plan is in pg_wal beside DEST.
    let wal_dir = wal_dir_of(dest);
    let plan = crate::replay_plan::binding(&wal_dir, Path::new("."));
    let mut catalog = None;
    let outcome = match serve_from_spool(&options)? {
        Some(report) => Ok(report),
        None => {
            let opened = archive_get_catalog(settings, config, &options).await?;
            let outcome = archive_get(&opened, &options).await;
            catalog = Some(opened);
            outcome
        }
    };
    let wal_name = WalFileName::parse(name).ok();
    let found = match &outcome {
        Ok(_) => Some(true),
        Err(Error::NotFound { location, .. }) => {
            if let Some(missing) = wal_name
                .as_ref()
                .and_then(|n| missing_from_plan(&plan, n, location))
            {
                return Err(missing);
            }
            Some(false)
        }
        Err(_) => None,
    };
    let Some(found) = found else {
        return outcome.map(|_| EXIT_OK);
    };
    if let (Ok(Some(plan)), Some(wal_name)) = (&plan, &wal_name) {
        let step = claim_step(plan, wal_name, found, &wal_dir);
        if step != ClaimStep::Nothing {
            let opened = match catalog.take() {
                Some(opened) => Ok(opened),
                None => archive_get_catalog(settings, config, &options).await,
            };
            match opened {
                Ok(opened) => take_claim_step(&opened, plan, step, &wal_dir).await,
                Err(e) => tracing::warn!("the replay claim {}: {e}", plan.claim),
            }
        }
    }
    let report = outcome?;
    after_archive_get(&options, settings);
    render::archive_get(&report);
    Ok(EXIT_OK)
}

/// The repository for archive-get, with the spool's key cache.
async fn archive_get_catalog(
    settings: &Settings,
    config: &RepoConfig,
    options: &ArchiveGetOptions,
) -> Result<Catalog> {
    let mut catalog = open_catalog(settings, config).await?;
    if let Some(spool) = &options.spool {
        catalog = catalog.with_key_cache(spool.dir.join(KEY_CACHE_FILE));
    }
    Ok(catalog)
}

/// archive-get's options: the get spool when prefetching is on.
fn archive_get_options(
    settings: &Settings,
    config: &RepoConfig,
    name: &str,
    dest: &Path,
) -> Result<ArchiveGetOptions> {
    let spool_config = settings.spool()?;
    let spool = (spool_config.get_prefetch > 0).then(|| {
        GetSpool::new(spool_dir(
            spool_config.spool_path.as_deref(),
            &wal_dir_of(dest),
            SpoolKind::Get,
            &config.spool_key(),
        ))
    });
    Ok(ArchiveGetOptions {
        name: name.to_owned(),
        dest: dest.to_owned(),
        spool,
        prefetch_wait: config.retry.attempt_timeout,
    })
}

/// After a segment was served during recovery: tells the prefetcher how far recovery got,
/// and starts one if none runs. Best effort: prefetching only ever saves time.
fn after_archive_get(options: &ArchiveGetOptions, settings: &Settings) {
    let Some(spool) = &options.spool else { return };
    let is_segment = WalFileName::parse(&options.name)
        .is_ok_and(|name| name.kind() == crate::pg::WalFileKind::Segment);
    // restore_command runs in the data directory; elsewhere (a call by hand) nothing is
    // prefetched.
    if !is_segment || !crate::datadir::in_recovery(Path::new(".")) {
        return;
    }
    if let Err(e) = crate::private_fs::create_dir_all(&spool.dir)
        .and_then(|()| spool.write_cursor(&options.name))
    {
        tracing::warn!("cannot write to the spool {}: {e}", spool.dir.display());
        return;
    }
    if !spool.prefetcher_running() {
        start_prefetcher(settings, &spool.dir, &options.name);
    }
}

/// Starts `pitr archive-get-prefetch` in its own session, so that it outlives this call,
/// with the settings this call resolved (as PITR_… variables).
fn start_prefetcher(settings: &Settings, spool: &Path, after: &str) {
    use std::process::Stdio;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spool = std::path::absolute(spool).unwrap_or_else(|_| spool.to_owned());
    let mut command = std::process::Command::new(exe);
    command
        .arg("archive-get-prefetch")
        .arg("--spool")
        .arg(&spool)
        .arg(after)
        .envs(restore_command::settings_env(settings))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_for_prefetcher());
    crate::sys::spawn_in_new_session(&mut command);
    match command.spawn() {
        // Not waited for: it runs on after this call.
        Ok(child) => drop(child),
        Err(e) => tracing::warn!("cannot start the prefetcher: {e}"),
    }
}

/// The server's log when this process writes to a file (pg_ctl -l); nothing when stderr is
/// a pipe, whose reader (PostgreSQL's collector, or a caller waiting for the end of output)
/// must not be held open by a process that outlives this call.
fn stderr_for_prefetcher() -> std::process::Stdio {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let is_file = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file());
    if is_file {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// archive-push, which no history records: a file an earlier call's look-ahead stored returns
/// before the repository (or its S3 client) is opened, so that PostgreSQL's calls for the
/// files stored ahead cost a few local system calls.
async fn run_archive_push(
    path: PathBuf,
    settings: &Settings,
    config: &RepoConfig,
    threads: usize,
) -> Result<u8> {
    let spool = settings.spool()?;
    let repository = config.spool_key();
    let dir = spool_dir(
        spool.spool_path.as_deref(),
        &wal_dir_of(&path),
        SpoolKind::Push,
        &repository,
    );
    let key_cache = dir.join(KEY_CACHE_FILE);
    let options = ArchivePushOptions {
        path,
        threads,
        parallel: spool.push_parallel,
        spool: Some(PushSpool::new(dir, repository)),
    };
    if let Some(report) = archived_ahead(&options) {
        render::archive_push(&report);
        return Ok(EXIT_OK);
    }
    let catalog = open_catalog(settings, config)
        .await?
        .with_key_cache(key_cache);
    render::archive_push(&archive_push(&catalog, &options).await?);
    Ok(EXIT_OK)
}

/// The restore a drill or restore-table runs in its scratch directory (which decides the
/// directory, the archive mode, the port and the target action itself).
fn scratch_restore(
    settings: &Settings,
    global: &super::GlobalArgs,
    target: &super::TargetArgs,
    backup: Option<String>,
    scratch: &super::ScratchArgs,
    threads: usize,
) -> RestoreOptions {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pitr".into());
    RestoreOptions {
        pgdata: PathBuf::new(),
        request: PlanRequest {
            recovery: target.recovery(None),
            backup,
        },
        jobs: scratch.jobs.unwrap_or(threads),
        force: false,
        dry_run: false,
        tablespace_map: HashMap::new(),
        restore_command: restore_command::restore_command(&exe, settings, global.config.as_deref()),
        sync: false,
        server: ServerRequest::default(),
        progress: progress::terminal(),
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

fn scratch_parent(scratch: &super::ScratchArgs) -> PathBuf {
    scratch
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// Runs the command on the repository; `facts` gathers what the history records.
async fn execute(
    cli: Cli,
    settings: &Settings,
    config: &RepoConfig,
    catalog: &Catalog,
    threads: usize,
    facts: &mut RunFacts,
) -> Result<u8> {
    let catalog = catalog.clone();
    match cli.command {
        Command::Init { pgdata, encrypt } => {
            let compression = settings
                .compression()?
                .for_new_repository()
                .map_err(Error::Config)?;
            let options = InitOptions {
                pgdata,
                compression,
                encrypt,
            };
            render::init(&init(&catalog, &options).await?);
        }
        Command::Key { action } => {
            use crate::commands::key::{key_add, key_list, key_remove};
            let (report, json) = match action {
                KeyAction::List { json } => (key_list(&catalog).await?, json),
                KeyAction::Add {
                    new_passphrase_file,
                    new_key_file,
                    new_kms_key_id,
                } => {
                    let new = crate::config::KeySources {
                        passphrase_file: new_passphrase_file,
                        passphrase_env: crate::config::NEW_PASSPHRASE_ENV,
                        key_file: new_key_file,
                        kms_key_id: new_kms_key_id,
                    }
                    .materials(settings)?;
                    (key_add(&catalog, &new).await?, false)
                }
                KeyAction::Remove { fingerprint } => {
                    (key_remove(&catalog, &fingerprint).await?, false)
                }
            };
            render::key(&report, json);
        }
        Command::ArchiveGetPrefetch { spool, after } => {
            let spool_config = settings.spool()?;
            let options = PrefetchOptions {
                after,
                spool: GetSpool::new(spool),
                parallel: spool_config.get_prefetch,
                queue_max: spool_config.get_queue_max,
                pgdata: std::env::current_dir()
                    .map_err(|e| Error::local_io("the working directory", e))?,
            };
            let catalog = catalog.with_key_cache(options.spool.dir.join(KEY_CACHE_FILE));
            let report = prefetch(&catalog, &options).await?;
            tracing::info!(
                "prefetcher stopped ({:?}) after {} segments",
                report.stopped,
                report.fetched
            );
        }
        Command::Backup {
            pgdata,
            dbname,
            fast: _,
            spread,
            jobs,
            wal_timeout,
            pin,
            annotate,
            retention,
        } => {
            // A policy is checked before the backup, applied after it.
            let policy = retention
                .settings()
                .over(settings.clone())
                .retention_policy()?;
            let options = BackupOptions {
                pgdata,
                dbname,
                fast: !spread,
                jobs: jobs.unwrap_or(threads),
                wal_timeout: Duration::from_secs(wal_timeout),
                progress: progress::terminal(),
                pin,
                annotations: annotate.into_iter().collect(),
            };
            let report = backup(&catalog, &options).await?;
            facts.bytes = Some(report.manifest.stored_bytes);
            facts.backup_id = Some(report.manifest.id.clone());
            render::backup(&report);
            if !policy.is_empty() {
                // The backup succeeded whatever expire does: its failure is reported, and the
                // exit code stays 0 (docs/operations.md, "Retention").
                let options = ExpireOptions {
                    policy,
                    dry_run: false,
                    now: chrono::Utc::now(),
                };
                match expire(&catalog, &options).await {
                    Ok(report) => render::expire(&report, false),
                    Err(error) => eprintln!(
                        "pitr backup: the backup is complete, but expiring after it failed: \
                         {error}; run `pitr expire` once the cause is fixed"
                    ),
                }
            }
        }
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
            let recovery = target.recovery(target_action);
            let pgdata = pgdata.unwrap_or_default();
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "pitr".into());
            let options = RestoreOptions {
                pgdata: std::path::absolute(&pgdata).unwrap_or(pgdata),
                request: PlanRequest {
                    recovery: recovery.clone(),
                    backup,
                },
                jobs: jobs.unwrap_or(threads),
                force,
                dry_run,
                tablespace_map: tablespace_map
                    .into_iter()
                    .collect::<HashMap<u32, PathBuf>>(),
                restore_command: restore_command::restore_command(
                    &exe,
                    settings,
                    cli.global.config.as_deref(),
                ),
                sync: !no_sync,
                server: ServerRequest { archive_mode, port },
                progress: progress::terminal(),
                owner: owner
                    .map(|name| {
                        Owner::user(&name).ok_or_else(|| {
                            Error::Config(format!("--owner {name}: no such user on this system"))
                        })
                    })
                    .transpose()?,
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
                    config_dir: config_dir.map(|dir| std::path::absolute(&dir).unwrap_or(dir)),
                },
            };
            // Segments a recovery from this repository left in a configured spool are not
            // this restore's (the default spool is inside the new data directory).
            if let (false, Some(path)) = (dry_run, &settings.spool_path) {
                let key = config.spool_key();
                GetSpool::new(spool_dir(Some(path), Path::new("."), SpoolKind::Get, &key)).remove();
            }
            let report = restore(&catalog, &options).await?;
            render::restore(&report, &recovery);
            if let (crate::storage::RepoLocation::S3 { .. }, false) = (&config.location, dry_run) {
                println!(
                    "{}",
                    restore_command::s3_environment_note(
                        settings,
                        |name| std::env::var_os(name).is_some(),
                        &report.server.commands.start,
                    )
                );
            }
            let key_in_command = settings.passphrase_file.is_some()
                || settings.key_file.is_some()
                || settings.kms_key_id.is_some();
            if catalog.is_encrypted() && !key_in_command && !dry_run {
                println!(
                    "note: the repository is encrypted and its passphrase came from {}, which \
                     restore_command does not carry (it never holds a secret): start PostgreSQL \
                     with {0} in its environment, or restore with passphrase_file",
                    crate::config::PASSPHRASE_ENV
                );
            }
        }
        Command::Drill {
            target,
            backup,
            checks,
            no_amcheck,
            scratch,
            json,
        } => {
            let checks = match &checks {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| Error::Config(format!("--checks {}: {e}", path.display())))?;
                    crate::scratch::checks::parse(&text, &path.display().to_string())
                        .map_err(Error::Config)?
                }
                None => Vec::new(),
            };
            let options = DrillOptions {
                restore: scratch_restore(settings, &cli.global, &target, backup, &scratch, threads),
                scratch_parent: scratch_parent(&scratch),
                keep: scratch.keep,
                pg_bin: scratch.pg_bin,
                amcheck: !no_amcheck,
                checks,
            };
            let report = drill(&catalog, &options).await?;
            facts.bytes = Some(report.bytes_restored);
            facts.backup_id = Some(report.backup.clone());
            render::drill(&report, json);
            if !report.passed {
                return Err(Error::DrillFailed(format!(
                    "the restore of backup {} worked, but {}",
                    report.backup,
                    crate::commands::drill::failures(&report)
                )));
            }
        }
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
            json,
        } => {
            let selection = match schema {
                Some(schema) => Selection::Schema(schema),
                None => Selection::Tables(table),
            };
            let options = RestoreTableOptions {
                restore: scratch_restore(settings, &cli.global, &target, backup, &scratch, threads),
                selection,
                into,
                database,
                rename,
                replace,
                scratch_parent: scratch_parent(&scratch),
                keep: scratch.keep,
                pg_bin: scratch.pg_bin,
            };
            let report = restore_table(&catalog, &options).await?;
            facts.backup_id = Some(report.backup.clone());
            facts.bytes = Some(report.bytes_read);
            render::restore_table(&report, json);
        }
        Command::List { json } => {
            let options = ListOptions { jobs: 2 * threads };
            render::list(&list(&catalog, &options).await?, json);
        }
        Command::Verify {
            backup,
            json,
            jobs,
            no_key,
        } => {
            let options = VerifyOptions {
                jobs: jobs.unwrap_or(2 * threads),
                backup,
                without_key: no_key,
            };
            let report = verify(&catalog, &options).await?;
            facts.bytes = Some(report.bytes);
            facts.backup_id = options.backup.clone();
            if !report.ok {
                facts.detail = Some(format!("{} problem(s)", report.problems.len()));
            }
            render::verify(&report, json);
            return Ok(report.exit_code());
        }
        Command::Check {
            dbname,
            switch_wal,
            json,
        } => {
            let options = CheckOptions {
                thresholds: CheckThresholds::from_settings(settings)?,
                connect: dbname.is_some(),
                dbname,
                switch_wal,
                jobs: 2 * threads,
            };
            let report = check(&catalog, &options).await?;
            facts.status = Some(report.state.run_status());
            facts.detail = report.problems();
            render::check(&report, json);
            return Ok(report.exit_code);
        }
        Command::Metrics { listen } => {
            let options = MetricsOptions { jobs: 2 * threads };
            match listen {
                None => print!("{}", metrics(&catalog, &options).await?),
                Some(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| Error::Config(format!("--listen {addr}: {e}")))?;
                    eprintln!("pitr: serving metrics on http://{addr}/metrics");
                    serve(&catalog, listener, &options).await?;
                }
            }
        }
        Command::History { json, limit } => {
            let options = HistoryOptions { limit };
            render::history(&history(&catalog, &options).await?, json);
        }
        Command::Expire {
            retention,
            dry_run,
            json,
        } => {
            let options = ExpireOptions {
                policy: retention
                    .settings()
                    .over(settings.clone())
                    .retention_policy()?,
                dry_run,
                now: chrono::Utc::now(),
            };
            render::expire(&expire(&catalog, &options).await?, json);
        }
        Command::Pin { id, annotate } => {
            let options = PinOptions {
                id,
                pinned: Some(true),
                annotations: annotate.into_iter().collect(),
            };
            render::pin(&pin(&catalog, &options).await?);
        }
        Command::Unpin { id } => {
            let options = PinOptions {
                id,
                pinned: Some(false),
                annotations: Default::default(),
            };
            render::pin(&pin(&catalog, &options).await?);
        }
        Command::Demo { .. } | Command::ArchivePush { .. } | Command::ArchiveGet { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_root_backup_without_a_data_directory_is_refused() {
        if !running_as_root() {
            return; // only root changes user
        }
        let cli = Cli::try_parse_from(["pitr", "backup"]).unwrap();
        let Command::Backup { pgdata, .. } = &cli.command else {
            unreachable!()
        };
        if pgdata.is_some() {
            return; // PGDATA is set in this environment
        }
        let err = backup_user(&cli.command).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("sudo -u postgres"), "{err}");
        // A data directory root owns: nobody to become.
        let cli = Cli::try_parse_from(["pitr", "backup", "--pgdata", "/"]).unwrap();
        assert_eq!(backup_user(&cli.command).unwrap(), None);
        assert!(
            backup_user(&Command::List { json: false })
                .unwrap()
                .is_none()
        );
    }
}
