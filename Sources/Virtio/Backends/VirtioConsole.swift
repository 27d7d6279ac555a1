import GuestMemory
import Synchronization

/// virtio-console (type 3), single port, no multiport: receiveq (0) carries host input to the
/// guest in device-writable buffers, transmitq (1) carries guest output in device-readable
/// buffers to `output`. Config space: cols, rows (VIRTIO_CONSOLE_F_SIZE), max_nr_ports = 1,
/// emerg_wr (VIRTIO_CONSOLE_F_EMERG_WRITE: a config write of one byte is output immediately).
///
/// Host input: `enqueueInput` (any thread) appends to a bounded buffer and returns how much it
/// took; the VMM then calls `VirtioPCIDevice.processQueue(0)` (or lets the next receive-queue
/// doorbell do it) to move bytes into guest buffers.
///
/// Concurrency: queue work under the transport's back-end lock; the input buffer and size have
/// their own `Mutex` because `enqueueInput`/`resize` come from other threads.
public final class VirtioConsole: VirtioDevice {
    public enum Feature {
        public static let size: UInt64 = 1 << 0
        public static let emergencyWrite: UInt64 = 1 << 2
    }
    public typealias OutputSink = @Sendable (UnsafeRawBufferPointer) -> Void

    public let deviceType = VirtioDeviceType.console
    public let deviceFeatures: UInt64 = Feature.size | Feature.emergencyWrite
    public let queueMaxSizes: [UInt16]
    public let configSize = 12
    public let inputCapacity: Int

    private struct Shared { var input: [UInt8] = []; var cols: UInt16 = 80; var rows: UInt16 = 25; var sizeChanged = false }
    private let shared = Mutex(Shared())
    private let output: OutputSink
    private var queues: [VirtqueueSplit?] = []
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?

    public init(queueSize: UInt16 = 256, inputCapacity: Int = 64 * 1024, output: @escaping OutputSink) {
        self.queueMaxSizes = [queueSize, queueSize]
        self.inputCapacity = max(1, inputCapacity)
        self.output = output
    }

    /// Queues host input for the guest; returns the number of bytes accepted (bounded buffer).
    @discardableResult
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        shared.withLock { s in
            let n = min(bytes.count, inputCapacity - s.input.count)
            s.input.append(contentsOf: bytes.prefix(max(0, n)))
            return max(0, n)
        }
    }

    public var pendingInput: Int { shared.withLock { $0.input.count } }

    /// Sets the terminal size the guest sees (call `signalConfigChange` via the transport's
    /// processQueue path: the change is announced the next time a queue is processed).
    public func resize(cols: UInt16, rows: UInt16) {
        shared.withLock { $0.cols = cols; $0.rows = rows; $0.sizeChanged = true }
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let (cols, rows) = shared.withLock { ($0.cols, $0.rows) }
        var c = [UInt8](repeating: 0, count: configSize)
        c[0] = UInt8(cols & 0xFF); c[1] = UInt8(cols >> 8)
        c[2] = UInt8(rows & 0xFF); c[3] = UInt8(rows >> 8)
        c[4] = 1                                              // max_nr_ports
        for i in 0..<data.count { data[i] = offset + i < c.count ? c[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        // emerg_wr (offset 8, le32): the low byte is a character to print now.
        if offset == 8, let b = data.first {
            withUnsafeBytes(of: b) { output($0) }
        }
    }

    public func activate(_ activation: VirtioActivation) throws {
        queues = activation.queues
        memory = activation.memory
        interrupt = activation.interrupt
    }

    public func reset() {
        queues = []
        memory = nil
        interrupt = nil
    }

    public func saveState() -> VirtioBackendState {
        shared.withLock { .console(input: $0.input, cols: $0.cols, rows: $0.rows) }
    }

    public func restoreState(_ state: VirtioBackendState) throws {
        guard case let .console(input, cols, rows) = state else { throw VirtioStateError("a console device has no state of kind \(state.kind)") }
        let capacity = inputCapacity
        shared.withLock { s in s.input = Array(input.prefix(capacity)); s.cols = cols; s.rows = rows }
    }

    public func processQueue(_ index: Int) throws -> Bool {
        guard let memory, let interrupt else { return false }
        if shared.withLock({ s in defer { s.sizeChanged = false }; return s.sizeChanged }) { interrupt.signalConfigChange() }
        switch index {
        case 0: return try receive(memory, interrupt)
        case 1: return try transmit(memory, interrupt)
        default: return false
        }
    }

    /// Host input -> guest buffers. Stops when input or buffers run out.
    private func receive(_ memory: GuestMemory, _ interrupt: any VirtioInterrupt) throws -> Bool {
        guard queues.count > 0, let q = queues[0] else { return false }
        var used = false
        while shared.withLock({ !$0.input.isEmpty }), let chain = try q.popAvailableChain() {
            guard chain.readable.isEmpty else { throw VirtqueueError.unexpectedBufferDirection("virtio-console receive buffers must be device-writable") }
            var w = ChainCursor.writer(chain, memory)
            let chunk: [UInt8] = shared.withLock { s in
                let n = Int(min(UInt64(s.input.count), w.remaining))
                let c = Array(s.input.prefix(n))
                s.input.removeFirst(n)
                return c
            }
            try w.write(chunk)
            q.addUsed(head: chain.head, length: UInt32(truncatingIfNeeded: chunk.count))
            used = true
        }
        if used && q.needsNotification() { interrupt.signalQueue(0) }
        _ = q.enableNotificationAndCheck()
        return false
    }

    /// Guest output -> sink.
    private func transmit(_ memory: GuestMemory, _ interrupt: any VirtioInterrupt) throws -> Bool {
        guard queues.count > 1, let q = queues[1] else { return false }
        var budget = Int(q.layout.size) * 2
        var used = false
        var more = false
        repeat {
            while let chain = try q.popAvailableChain() {
                guard chain.writable.isEmpty else { throw VirtqueueError.unexpectedBufferDirection("virtio-console transmit buffers must be device-readable") }
                var r = ChainCursor.reader(chain, memory)
                try r.advance(chain.readableLength) { output(UnsafeRawBufferPointer($0)) }
                q.addUsed(head: chain.head, length: 0)
                used = true
                budget -= 1
                if budget == 0 { more = q.hasAvailable(); break }
            }
        } while !more && budget > 0 && q.enableNotificationAndCheck()
        if used && q.needsNotification() { interrupt.signalQueue(1) }
        return more
    }
}
