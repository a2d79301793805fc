//! Decoding of the exception syndrome (ESR_EL2) that a trap from a guest
//! leaves behind, into a typed [`Exit`]; decoding of the MMIO access a data
//! abort describes; and the arithmetic for injecting a synchronous exception
//! into a guest's EL1 ([`inject`]).
//!
//! Everything here is a pure function of register values, so the trap path's
//! decisions are unit-tested on the host. The arch layer reads ESR_EL2,
//! FAR_EL2 and HPFAR_EL2, calls [`decode`], and acts on the result.
#![no_std]
#![deny(unsafe_code)]

use bulkhead_types::Ipa;

/// Exception classes (Arm ARM D24.2.40 ESR_EL2, field EC, bits [31:26]).
pub mod ec {
    /// Unknown reason (also what an injected undefined instruction uses).
    pub const UNKNOWN: u8 = 0x00;
    /// Trapped WFI/WFE/WFIT/WFET.
    pub const WFX: u8 = 0x01;
    /// HVC executed in AArch64 state.
    pub const HVC64: u8 = 0x16;
    /// SMC executed in AArch64 state (trapped by HCR_EL2.TSC).
    pub const SMC64: u8 = 0x17;
    /// Trapped MSR/MRS/system instruction in AArch64 state.
    pub const SYS64: u8 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOWER: u8 = 0x20;
    /// Instruction abort taken without a change in exception level.
    pub const IABT_CURRENT: u8 = 0x21;
    /// Data abort from a lower exception level.
    pub const DABT_LOWER: u8 = 0x24;
    /// Data abort taken without a change in exception level.
    pub const DABT_CURRENT: u8 = 0x25;
}

/// ESR_ELx.IL, bit 25: 1 for a 32-bit trapped instruction.
const ESR_IL: u64 = 1 << 25;
/// ESR_ELx.ISS, bits [24:0].
const ISS_MASK: u64 = (1 << 25) - 1;

/// A trap from a guest, decoded from ESR_EL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `HVC #imm` (EC 0x16). ELR_EL2 already points past the instruction.
    Hvc { imm: u16 },
    /// `SMC #imm` (EC 0x17), trapped by HCR_EL2.TSC. ELR_EL2 points at the
    /// SMC itself (Arm ARM D1.11.2: SMC traps are taken before execution),
    /// so the caller must skip it.
    Smc { imm: u16 },
    /// WFI (`wfe == false`) or WFE (EC 0x01); WFIT/WFET report as WFI/WFE.
    Wfx { wfe: bool },
    /// A trapped MSR/MRS (EC 0x18).
    SysReg(SysRegAccess),
    /// A data abort from the guest (EC 0x24): stage-2 fault, usually MMIO.
    DataAbort(DataAbort),
    /// An instruction abort from the guest (EC 0x20).
    InstructionAbort { fsc: u8 },
    /// Any other exception class; the caller injects an undefined
    /// instruction (the guest should never see the hypervisor crash).
    Unknown { ec: u8, iss: u32 },
}

/// A trapped system-register access (Arm ARM D24.2.40, ISS encoding for an
/// exception from MSR, MRS or System instruction execution in AArch64 state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// The general-purpose register transferred (31 = xzr).
    pub rt: u8,
    /// True for MRS (Direction = 1), false for MSR.
    pub read: bool,
}

/// A data abort's syndrome (Arm ARM D24.2.40, ISS encoding for an exception
/// from a Data Abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbort {
    /// The decoded single-register access, or `None` when ISV = 0 (load/store
    /// pair, writeback, SIMD, exclusive...): such an access cannot be emulated
    /// from the syndrome alone.
    pub access: Option<MmioAccess>,
    /// WnR: the access was a write (also set for cache maintenance, CM = 1).
    pub write: bool,
    /// Data fault status code, DFSC bits [5:0].
    pub dfsc: u8,
    /// S1PTW: the fault happened on a stage-1 table walk, not the access.
    pub s1ptw: bool,
    /// FnV: FAR is not valid.
    pub fnv: bool,
}

/// A single-register load or store described by a valid (ISV = 1) syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// WnR.
    pub write: bool,
    /// Access size in bytes: 1, 2, 4 or 8 (SAS).
    pub size: u8,
    /// SRT: the transfer register, 0..=31 where 31 means xzr/wzr.
    pub reg: u8,
    /// SSE: a load sign-extends the value.
    pub sign_extend: bool,
    /// SF: the register is 64-bit (Xt) rather than 32-bit (Wt).
    pub sf: bool,
    /// AR: acquire/release semantics (LDAR/STLR).
    pub acquire_release: bool,
}

impl MmioAccess {
    /// Mask of the low `size` bytes.
    fn size_mask(&self) -> u64 {
        match self.size {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        }
    }

    /// The value to put in the transfer register for a load whose device
    /// read returned `raw`: `raw` truncated to the access size, sign-extended
    /// when SSE = 1, and limited to 32 bits when SF = 0 (a write to Wt zeroes
    /// the upper half of Xt; Arm ARM C6.2 LDRSB/LDRSH and D24.2.40 SSE/SF).
    pub fn load_value(&self, raw: u64) -> u64 {
        let mask = self.size_mask();
        let mut v = raw & mask;
        if self.sign_extend && mask != u64::MAX {
            let sign = (mask >> 1).wrapping_add(1);
            if v & sign != 0 {
                v |= !mask;
            }
        }
        if self.sf {
            v
        } else {
            v & 0xffff_ffff
        }
    }

    /// The value a store writes: the register truncated to the access size.
    pub fn store_value(&self, reg: u64) -> u64 {
        reg & self.size_mask()
    }
}

/// The exception class, ESR bits [31:26].
pub fn ec(esr: u64) -> u8 {
    ((esr >> 26) & 0x3f) as u8
}

/// Length in bytes of the trapped instruction: 4 if IL = 1, else 2 (a
/// 16-bit T32 instruction).
pub fn instruction_len(esr: u64) -> u64 {
    if esr & ESR_IL != 0 {
        4
    } else {
        2
    }
}

fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 != 0
}

fn field(v: u64, lo: u32, width: u32) -> u8 {
    ((v >> lo) & ((1 << width) - 1)) as u8
}

/// Decode ESR_EL2 into a typed exit.
pub fn decode(esr: u64) -> Exit {
    let iss = esr & ISS_MASK;
    match ec(esr) {
        ec::HVC64 => Exit::Hvc {
            imm: (iss & 0xffff) as u16,
        },
        ec::SMC64 => Exit::Smc {
            imm: (iss & 0xffff) as u16,
        },
        // ISS TI, bits [1:0]: 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET.
        ec::WFX => Exit::Wfx { wfe: bit(iss, 0) },
        ec::SYS64 => Exit::SysReg(decode_sysreg(iss)),
        ec::DABT_LOWER => Exit::DataAbort(decode_data_abort(iss)),
        ec::IABT_LOWER => Exit::InstructionAbort {
            fsc: field(iss, 0, 6),
        },
        other => Exit::Unknown {
            ec: other,
            iss: iss as u32,
        },
    }
}

/// ISS for EC 0x18: Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10],
/// Rt [9:5], CRm [4:1], Direction [0] (1 = read).
fn decode_sysreg(iss: u64) -> SysRegAccess {
    SysRegAccess {
        op0: field(iss, 20, 2),
        op2: field(iss, 17, 3),
        op1: field(iss, 14, 3),
        crn: field(iss, 10, 4),
        rt: field(iss, 5, 5),
        crm: field(iss, 1, 4),
        read: bit(iss, 0),
    }
}

/// ISS for data aborts: ISV 24, SAS 23:22, SSE 21, SRT 20:16, SF 15, AR 14,
/// VNCR 13, FnV 10, EA 9, CM 8, S1PTW 7, WnR 6, DFSC 5:0.
fn decode_data_abort(iss: u64) -> DataAbort {
    let write = bit(iss, 6);
    let access = bit(iss, 24).then(|| MmioAccess {
        write,
        size: 1 << field(iss, 22, 2),
        reg: field(iss, 16, 5),
        sign_extend: bit(iss, 21),
        sf: bit(iss, 15),
        acquire_release: bit(iss, 14),
    });
    DataAbort {
        access,
        write,
        dfsc: field(iss, 0, 6),
        s1ptw: bit(iss, 7),
        fnv: bit(iss, 10),
    }
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA (bits [43:4], IPA
/// bits [51:12]) gives the page, FAR_EL2 the offset within it (Arm ARM
/// D24.2.68 HPFAR_EL2). Bit 63 (NS, FEAT_SEL2) is not part of the address.
pub fn fault_ipa(hpfar: u64, far: u64) -> Ipa {
    const FIPA: u64 = ((1 << 44) - 1) & !0xf;
    Ipa(((hpfar & FIPA) << 8) | (far & 0xfff))
}

/// True for a translation fault at any level: DFSC 0b0001LL, or 0b101011
/// (level -1, FEAT_LPA2) (Arm ARM D24.2.40, DFSC).
pub fn is_translation_fault(dfsc: u8) -> bool {
    dfsc & 0b11_1100 == 0b00_0100 || dfsc == 0b10_1011
}

/// True for a permission fault at level 0 to 3: DFSC 0b0011LL (Arm ARM
/// D24.2.40, DFSC).
pub fn is_permission_fault(dfsc: u8) -> bool {
    dfsc & 0b11_1100 == 0b00_1100
}

/// Injection of a synchronous exception into a guest's EL1: where to
/// resume, with which PSTATE, and the EL1 syndrome registers to write.
/// Which optional EL1 registers a CPU has, from its ID registers: what a
/// vCPU's context switch must save and restore beyond the base set
/// (`hypervisor/src/arch/aarch64/context.rs`).
pub mod features {
    /// Optional EL1 register groups.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Features {
        /// The five pointer-authentication keys (FEAT_PAuth).
        pub pauth: bool,
        /// TCR2_EL1 (FEAT_TCR2).
        pub tcr2: bool,
        /// SCTLR2_EL1 (FEAT_SCTLR2).
        pub sctlr2: bool,
        /// PIR_EL1 and PIRE0_EL1 (FEAT_S1PIE).
        pub s1pie: bool,
        /// POR_EL1 and POR_EL0 (FEAT_S1POE).
        pub s1poe: bool,
    }

    fn field(v: u64, lsb: u32) -> u64 {
        (v >> lsb) & 0xf
    }

    /// From ID_AA64ISAR1_EL1, ID_AA64ISAR2_EL1 and ID_AA64MMFR3_EL1 (Arm
    /// ARM D24.2): any of APA, API, GPA, GPI (ISAR1 bits 7:4, 11:8, 27:24,
    /// 31:28) or APA3, GPA3 (ISAR2 15:12, 11:8) means the keys exist;
    /// MMFR3's TCRX (3:0), SCTLRX (7:4), S1PIE (11:8) and S1POE (19:16)
    /// the rest.
    pub fn from_id_regs(isar1: u64, isar2: u64, mmfr3: u64) -> Features {
        Features {
            pauth: [4, 8, 24, 28].iter().any(|&l| field(isar1, l) != 0)
                || [8, 12].iter().any(|&l| field(isar2, l) != 0),
            tcr2: field(mmfr3, 0) != 0,
            sctlr2: field(mmfr3, 4) != 0,
            s1pie: field(mmfr3, 8) != 0,
            s1poe: field(mmfr3, 16) != 0,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_cpu_without_the_extensions_switches_only_the_base_set() {
            // Other ISAR1 fields (DPB, JSCVT, ...) say nothing of keys.
            assert_eq!(
                from_id_regs(0x0000_0000_0000_0001, 0, 0),
                Features::default()
            );
            // MMFR3 fields above S1POE (e.g. ANERR) add nothing either.
            assert_eq!(from_id_regs(0, 0, 0xf << 40), Features::default());
        }

        #[test]
        fn each_field_turns_on_its_group() {
            for lsb in [4, 8, 24, 28] {
                assert!(from_id_regs(1 << lsb, 0, 0).pauth, "ISAR1 bit {lsb}");
            }
            for lsb in [8, 12] {
                assert!(from_id_regs(0, 1 << lsb, 0).pauth, "ISAR2 bit {lsb}");
            }
            let f = from_id_regs(0, 0, 0x1_0111);
            assert_eq!(
                f,
                Features {
                    pauth: false,
                    tcr2: true,
                    sctlr2: true,
                    s1pie: true,
                    s1poe: true,
                }
            );
            assert_eq!(
                from_id_regs(0, 0, 0x100),
                Features {
                    s1pie: true,
                    ..Features::default()
                }
            );
        }

        #[test]
        fn qemu_10_0_max_has_the_keys_and_nothing_else() {
            // What `-cpu max,sve=off,sme=off` of QEMU 10.0.2 reports (read at
            // EL2 on this project's test machine): ISAR1.API = 5 (address
            // keys of an IMPLEMENTATION DEFINED algorithm), no TCR2, SCTLR2,
            // S1PIE or S1POE in MMFR3.
            let f = from_id_regs(0x0111_2111_1021_1502, 0x11_0012, 0x1000_0000_0000_0000);
            assert_eq!(
                f,
                Features {
                    pauth: true,
                    ..Features::default()
                }
            );
        }
    }
}

pub mod inject {
    use crate::ec;

    /// What to inject into the guest's EL1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// Undefined instruction (EC 0x00, "unknown reason").
        Undefined,
        /// Synchronous external data abort at `far`.
        DataAbort { far: u64 },
        /// Synchronous external instruction abort at `far`.
        InstructionAbort { far: u64 },
    }

    /// The register values the arch layer writes before ERET.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Injection {
        /// Where the guest resumes: its vector for this exception.
        pub elr_el2: u64,
        /// The guest's PSTATE on resume: EL1h with DAIF masked.
        pub spsr_el2: u64,
        pub esr_el1: u64,
        /// FAR_EL1 for aborts; `None` leaves FAR_EL1 alone (UNKNOWN for EC 0).
        pub far_el1: Option<u64>,
        /// Return address for the guest's handler: the faulting instruction.
        pub elr_el1: u64,
        /// The guest's PSTATE at the fault.
        pub spsr_el1: u64,
    }

    /// SPSR.M[4]: the exception came from AArch32.
    const SPSR_M_AARCH32: u64 = 1 << 4;
    /// SPSR.M[3:2]: exception level.
    const SPSR_M_EL_SHIFT: u32 = 2;
    /// SPSR.M[0]: SP_ELx selected (the "h" in EL1h).
    const SPSR_M_SP: u64 = 1;
    /// SPSR.M = EL1h.
    const SPSR_EL1H: u64 = 0b0101;
    /// SPSR.{D,A,I,F}, bits [9:6]: exception entry masks all of them
    /// (Arm ARM D1.10.2 "Exception entry": PSTATE.{D,A,I,F} set to 1).
    const SPSR_DAIF: u64 = 0xf << 6;

    /// Vector table offsets for synchronous exceptions (Arm ARM D1.10.2,
    /// table "Vector offsets from vector table base address").
    const VEC_CURRENT_SP0: u64 = 0x000;
    const VEC_CURRENT_SPX: u64 = 0x200;
    const VEC_LOWER_A64: u64 = 0x400;
    const VEC_LOWER_A32: u64 = 0x600;

    /// ESR_EL1.ISS DFSC/IFSC for a synchronous external abort, not on a
    /// translation table walk.
    const FSC_SYNC_EXTERNAL: u64 = 0x10;

    /// Compute the injection of `kind` into a guest that trapped at
    /// `guest_pc` with PSTATE `guest_spsr` and vector base `vbar`.
    ///
    /// `il32` is accepted for the caller's convenience but every kind
    /// injected here has ESR_EL1.IL RES1 (Arm ARM D24.2.40, IL: "RES1" for
    /// EC 0x00, instruction aborts and data aborts without a valid ISS), so
    /// it does not change the result.
    pub fn inject(kind: Kind, guest_pc: u64, guest_spsr: u64, vbar: u64, il32: bool) -> Injection {
        let _ = il32;
        let from_el1 =
            guest_spsr & SPSR_M_AARCH32 == 0 && (guest_spsr >> SPSR_M_EL_SHIFT) & 0b11 != 0;
        let offset = if guest_spsr & SPSR_M_AARCH32 != 0 {
            VEC_LOWER_A32
        } else if !from_el1 {
            VEC_LOWER_A64
        } else if guest_spsr & SPSR_M_SP != 0 {
            VEC_CURRENT_SPX
        } else {
            VEC_CURRENT_SP0
        };
        let (class, iss, far) = match kind {
            Kind::Undefined => (ec::UNKNOWN, 0, None),
            Kind::DataAbort { far } => (
                if from_el1 {
                    ec::DABT_CURRENT
                } else {
                    ec::DABT_LOWER
                },
                FSC_SYNC_EXTERNAL,
                Some(far),
            ),
            Kind::InstructionAbort { far } => (
                if from_el1 {
                    ec::IABT_CURRENT
                } else {
                    ec::IABT_LOWER
                },
                FSC_SYNC_EXTERNAL,
                Some(far),
            ),
        };
        Injection {
            // VBAR_EL1 is guest-controlled: wrap rather than overflow.
            elr_el2: vbar.wrapping_add(offset),
            spsr_el2: SPSR_EL1H | SPSR_DAIF,
            esr_el1: (u64::from(class) << 26) | super::ESR_IL | iss,
            far_el1: far,
            elr_el1: guest_pc,
            spsr_el1: guest_spsr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inject::{inject, Kind};
    use super::*;

    // ESR values below are built by hand from the ISS layout in Arm ARM
    // D24.2.40; EC 0x24 with IL = 1 is 0x92xx_xxxx, with ISV also 0x93xx_xxxx.

    #[test]
    fn hvc_zero_decodes_with_immediate() {
        assert_eq!(decode(0x5a00_0000), Exit::Hvc { imm: 0 });
        assert_eq!(decode(0x5a00_1234), Exit::Hvc { imm: 0x1234 });
    }

    #[test]
    fn smc_zero_decodes() {
        assert_eq!(decode(0x5e00_0000), Exit::Smc { imm: 0 });
    }

    #[test]
    fn wfi_and_wfe_are_told_apart_by_ti() {
        assert_eq!(decode(0x0600_0000), Exit::Wfx { wfe: false });
        assert_eq!(decode(0x0600_0001), Exit::Wfx { wfe: true });
    }

    #[test]
    fn mrs_id_register_decodes_fields() {
        // MRS x1, ID_AA64PFR0_EL1 (op0 3, op1 0, CRn 0, CRm 4, op2 0).
        assert_eq!(
            decode(0x6230_0029),
            Exit::SysReg(SysRegAccess {
                op0: 3,
                op1: 0,
                crn: 0,
                crm: 4,
                op2: 0,
                rt: 1,
                read: true
            })
        );
    }

    #[test]
    fn msr_icc_sgi1r_decodes_as_write() {
        // MSR ICC_SGI1R_EL1, x2 (op0 3, op1 0, CRn 12, CRm 11, op2 5).
        assert_eq!(
            decode(0x623a_3056),
            Exit::SysReg(SysRegAccess {
                op0: 3,
                op1: 0,
                crn: 12,
                crm: 11,
                op2: 5,
                rt: 2,
                read: false
            })
        );
    }

    #[test]
    fn word_store_decodes_size_register_and_direction() {
        // STR w1, [x0]: ISV, SAS=2, SRT=1, WnR, DFSC 0x07.
        let Exit::DataAbort(da) = decode(0x9381_0047) else {
            panic!("not a data abort")
        };
        assert!(da.write);
        assert_eq!(da.dfsc, 0x07);
        assert!(!da.s1ptw && !da.fnv);
        assert_eq!(
            da.access,
            Some(MmioAccess {
                write: true,
                size: 4,
                reg: 1,
                sign_extend: false,
                sf: false,
                acquire_release: false
            })
        );
    }

    #[test]
    fn doubleword_load_to_x0_decodes() {
        // LDR x0, [x1]: ISV, SAS=3, SRT=0, SF, DFSC 0x06.
        let Exit::DataAbort(da) = decode(0x93c0_8006) else {
            panic!("not a data abort")
        };
        let a = da.access.expect("ISV set");
        assert_eq!((a.size, a.reg, a.sf, a.write), (8, 0, true, false));
        assert_eq!(da.dfsc, 0x06);
    }

    #[test]
    fn load_acquire_sets_acquire_release() {
        // LDAR w4: ISV, SAS=2, SRT=4, AR.
        let Exit::DataAbort(da) = decode(0x9384_4007) else {
            panic!("not a data abort")
        };
        assert!(da.access.expect("ISV set").acquire_release);
    }

    #[test]
    fn store_of_wzr_reports_register_31() {
        let Exit::DataAbort(da) = decode(0x931f_0047) else {
            panic!("not a data abort")
        };
        let a = da.access.expect("ISV set");
        assert_eq!((a.reg, a.size), (31, 1));
    }

    #[test]
    fn store_pair_has_no_valid_syndrome() {
        // STP: ISV = 0, but WnR and DFSC still valid.
        let Exit::DataAbort(da) = decode(0x9200_0047) else {
            panic!("not a data abort")
        };
        assert_eq!(da.access, None);
        assert!(da.write);
        assert_eq!(da.dfsc, 0x07);
    }

    #[test]
    fn s1ptw_and_fnv_bits_decode() {
        let Exit::DataAbort(da) = decode(0x9200_0487) else {
            panic!("not a data abort")
        };
        assert!(da.s1ptw);
        assert!(da.fnv);
        assert!(!da.write);
    }

    #[test]
    fn instruction_abort_reports_fsc() {
        assert_eq!(decode(0x8200_000f), Exit::InstructionAbort { fsc: 0x0f });
    }

    #[test]
    fn other_classes_are_unknown_with_iss() {
        assert_eq!(decode(0x0200_0000), Exit::Unknown { ec: 0, iss: 0 });
        // A data abort taken at EL2 itself (EC 0x25) is not a guest exit.
        assert_eq!(
            decode(0x9600_0010),
            Exit::Unknown {
                ec: 0x25,
                iss: 0x10
            }
        );
        // Bits above the ESR (ISS2, RES0) do not change the class.
        assert_eq!(
            decode(0xffff_ffff_0000_0000 | 0x5a00_0001),
            Exit::Hvc { imm: 1 }
        );
    }

    #[test]
    fn instruction_length_follows_il() {
        assert_eq!(instruction_len(0x5a00_0000), 4);
        assert_eq!(instruction_len(0x5800_0000), 2);
        assert_eq!(ec(0x5a00_0000), 0x16);
    }

    fn access(size: u8, sign_extend: bool, sf: bool) -> MmioAccess {
        MmioAccess {
            write: false,
            size,
            reg: 0,
            sign_extend,
            sf,
            acquire_release: false,
        }
    }

    #[test]
    fn ldrsb_to_w_sign_extends_to_32_bits_only() {
        assert_eq!(access(1, true, false).load_value(0x80), 0xffff_ff80);
        assert_eq!(access(1, true, false).load_value(0x7f), 0x7f);
    }

    #[test]
    fn ldrsb_to_x_sign_extends_to_64_bits() {
        assert_eq!(access(1, true, true).load_value(0xff), u64::MAX);
        assert_eq!(
            access(2, true, true).load_value(0x8001),
            0xffff_ffff_ffff_8001
        );
        assert_eq!(
            access(4, true, true).load_value(0x8000_0000),
            0xffff_ffff_8000_0000
        );
    }

    #[test]
    fn plain_loads_truncate_raw_to_size() {
        assert_eq!(access(1, false, false).load_value(0x1234_5680), 0x80);
        assert_eq!(access(2, false, true).load_value(0xdead_beef), 0xbeef);
        assert_eq!(access(4, false, false).load_value(u64::MAX), 0xffff_ffff);
        assert_eq!(access(8, false, true).load_value(u64::MAX), u64::MAX);
    }

    #[test]
    fn store_value_truncates_register_to_size() {
        assert_eq!(access(1, false, false).store_value(0x1234_5678), 0x78);
        assert_eq!(access(2, false, false).store_value(0x1234_5678), 0x5678);
        assert_eq!(
            access(4, false, true).store_value(0xaaaa_bbbb_cccc_dddd),
            0xcccc_dddd
        );
        assert_eq!(access(8, false, true).store_value(u64::MAX), u64::MAX);
    }

    #[test]
    fn fault_ipa_combines_page_and_offset() {
        // IPA 0x0900_0018: page 0x9000 in FIPA (HPFAR bits [43:4]).
        assert_eq!(
            fault_ipa(0x9000 << 4, 0xffff_0000_dead_b018),
            Ipa(0x0900_0018)
        );
    }

    #[test]
    fn fault_ipa_keeps_52_bit_addresses_and_drops_ns() {
        let hpfar = (1 << 63) | (1 << 43) | (0x1 << 4);
        assert_eq!(fault_ipa(hpfar, 0xabc), Ipa((1 << 51) | 0x1abc));
    }

    #[test]
    fn translation_faults_at_each_level() {
        for dfsc in 0x0c..=0x0f {
            assert!(is_permission_fault(dfsc) && !is_translation_fault(dfsc));
        }
        for dfsc in [0x00, 0x04, 0x07, 0x08, 0x0b, 0x10, 0x2b, 0x3f] {
            assert!(!is_permission_fault(dfsc), "{dfsc:#x}");
        }
        for dfsc in 0x04..=0x07 {
            assert!(is_translation_fault(dfsc));
        }
        assert!(is_translation_fault(0x2b));
        // Access flag (0x09), permission (0x0f), external abort (0x10).
        assert!(!is_translation_fault(0x09));
        assert!(!is_translation_fault(0x0f));
        assert!(!is_translation_fault(0x10));
        assert!(!is_translation_fault(0x00));
    }

    const VBAR: u64 = 0xffff_8000_1000_0000;
    const EL1H_MASKED: u64 = 0x3c5;

    #[test]
    fn undefined_from_el1h_uses_current_spx_vector() {
        let i = inject(Kind::Undefined, 0x4008_0000, 0x3c5, VBAR, true);
        assert_eq!(i.elr_el2, VBAR + 0x200);
        assert_eq!(i.spsr_el2, EL1H_MASKED);
        assert_eq!(i.esr_el1, 0x0200_0000);
        assert_eq!(i.far_el1, None);
        assert_eq!(i.elr_el1, 0x4008_0000);
        assert_eq!(i.spsr_el1, 0x3c5);
    }

    #[test]
    fn undefined_from_el1t_uses_current_sp0_vector() {
        let i = inject(Kind::Undefined, 0x1000, 0x004, VBAR, true);
        assert_eq!(i.elr_el2, VBAR);
    }

    #[test]
    fn abort_from_el0_uses_lower_el_vector_and_lower_ec() {
        let i = inject(Kind::DataAbort { far: 0xdead }, 0x40_0000, 0x0, VBAR, true);
        assert_eq!(i.elr_el2, VBAR + 0x400);
        assert_eq!(i.esr_el1, 0x9200_0010);
        assert_eq!(i.far_el1, Some(0xdead));
        assert_eq!(i.spsr_el2, EL1H_MASKED);
        assert_eq!(i.spsr_el1, 0);
    }

    #[test]
    fn data_abort_from_el1_uses_same_el_ec() {
        let i = inject(Kind::DataAbort { far: 0x900_0000 }, 0x1000, 0x5, VBAR, true);
        assert_eq!(i.esr_el1, 0x9600_0010);
        assert_eq!(i.far_el1, Some(0x900_0000));
    }

    #[test]
    fn instruction_abort_ec_depends_on_source_el() {
        let el1 = inject(Kind::InstructionAbort { far: 0x10 }, 0x10, 0x5, VBAR, true);
        assert_eq!(el1.esr_el1, 0x8600_0010);
        let el0 = inject(Kind::InstructionAbort { far: 0x10 }, 0x10, 0x0, VBAR, true);
        assert_eq!(el0.esr_el1, 0x8200_0010);
        assert_eq!(el0.far_el1, Some(0x10));
    }

    #[test]
    fn new_pstate_keeps_no_guest_bits() {
        // Guest had PAN (bit 22), SSBS (bit 12), NZCV set: none leak through.
        let spsr = (0xf << 28) | (1 << 22) | (1 << 12) | 0x5;
        let i = inject(Kind::Undefined, 0, spsr, VBAR, true);
        assert_eq!(i.spsr_el2, EL1H_MASKED);
        assert_eq!(i.spsr_el1, spsr);
    }

    #[test]
    fn aarch32_source_uses_lower_a32_vector_without_panicking() {
        let i = inject(Kind::Undefined, 0x8000, 0x10, VBAR, false);
        assert_eq!(i.elr_el2, VBAR + 0x600);
        let i = inject(Kind::DataAbort { far: 1 }, 0x8000, 0x13, VBAR, false);
        assert_eq!(i.esr_el1, 0x9200_0010);
    }

    #[test]
    fn hostile_vbar_wraps_instead_of_overflowing() {
        let i = inject(Kind::Undefined, 0, 0x5, u64::MAX - 0x100, true);
        assert_eq!(i.elr_el2, (u64::MAX - 0x100).wrapping_add(0x200));
    }
}
