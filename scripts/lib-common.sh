# shellcheck shell=bash
# Shared helpers for Vireo's guest-asset and testbed scripts. Source it; do not run it.
#
# Conventions: every message goes to stderr, prefixed with the calling script's name;
# die() prints ONE line saying what failed and what to do, then exits 1.

VIREO_ROOT=${VIREO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VIREO_CACHE=${VIREO_CACHE:-$VIREO_ROOT/out/cache}
_prog=$(basename "$0" .sh)

log() { printf '[%s] %s\n' "$_prog" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$_prog" "$*" >&2; exit 1; }

# need_root: apt-get, dpkg -x and mknod want root. CI and the dev machines run as root.
need_root() {
	[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install / mknod); rerun with sudo"
}

# ensure_cmds CMD:PACKAGE... -- install the Debian packages whose commands are missing.
# Idempotent and quiet: does nothing when every command is already there.
ensure_cmds() {
	local spec cmd pkg missing=()
	for spec in "$@"; do
		cmd=${spec%%:*} pkg=${spec#*:}
		if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x $cmd ]]; then
			missing+=("$pkg")
		fi
	done
	((${#missing[@]})) || return 0
	need_root
	# dedupe
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
		apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed; check network/apt sources"
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
			die "apt-get install ${missing[*]} failed; install them by hand and rerun"
	fi
}

# apt_candidate PKG -> prints the candidate version ('' if unknown to apt).
apt_candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}' | sed 's/(none)//'
}

# resolve_kernel_pkg -> prints the real versioned image package behind linux-image-cloud-amd64.
# VIREO_KERNEL_PKG overrides (e.g. to pin a version).
resolve_kernel_pkg() {
	if [[ -n ${VIREO_KERNEL_PKG:-} ]]; then echo "$VIREO_KERNEL_PKG"; return; fi
	local dep
	dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
	if [[ -z $dep ]]; then
		need_root
		apt-get update -qq >/dev/null 2>&1 || true
		dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
	fi
	[[ -n $dep ]] || die "cannot resolve linux-image-cloud-amd64's versioned dependency (apt-cache depends); run apt-get update"
	echo "$dep"
}

# fetch_pkg PKG -> downloads PKG's .deb into $VIREO_CACHE/debs (once per version), unpacks it
# into $VIREO_CACHE/root/PKG_VERSION (once) and prints that directory.
fetch_pkg() {
	local pkg=$1 ver deb dir
	ver=$(apt_candidate "$pkg")
	if [[ -z $ver ]]; then
		need_root
		apt-get update -qq >/dev/null 2>&1 || true
		ver=$(apt_candidate "$pkg")
	fi
	[[ -n $ver ]] || die "apt knows no package '$pkg'; run apt-get update / check sources.list"
	mkdir -p "$VIREO_CACHE/debs" "$VIREO_CACHE/root"
	local safever=${ver//:/%3a}
	dir=$VIREO_CACHE/root/${pkg}_${safever}
	if [[ -f $dir/.unpacked ]]; then echo "$dir"; return; fi
	deb=$(ls "$VIREO_CACHE/debs/${pkg}_${safever}_"*.deb 2>/dev/null | head -n1 || true)
	if [[ -z $deb ]]; then
		log "downloading $pkg=$ver (apt-get download)"
		(cd "$VIREO_CACHE/debs" && apt-get download -qq "$pkg=$ver" 2>/dev/null) ||
			(cd "$VIREO_CACHE/debs" && apt-get download "$pkg=$ver") ||
			die "apt-get download $pkg=$ver failed; run apt-get update and retry"
		deb=$(ls "$VIREO_CACHE/debs/${pkg}_${safever}_"*.deb 2>/dev/null | head -n1 || true)
		[[ -n $deb ]] || die "apt-get download $pkg left no .deb in $VIREO_CACHE/debs"
	fi
	log "unpacking $(basename "$deb")"
	rm -rf "$dir" && mkdir -p "$dir"
	dpkg -x "$deb" "$dir" || die "dpkg -x $deb failed; delete $VIREO_CACHE and retry"
	touch "$dir/.unpacked"
	echo "$dir"
}

# kernel_root -> the unpacked kernel package dir; sets KVER (uname -r of it) and KMOD_DIR.
kernel_root() {
	local pkg dir
	pkg=$(resolve_kernel_pkg)
	dir=$(fetch_pkg "$pkg")
	KVER=${pkg#linux-image-}
	KMOD_DIR=$dir/lib/modules/$KVER
	[[ -d $KMOD_DIR ]] || die "no lib/modules/$KVER in $pkg; the package layout changed?"
	KERNEL_DIR=$dir
}

# mod_path NAME -> path of NAME.ko (NAME may use - or _) under $KMOD_DIR, decompressed if the
# package ships .ko.xz/.ko.zst (busybox insmod loads plain .ko only).
declare -A _MOD_PATH_CACHE=()
mod_path() {
	local name=$1 alt f
	if [[ -n ${_MOD_PATH_CACHE[$name]:-} ]]; then echo "${_MOD_PATH_CACHE[$name]}"; return; fi
	alt=${name//_/-}
	local n2=${name//-/_}
	f=$(find "$KMOD_DIR/kernel" \( -name "$name.ko*" -o -name "$alt.ko*" -o -name "$n2.ko*" \) -print -quit)
	[[ -n $f ]] || return 1
	case $f in
	*.ko) ;;
	*.ko.xz)
		[[ -f ${f%.xz} ]] || xz -dkc "$f" >"${f%.xz}"
		f=${f%.xz} ;;
	*.ko.zst)
		[[ -f ${f%.zst} ]] || zstd -qdc "$f" >"${f%.zst}"
		f=${f%.zst} ;;
	*.ko.gz)
		[[ -f ${f%.gz} ]] || gzip -dc "$f" >"${f%.gz}"
		f=${f%.gz} ;;
	esac
	_MOD_PATH_CACHE[$name]=$f
	echo "$f"
}

# mod_depends FILE -> comma-separated depends= of a .ko (what `modinfo -F depends` prints),
# read from the .modinfo section so no kmod is needed.
mod_depends() {
	objcopy -O binary --only-section=.modinfo "$1" /dev/stdout 2>/dev/null |
		tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1
}

# mod_closure NAME... -> prints "name path" lines, dependencies first (load order), each once.
mod_closure() {
	declare -A seen=()
	local out=()
	_visit() {
		local n=$1 p d
		n=${n//-/_}
		[[ -n ${seen[$n]:-} ]] && return 0
		seen[$n]=1
		p=$(mod_path "$1") || die "module $1 not found in $KMOD_DIR (is it built in or renamed?)"
		for d in $(mod_depends "$p" | tr ',' ' '); do _visit "$d"; done
		out+=("$(basename "$p" .ko) $p")
	}
	local m
	for m in "$@"; do _visit "$m"; done
	printf '%s\n' "${out[@]}"
}

# copy_bin_with_libs BIN DESTROOT [DEST] -> copies BIN to DESTROOT/DEST (default: BIN's own
# path) plus every library ldd names (and the dynamic loader), at their own paths.
copy_bin_with_libs() {
	local bin=$1 root=$2 dest=${3:-$1} lib
	install -D -m 0755 "$bin" "$root$dest"
	if ldd "$bin" >/dev/null 2>&1; then
		while read -r lib; do
			[[ -n $lib && -e $lib ]] || continue
			[[ -e $root$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
		done < <(ldd "$bin" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}')
	fi
}

# cpio_gz DIR OUT -> newc cpio of DIR (root-owned), gzip -1 (fast; the guest decompresses it).
cpio_dir() {
	local dir=$1 out=$2 comp=${3:-gzip}
	local tmp=$out.tmp.$$
	case $comp in
	gzip) (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 -n) >"$tmp" ;;
	none) (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp" ;;
	*) die "internal: unknown compression $comp" ;;
	esac
	mv -f "$tmp" "$out"
}

# add_spec_files ROOT SRC:DST... -> copies each SRC to ROOT/DST (DST absolute in the guest).
add_spec_files() {
	local root=$1 spec src dst
	shift
	for spec in "$@"; do
		[[ $spec == *:* ]] || die "--add wants SRC:DST (got '$spec')"
		src=${spec%%:*} dst=${spec#*:}
		[[ $dst == /* ]] || die "--add DST must be an absolute path in the guest (got '$dst')"
		[[ -e $src ]] || die "--add source '$src' does not exist"
		mkdir -p "$root$(dirname "$dst")"
		if [[ -d $src ]]; then
			cp -a "$src/." "$root$dst/" 2>/dev/null || { mkdir -p "$root$dst" && cp -a "$src/." "$root$dst/"; }
		else
			cp -a "$src" "$root$dst"
		fi
	done
}

# hash_of FILES/STRINGS... -> short sha256 of the arguments and of the files they name.
hash_of() {
	local a
	for a in "$@"; do
		if [[ -f $a ]]; then printf '%s\n' "$a"; sha256sum <"$a"; else printf '%s\n' "$a"; fi
	done | sha256sum | cut -c1-16
}

# prune_cache GLOB KEEP -> delete all but the KEEP newest cache entries matching GLOB (under
# $VIREO_CACHE), so edits to the scripts do not pile up old builds. Keep >= 2: a concurrent
# run may still be using the previous one.
prune_cache() {
	ls -dt "$VIREO_CACHE"/$1 2>/dev/null | grep -v '\.tmp\.' | tail -n +$(($2 + 1)) | xargs -r rm -rf || true
}
