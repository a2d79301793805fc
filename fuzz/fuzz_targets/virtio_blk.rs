//! The virtio-blk device (`bulkhead_virtio::blk::Blk`) over a slice of a
//! 64-sector in-memory disk, driven by a guest that writes any register
//! and builds any descriptor chain.
//!
//! The input is read front to back (`arbitrary`): the slice (first sector
//! 0..=64, length up to the end of the disk, read-only or not), where the
//! driver puts its queue in the 64 KiB of guest RAM at IPA 0x4000_0000 (a
//! `queue::driver::Driver` layout of size 1..256 at any 16-byte aligned
//! offset, or three arbitrary addresses and any size), brought up with
//! `blk::driver_init` as Linux would; then up to 256 operations: MMIO reads
//! and writes (any offset near the register page or anywhere, any size,
//! any value), requests (a header of any type and sector, whole or split
//! in two, data buffers anywhere in or out of RAM of any length and
//! direction, a status byte), chains of raw descriptors (any address,
//! length, flags, `next`), notifications, guest writes to RAM and driver
//! resets followed by a fresh `driver_init`.
//!
//! Checks that nothing panics; that the disk backend (the real `MemDisk`,
//! wrapped) is only ever called with whole sectors inside
//! `[slice.start, slice.start + slice.sectors)`, never with an empty
//! request, and with segments whose `host` is `mem.translate(ipa, len)`;
//! that a read-only slice is never written; that the disk's bytes outside
//! the slice (all of them for a read-only slice) never change; and that
//! the device's read and write counters match the backend's successful
//! calls.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_virtio::blk::{self, req, Blk, BlockBackend, IoError, MemDisk, Seg, Slice, SECTOR};
use bulkhead_virtio::mmio::{self, reg};
use bulkhead_virtio::queue::driver::Driver;
use bulkhead_virtio::queue::{Layout, DESC_F_NEXT, DESC_F_WRITE};
use bulkhead_virtio::{GuestMemory, SliceMem};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;
const DISK_SECTORS: u64 = 64;

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
}

/// `MemDisk`, holding every call to what the device promises its backend.
struct Checked<'m, 'a> {
    disk: MemDisk<'m, SliceMem<'a>>,
    slice: Slice,
    reads: u64,
    writes: u64,
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
}

impl BlockBackend for Checked<'_, '_> {
    fn read(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        self.check(sector, segs, "read");
        let r = self.disk.read(sector, segs);
        self.reads += u64::from(r.is_ok());
        r
    }

    fn write(&mut self, sector: u64, segs: &[Seg]) -> Result<(), IoError> {
        assert!(!self.slice.read_only, "a write to a read-only slice");
        self.check(sector, segs, "write");
        let r = self.disk.write(sector, segs);
        self.writes += u64::from(r.is_ok());
        r
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.disk.flush()
    }
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

fuzz_target!(|setup: Setup| {
    let start = u64::from(setup.start) % (DISK_SECTORS + 1);
    let sectors = u64::from(setup.sectors) % (DISK_SECTORS + 1 - start);
    let slice = Slice {
        start,
        sectors,
        read_only: setup.read_only,
        serial: *b"fuzz-disk-0123456789",
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
        reads: 0,
        writes: 0,
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
                let _ = dev.mmio_write(off.get(), *size, *value, &mem, &mut disk);
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
                let _ = dev.mmio_write(reg::STATUS, 4, 0, &mem, &mut disk);
                guest.next_desc = 0;
                guest.avail_idx = 0;
                // A fresh ring, as a driver allocates one.
                for ipa in [layout.avail, layout.used] {
                    Guest::write(&mem, Some(ipa), &[0; 4]);
                }
                blk::driver_init(&mut dev, layout, &mem);
            }
        }
        if notify {
            let _ = dev.mmio_write(reg::QUEUE_NOTIFY, 4, 0, &mem, &mut disk);
        }
        let now = &disk.disk.data;
        if setup.read_only {
            assert!(*now == original, "a read-only slice's disk changed");
        } else {
            assert!(
                now[..lo] == original[..lo] && now[hi..] == original[hi..],
                "the disk changed outside the slice {start}..{}",
                start + sectors
            );
        }
        assert_eq!(dev.stats.reads, disk.reads, "reads counted");
        assert_eq!(dev.stats.writes, disk.writes, "writes counted");
    }
});
