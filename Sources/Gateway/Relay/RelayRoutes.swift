import Access
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Runtime
import Serving

/// The serving path as the HTTP layer calls it (routes that only read a JSON body use
/// `Relay.readJSON` without importing Serving).
typealias Relay = Serving.Relay

/// Which API's shape errors take once an answer is under way: an upstream's error body and a
/// failure in the middle of a stream. (Refusals before that are thrown and shaped by
/// `ErrorShapeMiddleware`.)
public enum ErrorShape: Sendable {
    /// Passed through as the upstream wrote it; a failure mid-stream is an OpenAI error event.
    case openAI
    /// Anthropic's `{"type":"error","error":{…}}`; mid-stream an `event: error`.
    case anthropic

    /// How a failure mid-stream ends an event stream in this shape (a function that captures
    /// nothing, so handing it to the pump costs no allocation).
    var streamFailure: @Sendable (ServingError) -> String {
        switch self {
        case .openAI: Self.openAIStreamFailure
        case .anthropic: Self.anthropicStreamFailure
        }
    }

    static let openAIStreamFailure: @Sendable (ServingError) -> String = { "data: " + OpenAIError($0).jsonBody + "\n\n" }
    static let anthropicStreamFailure: @Sendable (ServingError) -> String = { AnthropicError(OpenAIError($0)).event }

    /// A failure as the `event: error` that ends a stream of heartbeats in this shape.
    func errorEvent(_ error: OpenAIError) -> String {
        switch self {
        case .openAI: "event: error\ndata: \(error.jsonBody)\n\n"
        case .anthropic: AnthropicError(error).event
        }
    }
}

extension AnswerUsage {
    /// The usage and timings of an answer the HTTP layer parsed whole (the Ollama translators,
    /// the jobs' answers).
    init(usage: [String: Any]?, timings: [String: Any]?) {
        self.init(usage: usage.map(NumericObject.init(json:)), timings: timings.map(NumericObject.init(json:)))
    }
}

extension NumericObject {
    /// The numbers and nested objects of a parsed JSON object.
    init(json object: [String: Any]) {
        self.init()
        for (key, value) in object {
            if let nested = value as? [String: Any] {
                objects[key] = NumericObject(json: nested)
            } else if let number = value as? NSNumber, !isJSONBool(number) {
                numbers[key] = number.doubleValue
            }
        }
    }
}

extension Relay {
    /// Reads and parses a JSON body, mapping size and syntax problems to OpenAI errors.
    public static func readJSON(_ request: Request, context: GatewayRequestContext) async throws -> (ByteBuffer, [String: Any]) {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: context.maxUploadSize)
        } catch {
            throw OpenAIError(.contentTooLarge, "request body exceeds \(context.maxUploadSize) bytes", code: "request_too_large")
        }
        let object = try JSON.object(Data(buffer.readableBytesView))
        return (buffer, object)
    }

    /// A body that names no model, with the default model named in it (the bytes are rewritten
    /// only then); unchanged when it names one or when there is no default.
    static func withDefaultModel(_ buffer: ByteBuffer, _ body: [String: Any], catalog: ModelCatalog) -> (ByteBuffer, [String: Any]) {
        guard body["model"] == nil || body["model"] is NSNull, let name = catalog.defaultModel else { return (buffer, body) }
        var named = body
        named["model"] = name
        return (ByteBuffer(bytes: JSON.data(named)), named)
    }

    /// Checks a JSON POST's `model`, `stream` and token-limit fields and, for OpenAI streaming
    /// routes (`injectUsage`), asks upstream for the usage chunk.
    static func check(buffer: ByteBuffer, body: [String: Any], injectUsage: Bool) throws(OpenAIError) -> CheckedPost {
        guard let model = body["model"] else { throw OpenAIError.badRequest("missing required field 'model' (there is no default model)", param: "model") }
        guard let modelName = model as? String, !modelName.isEmpty else {
            throw OpenAIError.badRequest("'model' must be a non-empty string", param: "model")
        }
        if let s = body["stream"], !(s is NSNull), !isJSONBool(s) {
            throw OpenAIError.badRequest("'stream' must be a boolean", param: "stream")
        }
        for key in ["max_tokens", "max_completion_tokens", "n_predict"] {
            if let v = body[key], !(v is NSNull) {
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(), n.doubleValue >= -1 else {
                    throw OpenAIError.badRequest("'\(key)' must be an integer, -1 or more", param: key)
                }
            }
        }
        let streaming = (body["stream"] as? Bool) == true
        var outgoing = buffer
        var hideUsage = false
        if injectUsage && streaming {
            let options = body["stream_options"] as? [String: Any] ?? [:]
            if (options["include_usage"] as? Bool) != true {
                if body["stream_options"] == nil, let spliced = Self.askingForUsage(buffer) {
                    outgoing = spliced
                } else {
                    var modified = body
                    var o = options
                    o["include_usage"] = true
                    modified["stream_options"] = o
                    outgoing = ByteBuffer(bytes: JSON.data(modified))
                }
                hideUsage = true
            }
        }
        return CheckedPost(modelName: modelName, streaming: streaming, outgoing: outgoing, hideUsage: hideUsage, tokens: TokenEstimate(body))
    }

    /// Forwards a JSON POST for the model named in its body.
    /// - Parameters:
    ///   - model: the body's model, when the caller has looked it up already.
    ///   - injectUsage: for OpenAI streaming routes, ask upstream for the usage chunk.
    func forwardJSON(
        route: String, upstreamPath: String, buffer: ByteBuffer, body: [String: Any], model requested: RequestedModel? = nil,
        injectUsage: Bool, errorShape: ErrorShape = .openAI, request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let post = try Self.check(buffer: buffer, body: body, injectUsage: injectUsage)
        let model = requested ?? resolve(post.modelName)
        if Self.hearsOfLoads(streaming: post.streaming, request.headers), let spec = pendingLoad(model) {
            return try await forwardWaitingForLoad(
                post, model: model, loading: spec.id, route: route, upstreamPath: upstreamPath, style: Self.progressStyle(streaming: post.streaming, spec: spec, route: route),
                errorShape: errorShape, request: request, context: context)
        }
        let exchange = try await openForClient(
            route: route, method: .POST, upstreamPath: upstreamPath, model: model, body: post.outgoing, headers: request.headers,
            caller: context.caller, tokens: post.tokens)
        return try await relayResponse(exchange, hideUsage: post.hideUsage, errorShape: errorShape)
    }

    /// Forwards any request for `modelName` to its instance.
    func forward(
        route: String, method: HTTPMethod, upstreamPath: String, modelName: String, body: ByteBuffer?,
        hideUsage: Bool, errorShape: ErrorShape = .openAI, contentType: String = "application/json", request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let exchange = try await openForClient(
            route: route, method: method, upstreamPath: upstreamPath, model: resolve(modelName), body: body, headers: request.headers,
            caller: context.caller, tokens: TokenEstimate(prompt: 0, output: 0), contentType: contentType)
        return try await relayResponse(exchange, hideUsage: hideUsage, errorShape: errorShape)
    }

    /// ``Relay/open`` with its refusals as OpenAI errors (the other shapes are made from them).
    func openForClient(
        route: String, method: HTTPMethod, upstreamPath: String, model: RequestedModel, body: ByteBuffer?, headers: HTTPFields,
        caller: Caller, tokens: TokenEstimate, contentType: String = "application/json"
    ) async throws(OpenAIError) -> UpstreamExchange {
        do {
            return try await open(
                route: route, method: method, upstreamPath: upstreamPath, model: model, body: body, headers: headers,
                caller: caller, tokens: tokens, contentType: contentType)
        } catch {
            throw OpenAIError(error)
        }
    }

    /// The OpenAI-route response: the upstream's status, headers and body, streamed through.
    func relayResponse(_ exchange: UpstreamExchange, hideUsage: Bool, errorShape: ErrorShape = .openAI) async throws -> Response {
        let (status, head, isSSE) = Self.responseHead(exchange)
        var headers = head

        // Small complete bodies (non-streamed answers, embeddings, tokenize) are read whole and
        // sent in one write: fewer event-loop hops than streaming chunk by chunk, and the lease
        // is released as soon as upstream is done.
        if !isSSE, exchange.gatheredLength != nil {
            let answer: WholeAnswer
            do { answer = try await readWhole(exchange) } catch { throw OpenAIError(error) }
            // Releasing the slot and accounting happen off the response path: the client does not
            // wait for the scheduler hop or for its body to be parsed for usage. They run on the
            // connection's event loop once the response has been written, which costs less than
            // waking a thread of the global pool for them.
            let relay = self
            Task(executorPreference: EventLoopExecutor.current ?? globalConcurrentExecutor) {
                await relay.settleAnswer(exchange, status: Int(status.code), answer: answer)
            }
            if errorShape == .anthropic && status.code >= 400 {
                let error = AnthropicError.reshaping(status: status.code, body: answer.body)
                let body = ByteBuffer(string: error.body)
                headers[.contentType] = "application/json"
                headers[.contentLength] = String(body.readableBytes)
                return Response(status: status, headers: headers, body: .init(byteBuffer: body))
            }
            return Response(status: status, headers: headers, body: .init(byteBuffer: answer.body))
        }
        let relay = self
        return Response(
            status: status, headers: headers,
            body: ResponseBody { writer in
                await relay.passBody(
                    exchange, status: status, isSSE: isSSE, hideUsage: hideUsage, errorShape: errorShape,
                    write: { chunk in
                        do { try await writer.write(chunk) } catch { return false }
                        return true
                    },
                    end: { try? await writer.finish(nil) })
            })
    }

    /// Passes an answer's body on through the response pump: an event stream through the usage
    /// filter (a failure mid-stream becomes an error event in `errorShape`), anything else as it
    /// is. See ``Relay/pump(_:status:reader:write:end:)``.
    @discardableResult
    func passBody(
        _ exchange: UpstreamExchange, status: HTTPResponse.Status, isSSE: Bool, hideUsage: Bool, errorShape: ErrorShape = .openAI,
        write: (ByteBuffer) async -> Bool, end: () async -> Void
    ) async -> Bool {
        if isSSE {
            var reader = EventStreamReader(hideUsage: hideUsage, failureEvent: errorShape.streamFailure)
            return await pump(exchange, status: Int(status.code), reader: &reader, write: write, end: end)
        }
        var reader = PassThroughReader()
        return await pump(exchange, status: Int(status.code), reader: &reader, write: write, end: end)
    }

    /// Forwards a JSON POST whose model must load first: answered as usual when the instance is
    /// there within ``progressGrace``; otherwise the response is opened at once as an event
    /// stream that carries a heartbeat every second until the upstream answers, then the answer
    /// (or the failure as an error event). Nothing is lost: the request is admitted, recorded and
    /// settled exactly as on the usual path, and a client that leaves while waiting releases its
    /// slot as soon as the instance is there.
    func forwardWaitingForLoad(
        _ post: CheckedPost, model: RequestedModel, loading modelID: String, route: String, upstreamPath: String, style: ProgressStyle, errorShape: ErrorShape,
        request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let caller = context.caller
        let headers = request.headers
        let relay = self
        let opening = Self.opening { () async throws(ServingError) -> UpstreamExchange in
            try await relay.open(
                route: route, method: .POST, upstreamPath: upstreamPath, model: model, body: post.outgoing, headers: headers,
                caller: caller, tokens: post.tokens)
        }
        if let quick = await opening.wait(upTo: Self.progressGrace) {
            switch quick {
            case .success(let exchange): return try await relayResponse(exchange, hideUsage: post.hideUsage, errorShape: errorShape)
            case .failure(let error): throw OpenAIError(error)
            }
        }
        var head: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        head[HTTPField.Name("X-Accel-Buffering")!] = "no"
        return Response(status: .ok, headers: head, body: ResponseBody { writer in
            var outcome: Result<UpstreamExchange, ServingError>?
            var clientGone = false
            while outcome == nil {
                do { try await writer.write(relay.heartbeat(modelID, style: style)) } catch {
                    clientGone = true
                    break
                }
                outcome = await opening.wait(upTo: Self.heartbeatInterval)
            }
            if clientGone {
                await relay.abandon(opening)
                return
            }
            switch outcome! {
            case .failure(let error):
                try? await writer.write(ByteBuffer(string: errorShape.errorEvent(OpenAIError(error))))
            case .success(let exchange):
                let (status, _, isSSE) = Self.responseHead(exchange)
                if style == .wrappedAnswer || !isSSE || status.code >= 400 {
                    await relay.sendWhole(exchange, status: status, style: style, shape: errorShape, writer: &writer)
                } else {
                    await relay.passBody(
                        exchange, status: status, isSSE: true, hideUsage: post.hideUsage, errorShape: errorShape,
                        write: { chunk in
                            do { try await writer.write(chunk) } catch { return false }
                            return true
                        },
                        end: {})
                }
            }
            try? await writer.finish(nil)
        })
    }

    /// An answer that is not an event stream, sent after heartbeats: `event: result` with the
    /// body when the client asked for a wrapped answer and it succeeded, else an error event.
    private func sendWhole(
        _ exchange: UpstreamExchange, status: HTTPResponse.Status, style: ProgressStyle, shape: ErrorShape, writer: inout any ResponseBodyWriter
    ) async {
        let event: String
        do {
            let answer = try await readWhole(exchange, keepingUpTo: 64 << 20)
            await settleAnswer(exchange, status: Int(status.code), answer: answer)
            let body = answer.body
            if status.code >= 400 {
                switch shape {
                case .openAI: event = "event: error\ndata: \(String(buffer: body))\n\n"
                case .anthropic: event = AnthropicError.reshaping(status: status.code, body: body).event
                }
            } else {
                event = "event: result\ndata: \(String(buffer: body).replacingOccurrences(of: "\n", with: ""))\n\n"
            }
        } catch {
            event = shape.errorEvent(OpenAIError(error))
        }
        try? await writer.write(ByteBuffer(string: event))
    }
}
