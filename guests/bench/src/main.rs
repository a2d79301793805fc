//! Micro-benchmarks. Runs under Bulkhead and natively on QEMU virt (EL1, no
//! hypervisor); prints `BENCH <name> <unit> <value>` lines that
//! `cargo xtask bench` pairs up. Under `-icount shift=0` with `-cpu max` the
//! counter ticks once per instruction, so every figure is an instruction
//! count that repeats exactly.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use guest_rt::{counter, gic, hvc, mmio_read32, println, probe, psci, read64, vtimer, write64};

/// Iterations per figure; `bench.quick` on the command line (the device
/// tree's bootargs) makes every loop short, for the CI smoke run.
fn iters() -> u64 {
    static QUICK: AtomicUsize = AtomicUsize::new(2);
    let q = guest_rt::dtb_flag(&QUICK, b"bench.quick");
    if q {
        20
    } else {
        1000
    }
}

/// Waiting for the other vCPU. Normally a YIELD, which under QEMU's
/// one-thread `-icount` hands the host thread to the other vCPU's pCPU at
/// once. With `bench.shared` on the command line both vCPUs share one pCPU
/// (a pool VM): there is no other pCPU to hand over to, the other vCPU runs
/// when the hypervisor switches to it, and a YIELD per spin would only end
/// a translation block each time, so the loop spins on plain arithmetic.
fn wait() {
    static SHARED: AtomicUsize = AtomicUsize::new(2);
    if guest_rt::dtb_flag(&SHARED, b"bench.shared") {
        core::hint::black_box(0u64);
    } else {
        guest_rt::relax();
    }
}

const SGI_IPI: u32 = 1;
const SGI_SELF: u32 = 2;
const VTIMER_INTID: u32 = 27;

/// Set by the IRQ handler: the counter when it ran, and how often.
static STAMP: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
/// Cost of acknowledge + EOI, measured inside the handler when set.
static MEASURE_EOI: AtomicUsize = AtomicUsize::new(0);
static EOI_TICKS: AtomicU64 = AtomicU64::new(0);
/// What vCPU 1 does between interrupts: 0 spin, 1 wait in WFI.
static MODE: AtomicUsize = AtomicUsize::new(0);
static SECONDARY_UP: AtomicUsize = AtomicUsize::new(0);

fn irq() {
    if MEASURE_EOI.load(Ordering::Relaxed) == 1 {
        let t0 = counter();
        let id = gic::ack();
        gic::eoi(id);
        let t1 = counter();
        EOI_TICKS.store(t1 - t0, Ordering::Relaxed);
        HITS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let t = counter();
    let id = gic::ack();
    if id == VTIMER_INTID {
        vtimer::disarm();
    }
    if id < 1020 {
        STAMP.store(t, Ordering::SeqCst);
        gic::eoi(id);
        HITS.fetch_add(1, Ordering::SeqCst);
    }
}

fn secondary(index: usize) -> ! {
    gic::init_cpu(index, 1 << SGI_IPI);
    gic::enable_irqs();
    SECONDARY_UP.store(1, Ordering::SeqCst);
    loop {
        if MODE.load(Ordering::Relaxed) == 1 {
            // SAFETY: WFI has no memory effects.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        } else {
            wait();
        }
    }
}

/// min / average / max of `f`'s latencies over `n` runs.
fn latency(n: u64, mut f: impl FnMut() -> u64) -> (u64, u64, u64) {
    let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
    for _ in 0..n {
        let l = f();
        min = min.min(l);
        max = max.max(l);
        sum += l;
    }
    (min, sum / n.max(1), max)
}

fn report_latency(name: &str, (min, avg, max): (u64, u64, u64)) {
    report(name, avg);
    println!("BENCH {name}.min instructions {min}");
    println!("BENCH {name}.max instructions {max}");
}

/// Waits until the IRQ handler has run once more than `before`.
fn wait_hit(before: u64) {
    while HITS.load(Ordering::SeqCst) == before {
        wait();
    }
}

fn interrupt_benchmarks() {
    gic::init_distributor();
    gic::init_cpu(0, (1 << SGI_SELF) | (1 << VTIMER_INTID));
    guest_rt::set_irq_handler(irq);
    guest_rt::set_secondary_main(secondary);
    let r = hvc(psci::CPU_ON, 1, guest_rt::secondary_entry(), 1).0 as i64;
    if r != psci::SUCCESS {
        println!("FAIL CPU_ON(1) = {r}");
        guest_rt::system_off();
    }
    while SECONDARY_UP.load(Ordering::SeqCst) == 0 {
        guest_rt::relax();
    }
    gic::enable_irqs();
    let n = iters();

    // Acknowledge + EOI of a virtual interrupt, measured in the handler.
    let floor = {
        let t0 = counter();
        counter() - t0
    };
    MEASURE_EOI.store(1, Ordering::SeqCst);
    let (_, eoi, _) = latency(n, || {
        let before = HITS.load(Ordering::SeqCst);
        gic::send_sgi(0, SGI_SELF);
        wait_hit(before);
        EOI_TICKS.load(Ordering::SeqCst).saturating_sub(floor)
    });
    MEASURE_EOI.store(0, Ordering::SeqCst);
    report("eoi", eoi);

    // SGI to vCPU 1 (another pCPU), spinning, until its handler runs.
    MODE.store(0, Ordering::SeqCst);
    report_latency(
        "ipi",
        latency(n, || {
            let before = HITS.load(Ordering::SeqCst);
            let t0 = counter();
            gic::send_sgi(1, SGI_IPI);
            wait_hit(before);
            STAMP.load(Ordering::SeqCst).saturating_sub(t0)
        }),
    );

    // The same with vCPU 1 blocked in WFI.
    MODE.store(1, Ordering::SeqCst);
    report_latency(
        "wfi_wake",
        latency(n, || {
            // Give vCPU 1 time to reach WFI.
            let settle = counter() + 20_000;
            while counter() < settle {}
            let before = HITS.load(Ordering::SeqCst);
            let t0 = counter();
            gic::send_sgi(1, SGI_IPI);
            wait_hit(before);
            STAMP.load(Ordering::SeqCst).saturating_sub(t0)
        }),
    );
    MODE.store(0, Ordering::SeqCst);

    // Virtual timer programmed to fire at T: handler entry minus T.
    report_latency(
        "vtimer_latency",
        latency(n, || {
            let before = HITS.load(Ordering::SeqCst);
            let t = counter() + 5_000;
            vtimer::arm(t);
            wait_hit(before);
            STAMP.load(Ordering::SeqCst).saturating_sub(t)
        }),
    );
    gic::disable_irqs();
}

/// Average ticks per iteration of `f`, minus the cost of an empty loop.
fn measure(iters: u64, mut f: impl FnMut()) -> u64 {
    let t0 = counter();
    for _ in 0..iters {
        f();
    }
    let t1 = counter();
    let e0 = counter();
    for _ in 0..iters {
        core::hint::black_box(());
    }
    let e1 = counter();
    ((t1 - t0).saturating_sub(e1 - e0)) / iters
}

fn report(name: &str, value: u64) {
    println!("BENCH {name} instructions {value}");
}

/// A few MiB after the image: ours both in a VM and natively.
const BUF_BYTES: usize = 4 << 20;

fn mem_stream() -> u64 {
    let base = guest_rt::image_end();
    let words = BUF_BYTES / 8;
    for i in 0..words {
        write64(base + 8 * i, i as u64);
    }
    let t0 = counter();
    let mut sum = 0u64;
    for i in 0..words {
        sum = sum.wrapping_add(read64(base + 8 * i));
    }
    let t = counter() - t0;
    core::hint::black_box(sum);
    t
}

/// One timed pass writing the buffer: under dirty tracking each page's
/// first write faults to the hypervisor once.
fn mem_write() -> u64 {
    let base = guest_rt::image_end();
    let t0 = counter();
    for i in 0..BUF_BYTES / 8 {
        write64(base + 8 * i, !(i as u64));
    }
    counter() - t0
}

/// `bench.track` (configs/bench-track.toml): `mem_stream` and `mem_write`
/// before and after the shell's `track bench` turns dirty tracking on,
/// in one run. The figures wait for a key on the console in between.
fn tracked_benchmarks() -> ! {
    report("mem_write_untracked", mem_write());
    report("mem_stream_untracked", mem_stream());
    println!("bench: press a key once tracking is on");
    const UART_FR: usize = guest_rt::UART + 0x18;
    const FR_RXFE: u32 = 1 << 4;
    while mmio_read32(UART_FR) & FR_RXFE != 0 {
        core::hint::spin_loop();
    }
    let _ = mmio_read32(guest_rt::UART);
    // The first write pass takes the faults; mem_stream's own untimed
    // writes then find every page writable, and its reads are timed on
    // the split stage 2.
    report("mem_write_tracked", mem_write());
    report("mem_stream_tracked", mem_stream());
    println!("bench done");
    guest_rt::system_off()
}

fn pointer_chase() -> u64 {
    let base = guest_rt::image_end();
    // One slot per 64-byte line, linked in a pseudo-random cycle.
    let slots = BUF_BYTES / 64;
    let stride = 40_503usize; // odd, so coprime with the power-of-two slot count
    for i in 0..slots {
        let next = (i + stride) % slots;
        write64(base + 64 * i, (base + 64 * next) as u64);
    }
    let t0 = counter();
    let mut p = base;
    for _ in 0..slots {
        p = read64(p) as usize;
    }
    let t = counter() - t0;
    core::hint::black_box(p);
    t
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    // Natively, QEMU's own PSCI conduit answers the vendor hypercall with
    // NOT_SUPPORTED (or it is undefined); only Bulkhead returns 0.
    let virtualized = matches!(probe(|| hvc(psci::BULKHEAD_NULL, 0, 0, 0).0), Ok(0));
    println!(
        "bench guest: {}",
        if virtualized {
            "under Bulkhead"
        } else {
            "native"
        }
    );
    if virtualized && guest_rt::dtb_contains(b"bench.track") {
        tracked_benchmarks();
    }
    if virtualized {
        // Warm up, then measure the guest `hvc` -> guest resume round trip.
        measure(10, || {
            hvc(psci::BULKHEAD_NULL, 0, 0, 0);
        });
        report(
            "hvc_null",
            measure(iters(), || {
                hvc(psci::BULKHEAD_NULL, 0, 0, 0);
            }),
        );
    }
    report(
        "mmio_uart_read",
        measure(iters(), || {
            mmio_read32(guest_rt::UART + 0x18);
        }),
    );
    report(
        "mmio_vgic_read",
        measure(iters(), || {
            mmio_read32(gic::GICD + 0x8);
        }),
    );
    interrupt_benchmarks();
    report("mem_stream", mem_stream());
    report("pointer_chase", pointer_chase());
    println!("bench done");
    guest_rt::system_off()
}
