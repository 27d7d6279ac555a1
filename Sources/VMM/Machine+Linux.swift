import VireoSupport

extension Machine {
    func setUpLinux() throws {
        throw VireoError(.unsupported, "Linux boot is not wired yet")
    }
}
