//! pitr's stored-object format: compressed frames with a checksummed trailer.
//!
//! An object is the input cut into chunks of [`CHUNK_SIZE`], each compressed as an independent
//! frame (so chunks compress in parallel), followed by one *skippable* frame holding
//! [`Trailer`]. Frames are LZ4 or zstd ([`Compression`]); both formats share the skippable-frame
//! magic range, so an object is a valid LZ4 stream (`lz4 -d`) or zstd stream (`zstd -d`) that
//! restores the original bytes. The trailer carries the CRC-32 of the original bytes and of
//! the compressed bytes before it, and [`decode`] verifies both before it reports success.
//! [`decode`] tells each frame's format by its magic number, so a reader never needs to be
//! told how an object was compressed.
//!
//! Memory is bounded by the number of chunks in flight, never by the input size.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, mpsc};

pub mod crypto;
mod frames;
mod trailer;

use crypto::{FrameKind, ObjectCipher};
use frames::{FrameCompressor, FrameReader};
pub use trailer::{TRAILER_LEN, Trailer};

/// How an object is written: its compression, and the cipher that seals its frames in an
/// encrypted repository.
#[derive(Clone, Debug)]
pub struct ObjectFormat {
    pub compression: Compression,
    pub cipher: Option<ObjectCipher>,
}

impl From<Compression> for ObjectFormat {
    fn from(compression: Compression) -> Self {
        ObjectFormat {
            compression,
            cipher: None,
        }
    }
}

/// How an object's frames are compressed: a repository's choice, recorded in its identity as
/// `{"type": "lz4"}` or `{"type": "zstd", "level": 3}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Compression {
    Lz4,
    Zstd { level: i32 },
}

/// The format alone, without a level: what object names and settings speak of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressionType {
    /// What repositories had before the choice existed.
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    /// Levels zstd has (20 and above are its "ultra" levels).
    pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

    pub fn kind(self) -> CompressionType {
        match self {
            Compression::Lz4 => CompressionType::Lz4,
            Compression::Zstd { .. } => CompressionType::Zstd,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd { level } => write!(f, "zstd level {level}"),
        }
    }
}

impl CompressionType {
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Lz4 => "lz4",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// Bytes of input per frame: the unit of parallel compression.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Bytes of input mapped at a time (a multiple of the page size): mapped pages count in RSS
/// until their window goes, and archive-push may encode several files at once.
const WINDOW: u64 = 2 << 20;
/// Chunks queued per worker: enough to keep every core busy.
const QUEUE_DEPTH: usize = 2;
/// Read size when decoding.
const IO_BUF: usize = 256 << 10;

/// Which side failed matters to the caller: a read error is the source's (the repository,
/// or the file being archived), a write error the destination's, corruption the data's.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Read(io::Error),
    #[error("{0}")]
    Write(io::Error),
    #[error("corrupt object: {0}")]
    Corrupt(String),
    /// The object is encrypted and no key was given to open it.
    #[error("the object is encrypted and no key was given")]
    Encrypted,
}

/// What [`encode`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeSummary {
    pub original_len: u64,
    pub original_crc32: u32,
    /// Length of the whole object, trailer included.
    pub stored_len: u64,
    /// CRC-32 of the whole object, trailer included: what S3 verifies on receipt.
    pub object_crc32: u32,
}

impl EncodeSummary {
    pub fn ratio(&self) -> f64 {
        self.original_len as f64 / self.stored_len.max(1) as f64
    }
}

/// Compresses the file `input` into `output` using `threads` compression workers.
///
/// The file is memory-mapped a window at a time: workers compress straight from the page
/// cache (no copy into our buffers, which profiling showed to be a third of a push), and a
/// window is unmapped once its chunks are compressed, so memory stays bounded whatever the
/// file size. For a WAL segment PostgreSQL is archiving, which it leaves alone meanwhile (the
/// contract of `sys::map_wal_segment`: a file that shrank would kill the process with
/// SIGBUS); for files that may change, use [`encode_reader`].
pub fn encode<W: Write + Send>(
    input: &File,
    output: W,
    format: impl Into<ObjectFormat>,
    threads: usize,
) -> Result<EncodeSummary, CodecError> {
    let len = input.metadata().map_err(CodecError::Read)?.len();
    encode_chunks(output, format.into(), threads, |emit| {
        let mut offset = 0u64;
        while offset < len {
            let window_len = WINDOW.min(len - offset) as usize;
            let window = Arc::new(crate::sys::map_wal_segment(input, offset, window_len)?);
            let _ = window.advise(memmap2::Advice::Sequential);
            for start in (0..window_len).step_by(CHUNK_SIZE) {
                let range = start..(start + CHUNK_SIZE).min(window_len);
                if !emit(Chunk::Mapped {
                    window: Arc::clone(&window),
                    range,
                }) {
                    return Ok(());
                }
            }
            offset += window_len as u64;
        }
        Ok(())
    })
}

/// Compresses whatever `input` yields, read into 1 MiB buffers: for files that may change or
/// vanish while they are read (a running cluster's data files), and for streams.
pub fn encode_reader<R: Read, W: Write + Send>(
    mut input: R,
    output: W,
    format: impl Into<ObjectFormat>,
    threads: usize,
) -> Result<EncodeSummary, CodecError> {
    encode_chunks(output, format.into(), threads, |emit| {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_SIZE);
            if (&mut input)
                .take(CHUNK_SIZE as u64)
                .read_to_end(&mut chunk)?
                == 0
                || !emit(Chunk::Owned(chunk))
            {
                return Ok(());
            }
        }
    })
}

/// Encodes chunks the caller already holds (each at most [`CHUNK_SIZE`]; empty ones are
/// skipped), each becoming one frame as it is: no copy into a buffer of the codec's own.
pub fn encode_owned_chunks<W: Write + Send>(
    chunks: impl Iterator<Item = io::Result<Vec<u8>>>,
    output: W,
    format: impl Into<ObjectFormat>,
    threads: usize,
) -> Result<EncodeSummary, CodecError> {
    encode_chunks(output, format.into(), threads, |emit| {
        for chunk in chunks {
            let mut chunk = chunk?;
            // A larger one is cut: every frame decodes into at most a chunk.
            while chunk.len() > CHUNK_SIZE {
                let rest = chunk.split_off(CHUNK_SIZE);
                if !emit(Chunk::Owned(chunk)) {
                    return Ok(());
                }
                chunk = rest;
            }
            if !chunk.is_empty() && !emit(Chunk::Owned(chunk)) {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// The pipeline: `produce` hands chunks to `emit` (false once the writer has failed);
/// workers compress them into frames, a writer writes them in order, then the trailer.
fn encode_chunks<W: Write + Send>(
    output: W,
    format: ObjectFormat,
    threads: usize,
    produce: impl FnOnce(&mut dyn FnMut(Chunk) -> bool) -> io::Result<()>,
) -> Result<EncodeSummary, CodecError> {
    let threads = threads.max(1);
    let mut original = crc32fast::Hasher::new();
    let mut original_len = 0u64;

    std::thread::scope(|scope| {
        let mut to_workers = Vec::with_capacity(threads);
        let mut from_workers = Vec::with_capacity(threads);
        let mut free_frame_txs = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (chunk_tx, chunk_rx) = mpsc::sync_channel::<(u64, Chunk)>(QUEUE_DEPTH);
            let (frame_tx, frame_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(QUEUE_DEPTH);
            let (free_frame_tx, free_frame_rx) = mpsc::channel::<Vec<u8>>();
            let format = format.clone();
            scope.spawn(move || compress_chunks(&format, chunk_rx, frame_tx, free_frame_rx));
            to_workers.push(chunk_tx);
            from_workers.push(frame_rx);
            free_frame_txs.push(free_frame_tx);
        }
        // Frames come back in input order: chunk i goes to worker i % threads.
        let writer = scope.spawn(move || write_frames(&from_workers, &free_frame_txs, output));

        let mut index = 0usize;
        let read_result = produce(&mut |chunk: Chunk| {
            original.update(&chunk);
            original_len += chunk.len() as u64;
            let sent = to_workers[index % threads]
                .send((index as u64, chunk))
                .is_ok();
            index += 1;
            sent
        });
        drop(to_workers);
        let written = writer.join().expect("frame writer panicked");
        read_result.map_err(CodecError::Read)?;
        let (mut output, mut stored, mut stored_len) = written?;
        let original_crc32 = original.clone().finalize();
        let trailer = match &format.cipher {
            None => Trailer {
                original_len,
                original_crc32,
                stored_crc32: stored.clone().finalize(),
                encrypted: false,
            },
            Some(cipher) => {
                // What the trailer would say in clear is sealed in a last frame.
                let end = EndFrame {
                    original_len,
                    original_crc32,
                    frames: index as u64,
                }
                .seal(cipher);
                output.write_all(&end).map_err(CodecError::Write)?;
                stored.update(&end);
                stored_len += end.len() as u64;
                Trailer {
                    original_len: 0,
                    original_crc32: 0,
                    stored_crc32: stored.clone().finalize(),
                    encrypted: true,
                }
            }
        }
        .to_bytes();
        output
            .write_all(&trailer)
            .and_then(|()| output.flush())
            .map_err(CodecError::Write)?;
        let mut object = stored;
        object.update(&trailer);
        Ok(EncodeSummary {
            original_len,
            original_crc32,
            stored_len: stored_len + TRAILER_LEN as u64,
            object_crc32: object.finalize(),
        })
    })
}

/// Input for one frame: a slice of a mapped window (kept mapped while any chunk of it is
/// alive), or a buffer read from a stream.
enum Chunk {
    Mapped {
        window: Arc<memmap2::Mmap>,
        range: std::ops::Range<usize>,
    },
    Owned(Vec<u8>),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Mapped { window, range } => &window[range.clone()],
            Chunk::Owned(buffer) => buffer,
        }
    }
}

/// One worker: each chunk becomes one complete frame, from one reused compressor, sealed
/// when the object is encrypted.
fn compress_chunks(
    format: &ObjectFormat,
    chunks: mpsc::Receiver<(u64, Chunk)>,
    frames: mpsc::SyncSender<io::Result<Vec<u8>>>,
    free_frames: mpsc::Receiver<Vec<u8>>,
) {
    let mut compressor = match FrameCompressor::new(format.compression) {
        Ok(compressor) => compressor,
        Err(e) => {
            let _ = frames.send(Err(e));
            return;
        }
    };
    for (index, chunk) in chunks {
        let spare = free_frames.try_recv().unwrap_or_default();
        let result = compressor
            .compress(&chunk, spare)
            .map(|frame| match &format.cipher {
                Some(cipher) => seal_frame(cipher, index, FrameKind::Data, frame),
                None => frame,
            });
        drop(chunk);
        if frames.send(result).is_err() {
            break;
        }
    }
}

fn write_frames<W: Write>(
    from_workers: &[mpsc::Receiver<io::Result<Vec<u8>>>],
    free_frames: &[mpsc::Sender<Vec<u8>>],
    mut output: W,
) -> Result<(W, crc32fast::Hasher, u64), CodecError> {
    let mut stored = crc32fast::Hasher::new();
    let mut stored_len = 0u64;
    for index in 0.. {
        let worker = index % from_workers.len();
        let Ok(frame) = from_workers[worker].recv() else {
            break; // input exhausted
        };
        // Compressing in memory fails only on a bug; report it with the writer's errors.
        let frame = frame.map_err(CodecError::Write)?;
        stored.update(&frame);
        stored_len += frame.len() as u64;
        output.write_all(&frame).map_err(CodecError::Write)?;
        let _ = free_frames[worker].send(frame);
    }
    Ok((output, stored, stored_len))
}

/// What [`decode`] verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSummary {
    pub original_len: u64,
    pub stored_len: u64,
}

/// Decompresses an object into `output`, verifying both checksums and the length.
///
/// `output` has seen every byte when this returns, but the data is only proven good when it
/// returns `Ok`: callers write to a temporary place and publish it only then.
pub fn decode<R: Read, W: Write>(input: R, output: W) -> Result<DecodeSummary, CodecError> {
    decode_with(input, output, None)
}

/// [`decode`] for an object of a repository that may be encrypted: with `cipher`, every frame
/// must be sealed for this object and authenticate, and an unsealed frame is corrupt (it
/// would let whoever can write to the repository plant content); without it, a sealed frame
/// is [`CodecError::Encrypted`].
pub fn decode_with<R: Read, W: Write>(
    input: R,
    mut output: W,
    cipher: Option<&ObjectCipher>,
) -> Result<DecodeSummary, CodecError> {
    let mut frames = FrameReader::new(TrailerSplitter::new(input), cipher);
    let mut original = crc32fast::Hasher::new();
    let mut original_len = 0u64;
    frames.decode_all(&mut |block| {
        original.update(block);
        original_len += block.len() as u64;
        output.write_all(block).map_err(CodecError::Write)
    })?;
    output.flush().map_err(CodecError::Write)?;
    let (splitter, end) = frames.into_parts();
    let (trailer, stored_crc32, stored_len) = splitter.finish()?;
    if trailer.stored_crc32 != stored_crc32 {
        return Err(CodecError::Corrupt(format!(
            "compressed data checksum mismatch (stored {:08x}, computed {stored_crc32:08x})",
            trailer.stored_crc32
        )));
    }
    let (expected_len, expected_crc32) = match (cipher, end) {
        (None, _) if trailer.encrypted => return Err(CodecError::Encrypted),
        (None, _) => (trailer.original_len, trailer.original_crc32),
        (Some(_), Some(end)) if trailer.encrypted => (end.original_len, end.original_crc32),
        (Some(_), _) => {
            return Err(CodecError::Corrupt(
                "the object is not sealed to its end (truncated, or not encrypted in an \
                 encrypted repository)"
                    .to_owned(),
            ));
        }
    };
    let original_crc32 = original.finalize();
    if expected_len != original_len || expected_crc32 != original_crc32 {
        return Err(CodecError::Corrupt(format!(
            "content mismatch (stored {expected_len} bytes crc {expected_crc32:08x}, decoded \
             {original_len} bytes crc {original_crc32:08x})"
        )));
    }
    Ok(DecodeSummary {
        original_len,
        stored_len: stored_len + TRAILER_LEN as u64,
    })
}

/// What [`check_stored`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredCheck {
    pub stored_len: u64,
    pub encrypted: bool,
}

/// Checks an object's stored bytes against its trailer's CRC without decoding them: what
/// can be proven of an encrypted object without its key.
pub fn check_stored<R: Read>(input: R) -> Result<StoredCheck, CodecError> {
    let mut splitter = TrailerSplitter::new(input);
    io::copy(&mut splitter, &mut io::sink()).map_err(CodecError::Read)?;
    let (trailer, stored_crc32, stored_len) = splitter.finish()?;
    if trailer.stored_crc32 != stored_crc32 {
        return Err(CodecError::Corrupt(format!(
            "stored data checksum mismatch (stored {:08x}, computed {stored_crc32:08x})",
            trailer.stored_crc32
        )));
    }
    Ok(StoredCheck {
        stored_len: stored_len + TRAILER_LEN as u64,
        encrypted: trailer.encrypted,
    })
}

/// The magic number of a sealed frame: in the LZ4 skippable-frame range, as the trailer's.
pub(crate) const SEALED_FRAME_MAGIC: u32 = 0x184D_2A5E;
/// Header of a sealed frame: magic, payload length, kind, nonce.
const SEALED_HEADER_LEN: usize = 4 + 4 + 1 + crypto::NONCE_LEN;
/// Largest payload a reader accepts: a chunk's compressed bound with room to spare; it bounds
/// what a damaged length can make the reader allocate.
const SEALED_PAYLOAD_MAX: usize = 2 * CHUNK_SIZE;

/// `frame` sealed as frame `index` of the object, with its header.
fn seal_frame(cipher: &ObjectCipher, index: u64, kind: FrameKind, mut frame: Vec<u8>) -> Vec<u8> {
    let nonce = cipher.seal(index, kind, &mut frame);
    let payload_len = 1 + crypto::NONCE_LEN + frame.len();
    let mut sealed = Vec::with_capacity(8 + payload_len);
    sealed.extend_from_slice(&SEALED_FRAME_MAGIC.to_le_bytes());
    sealed.extend_from_slice(&(payload_len as u32).to_le_bytes());
    sealed.push(kind as u8);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&frame);
    sealed
}

/// The sealed last frame of an encrypted object: what its trailer would say in clear, and how
/// many data frames came before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EndFrame {
    pub original_len: u64,
    pub original_crc32: u32,
    pub frames: u64,
}

impl EndFrame {
    const LEN: usize = 20;

    fn seal(&self, cipher: &ObjectCipher) -> Vec<u8> {
        let mut plain = Vec::with_capacity(Self::LEN + crypto::TAG_LEN);
        plain.extend_from_slice(&self.original_len.to_le_bytes());
        plain.extend_from_slice(&self.original_crc32.to_le_bytes());
        plain.extend_from_slice(&self.frames.to_le_bytes());
        seal_frame(cipher, self.frames, FrameKind::End, plain)
    }

    fn parse(plain: &[u8]) -> Option<Self> {
        let (len, rest) = plain.split_first_chunk::<8>()?;
        let (crc, rest) = rest.split_first_chunk::<4>()?;
        let (frames, rest) = rest.split_first_chunk::<8>()?;
        rest.is_empty().then(|| EndFrame {
            original_len: u64::from_le_bytes(*len),
            original_crc32: u32::from_le_bytes(*crc),
            frames: u64::from_le_bytes(*frames),
        })
    }
}

/// Reads the sealed frame at the reader's position and opens it as frame `index`; the
/// plaintext goes into `plain`.
fn open_sealed_frame<R: Read>(
    source: &mut TrailerSplitter<R>,
    cipher: &ObjectCipher,
    index: u64,
    plain: &mut Vec<u8>,
) -> Result<FrameKind, CodecError> {
    let mut header = [0u8; SEALED_HEADER_LEN];
    read_frame_bytes(source, &mut header)?;
    let [_, _, _, _, l0, l1, l2, l3, kind_byte, nonce @ ..] = header;
    let payload_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if !(1 + crypto::NONCE_LEN + crypto::TAG_LEN..=SEALED_PAYLOAD_MAX).contains(&payload_len) {
        return Err(CodecError::Corrupt(format!(
            "sealed frame {index} claims {payload_len} bytes"
        )));
    }
    let kind = FrameKind::from_byte(kind_byte).ok_or_else(|| {
        CodecError::Corrupt(format!("sealed frame {index} has unknown kind {kind_byte}"))
    })?;
    plain.resize(payload_len - 1 - crypto::NONCE_LEN, 0);
    read_frame_bytes(source, plain)?;
    if !cipher.open(index, kind, &nonce, plain) {
        return Err(CodecError::Corrupt(format!(
            "sealed frame {index} does not authenticate (changed, or moved from another \
             object or position)"
        )));
    }
    Ok(kind)
}

/// Fills `out` from the frames before the trailer; their end is a truncation.
fn read_frame_bytes<R: Read>(
    source: &mut TrailerSplitter<R>,
    out: &mut [u8],
) -> Result<(), CodecError> {
    source.read_exact(out).map_err(|e| {
        if source.source_error {
            CodecError::Read(e)
        } else {
            CodecError::Corrupt("a sealed frame ends early (truncated)".to_owned())
        }
    })
}

/// Serves every byte of the source but the last [`TRAILER_LEN`], checksumming what it serves.
struct TrailerSplitter<R> {
    source: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    crc: crc32fast::Hasher,
    served: u64,
    /// Set when an error came from the source rather than from the data.
    source_error: bool,
}

impl<R: Read> TrailerSplitter<R> {
    fn new(source: R) -> Self {
        TrailerSplitter {
            source,
            buf: vec![0u8; IO_BUF + TRAILER_LEN],
            start: 0,
            end: 0,
            eof: false,
            crc: crc32fast::Hasher::new(),
            served: 0,
            source_error: false,
        }
    }

    /// Reads more from the source; false at end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        loop {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.source_error = true;
                    return Err(e);
                }
            }
        }
    }

    /// The first four bytes still to be served (a frame's magic number), without serving
    /// them; `None` when only the trailer is left.
    fn peek_magic(&mut self) -> Result<Option<u32>, CodecError> {
        while self.servable() < 4 && self.fill().map_err(CodecError::Read)? {}
        match self.servable() {
            0 => Ok(None),
            1..4 => Err(CodecError::Corrupt(
                "stray bytes after the last frame (truncated or not a pitr object)".to_owned(),
            )),
            _ => Ok(Some(u32::from_le_bytes(
                self.buf[self.start..self.start + 4].try_into().unwrap(),
            ))),
        }
    }

    /// Bytes held that are not the trailer (they may be served).
    fn servable(&self) -> usize {
        (self.end - self.start).saturating_sub(TRAILER_LEN)
    }

    /// The trailer, with the CRC and length of everything served before it.
    ///
    /// Decoding ends only once the source is exhausted (see `peek_magic`), so what is held
    /// back is all that is left; bytes after the last frame fail earlier, as no frame.
    fn finish(self) -> Result<(Trailer, u32, u64), CodecError> {
        debug_assert!(self.eof);
        let held = &self.buf[self.start..self.end];
        if held.len() != TRAILER_LEN {
            return Err(CodecError::Corrupt(
                "object is shorter than its trailer (truncated)".to_owned(),
            ));
        }
        let trailer = Trailer::parse(held).map_err(|e| CodecError::Corrupt(e.to_owned()))?;
        Ok((trailer, self.crc.finalize(), self.served))
    }
}

impl<R: Read> BufRead for TrailerSplitter<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.servable() == 0 && self.fill()? {}
        Ok(&self.buf[self.start..self.start + self.servable()])
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.servable());
        self.crc.update(&self.buf[self.start..self.start + n]);
        self.served += n as u64;
        self.start += n;
    }
}

impl<R: Read> Read for TrailerSplitter<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A sink that checks what is written against a reference stream, for "is it identical?".
pub struct CompareWriter<R> {
    reference: R,
    buf: Vec<u8>,
    pub identical: bool,
}

impl<R: Read> CompareWriter<R> {
    pub fn new(reference: R) -> Self {
        CompareWriter {
            reference,
            buf: Vec::new(),
            identical: true,
        }
    }

    /// True when everything written matched and the reference has nothing left.
    pub fn finish(mut self) -> io::Result<bool> {
        let mut probe = [0u8; 1];
        Ok(self.identical && self.reference.read(&mut probe)? == 0)
    }
}

impl<R: Read> Write for CompareWriter<R> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.identical {
            self.buf.resize(data.len(), 0);
            let mut filled = 0;
            while filled < data.len() {
                match self.reference.read(&mut self.buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            self.identical = filled == data.len() && self.buf[..] == *data;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
