//! Inter-VM channels: arbitrary register accesses from both ends (any
//! offset, any size, any value), PCI configuration accesses through the
//! ECAM decoder (any offset, size, value), and VM starts and stops, in any
//! order.
//!
//! Checks against a shadow model: a ring raises exactly the peer's line and
//! counts once; reading ISR returns what was pending and lowers the line;
//! PEER follows the other end's start/stop; a start clears that end only;
//! reads fit their size; a BAR always reads back aligned to its size with
//! its flag bits clear; INTx is the doorbell line unless Interrupt Disable
//! is set, and the status bit shows the line regardless; absent functions
//! and other buses never decode to a device. A saved state (any bytes)
//! restored into the PCI face or the channel keeps every one of those
//! rules, and a save restores to exactly what was saved.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_channel::{command, ecam_decode, reg, Channel, PciFunction, STATUS_INTERRUPT};
use libfuzzer_sys::fuzz_target;

const SHM_SIZE: u64 = 0x1_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        end: u8,
        offset: u16,
        size: u8,
    },
    Write {
        end: u8,
        offset: u16,
        size: u8,
        value: u64,
    },
    Ring {
        end: bool,
    },
    Up {
        end: bool,
        up: bool,
    },
    ConfigRead {
        offset: u32,
        size: u8,
    },
    ConfigWrite {
        offset: u32,
        size: u8,
        value: u32,
    },
    PciReset,
    /// A snapshot's PCI state, as the stream brings it.
    PciRestore {
        state: [u8; PciFunction::STATE_BYTES],
    },
    /// Save the PCI state and one end's, then restore them.
    SaveRestore {
        end: bool,
    },
}

#[derive(Default)]
struct Shadow {
    isr: [bool; 2],
    count: [u32; 2],
    up: [bool; 2],
}

fn ring(c: &Channel, s: &mut Shadow, end: usize) {
    assert!(c.write(end, reg::DOORBELL, 4, 0));
    s.isr[end ^ 1] = true;
    s.count[end ^ 1] = s.count[end ^ 1].wrapping_add(1);
}

fuzz_target!(|ops: Vec<Op>| {
    let c = Channel::new(SHM_SIZE);
    let mut s = Shadow::default();
    let mut pci = PciFunction::new(0x1000_0000, 0x1010_0000, SHM_SIZE as u32);
    for op in ops.iter().take(512) {
        match *op {
            Op::Read { end, offset, size } => {
                let end = usize::from(end % 3);
                let offset = u64::from(offset % 0x1010);
                let v = c.read(end, offset, size);
                let valid = size == 4 && end < 2;
                if !valid {
                    assert_eq!(v, 0, "odd read answered {v:#x}");
                    continue;
                }
                assert!(v <= u64::from(u32::MAX));
                match offset {
                    reg::ID => assert_eq!(v, end as u64),
                    reg::ISR => {
                        assert_eq!(v != 0, s.isr[end], "ISR vs shadow");
                        s.isr[end] = false;
                    }
                    reg::PEER => assert_eq!(v != 0, s.up[end ^ 1]),
                    reg::SIZE => assert_eq!(v, SHM_SIZE),
                    reg::COUNT => assert_eq!(v, u64::from(s.count[end])),
                    _ => assert_eq!(v, 0),
                }
            }
            Op::Write {
                end,
                offset,
                size,
                value,
            } => {
                let end = usize::from(end % 3);
                let offset = u64::from(offset % 0x1010);
                let rang = c.write(end, offset, size, value);
                let expect = size == 4 && end < 2 && offset == reg::DOORBELL;
                assert_eq!(rang, expect);
                if rang {
                    s.isr[end ^ 1] = true;
                    s.count[end ^ 1] = s.count[end ^ 1].wrapping_add(1);
                }
            }
            Op::Ring { end } => ring(&c, &mut s, usize::from(end)),
            Op::Up { end, up } => {
                let end = usize::from(end);
                c.set_up(end, up);
                s.up[end] = up;
                if up {
                    s.isr[end] = false;
                    s.count[end] = 0;
                }
            }
            Op::ConfigRead { offset, size } => {
                let doorbell = c.line(0);
                match ecam_decode(u64::from(offset)) {
                    None => assert!(offset >= 1 << 20, "bus 0 must decode"),
                    Some(a) => {
                        assert!(a.device < 32 && a.function < 8 && a.reg < 0x1000);
                        let v = pci.config_read(a.reg, size, doorbell);
                        match size {
                            1 => assert!(v <= 0xff),
                            2 => assert!(v <= 0xffff),
                            4 => {}
                            _ => assert_eq!(v, 0),
                        }
                    }
                }
            }
            Op::ConfigWrite {
                offset,
                size,
                value,
            } => {
                if let Some(a) = ecam_decode(u64::from(offset)) {
                    pci.config_write(a.reg, size, value);
                }
            }
            Op::PciReset => pci.reset(),
            Op::PciRestore { state } => {
                let before = pci.clone();
                if pci.restore_state(&state).is_ok() {
                    assert_eq!(pci.save_state(), state, "a taken state saves back as it came");
                } else {
                    assert_eq!(pci, before, "a refused state changed the function");
                }
            }
            Op::SaveRestore { end } => {
                let end = usize::from(end);
                let saved = pci.save_state();
                let mut back = PciFunction::new(0x1000_0000, 0x1010_0000, SHM_SIZE as u32);
                back.restore_state(&saved).expect("a saved state restores");
                assert_eq!(back, pci);
                let (isr, count) = c.end_state(end);
                c.restore_end(end, isr, count);
                assert_eq!(c.end_state(end), (isr, count));
                s.up[end] = true;
            }
        }
        // Lines follow the shadow, and INTx follows the line and the mask.
        for end in 0..2 {
            assert_eq!(c.line(end), s.isr[end], "line of end {end}");
        }
        let doorbell = c.line(0);
        let cmd = pci.config_read(0x04, 2, doorbell) as u16;
        let masked = cmd & command::INTX_DISABLE != 0;
        assert_eq!(pci.intx(doorbell), doorbell && !masked);
        let status = pci.config_read(0x06, 2, doorbell) as u16;
        assert_eq!(status & STATUS_INTERRUPT != 0, doorbell);
        assert_eq!(
            cmd & !(command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE),
            0,
            "only modelled command bits stick"
        );
        let bar0 = pci.config_read(0x10, 4, doorbell);
        let bar2 = pci.config_read(0x18, 4, doorbell);
        assert_eq!(bar0 & 0xfff, 0, "BAR 0 aligned, flags clear");
        assert_eq!(
            bar2 & (SHM_SIZE as u32 - 1),
            0,
            "BAR 2 aligned, flags clear"
        );
        assert_eq!(pci.config_read(0x00, 4, doorbell), 0x1110_1af4);
    }
});
