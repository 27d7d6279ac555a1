import Devices
import Synchronization

/// Records every level change, as KVM_IRQ_LINE would see them.
final class RecordingLine: InterruptLine {
    private let s = Mutex<(level: Bool, history: [Bool])>((false, []))
    func set(level: Bool) { s.withLock { $0.level = level; $0.history.append(level) } }
    var level: Bool { s.withLock { $0.level } }
    var history: [Bool] { s.withLock { $0.history } }
}

/// Collects serial output bytes.
final class ByteSink: Sendable {
    private let s = Mutex<[UInt8]>([])
    var bytes: [UInt8] { s.withLock { $0 } }
    var sink: Serial16550.OutputSink { { b in self.s.withLock { $0.append(contentsOf: b) } } }
}

final class Counter: Sendable {
    private let s = Mutex(0)
    func bump() { s.withLock { $0 += 1 } }
    var value: Int { s.withLock { $0 } }
}

/// A device that records accesses, for bus dispatch tests.
final class ProbeDevice: BusDevice {
    struct Access: Equatable { var write: Bool; var offset: UInt64; var width: Int; var value: UInt64 }
    private let s = Mutex<[Access]>([])
    let fill: UInt8
    init(fill: UInt8 = 0xAB) { self.fill = fill }
    var accesses: [Access] { s.withLock { $0 } }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = fill &+ UInt8(truncatingIfNeeded: i) }
        s.withLock { $0.append(Access(write: false, offset: offset, width: data.count, value: 0)) }
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        s.withLock { $0.append(Access(write: true, offset: offset, width: data.count, value: data.littleEndianValue)) }
    }
}
