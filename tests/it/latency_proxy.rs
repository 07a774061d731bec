//! The tests' latency proxy: it adds its delay to every round trip and one more to a new
//! connection, does not slow a bulk transfer down to one chunk per delay (it keeps reading
//! while chunks wait out their delay), counts what went through, and is gone when dropped.
//! How fast it is, is measured by bench/latency_proxy.sh, not asserted here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::common::latency_proxy::LatencyProxy;

/// An echo server on a free port, answering every connection until the test ends.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    address
}

const DELAY: Duration = Duration::from_millis(20);

#[test]
fn round_trips_pay_the_delay_and_bulk_transfers_do_not_pay_it_per_chunk() {
    let proxy = LatencyProxy::start(echo_server(), DELAY).unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    stream.set_nodelay(true).unwrap();

    // The first exchange: the handshake's round trip, then the request's.
    let start = Instant::now();
    stream.write_all(b"ping").unwrap();
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).unwrap();
    let first = start.elapsed();
    assert_eq!(&answer, b"ping");
    assert!(first >= 4 * DELAY, "first round trip took {first:?}");

    // Later exchanges on the same connection: a round trip each (and no new connection,
    // counted below).
    for _ in 0..3 {
        let start = Instant::now();
        stream.write_all(b"pong").unwrap();
        stream.read_exact(&mut answer).unwrap();
        let took = start.elapsed();
        assert!(took >= 2 * DELAY, "round trip took {took:?}");
    }
    // One chunk each way at a time so far.
    assert_eq!(proxy.peak_chunks_in_line(), 1);

    // 64 MiB there and back: hundreds of chunks, each delayed, yet in flight together
    // (read while earlier ones wait out their delay), not one chunk per delay.
    let payload: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed).unwrap();
    sender.join().unwrap();
    assert!(echoed == payload, "the echo differs from what was sent");
    assert!(
        proxy.peak_chunks_in_line() > 1,
        "the bulk transfer went one chunk per delay"
    );

    assert_eq!(proxy.connections(), 1);
    let expected = 4 * 4 + payload.len() as u64;
    assert_eq!(proxy.bytes_to_upstream(), expected);
    assert_eq!(proxy.bytes_to_client(), expected);

    // Dropped: the port no longer answers, and the open connection is closed.
    let port = proxy.port();
    drop(proxy);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "the connection outlived the proxy: {closed:?}"
    );
}
