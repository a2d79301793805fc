//! Saving and restoring the model's state (snapshots, live migration).
mod common;

use bulkhead_vgic::lr::{self, State};
use bulkhead_vgic::{Place, Problem, StateError, VGic, GICD_SIZE, GICR_FRAME_SIZE};
use common::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const N_VCPUS: u16 = 2;
const NR_SPIS: u32 = 64;
const N_LRS: usize = 4;
const GICR_WAKER: u64 = 0x14;
const TIMER: u32 = 27;
const INTIDS: [u32; 14] = [1, 2, 20, 21, TIMER, 32, 33, 36, 37, 40, 42, 43, 46, 95];

fn cpu_like(c: &Cpu) -> Cpu {
    let mut d = Cpu::new(c.vcpu, c.lrs.len());
    d.lrs.clone_from(&c.lrs);
    d.like_hw = c.like_hw;
    d
}

/// Everything the guest and the hypervisor can observe of `g`: every
/// GICD and GICR word (and IROUTER doubleword), plus the inspection API.
fn sweep(g: &mut VGic) -> Vec<u64> {
    let mut out = Vec::new();
    for off in (0..GICD_SIZE).step_by(4) {
        out.push(g.dist_read(off, 4).unwrap());
    }
    for intid in 32..32 + u64::from(g.nr_spis()) {
        out.push(g.dist_read(GICD_IROUTER + 8 * intid, 8).unwrap());
    }
    for off in (0..g.redist_size()).step_by(4) {
        out.push(g.redist_read(off, 4).unwrap());
    }
    for v in 0..g.n_vcpus() {
        out.push(u64::from(g.has_deliverable(v)));
        for intid in 0..32 + g.nr_spis() {
            out.push(g.lr_owner(v, intid).map_or(99, u64::from));
        }
    }
    for intid in 0..32 + g.nr_spis() {
        out.push(g.spi_target(intid).map_or(99, u64::from));
    }
    out
}

/// A VM a while into its life: Linux-like setup, the timer HW-backed,
/// edges, levels, SGIs, an interrupt active in the model, LRs filled and
/// partly acknowledged, and events that arrived while interrupts sat in
/// LRs (a latched edge, an ICPENDR, a priority change).
fn scenario() -> (VGic, Vec<Cpu>) {
    let mut g = linux_like(N_VCPUS, NR_SPIS);
    g.set_hw(TIMER, TIMER);
    for v in 0..N_VCPUS {
        g.redist_write(u64::from(v) * GICR_FRAME_SIZE + GICR_WAKER, 4, 0)
            .unwrap();
        // PPI 20 edge-triggered.
        g.redist_write(sgi_reg(v, 0xc04), 4, 2 << (2 * (20 - 16)))
            .unwrap();
        for intid in [1, 2, 20, 21, TIMER] {
            enable(&mut g, v, intid);
        }
        set_priority(&mut g, v, TIMER, 0x20);
        set_priority(&mut g, v, 1, 0x40);
    }
    for intid in 32..48 {
        enable(&mut g, 0, intid);
        set_priority(&mut g, 0, intid, 0x80 + (intid % 4) as u8 * 0x10);
    }
    for intid in 32..40 {
        make_edge(&mut g, intid);
    }
    for intid in 32..36 {
        route(&mut g, intid, 0);
    }
    for intid in 36..40 {
        route(&mut g, intid, 1);
    }
    route(&mut g, 40, 1 << 31); // IRM
    route(&mut g, 41, 5); // nobody
                          // SPI 47 in group 0, both groups on.
    g.dist_write(GICD_IGROUPR + 4, 4, u64::from(!(1u32 << 15)))
        .unwrap();
    g.dist_write(GICD_CTLR, 4, GRP1 | 1).unwrap();

    g.set_line(0, TIMER, true);
    g.set_line(1, TIMER, true);
    g.sgi(1, 1 << 24 | 1); // SGI 1 to vCPU 0
    g.sgi(0, 2 << 24 | 2); // SGI 2 to vCPU 1
    for intid in 32..40 {
        g.set_pending(0, intid);
    }
    for intid in [41, 42, 43, 47] {
        g.set_line(0, intid, true);
    }
    // Level 46 pended by ISPENDR, the most urgent SPI: goes into an LR
    // through the latch.
    let (off, bit) = bit_word(GICD_ISPENDR, 46);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    set_priority(&mut g, 0, 46, 0x10);
    // 44 active in the model and pending again.
    let (off, bit) = bit_word(GICD_ISACTIVER, 44);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    g.set_pending(0, 44);
    // 45 pending but disabled.
    disable(&mut g, 0, 45);
    g.set_pending(0, 45);

    let mut cpus = vec![Cpu::new(0, N_LRS), Cpu::new(1, N_LRS)];
    cpus[1].like_hw = true;
    for c in cpus.iter_mut() {
        assert!(c.flush(&mut g).underflow);
    }
    let acked: Vec<u32> = (0..3).filter_map(|_| cpus[0].ack()).collect();
    assert_eq!(acked, [46, TIMER, 1]);
    assert_eq!(cpus[1].ack(), Some(2));
    for c in cpus.iter_mut() {
        c.flush(&mut g);
    }
    // While in LRs: ICACTIVER on active 46, an edge on active SGI 1, and
    // ICPENDR plus a new priority on pending 32.
    assert_eq!(cpus[0].vintids(), [46, TIMER, 1, 32]);
    let (off, bit) = bit_word(GICD_ICACTIVER, 46);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    g.set_pending(0, 1);
    let (off, bit) = bit_word(GICD_ICPENDR, 32);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    set_priority(&mut g, 0, 32, 0x08);
    assert_eq!(g.bookkeeping_mismatch(), None);
    assert!(cpus.iter().all(|c| !c.valid().is_empty()));
    (g, cpus)
}

/// One step of plausible VM traffic, the same for the same `rng` and state.
/// Returns what it observed: kicks, flush results, reads, LR contents.
fn step(rng: &mut XorShift, g: &mut VGic, cpus: &mut [Cpu]) -> Vec<u64> {
    let v = rng.below(u64::from(g.n_vcpus())) as u16;
    let intid = rng.pick(&INTIDS);
    let mut out = Vec::new();
    let kicks = |out: &mut Vec<u64>, k: bulkhead_vgic::Kicks| out.push(u64::from(k.0));
    let flushed = |out: &mut Vec<u64>, f: bulkhead_vgic::Flush| {
        out.extend([
            u64::from(f.underflow),
            u64::from(f.eoi_maintenance),
            u64::from(f.kicks.0),
            u64::from(f.injected),
        ])
    };
    match rng.below(20) {
        0 => {
            let sgi = rng.pick(&[1u64, 2, 5]);
            kicks(&mut out, g.sgi(v, sgi << 24 | rng.below(4)));
        }
        1 => kicks(&mut out, g.set_pending(v, intid)),
        2 | 3 => {
            let level = rng.below(2) == 0;
            let id = rng.pick(&[21, 42, 43, 46, 47, 95]);
            kicks(&mut out, g.set_line(v, id, level));
        }
        4 => {
            let regs = [
                GICD_IGROUPR,
                GICD_ISENABLER,
                GICD_ICENABLER,
                GICD_ISPENDR,
                GICD_ICPENDR,
                GICD_ISACTIVER,
                GICD_ICACTIVER,
            ];
            let reg = rng.pick(&regs);
            let word = 1 + rng.below(2);
            let mut value = 1u64 << rng.below(32);
            if reg == GICD_IGROUPR {
                value = u64::from(u32::MAX) ^ (value * rng.below(2));
            }
            kicks(&mut out, g.dist_write(reg + 4 * word, 4, value).unwrap());
        }
        5 => {
            let reg = rng.pick(&[0x100u64, 0x180, 0x200, 0x280, 0x300, 0x380]);
            let k = g.redist_write(sgi_reg(v, reg), 4, 1 << (intid % 32));
            kicks(&mut out, k.unwrap());
        }
        6 => {
            let prio = rng.pick(&[0x00u8, 0x20, 0x80, 0xa7, 0xf8]);
            kicks(&mut out, set_priority(g, v, intid, prio));
        }
        7 => {
            let id = 32 + rng.below(u64::from(g.nr_spis())) as u32;
            kicks(&mut out, route(g, id, rng.pick(&[0, 1, 5, 1 << 31])));
        }
        8 => {
            let ctlr = rng.pick(&[GRP1, GRP1 | 1, GRP1, 0]);
            kicks(&mut out, g.dist_write(GICD_CTLR, 4, ctlr).unwrap());
        }
        9 => {
            let off = u64::from(v) * GICR_FRAME_SIZE + GICR_WAKER;
            let k = g.redist_write(off, 4, rng.pick(&[0, 2]));
            kicks(&mut out, k.unwrap());
        }
        10 => {
            let id = rng.pick(&[36u32, 42, 46]);
            let off = GICD_ICFGR + u64::from(id / 16) * 4;
            let cur = g.dist_read(off, 4).unwrap();
            let k = g.dist_write(off, 4, cur ^ 2 << (2 * (id % 16)));
            kicks(&mut out, k.unwrap());
        }
        11..=13 => {
            let c = &mut cpus[usize::from(v)];
            flushed(&mut out, c.flush(g));
        }
        14 => {
            // The timer fires again once the guest is done with it.
            let c = &mut cpus[usize::from(v)];
            let id = rng.pick(&[TIMER, 21]);
            if !c.vintids().contains(&id) {
                flushed(&mut out, c.raise_now(g, id));
            }
        }
        15 | 16 => {
            let c = &mut cpus[usize::from(v)];
            out.push(c.ack().map_or(0, u64::from));
        }
        17 | 18 => {
            let c = &mut cpus[usize::from(v)];
            let active: Vec<u32> = c
                .valid()
                .iter()
                .filter(|l| l.state.is_active())
                .map(|l| l.vintid)
                .collect();
            if !active.is_empty() {
                let id = rng.pick(&active);
                out.push(u64::from(c.eoi(id)));
            }
        }
        _ => {
            let off = rng.pick(&[0x0u64, 0x104, 0x204, 0x304, 0x420, 0xc08, 0x6100]);
            out.push(g.dist_read(off, 4).unwrap());
            let roff = sgi_reg(v, rng.pick(&[0x100u64, 0x200, 0x300, 0x41c]));
            out.push(g.redist_read(roff, 4).unwrap());
        }
    }
    for c in cpus.iter() {
        out.extend(&c.lrs);
    }
    out
}

fn restored(bytes: &[u8]) -> VGic {
    let mut g = VGic::new(N_VCPUS, NR_SPIS);
    if let Err(e) = g.restore_state(bytes) {
        panic!("restore refused: {e}");
    }
    g
}

#[test]
fn restored_model_behaves_like_the_original() {
    let (mut a, mut cpus_a) = scenario();
    let saved = a.save_state();
    assert_eq!(saved[0], 1, "format version");
    let mut b = restored(&saved);
    assert_eq!(b.save_state(), saved);
    assert_eq!(b.bookkeeping_mismatch(), None);
    assert_eq!(sweep(&mut a), sweep(&mut b));
    // The hardware LRs travel with the vCPUs.
    let mut cpus_b: Vec<Cpu> = cpus_a.iter().map(cpu_like).collect();

    let mut rng_a = XorShift(0x1234_5678_9abc_def1);
    let mut rng_b = XorShift(0x1234_5678_9abc_def1);
    for n in 0..4000 {
        let got_a = step(&mut rng_a, &mut a, &mut cpus_a);
        let got_b = step(&mut rng_b, &mut b, &mut cpus_b);
        assert_eq!(got_a, got_b, "step {n}");
        assert_eq!(a.save_state(), b.save_state(), "step {n}");
        if n % 1000 == 999 {
            assert_eq!(sweep(&mut a), sweep(&mut b), "step {n}");
        }
    }
    assert_eq!(b.bookkeeping_mismatch(), None);
}

#[test]
fn every_reachable_state_restores_exactly() {
    let mut lrs_in_use = 0;
    for seed in 1..=6u64 {
        let (mut g, mut cpus) = scenario();
        if seed % 2 == 0 {
            // A HW mapping declared late (the rearm path then meets an
            // LR installed without HW).
            g.set_hw(21, 21);
        }
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for n in 0..3000 {
            step(&mut rng, &mut g, &mut cpus);
            let bytes = g.save_state();
            let mut h = VGic::new(N_VCPUS, NR_SPIS);
            if let Err(e) = h.restore_state(&bytes) {
                panic!("seed {seed} step {n}: {e}");
            }
            assert_eq!(h.save_state(), bytes, "seed {seed} step {n}");
            assert_eq!(h.bookkeeping_mismatch(), None, "seed {seed} step {n}");
            lrs_in_use += (0..N_VCPUS)
                .flat_map(|v| (0..128).map(move |i| (v, i)))
                .filter(|&(v, i)| h.lr_owner(v, i).is_some())
                .count();
            // Carry on with the restored copy from time to time.
            if n % 97 == 0 {
                g = h;
            }
        }
    }
    assert!(lrs_in_use > 10_000, "LRs hardly used: {lrs_in_use}");
}

#[test]
fn another_shape_is_refused() {
    let (g, _) = scenario();
    let bytes = g.save_state();
    for (n, nr) in [(1, 64), (3, 64), (2, 32), (2, 96)] {
        let mut other = VGic::new(n, nr);
        let before = other.save_state();
        let err = other.restore_state(&bytes).unwrap_err();
        assert_eq!(
            err,
            StateError::Shape {
                n_vcpus: 2,
                nr_spis: 64,
                vm_vcpus: n,
                vm_spis: nr,
            }
        );
        assert_eq!(other.save_state(), before);
    }
    let err = VGic::new(1, 64).restore_state(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vGIC state for 2 vCPUs and 64 SPIs, this VM has 1 and 64"
    );
    let mut v2 = bytes.clone();
    v2[0] = 2;
    let mut g = VGic::new(N_VCPUS, NR_SPIS);
    assert_eq!(g.restore_state(&v2), Err(StateError::Version(2)));
    let mut lrs = bytes.clone();
    lrs[7] = 4;
    assert_eq!(g.restore_state(&lrs), Err(StateError::ListRegisters(4)));
}

#[test]
fn truncated_or_overlong_input_is_refused_and_changes_nothing() {
    let (g, _) = scenario();
    let bytes = g.save_state();
    let mut target = linux_like(N_VCPUS, NR_SPIS);
    enable(&mut target, 0, 33);
    target.set_pending(0, 33);
    let mut cpu = Cpu::new(0, N_LRS);
    cpu.flush(&mut target);
    let before = target.save_state();
    for len in 0..bytes.len() {
        assert_eq!(
            target.restore_state(&bytes[..len]),
            Err(StateError::Truncated),
            "length {len}"
        );
    }
    let mut long = bytes.clone();
    long.extend([0, 0, 0]);
    assert_eq!(target.restore_state(&long), Err(StateError::Trailing(3)));
    assert_eq!(target.save_state(), before);
    assert_eq!(StateError::Truncated.to_string(), "vGIC state truncated");
}

// Offsets in the encoding of a 2-vCPU, 64-SPI vGIC (see src/state.rs).
const CTLR_AT: usize = 8;
const BANKS_AT: usize = 12;
const IRQ: usize = 23;
const SPIS_AT: usize = BANKS_AT + 64 * IRQ;
const SLOTS_AT: usize = SPIS_AT + 64 * IRQ;

fn private_at(v: usize, intid: usize) -> usize {
    BANKS_AT + (v * 32 + intid) * IRQ
}

fn spi_at(intid: usize) -> usize {
    SPIS_AT + (intid - 32) * IRQ
}

fn slot_at(v: usize, i: usize) -> usize {
    SLOTS_AT + (v * 16 + i) * 8
}

fn refused(bytes: &[u8]) -> StateError {
    let mut g = VGic::new(N_VCPUS, NR_SPIS);
    let before = g.save_state();
    let err = g.restore_state(bytes).unwrap_err();
    assert_eq!(g.save_state(), before);
    err
}

#[test]
fn inconsistent_fields_are_named() {
    let mut g = linux_like(N_VCPUS, NR_SPIS);
    g.set_hw(TIMER, TIMER);
    enable(&mut g, 0, 33);
    make_edge(&mut g, 33);
    g.set_pending(0, 33);
    let mut cpu = Cpu::new(0, N_LRS);
    cpu.flush(&mut g);
    let base = g.save_state();
    assert_eq!(base.len(), SLOTS_AT + 2 * 16 * 8);
    restored(&base);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        refused(&b)
    };
    let bad = |at, problem| StateError::Invalid { at, problem };

    let e = edit(&|b| b[CTLR_AT] = 2);
    assert_eq!(e, bad(Place::Distributor, Problem::NotBool(2)));
    assert_eq!(e.to_string(), "GICD_CTLR: flag byte 2, not 0 or 1");

    let e = edit(&|b| b[spi_at(40) + 10..spi_at(40) + 12].copy_from_slice(&[1, 5]));
    assert_eq!(e.to_string(), "SPI 40: owner 5 out of range");

    let e = edit(&|b| b[spi_at(40) + 10..spi_at(40) + 12].copy_from_slice(&[1, 1]));
    assert_eq!(e, bad(Place::Spi(40), Problem::NotInLr(1)));

    let e = edit(&|b| b[private_at(1, 20) + 10..private_at(1, 20) + 12].copy_from_slice(&[1, 0]));
    assert_eq!(
        e,
        bad(
            Place::Private { vcpu: 1, intid: 20 },
            Problem::OwnerNotBank(0)
        )
    );

    // SPI 33 sits in LR 0 of vCPU 0: it cannot be active in the model too.
    assert_eq!(base[spi_at(33) + 10..spi_at(33) + 12], [1, 0]);
    assert_eq!(base[slot_at(0, 0)], 1);
    let e = edit(&|b| b[spi_at(33) + 6] = 1);
    assert_eq!(e, bad(Place::Spi(33), Problem::ActiveInLr));
    // ... nor lose its owner while the slot holds it.
    let e = edit(&|b| b[spi_at(33) + 10..spi_at(33) + 12].copy_from_slice(&[0, 0]));
    let lr0 = Place::Lr { vcpu: 0, index: 0 };
    assert_eq!(e, bad(lr0, Problem::NotOwner(33)));
    // ... nor sit in two slots.
    let e = edit(&|b| b.copy_within(slot_at(0, 0)..slot_at(0, 0) + 8, slot_at(0, 3)));
    assert_eq!(
        e,
        bad(Place::Lr { vcpu: 0, index: 3 }, Problem::Duplicate(33))
    );
    // ... nor in vCPU 1's slots.
    let e = edit(&|b| b.copy_within(slot_at(0, 0)..slot_at(0, 0) + 8, slot_at(1, 0)));
    assert_eq!(
        e,
        bad(Place::Lr { vcpu: 1, index: 0 }, Problem::NotOwner(33))
    );
    let e = edit(&|b| b[slot_at(0, 0) + 6] = 0);
    assert_eq!(e, bad(lr0, Problem::State(0)));
    let e = edit(&|b| b[slot_at(0, 0) + 1] = 200);
    assert_eq!(e, bad(lr0, Problem::Intid(200)));
    let e = edit(&|b| b[slot_at(0, 5) + 2] = 1);
    let lr5 = Place::Lr { vcpu: 0, index: 5 };
    assert_eq!(e, bad(lr5, Problem::NoneWithValue));

    let e = edit(&|b| b[spi_at(40)] = 0x81);
    assert_eq!(e, bad(Place::Spi(40), Problem::Priority(0x81)));
    let e = edit(&|b| b[spi_at(40) + 15 + 3] = 1);
    assert_eq!(e, bad(Place::Spi(40), Problem::Route(1 << 24)));
    let e = edit(&|b| b[spi_at(40) + 7] = 1);
    assert_eq!(e, bad(Place::Spi(40), Problem::FlagsWithoutLr));
    let e = edit(&|b| b[spi_at(40) + 12..spi_at(40) + 15].copy_from_slice(&[1, 0xfc, 3]));
    assert_eq!(e, bad(Place::Spi(40), Problem::Hw(1020)));
    let e = edit(&|b| b[private_at(0, 3) + 3] = 0);
    let sgi3 = Place::Private { vcpu: 0, intid: 3 };
    assert_eq!(e, bad(sgi3, Problem::Sgi));
    assert_eq!(
        e.to_string(),
        "SGI 3 of vCPU 0: SGI that is level-sensitive, has a line or is HW"
    );
    let e = edit(&|b| b[private_at(1, 27) + 12..private_at(1, 27) + 15].fill(0));
    let ppi = Place::Private { vcpu: 1, intid: 27 };
    assert_eq!(e, bad(ppi, Problem::HwMismatch));
    assert_eq!(
        e.to_string(),
        "PPI 27 of vCPU 1: HW mapping differs from vCPU 0's"
    );
}

/// Raw traffic on a restored model: whatever it holds, nothing may panic.
fn poke(g: &mut VGic, rng: &mut XorShift, lrs: &mut [[u64; N_LRS]; 2]) {
    for _ in 0..40 {
        let v = rng.below(3) as u16;
        let value = rng.next();
        match rng.below(8) {
            0 => {
                let _ = g.dist_read(rng.below(GICD_SIZE) & !3, 4);
            }
            1 => {
                let _ = g.dist_write(rng.below(0x1000) & !3, 4, value);
            }
            2 => {
                let _ = g.redist_read(rng.below(g.redist_size()) & !3, 4);
            }
            3 => {
                let off = sgi_reg(v % N_VCPUS, rng.below(0x1000) & !3);
                let _ = g.redist_write(off, 4, value);
            }
            4 => {
                let _ = g.set_line(v, rng.pick(&INTIDS), value & 1 != 0);
                let _ = g.sgi(v, value);
            }
            5 => {
                // The guest rewrites LR states behind the model's back.
                let l = &mut lrs[usize::from(v % N_VCPUS)];
                let i = rng.below(N_LRS as u64) as usize;
                l[i] = lr::with_state(l[i], State::from_bits(value));
            }
            6 => {
                let l = &mut lrs[usize::from(v % N_VCPUS)];
                let cells = std::cell::Cell::from_mut(l.as_mut_slice()).as_slice_of_cells();
                let _ = g.raise_private_now(
                    v,
                    TIMER,
                    N_LRS,
                    value as u32,
                    |i| cells[i].get(),
                    |i, w| cells[i].set(w),
                );
            }
            _ => {
                let _ = g.flush(v, &mut lrs[usize::from(v % N_VCPUS)]);
            }
        }
        let _ = g.has_deliverable(v);
    }
}

#[test]
fn corrupted_state_is_refused_or_harmless() {
    let (g, cpus) = scenario();
    let base = g.save_state();
    let lrs0: [[u64; N_LRS]; 2] = [0, 1].map(|v| cpus[v].lrs.clone().try_into().unwrap());
    let mut rng = XorShift(0xdead_beef_cafe_f00d);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len() as u64) as usize;
            let flip = match rng.below(3) {
                0 => 1,
                1 => 1 << rng.below(8),
                _ => 1 + rng.below(255) as u8,
            };
            bytes[at] ^= flip;
        }
        let mut h = VGic::new(N_VCPUS, NR_SPIS);
        match h.restore_state(&bytes) {
            Ok(()) => {
                accepted += 1;
                // Canonical: what was accepted is what it saves.
                assert_eq!(h.save_state(), bytes);
                assert_eq!(h.bookkeeping_mismatch(), None);
                let mut lrs = lrs0;
                poke(&mut h, &mut rng, &mut lrs);
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
                assert_eq!(h.save_state(), VGic::new(N_VCPUS, NR_SPIS).save_state());
            }
        }
    }
    assert!(
        accepted > 1000 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}

/// `used` and `eoi_lrs` are rebuilt from the slots on restore, so they
/// must always agree with them, also on the timer's rearm shortcut when the
/// interrupt in LR 0 went in before it was declared HW.
#[test]
fn late_hw_mapping_keeps_eoi_bookkeeping_exact() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, TIMER);
    g.set_line(0, TIMER, true);
    let mut cpu = Cpu::new(0, N_LRS);
    assert!(cpu.flush(&mut g).eoi_maintenance, "level, no HW: EOI bit");
    g.set_hw(TIMER, TIMER);
    cpu.lrs[0] = 0;
    let cells = std::cell::Cell::from_mut(cpu.lrs.as_mut_slice()).as_slice_of_cells();
    let f = g.raise_private_now(
        0,
        TIMER,
        N_LRS,
        0xf,
        |i| cells[i].get(),
        |i, w| cells[i].set(w),
    );
    assert_eq!(f.injected, 1);
    assert!(!f.eoi_maintenance);
    assert_eq!(g.bookkeeping_mismatch(), None);
    let f = g.flush(0, &mut cpu.lrs);
    assert!(!f.eoi_maintenance, "no LR has the EOI bit");
    let mut h = VGic::new(1, 32);
    h.restore_state(&g.save_state()).unwrap();
    assert_eq!(h.save_state(), g.save_state());
}
