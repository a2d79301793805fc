//! Emulated devices for Bulkhead guests. Each model is a plain struct with
//! `read(offset, size)` / `write(offset, size, value)`; none touches a
//! hardware register or guest memory, so all are tested on the host.
#![no_std]
#![deny(unsafe_code)]

pub mod pl011;
