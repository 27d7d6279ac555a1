#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DiskImage
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Snapshots of a VM's running state (docs/snapshots.md): each is a directory
/// `vms/NAME/snapshots/SNAP/` (the VMM's `state.vsnap` and `memory.bin`, and the daemon's
/// `snapshot.json`). A suspended VM's state is `vms/NAME/suspended/`; `start` resumes from it.
/// The VMM writes them (control `snapshot DIR`, called off the service actor so a long save
/// holds up no other request) and restores them (`vireo run --restore DIR`).
extension HostService {
    func snapshotsDir(_ vm: String) -> String { vmDir(vm) + "/snapshots" }
    func snapshotDir(_ vm: String, _ snap: String) -> String { snapshotsDir(vm) + "/" + snap }
    func suspendDir(_ vm: String) -> String { vmDir(vm) + "/suspended" }
    func isSuspended(_ vm: String) -> Bool { ProcFS.fileExists(suspendDir(vm) + "/state.vsnap") }

    func listSnapshots(_ name: String) throws -> [Snapshot] {
        _ = try record(name)
        return Self.directoryEntries(snapshotsDir(name)).sorted().compactMap { readSnapshotMeta(name, $0) }
    }

    private func readSnapshotMeta(_ vm: String, _ snap: String) -> Snapshot? {
        guard VMLimits.isValidName(snap), let bytes = try? OwnedFD.readFile(snapshotDir(vm, snap) + "/snapshot.json", limit: 1 << 16, what: "snapshot"),
              let s = try? JSONDecoder().decode(Snapshot.self, from: Data(bytes)) else { return nil }
        return s
    }

    /// Saves the running (or paused) VM's state as `snap`; the VM goes on as it was.
    func createSnapshot(_ name: String, _ c: SnapshotCreate) async throws -> Snapshot {
        guard VMLimits.isValidName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid snapshot name: \(VMLimits.nameRule)")
        }
        return try await withVMLock(name) {
            let r = try record(name)
            guard r.state == .running || r.state == .paused else {
                throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); a snapshot saves a running or paused VM (start it first)")
            }
            let dir = snapshotDir(name, c.name)
            guard !ProcFS.fileExists(dir + "/snapshot.json") && access(dir, F_OK) != 0 else {
                throw HTTPError.conflict("VM '\(name)' already has a snapshot named '\(c.name)'; delete it first (`vireo vm snapshot delete \(name) \(c.name)`)")
            }
            try Self.makeDirectory(snapshotsDir(name))
            event(name, "snapshot-started", c.name)
            let reply = try await controlOffActor(socketPath(name), "snapshot \(dir)", timeoutSeconds: 600)
            guard reply.contains(#""ok":true"#) else {
                _ = rmdir(dir)
                let why = Self.jsonField(reply, "error") ?? reply
                event(name, "snapshot-failed", "\(c.name): \(why)")
                throw HTTPError.conflict("VM '\(name)': the snapshot was not taken: \(why)")
            }
            let size = Self.allocatedBytes(dir + "/state.vsnap") + Self.allocatedBytes(dir + "/memory.bin")
            let memory = Int64(Self.jsonField(reply, "memory_bytes").flatMap { Int64($0) } ?? 0)
            let snap = Snapshot(name: c.name, vm: name, createdAt: WallClock.now(), vmState: r.state, sizeBytes: size, memoryBytes: memory,
                                diskSnapshot: Self.jsonField(reply, "disk_snapshot"))
            // The configuration the VMM ran, beside its state: a clone starts from it.
            if let config = try? OwnedFD.readFile(configPath(name), limit: 1 << 20, what: "VM configuration") {
                try? Self.writeSmallFile(config, to: snapshotConfigPath(name, c.name))
            }
            try Self.writeMeta(snap, to: dir + "/snapshot.json")
            event(name, "snapshot-created", "\(c.name): \(size) bytes in \(Self.jsonField(reply, "ms") ?? "?") ms")
            return snap
        }
    }

    func deleteSnapshot(_ name: String, _ snap: String) async throws {
        try await withVMLock(name) {
            _ = try record(name)
            let r = try record(name)
            guard VMLimits.isValidName(snap), let meta = readSnapshotMeta(name, snap) else {
                throw HTTPError(404, "not-found", "VM '\(name)' has no snapshot named '\(snap.prefix(80))'; `vireo vm snapshot list \(name)` shows them")
            }
            if let tag = meta.diskSnapshot { try await forgetDiskSnapshot(r, tag) }
            Self.removeTree(snapshotDir(name, snap))
            event(name, "snapshot-deleted", snap)
        }
    }

    /// Deletes the internal disk snapshot `tag` that a machine snapshot made in the VM's
    /// read-write qcow2 disks: through the VMM while one runs (it holds the disks), else in the
    /// image files. A disk that no longer has it is fine; any other failure keeps the snapshot.
    func forgetDiskSnapshot(_ r: VMRecord, _ tag: String) async throws {
        if r.state.hasProcess {
            let reply = try await controlOffActor(socketPath(r.name), "forget-disk-snapshot \(tag)", timeoutSeconds: 120)
            guard reply.contains(#""ok":true"#) else {
                throw HTTPError.conflict("VM '\(r.name)': its disks' snapshot \(tag) could not be deleted: \(Self.jsonField(reply, "error") ?? reply)")
            }
            return
        }
        guard let bytes = try? OwnedFD.readFile(configPath(r.name), limit: 1 << 20, what: "VM configuration"),
              let config = try? VMConfig.decode(bytes, source: configPath(r.name)) else { return }
        for disk in config.disks where !disk.isReadOnly && disk.format == .qcow2 {
            do {
                let image = try Qcow2Image.open(path: disk.path)
                defer { try? image.close() }
                try image.deleteSnapshot(name: tag)
            } catch where error.code == .notFound {
                continue
            } catch {
                throw HTTPError.conflict("VM '\(r.name)': the snapshot \(tag) in \(disk.path) could not be deleted: \(error.message)")
            }
        }
    }

    /// Brings the VM back to `snap`: its VMM (if any) is ended, and a new one restores the
    /// snapshot and runs on from it (paused if it was taken paused).
    func revertSnapshot(_ name: String, _ snap: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard VMLimits.isValidName(snap), let meta = readSnapshotMeta(name, snap) else {
                throw HTTPError(404, "not-found", "VM '\(name)' has no snapshot named '\(snap.prefix(80))'; `vireo vm snapshot list \(name)` shows them")
            }
            // Stopped, not killed: the VMM closes its disks, so nothing it queued is lost.
            if r.state.hasProcess { try await stopProcess(&r, kill: false) }
            // The guest goes back in time: a new generation ID tells it so (it reseeds its RNG).
            let previous = r.definition.config.generationID
            r.definition.config.generationID = VMConfig.newGenerationID()
            try inventory.update(r)
            do { try launch(&r, restoreFrom: snapshotDir(name, snap)) } catch {
                r.definition.config.generationID = previous
                try? inventory.update(r)
                throw error
            }
            r = try await awaitReady(&r)
            if meta.vmState == .paused, r.state == .running,
               let reply = VMMProcess.control(socketPath(name), "pause"), reply.contains(#""ok":true"#) {
                r.state = .paused
                try inventory.update(r)
            }
            event(name, "snapshot-reverted", snap)
            return view(r)
        }
    }

    /// Saves the VM's state to disk and ends its VMM (host memory freed); `start` resumes it
    /// where it was (libvirt's managedsave).
    func suspend(_ name: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard r.state == .running || r.state == .paused else {
                throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); only a running or paused VM can be suspended")
            }
            let dir = suspendDir(name)
            Self.removeTree(dir)
            let reply = try await controlOffActor(socketPath(name), "snapshot \(dir)", timeoutSeconds: 600)
            guard reply.contains(#""ok":true"#) else {
                Self.removeTree(dir)
                throw HTTPError.conflict("VM '\(name)' was not suspended: \(Self.jsonField(reply, "error") ?? reply)")
            }
            if let tag = Self.jsonField(reply, "disk_snapshot") {
                try? Self.writeSmallFile(Array(tag.utf8), to: dir + "/disk_snapshot")
            }
            try await stopProcess(&r, kill: false)
            r.reason = "suspended to disk; `vireo vm start \(name)` resumes it where it was"
            r.state = .stopped
            try inventory.update(r)
            event(name, "suspended", "state in \(dir)")
            return view(r)
        }
    }

    /// A blocking control call on another thread: the actor serves other requests meanwhile.
    func controlOffActor(_ socket: String, _ command: String, timeoutSeconds: Int) async throws -> String {
        let reply = await Task.detached { VMMProcess.control(socket, command, timeoutSeconds: timeoutSeconds) }.value
        guard let reply else { throw HTTPError(500, "vmm-unresponsive", "the VMM did not answer '\(command.prefix(40))' on \(socket)") }
        return reply
    }

    static func jsonField(_ reply: String, _ key: String) -> String? {
        guard let r = reply.firstRange(of: "\"\(key)\":") else { return nil }
        var rest = reply[r.upperBound...]
        if rest.first == "\"" {
            rest = rest.dropFirst()
            return String(rest.prefix(while: { $0 != "\"" }))
        }
        return String(rest.prefix(while: { $0 != "," && $0 != "}" }))
    }

    static func writeMeta(_ s: Snapshot, to path: String) throws {
        let bytes = APIJSON.encode(s, pretty: true)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot write \(path)") }
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        _ = fsync(fd)
    }

    /// Removes a snapshot directory (flat: the daemon's and the VMM's files only).
    static func writeSmallFile(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot create \(path)") }
        defer { close(fd) }
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else { throw VireoError.system("cannot write \(path)") }
    }

    static func removeTree(_ dir: String) {
        for entry in directoryEntries(dir) { unlink(dir + "/" + entry) }
        rmdir(dir)
    }
}
