//! Every ESR value decodes (a guest chooses which instruction traps), and
//! injection maths works for any guest PC, PSTATE and VBAR.

use bulkhead_exit::inject::{inject, Kind};
use bulkhead_exit::{decode, fault_ipa, Exit};

#[test]
fn any_syndrome_decodes_and_any_injection_computes() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if let Exit::DataAbort(d) = decode(x) {
            if let Some(a) = d.access {
                let _ = (a.load_value(x.rotate_left(7)), a.store_value(!x));
            }
        }
        let _ = fault_ipa(x, x.rotate_left(17));
        let kind = match x % 3 {
            0 => Kind::Undefined,
            1 => Kind::DataAbort { far: x },
            _ => Kind::InstructionAbort { far: !x },
        };
        let _ = inject(
            kind,
            x.rotate_left(3),
            x.rotate_right(11),
            x.rotate_left(29),
            x & 1 == 0,
        );
    }
}
