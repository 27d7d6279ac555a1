#!/usr/bin/env bash
# Measures the VMM itself on this host's KVM with the probe guest (release build) and writes
# the "vmm" section of docs/PERFORMANCE.md:
#   - PIO/MMIO exit round trips per second, beside a plain-C KVM loop on the same guest code
#   - time from process start (exec) to the guest's first instruction
#   - the VMM process's private memory beyond the guest RAM the guest touched
#   scripts/bench-vmm.sh [--runs N] [--no-doc]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=5
DOC=1
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --no-doc) DOC=0; shift ;;
    *) echo "usage: $0 [--runs N] [--no-doc]" >&2; exit 2 ;;
  esac
done
[[ -w /dev/kvm ]] || { echo "bench-vmm: needs a writable /dev/kvm" >&2; exit 1; }
echo "[bench-vmm] building vireo (release, static Swift runtime) and the C peer"
swift build -c release --static-swift-stdlib --product vireo >/dev/null
VIREO=.build/release/vireo
PEER=$(mktemp -d)/c-kvm-loop
cc -O2 -o "$PEER" bench/c-kvm-loop.c Sources/CProbeGuest/probe.S Sources/CProbeGuest/probe.c -ISources/CProbeGuest/include

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }

COUNT=100000
v_pio=(); v_mmio=(); c_pio=(); c_mmio=()
for ((i = 0; i < RUNS; i++)); do   # interleaved, so load drift hits both alike
  v=$($VIREO bench exits --count $COUNT); c=$($PEER $COUNT)
  v_pio+=("$(field pio_exits_per_s <<<"$v")"); v_mmio+=("$(field mmio_exits_per_s <<<"$v")")
  c_pio+=("$(field pio_exits_per_s <<<"$c")"); c_mmio+=("$(field mmio_exits_per_s <<<"$c")")
  echo "[bench-vmm] run $((i + 1)): vireo $v | c $c"
done
VP=$(printf '%s\n' "${v_pio[@]}" | median); VM=$(printf '%s\n' "${v_mmio[@]}" | median)
CP=$(printf '%s\n' "${c_pio[@]}" | median); CM=$(printf '%s\n' "${c_mmio[@]}" | median)
start=$($VIREO bench start --runs 21)
echo "[bench-vmm] $start"
mem=$($VIREO bench memory)
echo "[bench-vmm] $mem"
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}'; }
echo "pio_exits_per_s=$VP (c $CP, $(pct "$VP" "$CP")) mmio_exits_per_s=$VM (c $CM, $(pct "$VM" "$CM"))"

((DOC)) || exit 0
host="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores), kernel $(uname -r)"
kind=$([[ -d /sys/module/kvm_pvm ]] && echo "KVM PVM backend (nested; guest ring 3 runs natively)" || echo "hardware-assisted KVM")
section=$(cat <<EOS
<!-- BEGIN vmm -->
## The VMM itself: exits, start-up, memory (probe guest, host KVM)

Measured $(date -u +%Y-%m-%d) on $host, $kind, with \`scripts/bench-vmm.sh --runs $RUNS\`
(release build, \`--static-swift-stdlib\`; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)).
The probe guest (Sources/CProbeGuest/probe.S) drops to ring 3 and loops on one exit kind;
the rate is counted from its first-instruction marker to its done marker.

| measurement | Vireo (Swift) | plain-C KVM loop, same guest code | Vireo vs C | goal |
|---|---|---|---|---|
| PIO exit round trips per second (median of $RUNS, $COUNT exits each) | $VP | $CP | $(pct "$VP" "$CP") | within 5% |
| MMIO exit round trips per second (median of $RUNS) | $VM | $CM | $(pct "$VM" "$CM") | within 5% |

| measurement | Vireo | goal |
|---|---|---|
| process start (exec) to guest's first instruction, 128 MiB 1-vCPU probe VM (\`vireo bench start\`, 21 runs) | $(field start_to_first_instruction_us <<<"$start") µs median (min $(field min_us <<<"$start"), max $(field max_us <<<"$start")) | < 10 000 µs |
| VMM private memory beyond touched guest RAM, running 1-vCPU 128 MiB VM (\`vireo bench memory\`) | $(field vmm_private_kib <<<"$mem") KiB (of which dirty $(field vmm_private_dirty_kib <<<"$mem") KiB; guest touched $(field guest_touched_kib <<<"$mem") KiB) | ≤ 5 120 KiB |

All exit figures on this host are bounded by the PVM exit cost (about 24 µs per round trip
when the machine is idle; see ../shared/HOSTS.md), not by the VMM: the C loop does nothing
but re-enter. Private memory is Private_Clean + Private_Dirty of /proc/PID/smaps outside the
guest-RAM mapping (the static binary's text counts while no other process maps it).
<!-- END vmm -->
EOS
)
doc=docs/PERFORMANCE.md
[[ -f $doc ]] || printf '# Vireo performance\n\nFigures are measured by the scripts named in each section; never edited by hand.\n' > $doc
python3 - "$doc" "$section" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
pattern = re.compile(r"<!-- BEGIN vmm -->.*?<!-- END vmm -->", re.S)
text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "[bench-vmm] wrote the vmm section of $doc"
