//! SMP and PSCI guest: brings up a second vCPU with CPU_ON, exercises the
//! PSCI error paths, shares memory between vCPUs, turns vCPU 1 off and on
//! again, then resets its VM and checks the restart came from a fresh image.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use guest_rt::{hvc, println, psci, smc};

/// Initialised data: SYSTEM_RESET must bring this back to its image value.
static MARKER: AtomicU64 = AtomicU64::new(0x1234_5678);

/// Bytes written with a pattern before the reset and checked after it.
const SCRUB_LEN: usize = 1 << 20;

/// 1 MiB past the end of the image (and its stacks), page aligned: RAM no
/// image byte covers, which only the hypervisor's scrub can clear.
fn scrub_base() -> usize {
    (guest_rt::image_end() + (1 << 20)) & !0xfff
}
static STARTS: AtomicUsize = AtomicUsize::new(0);
static SHARED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
/// vCPU 1 holds here until vCPU 0 has checked that a second CPU_ON is
/// refused, so it cannot be off again already.
static GO: AtomicUsize = AtomicUsize::new(0);

const ROUNDS: u64 = 20_000;

fn check(what: &str, got: u64, want: i64) {
    if got as i64 != want {
        println!("FAIL {what}: got {} want {want}", got as i64);
        guest_rt::system_off();
    }
    println!("ok {what} = {want}");
}

fn secondary(index: usize) -> ! {
    let n = STARTS.fetch_add(1, Ordering::SeqCst) + 1;
    println!(
        "vcpu {index} up (start {n}), MPIDR index {}",
        guest_rt::vcpu_index()
    );
    while GO.load(Ordering::SeqCst) == 0 {
        guest_rt::relax();
    }
    for _ in 0..ROUNDS {
        SHARED.fetch_add(1, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    guest_rt::cpu_off()
}

fn wait_affinity(target: u64, state: u64) {
    for _ in 0..10_000_000u64 {
        if hvc(psci::AFFINITY_INFO, target, 0, 0).0 == state {
            return;
        }
    }
    println!("FAIL vcpu {target} never reached affinity state {state}");
    guest_rt::system_off();
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    guest_rt::set_secondary_main(secondary);
    let (restarts, vcpu) = hvc(psci::BULKHEAD_VM_INFO, 0, 0, 0);
    println!("vcpu {vcpu} booted, restart count {restarts}");
    if restarts >= 1 {
        let m = MARKER.load(Ordering::SeqCst);
        if m != 0x1234_5678 || SHARED.load(Ordering::SeqCst) != 0 {
            println!("FAIL reset: memory survived the restart (marker {m:#x})");
            guest_rt::system_off();
        }
        println!("PASS reset (restart {restarts}, fresh image)");
        // Scrubbing: the pattern written beyond the image before the reset
        // must be gone, not merely overwritten by the reloaded image.
        let left = (0..SCRUB_LEN / 8)
            .filter(|i| guest_rt::read64(scrub_base() + 8 * i) != 0)
            .count();
        if left == 0 {
            println!(
                "PASS scrub: the {} KiB beyond the image read zero after the restart",
                SCRUB_LEN >> 10
            );
        } else {
            println!("FAIL scrub: {left} words beyond the image survived the restart");
        }
        guest_rt::system_off();
    }

    check("PSCI_VERSION", hvc(psci::VERSION, 0, 0, 0).0, 0x1_0001);
    check(
        "PSCI_FEATURES(CPU_ON)",
        hvc(psci::FEATURES, psci::CPU_ON as u64, 0, 0).0,
        0,
    );
    check(
        "PSCI_FEATURES(unknown)",
        hvc(psci::FEATURES, 0x8400_00ff, 0, 0).0,
        psci::NOT_SUPPORTED,
    );
    check(
        "unknown SMCCC call over HVC",
        hvc(0xC200_0042, 0, 0, 0).0,
        psci::NOT_SUPPORTED,
    );
    check(
        "unknown SMCCC call over SMC",
        smc(0xC200_0042, 0, 0, 0).0,
        psci::NOT_SUPPORTED,
    );
    check(
        "PSCI_VERSION over SMC",
        smc(psci::VERSION, 0, 0, 0).0,
        0x1_0001,
    );
    let entry = guest_rt::secondary_entry();
    check(
        "CPU_ON(bad entry)",
        hvc(psci::CPU_ON, 1, 0x10, 1).0,
        psci::INVALID_ADDRESS,
    );
    check(
        "CPU_ON(no such vCPU)",
        hvc(psci::CPU_ON, 7, entry, 7).0,
        psci::INVALID_PARAMETERS,
    );
    check(
        "AFFINITY_INFO(1) before CPU_ON",
        hvc(psci::AFFINITY_INFO, 1, 0, 0).0,
        1,
    );

    check("CPU_ON(1)", hvc(psci::CPU_ON, 1, entry, 1).0, psci::SUCCESS);
    let r = hvc(psci::CPU_ON, 1, entry, 1).0 as i64;
    if r != psci::ALREADY_ON && r != -5 {
        println!("FAIL second CPU_ON(1): got {r}, want ALREADY_ON or ON_PENDING");
        guest_rt::system_off();
    }
    println!("ok second CPU_ON(1) refused ({r})");
    GO.store(1, Ordering::SeqCst);
    for _ in 0..ROUNDS {
        SHARED.fetch_add(1, Ordering::SeqCst);
    }
    wait_affinity(1, 1);
    check(
        "shared counter after both vCPUs",
        SHARED.load(Ordering::SeqCst),
        2 * ROUNDS as i64,
    );

    // vCPU 1 turned itself off; it must come back at a new CPU_ON.
    check(
        "CPU_ON(1) again",
        hvc(psci::CPU_ON, 1, entry, 1).0,
        psci::SUCCESS,
    );
    wait_affinity(1, 1);
    check("vCPU 1 starts", STARTS.load(Ordering::SeqCst) as u64, 2);
    println!("PASS psci");

    MARKER.store(0xdead, Ordering::SeqCst);
    for i in 0..SCRUB_LEN / 8 {
        guest_rt::write64(scrub_base() + 8 * i, 0x5a5a_5a5a_0000_0000 | i as u64);
    }
    println!(
        "wrote a pattern over {} KiB beyond the image",
        SCRUB_LEN >> 10
    );
    println!("resetting the VM over SMC");
    smc(psci::SYSTEM_RESET, 0, 0, 0);
    println!("FAIL SYSTEM_RESET returned");
    guest_rt::system_off()
}
