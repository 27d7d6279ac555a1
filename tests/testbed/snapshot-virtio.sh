#!/bin/sh
# A running Debian guest with virtio devices is saved and restored: a qcow2 disk, a NIC on a TAP,
# an entropy source and a balloon with statistics. The guest loops: it reads the first bytes of
# its disk (page cache dropped, so the read reaches the device), 4 bytes of /dev/hwrng, and pings
# the host over the NIC; at count 20 it writes BBBB over the AAAA it wrote at start.
# The snapshot is taken at about count 10 (the disk holds AAAA); the original goes on past 20
# (BBBB on disk). The restored guest must count on from the snapshot, read AAAA (the disk went
# back to its contents at the snapshot), then write BBBB and read it back, get entropy and reach
# the host: every virtio device works after restore, interrupts included. qemu-img check passes
# on the disk at the end.
. /root/tests/lib.sh
D=/tmp/sv
rm -rf $D; mkdir -p $D
ip link del vsnap0 2>/dev/null
vireo disk create -f qcow2 $D/disk.qcow2 64M > /dev/null || fail "disk create"
S='ip link set eth0 up; ip addr add 10.0.3.2/24 dev eth0
printf AAAA | dd of=/dev/vda conv=fsync 2>/dev/null
i=0
while true; do
  i=$((i+1))
  if [ $i -eq 20 ]; then printf BBBB | dd of=/dev/vda conv=fsync 2>/dev/null; fi
  echo 3 > /proc/sys/vm/drop_caches
  d=$(dd if=/dev/vda bs=4 count=1 2>/dev/null)
  r=$(dd if=/dev/hwrng bs=4 count=1 2>/dev/null | od -An -tx1 | tr -d " \n")
  p=0; ping -c 1 -W 1 10.0.3.1 >/dev/null 2>&1 && p=1
  echo "COUNT $i $d r=$r p=$p"
  sleep 0.2
done'
DEVS="--disk path=$D/disk.qcow2,format=qcow2,id=root --net tap=vsnap0,mac=02:00:00:00:03:02 --rng --balloon size=0,stats=on"
tap_up() {
	n=0; while ! ip link show vsnap0 >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 150 ] && fail "no TAP vsnap0"; done
	ip link set vsnap0 address 02:00:00:00:03:01; ip addr add 10.0.3.1/24 dev vsnap0; ip link set vsnap0 up
}
count_of() { tr -d '\r' < "$1" | awk '/^COUNT/ {n=$2} END {print n+0}'; }

vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" \
	$DEVS --serial file=$D/1.log --api-socket $D/1.sock > $D/1.out 2>&1 &
P1=$!
tap_up
n=0
until grep -q '^COUNT 10 AAAA r=[0-9a-f]\{8\} p=1' $D/1.log 2>/dev/null; do
	n=$((n + 1)); [ $n -lt 240 ] || { tail -5 $D/1.log; cat $D/1.out; kill -9 $P1; fail "the guest never reached count 10 with its disk, entropy and network working"; }
	sleep 1
done
vireo control $D/1.sock snapshot $D/snap > $D/snap.json 2>&1 || { cat $D/snap.json; kill -9 $P1; fail "snapshot"; }
cat $D/snap.json
grep -q '"ok":true' $D/snap.json || { kill -9 $P1; fail "snapshot refused: $(cat $D/snap.json)"; }
L=$(count_of $D/1.log)
n=0
until [ "$(count_of $D/1.log)" -ge 23 ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { tail -5 $D/1.log; kill -9 $P1; fail "the original stopped counting after the snapshot (at $(count_of $D/1.log))"; }
	sleep 1
done
grep -q '^COUNT 2[1-3] BBBB' $D/1.log || { tail -5 $D/1.log; kill -9 $P1; fail "the original guest did not read back its BBBB write"; }
vireo control $D/1.sock stop > /dev/null
wait $P1
ip link del vsnap0 2>/dev/null
pass "snapshot of a guest with virtio disk, NIC, rng and balloon at count <= $L; the original went on and wrote BBBB"

vireo run --restore $D/snap --serial file=$D/2.log --api-socket $D/2.sock > $D/2.out 2>&1 &
P2=$!
tap_up
n=0
until [ "$(count_of $D/2.log)" -ge 26 ]; do
	n=$((n + 1)); [ $n -lt 150 ] || { echo "--- restored VMM stderr:"; cat $D/2.out; kill -0 $P2 2>/dev/null && echo "(it is still running)" || { wait $P2; echo "(it exited with status $?)"; }; tail -8 $D/2.log; kill -9 $P2; fail "the restored guest does not count on (at $(count_of $D/2.log))"; }
	sleep 1
done
vireo control $D/2.sock stop > /dev/null
wait $P2
ip link del vsnap0 2>/dev/null
tr -d '\r' < $D/2.log > $D/2.clean
F=$(awk '/^COUNT/ {print $2; exit}' $D/2.clean)
echo "restored: first count $F (snapshot at <= $L); lines:"
grep '^COUNT' $D/2.clean | sed -n '1,3p;$p'
[ "$F" -gt 10 ] && [ "$F" -le $((L + 1)) ] || fail "the restored guest counted from $F, not from the snapshot's value (<= $L)"
grep '^COUNT' $D/2.clean | awk '$2 < 20' | grep -qv ' AAAA ' && fail "before count 20 the restored guest read something else than AAAA: its disk did not go back to the snapshot"
grep -q '^COUNT 1[0-9] AAAA ' $D/2.clean || fail "no AAAA read after restore"
grep -q '^COUNT 2[1-6] BBBB r=[0-9a-f]\{8\} p=1' $D/2.clean || { tail -5 $D/2.clean; fail "after restore, the write/read-back, entropy or ping failed"; }
grep -Eq 'soft lockup|Oops|BUG:|Call Trace|virtio.*(error|broken)' $D/2.clean && { grep -E 'soft lockup|Oops|BUG:|virtio' $D/2.clean | head -3; fail "the restored kernel complains"; }
pass "restored: count resumed at $F, the disk read AAAA (its contents at the snapshot), then BBBB written and read, entropy and ping work"
if command -v qemu-img >/dev/null; then
	qemu-img check $D/disk.qcow2 > $D/check.out 2>&1 || { cat $D/check.out; fail "qemu-img check fails on the disk"; }
	qemu-img snapshot -l $D/disk.qcow2 | grep -q vireo-snap || fail "the disk has no internal snapshot of the machine snapshot"
	pass "qemu-img check passes on the disk; it holds the snapshot's internal disk snapshot"
fi
rm -rf $D
