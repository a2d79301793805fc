//! Any register values a guest passes to HVC/SMC get an answer from the
//! PSCI state machine, never a panic.

use bulkhead_psci::{decode, GuestRam, PowerState};
use bulkhead_types::VcpuId;

#[test]
fn random_calls_never_panic() {
    let mut x: u64 = 0x0dd0_feed_cafe_f00d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ps = PowerState::new(4);
    ps.boot(0x4008_0000, 0);
    let ram = GuestRam {
        base: 0x4000_0000,
        size: 16 << 20,
    };
    for _ in 0..300_000 {
        // Mostly real PSCI/SMCCC function ids, sometimes anything.
        let fid = match next() % 4 {
            0 => next(),
            1 => 0x8400_0000 | (next() % 0x20),
            2 => 0xC400_0000 | (next() % 0x20),
            _ => 0xC600_0000 | (next() % 4),
        };
        let call = decode(fid, next() % 40, next(), next());
        let _ = ps.handle(call, VcpuId((next() % 10) as u16), ram, next());
        let _ = ps.take_start(VcpuId((next() % 10) as u16));
    }
}
