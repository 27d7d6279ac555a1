import DiskImage
import Dispatch
import Synchronization
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Writing store images: empty ones (thin, thick, eager-zeroed), overlays, imports. The work
/// runs off the actor into `.NAME.FORMAT.part`, renamed into place when complete (see
/// HostService+Images.swift for the store's layout and docs/images.md).
extension HostService {
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
        try Validation.checkFile("source", source)
        // The source, and every backing file or extent it reads through, inside the pools.
        let source = try pools.confineImage(source, field: "source")
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
    /// its progress to event followers only (type image-create/image-import, every 5%; stored: the
    /// -started event and the end), then renames the
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
        event(name, kind: .image, kind + "-started", what)
        progressEvent(name, kind: .image, kind, "0% \(what)")
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
            progressEvent(name, kind: .image, kind, "\(p)% \(what)")
        }
        if case let .failure(error) = await outcome {
            unlink(part)
            event(name, kind: .image, kind + "-failed", "\(what): \(error)")
            throw HTTPError.invalid(state == .importing ? "import-failed" : "create-failed", "image '\(name)': \(error)")
        }
        guard rename(part, final) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(part)
            event(name, kind: .image, kind + "-failed", "\(what): cannot move it into place: \(e)")
            throw HTTPError(500, "internal", "image '\(name)': cannot rename \(part) to \(final): \(e)")
        }
        event(name, kind: .image, state == .importing ? "image-imported" : "image-created", "100% \(what)")
        imageJobs.end(name)
        return try showImage(name)
    }

    /// Runs `body` on a Dispatch worker thread and waits for it without blocking the actor.
    static func offActor<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in
            DispatchQueue.global().async { c.resume(returning: body()) }
        }
    }

    // MARK: Checks

    static func checkSize(_ size: Int64, field: String, rounding: Bool = true) throws {
        guard size >= ImageLimits.minSizeBytes && size <= ImageLimits.maxSizeBytes else {
            throw HTTPError.invalid("out-of-range", "\(field) \(size) is out of range: give \(ImageLimits.minSizeBytes) (1 MiB) to \(ImageLimits.maxSizeBytes) (64 TiB) bytes")
        }
        guard !rounding || size % 512 == 0 else {
            throw HTTPError.invalid("out-of-range", "\(field) \(size) is not a multiple of 512 bytes (a disk is made of 512-byte sectors); the CLI takes sizes like 10G")
        }
    }

    /// Thick images reserve their whole size now: refuse one the file system cannot hold.
    func checkFreeSpace(_ size: Int64) throws {
        var fs = statvfs()
        guard statvfs(imagesDir, &fs) == 0 else { return }
        let free = Int64(clamping: UInt64(fs.f_bavail) &* UInt64(fs.f_frsize))
        guard size <= free else {
            throw HTTPError(507, "insufficient-space", "a thick \(size)-byte image does not fit: \(imagesDir) has \(free) bytes free; free space, or create it thin")
        }
    }
}
