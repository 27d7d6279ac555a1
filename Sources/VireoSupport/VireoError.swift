#if canImport(Glibc)
import Glibc
#endif

/// The one error type of Vireo. Every failure a user can see carries what went wrong
/// (`message`) and, where we know it, what to do about it (`hint`).
public struct VireoError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidArgument = Code("invalid-argument")
        public static let notFound = Code("not-found")
        public static let permissionDenied = Code("permission-denied")
        public static let io = Code("io")
        public static let corrupt = Code("corrupt")
        public static let unsupported = Code("unsupported")
        public static let outOfRange = Code("out-of-range")
        public static let kvm = Code("kvm")
        public static let guest = Code("guest")
        public static let conflict = Code("conflict")
        public static let internalError = Code("internal")
    }

    public var code: Code
    public var message: String
    public var hint: String?
    /// errno of the failing system call, when there was one.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, hint: String? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
        self.errno = errno
    }

    /// One line: the problem, then the fix.
    public var description: String {
        var s = message
        if let errno { s += ": \(VireoError.strerror(errno))" }
        if let hint { s += " (\(hint))" }
        return s
    }

    public static func strerror(_ e: Int32) -> String {
        #if canImport(Glibc)
        if let p = Glibc.strerror(e) { return String(cString: p) }
        #endif
        return "errno \(e)"
    }

    /// An error from a failed system call, taking the current `errno`.
    public static func system(_ what: String, errno e: Int32 = Glibc.errno, hint: String? = nil) -> VireoError {
        let code: Code
        switch e {
        case ENOENT: code = .notFound
        case EACCES, EPERM: code = .permissionDenied
        case EINVAL, ERANGE: code = .invalidArgument
        default: code = .io
        }
        return VireoError(code, what, hint: hint, errno: e)
    }
}
