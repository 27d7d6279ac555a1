#!/bin/sh
# virtio-vsock, Firecracker-style unix sockets, both directions. Busybox has no AF_VSOCK
# client, so the guest runs `vireo vsock-probe` (vireo and its libraries are added to the L2
# initramfs): host->guest: the host connects to PATH, sends "CONNECT 5000", gets "OK <port>",
# and a line round-trips through the guest's listener; guest->host: the guest connects to
# CID 2 port 6000, which arrives on PATH_6000 where a host listener echoes it.
# The guest gets 512 MiB: its initramfs holds the whole static vireo binary, unpacked in RAM
# (256 MiB stopped being enough as vireo grew: "Initramfs unpacking failed: write error").
SOCK=/tmp/virtio-vsock.sock
LOG=/tmp/virtio-vsock.log; HL=/tmp/virtio-vsock-host.log; HC=/tmp/virtio-vsock-client.log
rm -f $SOCK ${SOCK}_6000
VIREO=$(command -v vireo)
set -- $(readlink -f $VIREO):/bin/vireo
for lib in /lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/libzstd.so.1 /lib/x86_64-linux-gnu/libsqlite3.so.0 /lib/x86_64-linux-gnu/libm.so.6 /lib/x86_64-linux-gnu/libstdc++.so.6 /lib/x86_64-linux-gnu/libgcc_s.so.1 \
	/lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2; do
	[ -e $lib ] && set -- "$@" $(readlink -f $lib):$lib
done
vireo-l2-initrd /tmp/virtio-vsock-l2.gz "$@" || { echo "FAIL: cannot build the L2 initramfs"; exit 1; }
timeout 60 vireo vsock-probe unix-listen ${SOCK}_6000 >$HL 2>&1 &
SCRIPT='vireo vsock-probe listen 5000 & i=0; while [ $i -lt 30 ]; do kill -0 $! 2>/dev/null || break; sleep 1; i=$((i+1)); done; vireo vsock-probe connect 2 6000 hello-from-guest'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /tmp/virtio-vsock-l2.gz --cpus 2 --memory 512M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --vsock cid=3,socket=$SOCK >$LOG 2>&1 &
PID=$!
n=0; while ! grep -q 'LISTENING 5000' $LOG; do sleep 1; n=$((n+1)); [ $n -gt 40 ] && break; done
timeout 20 vireo vsock-probe unix-connect $SOCK 5000 hello-from-host >$HC 2>&1
wait $PID; rc=$?
grep -E 'LISTENING|SERVED|REPLY|HANDSHAKE|SCRIPT-EXIT|vireo:|rror' $LOG $HL $HC | tail -n 12
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
grep -q '^HANDSHAKE OK [0-9]' $HC || { echo "FAIL: no 'OK <port>' answer to CONNECT 5000"; exit 1; }
grep -q '^REPLY ECHO hello-from-host' $HC || { echo "FAIL: host->guest round trip"; exit 1; }
grep -q 'REPLY ECHO hello-from-guest' $LOG || { echo "FAIL: guest->host round trip"; exit 1; }
grep -q 'SERVED hello-from-guest' $HL || { echo "FAIL: host listener on ${SOCK}_6000 did not see the guest"; exit 1; }
echo "PASS virtio-vsock: host->guest (CONNECT 5000, OK, echo) and guest->host (CID 2:6000 -> ${SOCK}_6000, echo)"
