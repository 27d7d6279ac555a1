import DiskImage
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The destination of a live migration between daemons (docs/migration.md): another daemon
/// asks this one to take in a VM (POST /v1/migrations). The VM is recorded as starting, its
/// disks are made here for a storage copy, and a VMM is started that waits for the stream on
/// this daemon's listen address with a one-time token. The VM is this daemon's once its VMM
/// runs; if the VMM ends first (the source cancelled, the link broke), the VM and the disks
/// made for it are removed again, and nothing of it is left.
extension HostService {
    func migrationTokenPath(_ name: String) -> String { vmDir(name) + "/migration.token" }

    func configureMigrationListener(host: String) { migrationListenHost = host }

    func acceptIncoming(_ req: IncomingMigrationRequest) async throws -> IncomingMigrationTicket {
        guard let host = migrationListenHost else {
            throw HTTPError.invalid("no-migration-listener", "this daemon has no TCP listener, so no migration can reach it; start it with --listen ADDR:PORT --token-file FILE")
        }
        var def = req.vm
        let name = def.name
        guard VMLimits.isValidName(name) else {
            throw HTTPError(400, "invalid-name", "'\(name.prefix(80))' is not a valid VM name: \(VMLimits.nameRule)")
        }
        if try inventory.get(name) != nil {
            throw HTTPError.conflict("a VM named '\(name)' already exists on the destination; rename or delete it there first")
        }
        def.template = nil   // the template is the source's; its disks come as files
        return try await withVMLock(name) {
            try Self.makeDirectory(vmDir(name))
            var made: [String] = []
            do {
                if req.storage == .copy {
                    made = try makeIncomingDisks(&def.config, sizes: req.diskSizes ?? [])
                }
                try Validation.check(def, socketPath: consoleSocketPath(name), admission: admission)
                try Validation.checkFiles(def)
                try confineFiles(&def.config)
                let r = VMRecord(definition: def, state: .stopped, reason: nil, pid: nil, pidStartTime: nil, exitStatus: nil,
                                 restartCount: 0, createdAt: WallClock.now())
                try inventory.insert(r)
            } catch {
                for f in made { unlink(f) }
                rmdir(vmDir(name))
                throw error
            }
            var r = try record(name)
            let token = try Self.randomHex(32)
            let port: Int
            do {
                try Self.writeSecret(token, to: migrationTokenPath(name))
                port = try Self.freeTCPPort(host: host)
                try launch(&r, incoming: VMMCommand.Incoming(address: "tcp:\(host):\(port)", tokenFile: migrationTokenPath(name)))
            } catch {
                try? removeVM(name)
                throw error
            }
            r.reason = "receiving a live migration\(req.source.map { " from \($0)" } ?? "")"
            try inventory.update(r)
            event(name, "migration-incoming", "\(r.reason ?? ""), VMM listening on port \(port)\(req.storage == .copy ? ", disks copied into \(vmDir(name))" : "")")
            Task { await self.watchIncoming(name) }
            return IncomingMigrationTicket(vm: name, port: port, token: token)
        }
    }

    /// Follows an incoming VM until its VMM runs the guest (the VM is this daemon's now) or ends
    /// (the migration failed: the VM and its copied disks go again). Holds the VM's lock, so the
    /// supervisor leaves it alone meanwhile.
    func watchIncoming(_ name: String) async {
        _ = try? await withVMLock(name) {
            for _ in 0..<(30 * 60 * 10) {   // 30 minutes at most (a storage copy of a large disk)
                guard var r = try? record(name), r.state == .starting else { return }
                if let status = exitStatusIfGone(r) {
                    let why = readExitFile(name)?.reason
                        ?? (status > 128 ? "its VMM was stopped by signal \(status - 128) (the source gave the migration up)" : nil)
                        ?? lastErrorLine(name) ?? "the VMM exited with status \(status)"
                    try? removeVM(name)
                    event(name, "migration-in-failed", "the VM did not arrive and was removed here: \(why)")
                    return
                }
                if let reply = VMMProcess.control(socketPath(name), "status", timeoutSeconds: 1) {
                    r.state = reply.contains(#""state":"paused""#) ? .paused : .running
                    r.reason = nil
                    try? inventory.update(r)
                    unlink(migrationTokenPath(name))
                    event(name, "migrated-in", "VMM pid \(r.pid ?? 0) runs the VM here now")
                    return
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// DELETE /v1/migrations/{name}: the source gave up; an incoming VM that does not run yet
    /// is stopped (its watcher then removes it).
    func abandonIncoming(_ name: String) throws {
        let r = try record(name)
        guard r.state == .starting, ProcFS.fileExists(migrationTokenPath(name)) else {
            throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue) here, not an incoming migration that can be abandoned")
        }
        if let pid = r.pid { Glibc.kill(pid, SIGKILL) }
        event(name, "migration-in-abandoned", "the source gave the migration up")
    }

    /// The disks of a storage copy: one new file per source disk in the VM's directory, of the
    /// source disk's virtual size (qcow2 for qcow2, raw for raw; no backing file: the copy is
    /// flattened), and the configuration pointed at them. Returns the files made.
    private func makeIncomingDisks(_ config: inout VMConfig, sizes: [Int64]) throws -> [String] {
        guard sizes.count == config.disks.count else {
            throw HTTPError(400, "invalid-request", "disk_sizes names \(sizes.count) sizes for \(config.disks.count) disks")
        }
        var made: [String] = []
        do {
            for i in config.disks.indices {
                let size = sizes[i]
                guard size >= 512, size <= 1 << 46 else {
                    throw HTTPError(400, "invalid-request", "disk_sizes[\(i)] = \(size) is not a disk size (512 bytes to 64 TiB)")
                }
                let id = config.disks[i].id ?? "disk\(i)"
                guard VMLimits.isValidName(id) else { throw HTTPError(400, "invalid-request", "disk id '\(id.prefix(40))' is not a valid name") }
                let raw = config.disks[i].format == .raw
                let path = vmDir(config.name) + "/disk-\(id).\(raw ? "raw" : "qcow2")"
                if raw { try RawImage.create(path: path, size: UInt64(size)) } else { try Qcow2Image.create(path: path, size: UInt64(size)) }
                made.append(path)
                config.disks[i].path = path
                config.disks[i].image = nil
                config.disks[i].backing = nil
                config.disks[i].format = raw ? .raw : .qcow2
            }
        } catch {
            for f in made { unlink(f) }
            throw error
        }
        return made
    }

    static func randomHex(_ bytes: Int) throws -> String {
        var b = [UInt8](repeating: 0, count: bytes)
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VireoError.system("cannot open /dev/urandom for a migration token") }
        defer { close(fd) }
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n == bytes else { throw VireoError.system("cannot read random bytes for a migration token") }
        return b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    static func writeSecret(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot write \(path)") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else { throw VireoError.system("cannot write \(path)") }
    }

    /// A TCP port free on `host` now (the kernel picks it; the VMM binds it a moment later).
    static func freeTCPPort(host: String) throws -> Int {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "0", &hints, &res) == 0, let ai = res else {
            throw VireoError(.invalidArgument, "the listen address '\(host)' does not resolve")
        }
        defer { freeaddrinfo(res) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("cannot create a socket") }
        defer { close(fd) }
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else { throw VireoError.system("cannot bind a port on \(host)") }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &ss) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard ok == 0 else { throw VireoError.system("cannot read the port picked on \(host)") }
        // SAFETY: getsockname filled a sockaddr_in or sockaddr_in6 into the storage; both keep
        // the port at the same offset, and the storage is larger than either.
        let port: UInt16 = withUnsafePointer(to: &ss) { p in
            p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }
        }
        return Int(UInt16(bigEndian: port))
    }
}
