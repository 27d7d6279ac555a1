#!/usr/bin/env bash
# Convert throughput per format, vireo beside qemu-img in the same run (release build).
# Usage: scripts/bench-convert.sh [SIZE_MIB] [--write-doc]
# Each row: a source image of SIZE_MIB with mixed content (data, zeros, holes) written by qemu-img;
# both tools convert it to qcow2 (the qcow2+zlib/zstd rows compress a raw source with -c), best of 3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-512}
V=.build/release/vireo
[[ -x $V ]] || swift build -c release --product vireo >/dev/null
D=$(mktemp -d /tmp/vireo-bench-convert.XXXXXX); trap 'rm -rf "$D"' EXIT
# Source content: 1/3 random, 1/3 compressible text-like, 1/3 zero (hole).
python3 - "$D/src.raw" "$SIZE" <<'PY'
import os, sys
p, mib = sys.argv[1], int(sys.argv[2])
with open(p, "wb") as f:
    f.truncate(mib << 20)
    chunk = 1 << 20
    for i in range(mib):
        f.seek(i * chunk)
        if i % 3 == 0: f.write(os.urandom(chunk))
        elif i % 3 == 1: f.write((b"vireo disk bench %08d " % i) * (chunk // 24) + b"\0" * (chunk % 24))
PY
best() { local b=999999; for _ in 1 2 3; do rm -f "$D/out"*; local t0=$(date +%s.%N); "$@" >/dev/null 2>&1; local t1=$(date +%s.%N)
  b=$(python3 -c "print(min($b, $t1-$t0))"); done; echo "$b"; }
rows=()
for fmt in raw qcow2 qcow2+zlib qcow2+zstd vmdk vhd vhdx vdi; do
  case $fmt in
    raw) src=$D/src.raw; extra=() ;;
    qcow2) src=$D/s.qcow2; qemu-img convert -O qcow2 "$D/src.raw" "$src"; extra=() ;;
    qcow2+zlib) src=$D/src.raw; extra=(-c -o compression_type=zlib) ;;
    qcow2+zstd) src=$D/src.raw; extra=(-c -o compression_type=zstd) ;;
    vhd) src=$D/s.vhd; qemu-img convert -O vpc -o force_size=on "$D/src.raw" "$src"; extra=() ;;
    *) src=$D/s.$fmt; qemu-img convert -O "$fmt" "$D/src.raw" "$src"; extra=() ;;
  esac
  tv=$(best $V disk convert -O qcow2 "${extra[@]}" "$src" "$D/out.qcow2")
  tq=$(best qemu-img convert -O qcow2 "${extra[@]}" "$src" "$D/out.qcow2")
  rows+=("$(python3 -c "s=$SIZE; v=$tv; q=$tq; print(f'| {\"$fmt\"} | {s/v:.0f} | {s/q:.0f} | {v/q:.2f} |')")")
done
table="| source format (to qcow2) | vireo MiB/s | qemu-img MiB/s | vireo time / qemu-img time |
|---|---|---|---|
$(printf '%s\n' "${rows[@]}")"
echo "$table"
if [[ ${2:-} == --write-doc ]]; then
  python3 - docs/PERFORMANCE.md "$table" "$SIZE" "$(nproc)" "$(qemu-img --version | head -1)" <<'PY'
import sys, datetime
p, table, size, cpus, qv = sys.argv[1:6]
start, end = "<!-- bench-convert:start -->", "<!-- bench-convert:end -->"
block = (f"{start}\n## Disk convert throughput (scripts/bench-convert.sh)\n\n"
         f"{size} MiB source (1/3 random, 1/3 compressible, 1/3 holes), converted to qcow2, best of 3, "
         f"{cpus} CPUs, {qv}, measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; the host was shared with other builds, "
         f"so compare the two columns (same run) rather than absolute figures.\n\n{table}\n{end}")
try: s = open(p).read()
except FileNotFoundError: s = "# Performance\n"
if start in s: s = s[:s.index(start)] + block + s[s.index(end) + len(end):]
else: s = s.rstrip("\n") + "\n\n" + block + "\n"
open(p, "w").write(s)
PY
fi
