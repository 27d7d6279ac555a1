/// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the checksum of VHDX headers,
/// region tables and log entries.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { (i: Int) -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82f6_3b78 : c >> 1 }
        return c
    }

    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xffff_ffff
    }

    /// The checksum of `bytes` with the 4-byte checksum field at `field` taken as zero.
    static func checksum(_ bytes: [UInt8], zeroingFieldAt field: Int) -> UInt32 {
        var copy = bytes
        for i in field..<min(field + 4, copy.count) { copy[i] = 0 }
        return checksum(copy[...])
    }
}
