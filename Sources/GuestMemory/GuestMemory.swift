import CLinux
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// One contiguous range of guest-physical memory backed by one host mapping.
public struct GuestRegion: @unchecked Sendable {
    public let guestBase: UInt64
    public let size: UInt64
    /// Start of the host mapping. Valid for the lifetime of the owning `GuestMemory`.
    public let host: UnsafeMutableRawPointer
    /// The memfd behind the mapping, when the memory is file-backed (shareable, snapshottable).
    public let memfd: Int32?

    public var guestEnd: UInt64 { guestBase + size }
}

/// Guest-physical memory: a set of non-overlapping regions, lazily allocated by the host
/// (nothing is resident until the guest or the VMM touches it, so memory can be overcommitted).
///
/// Every access is checked: the guest address and length are validated with overflow-checked
/// arithmetic against a single region before any pointer is formed. Accessors throw
/// `VireoError(.guest, ...)` on a bad address; they never trap.
///
/// Concurrency: the region table is immutable after creation; the bytes themselves are shared
/// with the guest and with device threads, exactly as real RAM is shared between CPUs and DMA.
public final class GuestMemory: @unchecked Sendable {
    public enum Backing: Sendable {
        /// Private anonymous memory (MAP_NORESERVE): the default.
        case anonymous
        /// A memfd per region, so the memory can be shared with another process or saved.
        case memfd
        /// A snapshot's memory file, mapped copy-on-write (MAP_PRIVATE): the regions lie in it
        /// one after another in guest-physical order. Pages are read in when the guest first
        /// touches them and stay shared, in the page cache, between VMs restored from one file.
        case snapshotFile(String)
    }

    public struct Options: Sendable {
        public var backing: Backing = .anonymous
        /// Let KSM merge identical pages (transparent page sharing).
        public var mergeable = false
        /// Ask for transparent huge pages.
        public var hugepages = false
        public init(backing: Backing = .anonymous, mergeable: Bool = false, hugepages: Bool = false) {
            self.backing = backing; self.mergeable = mergeable; self.hugepages = hugepages
        }
    }

    public let regions: [GuestRegion]
    public let totalSize: UInt64
    /// Pages the VMM itself may have written (device DMA: a disk read, a received frame), per
    /// region, while a live migration needs them: KVM's dirty log sees only the guest's writes.
    /// Nil when off (the usual case costs one relaxed atomic load per access).
    private let vmmWriteLog = Mutex<[[UInt64]]?>(nil)
    private let vmmWriteLogOn = Atomic<Bool>(false)
    /// The x86 huge page (and the alignment of RAM mapped with `hugepages`).
    public static let hugePageSize: UInt64 = 2 << 20

    /// Maps `layout` (guest base, size) pairs. Sizes must be page multiples; regions must not overlap.
    public init(layout: [(base: UInt64, size: UInt64)], options: Options = Options()) throws {
        let page = UInt64(4096)
        var sorted = layout.sorted { $0.base < $1.base }
        sorted.removeAll { $0.size == 0 }
        guard !sorted.isEmpty else { throw VireoError(.invalidArgument, "guest memory size is 0", hint: "give --memory a size such as 512M") }
        var previousEnd: UInt64 = 0
        var total: UInt64 = 0
        for r in sorted {
            guard r.base % page == 0, r.size % page == 0 else {
                throw VireoError(.invalidArgument, "guest memory region at \(hex(r.base)) is not page aligned")
            }
            let (end, o) = r.base.addingReportingOverflow(r.size)
            guard !o, r.base >= previousEnd else {
                throw VireoError(.invalidArgument, "guest memory regions overlap or wrap at \(hex(r.base))")
            }
            previousEnd = end
            total += r.size
        }
        var mapped: [GuestRegion] = []
        var file: OwnedFD?
        if case let .snapshotFile(path) = options.backing {
            let f = try OwnedFD.open(path, flags: O_RDONLY, purpose: "read the snapshot's memory from")
            var st = stat()
            guard fstat(f.rawValue, &st) == 0, st.st_size >= 0, UInt64(st.st_size) >= total else {
                throw VireoError(.corrupt, "snapshot memory file \(path) is shorter than the guest's \(ByteSize.format(total)) of RAM",
                                 hint: "the snapshot is incomplete; take it again")
            }
            file = f
        }
        do {
            var offset: UInt64 = 0
            for r in sorted {
                mapped.append(try GuestMemory.map(base: r.base, size: r.size, options: options, file: file.map { ($0.rawValue, offset) }))
                offset += r.size
            }
        } catch {
            for m in mapped { GuestMemory.unmap(m) }
            throw error
        }
        self.regions = mapped
        self.totalSize = total
    }

    deinit {
        for r in regions { GuestMemory.unmap(r) }
    }

    private static func map(base: UInt64, size: UInt64, options: Options, file: (fd: Int32, offset: UInt64)? = nil) throws -> GuestRegion {
        guard size <= UInt64(Int.max) else { throw VireoError(.outOfRange, "guest memory region too large") }
        var fd: Int32 = -1
        var flags = MAP_NORESERVE
        var fileOffset: off_t = 0
        if let file {
            // The mapping keeps the file referenced; the descriptor is not kept.
            fd = file.fd
            fileOffset = off_t(file.offset)
            flags |= MAP_PRIVATE
        } else if case .memfd = options.backing {
            fd = vireo_memfd_create("vireo-guest-ram", VIREO_MFD_CLOEXEC)
            guard fd >= 0 else { throw VireoError.system("cannot create a memfd for guest memory") }
            guard ftruncate(fd, off_t(size)) == 0 else {
                let e = errno; close(fd)
                throw VireoError.system("cannot size guest memory to \(ByteSize.format(size))", errno: e)
            }
            flags |= MAP_SHARED
        } else {
            flags |= MAP_PRIVATE | MAP_ANONYMOUS
        }
        // With huge pages the region starts on a 2 MiB boundary (like the guest-physical bases),
        // so the host kernel can back whole 2 MiB guest frames with transparent huge pages and
        // KVM can map them with 2 MiB NPT/EPT entries: reserve 2 MiB more, map inside it.
        let align = UInt(options.hugepages ? GuestMemory.hugePageSize : 0)
        var at: UnsafeMutableRawPointer?
        if align > 0 {
            let reserve = mmap(nil, Int(size) + Int(align), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if let reserve, reserve != MAP_FAILED {
                let start = UInt(bitPattern: reserve)
                let aligned = (start + align - 1) & ~(align - 1)
                // SAFETY: both pieces lie inside the reservation just made and are not used again.
                if aligned > start { munmap(reserve, Int(aligned - start)) }
                let tail = aligned + UInt(size)
                let end = start + UInt(size) + align
                if end > tail { munmap(UnsafeMutableRawPointer(bitPattern: tail), Int(end - tail)) }
                at = UnsafeMutableRawPointer(bitPattern: aligned)
            }
        }
        let p = mmap(at, Int(size), PROT_READ | PROT_WRITE, flags | (at == nil ? 0 : MAP_FIXED), fd, fileOffset)
        guard let p, p != MAP_FAILED else {
            let e = errno
            if let at { munmap(at, Int(size)) }
            if fd >= 0, file == nil { close(fd) }
            throw VireoError.system("cannot map \(ByteSize.format(size)) of guest memory", errno: e,
                                    hint: "use a smaller --memory, or check ulimit -v and vm.overcommit_memory")
        }
        if options.mergeable { _ = madvise(p, Int(size), MADV_MERGEABLE) }
        if options.hugepages { _ = madvise(p, Int(size), MADV_HUGEPAGE) }
        return GuestRegion(guestBase: base, size: size, host: p, memfd: fd >= 0 && file == nil ? fd : nil)
    }

    private static func unmap(_ r: GuestRegion) {
        munmap(r.host, Int(r.size))
        if let fd = r.memfd { close(fd) }
    }

    // MARK: - Checked access

    /// The region holding `[gpa, gpa+count)`, or nil when the range is not entirely inside one region.
    @inline(__always)
    public func region(containing gpa: UInt64, count: UInt64) -> GuestRegion? {
        for r in regions where gpa >= r.guestBase {
            let offset = gpa &- r.guestBase
            if offset < r.size, count <= r.size &- offset { return r }
        }
        return nil
    }

    public func contains(_ gpa: UInt64, count: UInt64 = 1) -> Bool {
        region(containing: gpa, count: count) != nil
    }

    /// A host view of `[gpa, gpa+count)`. Throws when any byte is outside guest RAM. While the
    /// VMM-write log is on, the range counts as written (the caller may write through it).
    @inline(__always)
    public func buffer(at gpa: UInt64, count: UInt64) throws -> UnsafeMutableRawBufferPointer {
        guard let r = region(containing: gpa, count: count) else {
            throw VireoError(.guest, "guest address range \(hex(gpa))+\(count) is outside guest memory")
        }
        if vmmWriteLogOn.load(ordering: .relaxed) { noteWritten(gpa, count) }
        // SAFETY: region(containing:) proved offset + count <= r.size, so the view is inside
        // the live mapping, which outlives `self`'s users (unmapped only in deinit).
        return UnsafeMutableRawBufferPointer(start: r.host + Int(gpa &- r.guestBase), count: Int(count))
    }

    public func read<T: FixedWidthInteger>(_: T.Type = T.self, at gpa: UInt64) throws -> T {
        let b = try buffer(at: gpa, count: UInt64(MemoryLayout<T>.size))
        return T(littleEndian: b.loadUnaligned(as: T.self))
    }

    public func write<T: FixedWidthInteger>(_ value: T, at gpa: UInt64) throws {
        let b = try buffer(at: gpa, count: UInt64(MemoryLayout<T>.size))
        b.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func write(_ bytes: some Collection<UInt8>, at gpa: UInt64) throws {
        let b = try buffer(at: gpa, count: UInt64(bytes.count))
        b.copyBytes(from: bytes)
    }

    public func read(into destination: UnsafeMutableRawBufferPointer, at gpa: UInt64) throws {
        let b = try buffer(at: gpa, count: UInt64(destination.count))
        guard let dst = destination.baseAddress, let src = b.baseAddress else { return }
        dst.copyMemory(from: src, byteCount: destination.count)
    }

    public func readBytes(at gpa: UInt64, count: Int) throws -> [UInt8] {
        let b = try buffer(at: gpa, count: UInt64(max(0, count)))
        return Array(b)
    }

    /// Copies `count` bytes of the file `fd` from `offset` into guest memory at `gpa`.
    public func load(fromFD fd: Int32, offset: UInt64, count: UInt64, at gpa: UInt64, what: String) throws {
        let b = try buffer(at: gpa, count: count)
        var done = 0
        while done < b.count {
            let n = try retryingEINTR("cannot read \(what)") {
                // SAFETY: writes stay inside `b` (done < b.count), which is inside guest RAM.
                pread(fd, b.baseAddress.map { $0 + done }, b.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { throw VireoError(.corrupt, "\(what) is truncated: expected \(count) bytes at offset \(offset)") }
            done += n
        }
    }

    // MARK: - The VMM-write log (live migration)

    /// Starts recording the pages the VMM touches through `buffer(at:count:)` and the accessors
    /// built on it. Ranges handed out before this call (cached ring pointers) are not seen: the
    /// caller adds those itself.
    public func startVMMWriteLog() {
        vmmWriteLog.withLock { $0 = regions.map { [UInt64](repeating: 0, count: Int(($0.size / 4096 + 63) / 64)) } }
        vmmWriteLogOn.store(true, ordering: .releasing)
    }

    /// The pages recorded since the last take (one bitmap per region, bit i = page i), cleared.
    public func takeVMMWriteLog() -> [[UInt64]] {
        vmmWriteLog.withLock { log in
            guard let current = log else { return regions.map { _ in [] } }
            log = current.map { [UInt64](repeating: 0, count: $0.count) }
            return current
        }
    }

    public func stopVMMWriteLog() {
        vmmWriteLogOn.store(false, ordering: .releasing)
        vmmWriteLog.withLock { $0 = nil }
    }

    private func noteWritten(_ gpa: UInt64, _ count: UInt64) {
        guard count > 0, let index = regions.firstIndex(where: { gpa >= $0.guestBase && gpa &- $0.guestBase < $0.size }) else { return }
        let r = regions[index]
        let first = (gpa &- r.guestBase) / 4096
        let last = min((gpa &- r.guestBase &+ count &- 1) / 4096, r.size / 4096 &- 1)
        vmmWriteLog.withLock { log in
            guard let n = log?.count, index < n else { return }
            var page = first
            while page <= last {
                log?[index][Int(page / 64)] |= UInt64(1) << (page % 64)
                page += 1
            }
        }
    }

    /// Gives pages back to the host (balloon inflation, free page reporting). The guest reads zeroes after.
    public func discard(at gpa: UInt64, count: UInt64) throws {
        let b = try buffer(at: gpa, count: count)
        guard let p = b.baseAddress else { return }
        let region = regions.first { gpa >= $0.guestBase && gpa < $0.guestEnd }
        let advice = region?.memfd != nil ? MADV_REMOVE : MADV_DONTNEED
        guard madvise(p, b.count, advice) == 0 else { throw VireoError.system("cannot discard guest pages at \(hex(gpa))") }
    }
}

@inline(__always)
public func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
