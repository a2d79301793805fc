//! Everything that touches an AArch64 register or instruction. The policy
//! above this module (VMs, traps, devices) is plain Rust.

pub mod cache;
pub mod context;
pub mod firmware;
pub mod gic;
pub mod ich;
pub mod mmu;
pub mod mmu_check;
pub mod regs;

use core::arch::global_asm;

global_asm!(include_str!("entry.S"));

/// Bytes of one CPU's stack area: guard page, stack, emergency stack.
pub const STACK_GUARD: usize = 0x1000;
pub const STACK_SIZE: usize = 0x10000;
pub const STACK_EMERG: usize = 0x2000;
pub const STACK_STRIDE: usize = STACK_GUARD + STACK_SIZE + STACK_EMERG;
pub const MAX_CPUS: usize = 8;

#[repr(C, align(4096))]
pub struct StackArea([u8; STACK_STRIDE * MAX_CPUS]);

/// The per-CPU stacks; placed by the linker script in `.stacks`, so that
/// the guard pages sit at known addresses the EL2 map leaves out.
#[unsafe(link_section = ".stacks")]
#[used]
pub static STACKS: StackArea = StackArea([0; STACK_STRIDE * MAX_CPUS]);

unsafe extern "C" {
    static __hv_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stacks_start: u8;
    static __stacks_end: u8;
    static __hv_end: u8;
    fn enter_guest(entry: &GuestEntry, stack_top: usize) -> !;
    fn resume_guest(regs: &GuestRegs, stack_top: usize) -> !;
    fn reset_stack_and_call(stack_top: usize, f: extern "C" fn() -> !) -> !;
    pub fn secondary_entry();
}

/// Addresses of the hypervisor image's parts, from the linker script.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub start: usize,
    pub text_end: usize,
    pub rodata_end: usize,
    pub stacks_start: usize,
    pub stacks_end: usize,
    pub end: usize,
}

pub fn image_layout() -> ImageLayout {
    ImageLayout {
        start: core::ptr::addr_of!(__hv_start) as usize,
        text_end: core::ptr::addr_of!(__text_end) as usize,
        rodata_end: core::ptr::addr_of!(__rodata_end) as usize,
        stacks_start: core::ptr::addr_of!(__stacks_start) as usize,
        stacks_end: core::ptr::addr_of!(__stacks_end) as usize,
        end: core::ptr::addr_of!(__hv_end) as usize,
    }
}

/// Top of CPU `cpu`'s normal stack (matches `stack_top_for` in entry.S).
pub fn stack_top(cpu: usize) -> usize {
    image_layout().stacks_start + cpu * STACK_STRIDE + STACK_GUARD + STACK_SIZE
}

/// Top of CPU `cpu`'s emergency stack, used by the unexpected-exception path.
pub fn emergency_stack_top(cpu: usize) -> usize {
    image_layout().stacks_start + (cpu + 1) * STACK_STRIDE
}

/// The guard page below CPU `cpu`'s stack.
pub fn guard_page(cpu: usize) -> usize {
    image_layout().stacks_start + cpu * STACK_STRIDE
}

/// The guest's general-purpose registers as saved by the vector (entry.S).
#[repr(C)]
pub struct TrapFrame {
    pub x: [u64; 31],
    /// Only for an exception taken from EL2 itself: the stack pointer at
    /// the moment of the exception (the vector then moves to the emergency
    /// stack). Unset for traps from a guest.
    el2_sp: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 256);

impl TrapFrame {
    /// The interrupted EL2 stack pointer; meaningful only in the
    /// unexpected-exception path (`el2_vectors` entries 0-7).
    pub fn interrupted_el2_sp(&self) -> u64 {
        self.el2_sp
    }

    /// Register `n` as an instruction operand names it: 31 is XZR.
    pub fn reg(&self, n: u8) -> u64 {
        self.x.get(n as usize).copied().unwrap_or(0)
    }

    /// Writes register `n`; writes to XZR (31) are discarded.
    pub fn set_reg(&mut self, n: u8, value: u64) {
        if let Some(r) = self.x.get_mut(n as usize) {
            *r = value;
        }
    }
}

/// What `enter_guest` loads: the guest's x0, ELR_EL2 and SPSR_EL2.
#[repr(C)]
pub struct GuestEntry {
    pub x0: u64,
    pub pc: u64,
    pub spsr: u64,
}

/// SPSR for a fresh vCPU: EL1h, AArch64, D/A/I/F masked (Linux booting.rst).
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Leaves EL2 for the guest. Never returns: the next trap starts on a fresh
/// stack frame at `stack_top`.
pub fn run_guest(entry: &GuestEntry, stack_top: usize) -> ! {
    // SAFETY: `stack_top` is this CPU's own stack top; everything on the
    // current stack is abandoned, which is fine because nothing borrowed from
    // it outlives this call (the function never returns).
    unsafe { enter_guest(entry, stack_top) }
}

/// A vCPU's general-purpose registers and its return state, kept while it
/// is off its pCPU (pool vCPUs); `resume_guest` in entry.S reads this layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GuestRegs {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
}

const _: () = assert!(core::mem::offset_of!(GuestRegs, elr) == 248);

impl GuestRegs {
    pub const fn zero() -> GuestRegs {
        GuestRegs {
            x: [0; 31],
            elr: 0,
            spsr: 0,
        }
    }
}

/// Leaves EL2 for a vCPU with every general-purpose register as `regs`
/// holds it. Never returns, like [`run_guest`].
pub fn resume(regs: &GuestRegs, stack_top: usize) -> ! {
    // SAFETY: as for `run_guest`: the stack is this CPU's own and nothing
    // borrowed from it outlives the call; `regs` is read before the eret.
    unsafe { resume_guest(regs, stack_top) }
}

/// Abandons the current stack and continues in `f` on a fresh one.
pub fn restart_on_stack(stack_top: usize, f: extern "C" fn() -> !) -> ! {
    // SAFETY: as for `run_guest`: `f` never returns, so no frame of the
    // abandoned stack is used again.
    unsafe { reset_stack_and_call(stack_top, f) }
}

/// Waits for an interrupt (physical IRQs stay masked at EL2; WFI still wakes
/// on a pending one, which the caller then acknowledges).
/// A full barrier for memory shared with other CPUs and coherent devices
/// (`dmb ish`): the virtqueue protocol's ordering between an index and
/// what it covers.
pub fn dmb_ish() {
    // SAFETY: a barrier; no memory or register is changed.
    unsafe { core::arch::asm!("dmb ish", options(nostack, preserves_flags)) };
}

pub fn wait_for_interrupt() {
    // SAFETY: WFI has no memory effects.
    unsafe { core::arch::asm!("dsb sy", "wfi", options(nostack)) };
}

/// Asks QEMU to exit with status `code`: semihosting SYS_EXIT (operation
/// 0x18) with reason ADP_Stopped_ApplicationExit (0x20026) and `code` as
/// the subcode, in the parameter block AArch64 uses (Arm "Semihosting for
/// AArch32 and AArch64"). Only self-test images call it, and their test
/// starts QEMU with semihosting on; elsewhere `HLT #0xF000` is undefined.
#[cfg(feature = "selftest-stack-overflow")]
pub fn semihosting_exit(code: u64) {
    let block = [0x2_0026u64, code];
    // SAFETY: with semihosting on, QEMU reads the two-word block and exits;
    // with it off, the HLT is an undefined instruction taken at EL2, which
    // the caller expects. No memory of ours is written.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") 0x18u64,
            in("x1") block.as_ptr(),
            options(nostack, readonly)
        )
    };
}

/// Stops this CPU for good (used after a fatal error).
pub fn halt() -> ! {
    loop {
        // SAFETY: WFE has no memory effects.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}
