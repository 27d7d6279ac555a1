import VireoAPI
import VireoSupport

/// The image store's routes and the streamed event follow (kept out of Router.swift).
extension Router {
    static let imageRoutes: [(method: String, path: String)] = [
        ("GET", "/v1/images"), ("POST", "/v1/images"), ("GET", "/v1/images/{name}"), ("DELETE", "/v1/images/{name}"),
        ("POST", "/v1/images/{name}/resize"),
    ]

    func dispatchImages(_ req: HTTPRequest, _ parts: [String]) async throws -> HTTPResponse {
        let m = req.method
        func allow(_ methods: String...) throws {
            guard methods.contains(m) else {
                throw HTTPError(405, "method-not-allowed", "\(m) is not allowed on \(req.path.prefix(200)); allowed: \(methods.joined(separator: ", "))", allow: methods)
            }
        }
        switch parts.count {
        case 2:
            try allow("GET", "POST")
            if m == "GET" { return .json(200, ImageList(images: try await service.listImages())) }
            let c = try APIJSON.decodeStrict(ImageCreate.self, from: req.body, allowed: ImageCreate.fields)
            return .json(201, try await service.createImage(c))
        case 3:
            try allow("GET", "DELETE")
            if m == "GET" { return .json(200, try await service.showImage(parts[2])) }
            try await service.deleteImage(parts[2])
            return HTTPResponse(status: 204, contentType: "application/json", body: [])
        case 4 where parts[3] == "resize":
            try allow("POST")
            let r = try APIJSON.decodeStrict(ImageResize.self, from: req.body, allowed: ImageResize.fields)
            return .json(200, try await service.resizeImage(parts[2], r))
        default:
            throw HTTPError(404, "no-such-route", "no API route \(m) \(req.path.prefix(200)); GET /openapi.json lists them")
        }
    }

    /// `follow=true|false` (also 1/0) on GET /v1/events.
    func follow(_ req: HTTPRequest) throws -> Bool {
        guard let v = req.query["follow"] else { return false }
        switch v {
        case "true", "1": return true
        case "false", "0": return false
        default: throw HTTPError(400, "invalid-query", "query parameter follow='\(v.prefix(40))' must be true or false")
        }
    }

    /// GET /v1/events?follow=true: the backlog after `since`, then each new event as it happens,
    /// one JSON object per line (application/x-ndjson, chunked), until the client goes away.
    func followEvents(since: Int, filter: EventFilter) async throws -> HTTPResponse {
        let body = try await service.followEvents(since: since, filter: filter)
        return HTTPResponse(status: 200, contentType: "application/x-ndjson", body: [], stream: body)
    }

    var eventMetrics: String {
        "# HELP vireo_event_subscribers Clients following GET /v1/events?follow=true now.\n# TYPE vireo_event_subscribers gauge\n"
            + "vireo_event_subscribers \(service.eventHub.count)\n"
    }
}

extension HostService {
    /// Subscribes first, then reads the backlog, in one step on the actor: no event can fall
    /// between the two (every event is published from the actor), and none comes twice.
    func followEvents(since: Int, filter: EventFilter) throws -> HTTPStreamBody {
        let backlog = try inventory.events(since: since, filter: filter, limit: 10000)
        let hub = eventHub
        let (id, lines) = hub.subscribe(filter, after: backlog.last?.seq ?? since)
        var prefix: [UInt8] = []
        for e in backlog { prefix += APIJSON.encode(e) + [10] }
        return HTTPStreamBody(prefix: prefix, chunks: lines, stop: { hub.cancel(id) },
                              trailer: { hub.takeEnding(id).map { EventHub.lastLine($0, time: WallClock.now()) } })
    }
}
