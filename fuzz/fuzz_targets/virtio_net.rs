//! Two VMs' virtio-net devices (`bulkhead_virtio::net::Net`) on one
//! learning switch (`bulkhead_virtio::switch::Switch`) with an uplink, as
//! the hypervisor wires them: port 0 the uplink, ports 1 and 2 the VMs.
//!
//! The input (`arbitrary`) first says which offload features each VM's
//! driver accepts (any subset of CSUM, GUEST_CSUM, GUEST_TSO4/6 and
//! HOST_TSO4/6, always with MAC, STATUS, RING_EVENT_IDX and VERSION_1);
//! both devices are brought up with `net::driver_init_with` on
//! `queue::driver::Driver` layouts in each VM's own 64 KiB of RAM. Then it
//! runs up to 256 operations: a VM posts a receive buffer (any address,
//! length up to 2 KiB or, for a "big" one, up to 4.25 KiB, room for a
//! whole TSO frame; one descriptor or split in two; any direction) or
//! queues a transmit chain: a 12-byte `virtio_net_hdr` (zeros, any bytes,
//! any flags / gso_type / gso_size / csum_start / csum_offset, or what
//! Linux writes for TSO or a partial checksum, filled in from the frame)
//! and a frame with any source and destination, whose body is any bytes
//! or a TCP segment over IPv4 or IPv6 (VLAN tag or not, IP and TCP
//! options, any sequence number, flags and payload length), of up to 4000
//! bytes so TSO frames of several segments occur, whole or split after
//! any byte; or a raw descriptor. A VM also notifies its transmit queue,
//! writes any register or any RAM bytes; or a frame of any bytes arrives
//! from the uplink. A VM's driver may also accept the control queue and
//! GUEST_ANNOUNCE (its ring near the end of its RAM); the hypervisor may
//! ask a VM to announce itself, and a VM may queue a control command: up
//! to four buffers anywhere, each either direction, the first given a
//! header (ANNOUNCE_ACK or any two bytes), and notify the control queue. Transmitted frames go through the switch and are
//! delivered as the hypervisor delivers them, with the offload `pop_tx`
//! returned; those for the uplink are resolved into plain frames as the
//! hypervisor does for the physical NIC.
//!
//! Checks that nothing panics; that a device negotiated exactly what its
//! driver accepted; that a frame leaving a VM's device is 14 to 1518
//! bytes unless it carries GSO (then at most `offload::MAX_GSO_FRAME`),
//! with an offload its driver negotiated (a checksum only with CSUM, GSO
//! only with CSUM and HOST_TSO4 or HOST_TSO6 as its IP version says),
//! whose checksum range and headers lie inside it and whose segment size
//! makes frames of at most 1518 bytes; that the switch forwards nothing
//! from a VM port whose source is not that VM's MAC, nor anything from the
//! uplink whose source is a VM's MAC; that it never learns a VM's MAC on
//! another port; that it never sends a frame back out of the port it came
//! from; that what goes to the uplink is plain frames of at most 1518
//! bytes; that an announcement is asked for exactly when the driver took
//! GUEST_ANNOUNCE and the device runs, and a well-formed ANNOUNCE_ACK on
//! a running control queue ends it with VIRTIO_NET_OK in the ack byte. A frame delivered to a VM whose negotiated GUEST_CSUM /
//! GUEST_TSO4/6 take its offload (the device's `rx_caps().accepts` agrees)
//! lands as it is in one receive chain, after exactly
//! `offload::rx_header(&off)`; one for a VM that does not take it lands as
//! one or more frames, each in a chain of its own after a plain header
//! (`num_buffers` 1, nothing else set), each at most 1518 bytes: the frame
//! itself, a copy that differs only in its checksum field, or TCP
//! segments whose payloads, concatenated, are the frame's payload. Receive
//! chains are used in order, one per frame, each either empty or exactly
//! header plus frame, and the `Delivery` says what happened to them. The
//! bytes are compared with what landed in the chains the device used, as
//! the descriptors in RAM say, for each chain whose buffers overlap
//! neither each other nor a chain used after it in the same delivery.
//! Once the input wrote over a VM's receive ring page, reset its device
//! or toggled a queue's ready bit, the driver's view of the rings no
//! longer has to match the device's, and the delivery checks for that VM
//! are off (the other checks stay).
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_virtio::feature;
use bulkhead_virtio::mmio::reg;
use bulkhead_virtio::net::{self, f, Delivery, Net, HDR_LEN, MAX_FRAME, MIN_FRAME};
use bulkhead_virtio::offload::{self, hdr, Offload, MAX_GSO_FRAME};
use bulkhead_virtio::queue::driver::Driver;
use bulkhead_virtio::switch::{Dest, Switch};
use bulkhead_virtio::{GuestMemory, SliceMem};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;
const MACS: [[u8; 6]; 2] = [[0x52, 0x54, 0, 0, 0, 0xa], [0x52, 0x54, 0, 0, 0, 0xb]];
const UPLINK: usize = 0;
/// RAM map (offsets): the receive ring's page, the transmit ring's, then
/// transmit frames (a bump allocator) and receive buffers.
const RX_RING_END: u64 = 0x1000;
const TX_FRAMES: u64 = 0x2000;
const RX_BUFS: u64 = 0x8000;
/// Receive buffers start in `RX_BUFS..RX_BUFS + RX_SPAN`; with `BIG_BUF`
/// they still end inside RAM.
const RX_SPAN: u64 = 0x6000;
const SMALL_BUF: u32 = 2048;
const BIG_BUF: u32 = 0x1100;
/// The longest frame a VM sends after the two MACs.
const MAX_BODY: usize = 4000;
const RING: u16 = 64;
/// The control queue's ring, past the largest receive buffer.
const CTRL_RING: u64 = 0xf200;
const CTRL_SIZE: u16 = 16;

/// The features a VM's driver may leave out, bit `i` of the input's mask.
const OFFLOADS: [u64; 8] = [
    f::CSUM,
    f::GUEST_CSUM,
    f::GUEST_TSO4,
    f::GUEST_TSO6,
    f::HOST_TSO4,
    f::HOST_TSO6,
    f::CTRL_VQ,
    f::GUEST_ANNOUNCE,
];
/// What every driver accepts, as before offloads came.
const BASIC: u64 = f::MAC | f::STATUS | feature::RING_EVENT_IDX | feature::VERSION_1;

#[derive(Arbitrary, Debug)]
enum Src {
    Own,
    Other,
    Any([u8; 6]),
}

/// A TCP segment after the MACs: an optional VLAN tag, IPv4 (with
/// `ip_opts % 11` words of options) or IPv6, TCP with `tcp_opts % 11`
/// words of options, then `payload` bytes (as many as fit).
#[derive(Arbitrary, Debug)]
struct Tcp {
    v6: bool,
    vlan: Option<u16>,
    ip_opts: u8,
    tcp_opts: u8,
    /// IPv4 flags and fragment offset (0x4000 is DF, anything else a
    /// fragment the parser refuses).
    frag: u16,
    id: u16,
    addrs: [u8; 32],
    seq: u32,
    flags: u8,
    /// The TCP checksum field as the sender left it.
    csum: u16,
    payload: u16,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    Tcp(Tcp),
}

/// The `virtio_net_hdr` before a frame.
#[derive(Arbitrary, Debug)]
enum Hdr {
    Zero,
    Raw([u8; HDR_LEN]),
    Fields {
        flags: u8,
        gso_type: u8,
        gso_size: u16,
        csum_start: u16,
        csum_offset: u16,
    },
    /// What Linux writes for a TSO frame (segment size `mss % 2048`),
    /// from the frame's own layout.
    Tso {
        mss: u16,
    },
    /// What Linux writes for a partial TCP checksum.
    Csum,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// VM `vm` posts a receive buffer at offset `at` of its receive area,
    /// in two descriptors if `split` cuts it.
    Post {
        vm: bool,
        at: u16,
        len: u16,
        big: bool,
        write: bool,
        split: Option<u16>,
    },
    /// VM `vm` queues a frame: a header, then `body` with a destination
    /// and source, the chain cut in two at `split` if it cuts it.
    Send {
        vm: bool,
        hdr: Hdr,
        dst: Option<[u8; 6]>,
        src: Src,
        body: Body,
        split: Option<u16>,
    },
    /// A raw transmit descriptor.
    Raw {
        vm: bool,
        addr: u64,
        len: u32,
        flags: u16,
    },
    Notify {
        vm: bool,
    },
    Mmio {
        vm: bool,
        off: u16,
        value: u32,
    },
    Poke {
        vm: bool,
        at: u16,
        bytes: Vec<u8>,
    },
    /// A frame from the uplink.
    Uplink {
        frame: Vec<u8>,
    },
    /// The hypervisor asks VM `vm` to announce itself (it was migrated).
    Announce {
        vm: bool,
    },
    /// VM `vm` queues a control command in `bufs` (offset in its RAM,
    /// length, device-writable), the first buffer given `hdr` (or
    /// ANNOUNCE_ACK), and notifies the control queue.
    Ctrl {
        vm: bool,
        hdr: Option<[u8; 2]>,
        bufs: Vec<(u16, u8, bool)>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit `i`: VM `n`'s driver accepts `OFFLOADS[i]`.
    features: [u8; 2],
    ops: Vec<Op>,
}

struct Vm<'a> {
    mem: SliceMem<'a>,
    net: Net,
    rx: Driver,
    tx: Driver,
    ctrl: Driver,
    /// What the driver negotiated at setup.
    features: u64,
    /// Where the next transmit frame goes in RAM (a bump allocator).
    next: u64,
    /// The input wrote over the receive ring's page, reset the device or
    /// toggled a queue: `rx` may no longer see the device's rings.
    tainted: bool,
    /// The input wrote over the control ring's page: `ctrl` may no longer
    /// see the device's control ring.
    ctrl_tainted: bool,
}

/// A VM with its NIC brought up as Linux would, accepting the offloads
/// `mask` picks: receive queue at the start of its RAM, transmit queue
/// 4 KiB on.
fn vm(ram: &mut [u8], mac: [u8; 6], mask: u8) -> Vm<'_> {
    let mem = SliceMem::new(BASE, ram);
    let rx = Driver::new(BASE, RING);
    let tx = Driver::new(BASE + 0x1000, RING);
    let ctrl = Driver::new(BASE + CTRL_RING, CTRL_SIZE);
    let mut net = Net::new(mac);
    let accept = OFFLOADS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask >> i & 1 != 0)
        .fold(BASIC, |a, (_, &b)| a | b);
    net::driver_init_queues(&mut net, &[rx.layout, tx.layout, ctrl.layout], &mem, accept);
    assert!(net.transport.live());
    assert_eq!(net.transport.negotiated(), accept, "negotiated as accepted");
    Vm {
        mem,
        net,
        rx,
        tx,
        ctrl,
        features: accept,
        next: BASE + TX_FRAMES,
        tainted: false,
        ctrl_tainted: false,
    }
}

/// A frame of `body` from `src` to `dst` (broadcast if none); with a TCP
/// body, also where its TCP header is and its IP version.
fn frame_of(dst: Option<[u8; 6]>, src: [u8; 6], body: &Body) -> (Vec<u8>, Option<(usize, bool)>) {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.unwrap_or([0xff; 6]));
    f.extend_from_slice(&src);
    match body {
        Body::Raw(b) => {
            f.extend_from_slice(&b[..b.len().min(MAX_BODY)]);
            (f, None)
        }
        Body::Tcp(t) => {
            let l4 = tcp_body(&mut f, t, 12 + MAX_BODY);
            (f, Some((l4, t.v6)))
        }
    }
}

/// Appends `t` to the MACs in `f`, at most `max` bytes in all; returns
/// the TCP header's offset.
fn tcp_body(f: &mut Vec<u8>, t: &Tcp, max: usize) -> usize {
    if let Some(tci) = t.vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&if t.v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
    let l3 = f.len();
    let doff = 5 + usize::from(t.tcp_opts % 11);
    let l4 = if t.v6 {
        l3 + 40
    } else {
        l3 + 4 * (5 + usize::from(t.ip_opts % 11))
    };
    let hdr_len = l4 + 4 * doff;
    let payload = usize::from(t.payload).min(max.saturating_sub(hdr_len));
    // Options are NOPs.
    f.resize(hdr_len, 1);
    let ip_len = hdr_len + payload - l3;
    if t.v6 {
        f[l3..l3 + 4].copy_from_slice(&[0x60, 0, 0, 0]);
        f[l3 + 4..l3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
        f[l3 + 6] = 6;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 40].copy_from_slice(&t.addrs);
    } else {
        f[l3] = 0x40 | ((l4 - l3) / 4) as u8;
        f[l3 + 1] = 0;
        f[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&t.id.to_be_bytes());
        f[l3 + 6..l3 + 8].copy_from_slice(&t.frag.to_be_bytes());
        f[l3 + 8] = 64;
        f[l3 + 9] = 6;
        f[l3 + 10..l3 + 12].fill(0);
        f[l3 + 12..l3 + 20].copy_from_slice(&t.addrs[..8]);
    }
    f[l4..l4 + 4].copy_from_slice(&[0x13, 0x88, 0, 80]);
    f[l4 + 4..l4 + 8].copy_from_slice(&t.seq.to_be_bytes());
    f[l4 + 8..l4 + 12].fill(0);
    f[l4 + 12] = (doff as u8) << 4;
    f[l4 + 13] = t.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&0xffffu16.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&t.csum.to_be_bytes());
    f[l4 + 18..l4 + 20].fill(0);
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(31) ^ t.fill));
    l4
}

/// The 12 header bytes `h` asks for before `frame` (TCP header at `tcp`).
fn header_of(h: &Hdr, frame: &[u8], tcp: Option<(usize, bool)>) -> [u8; HDR_LEN] {
    // Without a TCP body: where it would be in an untagged IPv4 frame.
    let (l4, v6) = tcp.unwrap_or((34, false));
    let doff = frame.get(l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4);
    let mut b = [0u8; HDR_LEN];
    match *h {
        Hdr::Zero => {}
        Hdr::Raw(raw) => b = raw,
        Hdr::Fields {
            flags,
            gso_type,
            gso_size,
            csum_start,
            csum_offset,
        } => {
            b[0] = flags;
            b[1] = gso_type;
            b[4..6].copy_from_slice(&gso_size.to_le_bytes());
            b[6..8].copy_from_slice(&csum_start.to_le_bytes());
            b[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        }
        Hdr::Tso { mss } => {
            b[0] = hdr::F_NEEDS_CSUM;
            b[1] = if v6 { hdr::GSO_TCPV6 } else { hdr::GSO_TCPV4 };
            b[2..4].copy_from_slice(&((l4 + doff) as u16).to_le_bytes());
            b[4..6].copy_from_slice(&(mss % 2048).to_le_bytes());
            b[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
            b[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        Hdr::Csum => {
            b[0] = hdr::F_NEEDS_CSUM;
            b[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
            b[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
    }
    b
}

/// Whether a driver with features `n` takes `off` as it is (virtio 1.2,
/// 5.1.6.4.1), our own reading of the feature bits.
fn takes(n: u64, off: &Offload) -> bool {
    let csum = n & f::GUEST_CSUM != 0;
    match (off.gso, off.csum) {
        (Some(g), _) => csum && n & if g.v6 { f::GUEST_TSO6 } else { f::GUEST_TSO4 } != 0,
        (None, Some(_)) => csum,
        (None, None) => true,
    }
}

/// What a frame that left VM `v`'s device may be, and the offload with it.
fn check_sent(v: &Vm, frame: &[u8], off: &Offload) {
    let len = frame.len();
    let max = if off.gso.is_some() {
        MAX_GSO_FRAME
    } else {
        MAX_FRAME
    };
    assert!(
        (MIN_FRAME..=max).contains(&len),
        "a {len}-byte frame left the device with {off:?}"
    );
    let n = v.net.transport.negotiated();
    if !v.tainted {
        assert_eq!(n, v.features, "features changed without a reset");
    }
    if let Some(c) = off.csum {
        assert!(n & f::CSUM != 0, "NEEDS_CSUM without CSUM: {off:?}");
        let end = usize::from(c.start) + usize::from(c.offset) + 2;
        assert!(
            end <= len,
            "checksum field past a {len}-byte frame: {off:?}"
        );
    }
    if let Some(g) = off.gso {
        let tso = if g.v6 { f::HOST_TSO6 } else { f::HOST_TSO4 };
        assert!(
            n & f::CSUM != 0 && n & tso != 0,
            "GSO not negotiated: {off:?}"
        );
        let (l3, l4, hdr_len) = (usize::from(g.l3), usize::from(g.l4), usize::from(g.hdr_len));
        assert!(l3 == 14 || l3 == 18, "{off:?}");
        assert!(
            l3 + 20 <= l4 && l4 + 20 <= hdr_len && hdr_len <= len,
            "{off:?}"
        );
        assert!(
            g.mss > 0 && hdr_len + usize::from(g.mss) <= MAX_FRAME,
            "{off:?}"
        );
        let c = off.csum.expect("GSO comes with NEEDS_CSUM");
        assert_eq!((c.start, c.offset), (g.l4, 16), "the TCP checksum field");
    }
}

/// `frame` with `off` as plain frames, as the hypervisor gives them to a
/// receiver that does not take `off` or to the physical NIC; checks that
/// they stand for the frame.
fn resolved(frame: &[u8], off: &Offload) -> Vec<Vec<u8>> {
    let mut out = [0u8; MAX_FRAME];
    let mut pieces = Vec::new();
    offload::resolve(frame, off, &mut out, |p| pieces.push(p.to_vec()));
    for p in &pieces {
        assert!(p.len() <= MAX_FRAME, "a {}-byte piece", p.len());
    }
    match (off.gso, off.csum) {
        (Some(g), _) => {
            assert!(!pieces.is_empty(), "a GSO frame came to nothing: {off:?}");
            let (hdr_len, mss) = (usize::from(g.hdr_len), usize::from(g.mss));
            let mut payload = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                assert!(p.len() >= hdr_len, "segment {i} lost its headers");
                let chunk = &p[hdr_len..];
                assert!(
                    chunk.len() <= mss,
                    "segment {i}: {} > mss {mss}",
                    chunk.len()
                );
                payload.extend_from_slice(chunk);
            }
            assert!(
                payload == frame[hdr_len..],
                "segments' payloads != the frame's"
            );
        }
        (None, Some(c)) => {
            assert_eq!(pieces.len(), 1, "a checksum-only frame is one frame");
            let p = &pieces[0];
            assert_eq!(p.len(), frame.len());
            let at = usize::from(c.start) + usize::from(c.offset);
            for (k, (a, b)) in p.iter().zip(frame).enumerate() {
                assert!(a == b || (at..at + 2).contains(&k), "byte {k} changed");
            }
        }
        (None, None) => assert!(pieces == [frame], "a plain frame is itself"),
    }
    pieces
}

/// The buffers of the receive chain at `head`, as the descriptors in RAM
/// say.
fn chain(v: &Vm, head: u16) -> Vec<(u64, u64)> {
    let mut bufs = Vec::new();
    let mut index = head;
    for _ in 0..RING {
        let mut raw = [0u8; 16];
        v.mem
            .read(v.rx.layout.desc + 16 * u64::from(index % RING), &mut raw)
            .unwrap();
        let addr = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let n = u64::from(u32::from_le_bytes(raw[8..12].try_into().unwrap()));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        bufs.push((addr, n));
        if flags & 1 == 0 {
            break;
        }
        index = u16::from_le_bytes([raw[14], raw[15]]);
    }
    bufs
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Delivers `frame` (with `off`) to VM `i` and checks what landed in its
/// buffers.
fn deliver(vms: &mut [Vm; 2], i: usize, frame: &[u8], off: &Offload) {
    let v = &mut vms[i];
    let whole = takes(v.net.transport.negotiated(), off);
    assert_eq!(whole, v.net.rx_caps().accepts(off), "rx_caps for {off:?}");
    // What should land, chain by chain.
    let expect: Vec<(Vec<u8>, [u8; HDR_LEN])> = if whole {
        vec![(frame.to_vec(), offload::rx_header(off))]
    } else {
        let plain = offload::rx_header(&Offload::default());
        assert_eq!(
            plain,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "a plain header"
        );
        resolved(frame, off)
            .into_iter()
            .map(|p| (p, plain))
            .collect()
    };
    let d = v.net.deliver(&v.mem, frame, off);
    let mut used = Vec::new();
    while let Some(u) = v.rx.take_used(&v.mem) {
        used.push(u);
        if used.len() > usize::from(RING) {
            break;
        }
    }
    if v.tainted {
        return;
    }
    assert!(
        used.len() <= expect.len(),
        "{} chains used for {} frames",
        used.len(),
        expect.len()
    );
    // A chain given back empty (too small, not writable) ends the
    // delivery: no later piece takes another.
    if let Some(k) = used.iter().position(|u| u.1 == 0) {
        assert_eq!(used.len(), k + 1, "chains used after one came back empty");
    }
    let full = used.iter().filter(|u| u.1 != 0).count();
    match d {
        Delivery::Delivered { .. } => assert!(full > 0, "delivered, but every chain empty"),
        Delivery::NoBuffer => assert_eq!(full, 0, "dropped, but a chain was filled"),
        Delivery::NotLive => assert!(used.is_empty(), "not live, but a chain was used"),
        Delivery::Broken(_) => {}
    }
    let chains: Vec<Vec<(u64, u64)>> = used.iter().map(|&(head, _)| chain(v, head)).collect();
    let mut landed: Vec<Option<Vec<u8>>> = Vec::new();
    for (k, (&(_, len), (piece, header))) in used.iter().zip(&expect).enumerate() {
        if len == 0 {
            landed.push(None);
            continue;
        }
        assert_eq!(len as usize, HDR_LEN + piece.len(), "chain {k}'s length");
        let bufs = &chains[k];
        let clobbered = bufs.iter().enumerate().any(|(j, &a)| {
            bufs[j + 1..].iter().any(|&b| overlap(a, b))
                || chains[k + 1..].iter().flatten().any(|&b| overlap(a, b))
        });
        if clobbered {
            landed.push(None);
            continue;
        }
        let mut got = Vec::new();
        for &(addr, n) in bufs {
            let take = (n as usize).min(HDR_LEN + piece.len() - got.len());
            let mut part = vec![0u8; take];
            v.mem.read(addr, &mut part).unwrap();
            got.extend_from_slice(&part);
            if got.len() == HDR_LEN + piece.len() {
                break;
            }
        }
        assert_eq!(got.len(), HDR_LEN + piece.len(), "chain {k} too short");
        assert_eq!(&got[..HDR_LEN], header, "chain {k}'s header for {off:?}");
        assert!(&got[HDR_LEN..] == piece, "chain {k}'s frame");
        landed.push(Some(got.split_off(HDR_LEN)));
    }
    // Every segment landed and could be read back: together they carry
    // the payload.
    if let (false, Some(g)) = (whole, off.gso) {
        if landed.len() == expect.len() && landed.iter().all(Option::is_some) {
            let h = usize::from(g.hdr_len);
            let payload: Vec<u8> = landed
                .iter()
                .flatten()
                .flat_map(|p| p[h..].to_vec())
                .collect();
            assert!(
                payload == frame[h..],
                "the segments that landed lost payload"
            );
        }
    }
}

fn switch(sw: &mut Switch, vms: &mut [Vm; 2], port: usize, frame: &[u8], off: &Offload) {
    let src: [u8; 6] = frame.get(6..12).map_or([0; 6], |s| s.try_into().unwrap());
    let dest = sw.forward(port, frame);
    let legit = match port {
        UPLINK => !MACS.contains(&src),
        p => src == MACS[p - 1],
    };
    if !legit {
        assert!(
            matches!(dest, Dest::Drop(_)),
            "{dest:?} for a spoofed source"
        );
    }
    // A VM's MAC is only ever on its own port.
    for (k, m) in MACS.iter().enumerate() {
        assert_eq!(sw.lookup(m), Some(k + 1));
    }
    let mut to = |p: usize| {
        if p == UPLINK {
            // What goes out of the physical NIC (which negotiated nothing).
            resolved(frame, off);
        } else {
            deliver(vms, p - 1, frame, off);
        }
    };
    match dest {
        Dest::Port(p) => {
            assert_ne!(p, port, "sent back where it came from");
            to(p);
        }
        Dest::Flood => {
            for p in (0..3).filter(|&p| p != port) {
                to(p);
            }
        }
        Dest::Drop(_) => {}
    }
}

fuzz_target!(|input: Input| {
    let mut ra = vec![0u8; RAM];
    let mut rb = vec![0u8; RAM];
    let mut vms = [
        vm(&mut ra, MACS[0], input.features[0]),
        vm(&mut rb, MACS[1], input.features[1]),
    ];
    let mut sw = Switch::new(vec![None, Some(MACS[0]), Some(MACS[1])], 8);
    let mut buf = vec![0u8; MAX_GSO_FRAME];
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Post {
                vm,
                at,
                len,
                big,
                write,
                split,
            } => {
                let v = &mut vms[usize::from(vm)];
                let addr = BASE + RX_BUFS + u64::from(at) % RX_SPAN;
                let len = u32::from(len) % if big { BIG_BUF } else { SMALL_BUF };
                match split.map(|s| u32::from(s) % len.max(1)) {
                    Some(cut) if cut != 0 => {
                        v.rx.add(
                            &v.mem,
                            &[
                                (addr, cut, write),
                                (addr + u64::from(cut), len - cut, write),
                            ],
                        );
                    }
                    _ => {
                        v.rx.add(&v.mem, &[(addr, len, write)]);
                    }
                }
            }
            Op::Send {
                vm,
                hdr,
                dst,
                src,
                body,
                split,
            } => {
                let i = usize::from(vm);
                let src = match src {
                    Src::Own => MACS[i],
                    Src::Other => MACS[1 - i],
                    Src::Any(m) => m,
                };
                let (f, tcp) = frame_of(dst, src, &body);
                let v = &mut vms[i];
                let need = (HDR_LEN + f.len()) as u64;
                if v.next + need > BASE + RX_BUFS {
                    v.next = BASE + TX_FRAMES;
                }
                let at = v.next;
                v.next += need.next_multiple_of(16);
                let mut bytes = header_of(&hdr, &f, tcp).to_vec();
                bytes.extend_from_slice(&f);
                v.mem.write(at, &bytes).unwrap();
                match split.map(|s| usize::from(s) % bytes.len()) {
                    Some(cut) if cut != 0 => {
                        v.tx.add(
                            &v.mem,
                            &[
                                (at, cut as u32, false),
                                (at + cut as u64, (bytes.len() - cut) as u32, false),
                            ],
                        );
                    }
                    _ => {
                        v.tx.add(&v.mem, &[(at, need as u32, false)]);
                    }
                }
            }
            Op::Raw {
                vm,
                addr,
                len,
                flags,
            } => {
                let v = &mut vms[usize::from(vm)];
                v.tx.write_desc(&v.mem, RING - 1, addr, len, flags, 0);
                v.tx.publish(&v.mem, RING - 1);
            }
            Op::Notify { vm } => {
                let i = usize::from(vm);
                let ev = {
                    let v = &mut vms[i];
                    v.net
                        .mmio_write(reg::QUEUE_NOTIFY, 4, 1, &v.mem)
                        .unwrap_or_default()
                };
                if !ev.tx {
                    continue;
                }
                loop {
                    let got = {
                        let v = &mut vms[i];
                        v.net.pop_tx(&v.mem, &mut buf)
                    };
                    match got {
                        Ok(Some((len, off))) => {
                            assert!(len <= buf.len());
                            let frame = buf[..len].to_vec();
                            check_sent(&vms[i], &frame, &off);
                            switch(&mut sw, &mut vms, i + 1, &frame, &off);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let v = &mut vms[i];
                v.net.tx_done(&v.mem);
                while v.tx.take_used(&v.mem).is_some() {}
            }
            Op::Mmio { vm, off, value } => {
                let v = &mut vms[usize::from(vm)];
                let off = u64::from(off % 0x210);
                if (off == reg::STATUS && value == 0) || off == reg::QUEUE_READY {
                    v.tainted = true;
                }
                let _ = v.net.mmio_write(off, 4, value, &v.mem);
                let _ = v.net.mmio_read(off, 4);
            }
            Op::Poke { vm, at, bytes } => {
                let v = &mut vms[usize::from(vm)];
                let at = u64::from(at) % RAM as u64;
                let n = bytes.len().min(RAM - at as usize);
                if at < RX_RING_END && n > 0 {
                    v.tainted = true;
                }
                if n > 0 && at < CTRL_RING + 0x400 && at + n as u64 > CTRL_RING {
                    v.ctrl_tainted = true;
                }
                let _ = v.mem.write(BASE + at, &bytes[..n]);
            }
            Op::Uplink { frame } => {
                let frame = &frame[..frame.len().min(1600)];
                switch(&mut sw, &mut vms, UPLINK, frame, &Offload::default());
            }
            Op::Announce { vm } => {
                let v = &mut vms[usize::from(vm)];
                let live = v.net.transport.live();
                let wants = v.net.transport.negotiated() & f::GUEST_ANNOUNCE != 0;
                let asked = v.net.announce();
                assert_eq!(asked, live && wants, "asked to announce");
                if asked {
                    assert!(v.net.status() & net::S_ANNOUNCE != 0);
                    assert!(v.net.irq_level());
                }
            }
            Op::Ctrl { vm, hdr, bufs } => {
                let v = &mut vms[usize::from(vm)];
                let bufs: Vec<(u64, u32, bool)> = bufs
                    .iter()
                    .take(4)
                    .map(|&(at, len, w)| (BASE + u64::from(at) % RAM as u64, u32::from(len), w))
                    .collect();
                if bufs.is_empty() {
                    continue;
                }
                let hdr = hdr.unwrap_or([net::CTRL_CLASS_ANNOUNCE, net::CTRL_ANNOUNCE_ACK]);
                let _ = v.mem.write(
                    bufs[0].0,
                    &hdr[..usize::try_from(bufs[0].1.min(2)).unwrap()],
                );
                // A command that ends the announcement: the header whole in
                // the first buffer, one writable ack byte last and nothing
                // else writable, all in RAM, the header not overwritten by
                // the ring's own writes.
                let (last, out) = bufs.split_last().unwrap();
                let in_ram = |&(a, l, _): &(u64, u32, bool)| a + u64::from(l) <= BASE + RAM as u64;
                let ring_page = |&(a, l, _): &(u64, u32, bool)| {
                    a + u64::from(l) > BASE + CTRL_RING && a < BASE + CTRL_RING + 0x400
                };
                let well_formed = hdr == [net::CTRL_CLASS_ANNOUNCE, net::CTRL_ANNOUNCE_ACK]
                    && bufs.len() >= 2
                    && bufs[0].1 >= 2
                    && !bufs[0].2
                    && last.2
                    && last.1 >= 1
                    && out.iter().all(|b| !b.2)
                    && bufs.iter().all(in_ram)
                    && !bufs.iter().any(ring_page);
                // The header's write and the ack byte's land where the
                // buffers are: over the receive ring's page they taint it,
                // as a poke there does.
                if bufs
                    .iter()
                    .any(|&(a, l, _)| a < BASE + RX_RING_END && a + u64::from(l.max(2)) > BASE)
                {
                    v.tainted = true;
                }
                let running = v.net.transport.live() && !v.tainted && !v.ctrl_tainted;
                v.ctrl.add(&v.mem, &bufs);
                let ev = v
                    .net
                    .mmio_write(reg::QUEUE_NOTIFY, 4, net::CTRL as u32, &v.mem)
                    .unwrap_or_default();
                if well_formed && running && ev.ctrl_broken.is_none() {
                    assert_eq!(
                        v.net.status() & net::S_ANNOUNCE,
                        0,
                        "announcement acknowledged"
                    );
                    let mut ack = [0xffu8];
                    v.mem.read(last.0, &mut ack).unwrap();
                    assert_eq!(ack[0], net::CTRL_OK, "ack byte");
                }
                while v.ctrl.take_used(&v.mem).is_some() {}
            }
        }
    }
});
