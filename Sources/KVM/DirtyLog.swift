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
        public var dirtyPages: Int { slots.reduce(0) { $0 + $1.dirtyPages } }
        public var dirtyBytes: UInt64 { UInt64(dirtyPages) * DirtyLog.pageSize }
        public func isDirty(guestAddress: UInt64) -> Bool { slots.contains { $0.isDirty(guestAddress: guestAddress) } }
    }

    public static let pageSize: UInt64 = 4096

    public let vm: VirtualMachine
    public let slots: [Slot]
    private let lock = Mutex<Void>(())

    /// `slots`: the memory slots mapped with dirty logging on (their number, base and size).
    public init(vm: VirtualMachine, slots: [Slot]) {
        self.vm = vm
        self.slots = slots
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

    /// Number of pages written since the previous fetch (a fetch; re-arms).
    public func fetchDirtyPages() throws -> Int { try fetch().dirtyPages }
}
