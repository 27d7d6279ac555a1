import CZlib
import CZstd
import VireoSupport

/// zlib deflate/inflate for qcow2 compressed clusters (raw deflate, 4 KiB window) and
/// VMDK stream-optimized grains (zlib-wrapped deflate).
enum Zlib {
    /// qcow2 uses raw deflate with a 4 KiB window (windowBits -12).
    static let qcow2WindowBits: Int32 = -12
    /// VMDK grains are zlib streams.
    static let zlibWindowBits: Int32 = 15

    /// Inflates `input` into `output`, which must be filled completely.
    static func inflate(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                        windowBits: Int32, allowShort: Bool = false, what: @autoclosure () -> String) throws(VireoError) {
        var s = z_stream()
        guard inflateInit2_(&s, windowBits, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw VireoError(.internalError, "zlib inflateInit failed")
        }
        defer { inflateEnd(&s) }
        // SAFETY: zlib reads avail_in bytes from next_in and writes at most avail_out bytes
        // to next_out; both describe the caller's buffers exactly and outlive this call.
        s.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
        s.avail_in = UInt32(input.count)
        s.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        s.avail_out = UInt32(output.count)
        let r = CZlib.inflate(&s, Z_FINISH)
        let ok = r == Z_STREAM_END || (r == Z_BUF_ERROR && s.avail_out == 0) || (r == Z_OK && s.avail_out == 0)
        if allowShort && r == Z_STREAM_END {
            // SAFETY: zero the unfilled tail of `output`.
            if s.avail_out > 0, let base = output.baseAddress {
                (base + (output.count - Int(s.avail_out))).initializeMemory(as: UInt8.self, repeating: 0, count: Int(s.avail_out))
            }
            return
        }
        guard ok, s.avail_out == 0 else {
            throw VireoError(.corrupt, "\(what()): compressed data is invalid (zlib status \(r), \(s.avail_out) bytes short)",
                             hint: "the image is damaged")
        }
    }

    /// Deflates `input` into `output`; returns the compressed length, or nil when it does not fit.
    static func deflate(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                        windowBits: Int32) throws(VireoError) -> Int? {
        var s = z_stream()
        guard deflateInit2_(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, windowBits, 9, Z_DEFAULT_STRATEGY,
                            zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw VireoError(.internalError, "zlib deflateInit failed")
        }
        defer { deflateEnd(&s) }
        // SAFETY: as in inflate: zlib stays inside the two buffers' exact bounds.
        s.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
        s.avail_in = UInt32(input.count)
        s.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        s.avail_out = UInt32(output.count)
        let r = CZlib.deflate(&s, Z_FINISH)
        guard r == Z_STREAM_END else { return nil }
        return output.count - Int(s.avail_out)
    }
}

/// zstd for qcow2 compressed clusters with compression_type=zstd. QEMU writes one zstd frame
/// per cluster; the stored length is rounded up to whole 512-byte sectors, so the input may
/// carry trailing bytes after the frame (or, for the last cluster, fewer than stored).
enum Zstd {
    /// Decompresses the frames at the start of `input` until `output` is full. Trailing bytes
    /// after the data that fills `output` are ignored (sector padding).
    static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                           what: @autoclosure () -> String) throws(VireoError) {
        guard let ds = ZSTD_createDStream() else { throw VireoError(.internalError, "zstd: cannot create a decompression stream") }
        defer { ZSTD_freeDStream(ds) }
        _ = ZSTD_initDStream(ds)
        guard let outBase = output.baseAddress, let inBase = input.baseAddress else {
            if output.count == 0 { return }
            throw VireoError(.corrupt, "\(what()): compressed data is empty", hint: "the image is damaged")
        }
        // SAFETY: zstd reads at most `size - pos` bytes of `src` and writes at most
        // `size - pos` bytes of `dst`; both describe the caller's buffers, which outlive the call.
        var inb = ZSTD_inBuffer(src: inBase, size: input.count, pos: 0)
        var outb = ZSTD_outBuffer(dst: outBase, size: output.count, pos: 0)
        var last = 0
        while outb.pos < outb.size {
            let before = (inb.pos, outb.pos)
            last = ZSTD_decompressStream(ds, &outb, &inb)
            if ZSTD_isError(last) != 0 {
                let name = ZSTD_getErrorName(last).map { String(cString: $0) } ?? "error"
                throw VireoError(.corrupt, "\(what()): compressed data is invalid (zstd: \(name))", hint: "the image is damaged")
            }
            // No progress: the input ended before the cluster was filled.
            if inb.pos == before.0 && outb.pos == before.1 {
                throw VireoError(.corrupt, "\(what()): compressed data ends \(outb.size - outb.pos) bytes short",
                                 hint: "the image is damaged")
            }
        }
        // The frame must end exactly where the cluster does (more data would overflow it).
        guard last == 0 else {
            throw VireoError(.corrupt, "\(what()): compressed data decodes to more than one cluster", hint: "the image is damaged")
        }
    }

    /// Compresses `input` into one zstd frame in `output`; returns its length, or nil when it does not fit.
    static func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, level: Int32 = 3) -> Int? {
        guard let src = input.baseAddress, let dst = output.baseAddress else { return nil }
        // SAFETY: ZSTD_compress reads input.count bytes of src and writes at most output.count bytes to dst.
        let r = ZSTD_compress(dst, output.count, src, input.count, level)
        if ZSTD_isError(r) != 0 { return nil }
        return r
    }
}
