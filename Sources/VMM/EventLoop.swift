import CLinux
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The device back ends' thread: one epoll loop over ioeventfds (queue doorbells), TAP and
/// socket descriptors, and the machine's stop eventfd. vCPU threads never run back-end I/O.
///
/// A handler returns true when it stopped early with work pending (a back end's per-call
/// budget): the loop calls it again after one non-blocking pass over the other sources, so one
/// busy device cannot starve the rest. Timers run from the same thread.
///
/// Concurrency: `add`/`remove` may be called from any thread (the handler table is locked);
/// handlers and timers run only on the loop thread.
public final class EventLoop: @unchecked Sendable {
    public typealias Handler = @Sendable (_ events: UInt32) -> Bool

    private struct Timer { let interval: UInt64; var due: UInt64; let body: @Sendable () -> Void }

    private let epfd: Int32
    private let stopFD: Int32
    private let handlers = Mutex<[Int32: Handler]>([:])
    private let timers = Mutex<[Timer]>([])
    private var thread: HostThread?

    init(stopFD: Int32) throws {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw VireoError.system("cannot create the device event loop (epoll)") }
        epfd = fd
        self.stopFD = stopFD
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.fd = stopFD
        guard epoll_ctl(epfd, EPOLL_CTL_ADD, stopFD, &ev) == 0 else {
            close(fd)
            throw VireoError.system("cannot watch the stop eventfd")
        }
    }

    deinit { close(epfd) }

    /// Watches `fd` for `events` (EPOLLIN by default; add EPOLLET for edge-triggered sources).
    public func add(fd: Int32, events: UInt32 = EPOLLIN.rawValue, _ handler: @escaping Handler) throws {
        handlers.withLock { $0[fd] = handler }
        var ev = epoll_event()
        ev.events = events
        ev.data.fd = fd
        guard epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 else {
            let e = errno
            handlers.withLock { $0[fd] = nil }
            throw VireoError.system("cannot add descriptor \(fd) to the event loop", errno: e)
        }
    }

    public func modify(fd: Int32, events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.fd = fd
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    public func remove(fd: Int32) {
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
        handlers.withLock { $0[fd] = nil }
    }

    /// Runs `body` on the loop thread every `milliseconds`.
    public func addTimer(milliseconds: UInt64, _ body: @escaping @Sendable () -> Void) {
        let ns = milliseconds &* 1_000_000
        timers.withLock { $0.append(Timer(interval: ns, due: Self.now() &+ ns, body: body)) }
    }

    /// Runs `body` once on the loop thread after `nanoseconds`.
    public func after(nanoseconds: UInt64, _ body: @escaping @Sendable () -> Void) {
        timers.withLock { $0.append(Timer(interval: 0, due: Self.now() &+ nanoseconds, body: body)) }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    func start() throws {
        thread = try HostThread(name: "vireo-io") { [self] in self.loop() }
    }

    func join() { thread?.join() }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        var again: [Int32] = []
        while true {
            var timeout: Int32 = -1
            if !again.isEmpty { timeout = 0 } else if let next = timers.withLock({ $0.map(\.due).min() }) {
                let now = Self.now()
                timeout = next <= now ? 0 : Int32(min((next - now) / 1_000_000 + 1, 60_000))
            }
            let n = epoll_wait(epfd, &events, Int32(events.count), timeout)
            if n < 0 && errno != EINTR { DebugLog.log("event loop: epoll_wait failed: \(VireoError.strerror(errno))"); return }
            var ready: [(Int32, UInt32)] = []
            for i in 0..<max(0, Int(n)) {
                let fd = events[i].data.fd
                if fd == stopFD { return }
                ready.append((fd, events[i].events))
            }
            // Sources that still had work after their budget, then the new ones.
            for fd in again where !ready.contains(where: { $0.0 == fd }) { ready.append((fd, 0)) }
            again.removeAll(keepingCapacity: true)
            for (fd, ev) in ready {
                guard let h = handlers.withLock({ $0[fd] }) else { continue }
                if h(ev) { again.append(fd) }
            }
            runTimers()
        }
    }

    private func runTimers() {
        let now = Self.now()
        let due: [@Sendable () -> Void] = timers.withLock { ts in
            var out: [@Sendable () -> Void] = []
            for i in ts.indices where ts[i].due <= now {
                out.append(ts[i].body)
                ts[i].due = now &+ ts[i].interval
            }
            ts.removeAll { $0.interval == 0 && $0.due <= now }   // one-shot timers that just ran
            return out
        }
        for body in due { body() }
    }
}

/// An eventfd owned by the VMM (doorbells, irqfds, wake-ups).
final class EventFD: @unchecked Sendable {
    let fd: Int32
    init() throws {
        fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw VireoError.system("cannot create an eventfd") }
    }
    deinit { close(fd) }
    func signal() { var one: UInt64 = 1; _ = write(fd, &one, 8) }
    /// Clears the counter; returns whether it was set.
    @discardableResult func drain() -> Bool { var v: UInt64 = 0; return read(fd, &v, 8) == 8 }
}
