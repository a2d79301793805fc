//! Two VMs ping-ponging through a channel doorbell, for the scheduler's
//! `vcpu_switch` figure (configs/bench-vcpu-switch.toml): both VMs run this
//! guest, one vCPU each, in a pool of one pCPU, joined by one channel.
//!
//! A round: end 0 stamps the physical counter into the shared memory,
//! rings end 1's doorbell, stamps again and waits in WFI; end 1's IRQ
//! handler reads the counter first, then end 1 answers the same way. Both
//! VMs read CNTPCT_EL0 (the EL1 physical counter, which the hypervisor does
//! not offset), so their stamps compare; under `-icount shift=0` it counts
//! instructions. Each handoff is one vCPU-to-vCPU switch, by one of two
//! paths, told apart by which stamp of the round is already written when
//! the peer's handler runs:
//!
//! - `vcpu_switch`: the ringer went on to WFI, and the switch happened at
//!   its WFI exit. Measured from the stamp just before the WFI to the
//!   peer's handler: block, pick, full context switch, entry.
//! - `vcpu_switch_wake`: the woken peer preempted the ringer at the
//!   doorbell write itself (its virtual runtime was behind by more than
//!   the wake-up granularity). Measured from the stamp before the doorbell
//!   write: the MMIO exit, the wake-up, the preemption and the switch.
//!
//! End 0 prints both (average, `.min`, `.max`, `.count`) and
//! `vm_pingpong_rtt` (ring to answer, end 0's view), then both ends power
//! off. A handoff that matches neither stamp is a FAIL.
#![no_std]
#![no_main]

use bulkhead_channel::reg;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{gic, mmio_read32, mmio_write32, println, read64, write64};

/// This VM's first channel end (bulkhead_config::channel_regs_ipa(0),
/// channel_shm_ipa(0), channel_spi(0)).
const REGS: usize = 0x1000_0000;
const SHM: usize = 0x1010_0000;
const SPI: u32 = 120;

/// Shared-memory words (u64) of each end, 16 per end.
mod shm {
    /// The round the WFI stamp belongs to (written after the stamp).
    pub const WFI_SEQ: usize = 0;
    /// CNTPCT after ringing, just before the WFI.
    pub const WFI_STAMP: usize = 1;
    /// The round the ring stamp belongs to (written before the ring).
    pub const RING_SEQ: usize = 2;
    /// CNTPCT just before the doorbell write.
    pub const RING_STAMP: usize = 3;
    /// 1 once this end is ready for the first ring.
    pub const READY: usize = 4;
    /// 1 once end 1 has written its results.
    pub const DONE: usize = 5;
    /// Handoffs that matched neither stamp.
    pub const STALE: usize = 6;
    /// Statistics of path `k` (0 WFI, 1 wake): sum, min, max, count.
    pub const STATS: usize = 8;
}

fn slot(end: usize, word: usize) -> usize {
    SHM + end * 128 + word * 8
}

/// Rounds measured (after `WARMUP` unmeasured ones); `pingpong.rounds=N`
/// in the bootargs overrides it (at least 2).
const ROUNDS: u64 = 1000;
const WARMUP: u64 = 10;

fn cntpct() -> u64 {
    let v: u64;
    // SAFETY: reading the physical counter (EL1 access is allowed by
    // CNTHCTL_EL2) has no side effects; the ISBs order it with the code
    // being measured.
    unsafe {
        core::arch::asm!("isb", "mrs {}, cntpct_el0", "isb", out(reg) v, options(nomem, nostack))
    };
    v
}

fn barrier() {
    // SAFETY: a barrier only: shared-memory writes reach the peer before
    // what follows them (the doorbell, a sequence number).
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}

/// One path's latencies.
struct Stats {
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
    count: AtomicU64,
}

impl Stats {
    const fn new() -> Self {
        Stats {
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn add(&self, d: u64) {
        self.sum.fetch_add(d, Ordering::Relaxed);
        self.min.fetch_min(d, Ordering::Relaxed);
        self.max.fetch_max(d, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds end 1's figures, published at `base` in its shared words.
    fn merge(&self, base: usize) {
        self.sum.fetch_add(read64(slot(1, base)), Ordering::Relaxed);
        self.min
            .fetch_min(read64(slot(1, base + 1)), Ordering::Relaxed);
        self.max
            .fetch_max(read64(slot(1, base + 2)), Ordering::Relaxed);
        self.count
            .fetch_add(read64(slot(1, base + 3)), Ordering::Relaxed);
    }

    fn publish(&self, base: usize) {
        write64(slot(1, base), self.sum.load(Ordering::Relaxed));
        write64(slot(1, base + 1), self.min.load(Ordering::Relaxed));
        write64(slot(1, base + 2), self.max.load(Ordering::Relaxed));
        write64(slot(1, base + 3), self.count.load(Ordering::Relaxed));
    }

    fn report(&self, name: &str) {
        let n = self.count.load(Ordering::Relaxed);
        if n == 0 {
            println!("BENCH {name}.count handoffs 0");
            return;
        }
        println!(
            "BENCH {name} instructions {}",
            self.sum.load(Ordering::Relaxed) / n
        );
        println!(
            "BENCH {name}.min instructions {}",
            self.min.load(Ordering::Relaxed)
        );
        println!(
            "BENCH {name}.max instructions {}",
            self.max.load(Ordering::Relaxed)
        );
        println!("BENCH {name}.count handoffs {n}");
    }
}

/// Which end this VM is (the channel's ID register).
static ME: AtomicU64 = AtomicU64::new(0);
/// Rings received (handler).
static RINGS: AtomicU64 = AtomicU64::new(0);
/// The round whose ring the handler measures next (0: none).
static EXPECT: AtomicU64 = AtomicU64::new(0);
static WFI_PATH: Stats = Stats::new();
static WAKE_PATH: Stats = Stats::new();
static STALE: AtomicU64 = AtomicU64::new(0);
/// CNTPCT at the last handler entry.
static ENTERED: AtomicU64 = AtomicU64::new(0);

fn irq() {
    let t = cntpct();
    let id = gic::ack();
    if id == SPI {
        // Reading ISR lowers the doorbell line.
        let _ = mmio_read32(REGS + reg::ISR as usize);
        let peer = 1 - ME.load(Ordering::Relaxed) as usize;
        let want = EXPECT.load(Ordering::Relaxed);
        if want != 0 {
            if read64(slot(peer, shm::WFI_SEQ)) == want {
                WFI_PATH.add(t.saturating_sub(read64(slot(peer, shm::WFI_STAMP))));
            } else if read64(slot(peer, shm::RING_SEQ)) == want {
                WAKE_PATH.add(t.saturating_sub(read64(slot(peer, shm::RING_STAMP))));
            } else {
                STALE.fetch_add(1, Ordering::Relaxed);
            }
        }
        ENTERED.store(t, Ordering::Relaxed);
        RINGS.fetch_add(1, Ordering::SeqCst);
    }
    if id < 1020 {
        gic::eoi(id);
    }
}

/// Stamps, rings the peer for round `seq` (0: unmeasured) and stamps
/// again; the caller then waits in WFI.
fn ring(me: usize, seq: u64) {
    write64(slot(me, shm::RING_STAMP), cntpct());
    barrier();
    write64(slot(me, shm::RING_SEQ), seq);
    barrier();
    mmio_write32(REGS + reg::DOORBELL as usize, 1);
    let t = cntpct();
    write64(slot(me, shm::WFI_STAMP), t);
    barrier();
    write64(slot(me, shm::WFI_SEQ), seq);
    barrier();
}

/// Waits in WFI until the handler has seen `rings` rings in all.
fn wait_rings(rings: u64) {
    while RINGS.load(Ordering::SeqCst) < rings {
        // SAFETY: WFI has no memory effects; IRQs are unmasked, so the
        // doorbell's interrupt ends it.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    let me = (mmio_read32(REGS + reg::ID as usize) & 1) as usize;
    ME.store(me as u64, Ordering::Relaxed);
    gic::init_distributor();
    gic::init_cpu(0, 0);
    gic::enable_spi(SPI, 0xc0);
    guest_rt::set_irq_handler(irq);
    gic::enable_irqs();
    let rounds = guest_rt::dtb_value(b"pingpong.rounds=")
        .unwrap_or(ROUNDS)
        .max(2);
    let total = WARMUP + rounds;
    // Measured rounds are numbered from 1; warm-up rounds are 0.
    let seq_of = |round: u64| round.saturating_sub(WARMUP);

    if me == 1 {
        println!("pingpong end 1: ready");
        write64(slot(1, shm::READY), 1);
        barrier();
        // Round r: end 0's r-th ring, measured here, and our answer,
        // measured there; the last ring is not answered.
        for round in 1..=total {
            EXPECT.store(seq_of(round), Ordering::Relaxed);
            wait_rings(round);
            if round < total {
                ring(1, seq_of(round));
            }
        }
        WFI_PATH.publish(shm::STATS);
        WAKE_PATH.publish(shm::STATS + 4);
        write64(slot(1, shm::STALE), STALE.load(Ordering::Relaxed));
        barrier();
        write64(slot(1, shm::DONE), 1);
        barrier();
        mmio_write32(REGS + reg::DOORBELL as usize, 1);
        guest_rt::system_off();
    }

    println!("pingpong end 0: {rounds} rounds after {WARMUP} unmeasured");
    // End 1 may start after us: wait for it rather than ring into nothing.
    while read64(slot(1, shm::READY)) != 1 {
        core::hint::black_box(0u64);
    }
    let mut rtt_sum = 0u64;
    for round in 1..=total {
        let seq = seq_of(round);
        // The last ring's answer is end 1's DONE ring, not a measured one.
        EXPECT.store(if round < total { seq } else { 0 }, Ordering::Relaxed);
        let before = cntpct();
        ring(0, seq);
        if round == total {
            break;
        }
        wait_rings(round);
        if seq != 0 {
            rtt_sum += ENTERED.load(Ordering::Relaxed).saturating_sub(before);
        }
    }
    while read64(slot(1, shm::DONE)) != 1 {
        wait_rings(RINGS.load(Ordering::SeqCst) + 1);
    }
    let (to0_wfi, to0_wake) = (
        WFI_PATH.count.load(Ordering::Relaxed),
        WAKE_PATH.count.load(Ordering::Relaxed),
    );
    WFI_PATH.merge(shm::STATS);
    WAKE_PATH.merge(shm::STATS + 4);
    let stale = STALE.load(Ordering::Relaxed) + read64(slot(1, shm::STALE));
    let (wfi, wake) = (
        WFI_PATH.count.load(Ordering::Relaxed),
        WAKE_PATH.count.load(Ordering::Relaxed),
    );
    println!(
        "pingpong: to end 0 {to0_wfi} at WFI, {to0_wake} at the doorbell; to end 1 {} at WFI, {} at the doorbell",
        wfi - to0_wfi,
        wake - to0_wake
    );
    // End 1 measured `rounds` rings, end 0 one answer fewer.
    let expected = 2 * rounds - 1;
    if stale != 0 || wfi + wake != expected || wfi == 0 {
        println!(
            "FAIL pingpong: of {expected} handoffs {wfi} at WFI, {wake} at the doorbell, {stale} matched no stamp"
        );
        guest_rt::system_off();
    }
    WFI_PATH.report("vcpu_switch");
    WAKE_PATH.report("vcpu_switch_wake");
    println!(
        "BENCH vm_pingpong_rtt instructions {}",
        rtt_sum / (rounds - 1)
    );
    println!("pingpong done");
    guest_rt::system_off()
}
