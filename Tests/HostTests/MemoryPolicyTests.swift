import Host
import Testing
import VireoAPI

/// The ladder's decisions (Sources/Host/MemoryPolicy.swift, HostMemory.swift) as pure functions:
/// the thresholds, who is reclaimed first, and the floors no step goes below.
@Suite struct MemoryPolicyTests {
    @Test func minFreeFollowsESXisScaleAndStatesTheirThresholds() {
        let gib: UInt64 = 1 << 30
        // 6% of 4 GiB + 4% of 8 GiB + 2% of 16 GiB: ESXi's 899 MB at 28 GiB (integer percent steps).
        let at28 = HostMemory.minFree(totalBytes: 28 * gib)
        #expect(at28 >> 20 == 901 || at28 >> 20 == 900, "\(at28 >> 20) MiB")
        #expect(HostMemory.minFree(totalBytes: 128 * gib) - at28 == 100 * gib / 100)
        #expect(HostMemory.minFree(totalBytes: 1 * gib) == gib / 100 * 6)
        let m: UInt64 = 100 << 20
        let cases: [(UInt64, HostMemoryState)] = [(400 << 20, .high), ((400 << 20) - 1, .clear), (100 << 20, .clear), ((100 << 20) - 1, .soft),
                                                   (64 << 20, .soft), (63 << 20, .hard), (32 << 20, .hard), (31 << 20, .low), (0, .low)]
        for (free, state) in cases { #expect(HostMemory.state(freeBytes: free, minFree: m) == state, "\(free >> 20) MiB free") }
        #expect(HostMemory.state(freeBytes: .max, minFree: .max) == .clear)   // no overflow: 100% of minFree
    }

    func vm(_ name: String, mem: Int = 1024, res: Int = 0, shares: Int = 100, balloon: Int? = 0, free: Int? = 800, consumed: Int = 900) -> MemoryPolicy.Candidate {
        MemoryPolicy.Candidate(name: name, memoryMiB: mem, reservationMiB: res, shares: shares, balloonTargetMiB: balloon,
                               configuredBalloonMiB: 0, guestFreeMiB: free, consumedMiB: consumed)
    }

    @Test func fewerSharesPerMiBAreReclaimedFirst() {
        let order = MemoryPolicy.reclaimOrder([vm("rich", shares: 400), vm("poor", shares: 50), vm("big", mem: 4096, shares: 100), vm("mid")])
        #expect(order.map(\.name) == ["big", "poor", "mid", "rich"])
        // 300 MiB short: all from the first in order that has free memory.
        #expect(MemoryPolicy.inflate([vm("rich", shares: 400), vm("poor", shares: 50)], needMiB: 300) == ["poor": 300])
        // More than one can give: the next one gives the rest.
        let t = MemoryPolicy.inflate([vm("rich", shares: 400, free: 500), vm("poor", shares: 50, free: 216)], needMiB: 300)
        #expect(t == ["poor": 216 - 51, "rich": 300 - (216 - 51)], "\(t)")
    }

    @Test func balloonsNeverGoBelowTheReservationNorTakeWhatIsNotFree() {
        // 1024 MiB with 900 reserved: the balloon can hold at most 124 MiB.
        #expect(MemoryPolicy.inflate([vm("r", res: 900)], needMiB: 500) == ["r": 124])
        // A balloon at 100 already: 24 more.
        #expect(MemoryPolicy.inflate([vm("r", res: 900, balloon: 100)], needMiB: 500) == ["r": 124])
        #expect(MemoryPolicy.inflate([vm("r", res: 1024)], needMiB: 500).isEmpty)
        // No balloon, or no guest figures: nothing is taken from it.
        #expect(MemoryPolicy.inflate([vm("nb", balloon: nil), vm("nf", free: nil)], needMiB: 100).isEmpty)
        // The guest keeps its headroom (5% of its RAM, at least 16 MiB).
        #expect(MemoryPolicy.inflate([vm("g", free: 60)], needMiB: 500) == ["g": 60 - 51])
        // Deflating returns a balloon the policy inflated to where it was before.
        var inflated = vm("g", balloon: 300)
        inflated.configuredBalloonMiB = 64
        inflated.policyTargetMiB = 300
        #expect(MemoryPolicy.deflate([inflated, vm("z", balloon: 0)]) == ["g": 64])
        // A target the operator set (the policy did not, or the operator changed it since) stays.
        var operators = inflated
        operators.policyTargetMiB = nil
        #expect(MemoryPolicy.deflate([operators]).isEmpty)
        operators.policyTargetMiB = 200
        #expect(MemoryPolicy.deflate([operators]).isEmpty)
    }

    @Test func vmmReclaimKeepsReservationsAndOrder() {
        let r = MemoryPolicy.reclaim([vm("a", res: 800, shares: 100, consumed: 900), vm("b", shares: 50, consumed: 300)], needMiB: 350)
        #expect(r == ["b": 300, "a": 50])
        #expect(MemoryPolicy.reclaim([vm("a", res: 900, consumed: 900)], needMiB: 10).isEmpty)
    }
}
