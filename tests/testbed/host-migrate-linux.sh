#!/bin/sh
# Live migration between two daemons, as an operator runs it: `vireo vm migrate NAME --to
# ADDR:PORT --token-file F --storage copy`. Daemon A runs a Debian guest on a qcow2 store disk
# (virtio-rng too) that wrote 8 MiB of random data to its disk at boot and then, each step,
# counts in memory and writes its count into sector COUNT of its disk. First a migration that is
# cancelled and one whose destination VMM is killed: both leave the VM running on A, counting,
# with nothing left on B. Then the real one, during which the guest keeps writing: afterwards
# the VM runs on B (its counter goes on, no reboot), A has no VM and no VMM, and B's own copy of
# the disk passes qemu-img check and holds the random data and every count the guest wrote.
. /root/tests/lib.sh
TOKEN=/tmp/hm-token
echo "testbed-migration-token-0123456789" > $TOKEN
rm -rf /tmp/hma-data /tmp/hmb-data
vireo host --socket /tmp/hma.sock --data-dir /tmp/hma-data --pool /guest --pool /tmp --listen 127.0.0.1:47201 --token-file $TOKEN > /tmp/hma-daemon.log 2>&1 &
A=$!
vireo host --socket /tmp/hmb.sock --data-dir /tmp/hmb-data --pool /guest --pool /tmp --listen 127.0.0.1:47202 --token-file $TOKEN > /tmp/hmb-daemon.log 2>&1 &
B=$!
trap 'kill $A $B 2>/dev/null' EXIT
n=0; until [ -S /tmp/hma.sock ] && [ -S /tmp/hmb.sock ]; do n=$((n+1)); [ $n -lt 50 ] || fail "the daemons did not start"; sleep 0.2; done
va() { vireo --socket /tmp/hma.sock "$@"; }
vb() { vireo --socket /tmp/hmb.sock "$@"; }

va image create d1 --size 64M > /tmp/hm-image.log 2>&1 || { cat /tmp/hm-image.log; fail "image create"; }
S='dd if=/dev/urandom of=/tmp/r bs=1M count=8 2>/dev/null
dd if=/tmp/r of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null
echo "RANDOM $(md5sum < /tmp/r | cut -c1-32)"
i=0
while true; do
  i=$((i+1))
  printf "C%07d" $i | dd of=/dev/vda bs=512 seek=$i conv=fsync 2>/dev/null
  r=$(dd if=/dev/hwrng bs=4 count=1 2>/dev/null | od -An -tx1 | tr -d " \n")
  echo "COUNT $i r=$r"
  sleep 0.2
done'
va vm create m --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --rng --disk image=d1 \
	--cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" > /tmp/hm-create.log 2>&1 || { cat /tmp/hm-create.log; fail "vm create"; }
va vm start m > /tmp/hm-start.log 2>&1 || { cat /tmp/hm-start.log; fail "vm start"; }
count_a() { va vm logs m 2>/dev/null | tr -d '\r' | awk '/^COUNT/ {n=$2} END {print n+0}'; }
n=0
until [ "$(count_a)" -ge 5 ]; do
	n=$((n + 1)); [ $n -lt 240 ] || { va vm logs m | tail -5; fail "the guest never counted to 5"; }
	sleep 1
done
MD5=$(va vm logs m | tr -d '\r' | awk '/^RANDOM/ {print $2; exit}')
[ -n "$MD5" ] || fail "the guest did not report its random data"
PID_A=$(va vm show m | awk '/^pid/ {print $2}')

# 1: cancelled (1 MiB/s: the copy cannot be done before the cancel).
va vm migrate m --to 127.0.0.1:47202 --token-file $TOKEN --storage copy --max-bandwidth 1 --detach > /tmp/hm-m1.log 2>&1 || { cat /tmp/hm-m1.log; fail "migrate (to cancel) refused"; }
sleep 2
vb vm list | grep -q '^m ' || fail "the destination does not show the incoming VM"
va vm migrate m --cancel > /tmp/hm-cancel.log 2>&1 || { cat /tmp/hm-cancel.log; fail "cancel refused"; }
n=0; until va vm migrate m --status | grep -q 'cancelled'; do n=$((n+1)); [ $n -lt 60 ] || { va vm migrate m --status; fail "the cancel did not end the migration"; }; sleep 0.5; done
n=0; while vb vm list | grep -q '^m '; do n=$((n+1)); [ $n -lt 50 ] || fail "B kept the cancelled incoming VM"; sleep 0.2; done
C=$(count_a); sleep 3
[ "$(count_a)" -gt "$C" ] && [ "$(va vm show m | awk '/^pid/ {print $2}')" = "$PID_A" ] || fail "the VM does not run on at A after the cancel"
pass "a cancelled migration leaves the VM running on A (count $C and on) and nothing on B"

# 2: the destination's VMM is killed in the middle.
va vm migrate m --to 127.0.0.1:47202 --token-file $TOKEN --storage copy --max-bandwidth 2 --detach > /tmp/hm-m2.log 2>&1 || { cat /tmp/hm-m2.log; fail "migrate (to kill) refused"; }
sleep 2
PID_B=$(vb vm show m | awk '/^pid/ {print $2}')
[ -n "$PID_B" ] || fail "no incoming VMM on B"
kill -9 $PID_B
n=0; until va vm migrate m --status | grep -q 'failed'; do n=$((n+1)); [ $n -lt 120 ] || { va vm migrate m --status; fail "the migration did not fail when its destination died"; }; sleep 0.5; done
n=0; while vb vm list | grep -q '^m '; do n=$((n+1)); [ $n -lt 50 ] || fail "B kept the failed incoming VM"; sleep 0.2; done
C=$(count_a); sleep 3
[ "$(count_a)" -gt "$C" ] && [ "$(va vm show m | awk '/^pid/ {print $2}')" = "$PID_A" ] || fail "the VM does not run on at A after its destination died"
pass "a migration whose destination VMM is killed leaves the VM running on A: $(va vm migrate m --status | cut -c1-120)"

# 3: the real one, with the disk.
L=$(count_a)
va vm migrate m --to 127.0.0.1:47202 --token-file $TOKEN --storage copy > /tmp/hm-m3.log 2> /tmp/hm-m3.err || { cat /tmp/hm-m3.log /tmp/hm-m3.err; va vm migrate m --status; fail "vm migrate --storage copy failed"; }
cat /tmp/hm-m3.log
grep -q "migrated m to 127.0.0.1:47202: the guest paused [0-9]* ms" /tmp/hm-m3.log || fail "no summary with the pause"
va vm list | grep -q '^m ' && fail "A still lists the VM"
# A's VMM paused the guest for good before B ran it; the process itself then tears down (RAM,
# threads, its exit file), which a loaded L1 may take seconds to finish (the daemon itself
# waits 30 s, then kills it); what is left then is printed.
n=0; while kill -0 $PID_A 2>/dev/null; do n=$((n+1)); [ $n -lt 150 ] || { grep -E "State|Threads|PPid" /proc/$PID_A/status; for t in /proc/$PID_A/task/*; do echo "$t $(cat $t/comm) $(cat $t/wchan 2>/dev/null) $(awk '{print $3}' $t/stat)"; done; ps -o pid,ppid,stat,args -p $PID_A; fail "A's VMM still runs 30 s after the migration"; }; sleep 0.2; done
vb vm show m | grep -q '^state: *running' || { vb vm show m; fail "B does not run the VM"; }
count_b() { vb vm logs m 2>/dev/null | tr -d '\r' | awk '/^COUNT/ {n=$2} END {print n+0}'; }
n=0
until [ "$(count_b)" -ge $((L + 10)) ]; do
	n=$((n + 1)); [ $n -lt 120 ] || { vb vm logs m | tail -5; fail "the guest does not count on at B"; }
	sleep 1
done
F=$(vb vm logs m | tr -d '\r' | awk '/^COUNT/ {print $2; exit}')
[ "$F" -gt "$L" ] || fail "at B the guest counted from $F, not on from A's $L: it restarted"
vb vm logs m | tr -d '\r' | grep -q '^RANDOM' && fail "the guest booted again at B"
va events --vm m | grep -q 'migrated' || fail "A's events lack the migration"
pass "vm migrate --storage copy: the guest counted on at B from $F (A was at >= $L), A has no VM and no VMM; $(grep -o 'paused [0-9]* ms' /tmp/hm-m3.log)"

vb vm stop m --force > /dev/null 2>&1
N=$(count_b)
IMG=$(find /tmp/hmb-data/vms/m -name 'disk-*' | head -1)
[ -n "$IMG" ] || fail "no disk copy in B's VM directory"
qemu-img check "$IMG" > /tmp/hm-check.log 2>&1 || { cat /tmp/hm-check.log; fail "qemu-img check fails on B's disk"; }
qemu-img convert -O raw "$IMG" /tmp/hm-disk.raw || fail "qemu-img convert"
got=$(dd if=/tmp/hm-disk.raw bs=1M skip=16 count=8 2>/dev/null | md5sum | cut -c1-32)
[ "$got" = "$MD5" ] || fail "B's disk lacks the guest's random data ($got, not $MD5)"
i=1; bad=0
while [ $i -le $N ]; do
	w=$(dd if=/tmp/hm-disk.raw bs=512 skip=$i count=1 2>/dev/null | head -c 8)
	[ "$w" = "$(printf 'C%07d' $i)" ] || { bad=$i; break; }
	i=$((i + 1))
done
rm -f /tmp/hm-disk.raw
[ $bad -eq 0 ] || fail "B's disk lacks count $bad of the $N the guest wrote"
pass "B's copy of the disk passes qemu-img check and holds the random data and all $N counts (written before, during and after the move)"
