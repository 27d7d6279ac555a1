#!/bin/sh
# Builds a flat probe image: build.sh OUT MODE QD OPS [extra cc flags, e.g. -DQEMU_REPORT]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1; mode=$2; qd=$3; ops=$4; shift 4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cc -O2 -ffreestanding -fno-pic -fno-pie -nostdlib -mno-red-zone -mno-sse -mno-mmx -mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables \
   -DMODE="$mode" -DQD="$qd" -DOPS="$ops" "$@" -c "$here/blk.c" -o "$tmp/blk.o"
cc -c "$here/start.S" -o "$tmp/start.o"
ld -static -nostdlib -no-pie -T "$here/probe.ld" "$tmp/start.o" "$tmp/blk.o" -o "$tmp/probe.elf"
objcopy -O binary "$tmp/probe.elf" "$out"
