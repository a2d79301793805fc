//! The isolation guest. As `attacker` it tries to reach memory and devices
//! that are not its own; every attempt must be refused with an abort (or an
//! undefined-instruction exception, or a PSCI error). As `victim` it fills
//! its memory with a pattern and checks it stays intact while printing a
//! running checksum. Which role: the attacker runs with 2 MiB of RAM, the
//! victim with more (it probes whether 0x4020_0000 is its own RAM).
#![no_std]
#![no_main]

use guest_rt::{hvc, println, probe, psci, read64, write64};

const RAM: usize = 0x4000_0000;

/// Addresses the attacker has no right to: (what, IPA).
const TARGETS: &[(&str, usize)] = &[
    ("hypervisor image (host PA 0x40200000)", 0x4020_0000),
    ("hypervisor heap region", 0x4100_0000),
    ("victim RAM (host PA 0x50000000)", 0x5000_0000),
    ("victim pattern buffer", 0x5010_0000),
    ("top of board RAM", 0x7fff_f000),
    ("GIC ITS (not emulated)", 0x0808_0000),
    ("another CPU's GIC redistributor", 0x080c_0000),
    ("past the virtual UART", 0x0900_1000),
    ("PCIe ECAM window", 0x3f00_0000),
    ("flash", 0x0000_0000),
    ("end of the IPA space", 0x7f_ffff_f000),
];

fn attacker() -> ! {
    let mut refused = 0;
    let mut attempts = 0;
    let leak = |what: &str, how: &str| {
        println!("LEAK {how} {what} succeeded");
    };
    // Sanity: our own RAM works.
    if probe(|| write64(RAM + 0x10_0000, 0x55)).is_err() || read64(RAM + 0x10_0000) != 0x55 {
        println!("FAIL own RAM not usable");
        guest_rt::system_off();
    }
    for &(what, ipa) in TARGETS {
        for write in [false, true] {
            attempts += 1;
            let r = if write {
                probe(|| write64(ipa, 0xbad0_bad0))
            } else {
                probe(|| {
                    read64(ipa);
                })
            };
            let how = if write { "write" } else { "read" };
            match r {
                Err(f) => {
                    refused += 1;
                    println!(
                        "refused {how} {what} at {ipa:#x}: ESR {:#x} (EC {:#x})",
                        f.esr,
                        f.ec()
                    );
                }
                Ok(()) => leak(what, how),
            }
        }
    }
    // The GIC at 0x0800_0000 is this VM's own emulated one: its IIDR is
    // Bulkhead's, and disabling it (and every SPI) touches nothing physical
    // (the victim keeps running).
    let iidr = guest_rt::mmio_read32(0x0800_0008);
    if iidr != 0x4200_043b {
        println!("FAIL GICD_IIDR {iidr:#x}: not Bulkhead's virtual distributor");
    } else {
        println!("GIC distributor at 0x8000000 is the virtual one (IIDR {iidr:#x}); disabling it and all SPIs");
    }
    guest_rt::mmio_write32(0x0800_0000, 0);
    for word in 1..32 {
        guest_rt::mmio_write32(0x0800_0180 + 4 * word, 0xffff_ffff);
    }
    // An access the syndrome cannot describe: a load pair from the UART.
    attempts += 1;
    match probe(|| {
        let (a, b): (u64, u64);
        // SAFETY: deliberately faulting probe.
        unsafe {
            core::arch::asm!("ldp {}, {}, [{}]", out(reg) a, out(reg) b, in(reg) 0x0900_0000usize)
        };
        a ^ b
    }) {
        Err(f) => {
            refused += 1;
            println!("refused load pair from the UART: ESR {:#x}", f.esr);
        }
        Ok(_) => leak("load pair from the UART", "ldp"),
    }
    // System registers: set/way cache maintenance and an IMPLEMENTATION
    // DEFINED register are trapped by EL2 and answered as undefined.
    attempts += 1;
    // SAFETY: deliberately trapping instruction.
    match probe(|| unsafe { core::arch::asm!("dc isw, {}", in(reg) 0usize) }) {
        Err(f) if f.ec() == 0 => {
            refused += 1;
            println!("refused DC ISW (set/way): undefined, ESR {:#x}", f.esr);
        }
        _ => leak("DC ISW", "sysreg"),
    }
    attempts += 1;
    // SAFETY: deliberately trapping instruction.
    match probe(|| unsafe { core::arch::asm!("mrs {}, s3_0_c15_c0_0", out(reg) _) }) {
        Err(f) if f.ec() == 0 => {
            refused += 1;
            println!(
                "refused IMPLEMENTATION DEFINED register read: ESR {:#x}",
                f.esr
            );
        }
        _ => leak("IMPDEF register read", "sysreg"),
    }
    attempts += 1;
    // SAFETY: deliberately faulting instruction: EL2 registers do not exist at EL1.
    match probe(|| unsafe { core::arch::asm!("mrs {}, vttbr_el2", out(reg) _) }) {
        Err(f) if f.ec() == 0 => {
            refused += 1;
            println!("refused VTTBR_EL2 read: undefined, ESR {:#x}", f.esr);
        }
        _ => leak("VTTBR_EL2 read", "sysreg"),
    }
    // Firmware calls that are not ours: unknown SMCCC and a CPU that does not exist.
    attempts += 1;
    if hvc(0x8200_0001, 1, 2, 3).0 as i64 == psci::NOT_SUPPORTED {
        refused += 1;
        println!("refused SiP SMCCC call: NOT_SUPPORTED");
    } else {
        leak("SiP SMCCC call", "hvc");
    }
    attempts += 1;
    if hvc(psci::CPU_ON, 3, 0x4008_0000, 0).0 as i64 == psci::INVALID_PARAMETERS {
        refused += 1;
        println!("refused CPU_ON of a vCPU that does not exist: INVALID_PARAMETERS");
    } else {
        leak("CPU_ON(3)", "psci");
    }
    if refused == attempts {
        println!("PASS isolation: {refused}/{attempts} attempts refused");
    } else {
        println!("FAIL isolation: only {refused}/{attempts} attempts refused");
    }
    guest_rt::system_off()
}

const PATTERN_AT: usize = RAM + 0x10_0000;
const PATTERN_WORDS: usize = 0x10_0000 / 8;

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a
}

fn victim() -> ! {
    for i in 0..PATTERN_WORDS {
        write64(PATTERN_AT + 8 * i, pattern(i));
    }
    let mut checksum: u64 = 0;
    for round in 1..=40 {
        for i in 0..PATTERN_WORDS {
            let v = read64(PATTERN_AT + 8 * i);
            if v != pattern(i) {
                println!(
                    "FAIL victim memory changed at {:#x}: {v:#x}",
                    PATTERN_AT + 8 * i
                );
                guest_rt::system_off();
            }
            checksum = checksum.wrapping_mul(31).wrapping_add(v);
        }
        if round % 10 == 0 {
            println!("round {round}/40 checksum {checksum:#018x}");
        }
    }
    println!("PASS victim: memory intact, checksum {checksum:#018x}");
    guest_rt::system_off()
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    // 0x4020_0000 is our own RAM only if we have more than 2 MiB.
    if probe(|| {
        read64(0x4020_0000);
    })
    .is_ok()
    {
        victim()
    } else {
        attacker()
    }
}
