//! The flattened device tree a Bulkhead VM boots with.
//!
//! Linux arm64 expects the DTB address in x0 at entry (Linux
//! Documentation/arch/arm64/booting.rst, "Setup the device tree"). The node
//! names, compatibles and interrupt specifiers follow what QEMU's `virt`
//! board generates (hw/arm/virt.c), so a stock kernel (and its defconfig
//! drivers: GICv3, arch timer, amba-pl011, PSCI) boots unchanged.
//!
//! The tree is written with `vm-fdt`; nothing here touches guest memory, the
//! caller copies the returned blob into the VM.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use vm_fdt::FdtWriter;

/// Phandle of the GIC node (the root's `interrupt-parent`). Any unique
/// non-zero value works (Devicetree Specification v0.4, 2.3.3 phandle).
pub const GIC_PHANDLE: u32 = 1;
/// Phandle of the fixed 24 MHz clock feeding the PL011.
pub const CLK_PHANDLE: u32 = 2;

/// Interrupt specifier cells for "arm,gic-v3" (Linux
/// Documentation/devicetree/bindings/interrupt-controller/arm,gic-v3.yaml):
/// cell 0 is the type, cell 1 the number within the type, cell 2 the flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// IRQ_TYPE_LEVEL_HIGH (include/dt-bindings/interrupt-controller/irq.h).
/// GICv3 has no CPU mask in bits [15:8], unlike GICv2 PPIs.
const IRQ_LEVEL_HIGH: u32 = 4;

/// Frequency of QEMU virt's "apb-pclk" fixed clock (hw/arm/virt.c
/// create_clock), which the amba-pl011 driver reads as UARTCLK.
const APB_PCLK_HZ: u32 = 24_000_000;

/// MPIDR affinity levels used for vCPUs: Aff0 0..16, Aff1 0..256
/// (`bulkhead_psci::vcpu_mpidr`), so at most 4096 vCPUs have a distinct
/// 32-bit `reg` in a `/cpus` node with #address-cells = 1.
pub const MAX_VCPUS: u16 = 16 * 256;

/// Architected timer PPIs (INTID - 16), in the order the "arm,armv8-timer"
/// binding lists its interrupts (Linux bindings/timer/arm,arch_timer.yaml):
/// secure physical, non-secure physical, virtual, hypervisor physical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub ppis: [u32; 4],
}

impl Default for Timer {
    /// INTIDs 29, 30, 27, 26: the Arm BSA recommendation QEMU virt uses
    /// (ARCH_TIMER_S_EL1_IRQ 13, NS_EL1 14, VIRT 11, NS_EL2 10).
    fn default() -> Self {
        Self {
            ppis: [13, 14, 11, 10],
        }
    }
}

/// Last SPI INTID a GICv3 can have (GICv3 architecture specification, 2.2
/// "INTIDs": SPIs are 32..=1019).
const LAST_SPI: u32 = 1019;
/// First SPI INTID; the device tree numbers SPIs from here (cell 1 of an
/// "arm,gic-v3" specifier is INTID - 32).
const FIRST_SPI: u32 = 32;

/// A device passed through to the VM: its MMIO range (at the same address
/// as on the host) and its interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device<'a> {
    /// Label; names the node when `compatible` does not.
    pub name: &'a str,
    /// MMIO range (IPA).
    pub base: u64,
    pub size: u64,
    /// `compatible` list, most specific first, e.g.
    /// `["arm,pl031", "arm,primecell"]`.
    pub compatible: &'a [&'a str],
    /// Interrupts, as SPI INTIDs (32..=1019).
    pub spis: &'a [u32],
}

/// Longest node name before the `@` (Devicetree Specification v0.4,
/// 2.2.1 "Node Name Requirements").
const NODE_NAME_MAX: usize = 31;

/// Whether `name` may stand before a node's `@`: 1 to 31 characters of
/// `[0-9a-zA-Z,._+-]`, starting with a letter (Devicetree Specification
/// v0.4, 2.2.1, table 2.1).
fn valid_node_name(name: &str) -> bool {
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b",._+-".contains(&c);
    name.len() <= NODE_NAME_MAX
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name.bytes().all(allowed)
}

impl Device<'_> {
    /// Node name: the model part of the first compatible (after the
    /// vendor's comma, Devicetree Specification v0.4, 2.3.1), else the
    /// label, else `device`, whichever first is a valid node name; then
    /// the unit address, e.g. `pl031@9010000`. A config may legitimately
    /// hold labels and models a node name cannot start with (`"4"`,
    /// `"atmel,24c02"`), and the writer refuses such names, so they are
    /// skipped rather than failing the whole tree.
    fn node_name(&self) -> String {
        let model = self
            .compatible
            .first()
            .and_then(|c| c.split_once(',').map(|(_, model)| model));
        let name = [model, Some(self.name)]
            .into_iter()
            .flatten()
            .find(|n| valid_node_name(n))
            .unwrap_or("device");
        format!("{name}@{:x}", self.base)
    }

    /// Whether the Linux AMBA bus probes it ("arm,primecell", Linux
    /// bindings/arm/primecell.yaml), which needs an `apb_pclk` clock.
    fn is_primecell(&self) -> bool {
        self.compatible.contains(&"arm,primecell")
    }
}

/// One end of an inter-VM channel, as a bare-metal guest sees it: the
/// register page, the shared memory and the doorbell SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelNode<'a> {
    /// The channel's name, in the node's `label`.
    pub name: &'a str,
    /// Register page (base, size).
    pub regs: (u64, u64),
    /// Shared memory (base, size).
    pub shm: (u64, u64),
    /// Doorbell SPI INTID.
    pub spi: u32,
}

/// A PCI host bridge with one bus behind an ECAM window (Linux
/// bindings/pci/host-generic-pci.yaml), whose functions are a Linux VM's
/// channel ends. BARs are assigned already; `/chosen` gets
/// `linux,pci-probe-only` so the guest keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHost<'a> {
    /// ECAM configuration space (base, size): 1 MiB for bus 0.
    pub ecam: (u64, u64),
    /// 32-bit non-prefetchable memory window (base, size) holding the BARs.
    pub window: (u64, u64),
    /// (device number, INTA's SPI INTID) of each function 0.
    pub functions: &'a [(u8, u32)],
}

/// A virtio-mmio transport (Linux bindings/virtio/mmio.yaml), e.g. a
/// virtio-blk device the hypervisor emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Register window (IPA), e.g. 0x0a00_0000.
    pub base: u64,
    /// Bytes of the window, e.g. 0x200.
    pub size: u64,
    /// SPI number (INTID - 32, like [`GuestDt::uart`]'s), e.g. 16.
    pub spi: u32,
}

/// What the generated tree describes. Addresses are IPAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestDt<'a> {
    /// Guest RAM.
    pub mem_base: u64,
    pub mem_size: u64,
    /// vCPUs `cpu@0 .. cpu@{n-1}`, all started through PSCI CPU_ON.
    pub n_vcpus: u16,
    /// GIC distributor frame (base, size), e.g. (0x0800_0000, 0x1_0000).
    pub gicd: (u64, u64),
    /// One contiguous redistributor region (base, size), e.g.
    /// (0x080A_0000, 0x2_0000 * n_vcpus).
    pub gicr: (u64, u64),
    /// PL011 (base, size, SPI number), e.g. (0x0900_0000, 0x1000, 1).
    pub uart: (u64, u64, u32),
    pub timer: Timer,
    /// Kernel command line, written verbatim to `/chosen/bootargs`.
    pub bootargs: &'a str,
    /// How many times the hypervisor has restarted this VM, as the u32
    /// `/chosen/bulkhead,restarts` (0 at the first boot): a guest that
    /// wants to know reads it there, and its command line stays its own.
    pub restarts: u32,
    /// Initial ramdisk (start, end) IPAs, end exclusive.
    pub initrd: Option<(u64, u64)>,
    /// Passthrough devices, one node each.
    pub devices: &'a [Device<'a>],
    /// Channel ends described directly (bare-metal guests).
    pub channels: &'a [ChannelNode<'a>],
    /// Channel ends as PCI functions (Linux guests).
    pub pci: Option<PciHost<'a>>,
    /// virtio-mmio transports, one `virtio_mmio@<base>` node each.
    pub virtio: &'a [VirtioMmio],
}

/// Why no tree could be built.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// `n_vcpus` is 0.
    NoVcpus,
    /// `n_vcpus` exceeds [`MAX_VCPUS`].
    TooManyVcpus,
    /// The memory range is empty or wraps past the end of the address space.
    BadMemory,
    /// The initrd range ends before it starts.
    BadInitrd,
    /// This passthrough device's or virtio-mmio transport's range is empty
    /// or wraps.
    BadDeviceRange(u64),
    /// This interrupt of a passthrough device is not an SPI INTID.
    BadSpi(u32),
    /// The writer refused (e.g. a NUL byte in `bootargs`).
    Fdt(vm_fdt::Error),
}

impl From<vm_fdt::Error> for Error {
    fn from(e: vm_fdt::Error) -> Self {
        Error::Fdt(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NoVcpus => f.write_str("a VM needs at least one vCPU"),
            Error::TooManyVcpus => write!(f, "more than {MAX_VCPUS} vCPUs"),
            Error::BadMemory => f.write_str("memory range is empty or wraps"),
            Error::BadInitrd => f.write_str("initrd ends before it starts"),
            Error::BadDeviceRange(base) => {
                write!(f, "device range at {base:#x} is empty or wraps")
            }
            Error::BadSpi(intid) => write!(f, "interrupt {intid} is not an SPI"),
            Error::Fdt(e) => write!(f, "device tree writer: {e}"),
        }
    }
}

/// Name of the UART node; `/chosen/stdout-path` points at it.
fn uart_node_name(base: u64) -> String {
    format!("pl011@{base:x}")
}

/// Build the DTB for `dt`.
pub fn build(dt: &GuestDt) -> Result<Vec<u8>, Error> {
    check(dt)?;
    let mut w = FdtWriter::new()?;

    let root = w.begin_node("")?;
    // Two cells for addresses and sizes: RAM and devices may lie above 4 GiB.
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    // The compatible QEMU virt uses; Linux needs no board code for it.
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_string("model", "Bulkhead VM")?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    memory(&mut w, dt)?;
    cpus(&mut w, dt)?;
    psci(&mut w)?;
    gic(&mut w, dt)?;
    timer(&mut w, dt)?;
    clock(&mut w)?;
    uart(&mut w, dt)?;
    for dev in dt.devices {
        device(&mut w, dev)?;
    }
    for v in dt.virtio {
        virtio_mmio(&mut w, v)?;
    }
    for ch in dt.channels {
        channel(&mut w, ch)?;
    }
    if let Some(pci) = &dt.pci {
        pci_host(&mut w, pci)?;
    }
    chosen(&mut w, dt)?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

fn check(dt: &GuestDt) -> Result<(), Error> {
    if dt.n_vcpus == 0 {
        return Err(Error::NoVcpus);
    }
    if dt.n_vcpus > MAX_VCPUS {
        return Err(Error::TooManyVcpus);
    }
    if dt.mem_size == 0 || dt.mem_base.checked_add(dt.mem_size - 1).is_none() {
        return Err(Error::BadMemory);
    }
    if let Some((start, end)) = dt.initrd {
        if end < start {
            return Err(Error::BadInitrd);
        }
    }
    for dev in dt.devices {
        if dev.size == 0 || dev.base.checked_add(dev.size - 1).is_none() {
            return Err(Error::BadDeviceRange(dev.base));
        }
        if let Some(&bad) = dev
            .spis
            .iter()
            .find(|i| !(FIRST_SPI..=LAST_SPI).contains(*i))
        {
            return Err(Error::BadSpi(bad));
        }
    }
    for v in dt.virtio {
        if v.size == 0 || v.base.checked_add(v.size - 1).is_none() {
            return Err(Error::BadDeviceRange(v.base));
        }
    }
    Ok(())
}

/// Devicetree Specification v0.4, 3.4: /memory node.
fn memory(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let node = w.begin_node(&format!("memory@{:x}", dt.mem_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[dt.mem_base, dt.mem_size])?;
    w.end_node(node)?;
    Ok(())
}

/// Devicetree Specification v0.4, 3.7/3.8: /cpus and cpu nodes. On Arm the
/// `reg` of a cpu node is its MPIDR affinity (Linux
/// bindings/arm/cpus.yaml); Aff2/Aff3 are 0 so one cell suffices.
fn cpus(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let node = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..dt.n_vcpus {
        // Fits in 32 bits: Aff0 < 16 and Aff1 < 256 since i < MAX_VCPUS.
        let mpidr = bulkhead_psci::vcpu_mpidr(i) as u32;
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        // Secondaries (and the boot CPU's siblings) come up via CPU_ON
        // (Linux bindings/arm/cpus.yaml enable-method, booting.rst 5).
        w.property_string("enable-method", "psci")?;
        w.property_u32("reg", mpidr)?;
        w.end_node(cpu)?;
    }
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/arm/psci.yaml: PSCI 1.0+ firmware, called with HVC
/// because the hypervisor is the "firmware" of the VM.
fn psci(w: &mut FdtWriter) -> Result<(), Error> {
    let node = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/interrupt-controller/arm,gic-v3.yaml: reg is the
/// distributor followed by `#redistributor-regions` redistributor regions.
/// No ITS child: the VM gets no MSI controller.
fn gic(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let node = w.begin_node(&format!("intc@{:x}", dt.gicd.0))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#redistributor-regions", 1)?;
    // A parent unit address of two cells in `interrupt-map` entries that
    // point here (the PCI host's), as on QEMU virt.
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    w.property_array_u64("reg", &[dt.gicd.0, dt.gicd.1, dt.gicr.0, dt.gicr.1])?;
    w.property_phandle(GIC_PHANDLE)?;
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/timer/arm,arch_timer.yaml. `always-on`: the timer keeps
/// counting while a vCPU idles, so Linux need not fall back to a broadcast
/// timer.
fn timer(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let node = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.property_null("always-on")?;
    let mut cells = [0u32; 12];
    for (triple, &ppi) in cells.chunks_exact_mut(3).zip(dt.timer.ppis.iter()) {
        triple.copy_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &cells)?;
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/clock/fixed-clock.yaml; the PL011 needs a clock for both
/// its "uartclk" and "apb_pclk" inputs (bindings/serial/pl011.yaml).
fn clock(w: &mut FdtWriter) -> Result<(), Error> {
    let node = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", APB_PCLK_HZ)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(CLK_PHANDLE)?;
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/serial/pl011.yaml. "arm,primecell" makes the AMBA bus
/// probe it by its peripheral ID registers.
fn uart(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let (base, size, spi) = dt.uart;
    let node = w.begin_node(&uart_node_name(base))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".to_string(), "arm,primecell".to_string()],
    )?;
    w.property_array_u64("reg", &[base, size])?;
    w.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[CLK_PHANDLE, CLK_PHANDLE])?;
    w.property_string_list(
        "clock-names",
        vec!["uartclk".to_string(), "apb_pclk".to_string()],
    )?;
    w.end_node(node)?;
    Ok(())
}

/// A passthrough device: reg, one level-high SPI specifier per interrupt
/// (arm,gic-v3.yaml: `<0 (INTID - 32) 4>`), and for a primecell the
/// `apb_pclk` clock the AMBA bus enables before reading its ID registers
/// (Linux bindings/arm/primecell.yaml; drivers/amba/bus.c).
fn device(w: &mut FdtWriter, dev: &Device) -> Result<(), Error> {
    let node = w.begin_node(&dev.node_name())?;
    w.property_string_list(
        "compatible",
        dev.compatible.iter().map(|c| c.to_string()).collect(),
    )?;
    w.property_array_u64("reg", &[dev.base, dev.size])?;
    if !dev.spis.is_empty() {
        let cells: Vec<u32> = dev
            .spis
            .iter()
            .flat_map(|&intid| [GIC_SPI, intid.saturating_sub(FIRST_SPI), IRQ_LEVEL_HIGH])
            .collect();
        w.property_array_u32("interrupts", &cells)?;
    }
    if dev.is_primecell() {
        w.property_array_u32("clocks", &[CLK_PHANDLE])?;
        w.property_string("clock-names", "apb_pclk")?;
    }
    w.end_node(node)?;
    Ok(())
}

/// Linux bindings/virtio/mmio.yaml, as QEMU virt writes it (hw/arm/virt.c
/// create_virtio_devices): one level-high SPI, and `dma-coherent` because
/// the device (the hypervisor) reads and writes guest memory through the
/// same coherent caches as the vCPUs, so the guest needs no cache
/// maintenance around its buffers.
fn virtio_mmio(w: &mut FdtWriter, v: &VirtioMmio) -> Result<(), Error> {
    let node = w.begin_node(&format!("virtio_mmio@{:x}", v.base))?;
    w.property_string("compatible", "virtio,mmio")?;
    w.property_array_u64("reg", &[v.base, v.size])?;
    w.property_array_u32("interrupts", &[GIC_SPI, v.spi, IRQ_LEVEL_HIGH])?;
    w.property_null("dma-coherent")?;
    w.end_node(node)?;
    Ok(())
}

fn channel(w: &mut FdtWriter, ch: &ChannelNode) -> Result<(), Error> {
    let node = w.begin_node(&format!("channel@{:x}", ch.regs.0))?;
    w.property_string("compatible", "bulkhead,channel")?;
    w.property_string("label", ch.name)?;
    w.property_array_u64("reg", &[ch.regs.0, ch.regs.1, ch.shm.0, ch.shm.1])?;
    w.property_array_u32(
        "interrupts",
        &[GIC_SPI, ch.spi.saturating_sub(FIRST_SPI), IRQ_LEVEL_HIGH],
    )?;
    w.end_node(node)?;
    Ok(())
}

/// PCI bus binding (IEEE 1275 PCI, Linux bindings/pci/host-generic-pci.yaml):
/// three address cells (phys.hi: space code in bits 25:24, device in
/// 15:11), `ranges` from a 32-bit memory space (0x0200_0000) to the CPU's
/// two cells, and INTA of each device mapped to its SPI.
fn pci_host(w: &mut FdtWriter, pci: &PciHost) -> Result<(), Error> {
    const MEM32: u32 = 0x0200_0000;
    let node = w.begin_node(&format!("pcie@{:x}", pci.ecam.0))?;
    w.property_string("compatible", "pci-host-ecam-generic")?;
    w.property_string("device_type", "pci")?;
    w.property_u32("#address-cells", 3)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("#interrupt-cells", 1)?;
    w.property_array_u32("bus-range", &[0, 0])?;
    w.property_u32("linux,pci-domain", 0)?;
    w.property_array_u64("reg", &[pci.ecam.0, pci.ecam.1])?;
    let (base, size) = pci.window;
    let hi = |v: u64| (v >> 32) as u32;
    let lo = |v: u64| v as u32;
    w.property_array_u32(
        "ranges",
        &[
            MEM32,
            hi(base),
            lo(base),
            hi(base),
            lo(base),
            hi(size),
            lo(size),
        ],
    )?;
    w.property_array_u32("interrupt-map-mask", &[0xf800, 0, 0, 7])?;
    let map: Vec<u32> = pci
        .functions
        .iter()
        .flat_map(|&(dev, spi)| {
            [
                u32::from(dev) << 11,
                0,
                0,
                1,
                GIC_PHANDLE,
                0,
                0,
                GIC_SPI,
                spi.saturating_sub(FIRST_SPI),
                IRQ_LEVEL_HIGH,
            ]
        })
        .collect();
    w.property_array_u32("interrupt-map", &map)?;
    w.end_node(node)?;
    Ok(())
}

/// Devicetree Specification v0.4, 3.6 /chosen; initrd properties from Linux
/// bindings (dt-schema chosen.yaml): 64-bit values, end exclusive.
fn chosen(w: &mut FdtWriter, dt: &GuestDt) -> Result<(), Error> {
    let node = w.begin_node("chosen")?;
    w.property_string("bootargs", dt.bootargs)?;
    w.property_u32("bulkhead,restarts", dt.restarts)?;
    w.property_string("stdout-path", &format!("/{}", uart_node_name(dt.uart.0)))?;
    if let Some((start, end)) = dt.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    if dt.pci.is_some() {
        // Keep the BARs as assigned (drivers/pci/of.c, of_pci_check_probe_only).
        w.property_u32("linux,pci-probe-only", 1)?;
    }
    w.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests;
