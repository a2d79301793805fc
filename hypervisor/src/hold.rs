//! Pinned VMs held still for a snapshot or a migration (docs/snapshot.md).
//!
//! A pool vCPU's registers are in memory whenever it is off its pCPU
//! (`sched`), so pausing a pool VM is taking its vCPUs off. A pinned
//! vCPU's registers live on its own pCPU, which nothing else runs. To
//! pause its VM the caller sets `Vm::paused` and kicks each vCPU's pCPU;
//! the kick brings that pCPU to EL2 ([`hold_here`], from the interrupt
//! trap), where it saves the vCPU's registers into its [`Pinned`] slot,
//! says so (`held`) and waits with interrupts masked until the VM is
//! resumed. Then it enters the guest again from the slot ([`enter_saved`]:
//! the same registers, CNTVOFF as the snapshot moved it), or parks if the
//! VM was stopped meanwhile (it migrated away).
//!
//! A restore into a stopped pinned VM fills the slots and marks them
//! `restored` ([`start_restored`]); each vCPU's pCPU, idle, enters the
//! guest from its slot instead of from a reset.
//!
//! A pinned vCPU on the pCPU that asks would wait for itself, and a
//! critical VM's deadlines do not survive a pause: `snapshot::supported`
//! refuses both before anything happens.

use crate::arch::{self, context::Context, regs, GuestRegs, TrapFrame};
use crate::percpu;
use crate::sched::Saved;
use crate::vm::{Lifecycle, Vm};
use alloc::string::String;
use bulkhead_types::VcpuId;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// One pinned vCPU's registers while its VM is held or being restored.
pub struct Pinned {
    saved: Mutex<Saved>,
    /// Its pCPU saved its registers in `saved` and waits.
    held: AtomicBool,
    /// A restore put registers in `saved`: its pCPU enters from them.
    restored: AtomicBool,
}

impl Pinned {
    pub fn new() -> Pinned {
        Pinned {
            saved: Mutex::new(Saved::fresh()),
            held: AtomicBool::new(false),
            restored: AtomicBool::new(false),
        }
    }
}

fn this_cpu() -> usize {
    percpu::this().index.load(Ordering::Relaxed)
}

/// Why `vm` cannot be held from this pCPU: one of its vCPUs is pinned
/// here, and would have to save itself while this code waits for it.
pub fn check_from_here(vm: &Vm) -> Result<(), String> {
    let me = this_cpu();
    match vm.pcpus.iter().position(|p| p.index() == me) {
        Some(v) => Err(alloc::format!(
            "{} vCPU {v} is pinned to pCPU {me}, where this command runs: it cannot be held from here",
            vm.name
        )),
        None => Ok(()),
    }
}

/// Holds every running vCPU of pinned VM `vm` in EL2 with its registers
/// saved; returns once all are (a vCPU that is off has nothing to save).
/// Errors (and the VM runs on) if one is not held within 2 s.
pub fn pause(vm: &Vm) -> Result<(), String> {
    check_from_here(vm)?;
    vm.paused.store(true, Ordering::Release);
    for v in 0..vm.n_vcpus() {
        vm.kick_vcpu(VcpuId(v));
    }
    let freq = regs::cntfrq_el0().max(1);
    let deadline = regs::cntpct_el0().saturating_add(2 * freq);
    loop {
        let running = vm.state.lock().running;
        let waiting = vm
            .pinned
            .iter()
            .enumerate()
            .find(|(v, p)| running & (1 << v) != 0 && !p.held.load(Ordering::Acquire));
        let Some((v, _)) = waiting else {
            return Ok(());
        };
        if regs::cntpct_el0() > deadline {
            resume(vm);
            return Err(alloc::format!(
                "{} vCPU {v}: not held on its pCPU within 2 s",
                vm.name
            ));
        }
        core::hint::spin_loop();
    }
}

/// Lets a held VM run again: held vCPUs enter the guest from their slots
/// (or park, if the VM is stopping).
pub fn resume(vm: &Vm) {
    vm.paused.store(false, Ordering::Release);
    for v in 0..vm.n_vcpus() {
        vm.kick_vcpu(VcpuId(v));
    }
}

/// A restore has filled the slots of stopped VM `vm` and made it
/// running: each vCPU that is on enters from its slot.
pub fn start_restored(vm: &Vm) {
    let running = vm.state.lock().running;
    for (v, p) in vm.pinned.iter().enumerate() {
        if running & (1 << v) != 0 {
            p.restored.store(true, Ordering::Release);
        }
    }
    resume(vm);
}

/// A fresh boot: nothing of a restore that did not run survives.
pub fn forget(vm: &Vm) {
    for p in &vm.pinned {
        p.restored.store(false, Ordering::Release);
    }
}

/// The saved registers of pinned vCPU `vcpu`, which its pCPU does not
/// hold (it is held, or the vCPU is off or its VM stopped).
pub fn with_saved<R>(
    vm: &Vm,
    vcpu: VcpuId,
    f: impl FnOnce(&mut GuestRegs, &mut Context, &mut bool) -> R,
) -> Option<R> {
    let p = vm.pinned.get(vcpu.index())?;
    let running = vm.state.lock().running & (1 << vcpu.0) != 0;
    if running && !p.held.load(Ordering::Acquire) {
        return None;
    }
    Some(p.saved.lock().with(f))
}

/// A kick reached pinned vCPU `vcpu` of paused VM `vm` in the interrupt
/// trap: its registers go to its slot and its pCPU waits here until the
/// VM is resumed. Returns only if `vm` is not a pinned VM.
pub fn hold_here(vm: &Vm, vcpu: VcpuId, frame: &TrapFrame) {
    let Some(p) = vm.pinned.get(vcpu.index()) else {
        return;
    };
    // Also turns the vCPU's timers off: they cannot fire meanwhile.
    p.saved.lock().capture(frame);
    p.held.store(true, Ordering::Release);
    log::debug!("{} {}: held", vm.name, vcpu);
    while vm.paused.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    if vm.state.lock().lifecycle != Lifecycle::Running {
        p.held.store(false, Ordering::Release);
        crate::system::park(vm, vcpu);
    }
    enter_saved(vm, vcpu)
}

/// On a pinned pCPU with nothing running: whether its vCPU was restored
/// and is to enter from its slot (then it does, and this never returns).
pub fn enter_if_restored(vm: &Vm, vcpu: VcpuId) {
    let Some(p) = vm.pinned.get(vcpu.index()) else {
        return;
    };
    if vm.paused.load(Ordering::Acquire) || !p.restored.swap(false, Ordering::AcqRel) {
        return;
    }
    if vm.state.lock().lifecycle != Lifecycle::Running {
        return;
    }
    log::debug!("{} {}: entering from its restored registers", vm.name, vcpu);
    enter_saved(vm, vcpu)
}

/// Programs this pCPU for `vm` and enters vCPU `vcpu` with the registers
/// in its slot.
fn enter_saved(vm: &Vm, vcpu: VcpuId) -> ! {
    let Some(p) = vm.pinned.get(vcpu.index()) else {
        crate::system::park(vm, vcpu)
    };
    // SAFETY: the VM's stage-2 table maps only its own RAM (built in
    // `Vm::new`), and GUEST_HCR's traps are all handled in `trap`, as
    // for `vm::enter_fresh_vcpu`.
    unsafe {
        regs::set_hcr_el2(regs::GUEST_HCR);
        regs::set_stage2(vm.vtcr, vm.vttbr);
    }
    regs::set_vpidr_el2(regs::midr_el1());
    regs::set_vmpidr_el2((1 << 31) | bulkhead_psci::vcpu_mpidr(vcpu.0));
    regs::set_cntvoff_el2(vm.cntvoff.load(Ordering::Relaxed));
    let regs = p.saved.lock().load(false);
    p.held.store(false, Ordering::Release);
    if vcpu.0 == 0 {
        // A ring that came while it was held.
        crate::channel::refresh(vm, vcpu);
    }
    vm.flush_lrs(vcpu);
    arch::resume(&regs, arch::stack_top(this_cpu()))
}
