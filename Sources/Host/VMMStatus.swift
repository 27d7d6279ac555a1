import VireoAPI
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The VMM control socket's `status` reply, decoded. Every field is optional: a VMM from before
/// a field existed still decodes (its figures are simply absent).
public struct VMMStatus: Decodable, Sendable {
    public struct VCPU: Decodable, Sendable {
        public var index: Int
        var tid: Int?
        public var pioExits: UInt64?
        public var mmioExits: UInt64?
        var otherExits: UInt64?
        enum CodingKeys: String, CodingKey { case index, tid, pioExits = "pio_exits", mmioExits = "mmio_exits", otherExits = "other_exits" }
    }
    public struct Memory: Decodable, Sendable {
        public var provisionedBytes: UInt64?
        public var activeBytes: UInt64?
        var activeWindowSeconds: Int?
        var activeSampleOneIn: Int?
        public var activeStatus: String?
        var balloonBytes: UInt64?
        var guest: [String: UInt64]?
        /// Cold pages the VMM compressed or swapped (`reclaim`), and how long a guest touch of one
        /// took to bring it back; absent from VMMs that cannot compress.
        var compressedBytes: UInt64?
        var swappedBytes: UInt64?
        var faultinMicrosP50: Double?
        var faultinMicrosP99: Double?
        enum CodingKeys: String, CodingKey {
            case provisionedBytes = "provisioned_bytes", activeBytes = "active_bytes", activeWindowSeconds = "active_window_seconds", activeSampleOneIn = "active_sample_one_in"
            case activeStatus = "active_status", balloonBytes = "balloon_bytes", guest
            case compressedBytes = "compressed_bytes", swappedBytes = "swapped_bytes", faultinMicrosP50 = "faultin_us_p50", faultinMicrosP99 = "faultin_us_p99"
        }
    }
    struct Disk: Decodable, Sendable {
        var name: String
        var path: String?
        var readRequests: UInt64?, writeRequests: UInt64?, flushRequests: UInt64?, otherRequests: UInt64?
        var readBytes: UInt64?, writeBytes: UInt64?, errors: UInt64?
        enum CodingKeys: String, CodingKey {
            case name, path, readRequests = "read_requests", writeRequests = "write_requests", flushRequests = "flush_requests"
            case otherRequests = "other_requests", readBytes = "read_bytes", writeBytes = "write_bytes", errors
        }
    }
    struct NIC: Decodable, Sendable {
        var name: String
        var rxFrames: UInt64?, rxBytes: UInt64?, rxDrops: UInt64?, txFrames: UInt64?, txBytes: UInt64?, txDrops: UInt64?
        enum CodingKeys: String, CodingKey {
            case name, rxFrames = "rx_frames", rxBytes = "rx_bytes", rxDrops = "rx_drops", txFrames = "tx_frames", txBytes = "tx_bytes", txDrops = "tx_drops"
        }
    }

    public var ok: Bool?
    public var state: String?
    var pid: Int?
    public var vcpus: [VCPU]?
    public var memory: Memory?
    var disks: [Disk]?
    var nics: [NIC]?
    /// The same reclaim figures at the reply's top level (wherever the VMM puts them).
    var compressedBytes: UInt64?
    var swappedBytes: UInt64?
    var faultinMicrosP50: Double?
    var faultinMicrosP99: Double?
    enum CodingKeys: String, CodingKey {
        case ok, state, pid, vcpus, memory, disks, nics
        case compressedBytes = "compressed_bytes", swappedBytes = "swapped_bytes", faultinMicrosP50 = "faultin_us_p50", faultinMicrosP99 = "faultin_us_p99"
    }

    /// Compressed and swapped bytes and fault-in latency, from `memory` or the top level.
    var reclaim: (compressed: UInt64?, swapped: UInt64?, p50: Double?, p99: Double?) {
        (memory?.compressedBytes ?? compressedBytes, memory?.swappedBytes ?? swappedBytes,
         memory?.faultinMicrosP50 ?? faultinMicrosP50, memory?.faultinMicrosP99 ?? faultinMicrosP99)
    }

    /// Decodes one reply line; nil for anything that is not a status object (an error reply,
    /// garbage, a truncated line).
    public static func parse(_ reply: String) -> VMMStatus? {
        guard let s = try? JSONDecoder().decode(VMMStatus.self, from: Data(reply.utf8)), s.ok == true else { return nil }
        return s
    }

    /// Asks the VMM at `socket` for its status (nil when it does not answer in `timeoutSeconds`).
    static func fetch(socket: String, timeoutSeconds: Int = 1) -> VMMStatus? {
        VMMProcess.control(socket, "status", timeoutSeconds: timeoutSeconds).flatMap(parse)
    }

    public var diskStats: [DiskStat] {
        (disks ?? []).map {
            DiskStat(name: $0.name, path: $0.path ?? "", readRequests: $0.readRequests ?? 0, writeRequests: $0.writeRequests ?? 0,
                     flushRequests: $0.flushRequests ?? 0, otherRequests: $0.otherRequests ?? 0, readBytes: $0.readBytes ?? 0,
                     writeBytes: $0.writeBytes ?? 0, errors: $0.errors ?? 0)
        }
    }

    public var nicStats: [NICStat] {
        (nics ?? []).map {
            NICStat(name: $0.name, rxFrames: $0.rxFrames ?? 0, rxBytes: $0.rxBytes ?? 0, rxDrops: $0.rxDrops ?? 0,
                    txFrames: $0.txFrames ?? 0, txBytes: $0.txBytes ?? 0, txDrops: $0.txDrops ?? 0)
        }
    }

    public var guestReport: GuestMemoryReport? {
        guard let g = memory?.guest, !g.isEmpty else { return nil }
        return GuestMemoryReport(totalBytes: g["total_bytes"], freeBytes: g["free_bytes"], availableBytes: g["available_bytes"],
                                 diskCachesBytes: g["disk_caches_bytes"])
    }
}
