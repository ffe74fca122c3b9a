#!/usr/bin/env bash
# Benchmark: tidemark against restic on the same generated ~1 GiB corpus, in one run, on this machine.
# Steps: first backup, unchanged re-backup, backup after changing ~1% of the data, full restore.
# For each: wall time and peak RSS (/usr/bin/time). Writes the table to docs/performance.md.
#
#   scripts/bench.sh                 # build release, generate the corpus, run, write docs/performance.md
#   BENCH_DIR=/var/tmp/b scripts/bench.sh   # where corpus and repositories go (default /tmp/tidemark-bench)
#   BENCH_OUT=-  scripts/bench.sh    # print the table instead of writing docs/performance.md
set -euo pipefail
SELF=$(readlink -f "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_swift
ensure_packages
if ! command -v /usr/bin/time >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then
  apt-get install -y -qq time >/dev/null
fi

ROOT=$PWD
BENCH_DIR=${BENCH_DIR:-/tmp/tidemark-bench}
OUT=${BENCH_OUT:-docs/performance.md}
log "building release binary"
swift build -c release >/dev/null
TM="$ROOT/.build/release/tidemark"

mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
rm -rf repo-restic repo-tidemark restore-restic restore-tidemark results.txt cache
export RESTIC_PASSWORD=bench TIDEMARK_PASSWORD=bench RESTIC_CACHE_DIR="$BENCH_DIR/cache"

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
# The 1% step changes the corpus: regenerate it on the next run.
if [ -f corpus/.changed ]; then rm -rf corpus; exec "$SELF" "$@"; fi
CORPUS_BYTES=$(du -sb --apparent-size corpus | cut -f1)
CORPUS_FILES=$(find corpus -type f ! -name '.complete' | wc -l)
find corpus -type f -exec cat {} + > /dev/null   # same warm page cache for both tools

# Runs a command under /usr/bin/time; records wall seconds and peak RSS (KiB).
run_measured() { # name tool command...
  local name=$1 tool=$2
  shift 2
  local log="time-$tool-$name.log"
  /usr/bin/time -o "$log" -f '%e %M' "$@" > "out-$tool-$name.log" 2>&1 || { echo "FAILED: $*"; cat "out-$tool-$name.log"; exit 1; }
  local t
  t=$(tail -1 "$log")
  echo "$name $tool $t" >> results.txt
  printf '  %-8s %-10s %6s s  %5s MiB\n' "$tool" "$name" "${t% *}" "$(( ${t#* } / 1024 ))"
}

RUNS=${BENCH_RUNS:-3}
# Restores go to a freshly made ext4 file system per run when we can loop-mount (root): restoring into a
# directory where the previous restore was just deleted makes ext4's inode allocator scan recently freed
# inodes (`recently_deleted` in ext4_create), which dominated and randomised both tools' timings.
FS_IMG="$BENCH_DIR/restore-fs.img"
fresh_target() { # prints a directory to restore into
  if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null 2>&1; then
    mountpoint -q "$BENCH_DIR/restore-fs" && umount "$BENCH_DIR/restore-fs"
    rm -f "$FS_IMG"
    truncate -s 3G "$FS_IMG"
    mkfs.ext4 -q -F "$FS_IMG"
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
trap 'mountpoint -q "$BENCH_DIR/restore-fs" && umount "$BENCH_DIR/restore-fs"; rm -f "$FS_IMG"' EXIT

log "restic $(restic version | cut -d' ' -f2) vs tidemark $("$TM" version | cut -d' ' -f2): $RUNS runs per step, median reported"
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
python3 - <<'PY'
import random
r = random.Random(99)
for p in ['corpus/mid/m000.bin', 'corpus/mid/m001.bin', 'corpus/mid/m002.bin']:
    with open(p, 'wb') as f: f.write(r.randbytes(1 << 20))
with open('corpus/large/l0.bin', 'r+b') as f:        # 4 MiB rewritten in the middle of a large file
    f.seek(50 << 20); f.write(r.randbytes(4 << 20))
with open('corpus/text/t000.txt', 'a') as f: f.write('appended line\n' * 1000)
for d in range(10):
    with open(f'corpus/small/d{d:02}/f000', 'wb') as f: f.write(r.randbytes(5000))
open('corpus/.changed', 'w').close()
PY
run_measured change1pct restic restic -q -r repo-restic backup corpus
run_measured change1pct tidemark "$TM" -q -r repo-tidemark backup corpus

log "full restore of the latest snapshot"
# Both repositories warm in the page cache, like the corpus (tidemark drops packs it writes from the cache).
find repo-restic repo-tidemark -type f -exec cat {} + > /dev/null
for run in $(seq "$RUNS"); do
  dir=$(fresh_target)
  run_measured restore restic restic -q -r repo-restic restore latest --target "$dir"
  dir=$(fresh_target)
  run_measured restore tidemark "$TM" -q -r repo-tidemark restore latest --target "$dir"
  diff -rq corpus "$dir/corpus" -x .changed > /dev/null || { echo "tidemark's restore differs from the corpus"; exit 1; }
done

REPO_R=$(du -sb repo-restic | cut -f1)
REPO_T=$(du -sb repo-tidemark | cut -f1)

render() {
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
print('# Performance: tidemark vs restic\n')
print(f'Measured by `scripts/bench.sh` on {day}: {cores} cores, same machine, same run, warm page cache;')
print(f'median of {nruns} runs per step (the 1% change step runs once), restores into a fresh ext4 file system each.')
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
if [ "$OUT" = "-" ]; then
  render
else
  {
    render
    echo
    cat "$ROOT/docs/performance-notes.md" 2>/dev/null || true
  } > "$ROOT/$OUT"
  log "wrote $OUT"
  cat "$ROOT/$OUT"
fi
