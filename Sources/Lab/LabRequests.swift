import Foundation
import Jobs
import Runtime

// The bodies of `/admin/benchmarks`, `/admin/quant-ladder` and `/admin/tuning`, decoded into
// checked values. Each `init(from:)` reads the body's object as `[String: JobJSON]` and checks
// it field by field, throwing a `LabError` with the message and `param` the admin API has always
// given (decision 037). Checks that need the catalog or the files (the model exists and
// generates text, an uploaded file's text) happen when the work starts, in ``Lab``.

/// The text of a perplexity run or a quant ladder: inline (`text`) or an uploaded file
/// (`file_id`), exactly one of them.
public enum LabText: Sendable, Equatable {
    case inline(String)
    case file(String)

    init(_ body: [String: JobJSON]) throws(LabError) {
        switch (body["text"], body["file_id"]) {
        case (.string(let text)?, nil): self = .inline(text)
        case (nil, .string(let id)?): self = .file(id)
        default: throw .badRequest("give the text as `text` or as an uploaded file's `file_id` (one of them)", param: "text")
        }
    }
}

/// What a perplexity run measures: a text in chunks of `contextSize` tokens (512 by default,
/// the size published figures use), all of them or the first `chunks`.
public struct PerplexityRequest: Sendable, Equatable {
    public var text: LabText
    public var contextSize: Int
    public var chunks: Int?

    public init(text: LabText, contextSize: Int = 512, chunks: Int? = nil) {
        (self.text, self.contextSize, self.chunks) = (text, contextSize, chunks)
    }

    init(_ body: [String: JobJSON]) throws(LabError) {
        text = try LabText(body)
        contextSize = try labInt(body, "contextSize", 512, 16...131_072)
        chunks = body["chunks"] == nil ? nil : try labInt(body, "chunks", 1, 1...1_000_000)
    }
}

/// `POST /admin/benchmarks`: a speed run (N streamed requests through the serving path, the
/// default `kind`) or a perplexity run of `model`.
public struct BenchmarkRequest: Sendable, Decodable {
    public enum Kind: Sendable, Equatable {
        case speed(BenchmarkParameters)
        case perplexity(PerplexityRequest)
    }

    public var model: String
    public var kind: Kind

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(LabError) {
        model = try labModel(body)
        switch body["kind"]?.stringValue ?? "speed" {
        case "speed":
            kind = .speed(BenchmarkParameters(
                requests: try labInt(body, "requests", 20, 1...10_000), concurrency: try labInt(body, "concurrency", 1, 1...256),
                promptWords: try labInt(body, "promptWords", 32, 1...100_000), maxTokens: try labInt(body, "maxTokens", 64, 1...32_768)))
        case "perplexity": kind = .perplexity(try PerplexityRequest(body))
        default: throw .badRequest("kind must be speed or perplexity", param: "kind")
        }
    }
}

/// `POST /admin/quant-ladder`: the quants to make (Q8_0 to Q2_K by default), the text they are
/// measured on, and the largest mean KL divergence a winner may have (0.05 by default).
public struct QuantLadderRequest: Sendable, Decodable {
    public var model: String
    public var quants: [QuantType]
    public var measure: PerplexityRequest
    public var maxKLD: Double
    public var allowRequantize: Bool

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(LabError) {
        model = try labModel(body)
        quants = QuantLadderSpec.defaultQuants
        if let names = body["quants"] {
            let parsed = names.stringsValue?.compactMap(QuantType.init)
            guard let parsed, parsed.count == names.arrayValue?.count else {
                throw .badRequest("quants must be a list of \(QuantType.all.map(\.name).joined(separator: ", "))", param: "quants")
            }
            quants = parsed
        }
        maxKLD = 0.05
        if let value = body["maxKLD"] {
            guard let n = value.doubleValue else { throw .badRequest("maxKLD must be a number", param: "maxKLD") }
            maxKLD = n
        }
        measure = try PerplexityRequest(body)
        allowRequantize = false
        if let value = body["allowRequantize"] {
            guard let flag = value.boolValue else { throw .badRequest("allowRequantize must be a boolean", param: "allowRequantize") }
            allowRequantize = flag
        }
    }
}

/// `POST /admin/tuning`: the session's request and, when given, what its quality measure reads
/// (an evaluation run or a text, looked up when the session starts).
public struct TuningRequest: Sendable, Decodable {
    public var model: String
    public var session: TuningSession.Request
    public var quality: TuningQualityRequest?

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(LabError) {
        model = try labModel(body)
        session = try Self.session(body)
        if let raw = body["quality"], !raw.isNull {
            guard raw.objectValue != nil, let quality = try? raw.decode(TuningQualityRequest.self) else {
                throw .badRequest("quality must be an object", param: "quality")
            }
            self.quality = quality
        }
    }

    static func session(_ body: [String: JobJSON]) throws(LabError) -> TuningSession.Request {
        guard let objective = TuningObjective(rawValue: body["objective"]?.stringValue ?? TuningObjective.maxGenerationTPS.rawValue) else {
            throw .badRequest("objective must be one of \(TuningJob.objectives.joined(separator: ", "))", param: "objective")
        }
        guard let strategy = TuningStrategy(rawValue: body["strategy"]?.stringValue ?? TuningStrategy.halving.rawValue) else {
            throw .badRequest("strategy must be one of \(TuningJob.strategies.joined(separator: ", "))", param: "strategy")
        }
        let space = try Self.space(body["space"] ?? .object([:]))
        let constraints = try Self.constraints(body["constraints"])
        let weights = try Self.weights(body["weights"])
        if objective == .weighted && weights == nil {
            throw .badRequest("the weighted objective needs weights (\(TuningJob.weightedMeasures.joined(separator: ", ")))", param: "weights")
        }
        return TuningSession.Request(
            objective: objective, strategy: strategy, space: space,
            minContext: body["minContext"] == nil ? nil : try labInt(body, "minContext", 0, 1...(1 << 24)),
            requests: try labInt(body, "requests", 4, 1...1000), concurrency: try labInt(body, "concurrency", 1, 1...256),
            maxTokens: try labInt(body, "maxTokens", 16, 1...4096), promptWords: try labInt(body, "promptWords", 32, 1...100_000),
            maxCandidates: try labInt(body, body["maxTrials"] != nil ? "maxTrials" : "maxCandidates", 24, 1...512),
            seed: UInt64(try labInt(body, "seed", 42, 0...Int.max)), constraints: constraints, maxSeconds: try Self.seconds(body["maxSeconds"]),
            patience: body["patience"] == nil ? nil : try labInt(body, "patience", 0, 1...10_000),
            repetitions: try labInt(body, "repetitions", 1, 1...100), remeasureTop: try labInt(body, "remeasureTop", 0, 0...20), weights: weights)
    }

    /// The space to search, with every dimension in its range and at most 4096 combinations.
    static func space(_ raw: JobJSON) throws(LabError) -> TuningSession.Space {
        guard let space = try? raw.decode(TuningSession.Space.self) else {
            throw .badRequest("space must map contextSize (or num_ctx), ubatch, threads, parallel, gpuLayers, top_k to integer lists, temperature, top_p, min_p, repeat_penalty to number lists, flashAttention to booleans and cacheType to f16/q8_0/… names", param: "space")
        }
        let ranges: [(String, [Int]?, ClosedRange<Int>)] = [
            ("contextSize", space.contextSize, 1...(1 << 28)), ("ubatch", space.ubatch, 1...65_536), ("threads", space.threads, 1...1024),
            ("parallel", space.parallel, 1...256), ("gpuLayers", space.gpuLayers, 0...10_000),
        ]
        for (name, values, range) in ranges where !(values ?? []).allSatisfy(range.contains) {
            throw .badRequest("space.\(name) values must be from \(range.lowerBound) to \(range.upperBound)", param: "space")
        }
        let counts: [Int?] = [space.contextSize?.count, space.ubatch?.count, space.flashAttention?.count, space.cacheType?.count,
                              space.threads?.count, space.parallel?.count, space.gpuLayers?.count] + space.samplingDimensions.map { $0.values.count }
        let combinations = counts.reduce(1) { $0 * max(1, min($1 ?? 1, 1000)) }
        guard combinations <= 4096 else {
            throw .badRequest("the space has \(combinations) combinations; at most 4096 (use strategy random with fewer values)", param: "space")
        }
        return space
    }

    /// `maxSeconds`: a positive number, or absent.
    static func seconds(_ raw: JobJSON?) throws(LabError) -> Double? {
        guard let raw, !raw.isNull else { return nil }
        guard let n = raw.doubleValue, n.isFinite, n > 0 else { throw .badRequest("maxSeconds must be a positive number", param: "maxSeconds") }
        return n
    }

    /// `constraints`: `ttftP95Ms`, `memoryMiB` and `generationTPS`, each a non-negative number;
    /// nil when absent or null.
    static func constraints(_ raw: JobJSON?) throws(LabError) -> TuningSession.Constraints? {
        guard let raw, !raw.isNull else { return nil }
        guard let object = raw.objectValue else { throw .badRequest("constraints must be an object", param: "constraints") }
        var c = TuningSession.Constraints()
        for (key, value) in object {
            guard let n = value.doubleValue, n.isFinite, n >= 0 else {
                throw .badRequest("constraints.\(key) must be a non-negative number", param: "constraints")
            }
            switch key {
            case "ttftP95Ms": c.ttftP95Ms = n
            case "memoryMiB": c.memoryMiB = n
            case "generationTPS": c.generationTPS = n
            default: throw .badRequest("constraints are ttftP95Ms, memoryMiB and generationTPS; not \(key)", param: "constraints")
            }
        }
        return c
    }

    /// `weights`: measure → non-negative weight (``TuningJob/weightedMeasures``); nil when
    /// absent or null.
    static func weights(_ raw: JobJSON?) throws(LabError) -> [String: Double]? {
        guard let raw, !raw.isNull else { return nil }
        guard let object = raw.objectValue, !object.isEmpty else { throw .badRequest("weights must be an object of measure → weight", param: "weights") }
        var weights: [String: Double] = [:]
        for (key, value) in object {
            guard TuningJob.weightedMeasures.contains(key) else {
                throw .badRequest("weights are \(TuningJob.weightedMeasures.joined(separator: ", ")); not \(key)", param: "weights")
            }
            guard let n = value.doubleValue, n.isFinite, n >= 0 else { throw .badRequest("weights.\(key) must be a non-negative number", param: "weights") }
            weights[key] = n
        }
        return weights
    }
}

/// `POST /admin/tuning/{id}/apply`: the name of the sampling profile the winner's sampling
/// becomes (a member of the wrong type, or no body at all, reads as absent, as it always has).
public struct TuningApplyRequest: Sendable, Decodable {
    public var profile: String?

    enum CodingKeys: String, CodingKey { case profile }

    public init(profile: String? = nil) { self.profile = profile }

    public init(from decoder: any Decoder) throws {
        profile = (try? decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(String.self, forKey: .profile)) ?? nil
    }
}

/// A request's `model`: a non-empty string.
func labModel(_ body: [String: JobJSON]) throws(LabError) -> String {
    guard let model = body["model"]?.stringValue, !model.isEmpty else { throw .badRequest("model is required", param: "model") }
    return model
}

/// An integer member of a body: `fallback` when absent or null, refused outside `range`.
func labInt(_ body: [String: JobJSON], _ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws(LabError) -> Int {
    guard let raw = body[key], !raw.isNull else { return fallback }
    guard let n = raw.intValue, range.contains(n) else {
        throw .badRequest("\(key) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: key)
    }
    return n
}
