#!/usr/bin/env bash
# Build Vireo's L2 guest assets from Debian packages only.
#
#   scripts/guest-assets.sh [--add SRC:DST]... [--force] [OUTDIR]      (OUTDIR: out/guest)
#
# OUTDIR gets:
#   vmlinuz             Debian's linux-image-<ver>-cloud-amd64 bzImage, as shipped
#   vmlinux             the ELF inside it (LZ4 payload decompressed; has a PVH entry note)
#   initramfs.cpio.gz   busybox-static + virtio modules + guest/init (see docs/testbed.md)
#   modules.txt         the modules in the initramfs, in load order
#   kernel-version      uname -r of the kernel
# --add SRC:DST copies a host file/dir into the initramfs at DST (e.g. --add t.sh:/script,
# which init runs after the READY marker). The base initramfs is cached; extras are a second
# cpio member appended to it (the kernel unpacks concatenated archives).
# Downloads and unpacked packages are cached in out/cache (VIREO_CACHE overrides).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib-common.sh"

OUTDIR=
ADDS=()
FORCE=0
while (($#)); do
	case $1 in
	--add) [[ $# -ge 2 ]] || die "--add needs SRC:DST"; ADDS+=("$2"); shift 2 ;;
	--add=*) ADDS+=("${1#--add=}"); shift ;;
	--force) FORCE=1; shift ;;
	-h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) [[ -z $OUTDIR ]] || die "only one OUTDIR allowed"; OUTDIR=$1; shift ;;
	esac
done
OUTDIR=${OUTDIR:-$VIREO_ROOT/out/guest}

# Modules the L2 guest loads (dependencies are added from each module's depends=).
GUEST_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_mmio virtio_blk failover net_failover virtio_net virtio_balloon virtio-rng
	vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport virtio_console
	button evdev)

ensure_cmds apt-get:apt dpkg:dpkg cpio:cpio gzip:gzip lz4:lz4 readelf:binutils objcopy:binutils \
	xz:xz-utils sha256sum:coreutils

kernel_root # sets KERNEL_DIR KVER KMOD_DIR
BB_DIR=$(fetch_pkg busybox-static)
BUSYBOX=$BB_DIR/bin/busybox
[[ -x $BUSYBOX ]] || die "busybox-static package has no bin/busybox"

mkdir -p "$OUTDIR"
KEY=$(hash_of "$KVER" "$BB_DIR" "$VIREO_ROOT/guest/init" "$VIREO_ROOT/scripts/guest-assets.sh" \
	"$VIREO_ROOT/scripts/lib-common.sh" "${GUEST_MODULES[*]}")
BASE=$VIREO_CACHE/guest-$KEY

if [[ $FORCE == 1 || ! -f $BASE/.done ]]; then
	log "building guest assets for $KVER (cache key $KEY)"
	FINAL=$BASE
	BASE=$FINAL.tmp.$$ # built aside and renamed into place: concurrent runs never see half a build
	rm -rf "$BASE" && mkdir -p "$BASE"
	trap 'rm -rf "$BASE"' EXIT
	VMLINUZ=$KERNEL_DIR/boot/vmlinuz-$KVER
	[[ -f $VMLINUZ ]] || die "no boot/vmlinuz-$KVER in the kernel package"
	cp "$VMLINUZ" "$BASE/vmlinuz"

	# --- vmlinux: the bzImage's compressed payload (boot protocol >= 2.08) ---
	magic=$(od -An -tx1 -j $((0x202)) -N4 "$VMLINUZ" | tr -d ' \n')
	[[ $magic == 48647253 ]] || die "$VMLINUZ is not a bzImage (no HdrS magic)"
	setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$VMLINUZ" | tr -d ' ')
	((setup_sects)) || setup_sects=4
	payload_offset=$(od -An -tu4 -j $((0x248)) -N4 "$VMLINUZ" | tr -d ' ')
	payload_length=$(od -An -tu4 -j $((0x24c)) -N4 "$VMLINUZ" | tr -d ' ')
	start=$(((setup_sects + 1) * 512 + payload_offset))
	pmagic=$(od -An -tx1 -j "$start" -N4 "$VMLINUZ" | tr -d ' \n')
	# The kernel's LZ4 payload is an LZ4 legacy frame (magic 02 21 4c 18) followed by the
	# 4-byte little-endian decompressed size, which lz4(1) does not understand: drop it.
	payload() { dd if="$VMLINUZ" iflag=skip_bytes,count_bytes skip="$start" count="$1" status=none; }
	case $pmagic in
	02214c18) payload $((payload_length - 4)) | lz4 -dc >"$BASE/vmlinux" ||
		die "lz4 could not decompress the bzImage payload" ;;
	1f8b*) payload "$payload_length" | gzip -dc >"$BASE/vmlinux" 2>/dev/null || true ;;
	fd377a58*) payload "$payload_length" | xz -dc >"$BASE/vmlinux" 2>/dev/null || true ;;
	*) die "unknown bzImage payload compression (magic $pmagic); teach guest-assets.sh" ;;
	esac
	[[ $(od -An -c -N4 "$BASE/vmlinux" | tr -d ' \n') == '177ELF' ]] || die "extracted vmlinux is not an ELF"
	readelf -n "$BASE/vmlinux" | grep -q 'Unknown note type: (0x00000012)\|XEN_ELFNOTE_PHYS32_ENTRY' ||
		die "extracted vmlinux has no PVH entry note (Xen note 0x12)"
	log "vmlinux: $(stat -c %s "$BASE/vmlinux") bytes ELF with PVH note (payload $payload_length bytes at $start)"

	# --- initramfs ---
	R=$BASE/root
	mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,lib/modules,etc}
	cp "$BUSYBOX" "$R/bin/busybox"
	for a in $("$BUSYBOX" --list); do
		[[ $a == busybox ]] || ln -sf busybox "$R/bin/$a"
	done
	ln -sf ../bin/busybox "$R/sbin/init" 2>/dev/null || true
	install -m 0755 "$VIREO_ROOT/guest/init" "$R/init"
	mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$R/dev/null" c 1 3 2>/dev/null || true
	CLOSURE=$(mod_closure "${GUEST_MODULES[@]}")
	: >"$R/lib/modules/load-order"
	while read -r name path; do
		cp "$path" "$R/lib/modules/$name.ko"
		echo "$name" >>"$R/lib/modules/load-order"
	done <<<"$CLOSURE"
	cp "$R/lib/modules/load-order" "$BASE/modules.txt"
	echo "$KVER" >"$BASE/kernel-version"
	cpio_dir "$R" "$BASE/initramfs.cpio.gz" gzip
	rm -rf "$R"
	touch "$BASE/.done"
	if ((FORCE)); then rm -rf "$FINAL"; fi
	mv -T "$BASE" "$FINAL" 2>/dev/null || rm -rf "$BASE" # lost a race: theirs is identical
	trap - EXIT
	BASE=$FINAL
	prune_cache 'guest-*' 3
else
	log "guest assets for $KVER are cached ($BASE)"
fi

# place SRC DST: hard link (or copy) then rename, so readers never see DST missing
place() {
	[[ $1 -ef $2 ]] && return 0
	ln -f "$1" "$2.tmp.$$" 2>/dev/null || cp -f "$1" "$2.tmp.$$"
	mv -f "$2.tmp.$$" "$2"
}
for f in vmlinuz vmlinux modules.txt kernel-version; do place "$BASE/$f" "$OUTDIR/$f"; done
if ((${#ADDS[@]})); then
	X=$(mktemp -d)
	trap 'rm -rf "$X"' EXIT
	mkdir "$X/root"
	add_spec_files "$X/root" "${ADDS[@]}"
	cpio_dir "$X/root" "$X/extra.cpio.gz" gzip
	cat "$BASE/initramfs.cpio.gz" "$X/extra.cpio.gz" >"$OUTDIR/initramfs.cpio.gz.tmp.$$"
	mv -f "$OUTDIR/initramfs.cpio.gz.tmp.$$" "$OUTDIR/initramfs.cpio.gz"
	log "added to initramfs: ${ADDS[*]}"
else
	place "$BASE/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
fi
log "kernel $KVER; modules: $(tr '\n' ' ' <"$OUTDIR/modules.txt")"
for f in vmlinuz vmlinux initramfs.cpio.gz; do
	log "$(printf '%-18s %10s bytes' "$f" "$(stat -c %s "$OUTDIR/$f")")  $OUTDIR/$f"
done
