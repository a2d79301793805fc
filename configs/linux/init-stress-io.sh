#!/bin/busybox sh
# I/O stress beside the safety VM (configs/test-safety-io.toml): for 8
# seconds, O_DIRECT writes and reads on the shared disk's slice and pings
# to the host behind the uplink (10.0.2.254); then the counts, and power
# off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio virtio_blk failover net_failover virtio_net; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "STRESS FAIL: insmod $m"
done
for i in $(seq 50); do [ -b /dev/vda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set eth0 up
ip addr add 10.0.2.1/24 dev eth0
echo "BULKHEAD-TEST io stress start"
end=$(( $(date +%s) + 8 ))
( while [ $(date +%s) -lt $end ]; do
    dd if=/dev/urandom of=/dev/vda bs=1M count=8 oflag=direct 2>/dev/null
    dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
done ) &
( while [ $(date +%s) -lt $end ]; do ping -c 10 -W 1 10.0.2.254 > /dev/null; done ) &
wait
set -- $(cat /sys/block/vda/stat)
echo "BULKHEAD-TEST io stress done: $1 disk reads, $5 disk writes, $(grep eth0 /proc/net/dev | awk '{print $3}') frames in"
poweroff -f
