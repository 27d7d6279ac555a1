/*
 * The Vireo probe guest: a few hundred bytes of x86-64 guest code, assembled by the
 * package's own toolchain and kept as data (never executed on the host).
 *
 * The VMM loads it at guest-physical PROBE_CODE (0x10000) and starts the vCPU in 64-bit
 * mode at CPL 0 with paging on (identity map, user-accessible). The CPL 0 part is as small
 * as possible (on PVM hosts CPL 0 is emulated): one marker exit, then iretq to CPL 3 with
 * IOPL 3, where the workloads run natively.
 *
 * Inputs (set by the VMM in the initial registers):
 *   rdi  workload: 0 = PIO exit loop, 1 = MMIO exit loop, 2 = dirty pages, 3 = compute,
 *        4 = jump to rdx (an address with no RAM: instruction fetch from MMIO, which KVM
 *        cannot emulate, so the VMM's handling of KVM internal errors can be tested)
 *   rsi  iterations (loops) or passes (dirty; 0 = forever)
 *   rdx  MMIO address for workload 1
 *   r8   start of the region to dirty, r9 its length (a multiple of 4096)
 *   r10  dirty: nonzero = a marker exit (al = 4) after every 1 MiB written, so the VMM
 *        can pace the guest to a set dirty rate (workload dirty-rate:MIBPS)
 *   rdi = 5: COM1 echo, forever: every byte read from the 16550 at 0x3F8 is written back
 *        to it with a-z uppercased (so an echo provably went through the guest), except
 *        '#', which is answered with 4096 '#' (for output-volume tests); an
 *        empty receiver (LSR.DR clear) idles on port 0xF8 (the VMM returns after input
 *        arrives or about 20 ms; a ring-3 guest cannot HLT)
 *   rdi = 6: pattern. rsi mode (0 compressible: each 8-byte word holds its own address;
 *        1 random: a hash of the address, incompressible; 2 zero; 3 identical: every page
 *        alike, each word its offset in the page), r8/r9 the region, r10 the hot length.
 *        Fills the region, marks 3 on 0xF5, then loops: rewrite the first r10 bytes (the
 *        hot set), read the gate 0xF9; on 1 verify every word of the region and write the
 *        number of pages that differ (eax) to 0xFA.
 * Ports (the VMM's probe device):
 *   0xF4 write: workload finished (the VMM stops the machine, exit status 0)
 *   0xF5 write: marker (al = 1 first instruction, 2 end of a dirty pass,
 *               3 pattern filled, 4 another MiB dirtied by dirty-rate)
 *   0xF6 write: the PIO exit loop's port
 *   0xF8 read:  idle until COM1 has input (echo workload)
 */
    .section .rodata.vireo_probe, "a"
    .globl vireo_probe_code_start
    .globl vireo_probe_code_end
    .code64
vireo_probe_code_start:
    mov     $1, %al
    out     %al, $0xF5                  /* first instruction: the VMM timestamps this exit */
    pushq   $0x1b                       /* SS: user data, GDT index 3, RPL 3 */
    pushq   $0x3F000                    /* user RSP */
    pushq   $0x3002                     /* RFLAGS: IOPL 3, IF 0 */
    pushq   $0x23                       /* CS: user code64, GDT index 4, RPL 3 */
    lea     ring3(%rip), %rax
    push    %rax
    iretq
ring3:
    cmp     $0, %rdi
    je      pio_loop
    cmp     $1, %rdi
    je      mmio_loop
    cmp     $2, %rdi
    je      dirty
    cmp     $3, %rdi
    je      compute
    cmp     $5, %rdi
    je      echo
    cmp     $6, %rdi
    je      pattern
    cmp     $4, %rdi
    jne     done
    jmp     *%rdx
pio_loop:
    mov     $0xF6, %dx
1:  out     %al, %dx
    dec     %rsi
    jnz     1b
    jmp     done
mmio_loop:
    mov     %rdx, %rbx
2:  movl    %eax, (%rbx)
    dec     %rsi
    jnz     2b
    jmp     done
dirty:
3:  mov     %r8, %rbx
    mov     %r9, %rcx
4:  incq    (%rbx)
    add     $4096, %rbx
    sub     $4096, %rcx
    jbe     10f                         /* the pass is done */
    test    %r10, %r10
    jz      4b
    test    $0xFFFFF, %ecx              /* another 1 MiB written: the pacing marker */
    jnz     4b
    mov     $4, %al
    out     %al, $0xF5
    jmp     4b
10: mov     $2, %al
    out     %al, $0xF5
    dec     %rsi
    jnz     3b
    jmp     done
compute:
5:  dec     %rsi
    jnz     5b
    jmp     done
echo:
    mov     $0x3FD, %dx                 /* LSR */
    in      %dx, %al
    test    $1, %al                     /* DR: a received byte is waiting */
    jnz     6f
    in      $0xF8, %al                  /* idle in the VMM until input (or ~20 ms) */
    jmp     echo
6:  mov     $0x3F8, %dx                 /* RBR / THR */
    in      %dx, %al
    cmp     $0x23, %al                  /* '#': a burst of 4096 '#' (output-volume tests) */
    jne     8f
    mov     $4096, %ecx
9:  out     %al, %dx
    dec     %ecx
    jnz     9b
    jmp     echo
8:  cmp     $0x61, %al                  /* 'a' */
    jb      7f
    cmp     $0x7A, %al                  /* 'z' */
    ja      7f
    sub     $0x20, %al
7:  out     %al, %dx
    jmp     echo
pattern:
    mov     %r8, %rbx
    mov     %r9, %rcx
10: call    pval
    mov     %rax, (%rbx)
    add     $8, %rbx
    sub     $8, %rcx
    ja      10b
    mov     $3, %al
    out     %al, $0xF5                  /* filled */
11: mov     %r8, %rbx
    mov     %r10, %rcx
    test    %rcx, %rcx
    jz      13f
12: call    pval                        /* the hot set: rewritten (same values) every pass */
    mov     %rax, (%rbx)
    add     $8, %rbx
    sub     $8, %rcx
    ja      12b
13: in      $0xF9, %al                  /* gate: 1 = verify now */
    test    %al, %al
    jz      11b
    mov     %r8, %rbx
    mov     %r9, %rcx
    xor     %r12, %r12                  /* pages that differ */
14: xor     %r13, %r13
    mov     $512, %r14
15: call    pval
    cmp     %rax, (%rbx)
    je      16f
    mov     $1, %r13
16: add     $8, %rbx
    dec     %r14
    jnz     15b
    add     %r13, %r12
    sub     $4096, %rcx
    ja      14b
    mov     %r12, %rax
    mov     $0xFA, %dx
    out     %eax, %dx
    jmp     11b
/* rax = the pattern's word at address rbx for mode rsi (clobbers r11). */
pval:
    cmp     $2, %rsi
    je      18f
    mov     %rbx, %rax
    cmp     $0, %rsi
    je      17f
    cmp     $3, %rsi
    jne     19f
    and     $0xFFF, %rax
    ret
19: movabs  $0x9E3779B97F4A7C15, %r11
    imul    %r11, %rax
    mov     %rax, %r11
    shr     $29, %r11
    xor     %r11, %rax
    movabs  $0xBF58476D1CE4E5B9, %r11
    imul    %r11, %rax
    mov     %rax, %r11
    shr     $32, %r11
    xor     %r11, %rax
17: ret
18: xor     %eax, %eax
    ret
done:
    xor     %eax, %eax
    out     %al, $0xF4
    jmp     done
vireo_probe_code_end:
    .section .note.GNU-stack, "", @progbits
