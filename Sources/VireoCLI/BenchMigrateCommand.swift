import ArgumentParser
import Foundation
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo bench migrate`: live migration between two VMM processes on this host over a unix
/// socket, with a probe guest that dirties its RAM at a set rate. For each rate, `runs` times:
/// a source VMM (`--probe dirty-rate:R`, or an idle `pio` loop for rate 0) whose guest first
/// writes every page of its RAM (all of it in use), a destination (`vireo run --incoming`),
/// then the source's `migrate ... downtime-ms=T`; the figures are the source's own summary
/// (downtime: vCPUs paused at the source until the destination confirmed it runs; total time;
/// bytes sent; rounds). The first output line is the issue's headline case (the rate given
/// by --headline-rate, 100 MiB/s by default).
struct BenchMigrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Live-migration downtime, total time and bytes at set guest dirty rates (two VMM processes, unix socket).")

    @Option(help: "Guest RAM in MiB.") var memory: UInt64 = 1024
    @Option(help: "Migrations per rate.") var runs: Int = 5
    @Option(help: "Guest dirty rates in MiB/s, comma-separated (0: an idle guest with untouched RAM).") var rates: String = "0,100,1024"
    @Option(help: "The rate of the first output line.") var headlineRate: UInt64 = 100
    @Option(help: "Downtime target in ms.") var downtimeMs: UInt64 = 50

    struct Result { var downtimeMs: Double; var totalMs: Double; var bytes: Double; var rounds: Double }

    func run() throws {
        try reportingErrors {
            let rateList = try rates.split(separator: ",").map { s -> UInt64 in
                guard let v = UInt64(s.trimmingCharacters(in: .whitespaces)), v <= 1 << 20 else {
                    throw VireoError(.invalidArgument, "--rates wants MiB/s numbers separated by commas, e.g. 0,100,1024")
                }
                return v
            }
            guard runs >= 1, memory >= 64, memory <= 16384, !rateList.isEmpty else {
                throw VireoError(.invalidArgument, "give --runs 1 or more, --memory 64 to 16384 (MiB) and at least one rate")
            }
            let bin = ChildProcess.selfExecutable()
            var lines: [String] = []
            var headline: String?
            for rate in rateList {
                var results: [Result] = []
                for i in 0..<runs {
                    let r = try once(bin: bin, rate: rate, index: i)
                    results.append(r)
                    printError("vireo: rate \(rate) MiB/s, run \(i + 1)/\(runs): downtime \(Int(r.downtimeMs)) ms, total \(Int(r.totalMs)) ms, \(ByteSize.format(UInt64(r.bytes))) in \(Int(r.rounds)) rounds")
                }
                func pct(_ xs: [Double], _ p: Double) -> Int {
                    let s = xs.sorted()
                    return Int(s[min(s.count - 1, Int(Double(s.count - 1) * p + 0.5))].rounded())
                }
                let line = "rate_mib_s=\(rate) downtime_ms_p50=\(pct(results.map(\.downtimeMs), 0.5)) downtime_ms_p99=\(pct(results.map(\.downtimeMs), 0.99)) "
                    + "total_ms=\(pct(results.map(\.totalMs), 0.5)) bytes=\(pct(results.map(\.bytes), 0.5)) rounds=\(pct(results.map(\.rounds), 0.5)) "
                    + "memory_mib=\(memory) touched_mib=\(rate == 0 ? 0 : memory - 2) runs=\(runs) downtime_target_ms=\(downtimeMs)"
                if rate == headlineRate {
                    headline = "downtime_ms_p50=\(pct(results.map(\.downtimeMs), 0.5)) downtime_ms_p99=\(pct(results.map(\.downtimeMs), 0.99)) total_ms=\(pct(results.map(\.totalMs), 0.5)) bytes=\(pct(results.map(\.bytes), 0.5))"
                }
                lines.append(line)
            }
            if let headline { print(headline) }
            for l in lines { print(l) }
        }
    }

    /// One migration; the guest has written all its RAM (rate > 0) before it starts.
    func once(bin: String, rate: UInt64, index: Int) throws -> Result {
        let dir = "/tmp/vireo-bench-migrate-\(getpid())-\(index)"
        _ = system("rm -rf '\(dir)'"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf '\(dir)'") }
        let probe = rate == 0 ? "pio:1000000000000000" : "dirty-rate:\(rate)"
        let source = try ChildProcess([bin, "run", "--probe", probe, "--memory", "\(memory)M", "--serial", "none", "--api-socket", dir + "/s.sock"])
        var sourceDone = false
        defer { if !sourceDone { source.signal(SIGKILL); _ = source.wait() } }
        if rate > 0 {
            // The VMM prints probe_pass=1 when the guest has written every page once.
            var seen = false
            while let l = ChildProcess.readLine(source.stdout) { if l.hasPrefix("probe_pass=1") { seen = true; break } }
            guard seen else { throw VireoError(.internalError, "the source VMM ended before its guest wrote its RAM: \(Self.text(source.stderr))") }
        } else {
            for _ in 0..<200 where access(dir + "/s.sock", F_OK) != 0 { usleep(10_000) }
        }
        let destination = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/mig.sock", "--serial", "none", "--api-socket", dir + "/d.sock"])
        defer { destination.signal(SIGKILL); _ = destination.wait() }
        for _ in 0..<200 where access(dir + "/mig.sock", F_OK) != 0 { usleep(10_000) }
        let reply = Self.control(dir + "/s.sock", "migrate unix:\(dir)/mig.sock downtime-ms=\(downtimeMs)")
        guard reply.contains(#""ok":true"#) else { throw VireoError(.internalError, "migrate refused: \(reply)") }
        // The source ends when the destination runs the VM; its last line has the figures.
        let status = source.wait()
        sourceDone = true
        let err = Self.text(source.stderr)
        guard status == 0, let r = err.range(of: "[downtime_ms=") else {
            throw VireoError(.internalError, "the migration did not complete (source status \(status)): \(err.suffix(400))")
        }
        var fields: [String: Double] = [:]
        for kv in err[r.upperBound...].prefix(while: { $0 != "]" }).split(separator: " ") {
            let p = kv.split(separator: "=")
            if p.count == 2, let v = Double(p[1]) { fields[String(p[0])] = v }
        }
        fields["downtime_ms"] = Double(err[r.upperBound...].prefix(while: \.isNumber)) ?? fields["downtime_ms"]
        _ = Self.control(dir + "/d.sock", "stop")
        return Result(downtimeMs: fields["downtime_ms"] ?? .nan, totalMs: fields["total_ms"] ?? .nan,
                      bytes: fields["bytes_sent"] ?? .nan, rounds: fields["rounds"] ?? .nan)
    }

    static func text(_ fd: OwnedFD) -> String {
        var out = ""
        while let l = ChildProcess.readLine(fd) { out += l + "\n" }
        return out
    }

    /// One control-socket command and its reply line.
    static func control(_ socket: String, _ command: String) -> String {
        (try? ControlCommand.roundTrip(socket: socket, command: command)) ?? ""
    }
}
