import Access
import Foundation

/// An upper bound on the tokens a request may use, reserved against the caller's limits at
/// admission and replaced by the real usage at the end.
///
/// The prompt bound is the UTF-8 byte count of every text field plus a per-message allowance
/// for template tokens: with byte-fallback tokenizers a token is never shorter than a byte, so
/// the bound holds for any text without asking the model's tokenizer (no extra round trip).
public struct TokenEstimate: Sendable, Equatable {
    public var prompt: Int
    /// The output limit the request sets; nil means "up to the context".
    public var output: Int?

    public init(prompt: Int, output: Int?) {
        self.prompt = prompt
        self.output = output
    }

    /// Template tokens allowed per message (role markers, separators).
    static let perMessage = 8

    /// The estimate for an OpenAI-shaped (or llama.cpp-native) request body.
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
        for key in ["prompt", "input", "input_prefix", "input_suffix", "content", "query", "documents"] { text(body[key]) }
        if let tools = body["tools"] { bytes += JSON.data(tools).count }
        prompt = bytes + messages * Self.perMessage + 16
        let limit = ["max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens"].lazy.compactMap { body[$0] as? Int }.first { $0 >= 0 }
        let embeddingLike = body["input"] != nil && body["messages"] == nil && body["prompt"] == nil
        output = embeddingLike ? 0 : limit
    }

    /// Tokens to reserve: prompt plus output, the output capped by the context.
    func reservation(context: Int) -> Int { prompt + min(output ?? context, context) }
}

extension AccessError {
    /// The ledger's `errorKind` for a refusal.
    var kind: String {
        switch self {
        case .unauthenticated: "unauthenticated"
        case .forbidden: "model_not_allowed"
        case .limited: "rate_limited"
        case .invalid: "over_limit"
        case .notFound: "not_found"
        case .conflict: "conflict"
        }
    }
}
