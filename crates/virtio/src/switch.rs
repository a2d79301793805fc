//! A learning Ethernet switch (pure): which ports a frame goes to.
//!
//! Ports are the VMs' virtio-net devices and, optionally, an uplink to the
//! physical NIC. A VM port has the MAC its config gives and may send only
//! from it: a frame with another source is dropped (a VM cannot pose as
//! another, or as a host on the uplink). Those MACs are static entries of
//! the table, never re-learned from another port, so no port can draw a
//! VM's traffic to itself. Other sources (hosts behind the uplink) are
//! learned, up to a fixed number of entries, the least recently seen
//! replaced first. Broadcast, multicast and unknown destinations flood
//! to every other port.
//!
//! A VM's MAC is pinned to its port only while the VM runs
//! ([`Switch::claim`], [`Switch::release`]): once it has stopped, or
//! migrated to another machine, its MAC may be learned on the uplink, so
//! the VMs left here reach it where it went. Its own port still may not
//! send from any other MAC.

use alloc::vec::Vec;

pub type Mac = [u8; 6];

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Port(usize),
    /// Every port but the one it came from.
    Flood,
    Drop(Why),
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Shorter than an Ethernet header or longer than the largest frame
    /// with segmentation offload (`offload::MAX_GSO_FRAME`).
    Size,
    /// A VM port sent from a MAC not its own, or a port sent from a VM's.
    Spoofed,
    /// A multicast source address.
    BadSource,
    /// The destination is on the port it came from.
    SamePort,
    /// No such port.
    NoPort,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub forwarded: u64,
    pub flooded: u64,
    pub dropped: u64,
    pub spoofed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    port: usize,
    /// Static entries (a VM port's MAC) are never moved or replaced.
    fixed: bool,
    seen: u64,
}

pub struct Switch {
    /// Each port's own MAC if it is a VM port.
    ports: Vec<Option<Mac>>,
    table: Vec<Entry>,
    learned_max: usize,
    clock: u64,
    pub stats: SwitchStats,
}

/// The frame that tells the switches on the way that `mac` is now here:
/// a broadcast RARP request of `mac` for itself (RFC 903, operation 3),
/// padded to Ethernet's 60-byte minimum. A hypervisor sends it for a VM
/// that just migrated in, so a learning switch moves the MAC to the port
/// it came from at once, before the guest sends anything (QEMU sends the
/// same after a migration). Nothing answers RARP today; it is only seen.
pub fn announce(mac: &Mac) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    // Hardware Ethernet (1), protocol IPv4, 6- and 4-byte addresses.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]);
    f[22..28].copy_from_slice(mac); // sender hardware address
    f[32..38].copy_from_slice(mac); // target hardware address
    f
}

/// Reverse ARP's Ethernet type.
pub const ETHERTYPE_RARP: u16 = 0x8035;

pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// `ports[i]` is `Some(mac)` for a VM port, `None` for the uplink;
    /// at most `learned_max` addresses are learned besides the VMs'.
    pub fn new(ports: Vec<Option<Mac>>, learned_max: usize) -> Switch {
        let table = ports
            .iter()
            .enumerate()
            .filter_map(|(port, m)| {
                m.map(|mac| Entry {
                    mac,
                    port,
                    fixed: true,
                    seen: 0,
                })
            })
            .collect();
        Switch {
            ports,
            table,
            learned_max,
            clock: 0,
            stats: SwitchStats::default(),
        }
    }

    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// The MAC of VM port `port`.
    pub fn mac_of(&self, port: usize) -> Option<Mac> {
        self.ports.get(port).copied().flatten()
    }

    /// VM port `port` no longer holds its MAC (the VM stopped or moved
    /// away): the MAC may be learned elsewhere from now on.
    pub fn release(&mut self, port: usize) {
        let Some(Some(mac)) = self.ports.get(port).copied() else {
            return;
        };
        self.table.retain(|e| e.mac != mac);
    }

    /// VM port `port` holds its MAC again (the VM started, or migrated
    /// in): whatever was learned of that MAC elsewhere is forgotten.
    pub fn claim(&mut self, port: usize) {
        let Some(Some(mac)) = self.ports.get(port).copied() else {
            return;
        };
        self.table.retain(|e| e.mac != mac);
        self.table.push(Entry {
            mac,
            port,
            fixed: true,
            seen: 0,
        });
    }

    /// Where the port of `mac` is, if known.
    pub fn lookup(&self, mac: &Mac) -> Option<usize> {
        self.table.iter().find(|e| &e.mac == mac).map(|e| e.port)
    }

    /// Decides where `frame`, arriving on `port`, goes, learning its source.
    pub fn forward(&mut self, port: usize, frame: &[u8]) -> Dest {
        let d = self.decide(port, frame);
        match d {
            Dest::Port(_) => self.stats.forwarded += 1,
            Dest::Flood => self.stats.flooded += 1,
            Dest::Drop(Why::Spoofed) => {
                self.stats.spoofed += 1;
                self.stats.dropped += 1;
            }
            Dest::Drop(_) => self.stats.dropped += 1,
        }
        d
    }

    fn decide(&mut self, port: usize, frame: &[u8]) -> Dest {
        // The device checked each frame against what its driver negotiated
        // (an MTU-sized frame, or up to 64 KiB with segmentation offload).
        if !(crate::net::MIN_FRAME..=crate::offload::MAX_GSO_FRAME).contains(&frame.len()) {
            return Dest::Drop(Why::Size);
        }
        let Some(&own) = self.ports.get(port) else {
            return Dest::Drop(Why::NoPort);
        };
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        src.copy_from_slice(&frame[6..12]);
        if is_multicast(&src) {
            return Dest::Drop(Why::BadSource);
        }
        if own.is_some_and(|m| m != src) {
            return Dest::Drop(Why::Spoofed);
        }
        if !self.learn(src, port) {
            return Dest::Drop(Why::Spoofed);
        }
        if is_multicast(&dst) {
            return Dest::Flood;
        }
        match self.lookup(&dst) {
            Some(p) if p == port => Dest::Drop(Why::SamePort),
            Some(p) => Dest::Port(p),
            None => Dest::Flood,
        }
    }

    /// Records that `mac` is on `port`; false if it is a VM's MAC seen on
    /// another port.
    fn learn(&mut self, mac: Mac, port: usize) -> bool {
        self.clock += 1;
        let now = self.clock;
        if let Some(e) = self.table.iter_mut().find(|e| e.mac == mac) {
            if e.fixed {
                return e.port == port;
            }
            e.port = port;
            e.seen = now;
            return true;
        }
        let learned = self.table.iter().filter(|e| !e.fixed).count();
        if learned >= self.learned_max {
            let oldest = self
                .table
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.fixed)
                .min_by_key(|(_, e)| e.seen)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.table.swap_remove(i);
                }
                None => return true,
            }
        }
        self.table.push(Entry {
            mac,
            port,
            fixed: false,
            seen: now,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
    const HOST: Mac = [0x02, 0, 0, 0, 0, 0xfe];
    const BCAST: Mac = [0xff; 6];

    fn f(dst: Mac, src: Mac) -> Vec<u8> {
        let mut v = vec![0u8; 60];
        v[..6].copy_from_slice(&dst);
        v[6..12].copy_from_slice(&src);
        v
    }

    fn sw() -> Switch {
        // Port 0: VM a, port 1: VM b, port 2: the uplink.
        Switch::new(vec![Some(A), Some(B), None], 4)
    }

    #[test]
    fn vm_to_vm_is_forwarded_broadcast_is_flooded() {
        let mut s = sw();
        assert_eq!(s.forward(0, &f(B, A)), Dest::Port(1));
        assert_eq!(s.forward(1, &f(A, B)), Dest::Port(0));
        assert_eq!(s.forward(0, &f(BCAST, A)), Dest::Flood);
        // Unknown destination: flooded until learned.
        assert_eq!(s.forward(0, &f(HOST, A)), Dest::Flood);
        assert_eq!(s.forward(2, &f(A, HOST)), Dest::Port(0));
        assert_eq!(s.forward(0, &f(HOST, A)), Dest::Port(2));
        assert_eq!(s.stats.forwarded, 4);
    }

    #[test]
    fn no_port_can_pose_as_a_vm() {
        let mut s = sw();
        // VM a sends from b's MAC: dropped.
        assert_eq!(s.forward(0, &f(BCAST, B)), Dest::Drop(Why::Spoofed));
        // The uplink sends from a's MAC: dropped, and a's traffic still
        // goes to a.
        assert_eq!(s.forward(2, &f(B, A)), Dest::Drop(Why::Spoofed));
        assert_eq!(s.forward(1, &f(A, B)), Dest::Port(0));
        assert_eq!(s.stats.spoofed, 2);
        assert_eq!(
            s.forward(0, &f(BCAST, [2, 2, 3, 4, 5, 6])),
            Dest::Drop(Why::Spoofed)
        );
        assert_eq!(
            s.forward(2, &f(A, [1, 0, 0, 0, 0, 1])),
            Dest::Drop(Why::BadSource)
        );
    }

    #[test]
    fn bad_sizes_ports_and_hairpins_are_dropped() {
        let mut s = sw();
        assert_eq!(s.forward(0, &[0u8; 13]), Dest::Drop(Why::Size));
        let past = crate::offload::MAX_GSO_FRAME + 1;
        assert_eq!(s.forward(0, &vec![0u8; past]), Dest::Drop(Why::Size));
        assert_eq!(s.forward(9, &f(B, A)), Dest::Drop(Why::NoPort));
        assert_eq!(s.forward(0, &f(A, A)), Dest::Drop(Why::SamePort));
    }

    #[test]
    fn learning_is_bounded_and_forgets_the_oldest() {
        let mut s = sw();
        for i in 0..10u8 {
            s.forward(2, &f(BCAST, [2, 0, 0, 0, 0, i]));
        }
        assert_eq!(s.table.len(), 2 + 4, "two VMs and four learned hosts");
        assert_eq!(s.lookup(&[2, 0, 0, 0, 0, 9]), Some(2));
        assert_eq!(s.lookup(&[2, 0, 0, 0, 0, 0]), None, "the oldest went");
        assert_eq!(s.lookup(&A), Some(0), "VM entries are never replaced");
    }

    #[test]
    fn the_announcement_is_a_broadcast_rarp_from_the_vm() {
        let a = announce(&A);
        assert_eq!(&a[..6], &BCAST);
        assert_eq!(&a[6..12], &A);
        assert_eq!(u16::from_be_bytes([a[12], a[13]]), ETHERTYPE_RARP);
        assert_eq!(u16::from_be_bytes([a[20], a[21]]), 3, "request reverse");
        assert_eq!((&a[22..28], &a[32..38]), (&A[..], &A[..]));
        assert!(a[28..32].iter().chain(&a[38..]).all(|&b| b == 0));
        // From the VM's own port it is flooded and teaches the others.
        let mut s = sw();
        assert_eq!(s.forward(0, &a), Dest::Flood);
        assert_eq!(s.forward(0, &announce(&B)), Dest::Drop(Why::Spoofed));
    }

    #[test]
    fn a_stopped_vms_mac_is_learned_where_it_went_until_it_is_back() {
        let mut s = sw();
        // VM a left (migrated to another machine): its frames now come
        // in on the uplink, and b's traffic to it goes there.
        s.release(0);
        assert_eq!(s.lookup(&A), None);
        assert_eq!(s.forward(1, &f(A, B)), Dest::Flood, "unknown until seen");
        assert_eq!(s.forward(2, &f(B, A)), Dest::Port(1));
        assert_eq!(s.forward(1, &f(A, B)), Dest::Port(2));
        // Its port still sends from nothing but its own MAC.
        assert_eq!(s.forward(0, &f(BCAST, HOST)), Dest::Drop(Why::Spoofed));
        // b's MAC stays pinned.
        assert_eq!(s.forward(2, &f(A, B)), Dest::Drop(Why::Spoofed));
        // a is back: pinned to its port again, the uplink may not send
        // from it any more.
        s.claim(0);
        assert_eq!(s.forward(1, &f(A, B)), Dest::Port(0));
        assert_eq!(s.forward(2, &f(B, A)), Dest::Drop(Why::Spoofed));
        assert_eq!(s.table.iter().filter(|e| e.mac == A).count(), 1);
        // The uplink has no MAC to release or claim.
        s.release(2);
        s.claim(2);
        assert_eq!(s.lookup(&B), Some(1));
    }
}
