/// POST /v1/vms/{name}/balloon: a new balloon target for a running VM (what the guest should
/// give back), in MiB of its memory.
public struct BalloonRequest: Codable, Sendable, Equatable {
    public var targetMiB: Int
    public init(targetMiB: Int) { self.targetMiB = targetMiB }
    enum CodingKeys: String, CodingKey, CaseIterable { case targetMiB = "target_mib" }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// The balloon of a running VM: the target asked for and what the guest driver holds now (it
/// moves towards the target on its own time).
public struct BalloonState: Codable, Sendable, Equatable {
    public var targetMiB: Int
    public var actualMiB: Int
    public init(targetMiB: Int, actualMiB: Int) { self.targetMiB = targetMiB; self.actualMiB = actualMiB }
    enum CodingKeys: String, CodingKey { case targetMiB = "target_mib", actualMiB = "actual_mib" }
}
