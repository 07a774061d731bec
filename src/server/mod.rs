//! The SQL session with the running server, found the way libpq finds it: `--dbname`
//! (a conninfo string or URL), the service it names, libpq's environment (PGHOST, PGPORT,
//! PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE…), the password file; TLS with libpq's
//! `sslmode` rules. Every connection pitr makes goes through [`Session::connect`].

pub mod conninfo;
pub mod passfile;
pub mod replication;
pub mod settings;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;
use crate::pg::{Lsn, PgVersion};

pub use settings::{ConnectSettings, PasswordSource, Target};
pub use tls::SslMode;

/// The settings for `--dbname` (or none) in this process's environment.
pub fn connection_settings(dbname: Option<&str>) -> Result<ConnectSettings, Error> {
    settings::resolve(dbname, &settings::Surroundings::of_process())
        .map_err(|e| Error::Config(e.to_string()))
}

/// An open session; the connection task lives as long as the runtime.
pub struct Session {
    client: Client,
    pub server_version_num: i32,
}

/// One way of trying a server, in libpq's order for the sslmode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    Plain,
    /// TLS if the server offers it, else plain in the same connection.
    TlsIfOffered,
    TlsRequired,
}

/// libpq's attempts: `allow` tries without TLS first, `prefer` with TLS first, each retrying
/// the other way once; a socket directory never uses TLS (the server offers none there).
fn attempts(mode: SslMode, socket: bool) -> &'static [Attempt] {
    match mode {
        _ if socket => &[Attempt::Plain],
        SslMode::Disable => &[Attempt::Plain],
        SslMode::Allow => &[Attempt::Plain, Attempt::TlsRequired],
        SslMode::Prefer => &[Attempt::TlsIfOffered, Attempt::Plain],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Attempt::TlsRequired],
    }
}

/// Why one attempt failed.
struct Failure {
    reason: String,
    /// The server answered with an error (authentication, pg_hba.conf).
    server_refused: bool,
    /// The TLS handshake itself failed.
    tls_failed: bool,
    /// TLS was in use when it failed.
    tls_used: bool,
}

/// libpq's retry rule: `allow` retries with TLS when the server refused the plain
/// connection; `prefer` retries without TLS when the TLS connection failed.
fn retry_after(attempt: Attempt, failure: &Failure) -> bool {
    match attempt {
        Attempt::Plain => failure.server_refused,
        Attempt::TlsIfOffered => failure.tls_failed || (failure.server_refused && failure.tls_used),
        Attempt::TlsRequired => false,
    }
}

impl Session {
    /// Connects to the first server of `settings` that accepts; the error names every
    /// server tried and why it failed, never the password.
    pub async fn connect(settings: &ConnectSettings) -> Result<Self, Error> {
        let tls = tls_config(settings)?.map(MakeRustlsConnect::new);
        let client = connect_first(
            settings,
            &settings.dbname,
            async |target, attempt, password| {
                session_attempt(settings, target, attempt, password, tls.as_ref()).await
            },
        )
        .await?;
        Session::start(client).await
    }

    async fn start(client: Client) -> Result<Self, Error> {
        let row = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| sql_error("reading the server version", e))?;
        Ok(Session {
            client,
            server_version_num: row.get(0),
        })
    }
}

/// A password and where it came from.
type PasswordOf = (settings::Password, PasswordSource);

/// The rustls configuration of `settings` (`None` for sslmode=disable).
fn tls_config(settings: &ConnectSettings) -> Result<Option<rustls::ClientConfig>, Error> {
    tls::client_config(&settings.tls)
        .map_err(|e| Error::Config(format!("cannot connect to PostgreSQL at {settings}: {e}")))
}

/// The password for `target`: the one given, else the password file's line for it (looked
/// up with `dbname`: `replication` for a physical replication connection, as libpq does).
fn password_for(settings: &ConnectSettings, target: &Target, dbname: &str) -> Option<PasswordOf> {
    settings.password.clone().or_else(|| {
        settings::password_from_file(&settings.passfile, settings, target, dbname).map(|p| {
            (
                settings::Password(p),
                PasswordSource::PassFile(settings.passfile.clone()),
            )
        })
    })
}

/// Tries the servers of `settings` in libpq's order, each the ways its sslmode allows
/// (`attempts`, `retry_after`), with `try_once`; the first connection made, or an error that
/// names every server tried and why it failed, never the password. Shared by the SQL
/// session and the replication connection.
async fn connect_first<C>(
    settings: &ConnectSettings,
    passfile_dbname: &str,
    mut try_once: impl AsyncFnMut(&Target, Attempt, Option<&PasswordOf>) -> Result<C, Failure>,
) -> Result<C, Error> {
    let mut reasons = Vec::new();
    let mut targets: Vec<&Target> = settings.targets.iter().collect();
    if settings.load_balance {
        fastrand::shuffle(&mut targets);
    }
    for target in targets {
        let password = password_for(settings, target, passfile_dbname);
        let mut tried: Vec<String> = Vec::new();
        for attempt in attempts(settings.tls.mode, target.is_socket()) {
            let failure = match try_once(target, *attempt, password.as_ref()).await {
                Ok(connection) => return Ok(connection),
                Err(failure) => failure,
            };
            let retry = retry_after(*attempt, &failure);
            tried.push(match (tried.is_empty(), attempt) {
                (true, _) => failure.reason,
                (false, Attempt::Plain) => format!("then without TLS: {}", failure.reason),
                (false, _) => format!("then with TLS: {}", failure.reason),
            });
            if !retry {
                break;
            }
        }
        let reason = scrub(tried.join("; "), password.as_ref().map(|(p, _)| p));
        if settings.targets.len() > 1 {
            reasons.push(format!("{}:{}: {reason}", target.host, target.port));
        } else {
            reasons.push(reason);
        }
    }
    let message = format!(
        "cannot connect to PostgreSQL at {settings}: {} (set --dbname, or \
         PGHOST/PGPORT/PGUSER)",
        reasons.join("; ")
    );
    Err(Error::Server(scrub(
        message,
        settings.password.as_ref().map(|(p, _)| p),
    )))
}

/// One attempt of the SQL session: tokio-postgres with TLS or without.
async fn session_attempt(
    settings: &ConnectSettings,
    target: &Target,
    attempt: Attempt,
    password: Option<&PasswordOf>,
    tls: Option<&MakeRustlsConnect>,
) -> Result<Client, Failure> {
    let mut config: Config = settings
        .handed_on
        .join(" ")
        .parse()
        .map_err(|e| Failure::local(format!("{e}")))?;
    config
        .host(&target.host)
        .port(target.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name(&settings.application_name);
    if let Some(address) = target.hostaddr {
        config.hostaddr(address);
    }
    if let Some((password, _)) = password {
        config.password(password.0.as_bytes());
    }
    if let Some(options) = &settings.options {
        config.options(options);
    }
    if let Some(timeout) = settings.connect_timeout {
        config.connect_timeout(timeout);
    }
    if let Some(timeout) = settings.tcp_user_timeout {
        config.tcp_user_timeout(timeout);
    }
    let result = match (attempt, tls) {
        (Attempt::Plain, _) | (_, None) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            connect_once(&config, NoTls).await.map_err(|e| (e, false))
        }
        (attempt, Some(tls)) => {
            config.ssl_mode(if attempt == Attempt::TlsRequired {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            });
            let used = Arc::new(AtomicBool::new(false));
            let tracked = TrackTls {
                inner: tls.clone(),
                used: used.clone(),
            };
            connect_once(&config, tracked)
                .await
                .map_err(|e| (e, used.load(Ordering::SeqCst)))
        }
    };
    result
        .map_err(|(error, tls_used)| describe_failure(&error, tls_used, settings, target, password))
}

/// `message` without `password`: the server's words and pitr's should never carry it, and
/// this makes sure (a password of a few characters could stand for other words, so those
/// are left to the rest of the design).
fn scrub(message: String, password: Option<&settings::Password>) -> String {
    match password {
        Some(password) if password.0.len() >= 4 => message.replace(&password.0, "***"),
        _ => message,
    }
}

async fn connect_once<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("connection to PostgreSQL ended: {e}");
        }
    });
    Ok(client)
}

fn describe_failure(
    error: &tokio_postgres::Error,
    tls_used: bool,
    settings: &ConnectSettings,
    target: &Target,
    password: Option<&PasswordOf>,
) -> Failure {
    if let Some(db) = error.as_db_error() {
        let mut reason = db.message().to_owned();
        if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD {
            reason.push_str(&password_hint(password));
        }
        return Failure::refused(reason, tls_used);
    }
    if let Some(tls_error) = rustls_error(error) {
        return Failure {
            reason: tls::describe(tls_error, &settings.tls, &target.host),
            server_refused: false,
            tls_failed: true,
            tls_used,
        };
    }
    // tokio-postgres's Display names only the kind ("invalid configuration"): add the causes.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let reason = if text.contains("password missing") {
        no_password_reason(settings)
    } else if text.contains("server does not support TLS") {
        no_tls_reason(settings)
    } else {
        text
    };
    Failure {
        reason,
        server_refused: false,
        tls_failed: tls_used,
        tls_used,
    }
}

impl Failure {
    /// The server answered with an error (authentication, pg_hba.conf, a role's rights).
    fn refused(reason: String, tls_used: bool) -> Self {
        Failure {
            reason,
            server_refused: true,
            tls_failed: false,
            tls_used,
        }
    }

    /// Nothing to retry: a setting, or a network error before TLS.
    fn local(reason: String) -> Self {
        Failure {
            reason,
            server_refused: false,
            tls_failed: false,
            tls_used: false,
        }
    }
}

/// libpq's hint when the server refuses a password: which password it was.
fn password_hint(password: Option<&PasswordOf>) -> String {
    match password.map(|(_, source)| source) {
        Some(PasswordSource::PassFile(file)) => {
            format!(" (password from file \"{}\")", file.display())
        }
        Some(PasswordSource::Service(file)) => {
            format!(" (password from service file \"{}\")", file.display())
        }
        Some(PasswordSource::Environment) => " (password from PGPASSWORD)".into(),
        _ => String::new(),
    }
}

fn no_password_reason(settings: &ConnectSettings) -> String {
    format!(
        "the server asks for a password and none was given (password= in --dbname, \
         PGPASSWORD, or a line for it in the password file {})",
        settings.passfile.display()
    )
}

fn no_tls_reason(settings: &ConnectSettings) -> String {
    format!(
        "the server does not accept TLS (sslmode={})",
        settings.tls.mode
    )
}

/// The rustls error in `error` or under it (tokio-rustls wraps it in an io::Error).
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = error.source();
    }
    None
}

/// The TLS connector, noting whether the server accepted TLS (for `prefer`'s retry rule).
#[derive(Clone)]
struct TrackTls {
    inner: MakeRustlsConnect,
    used: Arc<AtomicBool>,
}

impl<S> MakeTlsConnect<S> for TrackTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = TrackedConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(TrackedConnect {
            inner: <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
                &mut self.inner,
                hostname,
            )?,
            used: self.used.clone(),
        })
    }
}

struct TrackedConnect<T> {
    inner: T,
    used: Arc<AtomicBool>,
}

impl<S, T: TlsConnect<S>> TlsConnect<S> for TrackedConnect<T> {
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: S) -> Self::Future {
        // Called only once the server answered the SSLRequest with "S".
        self.used.store(true, Ordering::SeqCst);
        self.inner.connect(stream)
    }
}

fn sql_error(what: &str, e: tokio_postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    Error::Server(format!("{what}: {detail}"))
}

impl Session {
    pub async fn text(&self, what: &str, sql: &str) -> Result<String, Error> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| sql_error(what, e))?;
        // A query of another type is pitr's bug: an error, not a panic.
        row.try_get(0).map_err(|e| sql_error(what, e))
    }

    /// The server's entry in the version table; an unsupported server is an error.
    pub fn version(&self) -> Result<&'static PgVersion, Error> {
        PgVersion::of_server_version_num(self.server_version_num).ok_or_else(|| {
            Error::Server(crate::pg::version::unsupported_message(
                u32::try_from(self.server_version_num / 10000).unwrap_or(0),
            ))
        })
    }

    /// Starts a non-exclusive backup on this session; returns the start LSN.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn, Error> {
        let sql = self.version()?.backup_start_sql;
        let row = self
            .client
            .query_one(sql, &[&label, &fast])
            .await
            .map_err(|e| sql_error("starting the backup", e))?;
        let lsn: String = row.get(0);
        lsn.parse().map_err(|e| Error::Server(format!("{e}")))
    }

    /// Ends the backup begun on this session without waiting for its WAL to be archived
    /// (the caller waits, with a deadline: PostgreSQL's own wait has none); returns the stop
    /// LSN, backup_label and tablespace_map contents.
    pub async fn backup_stop(&self) -> Result<(Lsn, String, Option<String>), Error> {
        let sql = self.version()?.backup_stop_sql;
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| sql_error("stopping the backup", e))?;
        let lsn: String = row.get(0);
        let spcmap: Option<String> = row.get(2);
        Ok((
            lsn.parse().map_err(|e| Error::Server(format!("{e}")))?,
            row.get(1),
            spcmap.filter(|s| !s.is_empty()),
        ))
    }

    /// The databases by OID (`pg_database`), and the bootstrap superuser (OID 10).
    pub async fn databases(&self) -> Result<(Vec<(u32, String)>, String), Error> {
        let rows = self
            .client
            .query(
                "SELECT oid::int8, datname::text FROM pg_database ORDER BY oid",
                &[],
            )
            .await
            .map_err(|e| sql_error("listing the databases", e))?;
        let databases = rows
            .iter()
            .map(|row| (row.get::<_, i64>(0) as u32, row.get::<_, String>(1)))
            .collect();
        let superuser = self
            .text(
                "naming the bootstrap superuser",
                "SELECT rolname::text FROM pg_roles WHERE oid = 10",
            )
            .await?;
        Ok((databases, superuser))
    }

    /// Runs `sql` (one or more statements) with the simple protocol; the rows of the
    /// statements that return rows, every value as text (NULL as None).
    pub async fn simple_rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => db.message().to_owned(),
                None => e.to_string(),
            })?;
        Ok(messages
            .iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The archiver's statistics (`pg_stat_archiver`).
    pub async fn archiver_stats(&self) -> Result<ArchiverStats, Error> {
        let row = self
            .text(
                "reading pg_stat_archiver",
                "SELECT concat_ws('|', archived_count, failed_count, \
                 coalesce(last_archived_wal, ''), \
                 coalesce(extract(epoch from last_archived_time)::text, ''), \
                 coalesce(last_failed_wal, ''), \
                 coalesce(extract(epoch from last_failed_time)::text, '')) FROM pg_stat_archiver",
            )
            .await?;
        Ok(ArchiverStats::parse(&row))
    }

    /// The timeline a standby's backup stop point is on, or later: `pg_backup_stop` took its
    /// stop point from the control file's minimum recovery point, which only moves forward
    /// (`pg_walfile_name`, which would name it, is refused during recovery). After a
    /// promotion the minimum recovery point is cleared: then the last checkpoint's timeline.
    pub async fn recovery_timeline(&self) -> Result<u32, Error> {
        let text = self
            .text(
                "reading the recovery timeline",
                "SELECT greatest(r.min_recovery_end_timeline, c.timeline_id)::text \
                 FROM pg_control_recovery() r, pg_control_checkpoint() c",
            )
            .await?;
        text.parse()
            .ok()
            .filter(|&t: &u32| t > 0)
            .ok_or_else(|| Error::Server(format!("'{text}' is not a timeline")))
    }
}

/// `pg_stat_archiver`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    pub failed_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
}

impl ArchiverStats {
    /// `|`-separated fields, as [`Session::archiver_stats`] selects them.
    pub fn parse(row: &str) -> Self {
        let fields: Vec<&str> = row.split('|').collect();
        let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
        let time = |i: usize| {
            let seconds: f64 = field(i)?.parse().ok()?;
            DateTime::from_timestamp_micros((seconds * 1e6) as i64)
        };
        ArchiverStats {
            archived_count: field(0).and_then(|f| f.parse().ok()).unwrap_or(0),
            failed_count: field(1).and_then(|f| f.parse().ok()).unwrap_or(0),
            last_archived_wal: field(2).map(str::to_owned),
            last_archived_time: time(3),
            last_failed_wal: field(4).map(str::to_owned),
            last_failed_time: time(5),
        }
    }

    /// The last attempt failed: a failure after the last success (or no success at all).
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiver_stats_tell_a_failing_archiver() {
        let ok = ArchiverStats::parse("12|0|000000010000000000000005|1764979200.5||");
        assert_eq!(ok.archived_count, 12);
        assert_eq!(
            ok.last_archived_wal.as_deref(),
            Some("000000010000000000000005")
        );
        assert_eq!(
            ok.last_archived_time,
            DateTime::from_timestamp_micros(1_764_979_200_500_000)
        );
        assert!(!ok.failing());
        let failing = ArchiverStats::parse(
            "12|3|000000010000000000000005|1764979200|000000010000000000000006|1764979260",
        );
        assert!(failing.failing());
        assert_eq!(
            failing.last_failed_wal.as_deref(),
            Some("000000010000000000000006")
        );
        // Failed once, archived since: not failing.
        let recovered = ArchiverStats::parse(
            "13|3|000000010000000000000006|1764979300|000000010000000000000006|1764979260",
        );
        assert!(!recovered.failing());
        // Never archived anything, failed: failing.
        assert!(ArchiverStats::parse("0|1|||000000010000000000000001|1764979260").failing());
        assert_eq!(ArchiverStats::parse(""), ArchiverStats::default());
    }

    fn failure(server_refused: bool, tls_failed: bool, tls_used: bool) -> Failure {
        Failure {
            reason: String::new(),
            server_refused,
            tls_failed,
            tls_used,
        }
    }

    #[test]
    fn libpq_attempt_order_per_sslmode() {
        use Attempt::*;
        assert_eq!(attempts(SslMode::Prefer, false), &[TlsIfOffered, Plain]);
        assert_eq!(attempts(SslMode::Allow, false), &[Plain, TlsRequired]);
        assert_eq!(attempts(SslMode::Require, false), &[TlsRequired]);
        assert_eq!(attempts(SslMode::VerifyFull, false), &[TlsRequired]);
        assert_eq!(attempts(SslMode::Disable, false), &[Plain]);
        // No TLS over a unix socket, whatever the mode.
        assert_eq!(attempts(SslMode::VerifyFull, true), &[Plain]);
    }

    #[test]
    fn libpq_retry_rules() {
        // prefer: a failed handshake, or a refusal over TLS, retries without TLS.
        assert!(retry_after(
            Attempt::TlsIfOffered,
            &failure(false, true, true)
        ));
        assert!(retry_after(
            Attempt::TlsIfOffered,
            &failure(true, false, true)
        ));
        // ...but not a refusal of a plain connection the server chose, nor a network error.
        assert!(!retry_after(
            Attempt::TlsIfOffered,
            &failure(true, false, false)
        ));
        assert!(!retry_after(
            Attempt::TlsIfOffered,
            &failure(false, false, false)
        ));
        // allow: a refusal of the plain connection retries with TLS.
        assert!(retry_after(Attempt::Plain, &failure(true, false, false)));
        assert!(!retry_after(Attempt::Plain, &failure(false, false, false)));
        assert!(!retry_after(
            Attempt::TlsRequired,
            &failure(true, true, true)
        ));
    }
}
