//! The physical PL011, owned by the hypervisor, and the `log` backend.
//! Every line carries the pCPU and the level; guest output carries the VM.

use crate::percpu;
use crate::vm::Vm;
use bulkhead_devices::outq::OutQueue;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// QEMU virt's UART, used only if the host DTB names none.
pub const FALLBACK_UART: usize = 0x0900_0000;

static UART_BASE: AtomicUsize = AtomicUsize::new(FALLBACK_UART);
static LOCK: Mutex<()> = Mutex::new(());

const UART_DR: usize = 0x00;
const UART_FR: usize = 0x18;
const UART_IMSC: usize = 0x38;
const FR_TXFF: u32 = 1 << 5;
const FR_RXFE: u32 = 1 << 4;
/// IMSC: receive and receive-timeout interrupts.
const IMSC_RX: u32 = (1 << 4) | (1 << 6);

static RX_INTID: spin::Once<u32> = spin::Once::new();

/// Turns on receive interrupts; `intid` is the UART's interrupt.
pub fn enable_rx(intid: u32) {
    RX_INTID.call_once(|| intid);
    let base = UART_BASE.load(Ordering::Relaxed);
    // SAFETY: IMSC of the hypervisor's own PL011 (see `Uart::putc`).
    unsafe { core::ptr::write_volatile((base + UART_IMSC) as *mut u32, IMSC_RX) };
}

/// Unmasks (`true`) or masks the receive interrupts, which are level
/// conditions of the receive FIFO: while input is held back (see
/// `system::console_input`) they are masked, or they would fire without
/// end. Bytes left in the FIFO stay there, and QEMU's PL011 stops taking
/// input from its backend while its FIFO is full, so nothing is lost.
pub fn set_rx_interrupt(on: bool) {
    let base = UART_BASE.load(Ordering::Relaxed);
    let imsc = if on { IMSC_RX } else { 0 };
    // SAFETY: IMSC of the hypervisor's own PL011 (see `Uart::putc`).
    unsafe { core::ptr::write_volatile((base + UART_IMSC) as *mut u32, imsc) };
}

pub fn rx_intid() -> Option<u32> {
    RX_INTID.get().copied()
}

/// One received byte, if any.
pub fn read_byte() -> Option<u8> {
    let base = UART_BASE.load(Ordering::Relaxed);
    // SAFETY: FR and DR of the hypervisor's own PL011; reading DR pops the
    // receive FIFO, which only this function does.
    unsafe {
        if core::ptr::read_volatile((base + UART_FR) as *const u32) & FR_RXFE != 0 {
            return None;
        }
        Some(core::ptr::read_volatile((base + UART_DR) as *const u32) as u8)
    }
}

pub fn set_base(base: usize) {
    UART_BASE.store(base, Ordering::Relaxed);
}

struct Uart;

impl Uart {
    fn putc(&mut self, c: u8) {
        let base = UART_BASE.load(Ordering::Relaxed);
        // SAFETY: `base` is the PL011 from the host DTB (or virt's), mapped
        // as device memory; FR and DR are 32-bit registers.
        unsafe {
            while core::ptr::read_volatile((base + UART_FR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((base + UART_DR) as *mut u32, c as u32);
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.putc(b'\r');
            }
            self.putc(b);
        }
        Ok(())
    }
}

/// Runs `f` with the console lock held, printing the critical VMs' queued
/// output before it (it came first) and after it (what arrived meanwhile;
/// their vCPUs do not wait for the lock, see [`guest_line`]).
fn locked(f: impl FnOnce(&mut Uart)) {
    {
        let _g = LOCK.lock();
        print_queued();
        f(&mut Uart);
        print_queued();
    }
    drain_after_unlock();
}

/// Bytes a critical VM queued between our last look and the unlock would
/// wait for the next console user: look again with the lock released.
/// The fence pairs with the one in [`queue_output`]: either this load sees
/// the queued bytes or that side's `try_lock` sees the lock free.
fn drain_after_unlock() {
    loop {
        core::sync::atomic::fence(Ordering::SeqCst);
        if !any_queued() {
            return;
        }
        let Some(_g) = LOCK.try_lock() else {
            // The holder looks again after its own unlock.
            return;
        };
        print_queued();
    }
}

/// Writes preformatted text as one unit.
pub fn write_fmt(args: fmt::Arguments) {
    locked(|u| {
        if OPEN_LINE.swap(0, Ordering::Relaxed) != 0 {
            let _ = u.write_str("\n");
        }
        let _ = u.write_fmt(args);
    });
}

/// The VM whose output line is open on the console (printed without its
/// newline yet), as VM index + 1; 0 when the cursor is at a line start.
/// Only changed with LOCK held.
static OPEN_LINE: AtomicUsize = AtomicUsize::new(0);

/// Starts output for VM `id`: closes another VM's open line, and prints the
/// tag unless this VM's line is already open.
/// OPEN_LINE's value while the shell's prompt line is open.
const SHELL_LINE: usize = usize::MAX;

/// Text for the shell's input line (prompt, echo), left open.
pub fn shell_partial(bytes: &[u8]) {
    locked(|u| {
        let open = OPEN_LINE.load(Ordering::Relaxed);
        if open != 0 && open != SHELL_LINE {
            let _ = u.write_str("\n");
        }
        for &b in bytes {
            u.putc(b);
        }
        OPEN_LINE.store(SHELL_LINE, Ordering::Relaxed);
    });
}

/// Plain text lines from the shell (no log prefix).
pub fn shell_fmt(args: fmt::Arguments) {
    write_fmt(args);
}

fn begin_guest_output(u: &mut Uart, id: usize, vm: &str) {
    let open = OPEN_LINE.load(Ordering::Relaxed);
    if open == id + 1 {
        return;
    }
    if open != 0 {
        let _ = u.write_str("\n");
    }
    let _ = write!(u, "[{vm}] ");
}

/// One complete line of a guest's console output, tagged with its VM.
/// A critical VM's goes through its queue (see [`queue_output`]).
pub fn guest_line(vm: &Vm, line: &[u8]) {
    if let Some(q) = &vm.console_queue {
        let mut framed = [0u8; bulkhead_devices::pl011::LINE_MAX + 1];
        let n = line.len().min(framed.len() - 1);
        framed[..n].copy_from_slice(&line[..n]);
        framed[n] = b'\n';
        queue_output(q, &framed[..=n]);
        return;
    }
    locked(|u| print_line(u, vm.id.index(), &vm.name, line));
}

/// The start of a line a guest has not finished (a shell prompt, typed
/// characters echoed back): printed now so an interactive user sees it.
pub fn guest_partial(vm: &Vm, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(q) = &vm.console_queue {
        queue_output(q, bytes);
        return;
    }
    locked(|u| print_partial(u, vm.id.index(), &vm.name, bytes));
}

fn print_line(u: &mut Uart, id: usize, vm: &str, line: &[u8]) {
    begin_guest_output(u, id, vm);
    for &b in line {
        u.putc(b);
    }
    let _ = u.write_str("\n");
    OPEN_LINE.store(0, Ordering::Relaxed);
}

fn print_partial(u: &mut Uart, id: usize, vm: &str, bytes: &[u8]) {
    begin_guest_output(u, id, vm);
    for &b in bytes {
        u.putc(b);
    }
    OPEN_LINE.store(id + 1, Ordering::Relaxed);
}

/// The pCPU that prints queued output nobody else prints (set at boot to
/// where console input is taken: never a critical VM's pCPU if there is
/// another), as (index, MPIDR); `usize::MAX` before then.
static DRAINER: AtomicUsize = AtomicUsize::new(usize::MAX);
static DRAINER_MPIDR: AtomicU64 = AtomicU64::new(0);
/// A kick to the drainer is on its way and has not been served.
static DRAIN_ASKED: AtomicBool = AtomicBool::new(false);

pub fn set_drainer(cpu: usize, mpidr: u64) {
    DRAINER_MPIDR.store(mpidr, Ordering::Relaxed);
    DRAINER.store(cpu, Ordering::Release);
}

/// A critical vCPU's output: queued without waiting (a full queue drops
/// the line and counts it), then printed by whoever holds the console lock
/// when it is released, or by the drainer pCPU, kicked for it. On the
/// drainer pCPU itself it is printed at once if the lock is free.
fn queue_output(q: &OutQueue, bytes: &[u8]) {
    q.put(bytes);
    core::sync::atomic::fence(Ordering::SeqCst);
    let drainer = DRAINER.load(Ordering::Acquire);
    if drainer == usize::MAX || drainer == percpu::this_index_or_boot().index() {
        drain_after_unlock();
    } else if !DRAIN_ASKED.swap(true, Ordering::AcqRel) {
        crate::arch::gic::kick(DRAINER_MPIDR.load(Ordering::Relaxed));
    }
}

/// The drainer's part, on a kick: prints what critical VMs queued.
pub fn kicked() {
    // A plain load first: every kick SGI comes here, almost all for
    // something else.
    if DRAIN_ASKED.load(Ordering::Relaxed) && DRAIN_ASKED.swap(false, Ordering::AcqRel) {
        drain_after_unlock();
    }
}

fn any_queued() -> bool {
    crate::system::vms()
        .iter()
        .filter_map(|vm| vm.console_queue.as_deref())
        .any(|q| !q.is_empty() || q.has_dropped())
}

/// With the lock held: prints every critical VM's queued output, whole
/// lines as lines and a trailing unfinished one as an open line.
fn print_queued() {
    let mut u = Uart;
    for vm in crate::system::vms() {
        let Some(q) = vm.console_queue.as_deref() else {
            continue;
        };
        let id = vm.id.index();
        let mut buf = [0u8; 256];
        loop {
            let n = q.take(&mut buf);
            if n == 0 {
                break;
            }
            let mut rest = &buf[..n];
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                print_partial(&mut u, id, &vm.name, &rest[..end]);
                let _ = u.write_str("\n");
                OPEN_LINE.store(0, Ordering::Relaxed);
                rest = &rest[end + 1..];
            }
            if !rest.is_empty() {
                print_partial(&mut u, id, &vm.name, rest);
            }
        }
        let lost = q.take_dropped();
        if lost != 0 {
            print_line(
                &mut u,
                id,
                &vm.name,
                alloc::format!("(bulkhead: {lost} bytes of this VM's console output dropped: its {}-byte queue was full)", bulkhead_devices::outq::CAPACITY).as_bytes(),
            );
        }
    }
}

/// Makes the console usable from a fatal path: if the lock stays held (the
/// code that faulted may hold it), break it after a bounded wait.
pub fn emergency() {
    for _ in 0..1_000_000 {
        if !LOCK.is_locked() {
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder is either the code this fatal exception
    // interrupted (it will never run again) or a CPU that has stopped making
    // progress; the worst outcome of breaking the lock is interleaved
    // characters in the final report.
    unsafe { LOCK.force_unlock() };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            write_fmt(format_args!(
                "bulkhead {} {:<5} {}\n",
                percpu::this_index_or_boot(),
                record.level(),
                record.args()
            ));
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
