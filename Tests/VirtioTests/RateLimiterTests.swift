import Synchronization
import Testing
import Virtio

final class FakeClock: Sendable {
    private let t = Mutex<UInt64>(1_000_000_000)
    var now: UInt64 { t.withLock { $0 } }
    func advance(_ ns: UInt64) { t.withLock { $0 &+= ns } }
}

@Suite struct RateLimiterTests {
    @Test func bucketStartsFullAndRefillsAtRate() {
        var b = TokenBucket(rate: 1000, burst: 500, now: 0)
        #expect(b.tokens == 500)
        b.consume(800)                        // overdraw
        #expect(!b.hasTokens)
        #expect(b.nanosUntilAvailable == 300_000_001)
        b.refill(now: 300_000_000)
        #expect(!b.hasTokens)                 // exactly 0 is not "has tokens"
        b.refill(now: 301_000_000)
        #expect(b.hasTokens && b.tokens == 1)
        b.refill(now: 10_000_000_000)         // capped at the burst
        #expect(b.tokens == 500)
    }

    @Test func defaultBurstIsOneSecond() {
        let b = TokenBucket(rate: 4096, now: 0)
        #expect(b.capacity == 4096 && b.tokens == 4096)
    }

    @Test func extremesDoNotTrap() {
        var b = TokenBucket(rate: .max, burst: .max, now: .max)
        b.consume(.max); b.consume(.max); b.consume(.max)
        b.refill(now: 0)                      // time going backwards is ignored
        b.refill(now: .max)
        _ = b.nanosUntilAvailable
        var z = TokenBucket(rate: 0, now: 0)  // rate 0 is clamped to 1 token/s
        z.consume(5)
        #expect(z.nanosUntilAvailable > 4_000_000_000)
    }

    @Test func limiterEnforcesBytesAndOps() {
        let clock = FakeClock()
        let l = RateLimiter(bytesPerSecond: 1 << 20, opsPerSecond: 10, clock: { clock.now })
        var ops = 0
        while l.admit() { l.consume(bytes: 4096); ops += 1; if ops > 100 { break } }
        #expect(ops == 10)                    // the ops bucket (burst 10) ran out first
        #expect(l.nanosUntilAvailable > 0 && l.nanosUntilAvailable <= 100_000_001)
        clock.advance(100_000_001)
        #expect(l.admit())
        l.consume(bytes: 4 << 20)             // a huge request overdraws the byte bucket
        clock.advance(1_000_000_000)
        #expect(!l.admit())
        clock.advance(3_000_000_000)
        #expect(l.admit())
        #expect(l.throttledCount >= 1)
    }
}
