#!/bin/sh
# virtio-net: two VMs on TAPs in one bridge reach each other (VM A 10.0.3.2 pings VM B 10.0.3.3).
LA=/tmp/virtio-net-a.log; LB=/tmp/virtio-net-b.log
ip link del vbr0 2>/dev/null; ip link del vtapa 2>/dev/null; ip link del vtapb 2>/dev/null
tunctl -t vtapa >/dev/null 2>&1 || ip tuntap add vtapa mode tap
tunctl -t vtapb >/dev/null 2>&1 || ip tuntap add vtapb mode tap
brctl addbr vbr0 2>/dev/null || ip link add vbr0 type bridge
brctl addif vbr0 vtapa 2>/dev/null || ip link set vtapa master vbr0
brctl addif vbr0 vtapb 2>/dev/null || ip link set vtapb master vbr0
ip link set vtapa up; ip link set vtapb up; ip link set vbr0 up
SA='ip link set eth0 up; ip addr add 10.0.3.2/24 dev eth0; ok=0; i=0; while [ $i -lt 30 ]; do if ping -c 1 -W 1 10.0.3.3 >/dev/null 2>&1; then ok=1; break; fi; i=$((i+1)); done; echo PINGOK $ok'
SB='ip link set eth0 up; ip addr add 10.0.3.3/24 dev eth0; echo B-UP; sleep 40'
A64=$(printf '%s' "$SA" | base64 | tr -d '\n'); B64=$(printf '%s' "$SB" | base64 | tr -d '\n')
timeout 70 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 1 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --net tap=vtapb >$LB 2>&1 &
PB=$!
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 1 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$A64" --net tap=vtapa >$LA 2>&1
rc=$?
kill $PB 2>/dev/null; wait $PB 2>/dev/null
grep -E 'PINGOK|B-UP|SCRIPT-EXIT|vireo:' $LA $LB | tail -n 10
ip link del vbr0 2>/dev/null; ip link del vtapa 2>/dev/null; ip link del vtapb 2>/dev/null
[ $rc -eq 0 ] || { echo "FAIL: VM A's vireo exited $rc"; exit 1; }
grep -q 'PINGOK 1' $LA || { echo "FAIL: VM A could not ping VM B across the bridge"; exit 1; }
echo "PASS virtio-net-bridge: VM A (10.0.3.2) pinged VM B (10.0.3.3) through bridge vbr0"
