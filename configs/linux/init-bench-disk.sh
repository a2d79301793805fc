#!/bin/busybox sh
# /init of configs/bench-disk.toml: virtio-blk throughput with dd,
# O_DIRECT so every block goes to the device, timed with the kernel's
# monotonic clock (the "now at N nsecs" of /proc/timer_list). The
# benchmark runs this in host time, not under -icount (see
# xtask/src/bench.rs, disk_bench): MiB (or requests) per second.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio virtio_blk; do
    insmod /lib/modules/$(uname -r)/$m.ko 2>/dev/null
done
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
# Microseconds of the kernel's monotonic clock ("now at N nsecs").
now() {
    set -- $(grep -m1 '^now at' /proc/timer_list)
    echo $(($3 / 1000))
}
# Prints "BENCH <name> <unit> <value>" with three decimals: $2 units of
# work in $3 microseconds, per second.
rate() {
    milli=$(($2 * 1000000000 / $3))
    printf 'BENCH %s %s %d.%03d\n' "$1" "$4" $((milli / 1000)) $((milli % 1000))
}
t0=$(now)
dd if=/dev/zero of=/dev/vda bs=1M count=256 oflag=direct 2>/dev/null || echo "BENCH-FAIL write"
t1=$(now)
rate virtio_blk_write 256 $((t1 - t0)) MiB/s
t0=$(now)
dd if=/dev/vda of=/dev/null bs=1M count=256 iflag=direct 2>/dev/null || echo "BENCH-FAIL read"
t1=$(now)
rate virtio_blk_read 256 $((t1 - t0)) MiB/s
# 4 KiB reads at random offsets, one at a time (/bin/bulkhead-io: the
# same fixed-seed offsets in every run).
bulkhead-io randread /dev/vda 8192 || echo "BENCH-FAIL 4k"
poweroff -f
