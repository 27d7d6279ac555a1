# SIGTERM and SIGINT stop a running guest: exit status 143 and 130, with a one-line reason.
. /root/tests/lib.sh
for sig in TERM INT; do
  want=143; [ $sig = INT ] && want=130
  vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 256M --cmdline "$BASE_CMDLINE vireo.hold=1" > /tmp/sig-$sig.log 2>&1 &
  pid=$!
  n=0
  until grep -q '^VIREO-GUEST-READY' /tmp/sig-$sig.log; do
    n=$((n + 1)); [ $n -lt 240 ] || { kill -9 $pid; tail -5 /tmp/sig-$sig.log; fail "guest never became ready"; }
    sleep 1
  done
  sleep 1
  kill -$sig $pid
  wait $pid
  rc=$?
  [ $rc -eq $want ] || fail "SIG$sig: vireo exited $rc (want $want)"
  expect_line /tmp/sig-$sig.log "stopped by SIG$sig"
  pass "SIG$sig -> exit $rc"
done
