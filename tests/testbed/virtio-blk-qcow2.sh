#!/bin/sh
# virtio-blk over qcow2 and a linked clone: VM 1 writes 16 MiB of random data to a thin qcow2;
# VM 2 boots on a linked clone of it, reads the same 16 MiB through the backing file, and
# writes 1 MiB at 32 MiB into the clone only. Both images check clean, the clone holds the new
# megabyte and the base does not (copy-on-write).
cd /tmp && rm -f base.qcow2 clone.qcow2 base.raw clone.raw
vireo disk create -f qcow2 base.qcow2 64M >/dev/null || { echo "FAIL: disk create"; exit 1; }
run() { # run LOG DISKARGS SCRIPT
	b64=$(printf '%s' "$3" | base64 | tr -d '\n')
	timeout 90 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
		--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$b64" --disk "$2" >"$1" 2>&1
}
run /tmp/q1.log path=/tmp/base.qcow2,format=qcow2 \
	'dd if=/dev/urandom of=/tmp/r bs=1M count=16 2>/dev/null; echo GUESTMD5 $(md5sum </tmp/r); dd if=/tmp/r of=/dev/vda bs=1M conv=fsync 2>/dev/null; sync'
rc=$?; grep -E 'GUESTMD5|vireo:' /tmp/q1.log
[ $rc -eq 0 ] || { tail -n 20 /tmp/q1.log; echo "FAIL: VM 1 exited $rc"; exit 1; }
written=$(awk '/^GUESTMD5/ {print $2; exit}' /tmp/q1.log | tr -d '\r')
vireo disk create -f qcow2 -b base.qcow2 -F qcow2 clone.qcow2 >/dev/null || { echo "FAIL: linked clone"; exit 1; }
run /tmp/q2.log path=/tmp/clone.qcow2,format=qcow2 \
	'echo READMD5 $(dd if=/dev/vda bs=1M count=16 2>/dev/null | md5sum); dd if=/dev/urandom of=/tmp/m bs=1M count=1 2>/dev/null; echo NEWMD5 $(md5sum </tmp/m); dd if=/tmp/m of=/dev/vda bs=1M seek=32 conv=fsync 2>/dev/null; sync'
rc=$?; grep -E 'READMD5|NEWMD5|vireo:' /tmp/q2.log
[ $rc -eq 0 ] || { tail -n 20 /tmp/q2.log; echo "FAIL: VM 2 exited $rc"; exit 1; }
read=$(awk '/^READMD5/ {print $2; exit}' /tmp/q2.log | tr -d '\r')
new=$(awk '/^NEWMD5/ {print $2; exit}' /tmp/q2.log | tr -d '\r')
[ -n "$written" ] && [ "$written" = "$read" ] || { echo "FAIL: the clone read $read through its backing file, VM 1 wrote $written"; exit 1; }
vireo disk check base.qcow2 >/tmp/check1 2>&1 || { cat /tmp/check1; echo "FAIL: base.qcow2 does not check clean"; exit 1; }
vireo disk check clone.qcow2 >/tmp/check2 2>&1 || { cat /tmp/check2; echo "FAIL: clone.qcow2 does not check clean"; exit 1; }
vireo disk convert -O raw clone.qcow2 clone.raw && vireo disk convert -O raw base.qcow2 base.raw || { echo "FAIL: convert"; exit 1; }
inclone=$(dd if=clone.raw bs=1M skip=32 count=1 2>/dev/null | md5sum | awk '{print $1}')
inbase=$(dd if=base.raw bs=1M skip=32 count=1 2>/dev/null | md5sum | awk '{print $1}')
zero=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum | awk '{print $1}')
[ "$inclone" = "$new" ] || { echo "FAIL: the clone does not hold the megabyte VM 2 wrote"; exit 1; }
[ "$inbase" = "$zero" ] || { echo "FAIL: the base changed under the clone"; exit 1; }
echo "PASS virtio-blk-qcow2: 16 MiB through qcow2 ($written), read back through a linked clone, COW write kept in the clone, both images check clean"
