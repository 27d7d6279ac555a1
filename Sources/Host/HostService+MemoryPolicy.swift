import VireoAPI
import VireoSupport

/// The reclamation ladder (docs/memory.md), once a second: measure the host's free memory, name
/// the state, and run the steps that state calls for. Sharing (KSM) always while a VM is
/// shareable, balloons from soft, the VMMs' compression and swap (`reclaim`) from hard, and at
/// low new VM starts are refused (`checkMemoryStateAllowsStart`).
struct LadderState: Sendable {
    var state: HostMemoryState = .high
    var memory: HostMemory?
    var minFree: UInt64 = 0
    var changes = 0
    /// This daemon turned KSM on (it turns off only what it turned on: several daemons may share a host).
    var ksmOwned = false
    var withoutBalloon: [String] = []
    var withoutReclaim: Set<String> = []
    /// VMs already named in a `no-balloon` event (once per VM per daemon run).
    var reportedNoBalloon: Set<String> = []
    var balloonBytes: UInt64 = 0
    var compressedBytes: UInt64 = 0
    var swappedBytes: UInt64 = 0
    /// Balloons the policy inflated: the target before it did, and the one it set.
    var policyBalloons: [String: PolicyBalloon] = [:]
}

struct PolicyBalloon: Sendable, Equatable {
    var before: Int
    var set: Int
}

extension HostService {
    /// What the tick needs from the actor: the running VMs and where their VMMs are.
    struct LadderTarget: Sendable {
        var name: String
        var pid: Int32
        var socket: String
        var config: VMConfig
    }

    /// Step 1 (on the actor): sample, name the state (an event and a metric when it changes), drive KSM.
    func ladderBegin() -> (HostMemory, HostMemoryState, UInt64, [LadderTarget]) {
        let m = HostMemory.sample()
        let minFree = m.minFree(override: memoryMinFree)
        let state = HostMemory.state(freeBytes: m.freeBytes, minFree: minFree)
        let before = ladder.state
        ladder.memory = m; ladder.minFree = minFree
        if state != before {
            ladder.state = state
            ladder.changes += 1
            event("memory", kind: .host, "memory-state",
                  "\(before.rawValue) -> \(state.rawValue): \(ByteSize.format(m.freeBytes)) free of \(ByteSize.format(m.totalBytes)) (\(m.source)), minFree \(ByteSize.format(minFree))")
        }
        let records = (try? inventory.all()) ?? []
        let running = records.filter { $0.state == .running }
        let targets = running.compactMap { r in r.pid.map { LadderTarget(name: r.name, pid: Int32($0), socket: socketPath(r.name), config: r.definition.config) } }
        driveKSM(shareable: targets.contains { $0.config.shareable == true }, state: state)
        return (m, state, minFree, targets)
    }

    /// KSM on while a running VM is shareable, at the state's scan rate; off again when none is
    /// (only if this daemon turned it on).
    func driveKSM(shareable: Bool, state: HostMemoryState) {
        guard KSM.available else { return }
        if shareable {
            KSM.set("pages_to_scan", KSM.pagesToScan(state))
            if KSM.value("run") != 1, KSM.set("run", 1) {
                ladder.ksmOwned = true
                event("memory", kind: .host, "ksm-on", "a shareable VM runs: KSM scans \(KSM.pagesToScan(state)) pages every \(KSM.value("sleep_millisecs") ?? 20) ms")
            }
        } else if ladder.ksmOwned, KSM.value("run") == 1 {
            if KSM.set("run", 0) { event("memory", kind: .host, "ksm-off", "no shareable VM runs") }
            ladder.ksmOwned = false
        }
    }

    /// Step 3 (on the actor): what the VMMs said, for host info and metrics; events for what changed.
    func ladderEnd(_ r: LadderResult) {
        ladder.withoutBalloon = r.withoutBalloon
        ladder.balloonBytes = r.balloonBytes
        ladder.compressedBytes = r.compressedBytes
        ladder.swappedBytes = r.swappedBytes
        ladder.policyBalloons = r.policyBalloons
        for (vm, message) in r.events { event(vm, message.type, message.text) }
        for vm in r.withoutBalloon where ladder.state >= .soft && !ladder.reportedNoBalloon.contains(vm) {
            ladder.reportedNoBalloon.insert(vm)
            event(vm, "no-balloon", "host memory is \(ladder.state.rawValue) but the balloon policy cannot reclaim from this VM: it has no balloon device or its guest reports no figures (no balloon driver)")
        }
        for vm in r.reclaimUnsupported where !ladder.withoutReclaim.contains(vm) {
            ladder.withoutReclaim.insert(vm)
            event(vm, "reclaim-unsupported", "host memory is \(ladder.state.rawValue) but this VMM answered `reclaim` with \"unknown command\": it cannot compress or swap guest pages; the ladder goes on without it")
        }
    }

    /// At low, no VM starts (a start would take memory the running VMs are being squeezed for).
    func checkMemoryStateAllowsStart(_ name: String) throws {
        guard ladder.state == .low, let m = ladder.memory else { return }
        throw HTTPError.invalid("host-memory-low",
            "VM '\(name)' is not started: host memory is in the low state, \(ByteSize.format(m.freeBytes)) free of \(ByteSize.format(m.totalBytes)) (\(m.source)), below 32% of the \(ByteSize.format(ladder.minFree)) minFree reserve. Stop a VM or shrink one (`vireo vm balloon NAME SIZE`), then try again (`vireo host info` shows the state)")
    }

    func ladderView() -> HostMemoryLadder {
        let m = ladder.memory ?? HostMemory.sample()
        let minFree = ladder.memory == nil ? m.minFree(override: memoryMinFree) : ladder.minFree
        let state = ladder.memory == nil ? HostMemory.state(freeBytes: m.freeBytes, minFree: minFree) : ladder.state
        let ksm = KSM.snapshot()
        return HostMemoryLadder(state: state, totalBytes: m.totalBytes, freeBytes: m.freeBytes, minFreeBytes: minFree, source: m.source,
                                stateChanges: ladder.changes, ksmSavedBytes: (ksm?.pagesSharing ?? 0) &* KSM.pageSize,
                                balloonBytes: ladder.balloonBytes, compressedBytes: ladder.compressedBytes, swappedBytes: ladder.swappedBytes,
                                ksmRun: ksm?.run, ksmPagesToScan: ksm?.pagesToScan, vmsWithoutBalloon: ladder.withoutBalloon,
                                vmsWithoutReclaim: ladder.withoutReclaim.sorted())
    }

    /// One pass of the ladder. The VMMs are asked outside the actor (a slow VMM never holds up requests).
    nonisolated func ladderTick() async {
        let (memory, state, minFree, targets) = await ladderBegin()
        let policy = await ladder.policyBalloons
        let result = LadderRun.run(memory: memory, state: state, minFree: minFree, targets: targets, policyBalloons: policy)
        await ladderEnd(result)
    }
}

struct LadderResult: Sendable {
    var withoutBalloon: [String] = []
    var reclaimUnsupported: [String] = []
    var balloonBytes: UInt64 = 0
    var compressedBytes: UInt64 = 0
    var swappedBytes: UInt64 = 0
    var policyBalloons: [String: PolicyBalloon] = [:]
    var events: [(String, (type: String, text: String))] = []
}

enum LadderRun {
    static func run(memory: HostMemory, state: HostMemoryState, minFree: UInt64, targets: [HostService.LadderTarget], policyBalloons: [String: PolicyBalloon] = [:]) -> LadderResult {
        var out = LadderResult()
        // Only running VMs, and only while their target is still the one the policy set.
        var candidates: [MemoryPolicy.Candidate] = []
        var sockets: [String: String] = [:]
        var inFlightMiB = 0   // balloon targets the guests have not reached yet
        for t in targets {
            let status = VMMStatus.fetch(socket: t.socket, timeoutSeconds: 1)
            let guestFree = status?.guestReport?.freeBytes.map { Int(clamping: $0 >> 20) }
            let balloonTarget = t.config.balloonMiB == nil ? nil : MemoryPolicy.balloonTarget(socket: t.socket)
            if balloonTarget == nil || guestFree == nil { out.withoutBalloon.append(t.name) }
            out.balloonBytes &+= status?.memory?.balloonBytes ?? 0
            if let target = balloonTarget { inFlightMiB += max(0, target - Int(clamping: (status?.memory?.balloonBytes ?? 0) >> 20)) }
            let reclaim = status?.reclaim
            out.compressedBytes &+= reclaim?.compressed ?? 0
            out.swappedBytes &+= reclaim?.swapped ?? 0
            sockets[t.name] = t.socket
            candidates.append(MemoryPolicy.Candidate(
                name: t.name, memoryMiB: t.config.memoryMiB, reservationMiB: t.config.memoryReservationMiB ?? 0,
                shares: t.config.memoryShares ?? VMConfig.defaultShares, balloonTargetMiB: balloonTarget,
                configuredBalloonMiB: policyBalloons[t.name].flatMap { $0.set == balloonTarget ? $0.before : nil } ?? balloonTarget ?? t.config.balloonMiB ?? 0,
                guestFreeMiB: guestFree,
                consumedMiB: Int(clamping: (ProcFS.statusBytes(pid: t.pid, key: "VmRSS") ?? 0) >> 20)))
        }
        for i in candidates.indices {
            let name = candidates[i].name
            if let pb = policyBalloons[name], pb.set == candidates[i].balloonTargetMiB {
                candidates[i].policyTargetMiB = pb.set
                out.policyBalloons[name] = pb
            }
        }
        // What it takes to be back at clear (free = 100% of minFree), plus a tenth for margin.
        let goal = minFree + minFree / 10
        let shortMiB = memory.freeBytes >= goal ? 0 : Int(clamping: (goal - memory.freeBytes) >> 20) + 1
        // What balloons are still inflating towards will come back without asking again.
        let needMiB = max(0, shortMiB - inFlightMiB)
        let balloons: [String: Int]
        switch state {
        case .high: balloons = MemoryPolicy.deflate(candidates)
        case .clear: balloons = [:]   // hold what was reclaimed (no flapping between clear and soft)
        case .soft, .hard, .low: balloons = MemoryPolicy.inflate(candidates, needMiB: needMiB)
        }
        for (name, target) in balloons.sorted(by: { $0.key < $1.key }) {
            guard let socket = sockets[name] else { continue }
            if state == .high { out.policyBalloons[name] = nil } else {
                let current = candidates.first { $0.name == name }?.balloonTargetMiB ?? 0
                out.policyBalloons[name] = PolicyBalloon(before: out.policyBalloons[name]?.before ?? current, set: target)
            }
            let reply = VMMProcess.control(socket, "balloon \(target)", timeoutSeconds: 2) ?? "no answer"
            let before = candidates.first { $0.name == name }?.balloonTargetMiB ?? 0
            out.events.append((name, ("balloon-policy", "host memory \(state.rawValue): balloon target \(before) -> \(target) MiB" + (reply.contains(#""ok":true"#) ? "" : " (the VMM said: \(reply.prefix(200)))"))))
        }
        if state >= .hard {
            // Balloons work at the guest's pace; the VMMs' own reclaim takes the rest now.
            let ballooned = balloons.reduce(0) { sum, kv in sum + max(0, kv.value - (candidates.first { $0.name == kv.key }?.balloonTargetMiB ?? 0)) }
            for (name, mib) in MemoryPolicy.reclaim(candidates, needMiB: max(0, needMiB - ballooned)).sorted(by: { $0.key < $1.key }) {
                guard let socket = sockets[name] else { continue }
                switch MemoryPolicy.askReclaim(socket: socket, bytes: UInt64(mib) << 20) {
                case .unsupported: out.reclaimUnsupported.append(name)
                case let .done(reply): out.events.append((name, ("reclaim", "host memory \(state.rawValue): asked the VMM to compress or swap \(mib) MiB of cold pages: \(reply)")))
                case let .failed(why): out.events.append((name, ("reclaim-failed", "host memory \(state.rawValue): reclaim of \(mib) MiB failed: \(why)")))
                }
            }
        }
        return out
    }
}
