#!/usr/bin/env bash
# Runs PostgreSQL 15's own TAP tests that archive or restore WAL with pitr as archive_command
# and restore_command (docs/pg-tap.md): twice, with pitr's defaults and with archive-push
# look-ahead and archive-get prefetch off. Needs root (tests run as `postgres`) and the
# installed postgresql-15; fetches the matching source package from the machine's Debian apt
# sources once, into ${XDG_CACHE_HOME:-$HOME/.cache}/pitr-pg-tap. Uses target/debug/pitr
# (cargo build). Prints a line per test file and mode, then one summary line; exits non-zero
# on any failure. PITR_PG_TAP_JOBS: test files run at once (default 2). Arguments, if any,
# pick test files by name (e.g. 028_pitr_timelines).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

PG_BIN=/usr/lib/postgresql/15/bin
export PATH="$HOME/.cargo/bin:$PATH"
# The test files that archive or restore (call enable_archiving/enable_restoring, use
# has_archiving/has_restoring or archive_dir, or RewindTest's archive mode): docs/pg-tap.md,
# "Which tests".
TESTS=(
  src/test/recovery/t/002_archiving.pl
  src/test/recovery/t/003_recovery_targets.pl
  src/test/recovery/t/004_timeline_switch.pl
  src/test/recovery/t/010_logical_decoding_timelines.pl
  src/test/recovery/t/020_archive_status.pl
  src/test/recovery/t/023_pitr_prepared_xact.pl
  src/test/recovery/t/024_archive_recovery.pl
  src/test/recovery/t/025_stuck_on_old_timeline.pl
  src/test/recovery/t/028_pitr_timelines.pl
  src/test/recovery/t/043_no_contrecord_switch.pl
  src/test/recovery/t/045_archive_restartpoint.pl
  contrib/amcheck/t/005_pitr.pl
  src/bin/pg_basebackup/t/030_pg_recvlogical.pl
  src/bin/pg_rewind/t/001_basic.pl
  src/bin/pg_rewind/t/010_keep_recycled_wals.pl
)
# The source directories the tests need: the test library and each test's t/.
TREES=(src/test/perl src/test/recovery/t contrib/amcheck/t src/bin/pg_basebackup/t src/bin/pg_rewind/t)
MODES=(defaults no-lookahead)

die() { echo "pg tap: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the tests run as the postgres user"
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 is not installed (apt-get install postgresql-15)"
version=$(dpkg-query -W -f '${Version}' postgresql-15) || die "postgresql-15 is not a Debian package here"

ALL_TESTS=("${TESTS[@]}")
if [ $# -gt 0 ]; then
  picked=()
  for name in "$@"; do
    match=()
    for t in "${TESTS[@]}"; do [[ $t == *"$name"* ]] && match+=("$t"); done
    [ ${#match[@]} -gt 0 ] || die "no test file matches $name"
    picked+=("${match[@]}")
  done
  TESTS=("${picked[@]}")
fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need=()
perl -MIPC::Run -e1 2>/dev/null || need+=(libipc-run-perl)
command -v prove >/dev/null || need+=(perl)
command -v patch >/dev/null || need+=(patch)
command -v runuser >/dev/null || need+=(util-linux)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
id postgres >/dev/null 2>&1 || useradd --system --create-home postgres

# --- PostgreSQL's source, from the Debian source package of the installed version ---------
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pitr-pg-tap
source_dir=$cache/postgresql-15_$version
if [ ! -d "$source_dir" ]; then
  command -v dpkg-source >/dev/null || apt_install dpkg-dev
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # deb-src twins of the machine's enabled deb entries, in a private apt state: the
  # machine's own apt configuration and lists stay as they are.
  mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial" "$work/get"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n -E 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f"
  done >"$work/sources/pitr-pg-tap.list"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: the enabled ones of type deb, with Types: deb-src.
    awk 'BEGIN { RS = "" }
      {
        n = split($0, line, "\n"); types = ""; enabled = 1
        for (i = 1; i <= n; i++) {
          if (line[i] ~ /^Types:/) types = line[i]
          if (tolower(line[i]) ~ /^enabled:[[:space:]]*no/) enabled = 0
        }
        if (!enabled || types !~ /[[:space:]]deb([[:space:]]|$)/) next
        for (i = 1; i <= n; i++) {
          if (line[i] ~ /^#/) continue
          print (line[i] ~ /^Types:/ ? "Types: deb-src" : line[i])
        }
        print ""
      }' "$f"
  done >"$work/sources/pitr-pg-tap.sources"
  apt_opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$work/sources"
    -o "Dir::State::lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root")
  echo "pg tap: fetching the source of postgresql-15 $version (apt-get source)"
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work/get" && apt-get "${apt_opts[@]}" source -qq "postgresql-15=$version" >/dev/null)
  unpacked=$(find "$work/get" -mindepth 1 -maxdepth 1 -type d)
  [ -f "$unpacked/src/test/perl/PostgreSQL/Test/Cluster.pm" ] \
    || die "apt-get source postgresql-15=$version gave no PostgreSQL source tree"
  mv "$unpacked" "$source_dir"
  rm -rf "$work"
  trap - EXIT
fi

# Every test file of this source that archives or restores must be in TESTS: a newer package
# may bring one (RewindTest's tests archive through run_test('archive')).
archiving_tests=$(cd "$source_dir" && grep -rlE \
  "(enable|has)_(archiving|restoring)|archive_dir|run_test\(.archive.\)" \
  --include='*.pl' src contrib | grep '/t/' | sort)
for t in $archiving_tests; do
  [[ " ${ALL_TESTS[*]} " == *" $t "* ]] || die "$t archives or restores but is not in TESTS; add it"
done
for t in "${ALL_TESTS[@]}"; do
  [ -f "$source_dir/$t" ] || die "$t is not in postgresql-15 $version's source"
done

# --- the per-run directory: pitr, our module, one copy of the tests per mode --------------
# The tests must run the current code: a no-op when `cargo test` just built it.
cargo build --locked --quiet --bin pitr
run=$(mktemp -d /tmp/pitr-pg-tap.XXXXXX)
mkdir -p "$run/bin" "$run/lib"
install -m 755 target/debug/pitr "$run/bin/pitr"
install -m 644 tests/pg_tap/PitrTap.pm "$run/lib/PitrTap.pm"
for mode in "${MODES[@]}"; do
  for tree in "${TREES[@]}"; do
    mkdir -p "$run/$mode/$(dirname "$tree")"
    cp -a "$source_dir/$tree" "$run/$mode/$tree"
  done
  # Steps of the tests that handle the archive directory's files go through pitr instead.
  for p in tests/pg_tap/patches/*.patch; do
    patch -s -p1 --forward -d "$run/$mode" <"$p" || die "$p does not apply to postgresql-15 $version"
  done
done
chmod 755 "$run"

# pg_regress --config-auth only configures SSPI on Windows; elsewhere it exits at once.
pg_regress=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
[ -x "$pg_regress" ] || pg_regress=/bin/true

# One prove per test file and mode, PITR_PG_TAP_JOBS (default 2) at a time: a test that
# bails out (BAIL_OUT ends a whole prove run) then fails alone. Each writes its verbose TAP to
# <run>/<mode>/results/<file>.log and its exit code beside it.
run_one() {
  local mode=$1 test=$2 out t0=$SECONDS rc=0
  out=$run/$mode/results/${test//\//_}
  (cd "$run/$mode" && runuser -u postgres -- env -i \
    PATH="$PG_BIN:/usr/local/bin:/usr/bin:/bin" HOME="$run" LANG=C.UTF-8 \
    TESTDIR="$run/$mode" PG_REGRESS="$pg_regress" \
    PERL5LIB="$run/lib:$run/$mode/src/test/perl" PERL5OPT=-MPitrTap \
    PITR_TAP_PITR="$run/bin/pitr" PITR_TAP_MODE="$mode" \
    prove -v "$test") >"$out.log" 2>&1 || rc=$?
  local ok failed errors name verdict=ok note=''
  ok=$(grep -cE '^ok [0-9]+' "$out.log" || true)
  failed=$(grep -cE '^not ok [0-9]+' "$out.log" || true)
  # pitr's error lines in the servers' logs: a refusal the test's assertions do not see (the
  # look-ahead can store a file PostgreSQL's own call then fails on, or a standby streams
  # what it could not restore) still fails the file.
  name=$(basename "$test" .pl)
  grep -hE '^pitr [a-z-]+: ' "$run/$mode/tmp_check/log/${name}_"*.log >"$out.pitr-errors" 2>/dev/null || true
  errors=$(wc -l <"$out.pitr-errors")
  [ "$errors" -eq 0 ] || note="; $errors pitr errors in the servers' logs, first: $(head -1 "$out.pitr-errors")"
  [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$errors" -eq 0 ] || verdict=FAILED
  echo "$rc $ok $failed $errors" >"$out.result"
  printf 'pg tap: %-6s %-12s %-52s %3d/%d subtests %4ds%s\n' "$verdict" "$mode" "$test" \
    "$ok" "$((ok + failed))" "$((SECONDS - t0))" "$note"
}

for mode in "${MODES[@]}"; do mkdir -p "$run/$mode/results"; done
chown -R postgres: "$run"
for test in "${TESTS[@]}"; do
  for mode in "${MODES[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "${PITR_PG_TAP_JOBS:-2}" ]; do wait -n || true; done
    run_one "$mode" "$test" &
  done
done
wait

status=0 files=0 files_ok=0 subtests=0 subtests_ok=0 pitr_errors=0
for mode in "${MODES[@]}"; do
  for test in "${TESTS[@]}"; do
    read -r rc ok failed errors <"$run/$mode/results/${test//\//_}.result"
    files=$((files + 1))
    subtests=$((subtests + ok + failed))
    subtests_ok=$((subtests_ok + ok))
    pitr_errors=$((pitr_errors + errors))
    if [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$errors" -eq 0 ]; then
      files_ok=$((files_ok + 1))
    else
      status=1
    fi
  done
done

elapsed=$((SECONDS - started))
echo "pg tap: $files_ok/$files files, $subtests_ok/$subtests subtests passed, $pitr_errors pitr errors in the servers' logs (defaults + no look-ahead) in ${elapsed}s"
if [ "$status" -ne 0 ]; then
  echo "pg tap: failed; prove's output is in $run/<mode>/results, the tests' and servers' logs in $run/<mode>/tmp_check/log" >&2
  exit 1
fi
rm -rf "$run"
