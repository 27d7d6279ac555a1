import Foundation
import Testing
import VireoTestSupport

/// Every `vireo ...` command that a message, hint or help text in Sources names exists: the test
/// collects them from the source and runs each with --help against the built binary.
///
/// A command counts as named when it is in backticks (`vireo vm list`) or follows "run ",
/// "Example: ", "e.g. ", "with ", "use " or "try " (prose like "the vireo binary" does not). Its
/// words must resolve: `vireo WORDS --help` must print the usage of a command made of the first
/// words, and words left over must be arguments of a command without subcommands. So
/// `vireo vm update` fails while `vm` has no `update`, and `vireo vm balloon web 256M` passes.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HintCommandTests {
    /// `strict`: in backticks or after "Example:"/"e.g.", certainly a command. Otherwise (after
    /// "run ", "with ", ...) it may be prose about the program ("run vireo as root"): checked
    /// only when its first word is one of vireo's commands.
    struct Hint: Hashable { var words: [String]; var site: String; var strict: Bool }

    static func collectHints() throws -> [Hint] {
        let root = VireoBinary.packageRoot + "/Sources"
        let pattern = try NSRegularExpression(pattern: #"(`|\b(?:[Rr]un|Example:|e\.g\.|with|use|try) )vireo((?: [a-z][a-z0-9-]*)+)"#)
        var hints: [Hint] = []
        guard let files = FileManager.default.enumerator(atPath: root) else { return [] }
        for case let file as String in files where file.hasSuffix(".swift") && !file.hasPrefix("VireoTestSupport/") {
            let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                if line.trimmingCharacters(in: .whitespaces).hasPrefix("//") { continue }   // comments are not messages
                let s = String(line)
                let ns = s as NSString
                for m in pattern.matches(in: s, range: NSRange(location: 0, length: ns.length)) {
                    let words = ns.substring(with: m.range(at: 2)).split(separator: " ").map(String.init)
                    let lead = ns.substring(with: m.range(at: 1))
                    hints.append(Hint(words: words, site: "\(file):\(n + 1)", strict: lead == "`" || lead.hasPrefix("Example") || lead.hasPrefix("e.g.")))
                }
            }
        }
        return hints
    }

    /// The command words of `vireo WORDS --help`'s usage line, and whether that command has subcommands.
    static func resolve(_ words: [String]) throws -> (path: [String], group: Bool, output: String) {
        let r = try VireoBinary.run(words + ["--help"])
        let output = r.1 + r.2
        let usage = output.split(separator: "\n").first { $0.lowercased().hasPrefix("usage:") } ?? ""
        let tokens = usage.split(separator: " ").dropFirst().map(String.init)   // "vireo", then the command words
        var path: [String] = []
        for t in tokens.dropFirst() {
            guard let c = t.first, c.isLowercase, !t.contains("<") else { break }
            path.append(t)
        }
        return (path, output.contains("SUBCOMMANDS:") || usage.contains("<subcommand>"), output)
    }

    @Test func everyCommandAHintNamesExists() throws {
        let hints = try Self.collectHints()
        #expect(hints.count > 30, "the scan found only \(hints.count) hints: is the pattern still right?")
        var byWords: [[String]: [String]] = [:]
        var strict: Set<[String]> = []
        for h in hints {
            byWords[h.words, default: []].append(h.site)
            if h.strict { strict.insert(h.words) }
        }
        var failures: [String] = []
        for (words, sites) in byWords.sorted(by: { $0.key.joined() < $1.key.joined() }) {
            let (path, group, output) = try Self.resolve(words)
            if path.isEmpty && !strict.contains(words) { continue }   // prose: "run vireo as root"
            let named = "`vireo \(words.joined(separator: " "))` (\(sites.joined(separator: ", ")))"
            guard !path.isEmpty, Array(words.prefix(path.count)) == path else {
                failures.append("\(named): --help resolves to `vireo \(path.joined(separator: " "))`: \(output.prefix(300))")
                continue
            }
            if path.count < words.count && group {
                failures.append("\(named): `vireo \(path.joined(separator: " "))` has no subcommand '\(words[path.count])'")
            }
        }
        #expect(failures.isEmpty, "hints naming commands that do not exist:\n\(failures.joined(separator: "\n"))")
    }

    /// The test itself: a command that does not exist is caught, one with arguments is not.
    @Test func theCheckTellsMissingCommandsFromArguments() throws {
        let missing = try Self.resolve(["vm", "frobnicate"])
        #expect(missing.path == ["vm"] && missing.group, "\(missing)")
        let withArgs = try Self.resolve(["vm", "balloon", "web"])
        #expect(withArgs.path == ["vm", "balloon"] && !withArgs.group, "\(withArgs)")
    }
}
