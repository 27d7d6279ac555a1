/// The virtio-vsock packet header (virtio 1.2 section 5.10.6), 44 bytes little-endian.
public struct VsockHeader: Sendable, Equatable {
    public static let size = 44
    public enum Op {
        public static let request: UInt16 = 1, response: UInt16 = 2, rst: UInt16 = 3, shutdown: UInt16 = 4
        public static let rw: UInt16 = 5, creditUpdate: UInt16 = 6, creditRequest: UInt16 = 7
    }
    public static let typeStream: UInt16 = 1
    public static let hostCID: UInt64 = 2

    public var srcCID: UInt64 = 0, dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0, dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VsockHeader.typeStream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public init() {}

    public init?(bytes b: [UInt8]) {
        guard b.count >= Self.size else { return nil }
        func u(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
        srcCID = u(0, 8); dstCID = u(8, 8)
        srcPort = UInt32(u(16, 4)); dstPort = UInt32(u(20, 4)); len = UInt32(u(24, 4))
        type = UInt16(u(28, 2)); op = UInt16(u(30, 2)); flags = UInt32(u(32, 4))
        bufAlloc = UInt32(u(36, 4)); fwdCnt = UInt32(u(40, 4))
    }

    public var bytes: [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(Self.size)
        func put(_ v: UInt64, _ n: Int) { for i in 0..<n { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        put(srcCID, 8); put(dstCID, 8); put(UInt64(srcPort), 4); put(UInt64(dstPort), 4); put(UInt64(len), 4)
        put(UInt64(type), 2); put(UInt64(op), 2); put(UInt64(flags), 4); put(UInt64(bufAlloc), 4); put(UInt64(fwdCnt), 4)
        return b
    }
}
