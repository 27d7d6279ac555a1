import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// How the daemon runs one VM's VMM: the VM's configuration goes whole into a file in the VM's
/// directory (`config.json`, mode 0600), which `vireo run --config` reads; the flags carry only
/// this run's wiring (where the console log, the control, console and vsock sockets and the exit
/// file go), none of the VM's description. Nothing the API accepted is rebuilt on the way.
public enum VMMCommand {
    /// With `restore`, the VMM restores that snapshot directory instead of booting, under the
    /// configuration in `configPath` (checked against the one the snapshot was taken with: the
    /// same machine; a clone's own disks, TAPs, MACs, vsock CID and generation ID may differ).
    /// With `incoming`, the VMM waits for a live migration (and runs it under `configPath`).
    public static func arguments(vmmBinary: String, configPath: String, restore: String? = nil, console: String, apiSocket: String, exitFile: String,
                                 consoleSocket: String? = nil, vsockSocket: String? = nil, virtioConsoleLog: String? = nil,
                                 incoming: Incoming? = nil) -> [String] {
        var argv = [vmmBinary, "run"] + (restore.map { ["--restore", $0] } ?? []) + ["--config", configPath]
            + ["--serial", "file=\(console)", "--api-socket", apiSocket, "--exit-file", exitFile]
        if let incoming { argv += ["--incoming", incoming.address, "--incoming-token-file", incoming.tokenFile] }
        if let consoleSocket { argv += ["--console-socket", consoleSocket] }
        if let vsockSocket { argv += ["--vsock-socket", vsockSocket] }
        if let virtioConsoleLog { argv += ["--console-log", virtioConsoleLog] }
        return argv
    }

    /// Where an incoming migration's VMM listens (`tcp:HOST:PORT`) and the file holding the
    /// token its source must present.
    public struct Incoming: Sendable {
        public var address: String
        public var tokenFile: String
        public init(address: String, tokenFile: String) { self.address = address; self.tokenFile = tokenFile }
    }

    /// Writes `config` to `path` atomically (a temporary file, fsync, rename): a VMM never reads
    /// a half-written configuration, and a failed write leaves the previous one.
    public static func writeConfig(_ config: VMConfig, to path: String) throws {
        let bytes = config.jsonBytes(pretty: true) + [10]
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot create \(tmp)") }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; let e = errno; close(fd); unlink(tmp); throw VireoError.system("cannot write \(tmp)", errno: e) }
            off += n
        }
        guard fsync(fd) == 0 else { let e = errno; close(fd); unlink(tmp); throw VireoError.system("cannot sync \(tmp)", errno: e) }
        close(fd)
        guard rename(tmp, path) == 0 else { let e = errno; unlink(tmp); throw VireoError.system("cannot rename \(tmp) to \(path)", errno: e) }
    }
}
