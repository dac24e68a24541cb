import Foundation
import GGUF
import Jobs
import Library
import Runtime

/// Ollama's value formats: `keep_alive` durations, timestamps, names and model details.
public enum OllamaValues {
    /// `keep_alive`: a number of seconds or a Go duration string (`"5m"`, `"1h30m"`, `"-1s"`).
    /// Negative keeps the model loaded forever, zero unloads it after the request. A unit-less
    /// string such as `"300"` is an error, as in Ollama.
    public static func keepAlive(_ value: JobJSON?) throws(OllamaFailure) -> Duration? {
        switch value {
        case nil, .null?: return nil
        case .number(let seconds)?:
            guard seconds.isFinite else { throw .badRequest("keep_alive must be a finite number of seconds") }
            return seconds < 0 ? .seconds(-1) : .milliseconds(Int64(min(seconds, 1e12) * 1000))
        case .string(let text)?:
            guard let d = goDuration(text) else {
                throw .badRequest("time: invalid duration \"\(text)\" for keep_alive (use a unit, e.g. \"300s\" or \"5m\")")
            }
            return d < .zero ? .seconds(-1) : d
        default:
            throw .badRequest("keep_alive must be a duration string like \"5m\" or a number of seconds")
        }
    }

    /// Parses Go's `time.ParseDuration` syntax: `[-+]` then number+unit pairs (ns us µs ms s m h).
    public static func goDuration(_ text: String) -> Duration? {
        var s = Substring(text.trimmingCharacters(in: .whitespaces))
        var sign = 1.0
        if s.first == "-" || s.first == "+" {
            if s.first == "-" { sign = -1 }
            s = s.dropFirst()
        }
        if s == "0" { return .zero }
        guard !s.isEmpty else { return nil }
        var totalSeconds = 0.0
        while !s.isEmpty {
            let number = s.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let v = Double(number) else { return nil }
            s = s.dropFirst(number.count)
            let unit = s.prefix { !($0.isNumber || $0 == ".") }
            s = s.dropFirst(unit.count)
            let scale: Double
            switch unit {
            case "ns": scale = 1e-9
            case "us", "µs", "μs": scale = 1e-6
            case "ms": scale = 1e-3
            case "s": scale = 1
            case "m": scale = 60
            case "h": scale = 3600
            default: return nil
            }
            totalSeconds += v * scale
        }
        guard totalSeconds.isFinite, totalSeconds < 1e12 else { return nil }
        return .nanoseconds(Int64(sign * totalSeconds * 1e9))
    }

    /// RFC 3339 with nine fractional digits and `Z`, as Ollama writes `created_at`.
    public static func timestamp(_ date: Date = Date()) -> String {
        let t = date.timeIntervalSince1970
        var seconds = time_t(t.rounded(.down))
        let nanos = Int(((t - Double(seconds)) * 1e9).rounded(.down))
        var tm = tm()
        gmtime_r(&seconds, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, nanos)
    }

    /// `name:tag` form of a catalog id (`:latest` when it has no tag).
    public static func taggedName(_ id: String) -> String {
        let last = id.split(separator: "/").last ?? Substring(id)
        return last.contains(":") ? id : id + ":latest"
    }

    /// `7.2B`, `135M`, `1.2K`: how Ollama prints parameter counts.
    public static func parameterSize(_ count: UInt64) -> String { ModelLibrary.parameterSize(count) }

    /// The file's modification time as Ollama's `modified_at`.
    public static func modifiedAt(_ spec: ModelSpec) -> String {
        let date = spec.path.flatMap { (try? FileManager.default.attributesOfItem(atPath: $0))?[.modificationDate] as? Date }
        return timestamp(date ?? Date(timeIntervalSince1970: 0))
    }

    /// Nanoseconds in a duration, as Ollama's `*_duration` fields.
    public static func nanoseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }
}

/// Ollama's `details` object for a model.
public struct OllamaModelDetails: Encodable, Sendable, Equatable {
    public var parentModel: String
    /// `gguf`, or `remote` for a model served by a configured upstream.
    public var format: String
    public var family: String
    public var families: [String]
    public var parameterSize: String
    public var quantizationLevel: String

    public init(_ spec: ModelSpec) {
        let family = spec.facts?.architecture ?? ""
        parentModel = spec.parent ?? ""
        format = spec.path == nil ? "remote" : "gguf"
        self.family = family
        families = family.isEmpty ? [] : [family]
        parameterSize = spec.facts.map { OllamaValues.parameterSize($0.parameterCount) } ?? ""
        quantizationLevel = spec.facts?.quantization ?? ""
    }

    enum CodingKeys: String, CodingKey {
        case parentModel = "parent_model", format, family, families, parameterSize = "parameter_size", quantizationLevel = "quantization_level"
    }
}
