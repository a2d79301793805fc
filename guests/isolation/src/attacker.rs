//! The attacker. It runs twice:
//!
//! * Boot 1 dirties its VM (a marker in `.data`, interrupts pended and never
//!   acknowledged, programmed priorities and routes, vCPU 1 spinning with
//!   interrupts masked) and asks firmware, through an SMC, for a
//!   SYSTEM_RESET: only this VM may restart.
//! * Boot 2 checks the restart was complete, then tries every class of
//!   attack, logging each attempt with the answer it got, and ends with
//!   SYSTEM_OFF through an SMC: only this VM may stop.
//!
//! Every attempt is counted; it counts as refused only if the answer is the
//! one the architecture (and Bulkhead's documented model of it) gives:
//! an injected abort, an undefined instruction, a PSCI/SMCCC error code,
//! RAZ/WI, or, for resource abuse, no effect outside this VM (the victim
//! judges that by its own pace and checks). Anything else is logged as a
//! `LEAK`, which fails the test.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_rt::{counter, gic, hvc, mmio_read32, mmio_write32, println, probe, psci, read64};
use guest_rt::{smc, vtimer, write64};

use crate::RAM;

const RAM_SIZE: usize = 0x20_0000;
const GICD: usize = gic::GICD;
/// This VM's redistributor frames: vCPU 0's RD_base and SGI_base.
const GICR: usize = gic::GICR;
const SGI_BASE: usize = GICR + 0x1_0000;
const UART: usize = guest_rt::UART;

// Distributor registers (GICv3 spec 12.9).
const CTLR: usize = 0x0000;
const TYPER: usize = 0x0004;
const IIDR: usize = 0x0008;
const TYPER2: usize = 0x000c;
const SETSPI_NSR: usize = 0x0040;
const IGROUPR: usize = 0x0080;
const ISENABLER: usize = 0x0100;
const ICENABLER: usize = 0x0180;
const ISPENDR: usize = 0x0200;
const ICPENDR: usize = 0x0280;
const ISACTIVER: usize = 0x0300;
const IPRIORITYR: usize = 0x0400;
const ICFGR: usize = 0x0c00;
const SGIR: usize = 0x0f00;
const IROUTER: usize = 0x6000;
const PIDR2: usize = 0xffe8;
/// GICD_CTLR after `gic::init_distributor`: ARE, DS, EnableGrp1.
const CTLR_ON: u32 = 0x52;
/// GICD_CTLR with both groups disabled (ARE and DS are fixed at 1).
const CTLR_OFF: u32 = 0x50;

/// The first INTID past this distributor's 96 SPIs.
const SPI_END: u32 = 128;
const VTIMER_INTID: u32 = 27;

/// In `.data`: boot 1 overwrites it; a fresh image brings it back.
static MARKER: AtomicU64 = AtomicU64::new(0x600d_1dea);

/// What vCPU 1 does when started.
static MODE: AtomicU32 = AtomicU32::new(0);
const MODE_CYCLE: u32 = 1;
const MODE_SPIN: u32 = 2;
/// vCPU 1 starts in MODE_CYCLE.
static STARTS: AtomicU32 = AtomicU32::new(0);
/// vCPU 1's loop count in MODE_SPIN.
static HEARTBEAT: AtomicU64 = AtomicU64::new(0);

/// Interrupts taken through the IRQ vector, by INTID (others in the last).
static IRQS: [AtomicU32; 129] = [const { AtomicU32::new(0) }; 129];

/// Attempts made and refused in this boot.
struct Tally {
    attempts: u32,
    refused: u32,
}

impl Tally {
    fn note(&mut self, class: &str, ok: bool, what: fmt::Arguments) {
        self.attempts += 1;
        if ok {
            self.refused += 1;
            println!("refused {class}: {what}");
        } else {
            println!("LEAK {class}: {what}");
        }
    }
}

macro_rules! note {
    ($t:expr, $class:expr, $ok:expr, $($arg:tt)*) => {
        $t.note($class, $ok, format_args!($($arg)*))
    };
}

// After `note!`, which it uses.
mod virtio;

/// What an attempt ended in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// It completed (the value it loaded, or 0).
    Done(u64),
    /// Undefined instruction (EC 0x00).
    Undef,
    /// Data abort at EL1 (EC 0x25) with this DFSC.
    Abort(u8),
    /// Anything else: the whole ESR.
    Other(u64),
}

/// DFSC of a synchronous external abort: what EL2 injects.
const EXTERNAL: u8 = 0x10;
/// DFSC of an alignment fault.
const ALIGNMENT: u8 = 0x21;

impl Out {
    fn injected_abort(self) -> bool {
        self == Out::Abort(EXTERNAL)
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Out::Done(v) => write!(f, "completed (value {v:#x})"),
            Out::Undef => write!(f, "undefined instruction (EC 0x0)"),
            Out::Abort(EXTERNAL) => {
                write!(f, "synchronous external abort injected by EL2 (EC 0x25, DFSC 0x10)")
            }
            Out::Abort(ALIGNMENT) => write!(
                f,
                "alignment fault at EL1 (EC 0x25, DFSC 0x21): Device memory with our MMU off, EL2 never sees it"
            ),
            Out::Abort(d @ 0..=3) => write!(
                f,
                "address size fault at EL1 (EC 0x25, DFSC {d:#x}): beyond the PA size, EL2 never sees it"
            ),
            Out::Abort(d) => write!(f, "data abort (EC 0x25, DFSC {d:#x})"),
            Out::Other(esr) => write!(f, "exception ESR {esr:#x}"),
        }
    }
}

fn attempt(f: impl FnOnce() -> u64) -> Out {
    match probe(f) {
        Ok(v) => Out::Done(v),
        Err(e) => match e.ec() {
            0 => Out::Undef,
            0x25 => Out::Abort((e.esr & 0x3f) as u8),
            _ => Out::Other(e.esr),
        },
    }
}

/// A closure reading system register `$reg` (probing it).
macro_rules! rd {
    ($reg:literal) => {
        || -> u64 {
            let v: u64;
            // SAFETY: reading a system register; a trap is caught by `probe`.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack)) };
            v
        }
    };
}

/// A closure writing `$v` to system register `$reg` (probing it).
macro_rules! wr {
    ($reg:literal, $v:expr) => {
        || -> u64 {
            let v: u64 = $v;
            // SAFETY: the registers named here are refused or have no effect
            // on this vCPU's memory; a trap is caught by `probe`.
            unsafe { core::arch::asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
            0
        }
    };
}

/// A closure executing the system instruction `$insn` with operand `$v`.
macro_rules! sys {
    ($insn:literal, $v:expr) => {
        || -> u64 {
            let v: u64 = $v;
            // SAFETY: the instruction traps (set/way maintenance); a trap is
            // caught by `probe`.
            unsafe { core::arch::asm!(concat!($insn, ", {}"), in(reg) v, options(nostack)) };
            0
        }
    };
}

fn rd32(off: usize) -> u32 {
    mmio_read32(GICD + off)
}

fn wr32(off: usize, v: u32) {
    mmio_write32(GICD + off, v)
}

/// Pseudo-random arguments (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn us(ticks: u64) -> u64 {
    // The counter runs at 1 GHz under QEMU `max`; close enough elsewhere.
    ticks / 1000
}

fn spin_for(ticks: u64) {
    let end = counter() + ticks;
    while counter() < end {
        guest_rt::relax();
    }
}

/// Acknowledges and completes everything deliverable (interrupts masked),
/// counting by INTID, until nothing has come for `settle` ticks.
fn drain(counts: &mut [u32; 129], settle: u64) -> u32 {
    let mut total = 0;
    let mut quiet = counter();
    loop {
        let id = gic::ack();
        if id < 1020 {
            counts[(id as usize).min(128)] += 1;
            gic::eoi(id);
            total += 1;
            quiet = counter();
        } else if counter() - quiet > settle {
            return total;
        }
    }
}

/// The first interrupt acknowledged within `ticks` (completed), or 1023.
fn ack_within(ticks: u64) -> u32 {
    let end = counter() + ticks;
    loop {
        let id = gic::ack();
        if id < 1020 {
            gic::eoi(id);
            return id;
        }
        if counter() > end {
            return 1023;
        }
    }
}

fn on_irq() {
    loop {
        let id = gic::ack();
        if id >= 1020 {
            return;
        }
        IRQS[(id as usize).min(128)].fetch_add(1, Ordering::Relaxed);
        gic::eoi(id);
    }
}

fn secondary(_index: usize) -> ! {
    match MODE.load(Ordering::SeqCst) {
        MODE_CYCLE => {
            STARTS.fetch_add(1, Ordering::SeqCst);
            guest_rt::cpu_off()
        }
        _ => spin_masked(),
    }
}

/// A vCPU that never exits on its own: every exception masked, no access
/// that traps, only stores to its own RAM.
fn spin_masked() -> ! {
    // SAFETY: masking exceptions at EL1 has no memory effects.
    unsafe { core::arch::asm!("msr daifset, #0xf", "isb", options(nomem, nostack)) };
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_add(1);
        HEARTBEAT.store(n, Ordering::Relaxed);
    }
}

fn cpu_on(fid: u32, target: u64, entry: u64) -> i64 {
    hvc(fid, target, entry, 1).0 as i64
}

/// Starts vCPU 1 spinning with interrupts masked and waits until it runs.
fn start_spinner() -> bool {
    MODE.store(MODE_SPIN, Ordering::SeqCst);
    let r = cpu_on(psci::CPU_ON, 1, guest_rt::secondary_entry());
    let before = HEARTBEAT.load(Ordering::Relaxed);
    let end = counter() + 200_000_000;
    while HEARTBEAT.load(Ordering::Relaxed) == before && counter() < end {
        guest_rt::relax();
    }
    r == psci::SUCCESS && HEARTBEAT.load(Ordering::Relaxed) != before
}

pub fn run() -> ! {
    guest_rt::set_secondary_main(secondary);
    guest_rt::set_irq_handler(on_irq);
    let (restarts, vcpu) = hvc(psci::BULKHEAD_VM_INFO, 0, 0, 0);
    match (restarts, vcpu) {
        (0, 0) => boot1(),
        (1, 0) => boot2(),
        _ => {
            println!("FAIL attacker: restart count {restarts} on vcpu {vcpu}");
            guest_rt::system_off()
        }
    }
}

/// Boot 1: leave as much state behind as possible, then reset by SMC.
fn boot1() -> ! {
    println!("boot 1: dirtying this VM, then PSCI SYSTEM_RESET through SMC");
    MARKER.store(0xbad, Ordering::SeqCst);
    gic::init_distributor();
    for w in 1..4 {
        wr32(IGROUPR + 4 * w, !0);
        wr32(IPRIORITYR + 0x20 + 4 * w, 0x1010_1010);
        wr32(ISENABLER + 4 * w, !0);
        wr32(ISPENDR + 4 * w, !0);
    }
    wr32(IROUTER + 8 * 40, 5);
    gic::init_cpu(0, 0xffff);
    for intid in 0..16 {
        gic::send_sgi(0, intid);
    }
    if !start_spinner() {
        println!("FAIL attacker: vcpu 1 did not start spinning");
    }
    println!(
        "boot 1: 96 SPIs and 16 SGIs pending and never acknowledged, priorities and a route changed, vcpu 1 spinning with interrupts masked; SYSTEM_RESET through SMC"
    );
    smc(psci::SYSTEM_RESET, 0, 0, 0);
    println!("FAIL attacker: SYSTEM_RESET through SMC returned");
    guest_rt::system_off()
}

fn boot2() -> ! {
    let mut t = Tally {
        attempts: 0,
        refused: 0,
    };
    println!("boot 2: the attack");
    after_reset(&mut t);
    memory(&mut t);
    fetch(&mut t);
    wfe(&mut t);
    power(&mut t);
    mmio(&mut t);
    gic_programming(&mut t);
    sgis(&mut t);
    smccc(&mut t);
    virtio::virtio(&mut t);
    sysregs(&mut t);
    wfi(&mut t);
    soak(&mut t);
    if t.refused == t.attempts {
        println!(
            "PASS isolation: {}/{} attempts refused",
            t.refused, t.attempts
        );
    } else {
        println!(
            "FAIL isolation: only {}/{} attempts refused",
            t.refused, t.attempts
        );
    }
    println!("PSCI SYSTEM_OFF through SMC: only this VM may stop");
    smc(psci::SYSTEM_OFF, 0, 0, 0);
    println!("FAIL attacker: SYSTEM_OFF through SMC returned");
    guest_rt::system_off()
}

/// The SMC SYSTEM_RESET of boot 1 restarted this VM, completely.
fn after_reset(t: &mut Tally) {
    const C: &str = "smc-reset";
    note!(
        t,
        C,
        true,
        "PSCI SYSTEM_RESET through SMC restarted this VM (restart count 1 from BULKHEAD_VM_INFO)"
    );
    let m = MARKER.load(Ordering::SeqCst);
    note!(
        t,
        C,
        m == 0x600d_1dea,
        "restart loaded a fresh image: .data marker {m:#x} (boot 1 wrote 0xbad)"
    );
    let ctlr = rd32(CTLR);
    let mut dirty = 0;
    for w in 1..4 {
        for base in [ISENABLER, ISPENDR, ISACTIVER] {
            dirty |= rd32(base + 4 * w);
        }
        dirty |= rd32(IPRIORITYR + 0x20 + 4 * w);
    }
    let route = rd32(IROUTER + 8 * 40);
    let sgis = mmio_read32(SGI_BASE + ISPENDR) | mmio_read32(SGI_BASE + ISENABLER);
    let asleep = mmio_read32(GICR + 0x14) & 0b110 == 0b110;
    note!(
        t,
        C,
        ctlr == CTLR_OFF && dirty == 0 && route == 0 && sgis == 0 && asleep,
        "vGIC back at reset: GICD_CTLR {ctlr:#x}, SPI enable/pending/active/priority bits {dirty:#x}, INTID 40 route {route:#x}, SGI pending|enabled {sgis:#x}, redistributor asleep {asleep}"
    );
    let (off, _) = hvc(psci::AFFINITY_INFO, 1, 0, 0);
    note!(
        t,
        C,
        off == 1,
        "vcpu 1, left spinning with interrupts masked, is off after the restart (AFFINITY_INFO {})",
        off as i64
    );
}

/// Addresses the attacker has no right to: (what, IPA).
const TARGETS: &[(&str, usize)] = &[
    ("victim RAM (host PA 0x50000000)", 0x5000_0000),
    ("victim pattern buffer", 0x5010_0000),
    ("hypervisor image (host PA 0x40200000)", 0x4020_0000),
    ("hypervisor heap region", 0x4100_0000),
    ("top of board RAM", 0x7fff_f000),
    ("above board RAM", 0x8000_0000),
    ("GIC ITS (not emulated)", 0x0808_0000),
    ("GICv2 CPU interface frame", 0x0801_0000),
    ("GICv2 hypervisor control frame", 0x0803_0000),
    ("GICv2 virtual CPU interface frame", 0x0804_0000),
    ("physical redistributor of cpu2 (the victim's)", 0x080e_0000),
    ("SGI frame of cpu2's redistributor", 0x080f_0000),
    ("physical redistributor of cpu3", 0x0810_0000),
    (
        "past the virtual UART page (the physical UART is not mapped)",
        0x0900_1000,
    ),
    ("PL031 RTC (passed through to the victim)", 0x0901_0000),
    ("fw_cfg", 0x0902_0000),
    ("PL061 GPIO", 0x0903_0000),
    ("virtio-mmio transports past our one device", 0x0a00_0400),
    ("PCIe MMIO window", 0x1000_0000),
    ("PCIe ECAM window", 0x3f00_0000),
    ("flash", 0x0000_0000),
    ("end of the IPA space", 0x7f_ffff_f000),
    ("just past the IPA space", 0x80_0000_0000),
];

fn memory(t: &mut Tally) {
    const C: &str = "memory";
    // Sanity: our own RAM works.
    let own = attempt(|| {
        write64(RAM + 0x10_0000, 0x55);
        read64(RAM + 0x10_0000)
    });
    if own != Out::Done(0x55) {
        println!("FAIL attacker: own RAM not usable: {own}");
        guest_rt::system_off();
    }
    for &(what, ipa) in TARGETS {
        let r = attempt(|| read64(ipa));
        note!(t, C, r.injected_abort(), "read {what} at {ipa:#x}: {r}");
        let w = attempt(|| {
            write64(ipa, 0xbad0_bad0);
            0
        });
        note!(t, C, w.injected_abort(), "write {what} at {ipa:#x}: {w}");
    }
    // A VA wider than the PA size: stage 1 (MMU off) refuses it at EL1.
    let va = 0xffff_0000_0000_0000usize;
    let r = attempt(|| read64(va));
    note!(t, C, matches!(r, Out::Abort(0..=3)), "read {va:#x}: {r}");
}

core::arch::global_asm!(
    ".pushsection .text.isolation_vectors, \"ax\"",
    ".balign 2048",
    ".global isolation_fetch_vectors",
    "isolation_fetch_vectors:",
    ".rept 4",
    ".balign 0x80",
    "b .",
    ".endr",
    // Current EL with SP_ELx, synchronous: record ESR in x9, return to the
    // caller of the faulting branch (x30).
    ".balign 0x80",
    "mrs x9, esr_el1",
    "msr elr_el1, x30",
    "eret",
    ".rept 11",
    ".balign 0x80",
    "b .",
    ".endr",
    ".popsection",
);

/// Branches to `target` with every exception masked and a private vector
/// table: an instruction abort returns here. The ESR taken (0 if the
/// branch returned normally).
fn fetch_from(target: usize) -> u64 {
    let esr: u64;
    // SAFETY: `target` is outside our RAM, so it cannot run: the fetch
    // faults, the private vector puts the return address in ELR_EL1 and
    // comes back; VBAR_EL1 and DAIF are restored. x9 and x30 are clobbered.
    unsafe {
        core::arch::asm!(
            "mrs {daif}, daif",
            "msr daifset, #0xf",
            "mrs {old}, vbar_el1",
            "adrp {tmp}, isolation_fetch_vectors",
            "add {tmp}, {tmp}, :lo12:isolation_fetch_vectors",
            "msr vbar_el1, {tmp}",
            "isb",
            "mov x9, xzr",
            "blr {target}",
            "msr vbar_el1, {old}",
            "isb",
            "msr daif, {daif}",
            daif = out(reg) _,
            old = out(reg) _,
            tmp = out(reg) _,
            target = in(reg) target,
            out("x9") esr,
            out("x30") _,
            options(nostack)
        )
    };
    esr
}

fn fetch(t: &mut Tally) {
    const C: &str = "fetch";
    for (what, ipa) in [
        ("victim RAM", 0x5000_0000usize),
        ("hypervisor image", 0x4020_0000),
        ("the emulated GIC distributor", GICD),
        ("the virtual UART", UART),
    ] {
        let esr = fetch_from(ipa);
        note!(
            t,
            C,
            esr >> 26 == 0x21 && esr & 0x3f == 0x10,
            "instruction fetch from {what} at {ipa:#x}: instruction abort injected by EL2 (ESR {esr:#x}, EC 0x21, IFSC 0x10)"
        );
    }
}

fn power(t: &mut Tally) {
    const C: &str = "psci";
    let entry = guest_rt::secondary_entry();
    for (what, fid, bad) in [
        ("in the victim's RAM", psci::CPU_ON, 0x5000_0000u64),
        ("just past our RAM", psci::CPU_ON, (RAM + RAM_SIZE) as u64),
        ("just below our RAM", psci::CPU_ON, RAM as u64 - 4),
        ("unaligned", psci::CPU_ON, entry + 2),
        ("0", psci::CPU_ON, 0),
        ("all ones", psci::CPU_ON, u64::MAX),
        (
            "in the victim's RAM, SMC32 CPU_ON",
            0x8400_0003,
            0x5000_0000,
        ),
    ] {
        let r = cpu_on(fid, 1, bad);
        note!(
            t,
            C,
            r == psci::INVALID_ADDRESS,
            "CPU_ON(vcpu 1) with entry point {what} ({bad:#x}): {r} (INVALID_ADDRESS is -9)"
        );
    }
    let r = cpu_on(psci::CPU_ON, 0, entry);
    note!(
        t,
        C,
        r == psci::ALREADY_ON,
        "CPU_ON of the calling vCPU, which is on: {r} (ALREADY_ON is -4)"
    );
    for target in [2u64, 3, 15, 0xff, 0x100, 0x1_0000, 0x1_0000_0000, u64::MAX] {
        let r = cpu_on(psci::CPU_ON, target, entry);
        note!(
            t,
            C,
            r == psci::INVALID_PARAMETERS,
            "CPU_ON of MPIDR {target:#x}, which no vCPU has: {r} (INVALID_PARAMETERS is -2)"
        );
    }
    let r = hvc(psci::AFFINITY_INFO, 2, 0, 0).0 as i64;
    let l = hvc(psci::AFFINITY_INFO, 1, 1, 0).0 as i64;
    note!(
        t,
        C,
        r == psci::INVALID_PARAMETERS && l == psci::INVALID_PARAMETERS,
        "AFFINITY_INFO of an absent vCPU: {r}; at affinity level 1: {l} (both INVALID_PARAMETERS)"
    );

    // A tight loop: CPU_ON(1) hammered while vCPU 1 starts, runs and turns
    // itself off again, 32 times.
    MODE.store(MODE_CYCLE, Ordering::SeqCst);
    let (mut busy, mut wrong) = (0u32, 0u32);
    let t0 = counter();
    'cycles: for _ in 0..32 {
        loop {
            match cpu_on(psci::CPU_ON, 1, entry) {
                psci::SUCCESS => break,
                // ALREADY_ON, ON_PENDING.
                -4 | -5 => busy += 1,
                _ => {
                    wrong += 1;
                    break 'cycles;
                }
            }
        }
    }
    let end = counter() + 500_000_000;
    while (STARTS.load(Ordering::SeqCst) < 32 || hvc(psci::AFFINITY_INFO, 1, 0, 0).0 != 1)
        && counter() < end
    {
        guest_rt::relax();
    }
    let starts = STARTS.load(Ordering::SeqCst);
    note!(
        t,
        C,
        wrong == 0 && starts == 32,
        "CPU_ON in a tight loop: 32 starts of vcpu 1 (it ran {starts} times), {busy} calls answered ALREADY_ON/ON_PENDING meanwhile, {wrong} other answers, in {} us",
        us(counter() - t0)
    );
    // From here on vCPU 1 never exits on its own.
    let spinning = start_spinner();
    note!(
        t,
        C,
        spinning,
        "vcpu 1 started spinning with every interrupt masked: it never exits on its own from now on"
    );
}

fn ldp(addr: usize) -> u64 {
    let (a, b): (u64, u64);
    // SAFETY: deliberately faulting probe of an emulated device.
    unsafe {
        core::arch::asm!("ldp {}, {}, [{}]", out(reg) a, out(reg) b, in(reg) addr, options(nostack))
    };
    a ^ b
}

fn stp(addr: usize) -> u64 {
    // SAFETY: as for `ldp`.
    unsafe {
        core::arch::asm!("stp {0:w}, {0:w}, [{1}]", in(reg) 0x41u64, in(reg) addr, options(nostack))
    };
    0
}

/// `ldr w, [base, #4]!`: the loaded value and the base afterwards.
fn ldr_pre(addr: usize) -> (u64, usize) {
    let mut base = addr;
    let v: u32;
    // SAFETY: as for `ldp`.
    unsafe {
        core::arch::asm!("ldr {v:w}, [{b}, #4]!", v = out(reg) v, b = inout(reg) base, options(nostack))
    };
    (u64::from(v), base)
}

/// `str w, [base], #4`: the base afterwards.
fn str_post(addr: usize) -> usize {
    let mut base = addr;
    // SAFETY: as for `ldp`.
    unsafe {
        core::arch::asm!("str {v:w}, [{b}], #4", v = in(reg) 0x42u32, b = inout(reg) base, options(nostack))
    };
    base
}

fn ldr_q(addr: usize) -> u64 {
    // `ldr q0, [x0]`, encoded by hand (this target has no FP registers for
    // the compiler; v0 is never used by compiled code). It faults.
    // SAFETY: as for `ldp`.
    unsafe { core::arch::asm!(".inst 0x3dc00000", in("x0") addr, options(nostack)) };
    0
}

fn ldadd(addr: usize) -> u64 {
    let old: u64;
    // `ldadd w1, w2, [x0]` (FEAT_LSE), encoded by hand.
    // SAFETY: as for `ldp`.
    unsafe {
        core::arch::asm!(".inst 0xb8210002", in("x0") addr, in("x1") 1u64, out("x2") old, options(nostack))
    };
    old
}

fn ldr8(addr: usize) -> u64 {
    read64(addr)
}

fn str8(addr: usize, v: u64) -> u64 {
    write64(addr, v);
    0
}

fn ldrb(addr: usize) -> u64 {
    let v: u32;
    // SAFETY: as for `ldp`.
    unsafe { core::arch::asm!("ldrb {0:w}, [{1}]", out(reg) v, in(reg) addr, options(nostack)) };
    u64::from(v)
}

fn strb(addr: usize, v: u8) -> u64 {
    // SAFETY: as for `ldp`.
    unsafe {
        core::arch::asm!("strb {0:w}, [{1}]", in(reg) u32::from(v), in(reg) addr, options(nostack))
    };
    0
}

fn ldrh(addr: usize) -> u64 {
    let v: u32;
    // SAFETY: as for `ldp`.
    unsafe { core::arch::asm!("ldrh {0:w}, [{1}]", out(reg) v, in(reg) addr, options(nostack)) };
    u64::from(v)
}

fn ldr32(addr: usize) -> u64 {
    u64::from(mmio_read32(addr))
}

fn mmio(t: &mut Tally) {
    const C: &str = "mmio";
    gic::init_distributor();
    for (what, r) in [
        (
            "load pair (ldp) from the GIC distributor",
            attempt(|| ldp(GICD)),
        ),
        (
            "store pair (stp) to GICD_ISENABLER1",
            attempt(|| stp(GICD + ISENABLER + 4)),
        ),
        ("load pair (ldp) from the UART", attempt(|| ldp(UART))),
        (
            "store pair (stp) to the UART's data register",
            attempt(|| stp(UART)),
        ),
        (
            "SIMD load (ldr q0) from the GIC distributor",
            attempt(|| ldr_q(GICD)),
        ),
        (
            "atomic add (ldadd) on GICD_ISENABLER1",
            attempt(|| ldadd(GICD + ISENABLER + 4)),
        ),
        (
            "8-byte read straddling the end of the UART page",
            attempt(|| ldr8(UART + 0xffc)),
        ),
    ] {
        note!(t, C, r.injected_abort(), "{what}: {r}");
    }
    let mut base = 0;
    let r = attempt(|| {
        let (v, b) = ldr_pre(GICD);
        base = b;
        v
    });
    note!(
        t,
        C,
        r.injected_abort() && base == GICD,
        "pre-index load (ldr w, [x, #4]!) from the GIC distributor: {r}; base register not written back"
    );
    let mut base = 0;
    let r = attempt(|| {
        base = str_post(UART);
        0
    });
    note!(
        t,
        C,
        r.injected_abort() && base == UART,
        "post-index store (str w, [x], #4) to the UART: {r}; base register not written back"
    );
    // Sizes the distributor does not have: RAZ/WI, GICD_CTLR unchanged.
    let ctlr = rd32(CTLR);
    let r = attempt(|| ldr8(GICD + CTLR));
    note!(
        t,
        C,
        r == Out::Done(0) && ctlr == CTLR_ON,
        "8-byte read of GICD_CTLR (a 32-bit register, which reads {ctlr:#x}): {r} (RAZ)"
    );
    let r = attempt(|| str8(GICD + CTLR, 0));
    let after = rd32(CTLR);
    note!(
        t,
        C,
        r == Out::Done(0) && after == CTLR_ON,
        "8-byte write of 0 to GICD_CTLR: {r}; GICD_CTLR still {after:#x} (WI)"
    );
    let r = attempt(|| strb(GICD + CTLR, 0));
    let after = rd32(CTLR);
    note!(
        t,
        C,
        r == Out::Done(0) && after == CTLR_ON,
        "1-byte write of 0 to GICD_CTLR: {r}; GICD_CTLR still {after:#x} (WI)"
    );
    let r = attempt(|| ldrb(GICD + TYPER));
    note!(
        t,
        C,
        r == Out::Done(0),
        "1-byte read of GICD_TYPER: {r} (RAZ)"
    );
    let r = attempt(|| ldrh(GICD + IIDR));
    note!(
        t,
        C,
        r == Out::Done(0),
        "2-byte read of GICD_IIDR: {r} (RAZ)"
    );
    // Unaligned. With our MMU off every access is to Device memory, where
    // an unaligned access takes an alignment fault at EL1 (as it does in our
    // own RAM). QEMU checks that only after stage 2, so for an emulated
    // device the access reaches EL2 with a valid syndrome, and the device
    // model answers: both are accepted, as long as nothing changes.
    let own = attempt(|| ldr32(RAM + 0x10_0001));
    let r = attempt(|| ldr32(GICD + 2));
    note!(
        t,
        C,
        r == Out::Abort(ALIGNMENT) || r == Out::Done(0),
        "unaligned 32-bit read of the GIC distributor at {:#x}: {r}{} (in our own RAM: {own})",
        GICD + 2,
        if r == Out::Done(0) {
            ", i.e. it reached EL2 and the vGIC answered RAZ"
        } else {
            ""
        }
    );
    let w = attempt(|| {
        mmio_write32(GICD + 1, 0);
        0
    });
    let ctlr = rd32(CTLR);
    note!(
        t,
        C,
        (w == Out::Abort(ALIGNMENT) || w == Out::Done(0)) && ctlr == CTLR_ON,
        "unaligned 32-bit write of 0 to the GIC distributor at {:#x}: {w}; GICD_CTLR still {ctlr:#x} (WI)",
        GICD + 1
    );
    let r = attempt(|| ldr32(UART + 1));
    note!(
        t,
        C,
        r == Out::Abort(ALIGNMENT) || r == Out::Done(0),
        "unaligned 32-bit read of the UART at {:#x}: {r}{}",
        UART + 1,
        if r == Out::Done(0) {
            ", i.e. it reached EL2 and the PL011 model read the byte lanes (data register upper bytes and status: 0, receive FIFO not popped)"
        } else {
            ""
        }
    );
}

fn bit(base: usize, intid: u32) -> bool {
    rd32(base + 4 * (intid as usize / 32)) & (1 << (intid % 32)) != 0
}

fn set_bit(base: usize, intid: u32) {
    wr32(base + 4 * (intid as usize / 32), 1 << (intid % 32));
}

fn gic_programming(t: &mut Tally) {
    const C: &str = "gic";
    gic::init_distributor();
    for w in 1..4 {
        wr32(IGROUPR + 4 * w, !0);
    }
    gic::init_cpu(0, 0xffff);
    gic::disable_irqs();
    let iidr = rd32(IIDR);
    note!(
        t,
        C,
        iidr == 0x4200_043b,
        "the GIC distributor at {GICD:#x} is the virtual one (IIDR {iidr:#x}): the physical distributor is out of reach"
    );

    // The victim's interrupt: INTID 34, the RTC's SPI.
    set_bit(ISENABLER, 34);
    set_bit(ISPENDR, 34);
    let got = ack_within(1_000_000);
    set_bit(ICENABLER, 34);
    note!(
        t,
        C,
        got == 34,
        "enable + pend INTID 34 (the RTC's SPI, passed through to the victim): only this VM's own virtual INTID 34 changed; acknowledged here as {got}, no hardware behind it (the victim checks its own INTID 34 at its end)"
    );

    // Interrupts nobody has: beyond the implemented SPIs, and INTID 1019.
    for intid in [200u32, 1019] {
        set_bit(ISENABLER, intid);
        set_bit(ISPENDR, intid);
        set_bit(ISACTIVER, intid);
        wr32(IPRIORITYR + (intid as usize & !3), 0x8080_8080);
        wr32(IROUTER + 8 * intid as usize, 1);
        let e = bit(ISENABLER, intid);
        let p = bit(ISPENDR, intid);
        let a = bit(ISACTIVER, intid);
        let prio = rd32(IPRIORITYR + (intid as usize & !3));
        let route = rd32(IROUTER + 8 * intid as usize);
        note!(
            t,
            C,
            !e && !p && !a && prio == 0 && route == 0,
            "INTID {intid} (no such SPI here, nobody's): enable {e}, pending {p}, active {a}, priority {prio:#x}, route {route:#x} read back (RAZ/WI)"
        );
    }
    wr32(ISENABLER, !0);
    let banked = rd32(ISENABLER);
    let sgis = mmio_read32(SGI_BASE + ISENABLER);
    note!(
        t,
        C,
        banked == 0 && sgis == 0xffff,
        "GICD_ISENABLER0 (SGIs/PPIs, which live in the redistributors with ARE = 1) written with all ones: reads {banked:#x}; GICR_ISENABLER0 still {sgis:#x}"
    );

    // An SPI routed to a CPU that does not exist stays pending, delivered
    // to nobody; routed back, it arrives.
    set_bit(ISENABLER, 40);
    for (what, lo, hi) in [("0.0.0.5 (vcpu 5)", 5u32, 0u32), ("1.0.0.0 (Aff3 1)", 0, 1)] {
        wr32(IROUTER + 8 * 40, lo);
        wr32(IROUTER + 8 * 40 + 4, hi);
        set_bit(ISPENDR, 40);
        let (rlo, rhi) = (rd32(IROUTER + 8 * 40), rd32(IROUTER + 8 * 40 + 4));
        let got = ack_within(500_000);
        let pending = bit(ISPENDR, 40);
        note!(
            t,
            C,
            (rlo, rhi) == (lo, hi) && got == 1023 && pending,
            "INTID 40 routed to affinity {what}, which no vCPU has: IROUTER reads {:#x}, still pending {pending}, delivered to nobody (acknowledge gives {got})",
            u64::from(rhi) << 32 | u64::from(rlo)
        );
    }
    wr32(IROUTER + 8 * 40 + 4, 0);
    wr32(IROUTER + 8 * 40, 0);
    let got = ack_within(1_000_000);
    set_bit(ICENABLER, 40);
    note!(
        t,
        C,
        got == 40,
        "INTID 40 routed back to vcpu 0 is delivered at once (acknowledged {got}): the pending state was kept, not lost"
    );

    // Priorities beyond the five implemented bits.
    for (what, addr, value, want) in [
        (
            "GICD_IPRIORITYR byte of INTID 41",
            GICD + IPRIORITYR + 41,
            0xffu8,
            0xf8u64,
        ),
        (
            "GICD_IPRIORITYR byte of INTID 41",
            GICD + IPRIORITYR + 41,
            0x07,
            0x00,
        ),
        (
            "GICR_IPRIORITYR byte of SGI 0",
            SGI_BASE + IPRIORITYR,
            0xff,
            0xf8,
        ),
    ] {
        let w = attempt(|| strb(addr, value));
        let r = attempt(|| ldrb(addr));
        note!(
            t,
            C,
            w == Out::Done(0) && r == Out::Done(want),
            "{what} written {value:#x}: reads {r} (only 5 priority bits exist)"
        );
    }
    wr32(IPRIORITYR + 44, !0);
    let p = rd32(IPRIORITYR + 44);
    note!(
        t,
        C,
        p == 0xf8f8_f8f8,
        "GICD_IPRIORITYR word of INTIDs 44-47 written 0xffffffff: reads {p:#x}"
    );
    // Back to priorities that are not masked by ICC_PMR_EL1 = 0xff (whose
    // 5 implemented bits mask priority 0xf8 itself): the runtime's 0x80 for
    // SGI 0, reset value 0 for the SPIs.
    let _ = attempt(|| strb(SGI_BASE + IPRIORITYR, 0x80));
    wr32(IPRIORITYR + 40, 0);
    wr32(IPRIORITYR + 44, 0);

    // Read-only registers.
    for (what, addr) in [
        ("GICD_TYPER", GICD + TYPER),
        ("GICD_IIDR", GICD + IIDR),
        ("GICD_TYPER2", GICD + TYPER2),
        ("GICD_PIDR2", GICD + PIDR2),
        ("GICR_IIDR", GICR + 0x4),
        ("GICR_TYPER (low half)", GICR + 0x8),
        ("GICR_TYPER (high half: affinity)", GICR + 0xc),
        (
            "GICR_ICFGR0 (SGIs are always edge-triggered)",
            SGI_BASE + ICFGR,
        ),
    ] {
        let before = mmio_read32(addr);
        mmio_write32(addr, !before);
        let after = mmio_read32(addr);
        note!(
            t,
            C,
            after == before,
            "read-only {what} ({before:#x}) written {:#x}: reads {after:#x} (WI)",
            !before
        );
    }
    wr32(CTLR, 0x3);
    let ctlr = rd32(CTLR);
    note!(
        t,
        C,
        ctlr == 0x53,
        "GICD_CTLR written 0x3 (ARE and DS cleared, Group 0 enabled): reads {ctlr:#x}: ARE and DS stay 1"
    );
    wr32(CTLR, CTLR_ON);

    // Old and message-based ways to raise interrupts: not implemented.
    wr32(SGIR, 0x00ff_8005);
    let got = ack_within(500_000);
    note!(
        t,
        C,
        got == 1023,
        "GICD_SGIR (GICv2 SGI generation, all CPUs, SGI 5): ignored with ARE = 1, nothing delivered ({got})"
    );
    set_bit(ISENABLER, 42);
    wr32(SETSPI_NSR, 42);
    let pending = bit(ISPENDR, 42);
    let got = ack_within(500_000);
    set_bit(ICENABLER, 42);
    note!(
        t,
        C,
        !pending && got == 1023,
        "GICD_SETSPI_NSR of INTID 42 (message-based SPIs, which GICD_TYPER.MBIS says are absent): ignored, pending {pending}, nothing delivered ({got})"
    );

    // Read back: nothing beyond this distributor's SPIs holds any state.
    let mut stray = 0;
    for w in (SPI_END / 32) as usize..32 {
        for base in [IGROUPR, ISENABLER, ISPENDR, ISACTIVER] {
            stray |= rd32(base + 4 * w);
        }
    }
    note!(
        t,
        C,
        stray == 0,
        "every group/enable/pending/active word for INTIDs {SPI_END}-1023 reads {stray:#x}"
    );

    // Switch it all off: only this VM's interrupts go quiet.
    wr32(CTLR, 0);
    for w in 1..32 {
        wr32(ICENABLER + 4 * w, !0);
        wr32(ICPENDR + 4 * w, !0);
    }
    let ctlr = rd32(CTLR);
    note!(
        t,
        C,
        ctlr == CTLR_OFF,
        "disabled this VM's distributor (GICD_CTLR {ctlr:#x}) and every SPI: the victim keeps its timer and checks its own distributor at its end"
    );
}

fn sgi1r(v: u64) {
    // SAFETY: generating an SGI (trapped to EL2).
    unsafe {
        core::arch::asm!("dsb ish", "msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack))
    };
}

fn sgis(t: &mut Tally) {
    const C: &str = "sgi";
    gic::init_distributor();
    gic::init_cpu(0, 0xffff);
    gic::disable_irqs();
    let sgi7 = 7u64 << 24;
    for (what, v) in [
        ("target list vcpus 2-15 (Aff1 0)", 0xfffc),
        ("Aff1 1 (vcpus 16-31)", 1 << 16 | 0xffff),
        ("Aff1 255", 255 << 16 | 0xffff),
        ("Aff2 1", 1 << 32 | 0xffff),
        ("Aff3 1", 1 << 48 | 0xffff),
        ("range selector 1 (Aff0 16-31)", 1 << 44 | 0xffff),
        ("an empty target list", 0),
    ] {
        sgi1r(sgi7 | v);
        let got = ack_within(300_000);
        note!(
            t,
            C,
            got == 1023,
            "SGI 7 to {what}, where no vCPU is: nothing delivered here (acknowledge gives {got})"
        );
    }
    let g0 = attempt(wr!("s3_0_c12_c11_7", 8 << 24 | 1));
    let alt = attempt(wr!("s3_0_c12_c11_6", 8 << 24 | 1));
    let got = ack_within(300_000);
    note!(
        t,
        C,
        g0 == Out::Done(0) && alt == Out::Done(0) && got == 1023,
        "ICC_SGI0R_EL1 and ICC_ASGI1R_EL1 (Group 0 / other-Security-state SGI 8 to self): ignored, this VM's SGIs are Group 1; nothing delivered ({got})"
    );

    // A storm: thousands of SGIs to ourselves and to vCPU 1 (whose
    // interrupts are masked for good), left unacknowledged for a while.
    let t0 = counter();
    for i in 0..4096u32 {
        gic::send_sgi(0, i % 16);
    }
    let self_us = us(counter() - t0);
    let t0 = counter();
    for i in 0..4096u32 {
        gic::send_sgi(1, i % 16);
    }
    let other_us = us(counter() - t0);
    spin_for(2_000_000);
    let mut counts = [0u32; 129];
    let total = drain(&mut counts, 500_000);
    let each_once = counts[..16].iter().all(|&c| c == 1);
    note!(
        t,
        C,
        each_once && total == 16,
        "4096 SGIs to ourselves in {self_us} us (each trapped to EL2), left unacknowledged for 2 ms, then drained: {total} delivered, each of SGIs 0-15 exactly once (coalesced while pending)"
    );
    note!(
        t,
        C,
        true,
        "4096 SGIs to vcpu 1, which never acknowledges anything, in {other_us} us: absorbed by its own virtual interface"
    );

    // And the attacker still gets a fresh interrupt afterwards.
    IRQS[9].store(0, Ordering::SeqCst);
    gic::enable_irqs();
    gic::send_sgi(0, 9);
    let end = counter() + 10_000_000;
    while IRQS[9].load(Ordering::SeqCst) == 0 && counter() < end {
        guest_rt::relax();
    }
    gic::disable_irqs();
    let n = IRQS[9].load(Ordering::SeqCst);
    note!(
        t,
        C,
        n == 1,
        "after the storm a fresh SGI 9 to ourselves is taken through the IRQ vector ({n} time)"
    );

    // An SPI storm: all 96 SPIs pended 100 times over.
    for w in 1..4 {
        wr32(IGROUPR + 4 * w, !0);
        wr32(ISENABLER + 4 * w, !0);
    }
    let t0 = counter();
    for _ in 0..100 {
        for w in 1..4 {
            wr32(ISPENDR + 4 * w, !0);
        }
    }
    let took = us(counter() - t0);
    spin_for(1_000_000);
    let mut counts = [0u32; 129];
    let total = drain(&mut counts, 500_000);
    let each_once = counts[32..128].iter().all(|&c| c == 1);
    let left = (1..4).fold(0, |acc, w| acc | rd32(ISPENDR + 4 * w));
    for w in 1..4 {
        wr32(ICENABLER + 4 * w, !0);
    }
    note!(
        t,
        C,
        each_once && total == 96 && left == 0,
        "interrupt storm: all 96 SPIs pended 100 times over (300 trapped writes, {took} us), left unacknowledged for 1 ms, then drained: {total} delivered, each exactly once, {left:#x} left pending"
    );
}

/// An SMCCC call through `hvc #0xffff` / `smc #0x1234` (non-zero immediates).
fn call_imm(smc_conduit: bool, fid: u32) -> u64 {
    let mut x0 = u64::from(fid);
    // SAFETY: an SMCCC call; x1-x17 may be clobbered.
    unsafe {
        if smc_conduit {
            core::arch::asm!("smc #0x1234", inout("x0") x0, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack));
        } else {
            core::arch::asm!("hvc #0xffff", inout("x0") x0, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack));
        }
    }
    x0
}

fn conduit(smc_conduit: bool, fid: u32, a: u64, b: u64, c: u64) -> (u64, u64) {
    if smc_conduit {
        smc(fid, a, b, c)
    } else {
        hvc(fid, a, b, c)
    }
}

/// NOT_SUPPORTED as the caller sees it: in w0 for SMC32, x0 for SMC64.
fn not_supported(fid: u32, x0: u64) -> bool {
    if fid & (1 << 30) == 0 {
        x0 as u32 == u32::MAX
    } else {
        x0 == u64::MAX
    }
}

fn smccc(t: &mut Tally) {
    const C: &str = "smccc";
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (name, smc_conduit) in [("HVC", false), ("SMC", true)] {
        // Fast calls for every owning entity, SMC32 and SMC64.
        let (mut n, mut ok) = (0, 0);
        for owner in 0..64u32 {
            for smc64 in [0u32, 1 << 30] {
                let fid = 1 << 31 | smc64 | owner << 24 | 0xfeff;
                let (x0, _) = conduit(smc_conduit, fid, rng.next(), rng.next(), rng.next());
                n += 1;
                if not_supported(fid, x0) {
                    ok += 1;
                } else {
                    println!("  {fid:#x} answered {x0:#x}");
                }
            }
        }
        note!(
            t,
            C,
            ok == n,
            "{name}: unknown fast calls of all 64 owning entities, SMC32 and SMC64, random arguments: {ok}/{n} answered NOT_SUPPORTED (-1)"
        );
        // Yielding calls (bit 31 clear), which Bulkhead never implements.
        let (mut n, mut ok) = (0, 0);
        for fid in [
            0u32,
            0x0100_0000,
            0x0200_feff,
            0x3f00_0001,
            0x4000_0000,
            0x7fff_ffff,
        ] {
            let (x0, _) = conduit(smc_conduit, fid, rng.next(), rng.next(), rng.next());
            n += 1;
            ok += u32::from(not_supported(fid, x0));
        }
        note!(
            t,
            C,
            ok == n,
            "{name}: yielding calls (SMC32 and SMC64): {ok}/{n} answered NOT_SUPPORTED"
        );
        // Optional PSCI functions Bulkhead does not implement, including
        // the ones that would suspend or reset more than the caller.
        let (mut n, mut ok) = (0, 0);
        for fid in [
            0x8400_0001u32, // CPU_SUSPEND
            0xc400_0001,    // CPU_SUSPEND (SMC64)
            0x8400_0005,    // MIGRATE
            0x8400_000b,    // CPU_FREEZE
            0xc400_000c,    // CPU_DEFAULT_SUSPEND
            0xc400_000d,    // NODE_HW_STATE
            0xc400_000e,    // SYSTEM_SUSPEND
            0x8400_000f,    // PSCI_SET_SUSPEND_MODE
            0xc400_0010,    // PSCI_STAT_RESIDENCY
            0xc400_0011,    // PSCI_STAT_COUNT
            0xc400_0012,    // SYSTEM_RESET2
            0x8400_0013,    // MEM_PROTECT
            0xc400_0014,    // MEM_PROTECT_CHECK_RANGE
        ] {
            let (x0, _) = conduit(smc_conduit, fid, rng.next(), rng.next(), rng.next());
            n += 1;
            ok += u32::from(not_supported(fid, x0));
        }
        note!(
            t,
            C,
            ok == n,
            "{name}: optional PSCI functions (CPU_SUSPEND, SYSTEM_SUSPEND, SYSTEM_RESET2, MEM_PROTECT, ...) with random arguments: {ok}/{n} answered NOT_SUPPORTED"
        );
        let f = conduit(smc_conduit, psci::FEATURES, 0xdead_beef, 0, 0).0;
        let a = conduit(smc_conduit, 0x8000_0001, 0x8000_8000, 0, 0).0;
        note!(
            t,
            C,
            f as u32 == u32::MAX && a as u32 == u32::MAX,
            "{name}: PSCI_FEATURES of an unknown function and SMCCC_ARCH_FEATURES(WORKAROUND_1): {} and {} (NOT_SUPPORTED)",
            f as i32,
            a as i32
        );
        let x0 = call_imm(smc_conduit, 0x8200_feff);
        note!(
            t,
            C,
            x0 as u32 == u32::MAX,
            "{name} with a non-zero immediate and an unknown SiP function: {} (NOT_SUPPORTED)",
            x0 as i32
        );
        // Bulkhead's own range with random arguments: a defined answer each.
        let (mut n, mut ok) = (0, 0);
        for f in 0..=0xffu32 {
            for base in [0xc600_0000u32, 0x8600_0000] {
                let fid = base | f;
                let (x0, x1) = conduit(smc_conduit, fid, rng.next(), rng.next(), rng.next());
                let right = match fid {
                    psci::BULKHEAD_NULL => x0 == 0,
                    psci::BULKHEAD_VM_INFO => x0 == 1 && x1 == 0,
                    // Its own vCPU's timer record: any count is an
                    // answer, and it is never another VM's.
                    psci::BULKHEAD_TIMER_LATE => true,
                    _ => not_supported(fid, x0),
                };
                n += 1;
                if right {
                    ok += 1;
                } else {
                    println!("  {fid:#x} answered {x0:#x} {x1:#x}");
                }
            }
        }
        note!(
            t,
            C,
            ok == n,
            "{name}: Bulkhead hypercalls 0xc60000xx and 0x860000xx with random arguments: {ok}/{n} gave their defined answer (NULL 0, VM_INFO restart count 1 and vcpu 0, TIMER_LATE its own timer's lateness, the rest NOT_SUPPORTED)"
        );
    }
}

/// A breakpoint target: a function whose address we take.
#[inline(never)]
fn bp_target() -> u64 {
    core::hint::black_box(7)
}

static WATCHED: AtomicU64 = AtomicU64::new(0);

/// A debug or PMU register written then read: the write must complete and
/// the read give `want`. `absent` names registers QEMU's `max` CPU does not
/// implement: there the access is UNDEFINED at EL1 before any trap to EL2.
fn raz_wi(t: &mut Tally, what: &str, w: Out, r: Out, want: u64, absent: bool) {
    let ok = w == Out::Done(0) && r == Out::Done(want);
    let undefined_here = absent && r == Out::Undef && matches!(w, Out::Undef | Out::Done(0));
    note!(
        t,
        "sysreg",
        ok || undefined_here,
        "{what}: write {w}, read {r}{}",
        if ok {
            " (trapped to EL2: RAZ/WI)"
        } else if undefined_here {
            " (not implemented by this CPU: undefined at EL1, no trap)"
        } else {
            ""
        }
    );
}

/// The write half of a read-only register (nothing to write).
const NO_WRITE: Out = Out::Done(0);

fn sysregs(t: &mut Tally) {
    const C: &str = "sysreg";
    // EL2 registers: UNDEFINED at EL1 (the CPU refuses them itself).
    for (what, r) in [
        ("read VTTBR_EL2", attempt(rd!("vttbr_el2"))),
        ("write VTTBR_EL2", attempt(wr!("vttbr_el2", 0))),
        ("read HCR_EL2", attempt(rd!("hcr_el2"))),
        ("write HCR_EL2", attempt(wr!("hcr_el2", 0))),
        ("read MDCR_EL2", attempt(rd!("mdcr_el2"))),
        ("write MDCR_EL2", attempt(wr!("mdcr_el2", 0))),
        ("read VTCR_EL2", attempt(rd!("vtcr_el2"))),
        ("read SCTLR_EL2", attempt(rd!("sctlr_el2"))),
        ("write VBAR_EL2", attempt(wr!("vbar_el2", RAM as u64))),
        ("write ELR_EL2", attempt(wr!("elr_el2", RAM as u64))),
        ("write CNTVOFF_EL2", attempt(wr!("cntvoff_el2", 0))),
        ("write VMPIDR_EL2", attempt(wr!("vmpidr_el2", 0x8000_0002))),
        ("read ICH_HCR_EL2", attempt(rd!("s3_4_c12_c11_0"))),
        (
            "write ICH_LR0_EL2 (forge a virtual interrupt)",
            attempt(wr!("s3_4_c12_c12_0", 0x9000_0000_0000_0022)),
        ),
    ] {
        note!(t, C, r == Out::Undef, "{what}: {r}");
    }
    // Trapped by HCR_EL2.TSW / TIDCP / TACR and refused by EL2.
    for (what, r) in [
        ("DC ISW (set/way invalidate)", attempt(sys!("dc isw", 0))),
        ("DC CSW (set/way clean)", attempt(sys!("dc csw", 0))),
        (
            "DC CISW (set/way clean+invalidate)",
            attempt(sys!("dc cisw", 0)),
        ),
        (
            "IMPLEMENTATION DEFINED read S3_0_C15_C0_0",
            attempt(rd!("s3_0_c15_c0_0")),
        ),
        (
            "IMPLEMENTATION DEFINED write S3_1_C15_C2_0",
            attempt(wr!("s3_1_c15_c2_0", !0)),
        ),
        (
            "IMPLEMENTATION DEFINED read S3_0_C11_C0_0",
            attempt(rd!("s3_0_c11_c0_0")),
        ),
        ("read ACTLR_EL1", attempt(rd!("actlr_el1"))),
        ("write ACTLR_EL1", attempt(wr!("actlr_el1", !0))),
    ] {
        note!(t, C, r == Out::Undef, "{what}: {r}, injected by EL2");
    }

    // Debug registers (MDCR_EL2.TDA/TDOSA/TDRA): writes ignored, reads 0.
    let bp = bp_target as fn() -> u64 as usize as u64;
    let wp = WATCHED.as_ptr() as u64;
    let d = |t: &mut Tally, what: &str, w: Out, r: Out| raz_wi(t, what, w, r, 0, false);
    d(
        t,
        "debug MDSCR_EL1 (MDE|KDE)",
        attempt(wr!("mdscr_el1", 0xa000)),
        attempt(rd!("mdscr_el1")),
    );
    d(
        t,
        "debug DBGBVR0_EL1 (our code)",
        attempt(wr!("dbgbvr0_el1", bp)),
        attempt(rd!("dbgbvr0_el1")),
    );
    d(
        t,
        "debug DBGBCR0_EL1 (enable, EL1)",
        attempt(wr!("dbgbcr0_el1", 0x1e7)),
        attempt(rd!("dbgbcr0_el1")),
    );
    d(
        t,
        "debug DBGBCR5_EL1",
        attempt(wr!("dbgbcr5_el1", 0x1e7)),
        attempt(rd!("dbgbcr5_el1")),
    );
    d(
        t,
        "debug DBGWVR0_EL1 (our data)",
        attempt(wr!("dbgwvr0_el1", wp)),
        attempt(rd!("dbgwvr0_el1")),
    );
    d(
        t,
        "debug DBGWCR0_EL1 (enable, store)",
        attempt(wr!("dbgwcr0_el1", 0x1ff7)),
        attempt(rd!("dbgwcr0_el1")),
    );
    d(
        t,
        "debug OSDLR_EL1 (double lock)",
        attempt(wr!("osdlr_el1", 1)),
        attempt(rd!("osdlr_el1")),
    );
    d(
        t,
        "debug DBGCLAIMSET_EL1 / DBGCLAIMCLR_EL1",
        attempt(wr!("dbgclaimset_el1", 0xff)),
        attempt(rd!("dbgclaimclr_el1")),
    );
    d(
        t,
        "debug MDCCINT_EL1",
        attempt(wr!("mdccint_el1", 0x6000_0000)),
        attempt(rd!("mdccint_el1")),
    );
    d(
        t,
        "debug OSDTRRX_EL1",
        attempt(wr!("osdtrrx_el1", 0x41)),
        attempt(rd!("osdtrrx_el1")),
    );
    d(
        t,
        "debug OSECCR_EL1",
        attempt(wr!("oseccr_el1", 0x41)),
        attempt(rd!("oseccr_el1")),
    );
    d(
        t,
        "debug MDRAR_EL1 (read-only)",
        NO_WRITE,
        attempt(rd!("mdrar_el1")),
    );
    d(
        t,
        "debug MDCCSR_EL0 (read-only)",
        NO_WRITE,
        attempt(rd!("mdccsr_el0")),
    );
    raz_wi(
        t,
        "debug OSLAR_EL1 (lock) / OSLSR_EL1 (implemented, unlocked)",
        attempt(wr!("oslar_el1", 1)),
        attempt(rd!("oslsr_el1")),
        0x8,
        false,
    );
    raz_wi(
        t,
        "debug DBGPRCR_EL1",
        attempt(wr!("dbgprcr_el1", 1)),
        attempt(rd!("dbgprcr_el1")),
        0,
        true,
    );
    raz_wi(
        t,
        "debug DBGDTR_EL0",
        attempt(wr!("dbgdtr_el0", 0x41)),
        attempt(rd!("dbgdtr_el0")),
        0,
        true,
    );
    raz_wi(
        t,
        "debug DBGAUTHSTATUS_EL1 (read-only)",
        NO_WRITE,
        attempt(rd!("dbgauthstatus_el1")),
        0,
        true,
    );
    // The breakpoint and watchpoint just "programmed" never fire, even with
    // debug exceptions unmasked.
    // SAFETY: unmasking debug exceptions; none can be enabled.
    unsafe { core::arch::asm!("msr daifclr, #8", "isb", options(nomem, nostack)) };
    let b = attempt(bp_target);
    let w = attempt(|| {
        WATCHED.store(1, Ordering::SeqCst);
        0
    });
    // SAFETY: masking debug exceptions again.
    unsafe { core::arch::asm!("msr daifset, #8", "isb", options(nomem, nostack)) };
    note!(
        t,
        C,
        b == Out::Done(7) && w == Out::Done(0),
        "breakpoint on {bp:#x} and watchpoint on {wp:#x}, debug exceptions unmasked: the call {b}, the store {w}; neither fired"
    );

    // PMU registers (MDCR_EL2.TPM/TPMCR): writes ignored, reads 0.
    d(
        t,
        "PMU PMCR_EL0 (E|P|C)",
        attempt(wr!("pmcr_el0", 0x7)),
        attempt(rd!("pmcr_el0")),
    );
    d(
        t,
        "PMU PMCNTENSET_EL0",
        attempt(wr!("pmcntenset_el0", 0x8000_000f)),
        attempt(rd!("pmcntenset_el0")),
    );
    d(
        t,
        "PMU PMCNTENCLR_EL0",
        attempt(wr!("pmcntenclr_el0", 0)),
        attempt(rd!("pmcntenclr_el0")),
    );
    d(
        t,
        "PMU PMCCNTR_EL0",
        attempt(wr!("pmccntr_el0", 0x1234)),
        attempt(rd!("pmccntr_el0")),
    );
    d(
        t,
        "PMU PMUSERENR_EL0",
        attempt(wr!("pmuserenr_el0", 0xf)),
        attempt(rd!("pmuserenr_el0")),
    );
    d(
        t,
        "PMU PMSELR_EL0",
        attempt(wr!("pmselr_el0", 3)),
        attempt(rd!("pmselr_el0")),
    );
    d(
        t,
        "PMU PMXEVTYPER_EL0",
        attempt(wr!("pmxevtyper_el0", 0x11)),
        attempt(rd!("pmxevtyper_el0")),
    );
    d(
        t,
        "PMU PMXEVCNTR_EL0",
        attempt(wr!("pmxevcntr_el0", 5)),
        attempt(rd!("pmxevcntr_el0")),
    );
    d(
        t,
        "PMU PMEVTYPER0_EL0 (CPU_CYCLES)",
        attempt(wr!("pmevtyper0_el0", 0x11)),
        attempt(rd!("pmevtyper0_el0")),
    );
    d(
        t,
        "PMU PMEVCNTR0_EL0",
        attempt(wr!("pmevcntr0_el0", 5)),
        attempt(rd!("pmevcntr0_el0")),
    );
    d(
        t,
        "PMU PMCCFILTR_EL0",
        attempt(wr!("pmccfiltr_el0", 0x8000_0000)),
        attempt(rd!("pmccfiltr_el0")),
    );
    d(
        t,
        "PMU PMINTENSET_EL1",
        attempt(wr!("pmintenset_el1", 0x8000_0001)),
        attempt(rd!("pmintenset_el1")),
    );
    d(
        t,
        "PMU PMINTENCLR_EL1",
        attempt(wr!("pmintenclr_el1", 1)),
        attempt(rd!("pmintenclr_el1")),
    );
    d(
        t,
        "PMU PMOVSSET_EL0",
        attempt(wr!("pmovsset_el0", 1)),
        attempt(rd!("pmovsset_el0")),
    );
    d(
        t,
        "PMU PMOVSCLR_EL0",
        attempt(wr!("pmovsclr_el0", 1)),
        attempt(rd!("pmovsclr_el0")),
    );
    d(
        t,
        "PMU PMSWINC_EL0 (write-only) / PMCEID0_EL0",
        attempt(wr!("pmswinc_el0", 1)),
        attempt(rd!("pmceid0_el0")),
    );
    d(
        t,
        "PMU PMCEID1_EL0 (read-only)",
        NO_WRITE,
        attempt(rd!("pmceid1_el0")),
    );
    d(
        t,
        "PMU PMMIR_EL1 (read-only)",
        NO_WRITE,
        attempt(rd!("s3_0_c9_c14_6")),
    );
    let a = attempt(rd!("pmccntr_el0"));
    spin_for(100_000);
    let b = attempt(rd!("pmccntr_el0"));
    note!(
        t,
        C,
        a == Out::Done(0) && b == Out::Done(0),
        "the cycle counter, \"enabled\" above, does not count: {a}, then {b}"
    );
}

/// WFE storms. They run before vCPU 1 starts spinning, for a reason that
/// is QEMU's, not the hypervisor's: under `-icount` QEMU runs every vCPU
/// on one host thread, and each WFE yields that thread; with another vCPU
/// busy at the same time, a storm of them delayed the timer interrupts of
/// the (halted) victim vCPU by up to 25 ms of virtual time, although no
/// hypervisor code runs during it (WFE is not trapped). Alone, it delays
/// nothing. On hardware, pinned pCPUs share no such thread.
fn wfe(t: &mut Tally) {
    const C: &str = "wfx";
    let t0 = counter();
    for _ in 0..20_000 {
        // SAFETY: SEVL/WFE have no memory effects.
        unsafe { core::arch::asm!("sevl", "wfe", options(nomem, nostack)) };
    }
    let sevl = us(counter() - t0);
    // SAFETY: CNTKCTL_EL1 only controls this vCPU's timer event stream and
    // EL0 timer access: EVNTEN with the fastest rate.
    unsafe {
        core::arch::asm!("msr cntkctl_el1, {}", "isb", in(reg) 1u64 << 2, options(nomem, nostack))
    };
    let t0 = counter();
    for _ in 0..5_000 {
        // SAFETY: WFE has no memory effects; the event stream wakes it.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
    let stream = us(counter() - t0);
    // SAFETY: back to the reset value.
    unsafe { core::arch::asm!("msr cntkctl_el1, xzr", "isb", options(nomem, nostack)) };
    note!(
        t,
        C,
        true,
        "WFE storm: 20000 SEVL+WFE in {sevl} us and 5000 WFE woken by the timer event stream in {stream} us, all returned (WFE is not trapped: it only costs our own pCPU)"
    );
}

/// WFI storms, while vCPU 1 spins with interrupts masked.
fn wfi(t: &mut Tally) {
    const C: &str = "wfx";
    gic::init_distributor();
    gic::init_cpu(0, 0xffff | 1 << VTIMER_INTID);
    gic::disable_irqs();

    // WFI with an interrupt pending but masked never sleeps: a storm.
    vtimer::arm(0);
    spin_for(100_000);
    let t0 = counter();
    for _ in 0..20_000 {
        // SAFETY: WFI has no memory effects; a pending interrupt wakes it.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
    let took = us(counter() - t0);
    vtimer::disarm();
    let id = ack_within(1_000_000);
    note!(
        t,
        C,
        id == VTIMER_INTID,
        "WFI storm: 20000 WFIs with the virtual timer pending and masked in {took} us (the timer interrupt then acknowledged: {id})"
    );

    // WFI that really sleeps, woken by a timer 5 us ahead, 1000 times.
    let (mut wakes, mut strays) = (0, 0);
    let t0 = counter();
    for _ in 0..1000 {
        vtimer::arm(counter() + 5_000);
        loop {
            // SAFETY: as above.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
            let id = gic::ack();
            if id == VTIMER_INTID {
                vtimer::disarm();
                gic::eoi(id);
                wakes += 1;
                break;
            } else if id < 1020 {
                gic::eoi(id);
                strays += 1;
            }
        }
    }
    note!(
        t,
        C,
        wakes == 1000 && strays == 0,
        "1000 WFI sleeps woken by the virtual timer in {} us: {wakes} timer wake-ups, {strays} other interrupts",
        us(counter() - t0)
    );
}

/// Sustained trapping traffic from vCPU 0 while vCPU 1 spins, long enough
/// for the victim's 1 ms task to be judged over hundreds of periods.
fn soak(t: &mut Tally) {
    const C: &str = "soak";
    const TICKS: u64 = 300_000_000;
    let beat = HEARTBEAT.load(Ordering::Relaxed);
    gic::init_distributor();
    wr32(IGROUPR + 4, !0);
    set_bit(ISENABLER, 50);
    gic::init_cpu(0, 0xffff);
    gic::disable_irqs();
    let (mut rounds, mut wrong) = (0u32, 0u32);
    let end = counter() + TICKS;
    while counter() < end {
        rounds += 1;
        gic::send_sgi(0, rounds % 16);
        set_bit(ISPENDR, 50);
        let (a, b) = (ack_within(1_000_000), ack_within(1_000_000));
        let unknown = hvc(0x8600_feff, 1, 2, 3).0;
        let null = smc(psci::BULKHEAD_NULL, 0, 0, 0).0;
        let load = attempt(|| read64(0x5000_0000));
        let pmu = attempt(wr!("pmcr_el0", 1));
        let right = matches!((a, b), (50, 0..=15) | (0..=15, 50))
            && unknown == u64::MAX
            && null == 0
            && load.injected_abort()
            && pmu == Out::Done(0);
        wrong += u32::from(!right);
    }
    set_bit(ICENABLER, 50);
    let now = HEARTBEAT.load(Ordering::Relaxed);
    let on = hvc(psci::AFFINITY_INFO, 1, 0, 0).0;
    note!(
        t,
        C,
        wrong == 0 && rounds > 100,
        "{} ms of sustained traffic ({rounds} rounds of SGI, SPI, unknown HVC, SMC, refused load of victim RAM, PMU write): {wrong} rounds with a wrong answer",
        us(TICKS) / 1000
    );
    note!(
        t,
        C,
        now > beat && on == 0,
        "vcpu 1 kept spinning with interrupts masked all along (heartbeat {beat} -> {now}, AFFINITY_INFO {on}): it has not exited on its own; the victim judges its own pace"
    );
}
