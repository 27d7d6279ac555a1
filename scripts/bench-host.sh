#!/usr/bin/env bash
# Benchmarks of `vireo host` (the daemon), written to the "host" section of docs/PERFORMANCE.md:
#  - API latency (p50/p99) of GET /v1/vms and GET /v1/vms/NAME under 100 concurrent clients
#    (wrk from Debian's packages, over the daemon's TCP listener with its bearer token);
#  - time to create and to start 50 probe-guest VMs (each start returns once the VMM's control
#    socket answers), then pause them so 50 busy vCPUs do not swamp the machine;
#  - the daemon's own resident memory, idle and with 50 VMs after the load.
# Usage: bash scripts/bench-host.sh [--vireo PATH] [--vms N] [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
vireo=""; nvms=50; duration=10
while (($#)); do
  case $1 in
    --vireo) vireo=$2; shift 2 ;;
    --vms) nvms=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "usage: $0 [--vireo PATH] [--vms N] [--duration SECONDS]" >&2; exit 2 ;;
  esac
done
[[ -r /dev/kvm && -w /dev/kvm ]] || { echo "bench-host: /dev/kvm is not usable here; the probe VMs need it" >&2; exit 1; }
command -v wrk >/dev/null || { echo "[bench-host] installing wrk"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v curl >/dev/null || { echo "bench-host: needs curl" >&2; exit 1; }
if [[ -z $vireo ]]; then
  swift build -c release --product vireo 2>&1 | tail -n 1
  vireo=.build/release/vireo
fi

work=$(mktemp -d /tmp/vbh.XXXX)
sock=$work/d.sock
head -c 24 /dev/urandom | base64 > "$work/token"
token=$(cat "$work/token")
port=$((20000 + RANDOM % 20000))
"$vireo" host --socket "$sock" --data-dir "$work/data" --listen "127.0.0.1:$port" --token-file "$work/token" 2> "$work/daemon.log" &
daemon=$!
cleanup() {
  for n in $(seq 1 "$nvms"); do curl -s -o /dev/null -X POST --unix-socket "$sock" "http://h/v1/vms/b$n/kill" || true; done
  kill "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -sf -o /dev/null --unix-socket "$sock" http://h/v1/host && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
rss_idle_kb=$(rss)

api() { curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --unix-socket "$sock" -X "$1" "http://h$2" ${3:+-H 'Content-Type: application/json' -d "$3"}; }
create_s=0; start_s=0
for n in $(seq 1 "$nvms"); do
  read -r code t < <(api POST /v1/vms "{\"name\":\"b$n\",\"probe\":\"dirty\",\"memory_mib\":16}")
  [[ $code == 201 ]] || { echo "bench-host: create b$n answered $code" >&2; exit 1; }
  create_s=$(python3 -c "print($create_s + $t)")
  read -r code t < <(api POST "/v1/vms/b$n/start")
  [[ $code == 200 ]] || { echo "bench-host: start b$n answered $code" >&2; exit 1; }
  start_s=$(python3 -c "print($start_s + $t)")
  read -r code _ < <(api POST "/v1/vms/b$n/pause")
done
running=$(curl -s --unix-socket "$sock" http://h/v1/host | python3 -c 'import json,sys; print(json.load(sys.stdin)["vms_running"])')

lat() {  # path -> "p50 p99 requests/s" (ms, ms, req/s)
  wrk -t2 -c100 -d"${duration}s" --latency -H "Authorization: Bearer $token" "http://127.0.0.1:$port$1" > "$work/wrk.txt"
  python3 - "$work/wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{ms('50'):.2f} {ms('99'):.2f} {rps:.0f} {errors.group(1) if errors else 0}")
PY
}
read -r list_p50 list_p99 list_rps list_err < <(lat /v1/vms)
read -r show_p50 show_p99 show_rps show_err < <(lat /v1/vms/b1)
rss_load_kb=$(rss)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
section=$(cat <<MD
<!-- BEGIN host -->
## The host daemon: API latency, starting many VMs, its own memory

Measured by \`scripts/bench-host.sh\` on $(nproc) CPUs ($cpu), $(date -u +%Y-%m-%d). The daemon
runs \`$vireo\`; the API load is wrk (2 threads, 100 connections, ${duration} s per URL) over
the TCP listener with the bearer token, while $running probe VMs (paused) are in the inventory.

| measure | value |
|---|---|
| GET /v1/vms ($nvms VMs in the list), 100 concurrent clients: p50 / p99 | ${list_p50} ms / ${list_p99} ms (${list_rps} req/s, ${list_err} non-2xx) |
| GET /v1/vms/b1, 100 concurrent clients: p50 / p99 | ${show_p50} ms / ${show_p99} ms (${show_rps} req/s, ${show_err} non-2xx) |
| create $nvms probe VMs (POST /v1/vms, sequential, sum of request times) | $(python3 -c "print(f'{$create_s:.2f}')") s |
| start $nvms probe VMs (POST .../start returns when the VMM's control socket answers) | $(python3 -c "print(f'{$start_s:.2f} s, {$start_s / $nvms * 1000:.0f} ms per VM')") |
| daemon resident memory, idle / with $nvms VMs after the load | $((rss_idle_kb / 1024)) MiB / $((rss_load_kb / 1024)) MiB |

Each start spawns one \`vireo run\` process (its own session), which creates the KVM VM and
its guest memory and answers on its control socket; the figure is dominated by that process's
start-up, not by the daemon. The list response grows with the inventory (every VM's JSON).
<!-- END host -->
MD
)
echo "$section"
doc=docs/PERFORMANCE.md
[[ -f $doc ]] || printf '# Vireo performance\n\nFigures are measured by the scripts named in each section; never edited by hand.\n' > $doc
python3 - "$doc" "$section" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
pattern = re.compile(r"<!-- BEGIN host -->.*?<!-- END host -->", re.S)
text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "[bench-host] wrote the host section of $doc"
