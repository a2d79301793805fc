#!/bin/busybox sh
# /init of configs/test-sched.toml: three of these VMs share a pool of two
# pCPUs. Every vCPU runs a CPU-bound loop for BUSY seconds, then the VM
# waits IDLE seconds doing nothing and powers off. The test reads the
# hypervisor's `sched` table twice in each phase: the busy VMs' shares of
# CPU time must follow their weights, the idle ones must cost under 1%.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
BUSY=14
IDLE=12
echo "BULKHEAD-TEST busy-start cpus=$(nproc)"
end=$(( $(date +%s) + BUSY ))
for i in $(seq $(nproc)); do
    ( while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done ) &
done
wait
echo "BULKHEAD-TEST busy-done"
sleep $IDLE
echo "BULKHEAD-TEST idle-done"
poweroff -f
