/// One virtual machine's description, typed and versioned, from end to end:
/// - `POST /v1/vms` asks for one (the daemon resolves store images and templates into it),
/// - the daemon's inventory stores it (inside `VMDefinition`),
/// - the daemon hands it whole to the VMM as a file (`vireo run --config FILE`),
/// - the VMM reports the one it runs (control command `config`),
/// - `vireo run`'s flags build the same value.
///
/// JSON keys are snake_case and the same ones the REST API has always used for these fields, so
/// a VM body is a `VMConfig` plus the daemon's own keys (template, restart policy, state).
/// Process wiring (where the serial log, the control socket and the vsock's host socket go)
/// is not part of it: it differs per host and per run, the description does not.
public struct VMConfig: Codable, Sendable, Equatable {
    /// The format version written by this release. A reader refuses a newer one with a clear
    /// error, and reads every older one (0 = a definition stored before versions existed).
    public static let currentVersion = 1

    public var configVersion: Int
    public var name: String
    public var vcpus: Int
    public var memoryMiB: Int
    /// A Linux kernel: an ELF vmlinux (PVH) or a bzImage. Exactly one of kernel and probe.
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    /// The built-in probe guest's workload (pio:N, mmio:N, dirty[:PASSES], compute:N, echo).
    public var probe: String?
    /// Guest RAM on transparent huge pages (nil: on for a kernel, off for the probe).
    public var hugepages: Bool?
    public var disks: [Disk]
    public var nics: [NIC]
    /// virtio-balloon with this initial target in MiB.
    public var balloonMiB: Int?
    /// The balloon's statistics queue (guest free/available memory); nil means on.
    public var balloonStats: Bool?
    public var balloonDeflateOnOOM: Bool?
    public var balloonFreePageReporting: Bool?
    /// virtio-rng: guest entropy from the host's getrandom.
    public var rng: Bool?
    /// virtio-vsock with this guest CID (3 and up).
    public var vsockCID: Int?
    /// virtio-console (hvc0), besides the serial console.
    public var virtioConsole: Bool?
    /// The VM generation ID (32 hex digits, 16 bytes) a Linux guest reads through the ACPI
    /// `vmgenid` device. It changes when the VM is cloned or reverted to a snapshot, so the
    /// guest reseeds its RNG and knows it is no longer the VM it was. nil: the VMM picks one
    /// at boot (and records it, so a snapshot carries it).
    public var generationID: String?
    /// Resource controls the daemon applies through the VM's cgroup (docs/memory.md): CPU
    /// shares (relative weight, 1-10000, 100 when absent), a CPU limit and a CPU reservation in
    /// percent of one core (150 = 1.5 cores), a memory reservation (never reclaimed below) and
    /// limit (never given more) in MiB, memory shares (who is reclaimed first). nil: none.
    public var cpuShares: Int?
    public var cpuLimitPct: Int?
    public var cpuReservationPct: Int?
    public var memoryReservationMiB: Int?
    public var memoryLimitMiB: Int?
    public var memoryShares: Int?
    /// Guest RAM mergeable by KSM (transparent page sharing). Off unless asked: pages shared
    /// with another tenant's VM are a timing side channel between them.
    public var shareable: Bool?

    public init(name: String, vcpus: Int = 1, memoryMiB: Int = 512, kernel: String? = nil, initrd: String? = nil,
                cmdline: String? = nil, probe: String? = nil, disks: [Disk] = [], nics: [NIC] = [],
                balloonMiB: Int? = nil, rng: Bool? = nil, vsockCID: Int? = nil) {
        configVersion = Self.currentVersion
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.kernel = kernel; self.initrd = initrd
        self.cmdline = cmdline; self.probe = probe; self.disks = disks; self.nics = nics
        self.balloonMiB = balloonMiB; self.rng = rng; self.vsockCID = vsockCID
    }

    /// What the VM boots.
    public enum Boot: Sendable, Equatable {
        case kernel(path: String, initrd: String?, cmdline: String?)
        case probe(String)
        /// Neither or both were given (validation refuses this).
        case invalid
    }

    public var boot: Boot {
        switch (kernel, probe) {
        case let (k?, nil): return .kernel(path: k, initrd: initrd, cmdline: cmdline)
        case let (nil, p?): return .probe(p)
        default: return .invalid
        }
    }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case configVersion = "config_version", name, vcpus, memoryMiB = "memory_mib", kernel, initrd, cmdline, probe, hugepages
        case disks, nics, balloonMiB = "balloon_mib", balloonStats = "balloon_stats", balloonDeflateOnOOM = "balloon_deflate_on_oom"
        case balloonFreePageReporting = "balloon_free_page_reporting", rng, vsockCID = "vsock_cid", virtioConsole = "virtio_console"
        case generationID = "generation_id"
        case cpuShares = "cpu_shares", cpuLimitPct = "cpu_limit_pct", cpuReservationPct = "cpu_reservation_pct"
        case memoryReservationMiB = "memory_reservation_mib", memoryLimitMiB = "memory_limit_mib", memoryShares = "memory_shares", shareable
    }
    /// Every JSON key of a VMConfig.
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        configVersion = try c.decodeIfPresent(Int.self, forKey: .configVersion) ?? 0
        name = try c.decode(String.self, forKey: .name)
        vcpus = try c.decodeIfPresent(Int.self, forKey: .vcpus) ?? VMLimits.defaultVCPUs
        memoryMiB = try c.decodeIfPresent(Int.self, forKey: .memoryMiB) ?? VMLimits.defaultMemoryMiB
        kernel = try c.decodeIfPresent(String.self, forKey: .kernel)
        initrd = try c.decodeIfPresent(String.self, forKey: .initrd)
        cmdline = try c.decodeIfPresent(String.self, forKey: .cmdline)
        probe = try c.decodeIfPresent(String.self, forKey: .probe)
        hugepages = try c.decodeIfPresent(Bool.self, forKey: .hugepages)
        disks = try c.decodeIfPresent([Disk].self, forKey: .disks) ?? []
        nics = try c.decodeIfPresent([NIC].self, forKey: .nics) ?? []
        balloonMiB = try c.decodeIfPresent(Int.self, forKey: .balloonMiB)
        balloonStats = try c.decodeIfPresent(Bool.self, forKey: .balloonStats)
        balloonDeflateOnOOM = try c.decodeIfPresent(Bool.self, forKey: .balloonDeflateOnOOM)
        balloonFreePageReporting = try c.decodeIfPresent(Bool.self, forKey: .balloonFreePageReporting)
        rng = try c.decodeIfPresent(Bool.self, forKey: .rng)
        vsockCID = try c.decodeIfPresent(Int.self, forKey: .vsockCID)
        virtioConsole = try c.decodeIfPresent(Bool.self, forKey: .virtioConsole)
        generationID = try c.decodeIfPresent(String.self, forKey: .generationID)
        cpuShares = try c.decodeIfPresent(Int.self, forKey: .cpuShares)
        cpuLimitPct = try c.decodeIfPresent(Int.self, forKey: .cpuLimitPct)
        cpuReservationPct = try c.decodeIfPresent(Int.self, forKey: .cpuReservationPct)
        memoryReservationMiB = try c.decodeIfPresent(Int.self, forKey: .memoryReservationMiB)
        memoryLimitMiB = try c.decodeIfPresent(Int.self, forKey: .memoryLimitMiB)
        memoryShares = try c.decodeIfPresent(Int.self, forKey: .memoryShares)
        shareable = try c.decodeIfPresent(Bool.self, forKey: .shareable)
    }

    public func encode(to encoder: Encoder) throws { try encode(to: encoder, omitting: []) }

    /// Encodes every field but those in `omitting` (a create request leaves out what it did not set).
    public func encode(to encoder: Encoder, omitting: Set<CodingKeys>) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        func put<T: Encodable>(_ v: T?, _ k: CodingKeys) throws {
            if let v, !omitting.contains(k) { try c.encode(v, forKey: k) }
        }
        try put(configVersion, .configVersion)
        try put(name, .name)
        try put(vcpus, .vcpus)
        try put(memoryMiB, .memoryMiB)
        try put(kernel, .kernel)
        try put(initrd, .initrd)
        try put(cmdline, .cmdline)
        try put(probe, .probe)
        try put(hugepages, .hugepages)
        try put(disks, .disks)
        try put(nics, .nics)
        try put(balloonMiB, .balloonMiB)
        try put(balloonStats, .balloonStats)
        try put(balloonDeflateOnOOM, .balloonDeflateOnOOM)
        try put(balloonFreePageReporting, .balloonFreePageReporting)
        try put(rng, .rng)
        try put(vsockCID, .vsockCID)
        try put(virtioConsole, .virtioConsole)
        try put(generationID, .generationID)
        try put(cpuShares, .cpuShares)
        try put(cpuLimitPct, .cpuLimitPct)
        try put(cpuReservationPct, .cpuReservationPct)
        try put(memoryReservationMiB, .memoryReservationMiB)
        try put(memoryLimitMiB, .memoryLimitMiB)
        try put(memoryShares, .memoryShares)
        try put(shareable, .shareable)
    }
}

// MARK: - Disks

/// The on-disk formats a VM's disk can run on. The daemon records one for every disk when the
/// disk is defined; the VMM checks the file's signature against it before the guest sees a byte.
public enum DiskFormat: String, Codable, Sendable, CaseIterable {
    case raw, qcow2
}

/// Which backing files a disk's image may name (the image's chain opens read-only under it).
public enum BackingRule: String, Codable, Sendable, CaseIterable {
    /// Any path the image names (qemu-img's behaviour).
    case any
    /// Only files in the image's own directory or below it.
    case confined
    /// No backing file at all.
    case forbidden
}

extension VMConfig {
    public struct Disk: Codable, Sendable, Equatable {
        /// Stable device id: the guest sees it as the disk's serial (/sys/block/vdX/serial), and
        /// snapshots key the disk's state by it. 1-20 ASCII characters without spaces.
        public var id: String?
        /// The disk's file. For a store image (`image`) the daemon fills it in at create.
        public var path: String
        /// A store image (GET /v1/images) instead of `path`.
        public var image: String?
        /// The file's format. Requests may leave it out (the daemon detects it by signature
        /// once and records it); a stored or running configuration always has it.
        public var format: DiskFormat?
        public var readonly: Bool?
        /// Which backing files the image may name (nil: any).
        public var backing: BackingRule?
        public var rateLimit: RateLimit?

        public init(path: String, format: DiskFormat? = nil, readonly: Bool? = nil, image: String? = nil, id: String? = nil,
                    backing: BackingRule? = nil, rateLimit: RateLimit? = nil) {
            self.path = path; self.format = format; self.readonly = readonly; self.image = image; self.id = id
            self.backing = backing; self.rateLimit = rateLimit
        }

        public var isReadOnly: Bool { readonly == true }

        public enum CodingKeys: String, CodingKey, CaseIterable {
            case id, path, image, format, readonly, backing, rateLimit = "rate_limit"
        }
        public static let fields = Set(CodingKeys.allCases.map(\.rawValue))

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try c.decodeIfPresent(String.self, forKey: .id)
            image = try c.decodeIfPresent(String.self, forKey: .image)
            // `path` may be left out when `image` names the disk.
            path = image == nil ? try c.decode(String.self, forKey: .path) : try c.decodeIfPresent(String.self, forKey: .path) ?? ""
            format = try c.decodeIfPresent(DiskFormat.self, forKey: .format)
            readonly = try c.decodeIfPresent(Bool.self, forKey: .readonly)
            backing = try c.decodeIfPresent(BackingRule.self, forKey: .backing)
            rateLimit = try c.decodeIfPresent(RateLimit.self, forKey: .rateLimit)
        }
    }

    // MARK: - NICs

    public struct NIC: Codable, Sendable, Equatable {
        /// Stable device id (snapshots key the NIC's state by it).
        public var id: String?
        /// A TAP device name on the host. For a NIC on a daemon network (`network`) the daemon
        /// names it at create (requests leave it out), makes it when the VM starts, attaches it
        /// to the network's bridge, and deletes it when the VMM ends; the VMM just opens it.
        public var tap: String
        /// nil: the VMM derives a stable locally administered MAC from the VM and the NIC.
        public var mac: String?
        public var rateLimit: RateLimit?
        /// The daemon network (GET /v1/networks) this NIC joins; nil: a TAP the user wired up.
        public var network: String?

        public init(tap: String, mac: String? = nil, id: String? = nil, rateLimit: RateLimit? = nil, network: String? = nil) {
            self.tap = tap; self.mac = mac; self.id = id; self.rateLimit = rateLimit; self.network = network
        }

        public enum CodingKeys: String, CodingKey, CaseIterable {
            case id, tap, mac, rateLimit = "rate_limit", network
        }
        public static let fields = Set(CodingKeys.allCases.map(\.rawValue))

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try c.decodeIfPresent(String.self, forKey: .id)
            network = try c.decodeIfPresent(String.self, forKey: .network)
            // `tap` may be left out when `network` names the NIC's network (the daemon names it).
            tap = network == nil ? try c.decode(String.self, forKey: .tap) : try c.decodeIfPresent(String.self, forKey: .tap) ?? ""
            mac = try c.decodeIfPresent(String.self, forKey: .mac)
            rateLimit = try c.decodeIfPresent(RateLimit.self, forKey: .rateLimit)
        }
    }
}

/// Token-bucket limits of one device; 0 or absent is unlimited. Bursts default to one
/// second's worth. For a disk, ops are requests; for a NIC, frames.
public struct RateLimit: Codable, Sendable, Equatable {
    public var bytesPerSecond: UInt64
    public var bytesBurst: UInt64
    public var opsPerSecond: UInt64
    public var opsBurst: UInt64

    public init(bytesPerSecond: UInt64 = 0, bytesBurst: UInt64 = 0, opsPerSecond: UInt64 = 0, opsBurst: UInt64 = 0) {
        self.bytesPerSecond = bytesPerSecond; self.bytesBurst = bytesBurst; self.opsPerSecond = opsPerSecond; self.opsBurst = opsBurst
    }

    public var isUnlimited: Bool { bytesPerSecond == 0 && opsPerSecond == 0 }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case bytesPerSecond = "bytes_per_second", bytesBurst = "bytes_burst", opsPerSecond = "ops_per_second", opsBurst = "ops_burst"
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        bytesPerSecond = try c.decodeIfPresent(UInt64.self, forKey: .bytesPerSecond) ?? 0
        bytesBurst = try c.decodeIfPresent(UInt64.self, forKey: .bytesBurst) ?? 0
        opsPerSecond = try c.decodeIfPresent(UInt64.self, forKey: .opsPerSecond) ?? 0
        opsBurst = try c.decodeIfPresent(UInt64.self, forKey: .opsBurst) ?? 0
    }
}
