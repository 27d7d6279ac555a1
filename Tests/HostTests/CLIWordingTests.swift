import Foundation
import Testing
import VireoAPI
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Units and wording of the CLI: human sizes, "1 vCPU", a stop of a stopped VM that fails at
/// once, qemu-img's 1% progress steps, template show as a table.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct CLIWordingTests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    /// Before: list showed MEMORY 10240M; create said "1 vCPUs, 10240 MiB" (and so did the event);
    /// stop printed "asking w's guest to shut down" before failing; template show printed JSON.
    @Test func sizesVCPUsStopAndTemplateShow() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let created = try vireo(d, ["vm", "create", "w", "--probe", "dirty", "--memory", "10G", "--cpus", "1"])
        #expect(created.status == 0 && created.stdout.contains("created w: 1 vCPU, 10 GiB;"), "\(created)")
        let list = try vireo(d, ["vm", "list"])
        let row = list.stdout.split(separator: "\n").first { $0.hasPrefix("w ") }.map(String.init) ?? ""
        #expect(row.contains("10 GiB") && !row.contains("10240M"), "\(list.stdout)")
        let show = try vireo(d, ["vm", "show", "w"])
        #expect(show.stdout.contains("10 GiB"), "\(show.stdout)")
        let events = try d.client.call("GET", "/v1/events?vm=w", as: EventList.self).events
        #expect(events.first { $0.type == "created" }?.message == "1 vCPU, 10 GiB", "\(events)")

        let stop = try vireo(d, ["vm", "stop", "w"])
        #expect(stop.status == 1 && stop.stderr.contains("not running") && !stop.stderr.contains("asking"), "\(stop)")

        let kernel = d.dir + "/vmlinuz"
        #expect(FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096)))
        #expect(try vireo(d, ["template", "create", "t", "--kernel", kernel, "--cmdline", "console=ttyS0", "--memory", "1G"]).status == 0)
        let t = try vireo(d, ["template", "show", "t"])
        let lines = t.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("name:") == true && lines.contains { $0.hasPrefix("memory:") && $0.hasSuffix("1 GiB") }
                && lines.contains { $0.hasPrefix("kernel:") && $0.hasSuffix(kernel) } && lines.contains { $0.hasPrefix("cmdline:") }, "\(t.stdout)")
        let json = try vireo(d, ["template", "show", "t", "--json"])
        #expect(try JSONDecoder().decode(Template.self, from: Data(json.stdout.utf8)).memoryMiB == 1024)
        let tlist = try vireo(d, ["template", "list"])
        #expect(tlist.stdout.contains("1 GiB"), "\(tlist.stdout)")
    }

    /// Before: a progress line for every 0.01% step that the conversion reported (about 1,000
    /// for this image); qemu-img prints each whole percent once.
    @Test func convertProgressStepsByWholePercents() throws {
        let dir = "/tmp/vireo-cliword-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        // 64 MiB, 4 KiB of data every 128 KiB: the conversion reports progress ~1,000 times.
        let src = dir + "/src.raw"
        let fd = open(src, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        #expect(fd >= 0)
        let block = [UInt8](repeating: 0x5a, count: 4096)
        for i in 0..<512 { _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(i * 128 * 1024)) } }
        #expect(ftruncate(fd, 64 << 20) == 0)
        close(fd)
        let (status, out, err) = try VireoBinary.run(["disk", "convert", "-p", "-O", "qcow2", src, dir + "/dst.qcow2"])
        #expect(status == 0, "\(err)")
        let updates = out.split(whereSeparator: { $0 == "\r" || $0 == "\n" || $0 == "\r\n" }).filter { $0.hasSuffix("/100%)") }
        let percents = updates.compactMap { Int($0.trimmingCharacters(in: .whitespaces).dropFirst().prefix { $0.isNumber }) }
        #expect(updates.count <= 101 && updates.count >= 2, "\(updates.count) progress lines")
        #expect(percents == percents.sorted() && Set(percents).count == percents.count && percents.last == 100, "\(percents)")
        #expect(updates.allSatisfy { $0.hasSuffix(".00/100%)") }, "\(updates.prefix(5))")
    }
}
