//! Virtio devices that Bulkhead shows its VMs (issue 11).
//!
//! A VM sees standard virtio-mmio (version 2) devices, so the stock Linux
//! `virtio_mmio`, `virtio_blk` and `virtio_net` drivers bind to them. The
//! hypervisor traps the register page ([`mmio::Transport`]) and, when the
//! guest notifies a queue, walks the guest's split virtqueue
//! ([`queue::Queue`]) and serves the requests on the physical device it
//! shares between VMs ([`blk::BlockBackend`]).
//!
//! Everything the guest wrote is hostile. The one path to guest memory is
//! [`GuestMemory`], which refuses any range outside the VM's RAM; each
//! descriptor is read once into a local copy and every later decision uses
//! the copy, so a guest changing its ring while we work changes nothing
//! we already decided; chains that loop, leave the table or grow longer
//! than the queue stop the queue with the device marked
//! `DEVICE_NEEDS_RESET`; a request whose buffers or sectors are wrong gets
//! `VIRTIO_BLK_S_IOERR`. Nothing here panics on guest input (the fuzz
//! targets `virtqueue` and `virtio_blk` hold it to that).
//!
//! Pure code: no MMIO, no locks, no `unsafe`.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

pub mod blk;
pub mod gpt;
pub mod mmio;
pub mod net;
pub mod offload;
pub mod queue;
pub mod state;
pub mod switch;

mod mem;
pub use mem::{offset_in, GuestMemory, MemError, SliceMem};

/// Feature bits common to every device (virtio 1.2, section 6).
pub mod feature {
    /// A descriptor may point at a table of descriptors (2.7.5.3). We use
    /// it as a driver of physical devices; our own devices do not offer it.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// The driver publishes `used_event` and the device `avail_event`:
    /// notifications in both directions are asked for, not assumed.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x (non-legacy) device; mandatory for virtio-mmio v2.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    /// Set by the device when the driver broke the protocol; the driver
    /// must reset the device before it works again.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}
