#!/bin/busybox sh
# /init of configs/linux-shell.toml: an interactive busybox shell on the
# console. Leaving the shell powers the VM off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

echo
echo "Bulkhead Linux guest: $(uname -sr) on $(nproc) CPU(s), $(grep MemTotal /proc/meminfo | tr -s ' ')"
echo "busybox shell; 'exit' powers this VM off."
# A session with the console as its controlling terminal, so Ctrl-C works.
setsid cttyhack sh
poweroff -f
