#!/usr/bin/env bash
# Installs the Debian packages tidemark needs (when missing) and builds the release binary.
# Run as root on Debian 12 with Swift at /opt/swift. Safe to run again: installed packages are skipped
# and the build is incremental.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_swift

log "checking system packages"
ensure_packages

log "building tidemark (swift build -c release)"
swift build -c release

bin="$PWD/.build/release/tidemark"
[ -x "$bin" ] || die "build finished but $bin is missing"
log "tidemark is built: $bin"
