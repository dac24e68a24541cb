import Access
import AsyncHTTPClient
import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import Runtime

/// The jobs' ``ModelClient`` over the serving path: each request is admitted under the caller's
/// key, leased from the scheduler (background work behind client requests), recorded in the ledger
/// with its origin's route, and a streamed answer is read through the clients' own streaming path
/// (usage and timings from the stream, the first byte timed, a failure mid-stream an error event).
public struct RelayModelClient: ModelClient {
    let relay: Relay

    public init(relay: Relay) { self.relay = relay }

    public func complete(_ request: ModelRequest) async throws(ModelClientError) -> ModelResponse {
        var request = request
        request.stream = false
        let exchange = try await open(request.path, model: request.model, body: try request.body(), origin: request.origin, tokens: Self.estimate(request))
        return try Self.answer(try await collectAndFinish(exchange))
    }

    public func stream(_ request: ModelRequest, onChunk: @escaping @Sendable (ModelChunk) -> Void) async throws(ModelClientError) -> ModelResponse {
        var request = request
        request.stream = true
        let exchange = try await open(request.path, model: request.model, body: try request.body(), origin: request.origin, tokens: Self.estimate(request))
        let isSSE = exchange.response.headers.first(name: "content-type")?.lowercased().hasPrefix("text/event-stream") == true
        guard exchange.response.status == .ok, isSSE else {
            return try Self.answer(try await collectAndFinish(exchange))
        }
        var stream = ModelStreamReader(onChunk: onChunk)
        var reader = EventStreamReader(hideUsage: false, failureEvent: Self.failureEvent)
        await relay.pump(exchange, status: 200, reader: &reader, write: { bytes in
            stream.feed(bytes)
            return true
        }, end: {})
        return try stream.finish()
    }

    public func applyTemplate(model: String, messages: [ModelMessage], origin: ModelCallOrigin) async throws(ModelClientError) -> String {
        let body = try LlamaServerCalls.applyTemplateBody(messages)
        let exchange = try await open("/apply-template", model: model, body: body, origin: origin, tokens: TokenEstimate(prompt: 0, output: 0))
        return try LlamaServerCalls.prompt(try Self.successful(try await collectAndFinish(exchange)).readableBytesView)
    }

    public func tokenize(model: String, text: String, addSpecial: Bool, origin: ModelCallOrigin) async throws(ModelClientError) -> [Int] {
        let body = try LlamaServerCalls.tokenizeBody(text, addSpecial: addSpecial)
        let exchange = try await open("/tokenize", model: model, body: body, origin: origin, tokens: TokenEstimate(prompt: 0, output: 0))
        return try LlamaServerCalls.tokens(try Self.successful(try await collectAndFinish(exchange)).readableBytesView)
    }

    /// Admits, leases and sends; a refusal (limits, an unknown model, no room) is a failed request.
    private func open(_ path: String, model: String, body: Data, origin: ModelCallOrigin, tokens: TokenEstimate) async throws(ModelClientError) -> UpstreamExchange {
        do {
            return try await relay.open(
                route: origin.route, method: .POST, upstreamPath: path, modelName: model, body: ByteBuffer(bytes: body), headers: [:],
                caller: Caller(teamID: origin.teamID, keyPrefix: origin.keyPrefix), tokens: tokens,
                priority: origin.priority == .client ? .interactive : .background)
        } catch {
            throw ModelClientError(.requestFailed, "\(error)")
        }
    }

    /// Reads a whole answer and records it (with its usage and timings); a failure while reading
    /// is recorded by the relay and is a failed request.
    private func collectAndFinish(_ exchange: UpstreamExchange) async throws(ModelClientError) -> (status: Int, body: ByteBuffer) {
        let status = Int(exchange.response.status.code)
        let answer: WholeAnswer
        do { answer = try await relay.readWhole(exchange) } catch { throw ModelClientError(.requestFailed, "\(error)") }
        await relay.settleAnswer(exchange, status: status, answer: answer)
        return (status, answer.body)
    }

    /// A failure while a stream is read, as the OpenAI error event that ``ModelStreamReader`` reads.
    static let failureEvent: @Sendable (ServingError) -> String = { error in
        struct Event: Encodable {
            struct Body: Encodable { var message: String, type = "server_error", code: String }
            var error: Body
        }
        let json = (try? JSONEncoder().encode(Event(error: .init(message: error.message, code: error.code.rawValue)))) ?? Data(#"{"error":{}}"#.utf8)
        return "data: " + String(decoding: json, as: UTF8.self) + "\n\n"
    }

    /// The body of a 200 answer; any other is an error with its message.
    private static func successful(_ answer: (status: Int, body: ByteBuffer)) throws(ModelClientError) -> ByteBuffer {
        guard answer.status == 200 else { throw ModelClientError.answered(status: answer.status, body: answer.body.readableBytesView) }
        return answer.body
    }

    /// A whole chat or completion answer.
    private static func answer(_ answer: (status: Int, body: ByteBuffer)) throws(ModelClientError) -> ModelResponse {
        let body = try successful(answer)
        guard let response = ModelAnswerReader.whole(body.readableBytesView) else { throw ModelClientError(.unreadable, "the answer has no message") }
        return response
    }

    /// The tokens reserved at admission, as ``TokenEstimate/init(_:)`` bounds a client's body:
    /// the bytes of every message's role and content (or of the prompt), an allowance per
    /// message, and the output limit.
    static func estimate(_ request: ModelRequest) -> TokenEstimate {
        let (bytes, messages) = switch request.input {
        case .messages(let list): (list.reduce(0) { $0 + $1.role.utf8.count + $1.content.utf8.count }, list.count)
        case .prompt(let prompt): (prompt.utf8.count, 0)
        }
        return TokenEstimate(prompt: bytes + messages * 32 + 16, output: request.maxTokens.flatMap { $0 >= 0 ? $0 : nil })
    }
}
