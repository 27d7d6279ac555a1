# Debian's stock cloud kernel boots from its bzImage (vmlinuz) with 2 vCPUs and 512 MiB to the
# initramfs marker, and vireo exits 0 when the guest reboots.
. /root/tests/lib.sh
timeout 120 vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 512M --cmdline "$BASE_CMDLINE" > /tmp/boot-bz.log 2>&1
rc=$?
expect_line /tmp/boot-bz.log '^VIREO-GUEST-READY nproc=2 memtotal_kb=[0-9]+'
kb=$(sed -n 's/^VIREO-GUEST-READY nproc=2 memtotal_kb=\([0-9]*\).*/\1/p' /tmp/boot-bz.log)
[ "$kb" -gt 400000 ] && [ "$kb" -le 524288 ] || fail "MemTotal $kb kB does not match 512 MiB"
[ $rc -eq 0 ] || fail "vireo exited $rc after the guest rebooted (want 0)"
pass "bzImage: 2 CPUs, MemTotal $kb kB, exit 0"
