import Access
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Library
import NIOCore
import NIOHTTP1
import Runtime

/// OpenAI-compatible and llama.cpp-native routes, all routed by the request's model name.
struct OpenAIRoutes: Sendable {
    let relay: Relay
    let scheduler: Scheduler
    let access: AccessControl?
    let metrics: GatewayMetrics
    let profiles: SamplingProfiles

    func register(on router: Router<GatewayRequestContext>) {
        // OpenAI routes: bodies pass through; streaming chat/completions get usage injected.
        for (path, injectUsage) in [
            ("/v1/chat/completions", true), ("/v1/completions", true), ("/v1/embeddings", false),
            ("/v1/responses", false), ("/v1/rerank", false),
            // llama.cpp-native routes, routed by the `model` field.
            ("/completion", false), ("/infill", false), ("/tokenize", false), ("/detokenize", false),
            ("/apply-template", false),
        ] {
            router.post(RouterPath(path)) { request, context in
                let (buffer, body) = try await Relay.readJSON(request, context: context)
                let (outgoing, checked) = try prepare(path: path, buffer: buffer, body: body)
                return try await relay.forwardJSON(
                    route: path, upstreamPath: path, buffer: outgoing, body: checked, injectUsage: injectUsage,
                    request: request, context: context)
            }
        }
        // llama.cpp-native GET routes take the model as a query parameter.
        for path in ["/props", "/slots", "/metrics"] {
            router.get(RouterPath(path)) { request, context in
                if path == "/metrics" && request.uri.queryParameters.get("model") == nil {
                    // Corral's own metrics; a model's llama-server metrics with ?model=NAME.
                    let text = metrics.render(instances: await scheduler.instances(), ledgerPending: GatewayMetrics.ledgerPending?())
                    return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                    body: .init(byteBuffer: ByteBuffer(string: text)))
                }
                guard let model = request.uri.queryParameters.get("model"), !model.isEmpty else {
                    throw OpenAIError.badRequest("add ?model=NAME to choose the model", param: "model")
                }
                return try await relay.forward(
                    route: path, method: .GET, upstreamPath: path, modelName: model, body: nil,
                    hideUsage: false, request: request, context: context)
            }
        }
        router.get("/v1/models") { _, context in
            let catalog = await scheduler.catalog
            var data: [[String: Any]] = []
            for spec in catalog.models where access?.allows(context.caller, model: [spec.id] + spec.aliases) ?? true {
                data.append(Self.modelObject(spec))
                for alias in spec.listedAliases {
                    var object = Self.modelObject(spec)
                    object["id"] = alias
                    data.append(object)
                }
            }
            return jsonResponse(["object": "list", "data": data])
        }
        // Model ids may contain ':' and '/'.
        router.get("/v1/models/**") { _, context in
            let id = context.parameters.getCatchAll().joined(separator: "/")
            guard let spec = await scheduler.catalog.resolve(String(id)) else { throw OpenAIError.modelNotFound(String(id)) }
            guard access?.allows(context.caller, model: [spec.id, String(id)] + spec.aliases) ?? true else {
                throw OpenAIError(AccessError.forbidden("your team may not use model '\(id)'"))
            }
            return jsonResponse(Self.modelObject(spec))
        }
    }

    /// Applies the sampling profile a request names (or its model's default) and checks the
    /// route's required fields; returns the bytes to send and the body they hold. Shared by the
    /// router and the fast lane, so both refuse and rewrite requests alike.
    func prepare(path: String, buffer: ByteBuffer, body: [String: Any]) throws -> (ByteBuffer, [String: Any]) {
        var (buffer, body) = (buffer, body)
        if Self.profiledPaths.contains(path), let named = body["model"] as? String {
            // Sampling profile: `"profile"`, `model@profile`, or the model's default.
            let (model, profile) = profiles.split(named)
            if profile != nil { body["model"] = model }
            let modelDefault = scheduler.currentCatalog.resolve(model)?.profile
            let applied: Bool
            do { applied = try profiles.apply(to: &body, named: profile, modelDefault: modelDefault) } catch { throw OpenAIError(error) }
            if applied || profile != nil {
                buffer = ByteBuffer(bytes: JSON.data(body))
            }
        }
        if path == "/v1/chat/completions" {
            guard let messages = body["messages"] as? [Any] else { throw OpenAIError.badRequest("'messages' must be an array", param: "messages") }
            // llama-server answers 500 for a message without a role; it is the client's mistake.
            if let bad = messages.firstIndex(where: { (($0 as? [String: Any])?["role"] as? String) == nil }) {
                throw OpenAIError.badRequest("messages[\(bad)] must be an object with a string 'role'", param: "messages[\(bad)].role")
            }
        }
        if path == "/v1/embeddings" && body["input"] == nil {
            throw OpenAIError.badRequest("missing required field 'input'", param: "input")
        }
        return (buffer, body)
    }

    static let profiledPaths: Set<String> = ["/v1/chat/completions", "/v1/completions", "/completion", "/v1/responses"]

    static func modelObject(_ spec: ModelSpec) -> [String: Any] {
        var meta: [String: Any] = ["source": spec.source, "aliases": spec.aliases]
        if let f = spec.facts {
            meta["architecture"] = f.architecture
            meta["parameters"] = f.parameterCount
            meta["quantization"] = f.quantization
            meta["context_length"] = f.contextLength ?? 0
            meta["capabilities"] = f.capabilities.names
        }
        if let size = spec.fileSize { meta["size"] = size }
        return ["id": spec.id, "object": "model", "created": 0, "owned_by": "corral", "meta": meta]
    }
}

/// A JSON response from a dictionary.
func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: JSON.encode(object))))
}
