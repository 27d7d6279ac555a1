import VireoSupport

/// `vireo host serve --config FILE` (docs/host.md): the daemon's settings in a small TOML file,
/// one `key = value` per line, the keys being the flags' names without the dashes in front:
///
///     # /etc/vireo/host.toml
///     data-dir = "/var/lib/vireo"
///     listen = "0.0.0.0:8443"
///     token-file = "/etc/vireo/token"
///     pool = ["/srv/images", "/srv/disks"]
///     memory-overcommit = 1.2
///     default-network = false
///
/// Values are strings ("..." with \" \\ \n \t escapes, or '...' literal), integers, decimals,
/// true/false, or arrays of strings for repeatable flags. A flag on the command line wins
/// over the file. Anything else is refused with its line number.
public struct HostConfigFile: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case string(String), integer(Int64), decimal(Double), bool(Bool), strings([String])
    }

    /// Each key, what its value must be.
    public enum Kind: Sendable { case string, strings, uint32, decimal, bool }
    public static let keys: [String: Kind] = [
        "socket": .string, "data-dir": .string, "listen": .string, "token-file": .string, "pool": .strings,
        "vmm-binary": .string, "active-memory-window": .uint32, "active-memory-sample": .uint32,
        "memory-overcommit": .decimal, "memory-min-free": .string, "default-network": .bool, "allow-emulated-kernels": .bool,
    ]

    public var values: [String: Value] = [:]
    public let path: String

    public init(path: String, values: [String: Value] = [:]) { self.path = path; self.values = values }

    public static func load(_ path: String) throws(VireoError) -> HostConfigFile {
        let bytes: [UInt8]
        do { bytes = try OwnedFD.readFile(path, limit: 1 << 20, what: "config file") } catch {
            throw VireoError(.notFound, "cannot read the config file \(path): \(error)", hint: "give an existing file to --config (docs/host.md shows one)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw VireoError(.invalidArgument, "the config file \(path) is not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(VireoError) -> HostConfigFile {
        var config = HostConfigFile(path: path)
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            func fail(_ what: String) -> VireoError {
                VireoError(.invalidArgument, "\(path):\(lineNumber): \(what)", hint: "each line is `key = value`; keys: \(keys.keys.sorted().joined(separator: ", ")) (docs/host.md)")
            }
            var scanner = Scanner(Array(rawLine.utf8))
            scanner.skipSpaces()
            if scanner.atEnd || scanner.peek == UInt8(ascii: "#") { continue }
            if scanner.peek == UInt8(ascii: "[") { throw fail("tables ([section]) are not used: put every key at the top level") }
            let key = scanner.bareKey()
            guard !key.isEmpty else { throw fail("expected a key (letters, digits, dashes)") }
            guard let kind = keys[key] else {
                let hint = keys[key.replacing("_", with: "-")] != nil ? " (spell it \(key.replacing("_", with: "-")))" : ""
                throw fail("unknown key '\(key.prefix(60))'\(hint)")
            }
            guard config.values[key] == nil else { throw fail("'\(key)' is set twice") }
            scanner.skipSpaces()
            guard scanner.take(UInt8(ascii: "=")) else { throw fail("expected '=' after '\(key)'") }
            scanner.skipSpaces()
            let value: Value
            switch kind {
            case .string:
                guard let s = try scanner.string(fail) else { throw fail("'\(key)' needs a quoted string, like \(key) = \"...\"") }
                value = .string(s)
            case .strings:
                if let s = try scanner.string(fail) { value = .strings([s]); break }
                guard scanner.take(UInt8(ascii: "[")) else { throw fail("'\(key)' needs a string or an array of strings, like \(key) = [\"/a\", \"/b\"]") }
                var items: [String] = []
                scanner.skipSpaces()
                while !scanner.take(UInt8(ascii: "]")) {
                    guard let s = try scanner.string(fail) else { throw fail("'\(key)': expected a quoted string in the array") }
                    items.append(s)
                    scanner.skipSpaces()
                    if scanner.take(UInt8(ascii: ",")) { scanner.skipSpaces(); continue }
                    guard scanner.take(UInt8(ascii: "]")) else { throw fail("'\(key)': expected ',' or ']' (an array stays on one line)") }
                    break
                }
                value = .strings(items)
            case .bool:
                let word = scanner.bareKey()
                guard word == "true" || word == "false" else { throw fail("'\(key)' needs true or false") }
                value = .bool(word == "true")
            case .uint32:
                let word = scanner.bareKey()
                guard let n = UInt32(word) else { throw fail("'\(key)' needs a whole number from 0 to \(UInt32.max), not '\(word.prefix(40))'") }
                value = .integer(Int64(n))
            case .decimal:
                let word = scanner.number()
                guard let d = Double(word), d.isFinite else { throw fail("'\(key)' needs a number, like 1.5, not '\(word.prefix(40))'") }
                value = .decimal(d)
            }
            scanner.skipSpaces()
            guard scanner.atEnd || scanner.peek == UInt8(ascii: "#") else { throw fail("unexpected text after the value of '\(key)'") }
            config.values[key] = value
        }
        return config
    }

    public func string(_ key: String) -> String? { if case let .string(s)? = values[key] { return s }; return nil }
    public func strings(_ key: String) -> [String]? { if case let .strings(s)? = values[key] { return s }; return nil }
    public func bool(_ key: String) -> Bool? { if case let .bool(b)? = values[key] { return b }; return nil }
    public func uint32(_ key: String) -> UInt32? { if case let .integer(n)? = values[key] { return UInt32(exactly: n) }; return nil }
    public func decimal(_ key: String) -> Double? { if case let .decimal(d)? = values[key] { return d }; return nil }

    private struct Scanner {
        let bytes: [UInt8]
        var i = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes.last == 13 ? Array(bytes.dropLast()) : bytes }
        var atEnd: Bool { i >= bytes.count }
        var peek: UInt8? { atEnd ? nil : bytes[i] }
        mutating func skipSpaces() { while let c = peek, c == 32 || c == 9 { i += 1 } }
        mutating func take(_ c: UInt8) -> Bool { if peek == c { i += 1; return true }; return false }
        mutating func bareKey() -> String {
            let start = i
            while let c = peek, (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 45 || c == 95 { i += 1 }
            return String(decoding: bytes[start..<i], as: UTF8.self)
        }
        mutating func number() -> String {
            let start = i
            while let c = peek, (c >= 48 && c <= 57) || c == 46 || c == 45 || c == 43 || c == 101 || c == 69 || c == 95 { i += 1 }
            return String(decoding: bytes[start..<i], as: UTF8.self).replacing("_", with: "")
        }
        /// A "basic" or 'literal' string, nil if none starts here.
        mutating func string(_ fail: (String) -> VireoError) throws(VireoError) -> String? {
            guard let q = peek, q == 34 || q == 39 else { return nil }
            i += 1
            var out: [UInt8] = []
            while let c = peek {
                i += 1
                if c == q { return String(decoding: out, as: UTF8.self) }
                if c == 92 && q == 34 {
                    guard let e = peek else { break }
                    i += 1
                    switch e {
                    case 34: out.append(34)
                    case 92: out.append(92)
                    case 110: out.append(10)
                    case 116: out.append(9)
                    default: throw fail("unknown escape \\\(String(UnicodeScalar(e))) in a string (use \\\" \\\\ \\n \\t, or a 'literal string')")
                    }
                    continue
                }
                out.append(c)
            }
            throw fail("a string is not closed on its line")
        }
    }
}
