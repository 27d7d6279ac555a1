import VireoSupport

/// Validation and encoding of the kernel command line (untrusted user input).
/// Named `KernelCommandLine` so it does not shadow the standard library's `CommandLine`.
public enum KernelCommandLine {
    /// x86 Linux's COMMAND_LINE_SIZE (including the NUL), used when the kernel does not say.
    public static let defaultMaxLength = 2047

    /// Checks that `cmdline` is printable ASCII (space through '~'; tabs are not allowed), has no
    /// NUL, and is at most `maxLength` bytes (excluding the terminating NUL). Returns the NUL-terminated
    /// bytes to place in guest memory.
    public static func encode(_ cmdline: String, maxLength: Int) throws -> [UInt8] {
        var bytes = Array(cmdline.utf8)
        for (i, b) in bytes.enumerated() where b < 0x20 || b > 0x7E {
            let what = b == 0 ? "a NUL byte" : b > 0x7E ? "a non-ASCII byte \(hexString(b))" : "control character \(hexString(b))"
            throw VireoError(.invalidArgument, "kernel command line has \(what) at position \(i)",
                             hint: "use printable ASCII only, separating parameters with spaces")
        }
        guard bytes.count <= maxLength else {
            throw VireoError(.invalidArgument,
                             "kernel command line is \(bytes.count) bytes; this kernel accepts at most \(maxLength)",
                             hint: "shorten --cmdline")
        }
        bytes.append(0)
        return bytes
    }

    /// Throws the same errors as `encode`, discarding the bytes.
    public static func validate(_ cmdline: String, maxLength: Int = defaultMaxLength) throws {
        _ = try encode(cmdline, maxLength: maxLength)
    }
}
