//! Which host-physical memory is free. The hypervisor starts from the RAM in
//! the host device tree, reserves itself, the device tree and the payload,
//! then hands 2 MiB-aligned ranges to VMs. Pure bookkeeping, host-tested.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

/// A half-open range [start, end) of physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn new(start: u64, size: u64) -> Option<Self> {
        Some(Self {
            start,
            end: start.checked_add(size)?,
        })
    }
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
    pub fn contains(&self, other: &Range) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// Free physical memory, as sorted, disjoint ranges.
#[derive(Default, Debug)]
pub struct FreeList {
    ranges: Vec<Range>,
}

impl FreeList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds RAM. Overlap with what is already free is merged.
    pub fn add(&mut self, r: Range) {
        if r.start >= r.end {
            return;
        }
        self.ranges.push(r);
        self.ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
    }

    /// Removes `r` from the free memory (whatever part of it is free).
    pub fn reserve(&mut self, r: Range) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for f in self.ranges.drain(..) {
            if !f.overlaps(&r) {
                out.push(f);
                continue;
            }
            if f.start < r.start {
                out.push(Range {
                    start: f.start,
                    end: r.start,
                });
            }
            if r.end < f.end {
                out.push(Range {
                    start: r.end,
                    end: f.end,
                });
            }
        }
        self.ranges = out;
    }

    /// Takes exactly `r` if all of it is free.
    pub fn take(&mut self, r: Range) -> bool {
        if r.start >= r.end || !self.ranges.iter().any(|f| f.contains(&r)) {
            return false;
        }
        self.reserve(r);
        true
    }

    /// Takes the lowest free `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<Range> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let found = self.ranges.iter().find_map(|f| {
            let start = f.start.checked_add(align - 1)? & !(align - 1);
            let r = Range::new(start, size)?;
            f.contains(&r).then_some(r)
        })?;
        self.reserve(found);
        Some(found)
    }

    /// Returns a range to the free list.
    pub fn free(&mut self, r: Range) {
        self.add(r);
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn total(&self) -> u64 {
        self.ranges.iter().map(Range::size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = 2 << 20;

    fn ram() -> FreeList {
        let mut f = FreeList::new();
        f.add(Range::new(0x4000_0000, 0x4000_0000).unwrap());
        f
    }

    #[test]
    fn reserve_splits_a_range() {
        let mut f = ram();
        f.reserve(Range::new(0x4800_0000, 0x10_0000).unwrap());
        assert_eq!(f.ranges().len(), 2);
        assert_eq!(f.total(), 0x4000_0000 - 0x10_0000);
    }

    #[test]
    fn alloc_is_aligned_and_never_overlaps_reservations() {
        let mut f = ram();
        f.reserve(Range::new(0x4000_0000, 0x0123_4000).unwrap());
        let a = f.alloc(16 << 20, M2).unwrap();
        assert_eq!(a.start % M2, 0);
        assert!(a.start >= 0x4123_4000);
        let b = f.alloc(16 << 20, M2).unwrap();
        assert!(!a.overlaps(&b));
    }

    #[test]
    fn take_requires_the_whole_range_free() {
        let mut f = ram();
        let r = Range::new(0x5000_0000, M2).unwrap();
        assert!(f.take(r));
        assert!(!f.take(r), "second take of the same range must fail");
        assert!(!f.take(Range::new(0x3000_0000, M2).unwrap()), "outside RAM");
    }

    #[test]
    fn alloc_fails_when_memory_is_exhausted() {
        let mut f = FreeList::new();
        f.add(Range::new(0, 4 << 20).unwrap());
        assert!(f.alloc(4 << 20, M2).is_some());
        assert!(f.alloc(M2, M2).is_none());
    }

    #[test]
    fn free_merges_neighbours() {
        let mut f = ram();
        let a = f.alloc(M2, M2).unwrap();
        f.free(a);
        assert_eq!(f.ranges().len(), 1);
        assert_eq!(f.total(), 0x4000_0000);
    }

    #[test]
    fn zero_size_and_bad_alignment_are_refused() {
        let mut f = ram();
        assert!(f.alloc(0, M2).is_none());
        assert!(f.alloc(M2, 3).is_none());
        assert!(Range::new(u64::MAX, 2).is_none());
    }
}
