#!/bin/busybox sh
# /init of configs/test-disk.toml: a Linux VM on a slice of a shared disk
# (virtio-mmio + virtio-blk, Debian's own modules).
#   store: first boot makes an ext4 filesystem with Debian's e2fsprogs
#          (/sbin/mkfs.ext4 and /sbin/dumpe2fs with their libraries, which
#          xtask puts into this initramfs, xtask/debian.lock), checks it has
#          a journal and extents, writes files and their checksums, syncs
#          and reboots (reboot -f); the second boot remounts and verifies
#          them.
#   other: writes a pattern over its whole slice and checks it, reads past
#          the slice's end, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio virtio_blk; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "DISK FAIL: insmod $m"
done
set -- $(od -An -tu1 /proc/device-tree/chosen/bulkhead,restarts)
restarts=$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))
name=$(hostname)
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] || { echo "DISK FAIL: no /dev/vda"; poweroff -f; }
sectors=$(cat /sys/block/vda/size)
serial=$(cat /sys/block/vda/serial)
tag="BULKHEAD-TEST $serial"
echo "$tag: vda $sectors sectors, boot $restarts"

if [ "$serial" = store-root ]; then
    if [ "$restarts" = 0 ]; then
        # Full paths: busybox's own mke2fs (ext2 only) is in /bin.
        /sbin/mkfs.ext4 -q -F /dev/vda || echo "DISK FAIL: mkfs.ext4"
        # "mke2fs 1.47.0 (5-Feb-2023)" on stderr.
        version=$(/sbin/mkfs.ext4 -V 2>&1 | sed -n '1s/^mke2fs \([^ ]*\).*/\1/p')
        features=$(/sbin/dumpe2fs -h /dev/vda 2>/dev/null | sed -n 's/^Filesystem features: *//p')
        missing=
        for f in has_journal extent; do
            case " $features " in *" $f "*) ;; *) missing="$missing $f" ;; esac
        done
        if [ -n "$version" ] && [ -n "$features" ] && [ -z "$missing" ]; then
            echo "$tag: ext4 made by e2fsprogs $version, features: $features"
        else
            echo "DISK FAIL: not ext4 (e2fsprogs '$version', features '$features', missing:$missing)"
        fi
        mkdir -p /mnt
        mount -t ext4 /dev/vda /mnt || echo "DISK FAIL: mount"
        for i in 1 2 3 4; do
            dd if=/dev/urandom of=/mnt/file$i bs=64k count=$((i * 8)) 2>/dev/null
        done
        (cd /mnt && sha256sum file* > SUMS)
        echo "$tag: sums $(sha256sum < /mnt/SUMS | cut -c1-16)"
        sync
        umount /mnt || echo "DISK FAIL: umount"
        echo "$tag: written, rebooting"
        reboot -f
    fi
    mkdir -p /mnt
    mount -t ext4 /dev/vda /mnt || echo "DISK FAIL: mount after reboot"
    echo "$tag: sums $(sha256sum < /mnt/SUMS | cut -c1-16) after reboot"
    if (cd /mnt && sha256sum -c SUMS >/dev/null); then
        echo "$tag: files verified after reboot"
    else
        echo "DISK FAIL: checksums differ after reboot"
    fi
    umount /mnt
    poweroff -f
fi

# other: the whole slice, written and read back with O_DIRECT (the data
# really goes to the disk and comes back from it, not the page cache).
mb=$((sectors / 2048))
dd if=/dev/urandom of=/tmp/pattern bs=1M count=$mb 2>/dev/null
dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null || echo "DISK FAIL: write"
want=$(sha256sum < /tmp/pattern | cut -c1-16)
echo "$tag: pattern sha256 $want"
got=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
[ "$want" = "$got" ] && echo "$tag: pattern of $mb MiB read back" || echo "DISK FAIL: pattern $got != $want"
# Linux itself stops at the capacity the device reports: a read past the
# end returns nothing, and the device never sees it.
past=$(dd if=/dev/vda bs=512 skip=$sectors count=1 2>/dev/null | wc -c)
echo "$tag: read past the end gave $past bytes"
# Discard and write-zeroes, which the slice offers because the physical
# disk does. 1 MiB at 2 MiB is discarded (what it reads afterwards is the
# disk's choice), then 2 MiB at 1 MiB, over it, made zeroes (BLKZEROOUT,
# one request): that reads back as zeroes with the rest of the pattern
# intact, and the host checks the image holds the same. The shell's `info
# other` then shows both reached the device (Linux would quietly write
# zero pages if the request failed).
echo "$tag: discard up to $(cat /sys/block/vda/queue/discard_max_bytes) bytes, write-zeroes up to $(cat /sys/block/vda/queue/write_zeroes_max_bytes)"
blkdiscard -o 2097152 -l 1048576 /dev/vda && echo "$tag: 1 MiB at 2 MiB discarded" || echo "DISK FAIL: blkdiscard"
bulkhead-io zeroout /dev/vda 1048576 2097152 || echo "DISK FAIL: zeroout"
dd if=/dev/zero of=/tmp/pattern bs=1M seek=1 count=2 conv=notrunc 2>/dev/null
want=$(sha256sum < /tmp/pattern | cut -c1-16)
got=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
[ "$want" = "$got" ] && echo "$tag: 2 MiB at 1 MiB zeroed, the rest intact" || echo "DISK FAIL: after zeroout $got != $want"
# What the image must now hold (the host's check takes the last one).
echo "$tag: pattern sha256 $want"
# Time for the shell's `info other` while this VM still runs.
sleep 3
poweroff -f
