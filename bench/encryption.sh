#!/usr/bin/env bash
# Benchmark: what encryption costs. The same data goes, in one run, into three file
# repositories: plain, encrypted with a passphrase file (Argon2id, paid once per process) and
# encrypted with a key file (HKDF). Issue 12's target: at most 15% more time than plain.
#
#   bash bench/encryption.sh [SEGMENTS] [SCALE]    (default 40 and 50; root or postgres user)
#
# Timed, each case alternated between the three repositories ROUNDS times (default 5; 3 for
# backup and restore), best run kept, since other work on the machine makes runs uneven:
#   archive-push     one process per 16 MB WAL segment from a pgbench run, as bench/archive.sh
#                    (look-ahead off: no file is marked ready), into a fresh repository
#   push, look-ahead the same segments all marked ready, pushed in order at the default
#                    archive_push_parallel=4 with PostgreSQL's .ready -> .done between calls,
#                    as its archiver runs: segments per second
#   archive-get      each segment back into pg_wal/RECOVERYXLOG, one process per segment
#   key unlock       archive-get of a segment the repository does not have (exit 1): a
#                    process's fixed cost, which for an encrypted repository includes reading
#                    keys.json and opening the data key
#   backup, restore  pitr backup of a pgbench database (scale SCALE, ~780 MB at 50) and
#                    pitr restore --target immediate of it
# Printed: wall time per case (and CPU time, user + system), and each encrypted case's
# overhead against plain. Every segment fetched back is compared with the original, and an
# encrypted repository is checked to refuse archive-get without its key.
#
# PITR_BIN=/path/to/pitr uses that binary instead of a fresh release build. KEEP=1 keeps the
# work directory. It needs about 4 GB at scale 50, in BENCH_TMP (default /tmp; /dev/shm
# where the disk is short, which leaves fsync out of every case alike). Needs PostgreSQL 15
# and GNU time (apt-get install postgresql-15 time).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
source bench/lib.sh

SEGMENTS=${1:-40}
SCALE=${2:-50}
ROUNDS=${ROUNDS:-5}
BACKUP_ROUNDS=${BACKUP_ROUNDS:-3}
require_pg
require_gnu_time

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/pitr-bench-encryption-XXXXXX")
cleanup() {
  kill_cluster "$WORK/data"
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
release_pitr "$WORK"
mkdir -p "$WORK/segments" "$WORK/got"
head -c 18 /dev/urandom | base64 > "$WORK/passphrase"
head -c 32 /dev/urandom > "$WORK/keyfile"
chmod 600 "$WORK/passphrase" "$WORK/keyfile"
give_pg "$WORK"

CASES=(plain pass key)
declare -A KEY_OPTS=([plain]="" [pass]="--passphrase-file $WORK/passphrase" [key]="--key-file $WORK/keyfile")
declare -A ENCRYPT=([plain]="" [pass]="--encrypt" [key]="--encrypt")
pitr_for() { echo "$WORK/pitr --repo $WORK/$1 ${KEY_OPTS[$2]}"; } # REPO CASE
init_repo() { as_pg $(pitr_for "$1" "$2") init ${ENCRYPT[$2]} --pgdata "$WORK/data" >/dev/null; }

# Results: R[<measure>.<case>] = best value; lower is better for all but segments/s.
declare -A R
keep_best() { # KEY VALUE
  if [ -z "${R[$1]:-}" ]; then R[$1]=$2; else R[$1]=$(best "${R[$1]}" "$2"); fi
}

echo "== cluster: pgbench -i -s $SCALE, archived into the three backup repositories"
archive_command=""
for c in "${CASES[@]}"; do
  archive_command+="${archive_command:+ && }$(pitr_for "backup-$c" "$c") archive-push %p"
done
new_cluster "$WORK/data" "$WORK" <<EOF
wal_keep_size = '8GB'
max_wal_size = '8GB'
archive_mode = on
archive_command = 'PITR_ARCHIVE_PUSH_PARALLEL=1 $archive_command'
EOF
for c in "${CASES[@]}"; do init_repo "backup-$c" "$c"; done
start_cluster "$WORK/data"
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
as_pg psql -X -h "$WORK" -U postgres -Atqc "checkpoint" postgres
size=$(du -sb "$WORK/data/base" | cut -f1)
echo "== database: $((size / 1048576)) MiB"

sync
for round in $(seq "$BACKUP_ROUNDS"); do
  for c in "${CASES[@]}"; do
    out=$(measure $(pitr_for "backup-$c" "$c") backup --pgdata "$WORK/data" \
      --dbname "host=$WORK port=5432 user=postgres")
    read -r t _ cpu <<<"$out"
    keep_best "backup.$c" "$t"
    keep_best "backup_cpu.$c" "$cpu"
  done
done

# More WAL, of ordinary transactions, after the backups.
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 2 -T 10 postgres >/dev/null 2>&1
as_pg psql -X -h "$WORK" -U postgres -Atqc "select pg_switch_wal()" postgres >/dev/null
current=$(as_pg psql -X -h "$WORK" -U postgres -Atqc "select pg_walfile_name(pg_current_wal_lsn())" postgres)
stop_cluster "$WORK/data"

sync
for round in $(seq "$BACKUP_ROUNDS"); do
  for c in "${CASES[@]}"; do
    as_pg rm -rf "$WORK/restore"
    sync
    out=$(measure $(pitr_for "backup-$c" "$c") restore --pgdata "$WORK/restore" --target immediate)
    read -r t _ cpu <<<"$out"
    sync
    keep_best "restore.$c" "$t"
    keep_best "restore_cpu.$c" "$cpu"
  done
done
as_pg rm -rf "$WORK/restore"

mapfile -t names < <(ls "$WORK/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$current" '$0 < c' | head -n "$SEGMENTS")
count=${#names[@]}
[ "$count" -ge $(( SEGMENTS < 16 ? SEGMENTS : 16 )) ] || { echo "only $count segments were produced" >&2; exit 1; }
# Links, not copies: the server is stopped for good, so its pg_wal stays as it is.
for n in "${names[@]}"; do ln "$WORK/data/pg_wal/$n" "$WORK/segments/$n"; done
give_pg "$WORK/segments"
echo "== $count WAL segments, $(( $(du -sb "$WORK/segments" | cut -f1) / 1048576 )) MiB"

sync
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    init_repo "wal-$c-$round" "$c"
    out=$(time_loop "$WORK/data" "$(pitr_for "wal-$c-$round" "$c") archive-push $WORK/segments/{}" "${names[@]}")
    read -r ns cpu <<<"$out"
    keep_best "push.$c" "$ns"
    keep_best "push_cpu.$c" "$cpu"
    [ "$round" -eq 1 ] || as_pg rm -rf "$WORK/wal-$c-$round"
  done
done
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    out=$(time_loop "$WORK/data" "$(pitr_for "wal-$c-1" "$c") archive-get {} pg_wal/RECOVERYXLOG" "${names[@]}")
    read -r ns cpu <<<"$out"
    keep_best "get.$c" "$ns"
    keep_best "get_cpu.$c" "$cpu"
    out=$(ALLOW_ONE=1 time_loop "$WORK/data" "$(pitr_for "wal-$c-1" "$c") archive-get 00000001000000FF000000{} pg_wal/RECOVERYXLOG" $(seq 10 49))
    read -r ns cpu <<<"$out"
    keep_best "unlock.$c" "$ns"
    keep_best "unlock_cpu.$c" "$cpu"
  done
done

# Look-ahead: a directory laid out as pg_wal, every segment marked ready; after each call
# PostgreSQL's own step (.ready -> .done) is done untimed, as between archiver calls.
lookahead() { # CASE ROUND; prints ns per segment
  local dir="$WORK/ahead-$1-$2"
  as_pg mkdir -p "$dir/pg_wal/archive_status"
  for n in "${names[@]}"; do
    as_pg ln "$WORK/segments/$n" "$dir/pg_wal/$n"
    as_pg touch "$dir/pg_wal/archive_status/$n.ready"
  done
  init_repo "ahead-repo-$1-$2" "$1"
  time_loop "$dir" "env PITR_ARCHIVE_PUSH_PARALLEL=4 $(pitr_for "ahead-repo-$1-$2" "$1") archive-push pg_wal/{} && mv pg_wal/archive_status/{}.ready pg_wal/archive_status/{}.done" "${names[@]}"
}
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    out=$(lookahead "$c" "$round")
    read -r ns cpu <<<"$out"
    keep_best "ahead.$c" "$ns"
    keep_best "ahead_cpu.$c" "$cpu"
    [ "$round" -eq 1 ] || as_pg rm -rf "$WORK/ahead-repo-$c-$round" "$WORK/ahead-$c-$round"
  done
done

# Untimed checks: every segment back from every repository, byte-identical; no key, no data.
for c in "${CASES[@]}"; do
  for repo in "wal-$c-1" "ahead-repo-$c-1"; do
    for n in "${names[@]}"; do
      as_pg $(pitr_for "$repo" "$c") archive-get "$n" "$WORK/got/$n"
      cmp -s "$WORK/segments/$n" "$WORK/got/$n" || { echo "$repo: $n restored wrong" >&2; exit 1; }
      rm -f "$WORK/got/$n"
    done
  done
  if [ "$c" != plain ]; then
    rc=0
    as_pg "$WORK/pitr" --repo "$WORK/wal-$c-1" archive-get "${names[0]}" "$WORK/got/x" 2>/dev/null || rc=$?
    # archive-get's code for "cannot decrypt" (12 for other commands).
    [ "$rc" -eq 140 ] || { echo "wal-$c-1 without its key: exit $rc, not 140" >&2; exit 1; }
  fi
done
stored() { du -sb "$WORK/$1" | cut -f1; }

ms() { awk -v ns="$1" 'BEGIN { printf "%.1f ms", ns / 1e6 }'; }
cpu_ms() { awk -v us="$1" 'BEGIN { printf "%.1f ms", us / 1e3 }'; }
sec() { printf '%.2f s' "$1"; }
ms_rate() { awk -v ns="$1" 'BEGIN { printf "%.1f ms %4.0f/s", ns / 1e6, 1e9 / ns }'; }
over() { # PLAIN ENCRYPTED: +N% (lower is better)
  awk -v p="$1" -v e="$2" 'BEGIN { printf "%+.0f%%", (e - p) * 100 / p }'
}
row() { # LABEL MEASURE FORMAT
  local p=${R[$2.plain]} s=${R[$2.pass]} k=${R[$2.key]}
  printf '%-30s %14s %16s %16s %16s\n' "$1" "$($3 "$p")" "$($3 "$s")" "$($3 "$k")" \
    "$(over "$p" "$s") / $(over "$p" "$k")"
}
printf '\n%s segments of 16 MB, pgbench scale %s (%s MiB); best of %s (backup, restore: %s)\n' \
  "$count" "$SCALE" "$((size / 1048576))" "$ROUNDS" "$BACKUP_ROUNDS"
printf '%-30s %14s %16s %16s %16s\n' "case" "plain" "passphrase" "key file" "overhead pp / kf"
row "archive-push per segment" push ms
row "  cpu per segment" push_cpu cpu_ms
row "push, look-ahead 4" ahead ms_rate
row "  cpu per segment" ahead_cpu cpu_ms
row "archive-get per segment" get ms
row "  cpu per segment" get_cpu cpu_ms
row "key unlock (get, not found)" unlock ms
row "  cpu per call" unlock_cpu cpu_ms
row "backup" backup sec
row "  cpu" backup_cpu sec
row "restore" restore sec
row "  cpu" restore_cpu sec
printf '%-30s %10s MiB %12s MiB %12s MiB\n' "stored, WAL" "$(($(stored wal-plain-1) / 1048576))" \
  "$(($(stored wal-pass-1) / 1048576))" "$(($(stored wal-key-1) / 1048576))"
printf '%-30s %10s MiB %12s MiB %12s MiB\n' "stored, backup repository" "$(($(stored backup-plain) / 1048576))" \
  "$(($(stored backup-pass) / 1048576))" "$(($(stored backup-key) / 1048576))"
awk -v pw="${R[unlock.pass]}" -v kw="${R[unlock.plain]}" -v pc="${R[unlock_cpu.pass]}" -v kc="${R[unlock_cpu.plain]}" \
  'BEGIN { printf "passphrase unlock (Argon2id, once per process): +%.1f ms wall, +%.1f ms cpu per process\n", (pw - kw) / 1e6, (pc - kc) / 1e3 }'
echo "(target: overhead at most +15%; all $count segments verified byte-identical from every repository)"
