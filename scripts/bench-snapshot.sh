#!/usr/bin/env bash
# Snapshot save/restore benchmark of a running Debian guest, Vireo beside QEMU, in ONE testbed run.
#
#   scripts/bench-snapshot.sh [--reps N] [--fill MIB] [--vireo PATH] [--timeout S] [--no-doc]
#
# Inside the testbed's L1, guest/l1-bin/vireo-bench-snapshot boots the stock Debian kernel (2 vCPUs,
# 512 MiB) under QEMU (-M q35 -accel kvm) and under Vireo (only with --vireo); the guest fills MIB
# (default 128) of its RAM with random bytes and counts on its console. Each VMM saves it (Vireo:
# control `snapshot DIR`; QEMU: HMP stop + migrate to a file) and restores it in a new process
# (Vireo: `vireo run --restore`; QEMU: -incoming), N times (default 3). Prints medians and writes
# them to docs/PERFORMANCE.md between <!-- BEGIN snapshot --> and <!-- END snapshot --> (unless
# --no-doc). The raw console log is out/bench/snapshot.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

REPS=3 FILL=128 VIREO= TIMEOUT=1500 DOC=1
while (($#)); do
	case $1 in
	--reps) REPS=${2:?}; shift 2 ;;
	--fill) FILL=${2:?}; shift 2 ;;
	--vireo) VIREO=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--no-doc) DOC=0; shift ;;
	-h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
[[ $FILL =~ ^[0-9]+$ ]] && ((FILL <= 384)) || die "--fill wants MiB from 0 to 384 (the guest has 512 MiB)"
OUT=$VIREO_ROOT/out/bench
mkdir -p "$OUT"
LOG=$OUT/snapshot.log
TB=("$VIREO_ROOT/scripts/testbed.sh" --smp 2 --memory 3072 --timeout "$TIMEOUT" --with-qemu --no-vmlinux
	--log "$LOG" --add "$VIREO_ROOT/guest/l1-bin/vireo-bench-snapshot:/usr/local/bin/vireo-bench-snapshot")
if [[ -n $VIREO ]]; then
	TB+=(--vireo "$VIREO")
else
	log "no --vireo PATH given: only QEMU is measured"
fi
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "running $REPS save/restore rounds per VMM inside one testbed L1 (host load average now: $LOAD0)"
set +e
"${TB[@]}" -- FILL_MIB="$FILL" vireo-bench-snapshot "$REPS"
RC=$?
set -e
((RC == 0)) || die "testbed run failed (status $RC); see $LOG"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$(tr -d '\r' <"$LOG" | grep '^VIREO-BENCH-SNAP vmm=' || true)
[[ -n $RESULTS ]] || die "no VIREO-BENCH-SNAP lines in $LOG"
SKIPS=$(tr -d '\r' <"$LOG" | sed -n 's/^VIREO-BENCH-SKIP vmm=\([^ ]*\) reason=\(.*\)/\1 (\2)/p')

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) printf "%g", v[(NR+1)/2]; else printf "%g", (v[NR/2]+v[NR/2+1])/2}'; }
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p"; }
TABLE="| VMM (L2 inside testbed L1) | save: guest paused, median | restore: new VMM process → guest's next line, median | files on disk, median | restores that resumed the count / runs |
|---|---|---|---|---|"
for vmm in $(echo "$RESULTS" | field vmm | awk '!seen[$0]++'); do
	rows=$(echo "$RESULTS" | grep "vmm=$vmm ")
	good=$(echo "$rows" | grep ' ok=1$' || true)
	ok=$(echo "$good" | grep -c . || true)
	total=$(echo "$rows" | wc -l)
	s_med=$(echo "$rows" | grep -v 'save_ms=NaN' | field save_ms | median)
	r_med=$(echo "$good" | field restore_s | median)
	b_med=$(echo "$rows" | field bytes | median)
	case $vmm in
	qemu-*) label="QEMU $(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p') \`-M ${vmm#qemu-}\`, stop + migrate to a file / -incoming" ;;
	vireo) label="Vireo control \`snapshot\` / \`vireo run --restore\`" ;;
	*) label=$vmm ;;
	esac
	TABLE+=$'\n'"| $label | ${s_med} ms | ${r_med} s | $((${b_med%.*} / 1024)) MiB | $ok/$total |"
	log "$vmm: save ${s_med} ms, restore ${r_med} s, ${b_med} KiB ($ok/$total resumed)"
done
[[ -n $SKIPS ]] && log "skipped: $SKIPS"

if ((DOC)); then
	DOCF=$VIREO_ROOT/docs/PERFORMANCE.md
	grep -q '<!-- BEGIN snapshot -->' "$DOCF" && grep -q '<!-- END snapshot -->' "$DOCF" ||
		printf '\n<!-- BEGIN snapshot -->\n<!-- END snapshot -->\n' >>"$DOCF"
	REPRO="scripts/bench-snapshot.sh --reps $REPS --fill $FILL${VIREO:+ --vireo <path-to-vireo>}"
	{
		echo "## Snapshot save and restore of a running Debian guest (nested testbed)"
		echo
		echo "Measured $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) host cores, shared),"
		echo "with \`$REPRO\`."
		echo
		echo "Guest: Debian's stock kernel + busybox initramfs, 2 vCPUs, 512 MiB; it fills $FILL MiB of its RAM"
		echo "(tmpfs) with random bytes, then prints a count every 50 ms. Each VMM saves the running guest"
		echo "and a new VMM process restores it; a run counts when the restored guest went on from the saved"
		echo "count. *Save* is how long the guest was paused: Vireo's own \`ms\` in the control reply (it pauses,"
		echo "writes, resumes) and QEMU's \`info migrate\` total time of a migration to a file of a stopped VM"
		echo "(what \`virsh save\` does; QEMU 7.2 has no \`file:\` URI, so the stream goes through a pipe to"
		echo "\`cat\`, as libvirt's goes through a pipe to its iohelper). *Restore* is L1 wall time from starting the VMM to the guest's next"
		echo "console line (10 ms clock, 10 ms poll). *Files* is \`du\` of the snapshot (Vireo's memory file"
		echo "skips never-touched and zero pages; QEMU's stream sends zero pages as markers)."
		echo "Everything runs in the testbed's L1 under TCG, so absolute times are far above hardware's;"
		echo "compare the rows. Host load average $LOAD0 at start, $LOAD1 at end."
		echo
		echo "$TABLE"
		echo
		echo "The probe-guest figures of \`vireo bench snapshot\` (restore in ~2 ms natively) are in docs/snapshots.md."
		[[ -z $SKIPS ]] || { echo; echo "Not measured in this run: $SKIPS."; }
	} >"$OUT/snapshot-section.md"
	awk -v f="$OUT/snapshot-section.md" '
		/<!-- BEGIN snapshot -->/ {print; while ((getline l < f) > 0) print l; skip=1; next}
		/<!-- END snapshot -->/ {skip=0}
		!skip {print}' "$DOCF" >"$DOCF.tmp" && mv "$DOCF.tmp" "$DOCF"
	log "wrote the snapshot section of $DOCF"
fi
