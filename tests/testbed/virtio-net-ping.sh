#!/bin/sh
# virtio-net: vireo creates TAP vtap0 (it does not exist beforehand); the host gives it
# 10.0.2.1/24 and the guest (10.0.2.2) pings the host.
LOG=/tmp/virtio-net-ping.log
ip link del vtap0 2>/dev/null
SCRIPT='ip link set eth0 up; ip addr add 10.0.2.2/24 dev eth0; ok=0; i=0; while [ $i -lt 20 ]; do if ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; then ok=1; break; fi; i=$((i+1)); done; echo PINGOK $ok; ping -c 3 10.0.2.1 | tail -n 2; cat /sys/class/net/eth0/address'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --net tap=vtap0 >$LOG 2>&1 &
PID=$!
n=0; while ! ip link show vtap0 >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 100 ] && break; done
ip addr add 10.0.2.1/24 dev vtap0; ip link set vtap0 up
wait $PID; rc=$?
grep -E 'eth0|PINGOK|packets|SCRIPT-EXIT|vireo:|..:..:..:..:..:..' $LOG | tail -n 10
ip link del vtap0 2>/dev/null
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
grep -q 'PINGOK 1' $LOG || { echo "FAIL: the guest could not ping the host"; exit 1; }
echo "PASS virtio-net-ping: vireo created vtap0; guest 10.0.2.2 pinged host 10.0.2.1"
