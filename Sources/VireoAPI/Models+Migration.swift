/// POST /v1/vms/{name}/migrate: move a running VM to the daemon listening at `to` (its
/// `--listen ADDR:PORT`), which `token` (its bearer token) lets this daemon use.
public struct MigrateRequest: Codable, Sendable, Equatable {
    public var to: String
    public var token: String
    /// `copy` sends the disks' contents too (local disks; the destination gets its own copies);
    /// `shared` (the default) hands over disks both hosts reach at the same paths.
    public var storage: MigrationStorage?
    /// The longest pause the guest may see at the switch-over (default 50 ms).
    public var maxDowntimeMs: Int?
    /// Cap on the migration stream, in MiB/s (default: as fast as the link goes).
    public var maxBandwidthMiB: Int?

    public init(to: String, token: String, storage: MigrationStorage? = nil, maxDowntimeMs: Int? = nil, maxBandwidthMiB: Int? = nil) {
        self.to = to; self.token = token; self.storage = storage; self.maxDowntimeMs = maxDowntimeMs; self.maxBandwidthMiB = maxBandwidthMiB
    }
    enum CodingKeys: String, CodingKey, CaseIterable {
        case to, token, storage, maxDowntimeMs = "max_downtime_ms", maxBandwidthMiB = "max_bandwidth_mib"
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

public enum MigrationStorage: String, Codable, Sendable, CaseIterable {
    case copy, shared
}

/// A VM's live migration as its source daemon follows it (GET /v1/vms/{name}/migration).
public struct MigrationInfo: Codable, Sendable, Equatable {
    public var vm: String
    /// The destination daemon (ADDR:PORT).
    public var destination: String
    public var storage: MigrationStorage
    /// setup, precopy, stop-and-copy, completed, failed, cancelled, unknown.
    public var phase: String
    public var round: Int
    public var bytesSent: Int64
    public var diskBytesSent: Int64
    /// RAM and disk bytes the guest dirtied that the next round must send.
    public var remainingBytes: Int64
    public var dirtyBytesPerS: Int64
    public var bandwidthBytesPerS: Int64
    public var expectedDowntimeMs: Int64
    public var downtimeTargetMs: Int64
    /// The guest's pause, measured (once it has moved).
    public var downtimeMs: Int64?
    public var totalMs: Int64
    public var error: String?
    public var startedAt: String

    public init(vm: String, destination: String, storage: MigrationStorage, phase: String, round: Int = 0, bytesSent: Int64 = 0,
                diskBytesSent: Int64 = 0, remainingBytes: Int64 = 0, dirtyBytesPerS: Int64 = 0, bandwidthBytesPerS: Int64 = 0,
                expectedDowntimeMs: Int64 = 0, downtimeTargetMs: Int64 = 0, downtimeMs: Int64? = nil, totalMs: Int64 = 0,
                error: String? = nil, startedAt: String) {
        self.vm = vm; self.destination = destination; self.storage = storage; self.phase = phase; self.round = round
        self.bytesSent = bytesSent; self.diskBytesSent = diskBytesSent; self.remainingBytes = remainingBytes
        self.dirtyBytesPerS = dirtyBytesPerS; self.bandwidthBytesPerS = bandwidthBytesPerS; self.expectedDowntimeMs = expectedDowntimeMs
        self.downtimeTargetMs = downtimeTargetMs; self.downtimeMs = downtimeMs; self.totalMs = totalMs; self.error = error; self.startedAt = startedAt
    }

    /// Whether the migration has ended (either way).
    public var isFinished: Bool { ["completed", "failed", "cancelled", "unknown"].contains(phase) }

    enum CodingKeys: String, CodingKey {
        case vm, destination, storage, phase, round, bytesSent = "bytes_sent", diskBytesSent = "disk_bytes_sent"
        case remainingBytes = "remaining_bytes", dirtyBytesPerS = "dirty_bytes_per_s", bandwidthBytesPerS = "bandwidth_bytes_per_s"
        case expectedDowntimeMs = "expected_downtime_ms", downtimeTargetMs = "downtime_target_ms", downtimeMs = "downtime_ms"
        case totalMs = "total_ms", error, startedAt = "started_at"
    }
}

/// POST /v1/migrations (daemon to daemon): the destination takes in a VM that is about to
/// arrive: it records it, makes its disks (storage copy) and starts a VMM waiting for the stream.
public struct IncomingMigrationRequest: Codable, Sendable, Equatable {
    /// The VM's definition at the source.
    public var vm: VMDefinition
    public var storage: MigrationStorage
    /// Each disk's virtual size in bytes, in the VM's disk order (storage copy).
    public var diskSizes: [Int64]?
    /// The source host's name (for the destination's events).
    public var source: String?

    public init(vm: VMDefinition, storage: MigrationStorage, diskSizes: [Int64]? = nil, source: String? = nil) {
        self.vm = vm; self.storage = storage; self.diskSizes = diskSizes; self.source = source
    }
    enum CodingKeys: String, CodingKey, CaseIterable { case vm, storage, diskSizes = "disk_sizes", source }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// The destination's answer: where its VMM waits and the one-time token it will accept.
public struct IncomingMigrationTicket: Codable, Sendable, Equatable {
    public var vm: String
    public var port: Int
    public var token: String
    public init(vm: String, port: Int, token: String) { self.vm = vm; self.port = port; self.token = token }
}
