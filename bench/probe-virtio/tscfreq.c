/* Prints the host TSC frequency in Hz (rdtsc against CLOCK_MONOTONIC over 500 ms), to convert
 * the TSC timestamps the probe prints under QEMU. A KVM guest's TSC runs at the host's rate
 * unless QEMU is given tsc-frequency, which bench-virtio.sh does not do. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>
static uint64_t ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }
int main(void) {
    uint64_t n0 = ns(), t0 = __rdtsc(), n1, t1;
    do { n1 = ns(); } while (n1 - n0 < 500000000ull);
    t1 = __rdtsc();
    printf("%.0f\n", (double)(t1 - t0) * 1e9 / (double)(n1 - n0));
    return 0;
}
