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

/// Bytes `transmit` keeps in the line buffer as they are; every other one
/// that reaches the buffer becomes '.'.
fn printable(byte: u8) -> bool {
    matches!(byte, b'\t' | 0x20..=0x7e)
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
        let byte = if printable(byte) { byte } else { b'.' };
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

// Snapshot encoding. Layout, integers little-endian:
//   version u8 (STATE_VERSION)
//   UARTILPR, UARTIBRD, UARTFBRD, UARTLCR_H, UARTCR, UARTIFLS, UARTIMSC,
//     the latched UARTRIS bits, UARTDMACR: u32 each
//   rx_head u32, rx_len u32, the whole rx ring [u8; RX_RING_SIZE]
//   len u32, the whole line buffer [u8; LINE_MAX]
//   escape-filter state u8 (0 none, 1 after ESC, 2 inside CSI)
// The arrays are stored verbatim, stale bytes included, so an accepted
// state saves back to the same bytes.

/// Format version written first by [`Pl011::save_state`].
const STATE_VERSION: u8 = 1;

/// Why [`Pl011::restore_state`] refused a saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Fewer than [`Pl011::STATE_BYTES`] bytes.
    Truncated { len: usize },
    /// More than [`Pl011::STATE_BYTES`] bytes.
    TooLong { len: usize },
    /// A format version this code does not read.
    Version(u8),
    /// A register has bits set that the PL011 does not implement (for the
    /// latched UARTRIS bits: anything but TXRIS).
    Register { name: &'static str, value: u32 },
    /// The ring's head index lies outside the ring.
    RxHead(u32),
    /// More received bytes than the ring holds.
    RxLen(u32),
    /// The partial line fills the buffer or more; a full buffer is always
    /// emitted at once, so only shorter ones exist.
    LineLen(u32),
    /// A byte of the partial line that the output filter never lets
    /// through (a control character, DEL or an 8-bit byte).
    LineByte { at: usize, byte: u8 },
    /// An unknown escape-filter state.
    Escape(u8),
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Truncated { len } => write!(
                f,
                "UART state truncated ({len} of {} bytes)",
                Pl011::STATE_BYTES
            ),
            Self::TooLong { len } => write!(
                f,
                "UART state too long ({len} bytes, expected {})",
                Pl011::STATE_BYTES
            ),
            Self::Version(v) => write!(
                f,
                "UART state format version {v} is not supported (expected {STATE_VERSION})"
            ),
            Self::Register { name, value } => write!(
                f,
                "UART register {name} value {value:#x} has unimplemented bits set"
            ),
            Self::RxHead(h) => write!(f, "UART rx head {h} is outside the ring's {RX_RING_SIZE}"),
            Self::RxLen(n) => write!(f, "UART rx length {n} exceeds the ring's {RX_RING_SIZE}"),
            Self::LineLen(n) => write!(
                f,
                "UART line length {n} is not below the line buffer's {LINE_MAX}"
            ),
            Self::LineByte { at, byte } => {
                write!(f, "UART line byte {at} ({byte:#04x}) is not printable text")
            }
            Self::Escape(e) => write!(f, "UART escape-filter state {e} is not valid"),
        }
    }
}

impl core::error::Error for StateError {}

impl Escape {
    fn to_byte(self) -> u8 {
        match self {
            Escape::None => 0,
            Escape::Start => 1,
            Escape::Csi => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Escape::None),
            1 => Some(Escape::Start),
            2 => Some(Escape::Csi),
            _ => None,
        }
    }
}

/// Writes a saved state front to back.
struct Put<'a>(&'a mut [u8]);

impl Put<'_> {
    fn bytes(&mut self, src: &[u8]) {
        let rest = core::mem::take(&mut self.0);
        // The layout is fixed and the buffer sized for it, so this always
        // fits; `save_state`'s debug assertion checks the sum.
        if let Some((dst, rest)) = rest.split_at_mut_checked(src.len()) {
            dst.copy_from_slice(src);
            self.0 = rest;
        }
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }
}

/// Reads a saved state front to back. `restore_state` checks the total
/// length first, so running short here only guards against a layout slip.
struct Take<'a> {
    rest: &'a [u8],
    len: usize,
}

impl<'a> Take<'a> {
    fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], StateError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(StateError::Truncated { len: self.len })?;
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        self.array::<1>().map(|&[b]| b)
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        self.array::<4>().map(|b| u32::from_le_bytes(*b))
    }

    /// A register value, refused if bits outside `width` are set.
    fn reg(&mut self, name: &'static str, width: u32) -> Result<u32, StateError> {
        let value = self.u32()?;
        if value & !width != 0 {
            return Err(StateError::Register { name, value });
        }
        Ok(value)
    }
}

/// `n` as an index if it is below `limit`.
fn below(n: u32, limit: usize) -> Option<usize> {
    usize::try_from(n).ok().filter(|&i| i < limit)
}

impl Pl011 {
    /// Size of a saved state (see the layout above [`STATE_VERSION`]).
    pub const STATE_BYTES: usize = 1 + 9 * 4 + 2 * 4 + RX_RING_SIZE + 4 + LINE_MAX + 1;

    /// Encode the complete model state into `out`. The buffer is the
    /// caller's so that the 4 KiB copy need not live on the (EL2) stack.
    pub fn save_state(&self, out: &mut [u8; Self::STATE_BYTES]) {
        // Destructured so that a new field fails to compile until it is
        // saved here and restored below.
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
            rx,
            rx_head,
            rx_len,
            line,
            len,
            esc,
        } = self;
        let mut put = Put(out);
        put.bytes(&[STATE_VERSION]);
        for reg in [ilpr, ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr] {
            put.u32(*reg);
        }
        // All three fit: rx_head < RX_RING_SIZE, rx_len <= RX_RING_SIZE and
        // len < LINE_MAX, far below u32::MAX.
        put.u32(*rx_head as u32);
        put.u32(*rx_len as u32);
        put.bytes(rx);
        put.u32(*len as u32);
        put.bytes(line);
        put.bytes(&[esc.to_byte()]);
        debug_assert!(put.0.is_empty(), "STATE_BYTES does not match the layout");
    }

    /// Replace the model state with one saved by [`Pl011::save_state`].
    ///
    /// Every field is checked (exact length, version, register widths, ring
    /// indices, line length and text, escape state) before anything is
    /// written, so on error `self` is unchanged, and on success every later
    /// operation behaves as on a UART that reached that state by itself.
    /// The state is copied in place, without a temporary `Pl011` on the
    /// stack.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let len = bytes.len();
        if len < Self::STATE_BYTES {
            return Err(StateError::Truncated { len });
        }
        if len > Self::STATE_BYTES {
            return Err(StateError::TooLong { len });
        }
        let mut take = Take { rest: bytes, len };
        let version = take.u8()?;
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        let new_ilpr = take.reg("UARTILPR", ILPR_MASK)?;
        let new_ibrd = take.reg("UARTIBRD", IBRD_MASK)?;
        let new_fbrd = take.reg("UARTFBRD", FBRD_MASK)?;
        let new_lcr_h = take.reg("UARTLCR_H", LCR_H_MASK)?;
        let new_cr = take.reg("UARTCR", CR_MASK)?;
        let new_ifls = take.reg("UARTIFLS", IFLS_MASK)?;
        let new_imsc = take.reg("UARTIMSC", INT_MASK)?;
        let new_ris = take.reg("UARTRIS", TXRIS)?;
        let new_dmacr = take.reg("UARTDMACR", DMACR_MASK)?;
        let raw = take.u32()?;
        let new_rx_head = below(raw, RX_RING_SIZE).ok_or(StateError::RxHead(raw))?;
        let raw = take.u32()?;
        let new_rx_len = below(raw, RX_RING_SIZE + 1).ok_or(StateError::RxLen(raw))?;
        let new_rx = take.array::<RX_RING_SIZE>()?;
        let raw = take.u32()?;
        let new_len = below(raw, LINE_MAX).ok_or(StateError::LineLen(raw))?;
        let new_line = take.array::<LINE_MAX>()?;
        // The live part goes to the console; the rest is never read.
        if let Some((at, &byte)) = new_line
            .iter()
            .take(new_len)
            .enumerate()
            .find(|&(_, &b)| !printable(b))
        {
            return Err(StateError::LineByte { at, byte });
        }
        let raw = take.u8()?;
        let new_esc = Escape::from_byte(raw).ok_or(StateError::Escape(raw))?;

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
            rx,
            rx_head,
            rx_len,
            line,
            len,
            esc,
        } = self;
        *ilpr = new_ilpr;
        *ibrd = new_ibrd;
        *fbrd = new_fbrd;
        *lcr_h = new_lcr_h;
        *cr = new_cr;
        *ifls = new_ifls;
        *imsc = new_imsc;
        *ris = new_ris;
        *dmacr = new_dmacr;
        rx.copy_from_slice(new_rx);
        *rx_head = new_rx_head;
        *rx_len = new_rx_len;
        line.copy_from_slice(new_line);
        *len = new_len;
        *esc = new_esc;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;
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

    // Offsets into a saved state, following the layout comment.
    const AT_RX_HEAD: usize = 1 + 9 * 4;
    const AT_RX_LEN: usize = AT_RX_HEAD + 4;
    const AT_RX: usize = AT_RX_LEN + 4;
    const AT_LEN: usize = AT_RX + RX_RING_SIZE;
    const AT_LINE: usize = AT_LEN + 4;
    const AT_ESC: usize = AT_LINE + LINE_MAX;

    const STATE_REGS: [(&str, u32); 9] = [
        ("UARTILPR", ILPR_MASK),
        ("UARTIBRD", IBRD_MASK),
        ("UARTFBRD", FBRD_MASK),
        ("UARTLCR_H", LCR_H_MASK),
        ("UARTCR", CR_MASK),
        ("UARTIFLS", IFLS_MASK),
        ("UARTIMSC", INT_MASK),
        ("UARTRIS", TXRIS),
        ("UARTDMACR", DMACR_MASK),
    ];

    fn saved(u: &Pl011) -> Vec<u8> {
        let mut buf = [0u8; Pl011::STATE_BYTES];
        u.save_state(&mut buf);
        buf.to_vec()
    }

    fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// A UART mid-session: programmed by a driver, its ring wrapped and
    /// partly read, a partial line transmitted and then `tail` (e.g. an
    /// unfinished escape sequence), the TX interrupt acknowledged.
    fn busy(seed: usize, tail: &[u8]) -> Pl011 {
        let mut u = Pl011::new();
        for (reg, val) in [
            (IBRD, 0x27),
            (FBRD, 0x04),
            (LCR_H, 0x70),
            (IFLS, 0x09),
            (ILPR, 0x11),
            (DMACR, 0x2),
            (IMSC, u64::from(RXRIS | RTRIS)),
            (CR, 0x301),
        ] {
            u.write(reg, 4, val, &mut no_emit).unwrap();
        }
        for i in 0..RX_RING_SIZE {
            assert!(u.push_rx(pattern(seed + i)));
        }
        for _ in 0..100 {
            u.read(DR, 4).unwrap();
        }
        for i in 0..60 {
            assert!(u.push_rx(pattern(seed + RX_RING_SIZE + i)));
        }
        let mut s = Sink::default();
        s.put(&mut u, b"[    0.000000] Booting\r\nlogin: ");
        s.put(&mut u, tail);
        u.write(ICR, 4, u64::from(TXRIS), &mut no_emit).unwrap();
        u
    }

    /// Appends every register (DR aside), the irq level and the ring
    /// counters.
    fn observe(u: &mut Pl011, seen: &mut Vec<u64>) {
        for reg in (4..0x50).step_by(4).chain((0xfe0..SIZE).step_by(4)) {
            seen.push(u.read(reg, 4).unwrap());
        }
        seen.push(u64::from(u.irq_level()));
        seen.push(u.rx_pending() as u64);
        seen.push(u.rx_room() as u64);
    }

    /// A stretch of further use; returns what the guest read and the lines
    /// that reached the console.
    fn drive(u: &mut Pl011) -> (Vec<u64>, Vec<Vec<u8>>) {
        let mut seen = Vec::new();
        let mut s = Sink::default();
        observe(u, &mut seen);
        s.put(u, b"m]$ ls\n");
        observe(u, &mut seen);
        for _ in 0..50 {
            seen.push(u.read(DR, 4).unwrap());
            seen.push(u64::from(u.irq_level()));
        }
        for i in 0..200 {
            seen.push(u64::from(u.push_rx(pattern(50_000 + i))));
        }
        u.write(ICR, 4, 0x7ff, &mut no_emit).unwrap();
        observe(u, &mut seen);
        while u.rx_pending() > 0 {
            seen.push(u.read(DR, 4).unwrap());
            seen.push(u64::from(u.irq_level()));
        }
        seen.push(u.read(DR, 4).unwrap());
        observe(u, &mut seen);
        s.put(u, &[b'y'; LINE_MAX + 44]);
        s.flush(u);
        observe(u, &mut seen);
        u.reset();
        observe(u, &mut seen);
        (seen, s.0)
    }

    #[test]
    fn restored_uart_behaves_like_the_original() {
        let cases: [(&[u8], &[u8]); 3] = [
            (b"", b"login: m]$ ls"),
            (b"\x1b", b"login: ]$ ls"),
            (b"\x1b[1;3", b"login: ]$ ls"),
        ];
        for (tail, first_line) in cases {
            let mut orig = busy(0, tail);
            let bytes = saved(&orig);
            assert_eq!(bytes[0], 1, "format version");
            // The target starts elsewhere, so every field must be replaced.
            let mut copy = busy(777, b"other text");
            copy.write(IMSC, 4, 0x7ff, &mut no_emit).unwrap();
            copy.write(DR, 4, u64::from(b'q'), &mut no_emit).unwrap();
            copy.restore_state(&bytes).unwrap();
            assert_eq!(saved(&copy), bytes);
            let (seen, lines) = drive(&mut orig);
            assert_eq!(drive(&mut copy), (seen, lines.clone()), "tail {tail:?}");
            // The escape filter's state came along.
            assert_eq!(lines[0], first_line, "tail {tail:?}");
        }
    }

    #[test]
    fn restoring_a_fresh_state_matches_a_new_uart() {
        let mut u = busy(3, b"\x1b[");
        u.restore_state(&saved(&Pl011::new())).unwrap();
        assert_eq!(drive(&mut u), drive(&mut Pl011::new()));
    }

    #[test]
    fn truncated_or_overlong_state_is_refused_and_changes_nothing() {
        let bytes = saved(&busy(0, b"\x1b["));
        let mut target = busy(99, b"x");
        let before = saved(&target);
        for len in 0..bytes.len() {
            assert_eq!(
                target.restore_state(&bytes[..len]),
                Err(StateError::Truncated { len })
            );
            assert_eq!(saved(&target), before, "after {len} bytes");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            target.restore_state(&long),
            Err(StateError::TooLong {
                len: Pl011::STATE_BYTES + 1
            })
        );
        assert_eq!(saved(&target), before);
    }

    #[test]
    fn invalid_fields_are_refused_and_change_nothing() {
        let good = saved(&busy(0, b""));
        let with = |at: usize, value: u32| {
            let mut b = good.clone();
            set_u32(&mut b, at, value);
            b
        };
        let with_byte = |at: usize, value: u8| {
            let mut b = good.clone();
            b[at] = value;
            b
        };
        let mut cases = Vec::new();
        for v in [0, 2, 0xff] {
            cases.push((with_byte(0, v), StateError::Version(v)));
        }
        for (i, (name, width)) in STATE_REGS.into_iter().enumerate() {
            // Every width is a run of low bits, so width + 1 sets the first
            // bit above it (for TXRIS alone, bit 0 below it).
            for value in [width + 1, width | 1 << 31, u32::MAX] {
                cases.push((with(1 + 4 * i, value), StateError::Register { name, value }));
            }
        }
        for v in [RX_RING_SIZE as u32, 9000, u32::MAX] {
            cases.push((with(AT_RX_HEAD, v), StateError::RxHead(v)));
        }
        for v in [RX_RING_SIZE as u32 + 1, 9000, u32::MAX] {
            cases.push((with(AT_RX_LEN, v), StateError::RxLen(v)));
        }
        for v in [LINE_MAX as u32, LINE_MAX as u32 + 1, u32::MAX] {
            cases.push((with(AT_LEN, v), StateError::LineLen(v)));
        }
        // busy() left "login: " in the line buffer.
        for (at, byte) in [(0, 0x1b), (3, b'\r'), (6, 0x7f), (6, 0x80)] {
            cases.push((
                with_byte(AT_LINE + at, byte),
                StateError::LineByte { at, byte },
            ));
        }
        for v in [3, 0x80, 0xff] {
            cases.push((with_byte(AT_ESC, v), StateError::Escape(v)));
        }
        let mut target = busy(5, b"\x1b");
        let before = saved(&target);
        for (bytes, want) in cases {
            assert_eq!(target.restore_state(&bytes), Err(want));
            assert_eq!(saved(&target), before, "{want}");
        }
        // Beyond the live part the line buffer is never read: any bytes do.
        target.restore_state(&with_byte(AT_LINE + 7, 0x1b)).unwrap();
    }

    #[test]
    fn state_errors_explain_themselves() {
        for (err, text) in [
            (
                StateError::Truncated { len: 3 },
                "UART state truncated (3 of 4402 bytes)",
            ),
            (
                StateError::TooLong { len: 4403 },
                "UART state too long (4403 bytes, expected 4402)",
            ),
            (
                StateError::Version(7),
                "UART state format version 7 is not supported (expected 1)",
            ),
            (
                StateError::Register {
                    name: "UARTCR",
                    value: 0x1_0000,
                },
                "UART register UARTCR value 0x10000 has unimplemented bits set",
            ),
            (
                StateError::RxHead(4096),
                "UART rx head 4096 is outside the ring's 4096",
            ),
            (
                StateError::RxLen(9000),
                "UART rx length 9000 exceeds the ring's 4096",
            ),
            (
                StateError::LineLen(256),
                "UART line length 256 is not below the line buffer's 256",
            ),
            (
                StateError::LineByte { at: 4, byte: 0x1b },
                "UART line byte 4 (0x1b) is not printable text",
            ),
            (
                StateError::Escape(3),
                "UART escape-filter state 3 is not valid",
            ),
        ] {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn extreme_valid_states_work() {
        // Every register at full width, a full ring whose oldest byte is
        // in the last slot, a line one byte short of full.
        let mut b = saved(&Pl011::new());
        for (i, (_, width)) in STATE_REGS.into_iter().enumerate() {
            set_u32(&mut b, 1 + 4 * i, width);
        }
        set_u32(&mut b, AT_RX_HEAD, RX_RING_SIZE as u32 - 1);
        set_u32(&mut b, AT_RX_LEN, RX_RING_SIZE as u32);
        for i in 0..RX_RING_SIZE {
            b[AT_RX + i] = pattern(i);
        }
        set_u32(&mut b, AT_LEN, LINE_MAX as u32 - 1);
        b[AT_LINE..AT_LINE + LINE_MAX].fill(b'a');
        let mut u = Pl011::new();
        u.restore_state(&b).unwrap();
        for (reg, width) in [
            (ILPR, ILPR_MASK),
            (IBRD, IBRD_MASK),
            (FBRD, FBRD_MASK),
            (LCR_H, LCR_H_MASK),
            (CR, CR_MASK),
            (IFLS, IFLS_MASK),
            (IMSC, INT_MASK),
            (DMACR, DMACR_MASK),
        ] {
            assert_eq!(u.read(reg, 4).unwrap(), u64::from(width), "reg {reg:#x}");
        }
        assert_eq!(ris(&mut u), TXRIS | RXRIS | RTRIS);
        assert_eq!(fr(&mut u) & FR_RXFF, FR_RXFF);
        assert_eq!(u.rx_room(), 0);
        assert!(!u.push_rx(1));
        assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(RX_RING_SIZE - 1)));
        for i in 0..RX_RING_SIZE - 1 {
            assert_eq!(u.read(DR, 4).unwrap(), u64::from(pattern(i)), "byte {i}");
        }
        assert_eq!(u.read(DR, 4).unwrap(), 0);
        let mut s = Sink::default();
        s.put(&mut u, b"bc");
        let mut full = std::vec![b'a'; LINE_MAX - 1];
        full.push(b'b');
        assert_eq!(s.0, [full]);
        s.flush(&mut u);
        assert_eq!(s.0[1], b"c");
    }

    /// xorshift64: reproducible pseudo-random numbers.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Uses `u` in every way the guest and the host can, checking that it
    /// stays consistent and only lets text through.
    fn exercise(u: &mut Pl011) {
        let mut emit = |line: &[u8]| {
            assert!(line.len() <= LINE_MAX);
            assert!(line.iter().all(|&b| printable(b)), "{line:?}");
        };
        for reg in (0..SIZE).step_by(4) {
            u.read(reg, 4).unwrap();
        }
        let pending = u.rx_pending();
        assert!(pending <= RX_RING_SIZE);
        assert_eq!(u.rx_room(), RX_RING_SIZE - pending);
        while u.push_rx(0x5a) {}
        assert_eq!(u.rx_pending(), RX_RING_SIZE);
        assert_eq!(fr(u) & FR_RXFF, FR_RXFF);
        for _ in 0..RX_RING_SIZE {
            u.read(DR, 4).unwrap();
            u.irq_level();
        }
        assert_eq!(u.rx_pending(), 0);
        assert_eq!(fr(u) & FR_RXFE, FR_RXFE);
        for &b in b"\x1b[0m\x1bXok\r\n".iter().chain(&[0x07; LINE_MAX + 3]) {
            u.write(DR, 4, u64::from(b), &mut emit).unwrap();
        }
        for reg in [ILPR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, ICR, DMACR] {
            u.write(reg, 4, u64::MAX, &mut emit).unwrap();
        }
        u.flush(&mut emit);
        let mut again = Pl011::new();
        again.restore_state(&saved(u)).unwrap();
        u.reset();
    }

    #[test]
    fn corrupted_states_never_panic() {
        let good = saved(&busy(1, b"\x1b[2"));
        let target = busy(2, b"\x1b");
        let before = saved(&target);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.below(4) {
                // Mostly the small fields, which is where the checks are.
                let at = match rng.below(4) {
                    0 => rng.below(Pl011::STATE_BYTES),
                    1 => rng.below(AT_RX),
                    2 => AT_LEN + rng.below(4),
                    _ => [AT_ESC, AT_LINE + rng.below(8)][rng.below(2)],
                };
                bytes[at] ^= (rng.next() as u8) | 1;
            }
            let mut u = target.clone();
            match u.restore_state(&bytes) {
                Ok(()) => {
                    accepted += 1;
                    assert_eq!(saved(&u), bytes, "round {round}");
                    exercise(&mut u);
                }
                Err(_) => {
                    refused += 1;
                    assert_eq!(saved(&u), before, "round {round}");
                }
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted}/{refused}");
    }
}
