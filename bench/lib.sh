# Helpers shared by the bench scripts: `source bench/lib.sh` from the checkout's root, after
# `set -euo pipefail`. (bench/encryption.sh uses it; the older scripts still carry their own
# copies of these lines.)

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# Runs a command as the postgres user when root (PostgreSQL refuses to run as root).
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Gives the postgres user what the bench made as root.
give_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$@"; fi; }

require_pg() {
  [ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL 15 is not installed: apt-get install postgresql-15" >&2; exit 1; }
}

require_gnu_time() {
  [ -x /usr/bin/time ] || { echo "GNU time is not installed: apt-get install time" >&2; exit 1; }
}

# A release pitr copied into DIR (readable by postgres): PITR_BIN, or a fresh release build.
release_pitr() { # DIR
  if [ -z "${PITR_BIN:-}" ]; then
    cargo build --release --quiet
    PITR_BIN=target/release/pitr
  fi
  cp "$PITR_BIN" "$1/pitr"
  chmod 755 "$1/pitr"
}

# A new cluster in DATA listening only on a Unix socket in SOCKET_DIR (no TCP port to
# collide with), with the extra postgresql.conf lines read from stdin.
new_cluster() { # DATA SOCKET_DIR
  as_pg "$PG_BIN/initdb" -D "$1" -A trust -U postgres -N >/dev/null
  { printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = 5432\n" "$2"; cat; } \
    >> "$1/postgresql.conf"
}
start_cluster() { as_pg "$PG_BIN/pg_ctl" -D "$1" -l "$1.log" -w start >/dev/null; } # DATA
stop_cluster() { as_pg "$PG_BIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null; }       # DATA
# For cleanup traps: stops DATA's server if it runs, quietly.
kill_cluster() { [ -d "$1" ] && as_pg "$PG_BIN/pg_ctl" -D "$1" -m immediate stop >/dev/null 2>&1 || true; }

# A new empty file in $WORK that postgres may write (not in /tmp: fs.protected_regular
# keeps another user from opening a file there).
scratch_file() {
  local file
  file=$(mktemp -p "$WORK" .scratch-XXXXXX)
  give_pg "$file"
  echo "$file"
}

# Runs a command as postgres under GNU time; prints "seconds peak_rss_kb cpu_seconds"
# (cpu: user + system). Stops the script with the command's stderr if it fails.
measure() {
  local out
  out=$(scratch_file)
  as_pg /usr/bin/time -f "%e %M %U %S" -o "$out" "$@" >/dev/null 2>"$out.err" || {
    cat "$out.err" >&2; rm -f "$out" "$out.err"; exit 1; }
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$out"
  rm -f "$out" "$out.err"
}

# Times each call of CMD alone, one process per WAL file as PostgreSQL runs archive_command
# and restore_command, from DIR, as postgres: CMD is a template in which {} is the file's
# name. What PostgreSQL does itself between calls (removing the previous RECOVERYXLOG before
# restore_command) is left out. Prints the mean wall time per call in ns and the CPU time
# (user + system, of the whole loop) per call in µs. Exit status 1 of CMD (archive-get: not
# in the repository) is accepted when ALLOW_ONE=1.
time_loop() { # DIR CMD NAME...
  local dir=$1 cmd=$2 cpu
  shift 2
  cpu=$(scratch_file)
  as_pg env DIR="$dir" NAMES="$*" CMD="$cmd" ALLOW_ONE="${ALLOW_ONE:-0}" \
    /usr/bin/time -f "%U %S" -o "$cpu" bash -c '
    set -e
    cd "$DIR"
    total=0
    for n in $NAMES; do
      rm -f pg_wal/RECOVERYXLOG
      start=$EPOCHREALTIME
      rc=0
      eval "${CMD//\{\}/$n}" || rc=$?
      end=$EPOCHREALTIME
      [ "$rc" -eq 0 ] || { [ "$ALLOW_ONE" = 1 ] && [ "$rc" -eq 1 ]; } || {
        echo "exit $rc: ${CMD//\{\}/$n}" >&2; exit 1; }
      total=$(( total + ${end/./} - ${start/./} ))
    done
    echo $(( total * 1000 / $(wc -w <<<"$NAMES") ))' >"$cpu.wall" || { rm -f "$cpu" "$cpu.wall"; return 1; }
  printf '%s %s\n' "$(cat "$cpu.wall")" \
    "$(awk -v n="$#" '{ printf "%.0f", ($1 + $2) * 1e6 / n }' "$cpu")"
  rm -f "$cpu" "$cpu.wall"
}

# The smaller of two numbers (best of several runs on a noisy machine).
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }

# The server binaries of PostgreSQL PG_MAJOR (default 15): the system's 15, or another major
# from scripts/pg_versions.sh (npm packages with no client tools: pgbench and psql stay 15's,
# which work against every server). Sets PG_BIN, PG_CLIENT_BIN and PG_MAJOR.
pick_pg() {
  PG_MAJOR=${PG_MAJOR:-15}
  PG_CLIENT_BIN=/usr/lib/postgresql/15/bin
  if [ "$PG_MAJOR" = 15 ]; then
    PG_BIN=/usr/lib/postgresql/15/bin
  else
    eval "$(bash scripts/pg_versions.sh)"
    local var="PITR_TEST_PG${PG_MAJOR}_BIN"
    PG_BIN=${!var:-}
    [ -n "$PG_BIN" ] || { echo "PostgreSQL $PG_MAJOR is not one scripts/pg_versions.sh installs (13, 14, 16, 17, 18)" >&2; exit 1; }
  fi
}

# Whether the installed pgBackRest supports PostgreSQL PG_MAJOR: it refuses newer servers at
# stanza-create, so the comparison columns are left out (n/a) on those.
pgbr_supports() {
  local v max
  v=$(pgbackrest version | awk '{ print $2 }')
  # PostgreSQL support by pgBackRest release: 16 from 2.47, 17 from 2.53, 18 from 2.56.
  max=$(awk -v v="$v" 'BEGIN { split(v, p, "."); n = p[1] * 100 + p[2];
    print (n >= 256 ? 18 : n >= 253 ? 17 : n >= 247 ? 16 : 15) }')
  [ "$PG_MAJOR" -le "$max" ]
}

# $WORK/pgbackrest.conf for stanza "bench" on the cluster in $WORK/data (socket in $WORK,
# port 5432): a repository in $WORK/pgbr-repo, lz4, two processes; extra [global] lines
# from stdin. Sets PGBR to the command that uses it.
pgbr_config() {
  mkdir -p "$WORK/pgbr-repo" "$WORK/lock"
  {
    printf '[global]\nrepo1-path=%s/pgbr-repo\ncompress-type=lz4\nprocess-max=2\n' "$WORK"
    printf 'lock-path=%s/lock\nlog-path=%s\nlog-level-console=error\nlog-level-file=off\n' "$WORK" "$WORK"
    printf 'spool-path=%s\nstart-fast=y\n' "$WORK"
    cat
    printf '\n[bench]\npg1-path=%s/data\npg1-socket-path=%s\npg1-port=5432\npg1-user=postgres\n' "$WORK" "$WORK"
  } > "$WORK/pgbackrest.conf"
  give_pg "$WORK/pgbackrest.conf" "$WORK/pgbr-repo" "$WORK/lock"
  PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"
}

# s3s-fs serving DIR behind bench/s3_proxy.py (LATENCY_MS each way, default 20), credentials
# bench/benchsecret, bucket "bench"; stopped at exit. Sets S3_ENDPOINT (the proxy) and
# exports the AWS variables pitr reads. Needs s3s-fs and python3.
start_s3_behind_proxy() { # DIR
  command -v s3s-fs >/dev/null || {
    echo "s3s-fs is not installed: cargo install s3s-fs --version 0.14.1 --features binary" >&2; exit 1; }
  local free='import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  local s3_port proxy_port
  s3_port=$(python3 -c "$free")
  proxy_port=$(python3 -c "$free")
  mkdir -p "$1/bench"
  s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key benchsecret "$1" >/dev/null 2>&1 &
  S3_PIDS="$!"
  python3 bench/s3_proxy.py "$proxy_port" "$s3_port" "${LATENCY_MS:-20}" &
  S3_PIDS="$S3_PIDS $!"
  for _ in $(seq 50); do curl -s "http://127.0.0.1:$proxy_port/__count" >/dev/null && break; sleep 0.2; done
  S3_ENDPOINT="http://127.0.0.1:$proxy_port"
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true
}
