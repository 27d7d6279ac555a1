import ArgumentParser
import VireoAPI
import VireoSupport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// How the CLI reaches the daemon: --socket (or VIREO_SOCKET), or --connect ADDR:PORT with a token.
struct ClientOptions: ParsableArguments {
    @Option(help: "The daemon's unix socket (default: $VIREO_SOCKET or /run/vireo/vireo.sock).")
    var socket: String?

    @Option(help: "Reach the daemon over TCP at ADDR:PORT instead (needs --token-file).")
    var connect: String?

    @Option(help: "File holding the bearer token for --connect.")
    var tokenFile: String?

    @Flag(help: "Print the daemon's JSON instead of a table.")
    var json = false

    func makeClient() throws -> APIClient {
        if let connect {
            guard let colon = connect.lastIndex(of: ":"), let port = UInt16(connect[connect.index(after: colon)...]) else {
                throw VireoError(.invalidArgument, "--connect '\(connect)' is not ADDR:PORT")
            }
            guard let tokenFile else { throw VireoError(.invalidArgument, "--connect needs --token-file FILE (the daemon's bearer token)") }
            return APIClient(endpoint: .tcp(host: String(connect[..<colon]), port: port), token: try readToken(tokenFile))
        }
        let env = getenv("VIREO_SOCKET").map { String(cString: $0) }
        return APIClient(socket: socket ?? env ?? APIClient.defaultSocket)
    }

    func decode<T: Decodable>(_ type: T.Type, _ r: APIClient.Response) throws -> T {
        do { return try JSONDecoder().decode(T.self, from: Data(r.body)) } catch {
            throw VireoError(.io, "the daemon's reply is not what this vireo expects (a different version?)")
        }
    }
}

/// A daemon's bearer token: the first word of its token file.
func readToken(_ path: String) throws -> String {
    let raw = try OwnedFD.readFile(path, limit: 4096, what: "token file")
    return String(decoding: raw, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == " " || $0 == "\r" }).first.map(String.init) ?? ""
}

extension APIErrorBody {
    /// The line the CLI prints for a daemon error.
    var line: String { "\(message) [\(code)]" }
}


func absolutePath(_ p: String) -> String {
    if p.hasPrefix("/") { return p }
    var buf = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buf, buf.count) != nil else { return p }
    let cwd = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return cwd + "/" + p
}
import VireoAPI
typealias VireoAPIErrorLine = APIErrorBody
