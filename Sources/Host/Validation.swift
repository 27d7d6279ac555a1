import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Checks of a VM definition; every failure is the client's (422) with what to change. What
/// any holder of a configuration checks lives in `VMConfig.validate()` (VireoConfig); this adds
/// what depends on this host: its memory admission, socket path lengths, files that must exist.
enum Validation {
    static func check(_ d: VMDefinition, socketPath: String, admission: MemoryAdmission, what: String = "VM") throws {
        do throws(ConfigProblem) { try d.config.validate() } catch {
            throw HTTPError.invalid(error.code, error.message)
        }
        // The host's memory admission (Admission.swift): the VM alone must fit what the host
        // admits in all; what running VMs hold is checked at start.
        try admission.checkDefinition(what: what, name: d.name, memoryMiB: d.memoryMiB)
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
}
