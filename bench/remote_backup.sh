#!/usr/bin/env bash
# Benchmark: a full backup of a pgbench database (default scale 50, ~780 MB) taken four ways
# from the same cluster in one run: pitr reading the data directory (--method local), pitr
# over the replication protocol (--method replication, BASE_BACKUP over TCP to 127.0.0.1),
# pg_basebackup -Ft (uncompressed tar) and pg_basebackup -Ft --compress=client-lz4, both over
# TCP to 127.0.0.1 too. Prints each one's time, throughput and peak RSS, and checks the remote
# backup's targets: at least 0.9x the local backup's throughput, faster than
# pg_basebackup -Ft, peak RSS under 64 MiB.
#
#   bash bench/remote_backup.sh [SCALE]      (needs root or the postgres user)
#   PG_MAJOR=18 bash bench/remote_backup.sh  the same on another major (13-18, scripts/pg_versions.sh)
#   ROUNDS=1 bash bench/remote_backup.sh     one round only (default 2, best of them shown)
#   KEEP=1 bash bench/remote_backup.sh       leave the work directory in /tmp (the server stops)
#   PIN=0 bash bench/remote_backup.sh        the server and the backups share every core
#                                            (by default, with 2 cores or more, the server
#                                            runs on CPU 1 and the backups on CPU 0)
#
# Needs PostgreSQL 15 (server and client binaries), GNU time and python3 (for a free port)
# (apt-get install postgresql-15 time).
#
# Choices:
# - Each side on a core of its own by default: a backup over the replication protocol is
#   taken from another host, whose CPU the server's walsender (reading the files, sending
#   them over TCP) does not share; the local backup gets the same one core. With PIN=0 the
#   walsender's CPU competes with the backup's on the same cores, which a backup host never
#   sees: the remote backup then runs at about 0.8x the local one on 2 cores.
# - Both pitr backups go into the one repository (initialised with `init --pgdata`): a second
#   backup in a repository is an ordinary full backup (its objects are its own, nothing is
#   shared with the first), and one repository needs one archive_command. A second
#   repository made with the remote `init --dbname` would need archive_command to push every
#   segment into both, which would slow down the archiving every backup waits for.
# - pg_basebackup runs with -X none: pitr takes the backup's WAL from the archive rather than
#   from the backup stream, and with -X none the server, as for pitr, waits until the stop
#   segment is archived (by the same archive_command) before the backup ends. Its output is
#   fsynced (no -N), as pitr's repository is.
# - pg_basebackup is 15's (the other majors come without client tools): its columns are n/a
#   on 16 and later, which it refuses, and the lz4 one on 13 and 14, whose servers know
#   nothing of the new compression options.
# - "--method replication" is pitr's default for a server on this host: the archives cross
#   no network, so the server does not compress them. The lz4 row is the default for a
#   server on another host (15+ built with lz4, as Debian's): the server compresses each
#   archive, pitr inflates it, several times fewer bytes on the wire for more CPU on both
#   sides; n/a but on 15 (the other majors' servers here are built without lz4).
# - Rounds alternate the tools (local, remote, -Ft, -Ft lz4, then again); each round starts
#   from a synced page cache in which the whole database fits. The second round is skipped
#   when the first would take the run past ~10 minutes. Seconds are the best round's, peak
#   RSS the highest of the rounds'. "server CPU" is what the backends that ended during the
#   backup used (the walsender that sent BASE_BACKUP, pitr's SQL session): the postmaster's
#   reaped children's CPU time before and after; the checkpoint and the archiver are not in it.
# - Throughput is base/'s size (as bench/backup.sh counts it) over the wall time, in MiB/s.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-50}
ROUNDS=${ROUNDS:-2}
SERVER_PIN=() CLIENT_PIN=()
if [ "${PIN:-1}" != 0 ] && [ "$(nproc)" -ge 2 ]; then
  SERVER_PIN=(taskset -c 1) CLIENT_PIN=(taskset -c 0)
fi
source bench/lib.sh
pick_pg
[ -x /usr/bin/time ] || { echo "GNU time is not installed: apt-get install time" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed to find a free port" >&2; exit 1; }
[ -x "$PG_CLIENT_BIN/pg_basebackup" ] || { echo "pg_basebackup is not installed: apt-get install postgresql-15" >&2; exit 1; }
# pg_basebackup 15 refuses newer servers; client-lz4 is asked for only of 15's.
PGBB_ON=1 LZ4_ON=1
[ "$PG_MAJOR" -le 15 ] || PGBB_ON=0
[ "$PG_MAJOR" -eq 15 ] || LZ4_ON=0

cargo build --release --quiet
T0=$SECONDS
WORK=$(mktemp -d /tmp/pitr-bench-remote-XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cp target/release/pitr "$WORK/pitr"
chmod 755 "$WORK" "$WORK/pitr"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"
PITR="$WORK/pitr --repo $WORK/pitr-repo"

echo "== pgbench scale $SCALE"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_wal_size = '4GB'
archive_mode = on
archive_command = '$PITR archive-push %p'
EOF
cat >> "$WORK/data/pg_hba.conf" <<EOF
host replication all 127.0.0.1/32 trust
host all all 127.0.0.1/32 trust
EOF
as_pg $PITR init --pgdata "$WORK/data" >/dev/null
# A free port, given on the command line; another one if it was taken meanwhile.
for try in 1 2 3 4 5; do
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "${SERVER_PIN[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -o "-p $PORT" -w start >/dev/null && break
  [ "$try" -lt 5 ] || { cat "$WORK/pg.log" >&2; exit 1; }
done
SOCKET_CONN="host=$WORK port=$PORT user=postgres"
TCP_CONN="host=127.0.0.1 port=$PORT user=postgres"
as_pg "$PG_CLIENT_BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
as_pg "$PG_CLIENT_BIN/psql" -h "$WORK" -p "$PORT" -U postgres -Atqc "checkpoint" postgres
size=$(du -sb "$WORK/data/base" | cut -f1)
echo "== database: $((size / 1048576)) MiB in base/, $(( $(du -sb "$WORK/data" | cut -f1) / 1048576 )) MiB in the data directory; port $PORT"

# CPU seconds of the postmaster's reaped children (backends, walsenders).
PM_PID=$(head -1 "$WORK/data/postmaster.pid")
TICKS=$(getconf CLK_TCK)
server_cpu() { awk -v t="$TICKS" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($14 + $15) / t }' "/proc/$PM_PID/stat"; }

# One backup by TOOL, timed; sets R to "seconds peak_rss_kb cpu_seconds server_cpu_seconds".
# (Not run in $(...), where set -e would not stop the script when measure fails.)
backup_once() { # TOOL
  local out before after
  as_pg rm -rf "$WORK/pgbb"
  sync
  before=$(server_cpu)
  case $1 in
    local) out=$(measure "${CLIENT_PIN[@]}" $PITR backup --method local --pgdata "$WORK/data" --dbname "$SOCKET_CONN") ;;
    remote) out=$(measure "${CLIENT_PIN[@]}" $PITR backup --method replication --dbname "$TCP_CONN") ;;
    remote-lz4) out=$(measure "${CLIENT_PIN[@]}" $PITR backup --method replication --network-compression lz4 \
      --dbname "$TCP_CONN") ;;
    pgbb) out=$(measure "${CLIENT_PIN[@]}" "$PG_CLIENT_BIN/pg_basebackup" -d "$TCP_CONN" -Ft -X none -c fast -D "$WORK/pgbb") ;;
    pgbb-lz4) out=$(measure "${CLIENT_PIN[@]}" "$PG_CLIENT_BIN/pg_basebackup" -d "$TCP_CONN" -Ft -X none -c fast \
      --compress=client-lz4 -D "$WORK/pgbb") ;;
  esac
  after=$(server_cpu)
  case $1 in pgbb*) echo "$(du -sb "$WORK/pgbb" | cut -f1)" >"$WORK/stored.$1" ;; esac
  R="$out $(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')"
}

TOOLS=(local remote)
[ "$LZ4_ON" = 1 ] && TOOLS+=(remote-lz4)
[ "$PGBB_ON" = 1 ] && TOOLS+=(pgbb)
[ "$LZ4_ON" = 1 ] && TOOLS+=(pgbb-lz4)
PITR_TOOLS=(local remote)
[ "$LZ4_ON" = 1 ] && PITR_TOOLS+=(remote-lz4)
declare -A secs rss cpu scpu rounds
echo "== load average before the rounds: $(cut -d' ' -f1-3 /proc/loadavg) (the timings assume an idle machine)"
started=$SECONDS
done_rounds=0
for round in $(seq "$ROUNDS"); do
  if [ "$round" -gt 1 ]; then
    per_round=$(( (SECONDS - started) / (round - 1) ))
    [ $(( SECONDS - T0 + per_round )) -le 600 ] || {
      echo "== round $round skipped: one round takes ${per_round}s"; break; }
  fi
  for tool in "${TOOLS[@]}"; do
    backup_once "$tool"
    read -r t m c s <<<"$R"
    echo "   round $round: $tool ${t}s, peak RSS $((m / 1024)) MiB"
    rounds[$tool]="${rounds[$tool]:-}${rounds[$tool]:+ }$t"
    if [ -z "${secs[$tool]:-}" ] || awk -v a="$t" -v b="${secs[$tool]}" 'BEGIN { exit !(a < b) }'; then
      secs[$tool]=$t cpu[$tool]=$c scpu[$tool]=$s
    fi
    [ "${rss[$tool]:-0}" -ge "$m" ] || rss[$tool]=$m
  done
  done_rounds=$round
done
as_pg rm -rf "$WORK/pgbb"
echo "== load average after the rounds: $(cut -d' ' -f1-3 /proc/loadavg)"

mibs() { awk -v b="$size" -v s="$1" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
row() { # LABEL TOOL
  local tool=$2
  if [ -z "${secs[$tool]:-}" ]; then
    printf '%-34s %8s %8s %13s %7s %11s  %s\n' "$1" n/a n/a n/a n/a n/a ""
  else
    printf '%-34s %8s %8s %13s %7s %11s  %s\n' "$1" "${secs[$tool]}" "$(mibs "${secs[$tool]}")" \
      "$((rss[$tool] / 1024))" "${cpu[$tool]}" "${scpu[$tool]}" "${rounds[$tool]}"
  fi
}
echo
echo "== PostgreSQL $PG_MAJOR ($PG_BIN), pgbench scale $SCALE, base/ $((size / 1048576)) MiB; best of $done_rounds round(s)"
if [ ${#SERVER_PIN[@]} -gt 0 ]; then
  echo "== the server on CPU 1, every backup on CPU 0 (as on two hosts; PIN=0 to share the cores)"
else
  echo "== the server and the backups share the cores"
fi
printf '%-34s %8s %8s %13s %7s %11s  %s\n' tool seconds MiB/s "peak RSS MiB" "CPU s" "server CPU" "rounds (s)"
row "pitr backup --method local" local
row "pitr backup --method replication" remote
row "pitr ... --network-compression lz4" remote-lz4
row "pg_basebackup -Ft -X none" pgbb
row "pg_basebackup -Ft client-lz4" pgbb-lz4
stored() { [ -f "$WORK/stored.$1" ] && echo "$(( $(cat "$WORK/stored.$1") / 1048576 )) MiB" || echo n/a; }
echo "stored: pitr repository $(( $(du -sb "$WORK/pitr-repo/backup" | cut -f1) / 1048576 )) MiB for $(( ${#PITR_TOOLS[@]} * done_rounds )) backups; pg_basebackup -Ft $(stored pgbb), client-lz4 $(stored pgbb-lz4)"

verdict() { [ "$1" = 1 ] && echo PASS || echo FAIL; }
echo
awk -v r="${secs[remote]}" -v l="${secs[local]}" 'BEGIN { printf "remote throughput %.2fx local (target >= 0.9x): ", l / r }'
verdict "$(awk -v r="${secs[remote]}" -v l="${secs[local]}" 'BEGIN { print (l / r >= 0.9) }')"
if [ -n "${secs[remote-lz4]:-}" ]; then
  awk -v r="${secs[remote-lz4]}" -v l="${secs[local]}" \
    'BEGIN { printf "remote with --network-compression lz4: %.2fx local\n", l / r }'
fi
if [ "$PGBB_ON" = 1 ]; then
  printf 'remote %ss vs pg_basebackup -Ft %ss (target: faster): ' "${secs[remote]}" "${secs[pgbb]}"
  verdict "$(awk -v r="${secs[remote]}" -v p="${secs[pgbb]}" 'BEGIN { print (r < p) }')"
else
  echo "remote vs pg_basebackup -Ft (target: faster): n/a (pg_basebackup 15 does not take PostgreSQL $PG_MAJOR)"
fi
printf 'remote peak RSS %s MiB (target < 64 MiB): ' "$((rss[remote] / 1024))"
verdict "$([ "${rss[remote]}" -lt $((64 * 1024)) ] && echo 1 || echo 0)"
