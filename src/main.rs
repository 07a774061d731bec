//! The `pitr` binary: parses, sets up logging, runs the command, exits with its code.

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use pitr::cli::{Cli, Command};
use pitr::error::{EXIT_USAGE, Error};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(pitr::cli::usage_error(e)),
    };
    if matches!(cli.command, Command::ArchiveGet { .. }) {
        pitr::cli::abort_recovery_on_panic();
    }
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => Level::ERROR,
        (false, 0) => Level::WARN,
        (false, 1) => Level::INFO,
        (false, _) => Level::DEBUG,
    };
    // The AWS SDK and the other libraries log their own retries and probes (a missing
    // instance metadata service alone fills kilobytes): pitr's messages say what matters,
    // and stderr is PostgreSQL's log under archive_command and restore_command. Theirs show
    // from -vv on.
    let libraries = if cli.global.verbose >= 2 {
        level
    } else {
        Level::ERROR
    };
    let filter = Targets::new()
        .with_target("pitr", level)
        .with_default(libraries);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .without_time(),
        )
        .with(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pitr: cannot start: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let command = cli.command.clone();
    match runtime.block_on(pitr::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not found is routine for restore_command: PostgreSQL probes for files to come.
            if matches!(e, Error::NotFound { .. }) {
                tracing::info!("{e}");
            } else {
                eprintln!("{}", command.failure_line(&e));
            }
            ExitCode::from(command.exit_code(&e))
        }
    }
}
