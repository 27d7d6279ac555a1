import ArgumentParser
import DiskImage
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo disk ...`: qemu-img-style image tools.
public struct DiskCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "disk", abstract: "Create, inspect, convert and snapshot disk images (qemu-img compatible verbs).",
        subcommands: [DiskCreate.self, DiskInfo.self, DiskCheck.self, DiskConvert.self, DiskSnapshot.self,
                      DiskCommit.self, DiskRebase.self, DiskResize.self, DiskCompare.self, DiskMap.self, DiskAmend.self, DiskMeasure.self, DiskBench.self, DiskCrashWriter.self])
    public init() {}
}

/// Options shared by commands that open images.
struct ImageOptions: ParsableArguments {
    @Option(name: .customLong("backing-policy"), help: "Which backing file names to follow: any, confined (image's directory only), forbidden.")
    var backingPolicy: String = "any"

    func policy() throws -> BackingPolicy {
        switch backingPolicy {
        case "any": return .any
        case "confined": return .confined
        case "forbidden": return .forbidden
        default: throw ValidationError("--backing-policy must be any, confined or forbidden")
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument { case human, json }

func parseFormat(_ s: String?) throws -> DiskImageFormat? {
    guard let s else { return nil }
    guard let f = DiskImageFormat(name: s) else {
        throw ValidationError("unknown image format '\(s)' (supported: raw, qcow2, vmdk, vhd/vpc, vhdx, vdi)")
    }
    return f
}

/// Runs a command body, turning a VireoError into a one-line message and exit status 1.
func runDisk(_ body: () throws(VireoError) -> Void) throws {
    do {
        try body()
    } catch {
        var msg = "vireo disk: \(error.message)"
        if let e = error.errno { msg += ": \(VireoError.strerror(e))" }
        if let h = error.hint { msg += "\n  hint: \(h)" }
        printErr(msg)
        throw ExitCode(1)
    }
}

func printErr(_ s: String) {
    writeFD(2, s + "\n")
}

/// Unbuffered write to a file descriptor (after flushing stdio so output stays ordered).
func writeFD(_ fd: Int32, _ s: String) {
    fflush(nil)
    var bytes = Array(s.utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeMutableBytes { p -> Int in
            // SAFETY: writes from inside the array's own buffer.
            guard let base = p.baseAddress else { return -1 }
            return Glibc.write(fd, base + off, p.count - off)
        }
        if n <= 0 { break }
        off += n
    }
}

/// qemu-img-style progress: `    (42.00/100%)` rewritten in place.
final class ProgressPrinter: @unchecked Sendable {
    let enabled: Bool
    /// The last whole percent printed (-1: none yet).
    var last = -1
    init(_ enabled: Bool) { self.enabled = enabled }
    /// Prints `    (N.00/100%)` each time the progress reaches a new whole percent, as qemu-img
    /// does: at most 101 updates however often the operation reports.
    func update(_ f: Double) {
        guard enabled else { return }
        let pct = Int((min(max(f, 0), 1) * 100).rounded(.down))
        guard pct > last else { return }
        last = pct
        writeFD(1, "    (\(pct).00/100%)\r")
    }
    func finish() { if enabled { writeFD(1, "\n") } }
}

/// Tiny JSON writer with stable key order (qemu-img's output order).
indirect enum JSON {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case int(UInt64)
    case sint(Int64)
    case bool(Bool)
    case null

    func render(indent: Int = 0) -> String {
        let pad = String(repeating: "    ", count: indent + 1), endPad = String(repeating: "    ", count: indent)
        switch self {
        case .object(let kv):
            if kv.isEmpty { return "{}" }
            return "{\n" + kv.map { "\(pad)\"\(JSON.escape($0.0))\": \($0.1.render(indent: indent + 1))" }.joined(separator: ",\n") + "\n\(endPad)}"
        case .array(let a):
            if a.isEmpty { return "[]" }
            return "[\n" + a.map { pad + $0.render(indent: indent + 1) }.joined(separator: ",\n") + "\n\(endPad)]"
        case .string(let s): return "\"\(JSON.escape(s))\""
        case .int(let i): return String(i)
        case .sint(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 { out += "\\u00" + (c.value < 16 ? "0" : "") + String(c.value, radix: 16) } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }
}

/// Parses qemu-img `-o key=value,key=value`.
func parseCreateOptions(_ list: [String]) throws -> [String: String] {
    var out: [String: String] = [:]
    for item in list {
        for kv in item.split(separator: ",") {
            let parts = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw ValidationError("option '\(kv)' is not key=value") }
            out[String(parts[0])] = String(parts[1])
        }
    }
    return out
}

func parseSize(_ s: String, what: String = "size") throws -> UInt64 {
    guard let v = ByteSize.parse(s) else { throw ValidationError("invalid \(what) '\(s)' (examples: 512M, 10G, 4096)") }
    return v
}
