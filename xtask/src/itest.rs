//! `cargo xtask test`: host unit tests, cross builds, config rejection
//! cases and the QEMU integration tests.
//!
//! The integration tests are the [`CASES`] table: edit expectations there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::build::{self, Output};
use crate::qemu::{self, CAPTURED_CONSOLE};
use crate::{cargo, target_dir};

/// One QEMU integration test.
pub struct Case {
    pub name: &'static str,
    /// System config, relative to the repository root.
    pub config: &'static str,
    pub timeout_s: u64,
    /// Substrings that must appear in the serial output, in this order (each
    /// searched for after the end of the previous match).
    pub expect: &'static [&'static str],
    /// Substrings that must appear somewhere, in any order (output of
    /// different VMs interleaves differently from run to run).
    pub contains: &'static [&'static str],
    /// Substrings that must not appear anywhere (in addition to [`FORBID`]).
    pub forbid: &'static [&'static str],
    /// QEMU's expected exit status.
    pub exit: i32,
    /// Typed on the console: each `(wait_for, send)` sends `send` once
    /// `wait_for` has appeared.
    pub input: &'static [(&'static str, &'static str)],
    /// More QEMU arguments (e.g. `-icount` for tests whose figures must not
    /// depend on how the host schedules QEMU's threads).
    pub qemu_extra: &'static [&'static str],
    /// Boot through Debian's U-Boot (`booti`) instead of QEMU's `-kernel`.
    pub uboot: bool,
}

/// Where the U-Boot test places the image for `booti` (above where booti
/// moves it, RAM base + text_offset = 0x4020_0000).
const UBOOT_LOAD_ADDR: &str = "0x44000000";

/// Forbidden in every case's output.
pub const FORBID: &[&str] = &["PANIC", "FAIL", "LEAK", "unexpected exception"];

/// Forbidden in the Linux cases: the kernel's own reports of trouble.
const LINUX_FORBID: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "WARNING: CPU",
    "sleep-wrong",
    "workload-wrong",
];

/// Forbidden in the `disk_table` case: the kernel's trouble, and any
/// console output of the VM the hypervisor refuses.
const DISK_TABLE_FORBID: &[&str] = &["Kernel panic", "BUG:", "Oops", "WARNING: CPU", "[claimant]"];

/// What configs/linux/init-test.sh prints with `cpus` vCPUs, tagged by the
/// hypervisor with the VM name `linux`, then the hypervisor's last line.
macro_rules! linux_test_expect {
    ($cpus:literal) => {
        &[
            concat!("[linux] BULKHEAD-TEST cpus=", $cpus),
            concat!("[linux] BULKHEAD-TEST cpuinfo=", $cpus),
            "[linux] BULKHEAD-TEST sleep-ok",
            concat!("[linux] BULKHEAD-TEST workload-ok (", $cpus, " workers)"),
            "[linux] BULKHEAD-TEST ipi IPI0:",
            "[linux] BULKHEAD-TEST done",
            "all VMs stopped, powering off",
        ]
    };
}

/// What the `isolation` cases (pinned and pooled attacker) must print, in
/// order: the attacker is reset through an SMC, attacks, is switched off
/// through an SMC; only then is the victim told to finish, so its verdict
/// covers everything the attacker did.
const ISOLATION_EXPECT: &[&str] = &[
    "victim: 1 vCPU(s)",
    "[attacker] boot 1: dirtying this VM",
    "attacker: restarting (guest called SYSTEM_RESET; restart policy on-crash)",
    "attacker: restart 1: fresh image loaded",
    "[attacker] boot 2: the attack",
    "[attacker] PASS isolation: 225/225 attempts refused",
    "attacker: stopping (guest called SYSTEM_OFF; restart policy on-crash)",
    "attacker: stopped",
    "[victim] end signal received",
    "[victim] own GIC untouched",
    "[victim] RTC alarm interrupt (INTID 34) received",
    "[victim] PASS victim: memory intact",
    "victim: stopped",
    "all VMs stopped, powering off",
];

/// What the `isolation` cases must print somewhere: each class's refusal.
const ISOLATION_CONTAINS: &[&str] = &[
        // smc-reset: only the attacker restarted, completely.
        "[attacker] refused smc-reset: restart loaded a fresh image",
        "[attacker] refused virtio: read into the victim's RAM: status Some(1)",
        "[attacker] refused virtio: a descriptor chain that loops (0 -> 1 -> 0): device status 0x4f",
        "[attacker] refused smc-reset: vGIC back at reset",
        // memory
        "attacker vcpu0: read of IPA 0x50000000 (unmapped) refused: data abort injected",
        "[attacker] refused memory: write victim RAM (host PA 0x50000000) at 0x50000000: synchronous external abort injected by EL2",
        "[attacker] refused memory: read hypervisor image (host PA 0x40200000)",
        "[attacker] refused memory: write physical redistributor of cpu2 (the victim's)",
        "[attacker] refused memory: read PL031 RTC (passed through to the victim) at 0x9010000: synchronous external abort injected by EL2",
        "[attacker] refused fetch: instruction fetch from victim RAM at 0x50000000: instruction abort injected by EL2",
        // mmio the syndrome cannot describe, wrong sizes, unaligned
        "[attacker] refused mmio: load pair (ldp) from the UART",
        "[attacker] refused mmio: pre-index load (ldr w, [x, #4]!) from the GIC distributor",
        "[attacker] refused mmio: 8-byte write of 0 to GICD_CTLR",
        "[attacker] refused mmio: unaligned 32-bit read of the GIC distributor",
        // gic: other VMs' and nobody's interrupts, routes, priorities
        "is the virtual one (IIDR 0x4200043b)",
        "[attacker] refused gic: enable + pend INTID 34",
        "[attacker] refused gic: INTID 200 (no such SPI here, nobody's)",
        "[attacker] refused gic: INTID 40 routed to affinity 0.0.0.5 (vcpu 5), which no vCPU has",
        "[attacker] refused gic: GICD_IPRIORITYR byte of INTID 41 written 0xff: reads completed (value 0xf8)",
        "[attacker] refused gic: read-only GICD_TYPER",
        // sgi
        "[attacker] refused sgi: SGI 7 to Aff1 1 (vcpus 16-31)",
        "[attacker] refused sgi: 4096 SGIs to ourselves",
        "[attacker] refused sgi: after the storm a fresh SGI 9 to ourselves is taken",
        "[attacker] refused sgi: interrupt storm: all 96 SPIs",
        // smccc and hypercalls
        "[attacker] refused smccc: SMC: unknown fast calls of all 64 owning entities, SMC32 and SMC64, random arguments: 128/128",
        "[attacker] refused smccc: HVC: Bulkhead hypercalls 0xc60000xx and 0x860000xx with random arguments: 512/512",
        // psci
        "[attacker] refused psci: CPU_ON(vcpu 1) with entry point in the victim's RAM (0x50000000): -9",
        "[attacker] refused psci: CPU_ON(vcpu 1) with entry point unaligned",
        "[attacker] refused psci: CPU_ON of the calling vCPU, which is on: -4",
        "[attacker] refused psci: CPU_ON of MPIDR 0x2, which no vCPU has: -2",
        "[attacker] refused psci: CPU_ON in a tight loop: 32 starts of vcpu 1",
        // sysreg: EL2, set/way, IMPLEMENTATION DEFINED, debug, PMU
        "[attacker] refused sysreg: write HCR_EL2: undefined instruction",
        "[attacker] refused sysreg: DC ISW (set/way invalidate): undefined instruction (EC 0x0), injected by EL2",
        "[attacker] refused sysreg: IMPLEMENTATION DEFINED read S3_0_C15_C0_0",
        "[attacker] refused sysreg: debug DBGBCR0_EL1 (enable, EL1): write completed (value 0x0), read completed (value 0x0) (trapped to EL2: RAZ/WI)",
        "[attacker] refused sysreg: debug OSLAR_EL1 (lock) / OSLSR_EL1 (implemented, unlocked): write completed (value 0x0), read completed (value 0x8)",
        "[attacker] refused sysreg: PMU PMCR_EL0 (E|P|C): write completed (value 0x0), read completed (value 0x0) (trapped to EL2: RAZ/WI)",
        "neither fired",
        // wfx, a vCPU that never exits, sustained traffic
        "[attacker] refused wfx: WFE storm",
        "[attacker] refused wfx: WFI storm",
        "[attacker] refused soak: vcpu 1 kept spinning with interrupts masked all along",
];

/// The integration tests, run in this order.
pub const CASES: &[Case] = &[
    Case {
        name: "default_demo",
        config: "configs/default.toml",
        timeout_s: 240,
        expect: &[
            "console input goes to infotainment",
            "[infotainment] busybox shell",
            "[infotainment] answer=42",
            "[infotainment] cpus=2",
            "[infotainment] reply from the peer in",
            "[infotainment] chan=0",
            "infotainment: stopping (guest called SYSTEM_OFF; restart policy on-crash)",
            "bulkhead shell",
            "safety: stopping (stopped from the shell",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[safety] safety RTOS: 1 ms control task",
            "[safety] t=1s periods=1000",
            "safety: stopped",
        ],
        forbid: &["Kernel panic", "Oops", "BUG:"],
        exit: 0,
        // A person at the console: the shell answers what they type.
        input: &[
            ("/ # ", "echo answer=$((6*7))\n"),
            ("answer=42", "echo cpus=$(nproc)\n"),
            // The channel: a Linux program asks the safety VM.
            // (Typed lines wait in the VM's 4 KiB console input ring, so
            // they need not fit the virtual UART's 32-byte FIFO.)
            ("cpus=2", "bulkhead-chan ping hi\n"),
            ("reply from the peer in", "echo chan=$?\n"),
            ("chan=0", "poweroff -f\n"),
            // The safety VM runs until stopped: from the shell (Ctrl-]).
            ("infotainment: stopped", "\x1d"),
            ("bulkhead shell", "stop safety\r"),
        ],
        qemu_extra: &[],
        uboot: false,
    },
    // An 8 KiB line pasted in one write (more than the VM's 4 KiB console
    // input ring; should the guest fall behind, input waits in the physical
    // UART) reaches the guest byte for byte. Not typed at the shell prompt (ash edits at most about
    // 1 KiB, a canonical tty line holds 4095 bytes): `head` reads it from a
    // non-canonical tty. LOG_CHECKS compares its SHA256 with the payload's.
    Case {
        name: "paste",
        config: "configs/test-paste.toml",
        timeout_s: 240,
        expect: &[
            "console input goes to linux",
            "[linux] busybox shell",
            "[linux] paste-ready-42",
            "[linux] paste-bytes=8192",
            "/tmp/p",
            "all VMs stopped, powering off",
        ],
        contains: &[],
        forbid: &[
            "Kernel panic",
            "Oops",
            "BUG:",
            "console input dropped",
            "unexpected physical interrupt",
        ],
        exit: 0,
        input: &[
            (
                "/ # ",
                "stty -icanon -echo min 1 time 0; echo paste-ready-$((6*7)); \
                 head -c 8192 >/tmp/p; stty sane; echo paste-bytes=$(wc -c </tmp/p); \
                 sha256sum /tmp/p; poweroff -f\n",
            ),
            ("paste-ready-42", PASTE),
        ],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "shell",
        config: "configs/test-shell.toml",
        timeout_s: 300,
        expect: &[
            "bulkhead shell: 'help' lists the commands",
            "infotainment     running",
            "virtio 0: disk0 sectors 0..32768 (16 MiB, read-write), serial 'infotainment-disk0'",
            "    reads ",
            "virtio 1: NIC 52:54:00:00:00:0a on switch 'lan' port 1",
            "    sent ",
            "command line: console=ttyAMA0 rdinit=/init panic=-1 bulkhead.ip=10.0.2.1/24",
            "INJECTED",
            "infotainment     virtio 0 (blk): kicks ",
            "infotainment     virtio 1 (net): kicks ",
            "disk0 (virtio-blk at ",
            "nic0 (virtio-net at ",
            "switch 'lan' (2 ports): forwarded ",
            "error: unknown command 'frobnicate' (try 'help')",
            "error: usage: restart VM",
            "infotainment: restarting (restarted from the shell",
            "infotainment: restart 1: fresh image loaded",
            "kB, restart 1",
            "[infotainment] busybox shell",
            "512Mi        1 on-crash",
            "infotainment: stopping (stopped from the shell",
            "infotainment: stopped",
            "all VMs stopped, powering off",
        ],
        contains: &["[safety] PASS hello"],
        forbid: &["Kernel panic", "Oops", "BUG:"],
        exit: 0,
        input: &[
            ("[infotainment] / # ", "\x1d"),
            ("bulkhead shell", "list\r"),
            ("RESTARTS", "info infotainment\r"),
            ("command line:", "stats\r"),
            ("switch 'lan'", "frobnicate\r"),
            ("unknown command", "restart\r"),
            ("usage: restart VM", "restart infotainment\r"),
            ("[infotainment] busybox shell", "list\r"),
            ("1 on-crash", "stop infotainment\r"),
        ],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "crash_restart",
        config: "configs/test-crash.toml",
        timeout_s: 300,
        expect: &[
            "[infotainment] busybox shell",
            "Kernel panic - not syncing: sysrq triggered crash",
            "infotainment: restarting (guest called SYSTEM_RESET; restart policy on-crash)",
            "infotainment: restart 1: fresh image loaded",
            "[infotainment] busybox shell",
            "infotainment: stopping (guest called SYSTEM_OFF; restart policy on-crash)",
            "infotainment: stopped",
            "all VMs stopped, powering off",
        ],
        contains: &["[safety] PASS safety: 6000 periods, 0 deadline misses"],
        forbid: &[],
        exit: 0,
        input: &[
            ("[infotainment] / # ", "echo c > /proc/sysrq-trigger\n"),
            ("restart 1: fresh image loaded", ""),
            ("[infotainment] / # ", "poweroff -f\n"),
        ],
        // Virtual time, as in safety_stress: the safety VM's deadlines are
        // judged in guest instructions.
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "channel",
        config: "configs/test-channel.toml",
        timeout_s: 300,
        expect: &[
            "[linux] reply from the peer in",
            "hello 1 from linux -> safety: request 1, periods=",
            "hello 2 from linux -> safety: request 2, periods=",
            "hello 3 from linux -> safety: request 3, periods=",
            "[linux] CHANNEL DONE",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "safety: channel 'control' end 1 at 0x10000000 (registers) and 0x10100000 (4096 bytes, scrubbed), doorbell SPI 120",
            "linux: channel 'control' end 0 at 0x10000000 (registers) and 0x10100000 (4096 bytes, scrubbed), doorbell SPI 120, as PCI 00:0",
            "safety: 1 vCPU(s) on [PcpuId(0)]",
            "[safety] channel end 1 at 0x10000000: answering requests (SPI 120)",
            "pci 0000:00:00.0: [1af4:1110] type 00 class 0xff0000",
            "uio_pci_generic 0000:00:00.0: enabling device",
            "[linux] channel end 0 at PCI 0000:00:00.0, 4096 bytes shared, peer running, 0 ring(s) received",
            // One doorbell interrupt per request reached the stock driver.
            "3     GICv3 120 Level     uio_pci_generic",
            "[safety] PASS safety: 6000 periods, 0 deadline misses",
        ],
        // The bare-metal end is not a PCI function.
        forbid: &["safety: channel 'control' end 1 at 0x10000000 (registers) and 0x10100000 (4096 bytes, scrubbed), doorbell SPI 120, as PCI"],
        exit: 0,
        input: &[],
        // Virtual time: the safety VM's deadlines are judged in guest
        // instructions, not in host scheduling.
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "crash_never",
        config: "configs/test-crash-never.toml",
        timeout_s: 300,
        expect: &[
            "[infotainment] busybox shell",
            "Kernel panic - not syncing: sysrq triggered crash",
            "infotainment: stopping (guest called SYSTEM_RESET; restart policy never)",
            "infotainment: stopped",
            "system ended: failed (safety: powered off, infotainment: reset (a reboot or a kernel panic) and not restarted)",
            "all VMs stopped, powering off",
        ],
        contains: &["[safety] PASS hello"],
        forbid: &["restart 1"],
        exit: 0,
        input: &[("[infotainment] / # ", "echo c > /proc/sysrq-trigger\n")],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "passthrough",
        config: "configs/test-passthrough.toml",
        timeout_s: 240,
        expect: &[
            "infotainment: passthrough 'rtc' 0x9010000+0x1000, irqs [34]",
            "[infotainment] BULKHEAD-TEST rtc=rtc-pl031 9010000.pl031",
            "[infotainment] BULKHEAD-TEST hwclock-ok",
            "[infotainment] BULKHEAD-TEST rtc-alarm-interrupts=1",
            "[infotainment] BULKHEAD-TEST done",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[safety] the RTC at 0x9010000 is not ours: refused",
            "safety vcpu0: read of IPA 0x9010000 (unmapped) refused: data abort injected",
        ],
        forbid: &["Kernel panic", "Oops", "BUG:", "hwclock-wrong"],
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "safety_stress",
        config: "configs/test-safety.toml",
        timeout_s: 300,
        expect: &[
            "[safety] safety RTOS: 1 ms control task",
            "[infotainment] BULKHEAD-TEST stress start cpus=2",
            "[safety] t=3s periods=3000 misses=0",
            "[safety] t=6s periods=6000 misses=0",
            "[safety] PASS safety: 6000 periods, 0 deadline misses",
            "[infotainment] BULKHEAD-TEST doorbell interrupts: ",
            "[infotainment] BULKHEAD-TEST stress done",
            "all VMs stopped, powering off",
        ],
        contains: &[],
        // The storm happened: the channel carried interrupts.
        forbid: &[
            "Kernel panic",
            "Oops",
            "BUG:",
            "BULKHEAD-TEST doorbell interrupts: 0",
        ],
        exit: 0,
        input: &[],
        // Virtual time: deadlines are judged in guest instructions, not in
        // how a 2-core host schedules QEMU's vCPU threads.
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "safety_io",
        config: "configs/test-safety-io.toml",
        timeout_s: 400,
        expect: &[
            "[safety] safety RTOS: 1 ms control task",
            "[infotainment] BULKHEAD-TEST io stress start",
            "[safety] t=3s periods=3000 misses=0",
            "[safety] t=6s periods=6000 misses=0",
            "[safety] PASS safety: 6000 periods, 0 deadline misses",
            "[infotainment] BULKHEAD-TEST io stress done",
            "all VMs stopped, powering off",
        ],
        contains: &[],
        forbid: &["Kernel panic", "Oops", "BUG:", " 0 disk reads", " 0 frames in"],
        exit: 0,
        input: &[],
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "uboot_booti",
        config: "configs/test-two-vms.toml",
        timeout_s: 180,
        expect: &[
            "Hit any key to stop autoboot",
            "Moving Image from 0x44000000 to 0x40200000",
            "Starting kernel",
            "Bulkhead 0.1.0 starting at EL2",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[safety] PASS hello",
            "[infotainment] PASS psci",
            "[infotainment] PASS reset",
        ],
        forbid: &[],
        exit: 0,
        // Stop autoboot, then boot the image the way a board would.
        input: &[
            ("Hit any key to stop autoboot", "\n"),
            ("=> ", "booti 0x44000000 - ${fdtcontroladdr}\n"),
        ],
        qemu_extra: &[],
        uboot: true,
    },
    Case {
        name: "two_vms",
        config: "configs/test-two-vms.toml",
        timeout_s: 120,
        expect: &[
            "starting at EL2",
            "EL2 MMU on: text RX, data RW XN",
            "system ended: clean (safety: powered off, infotainment: powered off)",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "W^X holds, text read-only, 8 guard pages unmapped",
            "cpu1 (MPIDR 0x1) online at EL2",
            "cpu2 (MPIDR 0x2) online at EL2",
            "cpu3 (MPIDR 0x3) online at EL2",
            "safety: stage 2 maps its RAM with 8 descriptor(s), largest block 2048 KiB",
            "infotainment: stage 2 maps its RAM with 16 descriptor(s), largest block 2048 KiB; every one is its own RAM or device",
            "[safety] hello from a Bulkhead guest at EL1 (vcpu 0)",
            "[safety] heartbeat 5/5",
            "[safety] PASS hello",
            "[infotainment] vcpu 1 up (start 1)",
            "[infotainment] PASS psci",
            "[infotainment] PASS reset (restart 1, fresh image)",
            "safety: stopped",
            "infotainment: stopped",
        ],
        forbid: &[],
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    // Built with the hypervisor feature in HV_FEATURES: pCPU 0 overflows its
    // stack after boot. The overflow must be reported as one, QEMU must exit
    // with status 1 (semihosting, for this image only), and the guest on
    // cpu1 must not run on: it reports first at t=1s.
    Case {
        name: "stack_guard",
        config: "configs/test-stack-guard.toml",
        timeout_s: 60,
        expect: &[
            "W^X holds, text read-only, 8 guard pages unmapped",
            "safety: 1 vCPU(s) on [PcpuId(1)]",
            "selftest: overflowing pCPU 0's stack",
            "EL2 stack overflow on pCPU 0 (guard page hit at 0x",
            ", SP 0x",
            "EL2 stack overflow details: ESR 0x96",
        ],
        contains: &[],
        forbid: &["[safety] t=1s", "all VMs stopped"],
        exit: 1,
        input: &[],
        qemu_extra: &["-semihosting-config", "enable=on,target=native"],
        uboot: false,
    },
    Case {
        name: "isolation",
        config: "configs/test-isolation.toml",
        timeout_s: 120,
        // The attacker is reset through an SMC, attacks, is switched off
        // through an SMC; only then is the victim told to finish, so its
        // verdict covers everything the attacker did.
        expect: ISOLATION_EXPECT,
        contains: ISOLATION_CONTAINS,
        forbid: &["victim: restart", "unexpected physical interrupt"],
        exit: 0,
        // Ctrl-] twice moves console input from the shell to the victim.
        input: &[("attacker: stopped", "\x1d\x1dq")],
        // Virtual time, so runs repeat; the victim reports its deadlines
        // but its verdict is memory, restarts and its own interrupts.
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    // The same attack with the attacker's two vCPUs in a pool of two
    // pCPUs: every trap now may switch vCPUs, WFI/WFE storms trap, and
    // its reset and power-off go through the scheduler.
    Case {
        name: "isolation_pool",
        config: "configs/test-isolation-pool.toml",
        timeout_s: 120,
        expect: ISOLATION_EXPECT,
        contains: ISOLATION_CONTAINS,
        forbid: &["victim: restart", "unexpected physical interrupt"],
        exit: 0,
        input: &[("attacker: stopped", "\x1d\x1dq")],
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "smp_psci",
        config: "configs/test-smp.toml",
        timeout_s: 120,
        expect: &[
            "[smp] ok PSCI_VERSION = 65537",
            "[smp] ok CPU_ON(bad entry) = -9",
            "[smp] ok CPU_ON(no such vCPU) = -2",
            "[smp] ok CPU_ON(1) = 0",
            "[smp] ok shared counter after both vCPUs = 40000",
            "[smp] PASS psci",
            "smp: restarting (guest called SYSTEM_RESET; restart policy on-crash)",
            "[smp] vcpu 0 booted, restart count 1",
            "[smp] PASS reset (restart 1, fresh image)",
            "[smp] PASS scrub: the 1024 KiB beyond the image read zero after the restart",
            "all VMs stopped, powering off",
        ],
        contains: &[],
        forbid: &[],
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    // Debian's arm64 kernels (xtask/debian.lock) with a busybox initramfs.
    Case {
        name: "linux_2cpu",
        config: "configs/test-linux-2.toml",
        timeout_s: 240,
        expect: linux_test_expect!("2"),
        contains: &[],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "linux_4cpu",
        config: "configs/test-linux-4.toml",
        timeout_s: 240,
        expect: linux_test_expect!("4"),
        contains: &[],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "linux_612",
        config: "configs/test-linux-612.toml",
        timeout_s: 240,
        expect: linux_test_expect!("2"),
        contains: &[],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "disk",
        config: "configs/test-disk.toml",
        timeout_s: 300,
        expect: &[
            "disk0: virtio-blk at",
            "disk0: partition 'store' sectors 2048..=133119 (64 MiB)",
            "disk0: partition 'other' sectors 133120..=165887 (16 MiB)",
            "[store] BULKHEAD-TEST store-root: vda 131072 sectors, boot 0",
            // Debian's mkfs.ext4; disk_checks reads the version and features.
            "[store] BULKHEAD-TEST store-root: ext4 made by e2fsprogs ",
            "[store] BULKHEAD-TEST store-root: sums",
            "[store] BULKHEAD-TEST store-root: written, rebooting",
            "[store] BULKHEAD-TEST store-root: vda 131072 sectors, boot 1",
            "[store] BULKHEAD-TEST store-root: files verified after reboot",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[other] BULKHEAD-TEST other-disk0: vda 32768 sectors, boot 0",
            "[other] BULKHEAD-TEST other-disk0: pattern of 16 MiB read back",
            "[other] BULKHEAD-TEST other-disk0: read past the end gave 0 bytes",
            "[other] BULKHEAD-TEST other-disk0: 1 MiB at 2 MiB discarded",
            "[other] BULKHEAD-TEST other-disk0: 2 MiB at 1 MiB zeroed, the rest intact",
            // Both reached the device as one request each.
            "    discards 1 (1024 KiB), write-zeroes 1 (2048 KiB)",
        ],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[(
            "[other] BULKHEAD-TEST other-disk0: 2 MiB at 1 MiB zeroed",
            "\x1d\x1dinfo other\r",
        )],
        qemu_extra: &[],
        uboot: false,
    },
    // A disk the config gives no layout: the table is the test's own
    // (DISK_TABLE, written by PREPARE before boot), and only the hypervisor
    // knows where its partitions are. Tenant's partition resolves and
    // boots; claimant's overlaps squatter's slice and is refused at boot.
    // While the two run, the shell shows the slices the hypervisor
    // resolved; the machine powers off once both have stopped (the
    // refused VM is not waited for), and disk_table_checks looks at the
    // image.
    Case {
        name: "disk_table",
        config: "configs/test-disk-table.toml",
        timeout_s: 180,
        expect: &[
            "disk0: virtio-blk at",
            "disk0: partition 'data' sectors 2048..=34815 (16 MiB)",
            "disk0: partition 'spare' sectors 34816..=67583 (16 MiB)",
            "vm 'claimant' not started: its disk 0 (partition 'spare' of 'disk0') overlaps vm 'squatter' disk 0, and one of them is read-write",
            "bulkhead shell",
            "  virtio 0: disk0 sectors 2048..34816 (16 MiB, read-write), serial 'tenant'",
            "  virtio 0: disk0 sectors 49152..57344 (4 MiB, read-write), serial 'squatter'",
            "no VM named 'claimant'",
            "system ended: failed (",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[tenant] BULKHEAD-TEST tenant: vda 32768 sectors",
            "[tenant] BULKHEAD-TEST tenant: pattern of 16 MiB read back",
            "[squatter] BULKHEAD-TEST squatter: vda 8192 sectors",
            "[squatter] BULKHEAD-TEST squatter: pattern of 4 MiB read back",
            "tenant: stopped",
            "squatter: stopped",
            "1 VM(s) not started)",
        ],
        forbid: DISK_TABLE_FORBID,
        exit: 0,
        // Ctrl-] twice, as soon as tenant has its disk: from tenant past
        // squatter to the shell, while both still run.
        input: &[
            ("[tenant] BULKHEAD-TEST tenant: vda", "\x1d\x1d"),
            ("bulkhead shell", "info tenant\r"),
            ("serial 'tenant'", "info squatter\r"),
            ("serial 'squatter'", "info claimant\r"),
        ],
        qemu_extra: &[],
        uboot: false,
    },
    Case {
        name: "net",
        config: "configs/test-net.toml",
        timeout_s: 300,
        expect: &[
            "nic0: virtio-net at",
            "switch 'lan': 3 port(s), port 0 the uplink",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[a] BULKHEAD-TEST a: ping 10.0.2.2: 3 packets received",
            "[b] BULKHEAD-TEST b: ping 10.0.2.1: 3 packets received",
            "[b] BULKHEAD-TEST b: fetched 4194304 bytes",
            "[a] BULKHEAD-TEST a: host said: hello from the host behind the uplink|echo: ping from a|",
            "[a] BULKHEAD-TEST a: b is done",
            // The host's side of the uplink: a TCP session, opened and closed.
            "TCP: 1 session(s), 1 ended",
        ],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
    // Shared pCPUs: the IPI guest's vCPU 1 waits in WFI for every SGI
    // vCPU 0 sends and for its own 1 kHz timer. The shell moves it onto
    // vCPU 0's pCPU mid-run and back: every SGI arrives exactly once and
    // the timer keeps ticking (the guest checks both and says "ok").
    Case {
        name: "sched_move",
        config: "configs/test-sched-move.toml",
        timeout_s: 180,
        expect: &[
            "pool 'general': pCPUs [0, 1] shared by 2 vCPU(s)",
            "[ipi] ipi: vcpu 1 up, sending",
            "ipi vcpu1 moves to pCPU 0",
            "ipi vcpu1: runs on pCPU 0 (moved from the shell)",
            "ipi vcpu1 moves to pCPU 1",
            "ipi vcpu1: runs on pCPU 1 (moved from the shell)",
            "[ipi] ipi: ok sent 12000 received 12000 ticks",
            "system ended: clean (ipi: powered off)",
        ],
        contains: &["  ipi/1 ", "error: ipi has 2 vCPU(s)", "error: pCPU 5 is not in pool 'general'"],
        forbid: &[],
        exit: 0,
        input: &[
            ("[ipi] ipi: round 2000", "move ipi 1 0\r"),
            ("ipi vcpu1 moves to pCPU 0", "sched\r"),
            ("RUNTIME_US", "move ipi 7 0\r"),
            ("error: ipi has", "move ipi 1 5\r"),
            ("[ipi] ipi: round 6000", "move ipi 1 1\r"),
        ],
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    // Workload balancing: three Linux VMs of two vCPUs each, weights
    // 1:1:2, share two pCPUs beside the safety VM on its own. The shell's
    // `sched` table is read twice while every vCPU is busy and twice
    // while all idle; `sched_shares` checks the shares and the idle cost.
    Case {
        name: "sched",
        config: "configs/test-sched.toml",
        timeout_s: 600,
        expect: &[
            "pool 'general': pCPUs [1, 2] shared by 6 vCPU(s)",
            "all VMs stopped, powering off",
        ],
        contains: &[
            "[a] BULKHEAD-TEST busy-start cpus=2",
            "[b] BULKHEAD-TEST busy-start cpus=2",
            "[c] BULKHEAD-TEST busy-start cpus=2",
            "[a] BULKHEAD-TEST idle-done",
            "[b] BULKHEAD-TEST idle-done",
            "[c] BULKHEAD-TEST idle-done",
            "misses=0 ",
        ],
        forbid: LINUX_FORBID,
        exit: 0,
        // Focus starts on a; three Ctrl-] reach the shell (b, c, shell).
        // The safety VM's once-a-second report is the clock between two
        // readings.
        input: &[
            ("BULKHEAD-TEST busy-start", ""),
            ("BULKHEAD-TEST busy-start", ""),
            ("BULKHEAD-TEST busy-start", "\x1d\x1d\x1dsched\r"),
            ("RUNTIME_US", ""),
            ("misses=", ""),
            ("misses=", ""),
            ("misses=", "sched\r"),
            ("BULKHEAD-TEST busy-done", ""),
            ("BULKHEAD-TEST busy-done", ""),
            ("BULKHEAD-TEST busy-done", "sched\r"),
            ("RUNTIME_US", ""),
            ("misses=", ""),
            ("misses=", ""),
            ("misses=", "sched\r"),
        ],
        qemu_extra: &["-icount", "shift=0,sleep=off"],
        uboot: false,
    },
    Case {
        name: "linux_reboot",
        config: "configs/test-linux-reboot.toml",
        timeout_s: 240,
        expect: &[
            // The command line is the config's alone; the restart count
            // comes from /chosen/bulkhead,restarts.
            "[linux] BULKHEAD-TEST boot restarts=0 cmdline=[console=ttyAMA0 rdinit=/init panic=-1]",
            "[linux] BULKHEAD-TEST rebooting",
            "[linux] BULKHEAD-TEST boot restarts=1 cmdline=[console=ttyAMA0 rdinit=/init panic=-1]",
            "[linux] BULKHEAD-TEST second boot",
            "all VMs stopped, powering off",
        ],
        contains: &[],
        forbid: LINUX_FORBID,
        exit: 0,
        input: &[],
        qemu_extra: &[],
        uboot: false,
    },
];

/// The line the `paste` case sends: 8192 printable bytes, no newline.
const PASTE: &str = include_str!("../../configs/linux/paste-8k.txt");

/// A check of a QEMU log: `Err` says what is wrong.
type LogCheck = fn(&str) -> Result<(), String>;

/// Checks of a case's log against values computed at test time, by case
/// name (in addition to its `expect`, `contains` and `forbid`).
const LOG_CHECKS: &[(&str, LogCheck)] = &[
    ("paste", paste_arrived),
    ("disk", disk_checks),
    ("isolation", attacker_disk),
    ("isolation_pool", attacker_disk_pool),
    ("net", same_blob),
    ("disk_table", disk_table_checks),
    ("sched", sched_shares),
];

/// One reading of the shell's `sched` table: the counter in microseconds
/// and each vCPU's (VM, runtime in microseconds).
struct SchedReading {
    now_us: u64,
    runtime: Vec<(String, u64)>,
}

/// Every `sched` table in `log` for pool `pool` with `vcpus` vCPU rows
/// (other output may come between the table's lines).
fn sched_readings(log: &str, pool: &str, vcpus: usize) -> Vec<SchedReading> {
    let head = format!("pool '{pool}': pCPUs ");
    let mut out = Vec::new();
    let mut lines = log.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.find(&head).map(|at| &l[at..]) else {
            continue;
        };
        let Some(now_us) = rest
            .rsplit("now_us ")
            .next()
            .and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        let mut runtime = Vec::new();
        for row in lines.by_ref() {
            let w: Vec<&str> = row.split_whitespace().collect();
            // "  vm/n  STATE  PCPU  WEIGHT  CAP  RUNTIME_US  TIMER_IN_US"
            if let [id, _, _, _, _, rt, _] = w.as_slice() {
                if let (Some((vm, _)), Ok(rt)) = (id.split_once('/'), rt.parse::<u64>()) {
                    runtime.push((vm.to_owned(), rt));
                }
            }
            if runtime.len() == vcpus {
                break;
            }
        }
        out.push(SchedReading { now_us, runtime });
    }
    out
}

/// Per VM, its vCPUs' CPU time between readings `a` and `b`.
fn sched_deltas(a: &SchedReading, b: &SchedReading) -> Vec<(String, u64)> {
    let mut per_vm: Vec<(String, u64)> = Vec::new();
    for ((vm, before), (_, after)) in a.runtime.iter().zip(&b.runtime) {
        let d = after.saturating_sub(*before);
        match per_vm.iter_mut().find(|(v, _)| v == vm) {
            Some((_, sum)) => *sum += d,
            None => per_vm.push((vm.clone(), d)),
        }
    }
    per_vm
}

/// The `sched` case: between the two busy readings each VM's share of
/// the pool's CPU time is within 10% of its weight's share (a, b: 1/4,
/// c: 1/2); between the two idle readings each VM used under 1% of one
/// pCPU. Every safety report says no deadline was missed.
fn sched_shares(log: &str) -> Result<(), String> {
    let r = sched_readings(log, "general", 6);
    let [busy0, busy1, idle0, idle1] = r.as_slice() else {
        return Err(format!(
            "{} complete `sched` tables in the log, expected 4",
            r.len()
        ));
    };
    let busy = sched_deltas(busy0, busy1);
    let total: u64 = busy.iter().map(|(_, d)| d).sum();
    if total == 0 {
        return Err("no CPU time between the two busy readings".into());
    }
    let mut problems = Vec::new();
    for (vm, d) in &busy {
        let want = if vm == "c" { 0.5 } else { 0.25 };
        let share = *d as f64 / total as f64;
        println!("  sched: {vm} had {share:.3} of the pool while busy (weight share {want})");
        if (share - want).abs() > 0.10 * want {
            problems.push(format!("{vm}: share {share:.3}, weight share {want}"));
        }
    }
    let window = idle1.now_us.saturating_sub(idle0.now_us).max(1);
    for (vm, d) in sched_deltas(idle0, idle1) {
        let frac = d as f64 / window as f64;
        println!(
            "  sched: {vm} used {:.3}% of a pCPU while idle",
            frac * 100.0
        );
        if frac >= 0.01 {
            problems.push(format!("{vm}: {:.2}% of a pCPU while idle", frac * 100.0));
        }
    }
    if let Some(l) = log
        .lines()
        .find(|l| l.contains("misses=") && !l.contains("misses=0 "))
    {
        problems.push(format!("the safety VM missed a deadline: {l}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A step on a case's blank disk images before QEMU starts.
type Prepare = fn(&build::Built) -> Result<()>;

/// Cases whose disks need more than blank images (and the table the
/// config lays out), by case name.
const PREPARE: &[(&str, Prepare)] = &[("disk_table", disk_table_gpt)];

/// The GUID partition table the `disk_table` case writes on the disk of
/// configs/test-disk-table.toml, which lays out none: (name, byte offset,
/// bytes).
const DISK_TABLE: &[(&str, u64, u64)] =
    &[("data", 1 << 20, 16 << 20), ("spare", 17 << 20, 16 << 20)];

/// The `disk_table` case's disk image and its `[[disk]]`.
fn disk_table_disk(built: &build::Built) -> Result<(&Path, &bulkhead_config::Disk)> {
    match (built.disks.as_slice(), built.disk_configs.as_slice()) {
        ([path], [disk]) if disk.partitions.is_empty() => Ok((path, disk)),
        _ => anyhow::bail!("the disk_table case wants one disk without a partition layout"),
    }
}

/// The `disk_table` case's PREPARE: its table ([`DISK_TABLE`]) on the
/// blank image.
fn disk_table_gpt(built: &build::Built) -> Result<()> {
    let (path, disk) = disk_table_disk(built)?;
    build::write_gpt(path, &build::gpt_pieces(disk, DISK_TABLE))
}

/// The `disk_table` case, on the image afterwards: "data" holds the
/// pattern tenant hashed and squatter's slice the one squatter hashed;
/// every other byte is what PREPARE left (the table, zeros), so claimant
/// never wrote the rest of "spare" and nobody wrote the table.
fn disk_table_checks(log: &str) -> Result<(), String> {
    let config = crate::repo_root().join("configs/test-disk-table.toml");
    let cfg = bulkhead_config::toml::load(&config)
        .map_err(|d| format!("{}: {d:?}", config.display()))?
        .config;
    let disk = cfg.disks.first().ok_or("the config has no disk")?;
    let squatter = cfg
        .vms
        .iter()
        .find(|vm| vm.name == "squatter")
        .and_then(|vm| vm.disks.first())
        .ok_or("the config has no squatter with a disk")?;
    let image = crate::target_dir().join(format!("disks/test-disk-table-{}.raw", disk.name));
    let bytes =
        std::fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    if bytes.len() as u64 != disk.size {
        return Err(format!(
            "{} is {} bytes, not the disk's {}",
            image.display(),
            bytes.len(),
            disk.size
        ));
    }
    let mut want = vec![0u8; bytes.len()];
    for (at, piece) in build::gpt_pieces(disk, DISK_TABLE) {
        let at = at as usize;
        want[at..at + piece.len()].copy_from_slice(&piece);
    }
    let range = |offset: u64, size: u64| offset as usize..(offset + size) as usize;
    let (_, data_at, data_size) = DISK_TABLE[0];
    let written = [
        ("tenant", range(data_at, data_size)),
        ("squatter", range(squatter.offset, squatter.size)),
    ];
    for (who, range) in &written {
        let hash = crate::debian::sha256_hex(&bytes[range.clone()]);
        let line = format!("{who}: pattern sha256 {}", &hash[..16]);
        if !log.contains(&line) {
            return Err(format!(
                "the disk image's bytes {:#x}..{:#x} ({who}'s) hash to {}, which the guest never printed ({line:?})",
                range.start,
                range.end,
                &hash[..16]
            ));
        }
    }
    let outside = |i: &usize| !written.iter().any(|(_, r)| r.contains(i));
    match (0..bytes.len()).find(|i| bytes[*i] != want[*i] && outside(i)) {
        Some(i) => Err(format!(
            "disk byte {i:#x} is {:#x}, not {:#x}: written outside tenant's partition and squatter's slice",
            bytes[i], want[i]
        )),
        None => Ok(()),
    }
}

/// The `net` case: what b fetched from a over TCP is what a served.
fn same_blob(log: &str) -> Result<(), String> {
    let sum = |marker: &str| {
        log.lines()
            .find_map(|l| l.split(marker).nth(1))
            .and_then(|rest| rest.split("sha256 ").nth(1))
            .map(str::trim)
    };
    match (sum("a: serving "), sum("b: fetched ")) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (a, b) => Err(format!("a served sha256 {a:?}, b fetched {b:?}")),
    }
}

/// The `isolation` case: of the 4 MiB disk, the attacker's slice is
/// 1..2 MiB. It wrote 0xa5 over its first 4 KiB and everything else it
/// tried was refused, so that is the only non-zero data on the disk.
fn attacker_disk(_log: &str) -> Result<(), String> {
    attacker_disk_in("test-isolation")
}

/// [`attacker_disk`] for the `isolation_pool` case's image.
fn attacker_disk_pool(_log: &str) -> Result<(), String> {
    attacker_disk_in("test-isolation-pool")
}

/// The attacker's slice of `<config>`'s disk holds its write and nothing
/// outside the slice was written.
fn attacker_disk_in(config: &str) -> Result<(), String> {
    let image = crate::target_dir().join(format!("disks/{config}-disk0.raw"));
    let bytes =
        std::fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let mine = (1 << 20)..(1 << 20) + 4096;
    if bytes.len() != 4 << 20 {
        return Err(format!(
            "{} is {} bytes, not 4 MiB",
            image.display(),
            bytes.len()
        ));
    }
    if !bytes[mine.clone()].iter().all(|&b| b == 0xa5) {
        return Err("the attacker's write is not at the start of its slice (1 MiB)".into());
    }
    match bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != 0 && !mine.contains(&i))
    {
        Some((i, b)) => Err(format!(
            "disk byte {i:#x} is {b:#x}: written outside the attacker's 4 KiB"
        )),
        None => Ok(()),
    }
}

/// The `disk` case: the store VM made its filesystem with the pinned
/// e2fsprogs and it has ext4's journal and extents, as the guest's
/// `dumpe2fs` and the superblock on the disk image (at 1 MiB, the store
/// partition) both say; its checksums are the same before and after its
/// reboot; and the other VM's pattern is on the physical disk image, at
/// its partition (65 MiB..81 MiB), as the guest hashed it.
fn disk_checks(log: &str) -> Result<(), String> {
    let lock = crate::debian::Lock::load().map_err(|e| format!("{e:#}"))?;
    let pinned = &lock
        .e2fsprogs_pin("e2fsprogs")
        .map_err(|e| format!("{e:#}"))?
        .version;
    let upstream = upstream_version(pinned);
    let made = log
        .lines()
        .find_map(|l| l.split("store-root: ext4 made by e2fsprogs ").nth(1))
        .ok_or("the store VM never said it made ext4")?;
    let (version, features) = made
        .trim_end()
        .split_once(", features: ")
        .ok_or_else(|| format!("no features in {made:?}"))?;
    if version != upstream {
        return Err(format!(
            "the guest's e2fsprogs is {version}, the pinned one {upstream} ({pinned})"
        ));
    }
    let features: Vec<&str> = features.split_whitespace().collect();
    for f in ["has_journal", "extent"] {
        if !features.contains(&f) {
            return Err(format!("the store filesystem lacks {f}: {features:?}"));
        }
    }

    let sums: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("store-root: sums ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .collect();
    match sums.as_slice() {
        [a, b] if a == b && !a.is_empty() => {}
        other => return Err(format!("store's checksums before/after reboot: {other:?}")),
    }
    let image = crate::target_dir().join("disks/test-disk-disk0.raw");
    let bytes =
        std::fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    // The ext4 superblock, 1024 bytes into the partition (Linux
    // Documentation/filesystems/ext4/super.rst): s_magic at 0x38,
    // s_feature_compat at 0x5C (HAS_JOURNAL 0x4), s_feature_incompat at
    // 0x60 (EXTENTS 0x40).
    let sb = bytes
        .get((1 << 20) + 1024..(1 << 20) + 2048)
        .ok_or("the disk image has no store partition")?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    let (compat, incompat) = (le32(0x5c), le32(0x60));
    if magic != 0xef53 || compat & 0x4 == 0 || incompat & 0x40 == 0 {
        return Err(format!(
            "the store partition's superblock is not ext4 with a journal and extents \
             (magic {magic:#x}, compat {compat:#x}, incompat {incompat:#x})"
        ));
    }
    let slice = bytes
        .get(65 << 20..81 << 20)
        .ok_or("the disk image is smaller than 81 MiB")?;
    let hash = crate::debian::sha256_hex(slice);
    // The guest's last word on it: after the pattern, the zeroes.
    let line = format!("other-disk0: pattern sha256 {}", &hash[..16]);
    let last = log
        .lines()
        .rfind(|l| l.contains("other-disk0: pattern sha256 "));
    if !last.is_some_and(|l| l.contains(&line)) {
        return Err(format!(
            "the disk image's bytes 65..81 MiB hash to {}, but the guest's last pattern line is {last:?} ({line:?})",
            &hash[..16]
        ));
    }
    Ok(())
}

/// The upstream part of a Debian version (Debian Policy 5.6.12,
/// `[epoch:]upstream[-revision]`): "1.47.0" of "1.47.0-2+b2".
fn upstream_version(debian: &str) -> &str {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// The guest's `sha256sum /tmp/p` names the payload's hash.
fn paste_arrived(log: &str) -> Result<(), String> {
    let want = format!(
        "[linux] {}  /tmp/p",
        crate::debian::sha256_hex(PASTE.as_bytes())
    );
    match log.lines().find(|l| l.contains("  /tmp/p")) {
        Some(line) if line.contains(&want) => Ok(()),
        Some(line) => Err(format!("pasted data differs: {line:?}, expected {want:?}")),
        None => Err(format!("no sha256sum output; expected {want:?}")),
    }
}

/// Cases whose image needs hypervisor cargo features (self-tests); every
/// other case boots the normal build.
const HV_FEATURES: &[(&str, &[&str])] = &[("stack_guard", &["selftest-stack-overflow"])];

/// The hypervisor features `case` is built with.
fn hv_features(case: &str) -> &'static [&'static str] {
    HV_FEATURES
        .iter()
        .find(|(name, _)| *name == case)
        .map_or(&[], |(_, features)| features)
}

/// Why a log does not meet its case's expectations.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// `expect[index]` was not found after the previous expectation.
    Missing { index: usize, text: String },
    /// A forbidden substring appears on this line.
    Forbidden { text: String, line: String },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { index, text } => {
                write!(f, "expected output #{} {text:?} did not appear", index + 1)?;
                if *index > 0 {
                    write!(f, " (after the previous expectation)")?;
                }
                Ok(())
            }
            Self::Forbidden { text, line } => {
                write!(f, "forbidden {text:?} appeared: {:?}", line.trim_end())
            }
        }
    }
}

/// Checks `log` against ordered `expect` strings and `forbid` strings;
/// returns every mismatch (forbidden lines first, then the first missing
/// expectation).
pub fn check_log(log: &str, expect: &[&str], forbid: &[&str]) -> Vec<Mismatch> {
    let mut found = Vec::new();
    for line in log.lines() {
        for text in forbid {
            if line.contains(text) {
                found.push(Mismatch::Forbidden {
                    text: (*text).to_owned(),
                    line: line.to_owned(),
                });
            }
        }
    }
    let mut from = 0;
    for (index, text) in expect.iter().enumerate() {
        match log[from..].find(text) {
            Some(at) => from += at + text.len(),
            None => {
                found.push(Mismatch::Missing {
                    index,
                    text: (*text).to_owned(),
                });
                break;
            }
        }
    }
    found
}

/// Results of a `cargo xtask test` run.
#[derive(Default)]
struct Tally {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, result: Result<()>) {
        match result {
            Ok(()) => {
                println!("test {name} ... ok");
                self.passed.push(name.to_owned());
            }
            Err(err) => {
                println!("test {name} ... FAILED\n{err:#}");
                self.failed.push(name.to_owned());
            }
        }
    }
}

/// Runs everything; `filter` keeps the integration and rejection tests whose
/// name contains it.
pub fn run_all(filter: Option<&str>, unit: bool) -> Result<ExitCode> {
    let mut tally = Tally::default();
    if unit {
        println!("running host unit tests (cargo test)…");
        tally.record("unit: cargo test", unit_tests());
        println!(
            "build-checking the hypervisor and every guest for {}…",
            build::TARGET
        );
        tally.record("build: aarch64 crates", cross_build());
    }
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));

    for case in rejection_cases()? {
        let name = format!("config_rejected: {}", case.name);
        if wanted(&name) {
            tally.record(&name, check_rejected(&case));
        }
    }
    for case in CASES.iter().filter(|c| wanted(c.name)) {
        println!("booting test {}… (timeout {} s)", case.name, case.timeout_s);
        tally.record(case.name, run_case(case));
    }
    if wanted("fuzz_smoke") {
        println!(
            "fuzzing every target for {} s each (cargo xtask fuzz --smoke)…",
            crate::fuzz::SMOKE_SECONDS
        );
        tally.record("fuzz_smoke", crate::fuzz::smoke(crate::fuzz::SMOKE_SECONDS));
    }
    if wanted("run_exit_status") {
        println!("cargo xtask run's exit status and --log (run_exit_status)…");
        tally.record("run_exit_status", run_exit_status());
    }
    if wanted("user_image") {
        println!("booting a user's Image and device tree from a path (user_image)…");
        tally.record("user_image", user_image());
    }
    if wanted("snapshot") {
        println!("snapshot and restore across two machines (snapshot)…");
        tally.record("snapshot", crate::snaptest::run());
    }
    if wanted("snapshot_pinned") {
        println!("snapshot and restore of a pinned VM across two machines (snapshot_pinned)…");
        tally.record("snapshot_pinned", crate::snaptest::run_pinned());
    }
    if wanted("migrate") {
        println!("migration between two machines, and a target killed mid-stream (migrate)…");
        tally.record("migrate", crate::migtest::run());
    }
    if wanted("migrate_pinned") {
        println!("live migration of a pinned VM between two machines and back (migrate_pinned)…");
        tally.record("migrate_pinned", crate::migtest::run_pinned());
    }
    if wanted("migrate_busy") {
        println!(
            "live migration of a memory-busy Linux VM, slowed down to converge (migrate_busy)…"
        );
        tally.record("migrate_busy", crate::migtest::run_busy());
    }
    if wanted("migrate_linux") {
        println!("live migration of a Linux VM with a shared disk (migrate_linux)…");
        tally.record("migrate_linux", crate::migtest::run_linux());
    }
    if wanted("bench_quick") {
        println!("running the benchmark harness (cargo xtask bench --quick)…");
        tally.record("bench_quick", bench_quick());
    }

    println!(
        "\n{} passed, {} failed",
        tally.passed.len(),
        tally.failed.len()
    );
    for name in &tally.failed {
        println!("  failed: {name}");
    }
    Ok(if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every figure the benchmark guest and the Linux boot must produce.
const BENCH_NAMES: &[(&str, bool)] = &[
    // (name, measured natively too)
    ("hvc_null", false),
    ("mmio_uart_read", true),
    ("mmio_vgic_read", true),
    ("eoi", true),
    ("ipi", true),
    ("wfi_wake", true),
    ("vtimer_latency", true),
    ("mem_stream", true),
    ("pointer_chase", true),
    ("linux_boot", true),
    ("pool_hvc_null", false),
    ("ipi_shared", false),
    ("wake_latency", false),
    ("vcpu_switch", false),
    ("vm_pingpong_rtt", false),
];

/// `cargo xtask bench --quick` as a test of the harness, not of speed: it
/// must succeed, and results.json must parse and hold a number for every
/// benchmark on each side that has it.
fn bench_quick() -> Result<()> {
    let code = crate::bench::run(true)?;
    anyhow::ensure!(
        code == ExitCode::SUCCESS,
        "cargo xtask bench --quick failed"
    );
    let path = target_dir().join("bench/results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let rows: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let rows = rows.as_array().context("results.json is not a list")?;
    for &(name, native) in BENCH_NAMES {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .with_context(|| format!("results.json has no {name}"))?;
        anyhow::ensure!(
            row["unit"] == "instructions",
            "{name}: unit {}",
            row["unit"]
        );
        anyhow::ensure!(
            row["bulkhead"].is_u64(),
            "{name}: no Bulkhead figure ({})",
            row["bulkhead"]
        );
        anyhow::ensure!(
            row["native"].is_u64() == native,
            "{name}: native figure {} (expected {})",
            row["native"],
            if native { "a number" } else { "null" }
        );
    }
    Ok(())
}

/// The command line the `user_image` test's config gives, verbatim.
const USER_CMDLINE: &str = "setup smp=2 mem=256";
/// The Linux run's command line: no `panic=-1`, a word of its own.
const USER_LINUX_CMDLINE: &str = "console=ttyAMA0 rdinit=/init mine.flag=1 quiet-not";
/// `/init` of the Linux run's own initramfs.
const USER_LINUX_INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
set -- $(/bin/busybox od -An -tu1 /proc/device-tree/chosen/bulkhead,restarts)
echo \"USER-INIT cmdline=[$(/bin/busybox cat /proc/cmdline)] restarts=$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))\"
/bin/busybox poweroff -f
";

/// `user_image`: a program built outside the config's pinned packages and
/// booted from a path, as a bring-up engineer boots theirs. The `args`
/// guest (which parses its command line strictly) is built, packed into an
/// arm64 `Image` here, written under `target/itest/user-image/`, and named
/// by absolute path from a config written there too:
/// - `kernel = <Image>` with `cmdline = "setup smp=2 mem=256"`: the guest
///   must see exactly that command line, then `bulkhead,restarts` go from 0
///   to 1 across the reset it asks for;
/// - `image = <Image>` with `dtb = <file>`: a device tree made here (with
///   its own bootargs and a restart count of 7 that the hypervisor would
///   never write) must reach the guest as it is;
/// - Debian's 6.12 kernel named by the path of its `Image` in the package
///   cache, with a gzip-compressed initramfs made here as `initramfs =
///   <file>` and a command line of our own: Linux must report exactly
///   that command line.
fn user_image() -> Result<()> {
    let dir = target_dir().join("itest/user-image");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    build::cargo_build(&["args".to_owned()], Output::Quiet)?;
    let elf_path = build::elf_path("args");
    let elf =
        std::fs::read(&elf_path).with_context(|| format!("cannot read {}", elf_path.display()))?;
    let flat = crate::elf::to_flat(&elf)?;
    let load_offset = flat
        .base
        .checked_sub(bulkhead_config::RAM_IPA)
        .context("the args guest is linked below RAM")?;
    let image = dir.join("args.Image");
    std::fs::write(&image, crate::image::wrap(&flat.bytes, load_offset)?)?;
    let dtb = dir.join("board.dtb");
    std::fs::write(&dtb, user_dtb("setup smp=1 mem=64", 7)?)?;
    let kernel =
        crate::debian::kernel_image(bulkhead_config::toml::DebianKernel::BookwormBackports)?;
    let busybox = std::fs::read(crate::debian::busybox()?)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        &crate::cpio::initramfs(&busybox, USER_LINUX_INIT.as_bytes(), &[]),
    )?;
    let rootfs = dir.join("rootfs.cpio.gz");
    std::fs::write(&rootfs, gz.finish()?)?;
    let linux = format!(
        "[board]\ncpus = 2\nmemory = \"1G\"\n\n[[vm]]\nname = \"mine\"\nkernel = \"{}\"\n\
         initramfs = \"{}\"\ncmdline = \"{USER_LINUX_CMDLINE}\"\nmemory = \"256M\"\npcpus = [0]\n",
        kernel.display(),
        rootfs.display()
    );

    let vm = |source: &str| {
        format!(
            "[board]\ncpus = 2\nmemory = \"256M\"\n\n[[vm]]\nname = \"args\"\n{source}memory = \"16M\"\npcpus = [0]\n"
        )
    };
    let runs = [
        (
            "kernel.toml",
            vm(&format!(
                "kernel = \"{}\"\ncmdline = \"{USER_CMDLINE}\"\n",
                image.display()
            )),
            &[
                "args: command line [setup smp=2 mem=256], restart Some(0)",
                "args: setup with smp=2 mem=256 MiB",
                "args: first boot, asking for a reset",
                "args: restart 1: fresh image loaded",
                "args: command line [setup smp=2 mem=256], restart Some(1)",
                "args: PASS",
                "all VMs stopped, powering off",
            ][..],
        ),
        (
            "dtb.toml",
            vm(&format!(
                "image = \"{}\"\ndtb = \"{}\"\n",
                image.display(),
                dtb.display()
            )),
            &[
                "args: command line [setup smp=1 mem=64], restart Some(7)",
                "args: setup with smp=1 mem=64 MiB",
                "args: PASS",
                "all VMs stopped, powering off",
            ][..],
        ),
        (
            "linux.toml",
            linux,
            &[
                "Kernel command line: console=ttyAMA0 rdinit=/init mine.flag=1 quiet-not",
                "[mine] USER-INIT cmdline=[console=ttyAMA0 rdinit=/init mine.flag=1 quiet-not] restarts=0",
                "all VMs stopped, powering off",
            ][..],
        ),
    ];
    for (name, text, expect) in runs {
        let config = dir.join(name);
        std::fs::write(&config, text)?;
        let built = build::build(&config, Output::Quiet)?;
        let mut args = qemu::machine_args(built.cpus, built.ram_mib, "");
        args.extend(qemu::disk_args(&built.disks));
        args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
        let timeout = Duration::from_secs(180);
        let outcome = qemu::run_captured(&args, timeout)?;
        let mut problems: Vec<String> = check_log(&outcome.log, expect, FORBID)
            .iter()
            .map(ToString::to_string)
            .collect();
        if !outcome.succeeded() {
            problems.push(outcome.ending(timeout));
        }
        if !problems.is_empty() {
            anyhow::bail!(
                "{name}:\n  {}\n  serial log:\n{}",
                problems.join("\n  "),
                qemu::indent(&outcome.log)
            );
        }
    }
    Ok(())
}

/// `run_exit_status`: `cargo xtask run` as a script uses it. A system whose
/// VMs all power off exits 0; one whose Linux VM crashes under restart
/// policy `never` exits 1; `--log` holds the tagged console either way.
fn run_exit_status() -> Result<()> {
    let dir = target_dir().join("itest/run");
    std::fs::create_dir_all(&dir)?;
    /// (config, what to type once what appeared, exit status, summary).
    type Run<'a> = (&'a str, Option<(&'a str, &'a str)>, i32, &'a str);
    let runs: [Run; 2] = [
        (
            "configs/test-two-vms.toml",
            None,
            0,
            "system ended: clean (safety: powered off, infotainment: powered off)",
        ),
        (
            "configs/test-crash-never.toml",
            Some(("[infotainment] / # ", "echo c > /proc/sysrq-trigger\n")),
            1,
            "system ended: failed (safety: powered off, infotainment: reset",
        ),
    ];
    for (config, typed, want, summary) in runs {
        let log = dir.join(format!(
            "{}.log",
            Path::new(config)
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        let _ = std::fs::remove_file(&log);
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["run", "--time", "real", "--config", config, "--log"])
            .arg(&log)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot start cargo xtask run")?;
        let mut stdin = child.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if let (Some((wait_for, send)), Some(input)) = (typed, stdin.as_mut()) {
                let seen = std::fs::read(&log).unwrap_or_default();
                if String::from_utf8_lossy(&seen).contains(wait_for) {
                    std::io::Write::write_all(input, send.as_bytes())?;
                    stdin = None;
                }
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let mut problems = Vec::new();
        match status.and_then(|s| s.code()) {
            Some(code) if code == want => {}
            other => problems.push(format!("exit status {other:?}, expected {want}")),
        }
        if !text.contains(summary) {
            problems.push(format!("{summary:?} is not in --log {}", log.display()));
        }
        if !text.contains("all VMs stopped, powering off") {
            problems.push("the log does not reach the power-off".to_owned());
        }
        if !problems.is_empty() {
            anyhow::bail!(
                "cargo xtask run --config {config}:\n  {}\n  log:\n{}",
                problems.join("\n  "),
                qemu::indent(&text)
            );
        }
    }
    Ok(())
}

/// A device tree for a one-vCPU VM in Bulkhead's (QEMU virt's) layout with
/// `bootargs` and `restarts` of our choosing: the kind of file a user
/// gives with `dtb = ...`.
fn user_dtb(bootargs: &str, restarts: u32) -> Result<Vec<u8>> {
    use bulkhead_config::{VGICD_IPA, VGICR_IPA, VUART_IPA, VUART_SPI};
    let dt = bulkhead_guest_fdt::GuestDt {
        virtio: &[],
        mem_base: bulkhead_config::RAM_IPA,
        mem_size: 16 << 20,
        n_vcpus: 1,
        gicd: (VGICD_IPA, bulkhead_vgic::GICD_SIZE),
        gicr: (VGICR_IPA, bulkhead_vgic::GICR_FRAME_SIZE),
        uart: (VUART_IPA, bulkhead_devices::pl011::SIZE, VUART_SPI),
        timer: bulkhead_guest_fdt::Timer::default(),
        bootargs,
        restarts,
        initrd: None,
        devices: &[],
        channels: &[],
        pci: None,
    };
    bulkhead_guest_fdt::build(&dt).map_err(|e| anyhow::anyhow!("device tree: {e:?}"))
}

/// `cargo test` for the default members (the pure crates and xtask): a
/// `--workspace` run would compile the EL2 and guest binaries for the host,
/// which they do not support.
fn unit_tests() -> Result<()> {
    let status = cargo()
        .arg("test")
        .status()
        .context("cannot run cargo test")?;
    anyhow::ensure!(status.success(), "cargo test failed ({status})");
    Ok(())
}

/// Compiles the hypervisor and every guest for the bare-metal target.
fn cross_build() -> Result<()> {
    build::cargo_build(&build::available_guests()?, Output::Progress)
}

fn run_case(case: &Case) -> Result<()> {
    let built = build::build_with_features(
        Path::new(case.config),
        Output::Quiet,
        hv_features(case.name),
    )?;
    // Every test starts from blank disks, then what its PREPARE step puts
    // on them.
    build::blank_disks(&built)?;
    if let Some((_, prepare)) = PREPARE.iter().find(|(name, _)| *name == case.name) {
        prepare(&built).context("preparing the disk images")?;
    }
    let mut args = qemu::machine_args(built.cpus, built.ram_mib, "");
    args.extend(case.qemu_extra.iter().map(|a| (*a).to_owned()));
    if case.uboot {
        // U-Boot as the firmware, the image in RAM where `booti` finds it.
        let uboot = crate::prereq::ensure_uboot()?;
        args.extend(CAPTURED_CONSOLE.iter().map(|a| (*a).to_owned()));
        args.extend([
            "-nic".to_owned(),
            "none".to_owned(),
            "-bios".to_owned(),
            uboot.display().to_string(),
        ]);
        args.push("-device".to_owned());
        args.push(format!(
            "loader,file={},addr={UBOOT_LOAD_ADDR},force-raw=on",
            built.image.display()
        ));
    } else {
        args.extend(qemu::disk_args(&built.disks));
        args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
    }
    let peer = if built.uplink {
        let peer = qemu::host_peer()?;
        args.extend(qemu::nic_args(&peer));
        Some(peer)
    } else {
        None
    };
    let timeout = Duration::from_secs(case.timeout_s);
    let mut outcome = qemu::run_scripted(&args, timeout, case.input)?;
    // What the host behind the uplink saw, for the checks and the log.
    if let Some(peer) = peer {
        outcome.log.push_str(&format!("\n{}", peer.stop()));
    }
    // Every case's serial log stays on disk, passed or not, to compare runs.
    let logs = crate::target_dir().join("itest/logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join(format!("{}.log", case.name)), &outcome.log)?;

    let forbid: Vec<&str> = FORBID.iter().chain(case.forbid).copied().collect();
    let mut problems: Vec<String> = check_log(&outcome.log, case.expect, &forbid)
        .iter()
        .map(ToString::to_string)
        .collect();
    for text in case.contains {
        if !outcome.log.contains(text) {
            problems.push(format!("{text:?} never appeared"));
        }
    }
    for (_, check) in LOG_CHECKS.iter().filter(|(name, _)| *name == case.name) {
        if let Err(why) = check(&outcome.log) {
            problems.push(why);
        }
    }
    match outcome.status {
        None => problems.push(outcome.ending(timeout)),
        Some(s) if s.code() != Some(case.exit) => {
            problems.push(format!(
                "{} (expected {})",
                outcome.ending(timeout),
                case.exit
            ));
        }
        Some(_) => {}
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut report = String::new();
    for p in &problems {
        report.push_str(&format!("  {p}\n"));
    }
    report.push_str("  serial log:\n");
    report.push_str(&qemu::indent(&outcome.log));
    anyhow::bail!("{}", report.trim_end())
}

/// A config the build must reject, with a substring of the expected error.
struct Rejection {
    name: String,
    config: PathBuf,
    expect: String,
}

/// The `expect` text from a `# expect: <substring>` first line.
pub fn expect_comment(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let expect = first
        .trim()
        .strip_prefix('#')?
        .trim_start()
        .strip_prefix("expect:")?
        .trim();
    (!expect.is_empty()).then_some(expect)
}

/// configs/bad/*.toml, plus a generated config whose image (a 3 MiB file
/// written at test time: no binaries in git) is larger than its VM.
fn rejection_cases() -> Result<Vec<Rejection>> {
    let mut cases = Vec::new();
    let dir = Path::new("configs/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for config in files {
        let text = std::fs::read_to_string(&config)?;
        let expect = expect_comment(&text)
            .with_context(|| format!("{} has no `# expect: ...` first line", config.display()))?
            .to_owned();
        let name = config
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        cases.push(Rejection {
            name,
            config,
            expect,
        });
    }

    let gen_dir = target_dir().join("itest");
    std::fs::create_dir_all(&gen_dir)?;
    std::fs::write(gen_dir.join("big.bin"), vec![0u8; 3 << 20])?;
    let config = gen_dir.join("image-too-big.toml");
    std::fs::write(&config, IMAGE_TOO_BIG)?;
    for (name, text, expect) in LINUX_REJECTIONS {
        let config = gen_dir.join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        cases.push(Rejection {
            name: (*name).to_owned(),
            config,
            expect: format!("{name}.toml:{expect}"),
        });
    }
    // Files that are not what their key needs, each refused saying what it
    // is and how to convert it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &[0u8; 4096])?;
    std::fs::write(gen_dir.join("vmlinuz"), gz.finish()?)?;
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(gen_dir.join("program.elf"), elf)?;
    std::fs::write(gen_dir.join("board.dts"), "/dts-v1/;\n/ { };\n")?;
    std::fs::write(gen_dir.join("raw.bin"), [0u8; 4096])?;
    for (name, source, key, file, expect) in FORMAT_REJECTIONS {
        let config = gen_dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[board]\ncpus = 2\nmemory = \"1G\"\n\n[[vm]]\nname = \"l\"\n{source}memory = \"64M\"\npcpus = [0]\n"
            ),
        )?;
        let line = if *key == "dtb" { 8 } else { 7 };
        cases.push(Rejection {
            name: (*name).to_owned(),
            config,
            expect: format!(
                "{name}.toml:{line}: vm[0].{key}: {}: {expect}",
                gen_dir.join(file).display()
            ),
        });
    }
    cases.push(Rejection {
        name: "image-too-big".to_owned(),
        expect: format!(
            "image-too-big.toml:{IMAGE_TOO_BIG_MEMORY_LINE}: vm[0].memory: image is larger than its VM"
        ),
        config,
    });
    Ok(cases)
}

/// Linux keys used wrongly: (name, config text, expected `line: field:
/// message` start). Generated at test time next to image-too-big.toml.
const LINUX_REJECTIONS: &[(&str, &str, &str)] = &[
    (
        "unknown-debian-suite",
        "[board]\ncpus = 2\nmemory = \"1G\"\n\n[[vm]]\nname = \"l\"\n\
         kernel = \"debian:sid\"\nmemory = \"512M\"\npcpus = [0]\n",
        "7: vm[0].kernel: unknown Debian suite \"sid\"",
    ),
    (
        "init-without-kernel",
        "[board]\ncpus = 2\nmemory = \"1G\"\n\n[[vm]]\nname = \"l\"\n\
         guest = \"hello\"\ninit = \"init.sh\"\nmemory = \"16M\"\npcpus = [0]\n",
        "8: vm[0].init: `init` needs `kernel`",
    ),
    (
        "kernel-and-guest",
        "[board]\ncpus = 2\nmemory = \"1G\"\n\n[[vm]]\nname = \"l\"\n\
         guest = \"hello\"\nkernel = \"debian:bookworm\"\nmemory = \"512M\"\npcpus = [0]\n",
        "8: vm[0].kernel: set exactly one of `guest`, `image` or `kernel`",
    ),
];

/// Files of the wrong kind: (name, the VM's source keys, the key refused,
/// the file it names, the start of the reason). The files are written next
/// to the generated configs.
const FORMAT_REJECTIONS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "kernel-gzip",
        "kernel = \"vmlinuz\"\n",
        "kernel",
        "vmlinuz",
        "it is gzip-compressed (a vmlinuz?), and Bulkhead boots the uncompressed arm64 Image, as QEMU's -kernel and U-Boot's booti do: `gunzip -c FILE > Image`",
    ),
    (
        "kernel-elf",
        "kernel = \"program.elf\"\n",
        "kernel",
        "program.elf",
        "it is an ELF file (vmlinux, or a linked program), not an arm64 Image",
    ),
    (
        "image-elf",
        "image = \"program.elf\"\n",
        "image",
        "program.elf",
        "it is an ELF file",
    ),
    (
        "kernel-no-header",
        "kernel = \"board.dts\"\n",
        "kernel",
        "board.dts",
        "it has no arm64 Image header (no \"ARM\\x64\" magic at offset 0x38): for a raw bare-metal binary loaded at 0x80000 use `image` instead of `kernel`",
    ),
    (
        "dtb-source-text",
        "image = \"raw.bin\"\ndtb = \"board.dts\"\n",
        "dtb",
        "board.dts",
        "it is not a flattened device tree",
    ),
];

/// A 3 MiB image in a 2 MiB VM.
const IMAGE_TOO_BIG: &str = "\
[board]
cpus = 2
memory = \"1G\"

[[vm]]
name = \"big\"
image = \"big.bin\"
memory = \"2M\"
pcpus = [0]
";
/// The line of `memory = "2M"` above, where the problem is reported.
const IMAGE_TOO_BIG_MEMORY_LINE: usize = 8;

fn check_rejected(case: &Rejection) -> Result<()> {
    match build::build(&case.config, Output::Quiet) {
        Ok(built) => anyhow::bail!(
            "  {} was accepted (built {}), expected an error containing {:?}",
            case.config.display(),
            built.image.display(),
            case.expect
        ),
        Err(err) => {
            let message = format!("{err:#}");
            anyhow::ensure!(
                message.contains(&case.expect),
                "  {} failed, but without {:?}; the error was:\n{}",
                case.config.display(),
                case.expect,
                qemu::indent(&message)
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "bulkhead: 2 VMs\n[safety] hello\n[infotainment] hi\nall VMs stopped\n";

    #[test]
    fn expectations_in_order_pass() {
        let expect = [
            "bulkhead: ",
            "[safety] ",
            "[infotainment] ",
            "all VMs stopped",
        ];
        assert_eq!(check_log(LOG, &expect, FORBID), vec![]);
    }

    #[test]
    fn expectation_out_of_order_is_missing() {
        let expect = ["[infotainment] ", "[safety] "];
        assert_eq!(
            check_log(LOG, &expect, FORBID),
            vec![Mismatch::Missing {
                index: 1,
                text: "[safety] ".into()
            }]
        );
    }

    #[test]
    fn expectation_cannot_reuse_the_previous_match() {
        // One "PASS" in the log cannot satisfy two expectations.
        assert_eq!(
            check_log("PASS\n", &["PASS", "PASS"], &[]),
            vec![Mismatch::Missing {
                index: 1,
                text: "PASS".into()
            }]
        );
    }

    #[test]
    fn only_the_first_missing_expectation_is_reported() {
        let found = check_log(LOG, &["nope", "also nope"], &[]);
        assert_eq!(
            found,
            vec![Mismatch::Missing {
                index: 0,
                text: "nope".into()
            }]
        );
    }

    #[test]
    fn forbidden_text_reports_its_line() {
        let log = "[victim] ok\n[victim] FAIL read 0x1234\n";
        assert_eq!(
            check_log(log, &[], FORBID),
            vec![Mismatch::Forbidden {
                text: "FAIL".into(),
                line: "[victim] FAIL read 0x1234".into()
            }]
        );
    }

    #[test]
    fn expect_comment_is_read_from_the_first_line_only() {
        assert_eq!(
            expect_comment("# expect: overlap.toml:12: vm[1].host_address\n[board]\n"),
            Some("overlap.toml:12: vm[1].host_address")
        );
        assert_eq!(expect_comment("[board]\n# expect: x\n"), None);
        assert_eq!(expect_comment("# expect:   \n"), None);
    }

    #[test]
    fn image_too_big_line_points_at_memory() {
        let line = IMAGE_TOO_BIG
            .lines()
            .nth(IMAGE_TOO_BIG_MEMORY_LINE - 1)
            .unwrap();
        assert!(line.starts_with("memory"), "{line}");
    }

    #[test]
    fn linux_rejection_lines_point_at_the_offending_key() {
        for (name, text, expect) in LINUX_REJECTIONS {
            let (line, rest) = expect.split_once(": ").unwrap();
            let key = rest.split('.').nth(1).unwrap().split(':').next().unwrap();
            let at: usize = line.parse().unwrap();
            let text_line = text.lines().nth(at - 1).unwrap();
            assert!(
                text_line.starts_with(key),
                "{name}: line {at} is {text_line:?}"
            );
        }
    }

    #[test]
    fn linux_cases_expect_their_cpu_count_and_forbid_kernel_trouble() {
        let case = CASES.iter().find(|c| c.name == "linux_4cpu").unwrap();
        assert_eq!(case.expect[0], "[linux] BULKHEAD-TEST cpus=4");
        assert!(case
            .expect
            .contains(&"[linux] BULKHEAD-TEST workload-ok (4 workers)"));
        assert_eq!(
            *case.expect.last().unwrap(),
            "all VMs stopped, powering off"
        );
        assert!(case.forbid.contains(&"Kernel panic"));
    }

    #[test]
    fn every_case_config_and_linux_config_parses_and_init_scripts_exist() {
        let root = crate::repo_root();
        let extra = ["configs/bench-linux.toml", "configs/linux-shell.toml"];
        for config in CASES.iter().map(|c| c.config).chain(extra) {
            let parsed = bulkhead_config::toml::load(&root.join(config))
                .unwrap_or_else(|d| panic!("{config}: {d:#?}"));
            for source in &parsed.images {
                if let bulkhead_config::toml::ImageSource::Initramfs(init) = source {
                    let script = std::fs::read_to_string(init).unwrap();
                    assert!(
                        script.starts_with("#!/bin/busybox sh\n"),
                        "{}",
                        init.display()
                    );
                }
            }
        }
    }

    #[test]
    fn hv_features_name_real_cases_and_features() {
        let manifest =
            std::fs::read_to_string(crate::repo_root().join("hypervisor/Cargo.toml")).unwrap();
        for (case, features) in HV_FEATURES {
            assert!(CASES.iter().any(|c| c.name == *case), "no case {case}");
            for f in *features {
                assert!(
                    manifest.contains(&format!("\n{f} = ")),
                    "{case}: hypervisor/Cargo.toml has no feature {f}"
                );
            }
        }
        assert_eq!(hv_features("stack_guard"), ["selftest-stack-overflow"]);
        assert!(hv_features("two_vms").is_empty());
    }

    #[test]
    fn disk_check_wants_ext4_from_the_pinned_e2fsprogs() {
        let line = |v: &str, f: &str| {
            format!("[store] BULKHEAD-TEST store-root: ext4 made by e2fsprogs {v}, features: {f}\n")
        };
        let lock = crate::debian::Lock::load().unwrap();
        let pinned = upstream_version(&lock.e2fsprogs_pin("e2fsprogs").unwrap().version);
        let err = |log: &str| disk_checks(log).unwrap_err();
        assert!(err("").contains("never said it made ext4"));
        let e = err(&line("0.9", "has_journal extent"));
        assert!(e.contains(&format!("pinned one {pinned}")), "{e}");
        let e = err(&line(pinned, "has_journal ext_attr filetype"));
        assert!(e.contains("lacks extent"), "{e}");
        let e = err(&line(pinned, "ext_attr filetype extent"));
        assert!(e.contains("lacks has_journal"), "{e}");
        // Past the guest's line, the next check is the checksums.
        let e = err(&line(pinned, "has_journal extent 64bit"));
        assert!(e.contains("checksums before/after reboot"), "{e}");
        assert_eq!(upstream_version("1.47.0-2+b2"), "1.47.0");
        assert_eq!(upstream_version("1:1.35.0-4+deb12u1+b1"), "1.35.0");
        assert_eq!(upstream_version("2.0"), "2.0");
    }

    #[test]
    fn paste_payload_is_one_printable_line() {
        assert_eq!(PASTE.len(), 8192);
        assert!(PASTE.bytes().all(|b| (0x20..0x7f).contains(&b)));
        let case = CASES.iter().find(|c| c.name == "paste").unwrap();
        assert!(case.expect.contains(&"[linux] paste-bytes=8192"));
        assert!(LOG_CHECKS
            .iter()
            .all(|(name, _)| CASES.iter().any(|c| c.name == *name)));
        let good = format!(
            "[linux] {}  /tmp/p\n",
            crate::debian::sha256_hex(PASTE.as_bytes())
        );
        assert_eq!(paste_arrived(&good), Ok(()));
        assert!(paste_arrived("[linux] 00  /tmp/p\n").is_err());
        assert!(paste_arrived("").is_err());
    }

    #[test]
    fn sched_tables_parse_and_shares_are_judged() {
        let table = |now: u64, rt: [u64; 6]| {
            let mut t = format!("pool 'general': pCPUs [1, 2], now_us {now}\n");
            t.push_str("  pCPU 1   running a/0   queued 1   load 512    busy_us 9\n");
            t.push_str("[b] a line of another VM between the rows\n");
            for (i, vm) in ["a/0", "a/1", "b/0", "b/1", "c/0", "c/1"]
                .iter()
                .enumerate()
            {
                t.push_str(&format!(
                    "  {vm:<20} running       1    256    - {:>12}            -\n",
                    rt[i]
                ));
            }
            t
        };
        let fair = [0, 0, 0, 0, 0, 0];
        let busy = [250, 250, 250, 250, 500, 500];
        let idle = [252, 252, 252, 252, 502, 502];
        let log = [
            table(0, fair),
            table(1000, busy),
            table(2000, busy),
            table(3000, idle),
            "t=1s periods=1000 misses=0 (0 from the host)\n".into(),
        ]
        .concat();
        let r = sched_readings(&log, "general", 6);
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].now_us, 1000);
        assert_eq!(sched_deltas(&r[0], &r[1])[2], ("c".to_owned(), 1000));
        assert_eq!(sched_shares(&log), Ok(()));
        // c with a's share, a with c's.
        let unfair = log.replacen("500            -\n", "250            -\n", 2);
        assert!(sched_shares(&unfair).is_err());
        // 2 + 2 us of 1000 is 0.4%; 10 + 10 is 2%, too much for an idle VM.
        assert!(
            sched_shares(&log.replace("  502            -\n", "  510            -\n")).is_err()
        );
        assert!(sched_shares(&log.replace("misses=0 ", "misses=2 ")).is_err());
        assert!(sched_shares(&table(0, fair)).is_err());
    }

    #[test]
    fn disk_table_geometry_is_what_the_case_expects() {
        let root = crate::repo_root();
        let cfg = bulkhead_config::toml::load(&root.join("configs/test-disk-table.toml"))
            .unwrap()
            .config;
        let disk = &cfg.disks[0];
        assert!(
            disk.partitions.is_empty(),
            "the config must not lay the disk out"
        );
        // The table PREPARE writes reads back as the hypervisor logs it.
        let mut image = vec![0u8; disk.size as usize];
        for (at, piece) in build::gpt_pieces(disk, DISK_TABLE) {
            image[at as usize..at as usize + piece.len()].copy_from_slice(&piece);
        }
        let h = bulkhead_virtio::gpt::header(&image[512..1024]).unwrap();
        let at = h.entries_lba as usize * 512;
        let parts =
            bulkhead_virtio::gpt::partitions(&h, &image[at..at + h.entries_bytes()]).unwrap();
        let case = CASES.iter().find(|c| c.name == "disk_table").unwrap();
        for p in &parts {
            let line = format!(
                "disk0: partition '{}' sectors {}..={} ({} MiB)",
                p.name,
                p.first,
                p.last,
                p.sectors() >> 11
            );
            assert!(case.expect.contains(&line.as_str()), "{line}");
        }
        // Tenant's is "data"; claimant's "spare" overlaps squatter's
        // read-write slice, which keeps clear of "data".
        let slice = |vm: &str| {
            let vm = cfg.vms.iter().find(|v| v.name == vm).unwrap();
            vm.disks[0].clone()
        };
        assert_eq!(
            slice("tenant").partition.as_deref(),
            Some(parts[0].name.as_str())
        );
        assert_eq!(
            slice("claimant").partition.as_deref(),
            Some(parts[1].name.as_str())
        );
        let s = slice("squatter");
        let (first, last) = (s.offset / 512, (s.offset + s.size) / 512 - 1);
        assert!(!s.read_only && s.partition.is_none());
        assert!(first > parts[0].last && first >= parts[1].first && last <= parts[1].last);
        assert!(PREPARE
            .iter()
            .all(|(n, _)| CASES.iter().any(|c| c.name == *n)));
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
