//! The tests' latency proxy as a program, for bench scripts: a TCP proxy on 127.0.0.1 that
//! delays each direction by MS milliseconds (default 20) without limiting throughput.
//!
//!     latency_proxy LISTEN_PORT UPSTREAM_PORT [MS]
//!
//! Runs until killed.

use std::net::SocketAddr;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../tests/it/common/latency_proxy.rs"]
mod latency_proxy;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |i: usize| -> Option<u16> { args.get(i)?.parse().ok() };
    let (Some(listen), Some(upstream)) = (port(0), port(1)) else {
        eprintln!("usage: latency_proxy LISTEN_PORT UPSTREAM_PORT [MS]");
        std::process::exit(2);
    };
    let ms: u64 = match args.get(2).map(|m| m.parse()) {
        None => 20,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            eprintln!("MS must be a whole number of milliseconds");
            std::process::exit(2);
        }
    };
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = latency_proxy::LatencyProxy::start_on(
        localhost(listen),
        localhost(upstream),
        Duration::from_millis(ms),
    )
    .unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{listen}: {e}");
        std::process::exit(1);
    });
    eprintln!(
        "latency_proxy: 127.0.0.1:{} -> 127.0.0.1:{upstream}, {ms} ms each way",
        proxy.port()
    );
    proxy.join();
}
