import ArgumentParser
import DiskImage
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

struct DiskCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a new disk image.")
    @Option(name: .short, help: "Format: qcow2 or raw (default raw).") var f: String = "raw"
    @Option(name: .short, help: "Backing file (makes a linked clone).") var b: String?
    @Option(name: .customShort("F"), help: "Format of the backing file.") var backingFormat: String?
    @Option(name: .short, help: "Options: preallocation=off|metadata|falloc|full, cluster_size=64K, lazy_refcounts=on|off, refcount_bits=16, compression_type=zlib|zstd, extended_l2=on|off, data_file=NAME, data_file_raw=on|off, compat=1.1.") var o: [String] = []
    @Flag(name: .short, help: "Quiet.") var q = false
    @OptionGroup var image: ImageOptions
    @Argument var file: String
    @Argument var size: String?

    func run() throws {
        guard let fmt = try parseFormat(f) else { return }
        let opts = try parseCreateOptions(o)
        let size = try self.size.map { s in try parseSize(s) }
        let prealloc = try opts["preallocation"].map { p in
            guard let v = Preallocation(rawValue: p) else { throw ValidationError("preallocation must be off, metadata, falloc or full") }
            return v
        } ?? .off
        let policy = try image.policy()
        let backing = b ?? opts["backing_file"]
        let bfmt = try parseFormat(backingFormat ?? opts["backing_fmt"])
        try runDisk { () throws(VireoError) in
            switch fmt {
            case .raw:
                guard backing == nil else { throw VireoError(.invalidArgument, "raw images cannot have a backing file", hint: "use -f qcow2") }
                guard let size else { throw VireoError(.invalidArgument, "no image size given", hint: "e.g. vireo disk create -f raw disk.img 10G") }
                try RawImage.create(path: file, size: size, preallocation: prealloc)
                if !q { print("Formatting '\(file)', fmt=raw size=\(size)\(prealloc != .off ? " preallocation=\(prealloc.rawValue)" : "")") }
            case .qcow2:
                var c = Qcow2CreateOptions()
                c.preallocation = prealloc
                if let cs = opts["cluster_size"] {
                    guard let v = ByteSize.parse(cs) else { throw VireoError(.invalidArgument, "invalid cluster_size '\(cs)'") }
                    c.clusterSize = v
                }
                if let l = opts["lazy_refcounts"] { c.lazyRefcounts = l == "on" || l == "true" }
                if let r = opts["refcount_bits"] {
                    guard let v = UInt64(r) else { throw VireoError(.invalidArgument, "invalid refcount_bits '\(r)'") }
                    c.refcountBits = v
                }
                if let ct = opts["compression_type"] {
                    guard let v = Qcow2Header.CompressionType(name: ct) else { throw VireoError(.invalidArgument, "compression_type must be zlib or zstd") }
                    c.compressionType = v
                }
                if let x = opts["extended_l2"] { c.extendedL2 = x == "on" || x == "true" }
                c.dataFile = opts["data_file"]
                if let x = opts["data_file_raw"] { c.dataFileRaw = x == "on" || x == "true" }
                if let compat = opts["compat"], compat != "1.1", compat != "v3" {
                    throw VireoError(.unsupported, "Vireo creates qcow2 version 3 (compat=1.1) only", hint: "drop -o compat=\(compat)")
                }
                c.backingFile = backing
                c.backingFormat = bfmt
                if let bk = backing, bfmt == nil {
                    let resolved = try DiskImage.resolveBackingPath(name: bk, of: file, policy: policy)
                    c.backingFormat = try DiskImage.probe(path: resolved)
                }
                try Qcow2Image.create(path: file, size: size, options: c, openOptions: OpenOptions(backingPolicy: policy))
                if !q {
                    var line = "Formatting '\(file)', fmt=qcow2 cluster_size=\(c.clusterSize) extended_l2=\(c.extendedL2 ? "on" : "off") compression_type=\(c.compressionType.name)"
                    if prealloc != .off { line += " preallocation=\(prealloc.rawValue)" }
                    if let size { line += " size=\(size)" }
                    if let bk = backing { line += " backing_file=\(bk)"; if let bf = c.backingFormat { line += " backing_fmt=\(bf.qemuName)" } }
                    if let d = c.dataFile { line += " data_file=\(d)"; if c.dataFileRaw { line += " data_file_raw=on" } }
                    line += " lazy_refcounts=\(c.lazyRefcounts ? "on" : "off") refcount_bits=\(c.refcountBits)"
                    print(line)
                }
            default:
                throw VireoError(.unsupported, "Vireo imports \(fmt) images but does not create them", hint: "create qcow2 or raw")
            }
        }
    }
}

struct DiskInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show an image's format, sizes, backing file and snapshots.")
    @Option(name: .short, help: "Image format (default: probe).") var f: String?
    @Option(name: .customLong("output")) var output: OutputFormat = .human
    @Flag(name: .customLong("backing-chain"), help: "Show every image of the backing chain.") var backingChain = false
    @OptionGroup var image: ImageOptions
    @Argument var file: String

    func run() throws {
        let fmt = try parseFormat(f)
        let policy = try image.policy()
        try runDisk { () throws(VireoError) in
            let img = try DiskImage.open(path: file, format: fmt, options: OpenOptions(readOnly: true, backingPolicy: policy))
            defer { try? img.close() }
            var items: [BlockImage] = [img]
            if backingChain { var b = img.backing; while let x = b { items.append(x); b = x.backing } }
            if output == .json {
                let objs = items.map { infoJSON($0) }
                print(backingChain ? JSON.array(objs).render() : objs[0].render())
            } else {
                for (i, x) in items.enumerated() {
                    if i > 0 { print("") }
                    print(infoHuman(x))
                }
            }
        }
    }
}

func infoJSON(_ img: BlockImage) -> JSON {
    var kv: [(String, JSON)] = []
    let actual = ImageFileStat.allocatedBytes(img.path)
    let q = img as? Qcow2Image
    if let q, !q.snapshotList.isEmpty {
        kv.append(("snapshots", .array(q.snapshotList.map { s in
            .object([("icount", .int(0)), ("vm-clock-nsec", .int(s.vmClockNanoseconds % 1_000_000_000)), ("name", .string(s.name)),
                     ("date-sec", .int(UInt64(s.dateSeconds))), ("date-nsec", .int(UInt64(s.dateNanoseconds))),
                     ("vm-clock-sec", .int(s.vmClockNanoseconds / 1_000_000_000)), ("id", .string(s.id)), ("vm-state-size", .int(s.vmStateSize))])
        })))
    }
    if let q, let bf = q.header.backingFile, let b = img.backing {
        if let fmt = q.header.backingFormat { kv.append(("backing-filename-format", .string(fmt))) }
        kv.append(("virtual-size", .int(img.virtualSize)))
        kv.append(("filename", .string(img.path)))
        kv.append(("cluster-size", .int(img.clusterSize)))
        kv.append(("format", .string(img.format.qemuName)))
        kv.append(("actual-size", .int(actual)))
        kv.append(("full-backing-filename", .string(b.path)))
        kv.append(("backing-filename", .string(bf)))
    } else {
        kv.append(("virtual-size", .int(img.virtualSize)))
        kv.append(("filename", .string(img.path)))
        if img.format != .raw { kv.append(("cluster-size", .int(img.clusterSize))) }
        kv.append(("format", .string(img.format.qemuName)))
        kv.append(("actual-size", .int(actual)))
        if let q, let bf = q.header.backingFile { kv.append(("backing-filename", .string(bf))) }
    }
    if let q {
        let h = q.header
        kv.append(("format-specific", .object([("type", .string("qcow2")), ("data", .object([
            ("compat", .string(h.version >= 3 ? "1.1" : "0.10")),
            ("compression-type", .string(h.compression.name)),
            ("lazy-refcounts", .bool(h.compatibleFeatures & Qcow2Header.Compatible.lazyRefcounts != 0)),
            ("refcount-bits", .int(h.refcountBits)),
            ("corrupt", .bool(h.incompatibleFeatures & Qcow2Header.Incompatible.corrupt != 0)),
            ("extended-l2", .bool(h.hasExtendedL2)),
        ] + (h.dataFile.map { d in [("data-file", JSON.string(d)), ("data-file-raw", JSON.bool(h.dataFileRaw))] } ?? []) + [
        ]))])))
        kv.append(("dirty-flag", .bool(h.incompatibleFeatures & Qcow2Header.Incompatible.dirty != 0)))
    } else {
        kv.append(("dirty-flag", .bool(false)))
    }
    return .object(kv)
}

func infoHuman(_ img: BlockImage) -> String {
    var lines = ["image: \(img.path)", "file format: \(img.format.qemuName)",
                 "virtual size: \(ByteSize.format(img.virtualSize)) (\(img.virtualSize) bytes)",
                 "disk size: \(ByteSize.format(ImageFileStat.allocatedBytes(img.path)))"]
    if img.format != .raw { lines.append("cluster_size: \(img.clusterSize)") }
    if let q = img as? Qcow2Image {
        let h = q.header
        if let bf = h.backingFile {
            lines.append("backing file: \(bf)" + (img.backing.map { $0.path != bf ? " (actual path: \($0.path))" : "" } ?? ""))
            if let f = h.backingFormat { lines.append("backing file format: \(f)") }
        }
        let snaps = q.snapshotList
        if !snaps.isEmpty {
            lines.append("Snapshot list:")
            lines.append("ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT")
            for s in snaps {
                let date = formatDate(s.dateSeconds)
                lines.append("\(pad(s.id, 10))\(pad(s.name, 18))\(pad("0 B", 8))\(date)   00:00:00.000          0")
            }
        }
        lines.append("Format specific information:")
        lines.append("    compat: \(h.version >= 3 ? "1.1" : "0.10")")
        lines.append("    compression type: \(h.compression.name)")
        lines.append("    lazy refcounts: \(h.compatibleFeatures & Qcow2Header.Compatible.lazyRefcounts != 0)")
        lines.append("    refcount bits: \(h.refcountBits)")
        lines.append("    corrupt: \(h.incompatibleFeatures & Qcow2Header.Incompatible.corrupt != 0)")
        lines.append("    extended l2: \(h.hasExtendedL2)")
        if let d = h.dataFile {
            lines.append("    data file: \(d)")
            lines.append("    data file raw: \(h.dataFileRaw)")
        }
        if h.incompatibleFeatures & Qcow2Header.Incompatible.dirty != 0 { lines.append("    dirty: true") }
    }
    if let v = img as? VMDKImage { lines.append("create type: \(v.createType)") }
    if let v = img as? VHDImage {
        lines.append("subformat: \(v.isDifferencing ? "differencing" : v.isDynamic ? "dynamic" : "fixed")")
        if let parent = v.parentName { lines.append("backing file: \(parent)") }
    }
    if let v = img as? VHDXImage {
        lines.append("subformat: \(v.subformat)")
        if let parent = v.parentName { lines.append("backing file: \(parent)") }
    }
    if let v = img as? VDIImage { lines.append("subformat: \(v.subformat)") }
    return lines.joined(separator: "\n")
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

func formatDate(_ secs: UInt32) -> String {
    var t = time_t(secs)
    var tmv = tm()
    localtime_r(&t, &tmv)
    func two(_ x: Int32) -> String { x < 10 ? "0\(x)" : "\(x)" }
    return "\(tmv.tm_year + 1900)-\(two(tmv.tm_mon + 1))-\(two(tmv.tm_mday)) \(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec))"
}

enum ImageFileStat {
    static func allocatedBytes(_ path: String) -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        return UInt64(max(0, st.st_blocks)) &* 512
    }
}

struct DiskCheck: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check a qcow2 image for corruption and leaks; -r repairs.")
    @Option(name: .short, help: "Repair: leaks or all.") var r: String?
    @Option(name: .short, help: "Image format.") var f: String?
    @Option(name: .customLong("output")) var output: OutputFormat = .human
    @Flag(name: .short) var q = false
    @OptionGroup var image: ImageOptions
    @Argument var file: String

    func run() throws {
        let mode: RepairMode
        switch r {
        case nil: mode = .none
        case "leaks": mode = .leaks
        case "all": mode = .all
        default: throw ValidationError("-r takes leaks or all")
        }
        _ = try parseFormat(f)
        let policy = try image.policy()
        var status: Int32 = 0
        try runDisk { () throws(VireoError) in
            let fmt = try DiskImage.probe(path: file)
            guard fmt == .qcow2 else {
                throw VireoError(.unsupported, "\(file) is \(fmt.qemuName); only qcow2 images can be checked")
            }
            let img = try Qcow2Image.openForCheck(path: file, repair: mode != .none, options: OpenOptions(backingPolicy: policy, openBacking: false))
            defer { try? img.close() }
            let res = try img.check(repair: mode)
            let remainingCorrupt = res.corruptions - res.corruptionsFixed
            let remainingLeaks = res.leaks - res.leaksFixed
            if output == .json {
                var kv: [(String, JSON)] = [("image-end-offset", .int(res.imageEndOffset)), ("total-clusters", .int(res.totalClusters)),
                                            ("check-errors", .int(0)), ("allocated-clusters", .int(res.allocatedClusters)),
                                            ("filename", .string(file)), ("format", .string("qcow2"))]
                kv.append(("fragmented-clusters", .int(res.fragmentedClusters)))
                kv.append(("compressed-clusters", .int(res.compressedClusters)))
                if remainingLeaks > 0 { kv.append(("leaks", .int(UInt64(remainingLeaks)))) }
                if remainingCorrupt > 0 { kv.append(("corruptions", .int(UInt64(remainingCorrupt)))) }
                if res.leaksFixed > 0 { kv.append(("leaks-fixed", .int(UInt64(res.leaksFixed)))) }
                if res.corruptionsFixed > 0 { kv.append(("corruptions-fixed", .int(UInt64(res.corruptionsFixed)))) }
                print(JSON.object(kv).render())
            } else if !q {
                for m in res.messages where mode == .none { print(m) }
                if res.leaksFixed > 0 || res.corruptionsFixed > 0 {
                    print("The following inconsistencies were found and repaired:\n")
                    print("    \(res.leaksFixed) leaked clusters")
                    print("    \(res.corruptionsFixed) corruptions\n")
                    print("Double checking the fixed image now...")
                }
                if remainingCorrupt > 0 {
                    print("\n\(remainingCorrupt) errors were found on the image.")
                    print("Data may be corrupted, or further writes to the image may corrupt it.")
                }
                if remainingLeaks > 0 {
                    print("\n\(remainingLeaks) leaked clusters were found on the image.")
                    print("This means waste of disk space, but no harm to data.")
                }
                if remainingCorrupt == 0 && remainingLeaks == 0 { print("No errors were found on the image.") }
                let pct = res.totalClusters == 0 ? 0 : Double(res.allocatedClusters) * 100 / Double(res.totalClusters)
                let frag = res.allocatedClusters == 0 ? 0 : Double(res.fragmentedClusters) * 100 / Double(res.allocatedClusters)
                let comp = res.allocatedClusters == 0 ? 0 : Double(res.compressedClusters) * 100 / Double(res.allocatedClusters)
                print("\(res.allocatedClusters)/\(res.totalClusters) = \(fmt2(pct))% allocated, \(fmt2(frag))% fragmented, \(fmt2(comp))% compressed clusters")
                print("Image end offset: \(res.imageEndOffset)")
            }
            status = remainingCorrupt > 0 ? 2 : (remainingLeaks > 0 ? 3 : 0)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

func fmt2(_ d: Double) -> String {
    let v = Int((d * 100).rounded())
    return "\(v / 100).\(v % 100 < 10 ? "0" : "")\(v % 100)"
}

struct DiskMap: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "map", abstract: "Show where each range of the virtual disk is stored.")
    @Option(name: .short) var f: String?
    @Option(name: .customLong("output")) var output: OutputFormat = .human
    @OptionGroup var image: ImageOptions
    @Argument var file: String

    func run() throws {
        let fmt = try parseFormat(f)
        let policy = try image.policy()
        try runDisk { () throws(VireoError) in
            let img = try DiskImage.open(path: file, format: fmt, options: OpenOptions(readOnly: true, backingPolicy: policy))
            defer { try? img.close() }
            let entries = try ImageOperations.map(img)
            if output == .json {
                let lines = entries.map { e -> String in
                    var s = "{ \"start\": \(e.start), \"length\": \(e.length), \"depth\": \(e.depth), \"present\": \(e.present), \"zero\": \(e.zero), \"data\": \(e.data)"
                    if e.compressed { s += ", \"compressed\": true" }
                    if let o = e.offset, !e.compressed { s += ", \"offset\": \(o)" }
                    return s + "}"
                }
                print("[" + lines.joined(separator: ",\n") + "]")
            } else {
                print("Offset          Length          Mapped to       File")
                for e in entries where e.data {
                    let off = e.offset.map { "0x" + String($0, radix: 16) } ?? "-"
                    print("\(pad("0x" + String(e.start, radix: 16), 16))\(pad("0x" + String(e.length, radix: 16), 16))\(pad(off, 16))\(e.file ?? "")")
                }
            }
        }
    }
}
