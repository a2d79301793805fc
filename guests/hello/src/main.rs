//! The simplest guest: prints a greeting and a few heartbeats, proves it
//! runs at EL1 with its own view of memory, then powers its VM off.
#![no_std]
#![no_main]

use guest_rt::println;

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) el) };
    println!(
        "hello from a Bulkhead guest at EL{} (vcpu {})",
        el >> 2,
        guest_rt::vcpu_index()
    );
    let mut sum: u64 = 0;
    for beat in 1..=5u64 {
        let start = guest_rt::counter();
        // Some work between heartbeats: a checksum over a rolling value.
        for i in 0..20_000u64 {
            sum = sum.wrapping_mul(31).wrapping_add(i ^ beat);
        }
        println!(
            "heartbeat {beat}/5 checksum={sum:#018x} ticks={}",
            guest_rt::counter() - start
        );
    }
    // QEMU virt's PL031 RTC: another VM's passthrough device, or nobody's.
    // It is not in this VM's stage 2, so the access must fault.
    match guest_rt::probe(|| guest_rt::mmio_read32(0x0901_0000)) {
        Err(f) => println!(
            "the RTC at 0x9010000 is not ours: refused (ESR {:#x})",
            f.esr
        ),
        Ok(v) => println!("LEAK read the RTC at 0x9010000: {v:#x}"),
    }
    println!("PASS hello");
    guest_rt::system_off()
}
