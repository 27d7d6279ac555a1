/*
 * The plain-C peer for `vireo bench exits`: the same probe guest (Sources/CProbeGuest/probe.S),
 * the same guest layout (GDT, TSS with I/O bitmap, identity page tables) and the same timing
 * (first-instruction marker to done), driven by the smallest possible C exit loop. It shows
 * what the exit round trip costs with no VMM around it at all.
 *
 * Build: cc -O2 -o c-kvm-loop bench/c-kvm-loop.c Sources/CProbeGuest/probe.S Sources/CProbeGuest/probe.c -ISources/CProbeGuest/include
 * Run:   ./c-kvm-loop 100000
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "CProbeGuest.h"

#define MEM (64ul << 20)
static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static void die(const char *m) { perror(m); exit(1); }

static double run(int kvm, int workload, uint64_t n) {
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
    uint8_t *m = mmap(0, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = MEM, .userspace_addr = (uint64_t)m };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
    uint64_t gdt[7] = { 0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x00cff3000000ffff, 0x00affb000000ffff,
                        0x0000890000002068ull | (0x2000ull << 16), 0 };
    memcpy(m + 0x1000, gdt, sizeof gdt);
    *(uint64_t *)(m + 0x2004) = 0x1f000;
    *(uint16_t *)(m + 0x2066) = 0x68;
    m[0x2000 + 0x2068] = 0xff;
    *(uint64_t *)(m + 0x5000) = 0x6000 | 7;
    for (uint64_t i = 0; i < 4; i++) {
        *(uint64_t *)(m + 0x6000 + i * 8) = (0x7000 + i * 0x1000) | 7;
        for (uint64_t j = 0; j < 512; j++) *(uint64_t *)(m + 0x7000 + i * 0x1000 + j * 8) = (i << 30) | (j << 21) | 0x87;
    }
    size_t len; const unsigned char *code = vireo_probe_code(&len);
    memcpy(m + 0x10000, code, len);

    int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } cpuid = { .h.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0 || ioctl(cpu, KVM_SET_CPUID2, &cpuid) < 0) die("CPUID");
    struct kvm_sregs s; ioctl(cpu, KVM_GET_SREGS, &s);
    struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment ds = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1 };
    struct kvm_segment tr = { .base = 0x2000, .limit = 0x2068, .selector = 0x28, .type = 11, .present = 1 };
    s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds; s.tr = tr;
    s.gdt.base = 0x1000; s.gdt.limit = 55; s.idt.base = 0; s.idt.limit = 0;
    s.cr3 = 0x5000; s.cr4 = 0x20; s.cr0 = 0x80000031; s.efer = 0x500;
    if (ioctl(cpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
    struct kvm_regs g = { .rip = 0x10000, .rsp = 0x1f000, .rflags = 2, .rdi = workload, .rsi = n, .rdx = 0xd0000000 };
    if (ioctl(cpu, KVM_SET_REGS, &g) < 0) die("KVM_SET_REGS");

    uint64_t t0 = 0;
    for (;;) {
        if (ioctl(cpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO) {
            if (run->io.port == 0xf5 && !t0) t0 = now();
            else if (run->io.port == 0xf4) break;
        } else if (run->exit_reason == KVM_EXIT_MMIO) {
            /* sink */
        } else {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            exit(1);
        }
    }
    double rate = n / ((now() - t0) / 1e9);
    munmap(run, size); munmap(m, MEM); close(cpu); close(vm);
    return rate;
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 10) : 100000;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    double pio = run(kvm, 0, n), mmio = run(kvm, 1, n);
    printf("pio_exits_per_s=%.0f mmio_exits_per_s=%.0f\n", pio, mmio);
    return 0;
}
