#!/bin/busybox sh
# /init of configs/test-migrate-linux-{a,b}.toml (xtask/src/migtest.rs):
# the Linux VM that is migrated from machine A to machine B and back.
#   A: makes ext4 on its disk (Debian's mkfs.ext4), opens one TCP session
#      to the host peer's echo server (10.0.2.254 port 7, behind the
#      switch's uplink; the VM is 10.0.2.30), then counts to 3000, one
#      count every 10 ms: each is printed ("MIGCOUNT n end") and appended
#      to /mnt/seq, every 25th is followed by a sync, so the disk is busy
#      while the VM moves, and every 10th is sent down the session. At the
#      end the file system is unmounted, mounted again and the file
#      compared with the counts it should hold, and what the host echoed
#      is compared with what was sent.
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
for m in virtio virtio_ring virtio_mmio virtio_blk failover net_failover virtio_net; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "MIGTEST FAIL: insmod $m"
done
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] || { echo "MIGTEST FAIL: no /dev/vda"; poweroff -f; }
/sbin/mkfs.ext4 -q -F /dev/vda || echo "MIGTEST FAIL: mkfs.ext4"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || echo "MIGTEST FAIL: mount"
n=3000
# The session: nc's input is a fifo this shell holds open on fd 3, its
# output a file. A write to a session that died fails (and says so)
# rather than killing init with SIGPIPE.
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.30/24 dev eth0
for i in $(seq 20); do ping -c 1 -W 1 10.0.2.254 >/dev/null 2>&1 && break; done
trap '' PIPE
mkfifo /tmp/to-host
nc 10.0.2.254 7 < /tmp/to-host > /tmp/from-host &
nc_pid=$!
exec 3> /tmp/to-host
echo "MIGTEST counting to $n"
i=0
while [ $i -lt $n ]; do
    i=$((i + 1))
    echo "MIGCOUNT $i end"
    echo $i >> /mnt/seq
    [ $((i % 25)) = 0 ] && sync
    [ $((i % 10)) = 0 ] && echo "NET $i" >&3
    usleep 10000
done
# The greeting and an echo of every line sent, in order.
{ echo "hello from the host behind the uplink"; seq 10 10 $n | sed 's/^/echo: NET /'; } > /tmp/want
lines=$((n / 10 + 1))
for i in $(seq 100); do [ "$(wc -l < /tmp/from-host)" -ge $lines ] && break; sleep 0.1; done
exec 3>&-
kill $nc_pid 2>/dev/null
if cmp -s /tmp/want /tmp/from-host; then
    echo "MIGTEST session: $((n / 10)) lines echoed in order"
else
    echo "MIGTEST FAIL: session: $(wc -l < /tmp/from-host) of $lines lines back; $(cmp /tmp/want /tmp/from-host 2>&1)"
fi
umount /mnt || echo "MIGTEST FAIL: umount"
mount -t ext4 /dev/vda /mnt || echo "MIGTEST FAIL: mount again"
if seq $n | cmp -s - /mnt/seq; then
    echo "MIGTEST file holds 1..$n ($(wc -l < /mnt/seq) lines)"
else
    echo "MIGTEST FAIL: /mnt/seq holds $(wc -l < /mnt/seq) lines, not 1..$n"
fi
umount /mnt
poweroff -f
