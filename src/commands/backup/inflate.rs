//! Decompression of an archive the server compressed (`BASE_BACKUP (COMPRESSION 'lz4')`):
//! lz4_flex's frame decoder reads from a `Read`, so it runs on a blocking thread fed through a
//! bounded channel, and hands back what it inflated through another. Both channels are
//! bounded, so memory is too, and a slow consumer slows the socket reads, as without
//! compression. Pieces go back to the decoder's thread once parsed: the same few buffers
//! carry the whole archive.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Inflated bytes are handed back in pieces of this size: one wake-up per piece.
const PIECE_BYTES: usize = 1 << 20;
/// Compressed messages queued for the decoder (each up to a COPY message, 32 KiB or so).
const INPUT_DEPTH: usize = 16;
/// Inflated pieces waiting to be parsed.
const OUTPUT_DEPTH: usize = 2;

/// An LZ4 frame stream being inflated on a thread of its own.
pub(super) struct Inflater {
    input: Option<mpsc::Sender<Bytes>>,
    output: mpsc::Receiver<Vec<u8>>,
    /// Parsed pieces, for the decoder to fill again (at most OUTPUT_DEPTH + 2 exist).
    parsed: std::sync::mpsc::Sender<Vec<u8>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Inflater {
    pub(super) fn lz4() -> Self {
        let (input, input_receiver) = mpsc::channel(INPUT_DEPTH);
        let (output_sender, output) = mpsc::channel(OUTPUT_DEPTH);
        let (parsed, to_refill) = std::sync::mpsc::channel::<Vec<u8>>();
        let task = tokio::task::spawn_blocking(move || {
            let mut decoder = lz4_flex::frame::FrameDecoder::new(QueueReader {
                queue: input_receiver,
                current: Bytes::new(),
            });
            loop {
                let mut piece = to_refill.try_recv().unwrap_or_default();
                piece.resize(PIECE_BYTES, 0);
                let filled = fill(&mut decoder, &mut piece)?;
                if filled == 0 {
                    return Ok(());
                }
                piece.truncate(filled);
                if output_sender.blocking_send(piece).is_err() {
                    // The archive was abandoned.
                    return Ok(());
                }
            }
        });
        Inflater {
            input: Some(input),
            output,
            parsed,
            task: Some(task),
        }
    }

    /// Gives a parsed piece back to be filled again.
    pub(super) fn recycle(&self, piece: Vec<u8>) {
        // The decoder may have ended: the piece is then freed.
        let _ = self.parsed.send(piece);
    }

    /// Queues the compressed bytes in `pending`, or, while the queue is full, returns an
    /// inflated piece to be parsed first (`pending` then still holds the bytes). None once the
    /// bytes are queued and nothing inflated is waiting.
    pub(super) async fn step(
        &mut self,
        pending: &mut Option<Bytes>,
    ) -> io::Result<Option<Vec<u8>>> {
        if let Ok(piece) = self.output.try_recv() {
            return Ok(Some(piece));
        }
        let Some(bytes) = pending.take() else {
            return Ok(None);
        };
        let Some(input) = self.input.as_ref() else {
            return Err(io::Error::other("compressed bytes after the archive's end"));
        };
        let outcome = tokio::select! {
            biased;
            piece = self.output.recv() => {
                *pending = Some(bytes);
                piece.map(Some)
            }
            permit = input.reserve() => permit.ok().map(|permit| {
                permit.send(bytes);
                None
            }),
        };
        match outcome {
            Some(piece) => Ok(piece),
            // The decoder is gone: why.
            None => Err(self.failure().await),
        }
    }

    /// After the archive's last compressed bytes: the next inflated piece, None once the
    /// stream is whole. An error where the stream was cut short or corrupt.
    pub(super) async fn next_after_end(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.input = None;
        match self.output.recv().await {
            Some(piece) => Ok(Some(piece)),
            None => match self.task.take() {
                Some(task) => joined(task.await).map(|()| None),
                None => Ok(None),
            },
        }
    }

    /// Why the decoder stopped early.
    async fn failure(&mut self) -> io::Error {
        match self.task.take() {
            Some(task) => match joined(task.await) {
                Err(e) => e,
                Ok(()) => io::Error::other("the decoder ended before the archive did"),
            },
            None => io::Error::other("the decoder has ended"),
        }
    }
}

fn joined(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.map_err(io::Error::other)?
}

/// Reads until `buffer` is full or the stream ends: fewer, larger pieces.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The queued messages as one byte stream; its end is the sender's drop.
struct QueueReader {
    queue: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for QueueReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.queue.blocking_recv() {
                Some(bytes) => self.current = bytes,
                None => return Ok(0),
            }
        }
        let n = buffer.len().min(self.current.len());
        buffer[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn compressed(data: &[u8], linked: bool) -> Vec<u8> {
        let mut info = lz4_flex::frame::FrameInfo::new();
        info.block_mode = if linked {
            lz4_flex::frame::BlockMode::Linked
        } else {
            lz4_flex::frame::BlockMode::Independent
        };
        info.content_checksum = true;
        let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible, with matches reaching back across blocks.
        (0..len)
            .map(|i| ((i / 7) % 251) as u8 ^ ((i >> 16) as u8))
            .collect()
    }

    /// Feeds `stream` in `message`-byte messages, as a slow consumer would take them.
    async fn inflate(stream: &[u8], message: usize) -> io::Result<Vec<u8>> {
        let mut inflater = Inflater::lz4();
        let mut out = Vec::new();
        for chunk in stream.chunks(message) {
            let mut pending = Some(Bytes::copy_from_slice(chunk));
            loop {
                match inflater.step(&mut pending).await? {
                    Some(piece) => {
                        out.extend_from_slice(&piece);
                        inflater.recycle(piece);
                    }
                    None if pending.is_none() => break,
                    None => {}
                }
            }
        }
        while let Some(piece) = inflater.next_after_end().await? {
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_inflated_is_what_was_compressed() {
        let data = sample(5 * PIECE_BYTES + 12345);
        for linked in [true, false] {
            let stream = compressed(&data, linked);
            for message in [1, 977, 32 << 10, stream.len()] {
                if message == 1 && stream.len() > 1 << 20 {
                    continue;
                }
                let out = inflate(&stream, message).await.unwrap();
                assert!(out == data, "linked {linked}, messages of {message}");
            }
        }
        let small = compressed(b"tiny", true);
        assert_eq!(inflate(&small, 1).await.unwrap(), b"tiny");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_or_corrupt_stream_is_an_error() {
        let data = sample(3 * PIECE_BYTES);
        let stream = compressed(&data, true);
        let cut = &stream[..stream.len() / 2];
        assert!(inflate(cut, 32 << 10).await.is_err());
        let mut corrupt = stream.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0xff;
        assert!(inflate(&corrupt, 32 << 10).await.is_err());
        assert!(inflate(b"not lz4 at all", 4).await.is_err());
    }
}
