import Foundation
import Synchronization

/// A configuration problem, naming the key.
public struct ConfigError: Error, Sendable, CustomStringConvertible, Equatable {
    public var key: String
    public var problem: String
    public var description: String { "routes.json: \(key): \(problem)" }
}

/// Reads one JSON object strictly: typed getters that name the key on error, and `finish()`
/// that rejects keys nobody asked for.
struct JSONObjectReader {
    let object: [String: Any]
    let path: String
    private var used: Set<String> = []

    init(_ value: Any?, path: String) throws(ConfigError) {
        guard let object = value as? [String: Any] else { throw ConfigError(key: path.isEmpty ? "(root)" : path, problem: "must be an object") }
        self.object = object
        self.path = path
    }

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func raw(_ key: String) -> Any? {
        used.insert(key)
        let v = object[key]
        return v is NSNull ? nil : v
    }

    mutating func string(_ key: String) throws(ConfigError) -> String? {
        guard let v = raw(key) else { return nil }
        guard let s = v as? String else { throw ConfigError(key: name(key), problem: "must be a string") }
        return s
    }

    mutating func int(_ key: String, min: Int = Int.min, max: Int = Int.max) throws(ConfigError) -> Int? {
        guard let v = raw(key) else { return nil }
        guard let n = v as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue) else {
            throw ConfigError(key: name(key), problem: "must be an integer")
        }
        guard i >= min && i <= max else { throw ConfigError(key: name(key), problem: "must be between \(min) and \(max)") }
        return i
    }

    mutating func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let v = raw(key) else { return nil }
        guard let n = v as? NSNumber, isJSONBool(n) else {
            throw ConfigError(key: name(key), problem: "must be true or false")
        }
        return n.boolValue
    }

    mutating func strings(_ key: String) throws(ConfigError) -> [String]? {
        guard let v = raw(key) else { return nil }
        guard let a = v as? [Any], let s = a as? [String] else { throw ConfigError(key: name(key), problem: "must be a list of strings") }
        return s
    }

    /// A duration: seconds as a number, or "300ms", "30s", "5m", "2h"; negative means forever.
    mutating func duration(_ key: String) throws(ConfigError) -> Duration? {
        guard let v = raw(key) else { return nil }
        guard let d = parseDuration(v) else {
            throw ConfigError(key: name(key), problem: "must be seconds or a duration like \"30s\", \"5m\", \"1h\"")
        }
        return d
    }

    mutating func object(_ key: String) throws(ConfigError) -> JSONObjectReader? {
        guard let v = raw(key) else { return nil }
        return try JSONObjectReader(v, path: name(key))
    }

    mutating func objects(_ key: String) throws(ConfigError) -> [JSONObjectReader] {
        guard let v = raw(key) else { return [] }
        guard let a = v as? [Any] else { throw ConfigError(key: name(key), problem: "must be a list") }
        var out: [JSONObjectReader] = []
        for (i, item) in a.enumerated() { out.append(try JSONObjectReader(item, path: "\(name(key))[\(i)]")) }
        return out
    }

    /// Fails on the first key that no getter asked for.
    func finish() throws(ConfigError) {
        if let unknown = object.keys.sorted().first(where: { !used.contains($0) }) {
            throw ConfigError(key: name(unknown), problem: "unknown key")
        }
    }
}

/// Parses a duration given as seconds or as text with a unit; nil when malformed.
public func parseDuration(_ value: Any) -> Duration? {
    // Beyond ±30 000 years a duration means nothing, and converting it would overflow.
    func bounded(_ seconds: Double) -> Duration? {
        guard seconds.isFinite, abs(seconds) < 1e12 else { return nil }
        return .milliseconds(Int64(seconds * 1000))
    }
    if let n = value as? NSNumber, !isJSONBool(n) { return bounded(n.doubleValue) }
    guard var s = value as? String else { return nil }
    s = s.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
    for (unit, scale) in units where s.hasSuffix(unit) {
        if let v = Double(s.dropLast(unit.count)) { return bounded(v * scale) }
    }
    if let v = Double(s) { return bounded(v) }
    return nil
}

/// Whether a number from JSONSerialization was a JSON `true`/`false`.
public func isJSONBool(_ value: Any) -> Bool {
    let type = type(of: value)
    if type == Bool.self { return true }
    // Foundation's booleans are an NSNumber subclass named …Boolean; the name is looked at once
    // per type, not on every request.
    let id = ObjectIdentifier(type)
    if let known = booleanTypes.withLock({ $0[id] }) { return known }
    let isBoolean = String(describing: type).contains("Boolean")
    booleanTypes.withLock { $0[id] = isBoolean }
    return isBoolean
}

/// Types ``isJSONBool(_:)`` has seen, and whether each is Foundation's boolean.
private let booleanTypes = Mutex<[ObjectIdentifier: Bool]>([:])
