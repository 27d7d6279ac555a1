/* The host's own reference for the virtio-net benchmark: the same frames the probe guests
 * exchange (60 bytes + 12-byte virtio-net header, ethertype 0x88B5, to 02:00:00:00:00:0b),
 * written to one TAP and read from the other through the same bridge, one thread each, with
 * plain write(2)/read(2): what the host's network path allows without any VM.
 *   hostnet TX_TAP RX_TAP FRAMES EVERY
 * prints: "rx_pps=N tx_pps=N received=N sent=N" (rx: first frame to the last multiple of EVERY). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }

static int tap(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR);
    if (fd < 0) { perror("/dev/net/tun"); exit(1); }
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror(name); exit(1); }
    int sz = 12;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) { perror("TUNSETVNETHDRSZ"); exit(1); }
    return fd;
}

static int txfd, rxfd; static uint64_t frames, every;
static uint64_t tx_t0, tx_t1;

static void *sender(void *arg) {
    (void)arg;
    uint8_t f[72] = {0};
    const uint8_t dst[6] = {2, 0, 0, 0, 0, 0x0b}, src[6] = {2, 0, 0, 0, 0, 0x0a};
    memcpy(f + 12, dst, 6); memcpy(f + 18, src, 6); f[24] = 0x88; f[25] = 0xB5;
    tx_t0 = now();
    for (uint64_t i = 0; i < frames; i++) {
        uint32_t s = (uint32_t)i; memcpy(f + 26, &s, 4);
        if (write(txfd, f, sizeof f) != (ssize_t)sizeof f) { perror("write"); exit(1); }
    }
    tx_t1 = now();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: hostnet TX_TAP RX_TAP FRAMES EVERY\n"); return 2; }
    txfd = tap(argv[1]); rxfd = tap(argv[2]);
    frames = strtoull(argv[3], 0, 0); every = strtoull(argv[4], 0, 0);
    uint8_t buf[2048];
    sleep(1);                                            /* carrier up: the bridge forwards */
    fcntl(rxfd, F_SETFL, O_NONBLOCK);
    while (read(rxfd, buf, sizeof buf) > 0) {}           /* drain anything stale */
    pthread_t th; pthread_create(&th, NULL, sender, NULL);
    uint64_t count = 0, t1 = 0, tl = 0, cl = 0;
    struct pollfd p = { rxfd, POLLIN, 0 };
    for (;;) {
        ssize_t n = read(rxfd, buf, sizeof buf);
        if (n < 0) { if (poll(&p, 1, 1000) <= 0) break; continue; }   /* idle for 1 s: done */
        if (n >= 26 && buf[24] == 0x88 && buf[25] == 0xB5) {
            count++;
            if (count == 1) t1 = now();
            else if (count % every == 0) { tl = now(); cl = count; }
        }
    }
    pthread_join(th, NULL);
    if (!cl) { fprintf(stderr, "hostnet: only %llu frames received\n", (unsigned long long)count); return 1; }
    printf("rx_pps=%.0f tx_pps=%.0f received=%llu sent=%llu\n", (cl - 1) * 1e9 / (tl - t1),
           frames * 1e9 / (tx_t1 - tx_t0), (unsigned long long)count, (unsigned long long)frames);
    return 0;
}
