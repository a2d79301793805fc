//! A device's state as bytes, for snapshots and migration
//! (docs/snapshot.md): the register file, each live queue's indices, and
//! what the device is (so a stream saved from another kind of device, or
//! from a disk slice elsewhere, is refused).
//!
//! Only a quiet device is saved: a block device with requests on the disk
//! says so and the caller waits for them. A restore checks everything the
//! bytes say against the device it goes into and against the VM's RAM
//! (each queue's areas, as when the driver first made it ready) before it
//! changes anything: a stream is input from the network.

use crate::blk::Blk;
use crate::mmio::{QueueRegs, Transport};
use crate::net::Net;
use crate::queue::{Layout, Queue};
use crate::GuestMemory;
use alloc::vec::Vec;

/// The first byte of every device state (2: the net device's control
/// queue and `status`).
const STATE_VERSION: u8 = 2;
const KIND_BLK: u8 = 1;
const KIND_NET: u8 = 2;

/// Why device state was not saved or not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Requests are still on the disk (save only: wait and try again).
    Busy,
    Truncated,
    TooLong,
    Version(u8),
    /// A block state into a net device or the other way round.
    Kind,
    /// The saved device offers other features or another queue size.
    Device,
    /// The saved block device is over another slice of the disk.
    Slice,
    /// The driver's features are not a subset of the device's.
    Features,
    /// A queue's size, areas or ready state do not add up.
    Queue(u8),
    /// Bits the device never sets.
    Status,
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateError::Busy => write!(f, "requests are still on the disk"),
            StateError::Truncated => write!(f, "state cut short"),
            StateError::TooLong => write!(f, "state longer than the device's"),
            StateError::Version(v) => write!(f, "device state version {v}, not {STATE_VERSION}"),
            StateError::Kind => write!(f, "state of another kind of device"),
            StateError::Device => {
                write!(f, "the saved device offers other features or queue sizes")
            }
            StateError::Slice => write!(f, "the saved disk is another slice of the disk"),
            StateError::Features => write!(f, "driver features the device never offered"),
            StateError::Queue(q) => write!(f, "queue {q}: size, areas or ready state invalid"),
            StateError::Status => write!(f, "status bits the device never sets"),
        }
    }
}

/// Little-endian bytes out.
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// Little-endian bytes in; running past the end is [`StateError::Truncated`].
struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(StateError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::Truncated),
        }
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        self.take().map(u64::from_le_bytes)
    }
    fn end(&self) -> Result<(), StateError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StateError::TooLong)
        }
    }
}

fn put_transport<const Q: usize>(o: &mut Out, t: &Transport<Q>) {
    let s = t.saved();
    o.u32(s.device_id);
    o.u64(s.device_features);
    o.u16(s.queue_num_max);
    o.u64(s.driver_features);
    for v in s.selectors {
        o.u32(v);
    }
    o.u32(s.status);
    o.u32(s.interrupt_status);
    o.u32(s.config_generation);
    for q in &t.queues {
        o.u16(q.num);
        o.u8(u8::from(q.ready));
        o.u64(q.desc);
        o.u64(q.driver);
        o.u64(q.device);
    }
}

/// A transport's state into a copy of `t`, checked against what `t` is.
fn get_transport<const Q: usize>(i: &mut In, t: &Transport<Q>) -> Result<Transport<Q>, StateError> {
    let device_id = i.u32()?;
    let device_features = i.u64()?;
    let queue_num_max = i.u16()?;
    if device_id != t.device_id
        || device_features != t.device_features
        || queue_num_max != t.queue_num_max
    {
        return Err(StateError::Device);
    }
    let driver_features = i.u64()?;
    if driver_features & !device_features != 0 {
        return Err(StateError::Features);
    }
    let selectors = [i.u32()?, i.u32()?, i.u32()?];
    let status = i.u32()?;
    let interrupt_status = i.u32()?;
    if interrupt_status & !(crate::mmio::INT_VRING | crate::mmio::INT_CONFIG) != 0 {
        return Err(StateError::Status);
    }
    let config_generation = i.u32()?;
    let mut queues = [QueueRegs::default(); Q];
    for (n, q) in queues.iter_mut().enumerate() {
        q.num = i.u16()?;
        q.ready = i.bool()?;
        q.desc = i.u64()?;
        q.driver = i.u64()?;
        q.device = i.u64()?;
        if q.num > queue_num_max {
            return Err(StateError::Queue(n as u8));
        }
    }
    Ok(Transport::from_saved(
        crate::mmio::Saved {
            device_id,
            device_features,
            queue_num_max,
            driver_features,
            selectors,
            status,
            interrupt_status,
            config_generation,
        },
        queues,
    ))
}

fn put_queue(o: &mut Out, q: &Option<Queue>) {
    match q {
        None => o.u8(0),
        Some(q) => {
            o.u8(1);
            let (last_avail, used_idx, signalled) = q.indices();
            o.u8(u8::from(q.event_idx));
            o.u16(last_avail);
            o.u16(used_idx);
            o.u16(signalled);
        }
    }
}

/// Queue `n`'s device side: present only where the transport has it
/// ready, over the layout the transport holds, which must be good guest
/// RAM; its event idx as negotiated.
fn get_queue<const Q: usize>(
    i: &mut In,
    n: usize,
    t: &Transport<Q>,
    mem: &impl GuestMemory,
) -> Result<Option<Queue>, StateError> {
    let bad = StateError::Queue(n as u8);
    let regs = t.queues.get(n).ok_or(bad)?;
    if !i.bool()? {
        return Ok(None);
    }
    let event_idx = i.bool()?;
    let (last_avail, used_idx, signalled) = (i.u16()?, i.u16()?, i.u16()?);
    let layout: Layout = regs.layout();
    let negotiated_idx = t.negotiated() & crate::feature::RING_EVENT_IDX != 0;
    if !regs.ready || layout.check(mem).is_err() || event_idx != negotiated_idx {
        return Err(bad);
    }
    // Chains taken and not given back: a quiet device has none.
    if last_avail != used_idx {
        return Err(bad);
    }
    Ok(Some(Queue::with_indices(
        layout, event_idx, last_avail, used_idx, signalled,
    )))
}

impl Blk {
    /// The device's state; [`StateError::Busy`] while requests are on the
    /// disk or one waits for room there.
    pub fn save_state(&self) -> Result<Vec<u8>, StateError> {
        if !self.quiet() {
            return Err(StateError::Busy);
        }
        let mut o = Out(Vec::with_capacity(128));
        o.u8(STATE_VERSION);
        o.u8(KIND_BLK);
        o.u64(self.slice.start);
        o.u64(self.slice.sectors);
        o.u8(u8::from(self.slice.read_only));
        put_transport(&mut o, &self.transport);
        put_queue(&mut o, self.queue_ref());
        Ok(o.0)
    }

    /// Takes a state saved by [`Blk::save_state`] from a device over the
    /// same slice; on error nothing changed. Requests on the disk must be
    /// none (a stopped VM's device).
    pub fn restore_state(
        &mut self,
        bytes: &[u8],
        mem: &impl GuestMemory,
    ) -> Result<(), StateError> {
        if !self.quiet() {
            return Err(StateError::Busy);
        }
        let mut i = In(bytes);
        header(&mut i, KIND_BLK)?;
        let (start, sectors, read_only) = (i.u64()?, i.u64()?, i.bool()?);
        if start != self.slice.start
            || sectors != self.slice.sectors
            || read_only != self.slice.read_only
        {
            return Err(StateError::Slice);
        }
        let transport = get_transport(&mut i, &self.transport)?;
        let queue = get_queue(&mut i, 0, &transport, mem)?;
        i.end()?;
        self.transport = transport;
        self.set_queue(queue);
        Ok(())
    }
}

impl Net {
    /// The device's state (it holds nothing in flight: a frame is copied
    /// whole in one call).
    pub fn save_state(&self) -> Vec<u8> {
        let mut o = Out(Vec::with_capacity(160));
        o.u8(STATE_VERSION);
        o.u8(KIND_NET);
        o.0.extend_from_slice(&self.mac);
        // An announcement the driver has not acknowledged yet goes too.
        o.u16(self.status());
        put_transport(&mut o, &self.transport);
        for q in self.queue_refs() {
            put_queue(&mut o, q);
        }
        o.0
    }

    /// Takes a state saved by [`Net::save_state`] from a device with the
    /// same MAC; on error nothing changed.
    pub fn restore_state(
        &mut self,
        bytes: &[u8],
        mem: &impl GuestMemory,
    ) -> Result<(), StateError> {
        let mut i = In(bytes);
        header(&mut i, KIND_NET)?;
        if i.take::<6>()? != self.mac {
            return Err(StateError::Device);
        }
        let status = i.u16()?;
        if status & !(crate::net::S_LINK_UP | crate::net::S_ANNOUNCE) != 0
            || status & crate::net::S_LINK_UP == 0
        {
            return Err(StateError::Status);
        }
        let transport = get_transport(&mut i, &self.transport)?;
        let rx = get_queue(&mut i, 0, &transport, mem)?;
        let tx = get_queue(&mut i, 1, &transport, mem)?;
        let ctrl = get_queue(&mut i, 2, &transport, mem)?;
        i.end()?;
        self.transport = transport;
        self.set_queues([rx, tx, ctrl]);
        self.set_status(status);
        Ok(())
    }
}

fn header(i: &mut In, kind: u8) -> Result<(), StateError> {
    let v = i.u8()?;
    if v != STATE_VERSION {
        return Err(StateError::Version(v));
    }
    if i.u8()? != kind {
        return Err(StateError::Kind);
    }
    Ok(())
}
