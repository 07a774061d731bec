//! WAL summary throughput on real segments, alone and with the segment's block map (what
//! archive-push computes in one pass):
//! `cargo run --release --example summary_speed -- SEGMENT…` (16 MiB segments, 8 KiB pages).
//! Prints the best of 5 per segment; archive-push's budget for it is 20% of a push.

use std::time::{Duration, Instant};

use pitr::pg::wal_summary::SegmentSummarizer;
use pitr::pg::{Lsn, WalFileName};

const SEGMENT: u64 = 16 << 20;

/// The best of 5 runs over `input`, and the last run's (commits, mapped ranges).
fn best_of_5(input: &[u8], start: Lsn, with_map: bool) -> (Duration, u64, usize) {
    let mut best = Duration::MAX;
    let mut found = (0, 0);
    for _ in 0..5 {
        let clock = Instant::now();
        let mut summarizer = SegmentSummarizer::new(start, SEGMENT, 8192, None);
        if with_map {
            summarizer = summarizer.with_block_map();
        }
        for piece in input.chunks(64 << 10) {
            summarizer.feed(piece);
        }
        let (summary, map) = summarizer.finish_with_map();
        best = best.min(clock.elapsed());
        let ranges = map.map_or(0, |m| m.forks.iter().map(|f| f.ranges.len()).sum());
        found = (summary.commits, ranges);
    }
    (best, found.0, found.1)
}

fn main() {
    let (mut total, mut total_map, mut count) = (Duration::ZERO, Duration::ZERO, 0);
    for path in std::env::args().skip(1) {
        let input = std::fs::read(&path).unwrap();
        let leaf = path.rsplit('/').next().unwrap();
        let segno = WalFileName::parse(leaf)
            .unwrap()
            .segment_number(SEGMENT)
            .unwrap();
        let start = Lsn(segno * SEGMENT);
        let (alone, commits, _) = best_of_5(&input, start, false);
        let (mapped, _, ranges) = best_of_5(&input, start, true);
        println!(
            "{leaf}: summary {:.2} ms, with block map {:.2} ms ({commits} commits, {ranges} block ranges)",
            alone.as_secs_f64() * 1e3,
            mapped.as_secs_f64() * 1e3,
        );
        total += alone;
        total_map += mapped;
        count += 1;
    }
    if count > 0 {
        println!(
            "mean: summary {:.2} ms, with block map {:.2} ms",
            total.as_secs_f64() * 1e3 / count as f64,
            total_map.as_secs_f64() * 1e3 / count as f64
        );
    }
}
