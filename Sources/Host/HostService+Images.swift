import DiskImage
import Synchronization
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Images being written right now (a create or an import runs off the actor): their names are
/// taken, they are listed with their progress, and nothing may use or delete them yet.
final class ImageJobs: Sendable {
    struct Job: Sendable {
        var state: ImageState
        var format: ImageFormat
        var percent: Int
    }
    private let jobs = Mutex<[String: Job]>([:])

    func get(_ name: String) -> Job? { jobs.withLock { $0[name] } }
    func all() -> [String: Job] { jobs.withLock { $0 } }
    /// Reserves `name`; false if a job already holds it.
    func begin(_ name: String, _ job: Job) -> Bool {
        jobs.withLock { j in
            guard j[name] == nil else { return false }
            j[name] = job
            return true
        }
    }
    func progress(_ name: String, _ percent: Int) { jobs.withLock { $0[name]?.percent = percent } }
    func end(_ name: String) { jobs.withLock { _ = $0.removeValue(forKey: name) } }
}

/// The image store: files DATA_DIR/images/NAME.qcow2 or NAME.raw, owned by the daemon. A file
/// being written is DATA_DIR/images/.NAME.FORMAT.part until it is complete (then renamed), so a
/// failed or interrupted create/import leaves no image behind. See docs/images.md.
extension HostService {
    var imagesDir: String { dataDir + "/images" }

    func imagePath(_ name: String, _ format: ImageFormat) -> String { "\(imagesDir)/\(name).\(format.rawValue)" }
    func partPath(_ name: String, _ format: ImageFormat) -> String { "\(imagesDir)/.\(name).\(format.rawValue).part" }

    /// The complete images on disk: name -> format.
    func storeFiles() -> [String: ImageFormat] {
        var out: [String: ImageFormat] = [:]
        for entry in Self.directoryEntries(imagesDir) {
            for f in ImageFormat.allCases where entry.hasSuffix("." + f.rawValue) {
                let name = String(entry.dropLast(f.rawValue.count + 1))
                if VMLimits.isValidName(name), ProcFS.fileExists(imagePath(name, f)) { out[name] = f }
            }
        }
        return out
    }

    static func directoryEntries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned, valid until the next readdir.
            let name = withUnsafePointer(to: &e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes what an interrupted create or import left (called when the daemon starts).
    static func removeStaleImageParts(_ dir: String) {
        for entry in directoryEntries(dir) where entry.hasPrefix(".") && entry.hasSuffix(".part") { unlink(dir + "/" + entry) }
    }

    // MARK: Read

    func listImages() throws -> [Image] {
        let files = storeFiles()
        var images = files.map { name, format in describe(name, format) }
        for (name, job) in imageJobs.all() where files[name] == nil {
            images.append(Image(name: name, format: job.format, state: job.state, virtualSizeBytes: 0,
                                actualSizeBytes: Self.allocatedBytes(partPath(name, job.format)), backingImage: nil,
                                path: imagePath(name, job.format), progressPercent: job.percent, usedByVMs: [], usedByTemplates: [], usedByImages: []))
        }
        let templates = try inventory.templates()
        let vms = try inventory.all()
        for i in images.indices {
            let (name, path) = (images[i].name, images[i].path)
            images[i].usedByVMs = vms.filter { r in r.definition.disks.contains { $0.image == name || $0.path == path } }.map(\.name)
            images[i].usedByTemplates = templates.filter { $0.baseImage == name || $0.baseDisk == path }.map(\.name)
            images[i].usedByImages = images.filter { $0.backingImage == name }.map(\.name).sorted()
        }
        return images.sorted { $0.name < $1.name }
    }

    func showImage(_ name: String) throws -> Image {
        guard VMLimits.isValidName(name), let image = try listImages().first(where: { $0.name == name }) else {
            throw HTTPError(404, "not-found", "no image named '\(name.prefix(80))'; `vireo image list` shows them")
        }
        return image
    }

    /// Size, allocation and backing of one complete image file.
    func describe(_ name: String, _ format: ImageFormat) -> Image {
        let path = imagePath(name, format)
        var virtual: Int64 = 0
        var backing: String?
        var st = stat()
        if stat(path, &st) == 0 { virtual = Int64(st.st_size) }
        if format == .qcow2, let q = try? Qcow2Image.open(path: path, readOnly: true, options: OpenOptions(readOnly: true, openBacking: false)) {
            virtual = Int64(clamping: q.header.size)
            backing = q.header.backingFile.flatMap(Self.storeName(ofBackingFile:))
            try? q.close()
        }
        return Image(name: name, format: format, state: .ready, virtualSizeBytes: virtual, actualSizeBytes: Self.allocatedBytes(path),
                     backingImage: backing, path: path, progressPercent: nil, usedByVMs: [], usedByTemplates: [], usedByImages: [])
    }

    /// Overlays in the store name their backing file "NAME.FORMAT" (relative, same directory).
    private static func storeName(ofBackingFile file: String) -> String? {
        for f in ImageFormat.allCases where file.hasSuffix("." + f.rawValue) {
            let name = String(file.dropLast(f.rawValue.count + 1))
            if VMLimits.isValidName(name) { return name }
        }
        return nil
    }

    static func allocatedBytes(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_blocks) * 512 : 0
    }

    /// The file of a complete image, for a VM disk or a template base (404 if none, 409 while it is written).
    func readyImagePath(_ name: String, field: String) throws -> String {
        if imageJobs.get(name) != nil {
            throw HTTPError.conflict("image '\(name)' (\(field)) is still being written; wait for `vireo image show \(name)` to say ready")
        }
        guard VMLimits.isValidName(name), let format = storeFiles()[name] else {
            throw HTTPError(404, "not-found", "\(field): no image named '\(name.prefix(80))'; `vireo image list` shows them")
        }
        return imagePath(name, format)
    }

    /// VM disks that name a store image get its file as their path, now (at create): the VM's
    /// definition records both, and the image stays in use (undeletable) while the VM exists.
    func resolveImageDisks(_ disks: [DiskSpec]) throws -> [DiskSpec] {
        var out: [DiskSpec] = []
        for (n, d) in disks.enumerated() {
            guard let name = d.image else { out.append(d); continue }
            guard d.path.isEmpty else {
                throw HTTPError.invalid("conflicting-disk", "disks[\(n)]: give either path or image, not both")
            }
            var r = d
            r.path = try readyImagePath(name, field: "disks[\(n)].image")
            // The store knows the image's format: it is recorded with the disk.
            let stored = storeFiles()[name].flatMap { DiskFormat(rawValue: $0.rawValue) }
            if let declared = d.format, let stored, declared != stored {
                throw HTTPError.invalid("format-mismatch", "disks[\(n)]: image '\(name)' is \(stored.rawValue), not \(declared.rawValue); leave format out for a store image")
            }
            r.format = stored
            out.append(r)
        }
        return out
    }

    // MARK: Resize, delete

    func resizeImage(_ name: String, _ r: ImageResize) throws -> Image {
        let image = try showImage(name)
        guard image.state == .ready else { throw HTTPError.conflict("image '\(name)' is still being written; wait until it is ready") }
        let running = try vmsReading(name).filter { r in r.state.hasProcess }.map(\.name)
        guard running.isEmpty else {
            throw HTTPError.conflict("image '\(name)' is in use by running VM\(running.count > 1 ? "s" : "") \(running.joined(separator: ", ")); stop \(running.count > 1 ? "them" : "it") (`vireo vm stop \(running[0])`) before resizing")
        }
        try Self.checkSize(r.sizeBytes, field: "size_bytes")
        guard r.sizeBytes >= image.virtualSizeBytes else {
            throw HTTPError.invalid("shrink-refused", "size_bytes \(r.sizeBytes) is smaller than the image (\(image.virtualSizeBytes) bytes); images only grow (shrinking would cut off the guest's data)")
        }
        guard r.sizeBytes > image.virtualSizeBytes else { return image }
        do {
            switch image.format {
            case .qcow2:
                let q = try Qcow2Image.open(path: image.path, options: OpenOptions(openBacking: false))
                try q.resize(to: UInt64(r.sizeBytes))
                try q.close()
            case .raw:
                guard let raw = try DiskImage.open(path: image.path, format: .raw) as? RawImage else {
                    throw VireoError(.internalError, "\(image.path) did not open as a raw image")
                }
                try raw.resize(to: UInt64(r.sizeBytes))
                try raw.close()
            }
        } catch let e as VireoError where e.errno == EFBIG || e.errno == ENOSPC {
            throw HTTPError.invalid("resize-failed", "image '\(name)': the file system cannot grow it to \(r.sizeBytes) bytes: \(e)")
        } catch {
            throw HTTPError(500, "internal", "image '\(name)': resize failed: \(error)")
        }
        event(name, kind: .image, "image-resized", "\(image.virtualSizeBytes) -> \(r.sizeBytes) bytes")
        return try showImage(name)
    }

    /// Every VM whose disks read image `name`: directly, through store overlays of it, or
    /// through the linked clone of a template whose base is it (or an overlay of it). A running
    /// one has the image's metadata cached, so resizing it under them is refused.
    private func vmsReading(_ name: String) throws -> [VMRecord] {
        let images = try listImages()
        var names: Set<String> = [name]
        var grew = true
        while grew {
            let more = images.filter { i in i.backingImage.map(names.contains) == true && !names.contains(i.name) }.map(\.name)
            grew = !more.isEmpty
            names.formUnion(more)
        }
        let chain = images.filter { names.contains($0.name) }
        let paths = Set(chain.map(\.path))
        let templates = Set(chain.flatMap(\.usedByTemplates))
        return try inventory.all().filter { r in
            r.definition.template.map(templates.contains) == true
                || r.definition.disks.contains { d in d.image.map(names.contains) == true || paths.contains(d.path) }
        }
    }

    func deleteImage(_ name: String) throws {
        let image = try showImage(name)
        guard image.state == .ready else { throw HTTPError.conflict("image '\(name)' is still being written; wait until it is ready, then delete it") }
        var users: [String] = []
        if !image.usedByVMs.isEmpty { users.append("VM\(image.usedByVMs.count > 1 ? "s" : "") \(image.usedByVMs.joined(separator: ", ")) (delete the VM first: `vireo vm delete NAME`)") }
        if !image.usedByTemplates.isEmpty { users.append("template\(image.usedByTemplates.count > 1 ? "s" : "") \(image.usedByTemplates.joined(separator: ", ")) (`vireo template delete NAME`)") }
        if !image.usedByImages.isEmpty { users.append("the overlay image\(image.usedByImages.count > 1 ? "s" : "") \(image.usedByImages.joined(separator: ", ")) (`vireo image delete NAME`)") }
        guard users.isEmpty else {
            throw HTTPError.conflict("image '\(name)' is in use by \(users.joined(separator: "; ")); it stays until nothing uses it")
        }
        guard unlink(image.path) == 0 else {
            throw HTTPError(500, "internal", "cannot remove \(image.path): \(String(cString: strerror(errno)))")
        }
        event(name, kind: .image, "image-deleted", image.path)
    }
}
