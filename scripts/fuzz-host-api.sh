#!/usr/bin/env bash
# Fuzzes the host daemon's API from its OpenAPI document with schemathesis (from PyPI): a real
# daemon on a temporary socket, data directory and TCP port with a bearer token. Lifecycle
# verbs that would boot fuzzer-made VMs (start, reboot, resume) are left out, and so are event
# streams and thick images (scripts/fuzz_hooks.py). What it finds is
# kept as cases in Tests/HostTests/HostAPIErrorTests.swift.
# Usage: bash scripts/fuzz-host-api.sh [--vireo PATH] [--max-examples N]
set -euo pipefail
cd "$(dirname "$0")/.."
vireo=.build/debug/vireo; examples=100
while (($#)); do
  case $1 in
    --vireo) vireo=$2; shift 2 ;;
    --max-examples) examples=$2; shift 2 ;;
    *) echo "usage: $0 [--vireo PATH] [--max-examples N]" >&2; exit 2 ;;
  esac
done
[[ -x $vireo ]] || swift build --product vireo 2>&1 | tail -n 1
command -v st >/dev/null || pip install -q schemathesis
work=$(mktemp -d /tmp/vfz.XXXX)
head -c 24 /dev/urandom | base64 > "$work/token"
port=$((20000 + RANDOM % 20000))
"$vireo" host --socket "$work/d.sock" --data-dir "$work/data" --listen "127.0.0.1:$port" --token-file "$work/token" 2> "$work/daemon.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null --unix-socket "$work/d.sock" http://h/v1/host && break; sleep 0.1; done
rc=0
# fuzz_hooks.py keeps out event streams (follow=true) and thick images (they would fill the disk).
# GET /v1/events gets a run of its own without the coverage phase, which ignores filter hooks
# (it would open follow=true streams that never end).
export PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks
st --config-file scripts/schemathesis.toml run openapi/vireo.json -u "http://127.0.0.1:$port" -H "Authorization: Bearer $(cat "$work/token")" \
   --exclude-path-regex '/(start|reboot|resume)$|^/v1/events$' --max-examples "$examples" || rc=$?
st --config-file scripts/schemathesis.toml run openapi/vireo.json -u "http://127.0.0.1:$port" -H "Authorization: Bearer $(cat "$work/token")" \
   --include-path /v1/events --phases examples,fuzzing --request-timeout 10 --max-examples "$examples" || rc=$?
kill -0 $daemon 2>/dev/null || { echo "fuzz-host-api: the daemon died" >&2; cat "$work/daemon.log" >&2; exit 1; }
exit $rc
