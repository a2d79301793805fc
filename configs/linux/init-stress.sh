#!/bin/busybox sh
# Stress test: every CPU busy, memory churned, for 8 seconds, while the
# safety VM beside us runs its 1 ms control task; then power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "BULKHEAD-TEST stress start cpus=$(nproc)"
end=$(( $(date +%s) + 8 ))
for i in $(seq $(nproc)); do
    ( while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done ) &
done
( while [ $(date +%s) -lt $end ]; do dd if=/dev/zero of=/tmp/churn bs=1M count=32 2>/dev/null; rm -f /tmp/churn; done ) &
# An interrupt storm from a device: with a channel to the safety VM, keep
# ringing it; every request raises the safety VM's doorbell and every
# reply raises ours.
if [ -x /bin/bulkhead-chan ]; then
    for m in uio uio_pci_generic; do
        insmod /lib/modules/$(uname -r)/$m.ko
    done
    ( while [ $(date +%s) -lt $end ]; do bulkhead-chan bench 200 >/dev/null || break; done ) &
fi
wait
if [ -x /bin/bulkhead-chan ]; then
    echo "BULKHEAD-TEST doorbell interrupts: $(grep uio_pci_generic /proc/interrupts | awk '{s=0; for (i=2; i<=NF; i++) if ($i ~ /^[0-9]+$/) s+=$i; print s}')"
    bulkhead-chan info
fi
echo "BULKHEAD-TEST stress done"
poweroff -f
