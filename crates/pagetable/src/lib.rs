//! AArch64 VMSAv8-64 translation tables with the 4 KiB granule, for the
//! hypervisor's own EL2 stage-1 map and for each VM's stage-2 map.
//!
//! The table memory sits behind [`TableMemory`], so host tests can inspect
//! every descriptor, and [`PageTable::for_each_mapping`] lets a walker prove
//! that no hypervisor page is mapped into any VM.
#![no_std]
#![deny(unsafe_code)]

mod descriptor;
mod registers;
mod table;

pub use registers::{pa_bits, tcr_el2, vtcr_el2, vttbr, MAIR_EL2, VTCR_EL2_VS_16BIT_VMID};
pub use table::{PageTable, TableMemory, WasWritable};

/// The translation regime a table is built for; it decides the descriptor
/// attribute encoding (Arm ARM D8.3 "Translation table descriptor formats").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Regime {
    /// The hypervisor's own map (non-VHE EL2, one VA range, TTBR0_EL2).
    El2Stage1,
    /// A VM's IPA -> PA map (VTTBR_EL2).
    Stage2,
}

/// Memory type of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemType {
    /// Normal memory, inner and outer write-back cacheable, inner shareable.
    Normal,
    /// Device memory (stage 1: Device-nGnRnE, stage 2: Device-nGnRE). Never
    /// executable.
    Device,
}

/// Access permissions and memory type of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Attrs {
    pub mem: MemType,
    pub read: bool,
    pub write: bool,
    /// Ignored (treated as `false`) for [`MemType::Device`]: the tables
    /// always mark device memory execute-never, so speculative instruction
    /// fetch never touches a device.
    pub exec: bool,
}

/// Why a table could not be built or changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// `va`, `pa` or `size` is not 4 KiB aligned.
    Unaligned,
    /// The input range exceeds `2^va_bits` (or overflows), or the output
    /// range exceeds the 48-bit output address.
    OutOfRange,
    /// Part of the range is already mapped; `va` is the lowest such address.
    AlreadyMapped { va: u64 },
    /// [`TableMemory::alloc_table`] returned `None`.
    OutOfMemory,
    /// `size` is zero.
    ZeroSize,
    /// The request cannot be expressed: a stage-1 mapping without read
    /// permission, or an input address size outside 25..=48 bits.
    Unsupported,
    /// `va` is not mapped by a 4 KiB page (unmapped, or inside a block).
    NotAPage { va: u64 },
}

/// One leaf (block or page) of a table, as reported by
/// [`PageTable::for_each_mapping`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping {
    pub va: u64,
    pub pa: u64,
    pub size: u64,
    pub attrs: Attrs,
}
