//! One channel end's state in a snapshot or migration stream
//! (docs/snapshot.md): what the end's VM sees of the channel, so that a
//! restored VM finds its end as it left it.
//!
//! ```text
//! version  u8 (VERSION)
//! name     u8 length, the channel's name (to match the target's end)
//! end      u8, 0 or 1
//! size     u64, bytes of shared memory (whole pages, at most 1 MiB)
//! isr      u32, 0 or ISR_DOORBELL: a ring this end had not taken
//! count    u32, rings this end received (reg::COUNT)
//! pci      u8 0, or 1 and PciFunction::STATE_BYTES
//! bitmap   one bit per page of shared memory, set for a page that is
//!          not all zeros (size / 4096 bits, in ceil(/8) bytes)
//! pages    the pages whose bits are set, in order, 4096 bytes each
//! ```
//!
//! The decoder trusts none of it: the stream comes from the network.

use alloc::string::String;
use alloc::vec::Vec;

use bulkhead_channel::{PciFunction, ISR_DOORBELL};

pub const VERSION: u8 = 1;
const PAGE: usize = 4096;
/// The largest channel (config.md): 1 MiB, 256 pages.
pub const MAX_SIZE: u64 = 1 << 20;

/// Why a saved end was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    Truncated,
    TooLong,
    Version(u8),
    /// A field out of its range (named).
    Bad(&'static str),
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateError::Truncated => write!(f, "channel state is cut short"),
            StateError::TooLong => write!(f, "bytes after the channel state"),
            StateError::Version(v) => write!(
                f,
                "channel state version {v}, this Bulkhead reads {VERSION}"
            ),
            StateError::Bad(what) => write!(f, "channel state: {what}"),
        }
    }
}

impl core::error::Error for StateError {}

/// A channel end as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedEnd {
    pub channel: String,
    pub end: u8,
    pub isr: u32,
    pub count: u32,
    /// The PCI face's state, for a Linux VM's end.
    pub pci: Option<[u8; PciFunction::STATE_BYTES]>,
    /// The whole shared memory, `size` bytes.
    pub shm: Vec<u8>,
}

impl SavedEnd {
    /// The encoding above. `shm` must be whole pages, at most `MAX_SIZE`
    /// (the hypervisor's channels are).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.channel.as_bytes();
        let name = &name[..name.len().min(255)];
        let pages = self.shm.len() / PAGE;
        let mut out = Vec::with_capacity(32 + name.len() + pages / 8 + self.shm.len());
        out.push(VERSION);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.push(self.end);
        out.extend_from_slice(&(self.shm.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.isr.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        match &self.pci {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
            None => out.push(0),
        }
        let at = out.len();
        out.resize(at + pages.div_ceil(8), 0);
        let mut data = Vec::new();
        for (i, page) in self.shm.chunks_exact(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                out[at + i / 8] |= 1 << (i % 8);
                data.extend_from_slice(page);
            }
        }
        out.extend_from_slice(&data);
        out
    }

    pub fn decode(p: &[u8]) -> Result<SavedEnd, StateError> {
        let mut r = Reader(p);
        let v = r.u8()?;
        if v != VERSION {
            return Err(StateError::Version(v));
        }
        let n = usize::from(r.u8()?);
        let channel = core::str::from_utf8(r.take(n)?)
            .map_err(|_| StateError::Bad("the channel's name is not text"))?
            .into();
        let end = r.u8()?;
        if end > 1 {
            return Err(StateError::Bad("end is not 0 or 1"));
        }
        let size = r.u64()?;
        if size == 0 || size > MAX_SIZE || !size.is_multiple_of(PAGE as u64) {
            return Err(StateError::Bad("shared memory is not 1 to 256 whole pages"));
        }
        let isr = r.u32()?;
        if isr & !ISR_DOORBELL != 0 {
            return Err(StateError::Bad("ISR has bits other than the doorbell's"));
        }
        let count = r.u32()?;
        let pci = match r.u8()? {
            0 => None,
            1 => Some(
                r.take(PciFunction::STATE_BYTES)?
                    .try_into()
                    .map_err(|_| StateError::Truncated)?,
            ),
            _ => return Err(StateError::Bad("PCI flag is not 0 or 1")),
        };
        let pages = size as usize / PAGE;
        let bitmap = r.take(pages.div_ceil(8))?;
        if !pages.is_multiple_of(8) && bitmap[pages / 8] >> (pages % 8) != 0 {
            return Err(StateError::Bad("bitmap marks pages past the end"));
        }
        let mut shm = alloc::vec![0u8; size as usize];
        for (i, page) in shm.chunks_exact_mut(PAGE).enumerate() {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                page.copy_from_slice(r.take(PAGE)?);
            }
        }
        if !r.0.is_empty() {
            return Err(StateError::TooLong);
        }
        Ok(SavedEnd {
            channel,
            end,
            isr,
            count,
            pci,
            shm,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_channel::{command, Channel};

    fn sample() -> SavedEnd {
        let mut shm = alloc::vec![0u8; 3 * PAGE];
        shm[5] = 7;
        shm[2 * PAGE + 100] = 9;
        let mut f = PciFunction::new(0x1000_0000, 0x1010_0000, 3 * PAGE as u32);
        f.config_write(0x04, 2, u32::from(command::MEMORY | command::INTX_DISABLE));
        f.config_write(0x3c, 1, 42);
        SavedEnd {
            channel: "control".into(),
            end: 1,
            isr: ISR_DOORBELL,
            count: 12,
            pci: Some(f.save_state()),
            shm,
        }
    }

    #[test]
    fn a_saved_end_comes_back_as_it_was_without_its_zero_pages() {
        let s = sample();
        let bytes = s.encode();
        // Two of three pages carry data; the zero one is a clear bit.
        assert!(bytes.len() < 2 * PAGE + 64, "{} bytes", bytes.len());
        assert_eq!(SavedEnd::decode(&bytes), Ok(s));
    }

    #[test]
    fn every_cut_of_a_saved_end_is_refused_and_so_are_extra_bytes() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(SavedEnd::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(SavedEnd::decode(&long), Err(StateError::TooLong));
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let bytes = sample().encode();
        let name = 2 + "control".len();
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert_eq!(SavedEnd::decode(&bad), Err(StateError::Version(2)));
        let mut bad = bytes.clone();
        bad[name] = 2; // end
        assert!(matches!(SavedEnd::decode(&bad), Err(StateError::Bad(_))));
        let mut bad = bytes.clone();
        bad[name + 1..name + 9].copy_from_slice(&(MAX_SIZE * 2).to_le_bytes());
        assert!(matches!(SavedEnd::decode(&bad), Err(StateError::Bad(_))));
        let mut bad = bytes.clone();
        bad[name + 9] = 3; // ISR
        assert!(matches!(SavedEnd::decode(&bad), Err(StateError::Bad(_))));
        let mut bad = bytes.clone();
        bad[name + 17] = 2; // PCI flag
        assert!(matches!(SavedEnd::decode(&bad), Err(StateError::Bad(_))));
        // A bitmap bit past the third page.
        let mut bad = bytes.clone();
        bad[name + 18 + PciFunction::STATE_BYTES] |= 1 << 3;
        assert!(SavedEnd::decode(&bad).is_err());
    }

    #[test]
    fn an_end_restored_has_its_doorbell_and_count_and_its_vm_is_up() {
        let ch = Channel::new(4096);
        ch.set_up(0, true);
        ch.write(0, bulkhead_channel::reg::DOORBELL, 4, 0);
        ch.write(0, bulkhead_channel::reg::DOORBELL, 4, 0);
        assert_eq!(ch.end_state(1), (ISR_DOORBELL, 2));
        let other = Channel::new(4096);
        other.restore_end(1, ISR_DOORBELL, 2);
        assert!(other.line(1));
        assert_eq!(other.read(1, bulkhead_channel::reg::COUNT, 4), 2);
        assert_eq!(other.read(0, bulkhead_channel::reg::PEER, 4), 1);
    }

    #[test]
    fn a_pci_state_restores_and_one_a_guest_could_not_have_made_is_refused() {
        let mut f = PciFunction::new(0x1000_0000, 0x1010_0000, 0x1000);
        f.config_write(0x04, 2, u32::from(command::MEMORY | command::INTX_DISABLE));
        let saved = f.save_state();
        let mut g = PciFunction::new(0x1000_0000, 0x1010_0000, 0x1000);
        g.restore_state(&saved).unwrap();
        assert_eq!(g, f);
        let mut bad = saved;
        bad[1] = 0x80; // a command bit that is not writable
        assert!(g.restore_state(&bad).is_err());
        let mut bad = saved;
        bad[2] = 0x10; // BAR 0 not aligned to its 4 KiB
        assert!(g.restore_state(&bad).is_err());
        assert_eq!(g, f, "a refused state changes nothing");
    }
}
