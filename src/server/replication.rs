//! A replication connection: PostgreSQL's walsender protocol, which tokio-postgres cannot
//! open (its startup packet has no `replication` parameter). Messages are encoded and the
//! backend's parsed by postgres-protocol; the socket, TLS (rustls, with the SQL session's
//! configuration and libpq's sslmode attempts) and authentication (trust, password, MD5,
//! SCRAM-SHA-256 with channel binding over TLS) are here.
//!
//! The API stays at the level of the wire: result sets as text rows, and COPY streams as
//! raw CopyData payloads; what the payloads mean (XLogData, keepalives, BASE_BACKUP's
//! sub-messages) is for the pure decoders of `pg`.
//!
//! Memory is bounded: the connection reads only when asked for the next event (the caller's
//! pace is the server's), in chunks of [`READ_CHUNK`], and a message longer than
//! [`MAX_MESSAGE_LEN`] is an error, never an allocation of the length it claims.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::ChannelBinding as BindingPolicy;

use super::settings::{ConnectSettings, Target};
use super::{Attempt, Failure, PasswordOf};
use crate::error::Error;
use crate::pg::replication::{self, IdentifySystem, Row};

/// The longest backend message accepted. CopyData of BASE_BACKUP and of WAL streaming is at
/// most a few hundred kB, a timeline history file far less; a longer length is a broken or
/// hostile stream.
pub const MAX_MESSAGE_LEN: usize = 16 << 20;
/// How much is read from the socket at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// Which walsender: physical (`replication=true`: BASE_BACKUP, START_REPLICATION PHYSICAL)
/// or logical, connected to the settings' database (`replication=database`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMode {
    Physical,
    Database,
}

/// One result set: column names and rows, every value as text (NULL as `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// The value of `column` in row `row`; `None` for NULL or no such row or column.
    pub fn value(&self, row: usize, column: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(index)?.as_deref()
    }
}

/// What a command sends back, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    ResultSet(ResultSet),
    /// A COPY stream begins: CopyOut (`both: false`, BASE_BACKUP) or CopyBoth (`both: true`,
    /// START_REPLICATION, where the client sends CopyData too).
    CopyStart {
        both: bool,
    },
    /// One CopyData payload, as the server framed it.
    CopyData(Bytes),
    /// The server ended its side of the COPY stream.
    CopyDone,
    CommandComplete(String),
    /// The command is over; the connection takes the next one.
    Ready,
}

/// An ErrorResponse: PostgreSQL's words, with its SQLSTATE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.brief())?;
        if let Some(hint) = &self.hint {
            write!(f, " ({})", flat(hint))?;
        }
        write!(f, " (SQLSTATE {})", self.code)
    }
}

/// One line, whatever the server put in a field.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl ServerError {
    /// The message and its detail, on one line.
    pub fn brief(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {}", flat(&self.message), flat(detail)),
            None => flat(&self.message),
        }
    }

    fn of(fields: ErrorFields<'_>) -> Result<Self, ReplicationError> {
        let mut error = ServerError::default();
        let mut fields = fields;
        while let Some(field) = fields.next().map_err(protocol)? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => error.severity = value,
                b'S' if error.severity.is_empty() => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        Ok(error)
    }
}

/// What went wrong on an open replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The server refused the command (the connection takes the next one, unless the error
    /// was FATAL).
    #[error("{0}")]
    Server(Box<ServerError>),
    #[error(
        "PostgreSQL sent a message ('{tag}') of {len} bytes, more than the {MAX_MESSAGE_LEN} a \
         replication connection accepts"
    )]
    MessageTooLarge { tag: char, len: usize },
    #[error("replication protocol error: {0}")]
    Protocol(String),
    #[error("the replication connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the replication connection")]
    Closed,
    /// The caller asked for what the connection's state does not allow.
    #[error("replication connection: {0}")]
    Misuse(&'static str),
}

impl From<ReplicationError> for Error {
    fn from(error: ReplicationError) -> Self {
        Error::Server(error.to_string())
    }
}

fn protocol(error: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::Protocol(error.to_string())
}

/// The socket, plain or TLS.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Wire for T {}

/// A backend message: postgres-protocol's, or CopyBothResponse, which it does not parse.
enum Backend {
    Message(Message),
    CopyBothResponse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a command.
    Idle,
    /// A command runs; no COPY stream open.
    Running,
    CopyOut,
    CopyBoth,
    /// The stream is out of step (a protocol error, or a COPY abandoned): drop it.
    Broken,
}

/// An open replication connection. One command at a time: [`ReplicationConnection::start`]
/// then [`ReplicationConnection::next_event`] until `Ready` (or `None`), or
/// [`ReplicationConnection::simple_query`] for commands that answer with result sets only.
pub struct ReplicationConnection {
    stream: Box<dyn Wire>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The length of the message being read, once its header is in.
    wanted: usize,
    phase: Phase,
    /// A result set whose rows are still arriving.
    open_set: Option<ResultSet>,
    /// A message read to find the end of a result set, handled on the next call.
    held: Option<Backend>,
    /// The command's ErrorResponse, returned once the server is ready again.
    error: Option<ServerError>,
    client_copy_done: bool,
    server_copy_done: bool,
    parameters: HashMap<String, String>,
    /// SCRAM authentication bound to the TLS channel (SCRAM-SHA-256-PLUS).
    channel_bound: bool,
    /// The server is on this host (a Unix socket, a loopback address, or one of ours).
    server_on_this_host: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("phase", &self.phase)
            .field("server_version", &self.parameter("server_version"))
            .field("channel_bound", &self.channel_bound)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects to the first server of `settings` that accepts a replication connection,
    /// with libpq's rules (hosts in turn, sslmode attempts, password file, connect_timeout);
    /// the error is one line naming what to change, never the password.
    pub async fn connect(settings: &ConnectSettings, mode: ReplicationMode) -> Result<Self, Error> {
        let tls = super::tls_config(settings)?
            .map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)));
        let policy = binding_policy(settings);
        // A physical replication connection's password-file line is the one for the
        // database `replication`, as for pg_basebackup (which connects with that dbname).
        let passfile_dbname = match mode {
            ReplicationMode::Physical => "replication",
            ReplicationMode::Database => settings.dbname.as_str(),
        };
        super::connect_first(
            settings,
            passfile_dbname,
            async |target, attempt, password| {
                let once = Opening {
                    settings,
                    target,
                    attempt,
                    password,
                    tls: tls.as_ref(),
                    mode,
                    policy,
                };
                match settings.connect_timeout {
                    Some(limit) => tokio::time::timeout(limit, once.open())
                        .await
                        .unwrap_or_else(|_| {
                            Err(Failure::local(format!(
                                "timeout expired after {} s (connect_timeout)",
                                limit.as_secs()
                            )))
                        }),
                    None => once.open().await,
                }
            },
        )
        .await
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`…).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's version as `server_version_num` counts it (150004 for 15.4), from the
    /// `server_version` it reported.
    pub fn server_version_num(&self) -> Option<u32> {
        let version = self.parameter("server_version")?;
        let numeric: String = version
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        major.checked_mul(10000)?.checked_add(minor)
    }

    /// The server's major version (`server_version_num / 10000`).
    pub fn server_major(&self) -> Result<u32, Error> {
        self.server_version_num()
            .map(|v| v / 10000)
            .ok_or_else(|| Error::Server("the server did not report its version".into()))
    }

    /// `IDENTIFY_SYSTEM`: the system identifier, timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, Error> {
        let rows = self.query_rows(&replication::identify_system()).await?;
        replication::parse_identify_system(&rows).map_err(|e| Error::Server(e.to_string()))
    }

    /// The rows of the first result set `sql` answers with (IDENTIFY_SYSTEM, SHOW,
    /// TIMELINE_HISTORY…); none when it answers with none.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Row>, ReplicationError> {
        let sets = self.simple_query(sql).await?;
        Ok(sets
            .into_iter()
            .next()
            .map(|set| set.rows)
            .unwrap_or_default())
    }

    /// Whether SCRAM authentication was bound to the TLS channel (`tls-server-end-point`).
    pub fn channel_bound(&self) -> bool {
        self.channel_bound
    }

    /// Runs `sql` (IDENTIFY_SYSTEM, TIMELINE_HISTORY, CREATE_/DROP_REPLICATION_SLOT…); its
    /// result sets. A command that opens a COPY stream is an error here, and leaves the
    /// connection unusable: use [`ReplicationConnection::start`] for those.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<ResultSet>, ReplicationError> {
        self.start(sql).await?;
        let mut sets = Vec::new();
        while let Some(event) = self.next_event().await? {
            match event {
                ReplicationEvent::ResultSet(set) => sets.push(set),
                ReplicationEvent::CopyStart { .. } => {
                    self.phase = Phase::Broken;
                    return Err(ReplicationError::Misuse(
                        "the command opened a COPY stream; run it with start()",
                    ));
                }
                ReplicationEvent::Ready => break,
                _ => {}
            }
        }
        Ok(sets)
    }

    /// Sends `sql` as a simple query; its answer comes from
    /// [`ReplicationConnection::next_event`].
    pub async fn start(&mut self, sql: &str) -> Result<(), ReplicationError> {
        match self.phase {
            Phase::Idle => {}
            Phase::Broken => return Err(ReplicationError::Misuse("the connection is broken")),
            _ => return Err(ReplicationError::Misuse("a command is still running")),
        }
        frontend::query(sql, &mut self.write_buf).map_err(protocol)?;
        self.phase = Phase::Running;
        self.error = None;
        self.client_copy_done = false;
        self.server_copy_done = false;
        self.send().await
    }

    /// The next thing the running command sent; `None` once it is over (after `Ready`). An
    /// ErrorResponse is returned as [`ReplicationError::Server`] once the server is ready
    /// again, so the connection takes the next command. Reads from the socket only when no
    /// whole message is buffered. Cancel-safe: dropping the future loses nothing.
    pub async fn next_event(&mut self) -> Result<Option<ReplicationEvent>, ReplicationError> {
        loop {
            match self.phase {
                Phase::Idle => return Ok(None),
                Phase::Broken => return Err(ReplicationError::Misuse("the connection is broken")),
                _ => {}
            }
            let message = match self.held.take() {
                Some(message) => message,
                None => match self.read_message().await {
                    Ok(message) => message,
                    Err(e) => {
                        self.phase = Phase::Broken;
                        // A FATAL error closes the connection: say why, not that it closed.
                        return Err(match self.error.take() {
                            Some(server) => ReplicationError::Server(Box::new(server)),
                            None => e,
                        });
                    }
                },
            };
            let message = match message {
                Backend::Message(message) => message,
                Backend::CopyBothResponse if self.open_set.is_some() => {
                    self.held = Some(Backend::CopyBothResponse);
                    return Ok(self.open_set.take().map(ReplicationEvent::ResultSet));
                }
                Backend::CopyBothResponse => {
                    self.phase = Phase::CopyBoth;
                    return Ok(Some(ReplicationEvent::CopyStart { both: true }));
                }
            };
            // A result set ends at the first message that is not one of its rows (BASE_BACKUP
            // sends some without a CommandComplete).
            if self.open_set.is_some()
                && !matches!(
                    message,
                    Message::DataRow(_) | Message::NoticeResponse(_) | Message::ParameterStatus(_)
                )
            {
                self.held = Some(Backend::Message(message));
                return Ok(self.open_set.take().map(ReplicationEvent::ResultSet));
            }
            match message {
                Message::RowDescription(body) => {
                    let mut columns = Vec::new();
                    let mut fields = body.fields();
                    while let Some(field) = fields.next().map_err(|e| self.broken(e))? {
                        columns.push(field.name().to_owned());
                    }
                    self.open_set = Some(ResultSet {
                        columns,
                        rows: Vec::new(),
                    });
                }
                Message::DataRow(body) => {
                    let row = row_values(&body).map_err(|e| self.broken(e))?;
                    if self.open_set.is_none() {
                        return Err(self.broken("a data row without its description"));
                    }
                    if let Some(set) = &mut self.open_set {
                        set.rows.push(row);
                    }
                }
                Message::CommandComplete(body) => {
                    let tag = body.tag().map_err(|e| self.broken(e))?.to_owned();
                    return Ok(Some(ReplicationEvent::CommandComplete(tag)));
                }
                Message::EmptyQueryResponse | Message::NotificationResponse(_) => {}
                Message::CopyOutResponse(_) => {
                    self.phase = Phase::CopyOut;
                    return Ok(Some(ReplicationEvent::CopyStart { both: false }));
                }
                Message::CopyInResponse(_) => {
                    // No replication command reads COPY data: refuse, and the server errors.
                    frontend::copy_fail("pitr sends no COPY data", &mut self.write_buf)
                        .map_err(protocol)?;
                    self.send().await?;
                }
                Message::CopyData(body) => {
                    if !matches!(self.phase, Phase::CopyOut | Phase::CopyBoth) {
                        return Err(self.broken("CopyData outside a COPY stream"));
                    }
                    return Ok(Some(ReplicationEvent::CopyData(body.into_bytes())));
                }
                Message::CopyDone => {
                    match self.phase {
                        Phase::CopyOut => self.phase = Phase::Running,
                        Phase::CopyBoth if self.client_copy_done => self.phase = Phase::Running,
                        // The client may still send CopyData, then its own CopyDone.
                        Phase::CopyBoth => self.server_copy_done = true,
                        _ => return Err(self.broken("CopyDone outside a COPY stream")),
                    }
                    return Ok(Some(ReplicationEvent::CopyDone));
                }
                Message::ErrorResponse(body) => {
                    let error = ServerError::of(body.fields()).map_err(|e| self.broken(e))?;
                    // An error ends any COPY stream; ReadyForQuery follows (unless FATAL).
                    self.phase = Phase::Running;
                    self.error = Some(error);
                }
                Message::NoticeResponse(body) => log_notice(&body),
                Message::ParameterStatus(body) => self.note_parameter(&body),
                Message::ReadyForQuery(_) => {
                    self.phase = Phase::Idle;
                    return match self.error.take() {
                        Some(error) => Err(ReplicationError::Server(Box::new(error))),
                        None => Ok(Some(ReplicationEvent::Ready)),
                    };
                }
                _ => return Err(self.broken("an unexpected message")),
            }
        }
    }

    /// Sends one CopyData message on a CopyBoth stream (a standby status update).
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ReplicationError> {
        if self.phase != Phase::CopyBoth || self.client_copy_done {
            return Err(ReplicationError::Misuse(
                "CopyData can be sent only on an open CopyBoth stream",
            ));
        }
        frontend::CopyData::new(payload)
            .map_err(protocol)?
            .write(&mut self.write_buf);
        self.send().await
    }

    /// Ends the client's side of a CopyBoth stream (stops START_REPLICATION); the server
    /// answers with its CopyDone, then the command's end. Also the answer owed when the
    /// server ended the stream first.
    pub async fn send_copy_done(&mut self) -> Result<(), ReplicationError> {
        if self.phase != Phase::CopyBoth || self.client_copy_done {
            return Err(ReplicationError::Misuse(
                "CopyDone can be sent only on an open CopyBoth stream",
            ));
        }
        frontend::copy_done(&mut self.write_buf);
        self.client_copy_done = true;
        if self.server_copy_done {
            self.phase = Phase::Running;
        }
        self.send().await
    }

    /// Ends the session politely (Terminate); dropping the connection closes it too.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.write_buf);
        self.send().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    /// A connection on `stream`, in the start-up (running) phase.
    fn over(stream: Box<dyn Wire>) -> Self {
        ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            wanted: 0,
            phase: Phase::Running,
            open_set: None,
            held: None,
            error: None,
            client_copy_done: false,
            server_copy_done: false,
            parameters: HashMap::new(),
            channel_bound: false,
            server_on_this_host: false,
        }
    }

    /// Whether the server runs on this host: its bytes then cross no network.
    pub fn server_on_this_host(&self) -> bool {
        self.server_on_this_host
    }

    fn broken(&mut self, error: impl std::fmt::Display) -> ReplicationError {
        self.phase = Phase::Broken;
        protocol(error)
    }

    fn note_parameter(&mut self, body: &postgres_protocol::message::backend::ParameterStatusBody) {
        if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
            self.parameters.insert(name.to_owned(), value.to_owned());
        }
    }

    async fn send(&mut self) -> Result<(), ReplicationError> {
        let result = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        }
        .await;
        self.write_buf.clear();
        result.map_err(|e| {
            self.phase = Phase::Broken;
            ReplicationError::Io(e)
        })
    }

    /// The next whole message, reading as little as needed.
    async fn read_message(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            // Room for the rest of the message, or a chunk; never more than the cap.
            let missing = self.wanted.saturating_sub(self.read_buf.len());
            self.read_buf.reserve(missing.max(READ_CHUNK));
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<Backend>, ReplicationError> {
        let Some(header) = Header::parse(&self.read_buf).map_err(protocol)? else {
            self.wanted = 5;
            return Ok(None);
        };
        // Header::parse refuses a length under 4.
        let len = usize::try_from(header.len()).map_err(protocol)?;
        if len > MAX_MESSAGE_LEN {
            return Err(ReplicationError::MessageTooLarge {
                tag: char::from(header.tag()),
                len,
            });
        }
        let total = len + 1;
        if self.read_buf.len() < total {
            self.wanted = total;
            return Ok(None);
        }
        self.wanted = 0;
        if header.tag() == b'W' {
            // CopyBothResponse: its format and column formats say nothing a replication
            // client uses (always binary, no columns).
            bytes::Buf::advance(&mut self.read_buf, total);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match Message::parse(&mut self.read_buf).map_err(protocol)? {
            Some(message) => Ok(Some(Backend::Message(message))),
            None => Err(protocol("a whole message did not parse")),
        }
    }
}

/// A DataRow's values as text (lossy: walsender sends some bytea columns raw, such as
/// TIMELINE_HISTORY's content, which is text).
fn row_values(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>, std::io::Error> {
    let buffer = body.buffer();
    let mut values = Vec::new();
    let mut ranges = body.ranges();
    while let Some(range) = ranges.next()? {
        values.push(
            range.map(|r| String::from_utf8_lossy(buffer.get(r).unwrap_or_default()).into_owned()),
        );
    }
    Ok(values)
}

fn log_notice(body: &postgres_protocol::message::backend::NoticeResponseBody) {
    match ServerError::of(body.fields()) {
        Ok(notice) => tracing::info!("PostgreSQL {}: {notice}", notice.severity),
        Err(e) => tracing::info!("PostgreSQL sent a notice that does not parse: {e}"),
    }
}

/// libpq's `channel_binding` (prefer when not set), as tokio-postgres parsed it.
fn binding_policy(settings: &ConnectSettings) -> BindingPolicy {
    settings
        .handed_on
        .join(" ")
        .parse::<tokio_postgres::Config>()
        .map(|config| config.get_channel_binding())
        .unwrap_or(BindingPolicy::Prefer)
}

/// One attempt at one server.
struct Opening<'a> {
    settings: &'a ConnectSettings,
    target: &'a Target,
    attempt: Attempt,
    password: Option<&'a PasswordOf>,
    tls: Option<&'a tokio_rustls::TlsConnector>,
    mode: ReplicationMode,
    policy: BindingPolicy,
}

/// What an attempt learnt on the way, for its error message.
#[derive(Default)]
struct Trail {
    tls_used: bool,
    /// Our address as the server sees it (TCP), for the pg_hba.conf line to add.
    local: Option<SocketAddr>,
    /// A Unix socket, or TCP to a loopback address or to one of this host's.
    same_host: bool,
}

impl Opening<'_> {
    async fn open(&self) -> Result<ReplicationConnection, Failure> {
        let mut trail = Trail::default();
        let (stream, binding) = self.socket(&mut trail).await?;
        let mut connection = ReplicationConnection::over(stream);
        connection.server_on_this_host = trail.same_host;
        match self.startup(&mut connection, binding).await {
            Ok(()) => {
                connection.phase = Phase::Idle;
                Ok(connection)
            }
            Err(Refusal::Server(error)) => Err(Failure::refused(
                self.explain(&error, &trail),
                trail.tls_used,
            )),
            Err(Refusal::Other(reason)) => Err(Failure {
                reason,
                server_refused: false,
                tls_failed: false,
                tls_used: trail.tls_used,
            }),
        }
    }

    /// The socket, TLS negotiated as the attempt says; the channel-binding data of TLS.
    async fn socket(&self, trail: &mut Trail) -> Result<(Box<dyn Wire>, Option<Vec<u8>>), Failure> {
        let target = self.target;
        if target.is_socket() {
            let path = format!("{}/.s.PGSQL.{}", target.host, target.port);
            let stream = UnixStream::connect(&path).await.map_err(|e| {
                Failure::local(format!(
                    "connection to server on socket \"{path}\" failed: {e}"
                ))
            })?;
            trail.same_host = true;
            return Ok((Box::new(stream), None));
        }
        let mut tcp = self.tcp().await?;
        trail.local = tcp.local_addr().ok();
        trail.same_host = tcp.peer_addr().is_ok_and(|peer| {
            peer.ip().is_loopback() || trail.local.is_some_and(|ours| ours.ip() == peer.ip())
        });
        let connector = match (self.attempt, self.tls) {
            (Attempt::Plain, _) | (_, None) => return Ok((Box::new(tcp), None)),
            (_, Some(connector)) => connector,
        };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        let mut answer = [0u8; 1];
        let exchanged = async {
            tcp.write_all(&request).await?;
            tcp.read_exact(&mut answer).await
        }
        .await;
        if let Err(e) = exchanged {
            return Err(Failure::local(format!("TLS request failed: {e}")));
        }
        match answer[0] {
            b'S' => {}
            b'N' if self.attempt == Attempt::TlsIfOffered => return Ok((Box::new(tcp), None)),
            b'N' => return Err(Failure::local(super::no_tls_reason(self.settings))),
            other => {
                return Err(Failure::local(format!(
                    "the server answered the TLS request with {:?}",
                    char::from(other)
                )));
            }
        }
        trail.tls_used = true;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
            Failure::local(format!(
                "\"{}\" is not a host name for TLS: {e}",
                target.host
            ))
        })?;
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            let reason = match super::rustls_error(&e) {
                Some(tls) => super::tls::describe(tls, &self.settings.tls, &target.host),
                None => format!("TLS handshake failed: {e}"),
            };
            Failure {
                reason,
                server_refused: false,
                tls_failed: true,
                tls_used: true,
            }
        })?;
        let binding = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certificates| certificates.first())
            .and_then(|certificate| tls_server_end_point(certificate.as_ref()));
        Ok((Box::new(stream), binding))
    }

    /// TCP to `hostaddr`, or to each address the host name resolves to in turn.
    async fn tcp(&self) -> Result<TcpStream, Failure> {
        let target = self.target;
        let addresses: Vec<SocketAddr> = match target.hostaddr {
            Some(address) => vec![SocketAddr::new(address, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| {
                    Failure::local(format!(
                        "could not translate host name \"{}\" to address: {e}",
                        target.host
                    ))
                })?
                .collect(),
        };
        let mut reasons = Vec::new();
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    // Small messages (status updates) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => reasons.push(format!(
                    "connection to server at \"{}\" ({}), port {} failed: {e}",
                    target.host,
                    address.ip(),
                    target.port
                )),
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("host name \"{}\" has no address", target.host));
        }
        Err(Failure::local(reasons.join("; ")))
    }

    /// The startup packet, authentication, and the server's parameters up to ReadyForQuery.
    async fn startup(
        &self,
        connection: &mut ReplicationConnection,
        binding: Option<Vec<u8>>,
    ) -> Result<(), Refusal> {
        let settings = self.settings;
        let mut parameters: Vec<(&str, &str)> = vec![
            ("user", settings.user.as_str()),
            ("application_name", settings.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        match self.mode {
            // A physical walsender connects to no database.
            ReplicationMode::Physical => parameters.push(("replication", "true")),
            ReplicationMode::Database => {
                parameters.push(("replication", "database"));
                parameters.push(("database", settings.dbname.as_str()));
            }
        }
        if let Some(options) = &settings.options {
            parameters.push(("options", options.as_str()));
        }
        frontend::startup_message(parameters, &mut connection.write_buf).map_err(other)?;
        connection.send().await.map_err(other)?;
        self.authenticate(connection, binding).await?;
        loop {
            match read(connection).await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(body) => connection.note_parameter(&body),
                Message::BackendKeyData(_) => {}
                Message::NoticeResponse(body) => log_notice(&body),
                _ => {
                    return Err(Refusal::Other(
                        "unexpected message after authentication".into(),
                    ));
                }
            }
        }
    }

    async fn authenticate(
        &self,
        connection: &mut ReplicationConnection,
        binding: Option<Vec<u8>>,
    ) -> Result<(), Refusal> {
        let user = self.settings.user.as_bytes();
        let mut scram: Option<ScramSha256> = None;
        loop {
            match read(connection).await? {
                Message::AuthenticationOk => break,
                Message::AuthenticationCleartextPassword => {
                    let password = self.password()?;
                    frontend::password_message(password, &mut connection.write_buf)
                        .map_err(other)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = self.password()?;
                    let hashed =
                        postgres_protocol::authentication::md5_hash(user, password, body.salt());
                    frontend::password_message(hashed.as_bytes(), &mut connection.write_buf)
                        .map_err(other)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(mechanism) = mechanisms.next().map_err(other)? {
                        offered.push(mechanism.to_owned());
                    }
                    let (mechanism, channel) = self.choose_sasl(&offered, binding.as_deref())?;
                    connection.channel_bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                    let exchange = ScramSha256::new(self.password()?, channel);
                    frontend::sasl_initial_response(
                        mechanism,
                        exchange.message(),
                        &mut connection.write_buf,
                    )
                    .map_err(other)?;
                    scram = Some(exchange);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let exchange = scram.as_mut().ok_or_else(|| out_of_order("SASL"))?;
                    exchange.update(body.data()).map_err(other)?;
                    frontend::sasl_response(exchange.message(), &mut connection.write_buf)
                        .map_err(other)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    // Checks the server's signature: it knew the password too.
                    let exchange = scram.as_mut().ok_or_else(|| out_of_order("SASL"))?;
                    exchange.finish(body.data()).map_err(other)?;
                    continue;
                }
                Message::NoticeResponse(body) => {
                    log_notice(&body);
                    continue;
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_) => {
                    return Err(Refusal::Other(
                        "the server asks for an authentication method pitr does not support \
                         (GSSAPI, SSPI, Kerberos): use scram-sha-256, md5, password, cert or \
                         trust for this connection in pg_hba.conf"
                            .into(),
                    ));
                }
                _ => return Err(out_of_order("authentication")),
            }
            connection.send().await.map_err(other)?;
        }
        if self.policy == BindingPolicy::Require && !connection.channel_bound {
            return Err(Refusal::Other(
                "channel_binding=require, but the server authenticated the client without \
                 channel binding"
                    .into(),
            ));
        }
        Ok(())
    }

    /// SCRAM-SHA-256-PLUS when TLS gave binding data and the server offers it; otherwise
    /// SCRAM-SHA-256, telling the server whether the client could have bound ("y") or not
    /// ("n"), so that a stripped PLUS offer is detected.
    fn choose_sasl(
        &self,
        offered: &[String],
        binding: Option<&[u8]>,
    ) -> Result<(&'static str, sasl::ChannelBinding), Refusal> {
        let offers = |name: &str| offered.iter().any(|m| m == name);
        let binding = binding.filter(|_| self.policy != BindingPolicy::Disable);
        match binding {
            Some(data) if offers(sasl::SCRAM_SHA_256_PLUS) => Ok((
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(data.to_vec()),
            )),
            _ if self.policy == BindingPolicy::Require => Err(Refusal::Other(
                "channel_binding=require, but the server offers no channel binding \
                 (SCRAM-SHA-256-PLUS over TLS)"
                    .into(),
            )),
            Some(_) if offers(sasl::SCRAM_SHA_256) => {
                Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()))
            }
            None if offers(sasl::SCRAM_SHA_256) => {
                Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()))
            }
            _ => Err(Refusal::Other(format!(
                "the server offers no SASL mechanism pitr supports ({})",
                offered.join(", ")
            ))),
        }
    }

    fn password(&self) -> Result<&[u8], Refusal> {
        match self.password {
            Some((password, _)) => Ok(password.0.as_bytes()),
            None => Err(Refusal::Other(super::no_password_reason(self.settings))),
        }
    }

    /// The server's refusal, with what to change.
    fn explain(&self, error: &ServerError, trail: &Trail) -> String {
        let user = &self.settings.user;
        let message = error.brief();
        match error.code.as_str() {
            "28P01" => format!("{message}{}", super::password_hint(self.password)),
            "28000" if message.contains("pg_hba.conf") => {
                let database = match self.mode {
                    ReplicationMode::Physical => "replication",
                    ReplicationMode::Database => self.settings.dbname.as_str(),
                };
                let line = match (self.target.is_socket(), trail.local) {
                    (true, _) | (false, None) => {
                        format!("local {database} {user} scram-sha-256")
                    }
                    (false, Some(local)) => {
                        let bits = if local.is_ipv4() { 32 } else { 128 };
                        let kind = if trail.tls_used { "hostssl" } else { "host" };
                        format!(
                            "{kind} {database} {user} {}/{bits} scram-sha-256",
                            local.ip()
                        )
                    }
                };
                format!(
                    "{message}: add a line \"{line}\" (with your authentication method) to \
                     pg_hba.conf and reload the server"
                )
            }
            "42501" => format!(
                "{message}: grant REPLICATION to {user}: ALTER ROLE {} REPLICATION",
                quote_identifier(user)
            ),
            "53300" if message.contains("max_wal_senders") => format!(
                "{message}: raise max_wal_senders in postgresql.conf (it takes a server \
                 restart), or end other replication connections"
            ),
            _ => message,
        }
    }
}

/// Why the start-up failed: the server said no, or something else.
enum Refusal {
    Server(ServerError),
    Other(String),
}

fn other(error: impl std::fmt::Display) -> Refusal {
    Refusal::Other(error.to_string())
}

fn out_of_order(during: &str) -> Refusal {
    Refusal::Other(format!("unexpected message during {during}"))
}

/// The next message of the start-up; an ErrorResponse as the server's refusal.
async fn read(connection: &mut ReplicationConnection) -> Result<Message, Refusal> {
    match connection.read_message().await.map_err(other)? {
        Backend::Message(Message::ErrorResponse(body)) => Err(Refusal::Server(
            ServerError::of(body.fields()).map_err(other)?,
        )),
        Backend::Message(message) => Ok(message),
        Backend::CopyBothResponse => Err(out_of_order("start-up")),
    }
}

/// `tls-server-end-point` (RFC 5929): the hash of the server's certificate with the hash of
/// its signature algorithm, SHA-256 for MD5 and SHA-1; `None` for algorithms without one
/// (Ed25519), where SCRAM goes unbound.
fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912;
    let parsed = x509_cert::Certificate::from_der(certificate).ok()?;
    let algorithm = parsed.signature_algorithm.oid;
    if [
        rfc5912::MD_5_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_256,
        rfc5912::DSA_WITH_SHA_1,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha256::digest(certificate).to_vec())
    } else if [
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_384,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha384::digest(certificate).to_vec())
    } else if [
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_512,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha512::digest(certificate).to_vec())
    } else {
        None
    }
}

/// `name` as an SQL identifier: bare when PostgreSQL would keep it as it is.
fn quote_identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffered connection over one end of a socket pair: the other end plays the server.
    fn pair() -> (ReplicationConnection, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        (ReplicationConnection::over(Box::new(ours)), theirs)
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn a_length_past_the_cap_is_an_error_not_an_allocation() {
        let (mut connection, mut server) = pair();
        let mut header = vec![b'd'];
        header.extend_from_slice(&(u32::MAX / 2).to_be_bytes());
        server.write_all(&header).await.unwrap();
        let error = connection.next_event().await.unwrap_err();
        assert!(
            matches!(error, ReplicationError::MessageTooLarge { tag: 'd', .. }),
            "{error}"
        );
        assert!(connection.read_buf.capacity() < 1 << 20);
        // The connection is out of step from then on.
        assert!(matches!(
            connection.next_event().await,
            Err(ReplicationError::Misuse(_))
        ));
    }

    #[tokio::test]
    async fn result_sets_copy_streams_and_errors_in_order() {
        let (mut connection, mut server) = pair();
        let mut stream = Vec::new();
        // A result set with one column, ended by a CopyOutResponse (no CommandComplete),
        // one CopyData, CopyDone, a CopyBothResponse, an error, then ready.
        let mut description = 1u16.to_be_bytes().to_vec();
        description.extend_from_slice(b"recptr\0");
        description.extend_from_slice(&[0; 18]);
        stream.extend(message(b'T', &description));
        let mut row = 1u16.to_be_bytes().to_vec();
        row.extend_from_slice(&3u32.to_be_bytes());
        row.extend_from_slice(b"0/2");
        stream.extend(message(b'D', &row));
        stream.extend(message(b'H', &[0, 0, 0]));
        stream.extend(message(b'd', b"nabc"));
        stream.extend(message(b'c', b""));
        stream.extend(message(b'W', &[0, 0, 0]));
        stream.extend(message(
            b'E',
            b"SERROR\0VERROR\0C58P01\0Mno such file\0Dthe detail\0\0",
        ));
        stream.extend(message(b'Z', b"I"));
        server.write_all(&stream).await.unwrap();
        let set = ResultSet {
            columns: vec!["recptr".into()],
            rows: vec![vec![Some("0/2".into())]],
        };
        assert_eq!(set.value(0, "recptr"), Some("0/2"));
        let event = connection.next_event().await.unwrap();
        assert_eq!(event, Some(ReplicationEvent::ResultSet(set)));
        assert_eq!(
            connection.next_event().await.unwrap(),
            Some(ReplicationEvent::CopyStart { both: false })
        );
        assert_eq!(
            connection.next_event().await.unwrap(),
            Some(ReplicationEvent::CopyData(Bytes::from_static(b"nabc")))
        );
        assert_eq!(
            connection.next_event().await.unwrap(),
            Some(ReplicationEvent::CopyDone)
        );
        assert_eq!(
            connection.next_event().await.unwrap(),
            Some(ReplicationEvent::CopyStart { both: true })
        );
        match connection.next_event().await {
            Err(ReplicationError::Server(error)) => {
                assert_eq!(error.code, "58P01");
                assert_eq!(
                    error.to_string(),
                    "no such file: the detail (SQLSTATE 58P01)"
                );
            }
            other => panic!("{other:?}"),
        }
        // Ready for the next command.
        assert_eq!(connection.next_event().await.unwrap(), None);
        assert_eq!(connection.phase, Phase::Idle);
    }

    #[test]
    fn role_names_are_quoted_as_sql_needs() {
        assert_eq!(quote_identifier("backup_1"), "backup_1");
        assert_eq!(quote_identifier("Backup"), "\"Backup\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier("1abc"), "\"1abc\"");
    }

    #[tokio::test]
    async fn server_versions_from_the_reported_parameter() {
        let (mut connection, _server) = pair();
        for (reported, number) in [
            ("15.4 (Debian 15.4-1.pgdg120+1)", Some(150004)),
            ("13.2", Some(130002)),
            ("18beta1", Some(180000)),
            ("devel", None),
        ] {
            connection
                .parameters
                .insert("server_version".into(), reported.into());
            assert_eq!(connection.server_version_num(), number, "{reported}");
        }
    }

    proptest::proptest! {
        /// Whatever a server (or what stands in for one) sends, the connection answers with
        /// events or an error, never a panic, and stops at the end of the stream.
        #[test]
        fn any_bytes_give_events_or_an_error(
            stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            valid_prefix in proptest::prelude::any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (mut connection, mut server) = pair();
                let mut bytes = Vec::new();
                if valid_prefix {
                    // Past a result set's description, so that rows and COPY are reached.
                    let mut description = vec![0, 1, b'a', 0];
                    description.extend([0; 18]);
                    bytes.extend(message(b'T', &description));
                }
                bytes.extend_from_slice(&stream);
                server.write_all(&bytes).await.unwrap();
                drop(server);
                for _ in 0..=bytes.len() {
                    match connection.next_event().await {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            });
        }
    }
}
