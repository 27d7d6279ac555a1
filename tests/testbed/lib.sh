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

# start_daemon NAME [vireo host flags...]: `vireo host` on /tmp/NAME.sock with a fresh data
# directory /tmp/NAME-data and its log in /tmp/NAME-daemon.log; exports VIREO_SOCKET and
# DAEMON_PID and returns once the socket answers. The caller's EXIT trap should kill DAEMON_PID
# (start_daemon sets one that does, replaced if the caller sets its own).
start_daemon() {
	_name=$1; shift
	export VIREO_SOCKET=/tmp/$_name.sock
	rm -rf /tmp/$_name-data
	vireo host --socket $VIREO_SOCKET --data-dir /tmp/$_name-data --pool /guest --pool /tmp "$@" > /tmp/$_name-daemon.log 2>&1 &
	DAEMON_PID=$!
	trap 'kill $DAEMON_PID 2>/dev/null' EXIT
	_n=0
	until [ -S $VIREO_SOCKET ]; do
		_n=$((_n + 1)); [ $_n -lt 50 ] || fail "daemon did not start: $(tail -5 /tmp/$_name-daemon.log)"
		sleep 0.2
	done
}
