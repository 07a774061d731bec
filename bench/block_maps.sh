#!/usr/bin/env bash
# Benchmark: reading the block maps of a long stretch, as an incremental backup does after a
# week of WAL (issue 27, block map rollups). Builds a synthetic repository of SEGMENTS
# segments with a block map each (550 scattered blocks per segment) and the rollups
# archive-push writes (examples/synthetic_archive.rs --block-maps), then reads the maps of
# segments 3..SEGMENTS-5 segment by segment and by rollups (examples/block_map_stretch.rs),
# on the file repository and on S3 (s3s-fs behind bench/s3_proxy.py, LATENCY_MS each way),
# with JOBS reads at once; both reads must give the same change set.
#
#   bash bench/block_maps.sh [SEGMENTS] [JOBS]      (default 4096 segments, 4 jobs)
#
# Needs s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SEGMENTS=${1:-4096}
JOBS=${2:-4}
BENCH_DIR=${BENCH_DIR:-/tmp/pitr-bench-block-maps}
REPO=$BENCH_DIR/s3root/bench/repo
LATENCY_MS=${LATENCY_MS:-20}
FIRST=3
LAST=$((SEGMENTS - 5))

cargo build --release --quiet --example synthetic_archive --example block_map_stretch
if [ ! -f "$REPO/repository.json" ]; then
  mkdir -p "$BENCH_DIR/s3root/bench"
  /usr/bin/time -f 'built in %e s' \
    target/release/examples/synthetic_archive "$REPO" "$SEGMENTS" 0 --block-maps
fi
echo "segments $FIRST..$LAST, map rollups: $(find "$REPO/blockmap/rollup" -name '*.json' | wc -l)"
echo "== file repository"
target/release/examples/block_map_stretch "$REPO" "$FIRST" "$LAST" "$JOBS"

S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$BENCH_DIR/s3root" >/dev/null 2>&1 &
S3_PID=$!
python3 bench/s3_proxy.py "$PROXY_PORT" "$S3_PORT" "$LATENCY_MS" &
PROXY_PID=$!
trap 'kill $S3_PID $PROXY_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PROXY_PORT/__count" >/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true PITR_S3_ENDPOINT="http://127.0.0.1:$PROXY_PORT"
echo "== S3 (s3s-fs, ${LATENCY_MS} ms each way)"
target/release/examples/block_map_stretch s3://bench/repo "$FIRST" "$LAST" "$JOBS"
echo "requests: $(curl -s "http://127.0.0.1:$PROXY_PORT/__count")"
