//! The EL2 stage-1 MMU and the memory that holds translation tables.

use alloc::alloc::{alloc_zeroed, Layout};
use bulkhead_pagetable::TableMemory;
use core::sync::atomic::{AtomicU64, Ordering};

/// Translation tables in hypervisor memory, which is identity-mapped: the
/// physical address of a table is also the address EL2 uses to write it.
pub struct IdentityTables;

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("4 KiB page layout"),
};

impl TableMemory for IdentityTables {
    fn alloc_table(&mut self) -> Option<u64> {
        // SAFETY: PAGE has a nonzero size.
        let p = unsafe { alloc_zeroed(PAGE) };
        if p.is_null() {
            None
        } else {
            Some(p as u64)
        }
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` came from `alloc_table` (a live 4 KiB page, freed
        // only once unlinked: `free_table`) and the page-table crate keeps `index` below 512.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index & 511)) }
    }

    fn write(&mut self, table: u64, index: usize, descriptor: u64) {
        // SAFETY: as for `read`. Tables are written before they are
        // installed, or (stage 2) while no vCPU of that VM runs.
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index & 511), descriptor) }
    }
}

/// Gives back a table page from [`IdentityTables`].
///
/// # Safety
/// `table` came from `IdentityTables::alloc_table`, is linked into no
/// table any more, and no TLB or walk cache can hold it (the TLBs were
/// invalidated for its VMID since it was unlinked).
pub unsafe fn free_table(table: u64) {
    // SAFETY: per the caller, the page is an allocation of PAGE's layout
    // that nothing uses.
    unsafe { alloc::alloc::dealloc(table as *mut u8, PAGE) }
}

/// SCTLR_EL2: M (MMU), C (data cache), SA (stack alignment check), I
/// (instruction cache), WXN (writable never executable), plus RES1 bits
/// (Arm ARM D24.2.151, non-VHE layout).
pub const SCTLR_EL2_ON: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12) | (1 << 19) | 0x30c5_0830;

/// What a secondary CPU loads before turning on its MMU (read by entry.S
/// with the MMU off, so it is cleaned to the point of coherency).
#[repr(C)]
pub struct SecondaryMmu {
    pub mair: AtomicU64,
    pub tcr: AtomicU64,
    pub ttbr0: AtomicU64,
    pub sctlr: AtomicU64,
}

#[unsafe(no_mangle)]
pub static SECONDARY_MMU: SecondaryMmu = SecondaryMmu {
    mair: AtomicU64::new(0),
    tcr: AtomicU64::new(0),
    ttbr0: AtomicU64::new(0),
    sctlr: AtomicU64::new(0),
};

/// Turns on the EL2 MMU with `ttbr0` as the root, and records the settings
/// for the secondary CPUs.
///
/// # Safety
/// The table must identity-map all code, data and stacks the hypervisor
/// uses, with the attributes in `mair`.
pub unsafe fn enable(mair: u64, tcr: u64, ttbr0: u64) {
    SECONDARY_MMU.mair.store(mair, Ordering::Relaxed);
    SECONDARY_MMU.tcr.store(tcr, Ordering::Relaxed);
    SECONDARY_MMU.ttbr0.store(ttbr0, Ordering::Relaxed);
    SECONDARY_MMU.sctlr.store(SCTLR_EL2_ON, Ordering::Relaxed);
    // SAFETY: per the caller; the invalidation drops anything the TLB held
    // from before (there was no translation: the MMU was off).
    unsafe {
        core::arch::asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr0}",
            "isb",
            "tlbi alle2",
            "dsb nsh",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr0 = in(reg) ttbr0,
            sctlr = in(reg) SCTLR_EL2_ON,
            options(nostack)
        )
    };
    super::cache::clean_to_poc(
        core::ptr::addr_of!(SECONDARY_MMU) as usize,
        core::mem::size_of::<SecondaryMmu>(),
    );
}
