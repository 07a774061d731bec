//! No secret in any output (issue 12): every command a user runs, on a local and an S3
//! repository, successes and failures, with recognisable secrets — a PostgreSQL password
//! (in --dbname, a URL, PGPASSWORD, a password file), the S3 secret key, the repository
//! passphrase (PITR_PASSPHRASE and passphrase_file), a key file and PITR_NEW_PASSPHRASE.
//! Every stdout and stderr, the PostgreSQL server logs, every repository object (stored and
//! decoded) and every file of the data directories are searched for them; the files that
//! hold them by design (the passphrase file, the password file…) prove the search finds them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use pitr::catalog::keys::{KeyMaterial, KeysFile};
use pitr::storage::Storage;

const PG_PASSWORD: &str = "Pg-role-pw-Zr8kQ2";
const WRONG_PG_PASSWORD: &str = "Wrong-pg-pw-Hn4tV6";
const PASSPHRASE: &str = "Repo-passphrase-Xw3mP9";
const WRONG_PASSPHRASE: &str = "Wrong-passphrase-Lc5sB1";
const NEW_PASSPHRASE: &str = "New-passphrase-Gt7yE4";
const WRONG_S3_SECRET: &str = "Wrong-s3-secret-Mq2dK8";
/// Not a secret: a file of the source data directory, which the search must find in the
/// decoded backups and the restored directories.
const CANARY: &str = "canary-not-a-secret-Vb6nJ3";

/// The secrets, in every form they might leak in, and what was found where.
struct Audit {
    needles: Vec<(String, Vec<u8>)>,
    leaks: Vec<String>,
    commands: usize,
    bytes: u64,
}

impl Audit {
    fn new(s3_secret: &str, key_file: &[u8]) -> Self {
        let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, secret) in [
            ("the PostgreSQL password", PG_PASSWORD),
            ("the wrong PostgreSQL password", WRONG_PG_PASSWORD),
            ("the passphrase", PASSPHRASE),
            ("the wrong passphrase", WRONG_PASSPHRASE),
            ("the new passphrase", NEW_PASSPHRASE),
            ("the S3 secret key", s3_secret),
            ("the wrong S3 secret key", WRONG_S3_SECRET),
        ] {
            needles.push((name.into(), secret.as_bytes().to_vec()));
            needles.push((format!("{name} in hex"), hex::encode(secret).into_bytes()));
        }
        let base64 = base64::engine::general_purpose::STANDARD.encode(key_file);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_file);
        needles.extend([
            ("the key file".into(), key_file.to_vec()),
            (
                "the key file in hex".into(),
                hex::encode(key_file).into_bytes(),
            ),
            (
                "the key file in HEX".into(),
                hex::encode_upper(key_file).into_bytes(),
            ),
            (
                "the key file in base64".into(),
                base64.trim_end_matches('=').as_bytes().to_vec(),
            ),
            ("the key file in base64url".into(), url_safe.into_bytes()),
        ]);
        Audit {
            needles,
            leaks: Vec::new(),
            commands: 0,
            bytes: 0,
        }
    }

    /// The names of the secrets in `bytes`.
    fn found(&self, bytes: &[u8]) -> Vec<&str> {
        self.needles
            .iter()
            .filter(|(_, needle)| memchr::memmem::find(bytes, needle).is_some())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn scan(&mut self, what: &str, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        let found: Vec<String> = self.found(bytes).into_iter().map(str::to_owned).collect();
        for name in found {
            self.leaks.push(format!("{name} in {what}"));
        }
    }

    /// Every regular file under `root`.
    fn scan_dir(&mut self, root: &Path) -> usize {
        let mut files = 0;
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                files += self.scan_dir(&path);
            } else if kind.is_file() {
                self.scan(&path.display().to_string(), &std::fs::read(&path).unwrap());
                files += 1;
            }
        }
        files
    }

    /// Runs `cmd`; its stdout and stderr are searched.
    fn run(&mut self, what: &str, cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        self.commands += 1;
        self.scan(&format!("the stdout of {what}"), &out.stdout);
        self.scan(&format!("the stderr of {what}"), &out.stderr);
        out
    }

    /// Runs `cmd` and asserts its exit code; returns stdout and stderr.
    fn expect(&mut self, what: &str, cmd: &mut Command, wanted: &[i32]) -> String {
        let out = self.run(what, cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wanted.contains(&code(&out)),
            "{what}: exit {} (wanted {wanted:?}):\n{text}",
            code(&out)
        );
        text
    }

    /// Every object of a repository as stored, and decoded (decrypted, decompressed) where
    /// it is a codec object; returns how many decoded.
    async fn scan_repository(&mut self, name: &str, storage: &dyn Storage) -> usize {
        let keys: KeysFile =
            serde_json::from_slice(&pitr::storage::read_all(storage, "keys.json").await.unwrap())
                .unwrap();
        let material = KeyMaterial::passphrase(PASSPHRASE.as_bytes(), "test");
        let (data_key, _, _) = keys.unlock(&[material]).await.unwrap();
        let mut decoded_objects = 0;
        let mut canary = false;
        for meta in storage.list("").await.unwrap() {
            let stored = pitr::storage::read_all(storage, &meta.key).await.unwrap();
            self.scan(&format!("{name} object {}", meta.key), &stored);
            // WAL segments are PostgreSQL's bytes as they were, and the bulk of the data:
            // searched as stored only.
            if keys::wal_name_of_key(&meta.key).is_some() {
                continue;
            }
            let cipher = data_key.for_object(&meta.key);
            let mut decoded = Vec::new();
            if pitr::codec::decode_with(&stored[..], &mut decoded, Some(&cipher)).is_ok() {
                self.scan(&format!("{name} object {} decoded", meta.key), &decoded);
                canary |= contains(&decoded, CANARY);
                decoded_objects += 1;
            }
        }
        assert!(canary, "the canary is in no decoded object of {name}");
        decoded_objects
    }
}

/// Asserts that the search finds `secret` in `path`, a file that holds it by design.
fn assert_found(audit: &Audit, path: &Path, secret: &str) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        audit.found(&bytes).contains(&secret),
        "the search does not find {secret} in {}",
        path.display()
    );
}

/// A file only its owner (the postgres user) may read.
fn private_file(dir: &TestDir, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.write(name, content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

type Env = Vec<(String, String)>;

fn env_of(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn without(env: &[(String, String)], name: &str) -> Env {
    env.iter().filter(|(k, _)| k != name).cloned().collect()
}

fn with(env: &[(String, String)], name: &str, value: &str) -> Env {
    let mut env = without(env, name);
    env.push((name.to_owned(), value.to_owned()));
    env
}

/// The pitr binary, run as the postgres user with environment added to the test's.
struct Runner {
    bin: PathBuf,
    /// The local repository's config file (repo, passphrase_file).
    config: String,
}

impl Runner {
    fn command<S: AsRef<str>>(&self, args: &[S], env: &[(String, String)]) -> Command {
        let mut cmd = as_postgres(&self.bin);
        cmd.args(args.iter().map(|a| a.as_ref()))
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `pitr ARGS` on the S3 repository (its settings in `env`), or whatever `args` name.
    fn s3<S: AsRef<str>>(
        &self,
        audit: &mut Audit,
        args: &[S],
        env: &[(String, String)],
        wanted: &[i32],
    ) -> String {
        let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        audit.expect(
            &format!("pitr {shown:?}"),
            &mut self.command(args, env),
            wanted,
        )
    }

    /// `pitr --config LOCAL ARGS`: the local repository.
    fn local<S: AsRef<str>>(
        &self,
        audit: &mut Audit,
        args: &[S],
        env: &[(String, String)],
        wanted: &[i32],
    ) -> String {
        let mut all = vec!["--config", self.config.as_str()];
        all.extend(args.iter().map(|a| a.as_ref()));
        self.s3(audit, &all, env, wanted)
    }
}

/// A webhook that answers 200 to every POST and keeps every request, as received.
struct Webhook {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Webhook {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        // Ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                sink.lock().unwrap().extend_from_slice(&request);
            }
        });
        Webhook { url, received }
    }
}

/// Adds -v to the restore_command a restore wrote, so that archive-get logs every file.
fn verbose_restore_command(data: &Path) {
    let path = data.join("postgresql.auto.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    assert!(conf.contains(" archive-get %f %p"), "{conf}");
    std::fs::write(
        &path,
        conf.replace(" archive-get %f %p", " -v archive-get %f %p"),
    )
    .unwrap();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_output_or_written_file() {
    let dir = TestDir::new("secrets");
    let server = S3Server::start("secrets").await;
    let local = Repo::local(&dir);
    let s3 = Repo::s3(&server, "secrets");
    let key_bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    // The access key id may be shown (S3 names it in errors); the secret must not hide in it
    // (MinIO's minioadmin/minioadmin through PITR_TEST_S3_ENDPOINT would).
    assert!(
        !server.access_key.contains(&server.secret_key),
        "give the S3 server a secret key unlike its access key id"
    );
    let mut audit = Audit::new(&server.secret_key, &key_bytes);

    // The files that hold secrets by design, and the proof that the search finds them.
    let passphrase_file = private_file(&dir, "passphrase", format!("{PASSPHRASE}\n"));
    let wrong_passphrase_file = private_file(&dir, "wrong-passphrase", WRONG_PASSPHRASE);
    let key_file = private_file(&dir, "key", &key_bytes);
    let local_config = dir.write(
        "local.toml",
        format!(
            "repo = \"{}\"\npassphrase_file = \"{}\"\n",
            local.url,
            passphrase_file.display()
        ),
    );
    assert_found(&audit, &passphrase_file, "the passphrase");
    assert_found(&audit, &key_file, "the key file");
    let pitr = Runner {
        bin: Pitr::install(&dir, &local).bin,
        config: local_config.display().to_string(),
    };
    let key_path = key_file.display().to_string();
    let passphrase_path = passphrase_file.display().to_string();

    // The local repository is driven by its config file (passphrase_file), the S3 one by the
    // environment (PITR_PASSPHRASE, AWS_SECRET_ACCESS_KEY); every run of its commands is
    // told to a webhook too, whose requests are searched as well.
    let webhook = Webhook::start();
    let mut s3_env = s3.env.clone();
    s3_env.push(("PITR_REPO".into(), s3.url.clone()));
    s3_env.push(("PITR_PASSPHRASE".into(), PASSPHRASE.into()));
    s3_env.push(("PITR_NOTIFY_URL".into(), webhook.url.clone()));
    s3_env.push(("PITR_NOTIFY_ON_SUCCESS".into(), "true".into()));

    // The search sees what a command prints.
    let mut printenv = as_postgres("printenv");
    printenv
        .arg("PITR_PASSPHRASE")
        .envs(s3_env.iter().map(|(k, v)| (k, v)));
    audit.run("printenv", &mut printenv);
    assert_eq!(
        audit.leaks,
        ["the passphrase in the stdout of printenv"],
        "the search does not see command output"
    );
    audit.leaks.clear();

    // A cluster that accepts TCP on 127.0.0.1 only with the password, with a canary file
    // that backups carry.
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    let data = cluster.data.display().to_string();
    std::fs::write(cluster.data.join("pitr_canary"), CANARY).unwrap();
    chown_to_postgres(&cluster.data);
    pitr.local(
        &mut audit,
        &["init", "--encrypt", "--pgdata", &data],
        &[],
        &[0],
    );
    pitr.s3(
        &mut audit,
        &["init", "--encrypt", "--pgdata", &data],
        &s3_env,
        &[0],
    );
    // The commands name files and repositories; the secrets come from the server's
    // environment.
    let archive_command = format!(
        "{bin} -v --repo {} --passphrase-file {passphrase_path} archive-push %p && \
         {bin} -v archive-push %p",
        local.url,
        bin = pitr.bin.display()
    );
    cluster.configure(&format!(
        "listen_addresses = '127.0.0.1'\narchive_mode = on\n\
         archive_command = '{archive_command}'\n"
    ));
    std::fs::write(
        cluster.data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let port = cluster.start_on_tcp(&s3_env);
    cluster.sql(&format!("ALTER ROLE postgres PASSWORD '{PG_PASSWORD}'"));
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");

    // Keys: a new passphrase from PITR_NEW_PASSPHRASE and the key file; the new passphrase
    // opens the repository, then is removed; the key file opens the S3 one alone.
    let new_env = env_of(&[("PITR_NEW_PASSPHRASE", NEW_PASSPHRASE)]);
    let out = pitr.local(&mut audit, &["-v", "key", "add"], &new_env, &[0]);
    let added = out
        .lines()
        .find_map(|l| l.strip_prefix("added key "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_owned();
    let add_key_file = ["key", "add", "--new-key-file", &key_path];
    pitr.local(&mut audit, &add_key_file, &[], &[0]);
    pitr.s3(&mut audit, &add_key_file, &s3_env, &[0]);
    let local_repo = ["--repo", local.url.as_str()];
    let only_new = env_of(&[("PITR_PASSPHRASE", NEW_PASSPHRASE)]);
    pitr.s3(
        &mut audit,
        &[&local_repo[..], &["list"]].concat(),
        &only_new,
        &[0],
    );
    pitr.local(&mut audit, &["key", "list"], &[], &[0]);
    pitr.local(&mut audit, &["key", "list", "--json"], &[], &[0]);
    pitr.local(&mut audit, &["key", "remove", &added], &[], &[0]);
    pitr.s3(&mut audit, &["key", "list", "--json"], &s3_env, &[0]);
    let key_only = without(&s3_env, "PITR_PASSPHRASE");
    pitr.s3(
        &mut audit,
        &["--key-file", &key_path, "list"],
        &key_only,
        &[0],
    );
    // key add without a new key, and with a wrong current key.
    pitr.local(&mut audit, &["key", "add"], &[], &[2]);
    let wrong_env = with(&s3_env, "PITR_PASSPHRASE", WRONG_PASSPHRASE);
    let wrong_add = with(&wrong_env, "PITR_NEW_PASSPHRASE", NEW_PASSPHRASE);
    pitr.s3(&mut audit, &["key", "add"], &wrong_add, &[12]);

    // Backups, the password from each source: --dbname, a URL, PGPASSWORD, PGPASSFILE.
    let tcp = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let url = format!("postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres");
    let backup =
        |dbname: &str| ["-v", "backup", "--pgdata", &data, "--dbname", dbname].map(str::to_owned);
    let out = pitr.local(
        &mut audit,
        &backup(&format!("{tcp} password={PG_PASSWORD}")),
        &[],
        &[0],
    );
    let local_backup = out
        .lines()
        .find(|l| l.starts_with("backup "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    // -vv: debug lines, the libraries' included.
    pitr.s3(
        &mut audit,
        &[&["-vv".to_owned()][..], &backup(&url)].concat(),
        &s3_env,
        &[0],
    );
    let pgpassword = env_of(&[("PGPASSWORD", PG_PASSWORD)]);
    pitr.local(&mut audit, &backup(&tcp), &pgpassword, &[0]);
    let pgpass = private_file(
        &dir,
        "pgpass",
        format!("127.0.0.1:{port}:*:postgres:{PG_PASSWORD}\n"),
    );
    assert_found(&audit, &pgpass, "the PostgreSQL password");
    let pgpassfile = with(&s3_env, "PGPASSFILE", &pgpass.display().to_string());
    pitr.s3(&mut audit, &backup(&tcp), &pgpassfile, &[0]);

    // Failed connections: a wrong password, a --dbname that does not parse.
    let wrong_password = format!("{tcp} password={WRONG_PG_PASSWORD}");
    pitr.local(&mut audit, &backup(&wrong_password), &[], &[9]);
    let wrong_pgpassword = with(&s3_env, "PGPASSWORD", WRONG_PG_PASSWORD);
    pitr.s3(
        &mut audit,
        &["--check-verify-age", "off", "check", "--dbname", &tcp],
        &wrong_pgpassword,
        &[3],
    );
    for broken in [
        format!("{tcp} password={PG_PASSWORD} 'unterminated"),
        format!("{tcp} password='{PG_PASSWORD}"),
        format!("{tcp} password={PG_PASSWORD} sslmode=bogus"),
        format!("postgresql://postgres:{PG_PASSWORD}@127.0.0.1:notaport/postgres"),
        // A password with a '/' the user did not percent-encode.
        format!("postgresql://postgres:{PG_PASSWORD}/x@127.0.0.1:{port}/postgres"),
        format!("postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres?bogus=1"),
    ] {
        pitr.local(&mut audit, &backup(&broken), &[], &[2]);
        if broken.starts_with("postgresql:") {
            // Told to the webhook, and recorded in the S3 repository's history.
            pitr.s3(&mut audit, &backup(&broken), &s3_env, &[2]);
        }
        let check = [
            "--check-verify-age",
            "off",
            "check",
            "--json",
            "--dbname",
            &broken,
        ];
        pitr.s3(&mut audit, &check, &s3_env, &[3]);
    }

    // Reading the repositories: list, verify (with the key, and without it: checksums only), check, history,
    // expire; metrics, pin.
    // Each repository verified once with its key (verify reads everything).
    pitr.local(&mut audit, &["-v", "verify"], &[], &[0]);
    pitr.s3(&mut audit, &["-v", "verify", "--json"], &s3_env, &[0]);
    for json in [&[][..], &["--json"]] {
        let with_json = |args: &[&'static str]| [args, json].concat();
        pitr.local(&mut audit, &with_json(&["list"]), &[], &[0]);
        pitr.s3(&mut audit, &with_json(&["list"]), &s3_env, &[0]);
        let local_verify = [&local_repo[..], &["verify", "--no-key"], json].concat();
        pitr.s3(&mut audit, &local_verify, &[], &[0]);
        pitr.s3(
            &mut audit,
            &with_json(&["verify", "--no-key"]),
            &key_only,
            &[0],
        );
        pitr.s3(&mut audit, &with_json(&["verify"]), &key_only, &[12]);
        let check_url = [&["check", "--dbname", url.as_str()][..], json].concat();
        pitr.local(&mut audit, &check_url, &[], &[0, 1]);
        let check_tcp = [&["check", "--dbname", tcp.as_str()][..], json].concat();
        pitr.s3(&mut audit, &check_tcp, &pgpassfile, &[0, 1]);
        pitr.local(&mut audit, &with_json(&["history"]), &[], &[0]);
        pitr.s3(&mut audit, &with_json(&["history"]), &s3_env, &[0]);
        let expire = with_json(&["expire", "--keep-last", "1", "--dry-run"]);
        pitr.local(&mut audit, &expire, &[], &[0]);
        pitr.s3(&mut audit, &expire, &s3_env, &[0]);
    }
    let switch_wal = ["check", "--switch-wal", "--dbname", &tcp];
    pitr.local(&mut audit, &switch_wal, &pgpassword, &[0, 1]);
    pitr.local(&mut audit, &["metrics"], &[], &[0]);
    pitr.s3(&mut audit, &["-vv", "metrics"], &s3_env, &[0]);
    let pin = ["pin", &local_backup, "--annotate", "ticket=1"];
    pitr.local(&mut audit, &pin, &[], &[0]);
    pitr.local(&mut audit, &["unpin", &local_backup], &[], &[0]);

    // The wrong key, the wrong S3 secret, an S3 endpoint nobody answers, a missing file.
    pitr.s3(&mut audit, &["list"], &wrong_env, &[12]);
    let wrong_file = wrong_passphrase_file.display().to_string();
    let wrong_passphrase_file_list =
        [&local_repo[..], &["--passphrase-file", &wrong_file, "list"]].concat();
    pitr.s3(&mut audit, &wrong_passphrase_file_list, &[], &[12]);
    let wrong_secret = with(&s3_env, "AWS_SECRET_ACCESS_KEY", WRONG_S3_SECRET);
    pitr.s3(
        &mut audit,
        &["-vv", "--storage-retry-time", "1", "list"],
        &wrong_secret,
        &[2],
    );
    let unreachable = with(&s3_env, "PITR_S3_ENDPOINT", "http://127.0.0.1:1");
    pitr.s3(
        &mut audit,
        &["-v", "--storage-retry-time", "1", "list"],
        &unreachable,
        &[6],
    );
    let get = [
        "-v",
        "--storage-retry-time",
        "1",
        "archive-get",
        "000000010000000000000001",
        "/tmp/x",
    ];
    pitr.s3(&mut audit, &get, &unreachable, &[134]);
    let get_missing = [
        "-v",
        "archive-get",
        "0000000100000000000000FF",
        "/tmp/nowhere",
    ];
    pitr.s3(&mut audit, &get_missing, &s3_env, &[1]);

    // A config file that holds a secret by mistake: the error names the key, not the value.
    for (name, content) in [
        ("mistake.toml", format!("passphrase = \"{PASSPHRASE}\"\n")),
        (
            "unterminated.toml",
            format!("passphrase_file = \"{PASSPHRASE}\n"),
        ),
        (
            "typed.toml",
            format!("storage_timeout = \"{PASSPHRASE}\"\n"),
        ),
    ] {
        let path = dir.write(name, content);
        let args = ["--config", &path.display().to_string(), "list"];
        pitr.s3(&mut audit, &args, &s3_env, &[2]);
    }

    // --help of every command with every secret in the environment.
    let mut help_env = s3_env.clone();
    help_env.extend(env_of(&[
        ("PITR_NEW_PASSPHRASE", NEW_PASSPHRASE),
        ("PGPASSWORD", PG_PASSWORD),
        ("PITR_KEY_FILE", &key_path),
        ("PITR_PASSPHRASE_FILE", &passphrase_path),
    ]));
    for command in [
        &[][..],
        &["init"],
        &["archive-push"],
        &["archive-get"],
        &["archive-get-prefetch"],
        &["backup"],
        &["restore"],
        &["demo"],
        &["list"],
        &["verify"],
        &["check"],
        &["metrics"],
        &["history"],
        &["expire"],
        &["pin"],
        &["unpin"],
        &["key"],
        &["key", "list"],
        &["key", "add"],
        &["key", "remove"],
    ] {
        pitr.s3(
            &mut audit,
            &[command, &["--help"]].concat(),
            &help_env,
            &[0],
        );
    }
    pitr.s3(&mut audit, &["-h"], &help_env, &[0]);
    pitr.s3(&mut audit, &["help", "backup"], &help_env, &[0]);
    pitr.s3(&mut audit, &["--version"], &help_env, &[0]);
    pitr.s3(&mut audit, &["backup", "--no-such-flag"], &help_env, &[2]);

    // Restores: the local one's restore_command names the config file, the S3 one's only
    // the repository (PITR_PASSPHRASE comes from the restored server's environment).
    let restored_local = dir.path().join("restored-local");
    let restored_s3 = dir.path().join("restored-s3");
    let into_local = restored_local.display().to_string();
    let into_s3 = restored_s3.display().to_string();
    pitr.local(&mut audit, &["restore", "--dry-run"], &[], &[0]);
    pitr.s3(&mut audit, &["restore", "--dry-run"], &s3_env, &[0]);
    pitr.local(
        &mut audit,
        &["-v", "restore", "--pgdata", &into_local],
        &[],
        &[0],
    );
    let out = pitr.s3(
        &mut audit,
        &["-v", "restore", "--pgdata", &into_s3],
        &s3_env,
        &[0],
    );
    assert!(out.contains("PITR_PASSPHRASE"), "{out}");
    // Again into the same directory: refused.
    pitr.s3(
        &mut audit,
        &["restore", "--pgdata", &into_s3],
        &s3_env,
        &[2, 7],
    );
    let auto_conf = std::fs::read_to_string(restored_local.join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains(&pitr.config), "{auto_conf}");
    // Both recover at once.
    let mut restored = Vec::new();
    for (name, data, env) in [
        ("rl", restored_local.clone(), Vec::new()),
        ("rs", restored_s3.clone(), s3_env.clone()),
    ] {
        verbose_restore_command(&data);
        let mut cluster = PgCluster::restored(&dir, name, data);
        // After what restore wrote into postgresql.auto.conf (the primary's TCP address),
        // which postgresql.conf cannot override: on its own socket only, where the port
        // restore wrote names a socket file no other server uses.
        cluster.configure_auto("listen_addresses = ''");
        cluster.start_with_env(&env);
        restored.push(cluster);
    }
    for cluster in &mut restored {
        assert!(
            cluster.recovery_ends_promoted(Duration::from_secs(60)),
            "{}",
            cluster.server_log()
        );
        assert_eq!(cluster.sql("select count(*) from t"), "1000");
        cluster.stop();
    }
    cluster.stop();

    // What was written: server logs, data directories, repositories.
    let log = cluster.server_log();
    assert!(
        log.contains(" bytes (ratio "),
        "archive-push -v wrote nothing:\n{log}"
    );
    audit.scan("the server log", log.as_bytes());
    for (name, cluster) in ["the local restore", "the S3 restore"]
        .iter()
        .zip(&restored)
    {
        let log = cluster.server_log();
        assert!(
            log.contains(" bytes from "),
            "archive-get -v wrote nothing:\n{log}"
        );
        audit.scan(&format!("{name}'s server log"), log.as_bytes());
    }
    for data in [&cluster.data, &restored_local, &restored_s3] {
        let canary = std::fs::read(data.join("pitr_canary")).unwrap();
        assert!(contains(&canary, CANARY), "{}", data.display());
        let files = audit.scan_dir(data);
        assert!(files > 100, "{}: {files} files", data.display());
    }
    let requests = webhook.received.lock().unwrap().clone();
    assert!(
        contains(&requests, "postgres:***@"),
        "the webhook heard no redacted failure:\n{}",
        String::from_utf8_lossy(&requests)
    );
    audit.scan("the webhook's requests", &requests);
    audit.scan_dir(Path::new(&local.url));
    let decoded = audit
        .scan_repository("the local repository", &*local.storage().await)
        .await;
    assert!(decoded > 10, "{decoded} objects decoded");
    let decoded = audit
        .scan_repository("the S3 repository", &*s3.storage().await)
        .await;
    assert!(decoded > 10, "{decoded} objects decoded");

    eprintln!(
        "searched the output of {} commands and {} MB",
        audit.commands,
        audit.bytes / 1_000_000
    );
    assert!(
        audit.leaks.is_empty(),
        "secrets leaked:\n{}",
        audit.leaks.join("\n")
    );
}
