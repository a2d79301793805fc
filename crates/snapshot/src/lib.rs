//! The snapshot stream: how a VM's state travels from one Bulkhead to a
//! store and back (docs/snapshot.md). Pure code, shared by the hypervisor
//! (which writes and reads streams) and the host tools (which check them).
//!
//! Little-endian throughout:
//!
//! ```text
//! header   magic "BHSNAP\r\n", version u32 (VERSION), flags u32 (0)
//! records  tag u32, len u32 (<= MAX_PAYLOAD), payload [u8; len],
//!          crc u32 = CRC-32 of tag, len and payload
//! ```
//!
//! The first record is the VM record, the last the END record, whose
//! payload is the number of records before it (u64) and the CRC-32 of
//! every byte before it, header included (u32). Nothing may follow END.
//!
//! The stream comes from the network, so [`Decoder`] trusts none of it:
//! it is fed bytes as they arrive, buffers one record at most, checks
//! every checksum and rule above, and stops for good at the first error.
//! The typed payloads' decoders check their own contents.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 8] = *b"BHSNAP\r\n";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
/// Largest record payload: a RAM record's offset and 1 MiB, with room.
pub const MAX_PAYLOAD: usize = (1 << 20) + 4096;
/// Most bytes of RAM in one record.
pub const MAX_RAM_CHUNK: usize = 1 << 20;
pub const PAGE: usize = 4096;

pub const TAG_VM: u32 = 1;
pub const TAG_RAM: u32 = 2;
pub const TAG_VCPU: u32 = 3;
pub const TAG_VGIC: u32 = 4;
pub const TAG_DEVICE: u32 = 5;
pub const TAG_END: u32 = 0xFFFF_FFFF;

/// Most registers in a vCPU record.
pub const MAX_REGS: usize = 512;

/// What is wrong with a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    BadMagic,
    Version(u32),
    Flags(u32),
    /// Record `index` (from 0), of `tag`, fails its checksum.
    Checksum {
        index: u64,
        tag: u32,
    },
    TooLarge(u64),
    UnknownTag(u32),
    /// Record `index` is `tag` where the VM record must come.
    NoVmFirst {
        index: u64,
        tag: u32,
    },
    TwoVms,
    /// END counts `said` records; there were `had`.
    EndCount {
        said: u64,
        had: u64,
    },
    StreamChecksum,
    AfterEnd,
    Truncated,
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic => write!(f, "not a Bulkhead snapshot (bad magic)"),
            Error::Version(v) => {
                write!(
                    f,
                    "snapshot version {v}, this build reads version {VERSION}"
                )
            }
            Error::Flags(x) => write!(f, "unknown snapshot flags {x:#x}"),
            Error::Checksum { index, tag } => {
                write!(f, "record {index} (tag {tag}): checksum mismatch")
            }
            Error::TooLarge(n) => write!(
                f,
                "record of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit"
            ),
            Error::UnknownTag(t) => write!(f, "unknown record tag {t}"),
            Error::NoVmFirst { index, tag } => write!(
                f,
                "record {index} is tag {tag}; a stream starts with its VM record"
            ),
            Error::TwoVms => write!(f, "a second VM record"),
            Error::EndCount { said, had } => {
                write!(f, "END says {said} records, the stream had {had}")
            }
            Error::StreamChecksum => write!(f, "stream checksum mismatch"),
            Error::AfterEnd => write!(f, "bytes after the END record"),
            Error::Truncated => write!(f, "stream ends before its END record"),
            Error::Malformed(m) => write!(f, "malformed record: {m}"),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and Ethernet use it).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

/// Slicing-by-8 tables: `CRC_TABLES[0]` is the byte-at-a-time table and
/// `CRC_TABLES[k][b]` the CRC of byte `b` followed by `k` zero bytes, so
/// eight bytes are folded in with eight lookups (a RAM stream is checksummed
/// twice, per record and whole, on both machines: this is on every byte's
/// path).
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

impl Crc32 {
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][usize::from(w[4])]
                ^ t[2][usize::from(w[5])]
                ^ t[1][usize::from(w[6])]
                ^ t[0][usize::from(w[7])];
        }
        for &b in words.remainder() {
            c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn value(&self) -> u32 {
        !self.0
    }
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(bytes);
    c.value()
}

/// Writes a stream through an output function, record by record.
pub struct Encoder {
    crc: Crc32,
    records: u64,
    bytes: u64,
}

impl Encoder {
    /// Starts a stream: writes its header.
    pub fn new(out: &mut impl FnMut(&[u8])) -> Encoder {
        let mut e = Encoder {
            crc: Crc32::new(),
            records: 0,
            bytes: 0,
        };
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        e.emit(&h, out);
        e
    }

    fn emit(&mut self, b: &[u8], out: &mut impl FnMut(&[u8])) {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        out(b);
    }

    /// One record of `tag` whose payload is `parts` one after the other
    /// (a RAM record: its offset, then a slice of guest memory).
    pub fn record_parts(
        &mut self,
        tag: u32,
        parts: &[&[u8]],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_PAYLOAD {
            return Err(Error::TooLarge(len as u64));
        }
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&tag.to_le_bytes());
        head[4..].copy_from_slice(&(len as u32).to_le_bytes());
        let mut rc = Crc32::new();
        rc.update(&head);
        self.emit(&head, out);
        for p in parts {
            rc.update(p);
            self.emit(p, out);
        }
        self.emit(&rc.value().to_le_bytes(), out);
        self.records += 1;
        Ok(())
    }

    pub fn record(
        &mut self,
        tag: u32,
        payload: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        self.record_parts(tag, &[payload], out)
    }

    /// Ends the stream with its END record; the stream's length in bytes.
    pub fn end(mut self, out: &mut impl FnMut(&[u8])) -> u64 {
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&self.records.to_le_bytes());
        p[8..].copy_from_slice(&self.crc.value().to_le_bytes());
        let records = self.records;
        // 12 bytes: never too large.
        let _ = self.record(TAG_END, &p, out);
        self.records = records;
        self.bytes
    }
}

/// One record the decoder checked.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub tag: u32,
    pub payload: &'a [u8],
}

/// Reads a stream fed in pieces of any size.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    header: bool,
    /// CRC-32 of every byte of complete records and the header so far.
    crc: Crc32,
    records: u64,
    ended: bool,
    failed: Option<Error>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether the END record came and checked out.
    pub fn finished(&self) -> bool {
        self.ended
    }

    /// Ok once the whole stream is in; the error that stopped it, or
    /// [`Error::Truncated`], otherwise.
    pub fn finish(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.ended => Ok(()),
            None => Err(Error::Truncated),
        }
    }

    /// Feeds `data`; `f` gets every record but END, in order. An error
    /// (the stream's or `f`'s) stops the decoder for good.
    pub fn push(
        &mut self,
        mut data: &[u8],
        f: &mut dyn FnMut(Record<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = (|| {
            while !data.is_empty() {
                if self.ended {
                    return Err(Error::AfterEnd);
                }
                let need = self.need()?;
                let take = (need - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() == need && self.need()? == need {
                    self.complete(f)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        r
    }

    /// Bytes the piece being collected needs in all, as far as known.
    fn need(&self) -> Result<usize, Error> {
        if !self.header {
            return Ok(HEADER_LEN);
        }
        if self.buf.len() < 8 {
            return Ok(8);
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if len as usize > MAX_PAYLOAD {
            return Err(Error::TooLarge(u64::from(len)));
        }
        Ok(8 + len as usize + 4)
    }

    fn complete(
        &mut self,
        f: &mut dyn FnMut(Record<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let buf = core::mem::take(&mut self.buf);
        if !self.header {
            if buf[..8] != MAGIC {
                return Err(Error::BadMagic);
            }
            let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if version != VERSION {
                return Err(Error::Version(version));
            }
            let flags = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
            if flags != 0 {
                return Err(Error::Flags(flags));
            }
            self.crc.update(&buf);
            self.header = true;
            self.buf = buf;
            self.buf.clear();
            return Ok(());
        }
        let tag = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let n = buf.len();
        let stored = u32::from_le_bytes([buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]]);
        if crc32(&buf[..n - 4]) != stored {
            return Err(Error::Checksum {
                index: self.records,
                tag,
            });
        }
        let payload = &buf[8..n - 4];
        match tag {
            TAG_END => {
                let p: [u8; 12] = payload
                    .try_into()
                    .map_err(|_| Error::Malformed("END is not 12 bytes"))?;
                let said = u64::from_le_bytes(p[..8].try_into().unwrap_or([0; 8]));
                let crc = u32::from_le_bytes(p[8..].try_into().unwrap_or([0; 4]));
                if said != self.records {
                    return Err(Error::EndCount {
                        said,
                        had: self.records,
                    });
                }
                if crc != self.crc.value() {
                    return Err(Error::StreamChecksum);
                }
                if self.records == 0 {
                    return Err(Error::NoVmFirst { index: 0, tag });
                }
                self.ended = true;
            }
            TAG_VM | TAG_RAM | TAG_VCPU | TAG_VGIC | TAG_DEVICE => {
                if self.records == 0 && tag != TAG_VM {
                    return Err(Error::NoVmFirst { index: 0, tag });
                }
                if self.records > 0 && tag == TAG_VM {
                    return Err(Error::TwoVms);
                }
                f(Record { tag, payload })?;
                self.crc.update(&buf);
                self.records += 1;
            }
            other => return Err(Error::UnknownTag(other)),
        }
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }
}

/// Reads little-endian fields off a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("payload too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn u128(&mut self) -> Result<u128, Error> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().unwrap_or([0; 16]),
        ))
    }

    fn done(&self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("bytes after the payload's fields"))
        }
    }
}

fn check_name(name: &[u8]) -> Result<&str, Error> {
    let ok = (1..=31).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(Error::Malformed("name is not 1 to 31 of a-z 0-9 - _"));
    }
    core::str::from_utf8(name).map_err(|_| Error::Malformed("name is not text"))
}

/// The VM record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    /// Bytes of RAM.
    pub memory: u64,
    pub vcpus: u16,
    /// RAM's guest-physical base.
    pub ram_ipa: u64,
}

impl VmInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.memory.to_le_bytes());
        out.extend_from_slice(&self.vcpus.to_le_bytes());
        out.extend_from_slice(&self.ram_ipa.to_le_bytes());
        out
    }

    pub fn decode(p: &[u8]) -> Result<VmInfo, Error> {
        let mut r = Reader(p);
        let n = r.u8()?;
        let name = check_name(r.take(usize::from(n))?)?.into();
        let memory = r.u64()?;
        let vcpus = r.u16()?;
        let ram_ipa = r.u64()?;
        r.done()?;
        if memory == 0 || memory % PAGE as u64 != 0 {
            return Err(Error::Malformed(
                "VM memory is not a non-zero number of pages",
            ));
        }
        if !(1..=8).contains(&vcpus) {
            return Err(Error::Malformed("VM vCPU count is not 1 to 8"));
        }
        if ram_ipa % PAGE as u64 != 0 {
            return Err(Error::Malformed("VM RAM base is not page-aligned"));
        }
        Ok(VmInfo {
            name,
            memory,
            vcpus,
            ram_ipa,
        })
    }
}

/// A RAM record: pages at `offset` from the start of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamChunk<'a> {
    pub offset: u64,
    pub data: &'a [u8],
}

impl<'a> RamChunk<'a> {
    pub fn decode(p: &'a [u8]) -> Result<RamChunk<'a>, Error> {
        let mut r = Reader(p);
        let offset = r.u64()?;
        let data = r.0;
        if offset % PAGE as u64 != 0 {
            return Err(Error::Malformed("RAM offset is not page-aligned"));
        }
        if data.is_empty() || data.len() % PAGE != 0 || data.len() > MAX_RAM_CHUNK {
            return Err(Error::Malformed("RAM record is not 1 to 256 whole pages"));
        }
        Ok(RamChunk { offset, data })
    }

    /// The pages lie inside `memory` bytes of RAM.
    pub fn check_in(&self, memory: u64) -> Result<(), Error> {
        match self.offset.checked_add(self.data.len() as u64) {
            Some(end) if end <= memory => Ok(()),
            _ => Err(Error::Malformed("RAM record past the end of the VM's RAM")),
        }
    }
}

/// Whether a page (any length) is all zeros: such pages are not sent.
pub fn is_zero_page(page: &[u8]) -> bool {
    // Eight bytes at a time: every page of a VM's RAM is looked at once
    // per snapshot, most of them zero.
    let mut words = page.chunks_exact(8);
    let any = words.by_ref().fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
    });
    any == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// A vCPU record: its registers by the hypervisor's ids, and FP/SIMD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    pub index: u16,
    pub regs: Vec<(u16, u64)>,
    pub fp: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

impl VcpuState {
    pub fn get(&self, id: u16) -> Option<u64> {
        self.regs.iter().find(|r| r.0 == id).map(|r| r.1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&(self.regs.len() as u16).to_le_bytes());
        for (id, v) in &self.regs {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.fp {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.fpcr.to_le_bytes());
        out.extend_from_slice(&self.fpsr.to_le_bytes());
        out
    }

    pub fn decode(p: &[u8]) -> Result<VcpuState, Error> {
        let mut r = Reader(p);
        let index = r.u16()?;
        let count = usize::from(r.u16()?);
        if count > MAX_REGS {
            return Err(Error::Malformed("more than 512 registers"));
        }
        let mut regs: Vec<(u16, u64)> = Vec::new();
        for _ in 0..count {
            let id = r.u16()?;
            let v = r.u64()?;
            if regs.iter().any(|x| x.0 == id) {
                return Err(Error::Malformed("a register twice"));
            }
            regs.push((id, v));
        }
        let mut fp = [0u128; 32];
        for v in &mut fp {
            *v = r.u128()?;
        }
        let fpcr = r.u64()?;
        let fpsr = r.u64()?;
        r.done()?;
        Ok(VcpuState {
            index,
            regs,
            fp,
            fpcr,
            fpsr,
        })
    }
}

/// A device record: a model's name and its own encoding of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device<'a> {
    pub name: &'a str,
    pub state: &'a [u8],
}

impl<'a> Device<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.state);
        out
    }

    pub fn decode(p: &'a [u8]) -> Result<Device<'a>, Error> {
        let mut r = Reader(p);
        let n = r.u8()?;
        let name = check_name(r.take(usize::from(n))?)?;
        Ok(Device { name, state: r.0 })
    }
}

#[cfg(test)]
mod tests;

pub mod precopy;

/// A channel end's saved state (here rather than in `bulkhead-channel`,
/// which bare-metal guests without a heap use too).
pub mod channel;
