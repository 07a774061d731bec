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

fn encode_vec(input: &[u8], threads: usize) -> (Vec<u8>, EncodeSummary) {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(input).unwrap();
    let mut object = Vec::new();
    let summary = encode(&file, &mut object, threads).unwrap();
    (object, summary)
}

#[test]
fn round_trips_any_size_with_any_thread_count() {
    for len in [
        0,
        1,
        1000,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 12345,
    ] {
        let input = sample(len);
        for threads in [1, 2, 3] {
            let (object, summary) = encode_vec(&input, threads);
            assert_eq!(summary.original_len, len as u64);
            assert_eq!(summary.stored_len, object.len() as u64);
            assert_eq!(summary.object_crc32, crc32fast::hash(&object));
            assert_eq!(summary.original_crc32, crc32fast::hash(&input));
            let mut output = Vec::new();
            let decoded = decode(&object[..], &mut output).unwrap();
            assert!(output == input, "len {len} threads {threads}");
            // The read-based path writes the same bytes.
            let mut from_reader = Vec::new();
            assert_eq!(
                encode_reader(&input[..], &mut from_reader, threads).unwrap(),
                summary
            );
            assert!(from_reader == object);
            assert_eq!(decoded.original_len, len as u64);
            assert_eq!(decoded.stored_len, object.len() as u64);
        }
    }
}

#[test]
fn output_is_a_plain_lz4_stream() {
    // Any LZ4 frame decoder restores the original: frames, then a skippable frame.
    let input = sample(2 * CHUNK_SIZE + 7);
    let (object, _) = encode_vec(&input, 2);
    let body = &object[..object.len() - TRAILER_LEN];
    let mut decoder = FrameDecoder::new(body);
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
fn every_flipped_byte_is_detected() {
    let input = sample(CHUNK_SIZE + 999);
    let (object, _) = encode_vec(&input, 2);
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
            "flip at {position} of {} gave {result:?}",
            object.len()
        );
    }
}

#[test]
fn truncation_and_garbage_are_detected() {
    let (object, _) = encode_vec(&sample(5000), 1);
    for cut in [0, 1, TRAILER_LEN - 1, object.len() / 2, object.len() - 1] {
        let result = decode(&object[..cut], io::sink());
        assert!(
            matches!(result, Err(CodecError::Corrupt(_))),
            "cut at {cut}"
        );
    }
    let mut longer = object.clone();
    longer.extend_from_slice(b"junk");
    assert!(matches!(
        decode(&longer[..], io::sink()),
        Err(CodecError::Corrupt(_))
    ));
}

#[test]
fn compare_writer_tells_identical_from_different() {
    let input = sample(300_000);
    let (object, _) = encode_vec(&input, 2);

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
