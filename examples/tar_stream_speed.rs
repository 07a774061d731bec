//! Throughput of `pg::tar_stream` on a synthetic 1 GiB archive shaped like a base backup
//! (8 KiB and 1 GiB-segment-sized files mixed), fed in 64 KiB pieces as CopyData brings them:
//! `cargo run --release --example tar_stream_speed` (or without `--release` for the debug
//! figure). Prints the best of 3.

use std::time::{Duration, Instant};

use pitr::pg::tar_stream::{ArchiveEnd, TarEvent, TarStream};

const BLOCK: usize = 512;

fn header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000600 ");
    h[108..116].copy_from_slice(b"0000032 ");
    h[116..124].copy_from_slice(b"0000032 ");
    h[124..136].copy_from_slice(format!("{size:011o} ").as_bytes());
    h[136..148].copy_from_slice(b"14651273000 ");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    h[148..156].copy_from_slice(format!("{sum:07o} ").as_bytes());
    h
}

fn main() {
    // 64 MiB of archive: 4096 files of 8 KiB, then one of 32 MiB (relation segments are up
    // to 1 GiB); sent 16 times over, it is a 1 GiB stream.
    let mut piece = Vec::with_capacity(70 << 20);
    for i in 0..4096 {
        piece.extend_from_slice(&header(&format!("base/5/{i}"), 8192));
        piece.extend((0..8192u32).map(|b| (b % 251) as u8));
    }
    let big = 32u64 << 20;
    piece.extend_from_slice(&header("base/5/big", big));
    piece.resize(piece.len() + big as usize, 7);
    let rounds = (1u64 << 30).div_ceil(piece.len() as u64);
    let total = piece.len() as u64 * rounds;

    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut stream = TarStream::new();
        let (mut entries, mut bytes) = (0u64, 0u64);
        for _ in 0..rounds {
            for chunk in piece.chunks(64 << 10) {
                let mut rest = chunk;
                while let Some(event) = stream.next_event(&mut rest).unwrap() {
                    match event {
                        TarEvent::Entry(_) => entries += 1,
                        TarEvent::Data(d) => bytes += d.len() as u64,
                        _ => {}
                    }
                }
            }
        }
        stream.feed(&[0; 2 * BLOCK]).unwrap();
        stream.finish(ArchiveEnd::Marker).unwrap();
        best = best.min(start.elapsed());
        assert_eq!(entries, rounds * 4097);
        assert!(bytes > 0);
    }
    println!(
        "{:.0} MiB in {:.3} s: {:.0} MiB/s ({} entries per 64 MiB)",
        total as f64 / (1 << 20) as f64,
        best.as_secs_f64(),
        total as f64 / (1 << 20) as f64 / best.as_secs_f64(),
        4097
    );
}
