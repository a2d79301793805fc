#!/bin/busybox sh
# Stress test: every CPU busy, memory churned, for 8 seconds, while the
# safety VM beside us runs its 1 ms control task; then power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "BULKHEAD-TEST stress start cpus=$(nproc)"
end=$(( $(date +%s) + 8 ))
for i in $(seq $(nproc)); do
    ( while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done ) &
done
( while [ $(date +%s) -lt $end ]; do dd if=/dev/zero of=/tmp/churn bs=1M count=32 2>/dev/null; rm -f /tmp/churn; done ) &
wait
echo "BULKHEAD-TEST stress done"
poweroff -f
