//! The replication connection (`server::replication`) against a real PostgreSQL 15: over the
//! Unix socket (trust) and over TCP with TLS verify-full and scram-sha-256 (channel-bound),
//! or MD5 without TLS; IDENTIFY_SYSTEM, TIMELINE_HISTORY's error, a slot created and dropped,
//! BASE_BACKUP streamed to its end, START_REPLICATION stopped cleanly; and the refusals a
//! user must act on, each one line naming what to change. One cluster serves every case.

use std::path::Path;

use pitr::server::ConnectSettings;
use pitr::server::replication::{
    ReplicationConnection, ReplicationError, ReplicationEvent, ReplicationMode,
};
use pitr::server::settings::{Surroundings, resolve};

use crate::common::*;

const PASSWORD: &str = "Repl-pw-5e1d07";

/// The settings of `conninfo` alone: no environment, no password file, no ~/.postgresql.
fn settings(conninfo: &str) -> ConnectSettings {
    let env = |_: &str| None;
    resolve(
        Some(conninfo),
        &Surroundings {
            env: &env,
            home: Some("/nonexistent".into()),
            os_user: Some("postgres".into()),
            default_socket_dir_exists: false,
        },
    )
    .unwrap()
}

async fn connect(conninfo: &str, mode: ReplicationMode) -> ReplicationConnection {
    ReplicationConnection::connect(&settings(conninfo), mode)
        .await
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

/// The one-line error of a connection that must fail; never the password.
async fn refused(conninfo: &str, mode: ReplicationMode) -> String {
    match ReplicationConnection::connect(&settings(conninfo), mode).await {
        Ok(_) => panic!("{conninfo}: connected"),
        Err(e) => {
            let text = e.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(!text.contains(PASSWORD), "{text}");
            text
        }
    }
}

async fn system_identifier(connection: &mut ReplicationConnection) -> String {
    let sets = connection.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(
        sets[0].columns,
        ["systemid", "timeline", "xlogpos", "dbname"],
        "{sets:?}"
    );
    sets[0].value(0, "systemid").unwrap().to_owned()
}

fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            tree_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

const HBA: &str = "\
local all all trust
local replication postgres trust
hostssl replication postgres 127.0.0.1/32 scram-sha-256
hostssl replication norepl 127.0.0.1/32 scram-sha-256
host replication md5user 127.0.0.1/32 md5
hostssl all all 127.0.0.1/32 scram-sha-256
";

#[tokio::test(flavor = "multi_thread")]
async fn replication_connection_against_postgres_15() {
    let dir = TestDir::new("replication");
    let certs = crate::tls::make_certificates(&dir.subdir("certs"));
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    cluster.configure(&format!(
        "listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
        certs.server_cert.display(),
        certs.server_key.display()
    ));
    std::fs::write(cluster.data.join("pg_hba.conf"), HBA).unwrap();
    let port = cluster.start_on_tcp(&[]);
    cluster.sql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));
    cluster.sql(&format!("CREATE ROLE norepl LOGIN PASSWORD '{PASSWORD}'"));
    cluster.sql(&format!(
        "CREATE ROLE nohba LOGIN REPLICATION PASSWORD '{PASSWORD}'"
    ));
    cluster.sql(&format!(
        "SET password_encryption = 'md5'; \
         CREATE ROLE md5user LOGIN REPLICATION PASSWORD '{PASSWORD}'"
    ));
    let expected_id = cluster.sql("SELECT system_identifier FROM pg_control_system()");
    let ca = certs.ca.display().to_string();
    let socket = cluster.conninfo("postgres");
    let tls = format!(
        "host=localhost port={port} sslmode=verify-full sslrootcert={ca} password={PASSWORD}"
    );

    // IDENTIFY_SYSTEM over the socket, then over TLS (SCRAM bound to the channel).
    let mut local = connect(&socket, ReplicationMode::Physical).await;
    assert_eq!(system_identifier(&mut local).await, expected_id);
    assert!(local.server_version_num().unwrap() >= 150000);
    assert!(!local.channel_bound());
    let mut remote = connect(&format!("{tls} user=postgres"), ReplicationMode::Physical).await;
    assert_eq!(system_identifier(&mut remote).await, expected_id);
    assert!(remote.channel_bound());
    // MD5 over plain TCP.
    let mut md5 = connect(
        &format!("host=127.0.0.1 port={port} sslmode=disable user=md5user password={PASSWORD}"),
        ReplicationMode::Physical,
    )
    .await;
    assert_eq!(system_identifier(&mut md5).await, expected_id);
    md5.close().await.unwrap();
    // A logical walsender names its database.
    let mut logical = connect(&socket, ReplicationMode::Database).await;
    let sets = logical.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(sets[0].value(0, "dbname"), Some("postgres"));
    drop(logical);

    // The server's error is typed, and the connection takes the next command.
    match local.simple_query("TIMELINE_HISTORY 1").await {
        Err(ReplicationError::Server(error)) => {
            assert_eq!(error.code, "58P01", "{error}");
            assert!(error.message.contains("00000001.history"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(system_identifier(&mut local).await, expected_id);

    // A slot, seen in pg_replication_slots while it exists.
    let sets = local
        .simple_query("CREATE_REPLICATION_SLOT pitr_test PHYSICAL RESERVE_WAL")
        .await
        .unwrap();
    assert_eq!(sets[0].value(0, "slot_name"), Some("pitr_test"), "{sets:?}");
    assert_eq!(
        cluster.sql("SELECT slot_name FROM pg_replication_slots"),
        "pitr_test"
    );
    assert!(
        local
            .simple_query("DROP_REPLICATION_SLOT pitr_test")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        cluster.sql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    // BASE_BACKUP over TLS, streamed to its end: 15's single COPY stream of sub-messages.
    let base = tree_size(&cluster.data.join("base"));
    remote
        .start("BASE_BACKUP (LABEL 'pitr-test', PROGRESS, CHECKPOINT 'fast', MANIFEST 'yes')")
        .await
        .unwrap();
    let (mut result_sets, mut copies, mut archives) = (0, 0, 0);
    let (mut archive_bytes, mut manifest) = (0u64, Vec::new());
    let mut in_manifest = false;
    while let Some(event) = remote.next_event().await.unwrap() {
        match event {
            ReplicationEvent::ResultSet(_) => result_sets += 1,
            ReplicationEvent::CopyStart { both } => {
                assert!(!both);
                copies += 1;
            }
            ReplicationEvent::CopyData(payload) => match payload.first() {
                Some(b'n') => archives += 1,
                Some(b'm') => in_manifest = true,
                Some(b'd') if in_manifest => manifest.extend_from_slice(&payload[1..]),
                Some(b'd') => archive_bytes += payload.len() as u64 - 1,
                Some(b'p') => {}
                other => panic!("unknown BASE_BACKUP message {other:?}"),
            },
            ReplicationEvent::CopyDone | ReplicationEvent::CommandComplete(_) => {}
            ReplicationEvent::Ready => break,
        }
    }
    assert_eq!(copies, 1);
    assert_eq!(archives, 1, "one tablespace");
    // The start position, the tablespaces, the end position.
    assert!(result_sets >= 3, "{result_sets}");
    assert!(archive_bytes > base, "{archive_bytes} bytes, base/ {base}");
    let manifest = String::from_utf8(manifest).unwrap();
    assert!(
        manifest.contains("\"PostgreSQL-Backup-Manifest-Version\"")
            && manifest.contains("\"WAL-Ranges\""),
        "{manifest}"
    );
    assert_eq!(system_identifier(&mut remote).await, expected_id);
    remote.close().await.unwrap();

    // START_REPLICATION from the current position: WAL arrives after a switch, then a
    // clean stop (CopyDone both ways) leaves the connection ready for the next command.
    let sets = local.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    let (tli, start) = (
        sets[0].value(0, "timeline").unwrap().to_owned(),
        sets[0].value(0, "xlogpos").unwrap().to_owned(),
    );
    local
        .start(&format!(
            "START_REPLICATION PHYSICAL {start} TIMELINE {tli}"
        ))
        .await
        .unwrap();
    assert_eq!(
        local.next_event().await.unwrap(),
        Some(ReplicationEvent::CopyStart { both: true })
    );
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x; SELECT pg_switch_wal()");
    let received = loop {
        match local.next_event().await.unwrap() {
            Some(ReplicationEvent::CopyData(payload)) if payload.first() == Some(&b'w') => {
                let start = u64::from_be_bytes(payload[1..9].try_into().unwrap());
                break start + (payload.len() as u64 - 25);
            }
            Some(ReplicationEvent::CopyData(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    // A standby status update: written, flushed, applied up to what arrived.
    let mut status = vec![b'r'];
    for _ in 0..3 {
        status.extend_from_slice(&received.to_be_bytes());
    }
    status.extend_from_slice(&0i64.to_be_bytes());
    status.push(0);
    local.send_copy_data(&status).await.unwrap();
    local.send_copy_done().await.unwrap();
    let mut server_done = false;
    loop {
        match local.next_event().await.unwrap() {
            Some(ReplicationEvent::CopyData(_)) => assert!(!server_done),
            Some(ReplicationEvent::CopyDone) => server_done = true,
            Some(ReplicationEvent::CommandComplete(_) | ReplicationEvent::ResultSet(_)) => {}
            Some(ReplicationEvent::Ready) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(server_done);
    assert_eq!(system_identifier(&mut local).await, expected_id);
    local.close().await.unwrap();

    // Refusals: each names what to change.
    let out = refused(
        &format!(
            "host=localhost port={port} sslmode=verify-full sslrootcert={ca} user=postgres \
             password=Wrong-pw-0451"
        ),
        ReplicationMode::Physical,
    )
    .await;
    assert!(
        out.contains("password authentication failed for user \"postgres\"")
            && !out.contains("Wrong-pw-0451"),
        "{out}"
    );
    let out = refused(&format!("{tls} user=norepl"), ReplicationMode::Physical).await;
    assert!(
        out.contains("grant REPLICATION to norepl: ALTER ROLE norepl REPLICATION"),
        "{out}"
    );
    let out = refused(&format!("{tls} user=nohba"), ReplicationMode::Physical).await;
    assert!(
        out.contains("no pg_hba.conf entry for replication connection")
            && out.contains("add a line \"hostssl replication nohba 127.0.0.1/32 scram-sha-256\""),
        "{out}"
    );
    // No walsender allowed at all.
    cluster.configure_auto("max_wal_senders = 0");
    cluster.stop();
    cluster.start();
    let out = refused(&socket, ReplicationMode::Physical).await;
    assert!(
        out.contains("exceeds max_wal_senders (currently 0)")
            && out.contains("raise max_wal_senders in postgresql.conf"),
        "{out}"
    );
}

/// PostgreSQL 13's BASE_BACKUP: its positional syntax, one CopyOut per tablespace (the main
/// one last), then the manifest's own CopyOut, between result sets.
#[tokio::test(flavor = "multi_thread")]
async fn base_backup_on_13_streams_one_copy_per_tablespace_then_the_manifest() {
    let Some(bin) = pg_bin_of(13) else { return };
    let dir = TestDir::new("replication-13");
    let mut cluster = PgCluster::initdb_with(&dir, "pg", &bin, &[]);
    cluster.start();
    let tablespace = dir.subdir("ts");
    chown_to_postgres(&tablespace);
    cluster.sql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        tablespace.display()
    ));
    cluster.sql("CREATE TABLE t TABLESPACE ts AS SELECT generate_series(1, 10000) AS x");
    let mut connection = connect(&cluster.conninfo("postgres"), ReplicationMode::Physical).await;
    assert_eq!(connection.server_version_num().map(|v| v / 10000), Some(13));
    connection
        .start("BASE_BACKUP LABEL 'pitr-13' PROGRESS FAST MANIFEST 'yes'")
        .await
        .unwrap();
    let mut streams: Vec<Vec<u8>> = Vec::new();
    let mut result_sets = Vec::new();
    while let Some(event) = connection.next_event().await.unwrap() {
        match event {
            ReplicationEvent::ResultSet(set) => result_sets.push(set),
            ReplicationEvent::CopyStart { both } => {
                assert!(!both);
                streams.push(Vec::new());
            }
            ReplicationEvent::CopyData(payload) => {
                let stream = streams.last_mut().unwrap();
                // The tar streams are only counted; the manifest is kept.
                if stream.len() < 1 << 20 {
                    stream.extend_from_slice(&payload);
                }
            }
            ReplicationEvent::CopyDone | ReplicationEvent::CommandComplete(_) => {}
            ReplicationEvent::Ready => break,
        }
    }
    // The tablespace, the main directory, the manifest.
    assert_eq!(streams.len(), 3);
    let manifest = String::from_utf8_lossy(&streams[2]);
    assert!(
        manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,"),
        "{manifest}"
    );
    // The start position, the tablespaces (with the extra one), the end position.
    assert_eq!(result_sets.len(), 3, "{result_sets:?}");
    assert_eq!(result_sets[1].rows.len(), 2, "{:?}", result_sets[1]);
    assert_eq!(
        result_sets[1].value(0, "spclocation"),
        Some(tablespace.to_str().unwrap())
    );
    connection.close().await.unwrap();
}
