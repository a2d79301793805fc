//! What validation needs to know about a payload image: its size in the file
//! and, for an arm64 `Image`, where it goes and how much RAM it claims.

use crate::IMAGE_LOAD_OFFSET;
use alloc::format;
use alloc::string::{String, ToString};

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

/// What a file the config names turns out to be, from its first bytes.
/// Used to refuse, with a way out, a file that is not what its key needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An arm64 `Image` with its header (Linux, U-Boot, many RTOSes).
    Arm64Image,
    /// An ELF file (`vmlinux`, or a program straight from the linker).
    Elf,
    /// A Linux kernel wrapped for EFI zboot (`CONFIG_EFI_ZBOOT`, "MZ" and
    /// "zimg"): a compressed Image behind a small EFI decompressor.
    EfiZboot,
    /// A U-Boot legacy `uImage` (`mkimage` header, magic 0x27051956).
    UImage,
    /// A compressed file: gzip (Debian's arm64 `vmlinuz`), xz, zstd,
    /// bzip2, lz4 or lzo; the name of the compressor.
    Compressed(&'static str),
    /// A flattened device tree (magic 0xd00dfeed).
    Fdt,
    /// None of the above: a raw binary, or a cpio archive.
    Other,
}

/// Leading bytes of the compressed formats a kernel or an initramfs comes
/// in, and the command that undoes each.
const COMPRESSED: [(&[u8], &str, &str); 6] = [
    (&[0x1f, 0x8b], "gzip", "gunzip -c"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz", "xz -dc"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd -dc"),
    (b"BZh", "bzip2", "bzip2 -dc"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4", "lz4 -dc"),
    (&[0x89, b'L', b'Z', b'O'], "lzo", "lzop -dc"),
];

/// FDT header magic, big-endian (Devicetree Specification v0.4, 5.2).
pub const FDT_MAGIC: [u8; 4] = [0xd0, 0x0d, 0xfe, 0xed];

impl Format {
    /// Identifies `bytes` by their first bytes. Never panics.
    pub fn of(bytes: &[u8]) -> Self {
        if bytes.len() >= HEADER_LEN && bytes.get(MAGIC_AT..MAGIC_AT + 4) == Some(&ARM64_MAGIC[..])
        {
            return Self::Arm64Image;
        }
        if bytes.starts_with(b"\x7fELF") {
            return Self::Elf;
        }
        if bytes.starts_with(b"MZ") && bytes.get(4..8) == Some(&b"zimg"[..]) {
            return Self::EfiZboot;
        }
        if bytes.starts_with(&[0x27, 0x05, 0x19, 0x56]) {
            return Self::UImage;
        }
        if bytes.starts_with(&FDT_MAGIC) {
            return Self::Fdt;
        }
        match COMPRESSED
            .iter()
            .find(|(magic, _, _)| bytes.starts_with(magic))
        {
            Some((_, name, _)) => Self::Compressed(name),
            None => Self::Other,
        }
    }

    /// Why a file of this format cannot be booted as a kernel (`kernel = `
    /// a path, which must be an arm64 `Image`), and how to make one;
    /// `None` for an `Image`.
    pub fn not_a_kernel(self) -> Option<String> {
        let how = match self {
            Self::Arm64Image => return None,
            Self::Elf => "it is an ELF file (vmlinux, or a linked program), not an arm64 Image: \
                 take the Image the kernel build writes (arch/arm64/boot/Image), or make a raw \
                 binary with `objcopy -O binary FILE Image` and give it the 64-byte Image header \
                 (Documentation/arch/arm64/booting.rst)"
                .to_string(),
            Self::EfiZboot => "it is an EFI zboot kernel (a compressed Image behind an EFI \
                 decompressor, CONFIG_EFI_ZBOOT): boot the arch/arm64/boot/Image of the same \
                 build, or cut out the compressed payload (its offset and size are the u32s \
                 at 8 and 12) and decompress it"
                .to_string(),
            Self::UImage => "it is a U-Boot legacy uImage (mkimage header): take the Image out \
                 with `dumpimage -T kernel -p 0 -o Image FILE`, or give the Image the uImage \
                 was made from"
                .to_string(),
            Self::Compressed(name) => {
                let undo = COMPRESSED
                    .iter()
                    .find(|(_, n, _)| *n == name)
                    .map_or("decompress it", |(_, _, cmd)| cmd);
                format!(
                    "it is {name}-compressed (a vmlinuz?), and Bulkhead boots the uncompressed \
                     arm64 Image, as QEMU's -kernel and U-Boot's booti do: `{undo} FILE > Image`"
                )
            }
            Self::Fdt => "it is a device tree blob, not a kernel: give it as `dtb`".to_string(),
            Self::Other => "it has no arm64 Image header (no \"ARM\\x64\" magic at offset \
                 0x38): for a raw bare-metal binary loaded at 0x80000 use `image` instead of \
                 `kernel`"
                .to_string(),
        };
        Some(how)
    }

    /// Why a file of this format cannot be an `image` (an arm64 `Image`
    /// or a raw binary); `None` for those two.
    pub fn not_an_image(self) -> Option<String> {
        match self {
            Self::Arm64Image | Self::Other => None,
            other => other.not_a_kernel(),
        }
    }

    /// Why a file of this format cannot be a `dtb`; `None` for a device
    /// tree.
    pub fn not_a_dtb(self) -> Option<String> {
        match self {
            Self::Fdt => None,
            _ => Some(
                "it is not a flattened device tree (no 0xd00dfeed magic at its start): \
                 compile a .dts with `dtc -I dts -O dtb -o board.dtb board.dts`"
                    .to_string(),
            ),
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
    fn formats_are_told_apart_by_their_first_bytes() {
        assert_eq!(Format::of(&header(0, 0x100_0000, 4096)), Format::Arm64Image);
        assert_eq!(Format::of(b"\x7fELF\x02\x01\x01"), Format::Elf);
        assert_eq!(Format::of(&[0x1f, 0x8b, 8, 0]), Format::Compressed("gzip"));
        assert_eq!(Format::of(b"\xfd7zXZ\0rest"), Format::Compressed("xz"));
        assert_eq!(
            Format::of(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Format::Compressed("zstd")
        );
        assert_eq!(Format::of(b"MZ\0\0zimg\0\0"), Format::EfiZboot);
        assert_eq!(Format::of(&[0x27, 0x05, 0x19, 0x56, 0]), Format::UImage);
        assert_eq!(Format::of(&[0xd0, 0x0d, 0xfe, 0xed, 0]), Format::Fdt);
        assert_eq!(Format::of(b"070701"), Format::Other);
        assert_eq!(Format::of(b""), Format::Other);
        // An EFI-stub Image starts with "MZ" too, but has the arm64 magic.
        let mut efi = header(0, 0x100_0000, 4096);
        efi[..2].copy_from_slice(b"MZ");
        assert_eq!(Format::of(&efi), Format::Arm64Image);
    }

    #[test]
    fn refusals_say_what_the_file_is_and_how_to_convert_it() {
        let gz = Format::Compressed("gzip").not_a_kernel().unwrap();
        assert!(
            gz.contains("gzip-compressed") && gz.contains("gunzip -c FILE > Image"),
            "{gz}"
        );
        let elf = Format::Elf.not_a_kernel().unwrap();
        assert!(
            elf.contains("ELF") && elf.contains("objcopy -O binary"),
            "{elf}"
        );
        assert!(Format::Other
            .not_a_kernel()
            .unwrap()
            .contains("no arm64 Image header"));
        assert_eq!(Format::Arm64Image.not_a_kernel(), None);
        // `image` takes raw binaries, but not an ELF or a compressed file.
        assert_eq!(Format::Other.not_an_image(), None);
        assert!(Format::Elf.not_an_image().is_some());
        assert_eq!(Format::Fdt.not_a_dtb(), None);
        assert!(Format::Elf.not_a_dtb().unwrap().contains("dtc"));
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
