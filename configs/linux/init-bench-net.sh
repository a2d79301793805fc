#!/bin/busybox sh
# /init of configs/bench-net.toml. With a NIC (under Bulkhead) the VM with
# MAC ...:0a serves 32 MiB over HTTP at 10.0.2.1 and the one with ...:0b
# fetches it and pings it; without one (natively) the VM does both over
# its loopback interface, its MTU set to Ethernet's 1500 bytes (it is 64
# KiB by default, 40 times fewer packets). Under `-icount shift=0` the clock counts
# instructions, so the figures are in virtual time: MiB/s, and the ping
# round trip in instructions (ns).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio failover net_failover virtio_net; do
    insmod /lib/modules/$(uname -r)/$m.ko 2>/dev/null
done
ip link set lo up
for i in $(seq 20); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
mkdir -p /www
dd if=/dev/zero of=/www/blob bs=1M count=32 2>/dev/null
now() {
    set -- $(grep -m1 '^now at' /proc/timer_list)
    echo $(($3 / 1000))
}
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    case $(cat /sys/class/net/eth0/address) in
        *:0a) ip addr add 10.0.2.1/24 dev eth0
              httpd -p 8080 -h /www
              # Serve until b says it is done.
              nc -l -p 5001 > /dev/null
              poweroff -f ;;
        *) ip addr add 10.0.2.2/24 dev eth0; server=10.0.2.1 ;;
    esac
else
    # Loopback with Ethernet's MTU, so both sides move the same packets.
    ip link set lo mtu 1500
    httpd -p 8080 -h /www
    server=127.0.0.1
fi
for i in $(seq 60); do ping -c 1 -W 1 $server >/dev/null 2>&1 && break; done
for i in $(seq 30); do wget -q -O /dev/null http://$server:8080/blob && break; sleep 1; done
t0=$(now)
wget -q -O /dev/null http://$server:8080/blob || echo "BENCH-FAIL wget"
t1=$(now)
milli=$((32 * 1000000000 / (t1 - t0)))
printf 'BENCH virtio_net_vm_to_vm MiB/s %d.%03d\n' $((milli / 1000)) $((milli % 1000))
# "round-trip min/avg/max = 0.123/0.456/0.789 ms": the average, in
# instructions (1 ns each).
rtt=$(ping -c 20 -i 0.01 $server 2>/dev/null | awk -F/ '/round-trip/ { printf "%d", $4 * 1000000 }')
[ -n "$rtt" ] || echo "BENCH-FAIL ping"
echo "BENCH virtio_net_rtt instructions $rtt"
[ $server = 127.0.0.1 ] || { echo done | nc $server 5001; }
poweroff -f
