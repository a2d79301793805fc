//! The model's state as bytes, for VM snapshots and live migration:
//! [`VGic::save_state`] and [`VGic::restore_state`].
//!
//! Format version 1, little-endian, fixed layout for a given shape:
//!
//! ```text
//! u8  version (1)
//! u16 n_vcpus
//! u32 nr_spis
//! u8  list registers per vCPU (MAX_LRS)
//! u8  GICD_CTLR.EnableGrp0, u8 EnableGrp1
//! n_vcpus x u8           GICR_WAKER.ProcessorSleep
//! n_vcpus x 32 x Irq     SGIs and PPIs, bank by bank
//! nr_spis x Irq          SPIs from INTID 32
//! n_vcpus x MAX_LRS x Slot
//!
//! Irq (23 bytes): u8 priority; u8 group1, enabled, edge, latch, line,
//!     active, clear_pending, clear_active, lr_latched; u8 has_owner,
//!     u8 owner; u8 has_hw, u16 hw; u64 route
//! Slot (8 bytes): u8 used, u32 intid, u8 priority, u8 state, u8 eoi
//! ```
//!
//! Flags are 0 or 1, and an absent optional field has all-zero contents, so
//! every accepted input re-encodes to the same bytes. The caches a flush
//! relies on (`used`, `eoi_lrs`, the ready bitmaps) are not stored: they are
//! functions of the interrupts and slots and are rebuilt on restore. Banks
//! of vCPUs beyond `n_vcpus` are not stored either: nothing reads them.
//!
//! The hardware list registers are not part of the model: the hypervisor
//! saves and restores `ICH_LR<n>_EL2` with the vCPU, next to this state.

use alloc::vec::Vec;
use core::fmt;

use crate::gicd::IROUTER_MASK;
use crate::lr::State;
use crate::{Irq, Slot, VGic, FIRST_PPI, MAX_LRS, NR_PRIVATE, PRIORITY_MASK};

/// The format [`VGic::save_state`] writes and [`VGic::restore_state`] reads.
pub const STATE_VERSION: u8 = 1;

const HEADER_BYTES: usize = 1 + 2 + 4 + 1;
const IRQ_BYTES: usize = 1 + 9 + 2 + 3 + 8;
const SLOT_BYTES: usize = 1 + 4 + 1 + 1 + 1;
/// One past the largest physical INTID `set_hw` accepts.
const HW_END: u16 = 1020;

/// Length of the encoding for a given shape.
fn state_len(n_vcpus: u16, nr_spis: u32) -> usize {
    let per_vcpu = 1 + NR_PRIVATE as usize * IRQ_BYTES + MAX_LRS * SLOT_BYTES;
    HEADER_BYTES + 2 + usize::from(n_vcpus) * per_vcpu + nr_spis as usize * IRQ_BYTES
}

/// Why [`VGic::restore_state`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// A format version this code does not read.
    Version(u8),
    /// Saved from a vGIC of another shape.
    Shape {
        /// vCPUs in the saved state.
        n_vcpus: u16,
        /// SPIs in the saved state.
        nr_spis: u32,
        /// vCPUs of the vGIC restored into.
        vm_vcpus: u16,
        /// SPIs of the vGIC restored into.
        vm_spis: u32,
    },
    /// Saved with another number of list registers per vCPU.
    ListRegisters(u8),
    /// The input ends early.
    Truncated,
    /// This many bytes follow the end of the state.
    Trailing(usize),
    /// A value no reachable state has.
    Invalid {
        /// Which part of the state.
        at: Place,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// Where in the state a [`StateError::Invalid`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// GICD_CTLR.
    Distributor,
    /// GICR_WAKER of a vCPU.
    Redistributor(u16),
    /// An SGI or PPI of a vCPU's bank.
    Private {
        /// The bank.
        vcpu: u16,
        /// 0..32.
        intid: u32,
    },
    /// An SPI, by INTID.
    Spi(u32),
    /// A list register slot of a vCPU.
    Lr {
        /// The vCPU.
        vcpu: u16,
        /// The slot, 0..MAX_LRS.
        index: u8,
    },
}

/// What is wrong in a [`StateError::Invalid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A flag byte other than 0 or 1.
    NotBool(u8),
    /// A presence byte other than 0 or 1.
    NotOption(u8),
    /// An absent optional field with non-zero contents.
    NoneWithValue,
    /// A priority with the unimplemented low bits set.
    Priority(u8),
    /// An owner that is no vCPU of this VM.
    Owner(u8),
    /// An SGI/PPI owned by a vCPU other than its bank's.
    OwnerNotBank(u8),
    /// A physical INTID `set_hw` would not accept.
    Hw(u16),
    /// An SGI that is level-sensitive, has a line level, or is HW-backed.
    Sgi,
    /// A route with bits GICD_IROUTER cannot hold (any route, on an SGI/PPI).
    Route(u64),
    /// LR bookkeeping flags on an interrupt that is in no LR.
    FlagsWithoutLr,
    /// Active in the model while in an LR (the LR holds the active state).
    ActiveInLr,
    /// A PPI's HW mapping differs from that of vCPU 0's bank.
    HwMismatch,
    /// A slot holding an INTID this vCPU does not have.
    Intid(u32),
    /// A slot state that is not pending and/or active.
    State(u8),
    /// A slot holding an interrupt whose owner is not this vCPU.
    NotOwner(u32),
    /// A slot holding an interrupt already held by an earlier slot.
    Duplicate(u32),
    /// An owned interrupt that no slot of its owner holds.
    NotInLr(u8),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StateError::Version(v) => {
                write!(f, "vGIC state version {v}, this build reads {STATE_VERSION}")
            }
            StateError::Shape {
                n_vcpus,
                nr_spis,
                vm_vcpus,
                vm_spis,
            } => write!(
                f,
                "vGIC state for {n_vcpus} vCPUs and {nr_spis} SPIs, this VM has {vm_vcpus} and {vm_spis}"
            ),
            StateError::ListRegisters(n) => write!(
                f,
                "vGIC state for {n} list registers per vCPU, this build has {MAX_LRS}"
            ),
            StateError::Truncated => f.write_str("vGIC state truncated"),
            StateError::Trailing(n) => write!(f, "{n} bytes after the vGIC state"),
            StateError::Invalid { at, problem } => write!(f, "{at}: {problem}"),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Place::Distributor => f.write_str("GICD_CTLR"),
            Place::Redistributor(v) => write!(f, "GICR_WAKER of vCPU {v}"),
            Place::Private { vcpu, intid } if intid < FIRST_PPI => {
                write!(f, "SGI {intid} of vCPU {vcpu}")
            }
            Place::Private { vcpu, intid } => write!(f, "PPI {intid} of vCPU {vcpu}"),
            Place::Spi(intid) => write!(f, "SPI {intid}"),
            Place::Lr { vcpu, index } => write!(f, "LR {index} of vCPU {vcpu}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::NotBool(b) => write!(f, "flag byte {b}, not 0 or 1"),
            Problem::NotOption(b) => write!(f, "presence byte {b}, not 0 or 1"),
            Problem::NoneWithValue => f.write_str("absent field with non-zero contents"),
            Problem::Priority(p) => write!(f, "priority {p:#04x} has unimplemented bits"),
            Problem::Owner(o) => write!(f, "owner {o} out of range"),
            Problem::OwnerNotBank(o) => write!(f, "owner {o} is not the vCPU of its bank"),
            Problem::Hw(p) => write!(f, "physical INTID {p} out of range"),
            Problem::Sgi => f.write_str("SGI that is level-sensitive, has a line or is HW"),
            Problem::Route(r) => write!(f, "route {r:#x} not valid here"),
            Problem::FlagsWithoutLr => f.write_str("LR bookkeeping flags while in no LR"),
            Problem::ActiveInLr => f.write_str("active in the model while in an LR"),
            Problem::HwMismatch => f.write_str("HW mapping differs from vCPU 0's"),
            Problem::Intid(i) => write!(f, "INTID {i} not implemented for this vCPU"),
            Problem::State(s) => write!(f, "LR state {s}, not pending and/or active"),
            Problem::NotOwner(i) => write!(f, "holds INTID {i}, owned elsewhere or nowhere"),
            Problem::Duplicate(i) => write!(f, "holds INTID {i}, already in another LR"),
            Problem::NotInLr(o) => write!(f, "owner {o} holds it in none of its LRs"),
        }
    }
}

fn invalid(at: Place, problem: Problem) -> StateError {
    StateError::Invalid { at, problem }
}

fn put_irq(out: &mut Vec<u8>, irq: &Irq) {
    // Destructured so that a new field cannot be forgotten here.
    let Irq {
        priority,
        group1,
        enabled,
        edge,
        latch,
        line,
        active,
        clear_pending,
        clear_active,
        lr_latched,
        owner,
        hw,
        route,
    } = *irq;
    out.push(priority);
    for flag in [
        group1,
        enabled,
        edge,
        latch,
        line,
        active,
        clear_pending,
        clear_active,
        lr_latched,
    ] {
        out.push(u8::from(flag));
    }
    out.push(u8::from(owner.is_some()));
    out.push(owner.unwrap_or(0));
    out.push(u8::from(hw.is_some()));
    out.extend_from_slice(&hw.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&route.to_le_bytes());
}

fn put_slot(out: &mut Vec<u8>, slot: &Option<Slot>) {
    let Some(Slot {
        intid,
        priority,
        state,
        eoi,
    }) = *slot
    else {
        out.extend_from_slice(&[0; SLOT_BYTES]);
        return;
    };
    out.push(1);
    out.extend_from_slice(&intid.to_le_bytes());
    out.push(priority);
    out.push(state.bits() as u8);
    out.push(u8::from(eoi));
}

/// The input not yet decoded.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(StateError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        let [b] = self.take()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        self.take().map(u64::from_le_bytes)
    }

    fn flag(&mut self, at: Place) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(at, Problem::NotBool(b))),
        }
    }

    /// A presence byte, then a value read by `value` that must be zero
    /// when absent.
    fn option<T: Default + PartialEq>(
        &mut self,
        at: Place,
        value: impl FnOnce(&mut Self) -> Result<T, StateError>,
    ) -> Result<Option<T>, StateError> {
        let present = self.u8()?;
        let v = value(self)?;
        match present {
            0 if v == T::default() => Ok(None),
            0 => Err(invalid(at, Problem::NoneWithValue)),
            1 => Ok(Some(v)),
            b => Err(invalid(at, Problem::NotOption(b))),
        }
    }

    /// One interrupt, checked on its own: `bank` is its vCPU for an SGI or
    /// PPI, `None` for an SPI.
    fn irq(
        &mut self,
        at: Place,
        bank: Option<usize>,
        intid: u32,
        n_vcpus: u16,
    ) -> Result<Irq, StateError> {
        let bad = |problem| Err(invalid(at, problem));
        let priority = self.u8()?;
        let mut flags = [false; 9];
        for f in flags.iter_mut() {
            *f = self.flag(at)?;
        }
        let [group1, enabled, edge, latch, line, active, clear_pending, clear_active, lr_latched] =
            flags;
        let owner = self.option(at, Self::u8)?;
        let hw = self.option(at, Self::u16)?;
        let route = self.u64()?;

        if priority & !PRIORITY_MASK != 0 {
            return bad(Problem::Priority(priority));
        }
        if let Some(o) = owner {
            if u16::from(o) >= n_vcpus {
                return bad(Problem::Owner(o));
            }
            if bank.is_some_and(|v| v != usize::from(o)) {
                return bad(Problem::OwnerNotBank(o));
            }
            // SetActive is ignored while in an LR and install needs the
            // interrupt inactive.
            if active {
                return bad(Problem::ActiveInLr);
            }
        } else if lr_latched || clear_pending || clear_active {
            // Every way out of an LR clears these.
            return bad(Problem::FlagsWithoutLr);
        }
        if let Some(p) = hw {
            if !(FIRST_PPI as u16..HW_END).contains(&p) {
                return bad(Problem::Hw(p));
            }
        }
        // SGIs are edge-triggered, have no line and no HW mapping.
        if intid < FIRST_PPI && (!edge || line || hw.is_some()) {
            return bad(Problem::Sgi);
        }
        let route_ok = match bank {
            Some(_) => route == 0,
            None => route & !IROUTER_MASK == 0,
        };
        if !route_ok {
            return bad(Problem::Route(route));
        }
        Ok(Irq {
            priority,
            group1,
            enabled,
            edge,
            latch,
            line,
            active,
            clear_pending,
            clear_active,
            lr_latched,
            owner,
            hw,
            route,
        })
    }

    fn slot(&mut self, at: Place) -> Result<Option<Slot>, StateError> {
        let present = self.u8()?;
        let intid = self.u32()?;
        let priority = self.u8()?;
        let state = self.u8()?;
        let eoi = self.u8()?;
        match present {
            0 if intid == 0 && priority == 0 && state == 0 && eoi == 0 => return Ok(None),
            0 => return Err(invalid(at, Problem::NoneWithValue)),
            1 => {}
            b => return Err(invalid(at, Problem::NotOption(b))),
        }
        let state = match state {
            1..=3 => State::from_bits(u64::from(state)),
            s => return Err(invalid(at, Problem::State(s))),
        };
        if priority & !PRIORITY_MASK != 0 {
            return Err(invalid(at, Problem::Priority(priority)));
        }
        let eoi = match eoi {
            0 => false,
            1 => true,
            b => return Err(invalid(at, Problem::NotBool(b))),
        };
        Ok(Some(Slot {
            intid,
            priority,
            state,
            eoi,
        }))
    }
}

impl VGic {
    /// The whole state of the model (see the format above), for
    /// [`VGic::restore_state`] on a vGIC of the same shape.
    pub fn save_state(&self) -> Vec<u8> {
        // Destructured so that a new field cannot be forgotten here. The
        // rest are caches, rebuilt by `restore_state`.
        let VGic {
            n_vcpus,
            nr_spis,
            grp0,
            grp1,
            private,
            spis,
            asleep,
            slots,
            used: _,
            eoi_lrs: _,
            ready_private: _,
            ready_spi: _,
            ready_spi_words: _,
        } = self;
        let n = usize::from(*n_vcpus);
        let mut out = Vec::with_capacity(state_len(*n_vcpus, *nr_spis));
        out.push(STATE_VERSION);
        out.extend_from_slice(&n_vcpus.to_le_bytes());
        out.extend_from_slice(&nr_spis.to_le_bytes());
        out.push(MAX_LRS as u8);
        out.push(u8::from(*grp0));
        out.push(u8::from(*grp1));
        for &a in asleep.iter().take(n) {
            out.push(u8::from(a));
        }
        for irq in private.iter().take(n).flatten().chain(spis.iter()) {
            put_irq(&mut out, irq);
        }
        for slot in slots.iter().take(n).flatten() {
            put_slot(&mut out, slot);
        }
        out
    }

    /// Replaces the model's state by one [`VGic::save_state`] produced on a
    /// vGIC with the same number of vCPUs and SPIs. The input is checked in
    /// full first (ranges, flags, and the links between interrupts and list
    /// register slots), so a malformed or hostile input leaves the model
    /// untouched and an accepted one is a state the model can reach.
    ///
    /// The hardware list registers must be restored to what they held when
    /// the state was saved.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        *self = self.decode_state(bytes)?;
        Ok(())
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<VGic, StateError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        let n_vcpus = r.u16()?;
        let nr_spis = r.u32()?;
        if (n_vcpus, nr_spis) != (self.n_vcpus, self.nr_spis) {
            return Err(StateError::Shape {
                n_vcpus,
                nr_spis,
                vm_vcpus: self.n_vcpus,
                vm_spis: self.nr_spis,
            });
        }
        let lrs = r.u8()?;
        if usize::from(lrs) != MAX_LRS {
            return Err(StateError::ListRegisters(lrs));
        }
        let want = state_len(n_vcpus, nr_spis);
        if bytes.len() < want {
            return Err(StateError::Truncated);
        }
        if bytes.len() > want {
            return Err(StateError::Trailing(bytes.len() - want));
        }

        // This vGIC's shape came from `new`, so `new` gives it back.
        let mut g = VGic::new(n_vcpus, nr_spis);
        let n = usize::from(n_vcpus);
        g.grp0 = r.flag(Place::Distributor)?;
        g.grp1 = r.flag(Place::Distributor)?;
        for (v, a) in g.asleep.iter_mut().take(n).enumerate() {
            *a = r.flag(Place::Redistributor(v as u16))?;
        }
        for (v, bank) in g.private.iter_mut().take(n).enumerate() {
            for (intid, irq) in (0..).zip(bank.iter_mut()) {
                let at = Place::Private {
                    vcpu: v as u16,
                    intid,
                };
                *irq = r.irq(at, Some(v), intid, n_vcpus)?;
            }
        }
        for (intid, irq) in (NR_PRIVATE..).zip(g.spis.iter_mut()) {
            *irq = r.irq(Place::Spi(intid), None, intid, n_vcpus)?;
        }
        // `set_hw` maps a PPI in every bank alike.
        if let Some((first, rest)) = g.private.get(..n).and_then(<[_]>::split_first) {
            for (v, bank) in (1..).zip(rest) {
                for (intid, (a, b)) in (0..).zip(first.iter().zip(bank)) {
                    if a.hw != b.hw {
                        let at = Place::Private { vcpu: v, intid };
                        return Err(invalid(at, Problem::HwMismatch));
                    }
                }
            }
        }

        // Each slot holds an interrupt this vCPU has and owns, none twice;
        // `set_slot` rebuilds `used` and `eoi_lrs` along the way.
        for v in 0..n {
            for i in 0..MAX_LRS {
                let at = Place::Lr {
                    vcpu: v as u16,
                    index: i as u8,
                };
                let Some(slot) = r.slot(at)? else {
                    continue;
                };
                let intid = slot.intid;
                let Some(irq) = g.irq(v, intid) else {
                    return Err(invalid(at, Problem::Intid(intid)));
                };
                if irq.owner.map(usize::from) != Some(v) {
                    return Err(invalid(at, Problem::NotOwner(intid)));
                }
                if g.slots_of(v).iter().flatten().any(|s| s.intid == intid) {
                    return Err(invalid(at, Problem::Duplicate(intid)));
                }
                g.set_slot(v, i, Some(slot));
            }
        }
        if !r.0.is_empty() {
            return Err(StateError::Trailing(r.0.len()));
        }
        // ... and each owned interrupt is in a slot of its owner.
        let banks = (0..n).flat_map(|v| (0..NR_PRIVATE).map(move |intid| (v, intid)));
        let spis = (NR_PRIVATE..NR_PRIVATE + nr_spis).map(|intid| (0, intid));
        for (v, intid) in banks.chain(spis) {
            let Some(o) = g.irq(v, intid).and_then(|irq| irq.owner) else {
                continue;
            };
            let held = g
                .slots_of(usize::from(o))
                .iter()
                .flatten()
                .any(|s| s.intid == intid);
            if !held {
                let at = match intid {
                    0..NR_PRIVATE => Place::Private {
                        vcpu: v as u16,
                        intid,
                    },
                    _ => Place::Spi(intid),
                };
                return Err(invalid(at, Problem::NotInLr(o)));
            }
        }

        // The ready bitmaps, from the interrupts they summarise.
        let banks = (0..n).flat_map(|v| (0..NR_PRIVATE).map(move |intid| (v, intid)));
        let spis = (NR_PRIVATE..NR_PRIVATE + nr_spis).map(|intid| (0, intid));
        for (v, intid) in banks.chain(spis) {
            let ready = g.irq(v, intid).is_some_and(Irq::ready);
            g.mark_ready(v, intid, ready);
        }
        Ok(g)
    }
}
