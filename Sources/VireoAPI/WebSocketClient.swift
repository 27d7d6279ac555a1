import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking RFC 6455 websocket client over the same socket `APIClient` uses (unix or
/// TCP, bearer token included): the CLI is synchronous, and a console needs only binary
/// frames, ping/pong and close, so a hand-written client (about 200 lines) beats pulling an
/// event loop into every `vireo vm` command. Frames it sends are masked as RFC 6455 requires;
/// pings are answered inside `receive`.
public final class WebSocketClient {
    public enum Event: Equatable, Sendable {
        case data([UInt8])
        case close(code: UInt16, reason: String)
        /// The answer to a `ping`.
        case pong([UInt8])
    }

    public let fd: Int32
    private var inbox: [UInt8]
    private var closed = false
    /// Largest frame accepted from the server.
    static let maxFrame = 1 << 20

    private init(fd: Int32, leftover: [UInt8]) { self.fd = fd; inbox = leftover }

    deinit { close(fd) }

    /// Opens `path` on the daemon with the websocket handshake. A refusal (the daemon answers
    /// with plain HTTP) throws the daemon's APIErrorBody, like `APIClient.call`.
    public static func connect(_ api: APIClient, path: String) throws -> WebSocketClient {
        let fd = try api.connect()
        var keyBytes = [UInt8](repeating: 0, count: 16)
        for i in keyBytes.indices { keyBytes[i] = UInt8.random(in: 0...255) }
        let key = base64(keyBytes)
        var head = "GET \(path) HTTP/1.1\r\nHost: vireo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        head += "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \(key)\r\n"
        if let token = api.token { head += "Authorization: Bearer \(token)\r\n" }
        head += "\r\n"
        do { try sendAll(fd, Array(head.utf8)) } catch { close(fd); throw error }
        // Read the response head (and, for an error, its body).
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            raw += buf[0..<n]
            if let end = raw.firstRange(of: [13, 10, 13, 10] as [UInt8]) {
                let status = raw.count > 12 ? String(decoding: raw[9..<12], as: UTF8.self) : ""
                if status == "101" {
                    let headText = String(decoding: raw[..<end.lowerBound], as: UTF8.self)
                    let accept = headText.split(separator: "\r\n").first { $0.lowercased().hasPrefix("sec-websocket-accept:") }
                        .map { String($0.dropFirst("sec-websocket-accept:".count).drop(while: { $0 == " " || $0 == "\t" })) }
                    guard accept == base64(SHA1.hash(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))) else {
                        close(fd)
                        throw VireoError(.io, "the daemon's websocket handshake for \(path) has a wrong Sec-WebSocket-Accept")
                    }
                    return WebSocketClient(fd: fd, leftover: Array(raw[end.upperBound...]))
                }
                if APIClient.isComplete(raw) { break }
            }
        }
        close(fd)
        let r = try APIClient.parse(raw, from: api.endpoint)
        try APIClient.check(r)
        throw VireoError(.io, "the daemon answered HTTP \(r.status) instead of switching \(path) to a websocket")
    }

    /// Sends one binary frame.
    public func send(_ bytes: [UInt8]) throws { try sendFrame(opcode: 0x2, bytes) }

    /// Sends a ping; the server's pong comes back from `receive`.
    public func ping(_ payload: [UInt8]) throws { try sendFrame(opcode: 0x9, Array(payload.prefix(125))) }

    /// Sends a close frame (once); the server answers with its own.
    public func sendClose(code: UInt16 = 1000, reason: String = "") {
        guard !closed else { return }
        closed = true
        try? sendFrame(opcode: 0x8, [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8.prefix(120)))
    }

    /// Waits up to `timeoutMs` (-1: forever) for the next data or close; nil on timeout.
    /// Pings are answered here. A dropped connection is a close with code 1006.
    public func receive(timeoutMs: Int32) throws -> Event? {
        while true {
            if let event = try parseFrame() { return event }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, timeoutMs)
            if r < 0 { if errno == EINTR { continue }; throw VireoError.system("waiting for the console websocket failed") }
            if r == 0 { return nil }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return .close(code: 1006, reason: "the connection to the daemon closed without a close frame") }
            inbox += buf[0..<n]
        }
    }

    /// One complete frame from `inbox`, or nil if more bytes are needed. Control frames other
    /// than close are handled here (and parsing goes on).
    private func parseFrame() throws -> Event? {
        while true {
            guard inbox.count >= 2 else { return nil }
            let opcode = inbox[0] & 0x0F
            let masked = inbox[1] & 0x80 != 0
            var length = Int(inbox[1] & 0x7F)
            var offset = 2
            if length == 126 {
                guard inbox.count >= 4 else { return nil }
                length = Int(inbox[2]) << 8 | Int(inbox[3]); offset = 4
            } else if length == 127 {
                guard inbox.count >= 10 else { return nil }
                var l: UInt64 = 0
                for i in 2..<10 { l = l << 8 | UInt64(inbox[i]) }
                guard l <= UInt64(Self.maxFrame) else { throw VireoError(.io, "the daemon sent a websocket frame of \(l) bytes (more than \(Self.maxFrame))") }
                length = Int(l); offset = 10
            }
            guard length <= Self.maxFrame else { throw VireoError(.io, "the daemon sent a websocket frame of \(length) bytes (more than \(Self.maxFrame))") }
            let maskOffset = offset
            if masked { offset += 4 }
            guard inbox.count >= offset + length else { return nil }
            var payload = Array(inbox[offset..<(offset + length)])
            if masked { for i in payload.indices { payload[i] ^= inbox[maskOffset + i % 4] } }
            inbox.removeFirst(offset + length)
            switch opcode {
            case 0x0, 0x1, 0x2:
                if !payload.isEmpty { return .data(payload) }
            case 0x8:
                let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 1005
                let reason = payload.count > 2 ? String(decoding: payload[2...], as: UTF8.self) : ""
                if !closed { sendClose(code: code == 1005 ? 1000 : code) }
                return .close(code: code, reason: reason)
            case 0x9:
                try sendFrame(opcode: 0xA, payload)
            case 0xA:
                return .pong(payload)
            default:
                break   // reserved
            }
        }
    }

    private func sendFrame(opcode: UInt8, _ payload: [UInt8]) throws {
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(0x80 | 127)
            for shift in stride(from: 56, through: 0, by: -8) { frame.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xFF)) }
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        frame += mask
        frame += payload.enumerated().map { $1 ^ mask[$0 % 4] }
        try Self.sendAll(fd, frame)
    }

    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("sending to the daemon's console websocket failed")
            }
            off += n
        }
    }

    static func base64(_ bytes: [UInt8]) -> String {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i], b1 = i + 1 < bytes.count ? bytes[i + 1] : 0, b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(table[Int(b0 >> 2)])
            out.append(table[Int((b0 & 3) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? table[Int((b1 & 0xF) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? table[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// SHA-1 (FIPS 180-4), only for the websocket handshake's Sec-WebSocket-Accept.
enum SHA1 {
    static func hash(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0]
        var m = message
        let bitLength = UInt64(message.count) * 8
        m.append(0x80)
        while m.count % 64 != 56 { m.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { m.append(UInt8((bitLength >> UInt64(shift)) & 0xFF)) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: m.count, by: 64) {
            for i in 0..<16 {
                w[i] = UInt32(m[chunk + 4 * i]) << 24 | UInt32(m[chunk + 4 * i + 1]) << 16 | UInt32(m[chunk + 4 * i + 2]) << 8 | UInt32(m[chunk + 4 * i + 3])
            }
            for i in 16..<80 {
                let x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = x << 1 | x >> 31
            }
            var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4]
            for i in 0..<80 {
                let f: UInt32, k: UInt32
                switch i {
                case 0..<20: f = (b & c) | (~b & d); k = 0x5A82_7999
                case 20..<40: f = b ^ c ^ d; k = 0x6ED9_EBA1
                case 40..<60: f = (b & c) | (b & d) | (c & d); k = 0x8F1B_BCDC
                default: f = b ^ c ^ d; k = 0xCA62_C1D6
                }
                let t = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[i]
                e = d; d = c; c = b << 30 | b >> 2; b = a; a = t
            }
            h[0] &+= a; h[1] &+= b; h[2] &+= c; h[3] &+= d; h[4] &+= e
        }
        return h.flatMap { v in [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
    }
}
