import DiskImage
import Dispatch
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
    private func partPath(_ name: String, _ format: ImageFormat) -> String { "\(imagesDir)/.\(name).\(format.rawValue).part" }

    /// The complete images on disk: name -> format.
    private func storeFiles() -> [String: ImageFormat] {
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
    private func describe(_ name: String, _ format: ImageFormat) -> Image {
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
    func resolveImageDisks(_ disks: [DiskSpec]?) throws -> [DiskSpec]? {
        guard let disks else { return nil }
        var out: [DiskSpec] = []
        for (n, d) in disks.enumerated() {
            guard let name = d.image else { out.append(d); continue }
            guard d.path.isEmpty else {
                throw HTTPError.invalid("conflicting-disk", "disks[\(n)]: give either path or image, not both")
            }
            var r = d
            r.path = try readyImagePath(name, field: "disks[\(n)].image")
            out.append(r)
        }
        return out
    }

    // MARK: Create, import

    func createImage(_ c: ImageCreate) async throws -> Image {
        guard VMLimits.isValidName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid image name: \(VMLimits.nameRule)")
        }
        let format = c.format ?? .qcow2
        if storeFiles()[c.name] != nil || imageJobs.get(c.name) != nil {
            throw HTTPError.conflict("an image named '\(c.name)' already exists; pick another name or delete it first (`vireo image delete \(c.name)`)")
        }
        let provisioning = c.provisioning ?? .thin
        let prealloc: Preallocation = switch provisioning { case .thin: .off; case .thick: .falloc; case .eagerZeroed: .full }
        switch (c.source, c.backing, c.sizeBytes) {
        case let (source?, nil, nil):
            guard format == .raw || provisioning == .thin else {
                // The library's conversion keeps qcow2 output thin (zero areas are not allocated).
                throw HTTPError.invalid("invalid-provisioning", "a qcow2 import is thin; for a thick or eager-zeroed copy import with format raw")
            }
            return try await importImage(c.name, from: source, format: format, preallocation: prealloc)
        case let (nil, backing?, size):
            guard format == .qcow2 else { throw HTTPError.invalid("invalid-format", "an overlay (backing) must be qcow2; raw has no backing files") }
            guard provisioning == .thin else { throw HTTPError.invalid("invalid-provisioning", "an overlay is thin; leave provisioning out") }
            let basePath = try readyImagePath(backing, field: "backing")
            let baseName = String(basePath.split(separator: "/").last ?? "")
            let baseFormat: DiskImageFormat = basePath.hasSuffix(".raw") ? .raw : .qcow2
            if let size { try Self.checkSize(size, field: "size_bytes") }
            let baseSize = describe(backing, baseFormat == .raw ? .raw : .qcow2).virtualSizeBytes
            if let size, size < baseSize {
                throw HTTPError.invalid("out-of-range", "size_bytes \(size) is smaller than the backing image (\(baseSize) bytes); leave it out to match it")
            }
            let options = Qcow2CreateOptions(backingFile: baseName, backingFormat: baseFormat)
            return try await writeImage(c.name, format: .qcow2, state: .creating, what: "overlay of \(backing)") { part, _ throws(VireoError) in
                try Qcow2Image.create(path: part, size: size.map { UInt64($0) }, options: options)
            }
        case let (nil, nil, size?):
            try Self.checkSize(size, field: "size_bytes")
            if provisioning != .thin { try checkFreeSpace(size) }
            let what = "\(ByteSize.format(UInt64(size))) \(format.rawValue), \(provisioning.rawValue)"
            return try await writeImage(c.name, format: format, state: .creating, what: what) { part, _ throws(VireoError) in
                switch format {
                case .raw: try RawImage.create(path: part, size: UInt64(size), preallocation: prealloc)
                case .qcow2: try Qcow2Image.create(path: part, size: UInt64(size), options: Qcow2CreateOptions(preallocation: prealloc))
                }
            }
        default:
            throw HTTPError.invalid("invalid-image-spec", "give one of: size_bytes (an empty image), source (import a host file), or backing with an optional size_bytes (an overlay of a store image)")
        }
    }

    private func importImage(_ name: String, from source: String, format: ImageFormat, preallocation: Preallocation) async throws -> Image {
        guard source.hasPrefix("/"), source.utf8.count <= VMLimits.maxPathBytes, !source.contains("\0") else {
            throw HTTPError.invalid("invalid-path", "source '\(source.prefix(200))' must be an absolute path on the daemon's host")
        }
        guard ProcFS.fileExists(source) else {
            throw HTTPError.invalid("file-not-found", "source \(source.prefix(200)) does not exist or is not a regular file")
        }
        guard access(source, R_OK) == 0 else {
            throw HTTPError.invalid("file-not-readable", "source \(source.prefix(200)) is not readable by the daemon")
        }
        let sourceFormat: DiskImageFormat
        let size: UInt64
        do {
            sourceFormat = try DiskImage.probe(path: source)
            let img = try DiskImage.open(path: source, format: sourceFormat, readOnly: true)
            size = img.virtualSize
            try img.close()
        } catch {
            throw HTTPError.invalid("invalid-disk", "source \(source.prefix(200)) cannot be read as a disk image: \(error)")
        }
        try Self.checkSize(Int64(clamping: size), field: "the source's virtual size", rounding: false)
        if preallocation != .off { try checkFreeSpace(Int64(clamping: size)) }
        var options = ImageOperations.ConvertOptions()
        options.format = format == .raw ? .raw : .qcow2
        options.preallocation = preallocation
        let opts = options
        return try await writeImage(name, format: format, state: .importing,
                                    what: "\(sourceFormat.rawValue) \(source) (\(ByteSize.format(size))) as \(format.rawValue)") { part, progress throws(VireoError) in
            let src = try DiskImage.open(path: source, format: sourceFormat, readOnly: true)
            defer { try? src.close() }
            try ImageOperations.convert(src, to: part, options: opts, progress: progress)
        }
    }

    /// Reserves `name`, runs `work` on a thread of its own (the actor keeps answering), relays
    /// its progress as events (type image-create/image-import, every 5%), then renames the
    /// finished file into place. On failure the partial file is removed and nothing remains.
    private func writeImage(_ name: String, format: ImageFormat, state: ImageState, what: String,
                            _ work: @escaping @Sendable (String, @escaping ProgressHandler) throws(VireoError) -> Void) async throws -> Image {
        guard imageJobs.begin(name, ImageJobs.Job(state: state, format: format, percent: 0)) else {
            throw HTTPError.conflict("an image named '\(name)' is already being written")
        }
        defer { imageJobs.end(name) }
        let part = partPath(name, format)
        let final = imagePath(name, format)
        let kind = state == .importing ? "image-import" : "image-create"
        unlink(part)
        event(name, kind, "0% \(what)")
        let (percents, relay) = AsyncStream<Int>.makeStream(bufferingPolicy: .bufferingNewest(32))
        async let outcome: Result<Void, VireoError> = Self.offActor {
            defer { relay.finish() }
            let last = Mutex(0)
            do throws(VireoError) {
                try work(part, { fraction in
                    let p = Int(fraction * 100)
                    let report = last.withLock { l in
                        guard p >= l + 5 && p < 100 else { return false }
                        l = p / 5 * 5
                        return true
                    }
                    if report { relay.yield(p / 5 * 5) }
                })
                return .success(())
            } catch { return .failure(error) }
        }
        for await p in percents {
            imageJobs.progress(name, p)
            event(name, kind, "\(p)% \(what)")
        }
        if case let .failure(error) = await outcome {
            unlink(part)
            event(name, kind + "-failed", "\(what): \(error)")
            throw HTTPError.invalid(state == .importing ? "import-failed" : "create-failed", "image '\(name)': \(error)")
        }
        guard rename(part, final) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(part)
            event(name, kind + "-failed", "\(what): cannot move it into place: \(e)")
            throw HTTPError(500, "internal", "image '\(name)': cannot rename \(part) to \(final): \(e)")
        }
        event(name, state == .importing ? "image-imported" : "image-created", "100% \(what)")
        imageJobs.end(name)
        return try showImage(name)
    }

    /// Runs `body` on a Dispatch worker thread and waits for it without blocking the actor.
    static func offActor<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in
            DispatchQueue.global().async { c.resume(returning: body()) }
        }
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
        event(name, "image-resized", "\(image.virtualSizeBytes) -> \(r.sizeBytes) bytes")
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
        event(name, "image-deleted", image.path)
    }

    // MARK: Checks

    private static func checkSize(_ size: Int64, field: String, rounding: Bool = true) throws {
        guard size >= ImageLimits.minSizeBytes && size <= ImageLimits.maxSizeBytes else {
            throw HTTPError.invalid("out-of-range", "\(field) \(size) is out of range: give \(ImageLimits.minSizeBytes) (1 MiB) to \(ImageLimits.maxSizeBytes) (64 TiB) bytes")
        }
        guard !rounding || size % 512 == 0 else {
            throw HTTPError.invalid("out-of-range", "\(field) \(size) is not a multiple of 512 bytes (a disk is made of 512-byte sectors); the CLI takes sizes like 10G")
        }
    }

    /// Thick images reserve their whole size now: refuse one the file system cannot hold.
    private func checkFreeSpace(_ size: Int64) throws {
        var fs = statvfs()
        guard statvfs(imagesDir, &fs) == 0 else { return }
        let free = Int64(clamping: UInt64(fs.f_bavail) &* UInt64(fs.f_frsize))
        guard size <= free else {
            throw HTTPError(507, "insufficient-space", "a thick \(size)-byte image does not fit: \(imagesDir) has \(free) bytes free; free space, or create it thin")
        }
    }
}
