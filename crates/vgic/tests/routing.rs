//! SPI routing through GICD_IROUTER and SGI generation through ICC_SGI1R_EL1.
mod common;

use bulkhead_vgic::Kicks;
use common::*;

/// ICC_SGI1R_EL1 with INTID, Aff1 and a target list.
fn sgi1r(intid: u64, aff1: u64, targets: u64) -> u64 {
    intid << 24 | aff1 << 16 | targets
}
const IRM: u64 = 1 << 40;

#[test]
fn spi_is_delivered_to_the_vcpu_its_irouter_names() {
    let mut g = linux_like(4, 32);
    enable(&mut g, 0, 40);
    route(&mut g, 40, 2);
    let k = g.set_pending(0, 40);
    assert_eq!(k, Kicks::vcpu(2));
    for v in [0, 1, 3] {
        assert!(!g.has_deliverable(v));
        let mut cpu = Cpu::new(v, 4);
        cpu.flush(&mut g);
        assert!(cpu.valid().is_empty(), "vCPU {v} got it");
    }
    let mut cpu2 = Cpu::new(2, 4);
    assert!(g.has_deliverable(2));
    assert_eq!(cpu2.drain(&mut g, |_, _| ()), vec![40]);
}

#[test]
fn spi_routed_to_an_absent_vcpu_is_never_delivered() {
    let mut g = linux_like(2, 32);
    enable(&mut g, 0, 33);
    route(&mut g, 33, 5); // Aff0 = 5: no such vCPU
    assert_eq!(g.dist_read(GICD_IROUTER + 8 * 33, 8), Ok(5), "value kept");
    assert!(g.set_pending(0, 33).is_empty());
    for v in 0..2 {
        assert!(!g.has_deliverable(v));
        assert!(Cpu::new(v, 4).drain(&mut g, |_, _| ()).is_empty());
    }
    // Aff2/Aff3 non-zero also names nobody.
    route(&mut g, 33, 1 << 16);
    assert!(!g.has_deliverable(0));
    // Routing it to a real vCPU later delivers the pending interrupt.
    let k = g.dist_write(GICD_IROUTER + 8 * 33, 8, 1).unwrap();
    assert!(k.contains(1));
    assert_eq!(Cpu::new(1, 4).drain(&mut g, |_, _| ()), vec![33]);
}

#[test]
fn irm_routes_to_vcpu0() {
    let mut g = linux_like(3, 32);
    enable(&mut g, 0, 50);
    route(&mut g, 50, 1 << 31 | 2);
    assert_eq!(g.set_pending(0, 50), Kicks::vcpu(0));
    assert!(!g.has_deliverable(2));
    assert_eq!(Cpu::new(0, 4).drain(&mut g, |_, _| ()), vec![50]);
}

#[test]
fn rerouting_a_pending_spi_moves_it_to_the_new_vcpu() {
    let mut g = linux_like(2, 32);
    enable(&mut g, 0, 45);
    g.set_pending(0, 45);
    let mut c0 = Cpu::new(0, 4);
    let mut c1 = Cpu::new(1, 4);
    c0.flush(&mut g);
    assert_eq!(c0.vintids(), vec![45]);
    let k = g.dist_write(GICD_IROUTER + 8 * 45, 8, 1).unwrap();
    assert_eq!(k, Kicks(0b11), "old owner and new target");
    // vCPU 1 must not take it while it sits in vCPU 0's LR.
    c1.flush(&mut g);
    assert!(c1.valid().is_empty());
    let f = c0.flush(&mut g);
    assert!(c0.valid().is_empty(), "pulled back");
    assert_eq!(f.kicks, Kicks::vcpu(1));
    assert_eq!(c1.drain(&mut g, |_, _| ()), vec![45]);
}

#[test]
fn sgi_reaches_the_vcpus_in_the_target_list() {
    let mut g = linux_like(4, 32);
    for v in 0..4 {
        enable(&mut g, v, 3);
    }
    let k = g.sgi(0, sgi1r(3, 0, 0b1010));
    assert_eq!(k, Kicks(0b1010));
    for v in 0..4u16 {
        let got = Cpu::new(v, 4).drain(&mut g, |_, _| ());
        let want: Vec<u32> = if v % 2 == 1 { vec![3] } else { vec![] };
        assert_eq!(got, want, "vCPU {v}");
    }
}

#[test]
fn sgi_may_target_the_sender_itself() {
    let mut g = linux_like(2, 32);
    enable(&mut g, 1, 0);
    assert_eq!(g.sgi(1, sgi1r(0, 0, 0b10)), Kicks::vcpu(1));
    assert_eq!(Cpu::new(1, 4).drain(&mut g, |_, _| ()), vec![0]);
}

#[test]
fn sgi_to_all_but_self_skips_the_sender() {
    let mut g = linux_like(3, 32);
    for v in 0..3 {
        enable(&mut g, v, 7);
    }
    // IRM=1 ignores the target list and affinity fields.
    let k = g.sgi(1, IRM | sgi1r(7, 3, 0xffff));
    assert_eq!(k, Kicks(0b101));
    assert!(g.has_deliverable(0));
    assert!(!g.has_deliverable(1));
    assert!(g.has_deliverable(2));
    assert_eq!(g.redist_read(sgi_reg(1, 0x200), 4), Ok(0));
    assert_eq!(g.redist_read(sgi_reg(2, 0x200), 4), Ok(1 << 7));
}

#[test]
fn sgi_to_absent_targets_is_ignored() {
    let mut g = linux_like(2, 32);
    enable(&mut g, 0, 1);
    // vCPUs 2..15 do not exist; Aff1 = 1 names a cluster with no vCPUs.
    assert!(g.sgi(0, sgi1r(1, 0, 0xfffc)).is_empty());
    assert!(g.sgi(0, sgi1r(1, 1, 0xffff)).is_empty());
    // Non-zero Aff2, Aff3 or RS name nobody either.
    assert!(g.sgi(0, sgi1r(1, 0, 1) | 1 << 32).is_empty());
    assert!(g.sgi(0, sgi1r(1, 0, 1) | 1 << 48).is_empty());
    assert!(g.sgi(0, sgi1r(1, 0, 1) | 1 << 44).is_empty());
    // A nonexistent sender with IRM reaches everyone.
    assert_eq!(g.sgi(9, IRM | sgi1r(1, 0, 0)), Kicks(0b11));
}

#[test]
fn sgi_to_a_disabled_sgi_stays_pending_until_enabled() {
    let mut g = linux_like(2, 32);
    g.sgi(0, sgi1r(2, 0, 0b10));
    assert!(!g.has_deliverable(1));
    assert_eq!(g.redist_read(sgi_reg(1, 0x200), 4), Ok(1 << 2));
    let k = g.redist_write(sgi_reg(1, 0x100), 4, 1 << 2).unwrap();
    assert!(k.contains(1));
    assert_eq!(Cpu::new(1, 4).drain(&mut g, |_, _| ()), vec![2]);
}

#[test]
fn spi_target_follows_irouter() {
    let mut g = linux_like(4, 32);
    route(&mut g, 40, 3);
    assert_eq!(g.spi_target(40), Some(3));
    route(&mut g, 40, 1 << 31 | 2);
    assert_eq!(g.spi_target(40), Some(0), "IRM: vCPU 0");
    route(&mut g, 40, 9);
    assert_eq!(g.spi_target(40), None, "no such vCPU");
    assert_eq!(g.spi_target(27), None, "a PPI has no route");
}
