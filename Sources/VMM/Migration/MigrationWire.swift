import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The live-migration stream between two VMMs (docs/migration.md). Everything is little-endian.
///
///     source -> destination
///       hello:  "VIREOMIG", u32 version, u32 flags (bit 0: storage copy), u32 token length,
///               the token, u32 region count, (u64 base, u64 size) per region,
///               u32 disk count, u64 virtual size per disk (storage copy; else 0 disks)
///       then messages, each a one-byte kind:
///       pages:  u64 guest address, u32 count, count * 4096 bytes
///       zeros:  u64 guest address, u32 count           (pages that are zero now)
///       disk:   u32 disk, u64 offset, u32 length, the bytes   (storage copy)
///       diskz:  u32 disk, u64 offset, u64 length        (a disk range that reads zero now)
///       state:  u32 length, a state.vsnap (the snapshot envelope and body)
///       go:     (nothing)                               (the destination may run the guest)
///     destination -> source
///       ready:  u32 length, text ("" when restored and ready, else why not)
///       running:(nothing)
///
/// The destination checks every field before it uses it: addresses and counts inside one RAM
/// region or one disk (checked arithmetic), lengths bounded, the token, the state through
/// `SnapshotFile.decode`.
enum MigrationWire {
    static let magic = Array("VIREOMIG".utf8)
    static let version: UInt32 = 2
    static let pageSize: UInt64 = 4096
    /// Pages in one message at most (1 MiB).
    static let maxPagesPerMessage: UInt32 = 256
    static let maxRegions: UInt32 = 8
    static let maxReadyText: UInt32 = 4096
    static let maxToken: UInt32 = 256
    static let maxDisks: UInt32 = 64
    /// Disk bytes in one message at most.
    static let maxDiskBytes: UInt32 = 1 << 20
    static let flagStorageCopy: UInt32 = 1

    enum Kind: UInt8 {
        case pages = 1, zeros = 2, state = 3, go = 4, ready = 5, running = 6, disk = 7, diskZeros = 8
    }

    /// The first message of a migration.
    struct Hello: Equatable {
        var storageCopy = false
        var token: [UInt8] = []
        var regions: [Region] = []
        /// Each disk's virtual size, in the VM's disk order (storage copy only).
        var diskSizes: [UInt64] = []

        struct Region: Equatable { var base: UInt64; var size: UInt64 }

        func encode() -> [UInt8] {
            var b = MigrationWire.magic + MigrationChannel.le32(MigrationWire.version)
            b += MigrationChannel.le32(storageCopy ? MigrationWire.flagStorageCopy : 0)
            b += MigrationChannel.le32(UInt32(token.count)) + token
            b += MigrationChannel.le32(UInt32(regions.count))
            for r in regions { b += MigrationChannel.le64(r.base) + MigrationChannel.le64(r.size) }
            b += MigrationChannel.le32(UInt32(diskSizes.count))
            for d in diskSizes { b += MigrationChannel.le64(d) }
            return b
        }

        /// Reads and checks a hello (the destination side).
        static func receive(_ channel: MigrationChannel) throws -> Hello {
            guard try channel.receive(8) == MigrationWire.magic else {
                throw VireoError(.corrupt, "incoming migration: the peer is not a Vireo VMM sending a migration stream")
            }
            let head = [UInt8](repeating: 0, count: 8) + (try channel.receive(12))
            let version = MigrationChannel.u32(head, 8)
            guard version == MigrationWire.version else {
                throw VireoError(.unsupported, "incoming migration: stream version \(version); this vireo reads version \(MigrationWire.version)",
                                 hint: "migrate between VMMs of the same release")
            }
            var h = Hello()
            let flags = MigrationChannel.u32(head, 12)
            guard flags & ~MigrationWire.flagStorageCopy == 0 else { throw VireoError(.unsupported, "incoming migration: unknown options 0x\(String(flags, radix: 16))") }
            h.storageCopy = flags & MigrationWire.flagStorageCopy != 0
            let tokenLength = MigrationChannel.u32(head, 16)
            guard tokenLength <= MigrationWire.maxToken else { throw VireoError(.corrupt, "incoming migration: a token of \(tokenLength) bytes") }
            h.token = try channel.receive(Int(tokenLength))
            let count = try channel.receiveU32()
            guard count >= 1, count <= MigrationWire.maxRegions else { throw VireoError(.corrupt, "incoming migration: \(count) memory regions") }
            for _ in 0..<count {
                let b = try channel.receive(16)
                h.regions.append(Region(base: MigrationChannel.u64(b, 0), size: MigrationChannel.u64(b, 8)))
            }
            let disks = try channel.receiveU32()
            guard disks <= MigrationWire.maxDisks else { throw VireoError(.corrupt, "incoming migration: \(disks) disks") }
            for _ in 0..<disks { h.diskSizes.append(try channel.receiveU64()) }
            guard h.storageCopy || h.diskSizes.isEmpty else { throw VireoError(.corrupt, "incoming migration: disk sizes without a storage copy") }
            return h
        }
    }
}

/// Where a migration goes or comes from: `tcp:HOST:PORT` or `unix:PATH`.
public enum MigrationAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(String)

    public static func parse(_ text: String) throws -> MigrationAddress {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/"), path.utf8.count < 108 else {
                throw VireoError(.invalidArgument, "migration address \(text): unix:PATH wants an absolute path shorter than 108 bytes")
            }
            return .unix(path)
        }
        if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]), port > 0 else {
                throw VireoError(.invalidArgument, "migration address \(text): tcp:HOST:PORT wants a port from 1 to 65535")
            }
            var host = String(rest[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            return .tcp(host: host.isEmpty ? "0.0.0.0" : host, port: port)
        }
        throw VireoError(.invalidArgument, "migration address '\(text.prefix(80))' is neither tcp:HOST:PORT nor unix:PATH")
    }

    public var description: String {
        switch self {
        case let .tcp(h, p): return "tcp:\(h):\(p)"
        case let .unix(p): return "unix:\(p)"
        }
    }

    /// Connects (the source side). A destination that is not listening yet (refused, or its
    /// socket file not there) is tried again for up to `timeoutSeconds`: its VMM may still be
    /// starting.
    func connect(timeoutSeconds: Int = 10) throws -> MigrationChannel {
        let deadline = monotonicNanos() &+ UInt64(timeoutSeconds) &* 1_000_000_000
        while true {
            do { return try connectOnce() } catch let e as VireoError where e.errno == ECONNREFUSED || e.errno == ENOENT {
                guard monotonicNanos() < deadline else { throw e }
                usleep(50_000)
            }
        }
    }

    private func connectOnce() throws -> MigrationChannel {
        switch self {
        case let .unix(path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw VireoError.system("cannot create a socket for the migration") }
            guard UnixSocketAddress.with(path, { Glibc.connect(fd, $0, $1) }) == 0 else {
                let e = errno; close(fd)
                throw VireoError.system("cannot connect to the destination at unix:\(path)", errno: e,
                                        hint: "start the destination first: vireo run --incoming unix:\(path) ...")
            }
            return MigrationChannel(fd: fd)
        case let .tcp(host, port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
                throw VireoError(.invalidArgument, "migration destination host '\(host)' does not resolve")
            }
            defer { freeaddrinfo(res) }
            var cur: UnsafeMutablePointer<addrinfo>? = first
            var lastErrno: Int32 = 0
            while let ai = cur {
                let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                if fd >= 0 {
                    if Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 {
                        var one: Int32 = 1
                        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                        return MigrationChannel(fd: fd)
                    }
                    lastErrno = errno
                    close(fd)
                }
                cur = ai.pointee.ai_next
            }
            throw VireoError.system("cannot connect to the destination at tcp:\(host):\(port)", errno: lastErrno,
                                    hint: "start the destination first: vireo run --incoming tcp:0.0.0.0:\(port) ...")
        }
    }

    /// Listens and accepts one connection (the destination side).
    func acceptOne() throws -> MigrationChannel {
        let listener: Int32
        switch self {
        case let .unix(path):
            listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard listener >= 0 else { throw VireoError.system("cannot create the migration socket") }
            unlink(path)
            guard UnixSocketAddress.with(path, { bind(listener, $0, $1) }) == 0 else {
                let e = errno; close(listener)
                throw VireoError.system("cannot listen on unix:\(path)", errno: e)
            }
        case let .tcp(host, port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_PASSIVE
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &res) == 0, let ai = res else {
                throw VireoError(.invalidArgument, "cannot listen on '\(host)': it does not resolve")
            }
            defer { freeaddrinfo(res) }
            listener = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard listener >= 0 else { throw VireoError.system("cannot create the migration socket") }
            var one: Int32 = 1
            _ = setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard bind(listener, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
                let e = errno; close(listener)
                throw VireoError.system("cannot listen on tcp:\(host):\(port)", errno: e, hint: "pick a free port")
            }
        }
        defer { close(listener) }
        guard listen(listener, 1) == 0 else { throw VireoError.system("cannot listen for the migration") }
        var fd: Int32 = -1
        repeat { fd = accept(listener, nil, nil) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw VireoError.system("accepting the migration connection failed") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        if case .unix(let path) = self { unlink(path) }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return MigrationChannel(fd: fd)
    }
}

/// A blocking byte stream with whole-buffer sends and receives.
final class MigrationChannel: @unchecked Sendable {
    let fd: Int32
    /// Bytes sent so far (for the bandwidth estimate).
    private(set) var bytesSent: UInt64 = 0
    /// At most this many bytes per second (0: as fast as the link goes), as QEMU's max-bandwidth.
    var bytesPerSecondLimit: UInt64 = 0
    private var limitStart: UInt64 = 0

    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// Gives up a receive that waits longer than `seconds` (0: wait forever).
    func setReceiveTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            // SAFETY: the range [done, count) lies inside `buffer`.
            let n = Glibc.send(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("the migration connection broke while sending")
            }
            done += n
        }
        bytesSent &+= UInt64(buffer.count)
        if bytesPerSecondLimit > 0 {
            if limitStart == 0 { limitStart = monotonicNanos() }
            let due = limitStart &+ bytesSent / bytesPerSecondLimit * 1_000_000_000 &+ bytesSent % bytesPerSecondLimit * 1_000_000_000 / bytesPerSecondLimit
            let now = monotonicNanos()
            if due > now { usleep(UInt32(min((due - now) / 1000, 1_000_000))) }
        }
    }

    func send(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try send($0) } }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            // SAFETY: the range [done, count) lies inside `buffer`.
            let n = recv(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, 0)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw VireoError(.io, "the other VMM did not answer in time") }
                throw VireoError.system("the migration connection broke while receiving")
            }
            if n == 0 { throw VireoError(.io, "the other VMM closed the migration connection") }
            done += n
        }
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try receive(into: $0) }
        return out
    }

    func receiveU8() throws -> UInt8 { try receive(1)[0] }
    func receiveU32() throws -> UInt32 { Self.u32(try receive(4), 0) }
    func receiveU64() throws -> UInt64 { Self.u64(try receive(8), 0) }

    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) } }
    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
