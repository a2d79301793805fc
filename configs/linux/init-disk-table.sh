#!/bin/busybox sh
# /init of configs/test-disk-table.toml: a Linux VM on a slice of a shared
# disk whose place only the disk's own partition table gives (or, for
# squatter, an offset and size). Prints the slice's size, writes a pattern
# over the whole of it and reads it back with O_DIRECT (the data really
# goes to the disk and comes back from it, not the page cache), and
# powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio virtio_blk; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "DISK FAIL: insmod $m"
done
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] || { echo "DISK FAIL: no /dev/vda"; poweroff -f; }
sectors=$(cat /sys/block/vda/size)
tag="BULKHEAD-TEST $(cat /sys/block/vda/serial)"
echo "$tag: vda $sectors sectors"
mb=$((sectors / 2048))
dd if=/dev/urandom of=/tmp/pattern bs=1M count=$mb 2>/dev/null
dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null || echo "DISK FAIL: write"
want=$(sha256sum < /tmp/pattern | cut -c1-16)
echo "$tag: pattern sha256 $want"
got=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
[ "$want" = "$got" ] && echo "$tag: pattern of $mb MiB read back" || echo "DISK FAIL: pattern $got != $want"
poweroff -f
