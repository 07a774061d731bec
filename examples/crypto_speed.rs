//! Encryption's own costs, without processes or I/O (bench/encryption.sh measures them in
//! place): `cargo run --release --example crypto_speed -- [FILE…]`.
//! Prints the key-encryption key's derivation (Argon2id at its default costs, HKDF for a key
//! file) and XChaCha20-Poly1305 seal and open of 1 MiB frames (one compressed chunk at most),
//! best of 5; with FILEs, of their lz4-compressed frames as stored.

use std::time::{Duration, Instant};

use pitr::codec::crypto::{Argon2Params, DataKey, FrameKind, Kek, random_bytes};

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Seals and opens `frames`; prints MB/s of each.
fn aead(label: &str, frames: &[Vec<u8>]) {
    let key = DataKey::generate();
    let cipher = key.for_object("wal/0000000100000000/000000010000000000000001");
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let mut sealed = Vec::new();
    let seal = best(5, || {
        sealed = frames
            .iter()
            .enumerate()
            .map(|(i, frame)| {
                let mut buffer = frame.clone();
                let nonce = cipher.seal(i as u64, FrameKind::Data, &mut buffer);
                (nonce, buffer)
            })
            .collect::<Vec<_>>();
    });
    let open = best(5, || {
        for (i, (nonce, buffer)) in sealed.iter().enumerate() {
            let mut buffer = buffer.clone();
            assert!(cipher.open(i as u64, FrameKind::Data, nonce, &mut buffer));
        }
    });
    let rate = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{label}: {bytes} bytes, seal {:.2} ms ({:.0} MB/s), open {:.2} ms ({:.0} MB/s)",
        ms(seal),
        rate(seal),
        ms(open),
        rate(open)
    );
}

fn main() {
    let salt = random_bytes::<16>();
    let argon = best(5, || {
        Kek::from_passphrase(
            b"correct horse battery staple",
            &salt,
            Argon2Params::DEFAULT,
        )
        .unwrap()
    });
    let p = Argon2Params::DEFAULT;
    println!(
        "Argon2id ({} KiB, {} passes, parallelism {}): {:.1} ms",
        p.memory_kib,
        p.iterations,
        p.parallelism,
        ms(argon)
    );
    let content = random_bytes::<32>();
    println!(
        "HKDF-SHA256 (key file): {:.3} ms",
        ms(best(5, || Kek::from_key_file(&content, &salt)))
    );
    let random: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            (0..pitr::codec::CHUNK_SIZE)
                .map(|i| (i * 7 + i / 3) as u8)
                .collect()
        })
        .collect();
    aead("16 frames of 1 MiB", &random);
    for path in std::env::args().skip(1) {
        let input = std::fs::read(&path).unwrap();
        let frames: Vec<Vec<u8>> = input
            .chunks(pitr::codec::CHUNK_SIZE)
            .map(lz4_flex::block::compress)
            .collect();
        aead(&format!("{path}, lz4 frames"), &frames);
    }
}
