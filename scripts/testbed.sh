#!/usr/bin/env bash
# Vireo's nested testbed: run COMMAND inside an L1 Linux that has a real (SVM + NPT) /dev/kvm,
# emulated by QEMU TCG, so a VMM can boot stock kernels as L2 guests on hosts whose own
# /dev/kvm cannot (kvm_pvm). See docs/testbed.md.
#
#   scripts/testbed.sh [options] -- COMMAND...
#
# COMMAND's words are joined with spaces and run by L1's busybox sh (like ssh), with stdin
# /dev/null, in /root. L1's console streams to stdout. The exit status is COMMAND's, or
#   124  timeout (QEMU killed)        125  L1 ended without reporting a status / no /dev/kvm
#   2    usage error                  1    build/setup error (one-line reason on stderr)
# Options:
#   --smp N          L1 vCPUs (default 2; L2 guests can use up to N)
#   --memory MB      L1 memory in MiB (default 2048)
#   --timeout S      hard limit for the whole L1 run in seconds (default 300)
#   --vireo PATH     put this vireo binary (+ the libraries ldd names) in L1 as /usr/local/bin/vireo
#   --with-qemu      put qemu-system-x86_64 (+ libs, firmware) and vireo-l2-qemu in L1
#   --with-qemu-img  put qemu-img and qemu-io (+ libs) in L1: the interop reference for disks
#   --add SRC:DST    copy a host file or directory into L1 at DST (repeatable)
#   --guest DIR      L2 assets to put in L1's /guest (default: built by guest-assets.sh)
#   --no-vmlinux     leave /guest/vmlinux (53 MB) out of L1 (a little faster boot)
#   --log FILE       also write L1's console to FILE (default out/testbed/last.log)
#   --verbose        show L1 kernel messages (no `quiet`, no dmesg -n 1)
# L1 has: busybox, /dev/kvm, tun/bridge/8021q/nftables modules loaded, ip, bridge, nft, dnsmasq, /guest/{vmlinuz,vmlinux,
# initramfs.cpio.gz,modules.txt}, vireo-l2-initrd (add files to an L2 initramfs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
SMP=2 MEM=2048 TIMEOUT=300 VIREO= WITH_QEMU=0 WITH_QEMU_IMG=0 GUEST= NO_VMLINUX=0 VERBOSE=0
LOG=$VIREO_ROOT/out/testbed/last.log
ADDS=()
while (($#)); do
	case $1 in
	--smp) SMP=${2:?--smp needs N}; shift 2 ;;
	--memory) MEM=${2:?--memory needs MB}; shift 2 ;;
	--timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
	--vireo) VIREO=${2:?--vireo needs PATH}; shift 2 ;;
	--with-qemu) WITH_QEMU=1; shift ;;
	--with-qemu-img) WITH_QEMU_IMG=1; shift ;;
	--add) ADDS+=("${2:?--add needs SRC:DST}"); shift 2 ;;
	--guest) GUEST=${2:?--guest needs DIR}; shift 2 ;;
	--no-vmlinux) NO_VMLINUX=1; shift ;;
	--log) LOG=${2:?--log needs FILE}; shift 2 ;;
	--verbose) VERBOSE=1; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) usage >&2; echo "[testbed] ERROR: unknown argument '$1' (COMMAND goes after --)" >&2; exit 2 ;;
	esac
done
(($#)) || { usage >&2; echo "[testbed] ERROR: no COMMAND given (scripts/testbed.sh [options] -- COMMAND...)" >&2; exit 2; }
[[ $SMP =~ ^[0-9]+$ && $MEM =~ ^[0-9]+$ && $TIMEOUT =~ ^[0-9]+$ ]] || { echo "[testbed] ERROR: --smp/--memory/--timeout want integers" >&2; exit 2; }
COMMAND="$*"

ensure_cmds qemu-system-x86_64:qemu-system-x86 cpio:cpio gzip:gzip timeout:coreutils ldd:libc-bin \
	objcopy:binutils ip:iproute2 bridge:iproute2 nft:nftables dnsmasq:dnsmasq-base

# ---- L2 assets ----
if [[ -z $GUEST ]]; then
	GUEST=$VIREO_ROOT/out/testbed/guest
	"$VIREO_ROOT/scripts/guest-assets.sh" "$GUEST" 2>&1 | grep -v '^\[guest-assets\] .*bytes ' >&2 || true
	[[ -f $GUEST/initramfs.cpio.gz ]] || die "guest-assets.sh failed (see above)"
fi
for f in vmlinuz initramfs.cpio.gz; do
	[[ -f $GUEST/$f ]] || die "$GUEST/$f missing; run scripts/guest-assets.sh $GUEST"
done

kernel_root # KERNEL_DIR KVER KMOD_DIR
BB_DIR=$(fetch_pkg busybox-static)
# Networks (docs/networks.md): bridges with VLAN filtering, 802.1Q interfaces, nftables NAT.
L1_MODULES=(irqbypass kvm kvm-amd tun llc stp bridge 8021q nf_tables nft_chain_nat nft_masq nft_ct)
# The host tools the daemon's networks use, from this host's Debian packages (with their
# libraries), in /usr/local/bin so they come before busybox's `ip` on L1's PATH.
L1_NET_TOOLS=(ip bridge nft dnsmasq)
WORK=$VIREO_ROOT/out/testbed
mkdir -p "$WORK" "$(dirname "$LOG")"

# ---- base L1 initramfs (cached): busybox, modules, init, helpers ----
BKEY=$(hash_of "$KVER" "$BB_DIR" "$VIREO_ROOT/guest/l1-init" "$VIREO_ROOT/guest/l1-bin/vireo-l2-initrd" \
	"$VIREO_ROOT/scripts/testbed.sh" "$VIREO_ROOT/scripts/lib-common.sh" "${L1_MODULES[*]}" \
	$(for t in "${L1_NET_TOOLS[@]}"; do readlink -f "$(command -v "$t")"; done))
BASE=$VIREO_CACHE/l1-base-$BKEY.cpio
if [[ ! -f $BASE ]]; then
	log "building L1 base initramfs ($KVER)"
	R=$(mktemp -d "$WORK/l1root.XXXXXX")
	mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,dev,proc,sys,tmp,run,root,etc,lib/modules,testbed}
	cp "$BB_DIR/bin/busybox" "$R/bin/busybox"
	for a in $("$R/bin/busybox" --list); do [[ $a == busybox ]] || ln -sf busybox "$R/bin/$a"; done
	install -m 0755 "$VIREO_ROOT/guest/l1-init" "$R/init"
	install -m 0755 "$VIREO_ROOT/guest/l1-bin/vireo-l2-initrd" "$R/usr/local/bin/"
	mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$R/dev/null" c 1 3 2>/dev/null || true
	echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
	echo 'root:x:0:' >"$R/etc/group"
	for t in "${L1_NET_TOOLS[@]}"; do copy_bin_with_libs "$(readlink -f "$(command -v "$t")")" "$R" "/usr/local/bin/$t"; done
	CLOSURE=$(mod_closure "${L1_MODULES[@]}")
	while read -r name path; do
		cp "$path" "$R/lib/modules/$name.ko"
		echo "$name" >>"$R/lib/modules/load-order"
	done <<<"$CLOSURE"
	cpio_dir "$R" "$BASE" none
	rm -rf "$R"
	prune_cache 'l1-base-*.cpio' 3
fi

# ---- guest assets piece (cached by content) ----
GFILES=(vmlinuz initramfs.cpio.gz modules.txt kernel-version)
((NO_VMLINUX)) || GFILES+=(vmlinux)
GKEY=$(for f in "${GFILES[@]}"; do [[ -f $GUEST/$f ]] && stat -c '%n %s %Y %i' "$GUEST/$f"; done | sha256sum | cut -c1-16)
GPIECE=$VIREO_CACHE/l1-guest-$GKEY.cpio
if [[ ! -f $GPIECE ]]; then
	log "packing L2 assets from $GUEST into L1 /guest"
	# keep only the newest few: they are large (concurrent runs may still read older ones)
	prune_cache 'l1-guest-*.cpio' 3
	R=$(mktemp -d "$WORK/l1guest.XXXXXX")
	mkdir -p "$R/guest"
	for f in "${GFILES[@]}"; do [[ -f $GUEST/$f ]] && cp "$GUEST/$f" "$R/guest/$f"; done
	cpio_dir "$R" "$GPIECE" none
	rm -rf "$R"
fi
PIECES=("$BASE" "$GPIECE")

# ---- QEMU piece (cached by the installed qemu version) ----
if ((WITH_QEMU)); then
	QBIN=$(command -v qemu-system-x86_64)
	QKEY=$(hash_of "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || stat -c %Y "$QBIN")" \
		"$VIREO_ROOT/guest/l1-bin/vireo-l2-qemu" "$VIREO_ROOT/scripts/lib-common.sh")
	QPIECE=$VIREO_CACHE/l1-qemu-$QKEY.cpio.gz
	if [[ ! -f $QPIECE ]]; then
		log "packing qemu-system-x86_64 + libraries + firmware for L1"
		R=$(mktemp -d "$WORK/l1qemu.XXXXXX")
		copy_bin_with_libs "$QBIN" "$R"
		[[ $QBIN == /usr/bin/qemu-system-x86_64 ]] || { mkdir -p "$R/usr/bin"; ln -sf "$QBIN" "$R/usr/bin/qemu-system-x86_64"; }
		install -D -m 0755 "$VIREO_ROOT/guest/l1-bin/vireo-l2-qemu" "$R/usr/local/bin/vireo-l2-qemu"
		# firmware: what -M microvm/pc/q35 with -kernel and -nodefaults loads
		for f in /usr/share/qemu/{qboot.rom,bios-microvm.bin,kvmvapic.bin,linuxboot.bin,linuxboot_dma.bin,multiboot.bin,multiboot_dma.bin,pvh.bin} \
			/usr/share/seabios/{bios-256k.bin,bios.bin,bios-microvm.bin} /usr/lib/ipxe/qemu/efi-virtio.rom; do
			[[ -e $f ]] && install -D -m 0644 "$(readlink -f "$f")" "$R$f"
		done
		cpio_dir "$R" "$QPIECE" gzip
		rm -rf "$R"
		prune_cache 'l1-qemu-*.cpio.gz' 2
	fi
	PIECES+=("$QPIECE")
fi

# ---- qemu-img piece (cached by the installed qemu-utils version) ----
if ((WITH_QEMU_IMG)); then
	ensure_cmds qemu-img:qemu-utils qemu-io:qemu-utils
	IKEY=$(hash_of "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || stat -c %Y "$(command -v qemu-img)")" "$VIREO_ROOT/scripts/lib-common.sh")
	IPIECE=$VIREO_CACHE/l1-qemu-img-$IKEY.cpio.gz
	if [[ ! -f $IPIECE ]]; then
		log "packing qemu-img + qemu-io + libraries for L1"
		R=$(mktemp -d "$WORK/l1qimg.XXXXXX")
		copy_bin_with_libs "$(command -v qemu-img)" "$R" /usr/bin/qemu-img
		copy_bin_with_libs "$(command -v qemu-io)" "$R" /usr/bin/qemu-io
		cpio_dir "$R" "$IPIECE" gzip
		rm -rf "$R"
		prune_cache 'l1-qemu-img-*.cpio.gz' 2
	fi
	PIECES+=("$IPIECE")
fi

# ---- per-run piece: the command, vireo, --add files ----
RUNDIR=$(mktemp -d "$WORK/run.XXXXXX")
QPID= TEEPID=
cleanup() {
	# timeout(1) runs QEMU in its own process group, so signals to ours do not reach it:
	# kill it explicitly (timeout forwards the signal to QEMU).
	[[ -n $QPID ]] && kill "$QPID" 2>/dev/null
	[[ -n $TEEPID ]] && wait "$TEEPID" 2>/dev/null
	rm -rf "$RUNDIR"
}
trap cleanup EXIT
trap 'log "interrupted; stopping QEMU"; exit 130' INT
trap 'log "terminated; stopping QEMU"; exit 143' TERM
R=$RUNDIR/root
mkdir -p "$R/testbed"
printf '%s\n' "$COMMAND" >"$R/testbed/cmd.sh"
if [[ -n $VIREO ]]; then
	[[ -f $VIREO && -x $VIREO ]] || die "--vireo $VIREO is not an executable file (build it: swift build -c release --static-swift-stdlib)"
	# at a fixed path: the host path may be under /tmp, which L1 mounts a tmpfs over
	copy_bin_with_libs "$(readlink -f "$VIREO")" "$R" /usr/local/bin/vireo
fi
((${#ADDS[@]})) && add_spec_files "$R" "${ADDS[@]}"
cpio_dir "$R" "$RUNDIR/run.cpio.gz" gzip
PIECES+=("$RUNDIR/run.cpio.gz")
cat "${PIECES[@]}" >"$RUNDIR/l1.cpio"

APPEND="console=ttyS0 panic=-1"
((VERBOSE)) && APPEND+=" vireo.verbose=1" || APPEND+=" quiet"
KERNEL=$KERNEL_DIR/boot/vmlinuz-$KVER
log "booting L1 (QEMU TCG EPYC-Rome+svm+npt, ${SMP} vCPU, ${MEM} MiB, timeout ${TIMEOUT}s, initrd $(($(stat -c %s "$RUNDIR/l1.cpio") / 1048576)) MiB): $COMMAND"
T0=$(date +%s.%N)
set +e
# QEMU's stdin is /dev/null: no interaction, nothing to restore on a tty, fine without stdin.
# Run in the background and `wait`, so the INT/TERM traps fire while QEMU runs.
mkfifo "$RUNDIR/console.fifo"
tee "$RUNDIR/console.log" <"$RUNDIR/console.fifo" &
TEEPID=$!
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu EPYC-Rome,+svm,+npt -m "$MEM" -smp "$SMP" \
	-nodefaults -no-user-config -display none -serial stdio -no-reboot \
	-kernel "$KERNEL" -initrd "$RUNDIR/l1.cpio" -append "$APPEND" </dev/null 2>"$RUNDIR/qemu.err" >"$RUNDIR/console.fifo" &
QPID=$!
wait "$QPID"
QRC=$?
QPID=
wait "$TEEPID"
TEEPID=
set -e
cp -f "$RUNDIR/console.log" "$LOG" 2>/dev/null || true
T1=$(date +%s.%N)
WALL=$(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}')
grep -v 'CPUID\|host doesn.t support requested feature' "$RUNDIR/qemu.err" >&2 || true

L1UP=$(tr -d '\r' <"$RUNDIR/console.log" | sed -n 's/^VIREO-TESTBED-L1-READY uptime=\([0-9.]*\).*/\1/p' | tail -n1)
STATUS=$(tr -d '\r' <"$RUNDIR/console.log" | sed -n 's/^VIREO-TESTBED-EXIT=\([0-9]*\)$/\1/p' | tail -n1)
if [[ $QRC == 124 || $QRC == 137 ]]; then
	log "TIMEOUT: L1 did not finish within ${TIMEOUT}s; QEMU killed (raise --timeout; log: $LOG)"
	exit 124
fi
if [[ -z $STATUS ]]; then
	log "FAILED: L1 ended (qemu rc=$QRC) without a VIREO-TESTBED-EXIT marker (L1 panic or qemu error; rerun with --verbose; log: $LOG)"
	exit 125
fi
log "done: COMMAND exit status $STATUS; L1 wall ${WALL}s (L1 kernel start to command: ${L1UP:-?}s)"
exit "$STATUS"
