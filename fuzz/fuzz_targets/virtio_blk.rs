//! The virtio-blk device (`bulkhead_virtio::blk::Blk`) over a slice of a
//! 64-sector in-memory disk, driven by a guest that writes any register
//! and builds any descriptor chain, and by a disk that answers at once or
//! later.
//!
//! The input is read front to back (`arbitrary`): the slice (first sector
//! 0..=64, length up to the end of the disk, read-only or not), the disk's
//! room (`room % 40`: 0 for a synchronous disk, the trait's own `submit`;
//! otherwise a disk that takes up to that many requests at once, more than
//! `blk::MAX_INFLIGHT` too, answers `Pending` and says `Busy` when full),
//! where the driver puts its queue in the 64 KiB of guest RAM at IPA
//! 0x4000_0000 (a `queue::driver::Driver` layout of size 1..256 at any
//! 16-byte aligned offset, or three arbitrary addresses and any size),
//! brought up with `blk::driver_init` as Linux would; then up to 256
//! operations: MMIO reads and writes (any offset near the register page
//! or anywhere, any size, any value), requests (a header of any type and
//! sector, whole or split in two, data buffers anywhere in or out of RAM
//! of any length and direction, a status byte), chains of raw descriptors
//! (any address, length, flags, `next`), notifications, guest writes to
//! RAM, driver resets followed by a fresh `driver_init`, and completions:
//! the disk's results for up to `n` pending requests, oldest or newest
//! first, some turned into failures, given to `Blk::complete` with a
//! ticket never issued and tickets already answered or forgotten mixed
//! in. At the end the disk finishes what is still pending.
//!
//! The asynchronous disk does each request when it is submitted (so it
//! goes through the same checks) and keeps only its result until the input
//! completes it. Requests the device says it abandoned (`Outcome.abandoned`,
//! after a reset or a broken queue) are dropped, as the hypervisor waits for
//! the disk and discards their results.
//!
//! Checks that nothing panics; that the disk backend (the real `MemDisk`,
//! wrapped) is only ever called with whole sectors inside
//! `[slice.start, slice.start + slice.sectors)`, never with an empty
//! request, and with segments whose `host` is `mem.translate(ipa, len)`;
//! that a read-only slice is never written; that the disk's bytes outside
//! the slice (all of them for a read-only slice) never change; that the
//! device's read, write and flush counters match the successful results it
//! was given (synchronous ones when returned, pending ones when completed),
//! so a request is answered at most once; that every result given for a
//! request in flight is answered (`Outcome.used`) and every failed one
//! counted as an error; that `in_flight()` is at most `blk::MAX_INFLIGHT`
//! and equal to the number of requests pending on the disk (none lost,
//! none kept that no result will come for); and that `abandoned` comes
//! only with requests in flight and leaves none.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_virtio::blk::{
    self, req, Blk, BlkStats, BlockBackend, IoError, MemDisk, Outcome, Seg, Slice, Submitted,
    SECTOR,
};
use bulkhead_virtio::mmio::{self, reg};
use bulkhead_virtio::queue::driver::Driver;
use bulkhead_virtio::queue::{Layout, DESC_F_NEXT, DESC_F_WRITE};
use bulkhead_virtio::{GuestMemory, SliceMem};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;
const DISK_SECTORS: u64 = 64;
/// `room` is taken modulo this: up to 39 requests on the disk, more than
/// the device may have in flight.
const ROOM_MOD: u8 = 40;
/// Results already given or forgotten that stay known, to be given again
/// (and ignored) and not reused as tickets.
const SPENT: usize = 64;
/// Tickets the disk issues are below this; a bogus one is at or above it.
const BOGUS: u16 = 0x8000;

#[derive(Arbitrary, Debug)]
enum Queue {
    /// `Driver::new(BASE + (at & !15), 1 << (log % 9))`.
    Driver { at: u16, log: u8 },
    Raw {
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
}

#[derive(Arbitrary, Debug)]
struct Setup {
    start: u8,
    sectors: u8,
    read_only: bool,
    /// `room % ROOM_MOD`: 0 for a synchronous disk, else how many requests
    /// it holds at once.
    room: u8,
    queue: Queue,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Off {
    /// A register or the configuration space.
    Page(u16),
    Any(u64),
}

impl Off {
    fn get(&self) -> u64 {
        match *self {
            Off::Page(o) => u64::from(o) % (mmio::SIZE + 0x10),
            Off::Any(o) => o,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Addr {
    Ram(u16),
    /// Within 512 bytes either side of the end of RAM.
    Edge(u16),
    Any(u64),
}

impl Addr {
    fn get(&self) -> u64 {
        match *self {
            Addr::Ram(o) => BASE + u64::from(o),
            Addr::Edge(o) => BASE + RAM as u64 - 0x200 + u64::from(o % 0x400),
            Addr::Any(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// 0..=8 whole sectors.
    Sectors(u8),
    Small(u16),
    Any(u32),
}

impl Len {
    fn get(&self) -> u32 {
        match *self {
            Len::Sectors(n) => u32::from(n % 9) * SECTOR as u32,
            Len::Small(n) => u32::from(n),
            Len::Any(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    /// IN, OUT, FLUSH, GET_ID or DISCARD (not offered).
    Known(u8),
    Any(u32),
}

impl Kind {
    fn get(&self) -> u32 {
        match *self {
            Kind::Known(k) => [req::IN, req::OUT, req::FLUSH, req::GET_ID, 11][usize::from(k % 5)],
            Kind::Any(k) => k,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Sector {
    /// From the start of the slice.
    Start(u8),
    /// Back from the end of the slice (and so just past it, too).
    End(i8),
    Any(u64),
}

impl Sector {
    fn get(&self, sectors: u64) -> u64 {
        match *self {
            Sector::Start(s) => u64::from(s % 80),
            Sector::End(d) => sectors.wrapping_add_signed(i64::from(d)),
            Sector::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Buf {
    addr: Addr,
    len: Len,
    write: bool,
}

#[derive(Arbitrary, Debug)]
struct RawDesc {
    addr: Addr,
    len: Len,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: Off,
        size: u8,
    },
    Write {
        off: Off,
        size: u8,
        value: u32,
    },
    /// Header, data buffers, status byte, chained in order in the next
    /// table slots and made available.
    Request {
        kind: Kind,
        sector: Sector,
        /// Where the header is, and where (0 for nowhere) it is split
        /// across two descriptors.
        header: Addr,
        split: u8,
        data: Vec<Buf>,
        status: Addr,
        notify: bool,
    },
    /// Descriptors as they are in the next table slots, the first made
    /// available.
    Raw {
        descs: Vec<RawDesc>,
        notify: bool,
    },
    Notify,
    /// The guest writes `bytes` at RAM offset `at`.
    Poke {
        at: u16,
        bytes: Vec<u8>,
    },
    /// The driver resets the device and brings it up again.
    Reinit,
    /// The disk finishes up to `n` pending requests, the oldest (or the
    /// newest) first; result `i < 8` of them is a failure if bit `i` of
    /// `failed` is set. With `stale`, the results already given or forgotten
    /// come again after them, and `bogus` adds a ticket never issued: the
    /// device must ignore both.
    Complete {
        n: u8,
        newest: bool,
        failed: u8,
        stale: bool,
        bogus: Option<u16>,
    },
}

/// A request on the asynchronous disk: done already, its result kept
/// until the input says the disk finished it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ticket: u16,
    op: blk::Op,
    result: Result<(), IoError>,
}

/// `MemDisk`, holding every call to what the device promises its backend,
/// synchronous or (`room > 0`) asynchronous.
struct Checked<'m, 'a> {
    disk: MemDisk<'m, SliceMem<'a>>,
    slice: Slice,
    /// 0: `submit` is the trait's own; else requests held at once.
    room: usize,
    /// Successful results the device was given, by kind: returned from a
    /// synchronous `submit`, or completed while the device had them in
    /// flight. Its counters must be the same.
    reads: u64,
    writes: u64,
    flushes: u64,
    /// On the disk, oldest first, the device having each in flight.
    pending: Vec<Pending>,
    /// Results given or forgotten lately, newest last (at most `SPENT`).
    spent: Vec<(u16, Result<(), IoError>)>,
    next: u16,
}

impl Checked<'_, '_> {
    fn check(&self, sector: u64, segs: &[Seg], what: &str) {
        let mem = self.disk.mem;
        let mut total = 0u64;
        for s in segs {
            assert_eq!(
                mem.translate(s.ipa, u64::from(s.len)),
                Some(s.host),
                "{what}: segment {s:?} is not where guest RAM is"
            );
            total += u64::from(s.len);
        }
        assert!(
            total > 0 && total.is_multiple_of(SECTOR),
            "{what}: {total} bytes is not whole sectors"
        );
        let end = sector + total / SECTOR;
        let (first, last) = (self.slice.start, self.slice.start + self.slice.sectors);
        assert!(
            sector >= first && end <= last,
            "{what}: sectors {sector}..{end} outside the slice {first}..{last}"
        );
    }

    /// A discard or write-zeroes of `sectors` from `sector`: inside the
    /// slice, under the limit announced, never on a read-only slice.
    fn check_range(&self, sector: u64, sectors: u64, max: u32, what: &str) {
        assert!(!self.slice.read_only, "{what} on a read-only slice");
        assert!(
            sectors > 0 && sectors <= u64::from(max),
            "{what}: {sectors} sectors, the limit is {max}"
        );
        let (first, last) = (self.slice.start, self.slice.start + self.slice.sectors);
        assert!(
            sector >= first && sector + sectors <= last,
            "{what}: sectors {sector}+{sectors} outside the slice {first}..{last}"
        );
    }

    /// The device was given `result` for a request of kind `op`.
    fn given(&mut self, op: blk::Op, result: Result<(), IoError>) {
        if result.is_ok() {
            match op {
                blk::Op::Read => self.reads += 1,
                blk::Op::Write => self.writes += 1,
                blk::Op::Flush => self.flushes += 1,
                // Counted apart by the device; the checks are the point.
                blk::Op::Discard | blk::Op::WriteZeroes => {}
            }
        }
    }

    /// A ticket no pending request holds and no spent result names, so a
    /// stale result can never answer a new request. Issued tickets are below
    /// `BOGUS`, and fewer than that many are ever held or spent.
    fn fresh(&mut self) -> u16 {
        loop {
            let t = self.next % BOGUS;
            self.next = self.next.wrapping_add(1);
            let used = self.pending.iter().any(|p| p.ticket == t)
                || self.spent.iter().any(|&(s, _)| s == t);
            if !used {
                return t;
            }
        }
    }

    /// The successful results given so far, as [`counts`] orders them.
    fn counts(&self) -> [u64; 3] {
        [self.reads, self.writes, self.flushes]
    }

    fn spend(&mut self, ticket: u16, result: Result<(), IoError>) {
        if self.spent.len() == SPENT {
            let _ = self.spent.remove(0);
        }
        self.spent.push((ticket, result));
    }

    /// The device forgot what it had in flight: the hypervisor waits for
    /// the disk and drops those results.
    fn forget(&mut self) {
        for p in core::mem::take(&mut self.pending) {
            self.spend(p.ticket, p.result);
        }
    }
}

impl BlockBackend for Checked<'_, '_> {
    fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        self.check(sector, segs, "read");
        self.disk.read(sector, segs)
    }

    fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        assert!(!self.slice.read_only, "a write to a read-only slice");
        self.check(sector, segs, "write");
        self.disk.write(sector, segs)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.disk.flush()
    }

    fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        let max = self.slice.extras.max_discard_sectors;
        self.check_range(sector, sectors, max, "discard");
        self.disk.discard(sector, sectors)
    }

    fn write_zeroes(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        let max = self.slice.extras.max_write_zeroes_sectors;
        self.check_range(sector, sectors, max, "write-zeroes");
        self.disk.write_zeroes(sector, sectors)
    }

    fn submit(&mut self, op: blk::Op, sector: u64, bytes: u64, segs: &[Seg]) -> Submitted {
        if self.room == 0 {
            let done = AtOnce(self).submit(op, sector, bytes, segs);
            if let Submitted::Done(r) = done {
                self.given(op, r);
            }
            return done;
        }
        if self.pending.len() >= self.room {
            return Submitted::Busy;
        }
        // Done now, through the checks; only the answer waits.
        let result = match op {
            blk::Op::Read => self.read(sector, segs),
            blk::Op::Write => self.write(sector, segs),
            blk::Op::Flush => self.flush(),
            blk::Op::Discard => self.discard(sector, bytes / SECTOR),
            blk::Op::WriteZeroes => self.write_zeroes(sector, bytes / SECTOR),
        };
        let ticket = self.fresh();
        self.pending.push(Pending { ticket, op, result });
        Submitted::Pending(ticket)
    }
}

/// The synchronous disk: `Checked` with the trait's default `submit`, so
/// `room == 0` runs exactly what a backend that does not override it does.
struct AtOnce<'c, 'm, 'a>(&'c mut Checked<'m, 'a>);

impl BlockBackend for AtOnce<'_, '_, '_> {
    fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        self.0.read(sector, segs)
    }

    fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        self.0.write(sector, segs)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.0.flush()
    }

    fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        self.0.discard(sector, sectors)
    }

    fn write_zeroes(&mut self, sector: u64, sectors: u64) -> Result<(), IoError> {
        self.0.write_zeroes(sector, sectors)
    }
}

/// After any call into the device: what it abandoned is dropped here too,
/// and it holds in flight exactly what is pending on the disk.
fn settle(dev: &Blk, disk: &mut Checked, out: &Outcome) {
    if out.abandoned {
        assert!(
            !disk.pending.is_empty(),
            "requests abandoned with nothing on the disk"
        );
        assert_eq!(dev.in_flight(), 0, "abandoned requests still in flight");
        disk.forget();
    }
    assert!(
        dev.in_flight() <= blk::MAX_INFLIGHT,
        "{} requests in flight",
        dev.in_flight()
    );
    assert_eq!(
        dev.in_flight(),
        disk.pending.len(),
        "requests in flight vs pending on the disk"
    );
}

/// How to finish requests on the disk (`Op::Complete`).
struct Finish {
    n: usize,
    newest: bool,
    failed: u8,
    stale: bool,
    bogus: Option<u16>,
}

/// The disk finishes what `how` says and the results go to
/// `Blk::complete`. Each one for a request in flight must be answered
/// once and counted; the rest (stale, bogus, given twice) change nothing.
fn finish(dev: &mut Blk, mem: &SliceMem, disk: &mut Checked, how: &Finish) {
    let n = how.n.min(disk.pending.len());
    let taken: Vec<Pending> = if how.newest {
        let at = disk.pending.len() - n;
        disk.pending.drain(at..).rev().collect()
    } else {
        disk.pending.drain(..n).collect()
    };
    let mut done: Vec<(u16, Result<(), IoError>)> = taken
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let fail = i < 8 && how.failed >> i & 1 != 0;
            (p.ticket, if fail { Err(IoError) } else { p.result })
        })
        .collect();
    // What the device must count for them: reads, writes, flushes, errors.
    let mut expect = [0u64; 4];
    for (p, &(_, r)) in taken.iter().zip(&done) {
        let k = match (r, p.op) {
            (Ok(()), blk::Op::Read) => 0,
            (Ok(()), blk::Op::Write) => 1,
            (Ok(()), blk::Op::Flush) => 2,
            // Counted apart (`discards`, `zeroes`).
            (Ok(()), blk::Op::Discard | blk::Op::WriteZeroes) => continue,
            (Err(IoError), _) => 3,
        };
        expect[k] += 1;
    }
    let given = done.len();
    for &(t, r) in &done[..given] {
        disk.spend(t, r);
    }
    if how.stale {
        // The same results again, and older ones the device answered or
        // forgot.
        done.extend_from_within(..given);
        done.extend(
            disk.spent[..disk.spent.len().saturating_sub(given)]
                .iter()
                .copied(),
        );
    }
    if let Some(b) = how.bogus {
        let at = usize::from(b) % (done.len() + 1);
        done.insert(at, (BOGUS | b, Ok(())));
    }
    let was = counts(&dev.stats);
    let out = dev.complete(mem, disk, &done);
    let now = counts(&dev.stats);
    // A synchronous disk counted what it returned meanwhile.
    let sync = disk.counts();
    if out.broken.is_none() {
        assert!(
            out.used as usize >= given,
            "{given} results for requests in flight, {} answered",
            out.used
        );
        assert!(
            now[3] - was[3] >= expect[3],
            "{} failed results, {} errors counted",
            expect[3],
            now[3] - was[3]
        );
        disk.reads += expect[0];
        disk.writes += expect[1];
        disk.flushes += expect[2];
    } else {
        // The device stopped at the chain it could not give back: it
        // answered some of the results, never more.
        for k in 0..3 {
            assert!(
                sync[k] <= now[k] && now[k] <= sync[k] + expect[k],
                "counter {k}: {} before, {} after, {} returned and {} completed",
                was[k],
                now[k],
                sync[k] - was[k],
                expect[k]
            );
        }
        (disk.reads, disk.writes, disk.flushes) = (now[0], now[1], now[2]);
    }
    settle(dev, disk, &out);
}

/// The device's counters of the disk's results: reads, writes and flushes
/// that succeeded, and errors (failed results and refused requests).
fn counts(s: &BlkStats) -> [u64; 4] {
    [s.reads, s.writes, s.flushes, s.errors]
}

/// The guest's side of the queue: where it writes its next descriptors
/// and available entry. Its writes go through the guest memory path, so
/// any outside RAM are dropped.
struct Guest {
    layout: Layout,
    next_desc: u16,
    avail_idx: u16,
}

impl Guest {
    fn write(mem: &SliceMem, ipa: Option<u64>, data: &[u8]) {
        if let Some(ipa) = ipa {
            let _ = mem.write(ipa, data);
        }
    }

    fn desc(&self, mem: &SliceMem, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.layout.desc.checked_add(16 * u64::from(index));
        Guest::write(mem, at, &raw);
    }

    /// A table slot for the next descriptor.
    fn take_slot(&mut self) -> u16 {
        let n = self.layout.size.max(1);
        let i = self.next_desc % n;
        self.next_desc = self.next_desc.wrapping_add(1);
        i
    }

    fn publish(&mut self, mem: &SliceMem, head: u16) {
        let n = self.layout.size.max(1);
        let slot = self
            .layout
            .avail
            .checked_add(4 + 2 * u64::from(self.avail_idx % n));
        Guest::write(mem, slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Guest::write(
            mem,
            self.layout.avail.checked_add(2),
            &self.avail_idx.to_le_bytes(),
        );
    }

    /// Chains `(addr, len, device-writable)` in the next slots and makes
    /// the chain available.
    fn chain(&mut self, mem: &SliceMem, bufs: &[(u64, u32, bool)]) {
        if bufs.is_empty() {
            return;
        }
        let mut slots: Vec<u16> = bufs.iter().map(|_| self.take_slot()).collect();
        slots.push(0);
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.desc(mem, slots[i], addr, len, flags, slots[i + 1]);
        }
        self.publish(mem, slots[0]);
    }
}

fn header(mem: &SliceMem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write(at, &h);
}

/// The disk changed only inside the slice (not at all if it is
/// read-only), and the device counted the disk's successes as they were
/// given to it.
fn same(dev: &Blk, disk: &Checked, original: &[u8], slice: core::ops::Range<usize>) {
    let now = &disk.disk.data;
    if disk.slice.read_only {
        assert!(*now == original, "a read-only slice's disk changed");
    } else {
        let (lo, hi) = (slice.start, slice.end);
        assert!(
            now[..lo] == original[..lo] && now[hi..] == original[hi..],
            "the disk changed outside the slice {}..{}",
            disk.slice.start,
            disk.slice.start + disk.slice.sectors
        );
    }
    assert_eq!(dev.stats.reads, disk.reads, "reads counted");
    assert_eq!(dev.stats.writes, disk.writes, "writes counted");
    assert_eq!(dev.stats.flushes, disk.flushes, "flushes counted");
}

fuzz_target!(|setup: Setup| {
    let start = u64::from(setup.start) % (DISK_SECTORS + 1);
    let sectors = u64::from(setup.sectors) % (DISK_SECTORS + 1 - start);
    let slice = Slice {
        start,
        sectors,
        read_only: setup.read_only,
        serial: *b"fuzz-disk-0123456789",
        // Both offered (a read-only slice still offers neither).
        extras: blk::Extras {
            max_discard_sectors: 16,
            max_write_zeroes_sectors: 8,
        },
    };
    let layout = match setup.queue {
        Queue::Driver { at, log } => Driver::new(BASE + u64::from(at & !15), 1 << (log % 9)).layout,
        Queue::Raw {
            size,
            desc,
            avail,
            used,
        } => Layout {
            size,
            desc,
            avail,
            used,
        },
    };
    let mut ram = vec![0u8; RAM];
    let mem = SliceMem::new(BASE, &mut ram);
    let data: Vec<u8> = (0..DISK_SECTORS * SECTOR)
        .map(|i| (i / SECTOR) as u8 ^ 0xa5)
        .collect();
    let original = data.clone();
    let mut disk = Checked {
        disk: MemDisk {
            mem: &mem,
            data,
            flushes: 0,
        },
        slice: slice.clone(),
        room: usize::from(setup.room % ROOM_MOD),
        reads: 0,
        writes: 0,
        flushes: 0,
        pending: Vec::new(),
        spent: Vec::new(),
        next: 0,
    };
    let mut dev = Blk::new(slice);
    blk::driver_init(&mut dev, layout, &mem);
    let mut guest = Guest {
        layout,
        next_desc: 0,
        avail_idx: 0,
    };
    let (lo, hi) = (
        (start * SECTOR) as usize,
        ((start + sectors) * SECTOR) as usize,
    );

    for op in setup.ops.iter().take(256) {
        let mut notify = false;
        match op {
            Op::Read { off, size } => {
                let _ = dev.mmio_read(off.get(), *size);
            }
            Op::Write { off, size, value } => {
                if let Ok(out) = dev.mmio_write(off.get(), *size, *value, &mem, &mut disk) {
                    settle(&dev, &mut disk, &out);
                }
            }
            Op::Request {
                kind,
                sector,
                header: at,
                split,
                data,
                status,
                notify: n,
            } => {
                let at = at.get();
                header(&mem, at, kind.get(), sector.get(sectors));
                let split = u32::from(split % 16);
                let mut bufs = Vec::new();
                if split == 0 {
                    bufs.push((at, 16, false));
                } else {
                    bufs.push((at, split, false));
                    bufs.push((at.wrapping_add(u64::from(split)), 16 - split, false));
                }
                bufs.extend(
                    data.iter()
                        .take(16)
                        .map(|b| (b.addr.get(), b.len.get(), b.write)),
                );
                bufs.push((status.get(), 1, true));
                guest.chain(&mem, &bufs);
                notify = *n;
            }
            Op::Raw { descs, notify: n } => {
                let mut head = None;
                for d in descs.iter().take(32) {
                    let slot = guest.take_slot();
                    head.get_or_insert(slot);
                    guest.desc(&mem, slot, d.addr.get(), d.len.get(), d.flags, d.next);
                }
                if let Some(head) = head {
                    guest.publish(&mem, head);
                }
                notify = *n;
            }
            Op::Notify => notify = true,
            Op::Poke { at, bytes } => {
                let off = usize::from(*at);
                let len = bytes.len().min(RAM - off);
                let _ = mem.write(BASE + off as u64, &bytes[..len]);
            }
            Op::Reinit => {
                if let Ok(out) = dev.mmio_write(reg::STATUS, 4, 0, &mem, &mut disk) {
                    settle(&dev, &mut disk, &out);
                }
                assert_eq!(dev.in_flight(), 0, "requests in flight after a reset");
                guest.next_desc = 0;
                guest.avail_idx = 0;
                // A fresh ring, as a driver allocates one.
                for ipa in [layout.avail, layout.used] {
                    Guest::write(&mem, Some(ipa), &[0; 4]);
                }
                blk::driver_init(&mut dev, layout, &mem);
            }
            Op::Complete {
                n,
                newest,
                failed,
                stale,
                bogus,
            } => {
                let how = Finish {
                    n: usize::from(*n),
                    newest: *newest,
                    failed: *failed,
                    stale: *stale,
                    bogus: *bogus,
                };
                finish(&mut dev, &mem, &mut disk, &how);
            }
        }
        if notify {
            if let Ok(out) = dev.mmio_write(reg::QUEUE_NOTIFY, 4, 0, &mem, &mut disk) {
                settle(&dev, &mut disk, &out);
            }
        }
        same(&dev, &disk, &original, lo..hi);
    }
    // The disk finishes everything; each completion may let the device
    // take more chains.
    let all = Finish {
        n: usize::MAX,
        newest: false,
        failed: 0,
        stale: false,
        bogus: None,
    };
    for _ in 0..8 {
        if disk.pending.is_empty() {
            break;
        }
        finish(&mut dev, &mem, &mut disk, &all);
        same(&dev, &disk, &original, lo..hi);
    }
});
