//! What happens when a guest traps to EL2: decode once (bulkhead-exit), act,
//! resume. Every guest-controlled value is checked; anything we do not
//! handle gets the architectural answer, never a panic.

use crate::arch::{self, gic, regs, TrapFrame};
use crate::channel;
use crate::console;
use crate::system;
use crate::vm::{self, End, Lifecycle, Vm, VGICD_IPA, VGICR_IPA, VTIMER_INTID, VUART_IPA};
use bulkhead_devices::pl011;
use bulkhead_exit::inject::{self, Kind};
use bulkhead_exit::{DataAbort, Exit};
use bulkhead_psci::{Action, Call};
use bulkhead_types::VcpuId;
use core::sync::atomic::Ordering;

fn skip_instruction(esr: u64) {
    regs::set_elr_el2(regs::elr_el2().wrapping_add(bulkhead_exit::instruction_len(esr)));
}

/// Injects `kind` into the guest's EL1 (Arm ARM D1.10 exception entry).
fn inject(kind: Kind) {
    let i = inject::inject(
        kind,
        regs::elr_el2(),
        regs::spsr_el2(),
        regs::vbar_el1(),
        true,
    );
    regs::set_esr_el1(i.esr_el1);
    if let Some(far) = i.far_el1 {
        regs::set_far_el1(far);
    }
    regs::set_elr_el1(i.elr_el1);
    regs::set_spsr_el1(i.spsr_el1);
    regs::set_elr_el2(i.elr_el2);
    regs::set_spsr_el2(i.spsr_el2);
}

/// A trap on a pCPU that hosts no vCPU is a hypervisor bug.
fn no_vcpu(what: &str) -> ! {
    log::error!(
        "{what} trap on a pCPU that runs no vCPU (ESR {:#x}); halting this CPU",
        regs::esr_el2()
    );
    arch::halt()
}

#[unsafe(no_mangle)]
extern "C" fn handle_lower_sync(frame: &mut TrapFrame) {
    let esr = regs::esr_el2();
    let Some((vm, vcpu)) = system::current() else {
        no_vcpu("synchronous")
    };
    // Counted by exception class straight from ESR (Arm ARM D24.2.40):
    // HVC/SMC 0x16/0x17, trapped system register 0x18, data abort 0x24.
    if let Some(c) = vm.vcpu_stats(vcpu) {
        vm::bump(match esr >> 26 {
            0x16 | 0x17 => &c.smccc,
            0x24 => &c.mmio,
            0x18 => &c.sysreg,
            _ => &c.other,
        });
    }
    match bulkhead_exit::decode(esr) {
        Exit::Hvc { .. } => smccc(vm, vcpu, frame),
        Exit::Smc { .. } => {
            // A trapped SMC leaves ELR at the SMC itself (Arm ARM D1.4.5).
            skip_instruction(esr);
            smccc(vm, vcpu, frame)
        }
        Exit::DataAbort(da) => data_abort(vm, vcpu, frame, esr, da),
        Exit::InstructionAbort { fsc } => {
            // A permission fault on a fetch is a stage-1 walk that writes
            // (hardware Access flag or dirty state, FEAT_HAFDBS) to a page
            // table in RAM that dirty-page tracking has write-protected:
            // the page is dirty and the fetch runs again.
            let ipa = bulkhead_exit::fault_ipa(regs::hpfar_el2(), regs::far_el2()).0;
            if bulkhead_exit::is_permission_fault(fsc) && crate::dirty::write_fault(vm, ipa) {
                return;
            }
            let far = regs::far_el2();
            vm.complain(
                vcpu,
                format_args!("instruction fetch from unmapped {far:#x} refused: abort injected"),
            );
            inject(Kind::InstructionAbort { far });
        }
        Exit::Wfx { wfe } => {
            // Trapped only for pool vCPUs (POOL_HCR): the pCPU is shared.
            skip_instruction(esr);
            if wfe {
                crate::sched::wfe(frame);
            } else {
                crate::sched::wfi(frame);
            }
        }
        Exit::SysReg(s) if is_icc_sgi1r(&s) => {
            // GICv3 12.2.23: SGI generation always traps with HCR_EL2.IMO set.
            let kicks = vm.vgic.lock().sgi(vcpu.0, frame.reg(s.rt));
            vm.apply_kicks(kicks, Some(vcpu));
            skip_instruction(esr);
        }
        Exit::SysReg(s) if is_icc_other_sgi(&s) && !s.read => {
            // Group 0 and alias SGIs: our guests have no Group 0; ignored.
            skip_instruction(esr);
        }
        Exit::SysReg(s) if crate::sysreg::emulate(frame, &s) => skip_instruction(esr),
        Exit::SysReg(s) => {
            vm.complain(
                vcpu,
                format_args!(
                    "system register access op0={} op1={} CRn={} CRm={} op2={} refused: undefined instruction injected",
                    s.op0, s.op1, s.crn, s.crm, s.op2
                ),
            );
            inject(Kind::Undefined);
        }
        Exit::Unknown { ec, iss } => {
            vm.complain(
                vcpu,
                format_args!(
                    "unhandled trap EC={ec:#x} ISS={iss:#x}: undefined instruction injected"
                ),
            );
            inject(Kind::Undefined);
        }
    }
}

/// ICC_SGI1R_EL1 is S3_0_C12_C11_5.
fn is_icc_sgi1r(s: &bulkhead_exit::SysRegAccess) -> bool {
    !s.read && (s.op0, s.op1, s.crn, s.crm, s.op2) == (3, 0, 12, 11, 5)
}

/// ICC_ASGI1R_EL1 (S3_0_C12_C11_6) and ICC_SGI0R_EL1 (S3_0_C12_C11_7).
fn is_icc_other_sgi(s: &bulkhead_exit::SysRegAccess) -> bool {
    (s.op0, s.op1, s.crn, s.crm) == (3, 0, 12, 11) && (s.op2 == 6 || s.op2 == 7)
}

#[inline(always)]
fn smccc(vm: &'static Vm, vcpu: VcpuId, frame: &mut TrapFrame) {
    let call = bulkhead_psci::decode(frame.x[0], frame.x[1], frame.x[2], frame.x[3]);
    // The benchmark's null hypercall: answered without touching VM state.
    if let Call::BulkheadNull = call {
        frame.x[0] = 0;
        return;
    }
    // Read-only and lock-free too: this vCPU's own record.
    if let Call::BulkheadTimerLate = call {
        frame.x[0] = vm
            .vcpu_stats(vcpu)
            .map_or(0, |c| c.timer_late.load(Ordering::Relaxed));
        return;
    }
    let mut st = vm.state.lock();
    if st.lifecycle != Lifecycle::Running {
        drop(st);
        system::park(vm, vcpu);
    }
    if let Call::Unknown { fid } = call {
        vm.complain(
            vcpu,
            format_args!("unknown SMCCC function {fid:#x}: NOT_SUPPORTED"),
        );
    }
    let restarts = vm.restarts.load(Ordering::Relaxed);
    match st.power.handle(call, vcpu, vm.guest_ram(), restarts) {
        Action::Return(v) => {
            frame.x[0] = v;
            if let Call::BulkheadVmInfo = call {
                frame.x[1] = vcpu.0 as u64;
            }
        }
        Action::StartVcpu {
            vcpu: target,
            entry,
            ..
        } => {
            log::debug!("{} {}: CPU_ON {} at {entry:#x}", vm.name, vcpu, target);
            frame.x[0] = bulkhead_psci::status::SUCCESS as u64;
            vm.kick_vcpu(target);
        }
        Action::StopCaller => {
            log::debug!("{} {}: CPU_OFF", vm.name, vcpu);
            drop(st);
            system::park(vm, vcpu);
        }
        Action::SystemOff => {
            vm.begin_stop(&mut st, End::Off, "guest called SYSTEM_OFF");
            drop(st);
            system::park(vm, vcpu);
        }
        Action::SystemReset => {
            vm.begin_stop(&mut st, End::Reset, "guest called SYSTEM_RESET");
            drop(st);
            system::park(vm, vcpu);
        }
    }
}

/// Which emulated device an IPA falls in, and the offset inside it.
enum Mmio {
    Uart(u64),
    Gicd(u64),
    Gicr(u64),
    /// The register page of the VM's channel end `.0`.
    Channel(usize, u64),
    /// PCI configuration space (Linux VMs with channels).
    Ecam(u64),
    /// The register page of the VM's virtio device `.0`.
    Virtio(usize, u64),
}

fn mmio_target(vm: &Vm, ipa: u64) -> Option<Mmio> {
    let gicr_size = bulkhead_vgic::GICR_FRAME_SIZE * vm.n_vcpus() as u64;
    if (VUART_IPA..VUART_IPA + pl011::SIZE).contains(&ipa) {
        Some(Mmio::Uart(ipa - VUART_IPA))
    } else if (VGICD_IPA..VGICD_IPA + bulkhead_vgic::GICD_SIZE).contains(&ipa) {
        Some(Mmio::Gicd(ipa - VGICD_IPA))
    } else if (VGICR_IPA..VGICR_IPA + gicr_size).contains(&ipa) {
        Some(Mmio::Gicr(ipa - VGICR_IPA))
    } else {
        channel_target(vm, ipa)
    }
}

/// A virtio device's or channel end's register page, or the PCI configuration space of a
/// VM with PCI channel ends. Kept out of line, after the frequent devices.
#[inline(never)]
fn channel_target(vm: &Vm, ipa: u64) -> Option<Mmio> {
    if let Some(i) = vm
        .virtio
        .iter()
        .position(|d| (d.ipa..d.ipa + bulkhead_virtio::mmio::SIZE).contains(&ipa))
    {
        return Some(Mmio::Virtio(i, ipa - vm.virtio.get(i)?.ipa));
    }
    if let Some(i) = vm
        .ends
        .iter()
        .position(|e| (e.regs_ipa..e.regs_ipa + bulkhead_channel::REGS_SIZE).contains(&ipa))
    {
        return Some(Mmio::Channel(i, ipa - vm.ends.get(i)?.regs_ipa));
    }
    let ecam = bulkhead_config::PCI_ECAM_IPA;
    let pci = vm.ends.iter().any(|e| e.pci.is_some());
    (pci && (ecam..ecam + bulkhead_config::PCI_ECAM_SIZE).contains(&ipa))
        .then(|| Mmio::Ecam(ipa - ecam))
}

fn data_abort(vm: &'static Vm, vcpu: VcpuId, frame: &mut TrapFrame, esr: u64, da: DataAbort) {
    let ipa = bulkhead_exit::fault_ipa(regs::hpfar_el2(), regs::far_el2()).0;
    // RAM is never MMIO: a permission fault there is dirty-page tracking's
    // write protection (crate::dirty). The instruction runs again.
    if bulkhead_exit::is_permission_fault(da.dfsc) && crate::dirty::write_fault(vm, ipa) {
        return;
    }
    let far = regs::far_el2();
    let target = mmio_target(vm, ipa);
    let (Some(target), Some(access)) = (&target, da.access) else {
        let why = if target.is_some() {
            "an access the syndrome cannot describe"
        } else {
            "unmapped"
        };
        vm.complain(
            vcpu,
            format_args!(
                "{} of IPA {ipa:#x} ({why}) refused: data abort injected",
                if da.write { "write" } else { "read" }
            ),
        );
        inject(Kind::DataAbort { far });
        return;
    };
    let size = access.size;
    let ok = if access.write {
        let value = access.store_value(frame.reg(access.reg));
        match *target {
            Mmio::Uart(off) => {
                let mut emit = |line: &[u8]| console::guest_line(vm, line);
                let mut uart = vm.uart.lock();
                let r = uart.write(off, size, value, &mut emit).is_ok();
                if system::has_input_focus(vm) {
                    // Interactive: show prompts and echoed keys at once.
                    uart.flush(&mut |part: &[u8]| console::guest_partial(vm, part));
                }
                drop(uart);
                vm.update_uart_line(Some(vcpu));
                r
            }
            Mmio::Gicd(off) => {
                // The lock is released before the kicks: a flush takes it again.
                let r = vm.vgic.lock().dist_write(off, size, value);
                r.map(|k| vm.apply_kicks(k, Some(vcpu))).is_ok()
            }
            Mmio::Gicr(off) => {
                let r = vm.vgic.lock().redist_write(off, size, value);
                r.map(|k| vm.apply_kicks(k, Some(vcpu))).is_ok()
            }
            Mmio::Channel(i, off) => {
                channel::regs_access(vm, vcpu, i, off, size, Some(value)).is_some()
            }
            Mmio::Ecam(off) => {
                channel::ecam_access(vm, vcpu, off, size, Some(value));
                true
            }
            Mmio::Virtio(i, off) => {
                crate::virtio::access(vm, vcpu, i, off, size, Some(value)).is_some()
            }
        }
    } else {
        let v = match *target {
            Mmio::Uart(off) => {
                let mut uart = vm.uart.lock();
                let r = uart.read(off, size).ok();
                // Of the reads, only popping the receive FIFO (DR) can
                // change the interrupt level, and free room for console
                // input held back.
                if off < 4 {
                    system::console_rx_drained(vm, &uart);
                    drop(uart);
                    vm.update_uart_line(Some(vcpu));
                }
                r
            }
            Mmio::Gicd(off) => vm.vgic.lock().dist_read(off, size).ok(),
            Mmio::Gicr(off) => vm.vgic.lock().redist_read(off, size).ok(),
            Mmio::Channel(i, off) => channel::regs_access(vm, vcpu, i, off, size, None),
            Mmio::Ecam(off) => Some(channel::ecam_access(vm, vcpu, off, size, None)),
            Mmio::Virtio(i, off) => crate::virtio::access(vm, vcpu, i, off, size, None),
        };
        v.map(|v| frame.set_reg(access.reg, access.load_value(v)))
            .is_some()
    };
    if ok {
        skip_instruction(esr);
    } else {
        vm.complain(
            vcpu,
            format_args!(
                "MMIO access of {size} bytes at IPA {ipa:#x} refused: data abort injected"
            ),
        );
        inject(Kind::DataAbort { far });
    }
}

/// A physical interrupt while a guest ran: the virtual timer (injected
/// hardware-backed), the GIC maintenance interrupt (refill list
/// registers), console input, or a kick from another pCPU (re-examine the
/// vCPU's state and its pending virtual interrupts).
#[unsafe(no_mangle)]
extern "C" fn handle_lower_irq(frame: &mut TrapFrame) {
    let Some((vm, vcpu)) = system::current() else {
        system::service_interrupts_without_vcpu();
        return;
    };
    if let Some(c) = vm.vcpu_stats(vcpu) {
        vm::bump(&c.irq);
    }
    let mut recheck = false;
    while let Some(intid) = gic::ack() {
        gic::eoi(intid);
        if intid == VTIMER_INTID {
            if let Some(c) = vm.vcpu_stats(vcpu) {
                let late = regs::cntvct_el0().saturating_sub(regs::cntv_cval_el0());
                c.timer_late.store(late, Ordering::Relaxed);
            }
            // Stays active until the guest deactivates the virtual one (HW bit).
            vm.raise_private_now(vcpu, VTIMER_INTID);
            continue;
        }
        if let Some(owner) = system::spi_owner(intid) {
            system::passthrough_irq(owner, intid);
            continue;
        }
        gic::deactivate(intid);
        if intid == gic::KICK_SGI {
            recheck = true;
            console::kicked();
            if !vm.ends.is_empty() {
                channel::refresh(vm, vcpu);
            }
            vm.flush_lrs(vcpu);
        } else if Some(intid) == system::maintenance_intid() {
            vm.flush_lrs(vcpu);
        } else if Some(intid) == console::rx_intid() {
            system::console_input();
        } else if Some(intid) == system::el2_timer_intid() {
            crate::sched::el2_timer();
        } else if Some(intid) == crate::net::uplink_intid() {
            crate::net::uplink_interrupt();
        } else if let Some(d) = crate::virtio::disk_of_intid(intid) {
            crate::virtio::disk_interrupt(d);
        } else {
            log::warn!("unexpected physical interrupt {intid}");
        }
    }
    if recheck {
        if vm.paused.load(Ordering::Acquire) {
            // A pinned VM held for a snapshot (pool vCPUs are taken off by
            // the scheduler instead).
            crate::hold::hold_here(vm, vcpu, frame);
        }
        let st = vm.state.lock();
        let off = !matches!(st.power.state(vcpu), Some(bulkhead_psci::VcpuPower::On));
        if st.lifecycle != Lifecycle::Running || off {
            drop(st);
            system::park(vm, vcpu);
        }
    }
    crate::sched::at_exit(frame);
}

#[unsafe(no_mangle)]
extern "C" fn handle_lower_fiq(_frame: &mut TrapFrame) {
    // No Group 0 interrupts are configured; nothing to do but resume.
}

fn stop_vm_from_trap(why: &str) -> ! {
    let Some((vm, vcpu)) = system::current() else {
        no_vcpu("fatal")
    };
    log::error!(
        "{} {}: {why} (ESR {:#x}, ELR {:#x}); stopping this VM",
        vm.name,
        vcpu,
        regs::esr_el2(),
        regs::elr_el2()
    );
    let mut st = vm.state.lock();
    vm.begin_stop(&mut st, End::Crash, why);
    drop(st);
    system::park(vm, vcpu)
}

#[unsafe(no_mangle)]
extern "C" fn handle_lower_serror(_frame: &mut TrapFrame) {
    stop_vm_from_trap("SError from the guest")
}

#[unsafe(no_mangle)]
extern "C" fn handle_lower_aarch32(_frame: &mut TrapFrame) {
    stop_vm_from_trap("exception from AArch32, which Bulkhead does not run")
}

/// ESR_EL2.EC of a data abort taken without a change in exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;

/// An exception taken from EL2 itself: a hypervisor bug. Report it with
/// everything needed to find it, then power off so a test sees it at once.
/// A data abort in a stack guard page is reported as the stack overflow it
/// is, with the faulting address and the stack pointer at the fault.
#[unsafe(no_mangle)]
extern "C" fn unexpected_exception(frame: &mut TrapFrame, kind: u64) -> ! {
    console::emergency();
    let (esr, far, elr) = (regs::esr_el2(), regs::far_el2(), regs::elr_el2());
    let sp = frame.interrupted_el2_sp();
    let cpu = crate::percpu::this().index.load(Ordering::Relaxed);
    // FAR is only valid for aborts; whose guard page did it hit, if any?
    let guard_of = (esr >> 26 == EC_DATA_ABORT_SAME_EL)
        .then(|| {
            (0..arch::MAX_CPUS).find(|&c| {
                let g = arch::guard_page(c) as u64;
                (g..g + arch::STACK_GUARD as u64).contains(&far)
            })
        })
        .flatten();
    if guard_of == Some(cpu) {
        log::error!("EL2 stack overflow on pCPU {cpu} (guard page hit at {far:#x}, SP {sp:#x})");
        log::error!(
            "EL2 stack overflow details: ESR {esr:#x} ELR {elr:#x} x29 {:#x} x30 {:#x}; stack {:#x}..{:#x}",
            frame.x[29],
            frame.x[30],
            arch::guard_page(cpu) + arch::STACK_GUARD,
            arch::stack_top(cpu)
        );
    } else {
        if let Some(other) = guard_of {
            log::error!(
                "unexpected exception: pCPU {cpu} touched pCPU {other}'s stack guard page at {far:#x} (a stray pointer, not an overflow of its own stack)"
            );
        }
        log::error!(
            "unexpected exception at EL2 (vector {kind}) on cpu{cpu}: ESR {esr:#x} FAR {far:#x} ELR {elr:#x} SP {sp:#x} x0 {:#x} x30 {:#x}",
            frame.x[0],
            frame.x[30]
        );
    }
    fatal_power_off()
}

/// Powers the machine off after a fatal EL2 error. PSCI SYSTEM_OFF carries
/// no status, so a self-test image, which runs only under QEMU with
/// semihosting enabled, first asks QEMU to exit with status 1.
fn fatal_power_off() -> ! {
    #[cfg(feature = "selftest-stack-overflow")]
    {
        // If semihosting is off, HLT is undefined and brings us back here
        // once: the second time, go straight to PSCI.
        static TRIED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if !TRIED.swap(true, Ordering::Relaxed) {
            arch::semihosting_exit(1);
        }
    }
    let _ = arch::firmware::system_off();
    arch::halt()
}

/// The `selftest-stack-overflow` feature: recurse on this pCPU's stack until
/// it runs into its guard page. The report and the exit status are the
/// test (`cargo xtask test --filter stack_guard`); returning is a failure.
#[cfg(feature = "selftest-stack-overflow")]
pub fn selftest_stack_overflow() {
    let cpu = crate::percpu::this().index.load(Ordering::Relaxed);
    log::info!(
        "selftest: overflowing pCPU {cpu}'s stack (guard page at {:#x}) on purpose",
        arch::guard_page(cpu)
    );
    let depth = overflow(0);
    panic!("selftest: {depth} frames of recursion never reached the stack guard page");
}

/// One 256-byte frame a call: far less than the 4 KiB guard page, so no
/// frame can step over it. `black_box` keeps the frame and the recursion
/// from being optimised away.
#[cfg(feature = "selftest-stack-overflow")]
#[inline(never)]
fn overflow(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    overflow(depth + 1).wrapping_add(frame[(depth % 32) as usize])
}
