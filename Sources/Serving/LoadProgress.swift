import Foundation
import HTTPTypes
import NIOCore
import Runtime

/// How a request that waits for its model to load is kept informed.
public enum ProgressStyle: Sendable {
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
    public static let progressGrace: Duration = .milliseconds(300)
    /// Time between heartbeats while the request waits.
    public static let heartbeatInterval: Duration = .seconds(1)

    /// The header a non-streaming request asks for load progress with.
    public static let progressHeader = HTTPField.Name("X-Corral-Progress")!

    /// Whether a request would hear of a load it waits for: streams always; a non-streaming
    /// request only when it asks with `X-Corral-Progress: true`. (Checked before any lookup, so
    /// other requests pay nothing.)
    public static func hearsOfLoads(streaming: Bool, _ headers: HTTPFields) -> Bool {
        if streaming { return true }
        let asked = headers[progressHeader]?.lowercased()
        return asked == "true" || asked == "1"
    }

    /// The model a request for `model` would wait on to load (a local model without a ready
    /// instance), nil when it would not wait for a load.
    public func pendingLoad(_ model: RequestedModel) -> ModelSpec? {
        guard let spec = model.spec, case .local = spec.backend, !scheduler.isReady(spec.id) else { return nil }
        return spec
    }

    /// How a request that waits for `spec`'s load hears of it: comments on a stream (reasoning
    /// deltas for chat on a model configured so), the wrapped answer otherwise.
    public static func progressStyle(streaming: Bool, spec: ModelSpec, route: String) -> ProgressStyle {
        guard streaming else { return .wrappedAnswer }
        let chat = route == "/v1/chat/completions" || route == "/chat/completions"
        return chat && spec.progressAsReasoning ? .reasoning : .comments
    }

    /// One heartbeat: where the load of `model` stands.
    public func heartbeat(_ model: String, style: ProgressStyle) -> ByteBuffer {
        let text = scheduler.loadProgress(model).map { "loading \(model) \(Int(($0 * 100).rounded()))%" } ?? "waiting for \(model)"
        switch style {
        case .comments, .wrappedAnswer:
            return ByteBuffer(string: ": \(text)\n\n")
        case .reasoning:
            let chunk = ReasoningChunk(created: Int(Date().timeIntervalSince1970), model: model, text: text + "\n")
            return ByteBuffer(string: "data: \(chunk.json)\n\n")
        }
    }

    /// Opens an exchange in the background (it may wait for a load); the caller waits on the
    /// outcome a heartbeat at a time.
    public static func opening(_ open: @escaping @Sendable () async throws(ServingError) -> UpstreamExchange) -> Outcome<Result<UpstreamExchange, ServingError>> {
        let outcome = Outcome<Result<UpstreamExchange, ServingError>>()
        Task {
            do throws(ServingError) { outcome.set(.success(try await open())) } catch { outcome.set(.failure(error)) }
        }
        return outcome
    }

    /// The client left while its exchange was opening: once the instance answers, stop reading
    /// it (which cancels the generation) and settle the request as disconnected.
    public func abandon(_ opening: Outcome<Result<UpstreamExchange, ServingError>>) async {
        if case .success(let exchange) = await opening.value() {
            var reader = EventStreamReader(hideUsage: true, failureEvent: { _ in "" })
            await pump(exchange, status: 200, reader: &reader, write: { _ in false }, end: {})
        }
    }
}

/// The chat chunk that carries a heartbeat as `reasoning_content` (``ProgressStyle/reasoning``).
struct ReasoningChunk: Encodable {
    struct Choice: Encodable {
        struct Delta: Encodable {
            var role = "assistant"
            var reasoning_content: String
        }
        var index = 0
        var delta: Delta
        /// Always null while loading; written out, as OpenAI's chunks do.
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(index, forKey: .index)
            try container.encode(delta, forKey: .delta)
            try container.encodeNil(forKey: .finish_reason)
        }
        enum CodingKeys: String, CodingKey { case index, delta, finish_reason }
    }
    var id = "corral-progress"
    var object = "chat.completion.chunk"
    var created: Int
    var model: String
    var choices: [Choice]

    init(created: Int, model: String, text: String) {
        self.created = created
        self.model = model
        choices = [Choice(delta: Choice.Delta(reasoning_content: text))]
    }

    /// Compact JSON with sorted keys, as the rest of Corral's own chunks.
    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}
