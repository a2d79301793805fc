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

# Shared disks and NICs (virtio-mmio): Debian's modules, if the image
# carries them. `bulkhead.ip=ADDR/PREFIX` on the command line configures
# eth0 (there is no DHCP server behind Bulkhead's switches).
for m in virtio virtio_ring virtio_mmio virtio_blk failover net_failover virtio_net; do
    [ -e /lib/modules/$(uname -r)/$m.ko ] && insmod /lib/modules/$(uname -r)/$m.ko
done
for word in $(cat /proc/cmdline); do
    case $word in
        bulkhead.ip=*)
            for i in $(seq 20); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
            ip link set lo up
            ip link set eth0 up && ip addr add ${word#bulkhead.ip=} dev eth0 ;;
    esac
done

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
