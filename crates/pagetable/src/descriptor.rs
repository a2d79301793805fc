//! Descriptor encoding for the 4 KiB granule (Arm ARM D8.3 "Translation
//! table descriptor formats", D8.4 "Memory attributes in the translation
//! table descriptors").

use crate::{Attrs, MemType, Regime};

/// Bit 0: the descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0-2) or page (level 3); clear means block.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// Next-level table or output address, bits [47:12] (48-bit OA, no LPA2).
pub const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// Lower attribute: AF, the access flag. Set so the first access does not
/// fault (we do not use hardware or software access-flag management).
const AF: u64 = 1 << 10;
/// Lower attribute SH[9:8] = 0b11, inner shareable, for Normal memory so all
/// CPUs of an SMP VM (or the hypervisor) see coherent data.
const SH_INNER: u64 = 0b11 << 8;
/// Upper attribute: XN (stage 1, one VA range) / XN[1] (stage 2).
const XN: u64 = 1 << 54;
/// Stage 2 XN[0] (FEAT_XNX); only decoded, never set.
const S2_XN0: u64 = 1 << 53;

/// Stage 1 AttrIndx[2:0] at [4:2]; indices into MAIR_EL2.
const S1_ATTRINDX_SHIFT: u32 = 2;
const S1_ATTRINDX_MASK: u64 = 0b111 << S1_ATTRINDX_SHIFT;
pub const S1_ATTRINDX_DEVICE: u64 = 0;
pub const S1_ATTRINDX_NORMAL: u64 = 1;
/// Stage 1 AP[2]: read-only.
const S1_AP2_RO: u64 = 1 << 7;
/// Stage 1 AP[1]: RES1 in a translation regime with a single privilege level
/// (EL2 without VHE): Arm ARM D8.4.1.2.1 "Stage 1 data accesses using
/// Direct permissions".
const S1_AP1: u64 = 1 << 6;

/// Stage 2 MemAttr[3:0] at [5:2] (HCR_EL2.FWB = 0; Arm ARM D8.6.5).
const S2_MEMATTR_SHIFT: u32 = 2;
const S2_MEMATTR_MASK: u64 = 0b1111 << S2_MEMATTR_SHIFT;
/// MemAttr 0b1111: Normal, outer and inner write-back cacheable.
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111 << S2_MEMATTR_SHIFT;
/// MemAttr 0b0001: Device-nGnRE.
const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << S2_MEMATTR_SHIFT;
/// Stage 2 S2AP[0] (bit 6): read allowed; S2AP[1] (bit 7): write allowed.
const S2AP_READ: u64 = 1 << 6;
const S2AP_WRITE: u64 = 1 << 7;

/// Size in bytes covered by one entry at `level` (4 KiB granule: level 0 =
/// 512 GiB, 1 = 1 GiB, 2 = 2 MiB, 3 = 4 KiB).
pub const fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// What a descriptor at a given level means to the table walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    Invalid,
    Table(u64),
    Leaf,
}

/// Classify `desc` as the hardware walk would at `level`. A level-0 block
/// and a level-3 descriptor with bits[1:0] = 0b01 are reserved with the
/// 4 KiB granule (no FEAT_LPA2) and translation-fault, so they read as
/// invalid.
pub fn classify(desc: u64, level: u8) -> Entry {
    if desc & VALID == 0 {
        Entry::Invalid
    } else if level == 3 {
        if desc & TABLE_OR_PAGE != 0 {
            Entry::Leaf
        } else {
            Entry::Invalid
        }
    } else if desc & TABLE_OR_PAGE != 0 {
        Entry::Table(desc & OA_MASK)
    } else if level == 0 {
        Entry::Invalid
    } else {
        Entry::Leaf
    }
}

/// Table descriptor pointing at `next`.
pub fn table(next: u64) -> u64 {
    (next & OA_MASK) | VALID | TABLE_OR_PAGE
}

/// Block (levels 1-2) or page (level 3) descriptor. `attrs` must already be
/// validated as expressible in `regime`.
pub fn leaf(regime: Regime, level: u8, pa: u64, attrs: Attrs) -> u64 {
    let kind = if level == 3 {
        VALID | TABLE_OR_PAGE
    } else {
        VALID
    };
    (pa & OA_MASK) | kind | encode_attrs(regime, attrs)
}

/// Whether `attrs` can be expressed in `regime`. Stage-1 AP[2:1] has no
/// encoding without read access (Arm ARM D8.4.1.2.1: AP[2] only chooses
/// read-write or read-only).
pub fn expressible(regime: Regime, attrs: Attrs) -> bool {
    match regime {
        Regime::El2Stage1 => attrs.read,
        Regime::Stage2 => true,
    }
}

fn encode_attrs(regime: Regime, attrs: Attrs) -> u64 {
    let mut d = AF;
    if !attrs.exec || attrs.mem == MemType::Device {
        d |= XN;
    }
    match regime {
        Regime::El2Stage1 => {
            d |= S1_AP1;
            if !attrs.write {
                d |= S1_AP2_RO;
            }
            match attrs.mem {
                MemType::Normal => d |= (S1_ATTRINDX_NORMAL << S1_ATTRINDX_SHIFT) | SH_INNER,
                MemType::Device => d |= S1_ATTRINDX_DEVICE << S1_ATTRINDX_SHIFT,
            }
        }
        Regime::Stage2 => {
            if attrs.read {
                d |= S2AP_READ;
            }
            if attrs.write {
                d |= S2AP_WRITE;
            }
            match attrs.mem {
                MemType::Normal => d |= S2_MEMATTR_NORMAL_WB | SH_INNER,
                MemType::Device => d |= S2_MEMATTR_DEVICE_NGNRE,
            }
        }
    }
    d
}

/// Decode the attributes of a leaf descriptor.
pub fn decode_attrs(regime: Regime, desc: u64) -> Attrs {
    match regime {
        Regime::El2Stage1 => Attrs {
            // Only MAIR_EL2 index 1 is Normal; every other index holds
            // 0x00, Device-nGnRnE (see `MAIR_EL2`).
            mem: if (desc & S1_ATTRINDX_MASK) >> S1_ATTRINDX_SHIFT == S1_ATTRINDX_NORMAL {
                MemType::Normal
            } else {
                MemType::Device
            },
            read: true,
            write: desc & S1_AP2_RO == 0,
            exec: desc & XN == 0,
        },
        Regime::Stage2 => Attrs {
            // MemAttr[3:2] == 0b00 is Device, anything else Normal (Arm ARM
            // D8.6.5 "Stage 2 memory type and Cacheability attributes when
            // FEAT_S2FWB is disabled").
            mem: if (desc & S2_MEMATTR_MASK) >> (S2_MEMATTR_SHIFT + 2) == 0 {
                MemType::Device
            } else {
                MemType::Normal
            },
            read: desc & S2AP_READ != 0,
            write: desc & S2AP_WRITE != 0,
            // With FEAT_XNX, XN[1:0] != 0b00 forbids execution at EL1 or
            // EL0; report executable only when both are allowed.
            exec: desc & (XN | S2_XN0) == 0,
        },
    }
}
