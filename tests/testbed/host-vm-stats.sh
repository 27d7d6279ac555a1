#!/bin/sh
# Per-VM stats of a Linux VM under the daemon: the guest writes 8 MiB to its virtio disk and
# reads 16 MiB it never wrote (not in its page cache), then pings the host 5 times with 1000-byte
# payloads over virtio-net (TAP svtap0); `vireo vm stats` must show at least those bytes on the
# disk and those frames and bytes on the NIC, the active-memory estimate (2 s window) with status
# ok, and, with the statistics balloon, the guest's own free/available memory.
. /root/tests/lib.sh
IMG=/tmp/vs-disk.img
rm -f $IMG
ip link del svtap0 2>/dev/null
dd if=/dev/zero of=$IMG bs=1M count=64 2>/dev/null
start_daemon vs --active-memory-window 2 --active-memory-sample 1
trap 'vireo vm kill svm >/dev/null 2>&1; kill $DAEMON_PID 2>/dev/null; ip link del svtap0 2>/dev/null' EXIT

SCRIPT='dd if=/dev/urandom of=/tmp/r bs=1M count=8 2>/dev/null; dd if=/tmp/r of=/dev/vda bs=1M conv=fsync 2>/dev/null; echo WROTE $?; dd if=/dev/vda of=/dev/null bs=1M skip=32 count=16 2>/dev/null; echo READ $?; ip link set eth0 up; ip addr add 10.0.3.2/24 dev eth0; i=0; while [ $i -lt 30 ] && ! ping -c 1 -W 1 10.0.3.1 >/dev/null 2>&1; do i=$((i+1)); done; ping -c 5 -s 1000 10.0.3.1 | grep -E "transmitted"; echo VIREO-STATS-IO-DONE'
vireo vm create svm --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M --disk $IMG --net tap=svtap0 --balloon 1M \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$SCRIPT")" > /tmp/vs-create.log 2>&1 || { cat /tmp/vs-create.log; fail "vm create"; }
vireo vm start svm > /tmp/vs-start.log 2>&1 || { cat /tmp/vs-start.log; fail "vm start"; }
n=0; while ! ip link show svtap0 >/dev/null 2>&1; do n=$((n + 1)); [ $n -lt 100 ] || fail "the VMM did not create svtap0"; sleep 0.2; done
ip addr add 10.0.3.1/24 dev svtap0; ip link set svtap0 up
n=0
until vireo vm logs svm 2>/dev/null | tr -d '\r' | grep -q '^VIREO-STATS-IO-DONE'; do
	n=$((n + 1)); [ $n -lt 180 ] || { vireo vm logs svm | tail -20; fail "the guest never finished its disk I/O"; }
	sleep 1
done
vireo vm logs svm | tr -d '\r' | grep -E '^(WROTE|READ) |transmitted' | sed 's/^/guest: /'
vireo vm logs svm | tr -d '\r' | grep -q '5 packets received' || fail "the guest's 5 pings to the host were not all answered"
vireo vm logs svm | tr -d '\r' | grep -q '^WROTE 0' || fail "the guest's write to /dev/vda failed"
vireo vm logs svm | tr -d '\r' | grep -q '^READ 0' || fail "the guest's read of /dev/vda failed"

# num KEY FILE: the first "KEY":NUMBER in the JSON file
num() { grep -o "\"$1\":[0-9]*" "$2" | head -n 1 | cut -d: -f2; }
# The estimate needs one full 2 s window; the balloon statistics arrive every 2 s.
n=0
while :; do
	vireo vm stats svm --json > /tmp/vs-stats.json 2>/tmp/vs-stats.err || { cat /tmp/vs-stats.err; fail "vm stats --json"; }
	grep -q '"active_bytes"' /tmp/vs-stats.json && grep -q '"free_bytes"' /tmp/vs-stats.json && break
	n=$((n + 1)); [ $n -lt 30 ] || { cat /tmp/vs-stats.json; fail "no active-memory estimate or guest memory figures after 30 s"; }
	sleep 1
done
cat /tmp/vs-stats.json; echo
vireo vm stats svm | sed 's/^/  stats| /'
wb=$(num write_bytes /tmp/vs-stats.json); rb=$(num read_bytes /tmp/vs-stats.json)
wr=$(num write_requests /tmp/vs-stats.json); fr=$(num flush_requests /tmp/vs-stats.json); er=$(num errors /tmp/vs-stats.json)
[ -n "$wb" ] && [ "$wb" -ge 8388608 ] || fail "write_bytes $wb < the 8 MiB the guest wrote"
[ -n "$rb" ] && [ "$rb" -ge 16777216 ] || fail "read_bytes $rb < the 16 MiB the guest read"
[ "$wr" -ge 1 ] && [ "$er" = 0 ] || fail "write_requests $wr, errors $er"
pass "disk counters: wrote $wb bytes in $wr requests ($fr flushes), read $rb bytes, $er errors"
# 5 echo requests and 5 replies of 1042-byte frames (1000 + ICMP 8 + IP 20 + Ethernet 14), plus ARP.
txf=$(num tx_frames /tmp/vs-stats.json); rxf=$(num rx_frames /tmp/vs-stats.json)
txb=$(num tx_bytes /tmp/vs-stats.json); rxb=$(num rx_bytes /tmp/vs-stats.json); txd=$(num tx_drops /tmp/vs-stats.json)
[ -n "$txf" ] && [ "$txf" -ge 5 ] && [ "$rxf" -ge 5 ] || fail "nic frames tx $txf rx $rxf < the 5 pings each way"
[ "$txb" -ge 5210 ] && [ "$rxb" -ge 5210 ] || fail "nic bytes tx $txb rx $rxb < 5 x 1042"
[ "$txd" = 0 ] || fail "tx_drops $txd"
pass "nic counters: tx $txf frames $txb bytes, rx $rxf frames $rxb bytes, tx drops $txd"
grep -q '"active_status":"ok"' /tmp/vs-stats.json || fail "active_status is not ok"
act=$(num active_bytes /tmp/vs-stats.json); prov=$(num provisioned_bytes /tmp/vs-stats.json); cons=$(num consumed_bytes /tmp/vs-stats.json)
[ "$act" -gt 0 ] && [ "$act" -le "$prov" ] || fail "active $act not in (0, provisioned $prov]"
free=$(num free_bytes /tmp/vs-stats.json); total=$(num total_bytes /tmp/vs-stats.json)
[ -n "$free" ] && [ "$free" -gt 0 ] && [ "$free" -le "$prov" ] || fail "guest free_bytes $free not in (0, $prov]"
pass "memory: provisioned $prov, consumed $cons, active $act (2 s window), guest-reported free $free of $total"
# Ballooning on demand: the guest gives 64 MiB back; the daemon reports the driver's progress.
vireo vm balloon svm 64M > /tmp/vs-balloon.out 2>&1 || { cat /tmp/vs-balloon.out; fail "vm balloon svm 64M"; }
grep -q 'balloon target 64 MiB' /tmp/vs-balloon.out || { cat /tmp/vs-balloon.out; fail "the new target is not reported"; }
n=0
until vireo vm balloon svm 2>/dev/null | grep -q 'the guest holds 64 MiB'; do
	n=$((n + 1)); [ $n -lt 60 ] || { vireo vm balloon svm; fail "the guest did not inflate its balloon to 64 MiB within 60 s"; }
	sleep 1
done
vireo vm balloon svm 100000M > /tmp/vs-balloon-big.out 2>&1 && fail "a balloon target beyond the VM's memory was accepted"
grep -q 'out of range' /tmp/vs-balloon-big.out || { cat /tmp/vs-balloon-big.out; fail "no clear error for a too-big balloon target"; }
pass "vm balloon: the guest inflated its balloon to the new 64 MiB target; a target past its memory is refused"
vireo vm stop svm > /dev/null 2>&1 || fail "vm stop"
vireo vm stats svm > /tmp/vs-stopped.out 2>&1 && fail "vm stats of a stopped VM succeeded"
grep -q 'stats exist only while its VMM runs' /tmp/vs-stopped.out || { cat /tmp/vs-stopped.out; fail "no clear error for a stopped VM"; }
pass "stats of a stopped VM: a clear error"
