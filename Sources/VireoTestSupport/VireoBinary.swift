import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The real `vireo` binary that CLI, VMM and host-daemon tests run: `$VIREO_BIN`, else the most
/// recently built of `.build/release/vireo` and `.build/debug/vireo`. (A library target only the
/// test targets depend on; it is not part of the `vireo` product.)
public enum VireoBinary {
    public static let packageRoot: String = {
        var parts = #filePath.split(separator: "/").map(String.init)
        parts.removeLast(3)   // Sources/VireoTestSupport/VireoBinary.swift
        return "/" + parts.joined(separator: "/")
    }()

    public static let path: String? = {
        if let env = getenv("VIREO_BIN") { return String(cString: env) }
        var best: (path: String, mtime: Int)?
        for config in ["release", "debug"] {
            let p = "\(packageRoot)/.build/\(config)/vireo"
            var st = stat()
            if stat(p, &st) == 0, best == nil || st.st_mtim.tv_sec > best?.mtime ?? 0 { best = (p, st.st_mtim.tv_sec) }
        }
        if best == nil { print("SKIPPED (tests that run the vireo binary): none built under .build/ and VIREO_BIN unset") }
        return best?.path
    }()

    /// Whether /dev/kvm is usable (probe-guest VMs need it); says so once when it is not.
    public static let hasKVM: Bool = {
        let ok = access("/dev/kvm", R_OK | W_OK) == 0
        if !ok { print("SKIPPED (tests that run VMs): /dev/kvm is not usable here; probe-guest VMs need it") }
        return ok
    }()

    /// Runs vireo with `args`; returns (status, stdout, stderr).
    public static func run(_ args: [String]) throws -> (Int32, String, String) {
        guard let path else { throw VireoError(.notFound, "vireo binary not built") }
        let child = try ChildProcess([path] + args)
        var out = "", err = ""
        while let l = ChildProcess.readLine(child.stdout) { out += l + "\n" }
        while let l = ChildProcess.readLine(child.stderr) { err += l + "\n" }
        return (child.wait(), out, err)
    }
}
