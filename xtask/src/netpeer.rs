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
//! # The snapshot store
//!
//! With [`PeerConfig::store`] set to a directory, the peer is also the
//! hypervisor's snapshot store (docs/snapshot.md) on TCP port
//! [`STORE_PORT`]: one request per connection, any number of connections
//! over the run, up to [`STORE_MAX_SLOTS`] at a time. A session opens with one
//! request line of at most [`MAX_REQUEST`] bytes, its `\n` included:
//!
//! - `PUT <name>`: everything the client sends after that line, up to its
//!   FIN, is the snapshot. It is written to `<name>.bhsnap.part`; when the
//!   FIN arrives the file is renamed over `<name>.bhsnap` and the peer
//!   answers `OK <bytes>\n` and closes. If the connection is reset or the
//!   link drops first, the `.part` file is deleted and an older
//!   `<name>.bhsnap` stays as it was: a cut stream never looks whole. A
//!   stream that grows past [`MAX_SNAPSHOT`] is refused there.
//! - `GET <name>`: the peer sends the bytes of `<name>.bhsnap`, read from
//!   disk as the socket's send buffer drains, and closes; without such a
//!   file it answers `ERR no snapshot <name>\n` and closes.
//!
//! A name is 1 to 31 of `a-z 0-9 _ -`. Any other request (unknown verb, bad
//! name, a line too long or never ended) gets `ERR <reason>\n` and a close;
//! input after a refusal is read and dropped. Store sessions have their own
//! sockets and counters, apart from the echo server's.
//!
//! # Safety of the host
//!
//! The only real sockets are the listener on 127.0.0.1 and the connections
//! it accepts from loopback. The peer's IP address lives only inside the
//! emulated Ethernet carried by that connection; nothing is ever sent to any
//! other host address.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
/// The snapshot store's TCP port (see the module docs).
pub const STORE_PORT: u16 = 7700;
/// Store sockets made when a link comes up, and the most it may grow to.
/// One is always kept listening: a client that drops its socket in
/// TIME-WAIT never sends its last ACK, which leaves our socket in LAST-ACK
/// until a retransmission draws a reset (a second or more).
const STORE_SLOTS: usize = 2;
const STORE_MAX_SLOTS: usize = 16;
/// Each store socket's receive and send buffer: big enough to keep a
/// snapshot stream moving.
const STORE_BUFFER: usize = 256 * 1024;
/// Longest request line, its `\n` included.
const MAX_REQUEST: usize = 64;
/// Longest snapshot name.
const MAX_NAME: usize = 31;
/// Largest snapshot a `PUT` may send.
const MAX_SNAPSHOT: u64 = 1 << 30;
/// Buffer of the file reads and writes behind a transfer.
const FILE_BUFFER: usize = 256 * 1024;
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
    /// The directory of the snapshot store on [`STORE_PORT`]; `None` turns
    /// the store off. It must exist.
    pub store: Option<PathBuf>,
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
    /// Echo-port TCP sessions established, and those that have ended since.
    pub tcp_sessions: u64,
    pub tcp_sessions_closed: u64,
    /// Echo-port TCP payload bytes received and sent (greetings and echoes).
    pub tcp_bytes_in: u64,
    pub tcp_bytes_out: u64,
    /// Lines echoed back.
    pub lines_echoed: u64,
    /// Sessions on the store port.
    pub store_sessions: u64,
    /// `PUT`s answered `OK`, and the bytes of those snapshots.
    pub snapshots_stored: u64,
    pub snapshot_bytes_in: u64,
    /// `GET`s whose whole file was handed to TCP, and the snapshot bytes
    /// handed to TCP by all `GET`s (cut-short ones too).
    pub snapshots_served: u64,
    pub snapshot_bytes_out: u64,
    /// Refused requests, transfers cut short and file errors, in order (the
    /// first [`LOG_CAP`]); each is in the log too.
    pub snapshot_errors: Vec<String>,
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
        if self.store_sessions > 0 {
            writeln!(
                f,
                "  store: {} session(s); {} snapshot(s) stored ({} B), {} served ({} B); \
                 {} error(s)",
                self.store_sessions,
                self.snapshots_stored,
                self.snapshot_bytes_in,
                self.snapshots_served,
                self.snapshot_bytes_out,
                self.snapshot_errors.len(),
            )?;
        }
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

    /// Logs a store failure and keeps it for [`PeerReport::snapshot_errors`].
    fn store_error(&self, error: String) {
        self.note(format_args!("store: {error}"));
        let mut report = self.report();
        if report.snapshot_errors.len() < LOG_CAP {
            report.snapshot_errors.push(error);
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
        if let Some(dir) = &config.store {
            ensure!(
                config.tcp_port != STORE_PORT,
                "netpeer: the echo server's port {STORE_PORT} is the store's"
            );
            ensure!(
                dir.is_dir(),
                "netpeer: snapshot store {} is not a directory",
                dir.display()
            );
        }

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
        if let Some(dir) = &config.store {
            shared.note(format_args!(
                "snapshot store on port {STORE_PORT} in {}",
                dir.display()
            ));
        }
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

/// Runs the interface and the TCP servers over one link until it closes.
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
    let mut store = config
        .store
        .as_deref()
        .map(|dir| StoreServer::new(&mut sockets, dir));
    let mut pump = || -> Result<LinkEnd> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(LinkEnd::Stopped);
            }
            let mut busy = match device.fill()? {
                Fill::Eof => return Ok(LinkEnd::Closed),
                Fill::Data => true,
                Fill::Idle => false,
            };
            iface.poll(Instant::now(), &mut device, &mut sockets);
            let mut served = server.service(&mut sockets, shared);
            if let Some(store) = store.as_mut() {
                served |= store.service(&mut sockets, shared);
            }
            if served {
                // Send what the servers just queued without waiting a round.
                iface.poll(Instant::now(), &mut device, &mut sockets);
                busy = true;
            }
            busy |= device.flush()?;
            if !busy {
                thread::sleep(IDLE_SLEEP);
            }
        }
    };
    // However the link ends, its sessions end with it (and unfinished
    // uploads are discarded).
    let end = pump();
    server.drop_all(shared);
    if let Some(store) = store.as_mut() {
        store.drop_all(shared);
    }
    end
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
pub struct FrameDecoder {
    pending: Vec<u8>,
    /// Where the first byte not yet taken is in `pending` (the bytes
    /// before it are dropped once they are the larger part, not at every
    /// frame: a read of 64 KiB holds some forty).
    start: usize,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.pending.len() / 2 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived; an error when the length
    /// prefix cannot be right.
    pub fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.start == self.pending.len() {
                self.pending.clear();
                self.start = 0;
            }
            let rest = &self.pending[self.start..];
            let Some(prefix) = rest.first_chunk::<4>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame length {len} is over {MAX_FRAME}: stream out of step"),
                ));
            }
            if rest.len() < 4 + len {
                return Ok(None);
            }
            let frame = rest[4..4 + len].to_vec();
            self.start += 4 + len;
            // QEMU sends no empty frames; skip one rather than hand it on.
            if !frame.is_empty() {
                return Ok(Some(frame));
            }
        }
    }
}

/// Appends `frame` to `out` with its length prefix.
pub fn encode_frame(out: &mut Vec<u8>, frame: &[u8]) {
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

/// The snapshot store (see the module docs): a few listening sockets on
/// [`STORE_PORT`], each serving one session at a time.
struct StoreServer {
    dir: PathBuf,
    slots: Vec<StoreSlot>,
    buf: Vec<u8>,
}

struct StoreSlot {
    handle: SocketHandle,
    session: Option<StoreSession>,
}

/// One store session's state beyond what the socket keeps.
struct StoreSession {
    remote: Option<IpEndpoint>,
    /// The request line so far, without its `\n`.
    line: Vec<u8>,
    phase: Phase,
    /// Reply bytes not yet taken by the socket.
    out: Vec<u8>,
    closing: bool,
}

enum Phase {
    /// Reading the request line.
    Request,
    /// Receiving a snapshot.
    Put(Upload),
    /// Sending one.
    Get(Download),
    /// Sending `out`, then closing; input is dropped.
    Done,
}

struct Upload {
    name: String,
    file: PartFile,
    bytes: u64,
}

struct Download {
    name: String,
    reader: BufReader<File>,
    size: u64,
    sent: u64,
}

/// `<name>.bhsnap.part` while it is received; deleted when dropped unless
/// [`PartFile::commit`] renamed it into place.
struct PartFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    committed: bool,
}

impl PartFile {
    fn create(path: PathBuf) -> io::Result<PartFile> {
        let file = File::create(&path)?;
        Ok(PartFile {
            path,
            writer: Some(BufWriter::with_capacity(FILE_BUFFER, file)),
            committed: false,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(writer) => writer.write_all(data),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Flushes the file to disk and renames it to `dest`, replacing any
    /// file there in one step.
    fn commit(mut self, dest: &Path) -> io::Result<()> {
        let writer = self.writer.take().ok_or(io::ErrorKind::BrokenPipe)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.path, dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            // Close without flushing what is still buffered, then delete.
            if let Some(writer) = self.writer.take() {
                drop(writer.into_parts());
            }
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The store's file for snapshot `name`.
fn snapshot_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.bhsnap"))
}

/// `[a-z0-9_-]{1,31}`.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Put,
    Get,
}

/// A request line (without its `\n`): the verb and the snapshot's name, or
/// why not.
fn parse_request(line: &[u8]) -> Result<(Verb, &str), String> {
    let text =
        std::str::from_utf8(line).map_err(|_| "the request line is not UTF-8".to_string())?;
    let (verb, name) = match text.split_once(' ') {
        Some(("PUT", name)) => (Verb::Put, name),
        Some(("GET", name)) => (Verb::Get, name),
        _ => {
            return Err(format!(
                "bad request {text:?}: want PUT <name> or GET <name>"
            ))
        }
    };
    if !valid_name(name) {
        return Err(format!(
            "bad snapshot name {name:?}: want 1 to {MAX_NAME} of a-z 0-9 _ -"
        ));
    }
    Ok((verb, name))
}

impl StoreServer {
    fn new(sockets: &mut SocketSet<'_>, dir: &Path) -> StoreServer {
        let mut server = StoreServer {
            dir: dir.to_path_buf(),
            slots: Vec::new(),
            buf: vec![0; 64 * 1024],
        };
        for _ in 0..STORE_SLOTS {
            server.add_slot(sockets);
        }
        server
    }

    /// A new socket, listening on [`STORE_PORT`].
    fn add_slot(&mut self, sockets: &mut SocketSet<'_>) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; STORE_BUFFER]),
            tcp::SocketBuffer::new(vec![0; STORE_BUFFER]),
        );
        socket
            .listen(STORE_PORT)
            .expect("a new socket can listen on a non-zero port");
        self.slots.push(StoreSlot {
            handle: sockets.add(socket),
            session: None,
        });
    }

    /// Moves every session along; true if anything happened.
    fn service(&mut self, sockets: &mut SocketSet<'_>, shared: &Shared) -> bool {
        let mut busy = false;
        for i in 0..self.slots.len() {
            // Names other sessions are receiving: a second PUT of one is refused.
            let uploading: Vec<String> = self
                .slots
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, slot)| match &slot.session.as_ref()?.phase {
                    Phase::Put(upload) => Some(upload.name.clone()),
                    _ => None,
                })
                .collect();
            let slot = &mut self.slots[i];
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);

            if slot.session.is_none()
                && matches!(
                    socket.state(),
                    tcp::State::Established | tcp::State::CloseWait
                )
            {
                let remote = socket.remote_endpoint();
                shared.report().store_sessions += 1;
                shared.note(format_args!("store: session from {}", endpoint(remote)));
                slot.session = Some(StoreSession {
                    remote,
                    line: Vec::new(),
                    phase: Phase::Request,
                    out: Vec::new(),
                    closing: false,
                });
                busy = true;
            }
            if let Some(session) = slot.session.as_mut() {
                busy |= session.step(socket, &self.dir, &mut self.buf, &uploading, shared);
            }
            if !socket.is_active() {
                if let Some(session) = slot.session.take() {
                    session.end("the connection ended", shared);
                    busy = true;
                }
            }
            if !socket.is_open() {
                if let Err(e) = socket.listen(STORE_PORT) {
                    shared.note(format_args!("store: listen on port {STORE_PORT}: {e}"));
                }
            }
        }
        let listening = self
            .slots
            .iter()
            .any(|slot| sockets.get::<tcp::Socket>(slot.handle).is_listening());
        if !listening && self.slots.len() < STORE_MAX_SLOTS {
            self.add_slot(sockets);
            busy = true;
        }
        busy
    }

    /// Ends the sessions a dropped link took with it.
    fn drop_all(&mut self, shared: &Shared) {
        for slot in &mut self.slots {
            if let Some(session) = slot.session.take() {
                session.end("the link dropped", shared);
            }
        }
    }
}

impl StoreSession {
    /// Reads what arrived, acts on the client's FIN, sends what is due and
    /// closes when done; true if anything happened.
    fn step(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        dir: &Path,
        buf: &mut [u8],
        uploading: &[String],
        shared: &Shared,
    ) -> bool {
        let mut busy = false;
        while socket.can_recv() {
            match socket.recv_slice(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.input(&buf[..n], dir, uploading, shared);
                    busy = true;
                }
            }
        }
        // CLOSE-WAIT with the receive buffer drained: the client's FIN came
        // and every byte before it has been read.
        if socket.state() == tcp::State::CloseWait && !socket.can_recv() {
            match &self.phase {
                Phase::Request if self.line.is_empty() => {
                    self.refuse("no request line".to_string(), shared);
                }
                Phase::Request => self.refuse("the request line has no \\n".to_string(), shared),
                Phase::Put(_) => self.commit(dir, shared),
                Phase::Get(_) | Phase::Done => {}
            }
        }
        if !self.out.is_empty() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&self.out) {
                self.out.drain(..n);
                busy |= n > 0;
            }
        }
        if let Phase::Get(download) = &mut self.phase {
            let before = download.sent;
            let result = download.pump(socket);
            let sent = download.sent - before;
            if sent > 0 {
                shared.report().snapshot_bytes_out += sent;
                busy = true;
            }
            match result {
                Ok(false) => {}
                Ok(true) => {
                    shared.report().snapshots_served += 1;
                    shared.note(format_args!(
                        "store: served {} to {}: {} B",
                        download.name,
                        endpoint(self.remote),
                        download.sent
                    ));
                    self.phase = Phase::Done;
                }
                Err(e) => {
                    // A reset, so that the client cannot take a cut file
                    // for a whole one.
                    shared.store_error(format!(
                        "GET {} to {}: reading the file failed after {} B: {e}; connection reset",
                        download.name,
                        endpoint(self.remote),
                        download.sent
                    ));
                    socket.abort();
                    self.phase = Phase::Done;
                    self.closing = true;
                }
            }
        }
        if matches!(self.phase, Phase::Done) && self.out.is_empty() && !self.closing {
            socket.close();
            self.closing = true;
            busy = true;
        }
        busy
    }

    /// Takes received bytes: the request line, then the stream of a `PUT`.
    fn input(&mut self, mut data: &[u8], dir: &Path, uploading: &[String], shared: &Shared) {
        if let Phase::Request = self.phase {
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                if self.line.len() + data.len() >= MAX_REQUEST {
                    self.refuse(format!("request line over {MAX_REQUEST} bytes"), shared);
                } else {
                    self.line.extend_from_slice(data);
                }
                return;
            };
            if self.line.len() + end + 1 > MAX_REQUEST {
                self.refuse(format!("request line over {MAX_REQUEST} bytes"), shared);
                return;
            }
            self.line.extend_from_slice(&data[..end]);
            data = &data[end + 1..];
            self.begin(dir, uploading, shared);
        }
        let Phase::Put(upload) = &mut self.phase else {
            return;
        };
        if upload.bytes + data.len() as u64 > MAX_SNAPSHOT {
            let error = format!(
                "PUT {}: the stream is over {MAX_SNAPSHOT} bytes; nothing stored",
                upload.name
            );
            self.refuse(error, shared);
            return;
        }
        if let Err(e) = upload.file.write(data) {
            let error = format!(
                "PUT {}: cannot write {}: {e}; nothing stored",
                upload.name,
                upload.file.path.display()
            );
            self.refuse(error, shared);
            return;
        }
        upload.bytes += data.len() as u64;
    }

    /// Acts on a complete request line.
    fn begin(&mut self, dir: &Path, uploading: &[String], shared: &Shared) {
        let (verb, name) = match parse_request(&self.line) {
            Ok((verb, name)) => (verb, name.to_string()),
            Err(reason) => return self.refuse(reason, shared),
        };
        let path = snapshot_path(dir, &name);
        match verb {
            Verb::Put if uploading.contains(&name) => {
                self.refuse(
                    format!("snapshot {name} is being stored by another session"),
                    shared,
                );
            }
            Verb::Put => {
                let part = path.with_extension("bhsnap.part");
                match PartFile::create(part) {
                    Ok(file) => {
                        shared.note(format_args!(
                            "store: receiving {name} from {}",
                            endpoint(self.remote)
                        ));
                        self.phase = Phase::Put(Upload {
                            name,
                            file,
                            bytes: 0,
                        });
                    }
                    Err(e) => {
                        self.refuse(format!("cannot create the file for {name}: {e}"), shared)
                    }
                }
            }
            Verb::Get => match File::open(&path) {
                Ok(file) => {
                    let size = file.metadata().map_or(0, |m| m.len());
                    shared.note(format_args!(
                        "store: sending {name} ({size} B) to {}",
                        endpoint(self.remote)
                    ));
                    self.phase = Phase::Get(Download {
                        name,
                        reader: BufReader::with_capacity(FILE_BUFFER, file),
                        size,
                        sent: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.refuse(format!("no snapshot {name}"), shared);
                }
                Err(e) => self.refuse(format!("cannot open snapshot {name}: {e}"), shared),
            },
        }
    }

    /// The client's FIN ended a `PUT`: puts the file in place and answers.
    fn commit(&mut self, dir: &Path, shared: &Shared) {
        let Phase::Put(upload) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let Upload { name, file, bytes } = upload;
        match file.commit(&snapshot_path(dir, &name)) {
            Ok(()) => {
                {
                    let mut report = shared.report();
                    report.snapshots_stored += 1;
                    report.snapshot_bytes_in += bytes;
                }
                shared.note(format_args!(
                    "store: stored {name} from {}: {bytes} B",
                    endpoint(self.remote)
                ));
                self.out
                    .extend_from_slice(format!("OK {bytes}\n").as_bytes());
            }
            Err(e) => self.refuse(format!("PUT {name}: cannot store the file: {e}"), shared),
        }
    }

    /// Answers `ERR <reason>` and closes after it; any upload is discarded.
    fn refuse(&mut self, reason: String, shared: &Shared) {
        self.phase = Phase::Done;
        self.out
            .extend_from_slice(format!("ERR {reason}\n").as_bytes());
        shared.store_error(format!("{}: {reason}", endpoint(self.remote)));
    }

    /// The session is over (`why` says how); an unfinished transfer is an
    /// error, and an unfinished upload's file goes with it.
    fn end(self, why: &str, shared: &Shared) {
        let remote = endpoint(self.remote);
        match self.phase {
            Phase::Put(upload) => shared.store_error(format!(
                "PUT {} from {remote}: {why} after {} B, before the client's FIN; nothing stored",
                upload.name, upload.bytes
            )),
            Phase::Get(download) => shared.store_error(format!(
                "GET {} to {remote}: {why} after {} of {} B",
                download.name, download.sent, download.size
            )),
            Phase::Request => {
                shared.note(format_args!(
                    "store: session from {remote}: {why} before a request"
                ));
            }
            Phase::Done if !self.out.is_empty() => {
                shared.note(format_args!(
                    "store: session from {remote}: {why} before the reply went out"
                ));
            }
            Phase::Done => shared.note(format_args!("store: session from {remote} ended")),
        }
    }
}

impl Download {
    /// Reads the file into the socket's free send buffer; true at the end
    /// of the file.
    fn pump(&mut self, socket: &mut tcp::Socket<'_>) -> io::Result<bool> {
        while socket.can_send() {
            let reader = &mut self.reader;
            let read = socket.send(|space| match reader.read(space) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match read {
                // The socket can no longer send; `end` reports the rest.
                Err(_) => return Ok(false),
                Ok(Ok(0)) => return Ok(true),
                Ok(Ok(n)) => self.sent += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(false)
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

    /// Enough time for megabytes through two smoltcp stacks in a debug build.
    const STORE_TIMEOUT: Duration = Duration::from_secs(60);

    /// xorshift64: pseudo-random, repeatable.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len).map(|_| next(&mut state) as u8).collect()
    }

    /// A fresh, empty directory for one test's store.
    fn temp_store(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bulkhead-netpeer-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn store_config(dir: &Path) -> PeerConfig {
        PeerConfig {
            store: Some(dir.to_path_buf()),
            ..config()
        }
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits (polling the link, if there is one) until `done` holds for the
    /// peer's report.
    fn wait_for(
        peer: &NetPeer,
        mut client: Option<&mut Client>,
        done: impl Fn(&PeerReport) -> bool,
    ) {
        let deadline = std::time::Instant::now() + STORE_TIMEOUT;
        while !done(&peer.report()) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out:\n{}",
                peer.report()
            );
            match client.as_deref_mut() {
                Some(client) => client.poll(),
                None => thread::sleep(IDLE_SLEEP),
            }
        }
    }

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
            store: None,
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
            PeerConfig {
                store: Some(std::env::temp_dir().join("bulkhead-netpeer-no-such-dir")),
                ..config()
            },
            PeerConfig {
                tcp_port: STORE_PORT,
                store: Some(std::env::temp_dir()),
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

        /// A TCP socket connected (or connecting) to the store.
        fn store_socket(&mut self, local_port: u16) -> SocketHandle {
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; STORE_BUFFER]),
                tcp::SocketBuffer::new(vec![0; STORE_BUFFER]),
            );
            let handle = self.sockets.add(socket);
            self.sockets
                .get_mut::<tcp::Socket>(handle)
                .connect(
                    self.iface.context(),
                    (IpAddress::from(Ipv4Address::from(PEER_IP)), STORE_PORT),
                    local_port,
                )
                .unwrap();
            handle
        }

        /// Sends `data` in uneven pieces, and polls until the peer has
        /// acknowledged all of it.
        fn send_all(&mut self, handle: SocketHandle, data: &[u8], rng: &mut u64) {
            let mut pos = 0;
            loop {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                while socket.can_send() && pos < data.len() {
                    let piece = (1 + next(rng) % 40_000) as usize;
                    let end = data.len().min(pos + piece);
                    pos += socket.send_slice(&data[pos..end]).unwrap();
                }
                if pos == data.len() && socket.send_queue() == 0 {
                    return;
                }
                assert!(
                    socket.may_send() || socket.state() == tcp::State::SynSent,
                    "the store closed: {}",
                    socket.state()
                );
                self.poll();
            }
        }

        /// One store session: the request line, then `payload` in uneven
        /// pieces, then our FIN; returns what the peer sent until it closed.
        fn store_session(&mut self, local_port: u16, request: &str, payload: &[u8]) -> Vec<u8> {
            let handle = self.store_socket(local_port);
            let mut rng = u64::from(local_port) | 1;
            let outgoing = [request.as_bytes(), payload].concat();
            let (mut pos, mut closed) = (0, false);
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                if socket.may_send() {
                    while socket.can_send() && pos < outgoing.len() {
                        let piece = (1 + next(&mut rng) % 40_000) as usize;
                        let end = outgoing.len().min(pos + piece);
                        pos += socket.send_slice(&outgoing[pos..end]).unwrap();
                    }
                    if pos == outgoing.len() && !closed {
                        socket.close();
                        closed = true;
                    }
                }
                while socket.can_recv() {
                    let n = socket.recv_slice(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                if !socket.is_open() {
                    break;
                }
                self.poll();
            }
            self.sockets.remove(handle);
            got
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

    #[test]
    fn store_puts_and_gets_snapshots() {
        let dir = temp_store("put-get");
        let peer = NetPeer::start(store_config(&dir)).unwrap();
        let mut client = Client::connect(peer.port());
        client.deadline = std::time::Instant::now() + STORE_TIMEOUT;
        let payload = noise(3 * 1024 * 1024 + 12_345, 0x5eed);

        let reply = client.store_session(49200, "PUT vm-1_a\n", &payload);
        let ok = format!("OK {}\n", payload.len());
        assert_eq!(String::from_utf8_lossy(&reply), ok, "{}", peer.report());
        let stored = fs::read(dir.join("vm-1_a.bhsnap")).unwrap();
        assert!(
            stored == payload,
            "stored {} B, sent {} B",
            stored.len(),
            payload.len()
        );
        assert_eq!(listing(&dir), ["vm-1_a.bhsnap"]);
        let report = peer.report();
        assert_eq!(report.snapshots_stored, 1, "{report}");
        assert_eq!(report.snapshot_bytes_in, payload.len() as u64, "{report}");

        let got = client.store_session(49201, "GET vm-1_a\n", &[]);
        assert!(
            got == payload,
            "got {} B, stored {} B",
            got.len(),
            payload.len()
        );

        // A second PUT of the name replaces the snapshot whole.
        let small = noise(1000, 7);
        let reply = client.store_session(49202, "PUT vm-1_a\n", &small);
        assert_eq!(String::from_utf8_lossy(&reply), "OK 1000\n");
        assert_eq!(fs::read(dir.join("vm-1_a.bhsnap")).unwrap(), small);
        // An empty stream is a snapshot too.
        let reply = client.store_session(49203, "PUT empty\n", &[]);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "OK 0\n",
            "{}",
            peer.report()
        );

        // The echo server works alongside, with its counters its own.
        client.echo_session(49204);
        wait_for(&peer, Some(&mut client), |r| r.tcp_sessions_closed == 1);
        drop(client);
        let report = peer.stop();
        let context = report.to_string();
        assert_eq!(report.store_sessions, 4, "{context}");
        assert_eq!(report.snapshots_stored, 3, "{context}");
        assert_eq!(
            report.snapshot_bytes_in,
            payload.len() as u64 + 1000,
            "{context}"
        );
        assert_eq!(report.snapshots_served, 1, "{context}");
        assert_eq!(report.snapshot_bytes_out, payload.len() as u64, "{context}");
        assert!(report.snapshot_errors.is_empty(), "{context}");
        assert_eq!(report.tcp_sessions, 1, "{context}");
        assert_eq!(report.tcp_bytes_in, 6, "{context}");
        assert_eq!(
            report.tcp_bytes_out,
            (GREETING.len() + 1 + "echo: hello\n".len()) as u64,
            "{context}"
        );
        assert!(context.contains("store: 4 session(s)"), "{context}");
        assert_eq!(listing(&dir), ["empty.bhsnap", "vm-1_a.bhsnap"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn store_refuses_bad_requests() {
        let dir = temp_store("bad-requests");
        let peer = NetPeer::start(store_config(&dir)).unwrap();
        let mut client = Client::connect(peer.port());
        client.deadline = std::time::Instant::now() + STORE_TIMEOUT;

        let reply = client.store_session(49300, "GET nothing-here\n", &[]);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "ERR no snapshot nothing-here\n"
        );

        let long_name = format!("PUT {}\n", "a".repeat(32));
        let long_line = "x".repeat(100);
        let bad = [
            "DEL x\n",
            "get x\n",
            "PUT\n",
            "PUT \n",
            "PUT Upper\n",
            "PUT a/b\n",
            "GET ../x\n",
            "PUT x y\n",
            "PUT x\r\n",
            "\n",
            long_name.as_str(),
            long_line.as_str(),
            "PUT unended",
            "",
        ];
        // Back to back, more sessions than the store starts with sockets:
        // it must keep one listening as the old ones linger in LAST-ACK.
        for (k, request) in bad.iter().enumerate() {
            // Data after a refused PUT is read and dropped.
            let reply = client.store_session(49301 + k as u16, request, &noise(100_000, 3));
            let reply = String::from_utf8(reply).unwrap();
            assert!(
                reply.starts_with("ERR ") && reply.ends_with('\n') && reply.lines().count() == 1,
                "{request:?} got {reply:?}"
            );
        }
        drop(client);
        let report = peer.stop();
        let context = report.to_string();
        assert_eq!(report.snapshot_errors.len(), bad.len() + 1, "{context}");
        assert_eq!(report.snapshots_stored, 0, "{context}");
        assert_eq!(report.snapshots_served, 0, "{context}");
        assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn store_keeps_nothing_of_a_broken_put() {
        let dir = temp_store("broken-put");
        let old = b"the older snapshot".as_slice();
        fs::write(dir.join("keep.bhsnap"), old).unwrap();
        let peer = NetPeer::start(store_config(&dir)).unwrap();
        let mut client = Client::connect(peer.port());
        client.deadline = std::time::Instant::now() + STORE_TIMEOUT;
        let mut rng = 0x1234;

        // Reset part way: of an existing name, then of a new one.
        for (k, name) in ["keep", "fresh"].into_iter().enumerate() {
            let handle = client.store_socket(49400 + k as u16);
            let request = format!("PUT {name}\n");
            client.send_all(
                handle,
                &[request.as_bytes(), &noise(600_000, 9)].concat(),
                &mut rng,
            );
            assert!(dir.join(format!("{name}.bhsnap.part")).exists());
            client.sockets.get_mut::<tcp::Socket>(handle).abort();
            wait_for(&peer, Some(&mut client), |r| {
                r.snapshot_errors.len() == k + 1
            });
            client.sockets.remove(handle);
            assert_eq!(listing(&dir), ["keep.bhsnap"], "after the reset of {name}");
        }

        // The link drops part way.
        let handle = client.store_socket(49402);
        client.send_all(
            handle,
            &[b"PUT keep\n".as_slice(), &noise(300_000, 11)].concat(),
            &mut rng,
        );
        assert!(dir.join("keep.bhsnap.part").exists());
        drop(client);
        wait_for(&peer, None, |r| r.snapshot_errors.len() == 3);

        let report = peer.stop();
        let context = report.to_string();
        assert_eq!(listing(&dir), ["keep.bhsnap"], "{context}");
        assert_eq!(fs::read(dir.join("keep.bhsnap")).unwrap(), old);
        assert_eq!(report.snapshots_stored, 0, "{context}");
        let errors = &report.snapshot_errors;
        assert!(
            errors[0].contains("PUT keep") && errors[0].contains("nothing stored"),
            "{context}"
        );
        assert!(errors[1].contains("PUT fresh"), "{context}");
        assert!(
            errors[2].contains("PUT keep") && errors[2].contains("link dropped"),
            "{context}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
