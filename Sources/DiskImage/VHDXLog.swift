import VireoSupport

/// VHDX log replay, in memory ([MS-VHDX] 2.3).
///
/// A header with a non-zero log GUID says updates may sit in the log that never reached their
/// place in the file. Vireo opens VHDX read-only, so instead of writing them back it finds the
/// active sequence (the newest valid, complete run of entries, as the spec's seven steps
/// describe) and lays its updates over the file: every later read of the region table,
/// metadata, BAT, sector bitmaps and payload goes through `VHDXReplayedFile`, which applies
/// the zeroed ranges and the 4 KiB data sectors in log order. The file itself is never written.
///
/// Nothing in the log is trusted: entry lengths, descriptor counts and file offsets are
/// checked, the CRC-32C of every entry is verified, and the total work is bounded.
struct VHDXLog {
    struct Entry {
        var position: UInt64
        var length: UInt64
        var tail: UInt64
        var sequence: UInt64
        var flushedFileOffset: UInt64
        var lastFileOffset: UInt64
        var zeros: [(offset: UInt64, length: UInt64)] = []
        var pages: [(offset: UInt64, data: [UInt8])] = []
        /// Descriptors in log order: true for a data page (index into `pages`), false for zeros.
        var order: [(isData: Bool, index: Int)] = []
    }

    static let sector = 4096
    /// Largest log replayed (qemu-img and Hyper-V make 1 MiB logs).
    static let maxLogBytes: UInt64 = 32 << 20
    /// Bytes checksummed while searching, at most: a hostile log cannot make the search quadratic.
    static let maxChecksumWork = 1 << 30
    /// Largest file a log may describe: a 64 TiB disk with all its metadata fits well below.
    static let maxFileSize: UInt64 = 128 << 40

    let log: [UInt8]
    let guid: [UInt8]
    let path: String
    var checksumWork = 0

    /// The updates of the active sequence, or nil when the header's log GUID is zero or the
    /// log holds no valid sequence (qemu-img's reading: nothing to replay).
    static func activeSequence(_ file: ImageFile, header h: [UInt8], fileSize: UInt64) throws(VireoError) -> [Entry]? {
        let p = file.path
        func bad(_ m: String) -> VireoError { VireoError(.corrupt, "\(p): VHDX log \(m)", hint: "the VHDX file is damaged or hostile; do not use it") }
        let guid = Array(h[48..<64])
        guard guid.contains(where: { $0 != 0 }) else { return nil }
        guard le16(h, 64) == 0 else { throw VireoError(.unsupported, "\(p): VHDX log version \(le16(h, 64)) is not supported") }
        let logLen = UInt64(le32(h, 68)), logOff = le64(h, 72)
        let end = try checkedAdd(logOff, logLen, "\(p): VHDX log")
        guard logOff >= 1 << 20, logOff % (1 << 20) == 0, logLen > 0, logLen % (1 << 20) == 0, end <= fileSize else {
            throw bad("at \(logOff) of \(logLen) bytes is misaligned or outside the file")
        }
        guard logLen <= maxLogBytes else {
            throw VireoError(.unsupported, "\(p): VHDX log of \(logLen) bytes is larger than Vireo replays (\(maxLogBytes >> 20) MiB)",
                             hint: "replay it by opening the disk once read-write (Hyper-V, or qemu-img check -r all \(p)), then import it again")
        }
        var state = VHDXLog(log: try file.readBytes(Int(logLen), at: logOff, what: "VHDX log"), guid: guid, path: p)
        guard let active = try state.findActive() else { return nil }
        if let head = active.last, head.flushedFileOffset > fileSize {
            throw bad("says the file was at least \(head.flushedFileOffset) bytes, but it has \(fileSize): the file is truncated")
        }
        return active
    }

    /// `count` bytes of the circular log starting at `at`.
    func circular(_ at: UInt64, _ count: Int) -> [UInt8] {
        let n = log.count
        let start = Int(at % UInt64(n))
        if start + count <= n { return Array(log[start..<start + count]) }
        var out = Array(log[start...])
        var left = count - out.count
        while left > 0 {
            let k = min(left, n)
            out += log[0..<k]
            left -= k
        }
        return out
    }

    /// The entry at `pos`, if it is a valid entry of this log.
    mutating func entry(at pos: UInt64) throws(VireoError) -> Entry? {
        let n = UInt64(log.count)
        let s = UInt64(Self.sector)
        let first = circular(pos, Self.sector)
        guard Array(first[0..<4]) == Array("loge".utf8), Array(first[32..<48]) == guid else { return nil }
        let length = UInt64(le32(first, 8)), tail = UInt64(le32(first, 12)), seq = le64(first, 16)
        let count = UInt64(le32(first, 24))
        guard length >= s, length % s == 0, length <= n, tail % s == 0, tail < n, seq > 0 else { return nil }
        let descSectors = (64 + count * 32 + s - 1) / s   // count < 2^32: no overflow
        guard descSectors <= length / s else { return nil }
        guard checksumWork + Int(length) <= Self.maxChecksumWork else {
            throw VireoError(.unsupported, "\(path): VHDX log is too tangled to search within Vireo's bounds",
                             hint: "replay it by opening the disk once read-write (Hyper-V, or qemu-img check -r all \(path))")
        }
        checksumWork += Int(length)
        let bytes = circular(pos, Int(length))
        guard le32(bytes, 4) == CRC32C.checksum(bytes, zeroingFieldAt: 4) else { return nil }
        // File sizes the entry vouches for: whole MiB (the spec's rule) and no larger than any
        // VHDX can be, so a hostile entry cannot stretch the file to make any offset look valid.
        let flushed = le64(first, 48), last = le64(first, 56)
        guard flushed % (1 << 20) == 0, last % (1 << 20) == 0, flushed <= Self.maxFileSize, last <= Self.maxFileSize else { return nil }
        var e = Entry(position: pos % n, length: length, tail: tail, sequence: seq,
                      flushedFileOffset: flushed, lastFileOffset: last)
        var dataSector = Int(descSectors) * Self.sector
        for i in 0..<Int(count) {
            let d = 64 + i * 32
            guard le64(bytes, d + 24) == seq else { return nil }
            let sig = Array(bytes[d..<d + 4])
            let fileOffset = le64(bytes, d + 16)
            guard fileOffset % s == 0, fileOffset <= Self.maxFileSize else { return nil }
            if sig == Array("zero".utf8) {
                let zl = le64(bytes, d + 8)
                guard zl % s == 0, zl <= Self.maxFileSize - fileOffset else { return nil }
                e.order.append((false, e.zeros.count))
                e.zeros.append((fileOffset, zl))
            } else if sig == Array("desc".utf8) {
                guard dataSector + Self.sector <= bytes.count else { return nil }
                let ds = dataSector
                guard Array(bytes[ds..<ds + 4]) == Array("data".utf8), UInt64(le32(bytes, ds + 4)) == seq >> 32,
                      UInt64(le32(bytes, ds + 4092)) == seq & 0xffff_ffff else { return nil }
                // The page: 8 leading bytes from the descriptor, 4084 from the sector, 4 trailing.
                let page = Array(bytes[d + 8..<d + 16]) + Array(bytes[ds + 8..<ds + 4092]) + Array(bytes[d + 4..<d + 8])
                e.order.append((true, e.pages.count))
                e.pages.append((fileOffset, page))
                dataSector += Self.sector
            } else {
                return nil
            }
        }
        guard dataSector == bytes.count else { return nil }   // every data sector accounted for
        return e
    }

    /// The spec's search for the active sequence (2.3.3, steps 1-7), bounded.
    mutating func findActive() throws(VireoError) -> [Entry]? {
        let n = UInt64(log.count), s = UInt64(Self.sector)
        var candidate: [Entry] = []
        var currentTail: UInt64 = 0, oldTail: UInt64 = 0
        var cache: [UInt64: Entry?] = [:]
        func at(_ p: UInt64) throws(VireoError) -> Entry? {
            if let c = cache[p] { return c }
            let e = try entry(at: p)
            cache[p] = e
            return e
        }
        for _ in 0...(n / s) {
            var seq: [Entry] = []
            var head = currentTail
            while seq.count < Int(n / s), let e = try at(head) {
                if let last = seq.last, e.sequence != last.sequence &+ 1 { break }
                seq.append(e)
                head = (head + e.length) % n
            }
            var valid = false
            if let last = seq.last, let start = seq.firstIndex(where: { $0.position == last.tail }) {
                valid = true
                if last.sequence > (candidate.last?.sequence ?? 0) { candidate = Array(seq[start...]) }
            }
            currentTail = valid ? head : (currentTail + s) % n
            // Step 7: wrapped past the start, the log is scanned. (Equal means a sequence that
            // fills the whole log came back to where it began: scanned too.)
            if currentTail <= oldTail { break }
            oldTail = currentTail
        }
        return candidate.isEmpty ? nil : candidate
    }
}

/// The VHDX file as it reads after the log's updates: zeroed ranges and data pages, applied in
/// log order, over the bytes on disk; the size grown to what the log says.
final class VHDXReplayedFile: @unchecked Sendable {
    let file: ImageFile
    let size: UInt64
    /// Zeroed ranges, applied before `pages` (a later zeroing already dropped earlier pages).
    private var zeros: [(offset: UInt64, length: UInt64)] = []
    private var pages: [UInt64: [UInt8]] = [:]
    let replayed: Bool

    init(file: ImageFile, fileSize: UInt64, entries: [VHDXLog.Entry]?) {
        self.file = file
        var size = fileSize
        for e in entries ?? [] {
            for step in e.order {
                if step.isData {
                    let (o, page) = e.pages[step.index]
                    pages[o] = page
                    size = max(size, o + UInt64(page.count))   // o <= Int64.max: checked
                } else {
                    let (o, l) = e.zeros[step.index]
                    guard l > 0 else { continue }
                    let end = o + l                              // checked when parsed
                    for k in pages.keys where k >= o && k < end { pages[k] = nil }
                    zeros.append((o, l))
                    size = max(size, end)
                }
            }
            size = max(size, e.lastFileOffset)
        }
        self.size = size
        self.replayed = entries != nil
    }

    var path: String { file.path }

    /// Reads as the replayed file; bytes past its end read as zero.
    func read(into buf: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try file.read(into: buf, at: offset)
        guard replayed, buf.count > 0 else { return }
        let end = offset + UInt64(buf.count)   // file.read checked offset + count <= Int64.max
        for z in zeros where z.offset < end && z.offset + z.length > offset {
            let a = max(z.offset, offset), b = min(z.offset + z.length, end)
            // SAFETY: offset <= a < b <= end = offset + buf.count: the slice lies inside `buf`.
            UnsafeMutableRawBufferPointer(rebasing: buf[Int(a - offset)..<Int(b - offset)]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        var page = offset / 4096 * 4096
        while page < end {
            if let data = pages[page] {
                let a = max(page, offset), b = min(page + 4096, end)
                // SAFETY: offset <= a < b <= end bounds the destination inside `buf`; page <= a and
                // b <= page + 4096 = page + data.count (every page is 8 + 4084 + 4 bytes) bound the source.
                data.withUnsafeBytes { src in
                    UnsafeMutableRawBufferPointer(rebasing: buf[Int(a - offset)..<Int(b - offset)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(a - page)..<Int(b - page)]))
                }
            }
            page += 4096
        }
    }

    /// Exactly `count` bytes of metadata; past the replayed file's end is an error.
    func readBytes(_ count: Int, at offset: UInt64, what: @autoclosure () -> String) throws(VireoError) -> [UInt8] {
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        if o || end > size {
            throw VireoError(.corrupt, "\(path): \(what()) at offset \(offset) (\(count) bytes) extends past the end of the file",
                             hint: "the image is truncated or damaged")
        }
        var out = [UInt8](repeating: 0, count: count)
        var failure: VireoError?
        out.withUnsafeMutableBytes { p in
            do throws(VireoError) { try read(into: p, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }
}
