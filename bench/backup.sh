#!/usr/bin/env bash
# Benchmark: full backup and restore of a pgbench database (default scale 50, ~780 MB) to a
# local repository, pitr vs pgBackRest (process-max=2, lz4), in the same run. Prints time,
# throughput and peak RSS of each.
#
#   bash bench/backup.sh [SCALE]      (needs root or the postgres user)
#   PG_MAJOR=18 bash bench/backup.sh  the same on another major (13-18, scripts/pg_versions.sh)
#
# Needs PostgreSQL 15 server binaries, pgBackRest and GNU time
# (apt-get install postgresql-15 pgbackrest time). pgBackRest's columns are n/a on a major
# the installed pgBackRest does not support (Debian 12's 2.45: up to 15).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-50}
source bench/lib.sh
pick_pg
PGBR_ON=1
pgbr_supports || PGBR_ON=0
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed: apt-get install pgbackrest" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is not installed: apt-get install time" >&2; exit 1; }

cargo build --release --quiet
WORK=$(mktemp -d /tmp/pitr-bench-backup-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
[ -n "${KEEP:-}" ] && echo "keeping $WORK" || trap cleanup EXIT
cp target/release/pitr "$WORK/pitr"
mkdir -p "$WORK/pgbr-repo" "$WORK/lock" "$WORK/restore-pitr" "$WORK/restore-pgbr"
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

pgbr_config </dev/null
PITR="$WORK/pitr --repo $WORK/pitr-repo"

echo "== pgbench scale $SCALE"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
max_wal_size = '4GB'
archive_mode = on
archive_command = '$PITR archive-push %p$([ "$PGBR_ON" = 1 ] && echo " && $PGBR archive-push %p")'
EOF
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
[ "$PGBR_ON" = 1 ] && as_pg $PGBR stanza-create >/dev/null
as_pg "$PG_CLIENT_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
as_pg "$PG_CLIENT_BIN/psql" -h "$WORK" -U postgres -Atqc "checkpoint" postgres
size=$(du -sb "$WORK/data/base" | cut -f1)
echo "== database: $((size / 1048576)) MiB"

# Runs a command as postgres under GNU time; prints "seconds peak_rss_kb".
# (Replaces bench/lib.sh's measure, which also prints CPU time.)
measure() {
  as_pg /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >/dev/null 2>"$WORK/err.out" || {
    cat "$WORK/err.out" >&2; exit 1; }
  cat "$WORK/time.out"
}
sync
read -r pitr_b pitr_b_rss < <(measure $PITR backup --pgdata "$WORK/data" --dbname "host=$WORK port=5432 user=postgres")
pgbr_b=n/a pgbr_b_rss=0 pgbr_r=n/a pgbr_r_rss=0
[ "$PGBR_ON" = 1 ] && read -r pgbr_b pgbr_b_rss < <(measure $PGBR --type=full backup)
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
sync
read -r pitr_r pitr_r_rss < <(measure $PITR restore --pgdata "$WORK/restore-pitr" --target immediate)
# The cost of durability: the same restore without its fsync pass (synced outside the timing
# so that each run starts from the same state), alternated with more synced runs; best of
# each, since this VM's memory makes consecutive runs uneven.
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }
restore_once() {
  as_pg rm -rf "$WORK/restore-again"
  # On a filesystem mounted with discard, the removal's journal commit (and its discards)
  # would otherwise land in the next run's first fsync.
  sync
  read -r t _ < <(measure $PITR restore "$@" --pgdata "$WORK/restore-again" --target immediate)
  sync
  echo "$t"
}
pitr_nosync=$(restore_once --no-sync)
pitr_nosync=$(best "$pitr_nosync" "$(restore_once --no-sync)")
pitr_sync=$(best "$pitr_r" "$(restore_once)")
pitr_sync=$(best "$pitr_sync" "$(restore_once)")
[ "$PGBR_ON" = 1 ] && read -r pgbr_r pgbr_r_rss < <(measure $PGBR --pg1-path="$WORK/restore-pgbr" restore)

mbs() { [ "$1" = n/a ] && { echo n/a; return; }; awk -v b="$size" -v s="$1" 'BEGIN { printf "%.0f MB/s", b / 1e6 / s }'; }
ratio() { [ "$1" = n/a ] && { echo n/a; return; }; awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo "== PostgreSQL $PG_MAJOR ($PG_BIN)$([ "$PGBR_ON" = 1 ] || echo "; pgBackRest $(pgbackrest version | awk '{ print $2 }') does not support it: its columns are n/a")"
printf '\n%-10s %22s %22s %8s\n' "" "pitr" "pgBackRest (2 procs)" "speedup"
secs() { [ "$1" = n/a ] && echo n/a || echo "${1}s"; }
printf '%-10s %9s %9s %12s %9s %9s %8s %8s\n' backup "$(secs "$pitr_b")" "$(mbs "$pitr_b")" "" "$(secs "$pgbr_b")" "$(mbs "$pgbr_b")" "" "$(ratio "$pgbr_b" "$pitr_b")"
printf '%-10s %9s %9s %12s %9s %9s %8s %8s\n' restore "$(secs "$pitr_r")" "$(mbs "$pitr_r")" "" "$(secs "$pgbr_r")" "$(mbs "$pgbr_r")" "" "$(ratio "$pgbr_r" "$pitr_r")"
pgbr_rss="backup $((pgbr_b_rss / 1024)) MiB, restore $((pgbr_r_rss / 1024)) MiB (main process)"
[ "$PGBR_ON" = 1 ] || pgbr_rss=n/a
echo "peak RSS: pitr backup $((pitr_b_rss / 1024)) MiB, restore $((pitr_r_rss / 1024)) MiB; pgBackRest $pgbr_rss"
echo "stored: pitr $(( $(du -sb "$WORK/pitr-repo/backup" | cut -f1) / 1048576 )) MiB, pgBackRest $([ "$PGBR_ON" = 1 ] && echo "$(( $(du -sb "$WORK/pgbr-repo/backup" | cut -f1) / 1048576 )) MiB" || echo n/a)"
awk -v s="$pitr_sync" -v n="$pitr_nosync" 'BEGIN { printf "restore fsync cost (best of 3 with, 2 without): %.2f s with, %.2f s without (%+.0f%%; target under 15%%)\n", s, n, (s / n - 1) * 100 }'
echo "(target: pitr at least 2x pgBackRest's throughput for both, peak RSS under 100 MB)"
