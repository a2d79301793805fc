#!/bin/busybox sh
# /init of the Linux integration tests (configs/test-linux-*.toml). Prints
# machine-checkable `BULKHEAD-TEST ...` lines, in this order, then powers
# the VM off: CPUs online, CPUs in /proc/cpuinfo, a timed `sleep 1`, a busy
# loop on every CPU, the IPI counters, `done`.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

cpus=$(nproc)
echo "BULKHEAD-TEST cpus=$cpus"
echo "BULKHEAD-TEST cpuinfo=$(grep -c '^processor' /proc/cpuinfo)"

# The virtual timer: sleep must end, and take about one second of wall time.
start=$(date +%s)
sleep 1
end=$(date +%s)
slept=$((end - start))
if [ "$slept" -ge 1 ] && [ "$slept" -le 5 ]; then
    echo "BULKHEAD-TEST sleep-ok ($slept s)"
else
    echo "BULKHEAD-TEST sleep-wrong: date advanced $slept s over sleep 1"
fi

# One busy loop per CPU, each pinned to its CPU: the scheduler has to use
# every vCPU, and `wait` needs the children's exits signalled across CPUs.
i=0
while [ "$i" -lt "$cpus" ]; do
    taskset -c "$i" sh -c '
        n=0
        while [ "$n" -lt 200000 ]; do n=$((n + 1)); done
        echo "$n" > /tmp/worker-$1' sh "$i" &
    i=$((i + 1))
done
wait
ok=0
i=0
while [ "$i" -lt "$cpus" ]; do
    [ "$(cat /tmp/worker-$i 2>/dev/null)" = 200000 ] && ok=$((ok + 1))
    i=$((i + 1))
done
if [ "$ok" -eq "$cpus" ]; then
    echo "BULKHEAD-TEST workload-ok ($ok workers)"
else
    echo "BULKHEAD-TEST workload-wrong: $ok of $cpus workers finished"
fi

# Rescheduling IPIs (IPI0 on arm64) per CPU.
grep -E 'IPI0|Rescheduling' /proc/interrupts | while read -r line; do
    echo "BULKHEAD-TEST ipi $line"
done

echo "BULKHEAD-TEST done"
poweroff -f
