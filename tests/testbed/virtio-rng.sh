#!/bin/sh
# virtio-rng: the guest's hw_random core picks virtio_rng and /dev/hwrng yields 16 bytes.
SCRIPT='cat /sys/class/misc/hw_random/rng_current; echo HWRNG $(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1)'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
LOG=/tmp/virtio-rng.log
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --rng >$LOG 2>&1
rc=$?
grep -E 'virtio|HWRNG|SCRIPT-EXIT|vireo:' $LOG | tail -n 20
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
grep -q '^virtio_rng' $LOG || { echo "FAIL: rng_current is not virtio_rng"; exit 1; }
words=$(grep '^HWRNG' $LOG | head -n 1 | wc -w)
[ "$words" -eq 17 ] || { echo "FAIL: expected 16 bytes from /dev/hwrng, got $((words - 1))"; exit 1; }
grep -q 'VIREO-GUEST-SCRIPT-EXIT=0' $LOG || { echo "FAIL: guest script failed"; exit 1; }
echo "PASS virtio-rng: rng_current=virtio_rng, 16 bytes read from /dev/hwrng"
