//! Cache maintenance for memory the guest will read with its MMU off.

/// Smallest data cache line (CTR_EL0.DminLine), in bytes.
fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: CTR_EL0 is a read-only identification register.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates [start, start+len) to the point of coherency and
/// invalidates the instruction cache, so a guest starting with its MMU and
/// caches off sees what EL2 wrote through its cacheable mapping.
pub fn clean_invalidate_for_guest(start: usize, len: usize) {
    let line = dcache_line();
    let mut p = start & !(line - 1);
    let end = start.saturating_add(len);
    while p < end {
        // SAFETY: DC CIVAC on mapped memory only affects caches, not contents.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) p, options(nostack)) };
        p += line;
    }
    // SAFETY: barriers and I-cache invalidation have no memory effects.
    unsafe { core::arch::asm!("dsb ish", "ic ialluis", "dsb ish", "isb", options(nostack)) };
}

/// Cleans one object to the point of coherency (for data a CPU reads with
/// its MMU still off).
pub fn clean_to_poc(start: usize, len: usize) {
    let line = dcache_line();
    let mut p = start & !(line - 1);
    let end = start.saturating_add(len);
    while p < end {
        // SAFETY: DC CVAC on mapped memory only affects caches.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) p, options(nostack)) };
        p += line;
    }
    // SAFETY: barrier only.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
}
