import ArgumentParser
import DiskImage
import VireoSupport

struct DiskConvert: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "convert", abstract: "Copy an image into a new one, possibly in another format.")
    @Option(name: .short, help: "Source format (default: probe).") var f: String?
    @Option(name: .customShort("O"), help: "Output format: qcow2 or raw (default raw).") var outFormat: String = "raw"
    @Flag(name: .short, help: "Compress the output (qcow2).") var c = false
    @Flag(name: .short, help: "Show progress.") var p = false
    @Option(name: .short, help: "Output options: cluster_size=, preallocation=, lazy_refcounts=, refcount_bits=, compression_type=zlib|zstd, extended_l2=on|off, data_file=NAME, data_file_raw=on|off.") var o: [String] = []
    @Option(name: .short, help: "Output cache mode: unsafe (default, like qemu-img convert) or writeback.") var t: String = "unsafe"
    @Flag(name: .short) var q = false
    @OptionGroup var image: ImageOptions
    @Argument var source: String
    @Argument var destination: String

    func run() throws {
        let sfmt = try parseFormat(f)
        guard let ofmt = try parseFormat(outFormat) else { return }
        let opts = try parseCreateOptions(o)
        var co = ImageOperations.ConvertOptions()
        co.format = ofmt
        co.compress = c
        if c && ofmt != .qcow2 { throw ValidationError("-c needs -O qcow2") }
        if let pa = opts["preallocation"] {
            guard let v = Preallocation(rawValue: pa) else { throw ValidationError("preallocation must be off, metadata, falloc or full") }
            co.preallocation = v
        }
        if let cs = opts["cluster_size"] { co.qcow2.clusterSize = try parseSize(cs, what: "cluster_size") }
        if let l = opts["lazy_refcounts"] { co.qcow2.lazyRefcounts = l == "on" }
        if let r = opts["refcount_bits"], let v = UInt64(r) { co.qcow2.refcountBits = v }
        if let x = opts["extended_l2"] { co.qcow2.extendedL2 = x == "on" || x == "true" }
        co.qcow2.dataFile = opts["data_file"]
        if let x = opts["data_file_raw"] { co.qcow2.dataFileRaw = x == "on" || x == "true" }
        if let ct = opts["compression_type"] {
            guard let v = Qcow2Header.CompressionType(name: ct) else { throw ValidationError("compression_type must be zlib or zstd") }
            co.qcow2.compressionType = v
        }
        guard let cache = CacheMode(rawValue: t == "none" ? "writeback" : t) else { throw ValidationError("-t must be unsafe or writeback") }
        co.cache = cache
        let policy = try image.policy()
        let progress = ProgressPrinter(p && !q)
        try runDisk { () throws(VireoError) in
            let src = try DiskImage.open(path: source, format: sfmt, options: OpenOptions(readOnly: true, backingPolicy: policy))
            defer { try? src.close() }
            progress.update(0)
            try ImageOperations.convert(src, to: destination, options: co, progress: { progress.update($0) })
            progress.finish()
        }
    }
}

struct DiskCompare: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "compare", abstract: "Check whether two images have the same guest-visible contents.")
    @Option(name: .short, help: "Format of the first image.") var f: String?
    @Option(name: .customShort("F"), help: "Format of the second image.") var f2: String?
    @Flag(name: .short, help: "Show progress.") var p = false
    @Flag(name: .short) var q = false
    @OptionGroup var image: ImageOptions
    @Argument var first: String
    @Argument var second: String

    func run() throws {
        let fa = try parseFormat(f), fb = try parseFormat(f2)
        let policy = try image.policy()
        var status: Int32 = 0
        let progress = ProgressPrinter(p && !q)
        do {
            try runDisk { () throws(VireoError) in
                let a = try DiskImage.open(path: first, format: fa, options: OpenOptions(readOnly: true, backingPolicy: policy))
                defer { try? a.close() }
                let b = try DiskImage.open(path: second, format: fb, options: OpenOptions(readOnly: true, backingPolicy: policy))
                defer { try? b.close() }
                let r = try ImageOperations.compare(a, b, progress: { progress.update($0) })
                progress.finish()
                switch r {
                case .identical: if !q { print("Images are identical.") }
                case .mismatch(let off):
                    if !q { print("Content mismatch at offset \(off)!") }
                    status = 1
                }
            }
        } catch let e as ExitCode {
            throw e == ExitCode(1) ? ExitCode(2) : e
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct DiskSnapshot: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot", abstract: "Create (-c), list (-l), apply (-a) or delete (-d) internal snapshots.")
    @Option(name: .short, help: "Create a snapshot.") var c: String?
    @Flag(name: .short, help: "List snapshots.") var l = false
    @Option(name: .short, help: "Apply (revert to) a snapshot.") var a: String?
    @Option(name: .short, help: "Delete a snapshot.") var d: String?
    @Flag(name: .short) var q = false
    @Argument var file: String

    func validate() throws {
        let n = [c != nil, l, a != nil, d != nil].filter { $0 }.count
        if n != 1 { throw ValidationError("give exactly one of -c NAME, -l, -a NAME, -d NAME") }
    }

    func run() throws {
        try runDisk { () throws(VireoError) in
            let img = try Qcow2Image.open(path: file, readOnly: l, options: OpenOptions(openBacking: true))
            defer { try? img.close() }
            if l {
                print("Snapshot list:")
                print("ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT")
                for s in img.snapshotList {
                    print("\(pad(s.id, 10))\(pad(s.name, 18))\(pad("0 B", 8))\(formatDate(s.dateSeconds))   00:00:00.000          0")
                }
            } else if let c { try img.createSnapshot(name: c) }
            else if let a { try img.applySnapshot(name: a) }
            else if let d { try img.deleteSnapshot(name: d) }
            try img.close()
        }
    }
}

struct DiskCommit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "commit", abstract: "Write a linked clone's changes into its backing file.")
    @Option(name: .short) var f: String?
    @Flag(name: .short, help: "Keep the image's contents (do not empty it).") var d = false
    @Flag(name: .short, help: "Show progress.") var p = false
    @Flag(name: .short) var q = false
    @OptionGroup var image: ImageOptions
    @Argument var file: String

    func run() throws {
        let fmt = try parseFormat(f)
        let policy = try image.policy()
        let progress = ProgressPrinter(p && !q)
        try runDisk { () throws(VireoError) in
            try ImageOperations.commit(path: file, format: fmt, keep: d, options: OpenOptions(backingPolicy: policy), progress: { progress.update($0) })
            progress.finish()
            if !q { print("Image committed.") }
        }
    }
}

struct DiskRebase: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rebase", abstract: "Change a linked clone's backing file (safe by default; -u only rewrites the name).")
    @Option(name: .short, help: "New backing file (\"\" for none).") var b: String
    @Option(name: .customShort("F"), help: "Format of the new backing file.") var backingFormat: String?
    @Flag(name: .short, help: "Unsafe: change the name only, copy nothing.") var u = false
    @Flag(name: .short, help: "Show progress.") var p = false
    @Option(name: .short) var f: String?
    @OptionGroup var image: ImageOptions
    @Argument var file: String

    func run() throws {
        let bf = try parseFormat(backingFormat)
        let policy = try image.policy()
        let progress = ProgressPrinter(p)
        try runDisk { () throws(VireoError) in
            try ImageOperations.rebase(path: file, newBacking: b.isEmpty ? nil : b, newFormat: bf, unsafe: u,
                                       options: OpenOptions(backingPolicy: policy), progress: { progress.update($0) })
            progress.finish()
        }
    }
}

struct DiskResize: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resize", abstract: "Grow an image (or shrink it with --shrink when nothing is stored past the new end).")
    @Option(name: .short) var f: String?
    @Flag(name: .customLong("shrink"), help: "Allow shrinking.") var shrink = false
    @Flag(name: .short) var q = false
    @Argument var file: String
    @Argument(help: "New size, or +SIZE / -SIZE relative to the current one.") var size: String

    func run() throws {
        let fmt = try parseFormat(f)
        var rel = 0
        var s = size
        if s.hasPrefix("+") { rel = 1; s.removeFirst() } else if s.hasPrefix("-") { rel = -1; s.removeFirst() }
        let amount = try parseSize(s)
        try runDisk { () throws(VireoError) in
            let img = try DiskImage.open(path: file, format: fmt, options: OpenOptions(openBacking: false))
            defer { try? img.close() }
            let cur = img.virtualSize
            let new: UInt64
            switch rel {
            case 1:
                let (v, o) = cur.addingReportingOverflow(amount)
                guard !o else { throw VireoError(.invalidArgument, "new size overflows") }
                new = v
            case -1:
                guard amount <= cur else { throw VireoError(.invalidArgument, "cannot shrink below zero") }
                new = cur - amount
            default: new = amount
            }
            if new < cur && !shrink {
                throw VireoError(.invalidArgument, "use the --shrink option to shrink \(file) from \(cur) to \(new) bytes",
                                 hint: "shrinking destroys data past the new end; Vireo refuses while data is stored there")
            }
            if let q = img as? Qcow2Image { try q.resize(to: new) }
            else if let r = img as? RawImage { try r.resize(to: new) }
            else { throw VireoError(.unsupported, "cannot resize \(img.format) images") }
            try img.close()
            if !q { print("Image resized.") }
        }
    }
}
