//! Boot-time audit of the live EL2 stage-1 map. `build_el2_map` (main.rs)
//! says what it means to map; this walks what the MMU actually uses, from
//! TTBR0_EL2 and TCR_EL2, and refuses to boot unless:
//!
//! - no leaf is both writable and executable (and SCTLR_EL2.WXN is set);
//! - every page of `.text` is mapped, executable, read-only Normal memory,
//!   and nothing outside `.text` is executable (so `.rodata`, data, `.bss`,
//!   the heap, the stacks and the devices are all execute-never);
//! - no leaf gives write access to the physical pages of `.text` or
//!   `.rodata`, at their own address or through an alias;
//! - each pCPU's stack guard page is unmapped, so an overflow faults.

use super::{guard_page, ImageLayout, MAX_CPUS, STACK_GUARD};
use alloc::format;
use alloc::string::String;
use bulkhead_pagetable::{Mapping, MemType, PageTable, Regime, TableMemory};

/// TTBR0_EL2.BADDR for a 4 KiB-aligned root (bits [47:12]).
const TTBR_BADDR: u64 = 0x0000_ffff_ffff_f000;
/// TCR_EL2.T0SZ, bits [5:0].
const TCR_T0SZ: u64 = 0x3f;
/// SCTLR_EL2.M (bit 0) and WXN (bit 19).
const SCTLR_M: u64 = 1 << 0;
const SCTLR_WXN: u64 = 1 << 19;

/// A read-only view of the tables the MMU walks. `PageTable::new` takes its
/// root from `alloc_table`, which hands over the live root once.
struct LiveTables {
    root: Option<u64>,
}

impl TableMemory for LiveTables {
    fn alloc_table(&mut self) -> Option<u64> {
        self.root.take()
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` is TTBR0_EL2's root or a table address from one of
        // its table descriptors: pages of the hypervisor's heap, which is
        // identity-mapped readable (the MMU is walking them right now);
        // `index & 511` stays inside the 4 KiB table.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index & 511)) }
    }

    fn write(&mut self, _table: u64, _index: usize, _descriptor: u64) {
        // Only `for_each_mapping` runs on this view, and it never writes.
        panic!("EL2 map check: the live EL2 tables are read-only here");
    }
}

/// What the audit found: the number of leaves and of unmapped guard pages.
pub struct Summary {
    pub leaves: usize,
    pub guard_pages: usize,
}

/// Audits the live EL2 map against the image layout, logs one line, and
/// panics (refusing to boot) on the first violation. Call it on the boot
/// CPU right after the MMU is turned on.
pub fn verify_el2_map(layout: &ImageLayout) {
    match audit(layout) {
        Ok(s) => log::info!(
            "EL2 map: {} leaves, W^X holds, text read-only, {} guard pages unmapped",
            s.leaves,
            s.guard_pages
        ),
        Err(why) => panic!("EL2 map check failed, refusing to boot: {why}"),
    }
}

fn audit(layout: &ImageLayout) -> Result<Summary, String> {
    let (ttbr0, tcr, sctlr): (u64, u64, u64);
    // SAFETY: reading system registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {t}, ttbr0_el2",
            "mrs {c}, tcr_el2",
            "mrs {s}, sctlr_el2",
            t = out(reg) ttbr0,
            c = out(reg) tcr,
            s = out(reg) sctlr,
            options(nomem, nostack, preserves_flags)
        )
    };
    if sctlr & SCTLR_M == 0 {
        return Err(format!("the EL2 MMU is off (SCTLR_EL2 {sctlr:#x})"));
    }
    if sctlr & SCTLR_WXN == 0 {
        return Err(format!("SCTLR_EL2.WXN is clear ({sctlr:#x})"));
    }
    let root = ttbr0 & TTBR_BADDR;
    let secondary = super::mmu::SECONDARY_MMU
        .ttbr0
        .load(core::sync::atomic::Ordering::Relaxed);
    if secondary & TTBR_BADDR != root {
        return Err(format!(
            "secondary CPUs would use root {secondary:#x}, not the audited {root:#x}"
        ));
    }
    let va_bits = 64 - (tcr & TCR_T0SZ) as u8;
    let table = PageTable::new(LiveTables { root: Some(root) }, Regime::El2Stage1, va_bits)
        .map_err(|e| format!("TCR_EL2 {tcr:#x} gives {va_bits}-bit VAs: {e:?}"))?;

    let text = (layout.start as u64, layout.text_end as u64);
    let rodata = (layout.text_end as u64, layout.rodata_end as u64);
    let overlap = |a: (u64, u64), b: (u64, u64)| a.0.max(b.0) < a.1.min(b.1);
    let overlap_len = |a: (u64, u64), b: (u64, u64)| a.1.min(b.1).saturating_sub(a.0.max(b.0));

    let mut leaves = 0usize;
    let mut text_mapped = 0u64;
    let mut first_error: Option<String> = None;
    table.for_each_mapping(&mut |m: Mapping| {
        leaves += 1;
        if first_error.is_some() {
            return;
        }
        let va = (m.va, m.va + m.size);
        let pa = (m.pa, m.pa + m.size);
        let a = m.attrs;
        let guarded = (0..MAX_CPUS).find(|&c| {
            let g = guard_page(c) as u64;
            overlap(va, (g, g + STACK_GUARD as u64))
        });
        let problem = if a.write && a.exec {
            Some(String::from("is writable and executable"))
        } else if a.exec && (va.0 < text.0 || va.1 > text.1) {
            Some(String::from("is executable outside .text"))
        } else if overlap(va, text) && (!a.exec || a.write || a.mem != MemType::Normal) {
            Some(String::from(
                "maps .text as other than read-only executable Normal memory",
            ))
        } else if a.write && (overlap(pa, text) || overlap(pa, rodata)) {
            Some(String::from("gives write access to .text or .rodata"))
        } else if overlap(va, rodata) && (a.write || a.exec) {
            Some(String::from("maps .rodata writable or executable"))
        } else {
            guarded.map(|cpu| format!("maps cpu{cpu}'s stack guard page"))
        };
        if let Some(p) = problem {
            first_error = Some(format!(
                "leaf {:#x}..{:#x} (PA {:#x}, {a:?}) {p}",
                va.0, va.1, pa.0
            ));
            return;
        }
        text_mapped += overlap_len(va, text);
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    if text_mapped != text.1 - text.0 {
        return Err(format!(
            "only {text_mapped:#x} of the {:#x} bytes of .text at {:#x} are mapped",
            text.1 - text.0,
            text.0
        ));
    }
    Ok(Summary {
        leaves,
        guard_pages: MAX_CPUS,
    })
}
