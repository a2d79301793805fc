//! The virtio block device (virtio 1.2, 5.2) over a slice of a shared disk.
//!
//! A VM's disk is a window `[start, start + sectors)` of a physical disk.
//! [`Blk::process`] takes each request the guest made available, checks
//! it (header, direction of every buffer, that each buffer is guest RAM,
//! that the sectors lie inside the slice), hands the checked request to
//! the [`BlockBackend`] with absolute sectors and host addresses, and
//! writes the status. The backend never sees a guest-chosen sector or
//! address that was not checked here.

use crate::mem::GuestMemory;
use crate::mmio::{self, Event, Transport};
use crate::queue::{Desc, Queue, QueueError};
use crate::{feature, status};
use alloc::vec::Vec;

pub const DEVICE_ID: u32 = 2;
pub const SECTOR: u64 = 512;

/// Feature bits (5.2.3).
pub mod f {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types and status values (5.2.6).
pub mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
    /// `virtio_blk_discard_write_zeroes.flags`: the device may deallocate.
    pub const F_UNMAP: u32 = 1;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
}

/// Queue entries the guest may use; a chain is at most this long.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request we announce (`seg_max`): the chain also
/// holds the header and the status byte, and the physical queue has the
/// same room.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its
/// padding (5.2.4): capacity at 0, seg_max at 12, blk_size at 20, the
/// discard limits at 36..48, the write-zeroes limits at 48..57.
pub const CONFIG_BYTES: usize = 60;
/// The serial number `GET_ID` returns is up to 20 bytes.
pub const ID_BYTES: usize = 20;

/// A checked piece of a request's data: guest RAM at `host` (from
/// [`GuestMemory::translate`]), `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub ipa: u64,
    pub host: u64,
    pub len: u32,
}

/// The physical disk failed the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError;

/// What a request asks of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// The sectors' data is no longer wanted (what they read afterwards
    /// is the disk's choice). No data buffers: the sector count is the
    /// request's `bytes` / 512.
    Discard,
    /// The sectors read as zeroes afterwards. No data buffers, as for
    /// `Discard`.
    WriteZeroes,
}

/// The one range of a discard or write-zeroes request
/// (`struct virtio_blk_discard_write_zeroes`).
pub const RANGE_BYTES: usize = 16;

/// What the disk behind a slice does besides read, write and flush: the
/// most sectors one discard or write-zeroes request may cover, 0 where the
/// request is not offered (the physical disk does not have it, or the
/// slice is read-only). One range per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
}

/// What [`BlockBackend::submit`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Done already, with this result.
    Done(Result<(), IoError>),
    /// In flight under this ticket: its result comes to
    /// [`Blk::complete`] when the disk is done with it.
    Pending(u16),
    /// The disk has no room for it now. The device keeps the request and
    /// offers it again at its next `process` or `complete`.
    Busy,
}

/// The shared disk behind every VM's slice. Sectors are absolute (the
/// slice offset already added and the range checked); `segs` are in order
/// and their lengths add up to a whole number of sectors.
///
/// [`Blk`] hands each request over with `submit`. The default runs it at
/// once with `read`, `write` or `flush`; a disk that runs requests
/// asynchronously answers `Pending` and later gives each ticket's result
/// to [`Blk::complete`], so the vCPU that notified does not wait.
pub trait BlockBackend {
    fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError>;
    fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError>;
    fn flush(&mut self) -> Result<(), IoError>;

    /// `sectors` from `sector` no longer wanted; only asked of a disk
    /// whose slice offers discard ([`Extras`]).
    fn discard(&mut self, _sector: u64, _sectors: u64) -> Result<(), IoError> {
        Err(IoError)
    }

    /// `sectors` from `sector` to read as zeroes; only asked of a disk
    /// whose slice offers write-zeroes.
    fn write_zeroes(&mut self, _sector: u64, _sectors: u64) -> Result<(), IoError> {
        Err(IoError)
    }

    /// `bytes` is the request's size (the sectors a discard or
    /// write-zeroes covers, times 512).
    fn submit(&mut self, op: Op, sector: u64, bytes: u64, segs: &[Seg]) -> Submitted {
        Submitted::Done(match op {
            Op::Read => self.read(sector, segs),
            Op::Write => self.write(sector, segs),
            Op::Flush => self.flush(),
            Op::Discard => self.discard(sector, bytes / SECTOR),
            Op::WriteZeroes => self.write_zeroes(sector, bytes / SECTOR),
        })
    }
}

/// Requests of one device in flight on the disk at once; the device takes
/// no more chains from its queue until one completes.
pub const MAX_INFLIGHT: usize = 32;

/// A VM's view of its disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// First sector on the physical disk.
    pub start: u64,
    /// Sectors in the slice.
    pub sectors: u64,
    pub read_only: bool,
    /// What GET_ID answers (NUL-padded).
    pub serial: [u8; ID_BYTES],
    pub extras: Extras,
}

impl Slice {
    /// What the device offers of [`Extras`]: nothing on a read-only slice.
    pub fn offered(&self) -> Extras {
        if self.read_only {
            Extras::default()
        } else {
            self.extras
        }
    }
}

/// Counters for the shell (`info`, `stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    /// Discard and write-zeroes requests done, and the bytes they covered.
    pub discards: u64,
    pub zeroes: u64,
    pub discard_bytes: u64,
    pub zero_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: u64,
    /// Notifications from the guest, and interrupts sent to it.
    pub kicks: u64,
    pub interrupts: u64,
    /// Times the device gave up until reset (a broken ring).
    pub resets_needed: u64,
}

/// What went wrong with one request; each gets a status for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqError {
    /// No header, or a header that is not in device-readable buffers.
    BadHeader,
    /// No writable status byte at the end of the chain.
    NoStatus,
    /// A readable buffer after a writable one, or a buffer of the wrong
    /// direction for the request.
    Direction,
    /// A buffer outside guest RAM.
    Memory {
        ipa: u64,
    },
    /// Data that is not whole sectors, or more than fits a used length.
    Length,
    /// More data buffers than the `seg_max` the device announced.
    Segments {
        count: usize,
    },
    /// Sectors outside the VM's slice.
    Range {
        sector: u64,
        sectors: u64,
    },
    /// A write to a read-only slice.
    ReadOnly,
    /// A discard or write-zeroes range over the limit the device
    /// announced, or with flags it does not take.
    Limit {
        sectors: u64,
    },
    Unsupported {
        kind: u32,
    },
    Io,
}

impl core::fmt::Display for ReqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ReqError::BadHeader => write!(f, "request header missing or device-writable"),
            ReqError::NoStatus => write!(f, "no device-writable status byte ends the chain"),
            ReqError::Direction => write!(f, "a buffer of the wrong direction"),
            ReqError::Memory { ipa } => write!(f, "buffer at IPA {ipa:#x} is not guest RAM"),
            ReqError::Length => write!(f, "data is not a whole number of sectors"),
            ReqError::Segments { count } => {
                write!(f, "{count} data buffers, more than seg_max ({SEG_MAX})")
            }
            ReqError::Range { sector, sectors } => write!(
                f,
                "sectors {sector}..{} are outside the disk",
                sector.saturating_add(sectors)
            ),
            ReqError::ReadOnly => write!(f, "write to a read-only disk"),
            ReqError::Limit { sectors } => write!(
                f,
                "a discard or write-zeroes range of {sectors} sectors, over the device's limit or with flags it does not take"
            ),
            ReqError::Unsupported { kind } => write!(f, "request type {kind} is not supported"),
            ReqError::Io => write!(f, "the physical disk failed the request"),
        }
    }
}

/// What one call of [`Blk::process`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Requests completed.
    pub used: u32,
    /// The guest must be interrupted.
    pub interrupt: bool,
    /// The first request refused, for the log.
    pub refused: Option<ReqError>,
    /// The queue was given up (the device now needs a reset).
    pub broken: Option<QueueError>,
    /// Requests still on the disk were forgotten (a reset, or the queue
    /// given up): their buffers are the guest's memory, so the backend
    /// must let them finish before that memory is used for anything else.
    pub abandoned: bool,
}

/// One virtio-blk device: its register file, its queue and its slice.
pub struct Blk {
    pub transport: Transport<1>,
    pub slice: Slice,
    queue: Option<Queue>,
    config: [u8; CONFIG_BYTES],
    chain: Vec<Desc>,
    /// The data buffers of the request being checked or of `stalled`.
    segs: Vec<Seg>,
    /// Requests on the disk, waiting for [`Blk::complete`].
    inflight: Vec<Entry>,
    /// A checked request the disk had no room for (its buffers in `segs`).
    stalled: Option<(Entry, u64)>,
    pub stats: BlkStats,
}

/// A checked request: either its result is known already, or it goes to
/// the disk.
#[derive(Clone, Debug)]
enum Plan {
    /// Done, with the bytes written into the chain (GET_ID) or an error.
    Done(Result<u32, ReqError>),
    /// To the disk, with its buffers in `segs`.
    Io { op: Op, sector: u64, bytes: u64 },
}

/// A request that went to the disk, until it is answered.
#[derive(Clone, Copy, Debug)]
struct Entry {
    head: u16,
    status_at: u64,
    op: Op,
    bytes: u64,
    ticket: u16,
}

impl Blk {
    pub fn new(slice: Slice) -> Blk {
        let mut features =
            f::SEG_MAX | f::BLK_SIZE | f::FLUSH | feature::RING_EVENT_IDX | feature::VERSION_1;
        if slice.read_only {
            features |= f::RO;
        }
        let x = slice.offered();
        let mut config = [0u8; CONFIG_BYTES];
        config[0..8].copy_from_slice(&slice.sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        if x.max_discard_sectors > 0 {
            features |= f::DISCARD;
            config[36..40].copy_from_slice(&x.max_discard_sectors.to_le_bytes());
            config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
            config[44..48].copy_from_slice(&1u32.to_le_bytes()); // alignment (sectors)
        }
        if x.max_write_zeroes_sectors > 0 {
            features |= f::WRITE_ZEROES;
            config[48..52].copy_from_slice(&x.max_write_zeroes_sectors.to_le_bytes());
            config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        }
        Blk {
            transport: Transport::new(DEVICE_ID, features, QUEUE_SIZE),
            slice,
            queue: None,
            config,
            chain: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            inflight: Vec::with_capacity(MAX_INFLIGHT),
            stalled: None,
            stats: BlkStats::default(),
        }
    }

    /// The interrupt line's level: high while InterruptStatus is not zero.
    pub fn irq_level(&self) -> bool {
        self.transport.interrupt_status != 0
    }

    /// Requests on the disk that [`Blk::complete`] has not had yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The device is reset (the VM restarted): no queue, no features. The
    /// counters stay, they are the device's history. Requests in flight are
    /// forgotten: the caller must let the disk finish them before the
    /// guest's memory is used again (their buffers are in it).
    pub fn reset(&mut self) {
        self.transport.reset();
        self.drop_queue();
    }

    /// Nothing on the disk and nothing waiting for room there.
    pub fn quiet(&self) -> bool {
        self.inflight.is_empty() && self.stalled.is_none()
    }

    pub(crate) fn queue_ref(&self) -> &Option<Queue> {
        &self.queue
    }

    pub(crate) fn set_queue(&mut self, q: Option<Queue>) {
        self.drop_queue();
        self.queue = q;
    }

    fn drop_queue(&mut self) {
        self.queue = None;
        self.inflight.clear();
        self.stalled = None;
    }

    pub fn mmio_read(&self, off: u64, size: u8) -> Option<u32> {
        self.transport.read(off, size, &self.config)
    }

    /// A register write; a notification is served here and now. `Err` for
    /// an access that is not a register.
    #[allow(clippy::result_unit_err)]
    pub fn mmio_write(
        &mut self,
        off: u64,
        size: u8,
        value: u32,
        mem: &impl GuestMemory,
        backend: &mut impl BlockBackend,
    ) -> Result<Outcome, ()> {
        let mut out = Outcome::default();
        match self.transport.write(off, size, value)? {
            None | Some(Event::Interrupt) => {}
            Some(Event::Reset) => {
                out.abandoned = !self.inflight.is_empty();
                self.drop_queue();
            }
            Some(Event::QueueReady(q)) => {
                // A queue set up again starts from its first entry: what
                // the old one had on the disk is forgotten, not answered
                // into the new one (or popped a second time).
                out.abandoned = !self.inflight.is_empty();
                self.drop_queue();
                self.queue = self.transport.take_ready(usize::from(q), mem);
            }
            Some(Event::Notify(_)) => {
                self.stats.kicks += 1;
                out = self.process(mem, backend);
            }
        }
        Ok(out)
    }

    /// Serves every request the guest made available (up to
    /// [`MAX_INFLIGHT`] on the disk at once), then decides whether it
    /// wants an interrupt.
    pub fn process(&mut self, mem: &impl GuestMemory, backend: &mut impl BlockBackend) -> Outcome {
        self.with_queue(mem, |blk, q, out| blk.serve(q, mem, backend, out))
    }

    /// Requests the disk finished, by ticket: each is answered, then the
    /// queue is served again (the device may have stopped taking chains
    /// while it had [`MAX_INFLIGHT`] on the disk). A ticket the device
    /// does not know (it was reset meanwhile) is ignored.
    pub fn complete(
        &mut self,
        mem: &impl GuestMemory,
        backend: &mut impl BlockBackend,
        done: &[(u16, Result<(), IoError>)],
    ) -> Outcome {
        self.with_queue(mem, |blk, q, out| {
            for &(ticket, result) in done {
                let Some(i) = blk.inflight.iter().position(|e| e.ticket == ticket) else {
                    continue;
                };
                let e = blk.inflight.swap_remove(i);
                let answer = blk.io_done(e.op, e.bytes, result);
                blk.answer(q, mem, e.head, e.status_at, answer, out)?;
            }
            blk.serve(q, mem, backend, out)
        })
    }

    /// Runs `f` on the live queue, then asks for an interrupt if the
    /// driver wants one, or gives the queue up if `f` found it broken.
    fn with_queue(
        &mut self,
        mem: &impl GuestMemory,
        f: impl FnOnce(&mut Blk, &mut Queue, &mut Outcome) -> Result<(), QueueError>,
    ) -> Outcome {
        let mut out = Outcome::default();
        if !self.transport.live() {
            return out;
        }
        let Some(mut q) = self.queue.take() else {
            return out;
        };
        let r = f(self, &mut q, &mut out).and_then(|()| q.needs_interrupt(mem));
        match r {
            Ok(want) => {
                if want {
                    self.transport.interrupt_status |= mmio::INT_VRING;
                    self.stats.interrupts += 1;
                }
                out.interrupt = want;
                self.queue = Some(q);
            }
            Err(e) => {
                // The queue is gone until the driver resets the device;
                // what is on the disk finishes unanswered.
                self.transport.needs_reset();
                self.stats.resets_needed += 1;
                out.abandoned = !self.inflight.is_empty();
                self.drop_queue();
                out.broken = Some(e);
                out.interrupt = true;
            }
        }
        out
    }

    /// Takes chains off the queue and hands them to the disk while it has
    /// room; answers those that need no disk at once.
    fn serve(
        &mut self,
        q: &mut Queue,
        mem: &impl GuestMemory,
        backend: &mut impl BlockBackend,
        out: &mut Outcome,
    ) -> Result<(), QueueError> {
        loop {
            if let Some((e, sector)) = self.stalled.take() {
                match backend.submit(e.op, sector, e.bytes, &self.segs) {
                    Submitted::Busy => {
                        self.stalled = Some((e, sector));
                        return Ok(());
                    }
                    Submitted::Pending(ticket) => self.inflight.push(Entry { ticket, ..e }),
                    Submitted::Done(r) => {
                        let answer = self.io_done(e.op, e.bytes, r);
                        self.answer(q, mem, e.head, e.status_at, answer, out)?;
                    }
                }
            }
            if self.inflight.len() >= MAX_INFLIGHT {
                return Ok(());
            }
            let Some(head) = q.pop(mem, &mut self.chain)? else {
                if !q.rearm(mem)? {
                    return Ok(());
                }
                continue;
            };
            let Some(status_at) = self.status_byte(mem) else {
                // Nowhere to say what happened: the chain goes back empty
                // and the queue is given up.
                out.refused.get_or_insert(ReqError::NoStatus);
                q.push_used(mem, head, 0)?;
                return Err(QueueError::Unanswerable);
            };
            self.segs.clear();
            match self.plan(mem) {
                Plan::Done(r) => {
                    let answer = r.map(|written| written + 1);
                    self.answer(q, mem, head, status_at, answer, out)?;
                }
                Plan::Io { op, sector, bytes } => {
                    let e = Entry {
                        head,
                        status_at,
                        op,
                        bytes,
                        ticket: 0,
                    };
                    self.stalled = Some((e, sector));
                }
            }
        }
    }

    /// The disk's result for a request: the bytes written into its chain
    /// (data and status), with the counters updated.
    fn io_done(&mut self, op: Op, bytes: u64, r: Result<(), IoError>) -> Result<u32, ReqError> {
        r.map_err(|IoError| ReqError::Io)?;
        let (count, total, data) = match op {
            Op::Read => (&mut self.stats.reads, &mut self.stats.read_bytes, bytes),
            Op::Write => (&mut self.stats.writes, &mut self.stats.write_bytes, 0),
            Op::Flush => (&mut self.stats.flushes, &mut 0u64, 0),
            Op::Discard => (&mut self.stats.discards, &mut self.stats.discard_bytes, 0),
            Op::WriteZeroes => (&mut self.stats.zeroes, &mut self.stats.zero_bytes, 0),
        };
        *count += 1;
        *total += bytes;
        // `check` kept every request's data under u32::MAX - 1 bytes.
        Ok(data as u32 + 1)
    }

    /// Writes a request's status byte and gives its chain back with the
    /// bytes written into it (`Ok`), or one (the status) for an error.
    fn answer(
        &mut self,
        q: &mut Queue,
        mem: &impl GuestMemory,
        head: u16,
        status_at: u64,
        answer: Result<u32, ReqError>,
        out: &mut Outcome,
    ) -> Result<(), QueueError> {
        let (len, code) = match answer {
            Ok(len) => (len, req::S_OK),
            Err(err) => {
                self.stats.errors += 1;
                out.refused.get_or_insert(err);
                match err {
                    ReqError::Unsupported { .. } => (1, req::S_UNSUPP),
                    _ => (1, req::S_IOERR),
                }
            }
        };
        // The status byte was checked to be guest RAM.
        let _ = mem.write(status_at, &[code]);
        q.push_used(mem, head, len)?;
        out.used += 1;
        Ok(())
    }
    /// Where the chain in `self.chain` wants its status: the last byte of
    /// the last descriptor, which must be device-writable guest RAM.
    fn status_byte(&self, mem: &impl GuestMemory) -> Option<u64> {
        self.chain.last().and_then(|d| {
            let at = d.addr.checked_add(u64::from(d.len))?.checked_sub(1)?;
            (d.write && d.len > 0 && mem.translate(at, 1).is_some()).then_some(at)
        })
    }

    /// Checks the chain in `self.chain` (which has a status byte) and says
    /// what to do with it; its data buffers go on the end of `self.segs`.
    fn plan(&mut self, mem: &impl GuestMemory) -> Plan {
        let first = self.segs.len();
        match self.check(mem, first) {
            Ok(plan) => plan,
            Err(e) => {
                self.segs.truncate(first);
                Plan::Done(Err(e))
            }
        }
    }

    fn check(&mut self, mem: &impl GuestMemory, first: usize) -> Result<Plan, ReqError> {
        // Device-readable buffers come first (2.7.4.2).
        let readable = self.chain.iter().take_while(|d| !d.write).count();
        if self.chain[readable..].iter().any(|d| !d.write) {
            return Err(ReqError::Direction);
        }
        // The 16-byte header is the front of the readable buffers; the data
        // is what follows it (OUT), or the writable buffers before the
        // status byte (IN, GET_ID).
        let mut header = [0u8; 16];
        let mut header_left = header.len();
        let last = self.chain.len() - 1;
        let (mut readable_data, mut writable_data) = (false, false);
        for (i, d) in self.chain.iter().enumerate() {
            let (mut addr, mut len) = (d.addr, u64::from(d.len));
            if !d.write && header_left > 0 {
                let take = header_left.min(d.len as usize);
                let at = header.len() - header_left;
                mem.read(addr, &mut header[at..at + take])
                    .map_err(|_| ReqError::Memory { ipa: addr })?;
                header_left -= take;
                // Guest RAM was just read there, so this cannot overflow.
                addr += take as u64;
                len -= take as u64;
            }
            if i == last {
                len -= 1; // the status byte, checked by the caller
            }
            if len == 0 {
                continue;
            }
            let host = mem
                .translate(addr, len)
                .ok_or(ReqError::Memory { ipa: addr })?;
            if d.write {
                writable_data = true;
            } else {
                readable_data = true;
            }
            self.segs.push(Seg {
                ipa: addr,
                host,
                len: len as u32,
            });
        }
        if header_left > 0 {
            return Err(ReqError::BadHeader);
        }
        let count = self.segs.len() - first;
        if count > SEG_MAX as usize {
            return Err(ReqError::Segments { count });
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let segs = first..self.segs.len();
        let total: u64 = self.segs[segs.clone()]
            .iter()
            .map(|s| u64::from(s.len))
            .sum();
        match kind {
            req::IN | req::OUT => {
                let (ok_dir, wrong) = if kind == req::IN {
                    (writable_data || total == 0, readable_data)
                } else {
                    (readable_data || total == 0, writable_data)
                };
                if !ok_dir || wrong {
                    return Err(ReqError::Direction);
                }
                if !total.is_multiple_of(SECTOR) || total > u64::from(u32::MAX - 1) {
                    return Err(ReqError::Length);
                }
                let n = total / SECTOR;
                let inside = sector
                    .checked_add(n)
                    .is_some_and(|end| end <= self.slice.sectors);
                if !inside {
                    return Err(ReqError::Range { sector, sectors: n });
                }
                if kind == req::OUT && self.slice.read_only {
                    return Err(ReqError::ReadOnly);
                }
                if n == 0 {
                    return Ok(Plan::Done(Ok(0)));
                }
                Ok(Plan::Io {
                    op: if kind == req::IN { Op::Read } else { Op::Write },
                    sector: self.slice.start + sector,
                    bytes: total,
                })
            }
            req::FLUSH => {
                if self.slice.read_only {
                    return Ok(Plan::Done(Ok(0)));
                }
                Ok(Plan::Io {
                    op: Op::Flush,
                    sector: 0,
                    bytes: 0,
                })
            }
            req::DISCARD | req::WRITE_ZEROES => {
                let x = self.slice.offered();
                let (op, max) = if kind == req::DISCARD {
                    (Op::Discard, x.max_discard_sectors)
                } else {
                    (Op::WriteZeroes, x.max_write_zeroes_sectors)
                };
                if max == 0 {
                    return Err(ReqError::Unsupported { kind });
                }
                if writable_data {
                    return Err(ReqError::Direction);
                }
                // One range (max_*_seg is 1), read once, wherever the
                // driver's buffers split it.
                if total != RANGE_BYTES as u64 {
                    return Err(ReqError::Length);
                }
                let mut range = [0u8; RANGE_BYTES];
                let mut at = 0;
                for s in &self.segs[segs] {
                    let n = s.len as usize;
                    mem.read(s.ipa, &mut range[at..at + n])
                        .map_err(|_| ReqError::Memory { ipa: s.ipa })?;
                    at += n;
                }
                self.segs.truncate(first);
                let mut w = [0u8; 8];
                w.copy_from_slice(&range[0..8]);
                let sector = u64::from_le_bytes(w);
                let n = u64::from(u32::from_le_bytes([
                    range[8], range[9], range[10], range[11],
                ]));
                let flags = u32::from_le_bytes([range[12], range[13], range[14], range[15]]);
                // Discard takes no flags (5.2.6.2); write-zeroes may say
                // unmap, which only allows the disk to deallocate.
                let allowed = if op == Op::Discard { 0 } else { req::F_UNMAP };
                if n > u64::from(max) || flags & !allowed != 0 {
                    return Err(ReqError::Limit { sectors: n });
                }
                let inside = sector
                    .checked_add(n)
                    .is_some_and(|end| end <= self.slice.sectors);
                if !inside {
                    return Err(ReqError::Range { sector, sectors: n });
                }
                if n == 0 {
                    return Ok(Plan::Done(Ok(0)));
                }
                Ok(Plan::Io {
                    op,
                    sector: self.slice.start + sector,
                    bytes: n * SECTOR,
                })
            }
            req::GET_ID => {
                if readable_data || !writable_data {
                    return Err(ReqError::Direction);
                }
                let mut left = &self.slice.serial[..];
                let mut written = 0u32;
                for s in &self.segs[segs] {
                    let n = left.len().min(s.len as usize);
                    mem.write(s.ipa, &left[..n])
                        .map_err(|_| ReqError::Memory { ipa: s.ipa })?;
                    left = &left[n..];
                    written += n as u32;
                }
                self.segs.truncate(first);
                Ok(Plan::Done(Ok(written)))
            }
            kind => Err(ReqError::Unsupported { kind }),
        }
    }
}

/// A disk in memory, for tests and fuzzing: copies through the guest
/// memory path, so it also checks that every segment handed over was
/// guest RAM.
pub struct MemDisk<'m, M: GuestMemory> {
    pub mem: &'m M,
    pub data: Vec<u8>,
    pub flushes: u64,
}

impl<M: GuestMemory> BlockBackend for MemDisk<'_, M> {
    fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        let mut at = (sector * SECTOR) as usize;
        for s in segs {
            let src = self.data.get(at..at + s.len as usize).ok_or(IoError)?;
            self.mem.write(s.ipa, src).map_err(|_| IoError)?;
            at += s.len as usize;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        let mut at = (sector * SECTOR) as usize;
        for s in segs {
            let dst = self.data.get_mut(at..at + s.len as usize).ok_or(IoError)?;
            self.mem.read(s.ipa, dst).map_err(|_| IoError)?;
            at += s.len as usize;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.flushes += 1;
        Ok(())
    }

    /// Discarded sectors read as 0xdd here, so a test sees which went.
    fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        let at = (sector * SECTOR) as usize;
        let len = (sectors * SECTOR) as usize;
        self.data.get_mut(at..at + len).ok_or(IoError)?.fill(0xdd);
        Ok(())
    }

    fn write_zeroes(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        let at = (sector * SECTOR) as usize;
        let len = (sectors * SECTOR) as usize;
        self.data.get_mut(at..at + len).ok_or(IoError)?.fill(0);
        Ok(())
    }
}

/// Brings a device up as Linux's driver does (status, features, one
/// queue), for tests and fuzzing.
pub fn driver_init(blk: &mut Blk, layout: crate::queue::Layout, mem: &impl GuestMemory) {
    use crate::mmio::reg;
    let offered = blk.transport.device_features;
    let mut none = NoDisk;
    let mut w = |off, v| {
        let _ = blk.mmio_write(off, 4, v, mem, &mut none);
    };
    w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(reg::DRIVER_FEATURES_SEL, 0);
    w(reg::DRIVER_FEATURES, offered as u32);
    w(reg::DRIVER_FEATURES_SEL, 1);
    w(reg::DRIVER_FEATURES, (offered >> 32) as u32);
    w(reg::STATUS, status::FEATURES_OK);
    w(reg::QUEUE_SEL, 0);
    w(reg::QUEUE_NUM, u32::from(layout.size));
    w(reg::QUEUE_DESC_LOW, layout.desc as u32);
    w(reg::QUEUE_DESC_HIGH, (layout.desc >> 32) as u32);
    w(reg::QUEUE_DRIVER_LOW, layout.avail as u32);
    w(reg::QUEUE_DRIVER_HIGH, (layout.avail >> 32) as u32);
    w(reg::QUEUE_DEVICE_LOW, layout.used as u32);
    w(reg::QUEUE_DEVICE_HIGH, (layout.used >> 32) as u32);
    w(reg::QUEUE_READY, 1);
    w(reg::STATUS, status::DRIVER_OK);
}

/// A backend that refuses everything (device setup needs none).
struct NoDisk;

impl BlockBackend for NoDisk {
    fn read(&mut self, _: u64, _: &[Seg]) -> Result<(), IoError> {
        Err(IoError)
    }
    fn write(&mut self, _: u64, _: &[Seg]) -> Result<(), IoError> {
        Err(IoError)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Err(IoError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SliceMem;
    use crate::queue::driver::Driver;
    use alloc::vec;

    const BASE: u64 = 0x4000_0000;
    const RAM: usize = 1 << 20;
    /// Buffers in the test VM's RAM.
    const HDR: u64 = BASE + 0x1_0000;
    const DATA: u64 = BASE + 0x2_0000;
    const STATUS: u64 = BASE + 0x3_0000;
    /// A driver's buffer: address, length, device-writable.
    type Buf = (u64, u32, bool);

    fn slice(start: u64, sectors: u64, read_only: bool) -> Slice {
        let mut serial = [0; ID_BYTES];
        serial[..6].copy_from_slice(b"vm0-d0");
        Slice {
            start,
            sectors,
            read_only,
            serial,
            extras: Extras {
                max_discard_sectors: 64,
                max_write_zeroes_sectors: 32,
            },
        }
    }

    fn header(mem: &SliceMem, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write(HDR, &h).unwrap();
    }

    struct Rig {
        blk: Blk,
        drv: Driver,
    }

    fn rig(mem: &SliceMem, s: Slice) -> Rig {
        let drv = Driver::new(BASE, 16);
        let mut blk = Blk::new(s);
        driver_init(&mut blk, drv.layout, mem);
        assert!(blk.transport.live(), "status {:#x}", blk.transport.status);
        Rig { blk, drv }
    }

    fn status(mem: &SliceMem) -> u8 {
        let mut b = [0xff];
        mem.read(STATUS, &mut b).unwrap();
        b[0]
    }

    fn disk<'m, 'a>(mem: &'m SliceMem<'a>) -> MemDisk<'m, SliceMem<'a>> {
        let data = (0..64 * SECTOR as usize).map(|i| (i / 512) as u8).collect();
        MemDisk {
            mem,
            data,
            flushes: 0,
        }
    }

    fn notify(r: &mut Rig, mem: &SliceMem, d: &mut MemDisk<SliceMem>) -> Outcome {
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, mem, d)
            .unwrap()
    }

    #[test]
    fn reads_and_writes_land_inside_the_slice() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        // The VM's disk is sectors 8..24 of the physical disk.
        let mut r = rig(&mem, slice(8, 16, false));
        header(&mem, req::IN, 2);
        let h = r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        );
        let out = notify(&mut r, &mem, &mut d);
        assert_eq!((out.used, out.refused), (1, None));
        assert_eq!(status(&mem), req::S_OK);
        assert_eq!(r.drv.take_used(&mem), Some((h, 1025)));
        let mut got = [0u8; 1024];
        mem.read(DATA, &mut got).unwrap();
        assert!(got[..512].iter().all(|&b| b == 10) && got[512..].iter().all(|&b| b == 11));

        mem.write(DATA, &[0xab; 512]).unwrap();
        header(&mem, req::OUT, 15);
        r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        notify(&mut r, &mem, &mut d);
        assert_eq!(status(&mem), req::S_OK);
        assert!(d.data[23 * 512..24 * 512].iter().all(|&b| b == 0xab));
        assert!(
            d.data[24 * 512..25 * 512].iter().all(|&b| b == 24),
            "next sector untouched"
        );
        assert_eq!((r.blk.stats.reads, r.blk.stats.writes), (1, 1));
        assert_eq!(
            (r.blk.stats.read_bytes, r.blk.stats.write_bytes),
            (1024, 512)
        );
    }

    #[test]
    fn sectors_past_the_slice_get_ioerr_and_touch_nothing() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let before = d.data.clone();
        let mut r = rig(&mem, slice(8, 16, false));
        for (sector, len) in [
            (16u64, 512u32),
            (15, 1024),
            (u64::MAX, 512),
            (u64::MAX - 1, 1024),
        ] {
            header(&mem, req::OUT, sector);
            r.drv.add(
                &mem,
                &[(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)],
            );
            let out = notify(&mut r, &mem, &mut d);
            assert_eq!(status(&mem), req::S_IOERR, "sector {sector}");
            assert!(
                matches!(out.refused, Some(ReqError::Range { .. })),
                "{out:?}"
            );
        }
        assert_eq!(d.data, before);
        assert_eq!(r.blk.stats.errors, 4);
    }

    #[test]
    fn buffers_outside_ram_wrong_directions_and_partial_sectors_are_refused() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let mut r = rig(&mem, slice(0, 64, false));
        let cases: [(u32, &[Buf], ReqError); 5] = [
            (
                req::IN,
                &[
                    (HDR, 16, false),
                    (0x4020_0000, 512, true),
                    (STATUS, 1, true),
                ],
                ReqError::Memory { ipa: 0x4020_0000 },
            ),
            (
                req::IN,
                &[
                    (HDR, 16, false),
                    (BASE + RAM as u64 - 256, 512, true),
                    (STATUS, 1, true),
                ],
                ReqError::Memory {
                    ipa: BASE + RAM as u64 - 256,
                },
            ),
            (
                req::IN,
                &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
                ReqError::Direction,
            ),
            (
                req::OUT,
                &[(HDR, 16, false), (DATA, 100, false), (STATUS, 1, true)],
                ReqError::Length,
            ),
            (
                req::IN,
                &[(HDR, 8, false), (STATUS, 1, true)],
                ReqError::BadHeader,
            ),
        ];
        for (kind, chain, want) in cases {
            header(&mem, kind, 0);
            r.drv.add(&mem, chain);
            let out = notify(&mut r, &mem, &mut d);
            assert_eq!(out.refused, Some(want));
            assert_eq!(status(&mem), req::S_IOERR);
            assert!(
                out.broken.is_none(),
                "a bad request does not break the queue"
            );
        }
        // A header that is device-writable is no header, and a readable
        // buffer after a writable one is out of order.
        header(&mem, req::IN, 0);
        r.drv.add(&mem, &[(HDR, 16, true), (STATUS, 1, true)]);
        assert_eq!(
            notify(&mut r, &mem, &mut d).refused,
            Some(ReqError::BadHeader)
        );
        r.drv.add(
            &mem,
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA, 512, false),
                (STATUS, 1, true),
            ],
        );
        assert_eq!(
            notify(&mut r, &mem, &mut d).refused,
            Some(ReqError::Direction)
        );
    }

    #[test]
    fn a_split_header_and_scattered_data_work() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let mut r = rig(&mem, slice(0, 64, false));
        header(&mem, req::IN, 3);
        // Header in two pieces; data in three pieces of 512, 256, 256.
        r.drv.add(
            &mem,
            &[
                (HDR, 10, false),
                (HDR + 10, 6, false),
                (DATA, 512, true),
                (DATA + 0x1000, 256, true),
                (DATA + 0x2000, 256, true),
                (STATUS, 1, true),
            ],
        );
        notify(&mut r, &mem, &mut d);
        assert_eq!(status(&mem), req::S_OK);
        let mut b = [0u8; 256];
        mem.read(DATA + 0x2000, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 4), "second half of sector 4");
        // The status byte may share the last data buffer.
        header(&mem, req::IN, 5);
        r.drv.add(
            &mem,
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (STATUS - 512, 513, true),
            ],
        );
        notify(&mut r, &mem, &mut d);
        assert_eq!(status(&mem), req::S_OK);
    }

    #[test]
    fn read_only_slices_refuse_writes_and_offer_ro() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let before = d.data.clone();
        let mut r = rig(&mem, slice(0, 64, true));
        assert_ne!(r.blk.transport.negotiated() & f::RO, 0);
        header(&mem, req::OUT, 0);
        r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!(
            notify(&mut r, &mem, &mut d).refused,
            Some(ReqError::ReadOnly)
        );
        assert_eq!(d.data, before);
    }

    #[test]
    fn flush_get_id_and_unknown_requests() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let mut r = rig(&mem, slice(0, 64, false));
        header(&mem, req::FLUSH, 0);
        r.drv.add(&mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        notify(&mut r, &mem, &mut d);
        assert_eq!((status(&mem), d.flushes), (req::S_OK, 1));
        header(&mem, req::GET_ID, 0);
        let h = r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        notify(&mut r, &mem, &mut d);
        assert_eq!(status(&mem), req::S_OK);
        assert_eq!(r.drv.take_used(&mem), Some((0, 1)));
        assert_eq!(r.drv.take_used(&mem), Some((h, 21)));
        let mut id = [0u8; 20];
        mem.read(DATA, &mut id).unwrap();
        assert_eq!(&id[..7], b"vm0-d0\0");
        header(&mem, 14, 0); // SECURE_ERASE: not offered
        r.drv.add(&mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        notify(&mut r, &mem, &mut d);
        assert_eq!(status(&mem), req::S_UNSUPP);
    }

    /// A discard or write-zeroes request of one range, the range at DATA
    /// (split over two buffers when `split`); its status.
    fn ranged(
        r: &mut Rig,
        mem: &SliceMem,
        d: &mut MemDisk<SliceMem>,
        kind: u32,
        range: (u64, u32, u32),
        split: bool,
    ) -> (u8, Option<ReqError>) {
        let mut b = [0u8; RANGE_BYTES];
        b[..8].copy_from_slice(&range.0.to_le_bytes());
        b[8..12].copy_from_slice(&range.1.to_le_bytes());
        b[12..].copy_from_slice(&range.2.to_le_bytes());
        mem.write(DATA, &b[..8]).unwrap();
        mem.write(DATA + 0x800, &b[8..]).unwrap();
        mem.write(DATA + 8, &b[8..]).unwrap();
        header(mem, kind, 0);
        mem.write(STATUS, &[0xff]).unwrap();
        if split {
            r.drv.add(
                mem,
                &[
                    (HDR, 16, false),
                    (DATA, 8, false),
                    (DATA + 0x800, 8, false),
                    (STATUS, 1, true),
                ],
            );
        } else {
            r.drv.add(
                mem,
                &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
            );
        }
        let out = notify(r, mem, d);
        (status(mem), out.refused)
    }

    #[test]
    fn discard_and_write_zeroes_stay_inside_the_slice() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        // Sectors 8..24 of the disk; up to 64 discarded, 32 zeroed at once.
        let mut r = rig(&mem, slice(8, 16, false));
        let features = r.blk.transport.negotiated();
        assert_ne!(features & f::DISCARD, 0);
        assert_ne!(features & f::WRITE_ZEROES, 0);
        let c = |off| r.blk.mmio_read(mmio::CONFIG + off, 4).unwrap();
        assert_eq!((c(36), c(40), c(48), c(52)), (64, 1, 32, 1));

        // Zeroes over slice sectors 2..5 (disk 10..13), the range split.
        let got = ranged(
            &mut r,
            &mem,
            &mut d,
            req::WRITE_ZEROES,
            (2, 3, req::F_UNMAP),
            true,
        );
        assert_eq!(got, (req::S_OK, None));
        assert!(d.data[10 * 512..13 * 512].iter().all(|&b| b == 0));
        assert!(d.data[9 * 512..10 * 512].iter().all(|&b| b == 9));
        assert!(d.data[13 * 512..14 * 512].iter().all(|&b| b == 13));
        // Discard slice sector 0 (disk 8).
        let got = ranged(&mut r, &mem, &mut d, req::DISCARD, (0, 1, 0), false);
        assert_eq!(got, (req::S_OK, None));
        assert!(d.data[8 * 512..9 * 512].iter().all(|&b| b == 0xdd));
        assert_eq!((r.blk.stats.zeroes, r.blk.stats.zero_bytes), (1, 1536));
        assert_eq!((r.blk.stats.discards, r.blk.stats.discard_bytes), (1, 512));

        let before = d.data.clone();
        // Past the slice's end, by a little and by a wrap.
        let got = ranged(&mut r, &mem, &mut d, req::WRITE_ZEROES, (14, 4, 0), false);
        assert_eq!(
            got,
            (
                req::S_IOERR,
                Some(ReqError::Range {
                    sector: 14,
                    sectors: 4
                })
            )
        );
        let got = ranged(&mut r, &mem, &mut d, req::DISCARD, (u64::MAX, 2, 0), false);
        assert_eq!(got.0, req::S_IOERR);
        // Over the announced limit; discard with the unmap flag; unknown flags.
        let got = ranged(&mut r, &mem, &mut d, req::WRITE_ZEROES, (0, 33, 0), false);
        assert_eq!(got, (req::S_IOERR, Some(ReqError::Limit { sectors: 33 })));
        let got = ranged(
            &mut r,
            &mem,
            &mut d,
            req::DISCARD,
            (0, 1, req::F_UNMAP),
            false,
        );
        assert_eq!(got.1, Some(ReqError::Limit { sectors: 1 }));
        let got = ranged(&mut r, &mem, &mut d, req::WRITE_ZEROES, (0, 1, 2), false);
        assert_eq!(got.1, Some(ReqError::Limit { sectors: 1 }));
        // Not one whole range; a device-writable range.
        header(&mem, req::DISCARD, 0);
        r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)],
        );
        assert_eq!(notify(&mut r, &mem, &mut d).refused, Some(ReqError::Length));
        header(&mem, req::WRITE_ZEROES, 0);
        r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 16, true), (STATUS, 1, true)],
        );
        assert_eq!(
            notify(&mut r, &mem, &mut d).refused,
            Some(ReqError::Direction)
        );
        assert_eq!(d.data, before, "no refused request touched the disk");
    }

    #[test]
    fn discard_and_write_zeroes_are_offered_only_where_the_disk_has_them() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let before = d.data.clone();
        let mut plain = slice(0, 64, false);
        plain.extras = Extras::default();
        for s in [plain, slice(0, 64, true)] {
            let mut r = rig(&mem, s);
            let features = r.blk.transport.negotiated();
            assert_eq!(features & (f::DISCARD | f::WRITE_ZEROES), 0);
            assert_eq!(r.blk.mmio_read(mmio::CONFIG + 36, 4), Some(0));
            for kind in [req::DISCARD, req::WRITE_ZEROES] {
                let got = ranged(&mut r, &mem, &mut d, kind, (0, 1, 0), false);
                assert_eq!(got, (req::S_UNSUPP, Some(ReqError::Unsupported { kind })));
            }
        }
        assert_eq!(d.data, before);
    }

    #[test]
    fn a_broken_ring_needs_a_reset_and_a_reset_brings_it_back() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let mut r = rig(&mem, slice(0, 64, false));
        r.drv
            .write_desc(&mem, 0, HDR, 16, crate::queue::DESC_F_NEXT, 0);
        r.drv.publish(&mem, 0);
        let out = notify(&mut r, &mem, &mut d);
        assert_eq!(out.broken, Some(QueueError::ChainTooLong));
        assert_ne!(r.blk.transport.status & status::DEVICE_NEEDS_RESET, 0);
        assert!(r.blk.irq_level(), "the driver is told");
        // Further notifications do nothing until the driver resets.
        r.drv.add(&mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(notify(&mut r, &mem, &mut d), Outcome::default());
        r.blk
            .mmio_write(mmio::reg::STATUS, 4, 0, &mem, &mut d)
            .unwrap();
        let mut r = Rig {
            blk: r.blk,
            drv: Driver::new(BASE, 16),
        };
        mem.write(BASE, &[0; 0x1000]).unwrap();
        driver_init(&mut r.blk, r.drv.layout, &mem);
        header(&mem, req::FLUSH, 0);
        r.drv.add(&mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(notify(&mut r, &mem, &mut d).used, 1);
        // A chain whose last buffer is not writable cannot be answered.
        r.drv.add(&mem, &[(HDR, 16, false)]);
        assert_eq!(
            notify(&mut r, &mem, &mut d).broken,
            Some(QueueError::Unanswerable)
        );
    }

    #[test]
    fn a_queue_outside_ram_is_not_made_ready() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut blk = Blk::new(slice(0, 64, false));
        let layout = Driver::new(0x4020_0000, 16).layout;
        driver_init(&mut blk, layout, &mem);
        assert!(!blk.transport.queues[0].ready);
        let mut d = disk(&mem);
        assert_eq!(
            blk.mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut d),
            Ok(Outcome::default())
        );
    }

    #[test]
    fn config_space_gives_capacity_seg_max_and_block_size() {
        let blk = Blk::new(slice(0, 0x1_2345_6789, false));
        let c = |off, size| blk.mmio_read(mmio::CONFIG + off, size).unwrap();
        assert_eq!((c(0, 4), c(4, 4)), (0x2345_6789, 1));
        assert_eq!(c(12, 4), SEG_MAX);
        assert_eq!(c(20, 4), 512);
        assert_eq!(blk.mmio_read(mmio::reg::DEVICE_ID, 4), Some(2));
    }
    /// A disk that does each request when it is submitted but reports it
    /// only when the test says, with room for `room` at once, failing the
    /// requests that start at sector 7.
    struct Async<'m, 'a> {
        disk: MemDisk<'m, SliceMem<'a>>,
        room: usize,
        pending: Vec<(u16, Result<(), IoError>)>,
        next: u16,
    }

    impl<'m, 'a> Async<'m, 'a> {
        fn new(mem: &'m SliceMem<'a>, room: usize) -> Async<'m, 'a> {
            Async {
                disk: disk(mem),
                room,
                pending: Vec::new(),
                next: 100,
            }
        }

        /// Takes the pending results the disk has finished: the `n`
        /// oldest, or (`newest`) the `n` newest, newest first.
        fn done(&mut self, n: usize, newest: bool) -> Vec<(u16, Result<(), IoError>)> {
            if newest {
                let at = self.pending.len() - n;
                self.pending.drain(at..).rev().collect()
            } else {
                self.pending.drain(..n).collect()
            }
        }
    }

    impl BlockBackend for Async<'_, '_> {
        fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
            self.disk.read(sector, segs)
        }
        fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
            self.disk.write(sector, segs)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.disk.flush()
        }
        fn submit(&mut self, op: Op, sector: u64, bytes: u64, segs: &[Seg]) -> Submitted {
            if self.pending.len() >= self.room {
                return Submitted::Busy;
            }
            let r = match op {
                _ if sector == 7 => Err(IoError),
                Op::Read => self.disk.read(sector, segs),
                Op::Write => self.disk.write(sector, segs),
                Op::Flush => self.disk.flush(),
                Op::Discard => self.disk.discard(sector, bytes / SECTOR),
                Op::WriteZeroes => self.disk.write_zeroes(sector, bytes / SECTOR),
            };
            let t = self.next;
            self.next += 1;
            self.pending.push((t, r));
            Submitted::Pending(t)
        }
    }

    /// Makes `n` one-sector reads available, request `k` of sector
    /// `5 + k` with its own header, data and status in page `k` of a
    /// window; their heads.
    fn reads(r: &mut Rig, mem: &SliceMem, n: u64) -> Vec<u16> {
        (0..n)
            .map(|k| {
                let at = |off: u64| BASE + 0x4_0000 + k * 0x1000 + off;
                let mut h = [0u8; 16];
                h[8..].copy_from_slice(&(5 + k).to_le_bytes());
                mem.write(at(0), &h).unwrap();
                mem.write(at(0x100), &[0xff]).unwrap();
                r.drv.add(
                    mem,
                    &[
                        (at(0), 16, false),
                        (at(0x200), 512, true),
                        (at(0x100), 1, true),
                    ],
                )
            })
            .collect()
    }

    /// Read `k` of [`reads`] was answered as it should be: IOERR for
    /// sector 7, the sector's data otherwise.
    fn check_read(mem: &SliceMem, k: u64, len: u32) {
        let mut st = [0u8];
        mem.read(BASE + 0x4_0000 + k * 0x1000 + 0x100, &mut st)
            .unwrap();
        if 5 + k == 7 {
            assert_eq!((st[0], len), (req::S_IOERR, 1), "read {k}");
        } else {
            assert_eq!((st[0], len), (req::S_OK, 513), "read {k}");
            let mut b = [0u8; 512];
            mem.read(BASE + 0x4_0000 + k * 0x1000 + 0x200, &mut b)
                .unwrap();
            assert!(b.iter().all(|&x| x == 5 + k as u8), "sector {}", 5 + k);
        }
    }

    #[test]
    fn requests_wait_on_the_disk_and_are_answered_as_they_complete() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 64);
        let mut r = rig(&mem, slice(0, 64, false));
        let heads = reads(&mut r, &mem, 5);
        let out = r
            .blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        // All five went to the disk; none is answered, nobody interrupted.
        assert_eq!((out.used, out.interrupt), (0, false));
        assert_eq!((r.blk.in_flight(), a.pending.len()), (5, 5));
        assert!(r.drv.take_used(&mem).is_none());
        // The disk finishes the last two first: they are answered first.
        let done = a.done(2, true);
        let out = r.blk.complete(&mem, &mut a, &done);
        assert_eq!((out.used, out.interrupt), (2, true));
        for k in [4, 3] {
            let (head, len) = r.drv.take_used(&mem).unwrap();
            assert_eq!(head, heads[k as usize]);
            check_read(&mem, k, len);
        }
        // The rest, with the failed one (sector 7) among them.
        let done = a.done(3, false);
        let out = r.blk.complete(&mem, &mut a, &done);
        assert_eq!(out.used, 3);
        assert_eq!(out.refused, Some(ReqError::Io));
        for k in 0..3 {
            let (head, len) = r.drv.take_used(&mem).unwrap();
            assert_eq!(head, heads[k as usize]);
            check_read(&mem, k, len);
        }
        assert_eq!((r.blk.stats.reads, r.blk.stats.errors), (4, 1));
        assert_eq!(r.blk.in_flight(), 0);
        // A ticket given twice (or never) changes nothing.
        let out = r.blk.complete(&mem, &mut a, &done);
        assert_eq!(out.used, 0);
        assert!(r.drv.take_used(&mem).is_none());
    }

    #[test]
    fn a_busy_disk_keeps_the_request_and_takes_it_when_there_is_room() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 2);
        let mut r = rig(&mem, slice(0, 64, false));
        let heads = reads(&mut r, &mem, 4);
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        // Two on the disk; the third was taken and waits; the fourth is
        // still on the queue.
        assert_eq!(r.blk.in_flight(), 2);
        let mut answered = Vec::new();
        while r.blk.in_flight() > 0 {
            let done = a.done(1, false);
            let out = r.blk.complete(&mem, &mut a, &done);
            assert_eq!(out.used, 1);
            assert!(r.blk.in_flight() <= 2);
            while let Some((head, len)) = r.drv.take_used(&mem) {
                let k = heads.iter().position(|&h| h == head).unwrap();
                check_read(&mem, k as u64, len);
                answered.push(k);
            }
        }
        assert_eq!(answered, [0, 1, 2, 3], "every request, once");
    }

    #[test]
    fn at_most_max_inflight_are_taken_until_one_completes() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 1000);
        // Three descriptors a request.
        let drv = Driver::new(BASE, 128);
        let mut blk = Blk::new(slice(0, 64, false));
        driver_init(&mut blk, drv.layout, &mem);
        let mut r = Rig { blk, drv };
        let n = MAX_INFLIGHT as u64 + 8;
        reads(&mut r, &mem, n);
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        assert_eq!(r.blk.in_flight(), MAX_INFLIGHT);
        assert_eq!(a.pending.len(), MAX_INFLIGHT);
        // Each completion lets one more in, without another notification.
        let done = a.done(5, false);
        r.blk.complete(&mem, &mut a, &done);
        assert_eq!(r.blk.in_flight(), MAX_INFLIGHT);
        let mut used = 5;
        while !a.pending.is_empty() {
            let k = a.pending.len();
            let done = a.done(k, false);
            used += r.blk.complete(&mem, &mut a, &done).used;
        }
        assert_eq!(u64::from(used), n);
        assert_eq!(r.blk.stats.reads + r.blk.stats.errors, n);
    }

    #[test]
    fn a_queue_set_up_again_forgets_what_is_in_flight() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 64);
        let mut r = rig(&mem, slice(0, 64, false));
        reads(&mut r, &mem, 1);
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        assert_eq!(r.blk.in_flight(), 1);
        // QueueReady 0, then 1 again with the same layout.
        let w = |r: &mut Rig, a: &mut Async, off, v| r.blk.mmio_write(off, 4, v, &mem, a).unwrap();
        w(&mut r, &mut a, mmio::reg::QUEUE_READY, 0);
        let out = w(&mut r, &mut a, mmio::reg::QUEUE_READY, 1);
        assert!(out.abandoned);
        assert_eq!(r.blk.in_flight(), 0);
        let done = a.done(1, false);
        assert_eq!(r.blk.complete(&mem, &mut a, &done).used, 0);
        assert!(
            r.drv.take_used(&mem).is_none(),
            "never answered into the new queue"
        );
    }

    #[test]
    fn a_reset_forgets_what_is_in_flight_and_says_so() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 64);
        let mut r = rig(&mem, slice(0, 64, false));
        reads(&mut r, &mem, 3);
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        assert_eq!(r.blk.in_flight(), 3);
        let out = r
            .blk
            .mmio_write(mmio::reg::STATUS, 4, 0, &mem, &mut a)
            .unwrap();
        assert!(out.abandoned, "the backend must finish them first");
        assert_eq!(r.blk.in_flight(), 0);
        // Their completions, after the reset, are not answered.
        let done = a.done(3, false);
        assert_eq!(r.blk.complete(&mem, &mut a, &done), Outcome::default());
        assert!(r.drv.take_used(&mem).is_none());
        // A reset with nothing in flight abandons nothing.
        let out = r
            .blk
            .mmio_write(mmio::reg::STATUS, 4, 0, &mem, &mut a)
            .unwrap();
        assert!(!out.abandoned);
    }

    #[test]
    fn more_buffers_than_seg_max_get_ioerr() {
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut d = disk(&mem);
        let drv = Driver::new(BASE, 256);
        let mut blk = Blk::new(slice(0, 64, false));
        driver_init(&mut blk, drv.layout, &mem);
        let mut r = Rig { blk, drv };
        header(&mem, req::IN, 0);
        // A header, 254 data buffers, and a last one that holds 512 more
        // bytes before the status byte: 256 descriptors, 255 data buffers.
        let mut chain: Vec<Buf> = vec![(HDR, 16, false)];
        for k in 0..254u64 {
            chain.push((DATA + 512 * (k % 16), 512, true));
        }
        chain.push((STATUS - 512, 513, true));
        r.drv.add(&mem, &chain);
        let out = notify(&mut r, &mem, &mut d);
        assert_eq!(out.refused, Some(ReqError::Segments { count: 255 }));
        assert_eq!(status(&mem), req::S_IOERR);
    }
    #[test]
    fn a_saved_device_goes_on_in_another_one_where_it_stopped() {
        use crate::state::StateError;
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let mut a = Async::new(&mem, 64);
        let mut r = rig(&mem, slice(0, 64, false));
        let heads = reads(&mut r, &mem, 3);
        r.blk
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut a)
            .unwrap();
        // Requests on the disk: not saved until they are answered.
        assert_eq!(r.blk.save_state(), Err(StateError::Busy));
        let done = a.done(3, false);
        r.blk.complete(&mem, &mut a, &done);
        for k in 0..3 {
            let (head, len) = r.drv.take_used(&mem).unwrap();
            assert_eq!(head, heads[k as usize]);
            check_read(&mem, k, len);
        }
        let saved = r.blk.save_state().unwrap();

        // Another slice, a truncated or lengthened state, another kind:
        // refused, and the device is as it was.
        let mut other = Blk::new(slice(64, 64, false));
        assert_eq!(other.restore_state(&saved, &mem), Err(StateError::Slice));
        let mut b = Blk::new(slice(0, 64, false));
        assert_eq!(
            b.restore_state(&saved[..saved.len() - 1], &mem),
            Err(StateError::Truncated)
        );
        let mut long = saved.clone();
        long.push(0);
        assert_eq!(b.restore_state(&long, &mem), Err(StateError::TooLong));
        let mut kind = saved.clone();
        kind[1] = 2;
        assert_eq!(b.restore_state(&kind, &mem), Err(StateError::Kind));
        assert!(!b.transport.live());
        let net = crate::net::Net::new([2, 0, 0, 0, 0, 1]).save_state();
        assert_eq!(b.restore_state(&net, &mem), Err(StateError::Kind));

        // The real one: the next request is served where the old device
        // left off, in the same rings.
        b.restore_state(&saved, &mem).unwrap();
        assert!(b.transport.live());
        let mut d = disk(&mem);
        header(&mem, req::IN, 9);
        let h = r.drv.add(
            &mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        let out = b
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 0, &mem, &mut d)
            .unwrap();
        assert_eq!((out.used, out.refused), (1, None));
        assert_eq!(r.drv.take_used(&mem), Some((h, 513)));
        let mut got = [0u8; 512];
        mem.read(DATA, &mut got).unwrap();
        assert!(got.iter().all(|&x| x == 9));
    }

    #[test]
    fn device_state_with_a_bad_queue_or_features_is_refused() {
        use crate::state::StateError;
        let mut ram = vec![0u8; RAM];
        let mem = SliceMem::new(BASE, &mut ram);
        let r = rig(&mem, slice(0, 64, false));
        let saved = r.blk.save_state().unwrap();
        // A smaller VM: the queue's areas are outside its RAM.
        let mut small_ram = vec![0u8; 4096];
        let small = SliceMem::new(BASE + 0x10_0000, &mut small_ram);
        let mut b = Blk::new(slice(0, 64, false));
        assert_eq!(b.restore_state(&saved, &small), Err(StateError::Queue(0)));
        // A read-only slice offers other features.
        let mut ro = Blk::new(slice(0, 64, true));
        assert_eq!(ro.restore_state(&saved, &mem), Err(StateError::Slice));
        // Every single flipped bit is refused or lands in a state that
        // still checks out; none panics.
        for bit in 0..saved.len() * 8 {
            let mut s = saved.clone();
            s[bit / 8] ^= 1 << (bit % 8);
            let mut c = Blk::new(slice(0, 64, false));
            let _ = c.restore_state(&s, &mem);
        }
        // The driver's features must be the device's.
        let mut t = saved.clone();
        // version, kind, slice (17 bytes), device id (4), device features
        // (8), queue max (2): driver features at 33.
        t[33 + 7] |= 0x80;
        assert_eq!(b.restore_state(&t, &mem), Err(StateError::Features));
        b.restore_state(&saved, &mem).unwrap();
    }
}
