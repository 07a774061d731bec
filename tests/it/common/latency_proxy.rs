//! A TCP proxy that adds a fixed one-way delay in both directions, as a network path to a
//! distant server would: the tests' S3 traffic pays real round trips, and bench scripts run
//! the same code as `examples/latency_proxy.rs`.
//!
//! Each direction is a delay line: a chunk read at time t is written on the other side no
//! earlier than t + delay, while reading goes on, so latency is added without limiting
//! throughput. A new connection pays one round trip more before its first byte arrives, as a
//! TCP handshake over the same path would. Bytes pass through untouched (the Host header
//! that SigV4 signs stays as the client sent it). The proxy runs on its own thread and
//! runtime, so sync and async callers use it alike, and stops when dropped.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Chunks in flight per direction: with reads of at most 64 KiB, up to 64 MiB may sit in the
/// line, more than any bandwidth the tests or benches reach times the delay.
const LINE_CHUNKS: usize = 1024;
const CHUNK: usize = 64 * 1024;

/// What went through the proxy, for a test to prove its traffic took the slow path.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub connections: AtomicU64,
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// The most chunks one direction of a connection held read and not yet written: above 1,
    /// reading went on while earlier chunks waited out their delay.
    pub peak_chunks_in_line: AtomicU64,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct LatencyProxy {
    port: u16,
    delay: Duration,
    counters: Arc<ProxyCounters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LatencyProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, delay: Duration) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, delay)
    }

    /// Listens on `listen` (port 0: any free port) and forwards to `upstream`.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr, delay: Duration) -> io::Result<Self> {
        // Bound here, so that the port is ours before start returns (no probe-then-bind race).
        let listener = StdTcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(ProxyCounters::default());
        let (shutdown, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("latency-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, upstream, delay, thread_counters) => {}
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(LatencyProxy {
            port,
            delay,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    pub fn bytes_to_upstream(&self) -> u64 {
        self.counters.bytes_to_upstream.load(Ordering::Relaxed)
    }

    pub fn bytes_to_client(&self) -> u64 {
        self.counters.bytes_to_client.load(Ordering::Relaxed)
    }

    /// See [`ProxyCounters::peak_chunks_in_line`].
    pub fn peak_chunks_in_line(&self) -> u64 {
        self.counters.peak_chunks_in_line.load(Ordering::Relaxed)
    }

    /// Blocks until the proxy's thread ends (for a binary that runs until killed).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    counters: Arc<ProxyCounters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: let it pass rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        tokio::spawn(async move {
            let accepted = Instant::now();
            // The server side is reached at once; the client's first bytes wait as if the
            // handshake had crossed the path (one round trip).
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let handshake = accepted + 2 * delay;
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = delay_line(
                client_read,
                server_write,
                delay,
                handshake,
                counters.clone(),
                true,
            );
            let down = delay_line(server_read, client_write, delay, accepted, counters, false);
            tokio::join!(up, down);
        });
    }
}

enum Item {
    Data(Instant, Bytes),
    /// The reader saw end of stream (or an error) at this time: close the write side then.
    End(Instant),
}

/// Copies `from` to `to`, each chunk written `delay` after it was read and never before
/// `not_before + delay`.
async fn delay_line(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
    counters: Arc<ProxyCounters>,
    to_upstream: bool,
) {
    let (line, mut arrivals) = mpsc::channel::<Item>(LINE_CHUNKS);
    let in_line = Arc::new(AtomicU64::new(0));
    let (reader_in_line, reader_counters) = (in_line.clone(), counters.clone());
    let reader = async move {
        let mut buffer = BytesMut::new();
        loop {
            buffer.reserve(CHUNK);
            let n = from.read_buf(&mut buffer).await.unwrap_or(0);
            let read_at = Instant::now().max(not_before);
            if n == 0 {
                let _ = line.send(Item::End(read_at)).await;
                return;
            }
            let chunk = buffer.split().freeze();
            // Counted before the send: the writer may take the chunk out at once.
            let held = reader_in_line.fetch_add(1, Ordering::Relaxed) + 1;
            reader_counters
                .peak_chunks_in_line
                .fetch_max(held, Ordering::Relaxed);
            if line.send(Item::Data(read_at, chunk)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some(item) = arrivals.recv().await {
            match item {
                Item::Data(read_at, chunk) => {
                    tokio::time::sleep_until(read_at + delay).await;
                    let counter = if to_upstream {
                        &counters.bytes_to_upstream
                    } else {
                        &counters.bytes_to_client
                    };
                    // Counted before the write: the other side may read the bytes (and a
                    // test read the counter) before write_all returns here.
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    let written = to.write_all(&chunk).await;
                    in_line.fetch_sub(1, Ordering::Relaxed);
                    if written.is_err() {
                        counter.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                        // The other side is gone: stop reading too (the line's receiver drops).
                        return;
                    }
                }
                Item::End(read_at) => {
                    tokio::time::sleep_until(read_at + delay).await;
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
