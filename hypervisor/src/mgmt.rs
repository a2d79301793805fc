//! The management endpoint (docs/snapshot.md): the hypervisor's own IPv4
//! address on the board's physical NIC, beside the VMs' switch ports, with
//! `smoltcp` as its TCP/IP stack. It is a TCP client of the snapshot store
//! (`[board] store`): `snapshot` sends a VM's stream there with
//! `PUT <name>`, `restore` fetches one with `GET <name>`.
//!
//! Frames the uplink receives for the endpoint's MAC come here, broadcasts
//! both here and to the uplink's switch; the endpoint sends straight out
//! of the NIC. A session runs to its end on the pCPU that asked (the
//! console's, from the shell) and polls the NIC itself meanwhile, so VMs'
//! traffic through the uplink keeps flowing during it.

use crate::arch::regs;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bulkhead_config::Management;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use spin::Mutex;

/// Frames waiting for the endpoint, at most this many (more are dropped,
/// as a NIC with a full ring would).
pub const RX_BACKLOG: usize = 256;
/// TCP buffers of a session.
const TCP_BUF: usize = 256 << 10;
/// A session that makes no progress for this long (ms of the counter)
/// fails.
const STALL_MS: u64 = 20_000;
/// The store's answer line, at most.
const REPLY_MAX: usize = 128;
/// Local TCP port of the first session (one per session after it).
const FIRST_PORT: u16 = 49_152;

struct Endpoint {
    cfg: Management,
    iface: Interface,
    next_port: u16,
}

static ENDPOINT: spin::Once<Option<Mutex<Endpoint>>> = spin::Once::new();
static RX: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());
/// The endpoint's MAC, outside [`ENDPOINT`]'s lock: [`offer`] runs inside
/// a session's NIC polling, which holds that lock.
static MAC: spin::Once<[u8; 6]> = spin::Once::new();

/// Brings the endpoint up if the config gives it an address; needs the
/// uplink (`net::probe` first).
pub fn init(cfg: Option<Management>) {
    ENDPOINT.call_once(|| {
        let m = cfg?;
        if crate::net::uplink().is_none() {
            log::error!(
                "management: board.address is set but the board has no physical NIC: snapshots are off"
            );
            return None;
        }
        MAC.call_once(|| m.mac());
        let mut dev = Nic;
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(m.mac())));
        config.random_seed = regs::cntpct_el0() ^ 0x626c_6b68_6561_6400;
        let mut iface = Interface::new(config, &mut dev, now());
        let [a, b, c, d] = m.ip;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)),
                m.prefix,
            ));
        });
        let [w, x, y, z] = m.store.0;
        log::info!(
            "management: {a}.{b}.{c}.{d}/{} on the physical NIC, MAC {:02x?}; snapshot store {w}.{x}.{y}.{z}:{}",
            m.prefix,
            m.mac(),
            m.store.1
        );
        Some(Mutex::new(Endpoint {
            cfg: m,
            iface,
            next_port: FIRST_PORT,
        }))
    });
}

/// Whether the board has a management endpoint.
pub fn endpoint_configured() -> bool {
    endpoint().is_some()
}

fn endpoint() -> Option<&'static Mutex<Endpoint>> {
    ENDPOINT.get().and_then(Option::as_ref)
}

/// The endpoint's MAC, if it is up.
pub fn mac() -> Option<[u8; 6]> {
    MAC.get().copied()
}

/// A frame from the uplink: kept for the endpoint if it is addressed to it
/// (or broadcast). Returns whether the switch should still see it.
pub fn offer(frame: &[u8]) -> bool {
    let Some(mac) = mac() else {
        return true;
    };
    let Some(dst) = frame.get(..6) else {
        return true;
    };
    let ours = dst == mac;
    if ours || dst == [0xff; 6] {
        let mut rx = RX.lock();
        if rx.len() < RX_BACKLOG {
            rx.push_back(frame.to_vec());
        } else {
            BACKLOG_DROPS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
    !ours
}

/// Frames for the endpoint dropped because [`RX_BACKLOG`] were waiting.
static BACKLOG_DROPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// For `stats`: frames for the endpoint it had no room for.
pub fn backlog_drops() -> u64 {
    BACKLOG_DROPS.load(core::sync::atomic::Ordering::Relaxed)
}

fn now() -> Instant {
    let freq = regs::cntfrq_el0().max(1);
    let t = regs::cntpct_el0();
    Instant::from_micros(((u128::from(t) * 1_000_000) / u128::from(freq)) as i64)
}

fn ms() -> u64 {
    let freq = regs::cntfrq_el0().max(1);
    ((u128::from(regs::cntpct_el0()) * 1000) / u128::from(freq)) as u64
}

/// smoltcp's view of the NIC: frames from [`RX`], frames out through
/// the uplink.
struct Nic;

struct Rx(Vec<u8>);
struct Tx;

impl Device for Nic {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx)> {
        RX.lock().pop_front().map(|f| (Rx(f), Tx))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx> {
        Some(Tx)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// The frame smoltcp is building: one at a time, on the pCPU that holds
/// the endpoint's lock, so this lock never waits. Kept between frames,
/// and cleared for each (no byte of an earlier frame goes out again).
static TX_FRAME: Mutex<Vec<u8>> = Mutex::new(Vec::new());

impl phy::TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = TX_FRAME.lock();
        if frame.len() < len {
            frame.resize(len, 0);
        }
        frame[..len].fill(0);
        let r = f(&mut frame[..len]);
        crate::net::send_raw(&frame[..len]);
        r
    }
}

/// What a session does with the connection once it is up.
pub trait Session {
    /// The request line (without its `\n`) a client sends first; a
    /// server's session sends none.
    fn request(&self) -> Option<String>;
    /// Milliseconds without progress after which the session fails.
    fn stall_ms(&self) -> u64 {
        STALL_MS
    }
    /// Next bytes to send, appended to `out`; `false` once everything is
    /// sent (the session then closes its side).
    fn produce(&mut self, out: &mut Vec<u8>) -> Result<bool, String>;
    /// Whether [`Session::produce`] is to wait until everything sent so
    /// far has been acknowledged (a migration's round is over: what it
    /// decides next depends on the link being empty).
    fn wants_drained(&self) -> bool {
        false
    }
    /// Bytes received. A session that sends its data treats them as the
    /// store's reply line.
    fn consume(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Counters of one session, for the shell.
#[derive(Default, Clone, Copy)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    pub ms: u64,
    /// The peer closed its side (a FIN, not a reset).
    pub peer_closed: bool,
}

/// Runs `s` against the store: connect, request, exchange until both sides
/// have closed. Errors name what failed.
pub fn run(s: &mut dyn Session) -> Result<Transfer, String> {
    let ep = endpoint().ok_or("no management endpoint (board.address and board.store)")?;
    let store = ep.lock().cfg.store;
    connect(s, store)
}

/// What a session's pCPU still does while the session holds it: the
/// uplink's frames, and the critical VMs' console lines, which wait for
/// this pCPU to print them (their kick stays pending meanwhile).
fn serve_meanwhile() {
    crate::net::poll_uplink();
    crate::console::kicked();
}

/// Runs `s` as a client of `to` (address, TCP port).
pub fn connect(s: &mut dyn Session, to: ([u8; 4], u16)) -> Result<Transfer, String> {
    let ep = endpoint().ok_or("no management endpoint (board.address and board.store)")?;
    let mut ep = ep.lock();
    let [a, b, c, d] = to.0;
    let remote = (IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)), to.1);
    let port = ep.next_port;
    ep.next_port = if port == u16::MAX {
        FIRST_PORT
    } else {
        port + 1
    };
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(new_socket());
    {
        let Endpoint { iface, .. } = &mut *ep;
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(iface.context(), remote, port)
            .map_err(|e| format!("cannot connect to {a}.{b}.{c}.{d}:{}: {e:?}", to.1))?;
    }
    exchange(&mut ep, &mut sockets, h, s)
}

/// Runs `s` as the server of one connection to `port`, waiting at most
/// `wait_ms` for it to come.
pub fn accept(s: &mut dyn Session, port: u16, wait_ms: u64) -> Result<Transfer, String> {
    let ep = endpoint().ok_or("no management endpoint (board.address)")?;
    let mut ep = ep.lock();
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(new_socket());
    sockets
        .get_mut::<tcp::Socket>(h)
        .listen(port)
        .map_err(|e| format!("cannot listen on port {port}: {e:?}"))?;
    let start = ms();
    loop {
        serve_meanwhile();
        let Endpoint { iface, .. } = &mut *ep;
        iface.poll(now(), &mut Nic, &mut sockets);
        if sockets.get_mut::<tcp::Socket>(h).state() != tcp::State::Listen {
            break;
        }
        if ms().saturating_sub(start) > wait_ms {
            return Err(format!(
                "nothing connected to port {port} within {} s",
                wait_ms / 1000
            ));
        }
        // Nothing to do until a frame comes (the NIC's interrupt wakes
        // it) or smoltcp's own timers want a poll.
        crate::system::doze(1);
    }
    exchange(&mut ep, &mut sockets, h, s)
}

/// Resets the connection (the other end learns at once that the session
/// failed) and lets the RST out.
fn reset(iface: &mut Interface, sockets: &mut SocketSet<'_>, h: smoltcp::iface::SocketHandle) {
    sockets.get_mut::<tcp::Socket>(h).abort();
    iface.poll(now(), &mut Nic, sockets);
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUF]),
        tcp::SocketBuffer::new(vec![0; TCP_BUF]),
    );
    // A bulk stream one way: every segment is acknowledged at once (a
    // delayed ACK holds the sender's window shut for smoltcp's 10 ms), and
    // nothing waits for Nagle.
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    s
}

/// The session on a connection being made or made: request (a client's),
/// exchange until both sides have closed.
fn exchange(
    ep: &mut Endpoint,
    sockets: &mut SocketSet<'_>,
    h: smoltcp::iface::SocketHandle,
    s: &mut dyn Session,
) -> Result<Transfer, String> {
    let start = ms();
    let stall = s.stall_ms();
    let mut last_progress = start;
    let mut pending: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut requested = false;
    let mut producing = true;
    let mut closed_ours = false;
    let mut t = Transfer::default();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        serve_meanwhile();
        let Endpoint { iface, .. } = &mut *ep;
        iface.poll(now(), &mut Nic, sockets);
        let sock = sockets.get_mut::<tcp::Socket>(h);
        let mut progress = false;
        if matches!(
            sock.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        ) {
            t.peer_closed = true;
        }
        if sock.may_send() {
            if !requested {
                if let Some(line) = s.request() {
                    pending.extend_from_slice(line.as_bytes());
                    pending.push(b'\n');
                }
                requested = true;
            }
            loop {
                if pos == pending.len() {
                    pending.clear();
                    pos = 0;
                    if producing && s.wants_drained() && sock.send_queue() > 0 {
                        break;
                    }
                    if producing {
                        producing = match s.produce(&mut pending) {
                            Ok(p) => p,
                            Err(e) => {
                                reset(iface, sockets, h);
                                return Err(e);
                            }
                        };
                        if !pending.is_empty() {
                            continue;
                        }
                    }
                    break;
                }
                match sock.send_slice(&pending[pos..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        pos += n;
                        t.sent += n as u64;
                        progress = true;
                    }
                    Err(e) => return Err(format!("send failed: {e:?}")),
                }
            }
            if !producing && pos == pending.len() && !closed_ours {
                sock.close();
                closed_ours = true;
            }
        }
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    t.received += n as u64;
                    progress = true;
                    if let Err(e) = s.consume(&buf[..n]) {
                        reset(iface, sockets, h);
                        return Err(e);
                    }
                }
                Err(e) => return Err(format!("receive failed: {e:?}")),
            }
        }
        if !sock.is_open() {
            if !requested {
                return Err("the connection was refused".into());
            }
            break;
        }
        let now_ms = ms();
        if progress {
            last_progress = now_ms;
        } else if now_ms.saturating_sub(last_progress) > stall {
            let state = sock.state();
            sock.abort();
            iface.poll(now(), &mut Nic, sockets);
            return Err(format!(
                "the other end stopped answering ({} s without progress, state {state})",
                stall / 1000
            ));
        }
    }
    if !closed_ours && producing {
        return Err("the other end closed the connection before everything was sent".into());
    }
    t.ms = ms().saturating_sub(start);
    Ok(t)
}

/// Collects the store's one-line reply to a `PUT`.
#[derive(Default)]
pub struct Reply(Vec<u8>);

impl Reply {
    /// Whether the whole line has come.
    pub fn complete(&self) -> bool {
        self.0.ends_with(b"\n")
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.0.len() + data.len() > REPLY_MAX {
            return Err("the store's reply is too long".into());
        }
        self.0.extend_from_slice(data);
        Ok(())
    }

    /// `Ok(bytes stored)` for `OK <n>`, the store's reason otherwise.
    pub fn outcome(&self) -> Result<u64, String> {
        let text = core::str::from_utf8(&self.0).unwrap_or("(not text)").trim();
        if let Some(n) = text.strip_prefix("OK ") {
            return n
                .parse()
                .map_err(|_| format!("the store answered \"{text}\""));
        }
        if text.is_empty() {
            return Err("the store closed without an answer".into());
        }
        Err(format!("the store answered \"{text}\""))
    }
}
