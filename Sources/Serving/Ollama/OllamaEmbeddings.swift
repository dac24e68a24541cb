import Access
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Jobs
import NIOCore
import NIOHTTP1
import Runtime

/// The answer of `/api/embed` (`model`, `embeddings` and the counts; only the first two for a
/// request with no input, which loads the model) or of the legacy `/api/embeddings` (`embedding`).
public struct OllamaEmbedAnswer: Encodable, Sendable, Equatable {
    public var model: String?
    public var embeddings: [[Double]]?
    public var embedding: [Double]?
    public var totalDuration: Int64?
    public var loadDuration: Int64?
    public var promptEvalCount: Int?

    enum CodingKeys: String, CodingKey {
        case model, embeddings, embedding, totalDuration = "total_duration", loadDuration = "load_duration", promptEvalCount = "prompt_eval_count"
    }
}

extension OllamaServing {
    /// `/api/embed` (`legacy`: `/api/embeddings`): llama-server's `/v1/embeddings`, each vector
    /// cut to `dimensions` and normalised; an input longer than one batch is cut to fit through
    /// the model's tokenizer (`truncate`, the default) or refused.
    public func embed(_ body: OllamaBody, legacy: Bool, headers: HTTPFields, caller: Caller) async throws(OllamaFailure) -> OllamaEmbedAnswer {
        let name = try OllamaRequests.modelName(body)
        // A model whose instance cannot embed answers through its companion in embedding mode.
        let spec = try resolve(name, route: legacy ? "/api/embeddings" : "/api/embed", caller: caller).forEmbeddings
        let arrival = ContinuousClock.now
        let inputs = try Self.embeddingInputs(body, legacy: legacy)
        var dimensions: Int?
        if let d = body["dimensions"], d != .null {
            guard let i = d.intValue, i > 0 else { throw .badRequest("dimensions must be a positive integer") }
            dimensions = i
        }
        let truncate: Bool
        switch body["truncate"] {
        case nil, .null?: truncate = true
        case .bool(let b)?: truncate = b
        default: throw .badRequest("truncate must be a boolean")
        }
        let keepAlive = try OllamaValues.keepAlive(body["keep_alive"])
        _ = try OllamaRequests.options(body["options"])
        if inputs.isEmpty {
            try checkAccess(caller, to: spec, as: name)
            // Like an empty prompt: load the model and answer with no vectors.
            _ = try await loadOrUnload(body, spec: spec, name: name, shape: .generate, arrival: arrival)
            return OllamaEmbedAnswer(model: name, embeddings: [])
        }
        var upstreamInput = JobJSON.array(inputs.map(JobJSON.string))
        var result = try await embedUpstream(spec: spec, input: upstreamInput, keepAlive: keepAlive, headers: headers, caller: caller)
        if case .tooLong(let limit, let message) = result {
            guard truncate else { throw .badRequest("the input length exceeds the context length: \(message)") }
            upstreamInput = try await truncatedTokens(spec: spec, inputs: inputs, limit: limit, headers: headers)
            result = try await embedUpstream(spec: spec, input: upstreamInput, keepAlive: keepAlive, headers: headers, caller: caller)
        }
        guard case .vectors(let vectors, let promptTokens, let load) = result else {
            throw .badRequest("the input length exceeds the context length")
        }
        if legacy { return OllamaEmbedAnswer(embedding: vectors.first ?? []) }
        return OllamaEmbedAnswer(
            model: name, embeddings: vectors.map { v in Self.normalized(dimensions.map { Array(v.prefix($0)) } ?? v) },
            totalDuration: OllamaValues.nanoseconds(.now - arrival), loadDuration: OllamaValues.nanoseconds(load), promptEvalCount: promptTokens)
    }

    /// The texts to embed: `input` (a string or a list of strings), or the legacy `prompt`.
    static func embeddingInputs(_ body: OllamaBody, legacy: Bool) throws(OllamaFailure) -> [String] {
        if legacy { return [try OllamaRequests.optionalString(body, "prompt") ?? ""] }
        switch body["input"] {
        case nil, .null?: return []
        case .string(let s)?: return [s]
        case let list?:
            guard let strings = list.stringsValue else { throw .badRequest("input must be a string or a list of strings") }
            return strings
        }
    }

    enum EmbedResult {
        case vectors([[Double]], promptTokens: Int, load: Duration)
        /// The input does not fit in one batch; `limit` tokens would.
        case tooLong(limit: Int, message: String)
    }

    /// llama-server's `/v1/embeddings` answer, as far as it is read.
    struct EmbeddingsAnswer: Decodable {
        struct Item: Decodable {
            var index: Int?
            var embedding: [Double]?
        }
        var data: [Item]
    }

    func embedUpstream(spec: ModelSpec, input: JobJSON, keepAlive: Duration?, headers: HTTPFields, caller: Caller) async throws(OllamaFailure) -> EmbedResult {
        let exchange: UpstreamExchange
        let body: [String: JobJSON] = ["model": .string(spec.id), "input": input, "encoding_format": .string("float")]
        do {
            exchange = try await relay.open(
                route: "/api/embed", method: .POST, upstreamPath: "/v1/embeddings", modelName: spec.id,
                body: ByteBuffer(bytes: OllamaJSON.data(body)), headers: headers,
                caller: caller, tokens: TokenEstimate(upstream: ["input": input]), keepAlive: keepAlive)
        } catch {
            throw OllamaFailure(error)
        }
        let status = Int(exchange.response.status.code)
        let bytes: ByteBuffer
        do { bytes = try await relay.readWhole(exchange, keepingUpTo: 256 << 20).body } catch { throw OllamaFailure(status: error.status, error.message) }
        guard status == 200, let answer = OllamaJSON.decode(EmbeddingsAnswer.self, from: bytes.readableBytesView) else {
            await relay.finish(exchange, status: status, errorKind: Relay.upstreamErrorKind(HTTPResponse.Status(code: status)) ?? ServingError.Code.upstreamError.rawValue)
            let message = Self.upstreamMessage(bytes) ?? "embedding failed with status \(status)"
            if message.contains("too large") || message.contains("exceeds") {
                // "… (current batch size: 512)": the most tokens one input may have.
                let limit = message.range(of: "batch size: ").flatMap { Int(message[$0.upperBound...].prefix { $0.isNumber }) } ?? 512
                return .tooLong(limit: limit, message: message)
            }
            throw OllamaFailure(status: status == 200 ? 502 : status, message)
        }
        let usage = bytes.withUnsafeReadableBytes { AnswerUsage(answer: $0) }
        await relay.finish(exchange, status: 200, usage: usage)
        let vectors = answer.data.sorted { ($0.index ?? 0) < ($1.index ?? 0) }.map { $0.embedding ?? [] }
        return .vectors(vectors, promptTokens: usage.usage?.int("prompt_tokens") ?? 0, load: exchange.lease.queueDuration + exchange.lease.loadDuration)
    }

    /// llama-server's `/tokenize` answer.
    struct Tokens: Decodable { var tokens: [Int] }

    /// Each input as at most `limit` tokens (Ollama's `truncate: true`), via the model's tokenizer.
    func truncatedTokens(spec: ModelSpec, inputs: [String], limit: Int, headers: HTTPFields) async throws(OllamaFailure) -> JobJSON {
        var out: [JobJSON] = []
        for text in inputs {
            let exchange: UpstreamExchange
            let body: [String: JobJSON] = ["content": .string(text), "add_special": .bool(true)]
            do {
                exchange = try await relay.open(
                    route: "/api/embed", method: .POST, upstreamPath: "/tokenize", modelName: spec.id,
                    body: ByteBuffer(bytes: OllamaJSON.data(body)), headers: headers,
                    caller: .anonymous, tokens: TokenEstimate(prompt: 0, output: 0))
            } catch {
                throw OllamaFailure(error)
            }
            let bytes: ByteBuffer
            do { bytes = try await relay.readWhole(exchange, keepingUpTo: 64 << 20).body } catch {
                throw OllamaFailure(status: 502, "could not tokenize the input to truncate it")
            }
            await relay.finish(exchange, status: Int(exchange.response.status.code))
            guard let tokens = OllamaJSON.decode(Tokens.self, from: bytes.readableBytesView)?.tokens else {
                throw OllamaFailure(status: 502, "could not tokenize the input to truncate it")
            }
            out.append(.array(tokens.prefix(max(1, limit)).map { JobJSON.number(Double($0)) }))
        }
        return .array(out)
    }

    static func normalized(_ v: [Double]) -> [Double] {
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return norm > 0 ? v.map { $0 / norm } : v
    }
}
