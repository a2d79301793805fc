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

/// Bytes the [`wrap`] header page takes before the program.
pub const WRAP_HEADER_PAGE: usize = 0x1000;

/// Packs a raw program, which must be loaded `load_offset` above the start
/// of RAM, into an arm64 `Image`: a header page whose `code0` branches over
/// it to the program, `text_offset` set so that the program itself lands
/// at `load_offset`, `image_size` the whole of it. This is how a user's
/// bare-metal program gets the header QEMU's `-kernel`, U-Boot's `booti`
/// and Bulkhead's `kernel = <path>` look for.
pub fn wrap(program: &[u8], load_offset: u64) -> Result<Vec<u8>> {
    let page = WRAP_HEADER_PAGE as u64;
    let Some(text_offset) = load_offset.checked_sub(page) else {
        bail!("a program loaded at {load_offset:#x} leaves no room for a header page below it");
    };
    let mut out = vec![0u8; WRAP_HEADER_PAGE];
    // code0: B +0x1000 (A64 "B imm26", the offset in words).
    let branch: u32 = 0x1400_0000 | (WRAP_HEADER_PAGE as u32 / 4);
    out[0..4].copy_from_slice(&branch.to_le_bytes());
    out[8..16].copy_from_slice(&text_offset.to_le_bytes());
    let size = (page + program.len() as u64).next_multiple_of(4096);
    out[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&size.to_le_bytes());
    out[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    out.extend_from_slice(program);
    Ok(out)
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
    fn wrapped_program_lands_at_its_load_offset() {
        let image = wrap(&[0xaa; 100], 0x8_0000).unwrap();
        let info = bulkhead_config::ImageInfo::of(&image);
        // Loaded at text_offset, the program starts one page in.
        assert_eq!(info.load_offset + WRAP_HEADER_PAGE as u64, 0x8_0000);
        assert_eq!(info.mem_size, 0x2000);
        assert_eq!(&image[WRAP_HEADER_PAGE..], &[0xaa; 100][..]);
        assert_eq!(
            bulkhead_config::Format::of(&image),
            bulkhead_config::Format::Arm64Image
        );
        // code0 is "b .+0x1000".
        assert_eq!(&image[..4], &0x1400_0400u32.to_le_bytes());
        assert!(wrap(&[], 0x800).is_err());
    }

    #[test]
    fn truncated_binary_has_no_header() {
        assert!(!has_header(&header()[..HEADER_LEN - 1]));
    }
}
