import Foundation

/// A JSON value that is `Sendable` and `Codable`: how a job's spec, detail, result and events
/// are held without knowing their kind's types.
public enum JobJSON: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JobJSON])
    case object([String: JobJSON])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JobJSON].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JobJSON].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Any `Encodable` value as JSON (dates as RFC 3339, like every record Corral stores).
    public init(encoding value: some Encodable) throws {
        // Already a JSON value (an event built by hand, say): no round trip through bytes.
        if let json = value as? JobJSON {
            self = json
            return
        }
        self = try JobCoding.decoder.decode(JobJSON.self, from: JobCoding.encoder.encode(value))
    }

    /// This value decoded as `T`.
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try JobCoding.decoder.decode(T.self, from: JobCoding.encoder.encode(self))
    }

    public subscript(key: String) -> JobJSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
}

/// The JSON coders every job record goes through.
public enum JobCoding {
    /// Dates as RFC 3339 with milliseconds (so that ordering by time survives a round trip).
    public static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(JobCoding.rfc3339(fractional: true).string(from: date))
        }
        e.outputFormatting = .sortedKeys
        return e
    }

    static func rfc3339(fractional: Bool) -> ISO8601DateFormatter {
        let f = ISO8601DateFormatter()
        f.formatOptions = fractional ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
        return f
    }

    /// Reads RFC 3339 dates with or without fractional seconds.
    public static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            if let date = JobCoding.rfc3339(fractional: true).date(from: text) ?? JobCoding.rfc3339(fractional: false).date(from: text) { return date }
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an RFC 3339 date: \(text)"))
        }
        return d
    }
}
