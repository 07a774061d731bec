#!/usr/bin/env bash
# Benchmark: the cost of overviews on a large archive (issue 10, item 8). Builds a synthetic
# repository of SEGMENTS archived 16 MB segments on timeline 1 (tiny objects in pitr's format,
# summaries and rollups written through pitr's catalog: examples/synthetic_archive.rs) and a
# handful of backups, then measures `pitr list`, `pitr restore --dry-run --target-time …`
# (and `pitr check` when the binary has it): on the file repository wall time and peak RSS;
# on S3 (s3s-fs behind bench/s3_proxy.py, 20 ms each way) wall time, peak RSS and requests.
#
#   bash bench/index.sh [SEGMENTS]        (default 500000; the repository is kept and reused)
#
# BENCH_DIR (default /tmp/pitr-bench-index) holds the repository: $BENCH_DIR/s3root/bench/repo
# is the file repository and, served by s3s-fs from $BENCH_DIR/s3root, s3://bench/repo.
# BASELINE_PITR=/path/to/pitr also measures that binary (e.g. one built before rollups) on
# the same repository. Needs s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary)
# and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SEGMENTS=${1:-500000}
BENCH_DIR=${BENCH_DIR:-/tmp/pitr-bench-index}
REPO=$BENCH_DIR/s3root/bench/repo
LATENCY_MS=${LATENCY_MS:-20}

cargo build --release --quiet
cargo build --release --quiet --example synthetic_archive
if [ ! -f "$REPO/repository.json" ]; then
  echo "== building a repository of $SEGMENTS segments in $REPO"
  mkdir -p "$BENCH_DIR/s3root/bench"
  /usr/bin/time -f 'built in %e s' target/release/examples/synthetic_archive "$REPO" "$SEGMENTS" 6
fi
# A target between the newest backup and the end: its walk crosses many whole groups.
TARGET=$(date -u -d "@$((1780000000 + SEGMENTS * 10 - 40000))" +%Y-%m-%dT%H:%M:%SZ)
CHECK=no
target/release/pitr check --help >/dev/null 2>&1 && CHECK=yes

commands() { # PITR REPO-ARGS...
  local pitr=$1; shift
  echo "list|$pitr $* list"
  echo "restore --dry-run --target-time|$pitr $* restore --dry-run --target-time $TARGET --pgdata $BENCH_DIR/nowhere"
  [ "$CHECK" = yes ] && echo "check|$pitr $* check" || true
}

run_set() { # TITLE COUNT-URL PITR REPO-ARGS...
  local title=$1 count_url=$2; shift 2
  echo "== $title"
  while IFS='|' read -r label cmd; do
    [ -n "$count_url" ] && curl -s -X POST "$count_url/__reset" >/dev/null
    # shellcheck disable=SC2086
    local rc=0
    /usr/bin/time -f '%e %M' -o "$BENCH_DIR/time" $cmd >"$BENCH_DIR/out" 2>"$BENCH_DIR/err" || rc=$?
    # check answers in Nagios states: WARNING (1) and CRITICAL (2) are results, not failures.
    if [ "$rc" -ne 0 ] && ! { [ "$label" = check ] && [ "$rc" -le 2 ]; }; then
      echo "$label failed ($rc): $(tail -3 "$BENCH_DIR/err") $(tail -3 "$BENCH_DIR/out")"; continue
    fi
    [ "$label" = check ] && label="check (exit $rc)"
    # GNU time puts "Command exited with non-zero status N" first.
    read -r secs kb < <(tail -1 "$BENCH_DIR/time")
    local requests=""
    [ -n "$count_url" ] && requests=$(curl -s "$count_url/__count")
    printf '%-34s %7.2f s %8.1f MB  %s\n' "$label" "$secs" "$(echo "$kb / 1024" | bc -l)" "$requests"
  done < <(commands "$@")
}

echo "segments: $SEGMENTS, rollups: $(find "$REPO/wal/rollup" -name '*.json' | wc -l), target: $TARGET"
run_set "file repository" "" target/release/pitr --repo "$REPO"
[ -n "${BASELINE_PITR:-}" ] && run_set "file repository, baseline $BASELINE_PITR" "" "$BASELINE_PITR" --repo "$REPO"

S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$BENCH_DIR/s3root" >/dev/null 2>&1 &
S3_PID=$!
python3 bench/s3_proxy.py "$PROXY_PORT" "$S3_PORT" "$LATENCY_MS" &
PROXY_PID=$!
trap 'kill $S3_PID $PROXY_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PROXY_PORT/__count" >/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true PITR_S3_ENDPOINT="http://127.0.0.1:$PROXY_PORT" PITR_S3_PATH_STYLE=true
run_set "S3 (s3s-fs, ${LATENCY_MS} ms each way)" "http://127.0.0.1:$PROXY_PORT" target/release/pitr --repo s3://bench/repo
[ -n "${BASELINE_PITR:-}" ] && run_set "S3, baseline $BASELINE_PITR" "http://127.0.0.1:$PROXY_PORT" "$BASELINE_PITR" --repo s3://bench/repo
