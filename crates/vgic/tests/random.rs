//! A randomized run (deterministic LCG) mixing edges, level lines, HW
//! interrupts, enables, routing, priorities and guest acks/EOIs over 4 LRs
//! per vCPU, checking that no interrupt is ever lost or delivered twice.
mod common;

use std::collections::HashMap;

use bulkhead_vgic::{Kicks, VGic};
use common::*;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u32) as usize]
    }
}

const N_VCPUS: u16 = 2;
const SEEDS: u64 = 40;
const N_LRS: usize = 4;
const EDGE_PRIVATE: [u32; 3] = [1, 2, 20];
const LEVEL_PRIVATE: [u32; 1] = [21];
const HW_PPI: u32 = 27;
const EDGE_SPIS: [u32; 6] = [32, 33, 34, 35, 36, 37];
const LEVEL_SPIS: [u32; 4] = [40, 41, 42, 43];

/// (bank, INTID): bank is the vCPU for SGIs/PPIs, `u16::MAX` for SPIs.
type Key = (u16, u32);

fn key(vcpu: u16, intid: u32) -> Key {
    if intid < 32 {
        (vcpu, intid)
    } else {
        (u16::MAX, intid)
    }
}

fn is_level(intid: u32) -> bool {
    LEVEL_PRIVATE.contains(&intid) || LEVEL_SPIS.contains(&intid)
}

struct World {
    g: VGic,
    cpus: Vec<Cpu>,
    /// Edge (and HW) interrupts raised and not yet acknowledged.
    owed: HashMap<Key, bool>,
    /// Level lines as the devices drive them.
    lines: HashMap<Key, bool>,
    /// The physical timer PPI is active at the GIC (raised, not yet
    /// deactivated by the guest through the HW LR).
    phys_active: Vec<bool>,
    /// Interrupts each guest CPU has acknowledged and not yet EOI'd.
    in_service: Vec<Vec<u32>>,
    acks: u64,
    underflows: u64,
}

impl World {
    fn new() -> Self {
        let mut g = linux_like(N_VCPUS, 32);
        g.set_hw(HW_PPI, HW_PPI);
        for v in 0..N_VCPUS {
            // PPI 20 edge-triggered (ICFGR1 covers INTIDs 16-31).
            g.redist_write(sgi_reg(v, 0xc04), 4, 2 << (2 * (20 - 16)))
                .unwrap();
        }
        for i in EDGE_SPIS {
            make_edge(&mut g, i);
        }
        World {
            g,
            cpus: (0..N_VCPUS).map(|v| Cpu::new(v, N_LRS)).collect(),
            owed: HashMap::new(),
            lines: HashMap::new(),
            phys_active: vec![false; N_VCPUS as usize],
            in_service: vec![Vec::new(); N_VCPUS as usize],
            acks: 0,
            underflows: 0,
        }
    }

    fn all_intids() -> Vec<u32> {
        let mut v: Vec<u32> = EDGE_PRIVATE.to_vec();
        v.extend(LEVEL_PRIVATE);
        v.push(HW_PPI);
        v.extend(EDGE_SPIS);
        v.extend(LEVEL_SPIS);
        v
    }

    /// The hypervisor honours kicks at once: the kicked vCPUs exit and flush
    /// before their guests run another instruction. (An edge is effective
    /// when its vCPU flushes; with a slow kick the guest may ack a pending LR
    /// first and then see the edge as a second interrupt, as on hardware
    /// when the edge comes after the acknowledge.)
    fn kick(&mut self, k: Kicks) {
        for v in k.iter() {
            assert!(v < N_VCPUS, "kick names an absent vCPU: {k:?}");
            self.flush(v);
        }
    }

    fn flush(&mut self, v: u16) {
        let f = self.cpus[v as usize].flush(&mut self.g);
        if f.underflow {
            self.underflows += 1;
        }
        // An SPI never sits in two vCPUs' LRs.
        let mut spis: Vec<u32> = self
            .cpus
            .iter()
            .flat_map(|c| c.vintids())
            .filter(|&i| i >= 32)
            .collect();
        let n = spis.len();
        spis.sort();
        spis.dedup();
        assert_eq!(spis.len(), n, "SPI in two vCPUs' LRs");
        self.kick(f.kicks);
    }

    fn ack(&mut self, v: u16) {
        let Some(id) = self.cpus[v as usize].ack() else {
            return;
        };
        self.acks += 1;
        let k = key(v, id);
        if is_level(id) {
            assert!(
                self.lines.get(&k).copied().unwrap_or(false),
                "level {id} delivered on vCPU {v} with its line low"
            );
        } else {
            assert!(
                self.owed.insert(k, false).unwrap_or(false),
                "INTID {id} delivered on vCPU {v} twice (or never raised)"
            );
        }
        self.in_service[v as usize].push(id);
    }

    /// The guest's handler for `id` on `v`, then its EOI.
    fn eoi(&mut self, v: u16, idx: usize, quiet_device: bool) {
        let id = self.in_service[v as usize].remove(idx);
        if is_level(id) && quiet_device {
            self.lines.insert(key(v, id), false);
            let k = self.g.set_line(v, id, false);
            self.kick(k);
        }
        assert!(self.cpus[v as usize].eoi(id), "EOI of {id} not active");
        if id == HW_PPI {
            // HW=1: the guest's deactivation deactivates the physical PPI.
            self.phys_active[v as usize] = false;
        }
    }

    fn step(&mut self, rng: &mut Lcg) {
        let v = rng.below(u32::from(N_VCPUS)) as u16;
        match rng.below(100) {
            0..=14 => {
                let id = if rng.below(2) == 0 {
                    rng.pick(&EDGE_PRIVATE)
                } else {
                    rng.pick(&EDGE_SPIS)
                };
                if id < 16 {
                    // An SGI sent by the other vCPU.
                    let sender = (v + 1) % N_VCPUS;
                    let k = self.g.sgi(sender, u64::from(id) << 24 | 1 << v);
                    self.kick(k);
                } else if rng.below(4) == 0 {
                    // The guest itself pends it through GICD/GICR_ISPENDR.
                    let k = if id < 32 {
                        self.g.redist_write(sgi_reg(v, 0x200), 4, 1 << id)
                    } else {
                        let (off, bit) = bit_word(GICD_ISPENDR, id);
                        self.g.dist_write(off, 4, u64::from(bit))
                    };
                    self.kick(k.unwrap());
                } else {
                    let k = self.g.set_pending(v, id);
                    self.kick(k);
                }
                self.owed.insert(key(v, id), true);
            }
            15..=22 => {
                let id = if rng.below(3) == 0 {
                    rng.pick(&LEVEL_PRIVATE)
                } else {
                    rng.pick(&LEVEL_SPIS)
                };
                self.lines.insert(key(v, id), true);
                let k = self.g.set_line(v, id, true);
                self.kick(k);
            }
            23..=26 => {
                if !self.phys_active[v as usize] {
                    self.phys_active[v as usize] = true;
                    self.owed.insert(key(v, HW_PPI), true);
                    if self.cpus[v as usize].like_hw && rng.below(2) == 0 {
                        // The hypervisor's timer path: raise and flush at once.
                        let f = self.cpus[v as usize].raise_now(&mut self.g, HW_PPI);
                        if f.underflow {
                            self.underflows += 1;
                        }
                        self.kick(f.kicks);
                    } else {
                        let k = self.g.set_line(v, HW_PPI, true);
                        self.kick(k);
                    }
                }
            }
            27..=32 => {
                let id = rng.pick(&Self::all_intids());
                let k = if rng.below(3) == 0 {
                    disable(&mut self.g, v, id)
                } else {
                    enable(&mut self.g, v, id)
                };
                self.kick(k);
            }
            33..=35 => {
                let id = rng.pick(&[EDGE_SPIS.as_slice(), LEVEL_SPIS.as_slice()].concat());
                // vCPU 0, vCPU 1, nobody, or IRM.
                let r = rng.pick(&[0u64, 1, 5, 1 << 31]);
                let k = route(&mut self.g, id, r);
                self.kick(k);
            }
            36..=38 => {
                let id = rng.pick(&Self::all_intids());
                let k = set_priority(&mut self.g, v, id, rng.pick(&[0x00, 0x40, 0x80, 0xa0]));
                self.kick(k);
            }
            39 => {
                let ctlr = rng.pick(&[GRP1, GRP1, GRP1, 0]);
                let k = self.g.dist_write(GICD_CTLR, 4, ctlr).unwrap();
                self.kick(k);
            }
            40..=59 => self.ack(v),
            60..=79 => {
                let n = self.in_service[v as usize].len();
                if n > 0 {
                    let idx = rng.below(n as u32) as usize;
                    let quiet = rng.below(4) != 0;
                    self.eoi(v, idx, quiet);
                }
            }
            _ => self.flush(v),
        }
    }

    /// Let everything through and run the guests until nothing is left.
    fn drain(&mut self) {
        self.g.dist_write(GICD_CTLR, 4, GRP1).unwrap();
        for v in 0..N_VCPUS {
            for id in Self::all_intids() {
                enable(&mut self.g, v, id);
            }
        }
        for (n, id) in EDGE_SPIS.iter().chain(LEVEL_SPIS.iter()).enumerate() {
            route(&mut self.g, *id, (n % 2) as u64);
        }
        for _round in 0..100 {
            for v in 0..N_VCPUS {
                while !self.in_service[v as usize].is_empty() {
                    self.eoi(v, 0, true);
                }
                self.flush(v);
                while self.cpus[v as usize]
                    .valid()
                    .iter()
                    .any(|l| l.state == bulkhead_vgic::lr::State::Pending)
                {
                    self.ack(v);
                    self.eoi(v, 0, true);
                }
                self.flush(v);
            }
            let idle = (0..N_VCPUS)
                .all(|v| self.cpus[v as usize].valid().is_empty() && !self.g.has_deliverable(v));
            if idle {
                let lost: Vec<_> = self.owed.iter().filter(|(_, &o)| o).collect();
                if !lost.is_empty() {
                    for v in 0..N_VCPUS {
                        eprintln!(
                            "v{v}: pend {:x?} en {:x?} act {:x?} owner {:?} lrs {:x?} phys {:?}",
                            self.g.redist_read(sgi_reg(v, 0x200), 4),
                            self.g.redist_read(sgi_reg(v, 0x100), 4),
                            self.g.redist_read(sgi_reg(v, 0x300), 4),
                            self.g.lr_owner(v, HW_PPI),
                            self.cpus[v as usize].lrs,
                            self.phys_active,
                        );
                    }
                }
                assert!(lost.is_empty(), "lost: {lost:?}");
                assert!(
                    self.lines.values().all(|&l| !l),
                    "level line never serviced"
                );
                return;
            }
        }
        panic!("never went idle; owed {:?}", self.owed);
    }
}

#[test]
fn random_mix_never_loses_or_duplicates_an_interrupt() {
    let (mut total_acks, mut underflows) = (0, 0);
    for seed in 1..=SEEDS {
        let mut rng = Lcg(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut w = World::new();
        // Odd seeds flush as the hypervisor does (flush_with, ELRSR, the
        // timer's raise-and-flush shortcut); even seeds through the slice.
        for c in w.cpus.iter_mut() {
            c.like_hw = seed % 2 == 1;
        }
        for _ in 0..5000 {
            w.step(&mut rng);
            assert_eq!(w.g.bookkeeping_mismatch(), None, "seed {seed}");
        }
        w.drain();
        total_acks += w.acks;
        underflows += w.underflows;
    }
    assert!(
        underflows > 100,
        "LR overflow must be exercised: {underflows}"
    );
    // The run must actually deliver things for the check to mean anything.
    assert!(total_acks > 10_000, "only {total_acks} deliveries");
}
