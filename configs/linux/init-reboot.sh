#!/bin/busybox sh
# /init of configs/test-linux-reboot.toml: reboots once, then powers off.
# Memory does not survive a VM restart, so the boot is told apart by the
# command line: Bulkhead appends `bulkhead.restarts=<n>` on every (re)boot.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc

echo "BULKHEAD-TEST boot"
if grep -qE '(^| )bulkhead\.restarts=0( |$)' /proc/cmdline; then
    echo "BULKHEAD-TEST rebooting"
    reboot -f
else
    echo "BULKHEAD-TEST second boot"
    poweroff -f
fi
