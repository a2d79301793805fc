#!/bin/busybox sh
# /init of configs/test-linux-reboot.toml: reboots once, then powers off.
# Memory does not survive a VM restart, so the boot is told apart by the
# restart count Bulkhead puts in the device tree: /chosen/bulkhead,restarts,
# a big-endian u32. The command line is the config's, word for word.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys

set -- $(od -An -tu1 /proc/device-tree/chosen/bulkhead,restarts)
restarts=$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))
echo "BULKHEAD-TEST boot restarts=$restarts cmdline=[$(cat /proc/cmdline)]"
if [ "$restarts" = 0 ]; then
    echo "BULKHEAD-TEST rebooting"
    reboot -f
else
    echo "BULKHEAD-TEST second boot"
    poweroff -f
fi
