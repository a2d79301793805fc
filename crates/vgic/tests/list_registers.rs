//! The list-register cycle: sync back, fill, evict, re-sample.
mod common;

use bulkhead_vgic::lr::{self, Lr, State};
use bulkhead_vgic::{Kicks, VGic};
use common::*;

#[test]
fn lr_encoding_places_every_field() {
    let l = Lr {
        vintid: 42,
        pintid: None,
        eoi: true,
        priority: 0xa0,
        group1: true,
        state: State::Pending,
    };
    let v = lr::encode(&l);
    assert_eq!(v, 42 | 1 << 41 | 0xa0 << 48 | 1 << 60 | 1 << 62);
    assert_eq!(lr::decode(v), l);
    let hw = Lr {
        vintid: 27,
        pintid: Some(27),
        eoi: false,
        priority: 0,
        group1: false,
        state: State::PendingActive,
    };
    let v = lr::encode(&hw);
    assert_eq!(v, 27 | 27 << 32 | 1 << 61 | 3 << 62);
    assert_eq!(lr::decode(v), hw);
    assert_eq!(lr::with_state(v, State::Active) >> 62, 2);
}

#[test]
fn flush_fills_highest_priority_first_and_breaks_ties_by_intid() {
    let mut g = linux_like(1, 64);
    for (intid, prio) in [(40, 0x80), (41, 0x20), (42, 0x80), (43, 0x20), (44, 0xf0)] {
        enable(&mut g, 0, intid);
        set_priority(&mut g, 0, intid, prio);
        g.set_pending(0, intid);
    }
    let mut cpu = Cpu::new(0, 3);
    let f = cpu.flush(&mut g);
    let mut got = cpu.vintids();
    got.sort();
    assert_eq!(got, vec![40, 41, 43]);
    assert!(f.underflow);
    let order = cpu.drain(&mut g, |_, _| ());
    assert_eq!(order, vec![41, 43, 40, 42, 44]);
}

#[test]
fn edge_interrupt_is_delivered_once() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 36);
    make_edge(&mut g, 36);
    g.set_pending(0, 36);
    g.set_pending(0, 36); // two edges before delivery coalesce
    let mut cpu = Cpu::new(0, 4);
    let f = cpu.flush(&mut g);
    assert!(!f.underflow);
    assert!(!f.eoi_maintenance, "edges need no EOI maintenance");
    assert_eq!(cpu.drain(&mut g, |_, _| ()), vec![36]);
    assert!(!g.has_deliverable(0));
}

#[test]
fn level_interrupt_is_resampled_after_eoi() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 37);
    assert_eq!(g.set_line(0, 37, true), Kicks::vcpu(0));
    assert!(g.set_line(0, 37, true).is_empty(), "no change, no kick");
    let mut cpu = Cpu::new(0, 4);
    let f = cpu.flush(&mut g);
    assert!(f.eoi_maintenance);
    assert!(cpu.valid()[0].eoi);
    // The guest handles it but the device still asserts the line.
    assert_eq!(cpu.ack(), Some(37));
    assert!(cpu.eoi(37));
    cpu.flush(&mut g);
    assert_eq!(cpu.vintids(), vec![37], "still high: pending again");
    // This time the handler quiets the device.
    assert_eq!(cpu.ack(), Some(37));
    g.set_line(0, 37, false);
    assert!(cpu.eoi(37));
    let f = cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
    assert!(!f.eoi_maintenance);
    assert!(!g.has_deliverable(0));
}

#[test]
fn level_line_dropping_withdraws_a_pending_lr() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 38);
    g.set_line(0, 38, true);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert_eq!(cpu.vintids(), vec![38]);
    g.set_line(0, 38, false);
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
}

#[test]
fn overflow_delivers_everything_exactly_once() {
    let mut g = linux_like(1, 64);
    let ids: Vec<u32> = (32..44).collect();
    for &i in &ids {
        enable(&mut g, 0, i);
        set_priority(&mut g, 0, i, 0x80);
        make_edge(&mut g, i);
        g.set_pending(0, i);
    }
    let mut cpu = Cpu::new(0, 4);
    let f = cpu.flush(&mut g);
    assert!(f.underflow, "12 pending, 4 LRs");
    assert_eq!(cpu.valid().len(), 4);
    // The guest finishes two; the next flush refills.
    for _ in 0..2 {
        let id = cpu.ack().unwrap();
        assert!(cpu.eoi(id));
    }
    let f = cpu.flush(&mut g);
    assert!(f.underflow);
    assert_eq!(cpu.valid().len(), 4);
    let mut all = vec![32, 33];
    all.extend(cpu.drain(&mut g, |_, _| ()));
    all.sort();
    assert_eq!(all, ids);
    let f = cpu.flush(&mut g);
    assert!(!f.underflow);
}

#[test]
fn higher_priority_evicts_a_lower_priority_pending_lr() {
    let mut g = linux_like(1, 32);
    for i in 32..36 {
        enable(&mut g, 0, i);
        set_priority(&mut g, 0, i, 0xc0);
        g.set_pending(0, i);
    }
    let mut cpu = Cpu::new(0, 2);
    cpu.flush(&mut g);
    assert_eq!(cpu.vintids(), vec![32, 33]);
    enable(&mut g, 0, 50);
    set_priority(&mut g, 0, 50, 0x40);
    g.set_pending(0, 50);
    let f = cpu.flush(&mut g);
    assert!(f.underflow);
    let mut got = cpu.vintids();
    got.sort();
    assert_eq!(
        got,
        vec![32, 50],
        "the least urgent (highest INTID) went back"
    );
    assert_eq!(
        g.dist_read(GICD_ISPENDR + 4, 4).unwrap() & (1 << 1),
        1 << 1,
        "33 still pending"
    );
    let mut order = cpu.drain(&mut g, |_, _| ());
    assert_eq!(order.remove(0), 50);
    order.sort();
    assert_eq!(order, vec![32, 33, 34, 35]);
}

#[test]
fn equal_priority_does_not_evict_and_active_lrs_are_never_evicted() {
    let mut g = linux_like(1, 32);
    for i in [32, 33] {
        enable(&mut g, 0, i);
        set_priority(&mut g, 0, i, 0x80);
        g.set_pending(0, i);
    }
    let mut cpu = Cpu::new(0, 2);
    cpu.flush(&mut g);
    assert_eq!(cpu.ack(), Some(32)); // 32 active
    enable(&mut g, 0, 40);
    set_priority(&mut g, 0, 40, 0x80);
    g.set_pending(0, 40);
    let f = cpu.flush(&mut g);
    assert!(f.underflow);
    assert_eq!(cpu.vintids(), vec![32, 33], "same priority: no eviction");
    enable(&mut g, 0, 41);
    set_priority(&mut g, 0, 41, 0x00);
    g.set_pending(0, 41);
    cpu.flush(&mut g);
    let valid = cpu.valid();
    assert_eq!(valid[0].vintid, 32);
    assert_eq!(valid[0].state, State::Active, "active LR kept");
    assert_eq!(valid[1].vintid, 41);
}

#[test]
fn edge_while_active_in_an_lr_becomes_pending_and_active() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 39);
    make_edge(&mut g, 39);
    g.set_pending(0, 39);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert_eq!(cpu.ack(), Some(39));
    let k = g.set_pending(0, 39);
    assert!(k.contains(0));
    cpu.flush(&mut g);
    assert_eq!(cpu.valid().len(), 1, "not in a second LR");
    assert_eq!(cpu.valid()[0].state, State::PendingActive);
    assert!(cpu.eoi(39));
    assert_eq!(cpu.ack(), Some(39), "delivered a second time");
    assert!(cpu.eoi(39));
    assert!(cpu.drain(&mut g, |_, _| ()).is_empty(), "and no third time");
}

#[test]
fn edge_that_arrives_while_active_and_is_finished_before_flush_is_not_lost() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 39);
    make_edge(&mut g, 39);
    g.set_pending(0, 39);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert_eq!(cpu.ack(), Some(39));
    g.set_pending(0, 39);
    assert!(cpu.eoi(39)); // finished before the hypervisor synced
    assert_eq!(cpu.drain(&mut g, |_, _| ()), vec![39]);
}

#[test]
fn hw_ppi_goes_in_an_lr_with_the_hw_bit_and_pintid() {
    let mut g = linux_like(2, 32);
    g.set_hw(27, 27);
    enable(&mut g, 1, 27);
    g.set_line(1, 27, true);
    let mut cpu = Cpu::new(1, 4);
    let f = cpu.flush(&mut g);
    let l = cpu.valid()[0];
    assert_eq!(l.vintid, 27);
    assert_eq!(l.pintid, Some(27));
    assert!(!l.eoi, "the hardware deactivates it, no maintenance");
    assert!(!f.eoi_maintenance);
    assert_eq!(cpu.lrs[0] >> 61 & 1, 1, "HW bit");
    assert_eq!(cpu.ack(), Some(27));
    cpu.flush(&mut g);
    assert_eq!(cpu.valid()[0].state, State::Active, "still the guest's");
    assert!(cpu.eoi(27));
    cpu.flush(&mut g);
    assert!(
        cpu.valid().is_empty(),
        "not re-delivered until the timer fires again"
    );
    assert!(!g.has_deliverable(1));
    // The physical timer fires again: the hypervisor re-raises the line.
    assert!(g.set_line(1, 27, true).contains(1));
    assert_eq!(cpu.drain(&mut g, |_, _| ()), vec![27]);
}

#[test]
fn hw_mapping_survives_reset_and_sgis_cannot_be_hw() {
    let mut g = VGic::new(1, 32);
    g.set_hw(27, 27);
    g.set_hw(3, 3);
    g.reset();
    let mut g2 = g;
    g2.dist_write(GICD_CTLR, 4, GRP1).unwrap();
    g2.redist_write(sgi_reg(0, 0x80), 4, u64::from(u32::MAX))
        .unwrap();
    enable(&mut g2, 0, 27);
    enable(&mut g2, 0, 3);
    g2.set_line(0, 27, true);
    g2.set_pending(0, 3);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g2);
    let v = cpu.valid();
    assert_eq!(v.iter().find(|l| l.vintid == 27).unwrap().pintid, Some(27));
    assert_eq!(v.iter().find(|l| l.vintid == 3).unwrap().pintid, None);
}

#[test]
fn disabled_group_or_disabled_interrupt_is_not_delivered() {
    let mut g = linux_like(1, 32);
    g.set_pending(0, 40); // not enabled
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
    assert!(!g.has_deliverable(0));

    enable(&mut g, 0, 40);
    g.dist_write(GICD_CTLR, 4, 0).unwrap(); // group 1 off
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
    assert!(!g.has_deliverable(0));

    // Group 0 interrupt with only group 1 enabled.
    g.dist_write(GICD_CTLR, 4, GRP1).unwrap();
    g.dist_write(GICD_IGROUPR + 4, 4, 0).unwrap();
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
    g.dist_write(GICD_CTLR, 4, 1).unwrap(); // EnableGrp0
    cpu.flush(&mut g);
    let v = cpu.valid();
    assert_eq!(v.len(), 1);
    assert!(!v[0].group1, "group 0 in the LR");
}

#[test]
fn disabling_an_interrupt_pulls_its_pending_lr_back() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 41);
    g.set_pending(0, 41);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert_eq!(cpu.vintids(), vec![41]);
    let (off, bit) = bit_word(GICD_ICENABLER, 41);
    let k = g.dist_write(off, 4, u64::from(bit)).unwrap();
    assert!(k.contains(0));
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty());
    assert_eq!(
        g.dist_read(GICD_ISPENDR + 4, 4).unwrap() & u64::from(bit),
        u64::from(bit)
    );
    enable(&mut g, 0, 41);
    assert_eq!(cpu.drain(&mut g, |_, _| ()), vec![41]);
}

#[test]
fn icpendr_and_icactiver_reach_an_interrupt_in_an_lr() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 42);
    g.set_pending(0, 42);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    let (off, bit) = bit_word(GICD_ISPENDR, 42);
    assert_eq!(
        g.dist_read(off, 4).unwrap() & u64::from(bit),
        u64::from(bit),
        "reads the LR"
    );
    g.dist_write(off + 0x80, 4, u64::from(bit)).unwrap();
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty(), "pending cleared");
    assert_eq!(g.dist_read(off, 4).unwrap() & u64::from(bit), 0);

    g.set_pending(0, 42);
    cpu.flush(&mut g);
    assert_eq!(cpu.ack(), Some(42));
    cpu.flush(&mut g);
    let (aoff, _) = bit_word(GICD_ISACTIVER, 42);
    assert_eq!(
        g.dist_read(aoff, 4).unwrap() & u64::from(bit),
        u64::from(bit)
    );
    g.dist_write(aoff + 0x80, 4, u64::from(bit)).unwrap();
    cpu.flush(&mut g);
    assert!(cpu.valid().is_empty(), "active cleared");
    assert!(!g.has_deliverable(0));
}

#[test]
fn interrupt_made_active_by_the_guest_is_held_back() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 43);
    let (aoff, bit) = bit_word(GICD_ISACTIVER, 43);
    g.dist_write(aoff, 4, u64::from(bit)).unwrap();
    g.set_pending(0, 43);
    assert!(!g.has_deliverable(0));
    g.dist_write(aoff + 0x80, 4, u64::from(bit)).unwrap();
    assert!(g.has_deliverable(0));
}

#[test]
fn has_deliverable_sees_the_model_and_pending_lrs() {
    let mut g = linux_like(2, 32);
    assert!(!g.has_deliverable(0));
    assert!(!g.has_deliverable(7), "absent vCPU");
    enable(&mut g, 0, 20);
    g.set_pending(0, 20);
    assert!(g.has_deliverable(0));
    assert!(!g.has_deliverable(1), "PPIs are banked");
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert!(g.has_deliverable(0), "pending in an LR");
    assert_eq!(cpu.ack(), Some(20));
    cpu.flush(&mut g);
    assert!(!g.has_deliverable(0), "active only");
}

#[test]
fn priority_is_carried_into_the_lr() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 44);
    set_priority(&mut g, 0, 44, 0xa3);
    g.set_pending(0, 44);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    let l = cpu.valid()[0];
    assert_eq!(l.priority, 0xa0);
    assert!(l.group1);
    assert_eq!(l.pintid, None);
}

#[test]
fn reset_zeroes_stale_lrs_and_absent_vcpus_flush_nothing() {
    let mut g = linux_like(1, 32);
    enable(&mut g, 0, 45);
    g.set_pending(0, 45);
    let mut cpu = Cpu::new(0, 4);
    cpu.flush(&mut g);
    assert_eq!(cpu.ack(), Some(45));
    g.reset();
    cpu.flush(&mut g);
    assert!(cpu.lrs.iter().all(|&w| w == 0));
    let mut lrs = [lr::encode(&Lr {
        vintid: 9,
        state: State::Pending,
        ..Lr::default()
    }); 4];
    let f = g.flush(5, &mut lrs);
    assert_eq!(f, Default::default());
    assert_eq!(lrs[0] >> 62, 1, "untouched");
}

#[test]
fn more_than_sixteen_lrs_and_fewer_than_before_are_handled() {
    let mut g = linux_like(1, 64);
    for i in 32..60 {
        enable(&mut g, 0, i);
        g.set_pending(0, i);
    }
    let mut lrs = vec![0u64; 20];
    g.flush(0, &mut lrs);
    assert!(lrs[16..].iter().all(|&w| w == 0), "only 16 used");
    // The hypervisor now passes fewer: what was beyond goes back.
    let mut cpu = Cpu::new(0, 4);
    cpu.lrs.copy_from_slice(&lrs[..4]);
    let mut got = cpu.drain(&mut g, |_, _| ());
    got.sort();
    assert_eq!(got, (32..60).collect::<Vec<_>>());
}

#[test]
fn spis_across_every_bitmap_word_are_delivered_in_priority_order() {
    let mut g = linux_like(2, 988);
    // One SPI in the first, a middle and the last word of the SPI bitmap,
    // plus an SGI and a PPI.
    let spis = [32, 500, 1019];
    for (intid, prio) in [(32, 0x80), (500, 0x20), (1019, 0x40)] {
        enable(&mut g, 0, intid);
        make_edge(&mut g, intid);
        set_priority(&mut g, 0, intid, prio);
        route(&mut g, intid, 0);
    }
    for intid in [3, 20] {
        enable(&mut g, 0, intid);
        set_priority(&mut g, 0, intid, 0x60);
    }
    // PPI 20 edge-triggered (GICR_ICFGR1 covers INTIDs 16-31).
    g.redist_write(sgi_reg(0, 0xc04), 4, 2 << (2 * (20 - 16)))
        .unwrap();
    for intid in spis {
        assert!(g.set_pending(1, intid).contains(0));
    }
    g.set_pending(0, 20);
    g.sgi(1, 3 << 24 | 1);
    // vCPU 1 sees nothing: the SPIs are routed to vCPU 0.
    let mut other = Cpu::new(1, 4);
    other.flush(&mut g);
    assert!(other.valid().is_empty());
    assert!(!g.has_deliverable(1));
    assert_eq!(g.bookkeeping_mismatch(), None);

    let mut cpu = Cpu::new(0, 2);
    let order = cpu.drain(&mut g, |g, _| {
        assert_eq!(g.bookkeeping_mismatch(), None);
    });
    assert_eq!(order, vec![500, 1019, 3, 20, 32]);
    assert!(!g.has_deliverable(0));
    assert_eq!(g.bookkeeping_mismatch(), None);
}

#[test]
fn bookkeeping_follows_enable_activate_and_reset() {
    let mut g = linux_like(2, 64);
    for intid in [5, 21, 40, 90] {
        enable(&mut g, 1, intid);
        g.set_pending(1, intid);
    }
    assert!(g.has_deliverable(1));
    assert_eq!(g.bookkeeping_mismatch(), None);
    // Disabled or active interrupts are not ready; re-enabling restores it.
    disable(&mut g, 1, 40);
    g.dist_write(GICD_ISACTIVER + 8, 4, 1 << (90 - 64)).unwrap();
    assert_eq!(g.bookkeeping_mismatch(), None);
    let mut cpu = Cpu::new(1, 4);
    cpu.flush(&mut g);
    let mut got = cpu.vintids();
    got.sort();
    assert_eq!(got, vec![5, 21]);
    assert_eq!(g.bookkeeping_mismatch(), None);
    // Fewer LRs than last time: the one beyond goes back to the model.
    let mut short = Cpu::new(1, 1);
    short.lrs[0] = cpu.lrs[0];
    let f = short.flush(&mut g);
    assert_eq!(short.vintids().len(), 1);
    assert!(f.underflow);
    assert_eq!(g.bookkeeping_mismatch(), None);
    g.reset();
    assert_eq!(g.bookkeeping_mismatch(), None);
    assert!(!g.has_deliverable(1));
}
