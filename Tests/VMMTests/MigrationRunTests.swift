import Foundation
import Testing
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Live migration between two VMM processes on this host's KVM, with probe guests: the source's
/// control socket takes `migrate unix:PATH`, the destination (`vireo run --incoming`) restores
/// the machine and runs it, the source ends with status 0 and a summary. A guest that dirties
/// memory faster than the downtime allows does not converge, and `migrate-cancel` stops a
/// migration: both leave the VM running at the source. A destination fed garbage says why, with
/// one line, and runs nothing.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct MigrationRunTests {
    func status(_ socket: String, until phase: (String) -> Bool, seconds: Int = 60) -> String {
        var last = ""
        for _ in 0..<(seconds * 10) {
            last = SnapshotRunTests.control(socket, "migrate-status")
            if phase(last) { return last }
            usleep(100_000)
        }
        return last
    }

    @Test func aQuietGuestMovesAndTheSourceEnds() throws {
        let dir = "/tmp/vireo-migrun-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let bin = try #require(VireoBinary.path)
        let source = try ChildProcess([bin, "run", "--probe", "pio:1000000000000", "--memory", "64M", "--serial", "none", "--api-socket", dir + "/s.sock"])
        let destination = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/mig.sock", "--serial", "none", "--api-socket", dir + "/d.sock"])
        for _ in 0..<100 where access(dir + "/mig.sock", F_OK) != 0 { usleep(50_000) }
        guard access(dir + "/mig.sock", F_OK) == 0 else {
            Issue.record("the destination did not listen: \(destination.wait()) \(destination.stderrText)")
            source.signal(SIGKILL); _ = source.wait()
            return
        }
        let reply = SnapshotRunTests.control(dir + "/s.sock", "migrate unix:\(dir)/mig.sock downtime-ms=2000")
        #expect(reply.contains(#""ok":true"#), "\(reply)")
        let end = status(dir + "/s.sock", until: { $0.isEmpty || $0.contains(#""phase":"failed""#) })
        guard end.isEmpty else {
            Issue.record("the migration failed: \(end)")
            source.signal(SIGKILL); destination.signal(SIGKILL); _ = source.wait(); _ = destination.wait()
            return
        }
        #expect(source.wait() == 0)
        let err = source.stderrText
        #expect(err.contains("migrated to unix:\(dir)/mig.sock") && err.contains("the guest paused"), "\(err)")
        let st = SnapshotRunTests.control(dir + "/d.sock", "status")
        #expect(st.contains(#""state":"running""#), "\(st)")
        _ = SnapshotRunTests.control(dir + "/d.sock", "stop")
        #expect(destination.wait() == 143)
    }

    /// A destination started with a token accepts only the source that presents it; a wrong
    /// one is refused before any page, and the source runs on.
    @Test func aDestinationWithATokenRefusesAnyOtherSource() throws {
        let dir = "/tmp/vireo-migtok-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let bin = try #require(VireoBinary.path)
        _ = system("printf 'right-token-0123456789\\n' > \(dir)/tok")
        let source = try ChildProcess([bin, "run", "--probe", "pio:1000000000000", "--memory", "32M", "--serial", "none", "--api-socket", dir + "/s.sock"])
        defer { source.signal(SIGKILL); _ = source.wait() }
        for _ in 0..<100 where access(dir + "/s.sock", F_OK) != 0 { usleep(50_000) }
        let d1 = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/m1.sock", "--incoming-token-file", dir + "/tok", "--serial", "none"])
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:\(dir)/m1.sock token=wrong-token").contains(#""ok":true"#))
        let failed = status(dir + "/s.sock", until: { $0.contains(#""phase":"failed""#) })
        #expect(failed.contains("failed"), "\(failed)")
        #expect(d1.wait() == 1)
        #expect(d1.stderrText.contains("did not present this migration's token"), "\(d1.stderrText)")
        #expect(SnapshotRunTests.control(dir + "/s.sock", "status").contains(#""state":"running""#))
        let d2 = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/m2.sock", "--incoming-token-file", dir + "/tok", "--serial", "none", "--api-socket", dir + "/d.sock"])
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:\(dir)/m2.sock token=right-token-0123456789 downtime-ms=2000").contains(#""ok":true"#))
        let end = status(dir + "/s.sock", until: { $0.isEmpty || $0.contains(#""phase":"failed""#) })
        #expect(end.isEmpty, "\(end)")
        #expect(source.wait() == 0)
        #expect(SnapshotRunTests.control(dir + "/d.sock", "status").contains(#""state":"running""#))
        _ = SnapshotRunTests.control(dir + "/d.sock", "stop")
        #expect(d2.wait() == 143)
    }

    @Test func aGuestThatDirtiesTooFastDoesNotConvergeAndCancelStops() throws {
        let dir = "/tmp/vireo-migrun2-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let bin = try #require(VireoBinary.path)
        let source = try ChildProcess([bin, "run", "--probe", "dirty:0", "--memory", "16M", "--serial", "none", "--api-socket", dir + "/s.sock"])
        // 1: never converges (the whole RAM rewritten faster than a 16 MiB/s link carries it, 1 ms allowed).
        let d1 = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/m1.sock", "--serial", "none"])
        for _ in 0..<100 where access(dir + "/m1.sock", F_OK) != 0 { usleep(50_000) }
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:\(dir)/m1.sock downtime-ms=1 max-bandwidth-mib=16").contains(#""ok":true"#))
        let failed = status(dir + "/s.sock", until: { $0.contains(#""phase":"failed""#) || $0.contains(#""phase":"completed""#) }, seconds: 120)
        #expect(failed.contains(#""phase":"failed""#) && failed.contains("did not converge"), "\(failed)")
        #expect(d1.wait() == 1)
        let d1err = d1.stderrText
        #expect(d1err.contains("closed the migration connection") || d1err.contains("broke"), "\(d1err)")
        #expect(SnapshotRunTests.control(dir + "/s.sock", "status").contains(#""state":"running""#))
        // 2: cancelled while it runs.
        let d2 = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/m2.sock", "--serial", "none"])
        for _ in 0..<100 where access(dir + "/m2.sock", F_OK) != 0 { usleep(50_000) }
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:\(dir)/m2.sock downtime-ms=1 max-bandwidth-mib=4").contains(#""ok":true"#))
        usleep(1_000_000)
        let cancel = SnapshotRunTests.control(dir + "/s.sock", "migrate-cancel")
        let ended = status(dir + "/s.sock", until: { !$0.contains(#""phase":"precopy""#) && !$0.contains(#""phase":"setup""#) })
        #expect((cancel.contains(#""ok":true"#) && ended.contains(#""phase":"cancelled""#)) || ended.contains(#""phase":"failed""#), "\(cancel) \(ended)")
        #expect(d2.wait() == 1)
        #expect(SnapshotRunTests.control(dir + "/s.sock", "status").contains(#""state":"running""#))
        // A second migration while one runs, and bad arguments, are refused.
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate ftp:x").contains("neither tcp:HOST:PORT nor unix:PATH"))
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:/tmp/x.sock speed=9").contains("unknown option"))
        #expect(SnapshotRunTests.control(dir + "/s.sock", "migrate unix:/nonexistent/x.sock").contains(#""ok":true"#))
        let refused = status(dir + "/s.sock", until: { $0.contains(#""phase":"failed""#) })
        #expect(refused.contains("cannot connect to the destination"), "\(refused)")
        _ = SnapshotRunTests.control(dir + "/s.sock", "stop")
        #expect(source.wait() == 143)
    }

    @Test func aDestinationFedGarbageSaysWhyAndRunsNothing() throws {
        let dir = "/tmp/vireo-migrun3-\(getpid())"
        _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let bin = try #require(VireoBinary.path)
        func feed(_ bytes: [UInt8]) throws -> (Int32, String) {
            let d = try ChildProcess([bin, "run", "--incoming", "unix:\(dir)/g.sock", "--serial", "none"])
            for _ in 0..<100 where access(dir + "/g.sock", F_OK) != 0 { usleep(50_000) }
            let fd = SnapshotRunTests.socket_unix()
            _ = UnixSocketAddress.with(dir + "/g.sock") { connect(fd, $0, $1) }
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(fd)
            return (d.wait(), d.stderrText)
        }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
        func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        // Version 2: flags, token, regions, disks.
        let head = Array("VIREOMIG".utf8) + le32(2)
        let hello = head + le32(0) + le32(0) + le32(1) + le64(0) + le64(64 << 20) + le32(0)
        let cases: [([UInt8], String)] = [
            (Array("GET / HTTP/1.0\r\n\r\n".utf8), "not a Vireo VMM"),
            (Array("VIREOMIG".utf8) + le32(99) + le32(0) + le32(0), "stream version 99"),
            (head + le32(0) + le32(0) + le32(1000), "memory regions"),
            (head + le32(0) + le32(0) + le32(1) + le64(0) + le64(1 << 62) + le32(0), "memory"),
            (head + le32(8) + le32(0), "unknown options"),
            (head + le32(0) + le32(100_000), "a token of 100000 bytes"),
            (head + le32(0) + le32(0) + le32(1) + le64(0) + le64(64 << 20) + le32(1000), "1000 disks"),
            (head + le32(0) + le32(0) + le32(1) + le64(0) + le64(64 << 20) + le32(1) + le64(1 << 20), "disk sizes without a storage copy"),
            (head + le32(1) + le32(0) + le32(1) + le64(0) + le64(64 << 20) + le32(1) + le64(1 << 20), "this VMM was given none to receive them"),
            (hello + [1] + le64(64 << 20) + le32(1), "outside guest RAM"),
            (hello + [1] + le64(0) + le32(100_000), "page message"),
            (hello + [2] + le64(4096 * 3 + 1) + le32(1), "zero-page message"),
            (hello + [7] + le32(0) + le64(0) + le32(512), "outside the disks received"),
            (hello + [3] + le32(30) + [UInt8](repeating: 0, count: 30), "snapshot"),
            (hello + [9], "unknown message kind 9"),
            (hello + [1] + le64(0) + le32(1) + [1, 2, 3], "closed the migration connection"),
        ]
        for (bytes, expected) in cases {
            let (s, err) = try feed(bytes)
            #expect(s == 1 && err.contains(expected) && !err.contains("Fatal"), "expected '\(expected)': \(s) \(err)")
            #expect(err.split(separator: "\n").count <= 3, "\(err)")
        }
    }
}

extension ChildProcess {
    /// What the process wrote to stderr (read to its end: call once, after it exited).
    var stderrText: String {
        var s = ""
        while let l = ChildProcess.readLine(stderr) { s += l + "\n" }
        return s
    }
}
