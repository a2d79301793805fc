//! The host end of a QEMU test network link: a small Ethernet endpoint that
//! answers ARP and ICMP echo and serves a line-echo TCP server, so that VMs
//! behind Bulkhead's virtual switch have something real to talk to.
//!
//! # The link
//!
//! The integration tests give QEMU a physical NIC whose backend is
//! `-netdev stream,server=off,addr.type=inet,addr.host=127.0.0.1,...`
//! ([`NetPeer::netdev_args`]): QEMU connects, as a client, to the TCP port
//! this peer listens on, and the two ends exchange raw Ethernet frames (no
//! FCS, no virtio-net header) over that connection. Each frame is preceded by
//! its length as a 4-byte big-endian integer:
//!
//! ```text
//! | len: u32 BE | len bytes of Ethernet frame | len: u32 BE | frame | ...
//! ```
//!
//! That is QEMU's framing for `-netdev stream` and `-netdev socket` alike:
//! `net_stream_data_receive` in QEMU's `net/stream_data.c` (formerly
//! `net/stream.c`) writes `uint32_t len = htonl(size)` and then the frame,
//! and the reading side, `net_fill_rstate` in `net/net.c`, reassembles the
//! byte stream by first collecting four bytes, `ntohl`, then that many bytes.
//! TCP delivers the stream in arbitrary pieces, so both directions here are
//! buffered: [`FrameDecoder`] keeps partial lengths and partial frames across
//! reads, and outgoing frames wait in a queue until the non-blocking socket
//! takes them.
//!
//! With `reconnect-ms` (QEMU 9.2 and later; checked against the installed
//! QEMU 10, which rejects unknown `-netdev stream` options) QEMU connects
//! again when the link drops, so the peer accepts one connection at a time
//! and goes back to accepting after each one closes. Each link starts with a
//! fresh interface (ARP cache, TCP state).
//!
//! # Why smoltcp
//!
//! Answering a ping is easy; a TCP server that survives retransmission,
//! windowing, out-of-order segments and half-closes is not, and a test peer
//! with its own bugs would make guest networking failures ambiguous. So the
//! protocol work is done by `smoltcp`, a widely used, well-kept TCP/IP stack
//! with a std-host mode, and this module is only glue: a `phy::Device` over
//! the framed TCP stream, the poll loop, the echo server and the counters.
//!
//! # Safety of the host
//!
//! The only real sockets are the listener on 127.0.0.1 and the connections
//! it accepts from loopback. The peer's IP address lives only inside the
//! emulated Ethernet carried by that connection; nothing is ever sent to any
//! other host address.

// Not wired into the integration tests yet; the module's own tests use all of it.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress,
    Icmpv4Message, Icmpv4Packet, IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv4Address,
    Ipv4Packet,
};

/// The `-netdev` id [`NetPeer::netdev_args`] uses; the NIC names it with
/// `-device virtio-net-device,netdev=uplink,mac=...`.
pub const NETDEV_ID: &str = "uplink";
/// How soon QEMU tries again when the link is down.
const RECONNECT_MS: u32 = 200;
/// Largest Ethernet frame sent: 1500 bytes of IP plus the 14-byte header.
const ETHERNET_MTU: usize = 1514;
/// Largest frame accepted, QEMU's own `NET_BUFSIZE` (4096 + 65536); a longer
/// length prefix means the stream is out of step and the link is dropped.
const MAX_FRAME: usize = 4096 + 65536;
/// Outgoing bytes queued on the link before the device stops taking frames.
const MAX_TX_BACKLOG: usize = 1 << 20;
/// TCP sessions served at once (one listening socket each).
const TCP_SLOTS: usize = 4;
/// Each TCP socket's receive and send buffer.
const TCP_BUFFER: usize = 16 * 1024;
/// A line longer than this is echoed in pieces.
const MAX_LINE: usize = 4096;
/// Log entries kept; later ones are only counted.
const LOG_CAP: usize = 256;
/// Pause of the poll loop when nothing moved.
const IDLE_SLEEP: Duration = Duration::from_millis(1);
/// Pause between accept attempts while no link is up.
const ACCEPT_SLEEP: Duration = Duration::from_millis(5);

/// Who the peer is on the emulated Ethernet, and what it serves.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The peer's MAC address (unicast).
    pub mac: [u8; 6],
    /// The peer's IPv4 address on the link.
    pub ip: [u8; 4],
    /// The link's prefix length (1..=32); only hosts inside it get answers.
    pub prefix: u8,
    /// The TCP port of the line-echo server.
    pub tcp_port: u16,
    /// The first line each TCP session receives (a "\n" is added).
    pub greeting: String,
}

/// What the peer saw, for test assertions and failure logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    /// The 127.0.0.1 port the peer listens on.
    pub port: u16,
    /// Link connections accepted (QEMU connecting, or reconnecting).
    pub connections: u64,
    /// Ethernet frames received on the link, and their bytes.
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Ethernet frames sent on the link, and their bytes.
    pub frames_out: u64,
    pub bytes_out: u64,
    /// ARP replies and ICMP echo replies among the frames sent.
    pub arp_replies: u64,
    pub icmp_echo_replies: u64,
    /// TCP sessions established, and those that have ended since.
    pub tcp_sessions: u64,
    pub tcp_sessions_closed: u64,
    /// TCP payload bytes received and sent (greetings and echoes).
    pub tcp_bytes_in: u64,
    pub tcp_bytes_out: u64,
    /// Lines echoed back.
    pub lines_echoed: u64,
    /// Events in order: links, TCP sessions, errors; each with the time
    /// since the peer started.
    pub log: Vec<String>,
    /// Events past [`LOG_CAP`], not kept.
    pub log_dropped: u64,
}

impl fmt::Display for PeerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "netpeer on 127.0.0.1:{}: {} link connection(s); frames in {} ({} B), out {} ({} B); \
             {} ARP repl(ies), {} ICMP echo repl(ies); TCP: {} session(s), {} ended, \
             {} B in, {} B out, {} line(s) echoed",
            self.port,
            self.connections,
            self.frames_in,
            self.bytes_in,
            self.frames_out,
            self.bytes_out,
            self.arp_replies,
            self.icmp_echo_replies,
            self.tcp_sessions,
            self.tcp_sessions_closed,
            self.tcp_bytes_in,
            self.tcp_bytes_out,
            self.lines_echoed,
        )?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        if self.log_dropped > 0 {
            writeln!(f, "  ({} later event(s) not kept)", self.log_dropped)?;
        }
        Ok(())
    }
}

/// The report, shared between the peer's thread and its owner.
struct Shared {
    started: std::time::Instant,
    report: Mutex<PeerReport>,
}

impl Shared {
    fn new(port: u16) -> Arc<Shared> {
        Arc::new(Shared {
            started: std::time::Instant::now(),
            report: Mutex::new(PeerReport {
                port,
                ..PeerReport::default()
            }),
        })
    }

    fn report(&self) -> MutexGuard<'_, PeerReport> {
        // A panic elsewhere must not hide the counters from a failing test.
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, event: impl fmt::Display) {
        let at = self.started.elapsed().as_secs_f64();
        let mut report = self.report();
        if report.log.len() < LOG_CAP {
            report.log.push(format!("[{at:8.3}s] {event}"));
        } else {
            report.log_dropped += 1;
        }
    }
}

/// The host end of the link; see the module docs. Dropping it stops it too.
pub struct NetPeer {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NetPeer {
    /// Listens on 127.0.0.1:0 (an ephemeral port) for QEMU's stream netdev
    /// to connect, and serves each connection on a thread of its own.
    pub fn start(config: PeerConfig) -> Result<NetPeer> {
        ensure!(
            (1..=32).contains(&config.prefix),
            "netpeer: prefix /{} is not 1..=32",
            config.prefix
        );
        let mac = EthernetAddress(config.mac);
        ensure!(mac.is_unicast(), "netpeer: MAC {mac} is not unicast");
        let ip = Ipv4Address::from(config.ip);
        ensure!(
            !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast(),
            "netpeer: {ip} is not a host address"
        );
        ensure!(config.tcp_port != 0, "netpeer: TCP port 0");

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("netpeer: listening on 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Shared::new(port);
        let stop = Arc::new(AtomicBool::new(false));
        shared.note(format_args!(
            "listening on 127.0.0.1:{port} as {mac} {ip}/{}, TCP echo on port {}",
            config.prefix, config.tcp_port
        ));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("netpeer-{port}"))
                .spawn(move || serve(&listener, &config, &shared, &stop))
                .context("netpeer: starting its thread")?
        };
        Ok(NetPeer {
            port,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The 127.0.0.1 port QEMU connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The QEMU arguments for this peer's netdev, whose id is [`NETDEV_ID`].
    pub fn netdev_args(&self) -> Vec<String> {
        vec![
            "-netdev".to_string(),
            format!(
                "stream,id={NETDEV_ID},server=off,addr.type=inet,addr.host=127.0.0.1,\
                 addr.port={},reconnect-ms={RECONNECT_MS}",
                self.port
            ),
        ]
    }

    /// What happened so far.
    pub fn report(&self) -> PeerReport {
        self.shared.report().clone()
    }

    /// Stops the peer (dropping any link) and says what happened.
    pub fn stop(mut self) -> PeerReport {
        self.shutdown();
        self.report()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                self.shared.note("the peer's thread panicked");
            }
        }
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The peer's thread: one link at a time until told to stop.
fn serve(listener: &TcpListener, config: &PeerConfig, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                if !from.ip().is_loopback() {
                    shared.note(format_args!("refused a link from {from}: not loopback"));
                    continue;
                }
                shared.report().connections += 1;
                shared.note(format_args!("link up: connection from {from}"));
                match run_link(stream, config, shared, stop) {
                    Ok(LinkEnd::Closed) => shared.note("link down: closed by the other end"),
                    Ok(LinkEnd::Stopped) => shared.note("link down: peer stopped"),
                    Err(e) => shared.note(format_args!("link down: {e:#}")),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_SLEEP),
            Err(e) => {
                shared.note(format_args!("accept failed: {e}"));
                thread::sleep(ACCEPT_SLEEP * 10);
            }
        }
    }
}

enum LinkEnd {
    Closed,
    Stopped,
}

/// Runs the interface and the TCP server over one link until it closes.
fn run_link(
    stream: TcpStream,
    config: &PeerConfig,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
) -> Result<LinkEnd> {
    let mut device = StreamDevice::new(stream, shared.clone())?;
    let cidr = IpCidr::new(IpAddress::from(Ipv4Address::from(config.ip)), config.prefix);
    let mut iface = interface(config.mac, cidr, &mut device);
    let mut sockets = SocketSet::new(Vec::new());
    let mut server = EchoServer::new(&mut sockets, config);
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break LinkEnd::Stopped;
        }
        let mut busy = match device.fill()? {
            Fill::Eof => break LinkEnd::Closed,
            Fill::Data => true,
            Fill::Idle => false,
        };
        iface.poll(Instant::now(), &mut device, &mut sockets);
        if server.service(&mut sockets, shared) {
            // Send what the server just queued without waiting a round.
            iface.poll(Instant::now(), &mut device, &mut sockets);
            busy = true;
        }
        busy |= device.flush()?;
        if !busy {
            thread::sleep(IDLE_SLEEP);
        }
    };
    server.drop_all(shared);
    Ok(end)
}

/// A smoltcp interface on `device` with one address.
fn interface(mac: [u8; 6], cidr: IpCidr, device: &mut StreamDevice) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    // Seeds TCP initial sequence numbers; it need not be good, only varied.
    config.random_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x6e65_7470_6565_7221, |d| d.as_nanos() as u64);
    let mut iface = Interface::new(config, device, Instant::now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(cidr)
            .expect("a new interface has room for one address");
    });
    iface
}

/// Turns the length-prefixed byte stream back into frames, across reads
/// that end anywhere: inside a length, inside a frame, or between them.
#[derive(Default)]
struct FrameDecoder {
    pending: Vec<u8>,
}

impl FrameDecoder {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived; an error when the length
    /// prefix cannot be right.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let Some(prefix) = self.pending.first_chunk::<4>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame length {len} is over {MAX_FRAME}: stream out of step"),
                ));
            }
            if self.pending.len() < 4 + len {
                return Ok(None);
            }
            let frame = self.pending[4..4 + len].to_vec();
            self.pending.drain(..4 + len);
            // QEMU sends no empty frames; skip one rather than hand it on.
            if !frame.is_empty() {
                return Ok(Some(frame));
            }
        }
    }
}

/// Appends `frame` to `out` with its length prefix.
fn encode_frame(out: &mut Vec<u8>, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("an Ethernet frame's length fits in u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

/// What one [`StreamDevice::fill`] found.
enum Fill {
    Idle,
    Data,
    Eof,
}

/// A smoltcp `phy::Device` over the framed, non-blocking TCP stream.
struct StreamDevice {
    stream: TcpStream,
    decoder: FrameDecoder,
    rx: VecDeque<Vec<u8>>,
    tx: TxQueue,
}

/// Frames on their way out: encoded, waiting for the socket to take them.
struct TxQueue {
    out: Vec<u8>,
    shared: Arc<Shared>,
}

impl StreamDevice {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> io::Result<StreamDevice> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(StreamDevice {
            stream,
            decoder: FrameDecoder::default(),
            rx: VecDeque::new(),
            tx: TxQueue {
                out: Vec::new(),
                shared,
            },
        })
    }

    /// Reads whatever the stream has and queues the whole frames in it.
    fn fill(&mut self) -> io::Result<Fill> {
        let mut buf = [0u8; 16 * 1024];
        let mut fill = Fill::Idle;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    fill = Fill::Data;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let (mut frames, mut bytes) = (0, 0);
        while let Some(frame) = self.decoder.next_frame()? {
            frames += 1;
            bytes += frame.len() as u64;
            self.rx.push_back(frame);
        }
        if frames > 0 {
            let mut report = self.tx.shared.report();
            report.frames_in += frames;
            report.bytes_in += bytes;
        }
        Ok(fill)
    }

    /// Writes as much of the queued output as the stream takes; true if any.
    fn flush(&mut self) -> io::Result<bool> {
        let mut written = 0;
        while written < self.tx.out.len() {
            match self.stream.write(&self.tx.out[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx.out.drain(..written);
        Ok(written > 0)
    }
}

impl Device for StreamDevice {
    type RxToken<'a> = RxFrame;
    type TxToken<'a> = TxFrame<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxFrame(frame), TxFrame(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxFrame<'_>> {
        (self.tx.out.len() < MAX_TX_BACKLOG).then_some(TxFrame(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps
    }
}

struct RxFrame(Vec<u8>);

impl phy::RxToken for RxFrame {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

struct TxFrame<'a>(&'a mut TxQueue);

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        encode_frame(&mut self.0.out, &frame);
        let kind = classify(&frame);
        let mut report = self.0.shared.report();
        report.frames_out += 1;
        report.bytes_out += len as u64;
        match kind {
            Some(Reply::Arp) => report.arp_replies += 1,
            Some(Reply::IcmpEcho) => report.icmp_echo_replies += 1,
            None => {}
        }
        result
    }
}

enum Reply {
    Arp,
    IcmpEcho,
}

/// Whether an outgoing frame is an ARP reply or an ICMP echo reply.
fn classify(frame: &[u8]) -> Option<Reply> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).ok()?;
            (arp.operation() == ArpOperation::Reply).then_some(Reply::Arp)
        }
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Icmp {
                return None;
            }
            let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
            (icmp.msg_type() == Icmpv4Message::EchoReply).then_some(Reply::IcmpEcho)
        }
        _ => None,
    }
}

/// The line-echo TCP server: a few listening sockets on one port, each
/// serving one session at a time and listening again after it.
struct EchoServer {
    port: u16,
    greeting: Vec<u8>,
    slots: Vec<Slot>,
}

struct Slot {
    handle: SocketHandle,
    session: Option<Session>,
}

/// One TCP session's state beyond what the socket keeps.
#[derive(Default)]
struct Session {
    remote: Option<IpEndpoint>,
    /// Received bytes of a line not yet ended.
    line: Vec<u8>,
    /// Bytes to send once the socket has room.
    out: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
    lines: u64,
    closing: bool,
}

impl Session {
    fn feed(&mut self, data: &[u8]) -> u64 {
        let before = self.lines;
        for &byte in data {
            if byte == b'\n' {
                self.echo_line();
            } else {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.echo_line();
                }
            }
        }
        self.lines - before
    }

    fn echo_line(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        self.out.extend_from_slice(b"echo: ");
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
        self.line.clear();
        self.lines += 1;
    }
}

impl EchoServer {
    fn new(sockets: &mut SocketSet<'_>, config: &PeerConfig) -> EchoServer {
        let slots = (0..TCP_SLOTS)
            .map(|_| {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                );
                Slot {
                    handle: sockets.add(socket),
                    session: None,
                }
            })
            .collect();
        let mut greeting = config.greeting.clone().into_bytes();
        greeting.push(b'\n');
        EchoServer {
            port: config.tcp_port,
            greeting,
            slots,
        }
    }

    /// Moves every session along; true if anything happened.
    fn service(&mut self, sockets: &mut SocketSet<'_>, shared: &Shared) -> bool {
        let mut busy = false;
        for slot in &mut self.slots {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);

            if !socket.is_active() {
                if let Some(session) = slot.session.take() {
                    shared.report().tcp_sessions_closed += 1;
                    shared.note(format_args!(
                        "tcp: session from {} ended: {} B in, {} B out, {} line(s) echoed",
                        endpoint(session.remote),
                        session.bytes_in,
                        session.bytes_out,
                        session.lines
                    ));
                    busy = true;
                }
            }
            if !socket.is_open() {
                if let Err(e) = socket.listen(self.port) {
                    shared.note(format_args!("tcp: listen on port {}: {e}", self.port));
                }
            }
            if slot.session.is_none() && socket.may_send() {
                let session = Session {
                    remote: socket.remote_endpoint(),
                    out: self.greeting.clone(),
                    ..Session::default()
                };
                shared.report().tcp_sessions += 1;
                shared.note(format_args!(
                    "tcp: session from {} on port {}",
                    endpoint(session.remote),
                    self.port
                ));
                slot.session = Some(session);
                busy = true;
            }
            let Some(session) = slot.session.as_mut() else {
                continue;
            };

            let mut buf = [0u8; 2048];
            while socket.can_recv() {
                match socket.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let lines = session.feed(&buf[..n]);
                        session.bytes_in += n as u64;
                        let mut report = shared.report();
                        report.tcp_bytes_in += n as u64;
                        report.lines_echoed += lines;
                        busy = true;
                    }
                }
            }
            if socket.state() == tcp::State::CloseWait && !session.line.is_empty() {
                // The client closed after a line without "\n": echo it too.
                session.echo_line();
                shared.report().lines_echoed += 1;
            }
            if !session.out.is_empty() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&session.out) {
                    session.out.drain(..n);
                    session.bytes_out += n as u64;
                    shared.report().tcp_bytes_out += n as u64;
                    busy |= n > 0;
                }
            }
            // Close once the client has and everything it is owed is queued.
            if socket.state() == tcp::State::CloseWait && session.out.is_empty() && !session.closing
            {
                socket.close();
                session.closing = true;
                busy = true;
            }
        }
        busy
    }

    /// Logs the sessions a dropped link took with it.
    fn drop_all(&mut self, shared: &Shared) {
        for slot in &mut self.slots {
            if let Some(session) = slot.session.take() {
                shared.report().tcp_sessions_closed += 1;
                shared.note(format_args!(
                    "tcp: session from {} dropped with the link: {} B in, {} B out",
                    endpoint(session.remote),
                    session.bytes_in,
                    session.bytes_out
                ));
            }
        }
    }
}

fn endpoint(remote: Option<IpEndpoint>) -> String {
    remote.map_or_else(|| "?".to_string(), |e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::socket::icmp;
    use smoltcp::wire::Icmpv4Repr;

    /// Addresses from TEST-NET-1 (RFC 5737): they exist only inside the
    /// emulated Ethernet carried over 127.0.0.1.
    const PEER_IP: [u8; 4] = [192, 0, 2, 1];
    const CLIENT_IP: [u8; 4] = [192, 0, 2, 2];
    const PEER_MAC: [u8; 6] = [0x02, 0x42, 0x48, 0x00, 0x00, 0x01];
    const CLIENT_MAC: [u8; 6] = [0x02, 0x42, 0x48, 0x00, 0x00, 0x02];
    const TCP_PORT: u16 = 7;
    const GREETING: &str = "bulkhead netpeer";
    const PING_IDENT: u16 = 0x4248;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    fn config() -> PeerConfig {
        PeerConfig {
            mac: PEER_MAC,
            ip: PEER_IP,
            prefix: 24,
            tcp_port: TCP_PORT,
            greeting: GREETING.to_string(),
        }
    }

    #[test]
    fn decoder_reassembles_frames_split_anywhere() {
        let frames: [&[u8]; 3] = [&[1; 60], &[2; 1514], &[3; 42]];
        let mut stream = Vec::new();
        for frame in frames {
            encode_frame(&mut stream, frame);
        }
        assert_eq!(&stream[..4], &[0, 0, 0, 60]);
        // One byte at a time, then in uneven pieces.
        for piece in [1, 3, 7, 1000, stream.len()] {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames.map(<[u8]>::to_vec), "pieces of {piece}");
            assert!(decoder.pending.is_empty());
        }
    }

    #[test]
    fn decoder_rejects_an_impossible_length() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn netdev_args_name_the_port() {
        let peer = NetPeer::start(config()).unwrap();
        let args = peer.netdev_args();
        assert_eq!(args[0], "-netdev");
        assert!(args[1].starts_with("stream,id=uplink,server=off,addr.type=inet,"));
        assert!(args[1].contains(&format!("addr.host=127.0.0.1,addr.port={},", peer.port())));
        let report = peer.stop();
        assert_eq!(report.connections, 0);
    }

    #[test]
    fn start_rejects_bad_configs() {
        let bad = [
            PeerConfig {
                prefix: 33,
                ..config()
            },
            PeerConfig {
                mac: [0x01, 0, 0, 0, 0, 1],
                ..config()
            },
            PeerConfig {
                ip: [0, 0, 0, 0],
                ..config()
            },
            PeerConfig {
                tcp_port: 0,
                ..config()
            },
        ];
        for config in bad {
            assert!(NetPeer::start(config.clone()).is_err(), "{config:?}");
        }
    }

    /// The other end of the link, as a guest would be: its own smoltcp
    /// interface, framed the same way, over a real 127.0.0.1 connection.
    struct Client {
        device: StreamDevice,
        iface: Interface,
        sockets: SocketSet<'static>,
        deadline: std::time::Instant,
    }

    impl Client {
        fn connect(port: u16) -> Client {
            let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            let mut device = StreamDevice::new(stream, Shared::new(0)).unwrap();
            let cidr = IpCidr::new(IpAddress::from(Ipv4Address::from(CLIENT_IP)), 24);
            let iface = interface(CLIENT_MAC, cidr, &mut device);
            Client {
                device,
                iface,
                sockets: SocketSet::new(Vec::new()),
                deadline: std::time::Instant::now() + TIMEOUT,
            }
        }

        fn poll(&mut self) {
            if std::time::Instant::now() > self.deadline {
                let seen = self.device.tx.shared.report().clone();
                panic!(
                    "timed out; the client sent {} frame(s) and got {}",
                    seen.frames_out, seen.frames_in
                );
            }
            match self.device.fill().unwrap() {
                Fill::Eof => panic!("the peer closed the link"),
                Fill::Data => {}
                Fill::Idle => thread::sleep(IDLE_SLEEP),
            }
            self.iface
                .poll(Instant::now(), &mut self.device, &mut self.sockets);
            self.device.flush().unwrap();
        }

        /// Pings the peer until one echo comes back with the same data.
        fn ping(&mut self) {
            let mut socket = icmp::Socket::new(
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            );
            socket.bind(icmp::Endpoint::Ident(PING_IDENT)).unwrap();
            let handle = self.sockets.add(socket);
            let data = b"netpeer ping";
            let caps = ChecksumCapabilities::default();
            let mut seq_no = 0u16;
            let mut sent_at: Option<std::time::Instant> = None;
            loop {
                let socket = self.sockets.get_mut::<icmp::Socket>(handle);
                let resend = sent_at.is_none_or(|t| t.elapsed() > Duration::from_millis(300));
                if resend && socket.can_send() {
                    seq_no += 1;
                    let request = Icmpv4Repr::EchoRequest {
                        ident: PING_IDENT,
                        seq_no,
                        data,
                    };
                    let buf = socket
                        .send(
                            request.buffer_len(),
                            IpAddress::from(Ipv4Address::from(PEER_IP)),
                        )
                        .unwrap();
                    request.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                    sent_at = Some(std::time::Instant::now());
                }
                while let Ok((payload, from)) = socket.recv() {
                    let packet = Icmpv4Packet::new_checked(payload).unwrap();
                    if let Ok(Icmpv4Repr::EchoReply {
                        ident, data: got, ..
                    }) = Icmpv4Repr::parse(&packet, &caps)
                    {
                        if ident == PING_IDENT && got == data {
                            assert_eq!(from, IpAddress::from(Ipv4Address::from(PEER_IP)));
                            self.sockets.remove(handle);
                            return;
                        }
                    }
                }
                self.poll();
            }
        }

        /// Connects to the echo server, checks the greeting and one echo,
        /// and closes.
        fn echo_session(&mut self, local_port: u16) {
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            let handle = self.sockets.add(socket);
            self.sockets
                .get_mut::<tcp::Socket>(handle)
                .connect(
                    self.iface.context(),
                    (IpAddress::from(Ipv4Address::from(PEER_IP)), TCP_PORT),
                    local_port,
                )
                .unwrap();

            let greeting = format!("{GREETING}\n");
            assert_eq!(self.read_until(handle, greeting.len()), greeting);
            let sent = self
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .send_slice(b"hello\n")
                .unwrap();
            assert_eq!(sent, 6);
            assert_eq!(self.read_until(handle, 12), "echo: hello\n");

            self.sockets.get_mut::<tcp::Socket>(handle).close();
            // The peer closes its half in turn; then we are in TIME-WAIT.
            while self.sockets.get_mut::<tcp::Socket>(handle).is_open() {
                self.poll();
            }
            self.sockets.remove(handle);
        }

        fn read_until(&mut self, handle: SocketHandle, len: usize) -> String {
            let mut got = Vec::new();
            while got.len() < len {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                if socket.can_recv() {
                    let mut buf = [0u8; 256];
                    let n = socket.recv_slice(&mut buf[..len - got.len()]).unwrap();
                    got.extend_from_slice(&buf[..n]);
                } else {
                    self.poll();
                }
            }
            String::from_utf8(got).unwrap()
        }
    }

    #[test]
    fn serves_ping_and_tcp_echo_then_accepts_again() {
        let peer = NetPeer::start(config()).unwrap();
        for (link, local_port) in [(1, 49152), (2, 49153)] {
            let mut client = Client::connect(peer.port());
            client.ping();
            client.echo_session(local_port);
            // Keep the link up until the peer has seen the session end.
            while peer.report().tcp_sessions_closed < link {
                client.poll();
            }
            let seen = client.device.tx.shared.report().clone();
            assert!(seen.frames_in > 0 && seen.frames_out > 0, "{seen}");
            drop(client);
        }
        let report = peer.stop();
        let context = report.to_string();
        assert_eq!(report.connections, 2, "{context}");
        assert_eq!(report.tcp_sessions, 2, "{context}");
        assert_eq!(report.tcp_sessions_closed, 2, "{context}");
        assert_eq!(report.lines_echoed, 2, "{context}");
        assert!(report.icmp_echo_replies >= 2, "{context}");
        assert!(report.arp_replies >= 2, "{context}");
        assert!(report.frames_in > 0 && report.frames_out > 0, "{context}");
        let greeting_and_echo = (GREETING.len() + 1 + "echo: hello\n".len()) as u64;
        assert_eq!(report.tcp_bytes_out, 2 * greeting_and_echo, "{context}");
        assert_eq!(report.tcp_bytes_in, 2 * 6, "{context}");
        assert!(
            report
                .log
                .iter()
                .any(|l| l.contains("closed by the other end")),
            "{context}"
        );
    }
}
