import Crypto
import Files
import Foundation
import GGUF
import Jobs
import Library
import Runtime
import Serving
import Store

/// Benchmarks and tuning sessions as jobs on the engine, and the views `/admin/benchmarks` and
/// `/admin/tuning` show of them. The HTTP layer decodes, calls this, and encodes.
public struct Lab: Sendable {
    public let engine: JobEngine
    let scheduler: Scheduler
    let profiles: RuntimeProfiles
    /// Where the texts of perplexity runs are kept, by SHA-256.
    let textDirectory: String
    /// Where a tuning winner's sampling parameters are kept as a profile.
    let sampling: SamplingProfiles?
    let store: Store?

    /// The lab on `engine`, which must run ``BenchmarkJob``, ``PerplexityJob`` and ``TuningJob``.
    public init(engine: JobEngine, scheduler: Scheduler, store: Store?, textDirectory: String, sampling: SamplingProfiles? = nil) {
        self.engine = engine
        self.scheduler = scheduler
        self.profiles = RuntimeProfiles(store: store)
        self.textDirectory = textDirectory
        self.sampling = sampling
        self.store = store
    }

    // MARK: Benchmarks

    public func startBenchmark(_ spec: BenchmarkSpec) async throws -> BenchmarkRun {
        try BenchmarkRun(try await engine.submit(BenchmarkJob.self, spec))
    }

    /// Starts a speed benchmark of `model` (see ``benchmarked(_:)``).
    public func startBenchmark(_ model: String, _ parameters: BenchmarkParameters) async throws -> BenchmarkRun {
        try await startBenchmark(BenchmarkSpec(model: try await benchmarked(model).id, parameters: parameters))
    }

    /// The catalog's model named `name`; refused when there is none.
    func model(_ name: String) async throws(ServingError) -> ModelSpec {
        guard let spec = await scheduler.catalog.resolve(name) else { throw .modelNotFound(name) }
        return spec
    }

    /// A model a benchmark may measure: one of the catalog that generates text.
    func benchmarked(_ name: String) async throws -> ModelSpec {
        let spec = try await model(name)
        guard spec.facts?.capabilities.contains(.embedding) != true else {
            throw LabError.badRequest("'\(name)' is an embedding model; benchmarks generate text", param: "model")
        }
        return spec
    }

    /// A benchmark by id (nil when there is none, or the id is another kind's job).
    public func benchmark(_ id: String) async throws -> BenchmarkRun? {
        guard let job = try await engine.get(id), job.kind == BenchmarkJob.name else { return nil }
        return try BenchmarkRun(job)
    }

    /// Benchmarks newest first (running ones included), optionally of one model.
    public func benchmarks(model: String?, limit: Int = 100) async throws -> [BenchmarkRun] {
        try await engine.list(kind: BenchmarkJob.name, model: model, limit: limit).jobs.map(BenchmarkRun.init)
    }

    // MARK: Perplexity

    /// Starts a perplexity run of `model` (see ``benchmarked(_:)``) on the request's text (an
    /// uploaded file's from `files`), with the model's settings; the text is kept by its SHA-256
    /// for the run (and a rerun after a restart).
    public func startPerplexity(_ model: String, _ request: PerplexityRequest, files: FileLibrary?, compatibility: Compatibility) async throws -> PerplexityRun {
        let spec = try await benchmarked(model)
        let (path, sha256, source) = try await keep(request.text, files: files)
        let plan = try PerplexityJob.plan(spec, runtimeArguments: await scheduler.runtimeArguments[spec.id] ?? [], text: (path, sha256, source),
                                          contextSize: request.contextSize, chunks: request.chunks, compatibility: compatibility)
        return try PerplexityRun(try await engine.submit(PerplexityJob.self, plan))
    }

    /// Starts a quant ladder of the request's model on its text (see ``QuantLadderJob``).
    public func startQuantLadder(_ request: QuantLadderRequest, files: FileLibrary?, compatibility: Compatibility) async throws -> JobRecord {
        let spec = try await model(request.model)
        let (path, sha256, source) = try await keep(request.measure.text, files: files)
        let plan = try QuantLadderJob.plan(spec, runtimeArguments: await scheduler.runtimeArguments[spec.id] ?? [], quants: request.quants,
                                           text: (path, sha256, source), contextSize: request.measure.contextSize, chunks: request.measure.chunks,
                                           maxKLD: request.maxKLD, allowRequantize: request.allowRequantize, compatibility: compatibility)
        return try await engine.submit(QuantLadderJob.self, plan)
    }

    /// Keeps a request's text (inline, or an uploaded file's from `files`): its path, its
    /// SHA-256 and where it came from (`inline` or the file's id).
    func keep(_ text: LabText, files: FileLibrary?) async throws -> (path: String, sha256: String, source: String) {
        switch text {
        case .inline(let inline):
            let (path, sha256) = try keep(Data(inline.utf8))
            return (path, sha256, "inline")
        case .file(let id):
            guard let files else { throw LabError.badRequest("files need the store, which is off", param: "file_id") }
            let (path, sha256) = try keep(try await files.contents(id, scope: .all).1)
            return (path, sha256, id)
        }
    }

    /// Keeps a text for perplexity under the data directory by its SHA-256: its path and hash.
    func keep(_ text: Data) throws(LabError) -> (path: String, sha256: String) {
        guard !text.isEmpty else { throw LabError.badRequest("the text is empty", param: "text") }
        let sha256 = SHA256.hash(data: text).hex
        let path = textDirectory + "/" + sha256 + ".txt"
        do {
            try FileManager.default.createDirectory(atPath: textDirectory, withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: path) { try text.write(to: URL(fileURLWithPath: path), options: .atomic) }
        } catch {
            throw LabError.storage("the text cannot be kept in \(textDirectory): \(error.localizedDescription)")
        }
        return (path, sha256)
    }

    /// A tuning session's quality measure from its request: `{"evalRun": ID, "maxItems": N}` (the
    /// run's items, template, criteria, output length and seed; criteria judged by a model are
    /// not supported) or `{"text": …, "contextSize": N}` (perplexity of the text).
    public func tuningQuality(_ request: TuningQualityRequest) async throws -> TuningSession.Quality {
        var quality = TuningSession.Quality()
        if let run = request.evalRun {
            guard let job = try await engine.get(run), job.kind == EvalRunJob.name, var spec = try? job.spec.decode(EvalRunSpec.self) else {
                throw LabError.notFound("no evaluation run '\(run)'")
            }
            guard spec.model != nil, !spec.template.isEmpty else {
                throw LabError.badRequest("evaluation run '\(run)' has no completions template to ask a model with", param: "quality.evalRun")
            }
            if let judged = spec.criteria.first(where: { $0.type.isJudged }) {
                throw LabError.badRequest("criterion '\(judged.name)' is judged by a model, which tuning trials do not ask; use a run whose criteria are checks", param: "quality.evalRun")
            }
            if let document = spec.itemsDocument {
                guard let data = try await store?.document(kind: "eval-items", id: document) else { throw LabError.storage("the run's items are gone from the store") }
                spec.items = try JobCoding.decoder.decode([JobJSON].self, from: data)
            }
            let limit = request.maxItems ?? 50
            guard (1...1000).contains(limit) else { throw LabError.badRequest("quality.maxItems must be from 1 to 1000", param: "quality.maxItems") }
            quality.evalRun = run
            quality.items = Array(spec.items.prefix(limit))
            (quality.template, quality.criteria) = (spec.template, spec.criteria)
            (quality.maxTokens, quality.seed) = (spec.sampling.maxCompletionTokens, spec.sampling.seed)
        } else if let text = request.text {
            let (path, sha256) = try keep(Data(text.utf8))
            (quality.textPath, quality.textSHA256) = (path, sha256)
            let context = request.contextSize ?? 128
            guard (8...1_048_576).contains(context) else { throw LabError.badRequest("quality.contextSize must be from 8 to 1048576", param: "quality.contextSize") }
            quality.contextSize = context
        } else {
            throw LabError.badRequest("quality must name an evaluation run ({\"evalRun\": ID}) or a text ({\"text\": …})", param: "quality")
        }
        return quality
    }

    /// A perplexity run by id (nil when there is none, or the id is another kind's job).
    public func perplexityRun(_ id: String) async throws -> PerplexityRun? {
        guard let job = try await engine.get(id), job.kind == PerplexityJob.name else { return nil }
        return try PerplexityRun(job)
    }

    /// Perplexity runs newest first, optionally of one model.
    public func perplexityRuns(model: String?, limit: Int = 100) async throws -> [PerplexityRun] {
        try await engine.list(kind: PerplexityJob.name, model: model, limit: limit).jobs.map(PerplexityRun.init)
    }

    // MARK: Tuning

    public func startTuning(_ spec: TuningSpec) async throws -> TuningSession {
        try TuningSession(try await engine.submit(TuningJob.self, spec), appliedAt: nil)
    }

    /// Starts a tuning session of the request's model: its quality measure read (see
    /// ``tuningQuality(_:)``), the plan made for this machine.
    public func startTuning(_ request: TuningRequest, compatibility: Compatibility) async throws -> TuningSession {
        let spec = try await model(request.model)
        var tuning = request.session
        if let quality = request.quality { tuning.quality = try await tuningQuality(quality) }
        if (tuning.objective == .quality || (tuning.weights?["quality"] ?? 0) > 0) && tuning.quality == nil {
            throw LabError.badRequest("the quality objective (or a quality weight) needs quality: {\"evalRun\": ID} or {\"text\": …}", param: "quality")
        }
        return try await startTuning(try TuningJob.plan(spec, tuning, compatibility: compatibility))
    }

    public func tuningSession(_ id: String) async throws -> TuningSession? {
        guard let job = try await engine.get(id), job.kind == TuningJob.name else { return nil }
        return try TuningSession(job, appliedAt: await profiles.appliedAt(session: id))
    }

    public func tuningSessions(model: String?, limit: Int = 100) async throws -> [TuningSession] {
        var sessions: [TuningSession] = []
        for job in try await engine.list(kind: TuningJob.name, model: model, limit: limit).jobs {
            sessions.append(try TuningSession(job, appliedAt: await profiles.appliedAt(session: job.id)))
        }
        return sessions
    }

    /// Stores a finished session's winner: its llama-server settings as the model's runtime
    /// profile, used from its next spawn on (unload the model to apply it now), and its sampling
    /// parameters as the sampling profile `samplingProfile` (default `tuned-MODEL`; 1 to 64
    /// letters, digits, `-` or `_`), which requests use as `MODEL@PROFILE` or with `"profile"`.
    public func apply(_ id: String, samplingProfile: String? = nil) async throws -> RuntimeProfile {
        if let name = samplingProfile, !(1...64).contains(name.count) || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) {
            throw LabError.badRequest("profile must be 1 to 64 letters, digits, '-' or '_'", param: "profile")
        }
        guard let session = try await tuningSession(id) else { throw LabError.notFound("no tuning session '\(id)'") }
        guard session.state == .succeeded, let best = session.best else {
            throw LabError.conflict("session '\(id)' has no result to apply (status \(session.status))", code: "not_finished")
        }
        let winner = session.trials[best]
        var profile = RuntimeProfile(model: session.model, arguments: winner.arguments, session: id, appliedAt: Date())
        if let fields = winner.candidate.sampling, !fields.isEmpty {
            guard let sampling else { throw LabError.conflict("sampling profiles are not available here", code: "no_profiles") }
            let name = samplingProfile ?? "tuned-" + String(session.model.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "-" })
            try await sampling.put(name, fields: fields.mapValues { .number($0) })
            (profile.samplingProfile, profile.sampling) = (name, fields)
        }
        // A space of sampling dimensions only leaves the model's runtime profile as it was.
        if !winner.arguments.isEmpty || winner.candidate.sampling == nil {
            try await scheduler.setRuntimeArguments(session.model, winner.arguments)
            try await profiles.save(profile)
        }
        return profile
    }

    /// Gives the scheduler the tuned arguments applied before a restart (call before serving).
    public static func restoreRuntimeProfiles(store: Store, scheduler: Scheduler) async throws {
        for profile in try await RuntimeProfiles(store: store).load() {
            // A model gone from the catalog keeps its profile in the store for its return.
            try? await scheduler.setRuntimeArguments(profile.model, profile.arguments)
        }
    }

    /// Loads the applied profiles, so sessions show when their winner was applied.
    public func loadRuntimeProfiles() async throws { _ = try await profiles.load() }
}

/// Tuned runtime arguments per model, kept in the store.
actor RuntimeProfiles {
    let store: Store?
    var byModel: [String: RuntimeProfile] = [:]

    init(store: Store?) { self.store = store }

    func load() async throws -> [RuntimeProfile] {
        let profiles = try (try await store?.documents(kind: "runtime-profile", limit: 10_000) ?? []).map {
            try JobCoding.decoder.decode(RuntimeProfile.self, from: $0)
        }
        for p in profiles { byModel[p.model] = p }
        return profiles
    }

    func save(_ profile: RuntimeProfile) async throws {
        try await store?.putDocument(kind: "runtime-profile", id: profile.model, model: profile.model, body: JobCoding.encoder.encode(profile))
        byModel[profile.model] = profile
    }

    /// When the session's winner became its model's profile (nil unless it still is).
    func appliedAt(session: String) -> Date? {
        byModel.values.first { $0.session == session }?.appliedAt
    }
}

/// A tuning session's `quality` as the request gives it: an evaluation run (and how many of its
/// items) or a text for perplexity (and the tokens per chunk). A member of the wrong type reads
/// as absent, as it always has.
public struct TuningQualityRequest: Sendable, Codable, Equatable {
    public var evalRun: String?
    public var maxItems: Int?
    public var text: String?
    public var contextSize: Int?

    public init(evalRun: String? = nil, maxItems: Int? = nil, text: String? = nil, contextSize: Int? = nil) {
        (self.evalRun, self.maxItems, self.text, self.contextSize) = (evalRun, maxItems, text, contextSize)
    }

    enum CodingKeys: String, CodingKey { case evalRun, maxItems, text, contextSize }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        evalRun = (try? c.decodeIfPresent(String.self, forKey: .evalRun)) ?? nil
        maxItems = (try? c.decodeIfPresent(Int.self, forKey: .maxItems)) ?? nil
        text = (try? c.decodeIfPresent(String.self, forKey: .text)) ?? nil
        contextSize = (try? c.decodeIfPresent(Int.self, forKey: .contextSize)) ?? nil
    }
}
