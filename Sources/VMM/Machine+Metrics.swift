import KVM
import Virtio
import VireoSupport

/// What the VMM measures about its VM beyond exit counts: disk and NIC counters, the
/// active-memory estimate and, with a statistics balloon, the guest's own memory figures.
public struct MachineMetrics: Sendable, Equatable {
    public struct Disk: Sendable, Equatable {
        /// The disk's id= (or diskN, N its position on the command line) and image path.
        public var name: String
        public var path: String
        public var counters: BlockCounters.Snapshot
    }
    public struct NIC: Sendable, Equatable {
        /// The TAP device's name.
        public var name: String
        public var counters: NetCounters.Snapshot
    }
    public struct Memory: Sendable, Equatable {
        public var provisionedBytes: UInt64
        /// Bytes of guest pages written during the last full window (nil: no estimate yet or at all).
        public var activeBytes: UInt64?
        /// The sampling window (0: the estimate is off).
        public var activeWindowSeconds: UInt32
        /// 1: every page is tracked (exact); N: a random 1/N of the pages per window, scaled up.
        public var activeSampleOneIn: UInt32
        /// "ok", "sampling" (the first window has not ended), "off", or "unavailable: WHY".
        public var activeStatus: String
        /// The guest's own figures from the balloon's statistics queue, by name (free_bytes,
        /// available_bytes, total_bytes, disk_caches_bytes); empty without a statistics balloon
        /// or before the guest first answered.
        public var guest: [String: UInt64]
        /// Balloon size now (pages the guest gave back), in bytes; nil without a balloon.
        public var balloonBytes: UInt64?
        /// Hypervisor reclaim: guest bytes held compressed, their compressed size, guest bytes
        /// in the swap file, all-zero pages released, and the fault-ins that brought pages back.
        public var compressedBytes: UInt64 = 0
        public var compressedStoredBytes: UInt64 = 0
        public var swappedBytes: UInt64 = 0
        public var zeroBytes: UInt64 = 0
        public var reclaimKeptBytes: UInt64 = 0
        public var swapErrors: UInt64 = 0
        /// The last swap-file error (the pages stayed in RAM), if any.
        public var swapError: String?
        public var faultinCount: UInt64 = 0
        public var faultinUsP50: UInt64 = 0
        public var faultinUsP99: UInt64 = 0
    }
    public var memory: Memory
    public var disks: [Disk]
    public var nics: [NIC]
}

extension Machine {
    /// A snapshot of every counter; safe from any thread while the machine runs.
    public func metrics() -> MachineMetrics {
        let status: String
        var active: UInt64?
        if config.activeMemoryWindowSeconds == 0 {
            status = "off"
        } else if let why = dirtyLogUnavailable {
            status = "unavailable: " + why
        } else if let sampler = activeMemory {
            let s = sampler.snapshot
            active = s.activeBytes
            status = s.failure.map { "unavailable: \($0)" } ?? (s.activeBytes == nil ? "sampling" : "ok")
        } else {
            status = "off"
        }
        var guest: [String: UInt64] = [:]
        if let balloon {
            // virtio-balloon statistics tags (bytes): 4 free, 5 total, 6 available, 7 disk caches.
            let names: [UInt16: String] = [4: "free_bytes", 5: "total_bytes", 6: "available_bytes", 7: "disk_caches_bytes"]
            for (tag, value) in balloon.latestStats { if let n = names[tag] { guest[n] = value } }
        }
        let r = reclaimer.stats
        var metrics = MachineMetrics(
            memory: .init(provisionedBytes: memory.totalSize, activeBytes: active, activeWindowSeconds: config.activeMemoryWindowSeconds,
                          activeSampleOneIn: activeMemory?.sampleOneIn ?? 1, activeStatus: status, guest: guest, balloonBytes: balloon.map { UInt64($0.actualPages) * 4096 }),
            disks: diskCounters.map { .init(name: $0.name, path: $0.path, counters: $0.counters.snapshot) },
            nics: netCounters.map { .init(name: $0.name, counters: $0.counters.snapshot) })
        metrics.memory.compressedBytes = r.compressedBytes
        metrics.memory.compressedStoredBytes = r.storedBytes
        metrics.memory.swappedBytes = r.swappedBytes
        metrics.memory.zeroBytes = r.zeroBytes
        metrics.memory.reclaimKeptBytes = r.keptBytes
        metrics.memory.swapErrors = r.swapErrors
        metrics.memory.swapError = r.lastSwapError
        metrics.memory.faultinCount = r.faultinCount
        metrics.memory.faultinUsP50 = r.faultinUsP50
        metrics.memory.faultinUsP99 = r.faultinUsP99
        return metrics
    }
}

extension MachineMetrics {
    /// The control socket's JSON fields for these metrics: `"memory":{...},"disks":[...],"nics":[...]`.
    var jsonFields: String {
        var m = #""provisioned_bytes":\#(memory.provisionedBytes),"active_window_seconds":\#(memory.activeWindowSeconds),"active_sample_one_in":\#(memory.activeSampleOneIn),"active_status":\#(JSONText.string(memory.activeStatus))"#
        if let a = memory.activeBytes { m += #","active_bytes":\#(a)"# }
        if let b = memory.balloonBytes { m += #","balloon_bytes":\#(b)"# }
        m += #","compressed_bytes":\#(memory.compressedBytes),"compressed_stored_bytes":\#(memory.compressedStoredBytes),"swapped_bytes":\#(memory.swappedBytes),"zero_bytes":\#(memory.zeroBytes)"#
        m += #","reclaim_kept_bytes":\#(memory.reclaimKeptBytes),"swap_errors":\#(memory.swapErrors),"faultin_count":\#(memory.faultinCount),"faultin_us_p50":\#(memory.faultinUsP50),"faultin_us_p99":\#(memory.faultinUsP99)"#
        if let e = memory.swapError { m += #","swap_error":\#(JSONText.string(e))"# }
        if !memory.guest.isEmpty {
            m += #","guest":{"# + memory.guest.sorted { $0.key < $1.key }.map { #""\#($0.key)":\#($0.value)"# }.joined(separator: ",") + "}"
        }
        let d = disks.map { d in
            let c = d.counters
            return #"{"name":\#(JSONText.string(d.name)),"path":\#(JSONText.string(d.path)),"read_requests":\#(c.readRequests),"write_requests":\#(c.writeRequests),"flush_requests":\#(c.flushRequests),"other_requests":\#(c.otherRequests),"read_bytes":\#(c.readBytes),"write_bytes":\#(c.writeBytes),"errors":\#(c.errors)}"#
        }
        let n = nics.map { n in
            let c = n.counters
            return #"{"name":\#(JSONText.string(n.name)),"rx_frames":\#(c.rxFrames),"rx_bytes":\#(c.rxBytes),"rx_drops":\#(c.rxDrops),"tx_frames":\#(c.txFrames),"tx_bytes":\#(c.txBytes),"tx_drops":\#(c.txDrops)}"#
        }
        return #""memory":{\#(m)},"disks":[\#(d.joined(separator: ","))],"nics":[\#(n.joined(separator: ","))]"#
    }
}

/// JSON text for the control socket's hand-built replies (the VMM does not link Foundation).
enum JSONText {
    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func string(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
