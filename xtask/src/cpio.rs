//! The initramfs of a Linux guest: an uncompressed cpio archive in the
//! `newc` format (Linux Documentation/driver-api/early-userspace/
//! buffer-format.rst), written here so the output is reproducible: every
//! mtime, uid and gid is 0 and inode numbers are assigned in order.
//!
//! Each entry is a 110-byte ASCII header, the NUL-terminated name, padding
//! to a multiple of 4, the data, padding to a multiple of 4:
//!
//! ```text
//! "070701" then 13 fields of 8 hex digits: ino mode uid gid nlink mtime
//! filesize devmajor devminor rdevmajor rdevminor namesize check
//! ```
//!
//! The archive ends with an entry named `TRAILER!!!`.

/// `newc` magic (no checksums).
pub const MAGIC: &[u8; 6] = b"070701";
/// Header bytes: magic plus 13 eight-digit fields.
pub const HEADER_LEN: usize = 6 + 13 * 8;
/// Name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode` (POSIX <sys/stat.h>).
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFCHR: u32 = 0o020_000;

/// A `newc` archive being written.
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// A directory (mode `0755`). `path` has no leading `/`.
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
    }

    /// A character device node `major:minor` with permission bits `perm`.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer is an empty entry with inode 0 (as GNU cpio writes it).
        self.header(TRAILER, 0, 0, 1, (0, 0), 0);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, nlink, rdev, data.len());
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: usize,
    ) {
        let size = u32::try_from(size).expect("a cpio newc member is smaller than 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("cpio names are short");
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let start = self.out.len();
        self.out.extend_from_slice(MAGIC);
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        debug_assert_eq!(self.out.len() - start, HEADER_LEN);
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    /// Zero bytes up to the next multiple of 4.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// Directories every Linux guest's initramfs has.
pub const DIRS: [&str; 10] = [
    "bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc",
];

/// The initramfs of a Linux guest: the standard directories, `/root`,
/// `/bin/busybox`, `/init` (the configured script) and `/dev/console`
/// (char 5:1, Linux Documentation/admin-guide/devices.txt) so that `/init`
/// has a console before it mounts devtmpfs.
pub fn initramfs(busybox: &[u8], init: &[u8], extra: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new();
    for dir in DIRS.iter().chain(&["root"]) {
        w.dir(dir);
    }
    w.char_device("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, busybox);
    w.file("init", 0o755, init);
    // Extra files (the channel tool, kernel modules), with their parent
    // directories, in a stable order.
    let mut made: Vec<String> = DIRS.iter().map(|d| d.to_string()).collect();
    for (path, bytes) in extra {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !made.contains(&d) {
                w.dir(&d);
                made.push(d);
            }
        }
        w.file(path, 0o755, bytes);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A strict reader: checks magic, hex fields, NUL, alignment and that
    /// the trailer is last with nothing after it.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut entries = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry at {at} is not 4-byte aligned");
            assert_eq!(&b[..6], MAGIC, "magic at {at}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(text.bytes().all(|c| c.is_ascii_hexdigit()), "{text}");
                u32::from_str_radix(text, 16).unwrap()
            };
            let (ino, mode, uid, gid, nlink, mtime, size) = (
                field(0),
                field(1),
                field(2),
                field(3),
                field(4),
                field(5),
                field(6) as usize,
            );
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            assert_eq!((uid, gid, field(12)), (0, 0, 0));
            let name_end = HEADER_LEN + namesize;
            assert_eq!(b[name_end - 1], 0, "name is NUL-terminated");
            let name = std::str::from_utf8(&b[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_owned();
            let data_at = name_end.next_multiple_of(4);
            assert!(b[name_end..data_at].iter().all(|&x| x == 0));
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(b[data_at + size..next].iter().all(|&x| x == 0));
            b = &b[next..];
            let done = name == TRAILER;
            entries.push(Entry {
                name,
                ino,
                mode,
                nlink,
                mtime,
                rdev,
                data,
            });
            if done {
                assert!(b.is_empty(), "{} bytes after the trailer", b.len());
                return entries;
            }
        }
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let a = Writer::new().finish();
        assert_eq!(a.len() % 4, 0);
        let e = parse(&a);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, TRAILER);
        // 110-byte header + 11-byte name = 121, padded to 124.
        assert_eq!(a.len(), 124);
    }

    #[test]
    fn entries_read_back_with_names_modes_and_data() {
        let mut w = Writer::new();
        w.dir("bin");
        w.file("bin/x", 0o755, b"hello");
        w.file("odd", 0o644, b"abc");
        w.char_device("dev/console", 0o600, 5, 1);
        let e = parse(&w.finish());
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/x", "odd", "dev/console", TRAILER]);
        assert_eq!(e[0].mode, 0o040_755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[1].mode, 0o100_755);
        assert_eq!(e[1].data, b"hello");
        assert_eq!(e[2].mode, 0o100_644);
        assert_eq!(e[2].data, b"abc");
        assert_eq!(e[3].mode, 0o020_600);
        assert_eq!(e[3].rdev, (5, 1));
        assert!(e[3].data.is_empty());
        // Distinct inodes in order, all mtimes zero.
        assert_eq!(e.iter().map(|e| e.ino).collect::<Vec<_>>(), [1, 2, 3, 4, 0]);
        assert!(e.iter().all(|e| e.mtime == 0));
    }

    #[test]
    fn every_name_and_data_length_keeps_alignment() {
        // Names and files of lengths 0..8 hit every padding case.
        for n in 1..9 {
            for len in 0..9 {
                let mut w = Writer::new();
                w.file(&"n".repeat(n), 0o644, &vec![0xaa; len]);
                let e = parse(&w.finish());
                assert_eq!(e[0].data.len(), len);
                assert_eq!(e[0].name.len(), n);
            }
        }
    }

    #[test]
    fn initramfs_has_dirs_console_busybox_and_init() {
        let a = initramfs(b"BUSYBOX", b"#!/bin/busybox sh\n", &[]);
        let e = parse(&a);
        let find = |name: &str| {
            e.iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        for dir in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root",
        ] {
            assert_eq!(find(dir).mode, S_IFDIR | 0o755, "{dir}");
        }
        assert_eq!(find("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(find("bin/busybox").data, b"BUSYBOX");
        assert_eq!(find("init").data, b"#!/bin/busybox sh\n");
        // A directory comes before anything inside it.
        let pos = |name: &str| e.iter().position(|e| e.name == name).unwrap();
        assert!(pos("dev") < pos("dev/console"));
        assert!(pos("bin") < pos("bin/busybox"));
        assert!(pos("usr") < pos("usr/bin"));
    }

    #[test]
    fn extra_files_come_with_their_directories_once() {
        let extra = [
            ("bin/bulkhead-chan".to_owned(), b"TOOL".to_vec()),
            ("lib/modules/6.1.0/uio.ko".to_owned(), b"UIO".to_vec()),
            (
                "lib/modules/6.1.0/uio_pci_generic.ko".to_owned(),
                b"PCI".to_vec(),
            ),
        ];
        let e = parse(&initramfs(b"B", b"I", &extra));
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        let pos = |name: &str| names.iter().position(|n| *n == name).unwrap();
        for dir in ["lib", "lib/modules", "lib/modules/6.1.0"] {
            assert_eq!(names.iter().filter(|n| **n == dir).count(), 1, "{dir}");
            assert_eq!(e[pos(dir)].mode, S_IFDIR | 0o755);
        }
        assert_eq!(names.iter().filter(|n| **n == "bin").count(), 1);
        assert!(pos("lib/modules/6.1.0") < pos("lib/modules/6.1.0/uio.ko"));
        assert_eq!(e[pos("bin/bulkhead-chan")].data, b"TOOL");
        assert_eq!(e[pos("lib/modules/6.1.0/uio_pci_generic.ko")].data, b"PCI");
    }

    #[test]
    fn initramfs_is_reproducible() {
        assert_eq!(initramfs(b"a", b"b", &[]), initramfs(b"a", b"b", &[]));
    }
}
