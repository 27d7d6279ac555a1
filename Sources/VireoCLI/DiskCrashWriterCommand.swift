import ArgumentParser
import DiskImage
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Hidden test helper: writes a deterministic workload to a qcow2 image and prints `F n` each
/// time a flush covering operations 1...n has completed. The crash-consistency test kills it at
/// random moments and checks the image. The workload is defined in `CrashWorkload` below and
/// mirrored by Tests/DiskImageTests/CrashConsistencyTests.swift.
struct DiskCrashWriter: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "crash-writer", abstract: "Test helper: deterministic writer for the crash-consistency test.",
                                                    shouldDisplay: false)
    @Option var seed: UInt64 = 1
    @Option var ops: Int = 1_000_000
    @Option(name: .customLong("flush-every")) var flushEvery: Int = 16
    @Argument var file: String

    func run() throws {
        try runDisk { () throws(VireoError) in
            let img = try DiskImage.open(path: file, format: .qcow2)
            var w = CrashWorkload(seed: seed, diskSize: img.virtualSize)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: CrashWorkload.block * CrashWorkload.maxBlocks, alignment: 4096)
            defer { buf.deallocate() }
            for i in 1...max(1, ops) {
                let op = w.next(seq: UInt64(i))
                switch op.kind {
                case .write:
                    for k in 0..<op.count { CrashWorkload.fill(UnsafeMutableRawBufferPointer(rebasing: buf[k * CrashWorkload.block..<(k + 1) * CrashWorkload.block]), seq: UInt64(i), block: op.block + UInt64(k)) }
                    try img.write(UnsafeRawBufferPointer(rebasing: buf[0..<op.count * CrashWorkload.block]), at: op.block * UInt64(CrashWorkload.block))
                case .zero:
                    try img.writeZeroes(offset: op.block * UInt64(CrashWorkload.block), length: UInt64(op.count * CrashWorkload.block))
                case .discard:
                    try img.discard(offset: op.block * UInt64(CrashWorkload.block), length: UInt64(op.count * CrashWorkload.block))
                }
                if i % flushEvery == 0 {
                    try img.flush()
                    writeFD(1, "F \(i)\n")
                }
            }
            try img.close()
            writeFD(1, "DONE\n")
        }
    }
}

/// The deterministic workload (xorshift64): writes of 1-8 blocks of 4 KiB, cluster-sized zeroing and discards.
struct CrashWorkload {
    static let block = 4096
    static let maxBlocks = 16
    enum Kind { case write, zero, discard }
    struct Op { var kind: Kind; var block: UInt64; var count: Int }
    var state: UInt64
    let blocks: UInt64
    init(seed: UInt64, diskSize: UInt64) { state = seed | 1; blocks = diskSize / UInt64(Self.block) }
    mutating func rand() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
    mutating func next(seq: UInt64) -> Op {
        let r = rand() % 10
        if r < 2 {
            let b = (rand() % (blocks / 16)) * 16
            return Op(kind: r == 0 ? .zero : .discard, block: b, count: 16)
        }
        let n = Int(1 + rand() % 8)
        let b = rand() % (blocks - UInt64(n))
        return Op(kind: .write, block: b, count: n)
    }
    static func fill(_ p: UnsafeMutableRawBufferPointer, seq: UInt64, block: UInt64) {
        let byte = UInt8(truncatingIfNeeded: seq &* 31 &+ block &* 7) | 1
        p.initializeMemory(as: UInt8.self, repeating: byte)
        p.storeBytes(of: seq.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: block.littleEndian, toByteOffset: 8, as: UInt64.self)
    }
}
