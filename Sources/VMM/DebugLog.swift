import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Diagnostics for the VMM's own behaviour, on stderr when VIREO_DEBUG is set.
enum DebugLog {
    static let enabled: Bool = getenv("VIREO_DEBUG") != nil

    @inline(__always)
    static func log(_ message: @autoclosure () -> String) {
        guard enabled else { return }
        writeStderrLine("vireo[debug] \(message())")
    }
}
