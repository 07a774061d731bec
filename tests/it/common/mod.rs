//! Test harness: real PostgreSQL clusters and a real S3-compatible server.
//!
//! Every test gets its own directory under /tmp (readable by the `postgres` user, which runs
//! PostgreSQL and the pitr binary when the tests run as root), its own unix-socket directory
//! and its own S3 port; everything started is stopped on drop, also when a test fails.
#![allow(dead_code)]

pub mod kms_server;
pub mod latency_proxy;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latency_proxy::LatencyProxy;
use pitr::storage::{RepoLocation, S3Options, Storage};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether every PostgreSQL version must be tested (scripts/test.sh and CI set
/// PITR_TEST_ALL_VERSIONS=1): then a missing server fails its test instead of skipping it.
pub fn all_versions_required() -> bool {
    std::env::var_os("PITR_TEST_ALL_VERSIONS").is_some_and(|v| !v.is_empty() && v != "0")
        || std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The server binaries (initdb, pg_ctl, postgres) of PostgreSQL `major`: the system's 15 at
/// [`PG_BIN`], the others from PITR_TEST_PG<major>_BIN (scripts/pg_versions.sh installs them
/// and prints the settings). None, with the reason printed, when the variable is unset
/// outside CI; a missing server fails the test in CI (see [`all_versions_required`]).
pub fn pg_bin_of(major: u32) -> Option<PathBuf> {
    let var = format!("PITR_TEST_PG{major}_BIN");
    let dir = match std::env::var_os(&var) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if major == 15 => PathBuf::from(PG_BIN),
        _ => {
            let how = format!(
                "{var} is unset: install the servers with `eval \"$(bash scripts/pg_versions.sh)\"` \
                 (scripts/test.sh does this) or name a PostgreSQL {major} bin directory in {var}"
            );
            assert!(!all_versions_required(), "PostgreSQL {major}: {how}");
            eprintln!("skipped: PostgreSQL {major} not tested: {how}");
            return None;
        }
    };
    assert!(
        dir.join("postgres").is_file() && dir.join("initdb").is_file(),
        "{var}={}: no initdb and postgres there; run scripts/pg_versions.sh",
        dir.display()
    );
    Some(dir)
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` user when we are root, else as ourselves.
pub fn as_postgres(program: impl AsRef<Path>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program.as_ref());
        cmd
    } else {
        Command::new(program.as_ref())
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gives `path` to the user that runs PostgreSQL (when the tests run as root).
pub fn chown_to_postgres(path: &Path) {
    if is_root() {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
        );
    }
}

/// A private directory under /tmp, removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pitr-test-{name}-"))
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_postgres(dir.path());
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new subdirectory owned by the user that runs PostgreSQL.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        chown_to_postgres(&path);
        path
    }

    /// Writes a file readable and writable by the postgres user.
    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, content).unwrap();
        chown_to_postgres(&path);
        path
    }
}

/// The pitr binary, copied where the postgres user can run it.
pub struct Pitr {
    pub bin: PathBuf,
    pub repo: String,
    pub env: Vec<(String, String)>,
}

/// The suite runs on encrypted repositories when PITR_TEST_ENCRYPT is set (scripts/test.sh
/// runs the archive, backup, restore and verify tests both ways): `pitr init` then gets
/// `--encrypt`, and every pitr command a passphrase file.
pub fn encrypting() -> bool {
    std::env::var_os("PITR_TEST_ENCRYPT").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The passphrase of encrypted test repositories: recognisable, so that tests can look
/// for it where it must never appear.
pub const TEST_PASSPHRASE: &str = "pitr-test-passphrase-7Yq2";

impl Pitr {
    pub fn install(dir: &TestDir, repo: &Repo) -> Self {
        let bin = dir.path().join("pitr");
        // A link, not a copy, where the filesystem allows: a copy holds the file open for
        // writing, and a child another test thread forks meanwhile inherits that descriptor
        // until it execs, so running the copy can fail with ETXTBSY ("Text file busy"). A
        // second install in the same directory keeps the first (never a write through the
        // link into the built binary).
        if !bin.exists() && std::fs::hard_link(env!("CARGO_BIN_EXE_pitr"), &bin).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_pitr"), &bin).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut env = repo.env.clone();
        if encrypting() {
            let passphrase = dir.write("passphrase", TEST_PASSPHRASE);
            chown_to_postgres(&passphrase);
            std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
            env.push((
                "PITR_PASSPHRASE_FILE".into(),
                passphrase.display().to_string(),
            ));
        }
        Pitr {
            bin,
            repo: repo.url.clone(),
            env,
        }
    }

    /// The repository key settings in `env` (the passphrase file of an encrypted suite), for
    /// tests that clear the environment.
    pub fn key_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter(|(k, _)| k.starts_with("PITR_PASSPHRASE"))
            .cloned()
            .collect()
    }

    /// `args` with `--encrypt` after `init` when the suite runs encrypted.
    fn with_encrypt<I, S>(args: I) -> Vec<std::ffi::OsString>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        if encrypting() && args.first().is_some_and(|a| a == "init") {
            args.insert(1, "--encrypt".into());
        }
        args
    }

    /// `pitr --repo URL ARGS…` as the postgres user.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = as_postgres(&self.bin);
        cmd.arg("--repo")
            .arg(&self.repo)
            .args(Self::with_encrypt(args));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `pitr --repo URL ARGS…` as the postgres user, run directly (uid/gid, no runuser in
    /// between), so that a kill -9 reaches pitr itself.
    pub fn direct<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::os::unix::process::CommandExt;
        let id = |flag: &str| -> u32 {
            run_ok(Command::new("id").args([flag, "postgres"]))
                .trim()
                .parse()
                .unwrap()
        };
        let mut cmd = Command::new(&self.bin);
        cmd.uid(id("-u"))
            .gid(id("-g"))
            .arg("--repo")
            .arg(&self.repo)
            .args(Self::with_encrypt(args))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command(args).output().unwrap()
    }

    /// Takes a backup of `cluster`; returns its id.
    pub fn backup(&self, cluster: &PgCluster) -> String {
        let out = self.run(backup_args(cluster));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        backup_id(&out)
    }

    pub fn archive_command(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "env {} {} --repo {} archive-push %p",
            env.join(" "),
            self.bin.display(),
            self.repo
        )
    }
}

/// The id of the backup a successful `pitr backup` printed ("backup <id> …").
pub fn backup_id(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// `backup --pgdata DATA --dbname CONNINFO` for `cluster`.
pub fn backup_args(cluster: &PgCluster) -> Vec<String> {
    vec![
        "backup".into(),
        "--pgdata".into(),
        cluster.data.display().to_string(),
        "--dbname".into(),
        format!(
            "host={} port={} user=postgres",
            cluster.socket_dir.display(),
            cluster.port
        ),
    ]
}

/// Runs a shell command a pitr command printed (a `Next:` line), as the postgres user, its
/// output appended to `log`; it must succeed.
pub fn run_printed(command: &str, log: &Path) {
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    chown_to_postgres(log);
    let status = as_postgres("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{command}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A repository under test: its URL, the environment pitr needs, and direct access.
pub struct Repo {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub location: RepoLocation,
    pub s3: S3Options,
    _server: Option<Arc<S3Server>>,
}

impl Repo {
    pub fn local(dir: &TestDir) -> Self {
        let path = dir.subdir("repo");
        Repo {
            url: path.display().to_string(),
            env: vec![],
            location: RepoLocation::Fs(path),
            s3: S3Options::default(),
            _server: None,
        }
    }

    pub fn s3(server: &Arc<S3Server>, prefix: &str) -> Self {
        let bucket = server.bucket.clone();
        Repo {
            url: format!("s3://{bucket}/{prefix}"),
            env: server.env(),
            location: RepoLocation::S3 {
                bucket,
                prefix: prefix.to_owned(),
            },
            s3: S3Options {
                endpoint: Some(server.endpoint.clone()),
                path_style: true,
            },
            _server: Some(server.clone()),
        }
    }

    /// Direct access to the repository's objects, for inspection and tampering.
    pub async fn storage(&self) -> Arc<dyn Storage> {
        // The SDK reads credentials from the environment. Only AWS_* variables: the PITR_*
        // ones differ between servers and would leak into in-process tests.
        for (k, v) in self.env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
            // SAFETY: every test sets the same values (one set of S3 credentials).
            unsafe { std::env::set_var(k, v) };
        }
        let storage = self.location.open(&self.s3).await.unwrap();
        match &self.location {
            // The tests run as root, pitr as postgres: what a test writes must stay readable
            // to pitr (the fs store creates files 0600 for their writer).
            RepoLocation::Fs(root) if is_root() => Arc::new(PostgresOwned {
                inner: storage,
                root: root.clone(),
            }),
            _ => storage,
        }
    }
}

/// A local repository written by the tests (as root), its files handed to postgres after
/// each write.
#[derive(Debug)]
struct PostgresOwned {
    inner: Arc<dyn Storage>,
    root: PathBuf,
}

#[async_trait::async_trait]
impl Storage for PostgresOwned {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(
        &self,
        key: &str,
        payload: pitr::storage::PutPayload,
        mode: pitr::storage::PutMode,
    ) -> Result<(), pitr::storage::StorageError> {
        let result = self.inner.put(key, payload, mode).await;
        chown_to_postgres(&self.root);
        result
    }
    async fn get(
        &self,
        key: &str,
    ) -> Result<pitr::storage::ObjectBody, pitr::storage::StorageError> {
        self.inner.get(key).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> Result<pitr::storage::ObjectMeta, pitr::storage::StorageError> {
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<pitr::storage::ObjectMeta>, pitr::storage::StorageError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), pitr::storage::StorageError> {
        self.inner.delete(key).await
    }
    // The fs store's own locks (kernel locks), not lock objects through this wrapper.
    async fn lock(
        &self,
        key: &str,
        record: bytes::Bytes,
    ) -> Result<pitr::storage::LockAttempt, pitr::storage::StorageError> {
        let result = self.inner.lock(key, record).await;
        chown_to_postgres(&self.root);
        result
    }
    async fn refresh_lock(
        &self,
        lock: &mut pitr::storage::HeldLock,
        record: bytes::Bytes,
    ) -> Result<(), pitr::storage::StorageError> {
        self.inner.refresh_lock(lock, record).await
    }
    async fn unlock(
        &self,
        lock: pitr::storage::HeldLock,
    ) -> Result<(), pitr::storage::StorageError> {
        self.inner.unlock(lock).await
    }
    async fn take_over_lock(
        &self,
        key: &str,
        stale: &pitr::storage::HeldBy,
        record: bytes::Bytes,
    ) -> Result<Option<pitr::storage::HeldLock>, pitr::storage::StorageError> {
        self.inner.take_over_lock(key, stale, record).await
    }
}

/// A real S3-compatible server: s3s-fs started for the test, or the one named by
/// PITR_TEST_S3_ENDPOINT (e.g. MinIO from docker-compose.test.yml).
pub struct S3Server {
    /// What pitr, PostgreSQL's archive and restore commands and the tests connect to: the
    /// server itself, or the latency proxy in front of it.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    process: Option<Child>,
    latency: Option<LatencyProxy>,
    _root: Option<TestDir>,
}

/// The socket address of a plain-HTTP endpoint URL (a TCP proxy cannot sit in front of TLS
/// without breaking the certificate's name).
fn upstream_address(endpoint: &str) -> SocketAddr {
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("a latency proxy needs an http:// endpoint, not {endpoint}"))
        .split('/')
        .next()
        .unwrap();
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .unwrap_or_else(|| panic!("cannot resolve {with_port}"))
}

/// The credentials of every s3s-fs the tests start.
pub const S3_ACCESS_KEY: &str = "pitr-tests";
pub const S3_SECRET_KEY: &str = "pitr-tests-secret";

/// A port on 127.0.0.1 that refuses every connection while this lives: bound by a socket
/// that never listens, so nothing else can listen there meanwhile (a port probed free and
/// let go could be taken, and answer). For "nobody there" cases: an unreachable KMS, webhook
/// or metadata service.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl RefusingPort {
    pub fn bind() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let port = socket.local_addr().unwrap().port();
        RefusingPort {
            _socket: socket,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts a server that cannot bind port 0 and say which port it got (PostgreSQL, `pitr
/// metrics --listen`) on a port free when chosen; `start` returns None when the server
/// found the port taken (by anything else on the machine, between the choice and its bind),
/// and it is started again on another. Returns what `start` returned and the port.
pub fn start_on_a_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> (T, u16) {
    for _ in 0..20 {
        let port = port_to_listen_on();
        if let Some(started) = start(port) {
            return (started, port);
        }
        eprintln!("{what}: port {port} was taken; trying another");
    }
    panic!("{what}: 20 ports in a row were taken");
}

/// A port free on 127.0.0.1 now, drawn at random below the kernel's ephemeral range: there
/// no outgoing connection takes it as its local port (also not while the server that gets
/// it restarts on it), and servers started here rarely draw the same one.
fn port_to_listen_on() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Above the ports of well-known services and of the clusters restore places near 5432.
    let low = 10_000.min(ephemeral_low / 2).max(1024);
    let span = u64::from(ephemeral_low.saturating_sub(low).max(1));
    loop {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + u16::try_from(random % span).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl S3Server {
    pub async fn start(name: &str) -> Arc<Self> {
        Arc::new(Self::start_direct(name).await)
    }

    /// The same server reached through a proxy that delays each direction by `one_way`, as
    /// a distant region would: every request pays a round trip, a new connection one more.
    pub async fn start_with_latency(name: &str, one_way: Duration) -> Arc<Self> {
        let mut server = Self::start_direct(name).await;
        let upstream = upstream_address(&server.endpoint);
        let proxy = LatencyProxy::start(upstream, one_way)
            .unwrap_or_else(|e| panic!("cannot start the latency proxy: {e}"));
        server.endpoint = format!("http://127.0.0.1:{}", proxy.port());
        server.latency = Some(proxy);
        Arc::new(server)
    }

    /// A server whose conditional writes are atomic, as AWS S3's and MinIO's are: moto
    /// serving one request at a time (s3s-fs checks `If-None-Match` apart from the write, so
    /// racing creates of different bytes can both land and garble the object).
    pub async fn start_atomic(name: &str) -> Arc<Self> {
        if std::env::var_os("PITR_TEST_S3_ENDPOINT").is_some() {
            return Self::start(name).await;
        }
        let root = TestDir::new(&format!("s3-moto-{name}"));
        let (process, endpoint) = kms_server::spawn_moto(&root);
        let server = S3Server {
            endpoint,
            access_key: S3_ACCESS_KEY.to_owned(),
            secret_key: S3_SECRET_KEY.to_owned(),
            bucket: format!("pitr-{name}").replace('_', "-"),
            process: Some(process),
            latency: None,
            _root: Some(root),
        };
        server
            .create_bucket()
            .await
            .unwrap_or_else(|e| panic!("could not start moto: {e}"));
        Arc::new(server)
    }

    /// The proxy in front of the server, when it was started with latency.
    pub fn latency_proxy(&self) -> Option<&LatencyProxy> {
        self.latency.as_ref()
    }

    async fn start_direct(name: &str) -> Self {
        // Unique in the process too: every area's tests share one binary (and, with
        // PITR_TEST_S3_ENDPOINT, one server).
        static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bucket = format!("pitr-{name}-{}-{serial}", std::process::id()).replace('_', "-");
        if let Ok(endpoint) = std::env::var("PITR_TEST_S3_ENDPOINT") {
            let server = S3Server {
                endpoint,
                access_key: std::env::var("AWS_ACCESS_KEY_ID")
                    .expect("PITR_TEST_S3_ENDPOINT needs AWS_ACCESS_KEY_ID"),
                secret_key: std::env::var("AWS_SECRET_ACCESS_KEY")
                    .expect("PITR_TEST_S3_ENDPOINT needs AWS_SECRET_ACCESS_KEY"),
                bucket,
                process: None,
                latency: None,
                _root: None,
            };
            server
                .create_bucket()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            return server;
        }
        let server = Self::spawn_s3s_fs(name, &bucket);
        server
            .create_bucket()
            .await
            .unwrap_or_else(|e| panic!("could not start s3s-fs: {e}"));
        server
    }

    /// s3s-fs on a port it binds itself (port 0, read back from its log): no other test can
    /// take it between a probe and the bind. Every server has the same credentials, so the
    /// tests that set them in the process environment never race to different values.
    fn spawn_s3s_fs(name: &str, bucket: &str) -> Self {
        let root = TestDir::new(&format!("s3-{name}"));
        let binary = std::env::var("PITR_TEST_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let mut process = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (install: cargo install s3s-fs --version 0.14.1 --features binary): {e}")
            });
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(process.stdout.take().unwrap()).lines();
        let endpoint = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split_once("server is running at ")
                    .map(|(_, url)| url.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{binary} exited before listening"));
        // Keep reading its log so that a full pipe never stalls the server.
        std::thread::spawn(move || lines.for_each(drop));
        S3Server {
            endpoint,
            access_key: S3_ACCESS_KEY.to_owned(),
            secret_key: S3_SECRET_KEY.to_owned(),
            bucket: bucket.to_owned(),
            process: Some(process),
            latency: None,
            _root: Some(root),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("PITR_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("PITR_S3_PATH_STYLE".into(), "true".into()),
        ]
    }

    async fn create_bucket(&self) -> Result<(), String> {
        let credentials = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "pitr-tests",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "create bucket {} at {}: {}",
                    self.bucket,
                    self.endpoint,
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The proxy first: its connections close before the server goes.
        self.latency.take();
        if let Some(process) = &mut self.process {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// A PostgreSQL cluster (15 unless made with [`PgCluster::initdb_with`]) in a test
/// directory, listening only on a private unix socket.
pub struct PgCluster {
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The directory of the server binaries (initdb, pg_ctl, postgres).
    pub bin: PathBuf,
    log: PathBuf,
    started: bool,
}

impl PgCluster {
    pub fn initdb(dir: &TestDir, name: &str, extra_initdb: &[&str]) -> Self {
        Self::initdb_with(dir, name, Path::new(PG_BIN), extra_initdb)
    }

    /// A cluster of the server binaries in `bin` (see [`pg_bin_of`]).
    pub fn initdb_with(dir: &TestDir, name: &str, bin: &Path, extra_initdb: &[&str]) -> Self {
        let root = dir.subdir(name);
        let data = root.join("data");
        let socket_dir = root.clone();
        run_ok(
            as_postgres(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-N", "-D"])
                .arg(&data)
                .args(extra_initdb),
        );
        let cluster = PgCluster {
            data,
            socket_dir,
            port: 5432,
            bin: bin.to_owned(),
            log: root.join("server.log"),
            started: false,
        };
        cluster.configure(&format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nport = {}\nfsync = off\n",
            cluster.socket_dir.display(),
            cluster.port
        ));
        cluster
    }

    /// A cluster from a restored data directory, on its own socket, not archiving; not started.
    pub fn restored(dir: &TestDir, name: &str, data: PathBuf) -> Self {
        let cluster = Self::restored_archiving(dir, name, data);
        cluster.configure("archive_mode = off");
        cluster
    }

    /// The same, keeping the archive settings it was restored with; on the port restore
    /// wrote into postgresql.auto.conf (one the original cluster did not hold), if it wrote one.
    pub fn restored_archiving(dir: &TestDir, name: &str, data: PathBuf) -> Self {
        let socket_dir = dir.subdir(name);
        let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default();
        let port = auto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("port = ")?.trim().parse().ok())
            .next_back()
            .unwrap_or(5432);
        let cluster = PgCluster {
            data,
            socket_dir: socket_dir.clone(),
            port,
            bin: PathBuf::from(PG_BIN),
            log: socket_dir.join("server.log"),
            started: false,
        };
        cluster.configure(&format!(
            "unix_socket_directories = '{}'",
            socket_dir.display()
        ));
        cluster
    }

    /// A server started outside the harness (by a command pitr printed) in `data`, on
    /// `socket_dir` and `port`, logging to `log`: stopped on drop like the others.
    pub fn adopt(data: PathBuf, socket_dir: PathBuf, port: u16, log: PathBuf) -> Self {
        PgCluster {
            data,
            socket_dir,
            port,
            bin: PathBuf::from(PG_BIN),
            log,
            started: true,
        }
    }

    /// The same cluster, run with the server binaries in `bin`.
    pub fn with_bin(mut self, bin: &Path) -> Self {
        self.bin = bin.to_owned();
        self
    }

    /// Waits until recovery has paused at its target.
    pub fn wait_paused(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // PostgreSQL 13 has no pause state, only whether a pause was asked for (which, at a
        // recovery target, is asked for once the target is reached).
        let query = match std::fs::read_to_string(self.data.join("PG_VERSION")) {
            Ok(version) if version.trim() == "13" => {
                "select case when pg_is_wal_replay_paused() then 'paused' end"
            }
            _ => "select pg_get_wal_replay_pause_state()",
        };
        loop {
            let state = as_postgres("psql")
                .args(["-X", "-At", "-U", "postgres", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-d", "postgres", "-c"])
                .arg(query)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&state.stdout).trim() == "paused" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "recovery did not pause; server log:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a started server's recovery to end: true when it was promoted, false when
    /// the server exited instead (recovery aborted).
    pub fn recovery_ends_promoted(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.data.join("postmaster.pid").exists() {
                self.started = false;
                return false;
            }
            let state = as_postgres("psql")
                .args(["-X", "-At", "-U", "postgres", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-d", "postgres", "-c"])
                .arg("select pg_is_in_recovery()")
                .output()
                .unwrap();
            if String::from_utf8_lossy(&state.stdout).trim() == "f" {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "recovery neither ended nor aborted:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until recovery has ended (after promotion).
    pub fn wait_promoted(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.sql("select pg_is_in_recovery()") == "t" {
            assert!(
                Instant::now() < deadline,
                "still in recovery:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn configure(&self, lines: &str) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        writeln!(conf, "{lines}").unwrap();
    }

    /// Appends to postgresql.auto.conf: after what restore wrote there, which wins over
    /// postgresql.conf.
    pub fn configure_auto(&self, lines: &str) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.auto.conf"))
            .unwrap();
        writeln!(conf, "{lines}").unwrap();
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the server with extra environment (S3 credentials for restore_command).
    pub fn start_with_env(&mut self, env: &[(String, String)]) {
        assert!(
            self.try_start_with_env(env),
            "pg_ctl start failed; server log:\n{}",
            self.server_log()
        );
    }

    /// Starts the server; false when it did not come up (pg_ctl waited for it to exit).
    pub fn try_start_with_env(&mut self, env: &[(String, String)]) -> bool {
        let out = as_postgres(self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("start")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        // Stopped on drop also when pg_ctl gave up waiting on a server that is still there.
        self.started = true;
        out.status.success()
    }

    /// Starts the server listening on TCP too (`listen_addresses` as configured, e.g.
    /// '127.0.0.1', for tests of TLS and passwords), on a port free when chosen, or, when
    /// another process took it before PostgreSQL bound it, on another. Sets and returns
    /// [`PgCluster::port`].
    pub fn start_on_tcp(&mut self, env: &[(String, String)]) -> u16 {
        let ((), port) = start_on_a_free_port("PostgreSQL", |port| {
            self.port = port;
            // postgresql.auto.conf: it wins over whatever port postgresql.conf holds.
            self.configure_auto(&format!("port = {port}"));
            let logged = self.server_log().len();
            if self.try_start_with_env(env) {
                return Some(());
            }
            let log = self.server_log();
            let attempt = log.get(logged..).unwrap_or(&log);
            assert!(
                attempt.contains("could not bind") || attempt.contains("already in use"),
                "pg_ctl start failed; server log:\n{log}"
            );
            self.started = false;
            None
        });
        port
    }

    pub fn stop(&mut self) {
        if self.started {
            let _ = as_postgres(self.bin.join("pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
            self.started = false;
        }
    }

    /// Runs SQL through psql; returns unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// The same, in `database`.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        run_ok(
            as_postgres("psql")
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-U", "postgres", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]),
        )
        .trim()
        .to_owned()
    }

    /// The conninfo string of `database` on this cluster.
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wal_path(&self, name: &str) -> PathBuf {
        self.data.join("pg_wal").join(name)
    }

    /// Switches to a new WAL segment and waits until the one it closed is archived;
    /// returns that segment's name.
    pub fn archive_current_segment(&self, timeout: Duration) -> String {
        // A record first: right after a switch (a backup's end) the position is already in
        // the next segment, and a switch with nothing written since does nothing.
        let segment = self
            .sql("select pg_walfile_name(pg_logical_emit_message(false, 'pitr-test', 'switch'))");
        self.sql("select pg_switch_wal()");
        self.wait_archived(&segment, timeout);
        segment
    }

    /// Waits until `segment` is archived, failing on any failed archive attempt.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self
                .sql("select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver");
            let (last, failed) = row.split_once('|').unwrap();
            assert_eq!(
                failed,
                "0",
                "archiving failed; server log:\n{}",
                self.server_log()
            );
            if last >= segment {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{segment} not archived after {timeout:?} (last {last}); server log:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.started {
            let _ = as_postgres(self.bin.join("pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
    }
}

/// pitr installed for `repo`, and a cluster (not started) whose repository is initialised.
pub fn initialised_cluster(dir: &TestDir, repo: &Repo) -> (Pitr, PgCluster) {
    initialised_cluster_with(dir, repo, &[])
}

/// The same, initdb given `initdb_args`.
pub fn initialised_cluster_with(
    dir: &TestDir,
    repo: &Repo,
    initdb_args: &[&str],
) -> (Pitr, PgCluster) {
    let pitr = Pitr::install(dir, repo);
    let cluster = PgCluster::initdb(dir, "pg", initdb_args);
    let out = pitr
        .command(["init", "--pgdata"])
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    (pitr, cluster)
}

/// A started cluster whose archive_command pushes into `repo`, with the repository
/// initialised for it; `extra_conf` goes into postgresql.conf.
pub fn archiving_cluster(dir: &TestDir, repo: &Repo, extra_conf: &str) -> (Pitr, PgCluster) {
    archiving_cluster_with(dir, repo, &[], extra_conf)
}

/// The same, initdb given `initdb_args`.
pub fn archiving_cluster_with(
    dir: &TestDir,
    repo: &Repo,
    initdb_args: &[&str],
    extra_conf: &str,
) -> (Pitr, PgCluster) {
    let (pitr, mut cluster) = initialised_cluster_with(dir, repo, initdb_args);
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n{extra_conf}",
        pitr.archive_command()
    ));
    cluster.start();
    (pitr, cluster)
}

/// A started cluster of the server binaries in `bin` (see [`pg_bin_of`]), initdb given
/// `initdb_args`, archiving into `repo` (initialised for it); `extra_conf` goes into
/// postgresql.conf.
pub fn archiving_cluster_of(
    dir: &TestDir,
    repo: &Repo,
    bin: &Path,
    initdb_args: &[&str],
    extra_conf: &str,
) -> (Pitr, PgCluster) {
    let pitr = Pitr::install(dir, repo);
    let mut cluster = PgCluster::initdb_with(dir, "pg", bin, initdb_args);
    let out = pitr
        .command(["init", "--pgdata"])
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "init with {}: {}",
        bin.display(),
        stderr(&out)
    );
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n{extra_conf}",
        pitr.archive_command()
    ));
    cluster.start();
    (pitr, cluster)
}

/// The cipher of the object at `key` in a repository of the encrypted suite (opened with
/// [`TEST_PASSPHRASE`]); none when the suite runs unencrypted.
pub async fn test_cipher(
    storage: &dyn Storage,
    key: &str,
) -> Option<pitr::codec::crypto::ObjectCipher> {
    if !encrypting() {
        return None;
    }
    let keys: pitr::catalog::keys::KeysFile =
        serde_json::from_slice(&pitr::storage::read_all(storage, "keys.json").await.unwrap())
            .unwrap();
    let material = pitr::catalog::keys::KeyMaterial::passphrase(TEST_PASSPHRASE.as_bytes(), "test");
    let (data_key, _, _) = keys.unlock(&[material]).await.unwrap();
    Some(data_key.for_object(key))
}

/// The decoded content of the codec object stored at `key` (decrypted in the encrypted suite).
pub async fn decoded_object(storage: &dyn Storage, key: &str) -> Vec<u8> {
    let stored = pitr::storage::read_all(storage, key).await.unwrap();
    decode_stored(storage, key, stored).await
}

/// `stored`, the bytes of the codec object at `key`, decoded.
async fn decode_stored(storage: &dyn Storage, key: &str, stored: Vec<u8>) -> Vec<u8> {
    let cipher = test_cipher(storage, key).await;
    let mut decoded = Vec::new();
    pitr::codec::decode_with(&stored[..], &mut decoded, cipher.as_ref()).unwrap();
    decoded
}

/// The JSON of the metadata object at `key` (a manifest, a summary), decrypted in the
/// encrypted suite.
pub async fn metadata_json(storage: &dyn Storage, key: &str) -> Vec<u8> {
    let stored = pitr::storage::read_all(storage, key).await.unwrap();
    metadata_json_of(storage, key, stored).await
}

/// The JSON in `stored`, the bytes of the metadata object at `key`.
pub async fn metadata_json_of(storage: &dyn Storage, key: &str, stored: Vec<u8>) -> Vec<u8> {
    if encrypting() && !["repository.json", "keys.json"].contains(&key) {
        decode_stored(storage, key, stored).await
    } else {
        stored
    }
}

/// A streaming standby of `primary` (pg_basebackup -R -X stream), started, keeping the
/// primary's archive settings, and caught up with what the primary wrote so far.
pub fn streaming_standby(dir: &TestDir, primary: &PgCluster) -> PgCluster {
    let data = dir.subdir("standby").join("data");
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string()]),
    );
    let mut standby = PgCluster::restored_archiving(dir, "standby-sock", data);
    standby.start();
    wait_replayed(primary, &standby);
    standby
}

/// Waits until `standby` has replayed all the primary wrote so far.
pub fn wait_replayed(primary: &PgCluster, standby: &PgCluster) {
    let target = primary.sql("select pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!(
        "select pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
    )) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay up to {target}:\n{}",
            standby.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a backup of a standby (`command`) while the primary writes into table `tick` and
/// switches segments, so that the standby's stop segment reaches the archive.
pub fn backup_while_the_primary_switches(mut command: Command, primary: &PgCluster) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        primary.sql("insert into tick default values");
        primary.sql("select pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

/// The identity in the local repository at `root` is the one the data directory gives.
pub fn assert_identity_recorded(root: &Path, data: &Path) {
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("repository.json")).unwrap()).unwrap();
    let expected = pitr::commands::init::read_cluster_identity(data).unwrap();
    assert_eq!(
        recorded["system_identifier"],
        expected.system_identifier.to_string()
    );
    for (field, value) in [
        ("pg_version", u64::from(expected.pg_version)),
        ("pg_control_version", u64::from(expected.pg_control_version)),
        ("catalog_version", u64::from(expected.catalog_version)),
        ("wal_segment_size", expected.wal_segment_size),
        ("wal_block_size", u64::from(expected.wal_block_size)),
    ] {
        assert_eq!(recorded[field], value, "{field}: {recorded:#}");
    }
}

/// PostgreSQL's pg_verifybackup (without WAL parsing) accepts a restored directory.
pub fn assert_verifybackup(data: &Path) {
    let verify = Command::new(Path::new(PG_BIN).join("pg_verifybackup"))
        .arg("-n")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Every object key and its bytes, to prove a repository unchanged.
pub async fn snapshot(storage: &dyn Storage) -> Vec<(String, Vec<u8>)> {
    let mut objects = Vec::new();
    for meta in storage.list("").await.unwrap() {
        let bytes = pitr::storage::read_all(storage, &meta.key).await.unwrap();
        objects.push((meta.key, bytes));
    }
    objects
}

/// Object keys as docs/repository-format.md documents them: tests read and tamper with the
/// repository from outside, as an operator or a bit flip would.
pub mod keys {
    /// The WAL file an object key names, if it names one (`wal/<TLI><LOG>/<name>.lz4`).
    pub fn wal_name_of_key(key: &str) -> Option<pitr::pg::WalFileName> {
        let leaf = key.strip_prefix("wal/")?.rsplit('/').next()?;
        pitr::pg::WalFileName::parse(leaf.strip_suffix(".lz4")?).ok()
    }

    pub fn backup_object_key(id: &str, object: u32) -> String {
        format!("backup/{id}/data/{object:06}.lz4")
    }

    pub fn manifest_key(id: &str) -> String {
        format!("backup/{id}/manifest.json")
    }
}

/// Options of a fast backup of `cluster` run in this process, over its socket.
pub fn in_process_backup_options(cluster: &PgCluster) -> pitr::commands::backup::BackupOptions {
    pitr::commands::backup::BackupOptions {
        pgdata: Some(cluster.data.clone()),
        dbname: Some(format!(
            "host={} port={} user=postgres",
            cluster.socket_dir.display(),
            cluster.port
        )),
        fast: true,
        jobs: 2,
        wal_timeout: Duration::from_secs(60),
        progress: Arc::new(pitr::progress::Silent),
        backup_type: Default::default(),
        pin: false,
        annotations: Default::default(),
        method: Default::default(),
        max_rate_kb: None,
        wal_method: Default::default(),
        network_compression: Default::default(),
    }
}
