import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
import Host
#if canImport(Glibc)
import Glibc
#endif

/// The web console's server side (docs/console-web.md): the embedded pages are web/'s, the login
/// turns the token into a session cookie the API accepts (GETs; changes with X-Vireo-CSRF, from
/// the daemon's own origin), and /metrics has the build and the requests. The pages themselves
/// run in Chromium in tests/browser/test_web_console.py.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct WebConsoleTests {
    @Test func embeddedPagesAreTheRepositorysWebFiles() throws {
        let pairs = [("login.html", WebAssets.loginHTML), ("app.html", WebAssets.appHTML), ("app.css", WebAssets.appCSS), ("app.js", WebAssets.appJS)]
        for (file, embedded) in pairs {
            let text = try String(contentsOfFile: VireoBinary.packageRoot + "/web/" + file, encoding: .utf8)
            #expect(text.trimmingCharacters(in: .newlines) == embedded, "web/\(file) differs from Sources/Host/WebAssets.swift: run python3 scripts/gen-web-assets.py")
        }
    }

    /// One raw HTTP/1.1 request over TCP with any headers: (status, headers lower-cased, body).
    static func raw(_ port: UInt16, _ method: String, _ path: String, headers: [String] = [], body: String = "") throws -> (Int, [String: String], String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        // SAFETY: addr is a complete sockaddr_in; connect reads that many bytes of it.
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw VireoError(.io, "cannot connect to 127.0.0.1:\(port)") }
        let req = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n"
            + headers.map { $0 + "\r\n" }.joined() + "\r\n" + body
        let bytes = Array(req.utf8)
        // SAFETY: write reads exactly bytes.count bytes of the array's storage.
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let text = String(decoding: TestDaemon.readAll(fd), as: UTF8.self)
        let split = text.components(separatedBy: "\r\n\r\n")
        let lines = split[0].components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1]) ?? 0
        var h: [String: String] = [:]
        for l in lines.dropFirst() { if let c = l.firstIndex(of: ":") { h[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces) } }
        return (status, h, split.dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func loginSessionCookieAndWhatTheAPIAcceptsWithIt() throws {
        let dir = "/tmp/vireo-web-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = system("rm -rf \(dir)") }
        let token = "web+token/0123456789abcdef="
        FileManager.default.createFile(atPath: dir + "/token", contents: Data((token + "\n").utf8))
        let d = try TestDaemon(extra: ["--listen", "127.0.0.1:0", "--token-file", dir + "/token"])
        defer { d.shutdown() }
        let port = try #require(d.tcpPort)

        // Pages without a session go to the login; the API answers 401 JSON.
        var r = try Self.raw(port, "GET", "/ui/")
        #expect(r.0 == 303 && r.1["location"] == "/ui/login")
        r = try Self.raw(port, "GET", "/v1/host")
        #expect(r.0 == 401 && r.2.contains("\"unauthorized\""))
        r = try Self.raw(port, "GET", "/ui/login")
        #expect(r.0 == 200 && r.2.contains("<form") && r.1["content-security-policy"] != nil)

        // A wrong token: the login page again with 401, no cookie. Bad forms say what is wrong.
        let form = "Content-Type: application/x-www-form-urlencoded"
        r = try Self.raw(port, "POST", "/ui/login", headers: [form], body: "token=wrong-token-0123456789")
        #expect(r.0 == 401 && r.1["set-cookie"] == nil && r.2.contains("not this daemon&#39;s token"))
        r = try Self.raw(port, "POST", "/ui/login", headers: [form], body: "nothing=here")
        #expect(r.0 == 400)
        r = try Self.raw(port, "POST", "/ui/login", headers: ["Content-Type: application/json"], body: #"{"token":"x"}"#)
        #expect(r.0 == 415)
        r = try Self.raw(port, "POST", "/ui/login", headers: [form], body: "token=%zz")
        #expect(r.0 == 400)

        // The right token, percent-encoded as a browser sends it: a session cookie.
        let encoded = token.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        r = try Self.raw(port, "POST", "/ui/login", headers: [form], body: "token=" + encoded)
        #expect(r.0 == 303 && r.1["location"] == "/ui/")
        let setCookie = try #require(r.1["set-cookie"])
        #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && !setCookie.contains(token))
        let cookie = "Cookie: " + (setCookie.split(separator: ";").first.map(String.init) ?? "")

        r = try Self.raw(port, "GET", "/ui/", headers: [cookie])
        #expect(r.0 == 200 && r.2.contains("/ui/app.js"))
        r = try Self.raw(port, "GET", "/v1/host", headers: [cookie])
        #expect(r.0 == 200)
        // Changes need the console's header; another origin is refused.
        let create = #"{"name":"w1","probe":"echo","memory_mib":16}"#
        r = try Self.raw(port, "POST", "/v1/vms", headers: [cookie, "Content-Type: application/json"], body: create)
        #expect(r.0 == 403 && r.2.contains("csrf-header-missing"))
        r = try Self.raw(port, "POST", "/v1/vms", headers: [cookie, "Content-Type: application/json", "X-Vireo-CSRF: 1", "Origin: http://evil.example"], body: create)
        #expect(r.0 == 403 && r.2.contains("cross-origin"))
        r = try Self.raw(port, "POST", "/v1/vms", headers: [cookie, "Content-Type: application/json", "X-Vireo-CSRF: 1", "Origin: http://127.0.0.1:\(port)"], body: create)
        #expect(r.0 == 201)
        #expect(try d.client.call("GET", "/v1/vms", as: VMList.self).vms.map(\.name) == ["w1"])

        // Logout ends the session everywhere.
        r = try Self.raw(port, "POST", "/ui/logout", headers: [cookie])
        #expect(r.0 == 303 && r.1["set-cookie"]?.contains("Max-Age=0") == true)
        r = try Self.raw(port, "GET", "/v1/host", headers: [cookie])
        #expect(r.0 == 401)
        r = try Self.raw(port, "GET", "/ui/", headers: [cookie])
        #expect(r.0 == 303 && r.1["location"] == "/ui/login?reason=expired")

        // Unknown pages and methods.
        r = try Self.raw(port, "GET", "/ui/nope")
        #expect(r.0 == 404 && r.1["content-type"]?.hasPrefix("text/html") == true)
        r = try Self.raw(port, "DELETE", "/ui/login")
        #expect(r.0 == 405 && r.1["allow"] == "GET, POST")

        // The daemon's own figures.
        let metrics = try d.req("GET", "/metrics").text
        #expect(metrics.contains("vireo_build_info{version=\"0.1.0\""))
        #expect(metrics.contains(#"vireo_http_requests_total{route="/v1/host",method="GET",status="401"} 2"#))
        #expect(metrics.contains(#"vireo_http_requests_total{route="/v1/vms",method="POST",status="201"} 1"#))
        #expect(metrics.contains(#"vireo_http_request_duration_seconds_count{route="/ui/login",method="POST"} 5"#))
    }

    @Test func unixSocketNeedsNoLoginAndVendorFilesComeFromDebian() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        var r = try d.req("GET", "/ui/login")
        #expect(r.status == 303)   // no token on the unix socket: straight to the console
        r = try d.req("GET", "/ui/")
        #expect(r.status == 200 && r.text.contains("<main"))
        // Debian 12's libjs-xterm has a stub at its xterm.js; the daemon joins node-xterm's modules.
        r = try d.req("GET", "/ui/vendor/xterm.js")
        if access("/usr/share/nodejs/xterm/lib/public/Terminal.js", R_OK) == 0 {
            #expect(r.status == 200 && r.text.contains(#"defs["lib/public/Terminal"] = function (require, module, exports) {"#)
                    && r.text.contains(#"window.Terminal = load("lib/public/Terminal").Terminal;"#) && !r.text.contains(#".test"] ="#))
        } else {
            Issue.record("/usr/share/nodejs/xterm is missing: scripts/setup.sh installs node-xterm")
            #expect(r.status == 404 && r.text.contains("apt-get install libjs-xterm node-xterm"))
        }
        for (path, file, package) in [("/ui/vendor/chart.js", "/usr/share/javascript/chart.js/chart.min.js", "libjs-chart.js"),
                                      ("/ui/vendor/xterm.css", "/usr/share/javascript/xterm/xterm.css", "libjs-xterm")] {
            r = try d.req("GET", path)
            if access(file, R_OK) == 0 {
                #expect(r.status == 200 && r.body == Array(FileManager.default.contents(atPath: file) ?? Data()))
            } else {
                Issue.record("\(file) is missing: scripts/setup.sh installs \(package)")
                #expect(r.status == 404 && r.text.contains("apt-get install \(package)"))
            }
        }
    }
}
