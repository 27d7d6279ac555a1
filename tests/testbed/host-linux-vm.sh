#!/bin/sh
# The host daemon runs a Linux VM: `vireo host` in L1, a VM defined with Debian's stock kernel,
# started (its own VMM process), its console log shows the guest reaching user space with
# 2 CPUs, then it is stopped and deleted through the API.
. /root/tests/lib.sh
start_daemon vh
vireo vm create web --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.hold=1" > /tmp/vh-create.log 2>&1 || { cat /tmp/vh-create.log; fail "vm create"; }
vireo vm start web > /tmp/vh-start.log 2>&1 || { cat /tmp/vh-start.log; fail "vm start"; }
n=0
until vireo vm logs web 2>/dev/null | tr -d '\r' | grep -q '^VIREO-GUEST-READY nproc=2'; do
	n=$((n + 1)); [ $n -lt 120 ] || { vireo vm logs web | tail -20; vireo vm show web; fail "the guest never reached user space"; }
	sleep 1
done
pass "guest reached user space with 2 CPUs under the daemon"
vireo vm list | grep -E '^web +running' > /dev/null || { vireo vm list; fail "web is not listed as running"; }
vireo vm stop web > /tmp/vh-stop.log 2>&1 || { cat /tmp/vh-stop.log; fail "vm stop"; }
vireo vm list | grep -E '^web +(stopped|failed)' > /dev/null || { vireo vm list; fail "web is not stopped after stop"; }
vireo vm delete web > /tmp/vh-delete.log 2>&1 || { cat /tmp/vh-delete.log; fail "vm delete"; }
vireo vm list | grep -q '^web ' && fail "web is still listed after delete"
pass "start, logs, stop, delete of a Linux VM through the daemon"
