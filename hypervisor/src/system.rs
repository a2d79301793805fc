//! The whole machine: which VM and vCPU each pCPU hosts, the idle loop a
//! pCPU sits in while its vCPU is off, and powering off when every VM has
//! stopped.

use crate::arch::{self, firmware, gic, regs};
use crate::percpu;
use crate::vm::{self, Lifecycle, Vm};
use alloc::vec::Vec;
use bulkhead_devices::pl011::{Pl011, RX_RING_SIZE};
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
    // Input held back for the old focus no longer waits for it.
    if let Some(vm) = focus() {
        let uart = vm.uart.lock();
        if HELD.load(Ordering::Relaxed) == tag(vm) {
            release_input();
        }
        drop(uart);
        end_stall(vm);
    }
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

// Console input flow control.
//
// Input for a VM waits in its virtual UART's ring (`Pl011`, RX_RING_SIZE
// bytes), which refills the guest's 32-byte receive FIFO as it reads
// UARTDR. When the focused VM's ring is full, `console_input` stops reading
// the physical UART and masks its receive interrupt: later bytes wait in
// the physical FIFO, and QEMU's PL011 stops taking more from its backend.
// Input resumes (the interrupt is unmasked, fires again and `console_input`
// carries on) when the guest has read the ring down to RESUME_AT, when
// the VM is reset, or when the EL2 timer finds that the guest read nothing
// for STALL_MS: a guest that does not read (stopped, hung, or one that
// never reads its UART) must not keep Ctrl-] stuck in the physical FIFO
// forever. Its input is then dropped while its ring stays full.
//
// Only the pCPU that takes the console interrupt reads the physical UART;
// other pCPUs (a guest reading UARTDR, a VM being reset) at most unmask the
// interrupt, so no console work runs on a critical VM's pCPU.

/// The VM (`tag`) whose full ring holds input back, 0 when input flows.
/// Set and cleared only with that VM's `uart` lock held, so a guest
/// draining its ring and the decision to hold input cannot miss each other.
/// Only the focused VM is ever held.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// The held VM's pending input at the last stall check.
static HELD_PENDING: AtomicUsize = AtomicUsize::new(0);
/// The VM (`tag`) that read nothing of a full ring for STALL_MS: input for
/// it is dropped while its ring is full, 0 for none. Only the focused VM.
static STALLED: AtomicUsize = AtomicUsize::new(0);
/// Bytes dropped for the STALLED VM (reported once, when that ends).
static DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Input resumes once the held VM has read its ring down to this.
const RESUME_AT: usize = RX_RING_SIZE / 2;
/// How long a held VM may read nothing before it counts as stalled.
const STALL_MS: u64 = 1000;
/// EL2's physical timer PPI, which times the stall check.
static EL2_TIMER: Once<u32> = Once::new();

/// The EL2 physical timer's INTID (from the host DTB).
pub fn set_el2_timer_intid(intid: u32) {
    EL2_TIMER.call_once(|| intid);
}

pub fn el2_timer_intid() -> Option<u32> {
    EL2_TIMER.get().copied()
}

fn tag(vm: &Vm) -> usize {
    vm.id.index() + 1
}

/// Stops reading the physical UART for `vm`, whose ring is full (`uart` is
/// its locked model), and arms the stall check on this pCPU.
fn hold_input(vm: &Vm, uart: &Pl011) {
    HELD.store(tag(vm), Ordering::Relaxed);
    HELD_PENDING.store(uart.rx_pending(), Ordering::Relaxed);
    crate::console::set_rx_interrupt(false);
    arm_stall_check();
}

/// Input flows again; with the held VM's `uart` lock held.
fn release_input() {
    HELD.store(0, Ordering::Relaxed);
    crate::console::set_rx_interrupt(true);
}

fn arm_stall_check() {
    let Some(intid) = el2_timer_intid() else {
        return;
    };
    gic::enable_ppi(percpu::this().gicr.load(Ordering::Relaxed), intid);
    let ticks = regs::cntfrq_el0() * STALL_MS / 1000;
    crate::sched::set_console_deadline(Some(regs::cntpct_el0().wrapping_add(ticks)));
}

/// `vm`'s ring shrank (the guest read UARTDR); `uart` is its locked model.
/// Resumes console input held back for it once enough room is free. Cheap
/// when nothing is held: one relaxed load.
pub fn console_rx_drained(vm: &Vm, uart: &Pl011) {
    if HELD.load(Ordering::Relaxed) == tag(vm) && uart.rx_pending() <= RESUME_AT {
        release_input();
    }
}

/// Resets `vm`'s virtual UART for a fresh instance: input the old one did
/// not read is discarded, and input held back for it flows again.
pub fn reset_vm_uart(vm: &Vm) {
    let mut uart = vm.uart.lock();
    uart.reset();
    if HELD.load(Ordering::Relaxed) == tag(vm) {
        release_input();
    }
    drop(uart);
    end_stall(vm);
}

/// `vm` is no longer stalled (it read, lost the focus or was reset): says
/// how much input it lost.
fn end_stall(vm: &Vm) {
    if STALLED.load(Ordering::Relaxed) != tag(vm) {
        return;
    }
    STALLED.store(0, Ordering::Relaxed);
    let n = DROPPED.swap(0, Ordering::Relaxed);
    if n > 0 {
        log::warn!("{}: {n} bytes of console input dropped in all", vm.name);
    }
}

/// The EL2 timer fired (on the console pCPU): if the held VM read nothing
/// since the last check, it is stalled and input resumes without it;
/// if it read some, it gets another STALL_MS.
/// Called by `sched::el2_timer` when the check's deadline has passed.
pub fn console_stall_check() {
    let held = HELD.load(Ordering::Relaxed);
    let Some(vm) = vms().iter().find(|v| tag(v) == held) else {
        return;
    };
    let uart = vm.uart.lock();
    if HELD.load(Ordering::Relaxed) != held {
        return;
    }
    let pending = uart.rx_pending();
    if pending <= RESUME_AT {
        release_input();
    } else if pending < HELD_PENDING.load(Ordering::Relaxed) {
        HELD_PENDING.store(pending, Ordering::Relaxed);
        arm_stall_check();
    } else {
        STALLED.store(held, Ordering::Relaxed);
        release_input();
    }
}

/// Bytes were given to `vm`: its interrupt line follows.
fn fed(vm: &'static Vm) {
    let me = current()
        .filter(|(v, _)| v.id == vm.id)
        .map(|(_, vcpu)| vcpu);
    vm.update_uart_line(me);
}

/// Console input: the bytes waiting in the physical UART go to the VM with
/// input focus (its ring) or to the shell; Ctrl-] moves the focus. Stops
/// early, leaving the rest in the physical UART, when the focused VM's ring
/// is full (see the flow control above).
pub fn console_input() {
    // The VM given bytes since its line was last updated.
    let mut given: Option<&'static Vm> = None;
    loop {
        let to = focus();
        if let Some(vm) = to {
            let uart = vm.uart.lock();
            if uart.rx_room() == 0 && STALLED.load(Ordering::Relaxed) != tag(vm) {
                hold_input(vm, &uart);
                break;
            }
        }
        let Some(b) = crate::console::read_byte() else {
            break;
        };
        if b == bulkhead_shell::FOCUS_KEY {
            if let Some(vm) = given.take() {
                fed(vm);
            }
            cycle_focus();
            continue;
        }
        let Some(vm) = to else {
            crate::shell::input(b);
            continue;
        };
        if vm.uart.lock().push_rx(b) {
            // It read some: the next full ring is held again.
            end_stall(vm);
        } else if DROPPED.fetch_add(1, Ordering::Relaxed) == 0 {
            // Only a stalled VM's full ring gets here.
            log::warn!(
                "{}: console input dropped: its {RX_RING_SIZE}-byte input buffer is full and it read none of it for {STALL_MS} ms; dropping input to it until it reads (Ctrl-] moves the focus)",
                vm.name
            );
        }
        given = Some(vm);
    }
    if let Some(vm) = given {
        fed(vm);
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

/// The line a script reads to learn how the system ended (`cargo xtask
/// run` turns it into its exit status): `clean` when every VM stopped as
/// asked, `failed` when one crashed, reset without a restart, or never
/// started.
fn summarize(sys: &System) {
    let mut failed = sys.failed > 0;
    let mut line = alloc::string::String::new();
    for vm in &sys.vms {
        let end = vm.ended();
        failed |= !end.is_some_and(vm::End::is_clean);
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&vm.name);
        line.push_str(": ");
        line.push_str(end.map_or("stopped", vm::End::describe));
    }
    if sys.failed > 0 {
        line.push_str(&alloc::format!(", {} VM(s) not started", sys.failed));
    }
    if failed {
        log::error!("system ended: failed ({line})");
    } else {
        log::info!("system ended: clean ({line})");
    }
}

pub fn vm_stopped() {
    let Some(sys) = SYSTEM.get() else { return };
    let n = STOPPED.fetch_add(1, Ordering::SeqCst) + 1;
    // VMs refused at boot (`failed`) never run, so never stop: the
    // machine is done when every VM that was built has stopped.
    if n >= sys.vms.len() {
        summarize(sys);
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
    crate::sched::parked(vm, vcpu);
    let restart = {
        let mut st = vm.state.lock();
        st.running &= !(1 << vcpu.0);
        if st.running == 0 {
            vm.finish_stop(&mut st);
        }
        // A CPU_ON of it that came after its CPU_OFF but before it had
        // left its pCPU: the kick of that CPU_ON found it still running
        // (a pool vCPU's wake-up then does nothing) and `parked` has just
        // taken it off its run queue, so it is woken again here.
        st.lifecycle == Lifecycle::Running
            && matches!(
                st.power.state(vcpu),
                Some(bulkhead_psci::VcpuPower::OnPending { .. })
            )
    };
    if restart {
        vm.kick_vcpu(vcpu);
    }
    let cpu = percpu::this().index.load(Ordering::Relaxed);
    arch::restart_on_stack(arch::stack_top(cpu), idle)
}

/// Lets a shell command that waits for the network sleep this pCPU until an
/// interrupt comes or `ms` pass, instead of spinning: a spinning pCPU
/// burns a core on hardware, and under QEMU's `-icount` it slows the
/// machine's virtual clock against its peer's, which a migrated pinned
/// VM's virtual count then runs ahead of. What comes is served as
/// [`service_interrupts_without_vcpu`] would, except console input: the
/// shell is busy with this command, so that stays pending, and the call
/// returns at once while it does (the command then polls as before).
/// Only on a pCPU with no vCPU of its own (the shell's usual home);
/// elsewhere it returns at once.
pub fn doze(ms: u64) {
    if current().is_some()
        || crate::sched::is_pool_cpu(percpu::this().index.load(Ordering::Relaxed))
    {
        return;
    }
    let ticks = regs::cntfrq_el0() * ms / 1000;
    crate::sched::set_doze_deadline(Some(regs::cntpct_el0().wrapping_add(ticks)));
    arch::wait_for_interrupt();
    serve_interrupts(false);
    crate::sched::set_doze_deadline(None);
}

/// Physical interrupts on a pCPU that runs no vCPU: kicks only wake it;
/// console input is delivered from here too, since the UART's interrupt
/// may be routed to an idle pCPU.
pub fn service_interrupts_without_vcpu() {
    serve_interrupts(true);
}

/// Every interrupt pending at this pCPU, each to its handler; console
/// input too if `console`, else the first console interrupt ends the
/// round (it is pending again at once, the UART still holding the bytes,
/// and waits for whoever serves with `console`).
fn serve_interrupts(console: bool) {
    while let Some(intid) = gic::ack() {
        gic::eoi(intid);
        if let Some(vm) = spi_owner(intid) {
            passthrough_irq(vm, intid);
            continue;
        }
        gic::deactivate(intid);
        if intid == gic::KICK_SGI {
            crate::console::kicked();
        } else if Some(intid) == crate::console::rx_intid() {
            if !console {
                break;
            }
            console_input();
        } else if Some(intid) == el2_timer_intid() {
            crate::sched::el2_timer();
        } else if Some(intid) == crate::net::uplink_intid() {
            crate::net::uplink_interrupt();
        } else if let Some(d) = crate::virtio::disk_of_intid(intid) {
            crate::virtio::disk_interrupt(d);
        }
    }
}

/// A pCPU's home: start its vCPU when it is powered on, otherwise sleep
/// until kicked.
pub extern "C" fn idle() -> ! {
    if crate::sched::is_pool_cpu(percpu::this().index.load(Ordering::Relaxed)) {
        crate::sched::idle()
    }
    loop {
        if let Some((vm, vcpu)) = current() {
            crate::hold::enter_if_restored(vm, vcpu);
            let mut st = vm.state.lock();
            // A held VM's vCPU that was off stays off until it resumes.
            if st.lifecycle == Lifecycle::Running && !vm.paused.load(Ordering::Acquire) {
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
