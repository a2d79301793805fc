//! Two VMs' virtio-net devices (`bulkhead_virtio::net::Net`) on one
//! learning switch (`bulkhead_virtio::switch::Switch`) with an uplink, as
//! the hypervisor wires them: port 0 the uplink, ports 1 and 2 the VMs.
//!
//! The input (`arbitrary`) brings both devices up with `net::driver_init`
//! on `queue::driver::Driver` layouts in each VM's own 64 KiB of RAM, then
//! runs up to 256 operations: a VM posts a receive buffer (any address,
//! length, direction) or queues a transmit chain (a header and a frame of
//! any bytes with any source and destination, whole or split, or a raw
//! descriptor), notifies its transmit queue, writes any register or any
//! RAM bytes; or a frame of any bytes arrives from the uplink. Transmitted
//! frames go through the switch and are delivered as the hypervisor
//! delivers them.
//!
//! Checks that nothing panics; that a frame leaving a VM's device is the
//! bytes its chain held after the 12-byte header, 14 to 1518 of them;
//! that the switch forwards nothing from a VM port whose source is not
//! that VM's MAC, nor anything from the uplink whose source is a VM's MAC;
//! that it never learns a VM's MAC on another port; that it never sends a
//! frame back out of the port it came from; and that a frame delivered to
//! a VM is in the receive chain the device used (as the descriptors in RAM
//! say, when its buffers do not overlap), after a header whose
//! `num_buffers` is 1, byte for byte.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_virtio::mmio::reg;
use bulkhead_virtio::net::{self, Delivery, Net, HDR_LEN, MAX_FRAME};
use bulkhead_virtio::queue::driver::Driver;
use bulkhead_virtio::switch::{Dest, Switch};
use bulkhead_virtio::{GuestMemory, SliceMem};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 64 << 10;
const MACS: [[u8; 6]; 2] = [[0x52, 0x54, 0, 0, 0, 0xa], [0x52, 0x54, 0, 0, 0, 0xb]];
const UPLINK: usize = 0;

#[derive(Arbitrary, Debug)]
enum Src {
    Own,
    Other,
    Any([u8; 6]),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// VM `vm` posts a receive buffer at offset `at` of its RAM.
    Post {
        vm: bool,
        at: u16,
        len: u16,
        write: bool,
    },
    /// VM `vm` queues a frame: header, then `body` with a destination and
    /// source, split after `split` bytes if non-zero.
    Send {
        vm: bool,
        dst: Option<[u8; 6]>,
        src: Src,
        body: Vec<u8>,
        split: u8,
    },
    /// A raw transmit descriptor.
    Raw {
        vm: bool,
        addr: u64,
        len: u32,
        flags: u16,
    },
    Notify {
        vm: bool,
    },
    Mmio {
        vm: bool,
        off: u16,
        value: u32,
    },
    Poke {
        vm: bool,
        at: u16,
        bytes: Vec<u8>,
    },
    /// A frame from the uplink.
    Uplink {
        frame: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

struct Vm<'a> {
    mem: SliceMem<'a>,
    net: Net,
    rx: Driver,
    tx: Driver,
    /// Where the next transmit frame goes in RAM (a bump allocator).
    next: u64,
}

/// A VM with its NIC brought up as Linux would: receive queue at the
/// start of its RAM, transmit queue 4 KiB on.
fn vm(ram: &mut [u8], mac: [u8; 6]) -> Vm<'_> {
    let mem = SliceMem::new(BASE, ram);
    let rx = Driver::new(BASE, 64);
    let tx = Driver::new(BASE + 0x1000, 64);
    let mut net = Net::new(mac);
    net::driver_init(&mut net, rx.layout, tx.layout, &mem);
    assert!(net.transport.live());
    Vm {
        mem,
        net,
        rx,
        tx,
        next: BASE + 0x2000,
    }
}

fn frame_of(dst: Option<[u8; 6]>, src: [u8; 6], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.unwrap_or([0xff; 6]));
    f.extend_from_slice(&src);
    f.extend_from_slice(body);
    f
}

/// Delivers `frame` to VM `i` and checks what landed in its buffer.
fn deliver(vms: &mut [Vm; 2], i: usize, frame: &[u8]) {
    let v = &mut vms[i];
    let d = v.net.deliver(&v.mem, frame);
    if let Delivery::Delivered { .. } = d {
        let (head, len) =
            v.rx.take_used(&v.mem)
                .expect("a delivery returns its buffer");
        assert_eq!(len as usize, HDR_LEN + frame.len());
        // The chain as the device read it (RAM has not changed since).
        let mut bufs: Vec<(u64, u64)> = Vec::new();
        let mut index = head;
        for _ in 0..64 {
            let mut raw = [0u8; 16];
            v.mem
                .read(v.rx.layout.desc + 16 * u64::from(index), &mut raw)
                .unwrap();
            let addr = u64::from_le_bytes(raw[..8].try_into().unwrap());
            let n = u64::from(u32::from_le_bytes(raw[8..12].try_into().unwrap()));
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            bufs.push((addr, n));
            if flags & 1 == 0 {
                break;
            }
            index = u16::from_le_bytes([raw[14], raw[15]]);
        }
        let overlap = bufs.iter().enumerate().any(|(i, a)| {
            bufs[i + 1..]
                .iter()
                .any(|b| a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1))
        });
        if !overlap {
            let mut got = Vec::new();
            for &(addr, n) in &bufs {
                let take = (n as usize).min(HDR_LEN + frame.len() - got.len());
                let mut piece = vec![0u8; take];
                v.mem.read(addr, &mut piece).unwrap();
                got.extend_from_slice(&piece);
                if got.len() == HDR_LEN + frame.len() {
                    break;
                }
            }
            assert_eq!(&got[10..12], &[1, 0], "num_buffers");
            assert_eq!(&got[HDR_LEN..], frame);
        }
    } else {
        // Returned buffers (too small, not writable) come back empty.
        while let Some((_, len)) = v.rx.take_used(&v.mem) {
            assert_eq!(len, 0);
        }
    }
}

fn switch(sw: &mut Switch, vms: &mut [Vm; 2], port: usize, frame: &[u8]) {
    let src: [u8; 6] = frame.get(6..12).map_or([0; 6], |s| s.try_into().unwrap());
    let dest = sw.forward(port, frame);
    let legit = match port {
        UPLINK => !MACS.contains(&src),
        p => src == MACS[p - 1],
    };
    if !legit {
        assert!(
            matches!(dest, Dest::Drop(_)),
            "{dest:?} for a spoofed source"
        );
    }
    // A VM's MAC is only ever on its own port.
    for (k, m) in MACS.iter().enumerate() {
        assert_eq!(sw.lookup(m), Some(k + 1));
    }
    match dest {
        Dest::Port(p) => {
            assert_ne!(p, port, "sent back where it came from");
            if p != UPLINK {
                deliver(vms, p - 1, frame);
            }
        }
        Dest::Flood => {
            for p in (0..3).filter(|&p| p != port) {
                if p != UPLINK {
                    deliver(vms, p - 1, frame);
                }
            }
        }
        Dest::Drop(_) => {}
    }
}

fuzz_target!(|input: Input| {
    let mut ra = vec![0u8; RAM];
    let mut rb = vec![0u8; RAM];
    let mut vms = [vm(&mut ra, MACS[0]), vm(&mut rb, MACS[1])];
    let mut sw = Switch::new(vec![None, Some(MACS[0]), Some(MACS[1])], 8);
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Post { vm, at, len, write } => {
                let v = &mut vms[usize::from(vm)];
                let addr = BASE + 0x8000 + u64::from(at % 0x6000);
                let len = u32::from(len % 2048);
                v.rx.add(&v.mem, &[(addr, len, write)]);
            }
            Op::Send {
                vm,
                dst,
                src,
                body,
                split,
            } => {
                let i = usize::from(vm);
                let src = match src {
                    Src::Own => MACS[i],
                    Src::Other => MACS[1 - i],
                    Src::Any(m) => m,
                };
                let f = frame_of(dst, src, &body[..body.len().min(1600)]);
                let v = &mut vms[i];
                let need = (HDR_LEN + f.len()) as u64;
                if v.next + need > BASE + 0x8000 {
                    v.next = BASE + 0x2000;
                }
                let at = v.next;
                v.next += need.next_multiple_of(16);
                let mut bytes = vec![0u8; HDR_LEN];
                bytes.extend_from_slice(&f);
                if at + need > BASE + RAM as u64 {
                    continue;
                }
                v.mem.write(at, &bytes).unwrap();
                let cut = usize::from(split).min(bytes.len());
                if cut == 0 || cut == bytes.len() {
                    v.tx.add(&v.mem, &[(at, need as u32, false)]);
                } else {
                    v.tx.add(
                        &v.mem,
                        &[
                            (at, cut as u32, false),
                            (at + cut as u64, (bytes.len() - cut) as u32, false),
                        ],
                    );
                }
            }
            Op::Raw {
                vm,
                addr,
                len,
                flags,
            } => {
                let v = &mut vms[usize::from(vm)];
                v.tx.write_desc(&v.mem, 63, addr, len, flags, 0);
                v.tx.publish(&v.mem, 63);
            }
            Op::Notify { vm } => {
                let i = usize::from(vm);
                let ev = {
                    let v = &mut vms[i];
                    v.net
                        .mmio_write(reg::QUEUE_NOTIFY, 4, 1, &v.mem)
                        .unwrap_or_default()
                };
                if !ev.tx {
                    continue;
                }
                let mut buf = [0u8; MAX_FRAME];
                loop {
                    let got = {
                        let v = &mut vms[i];
                        v.net.pop_tx(&v.mem, &mut buf)
                    };
                    match got {
                        Ok(Some(len)) => {
                            assert!((net::MIN_FRAME..=MAX_FRAME).contains(&len));
                            let frame = buf[..len].to_vec();
                            switch(&mut sw, &mut vms, i + 1, &frame);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let v = &mut vms[i];
                v.net.tx_done(&v.mem);
                while v.tx.take_used(&v.mem).is_some() {}
            }
            Op::Mmio { vm, off, value } => {
                let v = &mut vms[usize::from(vm)];
                let _ = v.net.mmio_write(u64::from(off % 0x210), 4, value, &v.mem);
                let _ = v.net.mmio_read(u64::from(off % 0x210), 4);
            }
            Op::Poke { vm, at, bytes } => {
                let v = &mut vms[usize::from(vm)];
                let at = BASE + u64::from(at) % RAM as u64;
                let n = bytes.len().min(RAM - (at - BASE) as usize);
                let _ = v.mem.write(at, &bytes[..n]);
            }
            Op::Uplink { frame } => {
                let frame = &frame[..frame.len().min(1600)];
                switch(&mut sw, &mut vms, UPLINK, frame);
            }
        }
    }
});
