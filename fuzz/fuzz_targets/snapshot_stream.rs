//! The snapshot stream decoder (crates/snapshot): a restore reads it from
//! the network, so every byte is hostile.
//!
//! Two halves. Raw bytes cut into arbitrary pieces go through [`Decoder`]
//! and each record through the typed decoders: nothing panics, and the
//! outcome (records seen, error) does not depend on where the pieces were
//! cut. Then a stream built with [`Encoder`] from arbitrary records decodes
//! back to exactly those records, and the same stream with one byte of a
//! record's payload or checksum flipped is refused (a CRC-32 catches every
//! burst of up to 32 bits, so this cannot be dodged).
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_snapshot::{
    Decoder, Device, Encoder, Error, RamChunk, Record, VcpuState, VmInfo, HEADER_LEN, TAG_DEVICE,
    TAG_END, TAG_RAM, TAG_VCPU, TAG_VGIC, TAG_VM,
};
use bulkhead_snapshot::channel::SavedEnd;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    cuts: Vec<u16>,
    records: Vec<(u8, Vec<u8>)>,
    flip: u32,
    flip_bit: u8,
}

/// Decodes `data` fed in pieces of the sizes `cuts` gives (cycled); the
/// records (tag, payload) and how it ended.
fn decode(data: &[u8], cuts: &[u16]) -> (Vec<(u32, Vec<u8>)>, Result<(), Error>) {
    let mut dec = Decoder::new();
    let mut seen = Vec::new();
    let mut rest = data;
    let mut k = 0;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = match cuts.get(k % cuts.len().max(1)) {
            Some(&c) => usize::from(c).max(1),
            None => rest.len(),
        };
        k += 1;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        let r = dec.push(piece, &mut |r: Record<'_>| {
            assert_ne!(r.tag, TAG_END, "END is the decoder's own");
            typed(r);
            seen.push((r.tag, r.payload.to_vec()));
            Ok(())
        });
        if r.is_err() {
            result = r;
            break;
        }
    }
    let end = result.and_then(|()| dec.finish());
    assert_eq!(end.is_ok(), dec.finished() && dec.finish().is_ok());
    (seen, end)
}

/// The typed decoders on a record: no panics, and what decodes encodes
/// back to the same bytes.
fn typed(r: Record<'_>) {
    match r.tag {
        TAG_VM => {
            if let Ok(v) = VmInfo::decode(r.payload) {
                assert_eq!(v.encode(), r.payload);
            }
        }
        TAG_RAM => {
            if let Ok(c) = RamChunk::decode(r.payload) {
                assert_eq!(c.data.len() + 8, r.payload.len());
                for memory in [0, 4096, 16 << 20, u64::MAX] {
                    if c.check_in(memory).is_ok() {
                        assert!(c.offset + c.data.len() as u64 <= memory);
                    }
                }
            }
        }
        TAG_VCPU => {
            if let Ok(v) = VcpuState::decode(r.payload) {
                assert_eq!(v.encode(), r.payload);
            }
        }
        TAG_DEVICE => {
            if let Ok(d) = Device::decode(r.payload) {
                assert_eq!(d.encode(), r.payload);
                // A channel end's state: what decodes survives a round
                // trip (the encoding drops zero pages, so bytes may not).
                if let Ok(e) = SavedEnd::decode(d.state) {
                    assert_eq!(SavedEnd::decode(&e.encode()), Ok(e));
                }
            }
        }
        _ => {}
    }
}

const TAGS: [u32; 5] = [TAG_VM, TAG_RAM, TAG_VCPU, TAG_VGIC, TAG_DEVICE];

fuzz_target!(|input: Input| {
    // Hostile bytes: the same outcome however they arrive.
    let whole = decode(&input.raw, &[]);
    let pieces = decode(&input.raw, &input.cuts);
    assert_eq!(whole, pieces, "the outcome depends on the cuts");

    // An honest stream: a VM record first, as the decoder requires.
    let vm = VmInfo {
        name: "fuzz".into(),
        memory: 1 << 20,
        vcpus: 1,
        ram_ipa: 0x4000_0000,
    };
    let mut records: Vec<(u32, Vec<u8>)> = vec![(TAG_VM, vm.encode())];
    for (t, p) in input.records.iter().take(64) {
        let tag = TAGS[usize::from(*t) % TAGS.len()];
        if tag != TAG_VM {
            records.push((tag, p.clone()));
        }
    }
    let mut stream = Vec::new();
    let mut put = |b: &[u8]| stream.extend_from_slice(b);
    let mut enc = Encoder::new(&mut put);
    // Where each record's payload and checksum lie.
    let mut covered = Vec::new();
    let mut at = HEADER_LEN;
    for (tag, p) in &records {
        enc.record(*tag, p, &mut put).expect("small records encode");
        covered.push(at + 8..at + 8 + p.len() + 4);
        at += 8 + p.len() + 4;
    }
    let bytes = enc.end(&mut put);
    assert_eq!(bytes as usize, stream.len());
    let (seen, end) = decode(&stream, &input.cuts);
    assert_eq!(end, Ok(()));
    assert_eq!(seen, records);

    let span: usize = covered.iter().map(|r| r.len()).sum();
    let mut pick = input.flip as usize % span;
    let pos = covered
        .iter()
        .find_map(|r| {
            if pick < r.len() {
                Some(r.start + pick)
            } else {
                pick -= r.len();
                None
            }
        })
        .expect("inside the span");
    stream[pos] ^= 1 << (input.flip_bit % 8);
    let (_, end) = decode(&stream, &input.cuts);
    assert!(end.is_err(), "a flipped bit at {pos} went through");
});
