#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The image store's bodies (/v1/images). The daemon owns the files, under DATA_DIR/images/.

/// How the space of a new image is reserved (the seeds' vocabulary).
public enum ImageProvisioning: String, Codable, Sendable, CaseIterable {
    /// Nothing reserved; blocks are allocated as the guest writes.
    case thin
    /// Thick, lazily zeroed: every block reserved up front (fallocate), nothing written.
    case thick
    /// Thick, eagerly zeroed: every byte written with zeroes up front (slow, no first-write cost later).
    case eagerZeroed = "eager-zeroed"
}

/// The store's file formats (imports convert into one of them).
public enum ImageFormat: String, Codable, Sendable, CaseIterable {
    case qcow2, raw
}

public enum ImageState: String, Codable, Sendable, CaseIterable {
    /// Complete; VMs and templates may use it.
    case ready
    /// Being written by a create (eager zeroing) or an import; `progress_percent` says how far.
    case creating, importing
}

/// POST /v1/images: an empty image (`size_bytes`), an overlay of another store image (`backing`),
/// or an import of a host file (`source`, its format auto-detected: raw, qcow2, vmdk, vhd).
public struct ImageCreate: Codable, Sendable, Equatable {
    public var name: String
    public var format: ImageFormat?
    public var sizeBytes: Int64?
    public var provisioning: ImageProvisioning?
    public var source: String?
    public var backing: String?

    public init(name: String, format: ImageFormat? = nil, sizeBytes: Int64? = nil, provisioning: ImageProvisioning? = nil,
                source: String? = nil, backing: String? = nil) {
        self.name = name; self.format = format; self.sizeBytes = sizeBytes; self.provisioning = provisioning
        self.source = source; self.backing = backing
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, format, sizeBytes = "size_bytes", provisioning, source, backing
    }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// POST /v1/images/{name}/resize: grow only.
public struct ImageResize: Codable, Sendable, Equatable {
    public var sizeBytes: Int64
    public init(sizeBytes: Int64) { self.sizeBytes = sizeBytes }
    enum CodingKeys: String, CodingKey, CaseIterable { case sizeBytes = "size_bytes" }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// One image of the store.
public struct Image: Codable, Sendable, Equatable {
    public var name: String
    public var format: ImageFormat
    public var state: ImageState
    public var virtualSizeBytes: Int64
    /// Host blocks the file occupies now.
    public var actualSizeBytes: Int64
    /// The store image this one is an overlay of (qcow2 only).
    public var backingImage: String?
    public var path: String
    /// For `creating`/`importing`: 0-100.
    public var progressPercent: Int?
    public var usedByVMs: [String]
    public var usedByTemplates: [String]
    /// Store images that are overlays of this one.
    public var usedByImages: [String]

    public init(name: String, format: ImageFormat, state: ImageState, virtualSizeBytes: Int64, actualSizeBytes: Int64,
                backingImage: String?, path: String, progressPercent: Int?, usedByVMs: [String], usedByTemplates: [String],
                usedByImages: [String]) {
        self.name = name; self.format = format; self.state = state; self.virtualSizeBytes = virtualSizeBytes
        self.actualSizeBytes = actualSizeBytes; self.backingImage = backingImage; self.path = path
        self.progressPercent = progressPercent; self.usedByVMs = usedByVMs; self.usedByTemplates = usedByTemplates
        self.usedByImages = usedByImages
    }

    enum CodingKeys: String, CodingKey {
        case name, format, state, virtualSizeBytes = "virtual_size_bytes", actualSizeBytes = "actual_size_bytes"
        case backingImage = "backing_image", path, progressPercent = "progress_percent", usedByVMs = "used_by_vms"
        case usedByTemplates = "used_by_templates", usedByImages = "used_by_images"
    }

    public var inUse: Bool { !usedByVMs.isEmpty || !usedByTemplates.isEmpty || !usedByImages.isEmpty }
}

public struct ImageList: Codable, Sendable, Equatable {
    public var images: [Image]
    public init(images: [Image]) { self.images = images }
}

public enum ImageLimits {
    /// 1 MiB: smaller disks are not useful and are usually a unit mistake.
    public static let minSizeBytes: Int64 = 1 << 20
    /// 64 TiB.
    public static let maxSizeBytes: Int64 = 64 << 40
}
