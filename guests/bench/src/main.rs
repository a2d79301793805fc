//! Micro-benchmarks. Runs under Bulkhead and natively on QEMU virt (EL1, no
//! hypervisor); prints `BENCH <name> <unit> <value>` lines that
//! `cargo xtask bench` pairs up. Under `-icount shift=0` with `-cpu max` the
//! counter ticks once per instruction, so every figure is an instruction
//! count that repeats exactly.
#![no_std]
#![no_main]

use guest_rt::{counter, hvc, mmio_read32, println, probe, psci, read64, write64};

const ITERS: u64 = 1000;

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
    if virtualized {
        // Warm up, then measure the guest `hvc` -> guest resume round trip.
        measure(10, || {
            hvc(psci::BULKHEAD_NULL, 0, 0, 0);
        });
        report(
            "hvc_null",
            measure(ITERS, || {
                hvc(psci::BULKHEAD_NULL, 0, 0, 0);
            }),
        );
    }
    report(
        "mmio_uart_read",
        measure(ITERS, || {
            mmio_read32(guest_rt::UART + 0x18);
        }),
    );
    report("mem_stream", mem_stream());
    report("pointer_chase", pointer_chase());
    println!("bench done");
    guest_rt::system_off()
}
