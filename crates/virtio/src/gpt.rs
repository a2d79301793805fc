//! GUID partition tables (UEFI 2.10, chapter 5), pure: read one to find a
//! named partition of a shared disk, and write one (the host tool lays
//! out the disk images it creates).
//!
//! Only what a slice needs: the primary header at LBA 1 and its entry
//! array, both checked against their CRC32s; partition names are the
//! entries' UTF-16LE names. 512-byte sectors.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub const SECTOR: u64 = 512;
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The standard entry array: 128 entries of 128 bytes (32 sectors).
pub const ENTRIES: u32 = 128;
pub const ENTRY_SIZE: u32 = 128;
/// "Linux filesystem data", 0FC63DAF-8483-4772-8E79-3D69D8477DE4, as stored.
pub const LINUX_DATA: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];
/// Longest name an entry holds (72 bytes of UTF-16).
pub const MAX_NAME: usize = 36;

/// A partition: sectors `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub first: u64,
    pub last: u64,
}

impl Partition {
    pub fn sectors(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptError {
    /// No "EFI PART" at LBA 1: the disk has no GPT.
    NoTable,
    HeaderCrc,
    /// An entry array we do not read (size or count out of range).
    Entries,
    EntriesCrc,
    /// An entry whose range is empty, reversed or past the usable area.
    BadEntry,
}

impl core::fmt::Display for GptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            GptError::NoTable => "no GPT header at LBA 1",
            GptError::HeaderCrc => "the GPT header's CRC32 is wrong",
            GptError::Entries => "the GPT entry array is not 128-byte entries, at most 128 of them",
            GptError::EntriesCrc => "the GPT entry array's CRC32 is wrong",
            GptError::BadEntry => "a GPT entry's range is empty or outside the usable area",
        })
    }
}

/// CRC32 (IEEE 802.3, reflected, as UEFI uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                crc >> 1 ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// Where the entry array is, from a header sector: (first LBA, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub entries_lba: u64,
    pub entries: u32,
    pub first_usable: u64,
    pub last_usable: u64,
    entries_crc: u32,
}

impl Header {
    /// Bytes of the entry array.
    pub fn entries_bytes(&self) -> usize {
        self.entries as usize * ENTRY_SIZE as usize
    }
}

/// Checks the header in `sector` (LBA 1).
pub fn header(sector: &[u8]) -> Result<Header, GptError> {
    if sector.len() < 92 || &sector[..8] != SIGNATURE {
        return Err(GptError::NoTable);
    }
    let size = u32_at(sector, 12) as usize;
    if !(92..=sector.len()).contains(&size) {
        return Err(GptError::HeaderCrc);
    }
    let mut h = sector[..size].to_vec();
    h[16..20].fill(0);
    if crc32(&h) != u32_at(sector, 16) {
        return Err(GptError::HeaderCrc);
    }
    let entries = u32_at(sector, 80);
    if u32_at(sector, 84) != ENTRY_SIZE || entries == 0 || entries > ENTRIES {
        return Err(GptError::Entries);
    }
    Ok(Header {
        entries_lba: u64_at(sector, 72),
        entries,
        first_usable: u64_at(sector, 40),
        last_usable: u64_at(sector, 48),
        entries_crc: u32_at(sector, 88),
    })
}

/// The used entries of `array` (the header's entry array, whole).
pub fn partitions(h: &Header, array: &[u8]) -> Result<Vec<Partition>, GptError> {
    let array = array.get(..h.entries_bytes()).ok_or(GptError::Entries)?;
    if crc32(array) != h.entries_crc {
        return Err(GptError::EntriesCrc);
    }
    let mut out = Vec::new();
    for e in array.chunks_exact(ENTRY_SIZE as usize) {
        if e[..16].iter().all(|&b| b == 0) {
            continue; // unused
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if first > last || first < h.first_usable || last > h.last_usable {
            return Err(GptError::BadEntry);
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        // The table is data on the disk, and names reach the console's
        // log: anything but printable ASCII becomes '?'.
        let name = char::decode_utf16(units)
            .map(|c| match c {
                Ok(c) if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        out.push(Partition { name, first, last });
    }
    Ok(out)
}

/// A GPT for a disk of `sectors` sectors with `parts` (name, first byte,
/// bytes): the pieces to write, as (byte offset, bytes): protective MBR,
/// primary header and entries, backup entries and header. GUIDs are made
/// from `seed` and the names, so the same layout gives the same bytes.
pub fn build(sectors: u64, parts: &[(&str, u64, u64)], seed: u64) -> Vec<(u64, Vec<u8>)> {
    let entry_sectors = u64::from(ENTRIES * ENTRY_SIZE) / SECTOR;
    let last = sectors - 1;
    let first_usable = 2 + entry_sectors;
    let last_usable = last - 1 - entry_sectors;
    let guid = |k: u64| {
        let mut g = [0u8; 16];
        let mut x = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for chunk in g.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        g[7] = (g[7] & 0x0f) | 0x40; // version 4
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    };
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, (&(name, offset, size), e)) in parts
        .iter()
        .zip(array.chunks_exact_mut(ENTRY_SIZE as usize))
        .enumerate()
    {
        e[..16].copy_from_slice(&LINUX_DATA);
        e[16..32].copy_from_slice(&guid(i as u64 + 1));
        e[32..40].copy_from_slice(&(offset / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((offset + size) / SECTOR - 1).to_le_bytes());
        for (j, u) in name.encode_utf16().take(MAX_NAME).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = crc32(&array);
    let head = |this: u64, other: u64, entries: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&this.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&guid(0));
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    // The protective MBR: one partition of type 0xEE over the whole disk.
    let mut mbr = vec![0u8; SECTOR as usize];
    mbr[446 + 1..446 + 4].copy_from_slice(&[0, 2, 0]);
    mbr[446 + 4] = 0xee;
    mbr[446 + 5..446 + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&(last.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let backup_entries = last - entry_sectors;
    vec![
        (0, mbr),
        (SECTOR, head(1, last, 2)),
        (2 * SECTOR, array.clone()),
        (backup_entries * SECTOR, array),
        (last * SECTOR, head(last, 1, backup_entries)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn a_built_table_reads_back() {
        let sectors = 64 << 11; // 64 MiB
        let pieces = build(
            sectors,
            &[("root", 1 << 20, 16 << 20), ("data", 17 << 20, 8 << 20)],
            7,
        );
        let mut disk = vec![0u8; (sectors * SECTOR) as usize];
        for (at, bytes) in &pieces {
            disk[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let h = header(&disk[512..1024]).unwrap();
        assert_eq!((h.entries_lba, h.entries), (2, 128));
        let at = (h.entries_lba * SECTOR) as usize;
        let parts = partitions(&h, &disk[at..at + h.entries_bytes()]).unwrap();
        assert_eq!(
            parts,
            [
                Partition {
                    name: "root".into(),
                    first: 2048,
                    last: 2048 + 32768 - 1
                },
                Partition {
                    name: "data".into(),
                    first: 34816,
                    last: 34816 + 16384 - 1
                },
            ]
        );
        assert_eq!(parts[1].sectors(), 16384);
        // The backup header says where the backup entries are, and checks.
        let last = ((sectors - 1) * SECTOR) as usize;
        let b = header(&disk[last..last + 512]).unwrap();
        let at = (b.entries_lba * SECTOR) as usize;
        assert_eq!(
            partitions(&b, &disk[at..at + b.entries_bytes()]).unwrap(),
            parts
        );
    }

    #[test]
    fn names_are_printable_ascii_only() {
        let pieces = build(8 << 11, &[("a\x1b[2Jb\u{e9}", 1 << 20, 1 << 20)], 3);
        let h = header(&pieces[1].1).unwrap();
        assert_eq!(partitions(&h, &pieces[2].1).unwrap()[0].name, "a?[2Jb?");
    }

    #[test]
    fn damaged_tables_are_refused() {
        let sectors = 8 << 11;
        let pieces = build(sectors, &[("x", 1 << 20, 1 << 20)], 1);
        let head = pieces[1].1.clone();
        let array = pieces[2].1.clone();
        assert_eq!(header(&[0u8; 512]), Err(GptError::NoTable));
        let mut bad = head.clone();
        bad[40] ^= 1;
        assert_eq!(header(&bad), Err(GptError::HeaderCrc));
        let h = header(&head).unwrap();
        let mut arr = array.clone();
        arr[60] ^= 1;
        assert_eq!(partitions(&h, &arr), Err(GptError::EntriesCrc));
        assert_eq!(partitions(&h, &array[..100]), Err(GptError::Entries));
        // An entry past the usable area, with its CRCs made right.
        let mut arr = array.clone();
        arr[40..48].copy_from_slice(&(sectors + 5).to_le_bytes());
        let mut head2 = head.clone();
        head2[88..92].copy_from_slice(&crc32(&arr).to_le_bytes());
        head2[16..20].fill(0);
        let crc = crc32(&head2[..92]);
        head2[16..20].copy_from_slice(&crc.to_le_bytes());
        let h2 = header(&head2).unwrap();
        assert_eq!(partitions(&h2, &arr), Err(GptError::BadEntry));
    }
}
