#if canImport(Glibc)
import Glibc
#endif

/// Writes `line` and a newline to standard error in one write(2) (lines from several threads
/// do not interleave). For the VMM's own messages, where no logger is set up.
public func writeStderrLine(_ line: String) {
    let text = line.hasSuffix("\n") ? line : line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}
