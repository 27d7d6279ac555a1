#!/bin/sh
# virtio-blk read-only: with readonly=on the guest sees a read-only disk, a write fails, and
# the host file is unchanged.
IMG=/tmp/virtio-blk-ro.img
dd if=/dev/urandom of=$IMG bs=1M count=4 2>/dev/null
before=$(md5sum <$IMG | awk '{print $1}')
SCRIPT='echo RO $(cat /sys/block/vda/ro); if dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; then echo WRITE ok; else echo WRITE refused; fi; echo GUESTMD5 $(md5sum </dev/vda)'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
LOG=/tmp/virtio-blk-ro.log
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --disk path=$IMG,readonly=on >$LOG 2>&1
rc=$?
grep -E 'vda|^RO|WRITE|GUESTMD5|SCRIPT-EXIT|vireo:' $LOG | tail -n 20
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
after=$(md5sum <$IMG | awk '{print $1}')
grep -q '^RO 1' $LOG || { echo "FAIL: the guest does not see the disk as read-only"; exit 1; }
grep -q '^WRITE refused' $LOG || { echo "FAIL: the write was not refused"; exit 1; }
[ "$before" = "$after" ] || { echo "FAIL: the host file changed"; exit 1; }
grep -q "^GUESTMD5 $before" $LOG || { echo "FAIL: guest read different data"; exit 1; }
echo "PASS virtio-blk-readonly: ro=1, write refused, host file unchanged ($after)"
