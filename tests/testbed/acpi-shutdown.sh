#!/bin/sh
# ACPI power management of a Linux guest (Debian's stock kernel):
#  1. the guest powers itself off (`poweroff -f`: ACPI S5 through the FADT sleep control
#     register) -> `vireo run` exits 0 saying the guest powered off;
#  2. `vireo vm stop` presses the ACPI power button (Generic Event Device -> PNP0C0C); the
#     guest's acpid syncs and powers off; the daemon records a clean shutdown, well inside the timeout;
#  3. a guest that ignores the button (acpid killed) is stopped by its VMM once --timeout passes.
. /root/tests/lib.sh

timeout 120 vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 'echo about-to-power-off; poweroff -f; sleep 30')" > /tmp/acpi-run.log 2>&1
rc=$?
expect_line /tmp/acpi-run.log 'about-to-power-off'
[ $rc -eq 0 ] || { tail -n 20 /tmp/acpi-run.log; fail "vireo exited $rc after the guest's poweroff (want 0)"; }
grep -q 'VIREO-GUEST-SCRIPT-EXIT' /tmp/acpi-run.log && fail "the script went on after poweroff -f"
pass "guest poweroff (ACPI S5) ends vireo run with status 0"

start_daemon acpi

wait_ready() { # wait_ready VM
	n=0
	until vireo vm logs $1 2>/dev/null | tr -d '\r' | grep -q '^VIREO-GUEST-READY'; do
		n=$((n + 1)); [ $n -lt 120 ] || { vireo vm logs $1 | tail -20; fail "$1 never reached user space"; }
		sleep 1
	done
}

vireo vm create polite --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.hold=1" > /dev/null || fail "vm create polite"
vireo vm start polite > /dev/null || fail "vm start polite"
wait_ready polite
t0=$(date +%s)
vireo vm stop polite --timeout 100 > /tmp/acpi-stop.log 2>&1 || { cat /tmp/acpi-stop.log; tail -n 30 /tmp/acpi-daemon.log; vireo vm logs polite | tail -n 20; fail "vm stop polite"; }
t1=$(date +%s)
cat /tmp/acpi-stop.log
vireo vm logs polite | tr -d '\r' > /tmp/acpi-polite.log
expect_line /tmp/acpi-polite.log 'ACPI power button pressed'
expect_line /tmp/acpi-stop.log 'polite: stopped - shut down by request \(guest powered off\)'
[ $((t1 - t0)) -lt 100 ] || fail "the stop took $((t1 - t0)) s: it waited out the timeout"
pass "vm stop: the guest acted on the ACPI power button and powered off in $((t1 - t0)) s"

vireo vm create stubborn --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 'killall acpid; echo acpid-gone')" > /dev/null || fail "vm create stubborn"
vireo vm start stubborn > /dev/null || fail "vm start stubborn"
n=0
until vireo vm logs stubborn 2>/dev/null | tr -d '\r' | grep -q '^acpid-gone'; do
	n=$((n + 1)); [ $n -lt 120 ] || { vireo vm logs stubborn | tail -20; fail "stubborn never ran its script"; }
	sleep 1
done
vireo vm stop stubborn --timeout 3 > /tmp/acpi-stop2.log 2>&1 || { cat /tmp/acpi-stop2.log; fail "vm stop stubborn"; }
cat /tmp/acpi-stop2.log
expect_line /tmp/acpi-stop2.log 'stubborn: stopped - .*did not power off within 3 s'
vireo vm logs stubborn | tr -d '\r' | grep -q 'ACPI power button pressed' && fail "stubborn handled the button without acpid?"
pass "a guest that ignores the button is stopped by its VMM after --timeout"
