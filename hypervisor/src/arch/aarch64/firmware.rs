//! Calls from EL2 to the platform firmware (PSCI, SMCCC DEN0028): CPU_ON for
//! secondaries and SYSTEM_OFF when every VM has stopped.

fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut x0 = fid as u64;
    // SAFETY: an SMCCC fast call; registers x0-x17 may be clobbered by the
    // firmware (SMCCC 1.1 makes x4-x17 preserved, but we do not rely on it).
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") x0,
            inout("x1") a1 => _,
            inout("x2") a2 => _,
            inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack)
        )
    };
    x0 as i64
}

/// PSCI CPU_ON (64-bit): start the CPU with MPIDR `target` at `entry` (a
/// physical address) with `context` in x0.
pub fn cpu_on(target: u64, entry: u64, context: u64) -> i64 {
    call(0xC400_0003, target, entry, context)
}

/// PSCI SYSTEM_OFF. Returns only if the firmware refused.
pub fn system_off() -> i64 {
    call(0x8400_0008, 0, 0, 0)
}
