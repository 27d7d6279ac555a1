# Debian's stock cloud kernel boots from its bzImage (vmlinuz) with 2 vCPUs and 512 MiB to the
# initramfs marker, and vireo exits 0 when the guest reboots. The guest's own log shows XSAVE
# enabled with a consistent size (no "XSAVE consistency problem") and no i8042 keylock warning.
. /root/tests/lib.sh
S='dmesg | grep -E "x86/fpu: Enabled xstate|XSAVE consistency|Keylock active" | sed "s/^\[[ 0-9.]*\] /dmesg: /"'
timeout 120 vireo run --kernel $KERNEL_BZ --initrd $INITRD --cpus 2 --memory 512M \
	--cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$S")" > /tmp/boot-bz.log 2>&1
rc=$?
expect_line /tmp/boot-bz.log '^VIREO-GUEST-READY nproc=2 memtotal_kb=[0-9]+'
kb=$(sed -n 's/^VIREO-GUEST-READY nproc=2 memtotal_kb=\([0-9]*\).*/\1/p' /tmp/boot-bz.log)
[ "$kb" -gt 400000 ] && [ "$kb" -le 524288 ] || fail "MemTotal $kb kB does not match 512 MiB"
[ $rc -eq 0 ] || fail "vireo exited $rc after the guest rebooted (want 0)"
pass "bzImage: 2 CPUs, MemTotal $kb kB, exit 0"
expect_line /tmp/boot-bz.log '^dmesg: x86/fpu: Enabled xstate features'
grep -q 'XSAVE consistency' /tmp/boot-bz.log && fail "the guest found the XSAVE area size inconsistent (CPUID 0xD.0 EBX vs XCR0)"
grep -q 'Keylock active' /tmp/boot-bz.log && fail "the i8042 reports a keylock"
pass "guest XSAVE enabled with a consistent size; no i8042 keylock"
