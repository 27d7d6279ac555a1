import CLinux
import CProbeGuest
import GuestMemory
import KVM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// What the probe guest does once it reaches ring 3 (see Sources/CProbeGuest/probe.S).
public enum ProbeWorkload: Sendable, Equatable {
    /// `iterations` guest `out` instructions to port 0xF6: one PIO exit each.
    case pioLoop(iterations: UInt64)
    /// `iterations` 4-byte stores to `address` (unmapped guest-physical): one MMIO exit each.
    case mmioLoop(iterations: UInt64, address: UInt64)
    /// Writes one word in every page of the RAM above 2 MiB, `passes` times (0 = forever),
    /// with a marker exit after each pass.
    case dirty(passes: UInt64)
    /// Writes one word in every page of the RAM above 2 MiB, over and over: the first pass at
    /// full speed (all of RAM in use), then paced by the VMM to `mibPerSecond` MiB of pages per
    /// second (a marker exit after each MiB; the VMM holds the vCPU back when it runs ahead):
    /// a guest with a set dirty rate (`vireo bench migrate`).
    case dirtyRate(mibPerSecond: UInt64)
    /// `iterations` of a dec/jnz loop, then done: native CPU speed.
    case compute(iterations: UInt64)
    /// Jumps to `address` (no RAM there): an instruction fetch KVM cannot emulate.
    case executeUnmapped(address: UInt64)
    /// Runs a flat binary (loaded at `ProbeGuest.imageAddress`) in ring 3: the virtio probe
    /// drivers of bench/probe-virtio. It reports through `ProbeGuest.reportPort`.
    case image(path: String)
    /// Echoes COM1 forever: each received byte is sent back with a-z uppercased ('#' answers
    /// with 4096 '#'). Stops only when the VMM is stopped.
    case echo
    /// Fills the RAM above 2 MiB with a pattern (`mode`), then rewrites its first `hotBytes`
    /// over and over; on a `probe-verify` request it checks every word and reports the pages
    /// that differ (`status` -> probe). Memory reclaim's proof: the pattern must survive.
    case pattern(mode: PatternMode, hotBytes: UInt64)

    public enum PatternMode: UInt64, Sendable, CaseIterable {
        /// Each 8-byte word holds its guest-physical address (compresses to about a third).
        case compressible = 0
        /// A hash of the address: incompressible.
        case random = 1
        /// All zero (written, so resident).
        case zero = 2
        /// Every page alike (each word its offset in the page): what page sharing merges.
        case identical = 3
        public var name: String { String(describing: self) }
    }

    public static let defaultMMIOAddress: UInt64 = 0xD000_0000

    /// The pace of a `dirtyRate` workload in bytes per second (nil for the others).
    public var dirtyBytesPerSecond: UInt64? {
        if case let .dirtyRate(r) = self { return r << 20 }
        return nil
    }

    /// A workload from its configuration text: pio:N, mmio:N, dirty[:PASSES], dirty-rate:MIBPS, compute:N, echo.
    public static func parse(_ text: String) throws -> ProbeWorkload {
        if text == "pattern" || text.hasPrefix("pattern:") { return try parsePattern(text) }
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        let count = parts.count > 1 ? UInt64(parts[1]) : nil
        let form = "one of pio:N, mmio:N, dirty[:PASSES], dirty-rate:MIBPS, compute:N, echo, pattern[:MODE[:HOT-MIB]]"
        if parts.count > 1, count == nil { throw VireoError(.invalidArgument, "probe '\(text)': '\(parts[1])' is not a count (\(form))") }
        switch parts.first ?? "" {
        case "pio": return .pioLoop(iterations: count ?? 100_000)
        case "mmio": return .mmioLoop(iterations: count ?? 100_000, address: defaultMMIOAddress)
        case "dirty": return .dirty(passes: count ?? 0)
        case "dirty-rate":
            guard let rate = count, rate >= 1, rate <= 1 << 20 else {
                throw VireoError(.invalidArgument, "probe '\(text)': dirty-rate wants MiB per second, 1 to 1048576")
            }
            return .dirtyRate(mibPerSecond: rate)
        case "compute": return .compute(iterations: count ?? 1_000_000_000)
        case "echo" where parts.count == 1: return .echo
        default: throw VireoError(.invalidArgument, "probe '\(text)' is not \(form)")
        }
    }

    /// `pattern[:MODE[:HOT-MIB]]`, MODE one of compressible (the default), random, zero, identical.
    static func parsePattern(_ text: String) throws -> ProbeWorkload {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let modes = PatternMode.allCases.map(\.name).joined(separator: ", ")
        guard parts.count <= 3 else { throw VireoError(.invalidArgument, "probe '\(text)': give pattern:MODE:HOT-MIB at most (MODE one of \(modes))") }
        var mode = PatternMode.compressible
        if parts.count > 1 {
            guard let m = PatternMode.allCases.first(where: { $0.name == parts[1] }) else {
                throw VireoError(.invalidArgument, "probe '\(text)': '\(parts[1])' is not a pattern mode (one of \(modes))")
            }
            mode = m
        }
        var hot: UInt64 = 0
        if parts.count > 2 {
            guard let mib = UInt64(parts[2]), mib <= 1 << 20 else {
                throw VireoError(.invalidArgument, "probe '\(text)': the hot set '\(parts[2])' is not a number of MiB")
            }
            hot = mib << 20
        }
        return .pattern(mode: mode, hotBytes: hot)
    }
}

/// Lays out the probe guest: GDT, TSS, identity page tables for the first 4 GiB (user
/// accessible), the code, and the vCPU registers to start it with. Pure except for the
/// writes into `memory`.
public enum ProbeGuest {
    public static let controlPort: UInt16 = 0xF4
    public static let markerPort: UInt16 = 0xF5
    public static let loopPort: UInt16 = 0xF6
    /// Probe images write 32-bit values here; the VMM prints each with a timestamp.
    public static let reportPort: UInt16 = 0xF7
    /// The echo workload reads this when COM1 has no input: the VMM returns once input
    /// arrives or after about 20 ms (a ring-3 guest cannot HLT).
    public static let idlePort: UInt16 = 0xF8
    /// The pattern workload's gate (read: 1 = verify now) and result (write: pages that differ).
    public static let gatePort: UInt16 = 0xF9
    public static let verifyPort: UInt16 = 0xFA
    /// Where a probe image is loaded and entered (ring 3), and how large it may be.
    public static let imageAddress: UInt64 = 0x10_0000
    public static let imageMaxSize: UInt64 = 0x70_0000

    static let gdtAddress: UInt64 = 0x1000
    static let tssAddress: UInt64 = 0x2000
    /// The TSS is followed by an all-zero I/O permission bitmap (every port allowed at CPL 3)
    /// and its 0xFF terminator: 0x2000...0x4068.
    static let tssLimit: UInt64 = 0x68 + 0x2000
    static let pml4Address: UInt64 = 0x5000
    static let pdptAddress: UInt64 = 0x6000
    static let pdAddress: UInt64 = 0x7000          // four PDs: 0x7000...0xafff
    static let codeAddress: UInt64 = 0x10000
    static let kernelStackTop: UInt64 = 0x1F000
    public static let dirtyStart: UInt64 = 0x20_0000

    /// The assembled probe code.
    public static var code: [UInt8] {
        var length = 0
        guard let p = vireo_probe_code(&length) else { return [] }
        // SAFETY: vireo_probe_code returns a pointer to `length` bytes of read-only data in this binary.
        return Array(UnsafeBufferPointer(start: p, count: length))
    }

    static let gdt: [UInt64] = [
        0,                        // null
        0x00AF_9B00_0000_FFFF,    // 0x08 kernel code64
        0x00CF_9300_0000_FFFF,    // 0x10 kernel data
        0x00CF_F300_0000_FFFF,    // 0x18 user data (selector 0x1b)
        0x00AF_FB00_0000_FFFF,    // 0x20 user code64 (selector 0x23)
        // 0x28: 64-bit available TSS at tssAddress, limit 0x67 (two slots)
        0x0000_8900_0000_2068 | ((0x2000 & 0xFFFF) << 16) | (((0x2000 >> 16) & 0xFF) << 32),
        0,
    ]

    /// Writes the probe into guest memory. RAM must be at least 4 MiB.
    public static func load(into memory: GuestMemory) throws {
        guard memory.totalSize >= 4 << 20 else {
            throw VireoError(.invalidArgument, "the probe guest needs at least 4 MiB of memory")
        }
        for (i, d) in gdt.enumerated() { try memory.write(d, at: gdtAddress + UInt64(i * 8)) }
        // TSS: RSP0, the I/O map base right after the TSS, the bitmap (zero: all ports
        // allowed) and its terminating 0xFF byte. IOPL alone is not honoured on PVM hosts.
        try memory.write(kernelStackTop, at: tssAddress + 4)
        try memory.write(UInt16(0x68), at: tssAddress + 0x66)
        try memory.write([UInt8](repeating: 0, count: 0x2000), at: tssAddress + 0x68)
        try memory.write(UInt8(0xFF), at: tssAddress + tssLimit)
        try memory.write(pdptAddress | 0x7, at: pml4Address)
        for i in 0..<UInt64(4) {
            try memory.write((pdAddress + i * 0x1000) | 0x7, at: pdptAddress + i * 8)
            for j in 0..<UInt64(512) {
                let frame = (i << 30) | (j << 21)
                try memory.write(frame | 0x87, at: pdAddress + i * 0x1000 + j * 8)   // P RW US PS
            }
        }
        try memory.write(code, at: codeAddress)
    }

    /// Copies a flat probe image (a file of at most `imageMaxSize` bytes) to `imageAddress`.
    public static func loadImage(path: String, into memory: GuestMemory) throws {
        let fd = try OwnedFD.open(path, flags: O_RDONLY, purpose: "read the probe image")
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw VireoError(.invalidArgument, "--probe-image \(path) is not a regular file")
        }
        let size = UInt64(max(0, st.st_size))
        guard size > 0, size <= imageMaxSize, memory.totalSize >= imageAddress + imageMaxSize else {
            throw VireoError(.invalidArgument, "--probe-image \(path) is empty or larger than \(imageMaxSize) bytes, or --memory is below 8M")
        }
        try memory.load(fromFD: fd.rawValue, offset: 0, count: size, at: imageAddress, what: "probe image \(path)")
    }

    /// Puts the vCPU in 64-bit mode at CPL 0 at the probe entry, with the workload's inputs.
    public static func setUp(_ vcpu: VCPU, workload: ProbeWorkload, memorySize: UInt64) throws {
        var sregs = try vcpu.specialRegisters()
        func segment(_ selector: UInt16, type: UInt8, long: Bool) -> kvm_segment {
            var s = kvm_segment()
            s.base = 0; s.limit = 0xFFFF_FFFF; s.selector = selector; s.type = type
            s.present = 1; s.dpl = 0; s.db = long ? 0 : 1; s.s = 1; s.l = long ? 1 : 0; s.g = 1
            return s
        }
        sregs.cs = segment(0x08, type: 0xB, long: true)
        let data = segment(0x10, type: 0x3, long: false)
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        var tr = kvm_segment()
        tr.base = tssAddress; tr.limit = UInt32(tssLimit); tr.selector = 0x28; tr.type = 0xB; tr.present = 1
        sregs.tr = tr
        sregs.gdt.base = gdtAddress
        sregs.gdt.limit = UInt16(gdt.count * 8 - 1)
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr3 = pml4Address
        sregs.cr4 = 0x20                                     // PAE
        sregs.cr0 = 0x8000_0001 | 0x10 | 0x20                // PG PE ET NE
        sregs.efer = 0x500                                   // LME LMA
        try vcpu.setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rip = codeAddress
        regs.rsp = kernelStackTop
        regs.rflags = 0x2
        switch workload {
        case let .pioLoop(n): regs.rdi = 0; regs.rsi = max(1, n)
        case let .mmioLoop(n, address): regs.rdi = 1; regs.rsi = max(1, n); regs.rdx = address
        case let .dirty(passes):
            regs.rdi = 2; regs.rsi = passes
            regs.r8 = dirtyStart
            let top = min(memorySize, 3 << 30)
            regs.r9 = top > dirtyStart ? (top - dirtyStart) & ~0xFFF : 0x1000
        case .dirtyRate:
            regs.rdi = 2; regs.rsi = 0; regs.r10 = 1
            regs.r8 = dirtyStart
            let top = min(memorySize, 3 << 30)
            regs.r9 = top > dirtyStart ? (top - dirtyStart) & ~0xFFFFF : 0x10_0000
        case let .compute(n): regs.rdi = 3; regs.rsi = max(1, n)
        case let .executeUnmapped(address): regs.rdi = 4; regs.rdx = address
        case .image: regs.rdi = 4; regs.rdx = imageAddress
        case .echo: regs.rdi = 5
        case let .pattern(mode, hot):
            regs.rdi = 6; regs.rsi = mode.rawValue
            regs.r8 = dirtyStart
            let top = min(memorySize, 3 << 30)
            regs.r9 = top > dirtyStart ? (top - dirtyStart) & ~0xFFF : 0x1000
            regs.r10 = min(hot & ~0xFFF, regs.r9)
        }
        try vcpu.setRegisters(regs)
    }
}
