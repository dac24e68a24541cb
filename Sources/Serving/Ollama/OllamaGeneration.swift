import Access
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Jobs
import Library
import NIOCore
import NIOHTTP1
import Runtime

/// What `/api/chat` and `/api/generate` answer: one object (a whole answer, or the answer to a
/// load or unload), or an NDJSON stream the HTTP layer writes out.
public enum OllamaAnswer: Sendable {
    case whole(OllamaChunk)
    case stream(OllamaStream)
}

/// A streamed Ollama answer: llama-server's events translated as they arrive through the response
/// pump, after a heartbeat chunk each second while the model loads.
public struct OllamaStream: Sendable {
    enum Source: Sendable {
        case opened(UpstreamExchange)
        /// The model is loading: the exchange opens in the background.
        case loading(Outcome<Result<UpstreamExchange, ServingError>>)
    }
    let source: Source
    let relay: Relay
    /// The model name as the client sent it.
    let name: String
    let shape: OllamaResponseBuilder.Shape
    let kind: UpstreamPlan.Kind
    let arrival: ContinuousClock.Instant

    /// Writes the stream: `write` returns false once the client is gone; `end` ends the response
    /// (called only while the client is still there). The request is settled before this returns.
    public func send(write: (ByteBuffer) async -> Bool, end: () async -> Void) async {
        let exchange: UpstreamExchange
        switch source {
        case .opened(let opened): exchange = opened
        case .loading(let opening):
            // An empty partial answer every second (what any Ollama client appends as nothing)
            // until the instance answers; a failure is the stream's error line.
            var outcome = await opening.wait(upTo: .zero)
            while outcome == nil {
                guard await write(OllamaJSON.line(OllamaChunk(shape: shape, model: name, text: ""))) else {
                    await relay.abandon(opening)
                    return
                }
                outcome = await opening.wait(upTo: Relay.heartbeatInterval)
            }
            switch outcome! {
            case .failure(let error):
                _ = await write(OllamaFailure(error).line)
                await end()
                return
            case .success(let opened):
                let status = Int(opened.response.status.code)
                guard status == 200 else {
                    let message = await OllamaServing.settleRefusal(opened, status: status, relay: relay)
                    _ = await write(OllamaFailure(status: 500, message ?? "model '\(name)' answered \(status)").line)
                    await end()
                    return
                }
                exchange = opened
            }
        }
        let load = exchange.lease.queueDuration + exchange.lease.loadDuration
        var reader = OllamaStreamReader(builder: OllamaResponseBuilder(shape: shape, kind: kind, model: name), arrival: arrival, load: load)
        await relay.pump(exchange, status: 200, reader: &reader, write: write, end: end)
    }
}

extension OllamaServing {
    /// `/api/chat` and `/api/generate`: translated into one llama-server request that always
    /// streams; a non-streamed answer is the same stream gathered. An empty prompt (or no
    /// messages) loads the model; with `keep_alive: 0` it unloads it.
    public func generate(_ body: OllamaBody, shape: OllamaResponseBuilder.Shape, headers: HTTPFields, caller: Caller) async throws(OllamaFailure) -> OllamaAnswer {
        let (name, profile) = profiles.split(try OllamaRequests.modelName(body))
        let route = shape == .chat ? "/api/chat" : "/api/generate"
        let spec = try resolve(name, route: route, caller: caller)
        let arrival = ContinuousClock.now
        let stream = try OllamaRequests.wantsStream(body)
        let isEmpty: Bool
        switch shape {
        case .chat:
            switch body["messages"] {
            case nil, .null?: isEmpty = true
            case .array(let messages)?: isEmpty = messages.isEmpty
            default: throw .badRequest("messages must be a list")
            }
        case .generate:
            let prompt = try OllamaRequests.optionalString(body, "prompt") ?? ""
            let suffix = try OllamaRequests.optionalString(body, "suffix") ?? ""
            isEmpty = prompt.isEmpty && suffix.isEmpty && (body["images"]?.arrayValue ?? []).isEmpty
        }
        if isEmpty {
            try checkAccess(caller, to: spec, as: name)
            return .whole(try await loadOrUnload(body, spec: spec, name: name, shape: shape, arrival: arrival))
        }
        var plan = shape == .chat ? try OllamaRequests.chat(body, model: spec.id) : try OllamaRequests.generate(body, model: spec.id)
        try applyProfile(body["profile"], named: profile, to: &plan.body, spec: spec)
        OllamaModelDefaults.apply(spec, to: &plan.body)
        let relay = self.relay
        let (upstreamPath, upstreamBody, tokens, keepAlive, loadOptions) = (
            plan.path, ByteBuffer(bytes: OllamaJSON.data(plan.body)), TokenEstimate(upstream: plan.body), plan.keepAlive, plan.load
        )
        // Resolved above: the relay uses the same spec.
        let model = RequestedModel(name: spec.id, spec: spec)
        let open = { @Sendable () async throws(ServingError) -> UpstreamExchange in
            try await relay.open(
                route: route, method: .POST, upstreamPath: upstreamPath, model: model, body: upstreamBody,
                headers: headers, caller: caller, tokens: tokens, keepAlive: keepAlive, load: loadOptions)
        }
        let exchange: UpstreamExchange
        if stream, relay.pendingLoad(model) != nil {
            // The model must load first: answered as usual if it is there within the grace,
            // else the stream opens now and stays alive while it loads.
            let opening = Relay.opening(open)
            switch await opening.wait(upTo: Relay.progressGrace) {
            case .success(let opened)?: exchange = opened
            case .failure(let error)?: throw OllamaFailure(error)
            case nil: return .stream(OllamaStream(source: .loading(opening), relay: relay, name: name, shape: shape, kind: plan.kind, arrival: arrival))
            }
        } else {
            do { exchange = try await open() } catch { throw OllamaFailure(error) }
        }
        let status = Int(exchange.response.status.code)
        guard status == 200 else {
            // llama-server refused (bad parameters, prompt too long …): its message, Ollama's shape.
            let message = await Self.settleRefusal(exchange, status: status, relay: relay)
            throw OllamaFailure(status: status, message ?? "model '\(name)' answered \(status)")
        }
        guard !stream else {
            return .stream(OllamaStream(source: .opened(exchange), relay: relay, name: name, shape: shape, kind: plan.kind, arrival: arrival))
        }
        let load = exchange.lease.queueDuration + exchange.lease.loadDuration
        var builder = OllamaResponseBuilder(shape: shape, kind: plan.kind, model: name)
        let whole: WholeAnswer
        do { whole = try await relay.readWhole(exchange) } catch { throw OllamaFailure(status: error.status, error.message) }
        var events = SSEEvents()
        for payload in events.feed(whole.body) + events.finish() { _ = builder.feed(payload) }
        if let message = builder.upstreamError {
            await relay.finish(exchange, status: 500, errorKind: ServingError.Code.upstreamError.rawValue, firstByte: whole.firstByte)
            throw OllamaFailure(status: 500, message)
        }
        let answer = builder.final(whole: true, total: .now - arrival, load: load)
        await relay.finish(exchange, status: 200, firstByte: whole.firstByte, usage: builder.reported)
        return .whole(answer)
    }

    /// The sampling profile a request names (`"profile"`, else `model@profile`), or its model's
    /// default: its fields that the upstream body does not set itself. An unknown name is a 400.
    func applyProfile(_ field: JobJSON?, named: String?, to body: inout [String: JobJSON], spec: ModelSpec) throws(OllamaFailure) {
        var name = named
        switch field {
        case nil, .null?: break
        case .string(let s)?: name = s
        default: throw .badRequest("profile must be a string")
        }
        let request = body
        do {
            for (key, value) in try profiles.fields(named: name, modelDefault: spec.profile, requestSets: { request[$0] != nil }) {
                body[key] = JobJSON(sampling: value)
            }
        } catch {
            switch error {
            case .badRequest(let message, _), .storage(let message): throw .badRequest(message)
            case .modelNotFound(let model): throw .modelNotFound(model)
            }
        }
    }

    /// Empty prompt: load the model (`done_reason: load`), or unload it with `keep_alive: 0`.
    func loadOrUnload(_ body: OllamaBody, spec: ModelSpec, name: String, shape: OllamaResponseBuilder.Shape, arrival: ContinuousClock.Instant) async throws(OllamaFailure) -> OllamaChunk {
        let keepAlive = try OllamaValues.keepAlive(body["keep_alive"])
        var answer = OllamaChunk(shape: shape, model: name, text: "", done: true)
        if keepAlive == .zero {
            do { try await scheduler.unload(spec.id) } catch { throw OllamaFailure(ServingError(error)) }
            answer.doneReason = "unload"
            return answer
        }
        let load = try OllamaRequests.options(body["options"]).load
        do {
            let lease = try await scheduler.acquire(spec.id, keepAlive: keepAlive, load: load)
            await scheduler.release(lease)
        } catch {
            throw OllamaFailure(ServingError(error))
        }
        answer.doneReason = "load"
        answer.totalDuration = OllamaValues.nanoseconds(.now - arrival)
        answer.loadDuration = OllamaValues.nanoseconds(.now - arrival)
        return answer
    }

    /// Reads an upstream's error answer whole and settles it; the message it carries, if any.
    static func settleRefusal(_ exchange: UpstreamExchange, status: Int, relay: Relay) async -> String? {
        let answer: WholeAnswer
        do { answer = try await relay.readWhole(exchange, keepingUpTo: 1 << 20) } catch { return nil }
        await relay.finish(exchange, status: status, errorKind: Relay.upstreamErrorKind(HTTPResponse.Status(code: status)))
        return upstreamMessage(answer.body)
    }

    /// The message in an upstream error body (`{"error":{"message":…}}` or `{"error":"…"}`).
    static func upstreamMessage(_ bytes: ByteBuffer) -> String? {
        guard let error = OllamaJSON.decode(JobJSON.self, from: bytes.readableBytesView)?["error"] else { return nil }
        if case .object(let e) = error { return e["message"]?.stringValue }
        return error.stringValue
    }
}
