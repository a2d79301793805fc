extern crate std;

use super::*;
use alloc::vec;
use std::string::ToString;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn vm() -> VmInfo {
    VmInfo {
        name: "web-1".into(),
        memory: 16 << 20,
        vcpus: 2,
        ram_ipa: 0x4000_0000,
    }
}

fn vcpu(index: u16) -> VcpuState {
    VcpuState {
        index,
        regs: (0..40)
            .map(|i| (i, u64::from(i) * 0x1111 + u64::from(index)))
            .collect(),
        fp: core::array::from_fn(|i| i as u128 * 0x0101_0101_0101_0101_0101),
        fpcr: 0x300_0000,
        fpsr: 0x10,
    }
}

/// A small whole stream: VM, two RAM records, two vCPUs, a vGIC, a device.
fn stream() -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |b: &[u8]| out.extend_from_slice(b);
    let mut e = Encoder::new(&mut put);
    e.record(TAG_VM, &vm().encode(), &mut put).unwrap();
    let page: Vec<u8> = (0..PAGE).map(|i| i as u8).collect();
    for off in [0u64, 8 * PAGE as u64] {
        e.record_parts(TAG_RAM, &[&off.to_le_bytes(), &page], &mut put)
            .unwrap();
    }
    e.record(TAG_VCPU, &vcpu(0).encode(), &mut put).unwrap();
    e.record(TAG_VCPU, &vcpu(1).encode(), &mut put).unwrap();
    e.record(TAG_VGIC, &[1, 2, 3], &mut put).unwrap();
    let d = Device {
        name: "uart",
        state: &[9; 40],
    };
    e.record(TAG_DEVICE, &d.encode(), &mut put).unwrap();
    let n = e.end(&mut put);
    assert_eq!(n as usize, out.len());
    out
}

/// Decodes `bytes` in pieces cut by `cut`, collecting (tag, payload).
fn decode_in(bytes: &[u8], mut cut: impl FnMut() -> usize) -> Result<Vec<(u32, Vec<u8>)>, Error> {
    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = cut().clamp(1, rest.len());
        d.push(&rest[..n], &mut |r| {
            got.push((r.tag, r.payload.to_vec()));
            Ok(())
        })?;
        rest = &rest[n..];
    }
    d.finish()?;
    Ok(got)
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

/// The bit-at-a-time definition, for the table-driven one to match.
fn crc32_bitwise(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn crc32_by_eight_bytes_matches_the_definition_at_any_length_and_split() {
    let data: Vec<u8> = (0..1000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 999, 1000] {
        assert_eq!(
            crc32(&data[..len]),
            crc32_bitwise(&data[..len]),
            "length {len}"
        );
    }
    // Fed in pieces that do not fall on 8-byte boundaries.
    let mut c = Crc32::new();
    for piece in data.chunks(13) {
        c.update(piece);
    }
    assert_eq!(c.value(), crc32_bitwise(&data));
}

#[test]
fn typed_payloads_round_trip() {
    assert_eq!(VmInfo::decode(&vm().encode()), Ok(vm()));
    assert_eq!(VcpuState::decode(&vcpu(3).encode()), Ok(vcpu(3)));
    assert_eq!(vcpu(3).get(7), Some(7 * 0x1111 + 3));
    assert_eq!(vcpu(3).get(700), None);
    let d = Device {
        name: "psci",
        state: &[1, 2],
    };
    assert_eq!(Device::decode(&d.encode()), Ok(d));
    let mut p = 4096u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[7; PAGE]);
    let c = RamChunk::decode(&p).unwrap();
    assert_eq!((c.offset, c.data.len()), (4096, PAGE));
    assert!(c.check_in(8192).is_ok());
    assert!(c.check_in(4096).is_err());
    assert!(is_zero_page(&[0; PAGE]));
    assert!(!is_zero_page(&p[8..]));
    // One bit set anywhere, and in a tail that is not a whole word.
    for at in [0, 7, 8, 2047, PAGE - 9, PAGE - 1] {
        let mut page = [0u8; PAGE];
        page[at] = 0x80;
        assert!(!is_zero_page(&page), "byte {at}");
    }
    let mut odd = [0u8; 13];
    assert!(is_zero_page(&odd));
    odd[12] = 1;
    assert!(!is_zero_page(&odd));
}

#[test]
fn typed_payloads_refuse_bad_fields() {
    let mut bad = vm();
    bad.name = "Web".into();
    assert!(VmInfo::decode(&bad.encode()).is_err());
    bad.name = "".into();
    assert!(VmInfo::decode(&bad.encode()).is_err());
    let mut bad = vm();
    bad.vcpus = 9;
    assert!(VmInfo::decode(&bad.encode()).is_err());
    let mut bad = vm();
    bad.memory = 4097;
    assert!(VmInfo::decode(&bad.encode()).is_err());
    let mut long = vm().encode();
    long.push(0);
    assert!(VmInfo::decode(&long).is_err());
    let mut dup = vcpu(0);
    dup.regs.push((3, 1));
    assert!(VcpuState::decode(&dup.encode()).is_err());
    let enc = vcpu(0).encode();
    assert!(VcpuState::decode(&enc[..enc.len() - 1]).is_err());
    // RAM: unaligned offset, partial page, too many pages, overflow.
    let chunk = |off: u64, len: usize| {
        let mut p = off.to_le_bytes().to_vec();
        p.extend(vec![1u8; len]);
        p
    };
    assert!(RamChunk::decode(&chunk(100, PAGE)).is_err());
    assert!(RamChunk::decode(&chunk(0, PAGE - 1)).is_err());
    assert!(RamChunk::decode(&chunk(0, 0)).is_err());
    assert!(RamChunk::decode(&chunk(0, MAX_RAM_CHUNK + PAGE)).is_err());
    let top = chunk(!0xfff, PAGE);
    let c = RamChunk::decode(&top).unwrap();
    assert!(c.check_in(u64::MAX).is_err());
}

#[test]
fn a_stream_decodes_in_any_pieces() {
    let s = stream();
    let whole = decode_in(&s, || usize::MAX).unwrap();
    assert_eq!(
        whole.iter().map(|r| r.0).collect::<Vec<_>>(),
        [TAG_VM, TAG_RAM, TAG_RAM, TAG_VCPU, TAG_VCPU, TAG_VGIC, TAG_DEVICE]
    );
    assert_eq!(VmInfo::decode(&whole[0].1), Ok(vm()));
    assert_eq!(decode_in(&s, || 1).unwrap(), whole);
    let mut seed = 0x1234_5678_9abc_def1;
    for _ in 0..50 {
        let got = decode_in(&s, || (xorshift(&mut seed) % 5000) as usize + 1).unwrap();
        assert_eq!(got, whole);
    }
}

#[test]
fn every_flipped_bit_of_a_stream_is_refused() {
    let s = stream();
    for i in 0..s.len() {
        for bit in [0u8, 3, 7] {
            let mut b = s.clone();
            b[i] ^= 1 << bit;
            assert!(decode_in(&b, || 997).is_err(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let s = stream();
    for n in 0..s.len() {
        let r = decode_in(&s[..n], || 333);
        assert!(r.is_err(), "{n} bytes");
        if n >= HEADER_LEN {
            assert_eq!(r.unwrap_err(), Error::Truncated, "{n} bytes");
        }
    }
}

#[test]
fn headers_order_and_limits_are_checked() {
    let s = stream();
    let mut b = s.clone();
    b[0] = b'X';
    assert_eq!(decode_in(&b, || 1000), Err(Error::BadMagic));
    let mut b = s.clone();
    b[8] = 2;
    assert_eq!(decode_in(&b, || 1000), Err(Error::Version(2)));
    assert_eq!(
        Error::Version(2).to_string(),
        "snapshot version 2, this build reads version 1"
    );
    let mut b = s.clone();
    b[12] = 1;
    assert_eq!(decode_in(&b, || 1000), Err(Error::Flags(1)));
    let mut b = s.clone();
    b.push(0);
    assert_eq!(decode_in(&b, || 1000), Err(Error::AfterEnd));

    // Records out of order or too large, each with valid checksums.
    let build = |recs: &[(u32, Vec<u8>)]| {
        let mut out = Vec::new();
        let mut put = |b: &[u8]| out.extend_from_slice(b);
        let mut e = Encoder::new(&mut put);
        for (t, p) in recs {
            e.record(*t, p, &mut put).unwrap();
        }
        e.end(&mut put);
        out
    };
    let ram = {
        let mut p = 0u64.to_le_bytes().to_vec();
        p.extend([1; PAGE]);
        p
    };
    assert!(matches!(
        decode_in(&build(&[(TAG_RAM, ram.clone())]), || 100),
        Err(Error::NoVmFirst { tag: TAG_RAM, .. })
    ));
    assert_eq!(
        decode_in(
            &build(&[(TAG_VM, vm().encode()), (TAG_VM, vm().encode())]),
            || 100
        ),
        Err(Error::TwoVms)
    );
    assert_eq!(
        decode_in(&build(&[(TAG_VM, vm().encode()), (77, vec![])]), || 100),
        Err(Error::UnknownTag(77))
    );
    assert!(matches!(
        decode_in(&build(&[]), || 100),
        Err(Error::NoVmFirst { .. })
    ));
    // A length over the limit is refused from its header, before any
    // payload is buffered.
    let mut big = s[..HEADER_LEN].to_vec();
    big.extend_from_slice(&TAG_VM.to_le_bytes());
    big.extend_from_slice(&((MAX_PAYLOAD + 1) as u32).to_le_bytes());
    let mut d = Decoder::new();
    assert_eq!(
        d.push(&big, &mut |_| Ok(())),
        Err(Error::TooLarge(MAX_PAYLOAD as u64 + 1))
    );
    // The decoder stays stopped, with the same error.
    assert_eq!(
        d.push(&[0], &mut |_| Ok(())),
        Err(Error::TooLarge(MAX_PAYLOAD as u64 + 1))
    );
    let mut e = Encoder::new(&mut |_: &[u8]| {});
    assert_eq!(
        e.record(TAG_RAM, &vec![0; MAX_PAYLOAD + 1], &mut |_: &[u8]| {}),
        Err(Error::TooLarge(MAX_PAYLOAD as u64 + 1))
    );
}

#[test]
fn a_callers_error_stops_the_stream() {
    let s = stream();
    let mut d = Decoder::new();
    let r = d.push(&s, &mut |r| {
        if r.tag == TAG_VCPU {
            Err(Error::Malformed("no"))
        } else {
            Ok(())
        }
    });
    assert_eq!(r, Err(Error::Malformed("no")));
    assert_eq!(d.finish(), Err(Error::Malformed("no")));
}
