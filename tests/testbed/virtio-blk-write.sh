#!/bin/sh
# virtio-blk write: the guest writes 16 MiB of random data to /dev/vda; the host file must hold
# exactly those bytes (the guest's md5sum equals the md5sum of the file's first 16 MiB).
IMG=/tmp/virtio-blk-write.img
rm -f $IMG; dd if=/dev/zero of=$IMG bs=1M count=32 2>/dev/null
SCRIPT='dd if=/dev/urandom of=/tmp/r bs=1M count=16 2>/dev/null; echo GUESTMD5 $(md5sum </tmp/r); dd if=/tmp/r of=/dev/vda bs=1M conv=fsync 2>/dev/null; sync; echo WROTE $?'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
LOG=/tmp/virtio-blk-write.log
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --disk path=$IMG >$LOG 2>&1
rc=$?
grep -E 'vda|GUESTMD5|WROTE|SCRIPT-EXIT|vireo:' $LOG | tail -n 20
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
guest=$(grep '^GUESTMD5' $LOG | head -n 1 | awk '{print $2}')
host=$(head -c 16777216 $IMG | md5sum | awk '{print $1}')
echo "guest md5 $guest, host file md5 $host"
[ -n "$guest" ] && [ "$guest" = "$host" ] || { echo "FAIL: checksums differ"; exit 1; }
rest=$(tail -c 16777216 $IMG | md5sum | awk '{print $1}')
zero=$(dd if=/dev/zero bs=1M count=16 2>/dev/null | md5sum | awk '{print $1}')
[ "$rest" = "$zero" ] || { echo "FAIL: bytes past 16 MiB changed"; exit 1; }
echo "PASS virtio-blk-write: 16 MiB written by the guest match the host file (md5 $host)"
