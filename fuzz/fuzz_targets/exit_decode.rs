//! The trap decoder: any ESR_EL2 / FAR_EL2 / HPFAR_EL2 a guest can cause,
//! any register value it loads or stores through an emulated MMIO access,
//! and any PC / PSTATE / VBAR it has when an exception is injected.
//!
//! Checks that decoding never panics and that its results stay inside the
//! architecture's encodings: a decoded access is 1, 2, 4 or 8 bytes to
//! register 0..=31, load and store values fit the access, the fault IPA is
//! a 52-bit address, and an injection resumes at one of the four
//! synchronous vectors with EL1h and DAIF masked.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_exit::inject::{inject, Kind};
use bulkhead_exit::{decode, ec, fault_ipa, instruction_len, is_translation_fault, Exit};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    esr: u64,
    far: u64,
    hpfar: u64,
    /// What the device returned for a load, or the register for a store.
    value: u64,
    pc: u64,
    spsr: u64,
    vbar: u64,
    il32: bool,
    kind: u8,
}

/// Mask of the low `size` bytes.
fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        _ => (1u64 << (8 * u32::from(size))) - 1,
    }
}

fuzz_target!(|input: Input| {
    let esr = input.esr;
    let exit = decode(esr);
    // Only ESR bits [31:26] (EC) and [24:0] (ISS) mean anything to the
    // decoder: IL and everything above bit 31 (ISS2, RES0) do not.
    assert_eq!(exit, decode(esr & 0xffff_ffff & !(1 << 25)), "{esr:#x}");
    let class = ec(esr);
    assert!(class < 64);
    assert!(matches!(instruction_len(esr), 2 | 4));

    match exit {
        Exit::Hvc { imm } => {
            assert_eq!(class, ec::HVC64);
            assert_eq!(u64::from(imm), esr & 0xffff);
        }
        Exit::Smc { imm } => {
            assert_eq!(class, ec::SMC64);
            assert_eq!(u64::from(imm), esr & 0xffff);
        }
        Exit::Wfx { wfe } => {
            assert_eq!(class, ec::WFX);
            assert_eq!(wfe, esr & 1 != 0);
        }
        Exit::SysReg(s) => {
            assert_eq!(class, ec::SYS64);
            assert!(s.op0 < 4 && s.op1 < 8 && s.op2 < 8 && s.crn < 16 && s.crm < 16);
            assert!(s.rt < 32);
        }
        Exit::DataAbort(d) => {
            assert_eq!(class, ec::DABT_LOWER);
            assert!(d.dfsc < 64);
            // ISV (bit 24) decides whether there is an access to emulate.
            assert_eq!(d.access.is_some(), esr & (1 << 24) != 0);
            let _ = is_translation_fault(d.dfsc);
            if let Some(a) = d.access {
                assert!(matches!(a.size, 1 | 2 | 4 | 8), "size {}", a.size);
                assert!(a.reg <= 31);
                assert_eq!(a.write, d.write);
                let m = mask(a.size);

                let stored = a.store_value(input.value);
                assert_eq!(stored, input.value & m);

                let loaded = a.load_value(input.value);
                // The access's own bytes arrive unchanged ...
                assert_eq!(loaded & m & 0xffff_ffff, input.value & m & 0xffff_ffff);
                // ... a W register never gets its upper half set ...
                if !a.sf {
                    assert_eq!(loaded >> 32, 0, "{a:?} {:#x}", input.value);
                }
                // ... and without SSE the rest is zero, with SSE the sign.
                if !a.sign_extend || a.size == 8 {
                    let width = if a.sf { u64::MAX } else { 0xffff_ffff };
                    assert_eq!(loaded, input.value & m & width);
                } else {
                    let sign = input.value & (1 << (8 * u32::from(a.size) - 1)) != 0;
                    let width = if a.sf { u64::MAX } else { 0xffff_ffff };
                    let high = !m & width;
                    assert_eq!(loaded & high, if sign { high } else { 0 });
                }
            }
        }
        Exit::InstructionAbort { fsc } => {
            assert_eq!(class, ec::IABT_LOWER);
            assert!(fsc < 64);
        }
        Exit::Unknown { ec: other, iss } => {
            assert_eq!(other, class);
            assert!(![
                ec::HVC64,
                ec::SMC64,
                ec::WFX,
                ec::SYS64,
                ec::DABT_LOWER,
                ec::IABT_LOWER
            ]
            .contains(&other));
            assert_eq!(u64::from(iss), esr & ((1 << 25) - 1));
        }
    }

    // HPFAR_EL2.FIPA [43:4] holds IPA [51:12]; FAR_EL2 gives the offset.
    let ipa = fault_ipa(input.hpfar, input.far).raw();
    assert!(ipa < 1 << 52, "{ipa:#x}");
    assert_eq!(ipa & 0xfff, input.far & 0xfff);
    assert_eq!(ipa >> 12, (input.hpfar >> 4) & ((1 << 40) - 1));

    let kind = match input.kind % 3 {
        0 => Kind::Undefined,
        1 => Kind::DataAbort { far: input.far },
        _ => Kind::InstructionAbort { far: input.far },
    };
    let i = inject(kind, input.pc, input.spsr, input.vbar, input.il32);
    let offset = i.elr_el2.wrapping_sub(input.vbar);
    assert!(
        matches!(offset, 0x000 | 0x200 | 0x400 | 0x600),
        "{offset:#x}"
    );
    // EL1h, D, A, I and F masked: nothing of the guest's PSTATE leaks in.
    assert_eq!(i.spsr_el2, 0x3c5);
    assert_eq!(i.elr_el1, input.pc);
    assert_eq!(i.spsr_el1, input.spsr);
    // IL is RES1 for all three kinds; ISS above the FSC is zero.
    assert_ne!(i.esr_el1 & (1 << 25), 0);
    assert_eq!(i.esr_el1 >> 32, 0);
    let injected = ec(i.esr_el1);
    match kind {
        Kind::Undefined => {
            assert_eq!(injected, ec::UNKNOWN);
            assert_eq!(i.far_el1, None);
        }
        Kind::DataAbort { far } => {
            assert!(matches!(injected, ec::DABT_LOWER | ec::DABT_CURRENT));
            assert_eq!(i.far_el1, Some(far));
        }
        Kind::InstructionAbort { far } => {
            assert!(matches!(injected, ec::IABT_LOWER | ec::IABT_CURRENT));
            assert_eq!(i.far_el1, Some(far));
        }
    }
});
