import CLinux
import Synchronization
import VireoSupport

/// KVM dirty-page logging over a VM's guest-RAM memory slots: which 4 KiB guest pages were
/// written since the last fetch.
///
/// The slots must have been mapped with `logDirtyPages: true` (KVM_MEM_LOG_DIRTY_PAGES).
/// `fetch()` is KVM_GET_DIRTY_LOG on every slot: it returns the pages written since the previous
/// fetch (or since the slot was mapped) and re-arms logging (KVM write-protects those pages again,
/// so the next write to each one is recorded). Only stores are recorded: a page the guest only
/// reads never appears.
///
/// With manual protection (`manualProtect`, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled on the VM
/// before the slots were mapped) `fetch()` only reads: a page stays dirty, and writable, until
/// `rearm(_:)` (KVM_CLEAR_DIRTY_LOG) clears and write-protects exactly the pages given. That lets
/// a consumer track a chosen subset of the pages (the sampled active-memory estimate) or clear in
/// chunks as it copies them (pre-copy).
///
/// One consumer at a time owns the re-arming: the active-memory sampler today, live migration's
/// pre-copy next (it must stop the sampler before it starts fetching, or each sees only the pages
/// written since the other's fetch). Fetches are serialised by an internal lock and may run on any
/// thread, also while the vCPUs run.
public final class DirtyLog: Sendable {
    public struct Slot: Sendable, Equatable {
        public var slot: UInt32
        public var guestBase: UInt64
        public var size: UInt64
        public init(slot: UInt32, guestBase: UInt64, size: UInt64) { self.slot = slot; self.guestBase = guestBase; self.size = size }
        /// 64-bit words of this slot's bitmap: one bit per 4 KiB page, rounded up to a word (as KVM wants).
        public var words: Int { Int((size / DirtyLog.pageSize + 63) / 64) }
    }

    /// The pages written in one slot since the previous fetch: bit i of `words` is the page at
    /// `guestBase + i * 4096`.
    public struct SlotBitmap: Sendable, Equatable {
        public var slot: Slot
        public var words: [UInt64]
        public init(slot: Slot, words: [UInt64]) { self.slot = slot; self.words = words }
        public var dirtyPages: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
        public func isDirty(guestAddress: UInt64) -> Bool {
            guard guestAddress >= slot.guestBase, guestAddress - slot.guestBase < slot.size else { return false }
            let page = Int((guestAddress - slot.guestBase) / DirtyLog.pageSize)
            return words[page / 64] & (1 << UInt64(page % 64)) != 0
        }
        /// Guest-physical addresses of the dirty pages, in order.
        public var dirtyAddresses: [UInt64] {
            var out: [UInt64] = []
            for (w, word) in words.enumerated() where word != 0 {
                var bits = word
                while bits != 0 {
                    let b = bits.trailingZeroBitCount
                    out.append(slot.guestBase + UInt64(w * 64 + b) * DirtyLog.pageSize)
                    bits &= bits - 1
                }
            }
            return out
        }
    }

    /// What one fetch returns: every slot's bitmap.
    public struct Bitmap: Sendable, Equatable {
        public var slots: [SlotBitmap]
        public init(slots: [SlotBitmap]) { self.slots = slots }
        public var dirtyPages: Int { slots.reduce(0) { $0 + $1.dirtyPages } }
        public var dirtyBytes: UInt64 { UInt64(dirtyPages) * DirtyLog.pageSize }
        public func isDirty(guestAddress: UInt64) -> Bool { slots.contains { $0.isDirty(guestAddress: guestAddress) } }
    }

    public static let pageSize: UInt64 = 4096

    public let vm: VirtualMachine
    public let slots: [Slot]
    /// Fetches do not re-arm; `rearm(_:)` does (see the type's documentation).
    public let manualProtect: Bool
    private let lock = Mutex<Void>(())

    /// `slots`: the memory slots mapped with dirty logging on (their number, base and size).
    /// `manualProtect`: `enableManualProtect(on:)` was called on `vm` before they were mapped.
    public init(vm: VirtualMachine, slots: [Slot], manualProtect: Bool = false) {
        self.vm = vm
        self.slots = slots
        self.manualProtect = manualProtect
    }

    /// KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, MANUAL_PROTECT_ENABLE): from now on
    /// KVM_GET_DIRTY_LOG does not write-protect; KVM_CLEAR_DIRTY_LOG does, page by page.
    /// Call before mapping slots with dirty logging.
    public static func enableManualProtect(on vm: VirtualMachine) throws {
        guard vm.check(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) != 0 else {
            throw VireoError(.unsupported, "this KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (manual dirty-log protection)")
        }
        try vm.enableCapability(UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), args: [UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)])
    }

    /// KVM_CLEAR_DIRTY_LOG: for every page whose bit is set in `pages` (one bitmap per slot, as
    /// `fetch()` returns them), clears its dirty bit and write-protects it, so its next write is
    /// recorded. Pages not given keep their state. Only with `manualProtect`.
    public func rearm(_ pages: Bitmap) throws {
        guard manualProtect else { throw VireoError(.invalidArgument, "DirtyLog.rearm needs manual protection (fetch re-arms every page otherwise)") }
        try lock.withLock { _ in
            for b in pages.slots {
                guard let s = slots.first(where: { $0.slot == b.slot.slot }), b.words.count == s.words else {
                    throw VireoError(.invalidArgument, "DirtyLog.rearm: a bitmap for slot \(b.slot.slot) does not match the logged slots")
                }
                var words = b.words
                // SAFETY: KVM reads ceil(pages / 64) words from the buffer: `words` holds exactly that many (checked above).
                try words.withUnsafeMutableBytes { try vm.clearDirtyLog(slot: s.slot, firstPage: 0, pages: UInt32(s.size / Self.pageSize), bitmap: $0) }
            }
        }
    }

    /// KVM_GET_DIRTY_LOG on every slot: the pages written since the previous fetch; re-arms.
    /// Throws (naming the slot and the errno) if KVM refuses, e.g. a slot mapped without logging.
    public func fetch() throws -> Bitmap {
        try lock.withLock { _ in
            var out: [SlotBitmap] = []
            out.reserveCapacity(slots.count)
            for s in slots {
                var words = [UInt64](repeating: 0, count: s.words)
                // SAFETY: KVM writes at most ceil(pages / 64) 64-bit words for this slot: `words` holds exactly that many.
                try words.withUnsafeMutableBytes { try vm.dirtyLog(slot: s.slot, into: $0) }
                out.append(SlotBitmap(slot: s, words: words))
            }
            return Bitmap(slots: out)
        }
    }

    /// A random 1/`oneIn` (a power of two) of every slot's pages, as a bitmap for `rearm(_:)`:
    /// each bit is the AND of log2(oneIn) random bits.
    public func randomSample<R: RandomNumberGenerator>(oneIn: UInt32, using rng: inout R) -> Bitmap {
        let rounds = max(1, oneIn).trailingZeroBitCount
        return Bitmap(slots: slots.map { slot in
            let pages = Int(slot.size / Self.pageSize)
            var words = [UInt64](repeating: 0, count: slot.words)
            for w in words.indices {
                var bits = UInt64.max
                for _ in 0..<rounds { bits &= rng.next() }
                let valid = pages - w * 64
                if valid < 64 { bits &= (UInt64(1) << UInt64(valid)) &- 1 }
                words[w] = bits
            }
            return SlotBitmap(slot: slot, words: words)
        })
    }

    /// Number of pages written since the previous fetch (a fetch; re-arms).
    public func fetchDirtyPages() throws -> Int { try fetch().dirtyPages }
}

extension VirtualMachine {
    /// KVM_CLEAR_DIRTY_LOG on `pages` pages of `slot` from `firstPage` (a multiple of 64; `pages`
    /// a multiple of 64 or reaching the slot's end), for the pages whose bits are set in `bitmap`.
    public func clearDirtyLog(slot: UInt32, firstPage: UInt64, pages: UInt32, bitmap: UnsafeMutableRawBufferPointer) throws {
        var c = kvm_clear_dirty_log()
        c.slot = slot
        c.first_page = firstPage
        c.num_pages = pages
        c.dirty_bitmap = bitmap.baseAddress
        try withUnsafeMutableBytes(of: &c) { try ioctl(VIREO_KVM_CLEAR_DIRTY_LOG, $0.baseAddress, "KVM_CLEAR_DIRTY_LOG failed for slot \(slot)") }
    }
}
