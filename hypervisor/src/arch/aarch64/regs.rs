//! System registers. Reads are safe functions; writes that can break the
//! hypervisor's own execution are `unsafe fn` with a `# Safety` section.

macro_rules! read_fn {
    ($name:ident, $reg:literal) => {
        #[inline(always)]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this system register has no side effects.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

/// Writes of registers that only describe the *guest's* state (its EL1
/// context, or the trap return address). Writing them cannot affect EL2's
/// own execution, so the functions are safe.
macro_rules! guest_write_fn {
    ($name:ident, $reg:literal) => {
        #[inline(always)]
        pub fn $name(v: u64) {
            // SAFETY: this register only affects the guest context (EL1/EL0
            // or the return from this exception), never EL2's own memory.
            unsafe { core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        }
    };
}

read_fn!(current_el, "CurrentEL");
read_fn!(mpidr_el1, "mpidr_el1");
read_fn!(midr_el1, "midr_el1");
read_fn!(id_aa64mmfr0_el1, "id_aa64mmfr0_el1");
read_fn!(id_aa64mmfr1_el1, "id_aa64mmfr1_el1");
read_fn!(esr_el2, "esr_el2");
read_fn!(far_el2, "far_el2");
read_fn!(hpfar_el2, "hpfar_el2");
read_fn!(elr_el2, "elr_el2");
read_fn!(spsr_el2, "spsr_el2");
read_fn!(vbar_el1, "vbar_el1");
read_fn!(cntpct_el0, "cntpct_el0");
// At EL2 with E2H = 0 the virtual count is the physical one less
// CNTVOFF_EL2: the guest's view, as is the guest's compare value.
read_fn!(cntvct_el0, "cntvct_el0");
read_fn!(cntv_cval_el0, "cntv_cval_el0");
read_fn!(cntv_ctl_el0, "cntv_ctl_el0");
read_fn!(cntfrq_el0, "cntfrq_el0");
read_fn!(tpidr_el2, "tpidr_el2");

guest_write_fn!(set_elr_el2, "elr_el2");
guest_write_fn!(set_spsr_el2, "spsr_el2");
guest_write_fn!(set_esr_el1, "esr_el1");
guest_write_fn!(set_far_el1, "far_el1");
guest_write_fn!(set_elr_el1, "elr_el1");
guest_write_fn!(set_spsr_el1, "spsr_el1");
guest_write_fn!(set_sctlr_el1, "sctlr_el1");
guest_write_fn!(set_cpacr_el1, "cpacr_el1");
guest_write_fn!(set_ttbr0_el1, "ttbr0_el1");
guest_write_fn!(set_ttbr1_el1, "ttbr1_el1");
guest_write_fn!(set_tcr_el1, "tcr_el1");
guest_write_fn!(set_mair_el1, "mair_el1");
guest_write_fn!(set_amair_el1, "amair_el1");
guest_write_fn!(set_vbar_el1, "vbar_el1");
guest_write_fn!(set_contextidr_el1, "contextidr_el1");
guest_write_fn!(set_tpidr_el0, "tpidr_el0");
guest_write_fn!(set_tpidrro_el0, "tpidrro_el0");
guest_write_fn!(set_tpidr_el1, "tpidr_el1");
guest_write_fn!(set_sp_el0, "sp_el0");
guest_write_fn!(set_sp_el1, "sp_el1");
guest_write_fn!(set_afsr0_el1, "afsr0_el1");
guest_write_fn!(set_afsr1_el1, "afsr1_el1");
guest_write_fn!(set_par_el1, "par_el1");
guest_write_fn!(set_cntkctl_el1, "cntkctl_el1");
guest_write_fn!(set_cntv_ctl_el0, "cntv_ctl_el0");
guest_write_fn!(set_cntp_ctl_el0, "cntp_ctl_el0");
guest_write_fn!(set_mdscr_el1, "mdscr_el1");
guest_write_fn!(set_vmpidr_el2, "vmpidr_el2");
guest_write_fn!(set_vpidr_el2, "vpidr_el2");
guest_write_fn!(set_cntvoff_el2, "cntvoff_el2");

/// CNTHP_CTL_EL2.ENABLE.
pub const CNTHP_ENABLE: u64 = 1 << 0;

/// Programs EL2's own physical timer (CNTHP_*): `Some(cval)` raises its
/// PPI once the physical counter reaches `cval`, `None` turns it off.
pub fn set_el2_timer(cval: Option<u64>) {
    // SAFETY: the EL2 physical timer only raises an interrupt, which EL2
    // handles (or ignores); no guest uses it and no memory is touched.
    unsafe {
        match cval {
            Some(v) => core::arch::asm!(
                "msr cnthp_cval_el2, {v}",
                "msr cnthp_ctl_el2, {on}",
                "isb",
                v = in(reg) v,
                on = in(reg) CNTHP_ENABLE,
                options(nomem, nostack, preserves_flags)
            ),
            None => core::arch::asm!(
                "msr cnthp_ctl_el2, xzr",
                "isb",
                options(nomem, nostack, preserves_flags)
            ),
        }
    }
}

/// HCR_EL2 bits (Arm ARM D24.2.48).
pub mod hcr {
    pub const VM: u64 = 1 << 0;
    pub const SWIO: u64 = 1 << 1;
    pub const FMO: u64 = 1 << 3;
    pub const IMO: u64 = 1 << 4;
    pub const AMO: u64 = 1 << 5;
    pub const FB: u64 = 1 << 9;
    pub const BSU_IS: u64 = 1 << 10;
    pub const TWI: u64 = 1 << 13;
    pub const TWE: u64 = 1 << 14;
    pub const TSC: u64 = 1 << 19;
    pub const TIDCP: u64 = 1 << 20;
    pub const TSW: u64 = 1 << 22;
    pub const TACR: u64 = 1 << 21;
    pub const RW: u64 = 1 << 31;
    pub const APK: u64 = 1 << 40;
    pub const API: u64 = 1 << 41;
}

/// The HCR_EL2 every guest runs with: stage 2 on, physical interrupts and
/// SErrors to EL2, SMC trapped (guests' firmware calls are ours to answer),
/// set/way cache maintenance and IMPLEMENTATION DEFINED registers trapped,
/// barriers and TLB maintenance broadcast inner-shareable (a vCPU may move
/// between pCPUs later), EL1 is AArch64, pointer authentication not trapped.
pub const GUEST_HCR: u64 = hcr::VM
    | hcr::SWIO
    | hcr::FMO
    | hcr::IMO
    | hcr::AMO
    | hcr::FB
    | hcr::BSU_IS
    | hcr::TSC
    | hcr::TIDCP
    | hcr::TSW
    | hcr::TACR
    | hcr::RW
    | hcr::APK
    | hcr::API;

/// The HCR_EL2 of a vCPU that shares its pCPU (a pool VM's): as
/// `GUEST_HCR`, and WFI and WFE trap, so a waiting vCPU gives its pCPU
/// to another instead of sleeping on it.
pub const POOL_HCR: u64 = GUEST_HCR | hcr::TWI | hcr::TWE;

/// Points stage 2 at `vttbr` without TLB maintenance: for a vCPU going
/// back onto a pCPU whose TLB holds nothing stale for its VMID (the last
/// vCPU of that VM to run here was this one).
///
/// # Safety
/// As for [`set_stage2`], and no translation for this VMID cached on
/// this pCPU may be stale.
pub unsafe fn set_stage2_keep_tlb(vtcr: u64, vttbr: u64) {
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            vtcr = in(reg) vtcr,
            vttbr = in(reg) vttbr,
            options(nostack)
        )
    };
}

/// Programs the registers that put this pCPU in "run a guest" mode.
///
/// # Safety
/// `vttbr` must name a valid stage-2 root that maps only memory owned by
/// the VM, and `vtcr` must describe that table.
pub unsafe fn set_stage2(vtcr: u64, vttbr: u64) {
    // SAFETY: the caller vouches for the table; the TLB maintenance makes
    // sure no stale translation for this VMID survives on this pCPU.
    unsafe {
        core::arch::asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            vtcr = in(reg) vtcr,
            vttbr = in(reg) vttbr,
            options(nostack)
        )
    };
}

/// Invalidates every pCPU's stage-1 and stage-2 TLB entries for the VMID
/// in `vttbr` (a VM's stage-2 table changed), and waits for that to
/// complete everywhere: after it no access of that VM uses an old
/// translation (Arm ARM D8.17.5, "the completion of a TLB maintenance
/// instruction"). This pCPU's VTTBR_EL2 is put back as it was.
pub fn flush_vmid_everywhere(vttbr: u64) {
    // SAFETY: VTTBR_EL2 only names the VMID for the TLBI here: it is
    // consulted for EL1&0 translations, and none happen on this pCPU before
    // the old value is back (this runs at EL2). The DSB ISHST before makes
    // the new descriptors visible to every walker first.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "mrs {old}, vttbr_el2",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "msr vttbr_el2, {old}",
            "isb",
            old = out(reg) _,
            vttbr = in(reg) vttbr,
            options(nostack)
        )
    };
}

/// Invalidates this pCPU's TLB entries for the VMID it has loaded (a
/// page of the running VM became writable).
pub fn flush_loaded_vmid_here() {
    // SAFETY: TLB maintenance only; the DSB ISHST publishes the changed
    // descriptor first.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            options(nostack)
        )
    };
}

/// # Safety
/// Must be `GUEST_HCR` or another value whose traps the hypervisor handles.
pub unsafe fn set_hcr_el2(v: u64) {
    // SAFETY: per the caller.
    unsafe { core::arch::asm!("msr hcr_el2, {}", "isb", in(reg) v, options(nomem, nostack)) };
}

/// CPTR_EL2 (non-VHE): RES1 bits only, so FP/SIMD is not trapped.
/// SVE/SME stay trapped (TZ/TSM are RES1 when not implemented; the supported
/// QEMU CPU is `max,sve=off,sme=off`).
pub const CPTR_EL2_GUEST: u64 = 0x33ff;

/// CNTHCTL_EL2: EL1 may read the physical counter and use the physical
/// timer (bare-metal guests measure with CNTPCT).
pub const CNTHCTL_EL2_GUEST: u64 = 0b11;

/// HCRX_EL2 (FEAT_HCX, Arm ARM D24.2.50): MSCEn (bit 11) lets EL1 and EL0
/// use the FEAT_MOPS memory-copy instructions. Without it they are
/// UNDEFINED once EL2 exists, while Linux (6.3+) still advertises them to
/// user space, whose memcpy then dies with SIGILL.
pub const HCRX_EL2_GUEST: u64 = 1 << 11;

/// MDCR_EL2 bits (Arm ARM, register description of MDCR_EL2).
pub mod mdcr {
    /// Trap EL1/EL0 accesses to PMCR_EL0.
    pub const TPMCR: u64 = 1 << 5;
    /// Trap EL1/EL0 accesses to every Performance Monitors register.
    pub const TPM: u64 = 1 << 6;
    /// Trap EL1/EL0 accesses to the debug registers not covered by TDOSA
    /// and TDRA: MDSCR_EL1, the breakpoint and watchpoint registers, the
    /// claim tags, DBGAUTHSTATUS_EL1 and the DCC.
    pub const TDA: u64 = 1 << 9;
    /// Trap the OS Lock and power-down registers: OSLAR_EL1, OSLSR_EL1,
    /// OSDLR_EL1, DBGPRCR_EL1.
    pub const TDOSA: u64 = 1 << 10;
    /// Trap MDRAR_EL1 (the debug ROM address).
    pub const TDRA: u64 = 1 << 11;
}

/// The MDCR_EL2 every guest runs with: no debug or PMU register is reachable
/// from a VM; `sysreg.rs` answers them read-as-zero/write-ignored. A guest
/// could otherwise arm its pCPU's breakpoints and counters, and that state
/// would outlive the VM on the pCPU. TDE stays 0 (debug exceptions are the
/// guest's, and with MDSCR_EL1 kept at 0 none is enabled). HPMN stays 0:
/// with TPM set no counter is reachable from EL1 or EL0 whatever the
/// split, and HPME = 0 leaves the EL2-reserved counters disabled.
pub const MDCR_EL2_GUEST: u64 = mdcr::TPMCR | mdcr::TPM | mdcr::TDA | mdcr::TDOSA | mdcr::TDRA;

/// Programs the EL2 controls that do not depend on the VM.
///
/// # Safety
/// Call once per pCPU before the first guest entry.
pub unsafe fn init_el2_controls() {
    // SAFETY: these registers configure traps for lower ELs only.
    unsafe {
        core::arch::asm!(
            "msr cptr_el2, {cptr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr mdcr_el2, {mdcr}",
            "msr hstr_el2, xzr",
            "isb",
            cptr = in(reg) CPTR_EL2_GUEST,
            cnthctl = in(reg) CNTHCTL_EL2_GUEST,
            mdcr = in(reg) MDCR_EL2_GUEST,
            options(nomem, nostack)
        )
    };
    // ID_AA64MMFR1_EL1.HCX, bits [43:40].
    if (id_aa64mmfr1_el1() >> 40) & 0xf != 0 {
        // SAFETY: HCRX_EL2 (S3_4_C1_C2_2) exists (checked above) and only
        // enables EL1/EL0 features for guests.
        unsafe {
            core::arch::asm!("msr s3_4_c1_c2_2, {}", "isb", in(reg) HCRX_EL2_GUEST, options(nomem, nostack))
        };
    }
}

/// # Safety
/// `v` must point at this CPU's `PerCpu`, which lives for the rest of time.
pub unsafe fn set_tpidr_el2(v: u64) {
    // SAFETY: per the caller; TPIDR_EL2 is only read by our own code.
    unsafe { core::arch::asm!("msr tpidr_el2, {}", in(reg) v, options(nomem, nostack)) };
}
