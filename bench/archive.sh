#!/usr/bin/env bash
# Benchmark: archive-push and archive-get of the same real WAL segments (from a pgbench run),
# one process per segment as PostgreSQL calls them, with pitr and with pgBackRest (lz4, posix
# repository), in the same run. Prints milliseconds per segment and the ratio.
#
#   bash bench/archive.sh [SEGMENTS]     (default 40; needs root or the postgres user)
#
# "get (spool)" times archive-get served from the prefetch spool, as during recovery.
# BASELINE_PITR=/path/to/older/pitr also times that binary's archive-push on the same segments
# (e.g. one built before the WAL index) and prints what the index costs per push.
#
# Needs PostgreSQL 15 server binaries and pgBackRest (apt-get install postgresql-15 pgbackrest).
set -euo pipefail
cd "$(dirname "$0")/.."

SEGMENTS=${1:-40}
PG_BIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed: apt-get install pgbackrest" >&2; exit 1; }
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 is not installed: apt-get install postgresql-15" >&2; exit 1; }

cargo build --release --quiet
WORK=$(mktemp -d /tmp/pitr-bench-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
[ -n "${KEEP:-}" ] && echo "keeping $WORK" || trap cleanup EXIT
cp target/release/pitr "$WORK/pitr"
mkdir -p "$WORK/segments" "$WORK/get-pitr" "$WORK/get-pgbr" "$WORK/pgbr-repo" "$WORK/lock"
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

echo "== generating WAL with pgbench"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
wal_keep_size = '8GB'
max_wal_size = '8GB'
archive_mode = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s 60 -q postgres 2>/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 2 -T 10 postgres >/dev/null 2>&1
as_pg psql -h "$WORK" -U postgres -Atqc "select pg_switch_wal()" postgres >/dev/null

# pgBackRest needs its stanza created against the running cluster.
cat > "$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=lz4
lock-path=$WORK/lock
log-path=$WORK
log-level-console=error
log-level-file=off
spool-path=$WORK

[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=5432
pg1-user=postgres
EOF
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK/pgbackrest.conf"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
as_pg "${PGBR[@]}" stanza-create >/dev/null
as_pg "$WORK/pitr" --repo "$WORK/pitr-repo" init --pgdata "$WORK/data" >/dev/null

current=$(as_pg psql -h "$WORK" -U postgres -Atqc "select pg_walfile_name(pg_current_wal_lsn())" postgres)
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
mapfile -t names < <(ls "$WORK/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$current" '$0 < c' | head -n "$SEGMENTS")
count=${#names[@]}
[ "$count" -ge 32 ] || { echo "only $count segments were produced" >&2; exit 1; }
for n in "${names[@]}"; do cp "$WORK/data/pg_wal/$n" "$WORK/segments/$n"; done
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK/segments"
bytes=$(du -sb "$WORK/segments" | cut -f1)
echo "== $count segments, $((bytes / 1048576)) MiB"

# Times each call alone (microseconds), as PostgreSQL would run it: one process per segment,
# from the data directory. What PostgreSQL does itself between calls (removing the previous
# RECOVERYXLOG before restore_command) is left out of the time. Runs as the postgres user.
time_loop() { # command template ({} = segment name) [untimed pause before each call, s]; prints mean ns per segment
  as_pg env WORK="$WORK" NAMES="${names[*]}" CMD="$1" PAUSE="${2:-0}" bash -c '
    set -e
    cd "$WORK/data"
    total=0
    for n in $NAMES; do
      rm -f pg_wal/RECOVERYXLOG
      sleep "$PAUSE"
      start=$EPOCHREALTIME
      eval "${CMD//\{\}/$n}"
      end=$EPOCHREALTIME
      total=$(( total + ${end/./} - ${start/./} ))
    done
    echo $(( total * 1000 / $(wc -w <<<"$NAMES") ))'
}

sync
PITR_CMD="$WORK/pitr --repo $WORK/pitr-repo"
PGBR_CMD="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"
pitr_push=$(time_loop "$PITR_CMD archive-push $WORK/segments/{}")
if [ -n "${BASELINE_PITR:-}" ]; then
  cp "$BASELINE_PITR" "$WORK/pitr-baseline"
  as_pg "$WORK/pitr-baseline" --repo "$WORK/baseline-repo" init --pgdata "$WORK/data" >/dev/null
  as_pg "$WORK/pitr-baseline" --repo "$WORK/baseline-repo2" init --pgdata "$WORK/data" >/dev/null
  base_push=$(time_loop "$WORK/pitr-baseline --repo $WORK/baseline-repo archive-push $WORK/segments/{}")
  # Once more after the baseline, into a fresh repository: the better of two runs each side.
  as_pg "$WORK/pitr" --repo "$WORK/pitr-repo2" init --pgdata "$WORK/data" >/dev/null
  again=$(time_loop "$WORK/pitr --repo $WORK/pitr-repo2 archive-push $WORK/segments/{}")
  base_again=$(time_loop "$WORK/pitr-baseline --repo $WORK/baseline-repo2 archive-push $WORK/segments/{}")
  [ "$again" -lt "$pitr_push" ] && pitr_push=$again
  [ "$base_again" -lt "$base_push" ] && base_push=$base_again
fi
pgbr_push=$(time_loop "$PGBR_CMD archive-push $WORK/segments/{}")
# As in recovery: each segment is restored to pg_wal/RECOVERYXLOG.
pitr_get=$(time_loop "$PITR_CMD archive-get {} pg_wal/RECOVERYXLOG")
pgbr_get=$(time_loop "$PGBR_CMD archive-get {} pg_wal/RECOVERYXLOG")
# With the prefetch spool: the data directory made to look in recovery (recovery.signal, a
# live postmaster.pid), so the first call starts the prefetcher; a 50 ms pause before each
# call (untimed) stands for replay's own time, which lets the prefetcher keep ahead.
as_pg touch "$WORK/data/recovery.signal"
sleep 600 & fake_postmaster=$!
echo "$fake_postmaster" > "$WORK/data/postmaster.pid"
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK/data/postmaster.pid"
pitr_spool_get=$(time_loop "$PITR_CMD archive-get {} pg_wal/RECOVERYXLOG" 0.05)
rm -f "$WORK/data/recovery.signal"
kill "$fake_postmaster"; wait "$fake_postmaster" 2>/dev/null || true
rm -f "$WORK/data/postmaster.pid"
sleep 1

cd "$WORK/data"
# Untimed: every segment back from each repository, byte-identical.
for n in "${names[@]}"; do
  as_pg "$WORK/pitr" --repo "$WORK/pitr-repo" archive-get "$n" "$WORK/get-pitr/$n"
  as_pg "${PGBR[@]}" archive-get "$n" "$WORK/get-pgbr/$n"
done
cd - >/dev/null

for n in "${names[@]}"; do
  cmp -s "$WORK/segments/$n" "$WORK/get-pitr/$n" || { echo "pitr restored $n wrong" >&2; exit 1; }
  cmp -s "$WORK/segments/$n" "$WORK/get-pgbr/$n" || { echo "pgBackRest restored $n wrong" >&2; exit 1; }
done
pitr_stored=$(du -sb "$WORK/pitr-repo/wal" | cut -f1)
pgbr_stored=$(du -sb "$WORK/pgbr-repo/archive" | cut -f1)

ms() { awk -v ns="$1" 'BEGIN { printf "%.1f", ns / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
printf '\n%-14s %12s %12s %8s\n' "per segment" "pitr" "pgBackRest" "ratio"
printf '%-14s %10s ms %10s ms %7sx\n' "archive-push" "$(ms "$pitr_push")" "$(ms "$pgbr_push")" "$(ratio "$pgbr_push" "$pitr_push")"
printf '%-14s %10s ms %10s ms %7sx\n' "archive-get" "$(ms "$pitr_get")" "$(ms "$pgbr_get")" "$(ratio "$pgbr_get" "$pitr_get")"
printf '%-14s %10s ms %13s\n' "get (spool)" "$(ms "$pitr_spool_get")" "(target < 3 ms)"
printf '%-14s %10s MiB %9s MiB\n' "stored" "$((pitr_stored / 1048576))" "$((pgbr_stored / 1048576))"
echo "(target: ratio >= 5 for push and get; all $count segments verified byte-identical)"
if [ -n "${BASELINE_PITR:-}" ]; then
  printf '%-14s %10s ms (this pitr) vs %s ms (baseline): %s%%\n' "index cost" "$(ms "$pitr_push")" "$(ms "$base_push")" \
    "$(awk -v a="$pitr_push" -v b="$base_push" 'BEGIN { printf "%+.0f", (a - b) * 100 / b }')"
fi
