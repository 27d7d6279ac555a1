#!/bin/sh
# virtio-blk read: the host fills a file with random data; the guest's md5sum of the disk
# (the second of two disks, id=data) equals the host's. Also checks the serial (GET_ID).
IMG=/tmp/virtio-blk-read.img
EMPTY=/tmp/virtio-blk-empty.img
dd if=/dev/urandom of=$IMG bs=1M count=16 2>/dev/null
dd if=/dev/zero of=$EMPTY bs=1M count=1 2>/dev/null
host=$(md5sum <$IMG | awk '{print $1}')
SCRIPT='echo SERIAL $(cat /sys/block/vdb/serial); echo GUESTMD5 $(md5sum </dev/vdb)'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
LOG=/tmp/virtio-blk-read.log
timeout 60 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" \
	--disk path=$EMPTY --disk path=$IMG,id=data,format=raw >$LOG 2>&1
rc=$?
grep -E 'vd[ab]|SERIAL|GUESTMD5|SCRIPT-EXIT|vireo:' $LOG | tail -n 20
[ $rc -eq 0 ] || { echo "FAIL: vireo exited $rc"; exit 1; }
guest=$(grep '^GUESTMD5' $LOG | head -n 1 | awk '{print $2}')
echo "guest md5 $guest, host md5 $host"
[ -n "$guest" ] && [ "$guest" = "$host" ] || { echo "FAIL: checksums differ"; exit 1; }
grep -q '^SERIAL data' $LOG || { echo "FAIL: /sys/block/vdb/serial is not 'data'"; exit 1; }
echo "PASS virtio-blk-read: guest md5sum of /dev/vdb equals the host's ($host), serial 'data'"
