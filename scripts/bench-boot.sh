#!/usr/bin/env bash
# Boot-time benchmark of the stock Debian cloud kernel as an L2 guest, inside ONE testbed run.
#
#   scripts/bench-boot.sh [--reps N] [--warmup W] [--vireo PATH] [--timeout S] [--no-doc]
#
# For each VMM -- (a) QEMU -M microvm and -M q35 (-accel kvm -cpu host, no devices) and (b) Vireo
# (`vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cmdline "console=ttyS0
# panic=-1 quiet" --cpus 2 --memory 512M`, only with --vireo) -- boots the guest N times (default
# 5; after W uncounted warm-up boots, default 1) and measures, with L1's clock, the wall time from starting the VMM process to the guest's
# VIREO-GUEST-READY line and to the VMM's exit after the guest's `reboot -f`. Prints medians
# and writes them to docs/PERFORMANCE.md between <!-- BEGIN boot --> and <!-- END boot -->
# (unless --no-doc). The raw console log is out/bench/boot.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

REPS=5 WARMUP=1 VIREO= TIMEOUT=900 DOC=1
while (($#)); do
	case $1 in
	--reps) REPS=${2:?}; shift 2 ;;
	--warmup) WARMUP=${2:?}; shift 2 ;;
	--vireo) VIREO=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--no-doc) DOC=0; shift ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "--warmup wants an integer >= 0"
OUT=$VIREO_ROOT/out/bench
mkdir -p "$OUT"
LOG=$OUT/boot.log
STAMPS=$OUT/host-stamps.txt
TB=("$VIREO_ROOT/scripts/testbed.sh" --smp 2 --memory 2048 --timeout "$TIMEOUT" --with-qemu --no-vmlinux
	--log "$LOG" --add "$VIREO_ROOT/guest/l1-bin/vireo-bench-boot:/usr/local/bin/vireo-bench-boot")
if [[ -n $VIREO ]]; then
	TB+=(--vireo "$VIREO")
else
	log "no --vireo PATH given: the Vireo part (b) is skipped; only QEMU is measured"
fi
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "running ${WARMUP}+${REPS} boots per VMM inside one testbed L1 (host load average now: $LOAD0)"
: >"$STAMPS"
set +e
# Stamp L1's start/end bench lines with the host clock to check that L1's clock keeps time.
"${TB[@]}" -- WARMUP="$WARMUP" vireo-bench-boot "$REPS" | while IFS= read -r line; do
	printf '%s\n' "$line"
	case $line in VIREO-BENCH-L1*) printf '%s %s\n' "$(date +%s.%N)" "${line%$'\r'}" >>"$STAMPS" ;; esac
done
RC=${PIPESTATUS[0]}
set -e
((RC == 0)) || die "testbed run failed (status $RC); see $LOG"

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$(tr -d '\r' <"$LOG" | grep '^VIREO-BENCH vmm=' | grep -Ev ' rep=(0|-[0-9]+) ' || true)
[[ -n $RESULTS ]] || die "no VIREO-BENCH lines in $LOG"
SKIPS=$(tr -d '\r' <"$LOG" | sed -n 's/^VIREO-BENCH-SKIP vmm=\([^ ]*\) reason=\(.*\)/\1 (\2)/p')

# clock check: L1 uptime span vs host span between the same two lines
CLOCK=$(awk '/uptime_start=/ {split($3,a,"="); hs=$1; ls=a[2]} /uptime_end=/ {split($3,a,"="); he=$1; le=a[2]}
	END {if (hs && he) printf "L1 clock %.2f s vs host clock %.2f s over the benchmark", le-ls, he-hs}' "$STAMPS")

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) printf "%.2f", v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2}'; }
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p"; }
TABLE="| VMM (L2 inside testbed L1) | start → VIREO-GUEST-READY, median | start → VMM exit after reboot, median | runs ok/total | all READY times (s) |
|---|---|---|---|---|"
for vmm in $(echo "$RESULTS" | field vmm | awk '!seen[$0]++'); do
	rows=$(echo "$RESULTS" | grep "vmm=$vmm ")
	# ok = READY seen with nproc=2, VMM exited 0 by itself, no KVM internal error
	goodrows=$(echo "$rows" | grep ' rc=0 ' | grep 'nproc=2' | grep ' err=0' | grep -v 'ready_s=NaN' || true)
	ok=$(echo "$goodrows" | grep -c . || true)
	total=$(echo "$rows" | wc -l)
	# READY is reached before the reboot, so runs that failed later still give a READY time
	r_med=$(echo "$rows" | grep 'nproc=2' | grep -v 'ready_s=NaN' | field ready_s | median)
	e_med=$(echo "$goodrows" | field exit_s | median)
	all=$(echo "$rows" | field ready_s | tr '\n' ' ' | sed 's/ $//')
	case $vmm in
	qemu-*) label="QEMU $(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p') \`-M ${vmm#qemu-} -accel kvm -cpu host\`" ;;
	vireo) label="Vireo \`vireo run\`" ;;
	*) label=$vmm ;;
	esac
	TABLE+=$'\n'"| $label | ${r_med} s | ${e_med} s | $ok/$total | $all |"
	log "$vmm: start->READY median ${r_med}s, start->exit median ${e_med}s ($ok/$total ok; READY times: $all)"
done
[[ -n $SKIPS ]] && log "skipped: $SKIPS"
[[ -n $CLOCK ]] && log "$CLOCK"

if ((DOC)); then
	DOCF=$VIREO_ROOT/docs/PERFORMANCE.md
	mkdir -p "$(dirname "$DOCF")"
	[[ -f $DOCF ]] || printf '# Vireo performance\n\nFigures are measured by the scripts named in each section; never edited by hand.\n\n<!-- BEGIN boot -->\n<!-- END boot -->\n' >"$DOCF"
	grep -q '<!-- BEGIN boot -->' "$DOCF" && grep -q '<!-- END boot -->' "$DOCF" ||
		printf '\n<!-- BEGIN boot -->\n<!-- END boot -->\n' >>"$DOCF"
	REPRO="scripts/bench-boot.sh --reps $REPS --warmup $WARMUP${VIREO:+ --vireo <path-to-vireo>}"
	KVER=$(cat "$VIREO_ROOT/out/testbed/guest/kernel-version" 2>/dev/null || echo '?')
	{
		echo "## Boot time: stock Debian kernel to user space (nested testbed)"
		echo
		echo "Measured $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) host cores, shared),"
		echo "with \`$REPRO\`."
		echo
		echo "Guest: Debian \`linux-image-$KVER\` (stock bzImage) + Vireo's busybox initramfs (scripts/guest-assets.sh),"
		echo "2 vCPUs, 512 MiB, cmdline \`console=ttyS0 panic=-1 quiet\`. The guest loads its virtio modules,"
		echo "prints \`VIREO-GUEST-READY\`, then \`reboot -f\`. Each L2 VMM runs inside the testbed's L1"
		echo "(QEMU TCG, \`-cpu EPYC-Rome,+svm,+npt\`, so L2 is also ultimately executed by TCG): the figures"
		echo "compare VMMs with each other and are many times slower than on VT-x/AMD-V hardware."
		echo "Times are L1 wall clock (/proc/uptime, 10 ms) from starting the VMM process, after $WARMUP uncounted"
		echo "warm-up boot(s) per VMM; ${CLOCK:-clock check n/a}. Host load average (1/5/15 min) $LOAD0 at"
		echo "start, $LOAD1 at end: other TCG runs share the cores, so expect large run-to-run spread."
		echo
		echo "$TABLE"
		echo
		echo "Repetitions are interleaved across VMMs (round i boots each VMM once) so load drift hits all alike."
		echo "A run is ok when the guest printed \`nproc=2\` and the VMM exited 0 by itself; exit medians are over ok"
		echo "runs only, READY medians over all runs that reached READY. QEMU microvm sometimes hangs after the"
		echo "guest's reboot (\`KVM internal error\`, see docs/testbed.md), which is what its failed runs were."
		[[ -z $SKIPS ]] || { echo; echo "Not measured in this run: $SKIPS."; }
	} >"$OUT/boot-section.md"
	awk -v f="$OUT/boot-section.md" '
		/<!-- BEGIN boot -->/ {print; while ((getline l < f) > 0) print l; skip=1; next}
		/<!-- END boot -->/ {skip=0}
		!skip {print}' "$DOCF" >"$DOCF.tmp" && mv "$DOCF.tmp" "$DOCF"
	log "wrote the boot section of $DOCF"
fi
