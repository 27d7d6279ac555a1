# Shared helpers for testbed scenarios (sourced inside L1; busybox sh).
KERNEL_BZ=/guest/vmlinuz
KERNEL_ELF=/guest/vmlinux
INITRD=/guest/initramfs.cpio.gz
BASE_CMDLINE="console=ttyS0 panic=-1 quiet"

fail() { echo "FAIL: $*"; exit 1; }
pass() { echo "ok: $*"; }

# b64 SCRIPT -> the argument for vireo.script=
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

# expect_line FILE PATTERN: the file has a line matching the (grep -E) pattern
expect_line() { grep -Eq "$2" "$1" || { echo "--- $1 (tail)"; tail -n 30 "$1"; fail "no line matching '$2' in $1"; }; }
