import GuestMemory
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// virtio-vsock (type 19), stream sockets only, bridged to host unix sockets the way
/// Firecracker does it:
/// * host -> guest: a host program connects to `socketPath` and writes `CONNECT <port>\n`; the
///   device sends the guest a REQUEST for that port and, once the guest accepts, answers
///   `OK <hostport>\n` on the unix socket; then bytes flow both ways.
/// * guest -> host: a guest connection to CID 2 port P is connected to `socketPath_P`; RST when
///   nobody listens there.
/// Credit-based flow control (buf_alloc/fwd_cnt) in both directions; unix sockets are
/// non-blocking and bytes the socket cannot take yet are buffered (bounded by our buf_alloc).
///
/// Queues: rx 0, tx 1, event 2 (unused). Host sockets are watched by the VMM's event loop
/// (`watch`/`unwatch`, edge-triggered); their readiness is reported with `noteReady(fd:)`
/// followed by a kick of queue 0. Malformed packets from the guest get RST; a chain of the
/// wrong direction is a guest fault (NEEDS_RESET).
///
/// Concurrency: all socket and queue work happens under the transport's back-end lock; only
/// the ready set is shared (its own `Mutex`).
public final class VirtioVsock: VirtioDevice, @unchecked Sendable {
    public let deviceType = VirtioDeviceType.vsock
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes: [UInt16] = [256, 256, 64]
    public let configSize = 8
    public let guestCID: UInt64
    public let socketPath: String
    public static let bufferSize: UInt32 = 256 * 1024
    public static let maxConnections = 1024

    public var watch: ((Int32) -> Void)?
    public var unwatch: ((Int32) -> Void)?

    private final class Conn {
        let fd: Int32
        var hostPort: UInt32 = 0
        var guestPort: UInt32 = 0
        var handshake = false          // host-initiated, waiting for "CONNECT n\n"
        var connecting = false         // REQUEST sent to the guest, waiting for RESPONSE
        var line: [UInt8] = []
        var peerBufAlloc: UInt32 = 0
        var peerFwdCnt: UInt32 = 0
        var txCnt: UInt32 = 0          // bytes sent to the guest
        var fwdCnt: UInt32 = 0         // guest bytes written to the socket
        var lastFwdReported: UInt32 = 0
        var out: [UInt8] = []
        var readable = true
        var hostEOF = false
        init(fd: Int32) { self.fd = fd }
        var credit: UInt32 { peerBufAlloc &- (txCnt &- peerFwdCnt) > peerBufAlloc ? 0 : peerBufAlloc &- (txCnt &- peerFwdCnt) }
    }

    private let listenFD: Int32
    private var conns: [Int32: Conn] = [:]
    private var control: [VsockHeader] = []
    private var heldChain: DescriptorChain?
    /// Set on restore: the guest's connections are gone with the old process, so the guest is
    /// sent VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue.
    private var transportResetPending = false
    private var nextHostPort: UInt32 = 1 << 30
    private let ready = Mutex<[Int32]>([])
    private var queues: [VirtqueueSplit?] = []
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?

    /// Binds the listening socket at `socketPath` (a stale socket file there is replaced).
    public init(guestCID: UInt64, socketPath: String) throws {
        self.guestCID = guestCID
        self.socketPath = socketPath
        var st = stat()
        if lstat(socketPath, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw VireoError(.invalidArgument, "--vsock socket=\(socketPath) exists and is not a socket", hint: "remove it or give another path")
            }
            unlink(socketPath)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("--vsock: cannot create a unix socket") }
        guard UnixSocketAddress.with(socketPath, { bind(fd, $0, $1) }) == 0, listen(fd, 64) == 0 else {
            let e = errno; Glibc.close(fd)
            throw VireoError.system("--vsock: cannot listen on \(socketPath)", errno: e, hint: "check the directory exists and is writable")
        }
        listenFD = fd
    }

    deinit {
        for c in conns.values { Glibc.close(c.fd) }
        Glibc.close(listenFD)
        unlink(socketPath)
    }

    public var listenerFD: Int32 { listenFD }

    /// A watched descriptor became ready (any thread); kick queue 0 afterwards.
    public func noteReady(fd: Int32) { ready.withLock { $0.append(fd) } }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count where offset + i < 8 { data[i] = UInt8(truncatingIfNeeded: guestCID >> (8 * UInt64(offset + i))) }
    }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws {
        queues = activation.queues
        memory = activation.memory
        interrupt = activation.interrupt
    }

    public func reset() {
        for c in conns.values { drop(c) }
        conns = [:]; control = []; heldChain = nil; queues = []; memory = nil; interrupt = nil; transportResetPending = false
    }

    public func saveState() -> VirtioBackendState { .vsock(heldHead: heldChain?.head) }

    public func restoreState(_ state: VirtioBackendState) throws {
        guard case let .vsock(head) = state else { throw VirtioStateError("a vsock device has no state of kind \(state.kind)") }
        if let head {
            guard let queue = queues.first ?? nil else { throw VirtioStateError("virtio-vsock: a held buffer without a receive queue") }
            heldChain = try queue.walkChain(head: head)
        }
        transportResetPending = true
    }

    /// Sends the pending transport reset on the event queue (queue 2) when the driver gave it a buffer.
    private func sendTransportReset() throws {
        guard transportResetPending, queues.count > 2, let queue = queues[2], let memory, let interrupt else { return }
        guard let chain = try queue.popAvailableChain() else { return }
        var cursor = ChainCursor.writer(chain, memory)
        guard cursor.remaining >= 4 else {
            throw VirtqueueError.unexpectedBufferDirection("virtio-vsock event buffers must be device-writable and hold 4 bytes")
        }
        try cursor.write([0, 0, 0, 0])     // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
        queue.addUsed(head: chain.head, length: 4)
        transportResetPending = false
        if queue.needsNotification() { interrupt.signalQueue(2) }
    }

    public func processQueue(_ index: Int) throws -> Bool {
        guard memory != nil else { return false }
        if transportResetPending { try sendTransportReset() }
        if index == 1 { try transmit() }
        if index == 0 || index == 1 { return try receive() }
        return false
    }

    // MARK: guest -> host

    private func transmit() throws {
        guard queues.count > 1, let queue = queues[1], let memory, let interrupt else { return }
        var used = false
        var budget = Int(queue.layout.size) * 2
        repeat {
            while budget > 0, let chain = try queue.popAvailableChain() {
                guard chain.writable.isEmpty, chain.readableLength >= UInt64(VsockHeader.size) else {
                    throw VirtqueueError.unexpectedBufferDirection("virtio-vsock tx packets must be device-readable and hold a header")
                }
                var cursor = ChainCursor.reader(chain, memory)
                let hdrBytes = try cursor.readBytes(VsockHeader.size)
                if let h = VsockHeader(bytes: hdrBytes) {
                    let payloadLength = min(UInt64(h.len), cursor.remaining, 64 * 1024)
                    let payload = try cursor.readBytes(Int(payloadLength))
                    handleGuest(h, payload: payload)
                }
                queue.addUsed(head: chain.head, length: 0)
                used = true
                budget -= 1
            }
        } while budget > 0 && queue.enableNotificationAndCheck()
        if used && queue.needsNotification() { interrupt.signalQueue(1) }
    }

    private func key(_ h: VsockHeader) -> Conn? {
        conns.values.first { $0.hostPort == h.dstPort && $0.guestPort == h.srcPort && !$0.handshake }
    }

    private func handleGuest(_ h: VsockHeader, payload: [UInt8]) {
        guard h.srcCID == guestCID, h.dstCID == VsockHeader.hostCID, h.type == VsockHeader.typeStream else {
            if h.op != VsockHeader.Op.rst { reply(to: h, op: VsockHeader.Op.rst) }
            return
        }
        let conn = key(h)
        if let conn { conn.peerBufAlloc = h.bufAlloc; conn.peerFwdCnt = h.fwdCnt }
        switch h.op {
        case VsockHeader.Op.request:
            guard conn == nil, conns.count < Self.maxConnections, let c = connectHost(port: h.dstPort) else {
                reply(to: h, op: VsockHeader.Op.rst); return
            }
            c.hostPort = h.dstPort; c.guestPort = h.srcPort
            c.peerBufAlloc = h.bufAlloc; c.peerFwdCnt = h.fwdCnt
            conns[c.fd] = c
            watch?(c.fd)
            send(c, op: VsockHeader.Op.response)
        case VsockHeader.Op.response:
            guard let conn, conn.connecting else { reply(to: h, op: VsockHeader.Op.rst); return }
            conn.connecting = false
            conn.out += Array("OK \(conn.hostPort)\n".utf8)
            flush(conn)
        case VsockHeader.Op.rw:
            guard let conn, !conn.connecting else { reply(to: h, op: VsockHeader.Op.rst); return }
            conn.out += payload
            flushAndCount(conn)
        case VsockHeader.Op.creditRequest:
            if let conn { send(conn, op: VsockHeader.Op.creditUpdate) }
        case VsockHeader.Op.creditUpdate:
            break
        case VsockHeader.Op.shutdown:
            guard let conn else { return }
            if h.flags & 3 == 3 { send(conn, op: VsockHeader.Op.rst); close(conn) } else if h.flags & 2 != 0 { _ = shutdown(conn.fd, Int32(SHUT_WR)) }
        case VsockHeader.Op.rst:
            if let conn { close(conn) }
        default:
            reply(to: h, op: VsockHeader.Op.rst)
        }
    }

    private func connectHost(port: UInt32) -> Conn? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard UnixSocketAddress.with("\(socketPath)_\(port)", { connect(fd, $0, $1) }) == 0 else { Glibc.close(fd); return nil }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return Conn(fd: fd)
    }

    private func flush(_ c: Conn) {
        while !c.out.isEmpty {
            let n = c.out.withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            if n > 0 {
                c.out.removeFirst(n)
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            send(c, op: VsockHeader.Op.rst); close(c); return
        }
    }

    // MARK: host -> guest

    private func receive() throws -> Bool {
        guard queues.count > 0, let queue = queues[0], let memory, let interrupt else { return false }
        acceptAll()
        for fd in ready.withLock({ r in defer { r.removeAll() }; return r }) {
            guard let c = conns[fd] else { continue }
            c.readable = true
            flushAndCount(c)
        }
        for c in Array(conns.values) where c.handshake && c.readable { readHandshake(c) }
        var used = false
        defer { if used && queue.needsNotification() { interrupt.signalQueue(0) } }
        var budget = Int(queue.layout.size)
        // Control packets first, then data.
        while budget > 0 {
            let data = control.isEmpty ? conns.values.first { !$0.handshake && !$0.connecting && $0.readable && !$0.hostEOF && $0.credit > 0 } : nil
            if control.isEmpty && data == nil { break }
            guard let chain = try takeChain(queue) else { return false }
            var cursor = ChainCursor.writer(chain, memory)
            if !control.isEmpty {
                try cursor.write(control.removeFirst().bytes)
            } else if let c = data {
                let room = min(UInt64(c.credit), cursor.remaining &- UInt64(VsockHeader.size), 64 * 1024)
                var buf = [UInt8](repeating: 0, count: Int(room))
                let n = buf.withUnsafeMutableBytes { read(c.fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { c.readable = errno == EINTR; heldChain = chain; continue }
                    heldChain = chain; send(c, op: VsockHeader.Op.rst); close(c); continue
                }
                if n == 0 {
                    heldChain = chain
                    c.hostEOF = true
                    var h = header(c, op: VsockHeader.Op.shutdown); h.flags = 3
                    control.append(h)
                    continue
                }
                var h = header(c, op: VsockHeader.Op.rw)
                h.len = UInt32(n)
                c.txCnt &+= UInt32(n)
                try cursor.write(h.bytes)
                try cursor.write(Array(buf[0..<n]))
            }
            queue.addUsed(head: chain.head, length: UInt32(truncatingIfNeeded: cursor.position))
            used = true
            budget -= 1
        }
        return budget == 0
    }

    private func takeChain(_ queue: VirtqueueSplit) throws -> DescriptorChain? {
        if let c = heldChain { heldChain = nil; return c }
        var chain = try queue.popAvailableChain()
        if chain == nil, queue.enableNotificationAndCheck() { chain = try queue.popAvailableChain() }
        guard let chain else { return nil }
        guard chain.readable.isEmpty, chain.writableLength >= UInt64(VsockHeader.size) + 1 else {
            throw VirtqueueError.unexpectedBufferDirection("virtio-vsock rx buffers must be device-writable and larger than a header")
        }
        return chain
    }

    private func acceptAll() {
        while true {
            let fd = accept(listenFD, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            guard conns.count < Self.maxConnections else { Glibc.close(fd); continue }
            let c = Conn(fd: fd)
            c.handshake = true
            conns[fd] = c
            watch?(fd)
        }
    }

    private func readHandshake(_ c: Conn) {
        var b: UInt8 = 0
        while c.line.count < 64 {
            let n = read(c.fd, &b, 1)
            if n < 0 && errno == EAGAIN { c.readable = false; return }
            guard n == 1 else { close(c); return }
            if b == 10 { break }
            c.line.append(b)
        }
        let words = String(decoding: c.line, as: UTF8.self).split(separator: " ")
        guard words.count == 2, words[0] == "CONNECT", let port = UInt32(words[1].trimmingSuffixCR) else {
            c.out = Array("ERROR expected CONNECT <port>\n".utf8); flush(c); close(c); return
        }
        c.handshake = false
        c.connecting = true
        c.guestPort = port
        c.hostPort = nextHostPort
        nextHostPort = nextHostPort == UInt32.max ? 1 << 30 : nextHostPort + 1
        control.append(header(c, op: VsockHeader.Op.request))
    }

    private func header(_ c: Conn, op: UInt16) -> VsockHeader {
        var h = VsockHeader()
        h.srcCID = VsockHeader.hostCID; h.dstCID = guestCID
        h.srcPort = c.hostPort; h.dstPort = c.guestPort
        h.op = op
        h.bufAlloc = Self.bufferSize
        h.fwdCnt = c.fwdCnt
        c.lastFwdReported = c.fwdCnt
        return h
    }

    private func send(_ c: Conn, op: UInt16) { control.append(header(c, op: op)) }

    private func reply(to h: VsockHeader, op: UInt16) {
        var r = VsockHeader()
        r.srcCID = h.dstCID; r.dstCID = h.srcCID; r.srcPort = h.dstPort; r.dstPort = h.srcPort
        r.op = op
        control.append(r)
    }

    /// Flushes buffered guest bytes and reports the freed credit when enough accumulated.
    private func flushAndCount(_ c: Conn) {
        let before = c.out.count
        flush(c)
        guard conns[c.fd] != nil else { return }
        c.fwdCnt &+= UInt32(truncatingIfNeeded: before - c.out.count)
        if c.fwdCnt &- c.lastFwdReported >= Self.bufferSize / 4 { send(c, op: VsockHeader.Op.creditUpdate) }
    }

    private func close(_ c: Conn) {
        drop(c)
        conns[c.fd] = nil
    }

    private func drop(_ c: Conn) {
        unwatch?(c.fd)
        Glibc.close(c.fd)
    }
}

extension Substring {
    var trimmingSuffixCR: Substring { last == "\r" ? dropLast() : self }
}
