import ArgumentParser
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo control SOCKET COMMAND...`: one command to a VMM's control socket (`vireo run
/// --api-socket`), its reply on stdout (JSON; `reclaim`'s is a line of key=value pairs); exit 1
/// when the reply says ok:false (or ok=false).
struct ControlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control",
        abstract: "Send one command to a VMM's control socket: status, config, pause, resume, shutdown, stop, balloon [MIB], reclaim BYTES, snapshot DIR.",
        discussion: "Example: vireo control /tmp/vm.sock snapshot /var/lib/vireo/snap1")

    @Argument(help: "The VMM's control socket (vireo run --api-socket).") var socket: String
    @Argument(parsing: .remaining, help: "The command and its arguments.") var command: [String]

    func run() throws {
        try reportingErrors {
            guard !command.isEmpty else { throw ValidationError("give a command, e.g. status") }
            let reply = try Self.roundTrip(socket: socket, command: command.joined(separator: " "))
            print(reply, terminator: reply.hasSuffix("\n") ? "" : "\n")
            if reply.contains(#""ok":false"#) || reply.hasPrefix("ok=false") { throw ExitCode(1) }
        }
    }

    /// Sends one command line to a VMM's control socket and returns the whole reply.
    static func roundTrip(socket: String, command: String) throws -> String {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("cannot create a socket") }
        defer { close(fd) }
        guard UnixSocketAddress.fits(socket) else { throw VireoError(.invalidArgument, "\(socket) is too long for a unix socket path") }
        guard UnixSocketAddress.with(socket, { connect(fd, $0, $1) }) == 0 else {
            throw VireoError.system("cannot connect to \(socket)", hint: "is the VMM running with --api-socket \(socket)?")
        }
        let line = command + "\n"
        _ = line.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < 16 << 20 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw VireoError.system("reading the reply from \(socket)") }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
