import CLinux
import Devices
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The serial console as a unix socket (`vireo run --console-socket PATH`, mode 0600).
///
/// Any number of clients (up to `maxClients`) may be connected at once. Every byte the guest
/// writes to COM1 goes to each of them (and, as before, to the log file); bytes a client sends
/// go to the UART's receive FIFO, interleaved between clients in the order they are read.
///
/// Never blocking the guest: the vCPU thread only appends the output byte to each client's
/// outbox under a short lock and (once per batch) signals an eventfd; this server's own thread
/// does all socket I/O, non-blocking. A client that does not read falls behind: once
/// `clientBacklogLimit` bytes are waiting for it (on top of its socket buffer of
/// `clientSocketBuffer`), it is disconnected and the VMM's stderr says so. The other clients
/// and the guest never wait for it.
///
/// Input back-pressure: a client's bytes are handed to the UART only as far as its receive
/// buffer has room; the rest waits here and the server stops reading that client until it is
/// taken, so a fast sender is slowed down by its own socket filling up (nothing is dropped).
public final class ConsoleServer: @unchecked Sendable {
    public static let clientBacklogLimit = 64 << 10
    public static let clientSocketBuffer: Int32 = 16 << 10
    public static let maxClients = 64
    static let batchMicroseconds: UInt32 = 2000

    public let path: String
    private let listenFD: OwnedFD
    private let stop: StopSignal
    private let wake: EventFD
    private var thread: HostThread?

    /// Output waiting for one client. A class, so the vCPU thread appends in place.
    private final class Outbox {
        var bytes: [UInt8] = []
        var overflowed = false
    }
    private struct Shared {
        var outboxes: [Int32: Outbox] = [:]
        var wakePending = false
    }
    private let shared = Mutex(Shared())

    /// Binds and listens on `path` (replacing a stale socket file); `start` begins serving.
    public init(path: String, stop: StopSignal) throws {
        self.path = path
        self.stop = stop
        wake = try EventFD()
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("cannot create the console socket") }
        listenFD = OwnedFD(taking: fd)
        guard !path.isEmpty, UnixSocketAddress.fits(path) else {
            throw VireoError(.invalidArgument, "--console-socket '\(path)' must be 1 to 107 bytes (a unix socket path)")
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw VireoError(.invalidArgument, "--console-socket \(path) exists and is not a socket", hint: "remove it or give another path")
            }
            unlink(path)
        }
        let rc = UnixSocketAddress.with(path) { bind(fd, $0, $1) }
        guard rc == 0 else { throw VireoError.system("cannot bind the console socket \(path)") }
        chmod(path, 0o600)
        guard listen(fd, 16) == 0 else { throw VireoError.system("cannot listen on \(path)") }
    }

    /// Starts the server thread; client input goes to `uart`.
    func start(input uart: Serial16550) throws {
        thread = try HostThread(name: "console") { [self] in self.serve(uart: uart) }
    }

    /// Removes the socket file.
    public func remove() { unlink(path) }

    /// Called by the vCPU thread for every byte the guest transmits. Never blocks on a client.
    func broadcast(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        let signal = shared.withLock { s -> Bool in
            guard !s.outboxes.isEmpty else { return false }
            for box in s.outboxes.values where !box.overflowed {
                if box.bytes.count + bytes.count > Self.clientBacklogLimit {
                    box.overflowed = true
                    box.bytes = []
                } else {
                    box.bytes.append(contentsOf: bytes)
                }
            }
            if s.wakePending { return false }
            s.wakePending = true
            return true
        }
        if signal { wake.signal() }
    }

    // MARK: The server thread

    private func serve(uart: Serial16550) {
        var input: [Int32: [UInt8]] = [:]   // bytes read from a client, not yet taken by the UART
        var order: [Int32] = []              // clients in connection order
        var buffer = [UInt8](repeating: 0, count: 4096)

        func drop(_ fd: Int32, _ why: String?) {
            shared.withLock { _ = $0.outboxes.removeValue(forKey: fd) }
            input[fd] = nil
            order.removeAll { $0 == fd }
            close(fd)
            if let why { Self.log("vireo: console client dropped: \(why)") }
        }

        while true {
            var fds = [pollfd(fd: stop.eventFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: order.count < Self.maxClients ? listenFD.rawValue : -1, events: Int16(POLLIN), revents: 0)]
            let waiting = shared.withLock { s in Set(s.outboxes.filter { !$0.value.bytes.isEmpty || $0.value.overflowed }.keys) }
            for fd in order {
                var ev: Int16 = 0
                if input[fd, default: []].isEmpty { ev |= Int16(POLLIN) }
                if waiting.contains(fd) { ev |= Int16(POLLOUT) }
                // (A client whose input is still queued is not polled at all unless output waits:
                // a hang-up it already sent would otherwise wake this loop without end.)
                if ev != 0 { fds.append(pollfd(fd: fd, events: ev, revents: 0)) }
            }
            let inputWaiting = input.values.contains { !$0.isEmpty }
            let n = poll(&fds, nfds_t(fds.count), inputWaiting ? 10 : -1)
            if n < 0 && errno != EINTR { Self.log("vireo: console socket: poll failed: \(VireoError.strerror(errno))"); return }

            if fds[1].revents != 0 {
                // Output arrived: let a burst gather for a moment (one wake-up and one send per
                // batch rather than per byte; the guest writes one byte per exit).
                // Drain first, then clear the flag: a byte broadcast after the clear signals
                // again; one broadcast in between is flushed below (no lost wake-up).
                usleep(Self.batchMicroseconds)
                wake.drain()
                shared.withLock { $0.wakePending = false }
            }
            if fds[2].revents != 0 {
                while order.count < Self.maxClients {
                    let c = accept(listenFD.rawValue, nil, nil)
                    if c < 0 { break }
                    _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
                    var size = Self.clientSocketBuffer
                    _ = setsockopt(c, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
                    shared.withLock { $0.outboxes[c] = Outbox() }
                    order.append(c)
                    input[c] = []
                }
            }
            // Client input: read only from clients whose previous bytes the UART has taken.
            for p in fds.dropFirst(3) where p.revents != 0 {
                let fd = p.fd
                guard order.contains(fd), input[fd, default: []].isEmpty,
                      p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 else { continue }
                let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if got > 0 { input[fd] = Array(buffer[0..<got]) }
                else if got == 0 || (errno != EAGAIN && errno != EINTR) { drop(fd, nil) }
            }
            // Output: what the guest wrote since the last pass.
            for fd in order {
                switch flush(fd) {
                case .ok: break
                case .gone: drop(fd, nil)
                case .behind: drop(fd, "it fell more than \(Self.clientBacklogLimit >> 10) KiB behind the guest's output (it stopped reading)")
                }
            }
            // Input into the UART, as far as its receive buffer has room.
            for fd in order {
                guard var pending = input[fd], !pending.isEmpty else { continue }
                let room = uart.inputCapacity - uart.pendingInput
                guard room > 0 else { break }
                let taken = uart.enqueueInput(pending.prefix(room))
                pending.removeFirst(taken)
                input[fd] = pending
            }
            if stop.isStopping {
                // The socket file goes first: a client (the daemon) that finds its connection
                // closed and the file gone knows the VM stopped rather than that it was dropped.
                remove()
                for fd in order { _ = flush(fd); close(fd) }
                return
            }
        }
    }

    private enum FlushResult { case ok, gone, behind }

    /// Sends what is queued for `fd` without blocking.
    private func flush(_ fd: Int32) -> FlushResult {
        let (bytes, overflowed) = shared.withLock { s -> ([UInt8], Bool) in
            guard let box = s.outboxes[fd] else { return ([], false) }
            let b = box.bytes
            box.bytes = []
            return (b, box.overflowed)
        }
        if overflowed { return .behind }
        guard !bytes.isEmpty else { return .ok }
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno != EAGAIN { return .gone }
            break
        }
        if sent < bytes.count {
            let rest = Array(bytes[sent...])
            return shared.withLock { s -> FlushResult in
                guard let box = s.outboxes[fd] else { return .ok }
                if box.overflowed { return .behind }
                if rest.count + box.bytes.count > Self.clientBacklogLimit { box.overflowed = true; box.bytes = []; return .behind }
                box.bytes = rest + box.bytes
                return .ok
            }
        }
        return .ok
    }

    private static func log(_ s: String) {
        writeStderrLine(s)
    }
}
