//! Any access a guest makes to the virtual PL011 gets an answer, never a
//! panic, and no byte it sends reaches the console as a control character.

use bulkhead_devices::pl011::{Pl011, SIZE};

#[test]
fn random_accesses_never_panic_and_emit_only_printable_text() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut u = Pl011::new();
    for _ in 0..200_000 {
        let size = [1u8, 2, 4, 8, 0, 3, 16][(next() % 7) as usize];
        let off = if next().is_multiple_of(8) {
            next()
        } else {
            next() % (SIZE + 16)
        };
        let mut check = |line: &[u8]| {
            assert!(
                line.iter()
                    .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)),
                "control byte reached the console: {line:?}"
            );
        };
        match next() % 4 {
            0 => {
                let _ = u.read(off, size);
            }
            1 => {
                let _ = u.push_rx(next() as u8);
            }
            _ => {
                let _ = u.write(off, size, next(), &mut check);
            }
        }
        let _ = u.irq_level();
    }
}
