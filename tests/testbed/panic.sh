# A guest kernel panic with panic=-1 is a reboot: vireo exits 0.
. /root/tests/lib.sh
timeout 120 vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 1 --memory 256M --cmdline "$BASE_CMDLINE vireo.panic=1" > /tmp/panic.log 2>&1
rc=$?
expect_line /tmp/panic.log 'Kernel panic'
[ $rc -eq 0 ] || fail "vireo exited $rc after a guest panic with panic=-1 (want 0)"
pass "panic -> reboot -> exit 0"
