import VireoAPI
import VireoSupport

/// The web console (docs/console-web.md): its pages on the same listeners as the API, a login
/// that turns the listener's bearer token into a session cookie, and Debian's Chart.js and
/// xterm.js served from where their packages install them.
extension Router {
    static let webRoutes: [(method: String, path: String)] = [
        ("GET", "/"), ("GET", "/ui/"), ("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"),
        ("GET", "/ui/app.js"), ("GET", "/ui/app.css"),
        ("GET", "/ui/vendor/chart.js"), ("GET", "/ui/vendor/xterm.js"), ("GET", "/ui/vendor/xterm.css"),
    ]

    /// A file a Debian package installs, served under /ui/vendor/.
    struct VendorFile {
        var candidates: [String]
        var package: String
        var contentType: String
    }

    static let vendorFiles: [String: VendorFile] = [
        "/ui/vendor/chart.js": VendorFile(candidates: ["/usr/share/javascript/chart.js/chart.min.js", "/usr/share/javascript/chart.js/chart.js"],
                                          package: "libjs-chart.js", contentType: "text/javascript; charset=utf-8"),
        "/ui/vendor/xterm.css": VendorFile(candidates: ["/usr/share/javascript/xterm/xterm.css"],
                                           package: "libjs-xterm", contentType: "text/css; charset=utf-8"),
    ]

    static func isWebPath(_ path: String) -> Bool { path == "/" || path == "/ui" || path.hasPrefix("/ui/") }

    enum Authentication { case bearer, session, anonymous }

    /// How a request on a token listener proves itself: the bearer header, or a live session cookie.
    func authenticate(_ req: HTTPRequest) -> Authentication {
        if let token, let given = req.header("authorization"), WebSessions.constantTimeEqual(given, "Bearer \(token)") { return .bearer }
        if let id = WebSessions.id(in: req), sessions.isValid(id) { return .session }
        return .anonymous
    }

    /// Why a request that has a session cookie is refused anyway, or nil: a page of another
    /// origin (its Origin header differs from the Host it asked), or a state-changing request
    /// without the console's own X-Vireo-CSRF header (a form of another site cannot add it).
    func sessionRefusal(_ req: HTTPRequest) -> HTTPError? {
        if let origin = req.header("origin") {
            let host = req.header("host") ?? ""
            guard origin == "http://\(host)" || origin == "https://\(host)" else {
                return HTTPError(403, "cross-origin", "a web console session is accepted only from the daemon's own pages (Origin \(origin.prefix(100)) is not http://\(host.prefix(100)))")
            }
        }
        if req.method != "GET" && req.method != "HEAD" && req.header("x-vireo-csrf") != "1" {
            return HTTPError(403, "csrf-header-missing", "a web console session changes things only with the header 'X-Vireo-CSRF: 1' (the console's pages send it); scripts use 'Authorization: Bearer TOKEN'")
        }
        return nil
    }

    /// Logged in for the pages: no token on this listener (the unix socket), the bearer header, or a session.
    private func loggedIn(_ req: HTTPRequest) -> Bool {
        token == nil || authenticate(req) != .anonymous
    }

    func web(_ req: HTTPRequest) async -> HTTPResponse {
        let path = req.path
        switch (req.method, path) {
        case ("GET", "/"), ("GET", "/ui"):
            return Self.redirect("/ui/")
        case ("GET", "/ui/app.css"):
            return Self.asset(WebAssets.appCSS, "text/css; charset=utf-8")
        case ("GET", "/ui/app.js"):
            return Self.asset(WebAssets.appJS, "text/javascript; charset=utf-8")
        case ("GET", "/ui/login"):
            if token == nil || loggedIn(req) { return Self.redirect("/ui/") }
            let note = req.query["reason"] == "expired" ? "Your session has ended (it lasts 12 hours, and a daemon restart ends it): log in again." : nil
            return Self.loginPage(status: 200, message: note)
        case ("POST", "/ui/login"):
            return await login(req)
        case ("POST", "/ui/logout"):
            if let id = WebSessions.id(in: req) { sessions.remove(id) }
            var r = Self.redirect(token == nil ? "/ui/" : "/ui/login")
            r.headers.append(WebSessions.clearCookie)
            return r
        case ("GET", "/ui/"):
            if !loggedIn(req) {
                return Self.redirect(WebSessions.id(in: req) != nil ? "/ui/login?reason=expired" : "/ui/login")
            }
            return Self.page(200, WebAssets.appHTML)
        case ("GET", "/ui/vendor/xterm.js"), ("GET", _) where Self.vendorFiles[path] != nil:
            return Self.vendor(path)
        default:
            let known = Self.webRoutes.filter { $0.path == path }.map(\.method)
            if !known.isEmpty {
                var r = Self.page(405, Self.errorPage("Method not allowed", "\(req.method.prefix(10)) is not allowed on \(path.prefix(200)); allowed: \(known.joined(separator: ", ")).", link: nil))
                r.headers.append(("Allow", known.joined(separator: ", ")))
                return r
            }
            return Self.page(404, Self.errorPage("No such page", "There is no page at \(path.prefix(200)).", link: ("/ui/", "The web console starts here")))
        }
    }

    /// POST /ui/login with a form field `token`: the listener's token makes a session.
    private func login(_ req: HTTPRequest) async -> HTTPResponse {
        guard let token else { return Self.redirect("/ui/") }
        let contentType = req.header("content-type") ?? ""
        guard contentType.hasPrefix("application/x-www-form-urlencoded") else {
            return Self.loginPage(status: 415, message: "The login form must be sent as application/x-www-form-urlencoded (the page's form does this).")
        }
        guard let given = Self.formField("token", in: req.body), !given.isEmpty else {
            return Self.loginPage(status: 400, message: "Give the API token: the first word of the file the daemon's --token-file names.")
        }
        guard WebSessions.constantTimeEqual(given, token) else {
            try? await Task.sleep(for: .milliseconds(300))   // slows guessing down
            return Self.loginPage(status: 401, message: "That is not this daemon's token. It is the first word of the file given to `vireo host serve --token-file`.")
        }
        let id = sessions.create()
        var r = Self.redirect("/ui/")
        r.headers.append(WebSessions.setCookie(id))
        return r
    }

    // MARK: responses

    static let securityHeaders: [(String, String)] = [
        ("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; form-action 'self'"),
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
    ]

    static func redirect(_ to: String) -> HTTPResponse {
        HTTPResponse(status: 303, contentType: "text/plain; charset=utf-8", body: Array("see \(to)\n".utf8),
                     headers: [("Location", to), ("Cache-Control", "no-store")])
    }

    static func page(_ status: Int, _ html: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/html; charset=utf-8", body: Array(html.utf8),
                     headers: securityHeaders + [("Cache-Control", "no-store")])
    }

    static func asset(_ text: String, _ type: String) -> HTTPResponse {
        HTTPResponse(status: 200, contentType: type, body: Array(text.utf8), headers: securityHeaders + [("Cache-Control", "no-cache")])
    }

    static func vendor(_ path: String) -> HTTPResponse {
        if path == "/ui/vendor/xterm.js" {
            if let script = WebXtermBundle.script() {
                return HTTPResponse(status: 200, contentType: "text/javascript; charset=utf-8", body: script,
                                    headers: securityHeaders + [("Cache-Control", "max-age=3600")])
            }
            let message = "The web console's terminal needs xterm.js from Debian's packages: apt-get install libjs-xterm node-xterm (Debian 12's libjs-xterm alone has only a stub at \(WebXtermBundle.bundlePath); the daemon joins node-xterm's modules from \(WebXtermBundle.moduleRoot)/lib)"
            return HTTPResponse(status: 404, contentType: "text/plain; charset=utf-8", body: Array((message + "\n").utf8),
                                headers: securityHeaders + [("Cache-Control", "no-store")])
        }
        guard let file = vendorFiles[path] else { return page(404, errorPage("No such page", "There is no page at \(path.prefix(200)).", link: nil)) }
        for candidate in file.candidates {
            if let bytes = try? OwnedFD.readFile(candidate, limit: 4 << 20, what: "\(file.package) file") {
                return HTTPResponse(status: 200, contentType: file.contentType, body: bytes,
                                    headers: securityHeaders + [("Cache-Control", "max-age=3600")])
            }
        }
        let message = "The web console needs Debian's \(file.package) package, which this host lacks (no \(file.candidates.joined(separator: " or "))). Install it: apt-get install \(file.package)"
        return HTTPResponse(status: 404, contentType: "text/plain; charset=utf-8", body: Array((message + "\n").utf8),
                            headers: securityHeaders + [("Cache-Control", "no-store")])
    }

    static func loginPage(status: Int, message: String?) -> HTTPResponse {
        let note = message.map { "<p class=\"notice\" role=\"alert\" id=\"login-message\">\(htmlEscape($0))</p>" } ?? ""
        return page(status, WebAssets.loginHTML.replacingFirst("<!--MESSAGE-->", with: note))
    }

    static func errorPage(_ title: String, _ text: String, link: (String, String)?) -> String {
        let a = link.map { "<p><a href=\"\(htmlEscape($0.0))\">\(htmlEscape($0.1))</a></p>" } ?? ""
        return "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            + "<title>\(htmlEscape(title)) - Vireo</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body><main class=\"narrow\">"
            + "<h1>\(htmlEscape(title))</h1><p>\(htmlEscape(text))</p>\(a)</main></body></html>"
    }

    static func htmlEscape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    /// One field of an application/x-www-form-urlencoded body, percent-decoded (nil if absent or malformed).
    static func formField(_ name: String, in body: [UInt8]) -> String? {
        for pair in body.split(separator: UInt8(ascii: "&")) {
            let kv = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2, let key = percentDecode(kv[0]), key == name else { continue }
            return percentDecode(kv[1])
        }
        return nil
    }

    static func percentDecode(_ bytes: ArraySlice<UInt8>) -> String? {
        var out: [UInt8] = []
        var i = bytes.startIndex
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 48...57: return b - 48
            case 65...70: return b - 55
            case 97...102: return b - 87
            default: return nil
            }
        }
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "+") { out.append(32); i += 1; continue }
            if b == UInt8(ascii: "%") {
                guard bytes.distance(from: i, to: bytes.endIndex) >= 3,
                      let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) else { return nil }
                out.append(h << 4 | l); i += 3; continue
            }
            out.append(b); i += 1
        }
        return String(validating: out, as: UTF8.self)
    }
}

extension String {
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let r = firstRange(of: target) else { return self }
        var s = self
        s.replaceSubrange(r, with: replacement)
        return s
    }
}
