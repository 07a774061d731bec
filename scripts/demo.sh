#!/usr/bin/env bash
# The demo (`pitr demo`), installing PostgreSQL 15 first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && ! command -v pg_config >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "PostgreSQL is not installed: sudo apt-get install postgresql-15" >&2
    exit 1
  fi
fi
exec cargo run --quiet -- demo "$@"
