import ArgumentParser
import DiskImage
import VireoSupport

struct DiskAmend: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "amend", abstract: "Change a qcow2 image's options in place (qemu-img amend).")
    @Option(name: .short, help: "Image format (qcow2).") var f: String?
    @Option(name: .short, help: "Options: compat=0.10|1.1, lazy_refcounts=on|off, data_file=NAME, data_file_raw=off, backing_file=, backing_fmt=, size=.") var o: [String] = []
    @Flag(name: .short) var q = false
    @Argument var file: String

    func run() throws {
        if let fmt = try parseFormat(f), fmt != .qcow2 { throw ValidationError("amend supports qcow2 images only") }
        let opts = try parseCreateOptions(o)
        guard !opts.isEmpty else { throw ValidationError("give the options to change with -o") }
        var a = Qcow2AmendOptions()
        func bool(_ k: String) throws -> Bool? {
            guard let v = opts[k] else { return nil }
            switch v { case "on", "true": return true; case "off", "false": return false
            default: throw ValidationError("\(k) must be on or off") }
        }
        for k in opts.keys where !["compat", "lazy_refcounts", "data_file", "data_file_raw", "backing_file", "backing_fmt", "size"].contains(k) {
            throw ValidationError("amend cannot change '\(k)' (it would rewrite the image; use vireo disk convert -o \(k)=...)")
        }
        a.compat = opts["compat"]
        a.lazyRefcounts = try bool("lazy_refcounts")
        a.dataFile = opts["data_file"]
        a.dataFileRaw = try bool("data_file_raw")
        a.backingFile = opts["backing_file"]
        a.backingFormat = try parseFormat(opts["backing_fmt"])
        a.size = try opts["size"].map { try parseSize($0) }
        try runDisk { () throws(VireoError) in
            guard try DiskImage.probe(path: file) == .qcow2 else {
                throw VireoError(.unsupported, "\(file) is not a qcow2 image; amend changes qcow2 images only")
            }
            try Qcow2Image.amend(path: file, options: a)
        }
    }
}

struct DiskMeasure: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "measure", abstract: "How large a new image would be (qemu-img measure).")
    @Option(name: .customLong("size"), help: "Virtual size of a new, empty image.") var size: String?
    @Option(name: .short, help: "Input image format (default: probe).") var f: String?
    @Option(name: .customShort("O"), help: "Target format: qcow2 (default) or raw.") var outFormat: String = "qcow2"
    @Option(name: .short, help: "Target options: cluster_size=, refcount_bits=, extended_l2=, preallocation=.") var o: [String] = []
    @Option(name: .customLong("output")) var output: OutputFormat = .human
    @OptionGroup var image: ImageOptions
    @Argument var file: String?

    func validate() throws {
        if (size == nil) == (file == nil) { throw ValidationError("give either --size SIZE or an input image") }
    }

    func run() throws {
        guard let ofmt = try parseFormat(outFormat) else { return }
        let sfmt = try parseFormat(f)
        let opts = try parseCreateOptions(o)
        var c = Qcow2CreateOptions()
        if let cs = opts["cluster_size"] { c.clusterSize = try parseSize(cs, what: "cluster_size") }
        if let r = opts["refcount_bits"] {
            guard let v = UInt64(r) else { throw ValidationError("invalid refcount_bits '\(r)'") }
            c.refcountBits = v
        }
        if let x = opts["extended_l2"] { c.extendedL2 = x == "on" || x == "true" }
        var prealloc = Preallocation.off
        if let pa = opts["preallocation"] {
            guard let v = Preallocation(rawValue: pa) else { throw ValidationError("preallocation must be off, metadata, falloc or full") }
            prealloc = v
        }
        let vsize = try size.map { try parseSize($0) }
        let policy = try image.policy()
        try runDisk { () throws(VireoError) in
            var src: BlockImage?
            if let file { src = try DiskImage.open(path: file, format: sfmt, options: OpenOptions(readOnly: true, backingPolicy: policy)) }
            defer { try? src?.close() }
            let r = try ImageMeasure.measure(format: ofmt, size: vsize, source: src, qcow2: c, preallocation: prealloc)
            // qemu-img shows bitmaps only when source and target both are qcow2.
            let bitmaps = src?.format == .qcow2 && ofmt == .qcow2
            if output == .json {
                var s = "{\n"
                if bitmaps { s += "    \"bitmaps\": 0,\n" }
                s += "    \"required\": \(r.required),\n    \"fully-allocated\": \(r.fullyAllocated)\n}"
                print(s)
            } else {
                print("required size: \(r.required)")
                print("fully allocated size: \(r.fullyAllocated)")
                if bitmaps { print("bitmaps size: 0") }
            }
        }
    }
}
