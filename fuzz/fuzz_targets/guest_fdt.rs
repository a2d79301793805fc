//! Guest device tree generation.
//!
//! Two kinds of input:
//! - a VM with passthrough devices that `bulkhead_config::validate`
//!   accepts, turned into a [`GuestDt`] the way the hypervisor does it
//!   (hypervisor/src/vm.rs): its tree must build and fit the DTB space, since
//!   a VM whose tree is not generated boots without one;
//! - a [`GuestDt`] straight from the input: the documented preconditions
//!   are reported as their errors, the writer refuses only strings with a
//!   NUL (any label or compatible still gives a valid node name), and
//!   whatever builds must be right.
//!
//! Every tree that builds is parsed back with the `fdt` crate, and the same
//! facts must come back: memory base and size, one cpu node per vCPU with
//! its MPIDR, the GIC, timer and UART, each device's reg, compatible list,
//! interrupts and clock, the command line, the initrd.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_config::toml::parse;
use bulkhead_config::{ImageInfo, DTB_RESERVE, RAM_IPA};
use bulkhead_guest_fdt::{build, Device, Error, GuestDt, Timer, GIC_PHANDLE, MAX_VCPUS};
use fdt::node::FdtNode;
use fdt::Fdt;
use libfuzzer_sys::fuzz_target;

/// The virtual devices' addresses, as in hypervisor/src/vm.rs.
const VGICD_IPA: u64 = 0x0800_0000;
const VGICR_IPA: u64 = 0x080A_0000;
const VUART_IPA: u64 = 0x0900_0000;
const VUART_SPI: u32 = 1;

#[derive(Arbitrary, Debug)]
enum Input {
    Config(ConfigVm),
    Raw(RawDt),
}

/// A VM as a config file describes it.
#[derive(Arbitrary, Debug)]
struct ConfigVm {
    /// RAM in 2 MiB blocks (plus one).
    blocks: u8,
    /// vCPUs (1..=8).
    vcpus: u8,
    /// Appended to the default command line.
    cmdline: Vec<u8>,
    restarts: u32,
    initrd: Option<(u16, u16)>,
    devices: Vec<ConfigDevice>,
}

#[derive(Arbitrary, Debug)]
struct ConfigDevice {
    /// Label characters, mapped into `[a-z0-9_-]`.
    name: Vec<u8>,
    /// 4 KiB page number of the MMIO range.
    page: u32,
    pages: u8,
    /// SPIs, mapped into 32..=127.
    irqs: Vec<u8>,
    /// `compatible` strings, mapped into printable ASCII.
    compatible: Vec<Vec<u8>>,
}

/// A `GuestDt` with no constraints.
#[derive(Arbitrary, Debug)]
struct RawDt {
    mem_base: u64,
    mem_size: u64,
    n_vcpus: u16,
    gicd: (u64, u64),
    gicr: (u64, u64),
    uart: (u64, u64, u32),
    ppis: [u32; 4],
    bootargs: String,
    initrd: Option<(u64, u64)>,
    devices: Vec<RawDevice>,
}

#[derive(Arbitrary, Debug)]
struct RawDevice {
    name: String,
    base: u64,
    size: u64,
    compatible: Vec<String>,
    spis: Vec<u32>,
}

/// The label characters a config accepts.
const LABEL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";

fn label(bytes: &[u8]) -> String {
    let bytes = if bytes.is_empty() { &[0][..] } else { bytes };
    bytes
        .iter()
        .take(31)
        .map(|&b| char::from(LABEL[usize::from(b) % LABEL.len()]))
        .collect()
}

fn printable(bytes: &[u8]) -> String {
    let bytes = if bytes.is_empty() { &[b'x'][..] } else { bytes };
    bytes
        .iter()
        .take(63)
        .map(|&b| char::from(0x20 + b % 95))
        .collect()
}

/// A TOML basic string holding `s` (printable ASCII).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The config file describing `vm` (written as text, so that fields the
/// schema gains later keep their defaults).
fn config_text(vm: &ConfigVm) -> String {
    let memory = (u64::from(vm.blocks) + 1) << 21;
    let pcpus: Vec<String> = (0..=vm.vcpus % 8).map(|c| c.to_string()).collect();
    let cmdline: String = vm
        .cmdline
        .iter()
        .take(200)
        .map(|&b| char::from(0x20 + b % 95))
        .collect();
    let mut text = format!(
        "[board]\ncpus = 8\nmemory = \"1G\"\n\n[[vm]]\nname = \"vm\"\nguest = \"hello\"\n\
         memory = {memory}\npcpus = [{}]\ncmdline = {}\n",
        pcpus.join(", "),
        quoted(&cmdline)
    );
    for d in vm.devices.iter().take(8) {
        let irqs: Vec<String> = d
            .irqs
            .iter()
            .take(8)
            .map(|&i| (32 + u32::from(i % 96)).to_string())
            .collect();
        let compatible: Vec<String> = d
            .compatible
            .iter()
            .take(4)
            .map(|c| quoted(&printable(c)))
            .collect();
        text.push_str(&format!(
            "\n[[vm.passthrough]]\nname = {}\nbase = {}\nsize = {}\nirqs = [{}]\ncompatible = [{}]\n",
            quoted(&label(&d.name)),
            u64::from(d.page) << 12,
            (u64::from(d.pages) + 1) << 12,
            irqs.join(", "),
            compatible.join(", ")
        ));
    }
    text
}

/// Builds the VM's tree if its config validates; it must build.
fn config_vm(vm: &ConfigVm) {
    let text = config_text(vm);
    let parsed = match parse(&text, "fuzz.toml") {
        Ok(parsed) => parsed,
        Err(d) => panic!("the generated config does not parse: {d:?}\n{text}"),
    };
    if parsed.check(&[ImageInfo::raw(0x1000)]).is_err() {
        return;
    }
    let cfg = &parsed.config;
    let vmc = &cfg.vms[0];
    let compat: Vec<Vec<&str>> = vmc
        .passthrough
        .iter()
        .map(|d| d.compatible.iter().map(String::as_str).collect())
        .collect();
    let devices: Vec<Device> = vmc
        .passthrough
        .iter()
        .zip(&compat)
        .map(|(d, c)| Device {
            name: &d.name,
            base: d.base,
            size: d.size,
            compatible: c,
            spis: &d.irqs,
        })
        .collect();
    let initrd = vm.initrd.map(|(start, len)| {
        let start = RAM_IPA + (u64::from(start) << 12);
        (start, start + u64::from(len))
    });
    let n_vcpus = vmc.vcpu_count() as u16;
    let dt = GuestDt {
        mem_base: RAM_IPA,
        mem_size: vmc.memory,
        n_vcpus,
        gicd: (VGICD_IPA, bulkhead_vgic::GICD_SIZE),
        gicr: (
            VGICR_IPA,
            bulkhead_vgic::GICR_FRAME_SIZE * u64::from(n_vcpus),
        ),
        uart: (VUART_IPA, bulkhead_devices::pl011::SIZE, VUART_SPI),
        timer: Timer::default(),
        bootargs: &vmc.cmdline,
        restarts: vm.restarts,
        initrd,
        devices: &devices,
        // Channel ends (their own nodes, or PCI functions) join this target
        // with the channel model.
        channels: &[],
        pci: None,
        // virtio-mmio transports (a VM's disks) join this target with the
        // virtio-blk model; check_tree already checks their nodes.
        virtio: &[],
    };
    let blob = match build(&dt) {
        Ok(blob) => blob,
        Err(e) => panic!("a valid config's device tree does not build: {e} ({e:?})\n{dt:#?}"),
    };
    assert!(blob.len() as u64 <= DTB_RESERVE, "{} bytes", blob.len());
    check_tree(&dt, &blob);
}

fn raw_dt(raw: &RawDt) {
    let compat: Vec<Vec<&str>> = raw
        .devices
        .iter()
        .map(|d| d.compatible.iter().map(String::as_str).collect())
        .collect();
    let devices: Vec<Device> = raw
        .devices
        .iter()
        .zip(&compat)
        .map(|(d, c)| Device {
            name: &d.name,
            base: d.base,
            size: d.size,
            compatible: c,
            spis: &d.spis,
        })
        .collect();
    let dt = GuestDt {
        mem_base: raw.mem_base,
        mem_size: raw.mem_size,
        // Small VMs mostly; now and then up to the limit and past it.
        n_vcpus: if raw.n_vcpus & 0xe000 == 0xe000 {
            raw.n_vcpus & 0x1fff
        } else {
            raw.n_vcpus % 64
        },
        gicd: raw.gicd,
        gicr: raw.gicr,
        uart: raw.uart,
        timer: Timer { ppis: raw.ppis },
        bootargs: &raw.bootargs,
        restarts: 0,
        initrd: raw.initrd,
        devices: &devices,
        channels: &[],
        pci: None,
        // virtio-mmio transports (a VM's disks) join this target with the
        // virtio-blk model; check_tree already checks their nodes.
        virtio: &[],
    };
    let wraps = |base: u64, size: u64| size == 0 || base.checked_add(size - 1).is_none();
    let precondition = if dt.n_vcpus == 0 {
        Some(Error::NoVcpus)
    } else if dt.n_vcpus > MAX_VCPUS {
        Some(Error::TooManyVcpus)
    } else if wraps(dt.mem_base, dt.mem_size) {
        Some(Error::BadMemory)
    } else if dt.initrd.is_some_and(|(start, end)| end < start) {
        Some(Error::BadInitrd)
    } else {
        dt.devices.iter().find_map(|d| {
            if wraps(d.base, d.size) {
                Some(Error::BadDeviceRange(d.base))
            } else {
                d.spis
                    .iter()
                    .find(|&&i| !(32..=1019).contains(&i))
                    .map(|&i| Error::BadSpi(i))
            }
        })
    };
    match (build(&dt), precondition) {
        (Err(got), Some(want)) => assert_eq!(got, want),
        (Ok(_), Some(want)) => panic!("built a tree despite {want:?}"),
        (Ok(blob), None) => check_tree(&dt, &blob),
        // The writer's one refusal left: a NUL in a string. Node names are
        // always made valid.
        (Err(Error::Fdt(e)), None) => {
            let nul = dt.bootargs.contains('\0')
                || dt
                    .devices
                    .iter()
                    .any(|d| d.compatible.iter().any(|c| c.contains('\0')));
            assert!(nul, "the writer refused a tree without a NUL: {e:?}");
        }
        (Err(e), None) => panic!("unexpected {e:?}"),
    }
}

fn be32(v: &[u8]) -> Vec<u32> {
    assert_eq!(v.len() % 4, 0);
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn be64(v: &[u8]) -> Vec<u64> {
    assert_eq!(v.len() % 8, 0);
    v.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn prop<'a>(node: FdtNode<'_, 'a>, name: &str) -> &'a [u8] {
    node.property(name)
        .unwrap_or_else(|| panic!("{} has no {name}", node.name))
        .value
}

fn strings(value: &[u8]) -> Vec<&str> {
    let Some(body) = value.strip_suffix(&[0]) else {
        assert!(value.is_empty(), "string list without its NUL");
        return Vec::new();
    };
    body.split(|&b| b == 0)
        .map(|s| std::str::from_utf8(s).expect("UTF-8"))
        .collect()
}

/// The facts `dt` describes are the ones `blob` holds.
fn check_tree(dt: &GuestDt, blob: &[u8]) {
    let tree = Fdt::new(blob).expect("the generated blob parses");
    let root = tree.find_node("/").expect("root");
    assert_eq!(be32(prop(root, "#address-cells")), [2]);
    assert_eq!(be32(prop(root, "#size-cells")), [2]);
    assert_eq!(be32(prop(root, "interrupt-parent")), [GIC_PHANDLE]);

    let nodes: Vec<FdtNode> = root.children().collect();
    assert_eq!(
        nodes.len(),
        8 + dt.devices.len() + dt.virtio.len(),
        "root has 8 nodes, the devices and the virtio transports"
    );
    let names: Vec<&str> = nodes.iter().take(7).map(|n| n.name).collect();
    assert_eq!(
        names,
        [
            format!("memory@{:x}", dt.mem_base).as_str(),
            "cpus",
            "psci",
            format!("intc@{:x}", dt.gicd.0).as_str(),
            "timer",
            "apb-pclk",
            format!("pl011@{:x}", dt.uart.0).as_str(),
        ]
    );

    let mem = nodes[0];
    assert_eq!(strings(prop(mem, "device_type")), ["memory"]);
    assert_eq!(be64(prop(mem, "reg")), [dt.mem_base, dt.mem_size]);

    let cpus: Vec<FdtNode> = nodes[1].children().collect();
    assert_eq!(cpus.len(), usize::from(dt.n_vcpus));
    for (i, cpu) in cpus.iter().enumerate() {
        let mpidr = bulkhead_psci::vcpu_mpidr(i as u16) as u32;
        assert_eq!(cpu.name, format!("cpu@{mpidr:x}"));
        assert_eq!(be32(prop(*cpu, "reg")), [mpidr]);
        assert_eq!(strings(prop(*cpu, "device_type")), ["cpu"]);
        assert_eq!(strings(prop(*cpu, "enable-method")), ["psci"]);
    }

    let gic = nodes[3];
    assert_eq!(
        be64(prop(gic, "reg")),
        [dt.gicd.0, dt.gicd.1, dt.gicr.0, dt.gicr.1]
    );
    assert_eq!(be32(prop(gic, "phandle")), [GIC_PHANDLE]);
    assert_eq!(be32(prop(gic, "#interrupt-cells")), [3]);

    let timer: Vec<u32> = dt.timer.ppis.iter().flat_map(|&p| [1, p, 4]).collect();
    assert_eq!(be32(prop(nodes[4], "interrupts")), timer);

    let uart = nodes[6];
    assert_eq!(be64(prop(uart, "reg")), [dt.uart.0, dt.uart.1]);
    assert_eq!(be32(prop(uart, "interrupts")), [0, dt.uart.2, 4]);

    for (dev, node) in dt.devices.iter().zip(&nodes[7..]) {
        assert!(
            node.name.ends_with(&format!("@{:x}", dev.base)),
            "{} for {dev:?}",
            node.name
        );
        assert_eq!(be64(prop(*node, "reg")), [dev.base, dev.size]);
        assert_eq!(strings(prop(*node, "compatible")), dev.compatible);
        let irqs: Vec<u32> = dev.spis.iter().flat_map(|&i| [0, i - 32, 4]).collect();
        match node.property("interrupts") {
            Some(p) => assert_eq!(be32(p.value), irqs),
            None => assert!(irqs.is_empty()),
        }
        let primecell = dev.compatible.contains(&"arm,primecell");
        assert_eq!(node.property("clocks").is_some(), primecell);
    }

    let virtio_nodes = &nodes[7 + dt.devices.len()..];
    for (v, node) in dt.virtio.iter().zip(virtio_nodes) {
        assert_eq!(node.name, format!("virtio_mmio@{:x}", v.base));
        assert_eq!(strings(prop(*node, "compatible")), ["virtio,mmio"]);
        assert_eq!(be64(prop(*node, "reg")), [v.base, v.size]);
        assert_eq!(be32(prop(*node, "interrupts")), [0, v.spi, 4]);
        assert!(prop(*node, "dma-coherent").is_empty());
    }

    let chosen = nodes[7 + dt.devices.len() + dt.virtio.len()];
    assert_eq!(chosen.name, "chosen");
    assert_eq!(strings(prop(chosen, "bootargs")), [dt.bootargs]);
    assert_eq!(
        prop(chosen, "bulkhead,restarts"),
        &dt.restarts.to_be_bytes()[..]
    );
    assert_eq!(
        strings(prop(chosen, "stdout-path")),
        [format!("/pl011@{:x}", dt.uart.0)]
    );
    let initrd = (
        chosen.property("linux,initrd-start").map(|p| be64(p.value)),
        chosen.property("linux,initrd-end").map(|p| be64(p.value)),
    );
    match dt.initrd {
        Some((start, end)) => assert_eq!(initrd, (Some(vec![start]), Some(vec![end]))),
        None => assert_eq!(initrd, (None, None)),
    }
    // What a kernel reads through the usual accessors agrees.
    assert_eq!(tree.chosen().bootargs(), Some(dt.bootargs));
    assert_eq!(tree.cpus().count(), usize::from(dt.n_vcpus));
}

fuzz_target!(|input: Input| {
    match input {
        Input::Config(vm) => config_vm(&vm),
        Input::Raw(raw) => raw_dt(&raw),
    }
});
