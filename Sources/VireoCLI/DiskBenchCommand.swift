import ArgumentParser
import DiskImage
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

struct DiskBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Measure I/O on an image (like qemu-img bench: sequential by default; -S sets the stride).")
    @Flag(name: .short, help: "Write instead of read.") var w = false
    @Option(name: .short, help: "Request size (default 4K).") var s: String = "4K"
    @Option(name: .short, help: "Number of requests (default 75000).") var c: Int = 75000
    @Option(name: .customShort("S"), help: "Step between requests (default: the request size); offsets wrap at the end of the disk.") var step: String?
    @Option(name: .short, help: "Start offset.") var o: String = "0"
    @Flag(name: .customLong("random"), help: "Random aligned offsets instead of a fixed step.") var random = false
    @Option(name: .customLong("pattern"), help: "Byte to write (default 0xa5).") var pattern: Int = 0xa5
    @Option(name: .customLong("flush-interval"), help: "Flush after this many writes (0: never).") var flushInterval: Int = 0
    @Option(name: .short) var f: String?
    @Flag(name: .short) var q = false
    @Argument var file: String

    func run() throws {
        let fmt = try parseFormat(f)
        let size = try parseSize(s)
        let stepSize = try step.map { x in try parseSize(x) } ?? size
        let start = try parseSize(o)
        guard size > 0, size <= 64 << 20, c > 0 else { throw ValidationError("bad request size or count") }
        try runDisk { () throws(VireoError) in
            let img = try DiskImage.open(path: file, format: fmt, options: OpenOptions(readOnly: !w, cache: .writeback))
            defer { try? img.close() }
            let disk = img.virtualSize
            guard disk >= size else { throw VireoError(.invalidArgument, "image smaller than one request") }
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(size), alignment: 4096)
            defer { buf.deallocate() }
            buf.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: pattern))
            if !q {
                print("Sending \(c) \(w ? "write" : "read") requests, \(size) bytes each, from offset \(start), step size \(random ? 0 : stepSize)\(random ? " (random offsets)" : "")")
            }
            var off = start % disk
            var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
            let slots = (disk - size) / size + 1
            var t0 = timespec(), t1 = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t0)
            for i in 0..<c {
                if random {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                    off = (rng % slots) * size
                }
                if off + size > disk { off = 0 }
                if w {
                    try img.write(UnsafeRawBufferPointer(buf), at: off)
                    if flushInterval > 0 && (i + 1) % flushInterval == 0 { try img.flush() }
                } else {
                    try img.read(into: buf, at: off)
                }
                if !random { off = (off + stepSize) % disk }
            }
            clock_gettime(CLOCK_MONOTONIC, &t1)
            let secs = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
            if !q {
                let r = (secs * 1000).rounded() / 1000
                print("Run completed in \(r) seconds.")
            }
        }
    }
}
