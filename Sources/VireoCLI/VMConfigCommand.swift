import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm config NAME`: the VM's configuration as JSON, the one its VMM gets whole.
struct VMConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Print a VM's configuration (JSON): as stored, or as its VMM runs it.",
        discussion: """
        The stored configuration is what the daemon hands the VMM at each start (the VM's
        config.json); --running asks the VMM itself. While the VM runs, the two must be equal;
        a difference is reported on stderr and exits 1.
        """)
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Flag(help: "The configuration the running VMM reports (fails when the VM is not running).") var running = false

    func run() throws {
        try reportingErrors {
            let report = try client.makeClient().call("GET", "/v1/vms/\(pathSafe(name))/config", as: VMConfigReport.self)
            if client.json {
                print(String(decoding: APIJSON.encode(report, pretty: true), as: UTF8.self))
                return
            }
            if running {
                guard let r = report.running else {
                    throw VireoError(.conflict, "VM '\(name)' is not running, so no VMM runs a configuration", hint: "vireo vm start \(name), or leave out --running")
                }
                print(String(decoding: r.jsonBytes(pretty: true), as: UTF8.self))
            } else {
                print(String(decoding: report.stored.jsonBytes(pretty: true), as: UTF8.self))
            }
            if report.inSync == false {
                throw VireoError(.conflict, "VM '\(name)': its VMM runs a configuration that differs from the stored one", hint: "compare with --running; restart the VM to apply the stored one")
            }
        }
    }
}
