//! ELF to flat binary, and symbol lookup.

use anyhow::{bail, Context, Result};
use object::elf::PT_LOAD;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Object, ObjectSymbol};

/// A flat image of an ELF's loadable segments.
#[derive(Debug, PartialEq, Eq)]
pub struct Flat {
    /// Physical load address of the first byte (lowest `p_paddr`).
    pub base: u64,
    /// Bytes from `base` to the end of the highest segment's memory image.
    pub bytes: Vec<u8>,
}

/// Lays out every `PT_LOAD` segment at its physical address (`p_paddr`,
/// ELF gABI "Program Header"): the flat image covers
/// `[min p_paddr, max p_paddr + p_memsz)`, with each segment's file bytes
/// copied in and everything else zero. Bytes between `p_filesz` and
/// `p_memsz` are `.bss`, so `.bss` is zeroed inside the image and the loaded
/// program needs no clearing loop before it runs.
pub fn to_flat(elf: &[u8]) -> Result<Flat> {
    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf)
        .context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    let mut segments = Vec::new();
    for phdr in header
        .program_headers(endian, elf)
        .context("bad ELF program headers")?
    {
        if phdr.p_type(endian) != PT_LOAD || phdr.p_memsz(endian) == 0 {
            continue;
        }
        let paddr = phdr.p_paddr(endian);
        let memsz = phdr.p_memsz(endian);
        let data = phdr
            .data(endian, elf)
            .map_err(|()| anyhow::anyhow!("PT_LOAD segment at {paddr:#x} lies outside the file"))?;
        if data.len() as u64 > memsz {
            bail!("PT_LOAD segment at {paddr:#x} has p_filesz > p_memsz");
        }
        let end = paddr
            .checked_add(memsz)
            .with_context(|| format!("PT_LOAD segment at {paddr:#x} wraps the address space"))?;
        segments.push((paddr, end, data));
    }
    let Some(base) = segments.iter().map(|s| s.0).min() else {
        bail!("the ELF file has no loadable segments");
    };
    let end = segments.iter().map(|s| s.1).max().unwrap_or(base);
    let len = usize::try_from(end - base).context("flat image too large")?;
    if len > 1 << 30 {
        bail!("loadable segments span {len:#x} bytes (over 1 GiB); check the linker script");
    }
    let mut bytes = vec![0u8; len];
    for (paddr, _, data) in segments {
        let start = (paddr - base) as usize;
        bytes[start..start + data.len()].copy_from_slice(data);
    }
    Ok(Flat { base, bytes })
}

/// The value of the symbol `name` in an ELF file.
pub fn symbol(elf: &[u8], name: &str) -> Result<u64> {
    let file = object::File::parse(elf).context("not an object file")?;
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .with_context(|| format!("symbol `{name}` not found"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write::elf::{
        FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Sym, Writer,
    };
    use object::Endianness;

    /// One segment of a synthetic ELF: physical address, file bytes, memory size.
    pub struct Seg<'a> {
        pub paddr: u64,
        pub data: &'a [u8],
        pub memsz: u64,
    }

    /// Writes a little-endian AArch64 ELF64 with the given `PT_LOAD`
    /// segments (virtual address = physical address + `vdelta`, to prove
    /// the physical one is used) and symbols.
    pub fn synthetic_elf(segs: &[Seg<'_>], vdelta: u64, symbols: &[(&str, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(Endianness::Little, true, &mut out);
        w.reserve_file_header();
        w.reserve_program_headers(segs.len() as u32);
        let offsets: Vec<usize> = segs.iter().map(|s| w.reserve(s.data.len(), 16)).collect();
        let names: Vec<_> = symbols
            .iter()
            .map(|(n, _)| w.add_string(n.as_bytes()))
            .collect();
        w.reserve_null_symbol_index();
        for _ in symbols {
            w.reserve_symbol_index(None);
        }
        w.reserve_symtab_section_index();
        w.reserve_symtab();
        w.reserve_strtab_section_index();
        w.reserve_strtab();
        w.reserve_shstrtab_section_index();
        w.reserve_shstrtab();
        w.reserve_section_headers();

        w.write_file_header(&WFileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: object::elf::ET_EXEC,
            e_machine: object::elf::EM_AARCH64,
            e_entry: segs.first().map_or(0, |s| s.paddr + vdelta),
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        for (s, off) in segs.iter().zip(&offsets) {
            w.write_program_header(&WProgramHeader {
                p_type: PT_LOAD,
                p_flags: object::elf::PF_R,
                p_offset: *off as u64,
                p_vaddr: s.paddr + vdelta,
                p_paddr: s.paddr,
                p_filesz: s.data.len() as u64,
                p_memsz: s.memsz,
                p_align: 16,
            });
        }
        for (s, off) in segs.iter().zip(&offsets) {
            w.pad_until(*off);
            w.write(s.data);
        }
        w.write_null_symbol();
        for ((_, value), name) in symbols.iter().zip(&names) {
            w.write_symbol(&Sym {
                name: Some(*name),
                section: None,
                st_info: (object::elf::STB_GLOBAL << 4) | object::elf::STT_NOTYPE,
                st_other: 0,
                st_shndx: object::elf::SHN_ABS,
                st_value: *value,
                st_size: 0,
            });
        }
        w.write_strtab();
        w.write_shstrtab();
        w.write_null_section_header();
        w.write_symtab_section_header(1);
        w.write_strtab_section_header();
        w.write_shstrtab_section_header();
        out
    }

    #[test]
    fn flat_spans_lowest_to_highest_segment_with_zeroed_gap_and_bss() {
        let elf = synthetic_elf(
            &[
                Seg {
                    paddr: 0x4008_0000,
                    data: &[1, 2, 3, 4],
                    memsz: 4,
                },
                // A gap of 0x1000 - 4 bytes, then 2 file bytes and 6 of .bss.
                Seg {
                    paddr: 0x4008_1000,
                    data: &[5, 6],
                    memsz: 8,
                },
            ],
            0xffff_0000_0000_0000,
            &[],
        );
        let flat = to_flat(&elf).unwrap();
        assert_eq!(flat.base, 0x4008_0000);
        assert_eq!(flat.bytes.len(), 0x1008);
        assert_eq!(&flat.bytes[..4], &[1, 2, 3, 4]);
        assert!(flat.bytes[4..0x1000].iter().all(|&b| b == 0));
        assert_eq!(&flat.bytes[0x1000..0x1002], &[5, 6]);
        assert!(flat.bytes[0x1002..].iter().all(|&b| b == 0));
    }

    #[test]
    fn flat_orders_segments_by_physical_address_not_file_order() {
        let elf = synthetic_elf(
            &[
                Seg {
                    paddr: 0x2000,
                    data: &[0xbb],
                    memsz: 1,
                },
                Seg {
                    paddr: 0x1000,
                    data: &[0xaa],
                    memsz: 1,
                },
            ],
            0,
            &[],
        );
        let flat = to_flat(&elf).unwrap();
        assert_eq!(flat.base, 0x1000);
        assert_eq!(flat.bytes.len(), 0x1001);
        assert_eq!(flat.bytes[0], 0xaa);
        assert_eq!(flat.bytes[0x1000], 0xbb);
    }

    #[test]
    fn elf_without_loadable_segments_is_rejected() {
        let elf = synthetic_elf(&[], 0, &[]);
        assert!(to_flat(&elf).is_err());
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(to_flat(b"not an elf at all, just some bytes......................").is_err());
    }

    #[test]
    fn symbol_values_are_found_by_name() {
        let elf = synthetic_elf(
            &[Seg {
                paddr: 0x1000,
                data: &[0],
                memsz: 1,
            }],
            0,
            &[("__hv_start", 0x4008_0000), ("__hv_end", 0x4010_0000)],
        );
        assert_eq!(symbol(&elf, "__hv_start").unwrap(), 0x4008_0000);
        assert_eq!(symbol(&elf, "__hv_end").unwrap(), 0x4010_0000);
        assert!(symbol(&elf, "__nope").is_err());
    }
}
