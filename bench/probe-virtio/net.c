/*
 * Ring-3 poll-mode virtio-net driver for benchmarking (Vireo probe image), VM to VM.
 * Freestanding: no libc, no interrupts. Finds the first virtio-net (1AF4:1041) on PCI bus 0
 * through ports 0xCF8/0xCFC, negotiates VIRTIO_F_VERSION_1 only (no MAC, no MRG_RXBUF, no
 * offloads: every frame carries the 12-byte virtio_net_hdr_v1, all zero on transmit), sets up
 * receiveq 0 and transmitq 1 (256 entries each, identity-mapped guest RAM), then polls.
 *
 * Compile-time parameters:
 *   ROLE 0 = receiver: 256 receive buffers of 2 KiB posted; counts frames of ethertype 0x88B5
 *            (anything else, e.g. stray IPv6 from the host, is reposted and ignored).
 *   ROLE 1 = sender: FRAMES minimal frames (60 bytes + header) to DST (a MAC, default
 *            02:00:00:00:00:0b), ethertype 0x88B5, a sequence number in the payload; up to 256
 *            in flight, used descriptors reclaimed by polling.
 * Reports on port 0xF7 (the VMM prints each value with a CLOCK_MONOTONIC timestamp):
 *   receiver: 1 at the first frame, then the count every EVERY frames, and when no frame came
 *             for about IDLE_SPINS poll iterations: 0x40000000 | count, and it stops;
 *   sender:   1 before the first frame is posted, then the number of frames the device has
 *             consumed (= FRAMES) once all are reclaimed;
 *   0xE00000xx = error xx (see fail() calls).
 */
#include "virtio-probe.h"

#ifndef ROLE
#define ROLE 0
#endif
#ifndef FRAMES
#define FRAMES 1000000
#endif
#ifndef EVERY
#define EVERY 65536
#endif
#ifndef IDLE_SPINS
#define IDLE_SPINS (1ull << 30)
#endif
#ifndef DST
#define DST 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b
#endif

#define QSIZE 256
#define HDR 12
#define RING_BASE 0x800000ull      /* queue q: desc +0, avail +0x1000, used +0x2000, at RING_BASE + q * 0x4000 */
#define RX_BASE   0x1000000ull     /* receiver: QSIZE buffers of RX_BUF bytes */
#define RX_BUF    2048u
#define TX_BASE   0x1100000ull     /* sender: QSIZE buffers of 128 bytes (72 used) */
#define TX_LEN    (HDR + 60)
#define ETHERTYPE 0x88B5           /* IEEE local experimental */


static void report(uint32_t v) { outl(0xF7, v); }
static void fail(uint32_t code) { report(0xE0000000u | code); for (;;) outl(0xF4, 0); }

static uint64_t common;

void probe_main(void) {
    struct virtio_caps caps = virtio_find(0x10411AF4u);
    common = caps.common;
    virtio_negotiate_version1(common);

    uint64_t rxbell = virtio_setup_queue(&caps, 0, QSIZE, RING_BASE);
    uint64_t txbell = virtio_setup_queue(&caps, 1, QSIZE, RING_BASE + 0x4000);
    int q = ROLE == 0 ? 0 : 1;
    uint64_t base = RING_BASE + (uint64_t)q * 0x4000;
    volatile struct desc *desc = (volatile struct desc *)(uintptr_t)base;
    uint64_t avail = base + 0x1000, used = base + 0x2000;
    uint16_t avail_idx = 0, used_seen = 0;

#if ROLE == 0
    (void)txbell;
    for (int i = 0; i < QSIZE; i++) {
        desc[i] = (struct desc){ RX_BASE + (uint64_t)i * RX_BUF, RX_BUF, 2, 0 };
        R16(avail + 4 + 2 * i) = (uint16_t)i;
    }
    avail_idx = QSIZE;
    barrier();
    R16(avail + 2) = avail_idx;
    R8(common + 0x14) = 1 | 2 | 4 | 8;                         /* DRIVER_OK */
    mb();
    R16(rxbell) = 0;
    uint32_t count = 0, kicks = 0, batches = 0;
    for (;;) {
        uint16_t u;
        uint64_t spins = 0;
        while ((u = R16(used + 2)) == used_seen) {
            if (count && ++spins > IDLE_SPINS) {
                report(0x40000000u | count);
#ifdef DIAG
                report(kicks); report(batches);
#endif
                goto done;
            }
        }
        barrier();
        while (used_seen != u) {
            uint32_t id = R32(used + 4 + 8 * (used_seen % QSIZE));
            uint32_t len = R32(used + 8 + 8 * (used_seen % QSIZE));
            used_seen++;
            if (id >= QSIZE) fail(9);
            uint64_t f = RX_BASE + (uint64_t)id * RX_BUF + HDR;
            if (len >= HDR + 14 && R8(f + 12) == (ETHERTYPE >> 8) && R8(f + 13) == (ETHERTYPE & 0xFF)) {
                count++;
                if (count == 1 || count % EVERY == 0) report(count);
            }
            R16(avail + 4 + 2 * (avail_idx % QSIZE)) = (uint16_t)id;
            avail_idx++;
        }
        barrier();
        R16(avail + 2) = avail_idx;
        mb();
        batches++;
        if (!(R16(used) & 1)) { R16(rxbell) = 0; kicks++; }    /* unless VIRTQ_USED_F_NO_NOTIFY */
    }
done:;
#else
    (void)rxbell;
    static const uint8_t dst[6] = { DST };
    for (int i = 0; i < QSIZE; i++) {
        uint64_t b = TX_BASE + (uint64_t)i * 128;
        for (int j = 0; j < TX_LEN; j++) R8(b + j) = 0;         /* virtio_net_hdr_v1: no offloads */
        for (int j = 0; j < 6; j++) R8(b + HDR + j) = dst[j];
        R8(b + HDR + 6) = 0x02; R8(b + HDR + 7) = 0; R8(b + HDR + 8) = 0;
        R8(b + HDR + 9) = 0; R8(b + HDR + 10) = 0; R8(b + HDR + 11) = 0x0a;
        R8(b + HDR + 12) = ETHERTYPE >> 8; R8(b + HDR + 13) = ETHERTYPE & 0xFF;
        desc[i] = (struct desc){ b, TX_LEN, 0, 0 };
    }
    R8(common + 0x14) = 1 | 2 | 4 | 8;                         /* DRIVER_OK */
    /* free slots: a stack of descriptor ids */
    uint16_t freelist[QSIZE]; int nfree = QSIZE;
    for (int i = 0; i < QSIZE; i++) freelist[i] = (uint16_t)i;
    uint32_t posted = 0, done_count = 0;
    report(1);
    while (done_count < FRAMES) {
        while (nfree > 0 && posted < FRAMES) {
            uint16_t id = freelist[--nfree];
            R32(TX_BASE + (uint64_t)id * 128 + HDR + 14) = posted;   /* sequence number */
            R16(avail + 4 + 2 * (avail_idx % QSIZE)) = id;
            avail_idx++; posted++;
        }
        barrier();
        R16(avail + 2) = avail_idx;
        mb();
        if (!(R16(used) & 1)) R16(txbell) = 0;
        uint16_t u;
        while ((u = R16(used + 2)) == used_seen) {}
        barrier();
        while (used_seen != u) {
            uint32_t id = R32(used + 4 + 8 * (used_seen % QSIZE));
            used_seen++;
            if (id >= QSIZE) fail(9);
            freelist[nfree++] = (uint16_t)id;
            done_count++;
        }
    }
    report(done_count);
#endif
    R8(common + 0x14) = 0;                                     /* reset the device */
}
