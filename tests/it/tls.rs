//! TLS and credentials against a real PostgreSQL 15 that accepts only TLS over TCP
//! (`hostssl … scram-sha-256`), with certificates made for the test by the openssl CLI.
//! One cluster serves every scenario; no output may ever carry the password.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const PASSWORD: &str = "Tls-pw-7f3a9c";

/// A CA, a second CA that signed nothing the server has, and the server's certificate for
/// localhost and 127.0.0.1, signed by the first.
pub(crate) struct Certificates {
    pub(crate) ca: PathBuf,
    other_ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    /// A client certificate for the role `certuser`, signed by the CA.
    client_cert: PathBuf,
    client_key: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = pitr test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Runs `openssl ARGS` in `dir` (arguments split on spaces).
fn openssl(dir: &Path, args: &str) {
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace()),
    );
}

const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A key and a certificate `NAME.key`, `NAME.crt` for `cn`, signed by `ca.crt` with the
/// extensions of section `extensions` of the config.
fn signed(dir: &Path, name: &str, cn: &str, extensions: &str, serial: u32) {
    openssl(
        dir,
        &format!(
            "req -new {EC_KEY} -keyout {name}.key -out {name}.csr -config openssl.cnf -subj /CN={cn}"
        ),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -days 2 \
             -out {name}.crt -extfile openssl.cnf -extensions {extensions}"
        ),
    );
}

/// Also for tests/it/replication.rs.
pub(crate) fn make_certificates(dir: &Path) -> Certificates {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).unwrap();
    for (name, cn) in [("ca", "pitr-test-CA"), ("other-ca", "another-CA")] {
        openssl(
            dir,
            &format!(
                "req -x509 -new {EC_KEY} -keyout {name}.key -out {name}.crt -days 2 \
                 -config openssl.cnf -extensions ca -subj /CN={cn}"
            ),
        );
    }
    signed(dir, "server", "localhost", "server", 2);
    signed(dir, "client", "certuser", "client", 3);
    chown_to_postgres(dir);
    // PostgreSQL and libpq refuse keys others can read.
    for key in ["server.key", "client.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    Certificates {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// Runs pitr with `env`; asserts the exit code and that no output names the password.
fn expect(pitr: &Pitr, args: &[&str], env: &[(&str, &str)], code_wanted: i32) -> String {
    let out: Output = pitr
        .command(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(PASSWORD),
        "pitr {args:?} printed the password:\n{text}"
    );
    assert_eq!(code(&out), code_wanted, "pitr {args:?}:\n{text}");
    text
}

#[test]
fn tls_and_credentials_against_a_hostssl_only_server() {
    let dir = TestDir::new("tls");
    let repo = Repo::local(&dir);
    let certs = make_certificates(&dir.subdir("certs"));
    let (pitr, mut cluster) = initialised_cluster(&dir, &repo);
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n\
         listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n\
         ssl_ca_file = '{}'",
        pitr.archive_command(),
        certs.server_cert.display(),
        certs.server_key.display(),
        certs.ca.display()
    ));
    // TCP only with TLS and a password (certuser: a client certificate); the socket stays
    // open for the harness's psql.
    std::fs::write(
        cluster.data.join("pg_hba.conf"),
        "local all all trust\nhostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let port = cluster.start_on_tcp(&[]);
    cluster.sql("CREATE ROLE certuser LOGIN SUPERUSER");
    cluster.sql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));

    let ca = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    let tcp = format!("host=localhost port={port} user=postgres dbname=postgres");
    let tried = format!("at host=localhost port={port} user=postgres dbname=postgres");
    let check_ok = ["--check-verify-age", "off", "check", "--dbname"];
    let check = |conninfo: &str, env: &[(&str, &str)], wanted: i32| {
        let mut args = check_ok.to_vec();
        args.push(conninfo);
        expect(&pitr, &args, env, wanted)
    };

    // verify-full against the right CA, password in --dbname: a backup.
    let verified = format!("{tcp} sslmode=verify-full sslrootcert={ca} password={PASSWORD}");
    let mut args = backup_args(&cluster);
    *args.last_mut().unwrap() = verified.clone();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(&pitr, &args, &[], 0);
    // The same as a URL, for check: every check OK, the server's included.
    let url = format!(
        "postgresql://postgres:{PASSWORD}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    );
    let out = check(&url, &[], 0);
    assert!(out.contains("archive"), "{out}");

    // Another CA: a one-line error naming the CA file and what was tried.
    let wrong_ca = format!("{tcp} sslmode=verify-full sslrootcert={other_ca} password={PASSWORD}");
    let mut args = backup_args(&cluster);
    *args.last_mut().unwrap() = wrong_ca.clone();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = expect(&pitr, &args, &[], 9);
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(
        out.contains(&format!(
            "cannot connect to PostgreSQL {tried} sslmode=verify-full: server certificate not \
             signed by the CA in {other_ca} (set --dbname"
        )),
        "{out}"
    );
    // check reports the same as its UNKNOWN server line.
    let out = check(&wrong_ca, &[], 3);
    assert!(out.contains("not signed by the CA in"), "{out}");
    // require with a root certificate file behaves like verify-ca, as in libpq.
    let out = check(
        &format!("{tcp} sslmode=require sslrootcert={other_ca} password={PASSWORD}"),
        &[],
        3,
    );
    assert!(out.contains("not signed by the CA in"), "{out}");
    // require without one encrypts without checking.
    check(
        &format!("{tcp} sslmode=require sslrootcert=/nonexistent/root.crt password={PASSWORD}"),
        &[],
        0,
    );

    // allow: without TLS first, refused by hostssl, then with TLS; prefer (the default): TLS.
    for mode in ["sslmode=allow", ""] {
        check(
            &format!("{tcp} {mode} sslrootcert=/nonexistent/root.crt password={PASSWORD}"),
            &[],
            0,
        );
    }

    // A name the certificate does not carry: verify-full refuses, verify-ca accepts.
    let renamed = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres sslrootcert={ca} \
         password={PASSWORD}"
    );
    let out = check(&format!("{renamed} sslmode=verify-full"), &[], 3);
    assert!(
        out.contains("server certificate does not match host name \"db.invalid\""),
        "{out}"
    );
    check(&format!("{renamed} sslmode=verify-ca"), &[], 0);
    // The system's CAs (sslrootcert=system, verify-full implied) never signed the test CA.
    let out = check(
        &format!("{tcp} sslrootcert=system password={PASSWORD}"),
        &[],
        3,
    );
    assert!(
        out.contains(&format!("{tried} sslmode=verify-full: "))
            && out.contains("sslrootcert=system"),
        "{out}"
    );
    let out = check(&format!("{tcp} sslrootcert=system sslmode=require"), &[], 3);
    assert!(out.contains("weak sslmode \"require\""), "{out}");
    // verify-ca without a root certificate: a configuration error naming the file.
    let out = check(
        &format!("{tcp} sslmode=verify-ca sslrootcert=/nonexistent/root.crt"),
        &[],
        3,
    );
    assert!(
        out.contains("root certificate file \"/nonexistent/root.crt\" does not exist"),
        "{out}"
    );
    let mut args = backup_args(&cluster);
    *args.last_mut().unwrap() = format!("{tcp} sslmode=verify-ca sslrootcert=/nonexistent/r.crt");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = expect(&pitr, &args, &[], 2);
    assert!(
        out.contains("\"/nonexistent/r.crt\" does not exist"),
        "{out}"
    );

    // A client certificate (sslcert/sslkey) instead of a password; libpq's refusal of a key
    // others may read.
    let with_cert = format!(
        "host=localhost port={port} user=certuser dbname=postgres sslmode=verify-full \
         sslrootcert={ca} sslcert={} sslkey={}",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    check(&with_cert, &[], 0);
    std::fs::set_permissions(&certs.client_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&with_cert, &[], 3);
    assert!(
        out.contains(&format!(
            "private key file \"{}\" has group or world access",
            certs.client_key.display()
        )),
        "{out}"
    );
    // Without a certificate, pg_hba.conf's cert rule refuses.
    let out = check(
        &format!("host=localhost port={port} user=certuser sslmode=require sslrootcert={ca}"),
        &[],
        3,
    );
    assert!(
        out.contains("user=certuser dbname=postgres sslmode=require: connection requires a valid client certificate"),
        "{out}"
    );

    // Without TLS the server (hostssl only) refuses; the error says who was refused.
    let mut args = backup_args(&cluster);
    *args.last_mut().unwrap() = format!("{tcp} sslmode=disable password={PASSWORD}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = expect(&pitr, &args, &[], 9);
    assert!(
        out.contains(&format!(
            "cannot connect to PostgreSQL {tried} sslmode=disable: no pg_hba.conf entry for host \
             \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption"
        )),
        "{out}"
    );
    // prefer (the default) with a CA that fails: libpq's retry without TLS, both reasons.
    let out = check(
        &format!("{tcp} sslrootcert={other_ca} password={PASSWORD}"),
        &[],
        3,
    );
    assert!(
        out.contains("not signed by the CA in") && out.contains("then without TLS: no pg_hba"),
        "{out}"
    );

    // The password from PGPASSFILE (0600), then ignored when others may read it.
    let passfile = dir.write(
        "pgpass",
        format!("# test\nlocalhost:{port}:*:postgres:{PASSWORD}\n"),
    );
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile_env = passfile.display().to_string();
    let verified_no_password = format!("{tcp} sslmode=verify-full sslrootcert={ca}");
    check(&verified_no_password, &[("PGPASSFILE", &passfile_env)], 0);
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&verified_no_password, &[("PGPASSFILE", &passfile_env)], 3);
    assert!(out.contains("has group or world access"), "{out}");
    assert!(out.contains("the server asks for a password"), "{out}");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A service from PGSERVICEFILE: everything but the password there, the password from
    // the password file; then the service named by PGSERVICE, for a backup without --dbname.
    let service_file = dir.write(
        "pg_service.conf",
        format!(
            "[other]\nhost=elsewhere.invalid\n\n[pitrtls]\nhost=localhost\nport={port}\n\
             user=postgres\ndbname=postgres\nsslmode=verify-full\nsslrootcert={ca}\n"
        ),
    );
    let service_env = service_file.display().to_string();
    let env = [
        ("PGSERVICEFILE", service_env.as_str()),
        ("PGSYSCONFDIR", "/nonexistent"),
        ("PGPASSFILE", passfile_env.as_str()),
    ];
    check("service=pitrtls", &env, 0);
    let out = check("service=missing", &env, 3);
    assert!(
        out.contains("definition of service \"missing\" not found"),
        "{out}"
    );
    let mut env_service = env.to_vec();
    env_service.push(("PGSERVICE", "pitrtls"));
    expect(
        &pitr,
        &["backup", "--pgdata", &cluster.data.display().to_string()],
        &env_service,
        0,
    );

    // A --dbname that does not parse, with a password in it: shown redacted, exit 2.
    for broken in [
        format!("{tcp} password={PASSWORD} 'unterminated"),
        format!("postgresql://postgres:{PASSWORD}@localhost:notaport/postgres"),
    ] {
        let mut args = backup_args(&cluster);
        *args.last_mut().unwrap() = broken;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = expect(&pitr, &args, &[], 2);
        assert!(out.contains("is not a connection string"), "{out}");
        assert!(out.contains("***"), "{out}");
    }
    // A wrong password in the URL: the server's words, not the password.
    let out = check(
        &format!(
            "postgresql://postgres:not-the-password@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
        ),
        &[],
        3,
    );
    assert!(
        out.contains("password authentication failed for user \"postgres\""),
        "{out}"
    );
}
