import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Checks of a VM definition; every failure is the client's (422) with what to change.
enum Validation {
    static func check(_ d: VMDefinition, socketPath: String) throws {
        guard (1...VMLimits.maxVCPUs).contains(d.vcpus) else {
            throw HTTPError.invalid("out-of-range", "vcpus \(d.vcpus) is out of range: give 1 to \(VMLimits.maxVCPUs)")
        }
        let hostLimitMiB = Int(min(ProcFS.memoryAndSwap &* 4 >> 20, UInt64(VMLimits.maxMemoryMiB)))
        let maxMiB = hostLimitMiB > 0 ? hostLimitMiB : VMLimits.maxMemoryMiB
        guard (VMLimits.minMemoryMiB...maxMiB).contains(d.memoryMiB) else {
            throw HTTPError.invalid("out-of-range", "memory_mib \(d.memoryMiB) is out of range: give \(VMLimits.minMemoryMiB) to \(maxMiB) (4x this host's RAM and swap)")
        }
        if let b = d.balloonMiB, b < 0 || b > d.memoryMiB {
            throw HTTPError.invalid("out-of-range", "balloon_mib \(b) must be between 0 and memory_mib (\(d.memoryMiB))")
        }
        switch (d.kernel, d.probe) {
        case (nil, nil):
            throw HTTPError.invalid("missing-boot", "give a kernel (an absolute path to a vmlinux or bzImage) or a probe workload")
        case (.some, .some):
            throw HTTPError.invalid("conflicting-boot", "give either kernel or probe, not both")
        case (nil, let probe?):
            guard isValidProbe(probe) else {
                throw HTTPError.invalid("invalid-probe", "probe '\(probe.prefix(40))' is not one of pio:N, mmio:N, dirty[:PASSES], compute:N")
            }
            if d.initrd != nil || d.cmdline != nil {
                throw HTTPError.invalid("conflicting-boot", "initrd and cmdline go with a kernel, not a probe workload")
            }
            // Disks are attached but left alone by the probe guest (it has no drivers).
            if !d.nics.isEmpty || d.balloonMiB != nil || d.rng == true || d.vsockCID != nil {
                throw HTTPError.invalid("conflicting-boot", "nics, balloon_mib, rng and vsock_cid need a kernel with virtio drivers; the probe guest has none")
            }
        case (.some, nil):
            break
        }
        if let cid = d.vsockCID, !(VMLimits.minVsockCID...VMLimits.maxVsockCID).contains(cid) {
            throw HTTPError.invalid("out-of-range", "vsock_cid \(cid) is out of range: give \(VMLimits.minVsockCID) to \(VMLimits.maxVsockCID) (0-2 are reserved for the hypervisor and host)")
        }
        if let c = d.cmdline, c.utf8.count > VMLimits.maxCmdlineBytes || c.contains("\n") || c.contains("\0") {
            throw HTTPError.invalid("invalid-cmdline", "cmdline must be one line of at most \(VMLimits.maxCmdlineBytes) bytes")
        }
        for (n, disk) in d.disks.enumerated() where disk.path.contains(",") {
            throw HTTPError.invalid("invalid-path", "disks[\(n)].path must not contain ',' (the VMM's --disk spec separates options with it)")
        }
        for nic in d.nics {
            if let mac = nic.mac, !isValidMAC(mac) {
                throw HTTPError.invalid("invalid-nic", "mac '\(mac.prefix(40))' is not a MAC address like 52:54:00:12:34:56")
            }
            let ok = (1...15).contains(nic.tap.utf8.count) && nic.tap.utf8.allSatisfy { c in
                (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46
            }
            guard ok else { throw HTTPError.invalid("invalid-nic", "tap '\(nic.tap.prefix(40))' is not a valid interface name (1-15 of A-Z a-z 0-9 - _ .)") }
        }
        // The longest unix socket path a VM has: its console socket, or with vsock the socket a
        // guest connection to port 4294967295 arrives on.
        let longest = d.vsockCID == nil || socketPath.isEmpty ? socketPath
            : String(socketPath.dropLast("console.sock".utf8.count)) + "vsock.sock_4294967295"
        guard longest.utf8.count < 108 else {   // (templates pass "": no socket)
            throw HTTPError.invalid("name-too-long", "the VM's socket path \(longest) would exceed 107 bytes; use a shorter name (or a shorter --data-dir)")
        }
        try checkFiles(d)
    }

    /// The files a definition names must exist now (checked at create and again at start).
    static func checkFiles(_ d: VMDefinition) throws {
        var files: [(String, String)] = []
        if let k = d.kernel { files.append(("kernel", k)) }
        if let i = d.initrd { files.append(("initrd", i)) }
        for (n, disk) in d.disks.enumerated() { files.append(("disks[\(n)].path", disk.path)) }
        for (field, path) in files { try checkFile(field, path) }
    }

    /// `path` (named `field` in errors) is absolute, a regular file, and readable by the daemon.
    static func checkFile(_ field: String, _ path: String) throws {
        guard path.hasPrefix("/"), path.utf8.count <= VMLimits.maxPathBytes, !path.contains("\0") else {
            throw HTTPError.invalid("invalid-path", "\(field) '\(path.prefix(200))' must be an absolute path on the daemon's host")
        }
        guard ProcFS.fileExists(path) else {
            throw HTTPError.invalid("file-not-found", "\(field) \(path.prefix(200)) does not exist or is not a regular file")
        }
        guard access(path, R_OK) == 0 else {
            throw HTTPError.invalid("file-not-readable", "\(field) \(path.prefix(200)) is not readable by the daemon")
        }
    }

    static func isValidMAC(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count == 6 && parts.allSatisfy { $0.count == 2 && UInt8($0, radix: 16) != nil }
    }

    static func isValidProbe(_ s: String) -> Bool {
        let parts = s.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        if s == "echo" { return true }   // COM1 echo (console tests)
        guard let kind = parts.first, ["pio", "mmio", "dirty", "compute"].contains(kind) else { return false }
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 19, UInt64(parts[1]) != nil else { return false }
        }
        return true
    }
}
