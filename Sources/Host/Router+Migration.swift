import VireoAPI
import VireoSupport

/// Live migration between daemons (HostService+Migrate.swift, HostService+Incoming.swift).
extension Router {
    static let migrationRoutes: [(method: String, path: String)] = [
        ("POST", "/v1/vms/{name}/migrate"), ("GET", "/v1/vms/{name}/migration"), ("DELETE", "/v1/vms/{name}/migration"),
        ("POST", "/v1/migrations"), ("DELETE", "/v1/migrations/{name}"),
    ]

    /// Whether `parts` is one of the migration routes.
    static func isMigrationRoute(_ parts: [String]) -> Bool {
        guard parts.count >= 2, parts[0] == "v1" else { return false }
        if parts[1] == "migrations" { return parts.count <= 3 }
        return parts.count == 4 && parts[1] == "vms" && (parts[3] == "migrate" || parts[3] == "migration")
    }

    func dispatchMigration(_ req: HTTPRequest, _ parts: [String]) async throws -> HTTPResponse {
        let m = req.method
        func allow(_ methods: String...) throws {
            guard methods.contains(m) else {
                throw HTTPError(405, "method-not-allowed", "\(m) is not allowed on \(req.path.prefix(200)); allowed: \(methods.joined(separator: ", "))", allow: methods)
            }
        }
        if parts[1] == "migrations" {
            if parts.count == 2 {
                try allow("POST")
                let r = try APIJSON.decodeStrict(IncomingMigrationRequest.self, from: req.body, allowed: IncomingMigrationRequest.fields)
                return .json(201, try await service.acceptIncoming(r))
            }
            try allow("DELETE")
            try await service.abandonIncoming(parts[2])
            return HTTPResponse(status: 204, contentType: "application/json", body: [])
        }
        let name = parts[2]
        if parts[3] == "migrate" {
            try allow("POST")
            let r = try APIJSON.decodeStrict(MigrateRequest.self, from: req.body, allowed: MigrateRequest.fields)
            return .json(202, try await service.migrate(name, r))
        }
        try allow("GET", "DELETE")
        if m == "GET" { return .json(200, try await service.migrationInfo(name)) }
        return .json(200, try await service.cancelMigration(name))
    }
}
