use super::*;

/// Bytes that compress somewhat, like WAL: runs of structure with noise.
fn sample(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if i % 64 < 40 {
                (i / 64) as u8
            } else {
                state as u8
            }
        })
        .collect()
}

const ZSTD: Compression = Compression::Zstd { level: 3 };
const BOTH: [Compression; 2] = [Compression::Lz4, ZSTD];

fn encode_vec(input: &[u8], compression: Compression, threads: usize) -> (Vec<u8>, EncodeSummary) {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(input).unwrap();
    let mut object = Vec::new();
    let summary = encode(&file, &mut object, compression, threads).unwrap();
    (object, summary)
}

/// The frames of an object's body, as (magic, bytes).
fn frames_of(object: &[u8]) -> Vec<(u32, &[u8])> {
    let body = &object[..object.len() - TRAILER_LEN];
    let mut frames = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let magic = u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
        let len = match magic {
            frames::ZSTD_FRAME_MAGIC => {
                zstd::zstd_safe::find_frame_compressed_size(&body[at..]).unwrap()
            }
            _ => lz4_frame_len(&body[at..]),
        };
        frames.push((magic, &body[at..at + len]));
        at += len;
    }
    frames
}

/// The length of the LZ4 frame at the start of `frame` (LZ4 frame format, section 3).
fn lz4_frame_len(frame: &[u8]) -> usize {
    let flags = frame[4];
    let (block_checksums, content_size, content_checksum, dict_id) = (
        flags & 0x10 != 0,
        flags & 0x08 != 0,
        flags & 0x04 != 0,
        flags & 0x01 != 0,
    );
    let mut at = 4 + 2 + 8 * content_size as usize + 4 * dict_id as usize + 1;
    loop {
        let size = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) & 0x7FFF_FFFF;
        at += 4;
        if size == 0 {
            return at + 4 * content_checksum as usize;
        }
        at += size as usize + 4 * block_checksums as usize;
    }
}

#[test]
fn round_trips_any_size_with_any_thread_count() {
    for (len, compression) in [
        0,
        1,
        1000,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 12345,
    ]
    .into_iter()
    .flat_map(|len| BOTH.map(|c| (len, c)))
    {
        let input = sample(len);
        for threads in [1, 2, 3] {
            let (object, summary) = encode_vec(&input, compression, threads);
            assert_eq!(summary.original_len, len as u64);
            assert_eq!(summary.stored_len, object.len() as u64);
            assert_eq!(summary.object_crc32, crc32fast::hash(&object));
            assert_eq!(summary.original_crc32, crc32fast::hash(&input));
            let mut output = Vec::new();
            let decoded = decode(&object[..], &mut output).unwrap();
            assert!(output == input, "len {len} threads {threads} {compression}");
            // The read-based path writes the same bytes.
            let mut from_reader = Vec::new();
            assert_eq!(
                encode_reader(&input[..], &mut from_reader, compression, threads).unwrap(),
                summary
            );
            assert!(from_reader == object);
            // And the path of chunks the caller holds, cut anywhere (a chunk over the frame
            // size is split at it, empty ones are skipped): the same bytes where the chunks
            // are whole frames.
            let chunks = input
                .chunks(CHUNK_SIZE)
                .flat_map(|c| [Ok(Vec::new()), Ok(c.to_vec())]);
            let mut from_chunks = Vec::new();
            assert_eq!(
                encode_owned_chunks(chunks, &mut from_chunks, compression, threads).unwrap(),
                summary
            );
            assert!(from_chunks == object);
            let oversized = std::iter::once(Ok(input.clone()));
            let mut from_one = Vec::new();
            encode_owned_chunks(oversized, &mut from_one, compression, threads).unwrap();
            assert!(from_one == object);
            assert_eq!(decoded.original_len, len as u64);
            assert_eq!(decoded.stored_len, object.len() as u64);
        }
    }
}

#[test]
fn output_is_a_plain_lz4_stream() {
    // Any LZ4 frame decoder restores the original: frames, then a skippable frame.
    let input = sample(2 * CHUNK_SIZE + 7);
    let (object, _) = encode_vec(&input, Compression::Lz4, 2);
    let body = &object[..object.len() - TRAILER_LEN];
    let mut decoder = lz4_flex::frame::FrameDecoder::new(body);
    let mut output = Vec::new();
    // lz4_flex's reader pauses at each frame's end; a CLI decoder reads straight through.
    while !decoder.get_ref().is_empty() {
        decoder.read_to_end(&mut output).unwrap();
    }
    assert!(
        output == input,
        "decoded {} bytes, expected {}",
        output.len(),
        input.len()
    );
    assert_eq!(
        &object[object.len() - TRAILER_LEN..][..4],
        &[0x50, 0x2A, 0x4D, 0x18]
    );
}

#[test]
fn output_is_a_plain_zstd_stream() {
    // libzstd's own streaming decoder reads the frames and skips the trailer's frame, as
    // `zstd -d` does (tests/it/compression.rs runs the CLI on a stored object).
    let input = sample(2 * CHUNK_SIZE + 7);
    let (object, _) = encode_vec(&input, Compression::Zstd { level: 19 }, 2);
    let output = zstd::stream::decode_all(&object[..]).unwrap();
    assert!(output == input, "decoded {} bytes", output.len());
    let frames = frames_of(&object);
    assert_eq!(frames.len(), 3);
    assert!(
        frames
            .iter()
            .all(|(magic, _)| *magic == frames::ZSTD_FRAME_MAGIC)
    );
    // Each frame records its content size and needs no more window than a chunk.
    for (_, frame) in frames {
        let size = zstd::zstd_safe::get_frame_content_size(frame)
            .unwrap()
            .unwrap();
        assert!(size <= CHUNK_SIZE as u64);
    }
}

#[test]
fn every_zstd_level_round_trips() {
    let input = sample(CHUNK_SIZE + 4321);
    for level in [1, 3, 9, 19, 20, 22] {
        let (object, _) = encode_vec(&input, Compression::Zstd { level }, 2);
        let mut output = Vec::new();
        decode(&object[..], &mut output).unwrap();
        assert!(output == input, "level {level}");
    }
}

#[test]
fn frames_of_both_formats_decode_in_one_object() {
    // An object as a repository could never write it, to prove the reader needs no telling:
    // LZ4 and zstd frames mixed, then a trailer over all of them.
    let input = sample(3 * CHUNK_SIZE + 500);
    let (lz4, _) = encode_vec(&input, Compression::Lz4, 2);
    let (zstd, _) = encode_vec(&input, ZSTD, 2);
    let (lz4_frames, zstd_frames) = (frames_of(&lz4), frames_of(&zstd));
    assert_eq!(lz4_frames.len(), 4);
    assert_eq!(zstd_frames.len(), 4);
    let mut body = Vec::new();
    for i in 0..4 {
        let (_, frame) = if i % 2 == 0 {
            lz4_frames[i]
        } else {
            zstd_frames[i]
        };
        body.extend_from_slice(frame);
    }
    let trailer = Trailer {
        original_len: input.len() as u64,
        original_crc32: crc32fast::hash(&input),
        stored_crc32: crc32fast::hash(&body),
        encrypted: false,
    };
    let mut mixed = body.clone();
    mixed.extend_from_slice(&trailer.to_bytes());
    let mut output = Vec::new();
    let decoded = decode(&mixed[..], &mut output).unwrap();
    assert!(output == input);
    assert_eq!(decoded.stored_len, mixed.len() as u64);

    // The trailer's checks hold for mixed objects too.
    let mut swapped = body.clone();
    swapped.extend_from_slice(
        &Trailer {
            stored_crc32: trailer.stored_crc32 ^ 1,
            ..trailer
        }
        .to_bytes(),
    );
    assert_corrupt(&swapped, "compressed data checksum mismatch");
    let mut short = body;
    short.extend_from_slice(
        &Trailer {
            original_len: trailer.original_len + 1,
            ..trailer
        }
        .to_bytes(),
    );
    assert_corrupt(&short, "content mismatch");
}

fn assert_corrupt(object: &[u8], says: &str) {
    match decode(object, io::sink()) {
        Err(CodecError::Corrupt(reason)) => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected corruption ({says}), got {other:?}"),
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let input = sample(CHUNK_SIZE + 999);
    for compression in BOTH {
        let (object, _) = encode_vec(&input, compression, 2);
        // Every byte of the trailer, the frame headers, and a spread through the data.
        let positions = (0..64)
            .chain(object.len() - 64..object.len())
            .chain((0..object.len()).step_by(997));
        for position in positions {
            let mut corrupt = object.clone();
            corrupt[position] ^= 0x10;
            let result = decode(&corrupt[..], io::sink());
            assert!(
                matches!(result, Err(CodecError::Corrupt(_))),
                "{compression}: flip at {position} of {} gave {result:?}",
                object.len()
            );
        }
    }
}

#[test]
fn a_damaged_zstd_frame_is_named_as_such() {
    let input = sample(CHUNK_SIZE + 999);
    let (object, _) = encode_vec(&input, ZSTD, 1);
    // The second frame's header: its frame-header descriptor byte.
    let second = frames_of(&object)[0].1.len();
    let mut corrupt = object.clone();
    corrupt[second + 4] = 0xFF;
    assert_corrupt(&corrupt, "invalid zstd data");
    // Not a frame of either format.
    let mut unknown = object.clone();
    unknown[second..second + 4].copy_from_slice(b"PK\x03\x04");
    assert_corrupt(&unknown, "neither an LZ4 nor a zstd frame");
}

#[test]
fn truncation_and_garbage_are_detected() {
    for compression in BOTH {
        let (object, _) = encode_vec(&sample(5000), compression, 1);
        for cut in [0, 1, TRAILER_LEN - 1, object.len() / 2, object.len() - 1] {
            let result = decode(&object[..cut], io::sink());
            assert!(
                matches!(result, Err(CodecError::Corrupt(_))),
                "{compression}: cut at {cut}: {result:?}"
            );
        }
        let mut longer = object.clone();
        longer.extend_from_slice(b"junk");
        assert!(matches!(
            decode(&longer[..], io::sink()),
            Err(CodecError::Corrupt(_))
        ));
        // A whole frame missing: the frames left decode, the trailer tells.
        let (big, _) = encode_vec(&sample(2 * CHUNK_SIZE), compression, 1);
        let first = frames_of(&big)[0].1.len();
        let mut missing = big[first..].to_vec();
        assert_corrupt(&missing, "mismatch");
        missing.truncate(missing.len() - TRAILER_LEN - 3);
        missing.extend_from_slice(&big[big.len() - TRAILER_LEN..]);
        assert!(matches!(
            decode(&missing[..], io::sink()),
            Err(CodecError::Corrupt(_))
        ));
    }
}

#[test]
fn compare_writer_tells_identical_from_different() {
    let input = sample(300_000);
    let (object, _) = encode_vec(&input, ZSTD, 2);

    let mut same = CompareWriter::new(&input[..]);
    decode(&object[..], &mut same).unwrap();
    assert!(same.finish().unwrap());

    let mut changed = input.clone();
    changed[150_000] ^= 1;
    let mut differs = CompareWriter::new(&changed[..]);
    decode(&object[..], &mut differs).unwrap();
    assert!(!differs.finish().unwrap());

    let mut longer = CompareWriter::new(io::Cursor::new([&input[..], b"x"].concat()));
    decode(&object[..], &mut longer).unwrap();
    assert!(!longer.finish().unwrap());
}
