#!/usr/bin/env bash
# Benchmark: recovery speed. A restored backup replays WAL_MB of pgbench WAL (16 MB segments)
# to the end of the archive, timed from server start until recovery has finished
# (pg_is_in_recovery() false), in five ways in the same run:
#   limit           the same WAL already in the restored pg_wal, no restore_command
#   pitr file       pitr restore from a file repository (restore_command = pitr archive-get)
#   pitr S3         the same repository served by s3s-fs behind examples/latency_proxy.rs,
#                   LATENCY_MS (20) each way
#   pgBackRest sync    pgbackrest restore, archive-get one segment per call
#   pgBackRest async   archive-async=y, process-max=2, a spool path
# Prints seconds, MB/s, the ratio to the limit and pitr / pgBackRest async, checks the targets
# and (RSS=1, the default) the peak RSS of the restore_command calls, measured by running each
# under GNU time (about 1 ms per call, paid by every restore_command case alike).
#
#   bash bench/replay.sh                 (needs root or the postgres user)
#   WAL_MB=100 bash bench/replay.sh      a quick check of the script
#   PG_MAJOR=18 bash bench/replay.sh     on another major (13-18, scripts/pg_versions.sh);
#                                        pgBackRest's rows are n/a where it lacks support
#
# WAL_MB (default 1100): WAL to replay, from the pitr backup's start. SCALE (20): pgbench scale.
# LATENCY_MS (20). PROFILE=debug uses debug builds instead of release ones. KEEP=1 keeps the
# work directory. Needs PostgreSQL 15, pgBackRest, GNU time and s3s-fs
# (apt-get install postgresql-15 pgbackrest time;
#  cargo install s3s-fs --version 0.14.1 --features binary --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

WAL_MB=${WAL_MB:-1100}
SCALE=${SCALE:-20}
LATENCY_MS=${LATENCY_MS:-20}
PROFILE=${PROFILE:-release}
RSS=${RSS:-1}
source bench/lib.sh
pick_pg
export PATH="$HOME/.cargo/bin:$PATH"
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed: apt-get install pgbackrest" >&2; exit 1; }
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 is not installed: apt-get install postgresql-15" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is not installed: apt-get install time" >&2; exit 1; }
PGBR_ON=1
pgbr_supports || PGBR_ON=0
command -v s3s-fs >/dev/null || cargo install s3s-fs --version 0.14.1 --features binary --locked

if [ "$PROFILE" = debug ]; then
  cargo build --quiet --bin pitr --example latency_proxy
  BUILD=target/debug
else
  cargo build --release --quiet --bin pitr --example latency_proxy
  BUILD=target/release
fi
WORK=$(mktemp -d /tmp/pitr-bench-replay-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
S3_PID="" PROXY_PID=""
cleanup() {
  for d in "$WORK/data" "$WORK/restore"; do
    as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cp "$BUILD/pitr" "$WORK/pitr"
# s3s-fs serves $WORK/s3root: the file repository $REPO is also s3://bench/repo.
REPO=$WORK/s3root/bench/repo
mkdir -p "$WORK/s3root/bench" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/lock" "$WORK/wal"
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

pgbr_conf() { # FILE [extra lines]: pgBackRest's configuration, optionally async archive-get
  cat > "$1" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=lz4
lock-path=$WORK/lock
log-path=$WORK
log-level-console=error
log-level-file=off
spool-path=$WORK/pgbr-spool
start-fast=y
repo1-retention-full=2
${2:-}

[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=5432
pg1-user=postgres
EOF
  [ "$(id -u)" -eq 0 ] && chown postgres: "$1"
  return 0
}
pgbr_conf "$WORK/pgbackrest.conf"
pgbr_conf "$WORK/pgbackrest-async.conf" "archive-async=y
process-max=2"
PITR="$WORK/pitr --repo $REPO"
PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"
sql() { as_pg "$PG_CLIENT_BIN/psql" -X -h "$WORK" -U postgres -Atqc "$1" postgres; }
lsn_bytes() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) + 16#$lo )); }
segment_end() { echo $(( ((16#${1:8:8} << 8) + 16#${1:16:8} + 1) << 24 )); }

echo "== PostgreSQL $PG_MAJOR ($PG_BIN)$([ "$PGBR_ON" = 1 ] || echo "; pgBackRest $(pgbackrest version | awk '{ print $2 }') does not support it: its rows are n/a")"
echo "== setup: pgbench scale $SCALE, archiving to pitr and pgBackRest, two backups"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = 5432
max_wal_size = '2GB'
wal_keep_size = '$(( WAL_MB * 2 + 1024 ))MB'
synchronous_commit = off
archive_mode = on
archive_command = '$PITR archive-push %p$([ "$PGBR_ON" = 1 ] && echo " && $PGBR archive-push %p")'
EOF
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
[ "$PGBR_ON" = 1 ] && as_pg $PGBR stanza-create >/dev/null
as_pg "$PG_CLIENT_BIN/pgbench" -h "$WORK" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
sql checkpoint
start_lsn=$(sql "select pg_current_wal_lsn()")
# (Progress lines go to stderr whatever -q says: kept in a file.)
as_pg $PITR -q backup --pgdata "$WORK/data" --dbname "host=$WORK port=5432 user=postgres" >/dev/null 2>"$WORK/backup.err" ||
  { cat "$WORK/backup.err" >&2; exit 1; }
[ "$PGBR_ON" = 1 ] && as_pg $PGBR --type=full backup >/dev/null
while :; do
  written=$(sql "select pg_current_wal_lsn() - '$start_lsn'::pg_lsn")
  [ "$written" -ge $(( WAL_MB << 20 )) ] && break
  as_pg "$PG_CLIENT_BIN/pgbench" -h "$WORK" -U postgres -c 4 -j 2 -T 3 postgres >/dev/null 2>&1
done
last=$(sql "select pg_walfile_name(pg_current_wal_lsn())")
sql "select pg_switch_wal()" >/dev/null
echo "== waiting for $last to be archived"
while :; do
  row=$(sql "select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver")
  [ "${row#*|}" = 0 ] || { echo "archiving failed: see $WORK/pg.log" >&2; exit 1; }
  [[ "${row%|*}" < "$last" ]] || break
  sleep 1
done
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
# The limit replays the same segments, copied from the primary's pg_wal (wal_keep_size).
for f in "$WORK/data/pg_wal"/0*; do
  n=${f##*/}
  [[ "$n" =~ ^[0-9A-F]{24}$ && ! "$n" > "$last" ]] && cp "$f" "$WORK/wal/"
done
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK/wal"
end_bytes=$(segment_end "$last")

# s3s-fs over the same files, behind the latency proxy.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port)
PROXY_PORT=$(free_port)
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$WORK/s3root" >/dev/null 2>&1 &
S3_PID=$!
"$BUILD/examples/latency_proxy" "$PROXY_PORT" "$S3_PORT" "$LATENCY_MS" 2>/dev/null &
PROXY_PID=$!
S3_ENV=(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
  AWS_EC2_METADATA_DISABLED=true PITR_S3_ENDPOINT="http://127.0.0.1:$PROXY_PORT" PITR_S3_PATH_STYLE=true)
for port in "$S3_PORT" "$PROXY_PORT"; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
done

# Restores into $WORK/restore (untimed), then times its replay. Prints "seconds wal_bytes".
replay() { # CASE RESTORE-COMMAND...
  local case=$1; shift
  as_pg rm -rf "$WORK/restore"
  as_pg mkdir -m 700 "$WORK/restore"
  as_pg "$@" >"$WORK/restore.out" 2>&1 || { cat "$WORK/restore.out" >&2; exit 1; }
  local conf=$WORK/restore/postgresql.conf auto=$WORK/restore/postgresql.auto.conf
  # No archiving from the restored cluster: its new timeline must not reach the repositories.
  echo "archive_mode = off" >> "$conf"
  if [ "$case" = limit ]; then
    # Crash recovery from backup_label over the copied WAL.
    as_pg rm -f "$WORK/restore/recovery.signal"
    as_pg sed -i 's/^restore_command/# &/' "$auto"
    as_pg cp "$WORK"/wal/* "$WORK/restore/pg_wal/"
  elif [ "$RSS" = 1 ]; then
    # PostgreSQL turns %% into %.
    as_pg sed -i "s|^restore_command = '|&/usr/bin/time -f %%M -a -o $WORK/rss-$case |" "$auto"
  fi
  local start_lsn
  start_lsn=$(sed -n 's/^START WAL LOCATION: \([0-9A-F]*\/[0-9A-F]*\).*/\1/p' "$WORK/restore/backup_label")
  as_pg rm -f "$WORK/rss-$case"
  sync
  local t0=$EPOCHREALTIME
  as_pg env "${S3_ENV[@]}" "$PG_BIN/pg_ctl" -D "$WORK/restore" -l "$WORK/replay-$case.log" -W start >/dev/null
  while [ "$(sql "select pg_is_in_recovery()" 2>/dev/null)" != f ]; do
    # (The pid file may take a moment to appear after pg_ctl returns.)
    if [ ! -f "$WORK/restore/postmaster.pid" ] && awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 5) }'; then
      echo "$case: the server stopped; its log:" >&2; tail -20 "$WORK/replay-$case.log" >&2; exit 1
    fi
    sleep 0.1
  done
  local t1=$EPOCHREALTIME
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/restore" -m fast -w stop >/dev/null
  grep -q "redo done" "$WORK/replay-$case.log" || { echo "$case: no 'redo done' in the log" >&2; exit 1; }
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') $(( end_bytes - $(lsn_bytes "$start_lsn") ))"
}

PITR_RESTORE=(restore --pgdata "$WORK/restore" --no-sync)
declare -A secs bytes
run() { # CASE RESTORE-COMMAND...
  local case=$1
  echo "== $case"
  local out
  out=$(replay "$@")
  read -r "secs[$case]" "bytes[$case]" <<<"$out"
}
run limit "$WORK/pitr" --repo "$REPO" "${PITR_RESTORE[@]}"
run pitr-file "$WORK/pitr" --repo "$REPO" "${PITR_RESTORE[@]}"
run pitr-s3 env "${S3_ENV[@]}" "$WORK/pitr" --repo s3://bench/repo "${PITR_RESTORE[@]}"
if [ "$PGBR_ON" = 1 ]; then
run pgbr-sync $PGBR --pg1-path="$WORK/restore" restore
run pgbr-async pgbackrest --config="$WORK/pgbackrest-async.conf" --stanza=bench --pg1-path="$WORK/restore" restore
else
  secs[pgbr-sync]=n/a secs[pgbr-async]=n/a bytes[pgbr-sync]=0 bytes[pgbr-async]=0
fi

label() { case $1 in
  limit) echo "limit (WAL in pg_wal)" ;; pitr-file) echo "pitr, file repository" ;;
  pitr-s3) echo "pitr, S3 ${LATENCY_MS} ms each way" ;; pgbr-sync) echo "pgBackRest sync" ;;
  pgbr-async) echo "pgBackRest async (2 procs)" ;; esac; }
x() { [ "$1" = n/a ] || [ "$2" = n/a ] && { echo n/a; return; }; awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n%-28s %8s %8s %9s %8s %12s %10s\n' "replay" "WAL MB" "seconds" "MB/s" "x limit" "x pgBR async" "peak RSS"
for c in limit pitr-file pitr-s3 pgbr-sync pgbr-async; do
  rss=""
  if [ -s "$WORK/rss-$c" ]; then rss="$(( $(grep -E '^[0-9]+$' "$WORK/rss-$c" | sort -n | tail -1) / 1024 )) MiB"; fi
  vs_async=""
  [[ $c == pitr-* ]] && vs_async=$(x "${secs[$c]}" "${secs[pgbr-async]}")
  if [ "${secs[$c]}" = n/a ]; then
    printf '%-28s %8s %8s %9s %8s %12s %10s\n' "$(label $c)" n/a n/a n/a n/a "" ""
    continue
  fi
  printf '%-28s %8d %8s %9.0f %8s %12s %10s\n' "$(label $c)" $(( ${bytes[$c]} >> 20 )) "${secs[$c]}" \
    "$(awk -v b="${bytes[$c]}" -v s="${secs[$c]}" 'BEGIN { print b / 1048576 / s }')" \
    "$(x "${secs[$c]}" "${secs[limit]}")" "$vs_async" "$rss"
done
verdict() { [ "$1" = n/a ] && { echo "n/a"; return; }; awk -v a="$1" -v m="$2" 'BEGIN { print (a <= m ? "met" : "NOT met") }'; }
r1=$(x "${secs[pitr-file]}" "${secs[limit]}")
r2=$(x "${secs[pitr-file]}" "${secs[pgbr-async]}")
r3=$(x "${secs[pitr-s3]}" "${secs[pitr-file]}")
echo
echo "target: pitr file <= 1.1x the limit:              ${r1}x, $(verdict "$r1" 1.1)"
echo "target: pitr file <= 0.7x pgBackRest async:       ${r2/%[0-9]/&x}, $(verdict "$r2" 0.7)"
echo "target: pitr S3 (${LATENCY_MS} ms) <= 1.3x pitr file:        ${r3}x, $(verdict "$r3" 1.3)"
echo "(peak RSS: the largest restore_command process, under GNU time; pitr from $BUILD)"
