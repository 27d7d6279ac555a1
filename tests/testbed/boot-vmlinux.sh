# The same kernel as an ELF vmlinux (PVH entry) boots with 2 vCPUs to the marker; exit 0 on reboot.
. /root/tests/lib.sh
timeout 120 vireo run --kernel $KERNEL_ELF --initrd $INITRD --cpus 2 --memory 512M --cmdline "$BASE_CMDLINE" > /tmp/boot-elf.log 2>&1
rc=$?
expect_line /tmp/boot-elf.log '^VIREO-GUEST-READY nproc=2 memtotal_kb=[0-9]+'
[ $rc -eq 0 ] || fail "vireo exited $rc after the guest rebooted (want 0)"
pass "vmlinux/PVH: 2 CPUs, exit 0"
