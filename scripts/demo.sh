#!/usr/bin/env bash
# The demo: a scratch PostgreSQL 15 cluster archives its WAL with pitr into a local repository,
# then every segment comes back through archive-get and is compared with the server's copy.
# Everything lives in one temp directory, removed at the end. Runs as root (PostgreSQL then
# runs as the postgres user) or as a normal user.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PG_BIN/initdb" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "PostgreSQL 15 is not installed: sudo apt-get install postgresql-15" >&2
    exit 1
  fi
fi

if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

say "Building pitr"
cargo build --quiet
DEMO=$(mktemp -d /tmp/pitr-demo-XXXXXX)
chmod 755 "$DEMO"
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$DEMO"
}
trap cleanup EXIT
cp target/debug/pitr "$DEMO/pitr"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$DEMO"
PITR="$DEMO/pitr --repo $DEMO/repo"

say "Creating a scratch cluster in $DEMO/data"
as_pg "$PG_BIN/initdb" -D "$DEMO/data" -A trust -U postgres -N >/dev/null

say "Recording the cluster in a new repository: pitr init"
as_pg $PITR init --pgdata "$DEMO/data"

say "Turning on archiving: archive_command = '$PITR -v archive-push %p'"
cat >> "$DEMO/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$DEMO'
port = 5432
archive_mode = on
archive_command = '$PITR -v archive-push %p'
wal_keep_size = '1GB'
EOF
as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null
psql_() { as_pg psql -X -h "$DEMO" -U postgres -Atq -d postgres -c "$1"; }

say "Writing data: about 5 WAL segments"
psql_ "create table orders as select g as id, md5(g::text) as note from generate_series(1, 600000) g"
last=$(psql_ "select pg_walfile_name(pg_current_wal_lsn())")
psql_ "select pg_switch_wal()" >/dev/null
for _ in $(seq 1 300); do
  done_=$(psql_ "select coalesce(last_archived_wal, '') >= '$last' from pg_stat_archiver")
  [ "$done_" = t ] && break
  sleep 0.2
done
psql_ "select 'archived: ' || archived_count || ', failed: ' || failed_count from pg_stat_archiver"
echo "PostgreSQL's log shows pitr's lines:"
grep -E "archived " "$DEMO/server.log" | sed 's/^/  /'

say "Fetching every segment back with pitr archive-get and comparing"
mkdir -p "$DEMO/restored"
[ "$(id -u)" -eq 0 ] && chown postgres: "$DEMO/restored"
ok=0
for f in "$DEMO"/data/pg_wal/0000000100000000000000*; do
  name=$(basename "$f")
  [[ "$name" > "$last" ]] && continue
  as_pg $PITR archive-get "$name" "$DEMO/restored/$name"
  cmp -s "$f" "$DEMO/restored/$name"
  ok=$((ok + 1))
done
echo "$ok segments restored byte-identical"

say "Asking for a segment that does not exist yet: exit code 1, as PostgreSQL expects"
set +e
as_pg $PITR archive-get 0000000100000000000000FF "$DEMO/restored/x"
echo "exit code $?"
set -e

say "Done: everything in $DEMO is removed now"
