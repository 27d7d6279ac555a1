import Foundation
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot file is untrusted input (it may come from another host, a migration stream or a
/// user): whatever its state says, `vireo run --restore` either refuses it with an error or
/// runs a machine; it never traps or crashes. The CRC only catches accidents, so these cases
/// are well-formed envelopes (CRC recomputed) around a body mutated field by field: numbers set
/// to 0, -1, huge and past 64 bits, arrays emptied, cut or grown, strings emptied or made huge,
/// keys removed, plus hand-picked cases on the memory layout and vCPU count. Deterministic: the
/// same seed gives the same cases, and a failure names the mutation.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct SnapshotHostileTests {
    static let fixture = SnapshotFixtureTests.fixture

    /// One change to the JSON body: a path of keys / indices and what to do there.
    struct Mutation: CustomStringConvertible {
        var path: [String]
        var action: String
        var apply: (Any) -> Any?   // nil: remove the key / element
        var description: String { "\(path.joined(separator: ".")) \(action)" }
    }

    /// Every leaf, array and object of `value`, with its path.
    static func paths(_ value: Any, _ prefix: [String] = [], into out: inout [([String], Any)]) {
        out.append((prefix, value))
        if let d = value as? [String: Any] {
            for k in d.keys.sorted() { paths(d[k] as Any, prefix + [k], into: &out) }
        } else if let a = value as? [Any] {
            for (i, v) in a.enumerated() { paths(v, prefix + ["\(i)"], into: &out) }
        }
    }

    static func replacing(_ root: Any, at path: [String], with f: (Any) -> Any?) -> Any {
        guard let head = path.first else { return f(root) ?? NSNull() }
        let rest = Array(path.dropFirst())
        if var d = root as? [String: Any], let child = d[head] {
            if rest.isEmpty, f(child) == nil { d.removeValue(forKey: head); return d }
            d[head] = replacing(child, at: rest, with: f)
            return d
        }
        if var a = root as? [Any], let i = Int(head), a.indices.contains(i) {
            if rest.isEmpty, f(a[i]) == nil { a.remove(at: i); return a }
            a[i] = replacing(a[i], at: rest, with: f)
            return a
        }
        return root
    }

    static func mutations(of body: Any, count: Int, seed: UInt64) -> [Mutation] {
        var all: [([String], Any)] = []
        paths(body, into: &all)
        var rng = SplitMix(seed: seed)
        var out: [Mutation] = []
        let numbers: [(String, Any)] = [("= 0", 0), ("= -1", -1), ("= 2^62", Int64(1) << 62),
                                        ("= 2^64 (past UInt64)", 18446744073709551616.0), ("= 4097", 4097)]
        while out.count < count, !all.isEmpty {
            let (path, value) = all[Int(rng.next() % UInt64(all.count))]
            guard !path.isEmpty else { continue }
            if value is NSNumber {
                let (name, v) = numbers[Int(rng.next() % UInt64(numbers.count))]
                out.append(Mutation(path: path, action: name, apply: { _ in v }))
            } else if let s = value as? String {
                if rng.next() % 2 == 0 {
                    out.append(Mutation(path: path, action: "= \"\"", apply: { _ in "" }))
                } else {
                    out.append(Mutation(path: path, action: "= 64 KiB string", apply: { _ in String(repeating: "A", count: 65536) }))
                }
                _ = s
            } else if let a = value as? [Any] {
                switch rng.next() % 3 {
                case 0: out.append(Mutation(path: path, action: "emptied", apply: { _ in [Any]() }))
                case 1: out.append(Mutation(path: path, action: "last element cut", apply: { _ in Array(a.dropLast()) }))
                default: out.append(Mutation(path: path, action: "grown x3", apply: { _ in a + a + a }))
                }
            } else if value is [String: Any] {
                out.append(Mutation(path: path, action: "removed", apply: { _ in nil }))
            }
        }
        return out
    }

    /// Writes a snapshot directory holding `body` in a valid envelope and the fixture's memory.
    static func writeCase(_ body: [UInt8], into dir: String) throws {
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        var out = SnapshotFile.magic
        for v in [UInt32(1), UInt32(body.count), CRC32.checksum(body[...]), 0] {
            out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)]
        }
        try Data(out + body).write(to: URL(fileURLWithPath: dir + "/state.vsnap"))
        symlink(fixture + "/memory.bin", dir + "/memory.bin")
    }

    enum Outcome: Equatable { case refused(String), ran, died(Int32) }

    /// Restores `dir`: refused (exit 1 with a message), ran (its control socket reports the
    /// machine running, or it still runs after 400 ms; then killed) or died (any other end: a
    /// trap, a crash, an exit without a message).
    static func restore(_ dir: String) throws -> Outcome {
        let bin = try #require(VireoBinary.path)
        let child = try ChildProcess([bin, "run", "--restore", dir, "--serial", "none", "--api-socket", dir + "/r.sock"])
        for _ in 0..<40 {
            var st: Int32 = 0
            if waitpid(child.pid, &st, WNOHANG) == child.pid {
                var err = ""
                while let l = ChildProcess.readLine(child.stderr) { err += l + "\n" }
                let exited = st & 0x7F == 0
                let code = (st >> 8) & 0xFF
                if exited, code == 1, err.contains("vireo:") { return .refused(err) }
                return .died(exited ? code : 128 + (st & 0x7F))
            }
            if access(dir + "/r.sock", F_OK) == 0, SnapshotRunTests.control(dir + "/r.sock", "status").contains(#""state":"running""#) {
                break
            }
            usleep(10_000)
        }
        child.signal(SIGKILL)
        _ = child.wait()
        return .ran
    }

    @Test func mutatedStateFilesAreRefusedOrRunNeverCrash() throws {
        let path = Self.fixture + "/state.vsnap"
        let bytes = try OwnedFD.readFile(path, limit: 1 << 26, what: "fixture")
        let body = try JSONSerialization.jsonObject(with: Data(bytes[SnapshotFile.headerSize...]), options: [.fragmentsAllowed])
        var cases = Self.mutations(of: body, count: 120, seed: 0x5EED_0011)
        // Hand-picked: the memory layout and the vCPU count against the memory file and the states.
        cases.append(Mutation(path: ["memory", "0", "size"], action: "= 2x the memory file", apply: { _ in 8 << 20 }))
        cases.append(Mutation(path: ["memory", "0", "size"], action: "= 1 TiB", apply: { _ in Int64(1) << 40 }))
        cases.append(Mutation(path: ["memory", "0", "guest_base"], action: "= 0xFFFFF000", apply: { _ in 0xFFFF_F000 }))
        cases.append(Mutation(path: ["memory"], action: "emptied", apply: { _ in [Any]() }))
        cases.append(Mutation(path: ["cpus"], action: "= 254 (one vCPU state)", apply: { _ in 254 }))
        cases.append(Mutation(path: ["boot"], action: "= probe:nonsense", apply: { _ in "probe:nonsense" }))
        cases.append(Mutation(path: ["boot"], action: "= linux (a probe's state)", apply: { _ in "linux" }))
        let dir = "/tmp/vireo-hostile-snap-\(getpid())"
        defer { _ = system("rm -rf \(dir)") }
        let memoryBefore = try Data(contentsOf: URL(fileURLWithPath: Self.fixture + "/memory.bin"))
        var refused = 0, ran = 0
        var deaths: [String] = []
        for m in cases {
            let mutated = Self.replacing(body, at: m.path, with: m.apply)
            let data = try JSONSerialization.data(withJSONObject: mutated, options: [.fragmentsAllowed])
            try Self.writeCase(Array(data), into: dir)
            switch try Self.restore(dir) {
            case .refused: refused += 1
            case .ran: ran += 1
            case .died(let code): deaths.append("\(m): exit \(code)")
            }
        }
        print("hostile snapshot bodies: \(cases.count) cases, \(refused) refused with an error, \(ran) restored and ran, \(deaths.count) crashed")
        #expect(deaths.isEmpty, "restores that ended without a clean error: \(deaths)")
        #expect(refused > cases.count / 3, "too few refusals (\(refused)): the cases no longer reach the checks")
        let memoryAfter = try Data(contentsOf: URL(fileURLWithPath: Self.fixture + "/memory.bin"))
        #expect(memoryAfter == memoryBefore, "a hostile restore changed the fixture's memory file")
    }

    /// A snapshot whose guest saw CPU features this host lacks is refused before any vCPU
    /// runs, naming them; one without the field (format 1 before it) restores as before.
    @Test func aSnapshotFromACPUWithMoreFeaturesIsRefused() throws {
        let bytes = try OwnedFD.readFile(Self.fixture + "/state.vsnap", limit: 1 << 26, what: "fixture")
        let body = try JSONSerialization.jsonObject(with: Data(bytes[SnapshotFile.headerSize...]), options: [.fragmentsAllowed])
        let dir = "/tmp/vireo-cpufeat-snap-\(getpid())"
        defer { _ = system("rm -rf \(dir)") }
        var b = try #require(body as? [String: Any])
        b["cpu_features"] = ["7.0.ebx": 0xFFFF_FFFF, "1.ecx": 0]
        try Self.writeCase(Array(try JSONSerialization.data(withJSONObject: b)), into: dir)
        let outcome = try Self.restore(dir)
        guard case .refused(let err) = outcome else { Issue.record("\(outcome), not refused"); return }
        #expect(err.contains("features this host's KVM does not offer") && err.contains("7.0.ebx bit"), "\(err)")
        b["cpu_features"] = ["7.0.ebx": 0]
        try Self.writeCase(Array(try JSONSerialization.data(withJSONObject: b)), into: dir)
        #expect(try Self.restore(dir) == .ran, "features the host has (none asked) must not refuse")
    }

    /// Envelope damage: every header field and a flipped body byte.
    @Test func damagedEnvelopesAreRefused() throws {
        let bytes = try OwnedFD.readFile(Self.fixture + "/state.vsnap", limit: 1 << 26, what: "fixture")
        var cases: [(String, [UInt8])] = []
        cases.append(("empty file", []))
        cases.append(("header only", Array(bytes[..<SnapshotFile.headerSize])))
        cases.append(("cut in the body", Array(bytes.dropLast(100))))
        var v = bytes; v[8] = 9; cases.append(("format 9", v))
        var l = bytes; l[15] = 0x7F; cases.append(("length 2 GiB", l))
        var c = bytes; c[SnapshotFile.headerSize + 10] ^= 0x20; cases.append(("a body byte flipped (CRC kept)", c))
        var m = bytes; m[0] = UInt8(ascii: "X"); cases.append(("bad magic", m))
        let dir = "/tmp/vireo-hostile-env-\(getpid())"
        defer { _ = system("rm -rf \(dir)") }
        for (name, b) in cases {
            _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
            try Data(b).write(to: URL(fileURLWithPath: dir + "/state.vsnap"))
            symlink(Self.fixture + "/memory.bin", dir + "/memory.bin")
            let outcome = try Self.restore(dir)
            guard case .refused(let err) = outcome else {
                Issue.record("\(name): \(outcome), not refused"); continue
            }
            #expect(err.contains("snapshot") || err.contains("Vireo"), "\(name): \(err)")
        }
    }
}
