#!/bin/sh
# Clones of a running Linux VM through the daemon: a Debian guest on a qcow2 store image with a
# NIC counts in memory, reads its disk each step (page cache dropped), writes BBBB over its
# AAAA at count 20, and reads the VM generation ID (16 bytes the ACPI \_SB.VGEN device points
# at, through /dev/mem). When the ID changes it rebinds its virtio-net driver, as a clone-aware
# guest agent does, so the NIC's MAC is read again. Snapshot at count ~10; the source goes on;
# `vireo vm clone src c1 --snapshot s1 --tap hc1 --start` runs beside it from the snapshot's
# count with the disk as it was (AAAA), a new generation ID and a new MAC; the source keeps its
# own. `vireo vm snapshot revert` gives the source a new generation ID too. qemu-img check
# passes on the clone's overlay and base.
. /root/tests/lib.sh
start_daemon hc
vireo image create d1 --size 64M > /tmp/hc-image.log 2>&1 || { cat /tmp/hc-image.log; fail "image create"; }
S='gid() { dd if=/dev/mem bs=16 skip=61184 count=1 2>/dev/null | od -An -tx1 | tr -d " \n"; }
G0=$(gid)
[ -e /sys/bus/acpi/devices/VMGENCTR:00 ] && echo "VGEN present id=$G0" || echo "VGEN missing"
printf AAAA | dd of=/dev/vda conv=fsync 2>/dev/null
i=0
while true; do
  i=$((i+1))
  if [ $i -eq 20 ]; then printf BBBB | dd of=/dev/vda conv=fsync 2>/dev/null; fi
  g=$(gid)
  if [ "$g" != "$G0" ]; then
    dev=$(basename $(readlink /sys/class/net/eth0/device))
    echo $dev > /sys/bus/virtio/drivers/virtio_net/unbind
    echo $dev > /sys/bus/virtio/drivers/virtio_net/bind
    G0=$g
    echo "REBOUND $g"
  fi
  echo 3 > /proc/sys/vm/drop_caches
  d=$(dd if=/dev/vda bs=4 count=1 2>/dev/null)
  echo "COUNT $i $d g=$g mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
  sleep 0.2
done'
vireo vm create src --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M --disk image=d1 --net tap=hc0 \
	--cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" > /tmp/hc-create.log 2>&1 || { cat /tmp/hc-create.log; fail "vm create"; }
vireo vm start src > /tmp/hc-start.log 2>&1 || { cat /tmp/hc-start.log; fail "vm start"; }
logs() { vireo vm logs $1 2>/dev/null | tr -d '\r'; }
counts() { logs $1 | grep '^COUNT'; }
last_count() { counts $1 | awk '{n=$2} END {print n+0}'; }
n=0
until logs src | grep -q '^COUNT 10 AAAA g=[0-9a-f]\{32\}'; do
	n=$((n + 1)); [ $n -lt 240 ] || { logs src | tail -8; vireo vm show src; fail "the guest never reached count 10"; }
	sleep 1
done
logs src | grep -q '^VGEN present' || { logs src | head -20; fail "the guest has no ACPI VMGENCTR device"; }
G_SRC=$(counts src | tail -1 | sed 's/.* g=\([0-9a-f]*\) .*/\1/')
M_SRC=$(counts src | tail -1 | sed 's/.* mac=//')
vireo vm snapshot create src s1 > /tmp/hc-snap.log 2>&1 || { cat /tmp/hc-snap.log; fail "vm snapshot create"; }
L=$(last_count src)
n=0
until [ "$(last_count src)" -ge 23 ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { logs src | tail -5; fail "the source stopped counting after the snapshot"; }
	sleep 1
done
pass "source at count <= $L when snapshot s1 was taken (generation ID $G_SRC, MAC $M_SRC); it went on and wrote BBBB"

vireo vm clone src c1 --snapshot s1 --tap hc1 --start > /tmp/hc-clone.log 2>&1 || { cat /tmp/hc-clone.log; tail -20 /tmp/hc-daemon.log; fail "vm clone"; }
cat /tmp/hc-clone.log
M_CLONE=$(sed -n 's/.*MAC \([0-9a-f:]*\).*/\1/p' /tmp/hc-clone.log)
[ -n "$M_CLONE" ] && [ "$M_CLONE" != "$M_SRC" ] || fail "the clone's MAC ($M_CLONE) is not its own (source $M_SRC)"
vireo vm show src | grep -q 'running' || fail "the source is not running beside its clone"
n=0
until [ "$(last_count c1)" -ge 25 ]; do
	n=$((n + 1)); [ $n -lt 150 ] || { logs c1 | tail -8; vireo vm show c1; fail "the clone does not count on"; }
	sleep 1
done
counts c1 > /tmp/hc-c1.log
F=$(awk '{print $2; exit}' /tmp/hc-c1.log)
echo "clone: first count $F (snapshot at <= $L)"; sed -n '1,2p;$p' /tmp/hc-c1.log
[ "$F" -gt 10 ] && [ "$F" -le $((L + 1)) ] || fail "the clone counted from $F, not from the snapshot's value (<= $L)"
awk '$2 < 20' /tmp/hc-c1.log | grep -qv ' AAAA ' && fail "before count 20 the clone read other than AAAA: its disk is not the snapshot's"
grep -q '^COUNT 2[1-5] BBBB ' /tmp/hc-c1.log || fail "the clone's write and read-back of BBBB failed"
G_C1=$(tail -1 /tmp/hc-c1.log | sed 's/.* g=\([0-9a-f]*\) .*/\1/')
[ "$G_C1" != "$G_SRC" ] || fail "the clone kept the source's generation ID"
logs c1 | grep -q "^REBOUND $G_C1" || { logs c1 | head; fail "the guest did not see its generation ID change"; }
tail -1 /tmp/hc-c1.log | grep -q " mac=$M_CLONE\$" || { tail -2 /tmp/hc-c1.log; fail "after rebinding, the clone's NIC does not have the clone's MAC $M_CLONE"; }
counts src | tail -1 | grep -q " g=$G_SRC mac=$M_SRC\$" || { counts src | tail -2; fail "the source's generation ID or MAC changed"; }
pass "clone c1 from s1 runs beside the source: count resumed at $F, disk AAAA then BBBB, generation ID $G_C1 (source $G_SRC), MAC $M_CLONE (source $M_SRC)"

before=$(logs src | wc -l)
vireo vm snapshot revert src s1 > /tmp/hc-revert.log 2>&1 || { cat /tmp/hc-revert.log; fail "vm snapshot revert"; }
[ "$(logs src | wc -l)" -lt "$before" ] && before=0
n=0
until logs src | tail -n +$((before + 1)) | grep -q '^REBOUND'; do
	n=$((n + 1)); [ $n -lt 120 ] || { logs src | tail -5; fail "the reverted source did not see a new generation ID"; }
	sleep 1
done
G_REV=$(logs src | tail -n +$((before + 1)) | sed -n 's/^REBOUND //p' | head -1)
[ "$G_REV" != "$G_SRC" ] && [ "$G_REV" != "$G_C1" ] || fail "revert did not give a new generation ID ($G_REV)"
pass "revert gave the source a new generation ID $G_REV"

vireo vm stop c1 --force > /dev/null 2>&1
for f in /tmp/hc-data/vms/c1/disk-*.qcow2 /tmp/hc-data/vms/c1/base-*.qcow2; do
	[ -f "$f" ] || fail "the clone has no $f"
	qemu-img check -U "$f" > /tmp/hc-check.log 2>&1 || { cat /tmp/hc-check.log; fail "qemu-img check fails on $f"; }
done
qemu-img info -U /tmp/hc-data/vms/c1/disk-*.qcow2 | grep -q 'backing file: /tmp/hc-data/vms/c1/base-' || { qemu-img info -U /tmp/hc-data/vms/c1/disk-*.qcow2; fail "the clone's disk is not an overlay of its own base link"; }
vireo vm delete c1 > /dev/null 2>&1 || fail "vm delete c1"
vireo vm snapshot delete src s1 > /dev/null 2>&1 || fail "snapshot delete"
vireo vm stop src --force > /dev/null 2>&1
pass "qemu-img check passes on the clone's overlay and base; the clone and the snapshot delete cleanly"
