#!/usr/bin/env bash
# Benchmark: block-incremental backups (issue 27) on a pgbench database (default scale 140,
# about 2.1 GiB), pitr beside pgBackRest, in one run:
#   1. a full backup of each (pitr; pgBackRest, process-max=2, lz4);
#   2. six rounds, each changing about 1% of the cluster's blocks (an UPDATE of every 6000th
#      pgbench_accounts row: one row in about every 100 heap pages, plus the index and the
#      pages the new row versions go to), then `pitr backup --type incr` and pgBackRest's
#      `--type=incr`: time, and bytes read from disk (the page cache dropped before each
#      backup; GNU time's %I, the kernel's read_bytes of /proc/<pid>/io for the process and
#      its children);
#   3. a restore of the chain (full + 6 incrementals) against a restore of one full backup of
#      the same final state (best of 2 each).
# Targets: an incremental reads at most 3% of the cluster's bytes and takes at most 10% of a
# full backup's time; the chain restores in at most 1.15x one full backup's restore. The
# "checkpoint" column is the server's own checkpoint time during the incremental backup
# (pg_backup_start's, pg_stat_bgwriter): part of its time that no backup tool can avoid.
#
#   bash bench/incremental.sh [SCALE]     (root: it drops the page cache)
#
# Needs PostgreSQL 15, pgBackRest and GNU time (apt-get install postgresql-15 pgbackrest time).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-140}
ROUNDS=6
source bench/lib.sh
require_pg
require_gnu_time
[ "$(id -u)" -eq 0 ] || { echo "run as root: the page cache is dropped before each backup" >&2; exit 1; }
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed: apt-get install pgbackrest" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pitr-bench-incremental-XXXXXX)
chmod 755 "$WORK"
cleanup() {
  kill_cluster "$WORK/data"
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
release_pitr "$WORK"
# Its backups do not wait for its own WAL archive: archive_command feeds pitr alone, so that
# neither backup's time includes the other's archive-push of the stop segment (pgBackRest's
# backups are not restored here).
pgbr_config <<<'archive-check=n'
give_pg "$WORK"
PITR="$WORK/pitr --repo $WORK/repo"
CONN="host=$WORK port=5432 user=postgres"

new_cluster "$WORK/data" "$WORK" <<EOF
max_wal_size = '4GB'
archive_mode = on
archive_command = '$PITR archive-push %p'
EOF
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
start_cluster "$WORK/data"
as_pg $PGBR stanza-create >/dev/null
psql_() { as_pg "$PG_BIN/psql" -h "$WORK" -U postgres -Atqc "$1" postgres; }
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
# Hint bits and the visibility map set now, not by the first round's scan.
psql_ "vacuum (freeze, analyze)"
# One round before the full backup, so that every measured round changes what a steady
# workload changes: the first update of the freshly loaded table changed 1.75% of the
# blocks in earlier runs, each later one 0.9%. WARMUP=0 leaves it out.
if [ "${WARMUP:-1}" = 1 ]; then
  psql_ "update pgbench_accounts set abalance = abalance + 1 where aid % 6000 = 0" >/dev/null
  psql_ "vacuum"
fi
psql_ "checkpoint"
# What a full backup copies: the data directory without pg_wal.
cluster_bytes=$(du -sb --exclude=pg_wal "$WORK/data" | cut -f1)
blocks=$(psql_ "select (sum(pg_relation_size(oid, 'main')) / 8192)::bigint from pg_class where relkind in ('r', 'i', 't', 'm', 'S')")
echo "== pgbench scale $SCALE: cluster $((cluster_bytes / 1048576)) MiB without pg_wal, $blocks relation blocks"

# Drops the page cache, then loads the two programs again: their own binaries are not the
# cluster's bytes.
drop_cache() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
  as_pg "$WORK/pitr" --version >/dev/null
  pgbackrest version >/dev/null
}
# The server's checkpoint time so far, ms (write + sync): what pg_backup_start's checkpoint
# costs before either program reads a byte.
checkpoint_ms() { psql_ "select (checkpoint_write_time + checkpoint_sync_time)::bigint from pg_stat_bgwriter"; }

# Runs a backup or restore as postgres with a cold page cache; prints "seconds read_bytes".
cold() {
  local out
  out=$(scratch_file)
  drop_cache
  as_pg /usr/bin/time -f "%e %I" -o "$out" "$@" >"$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
  awk '{ printf "%s %d\n", $1, $2 * 512 }' "$out"
  rm -f "$out" "$out.log"
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f%%", a * 100 / b }'; }

read -r pitr_full pitr_full_read < <(cold $PITR backup --pgdata "$WORK/data" --dbname "$CONN")
read -r pgbr_full pgbr_full_read < <(cold $PGBR --type=full backup)
printf '\n%-8s %10s %10s %10s %12s %12s | %10s %10s %12s\n' "" "changed" "pitr s" "checkpoint" "pitr read" "pitr stored" "pgBR s" "pgBR read" "pgBR stored"
pgbr_stored_before=$(du -sb "$WORK/pgbr-repo/backup" | cut -f1)
printf '%-8s %10s %10s %10s %12s %12s | %10s %10s %12s\n' full 100% "$pitr_full" "" "$(pct "$pitr_full_read" "$cluster_bytes")" \
  "$(($(du -sb "$WORK/repo/backup" | cut -f1) / 1048576)) MiB" "$pgbr_full" "$(pct "$pgbr_full_read" "$cluster_bytes")" \
  "$((pgbr_stored_before / 1048576)) MiB"
worst_read=0 worst_time=0
for round in $(seq 1 $ROUNDS); do
  psql_ "update pgbench_accounts set abalance = abalance + 1 where aid % 6000 = $round" >/dev/null
  # Changed blocks: those whose page LSN is past the last backup's start, summed over the
  # relations (pageinspect would read every page twice; the backup's own line says it too).
  pitr_repo_before=$(du -sb "$WORK/repo/backup" | cut -f1)
  out=$(scratch_file)
  drop_cache
  before_ms=$(checkpoint_ms)
  as_pg /usr/bin/time -f "%e %I" -o "$out" $PITR backup --type incr --pgdata "$WORK/data" --dbname "$CONN" >"$out.log" 2>&1 \
    || { cat "$out.log" >&2; exit 1; }
  read -r t r < <(awk '{ printf "%s %d\n", $1, $2 * 512 }' "$out")
  changed=$(grep -o '[0-9]* changed blocks' "$out.log" | cut -d' ' -f1)
  checkpoint=$(awk -v a="$before_ms" -v b="$(checkpoint_ms)" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
  rm -f "$out" "$out.log"
  stored=$(( $(du -sb "$WORK/repo/backup" | cut -f1) - pitr_repo_before ))
  read -r pt pr < <(cold $PGBR --type=incr backup)
  pgbr_now=$(du -sb "$WORK/pgbr-repo/backup" | cut -f1)
  printf '%-8s %10s %10s %10s %12s %12s | %10s %10s %12s\n' "incr $round" "$(pct "$changed" "$blocks")" "$t" "$checkpoint" \
    "$(pct "$r" "$cluster_bytes")" "$((stored / 1048576)) MiB" "$pt" "$(pct "$pr" "$cluster_bytes")" \
    "$(((pgbr_now - pgbr_stored_before) / 1048576)) MiB"
  pgbr_stored_before=$pgbr_now
  worst_read=$(awk -v a="$worst_read" -v b="$r" 'BEGIN { print (b > a ? b : a) }')
  worst_time=$(awk -v a="$worst_time" -v b="$t" 'BEGIN { print (b > a ? b : a) }')
  worst_own=$(awk -v a="${worst_own:-0}" -v b="$t" -v c="$checkpoint" 'BEGIN { print (b - c > a ? b - c : a) }')
done
chain=$(as_pg $PITR list --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["backups"][-1]["id"])')
# What the chain must hold: pgbench_accounts spans two 1 GiB segment files.
accounts="select count(*) || ':' || sum(abalance) || ':' || md5(string_agg(abalance::text, ',' order by aid)) from pgbench_accounts"
expected=$(psql_ "$accounts")
# A full backup of the same final state, to restore against the chain.
read -r _ _ < <(cold $PITR backup --pgdata "$WORK/data" --dbname "$CONN")
single=$(as_pg $PITR list --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["backups"][-1]["id"])')
stop_cluster "$WORK/data"

restore_time() { # BACKUP
  as_pg rm -rf "$WORK/restored"
  sync
  read -r t _ < <(cold $PITR restore --backup "$1" --target immediate --pgdata "$WORK/restored")
  echo "$t"
}
chain_t=$(best "$(restore_time "$chain")" "$(restore_time "$chain")")
# The last chain restored: started, paused at its end, it holds the rows of the moment.
as_pg "$PG_BIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w start >/dev/null
for _ in $(seq 1 600); do
  [ "$(psql_ "select pg_get_wal_replay_pause_state()" 2>/dev/null)" = paused ] && break
  sleep 0.1
done
got=$(psql_ "$accounts")
stop_cluster "$WORK/restored"
[ "$got" = "$expected" ] || { echo "the restored chain holds $got, the cluster held $expected" >&2; exit 1; }
echo "the chain restored exactly (pgbench_accounts: $(du -b "$WORK/restored/base/5/"* | sort -n | tail -2 | awk '{ printf "%s ", $1 }')bytes in its two largest files)"
full_t=$(best "$(restore_time "$single")" "$(restore_time "$single")")
echo
echo "incremental: worst read $(pct "$worst_read" "$cluster_bytes") of the cluster (target <= 3%), worst time $(awk -v a="$worst_time" -v b="$pitr_full" 'BEGIN { printf "%.1f%%", a * 100 / b }') of the full backup's $pitr_full s (target <= 10%); without the server's checkpoint $(awk -v a="$worst_own" -v b="$pitr_full" 'BEGIN { printf "%.1f%%", a * 100 / b }')"
echo "restore: full + $ROUNDS incrementals $chain_t s, one full $full_t s: $(awk -v a="$chain_t" -v b="$full_t" 'BEGIN { printf "%.2fx", a / b }') (target <= 1.15x)"
