import ArgumentParser
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm migrate NAME --to ADDR:PORT --token-file F [--storage copy]`: live migration to
/// another host's daemon (docs/migration.md), with progress and the final figures.
struct VMMigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a running VM to another host's daemon while it runs (live migration; docs/migration.md).",
        discussion: """
            The destination daemon must listen on TCP (`vireo host serve --listen ADDR:PORT --token-file F`); \
            --to names that address and --token-file its token. --storage copy sends the VM's disks too \
            (local disks: the destination gets its own flattened copies); the default, shared, hands over \
            disks both hosts reach at the same paths. The VM leaves this host only once the destination runs it; \
            a failed or cancelled migration leaves it running here.
            """)

    @Option(help: "The daemon's unix socket (default: $VIREO_SOCKET or /run/vireo/vireo.sock).")
    var socket: String?
    @Option(help: "Reach this host's daemon over TCP at ADDR:PORT instead (with --source-token-file).")
    var connect: String?
    @Option(help: "The token file for --connect.")
    var sourceTokenFile: String?

    @Argument(help: "The VM to move.")
    var name: String
    @Option(help: "The destination daemon's TCP address (its --listen ADDR:PORT).")
    var to: String?
    @Option(help: "File holding the destination daemon's bearer token.")
    var tokenFile: String?
    @Option(help: "copy: send the disks' contents too; shared: the disks are on storage both hosts reach (default).")
    var storage: String = "shared"
    @Option(help: "The longest pause the guest may see at the switch-over, e.g. 50ms or 1s (default 50ms).")
    var maxDowntime: String?
    @Option(help: "Cap the migration stream at this many MiB/s.")
    var maxBandwidth: Int?
    @Flag(help: "Cancel this VM's running migration (it runs on here).")
    var cancel = false
    @Flag(help: "Show this VM's last migration and exit.")
    var status = false
    @Flag(help: "Start the migration and return without following it.")
    var detach = false
    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            var options = ClientOptions()
            options.socket = socket
            options.connect = connect
            options.tokenFile = sourceTokenFile
            let client = try options.makeClient()
            let path = "/v1/vms/\(pathSafe(name))/migration"
            if cancel || status {
                let info = try client.call(cancel ? "DELETE" : "GET", path, as: MigrationInfo.self)
                print(json ? String(decoding: APIJSON.encode(info, pretty: true), as: UTF8.self) : Self.summary(info))
                return
            }
            guard let to else { throw ValidationError("give the destination daemon's address: --to ADDR:PORT (its --listen)") }
            guard let tokenFile else { throw ValidationError("give the destination daemon's token: --token-file FILE") }
            guard let mode = MigrationStorage(rawValue: storage) else { throw ValidationError("--storage \(storage): give copy or shared") }
            let token = try readToken(tokenFile)
            let downtime = try maxDowntime.map(Self.parseMilliseconds)
            let request = MigrateRequest(to: to, token: token, storage: mode, maxDowntimeMs: downtime, maxBandwidthMiB: maxBandwidth)
            var info = try client.call("POST", "/v1/vms/\(pathSafe(name))/migrate", body: APIJSON.encode(request), as: MigrationInfo.self)
            if detach { print(json ? String(decoding: APIJSON.encode(info, pretty: true), as: UTF8.self) : "migrating \(name) to \(to); follow with `vireo vm migrate \(name) --status`"); return }
            var lastLine = ""
            while !info.isFinished {
                usleep(250_000)
                info = try client.call("GET", path, as: MigrationInfo.self)
                let line = Self.progress(info)
                if line != lastLine && !info.isFinished { printError(line); lastLine = line }
            }
            if json { print(String(decoding: APIJSON.encode(info, pretty: true), as: UTF8.self)) } else { print(Self.summary(info)) }
            guard info.phase == "completed" else { throw ExitCode(1) }
        }
    }

    static func progress(_ i: MigrationInfo) -> String {
        if i.phase == "confirming" { return "handed over; waiting for the destination to show the VM running" }
        if i.bandwidthBytesPerS == 0 {
            return "\(i.phase): first pass, \(ByteSize.format(UInt64(max(0, i.bytesSent)))) sent" + (i.storage == .copy ? " (disks \(ByteSize.format(UInt64(max(0, i.diskBytesSent)))))" : "")
        }
        var s = "\(i.phase) round \(i.round): \(ByteSize.format(UInt64(max(0, i.bytesSent)))) sent"
        if i.storage == .copy { s += " (disks \(ByteSize.format(UInt64(max(0, i.diskBytesSent)))))" }
        s += ", \(ByteSize.format(UInt64(max(0, i.remainingBytes)))) dirty, dirtying \(ByteSize.format(UInt64(max(0, i.dirtyBytesPerS))))/s"
        s += " over \(ByteSize.format(UInt64(max(0, i.bandwidthBytesPerS))))/s, pause now \(i.expectedDowntimeMs) ms (target \(i.downtimeTargetMs) ms)"
        return s
    }

    static func summary(_ i: MigrationInfo) -> String {
        switch i.phase {
        case "completed":
            var s = "migrated \(i.vm) to \(i.destination): the guest paused \(i.downtimeMs.map { "\($0) ms" } ?? "?"), \(i.totalMs) ms in all, "
            s += "\(ByteSize.format(UInt64(max(0, i.bytesSent)))) sent"
            if i.storage == .copy { s += " (disks \(ByteSize.format(UInt64(max(0, i.diskBytesSent)))))" }
            return s + " in \(i.round) rounds"
        case "failed", "cancelled":
            return "migration of \(i.vm) to \(i.destination) \(i.phase): \(i.error ?? "?"); the VM runs on here"
        case "unknown":
            return "migration of \(i.vm) to \(i.destination): the outcome is unknown (\(i.error ?? "?")); the VM is paused here: check the destination before resuming it"
        default:
            return progress(i)
        }
    }

    /// "50ms", "1s", "250" (ms).
    static func parseMilliseconds(_ text: String) throws -> Int {
        let t = text.lowercased()
        let value: Int?
        if t.hasSuffix("ms") { value = Int(t.dropLast(2)) } else if t.hasSuffix("s") { value = Int(t.dropLast()).map { $0 * 1000 } } else { value = Int(t) }
        guard let value, value >= 1, value <= 600_000 else {
            throw ValidationError("--max-downtime \(text): give a duration from 1ms to 600s, e.g. 50ms")
        }
        return value
    }
}
