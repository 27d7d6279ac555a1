import VireoSupport

/// The error every write to an imported (read-only) format gives.
func importedReadOnlyError(_ path: String) -> VireoError {
    VireoError(.permissionDenied, "\(path) is an imported format and is read-only",
               hint: "convert it first: vireo disk convert -O qcow2 \(path) NEW.qcow2")
}
