import Access
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Library
import NIOCore
import NIOHTTP1
import Runtime
import Serving
import Telemetry

/// OpenAI-compatible and llama.cpp-native routes (every route llama-server serves, at the same
/// paths), all routed by the request's model name, or the default model when it names none.
struct OpenAIRoutes: Sendable {
    let relay: Relay
    let scheduler: Scheduler
    let access: AccessControl?
    let metrics: GatewayMetrics
    let profiles: SamplingProfiles

    /// Every JSON POST route llama-server serves, and whether Corral asks it for the usage chunk
    /// of a stream (the OpenAI chat and completion routes, which only send it when asked).
    static let postRoutes: [(path: String, injectUsage: Bool)] = [
        ("/v1/chat/completions", true), ("/chat/completions", true), ("/v1/completions", true),
        ("/completion", false), ("/completions", false), ("/infill", false),
        ("/v1/responses", false), ("/responses", false),
        ("/v1/chat/completions/input_tokens", false), ("/chat/completions/input_tokens", false),
        ("/v1/responses/input_tokens", false), ("/responses/input_tokens", false),
        ("/v1/embeddings", false), ("/embeddings", false), ("/embedding", false),
        ("/v1/rerank", false), ("/v1/reranking", false), ("/rerank", false), ("/reranking", false),
        ("/tokenize", false), ("/detokenize", false), ("/apply-template", false),
    ]

    func register(on router: Router<GatewayRequestContext>) {
        // Bodies pass through; streaming chat/completions get usage injected.
        for (path, injectUsage) in Self.postRoutes {
            router.post(RouterPath(path)) { request, context in
                let (raw, unnamed) = try await Relay.readJSON(request, context: context)
                let (buffer, body) = Relay.withDefaultModel(raw, unnamed, catalog: scheduler.currentCatalog)
                let post = try prepared(path: path, buffer: buffer, body: body)
                return try await relay.forwardJSON(
                    route: path, upstreamPath: path, buffer: post.buffer, body: post.body, model: post.model, injectUsage: injectUsage,
                    request: request, context: context)
            }
        }
        // llama.cpp-native GET routes take the model as a query parameter (or the default model).
        for path in ["/props", "/slots", "/metrics", "/lora-adapters"] {
            router.get(RouterPath(path)) { request, context in
                if path == "/metrics" && request.uri.queryParameters.get("model") == nil {
                    // Corral's own metrics; a model's llama-server metrics with ?model=NAME.
                    let text = metrics.render(instances: await scheduler.instances(), ledgerPending: GatewayMetrics.ledgerPending?(),
                                                   warmSwap: scheduler.warmSwapCounts.now)
                    return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                    body: .init(byteBuffer: ByteBuffer(string: text)))
                }
                return try await relay.forward(
                    route: path, method: .GET, upstreamPath: path, modelName: try Self.queryModel(request, catalog: scheduler.currentCatalog), body: nil,
                    hideUsage: false, request: request, context: context)
            }
        }
        // Audio transcription takes a multipart upload: routed by its `model` field (or the
        // default model), passed on byte for byte.
        for path in ["/v1/audio/transcriptions", "/audio/transcriptions"] {
            router.post(RouterPath(path)) { request, context in
                let body: ByteBuffer
                do { body = try await request.body.collect(upTo: context.maxUploadSize) } catch {
                    throw OpenAIError(.contentTooLarge, "request body exceeds \(context.maxUploadSize) bytes", code: "request_too_large")
                }
                guard let contentType = request.headers[.contentType], let boundary = Multipart.boundary(contentType) else {
                    throw OpenAIError.badRequest("the body must be multipart/form-data with a file and a model", param: "file")
                }
                let named = Multipart.field("model", in: body, boundary: boundary).flatMap { $0.isEmpty ? nil : $0 }
                guard let model = named ?? scheduler.currentCatalog.defaultModel else {
                    throw OpenAIError.badRequest("missing required field 'model' (there is no default model)", param: "model")
                }
                return try await relay.forward(
                    route: path, method: .POST, upstreamPath: path, modelName: model, body: body, hideUsage: false, contentType: contentType,
                    request: request, context: context)
            }
        }
        // llama-server's operator POSTs (change its defaults, hot-swap LoRA scales); admin token
        // only (`AuthMiddleware`), routed like the GETs.
        for path in ["/props", "/lora-adapters"] {
            router.post(RouterPath(path)) { request, context in
                let body = try await request.body.collect(upTo: context.maxUploadSize)
                return try await relay.forward(
                    route: path, method: .POST, upstreamPath: path, modelName: try Self.queryModel(request, catalog: scheduler.currentCatalog), body: body,
                    hideUsage: false, request: request, context: context)
            }
        }
        for path in ["/v1/models", "/models"] {
            router.get(RouterPath(path)) { _, context in
                let catalog = await scheduler.catalog
                return try Wire.response(catalog.modelList { access?.allows(context.caller, model: [$0.id] + $0.aliases) ?? true })
            }
        }
        // Model ids may contain ':' and '/'.
        router.get("/v1/models/**") { _, context in
            let id = context.parameters.getCatchAll().joined(separator: "/")
            guard let spec = await scheduler.catalog.resolve(String(id)) else { throw OpenAIError.modelNotFound(String(id)) }
            guard access?.allows(context.caller, model: [spec.id, String(id)] + spec.aliases) ?? true else {
                throw OpenAIError(AccessError.forbidden("your team may not use model '\(id)'"))
            }
            return try Wire.response(ModelObject(spec))
        }
    }

    /// A relayed JSON POST made ready: the bytes to send, the body they hold, and the model it
    /// names, resolved once (nil when it names none as a string, which `Relay.check` refuses).
    struct PreparedPost {
        var buffer: ByteBuffer
        var body: [String: Any]
        var model: RequestedModel?
    }

    /// Applies the sampling profile a request names (or its model's default) and checks the
    /// route's required fields; the model is looked up once, in one catalog snapshot, for the
    /// profile, the embedding companion and the relay.
    func prepared(path: String, buffer: ByteBuffer, body: [String: Any]) throws -> PreparedPost {
        var (buffer, body) = (buffer, body)
        var model: RequestedModel?
        if let named = body["model"] as? String {
            let profiled = Self.profiledPaths.contains(path)
            // Sampling profile: `"profile"`, `model@profile`, or the model's default.
            let (name, profile) = profiled ? profiles.split(named) : (named, nil)
            if profile != nil { body["model"] = name }
            model = relay.resolve(name)
            if profiled {
                var applied: Bool
                do { applied = try profiles.apply(to: &body, named: profile, modelDefault: model?.spec?.profile) } catch { throw OpenAIError(error) }
                if let spec = model?.spec, OllamaModelDefaults.apply(spec, to: &body) { applied = true }
                if applied || profile != nil {
                    buffer = ByteBuffer(bytes: JSON.data(body))
                }
            }
        }
        if path == "/v1/chat/completions" || path == "/chat/completions" {
            guard let messages = body["messages"] as? [Any] else { throw OpenAIError.badRequest("'messages' must be an array", param: "messages") }
            // llama-server answers 500 for a message without a role; it is the client's mistake.
            if let bad = messages.firstIndex(where: { (($0 as? [String: Any])?["role"] as? String) == nil }) {
                throw OpenAIError.badRequest("messages[\(bad)] must be an object with a string 'role'", param: "messages[\(bad)].role")
            }
        }
        if path == "/v1/embeddings" && body["input"] == nil {
            throw OpenAIError.badRequest("missing required field 'input'", param: "input")
        }
        if Self.embeddingPaths.contains(path), let companion = model?.spec?.embeddingCompanion {
            // The model's own instance cannot embed: its companion in embedding mode answers.
            body["model"] = companion.id
            model = RequestedModel(name: companion.id, spec: companion)
            buffer = ByteBuffer(bytes: JSON.data(body))
        }
        return PreparedPost(buffer: buffer, body: body, model: model)
    }

    /// ``prepared(path:buffer:body:)``'s bytes and body, for the fast lane (which looks its
    /// model up itself), so the router and the lane refuse and rewrite requests alike.
    func prepare(path: String, buffer: ByteBuffer, body: [String: Any]) throws -> (ByteBuffer, [String: Any]) {
        let post = try prepared(path: path, buffer: buffer, body: body)
        return (post.buffer, post.body)
    }

    static let embeddingPaths: Set<String> = ["/v1/embeddings", "/embeddings", "/embedding"]

    static let profiledPaths: Set<String> = [
        "/v1/chat/completions", "/chat/completions", "/v1/completions", "/completion", "/completions", "/v1/responses", "/responses",
    ]

    /// The model a GET names with `?model=`, else the default model.
    static func queryModel(_ request: Request, catalog: ModelCatalog) throws(OpenAIError) -> String {
        if let model = request.uri.queryParameters.get("model"), !model.isEmpty { return String(model) }
        guard let model = catalog.defaultModel else {
            throw OpenAIError.badRequest("add ?model=NAME to choose the model (there is no default model)", param: "model")
        }
        return model
    }
}

/// A JSON response from a dictionary.
func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: JSON.encode(object))))
}
