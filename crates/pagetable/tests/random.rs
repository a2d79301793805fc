//! Random maps from a deterministic LCG, checked page by page against a
//! simple model.

mod common;

use bulkhead_pagetable::MapError;
use common::*;

/// Knuth's MMIX LCG; the top bits are the good ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The window the maps fall in: 4 GiB, so 1 GiB blocks are possible and
/// every page can be checked.
const WINDOW: u64 = 4 * GIB;

/// A random 4 KiB-aligned range, sometimes aligned for 2 MiB or 1 GiB
/// blocks (and sometimes with a misaligned pa to force pages). Small
/// ranges soon touch every GiB of the window, so `first` forces a 1 GiB
/// candidate while the window is still empty.
fn random_range(rng: &mut Lcg, first: bool) -> (u64, u64, u64) {
    let kind = rng.below(10);
    let (align, max_units) = match kind {
        _ if first => (GIB, 1),
        0 => (GIB, 1),
        1..=3 => (MIB2, 6),
        _ => (KIB4, 40),
    };
    let size = align * (1 + rng.below(max_units))
        + if rng.below(3) == 0 {
            KIB4 * rng.below(8)
        } else {
            0
        };
    let va = rng.below(WINDOW / align) * align;
    let pa_align = if rng.below(4) == 0 && !first {
        KIB4
    } else {
        align
    };
    let pa = rng.below((1 << 40) / pa_align) * pa_align;
    (va, pa, size)
}

fn run(seed: u64) {
    let mut rng = Lcg(seed);
    let mut pt = stage2(39);
    let mut model: Vec<(u64, u64, u64)> = Vec::new();
    let mut rejected = 0;
    for i in 0..150 {
        let (va, pa, size) = random_range(&mut rng, i == 0);
        let end = va + size;
        let overlap = model
            .iter()
            .filter(|&&(mva, _, msize)| mva < end && va < mva + msize)
            .map(|&(mva, _, _)| mva.max(va))
            .min();
        let result = pt.map(va, pa, size, NORMAL_RW);
        match (overlap, end > 1 << 39) {
            (_, true) => assert_eq!(result, Err(MapError::OutOfRange)),
            (Some(first), false) => {
                assert_eq!(
                    result,
                    Err(MapError::AlreadyMapped { va: first }),
                    "seed {seed}"
                );
                rejected += 1;
            }
            (None, false) => {
                assert_eq!(result, Ok(()), "seed {seed} map {va:#x} {pa:#x} {size:#x}");
                model.push((va, pa, size));
            }
        }
    }
    assert!(
        model.len() > 10 && rejected > 10,
        "seed {seed} exercises both outcomes"
    );

    model.sort();
    // Past the last mapped byte, plus a margin, everything must be unmapped.
    let limit = model
        .iter()
        .map(|&(va, _, size)| va + size)
        .max()
        .unwrap_or(0)
        + MIB2;
    let mut next = model.iter().peekable();
    let mut page = 0;
    while page < limit {
        while next.peek().is_some_and(|&&(va, _, size)| va + size <= page) {
            next.next();
        }
        let expected = next
            .peek()
            .filter(|&&&(va, _, _)| va <= page)
            .map(|&&(va, pa, _)| pa + (page - va));
        assert_eq!(
            pt.translate(page).map(|t| t.0),
            expected,
            "seed {seed} va {page:#x}"
        );
        page += KIB4;
    }

    let total: u64 = model.iter().map(|&(_, _, s)| s).sum();
    let mut walked = 0;
    let mut sizes = [0usize; 3];
    pt.for_each_mapping(&mut |m| {
        walked += m.size;
        match m.size {
            KIB4 => sizes[0] += 1,
            MIB2 => sizes[1] += 1,
            GIB => sizes[2] += 1,
            other => panic!("leaf of {other:#x} bytes"),
        }
    });
    assert_eq!(walked, total, "seed {seed}");
    assert!(
        sizes.iter().all(|&n| n > 0),
        "seed {seed} uses every leaf size: {sizes:?}"
    );
}

#[test]
fn random_non_overlapping_maps_translate_page_by_page() {
    for seed in [1, 0xdead_beef, 42] {
        run(seed);
    }
}
