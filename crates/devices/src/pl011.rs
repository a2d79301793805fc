//! An emulated Arm PrimeCell UART (PL011).
//!
//! Register map and reset values from the PL011 TRM (Arm DDI 0183G, 3.2
//! "Summary of registers"). The transmit FIFO drains instantly, so the
//! guest always sees it empty and ready. Output is assembled into lines and
//! handed to an `emit` callback, after filtering control characters so a
//! guest cannot drive the host terminal.
//!
//! Input is queued by the hypervisor with [`Pl011::push_rx`] into a ring of
//! [`RX_RING_SIZE`] bytes, the VM's console input buffer. The guest sees
//! the oldest [`RX_FIFO_DEPTH`] of them as the receive FIFO: each read of
//! UARTDR takes the oldest byte, and the next waiting byte moves up into
//! the FIFO at once, as if the line had delivered it. A paste of a few KiB
//! therefore waits in the ring instead of overrunning a 32-byte FIFO; the
//! hypervisor stops reading its own UART while the ring is full
//! ([`Pl011::rx_room`]) and resumes once the guest has drained it.
//! The interrupt output is a level ([`Pl011::irq_level`]): the hypervisor
//! drives the vGIC SPI from it after every access and every `push_rx`, which
//! is what Linux's amba-pl011 driver (ttyAMA0) needs for interrupt-driven
//! receive.

/// Size of the register frame.
pub const SIZE: u64 = 0x1000;

/// Longest line handed to `emit`; longer output is split.
pub const LINE_MAX: usize = 256;

/// Why an access could not be performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The access does not lie within the `SIZE` register frame.
    OutOfRange,
    /// The access size is not 1, 2, 4 or 8 bytes.
    BadSize,
}

// Register offsets (TRM 3.2, table 3-1).
const DR: u64 = 0x000;
const RSR_ECR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;
const PERIPH_ID0: u64 = 0xfe0;
const PCELL_ID0: u64 = 0xff0;

/// UARTPeriphID0..3 (TRM 3.3.14): part 0x011, designer Arm (0x41), r1p5.
const PERIPH_ID: [u32; 4] = [0x11, 0x10, 0x14, 0x00];
/// UARTPCellID0..3 (TRM 3.3.15): the PrimeCell identification.
const PCELL_ID: [u32; 4] = [0x0d, 0xf0, 0x05, 0xb1];

/// Receive FIFO depth: 32 entries in PL011 r1p5 (TRM 2.4.3 "FIFO").
pub const RX_FIFO_DEPTH: usize = 32;

/// Received bytes one UART holds, the FIFO included: the VM's console input
/// ring (4 KiB, like a Xen console ring).
pub const RX_RING_SIZE: usize = 4096;

const _: () = assert!(RX_RING_SIZE.is_power_of_two() && RX_RING_SIZE >= RX_FIFO_DEPTH);

/// UARTFR bits (TRM 3.3.3). TXFE is always set and TXFF and BUSY always
/// clear: the transmitter is idle and ready at every read.
const FR_TXFE: u32 = 1 << 7;
const FR_RXFF: u32 = 1 << 6;
const FR_RXFE: u32 = 1 << 4;

/// UARTRIS.RXRIS (TRM 3.3.11): receive FIFO at or above its trigger level.
const RXRIS: u32 = 1 << 4;
/// UARTRIS.TXRIS (TRM 3.3.11): transmit FIFO at or below its trigger level,
/// always true here because the FIFO drains at once.
const TXRIS: u32 = 1 << 5;
/// UARTRIS.RTRIS (TRM 3.3.11): receive timeout, data in the FIFO and the
/// line idle for 32 bit periods.
const RTRIS: u32 = 1 << 6;

// Register widths (TRM 3.3): the implemented bits of each writable register.
const ILPR_MASK: u32 = 0xff;
const IBRD_MASK: u32 = 0xffff;
const FBRD_MASK: u32 = 0x3f;
const LCR_H_MASK: u32 = 0xff;
const CR_MASK: u32 = 0xffff;
const IFLS_MASK: u32 = 0x3f;
const INT_MASK: u32 = 0x7ff;
const DMACR_MASK: u32 = 0x7;

/// UARTCR reset: TXE and RXE set, UART disabled (TRM 3.3.8).
const CR_RESET: u32 = 0x300;
/// UARTIFLS reset: both FIFOs trigger at half full (TRM 3.3.9).
const IFLS_RESET: u32 = 0x12;

/// The emulated UART.
#[derive(Debug, Clone)]
pub struct Pl011 {
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    /// Latched (edge-like) interrupt bits: only TXRIS, which UARTICR clears
    /// until the next transmit. The receive bits are computed from the FIFO
    /// level in [`Pl011::ris`].
    ris: u32,
    dmacr: u32,
    /// Received bytes, `rx_len` of them starting at `rx_head`; the first
    /// (up to) [`RX_FIFO_DEPTH`] are the receive FIFO the guest sees.
    rx: [u8; RX_RING_SIZE],
    rx_head: usize,
    rx_len: usize,
    line: [u8; LINE_MAX],
    len: usize,
    /// Where we are in a terminal escape sequence the guest sent.
    esc: Escape,
}

/// Escape-sequence filter state (see `transmit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Start,
    /// Inside "ESC [" until the final byte.
    Csi,
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

/// Merge the byte lanes selected by `mask` from `new` into `old`, keeping
/// only the register's implemented bits.
fn merge(old: u32, new: u32, mask: u32, width: u32) -> u32 {
    ((old & !mask) | (new & mask)) & width
}

impl Pl011 {
    /// A UART in its reset state.
    pub const fn new() -> Self {
        Self {
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            ris: TXRIS,
            dmacr: 0,
            rx: [0; RX_RING_SIZE],
            rx_head: 0,
            rx_len: 0,
            line: [0; LINE_MAX],
            len: 0,
            esc: Escape::None,
        }
    }

    /// Back to the reset state, with an empty receive FIFO and ring: input
    /// not yet read is discarded, and so is a partial line (call
    /// [`Pl011::flush`] first to keep it).
    ///
    /// Done field by field: `*self = Self::new()` would build a temporary of
    /// more than 4 KiB on the (EL2) stack. The byte arrays keep stale
    /// contents, which nothing reads once the lengths are zero.
    pub fn reset(&mut self) {
        let Self {
            ilpr,
            ibrd,
            fbrd,
            lcr_h,
            cr,
            ifls,
            imsc,
            ris,
            dmacr,
            rx: _,
            rx_head,
            rx_len,
            line: _,
            len,
            esc,
        } = self;
        *ilpr = 0;
        *ibrd = 0;
        *fbrd = 0;
        *lcr_h = 0;
        *cr = CR_RESET;
        *ifls = IFLS_RESET;
        *imsc = 0;
        *ris = TXRIS;
        *dmacr = 0;
        *rx_head = 0;
        *rx_len = 0;
        *len = 0;
        *esc = Escape::None;
    }

    /// Queue one received byte behind those already waiting. Returns `false`
    /// (and drops the byte) when the ring is full, i.e. [`Pl011::rx_room`]
    /// is 0: the caller should have stopped its input before that.
    ///
    /// Bytes are accepted whatever UARTCR.UARTEN/RXE and UARTLCR_H.FEN say:
    /// input typed before the driver enables the UART is kept rather than
    /// lost, and the FIFO stays 32 deep even in character mode.
    pub fn push_rx(&mut self, byte: u8) -> bool {
        if self.rx_len >= RX_RING_SIZE {
            return false;
        }
        let tail = (self.rx_head + self.rx_len) % RX_RING_SIZE;
        match self.rx.get_mut(tail) {
            Some(slot) => *slot = byte,
            None => return false,
        }
        self.rx_len += 1;
        true
    }

    /// Received bytes not yet read by the guest: those in the receive FIFO
    /// and those waiting behind it.
    pub fn rx_pending(&self) -> usize {
        self.rx_len
    }

    /// How many more bytes [`Pl011::push_rx`] accepts.
    pub fn rx_room(&self) -> usize {
        RX_RING_SIZE - self.rx_len
    }

    /// Bytes in the receive FIFO as the guest sees it.
    fn fifo_level(&self) -> usize {
        self.rx_len.min(RX_FIFO_DEPTH)
    }

    /// Oldest received byte, removed from the FIFO; the next waiting byte
    /// takes the free FIFO entry.
    fn pop_rx(&mut self) -> Option<u8> {
        if self.rx_len == 0 {
            return None;
        }
        let byte = self.rx.get(self.rx_head).copied();
        self.rx_head = (self.rx_head + 1) % RX_RING_SIZE;
        self.rx_len -= 1;
        byte
    }

    /// UARTRIS as the guest reads it.
    ///
    /// Receive interrupts are level conditions of the FIFO: RXRIS and RTRIS
    /// are both set exactly while it holds data. The UARTIFLS trigger level
    /// is deliberately ignored (RXRIS as if the trigger were one byte):
    /// input arrives one byte at a time from an interactive console, and
    /// waiting for a trigger level would only defer it to the receive
    /// timeout. RTRIS is set too, so a driver that unmasked only RTIM (or
    /// only RXIM) still runs its receive path; Linux's pl011_int handles
    /// both by draining until UARTFR.RXFE. Neither can be cleared through
    /// UARTICR while data remains, as on hardware, where the conditions
    /// re-assert while they hold; reading the FIFO empty clears them.
    fn ris(&self) -> u32 {
        let rx = if self.fifo_level() > 0 {
            RXRIS | RTRIS
        } else {
            0
        };
        self.ris | rx
    }

    /// The UARTINTR combined interrupt output (TRM 2.8.2): any raw
    /// interrupt that UARTIMSC unmasks, i.e. UARTMIS != 0.
    pub fn irq_level(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    /// Check size and range; return the end offset of the access.
    fn check(offset: u64, size: u8) -> Result<u64, DeviceError> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(DeviceError::BadSize);
        }
        match offset.checked_add(u64::from(size)) {
            Some(end) if end <= SIZE => Ok(end),
            _ => Err(DeviceError::OutOfRange),
        }
    }

    /// Read `size` bytes at `offset`. Accesses are split into the 32-bit
    /// registers they cover, each read once, so byte and halfword reads (and
    /// 64-bit reads spanning two registers) see the same bytes a 32-bit
    /// read would. A read covering UARTDR[7:0] pops the receive FIFO.
    pub fn read(&mut self, offset: u64, size: u8) -> Result<u64, DeviceError> {
        let end = Self::check(offset, size)?;
        // The common case (every driver's access): one aligned register.
        if size == 4 && offset & 3 == 0 {
            return Ok(u64::from(self.read_reg(offset, true)));
        }
        let mut value = 0u64;
        let mut reg = offset & !3;
        while reg < end {
            let first = offset.max(reg);
            let last = end.min(reg + 4);
            let word = self.read_reg(reg, first == reg);
            for addr in first..last {
                let byte = (word >> ((addr & 3) * 8)) & 0xff;
                value |= u64::from(byte) << ((addr - offset) * 8);
            }
            reg += 4;
        }
        Ok(value)
    }

    /// Write `size` bytes of `value` at `offset`. Complete lines of output
    /// (without the '\n', a trailing '\r' stripped) are passed to `emit`, as
    /// is a full buffer of [`LINE_MAX`] bytes when no newline came.
    pub fn write(
        &mut self,
        offset: u64,
        size: u8,
        value: u64,
        emit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), DeviceError> {
        let end = Self::check(offset, size)?;
        if size == 4 && offset & 3 == 0 {
            self.write_reg(offset, value as u32, u32::MAX, emit);
            return Ok(());
        }
        let mut reg = offset & !3;
        while reg < end {
            let mut lanes = 0u32;
            let mut word = 0u32;
            for (i, addr) in (offset..end).enumerate() {
                if addr & !3 == reg {
                    let shift = (addr & 3) * 8;
                    lanes |= 0xff << shift;
                    word |= (((value >> (i * 8)) & 0xff) as u32) << shift;
                }
            }
            self.write_reg(reg, word, lanes, emit);
            reg += 4;
        }
        Ok(())
    }

    /// Emit any partial line.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if self.len > 0 {
            self.emit_line(emit);
        }
    }

    /// One register's value. `low_lane` says the access covers bits [7:0],
    /// the only lane whose read of UARTDR consumes a character (mirroring
    /// writes, where only DR[7:0] transmits).
    fn read_reg(&mut self, reg: u64, low_lane: bool) -> u32 {
        match reg {
            // TRM 3.3.1: reading UARTDR pops the oldest character; the error
            // flags in [11:8] are always clear. An empty FIFO reads 0.
            DR if low_lane => self.pop_rx().map_or(0, u32::from),
            DR => 0,
            // No framing, parity, break or overrun errors are reported.
            RSR_ECR => 0,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris(),
            // TRM 3.3.12: UARTMIS = UARTRIS & UARTIMSC.
            MIS => self.ris() & self.imsc,
            DMACR => self.dmacr,
            PERIPH_ID0..=0xfef => PERIPH_ID
                .get(((reg - PERIPH_ID0) / 4) as usize)
                .copied()
                .unwrap_or(0),
            PCELL_ID0..=0xfff => PCELL_ID
                .get(((reg - PCELL_ID0) / 4) as usize)
                .copied()
                .unwrap_or(0),
            // ICR is write-only; everything else is reserved: reads as 0.
            _ => 0,
        }
    }

    /// UARTFR (TRM 3.3.3): transmit side always empty; RXFE and RXFF follow
    /// the receive FIFO (full while 32 or more bytes wait).
    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        let level = self.fifo_level();
        if level == 0 {
            fr |= FR_RXFE;
        }
        if level >= RX_FIFO_DEPTH {
            fr |= FR_RXFF;
        }
        fr
    }

    fn write_reg(&mut self, reg: u64, value: u32, lanes: u32, emit: &mut dyn FnMut(&[u8])) {
        match reg {
            // Only a write that covers DR[7:0] transmits a character.
            DR if lanes & 0xff != 0 => {
                self.transmit(value as u8, emit);
                // The FIFO drained at once: TX interrupt condition again.
                self.ris |= TXRIS;
            }
            ILPR => self.ilpr = merge(self.ilpr, value, lanes, ILPR_MASK),
            IBRD => self.ibrd = merge(self.ibrd, value, lanes, IBRD_MASK),
            FBRD => self.fbrd = merge(self.fbrd, value, lanes, FBRD_MASK),
            LCR_H => self.lcr_h = merge(self.lcr_h, value, lanes, LCR_H_MASK),
            CR => self.cr = merge(self.cr, value, lanes, CR_MASK),
            IFLS => self.ifls = merge(self.ifls, value, lanes, IFLS_MASK),
            IMSC => self.imsc = merge(self.imsc, value, lanes, INT_MASK),
            // TRM 3.3.13: writing 1 to a UARTICR bit clears that interrupt.
            // Only the latched TXRIS stays clear; receive bits are level
            // conditions recomputed on every read (see `ris`).
            ICR => self.ris &= !(value & lanes & INT_MASK),
            DMACR => self.dmacr = merge(self.dmacr, value, lanes, DMACR_MASK),
            // ECR (clears receive errors; there are none), read-only and
            // reserved registers: ignored.
            _ => {}
        }
    }

    /// Add one byte to the line buffer, emitting on '\n' or when full.
    fn transmit(&mut self, byte: u8, emit: &mut dyn FnMut(&[u8])) {
        if byte == b'\n' {
            self.emit_line(emit);
            return;
        }
        // Terminal control is the host's, not the guest's: escape
        // sequences (ESC, and a CSI "ESC [ params final") are dropped whole,
        // '\r' is dropped (it could move the cursor back over another VM's
        // tag), other C0 controls, DEL and 8-bit bytes become '.'.
        match (self.esc, byte) {
            (Escape::None, 0x1b) => {
                self.esc = Escape::Start;
                return;
            }
            (Escape::Start, b'[') => {
                self.esc = Escape::Csi;
                return;
            }
            (Escape::Start, _) => {
                self.esc = Escape::None;
                return;
            }
            (Escape::Csi, 0x20..=0x3f) => return,
            (Escape::Csi, _) => {
                self.esc = Escape::None;
                return;
            }
            (Escape::None, b'\r') => return,
            (Escape::None, _) => {}
        }
        let byte = match byte {
            b'\t' | 0x20..=0x7e => byte,
            _ => b'.',
        };
        if let Some(slot) = self.line.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
        if self.len >= LINE_MAX {
            self.emit_line(emit);
        }
    }

    fn emit_line(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let mut line = self.line.get(..self.len).unwrap_or(&[]);
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        emit(line);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Collects emitted lines.
    #[derive(Default)]
    struct Sink(Vec<Vec<u8>>);

    impl Sink {
        fn put(&mut self, uart: &mut Pl011, bytes: &[u8]) {
            for &b in bytes {
                uart.write(DR, 4, u64::from(b), &mut |l| self.0.push(l.to_vec()))
                    .expect("DR write");
            }
        }
        fn flush(&mut self, uart: &mut Pl011) {
            uart.flush(&mut |l| self.0.push(l.to_vec()));
        }
    }

    fn no_emit(_: &[u8]) {
        panic!("nothing should be emitted");
    }

    #[test]
    fn line_is_emitted_only_at_newline() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        s.put(&mut u, b"hel");
        assert!(s.0.is_empty());
        s.put(&mut u, b"lo\nwor");
        assert_eq!(s.0, [b"hello".to_vec()]);
        s.put(&mut u, b"ld\n");
        assert_eq!(s.0, [b"hello".to_vec(), b"world".to_vec()]);
    }

    #[test]
    fn crlf_strips_carriage_return() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        s.put(&mut u, b"ok\r\n\r\n");
        assert_eq!(s.0, [b"ok".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn long_line_is_split_at_line_max() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        let long: Vec<u8> = (0..LINE_MAX + 10).map(|i| b'a' + (i % 26) as u8).collect();
        s.put(&mut u, &long);
        assert_eq!(s.0.len(), 1);
        assert_eq!(s.0[0], long[..LINE_MAX]);
        s.put(&mut u, b"\n");
        assert_eq!(s.0[1], long[LINE_MAX..]);
    }

    #[test]
    fn flush_emits_partial_line_once() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        s.put(&mut u, b"prompt> ");
        s.flush(&mut u);
        s.flush(&mut u);
        assert_eq!(s.0, [b"prompt> ".to_vec()]);
    }

    #[test]
    fn escape_sequences_are_filtered() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        s.put(&mut u, b"\x1b[2Ja\tb\x07\x7f\xff\x00\n");
        assert_eq!(s.0, [b"a\tb....".to_vec()]);
    }

    #[test]
    fn carriage_return_cannot_rewrite_the_line() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        s.put(&mut u, b"[other] fake\rreal\x1b7x\n");
        assert_eq!(s.0, [b"[other] fakerealx".to_vec()]);
    }

    #[test]
    fn byte_write_to_dr_transmits() {
        let mut u = Pl011::new();
        let mut s = Sink::default();
        u.write(DR, 1, u64::from(b'x'), &mut no_emit).unwrap();
        s.flush(&mut u);
        assert_eq!(s.0, [b"x".to_vec()]);
    }

    #[test]
    fn byte_write_to_upper_dr_lane_does_not_transmit() {
        let mut u = Pl011::new();
        u.write(DR + 1, 1, 0x41, &mut no_emit).unwrap();
        u.flush(&mut no_emit);
    }

    #[test]
    fn id_registers_identify_a_pl011() {
        let mut u = Pl011::new();
        let ids: Vec<u64> = (0..8).map(|i| u.read(0xfe0 + i * 4, 4).unwrap()).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn flag_register_says_tx_empty_rx_empty_not_busy() {
        let mut u = Pl011::new();
        let fr = u.read(FR, 4).unwrap();
        assert_eq!(fr, 0x90);
        assert_eq!(fr & (1 << 5), 0, "TXFF");
        assert_eq!(fr & (1 << 3), 0, "BUSY");
    }

    #[test]
    fn reset_values() {
        let mut u = Pl011::new();
        assert_eq!(u.read(CR, 4).unwrap(), 0x300);
        assert_eq!(u.read(IFLS, 4).unwrap(), 0x12);
        assert_eq!(u.read(RIS, 4).unwrap(), 0x20);
        assert_eq!(u.read(DR, 4).unwrap(), 0);
    }

    #[test]
    fn control_registers_read_back_masked_to_width() {
        let mut u = Pl011::new();
        for (reg, val, expect) in [
            (CR, 0xffff_0301, 0x0301),
            (LCR_H, 0x170, 0x70),
            (IBRD, 0x1_0027, 0x0027),
            (FBRD, 0xff, 0x3f),
            (IMSC, 0xffff, 0x7ff),
            (DMACR, 0xff, 0x7),
            (ILPR, 0x1ff, 0xff),
        ] {
            u.write(reg, 4, val, &mut no_emit).unwrap();
            assert_eq!(u.read(reg, 4).unwrap(), expect, "reg {reg:#x}");
        }
    }

    #[test]
    fn byte_write_merges_into_register() {
        let mut u = Pl011::new();
        u.write(CR, 1, 0x01, &mut no_emit).unwrap();
        assert_eq!(u.read(CR, 4).unwrap(), 0x301);
        assert_eq!(u.read(CR + 1, 1).unwrap(), 0x03);
        assert_eq!(u.read(CR, 2).unwrap(), 0x301);
    }

    #[test]
    fn icr_clears_ris_and_mis_follows_imsc() {
        let mut u = Pl011::new();
        assert_eq!(u.read(MIS, 4).unwrap(), 0);
        u.write(IMSC, 4, TXRIS.into(), &mut no_emit).unwrap();
        assert_eq!(u.read(MIS, 4).unwrap(), 0x20);
        u.write(ICR, 4, 0x7ff, &mut no_emit).unwrap();
        assert_eq!(u.read(RIS, 4).unwrap(), 0);
        assert_eq!(u.read(MIS, 4).unwrap(), 0);
        // The next transmit drains at once and raises TXRIS again.
        u.write(DR, 4, u64::from(b'a'), &mut no_emit).unwrap();
        assert_eq!(u.read(RIS, 4).unwrap(), 0x20);
    }

    #[test]
    fn read_only_and_reserved_registers_ignore_writes() {
        let mut u = Pl011::new();
        for reg in [FR, RIS, MIS, 0x100, 0xfe0, 0xffc] {
            let before = u.read(reg, 4).unwrap();
            u.write(reg, 4, 0xffff_ffff, &mut no_emit).unwrap();
            assert_eq!(u.read(reg, 4).unwrap(), before, "reg {reg:#x}");
        }
        assert_eq!(u.read(0x100, 4).unwrap(), 0);
    }

    #[test]
    fn wide_read_spans_two_registers() {
        let mut u = Pl011::new();
        u.write(IBRD, 8, 0x0000_0005_0000_0027, &mut no_emit)
            .unwrap();
        assert_eq!(u.read(IBRD, 4).unwrap(), 0x27);
        assert_eq!(u.read(FBRD, 4).unwrap(), 0x05);
        assert_eq!(u.read(IBRD, 8).unwrap(), 0x0000_0005_0000_0027);
    }

    #[test]
    fn out_of_range_accesses_fail() {
        let mut u = Pl011::new();
        assert_eq!(u.read(SIZE, 4), Err(DeviceError::OutOfRange));
        assert_eq!(u.read(0xffc, 8), Err(DeviceError::OutOfRange));
        assert_eq!(u.read(u64::MAX, 1), Err(DeviceError::OutOfRange));
        assert_eq!(
            u.write(SIZE + 4, 4, 0, &mut no_emit),
            Err(DeviceError::OutOfRange)
        );
        assert_eq!(u.read(0xffc, 4), Ok(0xb1));
    }

    #[test]
    fn bad_sizes_fail() {
        let mut u = Pl011::new();
        for size in [0, 3, 5, 16, 255] {
            assert_eq!(u.read(0, size), Err(DeviceError::BadSize));
            assert_eq!(
                u.write(DR, size, 0x41, &mut no_emit),
                Err(DeviceError::BadSize)
            );
        }
    }

    #[test]
    fn reset_restores_registers_and_drops_partial_line() {
        let mut u = Pl011::new();
        u.write(CR, 4, 0x301, &mut no_emit).unwrap();
        u.write(DR, 4, u64::from(b'z'), &mut no_emit).unwrap();
        u.reset();
        assert_eq!(u.read(CR, 4).unwrap(), 0x300);
        u.flush(&mut no_emit);
    }

    fn fr(u: &mut Pl011) -> u32 {
        u.read(FR, 4).unwrap() as u32
    }

    fn ris(u: &mut Pl011) -> u32 {
        u.read(RIS, 4).unwrap() as u32
    }

    #[test]
    fn received_bytes_are_read_in_order() {
        let mut u = Pl011::new();
        for &b in b"abc" {
            assert!(u.push_rx(b));
        }
        assert_eq!(u.read(DR, 4).unwrap(), u64::from(b'a'));
        assert!(u.push_rx(b'd'));
        let rest: Vec<u64> = (0..3).map(|_| u.read(DR, 4).unwrap()).collect();
        assert_eq!(rest, [b'b', b'c', b'd'].map(u64::from));
    }

    #[test]
    fn empty_fifo_reads_zero() {
        let mut u = Pl011::new();
        assert_eq!(u.read(DR, 4).unwrap(), 0);
        u.push_rx(b'q');
        assert_eq!(u.read(DR, 4).unwrap(), u64::from(b'q'));
        assert_eq!(u.read(DR, 4).unwrap(), 0);
    }

    #[test]
    fn fifo_wraps_around_its_ring() {
        let mut u = Pl011::new();
        for round in 0..3u8 {
            for i in 0..RX_FIFO_DEPTH as u8 {
                assert!(u.push_rx(round.wrapping_mul(100).wrapping_add(i)));
            }
            for i in 0..RX_FIFO_DEPTH as u8 {
                let want = round.wrapping_mul(100).wrapping_add(i);
                assert_eq!(u.read(DR, 4).unwrap(), u64::from(want));
            }
        }
        assert_ne!(fr(&mut u) & FR_RXFE, 0);
    }

    /// A byte sequence that does not repeat with any small period, so a
    /// lost, duplicated or reordered byte shows.
    fn pattern(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 7)) as u8
    }

    #[test]
    fn fifo_full_queues_further_bytes_behind_it() {
        let mut u = Pl011::new();
        for i in 0..RX_FIFO_DEPTH + 10 {
            assert!(u.push_rx(pattern(i)), "byte {i}");
        }
        assert_eq!(u.rx_pending(), RX_FIFO_DEPTH + 10);
        // The guest sees a full 32-byte FIFO, not more.
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), FR_RXFF);
        // Each read refills the FIFO from the ring: it stays full while
        // bytes wait behind it.
        for i in 0..10 {
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(i)));
            assert_eq!(fr(&mut u) & FR_RXFF, FR_RXFF, "after read {i}");
        }
        assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(10)));
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), 0, "31 left");
        for i in 11..RX_FIFO_DEPTH + 10 {
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(i)));
        }
        assert_eq!(fr(&mut u) & FR_RXFE, FR_RXFE);
        assert_eq!(u.rx_pending(), 0);
    }

    #[test]
    fn full_ring_refuses_the_new_byte_and_reports_it() {
        let mut u = Pl011::new();
        assert_eq!(u.rx_room(), RX_RING_SIZE);
        for i in 0..RX_RING_SIZE {
            assert!(u.push_rx(pattern(i)), "byte {i}");
        }
        assert_eq!(u.rx_room(), 0);
        assert_eq!(u.rx_pending(), RX_RING_SIZE);
        assert!(!u.push_rx(0xee));
        assert_eq!(u.rx_pending(), RX_RING_SIZE, "refused byte not counted");
        // One read makes room for exactly one more.
        assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(0)));
        assert_eq!(u.rx_room(), 1);
        assert!(u.push_rx(0x55));
        assert!(!u.push_rx(0x56));
        for i in 1..RX_RING_SIZE {
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(i)), "byte {i}");
        }
        assert_eq!(u.read(DR, 4).unwrap(), 0x55);
        assert_eq!(u.read(DR, 4).unwrap(), 0, "the refused bytes never appear");
    }

    #[test]
    fn nothing_lost_or_reordered_across_many_refills() {
        // Three rings' worth: the ring is topped up to full before each
        // uneven bite the guest reads, so it wraps with the FIFO window
        // straddling its end.
        let mut u = Pl011::new();
        let total = 3 * RX_RING_SIZE + 123;
        let (mut sent, mut got) = (0, 0);
        let mut bite = 1;
        while got < total {
            while sent < total && u.rx_room() > 0 {
                assert!(u.push_rx(pattern(sent)));
                sent += 1;
            }
            assert_eq!(u.rx_pending(), sent - got);
            for _ in 0..bite.min(sent - got) {
                assert_eq!(
                    u.read(DR, 4).unwrap(),
                    u64::from(pattern(got)),
                    "byte {got}"
                );
                got += 1;
            }
            bite = bite * 7 % 97 + 1;
        }
        assert_eq!((sent, got), (total, total));
        assert_eq!(fr(&mut u) & FR_RXFE, FR_RXFE);
        assert_eq!(u.read(DR, 4).unwrap(), 0);
    }

    #[test]
    fn filling_the_ring_to_the_brim_between_reads() {
        let mut u = Pl011::new();
        let mut next = 0;
        for _ in 0..3 {
            while u.push_rx(pattern(next)) {
                next += 1;
            }
            assert_eq!(u.rx_pending(), RX_RING_SIZE);
            // Drain all but 100, then refill to full again.
            for _ in 0..RX_RING_SIZE - 100 {
                let want = pattern(next - u.rx_pending());
                assert_eq!(u.read(DR, 4).unwrap(), u64::from(want));
            }
        }
        while u.rx_pending() > 0 {
            let want = pattern(next - u.rx_pending());
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(want));
        }
    }

    #[test]
    fn irq_level_stays_up_until_the_ring_is_drained() {
        let mut u = Pl011::new();
        u.write(IMSC, 4, u64::from(RXRIS | RTRIS), &mut no_emit)
            .unwrap();
        for i in 0..200 {
            u.push_rx(pattern(i));
        }
        // A driver reads a few bytes per interrupt: the level (and RXRIS)
        // holds after every partial drain while anything waits.
        let mut left = 200;
        while left > 1 {
            for _ in 0..left.min(17) - 1 {
                u.read(DR, 4).unwrap();
                left -= 1;
            }
            assert!(u.irq_level(), "{left} left");
            assert_eq!(ris(&mut u) & (RXRIS | RTRIS), RXRIS | RTRIS);
            assert_eq!(fr(&mut u) & FR_RXFE, 0);
        }
        u.read(DR, 4).unwrap();
        assert!(!u.irq_level(), "drained");
        assert_eq!(ris(&mut u) & (RXRIS | RTRIS), 0);
    }

    #[test]
    fn reset_discards_pending_input_in_place() {
        let mut u = Pl011::new();
        for i in 0..RX_RING_SIZE {
            u.push_rx(pattern(i));
        }
        for _ in 0..77 {
            u.read(DR, 4).unwrap();
        }
        u.write(IMSC, 4, u64::from(RXRIS), &mut no_emit).unwrap();
        u.write(LCR_H, 4, 0x70, &mut no_emit).unwrap();
        u.write(ICR, 4, u64::from(TXRIS), &mut no_emit).unwrap();
        u.reset();
        assert_eq!(u.rx_pending(), 0);
        assert_eq!(u.rx_room(), RX_RING_SIZE);
        assert_eq!(
            u.read(DR, 4).unwrap(),
            0,
            "the old instance's input is gone"
        );
        assert_eq!(u.read(IMSC, 4).unwrap(), 0);
        assert_eq!(u.read(LCR_H, 4).unwrap(), 0);
        assert_eq!(ris(&mut u), TXRIS);
        // New input starts cleanly (from the middle of the array).
        for i in 0..50 {
            assert!(u.push_rx(pattern(1000 + i)));
        }
        for i in 0..50 {
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(1000 + i)));
        }
    }

    #[test]
    fn reset_matches_a_new_uart() {
        let mut u = Pl011::new();
        for reg in [ILPR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, DMACR] {
            u.write(reg, 4, 0xffff_ffff, &mut no_emit).unwrap();
        }
        u.write(DR, 4, 0x1b, &mut no_emit).unwrap(); // inside an escape
        u.push_rx(1);
        u.reset();
        let mut fresh = Pl011::new();
        for reg in (0..0x50).step_by(4).chain((0xfe0..0x1000).step_by(4)) {
            assert_eq!(u.read(reg, 4), fresh.read(reg, 4), "reg {reg:#x}");
        }
        // The escape filter was reset too: 'x' is printed, not swallowed.
        let mut s = Sink::default();
        s.put(&mut u, b"x\n");
        assert_eq!(s.0, [b"x".to_vec()]);
    }

    #[test]
    fn rxfe_and_rxff_follow_fifo_level() {
        let mut u = Pl011::new();
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), FR_RXFE);
        u.push_rx(1);
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), 0);
        for i in 1..RX_FIFO_DEPTH as u8 {
            u.push_rx(i);
        }
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), FR_RXFF);
        u.read(DR, 4).unwrap();
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), 0);
        assert_ne!(fr(&mut u) & FR_TXFE, 0, "TX side still empty");
    }

    #[test]
    fn only_reads_covering_dr_low_byte_pop() {
        let mut u = Pl011::new();
        u.push_rx(b'x');
        u.push_rx(b'y');
        // Upper DR lanes and RSR: no character consumed.
        assert_eq!(u.read(DR + 1, 1).unwrap(), 0);
        assert_eq!(u.read(DR + 2, 2).unwrap(), 0);
        assert_eq!(u.read(RSR_ECR, 4).unwrap(), 0);
        // A byte read and a 64-bit read each pop exactly one.
        assert_eq!(u.read(DR, 1).unwrap(), u64::from(b'x'));
        assert_eq!(u.read(DR, 8).unwrap(), u64::from(b'y'));
        assert_eq!(fr(&mut u) & FR_RXFE, FR_RXFE);
    }

    #[test]
    fn rx_data_raises_rxris_and_rtris_until_drained() {
        let mut u = Pl011::new();
        assert_eq!(ris(&mut u), TXRIS);
        u.push_rx(b'a');
        u.push_rx(b'b');
        assert_eq!(ris(&mut u), TXRIS | RXRIS | RTRIS);
        u.read(DR, 4).unwrap();
        assert_eq!(ris(&mut u), TXRIS | RXRIS | RTRIS, "one byte left");
        u.read(DR, 4).unwrap();
        assert_eq!(ris(&mut u), TXRIS);
    }

    #[test]
    fn irq_level_follows_imsc_and_rx_data() {
        let mut u = Pl011::new();
        assert!(!u.irq_level(), "all masked at reset");
        u.write(IMSC, 4, u64::from(RXRIS | RTRIS), &mut no_emit)
            .unwrap();
        assert!(!u.irq_level(), "TXRIS is masked, no data");
        u.push_rx(b'k');
        assert!(u.irq_level());
        assert_eq!(u.read(MIS, 4).unwrap(), u64::from(RXRIS | RTRIS));
        u.write(IMSC, 4, 0, &mut no_emit).unwrap();
        assert!(!u.irq_level(), "masking drops the line");
        u.write(IMSC, 4, u64::from(RTRIS), &mut no_emit).unwrap();
        assert!(u.irq_level(), "timeout alone is enough");
        u.read(DR, 4).unwrap();
        assert!(!u.irq_level(), "draining drops the line");
    }

    #[test]
    fn irq_level_follows_tx_interrupt() {
        let mut u = Pl011::new();
        u.write(IMSC, 4, TXRIS.into(), &mut no_emit).unwrap();
        assert!(u.irq_level());
        u.write(ICR, 4, TXRIS.into(), &mut no_emit).unwrap();
        assert!(!u.irq_level());
        u.write(DR, 4, u64::from(b'a'), &mut no_emit).unwrap();
        assert!(u.irq_level(), "transmit re-raises TXRIS");
    }

    #[test]
    fn icr_cannot_clear_rx_interrupts_while_data_remains() {
        let mut u = Pl011::new();
        u.write(IMSC, 4, u64::from(RXRIS | RTRIS | TXRIS), &mut no_emit)
            .unwrap();
        u.push_rx(b'z');
        u.write(ICR, 4, 0x7ff, &mut no_emit).unwrap();
        // TX stays cleared (latched); RX re-asserts because data is present.
        assert_eq!(ris(&mut u), RXRIS | RTRIS);
        assert!(u.irq_level());
        u.read(DR, 4).unwrap();
        assert_eq!(ris(&mut u), 0);
        assert!(!u.irq_level());
        // New data raises RX again without any ICR interaction.
        u.push_rx(b'w');
        assert_eq!(ris(&mut u), RXRIS | RTRIS);
    }

    #[test]
    fn reset_empties_rx_fifo() {
        let mut u = Pl011::new();
        for i in 0..RX_FIFO_DEPTH as u8 {
            u.push_rx(i);
        }
        u.write(IMSC, 4, u64::from(RXRIS), &mut no_emit).unwrap();
        u.reset();
        assert_eq!(fr(&mut u) & (FR_RXFE | FR_RXFF), FR_RXFE);
        assert_eq!(u.read(DR, 4).unwrap(), 0);
        assert_eq!(ris(&mut u), TXRIS);
        assert!(!u.irq_level());
        assert!(u.push_rx(7));
        assert_eq!(u.read(DR, 4).unwrap(), 7);
    }
}
