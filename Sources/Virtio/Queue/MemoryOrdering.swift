import Synchronization

/// Memory barriers between the device (this thread) and the driver (a guest vCPU, i.e. another
/// CPU writing the same RAM).
///
/// Swift has no atomic view of foreign memory, so ring indices are read and written with plain
/// naturally aligned 16-bit loads/stores (single instructions on every architecture we target, so
/// never torn) and ordered with `atomicMemoryFence` from the standard Synchronization module:
/// a fence is both a compiler barrier (no reordering or caching of memory accesses across it) and
/// the hardware barrier of the requested strength (on x86-64 acquire/release cost nothing beyond
/// the compiler barrier; sequentially consistent is an `mfence`).
///
/// The protocol, as in the virtio spec section 2.7.13 / Linux `virtio_ring`:
/// - read `avail.idx`, then `acquire` before reading ring entries and descriptors;
/// - write used elements, then `release`, then publish `used.idx`;
/// - after publishing `used.idx` (or `avail_event`), `full` before reading the driver's
///   `used_event`/flags (or re-reading `avail.idx`), so a store-load reorder cannot lose a wakeup.
enum MemoryOrdering {
    @inline(__always) static func acquire() { atomicMemoryFence(ordering: .acquiring) }
    @inline(__always) static func release() { atomicMemoryFence(ordering: .releasing) }
    @inline(__always) static func full() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}
