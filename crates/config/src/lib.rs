//! Bulkhead's system configuration.
//!
//! - The schema ([`SystemConfig`], [`Board`], [`VmConfig`]) and its rules
//!   ([`validate`]), shared by the host tool and the EL2 hypervisor.
//! - A compact binary encoding ([`encode`], [`decode`]) that travels inside
//!   the bootable image; `decode` is fed by the image, so it never panics.
//! - The image payload format ([`payload`]): config plus guest images,
//!   packed behind the hypervisor binary.
//! - With the `toml` feature (std, host only): the TOML front-end
//!   (module `toml`) that parses a config file and reports problems by
//!   file, line and field.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "toml")]
extern crate std;

mod encoding;
mod image;
pub mod payload;
#[cfg(feature = "toml")]
pub mod toml;
mod validate;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use encoding::{decode, encode, DecodeError, MAGIC, VERSION};
pub use image::{Format, ImageInfo, ARM64_MAGIC, FDT_MAGIC};
pub use validate::validate;

/// Every VM's RAM starts at this guest-physical address. QEMU's `virt`
/// machine puts RAM at 1 GiB, and guests built for it expect the same.
pub const RAM_IPA: u64 = 0x4000_0000;
/// QEMU virt's layout, which every VM sees (so kernels built for `virt`
/// run unchanged, and a device tree written for `virt` fits): the GICv3
/// distributor and redistributors, and the PL011.
pub const VGICD_IPA: u64 = 0x0800_0000;
pub const VGICR_IPA: u64 = 0x080A_0000;
pub const VUART_IPA: u64 = 0x0900_0000;
/// The PL011's interrupt: SPI 1 (INTID [`UART_INTID`]).
pub const VUART_SPI: u32 = 1;
/// Where a VM's virtio-mmio devices sit, as on QEMU virt (hw/arm/virt.c
/// `VIRT_MMIO`): device `n` of a VM at `VIRTIO_IPA + n * VIRTIO_STRIDE`
/// ([`virtio_ipa`]), with interrupt SPI `VIRTIO_SPI_BASE + n`
/// ([`virtio_spi`]). The whole window of [`MAX_VIRTIO`] devices and their
/// SPIs belong to the hypervisor in every VM, with or without devices.
///
/// A VM's devices are numbered its disks first, then its nets: with `d`
/// `[[vm.disk]]` slices, slice `n` is device `n` and net `k` is device
/// `d + k` ([`VmConfig::net_virtio_index`]), at `virtio_ipa(d + k)` with
/// interrupt `virtio_spi(d + k)`. Disks and nets together are at most
/// [`MAX_VIRTIO`] ([`validate`] checks it).
pub const VIRTIO_IPA: u64 = 0x0a00_0000;
/// Distance between two virtio-mmio devices (and the size of each), as on
/// QEMU virt.
pub const VIRTIO_STRIDE: u64 = 0x200;
/// The SPI number (INTID - 32, not the INTID) of a VM's virtio-mmio device
/// 0, as on QEMU virt (`VIRT_MMIO` is SPI 16).
pub const VIRTIO_SPI_BASE: u32 = 16;
/// Most virtio-mmio devices a VM can have: the size of the window at
/// [`VIRTIO_IPA`].
pub const MAX_VIRTIO: usize = 8;
/// Most `[[vm.disk]]` slices one VM may have; each is one virtio-blk device.
pub const MAX_VM_DISKS: usize = 4;
/// Most `[[vm.net]]` ports one VM may have; each is one virtio-net device.
pub const MAX_VM_NETS: usize = 4;
/// Most switches that may have the board's physical NIC as their uplink
/// port: the board has one physical NIC.
pub const MAX_UPLINKS: usize = 1;
/// Granule of disk sizes and slice offsets and sizes: a virtio-blk sector
/// (virtio 1.2, 5.2.4: `capacity` is in 512-byte sectors).
pub const SECTOR_SIZE: u64 = 512;
/// Longest virtio-blk serial, in bytes (virtio 1.2, 5.2.6:
/// VIRTIO_BLK_T_GET_ID returns 20 bytes).
pub const MAX_SERIAL_LEN: usize = 20;
/// Most vCPUs a VM can have.
pub const MAX_VCPUS: usize = 8;
/// Most CPU pools (`[[pool]]`) a system may have.
pub const MAX_POOLS: usize = 4;
/// Most physical CPUs one pool may share out.
pub const MAX_POOL_PCPUS: usize = 8;
/// The weight of a pool VM's vCPUs when the config names none.
pub const DEFAULT_WEIGHT: u32 = 256;
/// Largest weight a pool VM may have.
pub const MAX_WEIGHT: u32 = 65535;
/// Largest cap: all of one pCPU, in percent.
pub const MAX_CAP: u8 = 100;
/// Most physical CPUs a board description may name.
pub const MAX_PCPUS: u16 = 64;
/// RAM the hypervisor keeps for itself (image, payload, heap, stacks), at the
/// start of board RAM. VM memory must leave it free.
pub const HYP_RESERVE: u64 = 64 << 20;
/// Where an arm64 `Image` is loaded, relative to the start of RAM: the
/// kernel's `text_offset` (Linux Documentation/arch/arm64/booting.rst, "Call
/// the kernel image"). Bare-metal guests use the same offset.
pub const IMAGE_LOAD_OFFSET: u64 = 0x80000;
/// Granule of VM memory sizes and addresses: a stage-2 level-2 block
/// (Arm ARM D8.2, 4 KiB granule), so every VM can be mapped with 2 MiB blocks.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// Longest VM name, in bytes.
pub const MAX_NAME_LEN: usize = 31;
/// The command line of a bare-metal guest (and the start of every other).
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0";
/// The command line a Linux kernel VM starts with: the console on the
/// virtual PL011, the initramfs's `/init` as the first process, and a
/// reboot on kernel panic, which the restart policy then handles.
pub const LINUX_CMDLINE: &str = "console=ttyAMA0 rdinit=/init panic=-1";
/// Longest command line, in bytes. Linux arm64 takes up to 2047 bytes
/// (`COMMAND_LINE_SIZE` 2048, arch/arm64/include/uapi/asm/setup.h); half of
/// that leaves room for what the hypervisor appends.
pub const MAX_CMDLINE_LEN: usize = 1024;
/// RAM reserved for the guest device tree the hypervisor writes.
pub const DTB_RESERVE: u64 = 64 << 10;
/// Extra RAM a Linux VM needs beyond its kernel, initramfs and device tree:
/// the kernel places itself and the device tree on 2 MiB boundaries
/// (booting.rst, "Setup the device tree": the DTB must not cross a 2 MiB
/// boundary), so up to one block is lost to alignment.
pub const LINUX_SLACK: u64 = 2 << 20;

/// How much a VM matters when the hypervisor shares out its own work.
///
/// A critical VM boots before the others, and the hypervisor's
/// housekeeping (console input, the shell, scrubbing the memory of another
/// VM that restarts) never runs on a pCPU a critical VM is pinned to. So
/// at least one pCPU of the board must be free of critical VMs
/// ([`validate`] checks it). A critical VM keeps dedicated pCPUs: it may
/// not be in a [`Pool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Criticality {
    /// An ordinary VM. The default.
    #[default]
    Normal,
    /// A VM whose pCPUs the hypervisor keeps its own work off.
    Critical,
}

impl Criticality {
    /// The spelling used in config files: `normal`, `critical`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a VM ends. A guest's SYSTEM_RESET (a reboot, and how
/// a Linux guest reports a kernel panic with `panic=-1`) and a crash the
/// hypervisor detects (SError, an exception it cannot handle) both count
/// as "crashed or asked to restart"; SYSTEM_OFF is a clean end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Stay stopped, however it ended.
    Never,
    /// Restart from a clean image after a reset or crash, not after
    /// SYSTEM_OFF. The default.
    #[default]
    OnCrash,
    /// Restart from a clean image whenever it ends.
    Always,
}

impl RestartPolicy {
    /// The spelling used in config files: `never`, `on-crash`, `always`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnCrash => "on-crash",
            Self::Always => "always",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The machine a config is written for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    /// Number of physical CPUs.
    pub cpus: u16,
    /// Host-physical address of the start of RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// The hypervisor's own address on the physical NIC (snapshots,
    /// docs/snapshot.md), if it has one.
    pub management: Option<Management>,
}

/// The hypervisor's management endpoint on the board's physical NIC:
/// `[board] address` and `store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Management {
    /// IPv4 address and prefix length on the link.
    pub ip: [u8; 4],
    pub prefix: u8,
    /// Where snapshots go: the snapshot store's IPv4 address and TCP port.
    pub store: ([u8; 4], u16),
}

impl Management {
    /// The endpoint's MAC address: locally administered, 02:62:68 ("bh")
    /// and the low three bytes of its IP address.
    pub fn mac(&self) -> [u8; 6] {
        [0x02, 0x62, 0x68, self.ip[1], self.ip[2], self.ip[3]]
    }
}

/// One VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Short name, `[a-z0-9_-]{1,31}`, unique in the system.
    pub name: String,
    /// Index into the payload's images.
    pub image: u16,
    /// Bytes of RAM, mapped at [`RAM_IPA`].
    pub memory: u64,
    /// Host-physical address of the VM's RAM, if fixed; otherwise the
    /// hypervisor picks it.
    pub host_address: Option<u64>,
    /// vCPU `i` runs on physical CPU `pcpus[i]`, which is this VM's
    /// alone. Empty for a VM in a pool ([`pool`](Self::pool)).
    pub pcpus: Vec<u16>,
    /// Index into [`SystemConfig::pools`] of the pool whose pCPUs this
    /// VM's vCPUs share, instead of dedicated [`pcpus`](Self::pcpus).
    pub pool: Option<u16>,
    /// Number of vCPUs: `pcpus.len()` for a VM with dedicated pCPUs, 1 to
    /// [`MAX_VCPUS`] for a VM in a pool ([`vcpu_count`](Self::vcpu_count)).
    pub vcpus: u16,
    /// A pool VM's relative share of its pool's pCPUs: each of its vCPUs
    /// has this weight, 1 to [`MAX_WEIGHT`]. [`DEFAULT_WEIGHT`] on a VM
    /// with dedicated pCPUs, where it means nothing.
    pub weight: u32,
    /// A pool VM's limit: each of its vCPUs runs at most this percent of
    /// one pCPU, 1 to [`MAX_CAP`]. `None` is no limit, and always so on a
    /// VM with dedicated pCPUs.
    pub cap: Option<u8>,
    /// What happens when the VM stops.
    pub restart: RestartPolicy,
    /// Index into the payload's images of the initramfs, if any.
    pub initramfs: Option<u16>,
    /// Index into the payload's images of a device tree the user gave,
    /// passed to the guest as it is instead of the generated one.
    pub dtb: Option<u16>,
    /// The full kernel command line, passed to the guest verbatim in
    /// `/chosen/bootargs` ([`DEFAULT_CMDLINE`] for bare-metal guests that
    /// name none).
    pub cmdline: String,
    /// Devices given to this VM alone.
    pub passthrough: Vec<Passthrough>,
    /// Whether the hypervisor keeps its housekeeping off this VM's pCPUs.
    pub criticality: Criticality,
    /// Slices of the board's disks, at most [`MAX_VM_DISKS`]: slice `n` is
    /// the VM's virtio-mmio device `n` ([`virtio_ipa`], [`virtio_spi`]).
    pub disks: Vec<VmDisk>,
    /// Ports on the system's switches, at most [`MAX_VM_NETS`]: net `k` is
    /// the VM's virtio-mmio device `disks.len() + k`
    /// ([`net_virtio_index`](Self::net_virtio_index)).
    pub nets: Vec<VmNet>,
}

impl VmConfig {
    /// Whether the VM's vCPUs share the pCPUs of a [`Pool`] (its
    /// [`pool`](Self::pool)) instead of running on dedicated ones.
    pub fn pooled(&self) -> bool {
        self.pool.is_some()
    }

    /// How many vCPUs the VM has: [`vcpus`](Self::vcpus) for a VM in a
    /// pool, one per entry of [`pcpus`](Self::pcpus) otherwise.
    pub fn vcpu_count(&self) -> usize {
        if self.pooled() {
            usize::from(self.vcpus)
        } else {
            self.pcpus.len()
        }
    }

    /// Whether the VM boots with Linux's boot protocol: it has an initramfs
    /// a device tree of its own, or a command line other than the
    /// bare-metal default. Such a VM needs room for its device tree and
    /// [`LINUX_SLACK`] besides its kernel.
    pub fn boots_linux(&self) -> bool {
        self.initramfs.is_some() || self.dtb.is_some() || self.cmdline != DEFAULT_CMDLINE
    }

    /// The virtio-mmio device number of the VM's net `k`: its disks come
    /// first, so it is `disks.len() + k`, at [`virtio_ipa`] and
    /// [`virtio_spi`] of that number (saturating for a `k` no valid config
    /// has).
    pub fn net_virtio_index(&self, k: usize) -> usize {
        self.disks.len().saturating_add(k)
    }
}

/// Most passthrough devices one VM may own.
pub const MAX_PASSTHROUGH: usize = 8;
/// Most interrupts one passthrough device may have.
pub const MAX_PASSTHROUGH_IRQS: usize = 8;
/// Most `compatible` strings of a passthrough device.
pub const MAX_COMPATIBLE: usize = 4;
/// Longest `compatible` string, in bytes.
pub const MAX_COMPATIBLE_LEN: usize = 63;
/// Granule of passthrough ranges: the stage-2 page size (Arm ARM D8.2,
/// 4 KiB translation granule), the smallest unit one VM can be given.
pub const PAGE_SIZE: u64 = 4 << 10;
/// First SPI INTID (GICv3 architecture specification, 2.2 "INTIDs":
/// SPIs are 32..=1019).
pub const FIRST_SPI: u32 = 32;
/// Last SPI INTID a VM's virtual GIC implements: it has 96 SPIs
/// (GICD_TYPER.ITLinesNumber = 3, i.e. INTIDs up to 32 * (3 + 1) - 1).
pub const LAST_VM_SPI: u32 = 127;
/// The SPI of every VM's virtual PL011 (QEMU virt's UART SPI 1), which the
/// hypervisor emulates and so cannot give to a device.
pub const UART_INTID: u32 = 33;
/// The INTIDs of a VM's virtio-mmio devices' interrupts (48 to 55), which
/// passthrough devices may not use.
pub const VIRTIO_INTIDS: core::ops::Range<u32> =
    FIRST_SPI + VIRTIO_SPI_BASE..FIRST_SPI + VIRTIO_SPI_BASE + MAX_VIRTIO as u32;
// The virtio-mmio interrupts are SPIs every VM's GIC has, clear of the
// UART's and the channel doorbells.
const _: () = assert!(VIRTIO_INTIDS.end - 1 <= LAST_VM_SPI);
const _: () = assert!(VIRTIO_INTIDS.start > UART_INTID);
const _: () = assert!(VIRTIO_INTIDS.end <= CHANNEL_FIRST_SPI);
// Each disk slice and each net of a VM is one of its virtio-mmio devices
// (together they are checked against MAX_VIRTIO by `validate`).
const _: () = assert!(MAX_VM_DISKS <= MAX_VIRTIO);
const _: () = assert!(MAX_VM_NETS <= MAX_VIRTIO);
// The channel doorbells must be SPIs every VM's GIC has.
const _: () = assert!(channel_spi(MAX_CHANNELS - 1) <= LAST_VM_SPI);
// A channel's memory fits between its register page and the next end.
const _: () = assert!(CHANNEL_SHM_OFFSET + MAX_CHANNEL_SIZE <= CHANNEL_STRIDE);
const _: () = assert!(PAGE_SIZE <= CHANNEL_SHM_OFFSET);
/// Addresses the hypervisor owns or emulates in every VM, as `(start, end
/// exclusive, what)`: the GIC and UART at their host-physical addresses on
/// the QEMU virt layout (hw/arm/virt.c `base_memmap`), and the guest-physical
/// windows of the inter-VM channels and their PCI configuration space. A
/// passthrough range (mapped IPA == PA) may not overlap any of them.
pub const HYP_OWNED_MMIO: &[(u64, u64, &str)] = &[
    (0x0800_0000, 0x0900_0000, "GIC"),
    (0x0900_0000, 0x0900_1000, "UART"),
    (
        CHANNEL_IPA,
        CHANNEL_IPA + MAX_CHANNELS as u64 * CHANNEL_STRIDE,
        "inter-VM channels",
    ),
    (
        PCI_ECAM_IPA,
        PCI_ECAM_IPA + PCI_ECAM_SIZE,
        "PCI configuration space (channels)",
    ),
    (
        VIRTIO_IPA,
        VIRTIO_IPA + MAX_VIRTIO as u64 * VIRTIO_STRIDE,
        "virtio-mmio window",
    ),
];

/// Most channels in a system, and most channels one VM may be an end of.
pub const MAX_CHANNELS: usize = 4;
/// Smallest and largest channel shared memory (a power of two in between).
pub const MIN_CHANNEL_SIZE: u64 = 4 << 10;
/// See [`MIN_CHANNEL_SIZE`].
pub const MAX_CHANNEL_SIZE: u64 = 1 << 20;
/// Guest-physical window where each VM sees its channel ends: its k-th
/// channel (k in the order of [`SystemConfig::channels`] among those it is
/// an end of) has its 4 KiB register page at
/// `CHANNEL_IPA + k * CHANNEL_STRIDE` and its shared memory at that
/// `+ CHANNEL_SHM_OFFSET` ([`channel_regs_ipa`], [`channel_shm_ipa`]).
pub const CHANNEL_IPA: u64 = 0x1000_0000;
/// Distance between two channel ends in the window at [`CHANNEL_IPA`].
pub const CHANNEL_STRIDE: u64 = 0x20_0000;
/// Offset of a channel end's shared memory from its register page; room
/// for [`MAX_CHANNEL_SIZE`] before the next end.
pub const CHANNEL_SHM_OFFSET: u64 = 0x10_0000;
/// The SPI of a VM's k-th channel end: `CHANNEL_FIRST_SPI + k` (INTIDs
/// 120..=123, the top of the VM's SPIs, [`channel_spi`]). Passthrough
/// devices may not use them.
pub const CHANNEL_FIRST_SPI: u32 = 120;
/// Where Linux VMs with channels find the PCI ECAM space (bus 0 only,
/// 1 MiB), as on QEMU virt (hw/arm/virt.c `VIRT_PCIE_ECAM`).
pub const PCI_ECAM_IPA: u64 = 0x3f00_0000;
/// Bytes of the ECAM space at [`PCI_ECAM_IPA`]: bus 0, 32 devices of 8
/// functions of 4 KiB (PCI Express Base Specification, 7.2.2 "ECAM").
pub const PCI_ECAM_SIZE: u64 = 1 << 20;

/// The guest-physical address of the register page of a VM's `k`-th
/// channel end (saturating for a `k` no valid config has).
pub const fn channel_regs_ipa(k: usize) -> u64 {
    CHANNEL_IPA.saturating_add((k as u64).saturating_mul(CHANNEL_STRIDE))
}

/// The guest-physical address of the shared memory of a VM's `k`-th
/// channel end.
pub const fn channel_shm_ipa(k: usize) -> u64 {
    channel_regs_ipa(k).saturating_add(CHANNEL_SHM_OFFSET)
}

/// The doorbell SPI of a VM's `k`-th channel end.
pub const fn channel_spi(k: usize) -> u32 {
    let k = if k > u32::MAX as usize {
        u32::MAX
    } else {
        k as u32
    };
    CHANNEL_FIRST_SPI.saturating_add(k)
}

/// The guest-physical address of a VM's `n`-th virtio-mmio device
/// (saturating for an `n` no valid config has).
pub const fn virtio_ipa(n: usize) -> u64 {
    VIRTIO_IPA.saturating_add((n as u64).saturating_mul(VIRTIO_STRIDE))
}

/// The SPI number (INTID - 32) of a VM's `n`-th virtio-mmio device, as the
/// device tree's `interrupts = <0 spi 4>` wants it.
pub const fn virtio_spi(n: usize) -> u32 {
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    VIRTIO_SPI_BASE.saturating_add(n)
}

/// A set of physical CPUs (`[[pool]]`) shared by the vCPUs of the VMs in
/// it ([`VmConfig::pool`]), which the hypervisor's vCPU scheduler runs by
/// their [`weight`](VmConfig::weight) and [`cap`](VmConfig::cap). A pool's
/// pCPUs are in no other pool and dedicated to no VM; a pool no VM uses is
/// allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `[a-z0-9_-]{1,31}`, unique among pools; `[[vm]]`'s `pool` names it.
    pub name: String,
    /// The physical CPUs the pool shares out, 1 to [`MAX_POOL_PCPUS`],
    /// each on the board and listed once.
    pub pcpus: Vec<u16>,
}

/// One of the board's physical virtio-blk disks (`[[disk]]`). The `k`-th
/// `[[disk]]` is the `k`-th virtio-blk device the hypervisor finds in the
/// host device tree, by ascending MMIO address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// `[a-z0-9_-]{1,31}`, unique among disks; `[[vm.disk]]` names it.
    pub name: String,
    /// Bytes the slices may use, a nonzero multiple of [`SECTOR_SIZE`], at
    /// most the device's capacity.
    pub size: u64,
    /// The disk's GPT layout (`[[disk.partition]]`), in order, at most
    /// [`MAX_PARTITIONS`]; empty when the config declares none. Where each
    /// one lies is [`partition_layout`]'s rule; the host tool writes that
    /// GPT into the disk image it creates.
    pub partitions: Vec<DiskPartition>,
}

/// A partition of a [`Disk`]'s GPT (`[[disk.partition]]`), which a
/// `[[vm.disk]]` may name instead of giving an offset and a size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPartition {
    /// 1 to [`MAX_PARTITION_NAME_LEN`] printable ASCII characters (space
    /// included), unique within the disk: the GPT entry's name.
    pub name: String,
    /// Bytes of the partition, a nonzero multiple of [`SECTOR_SIZE`].
    pub size: u64,
}

/// Most `[[disk.partition]]` one disk may declare.
pub const MAX_PARTITIONS: usize = 16;
/// Longest partition name: a GPT entry's name is 36 UTF-16 code units
/// (UEFI 2.10, 5.3.3 "GPT Partition Entry Array", `PartitionName`), and
/// partition names are ASCII, one code unit each.
pub const MAX_PARTITION_NAME_LEN: usize = 36;
/// Where the first partition starts, what every partition's start is
/// rounded up to, and what is kept free at the end of the disk for the
/// backup GPT ([`partition_layout`]).
pub const PARTITION_ALIGN: u64 = 1 << 20;
/// Entries in the GPT partition entry array the host tool writes: the
/// standard size (UEFI 2.10, 5.3.2: at least 16 KiB of entries).
pub const GPT_PARTITION_ENTRIES: u32 = 128;
/// Bytes of one GPT partition entry (UEFI 2.10, 5.3.2
/// `SizeOfPartitionEntry`, the standard 128).
pub const GPT_ENTRY_SIZE: u32 = 128;
// The protective MBR, the GPT header and the entry array fit before the
// first partition, and the backup header and array in the end reserve.
const _: () = assert!(
    2 * SECTOR_SIZE + GPT_PARTITION_ENTRIES as u64 * GPT_ENTRY_SIZE as u64 <= PARTITION_ALIGN
);
const _: () = assert!(MAX_PARTITIONS <= GPT_PARTITION_ENTRIES as usize);

/// A partition that does not fit its disk ([`partition_layout`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionError {
    /// Its index in the disk's partitions.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Where the layout would start it.
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// Where partitions must end by: the disk's size less
    /// [`PARTITION_ALIGN`] (0 for a disk smaller than that).
    pub limit: u64,
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition '{}' at {:#x}..{:#x} ({}) does not fit: partitions must end by {:#x}, \
             the disk's size less {} for the backup GPT",
            self.name,
            self.offset,
            self.offset.wrapping_add(self.size),
            Size(self.size),
            self.limit,
            Size(PARTITION_ALIGN)
        )
    }
}

/// Where each of `parts` lies in a disk of `disk_size` bytes, as (byte
/// offset, size): the first starts at [`PARTITION_ALIGN`] (1 MiB, after
/// the protective MBR and the primary GPT), each next one where the one
/// before ends, rounded up to 1 MiB, and every one must end by
/// `disk_size - PARTITION_ALIGN`, leaving the last 1 MiB for the backup
/// GPT. The host tool writes this layout into the GPT of the disk image it
/// creates, and [`validate`] checks it; the sizes themselves (nonzero,
/// sector multiples) are [`validate`]'s to check, not this function's.
///
/// `Err` names the first partition that does not fit; the arithmetic is
/// checked, so absurd sizes are an `Err`, never a wrap.
pub fn partition_layout(
    parts: &[DiskPartition],
    disk_size: u64,
) -> Result<Vec<(u64, u64)>, PartitionError> {
    let limit = disk_size.saturating_sub(PARTITION_ALIGN);
    let mut layout = Vec::new();
    let mut next = Some(PARTITION_ALIGN);
    for (index, part) in parts.iter().enumerate() {
        let fail = |offset| PartitionError {
            index,
            name: part.name.clone(),
            offset,
            size: part.size,
            limit,
        };
        // A start past u64 cannot follow a partition that fit, but the
        // arithmetic does not rely on that.
        let offset = next.ok_or_else(|| fail(u64::MAX))?;
        let end = match offset.checked_add(part.size) {
            Some(end) if end <= limit => end,
            _ => return Err(fail(offset)),
        };
        layout.push((offset, part.size));
        next = end.checked_next_multiple_of(PARTITION_ALIGN);
    }
    Ok(layout)
}

/// A slice of a [`Disk`] given to a VM as a virtio-blk device of its own
/// (`[[vm.disk]]`): the guest sees sectors `0..size / 512`, which are the
/// disk's bytes `offset..offset + size`.
///
/// A slice may instead be a named partition of the disk
/// ([`partition`](Self::partition)). When the disk declares its layout
/// ([`Disk::partitions`]), `offset` and `size` are that partition's, from
/// [`partition_layout`] (the TOML front-end fills them in, and
/// [`validate`] checks they match), and every slice rule applies to them
/// as to any slice. When it declares none, the hypervisor finds the
/// partition in the disk's real GPT at boot: `offset` and `size` are 0
/// until then, and [`validate`] skips the range and overlap checks of such
/// a slice (the hypervisor makes them at boot, when it fills them in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDisk {
    /// Index into [`SystemConfig::disks`].
    pub disk: u16,
    /// Byte offset of the slice in the disk, a multiple of [`SECTOR_SIZE`].
    pub offset: u64,
    /// Bytes of the slice, a nonzero multiple of [`SECTOR_SIZE`].
    pub size: u64,
    /// The name of the disk's GPT partition the slice is, if it is one: 1
    /// to [`MAX_PARTITION_NAME_LEN`] printable ASCII characters.
    pub partition: Option<String>,
    /// Whether the guest may only read it. Read-only slices of one disk may
    /// overlap; a read-write slice overlaps no other slice.
    pub read_only: bool,
    /// The virtio-blk serial (VIRTIO_BLK_T_GET_ID), at most
    /// [`MAX_SERIAL_LEN`] bytes of printable ASCII.
    pub serial: String,
}

impl VmDisk {
    /// End of the slice in its disk (exclusive), saturating: an overflowing
    /// slice is reported by [`validate`] on its own.
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// A virtual Ethernet switch (`[[switch]]`) that VMs' virtio-net devices
/// ([`VmNet`]) are ports of; the board's physical NIC may be one more port,
/// its uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    /// `[a-z0-9_-]{1,31}`, unique among switches; `[[vm.net]]` names it.
    pub name: String,
    /// Whether the board's physical NIC is this switch's uplink port. At
    /// most [`MAX_UPLINKS`] switches have it.
    pub uplink: bool,
}

/// A VM's port on a [`Switch`] (`[[vm.net]]`): a virtio-net device of its
/// own, the VM's virtio-mmio device number
/// [`VmConfig::net_virtio_index`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNet {
    /// Index into [`SystemConfig::switches`].
    pub switch: u16,
    /// The device's MAC address (virtio 1.2, 5.1.4 `mac`): unicast (bit 0
    /// of the first byte clear), not all zeros, unique in the system.
    pub mac: [u8; 6],
}

/// A shared-memory channel with a doorbell each way between two VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// `[a-z0-9_-]{1,31}`, unique among channels.
    pub name: String,
    /// Indices of the two VMs (end 0, end 1), distinct.
    pub vms: [u16; 2],
    /// Bytes of shared memory: a power of two,
    /// [`MIN_CHANNEL_SIZE`]`..=`[`MAX_CHANNEL_SIZE`].
    pub size: u64,
}

impl Channel {
    /// Which end (0 or 1) VM `vm` is of this channel, if it is one.
    pub fn end_of(&self, vm: u16) -> Option<usize> {
        self.vms.iter().position(|&v| v == vm)
    }
}

/// A device given to exactly one VM: its MMIO range, mapped into the VM at
/// the same address (IPA == PA), and its interrupts, routed to the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthrough {
    /// Label, `[a-z0-9_-]{1,31}`, e.g. `"rtc"`.
    pub name: String,
    /// Host-physical start of the MMIO range, 4 KiB aligned.
    pub base: u64,
    /// Bytes of the range, a nonzero multiple of 4 KiB.
    pub size: u64,
    /// SPI INTIDs, [`FIRST_SPI`]`..=`[`LAST_VM_SPI`], never [`UART_INTID`].
    pub irqs: Vec<u32>,
    /// The device tree `compatible` list, most specific first, e.g.
    /// `["arm,pl031", "arm,primecell"]`.
    pub compatible: Vec<String>,
}

impl Passthrough {
    /// End of the MMIO range (exclusive), saturating: an overflowing range
    /// is reported by [`validate`] on its own.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// A whole system: the board, its VMs and the channels between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemConfig {
    /// The machine.
    pub board: Board,
    /// The VMs, in boot order; a VM's index is its id.
    pub vms: Vec<VmConfig>,
    /// Channels between pairs of VMs.
    pub channels: Vec<Channel>,
    /// The board's virtio-blk disks, in ascending order of their MMIO
    /// address in the host device tree.
    pub disks: Vec<Disk>,
    /// The virtual Ethernet switches the VMs' nets are ports of.
    pub switches: Vec<Switch>,
    /// The CPU pools pool VMs share, at most [`MAX_POOLS`].
    pub pools: Vec<Pool>,
}

impl SystemConfig {
    /// The pool that shares out physical CPU `cpu`, with its index, if
    /// any (the first, in a config that puts it in two).
    pub fn pool_of(&self, cpu: u16) -> Option<(usize, &Pool)> {
        self.pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.pcpus.contains(&cpu))
    }

    /// The channels VM `vm` is an end of, in order, with its end number:
    /// `(k, channel index, end)`, where `k` counts from 0 among this VM's
    /// channels and places the end in its window ([`channel_regs_ipa`],
    /// [`channel_spi`]).
    pub fn channels_of(&self, vm: u16) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.channels
            .iter()
            .enumerate()
            .filter_map(move |(c, ch)| ch.end_of(vm).map(|end| (c, end)))
            .enumerate()
            .map(|(k, (c, end))| (k, c, end))
    }
}

/// The config field a [`Problem`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A field of the board (`"cpus"`, `"ram_base"`, `"ram_size"`), or
    /// `"vms"` / `"channels"` / `"pools"` for the list of VMs / channels /
    /// pools as a whole.
    Board(&'static str),
    /// A field of VM `n`.
    Vm(usize, &'static str),
    /// A field of passthrough device `d` of VM `n`.
    Passthrough(usize, usize, &'static str),
    /// A field of channel `c` (`"name"`, `"vms"`, `"size"`).
    Channel(usize, &'static str),
    /// A field of disk `k` (`"name"`, `"size"`), or `"partitions"` for
    /// its list of partitions as a whole.
    Disk(usize, &'static str),
    /// A field of partition `p` of disk `k` (`"name"`, `"size"`).
    DiskPartition(usize, usize, &'static str),
    /// A field of disk slice `d` of VM `n` (`"disk"`, `"offset"`, `"size"`,
    /// `"partition"`, `"read_only"`, `"serial"`).
    VmDisk(usize, usize, &'static str),
    /// A field of switch `k` (`"name"`, `"uplink"`).
    Switch(usize, &'static str),
    /// A field of net `k` of VM `n` (`"switch"`, `"mac"`).
    VmNet(usize, usize, &'static str),
    /// A field of pool `k` (`"name"`, `"pcpus"`).
    Pool(usize, &'static str),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Board(name) => write!(f, "board.{name}"),
            Self::Vm(i, name) => write!(f, "vm[{i}].{name}"),
            Self::Passthrough(i, d, name) => write!(f, "vm[{i}].passthrough[{d}].{name}"),
            Self::Channel(c, name) => write!(f, "channel[{c}].{name}"),
            Self::Disk(k, name) => write!(f, "disk[{k}].{name}"),
            Self::DiskPartition(k, p, name) => write!(f, "disk[{k}].partition[{p}].{name}"),
            Self::VmDisk(i, d, name) => write!(f, "vm[{i}].disk[{d}].{name}"),
            Self::Switch(k, name) => write!(f, "switch[{k}].{name}"),
            Self::VmNet(i, k, name) => write!(f, "vm[{i}].net[{k}].{name}"),
            Self::Pool(k, name) => write!(f, "pool[{k}].{name}"),
        }
    }
}

/// One broken rule, found by [`validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The most specific field the rule is about.
    pub field: Field,
    /// What is wrong, with the numbers.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A byte count shown for people: `16 MiB`, `2.3 MiB`, `512 KiB`, `100 bytes`.
/// Integer arithmetic only (the hypervisor has no FP context to spare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        let n = self.0;
        for (unit, name) in UNITS {
            if n >= unit {
                let whole = n / unit;
                let tenths = (n % unit) / (unit / 10);
                return if n.is_multiple_of(unit) {
                    write!(f, "{whole} {name}")
                } else {
                    write!(f, "{whole}.{tenths} {name}")
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

/// A MAC address shown for people: six lower-case hex bytes separated by
/// colons, `52:54:00:12:34:56`, as config files write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn field_display_names_board_and_vm_fields() {
        assert_eq!(format!("{}", Field::Board("cpus")), "board.cpus");
        assert_eq!(format!("{}", Field::Vm(1, "memory")), "vm[1].memory");
        assert_eq!(
            format!("{}", Field::Passthrough(1, 2, "irqs")),
            "vm[1].passthrough[2].irqs"
        );
    }

    #[test]
    fn size_display_rounds_to_tenths() {
        assert_eq!(format!("{}", Size(16 << 20)), "16 MiB");
        assert_eq!(format!("{}", Size((2 << 20) + 300 * 1024)), "2.2 MiB");
        assert_eq!(format!("{}", Size((2 << 20) + 350 * 1024)), "2.3 MiB");
        assert_eq!(format!("{}", Size(1 << 30)), "1 GiB");
        assert_eq!(format!("{}", Size(512 << 10)), "512 KiB");
        assert_eq!(format!("{}", Size(100)), "100 bytes");
    }

    #[test]
    fn field_display_names_channel_fields() {
        assert_eq!(format!("{}", Field::Channel(2, "size")), "channel[2].size");
    }

    #[test]
    fn field_display_names_disk_fields() {
        assert_eq!(format!("{}", Field::Disk(1, "name")), "disk[1].name");
        assert_eq!(
            format!("{}", Field::VmDisk(0, 3, "offset")),
            "vm[0].disk[3].offset"
        );
        assert_eq!(
            format!("{}", Field::DiskPartition(1, 15, "size")),
            "disk[1].partition[15].size"
        );
    }

    #[test]
    fn field_display_names_switch_and_net_fields() {
        assert_eq!(
            format!("{}", Field::Switch(1, "uplink")),
            "switch[1].uplink"
        );
        assert_eq!(format!("{}", Field::VmNet(2, 0, "mac")), "vm[2].net[0].mac");
    }

    #[test]
    fn field_display_names_pool_fields() {
        assert_eq!(format!("{}", Field::Pool(3, "pcpus")), "pool[3].pcpus");
        assert_eq!(format!("{}", Field::Board("pools")), "board.pools");
    }

    #[test]
    fn mac_displays_as_config_files_write_it() {
        assert_eq!(
            format!("{}", Mac([0x52, 0x54, 0, 0x12, 0xab, 0xff])),
            "52:54:00:12:ab:ff"
        );
    }

    #[test]
    fn nets_follow_the_disks_in_the_virtio_window() {
        let slice = VmDisk {
            disk: 0,
            offset: 0,
            size: 512,
            partition: None,
            read_only: false,
            serial: String::new(),
        };
        let mut vm = VmConfig {
            name: "a".into(),
            image: 0,
            memory: BLOCK_SIZE,
            host_address: None,
            pcpus: alloc::vec![0],
            pool: None,
            vcpus: 1,
            weight: DEFAULT_WEIGHT,
            cap: None,
            restart: RestartPolicy::Never,
            initramfs: None,
            dtb: None,
            cmdline: DEFAULT_CMDLINE.into(),
            passthrough: Vec::new(),
            criticality: Criticality::Normal,
            disks: Vec::new(),
            nets: Vec::new(),
        };
        assert_eq!(vm.net_virtio_index(0), 0);
        assert_eq!(vm.net_virtio_index(3), 3);
        vm.disks = alloc::vec![slice.clone(), slice.clone(), slice];
        assert_eq!(vm.net_virtio_index(0), 3);
        assert_eq!(virtio_ipa(vm.net_virtio_index(1)), 0x0a00_0800);
        assert_eq!(virtio_spi(vm.net_virtio_index(1)), 20);
        assert_eq!(vm.net_virtio_index(usize::MAX), usize::MAX);
    }

    #[test]
    fn vcpu_count_is_the_pcpus_or_the_pool_vms_vcpus() {
        let mut vm = VmConfig {
            name: "a".into(),
            image: 0,
            memory: BLOCK_SIZE,
            host_address: None,
            pcpus: alloc::vec![2, 3],
            pool: None,
            vcpus: 2,
            weight: DEFAULT_WEIGHT,
            cap: None,
            restart: RestartPolicy::Never,
            initramfs: None,
            dtb: None,
            cmdline: DEFAULT_CMDLINE.into(),
            passthrough: Vec::new(),
            criticality: Criticality::Normal,
            disks: Vec::new(),
            nets: Vec::new(),
        };
        assert!(!vm.pooled());
        assert_eq!(vm.vcpu_count(), 2);
        // Dedicated pCPUs decide, whatever `vcpus` says.
        vm.vcpus = 5;
        assert_eq!(vm.vcpu_count(), 2);
        vm.pcpus.clear();
        vm.pool = Some(0);
        assert!(vm.pooled());
        assert_eq!(vm.vcpu_count(), 5);
    }

    #[test]
    fn pool_of_finds_the_pool_sharing_a_pcpu() {
        let mut s = system(&[]);
        s.pools = alloc::vec![
            Pool {
                name: "a".into(),
                pcpus: alloc::vec![1, 2],
            },
            Pool {
                name: "b".into(),
                pcpus: alloc::vec![3, 2],
            },
        ];
        assert_eq!(s.pool_of(0), None);
        assert_eq!(
            s.pool_of(1).map(|(k, p)| (k, p.name.as_str())),
            Some((0, "a"))
        );
        assert_eq!(s.pool_of(2).map(|(k, _)| k), Some(0), "the first");
        assert_eq!(s.pool_of(3).map(|(k, _)| k), Some(1));
    }

    #[test]
    fn virtio_window_layout_is_qemu_virts() {
        assert_eq!(virtio_ipa(0), 0x0a00_0000);
        assert_eq!(virtio_ipa(1), 0x0a00_0200);
        assert_eq!(virtio_ipa(MAX_VIRTIO - 1), 0x0a00_0e00);
        assert_eq!(virtio_spi(0), 16);
        assert_eq!(virtio_spi(MAX_VIRTIO - 1), 23);
        assert_eq!(VIRTIO_INTIDS, 48..56);
        let window = HYP_OWNED_MMIO
            .iter()
            .find(|(_, _, what)| *what == "virtio-mmio window")
            .unwrap();
        assert_eq!((window.0, window.1), (VIRTIO_IPA, virtio_ipa(MAX_VIRTIO)));
        // Absurd indices saturate instead of panicking.
        assert_eq!(virtio_ipa(usize::MAX), u64::MAX);
        assert_eq!(virtio_spi(usize::MAX), u32::MAX);
    }

    #[test]
    fn vm_disk_end_saturates() {
        let d = VmDisk {
            disk: 0,
            offset: u64::MAX - 511,
            size: 1024,
            partition: None,
            read_only: false,
            serial: String::new(),
        };
        assert_eq!(d.end(), u64::MAX);
        let d = VmDisk { offset: 512, ..d };
        assert_eq!(d.end(), 1536);
    }

    fn parts(sizes: &[u64]) -> Vec<DiskPartition> {
        sizes
            .iter()
            .enumerate()
            .map(|(k, &size)| DiskPartition {
                name: format!("p{k}"),
                size,
            })
            .collect()
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn partitions_start_at_1_mib_and_on_1_mib_boundaries() {
        assert_eq!(partition_layout(&[], 0), Ok(Vec::new()));
        assert_eq!(
            partition_layout(&parts(&[512, MIB, 3 * MIB + 512, 512]), 16 * MIB),
            Ok(alloc::vec![
                (MIB, 512),
                (2 * MIB, MIB),
                (3 * MIB, 3 * MIB + 512),
                (7 * MIB, 512)
            ])
        );
    }

    #[test]
    fn partitions_leave_the_last_mib_for_the_backup_gpt() {
        // To the last byte before the reserve.
        assert_eq!(
            partition_layout(&parts(&[6 * MIB]), 8 * MIB),
            Ok(alloc::vec![(MIB, 6 * MIB)])
        );
        let e = partition_layout(&parts(&[6 * MIB + 512]), 8 * MIB).unwrap_err();
        assert_eq!(
            e,
            PartitionError {
                index: 0,
                name: "p0".into(),
                offset: MIB,
                size: 6 * MIB + 512,
                limit: 7 * MIB,
            }
        );
        assert_eq!(
            format!("{e}"),
            "partition 'p0' at 0x100000..0x700200 (6.0 MiB) does not fit: partitions must end by \
             0x700000, the disk's size less 1 MiB for the backup GPT"
        );
        // The second one is the one that does not fit: it names it.
        let e = partition_layout(&parts(&[6 * MIB, 512]), 8 * MIB).unwrap_err();
        assert_eq!((e.index, e.name.as_str(), e.offset), (1, "p1", 7 * MIB));
        // Disks too small for any partition.
        for disk in [0, 512, MIB, 2 * MIB] {
            let e = partition_layout(&parts(&[512]), disk).unwrap_err();
            assert_eq!((e.index, e.limit), (0, disk.saturating_sub(MIB)));
        }
        assert_eq!(
            partition_layout(&parts(&[512]), 2 * MIB + 512),
            Ok(alloc::vec![(MIB, 512)])
        );
    }

    #[test]
    fn partition_layout_never_overflows() {
        let e = partition_layout(&parts(&[u64::MAX]), u64::MAX).unwrap_err();
        assert_eq!((e.index, e.offset, e.limit), (0, MIB, u64::MAX - MIB));
        assert_eq!(format!("{e}").split(' ').nth(3), Some("0x100000..0xfffff"));
        // Up to the reserve of the largest disk, then one more: its start
        // is the last 1 MiB boundary, and it cannot end in the disk.
        let first = u64::MAX - 2 * MIB;
        let e = partition_layout(&parts(&[first, 512]), u64::MAX).unwrap_err();
        assert_eq!((e.index, e.offset), (1, u64::MAX - MIB + 1));
        assert_eq!(
            partition_layout(&parts(&[first]), u64::MAX),
            Ok(alloc::vec![(MIB, first)])
        );
    }

    #[test]
    fn criticality_spells_like_the_config_file() {
        assert_eq!(Criticality::default(), Criticality::Normal);
        assert_eq!(format!("{}", Criticality::Critical), "critical");
        assert_eq!(Criticality::Normal.as_str(), "normal");
    }

    #[test]
    fn channel_window_layout() {
        assert_eq!(channel_regs_ipa(0), 0x1000_0000);
        assert_eq!(channel_shm_ipa(0), 0x1010_0000);
        assert_eq!(channel_regs_ipa(3), 0x1060_0000);
        assert_eq!(channel_shm_ipa(3), 0x1070_0000);
        assert_eq!(channel_spi(0), 120);
        assert_eq!(channel_spi(3), 123);
        // The last end's memory ends at the window's end, which is owned.
        let window = HYP_OWNED_MMIO
            .iter()
            .find(|(_, _, what)| *what == "inter-VM channels")
            .unwrap();
        assert_eq!(window.0, CHANNEL_IPA);
        assert_eq!(
            channel_shm_ipa(MAX_CHANNELS - 1) + MAX_CHANNEL_SIZE,
            window.1
        );
        // Absurd indices saturate instead of panicking.
        assert_eq!(channel_regs_ipa(usize::MAX), u64::MAX);
        assert_eq!(channel_spi(usize::MAX), u32::MAX);
    }

    fn system(channels: &[(&str, [u16; 2])]) -> SystemConfig {
        SystemConfig {
            board: Board {
                cpus: 1,
                ram_base: RAM_IPA,
                ram_size: 1 << 30,
                management: None,
            },
            vms: Vec::new(),
            channels: channels
                .iter()
                .map(|&(name, vms)| Channel {
                    name: name.into(),
                    vms,
                    size: MIN_CHANNEL_SIZE,
                })
                .collect(),
            disks: Vec::new(),
            switches: Vec::new(),
            pools: Vec::new(),
        }
    }

    #[test]
    fn end_of_says_which_end_a_vm_is() {
        let c = &system(&[("a", [2, 0])]).channels[0];
        assert_eq!(c.end_of(2), Some(0));
        assert_eq!(c.end_of(0), Some(1));
        assert_eq!(c.end_of(1), None);
    }

    #[test]
    fn channels_of_numbers_a_vms_ends_in_config_order() {
        let s = system(&[("a", [0, 1]), ("b", [1, 2]), ("c", [2, 0]), ("d", [1, 0])]);
        let of = |vm| s.channels_of(vm).collect::<Vec<_>>();
        assert_eq!(of(0), [(0, 0, 0), (1, 2, 1), (2, 3, 1)]);
        assert_eq!(of(1), [(0, 0, 1), (1, 1, 0), (2, 3, 0)]);
        assert_eq!(of(2), [(0, 1, 1), (1, 2, 0)]);
        assert_eq!(of(3), []);
    }

    #[test]
    fn restart_policy_spells_like_the_config_file() {
        assert_eq!(RestartPolicy::OnCrash.as_str(), "on-crash");
        assert_eq!(RestartPolicy::default(), RestartPolicy::OnCrash);
    }
}
