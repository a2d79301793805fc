//! The GICv3 virtual CPU interface control registers (ICH_*_EL2, GICv3 spec
//! 12.4). Guests use ICV_* directly (acknowledge and EOI never trap); the
//! hypervisor only fills list registers and reads back what the guest did.

use core::arch::asm;

/// Up to 16 list registers exist (ICH_VTR_EL2.ListRegs + 1).
pub const MAX_LRS: usize = 16;

/// ICH_HCR_EL2 bits.
pub const HCR_EN: u64 = 1 << 0;
pub const HCR_UIE: u64 = 1 << 1;

macro_rules! lr_access {
    ($n:expr, $op:ident, $v:ident) => {
        seq_lr!($n, $op, $v, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    };
}

macro_rules! seq_lr {
    ($n:expr, read, $v:ident, $($i:literal),*) => {
        match $n {
            $($i => {
                // SAFETY: reading a list register has no side effects.
                unsafe { asm!(concat!("mrs {}, ich_lr", stringify!($i), "_el2"), out(reg) $v, options(nomem, nostack)) }
            })*
            _ => {}
        }
    };
    ($n:expr, write, $v:ident, $($i:literal),*) => {
        match $n {
            $($i => {
                // SAFETY: a list register only describes virtual interrupts
                // for the guest running on this pCPU.
                unsafe { asm!(concat!("msr ich_lr", stringify!($i), "_el2, {}"), in(reg) $v, options(nomem, nostack)) }
            })*
            _ => {}
        }
    };
}

/// Number of implemented list registers.
pub fn num_lrs() -> usize {
    let vtr: u64;
    // SAFETY: ICH_VTR_EL2 is read-only identification.
    unsafe { asm!("mrs {}, ich_vtr_el2", out(reg) vtr, options(nomem, nostack)) };
    ((vtr & 0x1f) as usize + 1).min(MAX_LRS)
}

pub fn read_lr(n: usize) -> u64 {
    let mut v: u64 = 0;
    lr_access!(n, read, v);
    v
}

pub fn write_lr(n: usize, v: u64) {
    lr_access!(n, write, v);
}

/// ICH_ELRSR_EL2: bit `i` set when LR `i` holds no interrupt.
pub fn elrsr() -> u32 {
    let v: u64;
    // SAFETY: ICH_ELRSR_EL2 is a read-only status register.
    unsafe { asm!("mrs {}, ich_elrsr_el2", out(reg) v, options(nomem, nostack)) };
    v as u32
}

pub fn set_hcr(v: u64) {
    // SAFETY: ICH_HCR_EL2 controls the virtual CPU interface of the guest
    // on this pCPU only.
    unsafe { asm!("msr ich_hcr_el2, {}", "isb", in(reg) v, options(nomem, nostack)) };
}

/// Puts the virtual CPU interface in its reset state for a fresh vCPU:
/// VMCR (priority mask, group enables, EOI mode) and active-priority
/// registers zero, every list register empty, interface enabled.
pub fn reset_for_fresh_vcpu() {
    // SAFETY: these registers only hold the state of the guest about to run
    // on this pCPU.
    unsafe {
        asm!(
            "msr ich_vmcr_el2, xzr",
            "msr ich_ap1r0_el2, xzr",
            "msr ich_ap0r0_el2, xzr",
            options(nomem, nostack)
        )
    };
    for i in 0..num_lrs() {
        write_lr(i, 0);
    }
    set_hcr(HCR_EN);
}
