#!/bin/sh
# The host daemon runs a Linux VM: `vireo host` in L1, a VM defined with Debian's stock kernel,
# started (its own VMM process), its console log shows the guest reaching user space with
# 2 CPUs, then it is stopped and deleted through the API.
. /root/tests/lib.sh
start_daemon vh
# With --rng and --vsock the guest must see virtio-rng as its hardware RNG and a vsock with CID 5.
S='echo "rng: $(cat /sys/class/misc/hw_random/rng_current)"; [ -c /dev/vsock ] && echo vsock-dev-ok'
vireo vm create web --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --rng --vsock 5 \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$S")" > /tmp/vh-create.log 2>&1 || { cat /tmp/vh-create.log; fail "vm create"; }
vireo vm start web > /tmp/vh-start.log 2>&1 || { cat /tmp/vh-start.log; fail "vm start"; }
n=0
until vireo vm logs web 2>/dev/null | tr -d '\r' | grep -q '^VIREO-GUEST-READY nproc=2'; do
	n=$((n + 1)); [ $n -lt 120 ] || { vireo vm logs web | tail -20; vireo vm show web; fail "the guest never reached user space"; }
	sleep 1
done
pass "guest reached user space with 2 CPUs under the daemon"
n=0
until vireo vm logs web 2>/dev/null | tr -d '\r' | grep -q '^VIREO-GUEST-SCRIPT-EXIT'; do
	n=$((n + 1)); [ $n -lt 60 ] || { vireo vm logs web | tail -20; fail "the guest's script did not finish"; }
	sleep 1
done
vireo vm logs web | tr -d '\r' > /tmp/vh-console.log
expect_line /tmp/vh-console.log '^rng: virtio_rng'
expect_line /tmp/vh-console.log '^vsock-dev-ok'
vireo vm show web | grep -E 'vsock: +cid 5, host socket /tmp/vh-data/vms/web/vsock.sock' > /dev/null || { vireo vm show web; fail "vm show lacks the vsock"; }
[ -S /tmp/vh-data/vms/web/vsock.sock ] || fail "the VMM did not create the vsock host socket"
pass "vm create --rng --vsock 5: the guest's hwrng is virtio_rng, /dev/vsock exists, the host socket is there"
vireo vm list | grep -E '^web +running' > /dev/null || { vireo vm list; fail "web is not listed as running"; }
vireo vm stop web > /tmp/vh-stop.log 2>&1 || { cat /tmp/vh-stop.log; fail "vm stop"; }
vireo vm list | grep -E '^web +(stopped|failed)' > /dev/null || { vireo vm list; fail "web is not stopped after stop"; }
vireo vm delete web > /tmp/vh-delete.log 2>&1 || { cat /tmp/vh-delete.log; fail "vm delete"; }
vireo vm list | grep -q '^web ' && fail "web is still listed after delete"
pass "start, logs, stop, delete of a Linux VM through the daemon"
