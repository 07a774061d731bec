//! `pitr restore-table` and `pitr restore --db-include` on real parts (issue 13): a dropped
//! table and a table that lost half its rows come back as they were (checksum of every
//! row), other tables are untouched, `--replace` swaps in one transaction (a failure leaves
//! the live table as it was), and only the included database is read from the repository.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A checksum of every row of `table`, in key order.
fn checksum(cluster: &PgCluster, database: &str, table: &str) -> String {
    cluster.sql_in(
        database,
        &format!(
            "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
        ),
    )
}

fn now(cluster: &PgCluster) -> String {
    cluster.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

fn run(pitr: &Pitr, args: &[String]) -> Output {
    let out = pitr.run(args);
    println!(
        "{args:?}: exit {}\n{}\n{}",
        code(&out),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn restore_table(pitr: &Pitr, cluster: &PgCluster, scratch: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec![
        "restore-table".into(),
        "--into".into(),
        cluster.conninfo("app"),
        "--scratch-dir".into(),
        scratch.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    run(pitr, &all)
}

/// The on-disk size of a database's files in the backup (`base/<oid>`) and of everything
/// that is no database's, from the live cluster.
fn sizes(cluster: &PgCluster) -> (u64, u64, u64) {
    let app: u64 = cluster
        .sql("SELECT pg_database_size('app')")
        .parse()
        .unwrap();
    let big: u64 = cluster
        .sql("SELECT pg_database_size('big')")
        .parse()
        .unwrap();
    let all_databases: u64 = cluster
        .sql("SELECT sum(pg_database_size(oid)) FROM pg_database")
        .parse()
        .unwrap();
    let cluster_wide =
        tree_size(&cluster.data) - all_databases - tree_size(&cluster.data.join("pg_wal"));
    (app, big, cluster_wide)
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[test]
fn tables_come_back_as_they_were_and_only_their_database_is_read() {
    let dir = TestDir::new("restore-table");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("CREATE DATABASE app");
    cluster.sql("CREATE DATABASE big");
    cluster.sql_in(
        "app",
        "CREATE TABLE orders (id serial PRIMARY KEY, customer int NOT NULL, note text); \
         CREATE INDEX orders_customer ON orders (customer); \
         INSERT INTO orders (customer, note) SELECT g % 97, md5(g::text) FROM generate_series(1, 20000) g; \
         CREATE TABLE customers (id int PRIMARY KEY, name text); \
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 500) g; \
         CREATE TABLE ledger (id int PRIMARY KEY, amount numeric); \
         INSERT INTO ledger SELECT g, g * 1.5 FROM generate_series(1, 3000) g",
    );
    // A second database several times larger, which a restore of app must not read.
    cluster.sql_in(
        "big",
        "CREATE TABLE blob AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS pad \
         FROM generate_series(1, 600000) g",
    );
    let id = pitr.backup(&cluster);
    cluster.sql_in(
        "app",
        "UPDATE orders SET note = 'changed' WHERE id % 10 = 0",
    );
    let orders = checksum(&cluster, "app", "orders");
    let customers = checksum(&cluster, "app", "customers");
    let ledger = checksum(&cluster, "app", "ledger");
    std::thread::sleep(Duration::from_millis(1100));
    let before_drop = now(&cluster);
    std::thread::sleep(Duration::from_millis(1100));
    cluster.sql_in("app", "DROP TABLE orders");
    // Later work on other tables stays.
    cluster.sql_in("app", "INSERT INTO customers VALUES (501, 'late')");
    let customers_now = checksum(&cluster, "app", "customers");
    assert_ne!(customers_now, customers);
    cluster.archive_current_segment(WAIT);
    let scratch = dir.subdir("scratch");

    // The dropped table, back under its own name.
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &[
            "--table",
            "public.orders",
            "--target-time",
            &before_drop,
            "--as",
            "orders",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup"], id.as_str());
    assert_eq!(report["tables"][0]["rows"], 20000);
    assert_eq!(checksum(&cluster, "app", "orders"), orders);
    assert_eq!(checksum(&cluster, "app", "customers"), customers_now);
    assert_eq!(checksum(&cluster, "app", "ledger"), ledger);
    // Its serial sequence and indexes came with it, and work.
    cluster.sql_in("app", "INSERT INTO orders (customer) VALUES (1)");
    assert_eq!(
        cluster.sql_in(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'"
        ),
        "2"
    );
    cluster.sql_in(
        "app",
        "DELETE FROM orders WHERE customer = 1 AND note IS NULL",
    );
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());

    // Bytes read: the app database and the cluster-wide files, not big.
    let (app_size, big_size, cluster_wide) = sizes(&cluster);
    let read = report["bytes_read"].as_u64().unwrap();
    let bound = (app_size + cluster_wide) * 11 / 10;
    assert!(read <= bound, "read {read} bytes, more than {bound}");
    assert!(read < big_size / 2, "read {read} bytes, big is {big_size}");

    // Half the rows deleted: by default a copy beside the live table, then --replace.
    std::thread::sleep(Duration::from_millis(1100));
    let before_delete = now(&cluster);
    let ledger_before = checksum(&cluster, "app", "ledger");
    std::thread::sleep(Duration::from_millis(1100));
    cluster.sql_in("app", "DELETE FROM ledger WHERE id % 2 = 0");
    cluster.archive_current_segment(WAIT);
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &["--table", "ledger", "--target-time", &before_delete],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let copy = cluster.sql_in(
        "app",
        "SELECT relname FROM pg_class WHERE relname LIKE 'ledger_restored_%' AND relkind = 'r'",
    );
    assert!(!copy.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(checksum(&cluster, "app", &copy), ledger_before);
    assert_eq!(
        cluster.sql_in("app", "SELECT count(*) FROM ledger"),
        "1500",
        "the live table is untouched without --replace"
    );

    // --replace fails as a whole when the live table cannot be dropped (a view uses it):
    // the live table stays as it was.
    cluster.sql_in(
        "app",
        "CREATE VIEW big_amounts AS SELECT * FROM ledger WHERE amount > 10",
    );
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &[
            "--table",
            "ledger",
            "--target-time",
            &before_delete,
            "--replace",
        ],
    );
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(stderr(&out).contains("depend"), "{}", stderr(&out));
    assert_eq!(cluster.sql_in("app", "SELECT count(*) FROM ledger"), "1500");
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());

    cluster.sql_in("app", "DROP VIEW big_amounts");
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &[
            "--table",
            "ledger",
            "--target-time",
            &before_delete,
            "--replace",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(checksum(&cluster, "app", "ledger"), ledger_before);
    assert_eq!(checksum(&cluster, "app", "orders"), orders);
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());

    // A whole schema, beside the live one.
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &[
            "--schema",
            "public",
            "--target-time",
            &before_delete,
            "--as",
            "public_then",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        checksum(&cluster, "app", "public_then.ledger"),
        ledger_before
    );
    assert_eq!(checksum(&cluster, "app", "public_then.orders"), orders);
    assert_eq!(checksum(&cluster, "app", "public.ledger"), ledger_before);

    // A table that did not exist at the target: refused, live database untouched.
    let out = restore_table(
        &pitr,
        &cluster,
        &scratch,
        &["--table", "nosuch", "--target-time", &before_delete],
    );
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("did not exist"), "{}", stderr(&out));
}

#[test]
fn restore_db_include_reads_and_restores_only_the_named_database() {
    let dir = TestDir::new("db-include");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("CREATE DATABASE keep");
    cluster.sql("CREATE DATABASE skip");
    cluster.sql_in(
        "keep",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g",
    );
    cluster.sql_in(
        "skip",
        "CREATE TABLE s AS SELECT g AS id, repeat(md5(g::text), 4) AS v \
         FROM generate_series(1, 200000) g",
    );
    let skip_oid = cluster.sql("SELECT oid FROM pg_database WHERE datname = 'skip'");
    let keep_sum = checksum(&cluster, "keep", "t");
    pitr.backup(&cluster);
    cluster.archive_current_segment(WAIT);
    cluster.stop();

    let data = dir.path().join("restored");
    let out = run(
        &pitr,
        &[
            "restore".into(),
            "--pgdata".into(),
            data.display().to_string(),
            "--db-include".into(),
            "keep".into(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not restored (--db-include): "), "{text}");
    assert!(text.contains("skip"), "{text}");
    // The excluded database's files are there, their size, with no block allocated.
    let skip_dir = data.join("base").join(&skip_oid);
    let (mut logical, mut allocated) = (0u64, 0u64);
    for entry in std::fs::read_dir(&skip_dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        logical += meta.len();
        allocated += meta.blocks() * 512;
    }
    assert!(logical > 10 << 20, "{logical}");
    assert_eq!(allocated, 0, "excluded files are sparse");

    // The included database opens with its data; the excluded one is dropped.
    let mut restored = PgCluster::restored(&dir, "restored-run", data);
    restored.start();
    let deadline = std::time::Instant::now() + WAIT;
    while restored.sql_in("keep", "SELECT pg_is_in_recovery()") == "t" {
        assert!(std::time::Instant::now() < deadline, "still in recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(checksum(&restored, "keep", "t"), keep_sum);
    restored.sql_in("keep", "DROP DATABASE skip");
    restored.stop();

    // Unknown names are refused before anything is written.
    let out = run(
        &pitr,
        &[
            "restore".into(),
            "--pgdata".into(),
            dir.path().join("other").display().to_string(),
            "--db-include".into(),
            "nosuch".into(),
        ],
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("keep"), "{}", stderr(&out));
    assert!(!dir.path().join("other").exists());
}
