//! Block references and storage events (issue 27's foundation) on real WAL: every block
//! reference pitr decodes from PostgreSQL 15's segments is one pg_waldump prints for the
//! same record, and none is missing; the storage events of a workload that creates,
//! truncates, drops and copies relations and databases are the ones it did; and on 17 and
//! 18 the server's own WAL summaries name nothing pitr's maps miss.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use pitr::pg::Lsn;
use pitr::pg::wal_blocks::{Fork, RecordChanges, StorageEvent};
use pitr::pg::wal_reader::WalDecoder;
use pitr::pg::wal_summary::SegmentSummarizer;

const SEGMENT: u64 = 16 << 20;

/// (record LSN, "spc/db/rel fork block"), comparable with pg_waldump's text.
type Refs = BTreeSet<(u64, String)>;

fn fork_name(fork: Fork) -> &'static str {
    match fork {
        Fork::Main => "main",
        Fork::FreeSpaceMap => "fsm",
        Fork::VisibilityMap => "vm",
        Fork::Init => "init",
    }
}

/// Our decoder over the segments as one stream: the block references and every record's
/// changes, in order.
fn decode(segments: &[PathBuf]) -> (Refs, Vec<(Lsn, RecordChanges)>) {
    let first = segments[0].file_name().unwrap().to_str().unwrap();
    let segno = u64::from_str_radix(&first[8..16], 16).unwrap() * 0x100
        + u64::from_str_radix(&first[16..24], 16).unwrap();
    let mut decoder = WalDecoder::new(Lsn(segno * SEGMENT), SEGMENT, 8192).with_changes();
    let mut refs = Refs::new();
    let mut all = Vec::new();
    for path in segments {
        decoder.feed(&std::fs::read(path).unwrap());
        while let Some(record) = decoder.next_record() {
            let changes = record
                .changes
                .expect("asked for")
                .unwrap_or_else(|e| panic!("{}: {e}", record.lsn));
            for block in &changes.blocks {
                refs.insert((
                    record.lsn.0,
                    format!(
                        "{}/{}/{} {} {}",
                        block.file.tablespace,
                        block.file.database,
                        block.file.relfilenode,
                        fork_name(block.fork),
                        block.block
                    ),
                ));
            }
            all.push((record.lsn, changes));
        }
    }
    assert_eq!(decoder.end_of_wal(), None, "invalid WAL met");
    (refs, all)
}

/// pg_waldump's block references: "blkref #0: rel 1663/5/16384 [fork vm ]blk 0[ FPW]".
fn waldump(segments: &[PathBuf]) -> Refs {
    let out = Command::new(Path::new(PG_BIN).join("pg_waldump"))
        .arg(segments.first().unwrap())
        .arg(segments.last().unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut refs = Refs::new();
    for line in text.lines().filter(|l| l.starts_with("rmgr:")) {
        let lsn = &line[line.find("lsn: ").unwrap() + 5..];
        let lsn: Lsn = lsn[..lsn.find(',').unwrap()].parse().unwrap();
        for part in line.split("blkref #").skip(1) {
            let rest = part.split_once(": rel ").unwrap().1;
            let mut words = rest.split([' ', ',']).filter(|w| !w.is_empty());
            let rel = words.next().unwrap();
            let mut word = words.next().unwrap();
            let mut fork = "main";
            if word == "fork" {
                fork = words.next().unwrap();
                word = words.next().unwrap();
            }
            assert_eq!(word, "blk", "{line}");
            let block = words.next().unwrap();
            refs.insert((lsn.0, format!("{rel} {fork} {block}")));
        }
    }
    refs
}

/// The workload's WAL from a cluster of `bin`, and what it did: every block reference and
/// storage event decoded (without an error), checked against the statements that made
/// them; PostgreSQL 15's block references also against pg_waldump's.
fn block_references_and_storage_events(major: u32, bin: &Path) {
    let dir = TestDir::new(&format!("wal-blocks-{major}"));
    let mut cluster = PgCluster::initdb_with(&dir, "pg", bin, &["--data-checksums"]);
    cluster.configure("wal_keep_size = '2GB'\nfull_page_writes = on\nautovacuum = off\n");
    cluster.start();
    let space = dir.subdir("space");
    chown_to_postgres(&space);
    let first = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");

    cluster.sql(&format!(
        "create tablespace space location '{}'",
        space.display()
    ));
    cluster.sql("create table t (id int primary key, v text)");
    let t_file = cluster.sql("select pg_relation_filenode('t')");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
    cluster.sql("checkpoint");
    cluster.sql("update t set v = v || 'u' where id % 5 = 0");
    // The tail of the table emptied: VACUUM truncates it (and sets visibility map bits).
    cluster.sql("delete from t where id > 10000");
    cluster.sql("vacuum t");
    cluster.sql("create sequence s");
    cluster.sql("select nextval('s') from generate_series(1, 50)");
    cluster.sql("create index t_v on t (v)");
    cluster.sql("create table gone (id int)");
    let gone_file = cluster.sql("select pg_relation_filenode('gone')");
    cluster.sql("insert into gone select generate_series(1, 1000)");
    cluster.sql("drop table gone");
    cluster.sql("create table emptied (id int)");
    cluster.sql("insert into emptied select generate_series(1, 1000)");
    cluster.sql("truncate emptied");
    cluster.sql("alter table t set tablespace space");
    cluster.sql("create unlogged table u (id int)");
    cluster.sql("insert into u select generate_series(1, 1000)");
    // Both strategies from 15; 13 and 14 only copy.
    let mut logged_oid = None;
    if major >= 15 {
        cluster.sql("create database copied strategy file_copy");
        cluster.sql("create database logged strategy wal_log");
        logged_oid = Some(cluster.sql("select oid from pg_database where datname = 'logged'"));
    } else {
        cluster.sql("create database copied");
    }
    let copied_oid = cluster.sql("select oid from pg_database where datname = 'copied'");
    cluster.sql("drop database copied");
    cluster.sql("vacuum full t");
    let last = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    cluster.stop();

    let mut segments: Vec<_> = std::fs::read_dir(cluster.data.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.len() == 24 && name >= first.as_str() && name <= last.as_str()
        })
        .collect();
    segments.sort();

    assert!(segments.len() >= 2, "{} segment(s)", segments.len());
    let (ours, changes) = decode(&segments);
    chained_maps_hold_every_reference(&segments, &ours);
    // The table's first block is referenced (its inserts).
    assert!(
        ours.iter()
            .any(|(_, r)| r.ends_with(&format!("/{t_file} main 0"))),
        "no reference to block 0 of {t_file}"
    );
    if major == 15 {
        let theirs = waldump(&segments);
        assert!(
            theirs.len() > 1000,
            "pg_waldump found {} refs",
            theirs.len()
        );
        let missing: Vec<_> = theirs.difference(&ours).take(5).collect();
        let extra: Vec<_> = ours.difference(&theirs).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:?}, extra {extra:?}"
        );
    }

    let events: Vec<&StorageEvent> = changes.iter().flat_map(|(_, c)| &c.events).collect();
    let relfilenode = |text: &str| text.parse::<u32>().unwrap();
    // Created: the table's main fork (and its new file in the tablespace, and the others).
    assert!(
        events.iter().any(|e| matches!(e,
            StorageEvent::Created { file, fork: Fork::Main }
                if file.relfilenode == relfilenode(&t_file))),
        "{events:?}"
    );
    // VACUUM's truncation of t, to fewer blocks than it had.
    assert!(
        events.iter().any(|e| matches!(e,
            StorageEvent::Truncated { file, blocks, main: true, .. }
                if file.relfilenode == relfilenode(&t_file) && *blocks > 0)),
        "{events:?}"
    );
    // DROP TABLE: its file goes at commit.
    assert!(
        events.iter().any(|e| matches!(e,
            StorageEvent::RelationsDropped { files }
                if files.iter().any(|f| f.relfilenode == relfilenode(&gone_file)))),
        "{events:?}"
    );
    // The unlogged table's init fork is created in WAL.
    assert!(
        events.iter().any(|e| matches!(
            e,
            StorageEvent::Created {
                fork: Fork::Init,
                ..
            }
        )),
        "{events:?}"
    );
    let oid = |text: &str| text.parse::<u32>().unwrap();
    assert!(
        events.iter().any(|e| matches!(e,
            StorageEvent::DatabaseCopied { database, source_database: 1, .. }
                if *database == oid(&copied_oid))),
        "{events:?}"
    );
    if let Some(logged) = logged_oid {
        assert!(
            events.iter().any(|e| matches!(e,
                StorageEvent::DatabaseCreated { database, .. } if *database == oid(&logged))),
            "{events:?}"
        );
    }
    assert!(
        events.iter().any(|e| matches!(e,
            StorageEvent::DatabaseDropped { database, tablespaces }
                if *database == oid(&copied_oid) && !tablespaces.is_empty())),
        "{events:?}"
    );
    // Nothing this workload does is beyond the map.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, StorageEvent::Unknown { .. })),
        "{events:?}"
    );
}

/// Segment by segment, as archive-push builds them (each segment's summary carrying the
/// headers of a record that continues in the next): the maps' blocks together are the
/// stream's block references, and only the first map may start inside a record.
fn chained_maps_hold_every_reference(segments: &[PathBuf], stream: &Refs) {
    let mut carry = None;
    let mut mapped = BTreeSet::new();
    for (i, path) in segments.iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 0x100
            + u64::from_str_radix(&name[16..24], 16).unwrap();
        let mut summarizer =
            SegmentSummarizer::new(Lsn(segno * SEGMENT), SEGMENT, 8192, carry.as_ref())
                .with_block_map();
        summarizer.feed(&std::fs::read(path).unwrap());
        let (summary, map) = summarizer.finish_with_map();
        let map = map.unwrap();
        assert_eq!(map.unreadable_records, 0, "{name}");
        if i > 0 {
            assert!(!map.starts_incomplete, "{name} starts inside a record");
        }
        for fork in &map.forks {
            for [first, count] in &fork.ranges {
                for block in *first..first + count {
                    mapped.insert(format!(
                        "{}/{}/{} {} {block}",
                        fork.file.tablespace,
                        fork.file.database,
                        fork.file.relfilenode,
                        fork_name(fork.fork)
                    ));
                }
            }
        }
        carry = summary.carry;
    }
    let referenced: BTreeSet<String> = stream.iter().map(|(_, r)| r.clone()).collect();
    let missing: Vec<_> = referenced.difference(&mapped).take(5).collect();
    let extra: Vec<_> = mapped.difference(&referenced).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "maps miss {missing:?}, add {extra:?}"
    );
}

#[test]
fn block_references_and_storage_events_on_15() {
    block_references_and_storage_events(15, Path::new(PG_BIN));
}

#[test]
fn block_references_and_storage_events_on_13() {
    let Some(bin) = pg_bin_of(13) else { return };
    block_references_and_storage_events(13, &bin);
}

#[test]
fn block_references_and_storage_events_on_18() {
    let Some(bin) = pg_bin_of(18) else { return };
    block_references_and_storage_events(18, &bin);
}

/// archive-push stores each segment's block map beside it: the map of the segment that
/// holds a table's inserts names the table's blocks.
#[test]
fn archive_push_stores_each_segments_block_map() {
    let dir = TestDir::new("wal-blocks-archive");
    let repo = Repo::local(&dir);
    let (_pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int, v text)");
    let node = cluster.sql("select pg_relation_filenode('t')");
    let database = cluster.sql("select oid from pg_database where datname = 'postgres'");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let blocks: u32 = cluster
        .sql("select pg_relation_size('t') / 8192")
        .parse()
        .unwrap();
    let segment = cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    let path = root
        .join("blockmap")
        .join(&segment[..16])
        .join(format!("{segment}.json"));
    let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if encrypting() {
        // Encrypted like every other object; its content is checked in the plain pass.
        return;
    }
    let map: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(map["segment"], segment.as_str());
    let fork = map["forks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["file"]["relfilenode"].as_u64() == node.parse().ok()
                && f["file"]["database"].as_u64() == database.parse().ok()
                && f["fork"] == "main"
        })
        .unwrap_or_else(|| panic!("no blocks of {node} in {map}"));
    // Every block of the table, 0 to its size, changed in this segment.
    let ranges: Vec<(u64, u64)> = fork["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    assert_eq!(ranges, vec![(0, u64::from(blocks))], "{map}");
}

/// The change set of a stretch of archived WAL (what a block-incremental backup would read):
/// every block pg_waldump shows a record of the stretch changing is in it, an update of 1%
/// of a table's rows changes a small part of its blocks, and the stretch's created, dropped
/// and copied files are named.
#[tokio::test(flavor = "multi_thread")]
async fn a_stretch_of_archived_wal_tells_what_changed() {
    use pitr::catalog::Catalog;
    use pitr::pg::WalFileName;
    use pitr::pg::wal_name::xlog_file_name;

    let dir = TestDir::new("wal-blocks-changes");
    let repo = Repo::local(&dir);
    let (_pitr, mut cluster) = archiving_cluster(&dir, &repo, "wal_keep_size = '1GB'\n");
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 100000) g");
    cluster.sql("create table gone (id int)");
    cluster.sql("insert into gone select generate_series(1, 1000)");
    cluster.sql("checkpoint");
    let t_node: u32 = cluster
        .sql("select pg_relation_filenode('t')")
        .parse()
        .unwrap();
    let t_blocks: u32 = cluster
        .sql("select pg_relation_size('t') / 8192")
        .parse()
        .unwrap();
    let gone_node: u32 = cluster
        .sql("select pg_relation_filenode('gone')")
        .parse()
        .unwrap();
    let database = cluster.sql("select oid from pg_database where datname = 'postgres'");
    let start = cluster.sql("select pg_current_wal_lsn()");
    let first = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");

    cluster.sql("update t set v = 'changed' where id <= 1000");
    cluster.sql("create table fresh as select generate_series(1, 100) id");
    let fresh_node: u32 = cluster
        .sql("select pg_relation_filenode('fresh')")
        .parse()
        .unwrap();
    cluster.sql("drop table gone");
    cluster.sql("create database copied strategy file_copy");
    let copied: u32 = cluster
        .sql("select oid from pg_database where datname = 'copied'")
        .parse()
        .unwrap();
    let end = cluster.sql("select pg_current_wal_lsn()");
    let last = cluster.archive_current_segment(Duration::from_secs(60));
    if encrypting() {
        // The maps are read through an unlocked catalog in the plain pass.
        return;
    }

    let segno = |name: &str| {
        WalFileName::parse(name)
            .unwrap()
            .segment_number(SEGMENT)
            .unwrap()
    };
    let segments: Vec<WalFileName> = (segno(&first)..=segno(&last))
        .map(|s| WalFileName::parse(&xlog_file_name(1, s, SEGMENT)).unwrap())
        .collect();
    let catalog = Catalog::new(repo.storage().await);
    let from: Lsn = start.parse().unwrap();
    let set = catalog
        .change_set(from, &segments, SEGMENT, 8192, 4)
        .await
        .unwrap();
    assert!(set.is_complete(), "{:?}", set.incomplete);

    // Every block a record of the stretch changes.
    let out = Command::new(Path::new(PG_BIN).join("pg_waldump"))
        .arg(cluster.data.join("pg_wal").join(&first))
        .arg(cluster.data.join("pg_wal").join(&last))
        .args(["-s", &start, "-e", &end])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut checked = 0;
    for part in text.split("blkref #").skip(1) {
        let rest = part.split_once(": rel ").unwrap().1;
        let mut words = rest.split([' ', ',', '\n']).filter(|w| !w.is_empty());
        let rel: Vec<u32> = words
            .next()
            .unwrap()
            .split('/')
            .map(|n| n.parse().unwrap())
            .collect();
        let mut word = words.next().unwrap();
        let mut fork = Fork::Main;
        if word == "fork" {
            fork = match words.next().unwrap() {
                "fsm" => Fork::FreeSpaceMap,
                "vm" => Fork::VisibilityMap,
                "init" => Fork::Init,
                other => panic!("fork {other}"),
            };
            word = words.next().unwrap();
        }
        assert_eq!(word, "blk");
        let block: u32 = words.next().unwrap().parse().unwrap();
        let file = pitr::pg::wal_blocks::RelFile {
            tablespace: rel[0],
            database: rel[1],
            relfilenode: rel[2],
        };
        assert!(
            set.changed(file, fork, block),
            "{file:?} {fork:?} block {block} changed but is not in the set"
        );
        checked += 1;
    }
    assert!(
        checked > 100,
        "pg_waldump showed {checked} references: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1% of the rows: a small part of the table's blocks.
    let changed: u32 = set
        .blocks
        .iter()
        .filter(|((file, fork), _)| file.relfilenode == t_node && *fork == Fork::Main)
        .flat_map(|(_, ranges)| ranges.iter().map(|[_, count]| *count))
        .sum();
    assert!(
        changed > 0 && changed * 20 < t_blocks,
        "{changed} of {t_blocks} blocks"
    );
    assert!(
        set.created
            .iter()
            .any(|(file, fork)| file.relfilenode == fresh_node && *fork == Fork::Main)
    );
    assert!(set.dropped.iter().any(|file| file.relfilenode == gone_node));
    assert!(set.copied_databases.iter().any(|(_, db)| *db == copied));

    // The page-LSN fallback agrees on the table: once its pages are on disk, those stamped
    // at or after the stretch's start are the ones the change set names.
    let t_path = cluster.sql("select pg_relation_filepath('t')");
    cluster.stop();
    let pages = std::fs::read(cluster.data.join(&t_path)).unwrap();
    let by_lsn = pitr::pg::incremental::pages_changed_since(&pages, 0, 8192, from);
    let by_map: Vec<u32> = set.blocks[&(
        pitr::pg::wal_blocks::RelFile {
            tablespace: 1663,
            database: database.parse().unwrap(),
            relfilenode: t_node,
        },
        Fork::Main,
    )]
        .iter()
        .flat_map(|[first, count]| *first..first + count)
        .filter(|&b| u64::from(b) * 8192 < pages.len() as u64)
        .collect();
    assert_eq!(by_lsn, by_map);
}

/// PostgreSQL 17's own WAL summaries (`summarize_wal`) against pitr's block maps of the same
/// stretch: every block the server's summarizer says changed, and every limit it sets (a
/// relation created, dropped or truncated), is in pitr's change set. The workload mixes
/// updates, a VACUUM cutting a table, a created and a dropped table, an index build, a
/// VACUUM FULL and a database copied from its template.
async fn the_servers_wal_summaries_agree_with_the_maps(major: u32) {
    use pitr::catalog::Catalog;
    use pitr::pg::WalFileName;
    use pitr::pg::wal_blocks::RelFile;
    use pitr::pg::wal_name::xlog_file_name;

    let Some(bin) = pg_bin_of(major) else {
        return;
    };
    let dir = TestDir::new(&format!("wal-blocks-summaries-{major}"));
    let repo = Repo::local(&dir);
    let (_pitr, cluster) = archiving_cluster_of(
        &dir,
        &repo,
        &bin,
        &[],
        "summarize_wal = on\nautovacuum = off\nwal_keep_size = '1GB'",
    );
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 100000) g");
    cluster.sql("create table gone (id int)");
    cluster.sql("insert into gone select generate_series(1, 1000)");
    cluster.sql("checkpoint");
    let start: Lsn = cluster.sql("select pg_current_wal_lsn()").parse().unwrap();

    cluster.sql("update t set v = 'changed' where id % 50 = 0");
    cluster.sql("delete from t where id > 90000");
    cluster.sql("vacuum t");
    cluster.sql("create table fresh as select generate_series(1, 5000) id");
    cluster.sql("create index on fresh (id)");
    cluster.sql("drop table gone");
    cluster.sql("vacuum full t");
    cluster.sql("create database copied strategy file_copy");
    // The summarizer ends its summaries at checkpoints' redo points: the stretch ends at one.
    cluster.sql("checkpoint");
    let end: Lsn = cluster
        .sql("select redo_lsn from pg_control_checkpoint()")
        .parse()
        .unwrap();
    cluster.archive_current_segment(Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let summarized: Lsn = cluster
            .sql("select summarized_lsn from pg_get_wal_summarizer_state()")
            .parse()
            .unwrap();
        if summarized >= end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "summarized to {summarized}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if encrypting() {
        // The maps are read through an unlocked catalog in the plain pass.
        return;
    }
    // The server's summaries overlapping the stretch; pitr's maps from the first one's start.
    let rows = cluster.sql(&format!(
        "select s.start_lsn || ' ' || c.relfilenode || ' ' || c.reltablespace || ' ' || \
         c.reldatabase || ' ' || c.relforknumber || ' ' || c.relblocknumber || ' ' || \
         c.is_limit_block \
         from pg_available_wal_summaries() s, \
         lateral pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c \
         where s.end_lsn > '{start}' and s.start_lsn < '{end}'"
    ));
    let mut from = start;
    let mut entries = Vec::new();
    for line in rows.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let summary_start: Lsn = words[0].parse().unwrap();
        from = from.min(summary_start);
        let number = |i: usize| -> u32 { words[i].parse().unwrap() };
        let fork = match number(4) {
            0 => Fork::Main,
            1 => Fork::FreeSpaceMap,
            2 => Fork::VisibilityMap,
            3 => Fork::Init,
            other => panic!("fork {other}"),
        };
        let file = RelFile {
            relfilenode: number(1),
            tablespace: number(2),
            database: number(3),
        };
        entries.push((file, fork, number(5), words[6] == "true"));
    }
    assert!(entries.len() > 100, "{} summary entries", entries.len());
    let segno = |lsn: Lsn| lsn.segment_number(SEGMENT);
    let segments: Vec<WalFileName> = (segno(from)..=segno(Lsn(end.0 - 1)))
        .map(|s| WalFileName::parse(&xlog_file_name(1, s, SEGMENT)).unwrap())
        .collect();
    let catalog = Catalog::new(repo.storage().await);
    let set = catalog
        .change_set(from, &segments, SEGMENT, 8192, 4)
        .await
        .unwrap();
    assert!(set.is_complete(), "{:?}", set.incomplete);

    let (mut blocks, mut limits) = (0, 0);
    for (file, fork, block, limit) in entries {
        let whole = set.created.contains(&(file, fork))
            || set.dropped.contains(&file)
            || set
                .copied_databases
                .contains(&(file.tablespace, file.database));
        if limit {
            // Cut to `block` blocks (0: created or dropped): pitr reads every block from a
            // cut at or below it, or the whole file.
            limits += 1;
            let cut = set
                .truncated
                .get(&(file, fork))
                .is_some_and(|&at| at <= block);
            assert!(
                whole || cut,
                "the server limits {file:?} {fork:?} to {block} blocks; pitr: truncated {:?}",
                set.truncated.get(&(file, fork))
            );
        } else {
            blocks += 1;
            assert!(
                whole || set.changed(file, fork, block),
                "the server has {file:?} {fork:?} block {block} changed; pitr does not"
            );
        }
    }
    assert!(
        blocks > 100 && limits > 5,
        "{blocks} blocks, {limits} limits"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_wal_summaries_agree_with_the_maps_on_17() {
    the_servers_wal_summaries_agree_with_the_maps(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_wal_summaries_agree_with_the_maps_on_18() {
    the_servers_wal_summaries_agree_with_the_maps(18).await;
}
