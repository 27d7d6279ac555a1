/* Entry of a Vireo probe image: the built-in probe (Sources/CProbeGuest/probe.S) has set up
 * long mode and jumps here in ring 3 with IOPL 3 and every port allowed. */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    mov     $0x7F0000, %rsp          /* stack below 8 MiB, above the image */
    call    probe_main
1:  xor     %eax, %eax
    out     %al, $0xF4               /* done: the VMM (or the QEMU harness) stops */
    jmp     1b
    .section .note.GNU-stack, "", @progbits
