#!/bin/sh
# Interactive console through the daemon: a Debian-kernel VM whose init runs a shell on ttyS0
# (vireo.shell=1); `vireo vm console NAME --attach` with piped stdin types a command into it
# (websocket -> daemon -> VMM console socket -> UART) and prints the shell's answer.
. /root/tests/lib.sh
start_daemon vc
vireo vm create shell --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.shell=1" > /tmp/vc-create.log 2>&1 || { cat /tmp/vc-create.log; fail "vm create"; }
vireo vm start shell > /tmp/vc-start.log 2>&1 || { cat /tmp/vc-start.log; fail "vm start"; }
n=0
until vireo vm logs shell 2>/dev/null | tr -d '\r' | grep -q '^VIREO-GUEST-SHELL'; do
	n=$((n + 1)); [ $n -lt 120 ] || { vireo vm logs shell | tail -20; vireo vm show shell; fail "the guest never started its shell"; }
	sleep 1
done
sleep 2   # the shell's first prompt
printf 'echo attach-$((6*7))\n' | vireo vm console shell --attach --drain 10 > /tmp/vc-attach.out 2> /tmp/vc-attach.err ||
	{ cat /tmp/vc-attach.err; fail "vireo vm console --attach failed"; }
tr -d '\r' < /tmp/vc-attach.out > /tmp/vc-attach.txt
grep -q '^attach-42$' /tmp/vc-attach.txt || { echo "--- attach output"; cat /tmp/vc-attach.txt; fail "the shell's answer attach-42 did not come back"; }
pass "a command typed through vireo vm console --attach ran in the guest's shell (attach-42)"
vireo vm logs shell | tr -d '\r' | grep -q '^attach-42$' || fail "the console log lacks attach-42"
pass "the console log has the same output"
vireo vm stop shell > /tmp/vc-stop.log 2>&1 || { cat /tmp/vc-stop.log; fail "vm stop"; }
printf 'x' | vireo vm console shell --attach > /tmp/vc-stopped.out 2>&1 && fail "attached to a stopped VM"
grep -q 'is stopped' /tmp/vc-stopped.out || { cat /tmp/vc-stopped.out; fail "no 'is stopped' error for a stopped VM"; }
pass "attaching to a stopped VM is refused with the reason"
