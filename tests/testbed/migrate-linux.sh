#!/bin/sh
# Live migration of a running Debian guest between two VMMs in L1: the guest (a qcow2 disk,
# a TAP NIC, virtio-rng) counts in memory, reads its disk each step and pings the host. A
# second VMM waits with `vireo run --incoming unix:PATH`; the source's control socket takes
# `migrate unix:PATH`. The source must end with status 0 and its summary (rounds, bytes, the
# pause); the destination must count on from where the source was (no reboot), still read its
# disk, write it, draw entropy and reach the host. Then over TCP on loopback, back again.
. /root/tests/lib.sh
D=/tmp/mg
rm -rf $D; mkdir -p $D
ip link del vmig0 2>/dev/null
vireo disk create -f qcow2 $D/disk.qcow2 64M > /dev/null || fail "disk create"
S='ip link set eth0 up; ip addr add 10.0.4.2/24 dev eth0
printf AAAA | dd of=/dev/vda conv=fsync 2>/dev/null
i=0
while true; do
  i=$((i+1))
  if [ $((i % 10)) -eq 0 ]; then printf "B%03d" $((i % 1000)) | dd of=/dev/vda conv=fsync 2>/dev/null; fi
  echo 3 > /proc/sys/vm/drop_caches
  d=$(dd if=/dev/vda bs=4 count=1 2>/dev/null)
  r=$(dd if=/dev/hwrng bs=4 count=1 2>/dev/null | od -An -tx1 | tr -d " \n")
  p=0; ping -c 1 -W 1 10.0.4.1 >/dev/null 2>&1 && p=1
  echo "COUNT $i $d r=$r p=$p"
  sleep 0.2
done'
count_of() { tr -d '\r' < "$1" | awk '/^COUNT/ {n=$2} END {print n+0}'; }
tap_up() {
	n=0; while ! ip link show vmig0 >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 150 ] && fail "no TAP vmig0"; done
	ip link set vmig0 address 02:00:00:00:04:01 2>/dev/null; ip addr add 10.0.4.1/24 dev vmig0 2>/dev/null; ip link set vmig0 up
}
vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" \
	--disk path=$D/disk.qcow2,format=qcow2,id=root --net tap=vmig0,mac=02:00:00:00:04:02 --rng \
	--serial file=$D/1.log --api-socket $D/1.sock > $D/1.out 2>&1 &
P1=$!
tap_up
n=0
until grep -q '^COUNT 1[0-9] B010 r=[0-9a-f]\{8\} p=1' $D/1.log 2>/dev/null; do
	n=$((n + 1)); [ $n -lt 240 ] || { tail -5 $D/1.log; cat $D/1.out; kill -9 $P1; fail "the guest never reached count 10 with disk, entropy and network working"; }
	sleep 1
done

# 1: over a unix socket.
vireo run --incoming unix:$D/mig.sock --serial file=$D/2.log --api-socket $D/2.sock > $D/2.out 2>&1 &
P2=$!
n=0; while [ ! -S $D/mig.sock ]; do sleep 0.2; n=$((n+1)); [ $n -gt 100 ] && fail "the destination does not listen"; done
L=$(count_of $D/1.log)
vireo control $D/1.sock "migrate unix:$D/mig.sock downtime-ms=300" > $D/m.json 2>&1
grep -q '"ok":true' $D/m.json || { cat $D/m.json; fail "migrate refused"; }
wait $P1; rc=$?
cat $D/1.out | grep migrated
[ $rc -eq 0 ] || { cat $D/1.out; vireo control $D/1.sock migrate-status; kill -9 $P2; fail "the source ended with status $rc, not 0"; }
grep -q 'migrated to unix:' $D/1.out || fail "the source did not report the migration"
n=0
until [ "$(count_of $D/2.log)" -ge $((L + 15)) ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { cat $D/2.out; tail -5 $D/2.log; kill -9 $P2; fail "the guest does not count on at the destination"; }
	sleep 1
done
tr -d '\r' < $D/2.log > $D/2.clean
F=$(awk '/^COUNT/ {print $2; exit}' $D/2.clean)
echo "destination: first count $F (source at >= $L when asked)"; sed -n '1p;$p' $D/2.clean | grep COUNT
[ "$F" -ge "$L" ] && [ "$F" -le $((L + 20)) ] || fail "the destination counted from $F, not on from the source's $L"
grep -Eq 'soft lockup|Oops|BUG:|Call Trace' $D/2.clean && fail "the migrated kernel complains"
grep '^COUNT' $D/2.clean | tail -3 | grep -q ' B[0-9][0-9][0-9] r=[0-9a-f]\{8\} p=1' || { tail -3 $D/2.clean; fail "after migration the disk, entropy or ping failed"; }
pass "unix migration: $(grep -o 'rounds.*' $D/1.out | head -1); the guest counted on from $F with disk, entropy and network"

# 2: back over TCP on loopback.
vireo run --incoming tcp:127.0.0.1:47001 --serial file=$D/3.log --api-socket $D/3.sock > $D/3.out 2>&1 &
P3=$!
sleep 1
L=$(count_of $D/2.log)
vireo control $D/2.sock "migrate tcp:127.0.0.1:47001 downtime-ms=300" > $D/m2.json 2>&1
grep -q '"ok":true' $D/m2.json || { cat $D/m2.json; fail "migrate over tcp refused"; }
wait $P2; rc=$?
[ $rc -eq 0 ] || { cat $D/2.out; kill -9 $P3; fail "the second source ended with status $rc"; }
n=0
until [ "$(count_of $D/3.log)" -ge $((L + 10)) ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { cat $D/3.out; tail -5 $D/3.log; kill -9 $P3; fail "the guest does not count on after the tcp migration"; }
	sleep 1
done
grep '^COUNT' $D/3.log | tr -d '\r' | tail -2 | grep -q ' p=1' || fail "no network after the tcp migration"
pass "tcp migration back: $(grep -o 'rounds.*' $D/2.out | head -1)"
vireo control $D/3.sock stop > /dev/null
wait $P3
ip link del vmig0 2>/dev/null
qemu-img check $D/disk.qcow2 > $D/check.out 2>&1 || { cat $D/check.out; fail "qemu-img check fails on the disk after two migrations"; }
pass "qemu-img check passes on the disk after two migrations"
rm -rf $D
