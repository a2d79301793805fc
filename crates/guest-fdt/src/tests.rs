extern crate std;

use super::*;
use fdt::node::FdtNode;
use fdt::Fdt;
use std::vec::Vec;

const MEM_BASE: u64 = 0x4000_0000;
const MEM_SIZE: u64 = 0x1_0000_0000; // 4 GiB: needs the 64-bit size cell.
const BOOTARGS: &str = "console=ttyAMA0 earlycon root=/dev/ram0";

fn virt(n_vcpus: u16, initrd: Option<(u64, u64)>) -> GuestDt<'static> {
    GuestDt {
        mem_base: MEM_BASE,
        mem_size: MEM_SIZE,
        n_vcpus,
        gicd: (0x0800_0000, 0x1_0000),
        gicr: (0x080A_0000, 0x2_0000 * u64::from(n_vcpus)),
        uart: (0x0900_0000, 0x1000, 1),
        timer: Timer::default(),
        bootargs: BOOTARGS,
        restarts: 3,
        initrd,
        devices: &[],
        channels: &[],
        pci: None,
        virtio: &[],
    }
}

/// Big-endian 32-bit cells of a property.
fn cells(node: FdtNode, name: &str) -> Vec<u32> {
    let prop = node
        .property(name)
        .unwrap_or_else(|| panic!("no {name} in {}", node.name));
    assert_eq!(prop.value.len() % 4, 0, "{name} is not whole cells");
    prop.value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn u64_prop(node: FdtNode, name: &str) -> Option<u64> {
    let v = node.property(name)?.value;
    Some(u64::from_be_bytes(v.try_into().expect("8-byte value")))
}

fn strings<'a>(node: FdtNode<'_, 'a>, name: &str) -> Vec<&'a str> {
    let v = node.property(name).expect("property").value;
    let v = v.strip_suffix(&[0]).expect("NUL-terminated");
    v.split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).expect("utf-8"))
        .collect()
}

fn regs(node: FdtNode) -> Vec<(u64, u64)> {
    node.reg()
        .expect("reg")
        .map(|r| (r.starting_address as u64, r.size.expect("size") as u64))
        .collect()
}

fn check_virt_tree(n: u16) {
    let initrd = (0x4800_0000, 0x4812_3456);
    let blob = build(&virt(n, Some(initrd))).expect("build");
    let dt = Fdt::new(&blob).expect("parses");

    let root = dt.find_node("/").expect("root");
    assert_eq!(cells(root, "#address-cells"), [2]);
    assert_eq!(cells(root, "#size-cells"), [2]);
    assert_eq!(dt.root().compatible().first(), "linux,dummy-virt");
    assert_eq!(dt.root().model(), "Bulkhead VM");

    // Memory.
    let mem = dt.find_node("/memory@40000000").expect("memory node");
    assert_eq!(strings(mem, "device_type"), ["memory"]);
    let regions: Vec<_> = dt.memory().regions().collect();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].starting_address as u64, MEM_BASE);
    assert_eq!(regions[0].size, Some(MEM_SIZE as usize));

    // CPUs: reg = MPIDR affinity, as the hypervisor reports in MPIDR_EL1.
    let cpus_node = dt.find_node("/cpus").expect("cpus");
    assert_eq!(cells(cpus_node, "#address-cells"), [1]);
    assert_eq!(cells(cpus_node, "#size-cells"), [0]);
    let ids: Vec<usize> = dt.cpus().map(|c| c.ids().first()).collect();
    let want: Vec<usize> = (0..n)
        .map(|i| bulkhead_psci::vcpu_mpidr(i) as usize)
        .collect();
    assert_eq!(ids, want);
    for cpu in cpus_node.children() {
        assert_eq!(strings(cpu, "device_type"), ["cpu"]);
        assert_eq!(strings(cpu, "compatible"), ["arm,armv8"]);
        assert_eq!(strings(cpu, "enable-method"), ["psci"]);
    }

    // PSCI over HVC.
    let psci = dt.find_node("/psci").expect("psci");
    assert_eq!(strings(psci, "method"), ["hvc"]);
    assert_eq!(
        strings(psci, "compatible"),
        ["arm,psci-1.0", "arm,psci-0.2"]
    );

    // GICv3: distributor then one redistributor region; root points at it.
    let gic = dt.find_node("/intc@8000000").expect("gic");
    assert_eq!(strings(gic, "compatible"), ["arm,gic-v3"]);
    assert!(gic.property("interrupt-controller").is_some());
    assert_eq!(gic.interrupt_cells(), Some(3));
    assert_eq!(cells(gic, "#redistributor-regions"), [1]);
    assert_eq!(
        regs(gic),
        [
            (0x0800_0000, 0x1_0000),
            (0x080A_0000, 0x2_0000 * u64::from(n))
        ]
    );
    assert_eq!(
        root.interrupt_parent().map(|p| p.name),
        Some("intc@8000000")
    );
    assert!(gic.children().next().is_none(), "no ITS child");
    assert!(dt.all_nodes().all(|n| !n.name.starts_with("its")));
    assert!(dt.find_compatible(&["arm,gic-v3-its"]).is_none());
    assert!(dt
        .all_nodes()
        .all(|n| n.property("msi-controller").is_none()));

    // Architected timer: four PPI, level-high triples in binding order.
    let timer = dt.find_node("/timer").expect("timer");
    assert_eq!(strings(timer, "compatible"), ["arm,armv8-timer"]);
    assert!(timer.property("always-on").is_some());
    assert_eq!(
        cells(timer, "interrupts"),
        [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    );

    // PL011: reg, SPI 1 level-high, both clocks are the 24 MHz clock.
    let uart = dt.find_node("/pl011@9000000").expect("uart");
    assert_eq!(strings(uart, "compatible"), ["arm,pl011", "arm,primecell"]);
    assert_eq!(regs(uart), [(0x0900_0000, 0x1000)]);
    assert_eq!(cells(uart, "interrupts"), [0, 1, 4]);
    assert_eq!(strings(uart, "clock-names"), ["uartclk", "apb_pclk"]);
    let clocks = cells(uart, "clocks");
    assert_eq!(clocks.len(), 2);
    for phandle in clocks {
        let clk = dt.find_phandle(phandle).expect("clock phandle resolves");
        assert_eq!(clk.name, "apb-pclk");
        assert_eq!(strings(clk, "compatible"), ["fixed-clock"]);
        assert_eq!(cells(clk, "#clock-cells"), [0]);
        assert_eq!(cells(clk, "clock-frequency"), [24_000_000]);
        assert_eq!(strings(clk, "clock-output-names"), ["clk24mhz"]);
    }

    // /chosen.
    let chosen = dt.chosen();
    assert_eq!(chosen.bootargs(), Some(BOOTARGS));
    assert_eq!(chosen.stdout().map(|n| n.name), Some("pl011@9000000"));
    let chosen_node = dt.find_node("/chosen").expect("chosen");
    assert_eq!(strings(chosen_node, "stdout-path"), ["/pl011@9000000"]);
    assert_eq!(u64_prop(chosen_node, "linux,initrd-start"), Some(initrd.0));
    assert_eq!(u64_prop(chosen_node, "linux,initrd-end"), Some(initrd.1));
    // The restart count is a property of its own, not a word of bootargs.
    let restarts = chosen_node.property("bulkhead,restarts").expect("restarts");
    assert_eq!(restarts.value, &3u32.to_be_bytes()[..]);
}

#[test]
fn two_vcpu_tree_describes_the_virt_layout() {
    check_virt_tree(2);
}

#[test]
fn four_vcpu_tree_describes_the_virt_layout() {
    check_virt_tree(4);
}

#[test]
fn seventeenth_vcpu_is_in_the_second_aff1_cluster() {
    let blob = build(&virt(17, None)).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let ids: Vec<usize> = dt.cpus().map(|c| c.ids().first()).collect();
    assert_eq!(ids.len(), 17);
    assert_eq!(ids[15], 0x00f);
    assert_eq!(ids[16], 0x100);
    assert!(dt.find_node("/cpus/cpu@100").is_some());
}

#[test]
fn tree_without_initrd_has_no_initrd_properties() {
    let blob = build(&virt(2, None)).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let chosen = dt.find_node("/chosen").unwrap();
    assert!(chosen.property("linux,initrd-start").is_none());
    assert!(chosen.property("linux,initrd-end").is_none());
    assert_eq!(dt.chosen().bootargs(), Some(BOOTARGS));
}

#[test]
fn eight_vcpu_tree_stays_below_64_kib() {
    let blob = build(&virt(8, Some((0x4800_0000, 0x4900_0000)))).unwrap();
    assert!(blob.len() < 64 * 1024, "{} bytes", blob.len());
    let dt = Fdt::new(&blob).unwrap();
    assert_eq!(dt.total_size(), blob.len());
    assert_eq!(dt.cpus().count(), 8);
}

#[test]
fn custom_timer_ppis_are_written_in_order() {
    let mut cfg = virt(1, None);
    cfg.timer = Timer { ppis: [1, 2, 3, 4] };
    let blob = build(&cfg).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let timer = dt.find_node("/timer").unwrap();
    assert_eq!(
        cells(timer, "interrupts"),
        [1, 1, 4, 1, 2, 4, 1, 3, 4, 1, 4, 4]
    );
}

#[test]
fn node_names_follow_configured_addresses() {
    let mut cfg = virt(1, None);
    cfg.mem_base = 0x8_0000_0000;
    cfg.uart = (0x0a00_0000, 0x1000, 7);
    let blob = build(&cfg).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    assert!(dt.find_node("/memory@800000000").is_some());
    let uart = dt.find_node("/pl011@a000000").unwrap();
    assert_eq!(cells(uart, "interrupts"), [0, 7, 4]);
    assert_eq!(dt.chosen().stdout().map(|n| n.name), Some("pl011@a000000"));
}

#[test]
fn zero_vcpus_is_rejected() {
    assert_eq!(build(&virt(0, None)), Err(Error::NoVcpus));
}

#[test]
fn more_vcpus_than_mpidr_affinity_covers_is_rejected() {
    assert!(build(&virt(MAX_VCPUS, None)).is_ok());
    assert_eq!(build(&virt(MAX_VCPUS + 1, None)), Err(Error::TooManyVcpus));
}

#[test]
fn empty_or_wrapping_memory_is_rejected() {
    let mut cfg = virt(1, None);
    cfg.mem_size = 0;
    assert_eq!(build(&cfg), Err(Error::BadMemory));
    cfg.mem_base = u64::MAX - 0xfff;
    cfg.mem_size = 0x2000;
    assert_eq!(build(&cfg), Err(Error::BadMemory));
    cfg.mem_size = 0x1000;
    assert!(build(&cfg).is_ok());
}

#[test]
fn initrd_ending_before_it_starts_is_rejected() {
    assert_eq!(
        build(&virt(1, Some((0x4800_1000, 0x4800_0000)))),
        Err(Error::BadInitrd)
    );
}

#[test]
fn nul_in_bootargs_is_an_error_not_a_panic() {
    let mut cfg = virt(1, None);
    cfg.bootargs = "console=ttyAMA0\0evil";
    assert_eq!(build(&cfg), Err(Error::Fdt(vm_fdt::Error::InvalidString)));
}

const RTC: Device = Device {
    name: "rtc",
    base: 0x0901_0000,
    size: 0x1000,
    compatible: &["arm,pl031", "arm,primecell"],
    spis: &[34],
};

const GPIO: Device = Device {
    name: "gpio",
    base: 0x1_0000_0000,
    size: 0x2000,
    compatible: &["vendor,gpio-x"],
    spis: &[40, 41, 127],
};

fn with_devices<'a>(devices: &'a [Device<'a>]) -> Vec<u8> {
    let mut cfg = virt(2, None);
    cfg.devices = devices;
    build(&cfg).expect("build")
}

#[test]
fn primecell_device_gets_reg_spi_and_the_apb_clock() {
    let blob = with_devices(&[RTC]);
    let dt = Fdt::new(&blob).unwrap();
    let rtc = dt.find_node("/pl031@9010000").expect("rtc node");
    assert_eq!(strings(rtc, "compatible"), ["arm,pl031", "arm,primecell"]);
    assert_eq!(regs(rtc), [(0x0901_0000, 0x1000)]);
    // SPI, INTID 34 - 32, level-high.
    assert_eq!(cells(rtc, "interrupts"), [0, 2, 4]);
    assert_eq!(strings(rtc, "clock-names"), ["apb_pclk"]);
    let clocks = cells(rtc, "clocks");
    assert_eq!(clocks.len(), 1);
    let clk = dt.find_phandle(clocks[0]).expect("clock phandle resolves");
    assert_eq!(clk.name, "apb-pclk");
    // No interrupt-parent of its own: it inherits the root's, the GIC
    // (Devicetree Specification v0.4, 2.4.1).
    assert!(rtc.property("interrupt-parent").is_none());
    assert_eq!(
        dt.find_compatible(&["arm,pl031"]).map(|n| n.name),
        Some("pl031@9010000")
    );
}

#[test]
fn device_gets_one_spi_triple_per_interrupt_and_no_clock_unless_primecell() {
    let blob = with_devices(&[RTC, GPIO]);
    let dt = Fdt::new(&blob).unwrap();
    let gpio = dt.find_node("/gpio-x@100000000").expect("gpio node");
    assert_eq!(regs(gpio), [(0x1_0000_0000, 0x2000)]);
    assert_eq!(cells(gpio, "interrupts"), [0, 8, 4, 0, 9, 4, 0, 95, 4]);
    assert!(gpio.property("clocks").is_none());
    assert!(gpio.property("clock-names").is_none());
    assert!(dt.find_node("/pl031@9010000").is_some());
}

#[test]
fn device_node_is_named_by_its_label_without_a_vendor_comma() {
    let dev = Device {
        compatible: &["simple-bus"],
        spis: &[],
        ..GPIO
    };
    let blob = with_devices(&[dev]);
    let dt = Fdt::new(&blob).unwrap();
    let node = dt.find_node("/gpio@100000000").expect("named by label");
    assert!(
        node.property("interrupts").is_none(),
        "no SPIs, no property"
    );
    let dev = Device {
        compatible: &[],
        ..GPIO
    };
    let blob = with_devices(&[dev]);
    assert!(Fdt::new(&blob)
        .unwrap()
        .find_node("/gpio@100000000")
        .is_some());
}

/// Found by the `guest_fdt` fuzz target: a config may name a device `4`
/// with compatible `9` (both valid there), and the tree then failed to
/// build at all because a node name must start with a letter.
#[test]
fn device_node_name_is_always_valid() {
    let cases: [(&str, &[&str], &str); 6] = [
        ("4", &["9"], "device"),
        ("eeprom", &["atmel,24c02"], "eeprom"),
        ("0rtc", &["arm,24c02 x"], "device"),
        ("rtc", &["has space", "arm,pl031"], "rtc"),
        ("a", &["v,model@with@at"], "a"),
        ("-x", &["v,abcdefghijklmnopqrstuvwxyz0123456"], "device"),
    ];
    for (name, compatible, want) in cases {
        let dev = Device {
            name,
            compatible,
            spis: &[],
            ..GPIO
        };
        let blob = with_devices(&[dev]);
        let dt = Fdt::new(&blob).unwrap();
        let node = dt
            .find_node(&std::format!("/{want}@100000000"))
            .unwrap_or_else(|| panic!("{name} {compatible:?}: no /{want}@100000000"));
        assert_eq!(strings(node, "compatible"), compatible);
    }
    // A 31-character model is still fine.
    let dev = Device {
        compatible: &["v,abcdefghijklmnopqrstuvwxyz01234"],
        ..GPIO
    };
    let blob = with_devices(&[dev]);
    assert!(Fdt::new(&blob)
        .unwrap()
        .find_node("/abcdefghijklmnopqrstuvwxyz01234@100000000")
        .is_some());
}

#[test]
fn no_devices_means_no_extra_nodes() {
    let blob = build(&virt(2, None)).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let names: Vec<&str> = dt
        .find_node("/")
        .unwrap()
        .children()
        .map(|n| n.name)
        .collect();
    assert_eq!(
        names,
        [
            "memory@40000000",
            "cpus",
            "psci",
            "intc@8000000",
            "timer",
            "apb-pclk",
            "pl011@9000000",
            "chosen"
        ]
    );
    let with = with_devices(&[RTC]);
    let dt = Fdt::new(&with).unwrap();
    assert_eq!(
        dt.find_node("/").unwrap().children().count(),
        names.len() + 1
    );
}

#[test]
fn bad_device_range_or_spi_is_an_error_not_a_panic() {
    let empty = Device { size: 0, ..RTC };
    let mut cfg = virt(1, None);
    let devices = [empty];
    cfg.devices = &devices;
    assert_eq!(build(&cfg), Err(Error::BadDeviceRange(0x0901_0000)));
    let wraps = [Device {
        base: u64::MAX - 0xfff,
        size: 0x2000,
        ..RTC
    }];
    cfg.devices = &wraps;
    assert_eq!(build(&cfg), Err(Error::BadDeviceRange(u64::MAX - 0xfff)));
    for intid in [0, 31, 1020, u32::MAX] {
        let spis = [intid];
        let bad = [Device { spis: &spis, ..RTC }];
        let mut cfg = virt(1, None);
        cfg.devices = &bad;
        assert_eq!(build(&cfg), Err(Error::BadSpi(intid)));
    }
    let spis = [1019];
    let last = [Device { spis: &spis, ..RTC }];
    let mut cfg = virt(1, None);
    cfg.devices = &last;
    assert!(build(&cfg).is_ok());
}

#[test]
fn nul_in_a_compatible_is_an_error_not_a_panic() {
    let bad = [Device {
        compatible: &["arm,pl031\0x"],
        ..RTC
    }];
    let mut cfg = virt(1, None);
    cfg.devices = &bad;
    assert!(matches!(build(&cfg), Err(Error::Fdt(_))));
}

#[test]
fn channel_ends_appear_as_nodes_or_as_pci_functions() {
    let ch = [ChannelNode {
        name: "control",
        regs: (0x1000_0000, 0x1000),
        shm: (0x1010_0000, 0x1000),
        spi: 120,
    }];
    let mut dt = virt(1, None);
    dt.channels = &ch;
    let blob = build(&dt).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let node = fdt.find_node("/channel@10000000").expect("channel node");
    assert_eq!(node.compatible().unwrap().first(), "bulkhead,channel");
    assert_eq!(
        cells(node, "reg"),
        [0, 0x1000_0000, 0, 0x1000, 0, 0x1010_0000, 0, 0x1000]
    );
    assert_eq!(cells(node, "interrupts"), [0, 88, 4]);
    assert!(fdt
        .find_node("/chosen")
        .unwrap()
        .properties()
        .all(|p| p.name != "linux,pci-probe-only"));

    let functions = [(0u8, 120u32), (1, 121)];
    let mut dt = virt(2, None);
    dt.pci = Some(PciHost {
        ecam: (0x3f00_0000, 0x10_0000),
        window: (0x1000_0000, 0x80_0000),
        functions: &functions,
    });
    let blob = build(&dt).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let pci = fdt.find_node("/pcie@3f000000").expect("pci host");
    assert_eq!(pci.compatible().unwrap().first(), "pci-host-ecam-generic");
    assert_eq!(cells(pci, "#address-cells"), [3]);
    assert_eq!(cells(pci, "bus-range"), [0, 0]);
    assert_eq!(
        cells(pci, "ranges"),
        [0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x80_0000]
    );
    assert_eq!(
        cells(pci, "interrupt-map"),
        [
            0,
            0,
            0,
            1,
            GIC_PHANDLE,
            0,
            0,
            0,
            88,
            4, //
            1 << 11,
            0,
            0,
            1,
            GIC_PHANDLE,
            0,
            0,
            0,
            89,
            4
        ]
    );
    let gic = fdt.find_node("/intc@8000000").unwrap();
    assert_eq!(
        cells(gic, "#address-cells"),
        [2],
        "interrupt-map parent cells"
    );
    let probe_only = fdt
        .find_node("/chosen")
        .unwrap()
        .properties()
        .find(|p| p.name == "linux,pci-probe-only")
        .expect("probe-only");
    assert_eq!(probe_only.value, [0, 0, 0, 1]);
}

/// QEMU virt's first two virtio-mmio transports, as Bulkhead lays out a
/// VM's disks (bulkhead_config::{virtio_ipa, virtio_spi}).
const VIRTIO: [VirtioMmio; 2] = [
    VirtioMmio {
        base: 0x0a00_0000,
        size: 0x200,
        spi: 16,
    },
    VirtioMmio {
        base: 0x0a00_0200,
        size: 0x200,
        spi: 17,
    },
];

#[test]
fn virtio_mmio_nodes_have_reg_spi_and_dma_coherent() {
    let mut cfg = virt(2, None);
    cfg.virtio = &VIRTIO;
    let blob = build(&cfg).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    for (v, name) in VIRTIO
        .iter()
        .zip(["virtio_mmio@a000000", "virtio_mmio@a000200"])
    {
        let node = dt
            .find_node(&std::format!("/{name}"))
            .unwrap_or_else(|| panic!("no /{name}"));
        assert_eq!(strings(node, "compatible"), ["virtio,mmio"]);
        // Two address and two size cells, like every other node.
        assert_eq!(cells(node, "reg"), [0, v.base as u32, 0, 0x200]);
        assert_eq!(regs(node), [(v.base, v.size)]);
        // GIC SPI, the SPI number as given, level-high.
        assert_eq!(cells(node, "interrupts"), [0, v.spi, 4]);
        let coherent = node.property("dma-coherent").expect("dma-coherent");
        assert!(coherent.value.is_empty());
        // The GIC is inherited from the root.
        assert!(node.property("interrupt-parent").is_none());
    }
    // One node per transport, and none without.
    assert_eq!(
        dt.all_nodes()
            .filter(|n| n.compatible().is_some_and(|c| c.first() == "virtio,mmio"))
            .count(),
        2
    );
    let blob = build(&virt(2, None)).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    assert!(dt.find_compatible(&["virtio,mmio"]).is_none());
}

#[test]
fn virtio_mmio_nodes_come_after_the_devices_and_before_chosen() {
    let mut cfg = virt(1, None);
    let devices = [RTC];
    cfg.devices = &devices;
    cfg.virtio = &VIRTIO[..1];
    let blob = build(&cfg).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let names: Vec<&str> = dt
        .find_node("/")
        .unwrap()
        .children()
        .map(|n| n.name)
        .collect();
    assert_eq!(
        names[names.len() - 3..],
        ["pl031@9010000", "virtio_mmio@a000000", "chosen"]
    );
}

#[test]
fn virtio_mmio_above_4_gib_uses_both_address_cells() {
    let high = [VirtioMmio {
        base: 0x1_2345_6000,
        size: 0x1000,
        spi: 987,
    }];
    let mut cfg = virt(1, None);
    cfg.virtio = &high;
    let blob = build(&cfg).unwrap();
    let dt = Fdt::new(&blob).unwrap();
    let node = dt.find_node("/virtio_mmio@123456000").unwrap();
    assert_eq!(cells(node, "reg"), [1, 0x2345_6000, 0, 0x1000]);
    assert_eq!(cells(node, "interrupts"), [0, 987, 4]);
}

#[test]
fn empty_or_wrapping_virtio_range_is_an_error_not_a_panic() {
    let mut cfg = virt(1, None);
    let empty = [VirtioMmio {
        size: 0,
        ..VIRTIO[0]
    }];
    cfg.virtio = &empty;
    assert_eq!(build(&cfg), Err(Error::BadDeviceRange(0x0a00_0000)));
    let wraps = [VirtioMmio {
        base: u64::MAX - 0xff,
        size: 0x200,
        spi: 16,
    }];
    cfg.virtio = &wraps;
    assert_eq!(build(&cfg), Err(Error::BadDeviceRange(u64::MAX - 0xff)));
}
