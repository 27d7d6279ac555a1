import Testing
import X86Boot

@Suite struct MPTableTests {
    func sum(_ b: ArraySlice<UInt8>) -> UInt8 { b.reduce(0, &+) }

    @Test(arguments: [1, 2, 4, 64, 254])
    func structureAndChecksums(cpus: Int) throws {
        let t = try MPTable.build(cpuCount: cpus, address: 0x9FC00)
        // Floating pointer: "_MP_", physptr to the config table right after it, 1 paragraph, rev 1.4.
        #expect(Array(t[0..<4]) == Array("_MP_".utf8))
        #expect(t.u32(4) == 0x9FC10)
        #expect(t[8] == 1 && t[9] == 4)
        #expect(sum(t[0..<16]) == 0)
        // Config table: "PCMP", length, checksum over the whole base table.
        let c = 16
        #expect(Array(t[c..<c + 4]) == Array("PCMP".utf8))
        let length = Int(t.u16(c + 4))
        #expect(c + length == t.count)
        #expect(sum(t[c..<c + length]) == 0)
        #expect(t.u32(c + 36) == 0xFEE0_0000)
        let entryCount = Int(t.u16(c + 34))
        #expect(entryCount == cpus + 1 + 1 + 16 + 2)

        // Walk the entries.
        var o = c + 44
        var apicIDs: [UInt8] = [], bsp: [UInt8] = [], ioapic: (id: UInt8, addr: UInt32)?
        var irqs: [(UInt8, UInt8)] = [], lints: [(UInt8, UInt8)] = [], buses: [String] = []
        for _ in 0..<entryCount {
            switch t[o] {
            case 0:
                apicIDs.append(t[o + 1])
                #expect(t[o + 3] & 1 == 1)
                if t[o + 3] & 2 != 0 { bsp.append(t[o + 1]) }
                o += 20
            case 1: buses.append(String(decoding: t[o + 2..<o + 8], as: UTF8.self)); o += 8
            case 2: ioapic = (t[o + 1], t.u32(o + 4)); #expect(t[o + 3] & 1 == 1); o += 8
            case 3: #expect(t[o + 1] == 0); #expect(t[o + 6] == UInt8(cpus)); irqs.append((t[o + 5], t[o + 7])); o += 8
            case 4: #expect(t[o + 6] == 0xFF); lints.append((t[o + 1], t[o + 7])); o += 8
            default: Issue.record("unknown entry type \(t[o])"); return
            }
        }
        #expect(o == t.count)
        #expect(apicIDs == (0..<cpus).map { UInt8($0) })
        #expect(bsp == [0])
        #expect(buses == ["ISA   "])
        #expect(ioapic?.id == UInt8(cpus) && ioapic?.addr == 0xFEC0_0000)
        #expect(irqs.map { $0.0 } == Array(0..<16) && irqs.map { $0.1 } == Array(0..<16))
        #expect(lints.count == 2 && lints[0] == (3, 0) && lints[1] == (1, 1))   // ExtINT LINT0, NMI LINT1
        #expect(0x9FC00 + UInt64(t.count) <= 0x10_0000)
    }

    @Test func limits() {
        #expect(Fixtures.error { _ = try MPTable.build(cpuCount: 0, address: 0x9FC00) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try MPTable.build(cpuCount: 255, address: 0x9FC00) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try MPTable.build(cpuCount: 2, address: 0xFFF00) } != nil)
        #expect(Fixtures.error { _ = try MPTable.build(cpuCount: 2, address: 0x9FC00, irqCount: 25) } != nil)
        #expect((try? MPTable.build(cpuCount: 2, address: 0x9FC00, irqCount: 24))?.count == 16 + 44 + 40 + 8 * 28)
    }
}
