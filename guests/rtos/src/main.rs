//! The `safety` guest: an RTOS-style periodic control task. Every 1 ms the
//! virtual timer releases the task (absolute release times, so no drift);
//! the handler records the release latency, runs the control step and
//! checks it finished before the next release (its deadline). Once a second
//! it reports periods, deadline misses and latency. With
//! `safety.seconds=N` on its command line it stops after N seconds with a
//! PASS/FAIL verdict; otherwise it runs for ever.
//!
//! With a channel (its device tree has a `bulkhead,channel` node) it also
//! answers requests from the peer VM, in the background: the doorbell
//! interrupt (less urgent than the timer's) only notes the ring; the idle
//! loop reads the request text from the shared memory and replies with it
//! and the task's state (periods, misses, worst latency), then rings back,
//! with interrupts on, so the control task preempts it. A peer that rings
//! without pause only takes the safety VM's idle time.
#![no_std]
#![no_main]

use bulkhead_channel::{mailbox, reg};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::psci::BULKHEAD_TIMER_LATE;
use guest_rt::{counter, gic, guard, mmio_read32, mmio_write32, println, vtimer};

const VTIMER_INTID: u32 = 27;
/// This VM's first channel end (bulkhead_config::channel_regs_ipa(0),
/// channel_shm_ipa(0), channel_spi(0)).
const CHANNEL_REGS: usize = 0x1000_0000;
const CHANNEL_SHM: usize = 0x1010_0000;
const CHANNEL_SPI: u32 = 120;
/// A masked timer event a quarter period after each release
/// (`guest_rt::guard`): under QEMU's `-icount` round robin it bounds how
/// long this vCPU can go unrun in the middle of its release. It never
/// interrupts, and on a board it changes nothing.
const GUARD_DIV: u64 = 4;
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// The peer rang and the request is not served yet.
static RUNG: AtomicBool = AtomicBool::new(false);

static PERIOD: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);
static PERIODS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static LAT_MIN: AtomicU64 = AtomicU64::new(u64::MAX);
static LAT_MAX: AtomicU64 = AtomicU64::new(0);
static LAT_SUM: AtomicU64 = AtomicU64::new(0);
/// Misses that the platform's delay alone caused: without the time the
/// timer interrupt spent before it reached the hypervisor (host scheduling,
/// or QEMU's idle clock jumping past the deadline), the step would have
/// finished in time.
static MISSES_HOST: AtomicU64 = AtomicU64::new(0);
/// Worst release latency less the platform's delay: what Bulkhead and this
/// guest added.
static LAT_OWN_MAX: AtomicU64 = AtomicU64::new(0);
/// Worst response time: from the release to the end of the control step.
static RESP_MAX: AtomicU64 = AtomicU64::new(0);
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

/// Small formatter into a fixed buffer (no allocator here).
struct Buf {
    bytes: [u8; mailbox::MAX_TEXT],
    len: usize,
}

impl core::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// The peer rang (idle loop, interrupts on): answer the request in the
/// shared memory, ring back.
fn serve_channel() {
    let seq = mmio_read32(CHANNEL_SHM + mailbox::REQ_SEQ);
    if seq == mmio_read32(CHANNEL_SHM + mailbox::RSP_SEQ) {
        return; // already answered
    }
    let len = (mmio_read32(CHANNEL_SHM + mailbox::REQ_LEN) as usize).min(64);
    let mut out = Buf {
        bytes: [0; mailbox::MAX_TEXT],
        len: 0,
    };
    for i in 0..len.div_ceil(4) {
        let w = mmio_read32(CHANNEL_SHM + mailbox::REQ_DATA + 4 * i).to_le_bytes();
        let take = (len - 4 * i).min(4);
        for &b in &w[..take] {
            // Printable ASCII only: the text goes back to the peer as is.
            let b = if (0x20..0x7f).contains(&b) { b } else { b'.' };
            let _ = core::fmt::Write::write_char(&mut out, b as char);
        }
    }
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = core::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            " -> safety: request {n}, periods={} misses={} worst={} ticks",
            PERIODS.load(Ordering::Relaxed),
            MISSES.load(Ordering::Relaxed),
            LAT_MAX.load(Ordering::Relaxed)
        ),
    );
    for (i, chunk) in out.bytes[..out.len].chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        mmio_write32(
            CHANNEL_SHM + mailbox::RSP_DATA + 4 * i,
            u32::from_le_bytes(w),
        );
    }
    mmio_write32(CHANNEL_SHM + mailbox::RSP_LEN, out.len as u32);
    // SAFETY: a barrier only: the reply is in memory before the doorbell.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
    mmio_write32(CHANNEL_SHM + mailbox::RSP_SEQ, seq);
    // SAFETY: as above: the sequence number before the doorbell.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
    mmio_write32(CHANNEL_REGS + reg::DOORBELL as usize, 1);
}

fn tick() {
    let now = counter();
    let id = gic::ack();
    if id == CHANNEL_SPI {
        // Reading ISR lowers the doorbell line; the idle loop serves.
        let _ = mmio_read32(CHANNEL_REGS + reg::ISR as usize);
        RUNG.store(true, Ordering::Relaxed);
        gic::eoi(id);
        return;
    }
    if id != VTIMER_INTID {
        if id < 1020 {
            gic::eoi(id);
        }
        return;
    }
    let period = PERIOD.load(Ordering::Relaxed);
    let release = RELEASE.load(Ordering::Relaxed);
    let latency = now.saturating_sub(release);
    // A release more than 1 us late asks the hypervisor how much of the
    // delay came before it saw the interrupt (one hypercall, about 130
    // instructions; an on-time release, about 300 ns, costs nothing).
    let host = if latency > period / 1000 {
        guest_rt::hvc(BULKHEAD_TIMER_LATE, 0, 0, 0).0.min(latency)
    } else {
        0
    };
    LAT_OWN_MAX.fetch_max(latency - host, Ordering::Relaxed);
    LAT_MIN.fetch_min(latency, Ordering::Relaxed);
    LAT_MAX.fetch_max(latency, Ordering::Relaxed);
    LAT_SUM.fetch_add(latency, Ordering::Relaxed);
    let n = PERIODS.fetch_add(1, Ordering::Relaxed);
    control_step(n);
    // Deadline: the next release.
    let next = release + period;
    let done = counter();
    RESP_MAX.fetch_max(done.saturating_sub(release), Ordering::Relaxed);
    if done > next {
        MISSES.fetch_add(1, Ordering::Relaxed);
        if done - host <= next {
            MISSES_HOST.fetch_add(1, Ordering::Relaxed);
        }
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
    guard::at(r + period / GUARD_DIV);
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
    if guest_rt::dtb_contains(b"bulkhead,channel") {
        // Less urgent than the timer (0x80): the control task comes first.
        gic::enable_spi(CHANNEL_SPI, 0xc0);
        println!(
            "channel end {} at {CHANNEL_REGS:#x}: answering requests (SPI {CHANNEL_SPI})",
            mmio_read32(CHANNEL_REGS + reg::ID as usize)
        );
    }
    guest_rt::set_irq_handler(tick);
    let first = counter() + period;
    RELEASE.store(first, Ordering::Relaxed);
    vtimer::arm(first);
    guard::at(first + period / GUARD_DIV);
    gic::enable_irqs();
    let mut reported = 0u64;
    loop {
        if RUNG.swap(false, Ordering::Relaxed) {
            serve_channel();
        } else {
            // SAFETY: WFI has no memory effects; an interrupt wakes us. A
            // ring noted between the check and here is served after it.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        }
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
                "t={reported}s periods={n} misses={misses} ({} from the host) release latency min/avg/max = {}/{}/{} ns, worst without the host's delay {} ns, worst response {} ns",
                MISSES_HOST.load(Ordering::Relaxed),
                ns(min),
                ns(avg),
                ns(max),
                ns(LAT_OWN_MAX.load(Ordering::Relaxed)),
                ns(RESP_MAX.load(Ordering::Relaxed))
            );
            if seconds.is_some_and(|s| reported >= s) {
                gic::disable_irqs();
                vtimer::disarm();
                guard::disarm();
                // `cargo xtask bench`: latency in counter ticks (one per
                // instruction under -icount shift=0 with -cpu max).
                let bench = if guest_rt::dtb_contains(b"safety.bench=idle") {
                    Some("safety_latency_idle")
                } else if guest_rt::dtb_contains(b"safety.bench=stressed") {
                    Some("safety_latency_stressed")
                } else {
                    None
                };
                if let Some(name) = bench {
                    println!("BENCH {name} instructions {avg}");
                    println!("BENCH {name}.min instructions {min}");
                    println!("BENCH {name}.max instructions {max}");
                    println!(
                        "BENCH {name}.requests count {}",
                        REQUESTS.load(Ordering::Relaxed)
                    );
                }
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
