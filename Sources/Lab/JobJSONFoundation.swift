import Foundation
import Jobs
import Runtime

/// Job values to and from Foundation's JSON objects (`JSONSerialization`), for the domain code
/// that still speaks them (evaluations, graders, fine-tuning's API objects). Here rather than in
/// `Jobs`, which knows nothing of Foundation's number bridging (`isJSONBool` is `Runtime`'s).
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

extension JobJSON {
    /// The members of an object; nil for anything else.
    public var objectValue: [String: JobJSON]? { if case .object(let o) = self { o } else { nil } }
    /// The text of a string; nil for anything else.
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    /// The value of a number; nil for anything else.
    public var numberValue: Double? { if case .number(let n) = self { n } else { nil } }
    /// A whole number's value; nil for anything else.
    public var intValue: Int? { numberValue.flatMap { $0 == $0.rounded() && abs($0) < 1e15 ? Int($0) : nil } }
    /// An array of strings; nil when it is not one.
    public var stringsValue: [String]? {
        guard case .array(let items) = self else { return nil }
        let strings = items.compactMap(\.stringValue)
        return strings.count == items.count ? strings : nil
    }
    /// An array of numbers; nil when it is not one.
    public var numbersValue: [Double]? {
        guard case .array(let items) = self else { return nil }
        let numbers = items.compactMap(\.numberValue)
        return numbers.count == items.count ? numbers : nil
    }
}
