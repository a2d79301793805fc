//! Distributor and redistributor register semantics.
mod common;

use bulkhead_vgic::{VGic, VgicError, GICD_SIZE, GICR_FRAME_SIZE, MAX_SPIS};
use common::*;

#[test]
fn dist_ctlr_resets_disabled_with_are_and_ds_fixed() {
    let mut g = VGic::new(2, 64);
    assert_eq!(g.dist_read(GICD_CTLR, 4), Ok(0x50));
    g.dist_write(GICD_CTLR, 4, 0xffff_ffff).unwrap();
    // EnableGrp0, EnableGrp1, ARE, DS; RWP (bit 31) never reads 1.
    assert_eq!(g.dist_read(GICD_CTLR, 4), Ok(0x53));
    g.dist_write(GICD_CTLR, 4, 0).unwrap();
    assert_eq!(g.dist_read(GICD_CTLR, 4), Ok(0x50));
}

#[test]
fn dist_typer_advertises_spis_cpus_and_no_lpis() {
    let mut g = VGic::new(4, 64);
    let typer = g.dist_read(0x4, 4).unwrap();
    assert_eq!(typer & 0x1f, 2, "ITLinesNumber");
    assert_eq!((typer >> 5) & 7, 3, "CPUNumber");
    assert_eq!((typer >> 19) & 0x1f, 9, "IDbits");
    assert_eq!(typer & (1 << 10), 0, "SecurityExtn");
    assert_eq!(typer & (1 << 16), 0, "MBIS");
    assert_eq!(typer & (1 << 17), 0, "LPIS");
    assert_eq!((typer >> 11) & 0x1f, 0, "num_LPIs");
    assert_eq!(g.dist_read(0xc, 4), Ok(0), "TYPER2");
    assert_eq!(g.dist_read(0x8, 4), Ok(0x4200_043b), "IIDR");
}

#[test]
fn nr_spis_rounds_up_to_32_and_clamps_to_988() {
    assert_eq!(VGic::new(1, 33).nr_spis(), 64);
    assert_eq!(VGic::new(1, 0).nr_spis(), 0);
    let mut big = VGic::new(1, 5000);
    assert_eq!(big.nr_spis(), MAX_SPIS);
    assert_eq!(big.dist_read(0x4, 4).unwrap() & 0x1f, 31);
    assert_eq!(VGic::new(0, 32).n_vcpus(), 1);
    assert_eq!(VGic::new(99, 32).n_vcpus(), 8);
}

#[test]
fn pidr2_reports_gicv3_in_dist_and_every_redistributor() {
    let mut g = VGic::new(3, 32);
    assert_eq!(g.dist_read(0xffe8, 4), Ok(0x3b));
    for v in 0..3 {
        let pidr2 = g.redist_read(v * GICR_FRAME_SIZE + 0xffe8, 4).unwrap();
        assert_eq!((pidr2 >> 4) & 0xf, 3, "ArchRev");
    }
    assert_eq!(g.dist_read(0xfff0, 4), Ok(0x0d));
    assert_eq!(g.dist_read(0xfffc, 4), Ok(0xb1));
}

#[test]
fn spi_enable_set_and_clear_registers_form_a_pair() {
    let mut g = VGic::new(1, 64);
    let (off, _) = bit_word(GICD_ISENABLER, 40);
    assert_eq!(g.dist_read(off, 4), Ok(0));
    g.dist_write(off, 4, 0x0000_0300).unwrap(); // INTIDs 40, 41
    assert_eq!(g.dist_read(off, 4), Ok(0x300));
    assert_eq!(
        g.dist_read(off + 0x80, 4),
        Ok(0x300),
        "ICENABLER reads the same"
    );
    g.dist_write(off, 4, 0).unwrap(); // writing 0 changes nothing
    assert_eq!(g.dist_read(off, 4), Ok(0x300));
    g.dist_write(off + 0x80, 4, 0x100).unwrap();
    assert_eq!(g.dist_read(off, 4), Ok(0x200));
}

#[test]
fn spi_pending_set_and_clear_registers_form_a_pair() {
    let mut g = VGic::new(1, 64);
    let (off, _) = bit_word(GICD_ISPENDR, 33);
    g.dist_write(off, 4, 0b110).unwrap();
    assert_eq!(g.dist_read(off, 4), Ok(0b110));
    assert_eq!(g.dist_read(off + 0x80, 4), Ok(0b110));
    g.dist_write(off + 0x80, 4, 0b010).unwrap();
    assert_eq!(g.dist_read(off, 4), Ok(0b100));
}

#[test]
fn clearing_pending_of_an_asserted_level_line_keeps_it_pending() {
    let mut g = VGic::new(1, 32);
    g.set_line(0, 40, true);
    let (off, bit) = bit_word(GICD_ICPENDR, 40);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    assert_eq!(
        g.dist_read(off, 4).unwrap() & u64::from(bit),
        u64::from(bit)
    );
    g.set_line(0, 40, false);
    assert_eq!(g.dist_read(off, 4).unwrap() & u64::from(bit), 0);
}

#[test]
fn active_set_and_clear_registers_form_a_pair() {
    let mut g = VGic::new(1, 32);
    let (off, bit) = bit_word(GICD_ISACTIVER, 35);
    g.dist_write(off, 4, u64::from(bit)).unwrap();
    assert_eq!(g.dist_read(off, 4), Ok(u64::from(bit)));
    g.dist_write(off + 0x80, 4, u64::from(bit)).unwrap();
    assert_eq!(g.dist_read(off, 4), Ok(0));
}

#[test]
fn group_register_is_read_write() {
    let mut g = VGic::new(1, 64);
    g.dist_write(GICD_IGROUPR + 4, 4, 0xdead_beef).unwrap();
    assert_eq!(g.dist_read(GICD_IGROUPR + 4, 4), Ok(0xdead_beef));
    g.redist_write(sgi_reg(0, 0x80), 4, 0x1234_5678).unwrap();
    assert_eq!(g.redist_read(sgi_reg(0, 0x80), 4), Ok(0x1234_5678));
}

#[test]
fn priority_keeps_five_bits_with_byte_and_word_access() {
    let mut g = VGic::new(1, 32);
    g.dist_write(GICD_IPRIORITYR + 33, 1, 0xff).unwrap();
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 33, 1), Ok(0xf8));
    g.dist_write(GICD_IPRIORITYR + 36, 4, 0x1234_5677).unwrap();
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 36, 4), Ok(0x1030_5070));
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 37, 1), Ok(0x50));
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 32, 4), Ok(0x0000_f800));
    // Redistributor: SGI/PPI priorities, per vCPU.
    g.redist_write(sgi_reg(0, 0x400 + 27), 1, 0xa7).unwrap();
    assert_eq!(g.redist_read(sgi_reg(0, 0x418), 4), Ok(0xa000_0000));
    // Halfword access is not allowed on IPRIORITYR: RAZ/WI.
    g.dist_write(GICD_IPRIORITYR + 40, 2, 0xffff).unwrap();
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 40, 4), Ok(0));
}

#[test]
fn icfgr_spis_writable_sgis_fixed_edge_ppis_writable() {
    let mut g = VGic::new(1, 32);
    let off = GICD_ICFGR + 8; // INTIDs 32-47
    assert_eq!(g.dist_read(off, 4), Ok(0), "SPIs reset level");
    g.dist_write(off, 4, 0xffff_ffff).unwrap();
    // Only bit 2n+1 is implemented.
    assert_eq!(g.dist_read(off, 4), Ok(0xaaaa_aaaa));
    let icfgr0 = sgi_reg(0, 0xc00);
    assert_eq!(g.redist_read(icfgr0, 4), Ok(0xaaaa_aaaa));
    g.redist_write(icfgr0, 4, 0).unwrap();
    assert_eq!(
        g.redist_read(icfgr0, 4),
        Ok(0xaaaa_aaaa),
        "SGIs are always edge"
    );
    let icfgr1 = sgi_reg(0, 0xc04);
    assert_eq!(g.redist_read(icfgr1, 4), Ok(0));
    g.redist_write(icfgr1, 4, 0x8000_0002).unwrap();
    assert_eq!(g.redist_read(icfgr1, 4), Ok(0x8000_0002));
}

#[test]
fn irouter_takes_64bit_writes_and_32bit_halves() {
    let mut g = VGic::new(4, 32);
    let off = GICD_IROUTER + 8 * 40;
    g.dist_write(off, 8, 0xffff_ffff_ffff_ffff).unwrap();
    // Only Aff3 [39:32], IRM [31], Aff2..Aff0 [23:0] are kept.
    assert_eq!(g.dist_read(off, 8), Ok(0x0000_00ff_80ff_ffff));
    g.dist_write(off, 4, 0x0000_0102).unwrap();
    assert_eq!(g.dist_read(off, 8), Ok(0x0000_00ff_0000_0102));
    g.dist_write(off + 4, 4, 0).unwrap();
    assert_eq!(g.dist_read(off, 8), Ok(0x102));
    assert_eq!(g.dist_read(off, 4), Ok(0x102));
    assert_eq!(g.dist_read(off + 4, 4), Ok(0));
}

#[test]
fn dist_words_for_sgis_and_ppis_are_raz_wi() {
    let mut g = VGic::new(1, 32);
    for base in [GICD_IGROUPR, GICD_ISENABLER, GICD_ISPENDR, GICD_ISACTIVER] {
        g.dist_write(base, 4, 0xffff_ffff).unwrap();
        assert_eq!(g.dist_read(base, 4), Ok(0), "{base:#x}");
    }
    g.dist_write(GICD_IPRIORITYR, 4, 0xffff_ffff).unwrap();
    assert_eq!(g.dist_read(GICD_IPRIORITYR, 4), Ok(0));
    g.dist_write(GICD_ICFGR + 4, 4, 0xffff_ffff).unwrap();
    assert_eq!(g.dist_read(GICD_ICFGR + 4, 4), Ok(0));
    g.dist_write(GICD_IROUTER + 8 * 20, 8, 1).unwrap();
    assert_eq!(g.dist_read(GICD_IROUTER + 8 * 20, 8), Ok(0));
    // ... and the redistributor's copy was not touched.
    assert_eq!(g.redist_read(sgi_reg(0, 0x100), 4), Ok(0));
}

#[test]
fn intids_beyond_the_implemented_spis_are_raz_wi() {
    let mut g = VGic::new(1, 32); // INTIDs 32..63
    g.dist_write(GICD_ISENABLER + 8, 4, 0xffff_ffff).unwrap();
    assert_eq!(g.dist_read(GICD_ISENABLER + 8, 4), Ok(0));
    g.dist_write(GICD_IPRIORITYR + 64, 1, 0x80).unwrap();
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 64, 1), Ok(0));
    g.dist_write(GICD_IROUTER + 8 * 64, 8, 1).unwrap();
    assert_eq!(g.dist_read(GICD_IROUTER + 8 * 64, 8), Ok(0));
    g.dist_write(GICD_IGROUPR + 4 * 31, 4, 0xffff_ffff).unwrap();
    assert_eq!(g.dist_read(GICD_IGROUPR + 4 * 31, 4), Ok(0));
    // Edges to nonexistent INTIDs do nothing.
    assert!(g.set_pending(0, 64).is_empty());
    assert!(g.set_pending(0, 5000).is_empty());
}

#[test]
fn offsets_past_the_frames_are_out_of_range() {
    let mut g = VGic::new(2, 32);
    assert_eq!(g.dist_read(GICD_SIZE, 4), Err(VgicError::OutOfRange));
    assert_eq!(g.dist_write(u64::MAX, 4, 0), Err(VgicError::OutOfRange));
    assert_eq!(
        g.redist_read(2 * GICR_FRAME_SIZE, 4),
        Err(VgicError::OutOfRange)
    );
    assert_eq!(g.redist_write(u64::MAX, 8, 0), Err(VgicError::OutOfRange));
    assert!(g.redist_read(2 * GICR_FRAME_SIZE - 4, 4).is_ok());
    assert_eq!(g.redist_size(), 2 * GICR_FRAME_SIZE);
}

#[test]
fn odd_sizes_and_misaligned_accesses_are_raz_wi() {
    let mut g = VGic::new(1, 32);
    for size in [0u8, 3, 5, 16, 255] {
        assert_eq!(
            g.dist_write(GICD_ISENABLER + 4, size, 0xffff_ffff),
            Ok(Default::default())
        );
        assert_eq!(g.dist_read(GICD_ISENABLER + 4, size), Ok(0));
        assert_eq!(g.redist_read(8, size), Ok(0));
    }
    g.dist_write(GICD_ISENABLER + 6, 4, 0xffff_ffff).unwrap();
    g.dist_write(GICD_ISENABLER + 4, 8, u64::MAX).unwrap();
    assert_eq!(g.dist_read(GICD_ISENABLER + 4, 4), Ok(0));
    assert_eq!(g.dist_read(0x2, 4), Ok(0));
}

#[test]
fn unlisted_dist_registers_are_raz_wi() {
    let mut g = VGic::new(1, 32);
    for off in [
        0x10u64,
        0x40,
        0x48,
        0x50,
        0x58,
        0x800 + 32,
        0xd04,
        0xe08,
        0xf00,
        0x4000,
    ] {
        g.dist_write(off, 4, 0xffff_ffff).unwrap();
        assert_eq!(g.dist_read(off, 4), Ok(0), "{off:#x}");
    }
}

#[test]
fn gicr_typer_gives_affinity_processor_number_and_last() {
    let mut g = VGic::new(3, 32);
    for v in 0..3u64 {
        let typer = g.redist_read(v * GICR_FRAME_SIZE + 8, 8).unwrap();
        assert_eq!(typer >> 32, v, "Affinity_Value (Aff0 = index)");
        assert_eq!((typer >> 8) & 0xffff, v, "Processor_Number");
        assert_eq!(typer & 1, 0, "PLPIS");
        assert_eq!(typer & 2, 0, "VLPIS");
        assert_eq!(typer & 8, 0, "DirectLPI");
        assert_eq!(typer & 0x10 != 0, v == 2, "Last only on the last frame");
        let lo = g.redist_read(v * GICR_FRAME_SIZE + 8, 4).unwrap();
        let hi = g.redist_read(v * GICR_FRAME_SIZE + 0xc, 4).unwrap();
        assert_eq!(hi << 32 | lo, typer);
    }
    assert_eq!(g.redist_read(4, 4), Ok(0x4200_043b), "GICR_IIDR");
    assert_eq!(g.redist_read(0, 4), Ok(0), "GICR_CTLR.EnableLPIs RAZ");
    g.redist_write(0, 4, 1).unwrap();
    assert_eq!(g.redist_read(0, 4), Ok(0));
}

#[test]
fn gicr_affinity_matches_psci_vcpu_mpidr() {
    for v in 0..8u16 {
        let mpidr = bulkhead_psci::vcpu_mpidr(v);
        let aff = (mpidr & 0xff_ffff) | ((mpidr >> 32) & 0xff) << 24;
        assert_eq!(u64::from(VGic::affinity(v)), aff);
    }
}

#[test]
fn waker_processor_sleep_drives_children_asleep() {
    let mut g = VGic::new(2, 32);
    let waker = GICR_FRAME_SIZE + 0x14;
    assert_eq!(g.redist_read(waker, 4), Ok(0b110), "asleep at reset");
    g.redist_write(waker, 4, 0).unwrap();
    assert_eq!(g.redist_read(waker, 4), Ok(0));
    assert_eq!(g.redist_read(0x14, 4), Ok(0b110), "other vCPU untouched");
    g.redist_write(waker, 4, 0b010).unwrap();
    assert_eq!(g.redist_read(waker, 4), Ok(0b110));
}

#[test]
fn sgi_and_ppi_state_is_banked_per_vcpu() {
    let mut g = VGic::new(2, 32);
    g.redist_write(sgi_reg(1, 0x100), 4, 0x8000_0001).unwrap();
    assert_eq!(g.redist_read(sgi_reg(1, 0x100), 4), Ok(0x8000_0001));
    assert_eq!(g.redist_read(sgi_reg(0, 0x100), 4), Ok(0));
    g.set_pending(1, 5);
    assert_eq!(g.redist_read(sgi_reg(1, 0x200), 4), Ok(1 << 5));
    assert_eq!(g.redist_read(sgi_reg(0, 0x200), 4), Ok(0));
    g.redist_write(sgi_reg(1, 0x280), 4, 1 << 5).unwrap();
    assert_eq!(g.redist_read(sgi_reg(1, 0x200), 4), Ok(0));
    // Words past the first (extended PPI range) are RAZ/WI.
    g.redist_write(sgi_reg(0, 0x104), 4, 0xffff_ffff).unwrap();
    assert_eq!(g.redist_read(sgi_reg(0, 0x104), 4), Ok(0));
    assert_eq!(g.redist_read(sgi_reg(0, 0xd00), 4), Ok(0), "IGRPMODR0");
    assert_eq!(g.redist_read(sgi_reg(0, 0xe00), 4), Ok(0), "NSACR");
}

#[test]
fn reset_restores_reset_state() {
    let mut g = linux_like(2, 32);
    enable(&mut g, 0, 40);
    set_priority(&mut g, 0, 40, 0x80);
    g.set_pending(0, 40);
    g.redist_write(0x14, 4, 0).unwrap();
    g.reset();
    assert_eq!(g.dist_read(GICD_CTLR, 4), Ok(0x50));
    assert_eq!(g.dist_read(GICD_ISENABLER + 4, 4), Ok(0));
    assert_eq!(g.dist_read(GICD_ISPENDR + 4, 4), Ok(0));
    assert_eq!(g.dist_read(GICD_IGROUPR + 4, 4), Ok(0));
    assert_eq!(g.dist_read(GICD_IPRIORITYR + 40, 1), Ok(0));
    assert_eq!(g.redist_read(0x14, 4), Ok(0b110));
    assert_eq!(g.redist_read(sgi_reg(0, 0xc00), 4), Ok(0xaaaa_aaaa));
}
