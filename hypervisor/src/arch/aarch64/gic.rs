//! The physical GICv3, owned by the hypervisor (GICv3 spec IHI0069).
//! Only what Bulkhead needs today: distributor and redistributor enabled,
//! one SGI (the "kick") that makes another pCPU look at its mailbox.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The SGI one pCPU sends another to make it re-examine its vCPU's state.
pub const KICK_SGI: u32 = 0;

static GICD: AtomicUsize = AtomicUsize::new(0);

// Distributor registers (GICv3 12.9).
const GICD_CTLR: usize = 0x0000;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_ENABLE_G1: u32 = 1 << 1;
const GICD_IGROUPR: usize = 0x0080;
const GICD_ISENABLER: usize = 0x0100;
const GICD_ICACTIVER: usize = 0x0380;
const GICD_IPRIORITYR: usize = 0x0400;
const GICD_IROUTER: usize = 0x6000;
// Redistributor registers (GICv3 12.10/12.11).
const GICR_TYPER: usize = 0x0008;
const GICR_WAKER: usize = 0x0014;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_SGI_BASE: usize = 0x1_0000;
const GICR_IGROUPR0: usize = GICR_SGI_BASE + 0x0080;
const GICR_ISENABLER0: usize = GICR_SGI_BASE + 0x0100;
const GICR_ISACTIVER0: usize = GICR_SGI_BASE + 0x0300;
const GICR_ICACTIVER0: usize = GICR_SGI_BASE + 0x0380;
const GICR_IPRIORITYR: usize = GICR_SGI_BASE + 0x0400;
const GICR_TYPER_LAST: u64 = 1 << 4;

fn rd32(addr: usize) -> u32 {
    // SAFETY: `addr` is inside a GIC frame from the host DTB, mapped as
    // device memory in the EL2 map.
    unsafe { read_volatile(addr as *const u32) }
}
fn wr32(addr: usize, v: u32) {
    // SAFETY: as for `rd32`.
    unsafe { write_volatile(addr as *mut u32, v) }
}
fn rd64(addr: usize) -> u64 {
    // SAFETY: as for `rd32`.
    unsafe { read_volatile(addr as *const u64) }
}

/// Enables the distributor with affinity routing (once, on the boot CPU).
pub fn init_distributor(gicd: usize) {
    GICD.store(gicd, Ordering::Relaxed);
    wr32(gicd + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1);
    while rd32(gicd + GICD_CTLR) & GICD_CTLR_RWP != 0 {}
}

/// Finds this CPU's redistributor in [base, base+size) by affinity
/// (GICR_TYPER.Affinity_Value), with frames of `stride` bytes.
pub fn find_redistributor(base: usize, size: usize, stride: usize, mpidr: u64) -> Option<usize> {
    let aff = (mpidr & 0xff_ffff) | ((mpidr >> 8) & 0xff00_0000);
    let mut frame = base;
    while frame + stride <= base + size {
        let typer = rd64(frame + GICR_TYPER);
        if (typer >> 32) == aff {
            return Some(frame);
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        frame += stride;
    }
    None
}

/// Wakes this CPU's redistributor, enables the kick SGI and the EL2 system
/// register interface.
pub fn init_cpu(gicr: usize) {
    let waker = rd32(gicr + GICR_WAKER);
    wr32(gicr + GICR_WAKER, waker & !WAKER_PROCESSOR_SLEEP);
    while rd32(gicr + GICR_WAKER) & WAKER_CHILDREN_ASLEEP != 0 {}
    // All SGIs/PPIs Group 1 (non-secure), kick SGI enabled at priority 0x80.
    wr32(gicr + GICR_IGROUPR0, 0xffff_ffff);
    wr32(
        gicr + GICR_IPRIORITYR + (KICK_SGI as usize & !3),
        0x8080_8080,
    );
    wr32(gicr + GICR_ISENABLER0, 1 << KICK_SGI);
    // SAFETY: ICC_SRE_EL2: SRE (system registers), DFB, DIB, Enable (lets
    // EL1 use ICC_SRE_EL1). Then unmask all priorities, EOImode 1 (priority
    // drop and deactivation split, so a hardware-backed interrupt stays
    // active until the guest deactivates it), and enable Group 1.
    unsafe {
        core::arch::asm!(
            "msr icc_sre_el2, {sre}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_ctlr_el1, {eoimode}",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            sre = in(reg) 0xfu64,
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            eoimode = in(reg) 2u64,
            options(nomem, nostack)
        )
    };
}

/// Sends the kick SGI to the CPU with affinity `mpidr` (ICC_SGI1R_EL1,
/// GICv3 12.2.23).
pub fn kick(mpidr: u64) {
    let aff0 = mpidr & 0xf;
    let rs = (mpidr & 0xff) >> 4;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    let v = (aff3 << 48)
        | (rs << 44)
        | (aff2 << 32)
        | ((KICK_SGI as u64) << 24)
        | (aff1 << 16)
        | (1 << aff0);
    // SAFETY: generating an SGI has no memory effects; the barrier makes the
    // mailbox writes before it visible to the target first.
    unsafe {
        core::arch::asm!("dsb ish", "msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack))
    };
}

/// Acknowledges the highest-priority pending Group 1 interrupt; `None` if
/// nothing (or only a spurious INTID) is pending.
pub fn ack() -> Option<u32> {
    let iar: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt; every caller
    // completes it with `eoi` (and `deactivate` unless a guest will).
    unsafe { core::arch::asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack)) };
    let intid = (iar & 0xff_ffff) as u32;
    (intid < 1020).then_some(intid)
}

/// Priority drop (EOImode = 1: deactivation is separate).
pub fn eoi(intid: u32) {
    // SAFETY: completes the priority drop of an interrupt we acknowledged.
    unsafe {
        core::arch::asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid as u64, options(nomem, nostack))
    };
}

/// Deactivation, for interrupts the hypervisor itself handled.
pub fn deactivate(intid: u32) {
    // SAFETY: deactivates an interrupt we acknowledged.
    unsafe {
        core::arch::asm!("msr icc_dir_el1, {}", "isb", in(reg) intid as u64, options(nomem, nostack))
    };
}

/// Enables PPI `intid` on the redistributor at `gicr` (Group 1, priority 0xa0).
pub fn enable_ppi(gicr: usize, intid: u32) {
    if intid >= 32 {
        return;
    }
    let prio = gicr + GICR_IPRIORITYR + (intid as usize);
    // SAFETY: byte access to IPRIORITYR is architected (GICv3 12.11.22).
    unsafe { write_volatile(prio as *mut u8, 0xa0) };
    wr32(gicr + GICR_ISENABLER0, 1 << intid);
}

/// Clears the active state of PPI `intid` (a vCPU that owned a
/// hardware-backed interrupt is gone and will never deactivate it).
pub fn clear_active_ppi(gicr: usize, intid: u32) {
    if intid < 32 {
        wr32(gicr + GICR_ICACTIVER0, 1 << intid);
    }
}

/// Whether PPI `intid` is active on the redistributor at `gicr`.
pub fn ppi_active(gicr: usize, intid: u32) -> bool {
    intid < 32 && rd32(gicr + GICR_ISACTIVER0) & (1 << intid) != 0
}

/// Sets or clears the active state of PPI `intid`: a vCPU moving between
/// pCPUs takes the state of its hardware-backed timer interrupt along
/// (set, the timer cannot fire again until the guest deactivates it).
pub fn set_ppi_active(gicr: usize, intid: u32, active: bool) {
    if intid >= 32 {
        return;
    }
    let reg = if active {
        GICR_ISACTIVER0
    } else {
        GICR_ICACTIVER0
    };
    wr32(gicr + reg, 1 << intid);
}

/// Routes SPI `intid` to the CPU with affinity `mpidr` and enables it
/// (Group 1, priority 0xa0, level-sensitive).
pub fn enable_spi(intid: u32, mpidr: u64) {
    let gicd = GICD.load(Ordering::Relaxed);
    if gicd == 0 || !(32..1020).contains(&intid) {
        return;
    }
    route_spi(intid, mpidr);
    let n = intid as usize;
    let word = 4 * (n / 32);
    let bit = 1u32 << (n % 32);
    wr32(
        gicd + GICD_IGROUPR + word,
        rd32(gicd + GICD_IGROUPR + word) | bit,
    );
    // SAFETY: byte access to IPRIORITYR is architected.
    unsafe { write_volatile((gicd + GICD_IPRIORITYR + n) as *mut u8, 0xa0) };
    wr32(gicd + GICD_ISENABLER + word, bit);
}

/// Routes SPI `intid` (enabled already) to the CPU with affinity `mpidr`:
/// it is delivered there from now on.
pub fn route_spi(intid: u32, mpidr: u64) {
    let gicd = GICD.load(Ordering::Relaxed);
    if gicd == 0 || !(32..1020).contains(&intid) {
        return;
    }
    let aff = (mpidr & 0xff_ffff) | ((mpidr >> 32) & 0xff) << 32;
    // SAFETY: GICD_IROUTER<n> is a 64-bit register of the distributor frame.
    unsafe { write_volatile((gicd + GICD_IROUTER + 8 * intid as usize) as *mut u64, aff) };
}

/// Clears the active state of SPI `intid`: the VM that owned it (and would
/// have deactivated it through the HW bit) has stopped.
pub fn clear_active_spi(intid: u32) {
    let gicd = GICD.load(Ordering::Relaxed);
    if gicd == 0 || !(32..1020).contains(&intid) {
        return;
    }
    let n = intid as usize;
    wr32(gicd + GICD_ICACTIVER + 4 * (n / 32), 1 << (n % 32));
}
