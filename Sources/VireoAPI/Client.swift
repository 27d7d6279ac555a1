#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client for the daemon's API over a unix socket or TCP.
/// One request per connection (`Connection: close`); bodies are JSON or text.
public struct APIClient: Sendable {
    public enum Endpoint: Sendable, CustomStringConvertible {
        case unix(String)
        case tcp(host: String, port: UInt16)
        public var description: String {
            switch self {
            case let .unix(p): return p
            case let .tcp(h, p): return "\(h):\(p)"
            }
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: [UInt8]
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public static let defaultSocket = "/run/vireo/vireo.sock"

    public var endpoint: Endpoint
    public var token: String?
    /// Receive timeout per request, seconds.
    public var timeout: Int = 60

    public init(endpoint: Endpoint, token: String? = nil) { self.endpoint = endpoint; self.token = token }
    public init(socket: String) { self.init(endpoint: .unix(socket)) }

    /// Sends one request; throws VireoError when the daemon cannot be reached.
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil, contentType: String = "application/json") throws -> Response {
        let fd = try connect()
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: vireo\r\nConnection: close\r\nAccept: application/json\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        if let body { head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n" }
        else if method == "POST" || method == "PUT" || method == "PATCH" { head += "Content-Length: 0\r\n" }
        head += "\r\n"
        var out = Array(head.utf8)
        if let body { out += body }
        try writeAll(fd, out)
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("reading the daemon's reply from \(endpoint) failed")
            }
            if n == 0 { break }
            raw += buf[0..<n]
            if Self.isComplete(raw) { break }
        }
        return try Self.parse(raw, from: endpoint)
    }

    /// Sends a request and decodes a 2xx JSON reply; a 4xx/5xx becomes the daemon's APIErrorBody.
    public func call<T: Decodable>(_ method: String, _ path: String, body: [UInt8]? = nil, as: T.Type) throws -> T {
        let r = try request(method, path, body: body)
        try Self.check(r)
        do { return try JSONDecoder().decode(T.self, from: Data(r.body)) } catch {
            throw VireoError(.io, "the daemon's reply to \(method) \(path) is not what this client expects (a different vireo version?)")
        }
    }

    public static func check(_ r: Response) throws {
        guard r.status >= 400 else { return }
        if let e = try? JSONDecoder().decode(APIErrorBody.self, from: Data(r.body)) { throw e }
        throw APIErrorBody(code: "http-\(r.status)", message: "the daemon answered HTTP \(r.status)")
    }

    func connect() throws -> Int32 {
        switch endpoint {
        case let .unix(path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw VireoError.system("cannot create a socket") }
            setTimeout(fd)
            guard UnixSocketAddress.fits(path) else {
                close(fd)
                throw VireoError(.invalidArgument, "socket path \(path) is too long for a unix socket (108 bytes at most)")
            }
            let rc = UnixSocketAddress.with(path) { Glibc.connect(fd, $0, $1) }
            if rc != 0 {
                let e = errno
                close(fd)
                throw Self.unreachable(endpoint, errno: e)
            }
            return fd
        case let .tcp(host, port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
                throw VireoError(.notFound, "cannot resolve \(host)")
            }
            defer { freeaddrinfo(res) }
            let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw VireoError.system("cannot create a socket") }
            setTimeout(fd)
            if Glibc.connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) != 0 {
                let e = errno
                close(fd)
                throw Self.unreachable(endpoint, errno: e)
            }
            return fd
        }
    }

    private func setTimeout(_ fd: Int32) {
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func unreachable(_ endpoint: Endpoint, errno e: Int32) -> VireoError {
        switch endpoint {
        case let .unix(path):
            if e == ENOENT || e == ECONNREFUSED {
                return VireoError(.notFound, "no daemon at \(path)", hint: "start it with `vireo host --socket \(path)`, or point at another with --socket or VIREO_SOCKET")
            }
            if e == EACCES { return VireoError(.permissionDenied, "cannot open \(path)", hint: "run as root or as a member of the socket's group") }
            return VireoError.system("cannot connect to \(path)", errno: e)
        case .tcp:
            return VireoError.system("cannot connect to the daemon at \(endpoint)", errno: e, hint: "is `vireo host --listen` running there?")
        }
    }

    func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("sending the request to \(endpoint) failed")
            }
            off += n
        }
    }

    /// True once the headers and Content-Length bytes of body have arrived.
    static func isComplete(_ raw: [UInt8]) -> Bool {
        guard let headEnd = raw.firstRange(of: [13, 10, 13, 10] as [UInt8]) else { return false }
        let head = String(decoding: raw[..<headEnd.lowerBound], as: UTF8.self).lowercased()
        for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
            guard let n = Int(line.dropFirst(15).drop(while: { $0 == " " })) else { return false }
            return raw.count - headEnd.upperBound >= n
        }
        return false
    }

    static func parse(_ raw: [UInt8], from endpoint: Endpoint) throws -> Response {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let headEnd = raw.firstRange(of: sep) else {
            throw VireoError(.io, "the daemon at \(endpoint) closed the connection without a reply")
        }
        let head = String(decoding: raw[..<headEnd.lowerBound], as: UTF8.self)
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        guard !lines.isEmpty else { throw VireoError(.io, "empty reply from \(endpoint)") }
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw VireoError(.io, "the reply from \(endpoint) is not HTTP")
        }
        var headers: [String: String] = [:]
        for l in lines {
            guard let colon = l.firstIndex(of: ":") else { continue }
            headers[l[..<colon].lowercased()] = String(l[l.index(after: colon)...].drop(while: { $0 == " " || $0 == "\t" }))
        }
        var body = Array(raw[headEnd.upperBound...])
        if let len = headers["content-length"].flatMap(Int.init), len <= body.count { body = Array(body[..<len]) }
        return Response(status: status, headers: headers, body: body)
    }
}
