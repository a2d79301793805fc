//! The isolation guest, in two roles.
//!
//! As `attacker` (2 MiB of RAM, two vCPUs) it tries every class of attack
//! on the hypervisor and on the other VM, logs each attempt with the answer
//! it got, and counts the ones that were refused (or contained) the way
//! the architecture says: see `attacker.rs`.
//!
//! As `victim` (more RAM) it fills a buffer with a pattern and runs a 1 ms
//! periodic task that re-verifies a slice of it every period, checks its
//! deadline and reports its pace, until it is told on its console that the
//! attacker is finished; then it checks its own devices and interrupt
//! state and reports: see `victim.rs`.
//!
//! Which role: 0x4020_0000 is our own RAM only if we have more than 2 MiB.
#![no_std]
#![no_main]

mod attacker;
mod victim;

use guest_rt::{probe, read64};

/// Where RAM starts in every VM.
pub const RAM: usize = 0x4000_0000;

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    if probe(|| {
        read64(RAM + 0x20_0000);
    })
    .is_ok()
    {
        victim::run()
    } else {
        attacker::run()
    }
}
