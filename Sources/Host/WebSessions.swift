import Synchronization

/// The web console's logins on one TCP listener: `POST /ui/login` with the listener's bearer
/// token makes a session, whose random id goes back in an HttpOnly, SameSite=Strict cookie
/// (the token itself never goes into a cookie or a URL). Sessions live in the daemon's memory
/// only: they end after `lifetime`, at logout, or when the daemon restarts.
final class WebSessions: Sendable {
    static let cookieName = "vireo_session"
    /// Seconds a session lasts from its login.
    static let lifetime: Int64 = 12 * 3600
    /// At most this many live sessions; a login beyond them ends the oldest.
    static let limit = 256

    private let sessions = Mutex<[String: ContinuousClock.Instant]>([:])

    /// A new session; its id (64 hex digits from the system's CSPRNG) for the cookie.
    func create() -> String {
        var rng = SystemRandomNumberGenerator()
        var id = ""
        for _ in 0..<4 {
            let v = rng.next() as UInt64
            let hex = String(v, radix: 16)
            id += String(repeating: "0", count: 16 - hex.count) + hex
        }
        let expiry = ContinuousClock.now + .seconds(Self.lifetime)
        sessions.withLock { s in
            let now = ContinuousClock.now
            s = s.filter { $0.value > now }
            if s.count >= Self.limit, let oldest = s.min(by: { $0.value < $1.value })?.key { s[oldest] = nil }
            s[id] = expiry
        }
        return id
    }

    /// Whether `id` is a live session.
    func isValid(_ id: String) -> Bool {
        sessions.withLock { s in
            guard let expiry = s[id] else { return false }
            if expiry <= ContinuousClock.now { s[id] = nil; return false }
            return true
        }
    }

    func remove(_ id: String) { _ = sessions.withLock { $0.removeValue(forKey: id) } }

    var count: Int { sessions.withLock { $0.count } }

    /// The session id in a request's Cookie headers, if any (well-formed: 64 hex digits).
    static func id(in req: HTTPRequest) -> String? {
        for (name, value) in req.headers where name.lowercased() == "cookie" {
            for pair in value.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard kv.count == 2, kv[0].trimmingSpaces == cookieName else { continue }
                let v = kv[1].trimmingSpaces
                if v.utf8.count == 64 && v.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) { return v }
            }
        }
        return nil
    }

    static func setCookie(_ id: String) -> (String, String) {
        ("Set-Cookie", "\(cookieName)=\(id); Path=/; Max-Age=\(lifetime); HttpOnly; SameSite=Strict")
    }

    static var clearCookie: (String, String) {
        ("Set-Cookie", "\(cookieName)=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
    }

    /// Compares two strings in time that depends on their lengths only (for the token).
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}
