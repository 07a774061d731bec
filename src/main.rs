use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::Level;

use pitr::catalog::Catalog;
use pitr::cli::{Cli, Command};
use pitr::commands::archive_get::{ArchiveGetOptions, archive_get};
use pitr::commands::archive_push::{ArchivePushOptions, PushOutcome, archive_push};
use pitr::commands::backup::{BackupOptions, backup};
use pitr::commands::init::{InitOptions, init};
use pitr::commands::list::list;
use pitr::commands::verify::{VerifyOptions, verify};
use pitr::config::{RepoConfig, Settings};
use pitr::error::{EXIT_CORRUPT, EXIT_INCOMPLETE, EXIT_USAGE, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => Level::ERROR,
        (false, 0) => Level::WARN,
        (false, 1) => Level::INFO,
        (false, _) => Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pitr: cannot start: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let command = cli.command.name();
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not found is routine for restore_command: PostgreSQL probes for files to come.
            if matches!(e, Error::NotFound { .. }) {
                tracing::info!("{e}");
            } else {
                eprintln!("pitr {command}: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Runs the command; the exit code when it ran to completion.
async fn run(cli: Cli) -> pitr::Result<u8> {
    let mut settings = cli.global.settings();
    if let Some(path) = &cli.global.config {
        settings = settings.over(Settings::read_file(path)?);
    }
    let config = RepoConfig::resolve(&settings)?;
    let storage = config.location.open(&config.s3).await?;
    let catalog = Catalog::new(Arc::clone(&storage));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    match cli.command {
        Command::Init { pgdata } => {
            let report = init(&catalog, &InitOptions { pgdata }).await?;
            let verb = if report.created {
                "initialised"
            } else {
                "already initialised"
            };
            println!(
                "{verb} repository {} for PostgreSQL {} cluster {} (WAL segments of {} bytes)",
                report.location,
                report.identity.pg_version,
                report.identity.system_identifier,
                report.identity.wal_segment_size
            );
        }
        Command::ArchivePush { path } => {
            let report = archive_push(&catalog, &ArchivePushOptions { path, threads }).await?;
            let e = &report.encoded;
            let what = match report.outcome {
                PushOutcome::Stored => "archived",
                PushOutcome::AlreadyArchived => "already archived",
            };
            tracing::info!(
                "{what} {}: {} -> {} bytes (ratio {:.2}) in {:.1} ms",
                report.name,
                e.original_len,
                e.stored_len,
                e.ratio(),
                report.elapsed.as_secs_f64() * 1e3
            );
        }
        Command::ArchiveGet { name, dest } => {
            let report = archive_get(&catalog, &ArchiveGetOptions { name, dest }).await?;
            tracing::info!(
                "restored {}: {} bytes from {} stored in {:.1} ms",
                report.name,
                report.decoded.original_len,
                report.decoded.stored_len,
                report.elapsed.as_secs_f64() * 1e3
            );
        }
        Command::Backup {
            pgdata,
            dbname,
            fast: _,
            spread,
            jobs,
            wal_timeout,
        } => {
            let options = BackupOptions {
                pgdata,
                dbname,
                fast: !spread,
                jobs: jobs.unwrap_or(threads),
                wal_timeout: std::time::Duration::from_secs(wal_timeout),
            };
            let report = backup(&catalog, &options).await?;
            let m = &report.manifest;
            println!(
                "backup {} complete: {} files, {} bytes ({} stored in {} objects), WAL {} to {} \
                 (timeline {}), {:.1} s",
                m.id,
                m.files.len(),
                m.size_bytes,
                m.stored_bytes,
                report.objects,
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                report.elapsed.as_secs_f64()
            );
        }
        Command::List { json } => {
            let report = list(&catalog).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                if report.backups.is_empty() {
                    println!("no backups");
                }
                for b in &report.backups {
                    println!(
                        "backup {}  {} .. {}  LSN {} .. {}  timeline {}  {} bytes ({} stored)",
                        b.id,
                        b.start_time,
                        b.stop_time,
                        b.start_lsn,
                        b.stop_lsn,
                        b.timeline,
                        b.size_bytes,
                        b.stored_bytes
                    );
                }
                for w in &report.wal {
                    println!(
                        "wal timeline {}: {} .. {}",
                        w.timeline, w.first_segment, w.last_segment
                    );
                }
            }
        }
        Command::Verify { json, jobs } => {
            let jobs = jobs.unwrap_or(2 * threads);
            let report = verify(&catalog, &VerifyOptions { jobs }).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                for problem in &report.problems {
                    println!("{problem}");
                }
                println!(
                    "verified {} objects ({} bytes stored) in {:.1} s: {}",
                    report.objects,
                    report.bytes,
                    report.seconds,
                    match report.problems.len() {
                        0 => "intact".to_owned(),
                        1 => "1 problem".to_owned(),
                        n => format!("{n} problems"),
                    }
                );
            }
            return Ok(if report.ok {
                0
            } else if report.has_damage() {
                EXIT_CORRUPT as u8
            } else {
                EXIT_INCOMPLETE as u8
            });
        }
    }
    Ok(0)
}
