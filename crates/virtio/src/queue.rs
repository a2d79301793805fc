//! The split virtqueue (virtio 1.2, 2.7), seen from the device side.
//!
//! The driver owns three areas in guest memory: the descriptor table, the
//! available ring (driver to device) and the used ring (device to driver).
//! [`Queue::pop`] takes the next available chain and copies each of its
//! descriptors once into the caller's buffer; [`Queue::push_used`] returns
//! it. What the walker refuses (a queue error, [`QueueError`]) is a broken
//! ring, not a bad request: an index past the ring, a head or `next` past
//! the table, a chain longer than the queue (a loop), an indirect
//! descriptor we never offered, or ring memory outside the VM's RAM. The
//! device then stops using the queue until the driver resets it.

use crate::mem::GuestMemory;
use alloc::vec::Vec;

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// `avail.flags`: the driver does not want an interrupt (without event idx).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The largest queue a device of ours offers.
pub const MAX_SIZE: u16 = 256;

/// One descriptor, as read (once) from the guest's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (the driver reads what we put there).
    pub write: bool,
}

/// Why a queue was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Ring or table memory outside the VM's RAM.
    Memory { ipa: u64 },
    /// `avail.idx` moved on by more than the queue holds.
    AvailIndex { last: u16, idx: u16 },
    /// A chain's head or a `next` past the descriptor table.
    DescIndex { index: u16 },
    /// More descriptors in one chain than the queue has: a loop.
    ChainTooLong,
    /// An indirect descriptor, which no device of ours offers.
    Indirect,
    /// A request with no device-writable status byte: there is no way to
    /// answer it, so the device gives the queue up.
    Unanswerable,
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            QueueError::Memory { ipa } => write!(f, "ring memory at IPA {ipa:#x} is not guest RAM"),
            QueueError::AvailIndex { last, idx } => write!(
                f,
                "avail.idx jumped from {last} to {idx}, past the queue size"
            ),
            QueueError::DescIndex { index } => {
                write!(f, "descriptor index {index} is past the table")
            }
            QueueError::ChainTooLong => {
                write!(f, "descriptor chain longer than the queue (a loop)")
            }
            QueueError::Indirect => write!(f, "indirect descriptor, not negotiated"),
            QueueError::Unanswerable => write!(f, "a request with no status byte to answer in"),
        }
    }
}

/// Where the driver put the queue, and how big it is; checked by
/// [`Layout::check`] before the queue is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Layout {
    /// A power of two up to [`MAX_SIZE`], each area aligned as 2.7 asks
    /// (table 16, available ring 2, used ring 4) and wholly in guest RAM.
    pub fn check(&self, mem: &impl GuestMemory) -> Result<(), &'static str> {
        let n = u64::from(self.size);
        if self.size == 0 || !self.size.is_power_of_two() || self.size > MAX_SIZE {
            return Err("queue size is not a power of two up to the maximum");
        }
        if !self.desc.is_multiple_of(16)
            || !self.avail.is_multiple_of(2)
            || !self.used.is_multiple_of(4)
        {
            return Err("queue areas are misaligned");
        }
        let areas = [
            (self.desc, 16 * n),
            (self.avail, 6 + 2 * n),
            (self.used, 6 + 8 * n),
        ];
        if areas.iter().any(|&(a, l)| mem.translate(a, l).is_none()) {
            return Err("queue areas are not in guest RAM");
        }
        Ok(())
    }
}

/// `base + off`: an address past 2^64 is not guest RAM either. A layout
/// that passed [`Layout::check`] never gets here, but `Queue` takes any.
fn ipa(base: u64, off: u64) -> Result<u64, QueueError> {
    base.checked_add(off)
        .ok_or(QueueError::Memory { ipa: base })
}

/// The device's side of one split virtqueue.
#[derive(Clone, Debug)]
pub struct Queue {
    pub layout: Layout,
    /// `VIRTIO_F_RING_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// The next available entry we will take.
    last_avail: u16,
    /// Our copy of `used.idx`.
    used_idx: u16,
    /// `used_idx` when we last interrupted (event idx suppression).
    signalled: u16,
}

impl Queue {
    pub fn new(layout: Layout, event_idx: bool) -> Queue {
        Queue {
            layout,
            event_idx,
            last_avail: 0,
            used_idx: 0,
            signalled: 0,
        }
    }

    fn size(&self) -> u16 {
        self.layout.size
    }

    /// A queue part-way through, as [`Queue::indices`] gave them.
    pub fn with_indices(
        layout: Layout,
        event_idx: bool,
        last_avail: u16,
        used_idx: u16,
        signalled: u16,
    ) -> Queue {
        Queue {
            layout,
            event_idx,
            last_avail,
            used_idx,
            signalled,
        }
    }

    /// The next available entry to take, our `used.idx`, and `used.idx`
    /// at the last interrupt.
    pub fn indices(&self) -> (u16, u16, u16) {
        (self.last_avail, self.used_idx, self.signalled)
    }

    /// Reads `avail.idx` and checks it against what we took.
    fn avail_idx(&self, mem: &impl GuestMemory) -> Result<u16, QueueError> {
        let at = ipa(self.layout.avail, 2)?;
        let idx = mem
            .read_u16(at)
            .map_err(|_| QueueError::Memory { ipa: at })?;
        if idx.wrapping_sub(self.last_avail) > self.size() {
            return Err(QueueError::AvailIndex {
                last: self.last_avail,
                idx,
            });
        }
        Ok(idx)
    }

    /// Takes the next available chain: its head index, with its
    /// descriptors copied into `chain` (cleared first). `None` when the
    /// driver has made nothing more available.
    pub fn pop(
        &mut self,
        mem: &impl GuestMemory,
        chain: &mut Vec<Desc>,
    ) -> Result<Option<u16>, QueueError> {
        chain.clear();
        if self.avail_idx(mem)? == self.last_avail {
            return Ok(None);
        }
        // The entries and descriptors were written before the index.
        mem.fence();
        let n = self.size();
        let slot = ipa(self.layout.avail, 4 + 2 * u64::from(self.last_avail % n))?;
        let head = mem
            .read_u16(slot)
            .map_err(|_| QueueError::Memory { ipa: slot })?;
        let mut index = head;
        loop {
            if index >= n {
                return Err(QueueError::DescIndex { index });
            }
            if chain.len() >= usize::from(n) {
                return Err(QueueError::ChainTooLong);
            }
            let at = ipa(self.layout.desc, 16 * u64::from(index))?;
            let mut raw = [0u8; 16];
            mem.read(at, &mut raw)
                .map_err(|_| QueueError::Memory { ipa: at })?;
            let word = |r: core::ops::Range<usize>| {
                raw[r]
                    .iter()
                    .rev()
                    .fold(0u64, |v, &b| v << 8 | u64::from(b))
            };
            let flags = word(12..14) as u16;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            chain.push(Desc {
                addr: word(0..8),
                len: word(8..12) as u32,
                write: flags & DESC_F_WRITE != 0,
            });
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            index = word(14..16) as u16;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(head))
    }

    /// Gives chain `head` back with `len` bytes written into it. A head
    /// past the table (any head, for a queue of size 0) was never taken.
    pub fn push_used(
        &mut self,
        mem: &impl GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let n = self.size();
        if head >= n {
            return Err(QueueError::DescIndex { index: head });
        }
        let slot = ipa(self.layout.used, 4 + 8 * u64::from(self.used_idx % n))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(slot, &elem)
            .map_err(|_| QueueError::Memory { ipa: slot })?;
        // The entry before the index that publishes it.
        mem.fence();
        self.used_idx = self.used_idx.wrapping_add(1);
        let at = ipa(self.layout.used, 2)?;
        mem.write_u16(at, self.used_idx)
            .map_err(|_| QueueError::Memory { ipa: at })
    }

    /// Called when a batch is done: with event idx, asks the driver to
    /// notify at the next buffer it makes available, then looks once more,
    /// so a buffer added meanwhile is not left waiting for a notification
    /// the driver will not send. True if there is more to do.
    pub fn rearm(&mut self, mem: &impl GuestMemory) -> Result<bool, QueueError> {
        if self.event_idx {
            let at = ipa(self.layout.used, 4 + 8 * u64::from(self.size()))?;
            mem.write_u16(at, self.last_avail)
                .map_err(|_| QueueError::Memory { ipa: at })?;
            mem.fence();
        }
        Ok(self.avail_idx(mem)? != self.last_avail)
    }

    /// Whether the driver wants an interrupt for what was used since the
    /// last one (2.7.10): with event idx, when `used.idx` passed the
    /// driver's `used_event`; without, unless it set `NO_INTERRUPT`.
    pub fn needs_interrupt(&mut self, mem: &impl GuestMemory) -> Result<bool, QueueError> {
        let (old, new) = (self.signalled, self.used_idx);
        if old == new {
            return Ok(false);
        }
        // Our used.idx store before the driver's event index load.
        mem.fence();
        let want = if self.event_idx {
            let at = ipa(self.layout.avail, 4 + 2 * u64::from(self.size()))?;
            let event = mem
                .read_u16(at)
                .map_err(|_| QueueError::Memory { ipa: at })?;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let at = self.layout.avail;
            let flags = mem
                .read_u16(at)
                .map_err(|_| QueueError::Memory { ipa: at })?;
            flags & AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled = new;
        Ok(want)
    }

    /// Chains taken and not yet given back.
    pub fn in_flight(&self) -> u16 {
        self.last_avail.wrapping_sub(self.used_idx)
    }
}

/// A driver's side of a queue, for tests and fuzzing: lays out the areas
/// in guest memory and adds chains as Linux would.
#[cfg(any(test, feature = "driver-model"))]
pub mod driver {
    use super::*;

    pub struct Driver {
        pub layout: Layout,
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
    }

    impl Driver {
        /// Areas at `base` in guest memory: table, then available ring,
        /// then the used ring at the next 4-byte boundary.
        pub fn new(base: u64, size: u16) -> Driver {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            Driver {
                layout: Layout {
                    size,
                    desc,
                    avail,
                    used,
                },
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            }
        }

        /// Writes one raw descriptor.
        pub fn write_desc(
            &self,
            mem: &impl GuestMemory,
            index: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            mem.write(self.layout.desc + 16 * u64::from(index), &raw)
                .unwrap();
        }

        /// Adds a chain of `(addr, len, device-writable)` buffers and makes
        /// it available; returns its head.
        pub fn add(&mut self, mem: &impl GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
            let n = self.layout.size;
            let head = self.next_desc % n;
            for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                let index = (head + i as u16) % n;
                let last = i + 1 == bufs.len();
                let flags =
                    if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
                self.write_desc(mem, index, addr, len, flags, (index + 1) % n);
            }
            self.next_desc = self.next_desc.wrapping_add(bufs.len() as u16);
            self.publish(mem, head);
            head
        }

        /// Puts `head` in the next available slot and moves `avail.idx`.
        pub fn publish(&mut self, mem: &impl GuestMemory, head: u16) {
            let n = self.layout.size;
            let slot = self.layout.avail + 4 + 2 * u64::from(self.avail_idx % n);
            mem.write_u16(slot, head).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.set_avail_idx(mem, self.avail_idx);
        }

        pub fn set_avail_idx(&self, mem: &impl GuestMemory, idx: u16) {
            mem.write_u16(self.layout.avail + 2, idx).unwrap();
        }

        /// Sets `used_event` (the driver wants an interrupt once `used.idx`
        /// passes it).
        pub fn set_used_event(&self, mem: &impl GuestMemory, v: u16) {
            let at = self.layout.avail + 4 + 2 * u64::from(self.layout.size);
            mem.write_u16(at, v).unwrap();
        }

        /// The device's `avail_event`.
        pub fn avail_event(&self, mem: &impl GuestMemory) -> u16 {
            let at = self.layout.used + 4 + 8 * u64::from(self.layout.size);
            mem.read_u16(at).unwrap()
        }

        /// Takes the next used entry: (head, len).
        pub fn take_used(&mut self, mem: &impl GuestMemory) -> Option<(u16, u32)> {
            let idx = mem.read_u16(self.layout.used + 2).unwrap();
            if idx == self.used_seen {
                return None;
            }
            let slot = self.layout.used + 4 + 8 * u64::from(self.used_seen % self.layout.size);
            let mut e = [0u8; 8];
            mem.read(slot, &mut e).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            Some((
                u16::from_le_bytes([e[0], e[1]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::driver::Driver;
    use super::*;
    use crate::mem::SliceMem;
    use alloc::vec;

    const BASE: u64 = 0x4000_0000;

    fn setup(buf: &mut [u8], size: u16) -> (SliceMem<'_>, Driver, Queue) {
        let mem = SliceMem::new(BASE, buf);
        let d = Driver::new(BASE, size);
        d.layout.check(&mem).unwrap();
        let q = Queue::new(d.layout, true);
        (mem, d, q)
    }

    #[test]
    fn pops_chains_in_order_and_returns_them() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 8);
        let mut chain = Vec::new();
        assert_eq!(q.pop(&mem, &mut chain), Ok(None));
        let a = d.add(
            &mem,
            &[(BASE + 0x8000, 16, false), (BASE + 0x9000, 1, true)],
        );
        let b = d.add(&mem, &[(BASE + 0xa000, 512, true)]);
        assert_eq!(q.pop(&mem, &mut chain), Ok(Some(a)));
        assert_eq!(
            chain,
            [
                Desc {
                    addr: BASE + 0x8000,
                    len: 16,
                    write: false
                },
                Desc {
                    addr: BASE + 0x9000,
                    len: 1,
                    write: true
                }
            ]
        );
        assert_eq!(q.pop(&mem, &mut chain), Ok(Some(b)));
        assert_eq!(chain.len(), 1);
        assert_eq!(q.pop(&mem, &mut chain), Ok(None));
        assert_eq!(q.in_flight(), 2);
        q.push_used(&mem, a, 1).unwrap();
        q.push_used(&mem, b, 512).unwrap();
        assert_eq!(d.take_used(&mem), Some((a, 1)));
        assert_eq!(d.take_used(&mem), Some((b, 512)));
        assert_eq!(d.take_used(&mem), None);
    }

    #[test]
    fn a_looping_chain_is_refused_not_followed_forever() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 4);
        // 0 -> 1 -> 0 -> ...
        d.write_desc(&mem, 0, BASE + 0x8000, 8, DESC_F_NEXT, 1);
        d.write_desc(&mem, 1, BASE + 0x8000, 8, DESC_F_NEXT, 0);
        d.publish(&mem, 0);
        assert_eq!(q.pop(&mem, &mut Vec::new()), Err(QueueError::ChainTooLong));
    }

    #[test]
    fn indices_past_the_table_or_ring_are_refused() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 4);
        d.publish(&mem, 4);
        assert_eq!(
            q.pop(&mem, &mut Vec::new()),
            Err(QueueError::DescIndex { index: 4 })
        );

        let (mem, mut d, mut q) = setup(&mut buf, 4);
        d.write_desc(&mem, 0, BASE, 8, DESC_F_NEXT, 9);
        d.publish(&mem, 0);
        assert_eq!(
            q.pop(&mem, &mut Vec::new()),
            Err(QueueError::DescIndex { index: 9 })
        );

        let (mem, d, mut q) = setup(&mut buf, 4);
        d.set_avail_idx(&mem, 5);
        assert_eq!(
            q.pop(&mem, &mut Vec::new()),
            Err(QueueError::AvailIndex { last: 0, idx: 5 })
        );
    }

    #[test]
    fn indirect_descriptors_are_refused() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 4);
        d.write_desc(&mem, 0, BASE + 0x8000, 32, DESC_F_INDIRECT, 0);
        d.publish(&mem, 0);
        assert_eq!(q.pop(&mem, &mut Vec::new()), Err(QueueError::Indirect));
    }

    #[test]
    fn layouts_outside_ram_misaligned_or_odd_sized_are_refused() {
        let mut buf = vec![0u8; 4096];
        let mem = SliceMem::new(BASE, &mut buf);
        let good = Driver::new(BASE, 8).layout;
        assert!(good.check(&mem).is_ok());
        for bad in [
            Layout { size: 6, ..good },
            Layout { size: 0, ..good },
            Layout { size: 512, ..good },
            Layout {
                desc: good.desc + 8,
                ..good
            },
            Layout {
                used: good.used + 2,
                ..good
            },
            Layout {
                used: BASE + 4096 - 8,
                ..good
            },
            Layout {
                avail: u64::MAX - 1,
                ..good
            },
        ] {
            assert!(bad.check(&mem).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_descriptor_changed_after_it_was_read_changes_nothing() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 4);
        let head = d.add(&mem, &[(BASE + 0x8000, 512, true)]);
        let mut chain = Vec::new();
        q.pop(&mem, &mut chain).unwrap();
        // The guest rewrites the descriptor to point at the hypervisor.
        d.write_desc(&mem, head, 0x4020_0000, u32::MAX, 0, 0);
        assert_eq!(
            chain[0],
            Desc {
                addr: BASE + 0x8000,
                len: 512,
                write: true
            }
        );
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 8);
        let mut chain = Vec::new();
        // The driver wants an interrupt only once the third buffer is used.
        d.set_used_event(&mem, 2);
        for _ in 0..3 {
            d.add(&mem, &[(BASE + 0x8000, 4, true)]);
        }
        for i in 0..3 {
            let h = q.pop(&mem, &mut chain).unwrap().unwrap();
            q.push_used(&mem, h, 4).unwrap();
            assert_eq!(q.needs_interrupt(&mem).unwrap(), i == 2, "after {}", i + 1);
        }
        // Nothing new used: no interrupt.
        assert!(!q.needs_interrupt(&mem).unwrap());
        // rearm asks for a notification at the next buffer and sees none yet.
        assert!(!q.rearm(&mem).unwrap());
        assert_eq!(d.avail_event(&mem), 3);
        d.add(&mem, &[(BASE + 0x8000, 4, true)]);
        assert!(q.rearm(&mem).unwrap(), "a buffer added meanwhile is seen");
    }

    #[test]
    fn without_event_idx_no_interrupt_flag_is_honoured() {
        let mut buf = vec![0u8; 64 << 10];
        let mem = SliceMem::new(BASE, &mut buf);
        let mut d = Driver::new(BASE, 4);
        let mut q = Queue::new(d.layout, false);
        mem.write_u16(d.layout.avail, AVAIL_F_NO_INTERRUPT).unwrap();
        d.add(&mem, &[(BASE + 0x8000, 4, true)]);
        let h = q.pop(&mem, &mut Vec::new()).unwrap().unwrap();
        q.push_used(&mem, h, 0).unwrap();
        assert!(!q.needs_interrupt(&mem).unwrap());
        mem.write_u16(d.layout.avail, 0).unwrap();
        d.add(&mem, &[(BASE + 0x8000, 4, true)]);
        let h = q.pop(&mem, &mut Vec::new()).unwrap().unwrap();
        q.push_used(&mem, h, 0).unwrap();
        assert!(q.needs_interrupt(&mem).unwrap());
    }

    #[test]
    fn indices_wrap_at_u16() {
        let mut buf = vec![0u8; 64 << 10];
        let (mem, mut d, mut q) = setup(&mut buf, 2);
        let mut chain = Vec::new();
        for i in 0..70_000u32 {
            let h = d.add(&mem, &[(BASE + 0x8000, i % 512 + 1, true)]);
            assert_eq!(q.pop(&mem, &mut chain).unwrap(), Some(h));
            assert_eq!(chain[0].len, i % 512 + 1);
            q.push_used(&mem, h, 1).unwrap();
            assert_eq!(d.take_used(&mem), Some((h, 1)));
        }
    }

    #[test]
    fn an_unchecked_layout_at_the_top_of_the_address_space_is_a_memory_error() {
        // Found by the virtqueue fuzz target: `avail + 2` (and each other
        // area's `base + offset`) overflowed, a panic with overflow checks
        // and a wrapped address without them.
        let mut buf = vec![0u8; 4096];
        let mem = SliceMem::new(BASE, &mut buf);
        for base in [u64::MAX, u64::MAX - 1, u64::MAX - 3] {
            let layout = Layout {
                size: 4,
                desc: base,
                avail: base,
                used: base,
            };
            let mut q = Queue::new(layout, true);
            let mut chain = Vec::new();
            assert!(matches!(
                q.pop(&mem, &mut chain),
                Err(QueueError::Memory { .. })
            ));
            assert!(matches!(q.rearm(&mem), Err(QueueError::Memory { .. })));
            assert!(matches!(
                q.push_used(&mem, 0, 1),
                Err(QueueError::Memory { .. })
            ));
            // The table alone at the top: the ring is read, the descriptor
            // address overflows.
            let d = Driver::new(BASE, 4);
            let mut q = Queue::new(
                Layout {
                    desc: base,
                    ..d.layout
                },
                false,
            );
            mem.write_u16(d.layout.avail + 2, 1).unwrap();
            mem.write_u16(d.layout.avail + 4, 3).unwrap();
            assert!(matches!(
                q.pop(&mem, &mut chain),
                Err(QueueError::Memory { .. })
            ));
            mem.write_u16(d.layout.avail + 2, 0).unwrap();
        }
    }

    #[test]
    fn a_queue_of_size_0_or_a_head_past_the_table_is_not_pushed() {
        // Found writing the virtqueue fuzz target: push_used on a queue of
        // size 0 divided by zero (`used_idx % 0`).
        let mut buf = vec![0u8; 64 << 10];
        let mem = SliceMem::new(BASE, &mut buf);
        let d = Driver::new(BASE, 4);
        let mut q = Queue::new(
            Layout {
                size: 0,
                ..d.layout
            },
            true,
        );
        assert_eq!(q.pop(&mem, &mut Vec::new()), Ok(None));
        assert_eq!(
            q.push_used(&mem, 0, 1),
            Err(QueueError::DescIndex { index: 0 })
        );
        let mut q = Queue::new(d.layout, true);
        assert_eq!(
            q.push_used(&mem, 4, 1),
            Err(QueueError::DescIndex { index: 4 })
        );
        assert_eq!(mem.read_u16(d.layout.used + 2), Ok(0), "nothing published");
        assert_eq!(q.in_flight(), 0);
    }
}
