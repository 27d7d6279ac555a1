import CLinux
import CZstd
import GuestMemory
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Where reclaimed guest pages may go (`vireo run --swap-file`, `--compress-store-max`).
public struct ReclaimOptions: Sendable, Equatable {
    /// The per-VM swap file for pages that do not compress to half a page (nil: none; such
    /// pages then stay in RAM).
    public var swapFile: String?
    /// The bound on the compressed store's bytes (nil: a quarter of guest RAM).
    public var storeMaxBytes: UInt64?
    public init(swapFile: String? = nil, storeMaxBytes: UInt64? = nil) {
        self.swapFile = swapFile; self.storeMaxBytes = storeMaxBytes
    }
}

/// Hypervisor memory reclaim, ESXi's "memory compression" and "hypervisor swapping": cold guest
/// pages are compressed (zstd, fast level) into a bounded in-process store, or, when they do not
/// compress to half a page, written to a per-VM swap file; all-zero pages need no storage. The
/// page is then released to the host (MADV_DONTNEED). Guest RAM is registered with userfaultfd
/// (missing-page mode) on the first reclaim, so the next touch of a released page, by a vCPU,
/// by KVM itself or by a VMM thread, blocks in the kernel until the fault-handler thread puts
/// the page back (UFFDIO_COPY, or UFFDIO_ZEROPAGE for a zero page).
///
/// Releasing a page races with the guest writing it (a write between the copy and the release
/// would be lost), so the vCPUs are paused and the virtio back ends quiesced for each batch
/// (`batchPages` pages, a few milliseconds). Snapshots and migrations first bring every page
/// back (`restoreAll`): both read RAM with mincore, which counts a released page as a hole.
///
/// Guest RAM must be anonymous memory (the default): a memfd's pages are not freed by
/// MADV_DONTNEED and a snapshot's private file mapping cannot be registered.
final class MemoryReclaimer: @unchecked Sendable {
    static let pageSize = 4096
    /// Pages compressing to more than this go to the swap file (or stay).
    static let compressLimit = 2048
    /// Pages per pause of the vCPUs.
    static let batchPages = 1024
    /// Fault-in latencies kept for the percentiles (the most recent ones).
    static let latencySamples = 16384

    enum Stored {
        case zero
        case compressed([UInt8])
        case swapped(slot: UInt64)
    }

    struct State {
        /// Released pages by host address.
        var pages: [UInt: Stored] = [:]
        var compressedPages: UInt64 = 0
        var storedBytes: UInt64 = 0
        var zeroPages: UInt64 = 0
        var swappedPages: UInt64 = 0
        var freeSlots: [UInt64] = []
        var nextSlot: UInt64 = 0
        /// Pages a reclaim left in RAM because the swap file could not take them.
        var keptPages: UInt64 = 0
        var swapErrors: UInt64 = 0
        var lastSwapError: String?
        var faultins: UInt64 = 0
        var latenciesUs: [UInt32] = []
        var latencyNext = 0
        /// Set when the handler could not put a page back (the machine is stopped then).
        var handlerFailure: String?
    }

    struct Stats: Sendable, Equatable {
        var compressedBytes: UInt64
        var storedBytes: UInt64
        var zeroBytes: UInt64
        var swappedBytes: UInt64
        var keptBytes: UInt64
        var swapErrors: UInt64
        var lastSwapError: String?
        var storeMaxBytes: UInt64
        var faultinCount: UInt64
        var faultinUsP50: UInt64
        var faultinUsP99: UInt64
    }

    struct Result: Sendable, Equatable {
        var releasedBytes: UInt64 = 0
        var keptBytes: UInt64 = 0
        var candidateBytes: UInt64 = 0
        var ms: UInt64 = 0
    }

    let memory: GuestMemory
    let options: ReclaimOptions
    let storeMax: UInt64
    private let state = Mutex(State())
    /// Serialises reclaims and restores (the control thread, a migration's start).
    private let serial = Mutex<Void>(())
    /// The userfaultfd (-1 until the first reclaim registers guest RAM).
    private let uffd = Atomic<Int32>(-1)
    private let swapFD = Atomic<Int32>(-1)
    private let running = Atomic<Bool>(true)
    private var handler: HostThread?
    /// Called (once) when a page cannot be put back: the machine must stop.
    let onFatal: @Sendable (String) -> Void

    init(memory: GuestMemory, options: ReclaimOptions, onFatal: @escaping @Sendable (String) -> Void) {
        self.memory = memory
        self.options = options
        self.storeMax = options.storeMaxBytes ?? memory.totalSize / 4
        self.onFatal = onFatal
    }

    deinit {
        let fd = uffd.load(ordering: .acquiring)
        if fd >= 0 { close(fd) }
        let s = swapFD.load(ordering: .acquiring)
        if s >= 0 { close(s) }
    }

    var stats: Stats {
        state.withLock { s in
            var sorted = s.latenciesUs
            sorted.sort()
            func pct(_ p: Int) -> UInt64 { sorted.isEmpty ? 0 : UInt64(sorted[min(sorted.count - 1, sorted.count * p / 100)]) }
            let page = UInt64(Self.pageSize)
            return Stats(compressedBytes: s.compressedPages * page, storedBytes: s.storedBytes, zeroBytes: s.zeroPages * page,
                         swappedBytes: s.swappedPages * page, keptBytes: s.keptPages * page, swapErrors: s.swapErrors,
                         lastSwapError: s.lastSwapError, storeMaxBytes: storeMax, faultinCount: s.faultins,
                         faultinUsP50: pct(50), faultinUsP99: pct(99))
        }
    }

    /// Whether any page is released now.
    var holdsPages: Bool { state.withLock { !$0.pages.isEmpty } }

    // MARK: - Registration and the fault handler

    /// Creates the userfaultfd, registers all of guest RAM and starts the handler thread (once).
    private func ensureRegistered() throws {
        guard uffd.load(ordering: .acquiring) < 0 else { return }
        let fd = vireo_uffd_open()
        guard fd >= 0 else {
            throw VireoError.system("cannot create a userfaultfd for guest memory reclaim",
                                    hint: "run as root, or set vm.unprivileged_userfaultfd=1")
        }
        guard vireo_uffd_api(fd) == 0 else {
            let e = errno; close(fd)
            throw VireoError.system("the userfaultfd API handshake failed", errno: e)
        }
        for r in memory.regions {
            guard r.memfd == nil, vireo_uffd_register_missing(fd, UInt64(UInt(bitPattern: r.host)), r.size) == 0 else {
                let e = errno; close(fd)
                throw VireoError(.unsupported, "guest RAM at \(hex(r.guestBase)) cannot be registered with userfaultfd (errno \(e))",
                                 hint: "reclaim works on anonymous guest RAM only, not on a memfd or a restored snapshot's memory file; restart the VM without them")
            }
        }
        uffd.store(fd, ordering: .releasing)
        do {
            handler = try HostThread(name: "uffd-faults") { [self] in self.serve(fd) }
        } catch {
            uffd.store(-1, ordering: .releasing)
            close(fd)
            throw error
        }
    }

    /// Stops the handler thread (after the vCPUs and the device threads have ended) and empties
    /// the swap file: it holds guest data.
    func shutdown() {
        running.store(false, ordering: .releasing)
        handler?.join()
        let s = swapFD.load(ordering: .acquiring)
        if s >= 0 { _ = ftruncate(s, 0) }
    }

    /// The handler thread: serves every missing-page fault on guest RAM until shutdown.
    private func serve(_ fd: Int32) {
        guard let dctx = ZSTD_createDCtx() else { onFatal("zstd: cannot create a decompression context"); return }
        defer { ZSTD_freeDCtx(dctx) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.pageSize, alignment: Self.pageSize)
        defer { buffer.deallocate() }
        while running.load(ordering: .acquiring) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, 200)
            if n <= 0 { continue }
            while true {
                var address: UInt64 = 0
                let r = vireo_uffd_read_fault(fd, &address)
                if r < 0 { break }            // -EAGAIN: drained (or an error: poll again)
                if r == 0 { continue }
                let t0 = monotonicNanos()
                let page = UInt(address) & ~UInt(Self.pageSize - 1)
                let entry = take(page)
                do {
                    try place(entry, at: page, fd: fd, dctx: dctx, buffer: buffer)
                } catch {
                    if let entry { put(entry, at: page) }
                    let why = "a released guest page at host \(hex(page)) could not be put back: \(error)"
                    state.withLock { $0.handlerFailure = why }
                    onFatal(why)
                    // The faulting thread stays blocked; the machine is stopping.
                    continue
                }
                let us = UInt32(min(UInt64(UInt32.max), (monotonicNanos() &- t0) / 1000))
                state.withLock { s in
                    s.faultins &+= 1
                    if s.latenciesUs.count < Self.latencySamples { s.latenciesUs.append(us) } else {
                        s.latenciesUs[s.latencyNext] = us
                    }
                    s.latencyNext = (s.latencyNext + 1) % Self.latencySamples
                }
            }
        }
    }

    /// Removes the page's record (nil: not released by us; a never-touched or ballooned page).
    private func take(_ page: UInt) -> Stored? {
        state.withLock { s in
            guard let e = s.pages.removeValue(forKey: page) else { return nil }
            switch e {
            case .zero: s.zeroPages -= 1
            case let .compressed(b): s.compressedPages -= 1; s.storedBytes -= UInt64(b.count)
            case let .swapped(slot): s.swappedPages -= 1; s.freeSlots.append(slot)
            }
            return e
        }
    }

    private func put(_ e: Stored, at page: UInt) {
        state.withLock { s in
            s.pages[page] = e
            switch e {
            case .zero: s.zeroPages += 1
            case let .compressed(b): s.compressedPages += 1; s.storedBytes += UInt64(b.count)
            case let .swapped(slot):
                s.swappedPages += 1
                s.freeSlots.removeAll { $0 == slot }
            }
        }
    }

    /// Maps the page's contents at `page` (zero when `entry` is nil or `.zero`).
    private func place(_ entry: Stored?, at page: UInt, fd: Int32, dctx: OpaquePointer, buffer: UnsafeMutableRawPointer) throws {
        var zero = false
        switch entry {
        case nil, .zero?:
            zero = true
        case let .compressed(bytes)?:
            // SAFETY: zstd writes at most pageSize bytes into `buffer` (pageSize bytes long) and
            // reads bytes.count bytes of `bytes`, which lives across the call.
            let n = bytes.withUnsafeBytes { ZSTD_decompressDCtx(dctx, buffer, Self.pageSize, $0.baseAddress, $0.count) }
            guard ZSTD_isError(n) == 0, n == Self.pageSize else {
                throw VireoError(.internalError, "a compressed page did not decompress to 4096 bytes")
            }
        case let .swapped(slot)?:
            let s = swapFD.load(ordering: .acquiring)
            let (offset, o) = slot.multipliedReportingOverflow(by: UInt64(Self.pageSize))
            guard s >= 0, !o, offset <= UInt64(Int64.max) else { throw VireoError(.internalError, "swap slot \(slot) is out of range") }
            var done = 0
            while done < Self.pageSize {
                // SAFETY: writes stay inside `buffer` (done < pageSize).
                let n = pread(s, buffer + done, Self.pageSize - done, off_t(offset) + off_t(done))
                if n < 0, errno == EINTR { continue }
                guard n > 0 else { throw VireoError.system("cannot read swap slot \(slot) back from \(options.swapFile ?? "the swap file")") }
                done += n
            }
        }
        for _ in 0..<1000 {
            let rc = zero ? vireo_uffd_zeropage(fd, UInt64(page), UInt64(Self.pageSize))
                          : vireo_uffd_copy(fd, UInt64(page), buffer, UInt64(Self.pageSize))
            if rc == 0 { return }
            if rc == -EEXIST {
                // Already there (a second fault on the same page, served first): wake the waiter.
                _ = vireo_uffd_wake(fd, UInt64(page), UInt64(Self.pageSize))
                return
            }
            if rc == -EAGAIN || rc == -EINTR { continue }
            throw VireoError.system(zero ? "UFFDIO_ZEROPAGE failed" : "UFFDIO_COPY failed", errno: -rc)
        }
        throw VireoError(.internalError, "UFFDIO_COPY kept answering EAGAIN")
    }

    // MARK: - Reclaim

    /// Compresses, swaps or drops (zero) up to `bytes` of resident guest pages, coldest first,
    /// and releases them. `ages`: per-region page ages (nil: no estimate; every resident page
    /// is a candidate, in address order). `pausing` runs a batch with the guest stopped.
    func reclaim(bytes: UInt64, ages: [[UInt8]]?, minAge: UInt8 = 1,
                 pausing: (() throws -> Void) throws -> Void) throws -> Result {
        var result = Result()
        guard bytes > 0 else { return result }
        let t0 = monotonicNanos()
        try serial.withLock { _ in
            try ensureRegistered()
            let wanted = bytes / UInt64(Self.pageSize)
            let candidates = coldCandidates(ages: ages, minAge: minAge, limit: wanted)
            result.candidateBytes = UInt64(candidates.count) * UInt64(Self.pageSize)
            guard let cctx = ZSTD_createCCtx() else { throw VireoError(.internalError, "zstd: cannot create a compression context") }
            defer { ZSTD_freeCCtx(cctx) }
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.pageSize, alignment: 16)
            defer { scratch.deallocate() }
            var next = 0
            while next < candidates.count, result.releasedBytes < bytes {
                let end = min(candidates.count, next + Self.batchPages)
                try pausing {
                    var stored: [UInt] = []
                    var swapped = false
                    for page in candidates[next..<end] where result.releasedBytes + UInt64(stored.count * Self.pageSize) < bytes {
                        switch store(page, cctx: cctx, scratch: scratch) {
                        case .stored(let toSwap): stored.append(page); swapped = swapped || toSwap
                        case .kept: result.keptBytes += UInt64(Self.pageSize)
                        case .skipped: break
                        }
                    }
                    // The swap file's pages go to the disk and leave the page cache: hypervisor
                    // swapping must free host memory, not move it into the cache.
                    if swapped { flushSwap() }
                    result.releasedBytes += releaseRuns(stored.sorted())
                }
                next = end
            }
        }
        result.ms = (monotonicNanos() - t0) / 1_000_000
        return result
    }

    /// Resident pages, coldest first (at most `limit` times two: some are kept).
    private func coldCandidates(ages: [[UInt8]]?, minAge: UInt8, limit: UInt64) -> [UInt] {
        var buckets = [[UInt]](repeating: [], count: 256)
        let page = Self.pageSize
        for (ri, r) in memory.regions.enumerated() {
            let count = Int(r.size / UInt64(page))
            var resident = [UInt8](repeating: 0, count: count)
            // SAFETY: mincore writes one byte per page of [host, host+size): `resident` holds `count`.
            guard resident.withUnsafeMutableBufferPointer({ mincore(r.host, Int(r.size), $0.baseAddress) }) == 0 else { continue }
            let regionAges = ages.flatMap { ri < $0.count && $0[ri].count == count ? $0[ri] : nil }
            let base = UInt(bitPattern: r.host)
            for i in 0..<count where resident[i] & 1 != 0 {
                let age = regionAges?[i] ?? 255
                guard age >= minAge else { continue }
                buckets[Int(age)].append(base + UInt(i * page))
            }
        }
        var out: [UInt] = []
        let cap = limit > UInt64(Int.max / 4) ? Int.max / 4 : Int(limit) * 2 + Self.batchPages
        for age in stride(from: 255, through: 0, by: -1) where out.count < cap {
            out += buckets[age].prefix(cap - out.count)
        }
        return out
    }

    private enum Outcome { case stored(swap: Bool), kept, skipped }

    /// Releases the stored pages (sorted), one MADV_DONTNEED per contiguous run; a run the
    /// kernel refuses keeps its pages (their records are dropped). Returns the bytes released.
    private func releaseRuns(_ pages: [UInt]) -> UInt64 {
        var released: UInt64 = 0
        var i = 0
        while i < pages.count {
            var j = i + 1
            while j < pages.count, pages[j] == pages[j - 1] + UInt(Self.pageSize) { j += 1 }
            let length = (j - i) * Self.pageSize
            // SAFETY: [pages[i], pages[i] + length) are whole pages of guest RAM (from mincore over
            // the live regions), stored above; the guest is stopped while they are released.
            if let p = UnsafeMutableRawPointer(bitPattern: pages[i]), madvise(p, length, MADV_DONTNEED) == 0 {
                released += UInt64(length)
            } else {
                for k in i..<j { _ = take(pages[k]) }
            }
            i = j
        }
        return released
    }

    /// Writes the swap file's dirty pages to the disk and drops them from the page cache.
    private func flushSwap() {
        let fd = swapFD.load(ordering: .acquiring)
        guard fd >= 0 else { return }
        _ = fdatasync(fd)
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
    }

    /// One page, with the guest stopped: classify and store (released later, by run).
    private func store(_ page: UInt, cctx: OpaquePointer, scratch: UnsafeMutableRawPointer) -> Outcome {
        guard let p = UnsafeMutableRawPointer(bitPattern: page) else { return .skipped }
        // Still resident? (A balloon may have discarded it since the candidates were listed.)
        var resident: UInt8 = 0
        guard mincore(p, Self.pageSize, &resident) == 0, resident & 1 != 0 else { return .skipped }
        let stored: Stored
        // SAFETY: `p` is a page of guest RAM (from mincore over the live regions); the vCPUs are
        // paused and the virtio back ends quiesced, so nothing writes it while it is read.
        let raw = UnsafeRawBufferPointer(start: p, count: Self.pageSize)
        if Self.isZero(raw) {
            stored = .zero
        } else {
            // SAFETY: zstd reads pageSize bytes at `p` and writes at most pageSize to `scratch`.
            let n = ZSTD_compressCCtx(cctx, scratch, Self.pageSize, p, Self.pageSize, 1)
            let storeUsed = state.withLock { $0.storedBytes }
            if ZSTD_isError(n) == 0, n <= Self.compressLimit, storeUsed + UInt64(n) <= storeMax {
                stored = .compressed(Array(UnsafeRawBufferPointer(start: scratch, count: n)))
            } else if options.swapFile != nil {
                guard let slot = writeToSwap(raw) else {
                    state.withLock { $0.keptPages += 1 }
                    return .kept
                }
                stored = .swapped(slot: slot)
            } else {
                // Does not compress (or the store is full) and there is no swap file: stays.
                return .kept
            }
        }
        put(stored, at: page)
        if case .swapped = stored { return .stored(swap: true) }
        return .stored(swap: false)
    }

    /// Writes a page to a free swap slot; nil (counted, the page stays in RAM) on failure.
    private func writeToSwap(_ page: UnsafeRawBufferPointer) -> UInt64? {
        var fd = swapFD.load(ordering: .acquiring)
        if fd < 0, let path = options.swapFile {
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else {
                let e = errno
                noteSwapError("cannot open \(path): \(String(cString: strerror(e)))")
                return nil
            }
            var st = stat()
            if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { _ = ftruncate(fd, 0) }
            swapFD.store(fd, ordering: .releasing)
        }
        guard fd >= 0 else { return nil }
        let slot: UInt64 = state.withLock { s in
            if let f = s.freeSlots.popLast() { return f }
            s.nextSlot += 1
            return s.nextSlot - 1
        }
        let (offset, o) = slot.multipliedReportingOverflow(by: UInt64(Self.pageSize))
        var done = 0
        while !o, offset <= UInt64(Int64.max) - UInt64(Self.pageSize), done < Self.pageSize {
            // SAFETY: reads stay inside `page` (done < pageSize).
            let n = pwrite(fd, page.baseAddress.map { $0 + done }, Self.pageSize - done, off_t(offset) + off_t(done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                let e = n < 0 ? errno : ENOSPC
                noteSwapError("cannot write \(options.swapFile ?? "the swap file"): \(String(cString: strerror(e)))")
                state.withLock { $0.freeSlots.append(slot) }
                return nil
            }
            done += n
        }
        guard done == Self.pageSize else { state.withLock { $0.freeSlots.append(slot) }; return nil }
        return slot
    }

    private func noteSwapError(_ why: String) {
        let first = state.withLock { s in
            s.swapErrors += 1
            defer { s.lastSwapError = why }
            return s.lastSwapError != why
        }
        if first { writeStderrLine("vireo: swap file: \(why); the pages stay in RAM") }
    }

    static func isZero(_ b: UnsafeRawBufferPointer) -> Bool {
        var acc: UInt64 = 0
        var i = 0
        while i + 8 <= b.count {
            acc |= b.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            if acc != 0 { return false }
            i += 8
        }
        return acc == 0
    }

    // MARK: - Restore

    /// Puts every released page back (before a snapshot or a migration reads RAM).
    func restoreAll() throws {
        try serial.withLock { _ in
            let fd = uffd.load(ordering: .acquiring)
            guard fd >= 0 else { return }
            guard let dctx = ZSTD_createDCtx() else { throw VireoError(.internalError, "zstd: cannot create a decompression context") }
            defer { ZSTD_freeDCtx(dctx) }
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.pageSize, alignment: Self.pageSize)
            defer { buffer.deallocate() }
            let pages = state.withLock { Array($0.pages.keys) }
            for page in pages {
                guard let e = take(page) else { continue }
                do { try place(e, at: page, fd: fd, dctx: dctx, buffer: buffer) } catch {
                    put(e, at: page)
                    throw error
                }
            }
        }
    }
}
