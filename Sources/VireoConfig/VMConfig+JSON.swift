#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension VMConfig {
    /// The configuration as JSON (sorted keys: the same value always gives the same bytes).
    public func jsonBytes(pretty: Bool = false) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings, integers and booleans cannot fail.
        return (try? Array(e.encode(self))) ?? Array("{}".utf8)
    }

    /// Reads a configuration file's bytes: well-formed JSON of this type, a format version this
    /// release reads, and every check of `validate()`. `source` names the file in errors.
    public static func decode(_ bytes: [UInt8], source: String) throws(ConfigProblem) -> VMConfig {
        let config: VMConfig
        do { config = try JSONDecoder().decode(VMConfig.self, from: Data(bytes)) } catch let DecodingError.keyNotFound(key, ctx) {
            throw ConfigProblem(path(ctx, key.stringValue), "missing-field", "\(source): missing field '\(path(ctx, key.stringValue))'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ConfigProblem(path(ctx, nil), "invalid-field", "\(source): field '\(path(ctx, nil))' has the wrong type")
        } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
            throw ConfigProblem(path(ctx, nil), "invalid-field", "\(source): field '\(path(ctx, nil))' has an invalid value")
        } catch {
            throw ConfigProblem("", "malformed-json", "\(source) is not a VM configuration (JSON object with name, vcpus, memory_mib, ...)")
        }
        do throws(ConfigProblem) { try config.validate() } catch {
            throw ConfigProblem(error.field, error.code, "\(source): \(error.message)")
        }
        return config
    }

    private static func path(_ ctx: DecodingError.Context, _ last: String?) -> String {
        (ctx.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue } + (last.map { [$0] } ?? []))
            .joined(separator: ".").replacing(".[", with: "[")
    }
}
