#!/bin/busybox sh
# Passthrough test: the PL031 RTC is this VM's alone. Linux's stock driver
# must find it, read the time, and take its alarm interrupt.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "BULKHEAD-TEST rtc=$(cat /sys/class/rtc/rtc0/name 2>/dev/null || echo none)"
if hwclock -r >/dev/null 2>&1; then echo "BULKHEAD-TEST hwclock-ok"; else echo "BULKHEAD-TEST hwclock-wrong"; fi
echo +2 > /sys/class/rtc/rtc0/wakealarm
sleep 4
# Sum the per-CPU count columns of the RTC's line.
n=$(grep -i pl031 /proc/interrupts | awk -v cpus="$(nproc)" '{ s = 0; for (i = 2; i <= cpus + 1; i++) s += $i; print s; exit }')
echo "BULKHEAD-TEST rtc-alarm-interrupts=${n:-0}"
echo "BULKHEAD-TEST done"
poweroff -f
