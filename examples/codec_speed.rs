//! Codec throughput on real files: `cargo run --release --example codec_speed -- FILE…`
//! Prints encode (1 and 2 threads) and decode times per file, best of 5.

use std::time::{Duration, Instant};

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = f();
        best = best.min(start.elapsed());
        out = Some(value);
    }
    (best, out.unwrap())
}

fn main() {
    for path in std::env::args().skip(1) {
        let input = std::fs::read(&path).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut line = format!("{path}: {} bytes", input.len());
        let mut object = Vec::new();
        for threads in [1, 2] {
            let (t, _) = best(5, || {
                object.clear();
                pitr::codec::encode(&file, &mut object, pitr::codec::Compression::Lz4, threads)
                    .unwrap()
            });
            line += &format!(", encode x{threads} {:.1} ms", ms(t));
        }
        let (t, _) = best(5, || {
            let mut out = Vec::with_capacity(input.len());
            pitr::codec::decode(&object[..], &mut out).unwrap()
        });
        line += &format!(
            ", decode {:.1} ms, crc32 {:.1} ms, ratio {:.2}",
            ms(t),
            ms(best(5, || crc32fast::hash(&input)).0),
            input.len() as f64 / object.len() as f64
        );
        let body = &object[..object.len() - pitr::codec::TRAILER_LEN];
        let (t, _) = best(5, || {
            use std::io::Read;
            let mut decoder = lz4_flex::frame::FrameDecoder::new(body);
            let mut out = Vec::with_capacity(input.len());
            while !decoder.get_ref().is_empty() {
                decoder.read_to_end(&mut out).unwrap();
            }
            out.len()
        });
        line += &format!(", raw FrameDecoder {:.1} ms", ms(t));
        let (t, _) = best(5, || {
            let mut out = vec![0u8; input.len()];
            let mut n = 0;
            for chunk in input.chunks(pitr::codec::CHUNK_SIZE) {
                let c = lz4_flex::block::compress(chunk);
                n += lz4_flex::block::decompress_into(&c, &mut out[n..]).unwrap();
            }
            n
        });
        line += &format!(", block compress+decompress {:.1} ms", ms(t));
        let name = std::path::Path::new(&path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let start = pitr::pg::WalFileName::parse(name)
            .ok()
            .and_then(|n| n.segment_number(input.len() as u64))
            .map_or(0, |segno| segno * input.len() as u64);
        let (t, summary) = best(5, || {
            pitr::pg::wal_summary::summarize_segment(
                &input,
                pitr::pg::Lsn(start),
                input.len() as u64,
                8192,
                None,
            )
        });
        line += &format!(", summary {:.1} ms ({} commits)", ms(t), summary.commits);
        println!("{line}");
    }
}
