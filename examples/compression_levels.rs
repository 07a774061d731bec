//! Ratio and speed of each compression choice on real files, as pitr stores them:
//! `cargo run --release --example compression_levels -- LABEL FILE…` (bench/compression.sh
//! runs it on real WAL and a real base backup).
//!
//! The files are concatenated into one staged file (warm in the page cache) and encoded as
//! one object with `codec::encode` by one worker per core, as archive-push does; frames are
//! independent 1 MiB chunks, so the ratio is what separate objects of the same files get.
//! Speeds are of the original bytes (10^6 bytes a second), best of up to three runs;
//! decompression is `codec::decode` (checksums included) into a sink.

use std::io::Write;
use std::time::{Duration, Instant};

use pitr::codec::{self, Compression};

const CHOICES: [Compression; 6] = [
    Compression::Lz4,
    Compression::Zstd { level: 1 },
    Compression::Zstd { level: 3 },
    Compression::Zstd { level: 6 },
    Compression::Zstd { level: 9 },
    Compression::Zstd { level: 19 },
];

/// The best time of `f`, run up to three times while the runs so far took under 2 s.
fn best<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let (mut best, mut spent, mut runs) = (Duration::MAX, Duration::ZERO, 0);
    loop {
        let start = Instant::now();
        let value = f();
        let took = start.elapsed();
        best = best.min(took);
        spent += took;
        runs += 1;
        if runs == 3 || spent > Duration::from_secs(2) {
            return (best, value);
        }
    }
}

/// MB/s, with a decimal where it is small.
fn speed(mb: f64, took: Duration) -> String {
    match mb / took.as_secs_f64() {
        fast if fast >= 10.0 => format!("{fast:.0}"),
        slow => format!("{slow:.1}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let label = args.next().expect("usage: compression_levels LABEL FILE…");
    let mut staged = tempfile::tempfile().unwrap();
    let (mut files, mut original) = (0u64, 0u64);
    for path in args {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        staged.write_all(&bytes).unwrap();
        files += 1;
        original += bytes.len() as u64;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mb = original as f64 / 1e6;
    println!("{label}: {files} files, {mb:.1} MB, {threads} compression threads");
    println!(
        "  {:<14} {:>7} {:>11} {:>15} {:>17}",
        "compression", "ratio", "stored MB", "compress MB/s", "decompress MB/s"
    );
    let mut object = Vec::with_capacity(original as usize + (1 << 20));
    for compression in CHOICES {
        let (encode_time, summary) = best(|| {
            object.clear();
            codec::encode(&staged, &mut object, compression, threads).unwrap()
        });
        assert_eq!(summary.original_len, original);
        let (decode_time, decoded) = best(|| codec::decode(&object[..], std::io::sink()).unwrap());
        assert_eq!(decoded.original_len, original);
        println!(
            "  {:<14} {:>7.2} {:>11.1} {:>15} {:>17}",
            compression.to_string(),
            summary.ratio(),
            summary.stored_len as f64 / 1e6,
            speed(mb, encode_time),
            speed(mb, decode_time)
        );
    }
}
