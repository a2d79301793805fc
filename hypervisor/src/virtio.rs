//! Shared hardware (issue 11): the physical virtio-blk devices Bulkhead
//! drives at EL2 with the `virtio-drivers` crate, and each VM's
//! virtio-mmio devices: block devices over a slice of a disk, network
//! devices on a port of a switch (`net.rs`).
//!
//! A request is put on the physical queue on the pCPU of the vCPU that
//! notified, inside its QueueNotify trap, and the vCPU goes back to its
//! guest at once: it never waits for the disk. The disk's completion
//! interrupt, routed to the pCPU of the vCPU the guest routes the
//! device's interrupt to (as of the last request put on the disk),
//! answers the guest and raises its interrupt. The guest's data buffers go to the
//! physical device as they are (zero copy): `bulkhead_virtio` checked that
//! each lies in the VM's RAM, which EL2 maps at the same address, so the
//! device reads and writes the guest's pages directly.

use crate::arch::{self, gic};
use crate::percpu;
use crate::vm::Vm;
use alloc::vec::Vec;
use bulkhead_types::VcpuId;
use bulkhead_virtio::blk::{self, BlockBackend, IoError, Seg};
use bulkhead_virtio::net;
use bulkhead_virtio::offload::{Offload, MAX_GSO_FRAME};
use bulkhead_virtio::GuestMemory;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal};

/// Descriptors in the physical request queue: a guest request's data
/// buffers (at most `blk::SEG_MAX`) plus header and status.
const PHYS_QUEUE: usize = blk::QUEUE_SIZE as usize;

/// DMA memory and address translation for virtio-drivers. EL2 maps all
/// RAM at its physical address, so a buffer's address is its physical
/// address, for the hypervisor's heap and for guest RAM alike.
pub struct El2Hal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory that nothing
// else uses until `dma_dealloc` frees it; every address handed to the
// device is identity-mapped RAM (or the device's own MMIO page for
// `mmio_phys_to_virt`, which the EL2 map covers as Device memory).
unsafe impl Hal for El2Hal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (u64, NonNull<u8>) {
        // virtio-drivers asks for queue memory at boot, never on a guest's
        // behalf; a size that has no layout is a bug, reported as an
        // allocation failure (which powers off).
        let Some(layout) = pages
            .max(1)
            .checked_mul(4096)
            .and_then(|size| core::alloc::Layout::from_size_align(size, 4096).ok())
        else {
            alloc::alloc::handle_alloc_error(core::alloc::Layout::new::<[u8; 4096]>())
        };
        // SAFETY: the layout's size is at least one page, never zero.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(p) => (p.as_ptr() as u64, p),
            None => alloc::alloc::handle_alloc_error(layout),
        }
    }

    unsafe fn dma_dealloc(_paddr: u64, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let size = pages.max(1).saturating_mul(4096);
        if let Ok(layout) = core::alloc::Layout::from_size_align(size, 4096) {
            // SAFETY: allocated by `dma_alloc` with this layout (caller).
            unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> u64 {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: u64, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

/// Counters of one physical disk, for `stats`.
#[derive(Default, Clone, Copy)]
pub struct PhysStats {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// One physical virtio-blk device.
pub struct PhysDisk {
    pub base: u64,
    pub sectors: u64,
    pub read_only: bool,
    /// Discard and write-zeroes, as far as the device has them: what the
    /// slices of a read-write VM offer.
    pub extras: blk::Extras,
    transport: MmioTransport<'static>,
    queue: VirtQueue<El2Hal, PHYS_QUEUE>,
    /// Each request takes one descriptor (an indirect table), not one per
    /// buffer.
    indirect: bool,
    /// Requests in flight on the physical queue, at most one per slot.
    slots: Vec<Slot>,
    /// Devices that found no room, to be served again when there is.
    waiters: Vec<Owner>,
    /// Its interrupt, and the CPU (MPIDR) it is routed to.
    intid: Option<u32>,
    routed: u64,
    /// Its GUID partition table, read at boot (empty without one).
    pub partitions: Vec<bulkhead_virtio::gpt::Partition>,
    pub stats: PhysStats,
}

/// Whose request a slot holds: device `dev` of VM `vm` (its index in
/// `system::vms()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub vm: u16,
    pub dev: u16,
}

/// One request on the physical queue: its header and status byte live
/// here (the device reads and writes them by DMA), with the guest buffers
/// it was given, so the same buffers can be handed back when it is done.
/// A slot is taken from `start` until its owner has the result.
struct Slot {
    header: [u8; 16],
    /// A discard's or write-zeroes' one range, after the header.
    range: [u8; blk::RANGE_BYTES],
    status: [u8; 1],
    op: blk::Op,
    segs: Vec<Seg>,
    /// On the queue under this token.
    token: Option<u16>,
    /// Off the queue with this result, for the owner to take.
    done: Option<Result<(), IoError>>,
    /// `None` for the hypervisor's own requests (the partition table).
    owner: Option<Owner>,
    taken: bool,
}

/// Slots per physical disk: requests of all VMs in flight at once.
const SLOTS: usize = 64;

// SAFETY: the transport's MMIO page and the queue's DMA memory belong to
// this disk alone, and every use is under the disk's mutex.
unsafe impl Send for PhysDisk {}

static DISKS: spin::Once<Vec<Mutex<PhysDisk>>> = spin::Once::new();
/// Each disk's interrupt, read on the interrupt path without its lock.
static DISK_INTIDS: spin::Once<Vec<Option<u32>>> = spin::Once::new();

/// The physical disks, in the order of their device tree addresses (the
/// order the config's `[[disk]]` tables name them).
pub fn disks() -> &'static [Mutex<PhysDisk>] {
    DISKS.get().map_or(&[], Vec::as_slice)
}

/// The physical disk whose interrupt `intid` is.
pub fn disk_of_intid(intid: u32) -> Option<usize> {
    DISK_INTIDS.get()?.iter().position(|&i| i == Some(intid))
}

bitflags::bitflags! {
    /// What we ask of a physical virtio-blk device.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct PhysFeatures: u64 {
        const RO = blk::f::RO;
        const FLUSH = blk::f::FLUSH;
        const DISCARD = blk::f::DISCARD;
        const WRITE_ZEROES = blk::f::WRITE_ZEROES;
        const RING_INDIRECT_DESC = bulkhead_virtio::feature::RING_INDIRECT_DESC;
        const VERSION_1 = bulkhead_virtio::feature::VERSION_1;
    }
}

/// Finds the virtio-blk devices among the host's virtio-mmio nodes and
/// brings each up. Empty slots (device ID 0) are skipped; a device that
/// fails to initialise is logged and left out. Their interrupts are
/// enabled by [`enable_interrupts`] once the system is built.
pub fn probe(nodes: &[(u64, u64, Option<u32>)]) {
    let mut found = Vec::new();
    for &(base, size, intid) in nodes {
        // Only a block device gets a transport: dropping one resets the
        // device (virtio-drivers), which must not happen to the NIC.
        if device_id(base) != Some(blk::DEVICE_ID) {
            continue;
        }
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: `base` is a virtio-mmio register page from the host
        // device tree, mapped as Device memory in the EL2 table, used by
        // nothing else.
        let transport = match unsafe { MmioTransport::new(header, size as usize) } {
            Ok(t) => t,
            Err(_) => continue,
        };
        if transport.device_type() != DeviceType::Block {
            continue;
        }
        match PhysDisk::new(base, intid, transport) {
            Ok(mut d) => {
                log::info!(
                    "disk{}: virtio-blk at {base:#x}, {} MiB{}, irq {intid:?}{}; discard up to {} sectors, write-zeroes up to {} (0: none)",
                    found.len(),
                    d.sectors >> 11,
                    if d.read_only { ", read-only" } else { "" },
                    if d.indirect {
                        ", indirect descriptors"
                    } else {
                        ""
                    },
                    d.extras.max_discard_sectors,
                    d.extras.max_write_zeroes_sectors,
                );
                d.read_gpt(found.len());
                found.push(Mutex::new(d));
            }
            Err(e) => log::error!("virtio-blk at {base:#x} not usable: {e:?}"),
        }
    }
    DISK_INTIDS.call_once(|| found.iter().map(|d| d.lock().intid).collect());
    DISKS.call_once(|| found);
}

/// Enables every disk's interrupt, first routed to CPU `mpidr` (one that
/// runs no critical VM); after that each request put on the disk moves it
/// to the pCPU of the vCPU its VM routes the device's interrupt to, so a
/// completion is usually injected where it is taken, without a kick.
pub fn enable_interrupts(mpidr: u64) {
    for (i, d) in disks().iter().enumerate() {
        let mut d = d.lock();
        let Some(intid) = d.intid else {
            log::error!(
                "disk{i}: no interrupt in the device tree; its VMs' requests never complete"
            );
            continue;
        };
        gic::enable_spi(intid, mpidr);
        d.routed = mpidr;
        d.transport.ack_interrupt();
    }
}

/// The DeviceID register of the virtio-mmio page at `base`, if its magic
/// says it is one (an empty slot reads 0).
pub fn device_id(base: u64) -> Option<u32> {
    let at = base as *const u32;
    // SAFETY: `base` is a virtio-mmio register page from the host device
    // tree, mapped as Device memory at EL2; reading MagicValue (0x0) and
    // DeviceID (0x8) has no side effect.
    let (magic, id) = unsafe {
        (
            core::ptr::read_volatile(at),
            core::ptr::read_volatile(at.add(2)),
        )
    };
    (magic == bulkhead_virtio::mmio::MAGIC).then_some(id)
}

/// Declares `$ins` and `$outs`, a slot's buffers as virtio-drivers
/// wants them: the header, then the data (for a write), device-readable;
/// the data (for a read), then the status byte, device-writable. A macro,
/// not a function, because `VirtQueue::pop_used` wants one lifetime for
/// the slices and what they point to.
macro_rules! slot_buffers {
    ($slot:expr, $ins:ident, $outs:ident) => {
        let slot: &mut Slot = $slot;
        let mut ins_store: [&[u8]; PHYS_QUEUE] = [&[]; PHYS_QUEUE];
        let mut outs_store: [&mut [u8]; PHYS_QUEUE] =
            core::array::from_fn(|_| <&mut [u8]>::default());
        ins_store[0] = &slot.header[..];
        let (mut n_in, mut n_out) = (1, 0);
        if matches!(slot.op, blk::Op::Discard | blk::Op::WriteZeroes) {
            ins_store[1] = &slot.range[..];
            n_in = 2;
        }
        for s in slot.segs.iter().take(PHYS_QUEUE - 2) {
            let ptr = s.host as *mut u8;
            if slot.op == blk::Op::Write {
                // SAFETY: `bulkhead_virtio` checked [host, host + len) is
                // the VM's own RAM (or it is a buffer of ours, from
                // `read_into`), identity-mapped at EL2. We never read it:
                // only the device does, so the guest changing it meanwhile
                // changes only what the device writes to disk.
                ins_store[n_in] = unsafe { core::slice::from_raw_parts(ptr, s.len as usize) };
                n_in += 1;
            } else {
                // SAFETY: as above; the device writes the guest's buffer,
                // which the guest gave us for that.
                outs_store[n_out] = unsafe { core::slice::from_raw_parts_mut(ptr, s.len as usize) };
                n_out += 1;
            }
        }
        outs_store[n_out] = &mut slot.status[..];
        n_out += 1;
        let $ins = &ins_store[..n_in];
        let $outs = &mut outs_store[..n_out];
    };
}

impl PhysDisk {
    fn new(
        base: u64,
        intid: Option<u32>,
        mut transport: MmioTransport<'static>,
    ) -> virtio_drivers::Result<PhysDisk> {
        let want = PhysFeatures::RO
            | PhysFeatures::FLUSH
            | PhysFeatures::DISCARD
            | PhysFeatures::WRITE_ZEROES
            | PhysFeatures::RING_INDIRECT_DESC
            | PhysFeatures::VERSION_1;
        let got = transport.begin_init(want);
        let lo: u32 = transport.read_config_space(0)?;
        let hi: u32 = transport.read_config_space(4)?;
        // max_discard_sectors and max_write_zeroes_sectors (5.2.4), read
        // only where the feature was negotiated; a zero limit is none.
        let mut extras = blk::Extras::default();
        if got.contains(PhysFeatures::DISCARD) {
            extras.max_discard_sectors = transport.read_config_space(36)?;
        }
        if got.contains(PhysFeatures::WRITE_ZEROES) {
            extras.max_write_zeroes_sectors = transport.read_config_space(48)?;
        }
        let indirect = got.contains(PhysFeatures::RING_INDIRECT_DESC);
        let queue = VirtQueue::new(&mut transport, 0, indirect, false)?;
        transport.finish_init();
        Ok(PhysDisk {
            base,
            sectors: u64::from(hi) << 32 | u64::from(lo),
            read_only: got.contains(PhysFeatures::RO),
            extras,
            transport,
            queue,
            indirect,
            slots: (0..SLOTS)
                .map(|_| Slot {
                    header: [0; 16],
                    range: [0; blk::RANGE_BYTES],
                    status: [0xff],
                    op: blk::Op::Flush,
                    segs: Vec::with_capacity(PHYS_QUEUE),
                    token: None,
                    done: None,
                    owner: None,
                    taken: false,
                })
                .collect(),
            waiters: Vec::new(),
            intid,
            routed: u64::MAX,
            partitions: Vec::new(),
            stats: PhysStats::default(),
        })
    }

    /// Requests on the queue now.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.token.is_some()).count()
    }

    /// Puts a request on the physical queue in slot `i`, without waiting:
    /// `op` at `sector` with guest buffers `segs` (device-written for a
    /// read, device-read for a write, none for a flush, a discard or a
    /// write-zeroes, which cover `bytes` from `sector` in one range).
    fn start(
        &mut self,
        i: usize,
        op: blk::Op,
        sector: u64,
        bytes: u64,
        segs: &[Seg],
    ) -> Result<(), IoError> {
        let kind = match op {
            blk::Op::Read => blk::req::IN,
            blk::Op::Write => blk::req::OUT,
            blk::Op::Flush => blk::req::FLUSH,
            blk::Op::Discard => blk::req::DISCARD,
            blk::Op::WriteZeroes => blk::req::WRITE_ZEROES,
        };
        let ranged = matches!(op, blk::Op::Discard | blk::Op::WriteZeroes);
        // `bulkhead_virtio` kept the range under the limit this disk
        // announced (a u32 of sectors), inside the VM's slice.
        let range_sectors = if ranged {
            u32::try_from(bytes / 512).map_err(|_| IoError)?
        } else {
            0
        };
        let PhysDisk {
            transport,
            queue,
            slots,
            ..
        } = self;
        // More buffers than the physical queue holds with header and status:
        // refused, never cut short (`bulkhead_virtio` already refuses more
        // than SEG_MAX).
        if segs.len() > PHYS_QUEUE - 2 {
            return Err(IoError);
        }
        let slot = slots.get_mut(i).ok_or(IoError)?;
        slot.header[..4].copy_from_slice(&kind.to_le_bytes());
        slot.header[4..8].fill(0);
        if ranged {
            // The range says where; the header's sector is not used.
            slot.header[8..].fill(0);
            slot.range[..8].copy_from_slice(&sector.to_le_bytes());
            slot.range[8..12].copy_from_slice(&range_sectors.to_le_bytes());
            slot.range[12..].fill(0); // no unmap: zeroes are always right
        } else {
            slot.header[8..].copy_from_slice(&sector.to_le_bytes());
        }
        slot.status[0] = 0xff;
        slot.op = op;
        slot.segs.clear();
        slot.segs.extend_from_slice(segs);
        let token = {
            slot_buffers!(slot, ins, outs);
            // SAFETY: the buffers stay valid and untouched by us until
            // `pop` takes this token with the same buffers (rebuilt from
            // the slot, which does not move: `slots` is never resized).
            unsafe { queue.add(ins, outs) }.map_err(|_| IoError)?
        };
        slot.token = Some(token);
        slot.taken = true;
        if queue.should_notify() {
            transport.notify(0);
        }
        Ok(())
    }

    /// Takes the request the device finished under `token` off the queue:
    /// its slot and result.
    fn pop(&mut self, token: u16) -> Option<(usize, Result<(), IoError>)> {
        let PhysDisk {
            queue,
            slots,
            stats,
            ..
        } = self;
        let Some(i) = slots.iter().position(|s| s.token == Some(token)) else {
            // The device used a chain we never gave it: nothing sane to do.
            log::error!("virtio-blk: the device returned unknown token {token}");
            return None;
        };
        let r = {
            slot_buffers!(&mut slots[i], ins, outs);
            // SAFETY: the same buffers as given to `add` for `token`.
            unsafe { queue.pop_used(token, ins, outs) }
        };
        let slot = &mut slots[i];
        slot.token = None;
        stats.requests += 1;
        stats.bytes += slot.segs.iter().map(|s| u64::from(s.len)).sum::<u64>();
        if r.is_err() || slot.status[0] != blk::req::S_OK {
            stats.errors += 1;
            return Some((i, Err(IoError)));
        }
        Some((i, Ok(())))
    }

    /// Takes everything the device finished off the queue; each result
    /// waits in its slot for the slot's owner.
    fn reap(&mut self) {
        while let Some(token) = self.queue.peek_used() {
            let Some((i, r)) = self.pop(token) else {
                return;
            };
            self.slots[i].done = Some(r);
        }
    }

    /// A free slot, if a request of `segs` buffers also fits on the queue.
    fn room(&self, segs: usize) -> Option<usize> {
        let need = if self.indirect { 1 } else { segs + 2 };
        if self.queue.available_desc() < need {
            return None;
        }
        self.slots.iter().position(|s| !s.taken)
    }

    /// Moves the interrupt to CPU `mpidr`, if it is not routed there.
    fn route_to(&mut self, mpidr: u64) {
        if let Some(intid) = self.intid {
            if self.routed != mpidr {
                gic::route_spi(intid, mpidr);
                self.routed = mpidr;
            }
        }
    }

    /// Frees the slots of `owner`'s finished requests, their results into
    /// `out`: how many.
    fn take_done(
        &mut self,
        owner: Owner,
        out: &mut [(u16, Result<(), IoError>); blk::MAX_INFLIGHT],
        mem: &VmMem,
    ) -> usize {
        let mut n = 0;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if n == out.len() {
                break;
            }
            if s.owner != Some(owner) {
                continue;
            }
            if let Some(r) = s.done.take() {
                if s.op == blk::Op::Read {
                    // The disk wrote these pages of guest RAM by DMA.
                    for seg in &s.segs {
                        mem.wrote(seg.ipa, u64::from(seg.len));
                    }
                }
                out[n] = (i as u16, r);
                n += 1;
                s.owner = None;
                s.taken = false;
            }
        }
        n
    }

    /// The owner of a finished request nobody has taken yet.
    fn done_owner(&self) -> Option<Owner> {
        self.slots
            .iter()
            .find(|s| s.done.is_some() && s.owner.is_some())
            .and_then(|s| s.owner)
    }

    /// Frees `owner`'s finished requests unanswered (it forgot them);
    /// true while some are still on the queue.
    fn forget(&mut self, owner: Owner) -> bool {
        let mut busy = false;
        for s in self.slots.iter_mut().filter(|s| s.owner == Some(owner)) {
            if s.token.is_some() {
                busy = true;
            } else {
                s.done = None;
                s.owner = None;
                s.taken = false;
            }
        }
        self.waiters.retain(|&w| w != owner);
        busy
    }

    /// Reads the disk's GUID partition table, if it has one, into
    /// `partitions` (logged).
    fn read_gpt(&mut self, index: usize) {
        use bulkhead_virtio::gpt;
        let mut sector = alloc::vec![0u8; 512];
        if self.read_into(1, &mut sector).is_err() {
            log::error!("disk{index}: cannot read LBA 1 for its partition table");
            return;
        }
        let header = match gpt::header(&sector) {
            Ok(h) => h,
            Err(gpt::GptError::NoTable) => return,
            Err(e) => {
                log::error!("disk{index}: partition table not used: {e}");
                return;
            }
        };
        let mut array = alloc::vec![0u8; header.entries_bytes().next_multiple_of(512)];
        let in_disk = header
            .entries_lba
            .checked_add(array.len() as u64 / 512)
            .is_some_and(|end| end <= self.sectors);
        if !in_disk || self.read_into(header.entries_lba, &mut array).is_err() {
            log::error!("disk{index}: cannot read its partition entries");
            return;
        }
        match gpt::partitions(&header, &array) {
            // The table is data on the disk, which a VM with a slice over
            // it may have written: nothing past the disk's end is used.
            Ok(p) if p.iter().any(|q| q.last >= self.sectors) => {
                log::error!(
                    "disk{index}: partition table not used: a partition ends past the disk"
                );
            }
            Ok(p) => {
                for part in &p {
                    log::info!(
                        "disk{index}: partition '{}' sectors {}..={} ({} MiB)",
                        part.name,
                        part.first,
                        part.last,
                        part.sectors() >> 11
                    );
                }
                self.partitions = p;
            }
            Err(e) => log::error!("disk{index}: partition table not used: {e}"),
        }
    }

    /// Reads sectors from `lba` on into a buffer of the hypervisor's own.
    fn read_into(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let seg = Seg {
            ipa: 0,
            host: buf.as_mut_ptr() as u64,
            len: u32::try_from(buf.len()).map_err(|_| IoError)?,
        };
        self.request(blk::Op::Read, lba, &[seg])
    }

    /// One request of the hypervisor's own, waited for: at boot only,
    /// before any VM can have requests on the queue.
    fn request(&mut self, op: blk::Op, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        let i = self.room(segs.len()).ok_or(IoError)?;
        self.start(i, op, sector, 0, segs)?;
        let token = loop {
            if let Some(t) = self.queue.peek_used() {
                break t;
            }
            core::hint::spin_loop();
        };
        let r = self.pop(token);
        self.slots[i].taken = false;
        r.map_or(Err(IoError), |(_, r)| r)
    }
}

/// A VM device's requests go to a physical disk: each is put on the
/// queue and left there (`Pending`); its completion comes on the disk's
/// interrupt ([`disk_interrupt`]).
struct Backend<'a> {
    disk: &'a Mutex<PhysDisk>,
    owner: Owner,
    /// Where the disk's interrupt goes once a request is put on the disk:
    /// left as it is, or to where this VM takes this device's interrupt
    /// (looked up at the first request, not at every register write).
    route: Route<'a>,
}

enum Route<'a> {
    Keep,
    Ask(&'a Vm, &'a VirtioDev),
    To(u64),
}

impl Route<'_> {
    /// The CPU (MPIDR) to route to, asking the vGIC once.
    fn resolve(&mut self) -> Option<u64> {
        if let Route::Ask(vm, dev) = *self {
            *self = Route::To(completion_cpu(vm, dev));
        }
        match *self {
            Route::To(cpu) => Some(cpu),
            _ => None,
        }
    }
}

impl BlockBackend for Backend<'_> {
    // `submit` is all a device calls; these are its synchronous defaults,
    // which a VM's request never takes.
    fn read(&mut self, _: u64, _: &[Seg]) -> Result<(), IoError> {
        Err(IoError)
    }
    fn write(&mut self, _: u64, _: &[Seg]) -> Result<(), IoError> {
        Err(IoError)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Err(IoError)
    }

    fn submit(&mut self, op: blk::Op, sector: u64, bytes: u64, segs: &[Seg]) -> blk::Submitted {
        // Before the disk's lock: the lookup takes the vGIC's.
        let route = self.route.resolve();
        let mut d = self.disk.lock();
        let Some(i) = d.room(segs.len()) else {
            // Served again once a request of anyone's completes.
            if !d.waiters.contains(&self.owner) {
                d.waiters.push(self.owner);
            }
            return blk::Submitted::Busy;
        };
        if let Some(cpu) = route {
            d.route_to(cpu);
        }
        match d.start(i, op, sector, bytes, segs) {
            Ok(()) => {
                d.slots[i].owner = Some(self.owner);
                blk::Submitted::Pending(i as u16)
            }
            Err(e) => {
                d.slots[i].taken = false;
                blk::Submitted::Done(Err(e))
            }
        }
    }
}

/// Physical disk `d` interrupted: every finished request goes to the
/// device that made it, which answers its guest (and may put more on the
/// queue); then the devices that waited for room are served. Runs on
/// whichever pCPU the interrupt is routed to, never a critical VM's.
pub fn disk_interrupt(d: usize) {
    let Some(disk) = disks().get(d) else {
        return;
    };
    {
        let mut g = disk.lock();
        g.transport.ack_interrupt();
        g.reap();
    }
    deliver(d);
}

/// Hands every finished request of disk `d` to its owner, then serves the
/// devices that waited for room.
fn deliver(d: usize) {
    let Some(disk) = disks().get(d) else {
        return;
    };
    loop {
        let owner = disk.lock().done_owner();
        let Some(owner) = owner else {
            break;
        };
        on_device(d, owner, |blk, mem, backend| {
            let mut done = [(0, Ok(())); blk::MAX_INFLIGHT];
            let n = backend.disk.lock().take_done(owner, &mut done, mem);
            (n > 0).then(|| blk.complete(mem, backend, &done[..n]))
        });
    }
    let waiters = core::mem::take(&mut disk.lock().waiters);
    for owner in waiters {
        on_device(d, owner, |blk, mem, backend| {
            Some(blk.process(mem, backend))
        });
    }
}

/// Runs `f` on `owner`'s device with its lock held, then reports what
/// happened and gives the vGIC its interrupt. An owner that is no device
/// of disk `d` (a bug) has its finished requests dropped.
fn on_device(
    d: usize,
    owner: Owner,
    f: impl FnOnce(&mut blk::Blk, &VmMem, &mut Backend) -> Option<blk::Outcome>,
) {
    let Some(disk) = disks().get(d) else {
        return;
    };
    let found = crate::system::vms()
        .get(usize::from(owner.vm))
        .and_then(|vm| Some((vm, vm.virtio.get(usize::from(owner.dev))?)));
    let Some((vm, dev, blk)) = found.and_then(|(vm, dev)| match &dev.model {
        Model::Blk { blk, disk: dd } if *dd == d => Some((vm, dev, blk)),
        _ => None,
    }) else {
        log::error!("disk{d}: requests of an unknown device {owner:?} dropped");
        disk.lock().forget(owner);
        return;
    };
    let me = crate::system::current()
        .filter(|(v, _)| core::ptr::eq(*v, vm))
        .map(|(_, vcpu)| vcpu);
    let mut b = blk.lock();
    let mem = vm.memory();
    let mut backend = Backend {
        disk,
        owner,
        route: Route::Keep,
    };
    if let Some(out) = f(&mut b, &mem, &mut backend) {
        report(vm, me.unwrap_or(VcpuId(0)), owner, &out);
        if out.abandoned {
            settle(disk, owner);
        }
    }
    let kicks = dev.line(vm, b.irq_level());
    drop(b);
    apply(vm, kicks, me);
}

/// Logs what a device refused or gave up, against `vcpu` of `vm`.
fn report(vm: &Vm, vcpu: VcpuId, owner: Owner, out: &blk::Outcome) {
    let i = owner.dev;
    if let Some(e) = out.refused {
        vm.complain(vcpu, format_args!("virtio-blk {i}: request refused: {e}"));
    }
    if let Some(e) = out.broken {
        vm.complain(
            vcpu,
            format_args!("virtio-blk {i}: queue given up ({e}); the device needs a reset"),
        );
    }
}

/// `owner` forgot its requests on the disk (a reset): waits until the
/// disk has finished every one of them, since their buffers are the
/// guest's memory, and drops their results. Called with the device's lock
/// held; others' requests that finish meanwhile stay in their slots and
/// the disk's interrupt, not acknowledged here, delivers them.
fn settle(disk: &Mutex<PhysDisk>, owner: Owner) {
    loop {
        {
            let mut g = disk.lock();
            g.reap();
            if !g.forget(owner) {
                return;
            }
        }
        core::hint::spin_loop();
    }
}

/// A VM's RAM for its devices: IPA `RAM_IPA..+size` at host `pa`. Every
/// write through it is marked dirty while the VM is migrating
/// (crate::dirty).
pub struct VmMem<'a> {
    pub pa: u64,
    pub size: u64,
    pub vm: &'a Vm,
}

impl VmMem<'_> {
    /// The device (not the guest) wrote `[ipa, ipa + len)` of RAM.
    fn wrote(&self, ipa: u64, len: u64) {
        crate::dirty::mark(self.vm, ipa, len);
    }
}

impl GuestMemory for VmMem<'_> {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), bulkhead_virtio::MemError> {
        let host = self
            .translate(ipa, buf.len() as u64)
            .ok_or(bulkhead_virtio::MemError {
                ipa,
                len: buf.len() as u64,
            })?;
        // SAFETY: `translate` put the range inside the VM's RAM, which is
        // identity-mapped at EL2 and never freed while the VM exists; a
        // byte copy of memory the guest may change meanwhile reads some
        // value of each byte, which the callers treat as untrusted.
        unsafe { core::ptr::copy_nonoverlapping(host as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), bulkhead_virtio::MemError> {
        let host = self
            .translate(ipa, data.len() as u64)
            .ok_or(bulkhead_virtio::MemError {
                ipa,
                len: data.len() as u64,
            })?;
        // SAFETY: as in `read`: the VM's own RAM, mapped at EL2.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), host as *mut u8, data.len()) };
        self.wrote(ipa, data.len() as u64);
        Ok(())
    }

    fn translate(&self, ipa: u64, len: u64) -> Option<u64> {
        bulkhead_virtio::offset_in(bulkhead_config::RAM_IPA, self.size, ipa, len)
            .map(|off| self.pa + off)
    }

    fn fence(&self) {
        arch::dmb_ish();
    }
}

/// What a VM's virtio device is.
pub enum Model {
    /// A slice of physical disk `disk` (an index into [`disks`]).
    Blk { blk: Mutex<blk::Blk>, disk: usize },
    /// Port `port` of switch `switch` (indices into `net::switches`).
    Net {
        net: Mutex<net::Net>,
        switch: usize,
        port: usize,
    },
}

/// One of a VM's virtio-mmio devices.
pub struct VirtioDev {
    pub ipa: u64,
    pub intid: u32,
    pub model: Model,
    /// The level last given to the vGIC (changed with the model's lock
    /// held).
    level: AtomicBool,
}

impl VirtioDev {
    pub fn new_blk(ipa: u64, intid: u32, disk: usize, slice: blk::Slice) -> VirtioDev {
        VirtioDev::with(
            ipa,
            intid,
            Model::Blk {
                blk: Mutex::new(blk::Blk::new(slice)),
                disk,
            },
        )
    }

    pub fn new_net(ipa: u64, intid: u32, mac: [u8; 6], switch: usize, port: usize) -> VirtioDev {
        VirtioDev::with(
            ipa,
            intid,
            Model::Net {
                net: Mutex::new(net::Net::new(mac)),
                switch,
                port,
            },
        )
    }

    fn with(ipa: u64, intid: u32, model: Model) -> VirtioDev {
        VirtioDev {
            ipa,
            intid,
            model,
            level: AtomicBool::new(false),
        }
    }

    /// The VM stops or (re)starts: the device is as after power-on, and
    /// nothing is delivered into the VM's memory any more until its new
    /// driver sets the device up: a disk's requests in flight are waited
    /// for. Called before the memory is scrubbed, with `owner` this
    /// device's VM and index.
    pub fn reset(&self, owner: Owner) {
        match &self.model {
            Model::Blk { blk, disk } => {
                let mut b = blk.lock();
                b.reset();
                if let Some(d) = disks().get(*disk) {
                    settle(d, owner);
                }
            }
            Model::Net { net, .. } => net.lock().reset(),
        }
        self.level.store(false, Ordering::Relaxed);
    }

    /// Gives the vGIC the device's level if it changed; call with the
    /// model's lock held, act on the kicks after releasing it.
    fn line(&self, vm: &Vm, level: bool) -> Option<bulkhead_vgic::Kicks> {
        (self.level.swap(level, Ordering::Relaxed) != level)
            .then(|| vm.vgic.lock().set_line(0, self.intid, level))
    }
}

/// A trapped access to device `i`'s register page. `None` makes the
/// caller inject a data abort (not a register, or a misaligned access).
pub fn access(
    vm: &Vm,
    vcpu: VcpuId,
    i: usize,
    off: u64,
    size: u8,
    write: Option<u64>,
) -> Option<u64> {
    let dev = vm.virtio.get(i)?;
    match &dev.model {
        Model::Blk { blk, disk } => blk_access(vm, vcpu, i, dev, blk, *disk, off, size, write),
        Model::Net { net, switch, port } => {
            let mem = vm.memory();
            let mut n = net.lock();
            let (r, tx) = match write {
                None => (n.mmio_read(off, size).map(u64::from), false),
                Some(value) => {
                    let ev = n.mmio_write(off, size, value as u32, &mem).ok()?;
                    if ev.refused {
                        vm.complain(
                            vcpu,
                            format_args!(
                                "virtio-net {i}: queue outside RAM or misaligned, not made ready"
                            ),
                        );
                    }
                    if let Some(e) = ev.ctrl_broken {
                        vm.complain(
                            vcpu,
                            format_args!(
                                "virtio-net {i}: control queue given up ({e}); the device needs a reset"
                            ),
                        );
                    }
                    (Some(0), ev.tx)
                }
            };
            let kicks = dev.line(vm, n.irq_level());
            drop(n);
            apply(vm, kicks, Some(vcpu));
            if tx {
                net_tx(vm, vcpu, i, dev, net, *switch, *port);
            }
            r
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn blk_access(
    vm: &Vm,
    vcpu: VcpuId,
    i: usize,
    dev: &VirtioDev,
    blk: &Mutex<blk::Blk>,
    disk: usize,
    off: u64,
    size: u8,
    write: Option<u64>,
) -> Option<u64> {
    let mut blk = blk.lock();
    let r = match write {
        None => blk.mmio_read(off, size).map(u64::from),
        Some(value) => {
            let disk = disks().get(disk)?;
            let mem = vm.memory();
            let owner = Owner {
                vm: vm.id.0,
                dev: i as u16,
            };
            let mut backend = Backend {
                disk,
                owner,
                route: Route::Ask(vm, dev),
            };
            let out = blk
                .mmio_write(off, size, value as u32, &mem, &mut backend)
                .ok()?;
            report(vm, vcpu, owner, &out);
            if out.abandoned {
                settle(disk, owner);
            }
            Some(0)
        }
    };
    let kicks = dev.line(vm, blk.irq_level());
    drop(blk);
    apply(vm, kicks, Some(vcpu));
    r
}

/// The pCPU (MPIDR) that should take `dev`'s completions: the one that
/// runs the vCPU the guest routes the device's interrupt to, so the
/// completion is injected there without a kick; else this one.
fn completion_cpu(vm: &Vm, dev: &VirtioDev) -> u64 {
    let here = percpu::this().mpidr.load(Ordering::Relaxed);
    let target = vm.vgic.lock().spi_target(dev.intid);
    target
        .and_then(|v| vm.pcpus.get(usize::from(v)))
        .and_then(|p| percpu::get(usize::from(p.0)))
        .map_or(here, |c| c.mpidr.load(Ordering::Relaxed))
}

/// Acts on what [`VirtioDev::line`] returned, once the model's lock is
/// released (a flush takes the vGIC lock again).
fn apply(vm: &Vm, kicks: Option<bulkhead_vgic::Kicks>, me: Option<VcpuId>) {
    if let Some(k) = kicks {
        vm.apply_kicks(k, me);
    }
}

/// The guest notified its transmit queue: every frame it queued goes to
/// the switch, one at a time (a TCP segment of up to 64 KiB with TSO),
/// with the device's lock released while the frame is forwarded (a delivery takes the receiving device's lock, and
/// two VMs may send to each other at once).
fn net_tx(
    vm: &Vm,
    vcpu: VcpuId,
    i: usize,
    dev: &VirtioDev,
    net: &Mutex<net::Net>,
    switch: usize,
    port: usize,
) {
    let mem = vm.memory();
    let cpu = percpu::this().index.load(Ordering::Relaxed);
    let Some(buf) = TX_BUF.get(cpu) else {
        return;
    };
    let mut frame = buf.lock();
    if frame.len() < MAX_GSO_FRAME {
        frame.resize(MAX_GSO_FRAME, 0);
    }
    loop {
        let r = net.lock().pop_tx(&mem, &mut frame);
        match r {
            Ok(Some((len, off))) => crate::net::send(switch, port, &frame[..len], &off),
            Ok(None) => break,
            Err(e) => {
                vm.complain(
                    vcpu,
                    format_args!(
                        "virtio-net {i}: transmit queue given up ({e}); the device needs a reset"
                    ),
                );
                break;
            }
        }
    }
    drop(frame);
    let mut n = net.lock();
    n.tx_done(&mem);
    let kicks = dev.line(vm, n.irq_level());
    drop(n);
    apply(vm, kicks, Some(vcpu));
}

/// `vm` has just resumed after a migration or a restore: each NIC whose
/// driver negotiated VIRTIO_NET_F_GUEST_ANNOUNCE is asked to announce
/// itself (the guest's gratuitous ARP and IPv6 neighbour advertisements,
/// from the addresses it has: what the hypervisor's RARP for its MAC
/// cannot say).
pub fn announce(vm: &Vm) {
    for (i, dev) in vm.virtio.iter().enumerate() {
        let Model::Net { net, .. } = &dev.model else {
            continue;
        };
        let mut n = net.lock();
        if !n.announce() {
            continue;
        }
        let kicks = dev.line(vm, n.irq_level());
        drop(n);
        log::info!(
            "{}: virtio-net {i}: asked the guest to announce itself",
            vm.name
        );
        apply(vm, kicks, None);
    }
}

/// Each pCPU's buffer for the frame it is sending: up to 64 KiB with
/// segmentation offload, too big for a 64 KiB stack. Only its own pCPU
/// takes it, in a trap (interrupts masked), so its lock never waits.
static TX_BUF: [Mutex<Vec<u8>>; arch::MAX_CPUS] =
    [const { Mutex::new(Vec::new()) }; arch::MAX_CPUS];

/// A frame from the switch for `dev`, a virtio-net device of `vm`. Runs
/// on the sender's pCPU (or the uplink's); the VM's vCPUs are kicked if
/// its interrupt rose.
pub fn net_deliver(vm: &Vm, dev: &VirtioDev, frame: &[u8], off: &Offload) -> Option<net::Delivery> {
    let Model::Net { net, .. } = &dev.model else {
        return None;
    };
    let mut n = net.lock();
    // A paused VM's NIC drops what comes (as a full ring would): its RAM
    // and rings are being copied (crate::snapshot, which takes this lock
    // once after pausing, so a delivery under way finishes first).
    if vm.paused.load(Ordering::Acquire) {
        n.stats.rx_dropped += 1;
        return Some(net::Delivery::NoBuffer);
    }
    let d = n.deliver(&vm.memory(), frame, off);
    let kicks = dev.line(vm, n.irq_level());
    drop(n);
    apply(vm, kicks, None);
    Some(d)
}

/// Waits, with `vm` paused, until its devices hold nothing in flight: a
/// disk's requests all answered into the guest's rings, and any frame
/// delivery under way finished (later ones see the VM paused and drop).
/// Their state and the RAM they wrote can then be copied. Polls the disks
/// itself (their interrupts may be routed to this pCPU, which is in the
/// shell with interrupts masked); `Err` naming the device after
/// `timeout_ms`.
pub fn quiesce(vm: &Vm, timeout_ms: u64) -> Result<(), alloc::string::String> {
    let freq = arch::regs::cntfrq_el0().max(1);
    let deadline = arch::regs::cntpct_el0() + timeout_ms * freq / 1000;
    for (i, dev) in vm.virtio.iter().enumerate() {
        match &dev.model {
            Model::Net { net, .. } => drop(net.lock()),
            Model::Blk { blk, disk } => loop {
                if blk.lock().quiet() {
                    break;
                }
                if arch::regs::cntpct_el0() > deadline {
                    return Err(alloc::format!(
                        "virtio-blk {i}: requests still on disk{disk} after {timeout_ms} ms"
                    ));
                }
                if let Some(d) = disks().get(*disk) {
                    d.lock().reap();
                    deliver(*disk);
                }
                core::hint::spin_loop();
            },
        }
    }
    Ok(())
}

/// Device `dev`'s state for a snapshot (crate::snapshot), once
/// [`quiesce`]d.
pub fn save_state(dev: &VirtioDev) -> Result<Vec<u8>, bulkhead_virtio::state::StateError> {
    match &dev.model {
        Model::Blk { blk, .. } => blk.lock().save_state(),
        Model::Net { net, .. } => Ok(net.lock().save_state()),
    }
}

/// A device model with a snapshot's state, checked, to put in place with
/// [`put_state`].
pub enum Fresh {
    Blk(alloc::boxed::Box<blk::Blk>),
    Net(alloc::boxed::Box<net::Net>),
}

/// Checks `bytes` against device `dev` of `vm` (same kind, same slice or
/// MAC, queues in the VM's RAM) into a new model; `dev` is unchanged.
pub fn check_state(
    vm: &Vm,
    dev: &VirtioDev,
    bytes: &[u8],
) -> Result<Fresh, bulkhead_virtio::state::StateError> {
    let mem = vm.memory();
    match &dev.model {
        Model::Blk { blk, .. } => {
            let mut b = alloc::boxed::Box::new(blk::Blk::new(blk.lock().slice.clone()));
            b.restore_state(bytes, &mem)?;
            Ok(Fresh::Blk(b))
        }
        Model::Net { net, .. } => {
            let mut n = alloc::boxed::Box::new(net::Net::new(net.lock().mac));
            n.restore_state(bytes, &mem)?;
            Ok(Fresh::Net(n))
        }
    }
}

/// Puts a checked state in place in a stopped VM's device (its counters
/// stay, they are this machine's history) and gives the vGIC line the
/// level the state has (the vGIC's own state is restored beside it).
pub fn put_state(dev: &VirtioDev, fresh: Fresh) {
    let level = match (&dev.model, fresh) {
        (Model::Blk { blk, .. }, Fresh::Blk(new)) => {
            let mut b = blk.lock();
            let stats = b.stats;
            *b = *new;
            b.stats = stats;
            b.irq_level()
        }
        (Model::Net { net, .. }, Fresh::Net(new)) => {
            let mut n = net.lock();
            let stats = n.stats;
            *n = *new;
            n.stats = stats;
            n.irq_level()
        }
        // `check_state` made it for this device.
        _ => return,
    };
    dev.level.store(level, Ordering::Relaxed);
}
