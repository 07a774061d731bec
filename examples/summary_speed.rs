//! WAL summary throughput on real segments:
//! `cargo run --release --example summary_speed -- SEGMENT…` (16 MiB segments, 8 KiB pages).
//! Prints the best of 5 per segment; archive-push's budget for it is 20% of a push.

use std::time::{Duration, Instant};

use pitr::pg::{Lsn, WalFileName, wal_summary::summarize_segment};

fn main() {
    const SEGMENT: u64 = 16 << 20;
    let mut total = Duration::ZERO;
    let mut count = 0;
    for path in std::env::args().skip(1) {
        let input = std::fs::read(&path).unwrap();
        let leaf = path.rsplit('/').next().unwrap();
        let segno = WalFileName::parse(leaf)
            .unwrap()
            .segment_number(SEGMENT)
            .unwrap();
        let mut best = Duration::MAX;
        let mut summary = None;
        for _ in 0..5 {
            let start = Instant::now();
            summary = Some(summarize_segment(
                &input,
                Lsn(segno * SEGMENT),
                SEGMENT,
                8192,
                None,
            ));
            best = best.min(start.elapsed());
        }
        let summary = summary.unwrap();
        println!(
            "{leaf}: {:.2} ms, {} commits, end {:?}",
            best.as_secs_f64() * 1e3,
            summary.commits,
            summary.end_of_wal
        );
        total += best;
        count += 1;
    }
    if count > 0 {
        println!("mean {:.2} ms", total.as_secs_f64() * 1e3 / count as f64);
    }
}
