import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `GET /v1/vms/{name}/console/attach` through the real daemon, to a real VMM running the
/// probe guest's COM1 echo (a-z uppercased): the bytes come back only if they went
/// websocket -> daemon -> VMM console socket -> UART -> guest -> UART -> back.
@Suite(.serialized, .timeLimit(.minutes(3)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct ConsoleAttachTests {
    /// Data frames until `count` bytes arrived (or the timeout); other events are returned too.
    func read(_ ws: WebSocketClient, count: Int, timeoutMs: Int32 = 10_000) throws -> (String, [WebSocketClient.Event]) {
        var bytes: [UInt8] = []
        var other: [WebSocketClient.Event] = []
        while bytes.count < count, let e = try ws.receive(timeoutMs: timeoutMs) {
            if case let .data(d) = e { bytes += d } else { other.append(e); if case .close = e { break } }
        }
        return (String(decoding: bytes, as: UTF8.self), other)
    }

    @Test func attachTypesIntoTheGuestAndSeesItsOutput() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("echo-1", workload: "echo", memory: 16)
        #expect(try d.action("echo-1", "start").status == 200)
        let ws = try WebSocketClient.connect(d.client, path: "/v1/vms/echo-1/console/attach")
        let other = try WebSocketClient.connect(d.client, path: "/v1/vms/echo-1/console/attach")
        usleep(200_000)
        try ws.send(Array("attach me".utf8))
        #expect(try read(ws, count: 9).0 == "ATTACH ME")
        #expect(try read(other, count: 9).0 == "ATTACH ME", "a second websocket sees the same console")

        try ws.ping(Array("p1".utf8))
        var pong: [UInt8]?
        while pong == nil, let e = try ws.receive(timeoutMs: 5000) { if case let .pong(p) = e { pong = p } }
        #expect(pong == Array("p1".utf8), "pings are answered")

        // The log (the polling API) has the same bytes.
        let log = try d.req("GET", "/v1/vms/echo-1/console")
        #expect(log.text.contains("ATTACH ME"))

        // The VM stops: the websocket gets a close frame saying so.
        #expect(try d.action("echo-1", "stop").status == 200)
        let (_, events) = try read(ws, count: Int.max, timeoutMs: 15_000)
        guard case let .close(code, reason)? = events.last else {
            Issue.record("no close frame after the VM stopped: \(events)")
            return
        }
        #expect(code == 1001 && reason.contains("stopped"), "close \(code) \(reason)")
    }

    @Test func refusedAttachesAreJSONErrors() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("echo-2", workload: "echo", memory: 16)
        // Stopped: 409 (also through the websocket client, which reads the JSON error).
        #expect(try d.req("GET", "/v1/vms/echo-2/console/attach").status == 409)
        #expect(throws: APIErrorBody.self) { try WebSocketClient.connect(d.client, path: "/v1/vms/echo-2/console/attach") }
        do { _ = try WebSocketClient.connect(d.client, path: "/v1/vms/echo-2/console/attach") } catch let e as APIErrorBody {
            #expect(e.code == "conflict" && e.message.contains("stopped"))
        }
        // Unknown VM: 404.
        do { _ = try WebSocketClient.connect(d.client, path: "/v1/vms/nope/console/attach"); Issue.record("attached to nothing") } catch let e as APIErrorBody {
            #expect(e.code == "not-found")
        }
        // Running, but a plain GET: 426 with Upgrade: websocket.
        #expect(try d.action("echo-2", "start").status == 200)
        let plain = try d.req("GET", "/v1/vms/echo-2/console/attach")
        #expect(plain.status == 426 && plain.headers["upgrade"] == "websocket")
        #expect(try d.req("POST", "/v1/vms/echo-2/console/attach").status == 405)
    }

    @Test func tcpAttachNeedsTheToken() throws {
        let dir = "/tmp/vireo-console-token-\(getpid())"
        mkdir(dir, 0o700)
        let tokenFile = dir + "/token"
        let token = "console-token-0123456789abcdef"
        FileManager.default.createFile(atPath: tokenFile, contents: Data((token + "\n").utf8))
        let d = try TestDaemon(extra: ["--listen", "127.0.0.1:0", "--token-file", tokenFile])
        defer { d.shutdown(); _ = system("rm -rf \(dir)") }
        let port = try #require(d.tcpPort)
        _ = try d.createProbe("echo-3", workload: "echo", memory: 16)
        #expect(try d.action("echo-3", "start").status == 200)
        let path = "/v1/vms/echo-3/console/attach"
        for bad in [nil, "wrong-token"] {
            do {
                _ = try WebSocketClient.connect(APIClient(endpoint: .tcp(host: "127.0.0.1", port: port), token: bad), path: path)
                Issue.record("attached over TCP with token \(bad ?? "none")")
            } catch let e as APIErrorBody {
                #expect(e.code == "unauthorized")
            }
        }
        let ws = try WebSocketClient.connect(APIClient(endpoint: .tcp(host: "127.0.0.1", port: port), token: token), path: path)
        try ws.send(Array("tcp".utf8))
        #expect(try read(ws, count: 3).0 == "TCP")
    }

    @Test func cliAttachWithPipedStdin() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("echo-4", workload: "echo", memory: 16)
        #expect(try d.action("echo-4", "start").status == 200)
        let bin = try #require(VireoBinary.path)
        let out = d.dir + "/attach.out"
        let rc = system("printf 'piped input' | \(bin) vm console echo-4 --socket \(d.socket) --attach --drain 1 > \(out) 2>&1")
        #expect(rc == 0)
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        #expect(text == "PIPED INPUT", "got: \(text)")
        // A stopped VM: one line with the reason and status 1.
        _ = try d.action("echo-4", "stop")
        let rc2 = system("printf x | \(bin) vm console echo-4 --socket \(d.socket) --attach > \(out) 2>&1")
        #expect(rc2 != 0)
        let err = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        #expect(err.contains("is stopped") && err.contains("[conflict]"), "got: \(err)")
    }
}
