#!/usr/bin/env bash
# Quickstart: installs what Vireo needs (Debian packages), builds it, makes a guest from Debian's
# stock cloud kernel and busybox, and boots it with 2 vCPUs and 512 MiB, showing its console.
# On a host whose KVM cannot run stock kernels natively (the nested "PVM" backend), the VM is
# booted inside the nested testbed instead, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing build and guest tools from Debian's packages"
bash scripts/setup.sh

say "building vireo (release)"
swift build -c release --static-swift-stdlib --product vireo 2>&1 | tail -n 1
VIREO=.build/release/vireo

say "making the guest: Debian's linux-image-cloud-amd64 + a busybox initramfs"
bash scripts/guest-assets.sh out/guest

say "vireo host check"
"$VIREO" host check || true

# What the demo guest runs after boot, before it reboots (which ends the VM with status 0).
demo='echo; echo "Hello from a Vireo VM:"; uname -sr; echo "CPUs: $(nproc)"; grep -E "MemTotal" /proc/meminfo; grep -m1 "model name" /proc/cpuinfo; echo'
script=$(printf '%s' "$demo" | base64 -w0)
cmdline="console=ttyS0 reboot=k panic=-1 vireo.script=b64:$script"
run=(vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 512M)

if [[ -d /sys/module/kvm_pvm ]] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  say "booting the VM in the nested testbed"
  cat <<'EON'
This host's /dev/kvm is the nested PVM backend (or has no VT-x/AMD-V): a stock Linux kernel
cannot run natively here. Vireo boots it inside the testbed instead: QEMU (TCG) emulates an
AMD CPU with SVM, Debian's kernel loads kvm_amd there, and Vireo runs the guest on that real
KVM. Everything below the "VIREO-TESTBED-L1-READY" line is the guest's serial console.
EON
  printf '%q ' "${run[@]}" --cmdline "$cmdline" > out/quickstart-cmd.sh
  echo >> out/quickstart-cmd.sh
  echo 'echo "vireo exit status: $?"' >> out/quickstart-cmd.sh
  bash scripts/testbed.sh --vireo "$VIREO" --add out/quickstart-cmd.sh:/root/quickstart.sh -- sh /root/quickstart.sh
else
  say "booting the VM (serial console below; the guest reboots when done)"
  "$VIREO" run --kernel out/guest/vmlinuz --initrd out/guest/initramfs.cpio.gz --cpus 2 --memory 512M --cmdline "$cmdline"
  echo "vireo exit status: $?"
fi
