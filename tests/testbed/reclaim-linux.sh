#!/bin/sh
# Hypervisor memory reclaim under Debian's stock kernel: the guest writes 16 MiB of random bytes
# and 16 MiB of text to its tmpfs and prints their MD5 sums; the VMM is asked to reclaim all of
# its cold memory (random pages to the swap file, the rest compressed); the guest then reads the
# files again (every released page comes back through userfaultfd) and the sums must match.
. /root/tests/lib.sh
rm -f /tmp/rl.log /tmp/rl.out /tmp/rl.swap
S='head -c 16777216 /dev/urandom > /tmp/r; yes vireo-reclaim-test | head -c 16777216 > /tmp/c; echo "SUM1 $(cat /tmp/r /tmp/c | md5sum)"; sleep 40; echo "SUM2 $(cat /tmp/r /tmp/c | md5sum)"; while true; do sleep 1; done'
vireo run --kernel $KERNEL_BZ --initrd $INITRD --memory 192M --cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" \
	--active-memory-window 1 --active-memory-sample 1 --swap-file /tmp/rl.swap \
	--serial file=/tmp/rl.log --api-socket /tmp/rl.sock > /tmp/rl.out 2>&1 &
P=$!
n=0
until grep -q '^SUM1' /tmp/rl.log 2>/dev/null; do
	n=$((n + 1)); [ $n -lt 240 ] || { tail -5 /tmp/rl.log; cat /tmp/rl.out; kill -9 $P; fail "the guest never wrote its files"; }
	sleep 1
done
sleep 4   # the files' pages age by a few sampling windows
R=$(vireo control /tmp/rl.sock reclaim 192M)
echo "$R"
case "$R" in ok=true*) ;; *) kill -9 $P; fail "reclaim: $R";; esac
val() { echo "$R" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
[ "$(val swapped_bytes)" -ge 12582912 ] || { kill -9 $P; fail "less than 12 MiB went to the swap file: $R"; }
[ "$(val compressed_bytes)" -ge 12582912 ] || { kill -9 $P; fail "less than 12 MiB were compressed: $R"; }
pass "reclaimed $(val released_bytes) bytes: $(val compressed_bytes) compressed into $(val stored_bytes), $(val swapped_bytes) swapped"
n=0
until grep -q '^SUM2' /tmp/rl.log 2>/dev/null; do
	n=$((n + 1)); [ $n -lt 240 ] || { tail -5 /tmp/rl.log; cat /tmp/rl.out; kill -9 $P; fail "the guest never read its files back"; }
	sleep 1
done
tr -d '\r' < /tmp/rl.log > /tmp/rl.clean
A=$(sed -n 's/^SUM1 //p' /tmp/rl.clean | head -1); B=$(sed -n 's/^SUM2 //p' /tmp/rl.clean | head -1)
ST=$(vireo control /tmp/rl.sock status)
F=$(echo "$ST" | tr ',{' '\n\n' | sed -n 's/^"faultin_count"://p')
vireo control /tmp/rl.sock stop > /dev/null
wait $P
echo "before: $A after: $B fault-ins: $F"
[ -n "$A" ] && [ "$A" = "$B" ] || fail "the files read back differently after the reclaim ($A, then $B)"
[ "${F:-0}" -gt 4096 ] || fail "only ${F:-0} pages came back through userfaultfd"
grep -Eq 'soft lockup|Oops|BUG:|Call Trace' /tmp/rl.clean && { grep -E 'soft lockup|Oops|BUG:' /tmp/rl.clean | head -3; fail "the guest kernel complains"; }
[ ! -s /tmp/rl.swap ] || fail "the swap file was not emptied when the VMM ended"
pass "the guest's 32 MiB read back intact after reclaim ($F pages faulted back in)"
rm -f /tmp/rl.swap /tmp/rl.clean
