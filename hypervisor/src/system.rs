//! The whole machine: which VM and vCPU each pCPU hosts, the idle loop a
//! pCPU sits in while its vCPU is off, and powering off when every VM has
//! stopped.

use crate::arch::{self, firmware, gic};
use crate::percpu;
use crate::vm::{self, Lifecycle, Vm};
use alloc::vec::Vec;
use bulkhead_types::VcpuId;
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Once;

pub struct System {
    pub vms: Vec<Vm>,
    /// Per pCPU index: the (VM index, vCPU) it hosts.
    pub assignment: Vec<Option<(usize, VcpuId)>>,
    /// VMs that could not be created count as stopped from the start.
    pub failed: usize,
    /// Physical SPIs passed through, and the VM (index) that owns each.
    pub spi_owner: Vec<(u32, usize)>,
    /// Inter-VM channels, in config order.
    pub channels: Vec<crate::channel::ChannelHw>,
    /// Per config VM index: its index in `vms`, if it was created.
    pub by_config: Vec<Option<usize>>,
}

/// The VM with config index `i`, if it was created.
pub fn vm_by_config(i: u16) -> Option<&'static Vm> {
    let sys = SYSTEM.get()?;
    let idx = (*sys.by_config.get(usize::from(i))?)?;
    sys.vms.get(idx)
}

/// Channel `i`.
pub fn channel(i: usize) -> Option<&'static crate::channel::ChannelHw> {
    SYSTEM.get()?.channels.get(i)
}

/// The VM a passed-through physical SPI belongs to.
pub fn spi_owner(intid: u32) -> Option<&'static Vm> {
    let sys = SYSTEM.get()?;
    let &(_, vm) = sys.spi_owner.iter().find(|(i, _)| *i == intid)?;
    sys.vms.get(vm)
}

/// A passed-through interrupt fired: it stays active on the physical GIC
/// (priority dropped only) until its VM deactivates the virtual one, which
/// carries the HW bit. A VM that is not running gets nothing, and the
/// interrupt is deactivated here.
pub fn passthrough_irq(vm: &'static Vm, intid: u32) {
    if vm.state.lock().lifecycle != Lifecycle::Running {
        gic::deactivate(intid);
        return;
    }
    let kicks = vm.vgic.lock().set_pending(0, intid);
    let me = current()
        .filter(|(v, _)| v.id == vm.id)
        .map(|(_, vcpu)| vcpu);
    vm.apply_kicks(kicks, me);
}

static SYSTEM: Once<System> = Once::new();
static MAINTENANCE: Once<u32> = Once::new();

/// The GIC maintenance interrupt's INTID (from the host DTB).
pub fn set_maintenance_intid(intid: u32) {
    MAINTENANCE.call_once(|| intid);
}

pub fn maintenance_intid() -> Option<u32> {
    MAINTENANCE.get().copied()
}

/// Console input focus: 0 = the hypervisor shell, i + 1 = VM i.
static FOCUS: AtomicUsize = AtomicUsize::new(0);

pub fn set_input_focus(vm: Option<usize>) {
    FOCUS.store(vm.map_or(0, |v| v + 1), Ordering::Relaxed);
}

fn focus() -> Option<&'static Vm> {
    let idx = FOCUS.load(Ordering::Relaxed).checked_sub(1)?;
    SYSTEM.get()?.vms.get(idx)
}

/// True for the VM that receives console input.
pub fn has_input_focus(vm: &Vm) -> bool {
    focus().is_some_and(|f| f.id == vm.id)
}

/// Ctrl-]: focus moves to the next VM, after the last one to the shell,
/// then back to the first VM.
fn cycle_focus() {
    let n = SYSTEM.get().map_or(0, |s| s.vms.len());
    let next = (FOCUS.load(Ordering::Relaxed) + 1) % (n + 1);
    FOCUS.store(next, Ordering::Relaxed);
    match focus() {
        Some(vm) => log::info!(
            "console input now goes to {} (Ctrl-] for the next)",
            vm.name
        ),
        None => crate::shell::enter(),
    }
}

/// Console input: every byte waiting in the physical UART goes to the VM
/// with input focus or to the shell; Ctrl-] moves the focus.
pub fn console_input() {
    let mut fed: Option<&'static Vm> = None;
    while let Some(b) = crate::console::read_byte() {
        if b == bulkhead_shell::FOCUS_KEY {
            cycle_focus();
            continue;
        }
        let Some(vm) = focus() else {
            crate::shell::input(b);
            continue;
        };
        if !vm.uart.lock().push_rx(b) {
            log::warn!("{}: console input dropped (receive FIFO full)", vm.name);
        }
        fed = Some(vm);
    }
    if let Some(vm) = fed {
        let me = current()
            .filter(|(v, _)| v.id == vm.id)
            .map(|(_, vcpu)| vcpu);
        vm.update_uart_line(me);
    }
}

static STOPPED: AtomicUsize = AtomicUsize::new(0);

pub fn install(sys: System) -> &'static System {
    let sys = SYSTEM.call_once(|| sys);
    for (cpu, slot) in sys.assignment.iter().enumerate() {
        if let (Some((vm, vcpu)), Some(p)) = (slot, percpu::get(cpu)) {
            p.vcpu.store(vcpu.index(), Ordering::Relaxed);
            p.vm_plus_one.store(vm + 1, Ordering::Release);
        }
    }
    sys
}

/// The VM and vCPU this pCPU hosts.
pub fn current() -> Option<(&'static Vm, VcpuId)> {
    let p = percpu::this();
    let vm = p.vm_plus_one.load(Ordering::Acquire).checked_sub(1)?;
    let vcpu = VcpuId(p.vcpu.load(Ordering::Relaxed) as u16);
    Some((SYSTEM.get()?.vms.get(vm)?, vcpu))
}

/// One more VM has stopped; with all of them stopped the machine powers off.
/// A stopped VM is starting again (from the shell).
pub fn vm_started() {
    STOPPED.fetch_sub(1, Ordering::SeqCst);
}

/// All VMs, for the shell.
pub fn vms() -> &'static [Vm] {
    SYSTEM.get().map_or(&[], |s| s.vms.as_slice())
}

pub fn vm_stopped() {
    let Some(sys) = SYSTEM.get() else { return };
    let n = STOPPED.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= sys.vms.len() + sys.failed {
        log::info!("all VMs stopped, powering off");
        let r = firmware::system_off();
        log::error!("firmware refused SYSTEM_OFF ({r}); halting");
        arch::halt();
    }
}

/// Parks the calling vCPU (it no longer runs here) and goes idle. The last
/// vCPU of a stopping VM to park completes the stop or reset.
pub fn park(vm: &Vm, vcpu: VcpuId) -> ! {
    // The vCPU's timer must not keep firing into the idle loop.
    crate::arch::regs::set_cntv_ctl_el0(0);
    {
        let mut st = vm.state.lock();
        st.running &= !(1 << vcpu.0);
        if st.running == 0 {
            vm.finish_stop(&mut st);
        }
    }
    let cpu = percpu::this().index.load(Ordering::Relaxed);
    arch::restart_on_stack(arch::stack_top(cpu), idle)
}

/// Physical interrupts on a pCPU that runs no vCPU: kicks only wake it;
/// console input is delivered from here too, since the UART's interrupt
/// may be routed to an idle pCPU.
pub fn service_interrupts_without_vcpu() {
    while let Some(intid) = gic::ack() {
        gic::eoi(intid);
        if let Some(vm) = spi_owner(intid) {
            passthrough_irq(vm, intid);
            continue;
        }
        gic::deactivate(intid);
        if Some(intid) == crate::console::rx_intid() {
            console_input();
        }
    }
}

/// A pCPU's home: start its vCPU when it is powered on, otherwise sleep
/// until kicked.
pub extern "C" fn idle() -> ! {
    loop {
        if let Some((vm, vcpu)) = current() {
            let mut st = vm.state.lock();
            if st.lifecycle == Lifecycle::Running {
                if let Some((entry, context)) = st.power.take_start(vcpu) {
                    st.running |= 1 << vcpu.0;
                    drop(st);
                    log::debug!("{} {}: entering at {entry:#x}", vm.name, vcpu);
                    vm::enter_fresh_vcpu(vm, vcpu, entry, context);
                }
            }
        }
        arch::wait_for_interrupt();
        service_interrupts_without_vcpu();
    }
}
