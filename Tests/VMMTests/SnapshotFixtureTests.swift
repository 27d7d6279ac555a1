import Foundation
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The compatibility promise of docs/snapshots.md: a snapshot written by a release restores in
/// the next. `Fixtures/snapshot-v1-probe` was written by vireo 0.1 (format 1: a 1-vCPU, 4 MiB
/// probe machine in a `pio` loop, taken with the control socket's `snapshot DIR`); every
/// later build must read it and run it on, and must leave the files untouched (the memory file
/// is mapped copy-on-write). A reader change that breaks this fails here, not at a user's.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct SnapshotFixtureTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/snapshot-v1-probe").path

    @Test func theVersion1FixtureStillDecodes() throws {
        let path = Self.fixture + "/state.vsnap"
        let bytes = try OwnedFD.readFile(path, limit: 1 << 26, what: "fixture")
        let s = try SnapshotFile.decode(bytes, source: path)
        #expect(s.format == 1 && s.cpus == 1 && s.vcpus.count == 1)
        #expect(s.boot == "probe:pio:4000000000")
        #expect(s.memory.reduce(0) { $0 + $1.size } == 4 << 20)
        #expect(s.writer.hasPrefix("vireo "))
    }

    @Test func theVersion1FixtureRestoresAndRunsOn() throws {
        let bin = try #require(VireoBinary.path)
        let dir = "/tmp/vireo-fixture-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let before = try ["state.vsnap", "memory.bin"].map { try Data(contentsOf: URL(fileURLWithPath: Self.fixture + "/" + $0)) }
        let restored = try ChildProcess([bin, "run", "--restore", Self.fixture, "--serial", "none", "--api-socket", dir + "/r.sock"])
        let first = SnapshotRunTests.control(dir + "/r.sock", "status")
        #expect(first.contains(#""state":"running""#), "\(first)")
        usleep(200_000)
        let second = SnapshotRunTests.control(dir + "/r.sock", "status")
        func exits(_ s: String) -> Int {
            guard let r = s.firstRange(of: #""pio_exits":"#) else { return -1 }
            return Int(s[r.upperBound...].prefix(while: \.isNumber)) ?? -1
        }
        #expect(exits(second) > exits(first) && exits(first) >= 0, "the restored guest does not run on: \(first) then \(second)")
        _ = SnapshotRunTests.control(dir + "/r.sock", "stop")
        #expect(restored.wait() == 143)
        let after = try ["state.vsnap", "memory.bin"].map { try Data(contentsOf: URL(fileURLWithPath: Self.fixture + "/" + $0)) }
        #expect(after == before, "restoring changed the fixture's files")
    }
}
