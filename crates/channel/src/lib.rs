//! Inter-VM channels: a block of shared memory and a doorbell each way
//! between two VMs (issue 5; the guest's view is in `docs/channels.md`).
//!
//! Each end of a channel sees a 4 KiB register page, trapped and emulated
//! by the hypervisor ([`Channel`]), and the shared memory, mapped straight
//! into both VMs' stage 2. A bare-metal guest finds both at fixed
//! addresses. A Linux guest sees each of its ends as a PCI function
//! ([`PciFunction`]) with the register page as BAR 0 and the memory as
//! BAR 2, behind an ECAM host bridge ([`ecam_decode`]), so the stock
//! `uio_pci_generic` driver hands the device, its memory and its interrupt
//! to user space: no kernel code of our own.
//!
//! The doorbell is level-triggered: ringing sets the peer's ISR bit, the
//! peer's line stays high until it reads ISR, which clears it. A ring is
//! never lost between two reads; rings between two reads coalesce, and
//! [`reg::COUNT`] tells how many there were.
//!
//! Everything here is pure: no MMIO, no locks, never panics on what a
//! guest writes.
#![no_std]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// PCI identity of a channel end: the vendor and device ID of QEMU's
/// `ivshmem` (Red Hat, Inc. 0x1af4, device 0x1110), the shared-memory
/// device the register layout follows in spirit; class 0xff (unassigned).
pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID: u16 = 0x1110;
pub const CLASS_CODE: u32 = 0xff_0000;
pub const REVISION: u8 = 1;

/// Bytes of the register page (BAR 0).
pub const REGS_SIZE: u64 = 4 << 10;

/// Register offsets in the register page. All are 32 bits wide; other
/// sizes and offsets read as zero and ignore writes.
pub mod reg {
    /// RO: this end's number, 0 or 1.
    pub const ID: u64 = 0x00;
    /// WO: any write rings the peer's doorbell.
    pub const DOORBELL: u64 = 0x04;
    /// RO, read clears: bit 0 set when the peer rang since the last read.
    pub const ISR: u64 = 0x08;
    /// RO: 1 while the peer VM is running, 0 while it is stopped.
    pub const PEER: u64 = 0x0c;
    /// RO: bytes of shared memory.
    pub const SIZE: u64 = 0x10;
    /// RO: rings received by this end since the channel was reset
    /// (wrapping); a reader that coalesced rings can tell.
    pub const COUNT: u64 = 0x14;
}

/// ISR bit 0: the peer rang.
pub const ISR_DOORBELL: u32 = 1;

/// The state of one channel, both ends. Lock-free: each VM's pCPUs work
/// on it with atomics, so ringing never takes a lock the other VM holds
/// (a critical VM never waits for a pCPU of a less critical one).
#[derive(Debug, Default)]
pub struct Channel {
    size: u64,
    isr: [AtomicU32; 2],
    count: [AtomicU32; 2],
    up: [AtomicBool; 2],
}

impl Channel {
    /// A channel with `size` bytes of shared memory, both ends down.
    pub fn new(size: u64) -> Self {
        Channel {
            size,
            ..Channel::default()
        }
    }

    /// End `end`'s VM started (or stopped): the peer sees it in
    /// [`reg::PEER`]. A start also clears that end's pending doorbell and
    /// count, so a restarted VM begins from a quiet channel. The caller
    /// scrubs the shared memory when it resets the channel as a whole.
    pub fn set_up(&self, end: usize, up: bool) {
        if up {
            if let Some(i) = self.isr.get(end) {
                i.store(0, Ordering::Relaxed);
            }
            if let Some(c) = self.count.get(end) {
                c.store(0, Ordering::Relaxed);
            }
        }
        if let Some(u) = self.up.get(end) {
            u.store(up, Ordering::Release);
        }
    }

    /// End `end`'s pending doorbell (ISR) and count of rings received, as
    /// a snapshot saves them.
    pub fn end_state(&self, end: usize) -> (u32, u32) {
        match (self.isr.get(end), self.count.get(end)) {
            (Some(i), Some(c)) => (i.load(Ordering::Acquire), c.load(Ordering::Relaxed)),
            _ => (0, 0),
        }
    }

    /// End `end`'s VM was restored from a snapshot: its pending doorbell
    /// and count are the snapshot's (`isr` checked by
    /// `bulkhead_snapshot::channel::SavedEnd::decode`), and the peer sees it up.
    pub fn restore_end(&self, end: usize, isr: u32, count: u32) {
        if let (Some(i), Some(c), Some(u)) =
            (self.isr.get(end), self.count.get(end), self.up.get(end))
        {
            i.store(isr & ISR_DOORBELL, Ordering::Relaxed);
            c.store(count, Ordering::Relaxed);
            u.store(true, Ordering::Release);
        }
    }

    /// Whether end `end`'s doorbell line is high (the peer rang and the
    /// ISR was not read since).
    pub fn line(&self, end: usize) -> bool {
        self.isr
            .get(end)
            .is_some_and(|i| i.load(Ordering::Acquire) != 0)
    }

    /// A read of `size` bytes at `offset` of end `end`'s register page.
    pub fn read(&self, end: usize, offset: u64, size: u8) -> u64 {
        if size != 4 || end > 1 {
            return 0;
        }
        let peer = end ^ 1;
        match offset {
            reg::ID => end as u64,
            reg::ISR => u64::from(self.isr[end].swap(0, Ordering::AcqRel)),
            reg::PEER => u64::from(self.up[peer].load(Ordering::Acquire)),
            reg::SIZE => self.size.min(u64::from(u32::MAX)),
            reg::COUNT => u64::from(self.count[end].load(Ordering::Relaxed)),
            _ => 0,
        }
    }

    /// A write of `size` bytes at `offset` of end `end`'s register page.
    /// Returns true when it rang the peer (whose line is now high): the
    /// caller then tells the peer's VM to look ([`Channel::line`]).
    pub fn write(&self, end: usize, offset: u64, size: u8, _value: u64) -> bool {
        if size != 4 || end > 1 || offset != reg::DOORBELL {
            return false;
        }
        let peer = end ^ 1;
        self.count[peer].fetch_add(1, Ordering::Relaxed);
        self.isr[peer].fetch_or(ISR_DOORBELL, Ordering::AcqRel);
        true
    }
}

/// Where an ECAM access lands: bus 0 only (one bus is all a VM's host
/// bridge has), `device` 0..32, `function` 0..8, `reg` 0..4096
/// (PCI Express Base Specification, 7.2.2 "ECAM": bus << 20 | device << 15
/// | function << 12 | register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamAddr {
    pub device: u8,
    pub function: u8,
    pub reg: u16,
}

/// Decodes an offset into a one-bus ECAM window; `None` past bus 0.
pub fn ecam_decode(offset: u64) -> Option<EcamAddr> {
    if offset >= 1 << 20 {
        return None;
    }
    Some(EcamAddr {
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
        reg: (offset & 0xfff) as u16,
    })
}

/// PCI command register bits (PCI Local Bus Specification 3.0, 6.2.2).
pub mod command {
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// PCI status register bit 3: the function's INTx is asserted (before
/// the command register's disable bit), read-only.
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// The PCI face of one channel end in a Linux VM: a type 0 configuration
/// header with two 32-bit memory BARs, INTA, and no capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    command: u16,
    bars: [u32; 2],
    sizes: [u32; 2],
    homes: [u32; 2],
    interrupt_line: u8,
}

impl PciFunction {
    /// A function whose BAR 0 (`REGS_SIZE`) sits at `regs` and BAR 2
    /// (`shm_size`, a power of two) at `shm`, both below 4 GiB and aligned
    /// to their sizes: the firmware's assignment, which Linux keeps with
    /// `linux,pci-probe-only`.
    pub fn new(regs: u32, shm: u32, shm_size: u32) -> Self {
        PciFunction {
            command: 0,
            bars: [regs, shm],
            sizes: [REGS_SIZE as u32, shm_size.max(16)],
            homes: [regs, shm],
            interrupt_line: 0,
        }
    }

    /// Bytes of [`PciFunction::save_state`]: command, the two BARs, the
    /// interrupt line.
    pub const STATE_BYTES: usize = 2 + 4 + 4 + 1;

    /// What the guest wrote, for a snapshot (the BARs' sizes and homes
    /// are the VM's config's, not saved).
    pub fn save_state(&self) -> [u8; Self::STATE_BYTES] {
        let mut out = [0u8; Self::STATE_BYTES];
        out[0..2].copy_from_slice(&self.command.to_le_bytes());
        out[2..6].copy_from_slice(&self.bars[0].to_le_bytes());
        out[6..10].copy_from_slice(&self.bars[1].to_le_bytes());
        out[10] = self.interrupt_line;
        out
    }

    /// Takes a saved state, if it is one a guest could have written
    /// (only writable command bits, BARs aligned to their sizes); a
    /// refused one changes nothing.
    pub fn restore_state(&mut self, b: &[u8; Self::STATE_BYTES]) -> Result<(), &'static str> {
        let command = u16::from_le_bytes([b[0], b[1]]);
        let bars = [
            u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            u32::from_le_bytes([b[6], b[7], b[8], b[9]]),
        ];
        let writable = command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        if command & !writable != 0 {
            return Err("PCI command has bits a guest cannot set");
        }
        if bars.iter().zip(self.sizes).any(|(b, s)| b & (s - 1) != 0) {
            return Err("a PCI BAR is not aligned to its size");
        }
        self.command = command;
        self.bars = bars;
        self.interrupt_line = b[10];
        Ok(())
    }

    /// Back to the reset state (memory decoding off, BARs at home).
    pub fn reset(&mut self) {
        self.command = 0;
        self.bars = self.homes;
        self.interrupt_line = 0;
    }

    /// The INTx line as it reaches the interrupt controller, given the
    /// channel end's doorbell line.
    pub fn intx(&self, doorbell: bool) -> bool {
        doorbell && self.command & command::INTX_DISABLE == 0
    }

    /// Memory decoding is on and both BARs are where the hypervisor maps
    /// them. When this is false the guest moved a BAR (or has not enabled
    /// the function): the pages stay at their home addresses.
    pub fn at_home(&self) -> bool {
        self.bars == self.homes
    }

    fn dword(&self, reg: u16, doorbell: bool) -> u32 {
        match reg & !3 {
            0x00 => u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID),
            0x04 => {
                let status = if doorbell { STATUS_INTERRUPT } else { 0 };
                u32::from(status) << 16 | u32::from(self.command)
            }
            0x08 => CLASS_CODE << 8 | u32::from(REVISION),
            // Header type 0, single function; no BIST, cache line, latency.
            0x0c => 0,
            0x10 => self.bars[0],
            0x18 => self.bars[1],
            // Subsystem vendor and ID: the same as the function's.
            0x2c => u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID),
            // Interrupt pin 1 (INTA), line as written.
            0x3c => 1 << 8 | u32::from(self.interrupt_line),
            _ => 0,
        }
    }

    /// A configuration read of `size` (1, 2 or 4) bytes at `reg`; an
    /// access that is not naturally aligned reads as zero. `doorbell` is the
    /// channel end's line, shown in the status register.
    pub fn config_read(&self, reg: u16, size: u8, doorbell: bool) -> u32 {
        if !matches!(size, 1 | 2 | 4) || !reg.is_multiple_of(u16::from(size)) || reg >= 0x1000 {
            return 0;
        }
        let shift = u32::from(reg & 3) * 8;
        let v = self.dword(reg, doorbell) >> shift;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// A configuration write. Only the command register's memory, bus
    /// master and INTx-disable bits, the two BARs (aligned to their size:
    /// writing all ones and reading back is how software sizes them) and
    /// the interrupt line register take writes.
    pub fn config_write(&mut self, reg: u16, size: u8, value: u32) {
        if !matches!(size, 1 | 2 | 4) || !reg.is_multiple_of(u16::from(size)) || reg >= 0x1000 {
            return;
        }
        let shift = u32::from(reg & 3) * 8;
        let mask = match size {
            1 => 0xffu32,
            2 => 0xffff,
            _ => u32::MAX,
        } << shift;
        let merge = |old: u32| (old & !mask) | ((value << shift) & mask);
        match reg & !3 {
            0x04 => {
                let writable = command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
                let new = merge(u32::from(self.command)) as u16;
                self.command = new & writable;
            }
            0x10 => self.bars[0] = merge(self.bars[0]) & !(self.sizes[0] - 1),
            0x18 => self.bars[1] = merge(self.bars[1]) & !(self.sizes[1] - 1),
            0x3c => self.interrupt_line = (merge(u32::from(self.interrupt_line)) & 0xff) as u8,
            _ => {}
        }
    }
}

/// The request/reply protocol Bulkhead's own tools speak over a channel's
/// shared memory (the Linux `bulkhead-chan` tool and the `safety` guest).
/// A channel carries bytes; this is one use of it, not part of the device.
/// All fields are little-endian `u32`s, accessed as aligned 32-bit words
/// (Linux maps the BAR as device memory).
pub mod mailbox {
    /// Sequence number of the request; written last, then the doorbell.
    pub const REQ_SEQ: usize = 0x000;
    /// Bytes of request text at [`REQ_DATA`].
    pub const REQ_LEN: usize = 0x004;
    pub const REQ_DATA: usize = 0x040;
    /// Sequence number of the request answered; written last, then the
    /// doorbell.
    pub const RSP_SEQ: usize = 0x100;
    pub const RSP_LEN: usize = 0x104;
    pub const RSP_DATA: usize = 0x140;
    /// Most bytes of text each way.
    pub const MAX_TEXT: usize = 0xc0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringing_raises_the_peer_until_it_reads_isr() {
        let c = Channel::new(4096);
        c.set_up(0, true);
        c.set_up(1, true);
        assert!(!c.line(1));
        assert!(c.write(0, reg::DOORBELL, 4, 0));
        assert!(c.line(1) && !c.line(0));
        assert!(c.write(0, reg::DOORBELL, 4, 7));
        assert_eq!(c.read(1, reg::COUNT, 4), 2, "two rings counted");
        assert_eq!(c.read(1, reg::ISR, 4), 1);
        assert!(!c.line(1), "read clears");
        assert_eq!(c.read(1, reg::ISR, 4), 0);
        assert_eq!(c.read(1, reg::ID, 4), 1);
        assert_eq!(c.read(0, reg::SIZE, 4), 4096);
    }

    #[test]
    fn peer_state_and_restart_clear_only_that_end() {
        let c = Channel::new(4096);
        c.set_up(0, true);
        assert_eq!(c.read(1, reg::PEER, 4), 1);
        assert_eq!(c.read(0, reg::PEER, 4), 0);
        c.write(1, reg::DOORBELL, 4, 0);
        c.write(0, reg::DOORBELL, 4, 0);
        c.set_up(1, true);
        assert!(!c.line(1), "a restarted end starts quiet");
        assert!(c.line(0), "the other end keeps its ring");
        c.set_up(0, false);
        assert_eq!(c.read(1, reg::PEER, 4), 0);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let c = Channel::new(4096);
        assert!(!c.write(0, reg::DOORBELL, 8, 0), "8-byte write");
        assert!(!c.write(0, reg::DOORBELL + 1, 1, 0), "byte write");
        assert!(!c.write(0, reg::ISR, 4, 0), "read-only register");
        assert!(!c.write(2, reg::DOORBELL, 4, 0), "no end 2");
        assert!(!c.line(1));
        assert_eq!(c.read(0, reg::ID, 2), 0);
        assert_eq!(c.read(5, reg::ID, 4), 0);
        assert_eq!(c.read(0, 0xffc, 4), 0);
    }

    #[test]
    fn ecam_offsets_decode_to_device_function_register() {
        assert_eq!(
            ecam_decode(3 << 15 | 1 << 12 | 0x3c),
            Some(EcamAddr {
                device: 3,
                function: 1,
                reg: 0x3c
            })
        );
        assert_eq!(ecam_decode(1 << 20), None);
    }

    #[test]
    fn header_identifies_an_ivshmem_like_function() {
        let f = PciFunction::new(0x1000_0000, 0x1010_0000, 4096);
        assert_eq!(f.config_read(0, 2, false), 0x1af4);
        assert_eq!(f.config_read(2, 2, false), 0x1110);
        assert_eq!(f.config_read(0, 4, false), 0x1110_1af4);
        assert_eq!(f.config_read(0x0b, 1, false), 0xff, "class");
        assert_eq!(f.config_read(0x0e, 1, false), 0, "header type 0");
        assert_eq!(f.config_read(0x3d, 1, false), 1, "INTA");
        assert_eq!(f.config_read(0x34, 1, false), 0, "no capabilities");
        assert_eq!(f.config_read(1, 2, false), 0, "misaligned");
    }

    #[test]
    fn bars_size_like_hardware_and_restore() {
        let mut f = PciFunction::new(0x1000_0000, 0x1010_0000, 0x1_0000);
        f.config_write(0x10, 4, u32::MAX);
        assert_eq!(f.config_read(0x10, 4, false), !(0x1000 - 1));
        f.config_write(0x18, 4, u32::MAX);
        assert_eq!(f.config_read(0x18, 4, false), !(0x1_0000 - 1));
        assert!(!f.at_home());
        f.config_write(0x10, 4, 0x1000_0000);
        f.config_write(0x18, 4, 0x1010_0000);
        assert!(f.at_home());
        assert_eq!(f.config_read(0x14, 4, false), 0, "BAR 1 absent");
    }

    #[test]
    fn intx_follows_doorbell_status_and_disable_bit() {
        let mut f = PciFunction::new(0x1000_0000, 0x1010_0000, 4096);
        assert!(f.intx(true));
        assert_eq!(
            f.config_read(0x06, 2, true) & u32::from(STATUS_INTERRUPT),
            8
        );
        // uio_pci_generic's check that INTx masking works: toggle and read.
        let cmd = f.config_read(0x04, 2, true) as u16;
        f.config_write(0x04, 2, u32::from(cmd ^ command::INTX_DISABLE));
        assert_eq!(
            f.config_read(0x04, 2, true) as u16,
            cmd ^ command::INTX_DISABLE
        );
        assert!(!f.intx(true), "masked");
        assert_eq!(
            f.config_read(0x06, 2, true) & u32::from(STATUS_INTERRUPT),
            8,
            "status shows the line before the mask"
        );
        f.config_write(0x04, 2, u32::from(command::MEMORY));
        assert!(f.intx(true));
        assert_eq!(f.config_read(0x04, 2, false), u32::from(command::MEMORY));
        f.config_write(0x04, 2, 0xffff);
        assert_eq!(
            f.config_read(0x04, 2, false),
            u32::from(command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE),
            "only the modelled bits stick"
        );
        f.reset();
        assert_eq!(f.config_read(0x04, 2, false), 0);
    }
}
