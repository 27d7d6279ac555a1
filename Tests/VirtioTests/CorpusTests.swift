import Glibc
import GuestMemory
import Testing
import Virtio

/// Replays the malformed (and a few valid) queue states in Corpus/*.vq.
///
/// Format, one directive per line (`#` comments; numbers decimal or 0x-hex):
///   size N                         queue size (power of two)
///   indirect 0|1                   VIRTIO_F_INDIRECT_DESC negotiated (default 1)
///   desc I ADDR LEN FLAGS NEXT     descriptor I of the queue's table
///   table BASE I ADDR LEN FLAGS NEXT   entry I of an indirect table at BASE
///   publish HEAD                   make HEAD available (bumps avail.idx)
///   availidx N                     force avail.idx
///   expect error CASE | expect chain NSEGMENTS
@Suite struct CorpusTests {
    static let directory: String = {
        var parts = String(#filePath).split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast()
        return parts.joined(separator: "/") + "/Corpus"
    }()

    static func files() -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".vq") { names.append(name) }
        }
        return names.sorted()
    }

    static func readText(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func num(_ s: Substring) -> UInt64? {
        s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s)
    }

    @Test func corpusIsPresent() {
        #expect(Self.files().count >= 15)
    }

    @Test(arguments: CorpusTests.files())
    func replay(_ name: String) throws {
        let text = try #require(Self.readText(Self.directory + "/" + name))
        let m = try makeMemory()
        var size: UInt16 = 8
        var indirect = true
        var steps: [[Substring]] = []
        var expectation: [Substring] = []
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ").filter { !$0.isEmpty }
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            switch first {
            case "size": size = UInt16(try #require(Self.num(words[1])))
            case "indirect": indirect = words[1] == "1"
            case "expect": expectation = Array(words.dropFirst())
            default: steps.append(words)
            }
        }
        var r = try DriverRing(memory: m, size: size, base: 0x1000)
        for w in steps {
            let n = try w.dropFirst().map { try #require(Self.num($0), "bad number in \(name)") }
            switch w[0] {
            case "desc": try r.setDescriptor(UInt16(n[0]), address: n[1], length: UInt32(n[2]), flags: UInt16(n[3]), next: UInt16(n[4]))
            case "table": try DriverRing.writeDescriptor(m, at: n[0] + 16 * n[1], address: n[2], length: UInt32(n[3]), flags: UInt16(n[4]), next: UInt16(n[5]))
            case "publish": try r.publish(UInt16(truncatingIfNeeded: n[0]))
            case "availidx": try r.setAvailIndex(UInt16(truncatingIfNeeded: n[0]))
            default: Issue.record("unknown directive \(w[0]) in \(name)")
            }
        }
        let q = try r.makeQueue(indirect: indirect)
        let result = Result { try q.popAvailableChain() }
        switch (expectation.first, result) {
        case ("error", .failure(let e)):
            let error = try #require(e as? VirtqueueError)
            #expect(error.caseName == String(expectation[1]), "\(name): got \(error)")
        case ("chain", .success(let c)):
            #expect(c?.segments.count == Int(try #require(Self.num(expectation[1]))), "\(name)")
        default:
            Issue.record("\(name): expected \(expectation), got \(result)")
        }
    }
}
