import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm stats NAME`: one running VM's memory, vCPU, disk and NIC figures.
struct VMStatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a running VM's memory (provisioned, consumed, active), per-vCPU CPU and ready time, disk and NIC counters.",
        discussion: "Example: vireo vm stats web (add --json for the API's JSON: GET /v1/vms/web/stats)")
    @OptionGroup var client: ClientOptions
    @Argument var name: String

    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/vms/\(pathSafe(name))/stats")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let s = try client.decode(VMStats.self, r)
            print(Self.render(s), terminator: "")
        }
    }

    /// 512 B, 4.0 KiB, 80.7 MiB, 1.5 GiB: one decimal from KiB up.
    static func human(_ b: UInt64) -> String {
        guard b >= 1024 else { return "\(b) B" }
        var d = Double(b) / 1024, unit = 0
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        while d >= 1024, unit < units.count - 1 { d /= 1024; unit += 1 }
        return "\((d * 10).rounded() / 10) \(units[unit])"
    }

    static func render(_ s: VMStats) -> String {
        var out = ""
        func line(_ t: String) { out += t + "\n" }
        func bytes(_ b: UInt64?) -> String { b.map(human) ?? "-" }
        func secs(_ d: Double) -> String { String((d * 1000).rounded() / 1000) }
        func table(_ rows: [[String]]) {
            guard let first = rows.first else { return }
            var w = first.map(\.count)
            for r in rows { for (i, c) in r.enumerated() where i < w.count { w[i] = max(w[i], c.count) } }
            for r in rows {
                line(r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: w[i] - c.count + 2) }.joined())
            }
        }
        let m = s.memory
        line("\(s.name): \(s.state.rawValue)")
        line("")
        var active = bytes(m.activeBytes)
        if m.activeBytes != nil, let w = m.activeWindowSeconds {
            active += " (written in the last \(w) s" + ((m.activeSampleOneIn ?? 1) > 1 ? ", sampled 1/\(m.activeSampleOneIn ?? 1) of pages)" : ")")
        }
        if m.activeStatus != "ok" { active += m.activeBytes == nil ? " (\(m.activeStatus))" : " [\(m.activeStatus)]" }
        var rows = [["MEMORY", ""], ["provisioned", bytes(m.provisionedBytes)], ["consumed", bytes(m.consumedBytes)], ["active", active]]
        if let b = m.balloonBytes { rows.append(["ballooned", bytes(b)]) }
        if let g = m.guestReported {
            rows.append(["guest total", bytes(g.totalBytes)])
            rows.append(["guest free", bytes(g.freeBytes)])
            rows.append(["guest available", bytes(g.availableBytes)])
            if let c = g.diskCachesBytes { rows.append(["guest disk caches", bytes(c)]) }
        }
        table(rows)
        line("")
        table([["VCPU", "CPU S", "READY S", "PIO EXITS", "MMIO EXITS"]] + s.vcpus.map {
            [String($0.index), secs($0.cpuSeconds), secs($0.readySeconds), $0.pioExits.map(String.init) ?? "-", $0.mmioExits.map(String.init) ?? "-"]
        })
        if !s.disks.isEmpty {
            line("")
            table([["DISK", "READS", "READ", "WRITES", "WRITTEN", "FLUSHES", "OTHER", "ERRORS", "PATH"]] + s.disks.map {
                [$0.name, String($0.readRequests), bytes($0.readBytes), String($0.writeRequests), bytes($0.writeBytes),
                 String($0.flushRequests), String($0.otherRequests), String($0.errors), $0.path]
            })
        }
        if !s.nics.isEmpty {
            line("")
            table([["NIC", "RX FRAMES", "RX", "RX DROPS", "TX FRAMES", "TX", "TX DROPS"]] + s.nics.map {
                [$0.name, String($0.rxFrames), bytes($0.rxBytes), String($0.rxDrops), String($0.txFrames), bytes($0.txBytes), String($0.txDrops)]
            })
        }
        return out
    }
}
