import ArgumentParser
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm console NAME` on a terminal, or with `--attach`: the daemon's console websocket
/// (`GET /v1/vms/NAME/console/attach`).
///
/// Interactive (stdin is a terminal): prints the last few KiB of the log, puts the terminal
/// in raw mode (restored on every exit), sends keystrokes to the guest; Ctrl-] detaches.
/// Scripted (stdin is not a terminal): sends stdin as it comes; after its EOF, keeps printing
/// the guest's output until `drainSeconds` pass without any, then closes. Either way the
/// command ends when the VM stops (status 0, the reason on stderr); any other close is status 1.
func attachConsole(client: APIClient, name: String, drainSeconds: Double) throws {
    let interactive = isatty(0) == 1
    let detachByte: UInt8 = 0x1D   // Ctrl-]
    let path = "/v1/vms/\(pathSafe(name))/console/attach"
    if interactive {
        // The recent output, so the screen shows where the guest is (a prompt, a login).
        let backlog = try logTail(client: client, name: name, bytes: 4096)
        printError("[console of \(name); Ctrl-] detaches]")
        _ = backlog.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    }
    let ws = try WebSocketClient.connect(client, path: path)
    let terminal = interactive ? RawTerminal.enter() : nil
    defer { terminal?.restore() }

    var stdinOpen = true
    var quietSince: Double?   // after stdin's EOF: when the guest last said something
    var buffer = [UInt8](repeating: 0, count: 4096)
    func finish(_ code: UInt16, _ reason: String) throws {
        terminal?.restore()
        switch code {
        case 1000: return
        case 1001: printError("\r\nvireo: \(reason.isEmpty ? "the VM stopped" : reason)"); return
        default: throw VireoError(.io, "the console connection closed: \(reason.isEmpty ? "code \(code)" : reason)")
        }
    }
    while true {
        while let event = try ws.receive(timeoutMs: 0) {
            switch event {
            case let .data(bytes):
                _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                if quietSince != nil { quietSince = monotonicSeconds() }
            case let .close(code, reason):
                try finish(code, reason)
                return
            case .pong:
                break
            }
        }
        if let since = quietSince, monotonicSeconds() - since >= drainSeconds {
            ws.sendClose()
            return
        }
        var fds = [pollfd(fd: ws.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
        let timeout: Int32 = quietSince == nil ? -1 : 100
        if poll(&fds, 2, timeout) < 0 && errno != EINTR { throw VireoError.system("waiting for console input failed") }
        guard stdinOpen, fds[1].revents != 0 else { continue }
        let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 {
            stdinOpen = false
            if interactive { ws.sendClose(); terminal?.restore(); printError("\r\nvireo: stdin closed; detached"); return }
            quietSince = monotonicSeconds()
            continue
        }
        var bytes = Array(buffer[0..<n])
        if interactive, let i = bytes.firstIndex(of: detachByte) {
            bytes = Array(bytes[..<i])
            if !bytes.isEmpty { try ws.send(bytes) }
            ws.sendClose()
            terminal?.restore()
            printError("\r\n[detached from \(name); the VM keeps running]")
            return
        }
        try ws.send(bytes)
    }
}

/// The last `bytes` of the VM's console log.
private func logTail(client: APIClient, name: String, bytes: Int) throws -> [UInt8] {
    var offset = 0
    var tail: [UInt8] = []
    while true {
        let r = try client.request("GET", "/v1/vms/\(pathSafe(name))/console?offset=\(offset)")
        try APIClient.check(r)
        let next = r.headers["x-vireo-next-offset"].flatMap(Int.init) ?? offset + r.body.count
        tail = Array((tail + r.body).suffix(bytes))
        if next <= offset || r.body.isEmpty { return tail }
        offset = next
    }
}

private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
