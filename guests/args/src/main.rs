//! A test program as bring-up engineers build them for QEMU `virt`: it
//! parses its command line strictly (`setup smp=<n> mem=<MiB>`, nothing
//! else) and exits with an error on any word it does not know, so a
//! hypervisor that adds words of its own to the guest's command line fails
//! it. It is not named by any config in `configs/`: the `user_image` test
//! builds it, packs it into an arm64 `Image` of its own and boots it from a
//! path, as a user would boot theirs.
//!
//! It reads `/chosen/bulkhead,restarts`, and on the first boot (0) asks for
//! a reset, so the second boot shows the count rose while the command line
//! stayed the same.
#![no_std]
#![no_main]

use guest_rt::println;

/// What `setup smp=<n> mem=<MiB>` asks for.
struct Setup {
    smp: u32,
    mem: u32,
}

/// The strict parse: exactly the word `setup`, then `smp=` and `mem=`
/// once each, decimal, in any order.
fn parse(line: &str) -> Result<Setup, &str> {
    let mut words = line.split(' ');
    if words.next() != Some("setup") {
        return Err("the first word must be 'setup'");
    }
    let (mut smp, mut mem) = (None, None);
    for word in words {
        let (slot, value) = if let Some(v) = word.strip_prefix("smp=") {
            (&mut smp, v)
        } else if let Some(v) = word.strip_prefix("mem=") {
            (&mut mem, v)
        } else {
            return Err(word);
        };
        if slot.is_some() {
            return Err(word);
        }
        *slot = Some(value.parse::<u32>().map_err(|_| word)?);
    }
    match (smp, mem) {
        (Some(smp), Some(mem)) => Ok(Setup { smp, mem }),
        _ => Err("missing smp= or mem="),
    }
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    let Some(fdt) = guest_rt::dtb().and_then(|b| fdt::Fdt::new(b).ok()) else {
        println!("args: FAIL no device tree at x0");
        guest_rt::system_off()
    };
    let line = fdt.chosen().bootargs().unwrap_or("");
    let restarts = fdt
        .find_node("/chosen")
        .and_then(|n| n.property("bulkhead,restarts"))
        .and_then(|p| p.as_usize());
    println!("args: command line [{line}], restart {restarts:?}");
    match parse(line) {
        Ok(s) => println!("args: setup with smp={} mem={} MiB", s.smp, s.mem),
        Err(word) => {
            println!("args: error: unknown argument '{word}'; usage: setup smp=<n> mem=<MiB>");
            println!("args: FAIL strict parse");
            guest_rt::system_off()
        }
    }
    if restarts == Some(0) {
        println!("args: first boot, asking for a reset");
        guest_rt::system_reset()
    }
    println!("args: PASS");
    guest_rt::system_off()
}
