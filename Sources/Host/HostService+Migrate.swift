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

/// The source of a live migration between daemons (docs/migration.md): `vireo vm migrate`.
/// This daemon asks the destination daemon to take the VM in (POST /v1/migrations on its TCP
/// API, with its token), gets back the port and one-time token of the VMM waiting there, tells
/// the VM's VMM to migrate to it, and follows the migration. The VM stays this daemon's until
/// its VMM has handed it over and the destination daemon shows it running; only then is it
/// removed here. Any failure before that leaves the VM running here as it was, and the
/// destination removes what it had made.
extension HostService {
    func migrate(_ name: String, _ m: MigrateRequest) async throws -> MigrationInfo {
        let (host, port) = try Self.parseDestination(m.to)
        let storage = m.storage ?? .shared
        let downtime = m.maxDowntimeMs ?? 50
        guard (1...600_000).contains(downtime) else {
            throw HTTPError(400, "invalid-request", "max_downtime_ms \(downtime) is out of range; give 1 to 600000 ms")
        }
        if let bw = m.maxBandwidthMiB, !(1...(1 << 20)).contains(bw) {
            throw HTTPError(400, "invalid-request", "max_bandwidth_mib \(bw) is out of range; give 1 to 1048576 MiB/s")
        }
        if let running = migrations[name], !running.isFinished {
            throw HTTPError.conflict("VM '\(name)' is migrating to \(running.destination) already (\(running.phase)); follow it with `vireo vm migrate \(name) --status` or cancel it with --cancel")
        }
        let destination = APIClient(endpoint: .tcp(host: host, port: port), token: m.token)
        let info: MigrationInfo = try await withVMLock(name) {
            let r = try record(name)
            guard r.state == .running || r.state == .paused else {
                throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); only a running or paused VM migrates (start it, or move a stopped VM's files)")
            }
            let snaps = try listSnapshots(name)
            guard snaps.isEmpty else {
                throw HTTPError.conflict("VM '\(name)' has snapshots (\(snaps.map(\.name).joined(separator: ", "))); they belong to this host and do not move with it: delete them first (`vireo vm snapshot delete \(name) SNAP`)")
            }
            let sizes = storage == .copy ? try r.definition.disks.map { try Self.diskVirtualSize($0) } : nil
            let request = IncomingMigrationRequest(vm: r.definition, storage: storage, diskSizes: sizes, source: ProcFS.hostname)
            let ticket: IncomingMigrationTicket
            do {
                ticket = try await Task.detached {
                    try destination.call("POST", "/v1/migrations", body: APIJSON.encode(request), as: IncomingMigrationTicket.self)
                }.value
            } catch {
                throw HTTPError(502, "destination-refused", "the destination daemon at \(m.to) did not take VM '\(name)' in: \(Self.describe(error)); the VM runs on here")
            }
            var command = "migrate tcp:\(host.contains(":") ? "[\(host)]" : host):\(ticket.port) downtime-ms=\(downtime) storage=\(storage.rawValue) token=\(ticket.token)"
            if let bw = m.maxBandwidthMiB { command += " max-bandwidth-mib=\(bw)" }
            let reply = try? await controlOffActor(socketPath(name), command, timeoutSeconds: 30)
            guard let reply, reply.contains(#""ok":true"#) else {
                Self.abandonAtDestination(destination, name)
                throw HTTPError.conflict("VM '\(name)': its VMM did not start the migration: \(reply.flatMap { Self.jsonField($0, "error") } ?? "no answer"); the VM runs on here")
            }
            let info = MigrationInfo(vm: name, destination: m.to, storage: storage, phase: "setup", downtimeTargetMs: Int64(downtime), startedAt: WallClock.now())
            migrations[name] = info
            event(name, "migration-started", "to \(m.to), storage \(storage.rawValue), pause target \(downtime) ms")
            return info
        }
        Task { await self.followMigration(name, destination: destination) }
        return info
    }

    func migrationInfo(_ name: String) throws -> MigrationInfo {
        guard let info = migrations[name] else {
            _ = try record(name)
            throw HTTPError(404, "no-migration", "VM '\(name)' has not been migrated by this daemon (since it started)")
        }
        return info
    }

    /// Asks the VMM to give the migration up (the VM runs on here).
    func cancelMigration(_ name: String) async throws -> MigrationInfo {
        guard let info = migrations[name], !info.isFinished else {
            throw HTTPError.conflict("VM '\(name)' is not migrating")
        }
        let reply = try await controlOffActor(socketPath(name), "migrate-cancel", timeoutSeconds: 5)
        guard reply.contains(#""ok":true"#) else {
            throw HTTPError.conflict("VM '\(name)': the migration could not be cancelled: \(Self.jsonField(reply, "error") ?? reply)")
        }
        event(name, "migration-cancel-requested", "")
        return migrations[name] ?? info
    }

    /// Follows the VMM's migration to its end, holding the VM's lock (the supervisor leaves the
    /// VM alone; other requests on it wait).
    private func followMigration(_ name: String, destination: APIClient) async {
        _ = try? await withVMLock(name) {
            let socket = socketPath(name)
            var phase = "setup"
            while true {
                guard let r = try? record(name) else { return }
                let reply = await Task.detached { VMMProcess.control(socket, "migrate-status", timeoutSeconds: 2) }.value
                if let reply, let s = try? JSONDecoder().decode(VMMMigrationStatus.self, from: Data(reply.utf8)) {
                    phase = s.phase
                    migrations[name]?.apply(s)
                }
                if phase == "completed" || phase == "confirming" { break }
                if ["failed", "cancelled"].contains(phase) {
                    Self.abandonAtDestination(destination, name)
                    event(name, phase == "cancelled" ? "migration-cancelled" : "migration-failed",
                          "\(migrations[name]?.error ?? phase); the VM runs on here")
                    return
                }
                if phase == "unknown" {
                    event(name, "migration-unknown", migrations[name]?.error ?? "the destination did not confirm; the VM stays paused here")
                    return
                }
                if reply == nil, exitStatusIfGone(r) != nil {
                    if let file = readExitFile(name), file.status == 0, file.reason.hasPrefix("migrated to ") {
                        // It handed the VM over and ended before the last status was read.
                        migrations[name]?.applyExitFigures(file.reason)
                        break
                    }
                    // The VMM ended in the middle: the VM is gone here; the supervisor records it.
                    migrations[name]?.phase = "failed"
                    migrations[name]?.error = "the VMM ended during the migration"
                    Self.abandonAtDestination(destination, name)
                    event(name, "migration-failed", "the VMM ended during the migration")
                    return
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
            // Handed over: the source VMM ends by itself; then the destination must show the VM.
            if var r = try? record(name) {
                for i in 0..<300 {
                    if exitStatusIfGone(r) != nil { break }
                    if i == 299, let pid = r.pid { Glibc.kill(pid, SIGKILL) }
                    try? await Task.sleep(for: .milliseconds(100))
                }
                if let file = readExitFile(name), file.reason.hasPrefix("migrated to ") { migrations[name]?.applyExitFigures(file.reason) }
                migrations[name]?.phase = "confirming"
                var confirmed = false
                for _ in 0..<100 {
                    let vm = try? await Task.detached { try destination.call("GET", "/v1/vms/\(name)", as: VM.self) }.value
                    if let vm, vm.state == .running || vm.state == .paused { confirmed = true; break }
                    try? await Task.sleep(for: .milliseconds(200))
                }
                let m = migrations[name]
                let figures = "paused \(m?.downtimeMs.map { "\($0) ms" } ?? "?"), total \(m?.totalMs ?? 0) ms, \(ByteSize.format(UInt64(max(0, m?.bytesSent ?? 0)))) sent\(m?.storage == .copy ? " (disks \(ByteSize.format(UInt64(max(0, m?.diskBytesSent ?? 0)))))" : ""), \(m?.round ?? 0) rounds"
                guard confirmed else {
                    migrations[name]?.phase = "unknown"
                    migrations[name]?.error = "the destination does not show the VM running"
                    r.state = .stopped
                    r.pid = nil
                    r.reason = "handed over to \(m?.destination ?? "?"), which does not show it running; check there (this record is kept)"
                    try? inventory.update(r)
                    event(name, "migration-unconfirmed", r.reason ?? "")
                    return
                }
                try? removeVM(name, keepDisks: m?.storage != .copy)
                migrations[name]?.phase = "completed"
                event(name, "migrated", "to \(m?.destination ?? "?"): \(figures)")
            }
        }
    }

    /// A disk's virtual size (what the destination's copy must hold).
    static func diskVirtualSize(_ d: DiskSpec) throws -> Int64 {
        let format = d.format.flatMap { DiskImageFormat(name: $0.rawValue) }
        do {
            let image = try DiskImage.open(path: d.path, format: format, readOnly: true, options: OpenOptions(readOnly: true, openBacking: false))
            defer { try? image.close() }
            return Int64(image.virtualSize & ~511)
        } catch {
            throw HTTPError.invalid("disk-unreadable", "disk \(d.id ?? d.path) (\(d.path)): \(error); its size is needed to copy it")
        }
    }

    /// "HOST:PORT" or "[V6]:PORT".
    static func parseDestination(_ to: String) throws -> (String, UInt16) {
        guard let colon = to.lastIndex(of: ":"), let port = UInt16(to[to.index(after: colon)...]), port > 0 else {
            throw HTTPError(400, "invalid-request", "to '\(to.prefix(80))' is not HOST:PORT (the destination daemon's --listen address)")
        }
        var host = String(to[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw HTTPError(400, "invalid-request", "to '\(to.prefix(80))' has no host") }
        return (host, port)
    }

    private static func abandonAtDestination(_ destination: APIClient, _ name: String) {
        Task.detached { _ = try? destination.request("DELETE", "/v1/migrations/\(name)") }
    }

    private static func describe(_ error: Error) -> String {
        if let e = error as? APIErrorBody { return e.message }
        return "\(error)"
    }
}

/// The VMM's `migrate-status` reply.
struct VMMMigrationStatus: Decodable {
    var phase: String
    var round: Int?
    var bytesSent: Int64?
    var diskBytesSent: Int64?
    var dirtyPages: Int64?
    var dirtyDiskBytes: Int64?
    var dirtyBytesPerS: Int64?
    var bandwidthBytesPerS: Int64?
    var expectedDowntimeMs: Int64?
    var downtimeTargetMs: Int64?
    var downtimeMs: Int64?
    var totalMs: Int64?
    var error: String?

    enum CodingKeys: String, CodingKey {
        case phase, round, bytesSent = "bytes_sent", diskBytesSent = "disk_bytes_sent", dirtyPages = "dirty_pages"
        case dirtyDiskBytes = "dirty_disk_bytes", dirtyBytesPerS = "dirty_bytes_per_s", bandwidthBytesPerS = "bandwidth_bytes_per_s"
        case expectedDowntimeMs = "expected_downtime_ms", downtimeTargetMs = "downtime_target_ms", downtimeMs = "downtime_ms"
        case totalMs = "total_ms", error
    }
}

extension MigrationInfo {
    /// The figures a migrated VMM leaves in its exit file: `[downtime_ms=N total_ms=N ...]`.
    mutating func applyExitFigures(_ reason: String) {
        guard let open = reason.lastIndex(of: "[") else { return }
        for pair in reason[reason.index(after: open)...].dropLast().split(separator: " ") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let v = Int64(kv[1]) else { continue }
            switch kv[0] {
            case "downtime_ms": downtimeMs = v
            case "total_ms": totalMs = v
            case "bytes_sent": bytesSent = v
            case "disk_bytes_sent": diskBytesSent = v
            case "rounds": round = Int(v)
            default: break
            }
        }
        remainingBytes = 0
    }

    mutating func apply(_ s: VMMMigrationStatus) {
        // The VMM's "completed" is the hand-over; the migration completes when the destination
        // shows the VM running and it is removed here.
        phase = s.phase == "completed" ? "confirming" : s.phase
        round = s.round ?? round
        bytesSent = s.bytesSent ?? bytesSent
        diskBytesSent = s.diskBytesSent ?? diskBytesSent
        remainingBytes = (s.dirtyPages ?? 0) &* 4096 &+ (s.dirtyDiskBytes ?? 0)
        dirtyBytesPerS = s.dirtyBytesPerS ?? dirtyBytesPerS
        bandwidthBytesPerS = s.bandwidthBytesPerS ?? bandwidthBytesPerS
        expectedDowntimeMs = s.expectedDowntimeMs ?? expectedDowntimeMs
        downtimeTargetMs = s.downtimeTargetMs ?? downtimeTargetMs
        downtimeMs = s.downtimeMs ?? downtimeMs
        totalMs = s.totalMs ?? totalMs
        error = s.error ?? error
    }
}
