//! The WAL reader on real WAL: what it finds in segments written by PostgreSQL 15 equals
//! what PostgreSQL's own pg_waldump prints for the same segments.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use pitr::pg::Lsn;
use pitr::pg::wal_reader::{EndOfWal, RecordKind, WalDecoder, XactAction};

const SEGMENT: u64 = 16 << 20;

/// (lsn, what) for every transaction end and restore point, as comparable strings.
type Events = BTreeSet<(u64, String)>;

fn timestamp(micros_since_2000: i64) -> String {
    let unix = micros_since_2000 + pitr::pg::wal_reader::POSTGRES_EPOCH_UNIX_MICROS;
    chrono::DateTime::from_timestamp_micros(unix)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.6f UTC")
        .to_string()
}

/// Runs our decoder over the segments, in order, as one stream.
fn decode(segments: &[std::path::PathBuf]) -> (Events, usize, usize, Option<EndOfWal>) {
    let first = segments[0].file_name().unwrap().to_str().unwrap();
    let segno = u64::from_str_radix(&first[8..16], 16).unwrap() * 0x100
        + u64::from_str_radix(&first[16..24], 16).unwrap();
    let mut decoder = WalDecoder::new(Lsn(segno * SEGMENT), SEGMENT, 8192);
    let mut events = Events::new();
    let (mut count, mut crossing) = (0, 0);
    for path in segments {
        decoder.feed(&std::fs::read(path).unwrap());
        while let Some(record) = decoder.next_record() {
            count += 1;
            if record.lsn.0 / SEGMENT != (record.end.0 - 1) / SEGMENT {
                crossing += 1;
            }
            let what = match record.kind {
                RecordKind::Xact(xact) => match (xact.action, xact.time) {
                    (XactAction::Commit, Some(t)) => {
                        format!("COMMIT {} {}", record.xid, timestamp(t))
                    }
                    (XactAction::Abort, Some(t)) => {
                        format!("ABORT {} {}", record.xid, timestamp(t))
                    }
                    (XactAction::CommitPrepared, Some(t)) => {
                        format!("COMMIT_PREPARED {} {}", xact.xid, timestamp(t))
                    }
                    (XactAction::AbortPrepared, Some(t)) => {
                        format!("ABORT_PREPARED {} {}", xact.xid, timestamp(t))
                    }
                    (XactAction::Prepare, _) => format!("PREPARE {}", record.xid),
                    other => panic!("unexpected {other:?}"),
                },
                RecordKind::RestorePoint { name, .. } => format!("RESTORE_POINT {name}"),
                _ => continue,
            };
            events.insert((record.lsn.0, what));
        }
    }
    (events, count, crossing, decoder.end_of_wal().cloned())
}

/// The same events from pg_waldump's text output.
fn waldump(segments: &[std::path::PathBuf]) -> (Events, usize) {
    let first = segments.first().unwrap();
    let last = segments.last().unwrap();
    let out = Command::new(Path::new(PG_BIN).join("pg_waldump"))
        .arg(first)
        .arg(last)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut events = Events::new();
    let mut count = 0;
    for line in text.lines().filter(|l| l.starts_with("rmgr:")) {
        count += 1;
        let field = |name: &str| {
            let rest = &line[line.find(name).unwrap() + name.len()..];
            rest.trim_start()
                .split([',', ' '])
                .next()
                .unwrap()
                .to_owned()
        };
        let lsn: Lsn = field("lsn:").parse().unwrap();
        let xid = field("tx:");
        let desc = line[line.find("desc: ").unwrap() + 6..].to_owned();
        let what = if line.starts_with("rmgr: Transaction") {
            let (op, rest) = desc.split_once(' ').unwrap_or((&desc, ""));
            match op {
                "COMMIT" | "ABORT" => {
                    format!("{op} {xid} {}", &rest[..rest.find(" UTC").unwrap() + 4])
                }
                "COMMIT_PREPARED" | "ABORT_PREPARED" => {
                    let (prepared, rest) = rest.split_once(": ").unwrap();
                    format!(
                        "{op} {prepared} {}",
                        &rest[..rest.find(" UTC").unwrap() + 4]
                    )
                }
                "PREPARE" => format!("PREPARE {xid}"),
                _ => continue,
            }
        } else if desc.starts_with("RESTORE_POINT ") {
            desc.trim_end().to_owned()
        } else {
            continue;
        };
        events.insert((lsn.0, what));
    }
    (events, count)
}

#[test]
fn finds_what_pg_waldump_finds_in_real_wal() {
    let dir = TestDir::new("wal-reader");
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    cluster
        .configure("max_prepared_transactions = 10\nwal_keep_size = '2GB'\nfull_page_writes = on");
    cluster.start();

    cluster.sql("create table small (id int primary key, v text)");
    cluster.sql("create table wide (id int, v text) with (toast_tuple_target = 8160)");
    cluster.sql("alter table wide alter column v set storage plain");
    cluster.sql("checkpoint");
    for round in 0..6 {
        // Many small commits, aborts, a prepared transaction committed and one rolled back,
        // rows close to a page in size (full-page images after checkpoints span WAL pages),
        // a restore point, and a switch to a new segment.
        cluster.sql(&format!(
            "insert into small select g, md5(g::text) from generate_series({0} * 1000 + 1, {0} * 1000 + 500) g",
            round
        ));
        for i in 0..20 {
            cluster.sql(&format!(
                "insert into small values ({}, 'x') on conflict do nothing",
                round * 1000 + 600 + i
            ));
        }
        cluster.sql("begin; insert into small values (-1, 'gone'); rollback");
        cluster.sql(&format!(
            "begin; insert into small values ({}, 'p'); prepare transaction 'p{round}a'",
            round * 1000 + 900
        ));
        cluster.sql(&format!("commit prepared 'p{round}a'"));
        cluster.sql(&format!(
            "begin; insert into small values ({}, 'q'); prepare transaction 'p{round}b'",
            round * 1000 + 901
        ));
        cluster.sql(&format!("rollback prepared 'p{round}b'"));
        cluster.sql("insert into wide select g, (select string_agg(md5(random()::text), '') from generate_series(1, 240)) from generate_series(1, 300) g");
        cluster.sql("checkpoint");
        cluster.sql("update small set v = v || 'u' where id % 7 = 0");
        cluster.sql(&format!("select pg_create_restore_point('point_{round}')"));
        if round % 2 == 1 {
            cluster.sql("select pg_switch_wal()");
        }
    }
    // About 20 MB of near-page-sized rows without a switch: records cross segment boundaries.
    cluster.sql("insert into wide select g, (select string_agg(md5(random()::text), '') from generate_series(1, 240)) from generate_series(1, 2500) g");
    cluster.sql("select pg_create_restore_point('after_bulk')");
    let last = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    cluster.stop();

    let mut segments: Vec<_> = std::fs::read_dir(cluster.data.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.len() == 24 && name <= last.as_str()
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{} segments", segments.len());

    every_segment_is_the_one_its_name_says(&cluster, &segments);

    let (ours, our_count, crossing, end) = decode(&segments);
    assert!(crossing >= 1, "no record crossed a segment boundary");
    let (theirs, their_count) = waldump(&segments);
    assert!(
        theirs.len() >= 6 * 4,
        "pg_waldump found only {} events",
        theirs.len()
    );
    let missing: Vec<_> = theirs.difference(&ours).take(5).collect();
    let extra: Vec<_> = ours.difference(&theirs).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(our_count, their_count, "records decoded");
    // The last segment ends with the switch record: no invalid WAL was met on the way.
    assert_eq!(end, None);

    // Segment by segment, as archive-push sees them, carrying straddling records along.
    let mut carry = None;
    let (mut commits, mut aborts, mut points, mut last_commit) = (0, 0, Vec::new(), None);
    let mut found_prepared = 0;
    for path in &segments {
        let name = path.file_name().unwrap().to_str().unwrap();
        let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 0x100
            + u64::from_str_radix(&name[16..24], 16).unwrap();
        let bytes = std::fs::read(path).unwrap();
        let start = Lsn(segno * SEGMENT);
        let summary =
            pitr::pg::wal_summary::summarize_segment(&bytes, start, SEGMENT, 8192, carry.as_ref());
        // The xid bounds hold every transaction that ends well inside the segment, and
        // decoding finds where a prepared one ended, by its prepared xid.
        let inside = |(lsn, _): &&(u64, String)| (start.0..start.0 + SEGMENT - 65536).contains(lsn);
        for (lsn, what) in theirs.iter().filter(inside) {
            let mut words = what.split(' ');
            let (kind, xid) = (words.next().unwrap(), words.next().unwrap());
            let Ok(xid) = xid.parse::<u32>() else {
                continue;
            };
            let bounds = match kind {
                "COMMIT" | "COMMIT_PREPARED" => summary.commit_xids,
                "ABORT" | "ABORT_PREPARED" => summary.abort_xids,
                _ => continue,
            };
            assert!(
                bounds.is_some_and(|b| b.contains(xid)),
                "{what} in {name}: {bounds:?}"
            );
            if kind.ends_with("_PREPARED") && found_prepared < 4 {
                found_prepared += 1;
                let end = pitr::pg::xact_end::find_xact_end(
                    &bytes,
                    start,
                    SEGMENT,
                    8192,
                    carry.as_ref(),
                    xid,
                )
                .unwrap_or_else(|| panic!("{what} not found in {name}"));
                assert_eq!(
                    (end.lsn.0, end.committed),
                    (*lsn, kind == "COMMIT_PREPARED")
                );
            }
        }
        commits += summary.commits;
        aborts += summary.aborts;
        points.extend(summary.restore_points.iter().map(|p| p.name.clone()));
        last_commit = summary.last_commit_time.or(last_commit);
        carry = summary.carry;
    }
    let count = |prefix: &str| theirs.iter().filter(|(_, w)| w.starts_with(prefix)).count() as u64;
    assert_eq!(commits, count("COMMIT"), "commits (with COMMIT_PREPARED)");
    assert_eq!(aborts, count("ABORT"), "aborts (with ABORT_PREPARED)");
    let mut expected_points: Vec<String> = theirs
        .iter()
        .filter_map(|(_, w)| w.strip_prefix("RESTORE_POINT ").map(str::to_owned))
        .collect();
    expected_points.sort();
    points.sort();
    assert_eq!(points, expected_points);
    assert_eq!(found_prepared, 4, "prepared transactions decoded");
    let newest = theirs
        .iter()
        .filter(|(_, w)| w.starts_with("COMMIT"))
        .map(|(_, w)| w[w.len() - 30..w.len() - 4].to_owned())
        .max()
        .unwrap();
    // pg_waldump: "2026-11-21 11:40:00.123456 UTC".
    assert_eq!(
        last_commit
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
        newest
    );
}

/// The content check archive-push, archive-get and verify make, on real segments: each is
/// the segment its name says (every page, the padding after a switch included), and not the
/// next one, another cluster's, or an earlier timeline's.
fn every_segment_is_the_one_its_name_says(cluster: &PgCluster, segments: &[std::path::PathBuf]) {
    use pitr::pg::WalFileName;
    use pitr::pg::wal_file_check::{Misnamed, WalFileCheck, WalGeometry, check_wal_file};

    let control = std::fs::read(cluster.data.join("global/pg_control")).unwrap();
    let control = pitr::pg::ControlFile::parse(&control).unwrap();
    let geometry = WalGeometry {
        system_identifier: control.system_identifier,
        segment_size: SEGMENT,
        block_size: 8192,
    };
    let name_of = |segno: u64, timeline: u32| {
        WalFileName::parse(&pitr::pg::wal_name::xlog_file_name(
            timeline, segno, SEGMENT,
        ))
        .unwrap()
    };
    for path in segments {
        let name = WalFileName::parse(path.file_name().unwrap().to_str().unwrap()).unwrap();
        let segno = name.segment_number(SEGMENT).unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(check_wal_file(&name, geometry, &bytes), Ok(()), "{name}");
        // As the decoder streams it.
        let mut streamed = WalFileCheck::new(&name, geometry);
        for piece in bytes.chunks(pitr::pg::FEED_BYTES - 3) {
            streamed.feed(piece);
        }
        assert_eq!(streamed.finish(), Ok(()), "{name} streamed");
        // A later timeline's name may hold it (a new timeline's first segment begins with
        // its parent's pages); the partial segment of the same name too.
        assert_eq!(check_wal_file(&name_of(segno, 2), geometry, &bytes), Ok(()));
        let partial = WalFileName::parse(&format!("{name}.partial")).unwrap();
        assert_eq!(check_wal_file(&partial, geometry, &bytes), Ok(()));

        for wrong in [name_of(segno + 1, 1), name_of(segno - 1, 1)] {
            match check_wal_file(&wrong, geometry, &bytes) {
                Err(Misnamed::Segment { held, .. }) => {
                    assert_eq!(held.segment, name.as_str());
                    assert_eq!(held.system_identifier, control.system_identifier);
                }
                other => panic!("{name} as {wrong}: {other:?}"),
            }
        }
        let other_cluster = WalGeometry {
            system_identifier: control.system_identifier ^ 1,
            ..geometry
        };
        assert!(check_wal_file(&name, other_cluster, &bytes).is_err());
        // A page of another segment spliced in: caught although the first page is right.
        if let Some(other) = segments.iter().find(|p| *p != path) {
            let mut spliced = bytes.clone();
            let other = std::fs::read(other).unwrap();
            spliced[8192 * 5..8192 * 6].copy_from_slice(&other[8192 * 5..8192 * 6]);
            assert!(matches!(
                check_wal_file(&name, geometry, &spliced),
                Err(Misnamed::Page { offset: 40960, .. })
            ));
        }
    }
}
