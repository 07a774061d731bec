//! Memory stays bounded whatever the segment size: a 1 GB segment (the largest PostgreSQL
//! allows) goes through archive-push and archive-get with a small peak RSS.
//!
//! The commands run under a small parent that measures them (see `run_measured`).

use std::io::{BufWriter, Read, Write};
use std::process::Command;

use crate::common::*;
use sha2::{Digest, Sha256};

const GB: u64 = 1 << 30;
const LIMIT_BYTES: i64 = 64 << 20;

/// Runs a command and returns (exit code, peak RSS in bytes) from wait4, through a small
/// Python parent: Linux counts in a child's peak RSS the memory of the process it was forked
/// from, and this test binary (every area's tests at once) is large.
fn run_measured(cmd: &Command) -> (i32, i64) {
    const MEASURE: &str = "\
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], 'w').write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
";
    let report = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("python3")
        .args(["-c", MEASURE])
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .status()
        .unwrap();
    let kib: i64 = std::fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (status.code().unwrap_or(-1), kib * 1024)
}

/// A 1 GB file that looks like a segment of the cluster described by `repository.json`:
/// valid page headers (a long one first), then mixed compressible and incompressible data.
fn write_segment(path: &std::path::Path, system_identifier: u64) -> u32 {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut crc = crc32fast::Hasher::new();
    // Half of each page constant, half from a random pool: compressible, but not trivially.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let pool: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut page = vec![0u8; 8192];
    for page_no in 0..(GB / 8192) {
        let offset = (page_no as usize * 7919) % (pool.len() - 4096);
        page[..4096].fill(page_no as u8);
        page[4096..].copy_from_slice(&pool[offset..offset + 4096]);
        // Every page's header names its place, as archive-push checks.
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes()); // PostgreSQL 15
        page[2..4].copy_from_slice(&0u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        // Segment 1 starts at 1 GB.
        page[8..16].copy_from_slice(&(GB + page_no * 8192).to_le_bytes());
        page[16..24].fill(0);
        if page_no == 0 {
            page[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
            page[24..32].copy_from_slice(&system_identifier.to_le_bytes());
            page[32..36].copy_from_slice(&(GB as u32).to_le_bytes());
            page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        }
        crc.update(&page);
        out.write_all(&page).unwrap();
    }
    out.flush().unwrap();
    crc.finalize()
}

fn crc_of_file(path: &std::path::Path) -> (u64, u32) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return (len, crc.finalize());
        }
        len += n as u64;
        crc.update(&buf[..n]);
    }
}

#[test]
fn a_1_gb_segment_is_archived_and_restored_in_bounded_memory() {
    let dir = TestDir::new("memory");
    let repo = dir.subdir("repo");
    let system_identifier = 7_300_000_000_000_000_001u64;
    let identity: pitr::catalog::RepositoryIdentity = serde_json::from_str(&format!(
        r#"{{"format":1,"system_identifier":"{system_identifier}","pg_version":15,
        "pg_control_version":1300,"catalog_version":202209061,"wal_segment_size":{GB},
        "wal_block_size":8192,"created_at":"2026-01-01T00:00:00Z","created_by":"test"}}"#
    ))
    .unwrap();
    // Sealed as docs/repository-format.md says: an identity without its checksum is refused.
    let compact = serde_json::to_vec(&identity).unwrap();
    let mut sealed = serde_json::to_value(&identity).unwrap();
    sealed["checksum"] = format!("sha256:{}", hex::encode(Sha256::digest(&compact))).into();
    std::fs::write(
        repo.join("repository.json"),
        serde_json::to_vec(&sealed).unwrap(),
    )
    .unwrap();
    let segment = dir.path().join("000000010000000000000001");
    let crc = write_segment(&segment, system_identifier);
    let pitr = env!("CARGO_BIN_EXE_pitr");

    let (code, push_rss) = run_measured(
        Command::new(pitr)
            .arg("--repo")
            .arg(&repo)
            .arg("archive-push")
            .arg(&segment),
    );
    assert_eq!(code, 0);
    std::fs::remove_file(&segment).unwrap();

    let restored = dir.path().join("restored");
    let (code, get_rss) = run_measured(
        Command::new(pitr)
            .arg("--repo")
            .arg(&repo)
            .args(["archive-get", "000000010000000000000001"])
            .arg(&restored),
    );
    assert_eq!(code, 0);
    assert_eq!(crc_of_file(&restored), (GB, crc));

    eprintln!(
        "peak RSS for a 1 GB segment: push {} MiB, get {} MiB",
        push_rss >> 20,
        get_rss >> 20
    );
    assert!(
        push_rss < LIMIT_BYTES,
        "archive-push peaked at {push_rss} bytes"
    );
    assert!(
        get_rss < LIMIT_BYTES,
        "archive-get peaked at {get_rss} bytes"
    );
}
