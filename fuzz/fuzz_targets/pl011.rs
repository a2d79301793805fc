//! The virtual PL011: arbitrary register accesses (any offset, any size,
//! any value) from the guest, interleaved with received bytes, flushes and
//! resets from the hypervisor.
//!
//! Checks that every access gets an answer (an error exactly for bad sizes
//! and accesses outside the 4 KiB frame), that reads fit their size, that
//! received bytes come out in order through a 4 KiB ring whose oldest 32
//! bytes are the receive FIFO (order, a full ring refusing bytes, the
//! UARTFR flags), that the interrupt line is UARTRIS & UARTIMSC, and that
//! nothing but printable text in lines of at most LINE_MAX bytes reaches
//! the console.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use bulkhead_devices::pl011::{DeviceError, Pl011, LINE_MAX, RX_FIFO_DEPTH, RX_RING_SIZE, SIZE};
use libfuzzer_sys::fuzz_target;

const DR: u64 = 0x000;
const FR: u64 = 0x018;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const FR_RXFE: u64 = 1 << 4;
const FR_RXFF: u64 = 1 << 6;
const FR_TXFE: u64 = 1 << 7;

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: Offset,
        size: u8,
    },
    Write {
        offset: Offset,
        size: u8,
        value: u64,
    },
    /// Text the guest prints: one UARTDR write per byte.
    Print(Vec<u8>),
    PushRx(Vec<u8>),
    Flush,
    Reset,
}

#[derive(Arbitrary, Debug)]
enum Offset {
    /// One of the registers (0x000..0x04c) or ID words (0xfe0..0x1000).
    Register(u8),
    /// Anywhere near the frame.
    Near(u16),
    Any(u64),
}

impl Offset {
    fn get(&self) -> u64 {
        match *self {
            Offset::Register(r) if r & 0x80 == 0 => u64::from(r % 0x50),
            Offset::Register(r) => 0xfe0 + u64::from(r % 0x20),
            Offset::Near(o) => u64::from(o) % (SIZE + 0x10),
            Offset::Any(o) => o,
        }
    }
}

/// Fails the run if `line` could drive the host terminal.
fn check_line(line: &[u8]) {
    assert!(line.len() <= LINE_MAX, "line of {} bytes", line.len());
    assert!(
        line.iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)),
        "control byte reached the console: {line:?}"
    );
}

fn expected_error(offset: u64, size: u8) -> Option<DeviceError> {
    if !matches!(size, 1 | 2 | 4 | 8) {
        Some(DeviceError::BadSize)
    } else if offset
        .checked_add(u64::from(size))
        .is_none_or(|end| end > SIZE)
    {
        Some(DeviceError::OutOfRange)
    } else {
        None
    }
}

struct World {
    uart: Pl011,
    /// What the receive ring (FIFO included) should hold.
    rx: VecDeque<u8>,
}

impl World {
    fn read(&mut self, offset: u64, size: u8) {
        let got = self.uart.read(offset, size);
        match expected_error(offset, size) {
            Some(e) => assert_eq!(got, Err(e)),
            None => {
                let value = got.expect("in-range read");
                if size < 8 {
                    assert_eq!(value >> (8 * u32::from(size)), 0, "{offset:#x}/{size}");
                }
                // Only a read that covers UARTDR[7:0] takes a character.
                if offset == DR {
                    let want = self.rx.pop_front().unwrap_or(0);
                    assert_eq!(value & 0xff, u64::from(want), "UARTDR");
                }
            }
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        let got = self.uart.write(offset, size, value, &mut check_line);
        assert_eq!(got.err(), expected_error(offset, size));
    }

    fn push(&mut self, byte: u8) {
        let accepted = self.uart.push_rx(byte);
        assert_eq!(accepted, self.rx.len() < RX_RING_SIZE);
        if accepted {
            self.rx.push_back(byte);
        }
    }

    /// Side-effect-free reads agree with the shadow FIFO and each other.
    fn check(&mut self) {
        let fr = self.uart.read(FR, 4).expect("UARTFR");
        assert_ne!(fr & FR_TXFE, 0, "the transmit FIFO is always empty");
        assert_eq!(fr & FR_RXFE != 0, self.rx.is_empty(), "RXFE");
        assert_eq!(fr & FR_RXFF != 0, self.rx.len() >= RX_FIFO_DEPTH, "RXFF");
        assert_eq!(self.uart.rx_pending(), self.rx.len());
        assert_eq!(self.uart.rx_room(), RX_RING_SIZE - self.rx.len());
        let ris = self.uart.read(RIS, 4).expect("UARTRIS");
        let imsc = self.uart.read(IMSC, 4).expect("UARTIMSC");
        let mis = self.uart.read(MIS, 4).expect("UARTMIS");
        assert_eq!(mis, ris & imsc);
        assert_eq!(self.uart.irq_level(), mis != 0);
        // Receive interrupts are level conditions of the FIFO.
        assert_eq!(ris & (1 << 4) != 0, !self.rx.is_empty(), "RXRIS");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World {
        uart: Pl011::new(),
        rx: VecDeque::new(),
    };
    w.check();
    for op in ops.iter().take(1024) {
        match op {
            Op::Read { offset, size } => w.read(offset.get(), *size),
            Op::Write {
                offset,
                size,
                value,
            } => w.write(offset.get(), *size, *value),
            Op::Print(text) => {
                for &b in text {
                    w.write(DR, 4, u64::from(b));
                }
            }
            Op::PushRx(bytes) => {
                for &b in bytes {
                    w.push(b);
                }
            }
            Op::Flush => w.uart.flush(&mut check_line),
            Op::Reset => {
                w.uart.reset();
                w.rx.clear();
            }
        }
        w.check();
    }
    w.uart.flush(&mut check_line);
});
