import Foundation

/// A JSON scalar or list of strings, as a sampling profile holds them (Sendable, unlike `Any`).
public enum SendableJSON: Sendable, Equatable, Codable {
    case number(Double)
    case strings([String])
    case bool(Bool)

    /// An Ollama parameter's value: a number, a boolean, a string (a one-element list) or a
    /// list of strings; nil for anything else.
    public init?(parameter value: Any) {
        switch value {
        case let n as NSNumber where isJSONBool(n): self = .bool(n.boolValue)
        case let n as NSNumber: self = .number(n.doubleValue)
        case let s as String: self = .strings([s])
        case let list as [String]: self = .strings(list)
        default: return nil
        }
    }

    public var any: Any {
        switch self {
        case .number(let d): d == d.rounded() && abs(d) < 1e15 ? Int(d) as Any : d
        case .strings(let s): s
        case .bool(let b): b
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = .bool(b) } else if let d = try? c.decode(Double.self) { self = .number(d) } else {
            self = .strings(try c.decode([String].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let d): try c.encode(d)
        case .strings(let s): try c.encode(s)
        case .bool(let b): try c.encode(b)
        }
    }
}

/// The request fields a sampling profile may set, and the presets Corral ships.
public enum SamplingFields {
    public static let numeric: Set<String> = [
        "temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
        "frequency_penalty", "seed", "max_tokens", "mirostat", "mirostat_tau", "mirostat_eta", "dry_multiplier",
    ]

    /// Presets available unless `routes.json` or the admin API redefines them.
    public static let builtIn: [String: [String: SendableJSON]] = [
        "precise": ["temperature": .number(0.1), "top_p": .number(0.9), "top_k": .number(20)],
        "balanced": ["temperature": .number(0.7), "top_p": .number(0.9), "top_k": .number(40)],
        "creative": ["temperature": .number(1.0), "top_p": .number(0.95), "min_p": .number(0.05)],
        "code": ["temperature": .number(0.2), "top_p": .number(0.95), "repeat_penalty": .number(1.0)],
    ]

    public struct Invalid: Error, Sendable {
        public var field: String
        public var problem: String
    }

    /// Checks a profile's fields: known names, numbers (or `stop` strings).
    public static func validate(_ fields: [String: Any]) throws(Invalid) -> [String: SendableJSON] {
        var out: [String: SendableJSON] = [:]
        for (key, value) in fields {
            if key == "stop" {
                if let s = value as? String { out[key] = .strings([s]); continue }
                guard let list = value as? [Any], let strings = list as? [String] else { throw Invalid(field: key, problem: "must be a string or a list of strings") }
                out[key] = .strings(strings)
            } else if numeric.contains(key) {
                guard let n = value as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw Invalid(field: key, problem: "must be a number") }
                out[key] = .number(n.doubleValue)
            } else {
                throw Invalid(field: key, problem: "is not a sampling field (\(numeric.sorted().joined(separator: ", ")), stop)")
            }
        }
        return out
    }
}
