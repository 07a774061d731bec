#!/usr/bin/env bash
# Benchmark: compression ratio and compress/decompress speed of lz4 and zstd levels 1, 3, 6,
# 9 and 19 on REAL data: the WAL segments a pgbench run writes on a PostgreSQL 15 cluster,
# and the data files of a base backup (pg_basebackup) of that cluster. Each set is encoded
# by pitr's codec with one worker per core (examples/compression_levels.rs).
#
#   bash bench/compression.sh [SCALE] [SECONDS]     (needs root or the postgres user)
#
# SCALE is the pgbench scale (default 10, ~160 MB of data), SECONDS the length of the
# pgbench run whose WAL is measured (default 30; at most MAX_SEGMENTS=8 segments, 128 MB,
# are kept). PROFILE=dev builds in the dev profile with pitr itself at opt-level 3 (the
# generic LZ4 frame code is compiled in pitr, the codecs' cores are optimised in dev already):
# close to release figures without a release build of every dependency. KEEP=1 keeps the
# work directory.
# Needs PostgreSQL 15 server binaries (apt-get install postgresql-15).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-10}
SECONDS_RUN=${2:-30}
MAX_SEGMENTS=${MAX_SEGMENTS:-8}
PROFILE=${PROFILE:-release}
PG_BIN=/usr/lib/postgresql/15/bin

if [ "$PROFILE" = dev ]; then
  cargo build --quiet --example compression_levels \
    --config profile.dev.package.pitr.opt-level=3 \
    --config profile.dev.package.pitr.debug-assertions=false \
    --config profile.dev.package.pitr.overflow-checks=false
  dir=debug
else
  cargo build --quiet --profile "$PROFILE" --example compression_levels
  dir=$PROFILE
fi
BENCH="target/$dir/examples/compression_levels"

WORK=$(mktemp -d /tmp/pitr-bench-compression-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
[ -n "${KEEP:-}" ] && echo "keeping $WORK" || trap cleanup EXIT
mkdir -p "$WORK/wal"
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
max_wal_size = '4GB'
archive_mode = on
archive_command = 'cp %p $WORK/wal/%f'
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
sql() { as_pg "$PG_BIN/psql" -h "$WORK" -U postgres -Atqc "$1" postgres; }
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
sql "checkpoint"

# The WAL of the run alone (updates with full-page images, as archive-push sees day to day).
first=$(sql "select pg_walfile_name(pg_current_wal_insert_lsn())")
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 4 -j 2 -T "$SECONDS_RUN" postgres >/dev/null 2>&1
last=$(sql "select pg_walfile_name(pg_current_wal_insert_lsn())")
sql "select pg_switch_wal()" >/dev/null
for _ in $(seq 100); do
  [ -f "$WORK/wal/$last" ] && break
  sleep 0.2
done
mapfile -t segments < <(find "$WORK/wal" -name '[0-9A-F]*' -size 16M | sort |
  awk -v first="$WORK/wal/$first" '$0 > first' | head -n "$MAX_SEGMENTS")
[ ${#segments[@]} -gt 0 ] || { echo "no WAL segments archived after $first" >&2; exit 1; }

# A base backup's data files: what `pitr backup` compresses (plain format, no WAL).
as_pg "$PG_BIN/pg_basebackup" -h "$WORK" -U postgres -D "$WORK/base" -Fp -X none -c fast
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
mapfile -t datafiles < <(find "$WORK/base/base" "$WORK/base/global" -type f -size +0 | sort)

echo "== $(nproc) cores; figures are indicative while other work shares them"
"$BENCH" "WAL of pgbench -c 4 -T $SECONDS_RUN (scale $SCALE), 16 MB segments" "${segments[@]}"
"$BENCH" "base backup data files (pgbench scale $SCALE)" "${datafiles[@]}"
