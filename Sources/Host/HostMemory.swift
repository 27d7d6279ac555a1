import VireoAPI
import VireoSupport

/// The host's memory as the reclamation ladder sees it (docs/memory.md): how much there is, how
/// much is free, the minFree reserve, and the state those make.
///
/// When the daemon runs inside a memory cgroup with a limit below the machine's RAM, that limit
/// is its host: total = the limit, free = the limit minus what the group uses that the kernel
/// could not simply drop (usage minus inactive page cache). Otherwise total = MemTotal and free
/// = MemAvailable.
public struct HostMemory: Sendable, Equatable {
    var totalBytes: UInt64
    var freeBytes: UInt64
    /// "host" (/proc/meminfo) or the cgroup's path.
    var source: String

    /// ESXi's sliding scale: 6% of the first 4 GiB, 4% of the next 8, 2% of the next 16 and 1% of
    /// the rest (899 MiB at 28 GiB).
    public static func minFree(totalBytes t: UInt64) -> UInt64 {
        let gib: UInt64 = 1 << 30
        let bands: [(UInt64, UInt64)] = [(4 * gib, 6), (8 * gib, 4), (16 * gib, 2), (UInt64.max, 1)]
        var rest = t, out: UInt64 = 0
        for (size, pct) in bands where rest > 0 {
            let part = min(rest, size)
            out += part / 100 * pct
            rest -= part
        }
        return out
    }

    /// The states' lower edges in percent of minFree: high from 400%, clear from 100%, soft from
    /// 64%, hard from 32%, low below that (ESXi 6's thresholds).
    static let edges: [(HostMemoryState, UInt64)] = [(.high, 400), (.clear, 100), (.soft, 64), (.hard, 32)]

    public static func state(freeBytes: UInt64, minFree: UInt64) -> HostMemoryState {
        for (state, pct) in edges {
            let (edge, overflow) = (minFree / 100).multipliedReportingOverflow(by: pct)
            if !overflow, freeBytes >= edge { return state }
        }
        return .low
    }

    /// `minFreeOverride`: `vireo host --memory-min-free`.
    func minFree(override: UInt64?) -> UInt64 { override ?? Self.minFree(totalBytes: totalBytes) }

    /// The daemon's memory cgroup's limit and working set, when it has a limit below the RAM.
    static func cgroupView(physical: UInt64) -> HostMemory? {
        guard case let .success(layout) = VMCgroup.detectLayout() else { return nil }
        let dir: String, limitFile: String, usageFile: String
        switch layout {
        case let .v1(_, memory):
            dir = VMCgroup.join(memory, VMCgroup.ownPath(controller: "memory"), "")
            limitFile = "memory.limit_in_bytes"; usageFile = "memory.usage_in_bytes"
        case let .v2(mount):
            dir = VMCgroup.join(mount, VMCgroup.ownPath(controller: ""), "")
            limitFile = "memory.max"; usageFile = "memory.current"
        }
        // v1's memory.stat has the limit of the whole chain above (hierarchical_memory_limit).
        let stat = ProcFS.read(dir + "memory.stat") ?? ""
        func statValue(_ key: String) -> UInt64? {
            for line in stat.split(separator: "\n") where line.hasPrefix(key + " ") { return UInt64(line.split(separator: " ").last ?? "") }
            return nil
        }
        func number(_ file: String) -> UInt64? { ProcFS.read(dir + file).flatMap { UInt64($0.prefix(while: { $0.isNumber })) } }
        let limit = [number(limitFile), statValue("hierarchical_memory_limit")].compactMap { $0 }.min()
        guard let limit, limit < physical, let usage = number(usageFile) else { return nil }
        let inactive = statValue("total_inactive_file") ?? statValue("inactive_file") ?? 0
        let used = usage > inactive ? usage - inactive : 0
        return HostMemory(totalBytes: limit, freeBytes: limit > used ? limit - used : 0, source: String(dir.dropLast()))
    }

    static func sample() -> HostMemory {
        let meminfo = ProcFS.read("/proc/meminfo") ?? ""
        func kib(_ key: String) -> UInt64? {
            for line in meminfo.split(separator: "\n") where line.hasPrefix(key + ":") {
                let f = line.split(separator: " ")
                if f.count >= 2, let v = UInt64(f[1]) { return v << 10 }
            }
            return nil
        }
        let total = kib("MemTotal") ?? ProcFS.physicalMemory
        let host = HostMemory(totalBytes: total, freeBytes: min(total, kib("MemAvailable") ?? kib("MemFree") ?? 0), source: "host")
        guard let cg = cgroupView(physical: total) else { return host }
        // The tighter of the two: a cgroup on a host that itself runs short is short too.
        return cg.freeBytes <= host.freeBytes ? cg : HostMemory(totalBytes: cg.totalBytes, freeBytes: host.freeBytes, source: cg.source)
    }
}
