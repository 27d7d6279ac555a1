#!/bin/sh
# virtio-balloon: the driver binds; after the guest touched ~350 MiB (tmpfs fill, then freed),
# inflating the balloon by half of guest RAM (256 of 512 MiB) through the control FIFO lowers
# the VMM's VmRSS by at least a third of guest RAM (171 MiB).
FIFO=/tmp/virtio-balloon.fifo
LOG=/tmp/virtio-balloon.log
rm -f $FIFO
SCRIPT='ls /sys/bus/virtio/drivers/virtio_balloon/ | grep virtio; mkdir -p /mnt/t; mount -t tmpfs -o size=400m tmpfs /mnt/t; dd if=/dev/zero of=/mnt/t/f bs=1M count=350 2>/dev/null; rm /mnt/t/f; umount /mnt/t; echo TOUCHED; i=0; while [ $i -lt 40 ]; do sleep 1; i=$((i+1)); [ -e /tmp/stop ] && break; done; grep MemTotal /proc/meminfo'
B64=$(printf '%s' "$SCRIPT" | base64 | tr -d '\n')
timeout 90 vireo run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 512M \
	--cmdline "console=ttyS0 panic=-1 quiet vireo.script=b64:$B64" --balloon size=0,stats=on,deflate-on-oom=on,control=$FIFO >$LOG 2>&1 &
PID=$!
rss() { VPID=$(pidof vireo | awk '{print $1}'); grep VmRSS /proc/$VPID/status | awk '{print $2}'; }
n=0; while ! grep -q TOUCHED $LOG; do sleep 1; n=$((n+1)); [ $n -gt 60 ] && { echo "FAIL: guest never reported TOUCHED"; tail -n 20 $LOG; kill $PID; exit 1; }; done
sleep 1
before=$(rss)
echo "VmRSS before inflation: $before kB"
echo 256 >$FIFO
best=$before
n=0; while [ $n -lt 30 ]; do sleep 1; n=$((n+1)); now=$(rss); [ -n "$now" ] && [ "$now" -lt "$best" ] && best=$now; [ $((before - best)) -ge 240000 ] && break; done
echo "VmRSS after inflation: $best kB (dropped $(( (before - best) / 1024 )) MiB)"
echo stats >$FIFO
sleep 3
kill $PID 2>/dev/null; wait $PID
grep -E 'virtio|balloon|TOUCHED|vireo:' $LOG | tail -n 10
grep -q 'virtio' $LOG || { echo "FAIL: virtio_balloon did not bind"; exit 1; }
drop=$((before - best))
[ $drop -ge 174763 ] || { echo "FAIL: VmRSS dropped by only $drop kB (need >= 174763 kB, a third of 512 MiB)"; exit 1; }
echo "PASS virtio-balloon: driver bound, inflating 256 MiB dropped VmRSS by $((drop / 1024)) MiB"
