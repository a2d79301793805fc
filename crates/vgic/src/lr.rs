//! `ICH_LR<n>_EL2`, the list registers of the GICv3 virtual CPU interface
//! (GICv3 spec 12.4.6 / Arm ARM D23 `ICH_LR<n>_EL2`).
//!
//! Bit layout: vINTID \[31:0\]; pINTID \[44:32\] when HW=1; when HW=0 bit 41 is
//! EOI (raise a maintenance interrupt when the guest deactivates it);
//! Priority \[55:48\]; Group bit 60; HW bit 61; State \[63:62\].

/// The vINTID field, \[31:0\].
pub const VINTID_MASK: u64 = 0xffff_ffff;
/// The pINTID field, \[44:32\] (HW=1 only).
pub const PINTID_SHIFT: u32 = 32;
/// Width mask of pINTID (13 bits).
pub const PINTID_MASK: u64 = 0x1fff;
/// EOI, bit 41 (HW=0 only; with HW=1 this bit is part of pINTID).
pub const EOI: u64 = 1 << 41;
/// The Priority field, \[55:48\].
pub const PRIORITY_SHIFT: u32 = 48;
/// Group, bit 60: 1 = Group 1.
pub const GROUP: u64 = 1 << 60;
/// HW, bit 61: the virtual interrupt is backed by physical pINTID.
pub const HW: u64 = 1 << 61;
/// The State field, \[63:62\].
pub const STATE_SHIFT: u32 = 62;

/// The State field of a list register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// 0b00: the LR holds nothing (or the guest has finished with it).
    #[default]
    Invalid,
    /// 0b01
    Pending,
    /// 0b10
    Active,
    /// 0b11
    PendingActive,
}

impl State {
    /// The two-bit encoding.
    pub const fn bits(self) -> u64 {
        match self {
            State::Invalid => 0,
            State::Pending => 1,
            State::Active => 2,
            State::PendingActive => 3,
        }
    }

    /// Decodes the low two bits of `bits`.
    pub const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => State::Invalid,
            1 => State::Pending,
            2 => State::Active,
            _ => State::PendingActive,
        }
    }

    /// Pending or pending+active.
    pub const fn is_pending(self) -> bool {
        matches!(self, State::Pending | State::PendingActive)
    }

    /// Active or pending+active.
    pub const fn is_active(self) -> bool {
        matches!(self, State::Active | State::PendingActive)
    }

    /// This state with the pending part removed.
    pub const fn without_pending(self) -> Self {
        match self {
            State::Pending | State::Invalid => State::Invalid,
            State::Active | State::PendingActive => State::Active,
        }
    }

    /// This state with the active part removed.
    pub const fn without_active(self) -> Self {
        match self {
            State::Active | State::Invalid => State::Invalid,
            State::Pending | State::PendingActive => State::Pending,
        }
    }
}

/// A decoded list register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lr {
    /// The virtual INTID the guest sees.
    pub vintid: u32,
    /// `Some(pINTID)` when HW=1: the guest's deactivation deactivates this
    /// physical interrupt.
    pub pintid: Option<u32>,
    /// EOI maintenance request (meaningful only when `pintid` is `None`).
    pub eoi: bool,
    /// The interrupt's priority (lower is more urgent).
    pub priority: u8,
    /// Group 1 (true) or Group 0.
    pub group1: bool,
    /// Invalid / pending / active / pending+active.
    pub state: State,
}

/// Encodes `lr` as an `ICH_LR<n>_EL2` value. With a pINTID the EOI flag is
/// not encoded (bit 41 then belongs to pINTID) and pINTID is truncated to
/// its 13-bit field.
pub fn encode(lr: &Lr) -> u64 {
    let mut v = u64::from(lr.vintid)
        | (u64::from(lr.priority) << PRIORITY_SHIFT)
        | (lr.state.bits() << STATE_SHIFT);
    if lr.group1 {
        v |= GROUP;
    }
    match lr.pintid {
        Some(p) => v |= HW | ((u64::from(p) & PINTID_MASK) << PINTID_SHIFT),
        None => {
            if lr.eoi {
                v |= EOI;
            }
        }
    }
    v
}

/// Decodes an `ICH_LR<n>_EL2` value.
pub fn decode(v: u64) -> Lr {
    let hw = v & HW != 0;
    Lr {
        vintid: (v & VINTID_MASK) as u32,
        pintid: hw.then_some(((v >> PINTID_SHIFT) & PINTID_MASK) as u32),
        eoi: !hw && v & EOI != 0,
        priority: (v >> PRIORITY_SHIFT) as u8,
        group1: v & GROUP != 0,
        state: State::from_bits(v >> STATE_SHIFT),
    }
}

/// `v` with its State field replaced by `state`.
pub const fn with_state(v: u64, state: State) -> u64 {
    (v & !(3 << STATE_SHIFT)) | (state.bits() << STATE_SHIFT)
}
