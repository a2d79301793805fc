//! Checksum and TCP segmentation offload between virtio-net ports
//! (virtio 1.2, 5.1.6.2 and 5.1.6.4).
//!
//! A guest that negotiated VIRTIO_NET_F_CSUM and HOST_TSO4/6 hands the
//! device TCP segments of up to 64 KiB with the checksum left to do. The
//! switch passes such a frame as it is to a receiver that negotiated
//! GUEST_CSUM and GUEST_TSO4/6 (one copy for 64 KiB instead of 45 frames,
//! traps and interrupts), and cuts it into MTU-sized frames with their
//! checksums done for one that did not, or for the physical NIC.
//!
//! Nothing the sender's `virtio_net_hdr` says is passed on as it was
//! written: [`tx_offload`] parses the frame itself (Ethernet, an optional
//! VLAN tag, IPv4 or IPv6, TCP) and keeps only what agrees with it, so a
//! receiver never gets a header that points outside its frame.

/// `virtio_net_hdr` flags and GSO types (5.1.6).
pub mod hdr {
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_ECN: u8 = 0x80;
}

/// The largest frame with segmentation offload: an IP packet of 64 KiB
/// behind an Ethernet header and a VLAN tag.
pub const MAX_GSO_FRAME: usize = 18 + 65535;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const TCP_CSUM_AT: u16 = 16;
/// The smallest segment size we cut to (Linux's TCP_MIN_MSS): a guest
/// asking for 1-byte segments would turn one 64 KiB frame into 65,535
/// for every receiver without offload and for the physical NIC.
pub const MIN_MSS: u16 = 88;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A frame's checked offload requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The checksum over bytes `start..` is still to be folded and stored
    /// at `start + offset` (the field holds the pseudo-header's sum).
    pub csum: Option<Csum>,
    /// A TCP segment to be cut into `mss`-byte pieces.
    pub gso: Option<Gso>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Csum {
    pub start: u16,
    pub offset: u16,
}

/// Where the headers of a TCP frame are, and the segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub v6: bool,
    /// Offsets of the IP and TCP headers, and of the payload.
    pub l3: u16,
    pub l4: u16,
    pub hdr_len: u16,
    pub mss: u16,
}

/// Why a frame's header is refused (the frame is dropped and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// An offload the driver did not negotiate.
    NotNegotiated,
    /// A GSO type we do not offer (UDP, ECN), or GSO without NEEDS_CSUM.
    GsoType,
    /// The checksum range is outside the frame.
    CsumRange,
    /// A GSO frame that is not TCP over IPv4/IPv6 as its type says.
    NotTcp,
    /// A segment size below [`MIN_MSS`], or one whose frames would exceed
    /// the MTU.
    Mss,
    /// Too long for what was negotiated, or too short.
    Length,
}

/// What a driver negotiated, in the terms [`tx_offload`] needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
}

impl Caps {
    /// Whether a frame with `off` may be given to a receiver with these
    /// capabilities as it is.
    pub fn accepts(&self, off: &Offload) -> bool {
        match (off.gso, off.csum) {
            (Some(g), _) => self.csum && if g.v6 { self.tso6 } else { self.tso4 },
            (None, Some(_)) => self.csum,
            (None, None) => true,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le16(b: &[u8; 12], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The header a guest put before a frame it sent, checked against the
/// frame and against what it negotiated (`caps`: CSUM, HOST_TSO4/6).
pub fn tx_offload(caps: Caps, header: &[u8; 12], frame: &[u8]) -> Result<Offload, Refused> {
    let (flags, gso_type) = (header[0], header[1]);
    let (gso_size, start, offset) = (le16(header, 4), le16(header, 6), le16(header, 8));
    let needs_csum = flags & hdr::F_NEEDS_CSUM != 0;
    if gso_type == hdr::GSO_NONE {
        if frame.len() > crate::net::MAX_FRAME {
            return Err(Refused::Length);
        }
        if !needs_csum {
            return Ok(Offload::default());
        }
        if !caps.csum {
            return Err(Refused::NotNegotiated);
        }
        let end = usize::from(start) + usize::from(offset) + 2;
        if end > frame.len() {
            return Err(Refused::CsumRange);
        }
        return Ok(Offload {
            csum: Some(Csum { start, offset }),
            gso: None,
        });
    }
    let v6 = match gso_type {
        hdr::GSO_TCPV4 => false,
        hdr::GSO_TCPV6 => true,
        _ => return Err(Refused::GsoType),
    };
    if !(if v6 { caps.tso6 } else { caps.tso4 }) || !caps.csum {
        return Err(Refused::NotNegotiated);
    }
    if !needs_csum {
        return Err(Refused::GsoType);
    }
    if frame.len() > MAX_GSO_FRAME {
        return Err(Refused::Length);
    }
    let mut g = tcp_layout(frame).ok_or(Refused::NotTcp)?;
    if g.v6 != v6 {
        return Err(Refused::NotTcp);
    }
    let most = crate::net::MAX_FRAME.saturating_sub(usize::from(g.hdr_len));
    if gso_size < MIN_MSS || usize::from(gso_size) > most {
        return Err(Refused::Mss);
    }
    g.mss = gso_size;
    Ok(Offload {
        csum: Some(Csum {
            start: g.l4,
            offset: TCP_CSUM_AT,
        }),
        gso: Some(g),
    })
}

/// Parses Ethernet (with at most one VLAN tag), IPv4 without fragments
/// or IPv6 without extension headers, and TCP; `mss` is left zero.
fn tcp_layout(frame: &[u8]) -> Option<Gso> {
    let mut l3 = 14usize;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETH_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    let (v6, l4) = match ethertype {
        ETH_IPV4 => {
            let vihl = *frame.get(l3)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 || *frame.get(l3 + 9)? != PROTO_TCP {
                return None;
            }
            // A fragment (MF or an offset) is not a segment to cut.
            if be16(frame, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            (false, l3 + ihl)
        }
        ETH_IPV6 => {
            if *frame.get(l3)? >> 4 != 6 || *frame.get(l3 + 6)? != PROTO_TCP {
                return None;
            }
            (true, l3 + 40)
        }
        _ => return None,
    };
    let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    let hdr_len = l4 + doff;
    if doff < 20 || hdr_len > frame.len() {
        return None;
    }
    Some(Gso {
        v6,
        l3: l3 as u16,
        l4: l4 as u16,
        hdr_len: hdr_len as u16,
        mss: 0,
    })
}

/// The ones' complement sum of `data` (RFC 1071), added to `sum`, folded
/// to 16 bits. Eight bytes at a time, as two 32-bit words: the end-around
/// carry makes a sum of wider words fold to the same 16-bit sum (RFC 1071,
/// 2.(B)), and segments are checksummed at EL2 for every receiver without
/// offload.
fn sum16(data: &[u8], sum: u32) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Completes a NEEDS_CSUM checksum in place (the field holds the
/// pseudo-header's sum, as the sender left it).
fn finish_csum(frame: &mut [u8], c: Csum) {
    let (start, at) = (
        usize::from(c.start),
        usize::from(c.start) + usize::from(c.offset),
    );
    if at + 2 > frame.len() {
        return;
    }
    let mut v = fold(sum16(&frame[start..], 0));
    // UDP sends a zero checksum as all ones (RFC 768); TCP is never zero
    // once the pseudo-header is in.
    if v == 0 {
        v = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The TCP checksum of `frame`'s segment, from scratch: pseudo-header
/// (addresses, protocol, TCP length), TCP header with a zero checksum,
/// payload.
fn tcp_csum(frame: &mut [u8], g: &Gso) {
    let (l3, l4) = (usize::from(g.l3), usize::from(g.l4));
    let tcp_len = frame.len() - l4;
    frame[l4 + 16..l4 + 18].fill(0);
    let addrs = if g.v6 {
        &frame[l3 + 8..l3 + 40]
    } else {
        &frame[l3 + 12..l3 + 20]
    };
    let mut sum = sum16(addrs, 0);
    sum = sum16(&(tcp_len as u32).to_be_bytes(), sum);
    sum = sum16(&[0, PROTO_TCP], sum);
    sum = sum16(&frame[l4..], sum);
    let v = fold(sum);
    frame[l4 + 16..l4 + 18].copy_from_slice(&v.to_be_bytes());
}

/// Gives `f` what `frame` stands for as plain frames with every checksum
/// done: the frame itself, a copy with its checksum completed, or its
/// segments one after the other, each built in `out`.
pub fn resolve(
    frame: &[u8],
    off: &Offload,
    out: &mut [u8; crate::net::MAX_FRAME],
    mut f: impl FnMut(&[u8]),
) {
    match (off.gso, off.csum) {
        (Some(g), _) => segment(frame, &g, out, f),
        (None, Some(c)) => {
            let Some(copy) = out.get_mut(..frame.len()) else {
                return;
            };
            copy.copy_from_slice(frame);
            finish_csum(copy, c);
            f(copy);
        }
        (None, None) => f(frame),
    }
}

/// Cuts a TCP frame into segments of at most `mss` payload bytes: the
/// same headers with the IP length (and IPv4 identification and header
/// checksum) and the TCP sequence number advanced, FIN and PSH on the
/// last segment only, CWR on the first only, each TCP checksum computed.
fn segment(frame: &[u8], g: &Gso, out: &mut [u8; crate::net::MAX_FRAME], mut f: impl FnMut(&[u8])) {
    let (l3, l4, hdr_len) = (usize::from(g.l3), usize::from(g.l4), usize::from(g.hdr_len));
    let mss = usize::from(g.mss);
    // What `tx_offload` guarantees, checked again: `resolve` is public.
    let ip_min = if g.v6 { 40 } else { 20 };
    let sane = l3 + ip_min <= l4 && l4 + 20 <= hdr_len && hdr_len <= frame.len();
    if mss == 0 || hdr_len + mss > out.len() || !sane {
        return;
    }
    let payload = &frame[hdr_len..];
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = be16(frame, l3 + 4).unwrap_or(0);
    let flags0 = frame[l4 + 13];
    let pieces = payload.len().div_ceil(mss).max(1);
    for i in 0..pieces {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let len = hdr_len + chunk.len();
        let seg = &mut out[..len];
        seg[..hdr_len].copy_from_slice(&frame[..hdr_len]);
        seg[hdr_len..].copy_from_slice(chunk);
        let ip_len = (len - l3) as u16;
        if g.v6 {
            seg[l3 + 4..l3 + 6].copy_from_slice(&(ip_len - 40).to_be_bytes());
        } else {
            seg[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
            seg[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[l3 + 10..l3 + 12].fill(0);
            let v = fold(sum16(&seg[l3..l4], 0));
            seg[l3 + 10..l3 + 12].copy_from_slice(&v.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < pieces {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[l4 + 13] = flags;
        tcp_csum(seg, g);
        f(seg);
    }
}

/// The `virtio_net_hdr` for a frame given to a receiver as it is (one
/// that [`Caps::accepts`] it): what we parsed, never what the sender
/// wrote.
pub fn rx_header(off: &Offload) -> [u8; 12] {
    let mut h = [0u8; 12];
    if let Some(c) = off.csum {
        h[0] = hdr::F_NEEDS_CSUM;
        h[6..8].copy_from_slice(&c.start.to_le_bytes());
        h[8..10].copy_from_slice(&c.offset.to_le_bytes());
    }
    if let Some(g) = off.gso {
        h[1] = if g.v6 { hdr::GSO_TCPV6 } else { hdr::GSO_TCPV4 };
        h[2..4].copy_from_slice(&g.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&g.mss.to_le_bytes());
    }
    h[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    const ALL: Caps = Caps {
        csum: true,
        tso4: true,
        tso6: true,
    };

    /// A TCP frame over IPv4 (or IPv6) with `payload` bytes, flags
    /// PSH|ACK|FIN|CWR, the checksum field holding the pseudo-header sum
    /// without length as Linux leaves it for TSO.
    fn tcp_frame(v6: bool, vlan: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 0];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        if vlan {
            f.extend_from_slice(&ETH_VLAN.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        let l3 = f.len();
        if v6 {
            f.extend_from_slice(&ETH_IPV6.to_be_bytes());
            let l3 = l3 + 2;
            f.resize(l3 + 40, 0);
            f[l3] = 0x60;
            f[l3 + 6] = PROTO_TCP;
            f[l3 + 7] = 64;
            for i in 0..32 {
                f[l3 + 8 + i] = i as u8 + 1;
            }
        } else {
            f.extend_from_slice(&ETH_IPV4.to_be_bytes());
            let l3 = l3 + 2;
            f.resize(l3 + 20, 0);
            f[l3] = 0x45;
            f[l3 + 4..l3 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
            f[l3 + 6] = 0x40; // DF
            f[l3 + 8] = 64;
            f[l3 + 9] = PROTO_TCP;
            f[l3 + 12..l3 + 20].copy_from_slice(&[10, 0, 2, 1, 10, 0, 2, 2]);
        }
        let l4 = f.len();
        f.resize(l4 + 32, 0); // 20 bytes and 12 of options
        f[l4..l4 + 2].copy_from_slice(&5000u16.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&80u16.to_be_bytes());
        f[l4 + 4..l4 + 8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        f[l4 + 12] = 8 << 4;
        f[l4 + 13] = TCP_PSH | TCP_FIN | TCP_CWR | 0x10;
        f.extend((0..payload).map(|i| (i * 7 + 3) as u8));
        f
    }

    fn header(gso: u8, mss: u16, start: u16, offset: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = hdr::F_NEEDS_CSUM;
        h[1] = gso;
        h[4..6].copy_from_slice(&mss.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h
    }

    /// A TCP segment's checksum, verified the receiver's way: the sum over
    /// pseudo-header and segment is all ones.
    fn tcp_ok(seg: &[u8], g: &Gso) -> bool {
        let (l3, l4) = (usize::from(g.l3), usize::from(g.l4));
        let addrs = if g.v6 {
            &seg[l3 + 8..l3 + 40]
        } else {
            &seg[l3 + 12..l3 + 20]
        };
        let mut sum = sum16(addrs, 0);
        sum = sum16(&((seg.len() - l4) as u32).to_be_bytes(), sum);
        sum = sum16(&[0, PROTO_TCP], sum);
        fold(sum16(&seg[l4..], sum)) == 0
    }

    #[test]
    fn segments_carry_the_payload_in_order_with_every_checksum_right() {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            let frame = tcp_frame(v6, vlan, 10_000);
            let kind = if v6 { hdr::GSO_TCPV6 } else { hdr::GSO_TCPV4 };
            let l4 = if v6 { 54 } else { 34 } + if vlan { 4 } else { 0 };
            let off = tx_offload(ALL, &header(kind, 1400, l4, 16), &frame).unwrap();
            let g = off.gso.unwrap();
            assert_eq!((g.l4, g.hdr_len, g.v6), (l4, l4 + 32, v6));
            let mut out = [0u8; crate::net::MAX_FRAME];
            let mut segs: Vec<Vec<u8>> = Vec::new();
            resolve(&frame, &off, &mut out, |s| segs.push(s.to_vec()));
            assert_eq!(segs.len(), 10_000usize.div_ceil(1400));
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let hl = usize::from(g.hdr_len);
                assert!(s.len() <= hl + 1400 && s.len() <= crate::net::MAX_FRAME);
                assert!(tcp_ok(s, &g), "segment {i}: TCP checksum");
                let l3 = usize::from(g.l3);
                let l4 = usize::from(g.l4);
                if v6 {
                    assert_eq!(usize::from(be16(s, l3 + 4).unwrap()), s.len() - l3 - 40);
                } else {
                    assert_eq!(usize::from(be16(s, l3 + 2).unwrap()), s.len() - l3);
                    assert_eq!(be16(s, l3 + 4), Some(0x1234 + i as u16));
                    assert_eq!(fold(sum16(&s[l3..l4], 0)), 0, "segment {i}: IP checksum");
                }
                let seq = u32::from_be_bytes([s[l4 + 4], s[l4 + 5], s[l4 + 6], s[l4 + 7]]);
                assert_eq!(seq, 0xffff_fff0u32.wrapping_add(payload.len() as u32));
                let flags = s[l4 + 13];
                let last = i + 1 == segs.len();
                assert_eq!(
                    flags & (TCP_FIN | TCP_PSH) != 0,
                    last,
                    "segment {i}: FIN/PSH"
                );
                assert_eq!(flags & TCP_CWR != 0, i == 0, "segment {i}: CWR");
                assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
                payload.extend_from_slice(&s[hl..]);
            }
            assert_eq!(
                payload,
                frame[usize::from(g.hdr_len)..],
                "v6 {v6} vlan {vlan}"
            );
        }
    }

    #[test]
    fn the_wide_sum_is_the_16_bit_sum() {
        let reference = |data: &[u8], mut sum: u32| {
            for c in data.chunks(2) {
                sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum
        };
        let data: Vec<u8> = (0..3001u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1447, 1448, 3001] {
            for seed in [0, 1, 0xffff] {
                assert_eq!(
                    sum16(&data[..len], seed),
                    reference(&data[..len], seed),
                    "{len} {seed}"
                );
            }
        }
        assert_eq!(sum16(&[0xff; 4000], 0xffff), 0xffff);
    }

    #[test]
    fn a_partial_checksum_is_completed_in_a_copy() {
        // A plain TCP frame whose field holds the pseudo-header's sum, as
        // Linux leaves it with NEEDS_CSUM.
        let mut frame = tcp_frame(false, false, 333);
        let g = tcp_layout(&frame).unwrap();
        tcp_csum(&mut frame, &g);
        let good = frame.clone();
        let l4 = usize::from(g.l4);
        let mut pseudo = sum16(&frame[26..34], 0);
        pseudo = sum16(&((frame.len() - l4) as u32).to_be_bytes(), pseudo);
        pseudo = sum16(&[0, PROTO_TCP], pseudo);
        let partial = !fold(pseudo);
        frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
        let off = tx_offload(ALL, &header(0, 0, g.l4, 16), &frame).unwrap();
        assert_eq!(off.gso, None);
        let mut out = [0u8; crate::net::MAX_FRAME];
        let mut got = Vec::new();
        resolve(&frame, &off, &mut out, |s| got = s.to_vec());
        assert_eq!(got, good);
        assert_ne!(frame, good, "the sender's frame is left as it was");
    }

    #[test]
    fn headers_that_disagree_with_the_frame_or_the_features_are_refused() {
        let f4 = tcp_frame(false, false, 3000);
        let h4 = header(hdr::GSO_TCPV4, 1448, 34, 16);
        let none = Caps::default();
        assert_eq!(tx_offload(none, &h4, &f4), Err(Refused::NotNegotiated));
        let no_tso = Caps { csum: true, ..none };
        assert_eq!(tx_offload(no_tso, &h4, &f4), Err(Refused::NotNegotiated));
        // A v6 type over a v4 frame, UDP, ECN, GSO without NEEDS_CSUM.
        let h = header(hdr::GSO_TCPV6, 1448, 34, 16);
        assert_eq!(tx_offload(ALL, &h, &f4), Err(Refused::NotTcp));
        for t in [3, hdr::GSO_TCPV4 | hdr::GSO_ECN] {
            assert_eq!(
                tx_offload(ALL, &header(t, 1448, 34, 16), &f4),
                Err(Refused::GsoType)
            );
        }
        let mut h = h4;
        h[0] = 0;
        assert_eq!(tx_offload(ALL, &h, &f4), Err(Refused::GsoType));
        // MSS zero, tiny, or past the MTU.
        for mss in [0, 1, MIN_MSS - 1, 1500] {
            let h = header(hdr::GSO_TCPV4, mss, 34, 16);
            assert_eq!(tx_offload(ALL, &h, &f4), Err(Refused::Mss));
        }
        // Not TCP, truncated, a fragment.
        let mut udp = f4.clone();
        udp[23] = 17;
        assert_eq!(tx_offload(ALL, &h4, &udp), Err(Refused::NotTcp));
        assert_eq!(tx_offload(ALL, &h4, &f4[..40]), Err(Refused::NotTcp));
        let mut frag = f4.clone();
        frag[20] = 0x20; // MF
        assert_eq!(tx_offload(ALL, &h4, &frag), Err(Refused::NotTcp));
        // A data offset that runs past the frame.
        let mut doff = f4[..34 + 32].to_vec();
        doff[34 + 12] = 15 << 4;
        assert_eq!(tx_offload(ALL, &h4, &doff), Err(Refused::NotTcp));
        // Too long: without GSO past the MTU, with GSO past 64 KiB.
        let big = tcp_frame(false, false, crate::net::MAX_FRAME);
        assert_eq!(
            tx_offload(ALL, &header(0, 0, 34, 16), &big),
            Err(Refused::Length)
        );
        let huge = tcp_frame(false, false, MAX_GSO_FRAME);
        assert_eq!(tx_offload(ALL, &h4, &huge), Err(Refused::Length));
        // A checksum field past the end, or NEEDS_CSUM not negotiated.
        let short = tcp_frame(false, false, 10);
        let h = header(0, 0, 34, u16::MAX);
        assert_eq!(tx_offload(ALL, &h, &short), Err(Refused::CsumRange));
        let h = header(0, 0, 34, 16);
        assert_eq!(tx_offload(none, &h, &short), Err(Refused::NotNegotiated));
        // Nothing asked: nothing to do, whatever else the header says.
        let mut plain = header(0, 0, 9999, 9999);
        plain[0] = 0;
        assert_eq!(tx_offload(none, &plain, &short), Ok(Offload::default()));
    }

    #[test]
    fn the_receivers_header_is_ours_and_accepts_follows_the_features() {
        let f6 = tcp_frame(true, false, 5000);
        let off = tx_offload(ALL, &header(hdr::GSO_TCPV6, 1400, 1, 2), &f6).unwrap();
        let h = rx_header(&off);
        assert_eq!((h[0], h[1]), (hdr::F_NEEDS_CSUM, hdr::GSO_TCPV6));
        assert_eq!((le16(&h, 2), le16(&h, 4)), (54 + 32, 1400));
        assert_eq!((le16(&h, 6), le16(&h, 8), le16(&h, 10)), (54, 16, 1));
        assert!(ALL.accepts(&off));
        assert!(!Caps { tso6: false, ..ALL }.accepts(&off));
        assert!(Caps { tso6: false, ..ALL }.accepts(&Offload { gso: None, ..off }));
        assert!(Caps::default().accepts(&Offload::default()));
        assert_eq!(rx_header(&Offload::default())[..10], [0; 10]);
    }
}
