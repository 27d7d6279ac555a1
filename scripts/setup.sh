#!/usr/bin/env bash
# Installs what Vireo's build, tests and demo need from Debian's packages (idempotent).
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils acpica-tools busybox-static cpio lz4 zlib1g-dev libzstd-dev libsqlite3-dev iproute2 nftables dnsmasq-base
      chromium chromium-driver python3-selenium libjs-chart.js libjs-xterm node-xterm systemd)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "setup: need root to apt-get install ${missing[*]} (rerun with sudo)" >&2; exit 1; }
  echo "[setup] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH; install Swift 6.x (see README)" >&2; exit 1; }
