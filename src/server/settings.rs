//! Where a connection's settings come from, in libpq's order: `--dbname` (conninfo or URL),
//! then the service it names (`service=`, PGSERVICE) from the service file, then libpq's
//! environment variables, then the defaults. The password comes last from the password file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conninfo::{self, Params};
use super::passfile::{self, PassKey};
use super::tls::{SslMode, TlsSettings};

/// libpq's environment variable for each keyword.
const ENVIRONMENT: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("application_name", "PGAPPNAME"),
    ("options", "PGOPTIONS"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
];

/// libpq keywords tokio-postgres implements the same way, with its name for each.
const HANDED_ON: &[(&str, &str)] = &[
    ("keepalives", "keepalives"),
    ("keepalives_idle", "keepalives_idle"),
    ("keepalives_interval", "keepalives_interval"),
    ("keepalives_count", "keepalives_retries"),
    ("target_session_attrs", "target_session_attrs"),
    ("channel_binding", "channel_binding"),
];

/// libpq's compiled-in socket directory on Debian; TCP to localhost where it is missing.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Debian's libpq SYSCONFDIR, where pg_service.conf lives without PGSYSCONFDIR.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// What the process's surroundings say: environment variables and the user.
pub struct Surroundings<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The home directory (libpq's `~`).
    pub home: Option<PathBuf>,
    /// The operating-system user name, libpq's default user.
    pub os_user: Option<String>,
    /// Whether the default socket directory exists.
    pub default_socket_dir_exists: bool,
}

impl Surroundings<'_> {
    /// This process's.
    pub fn of_process() -> Surroundings<'static> {
        fn env(name: &str) -> Option<String> {
            std::env::var(name).ok()
        }
        Surroundings {
            env: &env,
            home: crate::ownership::home_dir(),
            os_user: crate::ownership::user_name(crate::ownership::effective_uid()),
            default_socket_dir_exists: Path::new(DEFAULT_SOCKET_DIR).is_dir(),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    fn home_file(&self, name: &str) -> PathBuf {
        self.home.as_deref().unwrap_or(Path::new("~")).join(name)
    }
}

/// One server to try: libpq tries each in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A host name, an IP address, or a socket directory (starting with `/`).
    pub host: String,
    /// Where to connect instead of resolving `host` (libpq's hostaddr); `host` stays the name
    /// the certificate is checked against.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Target {
    pub fn is_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.starts_with('/')
    }
}

/// Where the password came from, for the hint when the server refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    Conninfo,
    Service(PathBuf),
    Environment,
    PassFile(PathBuf),
}

/// A password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub(super) String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Everything needed to connect, resolved; its Display names what is tried, never the
/// password.
#[derive(Clone, Debug)]
pub struct ConnectSettings {
    pub targets: Vec<Target>,
    pub user: String,
    pub dbname: String,
    pub password: Option<(Password, PasswordSource)>,
    pub passfile: PathBuf,
    pub tls: TlsSettings,
    pub connect_timeout: Option<Duration>,
    /// libpq's `tcp_user_timeout`, given in milliseconds.
    pub tcp_user_timeout: Option<Duration>,
    /// `load_balance_hosts=random`: try the hosts in random order.
    pub load_balance: bool,
    pub application_name: String,
    pub options: Option<String>,
    /// What tokio-postgres applies itself (keepalives, target_session_attrs,
    /// channel_binding), as its `keyword='value'` pairs; never a host, user or password.
    pub handed_on: Vec<String>,
}

impl fmt::Display for ConnectSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &dyn Fn(&Target) -> String| {
            self.targets.iter().map(f).collect::<Vec<_>>().join(",")
        };
        write!(f, "host={}", join(&|t| t.host.clone()))?;
        if self.targets.iter().any(|t| t.hostaddr.is_some()) {
            write!(
                f,
                " hostaddr={}",
                join(&|t| t.hostaddr.map(|a| a.to_string()).unwrap_or_default())
            )?;
        }
        write!(
            f,
            " port={} user={} dbname={}",
            join(&|t| t.port.to_string()),
            self.user,
            self.dbname
        )?;
        if self.tls.mode != SslMode::Prefer {
            write!(f, " sslmode={}", self.tls.mode)?;
        }
        Ok(())
    }
}

/// A setting that cannot be used; its text names no password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The settings for `dbname` (as given to `--dbname`) in `surroundings`.
pub fn resolve(
    dbname: Option<&str>,
    surroundings: &Surroundings<'_>,
) -> Result<ConnectSettings, SettingsError> {
    let given = match dbname {
        Some(conninfo) => conninfo::parse(conninfo).map_err(|e| {
            SettingsError(format!(
                "--dbname '{}' is not a connection string: {e}",
                conninfo::redact(conninfo)
            ))
        })?,
        None => Params::new(),
    };
    let mut sources: Vec<(Params, Source)> = vec![(given, Source::Conninfo)];
    let service = sources[0]
        .0
        .get("service")
        .cloned()
        .or_else(|| surroundings.var("PGSERVICE"));
    if let Some(service) = service {
        let (params, file) = service_params(&service, surroundings)?;
        sources.push((params, Source::Service(file)));
    }
    let environment: Params = ENVIRONMENT
        .iter()
        .filter_map(|(keyword, var)| Some((keyword.to_string(), surroundings.var(var)?)))
        .collect();
    sources.push((environment, Source::Environment));
    let get = |keyword: &str| -> Option<(&str, &Source)> {
        sources
            .iter()
            .find_map(|(params, source)| Some((params.get(keyword)?.as_str(), source)))
    };
    let value = |keyword: &str| get(keyword).map(|(v, _)| v).filter(|v| !v.is_empty());

    let hostaddrs: Vec<Option<IpAddr>> = match value("hostaddr") {
        Some(list) => list
            .split(',')
            .map(|a| {
                a.parse()
                    .map(Some)
                    .map_err(|_| SettingsError(format!("hostaddr \"{a}\" is not an IP address")))
            })
            .collect::<Result<_, _>>()?,
        None => vec![],
    };
    let hosts: Vec<String> = match value("host") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None if !hostaddrs.is_empty() => hostaddrs
            .iter()
            .map(|a| a.map(|a| a.to_string()).unwrap_or_default())
            .collect(),
        None if surroundings.default_socket_dir_exists => vec![DEFAULT_SOCKET_DIR.into()],
        None => vec!["localhost".into()],
    };
    if !hostaddrs.is_empty() && hostaddrs.len() != hosts.len() {
        return Err(SettingsError(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            hostaddrs.len()
        )));
    }
    let ports: Vec<u16> = match value("port") {
        Some(list) => list
            .split(',')
            .map(|p| match p {
                "" => Ok(5432),
                p => p
                    .parse()
                    .map_err(|_| SettingsError(format!("port \"{p}\" is not a port number"))),
            })
            .collect::<Result<_, _>>()?,
        None => vec![5432],
    };
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(SettingsError(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            hosts.len()
        )));
    }
    let targets = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Target {
            host: match host.as_str() {
                "" if surroundings.default_socket_dir_exists => DEFAULT_SOCKET_DIR.into(),
                "" => "localhost".into(),
                host => host.to_owned(),
            },
            hostaddr: hostaddrs.get(i).copied().flatten(),
            port: ports.get(i).copied().unwrap_or(ports[0]),
        })
        .collect();

    let user = value("user")
        .map(str::to_owned)
        .or_else(|| surroundings.os_user.clone())
        .unwrap_or_else(|| "postgres".into());
    // pitr's one departure from libpq, whose default database is the user's name: the
    // backup functions live in every database, and `postgres` is there on every cluster.
    let dbname = value("dbname").unwrap_or("postgres").to_owned();
    let password = get("password")
        .filter(|(v, _)| !v.is_empty())
        .map(|(password, source)| {
            let source = match source {
                Source::Conninfo => PasswordSource::Conninfo,
                Source::Service(file) => PasswordSource::Service(file.clone()),
                Source::Environment => PasswordSource::Environment,
            };
            (Password(password.to_owned()), source)
        });
    let file = |keyword: &str, default: &str| -> PathBuf {
        value(keyword)
            .map(PathBuf::from)
            .unwrap_or_else(|| surroundings.home_file(default))
    };
    // libpq 16: sslrootcert=system means verify-full, and nothing weaker.
    let system_roots = value("sslrootcert") == Some(super::tls::SYSTEM_ROOTS);
    let mode = match value("sslmode") {
        Some(mode) => mode.parse().map_err(SettingsError)?,
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system_roots && mode != SslMode::VerifyFull {
        return Err(SettingsError(format!(
            "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
        )));
    }
    let tls = TlsSettings {
        mode,
        rootcert: file("sslrootcert", ".postgresql/root.crt"),
        cert: file("sslcert", ".postgresql/postgresql.crt"),
        key: file("sslkey", ".postgresql/postgresql.key"),
    };
    let connect_timeout = match value("connect_timeout") {
        // libpq: zero or negative means wait forever; under 2 seconds means 2.
        Some(seconds) => match seconds.trim().parse::<i64>() {
            Ok(s) if s <= 0 => None,
            Ok(s) => Some(Duration::from_secs(s.max(2) as u64)),
            Err(_) => {
                return Err(SettingsError(format!(
                    "connect_timeout \"{seconds}\" is not a number of seconds"
                )));
            }
        },
        None => None,
    };
    let tcp_user_timeout = match value("tcp_user_timeout") {
        Some(ms) => match ms.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                return Err(SettingsError(format!(
                    "tcp_user_timeout \"{ms}\" is not a number of milliseconds"
                )));
            }
        },
        None => None,
    };
    let load_balance = match value("load_balance_hosts") {
        None | Some("disable") => false,
        Some("random") => true,
        Some(other) => {
            return Err(SettingsError(format!(
                "invalid load_balance_hosts value \"{other}\" (disable or random)"
            )));
        }
    };
    let mut handed_on = Vec::new();
    for (keyword, theirs) in HANDED_ON {
        if let Some(v) = value(keyword) {
            let pair = format!(
                "{theirs}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            );
            // Checked here, one at a time, so that the error names the keyword.
            if pair.parse::<tokio_postgres::Config>().is_err() {
                return Err(SettingsError(format!("invalid {keyword} value \"{v}\"")));
            }
            handed_on.push(pair);
        }
    }
    Ok(ConnectSettings {
        targets,
        user,
        dbname,
        password,
        passfile: file("passfile", ".pgpass"),
        tls,
        connect_timeout,
        tcp_user_timeout,
        load_balance,
        handed_on,
        application_name: value("application_name")
            .or_else(|| value("fallback_application_name"))
            .unwrap_or("pitr")
            .to_owned(),
        options: value("options").map(str::to_owned),
    })
}

enum Source {
    Conninfo,
    Service(PathBuf),
    Environment,
}

/// The service's parameters and the file that defines it: PGSERVICEFILE or
/// `~/.pg_service.conf` first, then `pg_service.conf` in PGSYSCONFDIR (libpq's order).
fn service_params(
    service: &str,
    surroundings: &Surroundings<'_>,
) -> Result<(Params, PathBuf), SettingsError> {
    let user_file = surroundings
        .var("PGSERVICEFILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| surroundings.home_file(".pg_service.conf"));
    let system_file = Path::new(
        &surroundings
            .var("PGSYSCONFDIR")
            .unwrap_or_else(|| DEFAULT_SYSCONFDIR.into()),
    )
    .join("pg_service.conf");
    for file in [&user_file, &system_file] {
        let contents = match std::fs::read_to_string(file) {
            Ok(contents) => contents,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SettingsError(format!(
                    "cannot read service file \"{}\": {e}",
                    file.display()
                )));
            }
        };
        match passfile::service_lookup(&contents, service) {
            Ok(Some(params)) => return Ok((params, file.clone())),
            Ok(None) => continue,
            Err(e) => {
                return Err(SettingsError(format!(
                    "service file \"{}\", {e}",
                    file.display()
                )));
            }
        }
    }
    Err(SettingsError(format!(
        "definition of service \"{service}\" not found (looked in {} and {})",
        user_file.display(),
        system_file.display()
    )))
}

/// What the password file at `path` says for `target` and `dbname`, with libpq's warnings
/// when it is ignored; `None` when it has no line for it or does not exist.
pub fn password_from_file(
    path: &Path,
    settings: &ConnectSettings,
    target: &Target,
    dbname: &str,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    if let Some(problem) = passfile::pgpass_mode_problem(meta.mode(), meta.is_file()) {
        tracing::warn!(
            "password file \"{}\" {problem}; it is ignored",
            path.display()
        );
        return None;
    }
    let contents = std::fs::read_to_string(path)
        .map_err(|e| tracing::warn!("cannot read password file \"{}\": {e}", path.display()))
        .ok()?;
    // libpq matches the default socket directory as "localhost".
    let host = if target.is_socket() && target.host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        &target.host
    };
    passfile::pgpass_lookup(
        &contents,
        PassKey {
            host,
            port: &target.port.to_string(),
            dbname,
            user: &settings.user,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn surroundings<'a>(env: &'a dyn Fn(&str) -> Option<String>) -> Surroundings<'a> {
        Surroundings {
            env,
            home: Some("/home/alice".into()),
            os_user: Some("alice".into()),
            default_socket_dir_exists: true,
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn defaults_as_libpq_has_them() {
        let env = env_of(&[]);
        let settings = resolve(None, &surroundings(&env)).unwrap();
        assert_eq!(
            settings.targets,
            vec![Target {
                host: DEFAULT_SOCKET_DIR.into(),
                hostaddr: None,
                port: 5432
            }]
        );
        assert_eq!(settings.user, "alice");
        assert_eq!(settings.dbname, "postgres");
        assert_eq!(settings.password, None);
        assert_eq!(settings.passfile, PathBuf::from("/home/alice/.pgpass"));
        assert_eq!(settings.tls.mode, SslMode::Prefer);
        assert_eq!(
            settings.tls.rootcert,
            PathBuf::from("/home/alice/.postgresql/root.crt")
        );
        assert_eq!(
            settings.tls.cert,
            PathBuf::from("/home/alice/.postgresql/postgresql.crt")
        );
        assert_eq!(
            settings.tls.key,
            PathBuf::from("/home/alice/.postgresql/postgresql.key")
        );
        assert_eq!(
            settings.to_string(),
            "host=/var/run/postgresql port=5432 user=alice dbname=postgres"
        );
    }

    #[test]
    fn conninfo_wins_over_the_environment() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "bob"),
            ("PGPASSWORD", "envsecret"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/env/ca.crt"),
        ]);
        let settings = resolve(
            Some("host=/tmp/sock port=5999 dbname=app password=given"),
            &surroundings(&env),
        )
        .unwrap();
        assert_eq!(settings.targets[0].host, "/tmp/sock");
        assert!(settings.targets[0].is_socket());
        assert_eq!(settings.targets[0].port, 5999);
        assert_eq!(settings.user, "bob");
        assert_eq!(settings.dbname, "app");
        assert_eq!(
            settings.password,
            Some((Password("given".into()), PasswordSource::Conninfo))
        );
        assert_eq!(settings.tls.mode, SslMode::Require);
        assert_eq!(settings.tls.rootcert, PathBuf::from("/env/ca.crt"));
        assert_eq!(
            settings.to_string(),
            "host=/tmp/sock port=5999 user=bob dbname=app sslmode=require"
        );
        let from_env = resolve(None, &surroundings(&env)).unwrap();
        assert_eq!(
            from_env.password,
            Some((Password("envsecret".into()), PasswordSource::Environment))
        );
    }

    #[test]
    fn several_hosts_ports_and_hostaddr() {
        let env = env_of(&[]);
        let settings = resolve(
            Some("host=a,b hostaddr=10.0.0.1,10.0.0.2 port=1,2"),
            &surroundings(&env),
        )
        .unwrap();
        assert_eq!(settings.targets.len(), 2);
        assert_eq!(settings.targets[1].host, "b");
        assert_eq!(
            settings.targets[1].hostaddr,
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(settings.targets[1].port, 2);
        assert_eq!(
            settings.to_string(),
            "host=a,b hostaddr=10.0.0.1,10.0.0.2 port=1,2 user=alice dbname=postgres"
        );
        assert!(resolve(Some("host=a,b,c port=1,2"), &surroundings(&env)).is_err());
        assert!(resolve(Some("port=x"), &surroundings(&env)).is_err());
        assert!(resolve(Some("sslmode=strict"), &surroundings(&env)).is_err());
        let only_addr = resolve(Some("hostaddr=127.0.0.1"), &surroundings(&env)).unwrap();
        assert_eq!(only_addr.targets[0].host, "127.0.0.1");
    }

    #[test]
    fn the_system_roots_mean_verify_full() {
        let env = env_of(&[]);
        let settings = resolve(Some("sslrootcert=system"), &surroundings(&env)).unwrap();
        assert_eq!(settings.tls.mode, SslMode::VerifyFull);
        assert_eq!(settings.tls.rootcert, PathBuf::from("system"));
        let error = resolve(
            Some("sslrootcert=system sslmode=require"),
            &surroundings(&env),
        )
        .unwrap_err();
        assert!(error.0.starts_with("weak sslmode \"require\""), "{error}");
    }

    #[test]
    fn keywords_tokio_postgres_implements_are_handed_on() {
        let env = env_of(&[("PGTARGETSESSIONATTRS", "read-write")]);
        let settings = resolve(
            Some("keepalives_idle=30 keepalives_count=3 tcp_user_timeout=1500 load_balance_hosts=random"),
            &surroundings(&env),
        )
        .unwrap();
        assert_eq!(
            settings.handed_on,
            vec![
                "keepalives_idle='30'",
                "keepalives_retries='3'",
                "target_session_attrs='read-write'"
            ]
        );
        assert_eq!(settings.tcp_user_timeout, Some(Duration::from_millis(1500)));
        assert!(settings.load_balance);
        let error = resolve(Some("channel_binding=always"), &surroundings(&env)).unwrap_err();
        assert_eq!(error.0, "invalid channel_binding value \"always\"");
        assert!(resolve(Some("load_balance_hosts=yes"), &surroundings(&env)).is_err());
    }

    #[test]
    fn an_unparsable_dbname_is_shown_without_its_password() {
        let env = env_of(&[]);
        for conninfo in [
            "host=db password=hunter2 'oops",
            "host=db password='hunter2' junk",
            "postgresql://u:hunter2@db:port/x",
        ] {
            let error = resolve(Some(conninfo), &surroundings(&env))
                .unwrap_err()
                .to_string();
            assert!(!error.contains("hunter2"), "{error}");
            assert!(
                error.contains("host=db") || error.contains("@db:"),
                "{error}"
            );
        }
    }

    #[test]
    fn services_fill_in_between_conninfo_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.conf");
        std::fs::write(
            &file,
            "[main]\nhost=db.example\nport=5433\nuser=svc\npassword=svcsecret\n\
             sslmode=verify-full\n",
        )
        .unwrap();
        let file_name = file.display().to_string();
        let env = env_of(&[
            ("PGSERVICEFILE", &file_name),
            ("PGSYSCONFDIR", "/nonexistent"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
        ]);
        let settings = resolve(Some("service=main port=6000"), &surroundings(&env)).unwrap();
        assert_eq!(settings.targets[0].host, "db.example");
        assert_eq!(settings.targets[0].port, 6000);
        assert_eq!(settings.user, "svc");
        assert_eq!(settings.dbname, "envdb");
        assert_eq!(settings.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            settings.password,
            Some((Password("svcsecret".into()), PasswordSource::Service(file)))
        );
        let env_service = env_of(&[
            ("PGSERVICE", "main"),
            ("PGSERVICEFILE", &file_name),
            ("PGSYSCONFDIR", "/nonexistent"),
        ]);
        assert_eq!(
            resolve(None, &surroundings(&env_service)).unwrap().user,
            "svc"
        );
        let error = resolve(Some("service=other"), &surroundings(&env)).unwrap_err();
        assert!(
            error
                .0
                .contains("definition of service \"other\" not found"),
            "{error}"
        );
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "localhost:5432:postgres:alice:viasocket\ndb:5433:*:alice:viatcp\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = env_of(&[]);
        let settings = resolve(Some("host=db port=5433"), &surroundings(&env)).unwrap();
        let lookup = |settings: &ConnectSettings| {
            password_from_file(&file, settings, &settings.targets[0], &settings.dbname)
        };
        assert_eq!(lookup(&settings).as_deref(), Some("viatcp"));
        let socket = resolve(None, &surroundings(&env)).unwrap();
        assert_eq!(lookup(&socket).as_deref(), Some("viasocket"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&settings), None);
    }
}
