import VireoSupport

// Little-endian, bounds-checked byte access used by every parser and builder in X86Boot.
// Readers return nil instead of trapping; writers only touch buffers this module sized itself.

@inline(__always)
func hexString<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

extension Array where Element == UInt8 {
    /// The little-endian integer at `offset`, or nil when it does not fit inside the array.
    func readLE<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, at offset: Int) -> T? {
        let width = MemoryLayout<T>.size
        guard offset >= 0, offset <= count, width <= count - offset else { return nil }
        var value: T = 0
        for i in 0..<width { value |= T(self[offset + i]) << T(8 * i) }
        return value
    }

    func u8(_ offset: Int) -> UInt8? { readLE(UInt8.self, at: offset) }
    func u16(_ offset: Int) -> UInt16? { readLE(UInt16.self, at: offset) }
    func u32(_ offset: Int) -> UInt32? { readLE(UInt32.self, at: offset) }
    func u64(_ offset: Int) -> UInt64? { readLE(UInt64.self, at: offset) }

    /// Writes `value` little-endian at `offset`. The caller sized the buffer; an out-of-range
    /// write is dropped rather than trapping (tests catch layout mistakes).
    mutating func writeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let width = MemoryLayout<T>.size
        guard offset >= 0, offset <= count, width <= count - offset else { return }
        for i in 0..<width { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    /// Appends `value` little-endian.
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        for i in 0..<MemoryLayout<T>.size { append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }

    /// Appends `text` as ASCII, padded with `pad` (or truncated) to exactly `width` bytes.
    mutating func appendASCII(_ text: String, width: Int, pad: UInt8 = 0x20) {
        var bytes = Array(text.utf8.prefix(width))
        while bytes.count < width { bytes.append(pad) }
        append(contentsOf: bytes)
    }
}

/// Overflow-checked arithmetic on untrusted values: nil on overflow.
@inline(__always)
func checkedAdd(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (r, o) = a.addingReportingOverflow(b)
    return o ? nil : r
}

@inline(__always)
func checkedMul(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? nil : r
}

/// Rounds `v` up to a multiple of the power of two `align`; nil on overflow.
@inline(__always)
func alignUp(_ v: UInt64, _ align: UInt64) -> UInt64? {
    guard align > 0 else { return v }
    guard let bumped = checkedAdd(v, align - 1) else { return nil }
    return bumped & ~(align - 1)
}

@inline(__always)
func alignDown(_ v: UInt64, _ align: UInt64) -> UInt64 {
    align > 0 ? v & ~(align - 1) : v
}

/// Converts an untrusted 64-bit size or offset to Int, or nil when it does not fit.
@inline(__always)
func intValue(_ v: UInt64) -> Int? { v <= UInt64(Int.max) ? Int(v) : nil }

/// The 8-bit two's-complement checksum that makes `bytes` sum to zero.
func checksumByte(_ bytes: ArraySlice<UInt8>) -> UInt8 {
    var sum: UInt8 = 0
    for b in bytes { sum = sum &+ b }
    return 0 &- sum
}
