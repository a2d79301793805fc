//! Checksum and TCP segmentation offload (`bulkhead_virtio::offload`) on
//! its own: `tx_offload` of any header and frame under any negotiated
//! `Caps`, then `rx_header`, `Caps::accepts` and `resolve` of what it
//! accepted.
//!
//! The input (`arbitrary`) gives the sender's `Caps` (CSUM, HOST_TSO4/6)
//! and a receiver's, a frame and a 12-byte `virtio_net_hdr`. The frame is
//! any bytes, or a TCP segment built from the input: any MACs, an
//! optional VLAN tag, IPv4 (0..10 words of options, any flags and
//! fragment offset, identification, addresses) or IPv6, TCP (0..10 words
//! of options, any ports, sequence and acknowledgement numbers, flags,
//! window and checksum field), up to 65535 bytes of payload (so frames
//! run past `MAX_GSO_FRAME` too), then possibly some bytes overwritten
//! and the frame cut short. The header is any 12 bytes, or what Linux
//! writes for TSO (segment size `mss % 2048`, with the GSO type the
//! frame's IP version says, the other one, or ECN; NEEDS_CSUM or not; any
//! hdr_len and checksum fields, which the parser must ignore), or for a
//! partial checksum (at the TCP header's checksum field or anywhere).
//!
//! Checks that nothing panics, and:
//! - For the header of a well-formed built frame (nothing overwritten or
//!   cut, not a fragment) and Linux's TSO header, and for any frame with a
//!   checksum-only header, `tx_offload` returns exactly what virtio 1.2,
//!   5.1.6.2 asks: refused as not negotiated, too long, a bad segment size
//!   or checksum range when it is one, otherwise the offload with the
//!   frame's own layout. A header asking for nothing gives no offload for
//!   a frame of at most 1518 bytes, and is refused for a longer one.
//! - Whatever it accepts: a frame without GSO is at most 1518 bytes, one
//!   with GSO at most `MAX_GSO_FRAME`; a checksum only with CSUM, within
//!   the frame; GSO only with CSUM, HOST_TSO4/6 as the frame's IP version
//!   (an independent parse of the frame agrees on the layout, and the type
//!   the header asked), NEEDS_CSUM, the header's segment size, non-zero
//!   and making frames of at most 1518 bytes, the checksum at the TCP
//!   header's field. `rx_header` says exactly that: NEEDS_CSUM and the
//!   range with a checksum, the GSO type, hdr_len (inside the frame) and
//!   segment size with GSO, zeros otherwise, `num_buffers` 1.
//!   `Caps::accepts` follows virtio's feature rules.
//! - `resolve`: every frame it gives is at most 1518 bytes. Without an
//!   offload, the frame itself. A checksum-only frame gives one copy that
//!   differs only in the two checksum bytes, and (field at an even offset)
//!   whose ones' complement sum from `csum_start`, plus what the field
//!   held, is all ones. A GSO frame gives ceil(payload / mss) segments (one
//!   if there is no payload), all but the last of exactly `mss` payload
//!   bytes, whose payloads concatenated are the frame's payload; each has
//!   the frame's headers with only the IP length (IPv4: total length,
//!   identification advanced by one per segment, header checksum; IPv6:
//!   payload length), the sequence number (advanced by the payload before
//!   it), the flags (FIN and PSH on the last segment only, CWR on the
//!   first only) and the TCP checksum changed; an IPv4 header checksum
//!   that verifies, and a TCP checksum that verifies over the
//!   pseudo-header and the segment (our own ones' complement sums).
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_virtio::net::MAX_FRAME;
use bulkhead_virtio::offload::{self, hdr, Caps, Csum, Gso, Offload, Refused, MAX_GSO_FRAME};
use libfuzzer_sys::fuzz_target;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Arbitrary, Debug)]
enum Frag {
    Zero,
    Df,
    Any(u16),
}

/// A TCP segment; `corrupt` and `cut` make it something else.
#[derive(Arbitrary, Debug)]
struct Tcp {
    macs: [u8; 12],
    vlan: Option<u16>,
    v6: bool,
    ip_opts: u8,
    frag: Frag,
    id: u16,
    addrs: [u8; 32],
    tcp_opts: u8,
    ports: [u8; 4],
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    csum: u16,
    payload: u16,
    fill: u8,
    step: u8,
    /// Bytes overwritten once it is built: (offset, value).
    corrupt: Vec<(u16, u8)>,
    /// Cut short to this many bytes.
    cut: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Raw(Vec<u8>),
    Tcp(Tcp),
}

#[derive(Arbitrary, Debug)]
enum Header {
    Raw([u8; 12]),
    /// What Linux writes for TSO, give or take: the frame's GSO type (or
    /// the other, or with ECN), NEEDS_CSUM (or not), segment size
    /// `mss % 2048`, and fields the device is to ignore.
    Tso {
        mss: u16,
        other_type: bool,
        ecn: bool,
        no_csum: bool,
        hdr_len: u16,
        start: u16,
        offset: u16,
    },
    /// A partial checksum: at the TCP checksum field unless given.
    Csum {
        start: Option<u16>,
        offset: Option<u16>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    tx: [bool; 3],
    rx: [bool; 3],
    header: Header,
    frame: Frame,
}

/// Where a built frame's headers are: (v6, l3, l4, hdr_len).
type Layout = (bool, usize, usize, usize);

/// Builds `t`; its layout if it is well formed.
fn build(t: &Tcp) -> (Vec<u8>, Option<Layout>) {
    let mut f = t.macs.to_vec();
    if let Some(tci) = t.vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&if t.v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
    let l3 = f.len();
    let l4 = if t.v6 {
        l3 + 40
    } else {
        l3 + 4 * (5 + usize::from(t.ip_opts % 11))
    };
    let doff = 5 + usize::from(t.tcp_opts % 11);
    let hdr_len = l4 + 4 * doff;
    let payload = usize::from(t.payload);
    // Options: NOPs.
    f.resize(hdr_len, 1);
    let ip_len = (hdr_len + payload - l3).min(0xffff);
    let frag = match t.frag {
        Frag::Zero => 0,
        Frag::Df => 0x4000,
        Frag::Any(v) => v,
    };
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
        f[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
        f[l3 + 8] = 64;
        f[l3 + 9] = 6;
        f[l3 + 10..l3 + 12].fill(0);
        f[l3 + 12..l3 + 20].copy_from_slice(&t.addrs[..8]);
        let c = !fold(sum(&f[l3..l4], 0));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4..l4 + 4].copy_from_slice(&t.ports);
    f[l4 + 4..l4 + 8].copy_from_slice(&t.seq.to_be_bytes());
    f[l4 + 8..l4 + 12].copy_from_slice(&t.ack.to_be_bytes());
    f[l4 + 12] = (doff as u8) << 4;
    f[l4 + 13] = t.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&t.window.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&t.csum.to_be_bytes());
    f[l4 + 18..l4 + 20].fill(0);
    let mut b = t.fill;
    f.extend((0..payload).map(|_| {
        b = b.wrapping_add(t.step);
        b
    }));
    let mut pristine = t.v6 || frag & 0x3fff == 0;
    for &(at, v) in &t.corrupt {
        if let Some(x) = f.get_mut(usize::from(at)) {
            pristine &= *x == v;
            *x = v;
        }
    }
    if let Some(n) = t.cut {
        let n = usize::from(n);
        pristine &= n >= f.len();
        f.truncate(n);
    }
    let layout = pristine.then_some((t.v6, l3, l4, hdr_len));
    (f, layout)
}

/// Our own reading of which frames are TCP segments that can be cut:
/// Ethernet, at most one 802.1Q tag, IPv4 with IHL >= 5 that is not a
/// fragment or IPv6 with TCP as next header, a TCP header (data offset
/// >= 5) that fits.
fn parse(f: &[u8]) -> Option<Layout> {
    let be = |at: usize| Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]));
    let (mut l3, mut ty) = (14, be(12)?);
    if ty == 0x8100 {
        (l3, ty) = (18, be(16)?);
    }
    let (v6, l4) = match ty {
        0x0800 => {
            let b = *f.get(l3)?;
            let ihl = usize::from(b & 15) * 4;
            let ok = b >> 4 == 4 && ihl >= 20 && *f.get(l3 + 9)? == 6 && be(l3 + 6)? & 0x3fff == 0;
            if !ok {
                return None;
            }
            (false, l3 + ihl)
        }
        0x86dd => {
            if *f.get(l3)? >> 4 != 6 || *f.get(l3 + 6)? != 6 {
                return None;
            }
            (true, l3 + 40)
        }
        _ => return None,
    };
    let doff = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    (doff >= 20 && l4 + doff <= f.len()).then_some((v6, l3, l4, l4 + doff))
}

/// Ones' complement sum of big-endian 16-bit words (a last odd byte
/// padded with zero), added to `s`, not folded.
fn sum(data: &[u8], mut s: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

/// Folds a sum to 16 bits with end-around carry.
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn le16(h: &[u8; 12], at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The header the input asks for, before `frame` (laid out as `at`).
fn header_of(h: &Header, at: Option<Layout>) -> [u8; 12] {
    let (v6, _, l4, _) = at.unwrap_or((false, 14, 34, 54));
    let mut b = [0u8; 12];
    match *h {
        Header::Raw(raw) => b = raw,
        Header::Tso {
            mss,
            other_type,
            ecn,
            no_csum,
            hdr_len,
            start,
            offset,
        } => {
            b[0] = if no_csum { 0 } else { hdr::F_NEEDS_CSUM };
            b[1] = if v6 != other_type {
                hdr::GSO_TCPV6
            } else {
                hdr::GSO_TCPV4
            } | if ecn { hdr::GSO_ECN } else { 0 };
            b[2..4].copy_from_slice(&hdr_len.to_le_bytes());
            b[4..6].copy_from_slice(&(mss % 2048).to_le_bytes());
            b[6..8].copy_from_slice(&start.to_le_bytes());
            b[8..10].copy_from_slice(&offset.to_le_bytes());
        }
        Header::Csum { start, offset } => {
            b[0] = hdr::F_NEEDS_CSUM;
            b[6..8].copy_from_slice(&start.unwrap_or(l4 as u16).to_le_bytes());
            b[8..10].copy_from_slice(&offset.unwrap_or(16).to_le_bytes());
        }
    }
    b
}

/// What `tx_offload` must answer where virtio leaves no choice: a
/// checksum-only or empty request, and Linux's TSO header for a
/// well-formed frame.
fn expected(
    caps: Caps,
    h: &Header,
    b: &[u8; 12],
    frame: &[u8],
    at: Option<Layout>,
) -> Option<Result<Offload, Refused>> {
    let len = frame.len();
    let none = b[1] == hdr::GSO_NONE;
    if none && b[0] & hdr::F_NEEDS_CSUM == 0 {
        return Some(if len > MAX_FRAME {
            Err(Refused::Length)
        } else {
            Ok(Offload::default())
        });
    }
    if none {
        let (start, offset) = (le16(b, 6), le16(b, 8));
        return Some(if len > MAX_FRAME {
            Err(Refused::Length)
        } else if !caps.csum {
            Err(Refused::NotNegotiated)
        } else if usize::from(start) + usize::from(offset) + 2 > len {
            Err(Refused::CsumRange)
        } else {
            Ok(Offload {
                csum: Some(Csum { start, offset }),
                gso: None,
            })
        });
    }
    let Header::Tso {
        other_type: false,
        ecn: false,
        no_csum: false,
        ..
    } = h
    else {
        return None;
    };
    let (v6, l3, l4, hdr_len) = at?;
    let mss = le16(b, 4);
    Some(if !(caps.csum && if v6 { caps.tso6 } else { caps.tso4 }) {
        Err(Refused::NotNegotiated)
    } else if len > MAX_GSO_FRAME {
        Err(Refused::Length)
    } else if mss < offload::MIN_MSS || usize::from(mss) + hdr_len > MAX_FRAME {
        Err(Refused::Mss)
    } else {
        Ok(Offload {
            csum: Some(Csum {
                start: l4 as u16,
                offset: 16,
            }),
            gso: Some(Gso {
                v6,
                l3: l3 as u16,
                l4: l4 as u16,
                hdr_len: hdr_len as u16,
                mss,
            }),
        })
    })
}

/// What `tx_offload` accepted, against the header, the caps and the frame.
fn check_accepted(caps: Caps, b: &[u8; 12], frame: &[u8], off: &Offload) {
    let len = frame.len();
    if let Some(c) = off.csum {
        assert!(caps.csum, "a checksum without CSUM");
        assert!(b[0] & hdr::F_NEEDS_CSUM != 0, "a checksum nobody asked for");
        assert!(usize::from(c.start) + usize::from(c.offset) + 2 <= len);
    }
    match off.gso {
        None => {
            assert!(len <= MAX_FRAME, "{len} bytes without GSO");
            assert_eq!(b[1], hdr::GSO_NONE, "a GSO request dropped");
            if off.csum.is_none() {
                assert_eq!(b[0] & hdr::F_NEEDS_CSUM, 0, "NEEDS_CSUM dropped");
            }
        }
        Some(g) => {
            assert!(len <= MAX_GSO_FRAME, "{len} bytes with GSO");
            assert!(caps.csum && if g.v6 { caps.tso6 } else { caps.tso4 });
            assert!(b[0] & hdr::F_NEEDS_CSUM != 0, "GSO without NEEDS_CSUM");
            let ty = if g.v6 { hdr::GSO_TCPV6 } else { hdr::GSO_TCPV4 };
            assert_eq!(b[1], ty, "GSO type");
            assert_eq!(g.mss, le16(b, 4), "segment size");
            let layout = (
                g.v6,
                usize::from(g.l3),
                usize::from(g.l4),
                usize::from(g.hdr_len),
            );
            assert_eq!(parse(frame), Some(layout), "the frame's layout");
            assert!(
                g.mss >= offload::MIN_MSS
                    && usize::from(g.mss) + usize::from(g.hdr_len) <= MAX_FRAME
            );
            assert_eq!(
                off.csum,
                Some(Csum {
                    start: g.l4,
                    offset: 16
                }),
                "the TCP checksum field"
            );
        }
    }
    let h = offload::rx_header(off);
    assert_eq!(le16(&h, 10), 1, "num_buffers");
    match off.csum {
        Some(c) => {
            assert_eq!(h[0], hdr::F_NEEDS_CSUM);
            assert_eq!((le16(&h, 6), le16(&h, 8)), (c.start, c.offset));
            assert!(usize::from(le16(&h, 6)) + usize::from(le16(&h, 8)) + 2 <= len);
        }
        None => assert_eq!((h[0], le16(&h, 6), le16(&h, 8)), (0, 0, 0)),
    }
    match off.gso {
        Some(g) => {
            let ty = if g.v6 { hdr::GSO_TCPV6 } else { hdr::GSO_TCPV4 };
            assert_eq!(h[1], ty);
            assert_eq!((le16(&h, 2), le16(&h, 4)), (g.hdr_len, g.mss));
            assert!(usize::from(le16(&h, 2)) <= len, "hdr_len past the frame");
        }
        None => assert_eq!((h[1], le16(&h, 2), le16(&h, 4)), (0, 0, 0)),
    }
}

/// Checks each piece `resolve` gives for a GSO frame as it comes.
struct Segments<'a> {
    frame: &'a [u8],
    g: Gso,
    count: usize,
    /// Payload bytes of the frame seen so far.
    done: usize,
    /// The last segment's payload length.
    last: usize,
    scratch: Vec<u8>,
}

impl Segments<'_> {
    fn piece(&mut self, s: &[u8]) {
        let (f, g, i) = (self.frame, self.g, self.count);
        let (l3, l4, h) = (usize::from(g.l3), usize::from(g.l4), usize::from(g.hdr_len));
        let mss = usize::from(g.mss);
        assert!(s.len() <= MAX_FRAME, "segment {i}: {} bytes", s.len());
        assert!(s.len() >= h, "segment {i} lost its headers");
        assert!(i == 0 || self.last == mss, "segment {} was short", i - 1);
        let chunk = &s[h..];
        assert!(chunk.len() <= mss, "segment {i}: {} > mss", chunk.len());
        assert!(
            f[h + self.done..].starts_with(chunk),
            "segment {i}: payload at {} differs",
            self.done
        );
        // The headers are the frame's but for what segmenting changes: with
        // those bytes put back, they are the same.
        let hd = &mut self.scratch;
        hd.clear();
        hd.extend_from_slice(&s[..h]);
        let ip: &[(usize, usize)] = if g.v6 {
            &[(l3 + 4, l3 + 6)]
        } else {
            &[(l3 + 2, l3 + 6), (l3 + 10, l3 + 12)]
        };
        for &(a, b) in ip
            .iter()
            .chain(&[(l4 + 4, l4 + 8), (l4 + 13, l4 + 14), (l4 + 16, l4 + 18)])
        {
            hd[a..b].copy_from_slice(&f[a..b]);
        }
        assert!(hd[..] == f[..h], "segment {i}: headers changed");
        if g.v6 {
            assert_eq!(
                usize::from(be16(s, l3 + 4)),
                s.len() - l3 - 40,
                "payload length"
            );
        } else {
            assert_eq!(usize::from(be16(s, l3 + 2)), s.len() - l3, "total length");
            assert_eq!(
                be16(s, l3 + 4),
                be16(f, l3 + 4).wrapping_add(i as u16),
                "id"
            );
            assert_eq!(fold(sum(&s[l3..l4], 0)), 0xffff, "segment {i}: IP checksum");
        }
        let seq = be32(f, l4 + 4).wrapping_add(self.done as u32);
        assert_eq!(be32(s, l4 + 4), seq, "segment {i}: sequence number");
        // Flags as the frame's, FIN and PSH kept for the last only (checked
        // at the end), CWR for the first only.
        let f0 = f[l4 + 13];
        let want = if i == 0 { f0 } else { f0 & !TCP_CWR };
        assert_eq!(
            s[l4 + 13] & !(TCP_FIN | TCP_PSH),
            want & !(TCP_FIN | TCP_PSH)
        );
        let last = self.done + chunk.len() == f.len() - h;
        let fp = s[l4 + 13] & (TCP_FIN | TCP_PSH);
        let f0p = f0 & (TCP_FIN | TCP_PSH);
        assert_eq!(fp, if last { f0p } else { 0 }, "segment {i}: FIN/PSH");
        // The TCP checksum, verified the receiver's way.
        let addrs = if g.v6 {
            &s[l3 + 8..l3 + 40]
        } else {
            &s[l3 + 12..l3 + 20]
        };
        let tcp_len = (s.len() - l4) as u32;
        let mut total = sum(addrs, 0);
        total = sum(&tcp_len.to_be_bytes(), total);
        total = sum(&[0, 6], total);
        total = sum(&s[l4..], total);
        assert_eq!(fold(total), 0xffff, "segment {i}: TCP checksum");
        self.count += 1;
        self.done += chunk.len();
        self.last = chunk.len();
    }
}

fn check_resolved(frame: &[u8], off: &Offload) {
    let mut out = [0u8; MAX_FRAME];
    match (off.gso, off.csum) {
        (Some(g), _) => {
            let mut s = Segments {
                frame,
                g,
                count: 0,
                done: 0,
                last: 0,
                scratch: Vec::new(),
            };
            offload::resolve(frame, off, &mut out, |p| s.piece(p));
            let payload = frame.len() - usize::from(g.hdr_len);
            assert_eq!(s.done, payload, "the segments lost payload");
            let n = payload.div_ceil(usize::from(g.mss)).max(1);
            assert_eq!(s.count, n, "segments");
        }
        (None, Some(c)) => {
            let mut pieces = 0;
            offload::resolve(frame, off, &mut out, |p| {
                pieces += 1;
                assert!(p.len() <= MAX_FRAME);
                assert_eq!(p.len(), frame.len());
                let start = usize::from(c.start);
                let at = start + usize::from(c.offset);
                for (k, (a, b)) in p.iter().zip(frame).enumerate() {
                    assert!(a == b || (at..at + 2).contains(&k), "byte {k} changed");
                }
                if c.offset % 2 == 0 {
                    // The field held the pseudo-header's sum: with it, the
                    // completed range sums to all ones.
                    let held = u64::from(be16(frame, at));
                    assert_eq!(fold(sum(&p[start..], held)), 0xffff, "checksum");
                }
            });
            assert_eq!(pieces, 1, "a checksum-only frame is one frame");
        }
        (None, None) => {
            let mut pieces = 0;
            offload::resolve(frame, off, &mut out, |p| {
                pieces += 1;
                assert!(p == frame, "a plain frame is itself");
            });
            assert_eq!(pieces, 1);
        }
    }
}

fn caps([csum, tso4, tso6]: [bool; 3]) -> Caps {
    Caps { csum, tso4, tso6 }
}

fuzz_target!(|input: Input| {
    let (frame, at) = match &input.frame {
        Frame::Raw(b) => (b[..b.len().min(MAX_GSO_FRAME + 16)].to_vec(), None),
        Frame::Tcp(t) => build(t),
    };
    let tx = caps(input.tx);
    let b = header_of(&input.header, at);
    let got = offload::tx_offload(tx, &b, &frame);
    if let Some(want) = expected(tx, &input.header, &b, &frame, at) {
        assert_eq!(
            got,
            want,
            "tx_offload({tx:?}, {b:02x?}) of {} bytes",
            frame.len()
        );
    }
    let Ok(off) = got else {
        return;
    };
    check_accepted(tx, &b, &frame, &off);
    let rx = caps(input.rx);
    let takes = match (off.gso, off.csum) {
        (Some(g), _) => rx.csum && if g.v6 { rx.tso6 } else { rx.tso4 },
        (None, Some(_)) => rx.csum,
        (None, None) => true,
    };
    assert_eq!(rx.accepts(&off), takes, "{rx:?} accepts {off:?}");
    assert!(tx.accepts(&off), "the sender's own caps take what it sent");
    check_resolved(&frame, &off);
});
