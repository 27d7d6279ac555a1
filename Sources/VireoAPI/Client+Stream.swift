#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

extension APIClient {
    /// How a followed stream ended.
    public enum StreamEnd: Sendable, Equatable {
        /// The daemon ended the response (its last chunk).
        case finished
        /// `onLine` asked to stop; the connection was closed.
        case stopped
        /// The connection closed mid-stream (the daemon stopped or restarted).
        case closed
    }

    /// GETs a streamed response (chunked NDJSON, e.g. /v1/events?follow=true) and hands each
    /// line (without its newline) to `onLine` as it arrives, until `onLine` returns false, the
    /// daemon ends the stream, or the connection closes. A 4xx/5xx reply throws its APIErrorBody.
    /// `onConnected` gets the socket once the daemon's reply head has arrived (for the event
    /// stream: the subscription exists from then on).
    public func streamLines(_ path: String, onConnected: (Int32) -> Void = { _ in },
                            onLine: ([UInt8]) -> Bool) throws -> StreamEnd {
        let fd = try connect()
        defer { close(fd) }
        var head = "GET \(path) HTTP/1.1\r\nHost: vireo\r\nConnection: close\r\nAccept: application/x-ndjson\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        head += "\r\n"
        try writeAll(fd, Array(head.utf8))

        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        /// Reads more into `raw`; false at end of stream.
        func fill() throws -> Bool {
            while true {
                // SAFETY: read writes at most buf.count bytes into buf's own storage.
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EBADF || errno == ECONNRESET { return false }
                    throw VireoError.system("reading the event stream from \(endpoint) failed")
                }
                if n == 0 { return false }
                raw += buf[0..<n]
                return true
            }
        }
        let sep: [UInt8] = [13, 10, 13, 10]
        while raw.firstRange(of: sep) == nil {
            guard try fill() else { throw VireoError(.io, "the daemon at \(endpoint) closed the connection without a reply") }
        }
        guard let headEnd = raw.firstRange(of: sep) else { return .closed }
        let response = try Self.parse(Array(raw[..<headEnd.upperBound]), from: endpoint)
        raw.removeSubrange(..<headEnd.upperBound)
        if response.status >= 400 {
            let length = response.headers["content-length"].flatMap(Int.init) ?? Int.max
            while raw.count < length {
                guard try fill() else { break }
            }
            try Self.check(Response(status: response.status, headers: response.headers, body: raw))
        }
        let chunked = response.headers["transfer-encoding"]?.lowercased().contains("chunked") ?? false
        onConnected(fd)

        var line: [UInt8] = []
        /// Feeds body bytes; false once onLine asked to stop.
        func feed(_ bytes: ArraySlice<UInt8>) -> Bool {
            for b in bytes {
                if b == 10 {
                    if !onLine(line) { return false }
                    line.removeAll(keepingCapacity: true)
                } else { line.append(b) }
            }
            return true
        }
        if !chunked {
            while true {
                if !feed(raw[...]) { return .stopped }
                raw.removeAll()
                guard try fill() else { return .closed }
            }
        }
        while true {
            // chunk-size [;ext] CRLF, data, CRLF; a zero size ends the body.
            var crlf = raw.firstRange(of: [13, 10] as [UInt8])
            while crlf == nil {
                guard try fill() else { return .closed }
                crlf = raw.firstRange(of: [13, 10] as [UInt8])
            }
            guard let sizeEnd = crlf else { return .closed }
            let sizeText = String(decoding: raw[..<sizeEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingSpaces, radix: 16), size >= 0 else {
                throw VireoError(.io, "the event stream from \(endpoint) is not valid chunked encoding")
            }
            raw.removeSubrange(..<sizeEnd.upperBound)
            if size == 0 { return .finished }
            while raw.count < size + 2 {
                guard try fill() else { return .closed }
            }
            if !feed(raw[..<size]) { return .stopped }
            raw.removeSubrange(..<(size + 2))
        }
    }

}

extension Substring {
    var trimmingSpaces: String { String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed()) }
}
