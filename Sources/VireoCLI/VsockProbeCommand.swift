import ArgumentParser
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vsock-probe`: a tiny vsock/unix line client and server for the testbed (busybox has
/// no AF_VSOCK). Each mode sends or answers one line and prints what it saw.
struct VsockProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsock-probe", abstract: "Testbed helper: one-line vsock/unix round trips.", shouldDisplay: false)

    @Argument(help: "connect CID PORT MSG | listen PORT | unix-connect PATH PORT MSG | unix-listen PATH")
    var args: [String]

    func run() throws {
        switch (args.first, args.count) {
        case ("connect", 4):
            guard let cid = UInt32(args[1]), let port = UInt32(args[2]) else { throw ValidationError("bad CID or PORT") }
            let fd = try vsockSocket()
            var a = vsockAddress(cid: cid, port: port)
            guard a.withUnsafeMutableBytes({ connect(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }) == 0 else {
                throw VireoError.system("vsock connect to \(cid):\(port)")
            }
            try sendLine(fd, args[3])
            writeLine("REPLY \(try readLine(fd))")
        case ("listen", 2):
            guard let port = UInt32(args[1]) else { throw ValidationError("bad PORT") }
            let fd = try vsockSocket()
            var a = vsockAddress(cid: UInt32.max, port: port)
            guard a.withUnsafeMutableBytes({ bind(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }) == 0, listen(fd, 1) == 0 else {
                throw VireoError.system("vsock listen on port \(port)")
            }
            writeLine("LISTENING \(port)")
            try serveOne(fd)
        case ("unix-connect", 4):
            let fd = try unixSocket(args[1], listen: false)
            try sendLine(fd, "CONNECT \(args[2])")
            writeLine("HANDSHAKE \(try readLine(fd))")
            try sendLine(fd, args[3])
            writeLine("REPLY \(try readLine(fd))")
        case ("unix-listen", 2):
            let fd = try unixSocket(args[1], listen: true)
            writeLine("LISTENING \(args[1])")
            try serveOne(fd)
        default:
            throw ValidationError("usage: vireo vsock-probe connect CID PORT MSG | listen PORT | unix-connect PATH PORT MSG | unix-listen PATH")
        }
    }

    func serveOne(_ fd: Int32) throws {
        let c = accept(fd, nil, nil)
        guard c >= 0 else { throw VireoError.system("accept") }
        let line = try readLine(c)
        try sendLine(c, "ECHO \(line)")
        writeLine("SERVED \(line)")
        close(c)
    }

    func vsockSocket() throws -> Int32 {
        let fd = socket(40 /* AF_VSOCK */, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("cannot create an AF_VSOCK socket", hint: "load vmw_vsock_virtio_transport") }
        return fd
    }

    /// struct sockaddr_vm: family u16, reserved u16, port u32, cid u32, flags u8, zero[3].
    func vsockAddress(cid: UInt32, port: UInt32) -> [UInt8] {
        var b: [UInt8] = [40, 0, 0, 0]
        for v in [port, cid] { for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        return b + [0, 0, 0, 0]
    }

    func unixSocket(_ path: String, listen doListen: Bool) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < 100 else { throw ValidationError("path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        if doListen { unlink(path) }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                doListen ? bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) : connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0, !doListen || listen(fd, 1) == 0 else { throw VireoError.system("unix socket \(path)") }
        return fd
    }

    func sendLine(_ fd: Int32, _ s: String) throws {
        let bytes = Array((s + "\n").utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else { throw VireoError.system("write") }
    }

    func readLine(_ fd: Int32) throws -> String {
        var line: [UInt8] = []
        var b: UInt8 = 0
        while line.count < 4096 {
            let n = read(fd, &b, 1)
            guard n == 1 else { if line.isEmpty { throw VireoError(.io, "connection closed before a line arrived") }; break }
            if b == 10 { break }
            line.append(b)
        }
        return String(decoding: line, as: UTF8.self)
    }
}
