//! Trapped debug and performance-monitor system registers (EC 0x18).
//!
//! MDCR_EL2 (`regs::MDCR_EL2_GUEST`) traps every EL1/EL0 access to the
//! self-hosted debug registers (TDA, TDOSA, TDRA) and to the PMU (TPM,
//! TPMCR). Without those traps a guest would program its pCPU's
//! breakpoints, watchpoints and counters directly, and that state would
//! outlive the VM on the pCPU. A VM gets neither debug nor a PMU: each
//! register here reads as zero (or as the one value the architecture
//! requires) and ignores writes.
//!
//! Why not an undefined-instruction exception: Linux touches several of
//! these registers unconditionally on every CPU it brings up (MDSCR_EL1 and
//! PMUSERENR_EL0 in `__cpu_setup`, OSDLR_EL1 and OSLAR_EL1 in
//! `clear_os_lock`, every DBGBCR/DBGBVR/DBGWCR/DBGWVR in
//! `hw_breakpoint_reset`); ID_AA64DFR0_EL1 still describes the hardware,
//! so it expects them to exist, and an UNDEF there is a kernel Oops.
//!
//! Accesses from EL0 are not answered here: Linux sets MDSCR_EL1.TDCC and
//! clears PMUSERENR_EL0 so that user space gets UNDEFINED for these, and the
//! caller's default (an injected undefined instruction) gives exactly that.

use crate::arch::{regs, TrapFrame};
use bulkhead_exit::SysRegAccess;

/// What a read of an emulated register returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reg {
    /// Reads as zero, writes ignored.
    Raz,
    /// OSLSR_EL1: OSLM = 0b10 (bits 3 and 0: the OS Lock is implemented,
    /// as Armv8 requires), OSLK = 0 (unlocked; OSLAR_EL1 writes are
    /// ignored, so it stays so), nTT = 0.
    Oslsr,
}

/// OSLSR_EL1 as every vCPU reads it.
const OSLSR_IMPLEMENTED_UNLOCKED: u64 = 0b1000;

/// The debug registers MDCR_EL2.TDA/TDOSA/TDRA trap, by encoding
/// (Arm ARM, "AArch64 Debug registers"; all op0 = 2).
fn debug(op1: u8, crn: u8, crm: u8, op2: u8) -> Option<Reg> {
    let reg = match (op1, crn, crm, op2) {
        // OSDTRRX_EL1, OSDTRTX_EL1, OSECCR_EL1: the DCC and external-debug
        // state saved and restored around the OS Lock; nothing to save.
        (0, 0, 0 | 3 | 6, 2) => Reg::Raz,
        // MDCCINT_EL1: DCC interrupt enables. There is no DCC peer.
        (0, 0, 2, 0) => Reg::Raz,
        // MDSCR_EL1: MDE, KDE and SS read as 0, so no breakpoint,
        // watchpoint or software-step exception can be enabled.
        (0, 0, 2, 2) => Reg::Raz,
        // DBGBVR<n>_EL1, DBGBCR<n>_EL1, DBGWVR<n>_EL1, DBGWCR<n>_EL1:
        // breakpoints and watchpoints; none can be armed.
        (0, 0, _, 4..=7) => Reg::Raz,
        // MDRAR_EL1: Valid = 0b00, no debug ROM table to find.
        (0, 1, 0, 0) => Reg::Raz,
        // OSLAR_EL1: write-only; the lock request is ignored.
        (0, 1, 0, 4) => Reg::Raz,
        // OSLSR_EL1: the lock exists and is unlocked.
        (0, 1, 1, 4) => Reg::Oslsr,
        // OSDLR_EL1: the OS Double Lock is never set.
        (0, 1, 3, 4) => Reg::Raz,
        // DBGPRCR_EL1: a power-down request of a vCPU's core means nothing.
        (0, 1, 4, 4) => Reg::Raz,
        // DBGCLAIMSET_EL1, DBGCLAIMCLR_EL1: no claim tags implemented.
        (0, 7, 8 | 9, 6) => Reg::Raz,
        // DBGAUTHSTATUS_EL1: 0 = no debug is authenticated.
        (0, 7, 14, 6) => Reg::Raz,
        // MDCCSR_EL0: the DCC is empty (TXfull = RXfull = 0).
        (3, 0, 1, 0) => Reg::Raz,
        // DBGDTR_EL0, DBGDTRRX_EL0 / DBGDTRTX_EL0: the DCC data registers;
        // nothing is ever received, anything sent is dropped.
        (3, 0, 4 | 5, 0) => Reg::Raz,
        _ => return None,
    };
    Some(reg)
}

/// The PMUv3 registers MDCR_EL2.TPM/TPMCR trap, by encoding (Arm ARM,
/// "Performance Monitors registers"; all op0 = 3). Zero is a consistent
/// PMU with nothing in it: PMCR_EL0.N = 0 event counters, no common events
/// (PMCEID), a cycle counter that never counts and no overflow.
fn pmu(op1: u8, crn: u8, crm: u8, op2: u8) -> Option<Reg> {
    match (op1, crn, crm, op2) {
        // PMCR_EL0, PMCNTENSET/CLR_EL0, PMOVSCLR_EL0, PMSWINC_EL0,
        // PMSELR_EL0, PMCEID0/1_EL0.
        (3, 9, 12, 0..=7) => Some(Reg::Raz),
        // PMCCNTR_EL0, PMXEVTYPER_EL0, PMXEVCNTR_EL0.
        (3, 9, 13, 0..=2) => Some(Reg::Raz),
        // PMUSERENR_EL0, PMOVSSET_EL0.
        (3, 9, 14, 0 | 3) => Some(Reg::Raz),
        // PMINTENSET_EL1, PMINTENCLR_EL1, PMMIR_EL1.
        (0, 9, 14, 1 | 2 | 6) => Some(Reg::Raz),
        // PMEVCNTR<n>_EL0 (CRm 8-11), PMEVTYPER<n>_EL0 (CRm 12-15) and
        // PMCCFILTR_EL0 (CRm 15, op2 7).
        (3, 14, 8..=15, _) => Some(Reg::Raz),
        _ => None,
    }
}

fn classify(s: &SysRegAccess) -> Option<Reg> {
    match s.op0 {
        2 => debug(s.op1, s.crn, s.crm, s.op2),
        3 => pmu(s.op1, s.crn, s.crm, s.op2),
        _ => None,
    }
}

/// SPSR_EL2.M\[3:0\] of a trap from EL0 (EL0t).
fn from_el0() -> bool {
    regs::spsr_el2() & 0xf == 0
}

/// Answers a trapped EL1 access to a debug or PMU register: a read puts
/// the register's value in the guest's Xt, a write is dropped. Returns
/// false, having done nothing, for any other register or for an access
/// from EL0; the caller then injects an undefined instruction. On true the
/// caller skips the instruction.
pub fn emulate(frame: &mut TrapFrame, s: &SysRegAccess) -> bool {
    let Some(reg) = classify(s) else {
        return false;
    };
    if from_el0() {
        return false;
    }
    if s.read {
        let value = match reg {
            Reg::Raz => 0,
            Reg::Oslsr => OSLSR_IMPLEMENTED_UNLOCKED,
        };
        frame.set_reg(s.rt, value);
    }
    true
}
