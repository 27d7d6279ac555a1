import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The kernel's same-page merging (/sys/kernel/mm/ksm), driven like ksmtuned: on while some
/// VM is shareable, scanning faster as host memory runs short; off when nothing is shareable.
/// Only VMs marked `shareable` have MADV_MERGEABLE guest RAM, so KSM merges only their pages.
enum KSM {
    static let dir = "/sys/kernel/mm/ksm"

    static var available: Bool { access(dir + "/run", W_OK) == 0 }

    static func value(_ file: String) -> UInt64? {
        ProcFS.read(dir + "/" + file).flatMap { UInt64($0.prefix(while: { $0.isNumber })) }
    }

    @discardableResult
    static func set(_ file: String, _ v: UInt64) -> Bool {
        if value(file) == v { return true }
        do { try VMCgroup.write(dir + "/" + file, String(v)); return true } catch { return false }
    }

    /// Pages scanned per wake-up (every `sleep_millisecs`, 20 by default) in each state:
    /// ksmtuned's range (100 to 1250) and more when reclaim is urgent.
    static func pagesToScan(_ state: HostMemoryState) -> UInt64 {
        switch state {
        case .high: return 100
        case .clear: return 400
        case .soft: return 1250
        case .hard: return 2500
        case .low: return 5000
        }
    }

    struct Snapshot: Sendable, Equatable {
        var run: UInt64, pagesToScan: UInt64, pagesShared: UInt64, pagesSharing: UInt64, fullScans: UInt64
    }

    static func snapshot() -> Snapshot? {
        guard let run = value("run") else { return nil }
        return Snapshot(run: run, pagesToScan: value("pages_to_scan") ?? 0, pagesShared: value("pages_shared") ?? 0,
                        pagesSharing: value("pages_sharing") ?? 0, fullScans: value("full_scans") ?? 0)
    }

    /// Pages of process `pid` that KSM has merged (each backed by a shared page now):
    /// /proc/PID/ksm_merging_pages, or ksm_stat's line on kernels with only that.
    static func mergingPages(pid: Int32) -> UInt64? {
        if let s = ProcFS.read("/proc/\(pid)/ksm_merging_pages"), let v = UInt64(s.prefix(while: { $0.isNumber })) { return v }
        guard let stat = ProcFS.read("/proc/\(pid)/ksm_stat") else { return nil }
        for line in stat.split(separator: "\n") where line.hasPrefix("ksm_merging_pages ") {
            return UInt64(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    static let pageSize = UInt64(max(4096, sysconf(Int32(_SC_PAGESIZE))))
}
