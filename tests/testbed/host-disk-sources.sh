#!/bin/sh
# Every way a daemon VM's disk can come from, read and written by Debian's stock kernel:
# store images in qcow2 (thin, thick, eager-zeroed) and raw, imported VMDK and VHD (written by
# qemu-img), a template's linked clone, and files given by path (qcow2 and raw, formats left to
# the daemon's detection). One VM has them all (ids are the disks' serials). The guest checks
# each disk's virtual size and first MiB (zeros, or the data qemu-io put there; never the
# container's header), reads zeros at 8 MiB, writes 1 MiB of 0xab there with fsync and reads it
# back. After the VM stops, qemu-img check passes on every qcow2 file, qemu-io finds 0xab at
# 8 MiB in every image, and the template's base image compares equal to before.
. /root/tests/lib.sh
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || fail "qemu-img/qemu-io missing in L1 (testbed.sh --with-qemu-img)"
start_daemon hd
S=/tmp/hd-src; rm -rf $S; mkdir -p $S
M=32M
md5of() { dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\0' "\\$1" | md5sum | cut -c1-32; }
ZERO=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum | cut -c1-32)
P11=$(md5of 021)   # 0x11: what qemu-io writes into the VMDK and VHD before import
P22=$(md5of 042)   # 0x22: the template's base image

vireo image create thin --size $M >/dev/null || fail "image create thin"
vireo image create thick --size $M --provisioning thick >/dev/null || fail "image create thick"
vireo image create eager --size $M --provisioning eager-zeroed >/dev/null || fail "image create eager"
vireo image create rawimg --size $M --format raw >/dev/null || fail "image create raw"
qemu-img create -q -f vmdk $S/src.vmdk $M && qemu-io -f vmdk -c 'write -P 0x11 0 1M' $S/src.vmdk >/dev/null || fail "qemu-img vmdk"
qemu-img create -q -f vpc -o subformat=dynamic $S/src.vhd $M && qemu-io -f vpc -c 'write -P 0x11 0 1M' $S/src.vhd >/dev/null || fail "qemu-img vhd"
vireo image import vmdkimg $S/src.vmdk >/tmp/hd-import1.log 2>&1 || { cat /tmp/hd-import1.log; fail "import vmdk"; }
vireo image import vhdimg $S/src.vhd >/tmp/hd-import2.log 2>&1 || { cat /tmp/hd-import2.log; fail "import vhd"; }
vireo image create base --size $M >/dev/null || fail "image create base"
qemu-io -f qcow2 -c 'write -P 0x22 0 1M' /tmp/hd-data/images/base.qcow2 >/dev/null || fail "qemu-io base"
cp /tmp/hd-data/images/base.qcow2 $S/base-before.qcow2
vireo template create t --kernel $KERNEL_BZ --initrd $INITRD --base-image base >/dev/null || fail "template create"
qemu-img create -q -f qcow2 $S/bypath.qcow2 $M || fail "qemu-img bypath"
dd if=/dev/zero of=$S/bypath.raw bs=1M count=0 seek=32 2>/dev/null
pass "sources made: store qcow2 thin/thick/eager-zeroed and raw, VMDK and VHD imports, template base, files by path"

# The guest: per disk, its serial and size, the md5 of its first MiB and of the MiB at 8 MiB,
# then 1 MiB of 0xab written at 8 MiB (fsync) and read back past the page cache.
G='for s in /sys/block/vd*; do d=${s##*/}; n=$(cat $s/serial); h=$(dd if=/dev/$d bs=1M count=1 2>/dev/null|md5sum|cut -c1-32); z=$(dd if=/dev/$d bs=1M skip=8 count=1 2>/dev/null|md5sum|cut -c1-32); dd if=/dev/zero bs=1M count=1 2>/dev/null|tr "\0" "\253"|dd of=/dev/$d bs=1M seek=8 conv=fsync 2>/dev/null; w=$?; echo 3 >/proc/sys/vm/drop_caches; r=$(dd if=/dev/$d bs=1M skip=8 count=1 2>/dev/null|md5sum|cut -c1-32); echo "DISK $n $(cat $s/size) $h $z $w $r"; done; sync'
vireo vm create dv --from-template t --memory 256M --cmdline "$BASE_CMDLINE vireo.script=b64:$(b64 "$G")" \
	--disk image=thin,id=thin --disk image=thick,id=thick --disk image=eager,id=eager --disk image=rawimg,id=rawimg \
	--disk image=vmdkimg,id=vmdk --disk image=vhdimg,id=vhd --disk $S/bypath.qcow2,id=bypathq --disk $S/bypath.raw,id=bypathr \
	>/tmp/hd-create.log 2>&1 || { cat /tmp/hd-create.log; fail "vm create"; }
vireo vm show dv > /tmp/hd-show.log
expect_line /tmp/hd-show.log 'disk disk0: .*/vms/dv/disk.qcow2 \(qcow2'
expect_line /tmp/hd-show.log 'disk bypathq: .*bypath.qcow2 \(qcow2'
expect_line /tmp/hd-show.log 'disk bypathr: .*bypath.raw \(raw'
expect_line /tmp/hd-show.log 'disk rawimg: .*rawimg.raw \(raw'
pass "every disk has its format recorded (detected for the files given by path)"
vireo vm start dv >/tmp/hd-start.log 2>&1 || { cat /tmp/hd-start.log; fail "vm start"; }
# What the VMM runs is what the daemon stored.
vireo vm config dv --running > /tmp/hd-running.json 2>/tmp/hd-config.err || { cat /tmp/hd-config.err; fail "vm config --running: the VMM does not run what the daemon stored"; }
tr -d ' \n' < /tmp/hd-running.json | grep -q '"format":"qcow2","id":"vmdk"' || { head -c 600 /tmp/hd-running.json; fail "the VMM does not report the vmdk import as qcow2"; }
pass "the VMM runs the stored configuration (vireo vm config --running, in sync)"
n=0
until vireo vm show dv 2>/dev/null | grep -Eq '^ *state: +(stopped|failed)'; do
	n=$((n + 1)); [ $n -lt 150 ] || { vireo vm logs dv | tail -20; fail "the guest did not finish and reboot"; }
	sleep 1
done
vireo vm logs dv | tr -d '\r' > /tmp/hd-console.log
vireo vm show dv | grep -Eq '^ *state: +stopped' || { vireo vm show dv; tail -20 /tmp/hd-console.log; fail "the VM failed"; }
grep '^DISK' /tmp/hd-console.log
AB=$(md5of 253)
check_disk() { # ID SECTORS FIRST_MIB_MD5
	line=$(grep "^DISK $1 " /tmp/hd-console.log) || fail "the guest has no disk with serial $1"
	set -- $line "$2" "$3"
	[ "$3" = "$8" ] || fail "disk $2: the guest sees $3 sectors, want $8 (the virtual size, not the file's)"
	[ "$4" = "$9" ] || fail "disk $2: the first MiB reads $4, want ${10} (zeros or the imported data, never the image header), want $9"
	[ "$5" = "$ZERO" ] || fail "disk $2: the MiB at 8 MiB is not zeros before the write"
	[ "$6" = 0 ] && [ "$7" = "$AB" ] || fail "disk $2: the write of 0xab at 8 MiB failed or did not read back ($6 $7)"
}
for id in thin thick eager rawimg bypathq bypathr; do check_disk $id 65536 $ZERO; done
check_disk vmdk 65536 $P11
check_disk vhd "$(grep '^DISK vhd ' /tmp/hd-console.log | cut -d' ' -f3)" $P11
check_disk disk0 65536 $P22
pass "the guest saw each disk's virtual size and contents, read zeros, wrote and read back 0xab at 8 MiB"

verify() { # FORMAT FILE
	out=$(qemu-io -f $1 -r -c 'read -P 0xab 8M 1M' $2 2>&1)
	case $out in *"Pattern verification failed"*|*rror*) fail "$2 does not hold the guest's 0xab at 8 MiB: $out" ;; esac
	echo "$out" | grep -q 'read 1048576/1048576 bytes' || fail "qemu-io could not read $2: $out"
	if [ $1 = qcow2 ]; then qemu-img check -q $2 || fail "qemu-img check $2 reports errors"; fi
}
D=/tmp/hd-data/images
for f in thin thick eager vmdkimg vhdimg; do verify qcow2 $D/$f.qcow2; done
verify raw $D/rawimg.raw
verify qcow2 $S/bypath.qcow2
verify raw $S/bypath.raw
verify qcow2 /tmp/hd-data/vms/dv/disk.qcow2
qemu-io -f qcow2 -r -c 'read -P 0x22 0 1M' /tmp/hd-data/vms/dv/disk.qcow2 | grep -q 'Pattern verification failed' && fail "the clone does not read the base through"
qemu-img compare -q $S/base-before.qcow2 $D/base.qcow2 || fail "the template's base image changed under its linked clone"
pass "qemu-img check clean, every image holds what the guest wrote, the linked clone's base is unchanged"
