//! IPI and timer guest for the scheduler tests: vCPU 0 sends vCPU 1 one
//! SGI at a time and waits until it arrived before sending the next, while
//! vCPU 1 waits in WFI and counts what it receives and the ticks of its
//! own 1 kHz virtual timer. Run as a pool VM, its vCPUs are blocked and
//! woken for every interrupt, and the shell's `move` shifts vCPU 1 between
//! pCPUs mid-run: every SGI sent must arrive exactly once, and the timer
//! must keep ticking wherever vCPU 1 runs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{counter, gic, hvc, println, psci, vtimer};

const SGI: u32 = 1;
const VTIMER_INTID: u32 = 27;
/// Rounds of the run, and how often vCPU 0 reports. Under `-icount` every
/// read of the counter ends a translation block, so the loops below spin
/// on memory and look at the counter rarely.
const ROUNDS: u64 = 12_000;
const REPORT_EVERY: u64 = 1000;
/// Spins between rounds, so vCPU 1 is back in WFI when the next SGI comes.
const SETTLE_SPINS: u32 = 20_000;
/// An SGI not received after this long (in ms) is lost.
const LOST_MS: u64 = 100;

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static UP: AtomicU64 = AtomicU64::new(0);
static PERIOD: AtomicU64 = AtomicU64::new(0);

fn freq() -> u64 {
    let f: u64;
    // SAFETY: reading the counter frequency has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

fn cval() -> u64 {
    let v: u64;
    // SAFETY: reading this vCPU's timer compare value.
    unsafe { core::arch::asm!("mrs {}, cntv_cval_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn irq() {
    let id = gic::ack();
    if id == SGI {
        RECEIVED.fetch_add(1, Ordering::SeqCst);
    } else if id == VTIMER_INTID {
        TICKS.fetch_add(1, Ordering::SeqCst);
        // The next tick one period after this one was due, not after now:
        // a late tick does not shift the ones after it.
        vtimer::arm(cval() + PERIOD.load(Ordering::Relaxed));
    }
    if id < 1020 {
        gic::eoi(id);
    }
}

fn secondary(index: usize) -> ! {
    gic::init_cpu(index, (1 << SGI) | (1 << VTIMER_INTID));
    vtimer::arm(counter() + PERIOD.load(Ordering::Relaxed));
    gic::enable_irqs();
    UP.store(1, Ordering::SeqCst);
    loop {
        // SAFETY: WFI has no memory effects.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn guest_main() -> ! {
    let ms = freq() / 1000;
    PERIOD.store(ms, Ordering::SeqCst);
    gic::init_distributor();
    gic::init_cpu(0, 0);
    guest_rt::set_irq_handler(irq);
    guest_rt::set_secondary_main(secondary);
    let r = hvc(psci::CPU_ON, 1, guest_rt::secondary_entry(), 1).0 as i64;
    if r != psci::SUCCESS {
        println!("FAIL CPU_ON(1) = {r}");
        guest_rt::system_off();
    }
    while UP.load(Ordering::SeqCst) == 0 {
        guest_rt::relax();
    }
    println!("ipi: vcpu 1 up, sending");
    let start = counter();
    for sent in 1..=ROUNDS {
        gic::send_sgi(1, SGI);
        let deadline = counter() + LOST_MS * ms;
        let mut spins = 0u32;
        while RECEIVED.load(Ordering::SeqCst) < sent {
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && counter() > deadline {
                println!(
                    "FAIL ipi lost: sent {sent}, received {}",
                    RECEIVED.load(Ordering::SeqCst)
                );
                guest_rt::system_off();
            }
            guest_rt::relax();
        }
        // Plain arithmetic: YIELD would end QEMU's translation block and
        // hand the host thread to the other vCPU on every spin.
        for i in 0..SETTLE_SPINS {
            core::hint::black_box(i);
        }
        if sent % REPORT_EVERY == 0 {
            println!(
                "ipi: round {sent} received {} ticks {}",
                RECEIVED.load(Ordering::SeqCst),
                TICKS.load(Ordering::SeqCst)
            );
        }
    }
    let elapsed_ms = (counter() - start) / ms.max(1);
    let sent = ROUNDS;
    let received = RECEIVED.load(Ordering::SeqCst);
    let ticks = TICKS.load(Ordering::SeqCst);
    if received != sent {
        println!("FAIL ipi: sent {sent}, received {received}");
        guest_rt::system_off();
    }
    // 1 kHz for the run, less a few for vCPU 1's start.
    if ticks < elapsed_ms * 9 / 10 {
        println!("FAIL ipi: {ticks} timer ticks in {elapsed_ms} ms");
        guest_rt::system_off();
    }
    println!("ipi: ok sent {sent} received {received} ticks {ticks} in {elapsed_ms} ms");
    guest_rt::system_off()
}
