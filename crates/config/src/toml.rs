//! The TOML front-end (feature `toml`, host only): reads a config file into a
//! [`SystemConfig`] and reports every problem as `file:line: field: message`.
//!
//! # File format
//!
//! One file describes one system: the board, then one `[[vm]]` table per VM,
//! in boot order (the first `[[vm]]` is `vm[0]`), then any `[[channel]]`
//! tables (the first is `channel[0]`), `[[disk]]` tables (the first is
//! `disk[0]`), `[[switch]]` tables (the first is `switch[0]`) and `[[pool]]`
//! tables (the first is `pool[0]`).
//!
//! ```toml
//! [board]                 # the machine the config is for
//! cpus = 4                # physical CPUs, 1 to 64
//! memory = "1G"           # bytes of RAM
//! ram_base = 0x4000_0000  # optional, default 0x4000_0000: host-physical start of RAM
//!
//! [[vm]]
//! name = "safety"         # 1 to 31 of a-z 0-9 _ -, unique
//! guest = "hello"         # a bare-metal guest built from guests/ ...
//! # image = "linux/Image" # ... or a raw / arm64 Image file, relative to this file ...
//! # kernel = "debian:bookworm"  # ... or a Linux kernel (see below)
//! # init = "linux/init.sh"      # kernel/image only: /init of a generated initramfs ...
//! # initramfs = "rootfs.cpio.gz"  # ... or an initramfs file, passed as it is
//! # dtb = "board.dtb"           # optional: the guest's device tree, instead of the generated one
//! # cmdline = "setup smp=2"     # the whole command line, verbatim (in /chosen/bootargs) ...
//! # append = "quiet"            # ... or words added after the default command line
//! memory = "16M"          # multiple of 2 MiB; must hold the image + 0x80000
//! host_address = 0x5000_0000   # optional: fixed host-physical address of its RAM
//! pcpus = [0]             # vCPU i runs on physical CPU pcpus[i]; 1 to 8 vCPUs ...
//! # pool = "general"      # ... or share the pCPUs of a [[pool]], by name (not both)
//! # vcpus = 2             # required with pool: 1 to 8; with pcpus optional, = their number
//! # weight = 256          # pool VMs only, default 256: 1 to 65535, each vCPU's relative share
//! # cap = 50              # pool VMs only, optional: 1 to 100, most percent of one pCPU per vCPU
//! restart = "on-crash"    # never | on-crash | always; default on-crash
//! criticality = "critical"     # normal | critical; default normal; a critical VM is in no pool
//!
//! [[vm.passthrough]]      # optional, up to 8: a device only this VM may use
//! name = "rtc"            # label, 1 to 31 of a-z 0-9 _ -
//! base = 0x0901_0000      # host-physical MMIO, mapped at the same guest address
//! size = 0x1000           # a size, like `memory`; multiple of 4 KiB
//! irqs = [34]             # optional: SPI INTIDs, 32 to 127 but not 33 (the UART's); up to 8
//! compatible = ["arm,pl031", "arm,primecell"]  # for the guest's device tree; 1 to 4
//!
//! [[channel]]             # optional, up to 4: shared memory + doorbells between two VMs
//! name = "control"        # 1 to 31 of a-z 0-9 _ -, unique among channels
//! between = ["safety", "infotainment"]  # two different VMs by name; end 0 first
//! size = "4K"             # optional, default 4 KiB: a power of two, 4 KiB to 1 MiB
//!
//! [[disk]]                # optional: the board's virtio-blk disks, by ascending MMIO address
//! name = "emmc"           # 1 to 31 of a-z 0-9 _ -, unique among disks
//! size = "8G"             # a size, like `memory`; a nonzero multiple of 512
//!
//! [[disk.partition]]      # optional, up to 16: the disk's GPT layout, in order
//! name = "root"           # 1 to 36 printable ASCII characters, unique within the disk
//! size = "2G"             # a size; a nonzero multiple of 512
//!
//! [[vm.disk]]             # optional, up to 4 (not on a critical VM): a slice of a disk
//! disk = "emmc"           # a [[disk]] by name
//! offset = "1G"           # optional, default 0: where the slice starts; multiple of 512
//! size = "2G"             # bytes of the slice; nonzero multiple of 512; must end in the disk
//! # partition = "root"    # instead of offset and size: a GPT partition of the disk, by name
//! read-only = true        # optional, default false
//! serial = "logs"         # optional, default "<vm name>-disk<n>" cut to 20 bytes; ASCII, at most 20
//!
//! [[switch]]              # optional: a virtual Ethernet switch the VMs' nets are ports of
//! name = "lan"            # 1 to 31 of a-z 0-9 _ -, unique among switches
//! uplink = true           # optional, default false: the board's physical NIC is a port; at most one switch
//!
//! [[vm.net]]              # optional, up to 4 (not on a critical VM): a virtio-net port on a switch
//! switch = "lan"          # a [[switch]] by name
//! mac = "52:54:00:12:34:56"    # six hex bytes, any case; unicast, not all zeros, unique in the system
//!
//! [[pool]]                # optional, up to 4: pCPUs the vCPUs of its VMs share
//! name = "general"        # 1 to 31 of a-z 0-9 _ -, unique among pools; a [[vm]]'s `pool` names it
//! pcpus = [1, 2]          # 1 to 8 physical CPUs, each listed once, in no other pool, dedicated to no VM
//! ```
//!
//! - **Sizes** (`memory`): an integer number of bytes (TOML hex like
//!   `0x100_0000` is fine), or a string: `"<n>"` bytes, `"<n>K"`, `"<n>M"`,
//!   `"<n>G"`, or `"<n>KiB"`, `"<n>MiB"`, `"<n>GiB"` (all powers of 1024).
//! - **Each VM names exactly one of** `guest` (the name of a bare-metal guest
//!   crate under `guests/`, which the host tool builds), `image` (a path to
//!   a kernel image, relative to the directory of the config file) or
//!   `kernel` (a Linux kernel: `"debian:bookworm"` for Debian bookworm's
//!   cloud arm64 kernel, `"debian:bookworm-backports"` for the 6.12 one from
//!   bookworm-backports, which the host tool downloads, or else a path to an
//!   arm64 `Image` like `image`). VMs that name the same guest or file share
//!   one copy in the payload.
//! - **`init`** (with `kernel` or `image` only): a script, relative to the
//!   config file, that becomes `/init` of an initramfs the host tool
//!   generates (with Debian's static busybox). **`initramfs`** instead names
//!   an initramfs file the guest gets as it is. With neither there is no
//!   initramfs.
//! - **`dtb`**: a flattened device tree file the guest boots with instead
//!   of the one the hypervisor generates, as it is (its `/chosen` included).
//! - **`cmdline`** is the guest's whole command line, verbatim. Without it
//!   the default is `console=ttyAMA0 rdinit=/init panic=-1` for a `kernel`
//!   or a VM with an initramfs, `console=ttyAMA0` otherwise; **`append`**
//!   adds words after that default.
//! - **Unknown keys are errors**, so a misspelt key cannot be silently
//!   ignored.
//! - **Rules** checked by [`Parsed::check`] (see [`validate`]): the hypervisor
//!   keeps the first 64 MiB of board RAM; VM memory in total must fit in the
//!   rest; fixed `host_address` regions lie in board RAM, are 2 MiB aligned,
//!   and do not overlap each other or the hypervisor's 64 MiB; each physical
//!   CPU exists on the board and is given to at most one vCPU in the system;
//!   a passthrough range is 4 KiB aligned, outside board RAM, the
//!   hypervisor's GIC and UART, the channel window and the channels' PCI
//!   configuration space, and given to one VM only, as is each irq (never
//!   one of the channel doorbells 120 to 123); a channel joins two different
//!   VMs, no VM is an end of more than 4, and there are at most 4; critical
//!   VMs leave at least one pCPU free of them. Passthrough also keeps off the
//!   virtio-mmio window 0x0a00_0000..0x0a00_1000 and its irqs 48 to 55. A
//!   disk slice lies inside its disk, is 512-byte aligned, and overlaps no
//!   other slice of that disk unless both are read-only; a VM has at most 4
//!   slices, and a critical VM none. A VM has at most 4 nets, and a critical
//!   VM none; its disks and nets together are at most 8 virtio-mmio devices
//!   (disks first, then nets); a MAC address is unicast, not all zeros and
//!   used once in the system; switch names are unique, and at most one
//!   switch has the uplink. A VM has either `pcpus` or a `pool`; a pool
//!   VM has 1 to 8 `vcpus`, a `weight` of 1 to 65535 and a `cap`, if any,
//!   of 1 to 100, and is not critical; a VM with `pcpus` has `vcpus` equal
//!   to their number, if it gives it, and no `weight` or `cap`. There are
//!   at most 4 pools, with unique names and 1 to 8 pCPUs each, pCPUs of
//!   the board that no other pool has and no VM has dedicated; a pool no
//!   VM uses is fine, and a pool's pCPUs count as free of critical VMs.
//! - **Partitions** (`[[disk.partition]]`) are laid out by
//!   [`partition_layout`]: the first at 1 MiB, each next one where the one
//!   before ends rounded up to 1 MiB, all ending by the disk's size less
//!   1 MiB (room for the backup GPT); the host tool writes that GPT into
//!   the disk image it creates. A `[[vm.disk]]` with `partition` (and no
//!   `offset` or `size`) is that partition: on a disk that declares its
//!   partitions the name must be one of them, and the slice gets its
//!   offset and size here, so every slice rule applies to it; on a disk
//!   that declares none, the hypervisor finds the partition in the disk's
//!   GPT at boot and checks the slice then.
//! - **`disk`** in `[[vm.disk]]` must name a `[[disk]]` of the file,
//!   **`switch`** in `[[vm.net]]` a `[[switch]]` and **`pool`** in `[[vm]]`
//!   a `[[pool]]`; an unknown name is reported on its own line, as is a
//!   `mac` that is not six hex bytes, and a `weight` or `cap` on a VM with
//!   `pcpus`.
//! - **`between`** must name VMs defined in the file; an unknown name is
//!   reported on its own line.
//!
//! Every problem names the file, the line of the offending key (or of the
//! `[[vm]]` header when the key is missing) and the field, e.g.
//!
//! ```text
//! configs/car.toml:14: vm[1].host_address: region 0x50e00000..0x60e00000 overlaps vm 'safety' at 0x50000000..0x51000000
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use ::toml::Spanned;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::validate::pool_only;
use crate::{
    partition_layout, validate, Board, Channel, Criticality, Disk, DiskPartition, Field, ImageInfo,
    Management, Passthrough, Pool, RestartPolicy, Switch, SystemConfig, VmConfig, VmDisk, VmNet,
    DEFAULT_CMDLINE, DEFAULT_WEIGHT, LINUX_CMDLINE, MAX_CHANNELS, MAX_POOLS, MAX_SERIAL_LEN,
    MIN_CHANNEL_SIZE, RAM_IPA,
};

/// Where a VM's image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A bare-metal guest built from `guests/<name>`.
    Guest(String),
    /// A kernel image file, already resolved relative to the config file's
    /// directory.
    File(PathBuf),
    /// A Debian arm64 kernel package, fetched by the host tool.
    Debian(DebianKernel),
    /// An initramfs the host tool generates around this `/init` script
    /// (resolved relative to the config file's directory).
    Initramfs(PathBuf),
}

/// The Debian kernels `kernel = "debian:<suite>"` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DebianKernel {
    /// Debian 12 bookworm's cloud arm64 kernel (Linux 6.1).
    Bookworm,
    /// The cloud arm64 kernel from bookworm-backports (Linux 6.12).
    BookwormBackports,
}

impl DebianKernel {
    /// Every kernel, in the order they are listed in messages.
    pub const ALL: [Self; 2] = [Self::Bookworm, Self::BookwormBackports];

    /// The suite name as written after `debian:`.
    pub const fn suite(self) -> &'static str {
        match self {
            Self::Bookworm => "bookworm",
            Self::BookwormBackports => "bookworm-backports",
        }
    }

    /// The kernel for `suite`, if it is one we know.
    pub fn from_suite(suite: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.suite() == suite)
    }
}

/// The `kernel = "debian:<suite>"` prefix.
pub const DEBIAN_PREFIX: &str = "debian:";

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file, as given.
    pub file: String,
    /// 1-based line; 0 when the file could not be read at all.
    pub line: usize,
    /// The TOML path of the field, e.g. `vm[1].memory`; empty if none.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// A parsed config file: the config, the images its VMs refer to, and where
/// each field was written (for [`check`](Parsed::check)'s messages).
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The system. `VmConfig::image` indexes into `images`.
    pub config: SystemConfig,
    /// Distinct image sources, in order of first use.
    pub images: Vec<ImageSource>,
    file: String,
    lines: Lines,
}

/// Lines of the fields in the file, by the core field name of [`Field`].
#[derive(Clone, Debug, Default)]
struct Lines {
    board: Table,
    vms: Vec<Table>,
    channels: Vec<Table>,
    disks: Vec<Table>,
    switches: Vec<Table>,
    pools: Vec<Table>,
}

#[derive(Clone, Debug, Default)]
struct Table {
    /// Line of the `[board]` / `[[vm]]` / `[[channel]]` / `[[disk]]` /
    /// `[[switch]]` / `[[pool]]` header.
    header: usize,
    /// (core field name, TOML key, line).
    keys: Vec<(&'static str, &'static str, usize)>,
    /// A VM's `[[vm.passthrough]]` tables, in order.
    devices: Vec<Table>,
    /// A VM's `[[vm.disk]]` tables, in order.
    disks: Vec<Table>,
    /// A VM's `[[vm.net]]` tables, in order.
    nets: Vec<Table>,
    /// A disk's `[[disk.partition]]` tables, in order.
    partitions: Vec<Table>,
}

impl Table {
    fn add(&mut self, field: &'static str, key: &'static str, line: usize) {
        self.keys.push((field, key, line));
    }
}

impl Parsed {
    /// Runs [`validate`] with what is known of `images` (same order) and
    /// reports each problem at the line of its key in the file.
    pub fn check(&self, images: &[ImageInfo]) -> Result<(), Vec<Diagnostic>> {
        let diags: Vec<Diagnostic> = validate(&self.config, images)
            .into_iter()
            .map(|p| {
                let (line, field) = self.locate(p.field);
                Diagnostic {
                    file: self.file.clone(),
                    line,
                    field,
                    message: p.message,
                }
            })
            .collect();
        if diags.is_empty() {
            Ok(())
        } else {
            Err(diags)
        }
    }

    /// The line and TOML path of `field`: the key's line if it was written,
    /// else the table header's line, else line 1.
    fn locate(&self, field: Field) -> (usize, String) {
        let (table, prefix, name) = match field {
            Field::Board("vms") => return (1, "vm".into()),
            // Too many channels: the first table over the limit.
            Field::Board("channels") => {
                let line = self
                    .lines
                    .channels
                    .get(MAX_CHANNELS)
                    .map_or(1, |t| t.header);
                return (line.max(1), "channel".into());
            }
            // Too many pools: likewise.
            Field::Board("pools") => {
                let line = self.lines.pools.get(MAX_POOLS).map_or(1, |t| t.header);
                return (line.max(1), "pool".into());
            }
            Field::Board(name) => (Some(&self.lines.board), "board".to_string(), name),
            Field::Vm(i, name) => (self.lines.vms.get(i), format!("vm[{i}]"), name),
            Field::Passthrough(i, d, name) => (
                self.lines.vms.get(i).and_then(|t| t.devices.get(d)),
                format!("vm[{i}].passthrough[{d}]"),
                name,
            ),
            Field::Channel(c, name) => (self.lines.channels.get(c), format!("channel[{c}]"), name),
            Field::Disk(k, name) => (self.lines.disks.get(k), format!("disk[{k}]"), name),
            Field::DiskPartition(k, p, name) => (
                self.lines.disks.get(k).and_then(|t| t.partitions.get(p)),
                format!("disk[{k}].partition[{p}]"),
                name,
            ),
            Field::VmDisk(i, d, name) => (
                self.lines.vms.get(i).and_then(|t| t.disks.get(d)),
                format!("vm[{i}].disk[{d}]"),
                name,
            ),
            Field::Switch(k, name) => (self.lines.switches.get(k), format!("switch[{k}]"), name),
            Field::Pool(k, name) => (self.lines.pools.get(k), format!("pool[{k}]"), name),
            Field::VmNet(i, k, name) => (
                self.lines.vms.get(i).and_then(|t| t.nets.get(k)),
                format!("vm[{i}].net[{k}]"),
                name,
            ),
        };
        let Some(table) = table else {
            return (1, format!("{prefix}.{name}"));
        };
        match table.keys.iter().find(|(f, _, _)| *f == name) {
            Some((_, key, line)) => (*line, format!("{prefix}.{key}")),
            None => (table.header.max(1), format!("{prefix}.{name}")),
        }
    }
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<Parsed, Vec<Diagnostic>> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(vec![Diagnostic {
            file,
            line: 0,
            field: String::new(),
            message: format!("cannot read the config file: {e}"),
        }]),
    }
}

/// Parses config text. `file` names it in diagnostics, and `image` paths are
/// resolved relative to its directory.
///
/// This checks syntax, types, unknown keys, size strings and the choice of
/// `guest` or `image`; the system rules are [`Parsed::check`]'s job, because
/// they need the image sizes.
pub fn parse(text: &str, file: &str) -> Result<Parsed, Vec<Diagnostic>> {
    let diag = |offset: Option<usize>, field: String, message: String| Diagnostic {
        file: file.to_string(),
        line: offset.map_or(1, |o| line_of(text, o)),
        field,
        message,
    };

    let raw: RawFile = ::toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let field = offset.map(|o| field_at(text, o)).unwrap_or_default();
        vec![diag(
            offset,
            field,
            e.message().trim_end().replace('\n', "; "),
        )]
    })?;

    let mut diags = Vec::new();
    let mut lines = Lines::default();
    let at = |s: std::ops::Range<usize>| line_of(text, s.start);

    // Board.
    let board_span = raw.board.span();
    let rb = raw.board.into_inner();
    lines.board.header = at(board_span);
    lines.board.add("cpus", "cpus", at(rb.cpus.span()));
    lines.board.add("ram_size", "memory", at(rb.memory.span()));
    let ram_base = match &rb.ram_base {
        Some(b) => {
            lines.board.add("ram_base", "ram_base", at(b.span()));
            *b.get_ref()
        }
        None => RAM_IPA,
    };
    let ram_size = size(&rb.memory).unwrap_or_else(|m| {
        diags.push(diag(Some(rb.memory.span().start), "board.memory".into(), m));
        0
    });
    let management = match (&rb.address, &rb.store) {
        (None, None) => None,
        (Some(a), Some(s)) => {
            lines.board.add("address", "address", at(a.span()));
            lines.board.add("store", "store", at(s.span()));
            let ip = parse_cidr(a.get_ref()).unwrap_or_else(|m| {
                diags.push(diag(Some(a.span().start), "board.address".into(), m));
                ([0; 4], 0)
            });
            let store = parse_endpoint(s.get_ref()).unwrap_or_else(|m| {
                diags.push(diag(Some(s.span().start), "board.store".into(), m));
                ([0; 4], 0)
            });
            Some(Management {
                ip: ip.0,
                prefix: ip.1,
                store,
            })
        }
        (Some(a), None) => {
            diags.push(diag(
                Some(a.span().start),
                "board.address".into(),
                "`address` needs `store` too: where `snapshot` sends a VM (\"10.0.2.254:7700\")"
                    .into(),
            ));
            None
        }
        (None, Some(s)) => {
            diags.push(diag(
                Some(s.span().start),
                "board.store".into(),
                "`store` needs `address` too: the hypervisor's own address on the physical NIC (\"10.0.2.15/24\")"
                    .into(),
            ));
            None
        }
    };
    let board = Board {
        cpus: *rb.cpus.get_ref(),
        ram_base,
        ram_size,
        management,
    };

    // The board's disks, which the VMs' slices name.
    let mut disks = Vec::new();
    for (k, sdisk) in raw.disk.into_iter().enumerate() {
        let header = sdisk.span();
        let d = sdisk.into_inner();
        let mut t = Table {
            header: at(header),
            ..Table::default()
        };
        t.add("name", "name", at(d.name.span()));
        t.add("size", "size", at(d.size.span()));
        let size = size(&d.size).unwrap_or_else(|m| {
            diags.push(diag(
                Some(d.size.span().start),
                format!("disk[{k}].size"),
                m,
            ));
            0
        });
        let mut partitions = Vec::new();
        for (p, spart) in d.partition.into_iter().enumerate() {
            let part_header = spart.span();
            let part = spart.into_inner();
            let mut pt = Table {
                header: at(part_header),
                ..Table::default()
            };
            pt.add("name", "name", at(part.name.span()));
            pt.add("size", "size", at(part.size.span()));
            if p == 0 {
                // A problem with the list as a whole (too many partitions)
                // points at its first table.
                t.add("partitions", "partition", pt.header);
            }
            let size = self::size(&part.size).unwrap_or_else(|m| {
                diags.push(diag(
                    Some(part.size.span().start),
                    format!("disk[{k}].partition[{p}].size"),
                    m,
                ));
                0
            });
            t.partitions.push(pt);
            partitions.push(DiskPartition {
                name: part.name.into_inner(),
                size,
            });
        }
        lines.disks.push(t);
        disks.push(Disk {
            name: d.name.into_inner(),
            size,
            partitions,
        });
    }

    // The switches, which the VMs' nets name.
    let mut switches = Vec::new();
    for sswitch in raw.switch {
        let header = sswitch.span();
        let sw = sswitch.into_inner();
        let mut t = Table {
            header: at(header),
            ..Table::default()
        };
        t.add("name", "name", at(sw.name.span()));
        let uplink = match &sw.uplink {
            Some(value) => {
                t.add("uplink", "uplink", at(value.span()));
                *value.get_ref()
            }
            None => false,
        };
        lines.switches.push(t);
        switches.push(Switch {
            name: sw.name.into_inner(),
            uplink,
        });
    }

    // The CPU pools, which the VMs name.
    let mut pools = Vec::new();
    for spool in raw.pool {
        let header = spool.span();
        let pl = spool.into_inner();
        let mut t = Table {
            header: at(header),
            ..Table::default()
        };
        t.add("name", "name", at(pl.name.span()));
        t.add("pcpus", "pcpus", at(pl.pcpus.span()));
        lines.pools.push(t);
        pools.push(Pool {
            name: pl.name.into_inner(),
            pcpus: pl.pcpus.into_inner(),
        });
    }

    // VMs.
    let base_dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut images: Vec<ImageSource> = Vec::new();
    let mut vms = Vec::new();
    for (i, svm) in raw.vm.into_iter().enumerate() {
        let header = svm.span();
        let v = svm.into_inner();
        let mut t = Table {
            header: at(header.clone()),
            ..Table::default()
        };
        t.add("name", "name", at(v.name.span()));
        t.add("memory", "memory", at(v.memory.span()));
        for (field, value) in [
            ("pcpus", v.pcpus.as_ref().map(Spanned::span)),
            ("pool", v.pool.as_ref().map(Spanned::span)),
            ("vcpus", v.vcpus.as_ref().map(Spanned::span)),
            ("weight", v.weight.as_ref().map(Spanned::span)),
            ("cap", v.cap.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = value {
                t.add(field, field, at(span));
            }
        }
        if let Some(h) = &v.host_address {
            t.add("host_address", "host_address", at(h.span()));
        }
        if let Some(r) = &v.restart {
            t.add("restart", "restart", at(r.span()));
        }
        if let Some(c) = &v.criticality {
            t.add("criticality", "criticality", at(c.span()));
        }
        let memory = size(&v.memory).unwrap_or_else(|m| {
            diags.push(diag(
                Some(v.memory.span().start),
                format!("vm[{i}].memory"),
                m,
            ));
            0
        });

        let sources = [
            ("guest", &v.guest),
            ("image", &v.image),
            ("kernel", &v.kernel),
        ];
        let mut set: Vec<(&str, &Spanned<String>)> = sources
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)))
            .collect();
        // Report on the key written last, naming the one written first.
        set.sort_by_key(|(_, v)| v.span().start);
        let source = match set.as_slice() {
            [] => {
                diags.push(diag(
                    Some(header.start),
                    format!("vm[{i}]"),
                    "needs `guest = \"<guest name>\"`, `image = \"<path>\"` or `kernel = \"<debian:suite or path>\"`".into(),
                ));
                None
            }
            [(key, value)] => {
                t.add("image", key, at(value.span()));
                let text = value.get_ref();
                let empty = |what: &str| {
                    diag(
                        Some(value.span().start),
                        format!("vm[{i}].{key}"),
                        format!("{what} is empty"),
                    )
                };
                match *key {
                    "guest" => {
                        if text.is_empty() {
                            diags.push(empty("guest name"));
                        }
                        Some(ImageSource::Guest(text.clone()))
                    }
                    "kernel" => match text.strip_prefix(DEBIAN_PREFIX) {
                        Some(suite) => match DebianKernel::from_suite(suite) {
                            Some(k) => Some(ImageSource::Debian(k)),
                            None => {
                                let known: Vec<String> = DebianKernel::ALL
                                    .iter()
                                    .map(|k| format!("\"{DEBIAN_PREFIX}{}\"", k.suite()))
                                    .collect();
                                diags.push(diag(
                                    Some(value.span().start),
                                    format!("vm[{i}].kernel"),
                                    format!(
                                        "unknown Debian suite \"{suite}\"; known: {}",
                                        known.join(", ")
                                    ),
                                ));
                                None
                            }
                        },
                        None => {
                            if text.is_empty() {
                                diags.push(empty("kernel path"));
                            }
                            Some(ImageSource::File(base_dir.join(text)))
                        }
                    },
                    _ => {
                        if text.is_empty() {
                            diags.push(empty("image path"));
                        }
                        Some(ImageSource::File(base_dir.join(text)))
                    }
                }
            }
            [(first, _), .., (key, value)] => {
                let all: Vec<String> = set.iter().map(|(k, _)| format!("`{k}`")).collect();
                diags.push(diag(
                    Some(value.span().start),
                    format!("vm[{i}].{key}"),
                    format!(
                        "set exactly one of `guest`, `image` or `kernel`, not both `{first}` and `{key}`{}",
                        if all.len() > 2 {
                            format!(" (this VM sets {})", all.join(", "))
                        } else {
                            String::new()
                        }
                    ),
                ));
                None
            }
        };
        let is_kernel = v.kernel.is_some();
        // Only a kernel boots with an initramfs; with neither `kernel` nor
        // `image` the missing source is reported above. A bare-metal guest
        // may take a command line: it is in the device tree it boots with.
        let bare_guest = v.guest.is_some() && !is_kernel && v.image.is_none();
        for (key, value) in [("init", &v.init), ("initramfs", &v.initramfs)] {
            if let (Some(value), true) = (value, bare_guest) {
                diags.push(diag(
                    Some(value.span().start),
                    format!("vm[{i}].{key}"),
                    format!(
                        "`{key}` needs `kernel` (or `image`): a bare-metal `guest` has no initramfs"
                    ),
                ));
            }
        }
        let initramfs_source = match (&v.init, &v.initramfs) {
            (Some(init), Some(file)) => {
                let (first, second, key) = if init.span().start < file.span().start {
                    ("init", file, "initramfs")
                } else {
                    ("initramfs", init, "init")
                };
                diags.push(diag(
                    Some(second.span().start),
                    format!("vm[{i}].{key}"),
                    format!(
                        "set one of `init` (an initramfs built around this script) or `initramfs` (a file used as it is), not both `{first}` and `{key}`"
                    ),
                ));
                None
            }
            (Some(init), None) => {
                t.add("initramfs", "init", at(init.span()));
                if init.get_ref().is_empty() {
                    diags.push(diag(
                        Some(init.span().start),
                        format!("vm[{i}].init"),
                        "init script path is empty".into(),
                    ));
                }
                Some(ImageSource::Initramfs(base_dir.join(init.get_ref())))
            }
            (None, Some(file)) => {
                t.add("initramfs", "initramfs", at(file.span()));
                if file.get_ref().is_empty() {
                    diags.push(diag(
                        Some(file.span().start),
                        format!("vm[{i}].initramfs"),
                        "initramfs path is empty".into(),
                    ));
                }
                Some(ImageSource::File(base_dir.join(file.get_ref())))
            }
            (None, None) => None,
        };
        let dtb_source = v.dtb.as_ref().map(|dtb| {
            t.add("dtb", "dtb", at(dtb.span()));
            if dtb.get_ref().is_empty() {
                diags.push(diag(
                    Some(dtb.span().start),
                    format!("vm[{i}].dtb"),
                    "device tree path is empty".into(),
                ));
            }
            ImageSource::File(base_dir.join(dtb.get_ref()))
        });
        // `cmdline` is the whole command line, passed verbatim; `append`
        // adds words to the default one.
        let default_cmdline = if is_kernel || initramfs_source.is_some() {
            LINUX_CMDLINE
        } else {
            DEFAULT_CMDLINE
        };
        let cmdline = match (&v.cmdline, &v.append) {
            (Some(line), Some(extra)) => {
                let later = line.span().start.max(extra.span().start);
                let key = if later == line.span().start {
                    "cmdline"
                } else {
                    "append"
                };
                diags.push(diag(
                    Some(later),
                    format!("vm[{i}].{key}"),
                    format!(
                        "set one of `cmdline` (the whole command line, verbatim) or `append` (words after the default \"{default_cmdline}\"), not both"
                    ),
                ));
                String::new()
            }
            (Some(line), None) => {
                t.add("cmdline", "cmdline", at(line.span()));
                line.get_ref().clone()
            }
            (None, Some(extra)) => {
                t.add("cmdline", "append", at(extra.span()));
                let extra = extra.get_ref().trim();
                let mut line = String::from(default_cmdline);
                if !extra.is_empty() {
                    line.push(' ');
                    line.push_str(extra);
                }
                line
            }
            (None, None) => String::from(default_cmdline),
        };
        if v.dtb.is_some() {
            for (key, value) in [("cmdline", &v.cmdline), ("append", &v.append)] {
                if let Some(value) = value {
                    diags.push(diag(
                        Some(value.span().start),
                        format!("vm[{i}].{key}"),
                        format!(
                            "`{key}` has no effect with `dtb`: the guest boots with that device tree as it is, so put the command line in its /chosen/bootargs"
                        ),
                    ));
                }
            }
        }
        let mut passthrough = Vec::new();
        for (d, sdev) in v.passthrough.into_iter().enumerate() {
            let dev_header = sdev.span();
            let p = sdev.into_inner();
            let mut dt = Table {
                header: at(dev_header),
                ..Table::default()
            };
            dt.add("name", "name", at(p.name.span()));
            dt.add("base", "base", at(p.base.span()));
            dt.add("size", "size", at(p.size.span()));
            if let Some(irqs) = &p.irqs {
                dt.add("irqs", "irqs", at(irqs.span()));
            }
            dt.add("compatible", "compatible", at(p.compatible.span()));
            if d == 0 {
                // A problem with the list as a whole (too many devices)
                // points at its first table.
                t.add("passthrough", "passthrough", dt.header);
            }
            let size = size(&p.size).unwrap_or_else(|m| {
                diags.push(diag(
                    Some(p.size.span().start),
                    format!("vm[{i}].passthrough[{d}].size"),
                    m,
                ));
                0
            });
            t.devices.push(dt);
            passthrough.push(Passthrough {
                name: p.name.into_inner(),
                base: p.base.into_inner(),
                size,
                irqs: p.irqs.map(Spanned::into_inner).unwrap_or_default(),
                compatible: p.compatible.into_inner(),
            });
        }
        let mut vm_disks = Vec::new();
        for (d, sslice) in v.disk.into_iter().enumerate() {
            let slice_header = sslice.span();
            let sl = sslice.into_inner();
            let mut st = Table {
                header: at(slice_header.clone()),
                ..Table::default()
            };
            let prefix = format!("vm[{i}].disk[{d}]");
            st.add("disk", "disk", at(sl.disk.span()));
            if d == 0 {
                // A problem with the list as a whole (too many slices, a
                // critical VM) points at its first table.
                t.add("disks", "disk", st.header);
            }
            let mut size_of = |value: &Spanned<SizeValue>, key: &str| {
                size(value).unwrap_or_else(|m| {
                    diags.push(diag(Some(value.span().start), format!("{prefix}.{key}"), m));
                    0
                })
            };
            let offset = match &sl.offset {
                Some(value) => {
                    st.add("offset", "offset", at(value.span()));
                    size_of(value, "offset")
                }
                None => 0,
            };
            let slice_size = match &sl.size {
                Some(value) => {
                    st.add("size", "size", at(value.span()));
                    size_of(value, "size")
                }
                None => 0,
            };
            match (&sl.partition, &sl.offset, &sl.size) {
                (Some(part), None, None) => {
                    // The partition is the slice's range: problems with it
                    // point at this key.
                    let line = at(part.span());
                    st.add("partition", "partition", line);
                    st.add("offset", "partition", line);
                    st.add("size", "partition", line);
                }
                (Some(part), offset, size) => {
                    // Report on the key written last, naming the others.
                    let mut set = vec![("partition", part.span())];
                    set.extend(offset.as_ref().map(|v| ("offset", v.span())));
                    set.extend(size.as_ref().map(|v| ("size", v.span())));
                    set.sort_by_key(|(_, span)| span.start);
                    let (key, span) = set[set.len() - 1].clone();
                    let range: Vec<&str> = set
                        .iter()
                        .map(|(k, _)| *k)
                        .filter(|k| *k != "partition")
                        .collect();
                    diags.push(diag(
                        Some(span.start),
                        format!("{prefix}.{key}"),
                        format!(
                            "set `partition` (the slice is that partition of the disk, with its \
                             offset and size) or `offset` and `size`, not `partition` with `{}`",
                            range.join("` and `")
                        ),
                    ));
                }
                (None, _, Some(_)) => {}
                (None, _, None) => diags.push(diag(
                    Some(slice_header.start),
                    prefix.clone(),
                    "missing field `size`".into(),
                )),
            }
            let read_only = match &sl.read_only {
                Some(value) => {
                    st.add("read_only", "read-only", at(value.span()));
                    *value.get_ref()
                }
                None => false,
            };
            let serial = match sl.serial {
                Some(value) => {
                    st.add("serial", "serial", at(value.span()));
                    value.into_inner()
                }
                None => default_serial(v.name.get_ref(), d),
            };
            let name = sl.disk.get_ref();
            let disk = match disks.iter().position(|k: &Disk| k.name == *name) {
                Some(k) => u16::try_from(k).unwrap_or(u16::MAX),
                None => {
                    diags.push(diag(
                        Some(sl.disk.span().start),
                        format!("{prefix}.disk"),
                        unknown_disk(name, &disks),
                    ));
                    0
                }
            };
            // A partition of a disk that declares its layout is resolved
            // here; one the layout lacks (or a layout that does not fit) is
            // `check`'s to report, and on a disk without a layout the
            // hypervisor resolves it at boot.
            let partition = sl.partition.map(Spanned::into_inner);
            let (offset, slice_size) = match (&partition, disks.get(usize::from(disk))) {
                (Some(part), Some(k)) if !k.partitions.is_empty() => k
                    .partitions
                    .iter()
                    .position(|p| p.name == *part)
                    .and_then(|p| Some(partition_layout(&k.partitions, k.size).ok()?[p]))
                    .unwrap_or((0, 0)),
                _ => (offset, slice_size),
            };
            t.disks.push(st);
            vm_disks.push(VmDisk {
                disk,
                offset,
                size: slice_size,
                partition,
                read_only,
                serial,
            });
        }
        let mut nets = Vec::new();
        for (k, snet) in v.net.into_iter().enumerate() {
            let net_header = snet.span();
            let n = snet.into_inner();
            let mut nt = Table {
                header: at(net_header),
                ..Table::default()
            };
            let prefix = format!("vm[{i}].net[{k}]");
            nt.add("switch", "switch", at(n.switch.span()));
            nt.add("mac", "mac", at(n.mac.span()));
            if k == 0 {
                // A problem with the list as a whole (too many nets, too
                // many virtio devices, a critical VM) points at its first
                // table.
                t.add("nets", "net", nt.header);
            }
            let name = n.switch.get_ref();
            let switch = match switches.iter().position(|s: &Switch| s.name == *name) {
                Some(index) => u16::try_from(index).unwrap_or(u16::MAX),
                None => {
                    diags.push(diag(
                        Some(n.switch.span().start),
                        format!("{prefix}.switch"),
                        unknown_switch(name, &switches),
                    ));
                    0
                }
            };
            let mac = parse_mac(n.mac.get_ref()).unwrap_or_else(|m| {
                diags.push(diag(Some(n.mac.span().start), format!("{prefix}.mac"), m));
                [0; 6]
            });
            t.nets.push(nt);
            nets.push(VmNet { switch, mac });
        }
        // A pool by name; `weight` and `cap` only mean something in one.
        let pool = v.pool.as_ref().map(|name| {
            match pools.iter().position(|p: &Pool| p.name == *name.get_ref()) {
                Some(k) => u16::try_from(k).unwrap_or(u16::MAX),
                None => {
                    diags.push(diag(
                        Some(name.span().start),
                        format!("vm[{i}].pool"),
                        unknown_pool(name.get_ref(), &pools),
                    ));
                    0
                }
            }
        });
        if v.pool.is_none() && v.pcpus.is_some() {
            let keys = [
                ("weight", v.weight.as_ref().map(Spanned::span)),
                ("cap", v.cap.as_ref().map(Spanned::span)),
            ];
            for (key, span) in keys {
                if let Some(span) = span {
                    diags.push(diag(
                        Some(span.start),
                        format!("vm[{i}].{key}"),
                        pool_only(key),
                    ));
                }
            }
        }
        let pcpus = v.pcpus.map(Spanned::into_inner).unwrap_or_default();
        // Without `vcpus`, a pool VM has none (which `check` reports) and a
        // pinned one one per pCPU.
        let vcpus = match &v.vcpus {
            Some(n) => *n.get_ref(),
            None if pool.is_some() => 0,
            None => u16::try_from(pcpus.len()).unwrap_or(u16::MAX),
        };
        let image = source.map_or(0, |s| intern(&mut images, s));
        let initramfs = initramfs_source.map(|s| intern(&mut images, s));
        let dtb = dtb_source.map(|s| intern(&mut images, s));
        lines.vms.push(t);
        vms.push(VmConfig {
            name: v.name.into_inner(),
            image,
            memory,
            host_address: v.host_address.map(Spanned::into_inner),
            pcpus,
            pool,
            vcpus,
            weight: v.weight.map_or(DEFAULT_WEIGHT, Spanned::into_inner),
            cap: v.cap.map(Spanned::into_inner),
            restart: v
                .restart
                .map_or(RestartPolicy::default(), |r| r.into_inner().into()),
            initramfs,
            dtb,
            cmdline,
            passthrough,
            criticality: v
                .criticality
                .map_or(Criticality::default(), |c| c.into_inner().into()),
            disks: vm_disks,
            nets,
        });
    }

    // Channels, which name the VMs above.
    let mut channels = Vec::new();
    for (c, sch) in raw.channel.into_iter().enumerate() {
        let header = sch.span();
        let ch = sch.into_inner();
        let mut t = Table {
            header: at(header),
            ..Table::default()
        };
        t.add("name", "name", at(ch.name.span()));
        t.add("vms", "between", at(ch.between.span()));
        let size = match &ch.size {
            Some(value) => {
                t.add("size", "size", at(value.span()));
                size(value).unwrap_or_else(|m| {
                    diags.push(diag(
                        Some(value.span().start),
                        format!("channel[{c}].size"),
                        m,
                    ));
                    0
                })
            }
            None => MIN_CHANNEL_SIZE,
        };
        let between = ch.between.get_ref();
        let mut ends = [0u16; 2];
        if between.len() == 2 {
            for (end, name) in between.iter().enumerate() {
                match vms
                    .iter()
                    .position(|vm: &VmConfig| vm.name == *name.get_ref())
                {
                    Some(i) => ends[end] = u16::try_from(i).unwrap_or(u16::MAX),
                    None => diags.push(diag(
                        Some(name.span().start),
                        format!("channel[{c}].between"),
                        unknown_vm(name.get_ref(), &vms),
                    )),
                }
            }
        } else {
            diags.push(diag(
                Some(ch.between.span().start),
                format!("channel[{c}].between"),
                format!(
                    "`between` names {} VMs; a channel joins exactly two",
                    between.len()
                ),
            ));
        }
        lines.channels.push(t);
        channels.push(Channel {
            name: ch.name.into_inner(),
            vms: ends,
            size,
        });
    }

    if diags.is_empty() {
        Ok(Parsed {
            config: SystemConfig {
                board,
                vms,
                channels,
                disks,
                switches,
                pools,
            },
            images,
            file: file.to_string(),
            lines,
        })
    } else {
        Err(diags)
    }
}

/// Why `name` in a channel's `between` is not a VM, listing the VMs there are.
fn unknown_vm(name: &str, vms: &[VmConfig]) -> String {
    if vms.is_empty() {
        return format!("there is no VM named \"{name}\"; the config has no VMs");
    }
    let names: Vec<String> = vms.iter().map(|vm| format!("\"{}\"", vm.name)).collect();
    format!(
        "there is no VM named \"{name}\"; the VMs are {}",
        names.join(", ")
    )
}

/// Why `name` in a `[[vm.disk]]` is not a disk, listing the disks there are.
fn unknown_disk(name: &str, disks: &[Disk]) -> String {
    if disks.is_empty() {
        return format!("there is no disk named \"{name}\"; the config has no [[disk]]");
    }
    let names: Vec<String> = disks.iter().map(|d| format!("\"{}\"", d.name)).collect();
    format!(
        "there is no disk named \"{name}\"; the disks are {}",
        names.join(", ")
    )
}

/// Why `name` in a `[[vm.net]]` is not a switch, listing the switches there
/// are.
fn unknown_switch(name: &str, switches: &[Switch]) -> String {
    if switches.is_empty() {
        return format!("there is no switch named \"{name}\"; the config has no [[switch]]");
    }
    let names: Vec<String> = switches.iter().map(|s| format!("\"{}\"", s.name)).collect();
    format!(
        "there is no switch named \"{name}\"; the switches are {}",
        names.join(", ")
    )
}

/// Why `name` in a `[[vm]]`'s `pool` is not a pool, listing the pools there
/// are.
fn unknown_pool(name: &str, pools: &[Pool]) -> String {
    if pools.is_empty() {
        return format!("there is no pool named \"{name}\"; the config has no [[pool]]");
    }
    let names: Vec<String> = pools.iter().map(|p| format!("\"{}\"", p.name)).collect();
    format!(
        "there is no pool named \"{name}\"; the pools are {}",
        names.join(", ")
    )
}

/// Parses a MAC address written `"xx:xx:xx:xx:xx:xx"`: six bytes of two
/// hex digits each (upper or lower case), separated by colons.
/// An IPv4 address with its prefix length, `"10.0.2.15/24"`: a unicast
/// host address inside a prefix of 8 to 30 bits.
pub fn parse_cidr(s: &str) -> Result<([u8; 4], u8), String> {
    let bad = || format!("\"{s}\" is not an IPv4 address with a prefix length (\"10.0.2.15/24\")");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip = parse_ipv4(ip).ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(format!("prefix length {prefix} in \"{s}\": use 8 to 30"));
    }
    let host = u32::from_be_bytes(ip) & (u32::MAX >> prefix);
    if host == 0 || host == u32::MAX >> prefix || ip[0] == 127 || ip[0] >= 224 {
        return Err(format!(
            "\"{s}\" is not a host address (network, broadcast, loopback or multicast)"
        ));
    }
    Ok((ip, prefix))
}

/// An IPv4 address and TCP port, `"10.0.2.254:7700"`.
pub fn parse_endpoint(s: &str) -> Result<([u8; 4], u16), String> {
    let bad = || format!("\"{s}\" is not an IPv4 address and port (\"10.0.2.254:7700\")");
    let (ip, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip = parse_ipv4(ip).ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((ip, port))
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || {
        format!(
            "bad MAC address \"{s}\": expected six two-digit hex bytes separated by ':', e.g. \"52:54:00:12:34:56\""
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// The serial of slice `d` of VM `vm` when its `[[vm.disk]]` names none:
/// `<vm>-disk<d>`, cut to [`MAX_SERIAL_LEN`] bytes (on a character
/// boundary; a VM name that is not ASCII is refused on its own).
fn default_serial(vm: &str, d: usize) -> String {
    let mut serial = format!("{vm}-disk{d}");
    let mut end = serial.len().min(MAX_SERIAL_LEN);
    while !serial.is_char_boundary(end) {
        end -= 1;
    }
    serial.truncate(end);
    serial
}

/// The index of `source` in `images`, added if it is new. More than 65536
/// distinct images cannot be indexed; the payload could never hold them.
fn intern(images: &mut Vec<ImageSource>, source: ImageSource) -> u16 {
    let idx = images.iter().position(|o| *o == source).unwrap_or_else(|| {
        images.push(source);
        images.len() - 1
    });
    u16::try_from(idx).unwrap_or(u16::MAX)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Best-effort TOML path of whatever sits at byte `offset`, for errors that
/// come from the toml parser (which gives a span but not the key): the
/// enclosing table (`board`, `vm[n]`) and the key on that line, if any.
fn field_at(text: &str, offset: usize) -> String {
    let target = line_of(text, offset);
    let mut table = String::new();
    let mut vm_count = 0usize;
    let mut dev_count = 0usize;
    let mut channel_count = 0usize;
    let mut disk_count = 0usize;
    let mut part_count = 0usize;
    let mut slice_count = 0usize;
    let mut switch_count = 0usize;
    let mut net_count = 0usize;
    let mut pool_count = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim();
            table = if name == "vm" {
                vm_count += 1;
                dev_count = 0;
                slice_count = 0;
                net_count = 0;
                format!("vm[{}]", vm_count - 1)
            } else if name == "channel" {
                channel_count += 1;
                format!("channel[{}]", channel_count - 1)
            } else if name == "disk" {
                disk_count += 1;
                part_count = 0;
                format!("disk[{}]", disk_count - 1)
            } else if name == "disk.partition" {
                part_count += 1;
                format!(
                    "disk[{}].partition[{}]",
                    disk_count.saturating_sub(1),
                    part_count - 1
                )
            } else if name == "switch" {
                switch_count += 1;
                format!("switch[{}]", switch_count - 1)
            } else if name == "pool" {
                pool_count += 1;
                format!("pool[{}]", pool_count - 1)
            } else if name == "vm.net" {
                net_count += 1;
                format!("vm[{}].net[{}]", vm_count.saturating_sub(1), net_count - 1)
            } else if name == "vm.disk" {
                slice_count += 1;
                format!(
                    "vm[{}].disk[{}]",
                    vm_count.saturating_sub(1),
                    slice_count - 1
                )
            } else if name == "vm.passthrough" {
                dev_count += 1;
                format!(
                    "vm[{}].passthrough[{}]",
                    vm_count.saturating_sub(1),
                    dev_count - 1
                )
            } else {
                name.to_string()
            };
        } else if let Some(rest) = line.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or("").trim().to_string();
        }
        if n + 1 == target {
            if line.starts_with('[') {
                return table;
            }
            let key = line.split('=').next().unwrap_or("").trim();
            if !line.contains('=') || key.is_empty() {
                return table;
            }
            return if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
        }
    }
    table
}

/// The byte count of a size field; `Err` says why a string is not a size.
fn size(v: &Spanned<SizeValue>) -> Result<u64, String> {
    match v.get_ref() {
        SizeValue::Bytes(n) => Ok(*n),
        SizeValue::Text(s) => parse_size(s),
    }
}

/// Parses `"<n>"`, `"<n>K"`, `"<n>M"`, `"<n>G"` or `"<n>KiB"` / `"MiB"` /
/// `"GiB"`; `<n>` is decimal or `0x` hex, and may contain `_`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "bad size \"{s}\": expected bytes, or a number with K, M, G (or KiB, MiB, GiB), e.g. \"16M\""
        )
    };
    let t = s.trim();
    let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (t, 10),
    };
    let num_end = digits
        .find(|c: char| !(c.is_digit(radix) || c == '_'))
        .unwrap_or(digits.len());
    let (num, unit) = digits.split_at(num_end);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    if num.is_empty() {
        return Err(bad());
    }
    let n = u64::from_str_radix(&num, radix).map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size \"{s}\" does not fit in 64 bits"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    board: Spanned<RawBoard>,
    #[serde(default)]
    vm: Vec<Spanned<RawVm>>,
    #[serde(default)]
    channel: Vec<Spanned<RawChannel>>,
    #[serde(default)]
    disk: Vec<Spanned<RawDisk>>,
    #[serde(default)]
    switch: Vec<Spanned<RawSwitch>>,
    #[serde(default)]
    pool: Vec<Spanned<RawPool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    cpus: Spanned<u16>,
    memory: Spanned<SizeValue>,
    ram_base: Option<Spanned<u64>>,
    address: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: Spanned<String>,
    guest: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    init: Option<Spanned<String>>,
    initramfs: Option<Spanned<String>>,
    dtb: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    append: Option<Spanned<String>>,
    memory: Spanned<SizeValue>,
    host_address: Option<Spanned<u64>>,
    /// Without it (and without `pool`), the VM has no vCPUs, which
    /// [`validate`] reports.
    pcpus: Option<Spanned<Vec<u16>>>,
    pool: Option<Spanned<String>>,
    vcpus: Option<Spanned<u16>>,
    weight: Option<Spanned<u32>>,
    cap: Option<Spanned<u8>>,
    restart: Option<Spanned<RawRestart>>,
    criticality: Option<Spanned<RawCriticality>>,
    #[serde(default)]
    passthrough: Vec<Spanned<RawPassthrough>>,
    #[serde(default)]
    disk: Vec<Spanned<RawVmDisk>>,
    #[serde(default)]
    net: Vec<Spanned<RawVmNet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: Spanned<String>,
    size: Spanned<SizeValue>,
    #[serde(default)]
    partition: Vec<Spanned<RawPartition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    name: Spanned<String>,
    size: Spanned<SizeValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVmDisk {
    disk: Spanned<String>,
    offset: Option<Spanned<SizeValue>>,
    /// Required unless `partition` is given (checked by [`parse`]).
    size: Option<Spanned<SizeValue>>,
    partition: Option<Spanned<String>>,
    #[serde(rename = "read-only")]
    read_only: Option<Spanned<bool>>,
    serial: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    name: Spanned<String>,
    uplink: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    pcpus: Spanned<Vec<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVmNet {
    switch: Spanned<String>,
    mac: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthrough {
    name: Spanned<String>,
    base: Spanned<u64>,
    size: Spanned<SizeValue>,
    irqs: Option<Spanned<Vec<u32>>>,
    compatible: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Spanned<String>,
    between: Spanned<Vec<Spanned<String>>>,
    size: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawCriticality {
    Normal,
    Critical,
}

impl From<RawCriticality> for Criticality {
    fn from(c: RawCriticality) -> Self {
        match c {
            RawCriticality::Normal => Self::Normal,
            RawCriticality::Critical => Self::Critical,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawRestart {
    Never,
    OnCrash,
    Always,
}

impl From<RawRestart> for RestartPolicy {
    fn from(r: RawRestart) -> Self {
        match r {
            RawRestart::Never => Self::Never,
            RawRestart::OnCrash => Self::OnCrash,
            RawRestart::Always => Self::Always,
        }
    }
}

/// A size as written: an integer, or a string parsed later (so that a bad
/// string becomes one diagnostic among several, not the end of parsing).
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string like \"16M\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SizeValue, E> {
                u64::try_from(n)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom(format!("size {n} is negative")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_strings_accept_plain_suffixed_and_hex() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("0x100_0000"), Ok(16 << 20));
        assert_eq!(parse_size("1_024 K"), Ok(1 << 20));
    }

    #[test]
    fn management_addresses_parse_and_refuse() {
        assert_eq!(parse_cidr("10.0.2.15/24"), Ok(([10, 0, 2, 15], 24)));
        assert_eq!(
            parse_endpoint("10.0.2.254:7700"),
            Ok(([10, 0, 2, 254], 7700))
        );
        for bad in [
            "10.0.2.15",
            "10.0.2/24",
            "10.0.2.256/24",
            "10.0.2.15/31",
            "10.0.2.0/24",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        for bad in ["127.0.0.1/8", "224.0.0.1/8", "10.0.2.255/24", "1.2.3.04x/8"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        for bad in [
            "10.0.2.254",
            "10.0.2.254:0",
            "10.0.2.254:99999",
            "host:7700",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        let m = Management {
            ip: [10, 0, 2, 15],
            prefix: 24,
            store: ([10, 0, 2, 254], 7700),
        };
        assert_eq!(m.mac(), [0x02, 0x62, 0x68, 0, 2, 15]);
    }

    #[test]
    fn size_strings_refuse_junk_and_overflow() {
        for bad in ["", "M", "16Q", "16 MB", "-1", "1.5G", "16m", "0x"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.starts_with("bad size"), "{bad:?}: {e}");
        }
        assert!(parse_size("99999999999G").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn field_at_names_table_and_key() {
        let text = "[board]\ncpus = 4\n\n[[vm]]\nname = \"a\"\n[[vm]]\nmemory = 1\n";
        assert_eq!(field_at(text, text.find("cpus").unwrap()), "board.cpus");
        assert_eq!(field_at(text, text.find("name").unwrap()), "vm[0].name");
        assert_eq!(field_at(text, text.find("memory").unwrap()), "vm[1].memory");
        assert_eq!(field_at(text, text.rfind("[[vm]]").unwrap()), "vm[1]");
        let text = "[[vm]]\n[[vm.passthrough]]\n[[vm.passthrough]]\nbase = 1\n[[vm]]\n[[vm.passthrough]]\nsize = 2\n";
        assert_eq!(
            field_at(text, text.find("base").unwrap()),
            "vm[0].passthrough[1].base"
        );
        assert_eq!(
            field_at(text, text.find("size").unwrap()),
            "vm[1].passthrough[0].size"
        );
        let text = "[[vm]]\n[[channel]]\nname = 1\n[[channel]]\nsize = 2\n";
        assert_eq!(
            field_at(text, text.find("name").unwrap()),
            "channel[0].name"
        );
        assert_eq!(
            field_at(text, text.find("size").unwrap()),
            "channel[1].size"
        );
        let text = "[[disk]]\nname = 1\n[[vm]]\n[[vm.disk]]\n[[vm]]\n[[vm.disk]]\n[[vm.disk]]\nsize = 2\n[[disk]]\nx = 3\n";
        assert_eq!(field_at(text, text.find("name").unwrap()), "disk[0].name");
        assert_eq!(
            field_at(text, text.find("size").unwrap()),
            "vm[1].disk[1].size"
        );
        assert_eq!(field_at(text, text.find("x =").unwrap()), "disk[1].x");
        let text = "[[disk]]\n[[disk.partition]]\n[[disk.partition]]\nname = 1\n[[vm]]\n[[vm.disk]]\n[[disk]]\n[[disk.partition]]\nsize = 2\n";
        assert_eq!(
            field_at(text, text.find("name").unwrap()),
            "disk[0].partition[1].name"
        );
        assert_eq!(
            field_at(text, text.find("size").unwrap()),
            "disk[1].partition[0].size"
        );
    }

    #[test]
    fn field_at_names_switches_and_nets() {
        let text = "[[switch]]\nname = 1\n[[vm]]\n[[vm.net]]\n[[vm.disk]]\n[[vm]]\n[[vm.net]]\n[[vm.net]]\nmac = 2\n[[switch]]\nx = 3\n";
        assert_eq!(field_at(text, text.find("name").unwrap()), "switch[0].name");
        assert_eq!(
            field_at(text, text.find("mac").unwrap()),
            "vm[1].net[1].mac"
        );
        assert_eq!(field_at(text, text.find("x =").unwrap()), "switch[1].x");
    }

    #[test]
    fn field_at_names_pools() {
        let text = "[[pool]]\nname = 1\n[[vm]]\npool = 2\n[[pool]]\npcpus = 3\n";
        assert_eq!(field_at(text, text.find("name").unwrap()), "pool[0].name");
        assert_eq!(field_at(text, text.find("pool =").unwrap()), "vm[0].pool");
        assert_eq!(field_at(text, text.find("pcpus").unwrap()), "pool[1].pcpus");
    }

    #[test]
    fn mac_addresses_are_six_hex_bytes_in_any_case() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("02:AB:cd:Ef:00:ff"),
            Ok([2, 0xab, 0xcd, 0xef, 0, 0xff])
        );
        // Multicast and zero parse: validate refuses them, saying why.
        assert_eq!(parse_mac("01:00:5e:00:00:01"), Ok([1, 0, 0x5e, 0, 0, 1]));
        assert_eq!(parse_mac("00:00:00:00:00:00"), Ok([0; 6]));
    }

    #[test]
    fn malformed_mac_addresses_are_refused() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            " 52:54:00:12:34:56",
            "52:54:00:12:34:56:",
            "52:54::00:12:34",
            "\u{e9}2:54:00:12:34:56",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert_eq!(
                e,
                format!("bad MAC address \"{bad}\": expected six two-digit hex bytes separated by ':', e.g. \"52:54:00:12:34:56\""),
            );
        }
    }

    #[test]
    fn default_serial_is_vm_name_and_index_cut_to_20_bytes() {
        assert_eq!(default_serial("safety", 0), "safety-disk0");
        assert_eq!(default_serial("infotainment-x", 3), "infotainment-x-disk3");
        assert_eq!(default_serial("infotainment-xy", 3), "infotainment-xy-disk");
        assert_eq!(default_serial(&"a".repeat(31), 1), "a".repeat(20));
        // Never cut inside a character.
        assert_eq!(default_serial(&"\u{e9}".repeat(10), 0), "\u{e9}".repeat(10));
        assert_eq!(
            default_serial(&format!("a{}", "\u{e9}".repeat(10)), 0).len(),
            19
        );
    }
}
