#!/bin/busybox sh
# /init of configs/linux-shell.toml: an interactive busybox shell on the
# console. Leaving the shell powers the VM off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Channels to other VMs: the stock UIO driver, if the image carries it.
if [ -x /bin/bulkhead-chan ]; then
    for m in uio uio_pci_generic; do
        insmod /lib/modules/$(uname -r)/$m.ko
    done
fi

# How often Bulkhead has restarted this VM: a big-endian u32 in the
# device tree (the command line stays what the config says).
set -- $(od -An -tu1 /proc/device-tree/chosen/bulkhead,restarts)
restarts=$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))

echo
echo "Bulkhead Linux guest: $(uname -sr) on $(nproc) CPU(s), $(grep MemTotal /proc/meminfo | tr -s ' '), restart $restarts"
echo "busybox shell; 'exit' powers this VM off."
[ -x /bin/bulkhead-chan ] && echo "channel to the safety VM: try 'bulkhead-chan ping hello'"
# A session with the console as its controlling terminal, so Ctrl-C works.
setsid cttyhack sh
poweroff -f
