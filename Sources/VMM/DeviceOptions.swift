
import VireoConfig
import VireoSupport

/// Parsing of the virtio device flags: `--disk`, `--net`, `--rng`, `--balloon`, `--vsock`,
/// `--console`. Each value is a comma-separated `key=value` list; every error names the flag,
/// the bad part and the accepted form.
public enum DeviceOptions {
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
        public init(_ s: String) { description = s }
    }

    /// Splits `a=1,b=2` into ordered pairs; rejects empty keys, duplicates and unknown keys.
    static func pairs(_ text: String, flag: String, allowed: [String], form: String) throws -> [String: String] {
        var out: [String: String] = [:]
        guard !text.isEmpty else { throw ParseError("\(flag) needs a value: \(form)") }
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0])
            guard kv.count == 2, !key.isEmpty else { throw ParseError("\(flag) '\(text)': '\(part)' is not key=value (\(form))") }
            guard allowed.contains(key) else {
                throw ParseError("\(flag) '\(text)': unknown key '\(key)' (accepted: \(allowed.joined(separator: ", ")))")
            }
            guard out[key] == nil else { throw ParseError("\(flag) '\(text)': '\(key)' is given twice") }
            out[key] = String(kv[1])
        }
        return out
    }

    static func bool(_ v: String?, key: String, flag: String) throws -> Bool {
        switch v {
        case nil: return false
        case "on", "true", "yes", "1": return true
        case "off", "false", "no", "0": return false
        case let v?: throw ParseError("\(flag): \(key)=\(v) is not on or off")
        }
    }

    static func number(_ v: String?, key: String, flag: String, max: UInt64 = UInt64.max) throws -> UInt64? {
        guard let v else { return nil }
        guard let n = UInt64(v), n <= max else { throw ParseError("\(flag): \(key)=\(v) is not a whole number\(max == UInt64.max ? "" : " up to \(max)")") }
        return n
    }

    /// The limits the keys give, or nil when none is set (unlimited).
    static func rateLimit(_ kv: [String: String], flag: String) throws -> RateLimit? {
        var r = RateLimit()
        r.bytesPerSecond = try number(kv["bps"], key: "bps", flag: flag) ?? 0
        r.bytesBurst = try number(kv["bps-burst"], key: "bps-burst", flag: flag) ?? 0
        r.opsPerSecond = try number(kv["iops"] ?? kv["pps"], key: kv["iops"] != nil ? "iops" : "pps", flag: flag) ?? 0
        r.opsBurst = try number(kv["iops-burst"] ?? kv["pps-burst"], key: "burst", flag: flag) ?? 0
        return r == RateLimit() ? nil : r
    }

    public static func disk(_ text: String) throws -> VirtioConfig.Disk {
        let form = "path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,backing=any|confined|forbidden][,bps=N][,iops=N][,bps-burst=N][,iops-burst=N]"
        let kv = try pairs(text, flag: "--disk", allowed: ["path", "readonly", "format", "id", "backing", "bps", "iops", "bps-burst", "iops-burst"], form: form)
        guard let path = kv["path"], !path.isEmpty else { throw ParseError("--disk '\(text)': missing path=FILE (\(form))") }
        var d = VirtioConfig.Disk(path: path)
        d.readonly = try bool(kv["readonly"], key: "readonly", flag: "--disk") ? true : nil
        if let f = kv["format"] {
            guard let format = DiskFormat(rawValue: f) else { throw ParseError("--disk: format=\(f) is not raw or qcow2 (convert other formats: vireo disk convert -O qcow2 IN OUT)") }
            d.format = format
        }
        if let b = kv["backing"] {
            guard let rule = BackingRule(rawValue: b) else { throw ParseError("--disk: backing=\(b) is not any, confined or forbidden") }
            d.backing = rule
        }
        if let id = kv["id"] {
            guard VMConfig.isValidDeviceID(id) else {
                throw ParseError("--disk: id=\(id) must be 1 to 20 ASCII letters, digits, '-', '_' or '.' (the guest sees it as the disk serial)")
            }
            d.id = id
        }
        d.rateLimit = try rateLimit(kv, flag: "--disk")
        return d
    }

    public static func net(_ text: String) throws -> VirtioConfig.Net {
        let form = "tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,bps=N][,pps=N][,bps-burst=N][,pps-burst=N]"
        let kv = try pairs(text, flag: "--net", allowed: ["tap", "mac", "bps", "pps", "bps-burst", "pps-burst"], form: form)
        guard let tap = kv["tap"], !tap.isEmpty else { throw ParseError("--net '\(text)': missing tap=NAME (\(form))") }
        guard tap.utf8.count < 16, tap.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw ParseError("--net: tap=\(tap) is not a valid interface name (up to 15 letters, digits, - _ .)")
        }
        var n = VirtioConfig.Net(tap: tap)
        if let m = kv["mac"] { _ = try mac(m); n.mac = m }
        n.rateLimit = try rateLimit(kv, flag: "--net")
        return n
    }

    public static func mac(_ text: String) throws -> [UInt8] {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard parts.count == 6, bytes.count == 6 else { throw ParseError("--net: mac=\(text) is not six hex bytes like 52:54:00:12:34:56") }
        guard bytes[0] & 1 == 0 else { throw ParseError("--net: mac=\(text) is a multicast address (the first byte must be even)") }
        return bytes
    }

    public static func balloon(_ text: String) throws -> VirtioConfig.Balloon {
        let form = "size=MIB[,stats=on][,deflate-on-oom=on][,reporting=on][,control=FIFO]"
        let kv = try pairs(text, flag: "--balloon", allowed: ["size", "stats", "deflate-on-oom", "reporting", "control"], form: form)
        var b = VirtioConfig.Balloon()
        guard let size = try number(kv["size"], key: "size", flag: "--balloon", max: 1 << 26) else {
            throw ParseError("--balloon '\(text)': missing size=MIB (\(form))")
        }
        b.targetMiB = size
        b.stats = try bool(kv["stats"], key: "stats", flag: "--balloon")
        b.deflateOnOOM = try bool(kv["deflate-on-oom"], key: "deflate-on-oom", flag: "--balloon")
        b.reporting = try bool(kv["reporting"], key: "reporting", flag: "--balloon")
        if let c = kv["control"] {
            guard !c.isEmpty else { throw ParseError("--balloon: control= needs a path") }
            b.control = c
        }
        return b
    }

    public static func vsock(_ text: String) throws -> VirtioConfig.Vsock {
        let form = "cid=N,socket=PATH"
        let kv = try pairs(text, flag: "--vsock", allowed: ["cid", "socket"], form: form)
        guard let cid = try number(kv["cid"], key: "cid", flag: "--vsock", max: 0xFFFF_FFFE) else {
            throw ParseError("--vsock '\(text)': missing cid=N (\(form))")
        }
        guard cid >= 3 else { throw ParseError("--vsock: cid=\(cid) is reserved (0-2 are the hypervisor and host); give 3 or more") }
        guard let path = kv["socket"], !path.isEmpty else { throw ParseError("--vsock '\(text)': missing socket=PATH (\(form))") }
        guard path.utf8.count < 100 else { throw ParseError("--vsock: socket=\(path) is too long for a unix socket (under 100 bytes; the _PORT suffix needs room)") }
        return VirtioConfig.Vsock(cid: cid, socketPath: path)
    }

    public static func console(_ text: String) throws -> VirtioConfig.Console {
        if text.isEmpty || text == "stdout" || text == "on" { return .stdout }
        if text.hasPrefix("file="), text.count > 5 { return .file(String(text.dropFirst(5))) }
        throw ParseError("--console '\(text)' is not stdout or file=PATH")
    }
}
