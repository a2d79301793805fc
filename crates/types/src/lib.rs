//! Newtypes for every address space and id in Bulkhead, so that a function
//! that takes a guest-physical address cannot be handed a host-physical one.
#![no_std]
#![deny(unsafe_code)]

use core::fmt;

macro_rules! address {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// `self + off`, or `None` on overflow.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// True if aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address!(
    /// A host physical address (what the MMU's output side sees).
    PhysAddr
);
address!(
    /// An intermediate physical address: a guest's view of physical memory,
    /// translated by stage 2.
    Ipa
);
address!(
    /// A virtual address in the hypervisor's own (EL2 stage-1) space.
    VirtAddr
);

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $inner:ty, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The id as an index into a table.
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(
    /// A VM's index in the system config (also its VMID minus one).
    VmId, u16, "vm"
);
id!(
    /// A vCPU's index inside its VM.
    VcpuId, u16, "vcpu"
);
id!(
    /// A physical CPU's index in the host device tree's `cpus` node.
    PcpuId, u16, "cpu"
);
id!(
    /// A GIC interrupt id (SGI 0-15, PPI 16-31, SPI 32-1019).
    IntId, u32, "irq"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_detects_overflow() {
        assert_eq!(Ipa(u64::MAX).checked_add(1), None);
        assert_eq!(Ipa(0x1000).checked_add(0x10), Some(Ipa(0x1010)));
    }

    #[test]
    fn alignment_check() {
        assert!(PhysAddr(0x20_0000).is_aligned(0x20_0000));
        assert!(!PhysAddr(0x20_1000).is_aligned(0x20_0000));
    }

    #[test]
    fn display_names_the_kind() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", PcpuId(3)), "cpu3");
        assert_eq!(format!("{:?}", Ipa(0x10)), "Ipa(0x10)");
    }
}
