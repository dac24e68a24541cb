import Foundation
import Synchronization

/// An upper bound on the tokens a request may use, reserved against the caller's limits at
/// admission and replaced by the real usage at the end.
///
/// The prompt bound is the UTF-8 byte count of every text field, plus a per-message allowance
/// for role markers, plus the literal text of the model's chat template (what a template can add
/// around the messages): with byte-fallback tokenizers a token is never shorter than a byte, so
/// the bound holds even when the markers are plain text, without asking the model's tokenizer
/// (no extra round trip). Real usage replaces it when the request ends.
public struct TokenEstimate: Sendable, Equatable {
    public var prompt: Int
    /// The output limit the request sets; nil means "up to the context".
    public var output: Int?

    public init(prompt: Int, output: Int?) {
        self.prompt = prompt
        self.output = output
    }

    /// Template tokens allowed per message (role markers, separators).
    static let perMessage = 32

    /// The estimate for an OpenAI-shaped, Anthropic-shaped (`system`, content blocks) or
    /// llama.cpp-native request body.
    public init(_ body: [String: Any]) {
        var bytes = 0
        var messages = 0
        func text(_ v: Any?) {
            switch v {
            case let s as String: bytes += s.utf8.count
            case let list as [Any]: for item in list { text(item) }
            case let object as [String: Any]:
                for (key, value) in object where key != "image_url" && key != "type" { text(value) }
                if let image = object["image_url"] { _ = image; bytes += 768 }  // an image: a fixed allowance
            default: break
            }
        }
        if let list = body["messages"] as? [Any] {
            messages = list.count
            text(list)
        }
        for key in ["prompt", "input", "input_prefix", "input_suffix", "content", "query", "documents", "system"] { text(body[key]) }
        if let tools = body["tools"], JSONSerialization.isValidJSONObject(tools) {
            bytes += (try? JSONSerialization.data(withJSONObject: tools))?.count ?? 0
        }
        prompt = bytes + messages * Self.perMessage + 16
        let limit = ["max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens"].lazy.compactMap { body[$0] as? Int }.first { $0 >= 0 }
        let embeddingLike = body["input"] != nil && body["messages"] == nil && body["prompt"] == nil
        output = embeddingLike ? 0 : limit
    }

    /// Tokens to reserve: prompt (plus the template's own text) and output, capped by the context.
    public func reservation(context: Int, templateBytes: Int = 0) -> Int {
        prompt + (prompt > 16 ? templateBytes : 0) + min(output ?? context, context)
    }

    /// Bytes of literal text in a Jinja chat template (outside `{{ }}`, `{% %}` and `{# #}`),
    /// capped: what rendering can add around the messages at most once each.
    public static func literalBytes(ofTemplate template: String?) -> Int {
        guard let template else { return 0 }
        if let known = literalBytesCache.withLock({ $0[template] }) { return known }
        let count = countLiteralBytes(template)
        literalBytesCache.withLock { cache in
            if cache.count > 256 { cache.removeAll() }
            cache[template] = count
        }
        return count
    }

    /// Templates seen so far and their literal byte counts (a handful per process).
    static let literalBytesCache = Mutex<[String: Int]>([:])

    static func countLiteralBytes(_ template: String) -> Int {
        var count = 0
        var rest = Substring(template)
        while let open = rest.range(of: "{") {
            count += rest[..<open.lowerBound].utf8.count
            let after = rest[open.upperBound...]
            guard let kind = after.first, kind == "{" || kind == "%" || kind == "#" else {
                count += 1
                rest = after
                continue
            }
            let close = kind == "{" ? "}}" : String(kind) + "}"
            guard let end = after.range(of: close) else { break }
            // Quoted strings inside tags are emitted text too ('<|im_start|>' + role …).
            for part in after[..<end.lowerBound].split(separator: "'", omittingEmptySubsequences: false).enumerated() where part.offset % 2 == 1 {
                count += part.element.utf8.count
            }
            rest = after[end.upperBound...]
        }
        count += rest.utf8.count
        return min(count, 4096)
    }
}

extension AccessError {
    /// The ledger's `errorKind` for a refusal.
    public var kind: String {
        switch self {
        case .unauthenticated: "unauthenticated"
        case .forbidden: "model_not_allowed"
        case .limited: "rate_limited"
        case .invalid: "over_limit"
        case .badField: "invalid_request"
        case .notFound: "not_found"
        case .conflict: "conflict"
        case .unavailable: "store_unavailable"
        case .unreadable: "policy_unreadable"
        }
    }
}
