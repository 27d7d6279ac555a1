#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// GET /v1/vms/{name}/stats: one running VM's figures in the seeds' vocabulary.
public struct VMStats: Codable, Sendable, Equatable {
    public var name: String
    public var state: VMState
    public var memory: VMMemoryStats
    public var vcpus: [VCPUStat]
    public var disks: [DiskStat]
    public var nics: [NICStat]

    public init(name: String, state: VMState, memory: VMMemoryStats, vcpus: [VCPUStat], disks: [DiskStat], nics: [NICStat]) {
        self.name = name; self.state = state; self.memory = memory; self.vcpus = vcpus; self.disks = disks; self.nics = nics
    }
}

/// Provisioned (configured), consumed (resident on the host), active (written lately) memory.
public struct VMMemoryStats: Codable, Sendable, Equatable {
    /// Guest RAM configured for the VM.
    public var provisionedBytes: UInt64
    /// Host memory resident for the VMM process (VmRSS: guest pages touched plus the VMM's own).
    public var consumedBytes: UInt64?
    /// Bytes of guest pages written during the last full sampling window (KVM dirty logging):
    /// the written working set, a lower bound of the active memory. Absent until the first
    /// window has ended, or when the estimate is off or unavailable (`active_status` says why).
    public var activeBytes: UInt64?
    /// The sampling window in seconds (0: the estimate is off).
    public var activeWindowSeconds: Int?
    /// 1: every page tracked (exact count); N: a random 1/N of the pages per window, scaled up.
    public var activeSampleOneIn: Int?
    /// ok, sampling, off, unavailable: WHY, or unknown (a VMM too old to report it).
    public var activeStatus: String
    /// The guest's own view, from the balloon's statistics queue (absent without a balloon or
    /// before the guest first reported).
    public var guestReported: GuestMemoryReport?
    /// Memory the guest has given back to the host through the balloon.
    public var balloonBytes: UInt64?
    /// Guest pages KSM merged with identical pages (shareable VMs only; /proc/PID/ksm_merging_pages).
    public var sharedBytes: UInt64?
    /// Cold guest pages the VMM holds compressed or in its swap file, and how long bringing one
    /// back on a guest touch took (µs, median and 99th percentile); absent from VMMs that cannot.
    public var compressedBytes: UInt64?
    public var swappedBytes: UInt64?
    public var faultinMicrosP50: Double?
    public var faultinMicrosP99: Double?

    public init(provisionedBytes: UInt64, consumedBytes: UInt64?, activeBytes: UInt64?, activeWindowSeconds: Int?,
                activeSampleOneIn: Int? = nil, activeStatus: String, guestReported: GuestMemoryReport?, balloonBytes: UInt64?) {
        self.provisionedBytes = provisionedBytes; self.consumedBytes = consumedBytes; self.activeBytes = activeBytes
        self.activeWindowSeconds = activeWindowSeconds; self.activeSampleOneIn = activeSampleOneIn
        self.activeStatus = activeStatus; self.guestReported = guestReported
        self.balloonBytes = balloonBytes
    }

    enum CodingKeys: String, CodingKey {
        case provisionedBytes = "provisioned_bytes", consumedBytes = "consumed_bytes", activeBytes = "active_bytes"
        case activeWindowSeconds = "active_window_seconds", activeSampleOneIn = "active_sample_one_in", activeStatus = "active_status", guestReported = "guest_reported"
        case balloonBytes = "balloon_bytes", sharedBytes = "shared_bytes", compressedBytes = "compressed_bytes", swappedBytes = "swapped_bytes"
        case faultinMicrosP50 = "faultin_us_p50", faultinMicrosP99 = "faultin_us_p99"
    }
}

/// What the guest's balloon driver reports (virtio-balloon statistics), in bytes.
public struct GuestMemoryReport: Codable, Sendable, Equatable {
    public var totalBytes: UInt64?
    public var freeBytes: UInt64?
    public var availableBytes: UInt64?
    public var diskCachesBytes: UInt64?

    public init(totalBytes: UInt64?, freeBytes: UInt64?, availableBytes: UInt64?, diskCachesBytes: UInt64?) {
        self.totalBytes = totalBytes; self.freeBytes = freeBytes; self.availableBytes = availableBytes; self.diskCachesBytes = diskCachesBytes
    }

    enum CodingKeys: String, CodingKey {
        case totalBytes = "total_bytes", freeBytes = "free_bytes", availableBytes = "available_bytes", diskCachesBytes = "disk_caches_bytes"
    }
}

/// One vCPU: CPU time and CPU ready time (runnable, waiting for a host CPU), and user-space exits.
public struct VCPUStat: Codable, Sendable, Equatable {
    public var index: Int
    public var cpuSeconds: Double
    public var readySeconds: Double
    public var pioExits: UInt64?
    public var mmioExits: UInt64?

    public init(index: Int, cpuSeconds: Double, readySeconds: Double, pioExits: UInt64?, mmioExits: UInt64?) {
        self.index = index; self.cpuSeconds = cpuSeconds; self.readySeconds = readySeconds; self.pioExits = pioExits; self.mmioExits = mmioExits
    }

    enum CodingKeys: String, CodingKey {
        case index, cpuSeconds = "cpu_seconds", readySeconds = "ready_seconds", pioExits = "pio_exits", mmioExits = "mmio_exits"
    }
}

/// One virtio-blk disk's requests and data bytes since its VMM started.
public struct DiskStat: Codable, Sendable, Equatable {
    public var name: String
    public var path: String
    public var readRequests: UInt64
    public var writeRequests: UInt64
    public var flushRequests: UInt64
    public var otherRequests: UInt64
    public var readBytes: UInt64
    public var writeBytes: UInt64
    public var errors: UInt64

    public init(name: String, path: String, readRequests: UInt64, writeRequests: UInt64, flushRequests: UInt64, otherRequests: UInt64,
                readBytes: UInt64, writeBytes: UInt64, errors: UInt64) {
        self.name = name; self.path = path; self.readRequests = readRequests; self.writeRequests = writeRequests
        self.flushRequests = flushRequests; self.otherRequests = otherRequests; self.readBytes = readBytes
        self.writeBytes = writeBytes; self.errors = errors
    }

    enum CodingKeys: String, CodingKey {
        case name, path, readRequests = "read_requests", writeRequests = "write_requests", flushRequests = "flush_requests"
        case otherRequests = "other_requests", readBytes = "read_bytes", writeBytes = "write_bytes", errors
    }
}

/// One virtio-net NIC's frames and bytes since its VMM started (rx: to the guest, tx: from it).
public struct NICStat: Codable, Sendable, Equatable {
    public var name: String
    public var rxFrames: UInt64
    public var rxBytes: UInt64
    public var rxDrops: UInt64
    public var txFrames: UInt64
    public var txBytes: UInt64
    public var txDrops: UInt64

    public init(name: String, rxFrames: UInt64, rxBytes: UInt64, rxDrops: UInt64, txFrames: UInt64, txBytes: UInt64, txDrops: UInt64) {
        self.name = name; self.rxFrames = rxFrames; self.rxBytes = rxBytes; self.rxDrops = rxDrops
        self.txFrames = txFrames; self.txBytes = txBytes; self.txDrops = txDrops
    }

    enum CodingKeys: String, CodingKey {
        case name, rxFrames = "rx_frames", rxBytes = "rx_bytes", rxDrops = "rx_drops", txFrames = "tx_frames", txBytes = "tx_bytes", txDrops = "tx_drops"
    }
}
