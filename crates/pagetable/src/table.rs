//! Building and walking a 4 KiB-granule table (Arm ARM D8.2 "Translation
//! process", 4 KiB granule: 512 entries a table, 9 address bits a level).

use crate::descriptor::{self, classify, level_shift, Entry};
use crate::{Attrs, MapError, Mapping, Regime};

/// Memory holding translation tables. The hypervisor implements it over
/// identity-mapped pages; tests over a HashMap.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned 4 KiB page for a table; its physical
    /// address. `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Descriptor `index` (0..512) of the table at `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Write descriptor `index` (0..512) of the table at `table`.
    fn write(&mut self, table: u64, index: usize, descriptor: u64);
}

/// A 4 KiB page's write permission before [`PageTable::set_page_writable`]
/// changed it.
pub type WasWritable = bool;

const PAGE_SIZE: u64 = 1 << 12;
const ENTRIES: usize = 512;
const INDEX_MASK: u64 = ENTRIES as u64 - 1;
/// Output addresses are 48 bits (descriptor bits [47:12], no FEAT_LPA).
const OA_LIMIT: u64 = 1 << 48;
/// Deepest level: 4 KiB pages.
const LAST_LEVEL: u8 = 3;

/// A translation table for one regime.
pub struct PageTable<M: TableMemory> {
    mem: M,
    regime: Regime,
    va_bits: u8,
    start_level: u8,
    root: u64,
}

impl<M: TableMemory> PageTable<M> {
    /// An empty table for `va_bits` input address bits (stage 2: IPA bits),
    /// 25..=48. The root level is the one where a single 4 KiB root table
    /// covers `va_bits` (no concatenated tables; Arm ARM D8.2.7 "Concatenated
    /// translation tables" is not used): level 0 for 40..=48, level 1 for
    /// 31..=39, level 2 for 25..=30.
    pub fn new(mut mem: M, regime: Regime, va_bits: u8) -> Result<Self, MapError> {
        let start_level = match va_bits {
            40..=48 => 0,
            31..=39 => 1,
            25..=30 => 2,
            _ => return Err(MapError::Unsupported),
        };
        let root = alloc(&mut mem)?;
        Ok(Self {
            mem,
            regime,
            va_bits,
            start_level,
            root,
        })
    }

    /// Physical address of the root table (for VTTBR_EL2 / TTBR0_EL2).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Level of the root table (VTCR_EL2.SL0 is derived from it).
    pub fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Input address size in bits.
    pub fn va_bits(&self) -> u8 {
        self.va_bits
    }

    /// The regime the descriptors are encoded for.
    pub fn regime(&self) -> Regime {
        self.regime
    }

    pub fn memory(&self) -> &M {
        &self.mem
    }

    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Map `[va, va + size)` to `[pa, pa + size)`. `va`, `pa` and `size` must
    /// be 4 KiB aligned. Uses 1 GiB blocks (level 1) and 2 MiB blocks
    /// (level 2) wherever `va`, `pa` and the remaining size allow, pages
    /// otherwise.
    ///
    /// A failed map changes no translation: overlap is checked before
    /// anything is written, and all tables are allocated before any leaf is
    /// written. On [`MapError::OutOfMemory`] the tables allocated so far stay
    /// linked in, empty, and are reused by the next map.
    pub fn map(&mut self, va: u64, pa: u64, size: u64, attrs: Attrs) -> Result<(), MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if (va | pa | size) & (PAGE_SIZE - 1) != 0 {
            return Err(MapError::Unaligned);
        }
        if !descriptor::expressible(self.regime, attrs) {
            return Err(MapError::Unsupported);
        }
        let va_end = va.checked_add(size).ok_or(MapError::OutOfRange)?;
        let pa_end = pa.checked_add(size).ok_or(MapError::OutOfRange)?;
        if va_end > self.va_limit() || pa_end > OA_LIMIT {
            return Err(MapError::OutOfRange);
        }
        if let Some(mapped) = self.first_mapped(self.root, self.start_level, va, va_end) {
            return Err(MapError::AlreadyMapped { va: mapped });
        }
        let range = Range {
            va,
            end: va_end,
            pa,
            attrs,
        };
        // Pass 1 only allocates tables, so running out of memory leaves
        // every translation as it was; pass 2 then finds every table in
        // place and only writes leaves.
        self.map_in(self.root, self.start_level, range, Pass::Tables)?;
        self.map_in(self.root, self.start_level, range, Pass::Leaves)
    }

    /// Translate one address: `(pa, attrs, size of the leaf block or page)`,
    /// or `None` if `va` is not mapped or outside the input range.
    pub fn translate(&self, va: u64) -> Option<(u64, Attrs, u64)> {
        if va >= self.va_limit() {
            return None;
        }
        let mut table = self.root;
        for level in self.start_level..=LAST_LEVEL {
            let desc = self.mem.read(table, index(va, level));
            match classify(desc, level) {
                Entry::Invalid => return None,
                Entry::Table(next) => table = next,
                Entry::Leaf => {
                    let size = 1u64 << level_shift(level);
                    let base = desc & descriptor::OA_MASK & !(size - 1);
                    let attrs = descriptor::decode_attrs(self.regime, desc);
                    return Some((base | (va & (size - 1)), attrs, size));
                }
            }
        }
        None
    }

    /// Visit every leaf mapping in ascending `va` order. Adjacent leaves are
    /// reported separately, one call per block or page.
    pub fn for_each_mapping(&self, f: &mut dyn FnMut(Mapping)) {
        let root_entries = 1usize << (u32::from(self.va_bits) - level_shift(self.start_level));
        self.walk(self.root, self.start_level, 0, root_entries, f);
    }

    fn va_limit(&self) -> u64 {
        1u64 << self.va_bits
    }

    fn walk(&self, table: u64, level: u8, base: u64, entries: usize, f: &mut dyn FnMut(Mapping)) {
        let shift = level_shift(level);
        for i in 0..entries {
            let va = base | ((i as u64) << shift);
            let desc = self.mem.read(table, i);
            match classify(desc, level) {
                Entry::Invalid => {}
                Entry::Table(next) => self.walk(next, level + 1, va, ENTRIES, f),
                Entry::Leaf => {
                    let size = 1u64 << shift;
                    f(Mapping {
                        va,
                        pa: desc & descriptor::OA_MASK & !(size - 1),
                        size,
                        attrs: descriptor::decode_attrs(self.regime, desc),
                    });
                }
            }
        }
    }

    /// Splits every block leaf overlapping `[va, va + size)` into 4 KiB
    /// pages with the same output and attributes (dirty-page tracking
    /// write-protects page by page). The number of tables allocated.
    ///
    /// A block is replaced by its table in one descriptor write, without
    /// break-before-make (Arm ARM D8.16.1): the caller makes sure nothing
    /// translates through this table meanwhile (a stage-2 table's VM does
    /// not run) and invalidates the TLBs before it does again. On
    /// [`MapError::OutOfMemory`] the blocks split so far stay split (the
    /// same translations, in pages).
    pub fn split_to_pages(&mut self, va: u64, size: u64) -> Result<usize, MapError> {
        let end = self.checked_range(va, size)?;
        let mut n = 0;
        self.split_in(self.root, self.start_level, va, end, &mut n)?;
        Ok(n)
    }

    /// Sets the write permission of the 4 KiB page leaf that maps `va`;
    /// the permission it had. The caller invalidates the TLBs.
    pub fn set_page_writable(&mut self, va: u64, writable: bool) -> Result<WasWritable, MapError> {
        if va >= self.va_limit() {
            return Err(MapError::OutOfRange);
        }
        let mut table = self.root;
        for level in self.start_level..=LAST_LEVEL {
            let idx = index(va, level);
            let desc = self.mem.read(table, idx);
            match classify(desc, level) {
                Entry::Table(next) if level < LAST_LEVEL => table = next,
                Entry::Leaf if level == LAST_LEVEL => {
                    let mut attrs = descriptor::decode_attrs(self.regime, desc);
                    let was = attrs.write;
                    if was != writable {
                        attrs.write = writable;
                        if !descriptor::expressible(self.regime, attrs) {
                            return Err(MapError::Unsupported);
                        }
                        let pa = desc & descriptor::OA_MASK;
                        self.mem
                            .write(table, idx, descriptor::leaf(self.regime, level, pa, attrs));
                    }
                    return Ok(was);
                }
                _ => break,
            }
        }
        Err(MapError::NotAPage {
            va: va & !(PAGE_SIZE - 1),
        })
    }

    /// The reverse of [`split_to_pages`](Self::split_to_pages): every table
    /// inside `[va, va + size)` whose 512 entries are leaves of one size
    /// with contiguous, aligned output and equal attributes becomes one
    /// block again (2 MiB, then 1 GiB where that fits), deepest first.
    /// Each table taken out is passed to `unlinked`, to be freed once the
    /// TLBs no longer hold it. The number of blocks made. The same
    /// break-before-make caveat as for splitting applies.
    pub fn merge_blocks(
        &mut self,
        va: u64,
        size: u64,
        unlinked: &mut dyn FnMut(u64),
    ) -> Result<usize, MapError> {
        let end = self.checked_range(va, size)?;
        let mut n = 0;
        self.merge_in(self.root, self.start_level, va, end, unlinked, &mut n);
        Ok(n)
    }

    fn checked_range(&self, va: u64, size: u64) -> Result<u64, MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if (va | size) & (PAGE_SIZE - 1) != 0 {
            return Err(MapError::Unaligned);
        }
        let end = va.checked_add(size).ok_or(MapError::OutOfRange)?;
        if end > self.va_limit() {
            return Err(MapError::OutOfRange);
        }
        Ok(end)
    }

    fn split_in(
        &mut self,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        n: &mut usize,
    ) -> Result<(), MapError> {
        let mut va = start;
        while va < end {
            let chunk_end = entry_end(va, level).min(end);
            let idx = index(va, level);
            let desc = self.mem.read(table, idx);
            match classify(desc, level) {
                Entry::Invalid => {}
                Entry::Leaf if level == LAST_LEVEL => {}
                Entry::Leaf => {
                    let size = 1u64 << level_shift(level);
                    let base = desc & descriptor::OA_MASK & !(size - 1);
                    let attrs = descriptor::decode_attrs(self.regime, desc);
                    let next = alloc(&mut self.mem)?;
                    *n += 1;
                    let step = size / ENTRIES as u64;
                    for i in 0..ENTRIES {
                        let pa = base + i as u64 * step;
                        self.mem.write(
                            next,
                            i,
                            descriptor::leaf(self.regime, level + 1, pa, attrs),
                        );
                    }
                    self.mem.write(table, idx, descriptor::table(next));
                    self.split_in(next, level + 1, va, chunk_end, n)?;
                }
                Entry::Table(next) => self.split_in(next, level + 1, va, chunk_end, n)?,
            }
            va = chunk_end;
        }
        Ok(())
    }

    fn merge_in(
        &mut self,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        unlinked: &mut dyn FnMut(u64),
        n: &mut usize,
    ) {
        let mut va = start;
        while va < end {
            let entry_start = va & !((1u64 << level_shift(level)) - 1);
            let chunk_end = entry_end(va, level).min(end);
            let idx = index(va, level);
            if let Entry::Table(next) = classify(self.mem.read(table, idx), level) {
                self.merge_in(next, level + 1, va, chunk_end, unlinked, n);
                // Only a table the range covers whole, at a level that has
                // blocks.
                let whole = entry_start >= start && entry_end(va, level) <= end;
                if whole && matches!(level, 1 | 2) {
                    if let Some(block) = self.mergeable(next, level) {
                        self.mem.write(table, idx, block);
                        unlinked(next);
                        *n += 1;
                    }
                }
            }
            va = chunk_end;
        }
    }

    /// The block descriptor at `level` equal to table `t`'s 512 leaves (at
    /// `level + 1`), if they make one.
    fn mergeable(&self, t: u64, level: u8) -> Option<u64> {
        let child = level + 1;
        let step = 1u64 << level_shift(child);
        let size = 1u64 << level_shift(level);
        let first = self.mem.read(t, 0);
        if !matches!(classify(first, child), Entry::Leaf) {
            return None;
        }
        let base = first & descriptor::OA_MASK;
        let attrs = descriptor::decode_attrs(self.regime, first);
        if base & (size - 1) != 0 {
            return None;
        }
        for i in 0..ENTRIES {
            let d = self.mem.read(t, i);
            let same = matches!(classify(d, child), Entry::Leaf)
                && d == descriptor::leaf(self.regime, child, base + i as u64 * step, attrs);
            if !same {
                return None;
            }
        }
        Some(descriptor::leaf(self.regime, level, base, attrs))
    }

    /// The lowest address in `[start, end)` that `table` (at `level`) maps.
    fn first_mapped(&self, table: u64, level: u8, start: u64, end: u64) -> Option<u64> {
        let mut va = start;
        while va < end {
            let chunk_end = entry_end(va, level).min(end);
            match classify(self.mem.read(table, index(va, level)), level) {
                Entry::Invalid => {}
                Entry::Leaf => return Some(va),
                Entry::Table(next) => {
                    if let Some(found) = self.first_mapped(next, level + 1, va, chunk_end) {
                        return Some(found);
                    }
                }
            }
            va = chunk_end;
        }
        None
    }

    /// One pass of `map` over the part of `range` that `table` (at `level`)
    /// covers.
    fn map_in(&mut self, table: u64, level: u8, range: Range, pass: Pass) -> Result<(), MapError> {
        let mut va = range.va;
        let mut pa = range.pa;
        while va < range.end {
            let chunk_end = entry_end(va, level).min(range.end);
            let idx = index(va, level);
            let sub = Range {
                va,
                end: chunk_end,
                pa,
                attrs: range.attrs,
            };
            match classify(self.mem.read(table, idx), level) {
                Entry::Invalid if leaf_fits(level, va, pa, chunk_end) => {
                    if pass == Pass::Leaves {
                        let desc = descriptor::leaf(self.regime, level, pa, range.attrs);
                        self.mem.write(table, idx, desc);
                    }
                }
                Entry::Invalid => {
                    let next = alloc(&mut self.mem)?;
                    self.mem.write(table, idx, descriptor::table(next));
                    self.map_in(next, level + 1, sub, pass)?;
                }
                // An empty table left behind by an out-of-memory map (the
                // overlap check proved it maps nothing in this range).
                Entry::Table(next) => self.map_in(next, level + 1, sub, pass)?,
                // Excluded by the overlap check in `map`.
                Entry::Leaf => return Err(MapError::AlreadyMapped { va }),
            }
            pa += chunk_end - va;
            va = chunk_end;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Range {
    va: u64,
    end: u64,
    pa: u64,
    attrs: Attrs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Allocate and link every table the range needs.
    Tables,
    /// Write the block and page descriptors.
    Leaves,
}

fn alloc<M: TableMemory>(mem: &mut M) -> Result<u64, MapError> {
    let table = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
    debug_assert!(
        table & (PAGE_SIZE - 1) == 0 && table < OA_LIMIT,
        "TableMemory returned a table at {table:#x}, not a 4 KiB-aligned 48-bit address"
    );
    Ok(table)
}

/// Index of `va` in a table at `level`.
fn index(va: u64, level: u8) -> usize {
    // Masked to 9 bits, so always below ENTRIES.
    ((va >> level_shift(level)) & INDEX_MASK) as usize
}

/// End of the entry at `level` that contains `va`. Inputs are below 2^48, so
/// this cannot overflow.
fn entry_end(va: u64, level: u8) -> u64 {
    let size = 1u64 << level_shift(level);
    (va & !(size - 1)) + size
}

/// Whether `[va, end)` mapped to `pa` can be one leaf at `level`: a page at
/// level 3, a block at level 1 (1 GiB) or 2 (2 MiB) when `va` and `pa` are
/// aligned to it and it is wholly covered. With the 4 KiB granule there are
/// no level-0 blocks (Arm ARM D8.3.1, without FEAT_LPA2).
fn leaf_fits(level: u8, va: u64, pa: u64, end: u64) -> bool {
    match level {
        LAST_LEVEL => true,
        1 | 2 => {
            let size = 1u64 << level_shift(level);
            (va | pa) & (size - 1) == 0 && end - va == size
        }
        _ => false,
    }
}
