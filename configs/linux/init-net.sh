#!/bin/busybox sh
# /init of configs/test-net.toml: a Linux VM with one virtio-net NIC on
# Bulkhead's switch "lan" (Debian's own virtio_net module). Which VM it is
# comes from its MAC: ...:0a is 10.0.2.1, ...:0b is 10.0.2.2; the host
# behind the uplink is 10.0.2.254.
#   a: pings b, serves 4 MiB of random bytes over HTTP (busybox httpd) and
#      prints their checksum, then talks to the host's echo server through
#      the uplink.
#   b: pings a, fetches the 4 MiB from a (busybox wget, TCP) and prints
#      their checksum.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio virtio_ring virtio_mmio failover net_failover virtio_net; do
    insmod /lib/modules/$(uname -r)/$m.ko || echo "NET FAIL: insmod $m"
done
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
mac=$(cat /sys/class/net/eth0/address)
case $mac in
    *:0a) me=a ip=10.0.2.1 peer=10.0.2.2 ;;
    *:0b) me=b ip=10.0.2.2 peer=10.0.2.1 ;;
    *) echo "NET FAIL: unknown MAC $mac"; poweroff -f ;;
esac
tag="BULKHEAD-TEST $me"
ip link set lo up
ip link set eth0 up
ip addr add $ip/24 dev eth0
echo "$tag: eth0 $mac is $ip"

# The other VM may still be booting: wait for it to answer.
for i in $(seq 60); do ping -c 1 -W 1 $peer >/dev/null 2>&1 && break; done
if ping -c 3 -W 2 $peer > /tmp/ping; then
    echo "$tag: ping $peer: $(grep -o '[0-9]* packets received' /tmp/ping)"
else
    echo "NET FAIL: $me cannot ping $peer"
fi

if [ $me = a ]; then
    mkdir -p /www
    dd if=/dev/urandom of=/www/blob bs=64k count=64 2>/dev/null
    echo "$tag: serving 4194304 bytes, sha256 $(sha256sum < /www/blob | cut -c1-16)"
    httpd -p 8080 -h /www
    # Through the uplink to the host.
    for i in $(seq 20); do ping -c 1 -W 1 10.0.2.254 >/dev/null 2>&1 && break; done
    reply=$( (echo "ping from $me"; sleep 2) | nc 10.0.2.254 7)
    echo "$tag: host said: $(echo "$reply" | tr '\n' '|')"
    # b says when it has the file: a connection to port 5001.
    nc -l -p 5001 > /dev/null
    echo "$tag: b is done"
else
    for i in $(seq 30); do
        wget -q -O /tmp/got http://$peer:8080/blob && break
        sleep 1
    done
    echo "$tag: fetched $(wc -c < /tmp/got) bytes, sha256 $(sha256sum < /tmp/got | cut -c1-16)"
    for i in $(seq 10); do echo done | nc $peer 5001 && break; sleep 1; done
fi
poweroff -f
