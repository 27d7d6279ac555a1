import DiskImage
import Foundation
import Testing
import VireoSupport
import VireoTestSupport

/// Shared helpers: temporary directories, running qemu-img / qemu-io / vireo, image contents.
enum TS {
    static let qemuImg: String? = which("qemu-img")
    static let qemuIO: String? = which("qemu-io")
    static var hasQemu: Bool {
        let ok = qemuImg != nil && qemuIO != nil
        if !ok { skipNote("qemu-img/qemu-io not installed (apt-get install qemu-utils); interop tests skipped") }
        return ok
    }

    static func skipNote(_ s: String) {
        FileHandle.standardError.write(Data("SKIP: \(s)\n".utf8))
    }

    static func which(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }

    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The vireo binary, found as every test target finds it (VireoTestSupport): $VIREO_BIN, else
    /// the most recently built of .build/release/vireo and .build/debug/vireo (a stale release
    /// build no longer shadows the debug build just made).
    static let vireo: String? = VireoBinary.path.flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    static var hasVireo: Bool {
        if vireo == nil { skipNote("vireo binary not built (swift build --product vireo, or set VIREO_BIN); CLI tests skipped") }
        return vireo != nil
    }

    /// Removes leftovers of earlier test processes that are no longer running (once per process).
    static let sweptOldRuns: Bool = {
        let tmp = FileManager.default.temporaryDirectory.path
        for d in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where d.hasPrefix("vireo-disk-tests-") {
            if let pid = Int32(d.dropFirst("vireo-disk-tests-".count)), pid != getpid(), kill(pid, 0) != 0 {
                try? FileManager.default.removeItem(atPath: tmp + "/" + d)
            }
        }
        return true
    }()

    static func tempDir(_ name: String = #function) -> String {
        _ = sweptOldRuns
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("vireo-disk-tests-\(getpid())")
        let clean = name.filter { $0.isLetter || $0.isNumber }
        let dir = base.appendingPathComponent("\(clean)-\(UUID().uuidString.prefix(8))")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    struct Result { var status: Int32; var out: String; var err: String }

    @discardableResult
    static func run(_ exe: String, _ args: [String], check: Bool = true) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        // Drain stderr on another thread so neither pipe can fill up and block the child.
        let errBox = DataBox()
        let t = Thread { errBox.data = e.fileHandleForReading.readDataToEndOfFile(); errBox.done.signal() }
        t.start()
        let od = o.fileHandleForReading.readDataToEndOfFile()
        errBox.done.wait()
        let ed = errBox.data
        p.waitUntilExit()
        let r = Result(status: p.terminationStatus, out: String(decoding: od, as: UTF8.self), err: String(decoding: ed, as: UTF8.self))
        if check && r.status != 0 {
            throw VireoError(.io, "\(exe) \(args.joined(separator: " ")) failed (\(r.status)): \(r.err)\(r.out)")
        }
        return r
    }

    @discardableResult
    static func qimg(_ args: String...) throws -> Result { try run(qemuImg ?? "/usr/bin/qemu-img", args) }
    @discardableResult
    static func qio(_ args: String...) throws -> Result { try run(qemuIO ?? "/usr/bin/qemu-io", args) }
    @discardableResult
    static func vireoRun(_ args: [String], check: Bool = true) throws -> Result { try run(vireo ?? "vireo", ["disk"] + args, check: check) }

    /// `qemu-img check` must report no corruption (leaks allowed only if `allowLeaks`).
    static func qemuCheck(_ path: String, allowLeaks: Bool = false) throws {
        let r = try run(qemuImg ?? "qemu-img", ["check", "--output", "json", path], check: false)
        let ok = r.status == 0 || (allowLeaks && r.status == 3)
        #expect(ok, "qemu-img check \(path) exited \(r.status): \(r.out) \(r.err)")
        if !ok { throw VireoError(.corrupt, "qemu-img check failed for \(path)") }
    }

    /// Reads an image's whole virtual disk through Vireo.
    static func readAll(_ img: BlockImage) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(img.virtualSize))
        try out.withUnsafeMutableBytes { p in try img.read(into: p, at: 0) }
        return out
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Deterministic pseudo-random bytes.
    static func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var s = seed | 1
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            var v = s
            for _ in 0..<8 where i < count { out[i] = UInt8(truncatingIfNeeded: v); v >>= 8; i += 1 }
        }
        return out
    }

    static func write(_ img: BlockImage, _ bytes: [UInt8], at off: UInt64) throws {
        try bytes.withUnsafeBytes { p in try img.write(p, at: off) }
    }

    static func read(_ img: BlockImage, _ count: Int, at off: UInt64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { p in try img.read(into: p, at: off) }
        return out
    }

    /// Reads an image through qemu-img (convert to raw) for a byte-level reference.
    static func qemuContents(_ path: String, format: String? = nil, snapshot: String? = nil) throws -> [UInt8] {
        let out = path + ".qemu-ref.raw"
        var args = ["convert"]
        if let format { args += ["-f", format] }
        if let snapshot { args += ["-l", "snapshot.name=\(snapshot)"] }
        args += ["-O", "raw", path, out]
        try run(qemuImg ?? "qemu-img", args)
        defer { try? FileManager.default.removeItem(atPath: out) }
        return try readFile(out)
    }

    /// Opens, reads in pieces, maps (as `vireo disk map`) and converts (as `vireo disk convert`).
    static func exerciseHostile(_ path: String) -> VireoError? {
        do {
            let img = try DiskImage.open(path: path, options: OpenOptions(readOnly: true, backingPolicy: .confined))
            defer { try? img.close() }
            let size = img.virtualSize
            for off in [0, 512, 65536, size / 2, size &- 4096] where off < size {
                _ = try TS.read(img, Int(min(4096, size - off)), at: off)
            }
            if size <= 256 << 20 {
                _ = try ImageOperations.map(img)
                try ImageOperations.convert(img, to: path + ".out.qcow2", options: ImageOperations.ConvertOptions())
            }
            return nil
        } catch let e as VireoError {
            return e
        } catch {
            Issue.record("non-VireoError \(error)")
            return nil
        }
    }

    // MARK: VDI
}

final class DataBox: @unchecked Sendable {
    var data = Data()
    let done = DispatchSemaphore(value: 0)
}
