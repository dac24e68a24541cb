import Files
import Foundation
import GGUF
import Hummingbird
import Jobs
import Lab
import Library
import NIOCore
import Runtime
import Store

/// `/admin/benchmarks` and `/admin/tuning`: decoding, the lab call, encoding. Both are views of
/// jobs (`/admin/jobs/{id}` shows the same work).
struct LabRoutes: Sendable {
    let lab: Lab
    let scheduler: Scheduler
    let hardware: HardwareCache
    let marginMiB: Int
    /// Uploaded files, for a perplexity text given by `file_id` (nil without a store).
    let files: FileLibrary?

    func register(on admin: AdminAPIGroup) {
        registerBenchmarks(on: admin)
        registerTuning(on: admin)
        registerQuantLadder(on: admin)
    }

    /// An integer member of a JSON body, `fallback` when absent, 400 when out of `range`.
    static func int(_ body: [String: Any], _ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
        guard let v = body[key], !(v is NSNull) else { return fallback }
        guard let n = v as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue), range.contains(i) else {
            throw OpenAIError.badRequest("\(key) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: key)
        }
        return i
    }

    // MARK: Benchmarks

    func registerBenchmarks(on admin: AdminAPIGroup) {
        let run = ["id": "run id"]
        admin.post("benchmarks", .init("Start a benchmark (a job): `kind` speed (the default: N streamed requests through the serving path) or perplexity (llama-perplexity on a text, inline or by file id, with the model's settings)", body: .object([
            "model": .string, "kind": .enumeration(["speed", "perplexity"]), "requests": .integer(minimum: 1, maximum: 10_000),
            "concurrency": .integer(minimum: 1, maximum: 256), "promptWords": .integer(minimum: 1), "maxTokens": .integer(minimum: 1, maximum: 32_768),
            "text": .string, "file_id": .string, "contextSize": .integer(minimum: 16, maximum: 131_072), "chunks": .integer(minimum: 1),
        ], required: ["model"]), status: 202)) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let spec = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            guard spec.facts?.capabilities.contains(.embedding) != true else {
                throw OpenAIError.badRequest("'\(model)' is an embedding model; benchmarks generate text", param: "model")
            }
            switch body["kind"] as? String ?? "speed" {
            case "speed": break
            case "perplexity": return try await startPerplexity(spec, body)
            default: throw OpenAIError.badRequest("kind must be speed or perplexity", param: "kind")
            }
            let parameters = BenchmarkParameters(
                requests: try Self.int(body, "requests", 20, 1...10_000), concurrency: try Self.int(body, "concurrency", 1, 1...256),
                promptWords: try Self.int(body, "promptWords", 32, 1...100_000), maxTokens: try Self.int(body, "maxTokens", 64, 1...32_768))
            let started = try await mapped { try await lab.startBenchmark(BenchmarkSpec(model: spec.id, parameters: parameters)) }
            return try Wire.response(started, status: .accepted)
        }
        admin.get("benchmarks", .init("Benchmark runs, newest first: speed runs in `benchmarks`, perplexity runs in `perplexity`", query: [.init("model", .string)], errors: [])) { request, _ in
            let model = request.uri.queryParameters.get("model")
            return try Wire.response(BenchmarkLists(
                benchmarks: try await mapped { try await lab.benchmarks(model: model) },
                perplexity: try await mapped { try await lab.perplexityRuns(model: model) }))
        }
        admin.get("benchmarks/{id}", .init("One run (speed or perplexity): progress and result", path: run)) { _, context in
            let id = try context.parameters.require("id")
            if let found = try await mapped({ try await lab.benchmark(id) }) { return try Wire.response(found) }
            if let found = try await mapped({ try await lab.perplexityRun(id) }) { return try Wire.response(found) }
            throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found")
        }
        admin.get("benchmarks/{id}/events", .events("The run now, then after every change, as server-sent events until it ends", path: run)) { request, context in
            let id = try context.parameters.require("id")
            if try await mapped({ try await lab.perplexityRun(id) }) != nil { return try await JobRoutes.events(of: id, in: lab.engine, request: request) }
            guard let current = try await mapped({ try await lab.benchmark(id) }) else { throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found") }
            let resumeAfter = try JobRoutes.lastEventID(request)
            let job = try await mapped { try await lab.engine.get(id) }
            let events = try await mapped { try await lab.engine.events(id, after: resumeAfter > 0 ? resumeAfter : job?.lastEventID ?? 0) }
            return JobRoutes.eventStream { writer in
                if resumeAfter == 0 { try await writer.write(JobRoutes.sse(id: job?.lastEventID, event: nil, data: try JSONEncoder.iso.encode(current))) }
                for await event in events {
                    guard let run = try await lab.benchmark(id) else { break }
                    try await writer.write(JobRoutes.sse(id: event.id, event: nil, data: try JSONEncoder.iso.encode(run)))
                }
            }
        }
    }

    /// The text of a perplexity run or a quant ladder: inline (`text`) or an uploaded file
    /// (`file_id`), and where it came from.
    func text(_ body: [String: Any]) async throws -> (Data, String) {
        switch (body["text"], body["file_id"]) {
        case (let inline as String, nil):
            return (Data(inline.utf8), "inline")
        case (nil, let id as String):
            guard let files else { throw OpenAIError.badRequest("files need the store, which is off", param: "file_id") }
            return (try await mapped { try await files.contents(id, scope: .all).1 }, id)
        default:
            throw OpenAIError.badRequest("give the text as `text` or as an uploaded file's `file_id` (one of them)", param: "text")
        }
    }

    /// A perplexity run: the text inline (`text`) or an uploaded file (`file_id`), chunks of
    /// `contextSize` tokens (512 by default, the size published figures use).
    func startPerplexity(_ spec: ModelSpec, _ body: [String: Any]) async throws -> Response {
        let (text, source) = try await self.text(body)
        let contextSize = try Self.int(body, "contextSize", 512, 16...131_072)
        let chunks = body["chunks"] == nil ? nil : try Self.int(body, "chunks", 1, 1...1_000_000)
        let compatibility = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
        let started = try await mapped {
            try await lab.startPerplexity(spec, text: text, source: source, contextSize: contextSize, chunks: chunks, compatibility: compatibility)
        }
        return try Wire.response(started, status: .accepted)
    }

    // MARK: Quant ladder

    func registerQuantLadder(on admin: AdminAPIGroup) {
        admin.post("quant-ladder", .init(
            "Start a quant ladder (a job of kind quant-ladder): the model quantized to each of `quants` (default Q8_0 to Q2_K), each measured for size, fit verdict on this machine, prompt and generation speed (llama-bench), perplexity and mean KL divergence against the model on a text (inline or by file id); the result names the smallest quant within `maxKLD` (default 0.05) that fits",
            body: .object([
                "model": .string, "quants": .array(.enumeration(QuantType.all.map(\.name))), "text": .string, "file_id": .string,
                "contextSize": .integer(minimum: 16, maximum: 131_072), "chunks": .integer(minimum: 1), "maxKLD": .number, "allowRequantize": .boolean,
            ], required: ["model"]), status: 202)
        ) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let spec = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            var quants = QuantLadderSpec.defaultQuants
            if let names = body["quants"] {
                let parsed = (names as? [String])?.compactMap(QuantType.init)
                guard let parsed, parsed.count == (names as? [String])?.count else {
                    throw OpenAIError.badRequest("quants must be a list of \(QuantType.all.map(\.name).joined(separator: ", "))", param: "quants")
                }
                quants = parsed
            }
            var maxKLD = 0.05
            if let v = body["maxKLD"] {
                guard let n = v as? NSNumber, !isJSONBool(n) else { throw OpenAIError.badRequest("maxKLD must be a number", param: "maxKLD") }
                maxKLD = n.doubleValue
            }
            let (text, source) = try await self.text(body)
            let contextSize = try Self.int(body, "contextSize", 512, 16...131_072)
            let chunks = body["chunks"] == nil ? nil : try Self.int(body, "chunks", 1, 1...1_000_000)
            let compatibility = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
            let job = try await mapped {
                try await lab.startQuantLadder(spec, quants: quants, text: text, source: source, contextSize: contextSize, chunks: chunks, maxKLD: maxKLD,
                                               allowRequantize: body["allowRequantize"] as? Bool ?? false, compatibility: compatibility)
            }
            return try Wire.response(job, status: .accepted)
        }
    }

    /// `GET /admin/benchmarks`: both kinds, each newest first.
    struct BenchmarkLists: Encodable {
        var benchmarks: [BenchmarkRun]
        var perplexity: [PerplexityRun]
    }

    // MARK: Tuning

    func registerTuning(on admin: AdminAPIGroup) {
        let session = ["id": "session id"]
        let ints = JSONSchema.array(.integer(minimum: 1))
        let space = JSONSchema.object([
            "contextSize": ints, "ubatch": ints, "threads": ints, "parallel": ints, "gpuLayers": .array(.integer(minimum: 0)),
            "flashAttention": .array(.boolean), "cacheType": .array(.enumeration(MemoryEstimator.CacheType.allCases.map(\.rawValue))),
        ])
        admin.post("tuning", .init("Start a tuning session (a job of kind tuning)", body: .object([
            "model": .string, "objective": .enumeration(TuningJob.objectives), "strategy": .enumeration(TuningJob.strategies), "space": space,
            "minContext": .integer(minimum: 1), "requests": .integer(minimum: 1), "concurrency": .integer(minimum: 1), "maxTokens": .integer(minimum: 1),
            "promptWords": .integer(minimum: 1), "maxCandidates": .integer(minimum: 1), "maxTrials": .integer(minimum: 1), "seed": .integer(minimum: 0),
            "maxSeconds": .number, "patience": .integer(minimum: 1), "repetitions": .integer(minimum: 1), "remeasureTop": .integer(minimum: 0),
            "weights": .object(["generationTPS": .number, "ttftMs": .number, "memoryMiB": .number, "throughputTPS": .number, "quality": .number]),
            "quality": .object(["evalRun": .string, "maxItems": .integer(minimum: 1), "text": .string, "contextSize": .integer(minimum: 8)]),
            "constraints": .object(["ttftP95Ms": .number, "memoryMiB": .number, "generationTPS": .number]),
        ], required: ["model"]), status: 202)) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let spec = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            var tuning = try Self.tuningRequest(body)
            if let raw = body["quality"], !(raw is NSNull) {
                guard let object = raw as? [String: Any] else { throw OpenAIError.badRequest("quality must be an object", param: "quality") }
                let request = try JSONDecoder().decode(TuningQualityRequest.self, from: try JSONSerialization.data(withJSONObject: object))
                tuning.quality = try await mapped { try await lab.tuningQuality(request) }
            }
            if (tuning.objective == .quality || (tuning.weights?["quality"] ?? 0) > 0) && tuning.quality == nil {
                throw OpenAIError.badRequest("the quality objective (or a quality weight) needs quality: {\"evalRun\": ID} or {\"text\": …}", param: "quality")
            }
            let compatibility = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
            let started = try await mapped { try await lab.startTuning(try TuningJob.plan(spec, tuning, compatibility: compatibility)) }
            return try Wire.response(started, status: .accepted)
        }
        admin.get("tuning", .init("Tuning sessions, newest first", query: [.init("model", .string)], errors: [])) { request, _ in
            try Wire.response(["sessions": try await mapped { try await lab.tuningSessions(model: request.uri.queryParameters.get("model")) }])
        }
        admin.get("tuning/{id}", .init("One session with its trials", path: session)) { _, context in
            let id = try context.parameters.require("id")
            guard let found = try await mapped({ try await lab.tuningSession(id) }) else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
            return try Wire.response(found)
        }
        admin.get("tuning/{id}/events", .events("The session's job events as server-sent events: `pruned` (each trial the plan ruled out, with the reason), `trial_started`, `trial` (measured), `new_best`, progress and state changes; replays from Last-Event-ID", path: session)) { request, context in
            let id = try context.parameters.require("id")
            guard try await mapped({ try await lab.tuningSession(id) }) != nil else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
            return try await JobRoutes.events(of: id, in: lab.engine, request: request)
        }
        // The winner becomes the model's runtime profile, used from its next spawn (unload to apply now).
        admin.post("tuning/{id}/apply", .init(
            "Use the winner: its llama-server settings as the model's runtime profile from its next spawn, its sampling parameters as a sampling profile (`profile`, default tuned-MODEL; requests use MODEL@PROFILE)",
            path: session, body: .object(["profile": .string]), errors: [404, 409])
        ) { request, context in
            let body = (try? await Relay.readJSON(request, context: context).1) ?? [:]
            let name = body["profile"] as? String
            if let name, !(1...64).contains(name.count) || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) {
                throw OpenAIError.badRequest("profile must be 1 to 64 letters, digits, '-' or '_'", param: "profile")
            }
            return try Wire.response(try await mapped { try await lab.apply(try context.parameters.require("id"), samplingProfile: name) })
        }
    }

    /// `maxSeconds`: a positive number, or absent.
    static func seconds(_ raw: Any?) throws -> Double? {
        guard let raw, !(raw is NSNull) else { return nil }
        guard let n = raw as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite, n.doubleValue > 0 else {
            throw OpenAIError.badRequest("maxSeconds must be a positive number", param: "maxSeconds")
        }
        return n.doubleValue
    }

    /// The tuning request in a POST body, validated.
    static func tuningRequest(_ body: [String: Any]) throws -> TuningSession.Request {
        guard let objective = TuningObjective(rawValue: body["objective"] as? String ?? TuningObjective.maxGenerationTPS.rawValue) else {
            throw OpenAIError.badRequest("objective must be one of \(TuningJob.objectives.joined(separator: ", "))", param: "objective")
        }
        guard let strategy = TuningStrategy(rawValue: body["strategy"] as? String ?? TuningStrategy.halving.rawValue) else {
            throw OpenAIError.badRequest("strategy must be one of \(TuningJob.strategies.joined(separator: ", "))", param: "strategy")
        }
        let space: TuningSession.Space
        do {
            space = try JSONDecoder().decode(TuningSession.Space.self, from: JSONSerialization.data(withJSONObject: body["space"] ?? [String: Any]()))
        } catch {
            throw OpenAIError.badRequest("space must map contextSize (or num_ctx), ubatch, threads, parallel, gpuLayers, top_k to integer lists, temperature, top_p, min_p, repeat_penalty to number lists, flashAttention to booleans and cacheType to f16/q8_0/… names", param: "space")
        }
        let ranges: [(String, [Int]?, ClosedRange<Int>)] = [
            ("contextSize", space.contextSize, 1...(1 << 28)), ("ubatch", space.ubatch, 1...65_536), ("threads", space.threads, 1...1024),
            ("parallel", space.parallel, 1...256), ("gpuLayers", space.gpuLayers, 0...10_000),
        ]
        for (name, values, range) in ranges where !(values ?? []).allSatisfy(range.contains) {
            throw OpenAIError.badRequest("space.\(name) values must be from \(range.lowerBound) to \(range.upperBound)", param: "space")
        }
        let counts: [Int?] = [space.contextSize?.count, space.ubatch?.count, space.flashAttention?.count, space.cacheType?.count,
                              space.threads?.count, space.parallel?.count, space.gpuLayers?.count] + space.samplingDimensions.map { $0.values.count }
        let combinations = counts.reduce(1) { $0 * max(1, min($1 ?? 1, 1000)) }
        guard combinations <= 4096 else {
            throw OpenAIError.badRequest("the space has \(combinations) combinations; at most 4096 (use strategy random with fewer values)", param: "space")
        }
        var constraints: TuningSession.Constraints?
        if let raw = body["constraints"], !(raw is NSNull) {
            guard let object = raw as? [String: Any] else { throw OpenAIError.badRequest("constraints must be an object", param: "constraints") }
            var c = TuningSession.Constraints()
            for (key, value) in object {
                guard let n = value as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite, n.doubleValue >= 0 else {
                    throw OpenAIError.badRequest("constraints.\(key) must be a non-negative number", param: "constraints")
                }
                switch key {
                case "ttftP95Ms": c.ttftP95Ms = n.doubleValue
                case "memoryMiB": c.memoryMiB = n.doubleValue
                case "generationTPS": c.generationTPS = n.doubleValue
                default: throw OpenAIError.badRequest("constraints are ttftP95Ms, memoryMiB and generationTPS; not \(key)", param: "constraints")
                }
            }
            constraints = c
        }
        var weights: [String: Double]?
        if let raw = body["weights"], !(raw is NSNull) {
            guard let object = raw as? [String: Any], !object.isEmpty else { throw OpenAIError.badRequest("weights must be an object of measure → weight", param: "weights") }
            var w: [String: Double] = [:]
            for (key, value) in object {
                guard TuningJob.weightedMeasures.contains(key) else {
                    throw OpenAIError.badRequest("weights are \(TuningJob.weightedMeasures.joined(separator: ", ")); not \(key)", param: "weights")
                }
                guard let n = value as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite, n.doubleValue >= 0 else {
                    throw OpenAIError.badRequest("weights.\(key) must be a non-negative number", param: "weights")
                }
                w[key] = n.doubleValue
            }
            weights = w
        }
        if objective == .weighted && weights == nil {
            throw OpenAIError.badRequest("the weighted objective needs weights (\(TuningJob.weightedMeasures.joined(separator: ", ")))", param: "weights")
        }
        return TuningSession.Request(
            objective: objective, strategy: strategy, space: space,
            minContext: body["minContext"] == nil ? nil : try int(body, "minContext", 0, 1...(1 << 24)),
            requests: try int(body, "requests", 4, 1...1000), concurrency: try int(body, "concurrency", 1, 1...256),
            maxTokens: try int(body, "maxTokens", 16, 1...4096), promptWords: try int(body, "promptWords", 32, 1...100_000),
            maxCandidates: try int(body, body["maxTrials"] != nil ? "maxTrials" : "maxCandidates", 24, 1...512), seed: UInt64(try int(body, "seed", 42, 0...Int.max)),
            constraints: constraints, maxSeconds: try seconds(body["maxSeconds"]),
            patience: body["patience"] == nil ? nil : try int(body, "patience", 0, 1...10_000),
            repetitions: try int(body, "repetitions", 1, 1...100), remeasureTop: try int(body, "remeasureTop", 0, 0...20), weights: weights)
    }
}
