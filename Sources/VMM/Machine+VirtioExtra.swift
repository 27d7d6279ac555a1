import CLinux
import GuestMemory
import VireoConfig
import VireoSupport
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension Machine {
    /// virtio-balloon, its statistics timer and the control FIFO (run-time target changes).
    func setUpBalloon(_ config: VirtioConfig.Balloon?, wiring: VirtioWiring) throws {
        guard let config else { return }
        let totalMiB = memory.totalSize >> 20
        guard config.targetMiB <= totalMiB else {
            throw VireoError(.invalidArgument, "--balloon size=\(config.targetMiB) is more than the guest's \(totalMiB) MiB", hint: "give size=0 to \(totalMiB)")
        }
        let balloon = VirtioBalloon(targetPages: UInt32(config.targetMiB * 256), stats: config.stats,
                                    deflateOnOOM: config.deflateOnOOM, reporting: config.reporting)
        let slot = try wiring.attach(balloon, name: "virtio-balloon", id: "balloon")
        self.balloon = balloon
        let transport = slot.transport
        if config.stats {
            let bells = slot.doorbells
            wiring.loop.addTimer(milliseconds: 2000) {
                if let q = balloon.requestStats(), q < bells.count { bells[q].signal() }
            }
        }
        if let path = config.control {
            let control = try BalloonControl(path: path, balloon: balloon, transport: transport, guestMiB: totalMiB)
            try wiring.loop.add(fd: control.fd.rawValue) { _ in control.readCommands(); return false }
            resources.append(control)
        }
    }

    /// virtio-net on a TAP device.
    func setUpNet(_ config: VirtioConfig.Net, index: Int, wiring: VirtioWiring) throws {
        let tap = try TapDevice(name: config.tap)
        let mac = config.mac.flatMap(VMConfig.macBytes) ?? Machine.derivedMAC(seed: "\(config.tap)/\(index)/\(self.config.cpus)/\(memory.totalSize)")
        let net = VirtioNet(backend: tap, mac: mac)
        net.limiter = config.rateLimit.flatMap(Machine.limiter)
        let slot = try wiring.attach(net, name: "virtio-net \(config.tap)", id: "net:" + (config.id ?? "net\(index)"), limiter: net.limiter)
        netCounters.append((config.tap, net.counters))
        // Frames from the TAP: edge-triggered; the receive path drains until EAGAIN or until the
        // guest runs out of buffers (then the guest's next rx doorbell resumes it).
        let rx = slot.doorbells[0]
        try wiring.loop.add(fd: tap.fd.rawValue, events: EPOLLIN.rawValue | EPOLLET.rawValue) { _ in rx.signal(); return false }
        resources.append(tap)
        DebugLog.log("virtio-net \(config.tap): mac \(mac.map { String($0, radix: 16) }.joined(separator: ":")), offloads \(tap.supportsOffloads)")
    }

    /// A locally administered unicast MAC (02:xx:...) from a hash of `seed`: stable for the same
    /// VM configuration, different per NIC.
    public static func derivedMAC(seed: String) -> [UInt8] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in seed.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return [0x02, 0x56] + (0..<4).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
    }
}

/// The balloon's control FIFO: each line is a new target in MiB ("256", or "balloon 256"), or
/// "stats" to print the guest's latest statistics to stderr. Opened read-write so writers
/// coming and going never make it report end-of-file.
final class BalloonControl: @unchecked Sendable {
    let fd: OwnedFD
    let balloon: VirtioBalloon
    let transport: VirtioPCIDevice
    let guestMiB: UInt64
    private var pending: [UInt8] = []

    init(path: String, balloon: VirtioBalloon, transport: VirtioPCIDevice, guestMiB: UInt64) throws {
        var st = stat()
        if stat(path, &st) != 0 {
            guard mkfifo(path, 0o600) == 0 else { throw VireoError.system("--balloon control=\(path): cannot create the FIFO") }
        } else if (st.st_mode & S_IFMT) != S_IFIFO {
            throw VireoError(.invalidArgument, "--balloon control=\(path) exists and is not a FIFO", hint: "remove it or give another path")
        }
        fd = try OwnedFD.open(path, flags: O_RDWR | O_NONBLOCK, purpose: "open the balloon control FIFO")
        self.balloon = balloon
        self.transport = transport
        self.guestMiB = guestMiB
    }

    func readCommands() {
        var buf = [UInt8](repeating: 0, count: 512)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            pending += buf[0..<n]
            if pending.count > 4096 { pending.removeAll() }      // garbage without newlines
        }
        while let nl = pending.firstIndex(of: 10) {
            let line = String(decoding: pending[..<nl], as: UTF8.self)
            pending.removeSubrange(...nl)
            handle(line.split(separator: " ").map(String.init))
        }
    }

    private func handle(_ words: [String]) {
        let args = words.first == "balloon" ? Array(words.dropFirst()) : words
        if args == ["stats"] {
            let s = balloon.latestStats.sorted { $0.key < $1.key }.map { "\(Self.statName($0.key))=\($0.value)" }
            report("balloon: target \(balloon.targetPages / 256) MiB, actual \(balloon.actualPages / 256) MiB, stats \(s.joined(separator: " "))")
            return
        }
        guard args.count == 1, let mib = UInt64(args[0]), mib <= guestMiB else {
            report("balloon control: '\(words.joined(separator: " "))' is not a size in MiB from 0 to \(guestMiB), or 'stats'")
            return
        }
        balloon.setTarget(pages: UInt32(mib * 256))
        report("balloon: target set to \(mib) MiB")
    }

    static func statName(_ tag: UInt16) -> String {
        let names = ["swap-in", "swap-out", "major-faults", "minor-faults", "free-memory", "total-memory",
                     "available-memory", "disk-caches", "hugetlb-allocations", "hugetlb-failures"]
        return Int(tag) < names.count ? names[Int(tag)] : "tag\(tag)"
    }

    private func report(_ s: String) {
        writeStderrLine("vireo: " + s)
    }
}
