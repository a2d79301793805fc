.equ STACK_SIZE, 0x4000

.section .text.head, "ax"
.global _start
_start:
    b       primary
    .long   0
    .quad   0x80000             // text_offset
    .quad   __guest_size
    .quad   0x2                 // little endian, 4 KiB pages
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"
    .long   0

primary:
    mov     x20, x0                     // device tree (arm64 boot protocol)
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  ldr     x1, =DTB_ADDR
    str     x20, [x1]
    mov     x0, #0
    b       common

// PSCI CPU_ON entry: x0 = context id = our vCPU index.
.global secondary_start
secondary_start:
    and     x0, x0, #7
common:
    ldr     x1, =STACKS
    mov     x2, #STACK_SIZE
    madd    x1, x0, x2, x1
    add     sp, x1, x2
    adr     x1, vectors
    msr     vbar_el1, x1
    // FP/SIMD on (CPACR_EL1.FPEN), for code built for the hard-float target.
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    bl      rt_start
3:  wfe
    b       3b

.macro vec kind
    .balign 0x80
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    str     x18, [sp, #144]
    str     x30, [sp, #152]
    mov     x0, #\kind
    b       vec_common
.endm

.balign 2048
vectors:
    vec 0
    vec 1
    vec 2
    vec 3
    vec 4
    vec 5
    vec 6
    vec 7
    vec 8
    vec 9
    vec 10
    vec 11
    vec 12
    vec 13
    vec 14
    vec 15

vec_common:
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    bl      rt_exception            // returns the address to resume at
    msr     elr_el1, x0
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldr     x18, [sp, #144]
    ldr     x30, [sp, #152]
    add     sp, sp, #256
    eret
