/*
 * Multiboot (v1) trampoline so QEMU can run the same probe image: QEMU's -kernel loads this
 * flat file at 0x200000 and enters it in 32-bit protected mode after SeaBIOS. It builds what
 * Vireo's ProbeGuest builds (GDT, TSS with an all-zero I/O bitmap, identity page tables over
 * 4 GiB with user access), enters long mode and irets to ring 3 at 0x100000, where the probe
 * image (loaded with -device loader) starts. Page tables at 0x300000..0x305FFF.
 */
    .section .text.start, "ax"
    .code32
    .globl _start
_start:
    .balign 4
mb_header:
    .long 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    .long mb_header, 0x200000, 0, 0, entry32
entry32:
    cli
    mov     $0x300000, %edi
    xor     %eax, %eax
    mov     $(0x6000 / 4), %ecx
    rep stosl
    movl    $0x301007, 0x300000
    mov     $0, %ecx
1:  mov     %ecx, %eax
    shl     $12, %eax
    add     $0x302007, %eax
    mov     %eax, 0x301000(,%ecx,8)
    inc     %ecx
    cmp     $4, %ecx
    jne     1b
    mov     $0, %ecx
2:  mov     %ecx, %eax
    shl     $21, %eax
    or      $0x87, %eax
    mov     %eax, 0x302000(,%ecx,8)
    mov     %ecx, %eax
    shr     $11, %eax
    mov     %eax, 0x302004(,%ecx,8)
    inc     %ecx
    cmp     $2048, %ecx
    jne     2b
    mov     $0x300000, %eax
    mov     %eax, %cr3
    mov     %cr4, %eax
    or      $0x20, %eax
    mov     %eax, %cr4
    mov     $0xC0000080, %ecx
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     %cr0, %eax
    or      $0x80000031, %eax
    mov     %eax, %cr0
    lgdt    gdtr
    ljmp    $0x08, $long64
    .code64
long64:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $0x28, %ax
    ltr     %ax
    mov     $0x1F0000, %rsp
    pushq   $0x1b
    pushq   $0x7F0000
    pushq   $0x3002
    pushq   $0x23
    pushq   $0x100000
    iretq
    .balign 16
gdtr:
    .word   7 * 8 - 1
    .long   gdt
    .balign 16
gdt:
    .quad 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF
    .quad 0x0000892020002068, 0       /* 64-bit TSS at 0x202000, limit 0x2068 */
    .org 0x2000
tss:
    .long 0
    .quad 0x1F0000                    /* RSP0 */
    .fill 0x66 - 12, 1, 0
    .word 0x68                        /* I/O bitmap right after the TSS */
    .fill 0x2000, 1, 0                /* all ports allowed at CPL 3 */
    .byte 0xFF
    .section .note.GNU-stack, "", @progbits
