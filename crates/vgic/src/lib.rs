//! A pure model of a virtual GICv3 for one VM (GICv3 architecture
//! specification, Arm IHI 0069): the emulated distributor (GICD), one
//! emulated redistributor (GICR) per vCPU, SGI routing, device lines, and the
//! list-register cycle that hands interrupts to the hardware virtual CPU
//! interface.
//!
//! The hypervisor owns the hardware. It traps the guest's accesses to the
//! GICD and GICR frames and calls [`VGic::dist_read`] and friends; it reads
//! and writes `ICH_LR<n>_EL2` around [`VGic::flush`]; and it kicks the pCPUs
//! named in the returned [`Kicks`].
//!
//! The model is a single security state GIC with affinity routing always on
//! (GICD_CTLR.DS = 1, ARE = 1), no LPIs and no ITS, five priority bits.
//!
//! Ownership of an interrupt's state: while an interrupt sits in a list
//! register, the LR is the truth for its pending/active state and the model
//! only remembers which vCPU's LR holds it (`owner`). A pending event that
//! arrives meanwhile is latched in the model and merged into the LR at the
//! owner's next flush (active -> pending+active), so nothing is in the
//! model's pending set and pending in an LR at once.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ops::{BitOr, BitOrAssign};

mod gicd;
mod gicr;
pub mod lr;
mod state;

use lr::State;
pub use state::{Place, Problem, StateError, STATE_VERSION};

/// Size of the distributor frame (GICv3 spec 12.8: GICD is one 64 KiB frame).
pub const GICD_SIZE: u64 = 0x1_0000;
/// Size of one vCPU's redistributor: RD_base + SGI_base, no VLPI frames
/// (GICv3 spec 12.10).
pub const GICR_FRAME_SIZE: u64 = 0x2_0000;
/// Most vCPUs a VM may have.
pub const MAX_VCPUS: usize = 8;
/// Most list registers an implementation has (ICH_VTR_EL2.ListRegs is 4 bits).
pub const MAX_LRS: usize = 16;

/// The largest number of SPIs: INTIDs 32..1019 (GICv3 spec 2.2, 1020-1023
/// are special).
pub const MAX_SPIS: u32 = 988;
/// SGIs (0-15) and PPIs (16-31), banked per vCPU.
const NR_PRIVATE: u32 = 32;
/// 32-bit words in a one-bit-per-SPI bitmap.
const SPI_WORDS: usize = MAX_SPIS.div_ceil(32) as usize;
/// First PPI.
const FIRST_PPI: u32 = 16;
/// Five implemented priority bits: the low three read as zero
/// (GICv3 spec 4.8, GICD_IPRIORITYR "unimplemented bits are RAZ/WI").
const PRIORITY_MASK: u8 = 0xf8;
/// vCPUs per affinity-level-1 cluster; matches bulkhead-psci's `vcpu_mpidr`
/// (Aff0 = index % 16, Aff1 = index / 16; GICD_TYPER.RSS = 0 allows Aff0
/// 0-15).
const CLUSTER: usize = 16;

/// The ICC_SGI1R_EL1 / GICD_IROUTER field positions used here.
const IROUTER_IRM: u64 = 1 << 31;

/// An access the model cannot serve: the offset lies beyond the frame(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgicError {
    /// The offset is beyond the distributor frame or the last redistributor.
    OutOfRange,
}

/// Bitmask of vCPUs whose deliverable interrupts may have changed: the
/// hypervisor runs [`VGic::flush`] for them (kicking their pCPU if remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kicks(pub u32);

impl Kicks {
    /// Nobody.
    pub const NONE: Kicks = Kicks(0);

    /// Just vCPU `vcpu`.
    pub const fn vcpu(vcpu: u16) -> Kicks {
        if vcpu < 32 {
            Kicks(1 << vcpu)
        } else {
            Kicks(0)
        }
    }

    /// Whether vCPU `vcpu` is named.
    pub const fn contains(self, vcpu: u16) -> bool {
        vcpu < 32 && self.0 & (1 << vcpu) != 0
    }

    /// Whether nobody is named.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The named vCPUs, lowest first (one step per named vCPU).
    pub fn iter(self) -> impl Iterator<Item = u16> {
        Bits {
            base: 0,
            word: self.0,
        }
        .map(|v| v as u16)
    }

    fn index(v: usize) -> Kicks {
        u16::try_from(v).map_or(Kicks::NONE, Kicks::vcpu)
    }
}

impl BitOr for Kicks {
    type Output = Kicks;
    fn bitor(self, rhs: Kicks) -> Kicks {
        Kicks(self.0 | rhs.0)
    }
}

impl BitOrAssign for Kicks {
    fn bitor_assign(&mut self, rhs: Kicks) {
        self.0 |= rhs.0;
    }
}

/// What [`VGic::flush`] asks of the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flush {
    /// Some deliverable interrupts did not fit: set ICH_HCR_EL2.UIE to get a
    /// maintenance interrupt when the LRs drain, then flush again.
    pub underflow: bool,
    /// Some LR has the EOI bit set: its deactivation raises a maintenance
    /// interrupt (ICH_MISR_EL2.EOI), after which the hypervisor flushes.
    pub eoi_maintenance: bool,
    /// Other vCPUs that now have work (an SPI released here that is routed
    /// elsewhere): flush them too.
    pub kicks: Kicks,
    /// Interrupts newly put in an LR by this flush (for statistics).
    pub injected: u32,
}

/// The state of one INTID (one bank of it, for SGIs and PPIs).
#[derive(Debug, Clone, Copy, Default)]
struct Irq {
    /// GICD_IPRIORITYR / GICR_IPRIORITYR, already masked to 5 bits.
    priority: u8,
    /// GICD_IGROUPR: Group 1 (true) or Group 0.
    group1: bool,
    /// GICD_ISENABLER.
    enabled: bool,
    /// GICD_ICFGR: edge-triggered (SGIs always).
    edge: bool,
    /// Pending latch: an edge, GICD_ISPENDR, or `set_pending`.
    latch: bool,
    /// The input level of a level-sensitive line. For a hardware-backed
    /// interrupt the level is handed over with the interrupt (cleared when
    /// put in an LR): the physical interrupt re-signals if still asserted.
    line: bool,
    /// Active while not in an LR (GICD_ISACTIVER). Such an interrupt is not
    /// forwarded (GICv3 spec 4.1.2: only inactive pending interrupts are).
    active: bool,
    /// GICD_ICPENDR hit the interrupt while in an LR: the owner removes the
    /// pending part at its next flush.
    clear_pending: bool,
    /// GICD_ICACTIVER hit the interrupt while in an LR.
    clear_active: bool,
    /// A level interrupt went into its LR (or merged into it) through the
    /// latch, so it stays pending even if the line drops.
    lr_latched: bool,
    /// The vCPU whose list register holds this interrupt.
    owner: Option<u8>,
    /// Physical INTID backing this interrupt (`set_hw`); survives `reset`.
    hw: Option<u16>,
    /// GICD_IROUTER (SPIs only), masked to its defined fields.
    route: u64,
}

impl Irq {
    fn new(sgi: bool) -> Self {
        Irq {
            edge: sgi,
            ..Irq::default()
        }
    }

    /// Back to reset state, keeping the hypervisor's HW mapping.
    fn reset(&mut self, sgi: bool) {
        *self = Irq {
            hw: self.hw,
            ..Irq::new(sgi)
        };
    }

    /// Pending as GICD_ISPENDR reads it, ignoring any LR.
    fn pending(&self) -> bool {
        self.latch || (!self.edge && self.line)
    }

    /// Pending in the model and free to go into an LR.
    fn model_pending(&self) -> bool {
        self.owner.is_none() && self.pending()
    }

    /// What this interrupt's own state says about going into an LR: pending
    /// in the model, inactive, enabled. The group enables and the routing
    /// are checked at [`VGic::flush`]. The ready bitmaps track this.
    fn ready(&self) -> bool {
        self.model_pending() && !self.active && self.enabled
    }
}

/// The set bits of `word`, lowest first, each plus `base`.
struct Bits {
    base: u32,
    word: u32,
}

impl Iterator for Bits {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.word == 0 {
            return None;
        }
        let bit = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + bit)
    }
}

/// What the model put in one list register.
#[derive(Debug, Clone, Copy)]
struct Slot {
    intid: u32,
    priority: u8,
    /// The state as of the last flush.
    state: State,
    /// The EOI maintenance bit as written (HW = 0 only).
    eoi: bool,
}

/// The seven one-bit-per-INTID register kinds (GICv3 spec 12.9.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// In the order the registers appear from 0x080 in steps of 0x80.
    const ALL: [BitReg; 7] = [
        BitReg::Group,
        BitReg::SetEnable,
        BitReg::ClearEnable,
        BitReg::SetPending,
        BitReg::ClearPending,
        BitReg::SetActive,
        BitReg::ClearActive,
    ];
}

/// The virtual GICv3 of one VM.
pub struct VGic {
    n_vcpus: u16,
    nr_spis: u32,
    /// GICD_CTLR.EnableGrp0
    grp0: bool,
    /// GICD_CTLR.EnableGrp1
    grp1: bool,
    /// SGIs and PPIs, banked per vCPU.
    private: [[Irq; NR_PRIVATE as usize]; MAX_VCPUS],
    /// SPI `32 + i` at index `i`.
    spis: Vec<Irq>,
    /// GICR_WAKER.ProcessorSleep per vCPU.
    asleep: [bool; MAX_VCPUS],
    /// What each vCPU's list registers hold, as of its last flush.
    slots: [[Option<Slot>; MAX_LRS]; MAX_VCPUS],
    /// Per vCPU, bit `i` set iff `slots[v][i]` is `Some`.
    used: [u32; MAX_VCPUS],
    /// Per vCPU, bit `i` set iff `slots[v][i]` has the EOI bit.
    eoi_lrs: [u32; MAX_VCPUS],
    /// Per vCPU, bit `i` set iff SGI/PPI `i` of that bank is [`Irq::ready`].
    /// With the two below, `flush` looks only at ready interrupts instead of
    /// scanning every INTID.
    ready_private: [u32; MAX_VCPUS],
    /// Bit `i % 32` of word `i / 32` set iff SPI `32 + i` is ready.
    ready_spi: [u32; SPI_WORDS],
    /// Bit `w` set iff `ready_spi[w]` is non-zero.
    ready_spi_words: u32,
}

impl VGic {
    /// A GIC for `n_vcpus` vCPUs (clamped to 1..=[`MAX_VCPUS`]) with
    /// `nr_spis` SPIs, rounded up to a multiple of 32 and clamped to
    /// [`MAX_SPIS`] (INTIDs 32..32+nr_spis).
    pub fn new(n_vcpus: u16, nr_spis: u32) -> Self {
        let n = n_vcpus.clamp(1, MAX_VCPUS as u16);
        let nr = nr_spis
            .min(MAX_SPIS)
            .div_ceil(32)
            .saturating_mul(32)
            .min(MAX_SPIS);
        let mut bank = [Irq::default(); NR_PRIVATE as usize];
        for (i, irq) in bank.iter_mut().enumerate() {
            *irq = Irq::new(i < FIRST_PPI as usize);
        }
        VGic {
            n_vcpus: n,
            nr_spis: nr,
            grp0: false,
            grp1: false,
            private: [bank; MAX_VCPUS],
            spis: vec![Irq::new(false); nr as usize],
            asleep: [true; MAX_VCPUS],
            slots: [[None; MAX_LRS]; MAX_VCPUS],
            used: [0; MAX_VCPUS],
            eoi_lrs: [0; MAX_VCPUS],
            ready_private: [0; MAX_VCPUS],
            ready_spi: [0; SPI_WORDS],
            ready_spi_words: 0,
        }
    }

    /// Everything back to reset state (VM restart). The hypervisor's
    /// [`VGic::set_hw`] declarations are kept. Stale hardware LRs are
    /// cleared by the next [`VGic::flush`] (an LR the model did not fill is
    /// zeroed).
    pub fn reset(&mut self) {
        self.grp0 = false;
        self.grp1 = false;
        for bank in self.private.iter_mut() {
            for (i, irq) in bank.iter_mut().enumerate() {
                irq.reset(i < FIRST_PPI as usize);
            }
        }
        for irq in self.spis.iter_mut() {
            irq.reset(false);
        }
        self.asleep = [true; MAX_VCPUS];
        self.slots = [[None; MAX_LRS]; MAX_VCPUS];
        self.used = [0; MAX_VCPUS];
        self.eoi_lrs = [0; MAX_VCPUS];
        // Nothing is pending after a reset.
        self.ready_private = [0; MAX_VCPUS];
        self.ready_spi = [0; SPI_WORDS];
        self.ready_spi_words = 0;
    }

    /// Number of vCPUs.
    pub fn n_vcpus(&self) -> u16 {
        self.n_vcpus
    }

    /// Number of SPIs (a multiple of 32, or 988).
    pub fn nr_spis(&self) -> u32 {
        self.nr_spis
    }

    /// Size of the whole redistributor region: one frame per vCPU.
    pub fn redist_size(&self) -> u64 {
        u64::from(self.n_vcpus) * GICR_FRAME_SIZE
    }

    /// The affinity (MPIDR Aff3.Aff2.Aff1.Aff0 packed as in GICR_TYPER
    /// \[63:32\], i.e. Aff0 in bits \[7:0\]) of vCPU `index`.
    pub fn affinity(index: u16) -> u32 {
        let i = usize::from(index);
        ((i / CLUSTER) << 8 | (i % CLUSTER)) as u32
    }

    /// The vCPU whose list registers hold `intid` of bank `vcpu`, as of the
    /// last flushes (for inspection and tests).
    pub fn lr_owner(&self, vcpu: u16, intid: u32) -> Option<u16> {
        let v = self.vcpu_index(vcpu)?;
        self.irq(v, intid)?.owner.map(u16::from)
    }

    fn vcpu_index(&self, vcpu: u16) -> Option<usize> {
        (vcpu < self.n_vcpus).then_some(usize::from(vcpu))
    }

    /// The state of `intid`: bank `v` for SGIs/PPIs, the shared SPI otherwise.
    #[inline(always)]
    fn irq(&self, v: usize, intid: u32) -> Option<&Irq> {
        if intid < NR_PRIVATE {
            if v >= usize::from(self.n_vcpus) {
                return None;
            }
            self.private.get(v)?.get(intid as usize)
        } else {
            self.spis.get(usize::try_from(intid - NR_PRIVATE).ok()?)
        }
    }

    /// Only [`VGic::update`] mutates an interrupt, so that the ready
    /// bitmaps follow every change.
    #[inline(always)]
    fn irq_mut(&mut self, v: usize, intid: u32) -> Option<&mut Irq> {
        if intid < NR_PRIVATE {
            if v >= usize::from(self.n_vcpus) {
                return None;
            }
            self.private.get_mut(v)?.get_mut(intid as usize)
        } else {
            self.spis.get_mut(usize::try_from(intid - NR_PRIVATE).ok()?)
        }
    }

    /// Applies `f` to `intid` (bank `v`) and brings its ready bit up to date.
    /// `None` if there is no such interrupt.
    #[inline(always)]
    fn update<R>(&mut self, v: usize, intid: u32, f: impl FnOnce(&mut Irq) -> R) -> Option<R> {
        let irq = self.irq_mut(v, intid)?;
        let r = f(irq);
        let ready = irq.ready();
        self.mark_ready(v, intid, ready);
        Some(r)
    }

    #[inline(always)]
    fn mark_ready(&mut self, v: usize, intid: u32, ready: bool) {
        let set = |word: &mut u32, bit: u32| {
            if ready {
                *word |= 1 << bit;
            } else {
                *word &= !(1 << bit);
            }
        };
        if intid < NR_PRIVATE {
            if let Some(word) = self.ready_private.get_mut(v) {
                set(word, intid);
            }
            return;
        }
        let i = intid - NR_PRIVATE;
        let w = i / 32;
        if let Some(word) = self.ready_spi.get_mut(w as usize) {
            set(word, i % 32);
            if *word != 0 {
                self.ready_spi_words |= 1 << w;
            } else {
                self.ready_spi_words &= !(1 << w);
            }
        }
    }

    /// The ready INTIDs a flush of `v` looks at: `v`'s SGIs and PPIs and
    /// every ready SPI, ascending.
    fn ready_intids(&self, v: usize) -> impl Iterator<Item = u32> + '_ {
        let private = Bits {
            base: 0,
            word: self.ready_private.get(v).copied().unwrap_or(0),
        };
        let spis = Bits {
            base: 0,
            word: self.ready_spi_words,
        }
        .flat_map(move |w| Bits {
            base: NR_PRIVATE + 32 * w,
            word: self.ready_spi.get(w as usize).copied().unwrap_or(0),
        });
        private.chain(spis)
    }

    /// The vCPU a GICD_IROUTER value delivers to (GICv3 spec 12.9.22): IRM=1
    /// ("any PE") is implemented as vCPU 0; an affinity that names no vCPU
    /// delivers nowhere.
    fn route_target(&self, route: u64) -> Option<usize> {
        if route & IROUTER_IRM != 0 {
            return Some(0);
        }
        let aff = |shift: u32| ((route >> shift) & 0xff) as usize;
        let (aff0, aff1, aff2, aff3) = (aff(0), aff(8), aff(16), aff(32));
        if aff2 != 0 || aff3 != 0 || aff0 >= CLUSTER {
            return None;
        }
        let index = aff1 * CLUSTER + aff0;
        (index < usize::from(self.n_vcpus)).then_some(index)
    }

    /// The vCPU shared interrupt `intid` is routed to now, if it is an SPI
    /// whose route names one: where a device's completion is best taken.
    pub fn spi_target(&self, intid: u32) -> Option<u16> {
        if intid < NR_PRIVATE {
            return None;
        }
        let irq = self.irq(0, intid)?;
        self.route_target(irq.route).map(|t| t as u16)
    }

    /// The vCPU `intid` (bank `v`) is delivered to.
    fn target(&self, v: usize, intid: u32, irq: &Irq) -> Option<usize> {
        if intid < NR_PRIVATE {
            Some(v)
        } else {
            self.route_target(irq.route)
        }
    }

    fn group_enabled(&self, irq: &Irq) -> bool {
        if irq.group1 {
            self.grp1
        } else {
            self.grp0
        }
    }

    /// Enabled, in an enabled group, and routed to `v`.
    fn deliverable_to(&self, v: usize, intid: u32, irq: &Irq) -> bool {
        irq.enabled && self.group_enabled(irq) && self.target(v, intid, irq) == Some(v)
    }

    /// The priority of `intid` if it may go into one of `v`'s LRs now.
    fn candidate(&self, v: usize, intid: u32) -> Option<u8> {
        let irq = self.irq(v, intid)?;
        (irq.model_pending() && !irq.active && self.deliverable_to(v, intid, irq))
            .then_some(irq.priority)
    }

    /// The vCPUs that must look at `intid` (bank `v`) after it changed: the
    /// one it is routed to and the one whose LR holds it.
    fn kick_for(&self, v: usize, intid: u32) -> Kicks {
        let Some(irq) = self.irq(v, intid) else {
            return Kicks::NONE;
        };
        let mut k = self.target(v, intid, irq).map_or(Kicks::NONE, Kicks::index);
        if let Some(o) = irq.owner {
            k |= Kicks::index(usize::from(o));
        }
        k
    }

    /// The bank to use for `intid` raised "on" `vcpu`: SPIs ignore the vCPU.
    fn bank(&self, vcpu: u16, intid: u32) -> Option<usize> {
        if intid < NR_PRIVATE {
            self.vcpu_index(vcpu)
        } else {
            Some(0)
        }
    }

    /// The guest wrote ICC_SGI1R_EL1 (trapped to EL2; Arm ARM D19 ICC_SGI1R_EL1:
    /// TargetList \[15:0\], Aff1 \[23:16\], INTID \[27:24\], Aff2 \[39:32\], IRM
    /// bit 40, RS \[47:44\], Aff3 \[55:48\]). Marks the SGI pending on each
    /// target vCPU (by affinity + target list, or IRM=1: all but the sender).
    /// Targets that do not exist are ignored.
    pub fn sgi(&mut self, sender: u16, icc_sgi1r: u64) -> Kicks {
        let field = |shift: u32, mask: u64| ((icc_sgi1r >> shift) & mask) as usize;
        let intid = field(24, 0xf);
        let irm = icc_sgi1r & (1 << 40) != 0;
        let (targets, aff1, aff2, rs, aff3) = (
            field(0, 0xffff),
            field(16, 0xff),
            field(32, 0xff),
            field(44, 0xf),
            field(48, 0xff),
        );
        // vCPU `t` is bit `t`: Aff1 = t / 16, Aff0 = t % 16.
        let all = self.all_vcpus().0;
        let hit = if irm {
            all & !1u32.checked_shl(u32::from(sender)).unwrap_or(0)
        } else if aff3 == 0 && aff2 == 0 && rs == 0 && aff1 * CLUSTER < 32 {
            // Target Aff0 = RS * 16 + bit; our Aff0 is below 16, so RS
            // must be 0 (GICv3 spec 12.11 "Range Selector").
            ((targets as u32) << (aff1 * CLUSTER)) & all
        } else {
            0
        };
        let mut kicks = Kicks::NONE;
        for t in (Bits { base: 0, word: hit }) {
            let t = t as usize;
            if self
                .update(t, intid as u32, |irq| irq.latch = true)
                .is_some()
            {
                kicks |= Kicks::index(t);
            }
        }
        kicks
    }

    /// A level-sensitive line (a device SPI, or a PPI of `vcpu`) changed
    /// level. On an interrupt configured as edge-triggered a rising level is
    /// an edge (GICv3 spec 4.1.1).
    pub fn set_line(&mut self, vcpu: u16, intid: u32, level: bool) -> Kicks {
        if intid < FIRST_PPI {
            return Kicks::NONE;
        }
        let Some(v) = self.bank(vcpu, intid) else {
            return Kicks::NONE;
        };
        let changed = self.update(v, intid, |irq| {
            let was = irq.line;
            if irq.edge && level && !was {
                irq.latch = true;
            }
            irq.line = level;
            was != level
        });
        if changed != Some(true) {
            return Kicks::NONE;
        }
        self.kick_for(v, intid)
    }

    /// An edge: make `intid` pending (PPI/SGI on `vcpu`, or SPI).
    pub fn set_pending(&mut self, vcpu: u16, intid: u32) -> Kicks {
        let Some(v) = self.bank(vcpu, intid) else {
            return Kicks::NONE;
        };
        if self.update(v, intid, |irq| irq.latch = true).is_none() {
            return Kicks::NONE;
        }
        self.kick_for(v, intid)
    }

    /// Declare PPI or SPI `intid` hardware-backed by physical `pintid` (the
    /// virtual timer: 27 -> 27): it is put in LRs with HW=1, so the guest's
    /// deactivation deactivates the physical interrupt, and the model does
    /// not track its active state once handed over. SGIs, and physical
    /// INTIDs outside 16..1020, are ignored.
    pub fn set_hw(&mut self, intid: u32, pintid: u32) {
        let Ok(p) = u16::try_from(pintid) else {
            return;
        };
        if !(FIRST_PPI..1020).contains(&pintid) || intid < FIRST_PPI {
            return;
        }
        // The HW mapping plays no part in readiness: no bitmap to update.
        if intid < NR_PRIVATE {
            for bank in self.private.iter_mut() {
                if let Some(irq) = bank.get_mut(intid as usize) {
                    irq.hw = Some(p);
                }
            }
        } else if let Some(irq) = self.irq_mut(0, intid) {
            irq.hw = Some(p);
        }
    }

    /// Any interrupt deliverable to `vcpu` (pending + enabled + routed, in the
    /// model, or pending in an LR as of the last flush)?
    pub fn has_deliverable(&self, vcpu: u16) -> bool {
        let Some(v) = self.vcpu_index(vcpu) else {
            return false;
        };
        let in_lr = self
            .slots
            .get(v)
            .is_some_and(|slots| slots.iter().flatten().any(|s| s.state.is_pending()));
        in_lr
            || self
                .ready_intids(v)
                .any(|intid| self.candidate(v, intid).is_some())
    }

    /// Test support: checks the flush bookkeeping against the definitions it
    /// caches, by scanning every INTID of every bank as `flush` once did.
    /// Returns the first disagreement as (vCPU, INTID), with INTID
    /// `u32::MAX` for the LR occupancy of that vCPU or the SPI summary word;
    /// `None` if consistent.
    #[doc(hidden)]
    pub fn bookkeeping_mismatch(&self) -> Option<(u16, u32)> {
        const WORDS: usize = 1 + SPI_WORDS;
        let implemented = NR_PRIVATE + self.nr_spis;
        for v in 0..MAX_VCPUS {
            let vcpu = v as u16;
            let used = (0..MAX_LRS).filter(|&i| self.slot(v, i).is_some());
            let eoi = (0..MAX_LRS).filter(|&i| self.slot(v, i).is_some_and(|s| s.eoi));
            if used.fold(0, |m, i| m | 1 << i) != self.used_of(v)
                || eoi.fold(0, |m, i| m | 1 << i) != self.eoi_lrs.get(v).copied().unwrap_or(0)
            {
                return Some((vcpu, u32::MAX));
            }
            // What the bitmaps say, one bit per INTID.
            let mut ready = [0u32; WORDS];
            for intid in self.ready_intids(v) {
                if let Some(w) = ready.get_mut((intid / 32) as usize) {
                    *w |= 1 << (intid % 32);
                }
            }
            let bit = |intid: u32| {
                ready
                    .get((intid / 32) as usize)
                    .is_some_and(|w| w & 1 << (intid % 32) != 0)
            };
            // Absent interrupts (beyond the SPIs, banks of absent vCPUs) are
            // never ready.
            let present = |w: usize| match w {
                0 if v >= usize::from(self.n_vcpus) => 0,
                _ => {
                    let first = w as u32 * 32;
                    let n = implemented.saturating_sub(first).min(32);
                    u32::MAX.checked_shr(32 - n).unwrap_or(0)
                }
            };
            if let Some(w) = (0..WORDS).find(|&w| ready[w] & !present(w) != 0) {
                return Some((
                    vcpu,
                    w as u32 * 32 + (ready[w] & !present(w)).trailing_zeros(),
                ));
            }
            if v >= usize::from(self.n_vcpus) {
                continue;
            }
            for intid in 0..implemented {
                let Some(irq) = self.irq(v, intid) else {
                    return Some((vcpu, intid));
                };
                let slow_candidate =
                    irq.model_pending() && !irq.active && self.deliverable_to(v, intid, irq);
                if bit(intid) != irq.ready() || (slow_candidate && !bit(intid)) {
                    return Some((vcpu, intid));
                }
            }
        }
        let words = (0..SPI_WORDS).filter(|&w| self.ready_spi.get(w).is_some_and(|&x| x != 0));
        if words.fold(0, |m, w| m | 1 << w) != self.ready_spi_words {
            return Some((0, u32::MAX));
        }
        None
    }

    /// The LR cycle for `vcpu`, run on its own pCPU with the guest stopped.
    /// `lrs` holds the current `ICH_LR<n>_EL2` values (one per implemented LR;
    /// at most [`MAX_LRS`] are used) and receives the new ones.
    ///
    /// 1. Sync back what the guest did: an LR that became invalid is finished
    ///    (edge: done; level without HW: the line is re-sampled, so it is
    ///    pending again if still high; HW: the physical interrupt re-signals).
    ///    Requests from GICD_ICPENDR/ICACTIVER are applied; a pending-only LR
    ///    whose interrupt is no longer deliverable here (disabled, group off,
    ///    re-routed, level line dropped) goes back to the model; an edge
    ///    latched meanwhile merges into its LR (active -> pending+active).
    /// 2. Fill: pending, enabled, group-enabled interrupts routed to `vcpu`
    ///    and in no LR go into free LRs, highest priority (lowest value,
    ///    then lowest INTID) first. With no free LR, a pending-only LR of
    ///    strictly lower priority is evicted back to the model.
    ///
    /// The cost follows the work: the model keeps bitmaps of the interrupts
    /// that are ready to go into an LR and of the LRs it filled, so a flush
    /// looks only at those, never at every INTID.
    ///
    /// An event latched while its interrupt sits in an LR takes effect at
    /// the owner's next flush, so the hypervisor should act on [`Kicks`]
    /// promptly: if the guest acknowledges the pending LR before that flush,
    /// the edge is (correctly, as for an edge after the acknowledge)
    /// delivered a second time.
    pub fn flush(&mut self, vcpu: u16, lrs: &mut [u64]) -> Flush {
        let n = lrs.len().min(MAX_LRS);
        // Whatever the model did not fill is stale (after `reset`): drop it,
        // so that what `flush_with` assumes of unused LRs holds.
        let Some(v) = self.vcpu_index(vcpu) else {
            return Flush::default();
        };
        let used = self.used_of(v);
        for (i, word) in lrs.iter_mut().enumerate() {
            if used & (1 << i) == 0 {
                *word = 0;
            }
        }
        let cells = Cell::from_mut(lrs.get_mut(..n).unwrap_or_default()).as_slice_of_cells();
        self.flush_with(
            vcpu,
            n,
            0,
            |i| cells.get(i).map_or(0, Cell::get),
            |i, w| {
                if let Some(c) = cells.get(i) {
                    c.set(w);
                }
            },
        )
    }

    /// A private interrupt of the vCPU running on this pCPU fired (the
    /// hardware-backed virtual timer): [`VGic::set_pending`] followed at
    /// once by [`VGic::flush_with`], with one shortcut. When nothing else is
    /// waiting for `vcpu` and every LR it holds is one the hardware reports
    /// empty, those are finished and the interrupt goes straight into LR 0:
    /// nothing to sort, no LR to read. Otherwise the full flush runs.
    pub fn raise_private_now(
        &mut self,
        vcpu: u16,
        intid: u32,
        n: usize,
        empty: u32,
        read: impl FnMut(usize) -> u64,
        mut write: impl FnMut(usize, u64),
    ) -> Flush {
        if let Some(f) = self.rearm(vcpu, intid, n, empty, &mut write) {
            return f;
        }
        let mut kicks = self.set_pending(vcpu, intid);
        if let Some(v) = self.vcpu_index(vcpu) {
            let n = n.min(MAX_LRS);
            let present = (1u32 << n) - 1;
            // LRs the guest is done with are finished first, as the flush
            // would: the interrupt may be one of them (the timer's last
            // firing), and only then is it ready again.
            let done = self.used_of(v) & empty & present;
            for i in (Bits {
                base: 0,
                word: done,
            }) {
                kicks |= self.finish(v, i as usize);
            }
            // Every LR it held is finished: nothing of the full flush's
            // sync step is left to do.
            if self.used_of(v) == 0
                && present != 0
                && intid < NR_PRIVATE
                && self.ready_spi_words == 0
                && self.ready_private.get(v).copied() == Some(1 << intid)
                && self.candidate(v, intid).is_some()
            {
                let i = 0;
                let mut word = 0;
                self.install(v, i, intid, &mut word);
                write(i, word);
                return Flush {
                    injected: 1,
                    eoi_maintenance: self.eoi_lrs.get(v).is_some_and(|&m| m != 0),
                    kicks: Kicks(kicks.0 & !Kicks::index(v).0),
                    underflow: false,
                };
            }
        }
        let mut f = self.flush_with(vcpu, n, empty, read, write);
        let me = self.vcpu_index(vcpu).map_or(0, |v| Kicks::index(v).0);
        f.kicks = Kicks((f.kicks.0 | kicks.0) & !me);
        f
    }

    /// The most frequent case of [`VGic::raise_private_now`], a periodic
    /// hardware-backed interrupt (the timer): the vCPU's only LR in use is
    /// LR 0, it holds this very interrupt, the guest is done with it, and
    /// nothing else is ready. Finishing LR 0 and installing the interrupt
    /// again then leaves the model as it was, so only LR 0 is rewritten.
    fn rearm(
        &mut self,
        vcpu: u16,
        intid: u32,
        n: usize,
        empty: u32,
        write: &mut impl FnMut(usize, u64),
    ) -> Option<Flush> {
        let v = usize::from(vcpu);
        if v >= usize::from(self.n_vcpus) || intid >= NR_PRIVATE || n == 0 || empty & 1 == 0 {
            return None;
        }
        let (grp0, grp1) = (self.grp0, self.grp1);
        let owner = u8::try_from(v).ok();
        if *self.used.get(v)? != 1 || *self.ready_private.get(v)? != 0 || self.ready_spi_words != 0
        {
            return None;
        }
        let slot = self.slots.get_mut(v)?.get_mut(0)?;
        let irq = self.private.get_mut(v)?.get_mut(intid as usize)?;
        let group_on = if irq.group1 { grp1 } else { grp0 };
        if slot.map(|s| s.intid) != Some(intid)
            || irq.hw.is_none()
            || irq.owner != owner
            || !irq.enabled
            || irq.active
            || !group_on
        {
            return None;
        }
        // What `finish` and then `install` do to a HW interrupt.
        irq.latch = false;
        irq.line = false;
        irq.lr_latched = false;
        irq.clear_pending = false;
        irq.clear_active = false;
        *slot = Some(Slot {
            intid,
            priority: irq.priority,
            state: State::Pending,
            eoi: false,
        });
        // Keep `eoi_lrs` in step with the slot: LR 0 may have had the EOI bit
        // if the interrupt went in before it was declared HW.
        if let Some(m) = self.eoi_lrs.get_mut(v) {
            *m &= !1;
        }
        write(
            0,
            lr::encode(&lr::Lr {
                vintid: intid,
                pintid: irq.hw.map(u32::from),
                eoi: false,
                priority: irq.priority,
                group1: irq.group1,
                state: State::Pending,
            }),
        );
        Some(Flush {
            injected: 1,
            ..Flush::default()
        })
    }

    /// [`VGic::flush`] on the hardware itself: `read(i)` and `write(i, w)`
    /// access list register `i` of the `n` that exist, and `empty` has bit
    /// `i` set for each LR the hardware reports as holding no interrupt
    /// (ICH_ELRSR_EL2; 0 when unknown). Only the LRs the model filled and
    /// the hardware does not report empty are read, and only those whose
    /// value changes are written, so a flush costs what the vCPU has in
    /// flight. The caller must keep every LR the model did not fill
    /// invalid: clear all of them when a vCPU starts (fresh or after
    /// [`VGic::reset`]); the model never leaves a valid LR behind.
    pub fn flush_with(
        &mut self,
        vcpu: u16,
        n: usize,
        empty: u32,
        mut read: impl FnMut(usize) -> u64,
        mut write: impl FnMut(usize, u64),
    ) -> Flush {
        let mut out = Flush::default();
        let Some(v) = self.vcpu_index(vcpu) else {
            return out;
        };
        let n = n.min(MAX_LRS);
        // The LRs that exist, one bit each.
        let present = (1u32 << n) - 1;

        // Nothing in the LRs and nothing ready: nothing to do.
        let ready_private = self.ready_private.get(v).copied().unwrap_or(0);
        if self.used_of(v) == 0 && ready_private == 0 && self.ready_spi_words == 0 {
            return out;
        }

        // Fewer LRs than we filled last time: whatever we put beyond them
        // goes back to the model.
        for i in (Bits {
            base: 0,
            word: self.used_of(v) & !present,
        }) {
            out.kicks |= self.retract(v, i as usize);
        }
        for i in (Bits {
            base: 0,
            word: self.used_of(v),
        }) {
            let i = i as usize;
            if empty & (1 << i) != 0 {
                // The guest is done with it (ELRSR counts an LR that still
                // waits for an EOI maintenance interrupt as not empty).
                out.kicks |= self.finish(v, i);
                continue;
            }
            let old = read(i);
            let mut word = old;
            out.kicks |= self.sync_lr(v, i, &mut word);
            if word != old {
                write(i, word);
            }
        }

        // Fill. Installs never exceed `n` (a newly installed interrupt is
        // never evicted by a later, no more urgent one), so the n+1 best
        // candidates decide everything, including whether some are left over.
        let ready_private = self.ready_private.get(v).copied().unwrap_or(0);
        let free = !self.used_of(v) & present;
        if self.ready_spi_words == 0 && ready_private.is_power_of_two() && free != 0 {
            // One ready interrupt (an SGI, say) and room for it: nothing
            // to sort, nothing to evict.
            let intid = ready_private.trailing_zeros();
            if self.candidate(v, intid).is_some() {
                let i = free.trailing_zeros() as usize;
                let mut word = 0;
                self.install(v, i, intid, &mut word);
                write(i, word);
                out.injected = 1;
            }
            out.eoi_maintenance = self.eoi_lrs.get(v).is_some_and(|&m| m != 0);
            out.kicks = Kicks(out.kicks.0 & !Kicks::index(v).0);
            return out;
        }
        let mut best = Best::new(n + 1);
        self.best_candidates(v, &mut best);
        let mut evicted = false;
        for &key in best.keys() {
            let (prio, intid) = Best::unpack(key);
            let free = !self.used_of(v) & present;
            let i = match free {
                1.. => free.trailing_zeros() as usize,
                0 => match self.victim(v, n, prio) {
                    Some(i) => {
                        out.kicks |= self.retract(v, i);
                        evicted = true;
                        i
                    }
                    None => {
                        out.underflow = true;
                        break;
                    }
                },
            };
            let mut word = 0;
            self.install(v, i, intid, &mut word);
            write(i, word);
            out.injected += 1;
        }
        out.underflow |= evicted;
        // Only LRs the model filled are valid now, and it knows which of
        // them it gave the EOI bit.
        out.eoi_maintenance = self.eoi_lrs.get(v).is_some_and(|&m| m != 0);
        out.kicks = Kicks(out.kicks.0 & !Kicks::index(v).0);
        out
    }

    /// Collects in `best` the interrupts that may go into `v`'s LRs now,
    /// looking only at ready ones: `v`'s SGI/PPI word, then each non-empty
    /// SPI word (plain loops: this is the hot path).
    fn best_candidates(&self, v: usize, best: &mut Best) {
        let mut first = 0;
        let mut word = self.ready_private.get(v).copied().unwrap_or(0);
        let mut spi_words = self.ready_spi_words;
        loop {
            while word != 0 {
                let intid = first + word.trailing_zeros();
                word &= word - 1;
                if let Some(prio) = self.candidate(v, intid) {
                    best.push(prio, intid);
                }
            }
            if spi_words == 0 {
                return;
            }
            let w = spi_words.trailing_zeros();
            spi_words &= spi_words - 1;
            first = NR_PRIVATE + 32 * w;
            word = self.ready_spi.get(w as usize).copied().unwrap_or(0);
        }
    }

    fn slots_of(&self, v: usize) -> &[Option<Slot>; MAX_LRS] {
        // `v` is always a checked vCPU index below MAX_VCPUS.
        static EMPTY: [Option<Slot>; MAX_LRS] = [None; MAX_LRS];
        self.slots.get(v).unwrap_or(&EMPTY)
    }

    #[inline(always)]
    fn slot(&self, v: usize, i: usize) -> Option<Slot> {
        self.slots.get(v)?.get(i).copied().flatten()
    }

    #[inline(always)]
    fn set_slot(&mut self, v: usize, i: usize, slot: Option<Slot>) {
        if let Some(s) = self.slots.get_mut(v).and_then(|s| s.get_mut(i)) {
            *s = slot;
            let set = |mask: &mut u32, on: bool| {
                if on {
                    *mask |= 1 << i;
                } else {
                    *mask &= !(1 << i);
                }
            };
            if let Some(used) = self.used.get_mut(v) {
                set(used, slot.is_some());
            }
            if let Some(eoi) = self.eoi_lrs.get_mut(v) {
                set(eoi, slot.is_some_and(|s| s.eoi));
            }
        }
    }

    /// Which of `v`'s LRs the model filled, one bit each.
    fn used_of(&self, v: usize) -> u32 {
        self.used.get(v).copied().unwrap_or(0)
    }

    /// Step 1 of the LR cycle for LR `i` of vCPU `v`.
    fn sync_lr(&mut self, v: usize, i: usize, word: &mut u64) -> Kicks {
        let cur = lr::decode(*word);
        let Some(slot) = self.slot(v, i) else {
            // Not filled by the model (stale after `reset`): drop it.
            *word = 0;
            return Kicks::NONE;
        };
        if cur.state == State::Invalid {
            *word = 0;
            return self.finish(v, i);
        }
        let intid = slot.intid;
        let Some(mut irq) = self.irq(v, intid).copied() else {
            *word = 0;
            self.set_slot(v, i, None);
            return Kicks::NONE;
        };
        let mut state = cur.state;
        // The hardware owns the active state of a HW interrupt (and its
        // pending state, which it cannot reassert while active); dropping
        // such an LR would leave the physical interrupt active forever.
        if irq.hw.is_none() {
            if irq.clear_pending {
                state = state.without_pending();
                irq.lr_latched = false;
            }
            if irq.clear_active {
                state = state.without_active();
            }
        }
        irq.clear_pending = false;
        irq.clear_active = false;
        if state == State::Invalid {
            // Removed by the guest's ICPENDR/ICACTIVER, not delivered.
            irq.owner = None;
            irq.lr_latched = false;
            self.store(v, intid, irq);
            self.set_slot(v, i, None);
            *word = 0;
            return self.kick_if_elsewhere(v, intid);
        }
        self.store(v, intid, irq);

        let level_dropped = !irq.edge && irq.hw.is_none() && !irq.line && !irq.lr_latched;
        if state == State::Pending && (!self.deliverable_to(v, intid, &irq) || level_dropped) {
            *word = 0;
            return self.retract(v, i);
        }

        // An edge (or ISPENDR) that came while the interrupt sat in this LR.
        // An LR that is already pending holds the one pending state the GIC
        // has per interrupt: the edge coalesces into it. An active LR becomes
        // pending+active if the interrupt may be forwarded now; otherwise the
        // latch waits in the model until the LR drains.
        let merge = match state {
            State::Pending | State::PendingActive => true,
            State::Active => irq.hw.is_none() && self.deliverable_to(v, intid, &irq),
            State::Invalid => false,
        };
        if irq.latch && merge {
            if state == State::Active {
                state = State::PendingActive;
            }
            irq.latch = false;
            if !irq.edge && irq.hw.is_none() {
                irq.lr_latched = true;
            }
            self.store(v, intid, irq);
        }
        // Level interrupts are re-sampled on deactivation; a latch that could
        // not merge is looked at when the LR drains.
        let eoi = irq.hw.is_none() && (!irq.edge || irq.latch);
        *word = lr::encode(&lr::Lr {
            vintid: intid,
            state,
            eoi,
            ..cur
        });
        self.set_slot(v, i, Some(Slot { state, eoi, ..slot }));
        Kicks::NONE
    }

    fn store(&mut self, v: usize, intid: u32, irq: Irq) {
        self.update(v, intid, |slot| *slot = irq);
    }

    /// The guest finished with LR `i` of `v` (it became invalid).
    #[inline(always)]
    fn finish(&mut self, v: usize, i: usize) -> Kicks {
        let Some(slot) = self.slot(v, i) else {
            return Kicks::NONE;
        };
        self.set_slot(v, i, None);
        let intid = slot.intid;
        self.update(v, intid, |irq| {
            irq.owner = None;
            irq.lr_latched = false;
            irq.clear_pending = false;
            irq.clear_active = false;
            // A HW interrupt's level was handed over at install; a raise seen
            // since then is a new physical firing (it cannot fire again while
            // active), so it is kept.
        });
        self.kick_if_elsewhere(v, intid)
    }

    /// Takes whatever the model put in LR `i` of `v` back into the model,
    /// still pending. The caller clears the hardware LR.
    fn retract(&mut self, v: usize, i: usize) -> Kicks {
        let Some(slot) = self.slot(v, i) else {
            return Kicks::NONE;
        };
        self.set_slot(v, i, None);
        let intid = slot.intid;
        self.update(v, intid, |irq| {
            irq.owner = None;
            // A level interrupt pended by its line is re-derived from the line.
            if irq.edge || irq.hw.is_some() || irq.lr_latched {
                irq.latch = true;
            }
            irq.lr_latched = false;
            irq.clear_pending = false;
            irq.clear_active = false;
        });
        self.kick_if_elsewhere(v, intid)
    }

    /// `intid` just left `v`'s LRs: if it is pending and routed to another
    /// vCPU, that vCPU has work.
    fn kick_if_elsewhere(&self, v: usize, intid: u32) -> Kicks {
        let Some(irq) = self.irq(v, intid) else {
            return Kicks::NONE;
        };
        match self.target(v, intid, irq) {
            Some(t) if t != v && irq.model_pending() => Kicks::index(t),
            _ => Kicks::NONE,
        }
    }

    /// The pending-only LR of `v` (among the first `n`) with the least urgent
    /// interrupt, if that is strictly less urgent than `prio`.
    /// Only needed when the LRs are full; kept out of line so that the
    /// common flush does not pay for its set-up.
    #[inline(never)]
    fn victim(&self, v: usize, n: usize, prio: u8) -> Option<usize> {
        self.slots_of(v)
            .iter()
            .take(n)
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .filter(|(_, s)| s.state == State::Pending && s.priority > prio)
            .max_by_key(|(_, s)| (s.priority, s.intid))
            .map(|(i, _)| i)
    }

    /// Puts `intid` in LR `i` of `v`, pending.
    #[inline(always)]
    fn install(&mut self, v: usize, i: usize, intid: u32, word: &mut u64) {
        let owner = u8::try_from(v).ok();
        let Some(l) = self.update(v, intid, |irq| {
            irq.owner = owner;
            irq.lr_latched = irq.latch && !irq.edge && irq.hw.is_none();
            irq.latch = false;
            if irq.hw.is_some() {
                irq.line = false;
            }
            lr::Lr {
                vintid: intid,
                pintid: irq.hw.map(u32::from),
                // Level interrupts without HW: deactivation raises a
                // maintenance interrupt so the next flush re-samples the line.
                eoi: irq.hw.is_none() && !irq.edge,
                priority: irq.priority,
                group1: irq.group1,
                state: State::Pending,
            }
        }) else {
            return;
        };
        *word = lr::encode(&l);
        self.set_slot(
            v,
            i,
            Some(Slot {
                intid,
                priority: l.priority,
                state: State::Pending,
                eoi: l.eoi && l.pintid.is_none(),
            }),
        );
    }

    /// The LR state of `intid` (bank `v`) as of its owner's last flush.
    fn lr_state(&self, irq: &Irq, intid: u32) -> State {
        let Some(o) = irq.owner else {
            return State::Invalid;
        };
        self.slots_of(usize::from(o))
            .iter()
            .flatten()
            .find(|s| s.intid == intid)
            .map_or(State::Invalid, |s| s.state)
    }

    // ---- Register helpers shared by GICD and GICR ------------------------

    /// One 32-bit word of a one-bit-per-INTID register covering INTIDs
    /// `first..first+32` (bank `v` for SGIs/PPIs). Unimplemented INTIDs are
    /// RAZ.
    fn read_bits(&self, v: usize, reg: BitReg, first: u32) -> u32 {
        let mut word = 0;
        for bit in 0..32 {
            let intid = first + bit;
            let Some(irq) = self.irq(v, intid) else {
                continue;
            };
            let set = match reg {
                BitReg::Group => irq.group1,
                BitReg::SetEnable | BitReg::ClearEnable => irq.enabled,
                BitReg::SetPending | BitReg::ClearPending => {
                    irq.pending() || self.lr_state(irq, intid).is_pending()
                }
                BitReg::SetActive | BitReg::ClearActive => {
                    irq.active || self.lr_state(irq, intid).is_active()
                }
            };
            if set {
                word |= 1 << bit;
            }
        }
        word
    }

    /// Writes one word of a one-bit-per-INTID register. Unimplemented INTIDs
    /// are WI.
    fn write_bits(&mut self, v: usize, reg: BitReg, first: u32, value: u32) -> Kicks {
        let mut kicks = Kicks::NONE;
        for bit in 0..32 {
            let intid = first + bit;
            let one = value & (1 << bit) != 0;
            if !one && reg != BitReg::Group {
                continue;
            }
            let Some(changed) = self.update(v, intid, |irq| match reg {
                BitReg::Group => core::mem::replace(&mut irq.group1, one) != one,
                BitReg::SetEnable => !core::mem::replace(&mut irq.enabled, true),
                BitReg::ClearEnable => core::mem::replace(&mut irq.enabled, false),
                BitReg::SetPending => {
                    irq.latch = true;
                    true
                }
                BitReg::ClearPending => {
                    // A level interrupt whose line is asserted stays pending
                    // (GICv3 spec 4.1.1, GICD_ICPENDR).
                    irq.latch = false;
                    if irq.owner.is_some() {
                        irq.clear_pending = true;
                    }
                    true
                }
                BitReg::SetActive => {
                    // In an LR the hardware holds the active state; setting it
                    // there is not modelled.
                    if irq.owner.is_none() && irq.hw.is_none() {
                        irq.active = true;
                    }
                    true
                }
                BitReg::ClearActive => {
                    irq.active = false;
                    if irq.owner.is_some() {
                        irq.clear_active = true;
                    }
                    true
                }
            }) else {
                continue;
            };
            if changed {
                kicks |= self.kick_for(v, intid);
            }
        }
        kicks
    }

    fn read_priority(&self, v: usize, intid: u32) -> u8 {
        self.irq(v, intid).map_or(0, |irq| irq.priority)
    }

    fn write_priority(&mut self, v: usize, intid: u32, value: u8) -> Kicks {
        match self.update(v, intid, |irq| irq.priority = value & PRIORITY_MASK) {
            Some(()) => self.kick_for(v, intid),
            None => Kicks::NONE,
        }
    }

    /// One ICFGR word covering INTIDs `first..first+16` (bit 2n+1 = edge;
    /// GICv3 spec 12.9.8). SGIs read as edge and ignore writes.
    fn read_cfg(&self, v: usize, first: u32) -> u32 {
        let mut word = 0;
        for n in 0..16 {
            if self.irq(v, first + n).is_some_and(|irq| irq.edge) {
                word |= 2 << (2 * n);
            }
        }
        word
    }

    fn write_cfg(&mut self, v: usize, first: u32, value: u32) -> Kicks {
        let mut kicks = Kicks::NONE;
        for n in 0..16 {
            let intid = first + n;
            if intid < FIRST_PPI {
                continue;
            }
            let edge = value & (2 << (2 * n)) != 0;
            let changed = self.update(v, intid, |irq| {
                core::mem::replace(&mut irq.edge, edge) != edge
            });
            if changed == Some(true) {
                kicks |= self.kick_for(v, intid);
            }
        }
        kicks
    }
}

/// The `cap` most urgent candidates pushed so far, most urgent first
/// (insertion sort: a flush rarely sees more than a handful). A candidate is
/// kept as a 15-bit key, priority then INTID: the priority's five
/// implemented bits (the low three are zero, see [`PRIORITY_MASK`]) above
/// the 10-bit INTID. Small keys keep the array cheap to set up.
struct Best {
    keys: [u16; MAX_LRS + 1],
    len: usize,
    cap: usize,
}

impl Best {
    fn new(cap: usize) -> Self {
        Best {
            keys: [0; MAX_LRS + 1],
            len: 0,
            cap: cap.min(MAX_LRS + 1),
        }
    }

    fn pack(prio: u8, intid: u32) -> u16 {
        (u16::from(prio >> 3) << 10) | (intid & 0x3ff) as u16
    }

    fn unpack(key: u16) -> (u8, u32) {
        (((key >> 10) << 3) as u8, u32::from(key & 0x3ff))
    }

    fn push(&mut self, prio: u8, intid: u32) {
        let key = Self::pack(prio, intid);
        let mut i = self.len;
        if i < self.cap {
            self.len += 1;
        } else {
            // Full: `key` replaces the least urgent if it is more urgent.
            match self.keys.get(i.wrapping_sub(1)) {
                Some(&last) if key < last => i -= 1,
                _ => return,
            }
        }
        while let Some(&prev) = i.checked_sub(1).and_then(|j| self.keys.get(j)) {
            if prev < key {
                break;
            }
            if let Some(k) = self.keys.get_mut(i) {
                *k = prev;
            }
            i -= 1;
        }
        if let Some(k) = self.keys.get_mut(i) {
            *k = key;
        }
    }

    fn keys(&self) -> &[u16] {
        self.keys.get(..self.len).unwrap_or_default()
    }
}

/// Accepted access: a power-of-two size of 1..8 bytes, naturally aligned.
fn aligned(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size))
}

/// The CoreSight-style identification registers at 0xFFD0-0xFFFC of the
/// GICD and GICR frames (GICv3 spec 12.1.13, 12.9.27 GICD_PIDR2: ArchRev
/// \[7:4\] = 3 for GICv3; Linux checks it on every redistributor).
fn id_register(offset: u64) -> Option<u32> {
    Some(match offset {
        0xffd0 => 0x04, // PIDR4
        0xffd4..=0xffdc => 0,
        0xffe0 => 0x92, // PIDR0
        0xffe4 => 0xb4, // PIDR1
        0xffe8 => 0x3b, // PIDR2: ArchRev 3, JEDEC, DES_1
        0xffec => 0,    // PIDR3
        0xfff0 => 0x0d, // CIDR0
        0xfff4 => 0xf0, // CIDR1
        0xfff8 => 0x05, // CIDR2
        0xfffc => 0xb1, // CIDR3
        _ => return None,
    })
}

/// GICD_IIDR / GICR_IIDR (GICv3 spec 12.9.16): ProductID \[31:24\] = 0x42
/// ('B' for Bulkhead), Variant/Revision 0, Implementer \[11:0\] = 0x43B (Arm's
/// JEP106 code, as KVM's vGIC reports with its own product id 'K'). The
/// product id keeps Linux's IIDR-keyed errata workarounds from matching.
const IIDR: u32 = 0x4200_043b;
