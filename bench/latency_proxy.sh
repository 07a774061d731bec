#!/usr/bin/env bash
# Benchmark: what the latency proxy (examples/latency_proxy.rs, the code the tests and the other
# benches put in front of S3) costs beyond the delay it adds. Through a proxy of LATENCY_MS each
# way to an echo server: the first exchange on a connection (two round trips: handshake and
# request), later exchanges (one round trip each), and BULK_MB there and back on one
# connection (in flight together: far less than one delay per chunk). tests/it/latency_proxy.rs
# asserts the behaviour (at least the delay, chunks in flight together); the figures are here.
#
#   bash bench/latency_proxy.sh            (LATENCY_MS=20 BULK_MB=64 by default; PROFILE=debug
#                                           measures a debug build, as the tests run it)
#
# Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."

LATENCY_MS=${LATENCY_MS:-20}
BULK_MB=${BULK_MB:-64}
PROFILE=${PROFILE:-release}

if [ "$PROFILE" = debug ]; then
  cargo build --quiet --example latency_proxy
else
  cargo build --release --quiet --example latency_proxy
fi
PROXY_BIN=target/$PROFILE/examples/latency_proxy
WORK=$(mktemp -d /tmp/pitr-bench-proxy-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The echo server binds port 0 and says which port it got.
python3 -u - >"$WORK/echo.port" <<'EOF' &
import socket, threading
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
EOF
PIDS+=($!)
until [ -s "$WORK/echo.port" ]; do sleep 0.05; done
ECHO_PORT=$(cat "$WORK/echo.port")

# The proxy is given its port: a free one, tried again on another if it was taken meanwhile.
for _ in 1 2 3 4 5; do
  PROXY_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$PROXY_BIN" "$PROXY_PORT" "$ECHO_PORT" "$LATENCY_MS" 2>"$WORK/proxy.err" &
  PROXY=$!
  until grep -q "latency_proxy:" "$WORK/proxy.err" 2>/dev/null || ! kill -0 "$PROXY" 2>/dev/null; do
    sleep 0.05
  done
  if kill -0 "$PROXY" 2>/dev/null; then PIDS+=("$PROXY"); break; fi
  PROXY_PORT=
done
[ -n "$PROXY_PORT" ] || { cat "$WORK/proxy.err" >&2; exit 1; }

python3 - "$PROXY_PORT" "$LATENCY_MS" "$BULK_MB" <<'EOF'
import socket, sys, threading, time
port, delay_ms, bulk_mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = socket.create_connection(("127.0.0.1", port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def exchange():
    start = time.monotonic()
    conn.sendall(b"ping")
    got = b""
    while len(got) < 4:
        got += conn.recv(4 - len(got))
    return (time.monotonic() - start) * 1000

first = exchange()
later = sorted(exchange() for _ in range(20))
payload = bytes(i % 251 for i in range(1 << 20)) * bulk_mb
start = time.monotonic()
sender = threading.Thread(target=conn.sendall, args=(payload,))
sender.start()
received = 0
while received < len(payload):
    received += len(conn.recv(1 << 20))
sender.join()
bulk = time.monotonic() - start
print(f"delay {delay_ms} ms each way")
print(f"first exchange   {first:7.1f} ms  (floor {4 * delay_ms} ms: handshake and request)")
print(f"later exchanges  {later[len(later) // 2]:7.1f} ms median, {later[-1]:.1f} ms max  (floor {2 * delay_ms} ms)")
print(f"{bulk_mb} MiB echoed   {bulk:7.2f} s  ({2 * bulk_mb / bulk:.0f} MiB/s both ways)")
EOF
