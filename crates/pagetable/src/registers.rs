//! System register values that go with the tables: VTCR_EL2, TCR_EL2,
//! MAIR_EL2 and VTTBR_EL2 (Arm ARM D24.2 "General system control
//! registers").

use crate::descriptor::{S1_ATTRINDX_DEVICE, S1_ATTRINDX_NORMAL};

/// T0SZ[5:0]: the input region is 2^(64-T0SZ) bytes.
const T0SZ_MASK: u64 = 0x3f;
/// IRGN0[9:8] = 0b01 and ORGN0[11:10] = 0b01: table walks are Normal
/// write-back read-allocate write-allocate cacheable.
const IRGN0_WBWA: u64 = 0b01 << 8;
const ORGN0_WBWA: u64 = 0b01 << 10;
/// SH0[13:12] = 0b11: table walks are inner shareable, matching the
/// inner-shareable Normal memory the tables live in.
const SH0_INNER: u64 = 0b11 << 12;
/// TG0[15:14] = 0b00: 4 KiB granule.
const TG0_4K: u64 = 0b00 << 14;
/// PS[18:16] (VTCR_EL2) / PS[18:16] (TCR_EL2, non-VHE): physical address size.
const PS_SHIFT: u32 = 16;
const PS_MASK: u64 = 0b111;
/// VTCR_EL2.SL0[7:6]: starting level of the stage-2 walk.
const SL0_SHIFT: u32 = 6;
/// VTCR_EL2 bit 31 is RES1.
const VTCR_RES1: u64 = 1 << 31;
/// TCR_EL2 (non-VHE) bits 31 and 23 are RES1.
const TCR_RES1: u64 = (1 << 31) | (1 << 23);

/// VTCR_EL2.VS (bit 19): 16-bit VMIDs. [`vtcr_el2`] leaves it clear (8-bit
/// VMIDs, which every implementation supports); OR this in when
/// ID_AA64MMFR1_EL1.VMIDBits says 16-bit VMIDs are supported and a VMID above
/// 255 is used.
pub const VTCR_EL2_VS_16BIT_VMID: u64 = 1 << 19;

/// MAIR_EL2 matching the stage-1 AttrIndx values this crate writes
/// (Arm ARM D24.2 MAIR_EL2): index 0 = 0x00 Device-nGnRnE, index 1 = 0xff
/// Normal inner and outer write-back, read-allocate, write-allocate,
/// non-transient. Indices 2..=7 are 0x00, Device-nGnRnE.
pub const MAIR_EL2: u64 = (0x00 << (8 * S1_ATTRINDX_DEVICE)) | (0xff << (8 * S1_ATTRINDX_NORMAL));

/// Physical address size in bits for an ID_AA64MMFR0_EL1.PARange value
/// (Arm ARM D24.2 ID_AA64MMFR0_EL1); `None` for a reserved value.
pub fn pa_bits(pa_range: u8) -> Option<u8> {
    match pa_range {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// The fields TCR_EL2 and VTCR_EL2 share: T0SZ, the walk cacheability and
/// shareability, TG0 and PS.
fn common_tcr(va_bits: u8, pa_range: u8) -> u64 {
    let t0sz = 64u64.saturating_sub(u64::from(va_bits)) & T0SZ_MASK;
    let ps = (u64::from(pa_range) & PS_MASK) << PS_SHIFT;
    t0sz | IRGN0_WBWA | ORGN0_WBWA | SH0_INNER | TG0_4K | ps
}

/// VTCR_EL2 for a stage-2 table of `ipa_bits` starting at `start_level`
/// (Arm ARM D24.2 VTCR_EL2). With the 4 KiB granule SL0 = 2 - start_level:
/// 0b10 starts at level 0, 0b01 at level 1, 0b00 at level 2. `pa_range` is
/// the ID_AA64MMFR0_EL1.PARange value, written to PS unchanged.
///
/// VS is left clear (8-bit VMIDs); see [`VTCR_EL2_VS_16BIT_VMID`].
pub fn vtcr_el2(ipa_bits: u8, start_level: u8, pa_range: u8) -> u64 {
    let sl0 = u64::from(2u8.saturating_sub(start_level)) << SL0_SHIFT;
    VTCR_RES1 | sl0 | common_tcr(ipa_bits, pa_range)
}

/// TCR_EL2 (non-VHE, HCR_EL2.E2H = 0) for the EL2 stage-1 table
/// (Arm ARM D24.2 TCR_EL2). The start level follows from T0SZ, so it is not
/// encoded.
pub fn tcr_el2(va_bits: u8, pa_range: u8) -> u64 {
    TCR_RES1 | common_tcr(va_bits, pa_range)
}

/// VTTBR_EL2 for a VM: VMID in [63:48] and BADDR (the root table) in
/// [47:1] (Arm ARM D24.2 VTTBR_EL2). With 8-bit VMIDs (VTCR_EL2.VS = 0)
/// bits [63:56] are RES0, so `vmid` must then be below 256.
pub fn vttbr(vmid: u16, root: u64) -> u64 {
    const BADDR_MASK: u64 = 0x0000_FFFF_FFFF_FFFE;
    (u64::from(vmid) << 48) | (root & BADDR_MASK)
}
