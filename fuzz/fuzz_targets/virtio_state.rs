//! A virtio device's saved state (`bulkhead_virtio::state`), which a
//! restore or an incoming migration takes from the network, restored into
//! fresh block and net devices over 64 KiB of guest RAM at IPA 0x4000_0000.
//!
//! The input's first byte picks what the bytes are laid over: the raw
//! input alone, or the state of a device that a driver really brought up
//! (queues anywhere in RAM, `Driver` layouts) with the rest of the input
//! XORed over it, so the fuzzer starts from states that almost check out.
//!
//! Checks that nothing panics; that a refused state leaves the device as
//! it was (not live, saving what a fresh device saves); that a state taken
//! saves back to the same bytes (nothing is read that is not kept, nothing
//! kept that was not checked); and that a device with a taken state then
//! serves a notification without panicking (its queue's areas are in RAM,
//! as `Layout::check` promised).
#![no_main]

use bulkhead_virtio::blk::{self, Blk, MemDisk, Slice};
use bulkhead_virtio::mmio::reg;
use bulkhead_virtio::net::{self, Net};
use bulkhead_virtio::queue::driver::Driver;
use bulkhead_virtio::SliceMem;
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 7];

fn slice() -> Slice {
    Slice {
        start: 8,
        sectors: 32,
        read_only: false,
        serial: [0; blk::ID_BYTES],
        extras: blk::Extras::default(),
    }
}

/// `base` with `delta` XORed over its front (and `delta`'s excess
/// appended).
fn overlay(base: &[u8], delta: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, &d) in delta.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= d,
            None => out.push(d),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut ram = vec![0u8; RAM];
    let mem = SliceMem::new(BASE, &mut ram);
    let at = u64::from(mode >> 2) * 0x400;
    let (blk_bytes, net_bytes) = match mode & 3 {
        0 => (rest.to_vec(), rest.to_vec()),
        _ => {
            let mut b = Blk::new(slice());
            let d = Driver::new(BASE + at, 16);
            blk::driver_init(&mut b, d.layout, &mem);
            let mut n = Net::new(MAC);
            let rx = Driver::new(BASE + at + 0x4000, 16);
            let tx = Driver::new(BASE + at + 0x6000, 16);
            net::driver_init(&mut n, rx.layout, tx.layout, &mem);
            let blk_state = b.save_state().expect("a fresh device is quiet");
            (overlay(&blk_state, rest), overlay(&n.save_state(), rest))
        }
    };

    let mut b = Blk::new(slice());
    let fresh = b.save_state().expect("a fresh device is quiet");
    match b.restore_state(&blk_bytes, &mem) {
        Err(_) => {
            assert!(!b.transport.live());
            assert_eq!(
                b.save_state().unwrap(),
                fresh,
                "a refused state changed the device"
            );
        }
        Ok(()) => {
            assert_eq!(
                b.save_state().unwrap(),
                blk_bytes,
                "taken state saves back differently"
            );
            let mut disk = MemDisk {
                mem: &mem,
                data: vec![0; 64 * blk::SECTOR as usize],
                flushes: 0,
            };
            let _ = b.mmio_write(reg::QUEUE_NOTIFY, 4, 0, &mem, &mut disk);
        }
    }

    let mut n = Net::new(MAC);
    let fresh = n.save_state();
    match n.restore_state(&net_bytes, &mem) {
        Err(_) => {
            assert!(!n.transport.live());
            assert_eq!(n.save_state(), fresh, "a refused state changed the device");
        }
        Ok(()) => {
            assert_eq!(
                n.save_state(),
                net_bytes,
                "taken state saves back differently"
            );
            let frame = [0xffu8; 64];
            let _ = n.deliver(&mem, &frame, &bulkhead_virtio::offload::Offload::default());
            let _ = n.mmio_write(reg::QUEUE_NOTIFY, 4, 1, &mem);
            let mut buf = vec![0u8; bulkhead_virtio::offload::MAX_GSO_FRAME];
            let _ = n.pop_tx(&mem, &mut buf);
        }
    }
});
