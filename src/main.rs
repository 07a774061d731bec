//! The `pitr` binary: parses, sets up logging, runs the command, exits with its code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing::Level;

use pitr::cli::Cli;
use pitr::error::{EXIT_USAGE, Error};

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
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let command = cli.command.name();
    match runtime.block_on(pitr::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not found is routine for restore_command: PostgreSQL probes for files to come.
            if matches!(e, Error::NotFound { .. }) {
                tracing::info!("{e}");
            } else {
                eprintln!("pitr {command}: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
