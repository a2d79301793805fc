//! What the host device tree says about the machine. Nothing here is
//! QEMU-specific; `console::FALLBACK_UART` is the only fallback.

use alloc::vec::Vec;
use fdt::Fdt;

#[derive(Debug)]
pub struct Platform {
    pub memory: Vec<(u64, u64)>,
    pub cpus: Vec<u64>,
    pub gicd: u64,
    pub gicr: (u64, u64),
    pub gicr_stride: u64,
    pub maintenance_intid: Option<u32>,
    pub uart: Option<u64>,
    /// The UART's interrupt (INTID), for console input.
    pub uart_intid: Option<u32>,
    /// Architected timer interrupts (INTIDs): secure phys, non-secure phys,
    /// virtual, hypervisor.
    pub timer_intids: Vec<u32>,
    /// virtio-mmio register pages (base, size, INTID), by address; empty
    /// slots included (their device ID reads 0).
    pub virtio: Vec<(u64, u64, Option<u32>)>,
}

#[derive(Debug)]
pub enum PlatformError {
    NoMemory,
    NoCpus,
    NoGicV3,
    NoPsci,
}

impl core::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PlatformError::NoMemory => "no /memory node with a reg property",
            PlatformError::NoCpus => "no CPU nodes under /cpus",
            PlatformError::NoGicV3 => {
                "no arm,gic-v3 node with distributor and redistributor regions"
            }
            PlatformError::NoPsci => {
                "no /psci node with method \"smc\" (an EL2 hypervisor cannot use the hvc conduit)"
            }
        })
    }
}

/// PPI/SPI specifier (GIC binding: <type number flags>) to an INTID.
fn intid(kind: u32, number: u32) -> u32 {
    if kind == 1 {
        number + 16
    } else {
        number + 32
    }
}

fn cells(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

pub fn uart(fdt: &Fdt) -> Option<u64> {
    let node = fdt
        .chosen()
        .stdout()
        .or_else(|| fdt.find_compatible(&["arm,pl011"]))?;
    let reg = node.reg()?.next()?;
    Some(reg.starting_address as u64)
}

fn uart_intid(fdt: &Fdt) -> Option<u32> {
    let node = fdt
        .chosen()
        .stdout()
        .or_else(|| fdt.find_compatible(&["arm,pl011"]))?;
    let v: Vec<u32> = cells(node.property("interrupts")?.value).collect();
    (v.len() >= 2).then(|| intid(v[0], v[1]))
}

pub fn parse(fdt: &Fdt) -> Result<Platform, PlatformError> {
    let memory: Vec<(u64, u64)> = fdt
        .memory()
        .regions()
        .filter_map(|r| Some((r.starting_address as u64, r.size? as u64)))
        .collect();
    if memory.is_empty() {
        return Err(PlatformError::NoMemory);
    }
    let cpus: Vec<u64> = fdt.cpus().map(|c| c.ids().first() as u64).collect();
    if cpus.is_empty() {
        return Err(PlatformError::NoCpus);
    }
    let gic = fdt
        .find_compatible(&["arm,gic-v3"])
        .ok_or(PlatformError::NoGicV3)?;
    let mut regs = gic.reg().ok_or(PlatformError::NoGicV3)?;
    let d = regs.next().ok_or(PlatformError::NoGicV3)?;
    let r = regs.next().ok_or(PlatformError::NoGicV3)?;
    let gicr_stride = gic
        .property("redistributor-stride")
        .and_then(|p| p.as_usize())
        .map(|s| s as u64)
        .unwrap_or(0x2_0000);
    let maintenance_intid = gic.property("interrupts").and_then(|p| {
        let v: Vec<u32> = cells(p.value).collect();
        (v.len() >= 2).then(|| intid(v[0], v[1]))
    });
    let psci_smc = fdt
        .find_node("/psci")
        .and_then(|n| n.property("method"))
        .and_then(|p| p.as_str())
        .map(|m| m == "smc")
        .unwrap_or(false);
    if !psci_smc {
        return Err(PlatformError::NoPsci);
    }
    let timer_intids = fdt
        .find_compatible(&["arm,armv8-timer"])
        .and_then(|n| n.property("interrupts"))
        .map(|p| {
            let v: Vec<u32> = cells(p.value).collect();
            v.chunks_exact(3).map(|c| intid(c[0], c[1])).collect()
        })
        .unwrap_or_default();
    let mut virtio: Vec<(u64, u64, Option<u32>)> = fdt
        .all_nodes()
        .filter(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "virtio,mmio"))
        })
        .filter_map(|n| {
            let r = n.reg()?.next()?;
            let irq = n.property("interrupts").and_then(|p| {
                let v: Vec<u32> = cells(p.value).collect();
                (v.len() >= 2).then(|| intid(v[0], v[1]))
            });
            Some((
                r.starting_address as u64,
                r.size.unwrap_or(0x200) as u64,
                irq,
            ))
        })
        .collect();
    virtio.sort_unstable();
    Ok(Platform {
        memory,
        cpus,
        gicd: d.starting_address as u64,
        gicr: (r.starting_address as u64, r.size.unwrap_or(0) as u64),
        gicr_stride,
        maintenance_intid,
        uart: uart(fdt),
        uart_intid: uart_intid(fdt),
        timer_intids,
        virtio,
    })
}
