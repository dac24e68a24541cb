import AsyncHTTPClient
import Foundation
import GGUF
import Jobs
import Library
import NIOCore
import NIOHTTP1
import Runtime
import Serving

/// Why a lab request was refused.
public enum LabError: Error, Sendable, Equatable {
    case badRequest(String, param: String)
    case notFound(String)
    /// The request conflicts with the job's state (`code` says how).
    case conflict(String, code: String)
    /// What the lab keeps on disk or in the store could not be written or read.
    case storage(String)
}

/// A tuning session: which llama-server settings make a model fastest (or smallest) here.
public struct TuningSession: Sendable, Codable {
    /// The values to try; every combination is a candidate.
    public struct Space: Sendable, Codable, Equatable {
        public var contextSize: [Int]?
        public var ubatch: [Int]?
        public var flashAttention: [Bool]?
        public var cacheType: [MemoryEstimator.CacheType]?
        public var threads: [Int]?
        public var parallel: [Int]?
        public var gpuLayers: [Int]?
        /// Sampling dimensions: trials that differ only in these share one llama-server.
        public var temperature: [Double]?
        public var topP: [Double]?
        public var topK: [Int]?
        public var minP: [Double]?
        public var repeatPenalty: [Double]?

        enum CodingKeys: String, CodingKey {
            case contextSize, ubatch, flashAttention, cacheType, threads, parallel, gpuLayers, temperature
            case topP = "top_p", topK = "top_k", minP = "min_p", repeatPenalty = "repeat_penalty", numCtx = "num_ctx"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            contextSize = try c.decodeIfPresent([Int].self, forKey: .contextSize)
            // Ollama's name for the context size.
            if let numCtx = try c.decodeIfPresent([Int].self, forKey: .numCtx) { contextSize = (contextSize ?? []) + numCtx }
            ubatch = try c.decodeIfPresent([Int].self, forKey: .ubatch)
            flashAttention = try c.decodeIfPresent([Bool].self, forKey: .flashAttention)
            cacheType = try c.decodeIfPresent([MemoryEstimator.CacheType].self, forKey: .cacheType)
            threads = try c.decodeIfPresent([Int].self, forKey: .threads)
            parallel = try c.decodeIfPresent([Int].self, forKey: .parallel)
            gpuLayers = try c.decodeIfPresent([Int].self, forKey: .gpuLayers)
            temperature = try c.decodeIfPresent([Double].self, forKey: .temperature)
            topP = try c.decodeIfPresent([Double].self, forKey: .topP)
            topK = try c.decodeIfPresent([Int].self, forKey: .topK)
            minP = try c.decodeIfPresent([Double].self, forKey: .minP)
            repeatPenalty = try c.decodeIfPresent([Double].self, forKey: .repeatPenalty)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encodeIfPresent(contextSize, forKey: .contextSize)
            try c.encodeIfPresent(ubatch, forKey: .ubatch)
            try c.encodeIfPresent(flashAttention, forKey: .flashAttention)
            try c.encodeIfPresent(cacheType, forKey: .cacheType)
            try c.encodeIfPresent(threads, forKey: .threads)
            try c.encodeIfPresent(parallel, forKey: .parallel)
            try c.encodeIfPresent(gpuLayers, forKey: .gpuLayers)
            try c.encodeIfPresent(temperature, forKey: .temperature)
            try c.encodeIfPresent(topP, forKey: .topP)
            try c.encodeIfPresent(topK, forKey: .topK)
            try c.encodeIfPresent(minP, forKey: .minP)
            try c.encodeIfPresent(repeatPenalty, forKey: .repeatPenalty)
        }

        public init(contextSize: [Int]? = nil, ubatch: [Int]? = nil, flashAttention: [Bool]? = nil, cacheType: [MemoryEstimator.CacheType]? = nil,
                    threads: [Int]? = nil, parallel: [Int]? = nil, gpuLayers: [Int]? = nil) {
            (self.contextSize, self.ubatch, self.flashAttention, self.cacheType) = (contextSize, ubatch, flashAttention, cacheType)
            (self.threads, self.parallel, self.gpuLayers) = (threads, parallel, gpuLayers)
        }

        /// The sampling dimensions by request field name, with their values.
        public var samplingDimensions: [(field: String, values: [Double])] {
            [("temperature", temperature), ("top_p", topP), ("top_k", topK?.map(Double.init)), ("min_p", minP), ("repeat_penalty", repeatPenalty)]
                .compactMap { name, values in values.flatMap { $0.isEmpty ? nil : (name, $0) } }
        }

        /// Every combination (at most `limit`), in a stable order (sampling innermost, so
        /// consecutive candidates share their llama-server settings).
        public func candidates(limit: Int) -> [Candidate] {
            var out = [Candidate()]
            func expand<T>(_ values: [T]?, _ set: (inout Candidate, T) -> Void) {
                guard let values, !values.isEmpty else { return }
                out = out.flatMap { c in values.map { v in var n = c; set(&n, v); return n } }
            }
            expand(contextSize) { $0.contextSize = $1 }
            expand(ubatch) { $0.ubatch = $1 }
            expand(flashAttention) { $0.flashAttention = $1 }
            expand(cacheType) { $0.cacheType = $1 }
            expand(threads) { $0.threads = $1 }
            expand(parallel) { $0.parallel = $1 }
            expand(gpuLayers) { $0.gpuLayers = $1 }
            for (field, values) in samplingDimensions {
                expand(values) { $0.sampling = ($0.sampling ?? [:]).merging([field: $1]) { _, new in new } }
            }
            return Array(out.prefix(limit))
        }
    }

    public struct Request: Sendable, Codable, Equatable {
        public var objective: TuningObjective
        public var strategy: TuningStrategy
        public var space: Space
        public var minContext: Int?
        /// Requests in a first-round trial (halving doubles it each round).
        public var requests: Int
        public var concurrency: Int
        public var maxTokens: Int
        public var promptWords: Int
        public var maxCandidates: Int
        public var seed: UInt64
        /// Limits a trial must keep to count at all (one that breaks one is `infeasible`, not
        /// merely scored low).
        public var constraints: Constraints?
        /// The session stops starting trials after this long (the trial running finishes).
        public var maxSeconds: Double?
        /// The session stops when this many measured trials in a row did not beat the best.
        public var patience: Int?
        /// The `weighted` objective's weight per measure (``TuningJob/weightedMeasures``).
        public var weights: [String: Double]?
        /// What the `quality` objective (and a `quality` weight) measures per trial.
        public var quality: Quality?
        /// Load runs per trial on its llama-server, each measure kept with its 95 % interval.
        public var repetitions: Int = 1
        /// The best this many trials are measured again at the end, with `max(3, 2 × repetitions)`
        /// more runs each, and the winner chosen among them on all their runs (0: none).
        public var remeasureTop: Int = 0

        public init(objective: TuningObjective, strategy: TuningStrategy, space: Space, minContext: Int?, requests: Int, concurrency: Int, maxTokens: Int,
                    promptWords: Int, maxCandidates: Int, seed: UInt64, constraints: Constraints? = nil, maxSeconds: Double? = nil, patience: Int? = nil,
                    repetitions: Int = 1, remeasureTop: Int = 0, weights: [String: Double]? = nil, quality: Quality? = nil) {
            (self.weights, self.quality) = (weights, quality)
            (self.objective, self.strategy, self.space, self.minContext, self.constraints) = (objective, strategy, space, minContext, constraints)
            (self.maxSeconds, self.patience, self.repetitions, self.remeasureTop) = (maxSeconds, patience, repetitions, remeasureTop)
            (self.requests, self.concurrency, self.maxTokens, self.promptWords, self.maxCandidates, self.seed) =
                (requests, concurrency, maxTokens, promptWords, maxCandidates, seed)
        }
    }

    /// A trial's quality: the pass rate of an evaluation run's items asked of the trial's
    /// llama-server with the trial's sampling (higher is better), or the perplexity of a text by
    /// `llama-perplexity` with the trial's llama-server settings (lower is better).
    public struct Quality: Sendable, Codable, Equatable {
        /// The evaluation run the items, template, criteria, output length and seed come from.
        public var evalRun: String?
        public var items: [JobJSON] = []
        public var template: [EvalTemplateMessage] = []
        public var criteria: [Grader] = []
        public var maxTokens: Int?
        public var seed: Int?
        /// The text (kept by its SHA-256) and the tokens per chunk, for perplexity.
        public var textPath: String?
        public var textSHA256: String?
        public var contextSize: Int?

        public init() {}

        public var isPerplexity: Bool { textPath != nil }
    }

    /// `ttftP95Ms ≤ X`, `memoryMiB ≤ Y`, `generationTPS ≥ Z` (any of them).
    public struct Constraints: Sendable, Codable, Equatable {
        public var ttftP95Ms: Double?
        public var memoryMiB: Double?
        public var generationTPS: Double?

        public init(ttftP95Ms: Double? = nil, memoryMiB: Double? = nil, generationTPS: Double? = nil) {
            (self.ttftP95Ms, self.memoryMiB, self.generationTPS) = (ttftP95Ms, memoryMiB, generationTPS)
        }

        /// What a measured trial breaks, in words (nil when it keeps every limit).
        func broken(by result: LoadResult, memoryMiB measured: Double?) -> String? {
            var broken: [String] = []
            if let limit = ttftP95Ms, let v = result.timeToFirstTokenMs.p95, v > limit { broken.append(String(format: "time to first token p95 %.1f ms > %.1f", v, limit)) }
            if let limit = memoryMiB, let v = measured, v > limit { broken.append(String(format: "memory %.0f MiB > %.0f", v, limit)) }
            if let limit = generationTPS {
                let v = result.generationTokensPerSecond.p50 ?? 0
                if v < limit { broken.append(String(format: "generation %.1f tokens/s < %.1f", v, limit)) }
            }
            return broken.isEmpty ? nil : broken.joined(separator: "; ")
        }
    }

    public struct Candidate: Sendable, Codable, Equatable {
        public var contextSize: Int?
        public var ubatch: Int?
        public var flashAttention: Bool?
        public var cacheType: MemoryEstimator.CacheType?
        public var threads: Int?
        public var parallel: Int?
        public var gpuLayers: Int?
        /// Request sampling fields (`temperature`, `top_p`, `top_k`, `min_p`, `repeat_penalty`).
        public var sampling: [String: Double]?

        /// llama-server flags for these settings.
        public var arguments: [String] {
            var a: [String] = []
            if let contextSize { a += ["-c", String(contextSize)] }
            if let ubatch { a += ["-ub", String(ubatch), "-b", String(max(ubatch, 2048))] }
            if let flashAttention { a += ["-fa", flashAttention ? "on" : "off"] }
            if let cacheType { a += ["-ctk", cacheType.rawValue, "-ctv", cacheType.rawValue] }
            if let threads { a += ["-t", String(threads)] }
            if let parallel { a += ["-np", String(parallel)] }
            if let gpuLayers { a += ["-ngl", String(gpuLayers)] }
            return a
        }
    }

    public struct Trial: Sendable, Codable {
        public var index: Int
        public var candidate: Candidate
        public var arguments: [String]
        public var status: TrialStatus
        public var reason: String?
        public var round: Int
        public var result: LoadResult?
        public var memoryMiB: Double?
        public var estimatedMiB: Int?
        /// The estimate per device, claimed from the scheduler while the trial runs.
        public var estimatedDeviceMiB: [String: Int]?
        public var score: Double?
        /// Each load run's measures and their 95 % intervals, when the session repeats runs.
        public var measures: Measures?
        /// Whether the trial was measured again at the end among the best.
        public var remeasured: Bool?
        /// `launched` (its own llama-server) or `reused` (the previous trial's: only sampling differed).
        public var server: String?
        /// The evaluation pass rate (0–1) or the text's perplexity, with the `quality` objective.
        public var quality: Double?
        /// How the quality was measured: `passed of total items`, or `PPL ± error over chunks`.
        public var qualityDetail: String?

        /// Median generation speed: the mean over repetitions when there are several.
        var generationTPS: Double? { measures?.generationTPS.mean ?? result?.generationTokensPerSecond.p50 }
        var ttftMs: Double? { measures?.ttftMs.mean ?? result?.timeToFirstTokenMs.p50 }
        var throughputTPS: Double? { measures?.throughputTPS.mean ?? result?.throughputTokensPerSecond }
    }

    /// One load run of a trial.
    public struct Repetition: Sendable, Codable, Equatable {
        public var generationTPS: Double
        public var ttftMs: Double
        public var throughputTPS: Double
    }

    /// A mean with its 95 % confidence interval (Student's t) over `n` repetitions.
    public struct Interval: Sendable, Codable, Equatable {
        public var mean: Double
        public var low: Double
        public var high: Double
        public var n: Int

        public init(_ values: [Double]) {
            let average = values.isEmpty ? 0 : values.reduce(0, +) / Double(values.count)
            var half = 0.0
            if values.count > 1 {
                let sd = (values.map { ($0 - average) * ($0 - average) }.reduce(0, +) / Double(values.count - 1)).squareRoot()
                half = Self.t975(degreesOfFreedom: values.count - 1) * sd / Double(values.count).squareRoot()
            }
            (n, mean, low, high) = (values.count, average, average - half, average + half)
        }

        /// Student's t quantile at 0.975.
        static func t975(degreesOfFreedom df: Int) -> Double {
            let table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
            return df >= 1 && df <= table.count ? table[df - 1] : 1.96
        }
    }

    /// A trial's repetitions and the interval of each measure.
    public struct Measures: Sendable, Codable, Equatable {
        public var repetitions: [Repetition]
        public var generationTPS: Interval
        public var ttftMs: Interval
        public var throughputTPS: Interval

        public init(_ repetitions: [Repetition]) {
            self.repetitions = repetitions
            generationTPS = Interval(repetitions.map(\.generationTPS))
            ttftMs = Interval(repetitions.map(\.ttftMs))
            throughputTPS = Interval(repetitions.map(\.throughputTPS))
        }
    }

    public var id: String
    public var model: String
    public var createdAt: Date
    /// queued, running, paused, done, failed, cancelled, interrupted.
    public var status: String
    public var state: JobState
    public var request: Request
    public var trials: [Trial]
    public var best: Int?
    /// Measured trials no other beats on every measure (generation speed, time to first token,
    /// memory): the trade-offs to choose from.
    public var pareto: [Int]?
    /// Why the session stopped before its trial budget (time, patience), when it did.
    public var stoppedEarly: String?
    public var appliedAt: Date?
    public var error: String?
}

/// A tuning job's spec: the model, its file, the request, and the trials planned at submission
/// (candidates with the estimator's verdict).
public struct TuningSpec: Sendable, Codable {
    public var model: String
    public var path: String
    public var request: TuningSession.Request
    public var trials: [TuningSession.Trial]
}

/// What a tuning job keeps as it runs (its detail) and ends with (its result).
public struct TuningProgress: Sendable, Codable {
    public var trials: [TuningSession.Trial]
    public var best: Int?
    public var pareto: [Int]? = nil
    public var stoppedEarly: String? = nil
}

/// The llama-server of the trial before, kept while the next trials differ only in sampling;
/// used by one session's task only. Its memory claim is given back when it stops.
final class TrialServer {
    var instance: ModelInstance?
    var arguments: [String]?
    /// Perplexity by the settings llama-perplexity shares with llama-server (sampling does not
    /// change it, so trials that differ only in sampling measure it once).
    var perplexity: [[String]: (value: Double, detail: String)] = [:]

    func stop(context: JobContext) async {
        guard let instance else { return }
        _ = await instance.process.stop(grace: .seconds(2))
        (self.instance, arguments) = (nil, nil)
        await context.releaseMemory()
    }
}

/// What follows a session as it runs: when its time or patience is spent, and which trial is the
/// best so far (by the objective's absolute score), announcing each new best.
struct SessionWatch {
    let started = ContinuousClock.now
    let request: TuningSession.Request
    var bestScore: Double?
    var sinceImprovement = 0

    init(_ request: TuningSession.Request) { self.request = request }

    /// Records a measured trial; true when it is the best so far.
    mutating func measured(_ trial: TuningSession.Trial) -> Bool {
        guard let score = TuningJob.absoluteScore(trial, objective: request.objective, weights: request.weights) else {
            sinceImprovement += 1
            return false
        }
        if bestScore.map({ score > $0 }) ?? true {
            bestScore = score
            sinceImprovement = 0
            return true
        }
        sinceImprovement += 1
        return false
    }

    /// Why no further trial should start (nil: go on).
    var stop: String? {
        if let limit = request.maxSeconds, (ContinuousClock.now - started).inSeconds >= limit {
            return String(format: "maxSeconds: %.0f s spent", limit)
        }
        if let patience = request.patience, sinceImprovement >= patience {
            return "patience: \(patience) measured trials in a row did not beat the best"
        }
        return nil
    }
}

/// Plans and runs tuning sessions: enumerate candidates, prune what the estimator says cannot
/// fit (or breaks a constraint), run each remaining candidate as a real llama-server with a
/// short load, and keep the best by the objective, with successive halving (cheap trials first,
/// longer ones for the survivors). Each trial claims its estimated memory from the scheduler
/// while it runs. Pausable between trials; a restart interrupts it with its finished trials kept.
public struct TuningJob: JobKind {
    public static let name = "tuning"
    public static let idPrefix = "tune"
    public static let objectives = TuningObjective.allCases.map(\.rawValue)
    /// The measures a `weighted` objective weighs (higher generation and throughput, lower first
    /// token and memory are better).
    public static let weightedMeasures = ["generationTPS", "ttftMs", "memoryMiB", "throughputTPS", "quality"]
    public static let strategies = TuningStrategy.allCases.map(\.rawValue)

    let tools: LlamaTools
    /// Starts and watches the trials' llama-servers (process control, not asking).
    let client: HTTPClient
    /// Asks a trial's llama-server (outside the fleet) by its base URL: the load and the quality probes.
    let trialClient: @Sendable (_ baseURL: String) -> any ModelClient

    public init(tools: LlamaTools, client: HTTPClient, trialClient: @escaping @Sendable (_ baseURL: String) -> any ModelClient) {
        self.tools = tools
        self.client = client
        self.trialClient = trialClient
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 1, pausable: true, restart: .interrupt, keepFinished: 200) }

    public func model(of spec: TuningSpec) -> String? { spec.model }

    /// The trials of a session: the candidates (shuffled for `random`, at most `maxCandidates`),
    /// each pruned when the estimator says it cannot fit or it breaks `minContext`.
    public static func plan(_ spec: ModelSpec, _ request: TuningSession.Request, compatibility: Compatibility) throws(LabError) -> TuningSpec {
        guard let facts = spec.facts, let path = spec.path else { throw .badRequest("'\(spec.id)' is not a local GGUF model", param: "model") }
        var all = request.space.candidates(limit: 10_000)
        if request.strategy == .random {
            var rng = SplitMix64(seed: request.seed)
            all.shuffle(using: &rng)
        }
        // Adaptive strategies choose among every candidate; `maxCandidates` is their trial budget.
        if !request.strategy.isAdaptive { all = Array(all.prefix(request.maxCandidates)) }
        guard !all.isEmpty else { throw .badRequest("the search space is empty", param: "space") }
        var trials: [TuningSession.Trial] = []
        for (i, c) in all.enumerated() {
            var t = TuningSession.Trial(index: i, candidate: c, arguments: c.arguments, status: .pending, round: 0)
            var s = MemoryEstimator.Settings()
            s.contextSize = c.contextSize ?? spec.contextSize ?? min(facts.contextLength ?? 4096, 8192)
            s.parallel = c.parallel ?? spec.parallel
            s.ubatch = c.ubatch ?? 512
            s.flashAttention = c.flashAttention ?? true
            s.cacheTypeK = c.cacheType ?? .f16
            s.cacheTypeV = c.cacheType ?? .f16
            s.gpuLayers = c.gpuLayers
            let (verdict, estimate) = compatibility.assess(facts, s)
            t.estimatedMiB = Int(estimate.total / 1_048_576)
            t.estimatedDeviceMiB = Dictionary(estimate.devices.map { ($0.name, Int(($0.total + 1_048_575) / 1_048_576)) }, uniquingKeysWith: +)
            if let min = request.minContext, estimate.contextSize < min {
                t.status = .pruned
                t.reason = "context \(estimate.contextSize) is below the required \(min)"
            } else if let problem = MemoryEstimator.cacheProblem(facts, s) {
                t.status = .pruned
                t.reason = problem
            } else if verdict == .doesNotFit {
                t.status = .pruned
                t.reason = "estimator: needs \(t.estimatedMiB!) MiB, \(compatibility.available["Host"].map { $0 >> 20 } ?? 0) MiB available"
            }
            trials.append(t)
        }
        return TuningSpec(model: spec.id, path: path, request: request, trials: trials)
    }

    public func run(_ spec: TuningSpec, context: JobContext) async throws -> TuningProgress {
        guard let serverPath = tools.server?.path else { throw JobError("no_llama_server", "llama-server not found") }
        let server = TrialServer()
        do {
            let outcome = spec.request.strategy.isAdaptive
                ? try await runAdaptive(spec, serverPath: serverPath, context: context, server: server)
                : try await runRounds(spec, serverPath: serverPath, context: context, server: server)
            await server.stop(context: context)
            return outcome
        } catch {
            await server.stop(context: context)
            throw error
        }
    }

    /// Grid, random and halving: every pending candidate per round (halving keeps the better
    /// half for a round with twice the work).
    private func runRounds(_ spec: TuningSpec, serverPath: String, context: JobContext, server: TrialServer) async throws -> TuningProgress {
        var state = TuningProgress(trials: spec.trials, best: nil)
        try await context.detail(state)
        try await Self.announcePruned(state, context: context)
        let request = spec.request
        var watch = SessionWatch(request)
        var alive = state.trials.filter { $0.status == .pending }.map(\.index)
        var round = 0
        var finished = 0
        rounds: while !alive.isEmpty {
            // Halving: every survivor runs with twice the previous round's work; others run once.
            let scale = request.strategy == .halving ? 1 << round : 1
            for index in alive {
                if let why = watch.stop {
                    state.stoppedEarly = why
                    alive = alive.filter { state.trials[$0].status == .done }
                    break rounds
                }
                try await context.pausePoint()
                state.trials[index].status = .running
                state.trials[index].round = round
                try await context.detail(state)
                try await context.event("trial_started", state.trials[index])
                state.trials[index] = try await runTrial(state.trials[index], spec: spec, serverPath: serverPath,
                                                         requests: request.requests * scale, maxTokens: request.maxTokens * scale, context: context,
                                                         server: server)
                finished += 1
                try await context.event("trial", state.trials[index])
                if watch.measured(state.trials[index]) { try await context.event("new_best", state.trials[index]) }
                try await context.progress(Double(finished), message: "round \(round + 1): trial \(index) \(state.trials[index].status)")
                try await context.detail(state)
            }
            Self.score(&state.trials, alive, objective: request.objective, weights: request.weights)
            let ranked = alive.filter { state.trials[$0].status == .done }
                .sorted { (state.trials[$0].score ?? -.infinity) > (state.trials[$1].score ?? -.infinity) }
            guard request.strategy == .halving, ranked.count > 1 else {
                state.best = ranked.first
                break
            }
            let keep = Array(ranked.prefix((ranked.count + 1) / 2))
            for index in ranked where !keep.contains(index) {
                state.trials[index].status = .eliminated
                state.trials[index].reason = "lost round \(round + 1)"
            }
            alive = keep
            round += 1
            try await context.detail(state)
            if keep.count == 1 {
                state.best = keep.first
                break
            }
        }
        if state.stoppedEarly != nil {
            // Stopped mid-round: the best of what was measured.
            Self.score(&state.trials, alive, objective: request.objective, weights: request.weights)
            state.best = alive.max { (state.trials[$0].score ?? -.infinity) < (state.trials[$1].score ?? -.infinity) }
            for i in state.trials.indices where state.trials[i].status == .pending {
                state.trials[i].status = .skipped
                state.trials[i].reason = state.stoppedEarly
            }
        }
        try await remeasureTop(&state, spec: spec, serverPath: serverPath, context: context, server: server)
        state.pareto = Self.paretoFront(state.trials)
        try await context.detail(state)
        guard state.best != nil else { throw Self.noBest(state) }
        return state
    }

    /// Asks every item of an evaluation run's set (its template, output length and seed, the
    /// trial's sampling) of the trial's server and grades the answers with the run's criteria:
    /// the evaluation run's own asking and grading (``EvalAsking``, ``EvalGrading``). A request
    /// that fails, an item whose template cannot be rendered or a criterion that cannot grade is
    /// an error of the probe, never a wrong answer: the trial fails with the reason.
    public static func passRate(_ quality: TuningSession.Quality, model: String, client: any ModelClient, sampling: [String: Double]?) async throws -> (passed: Int, total: Int) {
        let origin = ModelCallOrigin(priority: .background, route: "/admin/tuning")
        let asking = EvalAsking(client: client, model: model, template: quality.template, sampling: sampling ?? [:],
                                maxTokens: quality.maxTokens, seed: quality.seed, origin: origin)
        // Tuning asks no judges (a run with judged criteria is refused when the session starts).
        let grading = EvalGrading(criteria: quality.criteria, judges: nil, origin: origin)
        var passed = 0
        for (index, entry) in quality.items.enumerated() {
            var item = JobJSON.object([:])
            if case .object? = entry["item"] { item = entry["item"]! }
            var answer = try await asking.ask(item)
            let grade = try await grading.grade(item, &answer)
            if let error = answer.error { throw QualityProbeFailure(description: "quality item \(index): \(error.code): \(error.message)") }
            if grade.status == "pass" { passed += 1 }
        }
        return (passed, quality.items.count)
    }

    /// The quality text's perplexity with the trial's llama-server settings: measured once per
    /// settings, with the trial's server stopped (its memory given back) while the tool runs.
    func measurePerplexity(_ quality: TuningSession.Quality, trial: inout TuningSession.Trial, spec: TuningSpec, server: TrialServer,
                           context: JobContext) async throws {
        let shared = PerplexityJob.sharedArguments(trial.arguments)
        if server.perplexity[shared] == nil {
            guard let tool = tools.perplexity?.path, let text = quality.textPath else {
                trial.qualityDetail = "llama-perplexity not found"
                return
            }
            await server.stop(context: context)
            try await context.claimMemory(trial.estimatedDeviceMiB ?? [:])
            do {
                let outcome = try await PerplexityJob.measure(tool: tool, model: spec.path, textPath: text, contextSize: quality.contextSize ?? 128,
                                                              chunks: nil, arguments: shared) { _, _ in }
                server.perplexity[shared] = (outcome.perplexity, String(format: "PPL %.4f ± %.4f over %d chunks", outcome.perplexity, outcome.error, outcome.chunks))
            } catch is CancellationError {
                await context.releaseMemory()
                throw CancellationError()
            } catch {
                trial.qualityDetail = "perplexity: \(error)"
            }
            await context.releaseMemory()
        }
        if let measured = server.perplexity[shared] { (trial.quality, trial.qualityDetail) = (measured.value, measured.detail) }
    }

    /// Measures the best `remeasureTop` trials again with `max(3, 2 × repetitions)` more runs
    /// each (a `remeasured` event apiece) and makes the best of them on all their runs the
    /// winner, so a lucky draw does not win.
    func remeasureTop(_ state: inout TuningProgress, spec: TuningSpec, serverPath: String, context: JobContext, server: TrialServer) async throws {
        let request = spec.request
        guard request.remeasureTop > 0 else { return }
        let ranked = state.trials.indices.filter { state.trials[$0].status == .done }
            .compactMap { i in Self.absoluteScore(state.trials[i], objective: request.objective, weights: request.weights).map { (i, $0) } }
            .sorted { $0.1 > $1.1 }.prefix(request.remeasureTop).map(\.0)
        guard ranked.count > 1 else { return }
        for index in ranked {
            try await context.pausePoint()
            if state.trials[index].measures == nil, let r = state.trials[index].result, let g = r.generationTokensPerSecond.p50, let f = r.timeToFirstTokenMs.p50 {
                state.trials[index].measures = TuningSession.Measures([.init(generationTPS: g, ttftMs: f, throughputTPS: r.throughputTokensPerSecond)])
            }
            let again = try await runTrial(state.trials[index], spec: spec, serverPath: serverPath, requests: request.requests,
                                           maxTokens: request.maxTokens, context: context, repetitions: max(3, 2 * request.repetitions), server: server)
            guard again.status == .done else { continue }
            state.trials[index] = again
            state.trials[index].remeasured = true
            state.trials[index].score = Self.absoluteScore(again, objective: request.objective, weights: request.weights)
            try await context.event("remeasured", state.trials[index])
            try await context.detail(state)
        }
        let remeasured = ranked.filter { state.trials[$0].remeasured == true }
        if let best = remeasured.max(by: { (state.trials[$0].score ?? -.infinity) < (state.trials[$1].score ?? -.infinity) }) {
            state.best = best
        }
    }

    /// A `pruned` event for each trial the plan ruled out (estimator, minimum context, KV rules).
    static func announcePruned(_ state: TuningProgress, context: JobContext) async throws {
        for trial in state.trials where trial.status == .pruned { try await context.event("pruned", trial) }
    }

    /// The measured trials no other trial beats on all three of generation speed (higher),
    /// time to first token and memory (lower) while being better on one: index order.
    static func paretoFront(_ trials: [TuningSession.Trial]) -> [Int] {
        let points: [(Int, [Double])] = trials.compactMap { t in
            guard t.status == .done, let g = t.generationTPS, let f = t.ttftMs else { return nil }
            var measures = [-g, f, t.memoryMiB ?? Double(t.estimatedMiB ?? 0)]
            // With a quality objective, quality is a fourth measure (a pass rate up, a perplexity down).
            if let q = t.quality { measures.append(t.qualityDetail?.hasPrefix("PPL") == true ? q : -q) }
            return (t.index, measures)
        }
        return points.filter { p in
            !points.contains { q in q.0 != p.0 && zip(q.1, p.1).allSatisfy { $0 <= $1 } && zip(q.1, p.1).contains { $0 < $1 } }
        }.map(\.0)
    }

    /// Why a session has no winner: nothing completed, or nothing kept the constraints.
    static func noBest(_ state: TuningProgress) -> JobError {
        state.trials.contains { $0.status == .infeasible }
            ? JobError("infeasible", "no candidate kept the constraints (\(state.trials.filter { $0.status == .infeasible }.count) measured and broke them)")
            : JobError("failed", "no candidate completed")
    }

    /// One candidate as a real llama-server outside the fleet, with its estimated memory claimed
    /// from the scheduler while it runs.
    private func runTrial(_ trial: TuningSession.Trial, spec: TuningSpec, serverPath: String, requests: Int, maxTokens: Int, context: JobContext,
                          repetitions: Int? = nil, server: TrialServer) async throws -> TuningSession.Trial
    {
        var trial = trial
        let request = spec.request
        let instance: ModelInstance
        if let running = server.instance, server.arguments == trial.arguments {
            // Only sampling differs from the trial before: the same llama-server answers.
            instance = running
            trial.server = "reused"
        } else {
            await server.stop(context: context)
            try await context.claimMemory(trial.estimatedDeviceMiB ?? [:])
            do {
                instance = try await ModelInstance.launch(modelID: spec.model, serverPath: serverPath, arguments: ["-m", spec.path] + trial.arguments,
                                                          client: client, timeout: .seconds(120))
            } catch {
                await context.releaseMemory()
                try Task.checkCancellation()
                trial.status = .failed
                trial.reason = "\(error)"
                return trial
            }
            (server.instance, server.arguments) = (instance, trial.arguments)
            trial.server = "launched"
        }
        let runner = LoadRunner(BenchmarkParameters(
            requests: requests, concurrency: request.concurrency, promptWords: request.promptWords, maxTokens: maxTokens, sampling: trial.candidate.sampling))
        let trialClient = self.trialClient(instance.baseURL)
        let runs = max(1, repetitions ?? request.repetitions)
        var first: LoadResult?
        var measured: [TuningSession.Repetition] = []
        for _ in 0..<runs {
            let run = await runner.run(
                model: spec.model, client: trialClient, origin: ModelCallOrigin(priority: .background, route: "/admin/tuning"),
                beforeEach: { try Task.checkCancellation() })
            if first == nil { first = run }
            if run.errors < run.requests, let g = run.generationTokensPerSecond.p50, let f = run.timeToFirstTokenMs.p50 {
                measured.append(.init(generationTPS: g, ttftMs: f, throughputTPS: run.throughputTokensPerSecond))
            }
            if Task.isCancelled { break }
        }
        let result = first!
        if let quality = request.quality, quality.isPerplexity, result.errors < result.requests {
            try await measurePerplexity(quality, trial: &trial, spec: spec, server: server, context: context)
        }
        if runs > 1 || repetitions != nil {
            let earlier = repetitions != nil ? trial.measures?.repetitions ?? [] : []
            trial.measures = TuningSession.Measures(earlier + measured)
        }
        trial.memoryMiB = instance.allocatedMiB.values.reduce(0, +)
        if Task.isCancelled { await server.stop(context: context) }
        try Task.checkCancellation()
        var probeFailure: QualityProbeFailure?
        if let quality = request.quality, !quality.isPerplexity, first.map({ $0.errors < $0.requests }) == true {
            do {
                let (passed, total) = try await Self.passRate(quality, model: spec.model, client: trialClient, sampling: trial.candidate.sampling)
                trial.quality = total > 0 ? Double(passed) / Double(total) : nil
                trial.qualityDetail = "\(passed) of \(total) items passed"
            } catch let failure as QualityProbeFailure {
                probeFailure = failure
            }
        }
        trial.result = result
        trial.status = result.errors == result.requests || probeFailure != nil ? .failed : .done
        if trial.status == .failed { trial.reason = probeFailure?.description ?? result.firstError }
        if trial.status == .done, let why = request.constraints?.broken(by: result, memoryMiB: trial.memoryMiB) {
            trial.status = .infeasible
            trial.reason = why
        }
        return trial
    }

    /// TPE, Hyperband or evolutionary search over the planned candidates: each dimension of the
    /// space is a categorical dimension of its listed values; a suggestion the estimator pruned
    /// scores nothing, one already measured at that budget is not run again; Hyperband's budget
    /// fraction scales the trial's requests (full budget: the request's), not their length: a
    /// speed measured over a few tokens is noise.
    private func runAdaptive(_ spec: TuningSpec, serverPath: String, context: JobContext, server: TrialServer) async throws -> TuningProgress {
        let request = spec.request
        var state = TuningProgress(trials: spec.trials, best: nil)
        try await context.detail(state)
        try await Self.announcePruned(state, context: context)
        var watch = SessionWatch(request)
        let dimensions = Self.searchDimensions(request.space)
        let space = SearchSpace(dimensions.map { .categorical($0.name, $0.values) })
        var strategy: any SearchStrategy = switch request.strategy {
        case .tpe: TPESearch(space: space, seed: request.seed)
        case .hyperband: HyperbandSearch(space: space, seed: request.seed, maxBudget: 9)
        default: EvolutionarySearch(space: space, seed: request.seed, populationSize: min(8, max(2, request.maxCandidates / 3)))
        }
        var measuredAt: [Int: Double] = [:]
        var (trialsRun, suggestions) = (0, 0)
        while trialsRun < request.maxCandidates, suggestions < request.maxCandidates * 20, let suggestion = strategy.suggest() {
            if let why = watch.stop {
                state.stoppedEarly = why
                break
            }
            suggestions += 1
            let wanted = Dictionary(uniqueKeysWithValues: dimensions.map { ($0.name, suggestion.point[$0.name]?.description ?? "") })
            guard let index = state.trials.firstIndex(where: { Self.values(of: $0.candidate, dimensions) == wanted }),
                state.trials[index].status != .pruned
            else {
                strategy.report(suggestion, score: nil)
                continue
            }
            if let budget = measuredAt[index], budget >= suggestion.budget {
                strategy.report(suggestion, score: Self.absoluteScore(state.trials[index], objective: request.objective, weights: request.weights))
                continue
            }
            try await context.pausePoint()
            state.trials[index].status = .running
            try await context.detail(state)
            try await context.event("trial_started", state.trials[index])
            let fraction = suggestion.budget
            state.trials[index] = try await runTrial(
                state.trials[index], spec: spec, serverPath: serverPath, requests: max(1, Int((Double(request.requests) * fraction).rounded(.up))),
                maxTokens: request.maxTokens, context: context, server: server)
            state.trials[index].score = Self.absoluteScore(state.trials[index], objective: request.objective, weights: request.weights)
            measuredAt[index] = fraction
            trialsRun += 1
            strategy.report(suggestion, score: state.trials[index].score)
            try await context.event("trial", state.trials[index])
            // A new best counts at the full budget only (Hyperband's cheap rungs only choose).
            if fraction >= 1, watch.measured(state.trials[index]) { try await context.event("new_best", state.trials[index]) }
            try await context.progress(Double(trialsRun), of: Double(request.maxCandidates),
                                       message: "\(request.strategy.rawValue): trial \(index) \(state.trials[index].status)")
            try await context.detail(state)
        }
        for i in state.trials.indices where state.trials[i].status == .pending {
            state.trials[i].status = .skipped
            state.trials[i].reason = state.stoppedEarly ?? "the \(request.strategy.rawValue) search did not choose it within \(request.maxCandidates) trials"
        }
        // The best at the full budget (Hyperband's cheaper rungs are only for choosing).
        let full = state.trials.indices.filter { state.trials[$0].score != nil && (measuredAt[$0] ?? 0) >= 1 }
        let pool = full.isEmpty ? state.trials.indices.filter { state.trials[$0].score != nil } : full
        state.best = pool.max { state.trials[$0].score! < state.trials[$1].score! }
        try await remeasureTop(&state, spec: spec, serverPath: serverPath, context: context, server: server)
        state.pareto = Self.paretoFront(state.trials)
        try await context.detail(state)
        guard state.best != nil else { throw Self.noBest(state) }
        return state
    }

    /// Each dimension of the space with its values as text (the search space's categories).
    static func searchDimensions(_ space: TuningSession.Space) -> [(name: String, values: [String])] {
        var dims: [(String, [String])] = []
        func add<T>(_ name: String, _ values: [T]?) { if let values, !values.isEmpty { dims.append((name, values.map { "\($0)" })) } }
        add("contextSize", space.contextSize)
        add("ubatch", space.ubatch)
        add("flashAttention", space.flashAttention)
        add("cacheType", space.cacheType?.map(\.rawValue))
        add("threads", space.threads)
        add("parallel", space.parallel)
        add("gpuLayers", space.gpuLayers)
        for (field, values) in space.samplingDimensions { add(field, values) }
        return dims
    }

    /// A candidate's value per dimension, as text.
    static func values(of c: TuningSession.Candidate, _ dimensions: [(name: String, values: [String])]) -> [String: String] {
        let all: [String: String?] = [
            "contextSize": c.contextSize.map { "\($0)" }, "ubatch": c.ubatch.map { "\($0)" }, "flashAttention": c.flashAttention.map { "\($0)" },
            "cacheType": c.cacheType?.rawValue, "threads": c.threads.map { "\($0)" }, "parallel": c.parallel.map { "\($0)" },
            "gpuLayers": c.gpuLayers.map { "\($0)" },
        ]
        let sampling = (c.sampling ?? [:]).mapValues { "\($0)" }
        return Dictionary(uniqueKeysWithValues: dimensions.map { ($0.name, (all[$0.name] ?? nil) ?? sampling[$0.name] ?? "") })
    }

    /// A measured trial's score on its own (higher is better); the balanced objective weighs
    /// generation speed against time to first token and memory on log scales, the weighted one
    /// each measure's logarithm by its weight (so each is normalised: doubling any measure moves
    /// the score by its weight × log 2 whatever its unit).
    static func absoluteScore(_ t: TuningSession.Trial, objective: TuningObjective, weights: [String: Double]? = nil) -> Double? {
        guard t.status == .done, t.result != nil else { return nil }
        let memory = max(t.memoryMiB ?? Double(t.estimatedMiB ?? 1), 0.001)
        let (generation, ttft) = (t.generationTPS, t.ttftMs)
        let score: Double? = switch objective {
        case .maxGenerationTPS: generation
        case .minTTFT: ttft.map { -$0 }
        case .maxThroughputAtConcurrency: t.throughputTPS
        case .minMemory: -memory
        case .weighted: weightedScore(t, memory: memory, weights: weights ?? [:])
        case .quality: t.quality.map { t.qualityDetail?.hasPrefix("PPL") == true ? -$0 : $0 }
        case .balanced: generation.flatMap { g in ttft.map { Foundation.log(max(g, 1e-9)) - Foundation.log(max($0, 1e-9)) - Foundation.log(memory) } }
        }
        return score.flatMap { $0.isFinite ? $0 : nil }
    }

    /// Σ weight × log(measure), minus for first token and memory.
    static func weightedScore(_ t: TuningSession.Trial, memory: Double, weights w: [String: Double]) -> Double? {
        guard let g = t.generationTPS, let f = t.ttftMs, let throughput = t.throughputTPS else { return nil }
        var good = (w["generationTPS"] ?? 0) * Foundation.log(max(g, 1e-9)) + (w["throughputTPS"] ?? 0) * Foundation.log(max(throughput, 1e-9))
        if let q = w["quality"], q > 0 {
            // A pass rate counts up; a perplexity counts down.
            guard let quality = t.quality else { return nil }
            good += t.qualityDetail?.hasPrefix("PPL") == true ? -q * Foundation.log(max(quality, 1e-9)) : q * Foundation.log(max(quality, 1e-3))
        }
        return good - (w["ttftMs"] ?? 0) * Foundation.log(max(f, 1e-9)) - (w["memoryMiB"] ?? 0) * Foundation.log(memory)
    }

    /// Scores the finished trials of a round by the objective (higher is better).
    static func score(_ trials: inout [TuningSession.Trial], _ indexes: [Int], objective: TuningObjective, weights: [String: Double]? = nil) {
        let done = indexes.filter { trials[$0].status == .done }
        let gen = done.map { trials[$0].generationTPS ?? 0 }
        let ttft = done.map { trials[$0].ttftMs ?? .infinity }
        let mem = done.map { max(trials[$0].memoryMiB ?? Double(trials[$0].estimatedMiB ?? 0), 0.001) }
        for (k, i) in done.enumerated() {
            switch objective {
            case .maxGenerationTPS: trials[i].score = gen[k]
            case .minTTFT: trials[i].score = -ttft[k]
            case .maxThroughputAtConcurrency: trials[i].score = trials[i].throughputTPS ?? 0
            case .minMemory: trials[i].score = -mem[k]
            case .weighted, .quality: trials[i].score = absoluteScore(trials[i], objective: objective, weights: weights)
            case .balanced:
                // Each measure relative to the round's best, averaged.
                let g = gen[k] / max(gen.max() ?? 1, 0.001)
                let t = (ttft.min() ?? 1) / max(ttft[k], 0.001)
                let m = (mem.min() ?? 1) / mem[k]
                trials[i].score = (g + t + m) / 3
            }
            // A trial without a measure (no text streamed, say) ranks last rather than breaking JSON.
            if let score = trials[i].score, !score.isFinite { trials[i].score = nil }
        }
    }

    public func interrupted(detail: JobJSON?) -> (detail: JobJSON?, reason: String) {
        var kept = detail
        if var state = try? detail?.decode(TuningProgress.self) {
            for i in state.trials.indices where state.trials[i].status == .running || state.trials[i].status == .pending {
                state.trials[i].status = .interrupted
            }
            kept = try? JobJSON(encoding: state)
        }
        return (kept, "Corral stopped during the session; finished trials are kept, start a new session to continue")
    }
}

extension TuningSession {
    /// The session as `/admin/tuning` shows it, from its job.
    public init(_ job: JobRecord, appliedAt: Date?) throws {
        let spec = try job.spec.decode(TuningSpec.self)
        let progress = try (job.result ?? job.detail).map { try $0.decode(TuningProgress.self) }
        var trials = progress?.trials ?? spec.trials
        if job.state == .cancelled || job.state == .failed {
            for i in trials.indices where trials[i].status == .running || trials[i].status == .pending {
                trials[i].status = job.state == .cancelled ? .cancelled : .failed
            }
        }
        self.init(id: job.id, model: spec.model, createdAt: job.createdAt, status: job.state.legacyStatus, state: job.state, request: spec.request,
                  trials: trials, best: progress?.best, pareto: progress?.pareto, stoppedEarly: progress?.stoppedEarly, appliedAt: appliedAt,
                  error: job.error?.message)
    }
}

/// Tuned arguments stored for a model.
public struct RuntimeProfile: Sendable, Codable {
    public var model: String
    public var arguments: [String]
    public var session: String
    public var appliedAt: Date
    /// The sampling profile the winner's sampling parameters were saved as, and those parameters.
    public var samplingProfile: String?
    public var sampling: [String: Double]?

    public init(model: String, arguments: [String], session: String, appliedAt: Date) {
        (self.model, self.arguments, self.session, self.appliedAt) = (model, arguments, session, appliedAt)
    }
}

/// Why a tuning trial's quality could not be measured (the trial fails with it).
public struct QualityProbeFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// What a tuning session optimises (its `objective`, as the API spells it).
public enum TuningObjective: String, Sendable, Codable, CaseIterable {
    case maxGenerationTPS = "max_generation_tps"
    case minTTFT = "min_ttft"
    case maxThroughputAtConcurrency = "max_throughput_at_concurrency"
    case minMemory = "min_memory"
    /// Generation speed against time to first token and memory, on log scales.
    case balanced
    /// Σ weight × log(measure) over `weights`.
    case weighted
    /// An evaluation's pass rate, or a text's perplexity.
    case quality
}

/// How a tuning session chooses its trials (its `strategy`).
public enum TuningStrategy: String, Sendable, Codable, CaseIterable {
    case grid, random, halving, tpe, hyperband, evolutionary

    /// Chooses each next trial from the ones measured so far (`maxCandidates` trials at most,
    /// among the planned candidates).
    public var isAdaptive: Bool { [.tpe, .hyperband, .evolutionary].contains(self) }
}

/// Where a tuning trial stands.
public enum TrialStatus: String, Sendable, Codable, CaseIterable {
    case pending
    /// Left out before running: the estimator says it does not fit, or it repeats a measured one.
    case pruned
    case running
    case done
    case failed
    /// Measured, but it broke a constraint.
    case infeasible
    /// Lost a halving round.
    case eliminated
    /// An adaptive search did not choose it.
    case skipped
    case interrupted
    /// The session was cancelled (or failed) before it ran.
    case cancelled
}
