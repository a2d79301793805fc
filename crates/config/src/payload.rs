//! The image payload: the encoded config and the guest images, packed behind
//! the hypervisor's flat binary.
//!
//! A bootable image is the hypervisor binary, zero-padded to a multiple of
//! [`ALIGN`] (4 KiB), then the payload ([`bootable`] builds one). The payload
//! is, little-endian, with every offset relative to the payload's start:
//!
//! ```text
//! header (40 bytes)
//!   magic        [u8; 8] = "BHPAYLD1"
//!   version      u32     = 1
//!   image_count  u32
//!   total_size   u64     payload size, a multiple of 4 KiB
//!   config_offset u64
//!   config_size  u64
//! image_count entries (48 bytes each)
//!   offset u64, size u64, name [u8; 32] (UTF-8, NUL-padded)
//! data blobs: the config, then each image, each starting 4 KiB aligned
//! ```
//!
//! Blobs are page aligned so the hypervisor can map or copy them by page.
//! [`Payload::parse`] reads bytes that came with the image, so it checks every
//! offset and size and never panics.

use alloc::vec::Vec;
use core::fmt;

/// First eight bytes of a payload.
pub const MAGIC: [u8; 8] = *b"BHPAYLD1";
/// Payload format version.
pub const VERSION: u32 = 1;
/// Alignment of the payload within the bootable image and of every blob
/// within the payload: one 4 KiB page.
pub const ALIGN: u64 = 4096;
/// Bytes in the payload header.
pub const HEADER_SIZE: usize = 40;
/// Bytes in one image entry.
pub const ENTRY_SIZE: usize = 48;
/// Bytes reserved for an image name (longer names are truncated).
pub const NAME_SIZE: usize = 32;

/// Which blob an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// The encoded config.
    Config,
    /// Image `n`.
    Image(usize),
}

impl fmt::Display for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config => f.write_str("the config"),
            Self::Image(i) => write!(f, "image {i}"),
        }
    }
}

/// Why [`Payload::parse`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Fewer bytes than a header.
    TooShort,
    /// The input does not start with [`MAGIC`].
    BadMagic,
    /// The version is not [`VERSION`].
    UnsupportedVersion(u32),
    /// `total_size` is smaller than the header or larger than the input.
    BadTotalSize {
        /// What the header says.
        total_size: u64,
        /// Bytes actually present.
        available: usize,
    },
    /// The image table does not fit in `total_size`.
    TableOutOfBounds,
    /// A blob reaches outside the payload or into the header and table.
    OutOfBounds(Blob),
    /// A blob does not start on a 4 KiB boundary.
    Misaligned(Blob),
    /// An image name is not UTF-8.
    BadName(usize),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(f, "payload is shorter than its header"),
            Self::BadMagic => write!(f, "no payload (bad magic)"),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "payload version {v} is not supported (expected {VERSION})"
                )
            }
            Self::BadTotalSize {
                total_size,
                available,
            } => write!(
                f,
                "payload claims {total_size} bytes but {available} are present"
            ),
            Self::TableOutOfBounds => write!(f, "payload image table is out of bounds"),
            Self::OutOfBounds(b) => write!(f, "{b} lies outside the payload data"),
            Self::Misaligned(b) => write!(f, "{b} is not 4 KiB aligned"),
            Self::BadName(i) => write!(f, "image {i} has a name that is not UTF-8"),
        }
    }
}

/// `x` rounded up to a multiple of [`ALIGN`], saturating.
fn align_up(x: u64) -> u64 {
    x.saturating_add(ALIGN - 1) & !(ALIGN - 1)
}

/// Appends zeros to `out` up to the next multiple of [`ALIGN`].
fn pad(out: &mut Vec<u8>) {
    let len = align_up(out.len() as u64) as usize;
    out.resize(len, 0);
}

/// Packs an encoded config and named images into a payload. Names longer
/// than 32 bytes are truncated (at a character boundary, so they stay UTF-8).
pub fn pack(config: &[u8], images: &[(&str, &[u8])]) -> Vec<u8> {
    let table_end = HEADER_SIZE + ENTRY_SIZE * images.len();
    let mut offset = align_up(table_end as u64);
    let config_offset = offset;
    offset = align_up(offset + config.len() as u64);
    let mut entries = Vec::with_capacity(images.len());
    for (_, data) in images {
        entries.push((offset, data.len() as u64));
        offset = align_up(offset + data.len() as u64);
    }
    let total_size = offset;

    let mut out = Vec::with_capacity(total_size as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(images.len() as u32).to_le_bytes());
    out.extend_from_slice(&total_size.to_le_bytes());
    out.extend_from_slice(&config_offset.to_le_bytes());
    out.extend_from_slice(&(config.len() as u64).to_le_bytes());
    for ((name, _), (off, size)) in images.iter().zip(&entries) {
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        let mut field = [0u8; NAME_SIZE];
        let name = truncate(name, NAME_SIZE);
        field[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&field);
    }
    pad(&mut out);
    out.extend_from_slice(config);
    pad(&mut out);
    for (_, data) in images {
        out.extend_from_slice(data);
        pad(&mut out);
    }
    debug_assert_eq!(out.len() as u64, total_size);
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The hypervisor's flat binary, zero-padded to 4 KiB, followed by the
/// payload: a bootable image.
pub fn bootable(hypervisor: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hypervisor.len() + ALIGN as usize + payload.len());
    out.extend_from_slice(hypervisor);
    pad(&mut out);
    out.extend_from_slice(payload);
    out
}

/// A parsed, bounds-checked payload borrowing its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    /// Exactly `total_size` bytes.
    bytes: &'a [u8],
    config: &'a [u8],
    image_count: usize,
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    Some(u32::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    Some(u64::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

/// `bytes[offset..offset + size]`, if the blob is aligned and lies after
/// the table and within `bytes`.
fn blob(
    bytes: &[u8],
    table_end: usize,
    offset: u64,
    size: u64,
    which: Blob,
) -> Result<&[u8], PayloadError> {
    if !offset.is_multiple_of(ALIGN) {
        return Err(PayloadError::Misaligned(which));
    }
    let start = usize::try_from(offset).map_err(|_| PayloadError::OutOfBounds(which))?;
    let len = usize::try_from(size).map_err(|_| PayloadError::OutOfBounds(which))?;
    let end = start
        .checked_add(len)
        .ok_or(PayloadError::OutOfBounds(which))?;
    if start < table_end {
        return Err(PayloadError::OutOfBounds(which));
    }
    bytes
        .get(start..end)
        .ok_or(PayloadError::OutOfBounds(which))
}

impl<'a> Payload<'a> {
    /// Parses and checks a payload. `bytes` may run past the payload's
    /// `total_size` (e.g. the rest of a loaded region); the excess is ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PayloadError> {
        let header = bytes.get(..HEADER_SIZE).ok_or(PayloadError::TooShort)?;
        if header.get(..8) != Some(&MAGIC[..]) {
            return Err(PayloadError::BadMagic);
        }
        let field32 = |at| read_u32(header, at).ok_or(PayloadError::TooShort);
        let field64 = |at| read_u64(header, at).ok_or(PayloadError::TooShort);
        let version = field32(8)?;
        if version != VERSION {
            return Err(PayloadError::UnsupportedVersion(version));
        }
        let image_count = field32(12)?;
        let total_size = field64(16)?;
        let config_offset = field64(24)?;
        let config_size = field64(32)?;

        let bad_total = PayloadError::BadTotalSize {
            total_size,
            available: bytes.len(),
        };
        let total = usize::try_from(total_size).map_err(|_| bad_total)?;
        if total < HEADER_SIZE {
            return Err(bad_total);
        }
        let bytes = bytes.get(..total).ok_or(bad_total)?;

        let image_count =
            usize::try_from(image_count).map_err(|_| PayloadError::TableOutOfBounds)?;
        let table_end = image_count
            .checked_mul(ENTRY_SIZE)
            .and_then(|t| t.checked_add(HEADER_SIZE))
            .ok_or(PayloadError::TableOutOfBounds)?;
        if table_end > total {
            return Err(PayloadError::TableOutOfBounds);
        }
        let config = blob(bytes, table_end, config_offset, config_size, Blob::Config)?;
        let payload = Self {
            bytes,
            config,
            image_count,
        };
        // Check every entry now, so that `image` cannot fail for a valid
        // index later.
        for i in 0..image_count {
            payload.entry(i)?;
        }
        Ok(payload)
    }

    fn entry(&self, i: usize) -> Result<(&'a str, &'a [u8]), PayloadError> {
        let table_end = HEADER_SIZE + ENTRY_SIZE * self.image_count;
        let at = i
            .checked_mul(ENTRY_SIZE)
            .and_then(|e| e.checked_add(HEADER_SIZE))
            .ok_or(PayloadError::TableOutOfBounds)?;
        let offset = read_u64(self.bytes, at).ok_or(PayloadError::TableOutOfBounds)?;
        let size = read_u64(self.bytes, at + 8).ok_or(PayloadError::TableOutOfBounds)?;
        let name = self
            .bytes
            .get(at + 16..at + 16 + NAME_SIZE)
            .ok_or(PayloadError::TableOutOfBounds)?;
        let name_len = name.iter().position(|&c| c == 0).unwrap_or(NAME_SIZE);
        let name = core::str::from_utf8(name.get(..name_len).unwrap_or(name))
            .map_err(|_| PayloadError::BadName(i))?;
        let data = blob(self.bytes, table_end, offset, size, Blob::Image(i))?;
        Ok((name, data))
    }

    /// The encoded config (see [`decode`](crate::decode)).
    pub fn config(&self) -> &'a [u8] {
        self.config
    }

    /// Number of images.
    pub fn image_count(&self) -> usize {
        self.image_count
    }

    /// Image `i`'s name and bytes, or `None` if there is no image `i`.
    pub fn image(&self, i: usize) -> Option<(&'a str, &'a [u8])> {
        if i >= self.image_count {
            return None;
        }
        self.entry(i).ok()
    }

    /// Bytes in the payload, from its header to the end of the last blob's
    /// padding.
    pub fn total_size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Vec<u8> {
        pack(
            b"config bytes",
            &[("hello", &[1u8; 5000][..]), ("linux", b"kernel")],
        )
    }

    #[test]
    fn pack_then_parse_gives_back_config_and_images() {
        let bytes = sample();
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(p.config(), b"config bytes");
        assert_eq!(p.image_count(), 2);
        assert_eq!(p.image(0), Some(("hello", &[1u8; 5000][..])));
        assert_eq!(p.image(1), Some(("linux", &b"kernel"[..])));
        assert_eq!(p.image(2), None);
        assert_eq!(p.total_size(), bytes.len() as u64);
    }

    #[test]
    fn blobs_start_page_aligned_and_total_is_a_page_multiple() {
        let bytes = sample();
        let p = Payload::parse(&bytes).unwrap();
        let base = bytes.as_ptr() as usize;
        assert_eq!((p.config().as_ptr() as usize - base) % 4096, 0);
        for i in 0..2 {
            let (_, data) = p.image(i).unwrap();
            assert_eq!((data.as_ptr() as usize - base) % 4096, 0);
        }
        // Header page, config page, 5000 bytes = 2 pages, 1 page.
        assert_eq!(bytes.len(), 5 * 4096);
    }

    #[test]
    fn empty_payload_round_trips() {
        let bytes = pack(&[], &[]);
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(p.config(), b"");
        assert_eq!(p.image_count(), 0);
        assert_eq!(p.image(0), None);
    }

    #[test]
    fn long_names_are_truncated_to_32_bytes_on_a_char_boundary() {
        let long = "a".repeat(40);
        let bytes = pack(b"", &[(&long, b"x")]);
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(p.image(0).unwrap().0, &long[..32]);
        // 31 ASCII bytes then a 2-byte character: the character is dropped.
        let name = alloc::format!("{}é", "b".repeat(31));
        let bytes = pack(b"", &[(&name, b"x")]);
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(p.image(0).unwrap().0, &name[..31]);
    }

    #[test]
    fn extra_bytes_after_the_payload_are_ignored() {
        let mut bytes = sample();
        let total = bytes.len() as u64;
        bytes.extend_from_slice(&[0xaa; 100]);
        let p = Payload::parse(&bytes).unwrap();
        assert_eq!(p.total_size(), total);
    }

    #[test]
    fn bootable_pads_hypervisor_to_4k_before_payload() {
        let payload = sample();
        let image = bootable(&[0xcc; 5000], &payload);
        assert_eq!(image.len(), 8192 + payload.len());
        assert_eq!(&image[8192..8200], b"BHPAYLD1");
        assert!(image[5000..8192].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(Payload::parse(&bytes[..len]).is_err(), "prefix of {len}");
        }
    }

    #[test]
    fn flipped_header_and_table_bytes_never_panic() {
        let bytes = sample();
        for i in 0..HEADER_SIZE + 2 * ENTRY_SIZE {
            for flip in [0x01u8, 0x10, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                if let Ok(p) = Payload::parse(&b) {
                    // Whatever parsed must be usable without panicking.
                    let _ = p.config();
                    for j in 0..p.image_count() + 1 {
                        let _ = p.image(j);
                    }
                }
            }
        }
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = sample();
        assert_eq!(
            Payload::parse(&good[..39]).unwrap_err(),
            PayloadError::TooShort
        );

        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Payload::parse(&b).unwrap_err(), PayloadError::BadMagic);

        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::UnsupportedVersion(2)
        );

        let mut b = good.clone();
        set_u64(&mut b, 16, u64::MAX);
        assert!(matches!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::BadTotalSize { .. }
        ));

        let mut b = good.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::TableOutOfBounds
        );
    }

    #[test]
    fn bad_blobs_are_refused() {
        let good = sample();
        // Config offset into the header.
        let mut b = good.clone();
        set_u64(&mut b, 24, 0);
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::OutOfBounds(Blob::Config)
        );
        // Config offset not page aligned.
        let mut b = good.clone();
        set_u64(&mut b, 24, 4097);
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::Misaligned(Blob::Config)
        );
        // Image 1 size runs past the end; offset + size overflows.
        let mut b = good.clone();
        set_u64(&mut b, HEADER_SIZE + ENTRY_SIZE + 8, 1 << 20);
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::OutOfBounds(Blob::Image(1))
        );
        let mut b = good.clone();
        set_u64(&mut b, HEADER_SIZE + ENTRY_SIZE + 8, u64::MAX);
        assert_eq!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::OutOfBounds(Blob::Image(1))
        );
        // Image 0 name not UTF-8.
        let mut b = good;
        b[HEADER_SIZE + 16] = 0xff;
        assert_eq!(Payload::parse(&b).unwrap_err(), PayloadError::BadName(0));
    }

    /// Random header fields (within the first 16 KiB, so some land in
    /// bounds) over a valid payload: must parse or fail, never panic.
    #[test]
    fn random_header_fields_never_panic() {
        let good = sample();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut b = good.clone();
            let field = HEADER_SIZE + (next() as usize % (2 * ENTRY_SIZE / 8)) * 8;
            set_u64(&mut b, field, next() % 0x4000);
            b[12] = (next() % 4) as u8;
            if let Ok(p) = Payload::parse(&b) {
                for j in 0..=p.image_count() {
                    let _ = p.image(j);
                }
            }
        }
    }

    #[test]
    fn total_size_zero_is_refused() {
        let mut b = vec![0u8; 4096];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        assert!(matches!(
            Payload::parse(&b).unwrap_err(),
            PayloadError::BadTotalSize { total_size: 0, .. }
        ));
    }
}
