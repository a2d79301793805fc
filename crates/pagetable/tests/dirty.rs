//! Splitting blocks into pages, write-protecting pages, and merging them
//! back: what dirty-page tracking for live migration does to a stage-2
//! table.

mod common;

use bulkhead_pagetable::MapError;
use common::*;

const RAM: u64 = 0x4000_0000;
const PA: u64 = 0x8_4000_0000;

#[test]
fn split_keeps_every_translation_in_pages() {
    let mut pt = stage2(39);
    // 1 GiB + 2 MiB + 4 KiB: a level-1 block, a level-2 block and a page.
    let size = GIB + MIB2 + KIB4;
    pt.map(RAM, PA, size, NORMAL_RWX).unwrap();
    let before: Vec<_> = (0..size)
        .step_by(0x3_3000)
        .map(|o| pt.translate(RAM + o))
        .collect();
    let tables = pt.split_to_pages(RAM, size).unwrap();
    // 1 table for the 1 GiB block, then 512 + 1 level-3 tables.
    assert_eq!(tables, 1 + 512 + 1);
    let after: Vec<_> = (0..size)
        .step_by(0x3_3000)
        .map(|o| pt.translate(RAM + o))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        let ((pb, ab, _), (pa, aa, sa)) = (b.unwrap(), a.unwrap());
        assert_eq!((pb, ab), (pa, aa));
        assert_eq!(sa, KIB4, "still a block");
    }
    assert_eq!(leaves(&pt).len() as u64, size / KIB4);
    // Splitting again changes nothing.
    assert_eq!(pt.split_to_pages(RAM, size).unwrap(), 0);
}

#[test]
fn split_of_part_of_a_block_splits_the_whole_block() {
    let mut pt = stage2(39);
    pt.map(RAM, PA, 4 * MIB2, NORMAL_RW).unwrap();
    pt.split_to_pages(RAM + MIB2 + KIB4, KIB4).unwrap();
    let sizes: Vec<u64> = leaves(&pt).iter().map(|l| l.2).collect();
    assert_eq!(sizes.iter().filter(|&&s| s == MIB2).count(), 3);
    assert_eq!(sizes.iter().filter(|&&s| s == KIB4).count(), 512);
}

#[test]
fn pages_are_write_protected_one_by_one() {
    let mut pt = stage2(39);
    pt.map(RAM, PA, MIB2, NORMAL_RWX).unwrap();
    // Inside a block: not a page.
    assert_eq!(
        pt.set_page_writable(RAM + 0x5123, false),
        Err(MapError::NotAPage { va: RAM + 0x5000 })
    );
    pt.split_to_pages(RAM, MIB2).unwrap();
    assert_eq!(pt.set_page_writable(RAM + 0x5123, false), Ok(true));
    assert_eq!(pt.set_page_writable(RAM + 0x5000, false), Ok(false));
    let (_, attrs, _) = pt.translate(RAM + 0x5000).unwrap();
    assert!(!attrs.write && attrs.read && attrs.exec);
    // Its neighbours keep write access; the raw descriptor's S2AP[1] is clear.
    assert!(pt.translate(RAM + 0x4000).unwrap().1.write);
    assert!(pt.translate(RAM + 0x6000).unwrap().1.write);
    let (desc, level) = raw_leaf(&pt, RAM + 0x5000).unwrap();
    assert_eq!((level, desc & (1 << 7), desc & (1 << 6)), (3, 0, 1 << 6));
    assert_eq!(pt.set_page_writable(RAM + 0x5000, true), Ok(false));
    assert!(pt.translate(RAM + 0x5000).unwrap().1.write);
    // Unmapped, or past the input range.
    assert!(matches!(
        pt.set_page_writable(RAM + MIB2, false),
        Err(MapError::NotAPage { .. })
    ));
    assert_eq!(
        pt.set_page_writable(1 << 39, false),
        Err(MapError::OutOfRange)
    );
}

#[test]
fn merge_restores_the_blocks_and_hands_back_the_tables() {
    let mut pt = stage2(39);
    let size = GIB + 2 * MIB2;
    pt.map(RAM, PA, size, NORMAL_RWX).unwrap();
    let original = leaves(&pt);
    let tables = pt.split_to_pages(RAM, size).unwrap();
    let mut freed = Vec::new();
    let blocks = pt.merge_blocks(RAM, size, &mut |t| freed.push(t)).unwrap();
    // 512 2 MiB blocks, then the 1 GiB one, and the 2 x 2 MiB after it.
    assert_eq!(blocks, 512 + 1 + 2);
    // Every table the split made (the level-2 table of the last 4 MiB was
    // `map`'s and stays).
    assert_eq!(freed.len(), tables);
    assert_eq!(leaves(&pt), original);
}

#[test]
fn a_protected_or_unaligned_table_is_not_merged() {
    let mut pt = stage2(39);
    pt.map(RAM, PA, 2 * MIB2, NORMAL_RW).unwrap();
    pt.split_to_pages(RAM, 2 * MIB2).unwrap();
    pt.set_page_writable(RAM + 0x7000, false).unwrap();
    let mut freed = 0;
    let n = pt.merge_blocks(RAM, 2 * MIB2, &mut |_| freed += 1).unwrap();
    assert_eq!(
        (n, freed),
        (1, 1),
        "only the block without the read-only page"
    );
    assert_eq!(pt.translate(RAM + 0x7000).unwrap().2, KIB4);
    assert_eq!(pt.translate(RAM + MIB2).unwrap().2, MIB2);
    // Pages whose output is not 2 MiB-aligned stay pages.
    let mut pt = stage2(39);
    pt.map(RAM, PA + KIB4, MIB2, NORMAL_RW).unwrap();
    assert_eq!(pt.merge_blocks(RAM, MIB2, &mut |_| {}).unwrap(), 0);
    assert_eq!(leaves(&pt).len(), 512);
}

#[test]
fn a_range_that_covers_part_of_a_table_does_not_merge_it() {
    let mut pt = stage2(39);
    pt.map(RAM, PA, MIB2, NORMAL_RW).unwrap();
    pt.split_to_pages(RAM, MIB2).unwrap();
    assert_eq!(pt.merge_blocks(RAM, MIB2 - KIB4, &mut |_| {}).unwrap(), 0);
    assert_eq!(pt.merge_blocks(RAM, MIB2, &mut |_| {}).unwrap(), 1);
}

#[test]
fn split_out_of_memory_keeps_the_translations() {
    let mut pt = stage2(39);
    pt.map(RAM, PA, 4 * MIB2, NORMAL_RW).unwrap();
    let used = pt.memory().allocations;
    pt.memory_mut().limit = Some(used + 2);
    assert_eq!(pt.split_to_pages(RAM, 4 * MIB2), Err(MapError::OutOfMemory));
    for o in (0..4 * MIB2).step_by(0x1_1000) {
        assert_eq!(pt.translate(RAM + o).map(|t| t.0), Some(PA + o));
    }
}

#[test]
fn bad_ranges_are_refused() {
    let mut pt = stage2(39);
    assert_eq!(pt.split_to_pages(RAM, 0), Err(MapError::ZeroSize));
    assert_eq!(pt.split_to_pages(RAM + 1, KIB4), Err(MapError::Unaligned));
    assert_eq!(
        pt.split_to_pages(!0xfff, KIB4 * 2),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        pt.merge_blocks(1 << 39, KIB4, &mut |_| {}),
        Err(MapError::OutOfRange)
    );
}
