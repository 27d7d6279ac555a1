import VireoAPI
import VireoSupport

/// An error that becomes one HTTP status and a `{"code","message"}` body.
struct HTTPError: Error, Sendable {
    var status: Int
    var code: String
    var message: String
    /// For 405: the methods the route allows (sent as the Allow header).
    var allow: [String] = []

    init(_ status: Int, _ code: String, _ message: String, allow: [String] = []) {
        self.status = status; self.code = code; self.message = message; self.allow = allow
    }

    static func notFound(_ name: String) -> HTTPError {
        HTTPError(404, "not-found", "no VM named '\(name)'; `vireo vm list` shows the VMs")
    }
    static func conflict(_ message: String) -> HTTPError { HTTPError(409, "conflict", message) }
    static func invalid(_ code: String, _ message: String) -> HTTPError { HTTPError(422, code, message) }

    /// Maps any error thrown inside a request to a response: ours keep their status, a decoding
    /// error is the client's 400, anything else is the daemon's own 500.
    static func from(_ error: Error) -> HTTPError {
        switch error {
        case let e as HTTPError: return e
        case let e as APIErrorBody: return HTTPError(400, e.code, e.message)
        case let e as VireoError: return HTTPError(500, "internal", e.description)
        default: return HTTPError(500, "internal", "\(error)")
        }
    }
}
