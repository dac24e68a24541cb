import Foundation
import Hummingbird
import NIOCore
import Serving
import NIOHTTP1
import Runtime

/// The Anthropic Messages API: `POST /v1/messages` (streamed or not: text, system, images,
/// tools, thinking, …) and `POST /v1/messages/count_tokens`, answered by llama-server's own
/// implementation through the same scheduler, keys, quotas, ledger and metrics as the OpenAI
/// routes (usage from Anthropic's `usage` fields). Keys come as `x-api-key` or Bearer. Every
/// error, Corral's or llama-server's, takes Anthropic's shape (`ErrorShapeMiddleware` for
/// refusals, `ErrorShape.anthropic` for upstream answers and failures mid-stream).
struct AnthropicRoutes: Sendable {
    let relay: Relay
    let scheduler: Scheduler

    static let messages = "/v1/messages"
    static let countTokens = "/v1/messages/count_tokens"

    func register(on router: Router<GatewayRequestContext>) {
        router.post(RouterPath(Self.messages)) { request, context in
            let (buffer, body) = try await Relay.readJSON(request, context: context)
            let (outgoing, named) = Relay.withDefaultModel(buffer, body, catalog: scheduler.currentCatalog)
            try Self.validate(named, countingOnly: false)
            return try await relay.forwardJSON(
                route: Self.messages, upstreamPath: Self.messages, buffer: outgoing, body: named, injectUsage: false, errorShape: .anthropic,
                request: request, context: context)
        }
        router.post(RouterPath(Self.countTokens)) { request, context in
            let (buffer, body) = try await Relay.readJSON(request, context: context)
            let (outgoing, named) = Relay.withDefaultModel(buffer, body, catalog: scheduler.currentCatalog)
            try Self.validate(named, countingOnly: true)
            // Counting generates nothing, so it reserves and costs no tokens.
            return try await relay.forward(
                route: Self.countTokens, method: .POST, upstreamPath: Self.countTokens, modelName: named["model"] as! String, body: outgoing,
                hideUsage: false, errorShape: .anthropic, request: request, context: context)
        }
    }

    /// The fields the Messages API requires, checked before a model is loaded for a request that
    /// cannot succeed (the SDK's `MessageCreateParams`: `model`, `messages`, `max_tokens`).
    static func validate(_ body: [String: Any], countingOnly: Bool) throws(OpenAIError) {
        guard let model = body["model"] as? String, !model.isEmpty else {
            throw OpenAIError.badRequest(body["model"] == nil ? "model: Field required" : "model: must be a non-empty string", param: "model")
        }
        guard let messages = body["messages"] as? [Any] else {
            throw OpenAIError.badRequest(body["messages"] == nil ? "messages: Field required" : "messages: must be an array", param: "messages")
        }
        for (i, message) in messages.enumerated() {
            guard let m = message as? [String: Any], let role = m["role"] as? String, role == "user" || role == "assistant" else {
                throw OpenAIError.badRequest("messages.\(i).role: must be 'user' or 'assistant'", param: "messages.\(i).role")
            }
            guard m["content"] is String || m["content"] is [Any] else {
                throw OpenAIError.badRequest("messages.\(i).content: must be a string or a list of content blocks", param: "messages.\(i).content")
            }
        }
        if let system = body["system"], !(system is String || system is [Any]) {
            throw OpenAIError.badRequest("system: must be a string or a list of text blocks", param: "system")
        }
        guard !countingOnly else { return }
        guard let maxTokens = body["max_tokens"] else { throw OpenAIError.badRequest("max_tokens: Field required", param: "max_tokens") }
        guard let n = maxTokens as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(), n.doubleValue >= 1 else {
            throw OpenAIError.badRequest("max_tokens: must be an integer, 1 or more", param: "max_tokens")
        }
    }
}
