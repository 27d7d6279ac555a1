import VireoAPI
import VireoSupport

/// One HTTP request as the router sees it.
struct HTTPRequest: Sendable {
    var method: String
    var path: String
    var query: [String: String]
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name }?.1
    }
}

struct HTTPResponse: Sendable {
    var status: Int
    var contentType: String
    var body: [UInt8]
    var headers: [(String, String)] = []
    /// Set for a streamed (chunked) response; `body` is then unused. See HTTPStreamBody.
    var stream: HTTPStreamBody? = nil

    static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json", body: APIJSON.encode(value))
    }
    static func error(_ e: HTTPError) -> HTTPResponse {
        var r = json(e.status, APIErrorBody(code: e.code, message: e.message))
        if !e.allow.isEmpty { r.headers.append(("Allow", e.allow.joined(separator: ", "))) }
        return r
    }
}

/// Maps requests to the service. `Router.routes` is the list the OpenAPI test checks.
public struct Router: Sendable {
    let service: HostService
    /// Bearer token required on this listener (TCP), or nil (the unix socket: its file mode guards it).
    let token: String?
    /// The web console's logins on this listener (WebSessions.swift).
    let sessions: WebSessions
    /// Request counts and durations for /metrics, shared by every listener.
    let requestMetrics: RequestMetrics

    static let maxBody = 1 << 20

    init(service: HostService, token: String?, requestMetrics: RequestMetrics = RequestMetrics()) {
        self.service = service; self.token = token; self.sessions = WebSessions(); self.requestMetrics = requestMetrics
    }

    /// Every (method, path template) the server answers.
    public static let routes: [(method: String, path: String)] = [
        ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/v1/host"), ("GET", "/v1/events"),
        ("GET", "/v1/vms"), ("POST", "/v1/vms"),
        ("GET", "/v1/vms/{name}"), ("PATCH", "/v1/vms/{name}"), ("DELETE", "/v1/vms/{name}"),
        ("POST", "/v1/vms/{name}/start"), ("POST", "/v1/vms/{name}/stop"), ("POST", "/v1/vms/{name}/kill"),
        ("POST", "/v1/vms/{name}/pause"), ("POST", "/v1/vms/{name}/resume"), ("POST", "/v1/vms/{name}/reboot"),
        ("GET", "/v1/vms/{name}/console"), ("GET", "/v1/vms/{name}/console/attach"), ("GET", "/v1/vms/{name}/stats"), ("GET", "/v1/vms/{name}/config"),
        ("GET", "/v1/vms/{name}/snapshots"), ("POST", "/v1/vms/{name}/snapshots"), ("DELETE", "/v1/vms/{name}/snapshots/{snapshot}"),
        ("POST", "/v1/vms/{name}/snapshots/{snapshot}/revert"), ("POST", "/v1/vms/{name}/suspend"), ("POST", "/v1/vms/{name}/clone"),
        ("GET", "/v1/vms/{name}/balloon"), ("POST", "/v1/vms/{name}/balloon"),
        ("GET", "/v1/templates"), ("POST", "/v1/templates"), ("GET", "/v1/templates/{name}"), ("DELETE", "/v1/templates/{name}"),
        ("GET", "/v1/networks"), ("POST", "/v1/networks"), ("GET", "/v1/networks/{name}"), ("DELETE", "/v1/networks/{name}"),
    ] + imageRoutes + migrationRoutes + webRoutes

    func handle(_ req: HTTPRequest) async -> HTTPResponse {
        if Self.isWebPath(req.path) { return await web(req) }
        if token != nil {
            switch authenticate(req) {
            case .bearer: break
            case .session:
                if let refusal = sessionRefusal(req) { return .error(refusal) }
            case .anonymous:
                let given = req.header("authorization")
                var r = HTTPResponse.error(HTTPError(401, "unauthorized", given == nil
                    ? "this listener needs 'Authorization: Bearer TOKEN' (the daemon's --token-file) or a web console login (/ui/login)"
                    : "the bearer token is wrong"))
                r.headers.append(("WWW-Authenticate", "Bearer"))
                return r
            }
        }
        do { return try await dispatch(req) } catch {
            return .error(HTTPError.from(error))
        }
    }

    private func dispatch(_ req: HTTPRequest) async throws -> HTTPResponse {
        let parts = req.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let m = req.method
        if parts.count >= 2 && parts[0] == "v1" && parts[1] == "images" { return try await dispatchImages(req, parts) }
        if Self.isMigrationRoute(parts) { return try await dispatchMigration(req, parts) }
        func allow(_ methods: String...) throws {
            guard methods.contains(m) else {
                throw HTTPError(405, "method-not-allowed", "\(m) is not allowed on \(req.path.prefix(200)); allowed: \(methods.joined(separator: ", "))", allow: methods)
            }
        }
        switch parts.count {
        case 1 where parts[0] == "openapi.json":
            try allow("GET")
            return HTTPResponse(status: 200, contentType: "application/json", body: Array(OpenAPIDocument.json.utf8))
        case 1 where parts[0] == "metrics":
            try allow("GET")
            return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4",
                                body: Array((await Metrics.render(service.metricsSnapshot()) + eventMetrics + RequestMetrics.buildInfo + requestMetrics.render()).utf8))
        case 2 where parts == ["v1", "host"]:
            try allow("GET")
            return .json(200, await service.hostInfo())
        case 2 where parts == ["v1", "events"]:
            try allow("GET")
            let since = try intQuery(req, "since", default: 0, range: 0...Int(Int32.max))
            let limit = try intQuery(req, "limit", default: 1000, range: 1...10000)
            let filter = try eventFilter(req)
            if try follow(req) { return try await followEvents(since: since, filter: filter) }
            return .json(200, EventList(events: try await service.events(since: since, filter: filter, limit: limit)))
        case 2 where parts == ["v1", "vms"]:
            try allow("GET", "POST")
            if m == "GET" { return .json(200, VMList(vms: try await service.list())) }
            let create = try APIJSON.decodeStrict(VMCreate.self, from: req.body, allowed: VMCreate.fields,
                                                  nested: VMCreate.nestedFields)
            return .json(201, try await service.create(create))
        case 2 where parts == ["v1", "templates"]:
            try allow("GET", "POST")
            if m == "GET" { return .json(200, TemplateList(templates: try await service.listTemplates())) }
            let create = try APIJSON.decodeStrict(TemplateCreate.self, from: req.body, allowed: TemplateCreate.fields)
            return .json(201, try await service.createTemplate(create))
        case 2 where parts == ["v1", "networks"]:
            try allow("GET", "POST")
            if m == "GET" { return .json(200, NetworkList(networks: await service.listNetworks())) }
            let create = try APIJSON.decodeStrict(NetworkCreate.self, from: req.body, allowed: NetworkCreate.fields)
            return .json(201, try await service.createNetwork(create))
        case 3 where parts[0] == "v1" && parts[1] == "networks":
            try allow("GET", "DELETE")
            if m == "GET" { return .json(200, try await service.showNetwork(parts[2])) }
            try await service.deleteNetwork(parts[2])
            return HTTPResponse(status: 204, contentType: "application/json", body: [])
        case 3 where parts[0] == "v1" && parts[1] == "templates":
            try allow("GET", "DELETE")
            if m == "GET" { return .json(200, try await service.showTemplate(parts[2])) }
            try await service.deleteTemplate(parts[2])
            return HTTPResponse(status: 204, contentType: "application/json", body: [])
        case 3 where parts[0] == "v1" && parts[1] == "vms":
            try allow("GET", "PATCH", "DELETE")
            let name = parts[2]
            switch m {
            case "GET": return .json(200, try await service.show(name))
            case "PATCH":
                let u = try APIJSON.decodeStrict(VMUpdate.self, from: req.body, allowed: VMUpdate.fields)
                return .json(200, try await service.update(name, u))
            default:
                try await service.delete(name)
                return HTTPResponse(status: 204, contentType: "application/json", body: [])
            }
        case 4 where parts[0] == "v1" && parts[1] == "vms":
            let name = parts[2]
            if parts[3] == "console" {
                try allow("GET")
                let offset = try intQuery(req, "offset", default: 0, range: 0...Int(Int64.max / 2))
                let limit = try intQuery(req, "limit", default: 1 << 20, range: 1...(1 << 20))
                let (bytes, next) = try await service.console(name, offset: offset, limit: limit)
                return HTTPResponse(status: 200, contentType: "text/plain; charset=utf-8", body: bytes,
                                    headers: [("X-Vireo-Next-Offset", String(next))])
            }
            if parts[3] == "balloon" {
                try allow("GET", "POST")
                let mib = m == "POST"
                    ? try APIJSON.decodeStrict(BalloonRequest.self, from: req.body, allowed: BalloonRequest.fields).targetMiB : nil
                let target = try await service.balloonTarget(name)
                return .json(200, try BalloonControl.apply(target, targetMiB: mib))
            }
            if parts[3] == "snapshots" {
                try allow("GET", "POST")
                if m == "GET" { return .json(200, SnapshotList(snapshots: try await service.listSnapshots(name))) }
                let c = try APIJSON.decodeStrict(SnapshotCreate.self, from: req.body, allowed: SnapshotCreate.fields)
                return .json(201, try await service.createSnapshot(name, c))
            }
            if parts[3] == "config" {
                try allow("GET")
                let target = try await service.configTarget(name)
                return .json(200, try VMConfigCollector.collect(target))
            }
            if parts[3] == "stats" {
                try allow("GET")
                let target = try await service.statsTarget(name)
                return .json(200, try VMStatsCollector.collect(target))
            }
            try allow("POST")
            switch parts[3] {
            case "start": return .json(200, try await service.start(name))
            case "stop":
                let force = try boolQuery(req, "force", default: false)
                let timeout = try intQuery(req, "timeout", default: HostService.defaultShutdownTimeout, range: 0...HostService.maxShutdownTimeout)
                return .json(200, try await service.stop(name, force: force, timeoutSeconds: timeout))
            case "kill": return .json(200, try await service.kill(name))
            case "pause": return .json(200, try await service.pause(name))
            case "resume": return .json(200, try await service.resume(name))
            case "reboot": return .json(200, try await service.reboot(name))
            case "suspend": return .json(200, try await service.suspend(name))
            case "clone":
                let c = try APIJSON.decodeStrict(VMClone.self, from: req.body, allowed: VMClone.fields)
                return .json(201, try await service.cloneVM(name, c))
            default: break
            }
        case 5 where parts[0] == "v1" && parts[1] == "vms" && parts[3] == "snapshots":
            try allow("DELETE")
            try await service.deleteSnapshot(parts[2], parts[4])
            return HTTPResponse(status: 204, contentType: "application/json", body: [])
        case 6 where parts[0] == "v1" && parts[1] == "vms" && parts[3] == "snapshots" && parts[5] == "revert":
            try allow("POST")
            return .json(200, try await service.revertSnapshot(parts[2], parts[4]))
        case 5 where parts[0] == "v1" && parts[1] == "vms" && parts[3] == "console" && parts[4] == "attach":
            try allow("GET")
            return try await ConsoleAttach.withoutUpgrade(parts[2], service: service)   // upgrades never get here
        default: break
        }
        throw HTTPError(404, "no-such-route", "no API route \(m) \(req.path.prefix(200)); GET /openapi.json lists them")
    }

    /// `subject=NAME` (or the first API's `vm=NAME`: the same, any kind) and `subject_kind=vm|template|image`.
    private func eventFilter(_ req: HTTPRequest) throws -> EventFilter {
        var f = EventFilter(subject: req.query["subject"] ?? req.query["vm"])
        if let v = req.query["subject"], let w = req.query["vm"], v != w {
            throw HTTPError(400, "invalid-query", "query parameters subject and vm name the same thing; give one")
        }
        if let k = req.query["subject_kind"] {
            guard let kind = EventSubjectKind(rawValue: k) else {
                throw HTTPError(400, "invalid-query", "query parameter subject_kind='\(k.prefix(40))' must be one of \(EventSubjectKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            f.kind = kind
        }
        return f
    }

    private func boolQuery(_ req: HTTPRequest, _ key: String, default d: Bool) throws -> Bool {
        guard let s = req.query[key] else { return d }
        switch s {
        case "true", "1", "": return true
        case "false", "0": return false
        default: throw HTTPError(400, "invalid-query", "query parameter \(key)='\(s.prefix(40))' must be true or false")
        }
    }

    private func intQuery(_ req: HTTPRequest, _ key: String, default d: Int, range: ClosedRange<Int>) throws -> Int {
        guard let s = req.query[key] else { return d }
        guard let v = Int(s), range.contains(v) else {
            throw HTTPError(400, "invalid-query", "query parameter \(key)='\(s.prefix(40))' must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }
}
