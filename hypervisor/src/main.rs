//! Bulkhead: a type-1 hypervisor for Armv8-A. This file is the boot path:
//! discover the machine, map ourselves, start every CPU, build the VMs.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod channel;
mod console;
mod dirty;
mod hold;
mod mgmt;
mod net;
mod percpu;
mod platform;
mod sched;
mod shell;
mod snapshot;
mod sysreg;
mod system;
mod trap;
mod virtio;
mod vm;

use alloc::string::String;
use alloc::vec::Vec;
use arch::{firmware, gic, mmu, regs};
use bulkhead_config::payload::Payload;
use bulkhead_pagetable::{Attrs, MemType, PageTable, Regime};
use bulkhead_regions::{FreeList, Range};
use bulkhead_types::{PhysAddr, VcpuId, VmId};
use core::sync::atomic::Ordering;
use spin::Mutex;

/// The hypervisor's heap, carved out of RAM just after the payload.
#[global_allocator]
static HEAP: buddy_system_allocator::LockedHeap<32> = buddy_system_allocator::LockedHeap::empty();
const HEAP_SIZE: usize = 16 << 20;
const BLOCK: u64 = 2 << 20;

fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// Stops the boot with a message (before any VM exists, nothing else can
/// be done).
fn boot_failed(what: core::fmt::Arguments) -> ! {
    log::error!("boot failed: {what}");
    let _ = firmware::system_off();
    arch::halt()
}

#[unsafe(no_mangle)]
extern "C" fn primary_main(dtb: usize) -> ! {
    percpu::init(0, regs::mpidr_el1() & 0xff_00ff_ffff);
    // SAFETY: x0 at entry holds the DTB address (arm64 boot protocol); the
    // header is validated by `from_ptr` before anything else is read, and
    // the blob stays untouched (it is reserved below).
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(e) => {
            console::init_logger(log::LevelFilter::Info);
            boot_failed(format_args!("no valid device tree at x0 = {dtb:#x}: {e:?}"))
        }
    };
    if let Some(uart) = platform::uart(&fdt) {
        console::set_base(uart as usize);
    }
    console::init_logger(log::LevelFilter::Info);
    log::info!(
        "Bulkhead {} starting at EL{} (DTB at {dtb:#x})",
        env!("CARGO_PKG_VERSION"),
        regs::current_el() >> 2
    );

    let layout = arch::image_layout();
    // The payload sits right after the image; it cannot extend past RAM.
    let ram_end = fdt
        .memory()
        .regions()
        .filter_map(|r| Some(r.starting_address as usize + r.size?))
        .find(|&end| end > layout.end)
        .unwrap_or(layout.end);
    // SAFETY: [layout.end, ram_end) is RAM after our image, loaded by the
    // boot loader together with the image; it is only read here.
    let tail =
        unsafe { core::slice::from_raw_parts(layout.end as *const u8, ram_end - layout.end) };
    let payload = match Payload::parse(tail) {
        Ok(p) => p,
        Err(e) => boot_failed(format_args!(
            "no payload after the image ({e:?}): build the image with `cargo xtask build`"
        )),
    };
    let heap_start = align_up(layout.end as u64 + payload.total_size(), BLOCK);
    if heap_start + HEAP_SIZE as u64 > ram_end as u64 {
        boot_failed(format_args!(
            "RAM ends at {ram_end:#x}: no room for the {HEAP_SIZE:#x}-byte heap"
        ));
    }
    // SAFETY: [heap_start, +HEAP_SIZE) is RAM after the payload, used by
    // nothing else (it is reserved from the VM allocator below).
    unsafe { HEAP.lock().init(heap_start as usize, HEAP_SIZE) };
    let hyp_end = heap_start + HEAP_SIZE as u64;

    let plat = match platform::parse(&fdt) {
        Ok(p) => PLATFORM.call_once(|| p),
        Err(e) => boot_failed(format_args!("host device tree: {e}")),
    };
    log::info!(
        "{} CPUs, RAM {:x?}, GICD {:#x}, GICR {:#x}+{:#x}, UART {:x?}, maintenance IRQ {:?}, timer IRQs {:?}",
        plat.cpus.len(),
        plat.memory,
        plat.gicd,
        plat.gicr.0,
        plat.gicr.1,
        plat.uart,
        plat.maintenance_intid,
        plat.timer_intids
    );

    // Physical memory: RAM minus everything from its start up to the end
    // of our heap (boot loader stub, image, payload, heap), minus the DTB.
    let mut free = FreeList::new();
    for &(base, size) in &plat.memory {
        if let Some(r) = Range::new(base, size) {
            free.add(r);
        }
    }
    let ram_base = plat.memory.iter().map(|m| m.0).min().unwrap_or(0);
    free.reserve(Range {
        start: ram_base,
        end: hyp_end,
    });
    if let Some(r) = Range::new(dtb as u64, fdt.total_size() as u64) {
        free.reserve(r);
    }

    // EL2 stage 1: W^X for our own image, guard pages left unmapped.
    let mmfr0 = regs::id_aa64mmfr0_el1();
    let pa_range = (mmfr0 & 0xf) as u8;
    let pa_bits = bulkhead_pagetable::pa_bits(pa_range).unwrap_or(40);
    let va_bits = pa_bits.min(39);
    let ttbr0 = match build_el2_map(plat, &layout, va_bits) {
        Ok(t) => t,
        Err(e) => boot_failed(format_args!("EL2 page table: {e}")),
    };
    // SAFETY: the table maps all RAM (code RX, rest RW XN), the stacks and
    // the devices we touch, identity, with MAIR_EL2's attribute indexes.
    unsafe {
        mmu::enable(
            bulkhead_pagetable::MAIR_EL2,
            bulkhead_pagetable::tcr_el2(va_bits, pa_range),
            ttbr0,
        )
    };
    log::info!(
        "EL2 MMU on: text RX, data RW XN, {}-bit VA; stack guard pages unmapped",
        va_bits
    );
    arch::mmu_check::verify_el2_map(&layout);

    gic::init_distributor(plat.gicd as usize);
    init_this_cpu(plat, 0);
    if let Some(m) = plat.maintenance_intid {
        system::set_maintenance_intid(m);
    }
    // The timer node lists secure, non-secure, virtual, then EL2 physical
    // (INTID 26 on SBSA-style boards); it times console flow control.
    system::set_el2_timer_intid(plat.timer_intids.get(3).copied().unwrap_or(26));
    virtio::probe(&plat.virtio);
    net::probe(&plat.virtio);
    let (sys, pools) = build_system(plat, &payload, &mut free, pa_range, pa_bits.min(39));
    let sys = system::install(sys);
    for p in &pools {
        log::info!(
            "pool '{}': pCPUs {:?} shared by {} vCPU(s), {} ms slices",
            p.name,
            p.pcpus,
            p.members.len(),
            sched::SLICE_MS
        );
    }
    if !pools.is_empty() {
        let f = arch::context::features();
        log::info!(
            "pool vCPUs switch the base EL1 registers, timers, FP/SIMD and GIC interface, and of the optional ones: {}{}{}{}{}",
            if f.pauth { "PAuth keys " } else { "" },
            if f.tcr2 { "TCR2 " } else { "" },
            if f.sctlr2 { "SCTLR2 " } else { "" },
            if f.s1pie { "PIR/PIRE0 " } else { "" },
            if f.s1poe { "POR " } else { "" },
        );
    }
    sched::install(pools);
    let focus = cfg_focus(sys);
    system::set_input_focus(focus);
    // Critical VMs' console output is printed there too (see
    // `console::guest_line`).
    let drainer = console_cpu(sys, focus);
    console::set_drainer(drainer, plat.cpus.get(drainer).copied().unwrap_or(0));
    if let Some(intid) = plat.uart_intid {
        let cpu = console_cpu(sys, focus);
        log::info!("console input is taken on cpu{cpu}");
        gic::enable_spi(intid, plat.cpus.get(cpu).copied().unwrap_or(0));
        console::enable_rx(intid);
    }
    // Frames from the physical NIC are switched where console input is
    // taken: never on a critical VM's pCPU.
    if let Some(intid) = net::uplink_intid() {
        let cpu = console_cpu(sys, focus);
        log::info!("the uplink's interrupt {intid} is taken on cpu{cpu}");
        gic::enable_spi(intid, plat.cpus.get(cpu).copied().unwrap_or(0));
    }
    // Disk completions start there too, then follow the requests.
    virtio::enable_interrupts(plat.cpus.get(console_cpu(sys, focus)).copied().unwrap_or(0));
    match focus.and_then(|i| sys.vms.get(i)) {
        Some(vm) => log::info!(
            "console input goes to {} (Ctrl-] moves it to the next VM, then the shell)",
            vm.name
        ),
        None => {
            log::info!("console input goes to the hypervisor shell (Ctrl-] moves it to the VMs)")
        }
    }
    if sys.vms.is_empty() {
        log::error!("no VM could be created");
        system::vm_stopped();
    }

    // Secondary CPUs: every CPU in the DTB, through firmware PSCI CPU_ON.
    for (i, &mpidr) in plat.cpus.iter().enumerate().skip(1) {
        if i >= arch::MAX_CPUS {
            log::warn!(
                "cpu{i} (MPIDR {mpidr:#x}) not started: Bulkhead supports {} CPUs",
                arch::MAX_CPUS
            );
            continue;
        }
        if let Some(p) = percpu::get(i) {
            p.mpidr.store(mpidr, Ordering::Relaxed);
        }
        let r = firmware::cpu_on(mpidr, arch::secondary_entry as *const () as u64, i as u64);
        if r != 0 {
            log::error!("PSCI CPU_ON for cpu{i} (MPIDR {mpidr:#x}) failed: {r}");
        }
    }

    // Boot every VM, critical ones first; then cpu0 joins the others in
    // the idle loop.
    let critical = |vm: &&vm::Vm| vm.criticality == bulkhead_config::Criticality::Critical;
    let order = sys
        .vms
        .iter()
        .filter(critical)
        .chain(sys.vms.iter().filter(|vm| !critical(vm)));
    for vm in order {
        let mut st = vm.state.lock();
        vm.boot(&mut st);
        let place = match vm.pool.first().and_then(|p| sched::pools().get(p.pool)) {
            Some(p) => alloc::format!("pool '{}'", p.name),
            None => alloc::format!("{:?}", vm.pcpus),
        };
        log::info!(
            "{}: {} vCPU(s) on {}, {} MiB at {} (IPA {:#x}), VMID {}, entry {:#x}, {}",
            vm.name,
            vm.n_vcpus(),
            place,
            vm.ram_size >> 20,
            vm.ram,
            bulkhead_config::RAM_IPA,
            vm.id.0 + 1,
            vm.entry_ipa(),
            vm.criticality
        );
    }
    #[cfg(feature = "selftest-stack-overflow")]
    trap::selftest_stack_overflow();
    arch::restart_on_stack(arch::stack_top(0), system::idle)
}

#[unsafe(no_mangle)]
extern "C" fn secondary_main(index: usize) -> ! {
    let mpidr = percpu::get(index)
        .map(|p| p.mpidr.load(Ordering::Relaxed))
        .unwrap_or(0);
    percpu::init(index, mpidr);
    if let Some(plat) = PLATFORM.get() {
        init_this_cpu(plat, index);
    }
    log::info!(
        "cpu{index} (MPIDR {mpidr:#x}) online at EL{}",
        regs::current_el() >> 2
    );
    arch::restart_on_stack(arch::stack_top(index), system::idle)
}

static PLATFORM: spin::Once<platform::Platform> = spin::Once::new();

/// Walks the VM's stage-2 table: every leaf must translate into the VM's
/// own RAM or one of its passthrough devices, so nothing of the hypervisor
/// or of another VM is reachable (their RAM never overlaps this VM's: the
/// allocator hands each range out once).
fn stage2_confined(vm: &vm::Vm, channels: &[channel::ChannelHw]) -> Result<(), String> {
    let own = |pa: u64, end: u64| {
        (pa >= vm.ram.0 && end <= vm.ram.0 + vm.ram_size)
            || vm
                .passthrough
                .iter()
                .any(|d| pa >= d.base && end <= d.base.saturating_add(d.size))
            || vm
                .ends
                .iter()
                .filter_map(|e| channels.get(e.channel))
                .any(|c| pa >= c.shm && end <= c.shm.saturating_add(c.size))
    };
    let (mut n, mut largest, mut stray) = (0, 0, None);
    vm.stage2.lock().for_each_mapping(&mut |m| {
        n += 1;
        largest = largest.max(m.size);
        if stray.is_none() && !own(m.pa, m.pa.saturating_add(m.size)) {
            stray = Some(m.pa);
        }
    });
    if let Some(pa) = stray {
        return Err(alloc::format!(
            "its stage 2 maps {pa:#x}, which is not its own"
        ));
    }
    log::info!(
        "{}: stage 2 maps its RAM with {n} descriptor(s), largest block {} KiB; every one is its own RAM or device",
        vm.name,
        largest >> 10
    );
    Ok(())
}

/// A passthrough range that touches RAM or what the hypervisor owns on this
/// machine (GIC frames, its UART, the disks it shares), from the host
/// device tree.
fn passthrough_conflict(
    plat: &platform::Platform,
    vc: &bulkhead_config::VmConfig,
) -> Option<String> {
    let uart = plat.uart.unwrap_or(console::FALLBACK_UART as u64);
    let mut owned = alloc::vec![
        (plat.gicd, 0x1_0000, "the GIC distributor"),
        (plat.gicr.0, plat.gicr.1, "the GIC redistributors"),
        (uart, 0x1000, "the hypervisor's UART")
    ];
    for &(base, size) in &plat.memory {
        owned.push((base, size, "RAM"));
    }
    // The shared disks' register pages (a whole 4 KiB page each, as the
    // stage 2 table would have to map it).
    for d in virtio::disks() {
        owned.push((d.lock().base & !0xfff, 0x1000, "a shared disk"));
    }
    if let Some(u) = net::uplink() {
        owned.push((u.lock().base & !0xfff, 0x1000, "the shared NIC"));
    }
    for d in &vc.passthrough {
        let Some(end) = d.base.checked_add(d.size) else {
            return Some(alloc::format!(
                "passthrough '{}' wraps around the address space",
                d.name
            ));
        };
        for &(b, s, what) in &owned {
            if d.base < b.saturating_add(s) && b < end {
                return Some(alloc::format!(
                    "passthrough '{}' at {:#x} overlaps {what}",
                    d.name,
                    d.base
                ));
            }
        }
    }
    None
}

/// The pCPU that takes console input (and so runs the shell, whose
/// `start`/`restart` scrub and load a VM's memory): one that hosts no vCPU
/// if there is one, else the focused VM's first pCPU, else any pCPU of a
/// VM that is not critical, so typing never steals time from another VM's
/// vCPU and never from a critical VM's (the safety VM's, in the car demo).
/// The config check refuses a board where every pCPU runs a critical VM.
fn console_cpu(sys: &system::System, focus: Option<usize>) -> usize {
    let normal = |vm: &vm::Vm| vm.criticality != bulkhead_config::Criticality::Critical;
    let free = |i: usize, a: &Option<(usize, VcpuId)>| a.is_none() && !sched::is_pool_cpu(i);
    sys.assignment
        .iter()
        .enumerate()
        .position(|(i, a)| free(i, a))
        // A pool's pCPUs run no critical VM.
        .or_else(|| (0..sys.assignment.len()).find(|&i| sched::is_pool_cpu(i)))
        .or_else(|| {
            focus
                .and_then(|f| sys.vms.get(f))
                .filter(|vm| normal(vm))
                .and_then(|vm| vm.pcpus.first())
                .map(|p| p.index())
        })
        .or_else(|| {
            sys.assignment
                .iter()
                .position(|a| a.is_some_and(|(v, _)| sys.vms.get(v).is_some_and(normal)))
        })
        .unwrap_or(0)
}

/// The first VM with an initramfs (a Linux userland) gets console input.
fn cfg_focus(sys: &system::System) -> Option<usize> {
    sys.vms.iter().position(|vm| vm.has_initramfs)
}

fn init_this_cpu(plat: &platform::Platform, index: usize) {
    // SAFETY: called once per CPU before it enters any guest.
    unsafe { regs::init_el2_controls() };
    let mpidr = regs::mpidr_el1() & 0xff_00ff_ffff;
    match gic::find_redistributor(
        plat.gicr.0 as usize,
        plat.gicr.1 as usize,
        plat.gicr_stride as usize,
        mpidr,
    ) {
        Some(gicr) => {
            if let Some(p) = percpu::get(index) {
                p.gicr.store(gicr, Ordering::Relaxed);
            }
            gic::init_cpu(gicr);
            // The virtual timer's PPI and the maintenance interrupt reach
            // EL2 (HCR_EL2.IMO) and are turned into virtual interrupts.
            gic::enable_ppi(gicr, vm::VTIMER_INTID);
            if let Some(m) = plat.maintenance_intid {
                gic::enable_ppi(gicr, m);
            }
        }
        None => {
            log::error!("cpu{index}: no redistributor for MPIDR {mpidr:#x}; it cannot be kicked")
        }
    }
}

fn build_el2_map(
    plat: &platform::Platform,
    l: &arch::ImageLayout,
    va_bits: u8,
) -> Result<u64, String> {
    let mut t = PageTable::new(mmu::IdentityTables, Regime::El2Stage1, va_bits)
        .map_err(|e| alloc::format!("{e:?}"))?;
    let rw = Attrs {
        mem: MemType::Normal,
        read: true,
        write: true,
        exec: false,
    };
    let rx = Attrs {
        mem: MemType::Normal,
        read: true,
        write: false,
        exec: true,
    };
    let ro = Attrs {
        mem: MemType::Normal,
        read: true,
        write: false,
        exec: false,
    };
    let dev = Attrs {
        mem: MemType::Device,
        read: true,
        write: true,
        exec: false,
    };
    let mut map = |start: u64, end: u64, a: Attrs, what: &str| -> Result<(), String> {
        if end > start {
            t.map(start, start, end - start, a)
                .map_err(|e| alloc::format!("{what} {start:#x}..{end:#x}: {e:?}"))?;
        }
        Ok(())
    };
    let (start, text_end, ro_end) = (l.start as u64, l.text_end as u64, l.rodata_end as u64);
    let (stacks, stacks_end) = (l.stacks_start as u64, l.stacks_end as u64);
    for &(base, size) in &plat.memory {
        let end = base + size;
        if start >= base && start < end {
            map(base, start, rw, "RAM below the image")?;
            map(start, text_end, rx, "text")?;
            map(text_end, ro_end, ro, "rodata")?;
            map(ro_end, stacks, rw, "data")?;
            for cpu in 0..arch::MAX_CPUS {
                let g = arch::guard_page(cpu) as u64;
                map(
                    g + arch::STACK_GUARD as u64,
                    g + arch::STACK_STRIDE as u64,
                    rw,
                    "stack",
                )?;
            }
            map(stacks_end, end, rw, "RAM above the image")?;
        } else {
            map(base, end, rw, "RAM")?;
        }
    }
    let page = |a: u64| a & !0xfff;
    let uart = plat.uart.unwrap_or(console::FALLBACK_UART as u64);
    map(page(uart), page(uart) + 0x1000, dev, "UART")?;
    map(page(plat.gicd), page(plat.gicd) + 0x1_0000, dev, "GICD")?;
    map(
        page(plat.gicr.0),
        page(plat.gicr.0) + align_up(plat.gicr.1, 0x1000),
        dev,
        "GICR",
    )?;
    // virtio-mmio register pages, for the shared disks (several slots
    // share a page on QEMU virt).
    let mut last = None;
    for &(base, size, _) in &plat.virtio {
        let (start, end) = (page(base), align_up(base + size.max(1), 0x1000));
        if last.is_some_and(|l| start < l) {
            continue;
        }
        map(start, end, dev, "virtio-mmio")?;
        last = Some(end);
    }
    // The tables stay allocated for ever: IdentityTables never frees a page.
    Ok(t.root())
}

fn build_system(
    plat: &platform::Platform,
    payload: &Payload<'static>,
    free: &mut FreeList,
    pa_range: u8,
    ipa_bits: u8,
) -> (system::System, Vec<sched::PoolHw>) {
    let mut failed = 0;
    let mut vms = Vec::new();
    let mut assignment = alloc::vec![None; plat.cpus.len().min(arch::MAX_CPUS)];
    let cfg = match bulkhead_config::decode(payload.config()) {
        Ok(c) => c,
        Err(e) => boot_failed(format_args!("config in the payload does not decode: {e:?}")),
    };
    let sizes: Vec<bulkhead_config::ImageInfo> = (0..payload.image_count())
        .filter_map(|i| payload.image(i))
        .map(|(_, b)| bulkhead_config::ImageInfo::of(b))
        .collect();
    let problems = bulkhead_config::validate(&cfg, &sizes);
    if !problems.is_empty() {
        for p in &problems {
            log::error!("config: {p}");
        }
        boot_failed(format_args!(
            "the packed config has {} problem(s) (listed above)",
            problems.len()
        ));
    }
    // Channel memory first, so each VM maps its ends as it is built.
    let mut channels = Vec::new();
    for ch in &cfg.channels {
        let size = ch.size.max(bulkhead_config::MIN_CHANNEL_SIZE);
        let Some(r) = free.alloc(size, size) else {
            boot_failed(format_args!(
                "no free {size:#x} bytes of RAM for channel '{}'",
                ch.name
            ));
        };
        channels.push(channel::ChannelHw {
            name: ch.name.clone(),
            vms: ch.vms,
            shm: r.start,
            size,
            state: bulkhead_channel::Channel::new(size),
        });
    }
    // Switch ports are fixed by the config, so VMs know theirs as they
    // are built.
    let net_ports = net::build(&cfg);
    mgmt::init(cfg.board.management);
    let mut by_config = alloc::vec![None; cfg.vms.len()];
    // Each pool's pCPUs that exist here; its vCPUs, numbered as added.
    let pool_cpus: Vec<Vec<usize>> = cfg
        .pools
        .iter()
        .map(|p| {
            let (here, missing): (Vec<usize>, Vec<usize>) = p
                .pcpus
                .iter()
                .map(|&c| usize::from(c))
                .partition(|&c| c < assignment.len());
            if !missing.is_empty() {
                log::error!(
                    "pool '{}': pCPU(s) {missing:?} do not exist here ({} CPUs usable); the pool has {here:?}",
                    p.name,
                    assignment.len()
                );
            }
            here
        })
        .collect();
    let mut pool_members: Vec<Vec<(usize, VcpuId, u32, Option<u8>)>> =
        alloc::vec![Vec::new(); cfg.pools.len()];
    for (ci, vc) in cfg.vms.iter().enumerate() {
        let id = VmId(vms.len() as u16);
        let refuse = |why: String| log::error!("vm '{}' not started: {why}", vc.name);
        // The initramfs and device tree a VM names, if it names them.
        let part = |what: &str, index: Option<u16>| match index {
            Some(i) => payload
                .image(usize::from(i))
                .map(|(_, b)| Some(b))
                .ok_or_else(|| alloc::format!("{what} {i} missing from the payload")),
            None => Ok(None),
        };
        let (initramfs, dtb) = match (part("initramfs", vc.initramfs), part("device tree", vc.dtb))
        {
            (Ok(initramfs), Ok(dtb)) => (initramfs, dtb),
            (Err(why), _) | (_, Err(why)) => {
                refuse(why);
                failed += 1;
                continue;
            }
        };
        let Some((_, image)) = payload.image(vc.image as usize) else {
            refuse(alloc::format!(
                "image {} missing from the payload",
                vc.image
            ));
            failed += 1;
            continue;
        };
        // The host tool refuses both, but the image may come from elsewhere.
        // The host tool refuses these, but the image may come from elsewhere.
        let taken = |i: usize, p: u16| {
            assignment.get(p as usize).is_none_or(Option::is_some)
                || vc.pcpus.get(..i).is_some_and(|before| before.contains(&p))
        };
        if let Some((_, &p)) = vc.pcpus.iter().enumerate().find(|&(i, &p)| taken(i, p)) {
            refuse(alloc::format!(
                "pCPU {p} does not exist here ({} CPUs usable) or already runs a vCPU",
                assignment.len()
            ));
            failed += 1;
            continue;
        }
        let pool = match vc.pool.map(usize::from) {
            Some(p) if pool_cpus.get(p).is_none_or(Vec::is_empty) => {
                refuse(alloc::format!("its pool (number {p}) has no pCPU here"));
                failed += 1;
                continue;
            }
            Some(_) if !vc.passthrough.is_empty() => {
                // Its interrupts would go to one pCPU while its vCPUs move.
                refuse("passthrough devices need a pinned VM (pcpus), not a pool".into());
                failed += 1;
                continue;
            }
            Some(p) => {
                // Entities are numbered in the order VMs join the pool.
                let first = pool_members.get(p).map_or(0, Vec::len);
                (0..vc.vcpu_count())
                    .map(|v| sched::PoolVcpu::new(p, bulkhead_sched::Entity((first + v) as u16)))
                    .collect()
            }
            None => Vec::new(),
        };
        let ram = match vc.host_address {
            Some(a) => Range::new(a, vc.memory).filter(|&r| free.take(r)),
            None => free.alloc(vc.memory, BLOCK),
        };
        let Some(ram) = ram else {
            refuse(alloc::format!(
                "no free {:#x} bytes of RAM{}",
                vc.memory,
                match vc.host_address {
                    Some(a) => alloc::format!(" at {a:#x}"),
                    None => String::new(),
                }
            ));
            failed += 1;
            continue;
        };
        if let Some(why) = passthrough_conflict(plat, vc) {
            refuse(why);
            free.free(ram);
            failed += 1;
            continue;
        }
        let ports = net_ports.get(ci).map_or(&[][..], Vec::as_slice);
        let virtio = match disk_slices(vc, &cfg) {
            Ok(mut v) => {
                v.extend(nics(vc, ports));
                v
            }
            Err(why) => {
                refuse(why);
                free.free(ram);
                failed += 1;
                continue;
            }
        };
        let ends = cfg
            .channels_of(ci as u16)
            .filter_map(|(k, c, end)| {
                let ch = channels.get(c)?;
                // A Linux VM (one with an initramfs) gets the PCI face.
                let e = channel::End::new(c, end, k, ch.size, vc.initramfs.is_some());
                Some((e, ch.shm, ch.size))
            })
            .collect();
        match vm::Vm::new(
            id,
            vc,
            vm::GuestImages {
                image,
                initramfs,
                dtb,
            },
            PhysAddr(ram.start),
            ipa_bits,
            pa_range,
            ends,
            virtio,
            pool,
        ) {
            Ok(vm) => {
                if let Err(why) = stage2_confined(&vm, &channels) {
                    refuse(why);
                    free.free(ram);
                    failed += 1;
                    continue;
                }
                for (v, &p) in vc.pcpus.iter().enumerate() {
                    if let Some(slot) = assignment.get_mut(p as usize) {
                        *slot = Some((vms.len(), VcpuId(v as u16)));
                    }
                }
                if let Some(b) = by_config.get_mut(ci) {
                    *b = Some(vms.len());
                }
                if let Some(m) = vc.pool.and_then(|p| pool_members.get_mut(usize::from(p))) {
                    for v in 0..vm.n_vcpus() {
                        m.push((vms.len(), VcpuId(v), vc.weight, vc.cap));
                    }
                }
                vms.push(vm);
            }
            Err(e) => {
                refuse(e);
                free.free(ram);
                failed += 1;
            }
        }
    }
    // Each passed-through SPI goes to the pCPU of its VM's vCPU 0.
    let mut spi_owner = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let mpidr = vm
            .pcpus
            .first()
            .and_then(|p| plat.cpus.get(p.index()))
            .copied()
            .unwrap_or(0);
        for d in &vm.passthrough {
            for &irq in &d.irqs {
                gic::enable_spi(irq, mpidr);
                spi_owner.push((irq, i));
            }
            log::info!(
                "{}: passthrough '{}' {:#x}+{:#x}, irqs {:?}",
                vm.name,
                d.name,
                d.base,
                d.size,
                d.irqs
            );
        }
    }
    let params = bulkhead_sched::Params {
        slice: sched::ms(sched::SLICE_MS),
        period: sched::ms(sched::PERIOD_MS),
        wake_granularity: sched::ms(sched::WAKE_GRANULARITY_MS),
        migration_cost: sched::ms(sched::MIGRATION_COST_MS),
    };
    let pools = cfg
        .pools
        .iter()
        .zip(pool_cpus)
        .zip(pool_members)
        .map(|((p, pcpus), members)| {
            let mut s = bulkhead_sched::Pool::new(pcpus.len(), params);
            for &(_, vcpu, weight, cap) in &members {
                // vCPU i of a VM starts homed on the pool's CPU i (mod n),
                // so a VM's vCPUs start spread out.
                s.add(weight, cap, usize::from(vcpu.0) % pcpus.len().max(1));
            }
            sched::PoolHw {
                name: p.name.clone(),
                pcpus,
                sched: Mutex::new(s),
                members: members.iter().map(|&(vm, vcpu, _, _)| (vm, vcpu)).collect(),
            }
        })
        .collect();
    (
        system::System {
            vms,
            assignment,
            failed,
            spi_owner,
            channels,
            by_config,
        },
        pools,
    )
}

/// The VM's `[[vm.disk]]` slices as virtio devices, each checked against
/// the physical disk this machine really has (the host tool only knew the
/// size the config claims).
#[inline(never)]
fn disk_slices(
    vc: &bulkhead_config::VmConfig,
    cfg: &bulkhead_config::SystemConfig,
) -> Result<Vec<virtio::VirtioDev>, String> {
    let mut out = Vec::new();
    for (n, d) in vc.disks.iter().enumerate() {
        let i = usize::from(d.disk);
        let name = cfg.disks.get(i).map_or("?", |c| c.name.as_str());
        let Some(phys) = virtio::disks().get(i) else {
            return Err(alloc::format!(
                "disk '{name}' is [[disk]] {i}, but this machine has {} virtio-blk device(s)",
                virtio::disks().len()
            ));
        };
        let (sectors, ro, extras) = {
            let p = phys.lock();
            (p.sectors, p.read_only, p.extras)
        };
        let (offset, size) = slice_range(d, cfg)?;
        if d.partition.is_some() && undeclared(d, cfg) {
            // Resolved here, from the disk's own table: the host tool could
            // not check it against the other slices, so this does.
            if let Some(other) = overlapping(cfg, vc, n, (offset, size))? {
                return Err(alloc::format!(
                    "its disk {n} (partition '{}' of '{name}') overlaps {other}, and one of them is read-write",
                    d.partition.as_deref().unwrap_or("")
                ));
            }
        }
        let d = &bulkhead_config::VmDisk {
            offset,
            size,
            ..d.clone()
        };
        let end = d.offset.checked_add(d.size);
        if end.is_none_or(|e| e > sectors * 512) {
            return Err(alloc::format!(
                "its disk {n} ({:#x}+{:#x} of '{name}') ends past the physical disk's {:#x} bytes",
                d.offset,
                d.size,
                sectors * 512
            ));
        }
        if ro && !d.read_only {
            return Err(alloc::format!(
                "its disk {n} is read-write but '{name}' is read-only"
            ));
        }
        let mut serial = [0u8; bulkhead_virtio::blk::ID_BYTES];
        let s = d.serial.as_bytes();
        let len = s.len().min(serial.len());
        serial[..len].copy_from_slice(&s[..len]);
        let slice = bulkhead_virtio::blk::Slice {
            start: d.offset / 512,
            sectors: d.size / 512,
            read_only: d.read_only,
            serial,
            // What the physical disk does beyond read, write and flush
            // (a read-only slice is offered neither).
            extras,
        };
        let ipa = bulkhead_config::VIRTIO_IPA + n as u64 * bulkhead_config::VIRTIO_STRIDE;
        let intid = 32 + bulkhead_config::VIRTIO_SPI_BASE + n as u32;
        out.push(virtio::VirtioDev::new_blk(ipa, intid, i, slice));
    }
    Ok(out)
}

/// Whether slice `d` names a partition its `[[disk]]` does not lay out
/// (so only the disk's own table says where it is).
fn undeclared(d: &bulkhead_config::VmDisk, cfg: &bulkhead_config::SystemConfig) -> bool {
    cfg.disks
        .get(usize::from(d.disk))
        .is_none_or(|c| c.partitions.is_empty())
}

/// Where slice `d` is on its disk, in bytes: its offset and size, or for a
/// named partition the range the disk's GUID partition table gives it. A
/// partition the config lays out must be where the config says.
fn slice_range(
    d: &bulkhead_config::VmDisk,
    cfg: &bulkhead_config::SystemConfig,
) -> Result<(u64, u64), String> {
    let Some(part) = &d.partition else {
        return Ok((d.offset, d.size));
    };
    let i = usize::from(d.disk);
    let name = cfg.disks.get(i).map_or("?", |c| c.name.as_str());
    let phys = virtio::disks().get(i).ok_or_else(|| {
        alloc::format!("disk '{name}' is [[disk]] {i}, which this machine does not have")
    })?;
    let p = phys.lock();
    let Some(found) = p.partitions.iter().find(|q| &q.name == part) else {
        return Err(if p.partitions.is_empty() {
            alloc::format!("disk '{name}' has no GUID partition table, so no partition '{part}'")
        } else {
            alloc::format!(
                "disk '{name}' has no partition '{part}'; its partitions are {}",
                p.partitions
                    .iter()
                    .map(|q| alloc::format!("'{}'", q.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    };
    let range = (found.first * 512, found.sectors() * 512);
    if !undeclared(d, cfg) && range != (d.offset, d.size) {
        return Err(alloc::format!(
            "partition '{part}' of '{name}' is {:#x}+{:#x} on the disk, but the config lays it out at {:#x}+{:#x}",
            range.0,
            range.1,
            d.offset,
            d.size
        ));
    }
    Ok(range)
}

/// Another slice of the same disk that overlaps `range` (slice `n` of
/// `vc`) with one of the two read-write, named for the log.
fn overlapping(
    cfg: &bulkhead_config::SystemConfig,
    vc: &bulkhead_config::VmConfig,
    n: usize,
    range: (u64, u64),
) -> Result<Option<String>, String> {
    let me = &vc.disks[n];
    for other in &cfg.vms {
        for (m, d) in other.disks.iter().enumerate() {
            let same = core::ptr::eq(other, vc) && m == n;
            if same || d.disk != me.disk || (d.read_only && me.read_only) {
                continue;
            }
            let Ok((o, s)) = slice_range(d, cfg) else {
                continue;
            };
            if o < range.0 + range.1 && range.0 < o + s {
                return Ok(Some(alloc::format!("vm '{}' disk {m}", other.name)));
            }
        }
    }
    Ok(None)
}

/// The VM's `[[vm.net]]` devices, after its disks in the virtio window,
/// each on the switch port `net::build` gave it.
#[inline(never)]
fn nics(vc: &bulkhead_config::VmConfig, ports: &[(usize, usize)]) -> Vec<virtio::VirtioDev> {
    vc.nets
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(k, (n, &(switch, port)))| {
            let d = vc.net_virtio_index(k);
            virtio::VirtioDev::new_net(
                bulkhead_config::virtio_ipa(d),
                32 + bulkhead_config::virtio_spi(d),
                n.mac,
                switch,
                port,
            )
        })
        .collect()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::emergency();
    log::error!("PANIC on {}: {info}", percpu::this_index_or_boot());
    let _ = firmware::system_off();
    arch::halt()
}
