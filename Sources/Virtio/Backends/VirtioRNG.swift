import GuestMemory

/// virtio-rng (entropy device, type 4): one request queue of device-writable buffers, filled
/// from the host's CSPRNG (`SystemRandomNumberGenerator`, which is getrandom(2) on Linux).
///
/// A chain with any device-readable segment is malformed for this device (the spec makes the
/// request queue's buffers device-writable) and puts the device in NEEDS_RESET.
/// At most `maxBytesPerRequest` are produced per chain (the rest of the buffer is left untouched
/// and the used length says how much was written), so one huge buffer cannot stall the loop.
///
/// Concurrency: called only under the transport's back-end lock (see `VirtioDevice`).
public final class VirtioRNG: VirtioDevice {
    public let deviceType = VirtioDeviceType.entropy
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes: [UInt16]
    public let configSize = 0
    public let maxBytesPerRequest: UInt64
    /// Total bytes handed to the guest, for statistics.
    public private(set) var bytesProvided: UInt64 = 0

    private var queue: VirtqueueSplit?
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?

    public init(queueSize: UInt16 = 256, maxBytesPerRequest: UInt64 = 64 * 1024) {
        self.queueMaxSizes = [queueSize]
        self.maxBytesPerRequest = maxBytesPerRequest
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {}
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws {
        queue = activation.queues.first ?? nil
        memory = activation.memory
        interrupt = activation.interrupt
    }

    public func reset() {
        queue = nil
        memory = nil
        interrupt = nil
    }

    public func processQueue(_ index: Int) throws -> Bool {
        guard index == 0, let queue, let memory, let interrupt else { return false }
        var budget = Int(queue.layout.size) * 2
        var rng = SystemRandomNumberGenerator()
        var usedAny = false
        var more = false
        repeat {
            while let chain = try queue.popAvailableChain() {
                guard chain.readable.isEmpty else {
                    throw VirtqueueError.unexpectedBufferDirection("virtio-rng buffers must be device-writable")
                }
                var cursor = ChainCursor.writer(chain, memory)
                let total = min(cursor.remaining, maxBytesPerRequest)
                try cursor.advance(total) { buf in
                    var i = 0
                    while i < buf.count {
                        let r = rng.next()
                        let n = min(8, buf.count - i)
                        withUnsafeBytes(of: r) { src in
                            // SAFETY: i + n <= buf.count and n <= 8 bytes of `r`.
                            UnsafeMutableRawBufferPointer(rebasing: buf[i..<(i + n)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<n]))
                        }
                        i += n
                    }
                }
                queue.addUsed(head: chain.head, length: UInt32(truncatingIfNeeded: total))
                bytesProvided &+= total
                usedAny = true
                budget -= 1
                if budget == 0 { more = queue.hasAvailable(); break }
            }
        } while !more && budget > 0 && queue.enableNotificationAndCheck()
        if usedAny && queue.needsNotification() { interrupt.signalQueue(0) }
        return more
    }
}
