import Foundation
import Jobs
import Runtime

/// Job values to and from Foundation's JSON objects (`JSONSerialization`), at the HTTP edge where
/// a relayed body is still one (profiles' fields added to a body, Ollama's parameters). Here
/// rather than in `Jobs`, which knows nothing of Foundation's number bridging (`isJSONBool` is
/// `Runtime`'s); the domain below works on `JobJSON` alone.
extension JobJSON {
    /// A value from Foundation's JSON objects (`JSONSerialization`); nil for anything else.
    public init?(_ any: Any) {
        switch any {
        case is NSNull: self = .null
        case let n as NSNumber: self = isJSONBool(n) ? .bool(n.boolValue) : .number(n.doubleValue)
        case let s as String: self = .string(s)
        case let a as [Any]:
            var items: [JobJSON] = []
            for x in a {
                guard let v = JobJSON(x) else { return nil }
                items.append(v)
            }
            self = .array(items)
        case let o as [String: Any]:
            var members: [String: JobJSON] = [:]
            for (k, x) in o {
                guard let v = JobJSON(x) else { return nil }
                members[k] = v
            }
            self = .object(members)
        default: return nil
        }
    }

    /// The value as Foundation's JSON objects (whole numbers as `Int`).
    public var any: Any {
        switch self {
        case .null: NSNull()
        case .bool(let b): b
        case .number(let n): n == n.rounded() && abs(n) < 1e15 ? Int(n) as Any : n
        case .string(let s): s
        case .array(let a): a.map(\.any)
        case .object(let o): o.mapValues(\.any)
        }
    }
}
