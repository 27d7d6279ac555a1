import KVM
import Synchronization

/// How long each guest page has gone unwritten, in active-memory sampling windows: what the
/// reclaimer (MemoryReclaimer) calls cold. Fed by the active-memory sampler from the same
/// dirty-log fetches it counts (no extra KVM work).
///
/// A page's age rises by one for each window in which it was observed and not written, and
/// drops to 0 when it was written; 255 saturates. With exact sampling every page is observed
/// every window; with sampling (1/N) only the sampled pages are, so a cold page ages about N
/// times slower. Only writes are seen: a page the guest only reads ages like an unused one
/// (a read-hot page can be picked and then faults back in; the fault-in count shows it).
final class PageAges: Sendable {
    /// One byte per page, per slot (the guest-RAM regions in order).
    private let ages: Mutex<[[UInt8]]>
    let windows = Atomic<UInt64>(0)

    init(slots: [DirtyLog.Slot]) {
        ages = Mutex(slots.map { [UInt8](repeating: 0, count: Int($0.size / DirtyLog.pageSize)) })
    }

    /// One window's result: `dirty` (written), `observed` (re-armed pages; nil = all of them).
    func observe(dirty: DirtyLog.Bitmap, observed: DirtyLog.Bitmap?) {
        ages.withLock { ages in
            for (s, slot) in dirty.slots.enumerated() where s < ages.count {
                let seen = observed.flatMap { s < $0.slots.count ? $0.slots[s].words : nil }
                let pages = ages[s].count
                ages[s].withUnsafeMutableBufferPointer { a in
                    for (w, word) in slot.words.enumerated() {
                        let mask = seen.map { w < $0.count ? $0[w] : 0 } ?? UInt64.max
                        if mask == 0 { continue }
                        let base = w * 64
                        let end = min(64, pages - base)
                        if end <= 0 { break }
                        for b in 0..<end where mask & (UInt64(1) << UInt64(b)) != 0 {
                            if word & (UInt64(1) << UInt64(b)) != 0 { a[base + b] = 0 }
                            else if a[base + b] < 255 { a[base + b] += 1 }
                        }
                    }
                }
            }
        }
        windows.add(1, ordering: .relaxed)
    }

    /// A copy of every slot's ages.
    var current: [[UInt8]] { ages.withLock { $0 } }
}
