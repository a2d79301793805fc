//! The snapshot tests' guest: a sequence counter with a memory region that
//! changes with it. Every 10 ms of its virtual time (its own timer) it
//! advances the count, rewrites a few words of a 2 MiB region, and prints
//! `COUNT n sum=S`, where S is the region's checksum, kept up to date as
//! it writes. Every tenth tick it also adds the whole region up again and
//! prints `FAIL` if that differs from S. The region and S depend only on
//! n, so the same n always prints the same S: a restored copy must go on
//! from the count it was taken at, printing the sums the original did,
//! with its memory intact (docs/snapshot.md). Stops after
//! `counter.ticks=N` ticks (600 if not given), one every
//! `counter.period_ms=P` ms (10 if not given). `counter.fill=M` also
//! writes M MiB past the region once at boot (a constant pattern, outside
//! the sums), so a snapshot or migration has that much more to send.
//! `counter.chan=1` makes the VM's first channel end's shared memory a
//! second region: each tick rewrites one of its words too, S covers both
//! regions, and the tenth-tick check adds it up as well, so a restored VM
//! whose channel memory did not come back as it was prints `FAIL`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{counter, gic, mmio_read32, println, read64, vtimer, write64};

const VTIMER_INTID: u32 = 27;
const REGION_BYTES: usize = 2 << 20;
const WORDS: usize = REGION_BYTES / 8;
const TICKS_DEFAULT: u64 = 600;
/// Words rewritten per tick.
const WRITES: u64 = 16;

static N: AtomicU64 = AtomicU64::new(0);
static SUM: AtomicU64 = AtomicU64::new(0);
static PERIOD: AtomicU64 = AtomicU64::new(0);
static FIRED: AtomicU64 = AtomicU64::new(0);

/// The VM's first channel end (bulkhead_config::channel_regs_ipa(0) and
/// channel_shm_ipa(0)); its SIZE register says how big the memory is.
const CHAN_REGS: usize = 0x1000_0000;
const CHAN_SHM: usize = 0x1010_0000;
const CHAN_SIZE_REG: usize = 0x10;

/// A word's value from its index and the tick that wrote it.
fn mix(i: u64, n: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb) | 1
}

fn cval() -> u64 {
    let v: u64;
    // SAFETY: reading this vCPU's timer compare value.
    unsafe { core::arch::asm!("mrs {}, cntv_cval_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn freq() -> u64 {
    let f: u64;
    // SAFETY: reading the counter frequency has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

fn irq() {
    let id = gic::ack();
    if id == VTIMER_INTID {
        // The next tick one period after this one was due.
        vtimer::arm(cval() + PERIOD.load(Ordering::Relaxed));
        FIRED.fetch_add(1, Ordering::SeqCst);
    }
    if id < 1020 {
        gic::eoi(id);
    }
}

fn region() -> usize {
    // Page-aligned, past the image.
    (guest_rt::image_end() + 0xfff) & !0xfff
}

fn full_sum(chan_words: usize) -> u64 {
    let base = region();
    let ram = (0..WORDS).fold(0u64, |s, i| s.wrapping_add(read64(base + 8 * i)));
    (0..chan_words).fold(ram, |s, i| s.wrapping_add(read64(CHAN_SHM + 8 * i)))
}

#[unsafe(no_mangle)]
pub extern "C" fn guest_main() -> ! {
    let ticks = guest_rt::dtb_value(b"counter.ticks=").unwrap_or(TICKS_DEFAULT);
    let base = region();
    for i in 0..WORDS {
        write64(base + 8 * i, mix(i as u64, 0));
    }
    // The channel's words are numbered on from the region's.
    let chan_words = if guest_rt::dtb_value(b"counter.chan=") == Some(1) {
        mmio_read32(CHAN_REGS + CHAN_SIZE_REG) as usize / 8
    } else {
        0
    };
    for i in 0..chan_words {
        write64(CHAN_SHM + 8 * i, mix((WORDS + i) as u64, 0));
    }
    SUM.store(full_sum(chan_words), Ordering::SeqCst);
    let fill = guest_rt::dtb_value(b"counter.fill=").unwrap_or(0) as usize;
    let extra = base + REGION_BYTES;
    for i in 0..(fill << 20) / 8 {
        write64(extra + 8 * i, 0x636f_756e_7465_7200 | (i as u64 & 0xff));
    }
    println!(
        "COUNTER boot: {} KiB region, {} bytes of channel memory, {fill} MiB filled, {ticks} ticks",
        REGION_BYTES >> 10,
        chan_words * 8
    );
    let period_ms = guest_rt::dtb_value(b"counter.period_ms=")
        .unwrap_or(10)
        .clamp(1, 1000);
    PERIOD.store(freq() * period_ms / 1000, Ordering::SeqCst);
    gic::init_distributor();
    gic::init_cpu(0, 1 << VTIMER_INTID);
    guest_rt::set_irq_handler(irq);
    vtimer::arm(counter() + PERIOD.load(Ordering::Relaxed));
    gic::enable_irqs();
    let mut seen = 0;
    loop {
        while FIRED.load(Ordering::SeqCst) == seen {
            // SAFETY: WFI has no memory effects; the timer ends it.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        }
        seen += 1;
        let n = N.fetch_add(1, Ordering::SeqCst) + 1;
        let mut sum = SUM.load(Ordering::SeqCst);
        for k in 0..WRITES {
            let i = (n.wrapping_mul(7919).wrapping_add(k * 104_729)) % WORDS as u64;
            let at = base + 8 * i as usize;
            let new = mix(i, n);
            sum = sum.wrapping_sub(read64(at)).wrapping_add(new);
            write64(at, new);
        }
        if chan_words > 0 {
            let i = n as usize % chan_words;
            let at = CHAN_SHM + 8 * i;
            let new = mix((WORDS + i) as u64, n);
            sum = sum.wrapping_sub(read64(at)).wrapping_add(new);
            write64(at, new);
        }
        SUM.store(sum, Ordering::SeqCst);
        if n % 10 == 0 {
            let whole = full_sum(chan_words);
            if whole != sum {
                println!("FAIL COUNT {n}: region sums to {whole:#x}, kept sum {sum:#x}");
                guest_rt::system_off();
            }
        }
        println!("COUNT {n} sum={sum:016x}");
        if n >= ticks {
            println!("COUNTER done at {n}");
            guest_rt::system_off();
        }
    }
}
