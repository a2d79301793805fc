//! `bulkhead-io`: what `dd` cannot do for the disk benchmark
//! (configs/bench-disk.toml): 4 KiB reads at random offsets of a block
//! device, with `O_DIRECT` so each one is a request to the device, one at
//! a time.
//!
//! ```text
//! bulkhead-io randread DEV COUNT    COUNT random 4 KiB reads; a BENCH line in IOPS
//! bulkhead-io zeroout DEV OFF LEN   BLKZEROOUT: LEN bytes from OFF read as zeroes
//! ```
//!
//! `zeroout` is the disk test's (configs/linux/init-disk.sh): busybox has
//! no tool for the ioctl, which a device with write-zeroes serves with one
//! request.
//!
//! The offsets come from a fixed-seed xorshift, so every run (native or
//! under Bulkhead) reads the same blocks in the same order.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::Instant;

const BLOCK: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match (args.first().map(String::as_str), args.get(1), args.get(2)) {
        (Some("randread"), Some(dev), Some(n)) => match n.parse() {
            Ok(n) => randread(dev, n),
            Err(_) => Err(format!("COUNT {n:?} is not a number")),
        },
        (Some("zeroout"), Some(dev), Some(off)) => {
            match (off.parse(), args.get(3).map(|l| l.parse())) {
                (Ok(off), Some(Ok(len))) => zeroout(dev, off, len),
                _ => Err("OFF and LEN must be numbers of bytes".into()),
            }
        }
        _ => Err("usage: bulkhead-io randread DEV COUNT | zeroout DEV OFF LEN".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-io: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A block-aligned buffer, as O_DIRECT wants.
struct Aligned(*mut u8);

impl Aligned {
    fn new() -> Result<Aligned, String> {
        let layout =
            std::alloc::Layout::from_size_align(BLOCK, BLOCK).map_err(|e| e.to_string())?;
        // SAFETY: a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err("out of memory".into());
        }
        Ok(Aligned(p))
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: BLOCK bytes allocated in `new`, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0, BLOCK) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(BLOCK, BLOCK) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.0, layout) };
        }
    }
}

fn randread(dev: &str, count: u32) -> Result<(), String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("cannot open {dev}: {e}"))?;
    // A block device's end is its size.
    let size = (&f)
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot size {dev}: {e}"))?;
    if size < BLOCK as u64 {
        return Err(format!("{dev} is smaller than one block"));
    }
    let blocks = size / BLOCK as u64;
    let mut buf = Aligned::new()?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let start = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % blocks) * BLOCK as u64;
        f.read_exact_at(buf.slice(), at)
            .map_err(|e| format!("read at {at:#x}: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BENCH virtio_blk_4k_iops IOPS {:.3}",
        f64::from(count) / secs
    );
    Ok(())
}

/// `_IO(0x12, 127)`: linux/fs.h's BLKZEROOUT, whose argument is
/// `u64 range[2]` (offset, length in bytes).
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn zeroout(dev: &str, off: u64, len: u64) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {dev}: {e}"))?;
    let range: [u64; 2] = [off, len];
    // SAFETY: BLKZEROOUT reads a u64[2] from the pointer, which is valid
    // for the call; the descriptor is open for writing.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if r != 0 {
        return Err(format!(
            "BLKZEROOUT {off}+{len}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
