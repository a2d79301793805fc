//! A vCPU's whole register state, for vCPUs that share a pCPU (pool VMs):
//! the EL1 system registers, the timers, FP/SIMD and the GIC virtual CPU
//! interface. A pinned vCPU never needs it: its state stays in the
//! registers of its own pCPU for its whole life.
//!
//! What is saved follows what the CPU implements: the pointer
//! authentication keys, TCR2_EL1, SCTLR2_EL1, the permission indirection
//! and overlay registers are switched only where the ID registers say
//! they exist (read once, [`features`]). SVE and SME are not offered to
//! guests (`-cpu max,sve=off,sme=off`, CPTR_EL2.TZ/TSM), so there is no
//! Z/P/ZA state; MTE tag registers are not switched because QEMU's `virt`
//! gives no tag memory (MTE stays at instructions only).

use super::ich;
use core::arch::{asm, global_asm};
use spin::Once;

pub use bulkhead_exit::features::Features;

static FEATURES: Once<Features> = Once::new();

/// Reads the ID registers once (every pCPU is the same CPU type).
pub fn features() -> Features {
    *FEATURES.call_once(|| {
        let (isar1, isar2, mmfr3): (u64, u64, u64);
        // SAFETY: ID registers are read-only; ID_AA64ISAR2_EL1 and
        // ID_AA64MMFR3_EL1 are in the ID space, which reads as zero where
        // a register is not implemented.
        unsafe {
            asm!(
                "mrs {0}, id_aa64isar1_el1",
                "mrs {1}, s3_0_c0_c6_2",
                "mrs {2}, s3_0_c0_c7_3",
                out(reg) isar1, out(reg) isar2, out(reg) mmfr3,
                options(nomem, nostack, preserves_flags)
            )
        };
        log::debug!("ID_AA64ISAR1 {isar1:#x} ISAR2 {isar2:#x} MMFR3 {mmfr3:#x}");
        bulkhead_exit::features::from_id_regs(isar1, isar2, mmfr3)
    })
}

macro_rules! el1_regs {
    ($($field:ident: $reg:literal),* $(,)?) => {
        /// The EL1 and EL0 system registers every AArch64 CPU has, and the
        /// timers.
        #[derive(Clone, Copy, Default)]
        #[repr(C)]
        pub struct El1 {
            $(pub $field: u64,)*
        }

        impl El1 {
            /// The registers in declaration order (snapshots).
            pub fn fields_mut(&mut self) -> impl Iterator<Item = &mut u64> {
                [$(&mut self.$field,)*].into_iter()
            }

            fn save(&mut self) {
                $(
                    // SAFETY: reading a guest EL1 register has no side effects.
                    unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                )*
            }

            fn restore(&self) {
                $(
                    // SAFETY: these registers describe only the guest's EL1
                    // and EL0 context; EL2 runs on its own (SCTLR_EL2, TTBR0_EL2...).
                    unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                )*
            }
        }
    };
}

el1_regs! {
    sctlr: "sctlr_el1",
    cpacr: "cpacr_el1",
    ttbr0: "ttbr0_el1",
    ttbr1: "ttbr1_el1",
    tcr: "tcr_el1",
    mair: "mair_el1",
    amair: "amair_el1",
    vbar: "vbar_el1",
    contextidr: "contextidr_el1",
    tpidr_el0: "tpidr_el0",
    tpidrro_el0: "tpidrro_el0",
    tpidr_el1: "tpidr_el1",
    sp_el0: "sp_el0",
    sp_el1: "sp_el1",
    elr_el1: "elr_el1",
    spsr_el1: "spsr_el1",
    esr_el1: "esr_el1",
    far_el1: "far_el1",
    afsr0: "afsr0_el1",
    afsr1: "afsr1_el1",
    par: "par_el1",
    cntkctl: "cntkctl_el1",
    csselr: "csselr_el1",
    cntv_cval: "cntv_cval_el0",
    cntp_cval: "cntp_cval_el0",
    cntv_ctl: "cntv_ctl_el0",
    cntp_ctl: "cntp_ctl_el0",
}

macro_rules! opt_regs {
    ($($feature:ident => [$($field:ident: $reg:literal),*]),* $(,)?) => {
        /// The EL1 registers only some CPUs have.
        #[derive(Clone, Copy, Default)]
        #[repr(C)]
        pub struct Optional {
            $($(pub $field: u64,)*)*
        }

        impl Optional {
            /// The registers in declaration order (snapshots).
            pub fn fields_mut(&mut self) -> impl Iterator<Item = &mut u64> {
                [$($(&mut self.$field,)*)*].into_iter()
            }

            fn save(&mut self, f: Features) {
                $(if f.$feature {
                    $(
                        // SAFETY: the ID registers say this register exists;
                        // reading it has no side effects.
                        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                    )*
                })*
            }

            fn restore(&self, f: Features) {
                $(if f.$feature {
                    $(
                        // SAFETY: the register exists (ID registers) and
                        // affects only EL1/EL0 translation and signing.
                        unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                    )*
                })*
            }
        }
    };
}

opt_regs! {
    pauth => [
        apia_lo: "s3_0_c2_c1_0", apia_hi: "s3_0_c2_c1_1",
        apib_lo: "s3_0_c2_c1_2", apib_hi: "s3_0_c2_c1_3",
        apda_lo: "s3_0_c2_c2_0", apda_hi: "s3_0_c2_c2_1",
        apdb_lo: "s3_0_c2_c2_2", apdb_hi: "s3_0_c2_c2_3",
        apga_lo: "s3_0_c2_c3_0", apga_hi: "s3_0_c2_c3_1"
    ],
    tcr2 => [tcr2: "s3_0_c2_c0_3"],
    sctlr2 => [sctlr2: "s3_0_c1_c0_3"],
    s1pie => [pire0: "s3_0_c10_c2_2", pir: "s3_0_c10_c2_3"],
    s1poe => [por_el1: "s3_0_c10_c2_4", por_el0: "s3_3_c10_c2_4"],
}

/// FP/SIMD registers: V0-V31, FPCR, FPSR.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct Fp {
    pub v: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

impl Default for Fp {
    fn default() -> Self {
        Fp {
            v: [0; 32],
            fpcr: 0,
            fpsr: 0,
        }
    }
}

unsafe extern "C" {
    fn fp_save(to: *mut Fp);
    fn fp_restore(from: *const Fp);
}

// The hypervisor is built soft-float, so the assembler is told here that
// the instructions exist; CPTR_EL2.TFP is clear, so EL2 may use them.
global_asm!(
    ".arch_extension fp",
    ".arch_extension simd",
    ".global fp_save",
    "fp_save:",
    "stp q0, q1, [x0, #0]",
    "stp q2, q3, [x0, #32]",
    "stp q4, q5, [x0, #64]",
    "stp q6, q7, [x0, #96]",
    "stp q8, q9, [x0, #128]",
    "stp q10, q11, [x0, #160]",
    "stp q12, q13, [x0, #192]",
    "stp q14, q15, [x0, #224]",
    "stp q16, q17, [x0, #256]",
    "stp q18, q19, [x0, #288]",
    "stp q20, q21, [x0, #320]",
    "stp q22, q23, [x0, #352]",
    "stp q24, q25, [x0, #384]",
    "stp q26, q27, [x0, #416]",
    "stp q28, q29, [x0, #448]",
    "stp q30, q31, [x0, #480]",
    "mrs x1, fpcr",
    "mrs x2, fpsr",
    "add x0, x0, #512",
    "stp x1, x2, [x0]",
    "ret",
    ".global fp_restore",
    "fp_restore:",
    "ldp q0, q1, [x0, #0]",
    "ldp q2, q3, [x0, #32]",
    "ldp q4, q5, [x0, #64]",
    "ldp q6, q7, [x0, #96]",
    "ldp q8, q9, [x0, #128]",
    "ldp q10, q11, [x0, #160]",
    "ldp q12, q13, [x0, #192]",
    "ldp q14, q15, [x0, #224]",
    "ldp q16, q17, [x0, #256]",
    "ldp q18, q19, [x0, #288]",
    "ldp q20, q21, [x0, #320]",
    "ldp q22, q23, [x0, #352]",
    "ldp q24, q25, [x0, #384]",
    "ldp q26, q27, [x0, #416]",
    "ldp q28, q29, [x0, #448]",
    "ldp q30, q31, [x0, #480]",
    "add x0, x0, #512",
    "ldp x1, x2, [x0]",
    "msr fpcr, x1",
    "msr fpsr, x2",
    "ret",
);

const _: () = assert!(core::mem::offset_of!(Fp, fpcr) == 512);

/// The GIC virtual CPU interface of one vCPU.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Vgic {
    pub lrs: [u64; ich::MAX_LRS],
    pub vmcr: u64,
    pub ap0r0: u64,
    pub ap1r0: u64,
    pub hcr: u64,
}

impl Vgic {
    fn save(&mut self) {
        for (i, lr) in self.lrs.iter_mut().enumerate().take(ich::num_lrs()) {
            *lr = ich::read_lr(i);
        }
        // SAFETY: reading the virtual CPU interface has no side effects.
        unsafe {
            asm!(
                "mrs {0}, ich_vmcr_el2",
                "mrs {1}, ich_ap0r0_el2",
                "mrs {2}, ich_ap1r0_el2",
                "mrs {3}, ich_hcr_el2",
                out(reg) self.vmcr, out(reg) self.ap0r0, out(reg) self.ap1r0, out(reg) self.hcr,
                options(nomem, nostack, preserves_flags)
            )
        };
        // With no vCPU on the pCPU the interface is off, so its saved list
        // registers cannot raise maintenance interrupts (UIE) into EL2.
        ich::set_hcr(0);
    }

    fn restore(&self) {
        for (i, &lr) in self.lrs.iter().enumerate().take(ich::num_lrs()) {
            ich::write_lr(i, lr);
        }
        // SAFETY: these registers hold only the state of the vCPU about to
        // run on this pCPU.
        unsafe {
            asm!(
                "msr ich_vmcr_el2, {0}",
                "msr ich_ap0r0_el2, {1}",
                "msr ich_ap1r0_el2, {2}",
                "msr ich_hcr_el2, {3}",
                "isb",
                in(reg) self.vmcr, in(reg) self.ap0r0, in(reg) self.ap1r0, in(reg) self.hcr,
                options(nomem, nostack, preserves_flags)
            )
        };
    }
}

/// Everything of a vCPU that lives in registers while it runs, except the
/// general-purpose registers and ELR/SPSR_EL2, which the trap frame holds.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Context {
    pub el1: El1,
    pub opt: Optional,
    pub fp: Fp,
    pub vgic: Vgic,
}

impl Context {
    /// Reads this pCPU's registers into `self` and leaves the timers of
    /// the vCPU off, so they cannot fire into the next one.
    pub fn save(&mut self) {
        let f = features();
        self.el1.save();
        self.opt.save(f);
        // SAFETY: `self.fp` is a valid, aligned `Fp` that fp_save writes
        // 528 bytes of, as its layout says.
        unsafe { fp_save(&mut self.fp) };
        self.vgic.save();
        super::regs::set_cntv_ctl_el0(0);
        super::regs::set_cntp_ctl_el0(0);
    }

    /// Loads `self` into this pCPU's registers.
    pub fn restore(&self) {
        let f = features();
        self.el1.restore();
        self.opt.restore(f);
        // SAFETY: `self.fp` is a valid `Fp`; fp_restore only reads it.
        unsafe { fp_restore(&self.fp) };
        self.vgic.restore();
        // SAFETY: a barrier; the restored EL1 state takes effect before the
        // guest runs.
        unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
    }

    /// The state of a vCPU that has not run yet: the architectural reset
    /// values `vm::enter_fresh_vcpu` gives a pinned one (SCTLR_EL1 with
    /// the MMU and caches off, everything else zero), an empty interface
    /// with the virtual CPU interface enabled.
    pub fn fresh() -> Context {
        let mut c = Context::default();
        c.el1.sctlr = 0x30d0_0800;
        c.vgic.hcr = ich::HCR_EN;
        c
    }
}
