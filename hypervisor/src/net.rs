//! Shared network (issue 11): virtual switches between VMs' virtio-net
//! devices, and an uplink to the board's physical NIC, a virtio-net
//! device the hypervisor drives with `virtio-drivers`.
//!
//! Each `[[switch]]` is a learning Ethernet switch (`bulkhead_virtio::
//! switch`, pure). Its ports are, in order: the uplink (if the switch has
//! it), then every `[[vm.net]]` that names it, in config order. A frame a
//! VM sends is forwarded on the sending vCPU's pCPU, in its QueueNotify
//! trap: the decision under the switch's lock, then each delivery under
//! the receiving device's lock alone (no two device locks are ever held
//! together). Frames from the uplink arrive on the physical NIC's
//! interrupt, which goes to the console pCPU (never a critical VM's).

use crate::system;
use crate::virtio::El2Hal;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use bulkhead_virtio::net::MAX_FRAME;
use bulkhead_virtio::offload::{self, Offload};
use bulkhead_virtio::switch::{self, Dest, Switch};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use spin::Mutex;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

/// The physical NIC's queue size: receive buffers posted, and frames in
/// flight on transmit. (`VirtIONetRaw` holds per-descriptor state inline
/// and is built on the boot stack: 64 overflowed its 64 KiB.)
const UPLINK_QUEUE: usize = 16;
/// One buffer: the virtio-net header and the largest frame.
const RX_BUF: usize = 2048;
/// How long a transmit waits for a free buffer before it drops the frame
/// (the NIC has stopped taking them), in ms.
const TX_WAIT_MS: u64 = 100;
/// Hosts the uplink may teach each switch, besides the VMs' own MACs.
const LEARNED: usize = 256;

/// Where a switch port leads.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    Uplink,
    /// `[[vm.net]]` `net` of config VM `vm`: its virtio device `dev`.
    Vm {
        vm: u16,
        dev: usize,
    },
}

pub struct SwitchHw {
    pub name: String,
    pub ports: Vec<Port>,
    pub table: Mutex<Switch>,
}

static SWITCHES: spin::Once<Vec<SwitchHw>> = spin::Once::new();

pub fn switches() -> &'static [SwitchHw] {
    SWITCHES.get().map_or(&[], Vec::as_slice)
}

/// Builds the switches from the config: for each, its ports (see the
/// module comment), with each VM port's MAC fixed in its table. Returns,
/// per config VM and per `[[vm.net]]`, the (switch, port) it got.
#[inline(never)]
pub fn build(cfg: &bulkhead_config::SystemConfig) -> Vec<Vec<(usize, usize)>> {
    let mut of_vm: Vec<Vec<(usize, usize)>> = cfg.vms.iter().map(|_| Vec::new()).collect();
    let mut all = Vec::new();
    for (si, sc) in cfg.switches.iter().enumerate() {
        let mut ports = Vec::new();
        let mut macs = Vec::new();
        if sc.uplink {
            ports.push(Port::Uplink);
            macs.push(None);
        }
        for (vi, vc) in cfg.vms.iter().enumerate() {
            for (k, n) in vc.nets.iter().enumerate() {
                if usize::from(n.switch) != si {
                    continue;
                }
                if let Some(v) = of_vm.get_mut(vi) {
                    v.push((si, ports.len()));
                }
                ports.push(Port::Vm {
                    vm: vi as u16,
                    dev: vc.disks.len() + k,
                });
                macs.push(Some(n.mac));
            }
        }
        log::info!(
            "switch '{}': {} port(s){}",
            sc.name,
            ports.len(),
            if sc.uplink { ", port 0 the uplink" } else { "" }
        );
        all.push(SwitchHw {
            name: sc.name.clone(),
            ports,
            table: Mutex::new(Switch::new(macs, LEARNED)),
        });
    }
    SWITCHES.call_once(|| all);
    of_vm
}

/// A frame that came in on `port` of switch `sw`.
pub fn send(sw: usize, port: usize, frame: &[u8], off: &Offload) {
    let Some(s) = switches().get(sw) else {
        return;
    };
    let dest = s.table.lock().forward(port, frame);
    match dest {
        Dest::Port(p) => deliver(s, p, frame, off),
        Dest::Flood => {
            for p in (0..s.ports.len()).filter(|&p| p != port) {
                deliver(s, p, frame, off);
            }
        }
        Dest::Drop(_) => {}
    }
}

fn deliver(s: &SwitchHw, port: usize, frame: &[u8], off: &Offload) {
    match s.ports.get(port) {
        Some(Port::Uplink) => uplink_send(frame, off),
        Some(&Port::Vm { vm, dev }) => {
            let Some(vm) = system::vm_by_config(vm) else {
                return;
            };
            if let Some(d) = vm.virtio.get(dev) {
                crate::virtio::net_deliver(vm, d, frame, off);
            }
        }
        None => {}
    }
}

/// How many times a VM that came from elsewhere announces its MACs.
pub const ANNOUNCE_ROUNDS: u32 = 5;

/// Milliseconds from round `sent` of the announcements to the next: 50,
/// 150, 250, 350, the schedule of QEMU's own `announce-self` defaults
/// (initial 50 ms, step 100 ms, 5 rounds). One frame can be lost on the
/// way, or reach a switch before its tables forget the old port; the
/// rounds after it see to that.
fn announce_gap_ms(sent: u32) -> u64 {
    50 + 100 * u64::from(sent.saturating_sub(1))
}

/// A VM's announcement rounds still to come: (its index in
/// `system::vms`, rounds sent, when the next is due). Serviced by the EL2
/// timer of the pCPU that started them (`announce_due`).
static ROUNDS: Mutex<Vec<(usize, u32, u64)>> = Mutex::new(Vec::new());

/// VM `vm` runs (booted, restarted, restored or migrated in): each of its
/// ports holds its MAC again. With `announce` (it came from elsewhere)
/// each port also sends [`switch::announce`] of its MAC, flooded to the
/// switch's other ports and out of the uplink, so the hosts and switches
/// behind it send the VM's traffic here from now on rather than where it
/// was; [`ANNOUNCE_ROUNDS`] times in all, the later ones from this pCPU's
/// EL2 timer.
pub fn vm_started(vm: &crate::vm::Vm, announce: bool) {
    for (switch, port) in ports_of(vm) {
        if let Some(s) = switches().get(switch) {
            s.table.lock().claim(port);
        }
    }
    if !announce || ports_of(vm).next().is_none() {
        return;
    }
    announce_ports(vm, 1);
    let next = crate::sched::ms(announce_gap_ms(1)).saturating_add(crate::sched::now());
    let mut rounds = ROUNDS.lock();
    rounds.retain(|r| r.0 != usize::from(vm.id.0));
    rounds.push((usize::from(vm.id.0), 1, next));
    let at = rounds.iter().map(|r| r.2).min();
    drop(rounds);
    crate::sched::set_announce_deadline(at);
}

/// Round `round` of `vm`'s announcements: one from each of its ports.
fn announce_ports(vm: &crate::vm::Vm, round: u32) {
    for (switch, port) in ports_of(vm) {
        let Some(s) = switches().get(switch) else {
            continue;
        };
        let mac = s.table.lock().mac_of(port);
        let Some(mac) = mac else {
            continue;
        };
        send(switch, port, &switch::announce(&mac), &Offload::default());
        let [a, b, c, d, e, f] = mac;
        log::info!(
            "{}: announced MAC {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x} on switch '{}' ({round} of {ANNOUNCE_ROUNDS})",
            vm.name,
            s.name
        );
    }
}

/// The EL2 timer found a round of announcements due: every VM whose next
/// round is due sends it, unless it no longer runs here (stopped, or gone
/// on to another machine), which ends its rounds.
pub fn announce_due() {
    let t = crate::sched::now();
    let mut due = Vec::new();
    let at = {
        let mut rounds = ROUNDS.lock();
        for r in rounds.iter_mut().filter(|r| r.2 <= t) {
            r.1 += 1;
            due.push((r.0, r.1));
            r.2 = t.saturating_add(crate::sched::ms(announce_gap_ms(r.1)));
        }
        rounds.retain(|r| r.1 < ANNOUNCE_ROUNDS);
        rounds.iter().map(|r| r.2).min()
    };
    crate::sched::set_announce_deadline(at);
    for (i, round) in due {
        let Some(vm) = system::vms().get(i) else {
            continue;
        };
        let running = vm.state.lock().lifecycle == crate::vm::Lifecycle::Running;
        if running && !vm.paused.load(Ordering::Acquire) {
            announce_ports(vm, round);
        } else {
            ROUNDS.lock().retain(|r| r.0 != i);
        }
    }
}

/// VM `vm` stopped (or left for another machine): its MACs may be learned
/// on the uplink from now on (`Switch::release`).
pub fn vm_stopped(vm: &crate::vm::Vm) {
    for (switch, port) in ports_of(vm) {
        if let Some(s) = switches().get(switch) {
            s.table.lock().release(port);
        }
    }
}

/// The (switch, port) of each of the VM's NICs.
fn ports_of(vm: &crate::vm::Vm) -> impl Iterator<Item = (usize, usize)> + '_ {
    vm.virtio.iter().filter_map(|d| match d.model {
        crate::virtio::Model::Net { switch, port, .. } => Some((switch, port)),
        crate::virtio::Model::Blk { .. } => None,
    })
}

/// Counters of the physical NIC, for `stats`.
#[derive(Clone, Copy, Default)]
pub struct UplinkStats {
    pub tx: u64,
    pub rx: u64,
    pub tx_errors: u64,
    pub rx_errors: u64,
}

pub struct Uplink {
    pub base: u64,
    nic: VirtIONetRaw<El2Hal, MmioTransport<'static>, UPLINK_QUEUE>,
    bufs: Vec<Box<[u8; RX_BUF]>>,
    /// The receive token each buffer is posted under.
    tokens: Vec<Option<u16>>,
    /// Transmit buffers, and the token and length each is in flight under
    /// (`None`: free). A frame is queued and the sender goes on; a buffer
    /// is taken back once the NIC has used it, so up to the queue's size
    /// frames are on their way at once.
    tx_bufs: Vec<Box<[u8; RX_BUF]>>,
    tx_inflight: Vec<Option<(u16, usize)>>,
    pub stats: UplinkStats,
}

// SAFETY: the NIC's MMIO page, its queues' DMA memory and the receive
// buffers belong to the uplink alone and are used only under its mutex.
unsafe impl Send for Uplink {}

static UPLINK: spin::Once<Option<Mutex<Uplink>>> = spin::Once::new();

pub fn uplink() -> Option<&'static Mutex<Uplink>> {
    UPLINK.get().and_then(Option::as_ref)
}

/// The physical NIC's interrupt, once it is up.
pub fn uplink_intid() -> Option<u32> {
    let v = UPLINK_INTID.load(Ordering::Relaxed);
    (v != u32::MAX).then_some(v)
}

/// [`uplink_intid`] without the uplink's lock (read on the interrupt path).
static UPLINK_INTID: AtomicU32 = AtomicU32::new(u32::MAX);

/// Brings up the first virtio-net among the host's virtio-mmio nodes.
pub fn probe(nodes: &[(u64, u64, Option<u32>)]) {
    let mut found = None;
    for &(base, size, intid) in nodes {
        // Only the NIC gets a transport: dropping one resets its device.
        if crate::virtio::device_id(base) != Some(bulkhead_virtio::net::DEVICE_ID) {
            continue;
        }
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: a virtio-mmio register page from the host device tree,
        // mapped as Device memory at EL2 and used by nothing else.
        let Ok(transport) = (unsafe { MmioTransport::new(header, size as usize) }) else {
            continue;
        };
        if transport.device_type() != DeviceType::Network {
            continue;
        }
        match Uplink::new(base, transport) {
            Ok(u) => {
                log::info!(
                    "nic0: virtio-net at {base:#x}, MAC {:02x?}, irq {intid:?}: the uplink",
                    u.nic.mac_address()
                );
                if let Some(i) = intid {
                    UPLINK_INTID.store(i, Ordering::Relaxed);
                }
                found = Some(Mutex::new(u));
                break;
            }
            Err(e) => log::error!("virtio-net at {base:#x} not usable: {e:?}"),
        }
    }
    UPLINK.call_once(|| found);
}

impl Uplink {
    fn new(base: u64, transport: MmioTransport<'static>) -> virtio_drivers::Result<Uplink> {
        let nic = VirtIONetRaw::new(transport)?;
        let mut u = Uplink {
            base,
            nic,
            bufs: (0..UPLINK_QUEUE).map(|_| Box::new([0u8; RX_BUF])).collect(),
            tokens: alloc::vec![None; UPLINK_QUEUE],
            tx_bufs: (0..UPLINK_QUEUE).map(|_| Box::new([0u8; RX_BUF])).collect(),
            tx_inflight: alloc::vec![None; UPLINK_QUEUE],
            stats: UplinkStats::default(),
        };
        for i in 0..UPLINK_QUEUE {
            u.post(i)?;
        }
        u.nic.enable_interrupts();
        Ok(u)
    }

    /// Posts receive buffer `i`.
    fn post(&mut self, i: usize) -> virtio_drivers::Result<()> {
        let buf = &mut self.bufs[i][..];
        // SAFETY: the buffer is boxed (it does not move) and is not touched
        // until `receive_complete` with the token recorded here.
        let token = unsafe { self.nic.receive_begin(buf) }?;
        self.tokens[i] = Some(token);
        Ok(())
    }

    /// Whether the NIC has used a receive buffer (a frame, or an error).
    fn has_received(&mut self) -> bool {
        self.nic.poll_receive().is_some()
    }

    /// The next received frame, copied into `out` (its length).
    fn receive(&mut self, out: &mut [u8; MAX_FRAME]) -> Option<usize> {
        let token = self.nic.poll_receive()?;
        let Some(i) = self.tokens.iter().position(|&t| t == Some(token)) else {
            // Not ours: nothing sane to do but stop looking.
            self.stats.rx_errors += 1;
            return None;
        };
        self.tokens[i] = None;
        let buf = &mut self.bufs[i][..];
        // SAFETY: the same buffer that was posted under `token`.
        let r = unsafe { self.nic.receive_complete(token, buf) };
        let len = match r {
            Ok((hdr, len)) if len <= MAX_FRAME && hdr + len <= RX_BUF => {
                out[..len].copy_from_slice(&self.bufs[i][hdr..hdr + len]);
                Some(len)
            }
            _ => {
                self.stats.rx_errors += 1;
                Some(0)
            }
        };
        if self.post(i).is_err() {
            self.stats.rx_errors += 1;
        }
        len
    }

    /// Takes back every transmit buffer the NIC has used.
    fn reap(&mut self) {
        while let Some(token) = self.nic.poll_transmit() {
            let Some(i) = self
                .tx_inflight
                .iter()
                .position(|t| t.is_some_and(|(tok, _)| tok == token))
            else {
                // Not ours: nothing sane to do but stop looking.
                self.stats.tx_errors += 1;
                return;
            };
            let len = self.tx_inflight[i].map_or(0, |(_, len)| len);
            self.tx_inflight[i] = None;
            // SAFETY: the same buffer and length posted under `token`.
            match unsafe { self.nic.transmit_complete(token, &self.tx_bufs[i][..len]) } {
                Ok(_) => self.stats.tx += 1,
                Err(_) => self.stats.tx_errors += 1,
            }
        }
    }

    /// Queues one frame for the NIC without waiting for it to go out;
    /// waits only for a free buffer, and drops the frame (an error in the
    /// counters) if none frees in [`TX_WAIT_MS`].
    fn transmit(&mut self, frame: &[u8]) {
        let deadline = crate::arch::regs::cntpct_el0()
            .saturating_add(crate::arch::regs::cntfrq_el0() / 1000 * TX_WAIT_MS);
        let i = loop {
            self.reap();
            if let Some(i) = self.tx_inflight.iter().position(Option::is_none) {
                break i;
            }
            if crate::arch::regs::cntpct_el0() > deadline {
                self.stats.tx_errors += 1;
                return;
            }
            core::hint::spin_loop();
        };
        let buf = &mut self.tx_bufs[i][..];
        let Ok(hdr) = self.nic.fill_buffer_header(buf) else {
            self.stats.tx_errors += 1;
            return;
        };
        let len = hdr + frame.len();
        let Some(body) = buf.get_mut(hdr..len) else {
            self.stats.tx_errors += 1;
            return;
        };
        body.copy_from_slice(frame);
        // SAFETY: the buffer is boxed (it does not move) and is not touched
        // until `reap` has seen its token used.
        match unsafe { self.nic.transmit_begin(&self.tx_bufs[i][..len]) } {
            Ok(token) => self.tx_inflight[i] = Some((token, len)),
            Err(_) => self.stats.tx_errors += 1,
        }
    }
}

/// Sends a frame out of the physical NIC (queued: [`Uplink::transmit`]).
/// We negotiate no offload with it: a frame that asks for one goes out
/// with its checksum done, or cut into MTU-sized segments.
fn uplink_send(frame: &[u8], off: &Offload) {
    let Some(u) = uplink() else {
        return;
    };
    let mut u = u.lock();
    if off.gso.is_none() && off.csum.is_none() {
        // As it is (the management endpoint's frames, most switched ones):
        // no scratch frame to clear.
        u.transmit(frame);
        return;
    }
    let mut out = [0u8; MAX_FRAME];
    offload::resolve(frame, off, &mut out, |piece| u.transmit(piece));
}

/// A frame from the hypervisor's own endpoint (crate::mgmt), straight out
/// of the physical NIC.
pub fn send_raw(frame: &[u8]) {
    uplink_send(frame, &Offload::default());
}

/// The physical NIC's interrupt: see [`poll_uplink`].
pub fn uplink_interrupt() {
    let Some(u) = uplink() else {
        return;
    };
    {
        let mut u = u.lock();
        u.nic.ack_interrupt();
        u.reap();
    }
    poll_uplink();
}

/// Every frame the NIC has received goes to the management endpoint if it
/// is addressed to it, else (and broadcasts too) to the uplink's switch,
/// one at a time, the NIC's lock released while it is forwarded.
pub fn poll_uplink() {
    let Some(u) = uplink() else {
        return;
    };
    // Polled on every turn of a management session's loop: nothing to do
    // is the common case, and costs no cleared frame.
    if !u.lock().has_received() {
        return;
    }
    let sw = switches()
        .iter()
        .position(|s| matches!(s.ports.first(), Some(Port::Uplink)));
    let mut frame = [0u8; MAX_FRAME];
    loop {
        let got = {
            let mut u = u.lock();
            let got = u.receive(&mut frame);
            if got.is_some_and(|n| n > 0) {
                u.stats.rx += 1;
            }
            got
        };
        match got {
            Some(0) => continue,
            Some(len) => {
                let f = &frame[..len];
                if crate::mgmt::offer(f) {
                    if let Some(sw) = sw {
                        send(sw, 0, f, &Offload::default());
                    }
                }
            }
            None => break,
        }
    }
}
