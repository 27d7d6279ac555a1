extension BlockImage {
    /// Every file this image reads: its own, its extents (VMDK) and its backing chain's.
    public var referencedFiles: [String] {
        var out = [path]
        if let v = self as? VMDKImage { out += v.extentPaths }
        if let q = self as? Qcow2Image, let d = q.dataFilePath { out.append(d) }
        if let b = backing { out += b.referencedFiles }
        return out
    }
}

extension VMDKImage {
    /// The files of the extents a descriptor names (flat and sparse).
    var extentPaths: [String] {
        extents.compactMap { e in
            switch e {
            case let .flat(file, _, _): return file.path
            case let .sparse(s): return s.file.path
            case .zero: return nil
            }
        }
    }
}
