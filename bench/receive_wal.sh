#!/usr/bin/env bash
# Benchmark: `pitr receive-wal` under pgbench at full speed (PostgreSQL 15, archive_mode off,
# the receiver on a Unix socket into a local repository). Three runs of pgbench (-c 4 -j 2,
# DURATION seconds each, scale SCALE):
#   1. no receiver: the tps baseline;
#   2. an asynchronous receiver (--partial-interval 10): tps, the WAL rate, how far the
#      receiver's flush position and the repository (archived segments + the newest tail)
#      trail the server, sampled every half second; then, at the primary's kill -9, what the
#      repository lacks (the asynchronous RPO without the final upload) and with it;
#   3. a synchronous receiver (--synchronous, in synchronous_standby_names): tps, against 1;
#   4. the same with --synchronous=repository (each report waits for the tail's upload);
#   5. a bulk load (no pgbench): the WAL rate the server writes and the rate the receiver
#      takes it at (its raw receive throughput).
# Receive throughput: the WAL the receiver took over the run's time (it must keep up with
# the WAL rate: its lag at the end of the run stays bounded).
#
#   bash bench/receive_wal.sh [SCALE] [DURATION]    (defaults 10 and 20; root or postgres)
#
# Needs PostgreSQL 15 (server and client binaries) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-10}
DURATION=${2:-20}
source bench/lib.sh
require_pg
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pitr-bench-receive-XXXXXX)
chmod 755 "$WORK"
RECEIVER=
# The receiver runs under runuser when root: its child is pitr, which the signal must reach.
signal_receiver() { pkill -TERM -P "$RECEIVER" 2>/dev/null || true; kill -TERM "$RECEIVER" 2>/dev/null || true; }
cleanup() {
  [ -n "$RECEIVER" ] && signal_receiver
  kill_cluster "$WORK/data"
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
release_pitr "$WORK"
give_pg "$WORK"
PITR="$WORK/pitr --repo $WORK/repo"
SEGMENT=$((16 * 1024 * 1024))

new_cluster "$WORK/data" "$WORK" <<EOF
max_wal_size = '2GB'
max_wal_senders = 4
synchronous_commit = on
EOF
start_cluster "$WORK/data"
psql_() { as_pg "$PG_BIN/psql" -h "$WORK" -U postgres -Atqc "$1" postgres; }
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null

# The repository's end as an LSN (bytes): the newest archived segment's end, or the newest
# tail's, whichever is further.
repo_end() {
  python3 - "$WORK/repo" "$SEGMENT" <<'PY'
import os, sys
root, size = sys.argv[1], int(sys.argv[2])
end = 0
for dirpath, _, files in os.walk(os.path.join(root, "wal")):
    for f in files:
        name = f.split(".")[0]
        if len(name) == 24 and f.count(".") == 1:
            seg = int(name[8:16], 16) * (0x100000000 // size) + int(name[16:24], 16)
            end = max(end, (seg + 1) * size)
for f in os.listdir(os.path.join(root, "tail")) if os.path.isdir(os.path.join(root, "tail")) else []:
    parts = f.split(".")
    if len(parts) == 3:
        name = parts[0]
        seg = int(name[8:16], 16) * (0x100000000 // size) + int(name[16:24], 16)
        end = max(end, seg * size + int(parts[1], 16))
print(end)
PY
}
lsn_bytes() { python3 -c "import sys; h, l = sys.argv[1].split('/'); print(int(h, 16) << 32 | int(l, 16))" "$1"; }
tps_of() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$1" | head -1; }

start_receiver() { # extra args
  as_pg $PITR receive-wal --create-slot --spool "$WORK/spool" --dbname "host=$WORK user=postgres" \
    "$@" 2>"$WORK/receiver.log" >/dev/null &
  RECEIVER=$!
  for _ in $(seq 100); do
    [ "$(psql_ "select count(*) from pg_stat_replication where state = 'streaming'")" = 1 ] && return
    sleep 0.1
  done
  echo "the receiver did not start:" >&2; cat "$WORK/receiver.log" >&2; exit 1
}
# Until the receiver's flush reaches LSN (bytes), at most a minute.
wait_flushed() {
  for _ in $(seq 1200); do
    flushed=$(lsn_bytes "$(psql_ "select coalesce(flush_lsn, '0/0') from pg_stat_replication")")
    [ "$flushed" -ge "$1" ] && return
    sleep 0.05
  done
}
stop_receiver() { signal_receiver; wait "$RECEIVER" || true; RECEIVER=; }
pgbench_run() { # OUT
  as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 4 -j 2 -T "$DURATION" -n postgres >"$1" 2>&1
}

echo "== pgbench scale $SCALE, ${DURATION}s per run, -c 4 -j 2"
pgbench_run "$WORK/base.out"
base=$(tps_of "$WORK/base.out")
echo "   no receiver:             $base tps"

# Status every second: the server's view of the receiver (flush_lsn) as fresh as the samples.
start_receiver --partial-interval 10 --status-interval 1
lsn0=$(lsn_bytes "$(psql_ "select pg_current_wal_lsn()")")
t0=$(date +%s.%N)
pgbench_run "$WORK/async.out" &
BENCH=$!
: >"$WORK/samples"
while kill -0 "$BENCH" 2>/dev/null; do
  row=$(psql_ "select pg_current_wal_lsn(), coalesce(flush_lsn, '0/0') from pg_stat_replication")
  now=$(lsn_bytes "${row%%|*}") flushed=$(lsn_bytes "${row##*|}")
  echo "$now $flushed $(repo_end)" >>"$WORK/samples"
  sleep 0.5
done
wait "$BENCH"
t1=$(date +%s.%N)
lsn1=$(lsn_bytes "$(psql_ "select pg_current_wal_lsn()")")
async=$(tps_of "$WORK/async.out")
rate=$(python3 -c "print(($lsn1 - $lsn0) / ($t1 - $t0) / 1048576)")
wait_flushed "$lsn1"
t2=$(date +%s.%N)
received=$(python3 -c "print(($lsn1 - $lsn0) / ($t2 - $t0) / 1048576)")
read -r flush_max flush_mean repo_max repo_mean < <(python3 - "$WORK/samples" <<'PY'
import sys
# Before the first report and the first tail there is nothing to compare.
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
fl = [max(0, n - f) for n, f, r in rows if f > 0] or [0]
rp = [max(0, n - r) for n, f, r in rows if r > 0] or [0]
m = 1048576
print(f"{max(fl)/m:.2f} {sum(fl)/len(fl)/m:.2f} {max(rp)/m:.2f} {sum(rp)/len(rp)/m:.2f}")
PY
)
echo "   asynchronous receiver:   $async tps; WAL $(printf '%.1f' "$rate") MiB/s, received at $(printf '%.1f' "$received") MiB/s over the run"
echo "     behind the server (MiB, max / mean of $(wc -l <"$WORK/samples") samples): flush $flush_max / $flush_mean, repository $repo_max / $repo_mean"

# The asynchronous RPO at a kill: the primary killed during writes, before and after the
# receiver's final upload.
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 4 -j 2 -T 30 -n postgres >/dev/null 2>&1 &
BENCH=$!
sleep 5
before=$(repo_end)
at_kill=$(lsn_bytes "$(psql_ "select pg_current_wal_lsn()")")
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null
wait "$BENCH" || true
sleep 3
after=$(repo_end)
echo "   kill of the primary: the repository lacked $(python3 -c "print(f'{($at_kill - $before) / 1048576:.2f}')") MiB at the kill (RPO without the final upload, about $(python3 -c "print(f'{($at_kill - $before) / 1048576 / $rate:.1f}')") s of WAL), $(python3 -c "print(f'{max(0, $at_kill - $after) / 1048576:.2f}')") MiB after it"
stop_receiver
start_cluster "$WORK/data"

synchronous_run() { # NAME, receiver args
  local name=$1
  shift
  start_receiver "$@" --partial-interval 10 --status-interval 1
  psql_ "alter system set synchronous_standby_names = 'pitr_receive_wal'" >/dev/null
  psql_ "select pg_reload_conf()" >/dev/null
  sleep 1
  [ "$(psql_ "select sync_state from pg_stat_replication")" = sync ] || { echo "not synchronous" >&2; exit 1; }
  pgbench_run "$WORK/$name.out"
  stop_receiver
  psql_ "alter system reset synchronous_standby_names" >/dev/null
  psql_ "select pg_reload_conf()" >/dev/null
  tps_of "$WORK/$name.out"
}
sync=$(synchronous_run sync --synchronous)
echo "   synchronous receiver:    $sync tps ($(python3 -c "print(f'{$sync / $base:.2f}')")x the baseline; durable in the spool)"
sync_repo=$(synchronous_run sync-repo --synchronous=repository)
echo "   synchronous, repository: $sync_repo tps ($(python3 -c "print(f'{$sync_repo / $base:.2f}')")x the baseline; durable in the repository)"

# Raw receive throughput: a bulk load writes WAL as fast as the server can; how fast the
# receiver takes it (until its flush reaches the load's end) against how fast it was written.
start_receiver --partial-interval 10 --status-interval 1
psql_ "create table bulk (id int, v text)" >/dev/null
lsn0=$(lsn_bytes "$(psql_ "select pg_current_wal_lsn()")")
t0=$(date +%s.%N)
psql_ "insert into bulk select g, repeat(md5(g::text), 8) from generate_series(1, $((SCALE * 200000))) g" >/dev/null
t1=$(date +%s.%N)
lsn1=$(lsn_bytes "$(psql_ "select pg_current_wal_lsn()")")
wait_flushed "$lsn1"
t2=$(date +%s.%N)
stop_receiver
echo "   bulk load: $(python3 -c "print(f'{($lsn1 - $lsn0) / 1048576:.0f}')") MiB of WAL written at $(python3 -c "print(f'{($lsn1 - $lsn0) / ($t1 - $t0) / 1048576:.1f}')") MiB/s, received (flushed, segments stored) at $(python3 -c "print(f'{($lsn1 - $lsn0) / ($t2 - $t0) / 1048576:.1f}')") MiB/s, $(python3 -c "print(f'{$t2 - $t1:.2f}')") s behind at the end"
