#!/bin/sh
# The sampled active-memory estimate on a hardware-virtualization KVM (nested SVM): a daemon with
# --active-memory-sample 4 (manual dirty-log protection, a random 1/4 of the pages re-armed per
# 1 s window); the guest rewrites a 48 MiB tmpfs file in a loop, so the estimate must be at
# least 30 MB (48 MiB = 50.3 MB, minus sampling error) and at most the guest's RAM.
. /root/tests/lib.sh
start_daemon vt --active-memory-window 1 --active-memory-sample 4
trap 'vireo vm kill tvm >/dev/null 2>&1; kill $DAEMON_PID 2>/dev/null' EXIT
SCRIPT='mkdir -p /mnt/t; mount -t tmpfs -o size=100m tmpfs /mnt/t; echo WRITING; while :; do dd if=/dev/zero of=/mnt/t/f bs=1M count=48 conv=notrunc 2>/dev/null; done'
vireo vm create tvm --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$SCRIPT")" >/dev/null 2>&1 || fail "create"
vireo vm start tvm >/dev/null 2>&1 || fail "start"
n=0; until vireo vm logs tvm 2>/dev/null | grep -q WRITING; do n=$((n+1)); [ $n -lt 120 ] || fail "no WRITING"; sleep 1; done
sleep 4
vireo vm stats tvm --json > /tmp/vt.json; cat /tmp/vt.json; echo
vireo vm stats tvm | sed "s/^/  stats| /"
grep -q '"active_sample_one_in":4' /tmp/vt.json || fail "not sampled"
act=$(grep -o '"active_bytes":[0-9]*' /tmp/vt.json | cut -d: -f2)
[ -n "$act" ] && [ "$act" -ge 30000000 ] && [ "$act" -le 268435456 ] || fail "sampled active $act not in [30 MB, 256 MiB] while the guest rewrites 48 MiB"
pass "sampled 1/4 on SVM: active $act"
