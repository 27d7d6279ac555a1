#!/usr/bin/env bash
# Live migration of a running Debian guest, Vireo beside QEMU, in ONE testbed run.
#
#   scripts/bench-migrate.sh [--reps N] [--fill MIB] [--dirty MIB] [--step MIB] [--downtime MS]
#                            [--vireo PATH] [--timeout S] [--no-doc]
#
# Inside the testbed's L1, guest/l1-bin/vireo-bench-migrate boots the stock Debian kernel (2 vCPUs,
# 512 MiB) under QEMU (-M q35 -accel kvm) and under Vireo (only with --vireo); the guest fills MIB
# (default 128) of its RAM with random bytes, then keeps rewriting a --dirty MIB (default 16) tmpfs
# file, --step MIB (default 4) at a time every 0.1 s, while counting on its console every 50 ms.
# Each VMM migrates it live to a new process of its own kind over a unix socket on the same L1
# (Vireo: control `migrate unix:PATH downtime-ms=MS` -> `vireo run --incoming`; QEMU: HMP
# `migrate -d` -> -incoming), both aiming at --downtime MS (default 50), N times (default 3).
# Prints medians and writes them to docs/PERFORMANCE.md between <!-- BEGIN migrate --> and
# <!-- END migrate --> (unless --no-doc). The raw console log is out/bench/migrate.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

REPS=3 FILL=128 DIRTY=16 STEP=4 DOWNTIME=50 VIREO= TIMEOUT=2400 DOC=1
while (($#)); do
	case $1 in
	--reps) REPS=${2:?}; shift 2 ;;
	--fill) FILL=${2:?}; shift 2 ;;
	--dirty) DIRTY=${2:?}; shift 2 ;;
	--step) STEP=${2:?}; shift 2 ;;
	--downtime) DOWNTIME=${2:?}; shift 2 ;;
	--vireo) VIREO=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--no-doc) DOC=0; shift ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
[[ $FILL =~ ^[0-9]+$ ]] && ((FILL <= 320)) || die "--fill wants MiB from 0 to 320 (the guest has 512 MiB)"
[[ $DIRTY =~ ^[1-9][0-9]*$ && $STEP =~ ^[1-9][0-9]*$ ]] && ((DIRTY <= 64 && STEP <= DIRTY && DIRTY % STEP == 0)) ||
	die "--dirty wants 1 to 64 MiB and --step a divisor of it"
[[ $DOWNTIME =~ ^[1-9][0-9]*$ ]] || die "--downtime wants milliseconds"
OUT=$VIREO_ROOT/out/bench
mkdir -p "$OUT"
LOG=$OUT/migrate.log
TB=("$VIREO_ROOT/scripts/testbed.sh" --smp 2 --memory 3072 --timeout "$TIMEOUT" --with-qemu --no-vmlinux
	--log "$LOG" --add "$VIREO_ROOT/guest/l1-bin/vireo-bench-migrate:/usr/local/bin/vireo-bench-migrate")
if [[ -n $VIREO ]]; then
	TB+=(--vireo "$VIREO")
else
	log "no --vireo PATH given: only QEMU is measured"
fi
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "running $REPS live migrations per VMM inside one testbed L1 (host load average now: $LOAD0)"
set +e
"${TB[@]}" -- FILL_MIB="$FILL" DIRTY_MIB="$DIRTY" STEP_MIB="$STEP" DOWNTIME_MS="$DOWNTIME" vireo-bench-migrate "$REPS"
RC=$?
set -e
((RC == 0)) || die "testbed run failed (status $RC); see $LOG"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$(tr -d '\r' <"$LOG" | grep '^VIREO-BENCH-MIG vmm=' || true)
[[ -n $RESULTS ]] || die "no VIREO-BENCH-MIG lines in $LOG"
FAILS=$(tr -d '\r' <"$LOG" | sed -n 's/^VIREO-BENCH-MIG-FAIL vmm=\([^ ]*\) rep=\([^ ]*\) status=\([^ ]*\) reason=\(.*\)/- \1, run \2: \3: \4/p')
SKIPS=$(tr -d '\r' <"$LOG" | sed -n 's/^VIREO-BENCH-SKIP vmm=\([^ ]*\) reason=\(.*\)/\1 (\2)/p')

median() { grep -v '^NaN$' | sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) printf "%g", v[(NR+1)/2]; else printf "%g", (v[NR/2]+v[NR/2+1])/2}'; }
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p"; }
TABLE="| VMM (L2 inside testbed L1) | downtime (the VMM's own figure) | guest's console gap at the switch (L1 clock) | total time | sent | rounds / dirty syncs | guest dirty rate before | runs that completed and continued / runs |
|---|---|---|---|---|---|---|---|"
for vmm in $(echo "$RESULTS" | field vmm | awk '!seen[$0]++'); do
	rows=$(echo "$RESULTS" | grep "vmm=$vmm ")
	done_=$(echo "$rows" | grep ' status=completed ' || true)
	ok=$(echo "$done_" | grep -c ' ok=1$' || true)
	total=$(echo "$rows" | wc -l)
	d_med=$(echo "$done_" | field downtime_ms | median)
	g_med=$(echo "$done_" | field gap_ms | median)
	l_med=$(echo "$rows" | field line_ms | median)
	t_med=$(echo "$done_" | field total_ms | median)
	s_med=$(echo "$done_" | field sent_kib | median)
	r_med=$(echo "$done_" | field rounds | median)
	w_med=$(echo "$rows" | field dirty_mib_s | median)
	[[ $s_med == n/a ]] || s_med=$(awk -v k="$s_med" 'BEGIN{printf "%.1f", k/1024}')
	case $vmm in
	qemu-*) label="QEMU $(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p') \`-M ${vmm#qemu-}\`, \`migrate -d unix:\` → \`-incoming\`" ;;
	vireo) label="Vireo control \`migrate unix:\` → \`vireo run --incoming\`" ;;
	*) label=$vmm ;;
	esac
	TABLE+=$'\n'"| $label | ${d_med} ms | ${g_med} ms (lines ${l_med} ms apart before) | ${t_med} ms | ${s_med} MiB | ${r_med} | ${w_med} MiB/s | $ok/$total |"
	log "$vmm: downtime ${d_med} ms, console gap ${g_med} ms (usual ${l_med} ms), total ${t_med} ms, sent ${s_med} MiB, rounds ${r_med}, dirty ${w_med} MiB/s, $ok/$total completed and continued"
done
[[ -n $SKIPS ]] && log "skipped: $SKIPS"
[[ -z $FAILS ]] || log "runs that did not complete:"$'\n'"$FAILS"

if ((DOC)); then
	DOCF=$VIREO_ROOT/docs/PERFORMANCE.md
	grep -q '<!-- BEGIN migrate -->' "$DOCF" && grep -q '<!-- END migrate -->' "$DOCF" ||
		printf '\n<!-- BEGIN migrate -->\n<!-- END migrate -->\n' >>"$DOCF"
	REPRO="scripts/bench-migrate.sh --reps $REPS --fill $FILL --dirty $DIRTY --step $STEP --downtime $DOWNTIME${VIREO:+ --vireo <path-to-static-vireo>}"
	{
		echo "## Live migration of a running Debian guest (nested testbed)"
		echo
		echo "Measured $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) host cores, shared),"
		echo "with \`$REPRO\`."
		echo "Host load average $LOAD0 at start, $LOAD1 at end."
		echo
		echo "Guest: Debian's stock kernel + busybox initramfs, 2 vCPUs, 512 MiB. It fills $FILL MiB of its RAM"
		echo "(tmpfs) with random bytes, then one loop keeps rewriting a $DIRTY MiB tmpfs file from a random buffer,"
		echo "$STEP MiB with \`dd\` then \`sleep 0.1\`, walking through the file, while another prints a count every 50 ms."
		echo "Once it has counted to 40, the VMM migrates it live to a new VMM process of its own kind on the same"
		echo "L1 over a unix socket, both aiming at a $DOWNTIME ms pause: Vireo \`migrate unix:PATH downtime-ms=$DOWNTIME\`"
		echo "to \`vireo run --incoming unix:PATH\`; QEMU \`migrate_set_parameter downtime-limit $DOWNTIME\`,"
		echo "\`max-bandwidth\` unlimited (as libvirt sets it; QEMU 7.2's own default caps the link at 32 MiB/s),"
		echo "\`migrate -d unix:PATH\` to \`-incoming unix:PATH\`. A run counts when the migration completed and the"
		echo "destination's first count was the source's last + 1 (+ 2 allowed for a line cut at the switch)."
		echo
		echo "- *Downtime* is each VMM's own figure, and they do not measure the same span: Vireo's runs from"
		echo "  pausing the vCPUs until the destination confirms that it runs the guest; QEMU's (\`info migrate\`"
		echo "  \"downtime\") ends when the source has sent the last of the stream, before the destination has"
		echo "  loaded it and started the vCPUs."
		echo "- *Console gap* is the same yardstick for both: L1's clock (10 ms steps) between the source's last"
		echo "  console line and the destination's first, as a reader stamped them; it includes the guest's usual"
		echo "  time between two lines (shown beside it) and L1's scheduling delays."
		echo "- *Total time*, *sent* and *rounds* are each VMM's own: Vireo's pre-copy rounds and bytes sent"
		echo "  (pages and machine state), QEMU's \`total time\`, \`transferred ram\` and \`dirty sync count\`."
		echo "- *Dirty rate* is the guest's own: MiB rewritten per second by its clock before the migration;"
		echo "  the guest's count loop and kernel dirty a little more."
		echo "- Vireo ends a migration that makes no progress for three rounds (the VM runs on at the source;"
		echo "  docs/migration.md); QEMU 7.2 without auto-converge goes on until it converges (the script"
		echo "  cancels it after 300 s). Such runs are listed under the table and left out of the medians."
		echo
		echo "Everything runs in the testbed's L1 under nested virtualization (L1 itself is emulated by TCG), so"
		echo "absolute times are far above what hardware gives; compare the rows, not the numbers with other hosts."
		echo "Medians of the runs that completed."
		echo
		echo "$TABLE"
		[[ -z $FAILS ]] || { echo; echo "Runs that did not complete (the reason as the VMM gave it):"; echo; echo "$FAILS"; }
		[[ -z $SKIPS ]] || { echo; echo "Not measured in this run: $SKIPS."; }
	} >"$OUT/migrate-section.md"
	awk -v f="$OUT/migrate-section.md" '
		/<!-- BEGIN migrate -->/ {print; while ((getline l < f) > 0) print l; skip=1; next}
		/<!-- END migrate -->/ {skip=0}
		!skip {print}' "$DOCF" >"$DOCF.tmp" && mv "$DOCF.tmp" "$DOCF"
	log "wrote the migrate section of $DOCF"
fi
