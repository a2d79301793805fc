//! The virtio class: the attacker's own disk slice (virtio-mmio block
//! device 0 at 0x0a00_0000, 1 MiB of the board's disk), driven by a
//! minimal driver of our own, then abused. A bad request must come back
//! `VIRTIO_BLK_S_IOERR` (1) without touching anything outside this VM's
//! RAM and slice; a broken ring must make the device need a reset
//! (`DEVICE_NEEDS_RESET`, 0x40, with a configuration interrupt), after
//! which a reset brings it back. The test checks the host's disk image
//! afterwards: only this slice's first sectors hold what we wrote.
//!
//! Our RAM runs with the MMU off (Device memory), so every access here is
//! an aligned 32- or 64-bit one.

use super::{attempt, Out, Tally, EXTERNAL};
use crate::RAM;
use guest_rt::{counter, mmio_read32, mmio_write32, read64, write64};

const DEV: usize = 0x0a00_0000;
/// Queue size we use.
const N: u32 = 16;
/// Descriptor table, available ring and used ring, in our RAM.
const DESC: usize = RAM + 0x1c_0000;
const AVAIL: usize = DESC + 0x100;
const USED: usize = DESC + 0x200;
/// Request header, status byte and data buffers.
const HDR: usize = RAM + 0x1c_1000;
const STATUS: usize = RAM + 0x1c_1100;
const DATA: usize = RAM + 0x1c_2000;
const DATA2: usize = RAM + 0x1c_3000;

// virtio-mmio registers (virtio 1.2, 4.2.2).
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS_REG: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG: usize = 0x100;

const NEEDS_RESET: u32 = 0x40;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const IN: u32 = 0;
const OUT: u32 = 1;
const S_OK: u32 = 0;
const S_IOERR: u32 = 1;
/// The victim's RAM and the hypervisor's image, outside our 2 MiB.
const VICTIM: u64 = 0x5000_0000;
const HYPERVISOR: u64 = 0x4020_0000;

fn rd(off: usize) -> u32 {
    mmio_read32(DEV + off)
}

fn wr(off: usize, v: u32) {
    mmio_write32(DEV + off, v)
}

fn wr64(off: usize, v: u64) {
    wr(off, v as u32);
    wr(off + 4, (v >> 32) as u32);
}

/// Our side of the queue.
struct Driver {
    avail: u16,
    used: u16,
}

impl Driver {
    /// Resets the device and brings it up with queue 0 at `desc`:
    /// VERSION_1 only, no event index. Whether QueueReady stuck.
    fn init(desc: u64) -> (Driver, bool) {
        wr(STATUS_REG, 0);
        for a in (DESC..DESC + 0x400).step_by(8) {
            write64(a, 0);
        }
        wr(STATUS_REG, 1 | 2);
        wr(DRIVER_FEATURES_SEL, 1);
        wr(DRIVER_FEATURES, 1); // VERSION_1 (bit 32)
        wr(DRIVER_FEATURES_SEL, 0);
        wr(DRIVER_FEATURES, 0);
        wr(STATUS_REG, 8);
        wr(QUEUE_SEL, 0);
        wr(QUEUE_NUM, N);
        wr64(QUEUE_DESC, desc);
        wr64(QUEUE_DRIVER, AVAIL as u64);
        wr64(QUEUE_DEVICE, USED as u64);
        wr(QUEUE_READY, 1);
        let ready = rd(QUEUE_READY) == 1;
        wr(STATUS_REG, 4);
        (Driver { avail: 0, used: 0 }, ready)
    }

    fn desc(i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * i as usize;
        write64(at, addr);
        write64(
            at + 8,
            u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48,
        );
    }

    /// Makes chain `head` available, moving avail.idx by `step` (1 for
    /// an honest driver), and notifies.
    fn publish(&mut self, head: u16, step: u16) {
        let slot = AVAIL + 4 + 2 * (self.avail as usize % N as usize);
        let word = slot & !3;
        let shift = (slot & 3) * 8;
        let old = mmio_read32(word) & !(0xffff << shift);
        mmio_write32(word, old | u32::from(head) << shift);
        self.avail = self.avail.wrapping_add(step);
        mmio_write32(AVAIL, u32::from(self.avail) << 16);
        wr(QUEUE_NOTIFY, 0);
    }

    /// The request header (type, sector) and a status byte of 0xff.
    fn header(kind: u32, sector: u64) {
        write64(HDR, u64::from(kind));
        write64(HDR + 8, sector);
        write64(STATUS, 0xff);
    }

    /// A three-descriptor request: header, `data` (addr, len), status.
    /// Returns the status byte, or None if the device used nothing.
    fn request(&mut self, kind: u32, sector: u64, data: u64, len: u32) -> Option<u32> {
        Self::header(kind, sector);
        let dflag = if kind == IN { F_WRITE } else { 0 };
        Self::desc(0, HDR as u64, 16, F_NEXT, 1);
        Self::desc(1, data, len, dflag | F_NEXT, 2);
        Self::desc(2, STATUS as u64, 1, F_WRITE, 0);
        self.publish(0, 1);
        self.took().then(|| read64(STATUS) as u32 & 0xff)
    }

    /// The device used one more chain within 50 ms of counter time. A
    /// request the device refuses is answered in the notification's trap;
    /// one that goes to the physical disk completes later.
    fn took(&mut self) -> bool {
        let until = counter() + 50_000_000;
        let idx = loop {
            let idx = (mmio_read32(USED) >> 16) as u16;
            if idx != self.used || counter() > until {
                break idx;
            }
        };
        wr(INTERRUPT_ACK, rd(INTERRUPT_STATUS));
        if idx == self.used {
            return false;
        }
        self.used = idx;
        true
    }
}

fn fill(at: usize, len: usize, v: u64) {
    for a in (at..at + len).step_by(8) {
        write64(a, v);
    }
}

fn all(at: usize, len: usize, v: u64) -> bool {
    (at..at + len).step_by(8).all(|a| read64(a) == v)
}

pub fn virtio(t: &mut Tally) {
    const C: &str = "virtio";
    let id = (rd(MAGIC), rd(VERSION), rd(DEVICE_ID));
    note!(
        t,
        C,
        id == (0x7472_6976, 2, 2),
        "our disk is a virtio-mmio version 2 block device: magic {:#x}, version {}, device {}",
        id.0,
        id.1,
        id.2
    );
    let (mut d, ready) = Driver::init(DESC as u64);
    let sectors = u64::from(rd(CONFIG)) | u64::from(rd(CONFIG + 4)) << 32;
    wr(DEVICE_FEATURES_SEL, 0);
    note!(
        t,
        C,
        ready && sectors == 2048,
        "queue 0 live, capacity {sectors} sectors (1 MiB)"
    );

    // Sanity: our own slice works, both ways.
    fill(DATA, 4096, 0xa5a5_a5a5_a5a5_a5a5);
    let w = d.request(OUT, 0, DATA as u64, 4096);
    fill(DATA2, 4096, 0);
    let r = d.request(IN, 0, DATA2 as u64, 4096);
    note!(
        t,
        C,
        w == Some(S_OK) && r == Some(S_OK) && all(DATA2, 4096, 0xa5a5_a5a5_a5a5_a5a5),
        "8 sectors written and read back at sector 0 of our slice (status {w:?}, {r:?})"
    );

    // Requests the device must refuse with IOERR.
    let bad: [(&str, u32, u64, u64, u32); 8] = [
        (
            "read of the sector just past our slice",
            IN,
            sectors,
            DATA as u64,
            512,
        ),
        (
            "read straddling the end of our slice",
            IN,
            sectors - 1,
            DATA as u64,
            1024,
        ),
        (
            "write past our slice (into the next VM's sectors)",
            OUT,
            sectors,
            DATA as u64,
            512,
        ),
        (
            "read at sector 2^64-1 (sector + count overflows)",
            IN,
            u64::MAX,
            DATA as u64,
            512,
        ),
        ("read into the victim's RAM", IN, 0, VICTIM, 4096),
        (
            "write from the hypervisor's image to disk",
            OUT,
            0,
            HYPERVISOR,
            4096,
        ),
        (
            "read of 4 GiB - 512 from our RAM (past its end)",
            IN,
            0,
            DATA as u64,
            u32::MAX - 511,
        ),
        (
            "read into a buffer that wraps the address space",
            IN,
            0,
            u64::MAX - 511,
            4096,
        ),
    ];
    for (what, kind, sector, addr, len) in bad {
        let s = d.request(kind, sector, addr, len);
        note!(
            t,
            C,
            s == Some(S_IOERR),
            "{what}: status {s:?} (IOERR is 1)"
        );
    }
    let half = d.request(OUT, 0, DATA as u64, 100);
    note!(
        t,
        C,
        half == Some(S_IOERR),
        "write of 100 bytes (not whole sectors): status {half:?}"
    );
    let still = d.request(IN, 0, DATA2 as u64, 4096);
    note!(
        t,
        C,
        still == Some(S_OK) && all(DATA2, 4096, 0xa5a5_a5a5_a5a5_a5a5),
        "after the refused requests our data is unchanged (status {still:?})"
    );

    // Broken rings: the device gives up until reset, and says so.
    let rings: [(&str, fn(&mut Driver)); 5] = [
        ("a descriptor chain that loops (0 -> 1 -> 0)", |d| {
            Driver::header(IN, 0);
            Driver::desc(0, HDR as u64, 16, F_NEXT, 1);
            Driver::desc(1, DATA as u64, 512, F_WRITE | F_NEXT, 0);
            d.publish(0, 1);
        }),
        ("a next index past the table (200)", |d| {
            Driver::header(IN, 0);
            Driver::desc(0, HDR as u64, 16, F_NEXT, 200);
            d.publish(0, 1);
        }),
        (
            "avail.idx moved on by 100 entries in a 16-entry queue",
            |d| {
                Driver::header(IN, 0);
                Driver::desc(0, HDR as u64, 16, 0, 0);
                d.publish(0, 100);
            },
        ),
        ("an indirect descriptor, never offered", |d| {
            Driver::desc(0, DATA as u64, 64, F_INDIRECT, 0);
            d.publish(0, 1);
        }),
        ("a request without a writable status byte", |d| {
            Driver::header(IN, 0);
            Driver::desc(0, HDR as u64, 16, 0, 0);
            d.publish(0, 1);
        }),
    ];
    for (what, abuse) in rings {
        abuse(&mut d);
        let status = rd(STATUS_REG);
        let isr = rd(INTERRUPT_STATUS);
        wr(INTERRUPT_ACK, isr);
        let (mut again, _) = Driver::init(DESC as u64);
        let after = again.request(IN, 0, DATA2 as u64, 512);
        note!(
            t,
            C,
            status & NEEDS_RESET != 0 && isr & 2 != 0 && after == Some(S_OK),
            "{what}: device status {status:#x} (DEVICE_NEEDS_RESET 0x40), interrupt status {isr:#x} (config change 2); after a reset a read works (status {after:?})"
        );
        d = again;
    }

    let (_, ready) = Driver::init(VICTIM);
    note!(
        t,
        C,
        !ready,
        "a queue whose descriptor table is in the victim's RAM is not made ready (QueueReady reads {})",
        u32::from(ready)
    );
    let narrow = attempt(|| {
        let v: u32;
        // SAFETY: a 16-bit read of our device's register page; a fault is
        // caught by `attempt`.
        unsafe {
            core::arch::asm!("ldrh {0:w}, [{1}]", out(reg) v, in(reg) DEV + MAGIC, options(nostack))
        };
        u64::from(v)
    });
    note!(
        t,
        C,
        narrow == Out::Abort(EXTERNAL),
        "16-bit read of a 32-bit virtio register: {narrow}"
    );
    let other = attempt(|| u64::from(mmio_read32(DEV + 0x200)));
    note!(
        t,
        C,
        other == Out::Abort(EXTERNAL),
        "virtio-mmio slot 1, which is not ours: {other}"
    );
    // Leave the device reset: nothing of ours stays in flight.
    wr(STATUS_REG, 0);
}
