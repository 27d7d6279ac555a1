import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The bytes of a KVM ABI structure, for snapshots: captured with `withUnsafeBytes`, restored
/// only into a structure of exactly the same size (a snapshot from a kernel whose structure
/// differs is refused, never half-applied). Codable as base64 in JSON.
public struct KVMBlob: Codable, Sendable, Equatable {
    public var bytes: [UInt8]

    public init<T>(of value: T) {
        var v = value
        bytes = withUnsafeBytes(of: &v) { Array($0) }
    }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// The structure these bytes hold; throws when the size is not `T`'s.
    public func load<T>(as type: T.Type, initial: T, what: String) throws -> T {
        guard bytes.count == MemoryLayout<T>.size else {
            throw VireoError(.corrupt, "snapshot: \(what) is \(bytes.count) bytes, this kernel's structure is \(MemoryLayout<T>.size)",
                             hint: "restore on a host whose kernel matches the one that saved it")
        }
        var v = initial
        // SAFETY: `bytes` has exactly MemoryLayout<T>.size bytes and T is a plain C structure
        // (no references), so copying them over `v` makes a valid T.
        withUnsafeMutableBytes(of: &v) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        return v
    }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let b = Base64.decode(s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        bytes = b
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(Base64.encode(bytes))
    }
}

/// One MSR's index and value.
public struct MSRValue: Codable, Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) { self.index = index; self.value = value }
}

/// Everything KVM holds for one vCPU, captured while it is outside KVM_RUN.
public struct VCPUState: Codable, Sendable, Equatable {
    public var regs: KVMBlob
    public var sregs: KVMBlob
    /// XSAVE area (x87, SSE, AVX, ...); `fpu` where KVM has no XSAVE.
    public var xsave: KVMBlob?
    public var fpu: KVMBlob?
    public var xcrs: KVMBlob?
    public var msrs: [MSRValue]
    /// Only with the in-kernel irqchip.
    public var lapic: KVMBlob?
    public var mpState: UInt32
    public var events: KVMBlob
    public var debugregs: KVMBlob?

    enum CodingKeys: String, CodingKey {
        case regs, sregs, xsave, fpu, xcrs, msrs, lapic, mpState = "mp_state", events, debugregs
    }
}

/// The VM-wide state KVM emulates: the PICs and IOAPIC, the PIT, the clock.
public struct VMChipState: Codable, Sendable, Equatable {
    /// KVM_GET_IRQCHIP for chip 0 (PIC master), 1 (PIC slave), 2 (IOAPIC).
    public var irqchips: [KVMBlob]
    public var pit: KVMBlob
    public var clock: KVMBlob
}

extension VCPU {
    /// Captures the vCPU's state. `msrIndices`: KVM's MSR list (KVMSystem.msrIndexList());
    /// MSRs KVM refuses to read for this vCPU are left out.
    public func captureState(msrIndices: [UInt32], withLAPIC: Bool) throws -> VCPUState {
        var xsave: KVMBlob?
        var fpuBlob: KVMBlob?
        var x = kvm_xsave()
        if (try? withUnsafeMutableBytes(of: &x) { try ioctl(VIREO_KVM_GET_XSAVE, $0.baseAddress, "KVM_GET_XSAVE failed") }) != nil {
            xsave = KVMBlob(of: x)
        } else {
            fpuBlob = KVMBlob(of: try fpu())
        }
        var xcrs = kvm_xcrs()
        let xcrsBlob = (try? withUnsafeMutableBytes(of: &xcrs) { try ioctl(VIREO_KVM_GET_XCRS, $0.baseAddress, "KVM_GET_XCRS failed") }) != nil ? KVMBlob(of: xcrs) : nil
        var events = kvm_vcpu_events()
        try withUnsafeMutableBytes(of: &events) { try ioctl(VIREO_KVM_GET_VCPU_EVENTS, $0.baseAddress, "KVM_GET_VCPU_EVENTS failed") }
        var dbg = kvm_debugregs()
        let dbgBlob = (try? withUnsafeMutableBytes(of: &dbg) { try ioctl(VIREO_KVM_GET_DEBUGREGS, $0.baseAddress, "KVM_GET_DEBUGREGS failed") }) != nil ? KVMBlob(of: dbg) : nil
        return VCPUState(regs: KVMBlob(of: try registers()), sregs: KVMBlob(of: try specialRegisters()), xsave: xsave, fpu: fpuBlob,
                         xcrs: xcrsBlob, msrs: try readableMSRs(msrIndices), lapic: withLAPIC ? KVMBlob(of: try lapic()) : nil,
                         mpState: try mpState(), events: KVMBlob(of: events), debugregs: dbgBlob)
    }

    /// KVM_GET_MSRS stops at the first MSR it cannot read: skip that one and go on.
    private func readableMSRs(_ indices: [UInt32]) throws -> [MSRValue] {
        var out: [MSRValue] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let got = try getMSRs(Array(rest))
            out += got.map { MSRValue(index: $0.index, value: $0.value) }
            rest = rest.dropFirst(got.count + 1)
        }
        return out
    }

    /// Puts a captured state back (CPUID must already be set). Order matters: MSRs after the
    /// special registers and the LAPIC, events last.
    public func restoreState(_ s: VCPUState) throws {
        try setMPState(s.mpState)
        try setRegisters(try s.regs.load(as: kvm_regs.self, initial: kvm_regs(), what: "vCPU \(id) registers"))
        try setSpecialRegisters(try s.sregs.load(as: kvm_sregs.self, initial: kvm_sregs(), what: "vCPU \(id) special registers"))
        if let xs = s.xsave {
            var x = try xs.load(as: kvm_xsave.self, initial: kvm_xsave(), what: "vCPU \(id) XSAVE area")
            try withUnsafeMutableBytes(of: &x) { try ioctl(VIREO_KVM_SET_XSAVE, $0.baseAddress, "KVM_SET_XSAVE failed") }
        } else if let f = s.fpu {
            try setFPU(try f.load(as: kvm_fpu.self, initial: kvm_fpu(), what: "vCPU \(id) FPU"))
        }
        if let xc = s.xcrs {
            var x = try xc.load(as: kvm_xcrs.self, initial: kvm_xcrs(), what: "vCPU \(id) XCRs")
            try withUnsafeMutableBytes(of: &x) { try ioctl(VIREO_KVM_SET_XCRS, $0.baseAddress, "KVM_SET_XCRS failed") }
        }
        if let d = s.debugregs {
            var x = try d.load(as: kvm_debugregs.self, initial: kvm_debugregs(), what: "vCPU \(id) debug registers")
            try withUnsafeMutableBytes(of: &x) { try ioctl(VIREO_KVM_SET_DEBUGREGS, $0.baseAddress, "KVM_SET_DEBUGREGS failed") }
        }
        if let l = s.lapic { try setLAPIC(try l.load(as: kvm_lapic_state.self, initial: kvm_lapic_state(), what: "vCPU \(id) LAPIC")) }
        // Only the MSRs whose value differs from what the fresh vCPU holds are written: KVM
        // reports some MSRs it will not take from user space unless the guest's CPUID enables
        // them, and those still hold their reset value.
        let current = Dictionary(try readableMSRs(s.msrs.map(\.index)).map { ($0.index, $0.value) }, uniquingKeysWith: { a, _ in a })
        let changed = s.msrs.filter { current[$0.index] != $0.value }
        var rest = changed[...]
        while !rest.isEmpty {
            let accepted = try setMSRs(rest.map { ($0.index, $0.value) })
            guard accepted < rest.count else { break }
            let bad = rest[rest.startIndex + accepted]
            throw VireoError(.corrupt, "snapshot: KVM refused MSR 0x\(String(bad.index, radix: 16)) = 0x\(String(bad.value, radix: 16)) of vCPU \(id)",
                             hint: "restore on a host with the same CPU features as the one that saved it")
        }
        var ev = try s.events.load(as: kvm_vcpu_events.self, initial: kvm_vcpu_events(), what: "vCPU \(id) events")
        try withUnsafeMutableBytes(of: &ev) { try ioctl(VIREO_KVM_SET_VCPU_EVENTS, $0.baseAddress, "KVM_SET_VCPU_EVENTS failed") }
    }

    /// Tells the guest's kvmclock that the vCPU was stopped (soft-lockup watchdogs do not fire).
    public func notifyClockPaused() { _ = vireo_ioctl(fd.rawValue, VIREO_KVM_KVMCLOCK_CTRL, 0) }
}

extension VirtualMachine {
    public func captureChipState() throws -> VMChipState {
        var chips: [KVMBlob] = []
        for id in UInt32(0)...2 {
            var c = kvm_irqchip()
            c.chip_id = id
            try withUnsafeMutableBytes(of: &c) { try ioctl(VIREO_KVM_GET_IRQCHIP, $0.baseAddress, "KVM_GET_IRQCHIP \(id) failed") }
            chips.append(KVMBlob(of: c))
        }
        var pit = kvm_pit_state2()
        try withUnsafeMutableBytes(of: &pit) { try ioctl(VIREO_KVM_GET_PIT2, $0.baseAddress, "KVM_GET_PIT2 failed") }
        var clock = kvm_clock_data()
        try withUnsafeMutableBytes(of: &clock) { try ioctl(VIREO_KVM_GET_CLOCK, $0.baseAddress, "KVM_GET_CLOCK failed") }
        return VMChipState(irqchips: chips, pit: KVMBlob(of: pit), clock: KVMBlob(of: clock))
    }

    public func restoreChipState(_ s: VMChipState) throws {
        guard s.irqchips.count == 3 else { throw VireoError(.corrupt, "snapshot: \(s.irqchips.count) interrupt controllers, expected 3") }
        for (i, blob) in s.irqchips.enumerated() {
            var c = try blob.load(as: kvm_irqchip.self, initial: kvm_irqchip(), what: "interrupt controller \(i)")
            guard c.chip_id == UInt32(i) else { throw VireoError(.corrupt, "snapshot: interrupt controller \(i) says it is chip \(c.chip_id)") }
            try withUnsafeMutableBytes(of: &c) { try ioctl(VIREO_KVM_SET_IRQCHIP, $0.baseAddress, "KVM_SET_IRQCHIP \(i) failed") }
        }
        var pit = try s.pit.load(as: kvm_pit_state2.self, initial: kvm_pit_state2(), what: "PIT")
        try withUnsafeMutableBytes(of: &pit) { try ioctl(VIREO_KVM_SET_PIT2, $0.baseAddress, "KVM_SET_PIT2 failed") }
        var clock = try s.clock.load(as: kvm_clock_data.self, initial: kvm_clock_data(), what: "clock")
        clock.flags = 0   // only the clock value is set back (KVM_SET_CLOCK takes no other flags here)
        try withUnsafeMutableBytes(of: &clock) { try ioctl(VIREO_KVM_SET_CLOCK, $0.baseAddress, "KVM_SET_CLOCK failed") }
    }
}

/// Standard base64 (RFC 4648) without Foundation.
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            let n = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], rest == 2 ? alphabet[Int(n >> 6 & 63)] : 61, 61]
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: String) -> [UInt8]? {
        var table = [Int16](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int16(i) }
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            var n: UInt32 = 0
            var pad = 0
            for j in 0..<4 {
                let c = chars[i + j]
                if c == 61 { guard i + 4 == chars.count, j >= 2 else { return nil }; pad += 1; n <<= 6; continue }
                guard pad == 0 else { return nil }
                let v = table[Int(c)]
                guard v >= 0 else { return nil }
                n = n << 6 | UInt32(v)
            }
            out.append(UInt8(n >> 16 & 0xFF))
            if pad < 2 { out.append(UInt8(n >> 8 & 0xFF)) }
            if pad < 1 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }
}
