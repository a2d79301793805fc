//! The binary form of a [`SystemConfig`], as carried in the payload.
//!
//! Little-endian throughout:
//!
//! ```text
//! magic     [u8; 8] = "BHCFG001"
//! version   u32     = 10
//! board     cpus u16, ram_base u64, ram_size u64
//! disk_count u32
//! disk_count times:
//!   name_len u32, name [u8; name_len] (UTF-8)
//!   size u64
//!   partition_count u32 (at most MAX_PARTITIONS)
//!   partition_count times:
//!     name_len u32, name [u8; name_len] (UTF-8)
//!     size u64
//! switch_count u32
//! switch_count times:
//!   name_len u32, name [u8; name_len] (UTF-8)
//!   uplink u8 (0 or 1)
//! pool_count u32 (at most MAX_POOLS)
//! pool_count times:
//!   name_len u32, name [u8; name_len] (UTF-8)
//!   pcpu_count u32 (at most MAX_POOL_PCPUS), pcpus [u16; pcpu_count]
//! vm_count  u32
//! vm_count times:
//!   name_len u32, name [u8; name_len] (UTF-8)
//!   image u16, memory u64
//!   has_host_address u8 (0 or 1), host_address u64 (only if 1)
//!   pcpu_count u32, pcpus [u16; pcpu_count]
//!   vcpus u16
//!   has_pool u8 (0 or 1), pool u16 (only if 1)
//!   weight u32
//!   has_cap u8 (0 or 1), cap u8 (only if 1)
//!   restart u8 (0 never, 1 on-crash, 2 always)
//!   criticality u8 (0 normal, 1 critical)
//!   has_initramfs u8 (0 or 1), initramfs u16 (only if 1)
//!   has_dtb u8 (0 or 1), dtb u16 (only if 1)
//!   cmdline_len u32, cmdline [u8; cmdline_len] (UTF-8)
//!   passthrough_count u32 (at most MAX_PASSTHROUGH)
//!   passthrough_count times:
//!     name_len u32, name [u8; name_len] (UTF-8)
//!     base u64, size u64
//!     irq_count u32 (at most MAX_PASSTHROUGH_IRQS), irqs [u32; irq_count]
//!     compatible_count u32 (at most MAX_COMPATIBLE)
//!     compatible_count times: len u32, string [u8; len] (UTF-8)
//!   disk_count u32 (at most MAX_VM_DISKS)
//!   disk_count times:
//!     disk u16, offset u64, size u64
//!     read_only u8 (0 or 1)
//!     serial_len u32, serial [u8; serial_len] (UTF-8)
//!     has_partition u8 (0 or 1)
//!     only if 1: partition_len u32, partition [u8; partition_len] (UTF-8)
//!   net_count u32 (at most MAX_VM_NETS)
//!   net_count times:
//!     switch u16, mac [u8; 6]
//! channel_count u32 (at most MAX_CHANNELS)
//! channel_count times:
//!   name_len u32, name [u8; name_len] (UTF-8)
//!   vms [u16; 2] (end 0, end 1)
//!   size u64
//! only if the board has a management endpoint:
//!   1 u8, ip [u8; 4], prefix u8, store ip [u8; 4], store port u16
//! ```
//!
//! Version 2 added the initramfs and the command line; version 3 the
//! passthrough devices; version 4 the criticality and the channels;
//! version 5 a device tree the user gives; version 6 the board's disks and
//! each VM's slices of them; version 7 the switches and each VM's nets;
//! version 8 the disks' partitions and the partition a slice names;
//! version 9 the CPU pools and each VM's pool, vCPU count, weight and cap;
//! version 10 the management endpoint.
//!
//! Nothing may follow the management endpoint. [`decode`] reads the bytes from the image,
//! so every length is checked against what is left before it is used, and no
//! count is trusted for an allocation.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{
    Board, Channel, Criticality, Disk, DiskPartition, Passthrough, Pool, RestartPolicy, Switch,
    SystemConfig, VmConfig, VmDisk, VmNet, MAX_CHANNELS, MAX_COMPATIBLE, MAX_PARTITIONS,
    MAX_PASSTHROUGH, MAX_PASSTHROUGH_IRQS, MAX_POOLS, MAX_POOL_PCPUS, MAX_VM_DISKS, MAX_VM_NETS,
};

/// First eight bytes of an encoded config.
pub const MAGIC: [u8; 8] = *b"BHCFG001";
/// Encoding version written by [`encode`] and accepted by [`decode`].
pub const VERSION: u32 = 10;

/// Why [`decode`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input does not start with [`MAGIC`].
    BadMagic,
    /// The version is not [`VERSION`].
    UnsupportedVersion(u32),
    /// The input ends in the middle of a field, at this byte offset.
    Truncated(usize),
    /// A VM name is not UTF-8.
    BadName,
    /// A presence byte (host address, initramfs, a slice's partition, a
    /// VM's pool or cap), a disk slice's read-only byte or a switch's
    /// uplink byte is neither 0 nor 1.
    BadOptionTag(u8),
    /// The restart byte is not a known policy.
    BadRestartPolicy(u8),
    /// The criticality byte is not a known criticality.
    BadCriticality(u8),
    /// A command line is not UTF-8.
    BadCmdline,
    /// A passthrough device's name or compatible string is not UTF-8.
    BadPassthroughText,
    /// A channel name is not UTF-8.
    BadChannelName,
    /// A disk name, a partition name or a disk slice's serial is not
    /// UTF-8.
    BadDiskText,
    /// A switch name is not UTF-8.
    BadSwitchName,
    /// A pool name is not UTF-8.
    BadPoolName,
    /// A list count (passthrough devices, irqs, compatibles, channels,
    /// partitions, disk slices, nets, pools, a pool's pCPUs) at this byte
    /// offset is larger than any valid config has.
    TooMany(usize),
    /// Bytes are left after the last channel, starting at this offset.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => write!(f, "not a Bulkhead config (bad magic)"),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "config version {v} is not supported (expected {VERSION})"
                )
            }
            Self::Truncated(at) => write!(f, "config is truncated at byte {at}"),
            Self::BadName => write!(f, "a VM name is not UTF-8"),
            Self::BadOptionTag(t) => write!(f, "bad option tag {t} (expected 0 or 1)"),
            Self::BadCmdline => write!(f, "a command line is not UTF-8"),
            Self::BadPassthroughText => {
                write!(f, "a passthrough device's name or compatible is not UTF-8")
            }
            Self::BadChannelName => write!(f, "a channel name is not UTF-8"),
            Self::BadDiskText => write!(f, "a disk name, partition name or serial is not UTF-8"),
            Self::BadSwitchName => write!(f, "a switch name is not UTF-8"),
            Self::BadPoolName => write!(f, "a pool name is not UTF-8"),
            Self::TooMany(at) => write!(f, "a list at byte {at} is too long"),
            Self::BadRestartPolicy(t) => write!(f, "bad restart policy {t}"),
            Self::BadCriticality(t) => write!(f, "bad criticality {t}"),
            Self::TrailingBytes(at) => write!(f, "unexpected bytes after the config at byte {at}"),
        }
    }
}

/// Encodes `cfg` in the binary form described in this module.
///
/// Counts and lengths are written as `u32`; a config with more than
/// `u32::MAX` VMs, CPUs or name bytes cannot exist in practice, and
/// [`validate`](crate::validate) rejects far smaller ones.
pub fn encode(cfg: &SystemConfig) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&cfg.board.cpus.to_le_bytes());
    out.extend_from_slice(&cfg.board.ram_base.to_le_bytes());
    out.extend_from_slice(&cfg.board.ram_size.to_le_bytes());
    put_len(&mut out, cfg.disks.len());
    for disk in &cfg.disks {
        put_str(&mut out, &disk.name);
        out.extend_from_slice(&disk.size.to_le_bytes());
        put_len(&mut out, disk.partitions.len());
        for part in &disk.partitions {
            put_str(&mut out, &part.name);
            out.extend_from_slice(&part.size.to_le_bytes());
        }
    }
    put_len(&mut out, cfg.switches.len());
    for switch in &cfg.switches {
        put_str(&mut out, &switch.name);
        out.push(u8::from(switch.uplink));
    }
    put_len(&mut out, cfg.pools.len());
    for pool in &cfg.pools {
        put_str(&mut out, &pool.name);
        put_len(&mut out, pool.pcpus.len());
        for cpu in &pool.pcpus {
            out.extend_from_slice(&cpu.to_le_bytes());
        }
    }
    put_len(&mut out, cfg.vms.len());
    for vm in &cfg.vms {
        put_len(&mut out, vm.name.len());
        out.extend_from_slice(vm.name.as_bytes());
        out.extend_from_slice(&vm.image.to_le_bytes());
        out.extend_from_slice(&vm.memory.to_le_bytes());
        match vm.host_address {
            Some(addr) => {
                out.push(1);
                out.extend_from_slice(&addr.to_le_bytes());
            }
            None => out.push(0),
        }
        put_len(&mut out, vm.pcpus.len());
        for cpu in &vm.pcpus {
            out.extend_from_slice(&cpu.to_le_bytes());
        }
        out.extend_from_slice(&vm.vcpus.to_le_bytes());
        match vm.pool {
            Some(pool) => {
                out.push(1);
                out.extend_from_slice(&pool.to_le_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&vm.weight.to_le_bytes());
        match vm.cap {
            Some(cap) => out.extend_from_slice(&[1, cap]),
            None => out.push(0),
        }
        out.push(match vm.restart {
            RestartPolicy::Never => 0,
            RestartPolicy::OnCrash => 1,
            RestartPolicy::Always => 2,
        });
        out.push(match vm.criticality {
            Criticality::Normal => 0,
            Criticality::Critical => 1,
        });
        for index in [vm.initramfs, vm.dtb] {
            match index {
                Some(index) => {
                    out.push(1);
                    out.extend_from_slice(&index.to_le_bytes());
                }
                None => out.push(0),
            }
        }
        put_str(&mut out, &vm.cmdline);
        put_len(&mut out, vm.passthrough.len());
        for dev in &vm.passthrough {
            put_str(&mut out, &dev.name);
            out.extend_from_slice(&dev.base.to_le_bytes());
            out.extend_from_slice(&dev.size.to_le_bytes());
            put_len(&mut out, dev.irqs.len());
            for irq in &dev.irqs {
                out.extend_from_slice(&irq.to_le_bytes());
            }
            put_len(&mut out, dev.compatible.len());
            for c in &dev.compatible {
                put_str(&mut out, c);
            }
        }
        put_len(&mut out, vm.disks.len());
        for slice in &vm.disks {
            out.extend_from_slice(&slice.disk.to_le_bytes());
            out.extend_from_slice(&slice.offset.to_le_bytes());
            out.extend_from_slice(&slice.size.to_le_bytes());
            out.push(u8::from(slice.read_only));
            put_str(&mut out, &slice.serial);
            match &slice.partition {
                Some(name) => {
                    out.push(1);
                    put_str(&mut out, name);
                }
                None => out.push(0),
            }
        }
        put_len(&mut out, vm.nets.len());
        for net in &vm.nets {
            out.extend_from_slice(&net.switch.to_le_bytes());
            out.extend_from_slice(&net.mac);
        }
    }
    put_len(&mut out, cfg.channels.len());
    for ch in &cfg.channels {
        put_str(&mut out, &ch.name);
        for vm in ch.vms {
            out.extend_from_slice(&vm.to_le_bytes());
        }
        out.extend_from_slice(&ch.size.to_le_bytes());
    }
    match &cfg.board.management {
        None => {}
        Some(m) => {
            out.push(1);
            out.extend_from_slice(&m.ip);
            out.push(m.prefix);
            out.extend_from_slice(&m.store.0);
            out.extend_from_slice(&m.store.1.to_le_bytes());
        }
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Decodes a config written by [`encode`]. Never panics: any malformed input
/// is an `Err`.
pub fn decode(bytes: &[u8]) -> Result<SystemConfig, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len()).map_err(|_| DecodeError::BadMagic)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let board = Board {
        cpus: r.u16()?,
        ram_base: r.u64()?,
        ram_size: r.u64()?,
        management: None,
    };
    // Untrusted like the VM count: each disk consumes input.
    let disk_count = r.u32()?;
    let mut disks = Vec::new();
    for _ in 0..disk_count {
        disks.push(r.disk()?);
    }
    // Likewise: each switch consumes input.
    let switch_count = r.u32()?;
    let mut switches = Vec::new();
    for _ in 0..switch_count {
        switches.push(r.switch()?);
    }
    let pool_count = r.count(MAX_POOLS)?;
    let mut pools = Vec::new();
    for _ in 0..pool_count {
        pools.push(r.pool()?);
    }
    let vm_count = r.u32()?;
    // No `with_capacity(vm_count)`: the count is untrusted. Each VM consumes
    // input, so a lying count runs out of bytes and fails as `Truncated`.
    let mut vms = Vec::new();
    for _ in 0..vm_count {
        vms.push(r.vm()?);
    }
    let channel_count = r.count(MAX_CHANNELS)?;
    let mut channels = Vec::new();
    for _ in 0..channel_count {
        channels.push(r.channel()?);
    }
    let mut board = board;
    if r.pos != bytes.len() {
        board.management = r.management()?;
    }
    if r.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes(r.pos));
    }
    Ok(SystemConfig {
        board,
        vms,
        channels,
        disks,
        switches,
        pools,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let at = self.pos;
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError::Truncated(at))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u32` length, as `usize`. On a 32-bit host a length that does not
    /// fit cannot fit in the input either, so it reads as truncation.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated(at))
    }

    fn vm(&mut self) -> Result<VmConfig, DecodeError> {
        let name_len = self.len()?;
        let name = core::str::from_utf8(self.take(name_len)?).map_err(|_| DecodeError::BadName)?;
        let name = String::from(name);
        let image = self.u16()?;
        let memory = self.u64()?;
        let host_address = match self.u8()? {
            0 => None,
            1 => Some(self.u64()?),
            t => return Err(DecodeError::BadOptionTag(t)),
        };
        let pcpu_count = self.len()?;
        // Check the whole array is present before allocating for it.
        let raw = self.take(
            pcpu_count
                .checked_mul(2)
                .ok_or(DecodeError::Truncated(self.pos))?,
        )?;
        let pcpus = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let vcpus = self.u16()?;
        let pool = self.optional_u16()?;
        let weight = self.u32()?;
        let cap = match self.u8()? {
            0 => None,
            1 => Some(self.u8()?),
            t => return Err(DecodeError::BadOptionTag(t)),
        };
        let restart = match self.u8()? {
            0 => RestartPolicy::Never,
            1 => RestartPolicy::OnCrash,
            2 => RestartPolicy::Always,
            t => return Err(DecodeError::BadRestartPolicy(t)),
        };
        let criticality = match self.u8()? {
            0 => Criticality::Normal,
            1 => Criticality::Critical,
            t => return Err(DecodeError::BadCriticality(t)),
        };
        let initramfs = self.optional_u16()?;
        let dtb = self.optional_u16()?;
        let cmdline_len = self.len()?;
        let cmdline =
            core::str::from_utf8(self.take(cmdline_len)?).map_err(|_| DecodeError::BadCmdline)?;
        let count = self.count(MAX_PASSTHROUGH)?;
        let mut passthrough = Vec::new();
        for _ in 0..count {
            passthrough.push(self.passthrough()?);
        }
        let count = self.count(MAX_VM_DISKS)?;
        let mut disks = Vec::new();
        for _ in 0..count {
            disks.push(self.vm_disk()?);
        }
        let count = self.count(MAX_VM_NETS)?;
        let mut nets = Vec::new();
        for _ in 0..count {
            nets.push(self.vm_net()?);
        }
        Ok(VmConfig {
            name,
            image,
            memory,
            host_address,
            pcpus,
            pool,
            vcpus,
            weight,
            cap,
            restart,
            initramfs,
            dtb,
            cmdline: String::from(cmdline),
            passthrough,
            criticality,
            disks,
            nets,
        })
    }

    /// A string that must be UTF-8, else `err`.
    fn utf8(&mut self, err: DecodeError) -> Result<String, DecodeError> {
        let len = self.len()?;
        let s = core::str::from_utf8(self.take(len)?).map_err(|_| err)?;
        Ok(String::from(s))
    }

    fn disk(&mut self) -> Result<Disk, DecodeError> {
        let name = self.utf8(DecodeError::BadDiskText)?;
        let size = self.u64()?;
        let count = self.count(MAX_PARTITIONS)?;
        let mut partitions = Vec::new();
        for _ in 0..count {
            let name = self.utf8(DecodeError::BadDiskText)?;
            let size = self.u64()?;
            partitions.push(DiskPartition { name, size });
        }
        Ok(Disk {
            name,
            size,
            partitions,
        })
    }

    fn vm_disk(&mut self) -> Result<VmDisk, DecodeError> {
        let disk = self.u16()?;
        let offset = self.u64()?;
        let size = self.u64()?;
        let read_only = match self.u8()? {
            0 => false,
            1 => true,
            t => return Err(DecodeError::BadOptionTag(t)),
        };
        let serial = self.utf8(DecodeError::BadDiskText)?;
        let partition = match self.u8()? {
            0 => None,
            1 => Some(self.utf8(DecodeError::BadDiskText)?),
            t => return Err(DecodeError::BadOptionTag(t)),
        };
        Ok(VmDisk {
            disk,
            offset,
            size,
            partition,
            read_only,
            serial,
        })
    }

    fn switch(&mut self) -> Result<Switch, DecodeError> {
        let name = self.utf8(DecodeError::BadSwitchName)?;
        let uplink = match self.u8()? {
            0 => false,
            1 => true,
            t => return Err(DecodeError::BadOptionTag(t)),
        };
        Ok(Switch { name, uplink })
    }

    fn pool(&mut self) -> Result<Pool, DecodeError> {
        let name = self.utf8(DecodeError::BadPoolName)?;
        let count = self.count(MAX_POOL_PCPUS)?;
        let mut pcpus = Vec::new();
        for _ in 0..count {
            pcpus.push(self.u16()?);
        }
        Ok(Pool { name, pcpus })
    }

    fn vm_net(&mut self) -> Result<VmNet, DecodeError> {
        let switch = self.u16()?;
        let mac = self.array()?;
        Ok(VmNet { switch, mac })
    }

    /// The management endpoint after its tag byte, which must be 1.
    fn management(&mut self) -> Result<Option<crate::Management>, DecodeError> {
        match self.u8()? {
            1 => {
                let mut ip = [0; 4];
                ip.copy_from_slice(self.take(4)?);
                let prefix = self.u8()?;
                let mut store = [0; 4];
                store.copy_from_slice(self.take(4)?);
                let port = self.u16()?;
                Ok(Some(crate::Management {
                    ip,
                    prefix,
                    store: (store, port),
                }))
            }
            t => Err(DecodeError::BadOptionTag(t)),
        }
    }

    /// A presence byte and, if it is 1, a u16.
    fn optional_u16(&mut self) -> Result<Option<u16>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u16()?)),
            t => Err(DecodeError::BadOptionTag(t)),
        }
    }

    fn channel(&mut self) -> Result<Channel, DecodeError> {
        let len = self.len()?;
        let name =
            core::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::BadChannelName)?;
        let name = String::from(name);
        let vms = [self.u16()?, self.u16()?];
        let size = self.u64()?;
        Ok(Channel { name, vms, size })
    }

    /// A list count of at most `max`; anything more is no valid config
    /// (see [`validate`](crate::validate)), so it is refused before any
    /// work is done for it.
    fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.len()?;
        if n > max {
            return Err(DecodeError::TooMany(at));
        }
        Ok(n)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.len()?;
        let s =
            core::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::BadPassthroughText)?;
        Ok(String::from(s))
    }

    fn passthrough(&mut self) -> Result<Passthrough, DecodeError> {
        let name = self.text()?;
        let base = self.u64()?;
        let size = self.u64()?;
        let irq_count = self.count(MAX_PASSTHROUGH_IRQS)?;
        let mut irqs = Vec::new();
        for _ in 0..irq_count {
            irqs.push(self.u32()?);
        }
        let compatible_count = self.count(MAX_COMPATIBLE)?;
        let mut compatible = Vec::new();
        for _ in 0..compatible_count {
            compatible.push(self.text()?);
        }
        Ok(Passthrough {
            name,
            base,
            size,
            irqs,
            compatible,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> SystemConfig {
        SystemConfig {
            board: Board {
                cpus: 4,
                ram_base: 0x4000_0000,
                ram_size: 1 << 30,
                management: None,
            },
            vms: vec![
                VmConfig {
                    name: "safety".into(),
                    image: 0,
                    memory: 16 << 20,
                    host_address: Some(0x5000_0000),
                    pcpus: vec![0],
                    pool: None,
                    vcpus: 1,
                    weight: crate::DEFAULT_WEIGHT,
                    cap: None,
                    restart: RestartPolicy::Never,
                    criticality: Criticality::Critical,
                    initramfs: None,
                    dtb: None,
                    cmdline: "console=ttyAMA0".into(),
                    passthrough: vec![
                        Passthrough {
                            name: "rtc".into(),
                            base: 0x0901_0000,
                            size: 0x1000,
                            irqs: vec![34],
                            compatible: vec!["arm,pl031".into(), "arm,primecell".into()],
                        },
                        Passthrough {
                            name: "gpio".into(),
                            base: 0x1_0000_0000,
                            size: 0x2000,
                            irqs: vec![40, 41, 127],
                            compatible: vec!["arm,pl061".into()],
                        },
                    ],
                    disks: vec![],
                    nets: vec![],
                },
                VmConfig {
                    name: "infotainment".into(),
                    image: 1,
                    memory: 256 << 20,
                    host_address: None,
                    pcpus: vec![1, 2, 3],
                    pool: None,
                    vcpus: 3,
                    weight: crate::DEFAULT_WEIGHT,
                    cap: None,
                    restart: RestartPolicy::OnCrash,
                    criticality: Criticality::Normal,
                    initramfs: Some(2),
                    dtb: Some(3),
                    cmdline: "console=ttyAMA0 rdinit=/init quiet".into(),
                    passthrough: vec![Passthrough {
                        name: "bare".into(),
                        base: 0x0a00_0000,
                        size: 0x1000,
                        irqs: vec![],
                        compatible: vec![],
                    }],
                    disks: vec![
                        VmDisk {
                            disk: 0,
                            offset: 1 << 20,
                            size: 1 << 30,
                            partition: Some("root".into()),
                            read_only: false,
                            serial: "infotainment-disk0".into(),
                        },
                        VmDisk {
                            disk: 1,
                            offset: 0x1_0000_0200,
                            size: 512,
                            partition: None,
                            read_only: true,
                            serial: String::new(),
                        },
                        VmDisk {
                            disk: 1,
                            offset: 0,
                            size: 0,
                            partition: Some("Linux data 2".into()),
                            read_only: true,
                            serial: "x".into(),
                        },
                    ],
                    nets: vec![
                        VmNet {
                            switch: 0,
                            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
                        },
                        VmNet {
                            switch: u16::MAX,
                            mac: [0xff; 6],
                        },
                    ],
                },
                VmConfig {
                    name: "w".into(),
                    image: 1,
                    memory: 2 << 20,
                    host_address: None,
                    pcpus: vec![],
                    pool: Some(1),
                    vcpus: 8,
                    weight: 65535,
                    cap: Some(50),
                    restart: RestartPolicy::Always,
                    criticality: Criticality::Normal,
                    initramfs: Some(u16::MAX),
                    dtb: None,
                    cmdline: String::new(),
                    passthrough: vec![],
                    disks: vec![],
                    nets: vec![],
                },
            ],
            channels: vec![
                Channel {
                    name: "control".into(),
                    vms: [1, 0],
                    size: 4 << 10,
                },
                Channel {
                    name: "bulk-data_2".into(),
                    vms: [0, u16::MAX],
                    size: 1 << 20,
                },
            ],
            disks: vec![
                Disk {
                    name: "emmc".into(),
                    size: 8 << 30,
                    partitions: vec![
                        DiskPartition {
                            name: "root".into(),
                            size: 1 << 30,
                        },
                        DiskPartition {
                            name: "EFI system partition".into(),
                            size: u64::MAX,
                        },
                    ],
                },
                Disk {
                    name: "nvme-1".into(),
                    size: u64::MAX - 511,
                    partitions: vec![],
                },
            ],
            switches: vec![
                Switch {
                    name: "lan".into(),
                    uplink: true,
                },
                Switch {
                    name: "isolated_2".into(),
                    uplink: false,
                },
            ],
            pools: vec![
                Pool {
                    name: "general".into(),
                    pcpus: vec![1, 2],
                },
                Pool {
                    name: "big_2".into(),
                    pcpus: vec![u16::MAX, 0, 7, 3, 4, 5, 6, 8],
                },
            ],
        }
    }

    /// Bytes of the board's disks in [`sample`]'s encoding, count included:
    /// they follow the 12-byte header and 18-byte board.
    fn disks_len(cfg: &SystemConfig) -> usize {
        4 + cfg
            .disks
            .iter()
            .map(|d| {
                4 + d.name.len()
                    + 8
                    + 4
                    + d.partitions
                        .iter()
                        .map(|p| 4 + p.name.len() + 8)
                        .sum::<usize>()
            })
            .sum::<usize>()
    }

    /// Bytes of the switches in `cfg`'s encoding, count included: they
    /// follow the disks.
    fn switches_len(cfg: &SystemConfig) -> usize {
        4 + cfg
            .switches
            .iter()
            .map(|s| 4 + s.name.len() + 1)
            .sum::<usize>()
    }

    /// Where the pool count starts in `cfg`'s encoding: after the 12-byte
    /// header, the 18-byte board, the disks and the switches.
    fn pools_at(cfg: &SystemConfig) -> usize {
        12 + 18 + disks_len(cfg) + switches_len(cfg)
    }

    /// Bytes of the pools in `cfg`'s encoding, count included.
    fn pools_len(cfg: &SystemConfig) -> usize {
        4 + cfg
            .pools
            .iter()
            .map(|p| 4 + p.name.len() + 4 + 2 * p.pcpus.len())
            .sum::<usize>()
    }

    /// Where the VM count starts in `cfg`'s encoding: after the pools.
    fn vms_at(cfg: &SystemConfig) -> usize {
        pools_at(cfg) + pools_len(cfg)
    }

    /// [`sample`] without channels: its encoding ends with the last VM and
    /// a zero channel count (4 bytes).
    fn no_channels() -> SystemConfig {
        let mut cfg = sample();
        cfg.channels.clear();
        cfg
    }

    #[test]
    fn encode_then_decode_gives_back_the_same_config() {
        let cfg = sample();
        let bytes = encode(&cfg);
        assert_eq!(&bytes[..8], b"BHCFG001");
        assert_eq!(decode(&bytes), Ok(cfg));
    }

    #[test]
    fn config_with_no_vms_round_trips() {
        let cfg = SystemConfig {
            board: sample().board,
            vms: vec![],
            channels: vec![],
            disks: vec![],
            switches: vec![],
            pools: vec![],
        };
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn trailing_byte_is_an_error() {
        let mut bytes = encode(&sample());
        let len = bytes.len();
        // After the channels only a management endpoint (tag 1) may come.
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::BadOptionTag(0)));
        let mut cfg = sample();
        cfg.board.management = Some(crate::Management {
            ip: [10, 0, 2, 15],
            prefix: 24,
            store: ([10, 0, 2, 254], 7700),
        });
        let mut bytes = encode(&cfg);
        assert_eq!(decode(&bytes), Ok(cfg));
        let len2 = bytes.len();
        assert_eq!(len2, len + 12);
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(len2)));
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                // Either refused or decoded to something else; must not panic.
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn flipped_magic_version_and_tags_are_refused() {
        let bytes = encode(&no_channels());
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert_eq!(decode(&b), Err(DecodeError::BadMagic));
        let mut b = bytes.clone();
        b[8] = 11;
        assert_eq!(decode(&b), Err(DecodeError::UnsupportedVersion(11)));
        // The last VM ends with restart u8, criticality u8, initramfs tag
        // u8 + u16, dtb tag u8 (none), an empty command line (length u32),
        // no passthrough (count u32), no disks (count u32) and no nets
        // (count u32); then comes the channel count (u32). `n` is where the
        // disk count starts.
        let n = bytes.len() - 4 - 4 - 4;
        let mut b = bytes.clone();
        b[n - 4 - 4 - 1 - 3 - 1 - 1] = 9;
        assert_eq!(decode(&b), Err(DecodeError::BadRestartPolicy(9)));
        let mut b = bytes.clone();
        b[n - 4 - 4 - 1 - 3 - 1] = 2;
        assert_eq!(decode(&b), Err(DecodeError::BadCriticality(2)));
        let mut b = bytes.clone();
        b[n - 4 - 4 - 1 - 3] = 2;
        assert_eq!(decode(&b), Err(DecodeError::BadOptionTag(2)));
        let mut b = bytes.clone();
        b[n - 4 - 4 - 1] = 3;
        assert_eq!(decode(&b), Err(DecodeError::BadOptionTag(3)));
        // First VM's host-address tag: header 12 + board 18 + disks +
        // switches + pools + count 4 + name 4+6 + image 2 + memory 8.
        let at = vms_at(&no_channels()) + 4 + 4 + 6 + 2 + 8;
        let mut b = bytes;
        b[at] = 7;
        assert_eq!(decode(&b), Err(DecodeError::BadOptionTag(7)));
    }

    #[test]
    fn huge_counts_are_truncation_not_allocation() {
        let mut bytes = encode(&SystemConfig {
            board: sample().board,
            vms: vec![],
            channels: vec![],
            disks: vec![],
            switches: vec![],
            pools: vec![],
        });
        // The VM count, before the channel count.
        let n = bytes.len() - 4;
        bytes[n - 4..n].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Truncated(_))));

        // A VM whose pCPU count claims 4 billion entries.
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].pcpus.clear();
        cfg.vms[0].restart = RestartPolicy::Never;
        cfg.vms[0].cmdline.clear();
        cfg.vms[0].passthrough.clear();
        let mut bytes = encode(&cfg);
        // pcpu count, vcpus, pool tag, weight, cap tag, restart,
        // criticality, initramfs tag, dtb tag, empty command line, no
        // passthrough, no disks, no nets, no channels.
        let at = bytes.len() - 4 - 2 - 1 - 4 - 1 - 1 - 1 - 1 - 1 - 4 - 4 - 4 - 4 - 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated(at + 4)));
    }

    /// Random bytes behind a valid magic and version, from a fixed-seed
    /// xorshift so failures reproduce: a poor man's fuzzer.
    #[test]
    fn random_bodies_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut b = Vec::from(MAGIC);
            b.extend_from_slice(&VERSION.to_le_bytes());
            let len = (next() % 96) as usize;
            // Small values make the counts plausible often enough to reach
            // the VM decoder.
            b.extend((0..len).map(|_| (next() % 4) as u8));
            let _ = decode(&b);
        }
    }

    #[test]
    fn initramfs_and_cmdline_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.vms[0].initramfs, None);
        assert_eq!(back.vms[1].initramfs, Some(2));
        assert_eq!(back.vms[1].dtb, Some(3));
        assert_eq!(back.vms[2].dtb, None);
        assert_eq!(back.vms[1].cmdline, "console=ttyAMA0 rdinit=/init quiet");
        assert_eq!(back.vms[2].initramfs, Some(u16::MAX));
        assert_eq!(back.vms[2].cmdline, "");
    }

    #[test]
    fn huge_cmdline_length_is_truncation() {
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].cmdline.clear();
        cfg.vms[0].passthrough.clear();
        let mut bytes = encode(&cfg);
        // Before the passthrough, disk, net and channel counts.
        let n = bytes.len() - 4 - 4 - 4 - 4;
        bytes[n - 4..n].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated(n)));
    }

    #[test]
    fn non_utf8_cmdline_is_refused() {
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].cmdline = "ab".into();
        cfg.vms[0].passthrough.clear();
        let mut bytes = encode(&cfg);
        // The passthrough count ends at the disk count (then the net and
        // channel counts).
        let n = bytes.len() - 4 - 4 - 4;
        bytes[n - 4 - 1] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadCmdline));
    }

    #[test]
    fn older_versions_are_refused() {
        for old in [1u32, 2, 3, 4, 5, 6, 7, 8] {
            let mut bytes = encode(&sample());
            bytes[8..12].copy_from_slice(&old.to_le_bytes());
            assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion(old)));
        }
    }

    #[test]
    fn passthrough_devices_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.vms[0].passthrough, cfg.vms[0].passthrough);
        assert_eq!(back.vms[0].passthrough[1].base, 0x1_0000_0000);
        assert_eq!(back.vms[0].passthrough[1].irqs, [40, 41, 127]);
        assert_eq!(back.vms[1].passthrough[0].compatible, Vec::<String>::new());
        assert!(back.vms[2].passthrough.is_empty());
    }

    /// A config with one VM whose last field is one passthrough device with
    /// no compatible strings, and no channels, and the encoding of it.
    fn one_device() -> (SystemConfig, Vec<u8>) {
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].passthrough.truncate(1);
        cfg.vms[0].passthrough[0].compatible.clear();
        let bytes = encode(&cfg);
        (cfg, bytes)
    }

    #[test]
    fn passthrough_counts_above_the_limits_are_refused_before_reading() {
        let (_, bytes) = one_device();
        // The device ends before the VM's disk and net counts and the
        // channel count (4 bytes each).
        let n = bytes.len() - 4 - 4 - 4;
        // Compatible count: the VM's last 4 bytes.
        let mut b = bytes.clone();
        b[n - 4..n].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(n - 4)));
        let mut b = bytes.clone();
        b[n - 4..n].copy_from_slice(&(MAX_COMPATIBLE as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(n - 4)));
        // At the limit, it is truncation instead: the strings are missing
        // (the zero disk, net and channel counts read as three empty
        // strings).
        let mut b = bytes.clone();
        b[n - 4..n].copy_from_slice(&(MAX_COMPATIBLE as u32).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Truncated(n + 12)));
        // Irq count: before one irq (4) and the compatible count (4).
        let at = n - 4 - 4 - 4;
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&(MAX_PASSTHROUGH_IRQS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        // Device count: before the name (4 + 3), base, size, irq count and
        // irq, and compatible count.
        let at = n - 4 - 4 - 4 - 8 - 8 - 3 - 4 - 4;
        let mut b = bytes;
        assert_eq!(b[at..at + 4], 1u32.to_le_bytes());
        b[at..at + 4].copy_from_slice(&(MAX_PASSTHROUGH as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
    }

    #[test]
    fn non_utf8_passthrough_text_is_refused() {
        let (mut cfg, _) = one_device();
        cfg.vms[0].passthrough[0].compatible = vec!["a".into()];
        let mut bytes = encode(&cfg);
        let n = bytes.len() - 4 - 4 - 4;
        bytes[n - 1] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadPassthroughText));
    }

    #[test]
    fn channels_and_criticality_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.channels, cfg.channels);
        assert_eq!(back.channels[1].vms, [0, u16::MAX]);
        assert_eq!(back.channels[1].size, 1 << 20);
        assert_eq!(back.vms[0].criticality, Criticality::Critical);
        assert_eq!(back.vms[1].criticality, Criticality::Normal);
        // Every count up to the limit round-trips.
        let mut cfg = sample();
        cfg.channels = (0..MAX_CHANNELS as u16)
            .map(|k| Channel {
                name: alloc::format!("c{k}"),
                vms: [k, k + 1],
                size: 8 << 10,
            })
            .collect();
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    /// The encoding of [`sample`] with one channel named `name`, and the
    /// offset of the channel count.
    fn one_channel(name: &str) -> (Vec<u8>, usize) {
        let mut cfg = sample();
        cfg.channels.truncate(1);
        cfg.channels[0].name = name.into();
        let bytes = encode(&cfg);
        // count, name length and name, two ends, size.
        let at = bytes.len() - (4 + 4 + name.len() + 2 + 2 + 8);
        assert_eq!(bytes[at..at + 4], 1u32.to_le_bytes());
        (bytes, at)
    }

    #[test]
    fn channel_count_above_the_limit_is_refused_before_reading() {
        let (bytes, at) = one_channel("c");
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&(MAX_CHANNELS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        let mut b = bytes;
        b[at..at + 4].copy_from_slice(&(MAX_CHANNELS as u32).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Truncated(b.len())));
    }

    #[test]
    fn non_utf8_channel_name_is_refused() {
        let (mut bytes, at) = one_channel("ab");
        bytes[at + 4 + 4 + 1] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadChannelName));
    }

    #[test]
    fn non_utf8_name_is_refused() {
        let bytes = encode(&sample());
        let mut b = bytes;
        b[vms_at(&sample()) + 4 + 4] = 0xff;
        assert_eq!(decode(&b), Err(DecodeError::BadName));
    }

    #[test]
    fn disks_and_slices_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.disks, cfg.disks);
        assert_eq!(back.disks[1].size, u64::MAX - 511);
        assert_eq!(back.vms[1].disks, cfg.vms[1].disks);
        assert_eq!(back.vms[1].disks[1].offset, 0x1_0000_0200);
        assert!(back.vms[1].disks[1].read_only);
        assert!(!back.vms[1].disks[0].read_only);
        assert_eq!(back.vms[1].disks[0].serial, "infotainment-disk0");
        assert!(back.vms[0].disks.is_empty());
        // Every slice count up to the limit round-trips.
        let mut cfg = sample();
        cfg.vms[2].disks = (0..MAX_VM_DISKS as u16)
            .map(|k| VmDisk {
                disk: k,
                offset: u64::from(k) << 9,
                size: 512,
                partition: (k % 2 == 1).then(|| alloc::format!("p{k}")),
                read_only: k % 2 == 0,
                serial: alloc::format!("s{k}"),
            })
            .collect();
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    /// [`no_channels`] cut to its first VM with one disk slice serialled
    /// `serial` of `partition`, and its encoding; the slice ends the VM's
    /// disks, then come its net count and the channel count (4 bytes
    /// each).
    fn one_slice(serial: &str, partition: Option<&str>) -> Vec<u8> {
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].disks = vec![VmDisk {
            disk: 1,
            offset: 512,
            size: 1024,
            partition: partition.map(String::from),
            read_only: true,
            serial: serial.into(),
        }];
        encode(&cfg)
    }

    #[test]
    fn slice_count_above_the_limit_is_refused_before_reading() {
        let bytes = one_slice("", None);
        // count, disk u16, offset, size, read-only, empty serial, no
        // partition, nets, channels.
        let at = bytes.len() - (4 + 2 + 8 + 8 + 1 + 4 + 1 + 4 + 4);
        assert_eq!(bytes[at..at + 4], 1u32.to_le_bytes());
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&(MAX_VM_DISKS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        let mut b = bytes;
        b[at..at + 4].copy_from_slice(&(MAX_VM_DISKS as u32).to_le_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn read_only_byte_other_than_0_or_1_is_refused() {
        let mut bytes = one_slice("", None);
        let at = bytes.len() - (1 + 4 + 1 + 4 + 4);
        assert_eq!(bytes[at], 1);
        bytes[at] = 2;
        assert_eq!(decode(&bytes), Err(DecodeError::BadOptionTag(2)));
    }

    #[test]
    fn non_utf8_disk_name_or_serial_is_refused() {
        let mut bytes = one_slice("ab", None);
        // The serial's last byte, before the partition tag.
        let n = bytes.len() - 4 - 4 - 1;
        bytes[n - 1] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadDiskText));
        // The first disk's name, after its length.
        let mut bytes = encode(&sample());
        bytes[12 + 18 + 4 + 4] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadDiskText));
    }

    #[test]
    fn partitions_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.disks[0].partitions, cfg.disks[0].partitions);
        assert_eq!(back.disks[0].partitions[1].name, "EFI system partition");
        assert_eq!(back.disks[0].partitions[1].size, u64::MAX);
        assert!(back.disks[1].partitions.is_empty());
        assert_eq!(back.vms[1].disks[0].partition.as_deref(), Some("root"));
        assert_eq!(back.vms[1].disks[1].partition, None);
        assert_eq!(
            back.vms[1].disks[2].partition.as_deref(),
            Some("Linux data 2")
        );
        // Every partition count up to the limit round-trips, and an empty
        // partition name is still a partition.
        let mut cfg = sample();
        cfg.disks[1].partitions = (0..MAX_PARTITIONS as u64)
            .map(|k| DiskPartition {
                name: alloc::format!("part {k}"),
                size: k << 20,
            })
            .collect();
        cfg.vms[1].disks[1].partition = Some(String::new());
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    /// The encoding of a config whose only table is one disk `"d"` with
    /// one partition named `name`, and the offset of its partition count.
    fn one_partition(name: &str) -> (Vec<u8>, usize) {
        let bytes = encode(&SystemConfig {
            board: sample().board,
            vms: vec![],
            channels: vec![],
            disks: vec![Disk {
                name: "d".into(),
                size: 8 << 20,
                partitions: vec![DiskPartition {
                    name: name.into(),
                    size: 1 << 20,
                }],
            }],
            switches: vec![],
            pools: vec![],
        });
        // Header, board, disk count, the disk's name and size.
        let at = 12 + 18 + 4 + 4 + 1 + 8;
        assert_eq!(bytes[at..at + 4], 1u32.to_le_bytes());
        (bytes, at)
    }

    #[test]
    fn partition_count_above_the_limit_is_refused_before_reading() {
        let (bytes, at) = one_partition("a");
        for n in [MAX_PARTITIONS as u32 + 1, u32::MAX] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&n.to_le_bytes());
            assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        }
        // At the limit the partitions are missing: truncation.
        let mut b = bytes;
        b[at..at + 4].copy_from_slice(&(MAX_PARTITIONS as u32).to_le_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn non_utf8_or_huge_partition_names_are_refused() {
        let (mut bytes, at) = one_partition("ab");
        bytes[at + 4 + 4] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadDiskText));
        let (mut bytes, at) = one_partition("ab");
        bytes[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated(at + 8)));
        // A slice's partition name, before the net and channel counts.
        let mut bytes = one_slice("", Some("ab"));
        let n = bytes.len() - 4 - 4;
        bytes[n - 1] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadDiskText));
        let mut bytes = one_slice("", Some("ab"));
        let at = n - 2 - 4;
        assert_eq!(bytes[at - 1], 1, "the partition tag");
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated(at + 4)));
    }

    #[test]
    fn partition_tag_other_than_0_or_1_is_refused() {
        for partition in [None, Some("root")] {
            let mut bytes = one_slice("s", partition);
            // After the serial (length and one byte).
            let at = bytes.len() - 4 - 4 - partition.map_or(0, |p| 4 + p.len()) - 1;
            assert_eq!(bytes[at], u8::from(partition.is_some()));
            assert_eq!(bytes[at - 1], b's');
            bytes[at] = 2;
            assert_eq!(decode(&bytes), Err(DecodeError::BadOptionTag(2)));
        }
    }

    #[test]
    fn huge_disk_count_is_truncation_not_allocation() {
        let mut bytes = encode(&sample());
        bytes[12 + 18..12 + 18 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        // The disks past the real ones are read from what follows them,
        // until the bytes run out or a partition count is absurd.
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Truncated(_) | DecodeError::TooMany(_))
        ));
        // With nothing after the disks but zero counts, it is truncation.
        let mut cfg = sample();
        cfg.disks.truncate(1);
        cfg.disks[0].partitions.clear();
        cfg.switches.clear();
        cfg.pools.clear();
        cfg.vms.clear();
        cfg.channels.clear();
        let mut bytes = encode(&cfg);
        bytes[12 + 18..12 + 18 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn switches_and_nets_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.switches, cfg.switches);
        assert!(back.switches[0].uplink);
        assert!(!back.switches[1].uplink);
        assert_eq!(back.vms[1].nets, cfg.vms[1].nets);
        assert_eq!(
            back.vms[1].nets[0].mac,
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        );
        assert_eq!(back.vms[1].nets[1].switch, u16::MAX);
        assert!(back.vms[0].nets.is_empty());
        // Every net count up to the limit round-trips.
        let mut cfg = sample();
        cfg.vms[2].nets = (0..MAX_VM_NETS as u16)
            .map(|k| VmNet {
                switch: k,
                mac: [2, 0, 0, 0, 0, k as u8],
            })
            .collect();
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    /// [`no_channels`] cut to its first VM with one net, and its encoding;
    /// the net is the VM's last field, then comes the channel count (4
    /// bytes).
    fn one_net() -> Vec<u8> {
        let mut cfg = no_channels();
        cfg.vms.truncate(1);
        cfg.vms[0].nets = vec![VmNet {
            switch: 1,
            mac: [2, 0, 0, 0, 0, 1],
        }];
        encode(&cfg)
    }

    #[test]
    fn net_count_above_the_limit_is_refused_before_reading() {
        let bytes = one_net();
        // count, switch u16, mac, channels.
        let at = bytes.len() - (4 + 2 + 6 + 4);
        assert_eq!(bytes[at..at + 4], 1u32.to_le_bytes());
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&(MAX_VM_NETS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        // At the limit the nets are missing: truncation.
        let mut b = bytes;
        b[at..at + 4].copy_from_slice(&(MAX_VM_NETS as u32).to_le_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn uplink_byte_other_than_0_or_1_is_refused() {
        let cfg = sample();
        let mut bytes = encode(&cfg);
        // The first switch's uplink byte: after the switch count and its
        // name.
        let at = 12 + 18 + disks_len(&cfg) + 4 + 4 + cfg.switches[0].name.len();
        assert_eq!(bytes[at], 1);
        bytes[at] = 2;
        assert_eq!(decode(&bytes), Err(DecodeError::BadOptionTag(2)));
    }

    #[test]
    fn non_utf8_switch_name_is_refused() {
        let cfg = sample();
        let mut bytes = encode(&cfg);
        // The first byte of the first switch's name.
        bytes[12 + 18 + disks_len(&cfg) + 4 + 4] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadSwitchName));
    }

    #[test]
    fn huge_switch_count_is_truncation_not_allocation() {
        let cfg = sample();
        let mut bytes = encode(&cfg);
        let at = 12 + 18 + disks_len(&cfg);
        assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes());
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn pools_and_pool_vms_round_trip() {
        let cfg = sample();
        let back = decode(&encode(&cfg)).unwrap();
        assert_eq!(back.pools, cfg.pools);
        assert_eq!(back.pools[1].pcpus[0], u16::MAX);
        assert_eq!(back.pools[1].pcpus.len(), MAX_POOL_PCPUS);
        let w = &back.vms[2];
        assert_eq!(
            (w.pool, w.vcpus, w.weight, w.cap),
            (Some(1), 8, 65535, Some(50))
        );
        assert!(w.pooled());
        assert_eq!(w.vcpu_count(), 8);
        let safety = &back.vms[0];
        assert_eq!(
            (safety.pool, safety.vcpus, safety.weight, safety.cap),
            (None, 1, crate::DEFAULT_WEIGHT, None)
        );
        assert_eq!(back.vms[1].vcpu_count(), 3);
        // Every pool count up to the limit round-trips, and so do the
        // extremes of the VM fields.
        let mut cfg = sample();
        cfg.pools = (0..MAX_POOLS as u16)
            .map(|k| Pool {
                name: alloc::format!("p{k}"),
                pcpus: (0..k).collect(),
            })
            .collect();
        cfg.vms[0].pool = Some(u16::MAX);
        cfg.vms[0].vcpus = u16::MAX;
        cfg.vms[0].weight = u32::MAX;
        cfg.vms[0].cap = Some(u8::MAX);
        cfg.vms[1].weight = 0;
        cfg.vms[1].cap = Some(0);
        assert_eq!(decode(&encode(&cfg)), Ok(cfg));
    }

    #[test]
    fn pool_counts_above_the_limits_are_refused_before_reading() {
        let cfg = sample();
        let bytes = encode(&cfg);
        let at = pools_at(&cfg);
        assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes());
        for n in [MAX_POOLS as u32 + 1, u32::MAX] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&n.to_le_bytes());
            assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        }
        // The first pool's pCPU count: after its name.
        let at = at + 4 + 4 + cfg.pools[0].name.len();
        assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes());
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&(MAX_POOL_PCPUS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(DecodeError::TooMany(at)));
        // At the limit the pCPUs are read from what follows: not this pool.
        let mut b = bytes;
        b[at..at + 4].copy_from_slice(&(MAX_POOL_PCPUS as u32).to_le_bytes());
        assert_ne!(decode(&b), Ok(cfg));
    }

    #[test]
    fn non_utf8_pool_name_is_refused() {
        let cfg = sample();
        let mut bytes = encode(&cfg);
        bytes[pools_at(&cfg) + 4 + 4] = 0xff;
        assert_eq!(decode(&bytes), Err(DecodeError::BadPoolName));
    }

    #[test]
    fn pool_and_cap_tags_other_than_0_or_1_are_refused() {
        // The last VM of [`no_channels`], `w`, is in pool 1 with a cap.
        // Before its restart byte come its vcpus u16, pool tag and u16, weight u32, cap tag
        // and u8; after it the criticality, the initramfs tag and u16, the
        // dtb tag, an empty command line and the passthrough, disk, net
        // and channel counts.
        let bytes = encode(&no_channels());
        let restart = bytes.len() - 4 * 4 - 4 - 1 - 3 - 1 - 1;
        assert_eq!(bytes[restart], 2, "always");
        let cap = restart - 2;
        assert_eq!(bytes[cap..restart], [1, 50]);
        let pool = cap - 4 - 3;
        assert_eq!(bytes[pool..pool + 3], [1, 1, 0]);
        assert_eq!(bytes[pool - 2..pool], 8u16.to_le_bytes(), "vcpus");
        for (at, tag) in [(cap, 2), (pool, 7)] {
            let mut b = bytes.clone();
            b[at] = tag;
            assert_eq!(decode(&b), Err(DecodeError::BadOptionTag(tag)));
        }
        // Without a pool or cap, only the tags are written.
        let mut cfg = no_channels();
        cfg.vms[2].pool = None;
        cfg.vms[2].cap = None;
        let short = encode(&cfg);
        assert_eq!(short.len(), bytes.len() - 2 - 1);
        assert_eq!(decode(&short), Ok(cfg));
    }
}
