/*
 * Ring-3 poll-mode virtio-blk driver for benchmarking (Vireo probe image).
 * Freestanding: no libc, no interrupts. Finds the first virtio-blk (1AF4:1042) on PCI bus 0
 * through ports 0xCF8/0xCFC, negotiates VIRTIO_F_VERSION_1 only, sets up queue 0 in guest RAM
 * (identity-mapped), then keeps QD requests in flight, polling the used ring.
 *
 * Compile-time parameters: MODE (0 = 4 KiB random read, 1 = 1 MiB sequential read),
 * QD (requests in flight), OPS (requests to complete in the timed phase).
 * Reports on port 0xF7 (the VMM prints each value with a CLOCK_MONOTONIC timestamp):
 *   1 = timed phase starts, then OPS done (the value is the number of requests completed),
 *   0xE00000xx = error xx (see fail() calls).
 */
#include "virtio-probe.h"

#ifndef MODE
#define MODE 0
#endif
#ifndef QD
#define QD 32
#endif
#ifndef OPS
#define OPS 100000
#endif

#define REQ_BYTES (MODE == 0 ? 4096u : (1u << 20))
#define QSIZE 256
#define RING_BASE 0x800000ull      /* desc 0x800000, avail 0x801000, used 0x802000 */
#define HDR_BASE  0x810000ull      /* 16-byte headers and status bytes */
#define DATA_BASE 0x1000000ull     /* QD buffers of REQ_BYTES each */


#ifdef QEMU_REPORT
/* Under QEMU (no report port): TSC timestamps, printed as text on the debugcon port 0xE9
 * after the timed phase; bench-virtio.sh converts them with the host's TSC frequency. */
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p)); }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) :: "memory"); return (uint64_t)hi << 32 | lo; }
static void putdec(uint64_t v) { char b[24]; int n = 0; do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v); while (n) outb(0xE9, b[--n]); }
static uint64_t tsc_start;
static void report(uint32_t v) {
    uint64_t t = rdtsc();
    if (v == 1 && tsc_start == 0) { tsc_start = t; return; }
    const char *p = "probe_tsc ";
    while (*p) outb(0xE9, *p++);
    putdec(tsc_start); outb(0xE9, ' '); putdec(t); outb(0xE9, ' '); putdec(v); outb(0xE9, '\n');
}
#else
static void report(uint32_t v) { outl(0xF7, v); }
#endif
static void fail(uint32_t code) { report(0xE0000000u | code); for (;;) outl(0xF4, 0); }

struct hdr { uint32_t type; uint32_t reserved; uint64_t sector; };

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_random(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

void probe_main(void) {
    struct virtio_caps caps = virtio_find(0x10421AF4u);
    if (!caps.devcfg) fail(3);
    uint64_t common = caps.common, devcfg = caps.devcfg;
    virtio_negotiate_version1(common);
    volatile struct desc *desc = (volatile struct desc *)(uintptr_t)RING_BASE;
    uint64_t avail = RING_BASE + 0x1000, used = RING_BASE + 0x2000;
    uint64_t doorbell = virtio_setup_queue(&caps, 0, QSIZE, RING_BASE);
    R8(common + 0x14) = 1 | 2 | 4 | 8;                         /* DRIVER_OK */

    uint64_t capacity = R64(devcfg);                           /* 512-byte sectors */
    uint64_t units = capacity / (REQ_BYTES / 512);
    if (units < QD) fail(7);
    if (3 * QD > QSIZE) fail(8);

    /* Request i: descriptors 3i (header), 3i+1 (data, device-writable), 3i+2 (status). */
    for (int i = 0; i < QD; i++) {
        desc[3 * i] = (struct desc){ HDR_BASE + 32 * i, 16, 1, (uint16_t)(3 * i + 1) };
        desc[3 * i + 1] = (struct desc){ DATA_BASE + (uint64_t)i * REQ_BYTES, REQ_BYTES, 1 | 2, (uint16_t)(3 * i + 2) };
        desc[3 * i + 2] = (struct desc){ HDR_BASE + 32 * i + 16, 1, 2, 0 };
    }
    uint64_t seq = 0;
    uint16_t avail_idx = 0, used_seen = 0;
    uint64_t submitted = 0, completed = 0, kicks = 0, spins = 0;
    report(1);
#define SUBMIT(i) do { \
        volatile struct hdr *h = (volatile struct hdr *)(uintptr_t)(HDR_BASE + 32 * (i)); \
        uint64_t unit = MODE == 0 ? next_random() % units : (seq++ % units); \
        h->type = 0; h->reserved = 0; h->sector = unit * (REQ_BYTES / 512); \
        R8(HDR_BASE + 32 * (i) + 16) = 0xFF; \
        R16(avail + 4 + 2 * (avail_idx % QSIZE)) = (uint16_t)(3 * (i)); \
        avail_idx++; submitted++; } while (0)
    for (int i = 0; i < QD && submitted < OPS; i++) SUBMIT(i);
    for (;;) {
        barrier();
        R16(avail + 2) = avail_idx;
        mb();
        if (!(R16(used) & 1)) { R16(doorbell) = 0; kicks++; }  /* unless VIRTQ_USED_F_NO_NOTIFY */
        uint16_t u;
        while ((u = R16(used + 2)) == used_seen) { spins++; }
        barrier();
        while (used_seen != u) {
            uint32_t id = R32(used + 4 + 8 * (used_seen % QSIZE));
            used_seen++;
            if (id % 3 != 0 || id / 3 >= QD) fail(9);
            if (R8(HDR_BASE + 32 * (id / 3) + 16) != 0) fail(10);
            completed++;
            if (submitted < OPS) SUBMIT(id / 3);
        }
        if (completed >= OPS) break;
    }
    report((uint32_t)completed);
#ifdef DIAG
    report((uint32_t)kicks); report((uint32_t)(spins >> 10));
#endif
    R8(common + 0x14) = 0;                                     /* reset the device */
}
