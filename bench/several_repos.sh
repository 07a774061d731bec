#!/usr/bin/env bash
# Benchmark (issue 28): archive-push into two repositories, a local file one and an S3 one
# (s3s-fs behind bench/s3_proxy.py, LATENCY_MS each way, default 20), against each alone.
# The same real WAL segments (a pgbench run), one process per segment as PostgreSQL calls
# archive_command, each configuration into fresh repositories, best of ROUNDS (default 2).
# Target: two repositories cost at most 1.2x the slower one alone (they are stored at once).
#
#   bash bench/several_repos.sh [SEGMENTS]     (default 40; needs root or the postgres user)
#
# Needs PostgreSQL 15 (apt-get install postgresql-15), s3s-fs and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SEGMENTS=${1:-40}
ROUNDS=${ROUNDS:-2}
require_pg
WORK=$(mktemp -d /tmp/pitr-bench-XXXXXX)
chmod 755 "$WORK"
cleanup() {
  kill_cluster "$WORK/data"
  # shellcheck disable=SC2086
  [ -n "${S3_PIDS:-}" ] && kill $S3_PIDS 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
release_pitr "$WORK"
mkdir -p "$WORK/segments" "$WORK/s3root"
give_pg "$WORK"
start_s3_behind_proxy "$WORK/s3root"

echo "== generating WAL with pgbench"
new_cluster "$WORK/data" "$WORK" <<CONF
wal_keep_size = '8GB'
max_wal_size = '8GB'
archive_mode = off
CONF
start_cluster "$WORK/data"
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -i -s 60 -q postgres 2>/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -U postgres -c 2 -T 10 postgres >/dev/null 2>&1
as_pg psql -h "$WORK" -U postgres -Atqc "select pg_switch_wal()" postgres >/dev/null
current=$(as_pg psql -h "$WORK" -U postgres -Atqc "select pg_walfile_name(pg_current_wal_lsn())" postgres)
stop_cluster "$WORK/data"
mapfile -t names < <(ls "$WORK/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$current" '$0 < c' | head -n "$SEGMENTS")
[ "${#names[@]}" -ge 16 ] || { echo "only ${#names[@]} segments were produced" >&2; exit 1; }
for n in "${names[@]}"; do cp "$WORK/data/pg_wal/$n" "$WORK/segments/$n"; done
give_pg "$WORK/segments"
echo "== ${#names[@]} segments, $(( $(du -sb "$WORK/segments" | cut -f1) / 1048576 )) MiB; S3 at ${LATENCY_MS:-20} ms each way"

S3="--s3-endpoint $S3_ENDPOINT --s3-path-style"
S3_2="--repo2-s3-endpoint $S3_ENDPOINT --repo2-s3-path-style"
# ms per segment for a configuration: the repository flags, into fresh repositories.
push_ms() { # REPO_FLAGS_TEMPLATE ({} = a tag of this run) TAG
  local flags=${1//\{\}/$2}
  # shellcheck disable=SC2086
  as_pg env AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true "$WORK/pitr" $flags init --pgdata "$WORK/data" >/dev/null
  local ns
  ns=$(ALLOW_ONE=0 time_loop "$WORK/data" \
    "env AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true $WORK/pitr $flags archive-push $WORK/segments/{}" \
    "${names[@]}" | cut -d' ' -f1)
  awk -v ns="$ns" 'BEGIN { printf "%.1f", ns / 1e6 }'
}
# Rounds interleave the three configurations, so that the machine's noise falls on each.
file_ms="" s3_ms="" two_ms=""
for round in $(seq "$ROUNDS"); do
  ms=$(push_ms "--repo $WORK/file-{}" "$round")
  file_ms=$( [ -z "$file_ms" ] && echo "$ms" || best "$file_ms" "$ms")
  ms=$(push_ms "--repo s3://bench/s3-{} $S3" "$round")
  s3_ms=$( [ -z "$s3_ms" ] && echo "$ms" || best "$s3_ms" "$ms")
  ms=$(push_ms "--repo $WORK/two-file-{} --repo2 s3://bench/two-s3-{} $S3_2" "$round")
  two_ms=$( [ -z "$two_ms" ] && echo "$ms" || best "$two_ms" "$ms")
  echo "round $round: file $file_ms, S3 $s3_ms, both $two_ms ms/segment (best so far)"
done
printf '%-28s %10s\n' "archive-push into" "ms/segment"
printf '%-28s %10s\n' "file repository alone" "$file_ms" "S3 repository alone" "$s3_ms" "both (file + S3)" "$two_ms"
awk -v f="$file_ms" -v s="$s3_ms" -v t="$two_ms" 'BEGIN {
  one = (f > s ? f : s)
  printf "both / slower alone: %.2fx (target <= 1.2x) %s\n", t / one, (t / one <= 1.2 ? "PASS" : "FAIL")
  printf "both / file alone: %.2fx\n", t / f }'
