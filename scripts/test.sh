#!/usr/bin/env bash
# Installs what the tests need, lints, builds the release binary and the Debian package, and runs the whole test
# suite (the integration tests on the packaged binary, the one that ships).
# Exit code: the test run's. Lint problems fail the run (TIDEMARK_STRICT_LINT=0 makes them warnings).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_swift

log "phase 1/5: system packages (with PostgreSQL, Redis and SQLite for the database sources), and moto_server (the S3-compatible server the S3 tests run on loopback)"
ensure_packages
ensure_packages "${TIDEMARK_TEST_APT_PACKAGES[@]}"
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "installing moto[server] from PyPI"
  python3 -m pip install -q 'moto[server]' || die "cannot install moto[server] (pip): the S3 tests need it"
fi

log "phase 2/5: lint (swift format lint --strict, config .swift-format)"
lint_rc=0
if swift format --version >/dev/null 2>&1; then
  swift format lint --strict --recursive Sources Tests Package.swift || lint_rc=$?
  if [ "$lint_rc" -eq 0 ]; then
    echo "lint: clean"
  elif [ "${TIDEMARK_STRICT_LINT:-1}" = 1 ]; then
    log "lint failed (exit code $lint_rc) and TIDEMARK_STRICT_LINT=1: stopping"
    exit "$lint_rc"
  else
    echo "lint: problems above (exit code $lint_rc); not fatal. Set TIDEMARK_STRICT_LINT=1 to make them fatal."
  fi
else
  if [ "${TIDEMARK_STRICT_LINT:-1}" = 1 ]; then die "swift format is not available and TIDEMARK_STRICT_LINT=1"; fi
  echo "lint: skipped (swift format is not available in this toolchain)"
fi

log "phase 3/5: build (swift build -c release)"
swift build -c release

# The package's binary is the release build above linked again with the static Swift runtime (seconds, no second
# compilation); the integration tests run that binary, the one that ships.
log "phase 4/5: the Debian package (scripts/package.sh)"
scripts/package.sh | tee .build/package.log
deb=$(tail -n 1 .build/package.log)
[ -f "$deb" ] || die "scripts/package.sh did not produce a package"
export TIDEMARK_DEB="$deb"
export TIDEMARK_BIN="$PWD/.build/release/tidemark-static"
[ -x "$TIDEMARK_BIN" ] || die "the package was built but $TIDEMARK_BIN is missing"

log "phase 5/5: tests (swift test -c release, TIDEMARK_BIN=$TIDEMARK_BIN, TIDEMARK_DEB=$TIDEMARK_DEB)"
# The in-process engine tests (scheduler, metrics endpoint, child processes) run on their own first: the
# integration tests wait on child processes from synchronous test functions, which would hold the cooperative
# pool's threads and delay the in-process servers those tests time.
test_rc=0
swift test -c release --filter TidemarkEngineTests || test_rc=$?
swift test -c release --skip TidemarkEngineTests || test_rc=$?
if [ "$test_rc" -eq 0 ]; then
  log "tests passed"
else
  log "tests FAILED (exit code $test_rc)"
fi
exit "$test_rc"
