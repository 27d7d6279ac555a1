import DiskImage
import Foundation
import Testing
import VireoSupport

/// Mutation fuzzing of the header and table parsers, and replay of the kept corpus
/// (Tests/DiskImageTests/Corpus). Every outcome must be success or a VireoError: a crash
/// kills the test process, which fails the run.
///
/// VIREO_FUZZ_ITERATIONS sets mutations per seed (default 150); VIREO_FUZZ_SAVE=DIR keeps
/// one mutated file per distinct error message there (that is how the corpus was grown).
@Suite struct FuzzCorpusTests {
    static let corpusDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus").path

    static func corpusFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: corpusDir)) ?? []).sorted()
            .filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") }.map { corpusDir + "/" + $0 }
    }

    /// Opens, reads, maps and checks an image, then (for qcow2) writes to a copy of it.
    /// Returns the error text, or nil when the image was accepted.
    @discardableResult
    static func exercise(_ path: String) -> String? {
        var firstError: String?
        func note(_ e: Error) {
            if firstError == nil { firstError = (e as? VireoError)?.message ?? "non-VireoError: \(e)" }
            if !(e is VireoError) { Issue.record("\(path): non-VireoError \(e)") }
        }
        do {
            let img = try DiskImage.open(path: path, readOnly: true, options: OpenOptions(readOnly: true, backingPolicy: .confined))
            defer { try? img.close() }
            let size = img.virtualSize
            var buf = [UInt8](repeating: 0, count: 65536)
            for off in [0, size / 3, size / 2, size &- 65536, size &- 1] where off < size {
                let n = Int(min(UInt64(buf.count), size - off))
                do { try buf.withUnsafeMutableBytes { p in try img.read(into: UnsafeMutableRawBufferPointer(rebasing: p[0..<n]), at: off) } } catch { note(error) }
            }
            var off: UInt64 = 0
            for _ in 0..<256 where off < size {
                do {
                    let st = try img.blockStatus(at: off, maxLength: size - off)
                    if st.length == 0 { break }
                    off += st.length
                } catch { note(error); break }
            }
            if let q = img as? Qcow2Image {
                do { _ = try q.check() } catch { note(error) }
            }
        } catch { note(error) }
        // Write path on a copy.
        if (try? DiskImage.probe(path: path)) == .qcow2 {
            let copy = path + ".rw"
            try? FileManager.default.removeItem(atPath: copy)
            if (try? FileManager.default.copyItem(atPath: path, toPath: copy)) != nil {
                do {
                    let img = try DiskImage.open(path: copy, options: OpenOptions(backingPolicy: .forbidden))
                    let size = img.virtualSize
                    let data = [UInt8](repeating: 0x5a, count: 4096)
                    for off in [0, size / 2, size &- 4096] where off <= size &- 4096 && size >= 4096 {
                        do { try TS.write(img, data, at: off) } catch { note(error) }
                    }
                    do { try img.discard(offset: 0, length: min(size, 1 << 20)) } catch { note(error) }
                    do { try img.close() } catch { note(error) }
                } catch { note(error) }
                try? FileManager.default.removeItem(atPath: copy)
            }
        }
        return firstError
    }

    /// Seeds: small qcow2 images made here (512-byte and 64 KiB clusters, snapshot, compressed and
    /// zero clusters, backing name) plus the committed corpus (which holds qemu-made VMDK/VHD seeds).
    static func makeSeeds(_ dir: String) throws -> [String] {
        var seeds: [String] = []
        for cs in [512, 65536] as [UInt64] {
            let p = dir + "/seed-\(cs).qcow2"
            try Qcow2Image.create(path: p, size: 256 << 10, options: Qcow2CreateOptions(clusterSize: cs))
            let img = try Qcow2Image.open(path: p)
            try TS.write(img, TS.pattern(20_000, seed: cs), at: 3000)
            try img.createSnapshot(name: "snap")
            try img.writeZeroes(offset: 0, length: cs)
            var z = [UInt8](repeating: 7, count: Int(cs))
            z[0] = 1
            _ = try z.withUnsafeBytes { p in try img.writeCompressed(p, at: 128 << 10) }
            try img.close()
            seeds.append(p)
        }
        return seeds + corpusFiles().filter { $0.contains("seed") }
    }

    @Test func mutatedHeadersAndTablesNeverCrash() throws {
        let dir = TS.tempDir()
        let iterations = Int(ProcessInfo.processInfo.environment["VIREO_FUZZ_ITERATIONS"] ?? "") ?? 150
        let save = ProcessInfo.processInfo.environment["VIREO_FUZZ_SAVE"]
        var seen = Set<String>()
        var rng: UInt64 = 0x1234_5678_9abc_def1
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        var accepted = 0, refused = 0
        for seed in try Self.makeSeeds(dir) {
            let base = try TS.readFile(seed)
            guard !base.isEmpty else { continue }
            let ext = (seed as NSString).pathExtension
            for i in 0..<iterations {
                var b = base
                let span = min(b.count, next() % 4 == 0 ? b.count : 8192)
                for _ in 0..<(1 + Int(next() % 6)) {
                    let at = Int(next() % UInt64(span))
                    switch next() % 4 {
                    case 0: b[at] ^= UInt8(truncatingIfNeeded: 1 << (next() % 8))
                    case 1: b[at] = UInt8(truncatingIfNeeded: next())
                    case 2: for k in 0..<min(8, b.count - at) { b[at + k] = 0xff }   // extreme 8-byte field
                    default: for k in 0..<min(8, b.count - at) { b[at + k] = 0 }
                    }
                }
                if next() % 16 == 0 { b = Array(b[0..<Int(next() % UInt64(b.count))]) }   // truncation
                let p = dir + "/m\(i).\(ext)"
                try TS.writeFile(p, b)
                if let err = Self.exercise(p) {
                    refused += 1
                    let key = String(err.drop { $0 != ":" }.filter { !$0.isNumber }.prefix(60))
                    if let save, seen.insert(key).inserted {
                        try? FileManager.default.copyItem(atPath: p, toPath: save + "/\(ext)-\(seen.count).\(ext)")
                    }
                } else {
                    accepted += 1
                }
                try? FileManager.default.removeItem(atPath: p)
            }
        }
        // Both outcomes must occur: the fuzzer reaches past the first checks, and refuses damage.
        #expect(refused > 0 && accepted > 0, "accepted \(accepted), refused \(refused)")
    }

    @Test func corpusReplays() throws {
        let files = Self.corpusFiles()
        #expect(files.count >= 10, "corpus present in \(Self.corpusDir)")
        let dir = TS.tempDir()
        for f in files {
            let p = dir + "/" + (f as NSString).lastPathComponent
            try FileManager.default.copyItem(atPath: f, toPath: p)
            Self.exercise(p)
        }
    }
}
