import Foundation
import NIOCore

/// Why an Ollama request failed below the HTTP layer: the status Ollama would answer with and the
/// message of its `{"error": …}` (plus what retrying needs). Gateway's `OllamaError` gives it
/// that shape; a stream that has started reports it as one more NDJSON line (``line``).
public struct OllamaFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The HTTP status.
    public var status: Int
    public var message: String
    /// Seconds after which retrying may succeed (`Retry-After`).
    public var retryAfter: Int?
    /// More response headers (`x-ratelimit-*`).
    public var headers: [String: String] = [:]

    public init(status: Int, _ message: String, retryAfter: Int? = nil, headers: [String: String] = [:]) {
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
        self.headers = headers
    }

    /// A request Ollama would refuse as malformed (400).
    public static func badRequest(_ message: String) -> OllamaFailure { OllamaFailure(status: 400, message) }

    /// Ollama's wording for an unknown model (404).
    public static func modelNotFound(_ name: String) -> OllamaFailure { OllamaFailure(status: 404, "model '\(name)' not found") }

    /// A team key asking for a model its team may not use (403).
    public static func notAllowed(_ name: String) -> OllamaFailure { OllamaFailure(status: 403, "your team may not use model '\(name)'") }

    /// A serving failure as Ollama reports it: an unknown model in Ollama's words, anything
    /// else with its status, message, `Retry-After` and headers.
    public init(_ error: ServingError) {
        if error.code == .modelNotFound, let name = error.message.split(separator: "'").dropFirst().first {
            self = .modelNotFound(String(name))
            headers = error.headers
        } else {
            self.init(status: error.status, error.message, retryAfter: error.retryAfter, headers: error.headers)
        }
    }

    public var description: String { "\(status): \(message)" }

    /// The `{"error": …}` object.
    public var body: ByteBuffer { OllamaJSON.line(ErrorObject(error: message), newline: false) }

    /// One NDJSON line: how a failure is reported after a stream has started.
    public var line: ByteBuffer { OllamaJSON.line(ErrorObject(error: message)) }

    struct ErrorObject: Encodable { var error: String }
}

/// The JSON coders of the Ollama translation: slashes unescaped, as the dictionaries were written.
enum OllamaJSON {
    /// Shared by every request (JSONEncoder is thread-safe); keys in any order, as clients parse them.
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }()

    /// Keys sorted: for text a model reads (tool-call arguments), so the same call is the same text.
    static let sortedEncoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    static let decoder = JSONDecoder()

    /// `value` as JSON bytes; `{}` for a value JSON cannot hold (a non-finite number).
    static func data(_ value: some Encodable) -> Data {
        (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    /// `value` as JSON text with sorted keys.
    static func text(_ value: some Encodable) -> String {
        String(decoding: (try? sortedEncoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// `value` as one NDJSON line (or a bare object).
    static func line(_ value: some Encodable, newline: Bool = true) -> ByteBuffer {
        var out = ByteBuffer(bytes: data(value))
        if newline { out.writeInteger(UInt8(ascii: "\n")) }
        return out
    }

    /// A JSON document decoded as `T`; nil when it is not one.
    static func decode<T: Decodable>(_ type: T.Type, from bytes: some Sequence<UInt8>) -> T? {
        try? decoder.decode(T.self, from: Data(bytes))
    }
}
