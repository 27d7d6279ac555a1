#!/usr/bin/env bash
# Disk-image benchmarks, Vireo beside qemu-img on the same files in one run.
# Writes the figures into docs/PERFORMANCE.md between <!-- BEGIN disk --> and <!-- END disk -->.
#
#   scripts/bench-disk.sh [--reps N] [--no-doc]
#
# 1. convert: a 256 MiB raw file (3/4 random data, every 4th MiB zero) to qcow2.
# 2. bench:   65536 requests of 4 KiB on a thin 256 MiB qcow2 (64 KiB clusters), writes on a fresh
#             thin image, then reads of the written image. qemu-img bench has no random mode, so both
#             tools use the same scattered order: a stride of 4 KiB x 7919 (prime) modulo the disk size,
#             which visits every 4 KiB block once in a pseudo-random order.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
DOC=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --no-doc) DOC=0; shift ;;
    *) echo "usage: $0 [--reps N] [--no-doc]" >&2; exit 2 ;;
  esac
done
command -v qemu-img >/dev/null || { echo "qemu-img not found: apt-get install qemu-utils" >&2; exit 1; }

swift build -c release --product vireo >&2
V="$PWD/.build/release/vireo"
W=$(mktemp -d /tmp/vireo-bench-disk.XXXXXX)
trap 'rm -rf "$W"' EXIT

now() { date +%s.%N; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# runs "$@" REPS times, prints the median wall time in seconds
timeit() {
  local ts=() t0 t1
  for _ in $(seq "$REPS"); do
    "$PRE" >/dev/null 2>&1 || true
    t0=$(now); "$@" >/dev/null; t1=$(now)
    ts+=("$(echo "$t1 - $t0" | bc -l)")
  done
  median "${ts[@]}"
}
PRE=true

echo "preparing 256 MiB source" >&2
head -c $((256 << 20)) /dev/urandom > "$W/src.raw"
for i in $(seq 0 4 255); do dd if=/dev/zero of="$W/src.raw" bs=1M seek="$i" count=1 conv=notrunc status=none; done
cat "$W/src.raw" > /dev/null   # warm the page cache for both tools alike

echo "convert" >&2
conv_q=$(timeit qemu-img convert -O qcow2 "$W/src.raw" "$W/q.qcow2")
conv_v=$(timeit "$V" disk convert -O qcow2 "$W/src.raw" "$W/v.qcow2")
qemu-img compare -q "$W/src.raw" "$W/v.qcow2"
qemu-img check -q "$W/v.qcow2"

echo "bench" >&2
STEP=$((4096 * 7919))
COUNT=65536
qemu-img create -q -f qcow2 "$W/thin.qcow2" 256M
fresh() { cp "$W/thin.qcow2" "$W/b.qcow2"; }
PRE=fresh
bw_q=$(timeit qemu-img bench -q -w -t writeback -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")
bw_q1=$(timeit qemu-img bench -q -w -t writeback -d 1 -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")
bw_v=$(timeit "$V" disk bench -q -w -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")
qemu-img check -q "$W/b.qcow2"
PRE=true
# reads: both tools on the same written image
fresh
qemu-img bench -q -w -t writeback -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2"
br_q=$(timeit qemu-img bench -q -t writeback -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")
br_q1=$(timeit qemu-img bench -q -t writeback -d 1 -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")
br_v=$(timeit "$V" disk bench -q -f qcow2 -c $COUNT -s 4K -S $STEP "$W/b.qcow2")

mibs() { echo "scale=0; 256 / $1" | bc -l; }
iops() { echo "scale=0; $COUNT / $1" | bc -l; }
fmt() { printf '%.3f' "$1"; }
host="$(uname -m), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), $(df -T "$W" | awk 'NR==2 {print $2}') on $(df "$W" | awk 'NR==2 {print $1}')"
section=$(cat <<EOT
<!-- BEGIN disk -->
## Disk images (vireo disk vs qemu-img)

Measured $(date -u +%Y-%m-%d) by \`scripts/bench-disk.sh --reps $REPS\` (release build, median of $REPS runs,
both tools in the same run on the same files; page cache warm; host: $host;
$(qemu-img --version | head -1)).

| Benchmark | qemu-img | vireo | vireo vs qemu-img |
|---|---|---|---|
| convert 256 MiB raw -> qcow2 (3/4 data) | $(fmt "$conv_q") s ($(mibs "$conv_q") MiB/s) | $(fmt "$conv_v") s ($(mibs "$conv_v") MiB/s) | $(printf '%.2f' "$(echo "$conv_q / $conv_v" | bc -l)")x |
| bench -w: 65536 x 4 KiB scattered writes, thin qcow2 | $(fmt "$bw_q") s ($(iops "$bw_q") IOPS) | $(fmt "$bw_v") s ($(iops "$bw_v") IOPS) | $(printf '%.2f' "$(echo "$bw_q / $bw_v" | bc -l)")x |
| bench: 65536 x 4 KiB scattered reads, same image | $(fmt "$br_q") s ($(iops "$br_q") IOPS) | $(fmt "$br_v") s ($(iops "$br_v") IOPS) | $(printf '%.2f' "$(echo "$br_q / $br_v" | bc -l)")x |

"x" is qemu-img's time divided by vireo's (above 1: vireo faster). qemu-img bench runs with its
default queue depth 64 (\`-t writeback\`); with \`-d 1\`, the depth vireo's synchronous bench uses, it took
$(fmt "$bw_q1") s for the writes and $(fmt "$br_q1") s for the reads. Both convert with their default output cache
mode (qemu-img: unsafe; vireo follows it), so neither time includes an fsync of the output.
"Scattered": stride 4 KiB x 7919 modulo 256 MiB (\`-S $STEP\`), every block visited once in a
pseudo-random order, because qemu-img bench has no random mode.

Reproduce: \`scripts/bench-disk.sh\` (needs qemu-utils; about three minutes).
<!-- END disk -->
EOT
)
echo "$section"
if [ "$DOC" = 1 ]; then
  f=docs/PERFORMANCE.md
  [ -f "$f" ] || printf '# Performance\n\nFigures measured by the scripts named in each section.\n\n' > "$f"
  if grep -q '<!-- BEGIN disk -->' "$f"; then
    awk -v sec="$section" '
      /<!-- BEGIN disk -->/ {print sec; skip=1; next}
      /<!-- END disk -->/ {skip=0; next}
      !skip {print}' "$f" > "$f.tmp" && mv "$f.tmp" "$f"
  else
    printf '\n%s\n' "$section" >> "$f"
  fi
  echo "updated $f" >&2
fi
