//! Shared helpers: register offsets, a Linux-like setup, and a guest CPU
//! simulator that plays the virtual CPU interface over a set of LRs.
#![allow(dead_code)]

use bulkhead_vgic::lr::{self, State};
use bulkhead_vgic::{Flush, Kicks, VGic, GICR_FRAME_SIZE};

pub const GICD_CTLR: u64 = 0x0000;
pub const GICD_IGROUPR: u64 = 0x0080;
pub const GICD_ISENABLER: u64 = 0x0100;
pub const GICD_ICENABLER: u64 = 0x0180;
pub const GICD_ISPENDR: u64 = 0x0200;
pub const GICD_ICPENDR: u64 = 0x0280;
pub const GICD_ISACTIVER: u64 = 0x0300;
pub const GICD_ICACTIVER: u64 = 0x0380;
pub const GICD_IPRIORITYR: u64 = 0x0400;
pub const GICD_ICFGR: u64 = 0x0c00;
pub const GICD_IROUTER: u64 = 0x6000;
pub const SGI_BASE: u64 = 0x1_0000;

pub const GRP1: u64 = 1 << 1;

/// Offset of vCPU `v`'s SGI_base register `reg`.
pub fn sgi_reg(v: u16, reg: u64) -> u64 {
    u64::from(v) * GICR_FRAME_SIZE + SGI_BASE + reg
}

/// Offset of the word / byte for `intid` in a distributor register.
pub fn bit_word(base: u64, intid: u32) -> (u64, u32) {
    (base + u64::from(intid / 32) * 4, 1 << (intid % 32))
}

/// What Linux's irq-gic-v3 does at boot, roughly: all interrupts group 1,
/// group 1 enabled.
pub fn linux_like(n_vcpus: u16, nr_spis: u32) -> VGic {
    let mut g = VGic::new(n_vcpus, nr_spis);
    g.dist_write(GICD_CTLR, 4, GRP1).unwrap();
    for w in 1..=nr_spis.div_ceil(32) {
        g.dist_write(GICD_IGROUPR + u64::from(w) * 4, 4, u64::from(u32::MAX))
            .unwrap();
    }
    for v in 0..n_vcpus {
        g.redist_write(sgi_reg(v, 0x80), 4, u64::from(u32::MAX))
            .unwrap();
    }
    g
}

pub fn enable(g: &mut VGic, vcpu: u16, intid: u32) -> Kicks {
    if intid < 32 {
        g.redist_write(sgi_reg(vcpu, 0x100), 4, 1 << intid).unwrap()
    } else {
        let (off, bit) = bit_word(GICD_ISENABLER, intid);
        g.dist_write(off, 4, u64::from(bit)).unwrap()
    }
}

pub fn disable(g: &mut VGic, vcpu: u16, intid: u32) -> Kicks {
    if intid < 32 {
        g.redist_write(sgi_reg(vcpu, 0x180), 4, 1 << intid).unwrap()
    } else {
        let (off, bit) = bit_word(GICD_ICENABLER, intid);
        g.dist_write(off, 4, u64::from(bit)).unwrap()
    }
}

pub fn set_priority(g: &mut VGic, vcpu: u16, intid: u32, prio: u8) -> Kicks {
    if intid < 32 {
        g.redist_write(sgi_reg(vcpu, 0x400 + u64::from(intid)), 1, u64::from(prio))
            .unwrap()
    } else {
        g.dist_write(GICD_IPRIORITYR + u64::from(intid), 1, u64::from(prio))
            .unwrap()
    }
}

/// Routes SPI `intid` to vCPU `v` (Aff0 = v for small VMs).
pub fn route(g: &mut VGic, intid: u32, v: u64) -> Kicks {
    g.dist_write(GICD_IROUTER + 8 * u64::from(intid), 8, v)
        .unwrap()
}

pub fn make_edge(g: &mut VGic, intid: u32) {
    let off = GICD_ICFGR + u64::from(intid / 16) * 4;
    let cur = g.dist_read(off, 4).unwrap();
    g.dist_write(off, 4, cur | 2 << (2 * (intid % 16))).unwrap();
}

/// A guest CPU: its list registers as the hardware holds them.
pub struct Cpu {
    pub vcpu: u16,
    pub lrs: Vec<u64>,
    /// Flush as the hypervisor does, through `flush_with` with the
    /// hardware's empty-LR mask, instead of through the slice.
    pub like_hw: bool,
}

impl Cpu {
    pub fn new(vcpu: u16, n_lrs: usize) -> Self {
        Cpu {
            vcpu,
            lrs: vec![0; n_lrs],
            like_hw: false,
        }
    }

    /// ICH_ELRSR_EL2: an LR holds no interrupt when its state is invalid,
    /// unless it still waits for an EOI maintenance interrupt (HW=0, EOI=1).
    pub fn elrsr(&self) -> u32 {
        self.lrs
            .iter()
            .enumerate()
            .filter(|(_, &w)| {
                let l = lr::decode(w);
                l.state == State::Invalid && (l.pintid.is_some() || !l.eoi)
            })
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    pub fn flush(&mut self, g: &mut VGic) -> Flush {
        let f = if self.like_hw {
            let empty = self.elrsr();
            let cells = std::cell::Cell::from_mut(self.lrs.as_mut_slice()).as_slice_of_cells();
            g.flush_with(
                self.vcpu,
                cells.len(),
                empty,
                |i| cells[i].get(),
                |i, w| cells[i].set(w),
            )
        } else {
            g.flush(self.vcpu, &mut self.lrs)
        };
        self.checked(f)
    }

    /// The hypervisor's path for a private interrupt of the running vCPU
    /// (the virtual timer): raise and flush in one.
    pub fn raise_now(&mut self, g: &mut VGic, intid: u32) -> Flush {
        let empty = self.elrsr();
        let cells = std::cell::Cell::from_mut(self.lrs.as_mut_slice()).as_slice_of_cells();
        let f = g.raise_private_now(
            self.vcpu,
            intid,
            cells.len(),
            empty,
            |i| cells[i].get(),
            |i, w| cells[i].set(w),
        );
        self.checked(f)
    }

    fn checked(&mut self, f: Flush) -> Flush {
        self.check_no_duplicates();
        // The flag matches the LRs it describes.
        let eoi = self.valid().iter().any(|l| l.eoi && l.pintid.is_none());
        assert_eq!(f.eoi_maintenance, eoi, "eoi_maintenance vs {:x?}", self.lrs);
        f
    }

    /// The valid LRs, decoded.
    pub fn valid(&self) -> Vec<lr::Lr> {
        self.lrs
            .iter()
            .map(|&w| lr::decode(w))
            .filter(|l| l.state != State::Invalid)
            .collect()
    }

    pub fn vintids(&self) -> Vec<u32> {
        self.valid().iter().map(|l| l.vintid).collect()
    }

    pub fn check_no_duplicates(&self) {
        let mut ids = self.vintids();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "an INTID sits in two LRs: {:x?}", self.lrs);
    }

    /// Acknowledge (ICV_IAR1_EL1): the highest-priority pending LR becomes
    /// active. Returns its vINTID.
    pub fn ack(&mut self) -> Option<u32> {
        let (i, l) = self
            .lrs
            .iter()
            .enumerate()
            .map(|(i, &w)| (i, lr::decode(w)))
            .filter(|(_, l)| l.state == State::Pending)
            .min_by_key(|(_, l)| (l.priority, l.vintid))?;
        self.lrs[i] = lr::with_state(self.lrs[i], State::Active);
        Some(l.vintid)
    }

    /// Deactivate (ICV_EOIR1_EL1 with EOImode 0): active -> invalid,
    /// pending+active -> pending. Returns false if `intid` is not active.
    pub fn eoi(&mut self, intid: u32) -> bool {
        for w in self.lrs.iter_mut() {
            let l = lr::decode(*w);
            if l.vintid != intid {
                continue;
            }
            match l.state {
                State::Active => *w = lr::with_state(*w, State::Invalid),
                State::PendingActive => *w = lr::with_state(*w, State::Pending),
                _ => continue,
            }
            return true;
        }
        false
    }

    /// Run the guest until it has nothing left: flush, ack + EOI everything,
    /// call `handler` between ack and EOI. Returns the acks in order.
    pub fn drain(&mut self, g: &mut VGic, mut handler: impl FnMut(&mut VGic, u32)) -> Vec<u32> {
        let mut seen = Vec::new();
        for _ in 0..1000 {
            self.flush(g);
            let mut any = false;
            while let Some(id) = self.ack() {
                any = true;
                seen.push(id);
                handler(g, id);
                assert!(self.eoi(id));
            }
            if !any && self.valid().is_empty() {
                self.flush(g);
                if self.valid().is_empty() {
                    return seen;
                }
            }
        }
        panic!("guest never drained");
    }
}
