/// One segment register as KVM holds it: the fields map 1:1 onto `struct kvm_segment`
/// (booleans become 0/1; `limit` is the expanded byte limit, e.g. 0xFFFFFFFF for a 4 GiB flat segment).
public struct SegmentRegister: Sendable, Equatable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    /// The 4-bit descriptor type (e.g. 0xB execute/read accessed code, 0x3 read/write accessed data, 0xB busy TSS).
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    /// Default operation size (D/B): 1 for 32-bit segments.
    public var db: Bool
    /// Code/data (true) or system (false) descriptor.
    public var s: Bool
    /// 64-bit code segment.
    public var l: Bool
    /// Granularity: limit counted in 4 KiB units.
    public var g: Bool
    public var avl: Bool
    public var unusable: Bool

    public init(base: UInt64 = 0, limit: UInt32 = 0, selector: UInt16 = 0, type: UInt8 = 0, present: Bool = false,
                dpl: UInt8 = 0, db: Bool = false, s: Bool = false, l: Bool = false, g: Bool = false,
                avl: Bool = false, unusable: Bool = false) {
        self.base = base; self.limit = limit; self.selector = selector; self.type = type
        self.present = present; self.dpl = dpl; self.db = db; self.s = s; self.l = l; self.g = g
        self.avl = avl; self.unusable = unusable
    }

    /// Decodes a legacy 8-byte GDT descriptor (the low half of a 16-byte system descriptor is
    /// enough for a TSS below 4 GiB) into the hidden segment state the CPU would load for `selector`.
    public init(descriptor d: UInt64, selector: UInt16) {
        let base = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24)
        let rawLimit = UInt32(truncatingIfNeeded: (d & 0xFFFF) | (((d >> 48) & 0xF) << 16))
        let g = (d >> 55) & 1 == 1
        self.init(base: base,
                  limit: g ? (rawLimit << 12) | 0xFFF : rawLimit,
                  selector: selector,
                  type: UInt8(truncatingIfNeeded: (d >> 40) & 0xF),
                  present: (d >> 47) & 1 == 1,
                  dpl: UInt8(truncatingIfNeeded: (d >> 45) & 3),
                  db: (d >> 54) & 1 == 1,
                  s: (d >> 44) & 1 == 1,
                  l: (d >> 53) & 1 == 1,
                  g: g,
                  avl: (d >> 52) & 1 == 1)
    }

    /// An unusable (null) segment, as KVM wants for an absent LDT.
    public static let unusableLDT = SegmentRegister(type: 0x2, unusable: true)
}

/// The boot GDT. Its layout follows Documentation/arch/x86/boot.rst, which requires
/// `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18 (flat 4 GiB code and data) for both the 32-bit and
/// the 64-bit boot protocol; PVH only needs flat segments, and gets the same selectors.
///
/// | index | selector | 64-bit protocol              | 32-bit protocol / PVH          |
/// |-------|----------|------------------------------|--------------------------------|
/// | 0     | 0x00     | null                         | null                           |
/// | 1     | 0x08     | null (unused)                | null (unused)                  |
/// | 2     | 0x10     | code, L=1 (0x00AF9B000000FFFF) | code, D=1 (0x00CF9B000000FFFF) |
/// | 3     | 0x18     | data (0x00CF93000000FFFF)    | data (0x00CF93000000FFFF)      |
/// | 4, 5  | 0x20     | busy TSS, base 0, limit 0x67 (16-byte system descriptor) | same (low 8 bytes)  |
public enum BootGDT {
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    public static let code64Descriptor: UInt64 = 0x00AF_9B00_0000_FFFF
    public static let code32Descriptor: UInt64 = 0x00CF_9B00_0000_FFFF
    public static let dataDescriptor: UInt64 = 0x00CF_9300_0000_FFFF
    /// Present, type 0xB (busy TSS), base 0, byte-granular limit 0x67.
    public static let tssDescriptor: UInt64 = 0x0000_8B00_0000_0067

    /// The descriptors, index by index, for a 64-bit (`longMode`) or a 32-bit flat boot.
    public static func descriptors(longMode: Bool) -> [UInt64] {
        [0, 0, longMode ? code64Descriptor : code32Descriptor, dataDescriptor, tssDescriptor, 0]
    }

    /// The GDT as bytes to place at `X86MemoryLayout.gdtAddress`.
    public static func bytes(longMode: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for d in descriptors(longMode: longMode) { out.appendLE(d) }
        return out
    }

    /// GDTR limit (size in bytes minus one).
    public static var limit: UInt16 { UInt16(descriptors(longMode: true).count * 8 - 1) }

    /// Hidden state of CS, the data segments and TR matching the descriptors above.
    public static func segments(longMode: Bool) -> (code: SegmentRegister, data: SegmentRegister, tss: SegmentRegister) {
        (SegmentRegister(descriptor: longMode ? code64Descriptor : code32Descriptor, selector: codeSelector),
         SegmentRegister(descriptor: dataDescriptor, selector: dataSelector),
         SegmentRegister(descriptor: tssDescriptor, selector: tssSelector))
    }
}
