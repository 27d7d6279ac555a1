/// Parsing and printing of byte sizes the way users write them: `512M`, `2G`, `1024`, `64K`.
public enum ByteSize {
    /// Parses `N[K|M|G|T][iB|B]` (binary units). A bare number is bytes unless `defaultUnit` says otherwise.
    public static func parse(_ text: String, defaultUnit: UInt64 = 1) -> UInt64? {
        var s = Substring(text.trimmingWhitespace())
        guard !s.isEmpty else { return nil }
        var lower = s.lowercased()
        for suffix in ["ib", "b"] where lower.hasSuffix(suffix) && lower.count > suffix.count {
            let candidate = lower.dropLast(suffix.count)
            if let last = candidate.last, "kmgtpe".contains(last) || suffix == "b" {
                s = s.dropLast(suffix.count); lower = String(candidate); break
            }
        }
        var multiplier = defaultUnit
        if let last = lower.last, let shift = ["k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60][String(last)] as Int? {
            multiplier = UInt64(1) << UInt64(shift)
            s = s.dropLast()
        }
        guard !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(s) else { return nil }
        let (r, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : r
    }

    /// `536870912` -> `512 MiB`
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = bytes, i = 0
        while value >= 1024, value % 1024 == 0, i < units.count - 1 { value /= 1024; i += 1 }
        if i == 0 && bytes >= 1024 {
            // not a round number: one decimal in the largest unit
            var d = Double(bytes); var j = 0
            while d >= 1024, j < units.count - 1 { d /= 1024; j += 1 }
            return "\((d * 10).rounded() / 10) \(units[j])"
        }
        return "\(value) \(units[i])"
    }
}

extension String {
    public func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
