//! The arm64 `Image` header at the start of the hypervisor binary.
//!
//! Layout from Linux Documentation/arch/arm64/booting.rst, "Call the kernel
//! image": `code0`, `code1`, `text_offset` (u64 at 8), `image_size` (u64 at
//! 16), `flags`, three reserved u64s, `magic` ("ARM\x64" at 0x38), `res5`.

use anyhow::{bail, Result};

/// Offset of the little-endian u64 `image_size` field.
const IMAGE_SIZE_OFFSET: usize = 16;
/// Offset of the 4-byte magic.
const MAGIC_OFFSET: usize = 0x38;
/// "ARM\x64", the magic that tells a boot loader this is an arm64 `Image`.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// The header is 64 bytes long.
const HEADER_LEN: usize = 64;

/// Whether `image` starts with an arm64 `Image` header.
pub fn has_header(image: &[u8]) -> bool {
    image.len() >= HEADER_LEN && image[MAGIC_OFFSET..MAGIC_OFFSET + 4] == MAGIC
}

/// Sets `image_size` to the whole image (hypervisor, config and guest
/// images) rounded up to 4 KiB. Boot loaders reserve `image_size` bytes from
/// the load address (booting.rst: "the effective size of the kernel image"),
/// so this keeps them from placing the DTB or an initrd over the payload.
pub fn patch_image_size(image: &mut [u8]) -> Result<u64> {
    if !has_header(image) {
        bail!("the hypervisor binary has no arm64 Image header (no \"ARM\\x64\" magic at 0x38)");
    }
    let size = (image.len() as u64).next_multiple_of(4096);
    image[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&size.to_le_bytes());
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
        h
    }

    #[test]
    fn image_size_is_total_length_rounded_up_to_4k() {
        let mut image = header();
        image.resize(4096 + 1, 0xee);
        assert_eq!(patch_image_size(&mut image).unwrap(), 8192);
        assert_eq!(u64::from_le_bytes(image[16..24].try_into().unwrap()), 8192);
        // Nothing but the size field changed.
        assert_eq!(&image[MAGIC_OFFSET..MAGIC_OFFSET + 4], &MAGIC);
        assert_eq!(image[24], 0);
        assert_eq!(image.len(), 4097);
    }

    #[test]
    fn image_size_of_exact_multiple_is_unchanged() {
        let mut image = header();
        image.resize(3 * 4096, 0);
        assert_eq!(patch_image_size(&mut image).unwrap(), 3 * 4096);
    }

    #[test]
    fn binary_without_magic_is_rejected() {
        let mut image = vec![0u8; 4096];
        let err = patch_image_size(&mut image).unwrap_err();
        assert!(err.to_string().contains("no arm64 Image header"));
    }

    #[test]
    fn truncated_binary_has_no_header() {
        assert!(!has_header(&header()[..HEADER_LEN - 1]));
    }
}
