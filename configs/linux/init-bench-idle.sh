#!/bin/busybox sh
# /init of configs/bench-safety-idle.toml: the channel round trip, then idle
# while the safety VM finishes its run (it powers the board off when both
# VMs have stopped: this VM stops itself after the safety VM is done).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in uio uio_pci_generic; do
    insmod /lib/modules/$(uname -r)/$m.ko
done
bulkhead-chan bench 100
# Idle until the safety VM has stopped (its end reads "peer stopped").
while bulkhead-chan info | grep -q "peer running"; do sleep 1; done
poweroff -f
