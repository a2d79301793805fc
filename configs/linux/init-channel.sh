#!/bin/busybox sh
# /init of configs/test-channel.toml: load the stock UIO driver, then talk
# to the safety VM over the channel with bulkhead-chan, and power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in uio uio_pci_generic; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "CHANNEL FAIL: insmod $m"
done
echo "pci devices: $(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device 2>/dev/null | tr '\n' ' ')"
bulkhead-chan info
for i in 1 2 3; do
    bulkhead-chan ping "hello $i from linux" || echo "CHANNEL FAIL: ping $i"
done
if grep -q bench.channel /proc/cmdline; then
    bulkhead-chan bench 50
fi
cat /proc/interrupts | grep -i uio
echo "CHANNEL DONE"
poweroff -f
