#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Any JSON value; decoding into it checks that a body is well-formed JSON.
public enum JSONValue: Decodable, Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public var objectKeys: Set<String>? {
        if case let .object(o) = self { return Set(o.keys) }
        return nil
    }
    public subscript(key: String) -> JSONValue? {
        if case let .object(o) = self { return o[key] }
        return nil
    }
}

public enum APIJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted] : [.sortedKeys]
        return e
    }

    public static func encode<T: Encodable>(_ value: T, pretty: Bool = false) -> [UInt8] {
        // Encoding our own model types cannot fail (no non-finite doubles are produced).
        (try? Array(encoder(pretty: pretty).encode(value))) ?? Array("{}".utf8)
    }

    /// Decodes a request body strictly: well-formed JSON, an object, no keys outside `allowed`
    /// (nor, for arrays of objects named in `nested`, outside theirs), then the typed value.
    /// Throws APIErrorBody with a code and a message that says what to fix.
    public static func decodeStrict<T: Decodable>(_ type: T.Type, from body: [UInt8], allowed: Set<String>,
                                                  nested: [String: Set<String>] = [:]) throws -> T {
        let data = Data(body)
        let value: JSONValue
        do { value = try JSONDecoder().decode(JSONValue.self, from: data) } catch {
            throw APIErrorBody(code: "malformed-json", message: "the request body is not valid JSON")
        }
        guard let keys = value.objectKeys else {
            throw APIErrorBody(code: "malformed-json", message: "the request body must be a JSON object")
        }
        let unknown = keys.subtracting(allowed).sorted()
        if !unknown.isEmpty {
            throw APIErrorBody(code: "unknown-field", message: "unknown field\(unknown.count > 1 ? "s" : "") \(unknown.map { "'\($0)'" }.joined(separator: ", ")); allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        // Absent and null are not the same to a schema: a null is refused rather than read as
        // absent. Objects inside (array items, nested objects) get the same checks, with their
        // own allowed keys from `nested` ("disks", "disks.rate_limit", ...).
        try checkObject(value, path: "", nested: nested)
        do { return try JSONDecoder().decode(T.self, from: data) } catch let DecodingError.typeMismatch(_, ctx) {
            throw APIErrorBody(code: "invalid-field", message: "field '\(path(ctx))' has the wrong type")
        } catch let DecodingError.keyNotFound(key, ctx) {
            let p = path(ctx)
            throw APIErrorBody(code: "missing-field", message: "missing required field '\(p.isEmpty ? key.stringValue : p + "." + key.stringValue)'")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw APIErrorBody(code: "invalid-field", message: "field '\(path(ctx))' must not be null")
        } catch let DecodingError.dataCorrupted(ctx) {
            let p = path(ctx)
            throw APIErrorBody(code: "invalid-field", message: p.isEmpty
                ? "a value in the body is invalid or out of range (numbers must fit in 64 bits): \(ctx.debugDescription.prefix(120))"
                : "field '\(p)' has an invalid value")
        } catch {
            throw APIErrorBody(code: "invalid-field", message: "the request body does not match the schema")
        }
    }

    private static func checkObject(_ value: JSONValue, path: String, nested: [String: Set<String>]) throws {
        guard case let .object(o) = value else { return }
        for (k, v) in o.sorted(by: { $0.key < $1.key }) {
            let field = path.isEmpty ? k : path + "." + k
            if v == .null { throw APIErrorBody(code: "invalid-field", message: "field '\(field)' must not be null; leave it out instead") }
            let items: [JSONValue]
            switch v {
            case let .array(a): items = a
            case .object: items = [v]
            default: continue
            }
            for item in items {
                guard let keys = item.objectKeys else { continue }
                if let allowedInner = nested[field], case let bad = keys.subtracting(allowedInner).sorted(), !bad.isEmpty {
                    throw APIErrorBody(code: "unknown-field", message: "unknown field '\(bad[0])' in '\(field)'; allowed: \(allowedInner.sorted().joined(separator: ", "))")
                }
                try checkObject(item, path: field, nested: nested)
            }
        }
    }

    private static func path(_ ctx: DecodingError.Context) -> String {
        ctx.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}
