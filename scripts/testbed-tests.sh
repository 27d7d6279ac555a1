#!/usr/bin/env bash
# Runs the testbed scenarios (tests/testbed/*.sh, each a busybox sh script that exits 0 on
# success) inside ONE nested-testbed L1 boot, against a freshly built static release vireo.
#
#   scripts/testbed-tests.sh [--vireo BIN] [--timeout S] [--scenario-timeout S] [NAME...]
#
# Prints PASS/FAIL per scenario (a failure's log tail goes with it) and closes with the line
# "testbed: N passed, N failed" and each scenario's time in L1. --timeout bounds the whole L1
# boot, --scenario-timeout each scenario (one that hangs cannot eat the others' time).
# Exit 0 only when every scenario passed.
set -euo pipefail
cd "$(dirname "$0")/.."
VIREO=""
TIMEOUT=2400
SCENARIO_TIMEOUT=420
NAMES=()
while (($#)); do
  case $1 in
    --vireo) VIREO=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --scenario-timeout) SCENARIO_TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) NAMES+=("$1"); shift ;;
  esac
done
if [[ -z $VIREO ]]; then
  echo "[testbed-tests] building vireo (release, static Swift runtime)"
  swift build -c release --static-swift-stdlib --product vireo >/dev/null
  VIREO=$(swift build -c release --static-swift-stdlib --show-bin-path)/vireo
fi
if ((${#NAMES[@]} == 0)); then
  for f in tests/testbed/*.sh; do n=$(basename "$f" .sh); [[ $n == lib ]] || NAMES+=("$n"); done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# run_round LOG NAME...: one L1 boot running the named scenarios in order; sets tb.
run_round() {
  local log=$1; shift
  {
    echo 'cd /root'
    for n in "$@"; do
      cat <<EOS
echo "VIREO-TEST-START $n"
t0=\$(cut -d' ' -f1 /proc/uptime)
timeout $SCENARIO_TIMEOUT sh /root/tests/$n.sh > /tmp/test-$n.log 2>&1
rc=\$?
case \$rc in 124|137|143) echo "  | exit \$rc: the scenario may have been stopped at its ${SCENARIO_TIMEOUT}s limit (--scenario-timeout)";; esac
echo "VIREO-TEST-TIME $n \$t0 \$(cut -d' ' -f1 /proc/uptime)"
w=0; while [ \$w -lt 15 ] && pidof vireo qemu-img >/dev/null; do sleep 0.2; w=\$((w + 1)); done   # daemons stopping on the EXIT trap
left=\$(pidof vireo qemu-img)
if [ -n "\$left" ]; then echo "  | left running after the scenario (killed now, so they cannot slow the next ones): \$(for p in \$left; do tr '\\0' ' ' < /proc/\$p/cmdline | cut -c1-100; echo; done)"; kill -9 \$left 2>/dev/null; sleep 0.5; fi
if [ \$rc -ne 0 ]; then sed 's/^/  | /' /tmp/test-$n.log | tail -n 40; df -k /tmp | sed 's/^/  | /'; free -k | sed 's/^/  | /'; fi
grep -E '^(ok|FAIL):' /tmp/test-$n.log | sed 's/^/  /'
echo "VIREO-TEST-RESULT $n \$rc"
EOS
    done
  } > "$work/run-all.sh"
  set +e
  bash scripts/testbed.sh --vireo "$VIREO" --with-qemu-img --timeout "$TIMEOUT" --add "tests/testbed:/root/tests" --add "$work/run-all.sh:/root/run-all.sh" -- sh /root/run-all.sh > "$log.raw" 2>&1
  tb=$?
  set -e
  tr -d '\r' < "$log.raw" > "$log" && rm -f "$log.raw"   # the serial console ends lines with CR LF
}

# The L1 kernel runs under QEMU's TCG emulation of SVM, and that emulation has its own bugs:
# once in a while L1's kernel panics inside KVM (for example "stack guard page was hit" in
# error_entry on a vcpu thread). A user-space VMM cannot cause a kernel panic, so such a crash
# is the harness's, not Vireo's. When L1 dies without its exit marker, the scenarios it did not
# reach run in a new L1 boot, and the one it was running is retried once there, said loudly.
# A scenario that takes L1 down twice fails. At most 2 restarts.
log="$work/testbed.log"
: > "$log"
todo=("${NAMES[@]}")
retried=() downed=()
restarts=0
while :; do
  run_round "$work/round.log" "${todo[@]}"
  cat "$work/round.log" >> "$log"
  ((tb == 125 && restarts < 2)) || break
  rest=() crashed=""
  for n in "${todo[@]}"; do
    if grep -aq "^VIREO-TEST-RESULT $n " "$work/round.log"; then continue; fi
    if [[ -z $crashed ]] && grep -aq "^VIREO-TEST-START $n\$" "$work/round.log"; then crashed=$n; fi
    rest+=("$n")
  done
  ((${#rest[@]})) || break
  if [[ -n $crashed ]]; then
    if [[ " ${retried[*]-} " == *" $crashed "* ]]; then
      echo "[testbed-tests] L1 died again during $crashed: it fails; the rest run in a new L1"
      downed+=("$crashed"); crashed=""
      rest=("${rest[@]:1}"); ((${#rest[@]})) || break
    else
      retried+=("$crashed")
    fi
  fi
  restarts=$((restarts + 1))
  echo "[testbed-tests] L1 ended without its exit marker${crashed:+ during $crashed} (its kernel log tail below); starting L1 again for ${#rest[@]} scenarios${crashed:+, $crashed retried once}"
  grep -aE 'BUG:|panic|RIP:|Call Trace' "$work/round.log" | tail -n 8 | sed 's/^/  | /'
  todo=("${rest[@]}")
done
passed=0 failed=0
for n in "${NAMES[@]}"; do
  line=$(grep -a "^VIREO-TEST-RESULT $n " "$log" | tail -1 || true)
  rc=${line##* }
  if [[ -n $line && $rc == 0 ]]; then
    note=""; [[ " ${retried[*]-} " == *" $n "* ]] && note="  (on its retry after an L1 kernel crash)"
    echo "PASS  $n$note"; passed=$((passed + 1))
  else
    why="did not finish; testbed status $tb"
    [[ " ${downed[*]-} " == *" $n "* ]] && why="L1's kernel crashed during it twice"
    echo "FAIL  $n${line:+ (status $rc)}${line:- ($why)}"; failed=$((failed + 1))
  fi
  awk -v n="$n" '$1 == "VIREO-TEST-TIME" && $2 == n {printf "  time: %.0f s\n", $4 - $3}
    $0 ~ "^VIREO-TEST-START "n"$" {on=1; next} $0 ~ "^VIREO-TEST-RESULT "n" " {on=0} on && /^  /' "$log"
done
if ((failed)); then echo "--- testbed log tail"; grep -av 'CPUID\[' "$log" | tail -n 30; fi
rs=""; ((restarts)) && rs=", L1 restarted $restarts time(s) after a crash of its kernel"
echo "testbed: $passed passed, $failed failed$rs"
((failed == 0))
