import DiskImage
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Every disk of a stored VM has a recorded format: set when the disk is defined (a store
/// image's own format, a linked clone's qcow2, or the signature of a file given by path), then
/// passed to the VMM, which checks the file against it again before the guest sees a byte.
extension HostService {
    /// Records the format of every disk of `config` that has none, and checks the declared ones
    /// against the files' signatures. A disk the VMM cannot run (VMDK, VHD, ...) is refused
    /// with the way to import it. Returns "disk0=qcow2 ..." for what was detected (for logs).
    @discardableResult
    static func recordDiskFormats(_ config: inout VMConfig) throws -> [String] {
        var detected: [String] = []
        for i in config.disks.indices {
            let disk = config.disks[i]
            let field = "disks[\(i)]"
            let decision: DiskImage.FormatDecision
            do {
                decision = try DiskImage.checkFormat(path: disk.path, declared: disk.format.flatMap { DiskImageFormat(name: $0.rawValue) })
            } catch {
                throw HTTPError.invalid(error.code == .invalidArgument ? "format-mismatch" : "invalid-disk", "\(field): \(error)")
            }
            guard let format = DiskFormat(rawValue: decision.format.rawValue) else {
                throw HTTPError.invalid("unsupported-format",
                                        "\(field): \(disk.path.prefix(200)) is a \(decision.format) image; VMs run on qcow2 or raw disks: import it into the image store (`vireo image import NAME \(disk.path.prefix(200))`) and give image=NAME")
            }
            if decision.detected { detected.append("\(disk.id ?? field)=\(format.rawValue)") }
            config.disks[i].format = format
        }
        return detected
    }

    /// Brings definitions stored by an older vireo up to the current configuration version:
    /// disks without a recorded format get it detected once (by signature), recorded and
    /// logged; devices get ids. Runs when the daemon starts. A disk whose file cannot be read
    /// now keeps no format (its VM's start detects it again, or says why it cannot).
    func migrateDefinitions() {
        guard let records = try? inventory.all() else { return }
        for var r in records where r.definition.configVersion < VMConfig.currentVersion
            || r.definition.disks.contains(where: { $0.format == nil || $0.id == nil }) || r.definition.nics.contains(where: { $0.id == nil }) {
            let from = r.definition.configVersion
            r.definition.config.assignDeviceIDs()
            var notes: [String] = []
            for i in r.definition.disks.indices where r.definition.disks[i].format == nil {
                var one = r.definition.config
                one.disks = [r.definition.disks[i]]
                do {
                    let found = try Self.recordDiskFormats(&one)
                    r.definition.config.disks[i].format = one.disks[0].format
                    notes += found
                } catch {
                    notes.append("\(r.definition.disks[i].id ?? "disks[\(i)]"): format not recorded (\(error))")
                }
            }
            if r.definition.disks.allSatisfy({ $0.format != nil }) { r.definition.config.configVersion = VMConfig.currentVersion }
            do { try inventory.update(r) } catch { continue }
            let message = "definition upgraded from config version \(from) to \(r.definition.configVersion)" + (notes.isEmpty ? "" : "; detected disk formats: \(notes.joined(separator: ", "))")
            let line = "vireo host: vm \(r.name): \(message)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
            event(r.name, "definition-migrated", message)
        }
    }
}
