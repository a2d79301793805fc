//! The `safety` guest: an RTOS-style periodic control task. Every 1 ms the
//! virtual timer releases the task (absolute release times, so no drift);
//! the handler records the release latency, runs the control step and
//! checks it finished before the next release (its deadline). Once a second
//! it reports periods, deadline misses and latency. With
//! `safety.seconds=N` on its command line it stops after N seconds with a
//! PASS/FAIL verdict; otherwise it runs for ever.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{counter, gic, println, vtimer};

const VTIMER_INTID: u32 = 27;

static PERIOD: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);
static PERIODS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static LAT_MIN: AtomicU64 = AtomicU64::new(u64::MAX);
static LAT_MAX: AtomicU64 = AtomicU64::new(0);
static LAT_SUM: AtomicU64 = AtomicU64::new(0);
/// The control loop's state: a first-order filter of a synthetic sensor.
static STATE: AtomicU64 = AtomicU64::new(0);

fn freq() -> u64 {
    let f: u64;
    // SAFETY: CNTFRQ_EL0 is a read-only register.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

/// One control step: read a (synthetic) sensor, filter, actuate.
fn control_step(n: u64) {
    let mut s = STATE.load(Ordering::Relaxed);
    for i in 0..200u64 {
        let sensor = (n.wrapping_mul(2_654_435_761) ^ i) & 0xffff;
        s = s - (s >> 3) + (sensor >> 3);
    }
    STATE.store(s, Ordering::Relaxed);
}

fn tick() {
    let now = counter();
    let id = gic::ack();
    if id != VTIMER_INTID {
        if id < 1020 {
            gic::eoi(id);
        }
        return;
    }
    let period = PERIOD.load(Ordering::Relaxed);
    let release = RELEASE.load(Ordering::Relaxed);
    let latency = now.saturating_sub(release);
    LAT_MIN.fetch_min(latency, Ordering::Relaxed);
    LAT_MAX.fetch_max(latency, Ordering::Relaxed);
    LAT_SUM.fetch_add(latency, Ordering::Relaxed);
    let n = PERIODS.fetch_add(1, Ordering::Relaxed);
    control_step(n);
    // Deadline: the next release.
    let next = release + period;
    if counter() > next {
        MISSES.fetch_add(1, Ordering::Relaxed);
    }
    // The next release is the next period boundary still in the future
    // (after a miss, skipped periods are not replayed).
    let mut r = next;
    let t = counter();
    while r <= t {
        r += period;
    }
    RELEASE.store(r, Ordering::Relaxed);
    vtimer::arm(r);
    gic::eoi(id);
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    let f = freq();
    let period = (f / 1000).max(1);
    let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / f.max(1);
    PERIOD.store(period, Ordering::Relaxed);
    let seconds = guest_rt::dtb_value(b"safety.seconds=");
    match seconds {
        Some(s) => println!(
            "safety RTOS: 1 ms control task, counter {} MHz, running for {s} s",
            f / 1_000_000
        ),
        None => println!(
            "safety RTOS: 1 ms control task, counter {} MHz, running until stopped",
            f / 1_000_000
        ),
    }
    gic::init_distributor();
    gic::init_cpu(0, 1 << VTIMER_INTID);
    guest_rt::set_irq_handler(tick);
    let first = counter() + period;
    RELEASE.store(first, Ordering::Relaxed);
    vtimer::arm(first);
    gic::enable_irqs();
    let mut reported = 0u64;
    loop {
        // SAFETY: WFI has no memory effects; the timer interrupt wakes us.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        let n = PERIODS.load(Ordering::Relaxed);
        if n / 1000 > reported {
            reported = n / 1000;
            let misses = MISSES.load(Ordering::Relaxed);
            let (min, max) = (
                LAT_MIN.load(Ordering::Relaxed),
                LAT_MAX.load(Ordering::Relaxed),
            );
            let avg = LAT_SUM.load(Ordering::Relaxed) / n.max(1);
            println!(
                "t={reported}s periods={n} misses={misses} release latency min/avg/max = {}/{}/{} ns",
                ns(min),
                ns(avg),
                ns(max)
            );
            if seconds.is_some_and(|s| reported >= s) {
                gic::disable_irqs();
                vtimer::disarm();
                if misses == 0 {
                    println!(
                        "PASS safety: {n} periods, 0 deadline misses, worst release latency {} ns",
                        ns(max)
                    );
                } else {
                    println!("FAIL safety: {misses} deadline misses in {n} periods");
                }
                guest_rt::system_off();
            }
        }
    }
}
