import DiskImage
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

extension HostService {
    func listTemplates() throws -> [Template] { try inventory.templates() }

    func showTemplate(_ name: String) throws -> Template {
        guard VMLimits.isValidName(name), let t = try inventory.template(name) else {
            throw HTTPError(404, "not-found", "no template named '\(name.prefix(80))'; `vireo template list` shows them")
        }
        return t
    }

    func createTemplate(_ c: TemplateCreate) throws -> Template {
        var c = c
        if let image = c.baseImage {
            guard c.baseDisk == nil else { throw HTTPError.invalid("conflicting-disk", "give either base_disk or base_image, not both") }
            c.baseDisk = try readyImagePath(image, field: "base_image")
        }
        guard VMLimits.isValidName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid template name: \(VMLimits.nameRule)")
        }
        if try inventory.template(c.name) != nil {
            throw HTTPError.conflict("a template named '\(c.name)' already exists")
        }
        var probe = VMDefinition(name: c.name, vcpus: c.vcpus ?? VMLimits.defaultVCPUs, memoryMiB: c.memoryMiB ?? VMLimits.defaultMemoryMiB,
                                 kernel: c.kernel, initrd: c.initrd, cmdline: c.cmdline)
        if let base = c.baseDisk { probe.disks = [DiskSpec(path: base, readonly: true)] }
        probe.config.configVersion = VMConfig.currentVersion
        try Validation.check(probe, socketPath: "", admission: admission, what: "template")
        // The template's files inside the storage pools (canonical paths are kept).
        c.kernel = try pools.confine(c.kernel, field: "kernel")
        c.initrd = try c.initrd.map { try pools.confine($0, field: "initrd") }
        c.baseDisk = try c.baseDisk.map { try pools.confineImage($0, field: c.baseImage == nil ? "base_disk" : "base_image") }
        var format: String?
        if let base = c.baseDisk {
            do { format = try DiskImage.probe(path: base).rawValue } catch {
                throw HTTPError.invalid("invalid-disk", "base_disk \(base.prefix(200)) cannot be read as a disk image: \(error)")
            }
        }
        let t = Template(name: c.name, kernel: c.kernel, initrd: c.initrd, cmdline: c.cmdline, baseDisk: c.baseDisk,
                         baseFormat: format, vcpus: probe.vcpus, memoryMiB: probe.memoryMiB, createdAt: WallClock.now(), baseImage: c.baseImage)
        try inventory.insertTemplate(t)
        event(c.name, kind: .template, "template-created", c.baseDisk.map { "base disk \($0)" } ?? "")
        return t
    }

    func deleteTemplate(_ name: String) throws {
        _ = try showTemplate(name)
        let users = try inventory.all().filter { $0.definition.template == name }.map(\.name)
        guard users.isEmpty else {
            throw HTTPError.conflict("template '\(name)' is used by VM\(users.count > 1 ? "s" : "") \(users.joined(separator: ", ")); delete those first")
        }
        try inventory.deleteTemplate(name)
        event(name, kind: .template, "template-deleted", "")
    }

    /// The VM definition a template gives, and (with a base disk) its linked clone: a qcow2
    /// overlay in the VM's directory backed by the template's base image (thin, instant).
    func definition(from c: VMCreate, template name: String) throws -> VMDefinition {
        let t = try showTemplate(name)
        guard c.kernel == nil, c.probe == nil, c.initrd == nil else {
            throw HTTPError.invalid("conflicting-boot", "a VM from template '\(name)' takes its kernel and initrd from it; leave kernel, initrd and probe out")
        }
        var config = c.config
        // The template gives the boot source; the request may override vCPUs, memory and cmdline.
        config.kernel = t.kernel
        config.initrd = t.initrd
        config.cmdline = c.cmdline ?? t.cmdline
        if !c.vcpusGiven { config.vcpus = t.vcpus }
        if !c.memoryGiven { config.memoryMiB = t.memoryMiB }
        if t.baseDisk != nil {
            // The linked clone is the VM's first disk; it is always qcow2 (made by makeLinkedClone).
            config.disks.insert(DiskSpec(path: linkedClonePath(c.name), format: .qcow2), at: 0)
        }
        return VMDefinition(config: config, template: name, restartPolicy: c.restartPolicy ?? .never)
    }

    func linkedClonePath(_ vm: String) -> String { vmDir(vm) + "/disk.qcow2" }

    /// Creates the linked clone of `t`'s base disk for VM `vm` (before its row is inserted).
    func makeLinkedClone(vm: String, template name: String) throws {
        let t = try showTemplate(name)
        guard let base = t.baseDisk else { return }
        try Self.makeDirectory(vmDir(vm))
        let path = linkedClonePath(vm)
        unlink(path)
        do {
            try Qcow2Image.create(path: path, size: nil,
                                  options: Qcow2CreateOptions(backingFile: base, backingFormat: t.baseFormat.flatMap(DiskImageFormat.init(name:))))
        } catch {
            unlink(path)
            throw HTTPError.invalid("clone-failed", "cannot make a linked clone of \(base): \(error)")
        }
    }
}
