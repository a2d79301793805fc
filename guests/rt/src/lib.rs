//! Runtime for Bulkhead's bare-metal guests. A guest is an arm64 `Image`
//! that runs at EL1 with its MMU off, both under Bulkhead and natively on
//! QEMU virt (for benchmarks). It talks to the PL011 at 0x0900_0000 and to
//! PSCI over HVC, and can probe an address and learn whether it faulted.
#![no_std]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

global_asm!(include_str!("entry.S"));

pub const MAX_VCPUS: usize = 8;
const STACK_SIZE: usize = 0x4000;

#[repr(C, align(16))]
pub struct Stacks([u8; STACK_SIZE * MAX_VCPUS]);

#[unsafe(no_mangle)]
static STACKS: Stacks = Stacks([0; STACK_SIZE * MAX_VCPUS]);

pub const UART: usize = 0x0900_0000;
const UART_DR: usize = 0x000;
const UART_FR: usize = 0x018;
const FR_TXFF: u32 = 1 << 5;

unsafe extern "C" {
    static __guest_end: u8;
    fn secondary_start();
    fn guest_main() -> !;
}

/// First free byte of RAM after the image (4 KiB aligned).
pub fn image_end() -> usize {
    core::ptr::addr_of!(__guest_end) as usize
}

/// The entry point to give PSCI CPU_ON for a secondary vCPU; its context id
/// must be the vCPU index.
pub fn secondary_entry() -> u64 {
    secondary_start as *const () as u64
}

static SECONDARY: AtomicUsize = AtomicUsize::new(0);

/// The device tree address the guest was entered with (x0).
#[unsafe(no_mangle)]
static DTB_ADDR: AtomicUsize = AtomicUsize::new(0);

/// The device tree the guest booted with, bounded by its header's
/// totalsize (at most 64 KiB); `None` without an FDT magic at x0.
pub fn dtb() -> Option<&'static [u8]> {
    let dtb = DTB_ADDR.load(Ordering::SeqCst);
    if dtb == 0 || mmio_read32(dtb) != 0xedfe_0dd0 {
        return None;
    }
    let total = (mmio_read32(dtb + 4).swap_bytes() as usize).min(64 << 10);
    // SAFETY: the blob lies in our RAM (the hypervisor or QEMU put it
    // there), is never written after entry, and `total` is bounded by the
    // 64 KiB the hypervisor reserves for it.
    Some(unsafe { core::slice::from_raw_parts(dtb as *const u8, total) })
}

/// True if the device tree the guest booted with contains `needle` (e.g. a
/// word of /chosen/bootargs). A crude byte search over the blob, bounded by
/// its header's totalsize (at most 64 KiB).
pub fn dtb_contains(needle: &[u8]) -> bool {
    let dtb = DTB_ADDR.load(Ordering::SeqCst);
    if dtb == 0 || needle.is_empty() || mmio_read32(dtb) != 0xedfe_0dd0 {
        return false;
    }
    let total = (mmio_read32(dtb + 4).swap_bytes() as usize).min(64 << 10);
    let byte = |i: usize| {
        // SAFETY: inside the device tree blob, which is in our RAM.
        unsafe { core::ptr::read_volatile((dtb + i) as *const u8) }
    };
    (0..total.saturating_sub(needle.len()))
        .any(|i| needle.iter().enumerate().all(|(j, &b)| byte(i + j) == b))
}

/// [`dtb_contains`] searched once: `cache` starts at 2 ("not looked
/// yet") and keeps the answer (0 or 1), for flags asked about in loops.
pub fn dtb_flag(cache: &core::sync::atomic::AtomicUsize, word: &[u8]) -> bool {
    match cache.load(Ordering::Relaxed) {
        2 => {
            let f = dtb_contains(word);
            cache.store(f as usize, Ordering::Relaxed);
            f
        }
        f => f == 1,
    }
}

/// The decimal value after `key` (e.g. `b"safety.seconds="`) in the
/// device tree (the bootargs), if present.
pub fn dtb_value(key: &[u8]) -> Option<u64> {
    let dtb = DTB_ADDR.load(Ordering::SeqCst);
    if dtb == 0 || key.is_empty() || mmio_read32(dtb) != 0xedfe_0dd0 {
        return None;
    }
    let total = (mmio_read32(dtb + 4).swap_bytes() as usize).min(64 << 10);
    let byte = |i: usize| {
        // SAFETY: inside the device tree blob, which is in our RAM.
        unsafe { core::ptr::read_volatile((dtb + i) as *const u8) }
    };
    let at = (0..total.saturating_sub(key.len()))
        .find(|&i| key.iter().enumerate().all(|(j, &b)| byte(i + j) == b))?;
    let mut v: u64 = 0;
    let mut digits = 0;
    for i in at + key.len()..total {
        let b = byte(i);
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(v)
}

static IRQ_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Sets the function called for every IRQ taken at EL1 (it acknowledges
/// and completes the interrupt itself).
pub fn set_irq_handler(f: fn()) {
    IRQ_HANDLER.store(f as usize, Ordering::SeqCst);
}

/// Sets what secondary vCPUs run (with their index) once started.
pub fn set_secondary_main(f: fn(usize) -> !) {
    SECONDARY.store(f as usize, Ordering::SeqCst);
}

#[unsafe(no_mangle)]
extern "C" fn rt_start(index: usize) -> ! {
    if index == 0 {
        // SAFETY: `guest_main` is defined by the guest binary.
        unsafe { guest_main() }
    }
    let f = SECONDARY.load(Ordering::SeqCst);
    if f == 0 {
        println!("FAIL vcpu {index} started but no secondary entry was set");
        system_off();
    }
    // SAFETY: SECONDARY only ever holds a `fn(usize) -> !` (see above).
    let f: fn(usize) -> ! = unsafe { core::mem::transmute::<usize, fn(usize) -> !>(f) };
    f(index)
}

/// 32-bit MMIO load, as one `ldr w` (a hypervisor can decode it).
pub fn mmio_read32(addr: usize) -> u32 {
    let v: u32;
    // SAFETY: the guest only names device addresses; a fault is handled by
    // the exception vector.
    unsafe { asm!("ldr {0:w}, [{1}]", out(reg) v, in(reg) addr, options(nostack)) };
    v
}

/// 32-bit MMIO store, as one `str w`.
pub fn mmio_write32(addr: usize, v: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { asm!("str {0:w}, [{1}]", in(reg) v, in(reg) addr, options(nostack)) };
}

/// 64-bit load from any address, as one `ldr x`.
pub fn read64(addr: usize) -> u64 {
    let v: u64;
    // SAFETY: probing is the point; a fault is caught by `probe`.
    unsafe { asm!("ldr {0}, [{1}]", out(reg) v, in(reg) addr, options(nostack)) };
    v
}

/// 64-bit store to any address, as one `str x`.
pub fn write64(addr: usize, v: u64) {
    // SAFETY: as for `read64`.
    unsafe { asm!("str {0}, [{1}]", in(reg) v, in(reg) addr, options(nostack)) };
}

static CONSOLE: AtomicBool = AtomicBool::new(false);

fn putc(c: u8) {
    while mmio_read32(UART + UART_FR) & FR_TXFF != 0 {}
    mmio_write32(UART + UART_DR, c as u32);
}

pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            putc(b);
        }
        Ok(())
    }
}

/// Prints one formatted line atomically with respect to other vCPUs.
pub fn print_fmt(args: fmt::Arguments) {
    while CONSOLE.swap(true, Ordering::Acquire) {
        relax();
    }
    let _ = Console.write_fmt(args);
    CONSOLE.store(false, Ordering::Release);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// An SMCCC call over HVC; returns x0 and x1.
pub fn hvc(fid: u32, a1: u64, a2: u64, a3: u64) -> (u64, u64) {
    let mut x0 = fid as u64;
    let mut x1 = a1;
    // SAFETY: an SMCCC call; x2-x17 may be clobbered.
    unsafe {
        asm!("hvc #0", inout("x0") x0, inout("x1") x1, inout("x2") a2 => _, inout("x3") a3 => _,
             out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
             out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
             out("x16") _, out("x17") _, options(nostack))
    };
    (x0, x1)
}

/// An SMCCC call over SMC (trapped by the hypervisor).
pub fn smc(fid: u32, a1: u64, a2: u64, a3: u64) -> (u64, u64) {
    let mut x0 = fid as u64;
    let mut x1 = a1;
    // SAFETY: as for `hvc`.
    unsafe {
        asm!("smc #0", inout("x0") x0, inout("x1") x1, inout("x2") a2 => _, inout("x3") a3 => _,
             out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
             out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
             out("x16") _, out("x17") _, options(nostack))
    };
    (x0, x1)
}

pub mod psci {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON: u32 = 0xC400_0003;
    pub const AFFINITY_INFO: u32 = 0xC400_0004;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000A;
    pub const BULKHEAD_NULL: u32 = 0xC600_0000;
    pub const BULKHEAD_VM_INFO: u32 = 0xC600_0001;
    /// x0 = ticks the caller's last virtual-timer interrupt was late on
    /// arrival at EL2.
    pub const BULKHEAD_TIMER_LATE: u32 = 0xC600_0002;
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const ALREADY_ON: i64 = -4;
    pub const INVALID_ADDRESS: i64 = -9;
}

/// PSCI SYSTEM_OFF: stops this VM (or QEMU, natively).
pub fn system_off() -> ! {
    hvc(psci::SYSTEM_OFF, 0, 0, 0);
    halt()
}

/// PSCI SYSTEM_RESET: restarts this VM from a fresh image.
pub fn system_reset() -> ! {
    hvc(psci::SYSTEM_RESET, 0, 0, 0);
    halt()
}

/// PSCI CPU_OFF for the calling vCPU.
pub fn cpu_off() -> ! {
    hvc(psci::CPU_OFF, 0, 0, 0);
    halt()
}

/// A spin-wait step. `yield`, not `core::hint::spin_loop` (an `isb` on
/// AArch64): under QEMU's round-robin (`-icount`) scheduling only `yield`
/// hands the host thread to the other vCPUs, without it a waiting vCPU can
/// spin through its whole time slice while the one it waits for never runs.
pub fn relax() {
    // SAFETY: YIELD is a hint with no architectural effect.
    unsafe { asm!("yield", options(nomem, nostack)) };
}

pub fn halt() -> ! {
    loop {
        // SAFETY: WFE has no memory effects.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// The virtual counter (1 GHz under `-cpu max`: one tick per instruction
/// under `-icount shift=0`).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects; the ISB keeps it
    // ordered with the code being measured.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", "isb", out(reg) v, options(nomem, nostack)) };
    v
}

/// The calling vCPU's index (MPIDR_EL1.Aff0 + 16 * Aff1).
pub fn vcpu_index() -> usize {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    ((v & 0xff) + 16 * ((v >> 8) & 0xff)) as usize
}

/// A synchronous exception the guest caught while probing.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    pub esr: u64,
    pub far: u64,
}

impl Fault {
    pub fn ec(&self) -> u64 {
        self.esr >> 26
    }
}

static EXPECTING: AtomicBool = AtomicBool::new(false);
static FAULT_ESR: AtomicU64 = AtomicU64::new(0);
static FAULT_FAR: AtomicU64 = AtomicU64::new(0);
static FAULTED: AtomicBool = AtomicBool::new(false);

/// Runs `f`, which may fault once; the faulting instruction is skipped.
/// Returns Err with the syndrome if it faulted. Only one vCPU may probe at a
/// time.
pub fn probe<T>(f: impl FnOnce() -> T) -> Result<T, Fault> {
    FAULTED.store(false, Ordering::SeqCst);
    EXPECTING.store(true, Ordering::SeqCst);
    let v = f();
    EXPECTING.store(false, Ordering::SeqCst);
    if FAULTED.load(Ordering::SeqCst) {
        Err(Fault {
            esr: FAULT_ESR.load(Ordering::SeqCst),
            far: FAULT_FAR.load(Ordering::SeqCst),
        })
    } else {
        Ok(v)
    }
}

#[unsafe(no_mangle)]
extern "C" fn rt_exception(kind: u64, esr: u64, far: u64, elr: u64) -> u64 {
    // Synchronous exceptions from EL1 itself (vector 4) are what probing provokes.
    if kind == 4 && EXPECTING.load(Ordering::SeqCst) && !FAULTED.load(Ordering::SeqCst) {
        FAULT_ESR.store(esr, Ordering::SeqCst);
        FAULT_FAR.store(far, Ordering::SeqCst);
        FAULTED.store(true, Ordering::SeqCst);
        return elr + 4;
    }
    // IRQ from EL1 with SP_EL1 (vector 5).
    if kind == 5 {
        let f = IRQ_HANDLER.load(Ordering::SeqCst);
        if f != 0 {
            // SAFETY: IRQ_HANDLER only ever holds a `fn()` (set_irq_handler).
            let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(f) };
            f();
            return elr;
        }
    }
    println!("FAIL unexpected exception kind={kind} esr={esr:#x} far={far:#x} elr={elr:#x}");
    system_off()
}

/// The GICv3 as QEMU virt lays it out (natively the real one, under
/// Bulkhead the VM's virtual one: the same code drives both).
pub mod gic {
    use super::{mmio_read32, mmio_write32};
    use core::arch::asm;

    pub const GICD: usize = 0x0800_0000;
    pub const GICR: usize = 0x080A_0000;
    const GICR_STRIDE: usize = 0x2_0000;
    const SGI_BASE: usize = 0x1_0000;

    /// Distributor on with affinity routing, Group 1 enabled.
    pub fn init_distributor() {
        mmio_write32(GICD, (1 << 4) | (1 << 1));
        while mmio_read32(GICD) & (1 << 31) != 0 {}
    }

    /// This vCPU's redistributor awake, `ppis_sgis` (a mask of INTIDs 0-31)
    /// enabled in Group 1 at priority 0x80; CPU interface on.
    pub fn init_cpu(index: usize, ppis_sgis: u32) {
        let rd = GICR + index * GICR_STRIDE;
        let waker = mmio_read32(rd + 0x14);
        mmio_write32(rd + 0x14, waker & !(1 << 1));
        while mmio_read32(rd + 0x14) & (1 << 2) != 0 {}
        mmio_write32(rd + SGI_BASE + 0x80, 0xffff_ffff);
        for w in 0..8 {
            mmio_write32(rd + SGI_BASE + 0x400 + 4 * w, 0x8080_8080);
        }
        mmio_write32(rd + SGI_BASE + 0x100, ppis_sgis);
        // SAFETY: GIC CPU interface system registers of this vCPU.
        unsafe {
            asm!(
                "mrs {t}, icc_sre_el1", "orr {t}, {t}, #1", "msr icc_sre_el1, {t}", "isb",
                "msr icc_pmr_el1, {ff}", "msr icc_igrpen1_el1, {one}", "isb",
                t = out(reg) _, ff = in(reg) 0xffu64, one = in(reg) 1u64, options(nostack)
            )
        };
    }

    /// SPI `intid` in Group 1 at `priority` (lower is more urgent; the
    /// PPIs and SGIs of `init_cpu` are at 0x80), routed to vCPU 0, enabled.
    pub fn enable_spi(intid: u32, priority: u8) {
        let (word, bit) = ((intid / 32) as usize, 1u32 << (intid % 32));
        let group = GICD + 0x80 + 4 * word;
        mmio_write32(group, mmio_read32(group) | bit);
        let prio = GICD + 0x400 + (intid as usize & !3);
        let shift = 8 * (intid % 4);
        mmio_write32(
            prio,
            (mmio_read32(prio) & !(0xff << shift)) | (u32::from(priority) << shift),
        );
        super::write64(GICD + 0x6000 + 8 * intid as usize, 0);
        mmio_write32(GICD + 0x100 + 4 * word, bit);
    }

    /// SGI `intid` to the vCPU with index `target` (Aff0 = index % 16).
    pub fn send_sgi(target: usize, intid: u32) {
        let v = ((intid as u64) << 24) | (((target / 16) as u64) << 16) | (1u64 << (target % 16));
        // SAFETY: generating an SGI.
        unsafe { asm!("dsb ish", "msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack)) };
    }

    /// Acknowledge: the INTID (1023 when nothing is pending).
    pub fn ack() -> u32 {
        let v: u64;
        // SAFETY: reading IAR acknowledges; callers EOI it.
        unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) v, options(nostack)) };
        (v & 0xff_ffff) as u32
    }

    /// End of interrupt (priority drop and deactivation, EOImode 0).
    pub fn eoi(intid: u32) {
        // SAFETY: completes an interrupt we acknowledged.
        unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid as u64, options(nostack)) };
    }

    /// Unmask IRQs at EL1.
    pub fn enable_irqs() {
        // SAFETY: the IRQ vector is installed by the runtime.
        unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
    }

    pub fn disable_irqs() {
        // SAFETY: masking IRQs has no memory effects.
        unsafe { asm!("msr daifset, #2", "isb", options(nostack)) };
    }
}

/// The EL1 virtual timer.
pub mod vtimer {
    use core::arch::asm;

    /// Fire at virtual counter value `cval`.
    pub fn arm(cval: u64) {
        // SAFETY: this vCPU's own virtual timer.
        unsafe {
            asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) cval, in(reg) 1u64, options(nostack))
        };
    }

    pub fn disarm() {
        // SAFETY: as for `arm`.
        unsafe { asm!("msr cntv_ctl_el0, xzr", "isb", options(nostack)) };
    }
}

/// The EL1 physical timer as a *masked* deadline: it never interrupts, but
/// QEMU keeps a timer event for it. Under `-icount` QEMU runs every vCPU on
/// one host thread in turns, and a turn lasts until the nearest timer event
/// of the whole machine: a vCPU that loses its turn in the middle of work
/// waits until the other vCPUs' turns end, which can be milliseconds when
/// no event is near. A masked deadline shortly after the work bounds that
/// wait. On a board (one core per pCPU) it does nothing at all.
pub mod guard {
    use core::arch::asm;

    /// A masked physical-timer event at virtual counter value `cval`
    /// (relative to now, so CNTVOFF does not matter).
    pub fn at(cval: u64) {
        let ticks = cval.saturating_sub(crate::counter()).min(i32::MAX as u64);
        // SAFETY: this vCPU's own physical timer; ENABLE with IMASK set, so
        // its output never asserts an interrupt.
        unsafe {
            asm!("msr cntp_tval_el0, {}", "msr cntp_ctl_el0, {}", "isb", in(reg) ticks, in(reg) 0b11u64, options(nostack))
        };
    }

    pub fn disarm() {
        // SAFETY: as for `at`.
        unsafe { asm!("msr cntp_ctl_el0, xzr", "isb", options(nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("FAIL guest panic: {info}");
    system_off()
}
