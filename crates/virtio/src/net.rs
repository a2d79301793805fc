//! The virtio network device (virtio 1.2, 5.1): one receive and one
//! transmit queue, a fixed MAC, checksum and TCP segmentation offload
//! ([`crate::offload`]), and a control queue for one command: the
//! driver's acknowledgement of a request to announce itself
//! (VIRTIO_NET_F_GUEST_ANNOUNCE, 5.1.6.5.4), which the hypervisor makes
//! when a migrated or restored VM resumes ([`Net::announce`]).
//!
//! Frames the guest sends are copied out of its transmit chains one at a
//! time ([`Net::pop_tx`]) for the switch, with what their header asks
//! checked against the frame; frames for the guest are copied into its
//! receive buffers ([`Net::deliver`]), cut into MTU-sized frames first if
//! the guest did not negotiate the offload the frame carries. Without
//! VIRTIO_NET_F_MRG_RXBUF each receive buffer holds a whole frame: Linux
//! posts 64 KiB "big" buffers once it negotiated GUEST_TSO4/6, and small
//! ones otherwise. Every byte goes through
//! [`GuestMemory`]; a frame that does not fit is dropped and counted, a
//! broken ring makes the device need a reset, as for the block device.

use crate::feature;
use crate::mem::GuestMemory;
use crate::mmio::{self, Event, Transport};
use crate::offload::{self, Caps, Offload, MAX_GSO_FRAME};
use crate::queue::{Desc, Queue, QueueError};
use alloc::vec::Vec;

pub const DEVICE_ID: u32 = 1;

/// Feature bits (5.1.3).
pub mod f {
    /// The device completes checksums the driver left partial (CSUM), and
    /// the driver accepts frames with partial checksums (GUEST_CSUM).
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The driver takes TCP segments of up to 64 KiB (GUEST_TSO4/6); the
    /// device takes them from the driver (HOST_TSO4/6).
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    /// `mac` in the configuration space is valid.
    pub const MAC: u64 = 1 << 5;
    /// `status` in the configuration space is valid (link up).
    pub const STATUS: u64 = 1 << 16;
    /// The control queue (queue 2 without multiqueue).
    pub const CTRL_VQ: u64 = 1 << 17;
    /// The device may ask the driver to announce itself (gratuitous ARP,
    /// unsolicited neighbour advertisements) with `status` bit
    /// [`super::S_ANNOUNCE`] and a configuration-change interrupt.
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
}

/// `status` bits (5.1.4).
pub const S_LINK_UP: u16 = 1;
pub const S_ANNOUNCE: u16 = 2;

/// Control commands (5.1.6.5): the class and command of the one the
/// device knows, and the ack byte it writes back.
pub const CTRL_CLASS_ANNOUNCE: u8 = 3;
pub const CTRL_ANNOUNCE_ACK: u8 = 0;
pub const CTRL_OK: u8 = 0;
pub const CTRL_ERR: u8 = 1;

/// `virtio_net_hdr_v1` before every frame: flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers (always there with
/// VERSION_1).
pub const HDR_LEN: usize = 12;
/// The largest frame: 14 bytes of Ethernet header, a VLAN tag and an MTU
/// of 1500 (no frame check sequence: devices do not carry it).
pub const MAX_FRAME: usize = 1518;
/// The smallest: an Ethernet header.
pub const MIN_FRAME: usize = 14;
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const CTRL: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// Counters for the shell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit chains dropped: too short or long, device-writable, or a
    /// header whose offload request does not fit the frame.
    pub tx_dropped: u64,
    /// Frames sent as 64 KiB segments (TSO), and frames delivered to this
    /// guest cut into MTU-sized segments because it takes no TSO.
    pub tx_tso: u64,
    pub rx_segmented: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames for the guest dropped: no receive buffer, or one too small.
    pub rx_dropped: u64,
    pub kicks: u64,
    pub interrupts: u64,
    pub resets_needed: u64,
    /// Announcements asked of the driver, and its acknowledgements.
    pub announces: u64,
    pub announce_acks: u64,
    /// Control commands answered with an error (unknown, or malformed).
    pub ctrl_errors: u64,
}

/// What a delivery came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffer; whether it wants an interrupt.
    Delivered { interrupt: bool },
    /// Dropped: the guest has no buffer posted, or it is too small.
    NoBuffer,
    /// The device is not running (driver not ready, or needs a reset).
    NotLive,
    /// The receive ring is broken; the device now needs a reset.
    Broken(QueueError),
}

/// What a register write asks of the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    /// The guest notified its transmit queue: call [`Net::pop_tx`].
    pub tx: bool,
    /// A queue was given up at setup (layout outside RAM).
    pub refused: bool,
    /// The control queue was given up (a broken ring); the device needs a
    /// reset.
    pub ctrl_broken: Option<QueueError>,
}

pub struct Net {
    pub transport: Transport<3>,
    pub mac: [u8; 6],
    queues: [Option<Queue>; 3],
    config: [u8; 8],
    chain: Vec<Desc>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(mac: [u8; 6]) -> Net {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        Net {
            transport: Transport::new(
                DEVICE_ID,
                f::MAC
                    | f::STATUS
                    | f::CTRL_VQ
                    | f::GUEST_ANNOUNCE
                    | f::CSUM
                    | f::GUEST_CSUM
                    | f::GUEST_TSO4
                    | f::GUEST_TSO6
                    | f::HOST_TSO4
                    | f::HOST_TSO6
                    | feature::RING_EVENT_IDX
                    | feature::VERSION_1,
                QUEUE_SIZE,
            ),
            mac,
            queues: [None, None, None],
            config,
            chain: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stats: NetStats::default(),
        }
    }

    pub fn irq_level(&self) -> bool {
        self.transport.interrupt_status != 0
    }

    /// What the driver may hand us: partial checksums, TSO.
    fn tx_caps(&self) -> Caps {
        let n = self.transport.negotiated();
        Caps {
            csum: n & f::CSUM != 0,
            tso4: n & f::HOST_TSO4 != 0,
            tso6: n & f::HOST_TSO6 != 0,
        }
    }

    /// What the driver takes from us as it is.
    pub fn rx_caps(&self) -> Caps {
        let n = self.transport.negotiated();
        Caps {
            csum: n & f::GUEST_CSUM != 0,
            tso4: n & f::GUEST_TSO4 != 0,
            tso6: n & f::GUEST_TSO6 != 0,
        }
    }

    pub fn reset(&mut self) {
        self.transport.reset();
        self.queues = [None, None, None];
        self.set_status(S_LINK_UP);
    }

    pub(crate) fn queue_refs(&self) -> &[Option<Queue>; 3] {
        &self.queues
    }

    pub(crate) fn set_queues(&mut self, q: [Option<Queue>; 3]) {
        self.queues = q;
    }

    /// The configuration space's `status`.
    pub fn status(&self) -> u16 {
        u16::from_le_bytes([self.config[6], self.config[7]])
    }

    pub(crate) fn set_status(&mut self, v: u16) {
        self.config[6..8].copy_from_slice(&v.to_le_bytes());
    }

    /// Asks the driver to announce itself, as after a migration (5.1.6.5.4):
    /// the ANNOUNCE status bit and a configuration-change interrupt, if it
    /// negotiated GUEST_ANNOUNCE and the device runs. Whether it asked.
    pub fn announce(&mut self) -> bool {
        if !self.transport.live() || self.transport.negotiated() & f::GUEST_ANNOUNCE == 0 {
            return false;
        }
        self.set_status(self.status() | S_ANNOUNCE);
        self.transport.config_generation = self.transport.config_generation.wrapping_add(1);
        self.transport.interrupt_status |= mmio::INT_CONFIG;
        self.stats.announces += 1;
        self.stats.interrupts += 1;
        true
    }

    pub fn mmio_read(&self, off: u64, size: u8) -> Option<u32> {
        self.transport.read(off, size, &self.config)
    }

    #[allow(clippy::result_unit_err)]
    pub fn mmio_write(
        &mut self,
        off: u64,
        size: u8,
        value: u32,
        mem: &impl GuestMemory,
    ) -> Result<NetEvent, ()> {
        let mut ev = NetEvent::default();
        match self.transport.write(off, size, value)? {
            None | Some(Event::Interrupt) => {}
            Some(Event::Reset) => {
                self.queues = [None, None, None];
                self.set_status(S_LINK_UP);
            }
            Some(Event::QueueReady(q)) => {
                let q = usize::from(q);
                let queue = self.transport.take_ready(q, mem);
                ev.refused = queue.is_none();
                if let Some(slot) = self.queues.get_mut(q) {
                    *slot = queue;
                }
            }
            Some(Event::Notify(q)) => {
                self.stats.kicks += 1;
                // Receive buffers are used when a frame arrives; nothing
                // waits for them here. A control command is answered at
                // once: Linux's driver spins until it is.
                match usize::from(q) {
                    TX => ev.tx = true,
                    CTRL => ev.ctrl_broken = self.ctrl(mem).err(),
                    _ => {}
                }
            }
        }
        Ok(ev)
    }

    /// Answers every control command the driver queued. A command is a
    /// chain of device-readable bytes (class, command, data) then one
    /// device-writable ack byte; anything else is answered CTRL_ERR where
    /// the ack byte can go, and given back unanswered where it cannot.
    fn ctrl(&mut self, mem: &impl GuestMemory) -> Result<(), QueueError> {
        if !self.transport.live() {
            return Ok(());
        }
        let Some(mut q) = self.queues[CTRL].take() else {
            return Ok(());
        };
        let r = self.ctrl_from(&mut q, mem);
        match r {
            Ok(want) => {
                self.queues[CTRL] = Some(q);
                self.interrupt(want);
                Ok(())
            }
            Err(e) => Err(self.broken(CTRL, e)),
        }
    }

    fn ctrl_from(&mut self, q: &mut Queue, mem: &impl GuestMemory) -> Result<bool, QueueError> {
        loop {
            let Some(head) = q.pop(mem, &mut self.chain)? else {
                if q.rearm(mem)? {
                    continue;
                }
                return q.needs_interrupt(mem);
            };
            let ack = match self.chain.split_last() {
                Some((last, out))
                    if last.write && last.len >= 1 && out.iter().all(|d| !d.write) =>
                {
                    Some(last.addr)
                }
                _ => None,
            };
            let mut hdr = [0u8; 2];
            let got = self
                .chain
                .first()
                .filter(|d| !d.write && d.len >= 2 && ack.is_some());
            let known = got.is_some_and(|d| mem.read(d.addr, &mut hdr).is_ok())
                && hdr == [CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK];
            let answer = if known {
                self.set_status(self.status() & !S_ANNOUNCE);
                self.stats.announce_acks += 1;
                CTRL_OK
            } else {
                self.stats.ctrl_errors += 1;
                CTRL_ERR
            };
            let written = match ack {
                Some(at) if mem.write(at, &[answer]).is_ok() => 1,
                _ => 0,
            };
            q.push_used(mem, head, written)?;
        }
    }

    fn broken(&mut self, q: usize, e: QueueError) -> QueueError {
        self.queues[q] = None;
        self.transport.needs_reset();
        self.stats.resets_needed += 1;
        e
    }

    /// The next frame the guest sent, copied into `buf` (at least
    /// [`MAX_GSO_FRAME`] bytes): its length and what it asks of the
    /// receiver (checked), or `None` when it has sent nothing more. Chains
    /// that are no frame are returned to the guest and counted as dropped.
    pub fn pop_tx(
        &mut self,
        mem: &impl GuestMemory,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Offload)>, QueueError> {
        if !self.transport.live() {
            return Ok(None);
        }
        let Some(mut q) = self.queues[TX].take() else {
            return Ok(None);
        };
        let r = self.pop_tx_from(&mut q, mem, buf);
        match r {
            Ok(v) => {
                self.queues[TX] = Some(q);
                Ok(v)
            }
            Err(e) => Err(self.broken(TX, e)),
        }
    }

    fn pop_tx_from(
        &mut self,
        q: &mut Queue,
        mem: &impl GuestMemory,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Offload)>, QueueError> {
        let caps = self.tx_caps();
        let max = if caps.tso4 || caps.tso6 {
            MAX_GSO_FRAME
        } else {
            MAX_FRAME
        };
        loop {
            let Some(head) = q.pop(mem, &mut self.chain)? else {
                if q.rearm(mem)? {
                    continue;
                }
                return Ok(None);
            };
            let mut header = [0u8; HDR_LEN];
            let frame = gather(mem, &self.chain, &mut header, buf, max);
            q.push_used(mem, head, 0)?;
            let checked = frame.and_then(|len| {
                let off = offload::tx_offload(caps, &header, buf.get(..len)?).ok()?;
                Some((len, off))
            });
            match checked {
                Some((len, off)) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len as u64;
                    self.stats.tx_tso += u64::from(off.gso.is_some());
                    return Ok(Some((len, off)));
                }
                None => self.stats.tx_dropped += 1,
            }
        }
    }

    /// After a transmit batch: whether the guest wants an interrupt for
    /// the chains returned (and the InterruptStatus bit set if so).
    pub fn tx_done(&mut self, mem: &impl GuestMemory) -> bool {
        let Some(mut q) = self.queues[TX].take() else {
            return false;
        };
        match q.needs_interrupt(mem) {
            Ok(want) => {
                self.queues[TX] = Some(q);
                self.interrupt(want)
            }
            Err(e) => {
                self.broken(TX, e);
                true
            }
        }
    }

    fn interrupt(&mut self, want: bool) -> bool {
        if want {
            self.transport.interrupt_status |= mmio::INT_VRING;
            self.stats.interrupts += 1;
        }
        want
    }

    /// Copies `frame` into the guest's next receive buffer, as it is if
    /// the guest takes what `off` asks of it, else cut into plain frames
    /// (each into a buffer of its own).
    pub fn deliver(&mut self, mem: &impl GuestMemory, frame: &[u8], off: &Offload) -> Delivery {
        if !self.transport.live() {
            return Delivery::NotLive;
        }
        let Some(mut q) = self.queues[RX].take() else {
            return Delivery::NotLive;
        };
        let mut result: Result<Option<bool>, QueueError> = Ok(None);
        if self.rx_caps().accepts(off) {
            result = self.deliver_to(&mut q, mem, frame, &offload::rx_header(off));
        } else {
            self.stats.rx_segmented += u64::from(off.gso.is_some());
            let plain = offload::rx_header(&Offload::default());
            let mut out = [0u8; MAX_FRAME];
            // Once a piece finds no buffer the rest are not built: the
            // guest has no room for them either.
            let mut full = false;
            offload::resolve(frame, off, &mut out, |piece| {
                if full {
                    return;
                }
                if let Ok(got) = result {
                    let r = self.deliver_to(&mut q, mem, piece, &plain);
                    full = matches!(r, Ok(None));
                    result = r.map(|r| match (got, r) {
                        (Some(a), Some(b)) => Some(a || b),
                        (a, b) => a.or(b),
                    });
                }
            });
        }
        match result {
            Ok(Some(interrupt)) => {
                self.queues[RX] = Some(q);
                Delivery::Delivered {
                    interrupt: self.interrupt(interrupt),
                }
            }
            Ok(None) => {
                self.queues[RX] = Some(q);
                Delivery::NoBuffer
            }
            Err(e) => {
                self.stats.rx_dropped += 1;
                Delivery::Broken(self.broken(RX, e))
            }
        }
    }

    /// One frame into the next receive buffer: `Some(interrupt wanted)`,
    /// or `None` if it was dropped for want of a buffer that fits.
    fn deliver_to(
        &mut self,
        q: &mut Queue,
        mem: &impl GuestMemory,
        frame: &[u8],
        header: &[u8; HDR_LEN],
    ) -> Result<Option<bool>, QueueError> {
        let Some(head) = q.pop(mem, &mut self.chain)? else {
            // Ask to be told when buffers come (event idx), then look once
            // more: one may have been added meanwhile.
            if !q.rearm(mem)? {
                self.stats.rx_dropped += 1;
                return Ok(None);
            }
            return self.deliver_to(q, mem, frame, header);
        };
        let room: u64 = self.chain.iter().map(|d| u64::from(d.len)).sum();
        let need = (HDR_LEN + frame.len()) as u64;
        if self.chain.iter().any(|d| !d.write) || room < need || frame.len() > MAX_GSO_FRAME {
            // Not a receive buffer, or too small for this frame: give it
            // back empty (the driver counts a length error).
            q.push_used(mem, head, 0)?;
            self.stats.rx_dropped += 1;
            return Ok(None);
        }
        let ok = scatter(mem, &self.chain, &[header, frame]);
        let len = if ok { need as u32 } else { 0 };
        q.push_used(mem, head, len)?;
        if !ok {
            self.stats.rx_dropped += 1;
            return Ok(None);
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        Ok(Some(q.needs_interrupt(mem)?))
    }
}

/// The frame in a transmit chain, if it is one: only device-readable
/// buffers, all guest RAM, a header then 14 to `max` bytes of frame. The
/// header goes to `header`, the frame to the front of `buf`.
fn gather(
    mem: &impl GuestMemory,
    chain: &[Desc],
    header: &mut [u8; HDR_LEN],
    buf: &mut [u8],
    max: usize,
) -> Option<usize> {
    if chain.iter().any(|d| d.write) {
        return None;
    }
    let total: u64 = chain.iter().map(|d| u64::from(d.len)).sum();
    let len = usize::try_from(total).ok()?.checked_sub(HDR_LEN)?;
    if !(MIN_FRAME..=max.min(buf.len())).contains(&len) {
        return None;
    }
    let (mut in_header, mut at) = (0usize, 0usize);
    for d in chain {
        let n = d.len as usize;
        let h = (HDR_LEN - in_header).min(n);
        if h > 0 {
            mem.read(d.addr, &mut header[in_header..in_header + h])
                .ok()?;
            in_header += h;
        }
        let piece = n - h;
        if piece == 0 {
            continue;
        }
        mem.read(d.addr.checked_add(h as u64)?, buf.get_mut(at..at + piece)?)
            .ok()?;
        at += piece;
    }
    Some(len)
}

/// Writes `parts` one after the other across the chain's buffers; false
/// if a buffer is not guest RAM.
fn scatter(mem: &impl GuestMemory, chain: &[Desc], parts: &[&[u8]]) -> bool {
    let mut descs = chain.iter();
    let (mut addr, mut left) = (0u64, 0u64);
    for part in parts {
        let mut rest: &[u8] = part;
        while !rest.is_empty() {
            if left == 0 {
                let Some(d) = descs.next() else {
                    return false;
                };
                (addr, left) = (d.addr, u64::from(d.len));
                continue;
            }
            let n = (left.min(rest.len() as u64)) as usize;
            if mem.write(addr, &rest[..n]).is_err() {
                return false;
            }
            rest = &rest[n..];
            addr = addr.wrapping_add(n as u64);
            left -= n as u64;
        }
    }
    true
}

/// Brings a device up as Linux's driver does, with both queues, for
/// tests and fuzzing.
pub fn driver_init(
    net: &mut Net,
    rx: crate::queue::Layout,
    tx: crate::queue::Layout,
    mem: &impl GuestMemory,
) {
    let all = net.transport.device_features;
    driver_init_with(net, rx, tx, mem, all);
}

/// [`driver_init`] accepting only the offered features in `accept`.
pub fn driver_init_with(
    net: &mut Net,
    rx: crate::queue::Layout,
    tx: crate::queue::Layout,
    mem: &impl GuestMemory,
    accept: u64,
) {
    driver_init_queues(net, &[rx, tx], mem, accept);
}

/// [`driver_init_with`] with the queues in `layouts` (receive, transmit,
/// and the control queue if there are three).
pub fn driver_init_queues(
    net: &mut Net,
    layouts: &[crate::queue::Layout],
    mem: &impl GuestMemory,
    accept: u64,
) {
    use crate::mmio::reg;
    use crate::status;
    let offered = net.transport.device_features & accept;
    let mut w = |off, v| {
        let _ = net.mmio_write(off, 4, v, mem);
    };
    w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(reg::DRIVER_FEATURES_SEL, 0);
    w(reg::DRIVER_FEATURES, offered as u32);
    w(reg::DRIVER_FEATURES_SEL, 1);
    w(reg::DRIVER_FEATURES, (offered >> 32) as u32);
    w(reg::STATUS, status::FEATURES_OK);
    for (i, l) in layouts.iter().enumerate() {
        w(reg::QUEUE_SEL, i as u32);
        w(reg::QUEUE_NUM, u32::from(l.size));
        w(reg::QUEUE_DESC_LOW, l.desc as u32);
        w(reg::QUEUE_DESC_HIGH, (l.desc >> 32) as u32);
        w(reg::QUEUE_DRIVER_LOW, l.avail as u32);
        w(reg::QUEUE_DRIVER_HIGH, (l.avail >> 32) as u32);
        w(reg::QUEUE_DEVICE_LOW, l.used as u32);
        w(reg::QUEUE_DEVICE_HIGH, (l.used >> 32) as u32);
        w(reg::QUEUE_READY, 1);
    }
    w(reg::STATUS, status::DRIVER_OK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SliceMem;
    use crate::queue::driver::Driver;
    use alloc::vec;

    const BASE: u64 = 0x4000_0000;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const NONE: Offload = Offload {
        csum: None,
        gso: None,
    };

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&MAC);
        f
    }

    fn up(mem: &SliceMem) -> (Net, Driver, Driver) {
        let rx = Driver::new(BASE, 16);
        let tx = Driver::new(BASE + 0x1000, 16);
        let mut net = Net::new(MAC);
        driver_init(&mut net, rx.layout, tx.layout, mem);
        assert!(net.transport.live());
        (net, rx, tx)
    }

    #[test]
    fn config_space_has_the_mac_and_link_up() {
        let net = Net::new(MAC);
        let lo = net.mmio_read(mmio::CONFIG, 4).unwrap();
        assert_eq!(lo.to_le_bytes(), [0x52, 0x54, 0, 0]);
        assert_eq!(net.mmio_read(mmio::CONFIG + 6, 2), Some(1));
        assert_eq!(net.mmio_read(mmio::reg::DEVICE_ID, 4), Some(1));
    }

    #[test]
    fn frames_go_out_and_come_in_across_split_buffers() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut rx, mut tx) = up(&mem);
        let f = frame(100, 0x77);
        // Header in one buffer, the frame split in two.
        mem.write(BASE + 0x10_000, &[0; HDR_LEN]).unwrap();
        mem.write(BASE + 0x11_000, &f[..40]).unwrap();
        mem.write(BASE + 0x12_000, &f[40..]).unwrap();
        let h = tx.add(
            &mem,
            &[
                (BASE + 0x10_000, HDR_LEN as u32, false),
                (BASE + 0x11_000, 40, false),
                (BASE + 0x12_000, 60, false),
            ],
        );
        let ev = net.mmio_write(mmio::reg::QUEUE_NOTIFY, 4, 1, &mem).unwrap();
        assert!(ev.tx);
        let mut buf = vec![0u8; MAX_GSO_FRAME];
        assert_eq!(net.pop_tx(&mem, &mut buf), Ok(Some((100, NONE))));
        assert_eq!(&buf[..100], &f[..]);
        assert_eq!(net.pop_tx(&mem, &mut buf), Ok(None));
        assert_eq!(tx.take_used(&mem), Some((h, 0)));

        // Receive: a buffer of 2 pieces.
        let r = rx.add(
            &mem,
            &[(BASE + 0x20_000, 64, true), (BASE + 0x21_000, 1500, true)],
        );
        assert!(matches!(
            net.deliver(&mem, &f, &NONE),
            Delivery::Delivered { .. }
        ));
        assert_eq!(rx.take_used(&mem), Some((r, (HDR_LEN + 100) as u32)));
        let mut got = vec![0u8; 64];
        mem.read(BASE + 0x20_000, &mut got).unwrap();
        assert_eq!(&got[10..12], &[1, 0], "num_buffers");
        assert_eq!(&got[HDR_LEN..], &f[..64 - HDR_LEN]);
        let mut rest = vec![0u8; 100 - (64 - HDR_LEN)];
        mem.read(BASE + 0x21_000, &mut rest).unwrap();
        assert_eq!(&rest[..], &f[64 - HDR_LEN..]);
        assert_eq!((net.stats.tx_frames, net.stats.rx_frames), (1, 1));
    }

    #[test]
    fn a_saved_nic_receives_into_the_next_buffer_in_another_device() {
        use crate::state::StateError;
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut rx, _tx) = up(&mem);
        let f = frame(100, 0x55);
        let first = rx.add(&mem, &[(BASE + 0x20_000, 1600, true)]);
        net.deliver(&mem, &f, &NONE);
        assert_eq!(rx.take_used(&mem), Some((first, (HDR_LEN + 100) as u32)));
        let saved = net.save_state();
        // Another MAC is another device.
        let mut other = Net::new([2, 0, 0, 0, 0, 9]);
        assert_eq!(other.restore_state(&saved, &mem), Err(StateError::Device));
        assert!(!other.transport.live());
        // The same one goes on: the next frame lands in the next buffer.
        let mut moved = Net::new(MAC);
        moved.restore_state(&saved, &mem).unwrap();
        assert!(moved.transport.live());
        let second = rx.add(&mem, &[(BASE + 0x30_000, 1600, true)]);
        let g = frame(80, 0x66);
        assert!(matches!(
            moved.deliver(&mem, &g, &NONE),
            Delivery::Delivered { .. }
        ));
        assert_eq!(rx.take_used(&mem), Some((second, (HDR_LEN + 80) as u32)));
        let mut got = vec![0u8; 80];
        mem.read(BASE + 0x30_000 + HDR_LEN as u64, &mut got)
            .unwrap();
        assert_eq!(got, g);
    }

    #[test]
    fn bad_transmit_chains_are_dropped_not_sent() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, _rx, mut tx) = up(&mem);
        let mut buf = vec![0u8; MAX_GSO_FRAME];
        for chain in [
            vec![(BASE + 0x10_000, (HDR_LEN + 10) as u32, false)], // runt
            vec![(BASE + 0x10_000, (HDR_LEN + MAX_FRAME + 1) as u32, false)], // giant
            vec![(BASE + 0x10_000, 200, true)],                    // device-writable
            vec![(0x4020_0000, 200, false)],                       // outside RAM
            vec![(BASE + 0x10_000, u32::MAX, false)],
        ] {
            tx.add(&mem, &chain);
        }
        assert_eq!(net.pop_tx(&mem, &mut buf), Ok(None));
        assert_eq!((net.stats.tx_frames, net.stats.tx_dropped), (0, 5));
        assert!(net.transport.live(), "bad frames do not break the queue");
    }

    #[test]
    fn a_frame_with_no_room_is_dropped() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut rx, _tx) = up(&mem);
        let f = frame(1000, 1);
        assert_eq!(
            net.deliver(&mem, &f, &NONE),
            Delivery::NoBuffer,
            "no buffer posted"
        );
        let small = rx.add(&mem, &[(BASE + 0x20_000, 500, true)]);
        assert_eq!(net.deliver(&mem, &f, &NONE), Delivery::NoBuffer);
        assert_eq!(rx.take_used(&mem), Some((small, 0)));
        rx.add(&mem, &[(BASE + 0x20_000, 100, false)]);
        assert_eq!(
            net.deliver(&mem, &f, &NONE),
            Delivery::NoBuffer,
            "not writable"
        );
        assert_eq!(net.stats.rx_dropped, 3);
        rx.add(&mem, &[(BASE + 0x20_000, 1600, true)]);
        assert!(matches!(
            net.deliver(&mem, &f, &NONE),
            Delivery::Delivered { .. }
        ));
    }

    #[test]
    fn a_broken_ring_needs_a_reset() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut rx, _tx) = up(&mem);
        rx.write_desc(
            &mem,
            0,
            BASE + 0x20_000,
            64,
            crate::queue::DESC_F_NEXT | 2,
            0,
        );
        rx.publish(&mem, 0);
        assert_eq!(
            net.deliver(&mem, &frame(60, 0), &NONE),
            Delivery::Broken(QueueError::ChainTooLong)
        );
        assert!(!net.transport.live());
        assert_eq!(net.deliver(&mem, &frame(60, 0), &NONE), Delivery::NotLive);
    }

    /// A TCP/IPv4 frame of `payload` bytes from MAC to 02:..:02, its
    /// checksum field holding the pseudo-header sum as Linux leaves it.
    fn tcp4(payload: usize) -> Vec<u8> {
        let mut f = frame(14 + 20 + 20 + payload, 0);
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[26..34].copy_from_slice(&[10, 0, 2, 1, 10, 0, 2, 2]);
        f[34 + 12] = 5 << 4;
        f[34 + 13] = 0x18; // PSH|ACK
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    /// Sends `f` with a TSO header (MSS 1000) from a device that
    /// negotiated everything; what `pop_tx` made of it.
    fn send_tso(f: &[u8]) -> (usize, Offload, Vec<u8>) {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, _rx, mut tx) = up(&mem);
        let mut h = [0u8; HDR_LEN];
        h[0] = offload::hdr::F_NEEDS_CSUM;
        h[1] = offload::hdr::GSO_TCPV4;
        h[4..6].copy_from_slice(&1000u16.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        mem.write(BASE + 0x10_000, &h).unwrap();
        mem.write(BASE + 0x20_000, f).unwrap();
        tx.add(
            &mem,
            &[
                (BASE + 0x10_000, HDR_LEN as u32, false),
                (BASE + 0x20_000, f.len() as u32, false),
            ],
        );
        let mut buf = vec![0u8; MAX_GSO_FRAME];
        let (len, off) = net.pop_tx(&mem, &mut buf).unwrap().unwrap();
        assert_eq!(net.stats.tx_tso, 1);
        (len, off, buf[..len].to_vec())
    }

    #[test]
    fn a_tso_frame_reaches_a_tso_guest_whole_and_others_in_segments() {
        let f = tcp4(4000);
        let (len, off, sent) = send_tso(&f);
        assert_eq!((len, &sent[..]), (f.len(), &f[..]));
        assert_eq!(off.gso.map(|g| (g.mss, g.hdr_len)), Some((1000, 54)));

        // A receiver that takes TSO: one buffer, our header, the frame.
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut rx, _tx) = up(&mem);
        let r = rx.add(&mem, &[(BASE + 0x20_000, 0x1_0000 + 32, true)]);
        assert!(matches!(
            net.deliver(&mem, &sent, &off),
            Delivery::Delivered { .. }
        ));
        assert_eq!(rx.take_used(&mem), Some((r, (HDR_LEN + len) as u32)));
        let mut got = vec![0u8; HDR_LEN + len];
        mem.read(BASE + 0x20_000, &mut got).unwrap();
        assert_eq!(got[..HDR_LEN], offload::rx_header(&off));
        assert_eq!(got[HDR_LEN..], f[..]);

        // One that negotiated no offload: four plain frames, one a buffer.
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let rxd = Driver::new(BASE, 16);
        let txd = Driver::new(BASE + 0x1000, 16);
        let mut plain = Net::new(MAC);
        let basic = f::MAC | f::STATUS | feature::RING_EVENT_IDX | feature::VERSION_1;
        driver_init_with(&mut plain, rxd.layout, txd.layout, &mem, basic);
        assert_eq!(plain.rx_caps(), Caps::default());
        let mut rxd = rxd;
        let heads: Vec<u16> = (0..4)
            .map(|i| rxd.add(&mem, &[(BASE + 0x20_000 + i * 0x1000, 1600, true)]))
            .collect();
        assert!(matches!(
            plain.deliver(&mem, &sent, &off),
            Delivery::Delivered { .. }
        ));
        let mut payload = Vec::new();
        for (i, &h) in heads.iter().enumerate() {
            let (head, used) = rxd.take_used(&mem).unwrap();
            assert_eq!(head, h);
            let seg_len = used as usize - HDR_LEN;
            assert_eq!(seg_len, 54 + 1000, "segment {i}");
            let mut seg = vec![0u8; used as usize];
            mem.read(BASE + 0x20_000 + i as u64 * 0x1000, &mut seg)
                .unwrap();
            assert_eq!(seg[..HDR_LEN], offload::rx_header(&NONE), "a plain header");
            payload.extend_from_slice(&seg[HDR_LEN + 54..]);
        }
        assert_eq!(payload, f[54..]);
        assert_eq!((plain.stats.rx_frames, plain.stats.rx_segmented), (4, 1));
    }

    #[test]
    fn offloads_a_driver_did_not_negotiate_are_dropped_on_send() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let rxd = Driver::new(BASE, 16);
        let mut txd = Driver::new(BASE + 0x1000, 16);
        let mut net = Net::new(MAC);
        let basic = f::MAC | f::STATUS | feature::VERSION_1;
        driver_init_with(&mut net, rxd.layout, txd.layout, &mem, basic);
        let f = tcp4(100);
        let mut h = [0u8; HDR_LEN];
        h[0] = offload::hdr::F_NEEDS_CSUM;
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        mem.write(BASE + 0x10_000, &h).unwrap();
        mem.write(BASE + 0x10_000 + HDR_LEN as u64, &f).unwrap();
        txd.add(
            &mem,
            &[(BASE + 0x10_000, (HDR_LEN + f.len()) as u32, false)],
        );
        let mut buf = vec![0u8; MAX_GSO_FRAME];
        assert_eq!(net.pop_tx(&mem, &mut buf), Ok(None));
        assert_eq!((net.stats.tx_frames, net.stats.tx_dropped), (0, 1));
    }

    /// A device with its control queue at `BASE + 0x2000`, accepting
    /// `accept`.
    fn up_ctrl(mem: &SliceMem, accept: u64) -> (Net, Driver) {
        let rx = Driver::new(BASE, 16);
        let tx = Driver::new(BASE + 0x1000, 16);
        let ctrl = Driver::new(BASE + 0x2000, 16);
        let mut net = Net::new(MAC);
        driver_init_queues(&mut net, &[rx.layout, tx.layout, ctrl.layout], mem, accept);
        assert!(net.transport.live());
        (net, ctrl)
    }

    /// Queues a control command (header, then a one-byte ack buffer at
    /// `BASE + 0x31_000`) and notifies the control queue.
    fn command(net: &mut Net, ctrl: &mut Driver, mem: &SliceMem, hdr: [u8; 2]) -> NetEvent {
        mem.write(BASE + 0x30_000, &hdr).unwrap();
        mem.write(BASE + 0x31_000, &[0xee]).unwrap();
        ctrl.add(
            mem,
            &[(BASE + 0x30_000, 2, false), (BASE + 0x31_000, 1, true)],
        );
        net.mmio_write(mmio::reg::QUEUE_NOTIFY, 4, CTRL as u32, mem)
            .unwrap()
    }

    fn ack(mem: &SliceMem) -> u8 {
        let mut b = [0u8; 1];
        mem.read(BASE + 0x31_000, &mut b).unwrap();
        b[0]
    }

    #[test]
    fn an_announcement_is_asked_for_and_acknowledged() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut ctrl) = up_ctrl(&mem, u64::MAX);
        let generation = net.mmio_read(mmio::reg::CONFIG_GENERATION, 4).unwrap();
        assert!(!net.irq_level());
        assert!(net.announce());
        assert_eq!(
            net.mmio_read(mmio::CONFIG + 6, 2),
            Some(u32::from(S_LINK_UP | S_ANNOUNCE))
        );
        assert_eq!(net.transport.interrupt_status, mmio::INT_CONFIG);
        assert_ne!(
            net.mmio_read(mmio::reg::CONFIG_GENERATION, 4).unwrap(),
            generation
        );
        let ev = command(
            &mut net,
            &mut ctrl,
            &mem,
            [CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK],
        );
        assert_eq!(ev.ctrl_broken, None);
        assert_eq!(ack(&mem), CTRL_OK);
        assert_eq!(ctrl.take_used(&mem), Some((0, 1)));
        assert_eq!(
            net.mmio_read(mmio::CONFIG + 6, 2),
            Some(u32::from(S_LINK_UP))
        );
        assert_eq!((net.stats.announces, net.stats.announce_acks), (1, 1));
    }

    #[test]
    fn other_control_commands_get_an_error() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut ctrl) = up_ctrl(&mem, u64::MAX);
        assert!(net.announce());
        // VIRTIO_NET_CTRL_RX / PROMISC: not offered, so not known.
        command(&mut net, &mut ctrl, &mem, [0, 0]);
        assert_eq!(ack(&mem), CTRL_ERR);
        assert_eq!(ctrl.take_used(&mem), Some((0, 1)));
        // The announcement is still asked for.
        assert_eq!(
            net.mmio_read(mmio::CONFIG + 6, 2),
            Some(u32::from(S_LINK_UP | S_ANNOUNCE))
        );
        // No writable byte for the ack: given back with nothing written.
        mem.write(BASE + 0x30_000, &[CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK])
            .unwrap();
        ctrl.add(&mem, &[(BASE + 0x30_000, 2, false)]);
        let ev = net
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, CTRL as u32, &mem)
            .unwrap();
        assert_eq!(ev.ctrl_broken, None);
        assert_eq!(ctrl.take_used(&mem), Some((2, 0)));
        assert_eq!(net.stats.ctrl_errors, 2);
        assert_eq!(net.stats.announce_acks, 0);
    }

    #[test]
    fn a_driver_without_guest_announce_is_not_asked() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, _) = up_ctrl(&mem, !f::GUEST_ANNOUNCE);
        assert!(!net.announce());
        assert!(!net.irq_level());
        assert_eq!(
            net.mmio_read(mmio::CONFIG + 6, 2),
            Some(u32::from(S_LINK_UP))
        );
        // Nor a device the driver has not brought up.
        assert!(!Net::new(MAC).announce());
    }

    #[test]
    fn a_broken_control_ring_needs_a_reset() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, ctrl) = up_ctrl(&mem, u64::MAX);
        // A head past the table.
        mem.write_u16(ctrl.layout.avail + 4, 99).unwrap();
        ctrl.set_avail_idx(&mem, 1);
        let ev = net
            .mmio_write(mmio::reg::QUEUE_NOTIFY, 4, CTRL as u32, &mem)
            .unwrap();
        assert!(ev.ctrl_broken.is_some());
        assert!(!net.transport.live());
        assert_eq!(net.stats.resets_needed, 1);
    }

    #[test]
    fn a_pending_announcement_survives_save_and_restore() {
        let mut ram = vec![0u8; 1 << 20];
        let mem = SliceMem::new(BASE, &mut ram);
        let (mut net, mut ctrl) = up_ctrl(&mem, u64::MAX);
        assert!(net.announce());
        let bytes = net.save_state();
        let mut other = Net::new(MAC);
        other.restore_state(&bytes, &mem).unwrap();
        assert_eq!(other.status(), S_LINK_UP | S_ANNOUNCE);
        assert!(other.irq_level());
        command(
            &mut other,
            &mut ctrl,
            &mem,
            [CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK],
        );
        assert_eq!(ack(&mem), CTRL_OK);
        assert_eq!(other.status(), S_LINK_UP);
        // A status bit the device never sets is refused.
        let mut bad = bytes.clone();
        bad[2 + 6] |= 0x80;
        assert_eq!(
            Net::new(MAC).restore_state(&bad, &mem),
            Err(crate::state::StateError::Status)
        );
    }
}
