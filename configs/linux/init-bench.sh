#!/bin/busybox sh
# /init of configs/bench-linux.toml: prints how long the kernel took to reach
# user space, then powers off. Under `-icount shift=0` with `-cpu max` the
# guest's counter ticks once per instruction, so nanoseconds of uptime are
# instructions executed since the kernel started.
/bin/busybox mount -t proc proc /proc
read -r up idle < /proc/uptime
# "12.34": seconds and hundredths. Leading zeros would make the shell read
# the hundredths as octal, so drop one ("05" -> "5", "00" -> "0").
secs=${up%.*}
hundredths=${up#*.}
hundredths=${hundredths#0}
echo "BENCH linux_boot instructions $((secs * 1000000000 + hundredths * 10000000))"
/bin/busybox poweroff -f
