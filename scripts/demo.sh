#!/usr/bin/env bash
# A short tour of tidemark on a local repository under ./demo (wiped and recreated on every run):
# init, two backups (the second reuses the first as parent), snapshots, ls, restore, and a comparison
# of the restored files with the originals; the snapshots browsed through `tidemark mount` with ls, grep and
# diff, and a deleted file restored from its path inside the mount; then the DR cycle, status and a drill.
# When restic is installed, restic checks the repository too.
# Exits non-zero on any failure or mismatch.
#
# Environment: TIDEMARK_DEMO_SKIP_SETUP=1 skips scripts/setup.sh (no package installation, no build) and
# uses $TIDEMARK_BIN (default .build/release/tidemark).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if [ "${TIDEMARK_DEMO_SKIP_SETUP:-0}" = 1 ]; then
  tm="${TIDEMARK_BIN:-$PWD/.build/release/tidemark}"
  log "skipping setup (TIDEMARK_DEMO_SKIP_SETUP=1)"
else
  bash scripts/setup.sh
  tm="$PWD/.build/release/tidemark"
fi
[ -x "$tm" ] || die "no tidemark binary at $tm"
log "using $tm"

# Shown as `tidemark …` in the transcript.
tidemark() { "$tm" "$@"; }
run() {
  local shown=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then shown+=("$a"); else shown+=("'$a'"); fi
  done
  printf '\n$ %s\n' "${shown[*]}"
  "$@"
}

# Only the demo's password counts: other password sources would take precedence over TIDEMARK_PASSWORD.
unset TIDEMARK_PASSWORD_FILE TIDEMARK_PASSWORD_COMMAND TIDEMARK_REPOSITORY
unset RESTIC_PASSWORD RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_REPOSITORY
export TIDEMARK_PASSWORD=demo-password
log "the demo repository's password is set in the environment: TIDEMARK_PASSWORD=demo-password"

log "preparing ./demo (wiped and recreated)"
if mountpoint -q demo/mnt 2>/dev/null; then fusermount3 -u demo/mnt || umount -l demo/mnt; fi
rm -rf demo
mkdir -p demo/data/docs/notes
printf 'Hello from tidemark.\n' >demo/data/hello.txt
for i in $(seq 1 20000); do printf 'line %05d: the tide comes in, the tide goes out\n' "$i"; done >demo/data/docs/report.txt
printf -- '- rotate the keys\n- test the restore\n' >demo/data/docs/notes/todo.txt
printf 'a name with spaces\n' >'demo/data/docs/file with spaces.txt'
: >demo/data/empty.txt
head -c $((20 * 1024 * 1024)) /dev/urandom >demo/data/random.bin
chmod 0640 demo/data/docs/notes/todo.txt
ln -s hello.txt demo/data/link-to-hello
ln -s ../hello.txt demo/data/docs/up-link
find demo/data | sort
du -sh demo/data

run tidemark -r demo/repo init
run tidemark -r demo/repo backup demo/data

log "changing one file (appending to docs/report.txt), then backing up again"
printf 'line 20001: changed after the first backup\n' >>demo/data/docs/report.txt
echo "the second backup finds the first snapshot as its parent: unchanged files are not read again"
run tidemark -r demo/repo backup demo/data

run tidemark -r demo/repo snapshots
run tidemark -r demo/repo ls latest
run tidemark -r demo/repo restore latest --target demo/restore

# The snapshot mirrors the path as given: `backup demo/data` restores to <target>/demo/data.
restored=demo/restore/demo/data
log "comparing demo/data with $restored"
run diff -r --no-dereference demo/data "$restored" || die "restored content differs from the original"
for link in link-to-hello docs/up-link; do
  [ "$(readlink "demo/data/$link")" = "$(readlink "$restored/$link")" ] || die "symlink $link has a different target"
done
# Type, permissions, size (regular files) and modification time of every entry.
metadata() { (cd "$1" && { find . -printf '%p %y %m %T@\n'; find . -type f -printf '%p size %s\n'; } | sort); }
if ! diff <(metadata demo/data) <(metadata "$restored"); then
  die "restored metadata (type, mode, size or mtime) differs from the original"
fi
echo "content, symlink targets, modes and modification times match"

log "browsing the snapshots with ordinary tools: tidemark mount (read-only FUSE, in the background)"
mkdir -p demo/mnt
"$tm" -r demo/repo mount demo/mnt >demo/mount.log 2>&1 &
mount_pid=$!
unmount() {
  if mountpoint -q demo/mnt 2>/dev/null; then fusermount3 -u demo/mnt 2>/dev/null || umount demo/mnt 2>/dev/null || true; fi
  kill "$mount_pid" 2>/dev/null || true
  wait "$mount_pid" 2>/dev/null || true
}
trap unmount EXIT
host=$(hostname)
for _ in $(seq 1 300); do
  [ -e "demo/mnt/hosts/$host/latest" ] && break
  kill -0 "$mount_pid" 2>/dev/null || { cat demo/mount.log; die "tidemark mount stopped (log above): is /dev/fuse there and fuse3 installed?"; }
  sleep 0.2
done
[ -e "demo/mnt/hosts/$host/latest" ] || { cat demo/mount.log; die "the mount did not show hosts/$host/latest within a minute"; }
run ls demo/mnt
echo "one directory per snapshot, by host and time; latest points at the newest"
run ls -l "demo/mnt/hosts/$host"
times=()
for d in "demo/mnt/hosts/$host"/*; do
  [ -L "$d" ] || times+=("${d##*/}")
done
[ "${#times[@]}" = 2 ] || die "expected two snapshots under hosts/$host, found: ${times[*]}"
first="demo/mnt/hosts/$host/${times[0]}/demo/data"
latest="demo/mnt/hosts/$host/latest/demo/data"
run ls -la "$latest"
run grep -rn 'changed after the first backup' "demo/mnt/hosts/$host"
echo "what changed between the two backups, with diff"
if run diff "$first/docs/report.txt" "$latest/docs/report.txt"; then
  die "the two snapshots of docs/report.txt should differ"
fi

echo "every version of one file across the host's snapshots, named by the snapshot where it appeared"
run ls -l "demo/mnt/versions/$host/demo/data/docs/report.txt"
versions=()
for v in "demo/mnt/versions/$host/demo/data/docs/report.txt"/*; do versions+=("$v"); done
[ "${#versions[@]}" = 2 ] || die "expected two versions of docs/report.txt, found ${#versions[@]}"
run cmp "${versions[1]}" "$latest/docs/report.txt"

log "a file is lost in the live tree; it comes back from its path inside the mount"
run rm demo/data/docs/notes/todo.txt
echo "restore takes the repository from the mount and puts the file back where it came from"
run tidemark restore "$latest/docs/notes/todo.txt"
run cmp demo/data/docs/notes/todo.txt "$restored/docs/notes/todo.txt"
[ "$(stat -c %a demo/data/docs/notes/todo.txt)" = 640 ] || die "the restored file lost its mode"
echo "todo.txt is back, with its content and mode"
unmount
trap - EXIT

if command -v restic >/dev/null 2>&1; then
  log "restic $(restic version | awk '{print $2}') reads the same repository"
  export RESTIC_PASSWORD=demo-password
  run restic -r demo/repo check --read-data
  run restic -r demo/repo restore latest --target demo/restic-restore
  run diff -r --no-dereference demo/data demo/restic-restore/demo/data || die "restic's restore differs from the original"
  unset RESTIC_PASSWORD
else
  log "restic is not installed: skipping the restic compatibility check"
fi

log "the DR cycle: a configuration with a DR target (here a second local directory, demo/dr)"
printf 'demo-password\n' >demo/password
chmod 600 demo/password
cat >demo/tidemark.yaml <<YAML
host: demo
repository: $PWD/demo/repo
password-file: $PWD/demo/password
sources:
  - path: $PWD/demo/data
    verify: grep -q tide {}/docs/report.txt
targets:
  - name: dr
    repository: $PWD/demo/dr
retention:
  keep-last: 10
alerts:
  rpo: 15m
YAML
export TIDEMARK_STATE_DIR="$PWD/demo/state"
unset TIDEMARK_PASSWORD
cat demo/tidemark.yaml
echo "one cycle: backup, then the new snapshot copied verbatim to the replica (created on first use)"
run tidemark replicate --once --config demo/tidemark.yaml
printf 'line 20002: changed before the second cycle\n' >>demo/data/docs/report.txt
echo "the second cycle sends only what the backup added"
run tidemark replicate --once --config demo/tidemark.yaml
run tidemark status --config demo/tidemark.yaml
echo "a DR drill: restore the newest snapshot from the replica, check every file, run the verify command"
run tidemark drill --config demo/tidemark.yaml
[ "$(tidemark -r demo/dr --password-file demo/password snapshots --json | grep -o '"id"' | wc -l)" = \
  "$(tidemark -r demo/repo --password-file demo/password snapshots --json | grep -o '"id"' | wc -l)" ] ||
  die "the replica does not have the same snapshots"

log "SUCCESS: tidemark backed up, listed and restored demo/data (the restore matches the original), browsed the snapshots through a mount and restored a lost file from its path there, replicated to a DR replica, and a drill restored and verified it from there"
