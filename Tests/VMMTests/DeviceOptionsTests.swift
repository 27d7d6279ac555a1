import Testing
import VMM

@Suite struct DeviceOptionsTests {
    @Test func diskParses() throws {
        let d = try DeviceOptions.disk("path=/tmp/a.img,readonly=on,format=raw,id=root,bps=1000000,iops=100")
        #expect(d.path == "/tmp/a.img" && d.isReadOnly && d.format == .raw && d.id == "root")
        #expect(d.rateLimit?.bytesPerSecond == 1_000_000 && d.rateLimit?.opsPerSecond == 100)
        #expect(try DeviceOptions.disk("path=x").isReadOnly == false)
        // No format= leaves it to the file's signature (the VMM detects it and says so).
        #expect(try DeviceOptions.disk("path=x").format == nil)
        #expect(try DeviceOptions.disk("path=x").rateLimit == nil)
        #expect(try DeviceOptions.disk("path=x,format=qcow2").format == .qcow2)
        #expect(try DeviceOptions.disk("path=x,backing=confined").backing == .confined)
    }

    @Test(arguments: ["", "readonly=on", "path=", "path=a,readonly=maybe", "path=a,format=vmdk", "path=a,path=b",
                      "path=a,colour=red", "path=a,id=", "path=a,id=waytoolongforadiskserial", "path=a,bps=-1", "path=a,iops=1e3", "nonsense", "path=a,backing=anywhere", "path=a,id=has space"])
    func diskRejects(_ text: String) {
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.disk(text) }
    }

    @Test func netParses() throws {
        let n = try DeviceOptions.net("tap=tap0,mac=52:54:00:12:34:56,pps=1000")
        #expect(n.tap == "tap0" && n.mac == "52:54:00:12:34:56" && n.rateLimit?.opsPerSecond == 1000)
        #expect(try DeviceOptions.net("tap=vm-1").mac == nil)
    }

    @Test(arguments: ["", "mac=52:54:00:12:34:56", "tap=", "tap=name-longer-than-15", "tap=a b", "tap=t,mac=01:00:00:00:00:01",
                      "tap=t,mac=52:54:00:12:34", "tap=t,mac=zz:54:00:12:34:56", "tap=t,mac=5254.0012.3456"])
    func netRejects(_ text: String) {
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.net(text) }
    }

    @Test func balloonVsockConsole() throws {
        let b = try DeviceOptions.balloon("size=256,stats=on,deflate-on-oom=on,reporting=off,control=/tmp/f")
        #expect(b.targetMiB == 256 && b.stats && b.deflateOnOOM && !b.reporting && b.control == "/tmp/f")
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.balloon("stats=on") }
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.balloon("size=lots") }
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.balloon("size=99999999999") }
        let v = try DeviceOptions.vsock("cid=3,socket=/tmp/v.sock")
        #expect(v.cid == 3 && v.socketPath == "/tmp/v.sock")
        for bad in ["cid=2,socket=/x", "cid=3", "socket=/x", "cid=4294967295,socket=/x", "cid=3,socket=" + String(repeating: "a", count: 120)] {
            #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.vsock(bad) }
        }
        #expect(try DeviceOptions.console("") == .stdout)
        #expect(try DeviceOptions.console("file=/tmp/x") == .file("/tmp/x"))
        #expect(throws: DeviceOptions.ParseError.self) { try DeviceOptions.console("pty") }
    }

    @Test func derivedMACIsStableLocalUnicast() {
        let a = Machine.derivedMAC(seed: "tap0/0"), b = Machine.derivedMAC(seed: "tap0/0"), c = Machine.derivedMAC(seed: "tap1/0")
        #expect(a == b && a != c && a.count == 6 && a[0] & 1 == 0 && a[0] & 2 != 0)
    }
}
