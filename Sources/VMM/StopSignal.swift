import CLinux
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The one place a machine's end is decided: the first reason recorded wins, every vCPU is
/// kicked out of KVM_RUN, and the supervising thread is woken through an eventfd.
public final class StopSignal: Sendable {
    private let reason = Mutex<MachineExit?>(nil)
    private let stopping = Atomic<Bool>(false)
    /// Readable once a stop has been requested.
    public let eventFD: Int32

    public init() throws {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw VireoError.system("cannot create an eventfd") }
        eventFD = fd
    }

    deinit { close(eventFD) }

    /// True once any stop was requested; vCPU loops poll this after every interrupted run.
    @inline(__always)
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Records `exit` if no reason was recorded before, then wakes the supervisor.
    public func request(_ exit: MachineExit) {
        let first = reason.withLock { r -> Bool in
            if r == nil { r = exit; return true }
            return false
        }
        stopping.store(true, ordering: .releasing)
        DebugLog.log("stop requested: \(exit)\(first ? "" : " (ignored: already stopping)")")
        if first {
            var one: UInt64 = 1
            _ = write(eventFD, &one, 8)
        }
    }

    public var recorded: MachineExit? { reason.withLock { $0 } }
}
