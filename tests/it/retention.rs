//! Retention on real parts: a repository of 9 backups over three timelines (backups, a
//! restore promoted to timeline 2 that archives on, another to timeline 3), built once and
//! copied for each scenario, on a file and an S3 repository. After each `pitr expire`: the
//! kept backups are the rule's, every kept backup passes the restore pre-flight, every point
//! that was restorable inside keep_within still is, nothing the report removed is left, and
//! `pitr verify` passes; one kept backup is restored and started. Pins and annotations;
//! kill -9 during expire; --dry-run removes nothing and names the rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crate::common::*;
use pitr::storage::{PutMode, PutPayload, Storage};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

struct Built {
    dir: TestDir,
    base: Repo,
    /// Backup ids, oldest first; `stops[i]` is when backup i finished.
    ids: Vec<String>,
    stops: Vec<DateTime<Utc>>,
    /// Points in time noted while building (server clock, UTC), oldest first.
    times: Vec<String>,
    /// Rows in table t when backup i started (for the restore that starts).
    rows_at: Vec<String>,
}

fn now_utc(cluster: &PgCluster) -> String {
    cluster.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn insert(cluster: &PgCluster, from: u32, to: u32) {
    cluster.sql(&format!(
        "insert into t select g, md5(g::text) from generate_series({from}, {to}) g"
    ));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert_eq!(code(out), 0, "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Takes a backup with extra flags and environment; records its id and stop time.
fn backup_with(
    pitr: &Pitr,
    cluster: &PgCluster,
    extra: &[&str],
    env: &[(&str, &str)],
    built: &mut Built,
) -> Output {
    let rows = cluster.sql("select count(*) from t");
    let mut args = backup_args(cluster);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = pitr
        .command(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).split_whitespace().nth(1).unwrap().to_owned();
    let list = json_of(&pitr.run(["list", "--json"]));
    let entry = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap()
        .clone();
    let stop = DateTime::parse_from_rfc3339(entry["stop_time"].as_str().unwrap())
        .unwrap()
        .to_utc();
    built.ids.push(id);
    built.stops.push(stop);
    built.rows_at.push(rows);
    // Backups a few seconds apart, so windows can fall between them.
    std::thread::sleep(Duration::from_millis(1500));
    out
}

fn backup(pitr: &Pitr, cluster: &PgCluster, extra: &[&str], built: &mut Built) {
    backup_with(pitr, cluster, extra, &[], built);
}

/// Restores the newest backup before restore point `point`, promotes it there and starts
/// it archiving into the same repository.
fn promote_at(pitr: &Pitr, dir: &TestDir, repo: &Repo, point: &str, name: &str) -> PgCluster {
    let data = dir.path().join(name);
    let out = pitr
        .command([
            "restore",
            "--target-name",
            point,
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ])
        .arg("--pgdata")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut cluster = PgCluster::restored_archiving(dir, &format!("sock-{name}"), data);
    cluster.start_with_env(&repo.env);
    cluster.wait_promoted(WAIT);
    cluster
}

/// Timeline 1: backups 0-3 (3 pinned and annotated), a restore point after backup 2;
/// timeline 2 promoted there: backups 4-6, a restore point after backup 5; timeline 3
/// promoted there: backups 7-8.
fn build() -> Built {
    let dir = TestDir::new("retention");
    let base = Repo::local(&dir);
    let (pitr, mut one) = archiving_cluster(&dir, &base, "autovacuum = off");
    let mut built = Built {
        base,
        ids: vec![],
        stops: vec![],
        times: vec![],
        rows_at: vec![],
        dir,
    };
    one.sql("create table t (id int primary key, v text)");
    insert(&one, 1, 100);
    backup(&pitr, &one, &[], &mut built);
    insert(&one, 101, 200);
    backup(&pitr, &one, &[], &mut built);
    insert(&one, 201, 300);
    backup(&pitr, &one, &[], &mut built);
    insert(&one, 301, 400);
    one.sql("select pg_create_restore_point('fork1')");
    insert(&one, 401, 500);
    backup(
        &pitr,
        &one,
        &[
            "--pin",
            "--annotate",
            "purpose=audit",
            "--annotate",
            "ticket=42",
        ],
        &mut built,
    );
    insert(&one, 501, 600);
    one.archive_current_segment(WAIT);
    one.stop();

    let mut two = promote_at(&pitr, &built.dir, &built.base, "fork1", "two");
    insert(&two, 1001, 1100);
    backup(&pitr, &two, &[], &mut built);
    insert(&two, 1101, 1200);
    backup(&pitr, &two, &[], &mut built);
    insert(&two, 1201, 1300);
    two.sql("select pg_create_restore_point('fork2')");
    insert(&two, 1301, 1400);
    backup(&pitr, &two, &[], &mut built);
    insert(&two, 1401, 1500);
    two.archive_current_segment(WAIT);
    two.stop();

    let mut three = promote_at(&pitr, &built.dir, &built.base, "fork2", "three");
    for round in 0..2u32 {
        built.times.push(now_utc(&three));
        insert(&three, 2001 + round * 200, 2100 + round * 200);
        // A rule in the environment: the backup expires after itself (here keeping all).
        let out = backup_with(&pitr, &three, &[], &[("PITR_KEEP_LAST", "100")], &mut built);
        assert!(
            stdout(&out).contains("removed 0 backups, "),
            "{}",
            stdout(&out)
        );
        built.times.push(now_utc(&three));
        insert(&three, 2101 + round * 200, 2200 + round * 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    built.times.push(now_utc(&three));
    insert(&three, 3001, 3100);
    three.archive_current_segment(WAIT);
    three.stop();
    assert_eq!(built.ids.len(), 9);
    built
}

/// Where a copy of the base repository lives for one scenario.
enum Target<'a> {
    File,
    S3(&'a std::sync::Arc<S3Server>),
}

/// A fresh copy of the base repository for one scenario, and pitr for it (the directory
/// holds the copy and the binary while the scenario runs).
async fn copy(built: &Built, target: &Target<'_>, name: &str) -> (TestDir, Repo, Pitr) {
    let pitr::storage::RepoLocation::Fs(base) = &built.base.location else {
        unreachable!()
    };
    let dir = TestDir::new(&format!("retention-{name}"));
    let repo = match target {
        Target::File => {
            let repo = Repo::local(&dir);
            let pitr::storage::RepoLocation::Fs(to) = &repo.location else {
                unreachable!()
            };
            run_ok(Command::new("cp").arg("-a").arg(base.join(".")).arg(to));
            repo
        }
        Target::S3(server) => {
            let repo = Repo::s3(server, name);
            let store = repo.storage().await;
            for (key, path) in files_under(base) {
                let bytes = std::fs::read(&path).unwrap();
                store
                    .put(&key, PutPayload::from_bytes(bytes), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
            repo
        }
    };
    let pitr = Pitr::install(&dir, &repo);
    (dir, repo, pitr)
}

/// Every object of a file repository, by key (the staging area is not part of it).
fn files_under(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let key = path.strip_prefix(root).unwrap().display().to_string();
            if key.starts_with(".tmp") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push((key, path));
            }
        }
    }
    found.sort();
    found
}

async fn keys(repo: &Repo) -> BTreeSet<String> {
    let store: std::sync::Arc<dyn Storage> = repo.storage().await;
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

fn listed_ids(pitr: &Pitr) -> Vec<String> {
    let list = json_of(&pitr.run(["list", "--json"]));
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Exit codes of the pre-flight for each noted time (default timeline: latest).
fn preflight_times(pitr: &Pitr, times: &[String]) -> Vec<i32> {
    times
        .iter()
        .map(|time| code(&pitr.run(["restore", "--dry-run", "--target-time", time.as_str()])))
        .collect()
}

fn expire(pitr: &Pitr, rule: &[&str]) -> Value {
    let mut args = vec!["expire", "--json"];
    args.extend(rule);
    json_of(&pitr.run(&args))
}

fn ids_of(report: &Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

fn rules_of(report: &Value, id: &str) -> Vec<String> {
    report["kept_backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not kept: {report}"))["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// After an expire: the listed backups are the kept ones, each passes the pre-flight on its
/// own timeline, nothing removed is left, nothing of a removed backup is left, and verify
/// passes.
async fn check_after(pitr: &Pitr, repo: &Repo, report: &Value) {
    let kept = ids_of(report, "kept_backups");
    let mut listed = listed_ids(pitr);
    listed.sort();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(listed, expected, "{report}");
    for id in &kept {
        let out = pitr.run([
            "restore",
            "--dry-run",
            "--backup",
            id,
            "--target",
            "immediate",
            "--target-timeline",
            "current",
        ]);
        assert_eq!(code(&out), 0, "kept backup {id}: {}", stderr(&out));
    }
    let left = keys(repo).await;
    for removed in ids_of(report, "removed_backups") {
        let prefix = format!("backup/{removed}/");
        assert!(
            !left.iter().any(|k| k.starts_with(&prefix)),
            "{removed} left objects"
        );
    }
    let left_wal: BTreeSet<String> = left
        .iter()
        .filter_map(|k| keys::wal_name_of_key(k))
        .map(|n| n.to_string())
        .collect();
    for name in report["removed_wal"].as_array().unwrap() {
        assert!(!left_wal.contains(name.as_str().unwrap()), "{name} left");
    }
    // Every WAL file left is a history file or inside a kept stretch.
    let kept_wal = report["kept_wal"].as_array().unwrap();
    for name in &left_wal {
        if name.ends_with(".history") {
            continue;
        }
        let (timeline, segment) = (&name[..8], &name[..24]);
        let inside = kept_wal.iter().any(|range| {
            let first = range["first_segment"].as_str().unwrap();
            format!("{:08X}", range["timeline"].as_u64().unwrap()) == timeline
                && segment[8..] >= first[8..]
                && range["last_segment"]
                    .as_str()
                    .is_none_or(|last| segment[8..] <= last[8..])
        });
        assert!(inside, "{name} is outside every kept stretch: {report}");
    }
    let out = pitr.run(["verify"]);
    assert_eq!(
        code(&out),
        0,
        "{}{}\nafter {report}\n{}",
        stdout(&out),
        stderr(&out),
        stdout(&pitr.run(["list"]))
    );
}

/// A keep_within window that starts between the stops of backups `i` and `i + 1`.
fn window_between(built: &Built, i: usize) -> String {
    let middle = built.stops[i] + (built.stops[i + 1] - built.stops[i]) / 2;
    format!("{}s", (Utc::now() - middle).num_seconds())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_file_and_s3_repositories() {
    let built = build();
    let ids = &built.ids;
    let base_pitr = Pitr::install(&built.dir, &built.base);

    // Pins and annotations from `backup --pin --annotate`, in list's text and JSON.
    let list = json_of(&base_pitr.run(["list", "--json"]));
    let pinned: Vec<&Value> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["pinned"] == true)
        .collect();
    assert_eq!(pinned.len(), 1);
    assert_eq!(pinned[0]["id"], ids[3].as_str());
    assert_eq!(pinned[0]["annotations"]["purpose"], "audit");
    assert_eq!(pinned[0]["annotations"]["ticket"], "42");
    let text = stdout(&base_pitr.run(["list"]));
    assert!(
        text.lines()
            .any(|l| l.contains(&ids[3]) && l.contains("pinned") && l.contains("purpose=audit")),
        "{text}"
    );
    // No rule: refused with the settings to give.
    let out = base_pitr.run(["expire"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("keep_last, keep_within"),
        "{}",
        stderr(&out)
    );
    let before_times = preflight_times(&base_pitr, &built.times);
    assert!(
        before_times.iter().filter(|&&c| c == 0).count() >= 3,
        "{before_times:?}"
    );

    // --dry-run removes nothing; its JSON names the rules.
    let (_dir, repo, pitr) = copy(&built, &Target::File, "dry-run").await;
    let before = keys(&repo).await;
    let report = expire(&pitr, &["--keep-last", "2", "--dry-run"]);
    assert_eq!(report["dry_run"], true);
    assert_eq!(keys(&repo).await, before);
    assert_eq!(rules_of(&report, &ids[8]), ["newest", "keep_last"]);
    assert_eq!(rules_of(&report, &ids[7]), ["keep_last"]);
    assert_eq!(rules_of(&report, &ids[3]), ["pinned"]);
    assert_eq!(ids_of(&report, "removed_backups").len(), 6);
    let text = stdout(&pitr.run(["expire", "--keep-last", "2", "--dry-run"]));
    assert!(
        text.contains(&format!("would remove backup {}", ids[0])),
        "{text}"
    );
    assert!(text.contains("would remove WAL 0000000"), "{text}");
    assert_eq!(keys(&repo).await, before);

    // keep_last: the 3 newest (timeline 2's last and timeline 3's two) and the pinned one;
    // no window, so continuous WAL from each kept backup.
    let (_dir, repo, pitr) = copy(&built, &Target::File, "keep-last").await;
    let report = expire(&pitr, &["--keep-last", "3"]);
    assert_eq!(
        ids_of(&report, "kept_backups"),
        [
            ids[8].as_str(),
            ids[7].as_str(),
            ids[6].as_str(),
            ids[3].as_str()
        ]
    );
    check_after(&pitr, &repo, &report).await;
    // Unpinned, the next expire removes it.
    let out = pitr.run(["unpin", &ids[3]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = expire(&pitr, &["--keep-last", "3"]);
    assert_eq!(ids_of(&report, "removed_backups"), [ids[3].as_str()]);
    check_after(&pitr, &repo, &report).await;
    // Pinned by `pitr pin`, with a note, kept by a rule that keeps nothing else.
    let out = pitr.run(["pin", &ids[6], "--annotate", "reason=keep me"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = expire(&pitr, &["--keep-last", "1"]);
    assert_eq!(
        ids_of(&report, "kept_backups"),
        [ids[8].as_str(), ids[6].as_str()]
    );
    assert_eq!(rules_of(&report, &ids[6]), ["pinned"]);
    check_after(&pitr, &repo, &report).await;
    let list = json_of(&pitr.run(["list", "--json"]));
    assert_eq!(list["backups"][0]["annotations"]["reason"], "keep me");

    // keep_daily (and monthly): all backups fall in one day (or two, if the test ran over
    // midnight UTC), so the newest of each day stays, and the pinned one.
    for rule in ["--keep-daily", "--keep-monthly"] {
        let (_dir, repo, pitr) = copy(&built, &Target::File, &rule[2..]).await;
        let report = expire(&pitr, &[rule, "2"]);
        let mut expected = vec![ids[8].clone()];
        let day = |id: &str| id[..8].to_owned();
        if rule == "--keep-daily" && day(&ids[0]) != day(&ids[8]) {
            let older = ids.iter().rev().find(|id| day(id) != day(&ids[8])).unwrap();
            expected.push(older.clone());
        }
        if !expected.contains(&ids[3]) {
            expected.push(ids[3].clone());
        }
        assert_eq!(ids_of(&report, "kept_backups"), expected, "{rule}");
        check_after(&pitr, &repo, &report).await;
    }

    // keep_within, on a file repository and on S3: the window starts between backups 5 and
    // 6, so backup 5 (timeline 2) starts it; backups 0-2 and 4 go, the pinned 3 keeps only
    // its own WAL. Every point restorable before still is.
    let server = S3Server::start("retention").await;
    for target in [Target::File, Target::S3(&server)] {
        let (_dir, repo, pitr) = copy(&built, &target, "within").await;
        let window = window_between(&built, 5);
        let report = expire(&pitr, &["--keep-within", &window]);
        assert_eq!(
            ids_of(&report, "kept_backups"),
            [
                ids[8].as_str(),
                ids[7].as_str(),
                ids[6].as_str(),
                ids[5].as_str(),
                ids[3].as_str()
            ],
            "{window}"
        );
        assert_eq!(rules_of(&report, &ids[5]), ["keep_within"]);
        assert_eq!(rules_of(&report, &ids[8]), ["newest", "keep_within"]);
        check_after(&pitr, &repo, &report).await;
        assert_eq!(preflight_times(&pitr, &built.times), before_times);
        let left = keys(&repo).await;
        assert!(left.contains("wal/history/00000002.history.lz4"));
        assert!(left.contains("wal/expired.json"));

        if let Target::File = target {
            // The oldest backup of the window restores and PostgreSQL starts from it.
            let data = built.dir.path().join("restored-within");
            let out = pitr
                .command(["restore", "--backup", &ids[5], "--target", "immediate"])
                .arg("--pgdata")
                .arg(&data)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            chown_to_postgres(&data);
            let mut restored = PgCluster::restored(&built.dir, "sock-within", data);
            restored.start();
            restored.wait_paused(WAIT);
            assert_eq!(restored.sql("select count(*) from t"), built.rows_at[5]);
            restored.stop();
        }
    }

    // kill -9 at several points of an expire: the next one finishes, verify passes.
    // Killed as soon as the removal reached a given object: a backup's manifest (the rest
    // of the backup not yet gone), a later backup's, a WAL file half-way through.
    for n in 0..3 {
        let target = if n == 2 {
            Target::S3(&server)
        } else {
            Target::File
        };
        let (_dir, repo, pitr) = copy(&built, &target, &format!("kill-{n}")).await;
        let plan = expire(&pitr, &["--keep-last", "2", "--dry-run"]);
        let removed_wal = plan["removed_wal"].as_array().unwrap();
        let watched = match n {
            0 => keys::manifest_key(&ids[0]),
            1 => keys::manifest_key(&ids[5]),
            _ => {
                let name = removed_wal[removed_wal.len() / 2].as_str().unwrap();
                format!("wal/{}/{name}.lz4", &name[..16])
            }
        };
        let store = repo.storage().await;
        store.head(&watched).await.unwrap();
        let mut child = pitr.direct(["expire", "--keep-last", "2"]).spawn().unwrap();
        let delay = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() && store.head(&watched).await.is_ok() {}
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        let delay = delay.elapsed();
        // On S3 the killed run's lock object stays until its heartbeat is stale.
        let report = if n == 2 && !finished {
            let refused = pitr.run(["expire", "--keep-last", "2"]);
            assert_eq!(code(&refused), 11, "{}", stderr(&refused));
            std::thread::sleep(Duration::from_millis(1500));
            expire(&pitr, &["--keep-last", "2", "--lock-stale-after", "1"])
        } else {
            expire(&pitr, &["--keep-last", "2"])
        };
        eprintln!(
            "after a kill at {delay:?} (finished before: {finished}), expire removed {} backups, {} WAL files, {} interrupted",
            ids_of(&report, "removed_backups").len(),
            report["removed_wal"].as_array().unwrap().len(),
            report["removed_interrupted_backups"]
                .as_array()
                .unwrap()
                .len()
        );
        let mut kept = ids_of(&report, "kept_backups");
        kept.sort();
        let mut expected = vec![ids[8].clone(), ids[7].clone(), ids[3].clone()];
        expected.sort();
        assert_eq!(kept, expected, "after a kill at {delay:?}");
        assert!(report["running_backups"].as_array().unwrap().is_empty());
        let again = expire(&pitr, &["--keep-last", "2"]);
        assert!(again["removed_backups"].as_array().unwrap().is_empty());
        assert!(again["removed_wal"].as_array().unwrap().is_empty());
        assert!(
            again["removed_interrupted_backups"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        check_after(&pitr, &repo, &again).await;
        let left = keys(&repo).await;
        for id in &ids[..7] {
            if id != &ids[3] {
                assert!(
                    !left.iter().any(|k| k.starts_with(&format!("backup/{id}/"))),
                    "{id} left after a kill at {delay:?}"
                );
            }
        }
    }
}
