import Foundation
import Testing
import VireoConfig

/// A configuration with every field set to something other than its default.
func fullConfig() -> VMConfig {
    var c = VMConfig(name: "web", vcpus: 3, memoryMiB: 768, kernel: "/k/vmlinuz", initrd: "/k/initrd", cmdline: "console=ttyS0 quiet",
                     disks: [VMConfig.Disk(path: "/d/root.qcow2", format: .qcow2, readonly: false, id: "root", backing: .confined,
                                           rateLimit: RateLimit(bytesPerSecond: 1 << 20, bytesBurst: 2 << 20, opsPerSecond: 100, opsBurst: 200)),
                             VMConfig.Disk(path: "/d/data.raw", format: .raw, readonly: true, id: "data")],
                     nics: [VMConfig.NIC(tap: "tap0", mac: "52:54:00:12:34:56", id: "lan", rateLimit: RateLimit(bytesPerSecond: 1000, opsPerSecond: 10))],
                     balloonMiB: 64, rng: true, vsockCID: 42)
    c.hugepages = false
    c.balloonStats = false
    c.balloonDeflateOnOOM = true
    c.balloonFreePageReporting = true
    c.virtioConsole = true
    c.generationID = "0123456789abcdef0123456789ABCDEF"
    c.cpuShares = 200; c.cpuLimitPct = 250; c.cpuReservationPct = 50
    c.memoryReservationMiB = 256; c.memoryLimitMiB = 512; c.memoryShares = 300; c.shareable = true
    return c
}

@Suite struct VMConfigTests {
    @Test func survivesJSONFieldByField() throws {
        let c = fullConfig()
        let back = try VMConfig.decode(c.jsonBytes(), source: "test")
        #expect(back == c)
        // Field by field too, so a field Equatable forgot would still be caught.
        #expect(back.disks[0].rateLimit?.opsBurst == 200)
        #expect(back.disks[0].backing == .confined)
        #expect(back.disks[1].format == .raw && back.disks[1].readonly == true && back.disks[1].id == "data")
        #expect(back.nics[0].mac == "52:54:00:12:34:56" && back.nics[0].rateLimit?.opsPerSecond == 10)
        #expect(back.balloonDeflateOnOOM == true && back.balloonFreePageReporting == true && back.balloonStats == false)
        #expect(back.hugepages == false && back.virtioConsole == true && back.vsockCID == 42 && back.rng == true)
        #expect(back.configVersion == VMConfig.currentVersion)
        #expect(back.generationID == "0123456789abcdef0123456789ABCDEF")
        #expect(back.cpuShares == 200 && back.cpuLimitPct == 250 && back.cpuReservationPct == 50)
        #expect(back.memoryReservationMiB == 256 && back.memoryLimitMiB == 512 && back.memoryShares == 300 && back.shareable == true)
    }

    @Test func generationIDsAreCheckedAndNewOnesDiffer() throws {
        #expect(VMConfig.generationIDBytes("0123456789abcdef0123456789ABCDEF")?.first == 0x01)
        #expect(VMConfig.generationIDBytes("01234567-89ab-cdef-0123-456789abcdef")?.count == 16)
        for bad in ["", "0123", "0123456789abcdef0123456789abcdeg", "0123456789abcdef0123456789abcdef00"] {
            #expect(VMConfig.generationIDBytes(bad) == nil, "\(bad)")
        }
        var c = VMConfig(name: "g", kernel: "/k")
        c.generationID = "not-an-id"
        #expect(throws: ConfigProblem.self) { try c.validate() }
        let a = VMConfig.newGenerationID(), b = VMConfig.newGenerationID()
        #expect(a != b && VMConfig.generationIDBytes(a) != nil && a.count == 32)
    }

    @Test func everyPropertyHasAJSONKey() throws {
        // A property added without a coding key would be lost on the way to the VMM: the keys of
        // the full configuration's JSON must be exactly the declared ones.
        let json = try JSONSerialization.jsonObject(with: Data(fullConfig().jsonBytes())) as? [String: Any]
        #expect(Set(json?.keys.map { $0 } ?? []) == VMConfig.fields.subtracting(["probe"]))
        let probe = try JSONSerialization.jsonObject(with: Data(VMConfig(name: "p", probe: "pio:1").jsonBytes())) as? [String: Any]
        #expect(probe?["probe"] as? String == "pio:1")
        let mirror = Mirror(reflecting: fullConfig())
        #expect(mirror.children.count == VMConfig.CodingKeys.allCases.count)
        #expect(Mirror(reflecting: fullConfig().disks[0]).children.count == VMConfig.Disk.CodingKeys.allCases.count)
        #expect(Mirror(reflecting: fullConfig().nics[0]).children.count == VMConfig.NIC.CodingKeys.allCases.count)
    }

    @Test func olderVersionsReadNewerRefused() throws {
        let legacy = #"{"name":"old","vcpus":1,"memory_mib":64,"probe":"pio:1","disks":[{"path":"/x"}],"nics":[]}"#
        let c = try VMConfig.decode(Array(legacy.utf8), source: "legacy")
        #expect(c.configVersion == 0 && c.disks[0].format == nil)
        let newer = #"{"config_version":99,"name":"new","vcpus":1,"memory_mib":64,"probe":"pio:1"}"#
        #expect(throws: ConfigProblem.self) { _ = try VMConfig.decode(Array(newer.utf8), source: "new") }
        do { _ = try VMConfig.decode(Array(newer.utf8), source: "new.json") } catch {
            #expect(error.code == "unsupported-version" && error.message.contains("new.json"))
        }
    }

    @Test func validationRefusesWithTheField() {
        var c = fullConfig()
        c.disks[1].id = "root"
        #expect(throws: ConfigProblem("disks[1].id", "duplicate-id", "disks[1].id 'root' is used by another device; give each its own")) { try c.validate() }
        c = fullConfig(); c.nics[0].mac = "53:54:00:12:34:56"
        #expect { try c.validate() } throws: { ($0 as? ConfigProblem)?.field == "nics[0].mac" }
        c = fullConfig(); c.probe = "pio:1"
        #expect { try c.validate() } throws: { ($0 as? ConfigProblem)?.code == "conflicting-boot" }
        c = fullConfig(); c.balloonMiB = 769
        #expect { try c.validate() } throws: { ($0 as? ConfigProblem)?.field == "balloon_mib" }
        c = fullConfig(); c.disks = (0..<30).map { VMConfig.Disk(path: "/d\($0)") }
        #expect { try c.validate() } throws: { ($0 as? ConfigProblem)?.code == "too-many-devices" }
        #expect(throws: Never.self) { try fullConfig().validate() }
    }

    @Test func deviceIDsAreAssignedOnceAndStable() {
        var c = VMConfig(name: "a", probe: "pio:1", disks: [.init(path: "/a"), .init(path: "/b", id: "disk0"), .init(path: "/c")])
        c.assignDeviceIDs()
        #expect(c.disks.map(\.id) == ["disk1", "disk0", "disk2"])
        let again = c
        c.assignDeviceIDs()
        #expect(c == again)
    }

    @Test func malformedFilesGetAClearError() {
        for bad in ["", "[]", "{", #"{"name":1}"#, #"{"name":"x","disks":[{"readonly":true}]}"#, #"{"name":"x","disks":[{"path":"/a","format":"vmdk"}]}"#] {
            #expect(throws: ConfigProblem.self) { _ = try VMConfig.decode(Array(bad.utf8), source: "f") }
        }
    }
}
