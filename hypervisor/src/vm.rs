//! Virtual machines: their memory, stage-2 table, image, devices and
//! lifecycle (running, stopping for off or reset, stopped).

use crate::arch::{self, cache, gic, ich, mmu::IdentityTables, regs};
use crate::{percpu, system};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use bulkhead_config::{RestartPolicy, VmConfig, RAM_IPA};
use bulkhead_devices::pl011::Pl011;
use bulkhead_pagetable::{Attrs, MemType, PageTable, Regime};
use bulkhead_psci::{GuestRam, PowerState};
use bulkhead_types::{PcpuId, PhysAddr, VcpuId, VmId};
use bulkhead_vgic::{Kicks, VGic};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use spin::Mutex;

pub use bulkhead_config::{VGICD_IPA, VGICR_IPA, VUART_IPA, VUART_SPI};
pub const VUART_INTID: u32 = 32 + VUART_SPI;
/// The EL1 virtual timer's PPI (INTID 27), injected hardware-backed.
pub const VTIMER_INTID: u32 = 27;
/// SPIs each VM's distributor implements (INTIDs 32..128).
pub const NR_SPIS: u32 = 96;
/// Room kept at the top of RAM for the generated device tree.
pub const DTB_SPACE: u64 = 64 << 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lifecycle {
    Running,
    /// Waiting for every running vCPU to leave; then stopped or restarted.
    Stopping(End),
    Stopped,
}

/// Why a VM is ending; with its restart policy this decides what follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    /// The guest called SYSTEM_OFF.
    Off,
    /// The guest called SYSTEM_RESET (a reboot, or Linux's `panic=-1`).
    Reset,
    /// The hypervisor found it unable to continue (SError, AArch32, ...).
    Crash,
    /// `stop` in the console shell.
    ShellStop,
    /// `restart` in the console shell.
    ShellRestart,
    /// `migrate` moved it to another machine, which runs it now.
    Migrated,
}

impl End {
    /// Restart after this end under `policy`?
    pub fn restarts(self, policy: RestartPolicy) -> bool {
        match self {
            End::ShellRestart => true,
            End::ShellStop | End::Migrated => false,
            End::Reset | End::Crash => policy != RestartPolicy::Never,
            End::Off => policy == RestartPolicy::Always,
        }
    }

    /// Whether a VM that stayed stopped after this end stopped as asked
    /// (its own SYSTEM_OFF, or `stop` in the shell) rather than by a crash
    /// or a reset its policy did not follow (Linux turns a panic into a
    /// reset).
    pub fn is_clean(self) -> bool {
        matches!(self, End::Off | End::ShellStop | End::Migrated)
    }

    /// For [`Vm::ended`]: 0 is "has not ended".
    const fn code(self) -> u8 {
        match self {
            End::Off => 1,
            End::Reset => 2,
            End::Crash => 3,
            End::ShellStop => 4,
            End::ShellRestart => 5,
            End::Migrated => 6,
        }
    }

    fn from_code(code: u8) -> Option<End> {
        [
            End::Off,
            End::Reset,
            End::Crash,
            End::ShellStop,
            End::ShellRestart,
            End::Migrated,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }

    /// How the VM ended, for the final summary.
    pub fn describe(self) -> &'static str {
        match self {
            End::Off => "powered off",
            End::Reset => "reset (a reboot or a kernel panic) and not restarted",
            End::Crash => "crashed",
            End::ShellStop => "stopped from the shell",
            End::ShellRestart => "restarting",
            End::Migrated => "migrated to another machine",
        }
    }
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
    pub vcpus: [VcpuStats; bulkhead_psci::MAX_VCPUS],
    pub refused: AtomicU64,
    /// Channel doorbells this VM rang.
    pub doorbells: AtomicU64,
    /// Stage-2 write faults taken for dirty-page tracking.
    pub dirty_faults: AtomicU64,
}

/// Exits of one vCPU by reason, and virtual interrupts put in its list
/// registers. Written only by the pCPU that runs the vCPU.
#[derive(Default)]
pub struct VcpuStats {
    pub smccc: AtomicU64,
    pub mmio: AtomicU64,
    pub sysreg: AtomicU64,
    pub irq: AtomicU64,
    pub other: AtomicU64,
    pub injected: AtomicU64,
    /// Ticks by which the last virtual-timer interrupt was past its compare
    /// value when it reached EL2: the platform's delay, before Bulkhead
    /// ran. The guest reads it with the BULKHEAD_TIMER_LATE hypercall.
    pub timer_late: AtomicU64,
}

/// One more event in a counter with a single writer (no atomic
/// read-modify-write needed on the trap path).
pub fn bump(c: &AtomicU64) {
    bump_by(c, 1);
}

/// Adds `n` to a counter only this pCPU writes (a plain load and store).
pub fn bump_by(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

pub struct Vm {
    pub id: VmId,
    pub name: String,
    /// A pinned VM's pCPUs (vCPU i on `pcpus[i]`); empty for a pool VM.
    pub pcpus: Vec<PcpuId>,
    n_vcpus: u16,
    /// A pool VM's vCPUs (their scheduling handles and saved state);
    /// empty for a pinned VM.
    pub pool: Vec<crate::sched::PoolVcpu>,
    /// A pinned VM's vCPUs' slots for their registers while it is held
    /// for a snapshot or restored from one (`hold`); empty for a pool VM.
    pub pinned: Vec<crate::hold::Pinned>,
    /// Per pCPU: the vCPU of this VM that last ran there, + 1 (0: none),
    /// which decides whether loading another one there needs TLB
    /// maintenance.
    last_ran: [AtomicU16; arch::MAX_CPUS],
    pub ram: PhysAddr,
    pub ram_size: u64,
    pub vttbr: u64,
    pub vtcr: u64,
    /// Changed only for dirty-page tracking (crate::dirty), with this
    /// lock held.
    pub stage2: Mutex<PageTable<IdentityTables>>,
    /// Dirty-page bits of RAM while tracking (crate::dirty), taken after
    /// `stage2`.
    pub dirty: Mutex<Vec<u64>>,
    pub tracking: AtomicBool,
    image: &'static [u8],
    initramfs: Option<&'static [u8]>,
    /// A device tree the config gave, loaded as it is instead of the
    /// generated one.
    dtb: Option<&'static [u8]>,
    cmdline: String,
    pub passthrough: Vec<bulkhead_config::Passthrough>,
    load_offset: u64,
    pub state: Mutex<VmState>,
    // Boxed, as the two big models (the UART holds a 4 KiB input ring):
    // a `Vm` moves through a few stack slots while it is built at boot.
    pub vgic: Box<Mutex<VGic>>,
    pub uart: Box<Mutex<Pl011>>,
    /// A critical VM's console output waits here, not for the console
    /// lock (`console::guest_line`); `None` for the others.
    pub console_queue: Option<Box<bulkhead_devices::outq::OutQueue>>,
    /// The level last given to the vGIC for the UART's SPI (changed only
    /// with the `uart` lock held).
    uart_level: AtomicBool,
    pub restarts: AtomicU64,
    /// How the VM last stopped for good ([`End::code`]; 0 while it has not):
    /// an atomic so the final summary reads every VM's without their locks.
    ended: AtomicU8,
    /// CNTVOFF_EL2 for every vCPU: the counter when the VM last started.
    pub cntvoff: AtomicU64,
    /// Held off its pCPUs for a snapshot (pool VMs: `sched::pause`).
    pub paused: AtomicBool,
    pub complaints: AtomicU32,
    pub stats: VmStats,
    /// Has an initramfs (a Linux userland, usually a shell): the first such
    /// VM gets console input focus.
    pub has_initramfs: bool,
    pub restart: RestartPolicy,
    pub criticality: bulkhead_config::Criticality,
    /// The channel ends it holds.
    pub ends: Vec<crate::channel::End>,
    /// Its virtio devices (disk slices, then NICs), at `VIRTIO_IPA` on.
    pub virtio: Vec<crate::virtio::VirtioDev>,
}

/// What a VM boots from, out of the image payload.
pub struct GuestImages {
    pub image: &'static [u8],
    pub initramfs: Option<&'static [u8]>,
    pub dtb: Option<&'static [u8]>,
}

impl Vm {
    /// Builds a VM: stage-2 table over `ram` and its channel ends' shared
    /// memory (`(end, host address, size)`), image checked against its size.
    pub fn new(
        id: VmId,
        cfg: &VmConfig,
        images: GuestImages,
        ram: PhysAddr,
        ipa_bits: u8,
        pa_range: u8,
        ends: Vec<(crate::channel::End, u64, u64)>,
        virtio: Vec<crate::virtio::VirtioDev>,
        pool: Vec<crate::sched::PoolVcpu>,
    ) -> Result<Vm, String> {
        let GuestImages {
            image,
            initramfs,
            dtb,
        } = images;
        if let Some(blob) = dtb {
            // The host tool checked it; the payload is checked again here,
            // as everything in it is.
            let total = blob
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            if !blob.starts_with(&bulkhead_config::FDT_MAGIC) {
                return Err("its device tree has no FDT magic".into());
            }
            match total {
                Some(t) if u64::from(t) <= DTB_SPACE && t as usize <= blob.len() => {}
                _ => {
                    return Err(alloc::format!(
                        "its device tree's totalsize is missing, past the file or above {DTB_SPACE:#x} bytes"
                    ))
                }
            }
        }
        // An arm64 Image honours its header's text_offset (Linux
        // booting.rst); a raw image goes where an old Image would, 0x80000.
        let info = bulkhead_config::ImageInfo::of(image);
        let load_offset = info.load_offset;
        let kernel_end = load_offset
            .checked_add(info.len.max(info.mem_size))
            .ok_or("image size overflows")?;
        let initrd_len = initramfs.map_or(0, |i| i.len() as u64);
        let need = kernel_end
            .saturating_add(initrd_len)
            .saturating_add(DTB_SPACE);
        if need > cfg.memory {
            return Err(alloc::format!(
                "image ends at {kernel_end:#x}, initramfs {initrd_len:#x} and device tree {DTB_SPACE:#x} bytes: {need:#x} > the VM's {:#x}",
                cfg.memory
            ));
        }
        let n_vcpus = cfg.vcpu_count() as u16;
        let mut vgic = VGic::new(n_vcpus, NR_SPIS);
        vgic.set_hw(VTIMER_INTID, VTIMER_INTID);
        // Passthrough interrupts are hardware-backed too: the guest's
        // deactivation reaches the physical GIC.
        for d in &cfg.passthrough {
            for &irq in &d.irqs {
                vgic.set_hw(irq, irq);
            }
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
        // Passthrough MMIO, at the same address as on the host, device
        // memory, never executable.
        for d in &cfg.passthrough {
            let dev = Attrs {
                mem: MemType::Device,
                read: true,
                write: true,
                exec: false,
            };
            stage2
                .map(d.base, d.base, d.size, dev)
                .map_err(|e| alloc::format!("stage-2 map of passthrough '{}': {e:?}", d.name))?;
        }
        // Channel shared memory: normal memory, never executable.
        for (e, pa, size) in &ends {
            let shm = Attrs {
                mem: MemType::Normal,
                read: true,
                write: true,
                exec: false,
            };
            stage2
                .map(e.shm_ipa, *pa, *size, shm)
                .map_err(|err| alloc::format!("stage-2 map of channel memory: {err:?}"))?;
        }
        let vmid = id.0 + 1;
        Ok(Vm {
            id,
            name: cfg.name.clone(),
            pcpus: cfg.pcpus.iter().map(|&p| PcpuId(p)).collect(),
            n_vcpus,
            pinned: if pool.is_empty() {
                (0..n_vcpus).map(|_| crate::hold::Pinned::new()).collect()
            } else {
                Vec::new()
            },
            pool,
            last_ran: [const { AtomicU16::new(0) }; arch::MAX_CPUS],
            ram,
            ram_size: cfg.memory,
            vttbr: bulkhead_pagetable::vttbr(vmid, stage2.root()),
            vtcr: bulkhead_pagetable::vtcr_el2(ipa_bits, stage2.start_level(), pa_range),
            stage2: Mutex::new(stage2),
            dirty: Mutex::new(Vec::new()),
            tracking: AtomicBool::new(false),
            image,
            initramfs,
            dtb,
            cmdline: cfg.cmdline.clone(),
            passthrough: cfg.passthrough.clone(),
            load_offset,
            vgic: Box::new(Mutex::new(vgic)),
            state: Mutex::new(VmState {
                lifecycle: Lifecycle::Stopped,
                power: PowerState::new(n_vcpus),
                running: 0,
            }),
            uart: Box::new(Mutex::new(Pl011::new())),
            console_queue: (cfg.criticality == bulkhead_config::Criticality::Critical)
                .then(|| Box::new(bulkhead_devices::outq::OutQueue::new())),
            uart_level: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            ended: AtomicU8::new(0),
            cntvoff: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            complaints: AtomicU32::new(0),
            stats: VmStats::default(),
            has_initramfs: cfg.initramfs.is_some(),
            restart: cfg.restart,
            criticality: cfg.criticality,
            ends: ends.into_iter().map(|(e, _, _)| e).collect(),
            virtio,
        })
    }

    /// How the VM last stopped for good, if it has.
    pub fn ended(&self) -> Option<End> {
        End::from_code(self.ended.load(Ordering::Acquire))
    }

    pub fn n_vcpus(&self) -> u16 {
        self.n_vcpus
    }

    /// `vcpu`'s scheduling handle, for a pool VM.
    pub fn pool_vcpu(&self, vcpu: VcpuId) -> Option<&crate::sched::PoolVcpu> {
        self.pool.get(vcpu.index())
    }

    /// Records that `vcpu` is loaded on pCPU `cpu`; true if it was also
    /// the last vCPU of this VM loaded there.
    pub fn swap_last_ran(&self, cpu: usize, vcpu: VcpuId) -> bool {
        self.last_ran
            .get(cpu)
            .is_some_and(|l| l.swap(vcpu.0 + 1, Ordering::Relaxed) == vcpu.0 + 1)
    }

    pub fn guest_ram(&self) -> GuestRam {
        GuestRam {
            base: RAM_IPA,
            size: self.ram_size,
        }
    }

    /// Its RAM, as its devices reach it.
    pub fn memory(&self) -> crate::virtio::VmMem<'_> {
        crate::virtio::VmMem {
            pa: self.ram.0,
            size: self.ram_size,
            vm: self,
        }
    }

    pub fn entry_ipa(&self) -> u64 {
        RAM_IPA + self.load_offset
    }

    /// Scrubs the VM's memory, copies a fresh image (and initramfs) in and
    /// writes its device tree at the top of RAM. Returns the device tree's
    /// IPA, for x0. No vCPU of this VM may be running.
    fn load_image(&self) -> u64 {
        let base = self.ram.0 as usize;
        let size = self.ram_size as usize;
        // SAFETY: [ram, ram+ram_size) was allocated to this VM alone, is
        // identity-mapped in EL2, and no vCPU of the VM runs (caller), so
        // nobody else reads or writes it while we do.
        let mem = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, size) };
        mem.fill(0);
        let put = |mem: &mut [u8], at: u64, bytes: &[u8]| {
            let at = at as usize;
            if let Some(dst) = at
                .checked_add(bytes.len())
                .and_then(|end| mem.get_mut(at..end))
            {
                dst.copy_from_slice(bytes);
            }
        };
        put(mem, self.load_offset, self.image);
        let dtb_off = (self.ram_size - DTB_SPACE) & !0xfff;
        let initrd = self.initramfs.map(|i| {
            let start = (dtb_off - i.len() as u64) & !0xfff;
            put(mem, start, i);
            (RAM_IPA + start, RAM_IPA + start + i.len() as u64)
        });
        if let Some(blob) = self.dtb {
            // The user's device tree, as it is: its /chosen is theirs too.
            put(mem, dtb_off, blob);
            cache::clean_invalidate_for_guest(base, size);
            return RAM_IPA + dtb_off;
        }
        let restarts = u32::try_from(self.restarts.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let compat: Vec<Vec<&str>> = self
            .passthrough
            .iter()
            .map(|d| d.compatible.iter().map(String::as_str).collect())
            .collect();
        let devices: Vec<bulkhead_guest_fdt::Device> = self
            .passthrough
            .iter()
            .zip(&compat)
            .map(|(d, c)| bulkhead_guest_fdt::Device {
                name: &d.name,
                base: d.base,
                size: d.size,
                compatible: c,
                spis: &d.irqs,
            })
            .collect();
        let names: Vec<String> = self
            .ends
            .iter()
            .map(|e| system::channel(e.channel).map_or_else(String::new, |c| c.name.clone()))
            .collect();
        let channels: Vec<bulkhead_guest_fdt::ChannelNode> = self
            .ends
            .iter()
            .zip(&names)
            .filter(|(e, _)| e.pci.is_none())
            .map(|(e, name)| bulkhead_guest_fdt::ChannelNode {
                name,
                regs: (e.regs_ipa, bulkhead_channel::REGS_SIZE),
                shm: (e.shm_ipa, system::channel(e.channel).map_or(0, |c| c.size)),
                spi: e.spi,
            })
            .collect();
        let functions: Vec<(u8, u32)> = self
            .ends
            .iter()
            .filter(|e| e.pci.is_some())
            .map(|e| (e.k as u8, e.spi))
            .collect();
        let pci = (!functions.is_empty()).then_some(bulkhead_guest_fdt::PciHost {
            ecam: (
                bulkhead_config::PCI_ECAM_IPA,
                bulkhead_config::PCI_ECAM_SIZE,
            ),
            window: (
                bulkhead_config::CHANNEL_IPA,
                bulkhead_config::CHANNEL_STRIDE * bulkhead_config::MAX_CHANNELS as u64,
            ),
            functions: &functions,
        });
        let virtio: Vec<bulkhead_guest_fdt::VirtioMmio> = self
            .virtio
            .iter()
            .map(|d| bulkhead_guest_fdt::VirtioMmio {
                base: d.ipa,
                size: bulkhead_virtio::mmio::SIZE,
                spi: d.intid - 32,
            })
            .collect();
        let dt = bulkhead_guest_fdt::GuestDt {
            virtio: &virtio,
            devices: &devices,
            channels: &channels,
            pci,
            mem_base: RAM_IPA,
            mem_size: self.ram_size,
            n_vcpus: self.n_vcpus(),
            gicd: (VGICD_IPA, bulkhead_vgic::GICD_SIZE),
            gicr: (
                VGICR_IPA,
                bulkhead_vgic::GICR_FRAME_SIZE * self.n_vcpus() as u64,
            ),
            uart: (VUART_IPA, bulkhead_devices::pl011::SIZE, VUART_SPI),
            timer: bulkhead_guest_fdt::Timer::default(),
            bootargs: &self.cmdline,
            restarts,
            initrd,
        };
        match bulkhead_guest_fdt::build(&dt) {
            Ok(blob) if blob.len() as u64 <= DTB_SPACE => put(mem, dtb_off, &blob),
            Ok(blob) => log::error!(
                "{}: device tree of {} bytes does not fit",
                self.name,
                blob.len()
            ),
            Err(e) => log::error!("{}: device tree not generated: {e:?}", self.name),
        }
        cache::clean_invalidate_for_guest(base, size);
        RAM_IPA + dtb_off
    }

    /// (Re)starts the VM from a fresh image with vCPU 0 pending. Called with
    /// the state lock held and no vCPU running.
    pub fn boot(&self, st: &mut VmState) {
        crate::hold::forget(self);
        crate::channel::vm_starting(self);
        // Before the memory is scrubbed: nothing may be delivered into the
        // old instance's rings once the new one's memory is laid out.
        self.reset_virtio();
        let dtb = self.load_image();
        self.vgic.lock().reset();
        // No register state and no unread console input of the old instance.
        system::reset_vm_uart(self);
        self.uart_level.store(false, Ordering::Relaxed);
        self.cntvoff.store(regs::cntpct_el0(), Ordering::Relaxed);
        st.power.boot(self.entry_ipa(), dtb);
        st.lifecycle = Lifecycle::Running;
        crate::net::vm_started(self, false);
        self.kick_vcpu(VcpuId(0));
    }

    /// Acts on a vGIC change: flush this pCPU's own vCPU now, kick the
    /// others' pCPUs so they flush theirs.
    /// `me` is the vCPU of this VM running on this pCPU, if any.
    pub fn apply_kicks(&self, kicks: Kicks, me: Option<VcpuId>) {
        for v in 0..self.n_vcpus() {
            if kicks.0 & (1 << v) == 0 {
                continue;
            }
            match me {
                Some(me) if me.0 == v => self.flush_lrs(me),
                _ => self.kick_vcpu(VcpuId(v)),
            }
        }
    }

    pub fn vcpu_stats(&self, vcpu: VcpuId) -> Option<&VcpuStats> {
        self.stats.vcpus.get(vcpu.index())
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Runs the list-register cycle for `vcpu`, which runs on this pCPU.
    /// Every LR the model did not fill is empty: `start_vcpu` clears them
    /// all and the model writes zero into each one it gives up, so only
    /// the LRs in flight are read.
    pub fn flush_lrs(&self, vcpu: VcpuId) {
        let f = self.vgic.lock().flush_with(
            vcpu.0,
            ich::num_lrs(),
            ich::elrsr(),
            ich::read_lr,
            ich::write_lr,
        );
        self.after_flush(vcpu, f);
    }

    /// A private interrupt of `vcpu`, which runs on this pCPU, fired (the
    /// virtual timer): into its LRs at once, through the vGIC's shortcut
    /// when nothing else is in flight.
    pub fn raise_private_now(&self, vcpu: VcpuId, intid: u32) {
        let f = self.vgic.lock().raise_private_now(
            vcpu.0,
            intid,
            ich::num_lrs(),
            ich::elrsr(),
            ich::read_lr,
            ich::write_lr,
        );
        self.after_flush(vcpu, f);
    }

    fn after_flush(&self, vcpu: VcpuId, f: bulkhead_vgic::Flush) {
        if let Some(c) = self.vcpu_stats(vcpu) {
            bump_by(&c.injected, u64::from(f.injected));
        }
        ich::set_hcr(ich::HCR_EN | if f.underflow { ich::HCR_UIE } else { 0 });
        // An SPI that left this vCPU's list registers may now be another's.
        for v in f.kicks.iter().filter(|&v| v != vcpu.0) {
            self.kick_vcpu(VcpuId(v));
        }
    }

    /// The virtual UART's interrupt line follows the model's level.
    /// Only a change of level reaches the vGIC, so a status read (the
    /// common case) costs no vGIC work.
    pub fn update_uart_line(&self, me: Option<VcpuId>) {
        let uart = self.uart.lock();
        let level = uart.irq_level();
        if self.uart_level.swap(level, Ordering::Relaxed) == level {
            return;
        }
        let kicks = self.vgic.lock().set_line(0, VUART_INTID, level);
        drop(uart);
        self.apply_kicks(kicks, me);
    }

    /// Makes the pCPU of `vcpu` look at its state again.
    pub fn kick_vcpu(&self, vcpu: VcpuId) {
        if !self.pool.is_empty() {
            crate::sched::kick(self, vcpu);
            return;
        }
        let Some(&pcpu) = self.pcpus.get(vcpu.index()) else {
            return;
        };
        // Also when `pcpu` is this one: the caller may be a trap handler
        // about to resume this very vCPU (the shell stopping its own VM),
        // and a pending kick makes it look again right after. In the idle
        // loop it only costs one extra pass.
        if let Some(p) = percpu::get(pcpu.index()) {
            gic::kick(p.mpidr.load(Ordering::Relaxed));
        }
    }

    /// Starts stopping the VM: every running vCPU is kicked and parks
    /// itself; the last one to park finishes the transition.
    pub fn begin_stop(&self, st: &mut VmState, end: End, why: &str) {
        if st.lifecycle != Lifecycle::Running {
            return;
        }
        let verb = if end.restarts(self.restart) {
            "restarting"
        } else {
            "stopping"
        };
        log::info!(
            "{}: {verb} ({why}; restart policy {})",
            self.name,
            self.restart
        );
        st.lifecycle = Lifecycle::Stopping(end);
        st.power.stop_all();
        // No more frames into its memory from other VMs or the uplink, and
        // no disk request of its own still writing there.
        self.reset_virtio();
        for v in 0..self.n_vcpus() {
            if st.running & (1 << v) == 0 {
                continue;
            }
            // A pool vCPU that no pCPU holds (queued or waiting) will not
            // run to park itself: it parks here.
            if crate::sched::stop_unloaded(self, VcpuId(v)) {
                st.running &= !(1 << v);
            } else {
                self.kick_vcpu(VcpuId(v));
            }
        }
        if st.running == 0 {
            self.finish_stop(st);
        }
    }

    /// Called when the last vCPU has parked.
    pub fn finish_stop(&self, st: &mut VmState) {
        // Its passthrough interrupts go back: nobody will deactivate them.
        for d in &self.passthrough {
            for &irq in &d.irqs {
                gic::clear_active_spi(irq);
            }
        }
        let mut flush = |line: &[u8]| crate::console::guest_partial(self, line);
        // A migrated VM's unfinished output line went with its UART state:
        // the target prints it once the guest ends it.
        if !matches!(st.lifecycle, Lifecycle::Stopping(End::Migrated)) {
            self.uart.lock().flush(&mut flush);
        }
        match st.lifecycle {
            Lifecycle::Stopping(end) if end.restarts(self.restart) => {
                let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                log::info!("{}: restart {n}: fresh image loaded", self.name);
                self.boot(st);
            }
            Lifecycle::Stopping(end) => {
                self.ended.store(end.code(), Ordering::Release);
                st.lifecycle = Lifecycle::Stopped;
                crate::channel::vm_stopped(self);
                crate::net::vm_stopped(self);
                log::info!("{}: stopped", self.name);
                system::vm_stopped();
            }
            Lifecycle::Running | Lifecycle::Stopped => {}
        }
    }

    /// Logs a refused guest action, at most 16 times per VM, then once more
    /// to say the rest is suppressed.
    /// Resets every virtio device of the VM (waiting for its disks'
    /// requests in flight).
    fn reset_virtio(&self) {
        for (i, d) in self.virtio.iter().enumerate() {
            d.reset(crate::virtio::Owner {
                vm: self.id.0,
                dev: i as u16,
            });
        }
    }

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
    let this = percpu::this();
    let gicr = this.gicr.load(Ordering::Relaxed);
    if gicr != 0 {
        // A previous vCPU may have left the timer's physical PPI active.
        gic::clear_active_ppi(gicr, VTIMER_INTID);
    }
    ich::reset_for_fresh_vcpu();
    if vcpu.0 == 0 {
        // A ring that came while no vCPU ran (its kick found none).
        crate::channel::refresh(vm, vcpu);
    }
    vm.flush_lrs(vcpu);
    let cpu = this.index.load(Ordering::Relaxed);
    let ge = arch::GuestEntry {
        x0,
        pc: entry,
        spsr: arch::SPSR_EL1H_MASKED,
    };
    arch::run_guest(&ge, arch::stack_top(cpu))
}
