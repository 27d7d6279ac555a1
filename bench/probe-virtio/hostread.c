/*
 * The host's own pread on the benchmark file, with the probe guest's access pattern
 * (bench/probe-virtio/blk.c): hostread FILE MODE OPS. MODE 0: 4 KiB reads at random 4 KiB-aligned
 * offsets (the same xorshift sequence as the guest); MODE 1: 1 MiB reads in sequence, wrapping.
 * One thread, one request at a time (QD 1): a page-cache read is a synchronous memcpy.
 * Prints "host_ns=N ops=N bytes=N".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: hostread FILE MODE OPS\n"); return 2; }
    int mode = atoi(argv[2]);
    uint64_t ops = strtoull(argv[3], 0, 10);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror(argv[1]); return 1; }
    struct stat st;
    if (fstat(fd, &st) != 0) { perror("fstat"); return 1; }
    size_t req = mode == 0 ? 4096 : (1 << 20);
    uint64_t units = (uint64_t)st.st_size / req;
    if (units == 0) { fprintf(stderr, "file too small\n"); return 1; }
    /* The buffer: 2 MiB-aligned and THP-backed when the host allows, like the VMM's guest RAM
     * (a 1 MiB copy into 4 KiB pages costs measurably more TLB misses on a nested host). */
    char *map = mmap(0, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    char *buf = (char *)(((uintptr_t)map + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    if (getenv("HOSTREAD_NO_THP") == 0) madvise(buf, 2 << 20, MADV_HUGEPAGE);
    for (size_t i = 0; i < req; i += 4096) buf[i] = 1;
    uint64_t rng = 0x9E3779B97F4A7C15ull, seq = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t unit;
        if (mode == 0) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; unit = rng % units; }
        else unit = seq++ % units;
        if (pread(fd, buf, req, (off_t)(unit * req)) != (ssize_t)req) { perror("pread"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
    printf("host_ns=%llu ops=%llu bytes=%llu\n", (unsigned long long)ns, (unsigned long long)ops, (unsigned long long)(ops * req));
    return 0;
}
