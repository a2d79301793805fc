//! `bulkhead-chan`: the Linux user-space end of a Bulkhead channel.
//!
//! The kernel is Debian's, unmodified: the channel end is a PCI function
//! (1af4:1110) that the stock `uio_pci_generic` driver binds; this program
//! maps its BARs through sysfs (`resource0`: the register page,
//! `resource2`: the shared memory) and waits for the doorbell interrupt by
//! reading `/dev/uioN`. See docs/channels.md.
//!
//! ```text
//! bulkhead-chan info           the device, its end number, whether the peer runs
//! bulkhead-chan ping TEXT      send TEXT as a request, print the reply
//! bulkhead-chan bench N        N round trips; BENCH lines with counter ticks
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_channel::{mailbox, reg, DEVICE_ID, VENDOR_ID};

/// How long a request may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") => Chan::open().map(|c| c.info()),
        Some("ping") if args.len() >= 2 => Chan::open().and_then(|c| {
            let (reply, ticks) = c.request(&args[1..].join(" "))?;
            println!("reply from the peer in {ticks} counter ticks: {reply}");
            Ok(())
        }),
        Some("bench") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100u32);
            Chan::open().and_then(|c| c.bench(n))
        }
        _ => Err("usage: bulkhead-chan info | ping TEXT | bench N".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-chan: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// A mapped channel end.
struct Chan {
    dev: PathBuf,
    uio: File,
    /// The function's configuration space (sysfs `config`).
    config: File,
    regs: Mapping,
    shm: Mapping,
}

/// A shared mapping of a sysfs PCI resource file.
struct Mapping {
    ptr: *mut u32,
    len: usize,
}

impl Mapping {
    fn new(path: &Path) -> Result<Mapping> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: a fresh shared mapping of a file we opened read-write; the
        // kernel checks the length against the BAR.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn read(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: inside the mapping (checked above), aligned; volatile
        // because the peer and the device change it.
        unsafe { self.ptr.add(off / 4).read_volatile() }
    }

    fn write(&self, off: usize, v: u32) {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: as for `read`.
        unsafe { self.ptr.add(off / 4).write_volatile(v) }
    }
}

/// Orders the shared-memory stores before the doorbell (and the reply's
/// loads after it).
fn barrier() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// The virtual counter (readable at EL0 under Linux).
fn counter() -> u64 {
    #[cfg(target_arch = "aarch64")]
    {
        let v: u64;
        // SAFETY: CNTVCT_EL0 is readable at EL0 (Linux sets CNTKCTL_EL1.EL0VCTEN).
        unsafe { std::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
        v
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        0
    }
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default().trim().to_owned()
}

impl Chan {
    /// Finds the first channel end, binds `uio_pci_generic` to it if
    /// nothing has, and maps it.
    fn open() -> Result<Chan> {
        let want = (format!("{VENDOR_ID:#06x}"), format!("{DEVICE_ID:#06x}"));
        let dev = fs::read_dir("/sys/bus/pci/devices")
            .map_err(|e| format!("no PCI bus: {e}"))?
            .flatten()
            .map(|e| e.path())
            .find(|d| (read_trim(&d.join("vendor")), read_trim(&d.join("device"))) == want)
            .ok_or("no channel device (PCI 1af4:1110) found")?;
        if !dev.join("driver").exists() {
            // Teach the stock driver our ID; it binds every match at once.
            let id = format!("{:04x} {:04x}", VENDOR_ID, DEVICE_ID);
            fs::write("/sys/bus/pci/drivers/uio_pci_generic/new_id", id)
                .map_err(|e| format!("cannot bind uio_pci_generic (is the module loaded?): {e}"))?;
        }
        let start = Instant::now();
        let uio_name = loop {
            let found = fs::read_dir(dev.join("uio"))
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned());
            match found {
                Some(n) => break n,
                None if start.elapsed() > Duration::from_secs(2) => {
                    return Err(format!("{} has no uio device", dev.display()))
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let uio_path = Path::new("/dev").join(&uio_name);
        let uio = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&uio_path)
            .map_err(|e| format!("cannot open {}: {e}", uio_path.display()))?;
        let regs = Mapping::new(&dev.join("resource0"))?;
        let shm = Mapping::new(&dev.join("resource2"))?;
        let config_path = dev.join("config");
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&config_path)
            .map_err(|e| format!("cannot open {}: {e}", config_path.display()))?;
        Ok(Chan {
            dev,
            uio,
            config,
            regs,
            shm,
        })
    }

    fn info(&self) {
        println!(
            "channel end {} at PCI {}, {} bytes shared, peer {}, {} ring(s) received",
            self.regs.read(reg::ID as usize),
            self.dev.file_name().unwrap_or_default().to_string_lossy(),
            self.regs.read(reg::SIZE as usize),
            if self.regs.read(reg::PEER as usize) == 1 {
                "running"
            } else {
                "stopped"
            },
            self.regs.read(reg::COUNT as usize)
        );
    }

    /// Unmasks the interrupt. uio_pci_generic masks INTx (the command
    /// register's Interrupt Disable bit) when it fires and leaves the
    /// unmasking to user space, through the function's config space
    /// (Linux Documentation/driver-api/uio-howto.rst, "Generic PCI UIO
    /// driver").
    fn arm(&self) -> Result<()> {
        const INTX_DISABLE: u16 = 1 << 10;
        let err = |e: std::io::Error| format!("cannot enable the interrupt: {e}");
        let mut cmd = [0u8; 2];
        self.config.read_exact_at(&mut cmd, 4).map_err(err)?;
        let v = u16::from_le_bytes(cmd);
        if v & INTX_DISABLE != 0 {
            let v = v & !INTX_DISABLE;
            self.config.write_all_at(&v.to_le_bytes(), 4).map_err(err)?;
        }
        Ok(())
    }

    /// Blocks until the doorbell interrupt, at most `left`.
    fn wait(&self, left: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.uio.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return Err("no reply: the peer did not ring within 5 s".into());
        }
        let mut count = [0u8; 4];
        (&self.uio)
            .read_exact(&mut count)
            .map_err(|e| format!("reading the interrupt count: {e}"))
    }

    /// Sends `text`, waits for the reply; returns it and the round trip in
    /// counter ticks (doorbell to reply seen).
    fn request(&self, text: &str) -> Result<(String, u64)> {
        if self.regs.read(reg::PEER as usize) != 1 {
            return Err("the peer VM is not running".into());
        }
        let bytes = &text.as_bytes()[..text.len().min(mailbox::MAX_TEXT)];
        let seq = self.shm.read(mailbox::REQ_SEQ).wrapping_add(1);
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            self.shm
                .write(mailbox::REQ_DATA + 4 * i, u32::from_le_bytes(w));
        }
        self.shm.write(mailbox::REQ_LEN, bytes.len() as u32);
        barrier();
        self.shm.write(mailbox::REQ_SEQ, seq);
        barrier();
        self.arm()?;
        let start = Instant::now();
        let t0 = counter();
        self.regs.write(reg::DOORBELL as usize, 1);
        loop {
            let left = REPLY_TIMEOUT.saturating_sub(start.elapsed());
            self.wait(left)?;
            let t1 = counter();
            // Reading ISR lowers the line; then it may fire again.
            let _ = self.regs.read(reg::ISR as usize);
            barrier();
            if self.shm.read(mailbox::RSP_SEQ) == seq {
                let len = (self.shm.read(mailbox::RSP_LEN) as usize).min(mailbox::MAX_TEXT);
                let mut out = Vec::with_capacity(len);
                for i in 0..len.div_ceil(4) {
                    out.extend(self.shm.read(mailbox::RSP_DATA + 4 * i).to_le_bytes());
                }
                out.truncate(len);
                return Ok((String::from_utf8_lossy(&out).into_owned(), t1 - t0));
            }
            self.arm()?;
        }
    }

    fn bench(&self, n: u32) -> Result<()> {
        let (mut min, mut max, mut sum) = (u64::MAX, 0, 0);
        for i in 0..n.max(1) {
            let (_, t) = self.request(&format!("bench {i}"))?;
            min = min.min(t);
            max = max.max(t);
            sum += t;
        }
        let avg = sum / u64::from(n.max(1));
        println!("BENCH channel_rtt instructions {avg}");
        println!("BENCH channel_rtt.min instructions {min}");
        println!("BENCH channel_rtt.max instructions {max}");
        Ok(())
    }
}
