import AsyncHTTPClient
import Foundation
import Jobs
import NIOCore
import NIOHTTP1
import Runtime

/// How jobs (evaluations and their judges, tuning's quality probes, fine-tuning's data checks,
/// benchmarks) ask a model: typed requests and answers, whatever carries them (the serving path
/// with its admission and ledger, a llama-server of a tuning trial, a test double).
public protocol ModelClient: Sendable {
    /// Asks for a whole answer (`request.stream` is ignored: the answer is read whole).
    func complete(_ request: ModelRequest) async throws(ModelClientError) -> ModelResponse

    /// Asks for a streamed answer: each event goes to `onChunk` as it arrives; the answer they
    /// add up to is returned at the end. An error event in the stream throws ``ModelClientError/Kind/interrupted``.
    func stream(_ request: ModelRequest, onChunk: @escaping @Sendable (ModelChunk) -> Void) async throws(ModelClientError) -> ModelResponse

    /// llama-server's `/apply-template`: the messages rendered with the model's chat template.
    func applyTemplate(model: String, messages: [ModelMessage], origin: ModelCallOrigin) async throws(ModelClientError) -> String

    /// llama-server's `/tokenize`: the text's tokens with the model's tokenizer.
    func tokenize(model: String, text: String, addSpecial: Bool, origin: ModelCallOrigin) async throws(ModelClientError) -> [Int]
}

/// Who asks, at what priority, and the route the ledger records the request under.
public struct ModelCallOrigin: Sendable, Equatable {
    /// Whose limits admit the request and whose usage it is.
    public var teamID: String?
    public var keyPrefix: String?
    public var priority: ModelPriority
    /// The route recorded in the ledger (`/v1/evals`, `/admin/benchmarks`, …).
    public var route: String

    public init(teamID: String? = nil, keyPrefix: String? = nil, priority: ModelPriority = .background, route: String) {
        (self.teamID, self.keyPrefix, self.priority, self.route) = (teamID, keyPrefix, priority, route)
    }
}

/// A request's place in a model's queue: a client's, or background work behind them.
public enum ModelPriority: Sendable, Equatable {
    case client
    case background
}

/// One chat message.
public struct ModelMessage: Sendable, Codable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) { (self.role, self.content) = (role, content) }
}

/// A chat or completion request as jobs send it.
public struct ModelRequest: Sendable, Equatable {
    /// Chat messages (`/v1/chat/completions`) or a prompt (`/v1/completions`).
    public enum Input: Sendable, Equatable {
        case messages([ModelMessage])
        case prompt(String)
    }

    public var model: String
    public var input: Input
    /// Sampling fields sent as they are named (`temperature`, `top_p`, `min_p`, …; `top_k` is
    /// sent as an integer).
    public var sampling: [String: Double]
    public var maxTokens: Int?
    public var seed: Int?
    /// Streamed answers ask for usage in the stream (`stream_options.include_usage`).
    public var stream: Bool
    /// llama-server's `cache_prompt` (nil: its default).
    public var cachePrompt: Bool?
    /// `response_format` as OpenAI spells it (a judge's JSON schema).
    public var responseFormat: JobJSON?
    public var origin: ModelCallOrigin

    public init(
        model: String, input: Input, sampling: [String: Double] = [:], maxTokens: Int? = nil, seed: Int? = nil, stream: Bool = false,
        cachePrompt: Bool? = nil, responseFormat: JobJSON? = nil, origin: ModelCallOrigin
    ) {
        (self.model, self.input, self.sampling, self.maxTokens, self.seed) = (model, input, sampling, maxTokens, seed)
        (self.stream, self.cachePrompt, self.responseFormat, self.origin) = (stream, cachePrompt, responseFormat, origin)
    }

    /// The OpenAI-compatible path the request goes to.
    public var path: String {
        switch input {
        case .messages: "/v1/chat/completions"
        case .prompt: "/v1/completions"
        }
    }

    /// The JSON body llama-server receives.
    public func body() throws(ModelClientError) -> Data {
        do { return try JSONEncoder().encode(WireModelRequest(self)) } catch {
            throw ModelClientError(.requestFailed, "the request cannot be encoded: \(error)")
        }
    }
}

/// The OpenAI-compatible body of a ``ModelRequest``.
struct WireModelRequest: Encodable {
    let request: ModelRequest

    init(_ request: ModelRequest) { self.request = request }

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    struct StreamOptions: Encodable {
        var include_usage = true
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(request.model, forKey: Key("model"))
        switch request.input {
        case .messages(let messages): try c.encode(messages, forKey: Key("messages"))
        case .prompt(let prompt): try c.encode(prompt, forKey: Key("prompt"))
        }
        try c.encode(request.stream, forKey: Key("stream"))
        if request.stream { try c.encode(StreamOptions(), forKey: Key("stream_options")) }
        try c.encodeIfPresent(request.maxTokens, forKey: Key("max_tokens"))
        try c.encodeIfPresent(request.seed, forKey: Key("seed"))
        try c.encodeIfPresent(request.cachePrompt, forKey: Key("cache_prompt"))
        try c.encodeIfPresent(request.responseFormat, forKey: Key("response_format"))
        for (name, value) in request.sampling.sorted(by: { $0.key < $1.key }) {
            if name == "top_k" { try c.encode(Int(value), forKey: Key(name)) } else { try c.encode(value, forKey: Key(name)) }
        }
    }
}

/// Token counts of an answer, as OpenAI reports them.
public struct ModelUsage: Sendable, Codable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    /// `prompt_tokens_details.cached_tokens`.
    public var cachedTokens: Int

    public init(promptTokens: Int = 0, completionTokens: Int = 0, totalTokens: Int = 0, cachedTokens: Int = 0) {
        (self.promptTokens, self.completionTokens, self.totalTokens, self.cachedTokens) = (promptTokens, completionTokens, totalTokens, cachedTokens)
    }

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens"
        case details = "prompt_tokens_details"
    }

    struct Details: Codable {
        var cached_tokens: Int?
    }

    /// Missing or unreadable counts are zero (llama-server leaves some out).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        promptTokens = (try? c.decodeIfPresent(Int.self, forKey: .promptTokens)) ?? 0
        completionTokens = (try? c.decodeIfPresent(Int.self, forKey: .completionTokens)) ?? 0
        totalTokens = (try? c.decodeIfPresent(Int.self, forKey: .totalTokens)) ?? 0
        cachedTokens = ((try? c.decodeIfPresent(Details.self, forKey: .details)) ?? nil)?.cached_tokens ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(promptTokens, forKey: .promptTokens)
        try c.encode(completionTokens, forKey: .completionTokens)
        try c.encode(totalTokens, forKey: .totalTokens)
        try c.encode(Details(cached_tokens: cachedTokens), forKey: .details)
    }
}

/// llama-server's `timings` for an answer (the speeds jobs read).
public struct ModelTimings: Sendable, Codable, Equatable {
    public var promptPerSecond: Double?
    public var predictedPerSecond: Double?

    public init(promptPerSecond: Double? = nil, predictedPerSecond: Double? = nil) {
        (self.promptPerSecond, self.predictedPerSecond) = (promptPerSecond, predictedPerSecond)
    }

    enum CodingKeys: String, CodingKey {
        case promptPerSecond = "prompt_per_second", predictedPerSecond = "predicted_per_second"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        promptPerSecond = (try? c.decodeIfPresent(Double.self, forKey: .promptPerSecond)) ?? nil
        predictedPerSecond = (try? c.decodeIfPresent(Double.self, forKey: .predictedPerSecond)) ?? nil
    }
}

/// One event of a streamed answer.
public struct ModelChunk: Sendable, Equatable {
    /// The text it adds (empty for role-only, usage and final events).
    public var text: String
    public var finishReason: String?
    public var usage: ModelUsage?
    public var timings: ModelTimings?
    /// The error an event reported (the stream broke off).
    public var error: String?

    public init(text: String = "", finishReason: String? = nil, usage: ModelUsage? = nil, timings: ModelTimings? = nil, error: String? = nil) {
        (self.text, self.finishReason, self.usage, self.timings, self.error) = (text, finishReason, usage, timings, error)
    }
}

/// A whole answer (or the one a stream added up to).
public struct ModelResponse: Sendable, Equatable {
    public var text: String
    public var finishReason: String
    public var usage: ModelUsage?
    public var timings: ModelTimings?
    /// When the first non-empty text arrived (streamed answers).
    public var firstToken: ContinuousClock.Instant?

    public init(text: String = "", finishReason: String = "", usage: ModelUsage? = nil, timings: ModelTimings? = nil, firstToken: ContinuousClock.Instant? = nil) {
        (self.text, self.finishReason, self.usage, self.timings, self.firstToken) = (text, finishReason, usage, timings, firstToken)
    }

    /// Adds a streamed event: its text, and the last finish reason, usage and timings seen.
    public mutating func add(_ chunk: ModelChunk, at time: ContinuousClock.Instant = .now) {
        if !chunk.text.isEmpty, firstToken == nil { firstToken = time }
        text += chunk.text
        if let reason = chunk.finishReason { finishReason = reason }
        if let usage = chunk.usage { self.usage = usage }
        if let timings = chunk.timings { self.timings = timings }
    }
}

/// Why a model could not be asked or did not answer.
public struct ModelClientError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// No answer: refused before sending (admission, an unknown model) or the connection failed.
        case requestFailed = "request_failed"
        /// The model answered with an error status (`status`).
        case answeredError = "answered_error"
        /// A streamed answer broke off with an error event.
        case interrupted
        /// The answer is not what the call expects (no message, no tokens).
        case unreadable
    }

    public var kind: Kind
    /// The HTTP status of an error answer.
    public var status: Int?
    public var message: String

    public init(_ kind: Kind, status: Int? = nil, _ message: String) {
        (self.kind, self.status, self.message) = (kind, status, message)
    }

    /// An error answer: its OpenAI `error.message`, else the start of its body.
    public static func answered(status: Int, body: some Collection<UInt8>) -> ModelClientError {
        let bytes = Data(body)
        let message = (try? JSONDecoder().decode(ErrorEnvelope.self, from: bytes))?.error?.message ?? String(decoding: bytes.prefix(300), as: UTF8.self)
        return ModelClientError(.answeredError, status: status, message)
    }

    public var description: String {
        switch kind {
        case .answeredError: "the model answered \(status ?? 0): \(message)"
        case .interrupted: "the answer broke off: \(message)"
        case .requestFailed, .unreadable: message
        }
    }
}

/// An OpenAI error body (`{"error": {"message": …}}`).
struct ErrorEnvelope: Decodable {
    struct Body: Decodable { var message: String? }
    var error: Body?
}

/// Reads OpenAI-compatible answers: a whole JSON body, or the events of a stream.
public struct ModelAnswerReader {
    private var events = SSEEvents()

    public init() {}

    /// The events completed by `bytes` of a stream.
    public mutating func feed(_ bytes: ByteBuffer) -> [ModelChunk] {
        events.feed(bytes).compactMap(Self.chunk)
    }

    /// The events of an unterminated last event.
    public mutating func finish() -> [ModelChunk] {
        events.finish().compactMap(Self.chunk)
    }

    /// One event's payload (`[DONE]` and unreadable ones are nil).
    static func chunk(_ payload: Substring) -> ModelChunk? {
        guard payload != "[DONE]", let wire = try? JSONDecoder().decode(WireAnswer.self, from: Data(payload.utf8)) else { return nil }
        let choice = wire.choices?.first
        return ModelChunk(text: choice?.delta?.content ?? choice?.text ?? "", finishReason: choice?.finishReason, usage: wire.usage,
                          timings: wire.timings, error: wire.error)
    }

    /// A whole answer's body; nil when it has no choice.
    public static func whole(_ body: some Collection<UInt8>) -> ModelResponse? {
        guard let wire = try? JSONDecoder().decode(WireAnswer.self, from: Data(body)), let choice = wire.choices?.first else { return nil }
        return ModelResponse(text: choice.message?.content ?? choice.text ?? "", finishReason: choice.finishReason ?? "", usage: wire.usage, timings: wire.timings)
    }
}

/// Reads a streamed answer as its bytes arrive: each event goes to `onChunk`, and they add up
/// to the answer; an error event makes the stream a failure.
public struct ModelStreamReader {
    private var reader = ModelAnswerReader()
    private var answer = ModelResponse()
    private var failure: String?
    private let onChunk: @Sendable (ModelChunk) -> Void

    public init(onChunk: @escaping @Sendable (ModelChunk) -> Void) { self.onChunk = onChunk }

    /// Takes the events `bytes` complete.
    public mutating func feed(_ bytes: ByteBuffer) { take(reader.feed(bytes)) }

    /// The answer once the stream ended (an unterminated last event included).
    public mutating func finish() throws(ModelClientError) -> ModelResponse {
        take(reader.finish())
        if let failure { throw ModelClientError(.interrupted, failure) }
        return answer
    }

    private mutating func take(_ chunks: [ModelChunk]) {
        let now = ContinuousClock.now
        for chunk in chunks {
            answer.add(chunk, at: now)
            if let error = chunk.error { failure = error }
            onChunk(chunk)
        }
    }
}

/// The members of an answer or an event that jobs read; each read leniently.
struct WireAnswer: Decodable {
    struct Choice: Decodable {
        struct Content: Decodable { var content: String? }
        var delta: Content?
        var message: Content?
        var text: String?
        var finishReason: String?

        enum CodingKeys: String, CodingKey { case delta, message, text, finishReason = "finish_reason" }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            delta = (try? c.decodeIfPresent(Content.self, forKey: .delta)) ?? nil
            message = (try? c.decodeIfPresent(Content.self, forKey: .message)) ?? nil
            text = (try? c.decodeIfPresent(String.self, forKey: .text)) ?? nil
            finishReason = (try? c.decodeIfPresent(String.self, forKey: .finishReason)) ?? nil
        }
    }
    struct ErrorBody: Decodable { var message: String? }

    var choices: [Choice]?
    var usage: ModelUsage?
    var timings: ModelTimings?
    /// An error event's message (`"the stream failed"` when it has none).
    var error: String?

    enum CodingKeys: String, CodingKey { case choices, usage, timings, error }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        choices = (try? c.decodeIfPresent([Choice].self, forKey: .choices)) ?? nil
        usage = (try? c.decodeIfPresent(ModelUsage.self, forKey: .usage)) ?? nil
        timings = (try? c.decodeIfPresent(ModelTimings.self, forKey: .timings)) ?? nil
        if c.contains(.error), !((try? c.decodeNil(forKey: .error)) ?? true) {
            error = ((try? c.decode(ErrorBody.self, forKey: .error))?.message) ?? "the stream failed"
        }
    }
}

/// `/apply-template`'s and `/tokenize`'s bodies and answers.
public enum LlamaServerCalls {
    struct ApplyTemplate: Encodable { var messages: [ModelMessage] }
    struct Tokenize: Encodable {
        var content: String
        var add_special: Bool
    }
    struct Template: Decodable { var prompt: String? }
    struct Tokens: Decodable {
        /// Token ids (or, with `with_pieces`, objects: counted all the same).
        var tokens: [JobJSON]?
    }

    /// The body of `/apply-template`.
    public static func applyTemplateBody(_ messages: [ModelMessage]) throws(ModelClientError) -> Data {
        do { return try JSONEncoder().encode(ApplyTemplate(messages: messages)) } catch { throw ModelClientError(.requestFailed, "\(error)") }
    }

    /// The body of `/tokenize`.
    public static func tokenizeBody(_ text: String, addSpecial: Bool) throws(ModelClientError) -> Data {
        do { return try JSONEncoder().encode(Tokenize(content: text, add_special: addSpecial)) } catch { throw ModelClientError(.requestFailed, "\(error)") }
    }

    /// The prompt `/apply-template` answered.
    public static func prompt(_ body: some Collection<UInt8>) throws(ModelClientError) -> String {
        guard let prompt = (try? JSONDecoder().decode(Template.self, from: Data(body)))?.prompt else {
            throw ModelClientError(.unreadable, "/apply-template gave no prompt")
        }
        return prompt
    }

    /// The tokens `/tokenize` answered (ids; a piece object counts as its id).
    public static func tokens(_ body: some Collection<UInt8>) throws(ModelClientError) -> [Int] {
        guard let tokens = (try? JSONDecoder().decode(Tokens.self, from: Data(body)))?.tokens else {
            throw ModelClientError(.unreadable, "/tokenize gave no tokens")
        }
        return tokens.map { token in
            switch token {
            case .number(let id): Int(id)
            case .object(let piece): piece["id"].flatMap { if case .number(let id) = $0 { Int(id) } else { nil } } ?? -1
            default: -1
            }
        }
    }
}

/// A ``ModelClient`` straight to one llama-server outside the fleet (a tuning trial's): no
/// admission and no ledger, the server's own answer. A request that could not be sent (a pooled
/// connection the server had just closed) is sent once more on a fresh one.
public struct LlamaServerModelClient: ModelClient {
    /// `http://127.0.0.1:PORT`.
    public let baseURL: String
    let client: HTTPClient
    let timeout: TimeAmount

    public init(baseURL: String, client: HTTPClient, timeout: TimeAmount = .minutes(5)) {
        (self.baseURL, self.client, self.timeout) = (baseURL, client, timeout)
    }

    public func complete(_ request: ModelRequest) async throws(ModelClientError) -> ModelResponse {
        var request = request
        request.stream = false
        let response = try await send(request.path, try request.body())
        return try await Self.whole(response)
    }

    public func stream(_ request: ModelRequest, onChunk: @escaping @Sendable (ModelChunk) -> Void) async throws(ModelClientError) -> ModelResponse {
        var request = request
        request.stream = true
        let response = try await send(request.path, try request.body())
        guard response.status == .ok, response.headers.first(name: "content-type")?.lowercased().hasPrefix("text/event-stream") == true else {
            return try await Self.whole(response)
        }
        var stream = ModelStreamReader(onChunk: onChunk)
        do {
            for try await bytes in response.body { stream.feed(bytes) }
        } catch {
            throw ModelClientError(.interrupted, "\(error)")
        }
        return try stream.finish()
    }

    public func applyTemplate(model: String, messages: [ModelMessage], origin: ModelCallOrigin) async throws(ModelClientError) -> String {
        try LlamaServerCalls.prompt(try await Self.successful(try await send("/apply-template", try LlamaServerCalls.applyTemplateBody(messages))).readableBytesView)
    }

    public func tokenize(model: String, text: String, addSpecial: Bool, origin: ModelCallOrigin) async throws(ModelClientError) -> [Int] {
        let body = try LlamaServerCalls.tokenizeBody(text, addSpecial: addSpecial)
        return try LlamaServerCalls.tokens(try await Self.successful(try await send("/tokenize", body)).readableBytesView)
    }

    private func send(_ path: String, _ body: Data) async throws(ModelClientError) -> HTTPClientResponse {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            do { return try await client.execute(request, timeout: timeout) } catch where !(error is CancellationError) && !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(50))
                return try await client.execute(request, timeout: timeout)
            }
        } catch {
            throw ModelClientError(.requestFailed, "the request failed: \(error)")
        }
    }

    private static func successful(_ response: HTTPClientResponse) async throws(ModelClientError) -> ByteBuffer {
        let body: ByteBuffer
        do { body = try await response.body.collect(upTo: 16 << 20) } catch { throw ModelClientError(.requestFailed, "the answer could not be read: \(error)") }
        guard response.status == .ok else { throw ModelClientError.answered(status: Int(response.status.code), body: body.readableBytesView) }
        return body
    }

    private static func whole(_ response: HTTPClientResponse) async throws(ModelClientError) -> ModelResponse {
        let body = try await successful(response)
        guard let answer = ModelAnswerReader.whole(body.readableBytesView) else { throw ModelClientError(.unreadable, "the answer has no message") }
        return answer
    }
}
