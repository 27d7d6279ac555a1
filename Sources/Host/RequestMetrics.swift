import Synchronization

/// The daemon's own HTTP figures for /metrics: requests by route template, method and status,
/// and a histogram of their durations (head received to response ready; a streamed response
/// counts until its head). Shared by every listener.
final class RequestMetrics: Sendable {
    static let buckets: [Double] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]

    private struct Key: Hashable { var method: String; var route: String; var status: Int }
    private struct Series { var count = 0; var sum = 0.0; var buckets = [Int](repeating: 0, count: RequestMetrics.buckets.count) }
    private let series = Mutex<[Key: Series]>([:])

    func record(method: String, path: String, status: Int, seconds: Double) {
        let route = Self.template(of: path)
        // Only the methods the router knows get their own label (a client cannot grow the map).
        let known = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD"]
        let key = Key(method: known.contains(method) ? method : "other", route: route, status: status)
        series.withLock { all in
            var s = all[key] ?? Series()
            s.count += 1
            s.sum += seconds
            for (i, b) in Self.buckets.enumerated() where seconds <= b { s.buckets[i] += 1 }
            all[key] = s
        }
    }

    /// The route template (Router.routes) a path matches, or "other".
    static func template(of path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        for route in Router.routes {
            let t = route.path.split(separator: "/", omittingEmptySubsequences: true)
            guard t.count == parts.count else { continue }
            if zip(t, parts).allSatisfy({ $0.hasPrefix("{") || $0 == $1 }) { return route.path }
        }
        return "other"
    }

    func render() -> String {
        let all = series.withLock { $0 }.sorted { ($0.key.route, $0.key.method, $0.key.status) < ($1.key.route, $1.key.method, $1.key.status) }
        var out = "# HELP vireo_http_requests_total HTTP requests the daemon answered, by route template, method and status.\n# TYPE vireo_http_requests_total counter\n"
        for (k, s) in all { out += "vireo_http_requests_total{route=\"\(k.route)\",method=\"\(k.method)\",status=\"\(k.status)\"} \(s.count)\n" }
        out += "# HELP vireo_http_request_duration_seconds Time from a request's arrival to its response, by route template and method.\n# TYPE vireo_http_request_duration_seconds histogram\n"
        var merged: [String: (method: String, route: String, s: Series)] = [:]
        for (k, s) in all {
            let id = k.route + " " + k.method
            var m = merged[id] ?? (k.method, k.route, Series())
            m.s.count += s.count; m.s.sum += s.sum
            for i in m.s.buckets.indices { m.s.buckets[i] += s.buckets[i] }
            merged[id] = m
        }
        for (_, m) in merged.sorted(by: { $0.key < $1.key }) {
            let labels = "route=\"\(m.route)\",method=\"\(m.method)\""
            for (i, b) in Self.buckets.enumerated() { out += "vireo_http_request_duration_seconds_bucket{\(labels),le=\"\(b)\"} \(m.s.buckets[i])\n" }
            out += "vireo_http_request_duration_seconds_bucket{\(labels),le=\"+Inf\"} \(m.s.count)\n"
            out += "vireo_http_request_duration_seconds_sum{\(labels)} \(m.s.sum)\n"
            out += "vireo_http_request_duration_seconds_count{\(labels)} \(m.s.count)\n"
        }
        return out
    }

    /// `vireo_build_info`: the version and the Swift compiler this daemon was built with.
    static var buildInfo: String {
        #if compiler(>=6.3)
        let swift = "6.3"
        #elseif compiler(>=6.2)
        let swift = "6.2"
        #else
        let swift = "6.x"
        #endif
        return "# HELP vireo_build_info The daemon's version and build (value always 1).\n# TYPE vireo_build_info gauge\n"
            + "vireo_build_info{version=\"\(HostService.version)\",swift=\"\(swift)\"} 1\n"
    }
}
