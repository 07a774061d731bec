#!/usr/bin/env bash
# Benchmark: sustained WAL archiving through PostgreSQL's own archiver, with archive-push's
# look-ahead off (archive_push_parallel=1) and at its default, on the file repository and on
# S3 (s3s-fs behind bench/s3_proxy.py, 20 ms each way).
#
#   bash bench/archive_throughput.sh [SCALE] [SECONDS]     (default 20 and 30)
#
# Each run: a fresh cluster (16 MB segments, max_wal_size 256MB) builds a backlog with
# pgbench -i -s SCALE while archive_command is empty (PostgreSQL keeps the WAL and waits),
# then a write-heavy pgbench runs for SECONDS while archiving is switched on. Printed:
#   drain    segments per second while the backlog is archived, pgbench writing meanwhile
#            (the archiver is the bottleneck: what it sustains);
#   steady   peak size of pg_wal's segments once the backlog is gone, against max_wal_size
#            (the look-ahead adds at most its window of files PostgreSQL had not archived yet);
#   rss      the largest peak RSS of any archive-push call (/usr/bin/time).
# Every run must end with failed_count = 0, and the files archived are checked byte for byte
# through archive-get.
#
# PITR_BIN=/path/to/pitr uses that binary instead of building a release one. Needs root or
# the postgres user, PostgreSQL 15, s3s-fs (cargo install s3s-fs --version 0.14.1 --features
# binary), python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-20}
SECONDS_RUN=${2:-30}
LATENCY_MS=${LATENCY_MS:-20}
PARALLEL_DEFAULT=4
PG_BIN=/usr/lib/postgresql/15/bin
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 is not installed" >&2; exit 1; }
command -v s3s-fs >/dev/null || { echo "s3s-fs is not installed" >&2; exit 1; }

if [ -z "${PITR_BIN:-}" ]; then
  cargo build --release --quiet
  PITR_BIN=target/release/pitr
fi
WORK=$(mktemp -d /tmp/pitr-bench-throughput-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PIDS=()
cleanup() {
  [ -d "$WORK/data" ] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
cp "$PITR_BIN" "$WORK/pitr"
chmod 755 "$WORK"
mkdir -p "$WORK/s3root/bench"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port)
PROXY_PORT=$(free_port)
as_pg s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$WORK/s3root" >/dev/null 2>&1 &
PIDS+=($!)
python3 bench/s3_proxy.py "$PROXY_PORT" "$S3_PORT" "$LATENCY_MS" &
PIDS+=($!)
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PROXY_PORT/__count" >/dev/null && break; sleep 0.2; done
S3_ENV="AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
AWS_EC2_METADATA_DISABLED=true PITR_S3_ENDPOINT=http://127.0.0.1:$PROXY_PORT PITR_S3_PATH_STYLE=true"

psql_q() { as_pg psql -X -h "$WORK" -U postgres -Atqc "$1" postgres; }
wal_bytes() { # bytes of WAL files in pg_wal (segments, partial and history files)
  find "$WORK/data/pg_wal" -maxdepth 1 -type f -regextype posix-extended \
    -regex '.*/[0-9A-F]{24}(\.partial)?|.*/[0-9A-F]{8}\.history' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'
}

run() { # LABEL REPO-URL ENV PARALLEL
  local label=$1 repo=$2 env=$3 parallel=$4
  rm -rf "$WORK/data" "$WORK/rss" "$WORK/pg.log" "$WORK/get"
  [ "${repo#s3://}" = "$repo" ] || rm -rf "$WORK/s3root/bench/${repo#s3://bench/}"
  mkdir -p "$WORK/get"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$WORK/get"
  as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
  cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
max_wal_size = '256MB'
min_wal_size = '64MB'
checkpoint_timeout = '30s'
archive_mode = on
archive_command = ''
EOF
  as_pg env $env "$WORK/pitr" --repo "$repo" init --pgdata "$WORK/data" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
  as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  psql_q "select pg_switch_wal()" >/dev/null
  local backlog
  backlog=$(find "$WORK/data/pg_wal/archive_status" -name '*.ready' | wc -l)

  as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 2 -T "$SECONDS_RUN" postgres >/dev/null 2>&1 &
  local bench=$!
  echo "archive_command = 'env $env PITR_ARCHIVE_PUSH_PARALLEL=$parallel /usr/bin/time -f %M -a -o $WORK/rss $WORK/pitr --repo $repo archive-push %p'" \
    >> "$WORK/data/postgresql.conf"
  local start now drained="" peak_steady=0 archived
  start=$(date +%s.%N)
  psql_q "select pg_reload_conf()" >/dev/null
  while kill -0 "$bench" 2>/dev/null; do
    archived=$(psql_q "select archived_count from pg_stat_archiver")
    now=$(date +%s.%N)
    if [ -z "$drained" ] && [ "$archived" -ge "$backlog" ]; then
      drained=$(awk -v n="$archived" -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", n / (b - a) }')
    elif [ -n "$drained" ]; then
      local bytes
      bytes=$(wal_bytes)
      [ "$bytes" -gt "$peak_steady" ] && peak_steady=$bytes
    fi
    sleep 0.2
  done
  wait "$bench" || true
  [ -n "$drained" ] || drained="not drained in ${SECONDS_RUN}s: $archived of $backlog"
  local last
  last=$(psql_q "select pg_walfile_name(pg_current_wal_lsn())")
  psql_q "select pg_switch_wal()" >/dev/null
  until [ "$(psql_q "select coalesce(last_archived_wal, '') >= '$last' from pg_stat_archiver")" = t ]; do sleep 0.2; done
  local failed total
  read -r total failed < <(psql_q "select archived_count, failed_count from pg_stat_archiver" | tr '|' ' ')
  # Every segment still in pg_wal and archived comes back byte-identical.
  local checked=0
  for status in "$WORK"/data/pg_wal/archive_status/*.done; do
    local name
    name=$(basename "$status" .done)
    [ -f "$WORK/data/pg_wal/$name" ] || continue
    as_pg env $env "$WORK/pitr" --repo "$repo" archive-get "$name" "$WORK/get/$name"
    cmp -s "$WORK/data/pg_wal/$name" "$WORK/get/$name" || { echo "$name differs" >&2; exit 1; }
    rm -f "$WORK/get/$name"
    checked=$((checked + 1))
  done
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
  local rss
  rss=$(grep -E '^[0-9]+$' "$WORK/rss" | sort -n | tail -1)
  printf '%-28s %9s seg/s %7d MiB / 256 MiB %7.1f MiB %6d %6d %6d\n' "$label" "$drained" \
    "$((peak_steady / 1048576))" "$(echo "$rss / 1024" | bc -l)" "$total" "$failed" "$checked"
  [ "$failed" -eq 0 ] || { echo "archiving failed; see $WORK/pg.log" >&2; KEEP=1; exit 1; }
}

echo "backlog: pgbench -i -s $SCALE; then pgbench -c 2 -T $SECONDS_RUN while archiving"
printf '%-28s %15s %24s %11s %6s %6s %6s\n' "" "drain" "steady pg_wal peak" "peak RSS" "files" "failed" "cmp"
run "file, parallel 1" "$WORK/repo-file-1" "" 1
run "file, parallel $PARALLEL_DEFAULT" "$WORK/repo-file-4" "" "$PARALLEL_DEFAULT"
run "S3 ${LATENCY_MS} ms, parallel 1" "s3://bench/repo-1" "$S3_ENV" 1
run "S3 ${LATENCY_MS} ms, parallel $PARALLEL_DEFAULT" "s3://bench/repo-4" "$S3_ENV" "$PARALLEL_DEFAULT"
