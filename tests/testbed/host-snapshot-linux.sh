#!/bin/sh
# Snapshots of a Linux VM through the daemon, as an operator takes them: a Debian guest on a
# qcow2 store image with virtio-rng counts in memory, reads its disk each step (page cache
# dropped) and writes BBBB over its AAAA at count 20. `vireo vm snapshot create` at about count
# 10 while it runs; the VM goes on past 20; `vireo vm snapshot revert` brings back the count, the
# disk's AAAA, and the guest then writes and reads BBBB again. `vireo vm snapshot delete` while
# it runs removes the disk's internal snapshot too; qemu-img check passes on the image.
. /root/tests/lib.sh
start_daemon hs
vireo image create d1 --size 64M > /tmp/hs-image.log 2>&1 || { cat /tmp/hs-image.log; fail "image create"; }
S='printf AAAA | dd of=/dev/vda conv=fsync 2>/dev/null
i=0
while true; do
  i=$((i+1))
  if [ $i -eq 20 ]; then printf BBBB | dd of=/dev/vda conv=fsync 2>/dev/null; fi
  echo 3 > /proc/sys/vm/drop_caches
  d=$(dd if=/dev/vda bs=4 count=1 2>/dev/null)
  r=$(dd if=/dev/hwrng bs=4 count=1 2>/dev/null | od -An -tx1 | tr -d " \n")
  echo "COUNT $i $d r=$r"
  sleep 0.2
done'
vireo vm create sv --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --rng --disk image=d1 \
	--cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" > /tmp/hs-create.log 2>&1 || { cat /tmp/hs-create.log; fail "vm create"; }
vireo vm start sv > /tmp/hs-start.log 2>&1 || { cat /tmp/hs-start.log; fail "vm start"; }
logs() { vireo vm logs sv 2>/dev/null | tr -d '\r'; }
count_after() { logs | tail -n +$(($1 + 1)) | awk '/^COUNT/ {n=$2} END {print n+0}'; }
n=0
until logs | grep -q '^COUNT 10 AAAA r=[0-9a-f]\{8\}'; do
	n=$((n + 1)); [ $n -lt 240 ] || { logs | tail -8; vireo vm show sv; fail "the guest never reached count 10 reading its disk"; }
	sleep 1
done
vireo vm snapshot create sv s1 > /tmp/hs-snap.log 2>&1 || { cat /tmp/hs-snap.log; fail "vm snapshot create"; }
L=$(count_after 0)
n=0
until [ "$(count_after 0)" -ge 23 ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { logs | tail -5; fail "the VM stopped counting after the snapshot"; }
	sleep 1
done
logs | grep -q '^COUNT 2[1-3] BBBB' || fail "the guest did not read back its BBBB write"
vireo vm snapshot list sv | grep -q '^s1 ' || { vireo vm snapshot list sv; fail "snapshot list lacks s1"; }
pass "vm snapshot create of a running Linux VM with a qcow2 store disk and virtio-rng at count <= $L; it went on and wrote BBBB"

IMG=$(find /tmp/hs-data -name '*.qcow2' | head -1)
[ -n "$IMG" ] || fail "no qcow2 image in the data directory"
qemu-img info -U "$IMG" | grep -q 'vireo-' || { qemu-img info -U "$IMG"; fail "the disk holds no internal snapshot of the machine snapshot"; }
before=$(logs | wc -l)
vireo vm snapshot revert sv s1 > /tmp/hs-revert.log 2>&1 || { cat /tmp/hs-revert.log; fail "vm snapshot revert"; }
[ "$(logs | wc -l)" -lt "$before" ] && before=0    # a new console log
n=0
until [ "$(count_after $before)" -ge 25 ]; do
	n=$((n + 1)); [ $n -lt 150 ] || { logs | tail -8; vireo vm show sv; fail "the reverted VM does not count on"; }
	sleep 1
done
logs | tail -n +$((before + 1)) | grep '^COUNT' > /tmp/hs-after.log
F=$(awk '{print $2; exit}' /tmp/hs-after.log)
echo "after revert: first count $F (snapshot at <= $L)"; sed -n '1,2p;$p' /tmp/hs-after.log
[ "$F" -gt 10 ] && [ "$F" -le $((L + 1)) ] || fail "the reverted VM counted from $F, not from the snapshot's value (<= $L)"
awk '$2 < 20' /tmp/hs-after.log | grep -qv ' AAAA ' && fail "before count 20 the reverted guest read other than AAAA: its disk was not reverted"
grep -q '^COUNT 2[1-5] BBBB r=[0-9a-f]\{8\}' /tmp/hs-after.log || fail "after revert the guest's write/read-back or entropy failed"
pass "vm snapshot revert: count resumed at $F, the disk read AAAA again, then BBBB written and read, entropy works"

vireo vm snapshot delete sv s1 > /tmp/hs-del.log 2>&1 || { cat /tmp/hs-del.log; fail "vm snapshot delete"; }
qemu-img info -U "$IMG" | grep -q 'vireo-' && { qemu-img info -U "$IMG"; fail "the disk's internal snapshot outlived the deleted machine snapshot"; }
vireo vm stop sv --force > /dev/null 2>&1 || vireo vm stop sv > /dev/null 2>&1
qemu-img check "$IMG" > /tmp/hs-check.log 2>&1 || { cat /tmp/hs-check.log; fail "qemu-img check fails on the VM's disk"; }
pass "vm snapshot delete on a running VM removed the disk's internal snapshot; qemu-img check passes"
