//! The rules a [`SystemConfig`] must satisfy before it boots.

use alloc::format;
use alloc::vec::Vec;

use crate::{
    partition_layout, Channel, Criticality, Disk, Field, ImageInfo, Mac, Passthrough, Pool,
    Problem, Size, Switch, SystemConfig, VmConfig, VmDisk, VmNet, BLOCK_SIZE, CHANNEL_FIRST_SPI,
    DEFAULT_WEIGHT, DTB_RESERVE, FIRST_SPI, HYP_OWNED_MMIO, HYP_RESERVE, LAST_VM_SPI, LINUX_SLACK,
    MAX_CAP, MAX_CHANNELS, MAX_CHANNEL_SIZE, MAX_CMDLINE_LEN, MAX_COMPATIBLE, MAX_COMPATIBLE_LEN,
    MAX_NAME_LEN, MAX_PARTITIONS, MAX_PARTITION_NAME_LEN, MAX_PASSTHROUGH, MAX_PASSTHROUGH_IRQS,
    MAX_PCPUS, MAX_POOLS, MAX_POOL_PCPUS, MAX_SERIAL_LEN, MAX_UPLINKS, MAX_VCPUS, MAX_VIRTIO,
    MAX_VM_DISKS, MAX_VM_NETS, MAX_WEIGHT, MIN_CHANNEL_SIZE, PAGE_SIZE, PARTITION_ALIGN, RAM_IPA,
    SECTOR_SIZE, UART_INTID, VIRTIO_INTIDS,
};

/// Checks `cfg` against every rule and returns what is wrong; empty means
/// valid. `images[i]` describes payload image `i` ([`ImageInfo::of`]).
///
/// Each [`Problem`] names the most specific field. A rule between two VMs
/// (duplicate name, overlapping region, shared pCPU, duplicate MAC address)
/// is reported on the later VM and names the earlier one; likewise between
/// two channels, disks, switches or pools. A pCPU both dedicated to a VM
/// and in a pool is reported on the VM's `pcpus` and names the pool.
pub fn validate(cfg: &SystemConfig, images: &[ImageInfo]) -> Vec<Problem> {
    let mut v = Validator {
        cfg,
        problems: Vec::new(),
    };
    v.board();
    for (i, vm) in cfg.vms.iter().enumerate() {
        v.name(i, vm);
        v.memory(i, vm);
        v.host_address(i, vm);
        v.pcpus(i, vm);
        v.vm_pool(i, vm);
        v.image(i, vm, images);
        v.cmdline(i, vm);
        v.passthrough(i, vm);
        v.vm_disks(i, vm);
        v.vm_nets(i, vm);
    }
    v.total_memory();
    v.pools();
    v.critical_pcpus();
    v.channels();
    v.disks();
    v.switches();
    v.management();
    v.problems
}

struct Validator<'a> {
    cfg: &'a SystemConfig,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    /// The management endpoint: its store must be on its link (there is
    /// no router), and its MAC must not be a VM's.
    fn management(&mut self) {
        let Some(m) = self.cfg.board.management else {
            return;
        };
        let mask = u32::MAX << (32 - u32::from(m.prefix.clamp(1, 32)));
        let (ip, store) = (u32::from_be_bytes(m.ip), u32::from_be_bytes(m.store.0));
        if ip & mask != store & mask {
            let [a, b, c, d] = m.store.0;
            let [w, x, y, z] = m.ip;
            self.report(
                Field::Board("store"),
                format!(
                    "the store {a}.{b}.{c}.{d} is not on the management link {w}.{x}.{y}.{z}/{}: \
                     the hypervisor does not route",
                    m.prefix
                ),
            );
        } else if ip == store {
            self.report(
                Field::Board("store"),
                "the store has the hypervisor's own address".into(),
            );
        }
        let mac = m.mac();
        for (i, vm) in self.cfg.vms.iter().enumerate() {
            for (k, n) in vm.nets.iter().enumerate() {
                if n.mac == mac {
                    self.report(
                        Field::VmNet(i, k, "mac"),
                        format!(
                            "MAC {mac:02x?} is the management endpoint's (02:62:68 and the low \
                             three bytes of board.address)"
                        ),
                    );
                }
            }
        }
    }
}

fn aligned(x: u64) -> bool {
    x.is_multiple_of(BLOCK_SIZE)
}

/// Is `name` 1 to [`MAX_NAME_LEN`] of `[a-z0-9_-]`?
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Is `name` 1 to [`MAX_PARTITION_NAME_LEN`] printable ASCII characters
/// (space included), as a GPT partition name?
fn valid_partition_name(name: &str) -> bool {
    (1..=MAX_PARTITION_NAME_LEN).contains(&name.len())
        && name.bytes().all(|c| c.is_ascii_graphic() || c == b' ')
}

/// The names of `disk`'s partitions, quoted and comma-separated, for
/// messages.
fn partition_names(disk: &Disk) -> alloc::string::String {
    let names: Vec<_> = disk
        .partitions
        .iter()
        .map(|p| format!("{:?}", p.name))
        .collect();
    names.join(", ")
}

/// Devices given before device `d` of VM `i`, with their owner's name.
fn earlier_devices(
    cfg: &SystemConfig,
    i: usize,
    d: usize,
) -> impl Iterator<Item = (&str, &Passthrough)> {
    let vms = cfg.vms.get(..=i).unwrap_or(&[]);
    vms.iter().enumerate().flat_map(move |(j, o)| {
        let n = if j == i { d } else { o.passthrough.len() };
        o.passthrough
            .iter()
            .take(n)
            .map(move |p| (o.name.as_str(), p))
    })
}

/// Disk slices given before slice `d` of VM `i`, with their owner's name
/// and their own index in that VM.
fn earlier_slices(
    cfg: &SystemConfig,
    i: usize,
    d: usize,
) -> impl Iterator<Item = (&str, usize, &VmDisk)> {
    let vms = cfg.vms.get(..=i).unwrap_or(&[]);
    vms.iter().enumerate().flat_map(move |(j, o)| {
        let n = if j == i { d } else { o.disks.len() };
        o.disks
            .iter()
            .take(n)
            .enumerate()
            .map(move |(k, s)| (o.name.as_str(), k, s))
    })
}

/// Nets given before net `k` of VM `i`, with their owner's name and their
/// own index in that VM.
fn earlier_nets(
    cfg: &SystemConfig,
    i: usize,
    k: usize,
) -> impl Iterator<Item = (&str, usize, &VmNet)> {
    let vms = cfg.vms.get(..=i).unwrap_or(&[]);
    vms.iter().enumerate().flat_map(move |(j, o)| {
        let n = if j == i { k } else { o.nets.len() };
        o.nets
            .iter()
            .take(n)
            .enumerate()
            .map(move |(m, net)| (o.name.as_str(), m, net))
    })
}

/// `read-only` or `read-write`, as a slice is described in messages.
fn access(slice: &VmDisk) -> &'static str {
    if slice.read_only {
        "read-only"
    } else {
        "read-write"
    }
}

/// Why `key` (`weight`, `cap`) is refused on a VM with dedicated pCPUs.
/// The TOML front end says the same when the key is written at all.
pub(crate) fn pool_only(key: &str) -> alloc::string::String {
    format!(
        "`{key}` applies to pool VMs, whose vCPUs share a pool's pCPUs; this VM has dedicated \
         `pcpus` to itself: drop `{key}`, or put the VM in a `pool`"
    )
}

/// The SPIs every VM's channel doorbells may use.
const CHANNEL_SPIS: core::ops::RangeInclusive<u32> =
    CHANNEL_FIRST_SPI..=CHANNEL_FIRST_SPI + MAX_CHANNELS as u32 - 1;

/// Do the half-open ranges `[a, a+alen)` and `[b, b+blen)` overlap?
/// Empty ranges overlap nothing. Saturating ends: an overflowing region is
/// reported separately (it cannot lie inside board RAM).
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen != 0 && blen != 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

impl Validator<'_> {
    fn report(&mut self, field: Field, message: alloc::string::String) {
        self.problems.push(Problem { field, message });
    }

    fn board(&mut self) {
        let b = &self.cfg.board;
        if self.cfg.vms.is_empty() {
            self.report(
                Field::Board("vms"),
                "the config has no VMs; it needs at least one".into(),
            );
        }
        if b.cpus == 0 || b.cpus > MAX_PCPUS {
            self.report(
                Field::Board("cpus"),
                format!(
                    "the board has {} CPUs; it must have 1 to {MAX_PCPUS}",
                    b.cpus
                ),
            );
        }
        if !aligned(b.ram_base) {
            self.report(
                Field::Board("ram_base"),
                format!("RAM base {:#x} is not 2 MiB aligned", b.ram_base),
            );
        }
        if b.ram_size == 0 {
            self.report(Field::Board("ram_size"), "RAM size is zero".into());
        } else if !aligned(b.ram_size) {
            self.report(
                Field::Board("ram_size"),
                format!(
                    "RAM size {:#x} ({}) is not a multiple of 2 MiB",
                    b.ram_size,
                    Size(b.ram_size)
                ),
            );
        } else if b.ram_base.checked_add(b.ram_size).is_none() {
            self.report(
                Field::Board("ram_size"),
                format!(
                    "RAM at {:#x} of size {:#x} runs past the end of the address space",
                    b.ram_base, b.ram_size
                ),
            );
        }
    }

    fn name(&mut self, i: usize, vm: &VmConfig) {
        let name = &vm.name;
        let valid_chars = name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            self.report(
                Field::Vm(i, "name"),
                format!(
                    "name '{name}' is {} bytes long; it must be 1 to {MAX_NAME_LEN}",
                    name.len()
                ),
            );
        } else if !valid_chars {
            self.report(
                Field::Vm(i, "name"),
                format!("name '{name}' may only use a-z, 0-9, '_' and '-'"),
            );
        }
        if let Some(j) = self.cfg.vms[..i].iter().position(|o| o.name == *name) {
            self.report(
                Field::Vm(i, "name"),
                format!("name '{name}' is already used by vm[{j}]"),
            );
        }
    }

    fn memory(&mut self, i: usize, vm: &VmConfig) {
        if vm.memory == 0 {
            self.report(Field::Vm(i, "memory"), "memory is zero".into());
        } else if !aligned(vm.memory) {
            self.report(
                Field::Vm(i, "memory"),
                format!(
                    "memory {:#x} ({}) is not a multiple of 2 MiB",
                    vm.memory,
                    Size(vm.memory)
                ),
            );
        }
    }

    fn host_address(&mut self, i: usize, vm: &VmConfig) {
        let Some(addr) = vm.host_address else {
            return;
        };
        let field = Field::Vm(i, "host_address");
        let b = &self.cfg.board;
        if !aligned(addr) {
            self.report(
                field,
                format!("host address {addr:#x} is not 2 MiB aligned"),
            );
        }
        let ram_end = b.ram_base.saturating_add(b.ram_size);
        let end = addr.checked_add(vm.memory);
        if addr < b.ram_base || end.is_none_or(|end| end > ram_end) {
            self.report(
                field,
                format!(
                    "region {addr:#x}..{:#x} ({}) is outside board RAM {:#x}..{ram_end:#x}",
                    addr.wrapping_add(vm.memory),
                    Size(vm.memory),
                    b.ram_base
                ),
            );
        }
        if overlaps(addr, vm.memory, b.ram_base, HYP_RESERVE) {
            self.report(
                field,
                format!(
                    "region {addr:#x}..{:#x} overlaps the hypervisor's reserved {} at {:#x}..{:#x}",
                    addr.saturating_add(vm.memory),
                    Size(HYP_RESERVE),
                    b.ram_base,
                    b.ram_base.saturating_add(HYP_RESERVE)
                ),
            );
        }
        for other in &self.cfg.vms[..i] {
            let Some(oaddr) = other.host_address else {
                continue;
            };
            if overlaps(addr, vm.memory, oaddr, other.memory) {
                self.report(
                    field,
                    format!(
                        "region {addr:#x}..{:#x} overlaps vm '{}' at {oaddr:#x}..{:#x}",
                        addr.saturating_add(vm.memory),
                        other.name,
                        oaddr.saturating_add(other.memory)
                    ),
                );
            }
        }
    }

    /// The VM's dedicated pCPUs: 1 to [`MAX_VCPUS`] unless it is in a
    /// pool, each on the board, given to one vCPU in the system and in no
    /// pool.
    fn pcpus(&mut self, i: usize, vm: &VmConfig) {
        let field = Field::Vm(i, "pcpus");
        let n = vm.pcpus.len();
        if n == 0 && !vm.pooled() {
            self.report(
                field,
                "0 vCPUs: list the VM's pCPUs in `pcpus`, or name a `pool` (with `vcpus`) for it \
                 to share"
                    .into(),
            );
        } else if n > MAX_VCPUS {
            self.report(field, format!("{n} vCPUs; a VM must have 1 to {MAX_VCPUS}"));
        }
        let cpus = self.cfg.board.cpus;
        for (vcpu, &cpu) in vm.pcpus.iter().enumerate() {
            if cpu >= cpus {
                self.report(
                    field,
                    format!("vCPU {vcpu} is pinned to cpu{cpu} but the board has {cpus} CPUs"),
                );
            }
            // Earlier VMs, then earlier vCPUs of this VM: report each clash
            // once, on its later use.
            let earlier = self.cfg.vms[..i]
                .iter()
                .find(|o| o.pcpus.contains(&cpu))
                .or_else(|| vm.pcpus[..vcpu].contains(&cpu).then_some(vm));
            if let Some(owner) = earlier {
                self.report(
                    field,
                    format!("cpu{cpu} is already given to vm '{}'", owner.name),
                );
            } else if let Some((k, pool)) = self.cfg.pool_of(cpu) {
                self.report(
                    field,
                    format!(
                        "cpu{cpu} is dedicated to vm '{}' but is also in pool[{k}] '{}'; a pCPU \
                         is either one VM's or a pool's",
                        vm.name, pool.name
                    ),
                );
            }
        }
    }

    /// The VM's pool, vCPU count, weight and cap: a pool VM is in a pool
    /// that exists, has no dedicated pCPUs, is not critical and has 1 to
    /// [`MAX_VCPUS`] vCPUs; a VM with dedicated pCPUs has one vCPU on each,
    /// and no weight or cap of its own, which only a pool's scheduler
    /// uses.
    fn vm_pool(&mut self, i: usize, vm: &VmConfig) {
        let Some(pool) = vm.pool else {
            // A VM with no pCPUs at all is `pcpus`' to report.
            if vm.pcpus.is_empty() {
                return;
            }
            let n = vm.pcpus.len();
            if usize::from(vm.vcpus) != n {
                self.report(
                    Field::Vm(i, "vcpus"),
                    format!(
                        "vcpus = {} but `pcpus` lists {n} pCPUs; a VM with dedicated pCPUs has \
                         one vCPU on each",
                        vm.vcpus
                    ),
                );
            }
            if vm.weight != DEFAULT_WEIGHT {
                self.report(Field::Vm(i, "weight"), pool_only("weight"));
            }
            if vm.cap.is_some() {
                self.report(Field::Vm(i, "cap"), pool_only("cap"));
            }
            return;
        };
        let field = Field::Vm(i, "pool");
        if !vm.pcpus.is_empty() {
            self.report(
                field,
                "a VM has either dedicated `pcpus` or a `pool` whose pCPUs it shares, not both"
                    .into(),
            );
        }
        let pools = &self.cfg.pools;
        if usize::from(pool) >= pools.len() {
            self.report(
                field,
                format!(
                    "pool {pool} does not exist; the config has {} pools",
                    pools.len()
                ),
            );
        }
        if vm.criticality == Criticality::Critical {
            self.report(
                field,
                "a critical VM keeps dedicated pCPUs: give it `pcpus` instead of a `pool`, or \
                 make it criticality = \"normal\""
                    .into(),
            );
        }
        let n = usize::from(vm.vcpus);
        if n == 0 || n > MAX_VCPUS {
            self.report(
                Field::Vm(i, "vcpus"),
                format!("{n} vCPUs; a VM in a pool needs `vcpus`, 1 to {MAX_VCPUS}"),
            );
        }
        if vm.weight == 0 || vm.weight > MAX_WEIGHT {
            self.report(
                Field::Vm(i, "weight"),
                format!(
                    "weight {} must be 1 to {MAX_WEIGHT} (default {DEFAULT_WEIGHT}): each vCPU's \
                     share of the pool relative to the others'",
                    vm.weight
                ),
            );
        }
        if let Some(cap) = vm.cap {
            if cap == 0 || cap > MAX_CAP {
                self.report(
                    Field::Vm(i, "cap"),
                    format!(
                        "cap {cap} must be 1 to {MAX_CAP}: the most percent of one pCPU each \
                         vCPU may use"
                    ),
                );
            }
        }
    }

    fn image(&mut self, i: usize, vm: &VmConfig, images: &[ImageInfo]) {
        if let Some(index) = vm.dtb {
            match self.image_info(i, "dtb", index, images) {
                Some(_) if vm.initramfs.is_some() => self.report(
                    Field::Vm(i, "dtb"),
                    "a device tree you give is passed as it is, so it cannot tell the guest where \
                     the initramfs was loaded: drop `dtb` (the generated tree names the initramfs) \
                     or the initramfs"
                        .into(),
                ),
                Some(dtb) if dtb.len > DTB_RESERVE => self.report(
                    Field::Vm(i, "dtb"),
                    format!(
                        "the device tree is {} long; a VM's device tree may be at most {}",
                        Size(dtb.len),
                        Size(DTB_RESERVE)
                    ),
                ),
                _ => {}
            }
        }
        let Some(kernel) = self.image_info(i, "image", vm.image, images) else {
            return;
        };
        let initramfs = match vm.initramfs {
            Some(index) => match self.image_info(i, "initramfs", index, images) {
                Some(info) => info.len,
                None => return,
            },
            None => 0,
        };
        let image_end = kernel.load_offset.saturating_add(kernel.mem_size);
        if !vm.boots_linux() {
            // A bare-metal image is copied to RAM_IPA + its load offset and
            // must fit in the rest of the VM's memory.
            if image_end > vm.memory {
                self.report(
                    Field::Vm(i, "memory"),
                    format!(
                        "image is larger than its VM: memory {:#x} ({}) is smaller than its image ({} + load offset {:#x})",
                        vm.memory,
                        Size(vm.memory),
                        Size(kernel.mem_size),
                        kernel.load_offset
                    ),
                );
            }
            return;
        }
        // A Linux VM holds its kernel (image_size from the header, which
        // covers the BSS), the initramfs, the device tree and alignment slack.
        let need = image_end
            .saturating_add(initramfs)
            .saturating_add(DTB_RESERVE)
            .saturating_add(LINUX_SLACK);
        if need > vm.memory {
            self.report(
                Field::Vm(i, "memory"),
                format!(
                    "image is larger than its VM: memory {:#x} ({}) is smaller than kernel {} + load offset {:#x} + initramfs {} + device tree {} + slack {} = {}",
                    vm.memory,
                    Size(vm.memory),
                    Size(kernel.mem_size),
                    kernel.load_offset,
                    Size(initramfs),
                    Size(DTB_RESERVE),
                    Size(LINUX_SLACK),
                    Size(need)
                ),
            );
        }
    }

    /// The image `index` refers to, or a problem on `field` if there is none.
    fn image_info(
        &mut self,
        i: usize,
        field: &'static str,
        index: u16,
        images: &[ImageInfo],
    ) -> Option<ImageInfo> {
        let info = images.get(usize::from(index)).copied();
        if info.is_none() {
            self.report(
                Field::Vm(i, field),
                format!(
                    "image {index} does not exist; the payload has {} images",
                    images.len()
                ),
            );
        }
        info
    }

    fn cmdline(&mut self, i: usize, vm: &VmConfig) {
        let len = vm.cmdline.len();
        if len > MAX_CMDLINE_LEN {
            self.report(
                Field::Vm(i, "cmdline"),
                format!(
                    "the command line is {len} bytes long; it may be at most {MAX_CMDLINE_LEN}"
                ),
            );
        }
        // The device tree stores it as a NUL-terminated string (Devicetree
        // Specification 0.4, 2.2.4 "<string>").
        if vm.cmdline.contains('\0') {
            self.report(
                Field::Vm(i, "cmdline"),
                "the command line contains a NUL byte".into(),
            );
        }
    }

    /// Passthrough devices of VM `i`: each range is page aligned and owned
    /// by nobody else (board RAM, the hypervisor's MMIO, the VM's own RAM
    /// in its IPA space, another device); each irq is a VM SPI owned by
    /// nobody else. Clashes are reported on the later device and name the
    /// earlier owner.
    fn passthrough(&mut self, i: usize, vm: &VmConfig) {
        if vm.pooled() && !vm.passthrough.is_empty() {
            self.report(
                Field::Vm(i, "passthrough"),
                "a passthrough device's interrupts go to one pCPU, and a pool VM's vCPUs move between pCPUs: give the VM dedicated `pcpus`".into(),
            );
        }
        if vm.passthrough.len() > MAX_PASSTHROUGH {
            self.report(
                Field::Vm(i, "passthrough"),
                format!(
                    "{} passthrough devices; a VM may have at most {MAX_PASSTHROUGH}",
                    vm.passthrough.len()
                ),
            );
        }
        for (d, dev) in vm.passthrough.iter().enumerate() {
            let field = |name| Field::Passthrough(i, d, name);
            if !valid_name(&dev.name) {
                self.report(
                    field("name"),
                    format!(
                        "device name '{}' must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '_' and '-'",
                        dev.name
                    ),
                );
            }
            self.passthrough_range(i, vm, d, dev);
            self.passthrough_irqs(i, d, dev);
            self.compatible(field("compatible"), dev);
        }
    }

    fn passthrough_range(&mut self, i: usize, vm: &VmConfig, d: usize, dev: &Passthrough) {
        let base_field = Field::Passthrough(i, d, "base");
        let size_field = Field::Passthrough(i, d, "size");
        let (base, size) = (dev.base, dev.size);
        if !base.is_multiple_of(PAGE_SIZE) {
            self.report(base_field, format!("base {base:#x} is not 4 KiB aligned"));
        }
        if size == 0 {
            self.report(size_field, "size is zero".into());
            return;
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            self.report(
                size_field,
                format!("size {size:#x} is not a multiple of 4 KiB"),
            );
        }
        let Some(end) = base.checked_add(size) else {
            self.report(
                size_field,
                format!(
                    "range at {base:#x} of size {size:#x} runs past the end of the address space"
                ),
            );
            return;
        };
        let b = &self.cfg.board;
        let ram_end = b.ram_base.saturating_add(b.ram_size);
        if overlaps(base, size, b.ram_base, b.ram_size) {
            self.report(
                base_field,
                format!(
                    "range {base:#x}..{end:#x} overlaps board RAM {:#x}..{ram_end:#x}",
                    b.ram_base
                ),
            );
        }
        // The VM's RAM occupies these IPAs, and the device is mapped at
        // IPA == PA (only distinct from board RAM when the board's RAM
        // lies elsewhere).
        if overlaps(base, size, RAM_IPA, vm.memory) && !overlaps(base, size, b.ram_base, b.ram_size)
        {
            self.report(
                base_field,
                format!(
                    "range {base:#x}..{end:#x} overlaps the VM's own RAM at {RAM_IPA:#x}..{:#x}",
                    RAM_IPA.saturating_add(vm.memory)
                ),
            );
        }
        for &(start, stop, what) in HYP_OWNED_MMIO {
            if overlaps(base, size, start, stop - start) {
                self.report(
                    base_field,
                    format!(
                        "range {base:#x}..{end:#x}: {start:#x}..{stop:#x} is the {what}, which the hypervisor owns"
                    ),
                );
            }
        }
        let clash = earlier_devices(self.cfg, i, d)
            .find(|(_, o)| overlaps(base, size, o.base, o.size))
            .map(|(owner, o)| {
                format!(
                    "range {base:#x}..{end:#x}: {:#x}..{:#x} is already given to vm '{owner}' ({})",
                    o.base,
                    o.end(),
                    o.name
                )
            });
        if let Some(message) = clash {
            self.report(base_field, message);
        }
    }

    fn passthrough_irqs(&mut self, i: usize, d: usize, dev: &Passthrough) {
        let field = Field::Passthrough(i, d, "irqs");
        if dev.irqs.len() > MAX_PASSTHROUGH_IRQS {
            self.report(
                field,
                format!(
                    "{} irqs; a device may have at most {MAX_PASSTHROUGH_IRQS}",
                    dev.irqs.len()
                ),
            );
        }
        for (k, &irq) in dev.irqs.iter().enumerate() {
            if !(FIRST_SPI..=LAST_VM_SPI).contains(&irq) {
                self.report(
                    field,
                    format!(
                        "irq {irq} is not an SPI the VM's GIC has; it must be {FIRST_SPI} to {LAST_VM_SPI}"
                    ),
                );
                continue;
            }
            if irq == UART_INTID {
                self.report(
                    field,
                    format!("irq {irq} is the virtual UART's, which the hypervisor owns"),
                );
                continue;
            }
            if VIRTIO_INTIDS.contains(&irq) {
                self.report(
                    field,
                    format!(
                        "irq {irq} is reserved for the virtio-mmio devices ({} to {})",
                        VIRTIO_INTIDS.start,
                        VIRTIO_INTIDS.end - 1
                    ),
                );
                continue;
            }
            if CHANNEL_SPIS.contains(&irq) {
                self.report(
                    field,
                    format!(
                        "irq {irq} is reserved for channel doorbells ({} to {})",
                        CHANNEL_SPIS.start(),
                        CHANNEL_SPIS.end()
                    ),
                );
                continue;
            }
            let cfg = self.cfg;
            let owner = earlier_devices(cfg, i, d)
                .find(|(_, o)| o.irqs.contains(&irq))
                .map(|(owner, _)| owner)
                .or_else(|| {
                    dev.irqs
                        .iter()
                        .take(k)
                        .any(|&o| o == irq)
                        .then(|| cfg.vms.get(i).map_or("", |v| v.name.as_str()))
                });
            if let Some(owner) = owner {
                self.report(field, format!("irq {irq} is already given to vm '{owner}'"));
            }
        }
    }

    fn compatible(&mut self, field: Field, dev: &Passthrough) {
        let n = dev.compatible.len();
        if n == 0 || n > MAX_COMPATIBLE {
            self.report(
                field,
                format!("{n} compatible strings; a device needs 1 to {MAX_COMPATIBLE}"),
            );
        }
        // The device tree stores them as a NUL-separated string list
        // (Devicetree Specification 0.4, 2.2.4 "<stringlist>").
        for c in &dev.compatible {
            let printable = c.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if c.is_empty() || c.len() > MAX_COMPATIBLE_LEN || !printable {
                self.report(
                    field,
                    format!(
                        "compatible {c:?} must be 1 to {MAX_COMPATIBLE_LEN} printable ASCII characters"
                    ),
                );
            }
        }
    }

    /// The hypervisor's housekeeping never runs on a critical VM's pCPU,
    /// so at least one of the board's pCPUs must be free of critical VMs.
    /// A pool's pCPUs are (critical VMs are in no pool).
    fn critical_pcpus(&mut self) {
        let cfg = self.cfg;
        let critical = |cpu: u16| {
            cfg.pool_of(cpu).is_none()
                && cfg
                    .vms
                    .iter()
                    .any(|vm| vm.criticality == Criticality::Critical && vm.pcpus.contains(&cpu))
        };
        let cpus = self.cfg.board.cpus;
        // A board without CPUs is reported on its own.
        if cpus > 0 && (0..cpus).all(critical) {
            self.report(
                Field::Board("cpus"),
                "no pCPU left for the hypervisor's console and shell: every pCPU runs a critical VM"
                    .into(),
            );
        }
    }

    /// The CPU pools: at most [`MAX_POOLS`], each with a valid, unique
    /// name and 1 to [`MAX_POOL_PCPUS`] pCPUs of the board, each listed
    /// once and in no other pool. A clash is reported on the later pool
    /// and names the earlier one. A pool no VM uses is fine.
    fn pools(&mut self) {
        let pools = &self.cfg.pools;
        if pools.len() > MAX_POOLS {
            self.report(
                Field::Board("pools"),
                format!(
                    "{} pools; a system may have at most {MAX_POOLS}",
                    pools.len()
                ),
            );
        }
        for (k, pool) in pools.iter().enumerate() {
            self.pool(k, pool);
        }
    }

    fn pool(&mut self, k: usize, pool: &Pool) {
        let field = Field::Pool(k, "name");
        let name = &pool.name;
        let earlier = &self.cfg.pools[..k];
        if !valid_name(name) {
            self.report(
                field,
                format!("pool name '{name}' must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '_' and '-'"),
            );
        }
        if let Some(j) = earlier.iter().position(|o| o.name == *name) {
            self.report(field, format!("name '{name}' is already used by pool[{j}]"));
        }
        let field = Field::Pool(k, "pcpus");
        let n = pool.pcpus.len();
        if n == 0 || n > MAX_POOL_PCPUS {
            self.report(
                field,
                format!("{n} pCPUs; a pool shares 1 to {MAX_POOL_PCPUS}"),
            );
        }
        let cpus = self.cfg.board.cpus;
        for (m, &cpu) in pool.pcpus.iter().enumerate() {
            if cpu >= cpus {
                self.report(
                    field,
                    format!("cpu{cpu} is in the pool but the board has {cpus} CPUs"),
                );
            }
            if pool.pcpus[..m].contains(&cpu) {
                self.report(field, format!("cpu{cpu} is listed twice"));
            } else if let Some((j, o)) = earlier
                .iter()
                .enumerate()
                .find(|(_, o)| o.pcpus.contains(&cpu))
            {
                self.report(
                    field,
                    format!(
                        "cpu{cpu} is already in pool[{j}] '{}'; a pCPU is in one pool at most",
                        o.name
                    ),
                );
            }
        }
    }

    /// Channels: at most [`MAX_CHANNELS`] of them, each with a valid,
    /// unique name, two distinct VMs that exist, and a power-of-two size
    /// in range; no VM at the end of more than [`MAX_CHANNELS`].
    fn channels(&mut self) {
        let channels = &self.cfg.channels;
        if channels.len() > MAX_CHANNELS {
            self.report(
                Field::Board("channels"),
                format!(
                    "{} channels; a system may have at most {MAX_CHANNELS}",
                    channels.len()
                ),
            );
        }
        for (c, ch) in channels.iter().enumerate() {
            self.channel_name(c, ch);
            self.channel_vms(c, ch);
            self.channel_size(c, ch);
        }
    }

    fn channel_name(&mut self, c: usize, ch: &Channel) {
        let field = Field::Channel(c, "name");
        let name = &ch.name;
        if !valid_name(name) {
            self.report(
                field,
                format!(
                    "channel name '{name}' must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '_' and '-'"
                ),
            );
        }
        if let Some(j) = self.cfg.channels[..c].iter().position(|o| o.name == *name) {
            self.report(
                field,
                format!("name '{name}' is already used by channel[{j}]"),
            );
        }
    }

    fn channel_vms(&mut self, c: usize, ch: &Channel) {
        let field = Field::Channel(c, "vms");
        let vms = &self.cfg.vms;
        let mut exist = true;
        for (end, &vm) in ch.vms.iter().enumerate() {
            if usize::from(vm) >= vms.len() {
                exist = false;
                self.report(
                    field,
                    format!(
                        "end {end} is vm[{vm}], which does not exist; the config has {} VMs",
                        vms.len()
                    ),
                );
            }
        }
        let [a, b] = ch.vms;
        if a == b {
            let name = vms.get(usize::from(a)).map_or("", |vm| vm.name.as_str());
            self.report(
                field,
                format!("both ends are vm[{a}] '{name}'; a channel joins two different VMs"),
            );
            return;
        }
        if !exist {
            return;
        }
        // Report each VM once, on the channel that takes it over the limit.
        for vm in ch.vms {
            let k = self.cfg.channels[..=c]
                .iter()
                .filter(|o| o.end_of(vm).is_some())
                .count();
            if k == MAX_CHANNELS + 1 {
                self.report(
                    field,
                    format!(
                        "vm '{}' is an end of more than {MAX_CHANNELS} channels",
                        vms.get(usize::from(vm)).map_or("", |v| v.name.as_str())
                    ),
                );
            }
        }
    }

    fn channel_size(&mut self, c: usize, ch: &Channel) {
        let size = ch.size;
        if !size.is_power_of_two() || !(MIN_CHANNEL_SIZE..=MAX_CHANNEL_SIZE).contains(&size) {
            self.report(
                Field::Channel(c, "size"),
                format!(
                    "size {size:#x} ({}) must be a power of two from {} to {}",
                    Size(size),
                    Size(MIN_CHANNEL_SIZE),
                    Size(MAX_CHANNEL_SIZE)
                ),
            );
        }
    }

    /// Disk slices of VM `i`: at most [`MAX_VM_DISKS`], none on a critical
    /// VM, each on a disk that exists, sector aligned, inside its disk, not
    /// overlapping another slice of that disk unless both are read-only,
    /// with a short printable serial. Overlaps are reported on the later
    /// slice and name the earlier one's VM.
    fn vm_disks(&mut self, i: usize, vm: &VmConfig) {
        if vm.disks.len() > MAX_VM_DISKS {
            self.report(
                Field::Vm(i, "disks"),
                format!(
                    "{} disk slices; a VM may have at most {MAX_VM_DISKS}",
                    vm.disks.len()
                ),
            );
        }
        if vm.criticality == Criticality::Critical && !vm.disks.is_empty() {
            self.report(
                Field::Vm(i, "disks"),
                "a critical VM cannot use a shared disk because its I/O would wait behind other \
                 VMs' requests: give it no [[vm.disk]], or make it criticality = \"normal\""
                    .into(),
            );
        }
        for (d, slice) in vm.disks.iter().enumerate() {
            self.vm_disk(i, vm, d, slice);
        }
    }

    fn vm_disk(&mut self, i: usize, vm: &VmConfig, d: usize, slice: &VmDisk) {
        let field = |name| Field::VmDisk(i, d, name);
        let cfg = self.cfg;
        let disk = cfg.disks.get(usize::from(slice.disk));
        if disk.is_none() {
            self.report(
                field("disk"),
                format!(
                    "disk {} does not exist; the config has {} disks",
                    slice.disk,
                    cfg.disks.len()
                ),
            );
        }
        if !self.slice_partition(field, disk, slice) {
            self.serial(field("serial"), slice);
            return;
        }
        let (offset, size) = (slice.offset, slice.size);
        if !offset.is_multiple_of(SECTOR_SIZE) {
            self.report(
                field("offset"),
                format!("offset {offset:#x} is not a multiple of {SECTOR_SIZE} bytes"),
            );
        }
        if size == 0 {
            self.report(field("size"), "size is zero".into());
        } else if !size.is_multiple_of(SECTOR_SIZE) {
            self.report(
                field("size"),
                format!("size {size:#x} is not a multiple of {SECTOR_SIZE} bytes"),
            );
        }
        self.serial(field("serial"), slice);
        let Some(disk) = disk else {
            return;
        };
        match offset.checked_add(size) {
            Some(end) if end <= disk.size => {}
            _ => {
                self.report(
                    field("size"),
                    format!(
                        "slice {offset:#x}..{:#x} ({}) runs past the end of disk '{}' ({:#x}, {})",
                        offset.wrapping_add(size),
                        Size(size),
                        disk.name,
                        disk.size,
                        Size(disk.size)
                    ),
                );
                return;
            }
        }
        let clash = earlier_slices(cfg, i, d)
            .filter(|(_, _, o)| o.disk == slice.disk)
            .filter(|(_, _, o)| !(o.read_only && slice.read_only))
            .find(|(_, _, o)| overlaps(offset, size, o.offset, o.size))
            .map(|(owner, k, o)| {
                format!(
                    "{} slice {offset:#x}..{:#x} of disk '{}' for vm '{}' overlaps the {} slice \
                     {:#x}..{:#x} of vm '{owner}' (its disk[{k}]); a read-write slice may \
                     overlap no other slice",
                    access(slice),
                    slice.end(),
                    disk.name,
                    vm.name,
                    access(o),
                    o.offset,
                    o.end()
                )
            });
        if let Some(message) = clash {
            self.report(field("offset"), message);
        }
    }

    /// The partition `slice` names, if any: a valid name, and on a disk
    /// that declares its partitions one of them, whose range the slice has.
    /// Whether the slice's range is to be checked like any slice's: not
    /// when it is unknown (no such disk or partition, a layout that does
    /// not fit, reported on the disk) nor when the hypervisor finds the
    /// partition at boot (a disk without a declared layout, and the slice
    /// still 0 bytes at 0).
    fn slice_partition(
        &mut self,
        field: impl Fn(&'static str) -> Field,
        disk: Option<&Disk>,
        slice: &VmDisk,
    ) -> bool {
        let Some(name) = &slice.partition else {
            return true;
        };
        if !valid_partition_name(name) {
            self.report(
                field("partition"),
                format!(
                    "partition name {name:?} must be 1 to {MAX_PARTITION_NAME_LEN} printable \
                     ASCII characters"
                ),
            );
        }
        let Some(disk) = disk else {
            return false;
        };
        if disk.partitions.is_empty() {
            // Resolved from the disk's GPT at boot, which fills the range
            // in; once it has, the range is checked like any other.
            return slice.offset != 0 || slice.size != 0;
        }
        let Some(p) = disk.partitions.iter().position(|p| p.name == *name) else {
            self.report(
                field("partition"),
                format!(
                    "disk '{}' has no partition named {name:?}; its partitions are {}",
                    disk.name,
                    partition_names(disk)
                ),
            );
            return false;
        };
        let Ok(layout) = partition_layout(&disk.partitions, disk.size) else {
            return false;
        };
        let (offset, size) = layout[p];
        if (slice.offset, slice.size) != (offset, size) {
            self.report(
                field("partition"),
                format!(
                    "slice {:#x}..{:#x} is not partition {name:?} of disk '{}', which is \
                     {offset:#x}..{:#x} ({})",
                    slice.offset,
                    slice.end(),
                    disk.name,
                    offset.saturating_add(size),
                    Size(size)
                ),
            );
            return false;
        }
        true
    }

    fn serial(&mut self, field: Field, slice: &VmDisk) {
        let serial = &slice.serial;
        if serial.len() > MAX_SERIAL_LEN {
            self.report(
                field,
                format!(
                    "serial {serial:?} is {} bytes long; it may be at most {MAX_SERIAL_LEN}",
                    serial.len()
                ),
            );
        } else if !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            self.report(field, format!("serial {serial:?} must be printable ASCII"));
        }
    }

    /// The board's disks: valid, unique names and sector-multiple sizes,
    /// and a partition layout that fits.
    fn disks(&mut self) {
        for (k, disk) in self.cfg.disks.iter().enumerate() {
            self.disk(k, disk);
        }
    }

    fn disk(&mut self, k: usize, disk: &Disk) {
        let field = Field::Disk(k, "name");
        let name = &disk.name;
        if !valid_name(name) {
            self.report(
                field,
                format!("disk name '{name}' must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '_' and '-'"),
            );
        }
        if let Some(j) = self.cfg.disks[..k].iter().position(|o| o.name == *name) {
            self.report(field, format!("name '{name}' is already used by disk[{j}]"));
        }
        let size = disk.size;
        if size == 0 {
            self.report(Field::Disk(k, "size"), "size is zero".into());
        } else if !size.is_multiple_of(SECTOR_SIZE) {
            self.report(
                Field::Disk(k, "size"),
                format!("size {size:#x} is not a multiple of {SECTOR_SIZE} bytes"),
            );
        }
        self.partitions(k, disk);
    }

    /// The partitions of disk `k`: at most [`MAX_PARTITIONS`], each with a
    /// GPT name unique in the disk and a sector-multiple size, laid out by
    /// [`partition_layout`] inside the disk. A duplicate is reported on
    /// the later partition, one that does not fit on its size.
    fn partitions(&mut self, k: usize, disk: &Disk) {
        let parts = &disk.partitions;
        if parts.len() > MAX_PARTITIONS {
            self.report(
                Field::Disk(k, "partitions"),
                format!(
                    "{} partitions; a disk may have at most {MAX_PARTITIONS}",
                    parts.len()
                ),
            );
        }
        for (p, part) in parts.iter().enumerate() {
            let field = |name| Field::DiskPartition(k, p, name);
            let name = &part.name;
            if !valid_partition_name(name) {
                self.report(
                    field("name"),
                    format!(
                        "partition name {name:?} must be 1 to {MAX_PARTITION_NAME_LEN} printable \
                         ASCII characters"
                    ),
                );
            }
            if let Some(j) = parts[..p].iter().position(|o| o.name == *name) {
                self.report(
                    field("name"),
                    format!("name {name:?} is already used by partition[{j}] of this disk"),
                );
            }
            let size = part.size;
            if size == 0 {
                self.report(field("size"), "size is zero".into());
            } else if !size.is_multiple_of(SECTOR_SIZE) {
                self.report(
                    field("size"),
                    format!("size {size:#x} is not a multiple of {SECTOR_SIZE} bytes"),
                );
            }
        }
        if let Err(e) = partition_layout(parts, disk.size) {
            self.report(
                Field::DiskPartition(k, e.index, "size"),
                format!(
                    "partition {:?} at {:#x}..{:#x} ({}) does not fit in disk '{}' ({:#x}, {}): \
                     partitions start at {}, each on a {} boundary, and must end by {:#x}, \
                     leaving the last {} for the backup GPT",
                    e.name,
                    e.offset,
                    e.offset.wrapping_add(e.size),
                    Size(e.size),
                    disk.name,
                    disk.size,
                    Size(disk.size),
                    Size(PARTITION_ALIGN),
                    Size(PARTITION_ALIGN),
                    e.limit,
                    Size(PARTITION_ALIGN)
                ),
            );
        }
    }

    /// Nets of VM `i`: at most [`MAX_VM_NETS`], none on a critical VM, no
    /// more virtio-mmio devices with the VM's disks than [`MAX_VIRTIO`],
    /// each on a switch that exists, with a unicast, nonzero MAC address no
    /// other net in the system has. A duplicate is reported on the later
    /// net and names the earlier one's VM.
    fn vm_nets(&mut self, i: usize, vm: &VmConfig) {
        let (disks, nets) = (vm.disks.len(), vm.nets.len());
        if nets > MAX_VM_NETS {
            self.report(
                Field::Vm(i, "nets"),
                format!("{nets} nets; a VM may have at most {MAX_VM_NETS}"),
            );
        }
        // Without nets, too many disks is the disk limit's to report
        // (MAX_VM_DISKS <= MAX_VIRTIO).
        let devices = disks.saturating_add(nets);
        if nets > 0 && devices > MAX_VIRTIO {
            self.report(
                Field::Vm(i, "nets"),
                format!(
                    "{disks} disk slices and {nets} nets make {devices} virtio-mmio devices; a VM \
                     may have at most {MAX_VIRTIO} (its disks are devices 0, 1, ..., then its nets)"
                ),
            );
        }
        if vm.criticality == Criticality::Critical && nets > 0 {
            self.report(
                Field::Vm(i, "nets"),
                "a critical VM cannot use a shared switch because its frames would wait behind \
                 other VMs' traffic: give it no [[vm.net]], or make it criticality = \"normal\""
                    .into(),
            );
        }
        for (k, net) in vm.nets.iter().enumerate() {
            self.vm_net(i, vm, k, net);
        }
    }

    fn vm_net(&mut self, i: usize, vm: &VmConfig, k: usize, net: &VmNet) {
        let field = |name| Field::VmNet(i, k, name);
        let cfg = self.cfg;
        if usize::from(net.switch) >= cfg.switches.len() {
            self.report(
                field("switch"),
                format!(
                    "switch {} does not exist; the config has {} switches",
                    net.switch,
                    cfg.switches.len()
                ),
            );
        }
        let mac = Mac(net.mac);
        if net.mac == [0; 6] {
            self.report(
                field("mac"),
                format!(
                    "MAC address {mac} is all zeros; a net needs a unicast address, e.g. a \
                     locally administered one like 02:00:00:00:00:01"
                ),
            );
            return;
        }
        if net.mac[0] & 1 != 0 {
            self.report(
                field("mac"),
                format!(
                    "MAC address {mac} is a multicast address (bit 0 of its first byte is set); \
                     a net needs a unicast address, e.g. a locally administered one like \
                     02:00:00:00:00:01"
                ),
            );
            return;
        }
        let clash = earlier_nets(cfg, i, k)
            .find(|(_, _, o)| o.mac == net.mac)
            .map(|(owner, m, _)| {
                format!(
                    "MAC address {mac} of vm '{}' (its net[{k}]) is already used by vm '{owner}' \
                     (its net[{m}]); every net needs a MAC address of its own",
                    vm.name
                )
            });
        if let Some(message) = clash {
            self.report(field("mac"), message);
        }
    }

    /// The switches: valid, unique names, and at most [`MAX_UPLINKS`] of
    /// them with the board's physical NIC as their uplink. An uplink over
    /// the limit is reported on its switch and names the earlier ones.
    fn switches(&mut self) {
        for (k, switch) in self.cfg.switches.iter().enumerate() {
            self.switch(k, switch);
        }
    }

    fn switch(&mut self, k: usize, switch: &Switch) {
        let field = Field::Switch(k, "name");
        let name = &switch.name;
        let earlier = &self.cfg.switches[..k];
        if !valid_name(name) {
            self.report(
                field,
                format!(
                    "switch name '{name}' must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '_' and '-'"
                ),
            );
        }
        if let Some(j) = earlier.iter().position(|o| o.name == *name) {
            self.report(
                field,
                format!("name '{name}' is already used by switch[{j}]"),
            );
        }
        if !switch.uplink {
            return;
        }
        let uplinks: Vec<_> = earlier
            .iter()
            .enumerate()
            .filter(|(_, o)| o.uplink)
            .map(|(j, o)| format!("switch[{j}] '{}'", o.name))
            .collect();
        if uplinks.len() >= MAX_UPLINKS {
            self.report(
                Field::Switch(k, "uplink"),
                format!(
                    "switch '{name}' cannot have the uplink too: {} already {} the board's \
                     physical NIC, and at most {MAX_UPLINKS} switch may have uplink = true",
                    uplinks.join(", "),
                    if uplinks.len() == 1 { "has" } else { "have" }
                ),
            );
        }
    }

    /// All VM memory comes out of board RAM minus the hypervisor's reserve.
    /// Reported on the first VM that does not fit.
    fn total_memory(&mut self) {
        let available = self.cfg.board.ram_size.saturating_sub(HYP_RESERVE);
        let mut total: u64 = 0;
        for (i, vm) in self.cfg.vms.iter().enumerate() {
            total = total.saturating_add(vm.memory);
            if total > available {
                let all = self
                    .cfg
                    .vms
                    .iter()
                    .fold(0u64, |t, vm| t.saturating_add(vm.memory));
                self.report(
                    Field::Vm(i, "memory"),
                    format!(
                        "VMs need {} in total but the board has only {} after the hypervisor's {}",
                        Size(all),
                        Size(available),
                        Size(HYP_RESERVE)
                    ),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Board, DiskPartition, RestartPolicy, CHANNEL_IPA, CHANNEL_STRIDE, DEFAULT_CMDLINE,
        IMAGE_LOAD_OFFSET, LINUX_CMDLINE, MAX_VIRTIO, PCI_ECAM_IPA, VIRTIO_IPA, VIRTIO_STRIDE,
    };
    use alloc::string::String;
    use alloc::vec;

    const MIB: u64 = 1 << 20;

    fn vm(name: &str, memory: u64, host: Option<u64>, pcpus: &[u16]) -> VmConfig {
        VmConfig {
            name: name.into(),
            image: 0,
            memory,
            host_address: host,
            pcpus: pcpus.into(),
            pool: None,
            vcpus: pcpus.len() as u16,
            weight: DEFAULT_WEIGHT,
            cap: None,
            restart: RestartPolicy::Never,
            initramfs: None,
            dtb: None,
            cmdline: DEFAULT_CMDLINE.into(),
            passthrough: vec![],
            criticality: Criticality::Normal,
            disks: vec![],
            nets: vec![],
        }
    }

    /// Gives `vm` the dedicated `pcpus`, one vCPU on each.
    fn pin(vm: &mut VmConfig, pcpus: &[u16]) {
        vm.pcpus = pcpus.into();
        vm.vcpus = pcpus.len() as u16;
    }

    /// A valid system: 4 CPUs, 1 GiB at 0x4000_0000, two VMs.
    fn good() -> SystemConfig {
        SystemConfig {
            board: Board {
                cpus: 4,
                ram_base: 0x4000_0000,
                ram_size: 1 << 30,
                management: None,
            },
            vms: vec![
                vm("safety", 16 * MIB, Some(0x5000_0000), &[0]),
                vm("infotainment", 256 * MIB, None, &[1, 2]),
            ],
            channels: vec![],
            disks: vec![],
            switches: vec![],
            pools: vec![],
        }
    }

    const IMAGES: &[ImageInfo] = &[ImageInfo::raw(64 * 1024)];

    /// The problems for `cfg`, as `(field, message)`.
    fn problems(cfg: &SystemConfig) -> Vec<(String, String)> {
        validate(cfg, IMAGES)
            .into_iter()
            .map(|p| (format!("{}", p.field), p.message))
            .collect()
    }

    /// Asserts `cfg` has exactly one problem, on `field`, whose message
    /// contains `needle`.
    #[track_caller]
    fn assert_one(cfg: &SystemConfig, field: &str, needle: &str) {
        let p = problems(cfg);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, field, "{p:?}");
        assert!(p[0].1.contains(needle), "{:?} lacks {needle:?}", p[0].1);
    }

    #[test]
    fn good_config_has_no_problems() {
        assert_eq!(problems(&good()), vec![]);
    }

    #[test]
    fn config_without_vms_is_refused() {
        let mut c = good();
        c.vms.clear();
        assert_one(&c, "board.vms", "no VMs");
    }

    #[test]
    fn board_cpus_must_be_1_to_64() {
        let mut c = good();
        c.board.cpus = 0;
        c.vms.truncate(1);
        c.vms[0].pcpus.clear();
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|(f, m)| f == "board.cpus" && m.contains("0 CPUs")),
            "{p:?}"
        );
        c.board.cpus = 65;
        pin(&mut c.vms[0], &[0]);
        assert_one(&c, "board.cpus", "65 CPUs");
        c.board.cpus = 64;
        pin(&mut c.vms[0], &[63]);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn board_ram_must_be_nonzero_and_2mib_aligned() {
        let mut c = good();
        c.board.ram_base += 0x1000;
        c.vms[0].host_address = None;
        assert_one(&c, "board.ram_base", "0x40001000 is not 2 MiB aligned");

        let mut c = good();
        c.board.ram_size += 0x1000;
        assert_one(&c, "board.ram_size", "not a multiple of 2 MiB");

        let mut c = good();
        c.board.ram_size = 0;
        c.vms.truncate(1);
        c.vms[0].host_address = None;
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|(f, m)| f == "board.ram_size" && m.contains("zero")),
            "{p:?}"
        );
    }

    #[test]
    fn board_ram_past_end_of_address_space_is_refused() {
        let mut c = good();
        // The last 2 MiB block of the address space, with 1 GiB of RAM.
        c.board.ram_base = 0u64.wrapping_sub(BLOCK_SIZE);
        c.vms[0].host_address = None;
        assert_one(&c, "board.ram_size", "past the end");
    }

    #[test]
    fn vm_name_must_be_1_to_31_of_lowercase_digits_underscore_dash() {
        let mut c = good();
        c.vms[0].name = "a-b_9".into();
        assert_eq!(problems(&c), vec![]);
        c.vms[0].name = "a".repeat(31);
        assert_eq!(problems(&c), vec![]);
        c.vms[0].name = "a".repeat(32);
        assert_one(&c, "vm[0].name", "32 bytes long");
        c.vms[0].name = String::new();
        assert_one(&c, "vm[0].name", "0 bytes long");
        c.vms[0].name = "Safety".into();
        assert_one(&c, "vm[0].name", "may only use");
        c.vms[0].name = "a b".into();
        assert_one(&c, "vm[0].name", "may only use");
    }

    #[test]
    fn duplicate_name_is_reported_on_the_second_vm() {
        let mut c = good();
        c.vms[1].name = "safety".into();
        assert_one(&c, "vm[1].name", "already used by vm[0]");
    }

    #[test]
    fn vm_memory_must_be_nonzero_multiple_of_2mib() {
        let mut c = good();
        c.vms[1].memory = 0;
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|(f, m)| f == "vm[1].memory" && m == "memory is zero"),
            "{p:?}"
        );
        c.vms[1].memory = 3 * MIB;
        assert_one(
            &c,
            "vm[1].memory",
            "0x300000 (3 MiB) is not a multiple of 2 MiB",
        );
        c.vms[1].memory = 4 * MIB;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn host_address_must_be_2mib_aligned() {
        let mut c = good();
        c.vms[0].host_address = Some(0x5010_0000);
        assert_one(&c, "vm[0].host_address", "0x50100000 is not 2 MiB aligned");
    }

    #[test]
    fn host_region_must_lie_in_board_ram() {
        let mut c = good();
        // Ends exactly at the end of RAM: fine.
        c.vms[0].host_address = Some(0x8000_0000 - 16 * MIB);
        assert_eq!(problems(&c), vec![]);
        // One block further: past the end.
        c.vms[0].host_address = Some(0x8000_0000 - 14 * MIB);
        assert_one(
            &c,
            "vm[0].host_address",
            "outside board RAM 0x40000000..0x80000000",
        );
        // Below RAM.
        c.vms[0].host_address = Some(0x2000_0000);
        assert_one(&c, "vm[0].host_address", "outside board RAM");
        // Wrapping the address space.
        c.vms[0].host_address = Some(u64::MAX - (BLOCK_SIZE - 1));
        assert_one(&c, "vm[0].host_address", "outside board RAM");
    }

    #[test]
    fn host_regions_must_not_overlap_and_later_vm_names_earlier() {
        let mut c = good();
        c.vms[1].host_address = Some(0x5000_0000 + 14 * MIB);
        assert_one(&c, "vm[1].host_address", "overlaps vm 'safety'");
        // Adjacent is fine.
        c.vms[1].host_address = Some(0x5000_0000 + 16 * MIB);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn host_region_must_not_overlap_hypervisor_reserve() {
        let mut c = good();
        c.vms[0].host_address = Some(0x4000_0000 + HYP_RESERVE - 2 * MIB);
        assert_one(&c, "vm[0].host_address", "hypervisor's reserved 64 MiB");
        c.vms[0].host_address = Some(0x4000_0000 + HYP_RESERVE);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn total_memory_must_leave_the_hypervisor_reserve() {
        let mut c = good();
        // 1 GiB - 64 MiB = 960 MiB available; 16 MiB is taken by vm[0].
        c.vms[1].memory = 944 * MIB;
        assert_eq!(problems(&c), vec![]);
        c.vms[1].memory = 946 * MIB;
        assert_one(
            &c,
            "vm[1].memory",
            "962 MiB in total but the board has only 960 MiB",
        );
    }

    #[test]
    fn vm_needs_1_to_8_vcpus() {
        let mut c = good();
        c.board.cpus = 16;
        pin(&mut c.vms[1], &[]);
        assert_one(&c, "vm[1].pcpus", "0 vCPUs");
        pin(&mut c.vms[1], &(1..10).collect::<Vec<_>>());
        assert_one(&c, "vm[1].pcpus", "9 vCPUs");
        pin(&mut c.vms[1], &(1..9).collect::<Vec<_>>());
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn pcpu_must_exist_on_the_board() {
        let mut c = good();
        pin(&mut c.vms[1], &[1, 5]);
        assert_one(
            &c,
            "vm[1].pcpus",
            "vCPU 1 is pinned to cpu5 but the board has 4 CPUs",
        );
        pin(&mut c.vms[1], &[1, 3]);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn pcpu_is_given_at_most_once_in_the_system() {
        let mut c = good();
        pin(&mut c.vms[1], &[1, 0]);
        assert_one(&c, "vm[1].pcpus", "cpu0 is already given to vm 'safety'");
        pin(&mut c.vms[1], &[2, 2]);
        assert_one(
            &c,
            "vm[1].pcpus",
            "cpu2 is already given to vm 'infotainment'",
        );
    }

    #[test]
    fn image_index_must_exist() {
        let mut c = good();
        c.vms[1].image = 1;
        assert_one(
            &c,
            "vm[1].image",
            "image 1 does not exist; the payload has 1 images",
        );
    }

    #[test]
    fn image_plus_load_offset_must_fit_in_vm_memory() {
        let mut c = good();
        c.vms[0].memory = 2 * MIB;
        c.vms[0].host_address = None;
        // Exactly fits.
        let raw = |len| [ImageInfo::raw(len)];
        assert_eq!(validate(&c, &raw(2 * MIB - IMAGE_LOAD_OFFSET)), vec![]);
        let p = validate(&c, &raw(2 * MIB - IMAGE_LOAD_OFFSET + 1));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, Field::Vm(0, "memory"));
        let p = validate(&c, &raw((2 * MIB) + 300 * 1024 + 100 * 1024));
        assert_eq!(
            p[0].message,
            "image is larger than its VM: memory 0x200000 (2 MiB) is smaller than its image (2.3 MiB + load offset 0x80000)"
        );
    }

    /// A Linux VM: kernel image 0, initramfs image 1, 64 MiB.
    fn linux() -> SystemConfig {
        let mut c = good();
        c.vms.truncate(1);
        c.vms[0].memory = 64 * MIB;
        c.vms[0].initramfs = Some(1);
        c.vms[0].cmdline = LINUX_CMDLINE.into();
        c
    }

    /// A kernel whose header says text_offset 0 and `mem_size` bytes.
    fn kernel(len: u64, mem_size: u64) -> ImageInfo {
        ImageInfo {
            len,
            load_offset: 0,
            mem_size,
        }
    }

    #[test]
    fn linux_vm_must_hold_kernel_initramfs_device_tree_and_slack() {
        let c = linux();
        // 40 + 22 MiB - 64 KiB + 64 KiB + 2 MiB = 64 MiB: exactly fits.
        let fits = [
            kernel(30 * MIB, 40 * MIB),
            ImageInfo::raw(22 * MIB - DTB_RESERVE),
        ];
        assert_eq!(validate(&c, &fits), vec![]);
        let over = [fits[0], ImageInfo::raw(22 * MIB - DTB_RESERVE + 1)];
        let p = validate(&c, &over);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, Field::Vm(0, "memory"));
    }

    #[test]
    fn linux_vm_message_adds_up_the_parts() {
        let c = linux();
        let p = validate(&c, &[kernel(30 * MIB, 40 * MIB), ImageInfo::raw(30 * MIB)]);
        assert_eq!(
            p[0].message,
            "image is larger than its VM: memory 0x4000000 (64 MiB) is smaller than kernel 40 MiB + load offset 0x0 + initramfs 30 MiB + device tree 64 KiB + slack 2 MiB = 72.0 MiB"
        );
    }

    #[test]
    fn kernel_image_size_counts_not_just_the_file() {
        let mut c = linux();
        c.vms[0].initramfs = None;
        // The file is small but the header claims 63 MiB (BSS included).
        let p = validate(&c, &[kernel(MIB, 63 * MIB)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("kernel 63 MiB"), "{}", p[0].message);
    }

    #[test]
    fn custom_cmdline_makes_an_image_vm_linux() {
        let mut c = linux();
        c.vms[0].initramfs = None;
        let image = [ImageInfo::raw(63 * MIB)];
        assert_eq!(problems_with(&c, &image, "memory").len(), 1);
        c.vms[0].cmdline = DEFAULT_CMDLINE.into();
        assert!(!c.vms[0].boots_linux());
        // 63 MiB + 0x80000 fits 64 MiB without the Linux extras.
        assert_eq!(validate(&c, &image), vec![]);
    }

    fn problems_with(c: &SystemConfig, images: &[ImageInfo], field: &str) -> Vec<Problem> {
        validate(c, images)
            .into_iter()
            .filter(|p| matches!(p.field, Field::Vm(_, f) if f == field))
            .collect()
    }

    #[test]
    fn initramfs_index_must_exist() {
        let c = linux();
        let p = validate(&c, &[kernel(MIB, MIB)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, Field::Vm(0, "initramfs"));
        assert!(p[0].message.contains("image 1 does not exist"));
    }

    #[test]
    fn cmdline_must_be_short_and_without_nul() {
        let mut c = linux();
        let images = [kernel(MIB, MIB), ImageInfo::raw(MIB)];
        c.vms[0].cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert_eq!(validate(&c, &images), vec![]);
        c.vms[0].cmdline.push('x');
        let p = problems_with(&c, &images, "cmdline");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("1025 bytes long"));
        c.vms[0].cmdline = "a\0b".into();
        let p = problems_with(&c, &images, "cmdline");
        assert!(p[0].message.contains("NUL"), "{p:?}");
    }

    fn device(name: &str, base: u64, size: u64, irqs: &[u32]) -> Passthrough {
        Passthrough {
            name: name.into(),
            base,
            size,
            irqs: irqs.into(),
            compatible: vec!["arm,pl031".into(), "arm,primecell".into()],
        }
    }

    /// [`good`] with QEMU virt's PL031 RTC given to vm[0].
    fn with_rtc() -> SystemConfig {
        let mut c = good();
        c.vms[0].passthrough = vec![device("rtc", 0x0901_0000, 0x1000, &[34])];
        c
    }

    const RTC: &str = "vm[0].passthrough[0]";
    const SECOND: &str = "vm[1].passthrough[0]";

    #[test]
    fn passthrough_device_outside_everything_owned_is_fine() {
        assert_eq!(problems(&with_rtc()), vec![]);
        let mut c = with_rtc();
        // Above board RAM, several irqs, highest SPI.
        c.vms[1].passthrough = vec![device("pcie", 0x1_0000_0000, 0x10_0000, &[35, 127])];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_base_and_size_must_be_4k_aligned_and_nonzero() {
        let mut c = with_rtc();
        c.vms[0].passthrough[0].base = 0x0901_0800;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "0x9010800 is not 4 KiB aligned",
        );
        let mut c = with_rtc();
        c.vms[0].passthrough[0].size = 0x1800;
        assert_one(
            &c,
            "vm[0].passthrough[0].size",
            "0x1800 is not a multiple of 4 KiB",
        );
        c.vms[0].passthrough[0].size = 0;
        assert_one(&c, "vm[0].passthrough[0].size", "size is zero");
    }

    #[test]
    fn passthrough_range_past_the_address_space_is_refused() {
        let mut c = with_rtc();
        c.vms[0].passthrough[0].base = 0u64.wrapping_sub(PAGE_SIZE);
        c.vms[0].passthrough[0].size = 2 * PAGE_SIZE;
        assert_one(&c, "vm[0].passthrough[0].size", "past the end");
        // The last page of the address space is not past it, though.
        c.vms[0].passthrough[0].base = 0u64.wrapping_sub(2 * PAGE_SIZE);
        c.vms[0].passthrough[0].size = PAGE_SIZE;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_range_must_not_overlap_board_ram() {
        let mut c = with_rtc();
        c.vms[0].passthrough[0].base = 0x3fff_f000;
        c.vms[0].passthrough[0].size = 0x2000;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "range 0x3ffff000..0x40001000 overlaps board RAM 0x40000000..0x80000000",
        );
        // Adjacent below is fine.
        c.vms[0].passthrough[0].size = 0x1000;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_range_must_not_overlap_the_vms_own_ram_ipa() {
        // Board RAM elsewhere: the VM's RAM is still at RAM_IPA in its IPA
        // space, where an IPA == PA device would land.
        let mut c = with_rtc();
        c.board.ram_base = 0x8000_0000;
        c.vms[0].host_address = Some(0x9000_0000);
        c.vms[0].passthrough[0].base = RAM_IPA + 15 * MIB;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "overlaps the VM's own RAM at 0x40000000..0x41000000",
        );
        c.vms[0].passthrough[0].base = RAM_IPA + 16 * MIB;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_range_must_not_touch_the_gic_or_uart() {
        let mut c = with_rtc();
        c.vms[0].passthrough[0].base = 0x080a_0000;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "0x8000000..0x9000000 is the GIC, which the hypervisor owns",
        );
        c.vms[0].passthrough[0].base = 0x0900_0000;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "0x9000000..0x9001000 is the UART, which the hypervisor owns",
        );
        // Spanning both: one problem each.
        c.vms[0].passthrough[0].base = 0x08ff_f000;
        c.vms[0].passthrough[0].size = 0x2000;
        assert_eq!(problems(&c).len(), 2, "{:?}", problems(&c));
        // The table is what the message names.
        assert_eq!(HYP_OWNED_MMIO[0], (0x0800_0000, 0x0900_0000, "GIC"));
        assert_eq!(HYP_OWNED_MMIO[1], (0x0900_0000, 0x0900_1000, "UART"));
    }

    #[test]
    fn passthrough_range_is_given_to_one_vm_only() {
        let mut c = with_rtc();
        c.vms[1].passthrough = vec![device("clock", 0x0901_0000, 0x1000, &[35])];
        assert_one(
            &c,
            &format!("{SECOND}.base"),
            "range 0x9010000..0x9011000: 0x9010000..0x9011000 is already given to vm 'safety' (rtc)",
        );
        // A partial overlap counts; adjacent does not.
        c.vms[1].passthrough[0].base = 0x0900_f000;
        c.vms[1].passthrough[0].size = 0x2000;
        assert_one(
            &c,
            &format!("{SECOND}.base"),
            "already given to vm 'safety'",
        );
        c.vms[1].passthrough[0].size = 0x1000;
        c.vms[1].passthrough[0].base = 0x0901_1000;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_ranges_of_one_vm_must_not_overlap_each_other() {
        let mut c = with_rtc();
        c.vms[0]
            .passthrough
            .push(device("rtc2", 0x0901_0000, 0x1000, &[35]));
        assert_one(
            &c,
            "vm[0].passthrough[1].base",
            "is already given to vm 'safety' (rtc)",
        );
    }

    #[test]
    fn passthrough_irqs_must_be_vm_spis_other_than_the_uarts() {
        for (irq, needle) in [
            (
                31,
                "irq 31 is not an SPI the VM's GIC has; it must be 32 to 127",
            ),
            (128, "irq 128 is not an SPI"),
            (1020, "irq 1020 is not an SPI"),
            (33, "irq 33 is the virtual UART's"),
        ] {
            let mut c = with_rtc();
            c.vms[0].passthrough[0].irqs = vec![irq];
            assert_one(&c, &format!("{RTC}.irqs"), needle);
        }
        let mut c = with_rtc();
        c.vms[0].passthrough[0].irqs = vec![32, 127];
        assert_eq!(problems(&c), vec![]);
        // No irq at all is fine: a device may only be polled.
        c.vms[0].passthrough[0].irqs = vec![];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_irq_is_given_once_in_the_system() {
        let mut c = with_rtc();
        c.vms[1].passthrough = vec![device("gpio", 0x0903_0000, 0x1000, &[34])];
        assert_one(
            &c,
            &format!("{SECOND}.irqs"),
            "irq 34 is already given to vm 'safety'",
        );
        // Twice in one device.
        let mut c = with_rtc();
        c.vms[0].passthrough[0].irqs = vec![34, 35, 34];
        assert_one(
            &c,
            &format!("{RTC}.irqs"),
            "irq 34 is already given to vm 'safety'",
        );
    }

    #[test]
    fn passthrough_counts_are_limited() {
        let mut c = with_rtc();
        c.vms[0].passthrough = (0..9u32)
            .map(|k| {
                device(
                    "d",
                    0x1_0000_0000 + u64::from(k) * 0x1000,
                    0x1000,
                    &[60 + k],
                )
            })
            .collect();
        assert_one(
            &c,
            "vm[0].passthrough",
            "9 passthrough devices; a VM may have at most 8",
        );
        c.vms[0].passthrough.pop();
        assert_eq!(problems(&c), vec![]);

        let mut c = with_rtc();
        c.vms[0].passthrough[0].irqs = (60..69).collect();
        assert_one(
            &c,
            &format!("{RTC}.irqs"),
            "9 irqs; a device may have at most 8",
        );
        c.vms[0].passthrough[0].irqs.pop();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_name_follows_the_vm_name_rules() {
        let mut c = with_rtc();
        for bad in [String::new(), "RTC".into(), "r t c".into(), "a".repeat(32)] {
            c.vms[0].passthrough[0].name = bad;
            assert_one(&c, &format!("{RTC}.name"), "must be 1 to 31 of a-z");
        }
        c.vms[0].passthrough[0].name = "a".repeat(31);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn compatible_needs_1_to_4_printable_strings() {
        let mut c = with_rtc();
        let field = format!("{RTC}.compatible");
        c.vms[0].passthrough[0].compatible = vec![];
        assert_one(&c, &field, "0 compatible strings; a device needs 1 to 4");
        c.vms[0].passthrough[0].compatible = vec!["a,b".into(); 5];
        assert_one(&c, &field, "5 compatible strings");
        c.vms[0].passthrough[0].compatible = vec!["a,b".into(); 4];
        assert_eq!(problems(&c), vec![]);
        for bad in [
            String::new(),
            "x".repeat(64),
            "a\0b".into(),
            "caf\u{e9}".into(),
        ] {
            c.vms[0].passthrough[0].compatible = vec![bad];
            assert_one(&c, &field, "must be 1 to 63 printable ASCII");
        }
        c.vms[0].passthrough[0].compatible = vec!["x".repeat(63)];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_irqs_must_not_be_channel_doorbells() {
        for irq in 120..=123 {
            let mut c = with_rtc();
            c.vms[0].passthrough[0].irqs = vec![irq];
            assert_one(
                &c,
                &format!("{RTC}.irqs"),
                &format!("irq {irq} is reserved for channel doorbells (120 to 123)"),
            );
        }
        let mut c = with_rtc();
        c.vms[0].passthrough[0].irqs = vec![119, 124];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_range_must_not_touch_the_channel_window_or_ecam() {
        let mut c = with_rtc();
        // The last page of the window.
        c.vms[0].passthrough[0].base = CHANNEL_IPA + 4 * CHANNEL_STRIDE - PAGE_SIZE;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "0x10000000..0x10800000 is the inter-VM channels, which the hypervisor owns",
        );
        c.vms[0].passthrough[0].base = PCI_ECAM_IPA + 0xff000;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "0x3f000000..0x3f100000 is the PCI configuration space (channels)",
        );
        // Just past either is fine.
        c.vms[0].passthrough[0].base = CHANNEL_IPA + 4 * CHANNEL_STRIDE;
        assert_eq!(problems(&c), vec![]);
        c.vms[0].passthrough[0].base = PCI_ECAM_IPA + MIB;
        assert_eq!(problems(&c), vec![]);
        c.vms[0].passthrough[0].base = CHANNEL_IPA - PAGE_SIZE;
        assert_eq!(problems(&c), vec![]);
    }

    fn channel(name: &str, vms: [u16; 2], size: u64) -> Channel {
        Channel {
            name: name.into(),
            vms,
            size,
        }
    }

    /// [`good`] with a 4 KiB channel from infotainment to safety.
    fn with_channel() -> SystemConfig {
        let mut c = good();
        c.channels = vec![channel("control", [1, 0], 4 << 10)];
        c
    }

    #[test]
    fn channel_between_two_vms_is_fine() {
        assert_eq!(problems(&with_channel()), vec![]);
        let mut c = with_channel();
        c.channels[0].size = MIB;
        c.channels.push(channel("b", [0, 1], 8 << 10));
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn channel_name_follows_the_vm_name_rules() {
        let mut c = with_channel();
        for bad in [
            String::new(),
            "Control".into(),
            "a b".into(),
            "a".repeat(32),
        ] {
            c.channels[0].name = bad;
            assert_one(&c, "channel[0].name", "must be 1 to 31 of a-z");
        }
        c.channels[0].name = "a".repeat(31);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn duplicate_channel_name_is_reported_on_the_second() {
        let mut c = with_channel();
        c.channels.push(channel("control", [0, 1], 4 << 10));
        assert_one(
            &c,
            "channel[1].name",
            "name 'control' is already used by channel[0]",
        );
    }

    #[test]
    fn channel_ends_must_be_two_different_existing_vms() {
        let mut c = with_channel();
        c.channels[0].vms = [1, 1];
        assert_one(
            &c,
            "channel[0].vms",
            "both ends are vm[1] 'infotainment'; a channel joins two different VMs",
        );
        c.channels[0].vms = [0, 2];
        assert_one(
            &c,
            "channel[0].vms",
            "end 1 is vm[2], which does not exist; the config has 2 VMs",
        );
        c.channels[0].vms = [u16::MAX, u16::MAX];
        let p = problems(&c);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().all(|(f, _)| f == "channel[0].vms"), "{p:?}");
    }

    #[test]
    fn channel_size_is_a_power_of_two_from_4k_to_1m() {
        let mut c = with_channel();
        for bad in [0, 2 << 10, 12 << 10, 2 * MIB, (4 << 10) + 1, u64::MAX] {
            c.channels[0].size = bad;
            assert_one(
                &c,
                "channel[0].size",
                "must be a power of two from 4 KiB to 1 MiB",
            );
        }
        c.channels[0].size = 12 << 10;
        assert_eq!(
            problems(&c)[0].1,
            "size 0x3000 (12 KiB) must be a power of two from 4 KiB to 1 MiB"
        );
        for good in [4 << 10, 64 << 10, MIB] {
            c.channels[0].size = good;
            assert_eq!(problems(&c), vec![]);
        }
    }

    #[test]
    fn at_most_4_channels_and_4_per_vm() {
        let mut c = good();
        c.board.cpus = 8;
        c.vms.push(vm("a", 16 * MIB, None, &[3]));
        c.vms.push(vm("b", 16 * MIB, None, &[4]));
        // Four channels, vm[0] in all of them: the limit.
        c.channels = (0..4u16)
            .map(|k| channel(&format!("c{k}"), [0, 1 + k % 3], 4 << 10))
            .collect();
        assert_eq!(problems(&c), vec![]);
        // A fifth: too many in the system, and vm[0] in five.
        c.channels.push(channel("c4", [2, 0], 4 << 10));
        let p = problems(&c);
        assert_eq!(
            p,
            vec![
                (
                    "board.channels".into(),
                    "5 channels; a system may have at most 4".into()
                ),
                (
                    "channel[4].vms".into(),
                    "vm 'safety' is an end of more than 4 channels".into()
                ),
            ]
        );
        // A VM over the limit is reported once, on its fifth channel.
        c.channels.push(channel("c5", [0, 3], 4 << 10));
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn critical_vms_must_leave_a_pcpu_to_the_hypervisor() {
        let mut c = good();
        c.vms[0].criticality = Criticality::Critical;
        c.vms[1].criticality = Criticality::Critical;
        // cpu3 is free.
        assert_eq!(problems(&c), vec![]);
        pin(&mut c.vms[1], &[1, 2, 3]);
        assert_one(
            &c,
            "board.cpus",
            "no pCPU left for the hypervisor's console and shell: every pCPU runs a critical VM",
        );
        // A normal VM on a pCPU leaves it to the hypervisor too.
        c.vms[1].criticality = Criticality::Normal;
        assert_eq!(problems(&c), vec![]);
        // A pCPU no VM uses is enough.
        c.vms[1].criticality = Criticality::Critical;
        pin(&mut c.vms[1], &[1, 2]);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_range_must_not_touch_the_virtio_window() {
        let mut c = with_rtc();
        let end = VIRTIO_IPA + MAX_VIRTIO as u64 * VIRTIO_STRIDE;
        assert_eq!(end, 0x0a00_1000);
        c.vms[0].passthrough[0].base = VIRTIO_IPA;
        assert_one(
            &c,
            "vm[0].passthrough[0].base",
            "range 0xa000000..0xa001000: 0xa000000..0xa001000 is the virtio-mmio window, which the hypervisor owns",
        );
        // Ending in its first byte's page counts too.
        c.vms[0].passthrough[0].base = VIRTIO_IPA - PAGE_SIZE;
        c.vms[0].passthrough[0].size = 2 * PAGE_SIZE;
        assert_one(&c, "vm[0].passthrough[0].base", "virtio-mmio window");
        // Just before or after is fine.
        c.vms[0].passthrough[0].size = PAGE_SIZE;
        assert_eq!(problems(&c), vec![]);
        c.vms[0].passthrough[0].base = end;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn passthrough_irqs_must_not_be_the_virtio_spis() {
        for irq in 48..56 {
            let mut c = with_rtc();
            c.vms[0].passthrough[0].irqs = vec![irq];
            assert_one(
                &c,
                &format!("{RTC}.irqs"),
                &format!("irq {irq} is reserved for the virtio-mmio devices (48 to 55)"),
            );
        }
        let mut c = with_rtc();
        c.vms[0].passthrough[0].irqs = vec![47, 56];
        assert_eq!(problems(&c), vec![]);
    }

    const GIB: u64 = 1 << 30;

    fn slice(disk: u16, offset: u64, size: u64, read_only: bool) -> VmDisk {
        VmDisk {
            disk,
            offset,
            size,
            partition: None,
            read_only,
            serial: "s".into(),
        }
    }

    /// [`good`] with two disks (8 GiB "emmc", 1 GiB "usb") and the first
    /// half of "emmc" given read-write to infotainment (vm[1]).
    fn with_disk() -> SystemConfig {
        let mut c = good();
        c.disks = vec![
            Disk {
                name: "emmc".into(),
                size: 8 * GIB,
                partitions: vec![],
            },
            Disk {
                name: "usb".into(),
                size: GIB,
                partitions: vec![],
            },
        ];
        c.vms[1].disks = vec![slice(0, 0, 4 * GIB, false)];
        c
    }

    #[test]
    fn disk_slices_side_by_side_are_fine() {
        assert_eq!(problems(&with_disk()), vec![]);
        let mut c = with_disk();
        // The other half, to the last byte, and all of the other disk.
        c.vms[0].disks = vec![slice(0, 4 * GIB, 4 * GIB, false), slice(1, 0, GIB, true)];
        assert_eq!(problems(&c), vec![]);
        // No disks in use at all is fine too.
        c.vms[0].disks.clear();
        c.vms[1].disks.clear();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn disk_name_follows_the_vm_name_rules_and_is_unique() {
        let mut c = with_disk();
        for bad in [String::new(), "eMMC".into(), "a b".into(), "a".repeat(32)] {
            c.disks[0].name = bad;
            assert_one(&c, "disk[0].name", "must be 1 to 31 of a-z");
        }
        let mut c = with_disk();
        c.disks[1].name = "emmc".into();
        assert_one(&c, "disk[1].name", "name 'emmc' is already used by disk[0]");
    }

    #[test]
    fn disk_size_is_a_nonzero_multiple_of_512() {
        let mut c = with_disk();
        c.disks[1].size = 0;
        assert_one(&c, "disk[1].size", "size is zero");
        c.disks[1].size = GIB + 256;
        assert_one(
            &c,
            "disk[1].size",
            "size 0x40000100 is not a multiple of 512 bytes",
        );
        c.disks[1].size = GIB + 512;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn slice_must_name_a_disk_that_exists() {
        let mut c = with_disk();
        c.vms[1].disks[0].disk = 2;
        assert_one(
            &c,
            "vm[1].disk[0].disk",
            "disk 2 does not exist; the config has 2 disks",
        );
    }

    #[test]
    fn slice_offset_and_size_are_multiples_of_512() {
        let mut c = with_disk();
        c.vms[1].disks[0].offset = 100;
        assert_one(
            &c,
            "vm[1].disk[0].offset",
            "offset 0x64 is not a multiple of 512 bytes",
        );
        let mut c = with_disk();
        c.vms[1].disks[0].size = 4 * GIB - 1;
        assert_one(
            &c,
            "vm[1].disk[0].size",
            "size 0xffffffff is not a multiple of 512 bytes",
        );
        c.vms[1].disks[0].size = 0;
        assert_one(&c, "vm[1].disk[0].size", "size is zero");
    }

    #[test]
    fn slice_must_end_inside_its_disk() {
        let mut c = with_disk();
        c.vms[1].disks[0].offset = 6 * GIB;
        assert_one(
            &c,
            "vm[1].disk[0].size",
            "slice 0x180000000..0x280000000 (4 GiB) runs past the end of disk 'emmc' (0x200000000, 8 GiB)",
        );
        // Ending exactly at the end is fine.
        c.vms[1].disks[0].offset = 4 * GIB;
        assert_eq!(problems(&c), vec![]);
        // Past the end of the address space, too.
        c.vms[1].disks[0].offset = u64::MAX - 511;
        c.vms[1].disks[0].size = 1024;
        assert_one(&c, "vm[1].disk[0].size", "runs past the end of disk 'emmc'");
    }

    #[test]
    fn read_write_slice_overlapping_another_vms_slice_names_both_vms() {
        let mut c = with_disk();
        c.vms[0].disks = vec![slice(0, 4 * GIB - 512, 1024, true)];
        // Reported on the later slice in config order (vm[1]'s), naming
        // both VMs.
        assert_one(
            &c,
            "vm[1].disk[0].offset",
            "read-write slice 0x0..0x100000000 of disk 'emmc' for vm 'infotainment' overlaps the read-only slice 0xfffffe00..0x100000200 of vm 'safety' (its disk[0]); a read-write slice may overlap no other slice",
        );
        // Read-write over read-write, either way round.
        c.vms[0].disks[0].read_only = false;
        assert_one(&c, "vm[1].disk[0].offset", "overlaps the read-write slice");
        // Read-only over an earlier read-write slice.
        c.vms[1].disks[0].read_only = true;
        assert_one(
            &c,
            "vm[1].disk[0].offset",
            "read-only slice 0x0..0x100000000 of disk 'emmc' for vm 'infotainment' overlaps the read-write slice",
        );
    }

    #[test]
    fn read_write_slice_overlapping_one_of_its_own_vm_is_refused() {
        let mut c = with_disk();
        c.vms[1].disks.push(slice(0, GIB, 512, false));
        assert_one(
            &c,
            "vm[1].disk[1].offset",
            "of vm 'infotainment' (its disk[0])",
        );
    }

    #[test]
    fn read_only_slices_may_overlap_and_other_disks_do_not_count() {
        let mut c = with_disk();
        c.vms[1].disks[0].read_only = true;
        c.vms[0].disks = vec![slice(0, 0, 4 * GIB, true)];
        c.vms[1].disks.push(slice(0, GIB, GIB, true));
        assert_eq!(problems(&c), vec![]);
        // Same range, other disk: no overlap.
        let mut c = with_disk();
        c.vms[0].disks = vec![slice(1, 0, GIB, false)];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn critical_vm_may_not_use_a_disk() {
        let mut c = with_disk();
        c.vms[1].criticality = Criticality::Critical;
        assert_one(
            &c,
            "vm[1].disks",
            "a critical VM cannot use a shared disk because its I/O would wait behind other VMs' requests",
        );
        // Even read-only, even a disk no other VM uses.
        c.vms[1].disks = vec![slice(1, 0, 512, true)];
        assert_one(&c, "vm[1].disks", "a critical VM cannot use a shared disk");
        c.vms[1].disks.clear();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn at_most_4_slices_per_vm() {
        let mut c = with_disk();
        c.vms[1].disks = (0..5u64).map(|k| slice(1, k * 512, 512, false)).collect();
        assert_one(&c, "vm[1].disks", "5 disk slices; a VM may have at most 4");
        c.vms[1].disks.pop();
        assert_eq!(problems(&c), vec![]);
    }

    /// [`with_disk`] with "emmc" laid out as "boot" (256 MiB), "root"
    /// (2 GiB) and "data" (4 GiB), and infotainment's slice partition
    /// "root" instead.
    fn with_partitions() -> SystemConfig {
        let mut c = with_disk();
        c.disks[0].partitions = [("boot", 256 * MIB), ("root", 2 * GIB), ("data", 4 * GIB)]
            .into_iter()
            .map(|(name, size)| DiskPartition {
                name: name.into(),
                size,
            })
            .collect();
        c.vms[1].disks = vec![partition_slice(&c, 0, "root", false)];
        c
    }

    /// A slice of partition `name` of disk `disk` of `c`, with its range
    /// from the layout if the disk declares one (0 bytes at 0 if not).
    fn partition_slice(c: &SystemConfig, disk: u16, name: &str, read_only: bool) -> VmDisk {
        let d = &c.disks[usize::from(disk)];
        let (offset, size) = d
            .partitions
            .iter()
            .position(|p| p.name == name)
            .map_or((0, 0), |p| {
                partition_layout(&d.partitions, d.size).unwrap()[p]
            });
        VmDisk {
            partition: Some(name.into()),
            ..slice(disk, offset, size, read_only)
        }
    }

    #[test]
    fn partition_slices_are_their_partitions() {
        let c = with_partitions();
        assert_eq!(
            (c.vms[1].disks[0].offset, c.vms[1].disks[0].size),
            (257 * MIB, 2 * GIB)
        );
        assert_eq!(problems(&c), vec![]);
        // Other partitions, read-write, in other VMs, and an ordinary slice
        // after the layout's end: no overlap.
        let mut c = with_partitions();
        c.vms[0].disks = vec![
            partition_slice(&c, 0, "boot", false),
            partition_slice(&c, 0, "data", false),
            slice(0, 8 * GIB - MIB, MIB, false),
        ];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn partition_slices_overlap_like_any_slice() {
        let mut c = with_partitions();
        c.vms[0].disks = vec![slice(0, 300 * MIB, 512, true)];
        assert_one(
            &c,
            "vm[1].disk[0].offset",
            "read-write slice 0x10100000..0x90100000 of disk 'emmc' for vm 'infotainment' overlaps the read-only slice 0x12c00000..0x12c00200 of vm 'safety' (its disk[0])",
        );
        let mut c = with_partitions();
        c.vms[0].disks = vec![partition_slice(&c, 0, "root", true)];
        assert_one(&c, "vm[1].disk[0].offset", "overlaps the read-only slice");
        // Both read-only: fine.
        c.vms[1].disks[0].read_only = true;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn partition_must_be_one_the_disk_declares() {
        let mut c = with_partitions();
        c.vms[1].disks = vec![partition_slice(&c, 0, "swap", false)];
        assert_one(
            &c,
            "vm[1].disk[0].partition",
            "disk 'emmc' has no partition named \"swap\"; its partitions are \"boot\", \"root\", \"data\"",
        );
        // Names are case-sensitive, as in the GPT.
        c.vms[1].disks = vec![partition_slice(&c, 0, "Root", false)];
        assert_one(&c, "vm[1].disk[0].partition", "no partition named \"Root\"");
    }

    #[test]
    fn partition_slice_range_must_be_the_layouts() {
        let mut c = with_partitions();
        c.vms[1].disks[0].offset = 0;
        assert_one(
            &c,
            "vm[1].disk[0].partition",
            "slice 0x0..0x80000000 is not partition \"root\" of disk 'emmc', which is 0x10100000..0x90100000 (2 GiB)",
        );
        let mut c = with_partitions();
        c.vms[1].disks[0].size = GIB;
        assert_one(&c, "vm[1].disk[0].partition", "is not partition \"root\"");
    }

    #[test]
    fn partition_name_is_1_to_36_printable_ascii_characters() {
        let mut c = with_disk();
        for good in [
            "a",
            "EFI System Partition",
            "Linux/data-2 (x86)",
            &"p".repeat(36),
        ] {
            c.vms[1].disks = vec![partition_slice(&c, 1, good, false)];
            assert_eq!(problems(&c), vec![], "{good:?}");
        }
        for bad in [
            String::new(),
            "p".repeat(37),
            "tab\there".into(),
            "caf\u{e9}".into(),
        ] {
            c.vms[1].disks = vec![partition_slice(&c, 1, &bad, false)];
            assert_one(
                &c,
                "vm[1].disk[0].partition",
                &format!("partition name {bad:?} must be 1 to 36 printable ASCII characters"),
            );
        }
    }

    #[test]
    fn partitions_found_at_boot_skip_the_range_checks_until_then() {
        // "usb" declares no layout: the hypervisor resolves the partitions
        // from its GPT. Until then they are 0 bytes at 0, checked for
        // nothing but their name and serial, and overlap nothing.
        let mut c = with_disk();
        c.vms[0].disks = vec![partition_slice(&c, 1, "a", false)];
        c.vms[1].disks = vec![partition_slice(&c, 1, "a", false), slice(1, 0, GIB, false)];
        assert_eq!(problems(&c), vec![]);
        c.vms[1].disks[0].serial = "x".repeat(21);
        assert_one(&c, "vm[1].disk[0].serial", "it may be at most 20");
        // Once the hypervisor has filled the range in, it is checked like
        // any slice's.
        let mut c = with_disk();
        c.vms[1].disks = vec![VmDisk {
            partition: Some("a".into()),
            ..slice(1, GIB - 512, 1024, false)
        }];
        assert_one(&c, "vm[1].disk[0].size", "runs past the end of disk 'usb'");
        c.vms[1].disks[0].offset = 100;
        c.vms[1].disks[0].size = 512;
        assert_one(&c, "vm[1].disk[0].offset", "not a multiple of 512 bytes");
        c.vms[1].disks[0].offset = 512;
        c.vms[0].disks = vec![slice(1, 0, 1024, true)];
        assert_one(&c, "vm[1].disk[0].offset", "overlaps the read-only slice");
    }

    #[test]
    fn partition_slice_of_a_missing_disk_reports_only_the_disk() {
        let mut c = with_partitions();
        c.vms[1].disks[0].disk = 2;
        assert_one(&c, "vm[1].disk[0].disk", "disk 2 does not exist");
    }

    #[test]
    fn disk_partitions_have_unique_gpt_names_and_sector_sizes() {
        let mut c = with_partitions();
        c.disks[0].partitions[2].name = "root".into();
        c.vms[1].disks.clear();
        assert_one(
            &c,
            "disk[0].partition[2].name",
            "name \"root\" is already used by partition[1] of this disk",
        );
        let mut c = with_partitions();
        c.disks[0].partitions[0].name = "p".repeat(37);
        assert_one(
            &c,
            "disk[0].partition[0].name",
            "must be 1 to 36 printable ASCII characters",
        );
        // The same name on another disk is fine.
        let mut c = with_partitions();
        c.disks[1].partitions = c.disks[0].partitions[..1].to_vec();
        c.disks[1].partitions[0].size = 512;
        assert_eq!(problems(&c), vec![]);
        let mut c = with_partitions();
        c.disks[0].partitions[0].size = 0;
        c.vms[1].disks.clear();
        assert_one(&c, "disk[0].partition[0].size", "size is zero");
        c.disks[0].partitions[0].size = MIB + 1;
        assert_one(
            &c,
            "disk[0].partition[0].size",
            "size 0x100001 is not a multiple of 512 bytes",
        );
    }

    #[test]
    fn disk_partitions_must_fit_with_the_gpt_reserves() {
        let mut c = with_partitions();
        c.disks[0].partitions[2].size = 6 * GIB;
        // The slice of "root" is fine, but its range is not checked: the
        // layout it comes from is broken.
        assert_one(
            &c,
            "disk[0].partition[2].size",
            "partition \"data\" at 0x90100000..0x210100000 (6 GiB) does not fit in disk 'emmc' (0x200000000, 8 GiB): partitions start at 1 MiB, each on a 1 MiB boundary, and must end by 0x1fff00000, leaving the last 1 MiB for the backup GPT",
        );
        // To the last byte before the reserve.
        let mut c = with_partitions();
        c.disks[0].partitions[2].size = 8 * GIB - MIB - (2 * GIB + 257 * MIB);
        assert_eq!(problems(&c), vec![]);
        c.disks[0].partitions[2].size += 512;
        assert_one(
            &c,
            "disk[0].partition[2].size",
            "does not fit in disk 'emmc'",
        );
        // Absurd sizes are refused, not wrapped.
        c.disks[0].partitions[2].size = u64::MAX - 511;
        assert_one(
            &c,
            "disk[0].partition[2].size",
            "does not fit in disk 'emmc'",
        );
    }

    #[test]
    fn at_most_16_partitions_per_disk() {
        let mut c = with_disk();
        c.disks[0].partitions = (0..17)
            .map(|k| DiskPartition {
                name: format!("p{k}"),
                size: 512,
            })
            .collect();
        assert_one(
            &c,
            "disk[0].partitions",
            "17 partitions; a disk may have at most 16",
        );
        c.disks[0].partitions.pop();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn serial_is_at_most_20_printable_ascii_bytes() {
        let mut c = with_disk();
        c.vms[1].disks[0].serial = "x".repeat(20);
        assert_eq!(problems(&c), vec![]);
        c.vms[1].disks[0].serial = String::new();
        assert_eq!(problems(&c), vec![]);
        c.vms[1].disks[0].serial = "x".repeat(21);
        assert_one(
            &c,
            "vm[1].disk[0].serial",
            "is 21 bytes long; it may be at most 20",
        );
        for bad in ["caf\u{e9}", "a\0b", "tab\there"] {
            c.vms[1].disks[0].serial = bad.into();
            assert_one(&c, "vm[1].disk[0].serial", "must be printable ASCII");
        }
    }

    fn switch(name: &str, uplink: bool) -> Switch {
        Switch {
            name: name.into(),
            uplink,
        }
    }

    fn net(switch: u16, last: u8) -> VmNet {
        VmNet {
            switch,
            mac: [0x02, 0, 0, 0, 0, last],
        }
    }

    /// [`good`] with two switches ("lan", which has the uplink, and
    /// "dmz") and one port on "lan" for infotainment (vm[1]).
    fn with_net() -> SystemConfig {
        let mut c = good();
        c.switches = vec![switch("lan", true), switch("dmz", false)];
        c.vms[1].nets = vec![net(0, 1)];
        c
    }

    #[test]
    fn nets_on_switches_are_fine() {
        assert_eq!(problems(&with_net()), vec![]);
        let mut c = with_net();
        c.vms[0].nets = vec![net(1, 2), net(0, 3)];
        c.vms[1].nets.push(net(1, 4));
        assert_eq!(problems(&c), vec![]);
        // Switches without ports, or without an uplink, are fine too.
        c.vms[0].nets.clear();
        c.vms[1].nets.clear();
        c.switches[0].uplink = false;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn switch_name_follows_the_vm_name_rules_and_is_unique() {
        let mut c = with_net();
        for bad in [String::new(), "LAN".into(), "a b".into(), "a".repeat(32)] {
            c.switches[0].name = bad;
            assert_one(&c, "switch[0].name", "must be 1 to 31 of a-z");
        }
        let mut c = with_net();
        c.switches[1].name = "lan".into();
        assert_one(
            &c,
            "switch[1].name",
            "name 'lan' is already used by switch[0]",
        );
    }

    #[test]
    fn at_most_one_switch_has_the_uplink() {
        let mut c = with_net();
        c.switches[1].uplink = true;
        assert_one(
            &c,
            "switch[1].uplink",
            "switch 'dmz' cannot have the uplink too: switch[0] 'lan' already has the board's physical NIC, and at most 1 switch may have uplink = true",
        );
        // A third names both earlier ones, and the second is still wrong.
        c.switches.push(switch("wan", true));
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[1].0, "switch[2].uplink");
        assert!(
            p[1].1
                .contains("switch[0] 'lan', switch[1] 'dmz' already have"),
            "{p:?}"
        );
        // The uplink may be on any one switch.
        c.switches.pop();
        c.switches[0].uplink = false;
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn net_must_name_a_switch_that_exists() {
        let mut c = with_net();
        c.vms[1].nets[0].switch = 2;
        assert_one(
            &c,
            "vm[1].net[0].switch",
            "switch 2 does not exist; the config has 2 switches",
        );
    }

    #[test]
    fn mac_must_be_unicast_and_not_zero() {
        let mut c = with_net();
        c.vms[1].nets[0].mac = [0; 6];
        assert_one(
            &c,
            "vm[1].net[0].mac",
            "MAC address 00:00:00:00:00:00 is all zeros; a net needs a unicast address",
        );
        for first in [0x01, 0x03, 0xff, 0x33] {
            c.vms[1].nets[0].mac = [first, 0, 0x5e, 0, 0, 1];
            assert_one(
                &c,
                "vm[1].net[0].mac",
                "is a multicast address (bit 0 of its first byte is set)",
            );
        }
        c.vms[1].nets[0].mac = [0xff; 6];
        assert_one(
            &c,
            "vm[1].net[0].mac",
            "MAC address ff:ff:ff:ff:ff:ff is a multicast",
        );
        // Bit 0 clear: unicast, globally or locally administered.
        for first in [0x00, 0x02, 0x52, 0xfe] {
            c.vms[1].nets[0].mac = [first, 0, 0, 0, 0, 1];
            assert_eq!(problems(&c), vec![]);
        }
    }

    #[test]
    fn duplicate_mac_names_both_vms_and_their_nets() {
        let mut c = with_net();
        c.vms[0].nets = vec![net(1, 9), net(1, 1)];
        // Reported on the later net in config order (vm[1]'s).
        assert_one(
            &c,
            "vm[1].net[0].mac",
            "MAC address 02:00:00:00:00:01 of vm 'infotainment' (its net[0]) is already used by vm 'safety' (its net[1]); every net needs a MAC address of its own",
        );
        // On another switch, or in the same VM, it is still a duplicate.
        let mut c = with_net();
        c.vms[1].nets.push(net(1, 2));
        c.vms[1].nets.push(net(0, 1));
        assert_one(
            &c,
            "vm[1].net[2].mac",
            "of vm 'infotainment' (its net[2]) is already used by vm 'infotainment' (its net[0])",
        );
    }

    #[test]
    fn at_most_4_nets_per_vm() {
        let mut c = with_net();
        c.vms[1].nets = (0..5u8).map(|k| net(u16::from(k % 2), k + 1)).collect();
        assert_one(&c, "vm[1].nets", "5 nets; a VM may have at most 4");
        c.vms[1].nets.pop();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn critical_vm_may_not_use_a_switch() {
        let mut c = with_net();
        c.vms[1].criticality = Criticality::Critical;
        assert_one(
            &c,
            "vm[1].nets",
            "a critical VM cannot use a shared switch because its frames would wait behind other VMs' traffic: give it no [[vm.net]], or make it criticality = \"normal\"",
        );
        // Even on a switch no other VM is a port of, without the uplink.
        c.vms[1].nets[0].switch = 1;
        assert_one(&c, "vm[1].nets", "a critical VM cannot use a shared switch");
        c.vms[1].nets.clear();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn disks_and_nets_share_the_8_virtio_devices() {
        let mut c = with_net();
        c.disks = vec![Disk {
            name: "emmc".into(),
            size: GIB,
            partitions: vec![],
        }];
        let slices = |n: u64| (0..n).map(|k| slice(0, k * 512, 512, false)).collect();
        // 4 disks and 4 nets: the whole window.
        c.vms[1].disks = slices(4);
        c.vms[1].nets = (1..=4).map(|k| net(0, k)).collect();
        assert_eq!(problems(&c), vec![]);
        assert_eq!(c.vms[1].net_virtio_index(3), MAX_VIRTIO - 1);
        // One more of either is over the window, and over its own limit.
        c.vms[1].nets.push(net(1, 5));
        assert_eq!(
            problems(&c),
            vec![
                (
                    "vm[1].nets".into(),
                    "5 nets; a VM may have at most 4".into()
                ),
                (
                    "vm[1].nets".into(),
                    "4 disk slices and 5 nets make 9 virtio-mmio devices; a VM may have at most 8 (its disks are devices 0, 1, ..., then its nets)".into()
                ),
            ]
        );
        c.vms[1].nets.pop();
        c.vms[1].disks = slices(5);
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            (
                "vm[1].disks".into(),
                "5 disk slices; a VM may have at most 4".into()
            )
        );
        assert_eq!(p[1].0, "vm[1].nets");
        assert!(
            p[1].1
                .starts_with("5 disk slices and 4 nets make 9 virtio-mmio devices"),
            "{p:?}"
        );
        // Disks alone over the limit are the disk limit's to report.
        c.vms[1].nets.clear();
        c.vms[1].disks = slices(9);
        assert_one(&c, "vm[1].disks", "9 disk slices");
    }

    /// [`good`] on a 6-CPU board with pool `general` of cpu3 and cpu4,
    /// shared by a third VM, `batch`, with 3 vCPUs.
    fn with_pool() -> SystemConfig {
        let mut c = good();
        c.board.cpus = 6;
        c.pools = vec![pool("general", &[3, 4])];
        let mut batch = vm("batch", 16 * MIB, None, &[]);
        batch.pool = Some(0);
        batch.vcpus = 3;
        c.vms.push(batch);
        c
    }

    fn pool(name: &str, pcpus: &[u16]) -> Pool {
        Pool {
            name: name.into(),
            pcpus: pcpus.into(),
        }
    }

    #[test]
    fn pool_vm_is_fine() {
        let mut c = with_pool();
        assert_eq!(problems(&c), vec![]);
        assert_eq!(c.vms[2].vcpu_count(), 3);
        // More vCPUs than the pool has pCPUs is what a pool is for.
        c.vms[2].vcpus = MAX_VCPUS as u16;
        c.vms[2].weight = 1;
        c.vms[2].cap = Some(1);
        assert_eq!(problems(&c), vec![]);
        c.vms[2].vcpus = 1;
        c.vms[2].weight = MAX_WEIGHT;
        c.vms[2].cap = Some(MAX_CAP);
        assert_eq!(problems(&c), vec![]);
        // Two VMs in one pool, and a pool with 8 pCPUs.
        c.board.cpus = 16;
        c.pools[0].pcpus = (3..11).collect();
        let mut other = c.vms[2].clone();
        other.name = "batch-2".into();
        c.vms.push(other);
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn vm_with_both_pcpus_and_a_pool_is_refused() {
        let mut c = with_pool();
        c.vms[2].pcpus = vec![5];
        assert_one(
            &c,
            "vm[2].pool",
            "a VM has either dedicated `pcpus` or a `pool` whose pCPUs it shares, not both",
        );
    }

    #[test]
    fn vm_with_neither_pcpus_nor_a_pool_has_no_vcpus() {
        let mut c = with_pool();
        c.vms[2].pool = None;
        assert_one(
            &c,
            "vm[2].pcpus",
            "0 vCPUs: list the VM's pCPUs in `pcpus`, or name a `pool` (with `vcpus`) for it to \
             share",
        );
    }

    #[test]
    fn pool_index_must_exist() {
        let mut c = with_pool();
        c.vms[2].pool = Some(1);
        assert_one(
            &c,
            "vm[2].pool",
            "pool 1 does not exist; the config has 1 pools",
        );
    }

    #[test]
    fn pool_vm_needs_1_to_8_vcpus() {
        let mut c = with_pool();
        c.vms[2].vcpus = 0;
        assert_one(
            &c,
            "vm[2].vcpus",
            "0 vCPUs; a VM in a pool needs `vcpus`, 1 to 8",
        );
        c.vms[2].vcpus = 9;
        assert_one(&c, "vm[2].vcpus", "9 vCPUs");
    }

    #[test]
    fn vcpus_of_a_pinned_vm_must_match_its_pcpus() {
        let mut c = with_pool();
        c.vms[1].vcpus = 3;
        assert_one(
            &c,
            "vm[1].vcpus",
            "vcpus = 3 but `pcpus` lists 2 pCPUs; a VM with dedicated pCPUs has one vCPU on each",
        );
        c.vms[1].vcpus = 0;
        assert_one(&c, "vm[1].vcpus", "vcpus = 0 but `pcpus` lists 2 pCPUs");
    }

    #[test]
    fn weight_must_be_1_to_65535() {
        let mut c = with_pool();
        c.vms[2].weight = 0;
        assert_one(
            &c,
            "vm[2].weight",
            "weight 0 must be 1 to 65535 (default 256): each vCPU's share of the pool relative \
             to the others'",
        );
        c.vms[2].weight = MAX_WEIGHT + 1;
        assert_one(&c, "vm[2].weight", "weight 65536 must be 1 to 65535");
    }

    #[test]
    fn cap_must_be_1_to_100_percent() {
        let mut c = with_pool();
        c.vms[2].cap = Some(0);
        assert_one(
            &c,
            "vm[2].cap",
            "cap 0 must be 1 to 100: the most percent of one pCPU each vCPU may use",
        );
        c.vms[2].cap = Some(101);
        assert_one(&c, "vm[2].cap", "cap 101 must be 1 to 100");
        c.vms[2].cap = Some(u8::MAX);
        assert_one(&c, "vm[2].cap", "cap 255 must be 1 to 100");
    }

    #[test]
    fn weight_and_cap_apply_to_pool_vms_only() {
        let mut c = with_pool();
        c.vms[1].weight = 512;
        assert_one(
            &c,
            "vm[1].weight",
            "`weight` applies to pool VMs, whose vCPUs share a pool's pCPUs; this VM has \
             dedicated `pcpus` to itself: drop `weight`, or put the VM in a `pool`",
        );
        c.vms[1].weight = DEFAULT_WEIGHT;
        c.vms[1].cap = Some(50);
        assert_one(&c, "vm[1].cap", "`cap` applies to pool VMs");
    }

    #[test]
    fn pool_needs_1_to_8_pcpus() {
        let mut c = with_pool();
        c.pools[0].pcpus.clear();
        assert_one(&c, "pool[0].pcpus", "0 pCPUs; a pool shares 1 to 8");
        c.board.cpus = 16;
        c.pools[0].pcpus = (3..12).collect();
        assert_one(&c, "pool[0].pcpus", "9 pCPUs; a pool shares 1 to 8");
    }

    #[test]
    fn pool_pcpu_must_exist_on_the_board() {
        let mut c = with_pool();
        c.pools[0].pcpus = vec![3, 6];
        assert_one(
            &c,
            "pool[0].pcpus",
            "cpu6 is in the pool but the board has 6 CPUs",
        );
    }

    #[test]
    fn pool_pcpu_listed_twice_is_refused() {
        let mut c = with_pool();
        c.pools[0].pcpus = vec![3, 4, 3];
        assert_one(&c, "pool[0].pcpus", "cpu3 is listed twice");
    }

    #[test]
    fn two_pools_sharing_a_pcpu_are_refused_on_the_later() {
        let mut c = with_pool();
        c.pools.push(pool("other", &[5, 4]));
        assert_one(
            &c,
            "pool[1].pcpus",
            "cpu4 is already in pool[0] 'general'; a pCPU is in one pool at most",
        );
    }

    #[test]
    fn pool_names_must_be_valid_and_unique() {
        let mut c = with_pool();
        c.pools.push(pool("general", &[5]));
        assert_one(
            &c,
            "pool[1].name",
            "name 'general' is already used by pool[0]",
        );
        c.pools[1].name = "General".into();
        assert_one(
            &c,
            "pool[1].name",
            "pool name 'General' must be 1 to 31 of a-z, 0-9, '_' and '-'",
        );
        c.pools[1].name = String::new();
        assert_one(&c, "pool[1].name", "pool name '' must be");
    }

    #[test]
    fn at_most_4_pools() {
        let mut c = with_pool();
        c.board.cpus = 16;
        for k in 1..=MAX_POOLS as u16 {
            c.pools.push(pool(&format!("p{k}"), &[4 + k]));
        }
        assert_one(&c, "board.pools", "5 pools; a system may have at most 4");
        c.pools.pop();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn dedicated_pcpu_in_a_pool_is_refused_naming_both() {
        let mut c = with_pool();
        pin(&mut c.vms[1], &[1, 3]);
        assert_one(
            &c,
            "vm[1].pcpus",
            "cpu3 is dedicated to vm 'infotainment' but is also in pool[0] 'general'; a pCPU is \
             either one VM's or a pool's",
        );
        // Given to two VMs and a pool: once on the VM that has it first,
        // once on the one that has it too.
        pin(&mut c.vms[1], &[1, 0]);
        c.pools[0].pcpus.push(0);
        let p = problems(&c);
        let got: Vec<(&str, &str)> = p.iter().map(|(f, m)| (f.as_str(), m.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    "vm[0].pcpus",
                    "cpu0 is dedicated to vm 'safety' but is also in pool[0] 'general'; a pCPU \
                     is either one VM's or a pool's"
                ),
                ("vm[1].pcpus", "cpu0 is already given to vm 'safety'")
            ]
        );
    }

    #[test]
    fn critical_vm_in_a_pool_is_refused() {
        let mut c = with_pool();
        c.vms[2].criticality = Criticality::Critical;
        assert_one(
            &c,
            "vm[2].pool",
            "a critical VM keeps dedicated pCPUs: give it `pcpus` instead of a `pool`, or make \
             it criticality = \"normal\"",
        );
    }

    #[test]
    fn pool_no_vm_uses_is_fine() {
        let mut c = with_pool();
        c.vms.pop();
        assert_eq!(problems(&c), vec![]);
        c.pools.push(pool("spare", &[5]));
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn pool_pcpus_are_left_to_the_hypervisor() {
        let mut c = with_pool();
        c.board.cpus = 4;
        c.pools[0].pcpus = vec![3];
        c.vms[0].criticality = Criticality::Critical;
        c.vms[1].criticality = Criticality::Critical;
        // cpu3 is the pool's, not a critical VM's.
        assert_eq!(problems(&c), vec![]);
        // Even when a critical VM also claims it, which is refused on its
        // own.
        pin(&mut c.vms[1], &[1, 2, 3]);
        assert_one(
            &c,
            "vm[1].pcpus",
            "cpu3 is dedicated to vm 'infotainment' but is also in pool[0] 'general'",
        );
    }

    #[test]
    fn pool_vm_may_not_have_passthrough() {
        let mut c = with_pool();
        c.vms[2].passthrough = vec![device("rtc", 0x0901_0000, 0x1000, &[34])];
        assert_one(
            &c,
            "vm[2].passthrough",
            "a pool VM's vCPUs move between pCPUs",
        );
    }

    #[test]
    fn pool_vm_may_have_channels_disks_and_nets() {
        // Their interrupts follow the vCPU the guest routes them to; the
        // config does not trip over a VM without pCPUs.
        let mut c = with_pool();
        c.channels = vec![channel("control", [2, 0], 4 << 10)];
        c.disks = vec![Disk {
            name: "emmc".into(),
            size: 8 << 30,
            partitions: vec![],
        }];
        c.vms[2].disks = vec![VmDisk {
            disk: 0,
            offset: 0,
            size: 1 << 20,
            partition: None,
            read_only: false,
            serial: "batch-disk0".into(),
        }];
        c.switches = vec![Switch {
            name: "lan".into(),
            uplink: false,
        }];
        c.vms[2].nets = vec![VmNet {
            switch: 0,
            mac: [2, 0, 0, 0, 0, 1],
        }];
        assert_eq!(problems(&c), vec![]);
        // A broken pool VM with all of them (and a passthrough device)
        // still gives problems, not a panic.
        c.vms[2].passthrough = vec![device("rtc", 0x0901_0000, 0x1000, &[34])];
        c.vms[2].vcpus = 0;
        c.vms[2].pool = Some(9);
        assert_eq!(problems(&c).len(), 3, "{:?}", problems(&c));
    }
}
