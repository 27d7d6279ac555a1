import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// xterm.js for the web console's terminal, from Debian's packages. Debian 12's libjs-xterm
/// ships as /usr/share/javascript/xterm/xterm.js only a stub that `require`s CommonJS modules it
/// does not contain; node-xterm has those modules (/usr/share/nodejs/xterm/lib). The daemon
/// joins them into one script for the browser: each module becomes a function in a small
/// CommonJS loader, and the result sets `window.Terminal`. A real browser bundle at the
/// libjs-xterm path (newer Debian) is served as it is.
enum WebXtermBundle {
    static let bundlePath = "/usr/share/javascript/xterm/xterm.js"
    static let moduleRoot = "/usr/share/nodejs/xterm"

    /// The script, or nil when neither package provides a usable one.
    static func script() -> [UInt8]? {
        if let bytes = try? OwnedFD.readFile(bundlePath, limit: 4 << 20, what: "xterm.js"), !isStub(bytes) { return bytes }
        var modules: [(id: String, source: [UInt8])] = []
        var total = 0
        collect(moduleRoot + "/lib", id: "lib", into: &modules, total: &total)
        guard modules.contains(where: { $0.id == "lib/public/Terminal" }) else { return nil }
        var out = Array("""
            // xterm.js from Debian's node-xterm (\(moduleRoot)/lib), joined by the Vireo daemon.
            (function () {
            var defs = {}, cache = {};
            function resolve(from, rel) {
              var parts = from.split("/"); parts.pop();
              rel.split("/").forEach(function (p) { if (p === "..") parts.pop(); else if (p !== ".") parts.push(p); });
              return parts.join("/");
            }
            function load(id) {
              if (cache[id]) return cache[id].exports;
              var fn = defs[id];
              if (!fn) throw new Error("xterm.js module " + id + " is missing from \(moduleRoot)/lib");
              var m = { exports: {} }; cache[id] = m;
              fn(function (r) { return load(resolve(id, r)); }, m, m.exports);
              return m.exports;
            }

            """.utf8)
        for m in modules {
            out += Array("defs[\"\(m.id)\"] = function (require, module, exports) {\n".utf8)
            out += m.source
            out += Array("\n};\n".utf8)
        }
        out += Array("window.Terminal = load(\"lib/public/Terminal\").Terminal;\n})();\n".utf8)
        return out
    }

    /// Debian 12's stub: tiny, and it `require`s what a browser does not have.
    static func isStub(_ bytes: [UInt8]) -> Bool {
        bytes.count < 4096 && String(decoding: bytes, as: UTF8.self).contains("require(")
    }

    /// Every module under `dir` (not the tests), its id the path without ".js". Bounded: at
    /// most 400 files and 8 MiB, names of letters, digits, '_', '-' and '.' only (they go into
    /// the script as string literals).
    private static func collect(_ dir: String, id: String, into modules: inout [(id: String, source: [UInt8])], total: inout Int) {
        guard let d = opendir(dir) else { return }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned.
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            guard name != "." && name != "..", name.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 45 || $0 == 46 }) else { continue }
            names.append(name)
        }
        for name in names.sorted() {
            guard modules.count < 400, total < 8 << 20 else { return }
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                collect(path, id: id + "/" + name, into: &modules, total: &total)
            } else if name.hasSuffix(".js") && !name.hasSuffix(".test.js"),
                      let bytes = try? OwnedFD.readFile(path, limit: 2 << 20, what: "xterm.js module") {
                total += bytes.count
                modules.append((id + "/" + String(name.dropLast(3)), bytes))
            }
        }
    }
}
