#!/bin/busybox sh
# /init of configs/test-migrate-linux-{a,b}.toml (xtask/src/migtest.rs):
# the Linux VM that is migrated from machine A to machine B and back.
#   A: makes ext4 on its disk (Debian's mkfs.ext4), then counts to 3000,
#      one count every 10 ms: each is printed ("MIGCOUNT n end") and appended
#      to /mnt/seq, and every 25th is followed by a sync, so the disk is
#      busy while the VM moves. At the end the file system is unmounted,
#      mounted again and the file compared with the counts it should hold.
#   B (migtest.role=target): touches nothing, since the disk is A's, and
#      waits for the test to stop it and migrate A's VM into it.
#   migtest.role=idle (configs/bench-migrate-idle-*.toml): says so after
#      5 s and does nothing more.
#   migtest.role=busy (configs/bench-migrate-busy-*.toml): rewrites 64 MiB
#      of its memory without end.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
case " $(cat /proc/cmdline) " in
*" migtest.role=idle "*)
    # configs/bench-migrate-idle-a.toml: an idle VM for `cargo xtask
    # bench` to move; the pause gives the other machine time to wait.
    sleep 5
    echo "MIGTEST idle"
    while :; do sleep 1000; done
    ;;
*" migtest.role=busy "*)
    # configs/bench-migrate-busy-a.toml: a memory-busy VM. A 1 MiB pattern
    # is written over the 64 MiB of a tmpfs file, one MiB at a time, again
    # and again: 16,384 pages rewritten per pass, as fast as the vCPU can.
    mkdir -p /dev/shm /tmp
    mount -t tmpfs -o size=80m tmpfs /dev/shm
    yes 0123456789abcdef | head -c 1048576 > /tmp/pattern
    sleep 5
    echo "MIGTEST busy"
    pass=0
    while :; do
        for i in $(seq 0 63); do
            dd if=/tmp/pattern of=/dev/shm/busy bs=1M seek=$i count=1 conv=notrunc 2>/dev/null
        done
        pass=$((pass + 1))
        echo "MIGTEST busy pass $pass"
    done
    ;;
*" migtest.role=target "*)
    echo "MIGTEST target: waiting"
    while :; do sleep 1000; done
    ;;
esac
for m in virtio virtio_ring virtio_mmio virtio_blk; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "MIGTEST FAIL: insmod $m"
done
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] || { echo "MIGTEST FAIL: no /dev/vda"; poweroff -f; }
/sbin/mkfs.ext4 -q -F /dev/vda || echo "MIGTEST FAIL: mkfs.ext4"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || echo "MIGTEST FAIL: mount"
n=3000
echo "MIGTEST counting to $n"
i=0
while [ $i -lt $n ]; do
    i=$((i + 1))
    echo "MIGCOUNT $i end"
    echo $i >> /mnt/seq
    [ $((i % 25)) = 0 ] && sync
    usleep 10000
done
umount /mnt || echo "MIGTEST FAIL: umount"
mount -t ext4 /dev/vda /mnt || echo "MIGTEST FAIL: mount again"
if seq $n | cmp -s - /mnt/seq; then
    echo "MIGTEST file holds 1..$n ($(wc -l < /mnt/seq) lines)"
else
    echo "MIGTEST FAIL: /mnt/seq holds $(wc -l < /mnt/seq) lines, not 1..$n"
fi
umount /mnt
poweroff -f
