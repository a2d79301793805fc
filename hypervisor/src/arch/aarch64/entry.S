// Boot entry for the primary and secondary CPUs, and the EL2 exception
// vectors. Everything else is Rust.

.equ STACK_GUARD,   0x1000
.equ STACK_SIZE,    0x10000
.equ STACK_EMERG,   0x2000
.equ STACK_STRIDE,  (STACK_GUARD + STACK_SIZE + STACK_EMERG)
.equ FRAME_SIZE,    256

// ---------------------------------------------------------------------------
// arm64 Image header (Linux Documentation/arch/arm64/booting.rst), so that
// QEMU's -kernel and U-Boot's booti start us at EL2 with the DTB in x0.
// ---------------------------------------------------------------------------
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry
    .long   0
    .quad   0x200000            // text_offset: 2 MiB above the RAM base
    .quad   0                   // image_size: patched by `cargo xtask build`
    .quad   0x2                 // flags: little endian, 4 KiB pages
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"
    .long   0

primary_entry:
    mov     x19, x0                     // host DTB
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    boot_halt                   // not entered at EL2: nothing we can do
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    boot_halt                   // loaded away from the link address

    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:
    mov     x0, #0
    bl      stack_top_for
    mov     sp, x0
    adr     x1, el2_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      primary_main
    b       boot_halt

// Entry for CPUs started through PSCI CPU_ON; x0 = our CPU index.
.global secondary_entry
secondary_entry:
    mov     x19, x0
    bl      stack_top_for
    mov     sp, x0
    ldr     x1, =SECONDARY_MMU
    ldr     x2, [x1, #0]
    msr     mair_el2, x2
    ldr     x2, [x1, #8]
    msr     tcr_el2, x2
    ldr     x2, [x1, #16]
    msr     ttbr0_el2, x2
    isb
    tlbi    alle2
    dsb     nsh
    isb
    ldr     x2, [x1, #24]
    msr     sctlr_el2, x2
    isb
    adr     x1, el2_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      secondary_main
    b       boot_halt

// x0 = CPU index -> x0 = top of its stack. Clobbers x1, x2.
stack_top_for:
    ldr     x1, =__stacks_start
    ldr     x2, =STACK_STRIDE
    madd    x1, x0, x2, x1
    ldr     x2, =(STACK_GUARD + STACK_SIZE)
    add     x0, x1, x2
    ret

boot_halt:
    wfe
    b       boot_halt

// ---------------------------------------------------------------------------
// enter_guest(entry: &GuestEntry, stack_top) -> !
// Discards the current EL2 stack and erets into the guest with the given
// x0, ELR_EL2 and SPSR_EL2; every other GPR is zero so nothing of the
// hypervisor's leaks.
// ---------------------------------------------------------------------------
.section .text
.global enter_guest
enter_guest:
    mov     sp, x1
    ldp     x2, x3, [x0, #8]            // elr, spsr
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldr     x0, [x0, #0]                // x0 for the guest
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    eret

// resume_guest(regs: &GuestRegs, stack_top) -> !
// Discards the current EL2 stack and erets into a vCPU whose registers were
// saved when it last left its pCPU: x0-x30, then ELR_EL2 and SPSR_EL2.
// ---------------------------------------------------------------------------
.global resume_guest
resume_guest:
    mov     sp, x1
    ldp     x2, x3, [x0, #248]          // elr, spsr
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

// reset_stack_and_call(stack_top, f: extern "C" fn() -> !) -> !
.global reset_stack_and_call
reset_stack_and_call:
    mov     sp, x0
    br      x1

// ---------------------------------------------------------------------------
// EL2 exception vectors (Arm ARM D1.10.2, "Exception vectors").
// Traps from the guest save all 31 GPRs in a TrapFrame on the EL2 stack and
// call Rust; the guest's ELR/SPSR stay in their registers. Exceptions taken
// from EL2 itself are hypervisor bugs: they switch to the per-CPU emergency
// stack (so a stack overflow can still be reported) and never return.
// ---------------------------------------------------------------------------
.macro save_frame
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
.endm

.macro vector_lower handler
    .balign 0x80
    save_frame
    mov     x0, sp
    bl      \handler
    b       restore_frame_and_eret
.endm

// The interrupted SP is kept in the frame's last slot (TrapFrame::el2_sp),
// so a stack overflow can be reported with it; the switch keeps it in x0 as
// a difference because x0 is the only free register.
.macro vector_unexpected kind
    .balign 0x80
    msr     sp_el0, x0                  // the guest's SP_EL0; this path never resumes a guest
    mrs     x0, tpidr_el2               // &PerCpu; its first field is the emergency stack top
    ldr     x0, [x0]
    sub     x0, sp, x0                  // x0 = interrupted SP - emergency top
    sub     sp, sp, x0                  // sp = emergency top
    add     x0, sp, x0                  // x0 = interrupted SP
    str     x0, [sp, #-8]               // frame offset 248 once save_frame has run
    mrs     x0, sp_el0
    save_frame
    mov     x0, sp
    mov     x1, #\kind
    b       unexpected_exception
.endm

.balign 2048
.global el2_vectors
el2_vectors:
    vector_unexpected 0     // current EL, SP_EL0: sync
    vector_unexpected 1     //   irq
    vector_unexpected 2     //   fiq
    vector_unexpected 3     //   serror
    vector_unexpected 4     // current EL, SP_ELx: sync
    vector_unexpected 5     //   irq
    vector_unexpected 6     //   fiq
    vector_unexpected 7     //   serror
    vector_lower handle_lower_sync      // lower EL, AArch64: sync
    vector_lower handle_lower_irq       //   irq
    vector_lower handle_lower_fiq       //   fiq
    vector_lower handle_lower_serror    //   serror
    vector_lower handle_lower_aarch32   // lower EL, AArch32: sync
    vector_lower handle_lower_aarch32   //   irq
    vector_lower handle_lower_aarch32   //   fiq
    vector_lower handle_lower_aarch32   //   serror

restore_frame_and_eret:
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #FRAME_SIZE
    eret
