//! Building tables: block selection, errors, descriptor bits and the walk.

mod common;

use bulkhead_pagetable::{Attrs, MapError, MemType, PageTable, Regime, TableMemory};
use common::*;

#[test]
fn start_level_follows_va_bits() {
    for (bits, level) in [(25, 2), (30, 2), (31, 1), (39, 1), (40, 0), (48, 0)] {
        let pt = stage2(bits);
        assert_eq!(pt.start_level(), level, "va_bits {bits}");
        assert_eq!(pt.va_bits(), bits);
    }
}

#[test]
fn va_bits_outside_25_to_48_is_unsupported() {
    for bits in [0, 24, 49, 64] {
        let r = PageTable::new(TestMemory::new(), Regime::Stage2, bits);
        assert!(matches!(r, Err(MapError::Unsupported)), "va_bits {bits}");
    }
}

#[test]
fn new_table_allocates_only_the_root() {
    let pt = stage2(39);
    assert_eq!(pt.memory().allocations, 1);
    assert!(leaves(&pt).is_empty());
}

#[test]
fn one_gib_aligned_range_uses_a_level_1_block() {
    let mut pt = stage2(39);
    pt.map(GIB, 2 * GIB, GIB, NORMAL_RW).unwrap();
    assert_eq!(
        pt.translate(GIB + 0x1234_5678),
        Some((2 * GIB + 0x1234_5678, NORMAL_RW, GIB))
    );
    // The block sits in the root: no further tables.
    assert_eq!(pt.memory().allocations, 1);
    assert_eq!(raw_leaf(&pt, GIB).unwrap().1, 1);
    assert_eq!(leaves(&pt), vec![(GIB, 2 * GIB, GIB)]);
}

#[test]
fn two_mib_aligned_range_uses_level_2_blocks() {
    let mut pt = stage2(39);
    pt.map(MIB2, GIB + MIB2, 2 * MIB2, NORMAL_RW).unwrap();
    assert_eq!(
        pt.translate(MIB2 + 0x1000),
        Some((GIB + MIB2 + 0x1000, NORMAL_RW, MIB2))
    );
    assert_eq!(
        pt.translate(2 * MIB2),
        Some((GIB + 2 * MIB2, NORMAL_RW, MIB2))
    );
    assert_eq!(pt.memory().allocations, 2); // root + one level-2 table
    assert_eq!(
        leaves(&pt),
        vec![(MIB2, GIB + MIB2, MIB2), (2 * MIB2, GIB + 2 * MIB2, MIB2)]
    );
}

#[test]
fn misaligned_pa_forces_pages() {
    let mut pt = stage2(39);
    // va is 2 MiB aligned but pa only 4 KiB aligned: no block can be used.
    pt.map(MIB2, GIB + KIB4, MIB2, NORMAL_RW).unwrap();
    assert_eq!(pt.translate(MIB2), Some((GIB + KIB4, NORMAL_RW, KIB4)));
    assert_eq!(
        pt.translate(2 * MIB2 - KIB4),
        Some((GIB + MIB2, NORMAL_RW, KIB4))
    );
    let l = leaves(&pt);
    assert_eq!(l.len(), 512);
    assert!(l.iter().all(|&(_, _, size)| size == KIB4));
    assert_eq!(pt.memory().allocations, 3); // root, level 2, level 3
}

#[test]
fn range_straddling_a_gib_boundary_uses_2mib_blocks_on_both_sides() {
    let mut pt = stage2(39);
    let (start, end) = (0x3FE0_0000, 0x4060_0000);
    pt.map(start, start, end - start, NORMAL_RW).unwrap();
    assert_eq!(
        leaves(&pt),
        vec![
            (0x3FE0_0000, 0x3FE0_0000, MIB2),
            (0x4000_0000, 0x4000_0000, MIB2),
            (0x4020_0000, 0x4020_0000, MIB2),
            (0x4040_0000, 0x4040_0000, MIB2),
        ]
    );
    assert_eq!(pt.translate(start - KIB4), None);
    assert_eq!(pt.translate(end), None);
}

#[test]
fn range_mixes_pages_2mib_and_1gib_blocks() {
    let mut pt = stage2(39);
    // One page below 1 GiB, 1 GiB block, one 2 MiB block, one page.
    let start = GIB - KIB4;
    let size = KIB4 + GIB + MIB2 + KIB4;
    pt.map(start, start + 4 * GIB, size, NORMAL_RW).unwrap();
    let off = 4 * GIB;
    assert_eq!(
        leaves(&pt),
        vec![
            (GIB - KIB4, GIB - KIB4 + off, KIB4),
            (GIB, GIB + off, GIB),
            (2 * GIB, 2 * GIB + off, MIB2),
            (2 * GIB + MIB2, 2 * GIB + MIB2 + off, KIB4),
        ]
    );
    assert_eq!(pt.translate(GIB + 5 * MIB2).map(|t| t.2), Some(GIB));
}

#[test]
fn overlap_is_rejected_and_leaves_tables_unchanged() {
    let mut pt = stage2(39);
    // A page far into the range, in a 2 MiB region of its own. The new
    // range's pa is not 2 MiB aligned, so mapping it from 0 would need new
    // level-3 tables long before reaching that page.
    pt.map(0x40_5000, 0x8000_0000, KIB4, NORMAL_RW).unwrap();
    let before = pt.memory().snapshot();
    let allocs = pt.memory().allocations;

    let err = pt.map(0, 0x1000_1000, 0x80_0000, NORMAL_RW).unwrap_err();
    assert!(
        matches!(err, MapError::AlreadyMapped { va: 0x40_5000 }),
        "{err:?}"
    );
    assert_eq!(pt.memory().snapshot(), before);
    assert_eq!(pt.memory().allocations, allocs);
    assert_eq!(pt.translate(0), None);
}

#[test]
fn overlap_inside_a_block_reports_the_first_overlapping_address() {
    let mut pt = stage2(39);
    pt.map(GIB, GIB, GIB, NORMAL_RW).unwrap();
    let before = pt.memory().snapshot();
    // Starts below the block; the first mapped address is the block start.
    let err = pt.map(GIB - MIB2, 0, 2 * MIB2, NORMAL_RW).unwrap_err();
    assert!(
        matches!(err, MapError::AlreadyMapped { va } if va == GIB),
        "{err:?}"
    );
    // Wholly inside the block.
    let err = pt.map(GIB + 0x3000, 0, KIB4, NORMAL_RW).unwrap_err();
    assert!(
        matches!(err, MapError::AlreadyMapped { va } if va == GIB + 0x3000),
        "{err:?}"
    );
    assert_eq!(pt.memory().snapshot(), before);
}

#[test]
fn adjacent_ranges_do_not_overlap() {
    let mut pt = stage2(39);
    pt.map(0x1000, 0x1000, 0x1000, NORMAL_RW).unwrap();
    pt.map(0x2000, 0x5000, 0x1000, NORMAL_RW).unwrap();
    pt.map(0, 0x9000, 0x1000, NORMAL_RW).unwrap();
    assert_eq!(
        leaves(&pt),
        vec![
            (0, 0x9000, KIB4),
            (0x1000, 0x1000, KIB4),
            (0x2000, 0x5000, KIB4)
        ]
    );
}

#[test]
fn range_past_the_input_size_is_out_of_range() {
    let mut pt = stage2(39);
    let top = 1u64 << 39;
    assert_eq!(
        pt.map(top - KIB4, 0, 2 * KIB4, NORMAL_RW),
        Err(MapError::OutOfRange)
    );
    assert_eq!(pt.map(top, 0, KIB4, NORMAL_RW), Err(MapError::OutOfRange));
    assert_eq!(
        pt.map(u64::MAX - 0xfff, 0, KIB4, NORMAL_RW),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        pt.map(!0xfff, 0, 2 * KIB4, NORMAL_RW),
        Err(MapError::OutOfRange)
    );
    // Output addresses above 48 bits cannot be encoded.
    assert_eq!(
        pt.map(0, 1 << 48, KIB4, NORMAL_RW),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        pt.map(0, !0xfff, 2 * KIB4, NORMAL_RW),
        Err(MapError::OutOfRange)
    );
    assert!(leaves(&pt).is_empty());
    // The very last page is in range.
    pt.map(top - KIB4, (1 << 48) - KIB4, KIB4, NORMAL_RW)
        .unwrap();
    assert_eq!(
        pt.translate(top - 1),
        Some(((1 << 48) - 1, NORMAL_RW, KIB4))
    );
    assert_eq!(pt.translate(top), None);
}

#[test]
fn unaligned_or_empty_requests_are_rejected() {
    let mut pt = stage2(39);
    assert_eq!(pt.map(0x800, 0, KIB4, NORMAL_RW), Err(MapError::Unaligned));
    assert_eq!(pt.map(0, 0x10, KIB4, NORMAL_RW), Err(MapError::Unaligned));
    assert_eq!(pt.map(0, 0, 0x1800, NORMAL_RW), Err(MapError::Unaligned));
    assert_eq!(pt.map(0, 0, 0, NORMAL_RW), Err(MapError::ZeroSize));
    assert!(leaves(&pt).is_empty());
    assert_eq!(pt.memory().allocations, 1);
}

#[test]
fn stage1_mapping_without_read_is_unsupported() {
    let mut pt = stage1(39);
    let write_only = Attrs {
        read: false,
        ..NORMAL_RW
    };
    assert_eq!(pt.map(0, 0, KIB4, write_only), Err(MapError::Unsupported));
    assert!(leaves(&pt).is_empty());
}

fn all_attrs() -> Vec<Attrs> {
    let mut v = Vec::new();
    for mem in [MemType::Normal, MemType::Device] {
        for bits in 0..8u8 {
            v.push(Attrs {
                mem,
                read: bits & 1 != 0,
                write: bits & 2 != 0,
                exec: bits & 4 != 0,
            });
        }
    }
    v
}

/// Map each attribute set at its own page and 2 MiB block and read it back
/// through translate and for_each_mapping.
fn round_trip(regime: Regime, attrs: &[Attrs]) {
    let mut pt = PageTable::new(TestMemory::new(), regime, 39).unwrap();
    for (i, &a) in attrs.iter().enumerate() {
        let i = i as u64;
        pt.map(i * KIB4, 0x1000_0000 + i * KIB4, KIB4, a).unwrap();
        pt.map(GIB + i * MIB2, GIB + i * MIB2, MIB2, a).unwrap();
    }
    let mut seen = Vec::new();
    pt.for_each_mapping(&mut |m| seen.push(m.attrs));
    let expected: Vec<Attrs> = attrs.iter().chain(attrs).copied().collect();
    assert_eq!(seen, expected, "{regime:?}");
    for (i, &a) in attrs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            pt.translate(i * KIB4).map(|t| t.1),
            Some(a),
            "{regime:?} page {a:?}"
        );
        assert_eq!(
            pt.translate(GIB + i * MIB2).map(|t| t.1),
            Some(a),
            "{regime:?} block {a:?}"
        );
    }
}

#[test]
fn stage1_attributes_round_trip() {
    let attrs: Vec<Attrs> = all_attrs()
        .into_iter()
        .filter(|a| a.read && !(a.mem == MemType::Device && a.exec))
        .collect();
    assert_eq!(attrs.len(), 6);
    round_trip(Regime::El2Stage1, &attrs);
}

#[test]
fn stage2_attributes_round_trip() {
    let attrs: Vec<Attrs> = all_attrs()
        .into_iter()
        .filter(|a| !(a.mem == MemType::Device && a.exec))
        .collect();
    assert_eq!(attrs.len(), 12);
    round_trip(Regime::Stage2, &attrs);
}

#[test]
fn device_memory_is_never_executable() {
    for regime in [Regime::El2Stage1, Regime::Stage2] {
        let mut pt = PageTable::new(TestMemory::new(), regime, 39).unwrap();
        let dev_x = Attrs {
            mem: MemType::Device,
            read: true,
            write: true,
            exec: true,
        };
        pt.map(0, 0x900_0000, KIB4, dev_x).unwrap();
        let (desc, _) = raw_leaf(&pt, 0).unwrap();
        assert_ne!(desc & (1 << 54), 0, "{regime:?}");
        assert_eq!(
            pt.translate(0).unwrap().1,
            Attrs {
                exec: false,
                ..dev_x
            }
        );
    }
}

#[test]
fn stage1_text_page_descriptor_is_read_only_executable_normal() {
    let mut pt = stage1(39);
    let text = Attrs {
        mem: MemType::Normal,
        read: true,
        write: false,
        exec: true,
    };
    pt.map(0x4008_0000, 0x4008_0000, KIB4, text).unwrap();
    // 0x4008_0000 output address
    // | 0b11      page
    // | 1 << 2    AttrIndx 1 (Normal WB)          = 0x004
    // | 1 << 6    AP[1] RES1                       = 0x040
    // | 1 << 7    AP[2] read-only                  = 0x080
    // | 0b11 << 8 SH inner shareable               = 0x300
    // | 1 << 10   AF                               = 0x400
    // XN (bit 54) clear.
    assert_eq!(raw_leaf(&pt, 0x4008_0000), Some((0x0000_0000_4008_07C7, 3)));
}

#[test]
fn stage1_data_page_descriptor_is_read_write_execute_never() {
    let mut pt = stage1(39);
    pt.map(0x4010_0000, 0x4010_0000, KIB4, NORMAL_RW).unwrap();
    // 0x4010_0000 | 0b11 | AttrIndx 1 (0x004) | AP[1] (0x040) | SH 0b11 (0x300)
    // | AF (0x400) | XN (1 << 54); AP[2] clear = writable.
    assert_eq!(raw_leaf(&pt, 0x4010_0000), Some((0x0040_0000_4010_0747, 3)));
}

#[test]
fn stage1_device_block_descriptor_uses_attrindx_0() {
    let mut pt = stage1(39);
    let dev = Attrs {
        mem: MemType::Device,
        read: true,
        write: true,
        exec: false,
    };
    pt.map(0x0800_0000, 0x0800_0000, MIB2, dev).unwrap();
    // 0x0800_0000 | 0b01 block | AttrIndx 0 | AP[1] (0x040) | SH 0b00 | AF (0x400) | XN.
    assert_eq!(raw_leaf(&pt, 0x0800_0000), Some((0x0040_0000_0800_0441, 2)));
}

#[test]
fn stage2_device_page_descriptor_bits() {
    let mut pt = stage2(39);
    let dev = Attrs {
        mem: MemType::Device,
        read: true,
        write: true,
        exec: false,
    };
    pt.map(0x0900_0000, 0x0900_0000, KIB4, dev).unwrap();
    // 0x0900_0000 | 0b11 page | MemAttr 0b0001 Device-nGnRE (0x004)
    // | S2AP read (0x040) | S2AP write (0x080) | SH 0b00 | AF (0x400) | XN (1 << 54).
    assert_eq!(raw_leaf(&pt, 0x0900_0000), Some((0x0040_0000_0900_04C7, 3)));
}

#[test]
fn stage2_normal_block_descriptor_bits() {
    let mut pt = stage2(39);
    pt.map(GIB, 0x8000_0000, GIB, NORMAL_RWX).unwrap();
    // 0x8000_0000 | 0b01 block | MemAttr 0b1111 (0x03C) | S2AP RW (0x0C0)
    // | SH 0b11 (0x300) | AF (0x400); XN clear.
    assert_eq!(raw_leaf(&pt, GIB), Some((0x0000_0000_8000_07FD, 1)));
}

#[test]
fn table_descriptors_point_at_allocated_tables() {
    let mut pt = stage2(39);
    pt.map(0x1000, 0x1000, KIB4, NORMAL_RW).unwrap();
    let root = pt.memory().read(pt.root(), 0);
    assert_eq!(root & 0b11, 0b11);
    let l2 = root & 0x0000_FFFF_FFFF_F000;
    let l2_desc = pt.memory().read(l2, 0);
    assert_eq!(l2_desc & 0b11, 0b11);
    let l3 = l2_desc & 0x0000_FFFF_FFFF_F000;
    assert_eq!(pt.memory().read(l3, 1) & 0x0000_FFFF_FFFF_F003, 0x1003);
}

#[test]
fn translate_outside_the_input_range_is_none() {
    let mut pt = stage2(39);
    pt.map(0, 0, GIB, NORMAL_RW).unwrap();
    // Would alias entry 0 if the walker ignored the bits above va_bits.
    assert_eq!(pt.translate(1 << 39), None);
    assert_eq!(pt.translate(u64::MAX), None);
}

#[test]
fn for_each_mapping_covers_exactly_what_was_mapped() {
    let mut pt = stage2(40); // level-0 root
    let maps = [
        (0, 0x8000_0000, 0x5000),
        (MIB2, 0x1_0000_0000, 3 * MIB2 + 0x3000),
        (3 * GIB, 5 * GIB, GIB),
        ((1 << 39) + GIB - KIB4, 0x4000_0000, 2 * KIB4),
    ];
    for &(va, pa, size) in &maps {
        pt.map(va, pa, size, NORMAL_RW).unwrap();
    }
    let l = leaves(&pt);
    let total: u64 = l.iter().map(|&(_, _, s)| s).sum();
    assert_eq!(total, maps.iter().map(|&(_, _, s)| s).sum::<u64>());
    assert!(
        l.windows(2).all(|w| w[0].0 + w[0].2 <= w[1].0),
        "ascending, disjoint"
    );
    for &(va, pa, size) in &l {
        let &(mva, mpa, msize) = maps
            .iter()
            .find(|&&(mva, _, msize)| mva <= va && va + size <= mva + msize)
            .expect("leaf inside a requested range");
        assert!(va + size <= mva + msize);
        assert_eq!(pa, mpa + (va - mva));
    }
}

#[test]
fn out_of_memory_propagates_and_changes_no_translation() {
    // Root only: a page needs two more tables.
    let mem = TestMemory::with_limit(Some(2));
    let mut pt = PageTable::new(mem, Regime::Stage2, 39).unwrap();
    assert_eq!(
        pt.map(0x1000, 0x1000, KIB4, NORMAL_RW),
        Err(MapError::OutOfMemory)
    );
    assert!(leaves(&pt).is_empty());
    assert_eq!(pt.translate(0x1000), None);
    // A 1 GiB block needs no table and still fits.
    pt.map(GIB, GIB, GIB, NORMAL_RW).unwrap();
    // With memory back, the half-built path is reused.
    pt.memory_mut().limit = None;
    pt.map(0x1000, 0x1000, KIB4, NORMAL_RW).unwrap();
    assert_eq!(pt.memory().allocations, 3);
    assert_eq!(leaves(&pt), vec![(0x1000, 0x1000, KIB4), (GIB, GIB, GIB)]);
}

#[test]
fn out_of_memory_for_the_root_fails_new() {
    let r = PageTable::new(TestMemory::with_limit(Some(0)), Regime::El2Stage1, 39);
    assert!(matches!(r, Err(MapError::OutOfMemory)));
}
