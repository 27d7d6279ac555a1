import Foundation
import GuestMemory
import Testing
import VireoSupport

/// Guest RAM mapped for transparent huge pages: 2 MiB-aligned host addresses and MADV_HUGEPAGE,
/// still lazily allocated and bounds-checked.
struct GuestMemoryHugePageTests {
    @Test func hugePageRAMIsAlignedAndAdvised() throws {
        let memory = try GuestMemory(layout: [(base: 0, size: 8 << 20), (base: 4 << 30, size: 6 << 20)],
                                     options: GuestMemory.Options(hugepages: true))
        for r in memory.regions {
            #expect(UInt(bitPattern: r.host) % UInt(GuestMemory.hugePageSize) == 0, "region at \(r.guestBase) is not 2 MiB aligned")
        }
        try memory.write([1, 2, 3, 4], at: (8 << 20) - 4)
        try memory.write([5, 6, 7, 8], at: (4 << 30) + (6 << 20) - 4)
        #expect(try memory.read(UInt32.self, at: (8 << 20) - 4) == 0x0403_0201)
        #expect(throws: (any Error).self) { try memory.write([UInt8(9)], at: 8 << 20) }   // the hole after the first region

        // The kernel marks the range eligible for THP (unless THP is off on this host).
        let thp = (try? OwnedFD.readFile("/sys/kernel/mm/transparent_hugepage/enabled", limit: 4096, what: "THP mode")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        guard !thp.contains("[never]"), !thp.isEmpty else {
            print("SKIP the THPeligible check: transparent huge pages are off on this host (\(thp.trimmingCharacters(in: .whitespacesAndNewlines)))")
            return
        }
        let start = UInt(bitPattern: memory.regions[0].host)
        // (/proc files report size 0: read them until EOF, not by their size.)
        let smaps = String(decoding: try OwnedFD.readFile("/proc/self/smaps", limit: 64 << 20, what: "smaps"), as: UTF8.self)
            .components(separatedBy: "\n")
        // The VMA that contains the region (it may have merged with a neighbour).
        var block = ""
        for (i, line) in smaps.enumerated() {
            let range = line.split(separator: " ").first?.split(separator: "-") ?? []
            guard range.count == 2, let lo = UInt(range[0], radix: 16), let hi = UInt(range[1], radix: 16), lo <= start, start < hi else { continue }
            block = smaps[i..<min(smaps.count, i + 30)].joined(separator: "\n")
            break
        }
        let lines = block.components(separatedBy: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.contains { $0.hasPrefix("THPeligible:") && $0.hasSuffix(" 1") }, "smaps for the guest RAM: \(block.prefix(1500))")
        #expect(lines.contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("hg") }, "no MADV_HUGEPAGE (hg) flag: \(block.prefix(1500))")
    }
}
