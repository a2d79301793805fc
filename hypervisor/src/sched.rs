//! Shared pCPUs: the vCPUs of pool VMs take turns on the pool's pCPUs.
//!
//! The policy (who runs next, for how long, who moves) is the pure
//! `bulkhead-sched` crate; this module is its EL2 side: one `Pool` per
//! config pool behind a spinlock, the vCPU context switch, WFI/WFE traps,
//! time slices on the EL2 physical timer (shared with the console's flow
//! control, [`set_console_deadline`]) and wake-ups.
//!
//! A pool vCPU's registers are either loaded on one pCPU (`loaded` names
//! it) or saved in its [`PoolVcpu`]. The pCPU that switches a vCPU out
//! saves it and then clears `loaded`; a pCPU that picks it meanwhile waits
//! for that before loading it, so a vCPU is never in two places.
//!
//! Lock order: a VM's state lock, then a pool's lock, then a VM's vGIC
//! lock. Nothing takes a pool's lock with a vGIC lock held: kicks run after
//! the vGIC lock is released.

use crate::arch::{self, context::Context, gic, regs, GuestRegs, TrapFrame, MAX_CPUS};
use crate::percpu;
use crate::system;
use crate::vm::{Lifecycle, Vm, VTIMER_INTID};
use alloc::string::String;
use alloc::vec::Vec;
use bulkhead_psci::VcpuPower;
use bulkhead_sched::{Entity, Pool, State};
use bulkhead_types::VcpuId;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

/// Time slice, cap period, wake-up preemption granularity and the time a
/// vCPU stays on a pCPU before a busy one may pull it, in milliseconds.
pub const SLICE_MS: u64 = 4;
pub const PERIOD_MS: u64 = 20;
pub const WAKE_GRANULARITY_MS: u64 = 1;
pub const MIGRATION_COST_MS: u64 = 2;

/// One config pool on this machine.
pub struct PoolHw {
    pub name: String,
    /// Local CPU `i` of the scheduler is pCPU `pcpus[i]`.
    pub pcpus: Vec<usize>,
    pub sched: Mutex<Pool>,
    /// Per entity: (index in `system::vms()`, vCPU).
    pub members: Vec<(usize, VcpuId)>,
}

/// A pool vCPU's scheduling handle and saved state (in its `Vm`).
pub struct PoolVcpu {
    pub pool: usize,
    pub entity: Entity,
    saved: Mutex<Saved>,
    /// pCPU index + 1 whose registers hold this vCPU; 0 when `saved` does.
    loaded: AtomicUsize,
    /// Physical count at which this waiting vCPU's virtual timer fires;
    /// 0 when it waits for nothing timed.
    wake_at: AtomicU64,
    /// Its timer fired while it waited: the physical PPI is made active
    /// where it next runs, as the hardware-backed injection expects.
    timer_fired: AtomicBool,
    /// The shell moved it to this pCPU (+ 1, 0: no move pending): logged
    /// when it first runs there.
    moved_to: AtomicUsize,
}

/// A vCPU's registers while no pCPU holds them: a pool vCPU off its
/// pCPU, or a pinned one held or restored (crate::hold).
pub struct Saved {
    pub regs: GuestRegs,
    pub ctx: Context,
    /// The physical timer PPI was active (the guest had not yet
    /// deactivated its last timer interrupt) when it left its pCPU.
    pub timer_active: bool,
}

impl Saved {
    pub fn fresh() -> Saved {
        Saved {
            regs: GuestRegs::zero(),
            ctx: Context::fresh(),
            timer_active: false,
        }
    }

    /// Takes the vCPU this pCPU runs: its trap frame, its EL1 context
    /// (its timers are left off, so they cannot fire into what runs
    /// next), and its timer PPI's active state, which is cleared here.
    pub fn capture(&mut self, frame: &TrapFrame) {
        self.regs.x = frame.x;
        self.regs.elr = regs::elr_el2();
        self.regs.spsr = regs::spsr_el2();
        self.ctx.save();
        let gicr = percpu::this().gicr.load(Ordering::Relaxed);
        self.timer_active = gicr != 0 && gic::ppi_active(gicr, VTIMER_INTID);
        if self.timer_active {
            gic::set_ppi_active(gicr, VTIMER_INTID, false);
        }
    }

    /// Lends the registers, the context and the timer PPI's state to `f`
    /// (a snapshot reads them, a restore writes them).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut GuestRegs, &mut Context, &mut bool) -> R) -> R {
        f(&mut self.regs, &mut self.ctx, &mut self.timer_active)
    }

    /// Loads the EL1 context into this pCPU and makes the timer PPI
    /// active as it was (or because the timer `fired` while no pCPU held
    /// the vCPU); returns the registers to enter with.
    pub fn load(&self, fired: bool) -> GuestRegs {
        self.ctx.restore();
        let gicr = percpu::this().gicr.load(Ordering::Relaxed);
        if gicr != 0 {
            gic::set_ppi_active(gicr, VTIMER_INTID, self.timer_active || fired);
        }
        self.regs
    }
}

impl PoolVcpu {
    pub fn new(pool: usize, entity: Entity) -> PoolVcpu {
        PoolVcpu {
            pool,
            entity,
            saved: Mutex::new(Saved::fresh()),
            loaded: AtomicUsize::new(0),
            wake_at: AtomicU64::new(0),
            timer_fired: AtomicBool::new(false),
            moved_to: AtomicUsize::new(0),
        }
    }

    /// The pCPU whose registers hold it now, if any.
    pub fn loaded_on(&self) -> Option<usize> {
        self.loaded.load(Ordering::Acquire).checked_sub(1)
    }
}

/// Per pCPU: its pool, and what its EL2 timer waits for.
struct CpuSched {
    /// Pool index + 1; 0 for a pCPU outside every pool.
    pool: AtomicUsize,
    /// Its index among the pool's CPUs.
    local: AtomicUsize,
    /// The scheduler asked this pCPU to pick again at its next chance.
    resched: AtomicBool,
    /// Physical counts its EL2 timer is due for (0: none): the end of the
    /// running vCPU's slice, and the console's stall check.
    slice_at: AtomicU64,
    console_at: AtomicU64,
    /// When the next round of MAC announcements is due (net.rs).
    announce_at: AtomicU64,
    /// When a shell command that waits wants to be woken (`system::doze`).
    doze_at: AtomicU64,
}

impl CpuSched {
    const fn new() -> CpuSched {
        CpuSched {
            pool: AtomicUsize::new(0),
            local: AtomicUsize::new(0),
            resched: AtomicBool::new(false),
            slice_at: AtomicU64::new(0),
            console_at: AtomicU64::new(0),
            announce_at: AtomicU64::new(0),
            doze_at: AtomicU64::new(0),
        }
    }
}

static CPUS: [CpuSched; MAX_CPUS] = [const { CpuSched::new() }; MAX_CPUS];
static POOLS: Once<Vec<PoolHw>> = Once::new();

/// Milliseconds in counter ticks.
pub fn ms(n: u64) -> u64 {
    regs::cntfrq_el0().saturating_mul(n) / 1000
}

/// The physical counter, in the ticks of [`ms`].
pub fn now() -> u64 {
    regs::cntpct_el0()
}

pub fn install(pools: Vec<PoolHw>) {
    let pools = POOLS.call_once(|| pools);
    for (i, p) in pools.iter().enumerate() {
        for (local, &cpu) in p.pcpus.iter().enumerate() {
            if let Some(c) = CPUS.get(cpu) {
                c.local.store(local, Ordering::Relaxed);
                c.pool.store(i + 1, Ordering::Release);
            }
        }
    }
}

pub fn pools() -> &'static [PoolHw] {
    POOLS.get().map_or(&[], Vec::as_slice)
}

fn this_cpu() -> usize {
    percpu::this().index.load(Ordering::Relaxed)
}

/// This pCPU's pool and its local index there, if it is in one.
fn my_pool() -> Option<(&'static PoolHw, usize)> {
    let c = CPUS.get(this_cpu())?;
    let p = c.pool.load(Ordering::Acquire).checked_sub(1)?;
    Some((pools().get(p)?, c.local.load(Ordering::Relaxed)))
}

pub fn is_pool_cpu(cpu: usize) -> bool {
    CPUS.get(cpu)
        .is_some_and(|c| c.pool.load(Ordering::Acquire) != 0)
}

/// Interrupts the pool's local CPU `local` (the kick SGI).
fn poke(pool: &PoolHw, local: usize) {
    let Some(p) = pool.pcpus.get(local).and_then(|&c| percpu::get(c)) else {
        return;
    };
    gic::kick(p.mpidr.load(Ordering::Relaxed));
}

/// Asks the pool's local CPU `local` to pick again, now.
fn resched(pool: &PoolHw, local: usize) {
    if let Some(c) = pool.pcpus.get(local).and_then(|&c| CPUS.get(c)) {
        c.resched.store(true, Ordering::Release);
    }
    poke(pool, local);
}

/// `vm`'s pool vCPU `vcpu` has something new to look at (an interrupt, a
/// CPU_ON, a stop): it is made runnable if it waited, and the pCPU that
/// runs it or should run it now is interrupted.
pub fn kick(vm: &Vm, vcpu: VcpuId) {
    let Some(pv) = vm.pool_vcpu(vcpu) else {
        return;
    };
    if vm.paused.load(Ordering::Acquire) {
        // `resume` wakes every vCPU; what arrives meanwhile waits in the vGIC.
        return;
    }
    let Some(pool) = pools().get(pv.pool) else {
        return;
    };
    let mut s = pool.sched.lock();
    let woke = s.wake(pv.entity, now());
    let info = s.entity(pv.entity);
    drop(s);
    if let Some(c) = woke {
        resched(pool, c);
    }
    if info.state == State::Running && woke != Some(info.cpu) {
        // It runs there: that pCPU flushes its list registers.
        poke(pool, info.cpu);
    }
}

/// A VM is stopping: its pool vCPU `vcpu`, which no pCPU holds, leaves
/// its run queue. With `vm`'s state lock held.
pub fn stop_unloaded(vm: &Vm, vcpu: VcpuId) -> bool {
    let Some(pv) = vm.pool_vcpu(vcpu) else {
        return false;
    };
    if pv.loaded_on().is_some() {
        return false;
    }
    stop_entity(pv);
    // A timer interrupt it had not been loaded for is the stopped
    // instance's: the next one starts without it.
    pv.timer_fired.store(false, Ordering::Relaxed);
    true
}

fn stop_entity(pv: &PoolVcpu) {
    pv.wake_at.store(0, Ordering::Relaxed);
    if let Some(pool) = pools().get(pv.pool) {
        let cpu = pool.sched.lock().stop(pv.entity, now());
        if let Some(c) = cpu {
            resched(pool, c);
        }
    }
}

/// The vCPU this pCPU runs is parking (CPU_OFF, or its VM stops): it
/// leaves the scheduler and this pCPU's registers.
pub fn parked(vm: &Vm, vcpu: VcpuId) {
    let Some(pv) = vm.pool_vcpu(vcpu) else {
        return;
    };
    stop_entity(pv);
    let gicr = percpu::this().gicr.load(Ordering::Relaxed);
    if gicr != 0 {
        gic::set_ppi_active(gicr, VTIMER_INTID, false);
    }
    pv.timer_fired.store(false, Ordering::Relaxed);
    let p = percpu::this();
    p.vm_plus_one.store(0, Ordering::Release);
    pv.loaded.store(0, Ordering::Release);
}

/// At the end of a trap on a pool pCPU: switch vCPU if the scheduler
/// asked (the slice ended, or a vCPU woke that should run first).
#[inline]
pub fn at_exit(frame: &mut TrapFrame) {
    let Some(c) = CPUS.get(this_cpu()) else {
        return;
    };
    if c.pool.load(Ordering::Relaxed) == 0 || !c.resched.swap(false, Ordering::Acquire) {
        return;
    }
    switch(frame, false);
}

/// The running pool vCPU executed WFI (already skipped): it waits for an
/// interrupt, and the pCPU goes to another vCPU or sleeps.
pub fn wfi(frame: &mut TrapFrame) {
    switch(frame, true);
}

/// WFE: a hint that the vCPU spins on something another one holds; it
/// yields its pCPU if anyone else may run.
pub fn wfe(frame: &mut TrapFrame) {
    switch(frame, false);
}

/// What a vCPU about to wait waits for.
enum Wait {
    /// Something is already pending: it does not wait.
    Pending,
    /// Until an interrupt reaches it, or its timer at this physical count
    /// (0: no timer armed).
    Until(u64),
}

/// Whether the running vCPU has an interrupt to take, else when its
/// virtual timer would give it one. Its list registers were just flushed.
fn wait_state(vm: &Vm, vcpu: VcpuId) -> Wait {
    if vm.vgic.lock().has_deliverable(vcpu.0) {
        return Wait::Pending;
    }
    let ctl = regs::cntv_ctl_el0();
    // CNTV_CTL_EL0: ENABLE (0), IMASK (1), ISTATUS (2).
    if ctl & 0b11 != 0b01 {
        return Wait::Until(0);
    }
    let gicr = percpu::this().gicr.load(Ordering::Relaxed);
    if gicr != 0 && gic::ppi_active(gicr, VTIMER_INTID) {
        // The last timer interrupt is not deactivated yet: the timer cannot
        // raise another.
        return Wait::Until(0);
    }
    if ctl & 0b100 != 0 {
        return Wait::Pending;
    }
    // The deadline in physical time, from how far ahead of the guest's
    // virtual now it is: CNTVOFF is modulo 2^64 (a migrated VM's virtual
    // count can be ahead of this machine's physical one).
    let cval = regs::cntv_cval_el0();
    let pnow = regs::cntpct_el0();
    let vnow = pnow.wrapping_sub(vm.cntvoff.load(Ordering::Relaxed));
    if cval <= vnow {
        return Wait::Pending;
    }
    Wait::Until(pnow.saturating_add(cval - vnow).max(1))
}

fn switch(frame: &mut TrapFrame, wfi: bool) {
    let Some((vm, vcpu)) = system::current() else {
        return;
    };
    let Some(pv) = vm.pool_vcpu(vcpu) else {
        return;
    };
    let Some((pool, local)) = my_pool() else {
        return;
    };
    if wfi {
        // What the guest finished in its list registers, before deciding.
        vm.flush_lrs(vcpu);
    }
    let t = now();
    let mut s = pool.sched.lock();
    if wfi {
        match wait_state(vm, vcpu) {
            Wait::Pending => return,
            Wait::Until(at) => {
                pv.wake_at.store(at, Ordering::Relaxed);
                s.block(pv.entity, t);
            }
        }
    }
    let pick = s.schedule(local, t);
    drop(s);
    picked(pool, &pick);
    if pick.run == Some(pv.entity) {
        if wfi {
            // Picked again at once: it was woken meanwhile.
            pv.wake_at.store(0, Ordering::Relaxed);
        }
        return;
    }
    save(pv, frame);
    match pick.run {
        Some(e) => run(pool, local, e),
        None => arch::restart_on_stack(arch::stack_top(this_cpu()), idle),
    }
}

/// Saves the vCPU this pCPU runs (its trap frame and registers) and
/// leaves the pCPU without one.
fn save(pv: &PoolVcpu, frame: &TrapFrame) {
    pv.saved.lock().capture(frame);
    percpu::this().vm_plus_one.store(0, Ordering::Release);
    pv.loaded.store(0, Ordering::Release);
}

/// Runs entity `e`, picked on this pCPU; if it cannot run (its VM is
/// stopping, or it is off), picks again until something runs or the
/// pCPU goes idle.
fn run(pool: &'static PoolHw, local: usize, mut e: Entity) -> ! {
    loop {
        if let Some(regs) = load(pool, e) {
            arch::resume(&regs, arch::stack_top(this_cpu()));
        }
        let pick = pool.sched.lock().schedule(local, now());
        picked(pool, &pick);
        match pick.run {
            Some(next) => e = next,
            None => arch::restart_on_stack(arch::stack_top(this_cpu()), idle),
        }
    }
}

/// Loads entity `e` on this pCPU: its registers, or a fresh context if it
/// is starting. `None` (and the entity leaves the run queue) if it may
/// not run.
fn load(pool: &PoolHw, e: Entity) -> Option<GuestRegs> {
    let &(vmi, vcpu) = pool.members.get(usize::from(e.0))?;
    let vm = system::vms().get(vmi)?;
    let pv = vm.pool_vcpu(vcpu)?;
    let bit = 1u32 << vcpu.0;
    let mut st = vm.state.lock();
    let start = if st.lifecycle == Lifecycle::Running {
        st.power.take_start(vcpu)
    } else {
        None
    };
    if vm.paused.load(Ordering::Acquire) {
        drop(st);
        stop_entity(pv);
        return None;
    }
    let on = matches!(st.power.state(vcpu), Some(VcpuPower::On));
    if st.lifecycle != Lifecycle::Running || (start.is_none() && !on) {
        // Stopping: it would park at once, so it parks here.
        if st.running & bit != 0 {
            st.running &= !bit;
            if st.running == 0 {
                vm.finish_stop(&mut st);
            }
        }
        drop(st);
        stop_entity(pv);
        return None;
    }
    if start.is_some() {
        st.running |= bit;
    }
    // Its registers may still be on the pCPU it left.
    while pv.loaded.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    let cpu = this_cpu();
    pv.loaded.store(cpu + 1, Ordering::Release);
    drop(st);
    if pv.moved_to.load(Ordering::Relaxed) == cpu + 1 {
        pv.moved_to.store(0, Ordering::Relaxed);
        log::info!(
            "{} {}: runs on pCPU {cpu} (moved from the shell)",
            vm.name,
            vcpu
        );
    }
    let p = percpu::this();
    p.vcpu.store(vcpu.index(), Ordering::Relaxed);
    p.vm_plus_one.store(vmi + 1, Ordering::Release);
    // The TLB may hold another vCPU's translations for this VMID from
    // when that one last ran here: invalidated unless this vCPU was the
    // last of its VM here.
    let same = vm.swap_last_ran(cpu, vcpu);
    // SAFETY: the VM's stage-2 table maps only its own memory (checked when
    // it was built); POOL_HCR's traps are all handled in `trap`.
    unsafe {
        regs::set_hcr_el2(regs::POOL_HCR);
        if same {
            regs::set_stage2_keep_tlb(vm.vtcr, vm.vttbr);
        } else {
            regs::set_stage2(vm.vtcr, vm.vttbr);
        }
    }
    regs::set_vpidr_el2(regs::midr_el1());
    regs::set_vmpidr_el2((1 << 31) | bulkhead_psci::vcpu_mpidr(vcpu.0));
    regs::set_cntvoff_el2(vm.cntvoff.load(Ordering::Relaxed));
    let gicr = p.gicr.load(Ordering::Relaxed);
    let fired = pv.timer_fired.swap(false, Ordering::Relaxed);
    pv.wake_at.store(0, Ordering::Relaxed);
    let out = match start {
        Some((entry, x0)) => {
            log::debug!("{} {}: entering at {entry:#x} (pool)", vm.name, vcpu);
            let mut sv = pv.saved.lock();
            sv.ctx = Context::fresh();
            sv.ctx.restore();
            sv.timer_active = false;
            sv.regs = GuestRegs::zero();
            sv.regs.x[0] = x0;
            sv.regs.elr = entry;
            sv.regs.spsr = arch::SPSR_EL1H_MASKED;
            if gicr != 0 {
                gic::set_ppi_active(gicr, VTIMER_INTID, false);
            }
            sv.regs
        }
        None => pv.saved.lock().load(fired),
    };
    if vcpu.0 == 0 {
        // A ring that came while it was not running.
        crate::channel::refresh(vm, vcpu);
    }
    vm.flush_lrs(vcpu);
    Some(out)
}

/// A pool pCPU's home while it has no vCPU to run: pick one, else sleep
/// until an interrupt says there may be one.
pub extern "C" fn idle() -> ! {
    let Some((pool, local)) = my_pool() else {
        system::idle()
    };
    percpu::this().vm_plus_one.store(0, Ordering::Release);
    loop {
        CPUS[this_cpu()].resched.store(false, Ordering::Relaxed);
        let pick = pool.sched.lock().schedule(local, now());
        picked(pool, &pick);
        if let Some(e) = pick.run {
            run(pool, local, e);
        }
        arch::wait_for_interrupt();
        system::service_interrupts_without_vcpu();
    }
}

/// After a pick on this pCPU: its timer is set for the slice end, and a
/// pCPU the pick left work for (to pull, or a vCPU moved there) is told.
fn picked(pool: &PoolHw, pick: &bulkhead_sched::Pick) {
    set_slice(pick.until);
    if let Some(k) = pick.kick {
        resched(pool, k);
    }
}

/// The running vCPU's slice (or the throttle of an idle pCPU) ends at
/// `until`; the EL2 timer is set for it and for waiting vCPUs' timers.
fn set_slice(until: Option<u64>) {
    if let Some(c) = CPUS.get(this_cpu()) {
        c.slice_at
            .store(until.map_or(0, |u| u.max(1)), Ordering::Relaxed);
    }
    program();
}

/// The console's stall check wants the EL2 timer at `at` on this pCPU
/// (`None`: no longer).
pub fn set_console_deadline(at: Option<u64>) {
    if let Some(c) = CPUS.get(this_cpu()) {
        c.console_at.store(at.unwrap_or(0), Ordering::Relaxed);
    }
    program();
}

/// The next round of a moved VM's MAC announcements wants the EL2 timer
/// at `at` on this pCPU (`None`: no longer).
pub fn set_announce_deadline(at: Option<u64>) {
    if let Some(c) = CPUS.get(this_cpu()) {
        c.announce_at.store(at.unwrap_or(0), Ordering::Relaxed);
    }
    program();
}

/// A waiting shell command wants the EL2 timer at `at` on this pCPU
/// (`None`: no longer); the timer only wakes it.
pub fn set_doze_deadline(at: Option<u64>) {
    if let Some(c) = CPUS.get(this_cpu()) {
        c.doze_at
            .store(at.map_or(0, |u| u.max(1)), Ordering::Relaxed);
    }
    program();
}

/// Arms this pCPU's EL2 timer for the earliest of what waits for it.
fn program() {
    let Some(c) = CPUS.get(this_cpu()) else {
        return;
    };
    let mut at = [
        c.slice_at.load(Ordering::Relaxed),
        c.console_at.load(Ordering::Relaxed),
        c.announce_at.load(Ordering::Relaxed),
        c.doze_at.load(Ordering::Relaxed),
    ]
    .into_iter()
    .filter(|&t| t != 0)
    .min();
    if let Some((pool, _)) = my_pool() {
        for &(vmi, vcpu) in &pool.members {
            let w = system::vms()
                .get(vmi)
                .and_then(|vm| vm.pool_vcpu(vcpu))
                .map_or(0, |pv| pv.wake_at.load(Ordering::Relaxed));
            if w != 0 {
                at = Some(at.map_or(w, |a| a.min(w)));
            }
        }
    }
    if let Some(intid) = system::el2_timer_intid() {
        let gicr = percpu::this().gicr.load(Ordering::Relaxed);
        if gicr != 0 && at.is_some() {
            gic::enable_ppi(gicr, intid);
        }
    }
    regs::set_el2_timer(at);
}

/// The EL2 timer fired on this pCPU: the console's stall check, the end
/// of a slice, a waiting vCPU's timer, or a round of MAC announcements.
pub fn el2_timer() {
    let Some(c) = CPUS.get(this_cpu()) else {
        return;
    };
    let t = now();
    let console = c.console_at.load(Ordering::Relaxed);
    let console_due = console != 0 && console <= t;
    if console_due {
        c.console_at.store(0, Ordering::Relaxed);
    }
    let slice = c.slice_at.load(Ordering::Relaxed);
    if slice != 0 && slice <= t {
        c.slice_at.store(0, Ordering::Relaxed);
        c.resched.store(true, Ordering::Release);
    }
    let announce = c.announce_at.load(Ordering::Relaxed);
    let announce_due = announce != 0 && announce <= t;
    if announce_due {
        c.announce_at.store(0, Ordering::Relaxed);
    }
    let doze = c.doze_at.load(Ordering::Relaxed);
    if doze != 0 && doze <= t {
        c.doze_at.store(0, Ordering::Relaxed);
    }
    if let Some((pool, _)) = my_pool() {
        wake_timers(pool, t);
    }
    program();
    if console_due {
        system::console_stall_check();
    }
    if announce_due {
        crate::net::announce_due();
    }
}

/// Waiting vCPUs whose virtual timer is due get its interrupt and wake.
fn wake_timers(pool: &PoolHw, t: u64) {
    for &(vmi, vcpu) in &pool.members {
        let Some(vm) = system::vms().get(vmi) else {
            continue;
        };
        let Some(pv) = vm.pool_vcpu(vcpu) else {
            continue;
        };
        let at = pv.wake_at.load(Ordering::Relaxed);
        if at == 0 || at > t {
            continue;
        }
        if pv
            .wake_at
            .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        pv.timer_fired.store(true, Ordering::Relaxed);
        // Hardware-backed: where it runs next, the physical PPI is made
        // active, and the guest's deactivation ends it.
        let _ = vm.vgic.lock().set_pending(vcpu.0, VTIMER_INTID);
        kick(vm, vcpu);
    }
}

/// Holds a pool VM's vCPUs off their pCPUs (a snapshot): each leaves its
/// run queue, one that runs is switched out, and this returns once every
/// one's registers are saved. Interrupts for it meanwhile stay pending in
/// its vGIC. Errors (and the VM runs on) if a vCPU does not leave in 2 s.
pub fn pause(vm: &Vm) -> Result<(), String> {
    if vm.pool.is_empty() {
        return crate::hold::pause(vm);
    }
    let pool = pool_of(vm).ok_or_else(|| alloc::format!("{} is not a pool VM", vm.name))?;
    vm.paused.store(true, Ordering::Release);
    for pv in &vm.pool {
        pv.wake_at.store(0, Ordering::Relaxed);
        let cpu = pool.sched.lock().stop(pv.entity, now());
        if let Some(c) = cpu {
            resched(pool, c);
        }
    }
    let deadline = now().saturating_add(ms(2000));
    while vm
        .pool
        .iter()
        .any(|pv| pv.loaded.load(Ordering::Acquire) != 0)
    {
        if now() > deadline {
            resume(vm);
            return Err(alloc::format!(
                "{}: a vCPU did not leave its pCPU within 2 s",
                vm.name
            ));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Lets a paused VM run again: every vCPU is woken and the ones that are
/// on run (a spurious wake-up of a waiting one is allowed by WFI).
pub fn resume(vm: &Vm) {
    if vm.pool.is_empty() {
        return crate::hold::resume(vm);
    }
    vm.paused.store(false, Ordering::Release);
    for v in 0..vm.n_vcpus() {
        kick(vm, VcpuId(v));
    }
}

/// A restore filled the saved registers of stopped VM `vm` and made it
/// running: its vCPUs run from them.
pub fn start_restored(vm: &Vm) {
    if vm.pool.is_empty() {
        crate::hold::start_restored(vm);
    } else {
        resume(vm);
    }
}

/// The saved registers of pool vCPU `vcpu`, which no pCPU holds (paused
/// or stopped): GPRs and PC, the rest of its context, and whether its
/// timer PPI was active.
pub fn with_saved<R>(
    vm: &Vm,
    vcpu: VcpuId,
    f: impl FnOnce(&mut GuestRegs, &mut Context, &mut bool) -> R,
) -> Option<R> {
    if vm.pool.is_empty() {
        return crate::hold::with_saved(vm, vcpu, f);
    }
    let pv = vm.pool_vcpu(vcpu)?;
    if pv.loaded.load(Ordering::Acquire) != 0 {
        return None;
    }
    Some(pv.saved.lock().with(f))
}

/// Whether pool vCPU `vcpu`'s timer interrupt was set pending while no
/// pCPU held it: its next load makes the physical PPI active, as if it had
/// been taken (a snapshot records it with the vCPU's timer state).
pub fn timer_fired(vm: &Vm, vcpu: VcpuId) -> bool {
    vm.pool_vcpu(vcpu)
        .is_some_and(|pv| pv.timer_fired.load(Ordering::Relaxed))
}

/// A restored vCPU's timer state replaces whatever its last instance
/// left.
pub fn clear_timer_fired(vm: &Vm, vcpu: VcpuId) {
    if let Some(pv) = vm.pool_vcpu(vcpu) {
        pv.timer_fired.store(false, Ordering::Relaxed);
    }
}

/// `move VM VCPU PCPU` in the shell.
pub fn move_vcpu(vm: &Vm, vcpu: VcpuId, pcpu: usize) -> Result<(), String> {
    let pv = vm
        .pool_vcpu(vcpu)
        .ok_or_else(|| alloc::format!("{} {} is pinned, not in a pool", vm.name, vcpu))?;
    let pool = pools().get(pv.pool).ok_or("no such pool")?;
    let local = pool.pcpus.iter().position(|&c| c == pcpu).ok_or_else(|| {
        alloc::format!(
            "pCPU {pcpu} is not in pool '{}' (its pCPUs: {:?})",
            pool.name,
            pool.pcpus
        )
    })?;
    pv.moved_to.store(pcpu + 1, Ordering::Relaxed);
    let r = pool.sched.lock().move_to(pv.entity, local, now());
    match r {
        Ok(Some(c)) => {
            resched(pool, c);
            Ok(())
        }
        Ok(None) => {
            // A queued vCPU moved queues: the new pCPU may be idle.
            resched(pool, local);
            Ok(())
        }
        Err(e) => Err(alloc::format!("{e:?}")),
    }
}

/// Each pool vCPU's cap (`None`: uncapped), in vCPU order; empty for a
/// pinned VM.
pub fn caps(vm: &Vm) -> Vec<Option<u8>> {
    vm.pool
        .iter()
        .map(|pv| {
            pools()
                .get(pv.pool)
                .and_then(|pool| pool.sched.lock().entity(pv.entity).cap)
        })
        .collect()
}

/// Sets the caps of `vm`'s pool vCPUs (in vCPU order, as [`caps`] gives
/// them); a migration slows a VM that dirties memory faster than the link
/// carries it, and gives the VM its own caps back if it stays.
pub fn set_caps(vm: &Vm, caps: &[Option<u8>]) {
    for (pv, &cap) in vm.pool.iter().zip(caps) {
        let Some(pool) = pools().get(pv.pool) else {
            continue;
        };
        let kick = pool.sched.lock().set_cap(pv.entity, cap, now());
        if let Some(c) = kick {
            resched(pool, c);
        }
    }
}

/// The pool a VM's vCPUs share, if it is a pool VM.
pub fn pool_of(vm: &Vm) -> Option<&'static PoolHw> {
    pools().get(vm.pool.first()?.pool)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Stopped => "off",
        State::Runnable => "runnable",
        State::Running => "running",
        State::Blocked => "waiting",
        State::Throttled => "throttled",
    }
}

/// `sched` in the shell: per pool pCPU its run queue and load, per vCPU
/// its state, pCPU and the CPU time it got (microseconds of the counter).
pub fn show() {
    let say = |a: core::fmt::Arguments| crate::console::shell_fmt(format_args!("{a}\n"));
    if pools().is_empty() {
        say(format_args!(
            "no pools: every vCPU is pinned to its own pCPU"
        ));
        return;
    }
    let us = |ticks: u64| ticks.saturating_mul(1_000_000) / regs::cntfrq_el0().max(1);
    for pool in pools() {
        // Copied out under the lock, printed without it.
        let (cpus, ents): (Vec<_>, Vec<_>) = {
            let s = pool.sched.lock();
            (
                (0..s.cpus()).map(|c| s.cpu(c)).collect(),
                (0..s.entities())
                    .map(|e| s.entity(Entity(e as u16)))
                    .collect(),
            )
        };
        say(format_args!(
            "pool '{}': pCPUs {:?}, now_us {}",
            pool.name,
            pool.pcpus,
            us(now())
        ));
        let name = |e: Entity| {
            pool.members
                .get(usize::from(e.0))
                .and_then(|&(vm, v)| Some((system::vms().get(vm)?.name.as_str(), v.0)))
                .unwrap_or(("?", 0))
        };
        for (local, c) in cpus.iter().enumerate() {
            let running = c.running.map(name);
            let mut line = String::new();
            match running {
                Some((vm, v)) => {
                    let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{vm}/{v}"));
                }
                None => line.push_str("idle"),
            }
            say(format_args!(
                "  pCPU {:<3} running {:<20} queued {:<3} load {:<6} busy_us {}",
                pool.pcpus.get(local).copied().unwrap_or(usize::MAX),
                line,
                c.queued,
                c.load,
                us(c.busy)
            ));
        }
        say(format_args!(
            "  {:<20} {:<10} {:>4} {:>6} {:>4} {:>12} {:>12}",
            "VCPU", "STATE", "PCPU", "WEIGHT", "CAP", "RUNTIME_US", "TIMER_IN_US"
        ));
        for (e, info) in ents.iter().enumerate() {
            let (vm, v) = name(Entity(e as u16));
            let mut id = String::new();
            let _ = core::fmt::Write::write_fmt(&mut id, format_args!("{vm}/{v}"));
            let mut cap = String::new();
            match info.cap {
                Some(c) => {
                    let _ = core::fmt::Write::write_fmt(&mut cap, format_args!("{c}%"));
                }
                None => cap.push('-'),
            }
            // A waiting vCPU's timer deadline: "-" when it waits for an
            // interrupt alone.
            let wake = system::vms()
                .iter()
                .flat_map(|vm| vm.pool.iter())
                .find(|pv| pv.entity == Entity(e as u16))
                .map_or(0, |pv| pv.wake_at.load(Ordering::Relaxed));
            let mut timer = String::new();
            if info.state == State::Blocked && wake != 0 {
                let left = wake.saturating_sub(now());
                let _ = core::fmt::Write::write_fmt(&mut timer, format_args!("{}", us(left)));
            } else {
                timer.push('-');
            }
            say(format_args!(
                "  {:<20} {:<10} {:>4} {:>6} {:>4} {:>12} {:>12}",
                id,
                state_name(info.state),
                pool.pcpus.get(info.cpu).copied().unwrap_or(usize::MAX),
                info.weight,
                cap,
                us(info.runtime),
                timer
            ));
        }
    }
}
