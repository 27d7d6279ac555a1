#!/bin/sh
# A running Debian kernel is saved and restored: a guest that counts (its counter lives in its
# memory, a shell variable) is snapshotted through the VMM's control socket while it runs, and
# keeps running; a second VMM restored from the snapshot continues counting from the saved
# value, not from 1 (no reboot), its clock and timers working (sleep keeps pacing the count),
# and its kernel logs no lockup or oops.
. /root/tests/lib.sh
rm -rf /tmp/sl-snap /tmp/sl1.log /tmp/sl2.log
S='i=0; while true; do i=$((i+1)); echo "COUNT $i"; sleep 0.2; done'
vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" \
	--serial file=/tmp/sl1.log --api-socket /tmp/sl1.sock > /tmp/sl1.out 2>&1 &
P1=$!
n=0
until grep -q '^COUNT 10' /tmp/sl1.log 2>/dev/null; do
	n=$((n + 1)); [ $n -lt 240 ] || { tail -5 /tmp/sl1.log; cat /tmp/sl1.out; kill -9 $P1; fail "the guest never counted to 10"; }
	sleep 1
done
vireo control /tmp/sl1.sock snapshot /tmp/sl-snap > /tmp/sl-snap.json 2>&1 || { cat /tmp/sl-snap.json; kill -9 $P1; fail "snapshot"; }
L=$(tr -d '\r' < /tmp/sl1.log | awk '/^COUNT/ {n=$2} END {print n}')
cat /tmp/sl-snap.json
# The original keeps running after the snapshot.
sleep 2
L2=$(tr -d '\r' < /tmp/sl1.log | awk '/^COUNT/ {n=$2} END {print n}')
[ "$L2" -gt "$L" ] || { kill -9 $P1; fail "the guest stopped counting after the snapshot ($L then $L2)"; }
vireo control /tmp/sl1.sock stop > /dev/null
wait $P1
pass "snapshot of a running Debian guest at count <= $L; it went on to $L2"

vireo run --restore /tmp/sl-snap --serial file=/tmp/sl2.log --api-socket /tmp/sl2.sock > /tmp/sl2.out 2>&1 &
P2=$!
n=0
until [ "$(tr -d '\r' < /tmp/sl2.log 2>/dev/null | grep -c '^COUNT')" -ge 10 ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { cat /tmp/sl2.out; tail -5 /tmp/sl2.log; kill -9 $P2; fail "the restored guest does not count"; }
	sleep 1
done
vireo control /tmp/sl2.sock stop > /dev/null
wait $P2
tr -d '\r' < /tmp/sl2.log > /tmp/sl2.clean
F=$(awk '/^COUNT/ {print $2; exit}' /tmp/sl2.clean)
E=$(awk '/^COUNT/ {n=$2} END {print n}' /tmp/sl2.clean)
echo "restored: first count $F, last $E (snapshot taken at <= $L)"
[ "$F" -gt 10 ] && [ "$F" -le $((L + 1)) ] || fail "the restored guest counted from $F, not from the snapshot's value (<= $L)"
[ "$E" -ge $((F + 9)) ] || fail "the restored guest's count went from $F to $E only"
grep -Eq 'soft lockup|Oops|BUG:|Call Trace' /tmp/sl2.clean && { grep -E 'soft lockup|Oops|BUG:' /tmp/sl2.clean | head -3; fail "the restored kernel complains"; }
pass "restored from the snapshot: counting resumed at $F (saved at <= $L), reached $E, no kernel complaints"
rm -rf /tmp/sl-snap /tmp/sl2.clean   # the memory file is as large as the guest's RAM; later scenarios need the room
