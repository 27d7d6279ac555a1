import Foundation
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The VMM's control socket takes `snapshot DIR` while the guest runs (it pauses, saves,
/// resumes); `vireo run --restore DIR` continues the machine; a damaged snapshot is refused
/// with one line and exit 1, before anything runs.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct SnapshotRunTests {
    static func control(_ socket: String, _ command: String) -> String {
        for _ in 0..<100 {
            let fd = socket_unix()
            defer { close(fd) }
            if UnixSocketAddress.with(socket, { connect(fd, $0, $1) }) == 0 {
                _ = (command + "\n").withCString { send(fd, $0, strlen($0), 0) }
                var out: [UInt8] = []
                var buf = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n <= 0 { break }
                    out += buf[0..<n]
                }
                return String(decoding: out, as: UTF8.self)
            }
            usleep(50_000)
        }
        return ""
    }

    static func socket_unix() -> Int32 { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) }

    @Test func snapshotThroughTheControlSocketAndRestore() throws {
        let dir = "/tmp/vireo-snaprun-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let bin = try #require(VireoBinary.path)
        let first = try ChildProcess([bin, "run", "--probe", "dirty:0", "--memory", "32M", "--serial", "none", "--api-socket", dir + "/a.sock"])
        let reply = Self.control(dir + "/a.sock", "snapshot \(dir)/snap")
        #expect(reply.contains(#""ok":true"#) && reply.contains(#""pages_written""#), "\(reply)")
        // The guest was resumed after the save.
        #expect(Self.control(dir + "/a.sock", "status").contains(#""state":"running""#))
        _ = Self.control(dir + "/a.sock", "stop")
        #expect(first.wait() == 143)

        // The snapshot records the CPU features its guest was offered.
        let saved = try SnapshotFile.decode(try OwnedFD.readFile(dir + "/snap/state.vsnap", limit: 1 << 26, what: "state"), source: "snap")
        #expect(saved.cpuFeatures?["1.edx"].map { $0 & (1 << 26) != 0 } == true, "no SSE2 among the saved CPU features: \(String(describing: saved.cpuFeatures))")

        let restored = try ChildProcess([bin, "run", "--restore", dir + "/snap", "--serial", "none", "--api-socket", dir + "/b.sock"])
        let status = Self.control(dir + "/b.sock", "status")
        #expect(status.contains(#""state":"running""#), "\(status)")
        _ = Self.control(dir + "/b.sock", "stop")
        #expect(restored.wait() == 143)

        // --paused: restored, then held until `resume`.
        let held = try ChildProcess([bin, "run", "--restore", dir + "/snap", "--paused", "--serial", "none", "--api-socket", dir + "/c.sock"])
        let p1 = Self.control(dir + "/c.sock", "status")
        usleep(200_000)
        let p2 = Self.control(dir + "/c.sock", "status")
        func exits(_ s: String) -> Int {
            guard let r = s.firstRange(of: #""pio_exits":"#) else { return -1 }
            return Int(s[r.upperBound...].prefix(while: \.isNumber)) ?? -1
        }
        #expect(p1.contains(#""state":"paused""#) && exits(p1) == exits(p2), "a --paused restore ran: \(p1) then \(p2)")
        #expect(Self.control(dir + "/c.sock", "resume").contains(#""ok":true"#))
        var p3 = Self.control(dir + "/c.sock", "status")
        for _ in 0..<40 where exits(p3) <= exits(p2) { usleep(50_000); p3 = Self.control(dir + "/c.sock", "status") }
        #expect(p3.contains(#""state":"running""#) && exits(p3) > exits(p2), "resume did not start it: \(p3)")
        _ = Self.control(dir + "/c.sock", "stop")
        #expect(held.wait() == 143)
        let (s0, _, err0) = try VireoBinary.run(["run", "--restore", dir + "/snap", "--paused"])
        #expect(s0 != 0 && err0.contains("--api-socket"), "\(err0)")

        // Damaged: the VMM says why and runs nothing.
        let state = dir + "/snap/state.vsnap"
        var bytes = try OwnedFD.readFile(state, limit: 1 << 26, what: "state")
        bytes[bytes.count - 3] ^= 1
        FileManager.default.createFile(atPath: state, contents: Data(bytes))
        let (s, _, err) = try VireoBinary.run(["run", "--restore", dir + "/snap", "--serial", "none"])
        #expect(s == 1 && err.contains("CRC-32") && !err.contains("Fatal"), "\(err)")
        let (s2, _, err2) = try VireoBinary.run(["run", "--restore", dir + "/snap", "--cpus", "2"])
        #expect(s2 != 0 && err2.contains("leave out --cpus"), "\(err2)")
    }
}
