//! The rules a [`SystemConfig`] must satisfy before it boots.

use alloc::format;
use alloc::vec::Vec;

use crate::{
    Field, ImageInfo, Problem, Size, SystemConfig, VmConfig, BLOCK_SIZE, DTB_RESERVE, HYP_RESERVE,
    LINUX_SLACK, MAX_CMDLINE_LEN, MAX_NAME_LEN, MAX_PCPUS, MAX_VCPUS,
};

/// Checks `cfg` against every rule and returns what is wrong; empty means
/// valid. `images[i]` describes payload image `i` ([`ImageInfo::of`]).
///
/// Each [`Problem`] names the most specific field. A rule between two VMs
/// (duplicate name, overlapping region, shared pCPU) is reported on the later
/// VM and names the earlier one.
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
        v.image(i, vm, images);
        v.cmdline(i, vm);
    }
    v.total_memory();
    v.problems
}

struct Validator<'a> {
    cfg: &'a SystemConfig,
    problems: Vec<Problem>,
}

fn aligned(x: u64) -> bool {
    x.is_multiple_of(BLOCK_SIZE)
}

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

    fn pcpus(&mut self, i: usize, vm: &VmConfig) {
        let field = Field::Vm(i, "pcpus");
        let n = vm.pcpus.len();
        if n == 0 || n > MAX_VCPUS {
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
            }
        }
    }

    fn image(&mut self, i: usize, vm: &VmConfig, images: &[ImageInfo]) {
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
    use crate::{Board, RestartPolicy, DEFAULT_CMDLINE, IMAGE_LOAD_OFFSET, LINUX_CMDLINE};
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
            restart: RestartPolicy::Never,
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.into(),
        }
    }

    /// A valid system: 4 CPUs, 1 GiB at 0x4000_0000, two VMs.
    fn good() -> SystemConfig {
        SystemConfig {
            board: Board {
                cpus: 4,
                ram_base: 0x4000_0000,
                ram_size: 1 << 30,
            },
            vms: vec![
                vm("safety", 16 * MIB, Some(0x5000_0000), &[0]),
                vm("infotainment", 256 * MIB, None, &[1, 2]),
            ],
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
        c.vms[0].pcpus = vec![0];
        assert_one(&c, "board.cpus", "65 CPUs");
        c.board.cpus = 64;
        c.vms[0].pcpus = vec![63];
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
        c.vms[1].pcpus = vec![];
        assert_one(&c, "vm[1].pcpus", "0 vCPUs");
        c.vms[1].pcpus = (1..10).collect();
        assert_one(&c, "vm[1].pcpus", "9 vCPUs");
        c.vms[1].pcpus = (1..9).collect();
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn pcpu_must_exist_on_the_board() {
        let mut c = good();
        c.vms[1].pcpus = vec![1, 5];
        assert_one(
            &c,
            "vm[1].pcpus",
            "vCPU 1 is pinned to cpu5 but the board has 4 CPUs",
        );
        c.vms[1].pcpus = vec![1, 3];
        assert_eq!(problems(&c), vec![]);
    }

    #[test]
    fn pcpu_is_given_at_most_once_in_the_system() {
        let mut c = good();
        c.vms[1].pcpus = vec![1, 0];
        assert_one(&c, "vm[1].pcpus", "cpu0 is already given to vm 'safety'");
        c.vms[1].pcpus = vec![2, 2];
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
}
