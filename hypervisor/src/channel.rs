//! Inter-VM channels at run time. The device models are in
//! `bulkhead_channel`; here they meet the VMs: each channel's shared
//! memory is mapped into both ends' stage 2 (see `Vm::new`), each end's
//! register page and (for Linux ends) the PCI configuration space trap to
//! `trap::data_abort`, and each end's doorbell is a level-sensitive SPI
//! in its VM's vGIC.
//!
//! No lock is shared between the two VMs: the channel's state is atomic
//! (`bulkhead_channel::Channel`), and a ring only marks the peer's ISR and
//! kicks the pCPU of the peer's vCPU 0, which brings its own vGIC up to
//! date (`refresh`). So a VM never waits for a lock that a pCPU of another
//! VM holds, and a critical VM's timing never depends on its peer's.
//!
//! Lock order within one VM: an end's `pci`, then the VM's vGIC. A line's
//! level is computed and handed to the vGIC with the vGIC lock held, so
//! two pCPUs of the VM cannot apply levels out of order.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use bulkhead_channel::{Channel, PciFunction};
use bulkhead_snapshot::channel::SavedEnd;
use bulkhead_types::VcpuId;
use spin::Mutex;

use crate::system;
use crate::vm::Vm;

/// A channel: its shared memory and the state of both ends.
pub struct ChannelHw {
    pub name: String,
    /// Config indices of the VMs at end 0 and end 1.
    pub vms: [u16; 2],
    /// Host-physical shared memory.
    pub shm: u64,
    pub size: u64,
    pub state: Channel,
}

/// One end of a channel, as its VM holds it.
pub struct End {
    /// Index of the channel in the system.
    pub channel: usize,
    /// 0 or 1.
    pub end: usize,
    /// The VM's `k`-th end: where its pages and SPI are
    /// (`bulkhead_config::channel_regs_ipa(k)` and friends).
    pub k: usize,
    pub regs_ipa: u64,
    pub shm_ipa: u64,
    pub spi: u32,
    /// The PCI face, for a Linux VM.
    pub pci: Option<Mutex<PciFunction>>,
    /// The level last given to the vGIC (changed with the channel's
    /// `state` held).
    level: AtomicBool,
    /// A guest moved a BAR away from its home: logged once.
    moved: AtomicBool,
}

impl End {
    pub fn new(channel: usize, end: usize, k: usize, shm_size: u64, linux: bool) -> End {
        let regs_ipa = bulkhead_config::channel_regs_ipa(k);
        let shm_ipa = bulkhead_config::channel_shm_ipa(k);
        End {
            channel,
            end,
            k,
            regs_ipa,
            shm_ipa,
            spi: bulkhead_config::channel_spi(k),
            pci: linux.then(|| {
                Mutex::new(PciFunction::new(
                    regs_ipa as u32,
                    shm_ipa as u32,
                    shm_size as u32,
                ))
            }),
            level: AtomicBool::new(false),
            moved: AtomicBool::new(false),
        }
    }
}

/// Gives `vm`'s vGIC the level end `e` should have now. `me`: the vCPU of
/// `vm` running on this pCPU, if any.
fn sync_line(vm: &Vm, e: &End, ch: &Channel, me: Option<VcpuId>) {
    let doorbell = ch.line(e.end);
    let masked = e.pci.as_ref().is_some_and(|pci| !pci.lock().intx(doorbell));
    let level = doorbell && !masked;
    let mut g = vm.vgic.lock();
    if e.level.swap(level, Ordering::Relaxed) == level {
        return;
    }
    let kicks = g.set_line(0, e.spi, level);
    drop(g);
    vm.apply_kicks(kicks, me);
}

/// `vm`'s pCPU was kicked: a peer may have rung one of its ends.
pub fn refresh(vm: &Vm, me: VcpuId) {
    for e in &vm.ends {
        if let Some(ch) = system::channel(e.channel) {
            sync_line(vm, e, &ch.state, Some(me));
        }
    }
}

/// A guest access to its end `i`'s register page at `off`. Returns the
/// value for a read.
pub fn regs_access(
    vm: &'static Vm,
    vcpu: VcpuId,
    i: usize,
    off: u64,
    size: u8,
    write: Option<u64>,
) -> Option<u64> {
    let e = vm.ends.get(i)?;
    let ch = system::channel(e.channel)?;
    let st = &ch.state;
    let v = match write {
        Some(value) => {
            if st.write(e.end, off, size, value) {
                vm.stats.doorbells.fetch_add(1, Ordering::Relaxed);
                // The peer's vCPU 0 looks at its ends when kicked; a
                // stopped peer starts quiet anyway (its end is reset when
                // it boots).
                if let Some(peer) = ch.vms.get(e.end ^ 1).and_then(|&c| system::vm_by_config(c)) {
                    peer.kick_vcpu(VcpuId(0));
                }
            }
            0
        }
        None => st.read(e.end, off, size),
    };
    sync_line(vm, e, st, Some(vcpu));
    Some(v)
}

/// A guest access to its PCI configuration space (ECAM) at `off`.
/// Devices that do not exist read as all ones and ignore writes (PCI
/// Express Base Specification: a read of an absent function completes
/// with all ones).
pub fn ecam_access(vm: &'static Vm, vcpu: VcpuId, off: u64, size: u8, write: Option<u64>) -> u64 {
    let absent = match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => 0,
    };
    let Some(a) = bulkhead_channel::ecam_decode(off) else {
        return absent;
    };
    let found = vm
        .ends
        .iter()
        .find(|e| e.k == usize::from(a.device) && a.function == 0 && e.pci.is_some());
    let Some(e) = found else {
        return absent;
    };
    let (Some(ch), Some(pci)) = (system::channel(e.channel), &e.pci) else {
        return absent;
    };
    let st = &ch.state;
    let v = match write {
        Some(value) => {
            let mut f = pci.lock();
            f.config_write(a.reg, size, value as u32);
            let home = f.at_home();
            drop(f);
            let sizing = value as u32 == u32::MAX;
            if !home && a.reg & !7 == 0x10 && !sizing && !e.moved.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{} {vcpu}: moved a BAR of channel '{}'; its pages stay at {:#x} and {:#x}",
                    vm.name,
                    ch.name,
                    e.regs_ipa,
                    e.shm_ipa
                );
            }
            0
        }
        None => u64::from(pci.lock().config_read(a.reg, size, st.line(e.end))),
    };
    sync_line(vm, e, st, Some(vcpu));
    v
}

/// `vm` is (re)starting: each of its ends comes up quiet, with its PCI
/// function reset and its shared memory scrubbed. No vCPU of `vm` runs.
pub fn vm_starting(vm: &Vm) {
    for e in &vm.ends {
        let Some(ch) = system::channel(e.channel) else {
            continue;
        };
        // SAFETY: the shared memory was allocated to this channel alone
        // and is identity-mapped at EL2; the peer may be using it, and
        // sees zeroes from now on, which docs/channels.md tells it to
        // expect when the PEER register shows a restart.
        unsafe { core::ptr::write_bytes(ch.shm as *mut u8, 0, ch.size as usize) };
        crate::arch::aarch64::cache::clean_invalidate_for_guest(ch.shm as usize, ch.size as usize);
        ch.state.set_up(e.end, true);
        if let Some(pci) = &e.pci {
            pci.lock().reset();
        }
        e.level.store(false, Ordering::Relaxed);
        e.moved.store(false, Ordering::Relaxed);
        log::info!(
            "{}: channel '{}' end {} at {:#x} (registers) and {:#x} ({} bytes, scrubbed), doorbell SPI {}{}",
            vm.name,
            ch.name,
            e.end,
            e.regs_ipa,
            e.shm_ipa,
            ch.size,
            e.spi,
            if e.pci.is_some() { ", as PCI 00:0" } else { "" }
        );
    }
}

/// `vm` stopped: its peers see it down.
pub fn vm_stopped(vm: &Vm) {
    for e in &vm.ends {
        if let Some(ch) = system::channel(e.channel) {
            ch.state.set_up(e.end, false);
        }
    }
}

/// End `e` of a paused VM as a snapshot record (its shared memory as it
/// is now: the peer may go on writing it).
pub fn save_end(e: &End) -> Result<Vec<u8>, String> {
    let ch = system::channel(e.channel).ok_or("a channel the system does not have")?;
    let (isr, count) = ch.state.end_state(e.end);
    let mut shm = alloc::vec![0u8; ch.size as usize];
    crate::arch::aarch64::cache::clean_invalidate_for_guest(ch.shm as usize, ch.size as usize);
    // SAFETY: the channel's shared memory is identity-mapped at EL2 and
    // never freed; the peer may write it meanwhile, which makes the copy
    // a moment's view of bytes, nothing worse.
    unsafe { core::ptr::copy_nonoverlapping(ch.shm as *const u8, shm.as_mut_ptr(), shm.len()) };
    let saved = SavedEnd {
        channel: ch.name.clone(),
        end: e.end as u8,
        isr,
        count,
        pci: e.pci.as_ref().map(|p| p.lock().save_state()),
        shm,
    };
    Ok(saved.encode())
}

/// A saved end, checked against the end `e` it is to be restored into,
/// ready for [`put_end`].
pub struct FreshEnd {
    saved: SavedEnd,
    pci: Option<PciFunction>,
}

/// Checks a saved end against `e`: the same channel, end and size, a PCI
/// face where `e` has one, and a state the models accept.
pub fn check_end(e: &End, bytes: &[u8]) -> Result<FreshEnd, String> {
    let ch = system::channel(e.channel).ok_or("a channel the system does not have")?;
    let saved = SavedEnd::decode(bytes).map_err(|err| format!("{err}"))?;
    if saved.channel != ch.name || usize::from(saved.end) != e.end {
        return Err(format!(
            "the snapshot's end is end {} of channel '{}', this VM's is end {} of '{}'",
            saved.end, saved.channel, e.end, ch.name
        ));
    }
    if saved.shm.len() as u64 != ch.size {
        return Err(format!(
            "channel '{}' has {} bytes here, {} in the snapshot",
            ch.name,
            ch.size,
            saved.shm.len()
        ));
    }
    let pci = match (&e.pci, &saved.pci) {
        (None, None) => None,
        (Some(here), Some(state)) => {
            let mut f = here.lock().clone();
            f.restore_state(state).map_err(String::from)?;
            Some(f)
        }
        _ => {
            return Err(format!(
                "channel '{}' is a PCI function in one VM and not in the other",
                ch.name
            ))
        }
    };
    Ok(FreshEnd { saved, pci })
}

/// Puts a checked end in place in a restored VM (no vCPU of it runs; its
/// vGIC already holds the snapshot's line levels). The peer sees the VM
/// up again, with the shared memory as the VM left it.
pub fn put_end(vm: &Vm, e: &End, f: FreshEnd) {
    let Some(ch) = system::channel(e.channel) else {
        return;
    };
    // SAFETY: as in `vm_starting`: the channel's own memory, identity-
    // mapped at EL2; `check_end` made the sizes equal.
    unsafe {
        core::ptr::copy_nonoverlapping(f.saved.shm.as_ptr(), ch.shm as *mut u8, f.saved.shm.len())
    };
    crate::arch::aarch64::cache::clean_invalidate_for_guest(ch.shm as usize, ch.size as usize);
    if let (Some(pci), Some(fresh)) = (&e.pci, f.pci) {
        *pci.lock() = fresh;
    }
    e.moved.store(false, Ordering::Relaxed);
    ch.state.restore_end(e.end, f.saved.isr, f.saved.count);
    // The vGIC's line is set from the end's state now, whatever it was
    // when the snapshot's vGIC was saved: a ring that came while the VM
    // was paused may not have reached it.
    let doorbell = ch.state.line(e.end);
    let masked = e.pci.as_ref().is_some_and(|pci| !pci.lock().intx(doorbell));
    e.level.store(!(doorbell && !masked), Ordering::Relaxed);
    sync_line(vm, e, &ch.state, None);
    log::info!(
        "{}: channel '{}' end {} restored ({} bytes of shared memory, {} rings received{})",
        vm.name,
        ch.name,
        e.end,
        ch.size,
        f.saved.count,
        if doorbell { ", one pending" } else { "" }
    );
}
