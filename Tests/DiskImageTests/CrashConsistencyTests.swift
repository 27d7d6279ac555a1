import DiskImage
import Foundation
import Testing
import VireoSupport

/// Kills a writer (`vireo disk crash-writer`) at random moments; afterwards `qemu-img check`
/// must find no corruption (leaks are allowed) and every write acknowledged by a completed
/// flush must read back.
@Suite(.enabled(if: TS.hasQemu && TS.hasVireo, "needs qemu-img and the vireo binary (swift build --product vireo)"))
struct CrashConsistencyTests {
    /// Mirror of `CrashWorkload` in Sources/VireoCLI/DiskCrashWriterCommand.swift.
    struct Workload {
        static let block = 4096
        enum Kind { case write, zero, discard }
        struct Op { var kind: Kind; var block: UInt64; var count: Int }
        var state: UInt64
        let blocks: UInt64
        init(seed: UInt64, diskSize: UInt64) { state = seed | 1; blocks = diskSize / UInt64(Self.block) }
        mutating func rand() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        mutating func next() -> Op {
            let r = rand() % 10
            if r < 2 {
                let b = (rand() % (blocks / 16)) * 16
                return Op(kind: r == 0 ? .zero : .discard, block: b, count: 16)
            }
            let n = Int(1 + rand() % 8)
            let b = rand() % (blocks - UInt64(n))
            return Op(kind: .write, block: b, count: n)
        }
        static func content(seq: UInt64, block: UInt64) -> [UInt8] {
            var out = [UInt8](repeating: UInt8(truncatingIfNeeded: seq &* 31 &+ block &* 7) | 1, count: block == UInt64.max ? 0 : Self.block)
            for i in 0..<8 { out[i] = UInt8(truncatingIfNeeded: seq >> UInt64(8 * i)); out[8 + i] = UInt8(truncatingIfNeeded: block >> UInt64(8 * i)) }
            return out
        }
    }

    struct Case: Sendable, CustomStringConvertible {
        var seed: UInt64; var clusterSize: UInt64; var lazy: Bool; var killAfterMs: Int
        var description: String { "seed \(seed) cluster \(clusterSize)\(lazy ? " lazy" : "") kill@\(killAfterMs)ms" }
    }

    static let cases: [Case] = [
        Case(seed: 1, clusterSize: 65536, lazy: false, killAfterMs: 150),
        Case(seed: 2, clusterSize: 65536, lazy: false, killAfterMs: 400),
        Case(seed: 3, clusterSize: 4096, lazy: false, killAfterMs: 250),
        Case(seed: 4, clusterSize: 512, lazy: false, killAfterMs: 300),
        Case(seed: 5, clusterSize: 2 << 20, lazy: false, killAfterMs: 350),
        Case(seed: 6, clusterSize: 65536, lazy: false, killAfterMs: 700),
        Case(seed: 7, clusterSize: 65536, lazy: true, killAfterMs: 300),
        Case(seed: 8, clusterSize: 4096, lazy: true, killAfterMs: 500),
    ]

    @Test(arguments: cases)
    func killedWriterLeavesConsistentImage(c: Case) throws {
        let dir = TS.tempDir()
        let path = dir + "/crash.qcow2"
        let size: UInt64 = 32 << 20
        let flushEvery = 8
        try Qcow2Image.create(path: path, size: size, options: Qcow2CreateOptions(clusterSize: c.clusterSize, lazyRefcounts: c.lazy))
        // Randomize the kill moment around the case's base time.
        let jitter = Int.random(in: 0...200)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: TS.vireo ?? "vireo")
        p.arguments = ["disk", "crash-writer", "--seed", String(c.seed), "--flush-every", String(flushEvery), path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Wait for the first acknowledged flush, then kill at a random later moment.
        var early = Data()
        while !String(decoding: early, as: UTF8.self).contains("F ") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            early.append(d)
        }
        usleep(UInt32((c.killAfterMs + jitter) * 1000))
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let text = String(decoding: early + out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(!text.contains("DONE"), "the writer was still running when killed")
        let flushed = text.split(separator: "\n").compactMap { $0.hasPrefix("F ") ? Int($0.dropFirst(2)) : nil }.last ?? 0
        #expect(flushed > 0, "some flushes completed before the kill (\(c))")

        if c.lazy {
            // Lazy refcounts: the image is dirty; opening it read-write repairs the refcounts (as QEMU does).
            let img = try Qcow2Image.open(path: path)
            try img.close()
        }
        try TS.qemuCheck(path, allowLeaks: true)

        // Expected state after op `flushed`; blocks touched by later ops may hold any of their values.
        var w = Workload(seed: c.seed, diskSize: size)
        // Acceptable contents per block (0 = zeros, else the seq of the write). A discard may drop
        // the data (whole clusters) or leave it (partial clusters), so it adds 0 to the set.
        var state = [Set<UInt64>](repeating: [0], count: Int(size) / Workload.block)
        var later: [Int: Set<UInt64>] = [:]
        for i in 1...(flushed + flushEvery) {
            let op = w.next()
            for k in 0..<op.count {
                let b = Int(op.block) + k
                let v: UInt64 = op.kind == .write ? UInt64(i) : 0
                if i <= flushed {
                    if op.kind == .discard { state[b].insert(0) } else { state[b] = [v] }
                } else {
                    later[b, default: []].insert(v)
                }
            }
        }
        let disk = try TS.qemuContents(path)
        #expect(disk.count == Int(size))
        var bad = 0
        for b in 0..<state.count {
            let got = disk[(b * Workload.block)..<((b + 1) * Workload.block)]
            func matches(_ v: UInt64) -> Bool {
                v == 0 ? got.allSatisfy { $0 == 0 } : got.elementsEqual(Workload.content(seq: v, block: UInt64(b)))
            }
            if state[b].contains(where: matches) { continue }
            if let l = later[b], l.contains(where: matches) { continue }
            bad += 1
            if bad <= 3 { Issue.record("block \(b): flushed content (one of ops \(state[b].sorted())) lost (\(c), flushed through op \(flushed))") }
        }
        #expect(bad == 0)

        // The crashed image stays usable: Vireo writes to it and closes cleanly.
        let img = try DiskImage.open(path: path)
        try TS.write(img, [UInt8](repeating: 0x42, count: 70000), at: 1_000_000)
        try img.close()
        try TS.qemuCheck(path, allowLeaks: true)
    }
}
