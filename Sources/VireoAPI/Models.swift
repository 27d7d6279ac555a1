#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

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

public struct DiskSpec: Codable, Sendable, Equatable {
    /// The disk's file. For a store image (`image`) the daemon fills it in at create.
    public var path: String
    public var readonly: Bool?
    /// A store image (GET /v1/images) instead of `path`; see docs/images.md.
    public var image: String?
    public init(path: String, readonly: Bool? = nil, image: String? = nil) { self.path = path; self.readonly = readonly; self.image = image }
    public static let fields: Set<String> = ["path", "readonly", "image"]
    enum CodingKeys: String, CodingKey { case path, readonly, image }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decodeIfPresent(String.self, forKey: .image)
        readonly = try c.decodeIfPresent(Bool.self, forKey: .readonly)
        // `path` may be left out when `image` names the disk.
        path = image == nil ? try c.decode(String.self, forKey: .path) : try c.decodeIfPresent(String.self, forKey: .path) ?? ""
    }
}

public struct NICSpec: Codable, Sendable, Equatable {
    /// A TAP device name on the host.
    public var tap: String
    public var mac: String?
    public init(tap: String, mac: String? = nil) { self.tap = tap; self.mac = mac }
    public static let fields: Set<String> = ["tap", "mac"]
}

/// POST /v1/vms. Only `name` is required; unknown keys are refused.
public struct VMCreate: Codable, Sendable, Equatable {
    public var name: String
    public var vcpus: Int?
    public var memoryMiB: Int?
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    /// The built-in probe guest's workload (pio:N, mmio:N, dirty[:PASSES], compute:N) instead of a kernel.
    public var probe: String?
    public var template: String?
    public var disks: [DiskSpec]?
    public var nics: [NICSpec]?
    public var balloonMiB: Int?
    public var restartPolicy: RestartPolicy?
    /// virtio-rng: guest entropy from the host's getrandom.
    public var rng: Bool?
    /// virtio-vsock with this guest CID (3 and up); the host end is the VM's vsock.sock.
    public var vsockCID: Int?

    public init(name: String, vcpus: Int? = nil, memoryMiB: Int? = nil, kernel: String? = nil, initrd: String? = nil,
                cmdline: String? = nil, probe: String? = nil, template: String? = nil, disks: [DiskSpec]? = nil,
                nics: [NICSpec]? = nil, balloonMiB: Int? = nil, restartPolicy: RestartPolicy? = nil,
                rng: Bool? = nil, vsockCID: Int? = nil) {
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.kernel = kernel; self.initrd = initrd
        self.cmdline = cmdline; self.probe = probe; self.template = template; self.disks = disks; self.nics = nics
        self.balloonMiB = balloonMiB; self.restartPolicy = restartPolicy; self.rng = rng; self.vsockCID = vsockCID
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, vcpus, memoryMiB = "memory_mib", kernel, initrd, cmdline, probe, template, disks, nics
        case balloonMiB = "balloon_mib", restartPolicy = "restart_policy", rng, vsockCID = "vsock_cid"
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// PATCH /v1/vms/{name} (only while stopped or failed): the fields given replace the stored ones.
public struct VMUpdate: Codable, Sendable, Equatable {
    public var vcpus: Int?
    public var memoryMiB: Int?
    public var cmdline: String?
    public var balloonMiB: Int?
    public var restartPolicy: RestartPolicy?

    public init(vcpus: Int? = nil, memoryMiB: Int? = nil, cmdline: String? = nil, balloonMiB: Int? = nil, restartPolicy: RestartPolicy? = nil) {
        self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.cmdline = cmdline; self.balloonMiB = balloonMiB; self.restartPolicy = restartPolicy
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case vcpus, memoryMiB = "memory_mib", cmdline, balloonMiB = "balloon_mib", restartPolicy = "restart_policy"
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// A VM's definition as stored in the inventory (what create validated).
public struct VMDefinition: Codable, Sendable, Equatable {
    public var name: String
    public var vcpus: Int
    public var memoryMiB: Int
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var probe: String?
    public var template: String?
    public var disks: [DiskSpec]
    public var nics: [NICSpec]
    public var balloonMiB: Int?
    public var restartPolicy: RestartPolicy
    public var rng: Bool?
    public var vsockCID: Int?

    public init(name: String, vcpus: Int, memoryMiB: Int, kernel: String? = nil, initrd: String? = nil, cmdline: String? = nil,
                probe: String? = nil, template: String? = nil, disks: [DiskSpec] = [], nics: [NICSpec] = [],
                balloonMiB: Int? = nil, restartPolicy: RestartPolicy = .never, rng: Bool? = nil, vsockCID: Int? = nil) {
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.kernel = kernel; self.initrd = initrd
        self.cmdline = cmdline; self.probe = probe; self.template = template; self.disks = disks; self.nics = nics
        self.balloonMiB = balloonMiB; self.restartPolicy = restartPolicy; self.rng = rng; self.vsockCID = vsockCID
    }

    enum CodingKeys: String, CodingKey {
        case name, vcpus, memoryMiB = "memory_mib", kernel, initrd, cmdline, probe, template, disks, nics
        case balloonMiB = "balloon_mib", restartPolicy = "restart_policy", rng, vsockCID = "vsock_cid"
    }
}

/// GET /v1/vms/{name}: the definition plus runtime state.
public struct VM: Codable, Sendable, Equatable {
    public var name: String
    public var vcpus: Int
    public var memoryMiB: Int
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var probe: String?
    public var template: String?
    public var disks: [DiskSpec]
    public var nics: [NICSpec]
    public var balloonMiB: Int?
    public var restartPolicy: RestartPolicy
    public var rng: Bool?
    public var vsockCID: Int?
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
        name = d.name; vcpus = d.vcpus; memoryMiB = d.memoryMiB; kernel = d.kernel; initrd = d.initrd; cmdline = d.cmdline
        probe = d.probe; template = d.template; disks = d.disks; nics = d.nics; balloonMiB = d.balloonMiB
        restartPolicy = d.restartPolicy; rng = d.rng; vsockCID = d.vsockCID; self.vsockSocket = d.vsockCID == nil ? nil : vsockSocket
        self.state = state; self.reason = reason; self.pid = pid; self.exitStatus = exitStatus
        self.restartCount = restartCount; self.consoleLog = consoleLog; self.apiSocket = apiSocket; self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case name, vcpus, memoryMiB = "memory_mib", kernel, initrd, cmdline, probe, template, disks, nics
        case balloonMiB = "balloon_mib", restartPolicy = "restart_policy", state, reason, pid
        case exitStatus = "exit_status", restartCount = "restart_count", consoleLog = "console_log"
        case apiSocket = "api_socket", createdAt = "created_at", rng, vsockCID = "vsock_cid", vsockSocket = "vsock_socket"
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
        case dataDir = "data_dir"
    }
}

/// One thing that happened to a VM (GET /v1/events).
public struct Event: Codable, Sendable, Equatable {
    public var seq: Int
    public var time: String
    public var vm: String
    public var type: String
    public var message: String
    public init(seq: Int, time: String, vm: String, type: String, message: String) {
        self.seq = seq; self.time = time; self.vm = vm; self.type = type; self.message = message
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
