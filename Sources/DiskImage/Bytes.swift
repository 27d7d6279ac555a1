import VireoSupport

// Big-endian field access and checked arithmetic for parsing untrusted image metadata.

@inline(__always)
func be64(_ b: [UInt8], _ o: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<8 { v = (v << 8) | UInt64(b[o + i]) }
    return v
}

@inline(__always)
func be32(_ b: [UInt8], _ o: Int) -> UInt32 {
    var v: UInt32 = 0
    for i in 0..<4 { v = (v << 8) | UInt32(b[o + i]) }
    return v
}

@inline(__always)
func be16(_ b: [UInt8], _ o: Int) -> UInt16 {
    UInt16(b[o]) << 8 | UInt16(b[o + 1])
}

@inline(__always)
func le64(_ b: [UInt8], _ o: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in (0..<8).reversed() { v = (v << 8) | UInt64(b[o + i]) }
    return v
}

@inline(__always)
func le32(_ b: [UInt8], _ o: Int) -> UInt32 {
    var v: UInt32 = 0
    for i in (0..<4).reversed() { v = (v << 8) | UInt32(b[o + i]) }
    return v
}

@inline(__always)
func le16(_ b: [UInt8], _ o: Int) -> UInt16 {
    UInt16(b[o]) | UInt16(b[o + 1]) << 8
}

@inline(__always)
func put64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
    for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(i))) }
}

@inline(__always)
func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
    for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(i))) }
}

@inline(__always)
func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) {
    b[o] = UInt8(truncatingIfNeeded: v >> 8); b[o + 1] = UInt8(truncatingIfNeeded: v)
}

/// Decodes a big-endian UInt64 table (L1, L2, refcount table) from raw bytes.
func decodeBE64Table(_ bytes: [UInt8], count: Int) -> [UInt64] {
    var out = [UInt64](repeating: 0, count: count)
    bytes.withUnsafeBytes { raw in
        // SAFETY: `count * 8 <= bytes.count` is guaranteed by every caller (table sizes are
        // derived from the buffer they read); loadUnaligned reads within `raw`.
        for i in 0..<min(count, raw.count / 8) {
            out[i] = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
        }
    }
    return out
}

func encodeBE64Table(_ table: [UInt64], paddedTo size: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: max(size, table.count * 8))
    out.withUnsafeMutableBytes { raw in
        // SAFETY: the buffer holds at least `table.count * 8` bytes.
        for (i, v) in table.enumerated() {
            raw.storeBytes(of: v.bigEndian, toByteOffset: i * 8, as: UInt64.self)
        }
    }
    return out
}

/// Checked arithmetic: numbers that come from a file must never trap.
@inline(__always)
func checkedAdd(_ a: UInt64, _ b: UInt64, _ what: @autoclosure () -> String) throws(VireoError) -> UInt64 {
    let (r, o) = a.addingReportingOverflow(b)
    if o { throw VireoError(.corrupt, "\(what()): offset arithmetic overflows", hint: "the image is damaged or hostile; do not use it") }
    return r
}

@inline(__always)
func checkedMul(_ a: UInt64, _ b: UInt64, _ what: @autoclosure () -> String) throws(VireoError) -> UInt64 {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    if o { throw VireoError(.corrupt, "\(what()): size arithmetic overflows", hint: "the image is damaged or hostile; do not use it") }
    return r
}

@inline(__always)
func divRoundUp(_ a: UInt64, _ b: UInt64) -> UInt64 {
    a / b + (a % b == 0 ? 0 : 1)
}

@inline(__always)
func alignUp(_ a: UInt64, _ b: UInt64) -> UInt64 {
    divRoundUp(a, b) &* b
}

func isAllZero(_ p: UnsafeRawBufferPointer) -> Bool {
    guard let base = p.baseAddress else { return true }
    let n = p.count
    var i = 0
    // SAFETY: every load stays inside [base, base+n).
    while i + 8 <= n {
        if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
        i += 8
    }
    while i < n {
        if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
        i += 1
    }
    return true
}
