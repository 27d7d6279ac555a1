import VireoAPI
import VireoSupport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The reclamation ladder's decisions (docs/memory.md), as pure functions of what was measured,
/// and the calls to the VMMs that carry them out.
public enum MemoryPolicy {
    /// One running VM as the policy sees it.
    public struct Candidate: Sendable, Equatable {
        public var name: String
        public var memoryMiB: Int
        public var reservationMiB: Int
        public var shares: Int
        /// nil: no balloon device.
        public var balloonTargetMiB: Int?
        /// Where an inflated balloon returns to: the target it had before the policy first
        /// inflated it (the definition's size, or what the operator set).
        public var configuredBalloonMiB: Int
        /// The target the policy itself last set (nil: the policy has not inflated this balloon,
        /// or the operator has set another target since; then it is the operator's and stays).
        public var policyTargetMiB: Int? = nil
        /// What the guest's balloon driver last reported free (nil: no figures).
        public var guestFreeMiB: Int?
        /// Host memory resident for the VM (VmRSS).
        public var consumedMiB: Int

        public init(name: String, memoryMiB: Int, reservationMiB: Int, shares: Int, balloonTargetMiB: Int?, configuredBalloonMiB: Int,
                    guestFreeMiB: Int?, consumedMiB: Int) {
            self.name = name; self.memoryMiB = memoryMiB; self.reservationMiB = reservationMiB; self.shares = shares
            self.balloonTargetMiB = balloonTargetMiB; self.configuredBalloonMiB = configuredBalloonMiB
            self.guestFreeMiB = guestFreeMiB; self.consumedMiB = consumedMiB
        }
    }

    /// Memory shares decide who is reclaimed first: fewest shares per provisioned MiB first
    /// (ESXi's proportional-share rule), by name among equals.
    public static func reclaimOrder(_ vms: [Candidate]) -> [Candidate] {
        vms.sorted { a, b in
            let l = Double(a.shares) / Double(max(1, a.memoryMiB)), r = Double(b.shares) / Double(max(1, b.memoryMiB))
            return l != r ? l < r : a.name < b.name
        }
    }

    /// A guest keeps this much of its own free memory (it needs some to work with).
    public static func guestHeadroomMiB(_ memoryMiB: Int) -> Int { max(16, memoryMiB / 20) }

    /// Balloon targets that reclaim `needMiB` from the guests' free memory, in reclaim order.
    /// A balloon never holds a guest below its reservation, never takes memory a guest did not
    /// report free, and never grows past the guest's RAM. Returns only targets that change.
    public static func inflate(_ vms: [Candidate], needMiB: Int) -> [String: Int] {
        var need = needMiB
        var out: [String: Int] = [:]
        for vm in reclaimOrder(vms) where need > 0 {
            guard let current = vm.balloonTargetMiB, let free = vm.guestFreeMiB else { continue }
            let ceiling = max(0, vm.memoryMiB - vm.reservationMiB)   // the balloon's largest size
            let spare = free - guestHeadroomMiB(vm.memoryMiB)
            let take = min(need, spare, ceiling - current)
            guard take > 0 else { continue }
            out[vm.name] = current + take
            need -= take
        }
        return out
    }

    /// When memory is plentiful again (high): balloons the policy inflated go back to where they
    /// were before it; a target the operator set (`vireo vm balloon`) is never undone.
    public static func deflate(_ vms: [Candidate]) -> [String: Int] {
        var out: [String: Int] = [:]
        for vm in vms {
            guard let t = vm.balloonTargetMiB, let mine = vm.policyTargetMiB, t == mine, t > vm.configuredBalloonMiB else { continue }
            out[vm.name] = vm.configuredBalloonMiB
        }
        return out
    }

    /// How much each VM's VMM is asked to compress or swap (hard and low): the shortfall, from
    /// the VMs reclaimed first, never taking a VM below its reservation.
    public static func reclaim(_ vms: [Candidate], needMiB: Int) -> [String: Int] {
        var need = needMiB
        var out: [String: Int] = [:]
        for vm in reclaimOrder(vms) where need > 0 {
            let above = vm.consumedMiB - max(vm.reservationMiB, 0)
            let take = min(need, above)
            guard take > 0 else { continue }
            out[vm.name] = take
            need -= take
        }
        return out
    }

    // MARK: Talking to the VMMs (outside the daemon's actor)

    enum ReclaimOutcome: Sendable, Equatable {
        case done(String)
        /// The VMM does not know `reclaim` (one without compression).
        case unsupported
        case failed(String)
    }

    /// `reclaim BYTES` on a VMM's control socket. The VMM answers one line of key=value pairs
    /// (`ok=true released_bytes=N ...` or `ok=false error=WHY`); an "unknown command" reply
    /// means this VMM cannot compress. Compressing or writing out a few GiB takes seconds, so
    /// the wait is long; the ladder's tick waits for it (ticks never overlap).
    static func askReclaim(socket: String, bytes: UInt64) -> ReclaimOutcome {
        guard let reply = VMMProcess.control(socket, "reclaim \(bytes)", timeoutSeconds: 30) else {
            return .failed("the VMM did not answer `reclaim` within 30 s")
        }
        return reclaimOutcome(reply)
    }

    /// The outcome a `reclaim` reply line stands for.
    static func reclaimOutcome(_ reply: String) -> ReclaimOutcome {
        let line = String(reply.prefix(while: { $0 != "\n" }))
        if line.contains("unknown command") { return .unsupported }
        if line.hasPrefix("ok=false") {
            let why = line.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? line
            return .failed(String((why.hasPrefix("error=") ? String(why.dropFirst(6)) : why).prefix(300)))
        }
        guard line.hasPrefix("ok=true") else { return .failed("the VMM's answer was not understood: \(line.prefix(200))") }
        return .done(String(line.dropFirst("ok=true ".count).prefix(300)))
    }

    /// The balloon's current target (nil: no balloon, or no answer).
    static func balloonTarget(socket: String) -> Int? {
        guard let reply = VMMProcess.control(socket, "balloon", timeoutSeconds: 2) else { return nil }
        struct Reply: Decodable { var ok: Bool; var target_mib: Int? }
        guard let r = try? JSONDecoder().decode(Reply.self, from: Data(reply.utf8)), r.ok else { return nil }
        return r.target_mib
    }
}
