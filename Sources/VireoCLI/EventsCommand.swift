import ArgumentParser
import VireoAPI
import VireoSupport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `vireo events [--vm|--image|--template NAME] [--since SEQ] [--follow] [--json]`: the daemon's
/// event log. Lines: SEQ TIME SUBJECT TYPE MESSAGE, the subject being a VM's name, `image NAME`
/// or `template NAME`; progress lines (only while following) have no SEQ (`-`).
struct EventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Print what happened to VMs, templates and images; --follow keeps printing new events as they happen.",
        discussion: "Example: vireo events --follow --vm web   (Ctrl-C ends it)")
    @OptionGroup var client: ClientOptions
    @Option(help: "Only events of this VM.") var vm: String?
    @Option(help: "Only events of this image.") var image: String?
    @Option(help: "Only events of this template.") var template: String?
    @Option(help: "Only events after this sequence number.") var since: Int = 0
    @Flag(help: "Keep the connection open and print new events as they happen.") var follow = false

    func run() throws {
        try reportingErrors {
            guard since >= 0 && since <= Int(Int32.max) else {
                throw VireoError(.invalidArgument, "--since \(since) must be 0 to \(Int32.max)")
            }
            let subjects: [(EventSubjectKind, String)] = [(.vm, vm), (.image, image), (.template, template)].compactMap { k, n in n.map { (k, $0) } }
            guard subjects.count <= 1 else { throw VireoError(.invalidArgument, "give one of --vm, --image and --template") }
            var path = "/v1/events?since=\(since)"
            if let (kind, name) = subjects.first { path += "&subject_kind=\(kind.rawValue)&subject=\(pathSafe(name))" }
            var api = try client.makeClient()
            guard follow else {
                let r = try api.request("GET", path + "&limit=10000")
                try APIClient.check(r)
                if client.json { print(r.text); return }
                for e in try client.decode(EventList.self, r).events { print(Self.line(e)) }
                return
            }
            api.timeout = 0   // a quiet host sends nothing for a long time
            var last = since
            var dropped: Event?
            let end = try api.streamLines(path + "&follow=true") { raw in
                guard let e = try? JSONDecoder().decode(Event.self, from: Data(raw)) else { return true }
                if e.type == "stream-dropped" || e.type == "daemon-stopping" { dropped = e; return false }
                if e.seq > 0 { last = e.seq }   // live-only progress lines have seq 0
                if client.json { print(String(decoding: raw, as: UTF8.self)) } else { print(Self.line(e)) }
                fflush(nil)
                return true
            }
            if let dropped {
                throw VireoError(.io, dropped.type == "daemon-stopping" ? "the daemon stopped" : "the daemon cut this stream off: \(dropped.message)",
                                 hint: "run `vireo events --follow --since \(last)` to continue")
            }
            if end == .closed {
                throw VireoError(.io, "the daemon closed the event stream (it stopped or restarted)", hint: "when it is back, `vireo events --follow --since \(last)` continues where this stopped")
            }
        }
    }

    static func line(_ e: Event) -> String {
        (e.seq > 0 ? String(e.seq) : "-") + "  \(e.time)  \(e.subjectLabel)  \(e.type)" + (e.message.isEmpty ? "" : "  \(e.message)")
    }
}
