//! The victim: a 1 ms periodic task that re-verifies a 1 MiB pattern a
//! slice at a time (a full pass every 128 periods, each pass's checksum
//! compared with the one computed when the pattern was written) and checks
//! its deadline every period. It runs until `q` arrives on its console (the
//! test types it once the attacker VM has stopped), then checks that
//! nothing of its own was touched: its virtual GIC's view of INTID 34 (the
//! RTC's SPI, which the attacker programmed in its own GIC), its
//! distributor, and that the RTC passed through to it still interrupts it.

use crate::RAM;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use guest_rt::{counter, gic, guard, hvc, mmio_read32, mmio_write32, println, psci, vtimer};

const PATTERN_AT: usize = RAM + 0x10_0000;
const PATTERN_WORDS: usize = 0x10_0000 / 8;
/// Words verified per period.
const CHUNK: usize = 1024;
const VTIMER_INTID: u32 = 27;
/// The PL031 RTC (passed through to this VM) and its SPI.
const RTC: usize = 0x0901_0000;
const RTC_INTID: u32 = 34;
const RTC_DR: usize = 0x000;
const RTC_MR: usize = 0x004;
const RTC_IMSC: usize = 0x010;
const RTC_ICR: usize = 0x01c;
/// Stop with a failure if no end signal came within this many periods.
const MAX_PERIODS: u64 = 600_000;

const UART_DR: usize = guest_rt::UART;
const UART_FR: usize = guest_rt::UART + 0x18;
const FR_RXFE: u32 = 1 << 4;

static PERIOD: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);
static PERIODS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static LAT_MAX: AtomicU64 = AtomicU64::new(0);
static LAT_SUM: AtomicU64 = AtomicU64::new(0);
/// Next word to verify, the running checksum of the current pass, the
/// reference checksum of a whole pass, and the passes completed.
static CURSOR: AtomicUsize = AtomicUsize::new(0);
static PASS_SUM: AtomicU64 = AtomicU64::new(0);
static REFERENCE: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);
/// First corrupted word's address (or 1 for a checksum mismatch); 0 = none.
static CORRUPT: AtomicUsize = AtomicUsize::new(0);
/// An interrupt that should never reach this VM (INTID + 1); 0 = none.
static UNEXPECTED: AtomicU32 = AtomicU32::new(0);
static RTC_IRQS: AtomicU32 = AtomicU32::new(0);

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a
}

fn word(i: usize) -> u64 {
    // SAFETY: inside our own RAM (the pattern buffer).
    unsafe { core::ptr::read_volatile((PATTERN_AT + 8 * i) as *const u64) }
}

fn mix(sum: u64, v: u64) -> u64 {
    sum.wrapping_mul(31).wrapping_add(v)
}

fn freq() -> u64 {
    let f: u64;
    // SAFETY: CNTFRQ_EL0 is read-only.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

/// One period's work: verify the next slice of the pattern.
fn verify_chunk() {
    let start = CURSOR.load(Ordering::Relaxed);
    let mut sum = PASS_SUM.load(Ordering::Relaxed);
    for i in start..(start + CHUNK).min(PATTERN_WORDS) {
        let v = word(i);
        if v != pattern(i) && CORRUPT.load(Ordering::Relaxed) == 0 {
            CORRUPT.store(PATTERN_AT + 8 * i, Ordering::Relaxed);
        }
        sum = mix(sum, v);
    }
    let next = start + CHUNK;
    if next >= PATTERN_WORDS {
        if sum != REFERENCE.load(Ordering::Relaxed) && CORRUPT.load(Ordering::Relaxed) == 0 {
            CORRUPT.store(1, Ordering::Relaxed);
        }
        PASSES.fetch_add(1, Ordering::Relaxed);
        CURSOR.store(0, Ordering::Relaxed);
        PASS_SUM.store(0, Ordering::Relaxed);
    } else {
        CURSOR.store(next, Ordering::Relaxed);
        PASS_SUM.store(sum, Ordering::Relaxed);
    }
}

fn tick() {
    let now = counter();
    let id = gic::ack();
    match id {
        VTIMER_INTID => {
            let period = PERIOD.load(Ordering::Relaxed);
            let release = RELEASE.load(Ordering::Relaxed);
            let latency = now.saturating_sub(release);
            LAT_MAX.fetch_max(latency, Ordering::Relaxed);
            LAT_SUM.fetch_add(latency, Ordering::Relaxed);
            PERIODS.fetch_add(1, Ordering::Relaxed);
            verify_chunk();
            let deadline = release + period;
            if counter() > deadline {
                MISSES.fetch_add(1, Ordering::Relaxed);
            }
            let mut next = deadline;
            let t = counter();
            while next <= t {
                next += period;
            }
            RELEASE.store(next, Ordering::Relaxed);
            vtimer::arm(next);
            // As in the safety RTOS: bounds how long QEMU's -icount round
            // robin can leave this vCPU unrun mid-release (no interrupt).
            guard::at(next + period / 4);
            gic::eoi(id);
        }
        RTC_INTID => {
            // Level interrupt: clear it at the device before completing it.
            mmio_write32(RTC + RTC_ICR, 1);
            RTC_IRQS.fetch_add(1, Ordering::Relaxed);
            gic::eoi(id);
        }
        1020.. => {}
        other => {
            UNEXPECTED.store(other + 1, Ordering::Relaxed);
            gic::eoi(other);
        }
    }
}

fn uart_rx() -> Option<u8> {
    if mmio_read32(UART_FR) & FR_RXFE != 0 {
        None
    } else {
        Some(mmio_read32(UART_DR) as u8)
    }
}

fn fail(what: core::fmt::Arguments) -> ! {
    gic::disable_irqs();
    vtimer::disarm();
    println!("FAIL victim: {what}");
    guest_rt::system_off()
}

fn check_healthy() {
    match CORRUPT.load(Ordering::Relaxed) {
        0 => {}
        1 => fail(format_args!("pass checksum differs from the reference")),
        at => fail(format_args!("memory changed at {at:#x}")),
    }
    if let Some(id) = UNEXPECTED.load(Ordering::Relaxed).checked_sub(1) {
        fail(format_args!("interrupt {id} reached this VM"));
    }
}

const GICD: usize = gic::GICD;

/// Bit `intid` of the distributor's one-bit-per-INTID register at `base`.
fn dist_bit(base: usize, intid: u32) -> bool {
    mmio_read32(GICD + base + 4 * (intid as usize / 32)) & (1 << (intid % 32)) != 0
}

/// The attacker enabled, pended, prioritised and routed INTID 34 in its
/// own GIC, and disabled its distributor: none of it may show here.
fn check_own_gic() {
    let ctlr = mmio_read32(GICD);
    let enabled = dist_bit(0x100, RTC_INTID);
    let pending = dist_bit(0x200, RTC_INTID);
    let active = dist_bit(0x300, RTC_INTID);
    let prio = mmio_read32(GICD + 0x400 + RTC_INTID as usize) & 0xff;
    let route = mmio_read32(GICD + 0x6000 + 8 * RTC_INTID as usize);
    if ctlr != 0x52 || enabled || pending || active || prio != 0 || route != 0 {
        fail(format_args!(
            "own GIC changed: CTLR {ctlr:#x}, INTID 34 enabled {enabled} pending {pending} active {active} priority {prio:#x} route {route:#x}"
        ));
    }
    println!(
        "own GIC untouched: CTLR {ctlr:#x}; INTID 34 (the RTC) disabled, not pending, not active, priority 0, routed to vcpu 0"
    );
}

/// The RTC is ours: its alarm interrupt (physical SPI 34, routed to our
/// pCPU) still arrives after everything the attacker did.
fn check_rtc_interrupt() {
    let start = mmio_read32(RTC + RTC_DR);
    mmio_write32(RTC + RTC_MR, start.wrapping_add(2));
    mmio_write32(RTC + RTC_ICR, 1);
    mmio_write32(RTC + RTC_IMSC, 1);
    // Enabled (Group 1 since `run`; priority 0 and routed to vcpu 0 as
    // reset left them).
    mmio_write32(GICD + 0x100 + 4, 1 << (RTC_INTID % 32));
    while RTC_IRQS.load(Ordering::Relaxed) == 0 {
        // SAFETY: WFI has no memory effects; the timer wakes us each period.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        check_healthy();
        if mmio_read32(RTC + RTC_DR).wrapping_sub(start) > 10 {
            fail(format_args!("no RTC alarm interrupt within 10 s"));
        }
    }
    mmio_write32(RTC + RTC_IMSC, 0);
    mmio_write32(GICD + 0x180 + 4, 1 << (RTC_INTID % 32));
    println!(
        "RTC alarm interrupt (INTID 34) received: the passed-through device and its SPI are still ours (RTC {} s -> {} s)",
        start,
        mmio_read32(RTC + RTC_DR)
    );
}

pub fn run() -> ! {
    let f = freq();
    let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / f.max(1);
    let period = (f / 1000).max(1);
    PERIOD.store(period, Ordering::Relaxed);
    let (restarts, _) = hvc(psci::BULKHEAD_VM_INFO, 0, 0, 0);
    let mut reference = 0;
    for i in 0..PATTERN_WORDS {
        // SAFETY: inside our own RAM (the pattern buffer).
        unsafe { core::ptr::write_volatile((PATTERN_AT + 8 * i) as *mut u64, pattern(i)) };
        reference = mix(reference, pattern(i));
    }
    REFERENCE.store(reference, Ordering::Relaxed);
    println!(
        "victim: 1 MiB pattern written (pass checksum {reference:#018x}), restart count {restarts}; a 1 ms task re-verifies it until 'q' on the console"
    );
    gic::init_distributor();
    for w in 1..4 {
        mmio_write32(GICD + 0x80 + 4 * w, 0xffff_ffff);
    }
    // Every SGI enabled too: one sent here by anyone would be reported.
    gic::init_cpu(0, 0xffff | 1 << VTIMER_INTID);
    guest_rt::set_irq_handler(tick);
    let first = counter() + period;
    RELEASE.store(first, Ordering::Relaxed);
    vtimer::arm(first);
    guard::at(first + period / 4);
    gic::enable_irqs();
    let mut reported = 0;
    loop {
        // SAFETY: WFI has no memory effects; the timer wakes us each period.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        check_healthy();
        let n = PERIODS.load(Ordering::Relaxed);
        if n / 250 > reported {
            reported = n / 250;
            println!(
                "t={}ms periods={n} misses={} worst release latency {} ns, {} full passes, checksum {reference:#018x} intact",
                reported * 250,
                MISSES.load(Ordering::Relaxed),
                ns(LAT_MAX.load(Ordering::Relaxed)),
                PASSES.load(Ordering::Relaxed)
            );
        }
        if uart_rx() == Some(b'q') {
            break;
        }
        if n > MAX_PERIODS {
            fail(format_args!(
                "no end signal on the console within {n} periods"
            ));
        }
    }
    println!("end signal received: checking what is ours");
    check_own_gic();
    check_rtc_interrupt();
    // One more complete pass after the checks, so the verdict covers the end.
    let passes = PASSES.load(Ordering::Relaxed);
    while PASSES.load(Ordering::Relaxed) < passes + 2 {
        // SAFETY: as above.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        check_healthy();
    }
    gic::disable_irqs();
    vtimer::disarm();
    check_healthy();
    let (restarts, _) = hvc(psci::BULKHEAD_VM_INFO, 0, 0, 0);
    let n = PERIODS.load(Ordering::Relaxed);
    let misses = MISSES.load(Ordering::Relaxed);
    let avg = LAT_SUM.load(Ordering::Relaxed) / n.max(1);
    if restarts != 0 {
        fail(format_args!(
            "restart count {restarts}: the attack restarted the victim"
        ));
    }
    // Deadlines are reported, not judged: under -icount QEMU runs every
    // vCPU on one host thread, so a victim vCPU halted in WFI beside two
    // busy attacker vCPUs can wake a slice late, which is QEMU's schedule,
    // not isolation (the safety tests judge deadlines with one busy peer).
    println!(
        "PASS victim: memory intact, checksum {reference:#018x} in all {} passes; {n} periods, {misses} deadline misses, release latency avg/max {}/{} ns; never restarted",
        PASSES.load(Ordering::Relaxed),
        ns(avg),
        ns(LAT_MAX.load(Ordering::Relaxed))
    );
    guest_rt::system_off()
}
