//! How the restored server starts beside the cluster it was copied from: a copy restored
//! anywhere but the backup's own data directory does not archive into the repository (its
//! timeline would mix with production's), and it does not take a port (with its lock file
//! in the same socket directory) that a server on this host holds already.
//!
//! [`gather`] reads the restored configuration and probes the ports; [`decide`] is pure.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::ownership::user_name;
use crate::pg::guc::last_setting;

/// PostgreSQL's default port.
const DEFAULT_PORT: u16 = 5432;
/// Ports tried above a busy one before giving up.
const PORT_SEARCH: u16 = 100;

/// Whether the restored server archives as the backed-up cluster did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveMode {
    /// `archive_mode = off` is written: nothing reaches the repository from the copy.
    Off,
    /// The backup's archive settings are left as they were.
    Preserve,
}

impl std::str::FromStr for ArchiveMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(ArchiveMode::Off),
            "preserve" => Ok(ArchiveMode::Preserve),
            _ => Err(format!("'{text}' is not off or preserve")),
        }
    }
}

/// What the user asked for the restored server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerRequest {
    /// None: `off`, unless the restore is in place (into the backup's own data directory).
    pub archive_mode: Option<ArchiveMode>,
    /// Write `port = N`.
    pub port: Option<u16>,
}

/// Why the archive mode is what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveChoice {
    /// `--archive-mode` said so.
    Asked(ArchiveMode),
    /// The default for a restore into another directory than the backup's (which it names,
    /// when the manifest records it).
    Elsewhere(Option<String>),
    /// The default for a restore into the backup's own data directory.
    InPlace,
}

impl ArchiveChoice {
    pub fn mode(&self) -> ArchiveMode {
        match self {
            ArchiveChoice::Asked(mode) => *mode,
            ArchiveChoice::Elsewhere(_) => ArchiveMode::Off,
            ArchiveChoice::InPlace => ArchiveMode::Preserve,
        }
    }
}

/// The port the restored server gets, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortChoice {
    /// `--port`; `busy` if something on this host holds it already.
    Asked { port: u16, busy: bool },
    /// The configured port was free: nothing written.
    Configured(u16),
    /// The configured port is taken on this host: the first free one above it, written.
    Moved { from: u16, to: u16 },
    /// The configured port is taken and no free one was found near it: nothing written.
    Busy(u16),
}

impl PortChoice {
    /// The port the server will listen on.
    pub fn port(&self) -> u16 {
        match self {
            PortChoice::Asked { port, .. } => *port,
            PortChoice::Configured(port) | PortChoice::Busy(port) => *port,
            PortChoice::Moved { to, .. } => *to,
        }
    }

    /// The port restore writes, if it writes one.
    fn written(&self) -> Option<u16> {
        match self {
            PortChoice::Asked { port, .. } => Some(*port),
            PortChoice::Moved { to, .. } => Some(*to),
            PortChoice::Configured(_) | PortChoice::Busy(_) => None,
        }
    }
}

/// The restored server's setup, as restore wrote it and reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSetup {
    pub archive: ArchiveChoice,
    /// None on a dry run: the configuration is not restored yet.
    pub port: Option<PortChoice>,
    /// The socket directories the server will use (for psql's `-h`).
    pub socket_directories: Vec<PathBuf>,
    /// The commands that start the restored server and end its recovery, as words.
    pub commands: ServerCommands,
    /// What became of the configuration the backup recorded outside its data directory.
    pub configuration: super::config::ConfigReport,
}

/// The commands restore's `Next:` gives, as words: each run as the data directory's owner
/// when that is not who runs restore (PostgreSQL runs only as the owner of its data
/// directory), with the binaries of the cluster's version by their full path when they are
/// found (Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerCommands {
    /// `pg_ctl -D DIR -l DIR/server.log start`.
    pub start: Vec<String>,
    /// Where `start` sends the server's output.
    pub log: PathBuf,
    /// `pg_ctl promote -D DIR`: ends recovery paused at its target; the copy accepts writes.
    pub promote: Vec<String>,
    /// `psql … -c 'SELECT pg_wal_replay_resume()'`: the same from SQL; none without a port.
    pub resume: Option<Vec<String>>,
}

/// The server's log file `Next:` names: in the data directory, which its owner can write.
pub const SERVER_LOG: &str = "server.log";

impl ServerSetup {
    /// The lines restore writes into `postgresql.auto.conf` for the server.
    pub fn settings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.archive.mode() == ArchiveMode::Off {
            lines.push("archive_mode = off".to_owned());
        }
        if let Some(port) = self.port.as_ref().and_then(PortChoice::written) {
            lines.push(format!("port = {port}"));
        }
        lines
    }
}

/// The restored configuration as far as starting the server goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfiguredServer {
    pub port: Option<u16>,
    /// `unix_socket_directories`, as written.
    pub socket_directories: Option<String>,
    /// `listen_addresses`, as written.
    pub listen_addresses: Option<String>,
}

impl ConfiguredServer {
    /// Reads `config_file` (by default the data directory's `postgresql.conf`) with what it
    /// includes, and then `postgresql.auto.conf` of `pgdata` (later settings win, as for the
    /// server).
    pub fn read(pgdata: &Path, config_file: Option<&Path>) -> Self {
        let default = pgdata.join("postgresql.conf");
        Self::parse(
            &super::config::expanded(config_file.unwrap_or(&default)),
            &std::fs::read(pgdata.join("postgresql.auto.conf")).unwrap_or_default(),
        )
    }

    /// The same from the two files' contents (includes already expanded, or not followed).
    pub fn parse(conf: &[u8], auto: &[u8]) -> Self {
        let mut text = conf.to_vec();
        text.push(b'\n');
        text.extend_from_slice(auto);
        ConfiguredServer {
            port: last_setting(&text, "port").and_then(|p| p.trim().parse().ok()),
            socket_directories: last_setting(&text, "unix_socket_directories"),
            listen_addresses: last_setting(&text, "listen_addresses"),
        }
    }

    /// The socket directories, absolute (a relative one is the data directory's); when
    /// unset, both places PostgreSQL builds use by default.
    pub fn socket_directories(&self, pgdata: &Path) -> Vec<PathBuf> {
        let Some(text) = &self.socket_directories else {
            return vec![PathBuf::from("/var/run/postgresql"), PathBuf::from("/tmp")];
        };
        text.split(',')
            .map(|d| d.trim().trim_matches('"'))
            .filter(|d| !d.is_empty() && !d.starts_with('@'))
            .map(|d| pgdata.join(d))
            .collect()
    }

    /// Whether the server listens on TCP (listen_addresses defaults to localhost).
    pub fn listens_on_tcp(&self) -> bool {
        self.listen_addresses
            .as_deref()
            .is_none_or(|a| !a.trim().is_empty())
    }
}

/// Decides the archive mode: `--archive-mode`, else off unless `pgdata` is the backup's own
/// data directory.
pub fn choose_archive(
    request: Option<ArchiveMode>,
    backup_directory: Option<&str>,
    pgdata: &Path,
) -> ArchiveChoice {
    if let Some(mode) = request {
        return ArchiveChoice::Asked(mode);
    }
    match backup_directory {
        Some(dir) if super::layout::normalize(Path::new(dir)) == pgdata => ArchiveChoice::InPlace,
        dir => ArchiveChoice::Elsewhere(dir.map(str::to_owned)),
    }
}

/// Decides the port: `--port`, else the configured one while it is free, else the first
/// free one above it.
pub fn choose_port(
    request: Option<u16>,
    configured: Option<u16>,
    in_use: impl Fn(u16) -> bool,
) -> PortChoice {
    if let Some(port) = request {
        return PortChoice::Asked {
            port,
            busy: in_use(port),
        };
    }
    let from = configured.unwrap_or(DEFAULT_PORT);
    if !in_use(from) {
        return PortChoice::Configured(from);
    }
    (1..=PORT_SEARCH)
        .filter_map(|step| from.checked_add(step))
        .find(|&port| !in_use(port))
        .map_or(PortChoice::Busy(from), |to| PortChoice::Moved { from, to })
}

/// Whether a server on this host holds `port`: a live lock file `.s.PGSQL.<port>.lock` in
/// one of `socket_directories` (the lock is per port, so another port never collides in a
/// shared directory), or, when the server listens on TCP, a port that cannot be bound.
pub fn port_in_use(port: u16, socket_directories: &[PathBuf], tcp: bool) -> bool {
    let live_lock = socket_directories.iter().any(|dir| {
        std::fs::read_to_string(dir.join(format!(".s.PGSQL.{port}.lock")))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            .is_some_and(|pid| pid > 0 && crate::sys::process_running(pid))
    });
    let bound = || {
        [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED]
            .into_iter()
            .any(|address| {
                matches!(TcpListener::bind((address, port)),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
            })
    };
    live_lock || (tcp && bound())
}

/// The port the server configured so in `pgdata` gets on this host, and its socket
/// directories.
pub fn probe_port(
    configured: &ConfiguredServer,
    pgdata: &Path,
    request: &ServerRequest,
) -> (PortChoice, Vec<PathBuf>) {
    let socket_directories = configured.socket_directories(pgdata);
    let tcp = configured.listens_on_tcp();
    let port = choose_port(request.port, configured.port, |port| {
        port_in_use(port, &socket_directories, tcp)
    });
    (port, socket_directories)
}

/// Reads the restored configuration, probes the ports and decides; `pgdata` is restored.
pub fn gather(
    pgdata: &Path,
    request: &ServerRequest,
    backup_directory: Option<&str>,
    config_file: Option<&Path>,
) -> ServerSetup {
    let configured = ConfiguredServer::read(pgdata, config_file);
    let (port, socket_directories) = probe_port(&configured, pgdata, request);
    ServerSetup {
        archive: choose_archive(request.archive_mode, backup_directory, pgdata),
        port: Some(port),
        socket_directories,
        commands: ServerCommands::default(),
        configuration: Default::default(),
    }
}

/// The archive decision alone, before the configuration is restored (all a dry run has).
pub fn before_configuration(
    pgdata: &Path,
    request: &ServerRequest,
    backup_directory: Option<&str>,
    pg_version: u32,
) -> ServerSetup {
    ServerSetup {
        archive: choose_archive(request.archive_mode, backup_directory, pgdata),
        port: None,
        socket_directories: Vec::new(),
        commands: server_commands(pgdata, pg_version, None, &[], None),
        configuration: Default::default(),
    }
}

/// The commands for the server restored into `pgdata`, listening on `port` with sockets in
/// `socket_directories`, whose bootstrap superuser is `superuser` (when known).
pub fn server_commands(
    pgdata: &Path,
    pg_version: u32,
    port: Option<u16>,
    socket_directories: &[PathBuf],
    superuser: Option<&str>,
) -> ServerCommands {
    let owner_words = as_owner(pgdata);
    let bin = crate::commands::scratch::pg_bin::find(pg_version, None).ok();
    let program = |name: &str| match &bin {
        Some(dir) if dir.join(name).is_file() => dir.join(name).display().to_string(),
        _ => name.to_owned(),
    };
    let dir = pgdata.display().to_string();
    let log = pgdata.join(SERVER_LOG);
    let words = |rest: &[&str]| -> Vec<String> {
        owner_words
            .iter()
            .cloned()
            .chain(rest.iter().map(|w| (*w).to_owned()))
            .collect()
    };
    let (pg_ctl, psql) = (program("pg_ctl"), program("psql"));
    let log_text = log.display().to_string();
    let start = words(&[&pg_ctl, "-D", &dir, "-l", &log_text, "start"]);
    let promote = words(&[&pg_ctl, "promote", "-D", &dir]);
    // psql reaches the server on its first socket directory that exists, else over TCP.
    let host = socket_directories
        .iter()
        .find(|d| d.is_dir())
        .map_or_else(|| "localhost".to_owned(), |d| d.display().to_string());
    let resume = port.map(|port| {
        let port = port.to_string();
        let mut rest = vec![psql.as_str(), "-h", &host, "-p", &port];
        if let Some(user) = superuser {
            rest.extend(["-U", user]);
        }
        rest.extend(["-d", "postgres", "-c", "SELECT pg_wal_replay_resume()"]);
        words(&rest)
    });
    ServerCommands {
        start,
        log,
        promote,
        resume,
    }
}

/// `runuser -u OWNER --` (as root) or `sudo -u OWNER` when `pgdata`'s owner is not who runs
/// restore; nothing otherwise.
fn as_owner(pgdata: &Path) -> Vec<String> {
    let owner = std::fs::metadata(pgdata).map(|m| m.uid()).ok();
    let me = crate::ownership::effective_uid();
    let Some(owner) = owner.filter(|&uid| uid != me) else {
        return Vec::new();
    };
    let name = user_name(owner).unwrap_or_else(|| format!("#{owner}"));
    // root has runuser (util-linux) everywhere; sudo is for users who may have it.
    if me == 0 {
        vec!["runuser".to_owned(), "-u".to_owned(), name, "--".to_owned()]
    } else {
        vec!["sudo".to_owned(), "-u".to_owned(), name]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_elsewhere_does_not_archive_unless_asked() {
        let here = Path::new("/srv/pg/data");
        let recorded = Some("/srv/pg/./data");
        assert_eq!(choose_archive(None, recorded, here), ArchiveChoice::InPlace);
        assert_eq!(
            choose_archive(None, recorded, here).mode(),
            ArchiveMode::Preserve
        );
        let elsewhere = choose_archive(None, recorded, Path::new("/srv/pg/copy"));
        assert_eq!(
            elsewhere,
            ArchiveChoice::Elsewhere(Some("/srv/pg/./data".into()))
        );
        assert_eq!(elsewhere.mode(), ArchiveMode::Off);
        // A manifest that predates the record: not known to be in place.
        assert_eq!(choose_archive(None, None, here).mode(), ArchiveMode::Off);
        assert_eq!(
            choose_archive(Some(ArchiveMode::Off), recorded, here).mode(),
            ArchiveMode::Off
        );
        assert_eq!(
            choose_archive(Some(ArchiveMode::Preserve), None, here).mode(),
            ArchiveMode::Preserve
        );
        assert_eq!("preserve".parse(), Ok(ArchiveMode::Preserve));
        assert!("on".parse::<ArchiveMode>().is_err());
    }

    #[test]
    fn a_busy_port_moves_to_the_next_free_one() {
        let busy = |ports: &'static [u16]| move |p: u16| ports.contains(&p);
        assert_eq!(
            choose_port(None, None, busy(&[])),
            PortChoice::Configured(5432)
        );
        assert_eq!(
            choose_port(None, Some(6000), busy(&[6000, 6001])),
            PortChoice::Moved {
                from: 6000,
                to: 6002
            }
        );
        assert_eq!(
            choose_port(Some(7000), Some(5432), busy(&[7000])),
            PortChoice::Asked {
                port: 7000,
                busy: true
            }
        );
        assert_eq!(
            choose_port(None, Some(65535), busy(&[65535])),
            PortChoice::Busy(65535)
        );
    }

    #[test]
    fn the_settings_written_are_archive_mode_and_a_chosen_port() {
        let setup = |archive, port| ServerSetup {
            archive,
            port,
            socket_directories: vec![],
            commands: ServerCommands::default(),
            configuration: Default::default(),
        };
        assert_eq!(
            setup(
                ArchiveChoice::Elsewhere(None),
                Some(PortChoice::Moved {
                    from: 5432,
                    to: 5433
                })
            )
            .settings(),
            ["archive_mode = off", "port = 5433"]
        );
        assert!(
            setup(ArchiveChoice::InPlace, Some(PortChoice::Configured(5432)))
                .settings()
                .is_empty()
        );
    }

    #[test]
    fn a_live_lock_file_marks_its_port_busy_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_owned()];
        let lock = dir.path().join(".s.PGSQL.45432.lock");
        std::fs::write(&lock, format!("{}\n/data\n", std::process::id())).unwrap();
        assert!(port_in_use(45432, &dirs, false));
        assert!(!port_in_use(45433, &dirs, false));
        // A stale lock (no such process) does not hold the port: PostgreSQL replaces it.
        std::fs::write(&lock, "999999999\n").unwrap();
        assert!(!port_in_use(45432, &dirs, false));
        // A bound TCP port, when the server listens on TCP.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(port_in_use(port, &[], true));
        assert!(!port_in_use(port, &[], false));
    }

    #[test]
    fn the_commands_run_as_the_directory_s_owner_with_a_log_and_the_resume_query() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let sockets = [dir.path().join("absent"), dir.path().to_owned()];
        let commands = server_commands(dir.path(), 15, Some(5433), &sockets, Some("admin"));
        let start = &commands.start;
        let log = format!("{data}/server.log");
        assert_eq!(start[start.len() - 5..], ["-D", &data, "-l", &log, "start"]);
        assert!(start[0] != "sudo", "{start:?}");
        // The cluster's own version's binaries where they are installed (Debian's layout).
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        if bin.join("postgres").is_file() && bin.join("psql").is_file() {
            assert_eq!(start[0], "/usr/lib/postgresql/15/bin/pg_ctl");
        }
        assert_eq!(commands.promote[1..], ["promote", "-D", &data]);
        let resume = commands.resume.unwrap();
        assert_eq!(
            resume[1..],
            [
                "-h",
                &data,
                "-p",
                "5433",
                "-U",
                "admin",
                "-d",
                "postgres",
                "-c",
                "SELECT pg_wal_replay_resume()"
            ]
        );
        assert!(resume[0].ends_with("psql"), "{resume:?}");
        // No port known (a dry run): no resume command.
        assert_eq!(
            server_commands(dir.path(), 15, None, &[], None).resume,
            None
        );
        if crate::ownership::running_as_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
            let commands = server_commands(dir.path(), 15, Some(5433), &sockets, None);
            let expected = user_name(65534).unwrap_or_else(|| "#65534".into());
            for words in [
                &commands.start,
                &commands.promote,
                &commands.resume.unwrap(),
            ] {
                assert_eq!(
                    words[..4],
                    [
                        "runuser".to_owned(),
                        "-u".into(),
                        expected.clone(),
                        "--".into()
                    ]
                );
            }
        }
    }

    #[test]
    fn socket_directories_are_read_as_the_server_reads_them() {
        let configured = ConfiguredServer {
            socket_directories: Some("/run/a, \"sub dir\",@abstract, ".into()),
            ..Default::default()
        };
        assert_eq!(
            configured.socket_directories(Path::new("/data")),
            [PathBuf::from("/run/a"), PathBuf::from("/data/sub dir")]
        );
        assert!(ConfiguredServer::default().listens_on_tcp());
        let local_only = ConfiguredServer {
            listen_addresses: Some(String::new()),
            ..Default::default()
        };
        assert!(!local_only.listens_on_tcp());
    }
}
