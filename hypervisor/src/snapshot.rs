//! `snapshot VM` and `restore VM` (docs/snapshot.md): a VM's whole
//! state as a `bulkhead_snapshot` stream, sent to and fetched from the
//! snapshot store through the management endpoint (crate::mgmt).
//!
//! A snapshot pauses the VM (`sched::pause`: every pool vCPU off its
//! pCPU, a pinned one held in EL2 on its own (crate::hold), registers
//! saved), sends its RAM (zero pages skipped), each vCPU's
//! registers, the vGIC, the UART, the PSCI power states, its virtual
//! time, its virtio devices and its channel ends (with their shared
//! memory), and lets the VM run on. A restore fills a stopped VM of the same
//! shape from the stream and runs it only once the whole stream has
//! checked out; one that fails leaves the VM stopped.

use crate::arch::context::Context;
use crate::arch::{cache, regs, GuestRegs};
use crate::mgmt::{self, Reply, Session};
use crate::vm::{End, Lifecycle, Vm};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bulkhead_config::RAM_IPA;
use bulkhead_devices::pl011::Pl011;
use bulkhead_snapshot::{
    self as snap, Decoder, Device, Encoder, RamChunk, Record, VcpuState, VmInfo,
};
use bulkhead_types::VcpuId;
use core::sync::atomic::Ordering;

/// Register ids in a vCPU record: x0..x30 are 0..30.
const REG_ELR: u16 = 31;
const REG_SPSR: u16 = 32;
/// EL1 registers in `context::El1` order from here, the optional ones in
/// `context::Optional` order from `REG_OPT`.
const REG_EL1: u16 = 0x100;
const REG_OPT: u16 = 0x200;
/// The GIC virtual interface: list registers from here, then VMCR, the
/// two APRs and ICH_HCR.
const REG_LR: u16 = 0x300;
const REG_VMCR: u16 = 0x320;
const REG_AP0R0: u16 = 0x321;
const REG_AP1R0: u16 = 0x322;
const REG_ICH_HCR: u16 = 0x323;
/// 1 if the timer PPI was active when the vCPU left its pCPU.
const REG_TIMER_ACTIVE: u16 = 0x400;
/// The optional-register features of the machine that took it: a VM
/// restores only where they are the same.
const REG_FEATURES: u16 = 0x401;

/// Pages per RAM record.
const CHUNK_PAGES: usize = 256;
const PAGE: usize = 4096;

/// Device record names.
const DEV_UART: &str = "uart";
const DEV_PSCI: &str = "psci";
/// The guest's virtual count when it was paused (u64 LE).
const DEV_TIME: &str = "time";
/// `virtio<N>`: the VM's virtio device N (`bulkhead_virtio::state`).
const DEV_VIRTIO: &str = "virtio";
/// `chan<K>`: the VM's channel end K (`bulkhead_snapshot::channel`), with
/// the channel's shared memory.
const DEV_CHANNEL: &str = "chan";
/// How long a snapshot or migration waits, the VM paused, for its disk
/// requests in flight to be answered.
const QUIESCE_MS: u64 = 2_000;

fn features_word() -> u64 {
    let f = crate::arch::context::features();
    u64::from(f.pauth)
        | u64::from(f.tcr2) << 1
        | u64::from(f.sctlr2) << 2
        | u64::from(f.s1pie) << 3
        | u64::from(f.s1poe) << 4
}

/// Why a VM cannot be snapshot, restored, migrated or tracked (checked
/// before anything happens to it). Live migration needs nothing more than
/// a snapshot: a pinned VM's writes fault on its own pCPU as a pool VM's
/// do. It cannot be slowed down to make pre-copy converge, so
/// `snap::precopy` pauses it once its rounds stop shrinking.
fn supported(vm: &Vm) -> Result<(), String> {
    if vm.criticality == bulkhead_config::Criticality::Critical {
        return Err(format!(
            "{} is critical: held still for a snapshot or migration it would miss its deadlines",
            vm.name
        ));
    }
    if vm.pool.is_empty() {
        crate::hold::check_from_here(vm)?;
    }
    Ok(())
}

/// One vCPU's saved registers as a record.
fn vcpu_state(index: u16, r: &GuestRegs, ctx: &mut Context, timer_active: bool) -> VcpuState {
    let mut regs: Vec<(u16, u64)> = Vec::new();
    for (i, &x) in r.x.iter().enumerate() {
        regs.push((i as u16, x));
    }
    regs.push((REG_ELR, r.elr));
    regs.push((REG_SPSR, r.spsr));
    for (i, v) in ctx.el1.fields_mut().enumerate() {
        regs.push((REG_EL1 + i as u16, *v));
    }
    for (i, v) in ctx.opt.fields_mut().enumerate() {
        regs.push((REG_OPT + i as u16, *v));
    }
    for (i, &lr) in ctx.vgic.lrs.iter().enumerate() {
        regs.push((REG_LR + i as u16, lr));
    }
    regs.push((REG_VMCR, ctx.vgic.vmcr));
    regs.push((REG_AP0R0, ctx.vgic.ap0r0));
    regs.push((REG_AP1R0, ctx.vgic.ap1r0));
    regs.push((REG_ICH_HCR, ctx.vgic.hcr));
    regs.push((REG_TIMER_ACTIVE, u64::from(timer_active)));
    regs.push((REG_FEATURES, features_word()));
    VcpuState {
        index,
        regs,
        fp: ctx.fp.v,
        fpcr: ctx.fp.fpcr,
        fpsr: ctx.fp.fpsr,
    }
}

/// A vCPU record back into registers; every register must be there.
fn apply_vcpu(s: &VcpuState, r: &mut GuestRegs, ctx: &mut Context) -> Result<bool, String> {
    let get = |id: u16| {
        s.get(id)
            .ok_or_else(|| format!("vCPU {}: register {id:#x} missing", s.index))
    };
    if get(REG_FEATURES)? != features_word() {
        return Err(format!(
            "vCPU {}: taken on a CPU with optional registers {:#x}, this one has {:#x}",
            s.index,
            get(REG_FEATURES)?,
            features_word()
        ));
    }
    let mut out = GuestRegs::zero();
    for (i, x) in out.x.iter_mut().enumerate() {
        *x = get(i as u16)?;
    }
    out.elr = get(REG_ELR)?;
    out.spsr = get(REG_SPSR)?;
    // An SPSR that would return to EL2 (or to AArch32) is refused: the
    // vCPU resumes at EL1 or EL0 of AArch64 only.
    let mode = out.spsr & 0x1f;
    if !matches!(mode, 0b00000 | 0b00100 | 0b00101) {
        return Err(format!(
            "vCPU {}: SPSR {:#x} is not an AArch64 EL0/EL1 state",
            s.index, out.spsr
        ));
    }
    let mut c = Context::fresh();
    for (i, v) in c.el1.fields_mut().enumerate() {
        *v = get(REG_EL1 + i as u16)?;
    }
    for (i, v) in c.opt.fields_mut().enumerate() {
        *v = get(REG_OPT + i as u16)?;
    }
    for (i, lr) in c.vgic.lrs.iter_mut().enumerate() {
        *lr = get(REG_LR + i as u16)?;
    }
    c.vgic.vmcr = get(REG_VMCR)?;
    c.vgic.ap0r0 = get(REG_AP0R0)?;
    c.vgic.ap1r0 = get(REG_AP1R0)?;
    c.vgic.hcr = get(REG_ICH_HCR)?;
    c.fp.v = s.fp;
    c.fp.fpcr = s.fpcr;
    c.fp.fpsr = s.fpsr;
    let active = get(REG_TIMER_ACTIVE)? != 0;
    *r = out;
    *ctx = c;
    Ok(active)
}

/// The VM's RAM as a byte slice, caches cleaned so EL2 sees what a guest
/// with its MMU off wrote.
///
/// # Safety
/// No vCPU of the VM may run while the slice is used (paused or stopped).
unsafe fn ram(vm: &Vm) -> &mut [u8] {
    let (base, size) = (vm.ram.0 as usize, vm.ram_size as usize);
    cache::clean_invalidate_for_guest(base, size);
    // SAFETY: the VM's RAM is its alone, identity-mapped at EL2, and
    // (caller) none of its vCPUs runs.
    unsafe { core::slice::from_raw_parts_mut(base as *mut u8, size) }
}

/// What a snapshot stream still has to send.
enum Step {
    Vm,
    Ram(usize),
    Vcpu(u16),
    Vgic,
    Devices,
    End,
    Done,
}

struct Sender<'a> {
    vm: &'a Vm,
    name: &'a str,
    ram: &'a [u8],
    vcount: u64,
    enc: Option<Encoder>,
    step: Step,
    reply: Reply,
    pages: u64,
    zero_pages: u64,
    bytes: u64,
}

impl Session for Sender<'_> {
    fn request(&self) -> Option<String> {
        Some(format!("PUT {}", self.name))
    }

    fn produce(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        if matches!(self.step, Step::Done) {
            return Ok(false);
        }
        let mut put = |b: &[u8]| out.extend_from_slice(b);
        let enc = match &mut self.enc {
            Some(e) => e,
            None => self.enc.insert(Encoder::new(&mut put)),
        };
        let e = |e: snap::Error| format!("{e}");
        match self.step {
            Step::Vm => {
                let info = VmInfo {
                    name: self.vm.name.clone(),
                    memory: self.vm.ram_size,
                    vcpus: self.vm.n_vcpus(),
                    ram_ipa: RAM_IPA,
                };
                enc.record(snap::TAG_VM, &info.encode(), &mut put)
                    .map_err(e)?;
                self.step = Step::Ram(0);
            }
            Step::Ram(mut at) => {
                // The next run of non-zero pages, at most CHUNK_PAGES.
                while at < self.ram.len() && snap::is_zero_page(&self.ram[at..at + PAGE]) {
                    at += PAGE;
                    self.zero_pages += 1;
                }
                if at >= self.ram.len() {
                    self.step = Step::Vcpu(0);
                } else {
                    let mut end = at;
                    while end < self.ram.len()
                        && end - at < CHUNK_PAGES * PAGE
                        && !snap::is_zero_page(&self.ram[end..end + PAGE])
                    {
                        end += PAGE;
                    }
                    self.pages += ((end - at) / PAGE) as u64;
                    let off = (at as u64).to_le_bytes();
                    enc.record_parts(snap::TAG_RAM, &[&off, &self.ram[at..end]], &mut put)
                        .map_err(e)?;
                    self.step = Step::Ram(end);
                }
            }
            Step::Vcpu(v) if v < self.vm.n_vcpus() => {
                // A timer interrupt set pending while the vCPU was off its
                // pCPU counts as taken (its physical PPI is made active
                // where it runs next): it is in the vGIC record.
                let fired = crate::sched::timer_fired(self.vm, VcpuId(v));
                let st = crate::sched::with_saved(self.vm, VcpuId(v), |r, ctx, active| {
                    vcpu_state(v, r, ctx, *active || fired)
                })
                .ok_or_else(|| format!("vCPU {v} is on a pCPU"))?;
                enc.record(snap::TAG_VCPU, &st.encode(), &mut put)
                    .map_err(e)?;
                self.step = Step::Vcpu(v + 1);
            }
            Step::Vcpu(_) => {
                let state = self.vm.vgic.lock().save_state();
                enc.record(snap::TAG_VGIC, &state, &mut put).map_err(e)?;
                self.step = Step::Vgic;
            }
            Step::Vgic => {
                let mut uart = alloc::vec![0u8; Pl011::STATE_BYTES];
                let buf: &mut [u8; Pl011::STATE_BYTES] = (&mut uart[..])
                    .try_into()
                    .map_err(|_| String::from("UART state buffer"))?;
                self.vm.uart.lock().save_state(buf);
                let psci = self.vm.state.lock().power.save_state();
                let time = self.vcount.to_le_bytes();
                for (name, state) in [
                    (DEV_UART, &uart[..]),
                    (DEV_PSCI, &psci[..]),
                    (DEV_TIME, &time[..]),
                ] {
                    let d = Device { name, state };
                    enc.record(snap::TAG_DEVICE, &d.encode(), &mut put)
                        .map_err(e)?;
                }
                // The virtio devices, quiesced with the VM paused.
                for (i, dev) in self.vm.virtio.iter().enumerate() {
                    let state = crate::virtio::save_state(dev)
                        .map_err(|err| format!("virtio device {i}: {err}"))?;
                    let name = format!("{DEV_VIRTIO}{i}");
                    let d = Device {
                        name: &name,
                        state: &state,
                    };
                    enc.record(snap::TAG_DEVICE, &d.encode(), &mut put)
                        .map_err(e)?;
                }
                // The channel ends, with their shared memory as it is
                // now (not dirty-tracked: the peer writes it too).
                for (k, end) in self.vm.ends.iter().enumerate() {
                    let state = crate::channel::save_end(end)
                        .map_err(|err| format!("channel end {k}: {err}"))?;
                    let name = format!("{DEV_CHANNEL}{k}");
                    let d = Device {
                        name: &name,
                        state: &state,
                    };
                    enc.record(snap::TAG_DEVICE, &d.encode(), &mut put)
                        .map_err(e)?;
                }
                self.step = Step::Devices;
            }
            Step::Devices => self.step = Step::End,
            Step::End => {
                if let Some(enc) = self.enc.take() {
                    self.bytes = enc.end(&mut put);
                }
                self.step = Step::Done;
            }
            Step::Done => {}
        }
        Ok(true)
    }

    fn consume(&mut self, data: &[u8]) -> Result<(), String> {
        self.reply.push(data)
    }
}

/// A snapshot's name in the store: a file name there.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=31).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "snapshot name '{name}': use 1 to 31 of a-z 0-9 - _"
        ))
    }
}

/// `snapshot VM [NAME]`.
pub fn snapshot(vm: &Vm, name: &str) -> Result<String, String> {
    check_name(name)?;
    supported(vm)?;
    if vm.state.lock().lifecycle != Lifecycle::Running {
        return Err(format!("{} is not running", vm.name));
    }
    let t0 = regs::cntpct_el0();
    crate::sched::pause(vm)?;
    if let Err(e) = crate::virtio::quiesce(vm, QUIESCE_MS) {
        crate::sched::resume(vm);
        return Err(format!("{}: snapshot not taken: {e}", vm.name));
    }
    log::info!("{}: paused for snapshot '{name}'", vm.name);
    let paused_at = regs::cntpct_el0();
    let vcount = paused_at.wrapping_sub(vm.cntvoff.load(Ordering::Relaxed));
    // SAFETY: paused: no vCPU of the VM runs until `resume` below.
    let ram = unsafe { ram(vm) };
    let mut s = Sender {
        vm,
        name,
        ram,
        vcount,
        enc: None,
        step: Step::Vm,
        reply: Reply::default(),
        pages: 0,
        zero_pages: 0,
        bytes: 0,
    };
    let r = mgmt::run(&mut s);
    // The guest's virtual time does not count the pause: it was frozen
    // at `vcount`.
    let now = regs::cntpct_el0();
    vm.cntvoff
        .store(now.wrapping_sub(vcount), Ordering::Relaxed);
    log::info!("{}: runs again", vm.name);
    crate::sched::resume(vm);
    let freq = regs::cntfrq_el0().max(1);
    let paused_ms = (now - t0) * 1000 / freq;
    let t = r?;
    let stored = s.reply.outcome()?;
    if stored != s.bytes {
        return Err(format!(
            "the store kept {stored} bytes of a {}-byte stream",
            s.bytes
        ));
    }
    Ok(format!(
        "{}: snapshot '{name}' stored: {} bytes, {} RAM pages sent, {} zero pages skipped, {} ms paused ({} ms sending)",
        vm.name, s.bytes, s.pages, s.zero_pages, paused_ms, t.ms
    ))
}

/// A restore: the stream's decoder and what it has taken so far.
struct Receiver<'a> {
    name: &'a str,
    dec: Decoder,
    /// The start of the stream, for the store's ERR line.
    head: Vec<u8>,
    got: Staged<'a>,
}

/// What a restore has taken from the stream so far.
struct Staged<'a> {
    vm: &'a Vm,
    ram: &'a mut [u8],
    info: Option<VmInfo>,
    vcpus: Vec<Option<VcpuState>>,
    vgic: Option<Vec<u8>>,
    uart: Option<Vec<u8>>,
    psci: Option<Vec<u8>>,
    vcount: Option<u64>,
    /// One per virtio device of the VM.
    virtio: Vec<Option<Vec<u8>>>,
    /// One per channel end of the VM.
    ends: Vec<Option<Vec<u8>>>,
    pages: u64,
}

impl Staged<'_> {
    fn record(&mut self, r: Record<'_>) -> Result<(), snap::Error> {
        let bad = |m: &'static str| snap::Error::Malformed(m);
        match r.tag {
            snap::TAG_VM => {
                let info = VmInfo::decode(r.payload)?;
                if info.memory != self.vm.ram_size
                    || info.vcpus != self.vm.n_vcpus()
                    || info.ram_ipa != RAM_IPA
                {
                    return Err(bad(
                        "the snapshot's VM has another memory size or vCPU count",
                    ));
                }
                self.ram.fill(0);
                // To memory now, before the stream's pages, so that the VM
                // can run (perhaps with its caches off) as soon as the
                // stream ends, without a clean of all its RAM then.
                cache::clean_invalidate_for_guest(self.ram.as_ptr() as usize, self.ram.len());
                self.info = Some(info);
            }
            snap::TAG_RAM => {
                let c = RamChunk::decode(r.payload)?;
                c.check_in(self.ram.len() as u64)?;
                let at = c.offset as usize;
                let dst = &mut self.ram[at..at + c.data.len()];
                dst.copy_from_slice(c.data);
                cache::clean_invalidate_for_guest(dst.as_ptr() as usize, dst.len());
                self.pages += (c.data.len() / PAGE) as u64;
            }
            snap::TAG_VCPU => {
                let s = VcpuState::decode(r.payload)?;
                let slot = self
                    .vcpus
                    .get_mut(usize::from(s.index))
                    .ok_or(bad("vCPU index out of range"))?;
                if slot.is_some() {
                    return Err(bad("a vCPU twice"));
                }
                *slot = Some(s);
            }
            snap::TAG_VGIC => {
                if self.vgic.replace(r.payload.to_vec()).is_some() {
                    return Err(bad("two vGIC records"));
                }
            }
            snap::TAG_DEVICE => {
                let d = Device::decode(r.payload)?;
                let slot = match d.name {
                    DEV_UART => &mut self.uart,
                    DEV_PSCI => &mut self.psci,
                    n if n.starts_with(DEV_VIRTIO) => n[DEV_VIRTIO.len()..]
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| self.virtio.get_mut(i))
                        .ok_or(bad("a virtio device this VM does not have"))?,
                    n if n.starts_with(DEV_CHANNEL) => n[DEV_CHANNEL.len()..]
                        .parse::<usize>()
                        .ok()
                        .and_then(|k| self.ends.get_mut(k))
                        .ok_or(bad("a channel end this VM does not have"))?,
                    DEV_TIME => {
                        let v = d
                            .state
                            .try_into()
                            .map(u64::from_le_bytes)
                            .map_err(|_| bad("time record is not 8 bytes"))?;
                        if self.vcount.replace(v).is_some() {
                            return Err(bad("two time records"));
                        }
                        return Ok(());
                    }
                    _ => return Err(bad("unknown device record")),
                };
                if slot.replace(d.state.to_vec()).is_some() {
                    return Err(bad("a device record twice"));
                }
            }
            _ => return Err(bad("unexpected record")),
        }
        Ok(())
    }
}

impl Session for Receiver<'_> {
    fn request(&self) -> Option<String> {
        Some(format!("GET {}", self.name))
    }

    fn produce(&mut self, _out: &mut Vec<u8>) -> Result<bool, String> {
        Ok(false)
    }

    fn consume(&mut self, data: &[u8]) -> Result<(), String> {
        if self.head.len() < 64 {
            let take = (64 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            if self.head.starts_with(b"ERR ") {
                return Ok(()); // reported once the store closes
            }
        }
        if self.head.starts_with(b"ERR ") {
            return Ok(());
        }
        let got = &mut self.got;
        self.dec
            .push(data, &mut |rec| got.record(rec))
            .map_err(|e| format!("{e}"))
    }
}

/// `restore VM [NAME]`: VM must be stopped.
pub fn restore(vm: &Vm, name: &str) -> Result<String, String> {
    check_name(name)?;
    supported(vm)?;
    if vm.state.lock().lifecycle != Lifecycle::Stopped {
        return Err(format!("{} is not stopped: stop it first", vm.name));
    }
    // SAFETY: stopped: no vCPU of the VM runs, and the shell (this pCPU)
    // is the only one that starts it.
    let ram = unsafe { ram(vm) };
    let mut r = Receiver::new(vm, ram, name);
    let failed = |why: String| {
        format!(
            "{}: restore of '{name}' failed: {why}; the VM stays stopped",
            vm.name
        )
    };
    let t = mgmt::run(&mut r).map_err(failed)?;
    if r.head.starts_with(b"ERR ") {
        let line = core::str::from_utf8(&r.head).unwrap_or("ERR").trim();
        return Err(failed(format!("the store answered \"{line}\"")));
    }
    r.dec.finish().map_err(|e| failed(format!("{e}")))?;
    let pages = r.got.pages;
    let ready = r.got.check().map_err(failed)?;
    apply(vm, ready, &format!("restored from snapshot '{name}'"));
    Ok(format!(
        "{}: {} RAM pages, {} bytes from the store in {} ms",
        vm.name, pages, t.received, t.ms
    ))
}

impl<'a> Receiver<'a> {
    fn new(vm: &'a Vm, ram: &'a mut [u8], name: &'a str) -> Receiver<'a> {
        Receiver {
            name,
            dec: Decoder::new(),
            head: Vec::new(),
            got: Staged {
                vm,
                ram,
                info: None,
                vcpus: (0..vm.n_vcpus()).map(|_| None).collect(),
                vgic: None,
                uart: None,
                psci: None,
                vcount: None,
                virtio: vm.virtio.iter().map(|_| None).collect(),
                ends: vm.ends.iter().map(|_| None).collect(),
                pages: 0,
            },
        }
    }
}

/// A whole stream's state, checked and ready to put in place.
struct Ready {
    from: String,
    // Boxed, as the session that holds them is: they are large for the
    // EL2 stack.
    vgic: Box<bulkhead_vgic::VGic>,
    uart: Box<Pl011>,
    power: bulkhead_psci::PowerState,
    vcpus: Vec<(GuestRegs, Context, bool)>,
    vcount: u64,
    virtio: Vec<crate::virtio::Fresh>,
    ends: Vec<crate::channel::FreshEnd>,
}

impl Staged<'_> {
    /// Everything checks out as far as it can be without applying it; the
    /// models check their own state, into fresh copies.
    fn check(&self) -> Result<Box<Ready>, String> {
        let vm = self.vm;
        let (Some(info), Some(vgic), Some(uart), Some(psci), Some(vcount)) =
            (&self.info, &self.vgic, &self.uart, &self.psci, self.vcount)
        else {
            return Err("the stream lacks the VM, vGIC, UART, PSCI or time record".into());
        };
        if self.vcpus.iter().any(Option::is_none) {
            return Err("the stream lacks a vCPU".into());
        }
        let mut new_vgic = Box::new(bulkhead_vgic::VGic::new(vm.n_vcpus(), crate::vm::NR_SPIS));
        new_vgic
            .restore_state(vgic)
            .map_err(|e| format!("vGIC: {e}"))?;
        let mut new_uart = Box::new(Pl011::new());
        new_uart
            .restore_state(uart)
            .map_err(|e| format!("UART: {e}"))?;
        let mut power = bulkhead_psci::PowerState::new(vm.n_vcpus());
        power
            .restore_state(psci)
            .map_err(|e| format!("PSCI: {e}"))?;
        let mut virtio = Vec::new();
        for (i, (dev, saved)) in vm.virtio.iter().zip(&self.virtio).enumerate() {
            let saved = saved
                .as_deref()
                .ok_or_else(|| format!("the stream lacks virtio device {i}"))?;
            let fresh = crate::virtio::check_state(vm, dev, saved)
                .map_err(|e| format!("virtio device {i}: {e}"))?;
            virtio.push(fresh);
        }
        let mut ends = Vec::new();
        for (k, (end, saved)) in vm.ends.iter().zip(&self.ends).enumerate() {
            let saved = saved
                .as_deref()
                .ok_or_else(|| format!("the stream lacks channel end {k}"))?;
            let fresh = crate::channel::check_end(end, saved)
                .map_err(|e| format!("channel end {k}: {e}"))?;
            ends.push(fresh);
        }
        let mut vcpus = Vec::new();
        for s in self.vcpus.iter().flatten() {
            let mut g = GuestRegs::zero();
            let mut c = Context::fresh();
            let active = apply_vcpu(s, &mut g, &mut c)?;
            vcpus.push((g, c, active));
        }
        Ok(Box::new(Ready {
            from: info.name.clone(),
            vgic: new_vgic,
            uart: new_uart,
            power,
            vcpus,
            vcount,
            virtio,
            ends,
        }))
    }
}

/// Puts a checked state in place in a stopped VM (whose RAM already holds
/// the stream's) and runs it. Nothing here can fail.
fn apply(vm: &Vm, r: Box<Ready>, how: &str) {
    let r = *r;
    *vm.vgic.lock() = *r.vgic;
    *vm.uart.lock() = *r.uart;
    for (dev, fresh) in vm.virtio.iter().zip(r.virtio) {
        crate::virtio::put_state(dev, fresh);
    }
    for (end, fresh) in vm.ends.iter().zip(r.ends) {
        crate::channel::put_end(vm, end, fresh);
    }
    for (v, (g, c, active)) in r.vcpus.into_iter().enumerate() {
        crate::sched::with_saved(vm, VcpuId(v as u16), |regs, ctx, a| {
            *regs = g;
            *ctx = c;
            *a = active;
        });
        crate::sched::clear_timer_fired(vm, VcpuId(v as u16));
    }
    // RAM went to memory as the stream came (`Staged::record`).
    let now = regs::cntpct_el0();
    vm.cntvoff
        .store(now.wrapping_sub(r.vcount), Ordering::Relaxed);
    if vm.pool.is_empty() {
        // A pinned vCPU's virtual timer is the hardware's. With CNTVOFF
        // wrapped that is still right on hardware, but QEMU computes the
        // deadline as CVAL + CNTVOFF and takes its overflow for "never".
        let ms = |t: u64| t * 1000 / regs::cntfrq_el0().max(1);
        match now.checked_sub(r.vcount) {
            Some(behind) => log::info!(
                "{}: its virtual count is {} ms behind this machine's counter",
                vm.name,
                ms(behind)
            ),
            None => log::warn!(
                "{}: its virtual count is {} ms ahead of this machine's counter, so CNTVOFF wraps: under QEMU its pinned vCPUs' virtual timer will not fire",
                vm.name,
                ms(r.vcount - now)
            ),
        }
    }
    {
        let mut st = vm.state.lock();
        st.power = r.power;
        st.running = (0..vm.n_vcpus())
            .filter(|&v| {
                matches!(
                    st.power.state(VcpuId(v)),
                    Some(bulkhead_psci::VcpuPower::On)
                )
            })
            .fold(0, |m, v| m | 1 << v);
        st.lifecycle = Lifecycle::Running;
    }
    // It counts as running again for the machine's power-off.
    crate::system::vm_started();
    log::info!("{}: {how} (of VM '{}')", vm.name, r.from);
    crate::sched::start_restored(vm);
    // It may have come from another machine: the network learns where it
    // is now before the guest says anything, and then from the guest.
    crate::net::vm_started(vm, true);
    crate::virtio::announce(vm);
}

/// The TCP port `incoming` waits on.
pub const MIGRATE_PORT: u16 = 7701;
/// How long `incoming` waits for a migration to begin.
const INCOMING_WAIT_MS: u64 = 120_000;
/// A migration that makes no progress for this long has lost the other
/// machine.
const MIGRATE_STALL_MS: u64 = 5_000;

fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// A pre-copy round: pages to send (page numbers in RAM, ascending).
struct Round {
    pages: Vec<u32>,
    at: usize,
    /// The first round skips pages of zeros (the target zero-filled RAM);
    /// later ones send every dirty page, zero or not.
    skip_zero: bool,
    /// The VM is paused for it: the last one.
    last: bool,
    sent: u64,
}

enum Phase {
    /// The VM record.
    Start,
    Round(Round),
    /// The VM is paused and its RAM sent: the sender's vCPU, vGIC and
    /// device records, and END.
    Tail,
    /// Waiting for the target's `OK`.
    Wait,
}

/// The source's side: the VM record, pre-copy rounds of RAM while the VM
/// runs (dirty pages tracked through stage 2: crate::dirty), the last
/// round and the device state with the VM paused, then the target's
/// `OK <bytes>` (its whole state checked), then our FIN, which is the
/// target's go-ahead.
struct Migrator<'a> {
    sender: Sender<'a>,
    phase: Phase,
    /// Pages sent by each round.
    rounds: Vec<u64>,
    /// When the VM was paused for the last round (physical count).
    paused_at: Option<u64>,
    /// Then when the last round was through (the state records began),
    /// all of the stream was queued, and the target's `OK` came: where the
    /// downtime went.
    tail_at: u64,
    sent_at: u64,
    ok_at: u64,
    /// The target has accepted; from here the VM is the target's.
    committed: bool,
    /// The cap its pool vCPUs are slowed to (percent of a pCPU), and from
    /// which round; `None` while it runs as configured.
    throttle: Option<(u8, usize)>,
    /// Its pool vCPUs' own caps, given back when the migration ends.
    own_caps: Vec<Option<u8>>,
    /// When the round under way began (physical count), and the pages the
    /// guest dirtied during the rounds so far.
    round_at: u64,
    dirtied: u64,
}

impl Migrator<'_> {
    /// Appends the next RAM record of `r` (a run of consecutive pages,
    /// copied now) to `out`; `false` once the round is through.
    fn ram_record(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        let Phase::Round(r) = &mut self.phase else {
            return Ok(false);
        };
        let s = &mut self.sender;
        let mut put = |b: &[u8]| out.extend_from_slice(b);
        let enc = s.enc.as_mut().ok_or("no stream")?;
        let base = s.vm.ram.0 as usize;
        let mut data: Vec<u8> = Vec::new();
        let mut first = None;
        while r.at < r.pages.len() {
            let p = r.pages[r.at];
            if let Some(f) = first {
                if p != f + (data.len() / PAGE) as u32 || data.len() >= CHUNK_PAGES * PAGE {
                    break;
                }
            }
            r.at += 1;
            let pa = base + p as usize * PAGE;
            // A guest with its caches off writes around EL2's cached copy.
            cache::clean_invalidate_for_guest(pa, PAGE);
            // Most of a fresh VM's pages are zero: looked at in place, not
            // copied first.
            if r.skip_zero && guest_page_is_zero(pa) {
                s.zero_pages += 1;
                if first.is_some() {
                    break;
                }
                continue;
            }
            append_guest_page(pa, &mut data);
            first.get_or_insert(p);
        }
        let Some(f) = first else {
            return Ok(r.at < r.pages.len());
        };
        let n = (data.len() / PAGE) as u64;
        s.pages += n;
        r.sent += n;
        let off = (u64::from(f) * PAGE as u64).to_le_bytes();
        enc.record_parts(snap::TAG_RAM, &[&off, &data], &mut put)
            .map_err(|e| format!("{e}"))?;
        Ok(true)
    }

    /// A round is through: the next one, or the last (pausing the VM).
    fn next_round(&mut self) -> Result<(), String> {
        let Phase::Round(done) = &self.phase else {
            return Ok(());
        };
        let (sent, was_last) = (done.sent, done.last);
        self.rounds.push(sent);
        let vm = self.sender.vm;
        // The guest may power off or crash while its RAM is on the way: a
        // stopped VM is not handed over (the target would run nothing).
        if vm.state.lock().lifecycle != Lifecycle::Running {
            return Err(format!("{} stopped during its migration", vm.name));
        }
        if was_last {
            self.tail_at = regs::cntpct_el0();
            self.sender.step = Step::Vcpu(0);
            self.phase = Phase::Tail;
            return Ok(());
        }
        let mut pages = crate::dirty::harvest(vm, true);
        // Go on, slow the VM down, or pause it (snap::precopy).
        let throttle = self.throttle.map(|(c, _)| c);
        let plan = snap::precopy::next(
            self.rounds.len(),
            sent,
            pages.len() as u64,
            throttle,
            !vm.pool.is_empty(),
        );
        let now = regs::cntpct_el0();
        let took = now.saturating_sub(self.round_at);
        self.round_at = now;
        self.dirtied += pages.len() as u64;
        let freq = regs::cntfrq_el0().max(1);
        log::info!(
            "{}: migration round {}: {sent} pages sent in {} ms, {} dirtied meanwhile ({} pages/s); {}",
            vm.name,
            self.rounds.len(),
            took * 1000 / freq,
            pages.len(),
            pages.len() as u64 * freq / took.max(1),
            match plan {
                snap::precopy::Next::Round => "another round",
                snap::precopy::Next::SlowDown(_) => "another round, the VM slowed down",
                snap::precopy::Next::Last => "the VM pauses for the last",
            }
        );
        if let snap::precopy::Next::SlowDown(cap) = plan {
            self.slow_down(cap);
        }
        let last = plan == snap::precopy::Next::Last;
        if last {
            crate::sched::pause(vm)?;
            let t = regs::cntpct_el0();
            self.paused_at = Some(t);
            self.sender.vcount = t.wrapping_sub(vm.cntvoff.load(Ordering::Relaxed));
            // Its disk requests answered (their DMA and used rings marked
            // dirty) before the last harvest.
            crate::virtio::quiesce(vm, QUIESCE_MS)?;
            log::info!(
                "{}: paused for the last round of its migration ({} rounds sent)",
                vm.name,
                self.rounds.len()
            );
            pages.extend(crate::dirty::harvest(vm, false));
            pages.sort_unstable();
            pages.dedup();
            // No clean of the whole RAM here (512 MiB of it took 330 ms
            // under QEMU, all of it downtime): `ram_record` cleans each
            // page before it reads it.
        }
        self.phase = Phase::Round(Round {
            pages,
            at: 0,
            skip_zero: false,
            last,
            sent: 0,
        });
        Ok(())
    }
}

impl Migrator<'_> {
    /// The guest dirties memory faster than the rounds shrink: its pool
    /// vCPUs get a lower cap (never above their own).
    fn slow_down(&mut self, cap: u8) {
        let from = self.throttle.map_or(self.rounds.len() + 1, |(_, r)| r);
        self.throttle = Some((cap, from));
        let vm = self.sender.vm;
        let caps: Vec<Option<u8>> = self
            .own_caps
            .iter()
            .map(|own| Some(own.map_or(cap, |o| o.min(cap))))
            .collect();
        crate::sched::set_caps(vm, &caps);
        log::info!(
            "{}: dirties memory faster than its migration sends it: slowed to {cap}% of a pCPU per vCPU from round {}",
            vm.name,
            self.rounds.len() + 1
        );
    }
}

/// One page of a running VM's RAM at `pa`, as memory holds it now.
/// Appended to `out` (no copy of its own: a round's pages are gathered
/// straight into the record they go out in). The caller has cleaned it
/// from the data cache.
fn append_guest_page(pa: usize, out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + PAGE, 0);
    for (i, chunk) in out[at..].chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&guest_word(pa, i).to_le_bytes());
    }
}

/// Whether the page at `pa` of a running VM's RAM is all zero now (the
/// caller has cleaned it from the data cache). A page written meanwhile
/// is dirty, and goes in a later round whatever this said.
fn guest_page_is_zero(pa: usize) -> bool {
    (0..PAGE / 8).all(|i| guest_word(pa, i) == 0)
}

/// Word `i` of the guest page at `pa`.
fn guest_word(pa: usize, i: usize) -> u64 {
    debug_assert!(i < PAGE / 8);
    // SAFETY: `pa` is a page of the VM's RAM (the callers take it from
    // the VM's own range), identity-mapped at EL2 and never freed, and
    // `i` is inside it; the guest may write it meanwhile, so it is read
    // word by word with volatile loads (a torn page is sent again: the
    // write that tore it made it dirty).
    unsafe { core::ptr::read_volatile((pa as *const u64).add(i)) }
}

impl Session for Migrator<'_> {
    fn request(&self) -> Option<String> {
        Some(format!("MIGRATE {}", self.sender.vm.name))
    }

    fn stall_ms(&self) -> u64 {
        MIGRATE_STALL_MS
    }

    /// A round is through once the target has all of it: only then is
    /// the next dirty set taken, so the VM is never paused with a round
    /// still in the socket's buffers (which would all be downtime).
    fn wants_drained(&self) -> bool {
        matches!(&self.phase, Phase::Round(r) if r.at >= r.pages.len())
    }

    fn produce(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        match self.phase {
            Phase::Start => {
                // The VM record (the sender's first step).
                self.sender.produce(out)?;
                let all = (0..(self.sender.vm.ram_size as usize / PAGE) as u32).collect();
                self.phase = Phase::Round(Round {
                    pages: all,
                    at: 0,
                    skip_zero: true,
                    last: false,
                    sent: 0,
                });
                Ok(true)
            }
            Phase::Round(_) => {
                if !self.ram_record(out)? {
                    self.next_round()?;
                }
                Ok(true)
            }
            Phase::Tail => {
                if !self.sender.produce(out)? {
                    self.sent_at = regs::cntpct_el0();
                    self.phase = Phase::Wait;
                }
                Ok(true)
            }
            Phase::Wait => {
                if !self.sender.reply.complete() {
                    return Ok(true); // waiting for the target's answer
                }
                let kept = self.sender.reply.outcome()?;
                if kept != self.sender.bytes {
                    return Err(format!(
                        "the target took {kept} bytes of a {}-byte stream",
                        self.sender.bytes
                    ));
                }
                self.ok_at = regs::cntpct_el0();
                self.committed = true;
                Ok(false)
            }
        }
    }

    fn consume(&mut self, data: &[u8]) -> Result<(), String> {
        self.sender.reply.push(data)
    }
}

/// `migrate VM ADDR`: sends the VM to the machine at `to` (waiting in
/// `incoming`) while it runs, pre-copying its RAM in rounds of dirty
/// pages, then pauses it for the last round and its device state, and
/// stops it here once that machine has checked it all. On any failure
/// before that the VM runs on here, as it was.
pub fn migrate(vm: &Vm, to: [u8; 4]) -> Result<String, String> {
    supported(vm)?;
    if vm.state.lock().lifecycle != Lifecycle::Running {
        return Err(format!("{} is not running", vm.name));
    }
    let ip = dotted(to);
    let freq = regs::cntfrq_el0().max(1);
    let t0 = regs::cntpct_el0();
    crate::sched::pause(vm)?;
    let tables = crate::dirty::start(vm);
    crate::sched::resume(vm);
    let tables = tables?;
    log::info!(
        "{}: migrating to {ip}: dirty pages tracked ({tables} stage-2 tables split off its blocks)",
        vm.name
    );
    let faults0 = vm.stats.dirty_faults.load(Ordering::Relaxed);
    let mut m = Migrator {
        sender: Sender {
            vm,
            name: &vm.name,
            // The rounds read RAM page by page (`append_guest_page`); the
            // sender's own RAM step is not used.
            ram: &[],
            vcount: 0,
            enc: None,
            step: Step::Vm,
            reply: Reply::default(),
            pages: 0,
            zero_pages: 0,
            bytes: 0,
        },
        phase: Phase::Start,
        rounds: Vec::new(),
        paused_at: None,
        tail_at: 0,
        sent_at: 0,
        ok_at: 0,
        committed: false,
        throttle: None,
        own_caps: crate::sched::caps(vm),
        round_at: regs::cntpct_el0(),
        dirtied: 0,
    };
    let r = mgmt::connect(&mut m, (to, MIGRATE_PORT));
    let now = regs::cntpct_el0();
    if m.throttle.is_some() {
        // Its own caps again, here (it may run on, or come back later).
        crate::sched::set_caps(vm, &m.own_caps);
    }
    let slowed = match m.throttle {
        Some((cap, from)) => format!(", slowed to {cap}% of a pCPU from round {from}"),
        None => String::new(),
    };
    let faults = vm.stats.dirty_faults.load(Ordering::Relaxed) - faults0;
    if m.paused_at.is_none() {
        // Stopped in a round while the VM ran: hold it still to put its
        // stage 2 back.
        let _ = crate::sched::pause(vm);
    }
    let merged = crate::dirty::stop(vm);
    let rounds = m
        .rounds
        .iter()
        .map(|n| format!("{n}"))
        .collect::<Vec<_>>()
        .join(" + ");
    if m.committed {
        // The target runs it from here on, whatever became of the last
        // packets of the connection.
        let mut st = vm.state.lock();
        vm.begin_stop(&mut st, End::Migrated, &format!("migrated to {ip}"));
        drop(st);
        vm.paused.store(false, Ordering::Release);
        let paused = m.paused_at.unwrap_or(now);
        // Our FIN, the target's go, leaves as the OK is taken; what comes
        // after (its ACK, the close) is no longer downtime.
        let down = (m.ok_at.max(paused) - paused) * 1000 / freq;
        // Tenths of a ms between two marks.
        let part = |a: u64, b: u64| {
            let t = b.saturating_sub(a) * 10_000 / freq;
            format!("{}.{}", t / 10, t % 10)
        };
        let parts = format!(
            "; downtime: last round {} ms, state records {} ms, until the target's OK {} ms (then {} ms until the close)",
            part(paused, m.tail_at),
            part(m.tail_at, m.sent_at),
            part(m.sent_at, m.ok_at),
            part(m.ok_at, now)
        );
        let s = &m.sender;
        return Ok(format!(
            "{}: migrated to {ip}: {} bytes, pages {rounds} ({} in all of {}, {} zero pages skipped), {faults} write faults, dirtied {} pages/s while it ran, {} ms in all, {down} ms from pause to the target's go ({merged} blocks merged back){slowed}{parts}",
            vm.name,
            s.bytes,
            s.pages,
            vm.ram_size as usize / PAGE,
            s.zero_pages,
            m.dirtied * freq / m.paused_at.unwrap_or(now).saturating_sub(t0).max(1),
            (now - t0) * 1000 / freq
        ));
    }
    if let Some(p) = m.paused_at {
        // Its virtual time did not run while it was paused.
        let vcount = p.wrapping_sub(vm.cntvoff.load(Ordering::Relaxed));
        vm.cntvoff
            .store(now.wrapping_sub(vcount), Ordering::Relaxed);
    }
    let running = vm.state.lock().lifecycle == Lifecycle::Running;
    if running {
        log::info!("{}: runs on here", vm.name);
    }
    crate::sched::resume(vm);
    let why = match r {
        Err(e) => e,
        Ok(_) => "the target closed without accepting".into(),
    };
    let sent = if m.rounds.is_empty() {
        "in its first round".into()
    } else {
        format!("after rounds of {rounds} pages")
    };
    let here = if running {
        "the VM runs on here"
    } else {
        "the VM is not running here either"
    };
    Err(format!(
        "migration to {ip} failed {sent}{slowed}: {why}; {here}"
    ))
}

/// `track VM`: dirty tracking as a migration's pre-copy starts it, without
/// a migration, so what it costs the guest can be measured (`cargo xtask
/// bench`, `mem_stream_tracked`). Pages are not protected again: what the
/// guest pays is one fault per page it writes and the split stage 2.
pub fn track(vm: &Vm) -> Result<String, String> {
    supported(vm)?;
    if vm.state.lock().lifecycle != Lifecycle::Running {
        return Err(format!("{} is not running", vm.name));
    }
    crate::sched::pause(vm)?;
    let tables = crate::dirty::start(vm);
    crate::sched::resume(vm);
    Ok(format!(
        "{}: dirty pages tracked ({} stage-2 tables split off its blocks)",
        vm.name, tables?
    ))
}

/// `untrack VM`: ends `track`, stage 2 merged back into blocks.
pub fn untrack(vm: &Vm) -> Result<String, String> {
    if !vm.tracking.load(Ordering::Acquire) {
        return Err(format!("{}'s dirty pages are not tracked", vm.name));
    }
    // A running VM is held still while its stage 2 is put back; a stopped
    // one is not woken by a resume.
    let running = vm.state.lock().lifecycle == Lifecycle::Running;
    if running {
        crate::sched::pause(vm)?;
    }
    let faults = vm.stats.dirty_faults.load(Ordering::Relaxed);
    let merged = crate::dirty::stop(vm);
    if running {
        crate::sched::resume(vm);
    }
    Ok(format!(
        "{}: dirty pages no longer tracked ({merged} blocks merged back; {faults} write faults since boot)",
        vm.name
    ))
}

/// The target's side: the source's `MIGRATE` line, the stream into a
/// stopped VM, `OK <bytes>` once all of it checks out.
struct Incoming<'a> {
    rx: Receiver<'a>,
    line: Vec<u8>,
    stream_bytes: u64,
    ready: Option<Box<Ready>>,
    answered: bool,
    /// When the `OK` was queued (physical count).
    ok_at: u64,
}

impl Session for Incoming<'_> {
    fn request(&self) -> Option<String> {
        None
    }

    fn stall_ms(&self) -> u64 {
        MIGRATE_STALL_MS
    }

    fn produce(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        if self.answered {
            return Ok(false);
        }
        if !self.rx.dec.finished() {
            return Ok(true);
        }
        self.ready = Some(self.rx.got.check()?);
        out.extend_from_slice(format!("OK {}\n", self.stream_bytes).as_bytes());
        self.ok_at = regs::cntpct_el0();
        self.answered = true;
        Ok(true)
    }

    fn consume(&mut self, mut data: &[u8]) -> Result<(), String> {
        if !self.line.ends_with(b"\n") {
            let take = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            if self.line.len() + take > 64 {
                return Err("the source's request line is too long".into());
            }
            self.line.extend_from_slice(&data[..take]);
            data = &data[take..];
            if !self.line.ends_with(b"\n") {
                return Ok(());
            }
            let Some(from) = self
                .line
                .strip_prefix(b"MIGRATE ")
                .and_then(|n| core::str::from_utf8(n).ok())
            else {
                return Err("the other end did not ask for a migration".into());
            };
            log::info!(
                "{}: receiving the migration of VM '{}'",
                self.rx.got.vm.name,
                from.trim()
            );
        }
        if data.is_empty() {
            return Ok(());
        }
        self.stream_bytes += data.len() as u64;
        let got = &mut self.rx.got;
        self.rx
            .dec
            .push(data, &mut |rec| got.record(rec))
            .map_err(|e| format!("{e}"))
    }
}

/// `incoming VM`: waits for a migration into stopped VM `vm` and runs it
/// once the source has let go of it (its FIN after our `OK`).
pub fn incoming(vm: &Vm) -> Result<String, String> {
    supported(vm)?;
    if vm.state.lock().lifecycle != Lifecycle::Stopped {
        return Err(format!("{} is not stopped: stop it first", vm.name));
    }
    log::info!(
        "{}: waiting for a migration on port {MIGRATE_PORT} ({} s)",
        vm.name,
        INCOMING_WAIT_MS / 1000
    );
    // SAFETY: stopped: no vCPU of the VM runs, and the shell (this pCPU)
    // is the only one that starts it.
    let ram = unsafe { ram(vm) };
    let mut s = Incoming {
        rx: Receiver::new(vm, ram, "migration"),
        line: Vec::new(),
        stream_bytes: 0,
        ready: None,
        answered: false,
        ok_at: 0,
    };
    let failed = |why: String| {
        format!(
            "{}: incoming migration failed: {why}; the VM stays stopped",
            vm.name
        )
    };
    let t = mgmt::accept(&mut s, MIGRATE_PORT, INCOMING_WAIT_MS).map_err(failed)?;
    let pages = s.rx.got.pages;
    let Some(ready) = s.ready.take().filter(|_| t.peer_closed) else {
        return Err(failed("the source did not let go of the VM".into()));
    };
    apply(vm, ready, "migrated in");
    // The source's downtime runs to its go (its FIN, the answer to our
    // OK); this is the rest: the OK's trip, the FIN's, and the resume.
    let resumed = regs::cntpct_el0().saturating_sub(s.ok_at) * 10_000 / regs::cntfrq_el0().max(1);
    Ok(format!(
        "{}: migrated in: {} RAM pages, {} bytes in {} ms, resumed {}.{} ms after its OK",
        vm.name,
        pages,
        t.received,
        t.ms,
        resumed / 10,
        resumed % 10
    ))
}
