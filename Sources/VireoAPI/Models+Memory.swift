/// The host's memory state (docs/memory.md): which steps of the reclamation ladder run.
/// high: sharing only; clear: sharing, faster; soft: balloons; hard: compression and swap in
/// the VMMs; low: new VM starts are refused.
public enum HostMemoryState: String, Codable, Sendable, CaseIterable, Comparable {
    case high, clear, soft, hard, low

    public var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// The host's reclamation ladder now (GET /v1/host `memory_ladder`, `vireo host info`).
public struct HostMemoryLadder: Codable, Sendable, Equatable {
    public var state: HostMemoryState
    /// The memory the states are measured on: the host's RAM, or the daemon's memory cgroup's limit.
    public var totalBytes: UInt64
    public var freeBytes: UInt64
    public var minFreeBytes: UInt64
    /// "host" (/proc/meminfo) or the memory cgroup's directory.
    public var source: String
    public var stateChanges: Int
    /// What each step holds back now: pages KSM saves (pages_sharing), memory in balloons, and
    /// what the VMMs compressed and swapped.
    public var ksmSavedBytes: UInt64
    public var balloonBytes: UInt64
    public var compressedBytes: UInt64
    public var swappedBytes: UInt64
    /// KSM's run (0 off, 1 on) and scan rate as the daemon set them; nil where KSM is absent.
    public var ksmRun: UInt64?
    public var ksmPagesToScan: UInt64?
    /// Running VMs the balloon policy cannot reclaim from: no balloon device, or no guest figures.
    public var vmsWithoutBalloon: [String]
    /// Running VMs whose VMM answered `reclaim` with "unknown command" (it cannot compress).
    public var vmsWithoutReclaim: [String]

    public init(state: HostMemoryState, totalBytes: UInt64, freeBytes: UInt64, minFreeBytes: UInt64, source: String, stateChanges: Int,
                ksmSavedBytes: UInt64, balloonBytes: UInt64, compressedBytes: UInt64, swappedBytes: UInt64, ksmRun: UInt64?,
                ksmPagesToScan: UInt64?, vmsWithoutBalloon: [String], vmsWithoutReclaim: [String]) {
        self.state = state; self.totalBytes = totalBytes; self.freeBytes = freeBytes; self.minFreeBytes = minFreeBytes
        self.source = source; self.stateChanges = stateChanges; self.ksmSavedBytes = ksmSavedBytes; self.balloonBytes = balloonBytes
        self.compressedBytes = compressedBytes; self.swappedBytes = swappedBytes; self.ksmRun = ksmRun
        self.ksmPagesToScan = ksmPagesToScan; self.vmsWithoutBalloon = vmsWithoutBalloon; self.vmsWithoutReclaim = vmsWithoutReclaim
    }

    enum CodingKeys: String, CodingKey {
        case state, totalBytes = "total_bytes", freeBytes = "free_bytes", minFreeBytes = "min_free_bytes", source
        case stateChanges = "state_changes", ksmSavedBytes = "ksm_saved_bytes", balloonBytes = "balloon_bytes"
        case compressedBytes = "compressed_bytes", swappedBytes = "swapped_bytes", ksmRun = "ksm_run", ksmPagesToScan = "ksm_pages_to_scan"
        case vmsWithoutBalloon = "vms_without_balloon", vmsWithoutReclaim = "vms_without_reclaim"
    }
}
