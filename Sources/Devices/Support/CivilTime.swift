/// Proleptic Gregorian calendar conversion (UTC), without libc's gmtime/timegm so it is pure,
/// thread-safe and total (never traps for any Int64 within +-10^12 years; clamps beyond).
public struct CivilTime: Sendable, Equatable {
    public var year: Int
    public var month: Int    // 1...12
    public var day: Int      // 1...31
    public var hour: Int
    public var minute: Int
    public var second: Int
    public var weekday: Int  // 0 = Sunday

    public init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0) {
        self.year = year; self.month = month; self.day = day
        self.hour = hour; self.minute = minute; self.second = second
        self.weekday = 0
        self.weekday = Self.weekday(days: Self.daysFromCivil(year, month, day))
    }

    public init(unixSeconds raw: Int64) {
        let limit: Int64 = 86_400 * 365 * 1_000_000_000
        let t = min(max(raw, -limit), limit)
        var days = t / 86_400
        var secs = t % 86_400
        if secs < 0 { secs += 86_400; days -= 1 }
        hour = Int(secs / 3600); minute = Int(secs % 3600 / 60); second = Int(secs % 60)
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        day = Int(doy - (153 * mp + 2) / 5 + 1)
        month = Int(mp < 10 ? mp + 3 : mp - 9)
        year = Int(yoe + era * 400 + (month <= 2 ? 1 : 0))
        weekday = Self.weekday(days: days)
    }

    /// Seconds since the epoch; fields are clamped into range first.
    public var unixSeconds: Int64 {
        let y = min(max(year, -1_000_000), 1_000_000)
        let d = Self.daysFromCivil(y, min(max(month, 1), 12), min(max(day, 1), 31))
        return d * 86_400 + Int64(min(max(hour, 0), 23) * 3600 + min(max(minute, 0), 59) * 60 + min(max(second, 0), 60))
    }

    static func daysFromCivil(_ year: Int, _ month: Int, _ day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let m = Int64(month)
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func weekday(days: Int64) -> Int {
        let w = (days + 4) % 7   // 1970-01-01 was a Thursday
        return Int(w < 0 ? w + 7 : w)
    }
}
