#!/usr/bin/env bash
# Builds the Debian package dist/tidemark_<version>_amd64.deb: a binary that needs no Swift toolchain (the Swift
# runtime and Foundation linked in statically; Debian's libfuse3, libssh2, OpenSSL and zstd as dependencies),
# mount.tidemark, the systemd units of scripts/systemd and mount/, man pages for every command, bash/zsh/fish
# completions, and an example /etc/tidemark/tidemark.yaml (a conffile).
#
# The binary is the usual release build's objects linked once more with the static Swift runtime and Foundation
# (the link step of .build's release manifest, with -static-stdlib and Foundation's static libraries). SwiftPM's
# --static-swift-stdlib would compile every module again, in a build directory of its own since `swift test`
# cannot take the flag; linking again takes seconds and packages exactly what the tests ran.
#
# Environment:
#   TIDEMARK_BIN     package this binary instead (it must not need the toolchain's libraries)
#   TIDEMARK_SCRATCH_PATH     SwiftPM's build directory (default .build)
#   TIDEMARK_DIST    where the .deb goes (default: dist/)
#   TIDEMARK_DEBIAN_REVISION  the Debian revision appended to the version (default 1)
#   TIDEMARK_MAINTAINER       the Maintainer field
#   SOURCE_DATE_EPOCH         the packaged files' time and the man pages' date (default: the last commit's time)
# Without TIDEMARK_BIN it runs `swift build -c release` (nothing to do after a release build of
# the same sources) and links release/tidemark-static. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

root=$PWD
scratch=${TIDEMARK_SCRATCH_PATH:-$root/.build}
dist=${TIDEMARK_DIST:-$root/dist}
revision=${TIDEMARK_DEBIAN_REVISION:-1}
maintainer=${TIDEMARK_MAINTAINER:-tidemark maintainers <maintainers@users.noreply.b-seed-9effeb1a.example>}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

# dpkg-dev: dpkg-shlibdeps; binutils: strip.
ensure_packages dpkg-dev binutils

# The version the binary reports (TidemarkVersion in Sources/TidemarkEngine), checked against the binary below.
upstream=$(sed -n 's/^ *public static let string = "\([^"]*\)".*/\1/p' Sources/TidemarkEngine/RepositoryAccess.swift)
[ -n "$upstream" ] || die "cannot find TidemarkVersion.string in Sources/TidemarkEngine/RepositoryAccess.swift"
version="$upstream-$revision"

# The toolchain's directory (/opt/swift for /opt/swift/usr/bin/swift): nothing the binary loads may come from it.
toolchain_dir() {
  local swift
  swift=$(command -v swift) || return 1
  swift=$(realpath "$swift")
  dirname "$(dirname "$(dirname "$swift")")"
}

# needs_toolchain BINARY: prints the libraries BINARY loads from the Swift toolchain (none: prints nothing).
needs_toolchain() {
  local tc
  tc=$(toolchain_dir 2>/dev/null || echo /opt/swift)
  ldd "$1" | grep -E "$tc/|libswift|libFoundation|lib_FoundationICU|libdispatch|libBlocksRuntime|libXCTest|libTesting" ||
    true
}

# A tool of swift-argument-parser that renders the binary's --experimental-dump-help as mdoc pages, built in the
# same build directory when it is not there yet.
generate_manual_tool() {
  local c
  for c in "$scratch/release/generate-manual" "$root/.build/release/generate-manual" \
    "$root/.build/debug/generate-manual"; do
    if [ -x "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  ensure_swift
  # A dependency's executable: a plain `swift build` does not build it.
  swift build -c release --scratch-path "$scratch" --product generate-manual >&2
  echo "$scratch/release/generate-manual"
}

# static_relink OUT: links the release build's objects of tidemark into OUT with the static Swift runtime and
# Foundation (the manifest's own link command, with -o OUT). Foundation's static libraries go in a group, and
# CoreFoundation and ICU once more behind it, as the objects were compiled against the shared Foundation, whose
# modules do not name them.
static_relink() {
  python3 - "$scratch/release.yaml" "$1" <<'PY'
import json, subprocess, sys
manifest, out = sys.argv[1:3]
lines = open(manifest).read().split('\n')
args = None
for i, line in enumerate(lines):
    t = line.strip()
    if t.startswith('description: "Linking ') and t.endswith('/release/tidemark"'):
        a = lines[i + 1].strip()
        if a.startswith('args: '):
            args = json.loads(a[len('args: '):])
        break
if args is None:
    sys.exit(f'no link step of tidemark in {manifest}: build it with swift build -c release')
args = [a for a in args if a != '-v']
args[args.index('-o') + 1] = out
args += ['-static-stdlib', '-Xlinker', '--start-group', '-lFoundation', '-lFoundationInternationalization',
         '-lFoundationEssentials', '-l_FoundationICU', '-l_FoundationCShims', '-l_FoundationCollections',
         '-lCoreFoundation', '-lswiftCore', '-Xlinker', '--end-group', '-lCoreFoundation', '-l_FoundationICU', '-lstdc++']
sys.exit(subprocess.run(args).returncode)
PY
}

if [ -n "${TIDEMARK_BIN:-}" ]; then
  bin=$TIDEMARK_BIN
  log "packaging $bin"
else
  ensure_swift
  log "building tidemark (swift build -c release --scratch-path $scratch)"
  swift build -c release --scratch-path "$scratch"
  bin=$scratch/release/tidemark-static
  log "linking $bin with the static Swift runtime and Foundation"
  static_relink "$bin"
fi
[ -x "$bin" ] || die "$bin is missing or not executable"
toolchain_libs=$(needs_toolchain "$bin")
if [ -n "$toolchain_libs" ]; then
  die "$bin loads libraries of the Swift toolchain, which the package's machines do not have:
$toolchain_libs
run scripts/package.sh without TIDEMARK_BIN: it links the binary with the static Swift runtime"
fi
reported=$("$bin" version --json | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
[ "$reported" = "$upstream" ] || die "$bin reports version '$reported', the sources say $upstream: rebuild it"

work=$(mktemp -d "${TMPDIR:-/tmp}/tidemark-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
pkg=$work/root
mkdir -p "$pkg/DEBIAN"

log "laying out the package"
install -D -m 0755 "$bin" "$pkg/usr/bin/tidemark"
# Debian ships binaries without symbols (as dh_strip does); the Swift metadata lives in sections strip keeps.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/tidemark"
install -D -m 0755 mount/mount.tidemark "$pkg/usr/sbin/mount.tidemark"

# Units: scripts/systemd and mount/ are the one source (scripts/setup.sh --install installs the same files).
unitdir=$pkg/lib/systemd/system
for u in scripts/systemd/tidemark.service scripts/systemd/tidemark-replicate.service \
  scripts/systemd/tidemark-replicate.timer scripts/systemd/tidemark-serve.service mount/tidemark-mount@.service; do
  install -D -m 0644 "$u" "$unitdir/${u##*/}"
done

install -D -m 0644 packaging/tidemark.yaml "$pkg/etc/tidemark/tidemark.yaml"
echo /etc/tidemark/tidemark.yaml >"$pkg/DEBIAN/conffiles"

# Completions at the paths bash-completion, zsh and fish look in for packaged ones. bash-completion sources its
# scripts, so the bash one goes without its #! line.
"$bin" --generate-completion-script bash | sed '1{/^#!/d}' |
  install -D -m 0644 /dev/stdin "$pkg/usr/share/bash-completion/completions/tidemark"
"$bin" --generate-completion-script zsh | install -D -m 0644 /dev/stdin "$pkg/usr/share/zsh/vendor-completions/_tidemark"
"$bin" --generate-completion-script fish |
  install -D -m 0644 /dev/stdin "$pkg/usr/share/fish/vendor_completions.d/tidemark.fish"

# Man pages: one per command and subcommand (tidemark.1, tidemark.backup.1, tidemark.key.add.1, ...).
log "man pages (swift-argument-parser's generate-manual)"
manual_tool=$(generate_manual_tool)
mkdir -p "$work/man" "$pkg/usr/share/man/man1"
"$manual_tool" "$bin" --multi-page --section 1 --date "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" \
  --authors "tidemark maintainers" --output-directory "$work/man"
for m in "$work/man"/*.1; do
  awk -f packaging/fix-manual.awk "$m" | gzip -9n >"$pkg/usr/share/man/man1/${m##*/}.gz"
  chmod 0644 "$pkg/usr/share/man/man1/${m##*/}.gz"
done
[ -e "$pkg/usr/share/man/man1/tidemark.1.gz" ] || die "generate-manual wrote no tidemark.1"
mkdir -p "$pkg/usr/share/man/man8"
gzip -9n <packaging/mount.tidemark.8 >"$pkg/usr/share/man/man8/mount.tidemark.8.gz"
chmod 0644 "$pkg/usr/share/man/man8/mount.tidemark.8.gz"

# Documentation: copyright, changelogs (Debian's and the product's), the configuration reference and examples.
doc=$pkg/usr/share/doc/tidemark
install -D -m 0644 packaging/copyright "$doc/copyright"
gzip -9n <docs/CHANGELOG.md >"$doc/changelog.gz"
cat >"$work/changelog.Debian" <<EOF
tidemark ($version) unstable; urgency=medium

  * tidemark $upstream, with the Swift runtime linked in (no toolchain needed).
    What the release brings: changelog.gz.

 -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
gzip -9n <"$work/changelog.Debian" >"$doc/changelog.Debian.gz"
install -m 0644 docs/configuration.md "$doc/configuration.md"
install -m 0644 mount/README.md "$doc/README.mount.md"
install -D -m 0644 mount/backups.env.example "$doc/examples/backups.env"
install -m 0644 mount/mnt-backups.mount.example "$doc/examples/mnt-backups.mount"
chmod 0644 "$doc"/*.gz
install -D -m 0644 packaging/lintian-overrides "$pkg/usr/share/lintian/overrides/tidemark"

# Depends: what the binary links, resolved to packages by dpkg-shlibdeps, plus fuse3 for fusermount3 (mounts).
log "dependencies (dpkg-shlibdeps)"
mkdir -p "$work/src/debian"
printf 'Source: tidemark\n\nPackage: tidemark\nArchitecture: amd64\n' >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/tidemark" 2>"$work/shlibdeps.err") ||
  die "dpkg-shlibdeps failed: $(cat "$work/shlibdeps.err")"
depends=${shlibs#shlibs:Depends=}
for required in libc6 libfuse3-3 libssh2-1 libssl3 libzstd1; do
  grep -qE "(^|, )$required( |,|$)" <<<"$depends" || die "dpkg-shlibdeps did not name $required: $depends"
done
depends="$depends, fuse3"

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: tidemark
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Suggests: restic
Section: admin
Priority: optional
Description: disaster-recovery backups on restic's repository format
 tidemark takes encrypted, deduplicated snapshots on a primary machine and
 replicates them to disaster-recovery repositories (local, SFTP, S3 or its own
 REST server). Its repositories are restic's (format version 2), and its
 commands, flags and exit codes follow restic's.
 .
 The package holds the tidemark binary (the Swift runtime linked in), the
 replication daemon's and the REST server's systemd units, a read-only FUSE
 mount with mount.tidemark for mount(8) and fstab, man pages and shell
 completions.
EOF

(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  >"$pkg/DEBIAN/md5sums"

# Every file gets the same time, so the same sources give the same package.
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$dist"
deb=$dist/tidemark_${version}_amd64.deb
log "building $deb"
dpkg-deb --build --root-owner-group -Zxz "$pkg" "$deb" >/dev/null
echo "$deb"
