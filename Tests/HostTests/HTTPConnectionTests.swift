import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The HTTP layer's connection handling against a real daemon.
@Suite(.enabled(if: VireoBinary.path != nil))
struct HTTPConnectionTests {
    /// `Connection: close` with a big body and a client that reads late and slowly: the daemon
    /// must not close the connection before the socket took the whole body (a full close drops
    /// what is still queued).
    @Test func aSlowReaderOfAClosingResponseGetsTheWholeBody() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("big")
        let size = 1 << 20
        mkdir(d.dataDir + "/vms/big", 0o755)
        var log = [UInt8](repeating: 0x61, count: size)
        for i in stride(from: 99, to: size, by: 100) { log[i] = 10 }
        try Data(log).write(to: URL(fileURLWithPath: d.dataDir + "/vms/big/console.log"))

        let fd = try d.rawConnect(sending: "GET /v1/vms/big/console HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", receiveBuffer: 4096)
        defer { close(fd) }
        usleep(1_000_000)   // the daemon has long finished writing; most of the body is still queued
        let raw = TestDaemon.readAll(fd)
        let split = try #require(raw.firstRange(of: Array("\r\n\r\n".utf8)), "no response head")
        let head = String(decoding: raw[..<split.lowerBound], as: UTF8.self)
        #expect(head.hasPrefix("HTTP/1.1 200"), "\(head)")
        #expect(head.lowercased().contains("content-length: \(size)"), "\(head)")
        #expect(raw.count - split.upperBound == size, "got \(raw.count - split.upperBound) of \(size) body bytes")
    }
}
