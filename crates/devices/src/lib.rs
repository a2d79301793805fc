//! Emulated devices for Bulkhead guests. Each model is a plain struct with
//! `read(offset, size)` / `write(offset, size, value)` (and `outq`, the
//! queue a critical VM's console output waits in); none touches a
//! hardware register or guest memory, so all are tested on the host.
#![no_std]
#![deny(unsafe_code)]

pub mod outq;
pub mod pl011;
