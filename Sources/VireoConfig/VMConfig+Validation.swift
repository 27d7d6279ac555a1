/// Why a configuration was refused: the field, a stable code (the REST API's error code) and a
/// message that says what to change.
public struct ConfigProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var code: String
    public var message: String
    public init(_ field: String, _ code: String, _ message: String) { self.field = field; self.code = code; self.message = message }
    public var description: String { message }
}

extension VMConfig {
    /// The most PCI functions the VMM gives virtio devices (slot 0 is the host bridge).
    public static let maxDevices = 31

    /// The checks every holder of a configuration makes, the daemon at create and the VMM
    /// before it builds anything: ranges, boot source, device ids, MACs, TAP names. What depends
    /// on the host (files, its memory) is checked by the daemon and the VMM themselves.
    public func validate() throws(ConfigProblem) {
        guard configVersion <= Self.currentVersion else {
            throw ConfigProblem("config_version", "unsupported-version",
                                "config_version \(configVersion) is newer than this vireo reads (\(Self.currentVersion)); run a newer vireo")
        }
        guard VMLimits.isValidName(name) else {
            throw ConfigProblem("name", "invalid-name", "'\(name.prefix(80))' is not a valid VM name: \(VMLimits.nameRule)")
        }
        guard (1...VMLimits.maxVCPUs).contains(vcpus) else {
            throw ConfigProblem("vcpus", "out-of-range", "vcpus \(vcpus) is out of range: give 1 to \(VMLimits.maxVCPUs)")
        }
        guard (VMLimits.minMemoryMiB...VMLimits.maxMemoryMiB).contains(memoryMiB) else {
            throw ConfigProblem("memory_mib", "out-of-range", "memory_mib \(memoryMiB) is out of range: give \(VMLimits.minMemoryMiB) to \(VMLimits.maxMemoryMiB)")
        }
        if let b = balloonMiB, b < 0 || b > memoryMiB {
            throw ConfigProblem("balloon_mib", "out-of-range", "balloon_mib \(b) must be between 0 and memory_mib (\(memoryMiB))")
        }
        if balloonMiB == nil, balloonStats != nil || balloonDeflateOnOOM != nil || balloonFreePageReporting != nil {
            throw ConfigProblem("balloon_mib", "missing-field", "balloon options need a balloon: give balloon_mib (0 for an empty balloon)")
        }
        switch boot {
        case .invalid where kernel == nil:
            throw ConfigProblem("kernel", "missing-boot", "give a kernel (a vmlinux or bzImage) or a probe workload")
        case .invalid:
            throw ConfigProblem("probe", "conflicting-boot", "give either kernel or probe, not both")
        case let .probe(p):
            guard Self.isValidProbe(p) else {
                throw ConfigProblem("probe", "invalid-probe", "probe '\(p.prefix(40))' is not one of pio:N, mmio:N, dirty[:PASSES], dirty-rate:MIBPS, compute:N, echo, pattern[:MODE[:HOT-MIB]]")
            }
            if initrd != nil || cmdline != nil {
                throw ConfigProblem("initrd", "conflicting-boot", "initrd and cmdline go with a kernel, not a probe workload")
            }
            // Disks are attached but left alone by the probe guest (it has no drivers).
            if !nics.isEmpty || balloonMiB != nil || rng == true || vsockCID != nil || virtioConsole == true {
                throw ConfigProblem("probe", "conflicting-boot", "nics, balloon_mib, rng, vsock_cid and virtio_console need a kernel with virtio drivers; the probe guest has none")
            }
        case .kernel:
            if let k = kernel, k.isEmpty { throw ConfigProblem("kernel", "invalid-path", "kernel must name a file") }
        }
        if let cid = vsockCID, !(VMLimits.minVsockCID...VMLimits.maxVsockCID).contains(cid) {
            throw ConfigProblem("vsock_cid", "out-of-range", "vsock_cid \(cid) is out of range: give \(VMLimits.minVsockCID) to \(VMLimits.maxVsockCID) (0-2 are reserved for the hypervisor and host)")
        }
        if let c = cmdline, c.utf8.count > VMLimits.maxCmdlineBytes || c.contains("\n") || c.contains("\0") {
            throw ConfigProblem("cmdline", "invalid-cmdline", "cmdline must be one line of at most \(VMLimits.maxCmdlineBytes) bytes")
        }
        if let g = generationID, Self.generationIDBytes(g) == nil {
            throw ConfigProblem("generation_id", "invalid-generation-id", "generation_id '\(g.prefix(40))' is not 32 hex digits (16 bytes); leave it out and one is chosen")
        }
        try validateResources()
        try validateDevices()
    }

    /// The 16 bytes of a generation ID given as 32 hex digits (dashes allowed, as in a UUID), or nil.
    public static func generationIDBytes(_ s: String) -> [UInt8]? {
        let digits = Array(s.utf8.filter { $0 != 45 })
        guard digits.count == 32, s.utf8.count <= 36 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(16)
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        var i = 0
        while i < 32 {
            guard let hi = nibble(digits[i]), let lo = nibble(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    /// A new random generation ID (32 lowercase hex digits) from the host's getrandom.
    public static func newGenerationID() -> String {
        var g = SystemRandomNumberGenerator()
        var s = ""
        for _ in 0..<16 {
            let b = UInt8.random(in: .min ... .max, using: &g)
            s += (b < 16 ? "0" : "") + String(b, radix: 16)
        }
        return s
    }

    private func validateDevices() throws(ConfigProblem) {
        let count = disks.count + nics.count + (rng == true ? 1 : 0) + (balloonMiB != nil ? 1 : 0) + (vsockCID != nil ? 1 : 0) + (virtioConsole == true ? 1 : 0)
        guard count <= Self.maxDevices else {
            throw ConfigProblem("disks", "too-many-devices", "\(count) virtio devices is more than the \(Self.maxDevices) PCI slots a VM has; drop some disks or NICs")
        }
        var ids: Set<String> = []
        var taps: Set<String> = []
        for (n, nic) in nics.enumerated() {
            let field = "nics[\(n)]"
            if let mac = nic.mac {
                guard let bytes = Self.macBytes(mac) else {
                    throw ConfigProblem(field + ".mac", "invalid-nic", "mac '\(mac.prefix(40))' is not a MAC address like 52:54:00:12:34:56")
                }
                guard bytes[0] & 1 == 0 else {
                    throw ConfigProblem(field + ".mac", "invalid-nic", "mac \(mac) is a multicast address (the first byte must be even)")
                }
            }
            if let net = nic.network, !VMLimits.isValidNetworkName(net) {
                throw ConfigProblem(field + ".network", "invalid-nic", "network '\(net.prefix(40))' is not a valid network name (\(VMLimits.networkNameRule))")
            }
            guard Self.isValidInterfaceName(nic.tap) else {
                throw ConfigProblem(field + ".tap", "invalid-nic", "tap '\(nic.tap.prefix(40))' is not a valid interface name (1-15 of A-Z a-z 0-9 - _ .)")
            }
            guard taps.insert(nic.tap).inserted else {
                throw ConfigProblem(field + ".tap", "invalid-nic", "tap \(nic.tap) is given to two NICs; give each NIC its own TAP")
            }
            if let id = nic.id {
                guard Self.isValidDeviceID(id) else {
                    throw ConfigProblem(field + ".id", "invalid-id", "\(field).id '\(id.prefix(40))' must be 1 to 20 ASCII letters, digits, '-', '_' or '.'")
                }
                guard ids.insert(id).inserted else { throw ConfigProblem(field + ".id", "duplicate-id", "\(field).id '\(id)' is used by another device; give each its own") }
            }
        }
        for (n, disk) in disks.enumerated() {
            let field = "disks[\(n)]"
            guard !disk.path.isEmpty, disk.path.utf8.count <= VMLimits.maxPathBytes, !disk.path.contains("\0") else {
                throw ConfigProblem(field + ".path", "invalid-path", "\(field).path must name a file (at most \(VMLimits.maxPathBytes) bytes)")
            }
            if let id = disk.id {
                guard Self.isValidDeviceID(id) else {
                    throw ConfigProblem(field + ".id", "invalid-id", "\(field).id '\(id.prefix(40))' must be 1 to 20 ASCII letters, digits, '-', '_' or '.' (the guest sees it as the disk's serial)")
                }
                guard ids.insert(id).inserted else { throw ConfigProblem(field + ".id", "duplicate-id", "\(field).id '\(id)' is used by another device; give each its own") }
            }
        }
    }

    /// Fills in what a stored configuration always has: a device id for every disk (disk0,
    /// disk1, ...) and NIC (net0, ...) that has none, and the current format version.
    public mutating func assignDeviceIDs() {
        var used = Set(disks.compactMap(\.id) + nics.compactMap(\.id))
        func next(_ prefix: String) -> String {
            var i = 0
            while used.contains("\(prefix)\(i)") { i += 1 }
            used.insert("\(prefix)\(i)")
            return "\(prefix)\(i)"
        }
        for i in disks.indices where disks[i].id == nil { disks[i].id = next("disk") }
        for i in nics.indices where nics[i].id == nil { nics[i].id = next("net") }
    }

    public static func isValidDeviceID(_ id: String) -> Bool {
        (1...20).contains(id.utf8.count) && id.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46
        }
    }

    public static func isValidInterfaceName(_ s: String) -> Bool {
        (1...15).contains(s.utf8.count) && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46
        }
    }

    /// Six bytes from "52:54:00:12:34:56", or nil.
    public static func macBytes(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return parts.count == 6 && bytes.count == 6 ? bytes : nil
    }

    public static func isValidProbe(_ s: String) -> Bool {
        if s == "echo" { return true }   // COM1 echo (console tests)
        if s == "pattern" || s.hasPrefix("pattern:") {
            // pattern[:MODE[:HOT-MIB]] (memory reclaim tests and `vireo bench overcommit`)
            let p = s.split(separator: ":", omittingEmptySubsequences: false)
            guard p.count <= 3 else { return false }
            if p.count > 1, !["compressible", "random", "zero", "identical"].contains(p[1]) { return false }
            if p.count > 2 { guard !p[2].isEmpty, p[2].count <= 7, let m = UInt64(p[2]), m <= 1 << 20 else { return false } }
            return true
        }
        if s.hasPrefix("dirty-rate:") {
            // dirty-rate:MIBPS (`vireo bench migrate`): 1 MiB/s to 1 TiB/s
            guard let r = UInt64(s.dropFirst("dirty-rate:".count)), r >= 1, r <= 1 << 20 else { return false }
            return true
        }
        let parts = s.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let kind = parts.first, ["pio", "mmio", "dirty", "compute"].contains(kind) else { return false }
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 19, UInt64(parts[1]) != nil else { return false }
        }
        return true
    }
}
