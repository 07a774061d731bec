//! A scratch cluster: a backup restored into a private directory and started where it cannot
//! disturb anything (no TCP listener, a socket directory of its own, `archive_mode = off`,
//! no synchronous standby to wait for, small shared memory), for `pitr drill` and
//! `pitr restore-table`. Whatever happens, the server is stopped and the directory removed
//! (unless kept) when the [`Scratch`] goes out of scope.

pub mod checks;
pub mod pg_bin;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::commands::restore::server::{ArchiveMode, ServerRequest};
use crate::commands::restore::{RestoreOptions, RestoreReport, restore};
use crate::error::{Error, Result};
use crate::interrupt::{Interrupt, Signal};
use crate::ownership::{Owner, running_as_root};
use crate::pg::PgVersion;
use crate::server::{Session, connection_settings};
use crate::sys::StopSignal;

/// The scratch server's shared memory: enough to replay and check, small beside production.
const SHARED_BUFFERS: &str = "64MB";
/// How long a fast shutdown may take before the server is stopped at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A scratch directory, the cluster restored into it and the server running on it.
pub struct Scratch {
    root: PathBuf,
    keep: bool,
    owner: Option<Owner>,
    port: u16,
    superuser: String,
    /// The backup's major version (settings differ by version).
    pg_version: u32,
    server: Option<Child>,
    /// The replay claim the restore holds in the repository while the server replays, and
    /// the command it is held for.
    claim: String,
    command: &'static str,
}

impl Scratch {
    /// A new private directory under `parent` (made if missing).
    /// `command` (`drill`, `restore-table`) names the replay claim's holder.
    pub fn create(
        parent: &Path,
        prefix: &str,
        keep: bool,
        command: &'static str,
    ) -> Result<Scratch> {
        fs::create_dir_all(parent).map_err(|e| Error::local_io(parent.display(), e))?;
        let root = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| Error::local_io(parent.display(), e))?
            .keep();
        Ok(Scratch {
            root,
            keep,
            owner: None,
            port: free_port(),
            superuser: "postgres".into(),
            pg_version: 0,
            server: None,
            claim: crate::catalog::replay::new_claim_id(),
            command,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pgdata(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// Restores into the scratch directory: tablespaces beside the data directory,
    /// `archive_mode = off`, recovery promoting at the target (so the checks can write, e.g.
    /// install amcheck), no fsync (the copy is thrown away).
    pub async fn restore(
        &mut self,
        catalog: &Catalog,
        mut options: RestoreOptions,
    ) -> Result<RestoreReport> {
        options.pgdata = self.pgdata();
        options.tablespace_root = Some(self.root.join("tablespaces"));
        options.tablespace_map.clear();
        options.force = false;
        options.dry_run = false;
        options.sync = false;
        options.server = ServerRequest {
            archive_mode: Some(ArchiveMode::Off),
            port: Some(self.port),
        };
        options.request.recovery.action = Some(crate::pg::recovery_target::TargetAction::Promote);
        options.claim = Some(self.claim.clone());
        options.command = self.command;
        let report = restore(catalog, &options).await?;
        self.owner = report.owner.clone();
        let backup = &report.plan.backup;
        self.pg_version = backup.pg_version;
        self.superuser = backup
            .superuser
            .clone()
            .or_else(|| backup.cluster_owner.as_ref().and_then(|o| o.user.clone()))
            .unwrap_or_else(|| "postgres".into());
        Ok(report)
    }

    /// Starts PostgreSQL (`bin/postgres`) on the restored directory, as its owner, and waits
    /// until recovery has ended and it accepts connections; the time that took.
    pub async fn start(&mut self, bin: &Path) -> Result<Duration> {
        let pgdata = self.pgdata();
        let socket = self.socket_dir();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket)
            .map_err(|e| Error::local_io(socket.display(), e))?;
        // Only the socket's owner (and root) can reach it: trust is safe, and no password
        // of production's pg_hba.conf is needed.
        let hba = self.root.join("pg_hba.conf");
        let ident = self.root.join("pg_ident.conf");
        write_file(&hba, "local all all trust\n")?;
        write_file(&ident, "")?;
        // A cluster whose configuration lives elsewhere (Debian's /etc/postgresql) has none
        // in its data directory: the settings below are all the server needs.
        let conf = pgdata.join("postgresql.conf");
        if !conf.exists() {
            write_file(&conf, "")?;
        }
        let log = self.root.join("server.log");
        let log_file = fs::File::create(&log).map_err(|e| Error::local_io(log.display(), e))?;
        if let Some(owner) = self.owner.as_ref().filter(|_| running_as_root()) {
            let tablespaces = self.root.join("tablespaces");
            for path in [&self.root, &tablespaces, &socket, &hba, &ident, &log, &conf] {
                match std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::local_io(path.display(), e));
                    }
                    _ => {}
                }
            }
        }
        let mut command = std::process::Command::new(bin.join("postgres"));
        command.arg("-D").arg(&pgdata);
        for setting in self.settings() {
            command.arg("-c").arg(setting);
        }
        command
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|e| Error::local_io(log.display(), e))?,
            )
            .stderr(log_file)
            .current_dir(&self.root);
        if let Some(owner) = self.owner.as_ref().filter(|_| running_as_root()) {
            command.uid(owner.uid).gid(owner.gid);
        }
        // If pitr dies (kill -9), the server gets SIGQUIT and stops at once instead of
        // running on unattended.
        crate::sys::quit_with_parent(&mut command);
        let started = Instant::now();
        let child = command.spawn().map_err(|e| {
            Error::Server(format!(
                "cannot start {}: {e}",
                bin.join("postgres").display()
            ))
        })?;
        self.server = Some(child);
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                return Err(Error::Server(format!(
                    "the scratch server stopped during recovery ({status}): {}",
                    log_problems(&log)
                )));
            }
            if postmaster_status(&pgdata).as_deref() == Some("ready") {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `-c` settings that keep the scratch server to itself.
    fn settings(&self) -> Vec<String> {
        // Values on the command line are taken as they are, with no quoting.
        let dir = |p: &Path| p.display().to_string();
        let mut settings = vec![
            // A copied postgresql.conf may name production's directory and files.
            format!("data_directory={}", dir(&self.pgdata())),
            "listen_addresses=".into(),
            // A list: double quotes keep a comma or space in the path.
            format!("unix_socket_directories=\"{}\"", dir(&self.socket_dir())),
            format!("port={}", self.port),
            format!("hba_file={}", dir(&self.root.join("pg_hba.conf"))),
            format!("ident_file={}", dir(&self.root.join("pg_ident.conf"))),
            "archive_mode=off".into(),
            // Commits of the checks must not wait for production's standbys.
            "synchronous_standby_names=".into(),
            "primary_conninfo=".into(),
            format!("shared_buffers={SHARED_BUFFERS}"),
            "huge_pages=try".into(),
            "max_connections=20".into(),
            // Connections come only once recovery ended (no hot-standby parameter checks).
            "hot_standby=off".into(),
            "autovacuum=off".into(),
            "jit=off".into(),
            "ssl=off".into(),
            "logging_collector=off".into(),
            "log_destination=stderr".into(),
            "external_pid_file=".into(),
            "recovery_end_command=".into(),
            "archive_cleanup_command=".into(),
            "primary_slot_name=".into(),
            "cluster_name=pitr-scratch".into(),
        ];
        if PgVersion::of_major(self.pg_version).is_some_and(|v| v.stats_temp_directory) {
            // Before 15 the statistics collector writes here (production's, if absolute).
            settings.push("stats_temp_directory=pg_stat_tmp".into());
        }
        settings
    }

    /// A session with `database` as the bootstrap superuser, through the private socket.
    pub async fn connect(&self, database: &str) -> Result<Session> {
        Session::connect(&connection_settings(Some(&self.conninfo(database)))?).await
    }

    /// The conninfo string of `database` on the scratch server.
    pub fn conninfo(&self, database: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} dbname={} sslmode=disable",
            quote(&self.socket_dir().display().to_string()),
            self.port,
            quote(&self.superuser),
            quote(database)
        )
    }

    /// Stops the server: a fast shutdown, then at once if it takes too long.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        signal(&child, StopSignal::Interrupt);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_now(&mut child);
    }

    /// Lets the replay claim go: once the server is stopped, nothing reads the repository's WAL
    /// for this copy. Called on every way out (a claim left behind goes stale).
    pub async fn release_claim(&self, catalog: &Catalog) {
        if let Err(e) = catalog.remove_replay_claim(&self.claim).await {
            tracing::warn!(
                "could not remove the replay claim {} (expire ignores it once stale): {e}",
                self.claim
            );
        }
    }

    /// The server's log lines that say what went wrong (FATAL, PANIC, ERROR).
    pub fn log_problems(&self) -> String {
        log_problems(&self.root.join("server.log"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            stop_now(&mut child);
        }
        if !self.keep {
            // A restore cut short by a signal may still be finishing a file or two.
            for _ in 0..50 {
                match fs::remove_dir_all(&self.root) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP (Ctrl-C, systemd stopping the unit): the caller then
/// stops its scratch server and removes the directory before exiting.
pub async fn interrupted() -> Signal {
    Interrupt::listen().wait().await
}

/// The error of a run a signal stopped (exit 128 + the signal's number).
pub fn interruption(signal: Signal, scratch: &Scratch) -> Error {
    Error::Interrupted {
        signal,
        message: format!(
            "stopped by {}: the scratch server was stopped and {} {}",
            signal.name(),
            scratch.root().display(),
            if scratch.keep { "kept" } else { "removed" }
        ),
    }
}

/// SIGQUIT (immediate shutdown: the postmaster stops its children), then SIGKILL.
fn stop_now(child: &mut Child) {
    signal(child, StopSignal::Quit);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(child: &Child, signal: StopSignal) {
    crate::sys::send_signal(child.id(), signal);
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    crate::private_fs::write(path, content).map_err(|e| Error::local_io(path.display(), e))
}

/// A port no one listens on here (the server takes no TCP port, but its socket file and
/// lock are named by it).
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_or(54329, |a| a.port())
}

/// The postmaster's state from line 8 of `postmaster.pid` (PostgreSQL 10+): `starting`,
/// `standby`, `ready` or `stopping`.
fn postmaster_status(pgdata: &Path) -> Option<String> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().nth(7).map(|l| l.trim().to_owned())
}

/// The lines of a server log that say what went wrong, or its end when none does.
fn log_problems(log: &Path) -> String {
    let text = match fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return "no server log".into(),
        Err(e) => return format!("cannot read {}: {e}", log.display()),
    };
    let problems: Vec<&str> = text
        .lines()
        // PostgreSQL's own failures, and what restore_command (pitr archive-get) said.
        .filter(|l| {
            l.contains("FATAL:")
                || l.contains("PANIC:")
                || l.contains("ERROR:")
                || l.starts_with("pitr archive-get")
        })
        .collect();
    let lines: Vec<&str> = if problems.is_empty() {
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        problems[problems.len().saturating_sub(3)..].to_vec()
    };
    lines.join(" / ")
}
