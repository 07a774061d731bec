//! A zstd repository on a real PostgreSQL 15 cluster: `pitr init --compression zstd` fixes
//! the type, WAL and backups are stored as `.zst` objects that the zstd CLI reads, a restore
//! reaches its target, `pitr verify` passes, and asking for lz4 later is refused.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const TABLE_STATE: &str = "select count(*) || ':' || coalesce(md5(string_agg(id || ':' || v, ',' \
                           order by id)), '') from t";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

async fn zstd_repository(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = PgCluster::initdb(&dir, "pg", &["--wal-segsize=1"]);
    let out = pitr
        .command(["init", "--compression", "zst", "--compression-level", "5"])
        .arg("--pgdata")
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("compression zstd level 5"), "{said}");

    // archive-push writes at another level: the type is the repository's, the level free.
    let archiver = Pitr {
        bin: pitr.bin.clone(),
        repo: pitr.repo.clone(),
        env: [
            repo.env.clone(),
            vec![("PITR_COMPRESSION_LEVEL".into(), "1".into())],
        ]
        .concat(),
    };
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n",
        archiver.archive_command()
    ));
    cluster.start();
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
    let backup = pitr.backup(&cluster);
    cluster.sql("update t set v = v || '-after' where id % 3 = 0");
    cluster.sql("delete from t where id % 11 = 0");
    let state = cluster.sql(TABLE_STATE);
    let target = cluster
        .sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1100));
    // Recovery stops at the first commit after the target: make sure there is one.
    cluster.sql("insert into t values (-1, 'after the target')");
    let last = cluster.archive_current_segment(Duration::from_secs(30));
    cluster.stop();

    // Every compressed object is a .zst object holding zstd frames.
    let storage = repo.storage().await;
    let metas = storage.list("").await.unwrap();
    let compressed: Vec<&str> = metas
        .iter()
        .map(|m| m.key.as_str())
        .filter(|k| !k.ends_with(".json"))
        .collect();
    assert!(
        compressed.iter().all(|k| k.ends_with(".zst")),
        "{compressed:?}"
    );
    assert!(
        compressed
            .iter()
            .any(|k| k.ends_with(&format!("/{last}.zst")))
    );
    assert!(
        compressed
            .iter()
            .any(|k| k.starts_with(&format!("backup/{backup}/data/")))
    );
    for key in &compressed {
        let bytes = pitr::storage::read_all(&*storage, key).await.unwrap();
        assert_eq!(bytes[..4], ZSTD_MAGIC, "{key}");
    }

    // The zstd CLI restores a stored segment to what archive-get restores.
    let key = compressed
        .iter()
        .find(|k| k.ends_with(&format!("/{last}.zst")))
        .unwrap();
    let object = dir.write(
        "segment.zst",
        pitr::storage::read_all(&*storage, key).await.unwrap(),
    );
    let by_cli = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(&object)
        .output()
        .expect("the zstd CLI (apt-get install zstd)");
    assert!(by_cli.status.success(), "{}", stderr(&by_cli));
    let fetched = dir.path().join("fetched");
    let out = pitr.run(["archive-get", last.as_str(), fetched.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let fetched = std::fs::read(&fetched).unwrap();
    assert_eq!(fetched.len(), 1 << 20);
    assert!(by_cli.stdout == fetched, "zstd -d differs from archive-get");

    let out = pitr.run(["verify"]);
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    let data = dir.path().join("restored");
    let out = pitr
        .command(["restore", "--target-time", &target, "--pgdata"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock-restored", data);
    restored.start_with_env(&repo.env);
    restored.wait_paused(Duration::from_secs(60));
    assert_eq!(restored.sql(TABLE_STATE), state);
    restored.stop();

    // Asking for lz4 later: one line that says the type is fixed and what to do.
    let mut args = backup_args(&cluster);
    args.extend(["--compression".into(), "lz4".into()]);
    let out = pitr.run(&args);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("stores zstd objects")
            && err.contains("fixed when `pitr init` creates a repository")
            && err.contains("init a new repository"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_repository_local() {
    zstd_repository("compression-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_repository_s3() {
    let server = S3Server::start("compression").await;
    zstd_repository("compression-s3", |_| Repo::s3(&server, "zstd")).await;
}
