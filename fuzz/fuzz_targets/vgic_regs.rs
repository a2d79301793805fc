//! The virtual GICv3: arbitrary sequences of distributor and redistributor
//! reads and writes (any offset, any size, any value, any vCPU including
//! ones the VM does not have), SGIs, device edges and levels, VM resets and
//! list-register cycles, with a guest that acknowledges and deactivates what
//! the list registers offer.
//!
//! After every step it checks what the model promises: accesses beyond the
//! frames fail and the rest answer within their size; kicks name only
//! existing vCPUs; the flush bookkeeping agrees with a full rescan; no
//! interrupt sits in two list registers (of one vCPU, or of two for an SPI);
//! every list register is one the model filled, with its owner recorded, a
//! priority of five bits and the declared HW mapping; `eoi_maintenance`
//! matches the LRs.
//!
//! Then, unless the input asked for a chaotic guest that rewrites LR states
//! at random, it quiesces the GIC, enables everything, raises a batch of
//! edges and drains: each must be delivered exactly once, on the vCPU it is
//! routed to, and nothing else (none lost, none duplicated).
#![no_main]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use bulkhead_vgic::lr::{self, State};
use bulkhead_vgic::{Flush, Kicks, VGic, VgicError, GICD_SIZE, GICR_FRAME_SIZE, MAX_LRS};
use libfuzzer_sys::fuzz_target;

const SGI_BASE: u64 = 0x1_0000;
const GICD_CTLR: u64 = 0x0000;
const ISENABLER: u64 = 0x0100;
const ICENABLER: u64 = 0x0180;
const ICPENDR: u64 = 0x0280;
const ICACTIVER: u64 = 0x0380;
const ICFGR: u64 = 0x0c00;
const IROUTER: u64 = 0x6000;
/// Most operations taken from one input (keeps executions fast).
const MAX_OPS: usize = 256;
/// Most edges raised in the final delivery check.
const MAX_BATCH: usize = 48;

#[derive(Arbitrary, Debug)]
struct Input {
    n_vcpus: u16,
    nr_spis: u16,
    /// List registers per vCPU: 1..=MAX_LRS + 4 (those beyond MAX_LRS must
    /// stay unused).
    n_lrs: u8,
    /// `set_hw` declarations, as the hypervisor makes them at VM creation.
    hw: Vec<(u16, u16)>,
    /// The guest may write any state into any LR (no delivery check then).
    chaos: bool,
    /// Flush as the hypervisor does (`flush_with` on the LRs, with ELRSR)
    /// rather than through a slice.
    like_hw: bool,
    ops: Vec<Op>,
    /// (vCPU, INTID, route) of the edges raised in the final check.
    batch: Vec<(u8, u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    DistRead {
        offset: Off,
        size: u8,
    },
    DistWrite {
        offset: Off,
        size: u8,
        value: u64,
    },
    RedistRead {
        vcpu: u8,
        offset: Off,
        size: u8,
    },
    RedistWrite {
        vcpu: u8,
        offset: Off,
        size: u8,
        value: u64,
    },
    Sgi {
        sender: u16,
        value: u64,
    },
    SetPending {
        vcpu: u16,
        intid: u16,
    },
    SetLine {
        vcpu: u16,
        intid: u16,
        level: bool,
    },
    Flush {
        vcpu: u16,
    },
    /// The virtual timer's path: raise a private interrupt and flush at once.
    RaiseNow {
        vcpu: u16,
        intid: u16,
    },
    /// The guest on `vcpu` acknowledges its most urgent pending LR.
    Ack {
        vcpu: u8,
    },
    /// The guest on `vcpu` deactivates its `which`-th active LR.
    Eoi {
        vcpu: u8,
        which: u8,
    },
    /// Chaos mode only: LR `lr` of `vcpu` gets state `state`.
    Scribble {
        vcpu: u8,
        lr: u8,
        state: u8,
    },
    Reset,
}

/// An offset within a frame, or anywhere.
#[derive(Arbitrary, Debug)]
enum Off {
    /// Word `w` of the frame, plus a byte offset.
    Word(u16, u8),
    Any(u64),
}

impl Off {
    fn get(&self, frame: u64) -> u64 {
        match *self {
            Off::Word(w, b) => (u64::from(w) * 4 + u64::from(b % 8)) % (frame + 0x40),
            Off::Any(o) => o,
        }
    }

    /// An offset into the redistributor region: within `vcpu`'s frame (or
    /// just past it), or anywhere.
    fn redist(&self, vcpu: u8) -> u64 {
        match *self {
            Off::Word(..) => u64::from(vcpu) * GICR_FRAME_SIZE + self.get(GICR_FRAME_SIZE),
            Off::Any(o) => o,
        }
    }
}

/// (bank, INTID): the vCPU for SGIs and PPIs, `u16::MAX` for SPIs.
type Key = (u16, u32);

fn key(vcpu: u16, intid: u32) -> Key {
    if intid < 32 {
        (vcpu, intid)
    } else {
        (u16::MAX, intid)
    }
}

struct World {
    g: VGic,
    n: u16,
    nr_spis: u32,
    chaos: bool,
    like_hw: bool,
    /// The hardware list registers of every vCPU (the absent ones too).
    lrs: Vec<Vec<u64>>,
    /// The HW mapping the model was given: vINTID -> pINTID.
    hw: BTreeMap<u32, u32>,
    /// Every (vCPU, INTID) whose line was ever raised.
    raised: BTreeSet<(u16, u32)>,
}

impl World {
    fn check_kicks(&self, k: Kicks) {
        for v in k.iter() {
            assert!(v < self.n, "kick names absent vCPU {v}: {k:?}");
        }
    }

    fn valid(&self, v: u16) -> Vec<(usize, lr::Lr)> {
        self.lrs[usize::from(v)]
            .iter()
            .map(|&w| lr::decode(w))
            .enumerate()
            .filter(|(_, l)| l.state != State::Invalid)
            .collect()
    }

    /// ICH_ELRSR_EL2 of `v`: an LR holds no interrupt when its state is
    /// invalid, unless it still waits for an EOI maintenance interrupt.
    fn elrsr(&self, v: u16) -> u32 {
        self.lrs[usize::from(v)]
            .iter()
            .take(32)
            .enumerate()
            .filter(|(_, &w)| {
                let l = lr::decode(w);
                l.state == State::Invalid && (l.pintid.is_some() || !l.eoi)
            })
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// One LR cycle for `v`, as the hypervisor runs it, with its checks:
    /// through the slice (`flush`), or on the "hardware" (`flush_with`,
    /// with ELRSR), and with `raise` first raised on `v` at once
    /// (`raise_private_now`, the virtual timer's path).
    fn flush_raise(&mut self, v: u16, raise: Option<u32>) -> Flush {
        if v >= self.n {
            // No LR of an absent vCPU is touched.
            let mut scratch = vec![0x5a5a_5a5a_5a5a_5a5a_u64; 4];
            let f = match raise {
                Some(intid) => {
                    let cells = Cell::from_mut(scratch.as_mut_slice()).as_slice_of_cells();
                    self.g.raise_private_now(
                        v,
                        intid,
                        cells.len(),
                        u32::MAX,
                        |i| cells[i].get(),
                        |i, w| cells[i].set(w),
                    )
                }
                None if self.like_hw => self.g.flush_with(v, 4, 0, |_| 0, |_, _| {}),
                None => self.g.flush(v, &mut scratch),
            };
            self.check_kicks(f.kicks);
            assert_eq!(
                Flush {
                    kicks: Kicks::NONE,
                    ..f
                },
                Flush::default()
            );
            assert!(scratch.iter().all(|&w| w == 0x5a5a_5a5a_5a5a_5a5a));
            return f;
        }
        let empty = self.elrsr(v);
        let lrs = &mut self.lrs[usize::from(v)];
        let n_lrs = lrs.len();
        let f = if self.like_hw || raise.is_some() {
            let cells = Cell::from_mut(lrs.as_mut_slice()).as_slice_of_cells();
            let read = |i: usize| cells[i].get();
            let write = |i: usize, w| {
                assert!(i < n_lrs.min(MAX_LRS), "write to LR {i}");
                cells[i].set(w);
            };
            match raise {
                Some(intid) => self
                    .g
                    .raise_private_now(v, intid, n_lrs, empty, read, write),
                None => self.g.flush_with(v, n_lrs, empty, read, write),
            }
        } else {
            self.g.flush(v, lrs)
        };
        self.check_kicks(f.kicks);
        assert!(!f.kicks.contains(v), "a flush kicks its own vCPU");
        assert!(f.injected as usize <= n_lrs.min(MAX_LRS));
        let lrs = &self.lrs[usize::from(v)];
        assert!(
            lrs.iter().skip(MAX_LRS).all(|&w| w == 0),
            "LR beyond MAX_LRS used"
        );
        // A chaotic guest can revive an LR it already finished, behind the
        // model's back; what the LRs hold then says nothing of the model.
        // That includes the timer's path (`raise_private_now`), which like
        // `flush_with` relies on the hypervisor's guarantee that LRs the
        // model did not fill stay invalid, a guarantee real hardware keeps
        // (a guest cannot make an invalid LR valid) and chaos breaks.
        if self.chaos && (self.like_hw || raise.is_some()) {
            return f;
        }
        let valid = self.valid(v);
        let mut seen = BTreeSet::new();
        for (_, l) in &valid {
            assert!(seen.insert(l.vintid), "INTID {} in two LRs", l.vintid);
            assert!(l.vintid < 32 + self.nr_spis, "vINTID {}", l.vintid);
            assert_eq!(l.priority & 7, 0, "priority {:#x}", l.priority);
            assert_eq!(l.pintid, self.hw.get(&l.vintid).copied(), "{l:?}");
            let bank = if l.vintid < 32 { v } else { 0 };
            assert_eq!(self.g.lr_owner(bank, l.vintid), Some(v), "{l:?}");
        }
        let eoi = valid.iter().any(|(_, l)| l.eoi && l.pintid.is_none());
        assert_eq!(f.eoi_maintenance, eoi, "eoi_maintenance");
        if self.chaos {
            return f;
        }
        // An SPI never sits in two vCPUs' list registers.
        let mut spis = BTreeSet::new();
        for u in 0..self.n {
            for (_, l) in self.valid(u) {
                if l.vintid >= 32 {
                    assert!(spis.insert(l.vintid), "SPI {} in two vCPUs' LRs", l.vintid);
                }
            }
        }
        f
    }

    fn flush(&mut self, v: u16) -> Flush {
        self.flush_raise(v, None)
    }

    /// Flushes `first` and, promptly, every vCPU the flushes kick.
    fn flush_and_kicks(&mut self, first: Kicks) {
        let mut todo: Vec<u16> = first.iter().collect();
        let mut rounds = 0;
        while let Some(v) = todo.pop() {
            rounds += 1;
            assert!(rounds < 1000, "kicks never settle");
            let f = self.flush(v);
            todo.extend(f.kicks.iter());
        }
    }

    /// The guest acknowledges its most urgent pending LR (ICV_IAR1_EL1).
    fn ack(&mut self, v: u16) -> Option<u32> {
        let (i, l) = self
            .valid(v)
            .into_iter()
            .filter(|(_, l)| l.state == State::Pending)
            .min_by_key(|(_, l)| (l.priority, l.vintid))?;
        let w = &mut self.lrs[usize::from(v)][i];
        *w = lr::with_state(*w, State::Active);
        Some(l.vintid)
    }

    /// The guest deactivates an active LR (ICV_EOIR1_EL1 / ICV_DIR_EL1).
    fn eoi(&mut self, v: u16, which: usize) -> bool {
        let active: Vec<usize> = self
            .valid(v)
            .into_iter()
            .filter(|(_, l)| l.state.is_active())
            .map(|(i, _)| i)
            .collect();
        let Some(&i) = active.get(which % active.len().max(1)) else {
            return false;
        };
        let w = &mut self.lrs[usize::from(v)][i];
        let next = match lr::decode(*w).state {
            State::PendingActive => State::Pending,
            _ => State::Invalid,
        };
        *w = lr::with_state(*w, next);
        true
    }

    fn step(&mut self, op: &Op) {
        let n = u64::from(self.n);
        let redist = n * GICR_FRAME_SIZE;
        match *op {
            Op::DistRead { ref offset, size } => {
                let off = offset.get(GICD_SIZE);
                match self.g.dist_read(off, size) {
                    Ok(v) => {
                        assert!(off < GICD_SIZE);
                        if size < 8 {
                            assert_eq!(v >> (8 * u32::from(size)), 0, "{off:#x}/{size}");
                        }
                    }
                    Err(VgicError::OutOfRange) => assert!(off >= GICD_SIZE),
                }
            }
            Op::DistWrite {
                ref offset,
                size,
                value,
            } => {
                let off = offset.get(GICD_SIZE);
                match self.g.dist_write(off, size, value) {
                    Ok(k) => {
                        assert!(off < GICD_SIZE);
                        self.check_kicks(k);
                    }
                    Err(VgicError::OutOfRange) => assert!(off >= GICD_SIZE),
                }
            }
            Op::RedistRead {
                vcpu,
                ref offset,
                size,
            } => {
                let off = offset.redist(vcpu);
                match self.g.redist_read(off, size) {
                    Ok(v) => {
                        assert!(off < redist);
                        if size < 8 {
                            assert_eq!(v >> (8 * u32::from(size)), 0, "{off:#x}/{size}");
                        }
                    }
                    Err(VgicError::OutOfRange) => assert!(off >= redist),
                }
            }
            Op::RedistWrite {
                vcpu,
                ref offset,
                size,
                value,
            } => {
                let off = offset.redist(vcpu);
                match self.g.redist_write(off, size, value) {
                    Ok(k) => {
                        assert!(off < redist);
                        self.check_kicks(k);
                    }
                    Err(VgicError::OutOfRange) => assert!(off >= redist),
                }
            }
            Op::Sgi { sender, value } => {
                let k = self.g.sgi(sender, value);
                self.check_kicks(k);
            }
            Op::SetPending { vcpu, intid } => {
                let k = self.g.set_pending(vcpu, u32::from(intid));
                self.check_kicks(k);
            }
            Op::SetLine { vcpu, intid, level } => {
                if level {
                    self.raised.insert((vcpu, u32::from(intid)));
                }
                let k = self.g.set_line(vcpu, u32::from(intid), level);
                self.check_kicks(k);
            }
            Op::Flush { vcpu } => {
                self.flush(vcpu);
            }
            Op::RaiseNow { vcpu, intid } => {
                self.flush_raise(vcpu, Some(u32::from(intid)));
            }
            Op::Ack { vcpu } => {
                let v = u16::from(vcpu) % self.n;
                self.ack(v);
            }
            Op::Eoi { vcpu, which } => {
                let v = u16::from(vcpu) % self.n;
                self.eoi(v, usize::from(which));
            }
            Op::Scribble { vcpu, lr, state } => {
                if self.chaos {
                    let lrs = &mut self.lrs[usize::from(vcpu) % usize::from(self.n)];
                    let i = usize::from(lr) % lrs.len().min(MAX_LRS);
                    lrs[i] = lr::with_state(lrs[i], State::from_bits(u64::from(state)));
                }
            }
            Op::Reset => {
                // A VM restart: no vCPU runs again before its LR cycle, and
                // the hypervisor clears the LRs of a vCPU that starts.
                self.g.reset();
                if self.like_hw {
                    for lrs in self.lrs.iter_mut() {
                        lrs.fill(0);
                    }
                }
                for v in 0..self.n {
                    self.flush(v);
                    assert!(self.valid(v).is_empty(), "LRs survive a reset");
                    assert!(!self.g.has_deliverable(v));
                }
            }
        }
        for v in self.n..=8 {
            assert!(!self.g.has_deliverable(v));
        }
    }

    /// Writes `value` to every word of a one-bit-per-INTID register, in the
    /// distributor (SPIs) and in every redistributor (SGIs and PPIs).
    fn write_all_bits(&mut self, reg: u64, value: u32) {
        let mut kicks = Kicks::NONE;
        for w in 1..=self.nr_spis.div_ceil(32) {
            kicks |= self
                .g
                .dist_write(reg + u64::from(w) * 4, 4, u64::from(value))
                .expect("GICD");
        }
        for v in 0..self.n {
            let off = u64::from(v) * GICR_FRAME_SIZE + SGI_BASE + reg;
            kicks |= self.g.redist_write(off, 4, u64::from(value)).expect("GICR");
        }
        self.check_kicks(kicks);
        self.flush_and_kicks(kicks);
    }

    /// Nothing pending, active, enabled or in an LR; every line low; every
    /// interrupt edge-triggered.
    fn quiesce(&mut self) {
        for (v, intid) in std::mem::take(&mut self.raised) {
            let k = self.g.set_line(v, intid, false);
            self.flush_and_kicks(k);
        }
        self.write_all_bits(ICENABLER, u32::MAX);
        for round in 0.. {
            assert!(round < 50, "the vGIC never went quiet");
            self.write_all_bits(ICPENDR, u32::MAX);
            self.write_all_bits(ICACTIVER, u32::MAX);
            for v in 0..self.n {
                self.flush(v);
                while self.eoi(v, 0) {}
            }
            let quiet = (0..self.n).all(|v| {
                self.flush(v);
                self.valid(v).is_empty()
            });
            if quiet {
                break;
            }
        }
        self.write_all_bits(ICPENDR, u32::MAX);
        self.write_all_bits(ICACTIVER, u32::MAX);
        // Edge-triggered: ICFGR bit 2n+1 for every PPI and SPI.
        for w in 2..(32 + self.nr_spis).div_ceil(16) {
            self.g
                .dist_write(ICFGR + u64::from(w) * 4, 4, 0xaaaa_aaaa)
                .expect("GICD_ICFGR");
        }
        for v in 0..self.n {
            let off = u64::from(v) * GICR_FRAME_SIZE + SGI_BASE + ICFGR + 4;
            self.g
                .redist_write(off, 4, 0xaaaa_aaaa)
                .expect("GICR_ICFGR1");
        }
        for v in 0..self.n {
            self.flush(v);
            assert!(self.valid(v).is_empty());
            assert!(
                !self.g.has_deliverable(v),
                "vCPU {v} has work after quiesce"
            );
        }
    }

    /// Raises `batch` on a quiet GIC with everything enabled and checks that
    /// each edge arrives exactly once, where it is routed.
    fn deliver_exactly_once(&mut self, batch: &[(u8, u16, u8)]) {
        self.quiesce();
        let k = self.g.dist_write(GICD_CTLR, 4, 0b11).expect("GICD_CTLR");
        self.flush_and_kicks(k);
        self.write_all_bits(ISENABLER, u32::MAX);
        // Each SPI of the batch routed to a vCPU of the VM (by affinity),
        // the first time it comes up.
        let mut route = BTreeMap::new();
        let mut owed: BTreeMap<Key, (u16, u32)> = BTreeMap::new();
        for &(vcpu, intid, to) in batch.iter().take(MAX_BATCH) {
            let v = u16::from(vcpu) % self.n;
            let intid = u32::from(intid) % (32 + self.nr_spis);
            if intid >= 32 && !route.contains_key(&intid) {
                let t = u16::from(to) % self.n;
                route.insert(intid, t);
                let k = self
                    .g
                    .dist_write(
                        IROUTER + 8 * u64::from(intid),
                        8,
                        u64::from(VGic::affinity(t)),
                    )
                    .expect("GICD_IROUTER");
                self.flush_and_kicks(k);
            }
            let target = if intid < 32 { v } else { route[&intid] };
            let k = self.g.set_pending(v, intid);
            assert!(
                k.contains(target),
                "edge {intid} did not kick vCPU {target}"
            );
            self.flush_and_kicks(k);
            owed.insert(key(v, intid), (target, 0));
        }
        for _round in 0..200 {
            for v in 0..self.n {
                let f = self.flush(v);
                self.flush_and_kicks(f.kicks);
                while let Some(intid) = self.ack(v) {
                    let entry = owed
                        .get_mut(&key(v, intid))
                        .unwrap_or_else(|| panic!("INTID {intid} delivered on vCPU {v} unasked"));
                    assert_eq!(entry.0, v, "INTID {intid} delivered on the wrong vCPU");
                    entry.1 += 1;
                    assert_eq!(entry.1, 1, "INTID {intid} delivered twice on vCPU {v}");
                    assert!(self.eoi(v, 0));
                }
            }
            let idle = (0..self.n).all(|v| self.valid(v).is_empty() && !self.g.has_deliverable(v));
            if idle {
                for (k, (target, count)) in &owed {
                    assert_eq!(*count, 1, "{k:?} for vCPU {target} was lost");
                }
                return;
            }
        }
        panic!("the guests never drained: {owed:?}");
    }
}

fuzz_target!(|input: Input| {
    let g = VGic::new(input.n_vcpus, u32::from(input.nr_spis));
    let n = g.n_vcpus();
    let nr_spis = g.nr_spis();
    assert!((1..=8).contains(&n));
    assert!(nr_spis.is_multiple_of(32) || nr_spis == 988);
    let n_lrs = usize::from(input.n_lrs) % (MAX_LRS + 4) + 1;
    let mut w = World {
        g,
        n,
        nr_spis,
        chaos: input.chaos,
        like_hw: input.like_hw,
        lrs: vec![vec![0; n_lrs]; 8],
        hw: BTreeMap::new(),
        raised: BTreeSet::new(),
    };
    for &(intid, pintid) in input.hw.iter().take(8) {
        let (intid, pintid) = (u32::from(intid), u32::from(pintid));
        w.g.set_hw(intid, pintid);
        if intid >= 16 && intid < 32 + nr_spis && (16..1020).contains(&pintid) {
            w.hw.insert(intid, pintid);
        }
    }
    for (i, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        w.step(op);
        // The full rescan costs as much as many steps: after every step at
        // first, then every eighth.
        if i < 32 || i % 8 == 0 {
            assert_eq!(w.g.bookkeeping_mismatch(), None, "after {op:?}");
        }
    }
    assert_eq!(w.g.bookkeeping_mismatch(), None);
    if !w.chaos {
        w.deliver_exactly_once(&input.batch);
        assert_eq!(w.g.bookkeeping_mismatch(), None);
    }
});
