import Devices
import GuestMemory
import Testing
import VireoTestSupport
import Virtio

/// Seeded random inputs: the device side must never trap, and must either produce a chain that
/// satisfies every invariant or throw a `VirtqueueError`.
@Suite struct FuzzTests {
    static let seeds: [UInt64] = [1, 2, 3, 0xC0FFEE, 0xDEAD_BEEF, 42, 7, 2024]

    /// Random descriptor tables, indirect tables and avail rings.
    @Test(arguments: seeds)
    func randomQueuesNeverTrap(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let m = try makeMemory()
        var outcomes = (chains: 0, errors: 0, empty: 0)
        for _ in 0..<300 {
            let size = UInt16(1) << UInt16(rng.below(9))      // 1...256
            var r = try DriverRing(memory: m, size: size, base: 0x1000)
            // Half the rounds are "plausible drivers" (mostly valid), half are chaos.
            let plausible = rng.below(2) == 0
            func randomAddress() -> UInt64 {
                if plausible && rng.below(16) != 0 { return 0x40000 + rng.below(0x80000) }
                switch rng.below(6) {
                case 0: return rng.next()                                   // anywhere
                case 1: return 0x10_0000 - rng.below(64)                    // end of region 0
                case 2: return (16 << 20) + rng.below(70 << 10)              // region 1 and past it
                default: return 0x40000 + rng.below(0x80000)                // valid RAM
                }
            }
            func randomLength() -> UInt32 {
                if plausible && rng.below(16) != 0 { return UInt32(rng.below(4096)) }
                switch rng.below(5) {
                case 0: return UInt32(truncatingIfNeeded: rng.next())
                case 1: return 0
                default: return UInt32(rng.below(4096))
                }
            }
            func randomFlags() -> UInt16 {
                if plausible { return [0, 0, 2, 2, 1, 3, 4][Int(rng.below(7))] }
                return UInt16(truncatingIfNeeded: rng.below(4) == 0 ? rng.next() : rng.below(8))
            }
            func randomNext(_ n: UInt64) -> UInt16 {
                UInt16(truncatingIfNeeded: !plausible && rng.below(8) == 0 ? rng.next() : rng.below(n))
            }
            for i in 0..<size {
                let flags = randomFlags()
                var address = randomAddress(), length = randomLength()
                if flags & 4 != 0 && rng.below(2) == 0 {
                    // A plausible indirect table in valid RAM, filled with random entries.
                    let count: UInt64 = rng.below(40) + 1
                    address = 0xC0000 + 0x800 * UInt64(i % 32)
                    length = UInt32(count * 16) ^ (rng.below(8) == 0 ? UInt32(rng.below(16)) : 0)
                    for e in 0..<count {
                        try DriverRing.writeDescriptor(m, at: address + 16 * e, address: randomAddress(), length: randomLength(),
                                                       flags: randomFlags(), next: randomNext(count))
                    }
                }
                try r.setDescriptor(i, address: address, length: length, flags: flags, next: randomNext(UInt64(size)))
            }
            let published = rng.below(UInt64(size) + 2)
            for _ in 0..<published { try r.publish(randomNext(UInt64(size))) }
            if rng.below(10) == 0 { try r.setAvailIndex(UInt16(truncatingIfNeeded: rng.next())) }
            let q = try r.makeQueue(eventIndex: rng.below(2) == 0, indirect: rng.below(4) != 0)
            for _ in 0..<(Int(size) + 3) {
                do {
                    guard let c = try q.popAvailableChain() else { outcomes.empty += 1; break }
                    outcomes.chains += 1
                    try checkInvariants(c, size: size, memory: m)
                    q.addUsed(head: c.head, length: UInt32(truncatingIfNeeded: c.writableLength))
                    _ = q.needsNotification()
                } catch is VirtqueueError {
                    outcomes.errors += 1
                    break
                }
            }
        }
        // The generator must exercise both outcomes, or it is not testing much.
        #expect(outcomes.chains > 50 && outcomes.errors > 50)
    }

    func checkInvariants(_ c: DescriptorChain, size: UInt16, memory: GuestMemory) throws {
        #expect(c.head < size)
        #expect(c.segments.count <= Int(size) + Int(VirtqueueSplit.maxIndirectEntries))
        var sawWritable = false
        for s in c.segments {
            if s.isWritable { sawWritable = true } else { #expect(!sawWritable) }
            if s.length > 0 { #expect(memory.contains(s.address, count: UInt64(s.length))) }
        }
        // Reading and writing the whole chain through the cursor must succeed.
        var rd = ChainCursor.reader(c, memory)
        try rd.skip(c.readableLength)
        var wr = ChainCursor.writer(c, memory)
        try wr.skip(c.writableLength)
    }

    /// Random guest register traffic at a live virtio-pci device: config space, every BAR
    /// register, the MSI-X table, doorbells. Nothing may trap; the host bus must stay intact.
    @Test(arguments: [UInt64(11), 12, 13])
    func randomRegisterTrafficNeverTraps(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi, intx: RecordingLine())
        try m.pci.add(t)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        let bar = d.caps.bar
        let widths = [1, 2, 4, 8]
        for i in 0..<20_000 {
            let width = widths[Int(rng.below(4))]
            switch rng.below(10) {
            case 0:
                // Config space, but keep memory decoding on most of the time so the BAR stays reachable.
                var off = Int(rng.below(256))
                if off < 0x08 && rng.below(4) != 0 { off = 0x3C }
                m.cfgWrite(1, off, min(width, 4), UInt32(truncatingIfNeeded: rng.next()))
            case 1:
                _ = m.cfgRead(1, Int(rng.below(256)), min(width, 4))
            case 2, 3, 4:
                m.mmio.write(address: bar + rng.below(VirtioPCILayout.barSize + 16), width: width, value: rng.next())
            case 5:
                // Common config with plausible values (small numbers hit more real paths).
                m.mmio.write(address: bar + rng.below(0x40), width: width, value: rng.below(0x20000))
            case 6:
                _ = m.mmio.read(address: bar + rng.below(VirtioPCILayout.barSize), width: width)
            case 7:
                // Point queue registers at random RAM and try to go live.
                d.w16(0x16, 0); d.w16(0x18, UInt16(1) << UInt16(rng.below(10)))
                d.w64(0x20, rng.below(0x100000)); d.w64(0x28, rng.below(0x100000)); d.w64(0x30, rng.below(0x100000))
                d.w16(0x1C, 1)
                d.w8(0x14, UInt8(truncatingIfNeeded: rng.next()) | 0x0F)
            case 8:
                // Scribble on guest RAM the device may be reading.
                try m.memory.write(rng.next(), at: rng.below(0x100000 - 8) & ~7)
            default:
                t.processQueue(Int(rng.below(3)))
            }
            if i % 1000 == 0 {
                m.cfgWrite(1, 0x04, 2, 0x6)   // decoding back on
            }
        }
        // The rest of the machine is unaffected: the host bridge still answers.
        #expect(m.cfgRead(0, 0) == 0x0008_1B36)
    }
}
