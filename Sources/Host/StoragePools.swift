import DiskImage
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Where the daemon may read and write VM files: its own data directory (the image store, the
/// VMs' directories) and the pools an operator adds (`vireo host --pool DIR`). A kernel, initrd,
/// disk, template base or import source must resolve (symlinks followed) inside one of them, and
/// an image's backing files and VMDK extents inside the same pool as the image. Anything else is
/// refused with 422 `outside-pools`: an API user cannot attach /etc/shadow to a guest.
struct StoragePools: Sendable {
    /// Canonical (realpath) roots, the data directory first.
    let roots: [String]

    init(dataDir: String, pools: [String]) throws {
        var roots: [String] = []
        for dir in [dataDir] + pools {
            guard let real = Self.realPath(dir) else {
                throw VireoError.system("storage pool \(dir) cannot be resolved", hint: "give an existing directory to --pool")
            }
            var st = stat()
            guard stat(real, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw VireoError(.invalidArgument, "storage pool \(dir) is not a directory", hint: "give an existing directory to --pool")
            }
            guard real != "/" else {
                throw VireoError(.invalidArgument, "--pool / would let API users reach every file on the host", hint: "give the directories that hold VM files, e.g. --pool /srv/vireo")
            }
            if !roots.contains(real) { roots.append(real) }
        }
        self.roots = roots
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The pool holding `canonical` (a realpath), if any.
    func pool(of canonical: String) -> String? {
        roots.first { canonical == $0 || canonical.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }
    }

    private var listed: String { roots.joined(separator: ", ") }

    /// `path` (named `field` in errors) resolved with every symlink followed; it must exist and
    /// lie inside a pool (`within`: that pool). Returns the canonical path.
    func confine(_ path: String, field: String, within: String? = nil) throws -> String {
        guard path.hasPrefix("/") else {
            throw HTTPError.invalid("invalid-path", "\(field) '\(path.prefix(200))' must be an absolute path on the daemon's host")
        }
        guard let real = Self.realPath(path) else {
            throw HTTPError.invalid("file-not-found", "\(field) \(path.prefix(200)) does not exist or is not a regular file")
        }
        guard let pool = pool(of: real) else {
            let via = real == path ? "" : " (it resolves to \(real.prefix(200)))"
            throw HTTPError.invalid("outside-pools", "\(field) \(path.prefix(200))\(via) is outside the daemon's storage pools (\(listed)); copy it into a pool, or start the daemon with --pool DIR for its directory")
        }
        if let within, pool != within {
            throw HTTPError.invalid("outside-pools", "\(field) \(path.prefix(200)) resolves to \(real.prefix(200)), outside the pool of the image that names it (\(within)); keep an image's backing files in its pool")
        }
        return real
    }

    /// An image file and every file it reads through: each backing file (qcow2) and extent
    /// (VMDK) must resolve inside the image's own pool. Backing names are read from the headers
    /// without opening the files they name.
    /// `runnable`: a VM disk, which only raw and qcow2 can be (other formats are refused by the
    /// format check next, without being opened here).
    func confineImage(_ path: String, field: String, runnable: Bool = false) throws -> String {
        let top = try confine(path, field: field)
        guard let pool = pool(of: top) else { return top }
        _ = pool
        var current = top
        for _ in 0..<DiskImage.maxChainDepth {
            let format = (try? DiskImage.probe(path: current)) ?? .raw
            switch format {
            case .qcow2:
                let name: String?
                let dataFile: String?
                do {
                    // The header alone: the files it names are not opened before they are confined.
                    let h = try Qcow2Header.read(path: current)
                    name = h.backingFile
                    dataFile = h.dataFile
                } catch {
                    throw HTTPError.invalid("invalid-disk", "\(field): \(current.prefix(200)) cannot be read as a qcow2 image: \(error)")
                }
                // An external data file holds the guest data: it must lie in the same pool as a
                // backing file would (the daemon's own images: any pool).
                if let dataFile {
                    let own = self.pool(of: current)
                    _ = try confine(DiskImage.resolveDataFilePath(dataFile, of: current),
                                    field: "\(field)'s data file '\(dataFile.prefix(200))'", within: own == roots.first ? nil : own)
                }
                guard let name else { return top }
                let next = try DiskImage.resolveBackingPath(name: name, of: current, policy: .any)
                // The daemon's own images (the data directory's pool: store overlays, linked
                // clones) may name a base in any pool; every other image only one in its own.
                let own = self.pool(of: current)
                current = try confine(next, field: "\(field)'s backing file '\(name.prefix(200))'", within: own == roots.first ? nil : own)
            case .vmdk, .vhd, .vhdx, .vdi:
                if runnable { return top }
                // Extents and parents are opened read-only (confined to the image's directory),
                // then each must resolve inside the pool.
                do {
                    let image = try DiskImage.open(path: current, format: format, options: OpenOptions(readOnly: true, backingPolicy: .confined))
                    let files = image.referencedFiles
                    try? image.close()
                    for f in files where f != current { _ = try confine(f, field: "\(field)'s extent '\(f.prefix(200))'", within: pool) }
                } catch let e as HTTPError { throw e } catch {
                    throw HTTPError.invalid("invalid-disk", "\(field): \(current.prefix(200)) cannot be read as a \(format) image: \(error)")
                }
                return top
            default:
                return top
            }
        }
        throw HTTPError.invalid("invalid-disk", "\(field): the backing chain of \(path.prefix(200)) is deeper than \(DiskImage.maxChainDepth) images")
    }
}

extension HostService {
    /// The kernel, initrd and disks of `config` resolved inside the pools (their canonical paths
    /// replace the given ones); a disk's backing files and extents inside its own pool. The
    /// daemon's own files (store images, linked clones) are in the data directory's pool.
    func confineFiles(_ config: inout VMConfig) throws {
        if let k = config.kernel { config.kernel = try pools.confine(k, field: "kernel") }
        if let i = config.initrd { config.initrd = try pools.confine(i, field: "initrd") }
        for n in config.disks.indices {
            config.disks[n].path = try pools.confineImage(config.disks[n].path, field: "disks[\(n)].path", runnable: true)
        }
    }
}
