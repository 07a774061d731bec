//! archive-push's look-ahead: one call stores the asked file and others PostgreSQL marked
//! ready, marks those in the spool, and PostgreSQL's calls for them return at once. Real
//! PostgreSQL 15 with 1 MB segments, on a local repository and on s3s-fs.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

/// Runs pgbench against `cluster` with `args`.
fn pgbench(cluster: &PgCluster, args: &[&str]) {
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pgbench"))
            .arg("-h")
            .arg(&cluster.socket_dir)
            .args(["-p", &cluster.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres"),
    );
}

/// The push spool directory of the only repository the cluster archives to, once a run
/// created it.
fn push_spool_dir(cluster: &PgCluster) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cluster.data.join("pg_wal/.pitr-spool"))
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("push-")
        })
        .collect();
    assert!(dirs.len() <= 1, "{dirs:?}");
    dirs.into_iter().next()
}

fn push_spool(cluster: &PgCluster) -> PathBuf {
    push_spool_dir(cluster).expect("archive-push created its spool directory")
}

/// The WAL files the spool holds marks for, and its temporary (never trusted) marks.
fn spool_entries(spool: &Path) -> (Vec<String>, Vec<String>) {
    let mut marks = Vec::new();
    let mut temporary = Vec::new();
    if let Ok(entries) = std::fs::read_dir(spool) {
        for entry in entries {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if pitr::pg::WalFileName::parse(&name).is_ok() {
                marks.push(name);
            } else {
                temporary.push(name);
            }
        }
    }
    marks.sort();
    (marks, temporary)
}

/// The WAL files whose status is `.ready`, in name order.
fn ready(cluster: &PgCluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cluster.data.join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".ready").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// What PostgreSQL does after archive_command succeeded.
fn mark_done(cluster: &PgCluster, name: &str) {
    let status = cluster.data.join("pg_wal/archive_status");
    std::fs::rename(
        status.join(format!("{name}.ready")),
        status.join(format!("{name}.done")),
    )
    .unwrap();
}

/// `pitr archive-push pg_wal/NAME` as PostgreSQL runs it: from the data directory.
fn push(pitr: &Pitr, cluster: &PgCluster, name: &str, extra_env: &[(&str, &str)]) -> Output {
    pitr.direct(["-v", "archive-push", &format!("pg_wal/{name}")])
        .current_dir(&cluster.data)
        .envs(extra_env.iter().copied())
        .output()
        .unwrap()
}

/// Fetches `name` back through archive-get and compares it with `original`.
fn assert_archived_identical(pitr: &Pitr, dir: &TestDir, name: &str, original: &Path) {
    let dest = dir.subdir("get").join(name);
    let out = pitr
        .command(["archive-get", name])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "archive-get {name}: {}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(original).unwrap(),
        "{name} differs after the round trip"
    );
    std::fs::remove_file(&dest).unwrap();
}

/// A stopped cluster with 1 MB segments whose WAL waits to be archived: pgbench -i ran
/// while archive_command was empty (archiving paused), so pg_wal holds many `.ready` files.
/// pgbench's scale `scale` gives about 13 segments each.
fn backlog(dir: &TestDir, repo: &Repo, scale: u32) -> (Pitr, PgCluster) {
    let (pitr, mut cluster) = initialised_cluster_with(dir, repo, &["--wal-segsize=1"]);
    cluster.configure("archive_mode = on\narchive_command = ''");
    cluster.start();
    pgbench(&cluster, &["-i", "-q", "-s", &scale.to_string()]);
    cluster.sql("select pg_switch_wal()");
    cluster.stop();
    (pitr, cluster)
}

/// PostgreSQL archives a write-heavy pgbench run through `cp %p copies/%f && pitr
/// archive-push %p` with the default look-ahead; every copied segment comes back
/// byte-identical, PostgreSQL's calls for files stored ahead return through their marks,
/// and marks of files gone from pg_wal are cleaned.
async fn archive_under_pgbench(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = initialised_cluster_with(&dir, &repo, &["--wal-segsize=1"]);
    let copies = dir.subdir("copies");
    // Archiving paused while pgbench -i runs: a backlog for the look-ahead to take.
    cluster.configure("archive_mode = on\narchive_command = ''");
    cluster.start();
    pgbench(&cluster, &["-i", "-q", "-s", "3"]);
    let env: Vec<String> = pitr.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    cluster.configure(&format!(
        "archive_command = 'cp %p {copies}/%f && env {env} PITR_ARCHIVE_PUSH_PARALLEL=4 \
         {bin} -v --repo {repo} archive-push %p'",
        copies = copies.display(),
        env = env.join(" "),
        bin = pitr.bin.display(),
        repo = pitr.repo,
    ));
    cluster.sql("select pg_reload_conf()");
    pgbench(&cluster, &["-c", "2", "-T", "6"]);
    cluster.archive_current_segment(Duration::from_secs(300));

    let log = cluster.server_log();
    let stored_ahead = log.matches("stored ahead: ").count();
    let returned_by_mark = log.matches("was archived ahead by an earlier call").count();
    assert!(
        stored_ahead > 0 && returned_by_mark > 0,
        "no look-ahead: {stored_ahead} calls stored files ahead, {returned_by_mark} returned \
         through a mark; server log:\n{log}"
    );
    assert!(
        !log.contains("look-ahead:"),
        "a look-ahead push failed or was not marked; server log:\n{log}"
    );

    // Recycle archived segments, then one more call cleans their marks.
    cluster.sql("checkpoint");
    cluster.archive_current_segment(Duration::from_secs(60));
    let spool = push_spool(&cluster);
    let (marks, temporary) = spool_entries(&spool);
    assert!(temporary.is_empty(), "{temporary:?}");
    for mark in &marks {
        assert!(
            cluster.wal_path(mark).exists(),
            "the spool still marks {mark}, which PostgreSQL removed"
        );
    }

    let mut archived: Vec<PathBuf> = std::fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    archived.sort();
    assert!(
        archived.len() >= 30,
        "only {} files archived",
        archived.len()
    );
    for copy in &archived {
        let name = copy.file_name().unwrap().to_str().unwrap();
        assert_archived_identical(&pitr, &dir, name, copy);
    }
    eprintln!(
        "{name}: {} files archived, {stored_ahead} calls stored files ahead, \
         {returned_by_mark} returned through a mark, {} marks left",
        archived.len(),
        marks.len()
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_archives_with_look_ahead_on_a_local_repository() {
    archive_under_pgbench("ahead-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_archives_with_look_ahead_on_s3() {
    let server = S3Server::start("ahead").await;
    archive_under_pgbench("ahead-s3", |_| Repo::s3(&server, "cluster")).await;
}

/// kill -9 of archive-push while its look-ahead runs, at moments from before it starts to
/// after it ends: every mark left speaks for a file stored whole, and PostgreSQL's next calls
/// succeed, so every file is archived byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_look_ahead_loses_nothing() {
    let dir = TestDir::new("ahead-kill");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = backlog(&dir, &repo, 8);
    let repo_path = PathBuf::from(&repo.url);
    let mut archived = Vec::new();
    let mut outcomes = Vec::new();
    let mut verified = std::collections::BTreeSet::new();
    // The first call runs whole, to time one; the others are killed at moments across it,
    // denser towards its end, where stores complete and marks are written.
    let mut whole_run = Duration::ZERO;
    let fractions = [0.0, 0.25, 0.5]
        .into_iter()
        .chain((0..14).map(|step| 0.6 + 0.04 * f64::from(step)));
    for fraction in std::iter::once(None).chain(fractions.map(Some)) {
        let names = ready(&cluster);
        assert!(names.len() >= 4, "the backlog ran out: {names:?}");
        let asked = &names[0];
        let started = std::time::Instant::now();
        let mut child = pitr
            .direct(["archive-push", &format!("pg_wal/{asked}")])
            .current_dir(&cluster.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = match fraction {
            None => None,
            Some(fraction) => {
                let delay = whole_run.mul_f64(fraction);
                std::thread::sleep(delay);
                let _ = child.kill();
                Some(delay)
            }
        };
        let status = child.wait().unwrap();
        if delay.is_none() {
            assert!(status.success());
            whole_run = started.elapsed();
        }

        // A mark that exists speaks for a file the repository holds whole.
        let (marks, _) = push_spool_dir(&cluster)
            .map(|spool| spool_entries(&spool))
            .unwrap_or_default();
        for mark in &marks {
            if verified.insert(mark.clone()) {
                assert_archived_identical(&pitr, &dir, mark, &cluster.wal_path(mark));
            }
        }
        let marked_now = names[1..4].iter().filter(|n| marks.contains(n)).count();
        let stored_now = names[1..4]
            .iter()
            .filter(|n| {
                repo_path
                    .join("wal")
                    .join(&n[..16])
                    .join(format!("{n}.lz4"))
                    .exists()
            })
            .count();
        outcomes.push(format!(
            "{:?}: {status}, {stored_now} of 3 stored, {marked_now} marked",
            delay.unwrap_or(whole_run)
        ));

        // PostgreSQL's calls, in order, for the asked file and those after it (without
        // look-ahead of their own, so that the next kill finds no file stored ahead).
        for name in &names[..4] {
            let out = push(
                &pitr,
                &cluster,
                name,
                &[("PITR_ARCHIVE_PUSH_PARALLEL", "1")],
            );
            assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
            mark_done(&cluster, name);
            archived.push(name.clone());
        }
    }
    eprintln!("kill -9 after {}", outcomes.join("; "));
    let (_, temporary) = spool_entries(&push_spool(&cluster));
    assert!(
        temporary.is_empty(),
        "temporary marks of killed runs were not cleaned: {temporary:?}"
    );
    for name in &archived {
        assert_archived_identical(&pitr, &dir, name, &cluster.wal_path(name));
    }
}

/// A look-ahead failure hides nothing: the file it failed on gets no mark, and PostgreSQL's
/// own call for it reports the failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_look_ahead_failure_is_reported_by_postgresqls_own_call() {
    let dir = TestDir::new("ahead-conflict");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = backlog(&dir, &repo, 2);
    let names = ready(&cluster);
    let (asked, conflicting) = (&names[0], &names[1]);

    // Another copy of the next segment, one byte different, is in the repository first.
    let mut changed = std::fs::read(cluster.wal_path(conflicting)).unwrap();
    changed[700_000] ^= 0xFF;
    dir.subdir("changed");
    let changed_path = dir.write(&format!("changed/{conflicting}"), &changed);
    let out = pitr
        .command(["--archive-push-parallel", "1", "archive-push"])
        .arg(&changed_path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = push(&pitr, &cluster, asked, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("look-ahead: {conflicting} was not archived")),
        "{}",
        stderr(&out)
    );
    let (marks, _) = spool_entries(&push_spool(&cluster));
    assert_eq!(marks, names[2..4]);
    mark_done(&cluster, asked);

    let out = push(&pitr, &cluster, conflicting, &[]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    // The files stored ahead of the failed one are fine.
    for name in &names[2..4] {
        let out = push(&pitr, &cluster, name, &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stderr(&out).contains("archived ahead"), "{}", stderr(&out));
    }
}

/// A call for a file with a valid mark makes no repository request: it succeeds with the S3
/// server gone. A mark that no longer matches its file is dropped, and the file pushed.
#[tokio::test(flavor = "multi_thread")]
async fn a_marked_file_needs_no_repository() {
    let dir = TestDir::new("ahead-offline");
    let server = S3Server::start("ahead-offline").await;
    let repo = Repo::s3(&server, "cluster");
    let (pitr, cluster) = backlog(&dir, &repo, 2);
    let names = ready(&cluster);
    let out = push(&pitr, &cluster, &names[0], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    mark_done(&cluster, &names[0]);
    let spool = push_spool(&cluster);
    assert_eq!(spool_entries(&spool).0, names[1..4]);

    drop(repo);
    drop(server); // the last handle: s3s-fs is killed
    let offline = [
        ("PITR_STORAGE_RETRY_TIME", "1"),
        ("PITR_STORAGE_TIMEOUT", "1"),
    ];
    let out = push(&pitr, &cluster, &names[1], &offline);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("archived ahead"), "{}", stderr(&out));

    // A file that is not what its mark says (here: touched) is pushed, which needs the
    // server, and its mark goes.
    let touched = std::fs::File::options()
        .write(true)
        .open(cluster.wal_path(&names[2]))
        .unwrap();
    touched
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let out = push(&pitr, &cluster, &names[2], &offline);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert_eq!(
        spool_entries(&spool).0,
        [names[1].clone(), names[3].clone()]
    );
}
