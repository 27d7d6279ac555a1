import Foundation
import Host
import Testing
import VireoTestSupport
import VireoAPI

/// openapi/vireo.json is the contract: the server serves exactly it, every route the router
/// answers is in it, and real responses use only the status codes it lists, with its required fields.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct OpenAPIContractTests {
    static func document() throws -> [String: Any] {
        let text = try String(contentsOfFile: VireoBinary.packageRoot + "/openapi/vireo.json", encoding: .utf8)
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func everyRouteIsDocumentedAndTheServedDocumentIsTheRepositorys() throws {
        let doc = try Self.document()
        let paths = try #require(doc["paths"] as? [String: Any])
        for route in Router.routes {
            let ops = paths[route.path] as? [String: Any]
            #expect(ops?[route.method.lowercased()] != nil, "\(route.method) \(route.path) is served but not in openapi/vireo.json")
        }
        let documented = paths.flatMap { p, ops in (ops as? [String: Any] ?? [:]).keys.map { "\($0.uppercased()) \(p)" } }
        let served = Set(Router.routes.map { "\($0.method) \($0.path)" })
        for op in documented { #expect(served.contains(op), "\(op) is documented but not served") }

        let d = try TestDaemon()
        defer { d.shutdown() }
        let servedDoc = try d.req("GET", "/openapi.json")
        #expect(servedDoc.status == 200)
        let repo = try String(contentsOfFile: VireoBinary.packageRoot + "/openapi/vireo.json", encoding: .utf8)
        #expect(servedDoc.text == repo, "the served document differs from openapi/vireo.json: run python3 openapi/gen.py")
    }

    @Test func responsesMatchTheDocumentedStatusesAndSchemas() throws {
        let doc = try Self.document()
        let paths = try #require(doc["paths"] as? [String: Any])
        let schemas = try #require((doc["components"] as? [String: Any])?["schemas"] as? [String: Any])
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kvm = VireoBinary.hasKVM
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))

        var calls: [(String, String, String, String?)] = [   // method, concrete path, template, body
            ("GET", "/openapi.json", "/openapi.json", nil), ("GET", "/metrics", "/metrics", nil),
            ("GET", "/v1/host", "/v1/host", nil), ("GET", "/v1/events", "/v1/events", nil),
            ("POST", "/v1/vms", "/v1/vms", #"{"name":"c1","probe":"dirty","memory_mib":64}"#),
            ("POST", "/v1/vms", "/v1/vms", #"{"name":"c1","probe":"dirty"}"#),
            ("POST", "/v1/vms", "/v1/vms", #"{"name":"c2","probe":"dirty","bogus":1}"#),
            ("GET", "/v1/vms", "/v1/vms", nil), ("GET", "/v1/vms/c1", "/v1/vms/{name}", nil),
            ("GET", "/v1/vms/zz", "/v1/vms/{name}", nil),
            ("PATCH", "/v1/vms/c1", "/v1/vms/{name}", #"{"memory_mib":96}"#),
            ("GET", "/v1/vms/c1/console", "/v1/vms/{name}/console", nil),
            ("GET", "/v1/vms/c1/console/attach", "/v1/vms/{name}/console/attach", nil),   // stopped: 409
            ("GET", "/v1/vms/c1/stats", "/v1/vms/{name}/stats", nil), ("GET", "/v1/vms/zz/stats", "/v1/vms/{name}/stats", nil),
            ("GET", "/v1/vms/c1/config", "/v1/vms/{name}/config", nil), ("GET", "/v1/vms/zz/config", "/v1/vms/{name}/config", nil),
            ("GET", "/v1/vms/c1/balloon", "/v1/vms/{name}/balloon", nil),                       // stopped: 409
            ("POST", "/v1/vms/c1/balloon", "/v1/vms/{name}/balloon", #"{"target_mib":8}"#),
            ("POST", "/v1/vms/c1/balloon", "/v1/vms/{name}/balloon", #"{"target":8}"#),       // 400
            ("POST", "/v1/vms/c1/stop", "/v1/vms/{name}/stop", nil),
            ("POST", "/v1/templates", "/v1/templates", #"{"name":"tp","kernel":"/nonexistent"}"#),
            ("POST", "/v1/templates", "/v1/templates", #"{"name":"tp","kernel":"\#(kernel)","bogus":1}"#),
            ("POST", "/v1/templates", "/v1/templates", #"{"name":"tp","kernel":"\#(kernel)","cmdline":"quiet"}"#),
            ("GET", "/v1/templates", "/v1/templates", nil), ("GET", "/v1/templates/tp", "/v1/templates/{name}", nil),
            ("DELETE", "/v1/templates/tp", "/v1/templates/{name}", nil),
            ("POST", "/v1/images", "/v1/images", #"{"name":"i1","size_bytes":8388608}"#),
            ("POST", "/v1/images", "/v1/images", #"{"name":"i1","size_bytes":8388608}"#),
            ("POST", "/v1/images", "/v1/images", #"{"name":"i2","source":"/nonexistent"}"#),
            ("POST", "/v1/images", "/v1/images", #"{"name":"i2","size_bytes":8388608,"bogus":1}"#),
            ("GET", "/v1/images", "/v1/images", nil), ("GET", "/v1/images/i1", "/v1/images/{name}", nil),
            ("GET", "/v1/images/zz", "/v1/images/{name}", nil),
            ("POST", "/v1/images/i1/resize", "/v1/images/{name}/resize", #"{"size_bytes":16777216}"#),
            ("POST", "/v1/images/i1/resize", "/v1/images/{name}/resize", #"{"size_bytes":1048576}"#),
            ("DELETE", "/v1/images/i1", "/v1/images/{name}", nil), ("DELETE", "/v1/images/i1", "/v1/images/{name}", nil),
            // Networks (a real bridge vb-oa1 while the test runs; removed by its delete).
            ("POST", "/v1/networks", "/v1/networks", #"{"name":"oa1","type":"bridge"}"#),
            ("POST", "/v1/networks", "/v1/networks", #"{"name":"oa1","type":"bridge"}"#),                 // 409
            ("POST", "/v1/networks", "/v1/networks", #"{"name":"oa2","type":"vlan","vlan":4095}"#),       // 422
            ("POST", "/v1/networks", "/v1/networks", #"{"name":"oa2","type":"bridge","bogus":1}"#),       // 400
            ("GET", "/v1/networks", "/v1/networks", nil), ("GET", "/v1/networks/oa1", "/v1/networks/{name}", nil),
            ("GET", "/v1/networks/zz", "/v1/networks/{name}", nil),
            ("DELETE", "/v1/networks/oa1", "/v1/networks/{name}", nil), ("DELETE", "/v1/networks/oa1", "/v1/networks/{name}", nil),
            // The web console (the unix socket has no login: the login routes go on to /ui/).
            ("GET", "/", "/", nil), ("GET", "/ui/", "/ui/", nil), ("GET", "/ui/login", "/ui/login", nil), ("POST", "/ui/login", "/ui/login", nil),
            ("POST", "/ui/logout", "/ui/logout", nil), ("GET", "/ui/app.js", "/ui/app.js", nil), ("GET", "/ui/app.css", "/ui/app.css", nil),
            ("GET", "/ui/vendor/chart.js", "/ui/vendor/chart.js", nil), ("GET", "/ui/vendor/xterm.js", "/ui/vendor/xterm.js", nil),
            ("GET", "/ui/vendor/xterm.css", "/ui/vendor/xterm.css", nil),
        ]
        if kvm {
            calls += [("POST", "/v1/vms/c1/start", "/v1/vms/{name}/start", nil), ("POST", "/v1/vms/c1/start", "/v1/vms/{name}/start", nil),
                      ("GET", "/v1/vms/c1/stats", "/v1/vms/{name}/stats", nil),
                      ("GET", "/v1/vms/c1/config", "/v1/vms/{name}/config", nil),
                      ("PATCH", "/v1/vms/c1", "/v1/vms/{name}", #"{"vcpus":2}"#),
                      ("POST", "/v1/vms/c1/pause", "/v1/vms/{name}/pause", nil), ("POST", "/v1/vms/c1/resume", "/v1/vms/{name}/resume", nil),
                      ("POST", "/v1/vms/c1/reboot", "/v1/vms/{name}/reboot", nil), ("DELETE", "/v1/vms/c1", "/v1/vms/{name}", nil),
                      ("POST", "/v1/vms/c1/snapshots", "/v1/vms/{name}/snapshots", #"{"name":"s1"}"#),
                      ("POST", "/v1/vms/c1/snapshots", "/v1/vms/{name}/snapshots", #"{"name":"s1"}"#),       // 409
                      ("GET", "/v1/vms/c1/snapshots", "/v1/vms/{name}/snapshots", nil),
                      ("POST", "/v1/vms/c1/clone", "/v1/vms/{name}/clone", #"{"name":"c1-clone","snapshot":"s1"}"#),
                      ("POST", "/v1/vms/c1/clone", "/v1/vms/{name}/clone", #"{"name":"c1-clone","snapshot":"s1"}"#),  // 409: name taken
                      ("POST", "/v1/vms/c1/clone", "/v1/vms/{name}/clone", #"{"name":"c1-twin"}"#),                     // 409: running
                      ("POST", "/v1/vms/c1/snapshots/s1/revert", "/v1/vms/{name}/snapshots/{snapshot}/revert", nil),
                      ("POST", "/v1/vms/c1/snapshots/zz/revert", "/v1/vms/{name}/snapshots/{snapshot}/revert", nil), // 404
                      ("DELETE", "/v1/vms/c1/snapshots/s1", "/v1/vms/{name}/snapshots/{snapshot}", nil),
                      ("POST", "/v1/vms/c1/suspend", "/v1/vms/{name}/suspend", nil),
                      ("POST", "/v1/vms/c1/suspend", "/v1/vms/{name}/suspend", nil),                             // 409: stopped
                      ("POST", "/v1/vms/c1/start", "/v1/vms/{name}/start", nil),
                      ("POST", "/v1/vms/c1/migrate", "/v1/vms/{name}/migrate", #"{"to":"127.0.0.1:1","token":"x"}"#),        // 502
                      ("POST", "/v1/vms/c1/migrate", "/v1/vms/{name}/migrate", #"{"to":"nowhere","token":"x"}"#),             // 400
                      ("GET", "/v1/vms/c1/migration", "/v1/vms/{name}/migration", nil),                                     // 404
                      ("DELETE", "/v1/vms/c1/migration", "/v1/vms/{name}/migration", nil),                                  // 409
                      ("POST", "/v1/migrations", "/v1/migrations", #"{"vm":{"name":"in1","vcpus":1,"memory_mib":32,"probe":"dirty","disks":[],"nics":[]},"storage":"shared"}"#), // 422: no listener
                      ("DELETE", "/v1/migrations/c1", "/v1/migrations/{name}", nil),                                       // 409
                      ("POST", "/v1/vms/c1/kill", "/v1/vms/{name}/kill", nil)]
        }
        calls += [("DELETE", "/v1/vms/c1", "/v1/vms/{name}", nil), ("POST", "/v1/vms/c1/kill", "/v1/vms/{name}/kill", nil)]

        var seen: Set<String> = []
        for (method, path, template, body) in calls {
            let r = try d.client.request(method, path, body: body.map { Array($0.utf8) })
            // 5xx are daemon bugs, but for a 502: another daemon (a migration's destination) refused.
            #expect(r.status < 500 || (r.status == 502 && template == "/v1/vms/{name}/migrate"), "\(method) \(path): \(r.status) \(r.text)")
            let op = (paths[template] as? [String: Any])?[method.lowercased()] as? [String: Any]
            let responses = try #require(op?["responses"] as? [String: Any], "\(method) \(template) undocumented")
            let documented = responses[String(r.status)] as? [String: Any]
            #expect(documented != nil, "\(method) \(path) answered \(r.status), not documented for \(template)")
            seen.insert("\(method) \(template)")
            guard let content = documented?["content"] as? [String: Any], let json = content["application/json"] as? [String: Any],
                  let schema = json["schema"] as? [String: Any] else { continue }
            let value = try JSONSerialization.jsonObject(with: Data(r.body))
            check(value, against: schema, schemas: schemas, at: "\(method) \(path)")
        }
        if kvm { #expect(seen.count == Router.routes.count, "routes not exercised: \(Set(Router.routes.map { "\($0.method) \($0.path)" }).subtracting(seen))") }
    }

    /// Required fields, property types and enums, following $ref; enough to catch drift.
    func check(_ value: Any, against schema: [String: Any], schemas: [String: Any], at where_: String) {
        var schema = schema
        if let ref = schema["$ref"] as? String, let s = schemas[String(ref.split(separator: "/").last ?? "")] as? [String: Any] { schema = s }
        switch schema["type"] as? String {
        case "object":
            guard let obj = value as? [String: Any] else { Issue.record("\(where_): expected an object"); return }
            for req in schema["required"] as? [String] ?? [] where obj[req] == nil {
                Issue.record("\(where_): required field '\(req)' missing")
            }
            let props = schema["properties"] as? [String: Any] ?? [:]
            if schema["additionalProperties"] as? Bool == false || !props.isEmpty {
                for k in obj.keys where props[k] == nil { Issue.record("\(where_): field '\(k)' is not in the schema") }
            }
            for (k, v) in obj { if let p = props[k] as? [String: Any] { check(v, against: p, schemas: schemas, at: where_ + "." + k) } }
        case "array":
            guard let arr = value as? [Any] else { Issue.record("\(where_): expected an array"); return }
            if let items = schema["items"] as? [String: Any] { for v in arr { check(v, against: items, schemas: schemas, at: where_ + "[]") } }
        case "string":
            guard let s = value as? String else { Issue.record("\(where_): expected a string"); return }
            if let e = schema["enum"] as? [String] { #expect(e.contains(s), "\(where_): '\(s)' not in \(e)") }
        case "integer", "number":
            #expect(value is NSNumber, "\(where_): expected a number")
        case "boolean":
            #expect(value is NSNumber, "\(where_): expected a boolean")
        default: break
        }
    }
}
