//! One frame at a time: compressing a chunk into an LZ4 or zstd frame, and decoding a body
//! whose frames may be of either format, told apart by their magic numbers.

use std::io::{self, BufRead, Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use zstd::stream::raw::{DParameter, InBuffer, Operation, OutBuffer};

use super::crypto::{FrameKind, ObjectCipher};
use super::{
    CHUNK_SIZE, CodecError, Compression, EndFrame, IO_BUF, SEALED_FRAME_MAGIC, TrailerSplitter,
    open_sealed_frame,
};

/// First four bytes (little-endian) of an LZ4 frame and of a zstd frame.
pub(super) const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
pub(super) const ZSTD_FRAME_MAGIC: u32 = 0xFD2F_B528;
/// Largest zstd window a reader accepts (8 MiB): a frame of a 1 MiB chunk needs at most
/// 1 MiB, and the cap bounds what a damaged header can make the decoder allocate.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A worker's compressor, reused from chunk to chunk.
pub(super) enum FrameCompressor {
    /// The encoder starts a new frame on the first write after `try_finish`.
    Lz4(FrameEncoder<Vec<u8>>),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl FrameCompressor {
    pub(super) fn new(compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Lz4 => {
                let info = FrameInfo::new()
                    .block_size(BlockSize::Max64KB)
                    .block_mode(BlockMode::Independent);
                FrameCompressor::Lz4(FrameEncoder::with_frame_info(info, Vec::new()))
            }
            // The chunk's size is known, so zstd sizes its window to it and records it in
            // the frame header: a reader needs at most a chunk of window.
            Compression::Zstd { level } => {
                FrameCompressor::Zstd(zstd::bulk::Compressor::new(level)?)
            }
        })
    }

    /// `chunk` as one complete frame, written into `frame` (a spare buffer, reused).
    pub(super) fn compress(&mut self, chunk: &[u8], mut frame: Vec<u8>) -> io::Result<Vec<u8>> {
        frame.clear();
        match self {
            FrameCompressor::Lz4(encoder) => {
                *encoder.get_mut() = frame;
                encoder.write_all(chunk)?;
                encoder.try_finish().map_err(io::Error::other)?;
                Ok(std::mem::take(encoder.get_mut()))
            }
            FrameCompressor::Zstd(compressor) => {
                frame.reserve(zstd::zstd_safe::compress_bound(chunk.len()));
                compressor.compress_to_buffer(chunk, &mut frame)?;
                Ok(frame)
            }
        }
    }
}

/// Decodes the frames of an object's body (everything before the trailer) in order.
pub(super) struct FrameReader<'a, R: Read> {
    /// Owns the source; between frames it is at a frame boundary, and zstd frames are read
    /// from it directly.
    lz4: FrameDecoder<TrailerSplitter<R>>,
    /// Made at the first zstd frame: the context and an output buffer.
    zstd: Option<(zstd::stream::raw::Decoder<'static>, Vec<u8>)>,
    /// Set for an encrypted repository: every frame must be sealed for this object.
    cipher: Option<&'a ObjectCipher>,
    /// Sealed frames opened so far, and the opened plaintext (reused).
    sealed: u64,
    plain: Vec<u8>,
    /// The sealed end frame, once read.
    end: Option<EndFrame>,
}

impl<'a, R: Read> FrameReader<'a, R> {
    pub(super) fn new(source: TrailerSplitter<R>, cipher: Option<&'a ObjectCipher>) -> Self {
        FrameReader {
            lz4: FrameDecoder::new(source),
            zstd: None,
            cipher,
            sealed: 0,
            plain: Vec::new(),
            end: None,
        }
    }

    /// The source, and the end frame of a sealed object.
    pub(super) fn into_parts(self) -> (TrailerSplitter<R>, Option<EndFrame>) {
        (self.lz4.into_inner(), self.end)
    }

    /// Hands every decoded block to `emit`, frame after frame, until only the trailer is
    /// left.
    pub(super) fn decode_all(
        &mut self,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        loop {
            let served = self.lz4.get_ref().served;
            let magic = self.lz4.get_mut().peek_magic()?;
            if self.end.is_some() && magic.is_some() {
                return Err(CodecError::Corrupt(
                    "frames after the sealed end frame".to_owned(),
                ));
            }
            match magic {
                None => return Ok(()),
                Some(SEALED_FRAME_MAGIC) => self.decode_sealed_frame(emit)?,
                Some(_) if self.cipher.is_some() => {
                    return Err(CodecError::Corrupt(
                        "not encrypted, in an encrypted repository (replaced by someone without \
                         the key?)"
                            .to_owned(),
                    ));
                }
                Some(LZ4_FRAME_MAGIC) => self.decode_lz4_frame(emit)?,
                Some(ZSTD_FRAME_MAGIC) => self.decode_zstd_frame(emit)?,
                Some(magic) => {
                    return Err(CodecError::Corrupt(format!(
                        "a frame starts with {magic:08x}, which is neither an LZ4 nor a zstd \
                         frame"
                    )));
                }
            }
            // Each frame consumes its bytes; a decoder that stopped short is at a truncation.
            if self.lz4.get_ref().served == served {
                return Err(CodecError::Corrupt(
                    "a frame ends early (truncated)".to_owned(),
                ));
            }
        }
    }

    /// Opens a sealed frame and decodes the frame inside it, or records the end frame.
    fn decode_sealed_frame(
        &mut self,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let Some(cipher) = self.cipher else {
            return Err(CodecError::Encrypted);
        };
        let index = self.sealed;
        let kind = open_sealed_frame(self.lz4.get_mut(), cipher, index, &mut self.plain)?;
        self.sealed += 1;
        match kind {
            FrameKind::End => {
                let end = EndFrame::parse(&self.plain)
                    .filter(|end| end.frames == index)
                    .ok_or_else(|| CodecError::Corrupt("the end frame does not fit".to_owned()))?;
                self.end = Some(end);
                Ok(())
            }
            FrameKind::Data => decode_frame_in_memory(&self.plain, emit),
        }
    }

    fn decode_lz4_frame(
        &mut self,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        loop {
            // Straight from the decoder's block buffer to `emit`: no intermediate copy.
            let n = match self.lz4.fill_buf().map(<[u8]>::len) {
                // The decoder reports an empty block at the end of the frame.
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.lz4.get_ref().source_error => return Err(CodecError::Read(e)),
                Err(e) => return Err(CodecError::Corrupt(format!("invalid LZ4 data: {e}"))),
            };
            // Filled already: this returns the same block without reading.
            emit(self.lz4.fill_buf().map_err(CodecError::Read)?)?;
            self.lz4.consume(n);
        }
    }

    /// Streams one zstd frame; the decoder stops exactly at the frame's end.
    fn decode_zstd_frame(
        &mut self,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let (decoder, out) = match &mut self.zstd {
            Some(zstd) => zstd,
            None => {
                let mut decoder = zstd::stream::raw::Decoder::new().map_err(CodecError::Write)?;
                decoder
                    .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(CodecError::Write)?;
                self.zstd.insert((decoder, vec![0u8; IO_BUF]))
            }
        };
        let source = self.lz4.get_mut();
        loop {
            let mut input = InBuffer::around(source.fill_buf().map_err(CodecError::Read)?);
            let mut output = OutBuffer::around(&mut out[..]);
            let remaining = decoder
                .run(&mut input, &mut output)
                .map_err(|e| CodecError::Corrupt(format!("invalid zstd data: {e}")))?;
            let (read, written) = (input.pos(), output.pos());
            source.consume(read);
            emit(&out[..written])?;
            if remaining == 0 {
                return Ok(());
            }
            if read == 0 && written == 0 {
                return Err(CodecError::Corrupt(
                    "a zstd frame ends early (truncated)".to_owned(),
                ));
            }
        }
    }
}

/// Decodes one complete LZ4 or zstd frame held in memory (the plaintext of a sealed frame,
/// authenticated already, so its content is what pitr wrote).
fn decode_frame_in_memory(
    frame: &[u8],
    emit: &mut dyn FnMut(&[u8]) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        CodecError::Corrupt(format!("invalid {what} data in a sealed frame: {e}"))
    };
    match frame
        .get(..4)
        .map(|m| u32::from_le_bytes(m.try_into().unwrap()))
    {
        Some(LZ4_FRAME_MAGIC) => {
            let mut decoder = FrameDecoder::new(frame);
            loop {
                let block = decoder.fill_buf().map_err(|e| corrupt("LZ4", &e))?;
                if block.is_empty() {
                    return Ok(());
                }
                let n = block.len();
                emit(block)?;
                decoder.consume(n);
            }
        }
        Some(ZSTD_FRAME_MAGIC) => {
            let mut out = Vec::with_capacity(CHUNK_SIZE);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(frame, &mut out))
                .map_err(|e| corrupt("zstd", &e))?;
            emit(&out)
        }
        _ => Err(CodecError::Corrupt(
            "a sealed frame holds neither an LZ4 nor a zstd frame".to_owned(),
        )),
    }
}
