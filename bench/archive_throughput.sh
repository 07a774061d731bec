#!/usr/bin/env bash
# Benchmark: sustained WAL archiving through PostgreSQL's own archiver, with archive-push's
# look-ahead off (archive_push_parallel=1) and at its default, on the file repository and on
# S3 (s3s-fs behind bench/s3_proxy.py, 20 ms each way).
#
#   bash bench/archive_throughput.sh [SCALE] [SECONDS]     (default 20 and 30)
#
# Each run: a fresh cluster (16 MB segments, max_wal_size 256MB) builds a backlog with
# pgbench -i -s SCALE while archive_command is empty (PostgreSQL keeps the WAL and waits),
# then a write-heavy pgbench (bulk inserts and deletes, about 1 MB of WAL per transaction)
# runs for SECONDS while archiving is switched on. Printed, in 16 MB segments per second:
#   drain     segments archived per second while the backlog lasts, pgbench writing
#             meanwhile: the archiver is the bottleneck, so this is what it sustains;
#   written   segments of WAL pgbench wrote per second meanwhile;
#   then, from a CHECKPOINT once the backlog is archived until pgbench ends:
#   archived  segments archived per second, against those written (keeping up or not);
#   ready     most segments waiting for the archiver at once;
#   pg_wal    peak size of the WAL files in pg_wal, against max_wal_size;
#   and rss   the largest peak RSS of any archive-push call (/usr/bin/time), cpu the CPU time
#             (user + system) of all archive-push calls per file archived.
# Every run must end with failed_count = 0; every archived segment is fetched back through
# archive-get (which verifies its checksums), and those still in pg_wal are compared byte for
# byte (tests/it/archive_lookahead.rs compares every one).
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
cat > "$WORK/write.sql" <<'SQL'
\set b random(1, 100)
delete from bench_t where bucket = :b;
insert into bench_t select :b, repeat(md5(random()::text), 6) from generate_series(1, 3000);
SQL
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port)
PROXY_PORT=$(free_port)
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$WORK/s3root" >/dev/null 2>&1 &
PIDS+=($!)
python3 bench/s3_proxy.py "$PROXY_PORT" "$S3_PORT" "$LATENCY_MS" 2>"$WORK/proxy.log" &
PIDS+=($!)
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PROXY_PORT/__count" >/dev/null && break; sleep 0.2; done
S3_ENV="AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
AWS_EC2_METADATA_DISABLED=true PITR_S3_ENDPOINT=http://127.0.0.1:$PROXY_PORT PITR_S3_PATH_STYLE=true"

psql_q() { as_pg psql -X -h "$WORK" -U postgres -Atqc "$1" postgres; }
# PostgreSQL removes files while these look: find's complaints about them are expected.
wal_bytes() { # bytes of WAL files in pg_wal (segments, partial and history files)
  { find "$WORK/data/pg_wal" -maxdepth 1 -type f -regextype posix-extended \
      -regex '.*/[0-9A-F]{24}(\.partial)?|.*/[0-9A-F]{8}\.history' -printf '%s\n' 2>/dev/null || true; } |
    awk '{ s += $1 } END { print s + 0 }'
}
ready_count() { { find "$WORK/data/pg_wal/archive_status" -name '*.ready' 2>/dev/null || true; } | wc -l; }
now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) }'; }
wal_segments() { psql_q "select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / 16777216)"; }
archived_count() { psql_q "select archived_count from pg_stat_archiver"; }

run() { # LABEL REPO-URL ENV PARALLEL
  local label=$1 repo=$2 env=$3 parallel=$4
  rm -rf "$WORK/data" "$WORK/rss" "$WORK/pg.log" "$WORK/get"
  [ "${repo#s3://}" = "$repo" ] || rm -rf "$WORK/s3root/bench/${repo#s3://bench/}"
  mkdir -p "$WORK/get"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$WORK/get"
  as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
  cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
max_wal_size = '256MB'
min_wal_size = '64MB'
checkpoint_timeout = '30s'
archive_mode = on
archive_command = ''
CONF
  as_pg env $env "$WORK/pitr" --repo "$repo" init --pgdata "$WORK/data" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
  as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  psql_q "create table bench_t (bucket int, pad text)" >/dev/null
  psql_q "select pg_switch_wal()" >/dev/null
  local backlog
  backlog=$(ready_count)

  as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -n -c 2 -T "$SECONDS_RUN" -f "$WORK/write.sql" \
    postgres >/dev/null 2>&1 &
  local bench=$!
  echo "archive_command = 'env $env PITR_ARCHIVE_PUSH_PARALLEL=$parallel /usr/bin/time -f \"%M %U %S\" -a -o $WORK/rss $WORK/pitr --repo $repo archive-push %p'" \
    >> "$WORK/data/postgresql.conf"
  local start wal0 drained="" drain_written="-" steady_start="" steady_wal=0 steady_archived=0
  local peak_wal=0 peak_ready=0 archived t bytes ready
  start=$(now)
  wal0=$(wal_segments)
  psql_q "select pg_reload_conf()" >/dev/null
  while kill -0 "$bench" 2>/dev/null; do
    archived=$(archived_count)
    t=$(now)
    if [ -z "$drained" ]; then
      if [ "$archived" -ge "$backlog" ]; then
        drained=$(rate "$archived" "$start" "$t")
        drain_written=$(rate "$(($(wal_segments) - wal0))" "$start" "$t")
        psql_q "checkpoint" >/dev/null
        steady_start=$(now)
        steady_wal=$(wal_segments)
        steady_archived=$(archived_count)
      fi
    else
      bytes=$(wal_bytes)
      ready=$(ready_count)
      [ "$bytes" -gt "$peak_wal" ] && peak_wal=$bytes
      [ "$ready" -gt "$peak_ready" ] && peak_ready=$ready
    fi
    sleep 0.2
  done
  wait "$bench" || true
  local steady="-" written="-"
  if [ -n "$steady_start" ]; then
    t=$(now)
    steady=$(rate "$(($(archived_count) - steady_archived))" "$steady_start" "$t")
    written=$(rate "$(($(wal_segments) - steady_wal))" "$steady_start" "$t")
  else
    drained="$archived/$backlog"
  fi
  local last
  last=$(psql_q "select pg_walfile_name(pg_current_wal_lsn())")
  psql_q "select pg_switch_wal()" >/dev/null
  until [ "$(psql_q "select coalesce(last_archived_wal, '') >= '$last' from pg_stat_archiver")" = t ]; do
    sleep 0.2
  done
  local failed total
  read -r total failed < <(psql_q "select archived_count, failed_count from pg_stat_archiver" | tr '|' ' ')
  # Stopped, so that no checkpoint recycles a segment while it is compared.
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
  local compared=0 fetched=0 segno name
  for segno in $(seq 1 $((16#${last:8:8} * 256 + 16#${last:16:8}))); do
    name=$(printf '00000001%08X%08X' $((segno / 256)) $((segno % 256)))
    as_pg env $env "$WORK/pitr" --repo "$repo" archive-get "$name" "$WORK/get/$name"
    fetched=$((fetched + 1))
    if [ -f "$WORK/data/pg_wal/$name" ]; then
      cmp "$WORK/data/pg_wal/$name" "$WORK/get/$name" || { echo "$name differs" >&2; KEEP=1; exit 1; }
      compared=$((compared + 1))
    fi
    rm -f "$WORK/get/$name"
  done
  local rss cpu
  rss=$(grep -E '^[0-9]+ ' "$WORK/rss" | sort -n | tail -1 | cut -d' ' -f1)
  cpu=$(grep -E '^[0-9]+ ' "$WORK/rss" | awk -v n="$total" '{ s += $2 + $3 } END { printf "%.0f", s * 1000 / n }')
  printf '%-22s %6s %7s %8s %7s %5s %6d MiB %6.1f MiB %6s %5d %3d %4d/%d\n' "$label" "$drained" \
    "$drain_written" "$steady" "$written" "$peak_ready" "$((peak_wal / 1048576))" \
    "$(echo "$rss / 1024" | bc -l)" "$cpu" "$total" "$failed" "$compared" "$fetched"
  [ "$failed" -eq 0 ] || { echo "archiving failed; see $WORK/pg.log" >&2; KEEP=1; exit 1; }
}

echo "backlog: pgbench -i -s $SCALE, then write-heavy pgbench -c 2 -T $SECONDS_RUN while archiving"
echo "(16 MB segments per second; max_wal_size 256 MiB)"
printf '%-22s %6s %7s %8s %7s %5s %10s %10s %6s %5s %3s %s\n' "" "drain" "written" "archived" \
  "written" "ready" "pg_wal" "peak RSS" "cpu ms" "files" "err" "cmp/fetched"
run "file, parallel 1" "$WORK/repo-file-1" "" 1
run "file, parallel $PARALLEL_DEFAULT" "$WORK/repo-file-4" "" "$PARALLEL_DEFAULT"
run "S3 ${LATENCY_MS} ms, parallel 1" "s3://bench/repo-1" "$S3_ENV" 1
run "S3 ${LATENCY_MS} ms, parallel $PARALLEL_DEFAULT" "s3://bench/repo-4" "$S3_ENV" "$PARALLEL_DEFAULT"
