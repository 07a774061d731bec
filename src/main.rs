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
use pitr::commands::demo::{DemoOptions, demo};
use pitr::commands::init::{InitOptions, init};
use pitr::commands::list::{ListOptions, list};
use pitr::commands::restore::{RestoreOptions, Target, restore};
use pitr::commands::verify::{VerifyOptions, verify};
use pitr::config::{RepoConfig, Settings};
use pitr::error::{EXIT_CORRUPT, EXIT_INCOMPLETE, EXIT_USAGE, Error};
use pitr::pg::recovery_target::parse_target_time;

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

/// A bar with bytes, rate and ETA on a terminal; a line every 10% otherwise.
fn terminal_progress() -> std::sync::Arc<dyn pitr::progress::Progress> {
    use std::sync::Mutex;

    struct Bar(indicatif::ProgressBar);
    impl pitr::progress::Progress for Bar {
        fn start(&self, what: &str, total: u64) {
            self.0.set_length(total);
            self.0.set_message(what.to_owned());
            self.0.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
        }
        fn advance(&self, bytes: u64) {
            self.0.inc(bytes);
        }
        fn finish(&self) {
            self.0.finish_and_clear();
        }
    }

    struct Lines(Mutex<(String, u64, u64, u64)>); // what, total, done, last tenth printed
    impl pitr::progress::Progress for Lines {
        fn start(&self, what: &str, total: u64) {
            *self.0.lock().unwrap() = (what.to_owned(), total, 0, 0);
        }
        fn advance(&self, bytes: u64) {
            let mut state = self.0.lock().unwrap();
            state.2 += bytes;
            let tenth = (state.2 * 10).checked_div(state.1).unwrap_or(10);
            if tenth > state.3 {
                state.3 = tenth;
                eprintln!(
                    "{}: {}% ({} of {} bytes)",
                    state.0,
                    tenth * 10,
                    state.2,
                    state.1
                );
            }
        }
    }

    if std::io::stderr().is_terminal() {
        std::sync::Arc::new(Bar(indicatif::ProgressBar::new(0)))
    } else {
        std::sync::Arc::new(Lines(Mutex::new((String::new(), 0, 0, 0))))
    }
}

/// The restore_command for a restored cluster: this binary, the same repository settings.
/// The restore pre-flight's findings: in full for `--dry-run`, in one line otherwise.
fn print_plan(plan: &pitr::commands::restore_plan::RestorePlan, full: bool) {
    let range = match (plan.segments.first(), plan.segments.last()) {
        (Some(first), Some(last)) => format!(
            "{} to {} ({} segment{})",
            first.name,
            last.name,
            plan.segments.len(),
            if plan.segments.len() == 1 { "" } else { "s" }
        ),
        _ => "none".into(),
    };
    if !full {
        println!(
            "pre-flight: the repository holds the WAL needed, {range}; recovery stops {}",
            plan.stops
        );
        return;
    }
    let backup = &plan.backup;
    let histories: Vec<String> = plan.histories.iter().map(|h| h.name.to_string()).collect();
    println!("restore plan");
    println!(
        "  backup:    {} (timeline {}, {} to {}, finished {})",
        backup.id, backup.timeline, backup.start_lsn, backup.stop_lsn, backup.stop_time
    );
    println!("  timeline:  {}", plan.timeline);
    println!("  WAL:       {range}");
    if !histories.is_empty() {
        println!("  history:   {}", histories.join(", "));
    }
    println!("  stops:     {}", plan.stops);
    println!(
        "  bytes:     {} to read ({} of backup objects, {} of WAL); {} restored before replay",
        backup.stored_bytes + plan.wal_bytes,
        backup.stored_bytes,
        plan.wal_bytes,
        backup.size_bytes
    );
}

fn restore_command(settings: &Settings, config: Option<&std::path::Path>) -> String {
    let quote = |arg: &str| {
        if arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@+,".contains(&b))
        {
            return arg.to_owned();
        }
        let mut quoted = String::from("\"");
        for c in arg.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    };
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pitr".into());
    let mut parts = vec![quote(&exe)];
    if let Some(config) = config {
        parts.push(format!("--config {}", quote(&config.display().to_string())));
    }
    if let Some(repo) = &settings.repo {
        parts.push(format!("--repo {}", quote(repo)));
    }
    if let Some(endpoint) = &settings.s3_endpoint {
        parts.push(format!("--s3-endpoint {}", quote(endpoint)));
    }
    if settings.s3_path_style == Some(true) {
        parts.push("--s3-path-style".into());
    }
    parts.push("archive-get %f %p".into());
    parts.join(" ")
}

/// Runs the command; the exit code when it ran to completion.
async fn run(cli: Cli) -> pitr::Result<u8> {
    if let Command::Demo { dir } = &cli.command {
        // The demo sets up its own repository.
        let options = DemoOptions { dir: dir.clone() };
        tokio::task::spawn_blocking(move || demo(&options))
            .await
            .expect("demo panicked")?;
        return Ok(0);
    }
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
                progress: terminal_progress(),
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
        Command::Restore {
            pgdata,
            target_time,
            target_lsn,
            target_xid,
            target_name,
            target,
            target_action,
            target_timeline,
            backup,
            jobs,
            force,
            dry_run,
            tablespace_map,
        } => {
            let target = if let Some(time) = target_time {
                Target::Time(parse_target_time(&time).map_err(Error::Config)?)
            } else if let Some(lsn) = target_lsn {
                Target::Lsn(
                    lsn.parse()
                        .map_err(|e| Error::Config(format!("--target-lsn: {e}")))?,
                )
            } else if let Some(xid) = target_xid {
                Target::Xid(xid)
            } else if let Some(name) = target_name {
                Target::Name(name)
            } else if target.is_some() {
                Target::Immediate
            } else {
                Target::End
            };
            let mut map = std::collections::HashMap::new();
            for entry in &tablespace_map {
                let (oid, dir) = entry
                    .split_once('=')
                    .and_then(|(o, d)| Some((o.parse::<u32>().ok()?, d)))
                    .ok_or_else(|| {
                        Error::Config(format!("--tablespace-map '{entry}': expected OID=DIR"))
                    })?;
                map.insert(oid, std::path::PathBuf::from(dir));
            }
            let pgdata = pgdata.unwrap_or_default();
            let pgdata = std::path::absolute(&pgdata).unwrap_or(pgdata);
            let options = RestoreOptions {
                pgdata: pgdata.clone(),
                target: target.clone(),
                target_action: target_action.clone(),
                target_timeline,
                backup,
                jobs: jobs.unwrap_or(threads),
                force,
                dry_run,
                tablespace_map: map,
                restore_command: restore_command(&settings, cli.global.config.as_deref()),
                progress: terminal_progress(),
            };
            let report = restore(&catalog, &options).await?;
            print_plan(&report.plan, report.dry_run);
            if report.dry_run {
                println!("dry run: nothing was written");
                return Ok(0);
            }
            println!(
                "restored backup {} into {}: {} files, {} bytes in {:.1} s",
                report.backup.id,
                pgdata.display(),
                report.files,
                report.bytes,
                report.elapsed.as_secs_f64()
            );
            let goal = match &target {
                Target::End => "all the WAL in the repository".to_owned(),
                Target::Immediate => {
                    "the end of the backup (the first consistent point)".to_owned()
                }
                Target::Time(t) => format!("{} (UTC)", t.format("%Y-%m-%d %H:%M:%S%.6f")),
                Target::Lsn(lsn) => format!("LSN {lsn}"),
                Target::Xid(xid) => format!("the commit of transaction {xid}"),
                Target::Name(name) => format!("restore point '{name}'"),
            };
            let then = match (target == Target::End, target_action.as_deref()) {
                (true, _) => "then end recovery and accept writes",
                (false, Some("promote")) => "then end recovery and accept writes",
                (false, Some("shutdown")) => "then shut down",
                (false, _) => "then pause, read-only, until you run SELECT pg_wal_replay_resume()",
            };
            println!(
                "Next: pg_ctl -D {} start\nPostgreSQL will replay WAL from the repository (restore_command runs pitr archive-get) up to {goal}, {then}.",
                pgdata.display()
            );
        }
        Command::Demo { .. } => unreachable!("handled above"),
        Command::List { json } => {
            let report = list(&catalog, &ListOptions { jobs: 2 * threads }).await?;
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
                for w in &report.recovery_window {
                    println!(
                        "recovery window timeline {}: {} .. {}",
                        w.timeline,
                        w.from,
                        w.until.as_deref().unwrap_or("(no commit reachable yet)")
                    );
                }
            }
        }
        Command::Verify { backup, json, jobs } => {
            let jobs = jobs.unwrap_or(2 * threads);
            let report = verify(&catalog, &VerifyOptions { jobs, backup }).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                for problem in &report.problems {
                    println!("{problem}");
                }
                for id in &report.interrupted_backups {
                    println!(
                        "note: backup {id} was interrupted before it finished; its objects are \
                         leftovers, not a restorable backup"
                    );
                }
                if report.indexed_segments > 0 {
                    println!(
                        "indexed {} segments that had no WAL index entry",
                        report.indexed_segments
                    );
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
