#!/usr/bin/env bash
# A short tour of tidemark on a local repository under ./demo (wiped and recreated on every run):
# init, two backups (the second reuses the first as parent), snapshots, ls, restore, and a comparison
# of the restored files with the originals. When restic is installed, restic checks the repository too.
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
  printf '\n$ %s\n' "$*"
  "$@"
}

# Only the demo's password counts: other password sources would take precedence over TIDEMARK_PASSWORD.
unset TIDEMARK_PASSWORD_FILE TIDEMARK_PASSWORD_COMMAND TIDEMARK_REPOSITORY
unset RESTIC_PASSWORD RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_REPOSITORY
export TIDEMARK_PASSWORD=demo-password
log "the demo repository's password is set in the environment: TIDEMARK_PASSWORD=demo-password"

log "preparing ./demo (wiped and recreated)"
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

log "SUCCESS: tidemark backed up, listed and restored demo/data (the restore matches the original), replicated it to a DR replica, and a drill restored and verified it from there"
