#!/usr/bin/env bash
# Benchmarks: tidemark against restic on this machine, in one run. Sections:
#   backup   generated ~1 GiB corpus: first backup, unchanged re-backup, backup after changing ~1% of the data,
#            full restore. For each: wall time and peak RSS (/usr/bin/time).
#   mount    one restic-made repository mounted by `restic mount` and `tidemark mount`: sequential read of a large
#            incompressible file and of a large log-like text file, `find` over the snapshot, `rsync -a` of 20,000
#            small files. Each with a cold page cache and a fresh mount process; peak RSS of the mount process (VmHWM).
#   inplace  a copy of the corpus diverged by ~1% (edits, deletions, new files, a chmod) brought back to a
#            restic-made snapshot: `tidemark restore MNT/... --delete` from a running `tidemark mount` against
#            `rsync -a --delete` from a running `restic mount`; `tidemark restore latest:corpus --delete`; and a
#            full `restic restore` into an empty directory. Wall time and peak RSS (/usr/bin/time), each timed
#            command right after the same memory warm-up (warm_memory).
#   maint    a restic-made repository with history (the corpus, then 3 rounds of changes, forget --keep-last 1):
#            `prune` (default --max-unused 5%) on identical copies, and `check --read-data`, restic against tidemark.
#   cycle    one replication cycle after a ~1% change of the corpus: `tidemark replicate --once` (backup + verbatim
#            replication to a local DR repository) against `restic backup` + `restic copy` to a DR repository.
#   remote   the backup section's corpus backed up over loopback to a real sshd (SFTP) and to moto_server (S3):
#            first backup and unchanged re-backup, restic (its sftp.command / s3 backend) against tidemark.
#   serve    the DR server's path: `tidemark replicate --to` a fresh replica behind `tidemark serve --append-only
#            --tls` (a private CA made here) against the same into a fresh replica over SFTP (loopback sshd); and
#            `restic backup` of the corpus to `tidemark serve` over TLS against restic over SFTP.
#   drill    RTO and RPO: the corpus replicated by `tidemark replicate --once` to a local and an SFTP (loopback
#            sshd) target, then `tidemark drill` on both; figures go to docs/rto-rpo.md (not performance.md).
#   scale    a generated "file server" (500,000 small files in 10,000 directories and 4 x 64 MiB): first backup,
#            unchanged re-backup, re-backup after 100 files changed (a full walk), and `find` over the mounted
#            latest snapshot with the mount process's RSS afterwards. Wall time and peak RSS for each.
#   corpora  five generated corpora that look like real servers (source tree, logs and a database, VM images, media,
#            a mix with awkward entries): first backup with a cold and a warm page cache, unchanged re-backup,
#            full restore; wall, CPU (user + system) and peak RSS, and each corpus's floor from the stages' CPU cost
#            (`tidemark debug stage-costs`) and its cold read. Alternates which tool goes first. Needs root.
# Each section rewrites only its own block of docs/performance.md (between <!-- bench:SECTION:begin --> and
# <!-- bench:SECTION:end -->); the rest of the document is hand-written and left alone.
#
#   scripts/bench.sh                 # build release, run all three sections, update docs/performance.md
#   scripts/bench.sh backup          # only the backup/restore section (likewise: mount, inplace; several may be given)
#   BENCH_NO_BUILD=1 scripts/bench.sh      # use .build/release/tidemark as it is (no swift build)
#   BENCH_DIR=/var/tmp/b scripts/bench.sh  # where corpora and repositories go (default /tmp/tidemark-bench)
#   BENCH_OUT=-  scripts/bench.sh    # print the tables instead of writing docs/performance.md
#   BENCH_RUNS=3                     # runs per step, median reported (default 3)
#   BENCH_MOUNT_LARGE_MIB=256 BENCH_MOUNT_SMALL_DIRS=200   # mount dataset: large file size, dirs of 100 small files
#   BENCH_MOUNT_LOG_MIB=256          # mount dataset: size of the log-like text file
#   BENCH_SCALE_FILES=20000 BENCH_SCALE_DIRS=1000          # scale corpus size (default 500000 files, 10000 dirs)
#   BENCH_SCALE_RUNS=1               # runs per scale step (default: BENCH_RUNS below 100,000 files, else 1)
#   BENCH_CORPORA="mix logs"         # which corpora the corpora section runs (default: source logs vm media mix)
#   BENCH_CORPORA_SCALE=0.25         # their size (default 1: about 0.4-1.3 GiB each)
set -euo pipefail
SELF=$(readlink -f "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

usage() { die "usage: scripts/bench.sh [backup] [mount] [inplace] [maint] [cycle] [remote] [serve] [drill] [scale] [corpora]   (no argument: all)"; }
SECTIONS=()
for arg in "$@"; do
  case $arg in
    backup | mount | inplace | maint | cycle | remote | serve | drill | scale | corpora) SECTIONS+=("$arg") ;;
    *) usage ;;
  esac
done
if [ ${#SECTIONS[@]} -eq 0 ]; then SECTIONS=(backup mount inplace maint cycle remote serve drill scale corpora); fi
want() { [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }

# shellcheck disable=SC2119 # no arguments: the default package list
ensure_packages
if { want backup || want inplace || want maint || want cycle || want remote || want serve || want drill || want scale || want corpora; } && { ! command -v /usr/bin/time >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; }; then
  apt-get install -y -qq time >/dev/null
fi

ROOT=$PWD
BENCH_DIR=${BENCH_DIR:-/tmp/tidemark-bench}
OUT=${BENCH_OUT:-docs/performance.md}
case $OUT in - | /*) ;; *) OUT="$ROOT/$OUT" ;; esac
RUNS=${BENCH_RUNS:-3}
CORPORA=${BENCH_CORPORA:-source logs vm media mix}
CORPORA_SCALE=${BENCH_CORPORA_SCALE:-1}
TM="$ROOT/.build/release/tidemark"
if [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
  [ -x "$TM" ] || die "BENCH_NO_BUILD=1 but $TM is missing or not executable: build it with 'swift build -c release'"
  log "using the existing $TM (BENCH_NO_BUILD=1)"
else
  ensure_swift
  log "building release binary"
  swift build -c release >/dev/null
fi

mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
BENCH_DIR=$(pwd -P)
rm -rf cache
export RESTIC_PASSWORD=bench TIDEMARK_PASSWORD=bench RESTIC_CACHE_DIR="$BENCH_DIR/cache"

SSHD_PID="" MOTO_PID="" SERVE_PID=""   # the remote and serve sections' servers
stop_servers() {
  if [ -n "$SSHD_PID" ]; then
    pkill -KILL -P "$SSHD_PID" 2>/dev/null || true
    kill -KILL "$SSHD_PID" 2>/dev/null || true
    wait "$SSHD_PID" 2>/dev/null || true
    SSHD_PID=""
  fi
  if [ -n "$MOTO_PID" ]; then
    kill -KILL "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    MOTO_PID=""
  fi
  if [ -n "$SERVE_PID" ]; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
  fi
  return 0
}

# ---- cleanup: whatever a section leaves mounted or running when the script stops -----------------------------
FS_IMG="$BENCH_DIR/restore-fs.img"
MNT="$BENCH_DIR/mnt"              # where the mount and inplace sections mount the repository
DEST="$BENCH_DIR/rsync-dest"      # rsync target (a fresh tmpfs per session when root)
MOUNT_PID=""                      # the mount process of the current mount session
is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }
cleanup() {
  set +e
  if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    kill -INT "$MOUNT_PID" 2>/dev/null   # both tools unmount and quit on Ctrl-C (restic not on SIGTERM)
    for _ in $(seq 30); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$MOUNT_PID" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MOUNT_PID" 2>/dev/null
    wait "$MOUNT_PID" 2>/dev/null
  fi
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; fi
  if is_mounted "$DEST"; then umount "$DEST" 2>/dev/null || umount -l "$DEST" 2>/dev/null; fi
  if is_mounted "$BENCH_DIR/restore-fs"; then umount "$BENCH_DIR/restore-fs" 2>/dev/null || umount -l "$BENCH_DIR/restore-fs"; fi
  rm -f "$FS_IMG"
  stop_servers
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null; fi
}
DAEMON_PID=""
trap cleanup EXIT
trap 'exit 130' INT TERM

# update_doc SECTION FILE: puts FILE's text between the section's markers in $OUT (markers appended at the end
# when the document has none yet), or prints it when BENCH_OUT=-.
update_doc() { # SECTION BLOCK_FILE [DOCUMENT (default: $OUT)]
  local doc=${3:-$OUT}
  if [ "$OUT" = "-" ]; then
    cat "$2"
    return
  fi
  python3 - "$doc" "$1" "$2" <<'PY'
import os, sys
path, section, block_file = sys.argv[1:4]
block = open(block_file).read().strip('\n')
begin, end = f'<!-- bench:{section}:begin -->', f'<!-- bench:{section}:end -->'
doc = open(path).read() if os.path.exists(path) else '# Performance: tidemark vs restic\n'
if begin not in doc and end not in doc:
    doc = doc.rstrip('\n') + f'\n\n{begin}\n{block}\n{end}\n'
elif doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(end) < doc.index(begin):
    sys.exit(f'{path}: the {begin} ... {end} markers are broken; fix them by hand')
else:
    i, j = doc.index(begin) + len(begin), doc.index(end)
    doc = doc[:i] + '\n' + block + '\n' + doc[j:]
with open(path + '.tmp', 'w') as f:
    f.write(doc)
os.replace(path + '.tmp', path)
PY
  log "updated the $1 section of $doc"
}

# ---- backup section ------------------------------------------------------------------------------------------

# Runs a command under /usr/bin/time; records wall seconds and peak RSS (KiB).
run_measured() { # name tool command...
  local name=$1 tool=$2
  shift 2
  local log="time-$tool-$name.log"
  # Every measured command starts with no dirty data left by the one before (the other tool's
  # repository would otherwise be written back while this one runs, and bill it).
  sync
  /usr/bin/time -o "$log" -f '%e %M' "$@" > "out-$tool-$name.log" 2>&1 || { echo "FAILED: $*"; cat "out-$tool-$name.log"; exit 1; }
  local t
  t=$(tail -1 "$log")
  echo "$name $tool $t" >> results.txt
  printf '  %-8s %-10s %6s s  %5s MiB\n' "$tool" "$name" "${t% *}" "$(( ${t#* } / 1024 ))"
}

# Restores go to a freshly made ext4 file system per run when we can loop-mount (root): restoring into a
# directory where the previous restore was just deleted makes ext4's inode allocator scan recently freed
# inodes (`recently_deleted` in ext4_create), which dominated and randomised both tools' timings.
fresh_target() { # prints a directory to restore into
  if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null 2>&1; then
    mountpoint -q "$BENCH_DIR/restore-fs" && umount "$BENCH_DIR/restore-fs"
    rm -f "$FS_IMG"
    truncate -s 3G "$FS_IMG"
    # Inode tables and journal initialised now, not by ext4lazyinit in the background of the measured command.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$FS_IMG"
    mkdir -p "$BENCH_DIR/restore-fs"
    if mount -o loop "$FS_IMG" "$BENCH_DIR/restore-fs" 2>/dev/null; then
      sync
      echo "$BENCH_DIR/restore-fs/r"
      return
    fi
  fi
  rm -rf "$BENCH_DIR/restore-plain"
  sync
  echo "$BENCH_DIR/restore-plain"
}

# ensure_corpus: the deterministic ~1 GiB corpus in corpus/, regenerated when the backup section's 1% step has
# changed it (corpus/.changed) or a generation did not finish (no corpus/.complete).
ensure_corpus() {
  if [ -f corpus/.changed ]; then rm -rf corpus; fi
  if [ ! -f corpus/.complete ]; then
    log "generating the corpus (deterministic, ~1 GiB)"
    rm -rf corpus
    python3 - <<'PY'
import os, random
r = random.Random(20261121)
os.makedirs('corpus/large', exist_ok=True)
for i in range(5):                                   # 5 x 100 MiB incompressible
    with open(f'corpus/large/l{i}.bin', 'wb') as f:
        for _ in range(100):
            f.write(r.randbytes(1 << 20))
os.makedirs('corpus/mid', exist_ok=True)
for i in range(200):                                 # 200 x 1 MiB incompressible
    with open(f'corpus/mid/m{i:03}.bin', 'wb') as f:
        f.write(r.randbytes(1 << 20))
vocab = [''.join(r.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(r.randint(2, 9))) for _ in range(5000)]
os.makedirs('corpus/text', exist_ok=True)
for i in range(120):                                 # 120 x 2 MiB text (compressible)
    with open(f'corpus/text/t{i:03}.txt', 'w') as f:
        n = 0
        while n < 2 << 20:
            line = ' '.join(r.choices(vocab, k=12)) + '\n'
            f.write(line)
            n += len(line)
for d in range(40):                                  # 4000 small files
    os.makedirs(f'corpus/small/d{d:02}', exist_ok=True)
    for i in range(100):
        with open(f'corpus/small/d{d:02}/f{i:03}', 'wb') as f:
            f.write(r.randbytes(r.randint(100, 16000)))
open('corpus/.complete', 'w').close()
PY
  fi
}

# change_1pct DIR: the backup section's "~1%" change, made to the corpus (copy) in DIR (same seed, same edits):
# 3 x 1 MiB files rewritten, 4 MiB rewritten in the middle of a 100 MiB file, 1000 lines appended to a text
# file, 10 small files rewritten.
change_1pct() {
  python3 - "$1" <<'PY'
import random, sys
d = sys.argv[1]
r = random.Random(99)
for p in ['mid/m000.bin', 'mid/m001.bin', 'mid/m002.bin']:
    with open(f'{d}/{p}', 'wb') as f: f.write(r.randbytes(1 << 20))
with open(f'{d}/large/l0.bin', 'r+b') as f:          # 4 MiB rewritten in the middle of a large file
    f.seek(50 << 20); f.write(r.randbytes(4 << 20))
with open(f'{d}/text/t000.txt', 'a') as f: f.write('appended line\n' * 1000)
for i in range(10):
    with open(f'{d}/small/d{i:02}/f000', 'wb') as f: f.write(r.randbytes(5000))
PY
}

bench_backup() {
  rm -rf repo-restic repo-tidemark restore-restic restore-tidemark results.txt
  ensure_corpus
  CORPUS_BYTES=$(du -sb --apparent-size corpus | cut -f1)
  CORPUS_FILES=$(find corpus -type f ! -name '.complete' | wc -l)
  find corpus -type f -exec cat {} + > /dev/null   # same warm page cache for both tools

  log "backup: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $RUNS runs per step, median reported"
  for run in $(seq "$RUNS"); do
    rm -rf repo-restic repo-tidemark
    restic init -q -r repo-restic
    "$TM" init -q -r repo-tidemark
    log "run $run: first backup, unchanged re-backup"
    run_measured first restic restic -q -r repo-restic backup corpus
    run_measured first tidemark "$TM" -q -r repo-tidemark backup corpus
    run_measured unchanged restic restic -q -r repo-restic backup corpus
    run_measured unchanged tidemark "$TM" -q -r repo-tidemark backup corpus
  done

  log "changing ~1% of the corpus"
  change_1pct corpus
  touch corpus/.changed   # the next run regenerates the corpus
  run_measured change1pct restic restic -q -r repo-restic backup corpus
  run_measured change1pct tidemark "$TM" -q -r repo-tidemark backup corpus

  log "full restore of the latest snapshot"
  # Both repositories warm in the page cache, like the corpus (tidemark drops packs it writes from the cache).
  find repo-restic repo-tidemark -type f -exec cat {} + > /dev/null
  local dir
  for run in $(seq "$RUNS"); do
    dir=$(fresh_target)
    run_measured restore restic restic -q -r repo-restic restore latest --target "$dir"
    dir=$(fresh_target)
    run_measured restore tidemark "$TM" -q -r repo-tidemark restore latest --target "$dir"
    diff -rq corpus "$dir/corpus" -x .changed > /dev/null || { echo "tidemark's restore differs from the corpus"; exit 1; }
  done
  mountpoint -q "$BENCH_DIR/restore-fs" && umount "$BENCH_DIR/restore-fs"
  rm -f "$FS_IMG"

  REPO_R=$(du -sb repo-restic | cut -f1)
  REPO_T=$(du -sb repo-tidemark | cut -f1)
  render_backup > backup-table.md
  update_doc backup backup-table.md
}

render_backup() {
  python3 - "$CORPUS_BYTES" "$CORPUS_FILES" "$REPO_R" "$REPO_T" "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" <<'PY'
import sys
corpus, files, repo_r, repo_t, rv, tv, cores, day = sys.argv[1:9]
import statistics
runs = {}
for line in open('results.txt'):
    step, tool, secs, kb = line.split()
    runs.setdefault(step, {}).setdefault(tool, []).append((float(secs), int(kb)))
# Median wall time over the runs; peak RSS is the largest seen.
rows = {k: {t: (statistics.median(s for s, _ in v), max(m for _, m in v)) for t, v in d.items()} for k, d in runs.items()}
nruns = max(len(v) for d in runs.values() for v in d.values())
names = {'first': 'first backup', 'unchanged': 'unchanged re-backup', 'change1pct': 'backup after 1% change', 'restore': 'full restore'}
targets = {'first': 1.5, 'unchanged': 2.0, 'change1pct': None, 'restore': 1.5}
mib = lambda b: int(b) / (1 << 20)
print(f'Measured by `scripts/bench.sh` on {day}: {cores} cores, same machine, same run, warm page cache;')
print(f'median of {nruns} runs per step (the 1% change step runs once), restores into a fresh ext4 file system each;')
print('every measured command starts after a `sync`.')
print(f'Corpus: {mib(corpus):.0f} MiB in {files} files (5 x 100 MiB and 200 x 1 MiB random, 120 x 2 MiB text, 4000 small files).')
print(f'Versions: `{rv}`; `{tv}`. Both use their default compression (auto) and scrypt key parameters.\n')
print('| step | restic (s) | tidemark (s) | speed-up | target | restic peak RSS (MiB) | tidemark peak RSS (MiB) |')
print('|---|---:|---:|---:|---:|---:|---:|')
for k in ['first', 'unchanged', 'change1pct', 'restore']:
    r, t = rows[k]['restic'], rows[k]['tidemark']
    tgt = targets[k]
    mark = '' if tgt is None else (f'>= {tgt}x ' + ('met' if r[0] / t[0] >= tgt else 'NOT met'))
    print(f'| {names[k]} | {r[0]:.2f} | {t[0]:.2f} | {r[0]/t[0]:.2f}x | {mark} | {r[1]/1024:.0f} | {t[1]/1024:.0f} |')
print(f'\nRepository size after the three backups: restic {mib(repo_r):.0f} MiB, tidemark {mib(repo_t):.0f} MiB.')
PY
}

# ---- mount section -------------------------------------------------------------------------------------------
MOUNT_LARGE_MIB=${BENCH_MOUNT_LARGE_MIB:-256}
MOUNT_LOG_MIB=${BENCH_MOUNT_LOG_MIB:-256}
MOUNT_SMALL_DIRS=${BENCH_MOUNT_SMALL_DIRS:-200}
MOUNT_OTHER_DIRS=40
now() { date +%s.%N; }

# warm_memory MIB: touches MIB MiB of fresh memory and frees it. On this VM (virtio-balloon with free page
# reporting) memory the guest left free for a few seconds goes back to the host, and the first touch of such a
# page then costs ~3-10 us instead of ~0.3 (2 GiB took 2.4-5.9 s to touch once, then ~0.3 s). Page-cache
# allocations of the measured commands varied 2x with it, so the timed commands of the inplace and mount
# sections start right after the same warm-up, and they all draw on memory the host still backs.
warm_memory() {
  python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1]) << 20
b = bytearray(n)
b[::4096] = b'\x01' * len(range(0, n, 4096))
PY
}
WARM_MIB=${BENCH_WARM_MIB:-2048}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; } # START END: seconds between

# stop_mount TOOL: stops the mount process $MOUNT_PID the way a user would (restic quits on Ctrl-C, SIGINT;
# tidemark on SIGTERM as well) and waits until it has exited and $MNT is unmounted.
stop_mount() {
  local tool=$1 n=0
  if [ "$tool" = restic ]; then kill -INT "$MOUNT_PID"; else kill -TERM "$MOUNT_PID"; fi
  while kill -0 "$MOUNT_PID" 2>/dev/null; do
    n=$((n + 1))
    if [ $n -gt 300 ]; then
      echo "warning: $tool mount did not exit within 30 s of the signal; killing it" >&2
      kill -KILL "$MOUNT_PID" 2>/dev/null || true
    fi
    sleep 0.1
  done
  wait "$MOUNT_PID" || true   # restic exits with 130 after SIGINT
  MOUNT_PID=""
  n=0
  while is_mounted "$MNT"; do
    n=$((n + 1))
    if [ $n -gt 100 ]; then
      echo "warning: $MNT still mounted 10 s after $tool exited; fusermount3 -uz" >&2
      fusermount3 -uz "$MNT" || umount -l "$MNT"
    fi
    sleep 0.1
  done
}

# wait_for_mount TOOL LOG DIR SECONDS: waits until DIR shows in the mount $MOUNT_PID serves; dies with the mount's
# log when the process exits first or DIR has not appeared after SECONDS.
wait_for_mount() {
  local tool=$1 log=$2 dir=$3 n=0
  until [ -d "$dir" ]; do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$log"; die "$tool mount exited before the snapshot appeared"; }
    n=$((n + 1))
    [ $n -le $(($4 * 10)) ] || { cat "$log"; die "$tool mount: $dir did not appear within $4 s"; }
    sleep 0.1
  done
}

# mount_session TOOL OP RUN: cold page cache, fresh mount process, one timed operation; appends
# "TOOL OP SECONDS VALUE VMHWM_KIB READY_SECONDS" to mount-results.txt.
mount_session() {
  local tool=$1 op=$2 run=$3 log="mount-$1-$2-$3.log" snap="$MNT/snapshots/latest"
  local t0 t1 ready secs value hwm n
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  mkdir -p "$MNT"
  if [ "$op" = rsync ]; then   # a fresh, empty destination that costs no disk I/O
    if is_mounted "$DEST"; then umount "$DEST"; fi
    rm -rf "$DEST"
    mkdir -p "$DEST"
    mount -t tmpfs -o size=2g tidemark-bench "$DEST"
  fi
  sync
  echo 3 > /proc/sys/vm/drop_caches
  t0=$(now)
  # Started directly in the background (no wrapper), so $! is the mount process itself.
  case $tool in
    restic) restic -r repo-mount mount "$MNT" > "$log" 2>&1 & ;;
    tidemark) "$TM" -r repo-mount mount "$MNT" > "$log" 2>&1 & ;;
  esac
  MOUNT_PID=$!
  wait_for_mount "$tool" "$log" "$snap/mountcorpus/small" 60
  ready=$(elapsed "$t0" "$(now)")
  [ "$(cat "/proc/$MOUNT_PID/comm")" = "$tool" ] || die "PID $MOUNT_PID is $(cat "/proc/$MOUNT_PID/comm"), not $tool"

  warm_memory "$WARM_MIB"   # anonymous memory only: the page cache stays cold
  case $op in
    read | readlog)
      local file="$snap/mountcorpus/large.bin"
      if [ "$op" = readlog ]; then file="$snap/mountcorpus/large.log"; fi
      t0=$(now)
      cat "$file" > /dev/null
      t1=$(now)
      value=$(stat -c %s "$file")
      ;;
    find)
      t0=$(now)
      value=$(find "$snap/" | wc -l)
      t1=$(now)
      [ "$value" = "$MOUNT_ENTRIES" ] || die "$tool mount: find saw $value entries, expected $MOUNT_ENTRIES"
      ;;
    rsync)
      t0=$(now)
      rsync -a "$snap/mountcorpus/small/" "$DEST/"
      t1=$(now)
      value=$(find "$DEST" -type f | wc -l)
      [ "$value" = "$MOUNT_SMALL_FILES" ] || die "$tool mount: rsync copied $value files, expected $MOUNT_SMALL_FILES"
      diff -rq mountcorpus/small "$DEST" > /dev/null || die "$tool mount: rsync copy differs from mountcorpus/small"
      ;;
  esac
  secs=$(elapsed "$t0" "$t1")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MOUNT_PID/status")

  stop_mount "$tool"
  if is_mounted "$DEST"; then umount "$DEST"; fi

  echo "$tool $op $secs $value $hwm $ready" >> mount-results.txt
  printf '  %-8s %-7s %8s s  (%s)  ready after %s s  VmHWM %s MiB\n' "$tool" "$op" "$secs" "$value" "$ready" "$((hwm / 1024))"
}

bench_mount() {
  [ "$(id -u)" = 0 ] || die "the mount benchmark needs root (drop_caches, tmpfs)"
  [ -e /dev/fuse ] || die "/dev/fuse is missing"
  local params="large_mib=$MOUNT_LARGE_MIB log_mib=$MOUNT_LOG_MIB small_dirs=$MOUNT_SMALL_DIRS other_dirs=$MOUNT_OTHER_DIRS seed=20261122"
  if [ ! -d mountcorpus ] || [ "$(cat mountcorpus.complete 2>/dev/null)" != "$params" ]; then
    log "generating the mount dataset (deterministic: $params)"
    rm -rf mountcorpus mountcorpus.complete mountcorpus.logratio
    python3 - "$MOUNT_LARGE_MIB" "$MOUNT_SMALL_DIRS" "$MOUNT_OTHER_DIRS" "$MOUNT_LOG_MIB" <<'PY'
import os, random, sys
large_mib, small_dirs, other_dirs, log_mib = map(int, sys.argv[1:5])
r = random.Random(20261122)
os.makedirs('mountcorpus', exist_ok=True)
with open('mountcorpus/large.bin', 'wb') as f:       # one large incompressible file
    for _ in range(large_mib):
        f.write(r.randbytes(1 << 20))
for d in range(small_dirs):                          # dirs x 100 small files, 1-8 KiB random
    os.makedirs(f'mountcorpus/small/d{d:03}', exist_ok=True)
    for i in range(100):
        with open(f'mountcorpus/small/d{d:03}/f{i:03}', 'wb') as f:
            f.write(r.randbytes(r.randint(1024, 8192)))
for d in range(other_dirs):                          # more entries: dirs x 100 tiny files
    os.makedirs(f'mountcorpus/other/o{d:02}', exist_ok=True)
    for i in range(100):
        with open(f'mountcorpus/other/o{d:02}/e{i:03}.txt', 'wb') as f:
            f.write(r.randbytes(r.randint(0, 200)))
# One large log-like text file (syslog lines of web, ssh and application services): compressible, as logs are,
# but not trivially: every line has its own numbers, addresses and random identifiers, so zstd keeps about a third.
g = random.Random(20261207)
rb = g.getrandbits
hosts = [f'web-{i:02}' for i in range(12)] + [f'db-{i:02}' for i in range(4)]
users = [f'user{i:03}' for i in range(300)]
paths = ['/api/v1/orders', '/api/v1/users', '/login', '/static/app.js', '/healthz', '/api/v2/search', '/metrics']
agents = ['curl/7.88.1', 'Mozilla/5.0 (X11; Linux x86_64)', 'Go-http-client/1.1', 'python-requests/2.31']
msgs = ['connection reset by peer', 'timeout waiting for upstream', 'cache miss', 'retrying request', 'slow query']
ops = ('read', 'write', 'list', 'delete')
codes = (200, 200, 200, 304, 404, 500, 200, 301)
t0 = t = 1764547200   # 2025-12-01T00:00:00Z
left = log_mib << 20
with open('mountcorpus/large.log', 'wb') as f:
    lines, size = [], 0
    while left > 0:
        t += rb(2)
        d, s = divmod(t - t0, 86400)
        ts = f'Dec {d % 28 + 1:2} {s // 3600:02}:{s // 60 % 60:02}:{s % 60:02} {hosts[rb(4)]}'
        k = rb(3)
        if k < 3:
            line = (f'{ts} nginx[{1000 + rb(12)}]: 10.{rb(8)}.{rb(8)}.{rb(8)} - {users[rb(8) % 300]} '
                    f'"GET {paths[rb(3) % 7]}?id={rb(24)} HTTP/1.1" {codes[rb(3)]} {rb(16)} "{agents[rb(2)]}" '
                    f'rt={rb(10) / 1000:.3f} sid={rb(64):016x}\n')
        elif k < 5:
            line = (f'{ts} sshd[{rb(16)}]: Accepted publickey for {users[rb(8) % 300]} from '
                    f'192.168.{rb(8)}.{rb(8)} port {rb(16)} ssh2: ED25519 SHA256:{rb(256):064x}\n')
        elif k < 7:
            line = (f'{ts} app[{rb(15)}]: level=info req={rb(96):024x} user={users[rb(8) % 300]} '
                    f'op={ops[rb(2)]} bytes={rb(20)} ms={rb(9)} span={rb(48):012x}\n')
        else:
            line = f'{ts} app[{rb(15)}]: level=warn req={rb(64):016x} msg="{msgs[rb(3) % 5]}" attempt={rb(2)}\n'
        lines.append(line)
        size += len(line)
        if size >= 1 << 20 or size >= left:
            data = ''.join(lines).encode()[:left]
            f.write(data)
            left -= len(data)
            lines, size = [], 0
PY
    # What zstd (level 3, about restic's default) keeps of the log file, for the table's dataset line.
    if command -v zstd > /dev/null; then
      echo $(( $(zstd -q -3 -c mountcorpus/large.log | wc -c) * 100 / $(stat -c %s mountcorpus/large.log) )) > mountcorpus.logratio
    fi
    echo "$params" > mountcorpus.complete   # outside the dataset, so it is not in the snapshot
  fi
  MOUNT_ENTRIES=$(( $(find mountcorpus | wc -l) + 1 ))   # `find snapshots/latest/` also lists latest/ itself
  MOUNT_SMALL_FILES=$(find mountcorpus/small -type f | wc -l)
  local large_bytes log_bytes
  large_bytes=$(stat -c %s mountcorpus/large.bin)
  log_bytes=$(stat -c %s mountcorpus/large.log)

  log "mount: making the repository with restic"
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  rm -rf repo-mount mount-results.txt mount-*.log
  restic init -q -r repo-mount
  restic -q -r repo-mount backup mountcorpus
  # restic's cache (RESTIC_CACHE_DIR) as after normal use: every tree in it. It is kept for all runs.
  restic -q -r repo-mount ls latest > /dev/null

  log "mount: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $RUNS run(s), cold page cache, fresh mount each"
  local run op first second
  for run in $(seq "$RUNS"); do
    log "run $run"
    if [ $((run % 2)) = 1 ]; then first=restic second=tidemark; else first=tidemark second=restic; fi
    for op in read readlog find rsync; do
      mount_session "$first" "$op" "$run"
      mount_session "$second" "$op" "$run"
    done
  done
  rmdir "$DEST" 2>/dev/null || true

  render_mount "$large_bytes" "$log_bytes" "$(cat mountcorpus.logratio 2>/dev/null || echo '?')" \
    "$(du -sb repo-mount | cut -f1)" > mount-table.md
  update_doc mount mount-table.md
}

render_mount() { # LARGE_BYTES LOG_BYTES LOG_ZSTD_PERCENT REPO_BYTES
  python3 - "$1" "$2" "$3" "$4" "$MOUNT_SMALL_DIRS" "$MOUNT_OTHER_DIRS" "$MOUNT_ENTRIES" "$(restic version)" "$("$TM" version)" \
    "$(nproc)" "$(uname -r)" "$(date -u +%Y-%m-%d)" <<'PY'
import statistics, sys
large, logsize, logpct, repo, small_dirs, other_dirs, entries, rv, tv, cores, kernel, day = sys.argv[1:13]
res = {}
for line in open('mount-results.txt'):
    tool, op, secs, value, hwm, ready = line.split()
    res.setdefault(tool, {}).setdefault(op, []).append((float(secs), int(value), int(hwm), float(ready)))
med = lambda tool, op, i=0: statistics.median(x[i] for x in res[tool][op])
nruns = max(len(v) for d in res.values() for v in d.values())
mib = lambda b: int(b) / (1 << 20)
mbps = {t: int(large) / 1e6 / med(t, 'read') for t in res}
logmbps = {t: int(logsize) / 1e6 / med(t, 'readlog') for t in res}
peak = {t: max(x[2] for v in res[t].values() for x in v) / 1024 for t in res}
ready = {t: statistics.median(x[3] for v in res[t].values() for x in v) for t in res}
small_files = int(small_dirs) * 100
print(f'Measured by `scripts/bench.sh mount` on {day}: {cores} cores, Linux {kernel}, same machine, same run;')
print(f'median of {nruns} run{"s" if nruns != 1 else ""}. Every figure is one operation in a fresh mount process started after')
print('`sync; echo 3 > /proc/sys/vm/drop_caches` (cold page cache); restic\'s cache directory is kept between runs.')
print(f'Dataset: one snapshot of `mountcorpus/` made by `restic backup` (repository {mib(repo):.0f} MiB), mounted by both:')
print(f'`large.bin` {mib(large):.0f} MiB random; `large.log` {mib(logsize):.0f} MiB of syslog-like text (zstd -3 keeps {logpct}%);')
print(f'`small/` {small_dirs} dirs x 100 files of 1-8 KiB random ({small_files:,} files);')
print(f'`other/` {other_dirs} dirs x 100 tiny files; {int(entries):,} entries in all.')
print(f'Versions: `{rv}`; `{tv}`.\n')
print('| measure | restic | tidemark | ratio | target |')
print('|---|---:|---:|---:|---|')
def row(name, r, t, ratio, target, met, fmt):
    print(f'| {name} | {fmt(r)} | {fmt(t)} | {ratio:.2f}x | {target} {"met" if met else "NOT met"} |')
ratio = mbps['tidemark'] / mbps['restic']
row('sequential read of `large.bin` (MB/s)', mbps['restic'], mbps['tidemark'], ratio, '>= 4x', ratio >= 4, lambda v: f'{v:.0f}')
ratio = logmbps['tidemark'] / logmbps['restic']
row('sequential read of `large.log` (MB/s)', logmbps['restic'], logmbps['tidemark'], ratio, '>= 4x', ratio >= 4, lambda v: f'{v:.0f}')
r, t = med('restic', 'find'), med('tidemark', 'find')
row(f'`find snapshots/latest/` (s, {int(entries):,} entries)', r, t, r / t, '>= 1.5x', r / t >= 1.5, lambda v: f'{v:.3f}')
r, t = med('restic', 'rsync'), med('tidemark', 'rsync')
row(f'`rsync -a` of `small/` (s, {small_files:,} files)', r, t, r / t, '>= 5x', r / t >= 5, lambda v: f'{v:.3f}')
r, t = peak['restic'], peak['tidemark']
row('peak RSS of the mount process (MiB)', r, t, r / t, 'below restic:', t < r, lambda v: f'{v:.0f}')
print('\nRatios are tidemark\'s advantage (MB/s: tidemark / restic; times and RSS: restic / tidemark); 1 MB = 10^6 bytes.')
print(f'Peak RSS is the largest VmHWM over all sessions of a tool. Median time from starting the mount until')
print(f'`snapshots/latest/mountcorpus/small` existed: restic {ready["restic"]:.2f} s, tidemark {ready["tidemark"]:.2f} s (not in the figures above).')
PY
}

# ---- inplace section -----------------------------------------------------------------------------------------
# One snapshot of corpus/ made by restic; a copy of the corpus diverged by ~1% is brought back to it three ways.

# corpus_fingerprint: names, types, sizes, modes and mtimes of everything in corpus/ (a regenerated corpus has
# new mtimes, so a repository made from an earlier one no longer matches it).
corpus_fingerprint() { find corpus -printf '%P %y %s %m %T@\n' | LC_ALL=C sort | sha256sum | cut -d' ' -f1; }

# What diverge does to the copy (render_inplace prints this; keep the two in step).
INPLACE_CHANGE="the backup section's ~1% change (3 x 1 MiB files rewritten, 4 MiB rewritten in the middle of a
100 MiB file, 1000 lines appended to a 2 MiB text file, 10 small files rewritten) plus 5 small files deleted,
3 new files (1 MiB, 21 kB, 8 kB) and one file's mode changed (chmod 600)"

# diverge DIR: makes the corpus copy in DIR differ from the snapshot (see INPLACE_CHANGE).
diverge() {
  change_1pct "$1"
  python3 - "$1" <<'PY'
import os, random, sys
d = sys.argv[1]
r = random.Random(100)
for i in range(5):                                   # 5 small files deleted
    os.remove(f'{d}/small/d{10 + i:02}/f001')
with open(f'{d}/mid/new.bin', 'wb') as f: f.write(r.randbytes(1 << 20))   # 3 new files
with open(f'{d}/text/new.txt', 'w') as f: f.write('a line that is not in the snapshot\n' * 600)
with open(f'{d}/small/d00/new', 'wb') as f: f.write(r.randbytes(8000))
os.chmod(f'{d}/text/t001.txt', 0o600)                # one mode change
PY
}

# diverged_work: sets WORK to a directory on a fresh file system holding a copy of the corpus diverged by
# diverge, written out (sync) and still in the page cache.
diverged_work() {
  WORK=$(fresh_target)
  mkdir -p "$WORK"
  cp -a corpus/. "$WORK/"
  diverge "$WORK"
  sync
}

# verify_work ROUTE: WORK must equal the pristine corpus in content, presence and metadata.
verify_work() {
  diff -r corpus "$WORK" > "inplace-$1-check.txt" 2>&1 || {
    head -20 "inplace-$1-check.txt" >&2
    die "inplace: after the $1 route $WORK differs from the corpus (diff -r; full list in $BENCH_DIR/inplace-$1-check.txt)"
  }
  rsync -a -n -i -c --delete corpus/ "$WORK/" > "inplace-$1-check.txt" 2>&1
  if [ -s "inplace-$1-check.txt" ]; then
    head -20 "inplace-$1-check.txt" >&2
    die "inplace: after the $1 route $WORK differs from the corpus (rsync -a -n -i -c --delete lists changes)"
  fi
}


# inplace_timed ROUTE RUN COMMAND...: runs COMMAND under /usr/bin/time, stdout to inplace-ROUTE-RUN.out and
# stderr to .err; sets T_SECS (wall) and T_KIB (peak RSS). The memory warm-up comes first (warm_memory).
inplace_timed() {
  local route=$1 run=$2 t
  shift 2
  local base="inplace-$route-$run"
  warm_memory "$WARM_MIB"
  if ! /usr/bin/time -o "$base.time" -f '%e %M' "$@" > "$base.out" 2> "$base.err"; then
    echo "FAILED: $*" >&2
    tail -20 "$base.err" "$base.out" "$base.time" >&2
    exit 1
  fi
  t=$(tail -1 "$base.time")
  T_SECS=${t% *} T_KIB=${t#* }
}

# tidemark_summary OUT: "BYTES_FETCHED BYTES_REUSED" from the JSON summary (the last line of OUT).
tidemark_summary() {
  python3 - "$1" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
s = json.loads(lines[-1]) if lines else {}
if s.get('message_type') != 'summary':
    sys.exit(f'{sys.argv[1]}: the last line is not the JSON summary')
if s.get('error_count'):
    sys.exit(f'tidemark restore reported {s["error_count"]} errors')
print(s['bytes_fetched'], s['bytes_reused'])
PY
}

inplace_tidemark() { # RUN
  local run=$1 fr
  diverged_work
  inplace_timed tidemark "$run" "$TM" -r repo-inplace restore latest:corpus --target "$WORK" --delete --json
  fr=$(tidemark_summary "inplace-tidemark-$run.out") || die "inplace: could not read tidemark's summary"
  verify_work tidemark
  echo "tidemark $T_SECS $T_KIB $fr" >> inplace-results.txt
  printf '  %-8s %7s s  %5s MiB  fetched %s B, reused %s B\n' tidemark "$T_SECS" "$((T_KIB / 1024))" "${fr% *}" "${fr#* }"
}

# The user's route with a tidemark mount running (as the rsync route has restic's): the directory found
# in the mount is restored by its mount path. The mount is started and found ready before the clock
# starts, as restic's; the restore gets no password (the mount hands it the key) and reads the
# repository directly, not through FUSE.
inplace_tmount() { # RUN
  local run=$1 n=0 fr t0 t1
  diverged_work
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  mkdir -p "$MNT"
  t0=$(now)
  "$TM" -r repo-inplace mount "$MNT" > "inplace-tmount-$run.log" 2>&1 &
  MOUNT_PID=$!
  until [ -d "$MNT/snapshots/latest/corpus" ]; do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "inplace-tmount-$run.log"; die "tidemark mount exited before the snapshot appeared"; }
    n=$((n + 1))
    [ $n -le 600 ] || { cat "inplace-tmount-$run.log"; die "tidemark mount: $MNT/snapshots/latest/corpus did not appear within 60 s"; }
    sleep 0.02
  done
  t1=$(now)
  inplace_timed tmount "$run" env -u TIDEMARK_PASSWORD -u RESTIC_PASSWORD \
    "$TM" restore "$MNT/snapshots/latest/corpus" --target "$WORK" --delete --json
  stop_mount tidemark
  fr=$(tidemark_summary "inplace-tmount-$run.out") || die "inplace: could not read tidemark's summary"
  verify_work tmount
  echo "tmount $T_SECS $T_KIB $fr $(elapsed "$t0" "$t1")" >> inplace-results.txt
  printf '  %-8s %7s s  %5s MiB  fetched %s B, reused %s B (tidemark mount ready after %s s)\n' tmount "$T_SECS" \
    "$((T_KIB / 1024))" "${fr% *}" "${fr#* }" "$(elapsed "$t0" "$t1")"
}

inplace_rsync() { # RUN
  local run=$1 n=0 hwm
  diverged_work
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  mkdir -p "$MNT"
  local t0 t1
  t0=$(now)
  restic -r repo-inplace mount "$MNT" > "inplace-mount-$run.log" 2>&1 &
  MOUNT_PID=$!
  until [ -d "$MNT/snapshots/latest/corpus" ]; do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "inplace-mount-$run.log"; die "restic mount exited before the snapshot appeared"; }
    n=$((n + 1))
    [ $n -le 600 ] || { cat "inplace-mount-$run.log"; die "restic mount: $MNT/snapshots/latest/corpus did not appear within 60 s"; }
    sleep 0.02
  done
  t1=$(now)
  inplace_timed rsync "$run" rsync -a --delete "$MNT/snapshots/latest/corpus/" "$WORK/"
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MOUNT_PID/status")
  stop_mount restic
  verify_work rsync
  echo "rsync $T_SECS $T_KIB $hwm $(elapsed "$t0" "$t1")" >> inplace-results.txt
  printf '  %-8s %7s s  %5s MiB  (restic mount VmHWM %s MiB)\n' rsync "$T_SECS" "$((T_KIB / 1024))" "$((hwm / 1024))"
}

inplace_restic() { # RUN
  local run=$1 empty
  empty=$(fresh_target)
  mkdir -p "$empty"
  inplace_timed restic "$run" restic -q -r repo-inplace restore latest --target "$empty"
  [ "$(find "$empty/corpus" -type f | wc -l)" = "$(find corpus -type f | wc -l)" ] ||
    die "inplace: restic's full restore in $empty does not have the corpus's files"
  echo "restic $T_SECS $T_KIB - -" >> inplace-results.txt
  printf '  %-8s %7s s  %5s MiB\n' restic "$T_SECS" "$((T_KIB / 1024))"
}

bench_inplace() {
  [ -e /dev/fuse ] || die "/dev/fuse is missing (the rsync route reads from restic mount)"
  command -v rsync >/dev/null 2>&1 || die "rsync is missing"
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  ensure_corpus
  local fp
  fp=$(corpus_fingerprint)
  if [ -f repo-inplace/config ] && [ "$(cat repo-inplace.corpus 2>/dev/null)" = "$fp" ]; then
    log "inplace: reusing repo-inplace (made by restic from this very corpus)"
  else
    log "inplace: making the repository with restic (restic backup corpus)"
    rm -rf repo-inplace repo-inplace.corpus
    restic init -q -r repo-inplace
    restic -q -r repo-inplace backup corpus
    echo "$fp" > repo-inplace.corpus
  fi
  # restic's cache (RESTIC_CACHE_DIR) as after normal use: every tree in it. Repository and corpus warm in the
  # page cache (the corpus is read again by every cp -a).
  restic -q -r repo-inplace ls latest > /dev/null
  find repo-inplace corpus -type f -exec cat {} + > /dev/null
  CORPUS_BYTES=$(du -sb --apparent-size corpus | cut -f1)
  CORPUS_FILES=$(find corpus -type f ! -name '.complete' | wc -l)

  log "inplace: tidemark $("$TM" version | cut -d' ' -f2) vs rsync from restic $(restic version | cut -d' ' -f2) mount vs full restic restore: $RUNS run(s), warm page cache"
  rm -f inplace-results.txt inplace-*.out inplace-*.err inplace-*.time inplace-*-check.txt inplace-mount-*.log
  local run route
  local -a order
  for run in $(seq "$RUNS"); do
    case $((run % 4)) in   # rotate the order of the routes between runs
      1) order=(tmount tidemark rsync restic) ;;
      2) order=(rsync restic tmount tidemark) ;;
      3) order=(restic tmount tidemark rsync) ;;
      *) order=(tidemark rsync restic tmount) ;;
    esac
    log "run $run: ${order[*]}"
    for route in "${order[@]}"; do
      "inplace_$route" "$run"
    done
  done
  if mountpoint -q "$BENCH_DIR/restore-fs"; then umount "$BENCH_DIR/restore-fs"; fi
  rm -f "$FS_IMG"

  render_inplace "$(du -sb repo-inplace | cut -f1)" > inplace-table.md
  update_doc inplace inplace-table.md
}

render_inplace() { # REPO_BYTES
  python3 - "$1" "$CORPUS_BYTES" "$CORPUS_FILES" "$INPLACE_CHANGE" "$(restic version)" "$("$TM" version)" \
    "$(rsync --version | head -1 | tr -s ' ')" "$(nproc)" "$(uname -r)" \
    "$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(date -u +%Y-%m-%d)" <<'PY'
import statistics, sys, textwrap
repo, corpus, files, change, rv, tv, syncv, cores, kernel, mem, day = sys.argv[1:12]
res = {}
for line in open('inplace-results.txt'):
    route, secs, kib, x, y, *rest = line.split()
    res.setdefault(route, []).append((float(secs), int(kib), x, y, *rest))
med = lambda r: statistics.median(v[0] for v in res[r])
peak = lambda r: max(v[1] for v in res[r]) / 1024       # MiB, largest over the runs
nruns = max(len(v) for v in res.values())
mib = lambda b: int(b) / (1 << 20)
fetched = int(statistics.median(int(v[2]) for v in res['tidemark']))
reused = int(statistics.median(int(v[3]) for v in res['tidemark']))
mount_hwm = max(int(v[2]) for v in res['rsync']) / 1024
t, tm, r, c = med('tidemark'), med('tmount'), med('rsync'), med('restic')
m = statistics.median(float(v[3]) for v in res['rsync'])   # restic mount: start until the snapshot appears
mt = statistics.median(float(v[4]) for v in res['tmount'])  # tidemark mount: the same
verdict = lambda x: f'>= 5x {"met" if x >= 5 else "NOT met"}'
print(f'Measured by `scripts/bench.sh inplace` on {day}: {cores} cores, Linux {kernel}, {mem} GiB RAM, same machine, same run;')
print(f'median of {nruns} run{"s" if nruns != 1 else ""} per route (route order rotated between runs), warm page cache (nothing dropped).')
print(f'Repository: one snapshot of `corpus/` made by `restic backup` ({mib(repo):.0f} MiB). Corpus: {mib(corpus):.0f} MiB in {files} files')
print('(5 x 100 MiB and 200 x 1 MiB random, 120 x 2 MiB text, 4000 small files).')
print(textwrap.fill('Before every run of an in-place route, a fresh ext4 file system gets `cp -a corpus/.`, which is then changed '
                    f'by {" ".join(change.split())}; then `sync`. The full restore goes into an empty directory on a fresh '
                    'ext4 file system. After each in-place route the copy was checked against the corpus (`diff -r`, and '
                    '`rsync -a -n -i -c --delete` listing nothing).', width=116, break_on_hyphens=False))
print(f'Versions: `{rv}`; `{tv}`; `{syncv}`.\n')
print('With the mount already running (the user browsed it and found what to bring back):\n')
print('| route | seconds | peak RSS (MiB) | tidemark\'s advantage | target |')
print('|---|---:|---:|---:|---|')
print(f'| `tidemark restore MNT/snapshots/latest/corpus --target WORK --delete`, `tidemark mount` running | {tm:.2f} '
      f'| {peak("tmount"):.0f} | | |')
print(f'| `rsync -a --delete MNT/snapshots/latest/corpus/ WORK/`, `restic mount` running | {r:.2f} '
      f'| rsync {peak("rsync"):.0f}, mount {mount_hwm:.0f} | {r / tm:.2f}x | {verdict(r / tm)} |')
print('\nFrom nothing running (for scale; the target is the comparison above):\n')
print('| route | seconds | peak RSS (MiB) | tidemark\'s advantage |')
print('|---|---:|---:|---:|')
print(f'| `tidemark restore latest:corpus --target WORK --delete` (derives the key from the password) | {t:.2f} '
      f'| {peak("tidemark"):.0f} | |')
print(f'| `restic mount` starting (until the snapshot appears: {m:.2f} s), then the rsync above | {m + r:.2f} | | '
      f'{(m + r) / t:.2f}x |')
print(f'| `tidemark mount` starting ({mt:.2f} s), then the mount-path restore above | {mt + tm:.2f} | | '
      f'{(m + r) / (mt + tm):.2f}x (vs the restic row) |')
print(f'| full `restic restore` into an empty directory | {c:.2f} | {peak("restic"):.0f} | {c / t:.2f}x |')
print(f'\ntidemark fetched {mib(fetched):.1f} MiB from the repository and reused {mib(reused):.1f} MiB already in the copy')
print(f'({fetched:,} and {reused:,} bytes; reused counts unchanged files too). Seconds are the restoring command alone')
print('(/usr/bin/time). The mount-path restore runs without a password: the mount hands it the master key, so it skips')
print('the key derivation (scrypt with this restic-made key\'s parameters); it loads the index and reads the repository')
print('itself, not through FUSE. `latest:corpus` derives the key and loads the index. Rows with a mount starting add the')
print('time from starting the mount process until the snapshot directory appeared. Peak RSS is the largest over the runs;')
print('for the rsync route, that of rsync and, separately, the VmHWM of the restic mount process it read from.')
PY
}

# ---- maint section -------------------------------------------------------------------------------------------

bench_maint() {
  rm -f maint-results.txt results.txt
  ensure_corpus
  local src="$BENCH_DIR/maint-src"
  if [ ! -f maint-repo/.complete ]; then
    log "maint: building a repository with history (restic: corpus + 3 rounds of ~10% changes, forget --keep-last 1)"
    rm -rf maint-repo "$src"
    cp -a corpus "$src"
    restic init -q -r maint-repo
    restic -q -r maint-repo backup "$src"
    for round in 1 2 3; do
      python3 - "$src" "$round" <<'PY'
import random, sys
d, rnd = sys.argv[1], int(sys.argv[2])
r = random.Random(1000 + rnd)
for i in r.sample(range(200), 20):                   # 20 of the 1 MiB files rewritten
    with open(f'{d}/mid/m{i:03}.bin', 'wb') as f: f.write(r.randbytes(1 << 20))
with open(f'{d}/large/l{rnd}.bin', 'r+b') as f:      # 16 MiB rewritten inside a large file
    f.seek(20 << 20); f.write(r.randbytes(16 << 20))
for i in r.sample(range(120), 12):                   # 12 text files rewritten
    with open(f'{d}/text/t{i:03}.txt', 'w') as f: f.write(' '.join(str(r.random()) for _ in range(150000)))
PY
      restic -q -r maint-repo backup "$src"
    done
    restic -q -r maint-repo forget --keep-last 1
    touch maint-repo/.complete
  fi
  MAINT_BYTES=$(du -sb maint-repo | cut -f1)
  log "maint: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $RUNS runs, median"
  for run in $(seq "$RUNS"); do
    for tool in restic tidemark; do
      rm -rf maint-work
      cp -a maint-repo maint-work
      sync
      if [ "$tool" = restic ]; then
        run_measured prune restic restic -q -r maint-work prune
      else
        run_measured prune tidemark "$TM" -q -r maint-work prune
      fi
      PRUNED_BYTES=$(du -sb maint-work | cut -f1)
    done
  done
  # check --read-data on the pruned repository, page cache warm for both.
  find maint-work -type f -exec cat {} + > /dev/null
  for run in $(seq "$RUNS"); do
    run_measured check restic restic -q -r maint-work check --read-data
    run_measured check tidemark "$TM" -q -r maint-work check --read-data
  done
  rm -rf maint-work
  mv results.txt maint-results.txt
  render_maint > maint-table.md
  update_doc maint maint-table.md
}

render_maint() {
  python3 - "$MAINT_BYTES" "$PRUNED_BYTES" "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" <<'PY'
import statistics, sys
repo, pruned, rv, tv, cores, day = sys.argv[1:7]
runs = {}
for line in open('maint-results.txt'):
    step, tool, secs, kb = line.split()
    runs.setdefault(step, {}).setdefault(tool, []).append((float(secs), int(kb)))
nruns = max(len(v) for d in runs.values() for v in d.values())
mib = lambda b: int(b) / (1 << 20)
print(f'Measured by `scripts/bench.sh maint` on {day}: {cores} cores, same machine, same run; median of {nruns} runs.')
print(f'Repository: made by restic: the corpus, then 3 rounds of changes (20 x 1 MiB files, 16 MiB inside a large file,')
print(f'12 text files), each backed up, then `forget --keep-last 1`: {mib(repo):.0f} MiB before prune, {mib(pruned):.0f} MiB after.')
print('Each prune runs on a fresh copy of that repository (default `--max-unused 5%`); `check --read-data` runs on the')
print(f'pruned repository with its files in the page cache. Versions: `{rv}`; `{tv}`.\n')
print('| step | restic (s) | tidemark (s) | speed-up | target | restic peak RSS (MiB) | tidemark peak RSS (MiB) |')
print('|---|---:|---:|---:|---:|---:|---:|')
for k, name in [('prune', '`prune`'), ('check', '`check --read-data`')]:
    r = statistics.median(s for s, _ in runs[k]['restic']); t = statistics.median(s for s, _ in runs[k]['tidemark'])
    rm = max(m for _, m in runs[k]['restic']) / 1024; tm = max(m for _, m in runs[k]['tidemark']) / 1024
    print(f'| {name} | {r:.2f} | {t:.2f} | {r/t:.2f}x | >= 1.5x {"met" if r / t >= 1.5 else "NOT met"} | {rm:.0f} | {tm:.0f} |')
PY
}

# ---- cycle section -------------------------------------------------------------------------------------------

# change_cycle DIR SEED: a ~1% change (3 x 1 MiB files, 4 MiB inside a large file, 10 small files), different per seed.
change_cycle() {
  python3 - "$1" "$2" <<'PY'
import random, sys
d, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(5000 + seed)
for i in r.sample(range(200), 3):
    with open(f'{d}/mid/m{i:03}.bin', 'wb') as f: f.write(r.randbytes(1 << 20))
with open(f'{d}/large/l{seed % 5}.bin', 'r+b') as f:
    f.seek(r.randrange(0, 90) << 20); f.write(r.randbytes(4 << 20))
for i in r.sample(range(40), 10):
    with open(f'{d}/small/d{i:02}/f{r.randrange(100):03}', 'wb') as f: f.write(r.randbytes(5000))
PY
}

bench_cycle() {
  rm -f cycle-results.txt results.txt
  ensure_corpus
  local src="$BENCH_DIR/cycle-src" dir="$BENCH_DIR/cycle"
  log "cycle: setting up (a copy of the corpus, initial backup and replication by both tools)"
  rm -rf "$src" "$dir"
  mkdir -p "$dir"
  cp -a corpus "$src"
  echo bench > "$dir/pw"
  cat > "$dir/c.yaml" <<YAML
host: bench
repository: $dir/dc-tidemark
password-file: $dir/pw
sources:
  - path: $src
targets:
  - name: dr
    repository: $dir/dr-tidemark
YAML
  export TIDEMARK_STATE_DIR="$dir/state"
  restic init -q -r "$dir/dc-restic"
  restic init -q -r "$dir/dr-restic" --copy-chunker-params --from-repo "$dir/dc-restic" --from-password-file "$dir/pw"
  "$TM" init -q --config "$dir/c.yaml"
  restic -q -r "$dir/dc-restic" backup --host bench "$src"
  restic -q -r "$dir/dr-restic" copy --from-repo "$dir/dc-restic" --from-password-file "$dir/pw" > /dev/null
  "$TM" -q replicate --once --config "$dir/c.yaml"
  # The daemon (its interval far away; SIGUSR1 runs a cycle now) derives the key once: a first cycle warms it.
  sed 's/^host: bench$/host: bench\ninterval: 24h/' "$dir/c.yaml" > "$dir/d.yaml"
  "$TM" daemon --config "$dir/d.yaml" > "$dir/daemon.log" 2>&1 &
  local dpid=$!
  DAEMON_PID=$dpid
  for _ in $(seq 100); do grep -q "tidemark daemon: every" "$dir/daemon.log" && break; sleep 0.05; done
  daemon_cycle "$dpid" "$dir/state/state.json" > /dev/null
  log "cycle: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $RUNS runs, median"
  local before after dcb dca
  restic_route() {
    find "$src" -type f -exec cat {} + > /dev/null
    dcb=$(du -sb "$dir/dc-restic" | cut -f1); before=$(du -sb "$dir/dr-restic" | cut -f1)
    run_measured backup restic restic -q -r "$dir/dc-restic" backup --host bench "$src"
    run_measured copy restic restic -q -r "$dir/dr-restic" copy --from-repo "$dir/dc-restic" --from-password-file "$dir/pw"
    dca=$(du -sb "$dir/dc-restic" | cut -f1); after=$(du -sb "$dir/dr-restic" | cut -f1)
    echo "bytes restic $((dca - dcb)) $((after - before))" >> cycle-bytes.txt
    dcb=$(du -sb "$dir/dc-tidemark" | cut -f1); before=$(du -sb "$dir/dr-tidemark" | cut -f1)
  }
  for run in $(seq "$RUNS"); do
    # A change measured with `replicate --once` (a process per cycle, as a systemd timer runs it)...
    change_cycle "$src" "$run"
    restic_route
    run_measured cycle tidemark "$TM" -q replicate --once --config "$dir/c.yaml"
    dca=$(du -sb "$dir/dc-tidemark" | cut -f1); after=$(du -sb "$dir/dr-tidemark" | cut -f1)
    echo "bytes tidemark $((dca - dcb)) $((after - before))" >> cycle-bytes.txt
    # ...and another one with a cycle of the daemon, timed from the signal to its state file being written.
    change_cycle "$src" "$((run + 100))"
    restic_route
    local secs
    secs=$(daemon_cycle "$dpid" "$dir/state/state.json")
    echo "daemon tidemark $secs 0" >> results.txt
    printf '  %-8s %-10s %6s s\n' tidemark daemon "$secs"
    dca=$(du -sb "$dir/dc-tidemark" | cut -f1); after=$(du -sb "$dir/dr-tidemark" | cut -f1)
    echo "bytes tidemark $((dca - dcb)) $((after - before))" >> cycle-bytes.txt
  done
  kill "$dpid"; wait "$dpid" 2>/dev/null || true
  DAEMON_PID=""
  grep -q "cycle failed" "$dir/daemon.log" && die "a daemon cycle failed: $(cat "$dir/daemon.log")"
  mv results.txt cycle-results.txt
  render_cycle > cycle-table.md
  rm -f cycle-bytes.txt
  update_doc cycle cycle-table.md
  unset TIDEMARK_STATE_DIR
}

# daemon_cycle PID STATEFILE: sends SIGUSR1, waits until the state file counts one more cycle; prints seconds.
daemon_cycle() {
  local pid=$1 state=$2 c0 t0 t1
  c0=$(grep -o '"cycles" : [0-9]*' "$state" 2>/dev/null || true)
  t0=$(date +%s%N)
  kill -USR1 "$pid"
  while [ "$(grep -o '"cycles" : [0-9]*' "$state" 2>/dev/null || true)" = "$c0" ]; do
    kill -0 "$pid" 2>/dev/null || die "the daemon died: see its log"
    sleep 0.005
  done
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'
}

render_cycle() {
  python3 - "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" <<'PY'
import statistics, sys
rv, tv, cores, day = sys.argv[1:5]
runs = {}
for line in open('cycle-results.txt'):
    step, tool, secs, kb = line.split()
    runs.setdefault((step, tool), []).append(float(secs))
bytes_ = {}
for line in open('cycle-bytes.txt'):
    _, tool, dc, dr = line.split()
    bytes_.setdefault(tool, []).append((int(dc), int(dr)))
n = len(runs[('cycle', 'tidemark')])
rb = statistics.median(runs[('backup', 'restic')]); rc = statistics.median(runs[('copy', 'restic')])
r = statistics.median(a + b for a, b in zip(runs[('backup', 'restic')], runs[('copy', 'restic')]))
t = statistics.median(runs[('cycle', 'tidemark')])
d = statistics.median(runs[('daemon', 'tidemark')])
kib = lambda b: b / 1024
print(f'Measured by `scripts/bench.sh cycle` on {day}: {cores} cores, same machine, same run; medians of {n} runs of each')
print('tidemark route, each after a different ~1% change of a copy of the corpus (3 x 1 MiB files, 4 MiB inside a large')
print('file, 10 small files); restic ran once after every change (2 x ' + str(n) + ' runs). DC and DR repositories are local')
print('directories (so the figures are the tools\' own work, not a network\'s). restic: `backup` then `copy` into a DR')
print('repository made with `--copy-chunker-params`. tidemark: `replicate --once` (a process per cycle, as the systemd')
print('timer runs it: it derives the key from the password, like each restic command) and a cycle of `tidemark daemon`')
print('(triggered by SIGUSR1 and timed from the signal until its state file is written; the daemon derived the key once,')
print(f'at its first cycle). Both: backup + verbatim replication to a replica. Versions: `{rv}`; `{tv}`.\n')
print('| route | seconds | speed-up | target |')
print('|---|---:|---:|---|')
print(f'| restic backup + restic copy | {r:.2f} (backup {rb:.2f}, copy {rc:.2f}) | | |')
print(f'| tidemark replicate --once | {t:.2f} | {r / t:.2f}x | >= 3x {"met" if r / t >= 3 else "NOT met"} |')
print(f'| tidemark daemon cycle | {d:.2f} | {r / d:.2f}x | >= 3x {"met" if r / d >= 3 else "NOT met"} |')
print()
for tool in ['restic', 'tidemark']:
    dc = statistics.median(a for a, _ in bytes_[tool]); dr = statistics.median(b for _, b in bytes_[tool])
    ratio = dr / dc if dc else 0
    mark = f' (target <= 1.2x: {"met" if ratio <= 1.2 else "NOT met"})' if tool == 'tidemark' else ''
    print(f'- {tool}: the DC repository grew {kib(dc):.0f} KiB per cycle, the DR repository {kib(dr):.0f} KiB: {ratio:.2f}x{mark}.')
PY
}

# ---- remote section ------------------------------------------------------------------------------------------

# wait_port PORT: until something accepts TCP connections on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "nothing listens on 127.0.0.1:$1"
}

# start_sshd: a throwaway sshd on 127.0.0.1:$SSH_PORT with its own host key, user key and known_hosts.
start_sshd() {
  local d="$BENCH_DIR/sshd"
  rm -rf "$d"
  mkdir -p "$d" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
  ssh-keygen -q -t ed25519 -N '' -f "$d/userkey"
  cp "$d/userkey.pub" "$d/authorized_keys"
  SSH_PORT=$((20000 + RANDOM % 20000))
  cat > "$d/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $d/hostkey
AuthorizedKeysFile $d/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
Subsystem sftp internal-sftp
PidFile $d/sshd.pid
CONF
  /usr/sbin/sshd -D -f "$d/sshd_config" -E "$d/sshd.log" < /dev/null > /dev/null 2>&1 &
  SSHD_PID=$!
  wait_port "$SSH_PORT"
  echo "[127.0.0.1]:$SSH_PORT $(cat "$d/hostkey.pub")" > "$d/known_hosts"
  SSH_OPTS=(-o "sftp.identity=$d/userkey" -o "sftp.known-hosts=$d/known_hosts" -o sftp.agent=no)
  RESTIC_SSH="ssh -p $SSH_PORT -i $d/userkey -o UserKnownHostsFile=$d/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes root@127.0.0.1 -s sftp"
}

# start_moto: a fresh moto_server (it keeps objects in memory) on 127.0.0.1:$MOTO_PORT.
start_moto() {
  if [ -n "$MOTO_PID" ]; then
    kill -KILL "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  MOTO_PORT=$((40000 + RANDOM % 20000))
  python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" < /dev/null > "$BENCH_DIR/moto.log" 2>&1 &
  MOTO_PID=$!
  wait_port "$MOTO_PORT"
}

bench_remote() {
  python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]'
  rm -f remote-results.txt results.txt
  ensure_corpus
  CORPUS_BYTES=$(du -sb --apparent-size corpus | cut -f1)
  CORPUS_FILES=$(find corpus -type f ! -name '.complete' | wc -l)
  find corpus -type f -exec cat {} + > /dev/null
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_DEFAULT_REGION=us-east-1
  start_sshd
  log "remote: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2) over loopback: $RUNS runs, median"
  for run in $(seq "$RUNS"); do
    log "run $run: SFTP (sshd on 127.0.0.1:$SSH_PORT)"
    rm -rf "$BENCH_DIR/sftp-restic" "$BENCH_DIR/sftp-tidemark"
    restic -q -r "sftp:root@127.0.0.1:$BENCH_DIR/sftp-restic" -o "sftp.command=$RESTIC_SSH" init
    "$TM" -q -r "sftp://root@127.0.0.1:$SSH_PORT/$BENCH_DIR/sftp-tidemark" "${SSH_OPTS[@]}" init
    # Which tool goes first alternates between runs.
    local order=(restic tidemark)
    [ $((run % 2)) = 0 ] && order=(tidemark restic)
    for step in first unchanged; do
      for tool in "${order[@]}"; do
        if [ "$tool" = restic ]; then
          run_measured "sftp-$step" restic restic -q -r "sftp:root@127.0.0.1:$BENCH_DIR/sftp-restic" -o "sftp.command=$RESTIC_SSH" backup corpus
        else
          run_measured "sftp-$step" tidemark "$TM" -q -r "sftp://root@127.0.0.1:$SSH_PORT/$BENCH_DIR/sftp-tidemark" "${SSH_OPTS[@]}" backup corpus
        fi
      done
    done
    log "run $run: S3 (moto_server, a fresh one per tool)"
    for tool in "${order[@]}"; do
      start_moto
      local repo="s3:http://127.0.0.1:$MOTO_PORT/bench-$tool"
      if [ "$tool" = restic ]; then restic -q -r "$repo" init; else "$TM" -q -r "$repo" init; fi
      for step in first unchanged; do
        if [ "$tool" = restic ]; then
          run_measured "s3-$step" restic restic -q -r "$repo" backup corpus
        else
          run_measured "s3-$step" tidemark "$TM" -q -r "$repo" backup corpus
        fi
      done
    done
  done
  stop_servers
  rm -rf "$BENCH_DIR/sftp-restic" "$BENCH_DIR/sftp-tidemark"
  mv results.txt remote-results.txt
  render_remote > remote-table.md
  update_doc remote remote-table.md
}

# ---- serve section --------------------------------------------------------------------------------------------

# start_serve: `tidemark serve --append-only --tls` on 127.0.0.1:$SERVE_PORT with a certificate from a private CA
# made here ($SERVE_CA), serving $BENCH_DIR/serve/repos.
start_serve() {
  local d="$BENCH_DIR/serve"
  rm -rf "$d"
  mkdir -p "$d/repos"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$d/san.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/san.ext" -out "$d/server.crt" 2>/dev/null
  SERVE_CA="$d/ca.crt"
  SERVE_PORT=$((20000 + RANDOM % 20000))
  "$TM" serve --listen "127.0.0.1:$SERVE_PORT" --path "$d/repos" --no-auth --append-only \
    --tls --tls-cert "$d/server.crt" --tls-key "$d/server.key" < /dev/null > /dev/null 2> "$d/serve.log" &
  SERVE_PID=$!
  wait_port "$SERVE_PORT"
}

bench_serve() {
  rm -f serve-results.txt results.txt
  ensure_corpus
  CORPUS_BYTES=$(du -sb --apparent-size corpus | cut -f1)
  CORPUS_FILES=$(find corpus -type f ! -name '.complete' | wc -l)
  find corpus -type f -exec cat {} + > /dev/null
  start_sshd
  start_serve
  local dir="$BENCH_DIR/serve-work"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$TM" -q -r "$dir/dc" init
  "$TM" -q -r "$dir/dc" backup corpus
  log "serve: replication and restic backups to tidemark serve (TLS) against SFTP over loopback: $RUNS runs, median"
  for run in $(seq "$RUNS"); do
    local order=(sftp rest-tls)
    [ $((run % 2)) = 0 ] && order=(rest-tls sftp)
    rm -rf "$dir/dr-sftp" "$dir/restic-sftp" "$BENCH_DIR/serve/repos/"*
    restic -q -r "sftp:root@127.0.0.1:$dir/restic-sftp" -o "sftp.command=$RESTIC_SSH" init
    restic -q -r "rest:https://127.0.0.1:$SERVE_PORT/restic" --cacert "$SERVE_CA" init
    for route in "${order[@]}"; do
      if [ "$route" = sftp ]; then
        run_measured replicate sftp "$TM" -q -r "$dir/dc" "${SSH_OPTS[@]}" \
          replicate --to "sftp://root@127.0.0.1:$SSH_PORT/$dir/dr-sftp"
        run_measured restic-backup sftp restic -q -r "sftp:root@127.0.0.1:$dir/restic-sftp" \
          -o "sftp.command=$RESTIC_SSH" backup corpus
      else
        run_measured replicate rest-tls "$TM" -q -r "$dir/dc" --cacert "$SERVE_CA" \
          replicate --to "rest:https://127.0.0.1:$SERVE_PORT/dr"
        run_measured restic-backup rest-tls restic -q -r "rest:https://127.0.0.1:$SERVE_PORT/restic" \
          --cacert "$SERVE_CA" backup corpus
      fi
    done
  done
  stop_servers
  rm -rf "$dir" "$BENCH_DIR/serve/repos"
  mv results.txt serve-results.txt
  render_serve > serve-table.md
  update_doc serve serve-table.md
}

render_serve() {
  python3 - "$CORPUS_BYTES" "$CORPUS_FILES" "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" \
    "$(ssh -V 2>&1)" <<'PY'
import statistics, sys
corpus, files, rv, tv, cores, day, sshv = sys.argv[1:8]
runs = {}
for line in open('serve-results.txt'):
    step, route, secs, kb = line.split()
    runs.setdefault(step, {}).setdefault(route, []).append((float(secs), int(kb)))
nruns = max(len(v) for d in runs.values() for v in d.values())
mib = lambda b: int(b) / (1 << 20)
print(f'Measured by `scripts/bench.sh serve` on {day}: {cores} cores, same machine, same run, servers on 127.0.0.1;')
print(f'median of {nruns} runs per step; which route goes first alternates between runs, and every measured command')
print(f'starts after a `sync`. Corpus: the backup section\'s ({mib(corpus):.0f} MiB in {files} files), backed up once')
print('by tidemark into a local repository, which is then replicated in full to a fresh replica per run.')
print(f'SFTP: a throwaway `sshd` ({sshv}). REST: `tidemark serve --append-only --tls` (ECDSA P-256 certificate from a')
print(f'private CA, `--cacert`). Versions: `{rv}`; `{tv}`.\n')
print('| step | SFTP (s) | REST over TLS (s) | SFTP / REST | client peak RSS SFTP (MiB) | client peak RSS REST (MiB) |')
print('|---|---:|---:|---:|---:|---:|')
names = {'replicate': '`tidemark replicate --to` a fresh replica', 'restic-backup': 'restic 0.14: first backup'}
for k in ['replicate', 'restic-backup']:
    if k not in runs: continue
    a = statistics.median(s for s, _ in runs[k]['sftp']); b = statistics.median(s for s, _ in runs[k]['rest-tls'])
    am = max(m for _, m in runs[k]['sftp']) / 1024; bm = max(m for _, m in runs[k]['rest-tls']) / 1024
    print(f'| {names[k]} | {a:.2f} | {b:.2f} | {a/b:.2f}x | {am:.0f} | {bm:.0f} |')
print()
for k in ['replicate', 'restic-backup']:
    if k not in runs: continue
    pairs = zip((s for s, _ in runs[k]['sftp']), (s for s, _ in runs[k]['rest-tls']))
    print(f'- {names[k]}, SFTP / REST within each run: ' + ', '.join(f'{a / b:.2f}x' for a, b in pairs))
PY
}

# ---- drill section --------------------------------------------------------------------------------------------

bench_drill() {
  rm -f drill-results.txt results.txt
  ensure_corpus
  local src="$BENCH_DIR/drill-src" dir="$BENCH_DIR/drill"
  rm -rf "$src" "$dir"
  mkdir -p "$dir"
  cp -a corpus "$src"
  start_sshd
  cat > "$dir/c.yaml" <<YAML
host: bench
repository: $dir/dc
password-file: $dir/pw
sources:
  - path: $src
    verify: test -d {}/large
targets:
  - name: dr-local
    repository: $dir/dr-local
  - name: dr-sftp
    repository: sftp://root@127.0.0.1:$SSH_PORT/$dir/dr-sftp
    options:
      sftp.identity: $BENCH_DIR/sshd/userkey
      sftp.known-hosts: $BENCH_DIR/sshd/known_hosts
      sftp.agent: "no"
drill:
  scratch: $dir/scratch
  reports: $dir/reports
YAML
  echo bench > "$dir/pw"
  export TIDEMARK_STATE_DIR="$dir/state"
  log "drill: first cycle (the corpus to both targets)"
  "$TM" -q init --config "$dir/c.yaml"
  "$TM" -q replicate --once --config "$dir/c.yaml"
  log "drill: $RUNS runs of (a ~1% change, a cycle, a drill of both targets)"
  for run in $(seq "$RUNS"); do
    change_cycle "$src" "$run"
    run_measured cycle tidemark "$TM" -q replicate --once --config "$dir/c.yaml"
    "$TM" drill --json --config "$dir/c.yaml" > "$dir/drill-$run.json" || die "the drill failed: $(cat "$dir/drill-$run.json")"
  done
  stop_servers
  mv results.txt drill-results.txt
  render_drill "$dir" > drill-table.md
  update_doc drill drill-table.md "$ROOT/docs/rto-rpo.md"
  rm -rf "$src" "$dir"
}

render_drill() { # DIR
  python3 - "$1" "$RUNS" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" <<'PY'
import json, statistics, sys
d, runs, tv, cores, day = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
drills = [json.load(open(f'{d}/drill-{i}.json')) for i in range(1, runs + 1)]
cycles = [float(l.split()[2]) for l in open('drill-results.txt') if l.startswith('cycle ')]
first = drills[0]['repositories'][0]
mib = lambda b: b / 2**20
print(f'Measured by `scripts/bench.sh drill` on {day}: {cores} cores, same machine; {tv}; median of {runs} drills.')
print(f'Data: the benchmark corpus ({first["files_verified"]} files, {mib(first["bytes_verified"]):.0f} MiB: large random files, text, 4000 small')
print('files), backed up on the DC and replicated to two targets: a local directory, and an SFTP server on loopback')
print('(OpenSSH sshd on 127.0.0.1, so no network limits apply). Before each drill: a ~1% change of the data and one')
print('`tidemark replicate --once` cycle; then `tidemark drill --json` of both targets (restore into scratch space on')
print('the same disk, every file read back and checked against the snapshot\'s hashes, a `verify` command).\n')
print('| target | RTO (restore + verify) | throughput | RPO at the drill | files verified | bytes verified |')
print('|---|---:|---:|---:|---:|---:|')
for name in [r['name'] for r in drills[0]['repositories']]:
    rs = [next(r for r in dr['repositories'] if r['name'] == name) for dr in drills]
    assert all(r['ok'] for r in rs), f'a drill of {name} failed'
    rto = statistics.median(r['rto_seconds'] for r in rs)
    rpo = statistics.median(r['rpo_seconds'] for r in rs)
    thr = statistics.median(r['throughput_bytes_per_second'] for r in rs)
    print(f'| {name} | {rto:.1f} s | {mib(thr):.0f} MiB/s | {rpo:.0f} s | {rs[0]["files_verified"]} | {mib(rs[0]["bytes_verified"]):.0f} MiB |')
print(f'\nThe cycle before each drill took {statistics.median(cycles):.2f} s (median; backup of the change + replication to both')
print('targets). The RPO at a drill is the age of the newest snapshot: here the cycle plus the drills of the targets')
print('drilled before it. In operation the worst case is one interval (5 minutes by default) plus one cycle.')
PY
}

render_remote() {
  python3 - "$CORPUS_BYTES" "$CORPUS_FILES" "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" \
    "$(ssh -V 2>&1)" "$(python3 -c 'import moto; print(moto.__version__)')" <<'PY'
import statistics, sys
corpus, files, rv, tv, cores, day, sshv, motov = sys.argv[1:9]
runs = {}
for line in open('remote-results.txt'):
    step, tool, secs, kb = line.split()
    runs.setdefault(step, {}).setdefault(tool, []).append((float(secs), int(kb)))
nruns = max(len(v) for d in runs.values() for v in d.values())
mib = lambda b: int(b) / (1 << 20)
print(f'Measured by `scripts/bench.sh remote` on {day}: {cores} cores, same machine, same run, servers on 127.0.0.1;')
print(f'median of {nruns} runs per step; which tool goes first alternates between runs, and every measured command')
print(f'starts after a `sync`. Corpus: the backup section\'s ({mib(corpus):.0f} MiB in {files} files).')
print(f'SFTP: a throwaway `sshd` ({sshv}); restic through `-o sftp.command=ssh …`, tidemark through libssh2 (5 connections).')
print(f'S3: `moto_server` {motov} (Python, in memory; a fresh server per tool and run), path-style, restic\'s s3 backend.')
print(f'Versions: `{rv}`; `{tv}`.\n')
print('| step | restic (s) | tidemark (s) | speed-up | target | restic peak RSS (MiB) | tidemark peak RSS (MiB) |')
print('|---|---:|---:|---:|---:|---:|---:|')
names = {'sftp-first': 'SFTP: first backup', 'sftp-unchanged': 'SFTP: unchanged re-backup',
         's3-first': 'S3: first backup', 's3-unchanged': 'S3: unchanged re-backup'}
for k in ['sftp-first', 'sftp-unchanged', 's3-first', 's3-unchanged']:
    if k not in runs: continue
    r = statistics.median(s for s, _ in runs[k]['restic']); t = statistics.median(s for s, _ in runs[k]['tidemark'])
    rm = max(m for _, m in runs[k]['restic']) / 1024; tm = max(m for _, m in runs[k]['tidemark']) / 1024
    mark = '>= 1.5x ' + ('met' if r / t >= 1.5 else 'NOT met') if k.endswith('first') else ''
    print(f'| {names[k]} | {r:.2f} | {t:.2f} | {r/t:.2f}x | {mark} | {rm:.0f} | {tm:.0f} |')
print()
for k in ['sftp-first', 's3-first']:
    if k not in runs: continue
    pairs = zip((s for s, _ in runs[k]['restic']), (s for s, _ in runs[k]['tidemark']))
    print(f'- {names[k]}, speed-up within each run (restic / tidemark): ' + ', '.join(f'{r / t:.2f}x' for r, t in pairs))
PY
}

# ---- scale section --------------------------------------------------------------------------------------------
# A file server's worth of small files: how the tools cope with many entries rather than many bytes.
SCALE_FILES=${BENCH_SCALE_FILES:-500000}
SCALE_DIRS=${BENCH_SCALE_DIRS:-10000}
# A first backup of 500,000 files takes minutes per tool: one run per step unless asked for more.
if [ "$SCALE_FILES" -ge 100000 ]; then SCALE_RUNS=${BENCH_SCALE_RUNS:-1}; else SCALE_RUNS=${BENCH_SCALE_RUNS:-$RUNS}; fi
SCALE_CORPUS="scale-$SCALE_FILES-$SCALE_DIRS"

# ensure_scale_corpus: the deterministic file-server corpus in $SCALE_CORPUS/: SCALE_FILES files of mostly
# 0.5-8 KiB (some empty to 0.5 KiB, some 8-64 KiB; three quarters text cut from prose, source-like and CSV-like
# pools, a quarter random bytes) spread over SCALE_DIRS leaf directories three levels deep, plus large/ with
# 4 x 64 MiB random. Regenerated when a generation did not finish ($SCALE_CORPUS.complete, outside the corpus, so
# it is not backed up). The 100-file change step edits it in place; that changes no entry count.
ensure_scale_corpus() {
  local params="files=$SCALE_FILES dirs=$SCALE_DIRS seed=20261206"
  if [ -d "$SCALE_CORPUS" ] && [ "$(cat "$SCALE_CORPUS.complete" 2>/dev/null)" = "$params" ]; then return; fi
  log "generating the scale corpus (deterministic: $params)"
  rm -rf "$SCALE_CORPUS" "$SCALE_CORPUS.complete"
  python3 - "$SCALE_CORPUS" "$SCALE_FILES" "$SCALE_DIRS" <<'PY'
import os, random, sys
root, nfiles, ndirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(20261206)
words = [''.join(r.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(r.randint(2, 10))) for _ in range(4000)]
# Text pools that files are cut from: prose-like, source-like and CSV-like lines.
prose = ''.join(' '.join(r.choices(words, k=r.randint(6, 14))) + '.\n' for _ in range(40000))
src = []
for _ in range(30000):
    ind = '    ' * r.randint(0, 3)
    a, b, c = r.choices(words, k=3)
    src.append(r.choice([f'{ind}let {a} = {b}({c}, {r.randint(0, 999)})\n', f'{ind}if {a} > {r.randint(0, 99)} {{\n',
                         f'{ind}}}\n', f'{ind}// {a} {b} {c}\n', f'{ind}return {a}.{b}\n', f'{ind}func {a}({b}: Int) -> {c} {{\n']))
src = ''.join(src)
csv = ''.join(f'{r.randint(1, 10**6)},{r.choice(words)},{r.random():.6f},{r.choice(words)}\n' for _ in range(60000))
pools = [(prose.encode(), 'txt'), (src.encode(), 'swift'), (csv.encode(), 'csv')]
# Directories: three levels (departments / projects / leaf directories), files spread over the leaves.
top = max(1, round(ndirs ** (1 / 3)))
mid = max(1, round((ndirs / top) ** 0.5))
leaves = [f'{root}/{words[a]}{a}/{words[100 + b]}{b}/{words[500 + d % 3000]}{d}'
          for d in range(ndirs) for a, b in [(d % top, (d // top) % mid)]]
for d in leaves:
    os.makedirs(d, exist_ok=True)
for i in range(nfiles):
    d = leaves[i % ndirs]
    k = r.random()
    size = r.randint(0, 511) if k < 0.05 else r.randint(8192, 65536) if k > 0.95 else r.randint(512, 8192)
    kind = r.random()
    if kind < 0.25:                                  # a quarter random bytes (compressed/binary files)
        data, ext = r.randbytes(size), r.choice(['bin', 'jpg', 'gz', 'pdf'])
    else:
        pool, ext = pools[r.randrange(3)]
        at = r.randrange(len(pool) - size)
        data = pool[at:at + size]
    with open(f'{d}/{words[r.randrange(4000)]}_{i}.{ext}', 'wb') as f:
        f.write(data)
os.makedirs(f'{root}/large', exist_ok=True)
for i in range(4):                                   # 4 x 64 MiB random
    with open(f'{root}/large/image{i}.img', 'wb') as f:
        for _ in range(64):
            f.write(r.randbytes(1 << 20))
PY
  echo "$params" > "$SCALE_CORPUS.complete"
}

# scale_change DIR RUN: 100 files spread evenly over the tree (every n-th in name order): the even ones get
# new content (a line appended), the odd ones only a new mtime.
scale_change() {
  python3 - "$1" "$2" <<'PY'
import os, sys, time
root, run = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
step = max(1, len(files) // 100)
for k, p in enumerate(files[step // 2::step][:100]):
    if k % 2 == 0:
        with open(p, 'ab') as f: f.write(f'changed in run {run} at {time.time_ns()}\n'.encode())
    else:
        os.utime(p)
PY
}

# scale_journal: the daemon with a change journal over the corpus (`continuous: 5s`, a local DR target). After
# its first cycle (a full walk), the same 100-file change as the CLI's: the journal-driven cycle's duration (from
# the state file) against restic's backup after that change; then 20 one-file changes, each waited for until its
# snapshot is on the DR repository (seconds from the write); then a minute idle: the daemon's CPU time. Writes
# "CYCLE_S P50_S P90_S MAX_S IDLE_CPU_S VMHWM_KIB" to scale-journal.txt.
scale_journal() {
  local dir=$BENCH_DIR/scale-journal pid n i t0 t1 cpu0 cpu1 cycle
  local -a picks
  rm -rf "$dir"
  mkdir -p "$dir"
  echo bench > "$dir/pw"
  cat > "$dir/c.yaml" <<YAML
repository: $dir/dc
password-file: $dir/pw
interval: 1h
continuous: 5s
sources:
  - path: $BENCH_DIR/$SCALE_CORPUS
targets:
  - name: dr
    repository: $dir/dr
YAML
  "$TM" init -q --config "$dir/c.yaml"
  TIDEMARK_STATE_DIR="$dir/state" "$TM" daemon --config "$dir/c.yaml" > "$dir/daemon.log" 2>&1 &
  DAEMON_PID=$!
  pid=$DAEMON_PID
  sleep 1
  kill -USR1 "$pid"
  dr_count() { find "$dir/dr/snapshots" -type f 2>/dev/null | wc -l; }
  wait_dr() { # N TIMEOUT_S: waits until the DR repository holds N snapshots
    local k=0
    until [ "$(dr_count)" -ge "$1" ]; do
      kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log"; die "the daemon exited"; }
      k=$((k + 1))
      [ $k -le $(($2 * 20)) ] || { tail -20 "$dir/daemon.log"; die "no snapshot $1 on the DR side within $2 s"; }
      sleep 0.05
    done
  }
  wait_dr 1 900
  sleep 2
  scale_change "$SCALE_CORPUS" 100
  wait_dr 2 120
  cycle=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['lastCycleEnd'] - s['lastCycleStart']:.3f}\")" "$dir/state/state.json")
  grep -q "backup from the change journal" "$dir/daemon.log" || { tail -20 "$dir/daemon.log"; die "the cycle did not back up from the journal"; }
  : > "$dir/latency.txt"
  mapfile -t picks < <(find "$BENCH_DIR/$SCALE_CORPUS" -type f -not -path '*/large/*' | shuf -n 20 --random-source=<(yes))
  n=2
  for i in $(seq 0 19); do
    sleep 1
    t0=$(now)
    echo "one change $i" >> "${picks[$i]}"
    n=$((n + 1))
    wait_dr "$n" 120
    t1=$(now)
    elapsed "$t0" "$t1" >> "$dir/latency.txt"
    echo >> "$dir/latency.txt"
  done
  sleep 5
  cpu0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  sleep 60
  cpu1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  local hwm
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  DAEMON_PID=""
  python3 - "$dir/latency.txt" "$cycle" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$hwm" <<'PY'
import statistics, sys
lat = sorted(float(x) for x in open(sys.argv[1]).read().split())
cycle, c0, c1, tck, hwm = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
p90 = lat[max(0, int(round(0.9 * len(lat))) - 1)]
print(f'{cycle:.3f} {statistics.median(lat):.2f} {p90:.2f} {lat[-1]:.2f} {(c1 - c0) / tck:.2f} {hwm}')
PY
}

# scale_mount TOOL RUN: `find MNT/snapshots/latest/ | wc -l` over the restic-made repository in a fresh mount
# process after a cold page cache (as mount_session); appends "TOOL SECONDS VMHWM_KIB VMRSS_KIB READY_SECONDS"
# to scale-mount.txt, RSS read from /proc/PID/status right after the find.
scale_mount() {
  local tool=$1 run=$2 log="scale-mount-$1-$2.log" snap="$MNT/snapshots/latest"
  local t0 t1 ready value hwm rss n
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  mkdir -p "$MNT"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  t0=$(now)
  case $tool in
    restic) restic -r scale-repo-restic mount "$MNT" > "$log" 2>&1 & ;;
    tidemark) "$TM" -r scale-repo-restic mount "$MNT" > "$log" 2>&1 & ;;
  esac
  MOUNT_PID=$!
  wait_for_mount "$tool" "$log" "$snap/$SCALE_CORPUS/large" 120
  ready=$(elapsed "$t0" "$(now)")
  [ "$(cat "/proc/$MOUNT_PID/comm")" = "$tool" ] || die "PID $MOUNT_PID is $(cat "/proc/$MOUNT_PID/comm"), not $tool"
  warm_memory "$WARM_MIB"
  t0=$(now)
  value=$(find "$snap/" | wc -l)
  t1=$(now)
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MOUNT_PID/status")
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$MOUNT_PID/status")
  stop_mount "$tool"
  [ "$value" = "$SCALE_ENTRIES" ] || die "$tool mount: find saw $value entries, expected $SCALE_ENTRIES"
  echo "$tool $(elapsed "$t0" "$t1") $hwm $rss $ready" >> scale-mount.txt
  printf '  %-8s find %8s s  (%s entries)  VmHWM %s MiB  VmRSS %s MiB  ready after %s s\n' "$tool" \
    "$(elapsed "$t0" "$t1")" "$value" "$((hwm / 1024))" "$((rss / 1024))" "$ready"
}

bench_scale() {
  [ "$(id -u)" = 0 ] || die "the scale benchmark needs root (drop_caches for the mount)"
  [ -e /dev/fuse ] || die "/dev/fuse is missing"
  if is_mounted "$MNT"; then fusermount3 -uz "$MNT"; fi
  rm -f results.txt scale-results.txt scale-mount.txt scale-journal.txt scale-mount-*.log
  ensure_scale_corpus
  SCALE_BYTES=$(du -sb --apparent-size "$SCALE_CORPUS" | cut -f1)
  SCALE_ENTRIES=$(( $(find "$SCALE_CORPUS" | wc -l) + 1 ))   # `find snapshots/latest/` also lists latest/ itself
  log "scale: restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $SCALE_FILES files in $SCALE_DIRS directories, $SCALE_RUNS run(s) per step"
  local run tool step
  local -a order
  for run in $(seq "$SCALE_RUNS"); do
    order=(restic tidemark)
    [ $((run % 2)) = 0 ] && order=(tidemark restic)
    rm -rf scale-repo-restic scale-repo-tidemark
    restic init -q -r scale-repo-restic
    "$TM" init -q -r scale-repo-tidemark
    # Same warm page cache (data and metadata) for both tools.
    find "$SCALE_CORPUS" -type f -exec cat {} + > /dev/null
    for step in first unchanged; do
      log "run $run: $step (${order[*]})"
      for tool in "${order[@]}"; do
        if [ "$tool" = restic ]; then
          run_measured "scale-$step" restic restic -q -r scale-repo-restic backup "$SCALE_CORPUS"
        else
          run_measured "scale-$step" tidemark "$TM" -q -r scale-repo-tidemark backup "$SCALE_CORPUS"
        fi
      done
    done
    log "run $run: 100 files changed (50 rewritten, 50 touched), full walk by both"
    scale_change "$SCALE_CORPUS" "$run"
    for tool in "${order[@]}"; do
      if [ "$tool" = restic ]; then
        run_measured scale-change restic restic -q -r scale-repo-restic backup "$SCALE_CORPUS"
      else
        run_measured scale-change tidemark "$TM" -q -r scale-repo-tidemark backup "$SCALE_CORPUS"
      fi
    done
  done
  mv results.txt scale-results.txt

  log "scale: the daemon with a change journal (continuous: 5s): the same 100-file change, 20 one-file changes, a minute idle"
  scale_journal > scale-journal.txt

  log "scale: find over the mounted latest snapshot (the restic-made repository), cold page cache, $SCALE_RUNS run(s)"
  restic -q -r scale-repo-restic ls latest > /dev/null   # restic's cache holds every tree, as after normal use
  for run in $(seq "$SCALE_RUNS"); do
    order=(restic tidemark)
    [ $((run % 2)) = 0 ] && order=(tidemark restic)
    for tool in "${order[@]}"; do scale_mount "$tool" "$run"; done
  done

  render_scale "$(du -sb scale-repo-restic | cut -f1)" "$(du -sb scale-repo-tidemark | cut -f1)" > scale-table.md
  update_doc scale scale-table.md
  rm -rf scale-repo-restic scale-repo-tidemark   # the corpus stays for the next run (scale-*.complete)
}

render_scale() { # RESTIC_REPO_BYTES TIDEMARK_REPO_BYTES
  python3 - "$1" "$2" "$SCALE_BYTES" "$SCALE_FILES" "$SCALE_DIRS" "$SCALE_ENTRIES" "$(cat scale-journal.txt)" \
    "$(restic version)" "$("$TM" version)" "$(nproc)" "$(uname -r)" \
    "$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(date -u +%Y-%m-%d)" <<'PY'
import statistics, sys
repo_r, repo_t, corpus, files, dirs, entries, journal, rv, tv, cores, kernel, mem, day = sys.argv[1:14]
runs = {}
for line in open('scale-results.txt'):
    step, tool, secs, kb = line.split()
    runs.setdefault(step, {}).setdefault(tool, []).append((float(secs), int(kb)))
mounts = {}
for line in open('scale-mount.txt'):
    tool, secs, hwm, rss, ready = line.split()
    mounts.setdefault(tool, []).append((float(secs), int(hwm), int(rss), float(ready)))
nruns = max(len(v) for d in runs.values() for v in d.values())
mib = lambda b: int(b) / (1 << 20)
med = lambda xs: statistics.median(xs)
print(f'Measured by `scripts/bench.sh scale` on {day}: {cores} cores, Linux {kernel}, {mem} GiB RAM, same machine, same run;')
print(f'{"one run" if nruns == 1 else f"median of {nruns} runs"} per step (which tool goes first alternates between runs); warm page cache')
print('for the backups; every measured command starts after a `sync`.')
print(f'Corpus: a generated file server, {int(files):,} files in {int(dirs):,} directories three levels deep (mostly 0.5-8 KiB:')
print(f'three quarters text, a quarter random bytes) and 4 x 64 MiB random; {mib(corpus):,.0f} MiB, {int(entries) - 1:,} entries.')
print('Each tool backs up into its own fresh repository. The change: 100 files spread over the tree, 50 with a line')
print('appended and 50 touched (new mtime), then a plain `backup` (a full walk). The mount rows: the restic-made repository')
print('mounted by each tool in a fresh process after `sync; echo 3 > /proc/sys/vm/drop_caches`, restic\'s cache directory')
print('kept (it holds every tree); `find MNT/snapshots/latest/ | wc -l` timed, the mount process\'s VmHWM and VmRSS read')
print('from /proc/PID/status right after it.')
print(f'Versions: `{rv}`; `{tv}`.\n')
print('| step | tidemark | restic | restic / tidemark | tidemark peak RSS (MiB) | restic peak RSS (MiB) | tidemark / restic RSS |')
print('|---|---:|---:|---:|---:|---:|---:|')
names = {'scale-first': 'first backup', 'scale-unchanged': 'unchanged re-backup',
         'scale-change': 're-backup after 100 files changed (full walk)'}
for k in ['scale-first', 'scale-unchanged', 'scale-change']:
    t = med(s for s, _ in runs[k]['tidemark']); r = med(s for s, _ in runs[k]['restic'])
    tm = max(m for _, m in runs[k]['tidemark']) / 1024; rm = max(m for _, m in runs[k]['restic']) / 1024
    print(f'| {names[k]} | {t:.2f} s | {r:.2f} s | {r / t:.2f}x | {tm:.0f} | {rm:.0f} | {tm / rm:.2f}x |')
jc, jp50, jp90, jmax, jidle, jhwm = journal.split()
r = med(s for s, _ in runs['scale-change']['restic'])
print(f'| journal-driven cycle after the same 100-file change (`tidemark daemon`, `continuous: 5s`) | {float(jc):.2f} s | {r:.2f} s '
      f'| {r / float(jc):.1f}x | {int(jhwm) / 1024:.0f} (daemon) | | |')
t = med(x[0] for x in mounts['tidemark']); r = med(x[0] for x in mounts['restic'])
th = max(x[1] for x in mounts['tidemark']) / 1024; rh = max(x[1] for x in mounts['restic']) / 1024
print(f'| `find` over the mounted latest snapshot ({int(entries):,} entries), cold cache (RSS: VmHWM) | {t:.2f} s | {r:.2f} s '
      f'| {r / t:.2f}x | {th:.0f} | {rh:.0f} | {th / rh:.2f}x |')
tr = max(x[2] for x in mounts['tidemark']) / 1024; rr = max(x[2] for x in mounts['restic']) / 1024
print(f'| mount process VmRSS right after the `find` | | | | {tr:.0f} | {rr:.0f} | {tr / rr:.2f}x |')
print(f'\nThe journal row: the cycle\'s duration as the daemon records it (`tidemark_cycle_duration_seconds`: backup from the')
print('journal, replication of the new snapshot to a local DR repository, retention), against restic\'s `backup` (a full walk)')
print('after the same change. The daemon\'s peak RSS includes its first cycle, a full walk. Then 20 one-file changes, each')
print(f'made a second after the previous one reached the DR repository: from the write to the snapshot on the DR side, median')
print(f'{float(jp50):.1f} s, p90 {float(jp90):.1f} s, worst {float(jmax):.1f} s (5 s of that is the debounce). A minute idle afterwards:')
print(f'{float(jidle):.2f} s of CPU.')
print(f'\nRatios: restic / tidemark for times (above 1: tidemark is faster), tidemark / restic for RSS (below 1: tidemark')
print(f'uses less). Peak RSS is /usr/bin/time\'s for the backups and the largest VmHWM over the runs for the mounts.')
print(f'Repositories after the backups: restic {mib(repo_r):,.0f} MiB, tidemark {mib(repo_t):,.0f} MiB. Median time until the mounted')
print(f'snapshot appeared: restic {med(x[3] for x in mounts["restic"]):.2f} s, tidemark {med(x[3] for x in mounts["tidemark"]):.2f} s. '
      'The tidemark mount ran with its default cache size.')
PY
}

# ---- corpora section ------------------------------------------------------------------------------------------

# The corpora, each generated deterministically under corpora/NAME (BENCH_CORPORA_SCALE multiplies the sizes):
#   source  100,000 source-like text files of 0.2-16 KiB (log-uniform) in 6,000 directories three levels deep,
#           5% of them copies of others (vendored code)
#   logs    4 x 128 MiB syslog-like logs, 2 x 16 MiB gzip-rotated logs, a 256 MiB SQLite database of orders
#   vm      2 x 512 MiB raw disk images in 1 MiB regions: zeros (35%), 64 KiB blocks repeated from a pool of 50
#           (25%), random (25%), text (15%)
#   media   20 x 32 MiB and 400 x 256 KiB random (video and photos: incompressible)
#   mix     20,000 source files, a 256 MiB log, a 256 MiB image, 8 x 32 MiB media, duplicates, and awkward
#           entries: empty files, symlinks (one dangling), hard links, names with spaces, newlines and non-UTF-8
#           bytes, a 255-byte name, 40 nested directories
ensure_corpora() { # NAME...
  local name params
  for name in "$@"; do
    params="corpus=$name scale=$CORPORA_SCALE seed=20261207"
    if [ -d "corpora/$name" ] && [ "$(cat "corpora/$name.complete" 2>/dev/null)" = "$params" ]; then continue; fi
    log "generating the $name corpus ($params)"
    rm -rf "corpora/$name" "corpora/$name.complete"
    mkdir -p corpora
    python3 - "corpora/$name" "$name" "$CORPORA_SCALE" <<'PY'
import gzip, os, random, sqlite3, sys
root, name, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
r = random.Random(f'{name}-20261207')
MiB = 1 << 20
words = [''.join(r.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(r.randint(2, 10))) for _ in range(4000)]

def source_line():
    ind = '    ' * r.randint(0, 4)
    a, b, c = r.choices(words, k=3)
    return r.choice([f'{ind}let {a} = {b}({c}, {r.randint(0, 999)})\n', f'{ind}if {a} > {r.randint(0, 99)} {{\n',
                     f'{ind}}}\n', f'{ind}// {a} {b} {c} {r.choice(words)}\n', f'{ind}return {a}.{b}\n',
                     f'{ind}func {a}({b}: Int) -> {c} {{\n', f'{ind}import {a}\n', '\n'])

def source_tree(base, nfiles, ndirs):
    pool = ''.join(source_line() for _ in range(60000)).encode()
    dirs = [f'{base}/{words[d % 30]}/{words[100 + d // 30 % 20]}/{words[500 + d % 3000]}{d}' for d in range(ndirs)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    written = []
    for i in range(nfiles):
        path = f'{dirs[r.randrange(ndirs)]}/{words[r.randrange(4000)]}_{i}.{r.choice(["c", "h", "py", "go", "swift", "js"])}'
        if written and r.random() < 0.05:            # vendored copies
            data = open(r.choice(written), 'rb').read()
        else:
            size = int(200 * 80 ** r.random())       # 200 B .. 16 KiB, log-uniform
            at = r.randrange(len(pool) - size)
            data = pool[at:at + size]
        with open(path, 'wb') as f:
            f.write(data)
        if len(written) < 2000:
            written.append(path)

def log_file(path, size):
    progs = ['sshd', 'nginx', 'postgres', 'cron', 'kernel', 'systemd', 'app']
    with open(path, 'w') as f:
        n, t = 0, 1_700_000_000
        while n < size:
            t += r.randint(0, 2)
            p = r.choice(progs)
            line = (f'2026-12-07T{t // 3600 % 24:02}:{t // 60 % 60:02}:{t % 60:02}.{r.randint(0, 999999):06}Z web1 {p}[{r.randint(100, 65000)}]: '
                    f'{" ".join(r.choices(words, k=r.randint(3, 10)))} from 10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)} '
                    f'status={r.choice([200, 200, 200, 301, 404, 500])} took={r.randint(1, 5000)}ms\n')
            f.write(line)
            n += len(line)

def sqlite_db(path, size):
    db = sqlite3.connect(path)
    db.execute('create table orders (id integer primary key, customer text, email text, item text, qty int, price real, ts text, note text)')
    db.execute('create index orders_customer on orders(customer)')
    i = 0
    while True:
        rows = [(words[r.randrange(4000)] + ' ' + words[r.randrange(4000)], f'{r.choice(words)}@{r.choice(words)}.example',
                 ' '.join(r.choices(words, k=3)), r.randint(1, 20), round(r.random() * 500, 2),
                 f'2026-{r.randint(1, 12):02}-{r.randint(1, 28):02}', ' '.join(r.choices(words, k=r.randint(0, 12)))) for _ in range(20000)]
        db.executemany('insert into orders (customer, email, item, qty, price, ts, note) values (?,?,?,?,?,?,?)', rows)
        db.commit()
        i += 1
        if os.path.getsize(path) >= size:
            break
    db.close()

def vm_image(path, size):
    blocks = [r.randbytes(64 << 10) for _ in range(50)]
    text = ''.join(source_line() for _ in range(100000)).encode()
    with open(path, 'wb') as f:
        for _ in range(size // MiB):
            k = r.random()
            if k < 0.35:
                f.write(bytes(MiB))
            elif k < 0.60:
                f.write(b''.join(r.choice(blocks) for _ in range(16)))
            elif k < 0.85:
                f.write(r.randbytes(MiB))
            else:
                at = r.randrange(len(text) - MiB)
                f.write(text[at:at + MiB])

def media(base, big, small):
    os.makedirs(f'{base}/video', exist_ok=True)
    os.makedirs(f'{base}/photos', exist_ok=True)
    for i in range(big):
        with open(f'{base}/video/clip{i:03}.mp4', 'wb') as f:
            for _ in range(32):
                f.write(r.randbytes(MiB))
    for i in range(small):
        with open(f'{base}/photos/IMG_{i:04}.jpg', 'wb') as f:
            f.write(r.randbytes(256 << 10))

os.makedirs(root)
s = lambda n: max(1, int(n * scale))
if name == 'source':
    source_tree(root, s(100000), s(6000))
elif name == 'logs':
    os.makedirs(f'{root}/log')
    for i in range(4):
        log_file(f'{root}/log/app{i}.log', s(128) * MiB)
    for i in range(2):
        log_file(f'{root}/log/tmp.log', s(16) * MiB)
        with open(f'{root}/log/tmp.log', 'rb') as a, gzip.open(f'{root}/log/app.log.{i + 1}.gz', 'wb') as b:
            b.write(a.read())
        os.remove(f'{root}/log/tmp.log')
    os.makedirs(f'{root}/db')
    sqlite_db(f'{root}/db/orders.sqlite', s(256) * MiB)
elif name == 'vm':
    for i in range(2):
        vm_image(f'{root}/disk{i}.img', s(512) * MiB)
elif name == 'media':
    media(root, s(20), s(400))
elif name == 'mix':
    source_tree(f'{root}/src', s(20000), s(1200))
    os.makedirs(f'{root}/var/log')
    log_file(f'{root}/var/log/app.log', s(256) * MiB)
    os.makedirs(f'{root}/images')
    vm_image(f'{root}/images/vm.img', s(256) * MiB)
    media(f'{root}/media', s(8), 0)
    os.makedirs(f'{root}/dups')                      # the same content under other names
    with open(f'{root}/media/video/clip000.mp4', 'rb') as a, open(f'{root}/dups/clip-copy.mp4', 'wb') as b:
        b.write(a.read())
    with open(f'{root}/var/log/app.log', 'rb') as a, open(f'{root}/dups/app.log.bak', 'wb') as b:
        b.write(a.read(64 * MiB))
    os.makedirs(f'{root}/odd')
    for i in range(50):
        open(f'{root}/odd/empty{i}', 'wb').close()
    os.symlink('../var/log/app.log', f'{root}/odd/link')
    os.symlink('/nonexistent/target', f'{root}/odd/dangling')
    os.link(f'{root}/var/log/app.log', f'{root}/odd/hardlink.log')
    for n in [b'with space', b'new\nline', b'latin1-\xe9t\xe9', b'x' * 255]:
        with open(os.path.join(root.encode(), b'odd', n), 'wb') as f:
            f.write(n)
    os.makedirs(f'{root}/odd/' + '/'.join(f'n{i}' for i in range(40)))
PY
    echo "$params" >"corpora/$name.complete"
  done
}

# Runs one measured command of the corpora section: wall, user and system seconds and peak RSS (KiB) go to
# corpora-results.txt as "CORPUS STEP CACHE TOOL WALL USER SYS RSS".
corpora_measured() { # corpus step cache tool command...
  local c=$1 step=$2 cache=$3 tool=$4
  shift 4
  sync
  if [ "$cache" = cold ]; then drop_caches; fi
  /usr/bin/time -o time.log -f '%e %U %S %M' "$@" >out.log 2>&1 || { echo "FAILED: $*"; cat out.log; exit 1; }
  local wall user sys rss
  read -r wall user sys rss < <(tail -1 time.log)
  echo "$c $step $cache $tool $wall $user $sys $rss" >>corpora-results.txt
  printf '  %-7s %-9s %-5s %-9s wall %7s s  user %7s s  sys %6s s  %6s MiB\n' "$c" "$step" "$cache" "$tool" \
    "$wall" "$user" "$sys" "$((rss / 1024))"
}
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }
warm() { tar -cf - "$@" 2>/dev/null | cat >/dev/null; }

bench_corpora() {
  [ "$(id -u)" = 0 ] || die "the corpora section drops the page cache for its cold runs: run it as root"
  local names c run first second tool
  read -r -a names <<<"$CORPORA"
  ensure_corpora "${names[@]}"
  rm -f corpora-results.txt corpora-floors.txt
  for c in "${names[@]}"; do
    log "corpus $c: $(du -sh --apparent-size "corpora/$c" | cut -f1), $(find "corpora/$c" | wc -l) entries; restic and tidemark alternate, $RUNS runs"
    # The floor: the stages' CPU cost on one core (warm; packs written beside the repositories), and the cold read
    # on its own.
    warm "corpora/$c"
    local costs
    costs=$("$TM" debug stage-costs --scratch . "corpora/$c")
    drop_caches
    local t0 t1
    t0=$(now)
    warm "corpora/$c"
    t1=$(now)
    echo "$c $(elapsed "$t0" "$t1") $costs" >>corpora-floors.txt
    echo "  stage costs: $costs; cold read $(elapsed "$t0" "$t1") s"
    for run in $(seq "$RUNS"); do
      if [ $((run % 2)) = 1 ]; then first=restic second=tidemark; else first=tidemark second=restic; fi
      for cache in cold warm; do
        for tool in $first $second; do
          rm -rf "repo-$tool"
          if [ "$tool" = restic ]; then restic init -q -r repo-restic; else "$TM" init -q -r repo-tidemark; fi
          if [ "$cache" = warm ]; then warm "corpora/$c"; fi
          if [ "$tool" = restic ]; then
            corpora_measured "$c" first "$cache" restic restic -q -r repo-restic backup "corpora/$c"
          else
            corpora_measured "$c" first "$cache" tidemark "$TM" -q -r repo-tidemark backup "corpora/$c"
          fi
        done
      done
      for tool in $first $second; do
        warm "corpora/$c" "repo-$tool"
        if [ "$tool" = restic ]; then
          corpora_measured "$c" unchanged warm restic restic -q -r repo-restic backup "corpora/$c"
        else
          corpora_measured "$c" unchanged warm tidemark "$TM" -q -r repo-tidemark backup "corpora/$c"
        fi
      done
      for tool in $first $second; do
        local dir
        dir=$(fresh_target)
        warm "repo-$tool"
        if [ "$tool" = restic ]; then
          corpora_measured "$c" restore warm restic restic -q -r repo-restic restore latest --target "$dir"
        else
          corpora_measured "$c" restore warm tidemark "$TM" -q -r repo-tidemark restore latest --target "$dir"
          if [ "$run" = 1 ] && ! diff -r --no-dereference "corpora/$c" "$dir/corpora/$c" >/dev/null; then
            die "tidemark's restore of the $c corpus differs from it"
          fi
        fi
      done
    done
    rm -rf repo-restic repo-tidemark
  done
  if is_mounted "$BENCH_DIR/restore-fs"; then umount "$BENCH_DIR/restore-fs"; fi
  rm -f "$FS_IMG"
  render_corpora >corpora-table.md
  update_doc corpora corpora-table.md
}

render_corpora() {
  python3 - "$(restic version)" "$("$TM" version)" "$(nproc)" "$(date -u +%Y-%m-%d)" "$RUNS" "$CORPORA_SCALE" <<'PY'
import json, statistics, sys
restic_v, tm_v, ncpu, day, runs, scale = sys.argv[1:7]
ncpu = int(ncpu)
rows = {}
for line in open('corpora-results.txt'):
    c, step, cache, tool, wall, user, sys_, rss = line.split()
    rows.setdefault((c, step, cache), {}).setdefault(tool, []).append((float(wall), float(user) + float(sys_), int(rss)))
floors = {}
for line in open('corpora-floors.txt'):
    c, cold_read, costs = line.split(' ', 2)
    k = json.loads(costs)
    cpu = sum(k.get(f, 0) for f in ['walk_seconds', 'read_seconds', 'chunk_seconds', 'hash_seconds', 'compress_seconds', 'seal_seconds',
                                     'pack_hash_seconds', 'write_seconds', 'key_open_seconds'])
    floors[c] = (float(cold_read), cpu, k)
med = statistics.median
print(f'Measured {day} on {ncpu} cores: {restic_v.split(" compiled")[0]} against {tm_v.split(" on ")[0]}, {runs} runs each,')
print(f'alternating which tool goes first; corpora at scale {scale} (`BENCH_CORPORA_SCALE`). Time: median wall seconds')
print('(min-max); CPU: median user + system seconds; busy: tidemark\'s CPU / (wall x cores); RSS: largest peak, MiB.')
print('Floor: the stages\' CPU on one core (`tidemark debug stage-costs`: the walk (list, lstat and list xattrs of every')
print('entry), read from the page cache, chunk, SHA-256, zstd, seal, each pack\'s SHA-256 and its write into the page')
print('cache, one key derivation) spread over every core, or for a cold cache the cold read alone (`tar` of the corpus)')
print('when that is longer.\n')
for c in dict.fromkeys(k[0] for k in rows):
    cold_read, cpu, k = floors[c]
    print(f'**{c}**: {k["files"]:,} files, {k["bytes"] / 2**20:,.0f} MiB, zstd leaves {100 * k["stored_bytes"] / max(1, k["bytes"]):.0f}%; '
          f'stage CPU {cpu:.2f} s (walk {k.get("walk_seconds", 0):.2f}, read {k["read_seconds"]:.2f}, chunk {k["chunk_seconds"]:.2f}, hash {k["hash_seconds"]:.2f}, '
          f'zstd {k["compress_seconds"]:.2f}, seal {k["seal_seconds"]:.2f}, pack hash {k.get("pack_hash_seconds", 0):.2f}, '
          f'write {k.get("write_seconds", 0):.2f}, key {k.get("key_open_seconds", 0):.2f}); cold read {cold_read:.2f} s\n')
    print('| step | cache | restic | tidemark | ratio | CPU restic / tidemark | busy | RSS restic / tidemark | floor | tidemark / floor |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for (cc, step, cache), t in rows.items():
        if cc != c:
            continue
        rw = [x[0] for x in t['restic']]; tw = [x[0] for x in t['tidemark']]
        rc = med(x[1] for x in t['restic']); tc = med(x[1] for x in t['tidemark'])
        rr = max(x[2] for x in t['restic']) / 1024; tr = max(x[2] for x in t['tidemark']) / 1024
        busy = 100 * tc / (med(tw) * ncpu)
        fl = ''
        if step == 'first':
            f = max(cold_read, cpu / ncpu) if cache == 'cold' else cpu / ncpu
            fl = f'{f:.2f} s | {med(tw) / f:.2f}x'
        else:
            fl = ' | '
        print(f'| {step} | {cache} | {med(rw):.2f} ({min(rw):.2f}-{max(rw):.2f}) | {med(tw):.2f} ({min(tw):.2f}-{max(tw):.2f}) '
              f'| {med(rw) / med(tw):.2f}x | {rc:.1f} / {tc:.1f} | {busy:.0f}% | {rr:.0f} / {tr:.0f} | {fl} |')
    print()
PY
}

for section in "${SECTIONS[@]}"; do
  "bench_$section"
done
if [ "$OUT" != "-" ]; then cat "$OUT"; fi
