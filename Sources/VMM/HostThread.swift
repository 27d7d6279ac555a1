import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A dedicated host thread (pthread), for vCPUs and device loops: never Swift's cooperative pool,
/// whose few threads a blocking `KVM_RUN` would starve.
public final class HostThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: @Sendable () -> Void
    private var joined = false

    private final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }

    public init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        self.body = body
        let box = Unmanaged.passRetained(Box(body))
        let rc = pthread_create(&thread, nil, { arg in
            // SAFETY: `arg` is the retained Box passed below; released exactly once here.
            guard let arg else { return nil }
            let box = Unmanaged<Box>.fromOpaque(arg).takeRetainedValue()
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw VireoError.system("cannot start thread \(name)", errno: rc)
        }
        _ = vireo_set_thread_name(thread, name)
    }

    public var pthread: pthread_t { thread }

    /// Sends `signal` to this thread (used to kick a vCPU out of KVM_RUN).
    public func signal(_ signo: Int32) { _ = pthread_kill(thread, signo) }

    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }
}
