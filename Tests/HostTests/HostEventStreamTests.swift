import Foundation
import Synchronization
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// GET /v1/events?follow=true against a real daemon: backlog then live events as NDJSON over
/// chunked encoding, in order; a client that leaves frees its subscription; a client that
/// does not read is cut off with a last line saying so, and the daemon keeps serving.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostEventStreamTests {
    /// Follows `path` on a background thread, collecting events until `stop` returns true.
    final class Follower: @unchecked Sendable {
        let events = Mutex<[Event]>([])
        let end = Mutex<APIClient.StreamEnd?>(nil)
        let finished = DispatchSemaphore(value: 0)
        let connected = DispatchSemaphore(value: 0)

        init(_ client: APIClient, _ path: String, stop: @escaping @Sendable ([Event]) -> Bool) {
            var follow = client
            follow.timeout = 0
            let c = follow
            DispatchQueue.global().async { [self] in
                let e = try? c.streamLines(path, onConnected: { _ in self.connected.signal() }) { line in
                    guard let ev = try? JSONDecoder().decode(Event.self, from: Data(line)) else { return true }
                    let all = self.events.withLock { $0.append(ev); return $0 }
                    return !stop(all)
                }
                self.end.withLock { $0 = e }
                self.finished.signal()
            }
            _ = connected.wait(timeout: .now() + 5)
        }
        var seen: [Event] { events.withLock { $0 } }
    }

    func waitForSubscribers(_ d: TestDaemon, _ n: Double) throws -> Bool {
        for _ in 0..<100 {
            if try d.metric("vireo_event_subscribers") == n { return true }
            usleep(50_000)
        }
        return false
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func followSeesAVMsLifecycleInOrderAndLeavingFreesTheSubscriber() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("old")   // backlog
        let f = Follower(d.client, "/v1/events?follow=true") { all in all.contains { $0.vm == "ev1" && $0.type == "stopped" } }
        #expect(try waitForSubscribers(d, 1))

        _ = try d.createProbe("ev1")
        #expect(try d.action("ev1", "start").status == 200)
        #expect(try d.action("ev1", "stop").status == 200)
        #expect(f.finished.wait(timeout: .now() + 20) == .success, "the stream did not deliver ev1's stop; saw \(f.seen.map(\.type))")
        #expect(f.end.withLock { $0 } == .stopped)

        let seen = f.seen
        #expect(seen.first?.vm == "old" && seen.first?.type == "created", "the backlog comes first")
        #expect(seen.filter { $0.vm == "ev1" }.map(\.type) == ["created", "starting", "running", "stopped"])
        #expect(seen.map(\.seq) == seen.map(\.seq).sorted() && Set(seen.map(\.seq)).count == seen.count, "in order, none twice")
        // The same events as the stored log.
        let stored = try d.client.call("GET", "/v1/events", as: EventList.self).events
        #expect(Array(stored.prefix(seen.count)) == seen)

        // The client closed its connection: the daemon drops the subscription and keeps serving.
        #expect(try waitForSubscribers(d, 0), "the subscriber was not freed")
        #expect(try d.req("GET", "/v1/host").status == 200)
    }

    @Test func sinceAndVMFilterTheStreamAndAQuietClientLeavingIsNoticed() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        for n in ["t1", "t2", "t3"] {
            #expect(try d.req("POST", "/v1/templates", json: #"{"name":"\#(n)","kernel":"\#(kernel)"}"#).status == 201)
        }
        let first = try #require(try d.client.call("GET", "/v1/events", as: EventList.self).events.first)
        // since skips the first; vm=t3 keeps only t3's; then it is followed live.
        let f = Follower(d.client, "/v1/events?follow=true&since=\(first.seq)&vm=t3") { all in all.count == 2 }
        #expect(try waitForSubscribers(d, 1))
        #expect(try d.req("DELETE", "/v1/templates/t2").status == 204)
        #expect(try d.req("DELETE", "/v1/templates/t3").status == 204)
        #expect(f.finished.wait(timeout: .now() + 10) == .success)
        #expect(f.seen.map(\.type) == ["template-created", "template-deleted"] && f.seen.allSatisfy { $0.vm == "t3" })
        #expect(try waitForSubscribers(d, 0))

        // A follower that goes away while nothing happens is noticed too (no event needed).
        let quiet = Follower(d.client, "/v1/events?follow=true&since=\(Int32.max)") { _ in true }
        #expect(try waitForSubscribers(d, 1))
        let fd = try rawFollow(d)
        #expect(try waitForSubscribers(d, 2))
        close(fd)
        #expect(try waitForSubscribers(d, 1), "a closed connection left its subscriber behind")
        _ = quiet
        for bad in ["follow=yes", "follow=true&since=-1", "follow=true&limit=0"] {
            #expect(try d.req("GET", "/v1/events?\(bad)").status == 400, "\(bad)")
        }
    }

    /// SIGTERM: followers get a last daemon-stopping line and a properly ended stream, then the
    /// daemon exits 0.
    @Test func aStoppingDaemonEndsStreamsWithALastLine() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let f = Follower(d.client, "/v1/events?follow=true") { _ in false }
        #expect(try waitForSubscribers(d, 1))
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"t1","kernel":"\#(kernel)"}"#).status == 201)
        let child = try #require(d.child)
        child.signal(SIGTERM)
        #expect(child.wait() == 0)
        d.child = nil
        #expect(f.finished.wait(timeout: .now() + 5) == .success)
        #expect(f.end.withLock { $0 } == .finished, "the stream did not end with its last chunk")
        let last = try #require(f.seen.last)
        #expect(last.type == "daemon-stopping" && last.message.contains("since=\(f.seen.dropLast().last?.seq ?? -1)"), "\(f.seen)")
        #expect(f.seen.dropLast().last?.type == "template-created")
    }

    /// A client that never reads: once it is 1024 events behind it is cut off (its subscription
    /// freed), and the daemon goes on answering everyone else.
    @Test func aClientThatDoesNotReadIsCutOff() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let fd = try rawFollow(d, receiveBuffer: 4096)
        defer { close(fd) }
        #expect(try waitForSubscribers(d, 1))
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        // Template create+delete with long names: two events each, ~300 bytes per line.
        var cutOff = false
        for i in 0..<3000 {
            let name = "slow-client-template-with-a-long-name-\(i)"
            #expect(try d.req("POST", "/v1/templates", json: #"{"name":"\#(name)","kernel":"\#(kernel)","cmdline":"\#(String(repeating: "x", count: 150))"}"#).status == 201)
            #expect(try d.req("DELETE", "/v1/templates/\(name)").status == 204)
            if i % 100 == 99, try d.metric("vireo_event_subscribers") == 0 { cutOff = true; break }
        }
        #expect(cutOff, "a client that does not read was never cut off")
        #expect(try d.req("GET", "/v1/host").status == 200)
        // What it gets when it finally reads: events, then the stream-dropped line, then the end.
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while true {
            // SAFETY: read writes at most buf.count bytes into buf's own storage.
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            raw += buf[0..<n]
        }
        let text = String(decoding: raw, as: UTF8.self)
        #expect(text.contains(#""type":"stream-dropped""#), "\(text.suffix(400))")
        #expect(text.hasSuffix("0\r\n\r\n"), "the chunked body was not ended: \(text.suffix(100))")
    }

    /// A raw follow request on a socket that is then not read.
    func rawFollow(_ d: TestDaemon, receiveBuffer: Int32? = nil) throws -> Int32 {
        try d.rawConnect(sending: "GET /v1/events?follow=true&since=\(Int32.max) HTTP/1.1\r\nHost: x\r\n\r\n", receiveBuffer: receiveBuffer)
    }
}
