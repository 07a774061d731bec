//! From parsed arguments to a command's options, the command, and its printed report.

use super::options::Context;
use super::{Cli, Command, render, restore_command};
use crate::commands::archive_get::{self, ArchiveGetRequest};
use crate::commands::archive_push;
use crate::commands::copy::{CopyOptions, copy};
use crate::commands::demo::{DemoOptions, demo};
use crate::commands::notify;
use crate::commands::receive_wal::{ReceiveWalOptions, receive_wal};
use crate::commands::run::{Access, Outcome, Repositories};
use crate::config::Settings;
use crate::error::{EXIT_OK, Result};

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
    let repositories = Repositories::resolve(settings?)?;
    let access = repositories.primary();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let json = cli.command.json();
    let context = Context {
        settings: &access.settings,
        all_settings: &repositories.settings,
        number: access.number,
        repo: &access.config,
        config_file: cli.global.config.as_deref(),
        threads,
        quiet: cli.global.quiet,
    };
    match cli.command {
        Command::ArchiveGet { name, dest } => {
            let request = ArchiveGetRequest {
                name,
                dest,
                prefetcher_env: restore_command::settings_env(&repositories.settings),
            };
            render::archive_get(&archive_get::serve(&repositories, &request).await?);
            Ok(EXIT_OK)
        }
        Command::ArchivePush { path } => {
            render::archive_push(&archive_push::push(&repositories, path, threads).await?);
            Ok(EXIT_OK)
        }
        Command::ReceiveWal {
            dbname,
            slot,
            create_slot,
            spool,
            synchronous,
            status_interval,
            partial_interval,
        } => {
            let spool = match spool {
                Some(dir) => dir,
                None => match access.settings.spool()?.spool_path {
                    Some(root) => crate::spool::spool_dir(
                        Some(&root),
                        &root,
                        crate::spool::SpoolKind::Receive,
                        &access.config.spool_key(),
                    ),
                    None => {
                        return Err(crate::error::Error::Config(
                            "receive-wal needs a spool directory on local disk: --spool DIR, \
                             or spool_path in the configuration"
                                .into(),
                        ));
                    }
                },
            };
            if status_interval == 0 {
                return Err(crate::error::Error::Config(
                    "--status-interval must be at least 1 second".into(),
                ));
            }
            let options = ReceiveWalOptions {
                dbname,
                slot,
                create_slot,
                spool,
                synchronous,
                status_interval: std::time::Duration::from_secs(status_interval),
                partial_interval: (partial_interval > 0)
                    .then(|| std::time::Duration::from_secs(partial_interval)),
            };
            let catalog = access.open().await?;
            let interrupt = crate::interrupt::Interrupt::listen();
            let report = receive_wal(&catalog, &options, &interrupt).await?;
            render::receive_wal(&report);
            Ok(EXIT_OK)
        }
        Command::Copy {
            from,
            to,
            backup,
            no_wal,
            jobs,
            json,
        } => {
            let source = repositories.numbered(from.unwrap_or(access.number))?;
            let targets: Vec<&Access> = match to {
                Some(n) => vec![repositories.numbered(n)?],
                None => repositories
                    .all
                    .iter()
                    .filter(|a| a.number != source.number)
                    .collect(),
            };
            if targets.is_empty() || targets.iter().any(|t| t.number == source.number) {
                return Err(crate::error::Error::Config(
                    "copy needs two repositories: configure repo2 (--repo2, PITR_REPO2) beside \
                     repo, and give --from and --to different numbers"
                        .into(),
                ));
            }
            let options = CopyOptions {
                backup,
                wal: !no_wal,
                jobs: jobs.unwrap_or(4),
            };
            let from = source.open().await?;
            for target in targets {
                let into = target.open().await?;
                render::copy(&copy(&from, &into, &options).await?, json);
            }
            Ok(EXIT_OK)
        }
        command => run_on_repositories(command, &repositories, &context, json).await,
    }
}

/// How a command that works on an opened repository treats several repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spread {
    /// The first (or the chosen) one.
    One,
    /// The first that succeeds, in turn (restore, restore-table, the prefetcher).
    InTurn,
    /// Each selected one, reported one after another (init, list, verify, expire, drill).
    Each,
    /// Each selected one, in one report (check, metrics).
    Combined,
}

fn spread(command: &Command) -> Spread {
    match command {
        Command::Restore { .. }
        | Command::RestoreTable { .. }
        | Command::ArchiveGetPrefetch { .. } => Spread::InTurn,
        // A drill proves each repository restores on its own.
        Command::Init { .. }
        | Command::List { .. }
        | Command::Verify { .. }
        | Command::Expire { .. }
        | Command::Drill { .. } => Spread::Each,
        Command::Check { .. } | Command::Metrics { .. } => Spread::Combined,
        _ => Spread::One,
    }
}

/// A command that works on an opened repository. A restore (and a restore-table) tries the
/// repositories in turn: one that cannot be opened, or whose restore failed before it wrote
/// anything, is passed over (said in the log) for the next. Init, list, verify, expire and
/// drill run on each selected repository; their exit code is the worst.
async fn run_on_repositories(
    command: Command,
    repositories: &Repositories,
    context: &Context<'_>,
    json: bool,
) -> Result<u8> {
    let spread = spread(&command);
    let order = match spread {
        Spread::One => vec![repositories.primary()],
        Spread::InTurn | Spread::Each | Spread::Combined => repositories.selected(),
    };
    if spread == Spread::Combined && order.len() > 1 {
        return check_each(command, &order, context, json).await;
    }
    // A restore falls back only where the directory is as it was: absent or empty.
    let untouched = |command: &Command| match command {
        Command::Restore {
            pgdata: Some(pgdata),
            ..
        } => std::fs::read_dir(pgdata).map_or(true, |mut entries| entries.next().is_none()),
        _ => true,
    };
    let fresh = untouched(&command);
    let mut worst: Option<Result<u8>> = None;
    // Several repositories' JSON reports make one document: {"repositories": [{"repository":
    // N, "location": …, "report": … or "error": …}, …]}.
    let several_json = spread == Spread::Each && order.len() > 1 && json;
    let mut documents = Vec::new();
    let name = command.name();
    for (i, access) in order.iter().enumerate() {
        let next = order.get(i + 1);
        if spread == Spread::Each && order.len() > 1 && !json {
            println!("{}:", access.describe());
        }
        let mut request = request_on(command.clone(), access, context).await?;
        if let crate::commands::run::Request::Prefetch(options) = &mut request {
            // The prefetcher falls back to the repositories after this one.
            for other in &order[i + 1..] {
                let key_cache = options
                    .spool
                    .dir
                    .join(crate::catalog::keys::key_cache_file(other.number));
                match other.open_with_key_cache(key_cache).await {
                    Ok(catalog) => options.fallbacks.push(catalog),
                    Err(e) => tracing::warn!("prefetch: {}: {e}", other.describe()),
                }
            }
        }
        let ran = match access.open_for(&request).await {
            Ok(catalog) => crate::commands::run::run(&catalog, request)
                .await
                .map(|finished| (catalog, finished)),
            Err(e) => Err(e),
        };
        let (catalog, finished) = match (ran, spread, next) {
            (Ok(ran), _, _) => ran,
            (Err(e), Spread::InTurn, Some(next)) if fresh && untouched(&command) => {
                tracing::warn!(
                    "{name} from {} failed before it wrote anything: {e}; trying {}",
                    access.describe(),
                    next.describe()
                );
                continue;
            }
            (Err(e), Spread::Each, _) if order.len() > 1 => {
                eprintln!("pitr {name}: {}: {e}", access.describe());
                documents.push(serde_json::json!({
                    "repository": access.number,
                    "location": access.config.spool_key(),
                    "error": e.to_string(),
                }));
                worst = Some(worse(worst, Err(e)));
                continue;
            }
            (Err(e), _, _) => return Err(e),
        };
        if spread == Spread::InTurn && i > 0 {
            tracing::warn!("{name}: used {}", access.describe());
        }
        if let (Outcome::Restore { .. }, true) = (&finished.outcome, repositories.several()) {
            let turn: Vec<String> = order.iter().map(|a| a.number.to_string()).collect();
            println!(
                "the backup and the WAL the pre-flight found are in {}; during replay \
                 archive-get takes each WAL file from the first repository with a verified copy \
                 (repositories {} in turn)",
                access.describe(),
                turn.join(", ")
            );
        }
        match render::outcome_json(&finished.outcome).filter(|_| several_json) {
            Some(report) => documents.push(serde_json::json!({
                "repository": access.number,
                "location": access.config.spool_key(),
                "report": report,
            })),
            None => render::outcome(&finished.outcome, json),
        }
        if let Outcome::Restore { report, .. } = &finished.outcome {
            restore_command::print_notes(access, catalog.is_encrypted(), report);
        }
        if spread != Spread::Each {
            return finished.verdict;
        }
        worst = Some(worse(worst, finished.verdict));
    }
    if several_json {
        render::json_value(&serde_json::json!({ "repositories": documents }));
    }
    worst.expect("at least one repository ran")
}

/// The worse of two verdicts: an error over an exit code, a higher code over a lower.
fn worse(a: Option<Result<u8>>, b: Result<u8>) -> Result<u8> {
    match (a, b) {
        (None, b) => b,
        (Some(Err(a)), _) => Err(a),
        (Some(Ok(_)), Err(b)) => Err(b),
        (Some(Ok(a)), Ok(b)) => Ok(a.max(b)),
    }
}

/// `command`'s options for repository `access`: its own settings in `context`. A refused
/// run is recorded in its history.
async fn request_on(
    command: Command,
    access: &Access,
    context: &Context<'_>,
) -> Result<crate::commands::run::Request> {
    let name = command.name();
    let context = Context {
        settings: &access.settings,
        repo: &access.config,
        number: access.number,
        ..*context
    };
    match command.request(&context) {
        Ok(request) => Ok(request),
        Err(error) => {
            crate::commands::run::record_refused(access, name, &error).await;
            Err(error)
        }
    }
}

/// `pitr check` (and `pitr metrics`) on the repositories of `order`: one report, each
/// repository's checks and how far each is behind the others (`repo_lag`); recorded in the
/// first one's history. Metrics report the first repository and every one's lag.
async fn check_each(
    command: Command,
    order: &[&Access],
    context: &Context<'_>,
    json: bool,
) -> Result<u8> {
    let (first, peers) = order.split_first().expect("several repositories");
    let mut request = request_on(command, first, context).await?;
    let mut opened = Vec::new();
    for peer in peers {
        // Check reads an unopened repository's state itself (UNKNOWN when unreadable).
        opened.push((peer.number, peer.open_for(&request).await?));
    }
    match &mut request {
        crate::commands::run::Request::Check(options) => {
            options.repository = first.number;
            options.peers = opened;
        }
        crate::commands::run::Request::Metrics { options, .. } => {
            options.repository = first.number;
            options.peers = opened;
        }
        _ => {}
    }
    let catalog = first.open_for(&request).await?;
    let finished = crate::commands::run::run(&catalog, request).await?;
    render::outcome(&finished.outcome, json);
    finished.verdict
}
