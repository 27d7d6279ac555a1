import VireoSupport

/// A token bucket: `rate` tokens per second, holding at most `capacity` (the burst).
/// Consumption may overdraw (a request's size is known only once it is taken); the bucket then
/// admits nothing until the refill brings it back above zero, so the long-run rate is exact.
/// Pure value type; time is passed in (nanoseconds, monotonic).
public struct TokenBucket: Sendable, Equatable {
    public let rate: UInt64
    public let capacity: UInt64
    /// Current tokens, scaled by 1e9 (token-nanoseconds) so refills stay exact in integers.
    private var scaled: Int64
    private var last: UInt64

    static let scale: Int64 = 1_000_000_000
    /// Largest rate or burst (8 Gi tokens): keeps every scaled value inside Int64.
    public static let maxTokens: UInt64 = 1 << 33

    /// `burst` 0 means one second's worth of `rate`. Starts full.
    public init(rate: UInt64, burst: UInt64 = 0, now: UInt64) {
        self.rate = max(1, min(rate, Self.maxTokens))
        let cap = burst == 0 ? self.rate : min(burst, Self.maxTokens)
        self.capacity = max(cap, 1)
        self.scaled = Int64(self.capacity) * Self.scale
        self.last = now
    }

    public var tokens: Int64 { scaled / Self.scale }

    public mutating func refill(now: UInt64) {
        guard now > last else { return }
        let dt = min(now - last, 60 * 1_000_000_000)      // a minute refills any bucket; no overflow
        last = now
        let add = Int64(dt).clampedMultiply(by: Int64(rate))
        let cap = Int64(capacity) * Self.scale
        scaled = scaled > cap - add ? cap : scaled + add
    }

    public var hasTokens: Bool { scaled > 0 }

    public mutating func consume(_ n: UInt64) {
        let amount = Int64(min(n, Self.maxTokens)) * Self.scale
        scaled = scaled < Int64.min / 2 + amount ? Int64.min / 2 : scaled - amount
    }

    /// Nanoseconds until the bucket is above zero again (0 when it already is).
    public var nanosUntilAvailable: UInt64 {
        guard scaled <= 0 else { return 0 }
        return UInt64((-scaled) / Int64(rate)) + 1
    }
}

extension Int64 {
    /// Multiplication that saturates instead of trapping.
    func clampedMultiply(by other: Int64) -> Int64 {
        let (r, o) = multipliedReportingOverflow(by: other)
        return o ? (self > 0) == (other > 0) ? .max : .min : r
    }
}

/// Bytes/s and operations/s limits of one device (either may be absent).
///
/// Concurrency: used only under the transport's back-end lock (one caller at a time).
public final class RateLimiter: @unchecked Sendable {
    public private(set) var bytes: TokenBucket?
    public private(set) var ops: TokenBucket?
    private let clock: () -> UInt64
    /// Times a request had to wait.
    public private(set) var throttledCount: UInt64 = 0

    public init(bytesPerSecond: UInt64, bytesBurst: UInt64 = 0, opsPerSecond: UInt64, opsBurst: UInt64 = 0,
                clock: @escaping () -> UInt64 = monotonicNanos) {
        self.clock = clock
        let now = clock()
        bytes = bytesPerSecond > 0 ? TokenBucket(rate: bytesPerSecond, burst: bytesBurst, now: now) : nil
        ops = opsPerSecond > 0 ? TokenBucket(rate: opsPerSecond, burst: opsBurst, now: now) : nil
    }

    /// Whether another request may start now.
    public func admit() -> Bool {
        let now = clock()
        bytes?.refill(now: now)
        ops?.refill(now: now)
        let ok = (bytes?.hasTokens ?? true) && (ops?.hasTokens ?? true)
        if !ok { throttledCount &+= 1 }
        return ok
    }

    public func consume(bytes n: UInt64, ops count: UInt64 = 1) {
        bytes?.consume(n)
        ops?.consume(count)
    }

    /// How long until `admit()` can succeed.
    public var nanosUntilAvailable: UInt64 {
        max(bytes?.nanosUntilAvailable ?? 0, ops?.nanosUntilAvailable ?? 0)
    }
}
