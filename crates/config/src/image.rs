//! What validation needs to know about a payload image: its size in the file
//! and, for an arm64 `Image`, where it goes and how much RAM it claims.

use crate::IMAGE_LOAD_OFFSET;

/// Offset of the arm64 `Image` header's `text_offset` (u64, little-endian).
const TEXT_OFFSET_AT: usize = 8;
/// Offset of the header's `image_size` (u64, little-endian).
const IMAGE_SIZE_AT: usize = 16;
/// Offset of the header's magic.
const MAGIC_AT: usize = 0x38;
/// Bytes in the header; a shorter input has none.
const HEADER_LEN: usize = 64;
/// "ARM\x64": the magic that marks an arm64 `Image` header.
pub const ARM64_MAGIC: [u8; 4] = *b"ARM\x64";

/// Sizes of one payload image, as [`validate`](crate::validate) uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Bytes in the file (the payload blob).
    pub len: u64,
    /// Where the image is loaded, relative to the start of VM RAM.
    pub load_offset: u64,
    /// Bytes of RAM the image occupies from its load address: at least
    /// `len`, more when the header says the kernel needs room for its BSS.
    pub mem_size: u64,
}

impl ImageInfo {
    /// An image without a header: `len` bytes at [`IMAGE_LOAD_OFFSET`].
    pub const fn raw(len: u64) -> Self {
        Self {
            len,
            load_offset: IMAGE_LOAD_OFFSET,
            mem_size: len,
        }
    }

    /// Reads the arm64 `Image` header of `bytes`, if it has one (Linux
    /// Documentation/arch/arm64/booting.rst, "Call the kernel image"):
    /// `text_offset` at 8 is the load offset and `image_size` at 16 the
    /// effective size including BSS. `image_size` 0 marks a kernel older than
    /// 3.17, whose `text_offset` is to be taken as 0x80000 (same document).
    /// Without the magic "ARM\x64" at 0x38 the image is
    /// [`raw`](Self::raw). Never panics, whatever the input.
    pub fn of(bytes: &[u8]) -> Self {
        let len = bytes.len() as u64;
        let has_magic = bytes.len() >= HEADER_LEN
            && bytes.get(MAGIC_AT..MAGIC_AT + 4) == Some(&ARM64_MAGIC[..]);
        let (Some(text_offset), Some(image_size), true) = (
            le_u64(bytes, TEXT_OFFSET_AT),
            le_u64(bytes, IMAGE_SIZE_AT),
            has_magic,
        ) else {
            return Self::raw(len);
        };
        if image_size == 0 {
            return Self {
                len,
                load_offset: IMAGE_LOAD_OFFSET,
                mem_size: len,
            };
        }
        Self {
            len,
            load_offset: text_offset,
            mem_size: len.max(image_size),
        }
    }
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn header(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(64)];
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&ARM64_MAGIC);
        b.truncate(len);
        b
    }

    #[test]
    fn linux_header_gives_text_offset_and_image_size() {
        // A Debian 6.1 cloud kernel: text_offset 0, image_size 0x1aa0000.
        let b = header(0, 0x1aa_0000, 4096);
        assert_eq!(
            ImageInfo::of(&b),
            ImageInfo {
                len: 4096,
                load_offset: 0,
                mem_size: 0x1aa_0000
            }
        );
    }

    #[test]
    fn file_longer_than_image_size_keeps_its_length() {
        let b = header(0x8_0000, 100, 4096);
        let info = ImageInfo::of(&b);
        assert_eq!((info.load_offset, info.mem_size), (0x8_0000, 4096));
    }

    #[test]
    fn zero_image_size_means_an_old_kernel_at_0x80000() {
        let b = header(0x1234, 0, 4096);
        assert_eq!(ImageInfo::of(&b), ImageInfo::raw(4096));
    }

    #[test]
    fn no_magic_is_a_raw_image_at_the_default_offset() {
        let mut b = header(0, 0x100_0000, 4096);
        b[0x38] = b'X';
        assert_eq!(ImageInfo::of(&b), ImageInfo::raw(4096));
        assert_eq!(ImageInfo::raw(7).load_offset, IMAGE_LOAD_OFFSET);
    }

    #[test]
    fn short_inputs_never_panic_and_are_raw() {
        let full = header(0, 0x100_0000, 64);
        for n in 0..64 {
            assert_eq!(ImageInfo::of(&full[..n]), ImageInfo::raw(n as u64), "{n}");
        }
        assert_eq!(ImageInfo::of(&full).mem_size, 0x100_0000);
    }
}
