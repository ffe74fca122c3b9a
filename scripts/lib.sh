# shellcheck shell=bash
# Helpers shared by scripts/setup.sh, scripts/demo.sh and scripts/test.sh. Source this file; do not run it.
# Targets Debian 12 with the Swift toolchain at /opt/swift, run as root (sudo is used when not root).

# What building, running and testing tidemark needs:
#   libfuse3-dev fuse3          FUSE (mount), libfuse3 headers and fusermount3
#   libssh2-1-dev               SFTP backend
#   libssl-dev libzstd-dev      libcrypto (SHA-256, AES, Poly1305, scrypt) and zstd
#   pkg-config                  SwiftPM finds the system libraries through it
#   restic                      compatibility checks (restic check --read-data, restic restore)
#   attr                        getfattr/setfattr for extended-attribute tests
#   openssh-server/-client      a throwaway sshd on 127.0.0.1 for SFTP tests
#   git ca-certificates         SwiftPM fetches swift-argument-parser with git over https (git: mount tests too)
#   rsync sqlite3               mount tests and benchmarks read snapshots with them
TIDEMARK_APT_PACKAGES=(
  libfuse3-dev fuse3 libssh2-1-dev libssl-dev libzstd-dev pkg-config restic attr openssh-server openssh-client
  git ca-certificates rsync sqlite3
)

# What only the tests need besides: real database servers for the database-source tests
# (Tests/TidemarkIntegrationTests/DatabaseSourceTests.swift), each started by the test itself on 127.0.0.1:
#   postgresql                  initdb/postgres under /usr/lib/postgresql/*/bin, pg_dump, pg_restore, psql
#   redis-server redis-tools    redis-server, redis-cli (--rdb), redis-check-rdb
#   sqlite3                     the sqlite3 command-line tool (also in the list above)
#   openssl curl                the serve tests' private CA and certificates, raw HTTP requests
#   lintian dpkg-dev man-db     the package tests: scripts/package.sh (dpkg-shlibdeps), lintian on the .deb (it
#                               reads the man pages with man-db's man)
#   strace                      which files a backup opens (a hard-linked file is read under one name)
# On a machine where services start on installation, Debian also starts its own postgres and redis; the tests do
# not use them. The serve tests also mount a small tmpfs (as root) for a full disk.
TIDEMARK_TEST_APT_PACKAGES=(postgresql redis-server redis-tools sqlite3 openssl curl lintian dpkg-dev man-db strace)

# log MESSAGE...: one progress line, easy to spot among build output.
log() { printf '\n==> %s\n' "$*"; }

# die MESSAGE...: print to stderr and exit 1.
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# is_installed PACKAGE: true when dpkg reports the package fully installed
# (`dpkg -s` alone also succeeds for removed packages whose config files remain).
is_installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

# ensure_packages [PACKAGE...]: installs whichever of the packages (default: TIDEMARK_APT_PACKAGES) are
# missing. Runs `apt-get update` once, and only when something is missing.
ensure_packages() {
  local pkgs=("$@")
  if [ ${#pkgs[@]} -eq 0 ]; then pkgs=("${TIDEMARK_APT_PACKAGES[@]}"); fi
  command -v dpkg >/dev/null 2>&1 || die "dpkg not found: these scripts expect Debian 12"
  local missing=() p
  for p in "${pkgs[@]}"; do
    is_installed "$p" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "all required packages are installed"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}): run as root, or install sudo"
    sudo=(sudo)
  fi
  echo "installing missing packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  for p in "${missing[@]}"; do
    is_installed "$p" || die "package $p is still not installed after apt-get install"
  done
}

# ensure_swift: makes sure `swift` is on PATH (falls back to /opt/swift/usr/bin).
ensure_swift() {
  if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
  fi
  command -v swift >/dev/null 2>&1 || die "swift not found on PATH (expected the toolchain at /opt/swift)"
}
