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

/// `vireo vm clone SRC NEW [--snapshot SNAP] [--start]` (docs/snapshots.md#clones).
///
/// From a snapshot, the clone runs on from the snapshot's running state: the first `start`
/// restores the snapshot's state (its memory file is hard-linked into the clone's directory,
/// so the page cache holds it once for every clone) under the clone's own configuration. Each
/// read-write disk of the clone is a qcow2 overlay on a base that holds the disk as it was at
/// the snapshot: exported once per snapshot from the disk's internal snapshot
/// (`snapshots/SNAP/base-ID.qcow2`, by the VMM while the source runs) and hard-linked into each
/// clone's directory, so deleting the snapshot or the source leaves every clone whole.
///
/// Without a snapshot the source must be stopped, and its read-write disks are copied whole.
/// Read-only disks are shared. Either way the clone is not a twin: its NICs get new MAC
/// addresses (and the TAPs the request names), its vsock device a CID no other VM here has,
/// and its VM generation ID changes (a Linux guest reseeds its RNG when it sees that).
extension HostService {
    /// The VM configuration a snapshot was taken with (written beside it at create).
    func snapshotConfigPath(_ vm: String, _ snap: String) -> String { snapshotDir(vm, snap) + "/vm-config.json" }

    func cloneVM(_ source: String, _ c: VMClone) async throws -> VM {
        guard VMLimits.isValidName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid VM name: \(VMLimits.nameRule)")
        }
        guard c.name != source else { throw HTTPError.invalid("invalid-name", "a clone needs a name of its own, not '\(source)'") }
        let made: VM = try await withVMLock(source) {
            try await withVMLock(c.name) {
                let r = try record(source)
                if try inventory.get(c.name) != nil {
                    throw HTTPError.conflict("a VM named '\(c.name)' already exists; pick another name or delete it first")
                }
                var config: VMConfig
                var meta: Snapshot? = nil
                if let snap = c.snapshot {
                    guard VMLimits.isValidName(snap), let m = readSnapshotMetaForClone(source, snap) else {
                        throw HTTPError(404, "not-found", "VM '\(source)' has no snapshot named '\(snap.prefix(80))'; `vireo vm snapshot list \(source)` shows them")
                    }
                    meta = m
                    config = snapshotConfig(source, snap) ?? r.definition.config
                } else {
                    guard r.state == .stopped || r.state == .failed, !isSuspended(source) else {
                        throw HTTPError.conflict("VM '\(source)' is \(isSuspended(source) ? "suspended to disk" : r.state.rawValue); a clone without --snapshot copies a stopped VM's disks: stop it first, or take a snapshot (`vireo vm snapshot create \(source) SNAP`) and clone from that")
                    }
                    config = r.definition.config
                }
                config.name = c.name
                config.generationID = VMConfig.newGenerationID()
                try retargetNICs(&config, taps: c.taps ?? [], source: source)
                if config.vsockCID != nil { config.vsockCID = try freeVsockCID() }

                let dir = vmDir(c.name)
                try Self.makeDirectory(dir)
                do {
                    if let meta, let snap = c.snapshot {
                        try await cloneDisks(&config, from: r, snapshot: snap, tag: meta.diskSnapshot)
                        try linkSnapshotState(source, snap, into: c.name)
                    } else {
                        try await copyDisks(&config, newVM: c.name)
                    }
                    var def = VMDefinition(config: config, template: nil, restartPolicy: r.definition.restartPolicy)
                    def.config.configVersion = VMConfig.currentVersion
                    try Validation.check(def, socketPath: consoleSocketPath(def.name), admission: admission)
                    try confineFiles(&def.config)
                    let from = c.snapshot.map { "snapshot \($0) of \(source)" } ?? source
                    let rec = VMRecord(definition: def, state: .stopped,
                                       reason: c.snapshot == nil ? nil : "cloned from \(from); `vireo vm start \(c.name)` runs it on from there",
                                       pid: nil, pidStartTime: nil, exitStatus: nil, restartCount: 0, createdAt: WallClock.now())
                    try inventory.insert(rec)
                    event(c.name, "cloned", "from \(from): generation ID \(config.generationID ?? "")"
                          + (config.nics.isEmpty ? "" : ", MAC " + config.nics.compactMap(\.mac).joined(separator: ", ")))
                    return view(rec)
                } catch {
                    removeCloneFiles(c.name)
                    throw error
                }
            }
        }
        guard c.start == true else { return made }
        return try await start(c.name)
    }

    private func readSnapshotMetaForClone(_ vm: String, _ snap: String) -> Snapshot? {
        (try? listSnapshots(vm))?.first { $0.name == snap }
    }

    /// The configuration the snapshot's VMM ran (nil for a snapshot from before it was kept).
    private func snapshotConfig(_ vm: String, _ snap: String) -> VMConfig? {
        let path = snapshotConfigPath(vm, snap)
        guard let bytes = try? OwnedFD.readFile(path, limit: 1 << 20, what: "snapshot VM configuration") else { return nil }
        return try? VMConfig.decode(bytes, source: path)
    }

    /// New TAPs and new MAC addresses: a NIC on a daemon network gets a TAP the daemon makes;
    /// every other NIC takes one from the request, in order.
    private func retargetNICs(_ config: inout VMConfig, taps: [String], source: String) throws {
        let own = config.nics.indices.filter { config.nics[$0].network == nil }
        guard taps.count == own.count else {
            throw HTTPError.invalid("invalid-nic", own.isEmpty
                ? "VM '\(source)' has no NICs on TAPs of its own; leave out taps"
                : "VM '\(source)' has \(own.count) NIC\(own.count == 1 ? "" : "s") on TAPs of its own (\(own.map { config.nics[$0].tap }.joined(separator: ", "))); give the clone a TAP for each (`--tap NAME`, in order)")
        }
        let inUse = Set(try inventory.all().flatMap { $0.definition.nics.map(\.tap) })
        for (i, tap) in zip(own, taps) {
            guard !inUse.contains(tap) else {
                throw HTTPError.conflict("TAP \(tap) is used by another VM here; give the clone a TAP of its own")
            }
            config.nics[i].tap = tap
        }
        for i in config.nics.indices {
            if config.nics[i].network != nil { config.nics[i].tap = "" }
            config.nics[i].mac = Self.newMAC()
        }
        try assignNetworkTaps(&config)
    }

    /// A locally administered unicast MAC (52:56:xx:xx:xx:xx) from the host's getrandom.
    static func newMAC() -> String {
        var g = SystemRandomNumberGenerator()
        let tail = (0..<4).map { _ in UInt8.random(in: .min ... .max, using: &g) }
        return ([0x52, 0x56] + tail).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    /// The lowest vsock CID (3 and up) no VM of this host has.
    private func freeVsockCID() throws -> Int {
        let used = Set(try inventory.all().compactMap(\.definition.vsockCID))
        var cid = VMLimits.minVsockCID
        while used.contains(cid) { cid += 1 }
        guard cid <= VMLimits.maxVsockCID else { throw HTTPError.conflict("no vsock CID is free on this host") }
        return cid
    }

    /// Each read-write disk becomes an overlay on the disk's contents at the snapshot.
    private func cloneDisks(_ config: inout VMConfig, from r: VMRecord, snapshot snap: String, tag: String?) async throws {
        for i in config.disks.indices where !config.disks[i].isReadOnly {
            let id = config.disks[i].id ?? "disk\(i)"
            guard let tag else {
                throw HTTPError.conflict("snapshot \(snap) of '\(r.name)' holds no contents for its read-write disk \(id); it cannot be cloned")
            }
            let base = snapshotDir(r.name, snap) + "/base-\(id).qcow2"
            if !ProcFS.fileExists(base) {
                try await exportDiskSnapshot(r, disk: config.disks[i], id: id, tag: tag, to: base)
            }
            let linked = vmDir(config.name) + "/base-\(id).qcow2"
            guard link(base, linked) == 0 else {
                throw HTTPError(500, "clone-failed", "cannot link \(base) into the clone's directory: \(String(cString: strerror(errno)))")
            }
            let overlay = vmDir(config.name) + "/disk-\(id).qcow2"
            do {
                try Qcow2Image.create(path: overlay, size: nil, options: Qcow2CreateOptions(backingFile: linked, backingFormat: .qcow2))
            } catch {
                throw HTTPError(500, "clone-failed", "cannot make the clone's overlay of disk \(id): \(error)")
            }
            config.disks[i].path = overlay
            config.disks[i].format = .qcow2
            config.disks[i].image = nil
        }
    }

    /// The disk as it was at the snapshot, into `base` (written under a temporary name, so a
    /// failed export leaves nothing a later clone would take for whole).
    private func exportDiskSnapshot(_ r: VMRecord, disk: VMConfig.Disk, id: String, tag: String, to base: String) async throws {
        let tmp = base + ".part"
        unlink(tmp)
        event(r.name, "clone-base-started", "disk \(id) at \(tag)")
        if r.state.hasProcess {
            // The VMM holds the disk: it exports (the guest's I/O goes on meanwhile).
            let reply = try await controlOffActor(socketPath(r.name), "export-disk-snapshot \(tag) \(id) \(tmp)", timeoutSeconds: 3600)
            guard reply.contains(#""ok":true"#) else {
                unlink(tmp)
                throw HTTPError.conflict("VM '\(r.name)': disk \(id) at the snapshot could not be exported: \(Self.jsonField(reply, "error") ?? reply)")
            }
        } else {
            let path = disk.path
            let result: Result<Void, VireoError> = await Task.detached {
                do throws(VireoError) {
                    let image = try Qcow2Image.open(path: path, readOnly: true)
                    defer { try? image.close() }
                    try image.exportSnapshot(tag, to: tmp)
                    return .success(())
                } catch { return .failure(error) }
            }.value
            if case let .failure(e) = result {
                unlink(tmp)
                throw HTTPError.conflict("VM '\(r.name)': disk \(id) (\(path)) at the snapshot could not be exported: \(e)")
            }
        }
        guard rename(tmp, base) == 0 else {
            unlink(tmp)
            throw HTTPError(500, "clone-failed", "cannot rename \(tmp): \(String(cString: strerror(errno)))")
        }
        event(r.name, "clone-base-created", "disk \(id): \(Self.allocatedBytes(base)) bytes")
    }

    /// The snapshot's state becomes the clone's "suspended" state: its first start restores it.
    private func linkSnapshotState(_ source: String, _ snap: String, into vm: String) throws {
        let from = snapshotDir(source, snap), to = suspendDir(vm)
        try Self.makeDirectory(to)
        guard link(from + "/memory.bin", to + "/memory.bin") == 0 else {
            throw HTTPError(500, "clone-failed", "cannot link the snapshot's memory into the clone's directory: \(String(cString: strerror(errno)))")
        }
        let state = try OwnedFD.readFile(from + "/state.vsnap", limit: 64 << 20, what: "snapshot state")
        try Self.writeSmallFile(state, to: to + "/state.vsnap.tmp")
        guard rename(to + "/state.vsnap.tmp", to + "/state.vsnap") == 0 else {
            throw HTTPError(500, "clone-failed", "cannot write the clone's state: \(String(cString: strerror(errno)))")
        }
    }

    /// A stopped VM's read-write disks, copied whole into the clone's directory (progress as
    /// events); read-only ones are shared.
    private func copyDisks(_ config: inout VMConfig, newVM: String) async throws {
        for i in config.disks.indices where !config.disks[i].isReadOnly {
            let id = config.disks[i].id ?? "disk\(i)"
            let src = config.disks[i].path
            let format: DiskImageFormat = config.disks[i].format == .raw ? .raw : .qcow2
            let out = vmDir(newVM) + "/disk-\(id).\(format.rawValue)"
            let hub = self
            let result: Result<Void, VireoError> = await Task.detached {
                do throws(VireoError) {
                    let image = try DiskImage.open(path: src, format: format, options: OpenOptions(readOnly: true))
                    defer { try? image.close() }
                    var o = ImageOperations.ConvertOptions()
                    o.format = format
                    var last = -1
                    try ImageOperations.convert(image, to: out, options: o) { f in
                        let pct = Int(f * 100)
                        if pct / 10 != last / 10 {
                            last = pct
                            Task { await hub.progressEvent(newVM, kind: .vm, "clone-progress", "disk \(id): \(pct)%") }
                        }
                    }
                    return .success(())
                } catch { return .failure(error) }
            }.value
            if case let .failure(e) = result {
                throw HTTPError.conflict("disk \(id) (\(src)) could not be copied: \(e)")
            }
            config.disks[i].path = out
            config.disks[i].format = format == .raw ? .raw : .qcow2
            config.disks[i].image = nil
        }
    }

    /// What a failed clone leaves in its directory, removed.
    func removeCloneFiles(_ vm: String) {
        for f in Self.directoryEntries(vmDir(vm)) where f.hasPrefix("disk-") || f.hasPrefix("base-") { unlink(vmDir(vm) + "/" + f) }
        Self.removeTree(suspendDir(vm))
        rmdir(vmDir(vm))
    }
}
