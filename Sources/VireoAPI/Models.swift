#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_exported import VireoConfig

// The REST API's bodies. Field names are the JSON names (snake_case) through CodingKeys;
// `openapi/vireo.json` (OpenAPIDocument.json) is the contract these follow.

public enum VMState: String, Codable, Sendable, CaseIterable {
    case stopped, starting, running, paused, failed
    /// States in which a VMM process exists.
    public var hasProcess: Bool { self == .starting || self == .running || self == .paused }
}

public enum RestartPolicy: String, Codable, Sendable, CaseIterable {
    case never
    case onFailure = "on-failure"
    case always
}

/// A VM's disk and NIC, as the API, the inventory and the VMM all see them (VireoConfig).
public typealias DiskSpec = VMConfig.Disk
public typealias NICSpec = VMConfig.NIC

/// POST /v1/vms: a VM configuration (VireoConfig's `VMConfig`, every field but `name`
/// optional) plus what the daemon resolves or keeps itself: a template to start from and the
/// restart policy. Unknown keys are refused.
@dynamicMemberLookup
public struct VMCreate: Codable, Sendable, Equatable {
    /// The requested configuration; fields left out of the body are nil or empty here.
    public var config: VMConfig
    public var template: String?
    public var restartPolicy: RestartPolicy?
    /// Whether the body gave vcpus / memory_mib (a template's own values apply otherwise).
    public var vcpusGiven: Bool
    public var memoryGiven: Bool

    public init(name: String, vcpus: Int? = nil, memoryMiB: Int? = nil, kernel: String? = nil, initrd: String? = nil,
                cmdline: String? = nil, probe: String? = nil, template: String? = nil, disks: [DiskSpec]? = nil,
                nics: [NICSpec]? = nil, balloonMiB: Int? = nil, restartPolicy: RestartPolicy? = nil,
                rng: Bool? = nil, vsockCID: Int? = nil) {
        config = VMConfig(name: name, vcpus: vcpus ?? VMLimits.defaultVCPUs, memoryMiB: memoryMiB ?? VMLimits.defaultMemoryMiB,
                          kernel: kernel, initrd: initrd, cmdline: cmdline, probe: probe, disks: disks ?? [], nics: nics ?? [],
                          balloonMiB: balloonMiB, rng: rng, vsockCID: vsockCID)
        vcpusGiven = vcpus != nil; memoryGiven = memoryMiB != nil
        self.template = template; self.restartPolicy = restartPolicy
    }

    public subscript<T>(dynamicMember keyPath: WritableKeyPath<VMConfig, T>) -> T {
        get { config[keyPath: keyPath] }
        set { config[keyPath: keyPath] = newValue }
    }

    /// vCPUs and memory as asked (nil: not given; the template's or the default applies).
    public var vcpus: Int? {
        get { vcpusGiven ? config.vcpus : nil }
        set { config.vcpus = newValue ?? VMLimits.defaultVCPUs; vcpusGiven = newValue != nil }
    }
    public var memoryMiB: Int? {
        get { memoryGiven ? config.memoryMiB : nil }
        set { config.memoryMiB = newValue ?? VMLimits.defaultMemoryMiB; memoryGiven = newValue != nil }
    }

    enum ExtraKeys: String, CodingKey, CaseIterable { case template, restartPolicy = "restart_policy" }
    /// Every key a create body may have. `config_version` is the daemon's to set.
    public static let fields = VMConfig.fields.subtracting(["config_version"]).union(ExtraKeys.allCases.map(\.rawValue))
    /// The keys allowed inside the objects of each array or object field ("a.b": inside b of a's objects).
    public static let nestedFields: [String: Set<String>] = ["disks": DiskSpec.fields, "nics": NICSpec.fields,
                                                             "disks.rate_limit": RateLimit.fields, "nics.rate_limit": RateLimit.fields]

    public init(from decoder: Decoder) throws {
        config = try VMConfig(from: decoder)
        config.configVersion = VMConfig.currentVersion
        let c = try decoder.container(keyedBy: VMConfig.CodingKeys.self)
        vcpusGiven = c.contains(.vcpus)
        memoryGiven = c.contains(.memoryMiB)
        let x = try decoder.container(keyedBy: ExtraKeys.self)
        template = try x.decodeIfPresent(String.self, forKey: .template)
        restartPolicy = try x.decodeIfPresent(RestartPolicy.self, forKey: .restartPolicy)
    }

    public func encode(to encoder: Encoder) throws {
        var omit: Set<VMConfig.CodingKeys> = [.configVersion]
        if !vcpusGiven { omit.insert(.vcpus) }
        if !memoryGiven { omit.insert(.memoryMiB) }
        if config.disks.isEmpty { omit.insert(.disks) }
        if config.nics.isEmpty { omit.insert(.nics) }
        try config.encode(to: encoder, omitting: omit)
        var x = encoder.container(keyedBy: ExtraKeys.self)
        try x.encodeIfPresent(template, forKey: .template)
        try x.encodeIfPresent(restartPolicy, forKey: .restartPolicy)
    }
}

/// PATCH /v1/vms/{name}: the fields given replace the stored ones. vcpus, memory, cmdline,
/// balloon and shareable only while stopped or failed (the VMM keeps them); the restart policy
/// and the resource controls at any time (a running VM's cgroup changes at once). For a limit
/// or a reservation, 0 removes it.
public struct VMUpdate: Codable, Sendable, Equatable {
    public var vcpus: Int?
    public var memoryMiB: Int?
    public var cmdline: String?
    public var balloonMiB: Int?
    public var restartPolicy: RestartPolicy?
    public var cpuShares: Int?
    public var cpuLimitPct: Int?
    public var cpuReservationPct: Int?
    public var memoryReservationMiB: Int?
    public var memoryLimitMiB: Int?
    public var memoryShares: Int?
    public var shareable: Bool?

    public init(vcpus: Int? = nil, memoryMiB: Int? = nil, cmdline: String? = nil, balloonMiB: Int? = nil, restartPolicy: RestartPolicy? = nil) {
        self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.cmdline = cmdline; self.balloonMiB = balloonMiB; self.restartPolicy = restartPolicy
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case vcpus, memoryMiB = "memory_mib", cmdline, balloonMiB = "balloon_mib", restartPolicy = "restart_policy"
        case cpuShares = "cpu_shares", cpuLimitPct = "cpu_limit_pct", cpuReservationPct = "cpu_reservation_pct"
        case memoryReservationMiB = "memory_reservation_mib", memoryLimitMiB = "memory_limit_mib", memoryShares = "memory_shares", shareable
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))

    /// Whether it changes only what a running VM can change (the restart policy, resource controls).
    public var isLiveChange: Bool { vcpus == nil && memoryMiB == nil && cmdline == nil && balloonMiB == nil && shareable == nil }
}

/// A VM's definition as stored in the inventory: its configuration (what the VMM runs, whole)
/// and what only the daemon uses (the template it came from, its restart policy). In JSON the
/// three sit side by side, as the API has always shown them.
@dynamicMemberLookup
public struct VMDefinition: Codable, Sendable, Equatable {
    public var config: VMConfig
    public var template: String?
    public var restartPolicy: RestartPolicy

    public init(config: VMConfig, template: String? = nil, restartPolicy: RestartPolicy = .never) {
        self.config = config; self.template = template; self.restartPolicy = restartPolicy
    }

    public init(name: String, vcpus: Int, memoryMiB: Int, kernel: String? = nil, initrd: String? = nil, cmdline: String? = nil,
                probe: String? = nil, template: String? = nil, disks: [DiskSpec] = [], nics: [NICSpec] = [],
                balloonMiB: Int? = nil, restartPolicy: RestartPolicy = .never, rng: Bool? = nil, vsockCID: Int? = nil) {
        config = VMConfig(name: name, vcpus: vcpus, memoryMiB: memoryMiB, kernel: kernel, initrd: initrd, cmdline: cmdline,
                          probe: probe, disks: disks, nics: nics, balloonMiB: balloonMiB, rng: rng, vsockCID: vsockCID)
        self.template = template; self.restartPolicy = restartPolicy
    }

    public subscript<T>(dynamicMember keyPath: WritableKeyPath<VMConfig, T>) -> T {
        get { config[keyPath: keyPath] }
        set { config[keyPath: keyPath] = newValue }
    }

    enum ExtraKeys: String, CodingKey { case template, restartPolicy = "restart_policy" }

    public init(from decoder: Decoder) throws {
        config = try VMConfig(from: decoder)
        let x = try decoder.container(keyedBy: ExtraKeys.self)
        template = try x.decodeIfPresent(String.self, forKey: .template)
        restartPolicy = try x.decodeIfPresent(RestartPolicy.self, forKey: .restartPolicy) ?? .never
    }

    public func encode(to encoder: Encoder) throws {
        try config.encode(to: encoder)
        var x = encoder.container(keyedBy: ExtraKeys.self)
        try x.encodeIfPresent(template, forKey: .template)
        try x.encode(restartPolicy, forKey: .restartPolicy)
    }
}

/// GET /v1/vms/{name}: the definition plus runtime state, side by side in JSON.
@dynamicMemberLookup
public struct VM: Codable, Sendable, Equatable {
    public var definition: VMDefinition
    /// The host end of the VM's vsock (Firecracker-style unix socket), when it has one.
    public var vsockSocket: String?
    public var state: VMState
    /// Why the VM is failed or last stopped (one line), when known.
    public var reason: String?
    public var pid: Int?
    public var exitStatus: Int?
    public var restartCount: Int
    public var consoleLog: String
    public var apiSocket: String
    public var createdAt: String

    public init(definition d: VMDefinition, state: VMState, reason: String?, pid: Int?, exitStatus: Int?,
                restartCount: Int, consoleLog: String, apiSocket: String, createdAt: String, vsockSocket: String? = nil) {
        definition = d
        self.vsockSocket = d.vsockCID == nil ? nil : vsockSocket
        self.state = state; self.reason = reason; self.pid = pid; self.exitStatus = exitStatus
        self.restartCount = restartCount; self.consoleLog = consoleLog; self.apiSocket = apiSocket; self.createdAt = createdAt
    }

    public var name: String { definition.config.name }
    public var template: String? { definition.template }
    public var restartPolicy: RestartPolicy { definition.restartPolicy }

    public subscript<T>(dynamicMember keyPath: WritableKeyPath<VMConfig, T>) -> T {
        get { definition.config[keyPath: keyPath] }
        set { definition.config[keyPath: keyPath] = newValue }
    }

    enum CodingKeys: String, CodingKey {
        case state, reason, pid, exitStatus = "exit_status", restartCount = "restart_count", consoleLog = "console_log"
        case apiSocket = "api_socket", createdAt = "created_at", vsockSocket = "vsock_socket"
    }

    public init(from decoder: Decoder) throws {
        definition = try VMDefinition(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vsockSocket = try c.decodeIfPresent(String.self, forKey: .vsockSocket)
        state = try c.decode(VMState.self, forKey: .state)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        pid = try c.decodeIfPresent(Int.self, forKey: .pid)
        exitStatus = try c.decodeIfPresent(Int.self, forKey: .exitStatus)
        restartCount = try c.decode(Int.self, forKey: .restartCount)
        consoleLog = try c.decode(String.self, forKey: .consoleLog)
        apiSocket = try c.decode(String.self, forKey: .apiSocket)
        createdAt = try c.decode(String.self, forKey: .createdAt)
    }

    public func encode(to encoder: Encoder) throws {
        try definition.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(vsockSocket, forKey: .vsockSocket)
        try c.encode(state, forKey: .state)
        try c.encodeIfPresent(reason, forKey: .reason)
        try c.encodeIfPresent(pid, forKey: .pid)
        try c.encodeIfPresent(exitStatus, forKey: .exitStatus)
        try c.encode(restartCount, forKey: .restartCount)
        try c.encode(consoleLog, forKey: .consoleLog)
        try c.encode(apiSocket, forKey: .apiSocket)
        try c.encode(createdAt, forKey: .createdAt)
    }
}

public struct VMList: Codable, Sendable, Equatable {
    public var vms: [VM]
    public init(vms: [VM]) { self.vms = vms }
}

/// GET /v1/host: this server's facts and capacity (the same figures as /metrics).
public struct HostInfo: Codable, Sendable, Equatable {
    public var hostname: String
    public var version: String
    public var kvm: Bool
    public var pcpus: Int
    public var memoryPhysicalBytes: UInt64
    public var memoryProvisionedBytes: UInt64
    public var vcpusProvisioned: Int
    public var vcpuOvercommitRatio: Double
    public var vmsTotal: Int
    public var vmsRunning: Int
    public var dataDir: String
    /// The host memory state (high, clear, soft, hard, low) and the ladder's figures (docs/memory.md).
    public var memoryState: HostMemoryState?
    public var memoryLadder: HostMemoryLadder?

    public init(hostname: String, version: String, kvm: Bool, pcpus: Int, memoryPhysicalBytes: UInt64, memoryProvisionedBytes: UInt64,
                vcpusProvisioned: Int, vcpuOvercommitRatio: Double, vmsTotal: Int, vmsRunning: Int, dataDir: String) {
        self.hostname = hostname; self.version = version; self.kvm = kvm; self.pcpus = pcpus
        self.memoryPhysicalBytes = memoryPhysicalBytes; self.memoryProvisionedBytes = memoryProvisionedBytes
        self.vcpusProvisioned = vcpusProvisioned; self.vcpuOvercommitRatio = vcpuOvercommitRatio
        self.vmsTotal = vmsTotal; self.vmsRunning = vmsRunning; self.dataDir = dataDir
    }

    enum CodingKeys: String, CodingKey {
        case hostname, version, kvm, pcpus, memoryPhysicalBytes = "memory_physical_bytes"
        case memoryProvisionedBytes = "memory_provisioned_bytes", vcpusProvisioned = "vcpus_provisioned"
        case vcpuOvercommitRatio = "vcpu_overcommit_ratio", vmsTotal = "vms_total", vmsRunning = "vms_running"
        case dataDir = "data_dir", memoryState = "memory_state", memoryLadder = "memory_ladder"
    }
}

/// One thing that happened to a VM (GET /v1/events).
/// What an event is about: a VM, a template or an image (stream control lines: "").
public enum EventSubjectKind: String, Codable, Sendable, CaseIterable {
    case vm, template, image, network, host
}

public struct Event: Codable, Sendable, Equatable {
    /// 0 for lines that are not stored: progress (live only) and the stream's control lines.
    public var seq: Int
    public var time: String
    /// The subject's name, whatever its kind: the first API's field, kept for its clients.
    /// Read `subject_kind` and `subject`.
    public var vm: String
    public var type: String
    public var message: String
    /// `vm`, `template` or `image` (a String, so a newer daemon's kinds still decode).
    public var subjectKind: String
    /// The name of the VM, template or image the event is about.
    public var subject: String

    public init(seq: Int, time: String, subjectKind: EventSubjectKind, subject: String, type: String, message: String) {
        self.seq = seq; self.time = time; self.vm = subject; self.type = type; self.message = message
        self.subjectKind = subjectKind.rawValue; self.subject = subject
    }

    /// A line about no subject (the stream's own control lines: stream-dropped, daemon-stopping).
    public init(control type: String, seq: Int = 0, time: String, message: String) {
        self.seq = seq; self.time = time; self.vm = ""; self.type = type; self.message = message
        self.subjectKind = ""; self.subject = ""
    }

    enum CodingKeys: String, CodingKey {
        case seq, time, vm, type, message, subjectKind = "subject_kind", subject
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        seq = try c.decode(Int.self, forKey: .seq)
        time = try c.decode(String.self, forKey: .time)
        type = try c.decode(String.self, forKey: .type)
        message = try c.decode(String.self, forKey: .message)
        let vm = try c.decodeIfPresent(String.self, forKey: .vm)
        // A daemon from before subjects sent only `vm` (the name of whatever the event was about).
        subject = try c.decodeIfPresent(String.self, forKey: .subject) ?? vm ?? ""
        self.vm = vm ?? subject
        subjectKind = try c.decodeIfPresent(String.self, forKey: .subjectKind) ?? "vm"
    }

    /// How the CLI names the subject: `web` for a VM (as before), `image d1`, `template debian`.
    public var subjectLabel: String {
        subjectKind == EventSubjectKind.vm.rawValue || subjectKind.isEmpty ? subject : "\(subjectKind) \(subject)"
    }
}

public struct EventList: Codable, Sendable, Equatable {
    public var events: [Event]
    public init(events: [Event]) { self.events = events }
}

/// Every 4xx/5xx body.
public struct APIErrorBody: Codable, Sendable, Equatable, Error, CustomStringConvertible {
    public var code: String
    public var message: String
    public init(code: String, message: String) { self.code = code; self.message = message }
    public var description: String { message }
}

/// POST /v1/templates: a reusable boot definition ("virtual appliance"): kernel, initrd, cmdline
/// and an optional base disk image that VMs created from it get a linked clone (qcow2 overlay) of.
public struct TemplateCreate: Codable, Sendable, Equatable {
    public var name: String
    public var kernel: String
    public var initrd: String?
    public var cmdline: String?
    public var baseDisk: String?
    public var vcpus: Int?
    public var memoryMiB: Int?
    /// A store image as the base disk, instead of `base_disk`.
    public var baseImage: String?

    public init(name: String, kernel: String, initrd: String? = nil, cmdline: String? = nil, baseDisk: String? = nil,
                vcpus: Int? = nil, memoryMiB: Int? = nil, baseImage: String? = nil) {
        self.name = name; self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline; self.baseDisk = baseDisk
        self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.baseImage = baseImage
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, kernel, initrd, cmdline, baseDisk = "base_disk", vcpus, memoryMiB = "memory_mib", baseImage = "base_image"
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

public struct Template: Codable, Sendable, Equatable {
    public var name: String
    public var kernel: String
    public var initrd: String?
    public var cmdline: String?
    public var baseDisk: String?
    /// Format of the base disk (raw, qcow2, ...), probed at creation.
    public var baseFormat: String?
    public var vcpus: Int
    public var memoryMiB: Int
    public var createdAt: String
    /// The store image `base_disk` was resolved from, if one was named.
    public var baseImage: String?

    public init(name: String, kernel: String, initrd: String?, cmdline: String?, baseDisk: String?, baseFormat: String?,
                vcpus: Int, memoryMiB: Int, createdAt: String, baseImage: String? = nil) {
        self.name = name; self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline; self.baseDisk = baseDisk
        self.baseFormat = baseFormat; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.createdAt = createdAt
        self.baseImage = baseImage
    }

    enum CodingKeys: String, CodingKey {
        case name, kernel, initrd, cmdline, baseDisk = "base_disk", baseFormat = "base_format", vcpus
        case memoryMiB = "memory_mib", createdAt = "created_at", baseImage = "base_image"
    }
}

public struct TemplateList: Codable, Sendable, Equatable {
    public var templates: [Template]
    public init(templates: [Template]) { self.templates = templates }
}

/// GET /v1/vms/{name}/config: the VM's configuration as stored and, while its VMM runs, as
/// the VMM reports it runs it.
public struct VMConfigReport: Codable, Sendable, Equatable {
    public var stored: VMConfig
    public var running: VMConfig?
    /// Present while the VMM runs: whether it runs exactly what is stored.
    public var inSync: Bool?

    public init(stored: VMConfig, running: VMConfig?) {
        self.stored = stored; self.running = running; inSync = running.map { $0 == stored }
    }

    enum CodingKeys: String, CodingKey { case stored, running, inSync = "in_sync" }
}

/// POST /v1/vms/{name}/snapshots.
public struct SnapshotCreate: Codable, Sendable, Equatable {
    public var name: String
    public init(name: String) { self.name = name }
    public static let fields: Set<String> = ["name"]
}

/// POST /v1/vms/{name}/clone: a new VM from this one. From a snapshot (`snapshot`), the clone
/// runs on from the snapshot's running state, on disks that are overlays of the snapshot's
/// disk contents; without one, the VM must be stopped and its read-write disks are copied.
/// Either way the clone gets its own MAC addresses, vsock CID and VM generation ID.
public struct VMClone: Codable, Sendable, Equatable {
    public var name: String
    public var snapshot: String?
    /// Start the clone once it is made.
    public var start: Bool?
    /// A TAP per NIC of the source, in order (a clone cannot share its source's TAPs).
    public var taps: [String]?
    public init(name: String, snapshot: String? = nil, start: Bool? = nil, taps: [String]? = nil) {
        self.name = name; self.snapshot = snapshot; self.start = start; self.taps = taps
    }
    public static let fields: Set<String> = ["name", "snapshot", "start", "taps"]
}

/// One saved running state of a VM (GET /v1/vms/{name}/snapshots).
public struct Snapshot: Codable, Sendable, Equatable {
    public var name: String
    public var vm: String
    public var createdAt: String
    /// What the VM was when it was taken (running or paused); revert brings it back so.
    public var vmState: VMState
    /// Bytes on disk (the state and the guest pages written; untouched RAM takes none).
    public var sizeBytes: Int64
    public var memoryBytes: Int64
    /// The internal snapshot holding the VM's read-write qcow2 disks as they were (nil when the
    /// VM has none); deleting the snapshot deletes it from the disks.
    public var diskSnapshot: String?

    public init(name: String, vm: String, createdAt: String, vmState: VMState, sizeBytes: Int64, memoryBytes: Int64, diskSnapshot: String? = nil) {
        self.name = name; self.vm = vm; self.createdAt = createdAt; self.vmState = vmState; self.sizeBytes = sizeBytes; self.memoryBytes = memoryBytes
        self.diskSnapshot = diskSnapshot
    }

    enum CodingKeys: String, CodingKey {
        case name, vm, createdAt = "created_at", vmState = "vm_state", sizeBytes = "size_bytes", memoryBytes = "memory_bytes"
        case diskSnapshot = "disk_snapshot"
    }
}

public struct SnapshotList: Codable, Sendable, Equatable {
    public var snapshots: [Snapshot]
    public init(snapshots: [Snapshot]) { self.snapshots = snapshots }
}
