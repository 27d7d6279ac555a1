import ArgumentParser
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Prints one line to stderr.
func printError(_ line: String) { writeStderrLine(line) }

/// Runs `body`; a VireoError becomes one line on stderr and exit status 1, never a stack dump.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as VireoError {
        printError("vireo: \(e)")
        throw ExitCode(1)
    } catch let e as ExitCode {
        throw e
    } catch let e as VireoAPIErrorLine {
        printError("vireo: \(e.line)")
        throw ExitCode(1)
    } catch {
        printError("vireo: \(error)")
        throw ExitCode(1)
    }
}

/// Parses a size like 512M / 2G for an option, with an error naming the option.
func parseSize(_ text: String, option: String) throws -> UInt64 {
    guard let v = ByteSize.parse(text, defaultUnit: 1 << 20) else {
        throw VireoError(.invalidArgument, "\(option) '\(text)' is not a size; write it like 512M or 2G")
    }
    return v
}
