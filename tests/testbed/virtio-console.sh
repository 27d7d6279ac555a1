#!/bin/sh
# virtio-console: hvc0 exists in the guest and text written to it reaches the host (--console-log).
OUT=/tmp/virtio-console.out
LOG=/tmp/virtio-console.log
rm -f $OUT
SCRIPT='ls /dev/hvc0 && echo hello-from-hvc0 >/dev/hvc0; echo CONSOLE-DONE'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --console --console-log $OUT >$LOG 2>&1
rc=$?
grep -E 'hvc|CONSOLE|SCRIPT-EXIT|vireo:' $LOG | tail -n 10
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
grep -q hello-from-hvc0 $OUT || { echo "FAIL: hvc0 output did not reach $OUT"; cat $OUT; exit 1; }
echo "PASS virtio-console: /dev/hvc0 output reached the host"
