//! Virtual machines: their memory, stage-2 table, image, devices and
//! lifecycle (running, stopping for off or reset, stopped).

use crate::arch::{self, cache, gic, mmu::IdentityTables, regs};
use crate::{percpu, system};
use alloc::string::String;
use alloc::vec::Vec;
use bulkhead_config::{VmConfig, RAM_IPA};
use bulkhead_devices::pl011::Pl011;
use bulkhead_pagetable::{Attrs, MemType, PageTable, Regime};
use bulkhead_psci::{GuestRam, PowerState};
use bulkhead_types::{PcpuId, PhysAddr, VcpuId, VmId};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use spin::Mutex;

/// QEMU virt's PL011, where every VM finds its virtual UART.
pub const VUART_IPA: u64 = 0x0900_0000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lifecycle {
    Running,
    /// Waiting for every running vCPU to leave; then off, or reset.
    Stopping {
        reset: bool,
    },
    Stopped,
}

pub struct VmState {
    pub lifecycle: Lifecycle,
    pub power: PowerState,
    /// vCPUs currently entered on their pCPU (bit per vCPU).
    pub running: u32,
}

/// Counters for `stats` and the logs.
#[derive(Default)]
pub struct VmStats {
    pub hypercalls: AtomicU64,
    pub mmio: AtomicU64,
    pub refused: AtomicU64,
}

pub struct Vm {
    pub id: VmId,
    pub name: String,
    pub pcpus: Vec<PcpuId>,
    pub ram: PhysAddr,
    pub ram_size: u64,
    pub vttbr: u64,
    pub vtcr: u64,
    pub stage2: PageTable<IdentityTables>,
    image: &'static [u8],
    load_offset: u64,
    pub state: Mutex<VmState>,
    pub uart: Mutex<Pl011>,
    pub restarts: AtomicU64,
    /// CNTVOFF_EL2 for every vCPU: the counter when the VM last started.
    pub cntvoff: AtomicU64,
    pub complaints: AtomicU32,
    pub stats: VmStats,
}

/// Where an image goes in RAM: an arm64 `Image` honours its header's
/// text_offset (Linux booting.rst); anything else is loaded at the start.
pub fn load_offset(image: &[u8]) -> u64 {
    let magic = image.get(0x38..0x3c);
    if magic != Some(b"ARM\x64".as_slice()) {
        return 0;
    }
    let mut t = [0u8; 8];
    if let Some(b) = image.get(8..16) {
        t.copy_from_slice(b);
    }
    let text_offset = u64::from_le_bytes(t);
    let mut s = [0u8; 8];
    if let Some(b) = image.get(16..24) {
        s.copy_from_slice(b);
    }
    // image_size 0 marks a pre-3.17 kernel whose text_offset is 0x80000.
    if u64::from_le_bytes(s) == 0 {
        0x8_0000
    } else {
        text_offset
    }
}

impl Vm {
    /// Builds a VM: stage-2 table over `ram`, image checked against its size.
    pub fn new(
        id: VmId,
        cfg: &VmConfig,
        image: &'static [u8],
        ram: PhysAddr,
        ipa_bits: u8,
        pa_range: u8,
    ) -> Result<Vm, String> {
        let load_offset = load_offset(image);
        let need = load_offset
            .checked_add(image.len() as u64)
            .ok_or("image size overflows")?;
        if need > cfg.memory {
            return Err(alloc::format!(
                "image needs {need:#x} bytes (load offset {load_offset:#x}) but the VM has {:#x}",
                cfg.memory
            ));
        }
        let mut stage2 = PageTable::new(IdentityTables, Regime::Stage2, ipa_bits)
            .map_err(|e| alloc::format!("stage-2 table: {e:?}"))?;
        stage2
            .map(
                RAM_IPA,
                ram.0,
                cfg.memory,
                Attrs {
                    mem: MemType::Normal,
                    read: true,
                    write: true,
                    exec: true,
                },
            )
            .map_err(|e| alloc::format!("stage-2 map of RAM: {e:?}"))?;
        let vmid = id.0 + 1;
        Ok(Vm {
            id,
            name: cfg.name.clone(),
            pcpus: cfg.pcpus.iter().map(|&p| PcpuId(p)).collect(),
            ram,
            ram_size: cfg.memory,
            vttbr: bulkhead_pagetable::vttbr(vmid, stage2.root()),
            vtcr: bulkhead_pagetable::vtcr_el2(ipa_bits, stage2.start_level(), pa_range),
            stage2,
            image,
            load_offset,
            state: Mutex::new(VmState {
                lifecycle: Lifecycle::Stopped,
                power: PowerState::new(cfg.pcpus.len() as u16),
                running: 0,
            }),
            uart: Mutex::new(Pl011::new()),
            restarts: AtomicU64::new(0),
            cntvoff: AtomicU64::new(0),
            complaints: AtomicU32::new(0),
            stats: VmStats::default(),
        })
    }

    pub fn n_vcpus(&self) -> u16 {
        self.pcpus.len() as u16
    }

    pub fn guest_ram(&self) -> GuestRam {
        GuestRam {
            base: RAM_IPA,
            size: self.ram_size,
        }
    }

    pub fn entry_ipa(&self) -> u64 {
        RAM_IPA + self.load_offset
    }

    /// Scrubs the VM's memory and copies a fresh image in. No vCPU of this
    /// VM may be running.
    fn load_image(&self) {
        let base = self.ram.0 as usize;
        // SAFETY: [ram, ram+ram_size) was allocated to this VM alone, is
        // identity-mapped in EL2, and no vCPU of the VM runs (caller), so
        // nobody else reads or writes it while we do.
        let mem =
            unsafe { core::slice::from_raw_parts_mut(base as *mut u8, self.ram_size as usize) };
        mem.fill(0);
        let off = self.load_offset as usize;
        if let Some(dst) = mem.get_mut(off..off + self.image.len()) {
            dst.copy_from_slice(self.image);
        }
        cache::clean_invalidate_for_guest(base, self.ram_size as usize);
    }

    /// (Re)starts the VM from a fresh image with vCPU 0 pending. Called with
    /// the state lock held and no vCPU running.
    pub fn boot(&self, st: &mut VmState) {
        self.load_image();
        self.cntvoff.store(regs::cntpct_el0(), Ordering::Relaxed);
        st.power.boot(self.entry_ipa(), 0);
        st.lifecycle = Lifecycle::Running;
        self.kick_vcpu(VcpuId(0));
    }

    /// Makes the pCPU of `vcpu` look at its state again.
    pub fn kick_vcpu(&self, vcpu: VcpuId) {
        let Some(&pcpu) = self.pcpus.get(vcpu.index()) else {
            return;
        };
        if pcpu == percpu::this().id() {
            return; // we will look ourselves before waiting
        }
        if let Some(p) = percpu::get(pcpu.index()) {
            gic::kick(p.mpidr.load(Ordering::Relaxed));
        }
    }

    /// Starts stopping the VM: every running vCPU is kicked and parks
    /// itself; the last one to park finishes the transition.
    pub fn begin_stop(&self, st: &mut VmState, reset: bool, why: &str) {
        if st.lifecycle != Lifecycle::Running {
            return;
        }
        log::info!(
            "{}: {} ({})",
            self.name,
            if reset { "restarting" } else { "stopping" },
            why
        );
        st.lifecycle = Lifecycle::Stopping { reset };
        st.power.stop_all();
        for v in 0..self.n_vcpus() {
            if st.running & (1 << v) != 0 {
                self.kick_vcpu(VcpuId(v));
            }
        }
        if st.running == 0 {
            self.finish_stop(st);
        }
    }

    /// Called when the last vCPU has parked.
    pub fn finish_stop(&self, st: &mut VmState) {
        let mut flush = |line: &[u8]| crate::console::guest_line(&self.name, line);
        self.uart.lock().flush(&mut flush);
        match st.lifecycle {
            Lifecycle::Stopping { reset: true } => {
                let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                log::info!("{}: restart {n}: fresh image loaded", self.name);
                self.uart.lock().reset();
                self.boot(st);
            }
            Lifecycle::Stopping { reset: false } => {
                st.lifecycle = Lifecycle::Stopped;
                log::info!("{}: stopped", self.name);
                system::vm_stopped();
            }
            Lifecycle::Running | Lifecycle::Stopped => {}
        }
    }

    /// Logs a refused guest action, at most 16 times per VM, then once more
    /// to say the rest is suppressed.
    pub fn complain(&self, vcpu: VcpuId, args: core::fmt::Arguments) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let n = self.complaints.fetch_add(1, Ordering::Relaxed);
        if n < 16 {
            log::warn!("{} {}: {}", self.name, vcpu, args);
        } else if n == 16 {
            log::warn!("{}: further refusals are counted but not logged", self.name);
        }
    }
}

/// Resets the EL1 context so nothing of a previous run (or another VM)
/// survives into a fresh vCPU, programs this pCPU for `vm` and enters it.
pub fn enter_fresh_vcpu(vm: &Vm, vcpu: VcpuId, entry: u64, x0: u64) -> ! {
    // SAFETY: the VM's stage-2 table maps only its own RAM (built in
    // `Vm::new`), and GUEST_HCR's traps are all handled in `trap`.
    unsafe {
        regs::set_hcr_el2(regs::GUEST_HCR);
        regs::set_stage2(vm.vtcr, vm.vttbr);
    }
    // SCTLR_EL1 reset value with the MMU and caches off (RES1 bits only).
    regs::set_sctlr_el1(0x30d0_0800);
    regs::set_cpacr_el1(0);
    for f in [
        regs::set_ttbr0_el1,
        regs::set_ttbr1_el1,
        regs::set_tcr_el1,
        regs::set_mair_el1,
        regs::set_amair_el1,
        regs::set_vbar_el1,
        regs::set_contextidr_el1,
        regs::set_tpidr_el0,
        regs::set_tpidrro_el0,
        regs::set_tpidr_el1,
        regs::set_sp_el0,
        regs::set_sp_el1,
        regs::set_elr_el1,
        regs::set_spsr_el1,
        regs::set_esr_el1,
        regs::set_far_el1,
        regs::set_afsr0_el1,
        regs::set_afsr1_el1,
        regs::set_par_el1,
        regs::set_cntkctl_el1,
        regs::set_cntv_ctl_el0,
        regs::set_cntp_ctl_el0,
        regs::set_mdscr_el1,
    ] {
        f(0);
    }
    regs::set_vpidr_el2(regs::midr_el1());
    regs::set_vmpidr_el2((1 << 31) | bulkhead_psci::vcpu_mpidr(vcpu.0));
    regs::set_cntvoff_el2(vm.cntvoff.load(Ordering::Relaxed));
    let cpu = percpu::this().index.load(Ordering::Relaxed);
    let ge = arch::GuestEntry {
        x0,
        pc: entry,
        spsr: arch::SPSR_EL1H_MASKED,
    };
    arch::run_guest(&ge, arch::stack_top(cpu))
}
