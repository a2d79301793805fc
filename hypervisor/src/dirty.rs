//! Dirty-page tracking for live migration (docs/snapshot.md, "Live
//! migration"): which pages of a VM's RAM the guest wrote since they were
//! last copied.
//!
//! [`start`] (VM paused) splits the RAM's stage-2 blocks into 4 KiB pages
//! and write-protects every one. A guest write to a protected page is a
//! stage-2 permission fault; [`write_fault`] marks the page dirty, gives
//! it its write access back and lets the instruction run again. Each
//! pre-copy round [`harvest`]s the dirty set: clears it and protects those
//! pages again, then invalidates the VM's TLB entries on every pCPU,
//! before their contents are copied, so a write after the copy began is
//! caught for the next round. [`stop`] (VM paused or stopped) gives every
//! page its write access back, merges the pages into blocks again and
//! frees the tables the split made.
//!
//! The guest's own writes are seen through stage 2; the hypervisor's
//! writes into its RAM (a virtio device's used rings and received frames,
//! and a disk's DMA into a read request's buffers, on completion) are
//! [`mark`]ed by the one path they take (`virtio::VmMem`). A channel's
//! shared memory is not the VM's RAM and is not tracked (its peer writes
//! it too): it goes whole with the device state, the VM paused.

use crate::vm::Vm;
use alloc::vec::Vec;
use bulkhead_config::RAM_IPA;
use core::sync::atomic::Ordering;

const PAGE: u64 = 4096;

/// Starts tracking: every RAM page write-protected, none dirty. The VM
/// must be paused (the split changes blocks to tables without
/// break-before-make). The number of tables the split made.
pub fn start(vm: &Vm) -> Result<usize, alloc::string::String> {
    let pages = (vm.ram_size / PAGE) as usize;
    let mut pt = vm.stage2.lock();
    if vm.tracking.load(Ordering::Acquire) {
        return Err("its dirty pages are tracked already (`track`, or a migration)".into());
    }
    let tables = pt
        .split_to_pages(RAM_IPA, vm.ram_size)
        .map_err(|e| alloc::format!("cannot split stage 2 into pages: {e:?}"))?;
    let mut bits = vm.dirty.lock();
    *bits = alloc::vec![0u64; pages.div_ceil(64)];
    for p in 0..pages as u64 {
        // Every page of RAM is a page leaf after the split.
        let _ = pt.set_page_writable(RAM_IPA + p * PAGE, false);
    }
    vm.tracking.store(true, Ordering::Release);
    drop(bits);
    drop(pt);
    crate::arch::regs::flush_vmid_everywhere(vm.vttbr);
    Ok(tables)
}

/// A stage-2 permission fault at `ipa` of a vCPU of `vm` on this pCPU:
/// whether it was the tracking's (the page is now dirty and writable, and
/// the instruction is to run again) or a stale TLB entry from before
/// [`stop`]. `false` leaves it to the caller.
pub fn write_fault(vm: &Vm, ipa: u64) -> bool {
    let Some(off) = ipa.checked_sub(RAM_IPA).filter(|&o| o < vm.ram_size) else {
        return false;
    };
    let page = off / PAGE;
    let mut pt = vm.stage2.lock();
    if vm.tracking.load(Ordering::Acquire) {
        let mut bits = vm.dirty.lock();
        if let Some(w) = bits.get_mut((page / 64) as usize) {
            *w |= 1 << (page % 64);
        }
        drop(bits);
        if pt.set_page_writable(RAM_IPA + page * PAGE, true).is_err() {
            return false;
        }
    } else if !pt
        .translate(RAM_IPA + page * PAGE)
        .is_some_and(|(_, attrs, _)| attrs.write)
    {
        return false;
    }
    drop(pt);
    crate::arch::regs::flush_loaded_vmid_here();
    vm.stats.dirty_faults.fetch_add(1, Ordering::Relaxed);
    true
}

/// The hypervisor wrote `[ipa, ipa + len)` of `vm`'s RAM (after the
/// write, so a harvest that raced it sends the page again next round).
/// Nothing while the VM is not tracked.
pub fn mark(vm: &Vm, ipa: u64, len: u64) {
    if len == 0 || !vm.tracking.load(Ordering::Acquire) {
        return;
    }
    let Some(off) = ipa.checked_sub(RAM_IPA).filter(|&o| o < vm.ram_size) else {
        return;
    };
    let last = off.saturating_add(len - 1).min(vm.ram_size - 1) / PAGE;
    let mut bits = vm.dirty.lock();
    for page in off / PAGE..=last {
        if let Some(w) = bits.get_mut((page / 64) as usize) {
            *w |= 1 << (page % 64);
        }
    }
}

/// The pages written since the last harvest (page numbers from the start
/// of RAM, ascending), the set cleared. With `protect`, those pages are
/// write-protected again and every pCPU's TLB is rid of their write
/// access before this returns, so their contents can be copied now (the
/// VM runs); without, the VM must be paused.
pub fn harvest(vm: &Vm, protect: bool) -> Vec<u32> {
    let mut out = Vec::new();
    let mut pt = vm.stage2.lock();
    let mut bits = vm.dirty.lock();
    for (i, w) in bits.iter_mut().enumerate() {
        let mut word = core::mem::take(w);
        while word != 0 {
            let b = word.trailing_zeros();
            word &= word - 1;
            let page = i as u64 * 64 + u64::from(b);
            if protect {
                let _ = pt.set_page_writable(RAM_IPA + page * PAGE, false);
            }
            out.push(page as u32);
        }
    }
    drop(bits);
    drop(pt);
    if protect && !out.is_empty() {
        crate::arch::regs::flush_vmid_everywhere(vm.vttbr);
    }
    out
}

/// Stops tracking and puts stage 2 back as it was: every page writable,
/// the blocks merged, the split's tables freed. The VM must be paused or
/// stopped. The number of blocks made again.
pub fn stop(vm: &Vm) -> usize {
    let mut pt = vm.stage2.lock();
    vm.tracking.store(false, Ordering::Release);
    for p in 0..vm.ram_size / PAGE {
        let _ = pt.set_page_writable(RAM_IPA + p * PAGE, true);
    }
    let mut unlinked = Vec::new();
    let merged = pt
        .merge_blocks(RAM_IPA, vm.ram_size, &mut |t| unlinked.push(t))
        .unwrap_or(0);
    *vm.dirty.lock() = Vec::new();
    drop(pt);
    crate::arch::regs::flush_vmid_everywhere(vm.vttbr);
    for t in unlinked {
        // SAFETY: `merge_blocks` unlinked it and the flush above removed
        // every TLB and walk-cache entry that could name it.
        unsafe { crate::arch::mmu::free_table(t) };
    }
    merged
}
