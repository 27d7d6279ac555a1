// C shims Swift cannot import directly: the _IO* request numbers of linux/kvm.h and
// friends (function-like macros), offsetof() of kvm_run's exit union, and a few syscalls
// without a glibc wrapper. Pure constants and thin inline wrappers; no state.
#ifndef VIREO_CLINUX_H
#define VIREO_CLINUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/memfd.h>
static const unsigned int VIREO_MFD_CLOEXEC = MFD_CLOEXEC;
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/signalfd.h>
#include <sys/sysinfo.h>
#include <poll.h>
static const int VIREO_SFD_CLOEXEC = SFD_CLOEXEC;
static const int VIREO_SFD_NONBLOCK = SFD_NONBLOCK;
#include <signal.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <linux/userfaultfd.h>

// ---- /dev/kvm system ioctls
static const unsigned long VIREO_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long VIREO_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long VIREO_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long VIREO_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long VIREO_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long VIREO_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// ---- VM ioctls
static const unsigned long VIREO_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long VIREO_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long VIREO_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long VIREO_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long VIREO_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long VIREO_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long VIREO_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long VIREO_KVM_IRQFD = KVM_IRQFD;
static const unsigned long VIREO_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long VIREO_KVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long VIREO_KVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long VIREO_KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long VIREO_KVM_CLEAR_DIRTY_LOG = KVM_CLEAR_DIRTY_LOG;
static const unsigned long VIREO_KVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long VIREO_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long VIREO_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long VIREO_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long VIREO_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;

// ---- vCPU ioctls
static const unsigned long VIREO_KVM_RUN = KVM_RUN;
static const unsigned long VIREO_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long VIREO_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long VIREO_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long VIREO_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long VIREO_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long VIREO_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long VIREO_KVM_SET_XCRS = KVM_SET_XCRS;
// ---- machine state (snapshots)
static const unsigned long VIREO_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long VIREO_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long VIREO_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long VIREO_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long VIREO_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long VIREO_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long VIREO_KVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long VIREO_KVM_KVMCLOCK_CTRL = KVM_KVMCLOCK_CTRL;
static const unsigned long VIREO_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long VIREO_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long VIREO_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long VIREO_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long VIREO_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long VIREO_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long VIREO_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long VIREO_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long VIREO_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long VIREO_KVM_SET_SIGNAL_MASK = KVM_SET_SIGNAL_MASK;

// ---- TUN
static const unsigned long VIREO_TUNSETIFF = TUNSETIFF;
static const unsigned long VIREO_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned long VIREO_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long VIREO_TUNGETFEATURES = TUNGETFEATURES;

// ---- ioctl with an int or pointer argument (Swift cannot call variadic ioctl).
static inline int vireo_ioctl(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}
static inline int vireo_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

// ---- kvm_run exit-union field offsets (the union imports as computed properties).
static inline size_t vireo_kvm_run_io_offset(void) { return offsetof(struct kvm_run, io); }
static inline size_t vireo_kvm_run_mmio_offset(void) { return offsetof(struct kvm_run, mmio); }
static inline size_t vireo_kvm_run_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }

// ---- kvm_cpuid2 / kvm_msrs carry flexible arrays: size helpers for allocation.
static inline size_t vireo_kvm_cpuid2_size(uint32_t n) {
    return sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2);
}
static inline size_t vireo_kvm_msrs_size(uint32_t n) {
    return sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry);
}
static inline size_t vireo_kvm_msr_list_size(uint32_t n) {
    return sizeof(struct kvm_msr_list) + (size_t)n * sizeof(uint32_t);
}
static inline size_t vireo_kvm_irq_routing_size(uint32_t n) {
    return sizeof(struct kvm_irq_routing) + (size_t)n * sizeof(struct kvm_irq_routing_entry);
}

// ---- syscalls without glibc wrappers
static inline int vireo_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }
static inline int vireo_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

// Signal helpers: Swift cannot use sigaction's union member or SIG_* casts portably.
typedef void (*vireo_signal_handler_t)(int);
static inline int vireo_install_handler(int signo, vireo_signal_handler_t h) {
    struct sigaction sa;
    sa.sa_handler = h;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;   // no SA_RESTART: a blocked KVM_RUN must return EINTR on a kick
    return sigaction(signo, &sa, NULL);
}

// ---- userfaultfd (hypervisor memory reclaim: released guest pages come back on a touch)
#include <errno.h>
#include <fcntl.h>
#include <linux/types.h>
/// A userfaultfd (close-on-exec, non-blocking) from /dev/userfaultfd, else the syscall; -1 + errno.
static inline int vireo_uffd_open(void) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
#ifdef USERFAULTFD_IOC_NEW
        int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        int e = errno;
        close(dev);
        if (fd >= 0) return fd;
        errno = e;
#else
        close(dev);
#endif
    }
    return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}
/// UFFDIO_API handshake (no optional features): 0, or -1 + errno.
static inline int vireo_uffd_api(int fd) {
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    return ioctl(fd, UFFDIO_API, &api);
}
/// UFFDIO_REGISTER [start, start+len) for missing-page faults: 0, or -1 + errno.
static inline int vireo_uffd_register_missing(int fd, uint64_t start, uint64_t len) {
    struct uffdio_register r = { .range = { .start = start, .len = len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    return ioctl(fd, UFFDIO_REGISTER, &r);
}
/// UFFDIO_COPY `len` bytes from `src` to the missing page(s) at `dst`, waking the faulting
/// threads: 0, or -errno (-EEXIST: the page is already there; -EAGAIN: retry).
static inline int vireo_uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len) {
    struct uffdio_copy c = { .dst = dst, .src = (uint64_t)(uintptr_t)src, .len = len, .mode = 0, .copy = 0 };
    if (ioctl(fd, UFFDIO_COPY, &c) == 0) return 0;
    return -errno;
}
/// UFFDIO_ZEROPAGE over [dst, dst+len): 0, or -errno (as vireo_uffd_copy).
static inline int vireo_uffd_zeropage(int fd, uint64_t dst, uint64_t len) {
    struct uffdio_zeropage z = { .range = { .start = dst, .len = len }, .mode = 0, .zeropage = 0 };
    if (ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0) return 0;
    return -errno;
}
/// UFFDIO_WAKE the threads waiting on [start, start+len).
static inline int vireo_uffd_wake(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range r = { .start = start, .len = len };
    return ioctl(fd, UFFDIO_WAKE, &r);
}
/// Reads one event: 1 and *address for a page fault, 0 for another event, -errno on none/error.
static inline int vireo_uffd_read_fault(int fd, uint64_t *address) {
    struct uffd_msg msg;
    ssize_t n = read(fd, &msg, sizeof(msg));
    if (n < 0) return -errno;
    if ((size_t)n != sizeof(msg)) return -EIO;
    if (msg.event != UFFD_EVENT_PAGEFAULT) return 0;
    *address = msg.arg.pagefault.address;
    return 1;
}

#include <pthread.h>
int vireo_set_thread_name(pthread_t thread, const char *name);
int vireo_pipe_cloexec(int fds[2]);

#endif
