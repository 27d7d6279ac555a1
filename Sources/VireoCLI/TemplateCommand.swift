import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo template ...`: reusable boot definitions with a base disk for linked clones.
struct TemplateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Templates: a kernel, initrd, cmdline and base disk; `vireo vm create NAME --from-template T` makes a linked clone.",
        subcommands: [TemplateCreateCommand.self, TemplateListCommand.self, TemplateShowCommand.self, TemplateDeleteCommand.self])
}

struct TemplateCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Define a template.",
        discussion: "Example: vireo template create debian --kernel out/guest/vmlinuz --initrd out/guest/initramfs.cpio.gz --disk base.qcow2")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Option(help: "Guest kernel: an ELF vmlinux or a bzImage.") var kernel: String
    @Option(help: "Initial ramdisk.") var initrd: String?
    @Option(help: "Kernel command line.") var cmdline: String?
    @Option(help: "Base disk image (raw or qcow2); VMs from the template get a qcow2 overlay over it.") var disk: String?
    @Option(help: "A store image (`vireo image list`) as the base disk, instead of --disk.") var baseImage: String?
    @Option(help: "Default vCPUs for its VMs.") var cpus: Int?
    @Option(help: "Default RAM for its VMs, like 512M.") var memory: String?

    func run() throws {
        try reportingErrors {
            var c = TemplateCreate(name: name, kernel: absolutePath(kernel), initrd: initrd.map(absolutePath), cmdline: cmdline,
                                   baseDisk: disk.map(absolutePath), vcpus: cpus, baseImage: baseImage)
            if let memory { c.memoryMiB = Int(try parseSize(memory, option: "--memory") >> 20) }
            let t = try client.makeClient().call("POST", "/v1/templates", body: APIJSON.encode(c), as: Template.self)
            if client.json { print(String(decoding: APIJSON.encode(t, pretty: true), as: UTF8.self)); return }
            print("created template \(t.name)" + (t.baseDisk.map { " (base disk \($0), \(t.baseFormat ?? "?"))" } ?? "")
                  + "; use it with `vireo vm create NAME --from-template \(t.name)`")
        }
    }
}

struct TemplateListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the templates.")
    @OptionGroup var client: ClientOptions
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/templates")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            var rows = [["NAME", "VCPUS", "MEMORY", "KERNEL", "BASE DISK"]]
            for t in try client.decode(TemplateList.self, r).templates {
                rows.append([t.name, String(t.vcpus), memoryText(t.memoryMiB), t.kernel, t.baseDisk ?? "-"])
            }
            printTable(rows)
        }
    }
}

struct TemplateShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one template (--json: the daemon's JSON).")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/templates/\(pathSafe(name))")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let t = try client.decode(Template.self, r)
            var rows: [(String, String)] = [("name", t.name), ("vcpus", String(t.vcpus)), ("memory", memoryText(t.memoryMiB)), ("kernel", t.kernel)]
            if let i = t.initrd { rows.append(("initrd", i)) }
            if let c = t.cmdline { rows.append(("cmdline", c)) }
            if let b = t.baseDisk { rows.append(("base disk", b + (t.baseFormat.map { " (\($0))" } ?? ""))) }
            if let image = t.baseImage { rows.append(("base image", image)) }
            rows.append(("created", t.createdAt))
            printKeyValues(rows)
        }
    }
}

struct TemplateDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a template no VM uses.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("DELETE", "/v1/templates/\(pathSafe(name))")
            try APIClient.check(r)
            if !client.json { print("deleted template \(name)") }
        }
    }
}
