//! Whatever a guest writes or reads, wherever and however wide, the model
//! answers without panicking (a panic at EL2 would take every VM down).

use bulkhead_vgic::{VGic, GICD_SIZE, GICR_FRAME_SIZE};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
}

#[test]
fn random_register_traffic_never_panics() {
    for seed in 0..8u64 {
        let mut r = Lcg(seed);
        let mut g = VGic::new(1 + (seed % 4) as u16, 96);
        let redist = GICR_FRAME_SIZE * g.n_vcpus() as u64;
        let mut lrs = [0u64; 4];
        for _ in 0..50_000 {
            let size = [1u8, 2, 4, 8, 3, 0, 16][(r.next() % 7) as usize];
            // Mostly in range, sometimes far outside.
            let off = match r.next() % 4 {
                0 => r.next(),
                _ => r.next() % (GICD_SIZE + 0x100),
            };
            let value = r.next() | (r.next() << 53);
            match r.next() % 7 {
                0 => {
                    let _ = g.dist_read(off, size);
                }
                1 => {
                    let _ = g.dist_write(off, size, value);
                }
                2 => {
                    let _ = g.redist_read(off % (redist + 0x100), size);
                }
                3 => {
                    let _ = g.redist_write(off % (redist + 0x100), size, value);
                }
                4 => {
                    let _ = g.sgi((r.next() % 9) as u16, value);
                }
                5 => {
                    let _ = g.set_pending((r.next() % 9) as u16, (r.next() % 1100) as u32);
                }
                _ => {
                    let v = (r.next() % 9) as u16;
                    // The guest also scribbles on its list registers' state
                    // through ICV accesses; model that with random states.
                    for lr in lrs.iter_mut() {
                        if r.next().is_multiple_of(4) {
                            *lr = (*lr & !(3 << 62)) | ((r.next() % 4) << 62);
                        }
                    }
                    let _ = g.flush(v, &mut lrs);
                }
            }
        }
    }
}
