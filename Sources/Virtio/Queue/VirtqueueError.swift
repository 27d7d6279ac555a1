import GuestMemory
import VireoSupport

/// A guest mistake found while reading or validating a virtqueue. Every case is the guest's
/// fault (or malice): the transport answers it by setting DEVICE_NEEDS_RESET and raising a
/// configuration-change interrupt; nothing else in the VMM is affected.
public enum VirtqueueError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidQueueSize(size: UInt16, max: UInt16)
    case misalignedRing(part: String, address: UInt64)
    case ringOutsideMemory(part: String, address: UInt64, length: UInt64)
    /// `avail.idx` moved more than the queue size past the last entry we consumed.
    case availableIndexOutOfRange(availableIndex: UInt16, lastSeen: UInt16)
    case headOutOfRange(head: UInt16, size: UInt16)
    case nextOutOfRange(next: UInt16, tableSize: UInt32)
    /// More descriptors than the table has: a loop, or a chain longer than the queue.
    case chainTooLong(limit: Int)
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    /// A device-readable descriptor after a device-writable one.
    case readableAfterWritable(index: UInt16)
    case indirectNotNegotiated
    case indirectWithNext
    case nestedIndirect
    case badIndirectTableLength(UInt32)
    case indirectTableOutsideMemory(address: UInt64, length: UInt32)
    /// A device needed device-readable data and got a device-writable buffer (or vice versa),
    /// or the chain is too short for the request's fixed parts.
    case unexpectedBufferDirection(String)
    case requestTooShort(String)

    public var description: String {
        switch self {
        case let .invalidQueueSize(s, m): return "queue size \(s) is not a power of two in 1...\(m)"
        case let .misalignedRing(p, a): return "\(p) at \(hex(a)) is misaligned"
        case let .ringOutsideMemory(p, a, l): return "\(p) at \(hex(a))+\(l) is outside guest memory"
        case let .availableIndexOutOfRange(a, l): return "avail.idx \(a) is more than a queue ahead of \(l)"
        case let .headOutOfRange(h, s): return "chain head \(h) is outside the \(s)-entry descriptor table"
        case let .nextOutOfRange(n, s): return "next index \(n) is outside the \(s)-entry descriptor table"
        case let .chainTooLong(l): return "descriptor chain longer than \(l) (a loop?)"
        case let .bufferOutsideMemory(a, l): return "buffer \(hex(a))+\(l) is outside guest memory"
        case let .readableAfterWritable(i): return "descriptor \(i) is device-readable after a device-writable one"
        case .indirectNotNegotiated: return "indirect descriptor used without VIRTIO_F_INDIRECT_DESC"
        case .indirectWithNext: return "indirect descriptor also has NEXT set"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case let .badIndirectTableLength(l): return "indirect table length \(l) is not a non-zero multiple of 16 within limits"
        case let .indirectTableOutsideMemory(a, l): return "indirect table \(hex(a))+\(l) is outside guest memory"
        case let .unexpectedBufferDirection(w): return "wrong buffer direction: \(w)"
        case let .requestTooShort(w): return "request too short: \(w)"
        }
    }

    /// The case name, stable for logs, metrics and the test corpus.
    public var caseName: String {
        switch self {
        case .invalidQueueSize: return "invalidQueueSize"
        case .misalignedRing: return "misalignedRing"
        case .ringOutsideMemory: return "ringOutsideMemory"
        case .availableIndexOutOfRange: return "availableIndexOutOfRange"
        case .headOutOfRange: return "headOutOfRange"
        case .nextOutOfRange: return "nextOutOfRange"
        case .chainTooLong: return "chainTooLong"
        case .bufferOutsideMemory: return "bufferOutsideMemory"
        case .readableAfterWritable: return "readableAfterWritable"
        case .indirectNotNegotiated: return "indirectNotNegotiated"
        case .indirectWithNext: return "indirectWithNext"
        case .nestedIndirect: return "nestedIndirect"
        case .badIndirectTableLength: return "badIndirectTableLength"
        case .indirectTableOutsideMemory: return "indirectTableOutsideMemory"
        case .unexpectedBufferDirection: return "unexpectedBufferDirection"
        case .requestTooShort: return "requestTooShort"
        }
    }

    public var vireoError: VireoError { VireoError(.guest, "virtqueue: \(description)") }
}
