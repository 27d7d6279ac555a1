/*
 * What the ring-3 probe drivers (blk.c, net.c) share: port I/O, PCI configuration mechanism 1,
 * MMIO accessors, the split-queue descriptor, finding a virtio-pci device's capabilities,
 * VERSION_1-only feature negotiation and queue setup. Freestanding; each driver defines
 * report() and fail() (declared here) before using these.
 * Error codes passed to fail(): 1 no such device, 2 bad BAR index, 3 capability missing,
 * 4 VERSION_1 not offered, 5 FEATURES_OK refused, 6 queue too small.
 */
#ifndef VIREO_VIRTIO_PROBE_H
#define VIREO_VIRTIO_PROBE_H
#include <stdint.h>

static inline void outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(p)); }
static inline uint32_t inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
#define barrier() __asm__ volatile("" ::: "memory")
#define mb() __asm__ volatile("mfence" ::: "memory")

static void fail(uint32_t code);

static uint32_t pci_read(int dev, int off) {
    outl(0xCF8, 0x80000000u | (uint32_t)dev << 11 | (off & 0xFC));
    return inl(0xCFC);
}
static void pci_write(int dev, int off, uint32_t v) {
    outl(0xCF8, 0x80000000u | (uint32_t)dev << 11 | (off & 0xFC));
    outl(0xCFC, v);
}

#define R8(a)  (*(volatile uint8_t *)(uintptr_t)(a))
#define R16(a) (*(volatile uint16_t *)(uintptr_t)(a))
#define R32(a) (*(volatile uint32_t *)(uintptr_t)(a))
#define R64(a) (*(volatile uint64_t *)(uintptr_t)(a))

struct desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };

/* Where a virtio-pci device's structures are (guest-physical, identity-mapped). */
struct virtio_caps { uint64_t common, notify, devcfg; uint32_t mult; };

/* Finds the first device with PCI id `id` (device << 16 | vendor) on bus 0, turns on memory
 * decoding and bus mastering, and walks its capability list for the virtio structures. */
static struct virtio_caps virtio_find(uint32_t id) {
    int dev = -1;
    for (int d = 0; d < 32; d++) {
        if (pci_read(d, 0) == id) { dev = d; break; }
    }
    if (dev < 0) fail(1);
    pci_write(dev, 4, (pci_read(dev, 4) & 0xFFFF) | 0x6);      /* memory space, bus master */

    struct virtio_caps c = { 0, 0, 0, 0 };
    int cap = pci_read(dev, 0x34) & 0xFF;
    for (int guard = 0; cap >= 0x40 && guard < 48; guard++) {
        uint32_t h = pci_read(dev, cap);
        if ((h & 0xFF) == 0x09) {
            int type = (h >> 24) & 0xFF;
            int bar = pci_read(dev, cap + 4) & 0xFF;
            uint32_t off = pci_read(dev, cap + 8);
            if (bar > 5) fail(2);
            uint32_t lo = pci_read(dev, 0x10 + 4 * bar);
            uint64_t base = lo & ~0xFull;
            if (((lo >> 1) & 3) == 2) base |= (uint64_t)pci_read(dev, 0x14 + 4 * bar) << 32;
            if (type == 1) c.common = base + off;
            else if (type == 2) { c.notify = base + off; c.mult = pci_read(dev, cap + 16); }
            else if (type == 4) c.devcfg = base + off;
        }
        cap = (h >> 8) & 0xFF;
    }
    if (!c.common || !c.notify) fail(3);
    return c;
}

/* Reset, ACKNOWLEDGE, DRIVER, accept VIRTIO_F_VERSION_1 only, FEATURES_OK. */
static void virtio_negotiate_version1(uint64_t common) {
    R8(common + 0x14) = 0;                                     /* reset */
    while (R8(common + 0x14) != 0) {}
    R8(common + 0x14) = 1;                                     /* ACKNOWLEDGE */
    R8(common + 0x14) = 1 | 2;                                 /* DRIVER */
    R32(common + 0x00) = 1;
    if (!(R32(common + 0x04) & 1)) fail(4);                    /* VERSION_1 offered */
    R32(common + 0x08) = 0; R32(common + 0x0C) = 0;
    R32(common + 0x08) = 1; R32(common + 0x0C) = 1;            /* accept VERSION_1 only */
    R8(common + 0x14) = 1 | 2 | 8;                             /* FEATURES_OK */
    if (!(R8(common + 0x14) & 8)) fail(5);
}

/* Sets up queue q of `size` entries with its rings at `base` (desc +0, avail +0x1000,
 * used +0x2000), polled (no interrupts), and enables it; returns its doorbell address. */
static uint64_t virtio_setup_queue(const struct virtio_caps *c, int q, uint16_t size, uint64_t base) {
    R16(c->common + 0x16) = (uint16_t)q;
    uint16_t qmax = R16(c->common + 0x18);
    if (qmax < size) fail(6);
    R16(c->common + 0x18) = size;
    R32(c->common + 0x20) = (uint32_t)base;            R32(c->common + 0x24) = 0;
    R32(c->common + 0x28) = (uint32_t)(base + 0x1000); R32(c->common + 0x2C) = 0;
    R32(c->common + 0x30) = (uint32_t)(base + 0x2000); R32(c->common + 0x34) = 0;
    R16(base + 0x1000) = 1;                          /* VIRTQ_AVAIL_F_NO_INTERRUPT: we poll */
    uint64_t doorbell = c->notify + (uint64_t)R16(c->common + 0x1E) * c->mult;
    R16(c->common + 0x1C) = 1;                       /* queue_enable */
    return doorbell;
}
#endif
