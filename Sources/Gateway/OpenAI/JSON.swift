import Foundation

/// JSON null for dictionaries built by hand.
enum NSNullish { static let null = NSNull() }

/// Small helpers around JSONSerialization: request bodies are inspected as dictionaries so
/// unknown fields pass through to llama-server untouched.
enum JSON {
    static func encode(_ object: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func data(_ object: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    /// Parses a request body that must be a JSON object.
    static func object(_ bytes: Data) throws(OpenAIError) -> [String: Any] {
        guard !bytes.isEmpty else { throw .badRequest("request body is empty; expected a JSON object") }
        let value: Any
        do { value = try JSONSerialization.jsonObject(with: bytes) } catch {
            throw .badRequest("request body is not valid JSON")
        }
        guard let object = value as? [String: Any] else { throw .badRequest("request body must be a JSON object") }
        return object
    }
}
