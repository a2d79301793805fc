//! A HashMap-backed `TableMemory` for host tests, and helpers that read raw
//! descriptors without going through the crate's own walker.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use bulkhead_pagetable::{Attrs, MemType, PageTable, Regime, TableMemory};

pub const KIB4: u64 = 0x1000;
pub const MIB2: u64 = 0x20_0000;
pub const GIB: u64 = 0x4000_0000;

/// Tables at made-up, 4 KiB-aligned physical addresses. Counts allocations
/// and can refuse them past a limit. Reading or writing a table that was
/// never allocated, or an index past 511, panics: the walker must never do
/// either.
pub struct TestMemory {
    tables: HashMap<u64, Vec<u64>>,
    next: u64,
    pub allocations: usize,
    pub limit: Option<usize>,
}

impl TestMemory {
    pub fn new() -> Self {
        Self::with_limit(None)
    }

    pub fn with_limit(limit: Option<usize>) -> Self {
        Self {
            tables: HashMap::new(),
            // Far from any address the tests map, to catch a table address
            // confused with an output address.
            next: 0x7_0000_0000,
            allocations: 0,
            limit,
        }
    }

    /// Every table and every non-zero descriptor, for comparing before and
    /// after a failed map.
    pub fn snapshot(&self) -> BTreeMap<u64, Vec<(usize, u64)>> {
        self.tables
            .iter()
            .map(|(&t, d)| {
                let nonzero = d
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, v)| v != 0)
                    .collect();
                (t, nonzero)
            })
            .collect()
    }
}

impl TableMemory for TestMemory {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.limit.is_some_and(|l| self.allocations >= l) {
            return None;
        }
        let table = self.next;
        self.next += KIB4;
        self.allocations += 1;
        self.tables.insert(table, vec![0; 512]);
        Some(table)
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.tables
            .get(&table)
            .expect("read of an unallocated table")[index]
    }

    fn write(&mut self, table: u64, index: usize, descriptor: u64) {
        self.tables
            .get_mut(&table)
            .expect("write to an unallocated table")[index] = descriptor;
    }
}

pub fn stage2(ipa_bits: u8) -> PageTable<TestMemory> {
    PageTable::new(TestMemory::new(), Regime::Stage2, ipa_bits).expect("new table")
}

pub fn stage1(va_bits: u8) -> PageTable<TestMemory> {
    PageTable::new(TestMemory::new(), Regime::El2Stage1, va_bits).expect("new table")
}

pub const NORMAL_RW: Attrs = Attrs {
    mem: MemType::Normal,
    read: true,
    write: true,
    exec: false,
};

pub const NORMAL_RWX: Attrs = Attrs {
    mem: MemType::Normal,
    read: true,
    write: true,
    exec: true,
};

/// The raw leaf descriptor for `va` and its level, found by an independent
/// walk over the memory: bits [1:0] == 0b11 below level 3 is a table.
pub fn raw_leaf(pt: &PageTable<TestMemory>, va: u64) -> Option<(u64, u8)> {
    let mut table = pt.root();
    for level in pt.start_level()..=3 {
        let shift = 12 + 9 * (3 - u32::from(level));
        let desc = pt.memory().read(table, ((va >> shift) & 0x1ff) as usize);
        match desc & 0b11 {
            0b11 if level < 3 => table = desc & 0x0000_FFFF_FFFF_F000,
            0b11 | 0b01 => return Some((desc, level)),
            _ => return None,
        }
    }
    None
}

/// All leaves, in order, as (va, pa, size).
pub fn leaves(pt: &PageTable<TestMemory>) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    pt.for_each_mapping(&mut |m| out.push((m.va, m.pa, m.size)));
    out
}
