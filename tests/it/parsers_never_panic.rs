//! Nothing read from the repository, a WAL file, a manifest, a history file, a config file or
//! the command line can panic pitr: every parser takes arbitrary and mutated input and
//! answers with a value or an error.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use pitr::catalog::RepositoryIdentity;
use pitr::catalog::backup::BackupManifest;
use pitr::catalog::wal_index::StoredSegmentSummary;
use pitr::cli::Cli;
use pitr::codec::{self, Trailer};
use pitr::config::Settings;
use pitr::pg::backup_label::parse_backup_label;
use pitr::pg::recovery_target::{TargetTimeline, parse_target_time};
use pitr::pg::timeline::parse_history;
use pitr::pg::wal_summary::SegmentSummarizer;
use pitr::pg::{Lsn, WalFileName};

const MANIFEST: &str = r#"{
  "format": 1, "id": "20261122T010203Z", "label": "pitr backup 20261122T010203Z",
  "system_identifier": "7301234567890123457", "pg_version": 15, "timeline": 1,
  "start_lsn": "0/2000028", "stop_lsn": "0/2000138",
  "start_time": "2026-11-22T01:02:03.000001Z", "stop_time": "2026-11-22T01:02:04.000002Z",
  "start_wal_segment": "000000010000000000000002", "stop_wal_segment": "000000010000000000000002",
  "backup_label": "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nLABEL: pitr backup 20261122T010203Z\nSTART TIMELINE: 1\n",
  "tablespace_map": "16400 /srv/ts\n", "tablespaces": [{"oid": 16400, "path": "/srv/ts"}],
  "size_bytes": 8192, "stored_bytes": 100,
  "directories": [{"path": "base", "mode": 448}, {"path": "pg_tblspc/16400", "mode": 448}],
  "files": [{"path": "base/1/1259", "size": 8192, "file_offset": 0, "mode": 384,
             "mtime": 1, "crc32c": 5, "object": 0, "offset": 0},
            {"path": "global/pg_control", "size": 8192, "file_offset": 0, "mode": 384,
             "mtime": 1, "crc32c": 6, "object": 0, "offset": 8192}]
}"#;

/// An incremental manifest: a file referred to its parent, another with a delta over it.
const INCREMENTAL: &str = r#"{
  "format": 2, "id": "20261122T010203Z", "label": "pitr backup 20261122T010203Z",
  "system_identifier": "7301234567890123457", "pg_version": 15, "timeline": 1,
  "start_lsn": "0/2000028", "stop_lsn": "0/2000138",
  "start_time": "2026-11-22T01:02:03.000001Z", "stop_time": "2026-11-22T01:02:04.000002Z",
  "start_wal_segment": "000000010000000000000002", "stop_wal_segment": "000000010000000000000002",
  "backup_label": "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nLABEL: pitr backup 20261122T010203Z\nSTART TIMELINE: 1\n",
  "tablespace_map": null, "tablespaces": [],
  "size_bytes": 8192, "stored_bytes": 100, "directories": [{"path": "base", "mode": 448}],
  "backup_type": "incr", "parent": "20261121T010203Z", "block_size": 8192,
  "files": [{"path": "base/1/1259", "size": 24576, "file_offset": 0, "mode": 384,
             "mtime": 1, "crc32c": 5, "object": 3, "offset": 0, "backup": "20261121T010203Z"},
            {"path": "base/1/1259", "size": 16384, "file_offset": 0, "mode": 384,
             "mtime": 1, "crc32c": 5, "object": 0, "offset": 0,
             "delta": {"runs": [[0, 1], [3, 1]], "file_size": 32768, "depth": 1}},
            {"path": "global/pg_control", "size": 8192, "file_offset": 0, "mode": 384,
             "mtime": 1, "crc32c": 6, "object": 0, "offset": 16384}]
}"#;

const IDENTITY: &str = r#"{"format": 1, "system_identifier": "7301234567890123457",
  "pg_version": 15, "pg_control_version": 1300, "catalog_version": 202209061,
  "wal_segment_size": 16777216, "wal_block_size": 8192,
  "created_at": "2026-11-22T01:02:03Z", "created_by": "pitr 0.1.0"}"#;

const SUMMARY: &str = r#"{"format": 1, "segment": "000000010000000000000002",
  "first_record": "0/2000028", "last_record_end": "0/2FFFFE0",
  "first_commit_time": "2026-11-22T01:02:03.000001Z", "last_commit_time": "2026-11-22T01:02:04Z",
  "commits": 3, "aborts": 0, "commit_xids": {"min": 5, "max": 9}, "abort_xids": null,
  "restore_points": [{"name": "p", "lsn": "0/2000100", "time": "2026-11-22T01:02:03Z"}],
  "end_of_wal": null, "carry": {"record_start": "0/2FFFFE0", "bytes": "AAAAAAAAAAAAAAAA"}}"#;

const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
    STOP WAL LOCATION: 0/2000138 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n\
    LABEL: pitr backup x\nSTART TIMELINE: 1\nSTOP TIMELINE: 1\n";

const HISTORY: &str = "1\t0/3000158\tno recovery target specified\n2\t0/5000000\tx\n";

/// Valid input with a few bytes changed, dropped or cut off: the near misses real damage makes.
fn mutated(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    mutated_bytes(valid.as_bytes())
}

fn mutated_bytes(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 0..6),
        prop::collection::vec(0..len, 0..3),
        0..=len,
    )
        .prop_map(move |(flips, drops, cut)| {
            let mut bytes = valid.to_vec();
            for (at, value) in flips {
                bytes[at] = value;
            }
            for at in drops {
                if at < bytes.len() {
                    bytes.remove(at);
                }
            }
            bytes.truncate(cut.max(len / 2));
            bytes
        })
}

/// Two-frame objects (the first frame a whole chunk), LZ4 and zstd.
fn objects() -> &'static [Vec<u8>; 2] {
    static OBJECTS: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    OBJECTS.get_or_init(|| {
        let input: Vec<u8> = (0..codec::CHUNK_SIZE + 3000)
            .map(|i| (i / 100 % 251) as u8)
            .collect();
        [
            codec::Compression::Lz4,
            codec::Compression::Zstd { level: 3 },
        ]
        .map(|compression| {
            let mut object = Vec::new();
            codec::encode_reader(&input[..], &mut object, compression, 2).unwrap();
            object
        })
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `bytes` with the seal pitr writes (an object without one is refused before its content
/// is looked at), so that the content's own checks are what refuse it; as they are when
/// they do not deserialise as a `T`.
fn sealed<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Vec<u8> {
    let Ok(value) = serde_json::from_slice::<T>(bytes) else {
        return bytes.to_vec();
    };
    let compact = serde_json::to_vec(&value).unwrap();
    let mut json = serde_json::to_value(&value).unwrap();
    json["checksum"] = format!("sha256:{}", hex::encode(Sha256::digest(&compact))).into();
    serde_json::to_vec_pretty(&json).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn manifests(bytes in mutated(MANIFEST), junk in any::<Vec<u8>>()) {
        let _ = BackupManifest::parse(&bytes, "20261122T010203Z");
        let _ = BackupManifest::parse(&sealed::<BackupManifest>(&bytes), "20261122T010203Z");
        let _ = BackupManifest::parse(&junk, "x");
    }

    #[test]
    fn incremental_manifests(bytes in mutated(INCREMENTAL)) {
        if let Ok(manifest) =
            BackupManifest::parse(&sealed::<BackupManifest>(&bytes), "20261122T010203Z")
        {
            // What parses is usable: the restore's arithmetic on it cannot overflow.
            for delta in manifest.files.iter().filter_map(|f| f.delta.as_ref()) {
                prop_assert!(delta.blocks().count() as u64 == delta.block_count());
            }
        }
    }

    #[test]
    fn repository_identities(bytes in mutated(IDENTITY), junk in any::<Vec<u8>>()) {
        if let Ok(identity) = RepositoryIdentity::parse(&sealed::<RepositoryIdentity>(&bytes)) {
            // What parses is usable: segment arithmetic on it cannot divide by zero.
            prop_assert!(identity.wal_segment_size.is_power_of_two());
        }
        let _ = RepositoryIdentity::parse(&junk);
    }

    #[test]
    fn block_references_of_any_record(mut bytes in any::<Vec<u8>>(), major in 13u32..=18, ids in any::<[u8; 4]>()) {
        // A record header claiming the bytes' length, then headers of any kind.
        if bytes.len() >= 28 {
            let total = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&total.to_le_bytes());
            bytes[24] = ids[0] % 34;
            bytes[25] = ids[1];
        }
        let _ = pitr::pg::wal_blocks::record_changes(&bytes, major);
    }

    #[test]
    fn wal_summaries_and_their_carry(bytes in mutated(SUMMARY), wal in any::<Vec<u8>>()) {
        if let Ok(stored) = serde_json::from_slice::<StoredSegmentSummary>(&bytes) {
            // A carry read from the repository resumes decoding: whatever it holds.
            let mut summarizer = SegmentSummarizer::new(
                Lsn(0x300_0000), 16 << 20, 8192, stored.summary.carry.as_ref());
            summarizer.feed(&wal);
            let _ = summarizer.finish();
            // The same with a block map: the carry may hold any record's first bytes.
            let mut summarizer = SegmentSummarizer::new(
                Lsn(0x300_0000), 16 << 20, 8192, stored.summary.carry.as_ref()).with_block_map();
            summarizer.feed(&wal);
            let _ = summarizer.finish_with_map();
            let _ = pitr::pg::xact_end::find_xact_end(
                &wal, Lsn(0x300_0000), 16 << 20, 8192, stored.summary.carry.as_ref(), 7);
            let _ = stored.summary.may_end_xid(7);
        }
    }

    #[test]
    fn history_files(bytes in mutated(HISTORY), junk in ".*", timeline in any::<u32>()) {
        let _ = parse_history(timeline, &text(&bytes));
        let _ = parse_history(3, &junk);
    }

    #[test]
    fn backup_labels(bytes in mutated(LABEL), junk in ".*") {
        let _ = parse_backup_label(&text(&bytes));
        let _ = parse_backup_label(&junk);
    }

    #[test]
    fn object_trailers_and_objects(bytes in any::<Vec<u8>>(), trailer in any::<[u8; 40]>()) {
        let _ = Trailer::parse(&trailer);
        let _ = Trailer::parse(&bytes);
        let _ = codec::decode(&bytes[..], std::io::sink());
    }

    #[test]
    fn wal_file_names(name in "[0-9A-Fa-f.a-z]{0,40}", shift in 20u32..=30) {
        if let Ok(parsed) = WalFileName::parse(&name) {
            let size = 1u64 << shift;
            let _ = parsed.segment_number(size);
            let _ = parsed.start_lsn(size);
        }
    }

    #[test]
    fn wal_segment_names_of_every_size(tli in 1u32.., log in any::<u32>(), seg in any::<u32>(), shift in 20u32..=30) {
        let name = format!("{tli:08X}{log:08X}{seg:08X}");
        let parsed = WalFileName::parse(&name).unwrap();
        let size = 1u64 << shift;
        if let Some(start) = parsed.start_lsn(size) {
            prop_assert_eq!(Some(start.segment_number(size)), parsed.segment_number(size));
        }
    }

    #[test]
    fn config_files(bytes in mutated("repo = \"/var/lib/pitr\"\ns3_endpoint = \"http://x\"\ns3_path_style = true\n"), junk in ".*") {
        let _ = Settings::from_toml(&text(&bytes), std::path::Path::new("pitr.toml"));
        let _ = Settings::from_toml(&junk, std::path::Path::new("pitr.toml"));
    }

    #[test]
    fn command_lines(args in prop::collection::vec("[-a-z0-9=/:. ]{0,24}", 0..8)) {
        let mut all = vec!["pitr".to_owned()];
        all.extend(args);
        let _ = <Cli as clap::Parser>::try_parse_from(all);
    }

    #[test]
    fn recovery_targets(time in ".*", timeline in ".*", lsn in ".*") {
        let _ = parse_target_time(&time);
        let _ = timeline.parse::<TargetTimeline>();
        let _ = lsn.parse::<Lsn>();
    }
}

#[test]
fn the_valid_samples_parse() {
    BackupManifest::parse(
        &sealed::<BackupManifest>(MANIFEST.as_bytes()),
        "20261122T010203Z",
    )
    .unwrap();
    RepositoryIdentity::parse(&sealed::<RepositoryIdentity>(IDENTITY.as_bytes())).unwrap();
    // Without the seal, the same content is refused.
    let err = BackupManifest::parse(MANIFEST.as_bytes(), "20261122T010203Z").unwrap_err();
    assert!(err.contains("no \"checksum\" field"), "{err}");
    assert!(RepositoryIdentity::parse(IDENTITY.as_bytes()).is_err());
    serde_json::from_str::<StoredSegmentSummary>(SUMMARY).unwrap();
    parse_history(3, HISTORY).unwrap();
    parse_backup_label(LABEL).unwrap();
}

#[test]
fn manifests_that_would_escape_or_overflow_are_refused() {
    let bad = [
        MANIFEST.replace("base/1/1259", "../../etc/passwd"),
        MANIFEST.replace("base/1/1259", "/etc/passwd"),
        MANIFEST.replace("\"path\": \"base\"", "\"path\": \"base/../..\""),
        MANIFEST.replace("/srv/ts\"}", "relative\"}"),
        MANIFEST.replace("\"oid\": 16400", "\"oid\": 16401"),
        MANIFEST.replace(
            "\"file_offset\": 0",
            "\"file_offset\": 18446744073709551615",
        ),
        MANIFEST.replace("\"stop_lsn\": \"0/2000138\"", "\"stop_lsn\": \"0/1000000\""),
        MANIFEST.replace(
            "START WAL LOCATION: 0/2000028",
            "START WAL LOCATION: 0/2000029",
        ),
        MANIFEST.replace(
            "\"start_lsn\": \"0/2000028\"",
            "\"start_lsn\": \"nonsense\"",
        ),
        MANIFEST.replace("\"format\": 1", "\"format\": 3"),
        // A delta in a format-1 manifest (which an older pitr would restore without it),
        // runs out of order or past the file's end, blocks its size does not hold, a
        // referred backup that is a path, a parent named by a full backup.
        INCREMENTAL.replace("\"format\": 2", "\"format\": 1"),
        INCREMENTAL.replace("[[0, 1], [3, 1]]", "[[3, 1], [0, 1]]"),
        INCREMENTAL.replace("\"file_size\": 32768", "\"file_size\": 16384"),
        INCREMENTAL.replace("\"size\": 16384", "\"size\": 8192"),
        INCREMENTAL.replace("\"backup\": \"20261121T010203Z\"", "\"backup\": \"../x\""),
        INCREMENTAL.replace("\"backup_type\": \"incr\", ", ""),
        INCREMENTAL.replace(
            "\"block_size\": 8192",
            "\"block_size\": 9223372036854775808",
        ),
        MANIFEST.replace("global/pg_control", "global/pg_control.old"),
    ];
    for manifest in &bad {
        // Sealed: the content is what is refused, not a missing checksum.
        let err = BackupManifest::parse(
            &sealed::<BackupManifest>(manifest.as_bytes()),
            "20261122T010203Z",
        )
        .unwrap_err();
        assert!(!err.contains("checksum"), "{manifest}: {err}");
    }
    let sample = sealed::<BackupManifest>(MANIFEST.as_bytes());
    assert!(BackupManifest::parse(&sample, "another-id").is_err());
    let incremental = sealed::<BackupManifest>(INCREMENTAL.as_bytes());
    let parsed = BackupManifest::parse(&incremental, "20261122T010203Z").unwrap();
    assert_eq!(parsed.referenced_objects().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// pg_control and a WAL segment's first page come from local files that may be anything.
    #[test]
    fn control_files_and_wal_page_headers(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        let _ = pitr::pg::ControlFile::parse(&bytes);
        let _ = pitr::pg::WalLongPageHeader::parse(&bytes);
    }
}

proptest! {
    // Each case decodes a megabyte.
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn damaged_lz4_objects(bytes in mutated_bytes(&objects()[0])) {
        let _ = codec::decode(&bytes[..], std::io::sink());
    }

    #[test]
    fn damaged_zstd_objects(bytes in mutated_bytes(&objects()[1])) {
        let _ = codec::decode(&bytes[..], std::io::sink());
    }
}
