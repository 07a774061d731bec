#!/usr/bin/env bash
# Benchmark: what a restore drill and a one-table recovery read and take, on a cluster holding
# a pgbench database (default scale 50, ~750 MB) and a second database of ~1 GB, in a local
# file repository. Prints, for a full restore, `restore --db-include` of the pgbench database,
# `restore-table` of one small pgbench table and a full `drill`: bytes read from the
# repository, seconds, peak RSS.
#
#   bash bench/drill.sh [SCALE] [SECOND_DB_MB]      (needs root or the postgres user)
#
# Needs PostgreSQL 15 server binaries and GNU time (apt-get install postgresql-15 time).
# PITR_BIN=path skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SCALE=${1:-50}
SECOND_MB=${2:-1024}
require_pg
require_gnu_time

WORK=$(mktemp -d /tmp/pitr-bench-drill-XXXXXX)
chmod 755 "$WORK"
cleanup() { kill_cluster "$WORK/data"; rm -rf "$WORK"; }
[ -n "${KEEP:-}" ] && echo "keeping $WORK" || trap cleanup EXIT
release_pitr "$WORK"
mkdir -p "$WORK/scratch"
give_pg "$WORK"
PITR="$WORK/pitr --repo $WORK/repo"
SQL() { as_pg "$PG_BIN/psql" -X -h "$WORK" -U postgres -Atq "$@"; }

new_cluster "$WORK/data" "$WORK" <<EOF
max_wal_size = '4GB'
archive_mode = on
archive_command = '$PITR archive-push %p'
EOF
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
start_cluster "$WORK/data"
SQL -c "CREATE DATABASE app" -d postgres
SQL -c "CREATE DATABASE other" -d postgres
echo "== pgbench scale $SCALE in app, ${SECOND_MB} MB in other"
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q app 2>/dev/null
# md5 text: about 1 GB on disk that lz4 cannot shrink much (as real data often is).
rows=$((SECOND_MB * 1048576 / 110))
SQL -d other -c "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, $rows) g"
SQL -d postgres -c "CHECKPOINT"
app=$(SQL -d postgres -c "SELECT pg_database_size('app')")
other=$(SQL -d postgres -c "SELECT pg_database_size('other')")
echo "app: $((app / 1048576)) MiB, other: $((other / 1048576)) MiB"
as_pg $PITR backup --pgdata "$WORK/data" --dbname "host=$WORK port=5432 user=postgres" >/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 2 -T 20 app >/dev/null 2>&1
target=$(SQL -d postgres -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
# Recovery stops at the first commit after the target: there must be one.
sleep 1
SQL -d app -c "CREATE TABLE after_target ()"
segment=$(SQL -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
SQL -d postgres -c "SELECT pg_switch_wal()" >/dev/null
until [ "$(SQL -d postgres -c "SELECT coalesce(last_archived_wal, '') >= '$segment' FROM pg_stat_archiver")" = t ]; do
  sleep 1
done
sync

# "bytes read" as each command reports it.
run() { # LABEL ARGS...
  local label=$1 out
  shift
  out=$(scratch_file)
  as_pg /usr/bin/time -f "%e %M" -o "$out.time" "$@" >"$out" 2>"$out.err" || {
    cat "$out.err" >&2; exit 1; }
  read=$(grep -o '[0-9]* bytes read from the repository' "$out" | head -1 | cut -d' ' -f1 || true)
  [ -n "$read" ] || read=$(grep -o '"bytes_read": [0-9]*' "$out" | head -1 | grep -o '[0-9]*$' || true)
  read -r seconds rss < "$out.time"
  printf '%-40s %8.1f MiB read  %6.1f s  %6.0f MB RSS\n' "$label" \
    "$(awk -v b="$read" 'BEGIN { print b / 1048576 }')" "$seconds" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
  grep -E "total:|replay:|restore:|_seconds" "$out" | sed 's/^/    /' || true
  rm -f "$out" "$out.time" "$out.err"
}

rm -rf "$WORK/full"
run "restore (whole cluster)" $PITR restore --pgdata "$WORK/full" --no-sync
rm -rf "$WORK/full" "$WORK/part"
run "restore --db-include app" $PITR restore --pgdata "$WORK/part" --no-sync --db-include app
rm -rf "$WORK/part"
run "restore-table pgbench_branches" $PITR restore-table --table pgbench_branches \
  --target-time "$target" --into "host=$WORK port=5432 user=postgres dbname=app" \
  --scratch-dir "$WORK/scratch" --json
run "drill (whole cluster, amcheck)" $PITR drill --scratch-dir "$WORK/scratch"
stop_cluster "$WORK/data"
