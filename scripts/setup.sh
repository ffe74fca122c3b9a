#!/usr/bin/env bash
# Installs the Debian packages tidemark needs (when missing) and builds the release binary.
# Run as root on Debian 12 with Swift at /opt/swift. Safe to run again: installed packages are skipped
# and the build is incremental. `scripts/setup.sh --install` also installs the binary, the mount helper and
# the systemd units (see mount/README.md).
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

# --install: put the binary, the mount helper and the systemd units where the system finds them.
if [ "${1:-}" = "--install" ]; then
  log "installing"
  install -D -m 0755 "$bin" /usr/local/bin/tidemark
  install -D -m 0755 mount/mount.tidemark /sbin/mount.tidemark
  # The unit files are the Debian package's (scripts/package.sh installs them as they are): they run
  # /usr/bin/tidemark, which this installation puts in /usr/local.
  mkdir -p /etc/systemd/system
  for u in mount/tidemark-mount@.service scripts/systemd/tidemark.service scripts/systemd/tidemark-replicate.service \
    scripts/systemd/tidemark-replicate.timer scripts/systemd/tidemark-serve.service; do
    sed -e 's#/usr/bin/tidemark#/usr/local/bin/tidemark#g' \
      -e 's#file:///usr/share/doc/tidemark/#file:///usr/local/share/doc/tidemark/#g' "$u" >"/etc/systemd/system/${u##*/}"
    chmod 0644 "/etc/systemd/system/${u##*/}"
  done
  install -D -m 0644 docs/configuration.md /usr/local/share/doc/tidemark/configuration.md
  echo "installed /usr/local/bin/tidemark, /sbin/mount.tidemark and the systemd units (tidemark-mount@.service,"
  echo "tidemark.service, tidemark-replicate.service/.timer, tidemark-serve.service); enable one of: systemctl enable --now tidemark.service"
  echo "or tidemark-replicate.timer, after writing /etc/tidemark/tidemark.yaml (see docs/configuration.md)"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi
