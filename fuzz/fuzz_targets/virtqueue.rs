//! The split virtqueue walker (`bulkhead_virtio::queue::Queue`), the
//! device's side of a ring the guest owns and may rewrite at any moment.
//!
//! The input is read front to back (`arbitrary`): the queue's size (a
//! power of two up to 256, or any 16-bit value) and the IPAs of its three
//! areas (anywhere in the 64 KiB of guest RAM at 0x4000_0000, straddling
//! its end, just below 2^64, or any 64-bit value); whether the layout is
//! first put through `Layout::check` as the hypervisor does (an input whose
//! layout fails it ends there) or handed to `Queue::new` unchecked; whether
//! event idx was negotiated; then up to 512 operations: the device's `pop`,
//! `push_used` (of a popped head or any, with any length), `rearm` and
//! `needs_interrupt`, interleaved with the guest's writes to its RAM (raw
//! bytes, a descriptor, an available entry, `avail.idx`, `avail.flags`,
//! `used_event`). What is left of the input is the initial RAM image, from
//! IPA 0x4000_0000 on.
//!
//! Checks that nothing panics, checked layout or not; that `pop` answers
//! exactly what a reference walk over a copy of RAM taken just before it
//! finds (the same head, each `Desc` the 16 bytes that were in the table,
//! no chain longer than the queue, the same error); that `pop` and
//! `needs_interrupt` write nothing; that `push_used` writes nothing but its
//! used entry and `used.idx` (those two exactly when it succeeds) and
//! `rearm` nothing but `avail_event` (our `last_avail`); that
//! `needs_interrupt` answers as virtio 1.2, 2.7.10 says; that `in_flight`
//! moves as chains are taken and given back; and that with a checked layout
//! no ring access ever fails.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bulkhead_virtio::queue::{
    Desc, Layout, Queue, QueueError, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_WRITE,
};
use bulkhead_virtio::{offset_in, GuestMemory, SliceMem};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;

#[derive(Arbitrary, Debug)]
enum Size {
    Pow(u8),
    Any(u16),
}

impl Size {
    fn get(&self) -> u16 {
        match *self {
            Size::Pow(p) => 1 << (p % 9),
            Size::Any(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Addr {
    /// Anywhere in RAM, 16-byte aligned (every area's alignment).
    Aligned(u16),
    /// Anywhere in RAM, any alignment.
    Ram(u16),
    /// Within 256 bytes either side of the end of RAM.
    Edge(u16),
    /// Just below 2^64: every `base + offset` overflows.
    Top(u16),
    Any(u64),
}

impl Addr {
    fn get(&self) -> u64 {
        match *self {
            Addr::Aligned(o) => BASE + u64::from(o & !15),
            Addr::Ram(o) => BASE + u64::from(o),
            Addr::Edge(o) => BASE + RAM as u64 - 0x100 + u64::from(o % 0x200),
            Addr::Top(o) => u64::MAX - u64::from(o % 0x1000),
            Addr::Any(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Header {
    size: Size,
    desc: Addr,
    avail: Addr,
    used: Addr,
    checked: bool,
    event_idx: bool,
}

#[derive(Arbitrary, Debug)]
enum Head {
    /// One of the heads `pop` returned (the ordinary case).
    Popped(u8),
    Any(u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Pop,
    PushUsed {
        head: Head,
        len: u32,
    },
    Rearm,
    NeedsInterrupt,
    /// The guest writes `bytes` at RAM offset `at`.
    Poke {
        at: u16,
        bytes: Vec<u8>,
    },
    /// The guest writes descriptor `index % size`.
    Desc {
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// The guest makes `head` available in its next slot and moves
    /// `avail.idx` past it.
    Publish {
        head: u16,
    },
    SetAvailIdx(u16),
    AvailFlags(u16),
    UsedEvent(u16),
}

/// Guest RAM `[ipa, ipa + len)` of `ram` (an image of it), if all inside.
fn bytes(ram: &[u8], ipa: u64, len: u64) -> Option<&[u8]> {
    let off = offset_in(BASE, ram.len() as u64, ipa, len)? as usize;
    Some(&ram[off..off + len as usize])
}

fn u16_at(ram: &[u8], ipa: u64) -> Option<u16> {
    bytes(ram, ipa, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

/// `base + off`, or `None` past 2^64.
fn at(base: u64, off: u64) -> Option<u64> {
    base.checked_add(off)
}

fn mem_err(ipa: Option<u64>) -> QueueError {
    QueueError::Memory {
        ipa: ipa.unwrap_or(u64::MAX),
    }
}

/// The same answer, a memory error matching any memory error (where an
/// address overflowed there is no one right IPA to name).
fn same<T: PartialEq>(got: &Result<T, QueueError>, want: &Result<T, QueueError>) -> bool {
    match (got, want) {
        (Err(QueueError::Memory { .. }), Err(QueueError::Memory { .. })) => true,
        _ => got == want,
    }
}

fn is_mem_err<T>(r: &Result<T, QueueError>) -> bool {
    matches!(r, Err(QueueError::Memory { .. }))
}

/// `avail.idx` as the device must judge it, having taken `last`.
fn ref_avail_idx(ram: &[u8], l: &Layout, last: u16) -> Result<u16, QueueError> {
    let ipa = at(l.avail, 2);
    let idx = ipa.and_then(|a| u16_at(ram, a)).ok_or(mem_err(ipa))?;
    if idx.wrapping_sub(last) > l.size {
        return Err(QueueError::AvailIndex { last, idx });
    }
    Ok(idx)
}

/// The reference walk: what `pop` must return for RAM image `ram`.
fn ref_pop(ram: &[u8], l: &Layout, last: u16) -> Result<Option<(u16, Vec<Desc>)>, QueueError> {
    if ref_avail_idx(ram, l, last)? == last {
        return Ok(None);
    }
    let n = l.size;
    let ipa = at(l.avail, 4 + 2 * u64::from(last % n));
    let head = ipa.and_then(|a| u16_at(ram, a)).ok_or(mem_err(ipa))?;
    let mut chain = Vec::new();
    let mut index = head;
    loop {
        if index >= n {
            return Err(QueueError::DescIndex { index });
        }
        if chain.len() == usize::from(n) {
            return Err(QueueError::ChainTooLong);
        }
        let ipa = at(l.desc, 16 * u64::from(index));
        let raw = ipa.and_then(|a| bytes(ram, a, 16)).ok_or(mem_err(ipa))?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & DESC_F_INDIRECT != 0 {
            return Err(QueueError::Indirect);
        }
        chain.push(Desc {
            addr,
            len,
            write: flags & DESC_F_WRITE != 0,
        });
        if flags & DESC_F_NEXT == 0 {
            return Ok(Some((head, chain)));
        }
        index = next;
    }
}

/// Asserts `after` equals `before` except inside `allowed` (IPA ranges).
fn only_changed(before: &[u8], after: &[u8], allowed: &[(Option<u64>, u64)], what: &str) {
    let mut masked = before.to_vec();
    for &(ipa, len) in allowed {
        let Some(ipa) = ipa else { continue };
        // Clip the range to RAM: what lies outside cannot have changed.
        let start = ipa.saturating_sub(BASE).min(RAM as u64) as usize;
        let end = ipa.saturating_add(len).saturating_sub(BASE).min(RAM as u64) as usize;
        if start < end {
            masked[start..end].copy_from_slice(&after[start..end]);
        }
    }
    if masked != after {
        let first = masked.iter().zip(after).position(|(a, b)| a != b).unwrap();
        panic!(
            "{what} wrote guest RAM at IPA {:#x}, outside what it may write",
            BASE + first as u64
        );
    }
}

struct World<'a> {
    mem: SliceMem<'a>,
    q: Queue,
    l: Layout,
    checked: bool,
    /// Our model of the device's indices.
    last_avail: u16,
    signalled: u16,
    popped: Vec<u16>,
    chain: Vec<Desc>,
    /// The guest's next available slot.
    guest_avail: u16,
}

impl World<'_> {
    fn image(&self) -> Vec<u8> {
        let mut ram = vec![0u8; RAM];
        self.mem.read(BASE, &mut ram).unwrap();
        ram
    }

    fn used_idx(&self) -> u16 {
        self.last_avail.wrapping_sub(self.q.in_flight())
    }

    fn no_memory_errors<T: core::fmt::Debug>(&self, r: &Result<T, QueueError>, what: &str) {
        if self.checked {
            assert!(
                !is_mem_err(r),
                "{what} on a checked layout {:?}: {r:?}",
                self.l
            );
        }
    }

    fn pop(&mut self) {
        let before = self.image();
        let want = ref_pop(&before, &self.l, self.last_avail);
        let got = self.q.pop(&self.mem, &mut self.chain);
        self.no_memory_errors(&got, "pop");
        assert!(
            self.chain.len() <= usize::from(self.l.size),
            "a chain of {} in a queue of {}",
            self.chain.len(),
            self.l.size
        );
        match (&got, &want) {
            (Ok(Some(h)), Ok(Some((wh, wchain)))) => {
                assert_eq!(h, wh, "head");
                assert_eq!(&self.chain, wchain, "the chain is not what RAM held");
                self.last_avail = self.last_avail.wrapping_add(1);
                self.popped.push(*h);
            }
            (Ok(None), Ok(None)) => assert!(self.chain.is_empty()),
            _ => assert!(
                same(
                    &got.map(|h| h.is_some()),
                    &want.as_ref().map(|w| w.is_some()).map_err(|e| *e)
                ),
                "pop gave {got:?}, the reference walk {want:?}"
            ),
        }
        only_changed(&before, &self.image(), &[], "pop");
    }

    fn push_used(&mut self, head: &Head, len: u32) {
        let head = match *head {
            Head::Popped(i) if !self.popped.is_empty() => {
                self.popped[usize::from(i) % self.popped.len()]
            }
            Head::Popped(i) => u16::from(i),
            Head::Any(h) => h,
        };
        let before = self.image();
        let used_before = self.used_idx();
        let n = u64::from(self.l.size);
        // The entry's slot, if the queue has one (a queue of 0 has none).
        let slot = (n > 0)
            .then(|| at(self.l.used, 4 + 8 * (u64::from(used_before) % n)))
            .flatten();
        let idx_at = at(self.l.used, 2);
        let r = self.q.push_used(&self.mem, head, len);
        self.no_memory_errors(&r, "push_used");
        let after = self.image();
        only_changed(&before, &after, &[(slot, 8), (idx_at, 2)], "push_used");
        let used_after = self.used_idx();
        let moved = used_after.wrapping_sub(used_before);
        assert!(moved <= 1, "used.idx moved by {moved}");
        if r.is_ok() {
            assert_eq!(moved, 1, "a successful push_used moved nothing");
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let slot = slot.expect("a slot");
            assert_eq!(bytes(&after, slot, 8), Some(&elem[..]), "the used entry");
            assert_eq!(
                u16_at(&after, idx_at.unwrap()),
                Some(used_after),
                "used.idx"
            );
        }
    }

    fn rearm(&mut self) {
        let before = self.image();
        let event_at = at(self.l.used, 4 + 8 * u64::from(self.l.size));
        let r = self.q.rearm(&self.mem);
        self.no_memory_errors(&r, "rearm");
        let after = self.image();
        let allowed = if self.q.event_idx {
            vec![(event_at, 2)]
        } else {
            vec![]
        };
        only_changed(&before, &after, &allowed, "rearm");
        if let Ok(more) = r {
            if self.q.event_idx {
                let ev = u16_at(&after, event_at.unwrap());
                assert_eq!(ev, Some(self.last_avail), "avail_event");
            }
            // Nothing else writes between rearm's write and its read.
            let want =
                ref_avail_idx(&after, &self.l, self.last_avail).map(|i| i != self.last_avail);
            assert_eq!(Ok(more), want, "rearm");
        }
    }

    fn needs_interrupt(&mut self) {
        let before = self.image();
        let (old, new) = (self.signalled, self.used_idx());
        let l = self.l;
        let want = if old == new {
            Ok(false)
        } else if self.q.event_idx {
            let ipa = at(l.avail, 4 + 2 * u64::from(l.size));
            ipa.and_then(|a| u16_at(&before, a))
                .ok_or(mem_err(ipa))
                .map(|event| new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            u16_at(&before, l.avail)
                .ok_or(mem_err(Some(l.avail)))
                .map(|flags| flags & AVAIL_F_NO_INTERRUPT == 0)
        };
        let got = self.q.needs_interrupt(&self.mem);
        self.no_memory_errors(&got, "needs_interrupt");
        assert!(
            same(&got, &want),
            "needs_interrupt gave {got:?}, virtio says {want:?}"
        );
        if got.is_ok() {
            self.signalled = new;
        }
        only_changed(&before, &self.image(), &[], "needs_interrupt");
    }

    /// The guest's own writes: wherever they fall, refused outside RAM.
    fn guest_write(&self, ipa: Option<u64>, data: &[u8]) {
        if let Some(ipa) = ipa {
            let _ = self.mem.write(ipa, data);
        }
    }

    fn guest(&mut self, op: &Op) {
        let l = self.l;
        let n = l.size;
        match op {
            Op::Poke { at: off, bytes } => {
                let off = usize::from(*off);
                let len = bytes.len().min(RAM - off);
                self.guest_write(Some(BASE + off as u64), &bytes[..len]);
            }
            Op::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let index = if n == 0 { *index } else { index % n };
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&addr.to_le_bytes());
                raw[8..12].copy_from_slice(&len.to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..].copy_from_slice(&next.to_le_bytes());
                self.guest_write(at(l.desc, 16 * u64::from(index)), &raw);
            }
            Op::Publish { head } => {
                if n > 0 {
                    let slot = at(l.avail, 4 + 2 * u64::from(self.guest_avail % n));
                    self.guest_write(slot, &head.to_le_bytes());
                }
                self.guest_avail = self.guest_avail.wrapping_add(1);
                self.guest_write(at(l.avail, 2), &self.guest_avail.to_le_bytes());
            }
            Op::SetAvailIdx(idx) => {
                self.guest_avail = *idx;
                self.guest_write(at(l.avail, 2), &idx.to_le_bytes());
            }
            Op::AvailFlags(v) => self.guest_write(Some(l.avail), &v.to_le_bytes()),
            Op::UsedEvent(v) => {
                self.guest_write(at(l.avail, 4 + 2 * u64::from(n)), &v.to_le_bytes());
            }
            Op::Pop | Op::PushUsed { .. } | Op::Rearm | Op::NeedsInterrupt => unreachable!(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(h) = Header::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<Op> = Vec::arbitrary(&mut u).unwrap_or_default();
    let image = u.take_rest();
    let mut ram = vec![0u8; RAM];
    let n = image.len().min(RAM);
    ram[..n].copy_from_slice(&image[..n]);
    let mem = SliceMem::new(BASE, &mut ram);
    let l = Layout {
        size: h.size.get(),
        desc: h.desc.get(),
        avail: h.avail.get(),
        used: h.used.get(),
    };
    if h.checked && l.check(&mem).is_err() {
        return;
    }
    let mut w = World {
        mem,
        q: Queue::new(l, h.event_idx),
        l,
        checked: h.checked,
        last_avail: 0,
        signalled: 0,
        popped: Vec::new(),
        chain: Vec::new(),
        guest_avail: 0,
    };
    for op in ops.iter().take(512) {
        match op {
            Op::Pop => w.pop(),
            Op::PushUsed { head, len } => w.push_used(head, *len),
            Op::Rearm => w.rearm(),
            Op::NeedsInterrupt => w.needs_interrupt(),
            guest => w.guest(guest),
        }
        assert_eq!(w.q.layout, l, "the layout never changes");
    }
});
