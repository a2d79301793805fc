//! The redistributor frames, GICR (GICv3 spec 12.10, 12.11): one RD_base
//! and one SGI_base 64 KiB frame per vCPU, no VLPI frames. SGIs and PPIs are
//! banked per vCPU here.

use crate::{
    aligned, id_register, BitReg, Kicks, VGic, VgicError, FIRST_PPI, GICR_FRAME_SIZE, IIDR,
};

/// SGI_base starts 64 KiB into each vCPU's frame.
const SGI_BASE: u64 = 0x1_0000;

// RD_base
const CTLR: u64 = 0x0000;
const IIDR_OFF: u64 = 0x0004;
const TYPER: u64 = 0x0008;
const TYPER_HI: u64 = 0x000c;
const WAKER: u64 = 0x0014;

/// GICR_TYPER (12.10.33): Last [4], Processor_Number \[23:8\],
/// Affinity_Value \[63:32\]; PLPIS, VLPIS, DirectLPI all 0.
const TYPER_LAST: u64 = 1 << 4;
/// GICR_WAKER (12.10.36): ProcessorSleep [1], ChildrenAsleep [2].
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

// SGI_base
const BITS: u64 = 0x0080;
const BITS_END: u64 = 0x0400;
const IPRIORITYR: u64 = 0x0400;
const IPRIORITYR_END: u64 = 0x0420;
const ICFGR0: u64 = 0x0c00;
const ICFGR1: u64 = 0x0c04;

impl VGic {
    /// Splits an offset into the redistributor region into (vCPU, offset in
    /// its frame).
    fn redist_frame(&self, offset: u64) -> Result<(usize, u64), VgicError> {
        let v = offset / GICR_FRAME_SIZE;
        if v >= u64::from(self.n_vcpus) {
            return Err(VgicError::OutOfRange);
        }
        Ok((v as usize, offset % GICR_FRAME_SIZE))
    }

    fn gicr_typer(&self, v: usize) -> u64 {
        let index = v as u16;
        let mut typer = u64::from(Self::affinity(index)) << 32 | u64::from(index) << 8;
        if v + 1 == usize::from(self.n_vcpus) {
            typer |= TYPER_LAST;
        }
        typer
    }

    /// A guest read of `size` bytes at `offset` from the start of the whole
    /// redistributor region (vCPU = offset / [`GICR_FRAME_SIZE`]).
    pub fn redist_read(&mut self, offset: u64, size: u8) -> Result<u64, VgicError> {
        let (v, off) = self.redist_frame(offset)?;
        if !aligned(off, size) {
            return Ok(0);
        }
        let word = size == 4;
        let value = if off < SGI_BASE {
            match off {
                // EnableLPIs, RWP, UWP: 0 (no LPIs; writes complete at once).
                CTLR => 0,
                IIDR_OFF if word => u64::from(IIDR),
                TYPER if size == 8 => self.gicr_typer(v),
                TYPER if word => self.gicr_typer(v) & 0xffff_ffff,
                TYPER_HI if word => self.gicr_typer(v) >> 32,
                WAKER if word => {
                    let asleep = self.asleep.get(v).copied().unwrap_or(false);
                    u64::from(u32::from(asleep) * (WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP))
                }
                // STATUSR, PROPBASER, PENDBASER and the rest: RAZ.
                _ if word => id_register(off).map_or(0, u64::from),
                _ => 0,
            }
        } else {
            match off - SGI_BASE {
                o @ BITS..BITS_END if word => match sgi_bit_reg(o) {
                    Some(reg) => u64::from(self.read_bits(v, reg, 0)),
                    None => 0,
                },
                o @ IPRIORITYR..IPRIORITYR_END if size == 1 || word => {
                    let first = (o - IPRIORITYR) as u32;
                    (0..u32::from(size)).fold(0u64, |acc, b| {
                        acc | u64::from(self.read_priority(v, first + b)) << (8 * b)
                    })
                }
                ICFGR0 if word => u64::from(self.read_cfg(v, 0)),
                ICFGR1 if word => u64::from(self.read_cfg(v, FIRST_PPI)),
                // IGRPMODR0, NSACR and the rest: RAZ.
                _ => 0,
            }
        };
        Ok(value)
    }

    /// A guest write of `size` bytes at `offset` from the start of the whole
    /// redistributor region.
    pub fn redist_write(&mut self, offset: u64, size: u8, value: u64) -> Result<Kicks, VgicError> {
        let (v, off) = self.redist_frame(offset)?;
        if !aligned(off, size) {
            return Ok(Kicks::NONE);
        }
        let word = size == 4;
        let v32 = value as u32;
        let kicks = if off < SGI_BASE {
            match off {
                WAKER if word => {
                    if let Some(a) = self.asleep.get_mut(v) {
                        *a = v32 & WAKER_PROCESSOR_SLEEP != 0;
                    }
                    Kicks::NONE
                }
                // EnableLPIs cannot be set: there are no LPIs.
                CTLR => Kicks::NONE,
                // The rest is RO or RAZ/WI.
                _ => Kicks::NONE,
            }
        } else {
            match off - SGI_BASE {
                o @ BITS..BITS_END if word => match sgi_bit_reg(o) {
                    Some(reg) => self.write_bits(v, reg, 0, v32),
                    None => Kicks::NONE,
                },
                o @ IPRIORITYR..IPRIORITYR_END if size == 1 || word => {
                    let first = (o - IPRIORITYR) as u32;
                    let mut kicks = Kicks::NONE;
                    for b in 0..u32::from(size) {
                        kicks |= self.write_priority(v, first + b, (value >> (8 * b)) as u8);
                    }
                    kicks
                }
                // ICFGR0 (SGIs) is read-only: always edge.
                ICFGR1 if word => self.write_cfg(v, FIRST_PPI, v32),
                _ => Kicks::NONE,
            }
        };
        Ok(kicks)
    }
}

/// The bit register at SGI_base offset `o` in 0x080..0x400, if `o` is its
/// first word (the others would cover extended PPIs, which do not exist).
fn sgi_bit_reg(o: u64) -> Option<BitReg> {
    let rel = o - BITS;
    if !rel.is_multiple_of(0x80) {
        return None;
    }
    BitReg::ALL.get((rel / 0x80) as usize).copied()
}
