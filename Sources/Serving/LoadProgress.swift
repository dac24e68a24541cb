import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Runtime
import Synchronization

/// How a request that waits for its model to load is kept informed.
enum ProgressStyle: Sendable {
    /// SSE comments (`: loading demo 40%`), which every SSE parser skips and every proxy passes.
    case comments
    /// OpenAI chat chunks whose delta is `reasoning_content` (for chat UIs that show it).
    case reasoning
    /// The answer of a non-streaming request that asked with `X-Corral-Progress`: comments, then
    /// the whole answer as one `event: result`.
    case wrappedAnswer
}

extension Relay {
    /// How long a waiting request is answered as usual (the status still open) before its
    /// response is committed to an event stream with heartbeats.
    static let progressGrace: Duration = .milliseconds(300)
    /// Time between heartbeats while the request waits.
    static let heartbeatInterval: Duration = .seconds(1)

    /// The header a non-streaming request asks for load progress with.
    static let progressHeader = HTTPField.Name("X-Corral-Progress")!

    /// Whether a request would hear of a load it waits for: streams always; a non-streaming
    /// request only when it asks with `X-Corral-Progress: true`. (Checked before any lookup, so
    /// other requests pay nothing.)
    static func hearsOfLoads(streaming: Bool, _ headers: HTTPFields) -> Bool {
        if streaming { return true }
        let asked = headers[progressHeader]?.lowercased()
        return asked == "true" || asked == "1"
    }

    /// The model a request for `modelName` would wait on to load (a local model without a ready
    /// instance), nil when it would not wait for a load.
    func pendingLoad(_ modelName: String) -> ModelSpec? {
        guard let spec = scheduler.currentCatalog.resolve(modelName), case .local = spec.backend, !scheduler.isReady(spec.id) else { return nil }
        return spec
    }

    /// How a request that waits for `spec`'s load hears of it: comments on a stream (reasoning
    /// deltas for chat on a model configured so), the wrapped answer otherwise.
    static func progressStyle(streaming: Bool, spec: ModelSpec, route: String) -> ProgressStyle {
        guard streaming else { return .wrappedAnswer }
        let chat = route == "/v1/chat/completions" || route == "/chat/completions"
        return chat && spec.progressAsReasoning ? .reasoning : .comments
    }

    /// One heartbeat: where the load of `model` stands.
    func heartbeat(_ model: String, style: ProgressStyle) -> ByteBuffer {
        let text = scheduler.loadProgress(model).map { "loading \(model) \(Int(($0 * 100).rounded()))%" } ?? "waiting for \(model)"
        switch style {
        case .comments, .wrappedAnswer:
            return ByteBuffer(string: ": \(text)\n\n")
        case .reasoning:
            let chunk: [String: Any] = [
                "id": "corral-progress", "object": "chat.completion.chunk", "created": Int(Date().timeIntervalSince1970), "model": model,
                "choices": [["index": 0, "delta": ["role": "assistant", "reasoning_content": text + "\n"], "finish_reason": NSNull()]],
            ]
            return ByteBuffer(string: "data: \(JSON.encode(chunk))\n\n")
        }
    }

    /// Forwards a JSON POST whose model must load first: answered as usual when the instance is
    /// there within ``progressGrace``; otherwise the response is opened at once as an event
    /// stream that carries a heartbeat every second until the upstream answers, then the answer
    /// (or the failure as an error event). Nothing is lost: the request is admitted, recorded and
    /// settled exactly as on the usual path, and a client that leaves while waiting releases its
    /// slot as soon as the instance is there.
    func forwardWaitingForLoad(
        _ post: CheckedPost, model: String, route: String, upstreamPath: String, style: ProgressStyle, errorShape: ErrorShape,
        request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let caller = context.caller
        let headers = request.headers
        let relay = self
        let opening = Self.opening { () async throws(OpenAIError) -> UpstreamExchange in
            try await relay.open(
                route: route, method: .POST, upstreamPath: upstreamPath, modelName: post.modelName, body: post.outgoing, headers: headers,
                caller: caller, tokens: post.tokens)
        }
        if let quick = await opening.wait(upTo: Self.progressGrace) {
            switch quick {
            case .success(let exchange): return try await relayResponse(exchange, hideUsage: post.hideUsage, errorShape: errorShape)
            case .failure(let error): throw error
            }
        }
        var head: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        head[HTTPField.Name("X-Accel-Buffering")!] = "no"
        return Response(status: .ok, headers: head, body: ResponseBody { writer in
            var outcome: Result<UpstreamExchange, OpenAIError>?
            var clientGone = false
            while outcome == nil {
                do { try await writer.write(relay.heartbeat(model, style: style)) } catch {
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
                try? await writer.write(ByteBuffer(string: Self.errorEvent(error, shape: errorShape)))
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

    /// Opens an exchange in the background (it may wait for a load); the caller waits on the
    /// outcome a heartbeat at a time.
    static func opening(_ open: @escaping @Sendable () async throws(OpenAIError) -> UpstreamExchange) -> Outcome<Result<UpstreamExchange, OpenAIError>> {
        let outcome = Outcome<Result<UpstreamExchange, OpenAIError>>()
        Task {
            do throws(OpenAIError) { outcome.set(.success(try await open())) } catch { outcome.set(.failure(error)) }
        }
        return outcome
    }

    /// The client left while its exchange was opening: once the instance answers, stop reading
    /// it (which cancels the generation) and settle the request as disconnected.
    func abandon(_ opening: Outcome<Result<UpstreamExchange, OpenAIError>>) async {
        if case .success(let exchange) = await opening.value() {
            await passBody(exchange, status: .ok, isSSE: true, hideUsage: true, write: { _ in false }, end: {})
        }
    }

    /// An answer that is not an event stream, sent after heartbeats: `event: result` with the
    /// body when the client asked for a wrapped answer and it succeeded, else an error event.
    private func sendWhole(
        _ exchange: UpstreamExchange, status: HTTPResponse.Status, style: ProgressStyle, shape: ErrorShape, writer: inout any ResponseBodyWriter
    ) async {
        var body = ByteBuffer()
        var failure: UpstreamFailure?
        var firstByte: ContinuousClock.Instant?
        do {
            for try await chunk in exchange.response.body where body.readableBytes < 64 << 20 {
                if firstByte == nil { firstByte = .now }
                body.writeImmutableBuffer(chunk)
            }
        } catch {
            failure = await bodyFailure(error, lease: exchange.lease)
        }
        await settleAnswer(exchange, status: status, body: body, firstByte: firstByte, failure: failure)
        let event: String
        if let failure {
            event = Self.errorEvent(failure.openAIError, shape: shape)
        } else if status.code >= 400 {
            switch shape {
            case .openAI: event = "event: error\ndata: \(String(buffer: body))\n\n"
            case .anthropic: event = AnthropicError.reshaping(status: status.code, body: body).event
            }
        } else {
            event = "event: result\ndata: \(String(buffer: body).replacingOccurrences(of: "\n", with: ""))\n\n"
        }
        try? await writer.write(ByteBuffer(string: event))
    }

    /// A failure as the event that ends a stream in `shape`.
    static func errorEvent(_ error: OpenAIError, shape: ErrorShape) -> String {
        switch shape {
        case .openAI: "event: error\ndata: \(error.jsonBody)\n\n"
        case .anthropic: AnthropicError(error).event
        }
    }
}
