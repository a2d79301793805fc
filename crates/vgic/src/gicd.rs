//! The distributor frame, GICD (GICv3 spec 12.9), with affinity routing
//! enabled and a single security state (GICD_CTLR.ARE = 1, DS = 1).
//!
//! With ARE = 1 the words covering INTIDs 0-31 live in the redistributors and
//! are RAZ/WI here; INTIDs beyond the implemented SPIs are RAZ/WI too.

use crate::{aligned, id_register, BitReg, Kicks, VGic, VgicError, GICD_SIZE, IIDR, NR_PRIVATE};

const CTLR: u64 = 0x0000;
const TYPER: u64 = 0x0004;
const IIDR_OFF: u64 = 0x0008;
const TYPER2: u64 = 0x000c;
/// IGROUPR .. ICACTIVER: seven blocks of 0x80 bytes from here.
const BITS: u64 = 0x0080;
const BITS_END: u64 = 0x0400;
const IPRIORITYR: u64 = 0x0400;
const IPRIORITYR_END: u64 = 0x07fc;
const ICFGR: u64 = 0x0c00;
const ICFGR_END: u64 = 0x0d00;
const IROUTER: u64 = 0x6000;
const IROUTER_END: u64 = 0x7fe0;

/// GICD_CTLR (GICv3 spec 12.9.4, DS = 1 view).
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// GICD_TYPER.IDbits \[23:19\]: INTIDs have 10 bits (IDbits + 1).
const TYPER_IDBITS: u32 = 9 << 19;

/// The defined GICD_IROUTER fields: Aff3 \[39:32\], IRM [31], Aff2..Aff0
/// \[23:0\] (GICv3 spec 12.9.22). The rest is RES0.
pub(crate) const IROUTER_MASK: u64 = 0x0000_00ff_80ff_ffff;

impl VGic {
    /// A guest read of `size` bytes at `offset` in the distributor frame.
    pub fn dist_read(&mut self, offset: u64, size: u8) -> Result<u64, VgicError> {
        if offset >= GICD_SIZE {
            return Err(VgicError::OutOfRange);
        }
        if !aligned(offset, size) {
            return Ok(0);
        }
        let word = size == 4;
        let value = match offset {
            CTLR if word => {
                // RWP (bit 31) reads 0: writes take effect at once.
                let mut v = CTLR_ARE | CTLR_DS;
                if self.grp0 {
                    v |= CTLR_ENABLE_GRP0;
                }
                if self.grp1 {
                    v |= CTLR_ENABLE_GRP1;
                }
                u64::from(v)
            }
            // GICD_TYPER (12.9.38): ITLinesNumber [4:0], CPUNumber [7:5],
            // SecurityExtn/MBIS/LPIS/num_LPIs 0 (no LPIs, no ITS), IDbits.
            TYPER if word => {
                let it_lines = self.nr_spis.div_ceil(32);
                let cpus = u32::from(self.n_vcpus.saturating_sub(1)) & 7;
                u64::from(it_lines | cpus << 5 | TYPER_IDBITS)
            }
            IIDR_OFF if word => u64::from(IIDR),
            TYPER2 => 0,
            BITS..BITS_END if word => {
                let (reg, first) = bit_reg(offset);
                if first < NR_PRIVATE {
                    0
                } else {
                    u64::from(self.read_bits(0, reg, first))
                }
            }
            IPRIORITYR..IPRIORITYR_END if size == 1 || word => {
                let first = (offset - IPRIORITYR) as u32;
                let mut v = 0u64;
                for b in 0..u32::from(size) {
                    let intid = first + b;
                    if intid >= NR_PRIVATE {
                        v |= u64::from(self.read_priority(0, intid)) << (8 * b);
                    }
                }
                v
            }
            ICFGR..ICFGR_END if word => {
                let first = ((offset - ICFGR) / 4) as u32 * 16;
                if first < NR_PRIVATE {
                    0
                } else {
                    u64::from(self.read_cfg(0, first))
                }
            }
            IROUTER..IROUTER_END if size == 4 || size == 8 => {
                let intid = ((offset - IROUTER) / 8) as u32;
                let route = self.route_of(intid).unwrap_or(0);
                match (size, offset % 8) {
                    (8, _) => route,
                    (_, 0) => route & 0xffff_ffff,
                    _ => route >> 32,
                }
            }
            _ if word => id_register(offset).map_or(0, u64::from),
            // STATUSR, SETSPI/CLRSPI, ITARGETSR, IGRPMODR, NSACR, SGIR and
            // everything else: RAZ.
            _ => 0,
        };
        Ok(value)
    }

    /// A guest write of `size` bytes at `offset` in the distributor frame.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) -> Result<Kicks, VgicError> {
        if offset >= GICD_SIZE {
            return Err(VgicError::OutOfRange);
        }
        if !aligned(offset, size) {
            return Ok(Kicks::NONE);
        }
        let word = size == 4;
        let v32 = value as u32;
        let kicks = match offset {
            CTLR if word => {
                let grp0 = v32 & CTLR_ENABLE_GRP0 != 0;
                let grp1 = v32 & CTLR_ENABLE_GRP1 != 0;
                let changed = grp0 != self.grp0 || grp1 != self.grp1;
                self.grp0 = grp0;
                self.grp1 = grp1;
                if changed {
                    self.all_vcpus()
                } else {
                    Kicks::NONE
                }
            }
            BITS..BITS_END if word => {
                let (reg, first) = bit_reg(offset);
                if first < NR_PRIVATE {
                    Kicks::NONE
                } else {
                    self.write_bits(0, reg, first, v32)
                }
            }
            IPRIORITYR..IPRIORITYR_END if size == 1 || word => {
                let first = (offset - IPRIORITYR) as u32;
                let mut kicks = Kicks::NONE;
                for b in 0..u32::from(size) {
                    let intid = first + b;
                    if intid >= NR_PRIVATE {
                        kicks |= self.write_priority(0, intid, (value >> (8 * b)) as u8);
                    }
                }
                kicks
            }
            ICFGR..ICFGR_END if word => {
                let first = ((offset - ICFGR) / 4) as u32 * 16;
                if first < NR_PRIVATE {
                    Kicks::NONE
                } else {
                    self.write_cfg(0, first, v32)
                }
            }
            IROUTER..IROUTER_END if size == 4 || size == 8 => {
                let intid = ((offset - IROUTER) / 8) as u32;
                match self.route_of(intid) {
                    Some(old) => {
                        let new = match (size, offset % 8) {
                            (8, _) => value,
                            (_, 0) => (old & !0xffff_ffff) | u64::from(v32),
                            _ => (old & 0xffff_ffff) | u64::from(v32) << 32,
                        };
                        self.set_route(intid, new & IROUTER_MASK)
                    }
                    None => Kicks::NONE,
                }
            }
            // Everything else is RO or RAZ/WI.
            _ => Kicks::NONE,
        };
        Ok(kicks)
    }

    pub(crate) fn all_vcpus(&self) -> Kicks {
        Kicks((1u32 << self.n_vcpus) - 1)
    }

    /// GICD_IROUTER of SPI `intid`, if it is one.
    fn route_of(&self, intid: u32) -> Option<u64> {
        if intid < NR_PRIVATE {
            return None;
        }
        self.irq(0, intid).map(|irq| irq.route)
    }

    fn set_route(&mut self, intid: u32, route: u64) -> Kicks {
        // Both the old and the new target must look again.
        let before = self.kick_for(0, intid);
        self.update(0, intid, |irq| irq.route = route);
        before | self.kick_for(0, intid)
    }
}

/// Which bit register and which first INTID a word offset in 0x080..0x400
/// names.
fn bit_reg(offset: u64) -> (BitReg, u32) {
    let rel = offset - BITS;
    let reg = BitReg::ALL
        .get((rel / 0x80) as usize)
        .copied()
        .unwrap_or(BitReg::Group);
    (reg, ((rel % 0x80) / 4) as u32 * 32)
}
