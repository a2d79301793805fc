//! The one bounds-checked path between a device model and guest memory.

use core::cell::RefCell;

/// A range the guest named lies (partly) outside its RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub ipa: u64,
    pub len: u64,
}

/// A VM's RAM as its devices see it: guest physical addresses (IPAs) in,
/// copies out. Every method refuses a range that is not wholly inside the
/// VM's RAM; an overflowing `ipa + len` is outside.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes from `ipa` into `buf`.
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` to `ipa`.
    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), MemError>;
    /// The host address of `[ipa, ipa + len)`, for a device to reach by
    /// DMA, if the whole range is guest RAM (and contiguous on the host).
    fn translate(&self, ipa: u64, len: u64) -> Option<u64>;
    /// Orders the device's accesses to guest memory before this point
    /// against those after it (a full barrier on the hardware). The ring
    /// protocol needs it between reading an index and what it covers, and
    /// between publishing used entries and reading the driver's event
    /// index.
    fn fence(&self) {}

    fn read_u16(&self, ipa: u64) -> Result<u16, MemError> {
        let mut b = [0; 2];
        self.read(ipa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn write_u16(&self, ipa: u64, v: u16) -> Result<(), MemError> {
        self.write(ipa, &v.to_le_bytes())
    }
    fn write_u32(&self, ipa: u64, v: u32) -> Result<(), MemError> {
        self.write(ipa, &v.to_le_bytes())
    }
}

/// `[ipa, ipa + len)` as an offset into a region of `size` bytes at `base`.
pub fn offset_in(base: u64, size: u64, ipa: u64, len: u64) -> Option<u64> {
    let off = ipa.checked_sub(base)?;
    (off.checked_add(len)? <= size).then_some(off)
}

/// Guest memory backed by a byte slice, for tests and fuzzing: `base` is
/// the IPA of its first byte, and `translate` answers offsets into it.
pub struct SliceMem<'a> {
    base: u64,
    mem: RefCell<&'a mut [u8]>,
}

impl<'a> SliceMem<'a> {
    pub fn new(base: u64, mem: &'a mut [u8]) -> SliceMem<'a> {
        SliceMem {
            base,
            mem: RefCell::new(mem),
        }
    }

    fn range(&self, ipa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        let size = self.mem.borrow().len() as u64;
        let err = MemError {
            ipa,
            len: len as u64,
        };
        let off = offset_in(self.base, size, ipa, len as u64).ok_or(err)? as usize;
        Ok(off..off + len)
    }
}

impl GuestMemory for SliceMem<'_> {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(ipa, buf.len())?;
        buf.copy_from_slice(&self.mem.borrow()[r]);
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(ipa, data.len())?;
        self.mem.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }

    fn translate(&self, ipa: u64, len: u64) -> Option<u64> {
        offset_in(self.base, self.mem.borrow().len() as u64, ipa, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ranges_outside_and_overflowing() {
        let mut buf = [0u8; 64];
        let m = SliceMem::new(0x1000, &mut buf);
        assert!(m.write(0x1000, &[1; 64]).is_ok());
        assert!(m.write(0x1001, &[1; 64]).is_err());
        assert!(m.read(0xfff, &mut [0; 1]).is_err());
        assert!(m.read(0x1040, &mut [0; 1]).is_err());
        assert!(
            m.read(0x1040, &mut []).is_ok(),
            "an empty range at the end is inside"
        );
        assert_eq!(m.translate(u64::MAX, 2), None);
        assert_eq!(m.translate(0x1000 + 60, 4), Some(60));
        assert_eq!(m.translate(0x1000 + 61, 4), None);
        assert_eq!(offset_in(0x1000, 64, 0x1010, u64::MAX), None);
    }
}
